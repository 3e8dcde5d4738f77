//! Crafted packets for BPF_PROG_TEST_RUN: build Ethernet frames for a flow ([`build_frame`]) and
//! parse and verify the frames the programs hand back ([`parse_frame`]).
//!
//! Supported: Ethernet II, IPv4 (options on parse) and IPv6 (no extension headers), carrying TCP,
//! UDP, SCTP, ICMP/ICMPv6 echo, and ICMP/ICMPv6 errors with their embedded original flow.
//! Every checksum is computed on build and recomputed on parse, never trusted.

mod build;
mod checksum;
mod parse;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use build::{build_frame, build_icmp_error};
pub use checksum::{crc32c, internet_checksum, l4_checksum, sctp_checksum, Checksum};
pub use parse::parse_frame;

/// TCP flag bits (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// Destination MAC of built frames (locally administered, unicast).
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Source MAC of built frames (locally administered, unicast).
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_HLEN: usize = 14;

/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// ICMP / ICMPv6 message types this module builds or interprets.
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAM_PROBLEM: u8 = 12;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_PARAM_PROBLEM: u8 = 4;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// SCTP chunk types.
pub const SCTP_CHUNK_DATA: u8 = 0;
pub const SCTP_CHUNK_INIT: u8 = 1;

/// The layer-4 protocol of a flow. `Icmp` belongs to IPv4 and `Icmpv6` to IPv6 (echo messages
/// when built; any message when parsed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L4Proto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
}

impl L4Proto {
    /// The IP protocol number (IPv4 protocol / IPv6 next header).
    pub fn ip_proto(self) -> u8 {
        match self {
            L4Proto::Tcp => IPPROTO_TCP,
            L4Proto::Udp => IPPROTO_UDP,
            L4Proto::Sctp => IPPROTO_SCTP,
            L4Proto::Icmp => IPPROTO_ICMP,
            L4Proto::Icmpv6 => IPPROTO_ICMPV6,
        }
    }

    /// The protocol for an IP protocol number, if supported.
    pub fn from_ip_proto(proto: u8) -> Option<Self> {
        match proto {
            IPPROTO_TCP => Some(L4Proto::Tcp),
            IPPROTO_UDP => Some(L4Proto::Udp),
            IPPROTO_SCTP => Some(L4Proto::Sctp),
            IPPROTO_ICMP => Some(L4Proto::Icmp),
            IPPROTO_ICMPV6 => Some(L4Proto::Icmpv6),
            _ => None,
        }
    }

    /// True for ICMP and ICMPv6.
    pub fn is_icmp(self) -> bool {
        matches!(self, L4Proto::Icmp | L4Proto::Icmpv6)
    }

    /// Whether this protocol can be carried over the given IP family.
    pub fn fits_family(self, ipv6: bool) -> bool {
        match self {
            L4Proto::Icmp => !ipv6,
            L4Proto::Icmpv6 => ipv6,
            _ => true,
        }
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
            L4Proto::Sctp => "sctp",
            L4Proto::Icmp => "icmp",
            L4Proto::Icmpv6 => "icmpv6",
        })
    }
}

fn family_name(ipv6: bool) -> &'static str {
    if ipv6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// One packet of a flow, as [`build_frame`] turns it into a frame.
///
/// Ports: for ICMP/ICMPv6 echo, `sport` is the echo identifier and `dport` the sequence number.
/// SCTP: an empty payload gives an INIT chunk (a new association, like a TCP SYN); a non-empty
/// payload gives one DATA chunk carrying it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowSpec {
    pub proto: L4Proto,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (`TCP_*`); ignored for other protocols.
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
}

impl FlowSpec {
    /// The first packet of a new connection: TCP SYN, empty payload.
    pub fn new(proto: L4Proto, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        FlowSpec {
            proto,
            src,
            dst,
            sport,
            dport,
            tcp_flags: TCP_SYN,
            payload: Vec::new(),
        }
    }

    /// The same flow with other TCP flags.
    pub fn with_flags(mut self, tcp_flags: u8) -> Self {
        self.tcp_flags = tcp_flags;
        self
    }

    /// The same flow with a payload.
    pub fn with_payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Checks that the addresses share a family and that the protocol fits it.
    pub fn check(&self) -> Result<(), PacketError> {
        if self.src.is_ipv6() != self.dst.is_ipv6() {
            return Err(PacketError::MixedFamilies {
                src: self.src,
                dst: self.dst,
            });
        }
        let ipv6 = self.src.is_ipv6();
        if !self.proto.fits_family(ipv6) {
            return Err(PacketError::ProtoFamilyMismatch {
                proto: self.proto,
                family: family_name(ipv6),
            });
        }
        Ok(())
    }

    /// The reply direction: addresses and ports swapped. For ICMP echo only the addresses are
    /// swapped (a reply carries the request's identifier and sequence number).
    pub fn reversed(&self) -> FlowSpec {
        let (sport, dport) = if self.proto.is_icmp() {
            (self.sport, self.dport)
        } else {
            (self.dport, self.sport)
        };
        FlowSpec {
            src: self.dst,
            dst: self.src,
            sport,
            dport,
            ..self.clone()
        }
    }
}

/// The flow of the original packet quoted inside an ICMP error (its IP header and the first
/// 8 bytes of its L4 header).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InnerFlow {
    pub proto: L4Proto,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ports; for a quoted ICMP echo, identifier and sequence number.
    pub sport: u16,
    pub dport: u16,
    /// Whether the quoted IPv4 header checksum is correct (always true for IPv6). A translator
    /// that rewrites the quoted addresses must fix it.
    pub ip_checksum_ok: bool,
}

/// What [`parse_frame`] found in a frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParsedFrame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub proto: L4Proto,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// Ports (TCP/UDP/SCTP); echo identifier and sequence number (ICMP echo); 0 otherwise.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags; 0 for other protocols.
    pub tcp_flags: u8,
    /// Application bytes: after the TCP/UDP/ICMP header; for SCTP the user data of DATA chunks.
    pub payload_len: usize,
    /// Offset of the L4 header in the frame.
    pub l4_offset: usize,
    /// IPv4 header checksum verified (always true for IPv6, which has none).
    pub ip_checksum_ok: bool,
    /// L4 checksum verified (pseudo-header included where the protocol has one; CRC32c for
    /// SCTP). An IPv4 UDP checksum of 0 means "none" and counts as ok.
    pub l4_checksum_ok: bool,
    /// ICMP/ICMPv6 type and code.
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// Type of the first SCTP chunk.
    pub sctp_chunk_type: Option<u8>,
    /// The original flow quoted by an ICMP error, when it could be read.
    pub inner: Option<InnerFlow>,
}

impl ParsedFrame {
    /// Both the IP and the L4 checksums are correct.
    pub fn checksums_ok(&self) -> bool {
        self.ip_checksum_ok && self.l4_checksum_ok
    }
}

/// Why a frame could not be built or parsed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PacketError {
    #[error("truncated {layer}: need {need} bytes, have {have}")]
    Truncated {
        layer: &'static str,
        need: usize,
        have: usize,
    },
    #[error("unsupported ethertype {0:#06x}")]
    UnsupportedEthertype(u16),
    #[error("source {src} and destination {dst} are not of the same address family")]
    MixedFamilies { src: IpAddr, dst: IpAddr },
    #[error("{proto} cannot be carried over {family}")]
    ProtoFamilyMismatch {
        proto: L4Proto,
        family: &'static str,
    },
    #[error("IP version {found} under the ethertype of IPv{expected}")]
    BadIpVersion { expected: u8, found: u8 },
    #[error("IPv6 extension header (next header {0}) is not supported")]
    Ipv6ExtensionHeader(u8),
    #[error("unsupported IP protocol {0}")]
    UnsupportedIpProto(u8),
    #[error("IPv4 fragment (offset {offset}, more fragments: {more}) is not supported")]
    Fragment { offset: u16, more: bool },
    #[error("an L4 segment of {len} bytes does not fit in one IP packet")]
    TooLarge { len: usize },
    #[error("malformed {layer}: {what}")]
    Malformed {
        layer: &'static str,
        what: &'static str,
    },
}

/// `Ok` when `buf` holds at least `len` bytes.
fn need(buf: &[u8], len: usize, layer: &'static str) -> Result<(), PacketError> {
    if buf.len() < len {
        Err(PacketError::Truncated {
            layer,
            need: len,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

/// Big-endian u16 at `at` (caller checked the length).
fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

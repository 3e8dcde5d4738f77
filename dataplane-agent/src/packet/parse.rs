//! Parsing and verifying frames.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum::{internet_checksum, l4_checksum, sctp_checksum};
use super::{
    be16, family_name, need, InnerFlow, L4Proto, PacketError, ParsedFrame, ETH_HLEN, ETH_P_IP,
    ETH_P_IPV6, ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMPV6_PACKET_TOO_BIG,
    ICMPV6_PARAM_PROBLEM, ICMPV6_TIME_EXCEEDED, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST, ICMP_PARAM_PROBLEM, ICMP_TIME_EXCEEDED, SCTP_CHUNK_DATA,
};

/// IPv6 next-header values that are extension headers (or ESP/no-next-header), not L4.
const IPV6_EXT_HEADERS: [u8; 11] = [0, 43, 44, 50, 51, 59, 60, 135, 139, 140, 253];

/// Parses an Ethernet frame carrying IPv4 or IPv6 and TCP, UDP, SCTP, ICMP or ICMPv6, and
/// verifies its checksums. Bytes after the IP packet (Ethernet padding) are ignored.
pub fn parse_frame(frame: &[u8]) -> Result<ParsedFrame, PacketError> {
    need(frame, ETH_HLEN, "Ethernet header")?;
    let mut dst_mac = [0u8; 6];
    let mut src_mac = [0u8; 6];
    dst_mac.copy_from_slice(&frame[0..6]);
    src_mac.copy_from_slice(&frame[6..12]);
    let l3 = match be16(frame, 12) {
        ETH_P_IP => parse_ipv4(&frame[ETH_HLEN..])?,
        ETH_P_IPV6 => parse_ipv6(&frame[ETH_HLEN..])?,
        other => return Err(PacketError::UnsupportedEthertype(other)),
    };
    let l4 = parse_l4(&l3)?;
    Ok(ParsedFrame {
        dst_mac,
        src_mac,
        proto: l4.proto,
        src: l3.src,
        dst: l3.dst,
        ttl: l3.ttl,
        sport: l4.sport,
        dport: l4.dport,
        tcp_flags: l4.tcp_flags,
        payload_len: l4.payload_len,
        l4_offset: ETH_HLEN + l3.header_len,
        ip_checksum_ok: l3.checksum_ok,
        l4_checksum_ok: l4.checksum_ok,
        icmp_type: l4.icmp.map(|(t, _)| t),
        icmp_code: l4.icmp.map(|(_, c)| c),
        sctp_chunk_type: l4.sctp_chunk_type,
        inner: l4.inner,
    })
}

/// An IP packet: addresses, protocol and exactly its L4 segment.
struct L3<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    ttl: u8,
    header_len: usize,
    checksum_ok: bool,
    segment: &'a [u8],
}

fn parse_ipv4(pkt: &[u8]) -> Result<L3<'_>, PacketError> {
    need(pkt, 20, "IPv4 header")?;
    let version = pkt[0] >> 4;
    if version != 4 {
        return Err(PacketError::BadIpVersion {
            expected: 4,
            found: version,
        });
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(PacketError::Malformed {
            layer: "IPv4 header",
            what: "IHL below 5",
        });
    }
    need(pkt, ihl, "IPv4 header")?;
    let total = usize::from(be16(pkt, 2));
    if total < ihl {
        return Err(PacketError::Malformed {
            layer: "IPv4 header",
            what: "total length below header length",
        });
    }
    need(pkt, total, "IPv4 packet")?;
    let frag = be16(pkt, 6);
    let (offset, more) = (frag & 0x1fff, frag & 0x2000 != 0);
    if offset != 0 || more {
        return Err(PacketError::Fragment { offset, more });
    }
    Ok(L3 {
        src: IpAddr::V4(ipv4_at(pkt, 12)),
        dst: IpAddr::V4(ipv4_at(pkt, 16)),
        proto: pkt[9],
        ttl: pkt[8],
        header_len: ihl,
        checksum_ok: internet_checksum(&[&pkt[..ihl]]) == 0,
        segment: &pkt[ihl..total],
    })
}

fn parse_ipv6(pkt: &[u8]) -> Result<L3<'_>, PacketError> {
    need(pkt, 40, "IPv6 header")?;
    let version = pkt[0] >> 4;
    if version != 6 {
        return Err(PacketError::BadIpVersion {
            expected: 6,
            found: version,
        });
    }
    let next = pkt[6];
    if IPV6_EXT_HEADERS.contains(&next) {
        return Err(PacketError::Ipv6ExtensionHeader(next));
    }
    let total = 40 + usize::from(be16(pkt, 4));
    need(pkt, total, "IPv6 packet")?;
    Ok(L3 {
        src: IpAddr::V6(ipv6_at(pkt, 8)),
        dst: IpAddr::V6(ipv6_at(pkt, 24)),
        proto: next,
        ttl: pkt[7],
        header_len: 40,
        checksum_ok: true,
        segment: &pkt[40..total],
    })
}

fn ipv4_at(buf: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(buf[at], buf[at + 1], buf[at + 2], buf[at + 3])
}

fn ipv6_at(buf: &[u8], at: usize) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&buf[at..at + 16]);
    Ipv6Addr::from(octets)
}

/// What the L4 header says.
struct L4 {
    proto: L4Proto,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    payload_len: usize,
    checksum_ok: bool,
    icmp: Option<(u8, u8)>,
    sctp_chunk_type: Option<u8>,
    inner: Option<InnerFlow>,
}

impl L4 {
    fn new(proto: L4Proto, sport: u16, dport: u16, payload_len: usize, checksum_ok: bool) -> Self {
        L4 {
            proto,
            sport,
            dport,
            tcp_flags: 0,
            payload_len,
            checksum_ok,
            icmp: None,
            sctp_chunk_type: None,
            inner: None,
        }
    }
}

fn parse_l4(l3: &L3<'_>) -> Result<L4, PacketError> {
    let proto =
        L4Proto::from_ip_proto(l3.proto).ok_or(PacketError::UnsupportedIpProto(l3.proto))?;
    let ipv6 = l3.src.is_ipv6();
    if !proto.fits_family(ipv6) {
        return Err(PacketError::ProtoFamilyMismatch {
            proto,
            family: family_name(ipv6),
        });
    }
    let seg = l3.segment;
    let pseudo_ok = |seg: &[u8]| l4_checksum(l3.src, l3.dst, l3.proto, seg).is_ok_and(|c| c == 0);
    match proto {
        L4Proto::Tcp => {
            need(seg, 20, "TCP header")?;
            let doff = usize::from(seg[12] >> 4) * 4;
            if doff < 20 {
                return Err(PacketError::Malformed {
                    layer: "TCP header",
                    what: "data offset below 5",
                });
            }
            need(seg, doff, "TCP header")?;
            let mut l4 = L4::new(
                proto,
                be16(seg, 0),
                be16(seg, 2),
                seg.len() - doff,
                pseudo_ok(seg),
            );
            l4.tcp_flags = seg[13];
            Ok(l4)
        }
        L4Proto::Udp => {
            need(seg, 8, "UDP header")?;
            let len = usize::from(be16(seg, 4));
            if len < 8 {
                return Err(PacketError::Malformed {
                    layer: "UDP header",
                    what: "length below 8",
                });
            }
            need(seg, len, "UDP datagram")?;
            let seg = &seg[..len];
            let ok = (!ipv6 && be16(seg, 6) == 0) || pseudo_ok(seg);
            Ok(L4::new(proto, be16(seg, 0), be16(seg, 2), len - 8, ok))
        }
        L4Proto::Sctp => {
            need(seg, 12, "SCTP common header")?;
            let stored = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            let (first, data_len) = sctp_chunks(&seg[12..])?;
            let mut l4 = L4::new(
                proto,
                be16(seg, 0),
                be16(seg, 2),
                data_len,
                sctp_checksum(seg) == stored,
            );
            l4.sctp_chunk_type = first;
            Ok(l4)
        }
        L4Proto::Icmp | L4Proto::Icmpv6 => {
            need(seg, 8, "ICMP header")?;
            let (ty, code) = (seg[0], seg[1]);
            let ok = if ipv6 {
                pseudo_ok(seg)
            } else {
                internet_checksum(&[seg]) == 0
            };
            let echo = if ipv6 {
                matches!(ty, ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY)
            } else {
                matches!(ty, ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY)
            };
            let error = if ipv6 {
                matches!(
                    ty,
                    ICMPV6_DEST_UNREACH
                        | ICMPV6_PACKET_TOO_BIG
                        | ICMPV6_TIME_EXCEEDED
                        | ICMPV6_PARAM_PROBLEM
                )
            } else {
                matches!(
                    ty,
                    ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
                )
            };
            let (sport, dport) = if echo {
                (be16(seg, 4), be16(seg, 6))
            } else {
                (0, 0)
            };
            let mut l4 = L4::new(proto, sport, dport, seg.len() - 8, ok);
            l4.icmp = Some((ty, code));
            if error {
                l4.inner = parse_inner(&seg[8..], ipv6);
            }
            Ok(l4)
        }
    }
}

/// Walks SCTP chunks: the first chunk's type and the total user data of DATA chunks.
fn sctp_chunks(mut chunks: &[u8]) -> Result<(Option<u8>, usize), PacketError> {
    let first = chunks.first().copied();
    let mut data = 0;
    while !chunks.is_empty() {
        need(chunks, 4, "SCTP chunk header")?;
        let len = usize::from(be16(chunks, 2));
        if len < 4 {
            return Err(PacketError::Malformed {
                layer: "SCTP chunk",
                what: "length below 4",
            });
        }
        need(chunks, len, "SCTP chunk")?;
        if chunks[0] == SCTP_CHUNK_DATA {
            if len < 16 {
                return Err(PacketError::Malformed {
                    layer: "SCTP DATA chunk",
                    what: "length below 16",
                });
            }
            data += len - 16;
        }
        // The last chunk's padding may be absent.
        chunks = &chunks[len.next_multiple_of(4).min(chunks.len())..];
    }
    Ok((first, data))
}

/// The flow quoted by an ICMP error: its IP header (same family as the error) and the start of
/// its L4 header. `None` when too short or not a supported protocol.
fn parse_inner(quoted: &[u8], ipv6: bool) -> Option<InnerFlow> {
    let (src, dst, proto, ip_checksum_ok, l4) = if ipv6 {
        if quoted.len() < 40 || quoted[0] >> 4 != 6 {
            return None;
        }
        let (src, dst) = (ipv6_at(quoted, 8), ipv6_at(quoted, 24));
        (
            IpAddr::V6(src),
            IpAddr::V6(dst),
            quoted[6],
            true,
            &quoted[40..],
        )
    } else {
        if quoted.len() < 20 || quoted[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(quoted[0] & 0x0f) * 4;
        if ihl < 20 || quoted.len() < ihl {
            return None;
        }
        let ok = internet_checksum(&[&quoted[..ihl]]) == 0;
        let (src, dst) = (ipv4_at(quoted, 12), ipv4_at(quoted, 16));
        (
            IpAddr::V4(src),
            IpAddr::V4(dst),
            quoted[9],
            ok,
            &quoted[ihl..],
        )
    };
    let proto = L4Proto::from_ip_proto(proto)?;
    if !proto.fits_family(ipv6) {
        return None;
    }
    let (sport, dport) = if proto.is_icmp() {
        // Identifier and sequence of a quoted echo; 0 for anything else.
        if l4.len() < 8 {
            return None;
        }
        let echo = matches!(
            (proto, l4[0]),
            (L4Proto::Icmp, ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY)
                | (L4Proto::Icmpv6, ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY)
        );
        if echo {
            (be16(l4, 4), be16(l4, 6))
        } else {
            (0, 0)
        }
    } else {
        if l4.len() < 4 {
            return None;
        }
        (be16(l4, 0), be16(l4, 2))
    };
    Some(InnerFlow {
        proto,
        src,
        dst,
        sport,
        dport,
        ip_checksum_ok,
    })
}

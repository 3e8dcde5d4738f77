//! Building frames from a [`FlowSpec`].

use std::net::IpAddr;

use super::checksum::{internet_checksum, l4_checksum, sctp_checksum};
use super::{
    FlowSpec, L4Proto, PacketError, DST_MAC, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, ICMPV6_ECHO_REQUEST,
    ICMP_ECHO_REQUEST, SCTP_CHUNK_DATA, SCTP_CHUNK_INIT, SRC_MAC, TCP_ACK,
};

/// TTL / hop limit of built packets.
pub(super) const TTL: u8 = 64;
/// IPv4 identification of built packets.
pub(super) const IPV4_ID: u16 = 0x1c46;
/// IPv4 flags and fragment offset: DF, no offset.
const IPV4_DF: u16 = 0x4000;
/// TCP sequence number of built segments, and the acknowledgement number when ACK is set.
pub(super) const TCP_SEQ: u32 = 0x1000_0001;
pub(super) const TCP_ACK_SEQ: u32 = 0x2000_0001;
pub(super) const TCP_WINDOW: u16 = 64240;
/// SCTP verification tag of DATA packets, and the initiate tag of INIT chunks.
pub(super) const SCTP_VTAG: u32 = 0x5eed_0001;
const SCTP_TSN: u32 = 0x0000_1000;

/// Builds the Ethernet frame of `spec`: fixed MACs (`DST_MAC`, `SRC_MAC`), IPv4 (IHL 5, TTL 64,
/// DF) or IPv6 (hop limit 64), then the L4 header and payload, every checksum correct.
pub fn build_frame(spec: &FlowSpec) -> Result<Vec<u8>, PacketError> {
    spec.check()?;
    let l4 = build_l4(spec)?;
    with_ip(spec.src, spec.dst, spec.proto.ip_proto(), &l4)
}

/// Builds an ICMP (IPv4) or ICMPv6 error from `src` to `dst` of type `ty` and `code` (`info`:
/// the 4 bytes after the checksum, e.g. the MTU of "fragmentation needed" / "packet too
/// big"), quoting the IP packet of `quoted` (an Ethernet frame, such as one `build_frame`
/// made) whole, every checksum correct.
pub fn build_icmp_error(
    src: IpAddr,
    dst: IpAddr,
    ty: u8,
    code: u8,
    info: u32,
    quoted: &[u8],
) -> Result<Vec<u8>, PacketError> {
    let proto = if src.is_ipv6() {
        L4Proto::Icmpv6
    } else {
        L4Proto::Icmp
    };
    let mut seg = vec![ty, code, 0, 0];
    seg.extend_from_slice(&info.to_be_bytes());
    seg.extend_from_slice(quoted.get(ETH_HLEN..).unwrap_or_default());
    let sum = if proto == L4Proto::Icmp {
        internet_checksum(&[&seg])
    } else {
        l4_checksum(src, dst, proto.ip_proto(), &seg)?
    };
    seg[2..4].copy_from_slice(&sum.to_be_bytes());
    with_ip(src, dst, proto.ip_proto(), &seg)
}

/// The frame around an L4 segment: fixed MACs, an IPv4 or IPv6 header.
fn with_ip(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Result<Vec<u8>, PacketError> {
    let mut frame = Vec::with_capacity(ETH_HLEN + 40 + l4.len());
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let total = u16::try_from(20 + l4.len())
                .map_err(|_| PacketError::TooLarge { len: l4.len() })?;
            frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[4..6].copy_from_slice(&IPV4_ID.to_be_bytes());
            ip[6..8].copy_from_slice(&IPV4_DF.to_be_bytes());
            ip[8] = TTL;
            ip[9] = proto;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let sum = internet_checksum(&[&ip]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            frame.extend_from_slice(&ip);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let plen =
                u16::try_from(l4.len()).map_err(|_| PacketError::TooLarge { len: l4.len() })?;
            frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&plen.to_be_bytes());
            ip[6] = proto;
            ip[7] = TTL;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            frame.extend_from_slice(&ip);
        }
        _ => return Err(PacketError::MixedFamilies { src, dst }),
    }
    frame.extend_from_slice(l4);
    Ok(frame)
}

/// The L4 segment of `spec` with its checksum filled in.
fn build_l4(spec: &FlowSpec) -> Result<Vec<u8>, PacketError> {
    let payload = &spec.payload;
    let proto = spec.proto.ip_proto();
    let seg = match spec.proto {
        L4Proto::Tcp => {
            let mut seg = vec![0u8; 20];
            seg[0..2].copy_from_slice(&spec.sport.to_be_bytes());
            seg[2..4].copy_from_slice(&spec.dport.to_be_bytes());
            seg[4..8].copy_from_slice(&TCP_SEQ.to_be_bytes());
            let ack = if spec.tcp_flags & TCP_ACK != 0 {
                TCP_ACK_SEQ
            } else {
                0
            };
            seg[8..12].copy_from_slice(&ack.to_be_bytes());
            seg[12] = 5 << 4;
            seg[13] = spec.tcp_flags;
            seg[14..16].copy_from_slice(&TCP_WINDOW.to_be_bytes());
            seg.extend_from_slice(payload);
            let sum = l4_checksum(spec.src, spec.dst, proto, &seg)?;
            seg[16..18].copy_from_slice(&sum.to_be_bytes());
            seg
        }
        L4Proto::Udp => {
            let len = u16::try_from(8 + payload.len()).map_err(|_| PacketError::TooLarge {
                len: 8 + payload.len(),
            })?;
            let mut seg = vec![0u8; 8];
            seg[0..2].copy_from_slice(&spec.sport.to_be_bytes());
            seg[2..4].copy_from_slice(&spec.dport.to_be_bytes());
            seg[4..6].copy_from_slice(&len.to_be_bytes());
            seg.extend_from_slice(payload);
            // A computed 0 is sent as 0xffff: 0 means "no checksum" (IPv4) or is invalid (IPv6).
            let sum = match l4_checksum(spec.src, spec.dst, proto, &seg)? {
                0 => 0xffff,
                s => s,
            };
            seg[6..8].copy_from_slice(&sum.to_be_bytes());
            seg
        }
        L4Proto::Sctp => {
            let mut seg = vec![0u8; 12];
            seg[0..2].copy_from_slice(&spec.sport.to_be_bytes());
            seg[2..4].copy_from_slice(&spec.dport.to_be_bytes());
            if payload.is_empty() {
                // INIT: verification tag 0; initiate tag, a_rwnd, streams out/in, initial TSN.
                seg.extend_from_slice(&[SCTP_CHUNK_INIT, 0]);
                seg.extend_from_slice(&20u16.to_be_bytes());
                seg.extend_from_slice(&SCTP_VTAG.to_be_bytes());
                seg.extend_from_slice(&65536u32.to_be_bytes());
                seg.extend_from_slice(&10u16.to_be_bytes());
                seg.extend_from_slice(&65535u16.to_be_bytes());
                seg.extend_from_slice(&SCTP_TSN.to_be_bytes());
            } else {
                // One unfragmented DATA chunk (B and E flags), padded to 4 bytes.
                let len = u16::try_from(16 + payload.len()).map_err(|_| PacketError::TooLarge {
                    len: 12 + 16 + payload.len(),
                })?;
                seg[4..8].copy_from_slice(&SCTP_VTAG.to_be_bytes());
                seg.extend_from_slice(&[SCTP_CHUNK_DATA, 0x03]);
                seg.extend_from_slice(&len.to_be_bytes());
                seg.extend_from_slice(&SCTP_TSN.to_be_bytes());
                seg.extend_from_slice(&[0; 8]); // stream id, stream sequence, PPID
                seg.extend_from_slice(payload);
                seg.resize(seg.len().next_multiple_of(4), 0);
            }
            let crc = sctp_checksum(&seg);
            seg[8..12].copy_from_slice(&crc.to_le_bytes());
            seg
        }
        L4Proto::Icmp | L4Proto::Icmpv6 => {
            let mut seg = vec![0u8; 8];
            seg[0] = if spec.proto == L4Proto::Icmp {
                ICMP_ECHO_REQUEST
            } else {
                ICMPV6_ECHO_REQUEST
            };
            seg[4..6].copy_from_slice(&spec.sport.to_be_bytes());
            seg[6..8].copy_from_slice(&spec.dport.to_be_bytes());
            seg.extend_from_slice(payload);
            let sum = if spec.proto == L4Proto::Icmp {
                internet_checksum(&[&seg])
            } else {
                l4_checksum(spec.src, spec.dst, proto, &seg)?
            };
            seg[2..4].copy_from_slice(&sum.to_be_bytes());
            seg
        }
    };
    Ok(seg)
}

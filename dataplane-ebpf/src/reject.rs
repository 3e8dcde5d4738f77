//! REJECT: turn a packet that no service can take into the answer kube-proxy's reject rule
//! gives, addressed back to its sender — a TCP RST for TCP (RFC 793's reset generation), an
//! ICMP / ICMPv6 port unreachable quoting the packet for UDP and SCTP. The hook then sends
//! it back out where it came from (TC: redirect to the same veth; XDP: XDP_TX).
//!
//! The reply is built whole in a per-CPU buffer with every checksum computed from scratch,
//! the packet is resized to its length and overwritten: no state of the original survives
//! except what the reply copies on purpose.

use aya_ebpf::helpers::bpf_csum_diff;
use dataplane_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use crate::{
    ctx::Packet,
    maps::REPLY,
    parse::{Flow, ETH_HLEN, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

pub const REPLY_MAX: usize = 112;

/// The reply under construction.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReplyBuf {
    pub b: [u8; REPLY_MAX],
    /// Bytes 4..16 of the original TCP header (sequence, acknowledgement, offset, flags).
    pub tcp: [u8; 12],
    /// The original IP header's length field (IPv4 total length, IPv6 payload length).
    pub ip_len: [u8; 2],
}

const V4_L4: usize = ETH_HLEN + 20;
const V6_L4: usize = ETH_HLEN + 40;
/// What an ICMP error quotes: the original IP header and the first 8 bytes of its payload.
const V4_QUOTE: usize = 20 + 8;
const V6_QUOTE: usize = 40 + 8;
const V4_RST_LEN: usize = V4_L4 + 20;
const V6_RST_LEN: usize = V6_L4 + 20;
const V4_ICMP_LEN: usize = V4_L4 + 8 + V4_QUOTE;
const V6_ICMP_LEN: usize = V6_L4 + 8 + V6_QUOTE;
const _: () = assert!(V6_ICMP_LEN <= REPLY_MAX);

const TTL: u8 = 64;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;

/// Rewrite the packet into the reply to `flow`. `Err` leaves a packet that must be dropped
/// (no reply is sent to a RST, or to a packet whose headers cannot be quoted as built here:
/// IPv4 options, IPv6 extension headers).
// A subprogram: the reply's temporaries stay out of the pipeline's stack frame.
#[inline(never)]
pub fn reply<C: Packet>(ctx: &C, flow: &Flow) -> Result<(), ()> {
    // Only the protocols kube-proxy's services carry: never an ICMP error about an ICMP
    // message (RFC 1122), whatever the parser yields for other protocols.
    if !matches!(flow.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
        return Err(());
    }
    let buf = REPLY.get_ptr_mut(0).ok_or(())?;
    let r = unsafe { &mut *buf };
    // Everything read from the packet is copied into the buffer by the helpers, not through
    // registers: this subprogram's stack adds to the pipeline's, which is nearly full.
    // Ethernet: to the sender's MAC, from the MAC it addressed; same ethertype.
    ctx.load_buf::<6>(6, at(&mut r.b, 0))?;
    ctx.load_buf::<6>(0, at(&mut r.b, 6))?;
    ctx.load_buf::<2>(12, at(&mut r.b, 12))?;
    let len = if flow.proto == PROTO_TCP {
        tcp_rst(ctx, flow, r)?
    } else {
        port_unreachable(ctx, flow, &mut r.b)?
    };
    let b = &r.b;
    ctx.resize(len)?;
    match len {
        V4_RST_LEN => emit::<C, V4_RST_LEN>(ctx, b),
        V6_RST_LEN => emit::<C, V6_RST_LEN>(ctx, b),
        V4_ICMP_LEN => emit::<C, V4_ICMP_LEN>(ctx, b),
        _ => emit::<C, V6_ICMP_LEN>(ctx, b),
    }
}

#[inline(always)]
fn emit<C: Packet, const N: usize>(ctx: &C, b: &[u8; REPLY_MAX]) -> Result<(), ()> {
    let reply = unsafe { &*(b.as_ptr() as *const [u8; N]) };
    ctx.store_buf(0, reply)
}

/// RFC 793, "Reset Generation": a segment with ACK gets `<SEQ=SEG.ACK><CTL=RST>`, one
/// without gets `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>` (SYN and FIN count in SEG.LEN).
#[inline(always)]
fn tcp_rst<C: Packet>(ctx: &C, flow: &Flow, r: &mut ReplyBuf) -> Result<usize, ()> {
    let flags = flow.tcp_flags;
    if flags & TCP_RST != 0 {
        return Err(());
    }
    ctx.load_buf(flow.l4_off + 4, &mut r.tcp)?;
    let len_off = flow.l3_off + if flow.v6 { 4 } else { 2 };
    ctx.load_buf(len_off, &mut r.ip_len)?;
    let t = &r.tcp;
    let seq_in = u32::from_be_bytes([t[0], t[1], t[2], t[3]]);
    let ack_in = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let doff = ((t[8] >> 4) as u32) * 4;
    // Bytes from the L4 header to the end of the IP packet.
    let mut ip_len = u16::from_be_bytes(r.ip_len) as u32;
    if flow.v6 {
        ip_len += 40;
    }
    let l4_len = ip_len.saturating_sub((flow.l4_off - flow.l3_off) as u32);
    let mut seg_len = l4_len.saturating_sub(doff);
    if flags & TCP_SYN != 0 {
        seg_len = seg_len.wrapping_add(1);
    }
    if flags & TCP_FIN != 0 {
        seg_len = seg_len.wrapping_add(1);
    }
    let (seq, ack, out_flags) = if flags & TCP_ACK != 0 {
        (ack_in, 0, TCP_RST)
    } else {
        (0, seq_in.wrapping_add(seg_len), TCP_RST | TCP_ACK)
    };

    let b = &mut r.b;
    let l4 = ip_header(b, flow, PROTO_TCP, 20);
    put(b, l4, &flow.dport_be.to_ne_bytes());
    put(b, l4 + 2, &flow.sport_be.to_ne_bytes());
    put(b, l4 + 4, &seq.to_be_bytes());
    put(b, l4 + 8, &ack.to_be_bytes());
    // Data offset 5 words, flags, window 0, checksum (below), urgent pointer 0.
    put(b, l4 + 12, &[0x50, out_flags, 0, 0, 0, 0, 0, 0]);
    let sum = pseudo_header(b, flow, PROTO_TCP, 20) + sum16(b, l4, l4 + 20);
    put(b, l4 + 16, &fold(sum));
    Ok(l4 + 20)
}

/// ICMP type 3 code 3 / ICMPv6 type 1 code 4, quoting the original IP header and the first
/// 8 bytes of its transport header (RFC 792, RFC 4443: enough for the sender to find its
/// socket).
#[inline(always)]
fn port_unreachable<C: Packet>(ctx: &C, flow: &Flow, b: &mut [u8; REPLY_MAX]) -> Result<usize, ()> {
    if flow.v6 {
        if flow.l4_off != V6_L4 {
            return Err(());
        }
        let l4 = ip_header(b, flow, PROTO_ICMPV6, (8 + V6_QUOTE) as u16);
        put(
            b,
            l4,
            &[ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, 0, 0, 0, 0, 0, 0],
        );
        ctx.load_buf::<V6_QUOTE>(ETH_HLEN, at(b, l4 + 8))?;
        let end = l4 + 8 + V6_QUOTE;
        let sum = pseudo_header(b, flow, PROTO_ICMPV6, (8 + V6_QUOTE) as u16) + sum16(b, l4, end);
        put(b, l4 + 2, &fold(sum));
        Ok(end)
    } else {
        if flow.l4_off != V4_L4 {
            return Err(());
        }
        let l4 = ip_header(b, flow, PROTO_ICMP, (8 + V4_QUOTE) as u16);
        put(
            b,
            l4,
            &[ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0, 0, 0, 0, 0],
        );
        ctx.load_buf::<V4_QUOTE>(ETH_HLEN, at(b, l4 + 8))?;
        let end = l4 + 8 + V4_QUOTE;
        // ICMPv4 has no pseudo-header.
        put(b, l4 + 2, &fold(sum16(b, l4, end)));
        Ok(end)
    }
}

/// The `N` bytes of the buffer at `off` (constant offsets, checked at compile time by the
/// callers' constants and at run time by this bound).
#[inline(always)]
fn at<const N: usize>(b: &mut [u8; REPLY_MAX], off: usize) -> &mut [u8; N] {
    let off = if off + N <= REPLY_MAX {
        off
    } else {
        REPLY_MAX - N
    };
    unsafe { &mut *(b.as_mut_ptr().add(off) as *mut [u8; N]) }
}

/// The IP header of the reply (source and destination swapped), its checksum included for
/// IPv4; returns the offset of the L4 header.
#[inline(always)]
fn ip_header(b: &mut [u8; REPLY_MAX], flow: &Flow, proto: u8, l4_len: u16) -> usize {
    let l3 = ETH_HLEN;
    if flow.v6 {
        put(b, l3, &[0x60, 0, 0, 0]);
        put(b, l3 + 4, &l4_len.to_be_bytes());
        put(b, l3 + 6, &[proto, TTL]);
        put(b, l3 + 8, &flow.dst);
        put(b, l3 + 24, &flow.src);
        V6_L4
    } else {
        let total = 20 + l4_len;
        put(b, l3, &[0x45, 0]);
        put(b, l3 + 2, &total.to_be_bytes());
        // Identification 0, DF (as the kernel's own resets), TTL, protocol, checksum 0.
        put(b, l3 + 4, &[0, 0, 0x40, 0, TTL, proto, 0, 0]);
        put(b, l3 + 12, &flow.dst[12..16]);
        put(b, l3 + 16, &flow.src[12..16]);
        let sum = fold(sum16(b, l3, l3 + 20));
        put(b, l3 + 10, &sum);
        V4_L4
    }
}

/// Sum of the pseudo-header (addresses taken from the reply's IP header).
#[inline(always)]
fn pseudo_header(b: &[u8; REPLY_MAX], flow: &Flow, proto: u8, l4_len: u16) -> u64 {
    let addrs = if flow.v6 {
        sum16(b, ETH_HLEN + 8, ETH_HLEN + 40)
    } else {
        sum16(b, ETH_HLEN + 12, ETH_HLEN + 20)
    };
    addrs + word([0, proto]) + word(l4_len.to_be_bytes())
}

/// One's-complement sum of `b[from..to]` (a multiple of 4 bytes) by `bpf_csum_diff`. Sums
/// are kept in memory order (the words as the CPU loads them) throughout, so the folded
/// result is stored with `to_ne_bytes`.
#[inline(always)]
fn sum16(b: &[u8; REPLY_MAX], from: usize, to: usize) -> u64 {
    let p = unsafe { b.as_ptr().add(from) } as *mut u32;
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p, (to - from) as u32, 0) };
    (r as u64) & 0xffff_ffff
}

/// A 16-bit word given as its two bytes in packet order, in the memory-order domain.
#[inline(always)]
fn word(bytes: [u8; 2]) -> u64 {
    u16::from_ne_bytes(bytes) as u64
}

/// Fold to 16 bits and complement: the checksum field's bytes.
#[inline(always)]
fn fold(mut s: u64) -> [u8; 2] {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    (!(s as u16)).to_ne_bytes()
}

/// `b[at..at + src.len()] = src`, silently bounded by the buffer (callers use constant
/// offsets well inside it).
#[inline(always)]
fn put(b: &mut [u8; REPLY_MAX], at: usize, src: &[u8]) {
    for (i, v) in src.iter().enumerate() {
        if let Some(d) = b.get_mut(at + i) {
            *d = *v;
        }
    }
}

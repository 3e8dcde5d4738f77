//! ICMP messages as policy and NAT see them.
//! - IPv6 neighbour discovery and multicast listener discovery are not subject to policy:
//!   link-local control messages IPv6 needs to work at all (Calico and Cilium let them through
//!   too).
//! - ICMP errors (destination unreachable, packet too big, time exceeded, parameter problem)
//!   about a packet of a connection policy allowed pass like its replies, as Linux
//!   conntrack's RELATED state lets them through for Calico: path MTU discovery and "port
//!   unreachable" keep working for isolated pods; and the service datapath translates the
//!   packet they quote (`icmp_nat`).

use dataplane_common::{
    v4_mapped, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, V4_MAPPED_PREFIX,
};

use crate::{
    ctx::{load, Packet},
    parse::Flow,
};

/// Beyond any transport header `parse` finds: Ethernet, IPv6, four extension headers of at
/// most 2,048 bytes each. Offsets read back from the scratch map have lost their bounds for
/// the verifier, so they are checked against this before packet arithmetic.
pub const MAX_L4_OFF: usize = 14 + 40 + 4 * 2048;

/// ICMP header length before the quoted packet of an error.
const ICMP_HLEN: usize = 8;

pub enum Icmp {
    /// Not subject to policy.
    Exempt,
    /// An error quoting the packet that caused it.
    Error,
    /// Anything else (echo, ...), or not ICMP: checked like any packet.
    Other,
}

#[inline(always)]
pub fn classify<C: Packet>(ctx: &C, t: &Flow) -> Icmp {
    if !matches!(t.proto, PROTO_ICMP | PROTO_ICMPV6) || t.l4_off > MAX_L4_OFF {
        return Icmp::Other;
    }
    // Type, code and checksum (every ICMP message has them): a 1-byte load at a variable
    // offset compiles to a bounds check the verifier cannot use.
    let Some([ty, ..]) = load::<C, [u8; 4]>(ctx, t.l4_off) else {
        return Icmp::Other;
    };
    match (t.proto, ty) {
        (PROTO_ICMPV6, 130..=137 | 143) => Icmp::Exempt,
        (PROTO_ICMPV6, 1..=4) | (PROTO_ICMP, 3 | 11 | 12) => Icmp::Error,
        _ => Icmp::Other,
    }
}

/// The tuple of the packet an ICMP error quotes, into `inner` (with the offsets of its IP and
/// transport headers): false when it cannot be read (truncated, another family, a fragment
/// without its ports).
#[inline(always)]
pub fn quoted<C: Packet>(ctx: &C, t: &Flow, inner: &mut Flow) -> bool {
    if t.l4_off > MAX_L4_OFF {
        return false;
    }
    let off = t.l4_off + ICMP_HLEN;
    let l4 = if t.v6 {
        let Some([vtc, ..]) = load::<C, [u8; 4]>(ctx, off) else {
            return false;
        };
        let Some([next, _]) = load::<C, [u8; 2]>(ctx, off + 6) else {
            return false;
        };
        let (Some(src), Some(dst)) = (
            load::<C, [u8; 16]>(ctx, off + 8),
            load::<C, [u8; 16]>(ctx, off + 24),
        ) else {
            return false;
        };
        if vtc >> 4 != 6 {
            return false;
        }
        inner.src = src;
        inner.dst = dst;
        inner.proto = next;
        off + 40
    } else {
        let Some(h) = load::<C, [u8; 20]>(ctx, off) else {
            return false;
        };
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if h[0] >> 4 != 4 || ihl < 20 || u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
            return false;
        }
        inner.src = v4_mapped([h[12], h[13], h[14], h[15]]);
        inner.dst = v4_mapped([h[16], h[17], h[18], h[19]]);
        inner.proto = h[9];
        off + ihl
    };
    inner.sport_be = 0;
    inner.dport_be = 0;
    inner.tcp_flags = 0;
    inner.v6 = t.v6;
    inner.l3_off = off;
    inner.l4_off = l4;
    if matches!(inner.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
        let Some(ports) = load::<C, [u16; 2]>(ctx, l4) else {
            return false;
        };
        inner.sport_be = ports[0];
        inner.dport_be = ports[1];
    }
    // An IPv6 packet quoting an IPv4-mapped address would alias an IPv4 tuple.
    !(t.v6 && inner.src[..12] == V4_MAPPED_PREFIX)
}

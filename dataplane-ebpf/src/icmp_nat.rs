//! ICMP errors about translated connections ("fragmentation needed", "port unreachable", ...),
//! translated like Linux NAT translates RELATED packets (RFC 5508 §4.2): the packet an error
//! quotes is one the connection sent, so it is translated the opposite way to the
//! connection's packets that go where the error goes. The outer address is translated too
//! where it is the connection's own (an error from the backend itself); a router's address
//! stays, it is real.
//!
//! Checksums: the outer IPv4 header's, the quoted IPv4 header's, and the ICMP checksum over
//! every byte changed (with the pseudo-header for ICMPv6). The quoted packet's own TCP/UDP
//! checksum is left as it was: it may not even be in the quote, and no receiver checks it.

use aya_ebpf::maps::LruHashMap;
use dataplane_common::{
    CtKey, CtValue, Reason, CT_F_DNAT, CT_F_SNAT, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

use crate::{
    checksum, conntrack,
    ctx::{load, Packet},
    icmp::{self, Icmp, MAX_L4_OFF},
    maps::ICMP_SCRATCH,
    nat,
    parse::Flow,
};

/// Per-CPU working space: this runs after the pipeline, whose frames fill the stack.
pub struct Scratch {
    /// External interfaces: the packet `translate_stashed` looks at (see `stash`).
    outer: Flow,
    quoted: Flow,
    key: CtKey,
    entry: CtValue,
}

/// Translate `outer`, if it is an ICMP error about a connection `map` tracks; otherwise
/// `PassOtherProto`, untouched. `map`: `CONNTRACK` where packets enter the node (from pods,
/// from outside), `SNAT` where they leave through an external interface.
#[inline(never)]
pub fn translate<C: Packet>(ctx: &C, outer: &Flow, map: &LruHashMap<CtKey, CtValue>) -> Reason {
    if !matches!(icmp::classify(ctx, outer), Icmp::Error) {
        return Reason::PassOtherProto;
    }
    let Some(s) = ICMP_SCRATCH.get_ptr_mut(0) else {
        return Reason::PassOtherProto;
    };
    let s = unsafe { &mut *s };
    let q = &mut s.quoted;
    if !icmp::quoted(ctx, outer, q) || !matches!(q.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
        return Reason::PassOtherProto;
    }
    // The connection's packet going the error's way: the quoted one, reversed.
    s.key = conntrack::key(q.dst, q.src, q.dport_be, q.sport_be, q.proto);
    let Some(v) = (unsafe { map.get(&s.key) }) else {
        return Reason::PassOtherProto;
    };
    // Only read: an error does not keep its connection alive.
    if conntrack::expired(v, q.proto, conntrack::now()) {
        return Reason::PassOtherProto;
    }
    s.entry = *v;
    let (q, v) = (&s.quoted, &s.entry);
    if v.flags & (CT_F_SNAT | CT_F_DNAT) == 0 {
        // A masqueraded connection whose first packet has not left yet.
        return Reason::PassOtherProto;
    }
    // Each half of the connection's translation that packet gets (a hairpin gets both).
    // Its destination: the quoted source, and the error's destination if it is the same.
    if v.flags & CT_F_DNAT != 0 && rewrite(ctx, outer, q, true, &v.nat_dst, v.nat_dport_be).is_err()
    {
        return Reason::DropNatFailed;
    }
    // Its source: the quoted destination, and the error's source if the connection's peer
    // sent it.
    if v.flags & CT_F_SNAT != 0
        && rewrite(ctx, outer, q, false, &v.nat_src, v.nat_sport_be).is_err()
    {
        return Reason::DropNatFailed;
    }
    Reason::NatIcmpError
}

/// Keep `f` (not a translated protocol) for `translate_stashed`, which runs after the service
/// pipeline has returned: the pipeline and this module do not fit in the stack together,
/// and parsing again would cost a third frame.
#[inline(always)]
pub fn stash(f: &Flow) {
    if let Some(s) = ICMP_SCRATCH.get_ptr_mut(0) {
        unsafe { (*s).outer = *f };
    }
}

/// The hooks on external interfaces: translate the packet their pipeline stashed, if it is
/// an ICMP error about a connection `map` tracks.
#[inline(never)]
pub fn translate_stashed<C: Packet>(ctx: &C, map: &LruHashMap<CtKey, CtValue>) -> Reason {
    let Some(s) = ICMP_SCRATCH.get_ptr(0) else {
        return Reason::PassOtherProto;
    };
    let outer = unsafe { (*s).outer };
    translate(ctx, &outer, map)
}

/// Rewrite the quoted source (`quoted_src`) or destination to `addr:port_be`, and the outer
/// address on the other side (outer destination for a quoted source) if it was the same.
#[inline(always)]
fn rewrite<C: Packet>(
    ctx: &C,
    outer: &Flow,
    q: &Flow,
    quoted_src: bool,
    addr: &[u8; 16],
    port_be: u16,
) -> Result<(), ()> {
    // Offsets copied out of a flow have lost their bounds for the verifier.
    if outer.l3_off > MAX_L4_OFF
        || outer.l4_off > MAX_L4_OFF
        || q.l3_off > MAX_L4_OFF
        || q.l4_off > MAX_L4_OFF
    {
        return Err(());
    }
    let (old, old_port) = if quoted_src {
        (&q.src, q.sport_be)
    } else {
        (&q.dst, q.dport_be)
    };
    let outer_old = if quoted_src { &outer.dst } else { &outer.src };
    let icmp_csum = outer.l4_off + 2;
    if old != addr {
        if q.v6 {
            quoted_addr_v6(ctx, q, quoted_src, addr, icmp_csum)?;
        } else {
            quoted_addr_v4(ctx, q, quoted_src, addr, icmp_csum)?;
        }
    }
    if old_port != port_be {
        ctx.store(q.l4_off + if quoted_src { 0 } else { 2 }, &port_be)?;
        ctx.l4_csum_replace(icmp_csum, old_port as u32, port_be as u32, 2, 0)?;
    }
    if outer_old == old && old != addr {
        nat::rewrite_addr(ctx, outer, !quoted_src, addr)?;
    }
    Ok(())
}

#[inline(always)]
fn quoted_addr_v4<C: Packet>(
    ctx: &C,
    q: &Flow,
    src: bool,
    new: &[u8; 16],
    icmp_csum: usize,
) -> Result<(), ()> {
    // One read of the whole header: separate reads get bounds checks LLVM merges into one
    // the verifier cannot follow.
    let h: [u8; 20] = load(ctx, q.l3_off).ok_or(())?;
    let at = if src { 12 } else { 16 };
    let off = q.l3_off + at;
    let from = u32::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let to = u32::from_ne_bytes([new[12], new[13], new[14], new[15]]);
    let old_csum = u16::from_ne_bytes([h[10], h[11]]);
    let new_csum = checksum::replace4(old_csum, from, to);
    ctx.store(off, &to)?;
    ctx.store(q.l3_off + 10, &new_csum)?;
    // The ICMP checksum covers both changed fields of the quoted header.
    ctx.l4_csum_replace(icmp_csum, from, to, 4, 0)?;
    ctx.l4_csum_replace(icmp_csum, old_csum as u32, new_csum as u32, 2, 0)
}

// A subprogram: the two 16-byte copies for bpf_csum_diff need a stack frame of their own.
#[inline(never)]
fn quoted_addr_v6<C: Packet>(
    ctx: &C,
    q: &Flow,
    src: bool,
    new: &[u8; 16],
    icmp_csum: usize,
) -> Result<(), ()> {
    if q.l3_off > MAX_L4_OFF {
        return Err(());
    }
    let off = q.l3_off + if src { 8 } else { 24 };
    let diff = nat::replace16(ctx, off, new)?;
    // Payload bytes of the ICMPv6 message, not its pseudo-header.
    ctx.l4_csum_replace(icmp_csum, 0, diff, 0, 0)
}

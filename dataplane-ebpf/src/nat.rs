//! Rewriting addresses and ports of a parsed flow, with every checksum kept valid.

use aya_ebpf::helpers::bpf_csum_diff;
use dataplane_common::{PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use crate::{
    ctx::{load, Packet, CSUM_MANGLED_0, CSUM_PSEUDO},
    parse::Flow,
    sctp,
};

/// Where the L4 checksum lives and how it behaves, or `None` when there is none to fix.
#[inline(always)]
fn l4_csum(flow: &Flow) -> Option<(usize, u64)> {
    match flow.proto {
        PROTO_TCP => Some((flow.l4_off + 16, 0)),
        PROTO_UDP => Some((flow.l4_off + 6, CSUM_MANGLED_0)),
        // ICMPv6 covers a pseudo-header (ICMPv4 does not): only ICMP errors are rewritten.
        PROTO_ICMPV6 => Some((flow.l4_off + 2, 0)),
        // SCTP's CRC32c does not cover IP addresses; ports: see `sctp::rewrite_port`.
        _ => None,
    }
}

/// Rewrite one address (source when `is_src`) to `new`.
#[inline(always)]
pub fn rewrite_addr<C: Packet>(
    ctx: &C,
    flow: &Flow,
    is_src: bool,
    new: &[u8; 16],
) -> Result<(), ()> {
    if flow.v6 {
        rewrite_addr_v6(ctx, flow, is_src, new)
    } else {
        rewrite_addr_v4(ctx, flow, is_src, new)
    }
}

#[inline(always)]
fn rewrite_addr_v4<C: Packet>(
    ctx: &C,
    flow: &Flow,
    is_src: bool,
    new: &[u8; 16],
) -> Result<(), ()> {
    let off = flow.l3_off + if is_src { 12 } else { 16 };
    let old: u32 = load(ctx, off).ok_or(())?;
    let to = u32::from_ne_bytes([new[12], new[13], new[14], new[15]]);
    ctx.store(off, &to)?;
    ctx.l3_csum_replace(flow.l3_off + 10, old, to)?;
    if let Some((csum_off, flags)) = l4_csum(flow) {
        ctx.l4_csum_replace(csum_off, old, to, 4, flags | CSUM_PSEUDO)?;
    }
    Ok(())
}

// A subprogram: the two 16-byte copies for bpf_csum_diff need a stack frame of their own.
#[inline(never)]
fn rewrite_addr_v6<C: Packet>(
    ctx: &C,
    flow: &Flow,
    is_src: bool,
    new: &[u8; 16],
) -> Result<(), ()> {
    let off = flow.l3_off + if is_src { 8 } else { 24 };
    let diff = replace16(ctx, off, new)?;
    if let Some((csum_off, flags)) = l4_csum(flow) {
        ctx.l4_csum_replace(csum_off, 0, diff, 0, flags | CSUM_PSEUDO)?;
    }
    Ok(())
}

/// Write the 16 bytes at `off` (an IPv6 address) with `new`: the one's-complement difference
/// to fold into the checksums that cover them.
#[inline(always)]
pub fn replace16<C: Packet>(ctx: &C, off: usize, new: &[u8; 16]) -> Result<u32, ()> {
    let mut from: [u8; 16] = load(ctx, off).ok_or(())?;
    let mut to = *new;
    let diff = unsafe {
        bpf_csum_diff(
            from.as_mut_ptr() as *mut u32,
            16,
            to.as_mut_ptr() as *mut u32,
            16,
            0,
        )
    };
    if diff < 0 {
        return Err(());
    }
    ctx.store(off, new)?;
    Ok(diff as u32)
}

#[inline(always)]
fn rewrite_port<C: Packet>(ctx: &C, flow: &Flow, is_src: bool, new_be: u16) -> Result<(), ()> {
    let off = flow.l4_off + if is_src { 0 } else { 2 };
    let old = if is_src { flow.sport_be } else { flow.dport_be };
    if old == new_be {
        return Ok(());
    }
    if flow.proto == PROTO_SCTP {
        return sctp::rewrite_port(ctx, flow, is_src, old, new_be);
    }
    ctx.store(off, &new_be)?;
    if let Some((csum_off, flags)) = l4_csum(flow) {
        ctx.l4_csum_replace(csum_off, old as u32, new_be as u32, 2, flags)?;
    }
    Ok(())
}

/// Translate the destination to `addr:port_be`.
#[inline(always)]
pub fn dnat<C: Packet>(ctx: &C, flow: &Flow, addr: &[u8; 16], port_be: u16) -> Result<(), ()> {
    if *addr != flow.dst {
        rewrite_addr(ctx, flow, false, addr)?;
    }
    rewrite_port(ctx, flow, false, port_be)
}

/// Translate the source to `addr:port_be`.
#[inline(always)]
pub fn snat<C: Packet>(ctx: &C, flow: &Flow, addr: &[u8; 16], port_be: u16) -> Result<(), ()> {
    if *addr != flow.src {
        rewrite_addr(ctx, flow, true, addr)?;
    }
    rewrite_port(ctx, flow, true, port_be)
}

//! Baseline programs for the benchmarks (`cargo xtask bench`): the least a TC or XDP program on
//! the same hook must do — parse Ethernet and the IPv4/IPv6 header with bounds checks — and
//! nothing else (no maps, no counters). The agent never attaches them (they are not in
//! `skiff::bpf::object::PROGRAMS`); the bench loads them from the same object and runs them on
//! the same frames as the real programs, so the real programs' cost can be stated as a ratio.

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use crate::{
    ctx::{load, Packet, Tc, Xdp},
    parse::ETH_HLEN,
};

/// TC_ACT_UNSPEC: what `skiff_tc_pod` returns for packets it lets through.
const TC_ACT_NEXT: i32 = -1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Parse Ethernet and the IP header: `Ok(true)` for IP, `Ok(false)` for other EtherTypes,
/// `Err(())` for a truncated or malformed header. The addresses are read (and folded into a
/// value the caller keeps alive) so that the loads are not optimised away.
#[inline(always)]
fn parse_l3<C: Packet>(ctx: &C) -> Result<bool, ()> {
    let ethertype: u16 = load(ctx, 12).ok_or(())?;
    let fold = match u16::from_be(ethertype) {
        ETH_P_IP => {
            let vihl: u8 = load(ctx, ETH_HLEN).ok_or(())?;
            if vihl >> 4 != 4 || (vihl & 0x0f) < 5 {
                return Err(());
            }
            let proto: u8 = load(ctx, ETH_HLEN + 9).ok_or(())?;
            let src: u32 = load(ctx, ETH_HLEN + 12).ok_or(())?;
            let dst: u32 = load(ctx, ETH_HLEN + 16).ok_or(())?;
            src ^ dst ^ proto as u32
        }
        ETH_P_IPV6 => {
            let vtc: u8 = load(ctx, ETH_HLEN).ok_or(())?;
            if vtc >> 4 != 6 {
                return Err(());
            }
            let next: u8 = load(ctx, ETH_HLEN + 6).ok_or(())?;
            let src: [u32; 4] = load(ctx, ETH_HLEN + 8).ok_or(())?;
            let dst: [u32; 4] = load(ctx, ETH_HLEN + 24).ok_or(())?;
            src[0] ^ src[1] ^ src[2] ^ src[3] ^ dst[0] ^ dst[1] ^ dst[2] ^ dst[3] ^ next as u32
        }
        _ => return Ok(false),
    };
    core::hint::black_box(fold);
    Ok(true)
}

#[classifier]
pub fn skiff_baseline_tc(ctx: TcContext) -> i32 {
    match parse_l3(&Tc(&ctx)) {
        Ok(_) => TC_ACT_NEXT,
        Err(()) => TC_ACT_SHOT,
    }
}

#[xdp]
pub fn skiff_baseline_xdp(ctx: XdpContext) -> u32 {
    match parse_l3(&Xdp(&ctx)) {
        Ok(_) => xdp_action::XDP_PASS,
        Err(()) => xdp_action::XDP_DROP,
    }
}

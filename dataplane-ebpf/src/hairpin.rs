//! Hairpin: a pod reaching itself through a service. Translating only the destination would
//! hand the pod a packet from itself to itself, and its answer would stay inside the pod,
//! never translated back. So, like kube-proxy's hairpin masquerade, the source becomes the
//! node address (with a port from the masquerade range, allocated without collisions), and
//! the pod answers the node, through its veth.
//!
//! Both directions are sent straight back into the pod by the from-pod hook: the translated
//! request carries one of the node's own addresses as its source, which the kernel would
//! drop as a martian if it received it.
//!
//! Entries of a hairpinned connection (pod P:c to frontend F:f, backend P:b, node N, port n),
//! both `CT_F_HAIRPIN | CT_F_DNAT | CT_F_SNAT` in `CONNTRACK`:
//! - (P, F, c, f): destination to P:b, source to N:n;
//! - (P, N, b, n), `CT_F_REPLY`: destination to P:c, source to F:f.

use aya_ebpf::{bindings::TC_ACT_SHOT, helpers::bpf_redirect};
use dataplane_common::{Backend, CtValue, Reason, CT_F_DNAT, CT_F_HAIRPIN, CT_F_REPLY, CT_F_SNAT};

use crate::{
    conntrack::{self, key, state_bits},
    ctx::{load, Packet, Tc},
    maps::{CONNTRACK, SCRATCH},
    nat,
    parse::Flow,
    snat,
};

/// Track a pod's new connection to itself through a frontend: `NatHairpin` with the
/// original direction's entry left in the scratch map for `translate`, or why not.
// A subprogram (the caller's frame is nearly full), without the rewrite for the same reason.
#[inline(never)]
pub fn track(flow: &Flow, backend_id: u32, be: &Backend, now: u64) -> Reason {
    let Some(node) = snat::node_address(flow.v6) else {
        return Reason::DropNoMasqAddress;
    };
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return Reason::DropCtFull;
    };
    let s = unsafe { &mut *s };
    let flags = CT_F_HAIRPIN | CT_F_DNAT | CT_F_SNAT;
    // The reply direction (P, N, b, n), its port still to choose.
    s.key = key(be.addr, node, be.port_be, 0, flow.proto);
    s.value = CtValue {
        nat_dst: flow.src,
        nat_dport_be: flow.sport_be,
        ..conntrack::frontend_as_source(flow, backend_id, now, flags | CT_F_REPLY)
    };
    let Some(port_be) = snat::allocate(s, flow.proto, now) else {
        return Reason::DropSnatNoPort;
    };
    s.key = key(flow.src, flow.dst, flow.sport_be, flow.dport_be, flow.proto);
    s.value = CtValue {
        nat_src: node,
        nat_dst: be.addr,
        nat_sport_be: port_be,
        nat_dport_be: be.port_be,
        backend_id,
        last_seen_ns: now,
        flags,
        tcp_state: state_bits(flow.proto, flow.tcp_flags),
        _pad: [0; 6],
    };
    if CONNTRACK.insert(&s.key, &s.value, 0).is_err() {
        s.key = key(be.addr, node, be.port_be, port_be, flow.proto);
        let _ = CONNTRACK.remove(&s.key);
        return Reason::DropCtFull;
    }
    Reason::NatHairpin
}

/// Both halves of a hairpinned packet's translation, as its entry `ct` says.
// A subprogram: inlined, its rewrites would grow the pipeline's nearly full frame.
#[inline(never)]
pub fn translate<C: Packet>(ctx: &C, flow: &Flow, ct: &CtValue) -> Reason {
    let (dst, dport_be, src, sport_be) = (ct.nat_dst, ct.nat_dport_be, ct.nat_src, ct.nat_sport_be);
    if nat::dnat(ctx, flow, &dst, dport_be).is_err()
        || nat::snat(ctx, flow, &src, sport_be).is_err()
    {
        return Reason::DropNatFailed;
    }
    Reason::NatHairpin
}

/// Send a hairpinned packet back into the pod it came from (the veth it entered by), its
/// MAC addresses swapped as if the node had routed it.
// A subprogram: called once, after the verdict counter, with only the context live.
#[inline(never)]
pub fn back_into_pod(tc: &Tc) -> i32 {
    let Some(macs) = load::<Tc, [u8; 12]>(tc, 0) else {
        return TC_ACT_SHOT;
    };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    if tc.store(0, &swapped).is_err() {
        return TC_ACT_SHOT;
    }
    let ifindex = unsafe { (*tc.0.skb.skb).ifindex };
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

//! Masquerading: connections from outside the node to a backend on another node leave with
//! the node's address, so that the backend's replies come back through this node.
//!
//! The rewrite is split in two because the kernel drops, as a martian, any packet that
//! arrives with one of the node's own addresses as its source: the XDP hook translates only
//! destinations (client -> backend on the way in, node -> client for replies) and lets the
//! kernel route the packet; TC egress on the external interface (`tc_ext`), after routing,
//! rewrites sources (client -> node address and port, backend -> service address). The node
//! port is allocated at egress too, where the program has the whole stack to itself.
//!
//! Entries of one masqueraded connection (client C:c to frontend F:f, backend B:b, node
//! address N and allocated port n):
//! - `CONNTRACK` (C, F, c, f): `CT_F_DNAT | CT_F_MASQ`, to B:b (made at XDP);
//! - `SNAT` (C, B, c, b): made at XDP as `CT_F_MASQ` (pending, `nat_src` = F:f); its first
//!   packet at egress allocates n and turns it into `CT_F_SNAT`, source to N:n;
//! - `CONNTRACK` (B, N, b, n): `CT_F_REPLY | CT_F_DNAT`, to C:c, inserted with
//!   `BPF_NOEXIST` for a random n until one is free: the collision-free allocation;
//! - `SNAT` (B, C, b, c): `CT_F_REPLY | CT_F_SNAT`, source to F:f.

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
};
use dataplane_common::{
    AddrLpmKey, Backend, CtValue, Reason, Scratch, ServiceValue, BE_F_LOCAL, CT_F_DNAT, CT_F_MASQ,
    CT_F_REPLY, CT_F_SNAT, MASQ_V4, MASQ_V6, SNAT_PORT_MAX, SNAT_PORT_MIN, SNAT_PORT_TRIES,
    SVC_F_MASQ, SVC_F_MASQ_OFF_CLUSTER,
};

use crate::{
    conntrack::{self, key, state_bits},
    ctx::{Packet, Tc},
    icmp_nat,
    maps::{NetKey, CONNTRACK, MASQ_ADDRS, POD_NETS, SCRATCH, SNAT},
    nat,
    parse::{self, Flow, Parsed},
};

/// Whether a new connection from outside the node to `be` through a frontend with
/// `svc_flags` is masqueraded. Backends on this node never are: their replies pass through
/// the node anyway, and they see the client's address (kube-proxy masquerades those too;
/// see the README).
#[inline(always)]
pub fn wanted(svc: &ServiceValue, be: &Backend, src: &[u8; 16]) -> bool {
    if be.flags & BE_F_LOCAL != 0 {
        return false;
    }
    svc.flags & SVC_F_MASQ != 0 || (svc.flags & SVC_F_MASQ_OFF_CLUSTER != 0 && !is_pod(src))
}

/// Whether `src` is inside `clusterCIDRs`. A subprogram: inlined into the XDP pipeline it
/// crashed LLVM's BPF backend (post-RA pseudo instruction expansion).
#[inline(never)]
fn is_pod(src: &[u8; 16]) -> bool {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let s = unsafe { &mut *s };
    s.addr_key = AddrLpmKey {
        prefix_len: 128,
        addr: *src,
    };
    // Same layout as aya's `Key<[u8; 16]>` (asserted in dataplane-common).
    let key = unsafe { &*(&s.addr_key as *const AddrLpmKey as *const NetKey) };
    POD_NETS.get(key).is_some()
}

/// Track a new masqueraded connection at XDP: the pending egress entry, then the original
/// direction. Built in the scratch map, like `conntrack::create`.
#[inline(always)]
pub fn track_new(flow: &Flow, backend_id: u32, be: &Backend, now: u64) -> Result<(), ()> {
    let s = SCRATCH.get_ptr_mut(0).ok_or(())?;
    let s = unsafe { &mut *s };
    s.key = key(flow.src, be.addr, flow.sport_be, be.port_be, flow.proto);
    s.value = conntrack::frontend_as_source(flow, backend_id, now, CT_F_MASQ);
    SNAT.insert(&s.key, &s.value, 0).map_err(|_| ())?;
    conntrack::insert_original(s, flow, backend_id, be, now, CT_F_DNAT | CT_F_MASQ)
}

/// A reply to a masqueraded connection, arriving at the node address and port: back to the
/// client (its source is translated when it leaves, see `egress`).
// A subprogram: inlined into the XDP pipeline it crashed LLVM's BPF backend.
#[inline(never)]
pub fn reply<C: Packet>(ctx: &C, flow: &Flow, ct: &CtValue) -> Reason {
    match nat::dnat(ctx, flow, &ct.nat_dst, ct.nat_dport_be) {
        Ok(()) => Reason::NatMasqReply,
        Err(()) => Reason::DropNatFailed,
    }
}

/// TC egress on an external interface: the source rewrite of masqueraded connections (and
/// the node port allocation of new ones). Everything else leaves untouched: this is all of
/// the node's traffic, never dropped here unless a rewrite fails.
/// (TC only: parsing is the `parse_tc` subprogram, whose temporaries stay out of this
/// frame, which the rewrites need; and this is a subprogram itself, so that the program's own
/// frame stays small, see `icmp_nat::stash`.)
#[inline(never)]
pub fn egress(ctx: &Tc) -> Reason {
    let flow = match parse::parse_tc(ctx) {
        Ok(Parsed::Flow(f)) => f,
        Ok(Parsed::NotIp) => return Reason::PassNotIp,
        Ok(Parsed::Fragment) => return Reason::PassFragment,
        // ICMP errors: `icmp_nat::translate_stashed`, once this frame is gone.
        Ok(Parsed::Other(f)) => {
            icmp_nat::stash(&f);
            return Reason::PassOtherProto;
        }
        Err(_) => return Reason::PassNoMasq,
    };
    let now = conntrack::now();
    let Some(v) = conntrack::lookup_in(&SNAT, &flow, now) else {
        return Reason::PassNoMasq;
    };
    if v.flags & CT_F_MASQ != 0 {
        return first_packet(ctx, &flow, now);
    }
    let reply = v.flags & CT_F_REPLY != 0;
    match nat::snat(ctx, &flow, &v.nat_src, v.nat_sport_be) {
        Ok(()) if reply => Reason::NatReplySource,
        Ok(()) => Reason::NatMasqSource,
        Err(()) => Reason::DropNatFailed,
    }
}

/// The first packet of a masqueraded connection leaving the node: allocate the node port,
/// track the reply direction, and rewrite the source.
#[inline(always)]
fn first_packet<C: Packet>(ctx: &C, flow: &Flow, now: u64) -> Reason {
    let Some(node) = node_address(flow.v6) else {
        return Reason::DropNoMasqAddress;
    };
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return Reason::DropCtFull;
    };
    let s = unsafe { &mut *s };
    // The pending entry: the frontend the client addressed, and the backend id.
    let pending = key(flow.src, flow.dst, flow.sport_be, flow.dport_be, flow.proto);
    let Some(p) = SNAT.get_ptr(&pending) else {
        return Reason::DropCtFull;
    };
    let (frontend, frontend_port, backend_id) =
        unsafe { ((*p).nat_src, (*p).nat_sport_be, (*p).backend_id) };

    // The reply entry (B, N, b, n) -> C:c, its port still to choose.
    s.key = key(flow.dst, node, flow.dport_be, 0, flow.proto);
    s.value = CtValue {
        nat_src: frontend,
        nat_dst: flow.src,
        nat_sport_be: frontend_port,
        nat_dport_be: flow.sport_be,
        backend_id,
        last_seen_ns: now,
        flags: CT_F_REPLY | CT_F_DNAT,
        tcp_state: 0,
        _pad: [0; 6],
    };
    let Some(port_be) = allocate(s, flow.proto, now) else {
        return Reason::DropSnatNoPort;
    };
    // The reply's way out: source back to the frontend.
    s.key = key(flow.dst, flow.src, flow.dport_be, flow.sport_be, flow.proto);
    s.value = CtValue {
        nat_src: frontend,
        nat_dst: [0; 16],
        nat_sport_be: frontend_port,
        nat_dport_be: 0,
        backend_id,
        last_seen_ns: now,
        flags: CT_F_REPLY | CT_F_SNAT,
        tcp_state: 0,
        _pad: [0; 6],
    };
    let out = SNAT.insert(&s.key, &s.value, 0);
    // And this direction: source to the node address and port (the pending entry replaced).
    s.key = pending;
    s.value = CtValue {
        nat_src: node,
        nat_dst: [0; 16],
        nat_sport_be: port_be,
        nat_dport_be: 0,
        backend_id,
        last_seen_ns: now,
        flags: CT_F_SNAT,
        tcp_state: state_bits(flow.proto, flow.tcp_flags),
        _pad: [0; 6],
    };
    if out.is_err() || SNAT.insert(&s.key, &s.value, 0).is_err() {
        s.key = key(flow.dst, node, flow.dport_be, port_be, flow.proto);
        let _ = CONNTRACK.remove(&s.key);
        return Reason::DropCtFull;
    }
    match nat::snat(ctx, flow, &node, port_be) {
        Ok(()) => Reason::NatMasqSource,
        Err(()) => Reason::DropNatFailed,
    }
}

/// The node address masqueraded traffic of this family leaves with, if the node has one.
#[inline(always)]
pub fn node_address(v6: bool) -> Option<[u8; 16]> {
    let family = if v6 { MASQ_V6 } else { MASQ_V4 };
    MASQ_ADDRS
        .get(family)
        .copied()
        .filter(|addr| *addr != [0; 16])
}

/// Claim a node port for the reply entry prepared in `s` (key without its destination
/// port): inserted only if no live connection holds it, which makes the allocation
/// collision-free. An expired entry holds its port only until the LRU evicts it, so it is
/// taken over.
#[inline(always)]
pub fn allocate(s: &mut Scratch, proto: u8, now: u64) -> Option<u16> {
    let span = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
    for _ in 0..SNAT_PORT_TRIES {
        let r = unsafe { bpf_get_prandom_u32() };
        let port_be = (SNAT_PORT_MIN + (r % span) as u16).to_be();
        s.key.dport_be = port_be;
        if CONNTRACK
            .insert(&s.key, &s.value, BPF_NOEXIST as u64)
            .is_ok()
        {
            return Some(port_be);
        }
        let stale = CONNTRACK
            .get_ptr(&s.key)
            .is_some_and(|old| conntrack::expired(unsafe { &*old }, proto, now));
        if stale && CONNTRACK.insert(&s.key, &s.value, BPF_EXIST as u64).is_ok() {
            return Some(port_be);
        }
    }
    None
}

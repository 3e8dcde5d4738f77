//! Connection tracking: one LRU entry per direction of every translated connection, with
//! per-state idle timeouts so closed and idle connections stop pinning their backend. The
//! liveness rule (`live`) is shared with the policy conntrack (`policy_ct`).

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::LruHashMap};
use dataplane_common::{
    Backend, CtKey, CtValue, Scratch, CT_F_DNAT, CT_F_REPLY, CT_F_SNAT, CT_REFRESH_NS,
    CT_TIMEOUT_OTHER_NS, CT_TIMEOUT_TCP_CLOSING_NS, CT_TIMEOUT_TCP_ESTABLISHED_NS,
    CT_TIMEOUT_TCP_OPENING_NS, PROTO_TCP, TCP_S_ESTABLISHED, TCP_S_FIN, TCP_S_RST, TCP_S_SYN,
};

use crate::{
    maps::{CONNTRACK, SCRATCH, SNAT},
    parse::{Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn key(src: [u8; 16], dst: [u8; 16], sport_be: u16, dport_be: u16, proto: u8) -> CtKey {
    CtKey {
        src,
        dst,
        sport_be,
        dport_be,
        proto,
        _pad: [0; 3],
    }
}

/// The `TCP_S_*` bits a packet with these TCP flags adds to its entry (0 for other protocols).
#[inline(always)]
pub fn state_bits(proto: u8, tcp_flags: u8) -> u8 {
    if proto != PROTO_TCP {
        return 0;
    }
    let f = tcp_flags;
    let mut s = 0;
    if f & TCP_SYN != 0 {
        s |= TCP_S_SYN;
    }
    if f & TCP_FIN != 0 {
        s |= TCP_S_FIN;
    }
    if f & TCP_RST != 0 {
        s |= TCP_S_RST;
    }
    if f & TCP_ACK != 0 && f & (TCP_SYN | TCP_RST) == 0 {
        s |= TCP_S_ESTABLISHED;
    }
    s
}

#[inline(always)]
fn timeout(proto: u8, state: u8) -> u64 {
    if proto != PROTO_TCP {
        CT_TIMEOUT_OTHER_NS
    } else if state & (TCP_S_FIN | TCP_S_RST) != 0 {
        CT_TIMEOUT_TCP_CLOSING_NS
    } else if state & TCP_S_ESTABLISHED != 0 {
        CT_TIMEOUT_TCP_ESTABLISHED_NS
    } else {
        CT_TIMEOUT_TCP_OPENING_NS
    }
}

/// Whether an entry of this protocol has been idle longer than its state allows.
#[inline(always)]
pub fn expired(v: &CtValue, proto: u8, now: u64) -> bool {
    now.saturating_sub(v.last_seen_ns) > timeout(proto, v.tcp_state)
}

/// Whether an entry (its `last_seen_ns` and `tcp_state`) still stands for the connection of a
/// packet with this protocol and these TCP flags, refreshing it if so. Not when it has
/// expired, or when a TCP SYN reopens a closed tuple (a new connection on a reused port).
#[inline(always)]
pub fn live(
    proto: u8,
    tcp_flags: u8,
    last_seen_ns: &mut u64,
    tcp_state: &mut u8,
    now: u64,
) -> bool {
    if now.saturating_sub(*last_seen_ns) > timeout(proto, *tcp_state) {
        return false;
    }
    let bits = state_bits(proto, tcp_flags);
    if bits & TCP_S_SYN != 0
        && tcp_flags & TCP_ACK == 0
        && *tcp_state & (TCP_S_FIN | TCP_S_RST) != 0
    {
        return false;
    }
    let state = *tcp_state | bits;
    if state != *tcp_state || now.saturating_sub(*last_seen_ns) > CT_REFRESH_NS {
        *tcp_state = state;
        *last_seen_ns = now;
    }
    true
}

/// The live entry for this packet's direction, refreshed; `None` when there is none or it is
/// no longer live (see `live`).
#[inline(always)]
pub fn lookup(flow: &Flow, now: u64) -> Option<&CtValue> {
    let k = key(flow.src, flow.dst, flow.sport_be, flow.dport_be, flow.proto);
    refresh(CONNTRACK.get_ptr_mut(&k)?, flow, now)
}

/// `lookup` in another map of the same layout (the egress masquerade map).
#[inline(always)]
pub fn lookup_in<'a>(
    map: &'a LruHashMap<CtKey, CtValue>,
    flow: &Flow,
    now: u64,
) -> Option<&'a CtValue> {
    let k = key(flow.src, flow.dst, flow.sport_be, flow.dport_be, flow.proto);
    refresh(map.get_ptr_mut(&k)?, flow, now)
}

#[inline(always)]
fn refresh<'a>(p: *mut CtValue, flow: &Flow, now: u64) -> Option<&'a CtValue> {
    // Racing writers on other CPUs can only refresh the same fields with similar values.
    let v = unsafe { &mut *p };
    if !live(
        flow.proto,
        flow.tcp_flags,
        &mut v.last_seen_ns,
        &mut v.tcp_state,
        now,
    ) {
        return None;
    }
    Some(v)
}

/// An entry whose source translation restores the frontend `flow` addressed (`flags` say
/// which direction and map it serves): the reply direction of a new translated connection,
/// a masqueraded connection's pending egress entry, a hairpin's reply.
#[inline(always)]
pub fn frontend_as_source(flow: &Flow, backend_id: u32, now: u64, flags: u8) -> CtValue {
    CtValue {
        nat_src: flow.dst,
        nat_dst: [0; 16],
        nat_sport_be: flow.dport_be,
        nat_dport_be: 0,
        backend_id,
        last_seen_ns: now,
        flags,
        tcp_state: 0,
        _pad: [0; 6],
    }
}

/// Track a new connection from `flow`'s client to `be`: the original direction translates the
/// destination to the backend, the reply direction translates the source back. For a client
/// outside the node (`external`) the reply is translated where it leaves the node (the
/// `SNAT` map, at the external interfaces' egress): its new source may be one of the node's
/// own addresses (a NodePort), which the kernel drops as martian on a packet it receives.
// Keys and values are built in the per-CPU scratch map: together they exceed what the BPF
// stack has left at this depth.
#[inline(always)]
pub fn create(
    flow: &Flow,
    backend_id: u32,
    be: &Backend,
    now: u64,
    external: bool,
) -> Result<(), ()> {
    let s = SCRATCH.get_ptr_mut(0).ok_or(())?;
    let s = unsafe { &mut *s };
    s.key = key(be.addr, flow.src, be.port_be, flow.sport_be, flow.proto);
    s.value = frontend_as_source(flow, backend_id, now, CT_F_REPLY | CT_F_SNAT);
    let reply = if external { &SNAT } else { &CONNTRACK };
    reply.insert(&s.key, &s.value, 0).map_err(|_| ())?;
    insert_original(s, flow, backend_id, be, now, CT_F_DNAT)
}

/// The original direction of a new translated connection (client -> frontend, destination
/// rewritten to `be`), with `flags` (`CT_F_DNAT`, plus `CT_F_MASQ` when masqueraded), built
/// in the scratch space `s`.
#[inline(always)]
pub fn insert_original(
    s: &mut Scratch,
    flow: &Flow,
    backend_id: u32,
    be: &Backend,
    now: u64,
    flags: u8,
) -> Result<(), ()> {
    s.key = key(flow.src, flow.dst, flow.sport_be, flow.dport_be, flow.proto);
    s.value = CtValue {
        nat_src: [0; 16],
        nat_dst: be.addr,
        nat_sport_be: 0,
        nat_dport_be: be.port_be,
        backend_id,
        last_seen_ns: now,
        flags,
        tcp_state: state_bits(flow.proto, flow.tcp_flags),
        _pad: [0; 6],
    };
    CONNTRACK.insert(&s.key, &s.value, 0).map_err(|_| ())
}

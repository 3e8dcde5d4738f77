//! Policy connection tracking (`SK_PCT_V1`): one entry per connection, keyed by its original
//! tuple with pod addresses (after service translation), with a flag per end that allowed it.
//!
//! - A packet whose own tuple has a live entry with this end's flag is part of a connection
//!   this end allowed; a packet whose reversed tuple has a live entry with this end's flag
//!   (the flag of this pod's role in that connection) is one of its replies. Neither needs a
//!   policy lookup, and neither is affected by later policy changes until the connection ends.
//! - Liveness (idle timeouts per TCP state, a SYN on a closed tuple starts anew) is the service
//!   conntrack's rule, `conntrack::live`; TCP state bits of both directions accumulate, so a
//!   FIN or RST from either end lets the entry expire soon.

use dataplane_common::{
    policy::{PolicyCtValue, DIR_EGRESS, PCT_F_EGRESS_OK, PCT_F_INGRESS_OK},
    CtKey,
};

use crate::{
    conntrack::{key, live, state_bits},
    maps::POLICY_CONNTRACK,
    parse::Flow,
};

/// The flag of the end that enforces `dir` (egress: the connection's source pod; ingress: its
/// destination pod).
#[inline(always)]
pub fn flag(dir: u8) -> u8 {
    if dir == DIR_EGRESS {
        PCT_F_EGRESS_OK
    } else {
        PCT_F_INGRESS_OK
    }
}

/// Keys are built in `slot` (per-CPU scratch): the from-pod hook's stack has no room left.
#[inline(always)]
fn forward_key<'a>(t: &Flow, slot: &'a mut CtKey) -> &'a CtKey {
    *slot = key(t.src, t.dst, t.sport_be, t.dport_be, t.proto);
    slot
}

/// What the entry of a packet's own tuple says.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// No entry.
    Missing,
    /// An entry that no longer stands for a connection (expired, or a SYN reopens its tuple).
    Stale,
    /// A live entry (refreshed), with the `PCT_F_*` flags of the ends that allowed it.
    Live(u8),
}

#[inline(always)]
pub fn forward(t: &Flow, slot: &mut CtKey, now: u64) -> Forward {
    let Some(p) = POLICY_CONNTRACK.get_ptr_mut(forward_key(t, slot)) else {
        return Forward::Missing;
    };
    // Racing writers on other CPUs only refresh the same fields with similar values.
    let v = unsafe { &mut *p };
    if live(
        t.proto,
        t.tcp_flags,
        &mut v.last_seen_ns,
        &mut v.tcp_state,
        now,
    ) {
        Forward::Live(v.flags)
    } else {
        Forward::Stale
    }
}

/// True when the packet is a reply of a live connection the local end of `dir` allowed: the
/// reversed tuple's entry carries the flag of the opposite direction (this pod's role when the
/// peer opened the connection: egress replies answer what its ingress allowed, and back).
#[inline(always)]
pub fn is_reply(t: &Flow, dir: u8, slot: &mut CtKey, now: u64) -> bool {
    *slot = key(t.dst, t.src, t.dport_be, t.sport_be, t.proto);
    let Some(p) = POLICY_CONNTRACK.get_ptr_mut(&*slot) else {
        return false;
    };
    let v = unsafe { &mut *p };
    let want = if dir == DIR_EGRESS {
        PCT_F_INGRESS_OK
    } else {
        PCT_F_EGRESS_OK
    };
    v.flags & want != 0
        && live(
            t.proto,
            t.tcp_flags,
            &mut v.last_seen_ns,
            &mut v.tcp_state,
            now,
        )
}

/// Record that the end of `dir` allowed the connection of `t`: add its flag to a live entry,
/// or start a new entry (replacing a stale one, whose flags belonged to an ended connection).
/// A full LRU map evicts its oldest entry; a failure only costs a policy lookup later.
#[inline(always)]
pub fn record(t: &Flow, dir: u8, prev: Forward, slot: &mut CtKey, now: u64) {
    let k = forward_key(t, slot);
    if let Forward::Live(_) = prev {
        if let Some(p) = POLICY_CONNTRACK.get_ptr_mut(k) {
            let v = unsafe { &mut *p };
            v.flags |= flag(dir);
            return;
        }
    }
    let v = PolicyCtValue {
        last_seen_ns: now,
        flags: flag(dir),
        tcp_state: state_bits(t.proto, t.tcp_flags),
        _pad: [0; 6],
    };
    let _ = POLICY_CONNTRACK.insert(k, &v, 0);
}

/// Forget the entry of a tuple this end denied: the other end may have allowed it already
/// (same-node pods), and its entry must not let packets of the reversed tuple pass as replies
/// of an allowed connection.
#[inline(always)]
pub fn forget(t: &Flow, slot: &mut CtKey) {
    let _ = POLICY_CONNTRACK.remove(forward_key(t, slot));
}

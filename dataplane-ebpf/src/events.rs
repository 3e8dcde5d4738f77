//! Policy verdict events into the `SK_EVENTS_V1` ring buffer, for `skiff observe`. A full ring
//! loses the event, never the packet.

use dataplane_common::{
    policy::{PolicyEvent, CFG_ALLOW_EVENTS, CFG_FLAGS},
    Reason,
};

use crate::{
    maps::{CONFIG, POLICY_EVENTS},
    parse::Flow,
};

/// Whether the agent asked for events of allowed connections too (`CFG_ALLOW_EVENTS`).
#[inline(always)]
pub fn allow_events() -> bool {
    CONFIG
        .get(CFG_FLAGS)
        .is_some_and(|f| *f & CFG_ALLOW_EVENTS != 0)
}

/// Report one verdict on the tuple `t` (pod addresses) by `endpoint`'s policy for `dir`.
#[inline(always)]
pub fn emit(
    t: &Flow,
    dir: u8,
    verdict: u8,
    endpoint: u32,
    identity: u32,
    reason: Reason,
    now: u64,
) {
    // Written in place in the ring: no 64-byte copy on the stack.
    if let Some(mut e) = POLICY_EVENTS.reserve::<PolicyEvent>(0) {
        e.write(PolicyEvent {
            ts_ns: now,
            src: t.src,
            dst: t.dst,
            sport_be: t.sport_be,
            dport_be: t.dport_be,
            proto: t.proto,
            dir,
            verdict,
            _pad: 0,
            endpoint,
            identity,
            reason: reason.index(),
            _pad2: 0,
        });
        e.submit(0);
    }
}

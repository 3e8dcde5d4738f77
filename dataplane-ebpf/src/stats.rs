//! Per-CPU packet counters, one per `Reason`: the agent's metrics and `trace` read them.

use dataplane_common::Reason;

use crate::maps::STATS;

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(p) = STATS.get_ptr_mut(reason.index()) {
        // Per-CPU slot: no other writer can race with this increment.
        unsafe { *p += 1 };
    }
}

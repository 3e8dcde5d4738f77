//! TC egress on the node's external interfaces: the source half of masquerading (`snat`),
//! after the kernel has routed the packet, so it never sees one of its own addresses as
//! the source of a packet it receives.

use aya_ebpf::{bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext};

use dataplane_common::Reason;

use crate::{ctx::Tc, icmp_nat, maps::SNAT, snat, stats};

/// TC_ACT_UNSPEC: no opinion, the next TCX program (or the stack) decides.
const TC_ACT_NEXT: i32 = -1;

#[classifier]
pub fn skiff_tc_ext(ctx: TcContext) -> i32 {
    let tc = Tc(&ctx);
    let reason = match snat::egress(&tc) {
        Reason::PassOtherProto => icmp_nat::translate_stashed(&tc, &SNAT),
        r => r,
    };
    stats::count(reason);
    if reason.is_drop() {
        TC_ACT_SHOT
    } else {
        TC_ACT_NEXT
    }
}

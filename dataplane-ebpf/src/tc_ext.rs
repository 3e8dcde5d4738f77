//! TC egress on the node's external interfaces: the source half of masquerading (`snat`),
//! after the kernel has routed the packet, so it never sees one of its own addresses as
//! the source of a packet it receives.

use aya_ebpf::{bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext};

use crate::{ctx::Tc, snat, stats};

/// TC_ACT_UNSPEC: no opinion, the next TCX program (or the stack) decides.
const TC_ACT_NEXT: i32 = -1;

#[classifier]
pub fn skiff_tc_ext(ctx: TcContext) -> i32 {
    let reason = snat::egress(&Tc(&ctx));
    stats::count(reason);
    if reason.is_drop() {
        TC_ACT_SHOT
    } else {
        TC_ACT_NEXT
    }
}

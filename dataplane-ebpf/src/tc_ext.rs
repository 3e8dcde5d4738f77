//! TC egress on the node's external interfaces: the source half of masquerading (`snat`),
//! after the kernel has routed the packet, so it never sees one of its own addresses as
//! the source of a packet it receives.

use aya_ebpf::{macros::classifier, programs::TcContext};

use dataplane_common::Reason;

use crate::{ctx::Tc, icmp_nat, maps::SNAT, snat, stats};

#[classifier]
pub fn skiff_tc_ext(ctx: TcContext) -> i32 {
    let tc = Tc(&ctx);
    let reason = match snat::egress(&tc) {
        Reason::PassOtherProto => icmp_nat::translate_stashed(&tc, &SNAT),
        r => r,
    };
    stats::count(reason);
    tc.action(reason)
}

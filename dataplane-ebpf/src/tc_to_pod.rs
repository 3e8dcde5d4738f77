//! TC egress on the host side of each pod's veth: sees every packet going into the pod, and
//! enforces the pod's ingress NetworkPolicy.

use aya_ebpf::{macros::classifier, programs::TcContext};
use dataplane_common::Reason;

use crate::{
    ctx::Tc,
    parse::{self, Parsed},
    policy, stats,
};

#[classifier]
pub fn skiff_tc_to_pod(ctx: TcContext) -> i32 {
    let tc = Tc(&ctx);
    let reason = match parse::parse_tc(&tc) {
        Ok(Parsed::Flow(f) | Parsed::Other(f)) => policy::ingress(&tc, &f),
        Ok(Parsed::NotIp) => Reason::PassNotIp,
        Ok(Parsed::Fragment) => Reason::PassFragment,
        Err(r) => r,
    };
    stats::count(reason);
    tc.action(reason)
}

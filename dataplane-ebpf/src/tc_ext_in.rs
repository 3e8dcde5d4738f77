//! TC ingress on the node's external interfaces: the same pipeline as `xdp_ext`, for
//! interfaces whose driver has no native XDP (or when the node config asks for TC). Generic
//! XDP would run at the same point, after the skb is allocated, but may have to copy and
//! linearise each one; TC works on the skb as it is and keeps checksum offload state right.

use aya_ebpf::{macros::classifier, programs::TcContext};

use dataplane_common::Reason;

use crate::{
    ctx::Tc,
    icmp_nat,
    maps::CONNTRACK,
    parse::{self, Flow, Parsed},
    service, stats,
};

#[classifier]
pub fn skiff_tc_ext_in(ctx: TcContext) -> i32 {
    let tc = Tc(&ctx);
    // `xdp_ext`'s steps (`service::handle_external`, then ICMP errors), laid out as
    // `tc_pod` lays them out: with the TC helpers, parsing inlined into the pipeline's frame
    // takes the call chain past the 512-byte stack, so parsing and the pipeline are sibling
    // subprograms and the ICMP error is translated from the flow parsed here.
    let parsed = parse::parse_tc(&tc);
    let reason = match &parsed {
        Ok(Parsed::Flow(f)) => translate(&tc, f),
        Ok(Parsed::Other(f)) => icmp_nat::translate(&tc, f, &CONNTRACK),
        Ok(Parsed::NotIp) => Reason::PassNotIp,
        Ok(Parsed::Fragment) => Reason::PassFragment,
        Err(r) => *r,
    };
    stats::count(reason);
    tc.action(reason)
}

/// The service pipeline with external-scope frontends first, in a frame of its own.
#[inline(never)]
fn translate(tc: &Tc, f: &Flow) -> Reason {
    service::translate(tc, f, true)
}

//! TC ingress on the host side of each pod's veth: sees every packet a pod sends, so it
//! translates pods' connections to services and, on the backend pod's veth, their replies,
//! then enforces the pod's egress NetworkPolicy on the translated flow.

use aya_ebpf::{macros::classifier, programs::TcContext};
use dataplane_common::Reason;

use crate::{
    ctx::Tc,
    hairpin, icmp_nat,
    maps::CONNTRACK,
    parse::{self, Flow, Parsed},
    policy, service, stats,
};

#[classifier]
pub fn skiff_tc_pod(ctx: TcContext) -> i32 {
    let tc = Tc(&ctx);
    // Matched by reference: a moved-out copy of the flow would cost stack the call chain
    // below does not have.
    let parsed = parse::parse_tc(&tc);
    let reason = match &parsed {
        Ok(Parsed::Flow(f)) => {
            let r = translate(&tc, f);
            // A rejected packet is now the reply to this pod: no egress policy applies.
            if r.is_drop() || r.is_reject() {
                r
            } else {
                policy::egress(&tc, f, r)
            }
        }
        // Policy first, on the error as the pod sent it (the packet it quotes is the pod's).
        Ok(Parsed::Other(f)) => match policy::egress(&tc, f, Reason::PassOtherProto) {
            Reason::PassOtherProto => icmp_nat::translate(&tc, f, &CONNTRACK),
            r => r,
        },
        Ok(Parsed::NotIp) => Reason::PassNotIp,
        Ok(Parsed::Fragment) => Reason::PassFragment,
        Err(r) => *r,
    };
    stats::count(reason);
    if reason == Reason::NatHairpin {
        return hairpin::back_into_pod(&tc);
    }
    tc.action(reason)
}

// Parsing (`parse::parse_tc`), the service pipeline and policy (`policy::enforce`) are
// subprograms with stack frames of their own: inlined into one function they need more than
// the 512 bytes of BPF stack.
#[inline(never)]
fn translate(tc: &Tc, f: &Flow) -> Reason {
    service::translate(tc, f, false)
}

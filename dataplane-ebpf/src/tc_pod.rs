//! TC ingress on the host side of each pod's veth: sees every packet a pod sends, so it
//! translates pods' connections to services and, on the backend pod's veth, their replies.

use aya_ebpf::{
    bindings::TC_ACT_SHOT, helpers::bpf_redirect, macros::classifier, programs::TcContext,
};

use crate::{ctx::Tc, service, stats};

/// TC_ACT_UNSPEC: no opinion, the next TCX program (or the stack) decides.
const TC_ACT_NEXT: i32 = -1;

#[classifier]
pub fn skiff_tc_pod(ctx: TcContext) -> i32 {
    let reason = service::handle(&Tc(&ctx));
    stats::count(reason);
    if reason.is_reject() {
        // The packet is now the reply to the pod: back out of the veth it came in by.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        return unsafe { bpf_redirect(ifindex, 0) } as i32;
    }
    if reason.is_drop() {
        TC_ACT_SHOT
    } else {
        TC_ACT_NEXT
    }
}

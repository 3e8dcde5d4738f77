//! XDP on the node's external interfaces: service traffic arriving from outside the node is
//! translated before the stack allocates an skb. Replies go back through the backend pod's
//! TC hook (`tc_pod`), which shares the connection-tracking map.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use dataplane_common::Reason;

use crate::{ctx::Xdp, icmp_nat, maps::CONNTRACK, service, stats};

#[xdp]
pub fn skiff_xdp_ext(ctx: XdpContext) -> u32 {
    let x = Xdp(&ctx);
    let reason = match service::handle_external(&x) {
        Reason::PassOtherProto => icmp_nat::translate_stashed(&x, &CONNTRACK),
        r => r,
    };
    stats::count(reason);
    if reason.is_reject() {
        // The packet is now the reply (MACs swapped): back out of the interface it came in by.
        xdp_action::XDP_TX
    } else if reason.is_drop() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

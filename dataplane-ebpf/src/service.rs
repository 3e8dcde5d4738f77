//! The service pipeline shared by every hook: parse, follow a tracked connection or start a
//! new one on a service frontend, and translate.

use dataplane_common::{Reason, CT_F_REPLY, PROTO_TCP};

use crate::{
    conntrack,
    ctx::Packet,
    lb, nat,
    parse::{self, Flow, Parsed},
};

#[inline(always)]
pub fn handle<C: Packet>(ctx: &C) -> Reason {
    let flow = match parse::parse(ctx) {
        Ok(Parsed::Flow(f)) => f,
        Ok(Parsed::NotIp) => return Reason::PassNotIp,
        Ok(Parsed::Fragment) => return Reason::PassFragment,
        Ok(Parsed::Other(_)) => return Reason::PassOtherProto,
        Err(r) => return r,
    };
    translate(ctx, &flow)
}

/// The service pipeline for a parsed TCP/UDP/SCTP flow. The from-pod hook parses first
/// itself, so that NetworkPolicy checks the same flow afterwards.
#[inline(always)]
pub fn translate<C: Packet>(ctx: &C, flow: &Flow) -> Reason {
    let flow = *flow;
    let now = conntrack::now();

    if let Some(ct) = conntrack::lookup(&flow, now) {
        if ct.flags & CT_F_REPLY != 0 {
            return match nat::snat(ctx, &flow, &ct.nat_src, ct.nat_sport_be) {
                Ok(()) => Reason::NatReply,
                Err(()) => Reason::DropNatFailed,
            };
        }
        // TCP follows its entry until the connection ends, even after the backend left the
        // service (kube-proxy keeps such conntrack entries too). Other protocols have no end
        // to wait for: they follow it only while the backend exists (and a reused backend id
        // must still mean the same address), else they are balanced again at once, which is
        // kube-proxy's flush of stale UDP conntrack entries.
        let follow = flow.proto == PROTO_TCP
            || lb::backend(ct.backend_id)
                .is_some_and(|be| be.addr == ct.nat_dst && be.port_be == ct.nat_dport_be);
        if follow {
            return match nat::dnat(ctx, &flow, &ct.nat_dst, ct.nat_dport_be) {
                Ok(()) => Reason::NatEstablished,
                Err(()) => Reason::DropNatFailed,
            };
        }
    }

    let Some(svc) = lb::lookup_service(&flow) else {
        return Reason::PassNoService;
    };
    if svc.count == 0 {
        return Reason::DropNoEndpoints;
    }
    let Some((id, be)) = lb::select_backend(&flow, &svc, now) else {
        return Reason::DropNoBackend;
    };
    if conntrack::create(&flow, id, &be, now).is_err() {
        return Reason::DropCtFull;
    }
    match nat::dnat(ctx, &flow, &be.addr, be.port_be) {
        Ok(()) => Reason::NatNew,
        Err(()) => Reason::DropNatFailed,
    }
}

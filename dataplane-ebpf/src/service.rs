//! The service pipeline shared by every hook: parse, follow a tracked connection or start a
//! new one on a service frontend, and translate.

use dataplane_common::{
    Reason, ServiceValue, CT_F_DNAT, CT_F_HAIRPIN, CT_F_REPLY, PROTO_TCP, SVCNET_CLUSTER_IP,
    SVCNET_RANGE, SVC_F_DROP_EMPTY, SVC_F_SOURCE_RANGES,
};

use crate::{
    conntrack,
    ctx::Packet,
    hairpin, icmp_nat, lb,
    maps::SCRATCH,
    nat,
    parse::{self, Flow, Parsed},
    reject, snat,
};

/// The pipeline for packets from outside the node (XDP or TC ingress on an external
/// interface): external-scope frontends first. (The from-pod hook parses itself and calls
/// `translate`.)
// A subprogram, so that the entry program's own frame stays small.
#[inline(never)]
pub fn handle_external<C: Packet>(ctx: &C) -> Reason {
    let flow = match parse::parse(ctx) {
        Ok(Parsed::Flow(f)) => f,
        Ok(Parsed::NotIp) => return Reason::PassNotIp,
        Ok(Parsed::Fragment) => return Reason::PassFragment,
        // ICMP errors are translated by `icmp_nat::from_outside`, called after this returns:
        // this frame and its frame do not fit in the stack together.
        Ok(Parsed::Other(f)) => {
            icmp_nat::stash(&f);
            return Reason::PassOtherProto;
        }
        Err(r) => return r,
    };
    translate(ctx, &flow, true)
}

/// The service pipeline for a parsed TCP/UDP/SCTP flow (`external`: from outside the node,
/// external-scope frontends first). The from-pod hook parses first itself, so that
/// NetworkPolicy checks the same flow afterwards.
#[inline(always)]
pub fn translate<C: Packet>(ctx: &C, flow: &Flow, external: bool) -> Reason {
    let mut flow = *flow;
    let now = conntrack::now();

    if let Some(ct) = conntrack::lookup(&flow, now) {
        if ct.flags & CT_F_HAIRPIN != 0 {
            return hairpin::translate(ctx, &flow, ct);
        }
        if ct.flags & CT_F_REPLY != 0 {
            if ct.flags & CT_F_DNAT != 0 {
                return snat::reply(ctx, &flow, ct);
            }
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

    // One call site for the reject reply: the verifier walks a subprogram once per call.
    let (rejected, dropped) = match lb::lookup_service(&mut flow, external) {
        Some(svc)
            if svc.flags & SVC_F_SOURCE_RANGES != 0
                && !lb::source_allowed(&flow, svc.backend_id) =>
        {
            return Reason::DropSourceRange
        }
        Some(svc) if svc.count > 0 => return new_connection(ctx, &flow, &svc, now, external),
        Some(svc) if svc.flags & SVC_F_DROP_EMPTY != 0 => return Reason::DropNoLocalEndpoints,
        Some(_) => (Reason::RejectNoEndpoints, Reason::DropNoEndpoints),
        // Not a frontend: kube-proxy (nftables) rejects other ports of a ClusterIP and drops
        // unallocated addresses of the service ranges.
        None => match lb::service_net(&flow) {
            Some(SVCNET_CLUSTER_IP) => (Reason::RejectUndefinedPort, Reason::DropUndefinedPort),
            Some(SVCNET_RANGE) => return Reason::DropUnallocatedServiceIp,
            _ => return Reason::PassNoService,
        },
    };
    match reject::reply(ctx, &flow) {
        Ok(()) => rejected,
        Err(()) => dropped,
    }
}

/// Balance a new connection to a frontend with backends, track it and translate it.
#[inline(always)]
fn new_connection<C: Packet>(
    ctx: &C,
    flow: &Flow,
    svc: &ServiceValue,
    now: u64,
    external: bool,
) -> Reason {
    let (id, be) = match lb::select_backend(flow, svc, now) {
        Ok(hit) => hit,
        Err(reason) => return reason,
    };
    if !external && be.addr == flow.src {
        let tracked = hairpin::track(flow, id, &be, now);
        let Some(s) = SCRATCH.get_ptr(0) else {
            return Reason::DropCtFull;
        };
        if tracked != Reason::NatHairpin {
            return tracked;
        }
        return hairpin::translate(ctx, flow, unsafe { &(*s).value });
    }
    // Only traffic from outside the node is masqueraded: pods' replies return through
    // their node whatever the backend.
    let masquerade = external && snat::wanted(svc, &be, &flow.src);
    let (tracked, reason) = if masquerade {
        (snat::track_new(flow, id, &be, now), Reason::NatNewMasq)
    } else {
        (
            conntrack::create(flow, id, &be, now, external),
            Reason::NatNew,
        )
    };
    if tracked.is_err() {
        return Reason::DropCtFull;
    }
    match nat::dnat(ctx, flow, &be.addr, be.port_be) {
        Ok(()) => reason,
        Err(()) => Reason::DropNatFailed,
    }
}

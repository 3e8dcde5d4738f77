//! NetworkPolicy enforcement, at both ends of a connection between pods of this node and
//! anything else:
//! - egress in the from-pod hook (`tc_pod`), on the tuple after service translation (the
//!   destination is the backend pod); the source pod is the local endpoint;
//! - ingress in the to-pod hook (`tc_to_pod`); the destination pod is the local endpoint.
//!
//! Per packet: endpoint lookup; policy conntrack (own tuple, then reversed tuple); only a
//! packet that belongs to no connection this end allowed goes on to the identity (one LPM
//! lookup) and the verdict (at most four hash lookups and a bounded scan of port ranges). The
//! cost does not depend on the number of policies, pods or selectors.
//!
//! Every connection of a local endpoint that passes is recorded, isolated or not, so that a
//! connection allowed at its start stays allowed after a policy is added, until it ends.
//!
//! Not checked: non-first fragments (no transport header to match; the first fragment, which
//! carries it, is checked, and the receiver cannot reassemble a datagram without it), and
//! IPv6 neighbour discovery and MLD; ICMP errors about an allowed connection pass like its
//! replies (`icmp`).

use aya_ebpf::maps::lpm_trie::Key;
use dataplane_common::{
    policy::{
        Endpoint, IpKey, PolicyKey, PolicyValue, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ISOLATED,
        EP_F_INGRESS_ISOLATED, IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD, POL_F_ALL_PORTS,
        POL_MAX_RANGES, POL_PROTO_ANY, VERDICT_ALLOW, VERDICT_DROP,
    },
    CtKey, Reason, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

use crate::{
    conntrack,
    ctx::{load, Packet},
    events,
    icmp::{self, Icmp, MAX_L4_OFF},
    maps::{POLICY_ENDPOINTS, POLICY_IDENTITIES, POLICY_RULES, POLICY_SCRATCH},
    parse::Flow,
    policy_ct::{self, Forward},
};

/// Per-CPU working space. The from-pod hook's stack is nearly full with the service pipeline,
/// so the policy code keeps its tuple and map keys here. And the verifier checks a subprogram
/// once per distinct state of its caller: handing it only this (map memory, whose contents
/// the verifier does not track) lets it verify the policy code about once per hook instead of
/// once per path through parsing and the service pipeline.
pub struct Scratch {
    /// The tuple policy checks (pod addresses).
    tuple: Flow,
    /// From-pod hook: the verdict the service pipeline gave, returned unless policy drops.
    pass: Reason,
    /// From-pod hook: the destination before the service pipeline translated it.
    svc_dst: [u8; 16],
    svc_dport_be: u16,
    keys: Keys,
}

/// Map keys, built here rather than on the stack.
struct Keys {
    ct: CtKey,
    lpm: Key<IpKey>,
    rule: PolicyKey,
    /// The packet an ICMP error quotes.
    quoted: Flow,
}

/// The scratch space, or `None`, which cannot happen (a per-CPU array's index 0 always
/// exists) but must be handled: the callers then fail closed.
#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    POLICY_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Ingress at the to-pod hook: the verdict for a packet going into the pod `f.dst`.
#[inline(always)]
pub fn ingress<C: Packet>(ctx: &C, f: &Flow) -> Reason {
    let Some(s) = scratch() else {
        return Reason::DropPolicyIngress;
    };
    s.tuple = *f;
    ingress_scratch(ctx, s)
}

#[inline(never)]
fn ingress_scratch<C: Packet>(ctx: &C, s: &mut Scratch) -> Reason {
    enforce(ctx, &s.tuple, DIR_INGRESS, &mut s.keys).unwrap_or(Reason::PassPolicyNone)
}

/// Egress at the from-pod hook, after the service pipeline let `f` (the flow as the pod sent
/// it) through with `pass`: `pass` again, or `DropPolicyEgress`.
#[inline(always)]
pub fn egress<C: Packet>(ctx: &C, f: &Flow, pass: Reason) -> Reason {
    let Some(s) = scratch() else {
        return Reason::DropPolicyEgress;
    };
    // Everything else happens in the subprogram, on the scratch copy: a branch here would
    // give the verifier distinct caller states to check the subprogram in.
    s.tuple = *f;
    s.pass = pass;
    egress_scratch(ctx, s)
}

#[inline(never)]
fn egress_scratch<C: Packet>(ctx: &C, s: &mut Scratch) -> Reason {
    // Policy sees pod addresses: the destination after DNAT (the backend), and the source
    // before the reply SNAT (the backend pod answering, not the service address).
    let translated = matches!(
        s.pass,
        Reason::NatNew | Reason::NatEstablished | Reason::NatHairpin
    );
    if translated {
        s.svc_dst = s.tuple.dst;
        s.svc_dport_be = s.tuple.dport_be;
        with_packet_destination(ctx, &mut s.tuple);
    }
    match enforce(ctx, &s.tuple, DIR_EGRESS, &mut s.keys) {
        Some(Reason::DropPolicyEgress) => Reason::DropPolicyEgress,
        Some(Reason::PassPolicyAllowed | Reason::PassPolicyNone) if translated => {
            // Replies reach a local client with the service address as their source (the
            // backend's hook translated them back): record the connection under its
            // service tuple too, so the client's ingress sees them as replies.
            s.tuple.dst = s.svc_dst;
            s.tuple.dport_be = s.svc_dport_be;
            policy_ct::record(
                &s.tuple,
                DIR_EGRESS,
                Forward::Missing,
                &mut s.keys.ct,
                conntrack::now(),
            );
            s.pass
        }
        _ => s.pass,
    }
}

/// Replace `t`'s destination with the one the packet now carries (rewritten by DNAT).
#[inline(always)]
fn with_packet_destination<C: Packet>(ctx: &C, t: &mut Flow) {
    // Offsets read back from the scratch map have lost their bounds for the verifier.
    if t.l3_off > MAX_L4_OFF || t.l4_off > MAX_L4_OFF {
        return;
    }
    if t.v6 {
        if let Some(a) = load::<C, [u8; 16]>(ctx, t.l3_off + 24) {
            t.dst = a;
        }
    } else if let Some(a) = load::<C, [u8; 4]>(ctx, t.l3_off + 16) {
        // The IPv4-mapped prefix is already there.
        t.dst[12..].copy_from_slice(&a);
    }
    if let Some(p) = load::<C, u16>(ctx, t.l4_off + 2) {
        t.dport_be = p;
    }
}

/// The policy verdict of one packet at the end of `dir`, or `None` when that end's pod is not
/// a local endpoint. Pass verdicts: `PassPolicyTracked`, `PassPolicyNone` (not isolated, or
/// not subject to policy), `PassPolicyAllowed`.
#[inline(always)]
fn enforce<C: Packet>(ctx: &C, t: &Flow, dir: u8, k: &mut Keys) -> Option<Reason> {
    let (local, remote) = if dir == DIR_EGRESS {
        (&t.src, &t.dst)
    } else {
        (&t.dst, &t.src)
    };
    let ep = endpoint(local)?;
    let now = conntrack::now();
    match icmp::classify(ctx, t) {
        Icmp::Exempt => return Some(Reason::PassPolicyNone),
        Icmp::Error
            if icmp::quoted(ctx, t, &mut k.quoted)
                && related(&k.quoted, local, dir, &mut k.ct, now) =>
        {
            return Some(Reason::PassPolicyTracked);
        }
        _ => {}
    }
    let fwd = policy_ct::forward(t, &mut k.ct, now);
    if let Forward::Live(flags) = fwd {
        if flags & policy_ct::flag(dir) != 0 {
            return Some(Reason::PassPolicyTracked);
        }
    }
    if policy_ct::is_reply(t, dir, &mut k.ct, now) {
        return Some(Reason::PassPolicyTracked);
    }
    // A pod's traffic to itself (through a service: hairpin) is never isolated, as in
    // Kubernetes' reachability model.
    let isolated = local != remote
        && ep.flags
            & if dir == DIR_EGRESS {
                EP_F_EGRESS_ISOLATED
            } else {
                EP_F_INGRESS_ISOLATED
            }
            != 0;
    let (reason, identity) = if isolated {
        let id = identity(remote, &mut k.lpm);
        if id != IDENTITY_HOST && !allowed(ep.id, id, dir, t, &mut k.rule) {
            let drop = if dir == DIR_EGRESS {
                Reason::DropPolicyEgress
            } else {
                Reason::DropPolicyIngress
            };
            if fwd != Forward::Missing {
                policy_ct::forget(t, &mut k.ct);
            }
            events::emit(t, dir, VERDICT_DROP, ep.id, id, drop, now);
            return Some(drop);
        }
        (Reason::PassPolicyAllowed, id)
    } else {
        (Reason::PassPolicyNone, IDENTITY_ANY)
    };
    policy_ct::record(t, dir, fwd, &mut k.ct, now);
    if events::allow_events() {
        // Not isolated: the identity was not needed for the verdict, only for the event.
        let identity = if isolated {
            identity
        } else {
            self::identity(remote, &mut k.lpm)
        };
        events::emit(t, dir, VERDICT_ALLOW, ep.id, identity, reason, now);
    }
    Some(reason)
}

/// Whether an ICMP error about packet `q` belongs to a connection the local pod's policy
/// allowed: `q` is the pod's own packet (its sender at the to-pod hook, its receiver at the
/// from-pod hook), and tracked as such at the pod's hook of the other direction.
#[inline(always)]
fn related(q: &Flow, local: &[u8; 16], dir: u8, ct: &mut CtKey, now: u64) -> bool {
    let (mine, qdir) = if dir == DIR_INGRESS {
        (&q.src, DIR_EGRESS)
    } else {
        (&q.dst, DIR_INGRESS)
    };
    if mine != local {
        return false;
    }
    if let Forward::Live(flags) = policy_ct::forward(q, ct, now) {
        if flags & policy_ct::flag(qdir) != 0 {
            return true;
        }
    }
    policy_ct::is_reply(q, qdir, ct, now)
}

#[inline(always)]
fn endpoint(addr: &[u8; 16]) -> Option<Endpoint> {
    // SAFETY: `IpKey` is `#[repr(C)]` around one `[u8; 16]`: same layout, no copy needed.
    let key = unsafe { &*(addr as *const [u8; 16] as *const IpKey) };
    unsafe { POLICY_ENDPOINTS.get(key) }.copied()
}

/// The identity of a remote address: its longest matching prefix's, `IDENTITY_WORLD` if none.
#[inline(always)]
fn identity(addr: &[u8; 16], slot: &mut Key<IpKey>) -> u32 {
    *slot = Key::new(128, IpKey { addr: *addr });
    POLICY_IDENTITIES
        .get(&*slot)
        .copied()
        .unwrap_or(IDENTITY_WORLD)
}

/// Whether a rule of endpoint `ep` allows `t` for `dir` with the remote `identity`: the
/// rules for the identity and for every peer (`IDENTITY_ANY`), each for the protocol and for
/// every protocol (`POL_PROTO_ANY`, rules without ports). Protocols without ports (ICMP, ...)
/// only match rules without ports.
#[inline(always)]
fn allowed(ep: u32, identity: u32, dir: u8, t: &Flow, slot: &mut PolicyKey) -> bool {
    let has_ports = matches!(t.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP);
    let port = u16::from_be(t.dport_be);
    for i in 0..4u8 {
        let proto = if i & 1 == 0 { t.proto } else { POL_PROTO_ANY };
        if proto != POL_PROTO_ANY && !has_ports {
            continue;
        }
        *slot = PolicyKey {
            endpoint: ep,
            identity: if i & 2 == 0 { identity } else { IDENTITY_ANY },
            proto,
            dir,
            _pad: [0; 2],
        };
        if let Some(v) = unsafe { POLICY_RULES.get(&*slot) } {
            if ports_match(v, port, has_ports) {
                return true;
            }
        }
    }
    false
}

/// Whether `port` (host order) is allowed by `v`: all ports, or one of its sorted ranges.
#[inline(always)]
fn ports_match(v: &PolicyValue, port: u16, has_ports: bool) -> bool {
    if v.flags & POL_F_ALL_PORTS != 0 {
        return true;
    }
    if !has_ports {
        return false;
    }
    let count = v.count as usize;
    for i in 0..POL_MAX_RANGES {
        if i >= count {
            break;
        }
        let Some(r) = v.ranges.get(i) else {
            break;
        };
        if port < r.lo {
            break;
        }
        if port <= r.hi {
            return true;
        }
    }
    false
}

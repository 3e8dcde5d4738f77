//! Policy verdicts for one flow, two ways: [`evaluate`] straight from the policy semantics
//! over the model (the reference; it also names the policies that allowed), and [`lookup`]
//! from compiled [`PolicyMaps`] exactly the way the datapath looks them up (endpoint,
//! longest-prefix identity, four wildcard rule keys, range scan). Tests cross-check them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use dataplane_common::policy::{
    IpKey, PolicyKey, IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD, POL_F_ALL_PORTS, POL_PROTO_ANY,
};

use super::compile::PolicyMaps;
use super::ip_key;
use super::model::{Direction, PodInfo, PolicyModel, PortMatch, Rule};
use crate::model::NamespacedName;

/// The outcome at one end of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndVerdict {
    /// This end is not a pod of this node subject to policy (a pod of another node, a
    /// hostNetwork pod, or no pod): this node does not decide for it.
    NotLocal,
    /// A local pod no policy isolates in this direction: allowed.
    NotIsolated,
    /// The other end is this node: always allowed.
    Node,
    /// Allowed by these policies (namespace/name; empty when read from the maps, which do
    /// not know).
    Allowed(Vec<NamespacedName>),
    /// Isolated and no rule allows it.
    Denied,
}

impl EndVerdict {
    pub fn allows(&self) -> bool {
        !matches!(self, EndVerdict::Denied)
    }

    /// The verdict without the allowing policies' names, to compare with the maps'.
    pub fn decision(&self) -> EndVerdict {
        match self {
            EndVerdict::Allowed(_) => EndVerdict::Allowed(Vec::new()),
            other => other.clone(),
        }
    }
}

/// Both ends of a flow: egress at the source, ingress at the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub egress: EndVerdict,
    pub ingress: EndVerdict,
}

impl Verdict {
    /// Whether this node lets the flow through (both ends allow).
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }

    pub fn decision(&self) -> Verdict {
        Verdict {
            egress: self.egress.decision(),
            ingress: self.ingress.decision(),
        }
    }
}

/// The verdict of the policies in `model` on a new flow (`proto` an IP protocol number,
/// `dport` 0 for protocols without ports).
pub fn evaluate(model: &PolicyModel, src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> Verdict {
    // Named ports always resolve against the destination pod (for ingress, the local one).
    let dst_pod = model.pod_at(dst);
    let end = |dir: Direction, local: IpAddr, remote: IpAddr| {
        let Some(pod) = model.pod_at(local).filter(|p| model.is_local(p)) else {
            return EndVerdict::NotLocal;
        };
        let policies: Vec<_> = model.selecting(pod, dir).collect();
        if policies.is_empty() {
            return EndVerdict::NotIsolated;
        }
        if model.node_ips.contains(&remote.to_canonical()) {
            return EndVerdict::Node;
        }
        let allowing: Vec<NamespacedName> = policies
            .into_iter()
            .filter(|p| {
                p.rules(dir)
                    .unwrap_or_default()
                    .iter()
                    .any(|r| rule_matches(model, r, remote, dst_pod, proto, dport))
            })
            .map(|p| p.key.clone())
            .collect();
        if allowing.is_empty() {
            EndVerdict::Denied
        } else {
            EndVerdict::Allowed(allowing)
        }
    };
    Verdict {
        egress: end(Direction::Egress, src, dst),
        ingress: end(Direction::Ingress, dst, src),
    }
}

fn rule_matches(
    model: &PolicyModel,
    rule: &Rule,
    remote: IpAddr,
    dst_pod: Option<&PodInfo>,
    proto: u8,
    dport: u16,
) -> bool {
    let peer = rule.peers.is_empty() || rule.peers.iter().any(|p| model.peer_matches_ip(p, remote));
    let port = rule.ports.is_empty()
        || rule.ports.iter().any(|p| {
            p.protocol.number() == proto
                && match &p.port {
                    PortMatch::All => true,
                    PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&dport),
                    PortMatch::Named(name) => {
                        dst_pod.and_then(|d| d.resolve(name, p.protocol)) == Some(dport)
                    }
                }
        });
    peer && port
}

/// The verdict the datapath reaches with `maps` for a new flow.
pub fn lookup(maps: &PolicyMaps, src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> Verdict {
    let end = |dir: Direction, local: IpAddr, remote: IpAddr| {
        let Some(ep) = maps.endpoints.get(&ip_key(local)) else {
            return EndVerdict::NotLocal;
        };
        if ep.flags & dir.isolated_flag() == 0 {
            return EndVerdict::NotIsolated;
        }
        let identity = lpm(&maps.identities, remote).unwrap_or(IDENTITY_WORLD);
        if identity == IDENTITY_HOST {
            return EndVerdict::Node;
        }
        let keys = [
            (identity, proto),
            (IDENTITY_ANY, proto),
            (identity, POL_PROTO_ANY),
            (IDENTITY_ANY, POL_PROTO_ANY),
        ];
        for (identity, proto) in keys {
            let key = PolicyKey {
                endpoint: ep.id,
                identity,
                proto,
                dir: dir.abi(),
                _pad: [0; 2],
            };
            let Some(v) = maps.rules.get(&key) else {
                continue;
            };
            let ranges = &v.ranges[..usize::from(v.count).min(v.ranges.len())];
            if v.flags & POL_F_ALL_PORTS != 0
                || ranges.iter().any(|r| r.lo <= dport && dport <= r.hi)
            {
                return EndVerdict::Allowed(Vec::new());
            }
        }
        EndVerdict::Denied
    };
    Verdict {
        egress: end(Direction::Egress, src, dst),
        ingress: end(Direction::Ingress, dst, src),
    }
}

/// Longest-prefix match of `ip` in the identity map, as the kernel's LPM trie answers it.
pub fn lpm(identities: &BTreeMap<(u32, IpKey), u32>, ip: IpAddr) -> Option<u32> {
    let addr = ip_key(ip).addr;
    (0..=128u32).rev().find_map(|len| {
        let mut masked = [0u8; 16];
        for (i, byte) in masked.iter_mut().enumerate() {
            let bits = len.saturating_sub(8 * i as u32).min(8);
            let mask = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
            *byte = addr[i] & mask;
        }
        identities.get(&(len, IpKey { addr: masked })).copied()
    })
}

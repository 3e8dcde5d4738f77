//! The one writer of the NetworkPolicy maps: diffs the compiled policy against a mirror of
//! what the maps hold and applies only the difference, in an order that never lets the
//! datapath deny a connection that both the old and the new policy allow:
//! 1. rules that are new or changed (a new identity or endpoint id gets its rules first),
//! 2. identities (addresses switch to identities whose rules exist),
//! 3. endpoints (a pod becomes isolated only once its rules are in place),
//! 4. endpoints that are gone, 5. identities that are gone, 6. rules nothing refers to any more.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aya::maps::{lpm_trie::Key, MapError};
use dataplane_common::policy::{Endpoint, IpKey, PolicyKey, PolicyValue};
use thiserror::Error;

use super::maps::Maps;
use crate::policy::PolicyMaps;

/// One map operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOp {
    PutRule(PolicyKey, PolicyValue),
    PutIdentity((u32, IpKey), u32),
    PutEndpoint(IpKey, Endpoint),
    DelEndpoint(IpKey),
    DelIdentity((u32, IpKey)),
    DelRule(PolicyKey),
}

/// Entries of `desired` that `current` lacks or holds differently, and keys of `current`
/// that `desired` lacks.
fn diff<'a, K: Ord + Copy, V: PartialEq + Copy>(
    current: &'a BTreeMap<K, V>,
    desired: &'a BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let puts = desired
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let dels = current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    (puts, dels)
}

/// The operations that turn `current` into `desired`, in the safe order above.
pub fn plan(current: &PolicyMaps, desired: &PolicyMaps) -> Vec<PolicyOp> {
    let (rules_put, rules_del) = diff(&current.rules, &desired.rules);
    let (ids_put, ids_del) = diff(&current.identities, &desired.identities);
    let (eps_put, eps_del) = diff(&current.endpoints, &desired.endpoints);
    let mut ops = Vec::new();
    ops.extend(rules_put.into_iter().map(|(k, v)| PolicyOp::PutRule(k, v)));
    ops.extend(
        ids_put
            .into_iter()
            .map(|(k, v)| PolicyOp::PutIdentity(k, v)),
    );
    ops.extend(
        eps_put
            .into_iter()
            .map(|(k, v)| PolicyOp::PutEndpoint(k, v)),
    );
    ops.extend(eps_del.into_iter().map(PolicyOp::DelEndpoint));
    ops.extend(ids_del.into_iter().map(PolicyOp::DelIdentity));
    ops.extend(rules_del.into_iter().map(PolicyOp::DelRule));
    ops
}

#[derive(Debug, Error)]
pub enum PolicyWriteError {
    #[error("reading the policy maps: {0}")]
    Read(Box<MapError>),
    #[error(
        "applying {op:?} failed after {applied} of {total} policy changes ({error}); the maps \
         keep a consistent mix of old and new policy and the next sync retries"
    )]
    Apply {
        op: Box<PolicyOp>,
        applied: usize,
        total: usize,
        error: Box<MapError>,
    },
}

/// What one policy sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySyncReport {
    pub ops: usize,
    pub endpoints: usize,
    pub identities: usize,
    pub rules: usize,
    pub duration: Duration,
}

/// Holds a mirror of the policy maps, so a sync costs a diff, not a map walk.
pub struct PolicyWriter {
    current: PolicyMaps,
}

impl PolicyWriter {
    /// Start from what the maps hold (empty on a fresh load, kept state after a restart).
    pub fn new(maps: &Maps) -> Result<Self, PolicyWriteError> {
        let read = |e: MapError| PolicyWriteError::Read(Box::new(e));
        Ok(PolicyWriter {
            current: PolicyMaps {
                endpoints: maps
                    .policy_endpoints
                    .iter()
                    .collect::<Result<_, _>>()
                    .map_err(read)?,
                identities: maps
                    .policy_identities
                    .iter()
                    .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)))
                    .collect::<Result<_, _>>()
                    .map_err(read)?,
                rules: maps
                    .policy_rules
                    .iter()
                    .collect::<Result<_, _>>()
                    .map_err(read)?,
            },
        })
    }

    pub fn current(&self) -> &PolicyMaps {
        &self.current
    }

    /// Make the maps hold `desired`, touching only entries that differ.
    pub fn sync(
        &mut self,
        maps: &mut Maps,
        desired: &PolicyMaps,
    ) -> Result<PolicySyncReport, PolicyWriteError> {
        let start = Instant::now();
        let ops = plan(&self.current, desired);
        let total = ops.len();
        for (applied, op) in ops.into_iter().enumerate() {
            let res = match &op {
                PolicyOp::PutRule(k, v) => maps.policy_rules.insert(k, v, 0),
                PolicyOp::PutIdentity((len, ip), id) => {
                    maps.policy_identities.insert(&Key::new(*len, *ip), id, 0)
                }
                PolicyOp::PutEndpoint(k, v) => maps.policy_endpoints.insert(k, v, 0),
                PolicyOp::DelEndpoint(k) => ignore_missing(maps.policy_endpoints.remove(k)),
                PolicyOp::DelIdentity((len, ip)) => {
                    ignore_missing(maps.policy_identities.remove(&Key::new(*len, *ip)))
                }
                PolicyOp::DelRule(k) => ignore_missing(maps.policy_rules.remove(k)),
            };
            if let Err(source) = res {
                return Err(PolicyWriteError::Apply {
                    op: Box::new(op),
                    applied,
                    total,
                    error: Box::new(source),
                });
            }
            self.record(op);
        }
        Ok(PolicySyncReport {
            ops: total,
            endpoints: self.current.endpoints.len(),
            identities: self.current.identities.len(),
            rules: self.current.rules.len(),
            duration: start.elapsed(),
        })
    }

    fn record(&mut self, op: PolicyOp) {
        let c = &mut self.current;
        match op {
            PolicyOp::PutRule(k, v) => {
                c.rules.insert(k, v);
            }
            PolicyOp::PutIdentity(k, v) => {
                c.identities.insert(k, v);
            }
            PolicyOp::PutEndpoint(k, v) => {
                c.endpoints.insert(k, v);
            }
            PolicyOp::DelEndpoint(k) => {
                c.endpoints.remove(&k);
            }
            PolicyOp::DelIdentity(k) => {
                c.identities.remove(&k);
            }
            PolicyOp::DelRule(k) => {
                c.rules.remove(&k);
            }
        }
    }
}

/// Deleting what is already gone is success: the goal state holds.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::policy::{
        PortRange, DIR_INGRESS, EP_F_INGRESS_ISOLATED, POL_F_ALL_PORTS, POL_MAX_RANGES,
    };

    fn ip(last: u8) -> IpKey {
        IpKey {
            addr: dataplane_common::v4_mapped([10, 0, 0, last]),
        }
    }

    fn rule(endpoint: u32, identity: u32) -> PolicyKey {
        PolicyKey {
            endpoint,
            identity,
            proto: 6,
            dir: DIR_INGRESS,
            _pad: [0; 2],
        }
    }

    fn all_ports() -> PolicyValue {
        PolicyValue {
            flags: POL_F_ALL_PORTS,
            count: 0,
            ranges: [PortRange::default(); POL_MAX_RANGES],
        }
    }

    fn state(ep_id: u32, isolated: bool, peer_identity: u32) -> PolicyMaps {
        let mut m = PolicyMaps::default();
        m.endpoints.insert(
            ip(1),
            Endpoint {
                id: ep_id,
                flags: if isolated { EP_F_INGRESS_ISOLATED } else { 0 },
            },
        );
        m.identities.insert((128, ip(2)), peer_identity);
        if isolated {
            m.rules.insert(rule(ep_id, peer_identity), all_ports());
        }
        m
    }

    fn position(ops: &[PolicyOp], f: impl Fn(&PolicyOp) -> bool) -> usize {
        ops.iter().position(f).expect("op present")
    }

    #[test]
    fn nothing_to_do_when_equal() {
        let s = state(1, true, 300);
        assert!(plan(&s, &s).is_empty());
    }

    #[test]
    fn rules_go_in_before_the_endpoint_is_isolated() {
        let ops = plan(&state(1, false, 300), &state(1, true, 300));
        let rule_at = position(&ops, |o| matches!(o, PolicyOp::PutRule(..)));
        let ep_at = position(&ops, |o| matches!(o, PolicyOp::PutEndpoint(..)));
        assert!(rule_at < ep_at, "{ops:?}");
    }

    #[test]
    fn rules_go_out_after_the_endpoint_is_no_longer_isolated() {
        let ops = plan(&state(1, true, 300), &state(1, false, 300));
        let ep_at = position(&ops, |o| matches!(o, PolicyOp::PutEndpoint(..)));
        let rule_at = position(&ops, |o| matches!(o, PolicyOp::DelRule(..)));
        assert!(ep_at < rule_at, "{ops:?}");
    }

    #[test]
    fn renumbered_identity_gets_its_rules_before_the_address_moves_to_it() {
        let ops = plan(&state(1, true, 300), &state(1, true, 301));
        assert_eq!(
            ops,
            vec![
                PolicyOp::PutRule(rule(1, 301), all_ports()),
                PolicyOp::PutIdentity((128, ip(2)), 301),
                PolicyOp::DelRule(rule(1, 300)),
            ]
        );
    }

    #[test]
    fn renumbered_endpoint_gets_its_rules_before_it_switches() {
        let ops = plan(&state(1, true, 300), &state(2, true, 300));
        assert_eq!(
            ops,
            vec![
                PolicyOp::PutRule(rule(2, 300), all_ports()),
                PolicyOp::PutEndpoint(
                    ip(1),
                    Endpoint {
                        id: 2,
                        flags: EP_F_INGRESS_ISOLATED
                    }
                ),
                PolicyOp::DelRule(rule(1, 300)),
            ]
        );
    }
}

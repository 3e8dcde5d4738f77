//! The one map writer: renders the desired state into map contents, diffs them against what
//! the maps hold, and applies only the difference, in an order that never lets the datapath
//! see a slot pointing at a backend that is not there yet or a count larger than its slots.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::MapError;
use dataplane_common::{
    Backend, ServiceKey, ServiceValue, SVCNET_CLUSTER_IP, SVCNET_RANGE, SVC_F_AFFINITY, SVC_F_NONE,
};
use thiserror::Error;

use super::{abi, maps::Maps};
use crate::desired::DesiredState;

/// What the service maps hold (or should hold).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    /// The service address space: (prefix length in bits, 16-byte address) -> `SVCNET_*`.
    pub service_nets: BTreeMap<NetPrefix, u32>,
}

/// An LPM entry of the service address space: prefix length in bits over the 16-byte form.
pub type NetPrefix = (u32, [u8; 16]);

/// One map operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32, Backend),
    PutService(ServiceKey, ServiceValue),
    DelService(ServiceKey),
    DelBackend(u32),
    PutNet(NetPrefix, u32),
    DelNet(NetPrefix),
}

/// Render the desired state into map contents. Backend ids are kept from `current` for
/// backends that stay, and new ones take the lowest id not in use in `current` (so an id is
/// never reused while an old slot could still point at it).
pub fn render(desired: &DesiredState, current: &MapContents) -> MapContents {
    let existing: HashMap<Backend, u32> =
        current.backends.iter().map(|(id, be)| (*be, *id)).collect();
    let used: BTreeSet<u32> = current.backends.keys().copied().collect();
    let mut next_id = 1u32;
    let mut out = MapContents::default();
    let mut assigned: HashMap<Backend, u32> = HashMap::new();

    for (fe, entry) in &desired.frontends {
        let count = u16::try_from(entry.backends.len()).unwrap_or(u16::MAX);
        let affinity = desired.session_affinity.get(fe).copied();
        out.services.insert(
            abi::service_key(fe, 0),
            ServiceValue {
                backend_id: 0,
                count,
                flags: if affinity.is_some() {
                    SVC_F_AFFINITY
                } else {
                    SVC_F_NONE
                },
                affinity_timeout_s: affinity.unwrap_or(0),
            },
        );
        for (i, be) in entry.backends.iter().take(count as usize).enumerate() {
            let be = abi::backend(be);
            let id = *assigned.entry(be).or_insert_with(|| {
                existing.get(&be).copied().unwrap_or_else(|| {
                    while used.contains(&next_id) {
                        next_id += 1;
                    }
                    next_id += 1;
                    next_id - 1
                })
            });
            out.backends.insert(id, be);
            out.services.insert(
                abi::service_key(fe, i as u16 + 1),
                ServiceValue {
                    backend_id: id,
                    count: 0,
                    flags: SVC_F_NONE,
                    affinity_timeout_s: 0,
                },
            );
        }
    }
    for net in &desired.service_cidrs {
        let bits = match net {
            ipnet::IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
            ipnet::IpNet::V6(n) => u32::from(n.prefix_len()),
        };
        out.service_nets
            .insert((bits, abi::addr16(net.network())), SVCNET_RANGE);
    }
    for ip in &desired.cluster_ips {
        out.service_nets
            .insert((128, abi::addr16(*ip)), SVCNET_CLUSTER_IP);
    }
    out
}

/// The operations that turn `current` into `desired`, ordered so that every intermediate
/// state is consistent for the datapath:
/// 1. new backends, 2. backend slots, 3. master entries (counts), 4. removed masters,
/// 5. removed slots, 6. backends nothing points at any more.
pub fn plan(current: &MapContents, desired: &MapContents) -> Vec<Op> {
    let mut ops = Vec::new();
    for (id, be) in &desired.backends {
        if current.backends.get(id) != Some(be) {
            ops.push(Op::PutBackend(*id, *be));
        }
    }
    let changed = desired
        .services
        .iter()
        .filter(|(k, v)| current.services.get(k) != Some(v));
    let (masters, slots): (Vec<_>, Vec<_>) = changed.partition(|(k, _)| k.slot == 0);
    ops.extend(slots.into_iter().map(|(k, v)| Op::PutService(*k, *v)));
    ops.extend(masters.into_iter().map(|(k, v)| Op::PutService(*k, *v)));
    let gone = current
        .services
        .keys()
        .filter(|k| !desired.services.contains_key(k));
    let (masters, slots): (Vec<&ServiceKey>, Vec<&ServiceKey>) = gone.partition(|k| k.slot == 0);
    ops.extend(masters.into_iter().map(|k| Op::DelService(*k)));
    ops.extend(slots.into_iter().map(|k| Op::DelService(*k)));
    for id in current.backends.keys() {
        if !desired.backends.contains_key(id) {
            ops.push(Op::DelBackend(*id));
        }
    }
    // The address space last: a new ClusterIP's frontends exist before its marker, and a
    // removed one's marker outlives them (its traffic is rejected, never leaked).
    for (k, v) in &desired.service_nets {
        if current.service_nets.get(k) != Some(v) {
            ops.push(Op::PutNet(*k, *v));
        }
    }
    for k in current.service_nets.keys() {
        if !desired.service_nets.contains_key(k) {
            ops.push(Op::DelNet(*k));
        }
    }
    ops
}

#[derive(Debug, Error)]
pub enum WriteError {
    #[error("reading the maps: {0}")]
    Read(Box<MapError>),
    #[error(
        "applying {op:?} failed after {applied} of {total} changes ({error}); \
         the maps keep a consistent mix of old and new state and the next sync retries"
    )]
    Apply {
        op: Op,
        applied: usize,
        total: usize,
        error: Box<MapError>,
    },
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub ops: usize,
    pub services: usize,
    pub backends: usize,
    pub duration: Duration,
}

/// Holds a mirror of what the maps contain, so a sync costs a diff, not a map read.
pub struct Writer {
    current: MapContents,
}

impl Writer {
    /// Start from what the maps hold now (empty on a fresh load, kept state after a restart).
    pub fn new(maps: &Maps) -> Result<Self, WriteError> {
        Ok(Writer {
            current: MapContents {
                services: maps
                    .read_services()
                    .map_err(|e| WriteError::Read(Box::new(e)))?,
                backends: maps
                    .read_backends()
                    .map_err(|e| WriteError::Read(Box::new(e)))?,
                service_nets: maps
                    .read_service_nets()
                    .map_err(|e| WriteError::Read(Box::new(e)))?,
            },
        })
    }

    pub fn current(&self) -> &MapContents {
        &self.current
    }

    /// Make the maps hold `desired`, touching only entries that differ.
    pub fn sync(
        &mut self,
        maps: &mut Maps,
        desired: &DesiredState,
    ) -> Result<SyncReport, WriteError> {
        let start = Instant::now();
        let target = render(desired, &self.current);
        let ops = plan(&self.current, &target);
        let total = ops.len();
        for (applied, op) in ops.into_iter().enumerate() {
            let res = match &op {
                Op::PutBackend(id, be) => maps.backends.insert(id, be, 0),
                Op::PutService(k, v) => maps.services.insert(k, v, 0),
                Op::DelService(k) => ignore_missing(maps.services.remove(k)),
                Op::DelBackend(id) => ignore_missing(maps.backends.remove(id)),
                Op::PutNet((bits, addr), v) => {
                    maps.service_nets.insert(&LpmKey::new(*bits, *addr), v, 0)
                }
                Op::DelNet((bits, addr)) => {
                    ignore_missing(maps.service_nets.remove(&LpmKey::new(*bits, *addr)))
                }
            };
            if let Err(source) = res {
                return Err(WriteError::Apply {
                    op,
                    applied,
                    total,
                    error: Box::new(source),
                });
            }
            self.record(op);
        }
        Ok(SyncReport {
            ops: total,
            services: self.current.services.len(),
            backends: self.current.backends.len(),
            duration: start.elapsed(),
        })
    }

    fn record(&mut self, op: Op) {
        match op {
            Op::PutBackend(id, be) => {
                self.current.backends.insert(id, be);
            }
            Op::PutService(k, v) => {
                self.current.services.insert(k, v);
            }
            Op::DelService(k) => {
                self.current.services.remove(&k);
            }
            Op::DelBackend(id) => {
                self.current.backends.remove(&id);
            }
            Op::PutNet(k, v) => {
                self.current.service_nets.insert(k, v);
            }
            Op::DelNet(k) => {
                self.current.service_nets.remove(&k);
            }
        }
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{BackendAddr, Frontend, FrontendEntry, Protocol, ServicePortRef};

    fn fe(ip: &str, port: u16) -> Frontend {
        Frontend {
            addr: ip.parse().unwrap(),
            port,
            proto: Protocol::Tcp,
        }
    }

    fn be(ip: &str, port: u16) -> BackendAddr {
        BackendAddr {
            addr: ip.parse().unwrap(),
            port,
            proto: Protocol::Tcp,
        }
    }

    fn state(entries: &[(Frontend, Vec<BackendAddr>)]) -> DesiredState {
        let mut s = DesiredState::default();
        for (f, bes) in entries {
            s.frontends.insert(
                *f,
                FrontendEntry {
                    service: ServicePortRef {
                        namespace: "ns".into(),
                        name: format!("svc{}", f.port),
                        port_name: String::new(),
                    },
                    backends: bes.clone(),
                },
            );
        }
        s
    }

    fn apply(current: &mut MapContents, ops: &[Op]) {
        for op in ops {
            match op {
                Op::PutBackend(id, b) => {
                    current.backends.insert(*id, *b);
                }
                Op::PutService(k, v) => {
                    current.services.insert(*k, *v);
                }
                Op::DelService(k) => {
                    current.services.remove(k);
                }
                Op::DelBackend(id) => {
                    current.backends.remove(id);
                }
                Op::PutNet(k, v) => {
                    current.service_nets.insert(*k, *v);
                }
                Op::DelNet(k) => {
                    current.service_nets.remove(k);
                }
            }
        }
    }

    /// Every prefix of the plan leaves the maps consistent: each master's slots exist and
    /// every slot's backend exists.
    fn assert_consistent_at_every_step(start: &MapContents, ops: &[Op]) {
        let mut m = start.clone();
        for i in 0..=ops.len() {
            for (k, v) in m.services.iter().filter(|(k, _)| k.slot == 0) {
                for slot in 1..=v.count {
                    let sk = ServiceKey { slot, ..*k };
                    let s = m
                        .services
                        .get(&sk)
                        .unwrap_or_else(|| panic!("step {i}: missing slot {slot}"));
                    assert!(
                        m.backends.contains_key(&s.backend_id),
                        "step {i}: dangling backend"
                    );
                }
            }
            if i < ops.len() {
                apply(&mut m, &ops[i..=i]);
            }
        }
    }

    #[test]
    fn unchanged_state_needs_no_operations() {
        let d = state(&[(
            fe("10.96.0.1", 80),
            vec![be("10.0.0.1", 8080), be("10.0.0.2", 8080)],
        )]);
        let first = render(&d, &MapContents::default());
        assert_eq!(first.services.len(), 3);
        assert_eq!(first.backends.len(), 2);
        assert!(plan(&first, &render(&d, &first)).is_empty());
    }

    #[test]
    fn adding_a_service_touches_only_its_entries() {
        let a = (fe("10.96.0.1", 80), vec![be("10.0.0.1", 8080)]);
        let b = (
            fe("10.96.0.2", 80),
            vec![be("10.0.0.2", 8080), be("10.0.0.3", 8080)],
        );
        let cur = render(&state(std::slice::from_ref(&a)), &MapContents::default());
        let next = render(&state(&[a, b]), &cur);
        let ops = plan(&cur, &next);
        // two backends, two slots, one master; nothing of service a is rewritten
        assert_eq!(ops.len(), 5, "{ops:?}");
        assert!(ops.iter().all(|op| match op {
            Op::PutService(k, _) => k.addr[15] == 2,
            Op::PutBackend(..) => true,
            _ => false,
        }));
        assert_consistent_at_every_step(&cur, &ops);
    }

    #[test]
    fn shrinking_and_removing_stay_consistent_and_free_backends_last() {
        let s1 = fe("10.96.0.1", 80);
        let s2 = fe("10.96.0.2", 80);
        let cur = render(
            &state(&[
                (
                    s1,
                    vec![be("10.0.0.1", 1), be("10.0.0.2", 1), be("10.0.0.3", 1)],
                ),
                (s2, vec![be("10.0.0.9", 1)]),
            ]),
            &MapContents::default(),
        );
        let next = render(&state(&[(s1, vec![be("10.0.0.2", 1)])]), &cur);
        let ops = plan(&cur, &next);
        assert_consistent_at_every_step(&cur, &ops);
        let mut m = cur.clone();
        apply(&mut m, &ops);
        assert_eq!(m, next);
        assert!(matches!(ops.last(), Some(Op::DelBackend(_))));
        // The surviving backend kept its id.
        let id_of = |c: &MapContents, b: &BackendAddr| {
            c.backends
                .iter()
                .find(|(_, v)| **v == abi::backend(b))
                .map(|(id, _)| *id)
        };
        assert_eq!(
            id_of(&cur, &be("10.0.0.2", 1)),
            id_of(&next, &be("10.0.0.2", 1))
        );
    }

    #[test]
    fn new_backends_never_reuse_an_id_still_in_the_maps() {
        let s = fe("10.96.0.1", 80);
        let cur = render(
            &state(&[(s, vec![be("10.0.0.1", 1), be("10.0.0.2", 1)])]),
            &MapContents::default(),
        );
        let next = render(
            &state(&[(s, vec![be("10.0.0.2", 1), be("10.0.0.7", 1)])]),
            &cur,
        );
        let old_ids: BTreeSet<u32> = cur.backends.keys().copied().collect();
        let new_id = next
            .backends
            .iter()
            .find(|(_, b)| **b == abi::backend(&be("10.0.0.7", 1)))
            .map(|(id, _)| *id)
            .unwrap();
        assert!(!old_ids.contains(&new_id));
        assert_consistent_at_every_step(&cur, &plan(&cur, &next));
    }

    #[test]
    fn service_without_endpoints_has_a_master_with_count_zero() {
        let d = state(&[(fe("10.96.0.1", 80), vec![])]);
        let m = render(&d, &MapContents::default());
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.services.values().next().unwrap().count, 0);
        assert!(m.backends.is_empty());
    }

    #[test]
    fn affinity_sets_the_flag_and_timeout_on_the_master_entry_only() {
        let f = fe("10.96.0.1", 80);
        let mut d = state(&[(f, vec![be("10.0.0.1", 1)])]);
        d.session_affinity.insert(f, 300);
        let m = render(&d, &MapContents::default());
        let master = m.services[&abi::service_key(&f, 0)];
        assert_eq!(
            (master.flags, master.affinity_timeout_s),
            (SVC_F_AFFINITY, 300)
        );
        let slot = m.services[&abi::service_key(&f, 1)];
        assert_eq!((slot.flags, slot.affinity_timeout_s), (SVC_F_NONE, 0));
        d.session_affinity.clear();
        let ops = plan(&m, &render(&d, &m));
        assert_eq!(
            ops.len(),
            1,
            "turning affinity off rewrites the master only: {ops:?}"
        );
    }

    #[test]
    fn a_backend_shared_by_two_frontends_has_one_id() {
        let b = be("10.0.0.1", 8080);
        let d = state(&[
            (fe("10.96.0.1", 80), vec![b]),
            (fe("10.96.0.2", 80), vec![b]),
        ]);
        let m = render(&d, &MapContents::default());
        assert_eq!(m.backends.len(), 1);
    }

    #[test]
    fn address_space_renders_ranges_and_cluster_ips_and_diffs() {
        let mut d = state(&[(fe("10.96.0.10", 80), vec![be("10.244.0.1", 8080)])]);
        d.cluster_ips.insert("10.96.0.10".parse().unwrap());
        d.service_cidrs = vec![
            "10.96.0.0/16".parse().unwrap(),
            "fd00:96::/108".parse().unwrap(),
        ];
        let r = render(&d, &MapContents::default());
        let mut v4 = [0u8; 16];
        v4[10..12].copy_from_slice(&[0xff, 0xff]);
        v4[12..14].copy_from_slice(&[10, 96]);
        let mut ip = v4;
        ip[15] = 10;
        let v6: [u8; 16] = "fd00:96::".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let want: BTreeMap<NetPrefix, u32> = [
            ((96 + 16, v4), SVCNET_RANGE),
            ((108, v6), SVCNET_RANGE),
            ((128, ip), SVCNET_CLUSTER_IP),
        ]
        .into_iter()
        .collect();
        assert_eq!(r.service_nets, want);

        // The ClusterIP goes away: its marker is deleted after its frontend.
        let empty = DesiredState {
            service_cidrs: d.service_cidrs.clone(),
            ..DesiredState::default()
        };
        let r2 = render(&empty, &r);
        let ops = plan(&r, &r2);
        let del_net = ops
            .iter()
            .position(|o| *o == Op::DelNet((128, ip)))
            .unwrap();
        let del_master = ops
            .iter()
            .position(|o| matches!(o, Op::DelService(k) if k.slot == 0))
            .unwrap();
        assert!(del_master < del_net, "{ops:?}");
        let mut cur = r.clone();
        apply(&mut cur, &ops);
        assert_eq!(cur, r2);
        assert!(plan(&r2, &r2).is_empty());
    }
}

//! The one map writer: renders the desired state into map contents, diffs them against what
//! the maps hold, and applies only the difference, in an order that never lets the datapath
//! see a slot pointing at a backend that is not there yet or a count larger than its slots.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::MapError;
use dataplane_common::{
    maglev::{MaglevChunk, MaglevKey},
    Backend, ServiceKey, ServiceValue, SourceRangeKey, BE_F_LOCAL, MASQ_V4, MASQ_V6,
    SCOPE_EXTERNAL, SCOPE_INTERNAL, SVCNET_CLUSTER_IP, SVCNET_RANGE, SVC_F_AFFINITY,
    SVC_F_DROP_EMPTY, SVC_F_MAGLEV, SVC_F_MASQ, SVC_F_MASQ_OFF_CLUSTER, SVC_F_NONE,
    SVC_F_SOURCE_RANGES,
};
use thiserror::Error;

use super::{abi, maglev_tables::Tables, maps::Maps};
use crate::desired::{DesiredState, Frontend, Masquerade};

/// What the service maps hold (or should hold).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    /// The service address space: (prefix length in bits, 16-byte address) -> `SVCNET_*`.
    pub service_nets: BTreeMap<NetPrefix, u32>,
    /// Source ranges: (prefix length in bits, key) -> 1.
    pub source_ranges: BTreeMap<RangePrefix, u32>,
    /// `clusterCIDRs`: (prefix length in bits, 16-byte address) -> 1.
    pub pod_nets: BTreeMap<NetPrefix, u32>,
    /// The masquerade address per family (`MASQ_V4`, `MASQ_V6`); zero = none.
    pub masq_addrs: [[u8; 16]; 2],
    /// Maglev lookup tables, in chunks (see `maglev_tables`).
    pub maglev: BTreeMap<MaglevKey, MaglevChunk>,
}

/// An LPM entry of the source ranges map.
pub type RangePrefix = (u32, SourceRangeKey);

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
    PutRange(RangePrefix),
    DelRange(RangePrefix),
    PutPodNet(NetPrefix),
    DelPodNet(NetPrefix),
    PutMasqAddr(u32, [u8; 16]),
    PutMaglev(MaglevKey, Box<MaglevChunk>),
    DelMaglev(MaglevKey),
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
    let range_ids = source_range_ids(desired, current);
    let mut tables = Tables::new(&current.maglev);

    let scoped = desired
        .frontends
        .iter()
        .map(|(fe, e)| {
            (
                fe,
                SCOPE_INTERNAL,
                &e.backends,
                desired.drop_when_empty.contains(fe),
            )
        })
        .chain(
            desired
                .external
                .iter()
                .map(|(fe, e)| (fe, SCOPE_EXTERNAL, &e.backends, e.drop_when_empty)),
        );
    for (fe, scope, backends, drop_when_empty) in scoped {
        let count = u16::try_from(backends.len()).unwrap_or(u16::MAX);
        let backends = &backends[..count as usize];
        let ids: Vec<u32> = backends
            .iter()
            .map(|be| {
                let local = desired.local_endpoints.contains(&be.addr);
                let mut be = abi::backend(be);
                if local {
                    be.flags |= BE_F_LOCAL;
                }
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
                id
            })
            .collect();
        let affinity = desired.session_affinity.get(fe).copied();
        let range_id = range_ids.get(fe).copied();
        let maglev = desired.maglev.get(fe).and_then(|m| {
            let table = tables.table(fe, *m, backends, &ids, &mut out.maglev)?;
            Some((table, *m))
        });
        let mut flags = SVC_F_NONE;
        if affinity.is_some() {
            flags |= SVC_F_AFFINITY;
        }
        if drop_when_empty {
            flags |= SVC_F_DROP_EMPTY;
        }
        if range_id.is_some() {
            flags |= SVC_F_SOURCE_RANGES;
        }
        // Only the internal scope: the external one is externalTrafficPolicy Local.
        if scope == SCOPE_INTERNAL {
            flags |= match desired.masquerade.get(fe) {
                Some(Masquerade::Always) => SVC_F_MASQ,
                Some(Masquerade::OffCluster) => SVC_F_MASQ_OFF_CLUSTER,
                None => SVC_F_NONE,
            };
        }
        if maglev.is_some() {
            flags |= SVC_F_MAGLEV;
        }
        let (maglev_table, maglev_size) = maglev.unwrap_or((0, 0));
        out.services.insert(
            abi::service_key_scoped(fe, 0, scope),
            ServiceValue {
                backend_id: range_id.unwrap_or(0),
                count,
                flags,
                affinity_timeout_s: affinity.unwrap_or(0),
                maglev_table,
                maglev_size,
            },
        );
        for (i, id) in ids.iter().enumerate() {
            out.services.insert(
                abi::service_key_scoped(fe, i as u16 + 1, scope),
                ServiceValue {
                    backend_id: *id,
                    count: 0,
                    flags: SVC_F_NONE,
                    affinity_timeout_s: 0,
                    maglev_table: 0,
                    maglev_size: 0,
                },
            );
        }
    }
    for (fe, id) in &range_ids {
        for net in desired.source_ranges.get(fe).into_iter().flatten() {
            let key = SourceRangeKey {
                id_be: id.to_be_bytes(),
                addr: abi::addr16(net.network()),
            };
            out.source_ranges.insert((32 + prefix_bits(net), key), 1);
        }
    }
    for net in &desired.service_cidrs {
        out.service_nets
            .insert((prefix_bits(net), abi::addr16(net.network())), SVCNET_RANGE);
    }
    for ip in &desired.cluster_ips {
        out.service_nets
            .insert((128, abi::addr16(*ip)), SVCNET_CLUSTER_IP);
    }
    for net in &desired.cluster_cidrs {
        out.pod_nets
            .insert((prefix_bits(net), abi::addr16(net.network())), 1);
    }
    for ip in &desired.masquerade_ips {
        let family = if ip.is_ipv4() { MASQ_V4 } else { MASQ_V6 };
        out.masq_addrs[family as usize] = abi::addr16(*ip);
    }
    out
}

/// A prefix length over the 16-byte (IPv4-mapped) address form.
fn prefix_bits(net: &ipnet::IpNet) -> u32 {
    match net {
        ipnet::IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
        ipnet::IpNet::V6(n) => u32::from(n.prefix_len()),
    }
}

/// Source-range set ids of the frontends with `loadBalancerSourceRanges`: kept from the
/// maps for frontends that had one (so an id never changes meaning under a live master),
/// new ones the lowest id not in use.
fn source_range_ids(desired: &DesiredState, current: &MapContents) -> BTreeMap<Frontend, u32> {
    let id_of = |fe: &Frontend| {
        current
            .services
            .get(&abi::service_key(fe, 0))
            .filter(|v| v.flags & SVC_F_SOURCE_RANGES != 0)
            .map(|v| v.backend_id)
    };
    let mut used: BTreeSet<u32> = current
        .services
        .iter()
        .filter(|(k, v)| k.slot == 0 && v.flags & SVC_F_SOURCE_RANGES != 0)
        .map(|(_, v)| v.backend_id)
        .collect();
    let mut ids = BTreeMap::new();
    for fe in desired.source_ranges.keys() {
        if let Some(id) = id_of(fe) {
            ids.insert(*fe, id);
        }
    }
    let mut next = 1u32;
    for fe in desired.source_ranges.keys() {
        if ids.contains_key(fe) {
            continue;
        }
        while used.contains(&next) {
            next += 1;
        }
        used.insert(next);
        ids.insert(*fe, next);
    }
    ids
}

/// The operations that turn `current` into `desired`, ordered so that every intermediate
/// state is consistent for the datapath:
/// new backends; new Maglev tables; backend slots; master entries (counts, table ids);
/// removed masters; removed slots; tables no master names any more; backends nothing points
/// at any more.
pub fn plan(current: &MapContents, desired: &MapContents) -> Vec<Op> {
    let mut ops = Vec::new();
    // Masquerade settings before the masters whose flags use them, removed after.
    for (i, (cur, want)) in current
        .masq_addrs
        .iter()
        .zip(&desired.masq_addrs)
        .enumerate()
    {
        if cur != want {
            ops.push(Op::PutMasqAddr(i as u32, *want));
        }
    }
    for k in desired.pod_nets.keys() {
        if !current.pod_nets.contains_key(k) {
            ops.push(Op::PutPodNet(*k));
        }
    }
    // Source ranges before the masters that point at them, removed after.
    for k in desired.source_ranges.keys() {
        if !current.source_ranges.contains_key(k) {
            ops.push(Op::PutRange(*k));
        }
    }
    for (id, be) in &desired.backends {
        if current.backends.get(id) != Some(be) {
            ops.push(Op::PutBackend(*id, *be));
        }
    }
    // Maglev tables after the backends they name, before the masters that name them.
    for (k, v) in &desired.maglev {
        if current.maglev.get(k) != Some(v) {
            ops.push(Op::PutMaglev(*k, Box::new(*v)));
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
    for k in current.maglev.keys() {
        if !desired.maglev.contains_key(k) {
            ops.push(Op::DelMaglev(*k));
        }
    }
    for id in current.backends.keys() {
        if !desired.backends.contains_key(id) {
            ops.push(Op::DelBackend(*id));
        }
    }
    for k in current.source_ranges.keys() {
        if !desired.source_ranges.contains_key(k) {
            ops.push(Op::DelRange(*k));
        }
    }
    for k in current.pod_nets.keys() {
        if !desired.pod_nets.contains_key(k) {
            ops.push(Op::DelPodNet(*k));
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
                source_ranges: maps
                    .read_source_ranges()
                    .map_err(|e| WriteError::Read(Box::new(e)))?,
                pod_nets: maps
                    .read_pod_nets()
                    .map_err(|e| WriteError::Read(Box::new(e)))?,
                masq_addrs: maps
                    .read_masq_addrs()
                    .map_err(|e| WriteError::Read(Box::new(e)))?,
                maglev: maps
                    .read_maglev()
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
                Op::PutRange((bits, key)) => {
                    maps.source_ranges.insert(&LpmKey::new(*bits, *key), 1, 0)
                }
                Op::DelRange((bits, key)) => {
                    ignore_missing(maps.source_ranges.remove(&LpmKey::new(*bits, *key)))
                }
                Op::PutPodNet((bits, addr)) => {
                    maps.pod_nets.insert(&LpmKey::new(*bits, *addr), 1, 0)
                }
                Op::DelPodNet((bits, addr)) => {
                    ignore_missing(maps.pod_nets.remove(&LpmKey::new(*bits, *addr)))
                }
                Op::PutMasqAddr(i, addr) => maps.masq_addrs.set(*i, addr, 0),
                Op::PutMaglev(k, v) => maps.maglev.insert(k, **v, 0),
                Op::DelMaglev(k) => ignore_missing(maps.maglev.remove(k)),
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
            Op::PutRange(k) => {
                self.current.source_ranges.insert(k, 1);
            }
            Op::DelRange(k) => {
                self.current.source_ranges.remove(&k);
            }
            Op::PutPodNet(k) => {
                self.current.pod_nets.insert(k, 1);
            }
            Op::DelPodNet(k) => {
                self.current.pod_nets.remove(&k);
            }
            Op::PutMasqAddr(i, addr) => {
                self.current.masq_addrs[i as usize] = addr;
            }
            Op::PutMaglev(k, v) => {
                self.current.maglev.insert(k, *v);
            }
            Op::DelMaglev(k) => {
                self.current.maglev.remove(&k);
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
                Op::PutRange(k) => {
                    current.source_ranges.insert(*k, 1);
                }
                Op::DelRange(k) => {
                    current.source_ranges.remove(k);
                }
                Op::PutPodNet(k) => {
                    current.pod_nets.insert(*k, 1);
                }
                Op::DelPodNet(k) => {
                    current.pod_nets.remove(k);
                }
                Op::PutMasqAddr(i, a) => {
                    current.masq_addrs[*i as usize] = *a;
                }
                Op::PutMaglev(k, v) => {
                    current.maglev.insert(*k, **v);
                }
                Op::DelMaglev(k) => {
                    current.maglev.remove(k);
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
                if v.flags & SVC_F_MAGLEV != 0 {
                    let n = dataplane_common::maglev::chunks(v.maglev_size.into());
                    for chunk in 0..n {
                        let key = MaglevKey {
                            table: v.maglev_table.into(),
                            chunk,
                        };
                        let c = m
                            .maglev
                            .get(&key)
                            .unwrap_or_else(|| panic!("step {i}: missing table chunk {key:?}"));
                        assert!(
                            c.ids
                                .iter()
                                .all(|id| *id == 0 || m.backends.contains_key(id)),
                            "step {i}: table names a missing backend"
                        );
                    }
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

    #[test]
    fn source_range_ids_are_stable_and_ranges_outlive_their_masters() {
        let (a, b) = (fe("192.0.2.127", 80), fe("192.0.2.128", 80));
        let mut d = state(&[
            (a, vec![be("10.244.0.1", 8080)]),
            (b, vec![be("10.244.0.1", 8080)]),
        ]);
        d.source_ranges
            .insert(b, vec!["203.0.113.0/24".parse().unwrap()]);
        let r1 = render(&d, &MapContents::default());
        let id_of = |r: &MapContents, f: &Frontend| r.services[&abi::service_key(f, 0)].backend_id;
        assert_eq!(id_of(&r1, &b), 1);
        assert_eq!(
            r1.services[&abi::service_key(&b, 0)].flags,
            SVC_F_SOURCE_RANGES
        );
        // `a` gets ranges too: `b` keeps its id, `a` takes a free one.
        d.source_ranges
            .insert(a, vec!["198.51.100.0/24".parse().unwrap()]);
        let r2 = render(&d, &r1);
        assert_eq!((id_of(&r2, &b), id_of(&r2, &a)), (1, 2));
        assert_eq!(r2.source_ranges.len(), 2);
        // Every range is in place before the master pointing at it, and removed after.
        let ops = plan(&r1, &r2);
        let put = ops
            .iter()
            .position(|o| matches!(o, Op::PutRange(_)))
            .unwrap();
        let master = ops
            .iter()
            .position(|o| matches!(o, Op::PutService(k, _) if k.slot == 0))
            .unwrap();
        assert!(put < master, "{ops:?}");
        d.source_ranges.clear();
        let r3 = render(&d, &r2);
        let ops = plan(&r2, &r3);
        let del = ops
            .iter()
            .position(|o| matches!(o, Op::DelRange(_)))
            .unwrap();
        let master = ops
            .iter()
            .position(|o| matches!(o, Op::PutService(k, _) if k.slot == 0))
            .unwrap();
        assert!(master < del, "{ops:?}");
        assert!(r3.source_ranges.is_empty());
        let mut cur = r2.clone();
        apply(&mut cur, &ops);
        assert_eq!(cur, r3);
    }

    #[test]
    fn maglev_tables_are_shared_written_before_their_masters_and_deleted_after() {
        let (a, b, c) = (
            fe("10.96.0.1", 80),
            fe("192.0.2.1", 30080),
            fe("10.96.0.3", 80),
        );
        let bes = vec![be("10.0.0.1", 1), be("10.0.0.2", 1), be("10.0.0.3", 1)];
        let mut d = state(&[(a, bes.clone()), (b, bes.clone()), (c, bes[..1].to_vec())]);
        for f in [a, b, c] {
            d.maglev.insert(f, 251);
        }
        let r1 = render(&d, &MapContents::default());
        let master = |r: &MapContents, f: &Frontend| r.services[&abi::service_key(f, 0)];
        let (ma, mb, mc) = (master(&r1, &a), master(&r1, &b), master(&r1, &c));
        assert_eq!(ma.flags, SVC_F_MAGLEV);
        assert_eq!((ma.maglev_size, ma.maglev_table), (251, mb.maglev_table));
        assert_ne!(ma.maglev_table, mc.maglev_table);
        // Two tables of 251 entries: 3 chunks each.
        assert_eq!(r1.maglev.len(), 6);
        let ops = plan(&MapContents::default(), &r1);
        assert_consistent_at_every_step(&MapContents::default(), &ops);
        assert!(plan(&r1, &render(&d, &r1)).is_empty(), "nothing changed");

        // A backend leaves a and b: a new table under a new id, the old one deleted after
        // the masters moved; c's table untouched.
        let fewer = vec![bes[0], bes[2]];
        d.frontends.get_mut(&a).unwrap().backends = fewer.clone();
        d.frontends.get_mut(&b).unwrap().backends = fewer;
        let r2 = render(&d, &r1);
        let (na, nc) = (master(&r2, &a), master(&r2, &c));
        assert_ne!(na.maglev_table, ma.maglev_table);
        assert_eq!(nc.maglev_table, mc.maglev_table);
        let ops = plan(&r1, &r2);
        assert_consistent_at_every_step(&r1, &ops);
        let pos = |f: &dyn Fn(&Op) -> bool| ops.iter().position(f).unwrap();
        let put_table = pos(&|o| matches!(o, Op::PutMaglev(..)));
        let master_a = pos(&|o| matches!(o, Op::PutService(k, _) if *k == abi::service_key(&a, 0)));
        let del_table = pos(&|o| matches!(o, Op::DelMaglev(..)));
        let del_backend = pos(&|o| matches!(o, Op::DelBackend(..)));
        assert!(put_table < master_a && master_a < del_table && del_table < del_backend);
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::PutMaglev(..)))
                .count(),
            3
        );
        let mut m = r1.clone();
        apply(&mut m, &ops);
        assert_eq!(m, r2);

        // Maglev off: plain masters, no table left.
        d.maglev.clear();
        let r3 = render(&d, &r2);
        assert!(r3.maglev.is_empty());
        assert_eq!(master(&r3, &a).flags, SVC_F_NONE);
        assert_consistent_at_every_step(&r2, &plan(&r2, &r3));
    }

    #[test]
    fn an_incomplete_table_in_the_maps_is_not_reused() {
        let f = fe("10.96.0.1", 80);
        let mut d = state(&[(f, vec![be("10.0.0.1", 1), be("10.0.0.2", 1)])]);
        d.maglev.insert(f, 251);
        let full = render(&d, &MapContents::default());
        // A crash left the table without its last chunk and no master naming it.
        let mut partial = full.clone();
        partial.services.clear();
        let last = *partial.maglev.keys().last().unwrap();
        partial.maglev.remove(&last);
        let r = render(&d, &partial);
        let id = r.services[&abi::service_key(&f, 0)].maglev_table;
        assert_ne!(u32::from(id), last.table);
        assert_eq!(r.maglev.len(), 3);
        assert_consistent_at_every_step(&partial, &plan(&partial, &r));
    }

    #[test]
    fn maglev_entries_select_the_backends_lookup_table_computes() {
        let f = fe("10.96.0.1", 80);
        let bes = vec![be("10.0.0.1", 1), be("10.0.0.2", 1), be("10.0.0.3", 1)];
        let mut d = state(&[(f, bes.clone())]);
        d.maglev.insert(f, 251);
        let r = render(&d, &MapContents::default());
        let t = crate::maglev::lookup_table(&bes, 251);
        let table = r.services[&abi::service_key(&f, 0)].maglev_table;
        for (i, want) in t.iter().enumerate() {
            let key = MaglevKey {
                table: table.into(),
                chunk: (i / dataplane_common::maglev::MAGLEV_CHUNK) as u32,
            };
            let id = r.maglev[&key].ids[i % dataplane_common::maglev::MAGLEV_CHUNK];
            assert_eq!(r.backends[&id], abi::backend(&bes[*want]), "entry {i}");
        }
    }

    #[test]
    fn external_entries_render_at_the_external_scope() {
        use crate::desired::ExternalEntry;
        let f = fe("192.0.2.1", 30080);
        let mut d = state(&[(f, vec![be("10.244.0.1", 8080), be("10.244.0.2", 8080)])]);
        d.external.insert(
            f,
            ExternalEntry {
                backends: vec![],
                drop_when_empty: true,
            },
        );
        let r = render(&d, &MapContents::default());
        let ext = r.services[&abi::service_key_scoped(&f, 0, SCOPE_EXTERNAL)];
        assert_eq!((ext.count, ext.flags), (0, SVC_F_DROP_EMPTY));
        assert_eq!(r.services[&abi::service_key(&f, 0)].count, 2);
        assert_eq!(r.services.len(), 1 + 2 + 1);
    }
}

//! The one owner of the BPF maps on the user side: typed handles, reading them back, and the
//! counters.

use std::collections::BTreeMap;

use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf},
    Ebpf,
};
use dataplane_common::{
    maglev::{MaglevChunk, MaglevKey},
    maps::{
        AFFINITY, BACKENDS, CONFIG, CONNTRACK, MAGLEV, MASQ_ADDRS, POD_NETS, POLICY_CONNTRACK,
        POLICY_ENDPOINTS, POLICY_EVENTS, POLICY_IDENTITIES, POLICY_RULES, SERVICES, SERVICE_NETS,
        SNAT, SOCK, SOURCE_RANGES, STATS,
    },
    policy::{Endpoint, IpKey, PolicyCtValue, PolicyKey, PolicyValue, CFG_ALLOW_EVENTS, CFG_FLAGS},
    sock::{SockKey, SockValue},
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, Reason, ServiceKey, ServiceValue,
    SourceRangeKey,
};

use super::object::LoadError;

pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub stats: PerCpuArray<MapData, u64>,
    /// ClusterIPs and service ranges (`SVCNET_*` values).
    pub service_nets: LpmTrie<MapData, [u8; 16], u32>,
    /// `loadBalancerSourceRanges` by range-set id.
    pub source_ranges: LpmTrie<MapData, SourceRangeKey, u32>,
    /// Socket-level translations (`dataplane_common::sock`).
    pub sock: HashMap<MapData, SockKey, SockValue>,
    /// Masquerade source rewrites at the external interfaces' egress.
    pub snat: HashMap<MapData, CtKey, CtValue>,
    /// The node address per family masqueraded traffic leaves with (`MASQ_V4`, `MASQ_V6`).
    pub masq_addrs: Array<MapData, [u8; 16]>,
    /// `clusterCIDRs`.
    pub pod_nets: LpmTrie<MapData, [u8; 16], u32>,
    /// NetworkPolicy (`dataplane_common::policy`): local pod address -> endpoint.
    pub policy_endpoints: HashMap<MapData, IpKey, Endpoint>,
    /// Remote address prefix -> identity (longest prefix wins).
    pub policy_identities: LpmTrie<MapData, IpKey, u32>,
    pub policy_rules: HashMap<MapData, PolicyKey, PolicyValue>,
    /// Policy connection tracking (LRU).
    pub policy_conntrack: HashMap<MapData, CtKey, PolicyCtValue>,
    /// Verdict events; read them with `super::events` (one reader at a time: the ring has
    /// one consumer position).
    pub policy_events: RingBuf<MapData>,
    /// Datapath settings (`policy::CFG_*` words).
    pub config: Array<MapData, u32>,
    /// Maglev lookup tables in chunks (`dataplane_common::maglev`).
    pub maglev: HashMap<MapData, MaglevKey, MaglevChunk>,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::Map {
        name,
        reason: "missing from the eBPF object".into(),
    })
}

fn typed<T: TryFrom<Map, Error = MapError>>(name: &'static str, map: Map) -> Result<T, LoadError> {
    T::try_from(map).map_err(|e| LoadError::Map {
        name,
        reason: e.to_string(),
    })
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Maps {
            services: typed(SERVICES, take(ebpf, SERVICES)?)?,
            backends: typed(BACKENDS, take(ebpf, BACKENDS)?)?,
            conntrack: typed(CONNTRACK, take(ebpf, CONNTRACK)?)?,
            affinity: typed(AFFINITY, take(ebpf, AFFINITY)?)?,
            stats: typed(STATS, take(ebpf, STATS)?)?,
            service_nets: typed(SERVICE_NETS, take(ebpf, SERVICE_NETS)?)?,
            source_ranges: typed(SOURCE_RANGES, take(ebpf, SOURCE_RANGES)?)?,
            sock: typed(SOCK, take(ebpf, SOCK)?)?,
            snat: typed(SNAT, take(ebpf, SNAT)?)?,
            masq_addrs: typed(MASQ_ADDRS, take(ebpf, MASQ_ADDRS)?)?,
            pod_nets: typed(POD_NETS, take(ebpf, POD_NETS)?)?,
            policy_endpoints: typed(POLICY_ENDPOINTS, take(ebpf, POLICY_ENDPOINTS)?)?,
            policy_identities: typed(POLICY_IDENTITIES, take(ebpf, POLICY_IDENTITIES)?)?,
            policy_rules: typed(POLICY_RULES, take(ebpf, POLICY_RULES)?)?,
            policy_conntrack: typed(POLICY_CONNTRACK, take(ebpf, POLICY_CONNTRACK)?)?,
            policy_events: typed(POLICY_EVENTS, take(ebpf, POLICY_EVENTS)?)?,
            config: typed(CONFIG, take(ebpf, CONFIG)?)?,
            maglev: typed(MAGLEV, take(ebpf, MAGLEV)?)?,
        })
    }

    pub fn read_services(&self) -> Result<BTreeMap<ServiceKey, ServiceValue>, MapError> {
        self.services.iter().collect()
    }

    pub fn read_backends(&self) -> Result<BTreeMap<u32, Backend>, MapError> {
        self.backends.iter().collect()
    }

    pub fn read_maglev(&self) -> Result<BTreeMap<MaglevKey, MaglevChunk>, MapError> {
        self.maglev.iter().collect()
    }

    pub fn read_service_nets(&self) -> Result<BTreeMap<(u32, [u8; 16]), u32>, MapError> {
        self.service_nets
            .iter()
            .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)))
            .collect()
    }

    pub fn read_pod_nets(&self) -> Result<BTreeMap<(u32, [u8; 16]), u32>, MapError> {
        self.pod_nets
            .iter()
            .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)))
            .collect()
    }

    pub fn read_masq_addrs(&self) -> Result<[[u8; 16]; 2], MapError> {
        Ok([self.masq_addrs.get(&0, 0)?, self.masq_addrs.get(&1, 0)?])
    }

    /// Masquerade rewrites at the external interfaces' egress.
    pub fn snat_entries(&self) -> Result<Vec<(CtKey, CtValue)>, MapError> {
        self.snat.iter().collect()
    }

    pub fn read_source_ranges(&self) -> Result<BTreeMap<(u32, SourceRangeKey), u32>, MapError> {
        self.source_ranges
            .iter()
            .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)))
            .collect()
    }

    /// Packets counted per reason, summed over CPUs.
    pub fn stats(&self) -> Result<BTreeMap<Reason, u64>, MapError> {
        let mut out = BTreeMap::new();
        for r in Reason::ALL {
            let per_cpu = self.stats.get(&r.index(), 0)?;
            out.insert(r, per_cpu.iter().sum());
        }
        Ok(out)
    }

    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>, MapError> {
        self.conntrack.iter().collect()
    }

    /// Forget every tracked connection (service and policy) and session affinity (used by
    /// `trace`, whose flows start from fresh state).
    pub fn clear_flow_state(&mut self) -> Result<(), MapError> {
        clear(&mut self.conntrack)?;
        clear(&mut self.snat)?;
        clear(&mut self.affinity)?;
        clear(&mut self.policy_conntrack)
    }

    pub fn policy_conntrack_entries(&self) -> Result<Vec<(CtKey, PolicyCtValue)>, MapError> {
        self.policy_conntrack.iter().collect()
    }

    /// Whether the datapath reports allowed new connections too, not only drops.
    pub fn set_allow_events(&mut self, on: bool) -> Result<(), MapError> {
        let flags = self.config.get(&CFG_FLAGS, 0)?;
        let flags = if on {
            flags | CFG_ALLOW_EVENTS
        } else {
            flags & !CFG_ALLOW_EVENTS
        };
        self.config.set(CFG_FLAGS, flags, 0)
    }
}

fn clear<K: aya::Pod, V: aya::Pod>(map: &mut HashMap<MapData, K, V>) -> Result<(), MapError> {
    let keys: Vec<K> = map.keys().collect::<Result<_, _>>()?;
    for k in keys {
        match map.remove(&k) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

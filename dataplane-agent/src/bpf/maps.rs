//! The one owner of the BPF maps on the user side: typed handles, reading them back, and the
//! counters.

use std::collections::BTreeMap;

use aya::{
    maps::{lpm_trie::LpmTrie, Array, HashMap, Map, MapData, MapError, PerCpuArray},
    Ebpf,
};
use dataplane_common::{
    maps::{
        AFFINITY, BACKENDS, CONNTRACK, MASQ_ADDRS, POD_NETS, SERVICES, SERVICE_NETS, SNAT, SOCK,
        SOURCE_RANGES, STATS,
    },
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
        })
    }

    pub fn read_services(&self) -> Result<BTreeMap<ServiceKey, ServiceValue>, MapError> {
        self.services.iter().collect()
    }

    pub fn read_backends(&self) -> Result<BTreeMap<u32, Backend>, MapError> {
        self.backends.iter().collect()
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

    /// Forget every tracked connection and session affinity (used by `trace`, whose flows
    /// start from fresh state).
    pub fn clear_flow_state(&mut self) -> Result<(), MapError> {
        clear(&mut self.conntrack)?;
        clear(&mut self.snat)?;
        clear(&mut self.affinity)
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

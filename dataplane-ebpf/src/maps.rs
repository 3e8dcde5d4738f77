//! The one owner of every BPF map on the kernel side. Names must equal
//! `dataplane_common::maps::*` (the agent opens maps by those names; its tests check them).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use dataplane_common::{
    maps::{AFFINITY_MAX, BACKENDS_MAX, CONNTRACK_MAX, SERVICES_MAX, SOCK_MAX, STATS_MAX},
    sock::{SockKey, SockValue},
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, Scratch, ServiceKey, ServiceValue,
};

/// Service frontends and their backend slots. Not preallocated: memory follows the number of
/// services, not the map's capacity.
#[map(name = "SK_SVC_V2")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(SERVICES_MAX, BPF_F_NO_PREALLOC);

/// Backend id -> address and port.
#[map(name = "SK_BE_V1")]
pub static BACKENDS: HashMap<u32, Backend> =
    HashMap::with_max_entries(BACKENDS_MAX, BPF_F_NO_PREALLOC);

/// Connection tracking, both directions of every translated connection. LRU: when full, the
/// least recently used entries go first instead of new connections failing.
#[map(name = "SK_CT_V1")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(CONNTRACK_MAX, 0);

/// Packets per `Reason`.
#[map(name = "SK_STATS_V1")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_MAX, 0);

/// Room for structs that do not fit on the BPF stack (see `conntrack::create`).
#[map(name = "SK_SCRATCH_V1")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Session affinity: the backend each client last used per service. LRU: forgetting an old
/// client only costs it its affinity.
#[map(name = "SK_AFF_V1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(AFFINITY_MAX, 0);

/// Socket-level translations (see `dataplane_common::sock`). LRU: an evicted entry costs a
/// socket its backend stickiness or the service address in `getpeername()`, never traffic.
#[map(name = "SK_SOCK_V1")]
pub static SOCK: LruHashMap<SockKey, SockValue> = LruHashMap::with_max_entries(SOCK_MAX, 0);

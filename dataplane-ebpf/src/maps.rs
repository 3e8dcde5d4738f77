//! The one owner of every BPF map on the kernel side. Names must equal
//! `dataplane_common::maps::*` (the agent opens maps by those names; its tests check them).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use dataplane_common::{
    maps::{
        AFFINITY_MAX, BACKENDS_MAX, CONNTRACK_MAX, POD_NETS_MAX, SERVICES_MAX, SERVICE_NETS_MAX,
        SNAT_MAX, SOCK_MAX, SOURCE_RANGES_MAX, STATS_MAX,
    },
    sock::{SockKey, SockValue},
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, Scratch, ServiceKey, ServiceValue,
    SourceRangeKey,
};

use crate::reject::ReplyBuf;

/// LPM key of `SERVICE_NETS`: prefix length in bits over the 16-byte address.
pub type NetKey = Key<[u8; 16]>;

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

/// ClusterIPs and `serviceCIDRs` (see `dataplane_common::maps::SERVICE_NETS`): what to do
/// with traffic to a service address that matches no frontend.
#[map(name = "SK_SVCNET_V1")]
pub static SERVICE_NETS: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(SERVICE_NETS_MAX, BPF_F_NO_PREALLOC);

/// `loadBalancerSourceRanges` of LoadBalancer IP frontends, by range-set id and source.
#[map(name = "SK_LBSRC_V1")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u32> =
    LpmTrie::with_max_entries(SOURCE_RANGES_MAX, BPF_F_NO_PREALLOC);

/// Where REJECT replies are built (too large for the stack at the depth they are built).
#[map(name = "SK_REPLY_V1")]
pub static REPLY: PerCpuArray<ReplyBuf> = PerCpuArray::with_max_entries(1, 0);
/// Socket-level translations (see `dataplane_common::sock`). LRU: an evicted entry costs a
/// socket its backend stickiness or the service address in `getpeername()`, never traffic.
#[map(name = "SK_SOCK_V1")]
pub static SOCK: LruHashMap<SockKey, SockValue> = LruHashMap::with_max_entries(SOCK_MAX, 0);

/// Masquerade source rewrites, applied where packets leave through an external interface
/// (see `snat`). LRU like `CONNTRACK`.
#[map(name = "SK_SNAT_V1")]
pub static SNAT: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(SNAT_MAX, 0);

/// The node address masqueraded traffic leaves with, per family (`MASQ_V4`, `MASQ_V6`).
#[map(name = "SK_MASQ_V1")]
pub static MASQ_ADDRS: Array<[u8; 16]> = Array::with_max_entries(2, 0);

/// `clusterCIDRs`: sources inside are pods (`SVC_F_MASQ_OFF_CLUSTER`).
#[map(name = "SK_PODNET_V1")]
pub static POD_NETS: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(POD_NETS_MAX, BPF_F_NO_PREALLOC);

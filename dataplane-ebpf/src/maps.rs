//! The one owner of every BPF map on the kernel side. Names must equal
//! `dataplane_common::maps::*` (the agent opens maps by those names; its tests check them).

use crate::{icmp_nat, policy};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use dataplane_common::{
    maglev::{MaglevChunk, MaglevKey},
    maps::{
        AFFINITY_MAX, BACKENDS_MAX, CONFIG_MAX, CONNTRACK_MAX, MAGLEV_MAX, POD_NETS_MAX,
        POLICY_CONNTRACK_MAX, POLICY_ENDPOINTS_MAX, POLICY_EVENTS_BYTES, POLICY_IDENTITIES_MAX,
        POLICY_RULES_MAX, SERVICES_MAX, SERVICE_NETS_MAX, SNAT_MAX, SOCK_MAX, SOURCE_RANGES_MAX,
        STATS_MAX,
    },
    policy::{Endpoint, IpKey, PolicyCtValue, PolicyKey, PolicyValue},
    sock::{SockKey, SockValue},
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, Scratch, ServiceKey, ServiceValue,
    SourceRangeKey,
};

use crate::reject::ReplyBuf;

/// LPM key of `SERVICE_NETS`: prefix length in bits over the 16-byte address.
pub type NetKey = Key<[u8; 16]>;

/// Service frontends and their backend slots. Not preallocated: memory follows the number of
/// services, not the map's capacity.
#[map(name = "SK_SVC_V3")]
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

/// Maglev lookup tables in chunks (see `dataplane_common::maglev`). Not preallocated: only
/// Maglev frontends' tables take memory.
#[map(name = "SK_MGLV_V1")]
pub static MAGLEV: HashMap<MaglevKey, MaglevChunk> =
    HashMap::with_max_entries(MAGLEV_MAX, BPF_F_NO_PREALLOC);

// NetworkPolicy (layouts and meaning: `dataplane_common::policy`).

/// Local pod address -> endpoint id and isolation.
#[map(name = "SK_EP_V1")]
pub static POLICY_ENDPOINTS: HashMap<IpKey, Endpoint> =
    HashMap::with_max_entries(POLICY_ENDPOINTS_MAX, BPF_F_NO_PREALLOC);

/// Remote address prefix -> identity (longest prefix wins). LPM tries are never preallocated.
#[map(name = "SK_IPID_V1")]
pub static POLICY_IDENTITIES: LpmTrie<IpKey, u32> =
    LpmTrie::with_max_entries(POLICY_IDENTITIES_MAX, BPF_F_NO_PREALLOC);

/// (endpoint, identity, protocol, direction) -> allowed ports.
#[map(name = "SK_POL_V1")]
pub static POLICY_RULES: HashMap<PolicyKey, PolicyValue> =
    HashMap::with_max_entries(POLICY_RULES_MAX, BPF_F_NO_PREALLOC);

/// Policy connection tracking. LRU: when full, the oldest connections are forgotten (their
/// next packet is checked against policy again) instead of new ones failing.
#[map(name = "SK_PCT_V1")]
pub static POLICY_CONNTRACK: LruHashMap<CtKey, PolicyCtValue> =
    LruHashMap::with_max_entries(POLICY_CONNTRACK_MAX, 0);

/// Policy verdict events for `skiff observe`.
#[map(name = "SK_EVENTS_V1")]
pub static POLICY_EVENTS: RingBuf = RingBuf::with_byte_size(POLICY_EVENTS_BYTES, 0);

/// Datapath settings written by the agent (`policy::CFG_*`).
#[map(name = "SK_CFG_V1")]
pub static CONFIG: Array<u32> = Array::with_max_entries(CONFIG_MAX, 0);

/// Per-CPU working space of the policy code (kernel only: never opened by the agent).
#[map(name = "SK_PSCRATCH_V1")]
pub static POLICY_SCRATCH: PerCpuArray<policy::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU working space of the ICMP error translation (kernel only: never opened by the
/// agent).
#[map(name = "SK_ISCRATCH_V1")]
pub static ICMP_SCRATCH: PerCpuArray<icmp_nat::Scratch> = PerCpuArray::with_max_entries(1, 0);

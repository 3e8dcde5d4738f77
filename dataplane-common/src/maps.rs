//! Names and sizes of the BPF maps. The kernel keeps 15 bytes of a map name; the version
//! suffix changes whenever a map's key or value layout changes, so that a pinned map of the
//! old layout is never reused by a new program (see README, "Restarts and upgrades").

/// Services: `ServiceKey` -> `ServiceValue` (V2: affinity timeout in the value; V3: Maglev
/// table id and size).
pub const SERVICES: &str = "SK_SVC_V3";
/// Backends: backend id (u32) -> `Backend`.
pub const BACKENDS: &str = "SK_BE_V1";
/// Connection tracking: `CtKey` -> `CtValue` (LRU).
pub const CONNTRACK: &str = "SK_CT_V1";
/// Per-CPU packet counters indexed by `Reason`.
pub const STATS: &str = "SK_STATS_V1";

/// Session affinity: `AffinityKey` -> `AffinityValue` (LRU).
pub const AFFINITY: &str = "SK_AFF_V1";
/// Per-CPU scratch space (one `Scratch`).
pub const SCRATCH: &str = "SK_SCRATCH_V1";
/// Service address space (LPM, 16-byte address key): every ClusterIP (`SVCNET_CLUSTER_IP`,
/// full length) and every `serviceCIDRs` range (`SVCNET_RANGE`). Value: u32 kind.
pub const SERVICE_NETS: &str = "SK_SVCNET_V1";
/// `loadBalancerSourceRanges` (LPM, `SourceRangeKey`): value u32 1 = allowed.
pub const SOURCE_RANGES: &str = "SK_LBSRC_V1";
/// Per-CPU buffer where REJECT replies are built (kernel side only).
pub const REPLY: &str = "SK_REPLY_V1";

/// Masquerade source rewrites at the external interfaces' egress: `CtKey` (the tuple as it
/// leaves, after destination translation) -> `CtValue` (`CT_F_SNAT`, `nat_src`) (LRU).
pub const SNAT: &str = "SK_SNAT_V1";
/// Two entries per masqueraded connection.
pub const SNAT_MAX: u32 = 131_072;
/// Masquerade addresses: array of two 16-byte addresses (`MASQ_V4`, `MASQ_V6`; zero =
/// none).
pub const MASQ_ADDRS: &str = "SK_MASQ_V1";
/// `clusterCIDRs` (LPM, 16-byte address key, value 1): sources inside are pods.
pub const POD_NETS: &str = "SK_PODNET_V1";
pub const POD_NETS_MAX: u32 = 256;
/// Maglev lookup tables: `maglev::MaglevKey` -> `maglev::MaglevChunk` (hash, not
/// preallocated).
pub const MAGLEV: &str = "SK_MGLV_V1";
/// Table chunks: 147 per table at the default M = 16,381 (512 bytes each, about 74 KiB per
/// table), so room for 445 such tables (or 111 at M = 65,521). Not preallocated.
pub const MAGLEV_MAX: u32 = 65_536;

/// Socket-level translations: `sock::SockKey` -> `sock::SockValue` (LRU).
pub const SOCK: &str = "SK_SOCK_V1";
/// Two entries per translated TCP connection or UDP socket and frontend.
pub const SOCK_MAX: u32 = 131_072;

/// One master entry plus one slot per endpoint for each frontend: 10,000 services with 10
/// endpoints need 110,000. Not preallocated, so unused capacity costs no memory.
pub const SERVICES_MAX: u32 = 262_144;
pub const BACKENDS_MAX: u32 = 262_144;
pub const CONNTRACK_MAX: u32 = 131_072;
pub const AFFINITY_MAX: u32 = 65_536;
/// ClusterIPs of 30,000 dual-stack services plus the service ranges.
pub const SERVICE_NETS_MAX: u32 = 65_536;
pub const SOURCE_RANGES_MAX: u32 = 65_536;
/// Number of counter slots; larger than the number of `Reason`s to leave room.
pub const STATS_MAX: u32 = 64;

/// Local pod IP -> `policy::Endpoint`.
pub const POLICY_ENDPOINTS: &str = "SK_EP_V1";
/// Remote IP prefix (`policy::IpKey`, LPM) -> identity (u32).
pub const POLICY_IDENTITIES: &str = "SK_IPID_V1";
/// `policy::PolicyKey` -> `policy::PolicyValue`.
pub const POLICY_RULES: &str = "SK_POL_V1";
/// Policy connection tracking: `CtKey` -> `policy::PolicyCtValue` (LRU).
pub const POLICY_CONNTRACK: &str = "SK_PCT_V1";
/// Policy verdict events (`policy::PolicyEvent`, ring buffer).
pub const POLICY_EVENTS: &str = "SK_EVENTS_V1";
/// Datapath settings (array of u32, `policy::CFG_*`).
pub const CONFIG: &str = "SK_CFG_V1";
/// Per-CPU working space of the policy code (kernel only).
pub const POLICY_SCRATCH: &str = "SK_PSCRATCH_V1";
/// Per-CPU working space of the ICMP error translation (kernel only).
pub const ICMP_SCRATCH: &str = "SK_ISCRATCH_V1";

/// Local pods' addresses (two per dual-stack pod).
pub const POLICY_ENDPOINTS_MAX: u32 = 16_384;
/// Pod IPs of the whole cluster plus ipBlock prefixes.
pub const POLICY_IDENTITIES_MAX: u32 = 262_144;
/// (endpoint, identity, protocol, direction) rules of local pods.
pub const POLICY_RULES_MAX: u32 = 524_288;
pub const POLICY_CONNTRACK_MAX: u32 = 131_072;
/// Ring buffer bytes (a power of two, a multiple of the page size).
pub const POLICY_EVENTS_BYTES: u32 = 1 << 20;
pub const CONFIG_MAX: u32 = 4;

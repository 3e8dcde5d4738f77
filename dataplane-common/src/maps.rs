//! Names and sizes of the BPF maps. The kernel keeps 15 bytes of a map name; the version
//! suffix changes whenever a map's key or value layout changes, so that a pinned map of the
//! old layout is never reused by a new program (see README, "Restarts and upgrades").

/// Services: `ServiceKey` -> `ServiceValue` (V2: affinity timeout in the value).
pub const SERVICES: &str = "SK_SVC_V2";
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

/// One master entry plus one slot per endpoint for each frontend: 10,000 services with 10
/// endpoints need 110,000. Not preallocated, so unused capacity costs no memory.
pub const SERVICES_MAX: u32 = 262_144;
pub const BACKENDS_MAX: u32 = 262_144;
pub const CONNTRACK_MAX: u32 = 131_072;
pub const AFFINITY_MAX: u32 = 65_536;
/// Number of counter slots; larger than the number of `Reason`s to leave room.
pub const STATS_MAX: u32 = 64;

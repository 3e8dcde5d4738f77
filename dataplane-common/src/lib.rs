//! Kernel/user ABI of skiff: every type that crosses a BPF map lives here, once.
//!
//! Conventions (the agent and the eBPF programs both rely on them):
//! - Addresses are 16 bytes in network byte order; IPv4 is stored IPv4-mapped
//!   (`::ffff:a.b.c.d`) so one key layout serves both families without ambiguity.
//! - Ports are stored in network byte order (`*_be` in the field docs), so the datapath never
//!   swaps bytes on the hot path.
//! - Key structs have no implicit padding: explicit zeroed `_pad` fields, and a size assertion
//!   per struct, because the kernel compares keys byte for byte.
#![no_std]

pub mod crc32c;
pub mod maglev;
pub mod maps;
pub mod policy;
pub mod reason;
pub mod sock;

pub use reason::Reason;

/// IP protocol numbers the datapath understands.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Prefix of the IPv4-mapped IPv6 form used for every IPv4 address in the maps.
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// One frontend slot of a service (ClusterIP:port/proto).
///
/// Slot 0 is the service's master entry (`ServiceValue::count`, flags); slots `1..=count`
/// hold one backend id each. New connections pick a slot uniformly at random.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Frontend address (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// Frontend port, network byte order.
    pub port_be: u16,
    /// 0 = master entry, 1..=count = backend slots.
    pub slot: u16,
    /// IP protocol (PROTO_TCP, PROTO_UDP, PROTO_SCTP).
    pub proto: u8,
    /// `SCOPE_INTERNAL` (every hook) or `SCOPE_EXTERNAL` (traffic from outside the node,
    /// looked up first at the XDP hook: externalTrafficPolicy Local).
    pub scope: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 24);

/// Value of a `ServiceKey`: on slot 0 the backend count and flags; on other slots the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Backend id (slots >= 1). On the master entry: the id of its source ranges in
    /// `SK_LBSRC_V1` when `SVC_F_SOURCE_RANGES` is set, else 0.
    pub backend_id: u32,
    /// Number of backend slots (master entry only). 0 = service without usable endpoints.
    pub count: u16,
    /// `SVC_F_*` flags (master entry only).
    pub flags: u16,
    /// `sessionAffinity: ClientIP` timeout in seconds when `SVC_F_AFFINITY` is set.
    pub affinity_timeout_s: u32,
    /// Maglev lookup table id (`maglev::MaglevKey::table`) when `SVC_F_MAGLEV` is set.
    pub maglev_table: u16,
    /// Maglev table size M (a prime, at most 65,521) when `SVC_F_MAGLEV` is set.
    pub maglev_size: u16,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);

/// Session affinity key: a service frontend (its master key, slot 0) and a client address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service: ServiceKey,
    pub client: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 40);

/// The backend a client was last sent to, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// The slot it was chosen from: checked on use, so a backend that left the service is
    /// not chosen again.
    pub slot: u16,
    pub _pad: u16,
    pub last_used_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

/// A backend (endpoint address and target port) referenced by id from service slots and
/// connection-tracking entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: [u8; 16],
    /// Target port, network byte order.
    pub port_be: u16,
    pub proto: u8,
    /// `BE_F_*` flags.
    pub flags: u8,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 20);

/// Connection-tracking key: the 5-tuple exactly as the packet carries it at the hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 40);

/// Connection-tracking value: how to rewrite packets of this direction, and the state that
/// decides when the entry expires.
///
/// A translated connection has two entries: the original direction (client -> frontend,
/// `CT_F_DNAT`, rewrites the destination to the backend) and the reply direction
/// (backend -> client, `CT_F_REPLY`, rewrites the source back to the frontend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// New source address when `CT_F_SNAT` is set.
    pub nat_src: [u8; 16],
    /// New destination address when `CT_F_DNAT` is set.
    pub nat_dst: [u8; 16],
    pub nat_sport_be: u16,
    pub nat_dport_be: u16,
    /// Backend chosen for the connection (original direction only); re-checked on every hit so
    /// that a removed backend is never used again by a stale entry.
    pub backend_id: u32,
    /// `bpf_ktime_get_ns()` of the last packet seen in this direction.
    pub last_seen_ns: u64,
    /// `CT_F_*` flags.
    pub flags: u8,
    /// `TCP_S_*` bits seen in this direction.
    pub tcp_state: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 56);

/// Per-CPU scratch space of the datapath: structs too large for the 512-byte BPF stack are
/// built here. Not shared with user space beyond its size.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    pub key: CtKey,
    pub value: CtValue,
    pub affinity_key: AffinityKey,
    /// An LPM trie key over a 16-byte address (layout of aya's `Key<[u8; 16]>`).
    pub addr_key: AddrLpmKey,
}

/// LPM trie key over a 16-byte address: prefix length in bits, then the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrLpmKey {
    pub prefix_len: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<AddrLpmKey>() == 20);

/// Service master-entry flags.
pub const SVC_F_NONE: u16 = 0;
/// `sessionAffinity: ClientIP`: a client's new connections go to its last backend.
pub const SVC_F_AFFINITY: u16 = 1 << 0;
/// With no backends, drop instead of rejecting (a Local traffic policy without local
/// endpoints while the Service has endpoints elsewhere).
pub const SVC_F_DROP_EMPTY: u16 = 1 << 1;
/// New connections must come from one of the frontend's `loadBalancerSourceRanges`
/// (`SK_LBSRC_V1` under the id in `backend_id`).
pub const SVC_F_SOURCE_RANGES: u16 = 1 << 2;
/// New connections pick their backend from the Maglev table (`maglev_table`, `maglev_size`)
/// by a hash of the 5-tuple instead of at random (see `maglev`).
pub const SVC_F_MAGLEV: u16 = 1 << 3;
/// Masquerade traffic from outside the node to a backend on another node (the external
/// addresses of an `externalTrafficPolicy: Cluster` Service; every ClusterIP with
/// `masqueradeAll`).
pub const SVC_F_MASQ: u16 = 1 << 4;
/// Masquerade like `SVC_F_MASQ`, but only sources outside `clusterCIDRs` (`SK_PODNET_V1`):
/// kube-proxy's rule for ClusterIPs.
pub const SVC_F_MASQ_OFF_CLUSTER: u16 = 1 << 5;

/// Frontend scopes (`ServiceKey::scope`).
pub const SCOPE_INTERNAL: u8 = 0;
pub const SCOPE_EXTERNAL: u8 = 1;

/// LPM key data of `SK_LBSRC_V1`: a source-range set id (big endian, always matched in
/// full: prefix length = 32 + the range's bits) and the 16-byte address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey {
    pub id_be: [u8; 4],
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<SourceRangeKey>() == 20);

/// `SK_SVCNET_V1` values: the address is some Service's ClusterIP (a port it does not define
/// is rejected) ...
pub const SVCNET_CLUSTER_IP: u32 = 1;
/// ... or lies in `serviceCIDRs` without being allocated (dropped).
pub const SVCNET_RANGE: u32 = 2;

/// Backend flags.
pub const BE_F_NONE: u8 = 0;
/// The endpoint runs on this node: replies come back through it without masquerading.
pub const BE_F_LOCAL: u8 = 1 << 0;

/// Connection-tracking entry flags.
pub const CT_F_DNAT: u8 = 1 << 0;
pub const CT_F_SNAT: u8 = 1 << 1;
pub const CT_F_REPLY: u8 = 1 << 2;
/// Original direction of a masqueraded connection: `nat_src`/`nat_sport_be` record the node
/// address and port its source leaves with (the rewrite itself is done by the egress
/// entry in `SK_SNAT_V1`).
pub const CT_F_MASQ: u8 = 1 << 3;
/// A pod's connection to itself through a service (with `CT_F_DNAT | CT_F_SNAT`): both
/// addresses are translated in both directions, the source to the node address.
pub const CT_F_HAIRPIN: u8 = 1 << 4;

/// Masquerade source ports: above Linux's default `ip_local_port_range` (32768-60999), so
/// the node's own sockets do not use them, and outside the NodePort range.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;
/// Random ports tried per new masqueraded connection before giving up.
pub const SNAT_PORT_TRIES: u32 = 8;
/// `SK_MASQ_V1` indices: the node address IPv4 / IPv6 traffic is masqueraded to.
pub const MASQ_V4: u32 = 0;
pub const MASQ_V6: u32 = 1;

/// TCP state bits kept per direction.
pub const TCP_S_SYN: u8 = 1 << 0;
pub const TCP_S_FIN: u8 = 1 << 1;
pub const TCP_S_RST: u8 = 1 << 2;
pub const TCP_S_ESTABLISHED: u8 = 1 << 3;

/// Idle timeouts, in nanoseconds (like nf_conntrack and Cilium's defaults).
pub const CT_TIMEOUT_TCP_OPENING_NS: u64 = 60 * 1_000_000_000;
pub const CT_TIMEOUT_TCP_ESTABLISHED_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const CT_TIMEOUT_TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
pub const CT_TIMEOUT_OTHER_NS: u64 = 60 * 1_000_000_000;
/// An entry's `last_seen_ns` is refreshed at most this often, to avoid a map write per packet.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// Return the IPv4-mapped form of an IPv4 address given in network byte order bytes.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// True when a 16-byte address is IPv4-mapped.
#[inline(always)]
pub fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..12] == V4_MAPPED_PREFIX
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)] plain-old-data without implicit padding (asserted above).
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for Scratch {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for SourceRangeKey {}
}

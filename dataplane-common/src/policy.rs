//! NetworkPolicy ABI: what the agent's policy compiler writes and the datapath reads.
//!
//! The design keeps the per-packet cost constant in the number of policies, pods and
//! selectors:
//! 1. `SK_EP_V1` (hash): local pod IP -> `Endpoint` (endpoint id, which directions are
//!    isolated). A pod that is not isolated in a direction skips the rest for it.
//! 2. `SK_IPID_V1` (LPM trie): remote IP -> identity. An identity is a class of addresses that
//!    every peer of every policy treats alike (same pod-selector matches, same ipBlock
//!    matches), so one number stands for "which peers this address is".
//! 3. `SK_POL_V1` (hash): (endpoint, identity, protocol, direction) -> the port ranges that
//!    are allowed. At most four lookups per new connection: {identity, `IDENTITY_ANY`} x
//!    {protocol, `POL_PROTO_ANY`}.
//! 4. `SK_PCT_V1` (LRU): policy connection tracking, so replies and the rest of an allowed
//!    connection pass without a policy lookup, and a connection allowed at its start stays
//!    allowed until it ends.
//!
//! Verdict events go to the `SK_EVENTS_V1` ring buffer (drops always, allows when
//! `CFG_ALLOW_EVENTS` is set in `SK_CFG_V1`).

/// Identity of addresses no pod, node or ipBlock prefix claims (also the LPM miss).
pub const IDENTITY_WORLD: u32 = 2;
/// Identity of this node's own addresses: traffic between a pod and its node is always
/// allowed.
pub const IDENTITY_HOST: u32 = 1;
/// In a `PolicyKey`: the rule allows every peer (a rule without `from`/`to`).
pub const IDENTITY_ANY: u32 = 0;
/// First identity number the compiler hands out for address classes.
pub const IDENTITY_FIRST_DYNAMIC: u32 = 256;

/// `PolicyKey::dir`.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// In a `PolicyKey`: a rule without `ports` (every protocol, every port).
pub const POL_PROTO_ANY: u8 = 0;

/// Port ranges one `PolicyValue` holds; the compiler refuses more for one key.
pub const POL_MAX_RANGES: usize = 24;

/// `Endpoint::flags`.
pub const EP_F_INGRESS_ISOLATED: u32 = 1 << 0;
pub const EP_F_EGRESS_ISOLATED: u32 = 1 << 1;

/// `PolicyValue::flags`: every port of the key's protocol is allowed (ranges unused).
pub const POL_F_ALL_PORTS: u16 = 1 << 0;

/// `PolicyCtValue::flags`: which ends have allowed the connection.
pub const PCT_F_EGRESS_OK: u8 = 1 << 0;
pub const PCT_F_INGRESS_OK: u8 = 1 << 1;

/// `SK_CFG_V1` index of the flag word, and its bits.
pub const CFG_FLAGS: u32 = 0;
/// Emit an event for allowed new connections too (not only drops).
pub const CFG_ALLOW_EVENTS: u32 = 1 << 0;

/// A pod of this node, by one of its IPs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Endpoint id: names the pod in `PolicyKey`s and events (never 0).
    pub id: u32,
    /// `EP_F_*`.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 8);

/// LPM key data of `SK_IPID_V1`: an address (IPv4-mapped for IPv4, prefix length + 96).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<IpKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub endpoint: u32,
    /// Remote identity, or `IDENTITY_ANY`.
    pub identity: u32,
    /// IP protocol, or `POL_PROTO_ANY`.
    pub proto: u8,
    /// `DIR_INGRESS` or `DIR_EGRESS`.
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

/// An inclusive port range, host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// `POL_F_*`.
    pub flags: u16,
    /// Used entries of `ranges` (sorted, disjoint, merged).
    pub count: u16,
    pub ranges: [PortRange; POL_MAX_RANGES],
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 4 + 4 * POL_MAX_RANGES);

/// Policy connection tracking: keyed by `crate::CtKey` (the tuple with pod addresses, after
/// service translation).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyCtValue {
    pub last_seen_ns: u64,
    /// `PCT_F_*`.
    pub flags: u8,
    /// `crate::TCP_S_*` bits seen in either direction (a FIN or RST from either end ends
    /// the connection for policy).
    pub tcp_state: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<PolicyCtValue>() == 16);

/// `PolicyEvent::verdict`.
pub const VERDICT_DROP: u8 = 0;
pub const VERDICT_ALLOW: u8 = 1;

/// One policy verdict, as the datapath reports it in `SK_EVENTS_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyEvent {
    pub ts_ns: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    /// `DIR_*`: the end that decided.
    pub dir: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    pub _pad: u8,
    /// The local endpoint whose policy decided.
    pub endpoint: u32,
    /// The remote address's identity.
    pub identity: u32,
    /// `crate::Reason` index.
    pub reason: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyEvent>() == 64);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)] plain-old-data without implicit padding (sizes asserted above).
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for IpKey {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for PolicyCtValue {}
    unsafe impl aya::Pod for PolicyEvent {}
}

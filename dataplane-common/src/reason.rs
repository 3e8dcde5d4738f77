//! Why a packet got the verdict it got. One enum for the datapath counters, the agent's
//! metrics and `skiff trace`: every packet the programs see increments exactly one counter,
//! indexed by its `Reason`.

/// Outcome of one packet at one hook. Values below `DROP_BASE` let the packet go on (possibly
/// rewritten); values from `DROP_BASE` are drops.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not IPv4/IPv6: passed untouched.
    PassNotIp = 1,
    /// No connection-tracking entry and no service frontend matched: passed untouched.
    PassNoService = 2,
    /// IP protocol the service datapath does not translate (ICMP, ...): passed untouched.
    PassOtherProto = 3,
    /// Non-first IPv4 fragment or IPv6 fragment: no L4 header to translate, passed untouched.
    PassFragment = 4,
    /// First packet of a connection to a service: backend chosen, destination translated.
    NatNew = 8,
    /// Packet of a tracked connection in the original direction: destination translated.
    NatEstablished = 9,
    /// Reply of a tracked connection: source translated back to the service frontend.
    NatReply = 10,
    /// Towards a pod: the destination is not a pod of this node, or not isolated for ingress,
    /// or the packet is not subject to policy (IPv6 neighbour discovery).
    /// (Counted at the to-pod hook; at the from-pod hook the three `PassPolicy*` reasons only
    /// appear in verdict events, the counter keeps the service pipeline's reason.)
    PassPolicyNone = 11,
    /// Towards a pod: a new connection its ingress policy allows.
    PassPolicyAllowed = 12,
    /// Towards a pod: a packet of (or a reply to, or an ICMP error about) a connection policy
    /// already allowed.
    PassPolicyTracked = 13,
    /// Truncated or malformed header.
    DropMalformed = 32,
    /// The service port exists but has no usable endpoint.
    DropNoEndpoints = 33,
    /// The connection-tracking map refused a new entry.
    DropCtFull = 34,
    /// A packet rewrite or checksum helper failed.
    DropNatFailed = 35,
    /// A backend slot pointed at a missing backend (agent update in flight).
    DropNoBackend = 36,
    /// No NetworkPolicy selecting the source pod allows this egress connection.
    DropPolicyEgress = 37,
    /// No NetworkPolicy selecting the destination pod allows this ingress connection.
    DropPolicyIngress = 38,
}

/// First drop reason.
pub const DROP_BASE: u32 = 32;

impl Reason {
    pub const ALL: [Reason; 17] = [
        Reason::PassNotIp,
        Reason::PassNoService,
        Reason::PassOtherProto,
        Reason::PassFragment,
        Reason::NatNew,
        Reason::NatEstablished,
        Reason::NatReply,
        Reason::PassPolicyNone,
        Reason::PassPolicyAllowed,
        Reason::PassPolicyTracked,
        Reason::DropMalformed,
        Reason::DropNoEndpoints,
        Reason::DropCtFull,
        Reason::DropNatFailed,
        Reason::DropNoBackend,
        Reason::DropPolicyEgress,
        Reason::DropPolicyIngress,
    ];

    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    pub const fn is_drop(self) -> bool {
        self as u32 >= DROP_BASE
    }

    pub fn from_index(i: u32) -> Option<Reason> {
        Self::ALL.iter().copied().find(|r| r.index() == i)
    }

    /// Stable snake_case name, used as the metrics label and in `trace` output.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "not_ip",
            Reason::PassNoService => "no_service",
            Reason::PassOtherProto => "other_proto",
            Reason::PassFragment => "fragment",
            Reason::NatNew => "nat_new_connection",
            Reason::NatEstablished => "nat_established",
            Reason::NatReply => "nat_reply",
            Reason::PassPolicyNone => "policy_not_isolated",
            Reason::PassPolicyAllowed => "policy_allowed",
            Reason::PassPolicyTracked => "policy_tracked",
            Reason::DropMalformed => "malformed",
            Reason::DropNoEndpoints => "no_endpoints",
            Reason::DropCtFull => "conntrack_full",
            Reason::DropNatFailed => "nat_failed",
            Reason::DropNoBackend => "no_backend",
            Reason::DropPolicyEgress => "policy_denied_egress",
            Reason::DropPolicyIngress => "policy_denied_ingress",
        }
    }

    /// One sentence for people reading `trace`.
    pub const fn describe(self) -> &'static str {
        match self {
            Reason::PassNotIp => "not an IP packet; passed untouched",
            Reason::PassNoService => "destination is not a service frontend; passed untouched",
            Reason::PassOtherProto => {
                "protocol is not translated by the service datapath; passed untouched"
            }
            Reason::PassFragment => "IP fragment without transport header; passed untouched",
            Reason::NatNew => "new connection to a service: backend chosen, destination translated",
            Reason::NatEstablished => {
                "packet of a tracked connection: destination translated to its backend"
            }
            Reason::NatReply => {
                "reply of a tracked connection: source translated back to the service address"
            }
            Reason::PassPolicyNone => {
                "destination is not a policy-isolated pod of this node; delivered"
            }
            Reason::PassPolicyAllowed => {
                "new connection allowed by the destination's ingress policy"
            }
            Reason::PassPolicyTracked => {
                "part of (or a reply to) a connection policy already allowed; delivered"
            }
            Reason::DropMalformed => "truncated or malformed header: dropped",
            Reason::DropNoEndpoints => "service port has no ready endpoint: dropped",
            Reason::DropCtFull => "connection-tracking table refused a new entry: dropped",
            Reason::DropNatFailed => "packet rewrite failed: dropped",
            Reason::DropNoBackend => "service slot points at a missing backend: dropped",
            Reason::DropPolicyEgress => {
                "no NetworkPolicy selecting the source pod allows this egress: dropped"
            }
            Reason::DropPolicyIngress => {
                "no NetworkPolicy selecting the destination pod allows this ingress: dropped"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn drops_are_exactly_the_drop_variants() {
        let drops: std::vec::Vec<_> = Reason::ALL.iter().filter(|r| r.is_drop()).collect();
        assert_eq!(drops.len(), 7);
        assert!(drops.iter().all(|r| format!("{r:?}").starts_with("Drop")));
    }

    #[test]
    fn indices_fit_the_stats_map_and_are_unique() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert!(r.index() < crate::maps::STATS_MAX);
            assert_eq!(Reason::from_index(r.index()), Some(*r));
            for other in &Reason::ALL[i + 1..] {
                assert_ne!(r.index(), other.index());
                assert_ne!(r.name(), other.name());
            }
        }
    }
}

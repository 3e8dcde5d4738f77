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
    /// A new connection to a service port without usable endpoints: answered with a TCP RST
    /// or an ICMP port unreachable sent back to the client (kube-proxy's REJECT).
    RejectNoEndpoints = 16,
    /// A new connection to a ClusterIP on a port the Service does not define: rejected like
    /// kube-proxy's nftables `cluster-ips-check`.
    RejectUndefinedPort = 17,
    /// First packet from outside the node to a backend on another node, where the frontend
    /// masquerades: destination translated, a node source port allocated (the source is
    /// rewritten when the packet leaves the node).
    NatNewMasq = 18,
    /// Leaving through an external interface: source masqueraded to the node address.
    NatMasqSource = 19,
    /// Leaving through an external interface: the reply to a client outside the node, source
    /// translated back to the service address.
    NatReplySource = 20,
    /// Leaving through an external interface, not part of a masqueraded connection.
    PassNoMasq = 21,
    /// Reply to a masqueraded connection: destination translated back to the client.
    NatMasqReply = 22,
    /// Socket level (`connect()`, unconnected `sendmsg()`): a local socket addressed a service;
    /// its destination was rewritten to the chosen backend before any packet exists.
    SockNat = 24,
    /// Socket level (`recvmsg()`, `getpeername()`): the backend's address reported to the
    /// application as the service address it used.
    SockRevNat = 25,
    /// An ICMP error about a translated connection: the packet it quotes (and its outer
    /// address, where it is the connection's) translated like the connection's packets.
    NatIcmpError = 26,
    /// A pod reaching itself through a service (hairpin): destination translated to the pod,
    /// source to the node address, and the packet sent straight back into the pod.
    NatHairpin = 27,
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
    /// Towards an address inside `serviceCIDRs` that no Service holds (kube-proxy drops it).
    DropUnallocatedServiceIp = 40,
    /// A ClusterIP port the Service does not define, where no reject reply can be built.
    DropUndefinedPort = 41,
    /// externalTrafficPolicy / internalTrafficPolicy Local without an endpoint on this
    /// node, while the Service has endpoints elsewhere (kube-proxy drops).
    DropNoLocalEndpoints = 42,
    /// Source outside the LoadBalancer's `loadBalancerSourceRanges`.
    DropSourceRange = 43,
    /// Every masquerade source port tried for this backend was taken.
    DropSnatNoPort = 44,
    /// Masquerading needed, but the node has no address of the packet's family.
    DropNoMasqAddress = 45,
    /// Socket level: `connect()`/`sendmsg()` to a service port without endpoints refused
    /// with ECONNREFUSED (what kube-proxy's REJECT gives a local client).
    DropSockNoEndpoints = 48,
    /// A Maglev frontend's lookup table entry is missing (the agent writes tables before the
    /// masters that name them, so this means a bug or a table map that is full).
    DropMaglevTable = 52,
}

/// First drop reason.
pub const DROP_BASE: u32 = 32;
/// Reject reasons: the packet was turned into a reply sent back where it came from.
pub const REJECT_FIRST: u32 = 16;
pub const REJECT_LAST: u32 = 17;

impl Reason {
    pub const ALL: [Reason; 36] = [
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
        Reason::RejectNoEndpoints,
        Reason::RejectUndefinedPort,
        Reason::NatNewMasq,
        Reason::NatMasqSource,
        Reason::NatReplySource,
        Reason::PassNoMasq,
        Reason::NatMasqReply,
        Reason::SockNat,
        Reason::SockRevNat,
        Reason::NatIcmpError,
        Reason::NatHairpin,
        Reason::DropMalformed,
        Reason::DropNoEndpoints,
        Reason::DropCtFull,
        Reason::DropNatFailed,
        Reason::DropNoBackend,
        Reason::DropPolicyEgress,
        Reason::DropPolicyIngress,
        Reason::DropUnallocatedServiceIp,
        Reason::DropUndefinedPort,
        Reason::DropNoLocalEndpoints,
        Reason::DropSourceRange,
        Reason::DropSnatNoPort,
        Reason::DropNoMasqAddress,
        Reason::DropSockNoEndpoints,
        Reason::DropMaglevTable,
    ];

    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    pub const fn is_drop(self) -> bool {
        self as u32 >= DROP_BASE
    }

    /// The packet became a reply (TCP RST / ICMP unreachable) to send back to its sender.
    pub const fn is_reject(self) -> bool {
        self as u32 >= REJECT_FIRST && self as u32 <= REJECT_LAST
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
            Reason::RejectNoEndpoints => "reject_no_endpoints",
            Reason::RejectUndefinedPort => "reject_undefined_port",
            Reason::NatNewMasq => "masq_new_connection",
            Reason::NatMasqSource => "masq_source",
            Reason::NatReplySource => "reply_source",
            Reason::PassNoMasq => "not_masqueraded",
            Reason::NatMasqReply => "masq_reply",
            Reason::SockNat => "sock_nat",
            Reason::SockRevNat => "sock_rev_nat",
            Reason::NatIcmpError => "nat_icmp_error",
            Reason::NatHairpin => "nat_hairpin",
            Reason::DropMalformed => "malformed",
            Reason::DropNoEndpoints => "no_endpoints",
            Reason::DropCtFull => "conntrack_full",
            Reason::DropNatFailed => "nat_failed",
            Reason::DropNoBackend => "no_backend",
            Reason::DropPolicyEgress => "policy_denied_egress",
            Reason::DropPolicyIngress => "policy_denied_ingress",
            Reason::DropUnallocatedServiceIp => "unallocated_service_ip",
            Reason::DropUndefinedPort => "undefined_port",
            Reason::DropNoLocalEndpoints => "no_local_endpoints",
            Reason::DropSourceRange => "source_range",
            Reason::DropSnatNoPort => "snat_no_port",
            Reason::DropNoMasqAddress => "no_masquerade_address",
            Reason::DropSockNoEndpoints => "sock_no_endpoints",
            Reason::DropMaglevTable => "maglev_table_missing",
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
            Reason::RejectNoEndpoints => {
                "service port has no ready endpoint: rejected (TCP RST or ICMP port unreachable sent back)"
            }
            Reason::RejectUndefinedPort => {
                "ClusterIP has no such port: rejected (TCP RST or ICMP port unreachable sent back)"
            }
            Reason::NatNewMasq => {
                "new connection from outside the node to a backend on another node: \
                 destination translated, source masqueraded to the node address"
            }
            Reason::NatMasqSource => {
                "leaving the node: source masqueraded to the node address and port"
            }
            Reason::NatReplySource => {
                "leaving the node: reply to a client outside the node, source translated back \
                 to the service address"
            }
            Reason::PassNoMasq => "leaving the node, not masqueraded: passed untouched",
            Reason::NatMasqReply => {
                "reply of a masqueraded connection: destination translated back to the client"
            }
            Reason::SockNat => {
                "local socket to a service: destination rewritten to the chosen backend at \
                 connect()/sendmsg(); its packets need no translation"
            }
            Reason::SockRevNat => {
                "local socket: the backend's address reported as the service address \
                 (recvmsg()/getpeername())"
            }
            Reason::NatIcmpError => {
                "ICMP error about a translated connection: the packet it quotes translated \
                 like the connection's packets, so that it reaches the right socket"
            }
            Reason::NatHairpin => {
                "a pod reaching itself through a service: destination translated to the pod, \
                 source to the node address, sent straight back into the pod"
            }
            Reason::DropMalformed => "truncated or malformed header: dropped",
            Reason::DropNoEndpoints => {
                "service port has no ready endpoint and no reply can be built: dropped"
            }
            Reason::DropCtFull => "connection-tracking table refused a new entry: dropped",
            Reason::DropNatFailed => "packet rewrite failed: dropped",
            Reason::DropNoBackend => "service slot points at a missing backend: dropped",
            Reason::DropPolicyEgress => {
                "no NetworkPolicy selecting the source pod allows this egress: dropped"
            }
            Reason::DropPolicyIngress => {
                "no NetworkPolicy selecting the destination pod allows this ingress: dropped"
            }
            Reason::DropUnallocatedServiceIp => {
                "address in serviceCIDRs that no Service holds: dropped"
            }
            Reason::DropUndefinedPort => {
                "ClusterIP has no such port and no reject reply can be built: dropped"
            }
            Reason::DropNoLocalEndpoints => {
                "traffic policy Local and no endpoint on this node (the service has others): dropped"
            }
            Reason::DropSourceRange => {
                "source is outside the service's loadBalancerSourceRanges: dropped"
            }
            Reason::DropSnatNoPort => {
                "no free masquerade source port towards this backend: dropped"
            }
            Reason::DropNoMasqAddress => {
                "masquerading needed but the node has no address of this family: dropped"
            }
            Reason::DropSockNoEndpoints => {
                "local socket to a service port without endpoints: connect()/sendmsg() \
                 refused with ECONNREFUSED"
            }
            Reason::DropMaglevTable => {
                "Maglev service whose lookup table entry is missing: dropped"
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
        assert_eq!(drops.len(), 15);
        assert!(drops.iter().all(|r| format!("{r:?}").starts_with("Drop")));
    }

    #[test]
    fn rejects_are_exactly_the_reject_variants_and_not_drops() {
        for r in Reason::ALL {
            assert_eq!(
                r.is_reject(),
                format!("{r:?}").starts_with("Reject"),
                "{r:?}"
            );
            assert!(!(r.is_reject() && r.is_drop()), "{r:?}");
        }
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

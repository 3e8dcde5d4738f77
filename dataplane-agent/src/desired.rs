//! What the BPF maps should contain, in plain Rust terms: the output of the pure translation
//! (`translate`) and the input of the map writer (`bpf::writer`). No ids, no byte orders: the
//! writer owns those.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// IP protocols a Service port can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IANA protocol number, as used in the maps.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => dataplane_common::PROTO_TCP,
            Protocol::Udp => dataplane_common::PROTO_UDP,
            Protocol::Sctp => dataplane_common::PROTO_SCTP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            dataplane_common::PROTO_TCP => Some(Protocol::Tcp),
            dataplane_common::PROTO_UDP => Some(Protocol::Udp),
            dataplane_common::PROTO_SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Kubernetes spelling ("TCP", "UDP", "SCTP").
    pub fn as_k8s(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parse the Kubernetes spelling; `None` (field absent) means TCP, as the API defaults it.
    pub fn from_k8s(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_k8s())
    }
}

/// An address:port/protocol a client connects to (ClusterIP:port, later NodePort, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

/// An endpoint address with its resolved target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

/// Which Service port a frontend belongs to (for logs, metrics and `trace`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortRef {
    pub namespace: String,
    pub name: String,
    /// The Service port's name ("" when the port is unnamed).
    pub port_name: String,
}

impl fmt::Display for ServicePortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port_name.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

/// One frontend's programmed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendEntry {
    pub service: ServicePortRef,
    /// Backends new connections are spread over: sorted, without duplicates. Empty means the
    /// service port exists but has no usable endpoint.
    pub backends: Vec<BackendAddr>,
}

/// Everything the service maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<Frontend, FrontendEntry>,
    /// Frontends of services with `sessionAffinity: ClientIP`, and the timeout in seconds.
    pub session_affinity: BTreeMap<Frontend, u32>,
    /// Frontends balanced by Maglev consistent hashing (both scopes), and the table size M
    /// (a prime, `maglev::valid_table_size`); the others pick backends at random.
    pub maglev: BTreeMap<Frontend, u16>,
    /// Every ClusterIP of a proxied Service: traffic to a port it does not define is
    /// rejected (kube-proxy nftables' `cluster-ips` set).
    pub cluster_ips: BTreeSet<IpAddr>,
    /// `serviceCIDRs`: traffic to an address in them that is no ClusterIP is dropped.
    pub service_cidrs: Vec<IpNet>,
    /// Frontends without backends whose Service port has usable endpoints elsewhere (a
    /// `Local` traffic policy with none on this node): dropped, not rejected, like
    /// kube-proxy.
    pub drop_when_empty: BTreeSet<Frontend>,
    /// The external scope: what traffic arriving from outside the node (the XDP hook) gets
    /// at a NodePort, LoadBalancer IP or externalIP when it differs from the internal entry
    /// in `frontends` (which pods, and the node, get): `externalTrafficPolicy: Local`.
    pub external: BTreeMap<Frontend, ExternalEntry>,
    /// `loadBalancerSourceRanges` of LoadBalancer IP frontends: other sources are dropped.
    pub source_ranges: BTreeMap<Frontend, Vec<IpNet>>,
    /// `healthCheckNodePort` listeners (LoadBalancer services with `externalTrafficPolicy:
    /// Local`).
    pub health_checks: BTreeMap<u16, HealthCheck>,
    /// How traffic from outside the node to a frontend is masqueraded when its backend is
    /// on another node (absent: never).
    pub masquerade: BTreeMap<Frontend, Masquerade>,
    /// Addresses of endpoints on this node: their replies return through the node, so
    /// connections to them are never masqueraded.
    pub local_endpoints: BTreeSet<IpAddr>,
    /// The node address masqueraded traffic leaves with, at most one per family.
    pub masquerade_ips: Vec<IpAddr>,
    /// `clusterCIDRs`: sources inside are pods (`Masquerade::OffCluster`).
    pub cluster_cidrs: Vec<IpNet>,
}

/// kube-proxy's masquerade rules for one frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Masquerade {
    /// Every source (`externalTrafficPolicy: Cluster` external addresses; ClusterIPs with
    /// `masqueradeAll`).
    Always,
    /// Sources outside `clusterCIDRs` (ClusterIPs when `clusterCIDRs` is set).
    OffCluster,
}

/// An external-scope frontend: this node's endpoints only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalEntry {
    pub backends: Vec<BackendAddr>,
    /// No local endpoint, but the port has endpoints elsewhere: dropped (kube-proxy drops
    /// external traffic to an eTP=Local service without local endpoints).
    pub drop_when_empty: bool,
}

/// What kube-proxy's health check server reports for one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    /// Distinct ready endpoints of the Service on this node (terminating ones do not count).
    pub local_endpoints: usize,
}

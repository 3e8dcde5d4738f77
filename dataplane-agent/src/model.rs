//! The validated model the translation works on, built from the k8s-openapi types. Whatever a
//! source (manifests directory, later the API server) hands in is checked here once, so the
//! translation never meets an unparsable IP or an out-of-range port.
//!
//! Services and EndpointSlices are converted into plain Rust types; the kinds the translation
//! does not use yet (Pods, Namespaces, NetworkPolicies, Nodes) are kept as k8s-openapi objects.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use thiserror::Error;

use crate::desired::Protocol;
use crate::maglev::{LbAlgorithm, ANNOTATION_LB_ALGORITHM};

/// EndpointSlice label naming the Service the slice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Service label handing the Service to another proxy; kube-proxy ignores such Services.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label the control plane puts on headless Services' EndpointSlices; kube-proxy ignores them.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Namespace of a namespaced object whose metadata names none (as `kubectl apply` assumes).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The API's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;
/// The API's upper bound for `timeoutSeconds` (1 day).
const MAX_AFFINITY_TIMEOUT_SECONDS: i32 = 86_400;

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl NamespacedName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        NamespacedName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything the sources know about the cluster, keyed for deterministic iteration.
#[derive(Clone, Debug, Default, PartialEq)]
/// Objects are shared with the sources' stores: a new state after one change costs a map of
/// pointers, not a copy of every object.
pub struct ClusterState {
    pub services: BTreeMap<NamespacedName, Arc<Service>>,
    pub endpoint_slices: BTreeMap<NamespacedName, Arc<EndpointSlice>>,
    pub pods: BTreeMap<NamespacedName, Arc<core::Pod>>,
    /// Cluster-scoped: keyed by name.
    pub namespaces: BTreeMap<String, Arc<core::Namespace>>,
    pub network_policies: BTreeMap<NamespacedName, Arc<networking::NetworkPolicy>>,
    /// Cluster-scoped: keyed by name.
    pub nodes: BTreeMap<String, Arc<core::Node>>,
}

/// A field of an object that failed validation.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{kind} {object}: {field}: {problem}")]
pub struct ValidationError {
    /// The object's kind (`Service`, `EndpointSlice`, ...).
    pub kind: &'static str,
    /// `namespace/name` (just `name` for cluster-scoped kinds; `<unnamed>` when missing).
    pub object: String,
    /// Path of the offending field, e.g. `spec.ports[1].port`.
    pub field: String,
    pub problem: Problem,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Problem {
    #[error("required but missing")]
    Missing,
    #[error("{0:?} is not an IP address")]
    InvalidIp(String),
    #[error("{value} is not an {family} address, as the {context} requires")]
    WrongFamily {
        value: IpAddr,
        family: IpFamily,
        context: &'static str,
    },
    #[error("{0:?} is not a CIDR")]
    InvalidCidr(String),
    #[error("port {0} is out of range (1-65535)")]
    PortOutOfRange(i64),
    #[error("unknown protocol {0:?} (expected TCP, UDP or SCTP)")]
    UnknownProtocol(String),
    #[error("unknown value {value:?} (expected {expected})")]
    UnknownValue {
        value: String,
        expected: &'static str,
    },
    #[error("duplicate of {0}")]
    Duplicate(String),
    #[error("{0}")]
    Constraint(&'static str),
    #[error("{value:?} {reason}")]
    InvalidValue { value: String, reason: String },
}

/// Names the object under validation in its errors.
pub(crate) struct Ctx {
    kind: &'static str,
    object: String,
}

impl Ctx {
    pub(crate) fn new(kind: &'static str, namespace: Option<&str>, name: Option<&str>) -> Ctx {
        let name = name.unwrap_or("<unnamed>");
        let object = match namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        };
        Ctx { kind, object }
    }

    pub(crate) fn err(&self, field: impl Into<String>, problem: Problem) -> ValidationError {
        ValidationError {
            kind: self.kind,
            object: self.object.clone(),
            field: field.into(),
            problem,
        }
    }

    pub(crate) fn ip(&self, field: impl Into<String>, s: &str) -> Result<IpAddr, ValidationError> {
        s.parse()
            .map_err(|_| self.err(field, Problem::InvalidIp(s.to_string())))
    }

    /// A port number: 1-65535.
    pub(crate) fn port(&self, field: impl Into<String>, n: i32) -> Result<u16, ValidationError> {
        match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(self.err(field, Problem::PortOutOfRange(n.into()))),
        }
    }

    /// A port the API treats 0 as "not allocated" for (nodePort, healthCheckNodePort).
    fn optional_port(
        &self,
        field: impl Into<String>,
        n: Option<i32>,
    ) -> Result<Option<u16>, ValidationError> {
        match n {
            None | Some(0) => Ok(None),
            Some(n) => self.port(field, n).map(Some),
        }
    }

    pub(crate) fn protocol(
        &self,
        field: impl Into<String>,
        s: Option<&str>,
    ) -> Result<Protocol, ValidationError> {
        Protocol::from_k8s(s)
            .ok_or_else(|| self.err(field, Problem::UnknownProtocol(s.unwrap_or("").into())))
    }
}

/// The namespace a namespaced object lives in (absent or empty: `default`).
pub fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
}

/// The key of a namespaced object; its name is required.
pub fn namespaced_key(
    kind: &'static str,
    meta: &ObjectMeta,
) -> Result<NamespacedName, ValidationError> {
    let namespace = namespace_of(meta);
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => Ok(NamespacedName::new(namespace, name)),
        _ => Err(Ctx::new(kind, Some(namespace), None).err("metadata.name", Problem::Missing)),
    }
}

/// The key (name) of a cluster-scoped object; its name is required.
pub fn cluster_key(kind: &'static str, meta: &ObjectMeta) -> Result<String, ValidationError> {
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(Ctx::new(kind, None, None).err("metadata.name", Problem::Missing)),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(addr: &IpAddr) -> IpFamily {
        match addr {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Service

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// `spec.clusterIPs` (or the older `spec.clusterIP`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterIps {
    /// No virtual IP: empty, absent (e.g. ExternalName), or not allocated yet.
    Unallocated,
    /// `None`: a headless Service; clients use the endpoints directly.
    Headless,
    /// One IP, or two of different families (dual-stack), primary first.
    Ips(Vec<IpAddr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAffinity {
    None,
    ClientIp { timeout_seconds: u32 },
}

/// `spec.ports[].targetPort`. kube-proxy never reads it (the EndpointSlice controller resolves
/// it into the slices' ports); kept for diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// "" when unnamed.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
    pub target_port: TargetPort,
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub type_: ServiceType,
    pub cluster_ips: ClusterIps,
    pub ports: Vec<ServicePort>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` (hostname-only ingress entries are not proxied).
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub session_affinity: SessionAffinity,
    pub health_check_node_port: Option<u16>,
    pub traffic_distribution: Option<String>,
    /// The `skiff.io/lb-algorithm` annotation; `None`: the node config's `loadBalancing`.
    pub lb_algorithm: Option<LbAlgorithm>,
}

impl Service {
    pub fn key(&self) -> NamespacedName {
        NamespacedName::new(&self.namespace, &self.name)
    }

    /// Validate a k8s-openapi Service.
    pub fn from_k8s(svc: &core::Service) -> Result<Service, ValidationError> {
        let key = namespaced_key("Service", &svc.metadata)?;
        let ctx = Ctx::new("Service", Some(&key.namespace), Some(&key.name));
        let default_spec = core::ServiceSpec::default();
        let spec = svc.spec.as_ref().unwrap_or(&default_spec);

        let type_ = match spec.type_.as_deref() {
            None | Some("ClusterIP") => ServiceType::ClusterIp,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            Some(other) => {
                return Err(ctx.err(
                    "spec.type",
                    Problem::UnknownValue {
                        value: other.into(),
                        expected: "ClusterIP, NodePort, LoadBalancer or ExternalName",
                    },
                ))
            }
        };

        let external_ips = spec
            .external_ips
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, s)| ctx.ip(format!("spec.externalIPs[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;

        let load_balancer_ips = svc
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, ing)| {
                let ip = ing.ip.as_deref().filter(|s| !s.is_empty())?;
                Some(ctx.ip(format!("status.loadBalancer.ingress[{i}].ip"), ip))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let load_balancer_source_ranges = spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, s)| {
                // Like kube-proxy, tolerate surrounding spaces and host bits.
                s.trim()
                    .parse::<IpNet>()
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        ctx.err(
                            format!("spec.loadBalancerSourceRanges[{i}]"),
                            Problem::InvalidCidr(s.clone()),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let session_affinity = match spec.session_affinity.as_deref() {
            None | Some("None") => SessionAffinity::None,
            Some("ClientIP") => {
                let timeout = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                let timeout_seconds = match timeout {
                    None => DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                    Some(t) if (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&t) => t as u32,
                    Some(_) => {
                        return Err(ctx.err(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            Problem::Constraint("must be between 1 and 86400"),
                        ))
                    }
                };
                SessionAffinity::ClientIp { timeout_seconds }
            }
            Some(other) => {
                return Err(ctx.err(
                    "spec.sessionAffinity",
                    Problem::UnknownValue {
                        value: other.into(),
                        expected: "None or ClientIP",
                    },
                ))
            }
        };

        let lb_algorithm = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_LB_ALGORITHM))
            .map(|v| {
                LbAlgorithm::parse(v).ok_or_else(|| {
                    ctx.err(
                        format!("metadata.annotations[{ANNOTATION_LB_ALGORITHM}]"),
                        Problem::UnknownValue {
                            value: v.clone(),
                            expected: "maglev or random",
                        },
                    )
                })
            })
            .transpose()?;

        Ok(Service {
            namespace: key.namespace,
            name: key.name,
            labels: svc.metadata.labels.clone().unwrap_or_default(),
            type_,
            cluster_ips: cluster_ips(&ctx, spec)?,
            ports: service_ports(&ctx, spec)?,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            external_traffic_policy: traffic_policy(
                &ctx,
                "spec.externalTrafficPolicy",
                spec.external_traffic_policy.as_deref(),
            )?,
            internal_traffic_policy: traffic_policy(
                &ctx,
                "spec.internalTrafficPolicy",
                spec.internal_traffic_policy.as_deref(),
            )?,
            session_affinity,
            health_check_node_port: ctx
                .optional_port("spec.healthCheckNodePort", spec.health_check_node_port)?,
            traffic_distribution: spec.traffic_distribution.clone(),
            lb_algorithm,
        })
    }
}

fn cluster_ips(ctx: &Ctx, spec: &core::ServiceSpec) -> Result<ClusterIps, ValidationError> {
    // clusterIPs supersedes clusterIP (the API keeps clusterIPs[0] == clusterIP).
    let (field, raw): (&str, Vec<&str>) = match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => {
            ("spec.clusterIPs", list.iter().map(String::as_str).collect())
        }
        _ => (
            "spec.clusterIP",
            spec.cluster_ip.as_deref().into_iter().collect(),
        ),
    };
    let field_at = |i: usize| {
        if field == "spec.clusterIP" {
            field.to_string()
        } else {
            format!("{field}[{i}]")
        }
    };
    if raw.iter().all(|s| s.is_empty()) {
        return Ok(ClusterIps::Unallocated);
    }
    if raw.contains(&"None") {
        if raw.len() > 1 {
            return Err(ctx.err(
                field,
                Problem::Constraint("\"None\" must be the only entry"),
            ));
        }
        return Ok(ClusterIps::Headless);
    }
    if raw.len() > 2 {
        return Err(ctx.err(
            field,
            Problem::Constraint("at most two entries (dual-stack)"),
        ));
    }
    let ips = raw
        .iter()
        .enumerate()
        .map(|(i, s)| ctx.ip(field_at(i), s))
        .collect::<Result<Vec<_>, _>>()?;
    if let [a, b] = ips[..] {
        if IpFamily::of(&a) == IpFamily::of(&b) {
            return Err(ctx.err(
                field_at(1),
                Problem::Constraint("dual-stack clusterIPs must be of different IP families"),
            ));
        }
    }
    Ok(ClusterIps::Ips(ips))
}

fn service_ports(ctx: &Ctx, spec: &core::ServiceSpec) -> Result<Vec<ServicePort>, ValidationError> {
    let mut names = BTreeSet::new();
    let mut ports_seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let port = ctx.port(format!("{field}.port"), p.port)?;
        let protocol = ctx.protocol(format!("{field}.protocol"), p.protocol.as_deref())?;
        let name = p.name.clone().unwrap_or_default();
        // Both would make two frontends or two port references collide.
        if !names.insert(name.clone()) {
            return Err(ctx.err(
                format!("{field}.name"),
                Problem::Duplicate(format!("port name {name:?}")),
            ));
        }
        if !ports_seen.insert((port, protocol)) {
            return Err(ctx.err(field, Problem::Duplicate(format!("port {port}/{protocol}"))));
        }
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(ctx.port(format!("{field}.targetPort"), *n)?)
            }
            Some(IntOrString::String(s)) if s.is_empty() => {
                return Err(ctx.err(
                    format!("{field}.targetPort"),
                    Problem::Constraint("must not be empty"),
                ))
            }
            Some(IntOrString::String(s)) => TargetPort::Name(s.clone()),
        };
        out.push(ServicePort {
            name,
            port,
            protocol,
            node_port: ctx.optional_port(format!("{field}.nodePort"), p.node_port)?,
            target_port,
            app_protocol: p.app_protocol.clone(),
        });
    }
    Ok(out)
}

fn traffic_policy(
    ctx: &Ctx,
    field: &str,
    value: Option<&str>,
) -> Result<TrafficPolicy, ValidationError> {
    match value {
        None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(ctx.err(
            field,
            Problem::UnknownValue {
                value: other.into(),
                expected: "Cluster or Local",
            },
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// EndpointSlice

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressType {
    Ipv4,
    Ipv6,
    /// Deprecated; kube-proxy ignores such slices.
    Fqdn,
}

impl AddressType {
    /// The IP family of the slice's addresses (`None` for FQDN).
    pub fn family(self) -> Option<IpFamily> {
        match self {
            AddressType::Ipv4 => Some(IpFamily::V4),
            AddressType::Ipv6 => Some(IpFamily::V6),
            AddressType::Fqdn => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPort {
    /// "" when unnamed; matches the Service port of the same name.
    pub name: String,
    /// `None`: unrestricted (not derived from a Service); kube-proxy ignores such ports.
    pub port: Option<u16>,
    pub protocol: Protocol,
    pub app_protocol: Option<String>,
}

/// Endpoint conditions with the API's defaults for absent values applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointConditions {
    /// Absent = true.
    pub ready: bool,
    /// Absent = true (the v1 API's rule; v1beta1 said "defer to ready").
    pub serving: bool,
    /// Absent = false.
    pub terminating: bool,
}

impl EndpointConditions {
    pub fn from_k8s(c: Option<&discovery::EndpointConditions>) -> EndpointConditions {
        let c = c.cloned().unwrap_or_default();
        EndpointConditions {
            ready: c.ready.unwrap_or(true),
            serving: c.serving.unwrap_or(true),
            terminating: c.terminating.unwrap_or(false),
        }
    }
}

/// Topology hints: where the endpoint should preferably be used from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointHints {
    pub for_zones: Vec<String>,
    pub for_nodes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// At least one; all of the slice's family. kube-proxy (and so skiff) uses only the first:
    /// the API defines no meaning for the others.
    pub addresses: Vec<IpAddr>,
    pub conditions: EndpointConditions,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// `None` when the endpoint carries no hints (kube-proxy then ignores all of the slice's).
    pub hints: Option<EndpointHints>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// From the `kubernetes.io/service-name` label; `None` when the slice belongs to no Service.
    pub service_name: Option<String>,
    pub address_type: AddressType,
    pub ports: Vec<EndpointPort>,
    /// Always empty for FQDN slices: their hostnames mean nothing to a proxy.
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSlice {
    pub fn key(&self) -> NamespacedName {
        NamespacedName::new(&self.namespace, &self.name)
    }

    /// Validate a k8s-openapi EndpointSlice.
    pub fn from_k8s(slice: &discovery::EndpointSlice) -> Result<EndpointSlice, ValidationError> {
        let key = namespaced_key("EndpointSlice", &slice.metadata)?;
        let ctx = Ctx::new("EndpointSlice", Some(&key.namespace), Some(&key.name));
        let labels = slice.metadata.labels.clone().unwrap_or_default();

        let address_type = match slice.address_type.as_str() {
            "IPv4" => AddressType::Ipv4,
            "IPv6" => AddressType::Ipv6,
            "FQDN" => AddressType::Fqdn,
            other => {
                return Err(ctx.err(
                    "addressType",
                    Problem::UnknownValue {
                        value: other.into(),
                        expected: "IPv4, IPv6 or FQDN",
                    },
                ))
            }
        };

        let mut names = BTreeSet::new();
        let mut ports = Vec::new();
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            let field = format!("ports[{i}]");
            let name = p.name.clone().unwrap_or_default();
            if !names.insert(name.clone()) {
                return Err(ctx.err(
                    format!("{field}.name"),
                    Problem::Duplicate(format!("port name {name:?}")),
                ));
            }
            ports.push(EndpointPort {
                name,
                port: p
                    .port
                    .map(|n| ctx.port(format!("{field}.port"), n))
                    .transpose()?,
                protocol: ctx.protocol(format!("{field}.protocol"), p.protocol.as_deref())?,
                app_protocol: p.app_protocol.clone(),
            });
        }

        let endpoints = match address_type.family() {
            None => Vec::new(),
            Some(family) => slice
                .endpoints
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, ep)| endpoint(&ctx, i, ep, family))
                .collect::<Result<Vec<_>, _>>()?,
        };

        Ok(EndpointSlice {
            namespace: key.namespace,
            name: key.name,
            service_name: labels.get(LABEL_SERVICE_NAME).cloned(),
            labels,
            address_type,
            ports,
            endpoints,
        })
    }
}

fn endpoint(
    ctx: &Ctx,
    i: usize,
    ep: &discovery::Endpoint,
    family: IpFamily,
) -> Result<Endpoint, ValidationError> {
    let field = format!("endpoints[{i}].addresses");
    if ep.addresses.is_empty() {
        return Err(ctx.err(field, Problem::Missing));
    }
    let addresses = ep
        .addresses
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let addr = ctx.ip(format!("{field}[{j}]"), s)?;
            if IpFamily::of(&addr) != family {
                return Err(ctx.err(
                    format!("{field}[{j}]"),
                    Problem::WrongFamily {
                        value: addr,
                        family,
                        context: "addressType",
                    },
                ));
            }
            Ok(addr)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let hints = ep.hints.as_ref().map(|h| EndpointHints {
        for_zones: h
            .for_zones
            .iter()
            .flatten()
            .map(|z| z.name.clone())
            .collect(),
        for_nodes: h
            .for_nodes
            .iter()
            .flatten()
            .map(|n| n.name.clone())
            .collect(),
    });
    Ok(Endpoint {
        addresses,
        conditions: EndpointConditions::from_k8s(ep.conditions.as_ref()),
        hostname: ep.hostname.clone(),
        node_name: ep.node_name.clone(),
        zone: ep.zone.clone(),
        hints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> core::Service {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn slice(yaml: &str) -> discovery::EndpointSlice {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const FULL_SERVICE: &str = r#"
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
  externalIPs: [198.51.100.7]
  loadBalancerSourceRanges: [" 203.0.113.5/24 "]
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  healthCheckNodePort: 32000
status:
  loadBalancer:
    ingress: [{ip: 203.0.113.10}, {hostname: lb.example.com}]
"#;

    #[test]
    fn service_fields_are_captured() {
        let s = Service::from_k8s(&svc(FULL_SERVICE)).unwrap();
        assert_eq!(s.key(), NamespacedName::new("demo", "web"));
        assert_eq!(s.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(s.type_, ServiceType::LoadBalancer);
        assert_eq!(
            s.cluster_ips,
            ClusterIps::Ips(vec![ip("10.96.0.10"), ip("fd00:96::10")])
        );
        assert_eq!(
            s.ports,
            vec![
                ServicePort {
                    name: "http".into(),
                    port: 80,
                    protocol: Protocol::Tcp,
                    node_port: Some(30080),
                    target_port: TargetPort::Name("http".into()),
                    app_protocol: None,
                },
                ServicePort {
                    name: "dns".into(),
                    port: 53,
                    protocol: Protocol::Udp,
                    node_port: None,
                    target_port: TargetPort::Number(5353),
                    app_protocol: None,
                },
            ]
        );
        assert_eq!(s.external_ips, vec![ip("198.51.100.7")]);
        assert_eq!(s.load_balancer_ips, vec![ip("203.0.113.10")]);
        assert_eq!(
            s.load_balancer_source_ranges,
            vec!["203.0.113.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(s.internal_traffic_policy, TrafficPolicy::Local);
        assert_eq!(
            s.session_affinity,
            SessionAffinity::ClientIp {
                timeout_seconds: 60
            }
        );
        assert_eq!(s.health_check_node_port, Some(32000));
    }

    #[test]
    fn service_defaults() {
        let s = Service::from_k8s(&svc(
            "metadata: {name: a}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}], sessionAffinity: ClientIP}\n",
        ))
        .unwrap();
        assert_eq!(s.namespace, "default");
        assert_eq!(s.type_, ServiceType::ClusterIp);
        assert_eq!(s.cluster_ips, ClusterIps::Ips(vec![ip("10.96.0.1")]));
        assert_eq!(s.ports[0].name, "");
        assert_eq!(s.ports[0].protocol, Protocol::Tcp);
        assert_eq!(s.ports[0].target_port, TargetPort::Number(80));
        assert_eq!(s.external_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(s.internal_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(
            s.session_affinity,
            SessionAffinity::ClientIp {
                timeout_seconds: DEFAULT_AFFINITY_TIMEOUT_SECONDS
            }
        );
    }

    #[test]
    fn cluster_ip_forms() {
        let parse = |spec: &str| {
            Service::from_k8s(&svc(&format!("metadata: {{name: a}}\nspec: {spec}\n")))
                .map(|s| s.cluster_ips)
        };
        assert_eq!(parse("{clusterIP: None}").unwrap(), ClusterIps::Headless);
        assert_eq!(parse("{clusterIPs: [None]}").unwrap(), ClusterIps::Headless);
        assert_eq!(parse("{}").unwrap(), ClusterIps::Unallocated);
        assert_eq!(parse("{clusterIP: ''}").unwrap(), ClusterIps::Unallocated);
        // clusterIPs wins over clusterIP; an empty clusterIPs falls back to clusterIP.
        assert_eq!(
            parse("{clusterIP: 10.0.0.1, clusterIPs: [10.0.0.2]}").unwrap(),
            ClusterIps::Ips(vec![ip("10.0.0.2")])
        );
        assert_eq!(
            parse("{clusterIP: 10.0.0.1, clusterIPs: []}").unwrap(),
            ClusterIps::Ips(vec![ip("10.0.0.1")])
        );
        let err = parse("{clusterIPs: [10.0.0.1, 10.0.0.2]}").unwrap_err();
        assert_eq!(err.field, "spec.clusterIPs[1]");
        let err = parse("{clusterIPs: [10.0.0.1, None]}").unwrap_err();
        assert_eq!(err.field, "spec.clusterIPs");
    }

    #[test]
    fn bad_cluster_ip_names_object_and_field() {
        let err = Service::from_k8s(&svc(
            "metadata: {name: web, namespace: demo}\nspec: {clusterIP: 10.96.0.300}\n",
        ))
        .unwrap_err();
        assert_eq!(err.object, "demo/web");
        assert_eq!(err.field, "spec.clusterIP");
        assert_eq!(err.problem, Problem::InvalidIp("10.96.0.300".into()));
        let msg = err.to_string();
        assert!(
            msg.starts_with("Service demo/web: spec.clusterIP:"),
            "{msg}"
        );
    }

    #[test]
    fn bad_ports_rejected() {
        let check = |ports: &str, field: &str, problem: Problem| {
            let err = Service::from_k8s(&svc(&format!(
                "metadata: {{name: a}}\nspec: {{clusterIP: 10.0.0.1, ports: {ports}}}\n"
            )))
            .unwrap_err();
            assert_eq!(
                (err.field.as_str(), err.problem),
                (field, problem),
                "{ports}"
            );
        };
        check(
            "[{port: 0}]",
            "spec.ports[0].port",
            Problem::PortOutOfRange(0),
        );
        check(
            "[{name: a, port: 80}, {name: b, port: 65536}]",
            "spec.ports[1].port",
            Problem::PortOutOfRange(65536),
        );
        check(
            "[{port: 80, targetPort: 70000}]",
            "spec.ports[0].targetPort",
            Problem::PortOutOfRange(70000),
        );
        check(
            "[{port: 80, nodePort: -1}]",
            "spec.ports[0].nodePort",
            Problem::PortOutOfRange(-1),
        );
        check(
            "[{port: 80, protocol: ICMP}]",
            "spec.ports[0].protocol",
            Problem::UnknownProtocol("ICMP".into()),
        );
        check(
            "[{name: a, port: 80}, {name: a, port: 81}]",
            "spec.ports[1].name",
            Problem::Duplicate("port name \"a\"".into()),
        );
        check(
            "[{name: a, port: 80}, {name: b, port: 80}]",
            "spec.ports[1]",
            Problem::Duplicate("port 80/TCP".into()),
        );
    }

    #[test]
    fn same_port_number_on_two_protocols_is_fine() {
        let s = Service::from_k8s(&svc(
            "metadata: {name: dns}\nspec: {clusterIP: 10.0.0.10, ports: [{name: tcp, port: 53}, {name: udp, port: 53, protocol: UDP}]}\n",
        ))
        .unwrap();
        assert_eq!(s.ports.len(), 2);
    }

    #[test]
    fn unknown_enum_values_rejected() {
        for (spec, field) in [
            ("{type: Magic}", "spec.type"),
            ("{externalTrafficPolicy: Global}", "spec.externalTrafficPolicy"),
            ("{internalTrafficPolicy: Nearby}", "spec.internalTrafficPolicy"),
            ("{sessionAffinity: Cookie}", "spec.sessionAffinity"),
            (
                "{sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}}",
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            ),
            ("{externalIPs: [nope]}", "spec.externalIPs[0]"),
            ("{loadBalancerSourceRanges: [10.0.0.0]}", "spec.loadBalancerSourceRanges[0]"),
        ] {
            let err = Service::from_k8s(&svc(&format!("metadata: {{name: a}}\nspec: {spec}\n")))
                .unwrap_err();
            assert_eq!(err.field, field, "{spec}");
        }
    }

    #[test]
    fn missing_name_is_an_error() {
        let err = Service::from_k8s(&svc("metadata: {namespace: demo}\nspec: {}\n")).unwrap_err();
        assert_eq!(err.field, "metadata.name");
        assert_eq!(err.problem, Problem::Missing);
        assert_eq!(err.object, "demo/<unnamed>");
    }

    const SLICE: &str = r#"
metadata:
  name: web-abc
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {port: 9000, protocol: UDP}
endpoints:
- addresses: [10.244.1.11]
  nodeName: n1
  zone: z1
  hints: {forZones: [{name: z1}], forNodes: [{name: n1}]}
- addresses: [10.244.1.12]
  conditions: {ready: false}
- addresses: [10.244.1.13]
  conditions: {ready: false, serving: true, terminating: true}
"#;

    #[test]
    fn endpoint_slice_fields_are_captured() {
        let s = EndpointSlice::from_k8s(&slice(SLICE)).unwrap();
        assert_eq!(s.key(), NamespacedName::new("demo", "web-abc"));
        assert_eq!(s.service_name.as_deref(), Some("web"));
        assert_eq!(s.address_type, AddressType::Ipv4);
        assert_eq!(
            s.ports,
            vec![
                EndpointPort {
                    name: "http".into(),
                    port: Some(8080),
                    protocol: Protocol::Tcp,
                    app_protocol: None
                },
                EndpointPort {
                    name: "".into(),
                    port: Some(9000),
                    protocol: Protocol::Udp,
                    app_protocol: None
                },
            ]
        );
        let e = &s.endpoints[0];
        assert_eq!(e.addresses, vec![ip("10.244.1.11")]);
        assert_eq!(e.node_name.as_deref(), Some("n1"));
        assert_eq!(e.zone.as_deref(), Some("z1"));
        assert_eq!(
            e.hints,
            Some(EndpointHints {
                for_zones: vec!["z1".into()],
                for_nodes: vec!["n1".into()]
            })
        );
        assert_eq!(s.endpoints[1].hints, None);
    }

    #[test]
    fn endpoint_condition_defaults() {
        let s = EndpointSlice::from_k8s(&slice(SLICE)).unwrap();
        let c: Vec<_> = s.endpoints.iter().map(|e| e.conditions).collect();
        let cond = |ready, serving, terminating| EndpointConditions {
            ready,
            serving,
            terminating,
        };
        // Absent conditions: ready and serving, not terminating.
        assert_eq!(c[0], cond(true, true, false));
        // Absent serving is true even when not ready (v1 API); absent terminating is false.
        assert_eq!(c[1], cond(false, true, false));
        assert_eq!(c[2], cond(false, true, true));
        assert_eq!(
            EndpointConditions::from_k8s(Some(&discovery::EndpointConditions {
                ready: Some(true),
                serving: Some(false),
                terminating: None,
            })),
            cond(true, false, false)
        );
    }

    #[test]
    fn slice_port_without_number_is_kept_as_unrestricted() {
        let s = EndpointSlice::from_k8s(&slice(
            "metadata: {name: s}\naddressType: IPv4\nports: [{name: x}]\nendpoints: []\n",
        ))
        .unwrap();
        assert_eq!(s.ports[0].port, None);
        assert_eq!(s.service_name, None);
    }

    #[test]
    fn bad_slices_rejected() {
        let check = |yaml: &str, field: &str| {
            let err = EndpointSlice::from_k8s(&slice(&format!(
                "metadata: {{name: s, namespace: demo}}\n{yaml}"
            )))
            .unwrap_err();
            assert_eq!(err.field, field, "{yaml}");
            assert_eq!(err.object, "demo/s");
            assert_eq!(err.kind, "EndpointSlice");
        };
        check("addressType: IPv5\nendpoints: []\n", "addressType");
        check(
            "addressType: IPv4\nports: [{port: 0}]\nendpoints: []\n",
            "ports[0].port",
        );
        check(
            "addressType: IPv4\nports: [{port: 80, protocol: tcp}]\nendpoints: []\n",
            "ports[0].protocol",
        );
        check(
            "addressType: IPv4\nports: [{port: 80}, {port: 81}]\nendpoints: []\n",
            "ports[1].name",
        );
        check(
            "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.x]}]\n",
            "endpoints[1].addresses[0]",
        );
        check(
            "addressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]\n",
            "endpoints[0].addresses[0]",
        );
        check(
            "addressType: IPv6\nendpoints: [{addresses: []}]\n",
            "endpoints[0].addresses",
        );
    }

    #[test]
    fn fqdn_slices_keep_no_endpoints() {
        let s = EndpointSlice::from_k8s(&slice(
            "metadata: {name: s}\naddressType: FQDN\nendpoints: [{addresses: [db.example.com]}]\n",
        ))
        .unwrap();
        assert_eq!(s.address_type, AddressType::Fqdn);
        assert!(s.endpoints.is_empty());
    }

    #[test]
    fn cluster_scoped_keys() {
        let meta = ObjectMeta {
            name: Some("n1".into()),
            ..Default::default()
        };
        assert_eq!(cluster_key("Node", &meta).unwrap(), "n1");
        let err = cluster_key("Node", &ObjectMeta::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Node <unnamed>: metadata.name: required but missing"
        );
    }
}

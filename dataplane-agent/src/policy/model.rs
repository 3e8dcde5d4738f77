//! The validated NetworkPolicy model, and the cluster as policies see it (pods with their
//! labels, IPs and named ports; namespaces with their labels; this node).
//!
//! Defaults are applied here exactly as the API server applies them, so that the compiler
//! and the evaluator never meet an absent field: `policyTypes` (Ingress always, Egress when
//! the spec has egress rules), protocol TCP, empty `podSelector`, and the
//! `kubernetes.io/metadata.name` label of every namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::error::PolicyError;
use super::selector::Selector;
use crate::config::NodeConfig;
use crate::desired::Protocol;
use crate::model::{namespaced_key, ClusterState, Ctx, NamespacedName, Problem};
use crate::model::{ValidationError, DEFAULT_NAMESPACE};

/// The label the API server puts on every namespace, valued with its name.
pub const LABEL_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

const KIND: &str = "NetworkPolicy";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// `PolicyKey::dir`.
    pub fn abi(self) -> u8 {
        match self {
            Direction::Ingress => dataplane_common::policy::DIR_INGRESS,
            Direction::Egress => dataplane_common::policy::DIR_EGRESS,
        }
    }

    /// `Endpoint::flags` bit of isolation in this direction.
    pub fn isolated_flag(self) -> u32 {
        match self {
            Direction::Ingress => dataplane_common::policy::EP_F_INGRESS_ISOLATED,
            Direction::Egress => dataplane_common::policy::EP_F_EGRESS_ISOLATED,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// `ipBlock`: the addresses of `cidr` outside every `except`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    /// Host bits cleared.
    pub cidr: IpNet,
    /// Strict subsets of `cidr`, host bits cleared, sorted and deduplicated.
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        if !self.except.is_empty() {
            let except: Vec<String> = self.except.iter().map(|e| e.to_string()).collect();
            write!(f, " except {}", except.join(", "))?;
        }
        Ok(())
    }
}

/// Which namespaces a pod peer's pods come from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NamespaceScope {
    /// No `namespaceSelector`: the policy's own namespace.
    Only(String),
    /// `namespaceSelector`: every namespace it matches.
    Matching(Selector),
}

/// One `from`/`to` entry. Canonical: equal peers match the same addresses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector` (an absent `podSelector` = every pod).
    Pods {
        namespaces: NamespaceScope,
        pods: Selector,
    },
    IpBlock(IpBlock),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pods { namespaces, pods } => {
                if pods.is_everything() {
                    f.write_str("all pods")?;
                } else {
                    write!(f, "pods with labels {pods}")?;
                }
                match namespaces {
                    NamespaceScope::Only(ns) => write!(f, " in namespace {ns}"),
                    NamespaceScope::Matching(sel) if sel.is_everything() => {
                        f.write_str(" in all namespaces")
                    }
                    NamespaceScope::Matching(sel) => {
                        write!(f, " in namespaces with labels {sel}")
                    }
                }
            }
            Peer::IpBlock(block) => write!(f, "addresses in {block}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// Protocol given, no port: every port of the protocol.
    All,
    /// `port` (and `endPort`): inclusive.
    Range(u16, u16),
    /// A container port name, resolved against the destination pod.
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyPort {
    pub protocol: Protocol,
    pub port: PortMatch,
}

impl fmt::Display for PolicyPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortMatch::All => write!(f, "{} (all ports)", self.protocol),
            PortMatch::Range(lo, hi) if lo == hi => write!(f, "{} {lo}", self.protocol),
            PortMatch::Range(lo, hi) => write!(f, "{} {lo}-{hi}", self.protocol),
            PortMatch::Named(name) => write!(f, "{} port named {name:?}", self.protocol),
        }
    }
}

/// One ingress or egress rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Empty (or absent): every peer, pods and other addresses alike.
    pub peers: Vec<Peer>,
    /// Empty (or absent): every port of every protocol.
    pub ports: Vec<PolicyPort>,
}

/// A validated NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub key: NamespacedName,
    pub pod_selector: Selector,
    /// `Some` when the policy affects ingress (its `policyTypes`, defaults applied): the rules.
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when the policy affects egress.
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// The rules of `dir`, if the policy affects that direction.
    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Validate a NetworkPolicy as the API server would, and apply its defaults.
    pub fn from_k8s(policy: &networking::NetworkPolicy) -> Result<Policy, ValidationError> {
        let key = namespaced_key(KIND, &policy.metadata)?;
        let ctx = Ctx::new(KIND, Some(&key.namespace), Some(&key.name));
        let default_spec = networking::NetworkPolicySpec::default();
        let spec = policy.spec.as_ref().unwrap_or(&default_spec);

        let pod_selector = match &spec.pod_selector {
            Some(sel) => Selector::from_k8s(&ctx, "spec.podSelector", sel)?,
            None => Selector::everything(),
        };
        let mut ingress = Vec::new();
        for (i, r) in spec.ingress.iter().flatten().enumerate() {
            let at = format!("spec.ingress[{i}]");
            ingress.push(Rule {
                peers: peers(
                    &ctx,
                    &key.namespace,
                    &format!("{at}.from"),
                    r.from.as_deref(),
                )?,
                ports: ports(&ctx, &format!("{at}.ports"), r.ports.as_deref())?,
            });
        }
        let mut egress = Vec::new();
        for (i, r) in spec.egress.iter().flatten().enumerate() {
            let at = format!("spec.egress[{i}]");
            egress.push(Rule {
                peers: peers(&ctx, &key.namespace, &format!("{at}.to"), r.to.as_deref())?,
                ports: ports(&ctx, &format!("{at}.ports"), r.ports.as_deref())?,
            });
        }

        // The API's defaulting: an empty or absent list means Ingress, plus Egress when there
        // are egress rules (`len(spec.Egress) != 0`: `egress: []` does not count).
        let types = spec.policy_types.as_deref().unwrap_or_default();
        let (affects_ingress, affects_egress) = if types.is_empty() {
            (true, !egress.is_empty())
        } else {
            let mut seen = (false, false);
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => seen.0 = true,
                    "Egress" => seen.1 = true,
                    other => {
                        return Err(ctx.err(
                            format!("spec.policyTypes[{i}]"),
                            Problem::UnknownValue {
                                value: other.into(),
                                expected: "Ingress or Egress",
                            },
                        ))
                    }
                }
            }
            seen
        };
        Ok(Policy {
            key,
            pod_selector,
            ingress: affects_ingress.then_some(ingress),
            egress: affects_egress.then_some(egress),
        })
    }
}

fn peers(
    ctx: &Ctx,
    namespace: &str,
    field: &str,
    list: Option<&[networking::NetworkPolicyPeer]>,
) -> Result<Vec<Peer>, ValidationError> {
    let mut out = Vec::new();
    for (i, p) in list.unwrap_or_default().iter().enumerate() {
        let at = format!("{field}[{i}]");
        let selectors = p.pod_selector.is_some() || p.namespace_selector.is_some();
        let peer = match (&p.ip_block, selectors) {
            (None, false) => {
                return Err(ctx.err(at, Problem::Constraint("must specify a peer")));
            }
            (Some(_), true) => {
                return Err(ctx.err(
                    at,
                    Problem::Constraint(
                        "may not specify ipBlock together with podSelector or namespaceSelector",
                    ),
                ));
            }
            (Some(block), false) => Peer::IpBlock(ip_block(ctx, &format!("{at}.ipBlock"), block)?),
            (None, true) => {
                let pods = match &p.pod_selector {
                    Some(sel) => Selector::from_k8s(ctx, &format!("{at}.podSelector"), sel)?,
                    None => Selector::everything(),
                };
                let namespaces = match &p.namespace_selector {
                    Some(sel) => NamespaceScope::Matching(Selector::from_k8s(
                        ctx,
                        &format!("{at}.namespaceSelector"),
                        sel,
                    )?),
                    None => NamespaceScope::Only(namespace.to_string()),
                };
                Peer::Pods { namespaces, pods }
            }
        };
        out.push(peer);
    }
    Ok(out)
}

fn ip_block(
    ctx: &Ctx,
    field: &str,
    block: &networking::IPBlock,
) -> Result<IpBlock, ValidationError> {
    let cidr = cidr(ctx, &format!("{field}.cidr"), &block.cidr)?;
    let mut except = BTreeSet::new();
    for (i, s) in block.except.iter().flatten().enumerate() {
        let at = format!("{field}.except[{i}]");
        let e = self::cidr(ctx, &at, s)?;
        if !cidr.contains(&e) || e.prefix_len() <= cidr.prefix_len() {
            return Err(ctx.err(
                at,
                Problem::InvalidValue {
                    value: s.clone(),
                    reason: format!("must be a strict subset of cidr {cidr}"),
                },
            ));
        }
        except.insert(e);
    }
    Ok(IpBlock {
        cidr,
        except: except.into_iter().collect(),
    })
}

fn cidr(ctx: &Ctx, field: &str, s: &str) -> Result<IpNet, ValidationError> {
    let net: IpNet = s
        .parse()
        .map_err(|_| ctx.err(field, Problem::InvalidCidr(s.to_string())))?;
    // The datapath keys IPv4 as IPv4-mapped IPv6; such an IPv6 prefix would alias IPv4.
    if let IpNet::V6(v6) = net {
        if v6.addr().to_ipv4_mapped().is_some() && v6.prefix_len() >= 96 {
            return Err(ctx.err(
                field,
                Problem::InvalidValue {
                    value: s.to_string(),
                    reason: "is IPv4-mapped IPv6; write the IPv4 CIDR instead".into(),
                },
            ));
        }
    }
    Ok(net.trunc())
}

fn ports(
    ctx: &Ctx,
    field: &str,
    list: Option<&[networking::NetworkPolicyPort]>,
) -> Result<Vec<PolicyPort>, ValidationError> {
    let mut out = Vec::new();
    for (i, p) in list.unwrap_or_default().iter().enumerate() {
        let at = format!("{field}[{i}]");
        let protocol = ctx.protocol(format!("{at}.protocol"), p.protocol.as_deref())?;
        let port = match (&p.port, p.end_port) {
            (None, None) => PortMatch::All,
            (None, Some(_)) | (Some(IntOrString::String(_)), Some(_)) => {
                return Err(ctx.err(
                    format!("{at}.endPort"),
                    Problem::Constraint("may only be used with a numeric port"),
                ))
            }
            (Some(IntOrString::Int(n)), end) => {
                let lo = ctx.port(format!("{at}.port"), *n)?;
                let hi = match end {
                    None => lo,
                    Some(e) => {
                        let hi = ctx.port(format!("{at}.endPort"), e)?;
                        if hi < lo {
                            return Err(ctx.err(
                                format!("{at}.endPort"),
                                Problem::Constraint("must be greater than or equal to port"),
                            ));
                        }
                        hi
                    }
                };
                PortMatch::Range(lo, hi)
            }
            (Some(IntOrString::String(name)), None) => {
                if !is_port_name(name) {
                    return Err(ctx.err(
                        format!("{at}.port"),
                        Problem::InvalidValue {
                            value: name.clone(),
                            reason: "is not a port number or a port name (IANA_SVC_NAME: 1-15 \
                                     of a-z, 0-9, '-', with a letter, no '-' at the ends or \
                                     twice in a row)"
                                .into(),
                        },
                    ));
                }
                PortMatch::Named(name.clone())
            }
        };
        out.push(PolicyPort { protocol, port });
    }
    Ok(out)
}

/// IANA_SVC_NAME, what the API accepts as a port name.
fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

// ---------------------------------------------------------------------------------------------
// Pods and namespaces

/// A live pod as policies see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub key: NamespacedName,
    pub labels: BTreeMap<String, String>,
    /// Valid, deduplicated, IPv4-mapped IPv6 written as IPv4. Empty until the pod has IPs.
    pub ips: Vec<IpAddr>,
    pub node_name: Option<String>,
    /// Not subject to policy and not a pod peer: its IPs are its node's.
    pub host_network: bool,
    /// Container port name -> (protocol, number): containers, then sidecar init containers.
    pub named_ports: BTreeMap<String, (Protocol, u16)>,
}

impl PodInfo {
    /// The pod as policies see it; `None` when it is gone (phase Succeeded or Failed).
    /// Unusable fields are reported in `errors` and left out.
    pub fn from_k8s(
        key: &NamespacedName,
        pod: &core::Pod,
        errors: &mut Vec<PolicyError>,
    ) -> Option<PodInfo> {
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return None;
        }
        let mut bad = |field: String, problem: String| {
            errors.push(PolicyError::InvalidPod {
                pod: key.clone(),
                field,
                problem,
            })
        };

        let mut ips = Vec::new();
        let listed: Vec<(String, &str)> = match status.and_then(|s| s.pod_ips.as_deref()) {
            Some(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("status.podIPs[{i}]"), p.ip.as_str()))
                .collect(),
            _ => status
                .and_then(|s| s.pod_ip.as_deref())
                .filter(|s| !s.is_empty())
                .map(|s| vec![("status.podIP".to_string(), s)])
                .unwrap_or_default(),
        };
        for (field, s) in listed {
            match s.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip.to_canonical()) => ips.push(ip.to_canonical()),
                Ok(_) => {}
                Err(_) => bad(field, format!("{s:?} is not an IP address")),
            }
        }

        let spec = pod.spec.as_ref();
        let mut named_ports = BTreeMap::new();
        let containers = spec.into_iter().flat_map(|s| {
            let sidecars = s
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            s.containers.iter().chain(sidecars)
        });
        for c in containers {
            for (i, p) in c.ports.iter().flatten().enumerate() {
                let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let field = format!("container {}: ports[{i}]", c.name);
                let Some(protocol) = Protocol::from_k8s(p.protocol.as_deref()) else {
                    bad(field, format!("unknown protocol {:?}", p.protocol));
                    continue;
                };
                let Ok(number) = u16::try_from(p.container_port)
                    .map_err(|_| ())
                    .and_then(|n| if n == 0 { Err(()) } else { Ok(n) })
                else {
                    bad(field, format!("port {} out of range", p.container_port));
                    continue;
                };
                named_ports
                    .entry(name.to_string())
                    .or_insert((protocol, number));
            }
        }

        Some(PodInfo {
            key: key.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            node_name: spec.and_then(|s| s.node_name.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            named_ports,
        })
    }

    /// The number of the named port `name` if its protocol is `protocol`.
    pub fn resolve(&self, name: &str, protocol: Protocol) -> Option<u16> {
        match self.named_ports.get(name) {
            Some(&(p, n)) if p == protocol => Some(n),
            _ => None,
        }
    }
}

/// The cluster as NetworkPolicy sees it, from one node.
#[derive(Clone, Debug, Default)]
pub struct PolicyModel {
    pub node_name: String,
    pub node_ips: BTreeSet<IpAddr>,
    /// Valid policies only (invalid ones are in `errors`).
    pub policies: BTreeMap<NamespacedName, Policy>,
    /// Live pods, hostNetwork ones included.
    pub pods: BTreeMap<NamespacedName, PodInfo>,
    /// Namespace -> labels (with `kubernetes.io/metadata.name`). A namespace that only pods or
    /// policies name, without a Namespace object, has just that label.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub errors: Vec<PolicyError>,
    /// Pod IP -> pod (not hostNetwork pods).
    by_ip: BTreeMap<IpAddr, NamespacedName>,
}

impl PolicyModel {
    pub fn new(state: &ClusterState, config: &NodeConfig) -> PolicyModel {
        let mut errors = Vec::new();
        let mut policies = BTreeMap::new();
        for np in state.network_policies.values() {
            match Policy::from_k8s(np) {
                Ok(p) => {
                    policies.insert(p.key.clone(), p);
                }
                Err(e) => errors.push(PolicyError::InvalidPolicy(e)),
            }
        }

        let mut pods = BTreeMap::new();
        let mut by_ip: BTreeMap<IpAddr, NamespacedName> = BTreeMap::new();
        for pod in state.pods.values() {
            // Key by the object itself: a state built by hand may key it differently.
            let Ok(key) = namespaced_key("Pod", &pod.metadata) else {
                continue;
            };
            let Some(mut info) = PodInfo::from_k8s(&key, pod, &mut errors) else {
                continue;
            };
            if !info.host_network {
                info.ips.retain(|ip| match by_ip.get(ip) {
                    Some(first) => {
                        errors.push(PolicyError::DuplicateIp {
                            ip: *ip,
                            first: first.clone(),
                            second: key.clone(),
                        });
                        false
                    }
                    None => {
                        by_ip.insert(*ip, key.clone());
                        true
                    }
                });
            }
            pods.insert(key, info);
        }

        let mut namespaces = BTreeMap::new();
        for (name, ns) in &state.namespaces {
            let mut labels = ns.metadata.labels.clone().unwrap_or_default();
            // The API server sets (and keeps) this label on every namespace.
            labels.insert(LABEL_NAMESPACE_NAME.to_string(), name.clone());
            namespaces.insert(name.clone(), labels);
        }
        let named = pods
            .keys()
            .chain(policies.keys())
            .map(|k: &NamespacedName| k.namespace.clone());
        for name in named.chain([DEFAULT_NAMESPACE.to_string()]) {
            namespaces.entry(name.clone()).or_insert_with(|| {
                BTreeMap::from([(LABEL_NAMESPACE_NAME.to_string(), name.clone())])
            });
        }

        PolicyModel {
            node_name: config.node_name.clone(),
            node_ips: config.node_ips.iter().map(|ip| ip.to_canonical()).collect(),
            policies,
            pods,
            namespaces,
            errors,
            by_ip,
        }
    }

    /// The (non-hostNetwork) pod with `ip`.
    pub fn pod_at(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.by_ip
            .get(&ip.to_canonical())
            .and_then(|key| self.pods.get(key))
    }

    /// Every (non-hostNetwork) pod IP.
    pub fn pod_ips(&self) -> impl Iterator<Item = (IpAddr, &PodInfo)> {
        self.by_ip.iter().map(|(ip, key)| (*ip, &self.pods[key]))
    }

    /// Whether `pod` is on this node and subject to policy. A pod with addresses but no
    /// `nodeName` only exists in a hand-written manifests directory (the API server's pods
    /// get their node before their IPs): it is taken as this node's.
    pub fn is_local(&self, pod: &PodInfo) -> bool {
        !pod.host_network
            && pod
                .node_name
                .as_deref()
                .is_none_or(|n| n == self.node_name.as_str())
    }

    pub fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace)
    }

    /// Policies of `namespace`, in name order.
    pub fn policies_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Policy> {
        self.policies
            .range(NamespacedName::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == namespace)
            .map(|(_, p)| p)
    }

    /// Pods of `namespace`, in name order.
    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a PodInfo> {
        self.pods
            .range(NamespacedName::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == namespace)
            .map(|(_, p)| p)
    }

    /// The policies that select `pod` for `dir` (none for hostNetwork pods).
    pub fn selecting<'a>(
        &'a self,
        pod: &'a PodInfo,
        dir: Direction,
    ) -> impl Iterator<Item = &'a Policy> {
        self.policies_in(&pod.key.namespace).filter(move |p| {
            !pod.host_network && p.rules(dir).is_some() && p.pod_selector.matches(&pod.labels)
        })
    }

    /// Whether pods of namespace `ns` are in `scope`.
    pub fn in_scope(&self, scope: &NamespaceScope, ns: &str) -> bool {
        match scope {
            NamespaceScope::Only(only) => only == ns,
            NamespaceScope::Matching(sel) => {
                self.namespace_labels(ns).is_some_and(|l| sel.matches(l))
            }
        }
    }

    /// Whether the pod peer `peer` matches `pod` (false for ipBlocks and hostNetwork pods).
    pub fn peer_matches_pod(&self, peer: &Peer, pod: &PodInfo) -> bool {
        match peer {
            Peer::Pods { namespaces, pods } => {
                !pod.host_network
                    && self.in_scope(namespaces, &pod.key.namespace)
                    && pods.matches(&pod.labels)
            }
            Peer::IpBlock(_) => false,
        }
    }

    /// Whether `peer` matches traffic from or to `ip`.
    pub fn peer_matches_ip(&self, peer: &Peer, ip: IpAddr) -> bool {
        match peer {
            Peer::Pods { .. } => self
                .pod_at(ip)
                .is_some_and(|pod| self.peer_matches_pod(peer, pod)),
            Peer::IpBlock(block) => block.contains(ip.to_canonical()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<Policy, ValidationError> {
        Policy::from_k8s(&serde_yaml::from_str(yaml).unwrap())
    }

    fn spec(spec: &str) -> Result<Policy, ValidationError> {
        policy(&format!(
            "metadata: {{name: p, namespace: x}}\nspec: {spec}\n"
        ))
    }

    #[test]
    fn policy_types_default_as_the_api_documents() {
        // Nothing: ingress only (deny all ingress).
        let p = spec("{podSelector: {}}").unwrap();
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress, None);
        // Egress rules present: both.
        let p = spec("{egress: [{}]}").unwrap();
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress, Some(vec![Rule::default()]));
        // An empty egress list is not "egress rules".
        let p = spec("{egress: []}").unwrap();
        assert_eq!(p.egress, None);
        // Empty policyTypes defaults too.
        let p = spec("{policyTypes: [], egress: [{}]}").unwrap();
        assert!(p.ingress.is_some() && p.egress.is_some());
        // Explicit: only what is listed, rules of the other direction ignored.
        let p = spec("{policyTypes: [Egress], ingress: [{}]}").unwrap();
        assert_eq!(p.ingress, None);
        assert_eq!(p.egress, Some(vec![]));
        let p = spec("{policyTypes: [Ingress, Egress]}").unwrap();
        assert!(p.ingress.is_some() && p.egress.is_some());
        // No spec at all: what the API server would store (select all, deny ingress).
        let p = policy("metadata: {name: p}").unwrap();
        assert_eq!(p.key, NamespacedName::new("default", "p"));
        assert!(p.pod_selector.is_everything());
        assert_eq!(p.ingress, Some(vec![]));
    }

    #[test]
    fn peers_are_resolved_against_the_policy_namespace() {
        let p = spec(
            "{ingress: [{from: [{podSelector: {matchLabels: {a: b}}}, \
             {namespaceSelector: {}}, \
             {namespaceSelector: {matchLabels: {t: u}}, podSelector: {matchLabels: {a: b}}}, \
             {ipBlock: {cidr: 10.1.2.3/16, except: [10.1.1.0/24, 10.1.1.0/24]}}]}]}",
        )
        .unwrap();
        let peers = &p.ingress.as_ref().unwrap()[0].peers;
        let ab: Selector = Selector::from_k8s(
            &Ctx::new(KIND, None, None),
            "",
            &serde_yaml::from_str("{matchLabels: {a: b}}").unwrap(),
        )
        .unwrap();
        assert_eq!(
            peers[0],
            Peer::Pods {
                namespaces: NamespaceScope::Only("x".into()),
                pods: ab.clone()
            }
        );
        assert_eq!(
            peers[1],
            Peer::Pods {
                namespaces: NamespaceScope::Matching(Selector::everything()),
                pods: Selector::everything()
            }
        );
        assert!(
            matches!(&peers[2], Peer::Pods { namespaces: NamespaceScope::Matching(s), pods } if !s.is_everything() && *pods == ab)
        );
        assert_eq!(
            peers[3],
            Peer::IpBlock(IpBlock {
                cidr: "10.1.0.0/16".parse().unwrap(),
                except: vec!["10.1.1.0/24".parse().unwrap()],
            })
        );
        assert_eq!(
            peers[2].to_string(),
            "pods with labels a=b in namespaces with labels t=u"
        );
        assert_eq!(
            peers[3].to_string(),
            "addresses in 10.1.0.0/16 except 10.1.1.0/24"
        );
    }

    #[test]
    fn ports_default_and_validate() {
        let p = spec(
            "{ingress: [{ports: [{port: 80}, {protocol: UDP}, {port: http, protocol: SCTP}, \
             {port: 8000, endPort: 8080}]}]}",
        )
        .unwrap();
        let ports = &p.ingress.as_ref().unwrap()[0].ports;
        assert_eq!(
            ports,
            &vec![
                PolicyPort {
                    protocol: Protocol::Tcp,
                    port: PortMatch::Range(80, 80)
                },
                PolicyPort {
                    protocol: Protocol::Udp,
                    port: PortMatch::All
                },
                PolicyPort {
                    protocol: Protocol::Sctp,
                    port: PortMatch::Named("http".into())
                },
                PolicyPort {
                    protocol: Protocol::Tcp,
                    port: PortMatch::Range(8000, 8080)
                },
            ]
        );
    }

    #[test]
    fn invalid_policies_name_policy_and_field() {
        let check = |s: &str, field: &str| {
            let err = spec(s).unwrap_err();
            assert_eq!(err.kind, "NetworkPolicy");
            assert_eq!(err.object, "x/p");
            assert_eq!(err.field, field, "{s}");
            assert!(
                err.to_string()
                    .starts_with(&format!("NetworkPolicy x/p: {field}: ")),
                "{err}"
            );
        };
        check("{policyTypes: [Ingress, Sideways]}", "spec.policyTypes[1]");
        check(
            "{podSelector: {matchExpressions: [{key: a, operator: Has}]}}",
            "spec.podSelector.matchExpressions[0].operator",
        );
        check(
            "{ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: a, operator: In}]}}]}]}",
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
        );
        check("{ingress: [{from: [{}]}]}", "spec.ingress[0].from[0]");
        check(
            "{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
            "spec.egress[0].to[0]",
        );
        check(
            "{egress: [{}, {to: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
            "spec.egress[1].to[0].ipBlock.cidr",
        );
        check(
            "{egress: [{to: [{ipBlock: {cidr: 10.0.0.1}}]}]}",
            "spec.egress[0].to[0].ipBlock.cidr",
        );
        check(
            "{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]}",
            "spec.egress[0].to[0].ipBlock.except[0]",
        );
        check(
            "{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}]}",
            "spec.egress[0].to[0].ipBlock.except[0]",
        );
        check(
            "{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: ['fd00::/64']}}]}]}",
            "spec.egress[0].to[0].ipBlock.except[0]",
        );
        check(
            "{egress: [{to: [{ipBlock: {cidr: '::ffff:10.0.0.0/104'}}]}]}",
            "spec.egress[0].to[0].ipBlock.cidr",
        );
        check(
            "{ingress: [{ports: [{port: 80, protocol: ICMP}]}]}",
            "spec.ingress[0].ports[0].protocol",
        );
        check(
            "{ingress: [{ports: [{port: 0}]}]}",
            "spec.ingress[0].ports[0].port",
        );
        check(
            "{ingress: [{ports: [{port: 65536}]}]}",
            "spec.ingress[0].ports[0].port",
        );
        check(
            "{ingress: [{ports: [{port: 90, endPort: 80}]}]}",
            "spec.ingress[0].ports[0].endPort",
        );
        check(
            "{ingress: [{ports: [{port: http, endPort: 80}]}]}",
            "spec.ingress[0].ports[0].endPort",
        );
        check(
            "{ingress: [{ports: [{endPort: 80}]}]}",
            "spec.ingress[0].ports[0].endPort",
        );
        check(
            "{ingress: [{ports: [{port: HTTP}]}]}",
            "spec.ingress[0].ports[0].port",
        );
        check(
            "{ingress: [{ports: [{port: 'a--b'}]}]}",
            "spec.ingress[0].ports[0].port",
        );
        // Rules of an unaffected direction are validated too, as the API server does.
        check(
            "{policyTypes: [Egress], ingress: [{ports: [{port: 0}]}]}",
            "spec.ingress[0].ports[0].port",
        );
    }

    #[test]
    fn port_names() {
        for ok in ["http", "h2", "a-b", "dns-tcp", "abcdefghijklmno"] {
            assert!(is_port_name(ok), "{ok}");
        }
        for bad in [
            "",
            "80",
            "-a",
            "a-",
            "a--b",
            "Http",
            "abcdefghijklmnop",
            "a_b",
        ] {
            assert!(!is_port_name(bad), "{bad}");
        }
    }

    fn pod(yaml: &str) -> (Option<PodInfo>, Vec<PolicyError>) {
        let pod: core::Pod = serde_yaml::from_str(yaml).unwrap();
        let key = namespaced_key("Pod", &pod.metadata).unwrap();
        let mut errors = Vec::new();
        (PodInfo::from_k8s(&key, &pod, &mut errors), errors)
    }

    #[test]
    fn pod_fields() {
        let (p, errors) = pod(
            "metadata: {name: a, namespace: x, labels: {pod: a}}\n\
             spec:\n\
             \x20 nodeName: n1\n\
             \x20 containers:\n\
             \x20 - {name: c, ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 53, protocol: UDP}, {containerPort: 9}]}\n\
             \x20 - {name: d, ports: [{name: http, containerPort: 8080}]}\n\
             \x20 initContainers:\n\
             \x20 - {name: side, restartPolicy: Always, ports: [{name: metrics, containerPort: 9090}]}\n\
             \x20 - {name: init, ports: [{name: setup, containerPort: 7070}]}\n\
             status: {phase: Running, podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}, {ip: '::ffff:10.0.0.1'}]}\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let p = p.unwrap();
        assert_eq!(
            p.ips,
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
        assert_eq!(p.node_name.as_deref(), Some("n1"));
        assert!(!p.host_network);
        assert_eq!(p.resolve("http", Protocol::Tcp), Some(80));
        assert_eq!(p.resolve("http", Protocol::Udp), None);
        assert_eq!(p.resolve("dns", Protocol::Udp), Some(53));
        assert_eq!(p.resolve("metrics", Protocol::Tcp), Some(9090));
        assert_eq!(p.resolve("setup", Protocol::Tcp), None);
    }

    #[test]
    fn pod_ip_fallback_gone_pods_and_bad_fields() {
        let (p, _) = pod("metadata: {name: a}\nstatus: {podIP: 10.0.0.2}\n");
        assert_eq!(p.unwrap().ips, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
        let (p, _) = pod("metadata: {name: a}\nstatus: {}\n");
        assert!(p.unwrap().ips.is_empty());
        for phase in ["Succeeded", "Failed"] {
            let (p, _) = pod(&format!(
                "metadata: {{name: a}}\nstatus: {{phase: {phase}, podIP: 10.0.0.2}}\n"
            ));
            assert!(p.is_none(), "{phase}");
        }
        let (p, errors) = pod(
            "metadata: {name: a}\nspec: {hostNetwork: true, containers: [{name: c, ports: [{name: x, containerPort: 70000}, {name: y, containerPort: 1, protocol: ICMP}]}]}\nstatus: {podIPs: [{ip: 10.0.0.300}, {ip: 10.0.0.3}]}\n",
        );
        let p = p.unwrap();
        assert!(p.host_network);
        assert_eq!(p.ips, vec!["10.0.0.3".parse::<IpAddr>().unwrap()]);
        assert!(p.named_ports.is_empty());
        let msgs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(
            msgs[0].starts_with("Pod default/a: status.podIPs[0]"),
            "{msgs:?}"
        );
    }

    fn state(objects: &[&str]) -> ClusterState {
        let mut state = ClusterState::default();
        for yaml in objects {
            let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
            match v["kind"].as_str().unwrap() {
                "Pod" => {
                    let p: core::Pod = serde_yaml::from_value(v).unwrap();
                    state
                        .pods
                        .insert(namespaced_key("Pod", &p.metadata).unwrap(), p.into());
                }
                "Namespace" => {
                    let n: core::Namespace = serde_yaml::from_value(v).unwrap();
                    state
                        .namespaces
                        .insert(n.metadata.name.clone().unwrap(), n.into());
                }
                other => panic!("{other}"),
            }
        }
        state
    }

    #[test]
    fn model_namespaces_and_duplicate_ips() {
        let config =
            NodeConfig::from_yaml_str("nodeName: n1\nnodeIPs: [192.0.2.1]\n", "t").unwrap();
        let s = state(&[
            "kind: Namespace\nmetadata: {name: x, labels: {team: a, kubernetes.io/metadata.name: wrong}}",
            "kind: Pod\nmetadata: {name: a, namespace: y}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.0.1}",
            "kind: Pod\nmetadata: {name: b, namespace: y}\nspec: {nodeName: n2}\nstatus: {podIP: 10.0.0.1}",
            "kind: Pod\nmetadata: {name: h, namespace: y}\nspec: {nodeName: n1, hostNetwork: true}\nstatus: {podIP: 192.0.2.1}",
        ]);
        let m = PolicyModel::new(&s, &config);
        assert_eq!(m.namespaces["x"]["kubernetes.io/metadata.name"], "x");
        assert_eq!(m.namespaces["x"]["team"], "a");
        // y has no Namespace object: just the automatic label.
        assert_eq!(
            m.namespaces["y"],
            BTreeMap::from([(LABEL_NAMESPACE_NAME.to_string(), "y".to_string())])
        );
        assert_eq!(
            m.errors,
            vec![PolicyError::DuplicateIp {
                ip: "10.0.0.1".parse().unwrap(),
                first: NamespacedName::new("y", "a"),
                second: NamespacedName::new("y", "b"),
            }]
        );
        let a = m.pod_at("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(a.key.name, "a");
        assert!(m.is_local(a));
        assert!(m.pods[&NamespacedName::new("y", "b")].ips.is_empty());
        // hostNetwork pods are not pod peers.
        assert!(m.pod_at("192.0.2.1".parse().unwrap()).is_none());
        assert!(!m.is_local(&m.pods[&NamespacedName::new("y", "h")]));
    }
}

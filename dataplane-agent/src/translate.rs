//! The pure translation from cluster objects to desired map contents, following kube-proxy's
//! rules. Only ClusterIP frontends for now.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use tracing::{debug, warn};

use crate::config::NodeConfig;
use crate::desired::{
    BackendAddr, DesiredState, ExternalEntry, Frontend, FrontendEntry, HealthCheck, Masquerade,
    ServicePortRef,
};
use crate::maglev::LbAlgorithm;
use crate::model::{
    ClusterIps, ClusterState, Endpoint, EndpointConditions, EndpointSlice, IpFamily,
    NamespacedName, Service, ServicePort, ServiceType, SessionAffinity, TrafficPolicy,
    LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME,
};

/// What the service maps should hold for `state` on the node `config` describes.
pub fn translate(state: &ClusterState, config: &NodeConfig) -> DesiredState {
    let slices = slices_by_service(state);
    let mut desired = DesiredState {
        service_cidrs: config.service_cidrs.clone().unwrap_or_default(),
        masquerade_ips: masquerade_ips(config),
        cluster_cidrs: config.cluster_cidrs.clone(),
        ..DesiredState::default()
    };
    // kube-proxy: `masqueradeAll` masquerades all ClusterIP traffic; otherwise sources
    // outside `clusterCIDRs`, unless there are none (its no-op local detector: nothing).
    let cluster_ip_masq = if config.masquerade_all {
        Some(Masquerade::Always)
    } else if !config.cluster_cidrs.is_empty() {
        Some(Masquerade::OffCluster)
    } else {
        None
    };
    for svc in state.services.values() {
        let ips = match cluster_ips_to_proxy(svc) {
            Ok(ips) => ips,
            Err(reason) => {
                debug!(service = %svc.key(), reason, "not proxied");
                continue;
            }
        };
        desired.cluster_ips.extend(ips.iter().copied());
        let svc_slices = slices
            .get(&svc.key())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let affinity = match svc.session_affinity {
            SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
            SessionAffinity::None => None,
        };
        for port in &svc.ports {
            let service = ServicePortRef {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
                port_name: port.name.clone(),
            };
            for &addr in ips {
                let family = IpFamily::of(&addr);
                let candidates = port_endpoints(svc_slices, port, family);
                desired.local_endpoints.extend(
                    candidates
                        .iter()
                        .filter(|pe| {
                            pe.endpoint.node_name.as_deref() == Some(config.node_name.as_str())
                        })
                        .map(|pe| pe.backend.addr),
                );
                let backends = cluster_ip_backends(svc, &candidates, config);
                let any = usable(&candidates, None);
                let frontend = Frontend {
                    addr,
                    port: port.port,
                    proto: port.protocol,
                };
                if backends.is_empty() && !any.is_empty() {
                    desired.drop_when_empty.insert(frontend);
                }
                if let Some(m) = cluster_ip_masq {
                    if !desired.frontends.contains_key(&frontend) {
                        desired.masquerade.insert(frontend, m);
                    }
                }
                insert(&mut desired, frontend, service.clone(), backends, affinity);
                external_frontends(
                    &mut desired,
                    svc,
                    port,
                    family,
                    &service,
                    &candidates,
                    any,
                    affinity,
                    config,
                );
            }
        }
        if let Some(hc) = health_check(svc, svc_slices, config) {
            desired.health_checks.insert(hc.0, hc.1);
        }
    }
    mark_maglev(&mut desired, state, config);
    desired
}

/// The first node IP of each family: what masqueraded traffic leaves with.
fn masquerade_ips(config: &NodeConfig) -> Vec<IpAddr> {
    let v4 = config.node_ips.iter().find(|ip| ip.is_ipv4());
    let v6 = config.node_ips.iter().find(|ip| ip.is_ipv6());
    v4.into_iter().chain(v6).copied().collect()
}

/// Every frontend (both scopes) of a service balanced by Maglev: its annotation, else the
/// node's `loadBalancing`.
fn mark_maglev(desired: &mut DesiredState, state: &ClusterState, config: &NodeConfig) {
    let maglev: BTreeSet<(&str, &str)> = state
        .services
        .values()
        .filter(|s| s.lb_algorithm.unwrap_or(config.load_balancing) == LbAlgorithm::Maglev)
        .map(|s| (s.namespace.as_str(), s.name.as_str()))
        .collect();
    for (fe, entry) in &desired.frontends {
        let svc = (
            entry.service.namespace.as_str(),
            entry.service.name.as_str(),
        );
        if maglev.contains(&svc) {
            desired.maglev.insert(*fe, config.maglev_table_size);
        }
    }
}

/// The addresses external traffic reaches `port` of `svc` at, in one family: NodePort on
/// every `nodePortAddresses` node IP, `externalIPs` and LoadBalancer ingress IPs at the
/// Service port.
fn external_addresses(
    svc: &Service,
    port: &ServicePort,
    family: IpFamily,
    config: &NodeConfig,
) -> Vec<Frontend> {
    let mut out = Vec::new();
    let of_family = |ip: &IpAddr| IpFamily::of(ip) == family;
    if let Some(node_port) = port.node_port {
        for ip in config
            .node_port_addresses()
            .iter()
            .filter(|ip| of_family(ip))
        {
            out.push(Frontend {
                addr: *ip,
                port: node_port,
                proto: port.protocol,
            });
        }
    }
    let lb = if svc.type_ == ServiceType::LoadBalancer {
        svc.load_balancer_ips.as_slice()
    } else {
        &[]
    };
    for ip in svc.external_ips.iter().chain(lb).filter(|ip| of_family(ip)) {
        out.push(Frontend {
            addr: *ip,
            port: port.port,
            proto: port.protocol,
        });
    }
    out
}

/// The external frontends of one Service port in one family. Pods and the node reach them
/// like the ClusterIP but with every endpoint of the cluster (kube-proxy's short-circuit of
/// `externalTrafficPolicy: Local` for cluster traffic, and eTP=Cluster ignores
/// internalTrafficPolicy); traffic from outside gets an external-scope entry of this node's
/// endpoints when the policy is Local.
#[allow(clippy::too_many_arguments)]
fn external_frontends(
    desired: &mut DesiredState,
    svc: &Service,
    port: &ServicePort,
    family: IpFamily,
    service: &ServicePortRef,
    candidates: &[PortEndpoint<'_>],
    all: Vec<BackendAddr>,
    affinity: Option<u32>,
    config: &NodeConfig,
) {
    let frontends = external_addresses(svc, port, family, config);
    if frontends.is_empty() {
        return;
    }
    let local = (svc.external_traffic_policy == TrafficPolicy::Local)
        .then(|| usable(candidates, Some(&config.node_name)));
    let ranges: Vec<IpNet> = svc
        .load_balancer_source_ranges
        .iter()
        .filter(|n| IpFamily::of(&n.addr()) == family)
        .copied()
        .collect();
    for fe in frontends {
        if desired.frontends.contains_key(&fe) {
            // Another service holds this address and port (the first one keeps it).
            insert(desired, fe, service.clone(), all.clone(), affinity);
            continue;
        }
        insert(desired, fe, service.clone(), all.clone(), affinity);
        // kube-proxy masquerades all external traffic of a Cluster policy (it may cross
        // nodes); a Local policy keeps the client's address.
        if local.is_none() {
            desired.masquerade.insert(fe, Masquerade::Always);
        }
        if let Some(local) = &local {
            desired.external.insert(
                fe,
                ExternalEntry {
                    backends: local.clone(),
                    drop_when_empty: local.is_empty() && !all.is_empty(),
                },
            );
        }
        let is_lb_ip = svc.type_ == ServiceType::LoadBalancer
            && svc.load_balancer_ips.contains(&fe.addr)
            && fe.port == port.port;
        // As kube-proxy's per-family proxiers: ranges only of the other family leave this
        // family's LoadBalancer IPs open.
        if is_lb_ip && !ranges.is_empty() {
            desired.source_ranges.insert(fe, ranges.clone());
        }
    }
}

/// kube-proxy's health check for a LoadBalancer Service with `externalTrafficPolicy:
/// Local`: its `healthCheckNodePort` and the number of distinct ready endpoints on this node
/// (counted per family, as kube-proxy's per-family proxiers do; the larger count wins).
fn health_check(
    svc: &Service,
    slices: &[&EndpointSlice],
    config: &NodeConfig,
) -> Option<(u16, HealthCheck)> {
    if svc.type_ != ServiceType::LoadBalancer || svc.external_traffic_policy != TrafficPolicy::Local
    {
        return None;
    }
    let port = svc.health_check_node_port?;
    let count = |family: IpFamily| {
        let mut ips = BTreeSet::new();
        for p in &svc.ports {
            for pe in port_endpoints(slices, p, family) {
                let local = pe.endpoint.node_name.as_deref() == Some(config.node_name.as_str());
                if local && pe.endpoint.conditions.ready {
                    ips.insert(pe.backend.addr);
                }
            }
        }
        ips.len()
    };
    Some((
        port,
        HealthCheck {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
            local_endpoints: count(IpFamily::V4).max(count(IpFamily::V6)),
        },
    ))
}

/// The cluster IPs kube-proxy would program for `svc`, or why it would not.
fn cluster_ips_to_proxy(svc: &Service) -> Result<&[std::net::IpAddr], &'static str> {
    if svc.labels.contains_key(LABEL_SERVICE_PROXY_NAME) {
        return Err("labelled for another service proxy");
    }
    if svc.labels.contains_key(LABEL_HEADLESS) {
        return Err("labelled headless");
    }
    if svc.type_ == ServiceType::ExternalName {
        return Err("ExternalName");
    }
    match &svc.cluster_ips {
        ClusterIps::Ips(ips) => Ok(ips),
        ClusterIps::Headless => Err("headless"),
        ClusterIps::Unallocated => Err("no cluster IP"),
    }
}

/// EndpointSlices by the Service they belong to. Like kube-proxy, slices carrying the
/// headless or service-proxy-name label are not watched at all.
fn slices_by_service(state: &ClusterState) -> BTreeMap<NamespacedName, Vec<&EndpointSlice>> {
    let mut index: BTreeMap<NamespacedName, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in state.endpoint_slices.values() {
        if slice.labels.contains_key(LABEL_SERVICE_PROXY_NAME)
            || slice.labels.contains_key(LABEL_HEADLESS)
        {
            continue;
        }
        if let Some(service) = &slice.service_name {
            index
                .entry(NamespacedName::new(&slice.namespace, service))
                .or_default()
                .push(slice);
        }
    }
    index
}

/// An endpoint of one Service port, with the port resolved.
#[derive(Clone, Debug)]
struct PortEndpoint<'a> {
    backend: BackendAddr,
    endpoint: &'a Endpoint,
}

/// The endpoints of `port` in `family`: from each slice of that family, the slice port of the
/// same name and protocol gives the backend port (the EndpointSlice controller has already
/// resolved named target ports, per pod; kube-proxy never reads targetPort).
fn port_endpoints<'a>(
    slices: &[&'a EndpointSlice],
    port: &ServicePort,
    family: IpFamily,
) -> Vec<PortEndpoint<'a>> {
    let mut out = Vec::new();
    for slice in slices {
        if slice.address_type.family() != Some(family) {
            continue;
        }
        let slice_port = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol);
        // A port without a number is unrestricted, which a proxy cannot use.
        let Some(target) = slice_port.and_then(|p| p.port) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // Only the first address has a meaning (see model::Endpoint::addresses).
            let Some(&addr) = endpoint.addresses.first() else {
                continue;
            };
            out.push(PortEndpoint {
                backend: BackendAddr {
                    addr,
                    port: target,
                    proto: port.protocol,
                },
                endpoint,
            });
        }
    }
    out
}

/// How an endpoint may be used, in kube-proxy's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Usability {
    /// Takes new connections.
    Ready,
    /// Shutting down but still serving: kube-proxy's fallback when a Service port has no
    /// ready endpoint at all (so that a rolling update of every pod does not black-hole it).
    ServingTerminating,
    Unusable,
}

fn usability(c: &EndpointConditions) -> Usability {
    if c.ready {
        Usability::Ready
    } else if c.serving && c.terminating {
        Usability::ServingTerminating
    } else {
        Usability::Unusable
    }
}

/// The backends of a ClusterIP frontend, as kube-proxy's `CategorizeEndpoints` picks them:
/// the ready endpoints, or, when there is none, the serving-and-terminating ones; with
/// `internalTrafficPolicy: Local` the same choice made among this node's endpoints only.
/// Sorted, without duplicates (slices may overlap).
fn cluster_ip_backends(
    svc: &Service,
    endpoints: &[PortEndpoint<'_>],
    config: &NodeConfig,
) -> Vec<BackendAddr> {
    let local_only = svc.internal_traffic_policy == TrafficPolicy::Local;
    usable(endpoints, local_only.then_some(config.node_name.as_str()))
}

/// The ready endpoints, or when there is none the serving-and-terminating ones, among all
/// of `endpoints` or (with `node`) those on that node.
fn usable(endpoints: &[PortEndpoint<'_>], node: Option<&str>) -> Vec<BackendAddr> {
    let here = |ep: &Endpoint| node.is_none_or(|n| ep.node_name.as_deref() == Some(n));
    let of = |wanted: Usability| -> BTreeSet<BackendAddr> {
        endpoints
            .iter()
            .filter(|pe| usability(&pe.endpoint.conditions) == wanted)
            .filter(|pe| here(pe.endpoint))
            .map(|pe| pe.backend)
            .collect()
    };
    let ready = of(Usability::Ready);
    let chosen = if ready.is_empty() {
        of(Usability::ServingTerminating)
    } else {
        ready
    };
    chosen.into_iter().collect()
}

fn insert(
    desired: &mut DesiredState,
    frontend: Frontend,
    service: ServicePortRef,
    backends: Vec<BackendAddr>,
    affinity: Option<u32>,
) {
    // The API server never hands out one IP twice; a manifests directory might. Services are
    // visited in namespace/name order, so the first one keeps the frontend, deterministically.
    if let Some(existing) = desired.frontends.get(&frontend) {
        warn!(
            frontend = ?frontend,
            kept = %existing.service,
            ignored = %service,
            "two services claim the same frontend"
        );
        return;
    }
    desired
        .frontends
        .insert(frontend, FrontendEntry { service, backends });
    if let Some(timeout) = affinity {
        desired.session_affinity.insert(frontend, timeout);
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::discovery::v1 as discovery;

    use super::*;
    use crate::desired::Protocol;

    fn config() -> NodeConfig {
        NodeConfig::from_yaml_str(
            "nodeName: node-a\nnodeIPs: [192.0.2.1]\nclusterCIDRs: [10.244.0.0/16]\n",
            "test",
        )
        .unwrap()
    }

    /// A ClusterState from Service and EndpointSlice YAML documents.
    fn state(docs: &[String]) -> ClusterState {
        let mut state = ClusterState::default();
        for doc in docs {
            if doc.contains("kind: Service") {
                let k8s: core::Service = serde_yaml::from_str(doc).unwrap();
                let svc = Service::from_k8s(&k8s).unwrap();
                state.services.insert(svc.key(), svc.into());
            } else {
                let k8s: discovery::EndpointSlice = serde_yaml::from_str(doc).unwrap();
                let slice = EndpointSlice::from_k8s(&k8s).unwrap();
                state.endpoint_slices.insert(slice.key(), slice.into());
            }
        }
        state
    }

    fn svc(ns: &str, name: &str, spec: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
    }

    fn slice(
        ns: &str,
        name: &str,
        service: &str,
        family: &str,
        ports: &str,
        endpoints: &str,
    ) -> String {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}, namespace: {ns}, labels: {{kubernetes.io/service-name: {service}}}}}\n\
             addressType: {family}\nports: {ports}\nendpoints: {endpoints}\n"
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn fe(addr: &str, port: u16, proto: Protocol) -> Frontend {
        Frontend {
            addr: ip(addr),
            port,
            proto,
        }
    }

    fn be(addr: &str, port: u16, proto: Protocol) -> BackendAddr {
        BackendAddr {
            addr: ip(addr),
            port,
            proto,
        }
    }

    fn backends_of(d: &DesiredState, f: Frontend) -> Vec<BackendAddr> {
        d.frontends
            .get(&f)
            .unwrap_or_else(|| panic!("no frontend {f:?} in {d:?}"))
            .backends
            .clone()
    }

    use Protocol::{Tcp, Udp};

    #[test]
    fn multiple_ports_each_get_a_frontend() {
        let d = translate(
            &state(&[
                svc("ns", "s", "{clusterIP: 10.96.0.1, ports: [{name: a, port: 80}, {name: b, port: 53, protocol: UDP}]}"),
                slice(
                    "ns",
                    "s-1",
                    "s",
                    "IPv4",
                    "[{name: a, port: 8080}, {name: b, port: 5353, protocol: UDP}]",
                    "[{addresses: [10.244.0.1]}]",
                ),
            ]),
            &config(),
        );
        assert_eq!(d.frontends.len(), 2);
        let a = &d.frontends[&fe("10.96.0.1", 80, Tcp)];
        assert_eq!(a.service.to_string(), "ns/s:a");
        assert_eq!(a.backends, vec![be("10.244.0.1", 8080, Tcp)]);
        let b = &d.frontends[&fe("10.96.0.1", 53, Udp)];
        assert_eq!(b.service.port_name, "b");
        assert_eq!(b.backends, vec![be("10.244.0.1", 5353, Udp)]);
    }

    #[test]
    fn named_target_port_resolves_per_slice() {
        // Two pod templates (say, mid-rollout) name different container ports `http`.
        let d = translate(
            &state(&[
                svc(
                    "ns",
                    "s",
                    "{clusterIP: 10.96.0.1, ports: [{name: http, port: 80, targetPort: http}]}",
                ),
                slice(
                    "ns",
                    "s-old",
                    "s",
                    "IPv4",
                    "[{name: http, port: 8080}]",
                    "[{addresses: [10.244.0.1]}]",
                ),
                slice(
                    "ns",
                    "s-new",
                    "s",
                    "IPv4",
                    "[{name: http, port: 9090}]",
                    "[{addresses: [10.244.0.2]}]",
                ),
            ]),
            &config(),
        );
        assert_eq!(
            backends_of(&d, fe("10.96.0.1", 80, Tcp)),
            vec![be("10.244.0.1", 8080, Tcp), be("10.244.0.2", 9090, Tcp)]
        );
    }

    #[test]
    fn not_ready_excluded_and_absent_conditions_are_ready() {
        let d = translate(
            &state(&[
                svc("ns", "s", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}"),
                slice(
                    "ns",
                    "s-1",
                    "s",
                    "IPv4",
                    "[{port: 8080}]",
                    "[{addresses: [10.244.0.1]},\
                      {addresses: [10.244.0.2], conditions: {}},\
                      {addresses: [10.244.0.3], conditions: {ready: false}},\
                      {addresses: [10.244.0.4], conditions: {ready: true}},\
                      {addresses: [10.244.0.5], conditions: {ready: false, serving: true, terminating: true}}]",
                ),
            ]),
            &config(),
        );
        assert_eq!(
            backends_of(&d, fe("10.96.0.1", 80, Tcp)),
            vec![
                be("10.244.0.1", 8080, Tcp),
                be("10.244.0.2", 8080, Tcp),
                be("10.244.0.4", 8080, Tcp)
            ]
        );
    }

    #[test]
    fn serving_terminating_endpoints_are_used_only_when_none_is_ready() {
        let eps = |second: &str| {
            format!(
                "[{{addresses: [10.244.0.1], conditions: {{ready: false, serving: true, terminating: true}}}},\
                  {{addresses: [10.244.0.2], conditions: {second}}},\
                  {{addresses: [10.244.0.3], conditions: {{ready: false, serving: false, terminating: true}}}}]"
            )
        };
        let with = |second: &str| {
            translate(
                &state(&[
                    svc("ns", "s", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}"),
                    slice("ns", "s-1", "s", "IPv4", "[{port: 8080}]", &eps(second)),
                ]),
                &config(),
            )
        };
        // A ready endpoint exists: only it.
        assert_eq!(
            backends_of(&with("{ready: true}"), fe("10.96.0.1", 80, Tcp)),
            vec![be("10.244.0.2", 8080, Tcp)]
        );
        // None ready: the serving+terminating ones (not the non-serving terminating one).
        assert_eq!(
            backends_of(
                &with("{ready: false, serving: true, terminating: true}"),
                fe("10.96.0.1", 80, Tcp)
            ),
            vec![be("10.244.0.1", 8080, Tcp), be("10.244.0.2", 8080, Tcp)]
        );
        // None ready, the second serving but not terminating: only the first one remains.
        assert_eq!(
            backends_of(&with("{ready: false}"), fe("10.96.0.1", 80, Tcp)),
            vec![be("10.244.0.1", 8080, Tcp)]
        );
    }

    #[test]
    fn local_policy_falls_back_among_local_endpoints_only() {
        // node-a has only a terminating endpoint; node-b a ready one.
        let d = translate(
            &state(&[
                svc(
                    "ns",
                    "s",
                    "{clusterIP: 10.96.0.1, internalTrafficPolicy: Local, ports: [{port: 80}]}",
                ),
                slice(
                    "ns",
                    "s-1",
                    "s",
                    "IPv4",
                    "[{port: 8080}]",
                    "[{addresses: [10.244.0.1], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}},\
                      {addresses: [10.244.0.2], nodeName: node-b, conditions: {ready: true}}]",
                ),
            ]),
            &config(),
        );
        assert_eq!(
            backends_of(&d, fe("10.96.0.1", 80, Tcp)),
            vec![be("10.244.0.1", 8080, Tcp)]
        );
    }

    #[test]
    fn client_ip_affinity_marks_every_frontend_of_the_service() {
        let d = translate(
            &state(&[
                svc(
                    "ns",
                    "a",
                    "{clusterIPs: [10.96.0.1, 'fd00:96::1'], sessionAffinity: ClientIP,\
                      sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}, ports: [{port: 80}]}",
                ),
                svc("ns", "b", "{clusterIP: 10.96.0.2, sessionAffinity: ClientIP, ports: [{port: 80}]}"),
                svc("ns", "c", "{clusterIP: 10.96.0.3, ports: [{port: 80}]}"),
            ]),
            &config(),
        );
        let aff = |ip: &str| d.session_affinity.get(&fe(ip, 80, Tcp)).copied();
        assert_eq!(aff("10.96.0.1"), Some(300));
        assert_eq!(aff("fd00:96::1"), Some(300));
        // The API's default timeout: 3 hours.
        assert_eq!(aff("10.96.0.2"), Some(10_800));
        assert_eq!(aff("10.96.0.3"), None);
    }

    #[test]
    fn maglev_by_annotation_or_node_default_marks_every_frontend_of_the_service() {
        let with = |ns: &str, name: &str, annotation: &str, spec: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}, \
                 annotations: {{skiff.io/lb-algorithm: {annotation}}}}}\nspec: {spec}\n"
            )
        };
        let docs = [
            with(
                "ns",
                "m",
                "maglev",
                "{type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30080}]}",
            ),
            with(
                "ns",
                "r",
                "random",
                "{clusterIP: 10.96.0.2, ports: [{port: 80}]}",
            ),
            svc("ns", "d", "{clusterIP: 10.96.0.3, ports: [{port: 80}]}"),
        ];
        let d = translate(&state(&docs), &config());
        let m = |ip: &str, port| d.maglev.get(&fe(ip, port, Tcp)).copied();
        assert_eq!(m("10.96.0.1", 80), Some(16_381));
        assert_eq!(m("192.0.2.1", 30080), Some(16_381), "the NodePort too");
        assert_eq!((m("10.96.0.2", 80), m("10.96.0.3", 80)), (None, None));

        // Node default maglev: the unannotated service follows it, `random` opts out.
        let cfg = NodeConfig::from_yaml_str(
            "nodeName: node-a\nnodeIPs: [192.0.2.1]\nloadBalancing: maglev\nmaglevTableSize: 251\n",
            "test",
        )
        .unwrap();
        let d = translate(&state(&docs), &cfg);
        let m = |ip: &str| d.maglev.get(&fe(ip, 80, Tcp)).copied();
        assert_eq!(
            (m("10.96.0.1"), m("10.96.0.2"), m("10.96.0.3")),
            (Some(251), None, Some(251))
        );

        // An unknown value is a validation error naming the annotation.
        let bad: core::Service = serde_yaml::from_str(&with(
            "ns",
            "x",
            "roundrobin",
            "{clusterIP: 10.96.0.4, ports: [{port: 80}]}",
        ))
        .unwrap();
        let err = Service::from_k8s(&bad).unwrap_err().to_string();
        assert!(err.contains("skiff.io/lb-algorithm"), "{err}");
    }

    #[test]
    fn cluster_ips_of_proxied_services_and_service_cidrs_form_the_address_space() {
        // kube-proxy (nftables) rejects ports a ClusterIP does not define and drops
        // unallocated addresses of the service CIDRs: every proxied ClusterIP is listed
        // (ports or not, endpoints or not); headless and foreign-proxy ones are not.
        let cfg = NodeConfig::from_yaml_str(
            "nodeName: node-a\nnodeIPs: [192.0.2.1]\nclusterCIDRs: [10.244.0.0/16]\n\
             serviceCIDRs: [10.96.0.0/16, 'fd00:96::/108']\n",
            "test",
        )
        .unwrap();
        let d = translate(
            &state(&[
                svc(
                    "ns",
                    "a",
                    "{clusterIPs: [10.96.0.1, 'fd00:96::1'], ports: [{port: 80}]}",
                ),
                svc("ns", "headless", "{clusterIP: None, ports: [{port: 80}]}"),
                String::from(
                    "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: ns, \
                     labels: {service.kubernetes.io/service-proxy-name: x}}\n\
                     spec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}\n",
                ),
            ]),
            &cfg,
        );
        assert_eq!(
            d.cluster_ips.iter().copied().collect::<Vec<_>>(),
            vec![ip("10.96.0.1"), ip("fd00:96::1")]
        );
        assert_eq!(
            d.service_cidrs,
            vec![
                "10.96.0.0/16".parse().unwrap(),
                "fd00:96::/108".parse().unwrap()
            ]
        );
        // Without serviceCIDRs only the ClusterIPs are known.
        assert!(translate(&state(&[]), &config()).service_cidrs.is_empty());
    }

    #[test]
    fn usability_categories() {
        let c = |ready, serving, terminating| EndpointConditions {
            ready,
            serving,
            terminating,
        };
        assert_eq!(usability(&c(true, true, false)), Usability::Ready);
        assert_eq!(
            usability(&c(false, true, true)),
            Usability::ServingTerminating
        );
        assert_eq!(usability(&c(false, false, true)), Usability::Unusable);
        assert_eq!(usability(&c(false, true, false)), Usability::Unusable);
    }

    #[test]
    fn dual_stack_splits_endpoints_by_family() {
        let d = translate(
            &state(&[
                svc(
                    "ns",
                    "s",
                    "{clusterIPs: [10.96.0.1, 'fd00:96::1'], ports: [{port: 80}]}",
                ),
                slice(
                    "ns",
                    "s-v4",
                    "s",
                    "IPv4",
                    "[{port: 8080}]",
                    "[{addresses: [10.244.0.1]}]",
                ),
                slice(
                    "ns",
                    "s-v6",
                    "s",
                    "IPv6",
                    "[{port: 8080}]",
                    "[{addresses: ['fd00:244::1']}]",
                ),
                slice(
                    "ns",
                    "s-fqdn",
                    "s",
                    "FQDN",
                    "[{port: 8080}]",
                    "[{addresses: [db.example]}]",
                ),
            ]),
            &config(),
        );
        assert_eq!(d.frontends.len(), 2);
        assert_eq!(
            backends_of(&d, fe("10.96.0.1", 80, Tcp)),
            vec![be("10.244.0.1", 8080, Tcp)]
        );
        assert_eq!(
            backends_of(&d, fe("fd00:96::1", 80, Tcp)),
            vec![be("fd00:244::1", 8080, Tcp)]
        );
    }

    #[test]
    fn slices_merge_and_dedupe() {
        let d = translate(
            &state(&[
                svc("ns", "s", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}"),
                slice(
                    "ns",
                    "s-b",
                    "s",
                    "IPv4",
                    "[{port: 8080}]",
                    "[{addresses: [10.244.0.3]}, {addresses: [10.244.0.1]}]",
                ),
                slice(
                    "ns",
                    "s-a",
                    "s",
                    "IPv4",
                    "[{port: 8080}]",
                    "[{addresses: [10.244.0.2]}, {addresses: [10.244.0.1]}]",
                ),
            ]),
            &config(),
        );
        assert_eq!(
            backends_of(&d, fe("10.96.0.1", 80, Tcp)),
            vec![
                be("10.244.0.1", 8080, Tcp),
                be("10.244.0.2", 8080, Tcp),
                be("10.244.0.3", 8080, Tcp)
            ]
        );
    }

    #[test]
    fn only_the_first_address_of_an_endpoint_is_used() {
        let d = translate(
            &state(&[
                svc("ns", "s", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}"),
                slice(
                    "ns",
                    "s-1",
                    "s",
                    "IPv4",
                    "[{port: 8080}]",
                    "[{addresses: [10.244.0.1, 10.244.0.9]}]",
                ),
            ]),
            &config(),
        );
        assert_eq!(
            backends_of(&d, fe("10.96.0.1", 80, Tcp)),
            vec![be("10.244.0.1", 8080, Tcp)]
        );
    }

    #[test]
    fn skipped_services() {
        let d = translate(
            &state(&[
                svc("ns", "headless", "{clusterIP: None, ports: [{port: 80}]}"),
                svc("ns", "ext", "{type: ExternalName, externalName: db.example, clusterIP: 10.96.0.2, ports: [{port: 80}]}"),
                svc("ns", "unallocated", "{ports: [{port: 80}]}"),
                "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: ns, labels: {service.kubernetes.io/service-proxy-name: foo}}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}\n".to_string(),
                "apiVersion: v1\nkind: Service\nmetadata: {name: hl, namespace: ns, labels: {service.kubernetes.io/headless: ''}}\nspec: {clusterIP: 10.96.0.4, ports: [{port: 80}]}\n".to_string(),
                svc("ns", "kept", "{clusterIP: 10.96.0.5, ports: [{port: 80}]}"),
                slice("ns", "headless-1", "headless", "IPv4", "[{port: 8080}]", "[{addresses: [10.244.0.1]}]"),
            ]),
            &config(),
        );
        let frontends: Vec<_> = d.frontends.keys().copied().collect();
        assert_eq!(frontends, vec![fe("10.96.0.5", 80, Tcp)]);
    }

    #[test]
    fn slices_of_other_namespaces_or_services_ignored() {
        let d = translate(
            &state(&[
                svc("ns", "s", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}"),
                slice(
                    "other",
                    "s-1",
                    "s",
                    "IPv4",
                    "[{port: 8080}]",
                    "[{addresses: [10.244.0.1]}]",
                ),
                slice(
                    "ns",
                    "t-1",
                    "t",
                    "IPv4",
                    "[{port: 8080}]",
                    "[{addresses: [10.244.0.2]}]",
                ),
                slice(
                    "ns",
                    "s-1",
                    "s",
                    "IPv4",
                    "[{port: 8080}]",
                    "[{addresses: [10.244.0.3]}]",
                ),
            ]),
            &config(),
        );
        assert_eq!(
            backends_of(&d, fe("10.96.0.1", 80, Tcp)),
            vec![be("10.244.0.3", 8080, Tcp)]
        );
    }

    #[test]
    fn port_name_and_protocol_must_match() {
        let d = translate(
            &state(&[
                svc("ns", "s", "{clusterIP: 10.96.0.1, ports: [{name: dns, port: 53, protocol: UDP}, {name: web, port: 80}]}"),
                // `dns` only as TCP, `web` missing, an unnamed port: nothing matches.
                slice("ns", "s-1", "s", "IPv4", "[{name: dns, port: 5353, protocol: TCP}, {port: 8080}]", "[{addresses: [10.244.0.1]}]"),
            ]),
            &config(),
        );
        // The frontends still exist, with no backend: the datapath rejects those.
        assert_eq!(d.frontends.len(), 2);
        assert!(backends_of(&d, fe("10.96.0.1", 53, Udp)).is_empty());
        assert!(backends_of(&d, fe("10.96.0.1", 80, Tcp)).is_empty());
    }

    #[test]
    fn unnamed_service_port_matches_unnamed_slice_port() {
        let d = translate(
            &state(&[
                svc("ns", "s", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}"),
                slice(
                    "ns",
                    "s-1",
                    "s",
                    "IPv4",
                    "[{name: '', port: 8080}]",
                    "[{addresses: [10.244.0.1]}]",
                ),
                slice(
                    "ns",
                    "s-2",
                    "s",
                    "IPv4",
                    "[{name: http, port: 9090}]",
                    "[{addresses: [10.244.0.2]}]",
                ),
                slice(
                    "ns",
                    "s-3",
                    "s",
                    "IPv4",
                    "[{name: ''}]",
                    "[{addresses: [10.244.0.3]}]",
                ),
            ]),
            &config(),
        );
        assert_eq!(
            backends_of(&d, fe("10.96.0.1", 80, Tcp)),
            vec![be("10.244.0.1", 8080, Tcp)]
        );
        assert_eq!(
            d.frontends[&fe("10.96.0.1", 80, Tcp)].service.to_string(),
            "ns/s"
        );
    }

    #[test]
    fn service_without_endpoints_has_an_empty_frontend() {
        let d = translate(
            &state(&[svc(
                "ns",
                "s",
                "{clusterIP: 10.96.0.1, ports: [{port: 80}]}",
            )]),
            &config(),
        );
        assert!(backends_of(&d, fe("10.96.0.1", 80, Tcp)).is_empty());
    }

    #[test]
    fn internal_traffic_policy_local_keeps_node_local_endpoints() {
        let d = translate(
            &state(&[
                svc("ns", "s", "{clusterIP: 10.96.0.1, internalTrafficPolicy: Local, ports: [{port: 80}]}"),
                slice(
                    "ns",
                    "s-1",
                    "s",
                    "IPv4",
                    "[{port: 8080}]",
                    "[{addresses: [10.244.0.1], nodeName: node-a}, {addresses: [10.244.0.2], nodeName: node-b}, {addresses: [10.244.0.3]}]",
                ),
            ]),
            &config(),
        );
        assert_eq!(
            backends_of(&d, fe("10.96.0.1", 80, Tcp)),
            vec![be("10.244.0.1", 8080, Tcp)]
        );
    }

    /// A Service with a `status` (LoadBalancer ingress).
    fn svc_status(ns: &str, name: &str, spec: &str, status: &str) -> String {
        format!("{}status: {status}\n", svc(ns, name, spec))
    }

    fn two_node_ips() -> NodeConfig {
        NodeConfig::from_yaml_str(
            "nodeName: node-a\nnodeIPs: [192.0.2.1, 198.51.100.1, '2001:db8::1']\n\
             clusterCIDRs: [10.244.0.0/16]\n",
            "test",
        )
        .unwrap()
    }

    /// Endpoints 10.244.0.1 on node-a (this node) and 10.244.0.2 on node-b.
    fn local_and_remote(service: &str) -> String {
        slice(
            "ns",
            &format!("{service}-1"),
            service,
            "IPv4",
            "[{port: 9376}]",
            "[{addresses: [10.244.0.1], nodeName: node-a}, {addresses: [10.244.0.2], nodeName: node-b}]",
        )
    }

    #[test]
    fn node_port_is_served_on_every_node_ip_of_its_family() {
        // The documentation's NodePort example: port 80, targetPort 80, nodePort 30007.
        let spec = "{type: NodePort, clusterIP: 10.96.0.7, ports: [{port: 80, targetPort: 80, nodePort: 30007}]}";
        let d = translate(
            &state(&[
                svc("ns", "my-service", spec),
                local_and_remote("my-service"),
            ]),
            &two_node_ips(),
        );
        let all = vec![be("10.244.0.1", 9376, Tcp), be("10.244.0.2", 9376, Tcp)];
        assert_eq!(backends_of(&d, fe("10.96.0.7", 80, Tcp)), all);
        assert_eq!(backends_of(&d, fe("192.0.2.1", 30007, Tcp)), all);
        assert_eq!(backends_of(&d, fe("198.51.100.1", 30007, Tcp)), all);
        // An IPv4 service is not served on the IPv6 node address, nor on the node IPs at 80.
        assert!(!d.frontends.contains_key(&fe("2001:db8::1", 30007, Tcp)));
        assert!(!d.frontends.contains_key(&fe("192.0.2.1", 80, Tcp)));
        // externalTrafficPolicy defaults to Cluster: no external-scope entry.
        assert!(d.external.is_empty());

        // nodePortAddresses limits the addresses.
        let cfg = NodeConfig::from_yaml_str(
            "nodeName: node-a\nnodeIPs: [192.0.2.1, 198.51.100.1]\nclusterCIDRs: [10.244.0.0/16]\n\
             nodePortAddresses: [198.51.100.0/24]\n",
            "test",
        )
        .unwrap();
        let d = translate(&state(&[svc("ns", "my-service", spec)]), &cfg);
        assert!(d.frontends.contains_key(&fe("198.51.100.1", 30007, Tcp)));
        assert!(!d.frontends.contains_key(&fe("192.0.2.1", 30007, Tcp)));
    }

    #[test]
    fn load_balancer_ingress_ips_and_external_ips_are_frontends_at_the_service_port() {
        // The documentation's examples: a LoadBalancer with ingress IP 192.0.2.127, and
        // externalIPs 198.51.100.32 on a ClusterIP service.
        let d = translate(
            &state(&[
                svc_status(
                    "ns",
                    "lb",
                    "{type: LoadBalancer, clusterIP: 10.96.0.8, ports: [{port: 80, targetPort: 9376, nodePort: 30080}]}",
                    "{loadBalancer: {ingress: [{ip: 192.0.2.127}, {hostname: lb.example.com}]}}",
                ),
                local_and_remote("lb"),
                svc(
                    "ns",
                    "ext",
                    "{clusterIP: 10.96.0.9, externalIPs: [198.51.100.32], ports: [{port: 80, targetPort: 49152}]}",
                ),
                local_and_remote("ext"),
            ]),
            &config(),
        );
        let all = vec![be("10.244.0.1", 9376, Tcp), be("10.244.0.2", 9376, Tcp)];
        assert_eq!(backends_of(&d, fe("192.0.2.127", 80, Tcp)), all);
        assert_eq!(backends_of(&d, fe("192.0.2.1", 30080, Tcp)), all);
        assert_eq!(backends_of(&d, fe("198.51.100.32", 80, Tcp)), all);
        assert_eq!(
            d.frontends[&fe("198.51.100.32", 80, Tcp)].service.name,
            "ext"
        );
        // Only ClusterIPs belong to the ClusterIP address space.
        assert!(!d.cluster_ips.contains(&ip("192.0.2.127")));
        // An ingress IP on a Service that is not (or no longer) type LoadBalancer is ignored.
        let d = translate(
            &state(&[svc_status(
                "ns",
                "was-lb",
                "{clusterIP: 10.96.0.8, ports: [{port: 80}]}",
                "{loadBalancer: {ingress: [{ip: 192.0.2.127}]}}",
            )]),
            &config(),
        );
        assert!(!d.frontends.contains_key(&fe("192.0.2.127", 80, Tcp)));
    }

    #[test]
    fn external_traffic_policy_local_uses_local_endpoints_for_external_traffic_only() {
        let spec = "{type: LoadBalancer, clusterIP: 10.96.0.8, externalTrafficPolicy: Local, \
                    healthCheckNodePort: 32000, ports: [{port: 80, nodePort: 30080}]}";
        let status = "{loadBalancer: {ingress: [{ip: 192.0.2.127}]}}";
        let d = translate(
            &state(&[svc_status("ns", "lb", spec, status), local_and_remote("lb")]),
            &config(),
        );
        let all = vec![be("10.244.0.1", 9376, Tcp), be("10.244.0.2", 9376, Tcp)];
        let local = ExternalEntry {
            backends: vec![be("10.244.0.1", 9376, Tcp)],
            drop_when_empty: false,
        };
        for f in [fe("192.0.2.127", 80, Tcp), fe("192.0.2.1", 30080, Tcp)] {
            // From outside: this node's endpoints; from pods: every endpoint (short-circuit).
            assert_eq!(d.external[&f], local);
            assert_eq!(backends_of(&d, f), all);
        }
        // The ClusterIP is not external.
        assert!(!d.external.contains_key(&fe("10.96.0.8", 80, Tcp)));
        assert_eq!(backends_of(&d, fe("10.96.0.8", 80, Tcp)), all);
        assert_eq!(
            d.health_checks[&32000],
            HealthCheck {
                namespace: "ns".into(),
                name: "lb".into(),
                local_endpoints: 1
            }
        );

        // Only a remote endpoint: external traffic is dropped (not rejected), the health
        // check reports 0 local endpoints.
        let remote_only = slice(
            "ns",
            "lb-1",
            "lb",
            "IPv4",
            "[{port: 9376}]",
            "[{addresses: [10.244.0.2], nodeName: node-b}]",
        );
        let d = translate(
            &state(&[svc_status("ns", "lb", spec, status), remote_only]),
            &config(),
        );
        let f = fe("192.0.2.127", 80, Tcp);
        assert_eq!(
            d.external[&f],
            ExternalEntry {
                backends: vec![],
                drop_when_empty: true
            }
        );
        assert_eq!(d.health_checks[&32000].local_endpoints, 0);
        // No endpoint at all: rejected.
        let d = translate(&state(&[svc_status("ns", "lb", spec, status)]), &config());
        assert!(!d.external[&f].drop_when_empty);
        assert!(!d.drop_when_empty.contains(&f));
    }

    #[test]
    fn health_check_counts_distinct_ready_local_endpoints() {
        let spec = "{type: LoadBalancer, clusterIP: 10.96.0.8, externalTrafficPolicy: Local, \
                    healthCheckNodePort: 32000, ports: [{name: a, port: 80}, {name: b, port: 443}]}";
        let d = translate(
            &state(&[
                svc("ns", "lb", spec),
                slice(
                    "ns",
                    "lb-1",
                    "lb",
                    "IPv4",
                    "[{name: a, port: 8080}, {name: b, port: 8443}]",
                    "[{addresses: [10.244.0.1], nodeName: node-a}, \
                      {addresses: [10.244.0.3], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}, \
                      {addresses: [10.244.0.2], nodeName: node-b}]",
                ),
            ]),
            &config(),
        );
        // One pod on two ports counts once; terminating and remote ones do not count.
        assert_eq!(d.health_checks[&32000].local_endpoints, 1);
        // eTP Cluster: no health check.
        let d = translate(
            &state(&[svc(
                "ns",
                "lb",
                "{type: LoadBalancer, clusterIP: 10.96.0.8, healthCheckNodePort: 32000, ports: [{port: 80}]}",
            )]),
            &config(),
        );
        assert!(d.health_checks.is_empty());
    }

    #[test]
    fn load_balancer_source_ranges_apply_to_the_load_balancer_ips_only() {
        let d = translate(
            &state(&[svc_status(
                "ns",
                "lb",
                "{type: LoadBalancer, clusterIP: 10.96.0.8, externalIPs: [198.51.100.32], \
                  loadBalancerSourceRanges: [203.0.113.0/24, '2001:db8:1::/48'], \
                  ports: [{port: 80, nodePort: 30080}]}",
                "{loadBalancer: {ingress: [{ip: 192.0.2.127}]}}",
            )]),
            &config(),
        );
        assert_eq!(
            d.source_ranges.keys().copied().collect::<Vec<_>>(),
            vec![fe("192.0.2.127", 80, Tcp)],
            "not the NodePort, the externalIP or the ClusterIP"
        );
        assert_eq!(
            d.source_ranges[&fe("192.0.2.127", 80, Tcp)],
            vec!["203.0.113.0/24".parse::<IpNet>().unwrap()],
            "ranges of the frontend's family"
        );
    }

    #[test]
    fn internal_traffic_policy_local_without_local_endpoints_drops() {
        let d = translate(
            &state(&[
                svc(
                    "ns",
                    "s",
                    "{clusterIP: 10.96.0.1, internalTrafficPolicy: Local, ports: [{port: 80}]}",
                ),
                slice(
                    "ns",
                    "s-1",
                    "s",
                    "IPv4",
                    "[{port: 8080}]",
                    "[{addresses: [10.244.0.2], nodeName: node-b}]",
                ),
                svc(
                    "ns",
                    "t",
                    "{clusterIP: 10.96.0.2, internalTrafficPolicy: Local, ports: [{port: 80}]}",
                ),
            ]),
            &config(),
        );
        assert!(backends_of(&d, fe("10.96.0.1", 80, Tcp)).is_empty());
        assert!(d.drop_when_empty.contains(&fe("10.96.0.1", 80, Tcp)));
        // No endpoint anywhere: rejected, as kube-proxy does.
        assert!(!d.drop_when_empty.contains(&fe("10.96.0.2", 80, Tcp)));
    }

    #[test]
    fn shared_frontend_goes_to_the_first_service() {
        let d = translate(
            &state(&[
                svc("ns", "b", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}"),
                svc("ns", "a", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}"),
            ]),
            &config(),
        );
        assert_eq!(d.frontends[&fe("10.96.0.1", 80, Tcp)].service.name, "a");
    }

    #[test]
    fn output_is_deterministic() {
        let docs = vec![
            svc("ns", "s", "{clusterIPs: [10.96.0.1, 'fd00:96::1'], ports: [{name: a, port: 80}, {name: b, port: 81}]}"),
            slice("ns", "s-2", "s", "IPv4", "[{name: a, port: 1}, {name: b, port: 2}]", "[{addresses: [10.244.0.9]}, {addresses: [10.244.0.3]}]"),
            slice("ns", "s-1", "s", "IPv4", "[{name: b, port: 2}, {name: a, port: 1}]", "[{addresses: [10.244.0.5]}]"),
            slice("ns", "s-3", "s", "IPv6", "[{name: a, port: 1}]", "[{addresses: ['fd00::2']}, {addresses: ['fd00::1']}]"),
        ];
        let mut reversed = docs.clone();
        reversed.reverse();
        let one = translate(&state(&docs), &config());
        let two = translate(&state(&reversed), &config());
        assert_eq!(one, two);
        for entry in one.frontends.values() {
            assert!(entry.backends.windows(2).all(|w| w[0] < w[1]), "{entry:?}");
        }
        assert_eq!(
            backends_of(&one, fe("10.96.0.1", 80, Tcp)),
            vec![
                be("10.244.0.3", 1, Tcp),
                be("10.244.0.5", 1, Tcp),
                be("10.244.0.9", 1, Tcp)
            ]
        );
    }

    /// The demo set in manifests/examples, as the README describes it.
    #[test]
    fn demo_examples_translate() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests");
        let state = crate::manifests::load_strict(format!("{root}/examples")).unwrap();
        let config = NodeConfig::load(format!("{root}/demo/node.yaml")).unwrap();
        assert_eq!(config.node_name, "demo-node");
        let d = translate(&state, &config);

        let web: Vec<_> = ["10.244.1.11", "10.244.1.12", "10.244.1.13"]
            .iter()
            .map(|a| be(a, 8080, Tcp))
            .collect();
        let web_udp: Vec<_> = ["10.244.1.11", "10.244.1.12", "10.244.1.13"]
            .iter()
            .map(|a| be(a, 5353, Udp))
            .collect();
        let expected: Vec<(Frontend, &str, Vec<BackendAddr>)> = vec![
            (fe("10.96.0.10", 80, Tcp), "demo/web:http", web),
            (fe("10.96.0.10", 5353, Udp), "demo/web:echo-udp", web_udp),
            (
                fe("10.96.0.20", 8080, Tcp),
                "demo/api",
                vec![be("10.244.1.12", 9090, Tcp)],
            ),
            (
                fe("fd00:96::10", 80, Tcp),
                "demo/web6:http",
                vec![
                    be("fd00:244:1::11", 8080, Tcp),
                    be("fd00:244:1::12", 8080, Tcp),
                ],
            ),
        ];
        let got: Vec<_> = d
            .frontends
            .iter()
            .map(|(f, e)| (*f, e.service.to_string(), e.backends.clone()))
            .collect();
        let want: Vec<_> = expected
            .into_iter()
            .map(|(f, s, b)| (f, s.to_string(), b))
            .collect();
        assert_eq!(got, want);

        // The demo node config must agree with the manifests: pod IPs inside clusterCIDRs,
        // cluster IPs inside serviceCIDRs.
        let service_cidrs = config.service_cidrs.clone().unwrap();
        for (frontend, entry) in &d.frontends {
            assert!(
                service_cidrs.iter().any(|n| n.contains(&frontend.addr)),
                "{frontend:?}"
            );
            for backend in &entry.backends {
                assert!(config.in_cluster_cidrs(&backend.addr), "{backend:?}");
            }
        }
    }
}

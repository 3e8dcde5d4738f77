//! Scale: 1,000 policies over 10,000 pods. No timing assertion (machines differ); the time
//! and entry counts are printed for the record (`--nocapture`).

use std::net::IpAddr;
use std::time::Instant;

use dataplane_common::maps::{POLICY_ENDPOINTS_MAX, POLICY_IDENTITIES_MAX, POLICY_RULES_MAX};
use dataplane_common::PROTO_TCP;
use serde_json::json;

use super::tests::{agreed, Cluster};
use super::*;
use crate::model::namespaced_key;

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 100;
const NODES: usize = 50;
const POLICIES_PER_NAMESPACE: usize = 10;

fn pod_ip(ns: usize, i: usize) -> String {
    format!("10.{}.{}.{}", 100 + ns / 50, ns % 50, i + 1)
}

fn big_cluster() -> Cluster {
    let mut c = Cluster::empty();
    for ns in 0..NAMESPACES {
        let name = format!("ns{ns}");
        let obj: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"team": format!("t{}", ns % 10),
                                                  "env": if ns % 2 == 0 { "prod" } else { "dev" }}}
        }))
        .unwrap();
        c.state.namespaces.insert(name.clone(), obj.into());
        for i in 0..PODS_PER_NAMESPACE {
            let app = if i % 10 == 9 {
                "db".to_string()
            } else {
                format!("app{}", i % 10)
            };
            let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("pod{i}"), "namespace": name,
                             "labels": {"app": app, "tier": format!("{}", i % 3)}},
                "spec": {"nodeName": format!("n{}", (ns * PODS_PER_NAMESPACE + i) % NODES),
                         "containers": [{"name": "c", "ports": [
                             {"name": "http", "containerPort": 8000 + (i % 4)},
                             {"name": "metrics", "containerPort": 9090}]}]},
                "status": {"phase": "Running", "podIP": pod_ip(ns, i)},
            }))
            .unwrap();
            c.state
                .pods
                .insert(namespaced_key("Pod", &pod.metadata).unwrap(), pod.into());
        }
        for k in 0..POLICIES_PER_NAMESPACE {
            let spec = match k {
                0 => json!({"podSelector": {}}),
                1..=6 => json!({
                    "podSelector": {"matchLabels": {"app": format!("app{k}")}},
                    "ingress": [
                        {"from": [{"podSelector": {"matchLabels": {"app": format!("app{}", k + 1)}}}],
                         "ports": [{"port": 8080}]},
                        {"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", (ns + k) % 10)}},
                                   "podSelector": {"matchLabels": {"tier": "1"}}}],
                         "ports": [{"port": "http"}]},
                        {"from": [{"ipBlock": {"cidr": format!("172.16.{k}.0/24"),
                                               "except": [format!("172.16.{k}.128/25")]}}]},
                    ]
                }),
                7 => json!({
                    "podSelector": {"matchLabels": {"app": "app7"}},
                    "policyTypes": ["Egress"],
                    "egress": [
                        {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}],
                         "ports": [{"port": 5432}]},
                        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
                         "ports": [{"port": 443}]},
                    ]
                }),
                8 => json!({
                    "podSelector": {"matchLabels": {"app": "app8"}},
                    "policyTypes": ["Egress"],
                    "egress": [{"ports": [{"port": "metrics"}, {"port": 53, "protocol": "UDP"}]}]
                }),
                _ => json!({
                    "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["app1", "app2"]}]},
                    "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                                    {"key": "env", "operator": "NotIn", "values": ["dev"]}]}}],
                                 "ports": [{"port": 30000, "endPort": 30100}]}]
                }),
            };
            let np: k8s_openapi::api::networking::v1::NetworkPolicy =
                serde_json::from_value(json!({
                    "metadata": {"name": format!("np{k}"), "namespace": name},
                    "spec": spec,
                }))
                .unwrap();
            c.state.network_policies.insert(
                namespaced_key("NetworkPolicy", &np.metadata).unwrap(),
                np.into(),
            );
        }
    }
    c
}

#[test]
fn thousand_policies_over_ten_thousand_pods() {
    let c = big_cluster();
    assert_eq!(c.state.pods.len(), NAMESPACES * PODS_PER_NAMESPACE);
    assert_eq!(
        c.state.network_policies.len(),
        NAMESPACES * POLICIES_PER_NAMESPACE
    );

    let start = Instant::now();
    let compiled = compile(&c.state, &c.config, None);
    let first = start.elapsed();
    let start = Instant::now();
    let again = compile(&c.state, &c.config, Some(&compiled));
    let recompile = start.elapsed();
    eprintln!(
        "policy scale: {} policies, {} pods, {} local endpoints: compile {first:?}, \
         recompile {recompile:?}; entries: endpoints {}, identities {} (LPM {}), rules {}",
        c.state.network_policies.len(),
        c.state.pods.len(),
        compiled.endpoints.len(),
        compiled.maps.endpoints.len(),
        compiled.identities.len(),
        compiled.maps.identities.len(),
        compiled.maps.rules.len(),
    );

    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
    assert_eq!(
        compiled, again,
        "an unchanged cluster recompiles identically"
    );
    assert_eq!(
        compiled.endpoints.len(),
        NAMESPACES * PODS_PER_NAMESPACE / NODES
    );
    assert!(!compiled.maps.rules.is_empty());
    assert!(compiled.maps.endpoints.len() <= POLICY_ENDPOINTS_MAX as usize);
    assert!(compiled.maps.identities.len() <= POLICY_IDENTITIES_MAX as usize);
    assert!(compiled.maps.rules.len() <= POLICY_RULES_MAX as usize);
    // Every pod IP is in the LPM.
    assert!(compiled.maps.identities.len() > NAMESPACES * PODS_PER_NAMESPACE);

    // Spot-check the maps against the reference on flows touching local pods.
    let model = PolicyModel::new(&c.state, &c.config);
    let local: Vec<IpAddr> = compiled
        .endpoints
        .values()
        .flat_map(|e| e.ips.iter().copied())
        .collect();
    let mut allowed = 0;
    for (i, dst) in local.iter().enumerate() {
        for ns in (0..NAMESPACES).step_by(7) {
            let src: IpAddr = pod_ip(ns, (i * 13 + ns) % PODS_PER_NAMESPACE)
                .parse()
                .unwrap();
            for port in [8000, 8001, 8080, 5432, 30050] {
                if agreed(&model, &compiled.maps, src, *dst, PROTO_TCP, port).allowed() {
                    allowed += 1;
                }
                agreed(&model, &compiled.maps, *dst, src, PROTO_TCP, port);
            }
        }
    }
    assert!(allowed > 0);
}

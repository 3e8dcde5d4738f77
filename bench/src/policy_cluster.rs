//! A synthetic cluster for the NetworkPolicy benchmarks: pods spread over nodes and
//! namespaces with labels and named container ports, and a set of policies mixing the kinds
//! the Kubernetes documentation describes (pod and namespace selectors, matchExpressions,
//! ipBlock with except, named ports, endPort ranges, ingress and egress, default deny).
//!
//! Layout. Pod `j` lives in namespace `j % namespaces` and is the `i = j / namespaces`-th pod
//! there; pods go round-robin over the nodes (node 0 is this node, `NODE`), 200 per node, so
//! this node holds its realistic share (200 pods) in every namespace. Pod IPs: node `n` has
//! 10.244.n.0/24 (IPv4 only).
//!
//! Three pods and one policy are fixed, for the per-packet measurements: the *target* (a pod
//! of this node in `ns0`), a *client* and a *db* pod on other nodes. `bench-allow` (always
//! part of the set) selects the target for ingress (from the client, TCP 80, 443 and
//! 8000-8100) and egress (to the db pod on TCP 5432, and DNS). The other policies are
//! generated so that none of them lets the client reach the target's `DENIED_PORT`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use skiff::config::NodeConfig;
use skiff::model::{ClusterState, NamespacedName};

/// This node.
pub const NODE: &str = "bench-node";
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PODS_PER_NODE: usize = 200;
/// Port of the target the client may reach (inside bench-allow's 8000-8100).
pub const ALLOWED_PORT: u16 = 8080;
/// Port of the target no policy opens to the client.
pub const DENIED_PORT: u16 = 81;
/// Port of the db pod the target may reach.
pub const DB_PORT: u16 = 5432;

#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub pods: usize,
    pub namespaces: usize,
    /// Policies in total, `bench-allow` included (0: none at all).
    pub policies: usize,
}

impl Scale {
    pub fn nodes(&self) -> usize {
        self.pods.div_ceil(PODS_PER_NODE).max(1)
    }

    /// `<P>_policies_<N>_pods`, for keys.
    pub fn tag(&self) -> String {
        format!("{}_policies_{}_pods", self.policies, self.pods)
    }
}

/// The generated cluster and this node's configuration.
pub struct PolicyCluster {
    pub state: ClusterState,
    pub config: NodeConfig,
    pub target: IpAddr,
    pub client: IpAddr,
    pub db: IpAddr,
}

fn ns_name(k: usize) -> String {
    format!("ns{k}")
}

fn node_of(s: &Scale, j: usize) -> usize {
    (j / s.namespaces) % s.nodes()
}

/// The address of pod `j` (see the module doc).
pub fn pod_ip(s: &Scale, j: usize) -> Ipv4Addr {
    let node = node_of(s, j);
    let idx = (j / (s.namespaces * s.nodes())) * s.namespaces + j % s.namespaces;
    Ipv4Addr::new(
        10,
        244 + (node / 256) as u8,
        (node % 256) as u8,
        2 + idx as u8,
    )
}

/// The fixed pods: target (j = 0, this node), client (ns0, node 1), db (ns1, node 2).
fn fixed(s: &Scale) -> [usize; 3] {
    [0, s.namespaces, 2 * s.namespaces + 1]
}

fn pod(s: &Scale, j: usize) -> Value {
    let i = j / s.namespaces;
    let mut labels = json!({"app": format!("app{}", i % 20), "tier": format!("{}", i % 3)});
    if i.is_multiple_of(7) {
        labels["track"] = json!("canary");
    }
    let [target, client, db] = fixed(s);
    for (k, name) in [(target, "target"), (client, "client"), (db, "db")] {
        if j == k {
            labels["bench"] = json!(name);
        }
    }
    let node = match node_of(s, j) {
        0 => NODE.to_string(),
        n => format!("node-{n}"),
    };
    json!({
        "metadata": {"name": format!("pod{j}"), "namespace": ns_name(j % s.namespaces),
                     "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8000 + (i % 4)},
            {"name": "metrics", "containerPort": 9090},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
        "status": {"phase": "Running", "podIP": pod_ip(s, j).to_string()},
    })
}

fn bench_allow() -> Value {
    json!({
        "podSelector": {"matchLabels": {"bench": "target"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"bench": "client"}}}],
                     "ports": [{"port": 80}, {"port": 443},
                               {"port": 8000, "endPort": 8100}]}],
        "egress": [
            {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"bench": "db"}}}],
             "ports": [{"port": DB_PORT}]},
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]},
        ],
    })
}

/// Generated policy `g` (0-based): namespaces round-robin, ten kinds cycled so that every
/// namespace gets successive kinds (and every kind appears even in small sets). Ingress
/// rules without ports never admit `ns0` (team t0) as a whole, so the client's
/// `DENIED_PORT` stays denied.
fn generated(s: &Scale, g: usize) -> (String, Value) {
    let ns = g % s.namespaces;
    let v = g / s.namespaces;
    let kind = (g + v) % 10;
    let app = |d: usize| format!("app{}", (v + d) % 20);
    let team = format!("t{}", 1 + (g % 9));
    let spec = match kind {
        // Default deny ingress for the namespace, or for one app.
        0 if v.is_multiple_of(2) => json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        0 => json!({"podSelector": {"matchLabels": {"app": app(0)}}, "policyTypes": ["Ingress"]}),
        1 => json!({
            "podSelector": {"matchLabels": {"app": app(0)}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": app(1)}}}],
                         "ports": [{"port": 8080}]}],
        }),
        2 => json!({
            "podSelector": {"matchLabels": {"app": app(2)}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": team}},
                                   "podSelector": {"matchLabels": {"tier": "1"}}}],
                         "ports": [{"port": "http"}, {"port": "metrics"}]}],
        }),
        3 => json!({
            "podSelector": {"matchLabels": {"app": app(3)}},
            "ingress": [{"from": [{"ipBlock": {"cidr": format!("172.16.{}.0/24", g % 250),
                                               "except": [format!("172.16.{}.128/25", g % 250)]}}]}],
        }),
        4 => json!({
            "podSelector": {"matchExpressions": [
                {"key": "app", "operator": "In", "values": [app(4), app(5)]},
                {"key": "track", "operator": "DoesNotExist"}]},
            "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                            {"key": "env", "operator": "NotIn", "values": ["dev"]}]}}],
                         "ports": [{"port": 30000, "endPort": 30100}]}],
        }),
        5 => json!({
            "podSelector": {"matchLabels": {"app": app(5)}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "app19"}}}],
                 "ports": [{"port": 5432}]},
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
                 "ports": [{"port": 443}]},
            ],
        }),
        6 => json!({
            "podSelector": {"matchLabels": {"app": app(6)}},
            "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": "metrics"}, {"port": 53, "protocol": "UDP"}]}],
        }),
        7 => json!({
            "podSelector": {"matchExpressions": [{"key": "track", "operator": "Exists"}]},
            "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                            {"key": "tier", "operator": "Exists"}]}}],
                         "ports": [{"port": 5000 + (g % 50) as u16, "endPort": 5100, "protocol": "UDP"},
                                   {"port": 9000, "protocol": "SCTP"}]}],
        }),
        8 => json!({
            "podSelector": {"matchLabels": {"tier": format!("{}", v % 3)}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": ns_name(1 + (g % (s.namespaces - 1).max(1)))}}}]}],
        }),
        _ => json!({
            "podSelector": {"matchLabels": {"app": app(9)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": format!("192.168.{}.0/24", g % 250)}},
                                  {"podSelector": {"matchLabels": {"app": app(8)}}}],
                         "ports": [{"port": 9000, "endPort": 9100}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": app(7)}}}],
                        "ports": [{"port": 9000, "endPort": 9100}, {"port": "http"}]}],
        }),
    };
    (
        ns_name(ns),
        json!({"metadata": {"name": format!("np{g}"), "namespace": ns_name(ns)}, "spec": spec}),
    )
}

impl PolicyCluster {
    pub fn new(s: Scale) -> Result<PolicyCluster> {
        let config = NodeConfig::from_yaml_str(
            &format!(
                "nodeName: {NODE}\nnodeIPs: [{NODE_IP}]\nclusterCIDRs: [10.244.0.0/14]\n\
                 serviceCIDRs: [10.96.0.0/16]\n"
            ),
            "bench policy config",
        )?;
        let mut state = ClusterState::default();
        for k in 0..s.namespaces {
            let name = ns_name(k);
            let ns = json!({"metadata": {"name": name, "labels": {
                "team": format!("t{}", k % 10), "env": if k % 2 == 0 { "prod" } else { "dev" }}}});
            state.namespaces.insert(
                name,
                Arc::new(serde_json::from_value(ns).context("namespace")?),
            );
        }
        for j in 0..s.pods {
            let key = NamespacedName::new(ns_name(j % s.namespaces), format!("pod{j}"));
            state.pods.insert(
                key,
                Arc::new(serde_json::from_value(pod(&s, j)).context("pod")?),
            );
        }
        if s.policies > 0 {
            let key = NamespacedName::new(ns_name(0), "bench-allow");
            let np = json!({"metadata": {"name": "bench-allow", "namespace": ns_name(0)},
                            "spec": bench_allow()});
            state
                .network_policies
                .insert(key, Arc::new(serde_json::from_value(np).context("policy")?));
        }
        for g in 0..s.policies.saturating_sub(1) {
            let (ns, np) = generated(&s, g);
            let key = NamespacedName::new(ns, format!("np{g}"));
            state
                .network_policies
                .insert(key, Arc::new(serde_json::from_value(np).context("policy")?));
        }
        let [t, c, d] = fixed(&s).map(|j| IpAddr::V4(pod_ip(&s, j)));
        Ok(PolicyCluster {
            state,
            config,
            target: t,
            client: c,
            db: d,
        })
    }

    /// Edit `bench-allow` (what one policy change does): its ingress ports become 80, 443,
    /// `8000-8100` and `extra`.
    pub fn edit_bench_allow(&mut self, extra: u16) -> Result<()> {
        let mut spec = bench_allow();
        spec["ingress"][0]["ports"]
            .as_array_mut()
            .context("bench-allow ports")?
            .push(json!({"port": extra}));
        let np = json!({"metadata": {"name": "bench-allow", "namespace": ns_name(0)},
                        "spec": spec});
        self.state.network_policies.insert(
            NamespacedName::new(ns_name(0), "bench-allow"),
            Arc::new(serde_json::from_value(np)?),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::PROTO_TCP;
    use skiff::policy::{compile_model, evaluate, PolicyModel};
    use std::collections::BTreeSet;

    fn scale(policies: usize) -> Scale {
        Scale {
            pods: 2_000,
            namespaces: 50,
            policies,
        }
    }

    fn small(policies: usize) -> PolicyCluster {
        PolicyCluster::new(scale(policies)).unwrap()
    }

    #[test]
    fn pods_are_unique_and_this_node_holds_its_share() {
        let c = small(1);
        let s = scale(1);
        let ips: BTreeSet<Ipv4Addr> = (0..s.pods).map(|j| pod_ip(&s, j)).collect();
        assert_eq!(ips.len(), s.pods);
        let model = PolicyModel::new(&c.state, &c.config);
        let local = model.pods.values().filter(|p| model.is_local(p)).count();
        assert_eq!(local, 200);
        assert_eq!(
            model.pod_at(c.target).unwrap().node_name.as_deref(),
            Some(NODE)
        );
        assert_ne!(
            model.pod_at(c.client).unwrap().node_name.as_deref(),
            Some(NODE)
        );
        assert_ne!(model.pod_at(c.db).unwrap().node_name.as_deref(), Some(NODE));
    }

    #[test]
    fn every_policy_is_valid_and_the_bench_flows_agree_at_every_size() {
        for n in [1, 200] {
            let c = small(n);
            assert_eq!(c.state.network_policies.len(), n);
            let model = PolicyModel::new(&c.state, &c.config);
            assert!(model.errors.is_empty(), "{:?}", model.errors);
            let compiled = compile_model(&model, None);
            assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
            let v = |src, dst, port| evaluate(&model, src, dst, PROTO_TCP, port).allowed();
            assert!(v(c.client, c.target, ALLOWED_PORT), "{n} policies");
            assert!(!v(c.client, c.target, DENIED_PORT), "{n} policies");
            assert!(v(c.target, c.db, DB_PORT), "{n} policies");
            assert!(!v(c.target, c.db, DB_PORT + 1), "{n} policies");
        }
    }

    #[test]
    fn the_set_mixes_the_documented_kinds() {
        let c = small(200);
        let text: String = c
            .state
            .network_policies
            .values()
            .map(|p| serde_json::to_string(&**p).unwrap())
            .collect();
        for needle in [
            "namespaceSelector",
            "matchExpressions",
            "DoesNotExist",
            "NotIn",
            "except",
            "endPort",
            "\"http\"",
            "Egress",
            "SCTP",
        ] {
            assert!(text.contains(needle), "{needle}");
        }
    }

    #[test]
    fn editing_bench_allow_changes_the_target_s_rules_only() {
        let mut c = small(200);
        let model = PolicyModel::new(&c.state, &c.config);
        let before = compile_model(&model, None);
        c.edit_bench_allow(DENIED_PORT).unwrap();
        let model = PolicyModel::new(&c.state, &c.config);
        let after = compile_model(&model, Some(&before));
        assert!(evaluate(&model, c.client, c.target, PROTO_TCP, DENIED_PORT).allowed());
        let ops = skiff::bpf::policy_writer::plan(&before.maps, &after.maps);
        assert!(!ops.is_empty() && ops.len() < 10, "{} ops", ops.len());
    }
}

//! The compiler against the NetworkPolicy semantics, one test per rule of the API, on the
//! upstream e2e model (namespaces x, y, z; pods a, b, c in each, labelled `pod=a` etc.). Every
//! verdict is computed twice, from the model and from the compiled maps the way the datapath
//! looks them up, and the two must agree.

use std::collections::BTreeMap;
use std::net::IpAddr;

use dataplane_common::policy::{
    IDENTITY_ANY, IDENTITY_FIRST_DYNAMIC, IDENTITY_HOST, IDENTITY_WORLD, POL_F_ALL_PORTS,
    POL_MAX_RANGES, POL_PROTO_ANY,
};
use dataplane_common::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;

use super::evaluate::lpm;
use super::*;
use crate::config::NodeConfig;
use crate::model::{namespaced_key, ClusterState, NamespacedName};

const ICMP: u8 = 1;
const NODE: &str = "n1";
const NODE_IP: &str = "192.0.2.1";
const NODE_IP6: &str = "2001:db8::1";
const EXTERNAL: &str = "203.0.113.9";
const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

pub(super) fn nn(s: &str) -> NamespacedName {
    let (ns, name) = s.split_once('/').unwrap();
    NamespacedName::new(ns, name)
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn node_config() -> NodeConfig {
    NodeConfig::from_yaml_str(
        &format!("nodeName: {NODE}\nnodeIPs: ['{NODE_IP}', '{NODE_IP6}']\n"),
        "test",
    )
    .unwrap()
}

/// A cluster to compile, with helpers to ask for verdicts.
#[derive(Clone)]
pub(super) struct Cluster {
    pub state: ClusterState,
    pub config: NodeConfig,
}

impl Cluster {
    pub fn empty() -> Cluster {
        Cluster {
            state: ClusterState::default(),
            config: node_config(),
        }
    }

    /// The upstream model: every pod on this node, serving 80 and 81 on TCP, UDP and SCTP
    /// under the upstream port names (`serve-80-tcp`, ...).
    pub fn upstream() -> Cluster {
        let mut c = Cluster::empty();
        for (n, ns) in NAMESPACES.iter().enumerate() {
            c.namespace(ns, &format!("{{ns: {ns}}}"));
            for (p, pod) in PODS.iter().enumerate() {
                let ports: Vec<String> = [80, 81]
                    .iter()
                    .flat_map(|port| {
                        ["TCP", "UDP", "SCTP"].map(|proto| {
                            format!(
                                "{{name: serve-{port}-{}, containerPort: {port}, protocol: {proto}}}",
                                proto.to_lowercase()
                            )
                        })
                    })
                    .collect();
                c.pod(&format!(
                    "metadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}\n\
                     spec: {{nodeName: {NODE}, containers: [{{name: c, ports: [{}]}}]}}\n\
                     status: {{phase: Running, podIP: 10.0.{}.{}}}\n",
                    ports.join(", "),
                    n + 1,
                    p + 1
                ));
            }
        }
        c
    }

    pub fn namespace(&mut self, name: &str, labels: &str) {
        let ns: core::Namespace =
            serde_yaml::from_str(&format!("metadata: {{name: {name}, labels: {labels}}}")).unwrap();
        self.state.namespaces.insert(name.to_string(), ns.into());
    }

    pub fn pod(&mut self, yaml: &str) {
        let pod: core::Pod = serde_yaml::from_str(yaml).unwrap();
        let key = namespaced_key("Pod", &pod.metadata).unwrap();
        self.state.pods.insert(key, pod.into());
    }

    pub fn remove_pod(&mut self, key: &str) {
        self.state.pods.remove(&nn(key)).unwrap();
    }

    /// Add (or replace) a policy; `yaml` is `metadata: ...\nspec: ...`.
    pub fn policy(&mut self, yaml: &str) {
        let np: networking::NetworkPolicy = serde_yaml::from_str(yaml).unwrap();
        let key = namespaced_key("NetworkPolicy", &np.metadata).unwrap();
        self.state.network_policies.insert(key, np.into());
    }

    pub fn compile(&self, previous: Option<&CompiledPolicy>) -> (PolicyModel, CompiledPolicy) {
        let model = PolicyModel::new(&self.state, &self.config);
        let compiled = compile_model(&model, previous);
        assert_eq!(
            compiled,
            compile(&self.state, &self.config, previous),
            "compiling is deterministic"
        );
        (model, compiled)
    }

    /// `x/a` -> that pod's first IP; anything else is an IP literal.
    pub fn addr(&self, s: &str) -> IpAddr {
        match s.split_once('/') {
            Some(_) if !s.contains(':') && !s.contains('.') => {
                let pod = &self.state.pods[&nn(s)];
                ip(pod.status.as_ref().unwrap().pod_ip.as_deref().unwrap())
            }
            _ => ip(s),
        }
    }

    /// The verdict of a new flow, after checking that the maps agree with the model.
    pub fn verdict(&self, src: &str, dst: &str, proto: u8, port: u16) -> Verdict {
        let (model, compiled) = self.compile(None);
        agreed(
            &model,
            &compiled.maps,
            self.addr(src),
            self.addr(dst),
            proto,
            port,
        )
    }

    pub fn allowed(&self, src: &str, dst: &str, proto: u8, port: u16) -> bool {
        self.verdict(src, dst, proto, port).allowed()
    }

    /// The upstream 9x9 reachability matrix: one row per client, `.` allowed, `X` denied.
    pub fn matrix(&self, proto: u8, port: u16) -> String {
        let (model, compiled) = self.compile(None);
        let pods: Vec<String> = NAMESPACES
            .iter()
            .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
            .collect();
        let mut rows = Vec::new();
        for src in &pods {
            let mut row = format!("{src} ");
            for (i, dst) in pods.iter().enumerate() {
                if i > 0 && i % 3 == 0 {
                    row.push(' ');
                }
                let v = agreed(
                    &model,
                    &compiled.maps,
                    self.addr(src),
                    self.addr(dst),
                    proto,
                    port,
                );
                row.push(if v.allowed() { '.' } else { 'X' });
            }
            rows.push(row);
        }
        rows.join("\n")
    }
}

/// `evaluate` on the model, asserting that `lookup` on the maps reaches the same decision.
pub(super) fn agreed(
    model: &PolicyModel,
    maps: &PolicyMaps,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: u16,
) -> Verdict {
    let reference = evaluate(model, src, dst, proto, port);
    let datapath = lookup(maps, src, dst, proto, port);
    assert_eq!(
        reference.decision(),
        datapath,
        "model and maps disagree on {src} -> {dst} proto {proto} port {port}"
    );
    reference
}

/// Rows of a matrix where every client reaches exactly the namespaces marked `.`.
fn rows(spec: &[(&str, &str)]) -> String {
    let mut lines: Vec<String> = spec
        .iter()
        .flat_map(|(nss, cells)| nss.chars().map(move |ns| (ns, *cells)))
        .flat_map(|(ns, cells)| PODS.iter().map(move |p| format!("{ns}/{p} {cells}")))
        .collect();
    lines.sort();
    lines.join("\n")
}

const ALL_OPEN: &str = "... ... ...";

#[test]
fn no_policies_allow_everything() {
    let c = Cluster::upstream();
    assert_eq!(c.matrix(PROTO_TCP, 80), rows(&[("xyz", ALL_OPEN)]));
    let (_, compiled) = c.compile(None);
    assert_eq!(compiled.maps.endpoints.len(), 9);
    assert!(compiled.maps.endpoints.values().all(|e| e.flags == 0));
    assert!(compiled.maps.rules.is_empty());
    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
}

#[test]
fn default_deny_ingress() {
    let mut c = Cluster::upstream();
    c.policy("metadata: {name: deny, namespace: x}\nspec: {podSelector: {}}");
    assert_eq!(c.matrix(PROTO_TCP, 80), rows(&[("xyz", "XXX ... ...")]));
    assert_eq!(c.matrix(PROTO_UDP, 81), rows(&[("xyz", "XXX ... ...")]));
    let v = c.verdict("y/a", "x/a", PROTO_TCP, 80);
    assert_eq!(v.egress, EndVerdict::NotIsolated);
    assert_eq!(v.ingress, EndVerdict::Denied);
    // Outside addresses too; the node always.
    assert!(!c.allowed(EXTERNAL, "x/a", PROTO_TCP, 80));
    assert_eq!(
        c.verdict(NODE_IP, "x/a", PROTO_TCP, 80).ingress,
        EndVerdict::Node
    );
    let (_, compiled) = c.compile(None);
    // Isolated with no rules: no rule keys at all.
    assert!(compiled.maps.rules.is_empty());
    let flags: Vec<u32> = compiled.maps.endpoints.values().map(|e| e.flags).collect();
    assert_eq!(flags.iter().filter(|f| **f == 1).count(), 3);
}

#[test]
fn default_deny_egress() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}",
    );
    assert_eq!(
        c.matrix(PROTO_TCP, 80),
        rows(&[("x", "XXX XXX XXX"), ("yz", ALL_OPEN)])
    );
    assert_eq!(
        c.verdict("x/a", NODE_IP, PROTO_TCP, 22).egress,
        EndVerdict::Node
    );
    assert!(!c.allowed("x/a", EXTERNAL, PROTO_UDP, 53));
}

#[test]
fn egress_deny_on_client_even_if_server_allows() {
    let mut c = Cluster::upstream();
    c.policy("metadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}");
    c.policy("metadata: {name: allow-all, namespace: y}\nspec: {podSelector: {}, ingress: [{}]}");
    let v = c.verdict("x/a", "y/b", PROTO_TCP, 80);
    assert_eq!(v.egress, EndVerdict::Denied);
    assert_eq!(v.ingress, EndVerdict::Allowed(vec![nn("y/allow-all")]));
    assert!(!v.allowed());
}

#[test]
fn allow_from_namespace() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: from-y, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}",
    );
    assert_eq!(
        c.matrix(PROTO_TCP, 80),
        rows(&[("xz", "XXX ... ..."), ("y", ALL_OPEN)])
    );
    // By the automatic namespace label as well.
    c.policy(
        "metadata: {name: from-y, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]}",
    );
    assert_eq!(
        c.matrix(PROTO_TCP, 80),
        rows(&[("xy", "XXX ... ..."), ("z", ALL_OPEN)])
    );
}

#[test]
fn pod_and_namespace_selector_in_one_peer_is_and_in_two_peers_is_or() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: and, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [\
         {namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    let and = c.matrix(PROTO_TCP, 80);
    assert_eq!(
        and,
        [
            "x/a X.. ... ...",
            "x/b X.. ... ...",
            "x/c X.. ... ...",
            "y/a X.. ... ...",
            "y/b ... ... ...",
            "y/c X.. ... ...",
            "z/a X.. ... ...",
            "z/b X.. ... ...",
            "z/c X.. ... ...",
        ]
        .join("\n")
    );
    c.policy(
        "metadata: {name: and, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [\
         {namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    assert_eq!(
        c.matrix(PROTO_TCP, 80),
        [
            "x/a X.. ... ...",
            "x/b ... ... ...",
            "x/c X.. ... ...",
            "y/a ... ... ...",
            "y/b ... ... ...",
            "y/c ... ... ...",
            "z/a X.. ... ...",
            "z/b X.. ... ...",
            "z/c X.. ... ...",
        ]
        .join("\n")
    );
}

#[test]
fn empty_selectors() {
    let mut c = Cluster::upstream();
    // `podSelector: {}` as a peer: every pod of the policy's namespace, nothing else.
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
    );
    assert_eq!(
        c.matrix(PROTO_TCP, 80),
        rows(&[("x", ALL_OPEN), ("yz", "XXX ... ...")])
    );
    assert!(!c.allowed(EXTERNAL, "x/a", PROTO_TCP, 80));
    // `namespaceSelector: {}`: every pod of every namespace, but no other address.
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {}}]}]}",
    );
    assert_eq!(c.matrix(PROTO_TCP, 80), rows(&[("xyz", ALL_OPEN)]));
    assert!(!c.allowed(EXTERNAL, "x/a", PROTO_TCP, 80));
}

#[test]
fn match_expressions_each_operator() {
    let base = Cluster::upstream();
    let check = |expr: &str, expect: &str| {
        let mut c = base.clone();
        c.policy(&format!(
            "metadata: {{name: p, namespace: x}}\n\
             spec: {{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [\
             {{namespaceSelector: {{}}, podSelector: {{matchExpressions: [{expr}]}}}}]}}]}}"
        ));
        // Which of y/a, y/b, y/c reach x/a.
        let got: String = PODS
            .iter()
            .map(|p| {
                if c.allowed(&format!("y/{p}"), "x/a", PROTO_TCP, 80) {
                    '.'
                } else {
                    'X'
                }
            })
            .collect();
        assert_eq!(got, expect, "{expr}");
    };
    check("{key: pod, operator: In, values: [a, c]}", ".X.");
    check("{key: pod, operator: NotIn, values: [a, c]}", "X.X");
    check("{key: pod, operator: Exists}", "...");
    check("{key: pod, operator: DoesNotExist}", "XXX");
    check("{key: other, operator: NotIn, values: [a]}", "...");
    // Namespace selectors use them too.
    let mut c = base.clone();
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: \
         {matchExpressions: [{key: ns, operator: NotIn, values: [x, y]}]}}]}]}",
    );
    assert_eq!(
        c.matrix(PROTO_TCP, 80),
        rows(&[("xy", "XXX ... ..."), ("z", ALL_OPEN)])
    );
}

#[test]
fn ip_block_with_except_and_blocks_inside_excepts() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [\
         {ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}, \
         {ipBlock: {cidr: 10.0.2.0/25, except: [10.0.2.2/32]}}]}]}",
    );
    for (src, ok) in [
        ("x/b", true),        // 10.0.1.2: in the /16
        ("y/a", true),        // 10.0.2.1: excepted from the /16, inside the /25
        ("y/b", false),       // 10.0.2.2: excepted from both
        ("10.0.2.100", true), // not a pod: the /25
        ("10.0.2.200", false),
        ("10.0.9.9", true),
        ("10.1.0.1", false),
        (EXTERNAL, false),
        ("fd00::1", false),
    ] {
        assert_eq!(c.allowed(src, "x/a", PROTO_TCP, 80), ok, "{src}");
    }
    let (_, compiled) = c.compile(None);
    let ids = &compiled.maps.identities;
    let id_of = |net: &str| ids.get(&prefix_key(net.parse().unwrap())).copied();
    // Every cidr and except is in, each with the right class.
    let block16 = id_of("10.0.0.0/16").unwrap();
    let block25 = id_of("10.0.2.0/25").unwrap();
    assert!(block16 >= IDENTITY_FIRST_DYNAMIC && block25 >= IDENTITY_FIRST_DYNAMIC);
    assert_ne!(block16, block25);
    assert_eq!(id_of("10.0.2.0/24"), Some(IDENTITY_WORLD));
    // 10.0.2.2 is y/b: its pod entry, not the except's, is in the LPM.
    let y_b = id_of("10.0.2.2/32").unwrap();
    assert_eq!(compiled.identities[&y_b].pods, vec![nn("y/b")]);
    assert!(compiled.identities[&IDENTITY_WORLD]
        .prefixes
        .contains(&"10.0.2.0/24".parse().unwrap()));
    assert!(compiled
        .identities
        .values()
        .all(|info| !info.prefixes.contains(&"10.0.2.2/32".parse().unwrap())));
    assert_eq!(id_of("0.0.0.0/0"), Some(IDENTITY_WORLD));
    assert_eq!(id_of("::/0"), Some(IDENTITY_WORLD));
    assert_eq!(lpm(ids, ip("10.0.2.77")), Some(block25));
}

#[test]
fn ip_block_families_and_the_whole_space() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}]}",
    );
    assert!(c.allowed("x/a", EXTERNAL, PROTO_TCP, 443));
    assert!(!c.allowed("x/a", "10.9.9.9", PROTO_TCP, 443));
    assert!(!c.allowed("x/a", "y/a", PROTO_TCP, 80));
    assert!(!c.allowed("x/a", "2001:db8:5::1", PROTO_TCP, 443));
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: '::/0'}}]}]}",
    );
    assert!(!c.allowed("x/a", EXTERNAL, PROTO_TCP, 443));
    assert!(c.allowed("x/a", "2001:db8:5::1", PROTO_TCP, 443));
    let (_, compiled) = c.compile(None);
    // IPv4 never falls into the IPv6 ::/0 entry: 0.0.0.0/0 is always present.
    assert_eq!(
        compiled
            .maps
            .identities
            .get(&prefix_key("0.0.0.0/0".parse().unwrap())),
        Some(&IDENTITY_WORLD)
    );
    assert_ne!(
        compiled.maps.identities[&prefix_key("::/0".parse().unwrap())],
        IDENTITY_WORLD
    );
}

fn named_port_cluster() -> Cluster {
    let mut c = Cluster::empty();
    c.namespace("x", "{}");
    let pod = |name: &str, ip: &str, ports: &str| {
        format!(
            "metadata: {{name: {name}, namespace: x, labels: {{pod: {name}}}}}\n\
             spec: {{nodeName: {NODE}, containers: [{{name: c, ports: [{ports}]}}]}}\n\
             status: {{podIP: {ip}}}\n"
        )
    };
    c.pod(&pod("a", "10.0.1.1", "{name: web, containerPort: 80}"));
    c.pod(&pod(
        "b",
        "10.0.1.2",
        "{name: web, containerPort: 81}, {name: dns, containerPort: 53, protocol: UDP}",
    ));
    c.pod(&pod("c", "10.0.1.3", "{name: other, containerPort: 80}"));
    c
}

#[test]
fn named_ports_resolve_per_destination_pod() {
    let mut c = named_port_cluster();
    c.policy(
        "metadata: {name: in, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{ports: [{port: web}, {port: dns, protocol: UDP}]}]}",
    );
    for (dst, port, ok) in [
        ("x/a", 80, true),
        ("x/a", 81, false),
        ("x/b", 81, true),
        ("x/b", 80, false),
        ("x/c", 80, false),
    ] {
        assert_eq!(c.allowed("x/c", dst, PROTO_TCP, port), ok, "{dst}:{port}");
    }
    assert!(c.allowed(EXTERNAL, "x/b", PROTO_UDP, 53));
    assert!(!c.allowed(EXTERNAL, "x/b", PROTO_TCP, 53));
    assert!(!c.allowed(EXTERNAL, "x/a", PROTO_UDP, 53));

    // Egress: against the destination, whoever it is.
    let mut c = named_port_cluster();
    c.policy(
        "metadata: {name: out, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: c}}, policyTypes: [Egress], egress: [{ports: [{port: web}]}]}",
    );
    for (dst, port, ok) in [
        ("x/a", 80, true),
        ("x/a", 81, false),
        ("x/b", 81, true),
        ("x/b", 80, false),
        (EXTERNAL, 80, false),
    ] {
        assert_eq!(c.allowed("x/c", dst, PROTO_TCP, port), ok, "{dst}:{port}");
    }
    // With peers: only destinations the peers match, each with its own number.
    c.policy(
        "metadata: {name: out, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: c}}, policyTypes: [Egress], egress: [\
         {to: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: web}]}]}",
    );
    assert!(!c.allowed("x/c", "x/a", PROTO_TCP, 80));
    assert!(c.allowed("x/c", "x/b", PROTO_TCP, 81));
    assert!(!c.allowed("x/c", "x/b", PROTO_TCP, 80));
    // The two destinations have different identities: their `web` differs.
    let (_, compiled) = c.compile(None);
    let id_a = lpm(&compiled.maps.identities, ip("10.0.1.1")).unwrap();
    let id_b = lpm(&compiled.maps.identities, ip("10.0.1.2")).unwrap();
    assert_ne!(id_a, id_b);
    let class_b = compiled.identities[&id_b].class.as_ref().unwrap();
    assert_eq!(
        class_b.named_ports,
        vec![("web".to_string(), crate::desired::Protocol::Tcp, 81)]
    );
}

#[test]
fn end_port_ranges() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{ports: [{port: 80, endPort: 81}, {port: 9000, endPort: 9100, protocol: UDP}]}]}",
    );
    for (port, ok) in [(79, false), (80, true), (81, true), (82, false)] {
        assert_eq!(c.allowed("y/a", "x/a", PROTO_TCP, port), ok, "{port}");
    }
    assert!(c.allowed("y/a", "x/a", PROTO_UDP, 9050));
    assert!(!c.allowed("y/a", "x/a", PROTO_TCP, 9050));
    let (_, compiled) = c.compile(None);
    let tcp = compiled
        .maps
        .rules
        .iter()
        .find(|(k, _)| k.proto == PROTO_TCP)
        .unwrap();
    assert_eq!(tcp.0.identity, IDENTITY_ANY);
    assert_eq!(tcp.1.count, 1);
    assert_eq!((tcp.1.ranges[0].lo, tcp.1.ranges[0].hi), (80, 81));
}

#[test]
fn protocols_tcp_udp_sctp() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{ports: [{port: 53, protocol: UDP}, {protocol: SCTP}, {port: 80}]}]}",
    );
    for (proto, port, ok) in [
        (PROTO_UDP, 53, true),
        (PROTO_UDP, 54, false),
        (PROTO_TCP, 53, false),
        (PROTO_TCP, 80, true),
        (PROTO_UDP, 80, false),
        (PROTO_SCTP, 80, true),
        (PROTO_SCTP, 5000, true),
        (ICMP, 0, false),
    ] {
        assert_eq!(c.allowed("y/a", "x/a", proto, port), ok, "{proto}/{port}");
    }
    let (_, compiled) = c.compile(None);
    let sctp = compiled
        .maps
        .rules
        .iter()
        .find(|(k, _)| k.proto == PROTO_SCTP)
        .unwrap();
    assert_eq!(sctp.1.flags, POL_F_ALL_PORTS);
}

#[test]
fn no_ports_means_every_protocol() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
    );
    for (proto, port) in [
        (PROTO_TCP, 1),
        (PROTO_UDP, 65535),
        (PROTO_SCTP, 9),
        (ICMP, 0),
    ] {
        assert!(c.allowed("x/b", "x/a", proto, port));
        assert!(!c.allowed("y/b", "x/a", proto, port));
    }
    let (_, compiled) = c.compile(None);
    assert!(!compiled.maps.rules.is_empty());
    for (k, v) in &compiled.maps.rules {
        assert_eq!(k.proto, POL_PROTO_ANY);
        assert_eq!(v.flags, POL_F_ALL_PORTS);
        assert_ne!(k.identity, IDENTITY_ANY);
    }
}

#[test]
fn no_peers_means_everyone() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}",
    );
    assert_eq!(c.matrix(PROTO_TCP, 80), rows(&[("xyz", ALL_OPEN)]));
    assert_eq!(c.matrix(PROTO_TCP, 81), rows(&[("xyz", "XXX ... ...")]));
    assert!(c.allowed(EXTERNAL, "x/a", PROTO_TCP, 80));
    assert!(c.allowed("2001:db8:9::9", "x/a", PROTO_TCP, 80));
    let (_, compiled) = c.compile(None);
    assert!(compiled
        .maps
        .rules
        .keys()
        .all(|k| k.identity == IDENTITY_ANY));
    // An empty rule: everything.
    c.policy("metadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{}]}");
    assert!(c.allowed(EXTERNAL, "x/a", ICMP, 0));
}

#[test]
fn overlapping_policies_are_a_union_and_are_named() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: p1, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]}",
    );
    c.policy(
        "metadata: {name: p2, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 81}]}]}",
    );
    c.policy(
        "metadata: {name: p3, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {}}], ports: [{port: 80, endPort: 90}]}]}",
    );
    assert_eq!(
        c.verdict("x/b", "x/a", PROTO_TCP, 80).ingress,
        EndVerdict::Allowed(vec![nn("x/p1"), nn("x/p3")])
    );
    assert_eq!(
        c.verdict("x/c", "x/a", PROTO_TCP, 85).ingress,
        EndVerdict::Allowed(vec![nn("x/p3")])
    );
    assert_eq!(
        c.verdict("y/c", "x/a", PROTO_TCP, 81).ingress,
        EndVerdict::Allowed(vec![nn("x/p2")])
    );
    assert!(!c.allowed("y/c", "x/a", PROTO_TCP, 80));
    assert!(!c.allowed("x/c", "x/b", PROTO_TCP, 80));
    assert!(c.allowed("y/c", "x/b", PROTO_TCP, 81));
    let (_, compiled) = c.compile(None);
    let ep = compiled
        .endpoints
        .values()
        .find(|e| e.pod == nn("x/a"))
        .unwrap();
    assert_eq!(
        ep.ingress_policies,
        vec![nn("x/p1"), nn("x/p2"), nn("x/p3")]
    );
    assert!(!ep.isolated(Direction::Egress));
}

#[test]
fn policy_types_defaulting() {
    let mut c = Cluster::upstream();
    // Egress rules and no policyTypes: both directions.
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: a}}, egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    assert!(c.allowed("x/a", "x/b", PROTO_TCP, 80));
    assert!(!c.allowed("x/a", "x/c", PROTO_TCP, 80));
    assert_eq!(
        c.verdict("x/b", "x/a", PROTO_TCP, 80).ingress,
        EndVerdict::Denied
    );
    let (_, compiled) = c.compile(None);
    let ep = compiled.maps.endpoints[&ip_key(ip("10.0.1.1"))];
    assert_eq!(ep.flags, 0b11);
}

#[test]
fn egress_only_policy_leaves_ingress_open() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, policyTypes: [Egress], ingress: [{from: [{podSelector: {}}]}]}",
    );
    assert_eq!(
        c.verdict("y/a", "x/a", PROTO_TCP, 80).ingress,
        EndVerdict::NotIsolated
    );
    assert!(c.allowed(EXTERNAL, "x/a", PROTO_TCP, 80));
    assert!(!c.allowed("x/a", "x/b", PROTO_TCP, 80));
}

#[test]
fn host_network_pods_are_neither_endpoints_nor_pod_peers() {
    let mut c = Cluster::upstream();
    // One on this node (its IP is the node's), one on another node.
    c.pod(&format!(
        "metadata: {{name: h, namespace: x, labels: {{pod: a}}}}\n\
         spec: {{nodeName: {NODE}, hostNetwork: true}}\nstatus: {{podIP: {NODE_IP}}}"
    ));
    c.pod(
        "metadata: {name: h2, namespace: x, labels: {pod: a}}\n\
         spec: {nodeName: n2, hostNetwork: true}\nstatus: {podIP: 192.0.2.2}",
    );
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, policyTypes: [Ingress, Egress], \
         ingress: [{from: [{namespaceSelector: {}}]}], egress: [{to: [{namespaceSelector: {}}]}]}",
    );
    assert!(c.allowed("y/a", "x/a", PROTO_TCP, 80));
    assert!(!c.allowed("192.0.2.2", "x/a", PROTO_TCP, 80));
    assert!(!c.allowed("x/a", "192.0.2.2", PROTO_TCP, 80));
    assert!(c.allowed(NODE_IP, "x/a", PROTO_TCP, 80));
    // The hostNetwork pod itself is not subject to the policy that selects it.
    let v = c.verdict("192.0.2.2", NODE_IP, PROTO_TCP, 80);
    assert_eq!(v.ingress, EndVerdict::NotLocal);
    let (model, compiled) = c.compile(None);
    assert_eq!(compiled.endpoints.len(), 9);
    assert!(compiled.endpoints.values().all(|e| e.pod.name != "h"));
    assert!(model.pod_at(ip("192.0.2.2")).is_none());
    assert_eq!(
        lpm(&compiled.maps.identities, ip("192.0.2.2")),
        Some(IDENTITY_WORLD)
    );
}

#[test]
fn node_ips_are_the_host_identity_and_always_allowed() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, policyTypes: [Ingress, Egress]}",
    );
    let (_, compiled) = c.compile(None);
    for node_ip in [NODE_IP, NODE_IP6] {
        assert_eq!(
            compiled.maps.identities[&prefix_key(host_net(ip(node_ip)))],
            IDENTITY_HOST
        );
        assert!(c.allowed("x/a", node_ip, PROTO_TCP, 10250));
        assert!(c.allowed(node_ip, "x/a", PROTO_UDP, 80));
    }
    // Another node's address is not.
    assert!(!c.allowed("192.0.2.2", "x/a", PROTO_TCP, 80));
    assert_eq!(
        compiled.identities[&IDENTITY_HOST].prefixes,
        vec![host_net(ip(NODE_IP)), host_net(ip(NODE_IP6))]
    );
}

#[test]
fn pods_elsewhere_are_peers_but_not_endpoints() {
    let mut c = Cluster::upstream();
    c.pod(
        "metadata: {name: r, namespace: y, labels: {pod: r}}\n\
         spec: {nodeName: n2}\nstatus: {podIP: 10.0.2.9}",
    );
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: r}}}]}]}",
    );
    assert!(c.allowed("y/r", "x/a", PROTO_TCP, 80));
    assert_eq!(
        c.verdict("y/r", "x/a", PROTO_TCP, 80).egress,
        EndVerdict::NotLocal
    );
    assert!(!c.allowed("y/a", "x/a", PROTO_TCP, 80));
}

#[test]
fn dual_stack_pods() {
    let mut c = Cluster::empty();
    c.namespace("x", "{}");
    for (name, n) in [("a", 1), ("b", 2)] {
        c.pod(&format!(
            "metadata: {{name: {name}, namespace: x, labels: {{pod: {name}}}}}\n\
             spec: {{nodeName: {NODE}}}\n\
             status: {{podIP: 10.0.1.{n}, podIPs: [{{ip: 10.0.1.{n}}}, {{ip: 'fd00::{n}'}}]}}"
        ));
    }
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    assert!(c.allowed("fd00::2", "fd00::1", PROTO_TCP, 80));
    assert!(c.allowed("10.0.1.2", "10.0.1.1", PROTO_TCP, 80));
    assert!(!c.allowed("fd00::9", "fd00::1", PROTO_TCP, 80));
    let (_, compiled) = c.compile(None);
    assert_eq!(compiled.maps.endpoints.len(), 4);
}

#[test]
fn label_changes_change_identities() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    let (_, before) = c.compile(None);
    assert!(c.allowed("x/b", "x/a", PROTO_TCP, 80));
    c.pod(
        "metadata: {name: b, namespace: x, labels: {pod: b2}}\n\
         spec: {nodeName: n1}\nstatus: {podIP: 10.0.1.2}",
    );
    let (_, after) = c.compile(Some(&before));
    assert!(!c.allowed("x/b", "x/a", PROTO_TCP, 80));
    let id = |compiled: &CompiledPolicy, s: &str| lpm(&compiled.maps.identities, ip(s)).unwrap();
    assert_ne!(id(&before, "10.0.1.2"), id(&after, "10.0.1.2"));
    // x/c's class (matched by nothing) is unchanged, and so is its number.
    assert_eq!(id(&before, "10.0.1.3"), id(&after, "10.0.1.3"));
    // A namespace label change too.
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: t}}}]}]}",
    );
    assert!(!c.allowed("y/a", "x/a", PROTO_TCP, 80));
    c.namespace("y", "{ns: y, team: t}");
    assert!(c.allowed("y/a", "x/a", PROTO_TCP, 80));
}

#[test]
fn ids_are_stable_across_recompiles() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: a}}}]}]}",
    );
    let (_, first) = c.compile(None);
    let (_, again) = c.compile(Some(&first));
    assert_eq!(first, again);

    // An unrelated policy whose peer matches only z/c: only z/c's identity changes.
    c.policy(
        "metadata: {name: q, namespace: z}\n\
         spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]}",
    );
    let (_, second) = c.compile(Some(&first));
    let changed: Vec<_> = second
        .maps
        .identities
        .iter()
        .filter(|(k, v)| first.maps.identities.get(k) != Some(v))
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(*changed[0].0, prefix_key(host_net(ip("10.0.3.3"))));
    // The new class gets a number never used before.
    assert!(*changed[0].1 > *first.identities.keys().max().unwrap());
    // Endpoint ids: unchanged; x's rules unchanged.
    let ep_ids = |c: &CompiledPolicy| -> BTreeMap<NamespacedName, u32> {
        c.endpoints
            .iter()
            .map(|(id, e)| (e.pod.clone(), *id))
            .collect()
    };
    assert_eq!(ep_ids(&first), ep_ids(&second));
    assert!(first
        .maps
        .rules
        .iter()
        .all(|(k, v)| second.maps.rules.get(k) == Some(v)));

    // A pod leaving and a new one arriving: the new one gets a fresh id, never 0.
    c.remove_pod("y/b");
    c.pod(
        "metadata: {name: d, namespace: y, labels: {pod: d}}\n\
         spec: {nodeName: n1}\nstatus: {podIP: 10.0.2.4}",
    );
    let (_, third) = c.compile(Some(&second));
    let ids3 = ep_ids(&third);
    assert!(!ids3.contains_key(&nn("y/b")));
    assert!(ids3[&nn("y/d")] > *ep_ids(&second).values().max().unwrap());
    assert!(ids3.values().all(|id| *id != 0));
    for (pod, id) in ep_ids(&second) {
        if pod != nn("y/b") {
            assert_eq!(ids3[&pod], id, "{pod}");
        }
    }
}

#[test]
fn gone_pods_are_not_peers() {
    let mut c = Cluster::upstream();
    c.pod(
        "metadata: {name: done, namespace: y, labels: {pod: a}}\n\
         spec: {nodeName: n1}\nstatus: {phase: Succeeded, podIP: 10.0.2.50}",
    );
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {}}]}]}",
    );
    assert!(!c.allowed("10.0.2.50", "x/a", PROTO_TCP, 80));
    let (_, compiled) = c.compile(None);
    assert!(compiled.endpoints.values().all(|e| e.pod.name != "done"));
}

#[test]
fn invalid_policies_are_reported_and_left_out() {
    let mut c = Cluster::upstream();
    c.policy("metadata: {name: deny, namespace: x}\nspec: {podSelector: {}}");
    c.policy(
        "metadata: {name: bad, namespace: y}\n\
         spec: {podSelector: {}, ingress: [{ports: [{port: 80, protocol: ICMP}]}]}",
    );
    let (_, compiled) = c.compile(None);
    let msgs: Vec<String> = compiled.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        msgs,
        vec![
            "NetworkPolicy y/bad: spec.ingress[0].ports[0].protocol: unknown protocol \"ICMP\" \
             (expected TCP, UDP or SCTP)"
                .to_string()
        ]
    );
    // The valid one still works.
    assert!(!c.allowed("y/a", "x/a", PROTO_TCP, 80));
}

#[test]
fn too_many_ranges_keeps_the_lowest_and_reports() {
    let mut c = Cluster::upstream();
    let ports: Vec<String> = (0..30)
        .map(|i| format!("{{port: {}}}", 1000 + 2 * i))
        .collect();
    c.policy(&format!(
        "metadata: {{name: p, namespace: x}}\n\
         spec: {{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{ports: [{}]}}]}}",
        ports.join(", ")
    ));
    let (model, compiled) = c.compile(None);
    assert_eq!(compiled.errors.len(), 1, "{:?}", compiled.errors);
    let msg = compiled.errors[0].to_string();
    assert!(
        msg.contains("pod x/a: ingress rules for identity 0 protocol 6 need 30 port ranges")
            && msg.contains(&format!(
                "ports above {} are denied",
                1000 + 2 * (POL_MAX_RANGES - 1)
            )),
        "{msg}"
    );
    let (src, dst) = (ip("10.0.2.1"), ip("10.0.1.1"));
    // Kept ranges agree with the model; the cut ones are denied (never more than allowed).
    let last_kept = 1000 + 2 * (POL_MAX_RANGES as u16 - 1);
    assert!(lookup(&compiled.maps, src, dst, PROTO_TCP, last_kept).allowed());
    assert!(evaluate(&model, src, dst, PROTO_TCP, last_kept + 2).allowed());
    assert!(!lookup(&compiled.maps, src, dst, PROTO_TCP, last_kept + 2).allowed());
}

#[test]
fn wildcard_keys_make_specific_ones_redundant() {
    let mut c = Cluster::upstream();
    c.policy(
        "metadata: {name: p, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: a}}, ingress: [\
         {ports: [{port: 80}]}, \
         {from: [{podSelector: {}}], ports: [{port: 80}, {port: 443}]}]}",
    );
    let (_, compiled) = c.compile(None);
    // (ANY, TCP 80) and (x pods, TCP 443): port 80 is not repeated per identity.
    for (k, v) in &compiled.maps.rules {
        let ranges: Vec<(u16, u16)> = v.ranges[..v.count as usize]
            .iter()
            .map(|r| (r.lo, r.hi))
            .collect();
        if k.identity == IDENTITY_ANY {
            assert_eq!(ranges, vec![(80, 80)]);
        } else {
            assert_eq!(ranges, vec![(443, 443)]);
        }
    }
    assert!(c.allowed("x/b", "x/a", PROTO_TCP, 443));
    assert!(!c.allowed("y/b", "x/a", PROTO_TCP, 443));
    assert!(c.allowed("y/b", "x/a", PROTO_TCP, 80));
}

#[test]
fn explain_says_who_selects_and_what_is_allowed() {
    let mut c = named_port_cluster();
    c.policy(
        "metadata: {name: web, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: a}}, ingress: [\
         {from: [{namespaceSelector: {matchLabels: {team: t}}, podSelector: {matchLabels: {app: api}}}, \
         {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}], ports: [{port: web}, {port: 9000, endPort: 9010, protocol: UDP}]}]}",
    );
    c.policy(
        "metadata: {name: deny-out, namespace: x}\n\
         spec: {podSelector: {}, policyTypes: [Egress]}",
    );
    let (model, _) = c.compile(None);
    let text = explain(&model, &nn("x/a"));
    for expect in [
        "Pod x/a on node n1, IPs [10.0.1.1], labels [pod=a].",
        "Ingress: isolated by 1 policy",
        "policy x/web (selects pods with labels pod=a):",
        "rule 1: from pods with labels app=api in namespaces with labels team=t, or addresses in 10.0.0.0/8 except 10.1.0.0/16; on TCP port named \"web\" (= 80 on this pod), UDP 9000-9010.",
        "Egress: isolated by 1 policy",
        "policy x/deny-out (selects every pod of its namespace): no egress rules: allows no egress traffic.",
    ] {
        assert!(text.contains(expect), "missing {expect:?} in:\n{text}");
    }
    let text = explain(&model, &nn("x/c"));
    assert!(text.contains("Ingress: not isolated"), "{text}");
    assert!(explain(&model, &nn("x/nope")).starts_with("No live pod x/nope"));
}

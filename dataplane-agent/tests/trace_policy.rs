//! `skiff trace` with NetworkPolicy: the real programs run the packet through the source
//! pod's hook and, into a pod of this node, through its to-pod hook; the answer names the
//! end that decided and the policies that allowed, and agrees with the reference evaluator.
//! Needs root; fails, never skips.

use std::net::IpAddr;
use std::path::PathBuf;

use skiff::config::NodeConfig;
use skiff::trace::{FlowInput, Tracer};

/// x/a (10.244.1.11, serves TCP 80 as `http`) and x/b, y/a, y/b (written without `nodeName`,
/// as hand-written manifests may be: taken as this node's); service x/web
/// (10.96.0.10:80 -> x/a:http). x/a accepts only pod b of namespace y on `http`; y/a may
/// send only to namespace x on TCP.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: n, containers: [{name: c, image: none, ports: [{name: http, containerPort: 80}]}]}
status: {phase: Running, podIP: 10.244.1.11}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: n, containers: [{name: c, image: none}]}
status: {phase: Running, podIP: 10.244.1.12}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: y, labels: {pod: a}}
spec: {nodeName: n, containers: [{name: c, image: none}]}
status: {phase: Running, podIP: 10.244.1.21}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {pod: b}}
spec: {containers: [{name: c, image: none}]}
status: {phase: Running, podIP: 10.244.1.22}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints:
- addresses: [10.244.1.11]
  conditions: {ready: true}
  nodeName: n
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: y-a-to-x, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: x}}}]
    ports: [{protocol: TCP}]
"#;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tracer() -> Tracer {
    let dir = Dir(std::env::temp_dir().join(format!("skiff-trace-policy-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join("all.yaml"), MANIFESTS).unwrap();
    let state = skiff::manifests::load_strict(&dir.0).expect("valid manifests");
    let config = NodeConfig::from_yaml_str(
        "nodeName: n\nnodeIPs: [192.0.2.1]\nclusterCIDRs: [10.244.0.0/16]\n\
         serviceCIDRs: [10.96.0.0/16]\n",
        "test",
    )
    .unwrap();
    let desired = skiff::translate::translate(&state, &config);
    let mut t = Tracer::new(config, desired).expect("loading the eBPF programs (needs root)");
    t.set_policy(&state).expect("writing the policy maps");
    t
}

fn flow(proto: &str, src: &str, dst: &str, dport: u16) -> FlowInput {
    FlowInput {
        proto: proto.into(),
        src: src.parse::<IpAddr>().unwrap(),
        sport: 40_000,
        dst: dst.parse::<IpAddr>().unwrap(),
        dport,
    }
}

#[test]
fn trace_reports_the_deciding_end_and_the_allowing_policies() {
    let mut t = tracer();

    // y/b -> x/a:80: allowed by x/a-from-y-b at x/a's ingress; y/b's egress is open.
    let r = t
        .trace(&flow("tcp", "10.244.1.22", "10.244.1.11", 80))
        .unwrap();
    assert_eq!(r.verdict, "pass", "{r:?}");
    assert_eq!(r.hook, Some("tc-egress(pod veth)"), "{r:?}");
    let p = r.policy.expect("policy part");
    assert!(p.consistent, "{p:?}");
    assert_eq!(p.ingress.verdict, "allowed");
    assert_eq!(p.ingress.pod.as_deref(), Some("x/a"));
    assert_eq!(p.ingress.policies, vec!["x/a-from-y-b".to_string()]);
    assert_eq!(p.egress.verdict, "not isolated");
    assert_eq!(p.egress.pod.as_deref(), Some("y/b"));

    // x/b -> x/a:80: no rule admits x/b: dropped by x/a's ingress, in the datapath.
    let r = t
        .trace(&flow("tcp", "10.244.1.12", "10.244.1.11", 80))
        .unwrap();
    assert_eq!(r.verdict, "drop", "{r:?}");
    assert_eq!(r.code, Some("policy_denied_ingress"), "{r:?}");
    let p = r.policy.expect("policy part");
    assert!(p.consistent, "{p:?}");
    assert_eq!(p.ingress.verdict, "denied");

    // SCTP to the same port: the named port is TCP.
    let r = t
        .trace(&flow("sctp", "10.244.1.22", "10.244.1.11", 80))
        .unwrap();
    assert_eq!(r.code, Some("policy_denied_ingress"), "{r:?}");
    assert!(r.policy.expect("policy part").consistent);

    // y/b -> x/a:81: the named port admits 80 only.
    let r = t
        .trace(&flow("tcp", "10.244.1.22", "10.244.1.11", 81))
        .unwrap();
    assert_eq!(r.code, Some("policy_denied_ingress"), "{r:?}");

    // y/a -> y/b: y/a's egress allows only namespace x: dropped at y/a's own hook.
    let r = t
        .trace(&flow("tcp", "10.244.1.21", "10.244.1.22", 80))
        .unwrap();
    assert_eq!(r.verdict, "drop", "{r:?}");
    assert_eq!(r.code, Some("policy_denied_egress"), "{r:?}");
    assert_eq!(r.hook, Some("tc-ingress(pod veth)"), "{r:?}");
    let p = r.policy.expect("policy part");
    assert!(p.consistent, "{p:?}");
    assert_eq!(p.egress.verdict, "denied");
    assert_eq!(p.egress.pod.as_deref(), Some("y/a"));

    // y/a -> x/b over UDP: y/a's egress rule is TCP only.
    let r = t
        .trace(&flow("udp", "10.244.1.21", "10.244.1.12", 53))
        .unwrap();
    assert_eq!(r.code, Some("policy_denied_egress"), "{r:?}");

    // Through the service: policy sees the backend. y/b -> web -> x/a:80 is allowed; x/b
    // -> web is translated and then dropped at x/a's ingress.
    let r = t
        .trace(&flow("tcp", "10.244.1.22", "10.96.0.10", 80))
        .unwrap();
    assert_eq!(r.verdict, "dnat", "{r:?}");
    assert_eq!(r.dnat.as_deref(), Some("10.244.1.11:80"), "{r:?}");
    let p = r.policy.expect("policy part");
    assert_eq!(p.ingress.policies, vec!["x/a-from-y-b".to_string()]);
    let r = t
        .trace(&flow("tcp", "10.244.1.12", "10.96.0.10", 80))
        .unwrap();
    assert_eq!(r.verdict, "drop", "{r:?}");
    assert_eq!(r.code, Some("policy_denied_ingress"), "{r:?}");
    assert_eq!(r.dnat.as_deref(), Some("10.244.1.11:80"), "{r:?}");

    // From outside the cluster to x/b (not isolated): passes, ingress "not isolated".
    let r = t
        .trace(&flow("tcp", "198.51.100.7", "10.244.1.12", 80))
        .unwrap();
    assert_eq!(r.verdict, "pass", "{r:?}");
    assert_eq!(
        r.policy.expect("policy part").ingress.verdict,
        "not isolated"
    );
}

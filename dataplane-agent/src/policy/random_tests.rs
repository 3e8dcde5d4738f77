//! Property-style cross-check: on randomized (but seeded, so reproducible) clusters, the
//! compiled maps looked up the datapath's way must decide every flow exactly as the reference
//! evaluator does from the policy semantics.

use std::net::IpAddr;
use std::sync::Arc;

use dataplane_common::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use serde_json::{json, Value};

use super::tests::{agreed, ip, Cluster};
use super::*;
use crate::model::namespaced_key;

/// splitmix64: tiny, deterministic, good enough to spread choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const KEYS: [&str; 4] = ["app", "tier", "team", "env"];
const VALUES: [&str; 7] = ["web", "db", "api", "1", "2", "a", "prod"];
const PORT_NAMES: [&str; 3] = ["web", "dns", "metrics"];
const PORTS: [u16; 6] = [53, 80, 81, 443, 8080, 9090];
const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
const EXTERNAL: [&str; 7] = [
    "203.0.113.7",
    "10.1.2.3",
    "10.0.0.200",
    "198.51.100.1",
    "2001:db8:9::1",
    "fd00::ff",
    "192.0.2.2",
];

fn selector(rng: &mut Rng) -> Value {
    let mut labels = serde_json::Map::new();
    let mut exprs = Vec::new();
    for _ in 0..rng.below(3) {
        let key = *rng.pick(&KEYS);
        if rng.chance(40) {
            labels.insert(key.into(), json!(rng.pick(&VALUES)));
            continue;
        }
        let op = *rng.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
        let values: Vec<&str> = match op {
            "In" | "NotIn" => (0..1 + rng.below(2)).map(|_| *rng.pick(&VALUES)).collect(),
            _ => Vec::new(),
        };
        exprs.push(json!({"key": key, "operator": op, "values": values}));
    }
    json!({"matchLabels": labels, "matchExpressions": exprs})
}

fn labels(rng: &mut Rng) -> Value {
    let mut m = serde_json::Map::new();
    for key in KEYS {
        if rng.chance(60) {
            m.insert(key.into(), json!(rng.pick(&VALUES)));
        }
    }
    Value::Object(m)
}

/// A random prefix containing `addr`, of length in `min..=max`.
fn prefix_around(rng: &mut Rng, addr: IpAddr, min: u8, max: u8) -> String {
    let len = min + rng.below(usize::from(max - min) + 1) as u8;
    let net = ipnet::IpNet::new(addr, len).unwrap().trunc();
    net.to_string()
}

fn ip_block(rng: &mut Rng, addresses: &[IpAddr]) -> Value {
    let addr = *rng.pick(addresses);
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let cidr: ipnet::IpNet = if rng.chance(15) {
        if addr.is_ipv4() { "0.0.0.0/0" } else { "::/0" }
            .parse()
            .unwrap()
    } else if addr.is_ipv4() {
        prefix_around(rng, addr, 8, 30).parse().unwrap()
    } else {
        prefix_around(rng, addr, 32, 126).parse().unwrap()
    };
    let inside: Vec<IpAddr> = addresses
        .iter()
        .copied()
        .filter(|a| cidr.contains(a))
        .collect();
    let mut except = Vec::new();
    for _ in 0..rng.below(3) {
        let a = *rng.pick(&inside);
        except.push(prefix_around(rng, a, cidr.prefix_len() + 1, max));
    }
    json!({"ipBlock": {"cidr": cidr.to_string(), "except": except}})
}

fn peers(rng: &mut Rng, addresses: &[IpAddr]) -> Option<Value> {
    let n = rng.below(4);
    if n == 0 {
        return if rng.chance(50) {
            None
        } else {
            Some(json!([]))
        };
    }
    let list: Vec<Value> = (0..n)
        .map(|_| match rng.below(4) {
            0 => json!({"podSelector": selector(rng)}),
            1 => json!({"namespaceSelector": selector(rng)}),
            2 => json!({"podSelector": selector(rng), "namespaceSelector": selector(rng)}),
            _ => ip_block(rng, addresses),
        })
        .collect();
    Some(json!(list))
}

fn ports(rng: &mut Rng) -> Option<Value> {
    let n = rng.below(4);
    if n == 0 {
        return None;
    }
    let list: Vec<Value> = (0..n)
        .map(|_| {
            let mut p = serde_json::Map::new();
            if rng.chance(70) {
                p.insert("protocol".into(), json!(rng.pick(&PROTOCOLS)));
            }
            match rng.below(4) {
                0 => {}
                1 => {
                    p.insert("port".into(), json!(rng.pick(&PORT_NAMES)));
                }
                2 => {
                    let port = *rng.pick(&PORTS);
                    p.insert("port".into(), json!(port));
                    p.insert("endPort".into(), json!(port + rng.below(10) as u16));
                }
                _ => {
                    p.insert("port".into(), json!(rng.pick(&PORTS)));
                }
            }
            Value::Object(p)
        })
        .collect();
    Some(json!(list))
}

fn random_cluster(seed: u64) -> (Cluster, Vec<IpAddr>) {
    let mut rng = Rng(seed);
    let mut c = Cluster::empty();
    let namespaces = ["n0", "n1", "n2", "n3"];
    for ns in namespaces {
        let ns_obj: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({
            "metadata": {"name": ns, "labels": labels(&mut rng)}
        }))
        .unwrap();
        c.state.namespaces.insert(ns.into(), ns_obj.into());
    }
    let mut addresses: Vec<IpAddr> = EXTERNAL.iter().map(|s| ip(s)).collect();
    addresses.extend(c.config.node_ips.iter().copied());
    for i in 0..40u32 {
        let ns = *rng.pick(&namespaces);
        let local = rng.chance(60);
        let host_network = rng.chance(10);
        let mut ips = vec![format!("10.{}.{}.{}", i % 3, i / 8, i + 1)];
        if rng.chance(30) {
            ips.push(format!("fd00::{:x}", i + 1));
        }
        if host_network {
            ips = vec![if local {
                "192.0.2.1".into()
            } else {
                "192.0.2.2".into()
            }];
        }
        let mut container_ports = Vec::new();
        for name in PORT_NAMES {
            if rng.chance(60) {
                container_ports.push(json!({"name": name, "containerPort": rng.pick(&PORTS),
                                            "protocol": rng.pick(&PROTOCOLS)}));
            }
        }
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p{i}"), "namespace": ns, "labels": labels(&mut rng)},
            "spec": {"nodeName": if local { "n1" } else { "n2" }, "hostNetwork": host_network,
                     "containers": [{"name": "c", "ports": container_ports}]},
            "status": {"phase": if rng.chance(5) { "Succeeded" } else { "Running" },
                       "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()},
        }))
        .unwrap();
        for s in &ips {
            addresses.push(ip(s));
        }
        c.state
            .pods
            .insert(namespaced_key("Pod", &pod.metadata).unwrap(), pod.into());
    }
    addresses.sort();
    addresses.dedup();

    for i in 0..12 {
        let ns = *rng.pick(&namespaces);
        let mut spec = serde_json::Map::new();
        spec.insert("podSelector".into(), selector(&mut rng));
        let types = rng.below(4);
        if types > 0 {
            let t: &[&str] = match types {
                1 => &["Ingress"],
                2 => &["Egress"],
                _ => &["Ingress", "Egress"],
            };
            spec.insert("policyTypes".into(), json!(t));
        }
        for (dir, peer_field) in [("ingress", "from"), ("egress", "to")] {
            if rng.chance(20) {
                continue;
            }
            let rules: Vec<Value> = (0..rng.below(4))
                .map(|_| {
                    let mut r = serde_json::Map::new();
                    if let Some(p) = peers(&mut rng, &addresses) {
                        r.insert(peer_field.into(), p);
                    }
                    if let Some(p) = ports(&mut rng) {
                        r.insert("ports".into(), p);
                    }
                    Value::Object(r)
                })
                .collect();
            spec.insert(dir.into(), json!(rules));
        }
        let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": format!("np{i}"), "namespace": ns},
            "spec": spec,
        }))
        .unwrap();
        c.state.network_policies.insert(
            namespaced_key("NetworkPolicy", &np.metadata).unwrap(),
            np.into(),
        );
    }
    (c, addresses)
}

#[derive(Default, Debug)]
struct Tally {
    allowed: usize,
    denied: usize,
    not_isolated: usize,
    node: usize,
}

fn cross_check(
    c: &Cluster,
    addresses: &[IpAddr],
    rng: &mut Rng,
    tally: &mut Tally,
    previous: Option<&CompiledPolicy>,
) -> CompiledPolicy {
    let (model, compiled) = c.compile(previous);
    assert!(
        compiled.errors.is_empty(),
        "random clusters are valid: {:?}",
        compiled.errors
    );
    for _ in 0..3000 {
        let src = *rng.pick(addresses);
        let dst = *rng.pick(addresses);
        let proto = *rng.pick(&[PROTO_TCP, PROTO_UDP, PROTO_SCTP, 1]);
        let port = if proto == 1 {
            0
        } else {
            *rng.pick(&[53, 80, 81, 85, 443, 8080, 9090, 7])
        };
        let v = agreed(&model, &compiled.maps, src, dst, proto, port);
        for end in [&v.egress, &v.ingress] {
            match end {
                EndVerdict::Allowed(_) => tally.allowed += 1,
                EndVerdict::Denied => tally.denied += 1,
                EndVerdict::NotIsolated => tally.not_isolated += 1,
                EndVerdict::Node => tally.node += 1,
                EndVerdict::NotLocal => {}
            }
        }
    }
    compiled
}

#[test]
fn maps_decide_like_the_reference_on_random_clusters() {
    let mut tally = Tally::default();
    for seed in 0..40 {
        let (mut c, addresses) = random_cluster(seed);
        let mut rng = Rng(seed ^ 0xfeed);
        let first = cross_check(&c, &addresses, &mut rng, &mut tally, None);
        // Relabel a few pods and recompile against the previous output.
        let keys: Vec<_> = c.state.pods.keys().cloned().collect();
        for _ in 0..5 {
            let key = rng.pick(&keys).clone();
            let pod = Arc::make_mut(c.state.pods.get_mut(&key).unwrap());
            pod.metadata.labels = serde_json::from_value(labels(&mut rng)).unwrap();
        }
        cross_check(&c, &addresses, &mut rng, &mut tally, Some(&first));
    }
    // The clusters exercise every outcome, plenty of each.
    eprintln!("{tally:?}");
    assert!(tally.allowed > 5_000, "{tally:?}");
    assert!(tally.denied > 5_000, "{tally:?}");
    assert!(tally.not_isolated > 1_000, "{tally:?}");
    assert!(tally.node > 100, "{tally:?}");
}

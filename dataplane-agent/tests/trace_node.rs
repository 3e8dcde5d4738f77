//! `skiff trace` for traffic from the node itself: answered from the real maps (loaded and
//! filled as the agent does) for the socket-level hooks. Needs root; fails, never skips.

use std::net::IpAddr;

use skiff::config::NodeConfig;
use skiff::desired::{
    BackendAddr, DesiredState, Frontend, FrontendEntry, Protocol, ServicePortRef,
};
use skiff::trace::{FlowInput, Origin, Tracer};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn desired() -> DesiredState {
    let mut d = DesiredState::default();
    for (vip, port, proto, bes) in [
        (
            "10.96.0.10",
            80,
            Protocol::Tcp,
            vec!["10.244.1.12", "10.244.1.11"],
        ),
        ("fd00:96::10", 53, Protocol::Udp, vec!["fd00:244:1::11"]),
        ("10.96.0.11", 80, Protocol::Tcp, vec![]),
        ("10.96.0.12", 80, Protocol::Sctp, vec!["10.244.1.11"]),
    ] {
        d.frontends.insert(
            Frontend {
                addr: ip(vip),
                port,
                proto,
            },
            FrontendEntry {
                service: ServicePortRef {
                    namespace: "default".into(),
                    name: format!("svc-{port}"),
                    port_name: String::new(),
                },
                backends: bes
                    .iter()
                    .map(|a| BackendAddr {
                        addr: ip(a),
                        port: 8080,
                        proto,
                    })
                    .collect(),
            },
        );
    }
    d
}

fn tracer(extra: &str) -> Tracer {
    let cfg = NodeConfig::from_yaml_str(
        &format!(
            "nodeName: n\nnodeIPs: [192.0.2.1, '2001:db8::1']\nclusterCIDRs: [10.244.0.0/16]\n{extra}"
        ),
        "test",
    )
    .unwrap();
    Tracer::new(cfg, desired()).expect("loading the eBPF programs (needs root)")
}

fn flow(proto: &str, src: &str, dst: &str, dport: u16) -> FlowInput {
    FlowInput {
        proto: proto.into(),
        src: ip(src),
        sport: 40_000,
        dst: ip(dst),
        dport,
    }
}

#[test]
fn node_traffic_is_explained_by_the_socket_level_hooks() {
    let mut t = tracer("");
    let r = t
        .trace(&flow("tcp", "192.0.2.1", "10.96.0.10", 80))
        .unwrap();
    assert_eq!(r.origin, Origin::Node);
    assert_eq!((r.verdict, r.dnat.as_deref()), ("dnat", None));
    assert_eq!(r.code, Some("sock_nat"));
    assert_eq!(r.hook, Some("cgroup connect/sendmsg (socket)"));
    assert!(
        r.reason.contains("10.244.1.11:8080, 10.244.1.12:8080"),
        "{}",
        r.reason
    );
    assert_eq!(r.service.as_deref(), Some("default/svc-80"));

    let r = t
        .trace(&flow("udp", "2001:db8::1", "fd00:96::10", 53))
        .unwrap();
    assert_eq!(
        (r.verdict, r.dnat.as_deref()),
        ("dnat", Some("[fd00:244:1::11]:8080"))
    );

    let r = t
        .trace(&flow("tcp", "192.0.2.1", "10.96.0.11", 80))
        .unwrap();
    assert_eq!((r.verdict, r.code), ("reject", Some("sock_no_endpoints")));

    // Not a frontend (another port, another address), and SCTP: untouched.
    for f in [
        flow("tcp", "192.0.2.1", "10.96.0.10", 81),
        flow("udp", "192.0.2.1", "10.96.0.10", 80),
        flow("sctp", "192.0.2.1", "10.96.0.12", 80),
    ] {
        let r = t.trace(&f).unwrap();
        assert_eq!((r.verdict, r.dnat, r.code), ("pass", None, None), "{f:?}");
    }
}

#[test]
fn without_socket_lb_the_node_has_no_hook() {
    let mut t = tracer("socketLB: false\n");
    let r = t
        .trace(&flow("tcp", "192.0.2.1", "10.96.0.10", 80))
        .unwrap();
    assert_eq!((r.verdict, r.hook, r.code), ("pass", None, None));
    assert!(r.reason.contains("socketLB: false"), "{}", r.reason);
}

/// SCTP from a pod to a service whose targetPort differs from its port: the port is
/// translated (the CRC32c updated in the kernel), not refused as a NAT failure.
#[test]
fn sctp_from_a_pod_reports_the_port_translation() {
    let mut t = tracer("");
    let r = t
        .trace(&flow("sctp", "10.244.1.5", "10.96.0.12", 80))
        .unwrap();
    assert_eq!(r.origin, Origin::Pod);
    assert_eq!(
        (r.verdict, r.dnat.as_deref(), r.code),
        ("dnat", Some("10.244.1.11:8080"), Some("nat_new_connection"))
    );
}

//! The test bed on its own, without skiff: pods reach each other through the node namespace,
//! the socket helpers work for IPv4 and IPv6, and everything is cleaned up.
//!
//! These tests need root and fail (never skip) without it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use skiff_testbed::{
    list_netns, netns_exists, require_root, serial, tcp_connect_once, tcp_echo_server, tcp_round,
    tcp_server, udp_request, udp_round, udp_server, LongLivedClient, SerialGuard, TestBed,
    Underlay,
};

const T: Duration = Duration::from_secs(2);
const ANY4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const ANY6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// Root check, lock, and a bed with a client pod `a` and a server pod `b`.
fn two_pods() -> (SerialGuard, TestBed) {
    require_root();
    let lock = serial();
    let mut bed = TestBed::new().expect("creating test bed");
    bed.add_pod(
        "a",
        "skd0",
        Some(v4("10.244.1.5")),
        Some(v6("fd00:244:1::5")),
    )
    .expect("pod a");
    bed.add_pod(
        "b",
        "skd1",
        Some(v4("10.244.1.11")),
        Some(v6("fd00:244:1::11")),
    )
    .expect("pod b");
    (lock, bed)
}

#[test]
fn pods_reach_each_other_by_pod_ip_v4_and_v6() {
    let (_lock, bed) = two_pods();
    let a = bed.pod("a").unwrap().clone();
    let b = bed.pod("b").unwrap().clone();
    let _servers = [
        tcp_server(&b.netns, ANY4, 8080, "b").unwrap(),
        tcp_server(&b.netns, ANY6, 8080, "b").unwrap(),
        udp_server(&b.netns, ANY4, 5353, "b").unwrap(),
        udp_server(&b.netns, ANY6, 5353, "b").unwrap(),
        tcp_server(&a.netns, ANY4, 8080, "a").unwrap(),
        tcp_server(&a.netns, ANY6, 8080, "a").unwrap(),
    ];
    let b4 = IpAddr::V4(b.ipv4.unwrap());
    let b6 = IpAddr::V6(b.ipv6.unwrap());
    assert_eq!(tcp_connect_once(&a.netns, b4, 8080, T).unwrap(), "b");
    assert_eq!(tcp_connect_once(&a.netns, b6, 8080, T).unwrap(), "b");
    assert_eq!(udp_request(&a.netns, b4, 5353, T).unwrap(), "b");
    assert_eq!(udp_request(&a.netns, b6, 5353, T).unwrap(), "b");
    // And back.
    let a4 = IpAddr::V4(a.ipv4.unwrap());
    let a6 = IpAddr::V6(a.ipv6.unwrap());
    assert_eq!(tcp_connect_once(&b.netns, a4, 8080, T).unwrap(), "a");
    assert_eq!(tcp_connect_once(&b.netns, a6, 8080, T).unwrap(), "a");
    // Nobody listens on this port: refused, quickly.
    let refused = tcp_connect_once(&a.netns, b4, 9, T).unwrap_err();
    assert!(format!("{refused:#}").contains("refused"), "{refused:#}");
}

/// Two nodes on one underlay bridge, a pod on each, and an external host: pods reach each
/// other across nodes (v4 and v6) and the external host reaches a pod through its node.
#[test]
fn two_nodes_on_an_underlay_route_pods_and_external_hosts() {
    require_root();
    let _lock = serial();
    let mut ul = Underlay::new(24).unwrap();
    let mut n1 = TestBed::new().unwrap();
    let mut n2 = TestBed::new().unwrap();
    let (ip1, ip2) = (v4("192.0.2.11"), v4("192.0.2.12"));
    let (ip1_6, ip2_6) = (v6("2001:db8::11"), v6("2001:db8::12"));
    n1.join_underlay(&ul, ip1, Some(ip1_6)).unwrap();
    n2.join_underlay(&ul, ip2, Some(ip2_6)).unwrap();
    n1.route_via("10.244.2.0/24", IpAddr::V4(ip2)).unwrap();
    n1.route_via("fd00:244:2::/64", IpAddr::V6(ip2_6)).unwrap();
    n2.route_via("10.244.1.0/24", IpAddr::V4(ip1)).unwrap();
    n2.route_via("fd00:244:1::/64", IpAddr::V6(ip1_6)).unwrap();
    let a = n1
        .add_pod(
            "a",
            "skd0",
            Some(v4("10.244.1.5")),
            Some(v6("fd00:244:1::5")),
        )
        .unwrap();
    let b = n2
        .add_pod(
            "b",
            "skd0",
            Some(v4("10.244.2.5")),
            Some(v6("fd00:244:2::5")),
        )
        .unwrap();
    let ext = ul.add_external("ext", v4("192.0.2.100"), None).unwrap();
    ul.route(&ext, "10.244.1.0/24", IpAddr::V4(ip1)).unwrap();
    let _servers = [
        tcp_server(&b.netns, ANY4, 8080, "b").unwrap(),
        tcp_server(&b.netns, ANY6, 8080, "b").unwrap(),
        udp_server(&b.netns, ANY4, 5353, "b").unwrap(),
        tcp_server(&a.netns, ANY4, 8080, "a").unwrap(),
    ];
    let b4 = IpAddr::V4(b.ipv4.unwrap());
    assert_eq!(tcp_connect_once(&a.netns, b4, 8080, T).unwrap(), "b");
    assert_eq!(udp_request(&a.netns, b4, 5353, T).unwrap(), "b");
    let b6 = IpAddr::V6(b.ipv6.unwrap());
    assert_eq!(tcp_connect_once(&a.netns, b6, 8080, T).unwrap(), "b");
    let a4 = IpAddr::V4(a.ipv4.unwrap());
    assert_eq!(tcp_connect_once(ext.ns(), a4, 8080, T).unwrap(), "a");
    // Not routed towards node 2: unreachable from outside.
    assert!(tcp_connect_once(ext.ns(), b4, 8080, Duration::from_millis(300)).is_err());
    let names: Vec<String> = [n1.namespaces(), n2.namespaces()].concat();
    drop((n1, n2, ul));
    let left = list_netns().unwrap();
    for n in names.iter().chain([&ext.netns]) {
        assert!(!left.contains(n), "{n} left behind");
    }
}

#[test]
fn many_sequential_connections_are_quick() {
    let (_lock, bed) = two_pods();
    let a = bed.pod("a").unwrap();
    let b = bed.pod("b").unwrap();
    let _s4 = tcp_server(&b.netns, ANY4, 8080, "b").unwrap();
    let _s6 = tcp_server(&b.netns, ANY6, 8080, "b").unwrap();
    let _u4 = udp_server(&b.netns, ANY4, 5353, "b").unwrap();

    let started = Instant::now();
    let tally = tcp_round(&a.netns, IpAddr::V4(b.ipv4.unwrap()), 8080, 1000, T).unwrap();
    let took = started.elapsed();
    assert_eq!(tally.failures, 0, "{tally}");
    assert_eq!(tally.answers.get("b"), Some(&1000), "{tally}");
    assert!(
        took < Duration::from_secs(10),
        "1000 connections took {took:?}"
    );
    eprintln!("1000 sequential TCP connections over IPv4: {took:?}");

    let tally = tcp_round(&a.netns, IpAddr::V6(b.ipv6.unwrap()), 8080, 200, T).unwrap();
    assert_eq!(tally.answers.get("b"), Some(&200), "{tally}");
    let tally = udp_round(&a.netns, IpAddr::V4(b.ipv4.unwrap()), 5353, 200, T).unwrap();
    assert_eq!(tally.answers.get("b"), Some(&200), "{tally}");
}

#[test]
fn long_lived_connection_keeps_working() {
    let (_lock, bed) = two_pods();
    let a = bed.pod("a").unwrap();
    let b = bed.pod("b").unwrap();
    let echo = tcp_echo_server(&b.netns, ANY6, 7000, "b").unwrap();
    let client = LongLivedClient::start(
        &a.netns,
        IpAddr::V6(b.ipv6.unwrap()),
        7000,
        Duration::from_millis(50),
        Duration::from_secs(10),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(client.is_running());
    let stats = client.stop();
    assert!(stats.sent >= 8, "{stats:?}");
    assert_eq!(stats.failures, 0, "{stats:?}");
    assert_eq!(stats.ok, stats.sent, "{stats:?}");
    assert_eq!(
        stats.backends.keys().collect::<Vec<_>>(),
        ["b"],
        "{stats:?}"
    );
    assert!(echo.served() >= stats.ok, "{echo:?}");

    // A server that goes away is seen as failures on the kept connection.
    let echo = tcp_echo_server(&b.netns, ANY4, 7001, "b").unwrap();
    let client = LongLivedClient::start(
        &a.netns,
        IpAddr::V4(b.ipv4.unwrap()),
        7001,
        Duration::from_millis(50),
        Duration::from_secs(10),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    echo.stop();
    std::thread::sleep(Duration::from_millis(300));
    let stats = client.stop();
    assert!(stats.ok >= 2, "{stats:?}");
    assert!(stats.failures >= 1, "{stats:?}");
    assert!(stats.connection_lost, "{stats:?}");
}

#[test]
fn service_addresses_are_not_reachable_without_skiff() {
    let (_lock, bed) = two_pods();
    let a = bed.pod("a").unwrap();
    let started = Instant::now();
    let t = Duration::from_millis(300);
    assert!(tcp_connect_once(&a.netns, "10.96.0.10".parse().unwrap(), 80, t).is_err());
    assert!(tcp_connect_once(&a.netns, "fd00:96::10".parse().unwrap(), 80, t).is_err());
    assert!(udp_request(&a.netns, "10.96.0.10".parse().unwrap(), 53, t).is_err());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn drop_removes_namespaces_and_processes() {
    let (_lock, bed) = two_pods();
    let names = bed.namespaces().to_vec();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| netns_exists(n)));
    let listed = list_netns().unwrap();
    assert!(names.iter().all(|n| listed.contains(n)), "{listed:?}");
    // A process the caller leaks is still killed with the bed.
    let sleeper = bed
        .spawn(&bed.pod("a").unwrap().netns, "sleep", &["60"])
        .unwrap();
    let pid = sleeper.pid();
    std::mem::forget(sleeper);
    let started = Instant::now();
    drop(bed);
    assert!(started.elapsed() < Duration::from_secs(5));
    let listed = list_netns().unwrap();
    assert!(
        names.iter().all(|n| !listed.contains(n)),
        "left behind: {listed:?}"
    );
    // Killed (a zombie until reaped, since it was our child): reap it.
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    assert_eq!(reaped, pid as libc::pid_t);
    assert!(libc::WIFSIGNALED(status), "status {status:#x}");
}

#[test]
fn drop_on_panic_removes_namespaces() {
    require_root();
    let _lock = serial();
    let result = std::panic::catch_unwind(|| {
        let mut bed = TestBed::new().unwrap();
        bed.add_pod("p", "skd0", Some(v4("10.244.2.2")), None)
            .unwrap();
        let names = bed.namespaces().to_vec();
        std::panic::panic_any(names);
    });
    let names = result
        .unwrap_err()
        .downcast::<Vec<String>>()
        .expect("the names");
    assert_eq!(names.len(), 2);
    let listed = list_netns().unwrap();
    assert!(
        names.iter().all(|n| !listed.contains(n)),
        "left behind: {listed:?}"
    );
}

#[test]
fn cleanup_stale_removes_leftovers() {
    require_root();
    let _lock = serial();
    let prefix = format!("skt-stale-{}-", std::process::id());
    let name = format!("{prefix}x");
    skiff_testbed::ip(None, &["netns", "add", &name]).unwrap();
    assert!(netns_exists(&name));
    let removed = TestBed::cleanup_stale(&prefix).unwrap();
    assert_eq!(removed, std::slice::from_ref(&name));
    assert!(!netns_exists(&name));
    assert!(
        TestBed::cleanup_stale("sk").is_err(),
        "short prefixes are refused"
    );
}

#[test]
fn bad_pods_are_refused() {
    require_root();
    let _lock = serial();
    let mut bed = TestBed::new().unwrap();
    let ip = Some(v4("10.244.3.3"));
    assert!(bed
        .add_pod("p", "an-interface-name-too-long", ip, None)
        .is_err());
    assert!(bed.add_pod("bad name", "skd0", ip, None).is_err());
    assert!(bed.add_pod("p", "skd0", None, None).is_err());
    bed.add_pod("p", "skd0", ip, None).unwrap();
    assert!(bed
        .add_pod("q", "skd0", Some(v4("10.244.3.4")), None)
        .is_err());
    assert!(bed.add_pod("q", "skd1", ip, None).is_err());
    assert_eq!(bed.pods().len(), 1);
}

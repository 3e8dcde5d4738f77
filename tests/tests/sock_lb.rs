//! The socket-level service path on the real kernel, without the agent: the programs are
//! loaded and attached to a test cgroup (never the machine's root cgroup), and `skiff-probe`
//! processes in the node namespace of a test bed, inside or outside that cgroup, talk to
//! ClusterIPs. No packet program is attached: whatever reaches a backend was translated at
//! the socket. Needs root; fails, never skips.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use dataplane_common::Reason;
use skiff::bpf::{pins::PinDir, socklb::SockLb, writer::Writer, Datapath};
use skiff::desired::{
    BackendAddr, DesiredState, Frontend, FrontendEntry, Protocol, ServicePortRef,
};
use skiff_testbed::{
    ip_batch, require_root, run_probe, serial, tcp_server, udp_server, Pod, ProbeMode,
    ProbeOutcome, Server, TestBed, TestCgroup,
};

const PROBE: &str = env!("CARGO_BIN_EXE_skiff-probe");
const VIP: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
/// A service port without endpoints.
const EMPTY: &str = "10.96.0.11";
const EMPTY6: &str = "fd00:96::11";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Bed {
    // Field order is drop order: probes are done, servers stop, then the namespaces go.
    _servers: Vec<Server>,
    bed: TestBed,
    backends: Vec<Pod>,
}

/// A node namespace with addresses of its own (so host sockets have a source address) and
/// two backend pods serving TCP 8080 (replying their name) and UDP 5353.
fn bed() -> Bed {
    let mut bed = TestBed::new().unwrap();
    ip_batch(
        bed.node(),
        &[
            "addr add 192.0.2.1/32 dev lo".into(),
            "addr add 2001:db8::1/128 dev lo nodad".into(),
        ],
    )
    .unwrap();
    let mut servers = Vec::new();
    let mut backends = Vec::new();
    for i in 0..2 {
        let pod = bed
            .add_pod(
                &format!("be{i}"),
                &format!("skd{i}"),
                Some(format!("10.244.1.{}", 11 + i).parse().unwrap()),
                Some(format!("fd00:244:1::{}", 11 + i).parse().unwrap()),
            )
            .unwrap();
        for any in [ip("0.0.0.0"), ip("::")] {
            servers.push(tcp_server(pod.ns(), any, 8080, &pod.name).unwrap());
            servers.push(udp_server(pod.ns(), any, 5353, &pod.name).unwrap());
        }
        backends.push(pod);
    }
    Bed {
        _servers: servers,
        bed,
        backends,
    }
}

fn entry(name: &str, backends: Vec<BackendAddr>) -> FrontendEntry {
    FrontendEntry {
        service: ServicePortRef {
            namespace: "sock".into(),
            name: name.into(),
            port_name: String::new(),
        },
        backends,
    }
}

/// TCP 80 -> 8080 and UDP 53 -> 5353 on VIP and VIP6 over both backends; EMPTY and EMPTY6
/// without endpoints.
fn desired(backends: &[Pod]) -> DesiredState {
    let mut d = DesiredState::default();
    for (vip, v6) in [(VIP, false), (VIP6, true)] {
        for (port, target, proto) in [(80, 8080, Protocol::Tcp), (53, 5353, Protocol::Udp)] {
            let bes = backends
                .iter()
                .map(|p| BackendAddr {
                    addr: if v6 {
                        IpAddr::V6(p.ipv6.unwrap())
                    } else {
                        IpAddr::V4(p.ipv4.unwrap())
                    },
                    port: target,
                    proto,
                })
                .collect();
            let fe = Frontend {
                addr: ip(vip),
                port,
                proto,
            };
            d.frontends.insert(fe, entry("web", bes));
        }
    }
    for empty in [EMPTY, EMPTY6] {
        for (port, proto) in [(80, Protocol::Tcp), (53, Protocol::Udp)] {
            let fe = Frontend {
                addr: ip(empty),
                port,
                proto,
            };
            d.frontends.insert(fe, entry("empty", vec![]));
        }
    }
    d
}

fn load(d: &DesiredState, pins: Option<&PinDir>) -> Datapath {
    let mut dp = Datapath::load_with(pins).expect("loading the eBPF programs (needs root)");
    Writer::new(&dp.maps)
        .unwrap()
        .sync(&mut dp.maps, d)
        .unwrap();
    dp
}

fn count(dp: &Datapath, r: Reason) -> u64 {
    dp.maps.stats().unwrap()[&r]
}

fn probe(
    cg: Option<&Path>,
    ns: &str,
    mode: ProbeMode,
    addr: &str,
    port: u16,
    n: usize,
) -> Vec<ProbeOutcome> {
    run_probe(Path::new(PROBE), cg, ns, mode, ip(addr), port, n).unwrap()
}

/// Replies per backend; panics on any failure, or when `from`/`peer` is not `expect`.
fn tally(
    outcomes: &[ProbeOutcome],
    expect_from: Option<&str>,
    expect_peer: Option<&str>,
) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for o in outcomes {
        match o {
            ProbeOutcome::Ok { reply, from, peer } => {
                assert_eq!(from.as_deref(), expect_from, "answer's source: {o:?}");
                assert_eq!(peer.as_deref(), expect_peer, "getpeername: {o:?}");
                *t.entry(reply.clone()).or_default() += 1;
            }
            other => panic!("probe failed: {other:?} (all: {outcomes:?})"),
        }
    }
    t
}

fn assert_spread(t: &BTreeMap<String, usize>, what: &str) {
    let names: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(names, ["be0", "be1"], "{what}: {t:?}");
}

#[test]
fn local_sockets_in_the_cgroup_reach_clusterips_and_see_the_service_address() {
    require_root();
    let _lock = serial();
    let b = bed();
    let cg = TestCgroup::new().unwrap();
    let mut dp = load(&desired(&b.backends), None);
    let _lb = SockLb::attach(&mut dp, cg.path(), None).unwrap();
    let node = b.bed.node();
    let c = Some(cg.path());

    // TCP over v4, v6 and an IPv6 socket's IPv4-mapped address: spread over both backends,
    // and getpeername() names the service.
    let t = tally(
        &probe(c, node, ProbeMode::Tcp, VIP, 80, 24),
        None,
        Some("10.96.0.10:80"),
    );
    assert_spread(&t, "tcp v4");
    let t = tally(
        &probe(c, node, ProbeMode::Tcp, VIP6, 80, 24),
        None,
        Some("[fd00:96::10]:80"),
    );
    assert_spread(&t, "tcp v6");
    let t = tally(
        &probe(c, node, ProbeMode::Tcp, "::ffff:10.96.0.10", 80, 24),
        None,
        Some("[::ffff:10.96.0.10]:80"),
    );
    assert_spread(&t, "tcp v4-mapped on an IPv6 socket");

    // UDP: answers come from the service address (recvmsg rewrite), unconnected or
    // connected; fresh sockets spread, one reused unconnected socket keeps its backend.
    let t = tally(
        &probe(c, node, ProbeMode::Udp, VIP, 53, 24),
        Some("10.96.0.10:53"),
        None,
    );
    assert_spread(&t, "udp v4");
    let t = tally(
        &probe(c, node, ProbeMode::Udp, VIP6, 53, 24),
        Some("[fd00:96::10]:53"),
        None,
    );
    assert_spread(&t, "udp v6");
    let t = tally(
        &probe(c, node, ProbeMode::UdpConnected, VIP, 53, 8),
        Some("10.96.0.10:53"),
        Some("10.96.0.10:53"),
    );
    assert_eq!(t.values().sum::<usize>(), 8, "connected udp v4: {t:?}");
    let t = tally(
        &probe(c, node, ProbeMode::UdpConnected, VIP6, 53, 8),
        Some("[fd00:96::10]:53"),
        Some("[fd00:96::10]:53"),
    );
    assert_eq!(t.values().sum::<usize>(), 8, "connected udp v6: {t:?}");
    let t = tally(
        &probe(c, node, ProbeMode::UdpReuse, VIP, 53, 16),
        Some("10.96.0.10:53"),
        None,
    );
    assert_eq!(
        t.len(),
        1,
        "one socket's datagrams stay on one backend: {t:?}"
    );

    assert!(count(&dp, Reason::SockNat) >= 24 * 5 + 8 * 2 + 16);
    assert!(count(&dp, Reason::SockRevNat) >= 24 * 5 + 8 * 2 + 16);
}

#[test]
fn services_without_endpoints_refuse_at_once() {
    require_root();
    let _lock = serial();
    let b = bed();
    let cg = TestCgroup::new().unwrap();
    let mut dp = load(&desired(&b.backends), None);
    let _lb = SockLb::attach(&mut dp, cg.path(), None).unwrap();
    let node = b.bed.node();
    let started = Instant::now();
    let mut refusals = 0;
    for (mode, addr, port) in [
        (ProbeMode::Tcp, EMPTY, 80),
        (ProbeMode::Tcp, EMPTY6, 80),
        (ProbeMode::Udp, EMPTY, 53),
        (ProbeMode::UdpConnected, EMPTY6, 53),
    ] {
        for o in probe(Some(cg.path()), node, mode, addr, port, 2) {
            match o {
                ProbeOutcome::Err { os: Some(111), .. } => refusals += 1,
                other => panic!("{mode:?} {addr}: expected ECONNREFUSED, got {other:?}"),
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusals took {:?}",
        started.elapsed()
    );
    assert_eq!(count(&dp, Reason::DropSockNoEndpoints), refusals);
}

#[test]
fn sockets_outside_the_cgroup_are_not_translated() {
    require_root();
    let _lock = serial();
    let b = bed();
    let cg = TestCgroup::new().unwrap();
    let mut dp = load(&desired(&b.backends), None);
    let _lb = SockLb::attach(&mut dp, cg.path(), None).unwrap();
    let node = b.bed.node();
    let before = count(&dp, Reason::SockNat);
    // Without a hook the ClusterIP is just an address nobody owns: no answer.
    for (mode, addr, port) in [(ProbeMode::Tcp, VIP, 80), (ProbeMode::Udp, VIP6, 53)] {
        for o in probe(None, node, mode, addr, port, 1) {
            assert!(
                matches!(o, ProbeOutcome::Err { .. }),
                "{mode:?} {addr} from outside the cgroup got {o:?}"
            );
        }
    }
    assert_eq!(count(&dp, Reason::SockNat), before);
    // The same probe inside the cgroup is translated.
    let t = tally(
        &probe(Some(cg.path()), node, ProbeMode::Tcp, VIP, 80, 4),
        None,
        Some("10.96.0.10:80"),
    );
    assert_eq!(t.values().sum::<usize>(), 4);
    assert_eq!(count(&dp, Reason::SockNat), before + 4);
}

#[test]
fn pinned_links_survive_the_loader_and_are_adopted_then_detached() {
    require_root();
    let _lock = serial();
    let b = bed();
    let cg = TestCgroup::new().unwrap();
    let bpffs = std::env::temp_dir().join(format!("skiff-sockpins-{}", std::process::id()));
    std::fs::create_dir_all(&bpffs).unwrap();
    assert!(std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&bpffs)
        .status()
        .unwrap()
        .success());
    let unmount = scopeguard(&bpffs);
    let pins = PinDir::open(bpffs.join("skiff")).unwrap();
    let d = desired(&b.backends);
    let node = b.bed.node();
    let c = Some(cg.path());

    // First "agent": attach with pins, then go away entirely.
    {
        let mut dp = load(&d, Some(&pins));
        SockLb::attach(&mut dp, cg.path(), Some(&pins)).unwrap();
    }
    let links = |pins: &PinDir| {
        pins.links()
            .unwrap()
            .into_iter()
            .filter(|p| p.hook.starts_with("sock-"))
            .count()
    };
    assert_eq!(links(&pins), 8);
    let first = link_ids(&pins);
    // Nothing of ours runs, yet the pinned links keep translating.
    let t = tally(
        &probe(c, node, ProbeMode::Tcp, VIP, 80, 4),
        None,
        Some("10.96.0.10:80"),
    );
    assert_eq!(t.values().sum::<usize>(), 4);

    // Second "agent": adopts the links (program swapped in place, no new links).
    let mut dp = load(&d, Some(&pins));
    let before = count(&dp, Reason::SockNat);
    let lb = SockLb::attach(&mut dp, cg.path(), Some(&pins)).unwrap();
    assert_eq!(links(&pins), 8);
    let second = link_ids(&pins);
    for (pin, (link, prog)) in &second {
        let (old_link, old_prog) = first[pin];
        assert_eq!(*link, old_link, "{pin}: the same link, adopted");
        assert_ne!(*prog, old_prog, "{pin}: running the new program");
    }
    for name in skiff::bpf::socklb::SOCK_PROGRAMS {
        let id = dp.sock_program(name).unwrap().info().unwrap().id();
        assert!(
            second.values().any(|(_, prog)| *prog == id),
            "{name} (id {id}) runs on no link: {second:?}"
        );
    }
    let t = tally(
        &probe(c, node, ProbeMode::Tcp, VIP, 80, 4),
        None,
        Some("10.96.0.10:80"),
    );
    assert_eq!(t.values().sum::<usize>(), 4);
    // Exactly one translation per connection: no second (unadopted) link is attached.
    assert_eq!(count(&dp, Reason::SockNat), before + 4);

    // Detaching for good removes the pins, and with them the hooks.
    lb.detach();
    drop(dp);
    assert_eq!(links(&pins), 0);
    for o in probe(c, node, ProbeMode::Tcp, VIP, 80, 1) {
        assert!(matches!(o, ProbeOutcome::Err { .. }), "after detach: {o:?}");
    }
    skiff::bpf::pins::remove_all(pins.root()).unwrap();
    drop(unmount);
}

/// Pin file name -> (link id, program id) of the socket-level links.
fn link_ids(pins: &PinDir) -> BTreeMap<String, (u32, u32)> {
    pins.links()
        .unwrap()
        .into_iter()
        .filter(|p| p.hook.starts_with("sock-"))
        .map(|p| {
            let link = aya::programs::links::FdLink::from(
                aya::programs::links::PinnedLink::from_pin(&p.path).unwrap(),
            );
            let info = link.info().unwrap();
            (p.hook.clone(), (info.id(), info.program_id()))
        })
        .collect()
}

/// Unmounts and removes the directory on drop.
struct Unmount(std::path::PathBuf);

fn scopeguard(p: &Path) -> Unmount {
    Unmount(p.to_path_buf())
}

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

//! `status_report` against real kernel objects: the datapath loaded into this kernel, its maps
//! programmed and pinned in a private bpffs, programs attached to a veth pair with pinned
//! links, and a status file. Needs root (CI runs as root); without it this test fails, it
//! never skips.

use std::ffi::CString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aya::maps::IterableMap as _;
use aya::programs::links::FdLink;
use aya::programs::{TcAttachType, XdpMode};
use dataplane_common::maps::{
    AFFINITY, AFFINITY_MAX, BACKENDS, BACKENDS_MAX, CONNTRACK, CONNTRACK_MAX, POLICY_CONNTRACK,
    POLICY_ENDPOINTS, POLICY_ENDPOINTS_MAX, POLICY_RULES, POLICY_RULES_MAX, SERVICES, SERVICES_MAX,
    STATS, STATS_MAX,
};
use dataplane_common::Reason;
use skiff::bpf::testrun::{self, Hook as RunHook};
use skiff::bpf::{writer::Writer, Datapath};
use skiff::desired::{
    BackendAddr, DesiredState, Frontend, FrontendEntry, Protocol, ServicePortRef,
};
use skiff::packet::{self, FlowSpec, L4Proto, TCP_SYN};
use skiff::status::{
    status_path, status_report, AgentState, AgentStatus, Attached, Hook, Probe, Source,
};

/// A private bpffs mounted on a fresh temporary directory, unmounted and removed on drop (also
/// when the test panics).
struct Bpffs {
    dir: PathBuf,
}

impl Bpffs {
    fn mount(tag: &str) -> Bpffs {
        let dir = std::env::temp_dir().join(format!("skiff-bpffs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = CString::new(dir.to_str().unwrap()).unwrap();
        let fstype = CString::new("bpf").unwrap();
        // SAFETY: valid NUL-terminated strings; no mount data.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount -t bpf bpf {} (this test needs root): {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        Bpffs { dir }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path. MNT_DETACH: objects we still hold open must not
        // keep the mount (and the test's temporary directory) alive.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A veth pair, deleted on drop.
struct Veth {
    a: String,
    b: String,
}

impl Veth {
    fn create() -> Veth {
        let id = std::process::id() % 1_000_000;
        let v = Veth {
            a: format!("skst{id}a"),
            b: format!("skst{id}b"),
        };
        let out = Command::new("ip")
            .args(["link", "add", &v.a, "type", "veth", "peer", "name", &v.b])
            .output()
            .expect("running ip");
        assert!(
            out.status.success(),
            "ip link add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        v
    }

    fn delete(&self) {
        // Deleting one end removes the pair.
        let _ = Command::new("ip").args(["link", "del", &self.a]).output();
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        self.delete();
    }
}

fn ifindex(name: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn desired() -> DesiredState {
    let mut d = DesiredState::default();
    let entries = [
        (
            "10.96.0.10",
            53,
            Protocol::Udp,
            vec!["10.0.1.2", "10.0.1.3"],
        ),
        (
            "10.96.0.20",
            80,
            Protocol::Tcp,
            vec!["10.0.2.2", "10.0.2.3", "10.0.2.4"],
        ),
        ("fd00::20", 443, Protocol::Tcp, vec!["fd01::2"]),
    ];
    for (addr, port, proto, backends) in entries {
        d.frontends.insert(
            Frontend {
                addr: ip(addr),
                port,
                proto,
            },
            FrontendEntry {
                service: ServicePortRef {
                    namespace: "default".into(),
                    name: format!("svc-{port}"),
                    port_name: String::new(),
                },
                backends: backends
                    .into_iter()
                    .map(|b| BackendAddr {
                        addr: ip(b),
                        port: 8080,
                        proto,
                    })
                    .collect(),
            },
        );
    }
    d
}

fn usage(report: &skiff::status::StatusReport, name: &str) -> (Option<u64>, u32) {
    let m = report.maps.iter().find(|m| m.name == name).unwrap();
    match &m.usage {
        Probe::Read(u) => {
            assert!(!u.approximate, "{name}: approximate count");
            (u.entries, u.capacity)
        }
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn status_reports_the_pinned_state_of_a_loaded_datapath() {
    let fs = Bpffs::mount("status");
    let root = fs.dir.join("skiff");
    let maps_dir = root.join("maps");
    let links_dir = root.join("links");
    std::fs::create_dir_all(&maps_dir).unwrap();
    std::fs::create_dir_all(&links_dir).unwrap();
    let state_dir = tempdir("state");

    // Before anything is there: reported, not an error.
    let empty = status_report(&root, &state_dir).unwrap();
    assert_eq!(empty.maps_pinned(), 0);
    assert_eq!(empty.agent, AgentState::NoStatusFile);

    let mut dp = Datapath::load().expect("loading the eBPF programs (this test needs root)");
    let d = desired();
    let mut w = Writer::new(&dp.maps).unwrap();
    let sync = w.sync(&mut dp.maps, &d).unwrap();

    // One new TCP connection through the pod hook: conntrack entries and a NatNew count.
    let mut syn = FlowSpec::new(L4Proto::Tcp, ip("10.0.9.9"), 40_000, ip("10.96.0.20"), 80);
    syn.tcp_flags = TCP_SYN;
    let out = testrun::run(&mut dp, RunHook::TcPod, &packet::build_frame(&syn).unwrap()).unwrap();
    assert_eq!(out.reason, Some(Reason::NatNew));

    let services = dp.maps.read_services().unwrap().len() as u64;
    let backends = dp.maps.read_backends().unwrap().len() as u64;
    let conntrack = dp.maps.conntrack_entries().unwrap().len() as u64;
    let stats = dp.maps.stats().unwrap();
    // 3 masters + 6 slots; 6 distinct backends.
    assert_eq!((services, backends), (9, 6));
    assert!(conntrack >= 1);

    // The typed handles' own `pin(self)` consumes them; pinning through the MapData keeps
    // `dp.maps` usable.
    dp.maps.services.map().pin(maps_dir.join(SERVICES)).unwrap();
    dp.maps.backends.map().pin(maps_dir.join(BACKENDS)).unwrap();
    dp.maps
        .conntrack
        .map()
        .pin(maps_dir.join(CONNTRACK))
        .unwrap();
    dp.maps.stats.map().pin(maps_dir.join(STATS)).unwrap();
    dp.maps.affinity.map().pin(maps_dir.join(AFFINITY)).unwrap();
    dp.maps
        .policy_endpoints
        .map()
        .pin(maps_dir.join(POLICY_ENDPOINTS))
        .unwrap();
    dp.maps
        .policy_rules
        .map()
        .pin(maps_dir.join(POLICY_RULES))
        .unwrap();
    dp.maps
        .policy_conntrack
        .map()
        .pin(maps_dir.join(POLICY_CONNTRACK))
        .unwrap();

    // Real attachments with pinned links, named as the agent names them.
    let veth = Veth::create();
    let (idx_a, idx_b) = (ifindex(&veth.a), ifindex(&veth.b));
    let tc_pin = format!("tc-ingress:{idx_a}:{}", veth.a);
    let xdp_pin = format!("xdp:{idx_b}:{}", veth.b);
    let tc = dp.tc_pod();
    let id = tc.attach(&veth.a, TcAttachType::Ingress).unwrap();
    let link = FdLink::try_from(tc.take_link(id).unwrap()).unwrap();
    let _tc_link = link.pin(links_dir.join(&tc_pin)).unwrap();
    let xdp = dp.xdp_ext();
    let id = xdp.attach(&veth.b, XdpMode::Skb).unwrap();
    let link = FdLink::try_from(xdp.take_link(id).unwrap()).unwrap();
    let _xdp_link = link.pin(links_dir.join(&xdp_pin)).unwrap();

    let mut status = AgentStatus::new(Source::Manifests("/etc/skiff/manifests".into()));
    status.synced(Duration::from_micros(2_500), sync.ops, d.frontends.len());
    status.attached = vec![
        Attached {
            iface: veth.a.clone(),
            hook: Hook::TcIngress,
            mode: "tcx".into(),
        },
        Attached {
            iface: veth.b.clone(),
            hook: Hook::Xdp,
            mode: "generic".into(),
        },
    ];
    status.write_atomic(&status_path(&state_dir)).unwrap();

    let report = status_report(&root, &state_dir).unwrap();
    let text = report.to_string();
    println!("{text}");

    assert_eq!(usage(&report, SERVICES), (Some(services), SERVICES_MAX));
    assert_eq!(usage(&report, BACKENDS), (Some(backends), BACKENDS_MAX));
    assert_eq!(usage(&report, CONNTRACK), (Some(conntrack), CONNTRACK_MAX));
    assert_eq!(usage(&report, STATS), (None, STATS_MAX));
    // No service here has session affinity.
    assert_eq!(usage(&report, AFFINITY), (Some(0), AFFINITY_MAX));
    // No pods or policies here; the one translated packet left no pod's policy entry either.
    assert_eq!(
        usage(&report, POLICY_ENDPOINTS),
        (Some(0), POLICY_ENDPOINTS_MAX)
    );
    assert_eq!(usage(&report, POLICY_RULES), (Some(0), POLICY_RULES_MAX));
    assert_eq!(report.maps_pinned(), 8);
    assert_eq!(report.packets, Probe::Read(stats.clone()));
    assert_eq!(stats[&Reason::NatNew], 1);

    match &report.agent {
        AgentState::Reported {
            status: s,
            process_alive,
        } => {
            assert!(process_alive, "this process wrote the status");
            assert_eq!(s, &status);
        }
        other => panic!("{other:?}"),
    }

    assert_eq!(report.links.len(), 2, "{:?}", report.links);
    assert_eq!(report.links_live(), 2, "{:?}", report.links);
    let tc_report = report.links.iter().find(|l| l.pin == tc_pin).unwrap();
    assert_eq!(tc_report.hook, Some(Hook::TcIngress));
    assert_eq!(tc_report.ifindex, Some(idx_a));
    assert_eq!(tc_report.iface, veth.a);
    assert_eq!(tc_report.iface_now, Some(Some(veth.a.clone())));
    assert_eq!(tc_report.kernel.as_ref().unwrap().link_type, "tcx");
    let xdp_report = report.links.iter().find(|l| l.pin == xdp_pin).unwrap();
    assert_eq!(xdp_report.hook, Some(Hook::Xdp));
    assert_eq!(xdp_report.kernel.as_ref().unwrap().link_type, "xdp");

    for name in [
        SERVICES,
        BACKENDS,
        CONNTRACK,
        AFFINITY,
        STATS,
        POLICY_ENDPOINTS,
        POLICY_RULES,
        POLICY_CONNTRACK,
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    let svc_line = text.lines().find(|l| l.contains(SERVICES)).unwrap();
    assert!(
        svc_line.contains(&services.to_string()) && svc_line.contains(&SERVICES_MAX.to_string()),
        "{svc_line}"
    );
    assert!(text.contains("Loaded:    yes (8 maps pinned)"), "{text}");
    assert!(
        text.contains("Attached:  2 live of 2 pinned links"),
        "{text}"
    );
    assert!(
        text.contains(&format!("running (pid {})", std::process::id())),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} changes, 3 frontends", sync.ops)),
        "{text}"
    );
    assert!(
        text.contains("source manifests:/etc/skiff/manifests"),
        "{text}"
    );
    let nat_line = text
        .lines()
        .find(|l| l.contains("nat_new_connection"))
        .unwrap();
    assert!(
        nat_line.contains("translate") && nat_line.trim_end().ends_with(" 1"),
        "{nat_line}"
    );

    // The interfaces vanish while the pins stay: the report says so.
    veth.delete();
    let report = status_report(&root, &state_dir).unwrap();
    let tc_report = report.links.iter().find(|l| l.pin == tc_pin).unwrap();
    assert_eq!(tc_report.iface_now, Some(None));
    assert!(report.to_string().contains("interface gone"));

    // Unpinning the maps (as `cleanup` does) leaves a report of nothing pinned.
    for name in [
        SERVICES,
        BACKENDS,
        CONNTRACK,
        AFFINITY,
        STATS,
        POLICY_ENDPOINTS,
        POLICY_RULES,
        POLICY_CONNTRACK,
    ] {
        std::fs::remove_file(maps_dir.join(name)).unwrap();
    }
    let report = status_report(&root, &state_dir).unwrap();
    assert_eq!(report.maps_pinned(), 0);
    assert_eq!(report.packets, Probe::Absent);
    std::fs::remove_dir_all(&state_dir).unwrap();
}

fn tempdir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir =
        std::env::temp_dir().join(format!("skiff-status-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn an_unreadable_directory_is_an_error() {
    // A regular file where the bpffs directory should be cannot be listed.
    let dir = tempdir("unreadable");
    let not_a_dir = dir.join("skiff");
    std::fs::write(&not_a_dir, b"").unwrap();
    let err = status_report(&not_a_dir, &dir).unwrap_err();
    assert!(
        err.to_string().contains(&*not_a_dir.to_string_lossy()),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!Path::new(&dir).exists());
}

//! End to end: the real `skiff run` agent with the socket-level path attached to a test
//! cgroup (`cgroupPath`, never the machine's root cgroup), and host processes of the node
//! namespace in that cgroup reaching ClusterIP services over TCP and UDP, IPv4 and IPv6,
//! spread over the backends, across an agent restart. Needs root; fails, never skips.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_testbed::{
    ip_batch, require_root, run_probe, serial, skiff_bin, tcp_server, udp_server, Pod,
    PrivateBpffs, ProbeMode, ProbeOutcome, Process, Server, TestBed, TestCgroup,
};

const PROBE: &str = env!("CARGO_BIN_EXE_skiff-probe");
const VIP: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A dual-stack service `web` (TCP 80 -> 8080, UDP 53 -> 5353) over `pods`.
fn manifests(pods: &[Pod]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: e2e}}\n\
         spec:\n  clusterIP: {VIP}\n  clusterIPs: [{VIP}, \"{VIP6}\"]\n  ipFamilies: [IPv4, IPv6]\n  \
         ipFamilyPolicy: PreferDualStack\n  ports:\n  \
         - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}\n  \
         - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}\n"
    );
    for (family, addrs) in [
        (
            "IPv4",
            pods.iter()
                .map(|p| p.ipv4.unwrap().to_string())
                .collect::<Vec<_>>(),
        ),
        (
            "IPv6",
            pods.iter().map(|p| p.ipv6.unwrap().to_string()).collect(),
        ),
    ] {
        y += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata:\n  name: web-{}\n  namespace: e2e\n  labels: {{kubernetes.io/service-name: web}}\n\
             addressType: {family}\nports:\n- {{name: http, port: 8080, protocol: TCP}}\n\
             - {{name: dns, port: 5353, protocol: UDP}}\nendpoints:\n",
            family.to_lowercase()
        );
        for a in addrs {
            y += &format!(
                "- addresses: [\"{a}\"]\n  conditions: {{ready: true}}\n  nodeName: e2e-node\n"
            );
        }
    }
    y
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn probe(
    cg: &Path,
    ns: &str,
    mode: ProbeMode,
    addr: &str,
    port: u16,
    n: usize,
) -> Vec<ProbeOutcome> {
    run_probe(Path::new(PROBE), Some(cg), ns, mode, ip(addr), port, n).unwrap()
}

/// Replies per backend; panics on failures or on a source/peer other than the service's.
fn tally(outcomes: &[ProbeOutcome], service: &str) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for o in outcomes {
        match o {
            ProbeOutcome::Ok { reply, from, peer } => {
                let shown = from.as_deref().or(peer.as_deref());
                assert_eq!(shown, Some(service), "{o:?}");
                *t.entry(reply.clone()).or_default() += 1;
            }
            other => panic!("probe failed: {other:?}"),
        }
    }
    t
}

/// Waits (at most 15 s) until a host process gets an answer through the ClusterIP.
fn wait_translated(cg: &Path, ns: &str, agent: &mut Process) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(agent.is_running(), "the agent exited");
        let o = probe(cg, ns, ProbeMode::Tcp, VIP, 80, 1);
        if matches!(o.first(), Some(ProbeOutcome::Ok { .. })) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no translation within 15 s: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (link id, program id) of the pinned connect4 link (`links/sock-skiff_conn4:0:<cgroup>`).
fn connect4_link(pin_dir: &Path) -> (u32, u32) {
    let pin = std::fs::read_dir(pin_dir.join("links"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("sock-skiff_conn4:"))
        })
        .expect("a pinned connect4 link");
    let link = aya::programs::links::FdLink::from(
        aya::programs::links::PinnedLink::from_pin(&pin).unwrap(),
    );
    let info = link.info().unwrap();
    (info.id(), info.program_id())
}

#[test]
fn host_processes_reach_clusterips_through_the_agents_socket_level_path() {
    require_root();
    let _lock = serial();
    let mut bed = TestBed::new().unwrap();
    // The node's own addresses, so host sockets have a source.
    ip_batch(
        bed.node(),
        &[
            "addr add 192.0.2.1/32 dev lo".into(),
            "addr add 2001:db8::1/128 dev lo nodad".into(),
        ],
    )
    .unwrap();
    let mut servers: Vec<Server> = Vec::new();
    let mut pods = Vec::new();
    for i in 0..3 {
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
        pods.push(pod);
    }
    let cg = TestCgroup::new().unwrap();
    let scratch =
        Scratch(std::env::temp_dir().join(format!("skiff-e2e-sock-{}", std::process::id())));
    let dir = scratch.0.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("web.yaml"), manifests(&pods)).unwrap();
    let config = scratch.0.join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "nodeName: e2e-node\nnodeIPs: [192.0.2.1, \"2001:db8::1\"]\n\
             clusterCIDRs: [10.244.0.0/16, \"fd00:244::/32\"]\n\
             serviceCIDRs: [10.96.0.0/16, \"fd00:96::/108\"]\npodInterfaces: [\"skd*\"]\n\
             cgroupPath: {}\n",
            cg.path().display()
        ),
    )
    .unwrap();
    let bpffs = PrivateBpffs::mount(scratch.0.join("bpffs"), skiff_bin()).unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        "run".into(),
        "--config".into(),
        config.into(),
        "--manifests".into(),
        dir.into(),
        "--poll-ms".into(),
        "100".into(),
        "--bpffs".into(),
        bpffs.pin_dir().into(),
    ];
    let spawn = |bed: &TestBed| {
        bed.spawn(bed.node(), skiff_bin().into_os_string(), &args)
            .unwrap()
    };
    let node = bed.node().to_string();
    let mut agent = spawn(&bed);
    wait_translated(cg.path(), &node, &mut agent);

    let spread = |t: &BTreeMap<String, usize>, what: &str| {
        let names: Vec<&str> = t.keys().map(String::as_str).collect();
        assert_eq!(names, ["be0", "be1", "be2"], "{what}: {t:?}");
    };
    let t = tally(
        &probe(cg.path(), &node, ProbeMode::Tcp, VIP, 80, 45),
        "10.96.0.10:80",
    );
    spread(&t, "tcp v4");
    let t = tally(
        &probe(cg.path(), &node, ProbeMode::Tcp, VIP6, 80, 45),
        "[fd00:96::10]:80",
    );
    spread(&t, "tcp v6");
    let t = tally(
        &probe(cg.path(), &node, ProbeMode::Udp, VIP, 53, 45),
        "10.96.0.10:53",
    );
    spread(&t, "udp v4");
    let t = tally(
        &probe(cg.path(), &node, ProbeMode::Udp, VIP6, 53, 45),
        "[fd00:96::10]:53",
    );
    spread(&t, "udp v6");

    // Restart: the pinned links keep translating while no agent runs, and the new agent
    // adopts them (same link, its own program).
    let (link, prog) = connect4_link(&bpffs.pin_dir());
    agent.stop().unwrap();
    let t = tally(
        &probe(cg.path(), &node, ProbeMode::Tcp, VIP, 80, 6),
        "10.96.0.10:80",
    );
    assert_eq!(t.values().sum::<usize>(), 6, "with no agent running: {t:?}");
    let mut agent = spawn(&bed);
    let deadline = Instant::now() + Duration::from_secs(15);
    while connect4_link(&bpffs.pin_dir()).1 == prog {
        assert!(agent.is_running(), "the restarted agent exited");
        assert!(
            Instant::now() < deadline,
            "the restarted agent did not adopt the link"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        connect4_link(&bpffs.pin_dir()).0,
        link,
        "adopted, not re-created"
    );
    let t = tally(
        &probe(cg.path(), &node, ProbeMode::Tcp, VIP, 80, 30),
        "10.96.0.10:80",
    );
    spread(&t, "tcp v4 after the restart");
    agent.stop().unwrap();
    // `skiff cleanup` (PrivateBpffs' drop) detaches; then the cgroup can go.
    drop(bpffs);
    drop(cg);
    drop(servers);
    bed.teardown().unwrap();
    drop(scratch);
}

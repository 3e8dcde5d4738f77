//! End to end: the real `skiff run` agent in a node namespace, pods behind veths, and real
//! TCP/UDP connections from a client pod to ClusterIPs. Needs root; fails, never skips.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use skiff::bpf::netlink::XdpAttached;
use skiff::status::Hook;
use skiff_testbed::{
    require_root, serial, skiff_bin, tcp_connect_once, tcp_echo_server, tcp_round, tcp_server,
    udp_round, udp_server, LongLivedClient, Pod, PrivateBpffs, Process, Server, TempDir, TestBed,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const VIP: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A ClusterIP service with one port (name `p`) and its EndpointSlices (IPv4 and IPv6).
fn service(
    name: &str,
    vip: &str,
    vip6: Option<&str>,
    port: u16,
    proto: &str,
    target: u16,
    endpoints: &[&Pod],
) -> String {
    let ips = match vip6 {
        Some(v6) => format!("[{vip}, \"{v6}\"]"),
        None => format!("[{vip}]"),
    };
    let families = if vip6.is_some() {
        "[IPv4, IPv6]"
    } else {
        "[IPv4]"
    };
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: e2e}}\n\
         spec:\n  clusterIP: {vip}\n  clusterIPs: {ips}\n  ipFamilies: {families}\n  \
         ipFamilyPolicy: PreferDualStack\n  ports:\n  - {{name: p, port: {port}, protocol: {proto}, targetPort: {target}}}\n"
    );
    for (family, addr) in [
        (
            "IPv4",
            endpoints
                .iter()
                .filter_map(|p| p.ipv4.map(IpAddr::V4))
                .collect::<Vec<_>>(),
        ),
        (
            "IPv6",
            endpoints
                .iter()
                .filter_map(|p| p.ipv6.map(IpAddr::V6))
                .collect::<Vec<_>>(),
        ),
    ] {
        if family == "IPv6" && vip6.is_none() {
            continue;
        }
        y += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata:\n  name: {name}-{}\n  namespace: e2e\n  labels: {{kubernetes.io/service-name: {name}}}\n\
             addressType: {family}\nports:\n- {{name: p, port: {target}, protocol: {proto}}}\nendpoints:{}\n",
            family.to_lowercase(),
            if addr.is_empty() { " []" } else { "" }
        );
        for a in addr {
            y += &format!(
                "- addresses: [\"{a}\"]\n  conditions: {{ready: true}}\n  nodeName: e2e-node\n"
            );
        }
    }
    y
}

/// Whether a node has a client outside the cluster, and which hook takes its traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum External {
    None,
    /// `externalInterfaces: [skx0]` with the default `externalIngress` (auto).
    Auto,
    /// Auto, on an MTU (9,000) that native veth XDP refuses: auto's fallback to TC ingress.
    AutoJumbo,
    /// `externalIngress: tc` too.
    Tc,
    /// `externalIngress: xdp` on the 9,000-byte MTU: refused, so no ingress program at all.
    XdpJumbo,
}

impl External {
    /// The hook, mode, kernel XDP state and link pin skx0's ingress must have (`None`: no
    /// ingress program).
    fn expected(self) -> (Option<(Hook, &'static str, &'static str)>, XdpAttached) {
        match self {
            External::AutoJumbo | External::Tc => (
                Some((Hook::TcExtIngress, "tcx", "tc-ext-ingress")),
                XdpAttached::None,
            ),
            External::XdpJumbo | External::None => (None, XdpAttached::None),
            External::Auto => (Some((Hook::Xdp, "native", "xdp")), XdpAttached::Driver),
        }
    }
}

/// The agent's node config.
fn node_config(external: External) -> String {
    format!(
        "nodeName: e2e-node\nnodeIPs: [192.0.2.1, \"2001:db8::1\"]\n\
         clusterCIDRs: [10.244.0.0/16, \"fd00:244::/32\"]\n\
         serviceCIDRs: [10.96.0.0/16, \"fd00:96::/108\"]\npodInterfaces: [\"skd*\"]\n{}",
        match external {
            External::None => "",
            External::Auto | External::AutoJumbo => "externalInterfaces: [skx0]\n",
            External::Tc => "externalInterfaces: [skx0]\nexternalIngress: tc\n",
            External::XdpJumbo => "externalInterfaces: [skx0]\nexternalIngress: xdp\n",
        }
    )
}

/// A node namespace running the agent, with a client pod and backend pods.
struct Node {
    bed: TestBed,
    // Field order is drop order: the agent and servers stop before the files go.
    manifests: PathBuf,
    agent: Process,
    agent_args: Vec<std::ffi::OsString>,
    client: Pod,
    backends: Vec<Pod>,
    _servers: Vec<Server>,
    // Pins are cleaned and the bpffs unmounted after the agent is gone, then the files go.
    bpffs: PrivateBpffs,
    scratch: TempDir,
}

impl Node {
    /// `n` backends (`be0`, `be1`, ...) serving TCP 8080 (replying their name), UDP 5353 and
    /// a TCP line echo on 9090, on IPv4 and IPv6.
    fn start(n: usize, initial: impl Fn(&[&Pod]) -> Vec<(String, String)>) -> Result<Node> {
        Node::start_opts(n, External::None, initial)
    }

    /// With `external`, also a client outside the cluster (`ext`, 198.51.100.7 and
    /// 2001:db8:7::7) whose node-side interface `skx0` is an `externalInterfaces` entry.
    fn start_opts(
        n: usize,
        external: External,
        initial: impl Fn(&[&Pod]) -> Vec<(String, String)>,
    ) -> Result<Node> {
        let mut bed = TestBed::new()?;
        let client = bed.add_pod(
            "client",
            "skdc",
            Some("10.244.1.5".parse()?),
            Some("fd00:244:1::5".parse()?),
        )?;
        let mut backends = Vec::new();
        let mut servers = Vec::new();
        for i in 0..n {
            let pod = bed.add_pod(
                &format!("be{i}"),
                &format!("skd{i}"),
                Some(format!("10.244.1.{}", 11 + i).parse()?),
                Some(format!("fd00:244:1::{}", 11 + i).parse()?),
            )?;
            for any in [ip("0.0.0.0"), ip("::")] {
                servers.push(tcp_server(pod.ns(), any, 8080, &pod.name)?);
                servers.push(udp_server(pod.ns(), any, 5353, &pod.name)?);
                servers.push(tcp_echo_server(pod.ns(), any, 9090, &pod.name)?);
            }
            backends.push(pod);
        }
        // <tmp>/node.yaml beside <tmp>/manifests/: the config is not a manifest.
        let scratch = TempDir::new("e2e");
        let manifests = scratch.join("manifests");
        std::fs::create_dir(&manifests)?;
        let refs: Vec<&Pod> = backends.iter().collect();
        for (file, yaml) in initial(&refs) {
            std::fs::write(manifests.join(file), yaml)?;
        }
        let config = scratch.join("node.yaml");
        std::fs::create_dir(scratch.join("state"))?;
        let bpffs = PrivateBpffs::mount(scratch.join("bpffs"), skiff_bin())?;
        let pin_dir = bpffs.pin_dir();
        if external != External::None {
            let ext = bed.add_pod(
                "ext",
                "skx0",
                Some("198.51.100.7".parse()?),
                Some("2001:db8:7::7".parse()?),
            )?;
            if matches!(external, External::AutoJumbo | External::XdpJumbo) {
                skiff_testbed::ip(Some(bed.node()), &["link", "set", "skx0", "mtu", "9000"])?;
                skiff_testbed::ip(Some(ext.ns()), &["link", "set", "eth0", "mtu", "9000"])?;
            }
        }
        std::fs::write(&config, node_config(external))?;
        let agent_args: Vec<std::ffi::OsString> = vec![
            skiff_bin().into(),
            "run".into(),
            "--config".into(),
            config.into(),
            "--manifests".into(),
            manifests.clone().into(),
            "--poll-ms".into(),
            "100".into(),
            "--bpffs".into(),
            pin_dir.into(),
            // status.json of this agent only (the default is the machine's /run/skiff).
            "--state-dir".into(),
            scratch.join("state").into(),
        ];
        let agent = bed.spawn(bed.node(), agent_args[0].clone(), &agent_args[1..])?;
        Ok(Node {
            bed,
            agent_args,
            scratch,
            manifests,
            agent,
            client,
            backends,
            _servers: servers,
            bpffs,
        })
    }

    fn write(&self, file: &str, yaml: &str) -> Result<()> {
        // Write then rename, so the agent never reads half a file.
        let tmp = self.scratch.join(format!("{file}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.manifests.join(file))?;
        Ok(())
    }

    fn remove(&self, file: &str) -> Result<()> {
        Ok(std::fs::remove_file(self.manifests.join(file))?)
    }

    fn dir(&self) -> &Path {
        &self.manifests
    }

    /// What the running agent reports attached (its status.json), once it reports `iface`.
    fn attached(&self, iface: &str) -> Result<Vec<skiff::status::Attached>> {
        let path = skiff::status::status_path(&self.scratch.join("state"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = skiff::status::AgentStatus::read(&path) {
                if s.pid == self.agent.pid() && s.attached.iter().any(|a| a.iface == iface) {
                    return Ok(s.attached);
                }
            }
            if Instant::now() > deadline {
                bail!("{} does not report {iface} within 10 s", path.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `skx0` takes traffic from outside with the hook `external` selects, and only with it:
    /// as the agent reports it, as the kernel runs it, and as the links are pinned.
    fn assert_external_hook(&self, external: External) -> Result<()> {
        let (want, xdp) = external.expected();
        // skx0 is reported as soon as its egress program is attached, ingress or not.
        let ingress: Vec<(Hook, String)> = self
            .attached("skx0")?
            .into_iter()
            .filter(|a| a.iface == "skx0" && a.hook != Hook::TcExtEgress)
            .map(|a| (a.hook, a.mode))
            .collect();
        let want_reported: Vec<(Hook, String)> = want
            .iter()
            .map(|(hook, mode, _)| (*hook, mode.to_string()))
            .collect();
        assert_eq!(ingress, want_reported, "{external:?}");
        let running = skiff_testbed::in_netns(self.bed.node(), || {
            // This thread's /sys is still the test's namespace's: ask the kernel by name.
            // SAFETY: a NUL-terminated name.
            let idx = unsafe { libc::if_nametoindex(c"skx0".as_ptr()) };
            anyhow::ensure!(idx != 0, "no skx0 in the node namespace");
            Ok(skiff::bpf::netlink::xdp_attached(idx)?)
        })?;
        assert_eq!(running, xdp, "XDP on skx0 with {external:?}");
        let mut pins: Vec<String> = std::fs::read_dir(self.bpffs.pin_dir().join("links"))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        pins.retain(|p| p.ends_with(":skx0") && !p.starts_with("tc-ext-egress:"));
        let pinned: Vec<&str> = pins.iter().filter_map(|p| p.split(':').next()).collect();
        let want_pinned: Vec<&str> = want.iter().map(|(_, _, pin)| *pin).collect();
        assert_eq!(
            pinned, want_pinned,
            "ingress links pinned on skx0: {pins:?}"
        );
        Ok(())
    }

    /// Restart the agent with `external` in its config.
    fn restart_with(&mut self, external: External) -> Result<()> {
        std::fs::write(self.scratch.join("node.yaml"), node_config(external))?;
        self.crash_and_restart_agent()
    }

    /// Wait until one connection to `addr:port` succeeds (the agent has synced and attached).
    fn wait_ready(&self, addr: IpAddr, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if tcp_round(self.client.ns(), addr, port, 1, Duration::from_millis(500))?.ok() == 1 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("no connection to {addr}:{port} through skiff within 20 s")
    }
}

impl Node {
    /// Wait until a line-echo connection to `addr:port` gets an echo.
    fn wait_echo(&self, addr: IpAddr, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(c) = LongLivedClient::start(
                self.client.ns(),
                addr,
                port,
                Duration::from_millis(20),
                Duration::from_millis(200),
            ) {
                std::thread::sleep(Duration::from_millis(100));
                if c.stop().ok > 0 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("no echo from {addr}:{port} through skiff within 20 s")
    }
}

impl Node {
    /// SIGKILL the agent (no cleanup, like a crash or OOM kill) and start a new one.
    fn crash_and_restart_agent(&mut self) -> Result<()> {
        // SAFETY: plain kill(2) on our child's pid.
        let rc = unsafe { libc::kill(self.agent.pid() as i32, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 the agent");
        self.agent.wait_timeout(Duration::from_secs(5))?;
        self.agent = self.bed.spawn(
            self.bed.node(),
            self.agent_args[0].clone(),
            &self.agent_args[1..],
        )?;
        Ok(())
    }
}

/// Services `web` (VIP:80 -> 8080, replies with the pod name) and `echo` (10.96.0.90:90 ->
/// 9090, a line echo for held connections) over the same endpoints.
fn web_and_echo(b: &[&Pod]) -> String {
    service("web", VIP, None, 80, "TCP", 8080, b)
        + "---\n"
        + &service("echo", "10.96.0.90", None, 90, "TCP", 9090, b)
}

/// A node with three backends behind `web_and_echo`, both services answering.
fn start_web_and_echo() -> Result<Node> {
    let node = Node::start(3, |b| vec![("svc.yaml".into(), web_and_echo(b))])?;
    node.wait_ready(ip(VIP), 80)?;
    node.wait_echo(ip("10.96.0.90"), 90)?;
    Ok(node)
}

/// Each held connection saw every echo, was never reset, and never changed backend.
fn assert_held_intact(held: Vec<LongLivedClient>) {
    for c in held {
        let stats = c.stop();
        assert_eq!(
            stats.failures, 0,
            "an established connection broke: {stats:?}"
        );
        assert!(!stats.connection_lost, "{stats:?}");
        assert_eq!(
            stats.backends.len(),
            1,
            "an established connection moved: {stats:?}"
        );
    }
}

/// Rounds of new connections to `web` until none reaches `pod`: no round may fail.
fn wait_until_avoided(node: &Node, pod: &str) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rounds = 0;
    loop {
        let t = tcp_round(node.client.ns(), ip(VIP), 80, 20, TIMEOUT)?;
        assert_eq!(t.failures, 0, "{:?}", t.errors);
        rounds += 1;
        if !t.answers.contains_key(pod) {
            return Ok(rounds);
        }
        assert!(
            Instant::now() < deadline,
            "{pod} still chosen 10 s after its removal"
        );
    }
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter().map(|p| p.name.clone()).collect()
}

#[test]
fn clusterip_spreads_real_connections_over_every_backend() -> Result<()> {
    require_root();
    let _serial = serial();
    let node = Node::start(3, |b| {
        vec![
            (
                "web.yaml".into(),
                service("web", VIP, Some(VIP6), 80, "TCP", 8080, b),
            ),
            (
                "dns.yaml".into(),
                service("dns", "10.96.0.53", None, 53, "UDP", 5353, b),
            ),
        ]
    })?;
    node.wait_ready(ip(VIP), 80)?;

    let tcp = tcp_round(node.client.ns(), ip(VIP), 80, 100, TIMEOUT)?;
    println!("TCP over IPv4, 100 connections:\n{}", tcp.table());
    assert_eq!(tcp.failures, 0, "{:?}", tcp.errors);
    assert_eq!(
        tcp.answers.keys().cloned().collect::<Vec<_>>(),
        names(&node.backends)
    );

    let tcp6 = tcp_round(node.client.ns(), ip(VIP6), 80, 60, TIMEOUT)?;
    println!("TCP over IPv6, 60 connections:\n{}", tcp6.table());
    assert_eq!(tcp6.failures, 0, "{:?}", tcp6.errors);
    assert_eq!(tcp6.answers.len(), 3);

    let udp = udp_round(node.client.ns(), ip("10.96.0.53"), 53, 60, TIMEOUT)?;
    println!("UDP, 60 requests:\n{}", udp.table());
    assert_eq!(udp.failures, 0, "{:?}", udp.errors);
    assert_eq!(udp.answers.len(), 3);

    // A port the service does not define is not translated: nothing answers there.
    let other = tcp_round(node.client.ns(), ip(VIP), 81, 1, Duration::from_millis(500))?;
    assert_eq!(other.ok(), 0);
    Ok(())
}

#[test]
fn traffic_keeps_flowing_while_an_unrelated_service_comes_and_goes() -> Result<()> {
    require_root();
    let _serial = serial();
    let node = Node::start(2, |b| {
        vec![(
            "web.yaml".into(),
            service("web", VIP, None, 80, "TCP", 8080, b),
        )]
    })?;
    node.wait_ready(ip(VIP), 80)?;
    // One connection held open through the churn, and new connections in between.
    let echo = node.backends[0].clone();
    std::fs::write(
        node.dir().join("echo.yaml"),
        service("echo", "10.96.0.90", None, 90, "TCP", 9090, &[&echo]),
    )?;
    node.wait_echo(ip("10.96.0.90"), 90)?;
    let long = LongLivedClient::start(
        node.client.ns(),
        ip("10.96.0.90"),
        90,
        Duration::from_millis(20),
        Duration::from_secs(60),
    )?;

    let mut total = 0;
    for round in 0..6 {
        if round % 2 == 0 {
            node.write(
                "other.yaml",
                &service(
                    "other",
                    "10.96.0.77",
                    None,
                    7777,
                    "TCP",
                    8080,
                    &[&node.backends[1]],
                ),
            )?;
        } else {
            node.remove("other.yaml")?;
        }
        let t = tcp_round(node.client.ns(), ip(VIP), 80, 25, TIMEOUT)?;
        assert_eq!(t.failures, 0, "round {round}: {:?}", t.errors);
        total += t.ok();
        std::thread::sleep(Duration::from_millis(250));
    }
    let stats = long.stop();
    println!("{total} new connections and {stats:?} on the long-lived one");
    assert_eq!(total, 150);
    assert_eq!(stats.failures, 0, "the held connection broke: {stats:?}");
    assert!(
        stats.ok >= 20,
        "too few echoes on the held connection: {stats:?}"
    );
    Ok(())
}

#[test]
fn removing_an_endpoint_while_traffic_flows_drops_nothing() -> Result<()> {
    require_root();
    let _serial = serial();
    let node = start_web_and_echo()?;
    // Held connections, spread over the three backends.
    let held: Vec<LongLivedClient> = (0..24)
        .map(|_| {
            LongLivedClient::start(
                node.client.ns(),
                ip("10.96.0.90"),
                90,
                Duration::from_millis(50),
                Duration::from_secs(60),
            )
        })
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_millis(300));
    let on_be2 = held
        .iter()
        .filter(|c| c.stats().backends.contains_key("be2"))
        .count();
    assert!(on_be2 > 0, "no held connection reached be2");

    // be2 leaves both services (its pod keeps running, like a pod that failed readiness).
    let remaining: Vec<&Pod> = node.backends[..2].iter().collect();
    node.write("svc.yaml", &web_and_echo(&remaining))?;
    // New connections never fail, and soon never reach be2.
    let rounds = wait_until_avoided(&node, "be2")?;
    // Settled: a larger round avoids be2 entirely.
    let t = tcp_round(node.client.ns(), ip(VIP), 80, 60, TIMEOUT)?;
    assert_eq!(t.failures, 0, "{:?}", t.errors);
    assert!(!t.answers.contains_key("be2"), "{}", t.table());
    assert_eq!(t.answers.len(), 2);

    // Established connections, be2's included, kept working throughout.
    std::thread::sleep(Duration::from_millis(300));
    assert_held_intact(held);
    println!("converged after {rounds} round(s); {on_be2} held connections on be2 kept working");
    Ok(())
}

#[test]
fn agent_killed_and_restarted_three_times_under_load_fails_no_connection() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut node = start_web_and_echo()?;
    let held: Vec<LongLivedClient> = (0..6)
        .map(|_| {
            LongLivedClient::start(
                node.client.ns(),
                ip("10.96.0.90"),
                90,
                Duration::from_millis(20),
                Duration::from_secs(120),
            )
        })
        .collect::<Result<_>>()?;

    // New connections in a loop on another thread for the whole test (bounded in count and time).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ns = node.client.ns().to_string();
    let stop2 = stop.clone();
    let load = std::thread::spawn(move || -> Result<skiff_testbed::Tally> {
        let mut all = skiff_testbed::Tally::default();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline && all.total() < 200_000 {
            all.merge(&tcp_round(&ns, ip(VIP), 80, 20, TIMEOUT)?);
        }
        Ok(all)
    });

    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        node.crash_and_restart_agent()?;
        println!(
            "restart {}: agent killed with SIGKILL and started again",
            i + 1
        );
    }
    // The last agent is in control: an endpoint change made now takes effect.
    std::thread::sleep(Duration::from_millis(700));
    let remaining: Vec<&Pod> = node.backends[..2].iter().collect();
    node.write("svc.yaml", &web_and_echo(&remaining))?;
    wait_until_avoided(&node, "be2")?;

    stop.store(true, Ordering::Relaxed);
    let tally = load.join().expect("load thread")?;
    println!(
        "{} connections during the restarts:\n{}",
        tally.total(),
        tally.table()
    );
    assert!(tally.total() >= 100, "too little load: {}", tally.total());
    assert_eq!(
        tally.failures, 0,
        "failed connections during restarts: {:?}",
        tally.errors
    );
    assert_held_intact(held);
    Ok(())
}

/// How a connection attempt from `ns` ended, and after how long.
fn attempt(
    ns: &str,
    proto: &str,
    to: std::net::SocketAddr,
) -> Result<(std::io::ErrorKind, Duration)> {
    use std::io::ErrorKind;
    let proto = proto.to_string();
    skiff_testbed::in_netns(ns, move || {
        let start = Instant::now();
        let kind = if proto == "tcp" {
            match std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                Ok(_) => bail!("TCP connection to {to} succeeded"),
                Err(e) => e.kind(),
            }
        } else {
            let any: std::net::SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let s = std::net::UdpSocket::bind(any)?;
            s.connect(to)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.send(b"ping\n")?;
            let mut buf = [0u8; 64];
            match s.recv(&mut buf) {
                Ok(_) => bail!("UDP answer from {to}"),
                Err(e) if e.kind() == ErrorKind::WouldBlock => ErrorKind::TimedOut,
                Err(e) => e.kind(),
            }
        };
        Ok((kind, start.elapsed()))
    })
}

#[test]
fn refusals_arrive_at_once_and_a_pod_reaches_itself_through_its_service() -> Result<()> {
    require_root();
    let _serial = serial();
    let node = Node::start(1, |b| {
        vec![
            (
                "web.yaml".into(),
                service("web", VIP, Some(VIP6), 80, "TCP", 8080, b),
            ),
            (
                "empty.yaml".into(),
                service(
                    "empty",
                    "10.96.0.20",
                    Some("fd00:96::20"),
                    80,
                    "TCP",
                    8080,
                    &[],
                ),
            ),
            (
                "dns.yaml".into(),
                service(
                    "dns",
                    "10.96.0.53",
                    Some("fd00:96::53"),
                    53,
                    "UDP",
                    5353,
                    &[],
                ),
            ),
            // An endpoint, but nothing listens on its UDP port 5454.
            (
                "closed.yaml".into(),
                service(
                    "closed",
                    "10.96.0.54",
                    Some("fd00:96::54"),
                    54,
                    "UDP",
                    5454,
                    b,
                ),
            ),
        ]
    })?;
    node.wait_ready(ip(VIP), 80)?;
    let refused = std::io::ErrorKind::ConnectionRefused;
    for (proto, to) in [
        // No endpoints: TCP RST / ICMP port unreachable from the datapath.
        ("tcp", "10.96.0.20:80"),
        ("tcp", "[fd00:96::20]:80"),
        ("udp", "10.96.0.53:53"),
        ("udp", "[fd00:96::53]:53"),
        // A port the ClusterIP does not define (kube-proxy's cluster-ips-check).
        ("tcp", "10.96.0.10:81"),
        ("udp", "[fd00:96::10]:80"),
        // The backend's own port unreachable, translated back to the service address.
        ("udp", "10.96.0.54:54"),
        ("udp", "[fd00:96::54]:54"),
    ] {
        let (kind, took) = attempt(node.client.ns(), proto, to.parse()?)?;
        assert_eq!(kind, refused, "{proto} to {to}");
        assert!(
            took < Duration::from_secs(1),
            "{proto} to {to} refused after {took:?}"
        );
    }
    // An address of serviceCIDRs no Service holds: dropped, the client times out.
    let (kind, _) = attempt(node.client.ns(), "tcp", "10.96.0.99:80".parse()?)?;
    assert_eq!(kind, std::io::ErrorKind::TimedOut);
    // The service with endpoints still answers, its backend too (hairpin).
    let t = tcp_round(node.client.ns(), ip(VIP), 80, 5, TIMEOUT)?;
    assert_eq!(t.failures, 0, "{:?}", t.errors);
    let be = &node.backends[0];
    for vip in [VIP, VIP6] {
        let answer = tcp_connect_once(be.ns(), ip(vip), 80, TIMEOUT)?;
        assert_eq!(answer, be.name, "{} through {vip}", be.name);
    }
    Ok(())
}

/// One HTTP GET to `127.0.0.1:port` inside the node namespace: status code and body.
fn http_get_in_node(node: &Node, port: u16) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    skiff_testbed::in_netns(node.bed.node(), move || {
        let mut s = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Ok((status, body))
    })
}

/// Wait until the health check on `port` answers `status` (the agent polls its manifests).
fn wait_health(node: &Node, port: u16, status: u16) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http_get_in_node(node, port) {
            Ok((s, body)) if s == status => return Ok(body),
            other if Instant::now() > deadline => bail!("health check on {port}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn health_check_node_port_reports_local_endpoints_like_kube_proxy() -> Result<()> {
    require_root();
    let _serial = serial();
    let lb = |node_name: &str, b: &[&Pod]| {
        let ip = b[0].ipv4.unwrap();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: e2e}}\n\
             spec: {{type: LoadBalancer, clusterIP: 10.96.0.30, externalTrafficPolicy: Local, \
             healthCheckNodePort: 32000, ports: [{{name: p, port: 80, targetPort: 8080, nodePort: 30080}}]}}\n\
             status: {{loadBalancer: {{ingress: [{{ip: 192.0.2.127}}]}}}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: lb-1, namespace: e2e, labels: {{kubernetes.io/service-name: lb}}}}\n\
             addressType: IPv4\nports: [{{name: p, port: 8080, protocol: TCP}}]\n\
             endpoints: [{{addresses: [\"{ip}\"], nodeName: {node_name}}}]\n"
        )
    };
    let node = Node::start(1, |b| {
        vec![
            (
                "web.yaml".into(),
                service("web", VIP, None, 80, "TCP", 8080, b),
            ),
            ("lb.yaml".into(), lb("e2e-node", b)),
        ]
    })?;
    node.wait_ready(ip(VIP), 80)?;
    let body = wait_health(&node, 32000, 200)?;
    let json: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        json,
        serde_json::json!({"service": {"namespace": "e2e", "name": "lb"},
                           "localEndpoints": 1, "serviceProxyHealthy": true})
    );
    // The endpoint moves to another node: 503, zero local endpoints.
    let refs: Vec<&Pod> = node.backends.iter().collect();
    node.write("lb.yaml", &lb("other-node", &refs))?;
    let body = wait_health(&node, 32000, 503)?;
    assert!(body.contains("\"localEndpoints\":0"), "{body}");
    // The service goes: the port closes.
    node.remove("lb.yaml")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get_in_node(&node, 32000).is_ok() {
        assert!(Instant::now() < deadline, "health check port still open");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A TCP server in `ns` on port 7070 that answers each connection with the peer's address
/// (what a backend sees as its client), for at most `max` connections or `life`.
fn peer_address_server(
    ns: &str,
    max: usize,
    life: Duration,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    use std::io::Write;
    let ready = std::sync::Arc::new(std::sync::Barrier::new(2));
    let r = ready.clone();
    let h = skiff_testbed::spawn_in_netns(ns, move || -> Result<()> {
        let l = std::net::TcpListener::bind("[::]:7070")?;
        l.set_nonblocking(true)?;
        r.wait();
        let deadline = Instant::now() + life;
        let mut served = 0;
        while served < max && Instant::now() < deadline {
            match l.accept() {
                Ok((mut c, peer)) => {
                    let ip = match peer.ip() {
                        IpAddr::V6(v6) => v6
                            .to_ipv4_mapped()
                            .map(IpAddr::V4)
                            .unwrap_or(IpAddr::V6(v6)),
                        v4 => v4,
                    };
                    let _ = writeln!(c, "{ip}");
                    served += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    })?;
    ready.wait();
    Ok(h)
}

/// A veth hands frames sent back with XDP_TX to its peer only when the peer runs a native
/// XDP program (the kernel schedules the peer's NAPI only then); a NIC transmits them itself.
/// So the external client's `eth0` gets one: skiff's own XDP program with empty maps of its
/// own, which passes everything the client receives. Keep the returned datapath alive.
fn enable_xdp_tx(ns: &str) -> Result<skiff::bpf::Datapath> {
    skiff_testbed::in_netns(ns, || {
        let mut dp = skiff::bpf::Datapath::load()?;
        dp.xdp_ext()
            .attach("eth0", aya::programs::XdpMode::Driver)
            .map_err(|e| anyhow::anyhow!("native XDP on the client's eth0: {e}"))?;
        Ok(dp)
    })
}

#[test]
fn node_port_from_outside_keeps_the_client_ip_and_rejects_without_endpoints() -> Result<()> {
    // auto: native XDP, which veth drivers take.
    node_port_from_outside(External::Auto)
}

/// The same through the TC ingress program, chosen with `externalIngress: tc`.
#[test]
fn node_port_from_outside_through_tc_ingress() -> Result<()> {
    node_port_from_outside(External::Tc)
}

/// The same where the driver refuses native XDP (a veth with a 9,000-byte MTU): auto falls
/// back to TC ingress, never to generic XDP.
#[test]
fn node_port_from_outside_falls_back_to_tc_without_native_xdp() -> Result<()> {
    node_port_from_outside(External::AutoJumbo)
}

/// `externalIngress: xdp` where the driver refuses native XDP: no ingress program at all (an
/// error), neither TC nor generic XDP.
#[test]
fn external_ingress_xdp_only_attaches_nothing_else_when_refused() -> Result<()> {
    require_root();
    let _serial = serial();
    let node = Node::start_opts(1, External::XdpJumbo, |b| {
        vec![(
            "web.yaml".into(),
            service("web", VIP, None, 80, "TCP", 8080, b),
        )]
    })?;
    node.wait_ready(ip(VIP), 80)?;
    node.assert_external_hook(External::XdpJumbo)
}

/// A NodePort from outside (eTP=Local) keeps the client's address, a NodePort without
/// endpoints is refused at once, and the agent reports, and the kernel runs, the hook
/// `external` asks for on the external interface.
fn node_port_from_outside(external: External) -> Result<()> {
    require_root();
    let _serial = serial();
    let np = |name: &str, node_port: u16, b: &[&Pod]| {
        let eps: Vec<String> = b
            .iter()
            .map(|p| {
                format!(
                    "{{addresses: [\"{}\"], nodeName: e2e-node}}",
                    p.ipv4.unwrap()
                )
            })
            .collect();
        let eps6: Vec<String> = b
            .iter()
            .map(|p| {
                format!(
                    "{{addresses: [\"{}\"], nodeName: e2e-node}}",
                    p.ipv6.unwrap()
                )
            })
            .collect();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: e2e}}\n\
             spec: {{type: NodePort, clusterIPs: [10.96.0.{n}, \"fd00:96::{n}\"], ipFamilies: [IPv4, IPv6], \
             externalTrafficPolicy: Local, ports: [{{name: p, port: 80, targetPort: 7070, nodePort: {node_port}}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-4, namespace: e2e, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: p, port: 7070, protocol: TCP}}]\nendpoints: [{}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-6, namespace: e2e, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv6\nports: [{{name: p, port: 7070, protocol: TCP}}]\nendpoints: [{}]\n",
            eps.join(", "),
            eps6.join(", "),
            n = node_port - 30000,
        )
    };
    let mut node = Node::start_opts(1, external, |b| {
        vec![
            (
                "web.yaml".into(),
                service("web", VIP, None, 80, "TCP", 8080, b),
            ),
            ("np.yaml".into(), np("np", 30080, b)),
            ("empty.yaml".into(), np("empty", 30081, &[])),
        ]
    })?;
    node.wait_ready(ip(VIP), 80)?;
    let ext = node.bed.pod("ext").unwrap().ns().to_string();
    node.assert_external_hook(external)?;
    // XDP_TX on a veth reaches the peer only when the peer runs native XDP (see
    // `enable_xdp_tx`); TC's redirect needs nothing.
    let _client_xdp = match external.expected().1 {
        XdpAttached::Driver => Some(enable_xdp_tx(&ext)?),
        _ => None,
    };
    let server = peer_address_server(node.backends[0].ns(), 16, Duration::from_secs(60))?;
    node_port_keeps_the_client_ip(&ext)?;
    // A NodePort without endpoints: refused at once by the external hook (a TCP RST sent
    // back with XDP_TX, or TC's redirect to the same interface).
    for to in ["192.0.2.1:30081", "[2001:db8::1]:30081"] {
        let (kind, took) = attempt(&ext, "tcp", to.parse()?)?;
        assert_eq!(kind, std::io::ErrorKind::ConnectionRefused, "{to}");
        assert!(took < Duration::from_secs(1), "{to} refused after {took:?}");
    }
    if external == External::Tc {
        // A mode switch across a restart replaces the hook, never leaving both attached.
        for next in [External::Auto, External::Tc] {
            node.restart_with(next)?;
            node.assert_external_hook(next)?;
            node_port_keeps_the_client_ip(&ext)?;
        }
    }
    drop(server);
    Ok(())
}

/// Connections from `ext` to the NodePort 30080 (IPv4 and IPv6) reach the backend with the
/// client's own address (eTP=Local).
fn node_port_keeps_the_client_ip(ext: &str) -> Result<()> {
    for (to, client) in [
        ("192.0.2.1:30080", "198.51.100.7"),
        ("[2001:db8::1]:30080", "2001:db8:7::7"),
    ] {
        // The agent attaches within a second of starting; retry until it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        let seen = loop {
            match tcp_connect_once(
                ext,
                to.parse::<std::net::SocketAddr>()?.ip(),
                30080,
                TIMEOUT,
            ) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => bail!("NodePort {to} from outside: {e:#}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        assert_eq!(
            seen, client,
            "the backend sees the client's own address (eTP=Local)"
        );
    }
    Ok(())
}

/// The stale-UDP problem kube-proxy users hit: one UDP socket (one source port, so one
/// conntrack entry) keeps getting answers when the endpoint it was sent to leaves the
/// service, from another endpoint at once; and `sessionAffinity: ClientIP` keeps a client's
/// new TCP connections on one backend.
#[test]
fn udp_socket_moves_off_a_removed_endpoint_and_affinity_keeps_one_backend() -> Result<()> {
    require_root();
    let _serial = serial();
    let dns = |b: &[&Pod]| service("dns", "10.96.0.53", None, 53, "UDP", 5353, b);
    let sticky = |b: &[&Pod]| {
        service("sticky", "10.96.0.80", None, 80, "TCP", 8080, b).replacen(
            "spec:\n",
            "spec:\n  sessionAffinity: ClientIP\n",
            1,
        )
    };
    let node = Node::start(3, |b| {
        vec![
            ("dns.yaml".into(), dns(b)),
            ("sticky.yaml".into(), sticky(b)),
        ]
    })?;
    node.wait_ready(ip("10.96.0.80"), 80)?;

    // Affinity: 30 new connections, one backend.
    let t = tcp_round(node.client.ns(), ip("10.96.0.80"), 80, 30, TIMEOUT)?;
    assert_eq!(t.failures, 0, "{:?}", t.errors);
    assert_eq!(
        t.answers.len(),
        1,
        "affinity spread connections: {}",
        t.table()
    );

    // One UDP socket, connected to the ClusterIP: every request leaves from the same port.
    let sock = skiff_testbed::in_netns(node.client.ns(), || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect("10.96.0.53:53")?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(s)
    })?;
    let ask = |n: usize| -> Option<String> {
        sock.send(format!("q{n}").as_bytes()).ok()?;
        let mut buf = [0u8; 64];
        let len = sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..len]).trim().to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(a) = ask(0) {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no UDP answer through the ClusterIP"
        );
    };
    for n in 1..5 {
        assert_eq!(
            ask(n).as_deref(),
            Some(first.as_str()),
            "UDP flow moved early"
        );
    }

    // Its endpoint leaves the service (the pod keeps running and would still answer).
    let remaining: Vec<&Pod> = node.backends.iter().filter(|p| p.name != first).collect();
    assert_eq!(remaining.len(), 2);
    node.write("dns.yaml", &dns(&remaining))?;
    let changed = Instant::now();
    let mut unanswered = 0;
    let moved_to = loop {
        match ask(100) {
            Some(a) if a != first => break a,
            Some(_) => {}
            None => unanswered += 1,
        }
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "the UDP flow still goes to {first} 10 s after its endpoint left"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // From then on the same socket is answered every time, by the endpoint it moved to.
    for n in 0..20 {
        assert_eq!(
            ask(200 + n).as_deref(),
            Some(moved_to.as_str()),
            "request {n}"
        );
    }
    println!(
        "UDP flow moved from {first} to {moved_to} {:?} after the change ({unanswered} \
         requests unanswered meanwhile)",
        changed.elapsed()
    );
    assert!(
        unanswered <= 2,
        "{unanswered} requests unanswered during the move"
    );
    Ok(())
}

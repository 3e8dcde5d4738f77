//! Real traffic through four service proxies on one topology: skiff (the real agent),
//! kube-proxy's iptables layout, kube-proxy's nftables layout, and no proxy at all.
//!
//! Per scale N: a node namespace (skiff-testbed) with a client pod and three backend pods,
//! N services of which only the last (last in KUBE-SERVICES, last element added to the nft
//! map, last in the manifests) points at the real backends; the others point at addresses
//! nobody has. For each variant, one after another: new TCP connections per second
//! (sequential connect, read the reply, close, from the client pod), the latency of those
//! connections (p50/p99), and the throughput of one bulk TCP stream from a backend.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use skiff_testbed::{in_netns, netns_command, spawn_in_netns, tcp_server, Process, TestBed};

use crate::kubeproxy::{
    self, apply_iptables, apply_nft, iptables, nftables, Proto, ServicePort, CLUSTER_CIDR,
};
use crate::report::Figure;

const SECTION: &str = "traffic";
/// Port the backends answer requests on (reply: the pod's name).
const REQ_PORT: u16 = 8080;
/// Port the backends answer the no-proxy baseline's requests on (see `run_scale`, (d)).
const DIRECT_REQ_PORT: u16 = 8081;
/// Port the backends stream bulk data on.
const BULK_PORT: u16 = 5001;
/// Service ports of the measured service.
const SVC_REQ_PORT: u16 = 80;
const SVC_BULK_PORT: u16 = 5001;
/// Endpoints of each service nobody uses.
const DUMMY_ENDPOINTS: usize = 3;
/// Backend pods.
const BACKENDS: usize = 3;
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);

/// How much to measure per variant.
#[derive(Clone, Copy, Debug)]
struct Budget {
    /// Unmeasured connections first.
    warmup: usize,
    /// Connections measured: at most this many...
    connections: usize,
    /// ...and for at most this long.
    connections_time: Duration,
    /// Bulk stream: at most this many bytes...
    bulk_bytes: u64,
    /// ...for at most this long.
    bulk_time: Duration,
}

const FULL: Budget = Budget {
    warmup: 100,
    connections: 2_000,
    connections_time: Duration::from_secs(5),
    bulk_bytes: 200_000_000,
    bulk_time: Duration::from_secs(3),
};

const QUICK: Budget = Budget {
    warmup: 50,
    connections: 800,
    connections_time: Duration::from_secs(2),
    bulk_bytes: 100_000_000,
    bulk_time: Duration::from_millis(1500),
};

/// The figures of the traffic comparison at each scale in `scales` (number of services; an
/// empty slice means 100, 1,000 and 10,000, or 100 and 1,000 when `quick`). `quick` also
/// shortens each measurement (800 connections or 2 s, 100 MB or 1.5 s of bulk).
///
/// Needs root and the agent binary ([`skiff_testbed::skiff_bin`]). Takes
/// [`skiff_testbed::serial`] itself (the agent's maps are global): do not hold it when
/// calling this.
pub fn traffic_figures(scales: &[usize], quick: bool) -> Result<Vec<Figure>> {
    if !skiff_testbed::is_root() {
        bail!("traffic_figures needs root (network namespaces, veths, BPF, netfilter)");
    }
    let scales: Vec<usize> = match (scales.is_empty(), quick) {
        (false, _) => scales.to_vec(),
        (true, false) => vec![100, 1_000, 10_000],
        (true, true) => vec![100, 1_000],
    };
    let budget = if quick { QUICK } else { FULL };
    let _serial = skiff_testbed::serial();
    let mut figures = Vec::new();
    for n in scales {
        figures.extend(run_scale(n, budget).with_context(|| format!("{n} services"))?);
    }
    Ok(figures)
}

/// What one variant measured.
#[derive(Clone, Debug)]
struct Measured {
    connections_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    connections: usize,
    failures: usize,
    /// Distinct backends that answered.
    backends_seen: usize,
    bulk_gbit_per_s: f64,
    bulk_bytes: u64,
    /// SYNs the client retransmitted during the timed connections (`TcpExtTCPSynRetrans`):
    /// each one is a connection that waited for a retransmission timer.
    syn_retransmits: u64,
}

/// The services of one scale: `n - 1` unused ones, then the measured one (two ports).
fn services(n: usize, backends: &[Ipv4Addr]) -> (Vec<ServicePort>, Ipv4Addr) {
    let mut all = kubeproxy::synthetic_services(n.saturating_sub(1), DUMMY_ENDPOINTS);
    let vip = kubeproxy::service_ip(n.saturating_sub(1));
    for (port, target) in [(SVC_REQ_PORT, REQ_PORT), (SVC_BULK_PORT, BULK_PORT)] {
        all.push(ServicePort {
            name: "bench/target".into(),
            cluster_ip: vip,
            port,
            proto: Proto::Tcp,
            endpoints: backends.iter().map(|&b| (b, target)).collect(),
        });
    }
    (all, vip)
}

/// One scale: the topology, then the four variants in order.
fn run_scale(n: usize, budget: Budget) -> Result<Vec<Figure>> {
    if n == 0 {
        bail!("at least one service");
    }
    let started = Instant::now();
    let mut bed = TestBed::new()?;
    let client = bed.add_pod("client", "skbc", Some(CLIENT_IP), None)?;
    let mut backend_ips = Vec::new();
    let mut backend_pods = Vec::new();
    let mut servers = Vec::new();
    let mut streams = Vec::new();
    for i in 0..BACKENDS {
        let addr = Ipv4Addr::new(10, 244, 1, 11 + i as u8);
        let pod = bed.add_pod(&format!("be{i}"), &format!("skb{i}"), Some(addr), None)?;
        servers.push(tcp_server(
            pod.ns(),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            REQ_PORT,
            &pod.name,
        )?);
        streams.push(StreamServer::start(
            pod.ns(),
            BULK_PORT,
            budget.bulk_bytes,
            budget.bulk_time,
        )?);
        backend_ips.push(addr);
        backend_pods.push(pod);
    }
    let (svcs, vip4) = services(n, &backend_ips);
    let vip = IpAddr::V4(vip4);
    let node = bed.node().to_string();
    let cns = client.ns().to_string();
    let scratch = ScratchDir::new(n)?;
    let mut results: Vec<(&'static str, Measured, String)> = Vec::new();

    // (a) skiff.
    {
        let manifests = scratch.0.join("manifests");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(manifests.join("services.yaml"), manifests_yaml(&svcs))?;
        let config = scratch.0.join("node.yaml");
        std::fs::write(
            &config,
            "nodeName: bench-node\nnodeIPs: [192.0.2.1]\n\
             clusterCIDRs: [10.244.0.0/16]\nserviceCIDRs: [10.96.0.0/12]\n\
             podInterfaces: [\"skb*\"]\n",
        )?;
        let bpffs = skiff_testbed::PrivateBpffs::mount(
            scratch.0.join("bpffs"),
            skiff_testbed::skiff_bin(),
        )?;
        let log = std::fs::File::create(scratch.0.join("skiff.log"))?;
        let mut cmd = netns_command(&node, skiff_testbed::skiff_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--manifests")
            .arg(&manifests)
            .arg("--bpffs")
            .arg(bpffs.pin_dir())
            .stdout(Stdio::null())
            .stderr(log);
        let mut agent = Process::spawn(cmd, format!("skiff run in {node}"))?;
        let limit = Duration::from_secs(30) + Duration::from_millis(10 * n as u64);
        let ready = wait_ready(&cns, vip, SVC_REQ_PORT, limit, Some(&mut agent));
        let measured = ready.and_then(|t| {
            let m = measure(&cns, &[vip], SVC_REQ_PORT, SVC_BULK_PORT, budget)?;
            Ok((
                m,
                format!("agent ready {:.1} s after start", t.as_secs_f64()),
            ))
        });
        let stopped = agent.stop();
        drop(bpffs); // skiff cleanup (unpins, detaches) and umount
        let (m, note) = measured.map_err(|e| e.context(skiff_log_tail(&scratch.0)))?;
        stopped.context("stopping the agent")?;
        results.push(("skiff", m, note));
        // Nothing may be left translating the ClusterIP.
        if connects(&cns, vip, SVC_REQ_PORT, Duration::from_millis(300)) {
            bail!("{vip}:{SVC_REQ_PORT} still answers after skiff stopped and cleaned up");
        }
    }

    // (b) iptables.
    {
        apply_iptables(&node, &iptables::bootstrap())?;
        let rules = iptables::full_restore(&svcs, CLUSTER_CIDR);
        let t = apply_iptables(&node, &rules)?;
        wait_ready(&cns, vip, SVC_REQ_PORT, Duration::from_secs(10), None)?;
        let m = measure(&cns, &[vip], SVC_REQ_PORT, SVC_BULK_PORT, budget)?;
        let rule_count = rules.lines().filter(|l| l.starts_with("-A")).count();
        results.push((
            "iptables",
            m,
            format!(
                "kube-proxy iptables layout, {rule_count} nat rules (restore {:.0} ms), \
                 backend {}, DNAT in the node's PREROUTING",
                t.as_secs_f64() * 1e3,
                kubeproxy::iptables_backend()
            ),
        ));
        clear_netfilter(&node)?;
        if connects(&cns, vip, SVC_REQ_PORT, Duration::from_millis(300)) {
            bail!("{vip}:{SVC_REQ_PORT} still answers after the iptables rules were removed");
        }
    }

    // (c) nftables.
    {
        let rules = nftables::full_ruleset(&svcs, CLUSTER_CIDR);
        let t = apply_nft(&node, &rules)?;
        wait_ready(&cns, vip, SVC_REQ_PORT, Duration::from_secs(10), None)?;
        let m = measure(&cns, &[vip], SVC_REQ_PORT, SVC_BULK_PORT, budget)?;
        results.push((
            "nftables",
            m,
            format!(
                "kube-proxy nftables layout (service-ips verdict map, numgen), nft -f {:.0} ms",
                t.as_secs_f64() * 1e3
            ),
        ));
        clear_netfilter(&node)?;
        if connects(&cns, vip, SVC_REQ_PORT, Duration::from_millis(300)) {
            bail!("{vip}:{SVC_REQ_PORT} still answers after the nft table was removed");
        }
    }

    // (d) no proxy: straight to the backend pods, rotating over them, on a port of their
    // own. The proxied variants' connections (client -> vip:80, DNAT to backend:8080) leave
    // about a thousand TIME_WAIT sockets per backend on backend:8080. They all went to one
    // destination, so the client's ephemeral ports walked forward through one sequence; direct
    // connections to the backends draw their ports from other sequences (the kernel offsets
    // them per destination), so some land on a tuple still in TIME_WAIT. Its PAWS check
    // (timestamps have a per-address-pair offset, and vip != backend) rejects the SYN, the
    // client resets and resends it after TCP_TIMEOUT_MIN (2 jiffies, 8 ms at HZ=250): ~2 % of
    // the connections took 11 ms and capped the "ceiling" at a third of the proxies' rate
    // (the SYN retransmissions in the note). Servers that only this variant connects to
    // start it with no TIME_WAIT of its tuples, like the proxies' first variant.
    {
        let mut direct = Vec::new();
        for pod in &backend_pods {
            direct.push(tcp_server(
                pod.ns(),
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                DIRECT_REQ_PORT,
                &pod.name,
            )?);
        }
        let bes: Vec<IpAddr> = backend_ips.iter().map(|a| IpAddr::V4(*a)).collect();
        let m = measure(&cns, &bes, DIRECT_REQ_PORT, BULK_PORT, budget)?;
        drop(direct);
        results.push((
            "noproxy",
            m,
            format!(
                "client pod to the backend pods' IPs directly (round robin) on port \
                 {DIRECT_REQ_PORT}, which no other variant connected to; no netfilter rules, no BPF"
            ),
        ));
    }
    drop(servers);
    drop(streams);
    bed.teardown()?;

    let mut figures = Vec::new();
    let fig = |key: String, value: f64, note: String| Figure {
        section: SECTION,
        key,
        value,
        note,
    };
    for (variant, m, note) in &results {
        let base = format!("{variant}_{n}_services");
        let detail = format!(
            "{note}; {} connections ({} failed, {} SYN retransmissions), {} backends answered",
            m.connections, m.failures, m.syn_retransmits, m.backends_seen
        );
        figures.push(fig(
            format!("{base}_connections_per_s"),
            m.connections_per_s,
            format!("sequential connect+reply+close from the client pod; {detail}"),
        ));
        figures.push(fig(
            format!("{base}_latency_p50_us"),
            m.p50_us,
            "connect to reply to close, one fresh connection".into(),
        ));
        figures.push(fig(
            format!("{base}_latency_p99_us"),
            m.p99_us,
            "connect to reply to close, one fresh connection".into(),
        ));
        figures.push(fig(
            format!("{base}_bulk_gbit_per_s"),
            m.bulk_gbit_per_s,
            format!(
                "one TCP stream backend -> client pod, {} MB",
                m.bulk_bytes / 1_000_000
            ),
        ));
    }
    let cps = |v: &str| {
        results
            .iter()
            .find(|r| r.0 == v)
            .map(|r| r.1.connections_per_s)
            .unwrap_or(f64::NAN)
    };
    for other in ["iptables", "noproxy"] {
        figures.push(fig(
            format!("skiff_vs_{other}_{n}_services_connections_ratio"),
            cps("skiff") / cps(other),
            format!("skiff connections/s divided by {other}'s (>1: skiff faster)"),
        ));
    }
    eprintln!(
        "skiff-bench: traffic at {n} services done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(figures)
}

/// Removes every netfilter rule of the namespace (iptables of either backend, nft tables).
fn clear_netfilter(ns: &str) -> Result<()> {
    let iptables = kubeproxy::iptables_program("");
    for args in [
        &[iptables.as_str(), "-t", "nat", "-F"][..],
        &[iptables.as_str(), "-t", "nat", "-X"][..],
        &["nft", "flush", "ruleset"][..],
    ] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "{args:?} in {ns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Whether one connection from `ns` to `addr:port` gets a reply within `timeout`.
fn connects(ns: &str, addr: IpAddr, port: u16, timeout: Duration) -> bool {
    skiff_testbed::tcp_connect_once(ns, addr, port, timeout).is_ok()
}

/// Waits until a connection to `addr:port` from `ns` is answered; returns how long it took.
/// Fails early if `agent` exits.
fn wait_ready(
    ns: &str,
    addr: IpAddr,
    port: u16,
    limit: Duration,
    mut agent: Option<&mut Process>,
) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if connects(ns, addr, port, Duration::from_millis(300)) {
            return Ok(start.elapsed());
        }
        if let Some(agent) = agent.as_deref_mut() {
            if !agent.is_running() {
                bail!("the agent exited before {addr}:{port} answered");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{addr}:{port} did not answer within {limit:?}")
}

/// Connections, latency and bulk throughput from `ns` to `addr`.
/// Sequential connections from `ns`, rotating over `addrs` (one address for a service; the
/// backends themselves for the no-proxy baseline, so that it spreads connections like the
/// proxies do instead of piling every TIME_WAIT onto one server), then one bulk stream from
/// the first address.
fn measure(
    ns: &str,
    addrs: &[IpAddr],
    req_port: u16,
    bulk_port: u16,
    b: Budget,
) -> Result<Measured> {
    let Some(&first) = addrs.first() else {
        bail!("no address to measure");
    };
    let targets: Vec<SocketAddr> = addrs
        .iter()
        .map(|a| SocketAddr::new(*a, req_port))
        .collect();
    let to = targets[0];
    let (lat, failures, backends, total, syn_retransmits) = in_netns(ns, || {
        for i in 0..b.warmup {
            let _ = exchange(targets[i % targets.len()]);
        }
        let retrans0 = syn_retransmits()?;
        let mut lat = Vec::with_capacity(b.connections);
        let mut failures = 0;
        let mut backends = std::collections::BTreeSet::new();
        let start = Instant::now();
        while lat.len() + failures < b.connections && start.elapsed() < b.connections_time {
            let target = targets[(lat.len() + failures) % targets.len()];
            let t = Instant::now();
            match exchange(target) {
                Ok(reply) => {
                    lat.push(t.elapsed());
                    backends.insert(reply);
                }
                Err(_) => failures += 1,
            }
            if failures > 20 && failures * 10 > lat.len() {
                bail!(
                    "{to}: {failures} of {} connections failed",
                    failures + lat.len()
                );
            }
        }
        let total = start.elapsed();
        let retrans = syn_retransmits()?.saturating_sub(retrans0);
        Ok((lat, failures, backends.len(), total, retrans))
    })?;
    if lat.is_empty() {
        bail!("{to}: no connection succeeded");
    }
    let mut us: Vec<f64> = lat.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let pct = |p: f64| us[((us.len() - 1) as f64 * p).round() as usize];
    let bulk_to = SocketAddr::new(first, bulk_port);
    let limit = b.bulk_time + Duration::from_secs(2);
    let (bytes, elapsed) = in_netns(ns, || bulk_receive(bulk_to, limit))?;
    if bytes == 0 {
        bail!("{bulk_to}: the bulk stream carried nothing");
    }
    Ok(Measured {
        connections_per_s: lat.len() as f64 / total.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        connections: lat.len() + failures,
        failures,
        backends_seen: backends,
        bulk_gbit_per_s: bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9,
        bulk_bytes: bytes,
        syn_retransmits,
    })
}

/// The calling thread's network namespace's `TcpExtTCPSynRetrans` (inside `in_netns`:
/// `/proc/thread-self/net`, not `/proc/self/net`, which is the main thread's namespace).
fn syn_retransmits() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat")
        .context("reading /proc/thread-self/net/netstat")?;
    let mut tcp_ext = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (tcp_ext.next(), tcp_ext.next()) else {
        bail!("/proc/thread-self/net/netstat has no TcpExt lines");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "TCPSynRetrans")
        .context("no TCPSynRetrans in /proc/thread-self/net/netstat")?
        .1
        .parse()
        .context("TCPSynRetrans is not a number")
}

/// One connection: connect, read the reply until the server closes, close.
fn exchange(to: SocketAddr) -> Result<String> {
    let timeout = Duration::from_secs(1);
    let mut conn = TcpStream::connect_timeout(&to, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    let mut out = Vec::with_capacity(16);
    let mut buf = [0u8; 256];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > 4096 {
            bail!("reply too long");
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Reads one bulk stream from `to` until the server closes or `limit` passes; returns the
/// bytes and the time from the first byte to the last.
fn bulk_receive(to: SocketAddr, limit: Duration) -> Result<(u64, Duration)> {
    let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(1))
        .with_context(|| format!("bulk: connecting to {to}"))?;
    conn.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + limit;
    let mut bytes = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                bytes += n as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).with_context(|| format!("bulk: reading from {to}")),
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
    let elapsed = first.map(|f| last - f).unwrap_or_default();
    if elapsed.is_zero() {
        bail!("bulk: {bytes} bytes from {to} in no measurable time");
    }
    Ok((bytes, elapsed))
}

/// A server in a namespace that, to each connection in turn, sends zeros until `max_bytes`
/// or `max_time`, then closes. Stops when dropped.
struct StreamServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StreamServer {
    fn start(ns: &str, port: u16, max_bytes: u64, max_time: Duration) -> Result<StreamServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<()>>(1);
        let stop2 = stop.clone();
        let thread = spawn_in_netns(ns, move || {
            let listener = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
            {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let chunk = vec![0u8; 256 * 1024];
            while !stop2.load(Ordering::Relaxed) {
                let mut conn = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_write_timeout(Some(Duration::from_millis(500)));
                let start = Instant::now();
                let mut sent = 0u64;
                while sent < max_bytes
                    && start.elapsed() < max_time
                    && !stop2.load(Ordering::Relaxed)
                {
                    let want = chunk.len().min((max_bytes - sent) as usize);
                    match conn.write(&chunk[..want]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => sent += n as u64,
                    }
                }
                let _ = conn.flush();
                let _ = conn.shutdown(Shutdown::Write);
            }
        })?;
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(StreamServer {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e).with_context(|| format!("stream server on port {port} in {ns}")),
            Err(_) => bail!("stream server in {ns} did not start"),
        }
    }
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Manifests for the agent: one Service and one EndpointSlice per service name, ports named
/// as kube-proxy names them (`p<port>`).
fn manifests_yaml(svcs: &[ServicePort]) -> String {
    let mut out = String::with_capacity(svcs.len() * 700);
    let mut i = 0;
    while i < svcs.len() {
        let name = &svcs[i].name;
        let mut j = i;
        while j < svcs.len() && &svcs[j].name == name {
            j += 1;
        }
        let group = &svcs[i..j];
        let (ns, svc) = name.split_once('/').unwrap_or(("default", name));
        let proto = |s: &ServicePort| match s.proto {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        };
        out += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {svc}, namespace: {ns}}}\n\
             spec:\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  ipFamilies: [IPv4]\n  ports:\n",
            ip = group[0].cluster_ip
        );
        for s in group {
            let target = s.endpoints.first().map(|e| e.1).unwrap_or(s.port);
            out += &format!(
                "  - {{name: {}, port: {}, protocol: {}, targetPort: {target}}}\n",
                s.port_name(),
                s.port,
                proto(s)
            );
        }
        out += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
             name: {svc}-a\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {svc}}}\n\
             addressType: IPv4\nports:\n"
        );
        for s in group {
            let target = s.endpoints.first().map(|e| e.1).unwrap_or(s.port);
            out += &format!(
                "- {{name: {}, port: {target}, protocol: {}}}\n",
                s.port_name(),
                proto(s)
            );
        }
        out += "endpoints:\n";
        if group[0].endpoints.is_empty() {
            out += "[]\n";
        }
        for e in &group[0].endpoints {
            out += &format!(
                "- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n",
                e.0
            );
        }
        i = j;
    }
    out
}

/// Last lines of the agent's log, for errors.
fn skiff_log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("skiff.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(10)..].join("\n");
    format!("skiff agent log (last lines):\n{tail}")
}

/// A scratch directory, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(n: usize) -> Result<ScratchDir> {
        let p =
            std::env::temp_dir().join(format!("skiff-bench-traffic-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(ScratchDir(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_group_ports_of_one_service() {
        let backends = [Ipv4Addr::new(10, 244, 1, 11), Ipv4Addr::new(10, 244, 1, 12)];
        let (svcs, vip) = services(3, &backends);
        assert_eq!(svcs.len(), 4);
        assert_eq!(vip, kubeproxy::service_ip(2));
        let y = manifests_yaml(&svcs);
        assert_eq!(y.matches("kind: Service\n").count(), 3);
        assert_eq!(y.matches("kind: EndpointSlice\n").count(), 3);
        assert!(y.contains("- {name: p80, port: 80, protocol: TCP, targetPort: 8080}"));
        assert!(y.contains("- {name: p5001, port: 5001, protocol: TCP, targetPort: 5001}"));
        assert!(y.contains("- addresses: [\"10.244.1.12\"]"));
    }

    /// The whole comparison at 10 services with few connections. Needs root and the agent
    /// (`SKIFF_BIN`); fails without them, never skips.
    #[test]
    fn traffic_small_scale_all_variants() {
        skiff_testbed::require_root();
        let _serial = skiff_testbed::serial();
        let budget = Budget {
            warmup: 5,
            connections: 100,
            connections_time: Duration::from_secs(2),
            bulk_bytes: 20_000_000,
            bulk_time: Duration::from_millis(500),
        };
        let figures = run_scale(10, budget).expect("traffic at 10 services");
        for f in &figures {
            eprintln!("{:<60} {:>12.2}  {}", f.key, f.value, f.note);
        }
        for variant in ["skiff", "iptables", "nftables", "noproxy"] {
            for metric in [
                "connections_per_s",
                "latency_p50_us",
                "latency_p99_us",
                "bulk_gbit_per_s",
            ] {
                let key = format!("{variant}_10_services_{metric}");
                let f = figures
                    .iter()
                    .find(|f| f.key == key)
                    .unwrap_or_else(|| panic!("{key} missing"));
                assert!(f.value > 0.0 && f.value.is_finite(), "{key} = {}", f.value);
            }
            let cps = figures
                .iter()
                .find(|f| f.key == format!("{variant}_10_services_connections_per_s"))
                .unwrap();
            if variant != "noproxy" {
                assert!(
                    cps.note.contains(&format!("{BACKENDS} backends answered")),
                    "{variant}: {}",
                    cps.note
                );
            }
        }
        assert!(figures
            .iter()
            .any(|f| f.key == "skiff_vs_iptables_10_services_connections_ratio"));
    }
}

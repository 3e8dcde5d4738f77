//! End to end across two nodes: the real agent on each node of an underlay, an external
//! client, and NodePorts with `externalTrafficPolicy: Cluster` (masqueraded to the node's
//! address so that a backend on the other node replies through this node) and `Local`
//! (the client's address kept). Needs root; fails, never skips.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use skiff_testbed::{
    require_root, serial, skiff_bin, spawn_in_netns, tcp_connect_once, Pod, PrivateBpffs, Process,
    TempDir, TestBed, Underlay, UNDERLAY_IF,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const PORT: u16 = 7070;

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// A NodePort Service (dual-stack) whose endpoints are `eps` (address, node name).
fn node_port(name: &str, n: u8, policy: &str, eps: &[(&Pod, &str)]) -> String {
    let list = |v6: bool| -> String {
        eps.iter()
            .map(|(p, node)| {
                let a = if v6 {
                    p.ipv6.unwrap().to_string()
                } else {
                    p.ipv4.unwrap().to_string()
                };
                format!("{{addresses: [\"{a}\"], nodeName: {node}}}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: e2e}}\n\
         spec: {{type: NodePort, clusterIPs: [10.96.0.{n}, \"fd00:96::{n}\"], \
         ipFamilies: [IPv4, IPv6], externalTrafficPolicy: {policy}, \
         ports: [{{name: p, port: 80, targetPort: {PORT}, nodePort: 300{n}}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-4, namespace: e2e, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: p, port: {PORT}, protocol: TCP}}]\nendpoints: [{}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-6, namespace: e2e, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv6\nports: [{{name: p, port: {PORT}, protocol: TCP}}]\nendpoints: [{}]\n",
        list(false),
        list(true),
    )
}

/// The agent of one node, with its own manifests, config and private bpffs. Field order is
/// drop order: the agent stops, the bpffs is unmounted, then the directory goes.
struct Agent {
    _agent: Process,
    _bpffs: PrivateBpffs,
    _dir: TempDir,
}

fn start_agent(
    bed: &TestBed,
    node: &str,
    ip4: Ipv4Addr,
    ip6: Ipv6Addr,
    yaml: &str,
) -> Result<Agent> {
    let dir = TempDir::new(&format!("e2e-masq-{node}"));
    std::fs::create_dir_all(dir.join("manifests"))?;
    std::fs::write(dir.join("manifests/svc.yaml"), yaml)?;
    let config = dir.join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "nodeName: {node}\nnodeIPs: [{ip4}, \"{ip6}\"]\n\
             clusterCIDRs: [10.244.0.0/16, \"fd00:244::/32\"]\n\
             serviceCIDRs: [10.96.0.0/16, \"fd00:96::/108\"]\npodInterfaces: [\"skd*\"]\n\
             externalInterfaces: [{UNDERLAY_IF}]\n"
        ),
    )?;
    let bpffs = PrivateBpffs::mount(dir.join("bpffs"), skiff_bin())?;
    let args: Vec<std::ffi::OsString> = vec![
        "run".into(),
        "--config".into(),
        config.into(),
        "--manifests".into(),
        dir.join("manifests").into(),
        "--poll-ms".into(),
        "100".into(),
        "--bpffs".into(),
        bpffs.pin_dir().into(),
    ];
    let agent = bed.spawn(bed.node(), skiff_bin().into(), &args)?;
    Ok(Agent {
        _agent: agent,
        _bpffs: bpffs,
        _dir: dir,
    })
}

/// A TCP server in `ns` on `PORT` answering each connection with the peer's address (what
/// a backend sees as its client), for at most `life`.
fn peer_address_server(ns: &str, life: Duration) -> Result<std::thread::JoinHandle<Result<()>>> {
    use std::io::Write;
    let ready = std::sync::Arc::new(std::sync::Barrier::new(2));
    let r = ready.clone();
    let h = spawn_in_netns(ns, move || -> Result<()> {
        let l = std::net::TcpListener::bind(("::", PORT))?;
        l.set_nonblocking(true)?;
        r.wait();
        let deadline = Instant::now() + life;
        while Instant::now() < deadline {
            match l.accept() {
                Ok((mut c, peer)) => {
                    let ip = match peer.ip() {
                        IpAddr::V6(a) => {
                            a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a))
                        }
                        a => a,
                    };
                    let _ = writeln!(c, "{ip}");
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

/// What the backend behind `to` reports as its client, retried while the agents start.
fn seen_by_backend(ns: &str, to: SocketAddr) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tcp_connect_once(ns, to.ip(), to.port(), TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => bail!("{to} from outside: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn node_port_cluster_policy_masquerades_to_a_remote_backend_and_local_keeps_the_client(
) -> Result<()> {
    require_root();
    let _serial = serial();
    let mut ul = Underlay::new(24)?;
    let mut n1 = TestBed::new()?;
    let mut n2 = TestBed::new()?;
    let (ip1, ip2) = (v4("192.0.2.11"), v4("192.0.2.12"));
    let (ip1_6, ip2_6) = (v6("2001:db8::11"), v6("2001:db8::12"));
    n1.join_underlay(&ul, ip1, Some(ip1_6))?;
    n2.join_underlay(&ul, ip2, Some(ip2_6))?;
    n1.route_via("10.244.2.0/24", IpAddr::V4(ip2))?;
    n1.route_via("fd00:244:2::/64", IpAddr::V6(ip2_6))?;
    n2.route_via("10.244.1.0/24", IpAddr::V4(ip1))?;
    n2.route_via("fd00:244:1::/64", IpAddr::V6(ip1_6))?;
    let a = n1.add_pod(
        "a",
        "skd0",
        Some(v4("10.244.1.5")),
        Some(v6("fd00:244:1::5")),
    )?;
    let b = n2.add_pod(
        "b",
        "skd0",
        Some(v4("10.244.2.5")),
        Some(v6("fd00:244:2::5")),
    )?;
    let ext = ul.add_external("ext", v4("192.0.2.100"), Some(v6("2001:db8::100")))?;

    // Both nodes know both services, as every kube-proxy does.
    let yaml = node_port("cl", 80, "Cluster", &[(&b, "node-2")])
        + "---\n"
        + &node_port("lo", 81, "Local", &[(&a, "node-1")]);
    let _servers = [
        peer_address_server(a.ns(), Duration::from_secs(60))?,
        peer_address_server(b.ns(), Duration::from_secs(60))?,
    ];
    let _agent1 = start_agent(&n1, "node-1", ip1, ip1_6, &yaml)?;
    let _agent2 = start_agent(&n2, "node-2", ip2, ip2_6, &yaml)?;

    // eTP=Cluster, backend on node 2: node 1 masquerades, the backend sees node 1, and the
    // reply returns through node 1 to the client (else the connection would not complete).
    for (to, node) in [
        ("192.0.2.11:30080", "192.0.2.11"),
        ("[2001:db8::11]:30080", "2001:db8::11"),
    ] {
        let seen = seen_by_backend(ext.ns(), to.parse()?)?;
        assert_eq!(
            seen, node,
            "{to}: the backend on node 2 sees node 1's address"
        );
    }
    // Several connections in a row: each gets its own node port, all complete.
    for _ in 0..5 {
        assert_eq!(
            seen_by_backend(ext.ns(), "192.0.2.11:30080".parse()?)?,
            "192.0.2.11"
        );
    }
    // eTP=Local with the backend on node 1: the client's own address.
    for (to, client) in [
        ("192.0.2.11:30081", "192.0.2.100"),
        ("[2001:db8::11]:30081", "2001:db8::100"),
    ] {
        let seen = seen_by_backend(ext.ns(), to.parse()?)?;
        assert_eq!(seen, client, "{to}: eTP=Local keeps the client address");
    }
    // eTP=Cluster through node 2, whose backend is local there: the client address too
    // (a local endpoint needs no masquerade).
    let seen = seen_by_backend(ext.ns(), "192.0.2.12:30080".parse()?)?;
    assert_eq!(seen, "192.0.2.100");
    Ok(())
}

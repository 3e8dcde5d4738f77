//! End to end NetworkPolicy, the upstream reachability model: namespaces x, y, z with pods
//! a, b, c each (labels `pod=<name>`, namespaces labelled `ns=<name>`), every pod serving
//! TCP and UDP on ports 80 and 81 and answering with its `namespace/name`. For each policy set
//! the full 9x9 matrix is probed with real connections through the real agent and compared
//! with the expectation written from the Kubernetes documentation of that policy.
//! Needs root; fails, never skips.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use skiff_testbed::{
    require_root, serial, skiff_bin, tcp_connect_once, tcp_echo_server, tcp_server, udp_request,
    udp_server, LongLivedClient, Pod, PrivateBpffs, Process, Server, TempDir, TestBed,
};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 2] = [80, 81];
const PROTOS: [Proto; 2] = [Proto::Tcp, Proto::Udp];
/// How long a probe waits: a denied packet is dropped, so a denied probe times out.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a policy change may take to show in the matrix.
const CONVERGE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Tcp,
    Udp,
}

/// A pod of the model: `ns/name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Peer {
    ns: &'static str,
    pod: &'static str,
}

impl Peer {
    fn all() -> Vec<Peer> {
        NAMESPACES
            .iter()
            .flat_map(|ns| PODS.iter().map(move |pod| Peer { ns, pod }))
            .collect()
    }

    fn ip(&self) -> Ipv4Addr {
        let n = NAMESPACES.iter().position(|n| *n == self.ns).unwrap() as u8;
        let p = PODS.iter().position(|p| *p == self.pod).unwrap() as u8;
        Ipv4Addr::new(10, 244, 2, 10 * (n + 1) + p + 1)
    }

    fn name(&self) -> String {
        format!("{}/{}", self.ns, self.pod)
    }
}

/// One probe: `from` connects to `to` on `port`/`proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Probe {
    from: Peer,
    to: Peer,
    port: u16,
    proto: Proto,
}

fn probes() -> Vec<Probe> {
    let mut out = Vec::new();
    for from in Peer::all() {
        for to in Peer::all() {
            for port in PORTS {
                for proto in PROTOS {
                    out.push(Probe {
                        from,
                        to,
                        port,
                        proto,
                    });
                }
            }
        }
    }
    out
}

/// Namespaces and pods of the model as manifests. Each pod names its container ports like
/// the upstream tests (`serve-80-tcp`, ...) and also has a port named `web`, which is 80 on
/// pods a and b but 81 on pods c: one named port that resolves differently per pod.
fn model_manifests() -> String {
    let mut y = String::new();
    for ns in NAMESPACES {
        writeln!(
            y,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n---"
        )
        .unwrap();
    }
    for peer in Peer::all() {
        let web = if peer.pod == "c" { 81 } else { 80 };
        writeln!(
            y,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}\n\
             spec:\n  nodeName: e2e-node\n  containers:\n  - name: server\n    image: none\n    ports:\n\
             \x20   - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}\n\
             \x20   - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n\
             \x20   - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}\n\
             \x20   - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}\n\
             \x20   - {{name: web, containerPort: {web}, protocol: TCP}}\n\
             status:\n  phase: Running\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n---",
            pod = peer.pod,
            ns = peer.ns,
            ip = peer.ip(),
        )
        .unwrap();
    }
    y
}

/// The node: the agent plus the nine pods with their servers.
struct Cluster {
    // Field order is drop order (as in e2e_clusterip): the bed kills everything in its
    // namespaces first, then the pins and files go.
    _bed: TestBed,
    _agent: Process,
    _servers: Vec<Server>,
    manifests: PathBuf,
    pods: BTreeMap<Peer, Pod>,
    _bpffs: PrivateBpffs,
    scratch: TempDir,
}

impl Cluster {
    fn start() -> Result<Cluster> {
        let mut bed = TestBed::new()?;
        let mut pods = BTreeMap::new();
        let mut servers = Vec::new();
        for peer in Peer::all() {
            let pod = bed.add_pod(
                &format!("{}-{}", peer.ns, peer.pod),
                &format!("skp{}{}", peer.ns, peer.pod),
                Some(peer.ip()),
                None,
            )?;
            let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            for port in PORTS {
                servers.push(tcp_server(pod.ns(), any, port, peer.name())?);
                servers.push(udp_server(pod.ns(), any, port, peer.name())?);
            }
            // A line echo for connections held across policy changes.
            servers.push(tcp_echo_server(pod.ns(), any, 9090, peer.name())?);
            pods.insert(peer, pod);
        }
        let scratch = TempDir::new("netpol");
        let manifests = scratch.join("manifests");
        std::fs::create_dir(&manifests)?;
        std::fs::write(manifests.join("model.yaml"), model_manifests())?;
        let (bpffs, agent) = start_agent(&bed, &scratch, 2 * pods.len())?;
        Ok(Cluster {
            _bed: bed,
            _agent: agent,
            _servers: servers,
            manifests,
            pods,
            _bpffs: bpffs,
            scratch,
        })
    }

    /// Run `skiff observe ARGS` against this cluster's agent until it exits by itself.
    fn observe(&self, args: &[&str]) -> Result<std::process::Child> {
        Ok(std::process::Command::new(skiff_bin())
            .arg("observe")
            .arg("--bpffs")
            .arg(self._bpffs.pin_dir())
            .arg("--state-dir")
            .arg(self.scratch.join("state"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()?)
    }

    fn pod(&self, peer: Peer) -> &Pod {
        &self.pods[&peer]
    }

    /// Replace the policy set (one file): written then renamed, never read half-written.
    fn set_policies(&self, yaml: &str) -> Result<()> {
        let tmp = self.scratch.join("policies.yaml.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.manifests.join("policies.yaml"))?;
        Ok(())
    }

    fn probe(&self, p: Probe) -> Result<String> {
        let ns = self.pod(p.from).ns();
        let to = IpAddr::V4(p.to.ip());
        match p.proto {
            Proto::Tcp => tcp_connect_once(ns, to, p.port, PROBE_TIMEOUT),
            Proto::Udp => udp_request(ns, to, p.port, PROBE_TIMEOUT),
        }
    }

    /// Probe the whole matrix in parallel: which probes got the right answer.
    fn matrix(&self) -> BTreeMap<Probe, bool> {
        let all = probes();
        let mut out = BTreeMap::new();
        for chunk in all.chunks(108) {
            let results: Vec<(Probe, bool)> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|&p| {
                        s.spawn(move || {
                            let ok = matches!(self.probe(p), Ok(reply) if reply == p.to.name());
                            (p, ok)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            out.extend(results);
        }
        out
    }

    /// Probe until the matrix equals `expect` (policy changes take effect asynchronously);
    /// fail with a readable table of the differences when it does not within `CONVERGE`.
    fn assert_matrix(&self, case: &str, expect: impl Fn(&Probe) -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            let got = self.matrix();
            let wrong: Vec<(&Probe, bool)> = got
                .iter()
                .filter(|(p, ok)| **ok != expect(p))
                .map(|(p, ok)| (p, *ok))
                .collect();
            if wrong.is_empty() {
                eprintln!(
                    "{case}: 9x9 matrix ({} probes) as expected after {:?}",
                    got.len(),
                    start.elapsed()
                );
                return Ok(());
            }
            if start.elapsed() > CONVERGE {
                let mut msg = format!(
                    "{case}: {} of {} probes differ after {CONVERGE:?}:\n",
                    wrong.len(),
                    got.len()
                );
                for (p, ok) in wrong.iter().take(40) {
                    writeln!(
                        msg,
                        "  {} -> {} {:?}/{}: expected {}, got {}",
                        p.from.name(),
                        p.to.name(),
                        p.proto,
                        p.port,
                        if *ok { "denied" } else { "allowed" },
                        if *ok { "allowed" } else { "denied" },
                    )
                    .unwrap();
                }
                bail!(msg);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Start the agent in the bed's node namespace on `<scratch>/manifests` (written by the
/// caller), with its own bpffs and state directory in `scratch`, and wait until it has
/// attached to the `links` pod hooks it should.
// The bpffs comes first: bound in this order, the agent is dropped (stopped) before its pins
// are cleaned up and the bpffs unmounted.
fn start_agent(bed: &TestBed, scratch: &TempDir, links: usize) -> Result<(PrivateBpffs, Process)> {
    let config = scratch.join("node.yaml");
    std::fs::write(
        &config,
        "nodeName: e2e-node\nnodeIPs: [192.0.2.1]\nclusterCIDRs: [10.244.0.0/16]\n\
         serviceCIDRs: [10.96.0.0/16]\npodInterfaces: [\"skp*\"]\n",
    )?;
    let bpffs = PrivateBpffs::mount(scratch.join("bpffs"), skiff_bin())?;
    let args: Vec<std::ffi::OsString> = vec![
        "run".into(),
        "--config".into(),
        config.into(),
        "--manifests".into(),
        scratch.join("manifests").into(),
        "--poll-ms".into(),
        "100".into(),
        "--bpffs".into(),
        bpffs.pin_dir().into(),
        "--state-dir".into(),
        scratch.join("state").into(),
    ];
    let agent = bed.spawn(bed.node(), skiff_bin().into_os_string(), &args)?;
    wait_attached(&bpffs.pin_dir().join("links"), links)?;
    Ok((bpffs, agent))
}

/// Wait until the agent has pinned `n` links (both pod hooks on every pod veth): from then on
/// every packet between pods meets skiff.
fn wait_attached(links: &std::path::Path, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pinned = std::fs::read_dir(links).map_or(0, |d| d.count());
        if pinned >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the agent pinned {pinned} of {n} pod links within 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pod-to-itself traffic never leaves the pod (loopback), so it is always allowed, as the
/// upstream tests' `AllowLoopback` says.
fn self_or(p: &Probe, allowed: bool) -> bool {
    p.from == p.to || allowed
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}---\n"
    )
}

/// The documentation's policies, one case after another on one cluster: each case replaces
/// the whole policy set, so every case also proves that removing the previous one works.
#[test]
fn netpol_reachability_matrix_follows_the_documented_semantics() -> Result<()> {
    require_root();
    let _serial = serial();
    let c = Cluster::start()?;
    let x_a = Peer { ns: "x", pod: "a" };

    c.assert_matrix("no policies", |_| true)?;

    // Default deny all ingress in x.
    c.set_policies(&policy(
        "x",
        "default-deny-ingress",
        "  podSelector: {}\n  policyTypes: [Ingress]\n",
    ))?;
    c.assert_matrix("default deny ingress in x", |p| self_or(p, p.to.ns != "x"))?;

    // Default deny all egress in x.
    c.set_policies(&policy(
        "x",
        "default-deny-egress",
        "  podSelector: {}\n  policyTypes: [Egress]\n",
    ))?;
    c.assert_matrix("default deny egress in x", |p| self_or(p, p.from.ns != "x"))?;

    // x/a accepts only from namespace y.
    c.set_policies(&policy(
        "x",
        "allow-from-y",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n",
    ))?;
    c.assert_matrix("x/a: ingress from namespace y", |p| {
        self_or(p, p.to != x_a || p.from.ns == "y")
    })?;

    // x/a accepts pod b of namespaces y and z only: namespaceSelector AND podSelector.
    c.set_policies(&policy(
        "x",
        "allow-b-in-y-z",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{key: ns, operator: In, values: [y, z]}]\n      podSelector: {matchLabels: {pod: b}}\n",
    ))?;
    c.assert_matrix("x/a: ingress from pod b in y or z (AND)", |p| {
        self_or(p, p.to != x_a || (p.from.ns != "x" && p.from.pod == "b"))
    })?;

    // The same selectors as two peers: OR. Pods b of x (podSelector in the policy's
    // namespace) or every pod of namespaces other than x.
    c.set_policies(&policy(
        "x",
        "allow-b-or-not-x",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{key: ns, operator: NotIn, values: [x]}]\n    - podSelector: {matchLabels: {pod: b}}\n",
    ))?;
    c.assert_matrix(
        "x/a: ingress from pod b of x, or any pod outside x (OR)",
        |p| self_or(p, p.to != x_a || p.from.ns != "x" || p.from.pod == "b"),
    )?;

    // ipBlock with except: everything in the pods' /24 except y/b.
    let y_b = Peer { ns: "y", pod: "b" };
    c.set_policies(&policy(
        "x",
        "allow-cidr-except-y-b",
        &format!(
            "  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.244.2.0/24, except: [{}/32]}}\n",
            y_b.ip()
        ),
    ))?;
    c.assert_matrix("x/a: ingress from an ipBlock except y/b", |p| {
        self_or(p, p.to != x_a || p.from != y_b)
    })?;

    // Named port: x/a accepts anything, but only on its port named serve-81-udp.
    c.set_policies(&policy(
        "x",
        "allow-named-port",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports:\n    - {port: serve-81-udp, protocol: UDP}\n",
    ))?;
    c.assert_matrix("x/a: ingress on named port serve-81-udp only", |p| {
        self_or(p, p.to != x_a || (p.port == 81 && p.proto == Proto::Udp))
    })?;

    // endPort: x/a accepts TCP 80-81 from anyone, nothing else.
    c.set_policies(&policy(
        "x",
        "allow-tcp-range",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports:\n    - {port: 80, endPort: 81, protocol: TCP}\n",
    ))?;
    c.assert_matrix("x/a: ingress TCP 80-81 (endPort)", |p| {
        self_or(p, p.to != x_a || p.proto == Proto::Tcp)
    })?;

    // Egress to a named port that resolves per destination pod: `web` is 80 on a and b,
    // 81 on c. Pods of x may only send TCP to `web`.
    c.set_policies(&policy(
        "x",
        "egress-web-only",
        "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - ports:\n    - {port: web, protocol: TCP}\n",
    ))?;
    c.assert_matrix("x/*: egress to named port web (per destination pod)", |p| {
        let web = if p.to.pod == "c" { 81 } else { 80 };
        self_or(
            p,
            p.from.ns != "x" || (p.proto == Proto::Tcp && p.port == web),
        )
    })?;

    // Egress denied at the client even though the server allows everything: x/a may only
    // talk to namespace z; y allows all ingress explicitly.
    c.set_policies(&format!(
        "{}{}",
        policy(
            "x",
            "a-egress-to-z",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: z}}\n",
        ),
        policy("y", "allow-all-ingress", "  podSelector: {}\n  ingress:\n  - {}\n"),
    ))?;
    c.assert_matrix("x/a: egress only to z; y allows all ingress", |p| {
        self_or(p, p.from != x_a || p.to.ns == "z")
    })?;

    // Overlapping policies are a union: x/a denies all ingress by one policy, and two others
    // allow y on TCP 80 and z on UDP 81.
    c.set_policies(&format!(
        "{}{}{}",
        policy("x", "deny-a", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n"),
        policy(
            "x",
            "y-tcp-80",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80}]\n",
        ),
        policy(
            "x",
            "z-udp-81",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]\n    ports: [{port: 81, protocol: UDP}]\n",
        ),
    ))?;
    c.assert_matrix("x/a: union of overlapping policies", |p| {
        self_or(
            p,
            p.to != x_a
                || (p.from.ns == "y" && p.proto == Proto::Tcp && p.port == 80)
                || (p.from.ns == "z" && p.proto == Proto::Udp && p.port == 81),
        )
    })?;

    c.set_policies("")?;
    c.assert_matrix("all policies removed", |_| true)?;
    Ok(())
}

/// A connection allowed at its start stays allowed when a policy that would deny it
/// arrives; new connections are denied; traffic the policy does not concern is undisturbed.
#[test]
fn netpol_established_connections_survive_a_new_deny_policy() -> Result<()> {
    require_root();
    let _serial = serial();
    let c = Cluster::start()?;
    let x_a = Peer { ns: "x", pod: "a" };
    let y_b = Peer { ns: "y", pod: "b" };
    let z_c = Peer { ns: "z", pod: "c" };
    c.assert_matrix("no policies", |_| true)?;

    let held = LongLivedClient::start(
        c.pod(y_b).ns(),
        IpAddr::V4(x_a.ip()),
        9090,
        Duration::from_millis(20),
        Duration::from_secs(120),
    )?;
    let unrelated = LongLivedClient::start(
        c.pod(y_b).ns(),
        IpAddr::V4(z_c.ip()),
        9090,
        Duration::from_millis(20),
        Duration::from_secs(120),
    )?;
    c.set_policies(&policy(
        "x",
        "deny-all",
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
    ))?;
    c.assert_matrix("deny all in x", |p| {
        self_or(p, p.from.ns != "x" && p.to.ns != "x")
    })?;
    std::thread::sleep(Duration::from_millis(500));
    for (what, client) in [("held x/a", held), ("unrelated z/c", unrelated)] {
        let stats = client.stop();
        assert_eq!(stats.failures, 0, "{what}: {stats:?}");
        assert!(!stats.connection_lost, "{what}: {stats:?}");
        assert!(stats.ok > 10, "{what}: too few echoes: {stats:?}");
    }
    Ok(())
}

/// `skiff observe` streams the datapath's verdicts with pod names: drops by default, allowed
/// connections when asked for (and only then).
#[test]
fn netpol_observe_reports_drops_and_allows_with_pod_names() -> Result<()> {
    require_root();
    let _serial = serial();
    let c = Cluster::start()?;
    let (x_a, y_a, y_b) = (
        Peer { ns: "x", pod: "a" },
        Peer { ns: "y", pod: "a" },
        Peer { ns: "y", pod: "b" },
    );
    c.set_policies(&policy(
        "x",
        "only-from-y-b",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]\n",
    ))?;
    c.assert_matrix("x/a: only from y/b", |p| {
        self_or(p, p.to != x_a || p.from == y_b)
    })?;

    let run = |args: &[&str], from: Peer| -> Result<serde_json::Value> {
        let mut observer = c.observe(args)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        // Probe until the observer has printed its event and exited.
        while observer.try_wait()?.is_none() {
            assert!(Instant::now() < deadline, "skiff observe printed nothing");
            let _ = c.probe(Probe {
                from,
                to: x_a,
                port: 80,
                proto: Proto::Tcp,
            });
        }
        let out = observer.wait_with_output()?;
        assert!(out.status.success(), "skiff observe: {:?}", out.status);
        let text = String::from_utf8(out.stdout)?;
        let line = text.lines().next().unwrap_or_default();
        Ok(serde_json::from_str(line)?)
    };
    let args = ["--count", "1", "--json", "--seconds", "15", "--pod", "x/a"];
    let dropped = run(&args, y_a)?;
    assert_eq!(dropped["verdict"], "DROPPED", "{dropped}");
    assert_eq!(dropped["direction"], "ingress", "{dropped}");
    assert_eq!(dropped["src_pod"], "y/a", "{dropped}");
    assert_eq!(dropped["dst_pod"], "x/a", "{dropped}");
    assert_eq!(dropped["endpoint"], "x/a", "{dropped}");
    assert_eq!(dropped["dport"], 80, "{dropped}");
    assert_eq!(dropped["reason"], "policy_denied_ingress", "{dropped}");

    let mut with_allowed = args.to_vec();
    with_allowed.extend(["--verdict", "allowed"]);
    let allowed = run(&with_allowed, y_b)?;
    assert_eq!(allowed["verdict"], "ALLOWED", "{allowed}");
    assert_eq!(allowed["src_pod"], "y/b", "{allowed}");
    assert_eq!(allowed["dst_pod"], "x/a", "{allowed}");
    Ok(())
}

/// First install: a connection older than the agent (its packets met no skiff program when it
/// opened) survives the programs being attached, and then a policy that would deny it.
#[test]
fn netpol_connection_older_than_the_agent_survives_attach_and_a_deny_policy() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut bed = TestBed::new()?;
    let a = bed.add_pod("a", "skpa", Some("10.244.2.11".parse()?), None)?;
    let b = bed.add_pod("b", "skpb", Some("10.244.2.22".parse()?), None)?;
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let _server = tcp_echo_server(a.ns(), any, 9090, "a")?;
    let _web = tcp_server(a.ns(), any, 80, "a")?;
    let held = LongLivedClient::start(
        b.ns(),
        "10.244.2.11".parse()?,
        9090,
        Duration::from_millis(20),
        Duration::from_secs(60),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let scratch = TempDir::new("netpol");
    let manifests = scratch.join("manifests");
    std::fs::create_dir(&manifests)?;
    let pod = |name: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x}}\n\
             spec: {{nodeName: e2e-node, containers: [{{name: c, image: none}}]}}\n\
             status: {{phase: Running, podIP: {ip}}}\n---\n"
        )
    };
    std::fs::write(
        manifests.join("pods.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n---\n{}{}",
            pod("a", "10.244.2.11"),
            pod("b", "10.244.2.22")
        ),
    )?;
    let (_bpffs, _agent) = start_agent(&bed, &scratch, 4)?;
    std::thread::sleep(Duration::from_secs(1));
    let attached = held.stats();
    assert_eq!(attached.failures, 0, "across attach: {attached:?}");
    std::fs::write(
        manifests.join("deny.yaml"),
        policy(
            "x",
            "deny-all",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
        ),
    )?;
    // The policy is in force once a new connection is denied.
    let deadline = Instant::now() + CONVERGE;
    let a_ip = "10.244.2.11".parse()?;
    assert_eq!(tcp_connect_once(b.ns(), a_ip, 80, PROBE_TIMEOUT)?, "a");
    while tcp_connect_once(b.ns(), a_ip, 80, PROBE_TIMEOUT).is_ok() {
        assert!(
            Instant::now() < deadline,
            "deny-all not in force after {CONVERGE:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let stats = held.stop();
    assert_eq!(stats.failures, 0, "after the deny policy: {stats:?}");
    assert!(!stats.connection_lost, "{stats:?}");
    assert!(
        stats.ok > attached.ok,
        "no echoes after the policy: {stats:?}"
    );
    Ok(())
}

//! `cargo xtask run`: the demo. A node and pods in network namespaces (skiff-testbed) built
//! from the demo manifests, the agent running in the node namespace, and real connections from
//! a client pod to the services, with a table of which backend answered.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use skiff_testbed::{Process, Server, Tally, TestBed};

use crate::manifests::{self, Manifests, Proto};
use crate::{build_agent, is_root, rel, setup, signal, workspace_root};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Stop after this many seconds of traffic (default: run until Ctrl-C, at most an hour).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Build and run the release agent.
    #[arg(long)]
    release: bool,
    /// Show the agent's log here instead of writing it to target/xtask-demo/skiff.log.
    #[arg(long)]
    agent_logs: bool,
    /// Node configuration for the agent.
    #[arg(long, default_value = "manifests/demo/node.yaml")]
    config: PathBuf,
    /// Manifests directory for the agent (its Services and EndpointSlices shape the pods).
    #[arg(long, default_value = "manifests/examples")]
    manifests: PathBuf,
}

/// Host-side veth names: `skd0` (client), `skd1`, ...
const VETH_PREFIX: &str = "skd";
const ATTACH_TIMEOUT: Duration = Duration::from_secs(15);
const TCP_ROUND: usize = 30;
const UDP_ROUND: usize = 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_secs(3);
const MAX_INTERACTIVE: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// The plan: pods and frontends derived from the manifests

#[derive(Debug, Clone)]
struct PodPlan {
    name: String,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    /// (protocol, port, IPv6?) it serves.
    listen: BTreeSet<(Proto, u16, bool)>,
    key: (String, String),
}

#[derive(Debug, Clone)]
struct Frontend {
    label: String,
    ip: IpAddr,
    port: u16,
    proto: Proto,
    /// Ready backends.
    backends: BTreeSet<(IpAddr, u16)>,
    /// Their pods' names: the replies we expect.
    expected: BTreeSet<String>,
}

impl Frontend {
    fn addr(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("{ip}:{}/{}", self.port, self.proto),
            IpAddr::V6(ip) => format!("[{ip}]:{}/{}", self.port, self.proto),
        }
    }
}

struct Plan {
    client: PodPlan,
    pods: Vec<PodPlan>,
    frontends: Vec<Frontend>,
}

/// Pods are paired across families the way the manifests write them: `10.244.C.D` with
/// `fd00:244:C::D` (same digits).
fn pair_key(addr: &IpAddr) -> (String, String) {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            (o[2].to_string(), o[3].to_string())
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            if s[3..7].iter().all(|&x| x == 0) {
                (format!("{:x}", s[2]), format!("{:x}", s[7]))
            } else {
                (a.to_string(), String::new())
            }
        }
    }
}

fn plan(m: &Manifests) -> Result<Plan> {
    let mut pods: Vec<PodPlan> = Vec::new();
    let pod_of = |addr: IpAddr, pods: &mut Vec<PodPlan>| -> usize {
        let key = pair_key(&addr);
        let free = |p: &PodPlan| match addr {
            IpAddr::V4(a) => p.ipv4 == Some(a) || p.ipv4.is_none(),
            IpAddr::V6(a) => p.ipv6 == Some(a) || p.ipv6.is_none(),
        };
        let i = match pods.iter().position(|p| p.key == key && free(p)) {
            Some(i) => i,
            None => {
                pods.push(PodPlan {
                    name: String::new(),
                    ipv4: None,
                    ipv6: None,
                    listen: BTreeSet::new(),
                    key,
                });
                pods.len() - 1
            }
        };
        match addr {
            IpAddr::V4(a) => pods[i].ipv4 = Some(a),
            IpAddr::V6(a) => pods[i].ipv6 = Some(a),
        }
        i
    };
    for slice in &m.slices {
        for ep in &slice.endpoints {
            for addr in &ep.addresses {
                let i = pod_of(*addr, &mut pods);
                for p in &slice.ports {
                    if p.proto != Proto::Sctp {
                        pods[i].listen.insert((p.proto, p.port, addr.is_ipv6()));
                    }
                }
            }
        }
    }
    if pods.is_empty() {
        bail!("the manifests have no EndpointSlice endpoints: nothing to serve the demo");
    }
    if pods.len() > 200 {
        bail!(
            "the manifests name {} endpoint addresses; the demo handles 200",
            pods.len()
        );
    }
    pods.sort_by_key(|p| (p.ipv4.is_none(), p.ipv4, p.ipv6));
    // Names: pod-D, else pod-C-D, else pod-N.
    let names = |f: &dyn Fn(usize, &PodPlan) -> String| -> Option<Vec<String>> {
        let names: Vec<String> = pods.iter().enumerate().map(|(i, p)| f(i, p)).collect();
        let unique: BTreeSet<&String> = names.iter().collect();
        (unique.len() == names.len()
            && names
                .iter()
                .all(|n| n.len() <= 40 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')))
        .then_some(names)
    };
    let chosen = names(&|_, p| format!("pod-{}", p.key.1))
        .or_else(|| names(&|_, p| format!("pod-{}-{}", p.key.0, p.key.1)))
        .unwrap_or_else(|| (0..pods.len()).map(|i| format!("pod-{i}")).collect());
    for (p, name) in pods.iter_mut().zip(chosen) {
        p.name = name;
    }

    // The client: the first pod's prefix with a free last part (5, then 2, 3, ...).
    let used: BTreeSet<IpAddr> = m
        .slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.iter().copied()))
        .collect();
    let v4_base = pods.iter().find_map(|p| p.ipv4);
    let v6_base = pods.iter().find_map(|p| p.ipv6);
    let mut client = None;
    for last in std::iter::once(5u8).chain(2..=254) {
        let ipv4 = v4_base.map(|b| {
            let o = b.octets();
            Ipv4Addr::new(o[0], o[1], o[2], last)
        });
        let ipv6 = v6_base.map(|b| {
            let mut s = b.segments();
            // Same digits as the IPv4 part (10.244.1.5 <-> fd00:244:1::5).
            s[7] = u16::from_str_radix(&last.to_string(), 16).unwrap_or(u16::from(last));
            Ipv6Addr::from(s)
        });
        let clash = ipv4.is_some_and(|a| used.contains(&IpAddr::V4(a)))
            || ipv6.is_some_and(|a| used.contains(&IpAddr::V6(a)));
        if !clash {
            client = Some(PodPlan {
                name: "client".into(),
                ipv4,
                ipv6,
                listen: BTreeSet::new(),
                key: (String::new(), String::new()),
            });
            break;
        }
    }
    let client = client.context("no free address for the client pod")?;

    let pod_name: BTreeMap<IpAddr, &str> = pods
        .iter()
        .flat_map(|p| {
            p.ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(p.ipv6.map(IpAddr::V6))
                .map(move |a| (a, p.name.as_str()))
        })
        .collect();
    let mut frontends = Vec::new();
    for svc in &m.services {
        for ip in &svc.cluster_ips {
            for port in &svc.ports {
                let label = if port.name.is_empty() {
                    format!("{}/{}", svc.namespace, svc.name)
                } else {
                    format!("{}/{}:{}", svc.namespace, svc.name, port.name)
                };
                let backends = m.backends(svc, port, ip.is_ipv6());
                let expected = backends
                    .iter()
                    .filter_map(|(a, _)| pod_name.get(a).map(|n| n.to_string()))
                    .collect();
                frontends.push(Frontend {
                    label,
                    ip: *ip,
                    port: port.port,
                    proto: port.proto,
                    backends,
                    expected,
                });
            }
        }
    }
    if !frontends
        .iter()
        .any(|f| f.proto == Proto::Tcp && !f.expected.is_empty())
    {
        bail!("the manifests have no TCP service port with ready endpoints to demonstrate");
    }
    Ok(Plan {
        client,
        pods,
        frontends,
    })
}

// ---------------------------------------------------------------------------------------------
// Running it

/// Everything the demo started; dropping it stops the servers, then the agent, then deletes the
/// namespaces (field order).
struct Running {
    servers: Vec<Server>,
    agent: Option<Process>,
    bed: TestBed,
    log: Option<PathBuf>,
}

impl Running {
    /// An error (with the end of the agent's log) if the agent has exited.
    fn check_agent(&mut self) -> Result<()> {
        let agent = self.agent.as_mut().context("no agent")?;
        if let Some(status) = agent.try_status()? {
            bail!(
                "the agent exited ({status}){}",
                self.log.as_deref().map(log_tail).unwrap_or_default()
            );
        }
        Ok(())
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(30)..];
    format!(
        "\n--- last {} lines of {} ---\n{}",
        tail.len(),
        path.display(),
        tail.join("\n")
    )
}

/// The demo's own BPF filesystem (inside `ip netns exec`, /sys/fs/bpf is not one): the agent
/// pins its maps and links there, and the demo removes them (`skiff cleanup`) and unmounts it.
struct DemoBpffs {
    mountpoint: PathBuf,
}

impl DemoBpffs {
    fn mount() -> Result<DemoBpffs> {
        let mountpoint = skiff_testbed::target_dir().join("xtask-demo").join("bpffs");
        let fs = DemoBpffs { mountpoint };
        // A previous demo killed before its cleanup may have left it mounted.
        fs.unmount_quietly();
        std::fs::create_dir_all(&fs.mountpoint)?;
        crate::run(
            Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(&fs.mountpoint),
        )
        .context("mounting the demo's bpffs")?;
        Ok(fs)
    }

    fn pin_dir(&self) -> PathBuf {
        self.mountpoint.join("skiff")
    }

    fn unmount_quietly(&self) {
        let _ = Command::new("umount")
            .arg(&self.mountpoint)
            .stderr(Stdio::null())
            .status();
    }

    /// Remove every pin (detaching the programs) and unmount.
    fn teardown(self, bin: &Path) {
        let ok = Command::new(bin)
            .args(["cleanup", "--bpffs"])
            .arg(self.pin_dir())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "warning: skiff cleanup --bpffs {} failed",
                self.pin_dir().display()
            );
        }
        self.unmount_quietly();
    }
}

fn abs(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        workspace_root().join(p)
    }
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if !is_root() {
        bail!("the demo needs root (network namespaces, veths, BPF): run it as root");
    }
    setup::setup()?;
    let bin = build_agent(args.release)?;
    let config = abs(&args.config);
    let manifests_dir = abs(&args.manifests);
    let plan = plan(&manifests::read_dir(&manifests_dir)?)?;
    let patterns = manifests::pod_interfaces(&config)?;
    let probe_if = format!("{VETH_PREFIX}0");
    if !patterns.iter().any(|p| manifests::glob_match(p, &probe_if)) {
        bail!(
            "{}: podInterfaces {patterns:?} does not match the demo's veths ({VETH_PREFIX}0, \
             {VETH_PREFIX}1, ...): add \"{VETH_PREFIX}*\"",
            rel(&config)
        );
    }

    signal::install().context("installing the SIGINT handler")?;
    let _lock = skiff_testbed::serial();
    let bpffs = DemoBpffs::mount()?;
    let work = working_manifests(&manifests_dir, &plan)?;
    let result = demo(args, &bin, &config, &work, &plan, &bpffs.pin_dir());
    println!(
        "\n==> cleaning up: stopping servers and the agent, deleting the namespaces, removing pins"
    );
    bpffs.teardown(&bin);
    let leftovers: Vec<String> = skiff_testbed::list_netns()?
        .into_iter()
        .filter(|n| {
            n.starts_with(&format!(
                "{}{}-",
                skiff_testbed::NAME_PREFIX,
                std::process::id()
            ))
        })
        .collect();
    if !leftovers.is_empty() {
        eprintln!("warning: namespaces left behind: {leftovers:?}");
    }
    match &result {
        Ok(()) => println!("==> demo finished cleanly"),
        Err(e) => eprintln!("==> demo FAILED: {e:#}"),
    }
    result
}

/// The agent reads a copy of the manifests (`target/xtask-demo/manifests`): the example
/// files plus Pod objects for the demo's pods (namespace `demo`, label `demo-role`: `client`
/// or `backend`), so that the NetworkPolicy step can select them.
fn working_manifests(examples: &Path, plan: &Plan) -> Result<PathBuf> {
    let work = skiff_testbed::target_dir()
        .join("xtask-demo")
        .join("manifests");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    for entry in std::fs::read_dir(examples)? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::copy(&path, work.join(path.file_name().context("file name")?))?;
        }
    }
    let mut pods = String::new();
    for (pod, role) in
        std::iter::once((&plan.client, "client")).chain(plan.pods.iter().map(|p| (p, "backend")))
    {
        let ips: Vec<String> = pod
            .ipv4
            .map(|a| a.to_string())
            .into_iter()
            .chain(pod.ipv6.map(|a| a.to_string()))
            .collect();
        pods += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: demo, labels: {{demo-role: {role}}}}}\n\
             spec: {{containers: [{{name: main, image: none}}]}}\n\
             status: {{phase: Running, podIP: \"{}\", podIPs: [{}]}}\n---\n",
            pod.name,
            ips.first().cloned().unwrap_or_default(),
            ips.iter().map(|i| format!("{{ip: \"{i}\"}}")).collect::<Vec<_>>().join(", ")
        );
    }
    std::fs::write(work.join("zz-demo-pods.yaml"), pods)?;
    Ok(work)
}

/// The NetworkPolicy step: backends accept only pods labelled `demo-role: trusted` (none),
/// so the client's new connections are dropped in the kernel; then the policy goes again.
fn policy_step(
    dir: &Path,
    client_ns: &str,
    main: &Frontend,
    problems: &mut Vec<String>,
) -> Result<()> {
    let file = dir.join("zz-demo-policy.yaml");
    println!(
        "\n==> NetworkPolicy: backends in namespace demo accept only pods labelled demo-role=trusted \
         ({})",
        rel(&file)
    );
    std::fs::write(
        &file,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: backends-trusted-only, namespace: demo}\n\
         spec:\n  podSelector: {matchLabels: {demo-role: backend}}\n  ingress:\n  \
         - from: [{podSelector: {matchLabels: {demo-role: trusted}}}]\n",
    )?;
    let probe = || {
        skiff_testbed::tcp_connect_once(client_ns, main.ip, main.port, Duration::from_millis(300))
            .is_ok()
    };
    let waiting = Instant::now();
    while probe() {
        if waiting.elapsed() > ATTACH_TIMEOUT {
            problems.push(format!(
                "{} still answers {} s after the deny policy was written",
                main.addr(),
                ATTACH_TIMEOUT.as_secs()
            ));
            break;
        }
        signal::sleep(Duration::from_millis(200));
    }
    let tally =
        skiff_testbed::tcp_round(client_ns, main.ip, main.port, 5, Duration::from_millis(300))?;
    println!(
        "  {} {}: {} of {} new connections denied by the backends' ingress policy \
         (`skiff observe` shows each drop)",
        main.label,
        main.addr(),
        tally.failures,
        tally.total()
    );
    if tally.ok() > 0 {
        problems.push(format!(
            "{}: answered under a deny policy: {tally}",
            main.addr()
        ));
    }
    std::fs::remove_file(&file)?;
    println!("  policy removed");
    let waiting = Instant::now();
    while !probe() {
        if waiting.elapsed() > ATTACH_TIMEOUT {
            problems.push(format!(
                "{} does not answer {} s after the policy was removed",
                main.addr(),
                ATTACH_TIMEOUT.as_secs()
            ));
            break;
        }
        signal::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn start(
    args: &DemoArgs,
    bin: &Path,
    config: &Path,
    dir: &Path,
    plan: &Plan,
    pins: &Path,
) -> Result<Running> {
    println!("\n==> building the node: network namespaces, veths, servers");
    let mut bed = TestBed::new()?;
    let mut servers = Vec::new();
    bed.add_pod(
        &plan.client.name,
        &format!("{VETH_PREFIX}0"),
        plan.client.ipv4,
        plan.client.ipv6,
    )?;
    for (i, pod) in plan.pods.iter().enumerate() {
        let p = bed.add_pod(
            &pod.name,
            &format!("{VETH_PREFIX}{}", i + 1),
            pod.ipv4,
            pod.ipv6,
        )?;
        for &(proto, port, v6) in &pod.listen {
            let any = if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            servers.push(match proto {
                Proto::Tcp => skiff_testbed::tcp_server(&p.netns, any, port, &pod.name)?,
                _ => skiff_testbed::udp_server(&p.netns, any, port, &pod.name)?,
            });
        }
    }
    println!(
        "  node   {:<24} agent runs here; pods' veths {VETH_PREFIX}0..{VETH_PREFIX}{}",
        bed.node(),
        plan.pods.len()
    );
    let show = |a: Option<String>| a.unwrap_or_else(|| "-".into());
    for (pod, host_if) in std::iter::once((&plan.client, format!("{VETH_PREFIX}0"))).chain(
        plan.pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p, format!("{VETH_PREFIX}{}", i + 1))),
    ) {
        let serves: Vec<String> = pod
            .listen
            .iter()
            .map(|(proto, port, v6)| format!("{proto} {port}{}", if *v6 { " (v6)" } else { "" }))
            .collect();
        println!(
            "  pod    {:<8} {:<5} {:<15} {:<22} {}",
            pod.name,
            host_if,
            show(pod.ipv4.map(|a| a.to_string())),
            show(pod.ipv6.map(|a| a.to_string())),
            if serves.is_empty() {
                String::new()
            } else {
                format!("serves {}", serves.join(", "))
            }
        );
    }

    let log = if args.agent_logs {
        None
    } else {
        let dir = skiff_testbed::target_dir().join("xtask-demo");
        std::fs::create_dir_all(&dir)?;
        Some(dir.join("skiff.log"))
    };
    let mut cmd = skiff_testbed::netns_command(bed.node(), bin);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--manifests")
        .arg(dir)
        .arg("--bpffs")
        .arg(pins);
    match &log {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("creating {}", path.display()))?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        None => {
            cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        }
    }
    println!(
        "\n==> starting the agent: ip netns exec {} {} run --config {} --manifests {} --bpffs {}",
        bed.node(),
        rel(bin),
        rel(config),
        rel(dir),
        rel(pins)
    );
    if let Some(path) = &log {
        println!("  its log: {}", path.display());
    }
    let agent = Process::spawn(cmd, "skiff agent")?;
    Ok(Running {
        servers,
        agent: Some(agent),
        bed,
        log,
    })
}

fn demo(
    args: &DemoArgs,
    bin: &Path,
    config: &Path,
    dir: &Path,
    plan: &Plan,
    pins: &Path,
) -> Result<()> {
    let mut running = start(args, bin, config, dir, plan, pins)?;
    let client_ns = running
        .bed
        .pod(&plan.client.name)
        .context("client pod")?
        .netns
        .clone();
    let client_addr = plan
        .client
        .ipv4
        .map(|a| a.to_string())
        .or(plan.client.ipv6.map(|a| a.to_string()))
        .unwrap_or_default();

    // The frontend shown every few seconds: the TCP one with the most ready backends.
    let main = plan
        .frontends
        .iter()
        .filter(|f| f.proto == Proto::Tcp && !f.expected.is_empty())
        .max_by_key(|f| {
            (
                f.expected.len(),
                std::cmp::Reverse(f.ip),
                std::cmp::Reverse(f.port),
            )
        })
        .context("no TCP frontend with ready backends")?
        .clone();

    // Wait until the agent has attached: the service answers.
    println!(
        "\n==> waiting (up to {} s) until {} answers through the agent",
        ATTACH_TIMEOUT.as_secs(),
        main.addr()
    );
    let waiting = Instant::now();
    loop {
        running.check_agent()?;
        if signal::stopped() {
            println!("interrupted");
            return Ok(());
        }
        if skiff_testbed::tcp_connect_once(
            &client_ns,
            main.ip,
            main.port,
            Duration::from_millis(300),
        )
        .is_ok()
        {
            println!(
                "  attached: first answer after {:.1} s",
                waiting.elapsed().as_secs_f64()
            );
            break;
        }
        if waiting.elapsed() > ATTACH_TIMEOUT {
            bail!(
                "{} did not answer within {} s of starting the agent{}",
                main.addr(),
                ATTACH_TIMEOUT.as_secs(),
                running.log.as_deref().map(log_tail).unwrap_or_default()
            );
        }
        signal::sleep(Duration::from_millis(200));
    }

    // The first answer proves the client's and one backend's hooks; the agent attaches one
    // veth after another, so wait for every pod's two links before judging every service.
    let links = pins.join("links");
    let want = 2 * (plan.pods.len() + 1);
    loop {
        let pinned = std::fs::read_dir(&links).map_or(0, |d| d.count());
        if pinned >= want {
            break;
        }
        if waiting.elapsed() > ATTACH_TIMEOUT {
            bail!(
                "the agent pinned {pinned} of {want} pod links within {} s",
                ATTACH_TIMEOUT.as_secs()
            );
        }
        signal::sleep(Duration::from_millis(100));
    }

    let mut problems: Vec<String> = Vec::new();
    println!("\n==> traffic from pod client ({client_addr}) to every service port");
    for f in &plan.frontends {
        if signal::stopped() {
            break;
        }
        let backends: Vec<String> = f
            .backends
            .iter()
            .map(|(a, p)| {
                let pod = plan
                    .pods
                    .iter()
                    .find(|pod| {
                        pod.ipv4.map(IpAddr::V4) == Some(*a) || pod.ipv6.map(IpAddr::V6) == Some(*a)
                    })
                    .map(|pod| pod.name.as_str())
                    .unwrap_or("?");
                match a {
                    IpAddr::V4(a) => format!("{pod} {a}:{p}"),
                    IpAddr::V6(a) => format!("{pod} [{a}]:{p}"),
                }
            })
            .collect();
        println!(
            "\n{}  {}  ready backends: {}",
            f.label,
            f.addr(),
            if backends.is_empty() {
                "none".to_string()
            } else {
                backends.join(", ")
            }
        );
        let (n, timeout) = if f.expected.is_empty() {
            (3, Duration::from_millis(300))
        } else if f.proto == Proto::Tcp {
            (TCP_ROUND, REQUEST_TIMEOUT)
        } else {
            (UDP_ROUND, REQUEST_TIMEOUT)
        };
        let tally = match f.proto {
            Proto::Tcp => skiff_testbed::tcp_round(&client_ns, f.ip, f.port, n, timeout)?,
            Proto::Udp => skiff_testbed::udp_round(&client_ns, f.ip, f.port, n, timeout)?,
            Proto::Sctp => {
                println!("  (SCTP: no client in the demo)");
                continue;
            }
        };
        let what = if f.proto == Proto::Tcp {
            "TCP connections"
        } else {
            "UDP requests"
        };
        if f.expected.is_empty() {
            println!(
                "  {n} {what}: {} answered, {} dropped (no ready endpoints: dropped is right)",
                tally.ok(),
                tally.failures
            );
            if tally.ok() > 0 {
                problems.push(format!(
                    "{} {}: answered without ready endpoints: {tally}",
                    f.label,
                    f.addr()
                ));
            }
            continue;
        }
        println!("  {n} {what}, answered by:");
        print!("{}", tally.table());
        check(&mut problems, f, &tally);
    }

    if !signal::stopped() {
        policy_step(dir, &client_ns, &main, &mut problems)?;
    }

    // Then a fresh distribution every few seconds, until Ctrl-C or --duration.
    let limit = args
        .duration
        .map(Duration::from_secs)
        .unwrap_or(MAX_INTERACTIVE);
    println!(
        "\n==> {} connections to {} {} every {} s {}",
        TCP_ROUND,
        main.label,
        main.addr(),
        TICK.as_secs(),
        match args.duration {
            Some(s) => format!("for {s} s"),
            None => "until Ctrl-C".to_string(),
        }
    );
    let started = Instant::now();
    while !signal::stopped() && started.elapsed() < limit {
        let left = limit.saturating_sub(started.elapsed());
        if signal::sleep(TICK.min(left)) || started.elapsed() >= limit {
            break;
        }
        running.check_agent()?;
        let tally =
            skiff_testbed::tcp_round(&client_ns, main.ip, main.port, TCP_ROUND, REQUEST_TIMEOUT)?;
        println!("  [{:>6.1} s] {}", started.elapsed().as_secs_f64(), tally);
        check(&mut problems, &main, &tally);
    }
    if signal::stopped() {
        println!("\ninterrupted");
    }
    running.check_agent()?;
    let served: u64 = running.servers.iter().map(Server::served).sum();
    println!("\n==> the pods' servers answered {served} requests in all");
    drop(running);
    if !problems.is_empty() {
        bail!(
            "{} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// Failures and answers from pods that are not ready backends are problems.
fn check(problems: &mut Vec<String>, f: &Frontend, tally: &Tally) {
    if tally.failures > 0 {
        problems.push(format!(
            "{} {}: {} of {} requests failed ({})",
            f.label,
            f.addr(),
            tally.failures,
            tally.total(),
            tally.errors.first().map(String::as_str).unwrap_or("")
        ));
    }
    let unexpected: Vec<&String> = tally
        .answers
        .keys()
        .filter(|r| !f.expected.contains(*r))
        .collect();
    if !unexpected.is_empty() {
        problems.push(format!(
            "{} {}: answers from {unexpected:?}, which are not ready backends {:?}",
            f.label,
            f.addr(),
            f.expected
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_manifests_make_a_plan() {
        let m = manifests::read_dir(&workspace_root().join("manifests/examples")).unwrap();
        let plan = plan(&m).unwrap();
        assert!(!plan.pods.is_empty());
        let names: BTreeSet<&str> = plan.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), plan.pods.len());
        let all: Vec<IpAddr> = plan
            .pods
            .iter()
            .flat_map(|p| {
                p.ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(p.ipv6.map(IpAddr::V6))
            })
            .collect();
        for a in plan
            .client
            .ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(plan.client.ipv6.map(IpAddr::V6))
        {
            assert!(!all.contains(&a), "client address {a} clashes");
        }
        for f in &plan.frontends {
            assert_eq!(
                f.expected.len(),
                f.backends
                    .iter()
                    .map(|b| b.0)
                    .collect::<BTreeSet<_>>()
                    .len(),
                "{f:?}"
            );
        }
        let patterns =
            manifests::pod_interfaces(&workspace_root().join("manifests/demo/node.yaml")).unwrap();
        assert!(
            patterns.iter().any(|p| manifests::glob_match(p, "skd0")),
            "{patterns:?}"
        );
    }

    #[test]
    fn pairs_addresses_across_families() {
        assert_eq!(
            pair_key(&"10.244.1.11".parse().unwrap()),
            pair_key(&"fd00:244:1::11".parse().unwrap())
        );
        assert_ne!(
            pair_key(&"10.244.1.11".parse().unwrap()),
            pair_key(&"fd00:244:1::12".parse().unwrap())
        );
    }
}

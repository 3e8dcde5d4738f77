//! The test bed: a node namespace and pod namespaces joined by veth pairs.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::netns::{ip, ip_batch, list_netns, netns_exists, sysctls};
use crate::process::{netns_command, Process};

/// Every namespace a test bed creates is named `skt-<pid>-<n>-<role>`.
pub const NAME_PREFIX: &str = "skt-";

/// The node's uplink: a veth whose peer stays down, carrying the node's IPv4 default route.
pub const UPLINK: &str = "uplink0";

/// Link-local address of every host-side veth: the pods' IPv6 default gateway.
const GATEWAY6: &str = "fe80::1";
/// The pods' IPv4 default gateway (answered by proxy ARP on the host-side veth).
const GATEWAY4: &str = "169.254.1.1";

static BEDS: AtomicUsize = AtomicUsize::new(0);

/// A pod of the test bed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The pod's name (what its servers reply, by convention).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// The host side of its veth pair, in the node namespace.
    pub host_if: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl Pod {
    /// The pod's network namespace.
    pub fn ns(&self) -> &str {
        &self.netns
    }
}

/// A node namespace with pods. Dropping it kills every process in its namespaces and deletes
/// them (the veths go with them).
pub struct TestBed {
    prefix: String,
    node: String,
    pods: Vec<Pod>,
    /// Namespaces created, in order (node first).
    namespaces: Vec<String>,
}

impl TestBed {
    /// Creates the node namespace (forwarding on, uplink with the default route). Removes
    /// leftovers of dead processes' test beds first ([`TestBed::cleanup_dead`]).
    pub fn new() -> Result<TestBed> {
        if !crate::is_root() {
            bail!("a test bed needs root (network namespaces and veths)");
        }
        Self::cleanup_dead()?;
        let n = BEDS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAME_PREFIX}{}-{n}-", std::process::id());
        let node = format!("{prefix}node");
        let mut bed = TestBed {
            prefix,
            node: node.clone(),
            pods: Vec::new(),
            namespaces: Vec::new(),
        };
        bed.create_netns(&node)?;
        sysctls(
            &node,
            &[
                kv("net.ipv4.ip_forward", "1"),
                kv("net.ipv6.conf.all.forwarding", "1"),
            ],
        )?;
        ip_batch(
            &node,
            &[
                format!("link add {UPLINK} type veth peer name {UPLINK}p"),
                format!("link set {UPLINK} up"),
                format!("route add default dev {UPLINK}"),
            ],
        )
        .context("configuring the node namespace")?;
        Ok(bed)
    }

    /// The prefix of every namespace name of this bed (`skt-<pid>-<n>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The node's network namespace.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The pod with this name.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// Every namespace of this bed (node first).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Adds a pod: namespace `<prefix><name>`, veth `host_if` (node side) / `eth0` (pod side),
    /// addresses and routes as described in the crate documentation.
    pub fn add_pod(
        &mut self,
        name: &str,
        host_if: &str,
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<Pod> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if name.is_empty() || name.len() > 63 || !name.chars().all(valid_char) {
            bail!("pod name {name:?}: 1 to 63 characters of [A-Za-z0-9_-]");
        }
        if host_if.is_empty() || host_if.len() > 15 || !host_if.chars().all(valid_char) {
            bail!("interface name {host_if:?}: 1 to 15 characters of [A-Za-z0-9_-]");
        }
        if host_if == UPLINK || host_if == format!("{UPLINK}p") || host_if == "lo" {
            bail!("interface name {host_if:?} is reserved");
        }
        if self.pods.len() >= 250 {
            bail!("at most 250 pods per test bed");
        }
        if ipv4.is_none() && ipv6.is_none() {
            bail!("pod {name}: give it an IPv4 or an IPv6 address");
        }
        for p in &self.pods {
            if p.name == name || p.host_if == host_if {
                bail!("pod {name} / {host_if}: name or interface already used by {p:?}");
            }
            if (ipv4.is_some() && p.ipv4 == ipv4) || (ipv6.is_some() && p.ipv6 == ipv6) {
                bail!("pod {name}: address already used by {p:?}");
            }
        }
        let netns = format!("{}{name}", self.prefix);
        self.create_netns(&netns)?;
        let node = self.node.clone();
        ip(
            Some(&node),
            &[
                "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        )
        .with_context(|| format!("creating veth {host_if} for pod {name}"))?;
        sysctls(
            &node,
            &[
                kv(&format!("net.ipv4.conf.{host_if}.proxy_arp"), "1"),
                kv(&format!("net.ipv4.neigh.{host_if}.proxy_delay"), "0"),
                kv(&format!("net.ipv4.conf.{host_if}.rp_filter"), "0"),
                kv(&format!("net.ipv6.conf.{host_if}.accept_dad"), "0"),
            ],
        )?;
        let mut host = vec![
            format!("link set {host_if} up"),
            format!("addr add {GATEWAY6}/64 dev {host_if} nodad"),
        ];
        let mut pod = vec![
            "link set eth0 up".to_string(),
            format!("route add {GATEWAY4} dev eth0 scope link"),
            format!("route add default via {GATEWAY4} dev eth0"),
            format!("route add ::/0 via {GATEWAY6} dev eth0"),
        ];
        if let Some(a) = ipv4 {
            host.push(format!("route add {a}/32 dev {host_if}"));
            pod.insert(1, format!("addr add {a}/32 dev eth0"));
        }
        if let Some(a) = ipv6 {
            host.push(format!("route add {a}/128 dev {host_if}"));
            pod.insert(1, format!("addr add {a}/128 dev eth0 nodad"));
        }
        ip_batch(&node, &host).with_context(|| format!("node side of pod {name}"))?;
        ip_batch(&netns, &pod).with_context(|| format!("pod side of pod {name}"))?;
        let pod = Pod {
            name: name.to_string(),
            netns,
            host_if: host_if.to_string(),
            ipv4,
            ipv6,
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// Spawns `program args...` inside namespace `ns` (stdout and stderr inherited); the guard
    /// stops it on drop. The bed also kills whatever still runs in its namespaces when it drops.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(
        &self,
        ns: &str,
        program: S,
        args: &[S],
    ) -> Result<Process> {
        let mut cmd: Command = netns_command(ns, program.as_ref());
        cmd.args(args);
        let label = format!("{} in {ns}", program.as_ref().to_string_lossy());
        Process::spawn(cmd, label)
    }

    fn create_netns(&mut self, name: &str) -> Result<()> {
        new_netns(name)?;
        self.namespaces.push(name.to_string());
        Ok(())
    }

    /// Plug this node into `underlay` (interface [`crate::UNDERLAY_IF`]) with its node
    /// addresses. Its default route stays on [`UPLINK`]: routes to other nodes' pods go
    /// through [`TestBed::route_via`].
    pub fn join_underlay(
        &self,
        underlay: &crate::Underlay,
        ipv4: Ipv4Addr,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<()> {
        underlay.plug(&self.node, ipv4, ipv6)
    }

    /// In the node namespace: route `dest` (address or CIDR) through `via`.
    pub fn route_via(&self, dest: &str, via: std::net::IpAddr) -> Result<()> {
        ip(
            Some(&self.node),
            &["route", "add", dest, "via", &via.to_string()],
        )
    }

    /// Removes every namespace whose name starts with `prefix` (killing the processes in it),
    /// e.g. `TestBed::cleanup_stale("skt-")` after a crashed run. Returns the names removed.
    /// Refuses prefixes shorter than 3 characters.
    pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
        if prefix.len() < 3 {
            bail!("refusing to clean up namespaces by the short prefix {prefix:?}");
        }
        let names: Vec<String> = list_netns()?
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        remove_namespaces(&names)?;
        Ok(names)
    }

    /// Removes the namespaces of test beds whose process no longer runs (`skt-<pid>-...`).
    pub fn cleanup_dead() -> Result<Vec<String>> {
        let dead: Vec<String> = list_netns()?
            .into_iter()
            .filter(|n| {
                let Some(rest) = n.strip_prefix(NAME_PREFIX) else {
                    return false;
                };
                let pid = rest.split('-').next().unwrap_or("");
                !pid.is_empty()
                    && pid.bytes().all(|b| b.is_ascii_digit())
                    && !std::path::Path::new("/proc").join(pid).exists()
            })
            .collect();
        if !dead.is_empty() {
            eprintln!(
                "skiff-testbed: removing {} namespace(s) left by dead test beds",
                dead.len()
            );
        }
        remove_namespaces(&dead)?;
        Ok(dead)
    }

    /// Tears the bed down now (what drop does), reporting errors.
    pub fn teardown(mut self) -> Result<()> {
        let mut names = std::mem::take(&mut self.namespaces);
        names.reverse();
        remove_namespaces(&names)
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        let mut names = std::mem::take(&mut self.namespaces);
        names.reverse();
        if let Err(e) = remove_namespaces(&names) {
            eprintln!("skiff-testbed: cleaning up {}: {e:#}", self.prefix);
        }
    }
}

/// Creates namespace `name` with skiff's test defaults (no DAD, no rp_filter, lo up).
pub(crate) fn new_netns(name: &str) -> Result<()> {
    if netns_exists(name) {
        bail!("network namespace {name} already exists");
    }
    ip(None, &["netns", "add", name]).with_context(|| format!("creating netns {name}"))?;
    // Before any interface exists, so new interfaces inherit the defaults.
    sysctls(
        name,
        &[
            kv("net.ipv6.conf.all.accept_dad", "0"),
            kv("net.ipv6.conf.default.accept_dad", "0"),
            kv("net.ipv4.conf.all.rp_filter", "0"),
            kv("net.ipv4.conf.default.rp_filter", "0"),
        ],
    )?;
    ip(Some(name), &["link", "set", "lo", "up"])
}

fn kv(key: &str, value: &str) -> (String, String) {
    (key.to_string(), value.to_string())
}

/// Pids of the processes in namespace `ns`, except this one.
fn netns_pids(ns: &str) -> Vec<libc::pid_t> {
    let out = match Command::new("ip").args(["netns", "pids", ns]).output() {
        Ok(out) => out,
        Err(_) => return Vec::new(),
    };
    let me = std::process::id() as libc::pid_t;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != me)
        .collect()
}

/// Kills the processes in each namespace (SIGTERM, SIGKILL after 2 s) and deletes it. Keeps
/// going after errors and reports the first.
pub(crate) fn remove_namespaces(names: &[String]) -> Result<()> {
    let mut first_error = None;
    let mut pids = Vec::new();
    for ns in names {
        pids.extend(netns_pids(ns));
    }
    if !pids.is_empty() {
        for &pid in &pids {
            // SAFETY: sending a signal; no memory involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        // SAFETY: signal 0 only checks for existence.
        let alive = |pid: libc::pid_t| unsafe { libc::kill(pid, 0) == 0 } && !is_zombie(pid);
        while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for &pid in &pids {
            if alive(pid) {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    for ns in names {
        if !netns_exists(ns) {
            continue;
        }
        if let Err(e) = ip(None, &["netns", "del", ns]) {
            eprintln!("skiff-testbed: {e:#}");
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn is_zombie(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

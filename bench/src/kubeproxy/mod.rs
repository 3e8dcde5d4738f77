//! The rule sets kube-proxy writes for ClusterIP services, in its iptables mode
//! ([`iptables`]) and its nftables mode ([`nftables`]), and the control-plane comparison:
//! how long the kernel takes to load them ([`restore_figures`]).
//!
//! Only what a ClusterIP service with ready endpoints needs is generated (no NodePorts,
//! LoadBalancers, session affinity, traffic policies or filter-table rules): the part of
//! kube-proxy's rules that grows with services and endpoints and that every packet to a
//! service walks through.

pub mod iptables;
pub mod nftables;

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::report::Figure;

/// The cluster's pod CIDR (what kube-proxy's `clusterCIDR` would be): traffic to a service
/// from outside it is masqueraded.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

const SECTION: &str = "control";

/// Transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    // The generators support UDP; the benchmarks use TCP only.
    #[allow(dead_code)]
    Udp,
}

impl Proto {
    /// Lower case, as iptables and nft spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One ClusterIP service port with its endpoints (kube-proxy's unit: one KUBE-SVC chain, one
/// `service-ips` element).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name`, used in chain names and comments.
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    /// `(endpoint IP, target port)`, in order.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl ServicePort {
    /// The port's name in kube-proxy's chain names and comments (`p<port>`).
    pub fn port_name(&self) -> String {
        format!("p{}", self.port)
    }
}

/// `n` services `bench/svc-<i>` on ClusterIPs from 10.96.0.10 upwards, port 80/TCP, each with
/// `endpoints` endpoints on port 8080 at addresses in 10.244.128.0/17 that exist nowhere
/// (they wrap around after 32,768; harmless, no traffic ever goes there).
pub fn synthetic_services(n: usize, endpoints: usize) -> Vec<ServicePort> {
    (0..n)
        .map(|i| ServicePort {
            name: format!("bench/svc-{i}"),
            cluster_ip: service_ip(i),
            port: 80,
            proto: Proto::Tcp,
            endpoints: (0..endpoints)
                .map(|j| (dummy_endpoint(i * endpoints + j), 8080))
                .collect(),
        })
        .collect()
}

/// The ClusterIP of synthetic service `i`: 10.96.0.10 + i (inside 10.96.0.0/12 for any
/// i below a million).
pub fn service_ip(i: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(10, 96, 0, 10));
    Ipv4Addr::from(base + (i as u32 % 1_000_000))
}

/// An endpoint address in 10.244.128.0/17 that no pod has.
pub fn dummy_endpoint(k: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(10, 244, 128, 0));
    Ipv4Addr::from(base + (k as u32 % 32_768))
}

/// A short stable hash of `s`, base32-like upper case letters and digits (kube-proxy uses
/// the first 16 (iptables) or 8 (nftables) characters of base32(sha256(...)); only
/// uniqueness and shape matter here).
pub(crate) fn hash_name(s: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    // Two FNV-1a variants give 128 bits, enough for 16 characters of 5 bits.
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    for &byte in s.as_bytes() {
        a = (a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        b = (b ^ u64::from(byte))
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(7);
    }
    let mut bits = (u128::from(a) << 64) | u128::from(b);
    (0..len.min(25))
        .map(|_| {
            let c = ALPHABET[(bits & 31) as usize] as char;
            bits >>= 5;
            c
        })
        .collect()
}

/// Feeds `input` to `program args...` run inside namespace `ns`; returns the wall time from
/// spawn to exit. An error (with its stderr) if it fails or takes longer than `limit`.
fn run_with_input(ns: &str, program: &str, args: &[&str], input: &str) -> Result<Duration> {
    let limit = Duration::from_secs(300);
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {program} in {ns}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_string();
    // Write from a thread: the program may not read everything before complaining.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut stderr = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{program} in {ns}: still running after {limit:?}, killed");
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let elapsed = start.elapsed();
    let _ = writer.join();
    let err = reader.join().unwrap_or_default();
    if !status.success() {
        let head: String = err.lines().take(5).collect::<Vec<_>>().join("\n");
        bail!("{program} {args:?} in {ns} failed ({status}): {head}");
    }
    Ok(elapsed)
}

/// Loads `rules` (iptables-restore input) into namespace `ns` with
/// `iptables-restore --noflush` (how kube-proxy calls it: other chains are kept, the chains
/// declared are replaced). Returns the time it took.
pub fn apply_iptables(ns: &str, rules: &str) -> Result<Duration> {
    run_with_input(ns, &iptables_program("restore"), &["--noflush"], rules)
}

/// `iptables-legacy[-SUFFIX]` when installed, else `iptables[-SUFFIX]`. Legacy is preferred:
/// with the nf_tables backend (iptables-nft 1.8.9), restoring kube-proxy's rules for 10,000
/// services x 10 endpoints takes more than 5 minutes.
pub fn iptables_program(suffix: &str) -> String {
    let name = |base: &str| {
        if suffix.is_empty() {
            base.to_string()
        } else {
            format!("{base}-{suffix}")
        }
    };
    let legacy = name("iptables-legacy");
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(&legacy).is_file()));
    if found {
        legacy
    } else {
        name("iptables")
    }
}

/// Loads `rules` (`nft -f` input, one transaction) into namespace `ns`. Returns the time it
/// took.
pub fn apply_nft(ns: &str, rules: &str) -> Result<Duration> {
    run_with_input(ns, "nft", &["-f", "-"], rules)
}

/// Which backend [`apply_iptables`] uses here: `nf_tables` or `legacy` (from `iptables -V`).
pub fn iptables_backend() -> String {
    let out = Command::new(iptables_program("")).arg("-V").output();
    match out {
        Ok(out) => {
            let v = String::from_utf8_lossy(&out.stdout);
            if v.contains("nf_tables") {
                "nf_tables".into()
            } else if v.contains("legacy") {
                "legacy".into()
            } else {
                v.trim().to_string()
            }
        }
        Err(_) => "unknown".into(),
    }
}

/// Control plane: in a scratch network namespace per scale, the time to load kube-proxy's
/// rules for `n` services × 10 endpoints (each scale in `scales`; empty: 10,000), and to apply
/// one endpoint change the way each mode does:
///
/// - iptables, full sync: the whole nat rule set again (`iptables-restore --noflush`);
/// - iptables, partial sync (`MinimizeIPTablesRestore`, default since 1.27): KUBE-SERVICES in
///   full plus the changed service's chains;
/// - nftables: one transaction flushing and refilling only that service's chains.
///
/// Slow at 10,000: about 15 s per iptables restore (legacy backend) and over 3 minutes for
/// `nft -f` of the whole table (nft 1.0.6), on a 2-core VM.
pub fn restore_figures(scales: &[usize]) -> Result<Vec<Figure>> {
    if !skiff_testbed::is_root() {
        bail!("restore_figures needs root (network namespaces, iptables, nft)");
    }
    let backend = iptables_backend();
    let mut scales: Vec<usize> = if scales.is_empty() {
        vec![10_000]
    } else {
        scales.to_vec()
    };
    scales.sort_unstable();
    scales.dedup();
    const ENDPOINTS: usize = 10;
    let mut figures = Vec::new();
    let fig = |key: String, d: Duration, note: String| Figure {
        section: SECTION,
        key,
        value: d.as_secs_f64() * 1e3,
        note,
    };
    for &n in &scales {
        if n == 0 {
            continue;
        }
        let services = synthetic_services(n, ENDPOINTS);
        // The changed service: the last one, one endpoint replaced by a new address.
        let changed = n - 1;
        let mut after = services.clone();
        after[changed].endpoints[0] = (Ipv4Addr::new(10, 244, 127, 200), 8080);

        // iptables, in a namespace of its own.
        {
            let bed = skiff_testbed::TestBed::new()?;
            let ns = bed.node();
            apply_iptables(ns, &iptables::bootstrap())?;
            let full = iptables::full_restore(&services, CLUSTER_CIDR);
            let rules = full.lines().filter(|l| l.starts_with("-A")).count();
            let t = apply_iptables(ns, &full)?;
            figures.push(fig(
                format!("iptables_restore_{n}_services_ms"),
                t,
                format!(
                    "iptables-restore --noflush of kube-proxy's nat rules, {n} services x \
                     {ENDPOINTS} endpoints, {rules} rules, empty table before; backend {backend}"
                ),
            ));
            let t = apply_iptables(ns, &iptables::full_restore(&after, CLUSTER_CIDR))?;
            figures.push(fig(
                format!("iptables_endpoint_change_full_sync_{n}_services_ms"),
                t,
                format!(
                    "one endpoint of one service changed, full sync: all {rules} nat rules \
                     restored again; backend {backend}"
                ),
            ));
            let partial = iptables::partial_restore(&after, &services, &[changed], CLUSTER_CIDR);
            // Back to `services` with a partial sync, so the numbers measure the same change.
            let t = apply_iptables(ns, &partial)?;
            figures.push(fig(
                format!("iptables_endpoint_change_partial_sync_{n}_services_ms"),
                t,
                format!(
                    "one endpoint of one service changed, partial sync (MinimizeIPTablesRestore): \
                     KUBE-SERVICES ({n} rules) plus that service's chains; backend {backend}"
                ),
            ));
            bed.teardown()?;
        }
        // nftables, in another.
        {
            let bed = skiff_testbed::TestBed::new()?;
            let ns = bed.node();
            let full = nftables::full_ruleset(&services, CLUSTER_CIDR);
            let t = apply_nft(ns, &full)?;
            figures.push(fig(
                format!("nft_load_{n}_services_ms"),
                t,
                format!(
                    "nft -f of kube-proxy's nftables-mode table, {n} services x {ENDPOINTS} \
                     endpoints, empty namespace before"
                ),
            ));
            let tx = nftables::service_update(&services[changed], &after[changed], CLUSTER_CIDR);
            let t = apply_nft(ns, &tx)?;
            figures.push(fig(
                format!("nft_endpoint_change_{n}_services_ms"),
                t,
                "one endpoint of one service changed: one nft transaction touching only that \
                 service's chains (new endpoint chain, service chain refilled, old endpoint \
                 chain deleted)"
                    .into(),
            ));
            bed.teardown()?;
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_addresses_are_in_range() {
        let s = synthetic_services(10_000, 10);
        assert_eq!(s.len(), 10_000);
        assert_eq!(s[0].cluster_ip, Ipv4Addr::new(10, 96, 0, 10));
        let last = s[9_999].cluster_ip.octets();
        assert_eq!((last[0], last[1] & 0xf0), (10, 96));
        for e in s.iter().flat_map(|s| &s.endpoints) {
            let o = e.0.octets();
            assert_eq!((o[0], o[1], o[2] & 0x80), (10, 244, 128));
        }
    }

    #[test]
    fn hash_names_are_stable_and_distinct() {
        assert_eq!(hash_name("a", 16), hash_name("a", 16));
        assert_ne!(hash_name("a", 16), hash_name("b", 16));
        assert_eq!(hash_name("x", 16).len(), 16);
        let mut all: Vec<String> = (0..20_000).map(|i| hash_name(&i.to_string(), 16)).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20_000);
    }
}

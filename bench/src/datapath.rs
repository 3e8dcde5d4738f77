//! (1) Datapath cost per packet, with BPF_PROG_TEST_RUN on the real programs loaded into this
//! kernel, against a baseline program of the same type that only parses Ethernet and IP.
//!
//! Method:
//! - established flows: one SYN creates the conntrack entry (checked: `nat_new`), one ACK is
//!   checked to hit it (`nat_established`), then the same ACK frame is run `repeat` times in
//!   one BPF_PROG_TEST_RUN call; the kernel reports the average. Median of `runs` calls. The
//!   counters are checked afterwards: every timed run moved `nat_established`, none `nat_new`.
//! - first packet of a new connection: each SYN comes from a fresh source port (a tuple never
//!   seen, so it always misses conntrack and creates two entries); each is its own call with
//!   `repeat = 1` and the kernel's per-call duration (ns resolution, includes the test-run
//!   timer's own overhead), median over all tuples. The baseline is measured the same way
//!   (`repeat = 1`) so the ratio compares like with like.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use aya::programs::{Program, TestRun, TestRunOptions};
use dataplane_common::Reason;
use skiff::bpf::{
    testrun::{self, Hook},
    writer::Writer,
    Datapath,
};
use skiff::desired::{
    BackendAddr, DesiredState, ExternalEntry, Frontend, FrontendEntry, Protocol, ServicePortRef,
};
use skiff::packet::{build_frame, FlowSpec, L4Proto, TCP_ACK};

use crate::report::Figure;

const SECTION: &str = "datapath";
pub const PROG_BASELINE_TC: &str = "skiff_baseline_tc";
pub const PROG_BASELINE_XDP: &str = "skiff_baseline_xdp";
const ENDPOINTS_PER_SERVICE: u32 = 10;
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;

pub struct Params {
    /// Runs of the same frame per BPF_PROG_TEST_RUN call, for the baselines' repeat figure.
    pub repeat: u32,
    /// Batches per figure; the median of the batches' medians is reported.
    pub runs: usize,
    /// Single-run calls (repeat = 1) per batch.
    pub calls: usize,
    pub scales: Vec<u32>,
}

impl Params {
    pub fn new(quick: bool) -> Params {
        if quick {
            Params {
                repeat: 100_000,
                runs: 5,
                calls: 4_000,
                scales: vec![10, 1_000, 10_000],
            }
        } else {
            Params {
                repeat: 1_000_000,
                runs: 7,
                calls: 20_000,
                scales: vec![10, 1_000, 10_000],
            }
        }
    }
}

/// ClusterIP of service `i` (1-based) in 10.96.0.0/16.
pub fn cluster_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i)
}

/// Address of endpoint `j` (0-based, over all services) in 10.244.0.0/14, skipping nothing:
/// 100,000 endpoints need more than a /16.
pub fn endpoint_ip(j: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + 1 + j)
}

/// `n` ClusterIP services (TCP port 80) with 10 endpoints each (port 8080).
pub fn desired_state(n: u32) -> DesiredState {
    let mut d = DesiredState::default();
    for i in 1..=n {
        let fe = Frontend {
            addr: IpAddr::V4(cluster_ip(i)),
            port: SERVICE_PORT,
            proto: Protocol::Tcp,
        };
        let mut backends: Vec<BackendAddr> = (0..ENDPOINTS_PER_SERVICE)
            .map(|k| BackendAddr {
                addr: IpAddr::V4(endpoint_ip((i - 1) * ENDPOINTS_PER_SERVICE + k)),
                port: TARGET_PORT,
                proto: Protocol::Tcp,
            })
            .collect();
        backends.sort();
        d.frontends.insert(
            fe,
            FrontendEntry {
                service: ServicePortRef {
                    namespace: "bench".into(),
                    name: format!("svc-{i}"),
                    port_name: String::new(),
                },
                backends,
            },
        );
    }
    d
}

/// NodePorts per node IP: the default range 30000-32767.
pub const NODE_PORTS: u32 = 2_768;
const NODE_PORT_BASE: u16 = 30_000;
/// This node's address, where NodePorts listen.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Endpoints of each service on this node (the external scope of `externalTrafficPolicy:
/// Local`).
const LOCAL_ENDPOINTS: usize = 2;
/// The external client of the NodePort checks (not one the timed tuples use).
const CHECK_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 250);

/// [`desired_state`] where the first `min(n, NODE_PORTS)` services are also NodePort
/// services with `externalTrafficPolicy: Local` (what the agent's translation gives): the
/// NodePort frontend on the node IP with every endpoint (internal scope: pods and the node)
/// and an external-scope entry with the endpoints on this node. Returns the state and the
/// NodePort of the last one.
pub fn nodeport_state(n: u32) -> (DesiredState, u16) {
    let mut d = desired_state(n);
    let services: Vec<(Frontend, FrontendEntry)> =
        d.frontends.iter().map(|(f, e)| (*f, e.clone())).collect();
    let mut last = NODE_PORT_BASE;
    for i in 1..=n.min(NODE_PORTS) {
        let cip = Frontend {
            addr: IpAddr::V4(cluster_ip(i)),
            port: SERVICE_PORT,
            proto: Protocol::Tcp,
        };
        let Some((_, entry)) = services.iter().find(|(f, _)| *f == cip) else {
            continue;
        };
        last = NODE_PORT_BASE + (i - 1) as u16;
        let fe = Frontend {
            addr: IpAddr::V4(NODE_IP),
            port: last,
            proto: Protocol::Tcp,
        };
        d.frontends.insert(fe, entry.clone());
        d.external.insert(
            fe,
            ExternalEntry {
                backends: entry.backends[..LOCAL_ENDPOINTS].to_vec(),
                drop_when_empty: false,
            },
        );
    }
    (d, last)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(crate) fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// Load the baseline programs (they are in the same object, not loaded by `Datapath::load`).
pub(crate) fn load_baselines(dp: &mut Datapath) -> Result<()> {
    for name in [PROG_BASELINE_TC, PROG_BASELINE_XDP] {
        let prog = dp
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?;
        match prog {
            Program::SchedClassifier(p) => p.load(),
            Program::Xdp(p) => p.load(),
            _ => bail!("program {name}: unexpected type"),
        }
        .with_context(|| format!("loading {name}"))?;
    }
    Ok(())
}

fn baseline_run(
    dp: &mut Datapath,
    hook: Hook,
    frame: &[u8],
    repeat: u32,
) -> Result<(u32, Duration)> {
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..Default::default()
    };
    let res = match (
        hook,
        dp.ebpf.program_mut(match hook {
            Hook::TcPod | Hook::TcToPod | Hook::TcExtIn | Hook::TcExt => PROG_BASELINE_TC,
            Hook::XdpExt => PROG_BASELINE_XDP,
        }),
    ) {
        (
            Hook::TcPod | Hook::TcToPod | Hook::TcExtIn | Hook::TcExt,
            Some(Program::SchedClassifier(p)),
        ) => p.test_run(opts)?,
        (Hook::XdpExt, Some(Program::Xdp(p))) => p.test_run(opts)?,
        _ => bail!("baseline program for {} not loaded", hook.name()),
    };
    Ok((res.return_value, res.duration))
}

fn verified_insns(dp: &Datapath, name: &str) -> Option<u32> {
    let info = match dp.ebpf.program(name)? {
        Program::SchedClassifier(p) => p.info().ok(),
        Program::Xdp(p) => p.info().ok(),
        _ => None,
    };
    info.and_then(|i| i.verified_instruction_count())
}

pub(crate) fn stat(dp: &Datapath, r: Reason) -> Result<u64> {
    Ok(dp.maps.stats()?.get(&r).copied().unwrap_or(0))
}

fn hook_label(hook: Hook) -> &'static str {
    match hook {
        Hook::TcPod => "tc_clusterip",
        Hook::TcToPod => "tc_to_pod",
        Hook::XdpExt => "xdp_clusterip_external",
        Hook::TcExtIn => "tc_clusterip_external",
        Hook::TcExt => "tc_external_egress",
    }
}

fn client(hook: Hook) -> IpAddr {
    match hook {
        // A pod on this node.
        Hook::TcPod | Hook::TcToPod => "10.247.255.5".parse().unwrap(),
        // A client outside the cluster.
        Hook::XdpExt | Hook::TcExtIn | Hook::TcExt => "192.0.2.50".parse().unwrap(),
    }
}

/// Median over `p.runs` batches of the median of `p.calls` single runs (repeat = 1 each).
pub(crate) fn single_runs(
    dp: &mut Datapath,
    p: &Params,
    mut one: impl FnMut(&mut Datapath, usize) -> Result<Duration>,
) -> Result<f64> {
    let mut batches = Vec::with_capacity(p.runs);
    let mut k = 0;
    for _ in 0..p.runs {
        let mut v = Vec::with_capacity(p.calls);
        for _ in 0..p.calls {
            v.push(ns(one(dp, k)?));
            k += 1;
        }
        batches.push(median(v));
    }
    Ok(median(batches))
}

/// Established flow: time the ACK of a connection already in conntrack, one run per call
/// (with `repeat > 1` the kernel runs the program again on the frame the first run already
/// rewrote, which no longer matches the flow).
fn established(dp: &mut Datapath, hook: Hook, vip: IpAddr, port: u16, p: &Params) -> Result<f64> {
    let syn = FlowSpec::new(L4Proto::Tcp, client(hook), 40_000, vip, port);
    let ack = syn
        .clone()
        .with_flags(TCP_ACK)
        .with_payload(vec![0x61u8; 32]);
    let (syn, ack) = (build_frame(&syn)?, build_frame(&ack)?);
    let out = testrun::run(dp, hook, &syn)?;
    if out.reason != Some(Reason::NatNew) {
        bail!(
            "{}: the SYN gave {:?}, expected nat_new",
            hook.name(),
            out.reason
        );
    }
    let out = testrun::run(dp, hook, &ack)?;
    if out.reason != Some(Reason::NatEstablished) {
        bail!(
            "{}: the ACK gave {:?}, expected nat_established",
            hook.name(),
            out.reason
        );
    }
    let (est0, new0) = (stat(dp, Reason::NatEstablished)?, stat(dp, Reason::NatNew)?);
    let v = single_runs(dp, p, |dp, _| {
        Ok(testrun::time_per_packet(dp, hook, &ack, 1)?)
    })?;
    let (est1, new1) = (stat(dp, Reason::NatEstablished)?, stat(dp, Reason::NatNew)?);
    let expected = (p.calls * p.runs) as u64;
    if est1 - est0 != expected || new1 != new0 {
        bail!(
            "{}: timed runs moved nat_established by {} (expected {expected}) and nat_new by {}",
            hook.name(),
            est1 - est0,
            new1 - new0
        );
    }
    Ok(v)
}

/// First packet of a new connection: one call per fresh tuple, repeat = 1.
fn new_connection(
    dp: &mut Datapath,
    hook: Hook,
    vip: IpAddr,
    port: u16,
    p: &Params,
) -> Result<f64> {
    let new0 = stat(dp, Reason::NatNew)?;
    let frames = fresh_syns(hook, vip, port, p)?;
    let v = single_runs(dp, p, |dp, k| {
        Ok(testrun::time_per_packet(dp, hook, &frames[k], 1)?)
    })?;
    let moved = stat(dp, Reason::NatNew)? - new0;
    if moved != frames.len() as u64 {
        bail!(
            "{}: {} SYNs moved nat_new by {moved}",
            hook.name(),
            frames.len()
        );
    }
    Ok(v)
}

/// SYNs from distinct source ports (and, past 60,000, distinct client addresses), never from
/// the client address itself (whose port 40,000 is the established flow's).
fn fresh_syns(hook: Hook, vip: IpAddr, port: u16, p: &Params) -> Result<Vec<Vec<u8>>> {
    (0..p.calls * p.runs)
        .map(|k| {
            let src = match client(hook) {
                IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1 + (k / 60_000) as u32).into()),
                a => a,
            };
            let syn = FlowSpec::new(L4Proto::Tcp, src, 1_024 + (k % 60_000) as u16, vip, port);
            Ok(build_frame(&syn)?)
        })
        .collect()
}

fn baseline_frame(hook: Hook) -> Result<Vec<u8>> {
    let ack = FlowSpec::new(
        L4Proto::Tcp,
        client(hook),
        40_000,
        cluster_ip(1).into(),
        SERVICE_PORT,
    )
    .with_flags(TCP_ACK)
    .with_payload(vec![0x61u8; 32]);
    Ok(build_frame(&ack)?)
}

fn check_pass(hook: Hook, ret: u32) -> Result<()> {
    let pass = match hook {
        Hook::TcPod | Hook::TcToPod | Hook::TcExtIn | Hook::TcExt => u32::MAX, // TC_ACT_UNSPEC (-1)
        Hook::XdpExt => 2,                                                     // XDP_PASS
    };
    if ret != pass {
        bail!(
            "baseline on {} returned {ret}, expected pass ({pass})",
            hook.name()
        );
    }
    Ok(())
}

/// The baseline with `repeat` runs per call (it does not rewrite the frame, so this is valid
/// here): the difference to the single-run figure is the test-run timer's own overhead.
fn baseline_repeat(dp: &mut Datapath, hook: Hook, p: &Params) -> Result<f64> {
    let frame = baseline_frame(hook)?;
    let mut runs = Vec::new();
    for _ in 0..p.runs {
        let (ret, d) = baseline_run(dp, hook, &frame, p.repeat)?;
        check_pass(hook, ret)?;
        runs.push(ns(d));
    }
    Ok(median(runs))
}

pub(crate) fn baseline_single(dp: &mut Datapath, hook: Hook, p: &Params) -> Result<f64> {
    let frame = baseline_frame(hook)?;
    single_runs(dp, p, |dp, _| {
        let (ret, d) = baseline_run(dp, hook, &frame, 1)?;
        check_pass(hook, ret)?;
        Ok(d)
    })
}

/// NodePort at XDP, in its own load: the services of [`nodeport_state`], a packet from an
/// external client to the node IP at the last NodePort. Checks first that new connections
/// only go to this node's endpoints (the external scope answered), then measures the
/// established and new-connection figures like the ClusterIP ones.
fn nodeport(n: u32, p: &Params) -> Result<(f64, f64)> {
    eprintln!("datapath: NodePort, {n} services");
    let mut dp = Datapath::load().context("loading the eBPF programs (needs root)")?;
    let (desired, port) = nodeport_state(n);
    let node = IpAddr::V4(NODE_IP);
    let fe = Frontend {
        addr: node,
        port,
        proto: Protocol::Tcp,
    };
    let local: Vec<IpAddr> = desired
        .external
        .get(&fe)
        .context("the measured NodePort has no external entry")?
        .backends
        .iter()
        .map(|b| b.addr)
        .collect();
    let mut w = Writer::new(&dp.maps)?;
    w.sync(&mut dp.maps, &desired)
        .with_context(|| format!("writing {n} services with NodePorts"))?;
    for k in 0..20u16 {
        // From an address the timed tuples never use.
        let syn = FlowSpec::new(L4Proto::Tcp, CHECK_CLIENT.into(), 20_000 + k, node, port);
        let out = testrun::run(&mut dp, Hook::XdpExt, &build_frame(&syn)?)?;
        if out.reason != Some(Reason::NatNew) {
            bail!("NodePort SYN gave {:?}, expected nat_new", out.reason);
        }
        let dst = skiff::packet::parse_frame(&out.frame)?.dst;
        if !local.contains(&dst) {
            bail!("a NodePort SYN went to {dst}, not to one of this node's endpoints {local:?}");
        }
    }
    let est = established(&mut dp, Hook::XdpExt, node, port, p)?;
    let newc = new_connection(&mut dp, Hook::XdpExt, node, port, p)?;
    Ok((est, newc))
}

/// All datapath figures. A scale whose maps cannot hold the services is reported as absent
/// with the reason (and the largest scale that fits is measured instead).
pub fn run(p: &Params) -> Result<Vec<Figure>> {
    let mut figs = Vec::new();
    // Per hook and kind: value at each scale (for the 10k/10 ratio).
    let mut by_scale: BTreeMap<(String, u32), f64> = BTreeMap::new();
    let mut scales = p.scales.clone();
    let mut i = 0;
    let mut insns_done = false;
    while i < scales.len() {
        let n = scales[i];
        i += 1;
        eprintln!("datapath: {n} services x {ENDPOINTS_PER_SERVICE} endpoints");
        let mut dp = Datapath::load().context("loading the eBPF programs (needs root)")?;
        load_baselines(&mut dp)?;
        if !insns_done {
            insns_done = true;
            let mut names: Vec<&str> = skiff::bpf::object::PROGRAMS.to_vec();
            names.extend([PROG_BASELINE_TC, PROG_BASELINE_XDP]);
            for name in names {
                match verified_insns(&dp, name) {
                    Some(c) => figs.push(Figure::new(
                        SECTION,
                        format!("verified_insns_{name}_count"),
                        c as f64,
                        "instructions the verifier processed",
                    )),
                    None => figs.push(Figure::absent(
                        SECTION,
                        format!("verified_insns_{name}_count"),
                        "kernel did not report it",
                    )),
                }
            }
        }
        let desired = desired_state(n);
        let mut w = Writer::new(&dp.maps)?;
        if let Err(e) = w.sync(&mut dp.maps, &desired) {
            let entries = n * (ENDPOINTS_PER_SERVICE + 1);
            let note = format!(
                "does not fit: {n} services x {ENDPOINTS_PER_SERVICE} endpoints need {entries} \
                 service-map entries (1 count + 1 slot per endpoint each); SK_SVC_V1 holds {}: \
                 the map write fails",
                dataplane_common::maps::SERVICES_MAX
            );
            eprintln!("datapath: {note}: {e}");
            for hook in [Hook::TcPod, Hook::XdpExt] {
                for kind in ["established", "new_connection"] {
                    figs.push(Figure::absent(
                        SECTION,
                        format!("{}_{kind}_{n}_services_ns_per_packet", hook_label(hook)),
                        &note,
                    ));
                }
            }
            // Measure the largest round scale that fits instead.
            let fits = dataplane_common::maps::SERVICES_MAX / (ENDPOINTS_PER_SERVICE + 1);
            let fallback = fits / 1000 * 1000;
            if fallback > 0 && !scales.contains(&fallback) {
                scales.push(fallback);
            }
            continue;
        }
        let vip: IpAddr = cluster_ip(n).into();
        let mut xdp_base = f64::NAN;
        for hook in [Hook::TcPod, Hook::XdpExt] {
            let label = hook_label(hook);
            let base_rep = baseline_repeat(&mut dp, hook, p)?;
            let base_one = baseline_single(&mut dp, hook, p)?;
            if hook == Hook::XdpExt {
                xdp_base = base_one;
            }
            let est = established(&mut dp, hook, vip, SERVICE_PORT, p)?;
            let newc = new_connection(&mut dp, hook, vip, SERVICE_PORT, p)?;
            let kind = match hook {
                Hook::TcPod | Hook::TcExt => "tc",
                Hook::TcExtIn => "tc_external",
                Hook::TcToPod => "tc_to_pod",
                Hook::XdpExt => "xdp",
            };
            let single = format!(
                "repeat 1 per call, median of {} batches' medians of {} calls",
                p.runs, p.calls
            );
            figs.push(Figure::new(
                SECTION,
                format!("baseline_{kind}_{n}_services_ns_per_packet"),
                base_one,
                format!("parse Ethernet+IP, pass; {single}"),
            ));
            figs.push(Figure::new(
                SECTION,
                format!("baseline_{kind}_repeat_{n}_services_ns_per_packet"),
                base_rep,
                format!(
                    "repeat {} per call, median of {}: the difference to the line above is the test-run timer's overhead",
                    p.repeat, p.runs
                ),
            ));
            figs.push(Figure::new(
                SECTION,
                format!("{label}_established_{n}_services_ns_per_packet"),
                est,
                format!("ACK of a tracked flow (nat_established checked); {single}"),
            ));
            figs.push(Figure::new(
                SECTION,
                format!("{label}_established_{n}_services_vs_baseline_ratio"),
                est / base_one,
                "",
            ));
            figs.push(Figure::new(
                SECTION,
                format!("{label}_new_connection_{n}_services_ns_per_packet"),
                newc,
                format!("SYN of a fresh tuple each call (nat_new checked); {single}"),
            ));
            figs.push(Figure::new(
                SECTION,
                format!("{label}_new_connection_{n}_services_vs_baseline_ratio"),
                newc / base_one,
                "",
            ));
            by_scale.insert((format!("{label}_established"), n), est);
            by_scale.insert((format!("{label}_new_connection"), n), newc);
        }
        drop(dp);
        let (est, newc) = nodeport(n, p)?;
        let single = format!(
            "repeat 1 per call, median of {} batches' medians of {} calls",
            p.runs, p.calls
        );
        let np = format!(
            "NodePort of service {} of {n} ({} NodePort services, eTP Local: external scope with \
             {LOCAL_ENDPOINTS} endpoints on this node, checked)",
            n.min(NODE_PORTS),
            n.min(NODE_PORTS)
        );
        for (kind, v, what) in [
            (
                "established",
                est,
                "ACK of a tracked flow (nat_established checked)",
            ),
            (
                "new_connection",
                newc,
                "SYN of a fresh tuple each call (nat_new checked)",
            ),
        ] {
            figs.push(Figure::new(
                SECTION,
                format!("xdp_nodeport_{kind}_{n}_services_ns_per_packet"),
                v,
                format!("{what}; {np}; {single}"),
            ));
            figs.push(Figure::new(
                SECTION,
                format!("xdp_nodeport_{kind}_{n}_services_vs_baseline_ratio"),
                v / xdp_base,
                "against baseline_xdp of the same scale",
            ));
            by_scale.insert((format!("xdp_nodeport_{kind}"), n), v);
        }
    }
    // Largest measured scale against 10 services.
    let keys: Vec<String> = by_scale.keys().map(|(k, _)| k.clone()).collect();
    for k in keys.iter().collect::<std::collections::BTreeSet<_>>() {
        let small = by_scale.get(&(k.clone(), 10));
        let largest = by_scale
            .iter()
            .filter(|((kk, n), _)| kk == k && *n > 10)
            .max_by_key(|((_, n), _)| *n);
        if let (Some(small), Some(((_, n), big))) = (small, largest) {
            figs.push(Figure::new(
                SECTION,
                format!("{k}_{n}_vs_10_services_ratio"),
                big / small,
                "",
            ));
        }
    }
    Ok(figs)
}

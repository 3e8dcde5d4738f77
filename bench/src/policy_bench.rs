//! NetworkPolicy at scale (issue 4 "Scale", issue 6): the synthetic cluster of
//! `policy_cluster` compiled by the agent's compiler and written by its policy writer into a
//! loaded `Datapath`.
//!
//! - control: `PolicyModel::new` + `compile_model` time, a recompile with the previous output,
//!   the entries, the time `PolicyWriter::sync` takes to load them into the kernel maps, and
//!   one policy change end to end (model, compile with previous, diff, write, read-back of the
//!   changed rule from the kernel map) with its number of map operations.
//! - datapath: the per-packet cost at the to-pod hook (ingress) and the from-pod hook
//!   (egress) with 0, 1, and more policies over the same pods: the first packet of a new
//!   connection (each from a fresh source port, one `repeat = 1` call each, so the full
//!   chain runs every time: endpoint, policy conntrack miss, LPM identity, rule lookups, port
//!   range scan, conntrack record), a denied one, and a packet of a tracked connection.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use dataplane_common::policy::{PolicyKey, DIR_INGRESS};
use dataplane_common::{Reason, PROTO_TCP};
use skiff::bpf::{
    policy_writer::PolicyWriter,
    testrun::{self, Hook},
    Datapath,
};
use skiff::packet::{build_frame, FlowSpec, L4Proto, TCP_ACK};
use skiff::policy::{compile_model, evaluate::lpm, ip_key, CompiledPolicy, PolicyModel};

use crate::datapath::{self, Params};
use crate::policy_cluster::{PolicyCluster, Scale, ALLOWED_PORT, DB_PORT, DENIED_PORT};
use crate::report::Figure;

const NAMESPACES: usize = 50;
/// Fresh tuples per figure: distinct source ports of the one client pod (its address is what
/// the policy names), and below the policy conntrack's size (LRU, 131,072), which is emptied
/// before each figure: no figure pays for evictions.
const MAX_TUPLES: usize = 60_000;

pub struct PolicyParams {
    pub pods: usize,
    /// The largest set: the control figures' scale.
    pub policies: usize,
    /// Policy sets the per-packet figures compare (1 is the reference).
    pub sets: Vec<usize>,
    /// Policy changes timed.
    pub changes: usize,
}

impl PolicyParams {
    pub fn new(quick: bool) -> PolicyParams {
        if quick {
            PolicyParams {
                pods: 2_000,
                policies: 200,
                sets: vec![0, 1, 200],
                changes: 10,
            }
        } else {
            PolicyParams {
                pods: 10_000,
                policies: 1_000,
                sets: vec![0, 1, 100, 1_000],
                changes: 50,
            }
        }
    }

    fn scale(&self, policies: usize) -> Scale {
        Scale {
            pods: self.pods,
            namespaces: NAMESPACES,
            policies,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn compiled(c: &PolicyCluster, previous: Option<&CompiledPolicy>) -> Result<CompiledPolicy> {
    let out = compile_model(&PolicyModel::new(&c.state, &c.config), previous);
    if !out.errors.is_empty() {
        bail!(
            "the generated policies do not compile cleanly: {:?}",
            out.errors
        );
    }
    Ok(out)
}

/// The ingress rule of the target for the client's identity, read from the kernel map.
fn kernel_rule_allows(
    dp: &Datapath,
    c: &PolicyCluster,
    compiled: &CompiledPolicy,
    port: u16,
) -> Result<bool> {
    let ep = compiled
        .maps
        .endpoints
        .get(&ip_key(c.target))
        .context("the target is not an endpoint")?;
    let identity =
        lpm(&compiled.maps.identities, c.client).context("the client has no identity")?;
    let key = PolicyKey {
        endpoint: ep.id,
        identity,
        proto: PROTO_TCP,
        dir: DIR_INGRESS,
        _pad: [0; 2],
    };
    let v = dp.maps.policy_rules.get(&key, 0)?;
    Ok(v.ranges[..v.count as usize]
        .iter()
        .any(|r| r.lo <= port && port <= r.hi))
}

/// Control-plane figures at the largest set.
pub fn control(p: &PolicyParams) -> Result<Vec<Figure>> {
    const SECTION: &str = "control";
    let mut figs = Vec::new();
    let s = p.scale(p.policies);
    let tag = s.tag();
    eprintln!("control: NetworkPolicy {tag}");
    let mut c = PolicyCluster::new(s)?;
    let local = format!(
        "{} policies over {} pods in {NAMESPACES} namespaces, {} nodes (this node: {} pods)",
        s.policies,
        s.pods,
        s.nodes(),
        s.pods / s.nodes()
    );

    let t = Instant::now();
    let model = PolicyModel::new(&c.state, &c.config);
    let t_model = t.elapsed();
    let t = Instant::now();
    let first = compile_model(&model, None);
    let t_compile = t.elapsed();
    if !first.errors.is_empty() {
        bail!("the generated policies do not compile: {:?}", first.errors);
    }
    let t = Instant::now();
    let again = compile_model(&PolicyModel::new(&c.state, &c.config), Some(&first));
    let t_recompile = t.elapsed();
    if again != first {
        bail!("recompiling the unchanged cluster gave a different result");
    }
    drop(again);
    drop(model);

    let mut dp = Datapath::load().context("loading the eBPF programs (needs root)")?;
    let mut writer = PolicyWriter::new(&dp.maps)?;
    let t = Instant::now();
    let report = writer.sync(&mut dp.maps, &first.maps)?;
    let t_write = t.elapsed();

    let put = |figs: &mut Vec<Figure>, k: String, v: f64, note: &str| {
        figs.push(Figure::new(SECTION, k, v, note));
    };
    put(
        &mut figs,
        format!("policy_model_build_{tag}_ms"),
        ms(t_model),
        &format!("PolicyModel::new: validate policies, pods, namespaces; {local}"),
    );
    put(
        &mut figs,
        format!("policy_compile_{tag}_ms"),
        ms(t_compile),
        "compile_model without a previous output",
    );
    put(
        &mut figs,
        format!("policy_model_build_compile_{tag}_ms"),
        ms(t_model + t_compile),
        "",
    );
    put(
        &mut figs,
        format!("policy_recompile_unchanged_{tag}_ms"),
        ms(t_recompile),
        "model + compile_model with the previous output (checked identical)",
    );
    let entries = [
        (
            "local_endpoints",
            first.endpoints.len(),
            "local pods with policy state",
        ),
        (
            "identities",
            first.identities.len(),
            "address classes (numeric identities)",
        ),
        (
            "lpm_entries",
            first.maps.identities.len(),
            "SK_IPID_V1 prefixes (pod IPs, ipBlock cidrs and excepts, node IPs)",
        ),
        (
            "rules",
            first.maps.rules.len(),
            "SK_POL_V1 keys (endpoint, identity, protocol, direction)",
        ),
    ];
    for (what, n, note) in entries {
        put(
            &mut figs,
            format!("policy_{tag}_{what}_count"),
            n as f64,
            note,
        );
    }
    put(
        &mut figs,
        format!("policy_map_load_{tag}_ms"),
        ms(t_write),
        &format!(
            "PolicyWriter::sync into empty maps of a loaded Datapath: {} map updates",
            report.ops
        ),
    );
    put(
        &mut figs,
        format!("policy_full_sync_{tag}_ms"),
        ms(t_model + t_compile + t_write),
        "model + compile + map load",
    );

    // One policy change: bench-allow gains a port (a different one each time).
    let mut times = Vec::with_capacity(p.changes);
    let mut ops = Vec::with_capacity(p.changes);
    let mut current = first;
    for k in 0..p.changes {
        let port = 20_000 + k as u16;
        c.edit_bench_allow(port)?;
        let t = Instant::now();
        let next = compile_model(&PolicyModel::new(&c.state, &c.config), Some(&current));
        let r = writer.sync(&mut dp.maps, &next.maps)?;
        let held = kernel_rule_allows(&dp, &c, &next, port)?;
        let took = t.elapsed();
        if !held {
            bail!("after the policy change the kernel rule does not allow port {port}");
        }
        if k > 0 && kernel_rule_allows(&dp, &c, &next, port - 1)? {
            bail!(
                "after the policy change the kernel rule still allows {}",
                port - 1
            );
        }
        times.push(ms(took));
        ops.push(r.ops as f64);
        current = next;
    }
    let note = format!(
        "{} edits of one policy (a port added to bench-allow): model + compile with previous + \
         diff + write + read-back of the rule from the kernel map",
        p.changes
    );
    put(
        &mut figs,
        format!("policy_change_{tag}_p50_ms"),
        percentile(&times, 50.0),
        &note,
    );
    put(
        &mut figs,
        format!("policy_change_{tag}_max_ms"),
        percentile(&times, 100.0),
        "",
    );
    put(
        &mut figs,
        format!("policy_change_{tag}_map_ops_count"),
        datapath::median(ops),
        "map updates/deletes of one change (median)",
    );
    Ok(figs)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Empty the policy conntrack (bounded: at most its size).
fn clear_policy_ct(dp: &mut Datapath) -> Result<()> {
    let keys: Vec<_> = dp
        .maps
        .policy_conntrack
        .keys()
        .take(dataplane_common::maps::POLICY_CONNTRACK_MAX as usize)
        .collect::<Result<_, _>>()?;
    for k in keys {
        let _ = dp.maps.policy_conntrack.remove(&k);
    }
    Ok(())
}

fn syn(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Result<Vec<u8>> {
    Ok(build_frame(&FlowSpec::new(
        L4Proto::Tcp,
        src,
        sport,
        dst,
        dport,
    ))?)
}

/// Check one packet's counted reason before timing its kind.
fn expect(dp: &mut Datapath, hook: Hook, frame: &[u8], want: Reason, what: &str) -> Result<()> {
    let out = testrun::run(dp, hook, frame)?;
    if out.reason != Some(want) {
        bail!("{what}: got {:?}, expected {want:?}", out.reason);
    }
    Ok(())
}

/// One policy set, compiled and written into its own loaded `Datapath`.
struct Loaded {
    policies: usize,
    c: PolicyCluster,
    dp: Datapath,
    lpm_entries: usize,
    rules: usize,
}

impl Loaded {
    fn new(pp: &PolicyParams, policies: usize) -> Result<Loaded> {
        let c = PolicyCluster::new(pp.scale(policies))?;
        let compiled = compiled(&c, None)?;
        let mut dp = Datapath::load().context("loading the eBPF programs (needs root)")?;
        PolicyWriter::new(&dp.maps)?.sync(&mut dp.maps, &compiled.maps)?;
        let mut l = Loaded {
            policies,
            c,
            dp,
            lpm_entries: compiled.maps.identities.len(),
            rules: compiled.maps.rules.len(),
        };
        l.check()?;
        Ok(l)
    }

    fn isolated(&self) -> bool {
        self.policies > 0
    }

    /// What the to-pod hook counts for the client's new connection to the allowed port.
    fn pass_in(&self) -> Reason {
        if self.isolated() {
            Reason::PassPolicyAllowed
        } else {
            Reason::PassPolicyNone
        }
    }

    /// The verdicts the reference evaluator gives, in the kernel, before timing.
    fn check(&mut self) -> Result<()> {
        let (c, n) = (&self.c, self.policies);
        let want = self.pass_in();
        let allowed = syn(c.client, 1_000, c.target, ALLOWED_PORT)?;
        let denied = syn(c.client, 1_001, c.target, DENIED_PORT)?;
        let egress_denied = syn(c.target, 1_002, c.db, DB_PORT + 1)?;
        let what = format!("at {n} policies");
        expect(
            &mut self.dp,
            Hook::TcToPod,
            &allowed,
            want,
            &format!("client -> target:{ALLOWED_PORT} {what}"),
        )?;
        if self.isolated() {
            expect(
                &mut self.dp,
                Hook::TcToPod,
                &denied,
                Reason::DropPolicyIngress,
                &format!("client -> target:{DENIED_PORT} {what}"),
            )?;
            // Egress isolation shows as a drop of what bench-allow does not allow.
            expect(
                &mut self.dp,
                Hook::TcPod,
                &egress_denied,
                Reason::DropPolicyEgress,
                &format!("target -> db:{} {what}", DB_PORT + 1),
            )?;
        }
        Ok(())
    }
}

/// A kind of packet timed at every policy set.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// SYN client -> target:ALLOWED_PORT at the to-pod hook, fresh source port each call.
    NewIn,
    /// SYN client -> target:DENIED_PORT at the to-pod hook (isolated sets only).
    DeniedIn,
    /// ACK of a recorded connection at the to-pod hook.
    TrackedIn,
    /// SYN target -> db:DB_PORT at the from-pod hook, fresh source port each call.
    NewOut,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::NewIn, Kind::DeniedIn, Kind::TrackedIn, Kind::NewOut];

    fn key(self) -> &'static str {
        match self {
            Kind::NewIn => "tc_to_pod_new_connection",
            Kind::DeniedIn => "tc_to_pod_denied",
            Kind::TrackedIn => "tc_to_pod_tracked",
            Kind::NewOut => "tc_from_pod_new_connection",
        }
    }

    fn hook(self) -> Hook {
        match self {
            Kind::NewOut => Hook::TcPod,
            _ => Hook::TcToPod,
        }
    }

    /// The counter every timed run moves. The from-pod hook counts the service pipeline's
    /// reason (no services here); that egress was not dropped is checked separately.
    fn counted(self, l: &Loaded) -> Reason {
        match self {
            Kind::NewIn => l.pass_in(),
            Kind::DeniedIn => Reason::DropPolicyIngress,
            Kind::TrackedIn => Reason::PassPolicyTracked,
            Kind::NewOut => Reason::PassNoService,
        }
    }

    /// The frames of `n` timed runs, after preparing the maps (an empty policy conntrack;
    /// for `TrackedIn` one recorded connection).
    fn prepare(self, l: &mut Loaded, n: usize) -> Result<Vec<Vec<u8>>> {
        clear_policy_ct(&mut l.dp)?;
        let c = &l.c;
        let fresh = |src: IpAddr, dst: IpAddr, dport: u16| -> Result<Vec<Vec<u8>>> {
            (0..n)
                .map(|k| syn(src, 1_024 + (k % 60_000) as u16, dst, dport))
                .collect()
        };
        match self {
            Kind::NewIn => fresh(c.client, c.target, ALLOWED_PORT),
            Kind::DeniedIn => fresh(c.client, c.target, DENIED_PORT),
            Kind::NewOut => fresh(c.target, c.db, DB_PORT),
            Kind::TrackedIn => {
                let first = syn(c.client, 999, c.target, ALLOWED_PORT)?;
                let ack = build_frame(
                    &FlowSpec::new(L4Proto::Tcp, c.client, 999, c.target, ALLOWED_PORT)
                        .with_flags(TCP_ACK)
                        .with_payload(vec![0x61u8; 32]),
                )?;
                let want = l.pass_in();
                expect(
                    &mut l.dp,
                    Hook::TcToPod,
                    &first,
                    want,
                    "the tracked flow's SYN",
                )?;
                expect(
                    &mut l.dp,
                    Hook::TcToPod,
                    &ack,
                    Reason::PassPolicyTracked,
                    "the tracked flow's ACK",
                )?;
                Ok(vec![ack; n])
            }
        }
    }
}

/// Median single-run (`repeat = 1`) cost over `frames`, draining the event ring as it goes
/// (denied packets emit events; a full ring would make later ones cheaper).
fn batch(dp: &mut Datapath, hook: Hook, frames: &[Vec<u8>]) -> Result<f64> {
    let mut v = Vec::with_capacity(frames.len());
    for (k, f) in frames.iter().enumerate() {
        if k % 1_000 == 0 {
            skiff::bpf::events::drain(&mut dp.maps.policy_events, 100_000);
        }
        v.push(datapath::ns(testrun::time_per_packet(dp, hook, f, 1)?));
    }
    Ok(datapath::median(v))
}

/// Time `kind` at every set that has it, interleaving the sets batch by batch (so a change
/// in the machine's load during the run hits every set alike). Median of the batches'
/// medians per set; the counters are checked afterwards.
fn time_kind(sets: &mut [Loaded], kind: Kind, p: &Params) -> Result<Vec<Option<f64>>> {
    let n = p.runs * p.calls;
    let applies = |l: &Loaded| kind != Kind::DeniedIn || l.isolated();
    let mut frames = Vec::new();
    let mut before = Vec::new();
    for l in sets.iter_mut() {
        if applies(l) {
            frames.push(kind.prepare(l, n)?);
            before.push((
                datapath::stat(&l.dp, kind.counted(l))?,
                datapath::stat(&l.dp, Reason::DropPolicyEgress)?,
            ));
        } else {
            frames.push(Vec::new());
            before.push((0, 0));
        }
    }
    let mut meds: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
    for b in 0..p.runs {
        for (i, l) in sets.iter_mut().enumerate() {
            if frames[i].is_empty() {
                continue;
            }
            let slice = &frames[i][b * p.calls..(b + 1) * p.calls];
            meds[i].push(batch(&mut l.dp, kind.hook(), slice)?);
        }
    }
    let mut out = Vec::new();
    for (i, l) in sets.iter().enumerate() {
        if frames[i].is_empty() {
            out.push(None);
            continue;
        }
        let moved = datapath::stat(&l.dp, kind.counted(l))? - before[i].0;
        if moved != n as u64 {
            bail!(
                "{} at {} policies: {n} timed runs moved {:?} by {moved}",
                kind.key(),
                l.policies,
                kind.counted(l)
            );
        }
        if datapath::stat(&l.dp, Reason::DropPolicyEgress)? != before[i].1 {
            bail!("{} at {} policies: egress drops", kind.key(), l.policies);
        }
        out.push(Some(datapath::median(meds[i].clone())));
    }
    Ok(out)
}

/// Datapath figures: every policy set of `pp` over the same pods, each in its own loaded
/// `Datapath`, all loaded at once and timed interleaved.
pub fn datapath(pp: &PolicyParams, p: &Params) -> Result<Vec<Figure>> {
    const SECTION: &str = "datapath";
    let p = Params {
        repeat: p.repeat,
        runs: p.runs,
        calls: p.calls.min(MAX_TUPLES / p.runs),
        scales: vec![],
    };
    let mut sets = Vec::new();
    for &n in &pp.sets {
        eprintln!("datapath: NetworkPolicy {}", pp.scale(n).tag());
        sets.push(Loaded::new(pp, n)?);
    }
    let Some(first) = sets.first_mut() else {
        bail!("no policy set to measure");
    };
    datapath::load_baselines(&mut first.dp)?;
    let base = datapath::baseline_single(&mut first.dp, Hook::TcToPod, &p)?;
    let mut results: Vec<[Option<f64>; 4]> = vec![[None; 4]; sets.len()];
    for (k, kind) in Kind::ALL.into_iter().enumerate() {
        for (i, v) in time_kind(&mut sets, kind, &p)?.into_iter().enumerate() {
            results[i][k] = v;
        }
    }
    let single = format!(
        "repeat 1 per call, median of {} batches' medians of {} calls",
        p.runs, p.calls
    );
    let mut figs = vec![Figure::new(
        SECTION,
        format!("baseline_tc_policy_{}_pods_ns_per_packet", pp.pods),
        base,
        format!("the TC baseline program, measured with the policy rows; {single}"),
    )];
    let reference = sets
        .iter()
        .position(|s| s.policies == 1)
        .map(|i| results[i]);
    for (s, r) in sets.iter().zip(&results) {
        let tag = pp.scale(s.policies).tag();
        let maps = format!("{} LPM entries, {} rules", s.lpm_entries, s.rules);
        let (verdict, egress) = if s.isolated() {
            (
                "allowed by bench-allow (policy_allowed checked)",
                "allowed by bench-allow",
            )
        } else {
            ("not isolated (policy_not_isolated checked)", "not isolated")
        };
        let notes = [
            format!(
                "SYN client -> target:{ALLOWED_PORT}, fresh source port each call, {verdict}; \
                 {maps}; {single}"
            ),
            format!(
                "SYN client -> target:{DENIED_PORT}, fresh source port, policy_denied_ingress \
                 checked"
            ),
            "ACK of a recorded connection (policy_tracked checked)".to_string(),
            format!(
                "SYN target -> db:{DB_PORT} at the from-pod hook (egress {egress}), fresh \
                 source port, no drop checked"
            ),
        ];
        let rows = Kind::ALL
            .iter()
            .zip(r)
            .zip(notes)
            .map(|((k, v), note)| (k.key(), *v, note));
        for (i, (kind, v, note)) in rows.into_iter().enumerate() {
            let Some(v) = v else { continue };
            figs.push(Figure::new(
                SECTION,
                format!("{kind}_{tag}_ns_per_packet"),
                v,
                note,
            ));
            figs.push(Figure::new(
                SECTION,
                format!("{kind}_{tag}_vs_baseline_ratio"),
                v / base,
                "",
            ));
            if s.policies != 1 {
                if let Some(Some(one)) = reference.map(|r| r[i]) {
                    figs.push(Figure::new(
                        SECTION,
                        format!("{kind}_{}_vs_1_policies_{}_pods_ratio", s.policies, pp.pods),
                        v / one,
                        "same pods, same flow; the issue's target is within 1.1x",
                    ));
                }
            }
        }
    }
    Ok(figs)
}

//! (3) Control plane: from a manifests directory to programmed maps, through the agent's own
//! code (`manifests::load_strict` / `ManifestStore`, `translate`, `Writer::sync` into the maps
//! of a loaded `Datapath`).
//!
//! The parent generates the manifests (N Services with one TCP port and one EndpointSlice of
//! 10 endpoints each, 100 services per file) and re-executes this binary with the hidden
//! `control-child` subcommand, so that the peak RSS (VmHWM) is that of a process doing only
//! what the agent does. The child prints its figures as JSON on a result file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use skiff::bpf::{abi, writer::Writer, Datapath};
use skiff::config::NodeConfig;
use skiff::desired::{BackendAddr, Frontend, Protocol};
use skiff::manifests::{load_strict, DirSnapshot, ManifestStore};
use skiff::model::NamespacedName;
use skiff::translate::translate;

use crate::datapath::{cluster_ip, endpoint_ip};
use crate::report::Figure;

const SECTION: &str = "control";
const ENDPOINTS: u32 = 10;
const PER_FILE: u32 = 100;
const NAMESPACE: &str = "bench";

pub struct Params {
    pub services: Vec<u32>,
    /// Endpoint changes measured per path.
    pub changes: usize,
    /// Bound on the child process.
    pub timeout: Duration,
}

impl Params {
    pub fn new(quick: bool) -> Params {
        if quick {
            Params {
                services: vec![2_000],
                changes: 50,
                timeout: Duration::from_secs(120),
            }
        } else {
            Params {
                services: vec![10_000],
                changes: 100,
                timeout: Duration::from_secs(900),
            }
        }
    }
}

const CONFIG: &str = "nodeName: bench-node\n\
nodeIPs: [192.0.2.1]\n\
clusterCIDRs: [10.244.0.0/14]\n\
serviceCIDRs: [10.96.0.0/16]\n";

fn service_yaml(out: &mut String, i: u32, first_endpoint_override: Option<IpAddr>) {
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: {NAMESPACE}}}\n\
         spec: {{clusterIP: {}, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: svc-{i}-1, namespace: {NAMESPACE}, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
         addressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n",
        cluster_ip(i)
    );
    for k in 0..ENDPOINTS {
        let ip: IpAddr = match (k, first_endpoint_override) {
            (0, Some(ip)) => ip,
            _ => endpoint_ip((i - 1) * ENDPOINTS + k).into(),
        };
        let _ = writeln!(out, "- addresses: [{ip}]\n  nodeName: node-{}", k % 50);
    }
    out.push_str("---\n");
}

fn file_of(i: u32) -> String {
    format!("svc-{:05}.yaml", (i - 1) / PER_FILE)
}

/// Write the file holding service `i`, with its first endpoint replaced by `ip` if given.
fn write_file_of(dir: &Path, n: u32, i: u32, ip: Option<IpAddr>) -> Result<()> {
    let start = (i - 1) / PER_FILE * PER_FILE + 1;
    let end = (start + PER_FILE - 1).min(n);
    let mut text = String::new();
    for s in start..=end {
        service_yaml(&mut text, s, if s == i { ip } else { None });
    }
    let path = dir.join(file_of(i));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn generate(dir: &Path, n: u32) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut i = 1;
    while i <= n {
        write_file_of(dir, n, i, None)?;
        i += PER_FILE;
    }
    Ok(())
}

/// Address of the `c`-th replacement endpoint (outside every generated one).
fn changed_ip(c: usize) -> IpAddr {
    let base = u32::from(std::net::Ipv4Addr::new(10, 247, 128, 0));
    IpAddr::V4((base + 1 + c as u32).into())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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

fn vm_hwm_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Whether the maps send new connections of service `i` to `ip` (reads the service's count,
/// its slots and their backends).
fn map_holds(dp: &Datapath, i: u32, ip: IpAddr) -> Result<bool> {
    let fe = Frontend {
        addr: cluster_ip(i).into(),
        port: 80,
        proto: Protocol::Tcp,
    };
    let want = abi::backend(&BackendAddr {
        addr: ip,
        port: 8080,
        proto: Protocol::Tcp,
    });
    let count = dp.maps.services.get(&abi::service_key(&fe, 0), 0)?.count;
    for slot in 1..=count {
        let id = dp
            .maps
            .services
            .get(&abi::service_key(&fe, slot), 0)?
            .backend_id;
        if let Ok(be) = dp.maps.backends.get(&id, 0) {
            if be == want {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The hidden subcommand: measure at one scale, write `key -> [value, note]` JSON to `out`.
pub fn child(dir: &Path, n: u32, changes: usize, out: &Path) -> Result<()> {
    let mut figs: BTreeMap<String, (f64, String)> = BTreeMap::new();
    let mut put = |k: &str, v: f64, note: &str| {
        figs.insert(k.to_string(), (v, note.to_string()));
    };
    let tag = format!("{n}_services");
    let config = NodeConfig::from_yaml_str(CONFIG, "bench config")?;

    let t = Instant::now();
    let mut dp = Datapath::load().context("loading the eBPF programs (needs root)")?;
    put(
        &format!("agent_program_load_{tag}_ms"),
        ms(t.elapsed()),
        "Datapath::load: object, verifier, maps (not part of the sync)",
    );

    // Full sync: manifests -> ClusterState -> DesiredState -> maps.
    let t0 = Instant::now();
    let mut state = load_strict(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let t_parse = t0.elapsed();
    let t1 = Instant::now();
    let desired = translate(&state, &config);
    let t_translate = t1.elapsed();
    let t2 = Instant::now();
    let mut writer = Writer::new(&dp.maps)?;
    let synced = writer.sync(&mut dp.maps, &desired);
    let t_sync = t2.elapsed();
    let total = t0.elapsed();
    drop(desired);
    put(
        &format!("full_sync_{tag}_parse_validate_ms"),
        ms(t_parse),
        "read directory, parse YAML, validate (load_strict)",
    );
    put(
        &format!("full_sync_{tag}_translate_ms"),
        ms(t_translate),
        "translate: objects -> desired state",
    );
    put(
        &format!("full_sync_{tag}_endpoints_count"),
        (n * ENDPOINTS) as f64,
        "",
    );
    match synced {
        Ok(report) => {
            put(
                &format!("full_sync_{tag}_map_write_ms"),
                ms(t_sync),
                &format!("Writer::sync: render, diff, {} map updates", report.ops),
            );
            put(
                &format!("full_sync_{tag}_total_ms"),
                ms(total),
                "parse+validate, translate, map write",
            );
            put(
                &format!("full_sync_{tag}_map_updates_per_s"),
                report.ops as f64 / t_sync.as_secs_f64(),
                "",
            );
        }
        Err(e) => {
            let note = format!("map sync FAILED after {:.0} ms: {e}", ms(t_sync));
            eprintln!("control: {n} services: {note}");
            put(&format!("full_sync_{tag}_map_write_ms"), f64::NAN, &note);
            put(&format!("full_sync_{tag}_total_ms"), f64::NAN, &note);
            put(
                &format!("agent_peak_rss_{tag}_mib"),
                vm_hwm_mib(),
                "VmHWM after the (failed) full sync",
            );
            return write_out(out, &figs);
        }
    }
    put(
        &format!("agent_peak_rss_after_full_sync_{tag}_mib"),
        vm_hwm_mib(),
        "VmHWM after the full sync",
    );

    // One endpoint change, in memory: translate + diff + write.
    let target = n; // the last service
    let key = NamespacedName::new(NAMESPACE, format!("svc-{target}-1"));
    let mut in_mem = Vec::with_capacity(changes);
    for c in 0..changes {
        let ip = changed_ip(c);
        std::sync::Arc::make_mut(
            state
                .endpoint_slices
                .get_mut(&key)
                .context("the target EndpointSlice is missing")?,
        )
        .endpoints[0]
            .addresses[0] = ip;
        let t = Instant::now();
        let desired = translate(&state, &config);
        writer.sync(&mut dp.maps, &desired)?;
        let held = map_holds(&dp, target, ip)?;
        let took = t.elapsed();
        if !held {
            bail!("after the change the maps do not hold {ip} for svc-{target}");
        }
        in_mem.push(ms(took));
    }
    put(
        &format!("endpoint_change_translate_diff_write_{tag}_p50_ms"),
        percentile(&in_mem, 50.0),
        &format!("{changes} changes: translate + diff + write + map read-back"),
    );
    put(
        &format!("endpoint_change_translate_diff_write_{tag}_p99_ms"),
        percentile(&in_mem, 99.0),
        "",
    );
    drop(state);

    // One endpoint change through the manifests directory: what the agent does on a change
    // (rescan the directory, re-parse the changed file, translate, diff, write).
    let mut store = ManifestStore::new();
    let mut last = DirSnapshot::read(dir)?;
    let problems = store.apply(&last);
    if !problems.is_empty() {
        bail!("{} problems in the generated manifests", problems.len());
    }
    let mut rescan = Vec::with_capacity(changes);
    for c in 0..changes {
        let ip = changed_ip(changes + c);
        write_file_of(dir, n, target, Some(ip))?;
        let t = Instant::now();
        // As the agent's poll does: only files changed since the last read are read.
        let snapshot = DirSnapshot::read_reusing(dir, Some(&last))?;
        let problems = store.apply(&snapshot);
        last = snapshot;
        if !problems.is_empty() {
            bail!("{} problems after the change", problems.len());
        }
        let cluster = store.cluster_state();
        let desired = translate(&cluster, &config);
        writer.sync(&mut dp.maps, &desired)?;
        let held = map_holds(&dp, target, ip)?;
        let took = t.elapsed();
        if !held {
            bail!("after the file change the maps do not hold {ip} for svc-{target}");
        }
        rescan.push(ms(took));
    }
    put(&format!("endpoint_change_dir_rescan_{tag}_p50_ms"), percentile(&rescan, 50.0), &format!("{changes} changes: rewrite one file, rescan + re-parse of that file + translate + diff + write + read-back (plus up to 500 ms polling in the agent)"));
    put(
        &format!("endpoint_change_dir_rescan_{tag}_p99_ms"),
        percentile(&rescan, 99.0),
        "",
    );
    put(
        &format!("agent_peak_rss_{tag}_mib"),
        vm_hwm_mib(),
        "VmHWM of the measuring process at the end (full sync + changes)",
    );
    // Put the file back as generated.
    write_file_of(dir, n, target, None)?;
    write_out(out, &figs)
}

fn write_out(out: &Path, figs: &BTreeMap<String, (f64, String)>) -> Result<()> {
    // NaN is not JSON: absent values become null.
    let json: BTreeMap<&String, (Option<f64>, &String)> = figs
        .iter()
        .map(|(k, (v, n))| (k, (v.is_finite().then_some(*v), n)))
        .collect();
    std::fs::write(out, serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

fn run_child(dir: &Path, n: u32, p: &Params) -> Result<Vec<Figure>> {
    let out = dir.with_extension("json");
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("control-child")
        .arg("--dir")
        .arg(dir)
        .arg("--services")
        .arg(n.to_string())
        .arg("--changes")
        .arg(p.changes.to_string())
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .spawn()
        .context("starting the control-plane child")?;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > p.timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "control-plane child at {n} services took over {:?}: killed",
                p.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        bail!("control-plane child at {n} services failed ({status})");
    }
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    let parsed: BTreeMap<String, (Option<f64>, String)> = serde_json::from_str(&text)?;
    Ok(parsed
        .into_iter()
        .map(|(k, (v, note))| match v {
            Some(v) => Figure::new(SECTION, k, v, note),
            None => Figure::absent(SECTION, k, note),
        })
        .collect())
}

fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("skiff-bench-manifests-{}", std::process::id()))
}

pub fn run(p: &Params) -> Result<Vec<Figure>> {
    let mut figs = Vec::new();
    let mut scales = p.services.clone();
    let mut i = 0;
    while i < scales.len() {
        let n = scales[i];
        i += 1;
        let dir = temp_dir().join(n.to_string());
        eprintln!(
            "control: generating {n} services / {} endpoints in {}",
            n * ENDPOINTS,
            dir.display()
        );
        let t = Instant::now();
        generate(&dir, n)?;
        eprintln!(
            "control: generated in {:.1} s; measuring in a child process",
            t.elapsed().as_secs_f64()
        );
        let res = run_child(&dir, n, p);
        let _ = std::fs::remove_dir_all(&dir);
        let got = res?;
        let failed = got
            .iter()
            .any(|f| f.key == format!("full_sync_{n}_services_total_ms") && f.value.is_nan());
        figs.extend(got);
        if failed {
            // The largest round scale whose service entries fit the map.
            let fits = dataplane_common::maps::SERVICES_MAX / (ENDPOINTS + 1) / 1000 * 1000;
            if fits > 0 && !scales.contains(&fits) {
                scales.push(fits);
            }
        }
    }
    let _ = std::fs::remove_dir_all(temp_dir());
    Ok(figs)
}

//! Result rows, the printed table, BENCHMARKS.md and bench/results.json.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};

/// One measured figure. `key` is flat and carries the unit (e.g.
/// `datapath_tc_clusterip_established_10k_services_ns_per_packet`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figure {
    pub section: &'static str,
    pub key: String,
    pub value: f64,
    pub note: String,
}

impl Figure {
    pub fn new(
        section: &'static str,
        key: impl Into<String>,
        value: f64,
        note: impl Into<String>,
    ) -> Figure {
        Figure {
            section,
            key: key.into(),
            value,
            note: note.into(),
        }
    }

    /// A figure that could not be measured (not implemented, did not fit, failed): shown in
    /// the table and BENCHMARKS.md with the reason, left out of results.json.
    pub fn absent(
        section: &'static str,
        key: impl Into<String>,
        note: impl Into<String>,
    ) -> Figure {
        Figure::new(section, key, f64::NAN, note)
    }

    pub fn is_absent(&self) -> bool {
        !self.value.is_finite()
    }

    /// The flat key of results.json: `<section>_<key>`.
    pub fn full_key(&self) -> String {
        format!("{}_{}", self.section, self.key)
    }
}

fn fmt_value(f: &Figure) -> String {
    if f.is_absent() {
        return "—".into();
    }
    let v = f.value;
    if f.key.ends_with("_ratio") {
        format!("{v:.2}")
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

const SECTIONS: [(&str, &str); 3] = [
    ("datapath", "Datapath: cost per packet (BPF_PROG_TEST_RUN)"),
    ("traffic", "Real traffic"),
    ("control", "Control plane"),
];

fn section_title(s: &str) -> &str {
    SECTIONS
        .iter()
        .find(|(k, _)| *k == s)
        .map_or(s, |(_, t)| *t)
}

fn ordered_sections(figs: &[Figure]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (s, _) in SECTIONS {
        if figs.iter().any(|f| f.section == s) {
            out.push(s);
        }
    }
    for f in figs {
        if !out.contains(&f.section) {
            out.push(f.section);
        }
    }
    out
}

pub fn print_table(figs: &[Figure]) {
    let width = figs.iter().map(|f| f.key.len()).max().unwrap_or(10);
    for s in ordered_sections(figs) {
        println!("\n== {}", section_title(s));
        for f in figs.iter().filter(|f| f.section == s) {
            let note = if f.note.is_empty() {
                String::new()
            } else {
                format!("  ({})", f.note)
            };
            println!("  {:<width$}  {:>12}{note}", f.key, fmt_value(f));
        }
    }
}

/// A target from the issue: reported, never failing.
struct Target {
    what: &'static str,
    /// Candidate keys (full keys), first present wins.
    keys: Vec<String>,
    limit: f64,
    unit: &'static str,
    /// The measure must reach the limit (a rate) rather than stay under it (a cost).
    at_least: bool,
}

fn targets(figs: &[Figure]) -> Vec<Target> {
    // The largest scale measured for the per-packet ratio (10,000 when it fits the maps).
    let largest_ratio = |prefix: &str| -> Vec<String> {
        let mut keys: Vec<(u32, String)> = figs
            .iter()
            .filter(|f| !f.is_absent())
            .map(Figure::full_key)
            .filter_map(|k| {
                let rest = k.strip_prefix(prefix)?;
                let n = rest.strip_suffix("_vs_10_services_ratio")?;
                Some((n.parse().ok()?, k.clone()))
            })
            .collect();
        keys.sort();
        keys.into_iter().rev().map(|(_, k)| k).collect()
    };
    let vs_baseline =
        |n: u32| format!("datapath_tc_clusterip_established_{n}_services_vs_baseline_ratio");
    let mut t = vec![
        Target {
            what: "TC established, largest scale vs 10 services",
            keys: largest_ratio("datapath_tc_clusterip_established_"),
            limit: 1.2,
            unit: "x",
            at_least: false,
        },
        Target {
            what: "TC established, 10,000 services vs baseline",
            keys: vec![vs_baseline(10_000), vs_baseline(5_000)],
            limit: 3.0,
            unit: "x",
            at_least: false,
        },
        Target {
            what: "XDP external, largest scale vs 10 services",
            keys: largest_ratio("datapath_xdp_clusterip_external_established_"),
            limit: 1.2,
            unit: "x",
            at_least: false,
        },
        Target {
            what: "XDP NodePort established, largest scale vs 10 services",
            keys: largest_ratio("datapath_xdp_nodeport_established_"),
            limit: 1.2,
            unit: "x",
            at_least: false,
        },
        Target {
            what: "XDP NodePort established, 10,000 services vs baseline",
            keys: vec!["datapath_xdp_nodeport_established_10000_services_vs_baseline_ratio".into()],
            limit: 3.0,
            unit: "x",
            at_least: false,
        },
        Target {
            what: "NetworkPolicy new connection at the to-pod hook, most policies vs 1",
            keys: largest_policy_ratio(figs, "datapath_tc_to_pod_new_connection_"),
            limit: 1.1,
            unit: "x",
            at_least: false,
        },
        Target {
            what: "NetworkPolicy new connection at the from-pod hook, most policies vs 1",
            keys: largest_policy_ratio(figs, "datapath_tc_from_pod_new_connection_"),
            limit: 1.1,
            unit: "x",
            at_least: false,
        },
    ];
    for n in [10_000u32, 5_000, 2_000] {
        let tag = format!("{n}_services");
        // Only scales the agent's control-plane part measured (other control rows, such as
        // kube-proxy's rule loading, carry service counts too).
        if !figs
            .iter()
            .any(|f| f.section == "control" && f.key.starts_with(&format!("full_sync_{tag}_")))
        {
            continue;
        }
        t.push(Target {
            what: "full sync (parse, translate, write)",
            keys: vec![format!("control_full_sync_{tag}_total_ms")],
            limit: 2000.0,
            unit: "ms",
            at_least: false,
        });
        t.push(Target {
            what: "one endpoint change p99 (translate+diff+write)",
            keys: vec![format!(
                "control_endpoint_change_translate_diff_write_{tag}_p99_ms"
            )],
            limit: 50.0,
            unit: "ms",
            at_least: false,
        });
        t.push(Target {
            what: "one endpoint change p99 (manifests dir)",
            keys: vec![format!("control_endpoint_change_dir_rescan_{tag}_p99_ms")],
            limit: 50.0,
            unit: "ms",
            at_least: false,
        });
        t.push(Target {
            what: "agent peak RSS",
            keys: vec![format!("control_agent_peak_rss_{tag}_mib")],
            limit: 150.0,
            unit: "MiB",
            at_least: false,
        });
    }
    // Real traffic: new connections per second, as ratios measured side by side.
    if figs
        .iter()
        .any(|f| f.full_key() == "traffic_skiff_vs_iptables_10000_services_connections_ratio")
    {
        t.push(Target {
            what: "connections/s vs the iptables layout, 10,000 services",
            keys: vec!["traffic_skiff_vs_iptables_10000_services_connections_ratio".into()],
            limit: 2.0,
            unit: "x",
            at_least: true,
        });
    }
    for (n, what) in [
        (100u32, "connections/s vs no proxy, 100 services"),
        (1_000, "connections/s vs no proxy, 1,000 services"),
        (10_000, "connections/s vs no proxy, 10,000 services"),
    ] {
        let key = format!("traffic_skiff_vs_noproxy_{n}_services_connections_ratio");
        if figs.iter().any(|f| f.full_key() == key) {
            t.push(Target {
                what,
                keys: vec![key],
                limit: 0.85,
                unit: "x",
                at_least: true,
            });
        }
    }
    t
}

/// Keys `<prefix><P>_vs_1_policies_<N>_pods_ratio`, the largest policy set first.
fn largest_policy_ratio(figs: &[Figure], prefix: &str) -> Vec<String> {
    let mut keys: Vec<(u32, String)> = figs
        .iter()
        .filter(|f| !f.is_absent())
        .map(Figure::full_key)
        .filter_map(|k| {
            let rest = k.strip_prefix(prefix)?;
            let (p, tail) = rest.split_once("_vs_1_policies_")?;
            tail.strip_suffix("_pods_ratio")?;
            Some((p.parse().ok()?, k.clone()))
        })
        .filter(|(p, _)| *p > 1)
        .collect();
    keys.sort();
    keys.into_iter().rev().map(|(_, k)| k).collect()
}

fn target_lines(figs: &[Figure]) -> Vec<String> {
    let by_key: BTreeMap<String, &Figure> = figs.iter().map(|f| (f.full_key(), f)).collect();
    targets(figs)
        .into_iter()
        .map(|t| {
            let found = t.keys.iter().find_map(|k| {
                by_key
                    .get(k)
                    .filter(|f| !f.is_absent())
                    .map(|f| (k, f.value))
            });
            match found {
                Some((k, v)) => {
                    let met = if t.at_least {
                        v >= t.limit
                    } else {
                        v <= t.limit
                    };
                    let pct = (v / t.limit - 1.0) * 100.0;
                    let verdict = match (met, t.at_least) {
                        (true, false) => format!("met ({:.0}% under)", -pct),
                        (true, true) => format!("met ({pct:.0}% over)"),
                        (false, false) => format!("**missed** by {pct:.0}%"),
                        (false, true) => format!("**missed** by {:.0}%", -pct),
                    };
                    format!(
                        "| {} | {} {} {} | {:.2} {} (`{k}`) | {verdict} |",
                        t.what,
                        relation(t.at_least),
                        t.limit,
                        t.unit,
                        v,
                        t.unit,
                    )
                }
                None => format!(
                    "| {} | {} {} {} | not measured | — |",
                    t.what,
                    relation(t.at_least),
                    t.limit,
                    t.unit
                ),
            }
        })
        .collect()
}

fn relation(at_least: bool) -> &'static str {
    if at_least {
        "≥"
    } else {
        "<"
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn machine() -> Vec<(&'static str, String)> {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".into(), |s| s.trim().to_string());
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb / 1024.0 / 1024.0)
        });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    vec![
        (
            "kernel",
            read("/proc/sys/kernel/osrelease").trim().to_string(),
        ),
        ("CPU", cpu),
        ("cores", cores.to_string()),
        ("memory", mem),
    ]
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub struct RunInfo {
    pub command: String,
    pub quick: bool,
    pub duration: Duration,
    /// Parts that failed as a whole (name, error).
    pub failures: Vec<(String, String)>,
}

const METHODS: &str = "\
- **Datapath** (`bench/src/datapath.rs`): the real programs (`skiff_tc_pod`, `skiff_xdp_ext`) \
loaded into this kernel with fresh maps, the services written by the agent's `Writer`, packets \
run with `BPF_PROG_TEST_RUN`. N ClusterIP services (10.96.0.0/16, TCP 80) × 10 endpoints \
(10.244.0.0/14, port 8080); the packets target the last service created.
  - *established*: a SYN creates the conntrack entry (checked `nat_new`), an ACK is checked to \
hit it (`nat_established`), then that ACK frame runs `repeat` times per call (the kernel reports \
the average); the median of several calls is reported. Afterwards the counters are checked: \
every timed run moved `nat_established`, none `nat_new`.
  - *new connection*: every SYN comes from a source port never used before (so it always misses \
conntrack and creates both entries); one call with `repeat = 1` per tuple, the kernel's duration \
of that call, median over all tuples. A single run includes the test-run timer's own overhead, \
so the ratio uses the baseline measured the same way (`baseline_*_single_run`).
  - *baseline*: `skiff_baseline_tc` / `skiff_baseline_xdp` (`dataplane-ebpf/src/baseline.rs`): \
parse Ethernet and the IPv4/IPv6 header with bounds checks, return pass; same object, same \
frames.
  - *xdp_clusterip_external*: a ClusterIP packet from an external client (192.0.2.50) at XDP.
  - *xdp_nodeport*: in a separate load, the same services where the first min(N, 2,768) \
(the default NodePort range) are also NodePort services with `externalTrafficPolicy: Local` \
(NodePort frontend on the node IP with all endpoints, plus an external-scope entry with the 2 \
endpoints on this node); an external client's packets go to the last NodePort. 20 SYNs are \
checked to reach only this node's endpoints (the external scope answered) before timing.
- **NetworkPolicy** (`bench/src/policy_cluster.rs`, `bench/src/policy_bench.rs`): a synthetic \
cluster (10,000 pods in 50 namespaces over 50 nodes, 200 on this node, labels and named ports; \
`--quick`: 2,000 pods over 10 nodes) and a policy set mixing pod and namespace selectors, \
matchExpressions (In, NotIn, Exists, DoesNotExist), ipBlock with except, named ports, endPort \
ranges, ingress and egress, default deny (1,000 policies; `--quick`: 200). One fixed policy \
(`bench-allow`, always in the set) lets a client pod on another node reach a target pod of this \
node on TCP 80, 443, 8000-8100 and the target reach a db pod on TCP 5432; the set is checked to \
compile without errors and the verdicts are checked against the agent's reference evaluator \
(in the bench's tests) and the datapath's counters (in the run).
  - *control*: `PolicyModel::new` + `compile_model`, a recompile with the previous output \
(checked identical), the entries, `PolicyWriter::sync` into the empty maps of a loaded \
`Datapath`, and one policy change (a port added to `bench-allow`): model + compile with the \
previous output + diff + write + read-back of the changed rule from the kernel map.
  - *per packet*: the same pods with 0, 1 and the larger sets, each in a fresh load with the \
compiled maps written by `PolicyWriter`. New connection: a SYN client -> target:8080 at the \
to-pod hook (`skiff_tc_to_pod`), a fresh source port every call (`repeat = 1`: a second run of \
the same frame would find the connection recorded), so every run does the endpoint lookup, \
the policy-conntrack misses, the LPM identity lookup, the rule lookups with the port-range scan \
and the conntrack record (`policy_allowed` counted for every run). Denied: the same to port 81 \
(`policy_denied_ingress`). Tracked: the ACK of a recorded connection (`policy_tracked`). \
From-pod: a SYN target -> db:5432 at `skiff_tc_pod` (egress isolated and allowed; no drop). \
The policy conntrack is emptied before each figure and stays below its size (no eviction).
- **Control plane** (`bench/src/control.rs`): N Services (one TCP port) and N EndpointSlices \
(10 endpoints each) as YAML, 100 services per file, in a temporary directory; measured in a \
child process (re-exec of `skiff-bench`) so its VmHWM is that of a process doing only the \
agent's work: `manifests::load_strict` (read, parse, validate), `translate`, `Writer::sync` into \
the maps of a loaded `Datapath`. One endpoint change (the first endpoint of the last service \
gets a new address) is measured two ways, until a read-back of the service's slots and backends \
finds the new address: in memory (translate + diff + write) and through the manifests \
directory as the agent does it (rewrite one file, then a rescan of the directory that re-parses \
only the changed file, translate, diff, write; the agent's polling interval comes on top). Peak RSS \
is VmHWM from `/proc/self/status` of that child at the end.
- **Timing**: wall-clock `Instant` in user space; kernel-reported durations for test runs.";

pub fn write_markdown(path: &Path, figs: &[Figure], info: &RunInfo) -> Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "# skiff benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `{}` on {} in {:.0} s ({} run). Regenerate with the same command; \
         `cargo xtask bench` (full) and `cargo xtask bench --quick` (under 5 minutes on 2 cores).\n",
        info.command,
        now_utc(),
        info.duration.as_secs_f64(),
        if info.quick { "quick" } else { "full" }
    );
    let _ = writeln!(md, "## Machine\n\n| | |\n| --- | --- |");
    for (k, v) in machine() {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(md, "\nThe same figures are in `bench/results.json` (flat keys `<section>_<key>`, unit in the key).\n");
    let _ = writeln!(md, "## Targets (reported, never failing)\n");
    let _ = writeln!(
        md,
        "| target | limit | measured | |\n| --- | --- | --- | --- |"
    );
    for l in target_lines(figs) {
        let _ = writeln!(md, "{l}");
    }
    for s in ordered_sections(figs) {
        let _ = writeln!(md, "\n## {}\n", section_title(s));
        let _ = writeln!(md, "| key | value | note |\n| --- | ---: | --- |");
        for f in figs.iter().filter(|f| f.section == s) {
            let note = if f.is_absent() && f.note.is_empty() {
                "not measured".to_string()
            } else {
                f.note.replace('|', "\\|")
            };
            let _ = writeln!(md, "| `{}` | {} | {} |", f.key, fmt_value(f), note);
        }
    }
    if !info.failures.is_empty() {
        let _ = writeln!(md, "\n## Parts that failed in this run\n");
        for (part, err) in &info.failures {
            let _ = writeln!(md, "- {part}: {}", err.replace('\n', " "));
        }
    }
    let _ = writeln!(md, "\n## Methods\n\n{METHODS}\n");
    let _ = writeln!(
        md,
        "## Not measured, and why\n\n\
         - A scale whose service entries do not fit the service map (`SK_SVC_V1`, {} entries; \
         each service port takes 1 + endpoints entries) is listed as absent with the reason, \
         and the largest round scale that fits is measured instead.",
        dataplane_common::maps::SERVICES_MAX
    );
    std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))
}

pub fn write_json(path: &Path, figs: &[Figure]) -> Result<()> {
    let mut obj = serde_json::Map::new();
    for f in figs.iter().filter(|f| !f.is_absent()) {
        obj.insert(f.full_key(), serde_json::json!(f.value));
    }
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(obj))? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn finish(figs: &[Figure], info: &RunInfo, root: &Path) -> Result<()> {
    print_table(figs);
    println!("\n== Targets");
    for l in target_lines(figs) {
        println!("  {l}");
    }
    for (part, err) in &info.failures {
        println!("  FAILED part {part}: {err}");
    }
    let md = root.join("BENCHMARKS.md");
    let json = root.join("bench").join("results.json");
    write_markdown(&md, figs, info)?;
    write_json(&json, figs)?;
    println!(
        "\nwrote {} and {} ({:.0} s)",
        md.display(),
        json.display(),
        info.duration.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_must_reach_their_target_and_costs_stay_under_it() {
        let figs = vec![
            Figure::new(
                "traffic",
                "skiff_vs_iptables_10000_services_connections_ratio",
                1.7,
                "",
            ),
            Figure::new(
                "traffic",
                "skiff_vs_noproxy_100_services_connections_ratio",
                0.92,
                "",
            ),
            Figure::new("control", "full_sync_10000_services_total_ms", 2500.0, ""),
        ];
        let lines = target_lines(&figs).join("\n");
        assert!(
            lines.contains("| ≥ 2 x | 1.70 x") && lines.contains("**missed** by 15%"),
            "{lines}"
        );
        assert!(lines.contains("| ≥ 0.85 x | 0.92 x"), "{lines}");
        assert!(lines.contains("met (8% over)"), "{lines}");
        assert!(lines.contains("| < 2000 ms | 2500.00 ms"), "{lines}");
        assert!(lines.contains("**missed** by 25%"), "{lines}");
    }
}

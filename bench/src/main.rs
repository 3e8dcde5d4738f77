//! skiff-bench: the measurements behind `cargo xtask bench`. Each part returns rows of
//! figures; `report` prints the table and writes BENCHMARKS.md and bench/results.json.
//!
//! Run as root from the workspace root (that is where the two files are written).

mod control;
mod datapath;
mod kubeproxy;
mod policy_bench;
mod policy_cluster;
mod report;
mod traffic;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};

use report::{Figure, RunInfo};

#[derive(Parser)]
#[command(
    name = "skiff-bench",
    about = "skiff benchmarks (run through `cargo xtask bench`)"
)]
struct Cli {
    /// Smaller scales and fewer repeats: under 5 minutes on a 2-core VM.
    #[arg(long)]
    quick: bool,
    /// Only these parts (datapath, control, policy, kubeproxy, traffic); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The command line shown in BENCHMARKS.md.
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
    #[command(subcommand)]
    sub: Option<Sub>,
}

#[derive(Subcommand)]
enum Sub {
    /// Internal: the control-plane measurement in its own process (for its peak RSS).
    #[command(hide = true)]
    ControlChild {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        services: u32,
        #[arg(long)]
        changes: usize,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Sub::ControlChild {
        dir,
        services,
        changes,
        out,
    }) = cli.sub
    {
        return control::child(&dir, services, changes, &out);
    }
    let started = Instant::now();
    let want = |part: &str| cli.only.is_empty() || cli.only.iter().any(|p| p == part);
    let mut figs: Vec<Figure> = Vec::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut part = |name: &str, f: &dyn Fn() -> Result<Vec<Figure>>| {
        if !want(name) {
            return;
        }
        let t = Instant::now();
        eprintln!("==> {name}");
        match f() {
            Ok(v) => figs.extend(v),
            Err(e) => {
                eprintln!("==> {name} FAILED: {e:#}");
                failures.push((name.to_string(), format!("{e:#}")));
            }
        }
        eprintln!("==> {name}: {:.1} s", t.elapsed().as_secs_f64());
    };
    let quick = cli.quick;
    part("datapath", &|| datapath::run(&datapath::Params::new(quick)));
    part("control", &|| control::run(&control::Params::new(quick)));
    // NetworkPolicy at scale: control-plane and per-packet figures (bench/src/policy_bench.rs).
    part("policy", &|| {
        let pp = policy_bench::PolicyParams::new(quick);
        let mut figs = policy_bench::control(&pp)?;
        figs.extend(policy_bench::datapath(&pp, &datapath::Params::new(quick))?);
        Ok(figs)
    });
    // kube-proxy's rule sets loaded with iptables-restore and nft -f (bench/src/kubeproxy/).
    part("kubeproxy", &|| {
        let scales: &[usize] = if quick { &[1_000] } else { &[1_000, 10_000] };
        kubeproxy::restore_figures(scales)
    });
    // Real traffic through skiff, kube-proxy's layouts and no proxy (bench/src/traffic.rs).
    part("traffic", &|| traffic::traffic_figures(&[], quick));
    let info = RunInfo {
        command: cli.command.clone(),
        quick,
        duration: started.elapsed(),
        failures,
    };
    report::finish(&figs, &info, &std::env::current_dir()?)
}

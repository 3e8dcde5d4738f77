//! `cargo xtask bench [--quick]`: setup, build the agent and `skiff-bench` in release, then run
//! the benchmarks as root from the workspace root. They print a table and rewrite
//! BENCHMARKS.md and bench/results.json.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::{build_agent, cargo, is_root, run, setup, workspace_root};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Smaller scales and fewer repeats (under 5 minutes on a 2-core VM).
    #[arg(long)]
    quick: bool,
    /// Only these parts, comma-separated: datapath, control, kubeproxy, traffic.
    #[arg(long)]
    only: Option<String>,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask bench must run as root: it loads BPF programs and creates network \
             namespaces (e.g. `sudo -E cargo xtask bench`)"
        );
    }
    setup::setup()?;
    // The agent is what the traffic part runs (SKIFF_BIN).
    let agent = build_agent(true)?;
    run(cargo().args(["build", "--release", "-p", "skiff-bench"]))?;
    let bin = skiff_testbed::target_dir()
        .join("release")
        .join("skiff-bench");
    if !bin.is_file() {
        bail!("cargo build succeeded but {} does not exist", bin.display());
    }
    let mut shown = String::from("cargo xtask bench");
    let mut cmd = Command::new(&bin);
    cmd.current_dir(workspace_root())
        .env("SKIFF_BIN", &agent)
        .stdin(Stdio::null());
    if args.quick {
        cmd.arg("--quick");
        shown.push_str(" --quick");
    }
    if let Some(only) = &args.only {
        cmd.args(["--only", only]);
        shown.push_str(&format!(" --only {only}"));
    }
    cmd.args(["--command", &shown]);
    // Bound the whole run: 5 minutes is the quick target, leave margin for slow machines.
    let limit = Duration::from_secs(if args.quick { 600 } else { 3_600 });
    println!("$ {} (limit {} s)", bin.display(), limit.as_secs());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > limit {
            // SIGTERM to the bench (only this child), then wait for it.
            terminate(child.id());
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            bail!("skiff-bench exceeded {} s and was stopped", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !status.success() {
        bail!("skiff-bench failed ({status})");
    }
    println!(
        "==> benchmarks done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// SIGTERM to one process by pid (lets the bench clean up its namespaces).
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

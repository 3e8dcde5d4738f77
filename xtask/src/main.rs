//! `cargo xtask <command>`: skiff's developer tasks.
//!
//! - `setup`: check/install the eBPF toolchain, llvm-N-dev and bpf-linker (fast when present);
//! - `build [--release]`: setup, then build the agent (its build.rs builds the eBPF object);
//! - `test`: setup, fmt, clippy, build, every test (as root), then the demo for 5 s;
//! - `run [--duration SECS]`: the demo in network namespaces;
//! - `bench [--quick]`: build in release, run the benchmarks, rewrite BENCHMARKS.md and
//!   bench/results.json.

mod bench;
mod demo;
mod manifests;
mod setup;
mod signal;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "skiff developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check, and install if missing, what the eBPF build needs (pinned nightly + rust-src,
    /// llvm-N-dev, bpf-linker).
    Setup,
    /// Setup, then build the agent (`target/{debug,release}/skiff`) with its eBPF object.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Setup, fmt check, clippy, build, all tests (kernel tests as root), then a 5-second demo.
    Test {
        /// Skip the final demo run.
        #[arg(long)]
        no_demo: bool,
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// The demo: a node with pods in network namespaces, the agent, and real traffic.
    Run(demo::DemoArgs),
    /// Benchmarks: datapath per packet, control plane, kube-proxy rule loading, real traffic;
    /// rewrites BENCHMARKS.md and bench/results.json.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    // Before any thread exists: later commands (rustc's linker lookup) find bpf-linker.
    setup::ensure_cargo_bin_on_path();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Build { release } => build(release).map(|bin| {
            println!("==> built {}", bin.display());
        }),
        Cmd::Test {
            no_demo,
            cargo_test_args,
        } => test(no_demo, &cargo_test_args),
        Cmd::Run(args) => demo::run(&args),
        Cmd::Bench(args) => bench::bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the commands

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    skiff_testbed::workspace_root()
}

/// Whether we run as root.
pub fn is_root() -> bool {
    skiff_testbed::is_root()
}

/// The cargo that runs us (`$CARGO`), in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Prints and runs a command; an error unless it exits with 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    println!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    let envs: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| {
            let k = k.to_string_lossy();
            // Only the variables that matter to a reader.
            (k != "DEBIAN_FRONTEND")
                .then(|| format!("{k}={}", v.unwrap_or_default().to_string_lossy()))
        })
        .collect();
    let mut parts = envs;
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// The agent binary cargo builds: `<target>/{debug,release}/skiff`.
pub fn agent_bin(release: bool) -> PathBuf {
    skiff_testbed::target_dir()
        .join(if release { "release" } else { "debug" })
        .join("skiff")
}

/// Setup, then `cargo build -p dataplane-agent [--release]`; returns the binary.
fn build(release: bool) -> Result<PathBuf> {
    setup::setup()?;
    build_agent(release)
}

/// `cargo build -p dataplane-agent --bin skiff [--release]` (setup must have run).
pub fn build_agent(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "dataplane-agent", "--bin", "skiff"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let bin = agent_bin(release);
    if !bin.is_file() {
        bail!("cargo build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

// ---------------------------------------------------------------------------------------------
// cargo xtask test

#[derive(PartialEq)]
enum Outcome {
    Ok,
    Failed(String),
    Skipped(&'static str),
}

struct Steps {
    done: Vec<(String, Outcome, Duration)>,
}

impl Steps {
    fn run(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> bool {
        println!("\n==> {name}");
        let started = Instant::now();
        let outcome = match f() {
            Ok(()) => Outcome::Ok,
            Err(e) => {
                eprintln!("==> FAILED: {name}: {e:#}");
                Outcome::Failed(format!("{e:#}"))
            }
        };
        let ok = outcome == Outcome::Ok;
        self.done
            .push((name.to_string(), outcome, started.elapsed()));
        ok
    }

    fn skip(&mut self, name: &str, why: &'static str) {
        println!("\n==> skipped: {name} ({why})");
        self.done
            .push((name.to_string(), Outcome::Skipped(why), Duration::ZERO));
    }

    fn failed(&self) -> usize {
        self.done
            .iter()
            .filter(|(_, o, _)| matches!(o, Outcome::Failed(_)))
            .count()
    }

    fn summary(&self) {
        println!("\n==> summary");
        for (name, outcome, took) in &self.done {
            let (mark, note) = match outcome {
                Outcome::Ok => ("ok    ", String::new()),
                Outcome::Failed(e) => ("FAILED", format!("  {}", e.lines().next().unwrap_or(""))),
                Outcome::Skipped(why) => ("SKIP  ", format!("  ({why})")),
            };
            println!("  {mark} {:>7.1} s  {name}{note}", took.as_secs_f64());
        }
    }
}

fn require_tools() -> Result<()> {
    for (tool, component) in [("fmt", "rustfmt"), ("clippy", "clippy")] {
        let ok = cargo()
            .args([tool, "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            println!("cargo {tool} is missing: adding component {component}");
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    if setup::which("ip").is_none() {
        if !is_root() {
            bail!("`ip` (iproute2) is missing");
        }
        run(Command::new("apt-get")
            .args(["install", "-y", "iproute2"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}

fn test(no_demo: bool, cargo_test_args: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask test must run as root: the BPF and end-to-end tests load programs and \
             create network namespaces, and they are never skipped. Run it as root (e.g. \
             `sudo -E cargo xtask test`)."
        );
    }
    let started = Instant::now();
    let mut steps = Steps { done: Vec::new() };
    if !steps.run(
        "setup (eBPF toolchain, llvm-dev, bpf-linker; rustfmt, clippy, ip)",
        || {
            setup::setup()?;
            require_tools()
        },
    ) {
        steps.summary();
        bail!("setup failed");
    }
    steps.run("format: cargo fmt --all -- --check", || {
        run(cargo().args(["fmt", "--all", "--", "--check"]))
    });
    // The eBPF crate only builds for bpfel-unknown-none (the agent's build.rs builds it), so
    // the host-side commands leave it out.
    steps.run(
        "lint: cargo clippy --workspace --exclude dataplane-ebpf --all-targets -- -D warnings",
        || {
            run(cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                "dataplane-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        },
    );
    steps.run(
        "lint eBPF: cargo +<ebpf-toolchain> clippy -p dataplane-ebpf --target bpfel-unknown-none",
        || {
            let toolchain = setup::ebpf_toolchain()?;
            run(Command::new("cargo")
                .arg(format!("+{toolchain}"))
                .args([
                    "clippy",
                    "-p",
                    "dataplane-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--release",
                    "--",
                    "-D",
                    "warnings",
                ])
                .env_remove("RUSTC")
                .env_remove("RUSTC_WORKSPACE_WRAPPER"))
        },
    );
    let mut bin = None;
    let built = steps.run("build the agent: cargo build -p dataplane-agent", || {
        bin = Some(build_agent(false)?);
        Ok(())
    });
    match bin.filter(|_| built) {
        Some(bin) => {
            steps.run(
                "tests: cargo test --workspace --exclude dataplane-ebpf (as root)",
                || {
                    println!("SKIFF_BIN={}", bin.display());
                    let mut cmd = cargo();
                    cmd.args(["test", "--workspace", "--exclude", "dataplane-ebpf"])
                        .args(cargo_test_args)
                        .env("SKIFF_BIN", &bin);
                    run(&mut cmd)
                },
            );
            if no_demo {
                steps.skip("demo: cargo xtask run --duration 5", "--no-demo");
            } else {
                steps.run("demo: cargo xtask run --duration 5", || {
                    run(cargo().args(["xtask", "run", "--duration", "5"]))
                });
            }
        }
        None => {
            steps.skip(
                "tests: cargo test --workspace --exclude dataplane-ebpf",
                "the agent did not build",
            );
            steps.skip(
                "demo: cargo xtask run --duration 5",
                "the agent did not build",
            );
        }
    }
    steps.summary();
    let failed = steps.failed();
    println!(
        "==> {} in {:.0} s",
        if failed == 0 {
            "all steps passed".to_string()
        } else {
            format!("{failed} step(s) failed")
        },
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        bail!("{failed} step(s) failed");
    }
    Ok(())
}

/// `path` relative to the workspace root, for messages.
pub fn rel(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

//! skiff: eBPF service proxy and NetworkPolicy dataplane for Kubernetes.

use std::io::{BufRead as _, Write as _};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use skiff::config::NodeConfig;
use skiff::trace::{explain, FlowInput, Tracer};

const DEFAULT_BPFFS: &str = "/sys/fs/bpf/skiff";

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "eBPF service proxy and NetworkPolicy dataplane for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: program the maps from manifests or the Kubernetes API and attach the programs.
    Run {
        /// Node configuration (YAML).
        #[arg(long)]
        config: PathBuf,
        /// Directory of Kubernetes manifests (Services, EndpointSlices, ...), watched for changes.
        #[arg(
            long,
            required_unless_present = "kubernetes",
            conflicts_with = "kubernetes"
        )]
        manifests: Option<PathBuf>,
        /// Watch the Kubernetes API (in-cluster config, or --kubeconfig).
        #[arg(long)]
        kubernetes: bool,
        /// Kubeconfig file for --kubernetes (default: $KUBECONFIG or ~/.kube/config, else the
        /// in-cluster service account).
        #[arg(long, requires = "kubernetes")]
        kubeconfig: Option<PathBuf>,
        /// This node's name (Kubernetes mode; overrides nodeName in the config).
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        /// How often the manifests directory is checked for changes, in milliseconds.
        #[arg(long, default_value_t = 500)]
        poll_ms: u64,
        /// skiff's directory on a BPF filesystem: maps and links pinned there survive restarts.
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Do not pin: programs detach and state is lost when the agent exits.
        #[arg(long, conflicts_with = "detach_on_exit")]
        no_pin: bool,
        /// On SIGTERM/SIGINT detach the programs and remove the link pins (maps stay pinned).
        #[arg(long)]
        detach_on_exit: bool,
        /// Serve /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:10249).
        #[arg(long)]
        metrics_address: Option<std::net::SocketAddr>,
        /// Directory for status.json (read by `skiff status`).
        #[arg(long, default_value = skiff::status::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// What is loaded and attached, map fill levels, the last sync and packet counters.
    Status {
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        #[arg(long, default_value = skiff::status::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Remove every program, link, pin and map skiff created (stop the agent first).
    Cleanup {
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Show what the datapath does to packets: runs the real programs on them (needs root).
    Trace {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        manifests: PathBuf,
        /// JSON lines, one flow per line: {"proto","src","sport","dst","dport"}.
        #[arg(long, conflicts_with_all = ["proto", "src", "sport", "dst", "dport"])]
        flows: Option<PathBuf>,
        #[arg(long, requires_all = ["src", "sport", "dst", "dport"])]
        proto: Option<String>,
        #[arg(long)]
        src: Option<IpAddr>,
        #[arg(long)]
        sport: Option<u16>,
        #[arg(long)]
        dst: Option<IpAddr>,
        #[arg(long)]
        dport: Option<u16>,
    },
    /// Stream NetworkPolicy verdicts of the running agent (drops; allows with --verdict).
    Observe {
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        #[arg(long, default_value = skiff::status::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Which verdicts to show (allowed ones are reported by the datapath only while an
        /// observer asks for them).
        #[arg(long, value_enum, default_value = "dropped")]
        verdict: skiff::observe::VerdictFilter,
        /// Only events with this pod (namespace/name) at either end.
        #[arg(long)]
        pod: Option<String>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Exit after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
    },
    /// Which NetworkPolicies select a pod, in which directions, and what they allow.
    Explain {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        manifests: PathBuf,
        /// The pod, as namespace/name.
        #[arg(long)]
        pod: String,
    },
    /// Load the programs through the verifier and print their verified instruction counts.
    Programs,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only for people: log files and CI keep plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match real_main(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            manifests,
            kubernetes,
            kubeconfig,
            node_name,
            poll_ms,
            bpffs,
            no_pin,
            detach_on_exit,
            metrics_address,
            state_dir,
        } => {
            let (config, source) = if kubernetes {
                let config = NodeConfig::load_for_kubernetes(&config, node_name.as_deref())?;
                let source =
                    skiff::run::SourceConfig::Kubernetes(skiff::kube_source::KubeOptions {
                        kubeconfig,
                        node_name: config.node_name.clone(),
                        debounce: Duration::from_millis(100),
                    });
                (config, source)
            } else {
                let dir = manifests.expect("clap requires --manifests without --kubernetes");
                if !dir.is_dir() {
                    bail!("--manifests {}: not a directory", dir.display());
                }
                let source = skiff::run::SourceConfig::Manifests {
                    dir,
                    poll: Duration::from_millis(poll_ms),
                };
                (NodeConfig::load(&config)?, source)
            };
            let pins = if no_pin {
                None
            } else {
                Some(skiff::bpf::pins::PinDir::open(&bpffs)?)
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(skiff::run::run(skiff::run::RunOptions {
                config,
                source,
                pins,
                detach_on_exit,
                metrics_address,
                state_dir: Some(state_dir),
            }))
        }
        Command::Status { bpffs, state_dir } => {
            print!("{}", skiff::status::status_report(&bpffs, &state_dir)?);
            Ok(())
        }
        Command::Trace {
            config,
            manifests,
            flows,
            proto,
            src,
            sport,
            dst,
            dport,
        } => {
            let config = NodeConfig::load(&config)?;
            let state = skiff::manifests::load_strict(&manifests)?;
            let desired = skiff::translate::translate(&state, &config);
            let mut tracer = Tracer::new(config, desired)?;
            tracer.set_policy(&state)?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            match flows {
                Some(path) => {
                    let file = std::fs::File::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                        let line = line?;
                        if line.trim().is_empty() {
                            continue;
                        }
                        let input: FlowInput = serde_json::from_str(&line)
                            .with_context(|| format!("{}:{}: bad flow", path.display(), i + 1))?;
                        let r = tracer
                            .trace(&input)
                            .with_context(|| format!("{}:{}", path.display(), i + 1))?;
                        writeln!(out, "{}", serde_json::to_string(&r)?)?;
                    }
                }
                None => {
                    let (Some(proto), Some(src), Some(sport), Some(dst), Some(dport)) =
                        (proto, src, sport, dst, dport)
                    else {
                        bail!("give --flows FILE, or all of --proto --src --sport --dst --dport");
                    };
                    let input = FlowInput {
                        proto,
                        src,
                        sport,
                        dst,
                        dport,
                    };
                    let r = tracer.trace(&input)?;
                    writeln!(out, "{}", serde_json::to_string(&r)?)?;
                    eprint!("{}", explain(&input, &r));
                }
            }
            Ok(())
        }
        Command::Observe {
            bpffs,
            state_dir,
            verdict,
            pod,
            count,
            seconds,
            json,
        } => {
            let opts = skiff::observe::ObserveOptions {
                bpffs,
                state_dir,
                verdict,
                pod,
                count,
                duration: seconds.map(std::time::Duration::from_secs),
                json,
            };
            skiff::observe::observe(&opts, &mut std::io::stdout().lock())?;
            Ok(())
        }
        Command::Explain {
            config,
            manifests,
            pod,
        } => {
            let config = NodeConfig::load(&config)?;
            let state = skiff::manifests::load_strict(&manifests)?;
            let Some((namespace, name)) = pod.split_once('/') else {
                bail!("--pod {pod:?}: expected namespace/name");
            };
            let model = skiff::policy::PolicyModel::new(&state, &config);
            let pod = skiff::model::NamespacedName::new(namespace, name);
            print!("{}", skiff::policy::explain(&model, &pod));
            Ok(())
        }
        Command::Cleanup { bpffs } => {
            let removed = skiff::bpf::pins::remove_all(&bpffs)?;
            for p in removed.links.iter().chain(&removed.maps) {
                println!("removed {}", p.display());
            }
            println!(
                "cleanup: {} link(s) detached, {} map(s) removed from {}",
                removed.links.len(),
                removed.maps.len(),
                bpffs.display()
            );
            if !removed.still_loaded.is_empty() {
                eprintln!(
                    "cleanup: programs {:?} are still loaded (a running agent?): their links \
                     stay attached until it exits",
                    removed.still_loaded
                );
            }
            Ok(())
        }
        Command::Programs => {
            let dp = skiff::bpf::Datapath::load()?;
            for (name, insns) in dp.verified_instructions() {
                match insns {
                    Some(n) => println!("{name}: {n} verified instructions"),
                    None => {
                        println!("{name}: verified instruction count not reported by this kernel")
                    }
                }
            }
            Ok(())
        }
    }
}

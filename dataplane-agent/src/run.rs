//! `skiff run`: the agent. A source (manifests directory or Kubernetes API) delivers whole
//! cluster states; on each change the desired map state is recomputed by the one pure
//! translation and the writer applies the diff. Interfaces are rescanned so new pods get the
//! TC program; metrics, readiness and a status file report what happened.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dataplane_common::maps::{
    BACKENDS, BACKENDS_MAX, CONNTRACK, CONNTRACK_MAX, POLICY_ENDPOINTS, POLICY_ENDPOINTS_MAX,
    POLICY_IDENTITIES, POLICY_IDENTITIES_MAX, POLICY_RULES, POLICY_RULES_MAX, SERVICES,
    SERVICES_MAX,
};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::bpf::{attach, pins::PinDir, policy_writer::PolicyWriter, writer::Writer, Datapath};
use crate::config::NodeConfig;
use crate::kube_source::{KubeOptions, KubeSource};
use crate::manifests::{DirWatcher, ManifestStore};
use crate::metrics::Metrics;
use crate::model::ClusterState;
use crate::observe::PodNames;
use crate::policy::{compile_model, CompiledPolicy, PolicyModel};
use crate::status::{self, AgentStatus};
use crate::translate::translate;

/// Where cluster objects come from.
pub enum SourceConfig {
    Manifests { dir: PathBuf, poll: Duration },
    Kubernetes(KubeOptions),
}

pub struct RunOptions {
    pub config: NodeConfig,
    pub source: SourceConfig,
    /// Where maps and links are pinned; `None` runs without pins (state dies with the agent).
    pub pins: Option<PinDir>,
    /// Detach and unpin the links on SIGTERM/SIGINT instead of leaving them for the next agent.
    pub detach_on_exit: bool,
    /// Serve /metrics, /healthz and /readyz here.
    pub metrics_address: Option<SocketAddr>,
    /// Where `status.json` is written after each sync (read by `skiff status`).
    pub state_dir: Option<PathBuf>,
}

/// One full view of the cluster from a source.
struct Update {
    state: ClusterState,
    problems: Vec<String>,
    watch_restarts: u64,
}

enum Source {
    Manifests {
        dir: PathBuf,
        watcher: DirWatcher,
        store: ManifestStore,
    },
    Kube(Box<KubeSource>),
}

impl Source {
    async fn open(cfg: SourceConfig) -> anyhow::Result<Source> {
        Ok(match cfg {
            SourceConfig::Manifests { dir, poll } => Source::Manifests {
                watcher: DirWatcher::new(&dir, poll),
                dir,
                store: ManifestStore::new(),
            },
            SourceConfig::Kubernetes(opts) => Source::Kube(Box::new(
                KubeSource::connect(opts)
                    .await
                    .context("connecting to the Kubernetes API")?,
            )),
        })
    }

    fn describe(&self) -> status::Source {
        match self {
            Source::Manifests { dir, .. } => status::Source::Manifests(dir.clone()),
            Source::Kube(_) => status::Source::Kubernetes,
        }
    }

    /// The next full state: the first call returns the initial one (for Kubernetes, once every
    /// kind has been listed), later calls wait for a change; bursts coalesce into one.
    async fn next(&mut self) -> Result<Update, String> {
        match self {
            Source::Manifests {
                dir,
                watcher,
                store,
            } => {
                let snapshot = watcher
                    .changed()
                    .await
                    .map_err(|e| format!("watching {}: {e}", dir.display()))?;
                let problems = store
                    .apply(&snapshot)
                    .iter()
                    .map(|p| p.to_string())
                    .collect();
                Ok(Update {
                    state: store.cluster_state(),
                    problems,
                    watch_restarts: 0,
                })
            }
            Source::Kube(k) => {
                let u = k.changed().await.map_err(|e| e.to_string())?;
                Ok(Update {
                    state: u.state,
                    problems: u.problems,
                    watch_restarts: u.watch_restarts,
                })
            }
        }
    }
}

/// This node's addresses from its Node object (InternalIP and ExternalIP), as kube-proxy
/// takes them when none are configured.
fn node_ips(state: &ClusterState, node: &str) -> Vec<IpAddr> {
    let Some(n) = state.nodes.get(node) else {
        return Vec::new();
    };
    n.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

struct Agent {
    dp: Datapath,
    writer: Writer,
    config: NodeConfig,
    metrics: Arc<Metrics>,
    status: AgentStatus,
    status_path: Option<PathBuf>,
    attachments: attach::Attachments,
    /// healthCheckNodePort servers of eTP=Local LoadBalancer services.
    health_checks: crate::healthcheck::HealthChecks,
    policy_writer: PolicyWriter,
    /// The last compiled policy: keeps endpoint and identity numbers stable across syncs.
    policy: Option<CompiledPolicy>,
    /// Pod names last written for `skiff observe`.
    pod_names: Option<PodNames>,
    state_dir: Option<PathBuf>,
}

impl Agent {
    /// Translate a full state and apply the difference to the maps.
    fn apply(&mut self, update: Update) {
        let started = Instant::now();
        for p in &update.problems {
            // The source kept the last good version of whatever this names.
            warn!("{p}; keeping its last good state");
        }
        self.metrics.watch_restarts(update.watch_restarts);
        let config = self
            .config
            .clone()
            .with_node_ips(node_ips(&update.state, &self.config.node_name));
        self.apply_policy(&update.state, &config);
        let desired = translate(&update.state, &config);
        match self.writer.sync(&mut self.dp.maps, &desired) {
            Ok(report) => {
                let took = started.elapsed();
                info!(
                    frontends = desired.frontends.len(),
                    changes = report.ops,
                    map_services = report.services,
                    map_backends = report.backends,
                    took_ms = took.as_secs_f64() * 1e3,
                    "synced"
                );
                self.metrics.observe_sync(took, report.ops);
                self.metrics.set_ready();
                // Load balancers learn this node's local endpoints once the maps have them.
                self.health_checks.sync(&desired.health_checks);
                self.status
                    .synced(took, report.ops, desired.frontends.len());
            }
            Err(e) => {
                error!("sync failed: {e}");
                self.metrics.sync_failed();
                self.status.sync_failed(started.elapsed(), &e);
            }
        }
        self.refresh_map_usage();
        self.write_status();
    }

    /// Compile the NetworkPolicies and apply the difference to the policy maps.
    fn apply_policy(&mut self, state: &ClusterState, config: &NodeConfig) {
        let started = Instant::now();
        let model = PolicyModel::new(state, config);
        let compiled = compile_model(&model, self.policy.as_ref());
        for e in &compiled.errors {
            warn!("network policy: {e}");
        }
        match self.policy_writer.sync(&mut self.dp.maps, &compiled.maps) {
            Ok(report) => info!(
                endpoints = report.endpoints,
                identities = report.identities,
                rules = report.rules,
                changes = report.ops,
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                "policy synced"
            ),
            // The maps keep a consistent mix; the mirror knows what they hold, and the next
            // sync retries the rest.
            Err(e) => {
                error!("policy sync failed: {e}");
                self.metrics.sync_failed();
            }
        }
        if let Some(dir) = &self.state_dir {
            let names = PodNames::new(&model, &compiled);
            if self.pod_names.as_ref() != Some(&names) {
                let path = PodNames::path(dir);
                match names.write_atomic(&path) {
                    Ok(()) => self.pod_names = Some(names),
                    Err(e) => warn!("writing {}: {e}", path.display()),
                }
            }
        }
        self.policy = Some(compiled);
    }

    fn attach_pods(&mut self) {
        match attach::interfaces() {
            Ok(all) => {
                let wanted: Vec<String> = all
                    .into_iter()
                    .filter(|n| self.config.matches_pod_interface(n))
                    .collect();
                for e in self.attachments.sync_pods(&mut self.dp, &wanted) {
                    // An interface can vanish between listing and attaching (pod deleted).
                    warn!("{e}");
                }
            }
            Err(e) => error!("{e}"),
        }
        let attached: Vec<status::Attached> = self
            .attachments
            .pod_interfaces()
            .map(|i| status::Attached {
                iface: i.to_string(),
                hook: status::Hook::TcIngress,
                mode: "tcx".into(),
            })
            .chain(
                self.attachments
                    .pod_interfaces_to_pod()
                    .map(|i| status::Attached {
                        iface: i.to_string(),
                        hook: status::Hook::TcEgress,
                        mode: "tcx".into(),
                    }),
            )
            .chain(
                self.attachments
                    .external_interfaces()
                    .map(|(i, h, m)| status::Attached {
                        iface: i.to_string(),
                        hook: match h {
                            attach::ExternalHook::Xdp => status::Hook::Xdp,
                            attach::ExternalHook::Tc => status::Hook::TcExtIngress,
                        },
                        mode: m.into(),
                    }),
            )
            .chain(
                self.attachments
                    .external_egress_interfaces()
                    .map(|i| status::Attached {
                        iface: i.to_string(),
                        hook: status::Hook::TcExtEgress,
                        mode: "tcx".into(),
                    }),
            )
            .collect();
        if attached != self.status.attached {
            self.status.attached = attached;
            self.write_status();
        }
    }

    /// Fill levels of the maps the writer owns: read from its mirror, so cheap after a sync.
    fn refresh_map_usage(&self) {
        let current = self.writer.current();
        let m = &self.metrics;
        m.set_map_usage(SERVICES, current.services.len() as u64, SERVICES_MAX.into());
        m.set_map_usage(BACKENDS, current.backends.len() as u64, BACKENDS_MAX.into());
        let policy = self.policy_writer.current();
        m.set_map_usage(
            POLICY_ENDPOINTS,
            policy.endpoints.len() as u64,
            POLICY_ENDPOINTS_MAX.into(),
        );
        m.set_map_usage(
            POLICY_IDENTITIES,
            policy.identities.len() as u64,
            POLICY_IDENTITIES_MAX.into(),
        );
        m.set_map_usage(
            POLICY_RULES,
            policy.rules.len() as u64,
            POLICY_RULES_MAX.into(),
        );
    }

    /// What only the datapath knows: conntrack entries (a walk over the whole map, so
    /// periodic, never per sync) and packet counters.
    fn refresh_datapath_counters(&self) {
        let m = &self.metrics;
        match self
            .dp
            .maps
            .conntrack
            .keys()
            .try_fold(0u64, |n, k| k.map(|_| n + 1))
        {
            Ok(n) => {
                m.set_map_usage(CONNTRACK, n, CONNTRACK_MAX.into());
                m.set_conntrack_entries(n);
            }
            Err(e) => warn!("counting conntrack entries: {e}"),
        }
        match self.dp.maps.stats() {
            Ok(s) => m.set_packets(&s),
            Err(e) => warn!("reading packet counters: {e}"),
        }
    }

    fn write_status(&self) {
        if let Some(path) = &self.status_path {
            if let Err(e) = self.status.write_atomic(path) {
                warn!("writing {}: {e}", path.display());
            }
        }
    }
}

/// Load, program and attach; then follow changes until SIGINT/SIGTERM.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let RunOptions {
        config,
        source,
        pins,
        detach_on_exit,
        metrics_address,
        state_dir,
    } = opts;
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = metrics_address {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        info!(%addr, "serving /metrics, /healthz, /readyz");
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::http::serve(listener, m).await {
                error!("metrics server stopped: {e}");
            }
        });
    }
    // Pinned maps of an earlier agent are reused with their contents: conntrack survives.
    let dp = Datapath::load_with(pins.as_ref()).context("loading the eBPF programs")?;
    for (name, insns) in dp.verified_instructions() {
        info!(program = name, verified_insns = insns, "program loaded");
    }
    let writer = Writer::new(&dp.maps).context("reading the maps")?;
    let policy_writer = PolicyWriter::new(&dp.maps).context("reading the policy maps")?;
    let mut source = Source::open(source).await?;
    let pin_dir = pins.clone();
    let mut agent = Agent {
        dp,
        writer,
        metrics,
        status: AgentStatus::new(source.describe()),
        status_path: state_dir.as_deref().map(status::status_path),
        attachments: attach::Attachments::new(pins),
        config,
        health_checks: Default::default(),
        policy_writer,
        policy: None,
        pod_names: None,
        state_dir: state_dir.clone(),
    };

    // Program the maps from the first full state before any program is (re)attached: a
    // restarted agent reconciles the pinned maps first, then swaps the programs.
    match source.next().await {
        Ok(update) => agent.apply(update),
        Err(e) => error!("{e}"),
    }
    let external_ingress = agent.config.external_ingress;
    for name in agent.config.external_interfaces.clone() {
        match agent
            .attachments
            .attach_external(&mut agent.dp, &name, external_ingress)
        {
            Ok((hook, mode)) => agent.metrics.set_external_ingress(&name, hook, mode),
            Err(e) => error!("{e}"),
        }
    }
    if let Err(e) = agent.attachments.drop_stale_external_pins() {
        warn!("{e}");
    }
    agent.attach_pods();
    let sock_lb = crate::bpf::socklb::start(&mut agent.dp, &agent.config, pin_dir.as_ref())
        .context("attaching the socket-level (cgroup) programs")?;
    // Every link now runs this version's programs: maps of an older layout are unused.
    if let Some(pins) = &pin_dir {
        match pins.remove_stale_maps(&crate::bpf::object::PINNED_MAPS) {
            Ok(removed) => {
                for p in removed {
                    info!(pin = %p.display(), "removed the pin of a map of an older layout");
                }
            }
            Err(e) => warn!("removing stale map pins: {e}"),
        }
    }
    info!("skiff is running");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut iface_tick = tokio::time::interval(Duration::from_secs(1));
    let mut usage_tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            update = source.next() => match update {
                Ok(update) => agent.apply(update),
                Err(e) => error!("{e}"),
            },
            _ = iface_tick.tick() => agent.attach_pods(),
            _ = usage_tick.tick() => agent.refresh_datapath_counters(),
        }
    }
    if detach_on_exit {
        info!("shutting down: detaching programs and removing link pins");
        agent.attachments.detach_all();
        if let Some(lb) = sock_lb {
            lb.detach();
        }
    } else {
        info!("shutting down: programs stay attached (pinned) for the next agent");
    }
    Ok(())
}

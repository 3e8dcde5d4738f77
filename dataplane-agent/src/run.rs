//! `skiff run`: the agent. Sources feed one store of last-good objects; on any change the
//! whole desired state is recomputed by the pure translation and the writer applies the diff.
//! Interfaces are rescanned so new pods get the TC program.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::bpf::{attach, pins::PinDir, writer::Writer, Datapath};
use crate::config::NodeConfig;
use crate::manifests::{DirWatcher, ManifestStore};
use crate::translate::translate;

pub struct RunOptions {
    pub config: NodeConfig,
    pub manifests: PathBuf,
    pub poll: Duration,
    /// Where maps and links are pinned; `None` runs without pins (state dies with the agent).
    pub pins: Option<PinDir>,
    /// Detach and unpin the links on SIGTERM/SIGINT instead of leaving them for the next agent.
    pub detach_on_exit: bool,
}

/// Load, program and attach; then follow changes until SIGINT/SIGTERM.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let RunOptions {
        config,
        manifests,
        poll,
        pins,
        detach_on_exit,
    } = opts;
    // Pinned maps of an earlier agent are reused with their contents: conntrack survives.
    let mut dp = Datapath::load_with(pins.as_ref()).context("loading the eBPF programs")?;
    for (name, insns) in dp.verified_instructions() {
        info!(program = name, verified_insns = insns, "program loaded");
    }
    let mut writer = Writer::new(&dp.maps).context("reading the maps")?;
    let mut store = ManifestStore::new();
    let mut watcher = DirWatcher::new(&manifests, poll);
    let mut attachments = attach::Attachments::new(pins);

    let sync = |dp: &mut Datapath, store: &ManifestStore, writer: &mut Writer| {
        let started = Instant::now();
        let desired = translate(&store.cluster_state(), &config);
        match writer.sync(&mut dp.maps, &desired) {
            Ok(report) => info!(
                frontends = desired.frontends.len(),
                changes = report.ops,
                map_services = report.services,
                map_backends = report.backends,
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                "synced"
            ),
            Err(e) => error!("sync failed: {e}"),
        }
    };

    // The first scan returns at once: program the maps before any packet can meet a program.
    let on_change = |dp: &mut Datapath, store: &mut ManifestStore, writer: &mut Writer, changed| {
        match changed {
            Ok(snapshot) => {
                for problem in store.apply(&snapshot) {
                    // The store kept the last good version of whatever this names.
                    error!("{problem}; keeping its last good state");
                }
                sync(dp, store, writer);
            }
            Err(e) => error!("watching {}: {e}", manifests.display()),
        }
    };
    let first = watcher.changed().await;
    on_change(&mut dp, &mut store, &mut writer, first);
    for name in &config.external_interfaces {
        if let Err(e) = attachments.attach_external(&mut dp, name) {
            error!("{e}");
        }
    }
    let attach_pods =
        |dp: &mut Datapath, attachments: &mut attach::Attachments| match attach::interfaces() {
            Ok(all) => {
                let wanted: Vec<String> = all
                    .into_iter()
                    .filter(|n| config.matches_pod_interface(n))
                    .collect();
                for e in attachments.sync_pods(dp, &wanted) {
                    // An interface can vanish between listing and attaching (pod deleted).
                    warn!("{e}");
                }
            }
            Err(e) => error!("{e}"),
        };
    attach_pods(&mut dp, &mut attachments);
    info!(manifests = %manifests.display(), "skiff is running");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut iface_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            // Returns only on a change; bursts of edits within one poll interval coalesce
            // into one sync.
            changed = watcher.changed() => on_change(&mut dp, &mut store, &mut writer, changed),
            _ = iface_tick.tick() => attach_pods(&mut dp, &mut attachments),
        }
    }
    if detach_on_exit {
        info!("shutting down: detaching programs and removing link pins");
        attachments.detach_all();
    } else {
        info!("shutting down: programs stay attached (pinned) for the next agent");
    }
    Ok(())
}

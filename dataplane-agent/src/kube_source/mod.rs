//! The Kubernetes API server as the source of objects: one kube-rs watcher per kind
//! (Services, EndpointSlices, Pods, Namespaces, NetworkPolicies and this node's Node), each
//! in its own task, writing into one store that keeps the last good version of every object.
//!
//! [`KubeSource::changed`] hands out the whole [`ClusterState`] once every initial list has
//! completed, then after each change, coalescing bursts.
//!
//! - Invalid objects are reported in [`SourceUpdate::problems`] and never remove good state:
//!   an object that turns invalid keeps its last good version; one never valid is absent.
//! - After a relist (410 Gone), objects the list no longer has are removed.
//! - Watch errors are logged, counted and retried with backoff; they never end the source.

mod kinds;
mod store;
mod trim;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config};
use thiserror::Error;
use tokio::task::{Id, JoinSet};
use tracing::info;

use crate::model::ClusterState;
use kinds::WatchedKind;
use store::Store;

/// However busy the cluster, an update waits at most this many debounce intervals.
const MAX_DELAY_IN_DEBOUNCES: u32 = 10;

pub struct KubeOptions {
    /// `None`: infer (`$KUBECONFIG` or `~/.kube/config`, else the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: its Node object is watched.
    pub node_name: String,
    /// Changes this close to each other are handed out as one update.
    pub debounce: Duration,
}

/// What [`KubeSource::changed`] hands out.
#[derive(Clone, Debug)]
pub struct SourceUpdate {
    pub state: ClusterState,
    /// Objects skipped (or kept at their last good version) since the last update, each
    /// message naming the object as `Kind namespace/name`.
    pub problems: Vec<String>,
    /// Relists after a watch could not be resumed (410 Gone), since the start.
    pub watch_restarts: u64,
    /// Failed lists and watches (all retried), since the start.
    pub watch_errors: u64,
}

#[derive(Debug, Error)]
pub enum KubeSourceError {
    #[error("no node name: the source watches this node's Node object")]
    NoNodeName,
    #[error("reading kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        source: KubeconfigError,
    },
    #[error("no Kubernetes client configuration: {0}")]
    Infer(#[from] InferConfigError),
    #[error("creating the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("the {kind} watcher stopped: {reason}")]
    WatcherStopped { kind: &'static str, reason: String },
}

pub struct KubeSource {
    store: Arc<Store>,
    /// Aborted when the source is dropped.
    tasks: JoinSet<()>,
    task_kinds: HashMap<Id, &'static str>,
    debounce: Duration,
    /// Whether the initial state was handed out (later updates are debounced).
    started: bool,
}

impl KubeSource {
    /// Build a client from `opts` and start watching. Does not wait for the API server:
    /// [`KubeSource::changed`] does.
    pub async fn connect(opts: KubeOptions) -> Result<KubeSource, KubeSourceError> {
        if opts.node_name.is_empty() {
            return Err(KubeSourceError::NoNodeName);
        }
        let config = match &opts.kubeconfig {
            Some(path) => {
                let kubeconfig_err = |source| KubeSourceError::Kubeconfig {
                    path: path.clone(),
                    source,
                };
                let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_err)?;
                Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(kubeconfig_err)?
            }
            None => Config::infer().await?,
        };
        info!(api_server = %config.cluster_url, node = %opts.node_name, "watching the Kubernetes API");
        let client = Client::try_from(config)?;
        Ok(KubeSource::with_client(
            client,
            opts.node_name,
            opts.debounce,
        ))
    }

    /// Start watching through `client`. Must be called within a tokio runtime.
    pub fn with_client(
        client: Client,
        node_name: impl Into<String>,
        debounce: Duration,
    ) -> KubeSource {
        let node_name = node_name.into();
        let mut source = KubeSource {
            store: Arc::new(Store::default()),
            tasks: JoinSet::new(),
            task_kinds: HashMap::new(),
            debounce,
            started: false,
        };
        source.spawn::<core::Service>(&client, &node_name);
        source.spawn::<discovery::EndpointSlice>(&client, &node_name);
        source.spawn::<core::Pod>(&client, &node_name);
        source.spawn::<core::Namespace>(&client, &node_name);
        source.spawn::<networking::NetworkPolicy>(&client, &node_name);
        source.spawn::<core::Node>(&client, &node_name);
        source
    }

    fn spawn<K: WatchedKind>(&mut self, client: &Client, node_name: &str) {
        let task = watch::run::<K>(client.clone(), node_name.to_string(), self.store.clone());
        self.store.expect::<K>();
        let handle = self.tasks.spawn(task);
        self.task_kinds.insert(handle.id(), K::KIND);
    }

    /// Resolves after the initial list of every watched kind has completed (first call), and
    /// afterwards each time something changed; events arriving within `debounce` of each
    /// other are coalesced into one update (delayed at most 10 debounce intervals).
    ///
    /// Cancel-safe: dropping the future (say, in a `select!` loop) loses nothing.
    ///
    /// Errors only when a watcher task died (a bug); the source is then unusable.
    pub async fn changed(&mut self) -> Result<SourceUpdate, KubeSourceError> {
        let mut due = loop {
            match self.store.due() {
                Some(due) => break due,
                None => self.woken().await?,
            }
        };
        if self.started {
            // Hand the changes out once `debounce` passed since the last of them.
            let deadline = due.first + self.debounce * MAX_DELAY_IN_DEBOUNCES;
            loop {
                let quiet_until = (due.last + self.debounce).min(deadline);
                tokio::select! {
                    woken = self.woken() => woken?,
                    () = tokio::time::sleep_until(quiet_until) => break,
                }
                due = self.store.due().unwrap_or(due);
            }
        }
        self.started = true;
        Ok(self.store.take_update())
    }

    /// Wait for a store notification, or fail if a watcher task ended.
    async fn woken(&mut self) -> Result<(), KubeSourceError> {
        tokio::select! {
            () = self.store.woken() => Ok(()),
            Some(ended) = self.tasks.join_next_with_id() => {
                let (id, reason) = match ended {
                    Ok((id, ())) => (id, "its watch stream ended".to_string()),
                    Err(err) => (err.id(), err.to_string()),
                };
                let kind = self.task_kinds.get(&id).copied().unwrap_or("unknown");
                Err(KubeSourceError::WatcherStopped { kind, reason })
            }
        }
    }
}

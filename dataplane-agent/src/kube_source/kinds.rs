//! The kinds the source watches: which of them the API server sends, how each is keyed and
//! validated, and where it lives in [`ClusterState`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Resource as _;
use kube::runtime::watcher;
use serde::de::DeserializeOwned;

use super::trim;
use crate::model::{
    self, ClusterState, NamespacedName, ValidationError, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME,
};

/// Exactly kube-proxy's selector for Services and EndpointSlices: objects handed to another
/// proxy, and headless Services' slices, are never sent to us.
pub(super) fn proxied_selector() -> String {
    format!("!{LABEL_SERVICE_PROXY_NAME},!{LABEL_HEADLESS}")
}

/// A watched kind, implemented on its k8s-openapi type.
pub(super) trait WatchedKind:
    k8s_openapi::Resource + kube::Resource<DynamicType = ()> + DeserializeOwned + Send + 'static
{
    /// [`NamespacedName`] for namespaced kinds, the name for cluster-scoped ones.
    type Key: Ord + Clone + fmt::Display + Send + 'static;
    /// What [`ClusterState`] keeps of an object.
    type Stored: Clone + PartialEq + Send + 'static;

    fn key(meta: &ObjectMeta) -> Result<Self::Key, ValidationError>;

    /// Validate the object and keep what the dataplane needs of it.
    fn into_stored(self) -> Result<Self::Stored, ValidationError>;

    fn objects(state: &mut ClusterState) -> &mut BTreeMap<Self::Key, Arc<Self::Stored>>;

    /// What to ask the API server for; `node_name` is this node.
    fn watcher_config(_node_name: &str) -> watcher::Config {
        watcher::Config::default()
    }
}

impl WatchedKind for core::Service {
    type Key = NamespacedName;
    type Stored = model::Service;

    fn key(meta: &ObjectMeta) -> Result<NamespacedName, ValidationError> {
        model::namespaced_key(Self::KIND, meta)
    }

    fn into_stored(self) -> Result<model::Service, ValidationError> {
        model::Service::from_k8s(&self)
    }

    fn objects(state: &mut ClusterState) -> &mut BTreeMap<NamespacedName, Arc<model::Service>> {
        &mut state.services
    }

    fn watcher_config(_node_name: &str) -> watcher::Config {
        watcher::Config::default().labels(&proxied_selector())
    }
}

impl WatchedKind for discovery::EndpointSlice {
    type Key = NamespacedName;
    type Stored = model::EndpointSlice;

    fn key(meta: &ObjectMeta) -> Result<NamespacedName, ValidationError> {
        model::namespaced_key(Self::KIND, meta)
    }

    fn into_stored(self) -> Result<model::EndpointSlice, ValidationError> {
        model::EndpointSlice::from_k8s(&self)
    }

    fn objects(
        state: &mut ClusterState,
    ) -> &mut BTreeMap<NamespacedName, Arc<model::EndpointSlice>> {
        &mut state.endpoint_slices
    }

    fn watcher_config(_node_name: &str) -> watcher::Config {
        watcher::Config::default().labels(&proxied_selector())
    }
}

impl WatchedKind for core::Pod {
    type Key = NamespacedName;
    type Stored = core::Pod;

    fn key(meta: &ObjectMeta) -> Result<NamespacedName, ValidationError> {
        model::namespaced_key(Self::KIND, meta)
    }

    fn into_stored(self) -> Result<core::Pod, ValidationError> {
        Ok(trim::pod(self))
    }

    fn objects(state: &mut ClusterState) -> &mut BTreeMap<NamespacedName, Arc<core::Pod>> {
        &mut state.pods
    }
}

impl WatchedKind for core::Namespace {
    type Key = String;
    type Stored = core::Namespace;

    fn key(meta: &ObjectMeta) -> Result<String, ValidationError> {
        model::cluster_key(Self::KIND, meta)
    }

    fn into_stored(self) -> Result<core::Namespace, ValidationError> {
        Ok(trim::namespace(self))
    }

    fn objects(state: &mut ClusterState) -> &mut BTreeMap<String, Arc<core::Namespace>> {
        &mut state.namespaces
    }
}

impl WatchedKind for networking::NetworkPolicy {
    type Key = NamespacedName;
    type Stored = networking::NetworkPolicy;

    fn key(meta: &ObjectMeta) -> Result<NamespacedName, ValidationError> {
        model::namespaced_key(Self::KIND, meta)
    }

    /// Stored as the k8s type, but only when valid (like Services).
    fn into_stored(self) -> Result<networking::NetworkPolicy, ValidationError> {
        crate::policy::Policy::from_k8s(&self)?;
        Ok(trim::network_policy(self))
    }

    fn objects(
        state: &mut ClusterState,
    ) -> &mut BTreeMap<NamespacedName, Arc<networking::NetworkPolicy>> {
        &mut state.network_policies
    }
}

impl WatchedKind for core::Node {
    type Key = String;
    type Stored = core::Node;

    fn key(meta: &ObjectMeta) -> Result<String, ValidationError> {
        model::cluster_key(Self::KIND, meta)
    }

    fn into_stored(self) -> Result<core::Node, ValidationError> {
        Ok(trim::node(self))
    }

    fn objects(state: &mut ClusterState) -> &mut BTreeMap<String, Arc<core::Node>> {
        &mut state.nodes
    }

    /// Only this node: the others' objects change often and matter not.
    fn watcher_config(node_name: &str) -> watcher::Config {
        watcher::Config::default().fields(&format!("metadata.name={node_name}"))
    }
}

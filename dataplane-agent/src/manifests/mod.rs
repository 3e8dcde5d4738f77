//! A manifests directory as the source of Kubernetes objects: every `*.yaml`, `*.yml` and
//! `*.json` file in it (not recursive), each holding any number of YAML documents or a
//! `kind: List`.
//!
//! - [`DirSnapshot::read`] reads the directory once; [`DirWatcher`] polls it and hands out a
//!   fresh snapshot whenever anything changed.
//! - [`ManifestStore::apply`] turns a snapshot into objects, keeping the last good version of
//!   whatever is broken, and reports the problems; [`ManifestStore::cluster_state`] is the result.
//! - [`load_strict`] is for one-shot commands (`trace`): any problem fails the load.

mod error;
mod object;
mod parse;
mod snapshot;
mod store;
mod watch;

#[cfg(test)]
mod testdir;

use std::fmt;
use std::path::Path;

pub use error::{DocPos, DocProblem, ManifestError};
pub use object::{Kind, Object, ObjectId};
pub use parse::{parse_file, ParsedFile};
pub use snapshot::{DirSnapshot, FileSnapshot};
pub use store::ManifestStore;
pub use watch::DirWatcher;

use crate::model::ClusterState;

/// Every problem a strict load found.
#[derive(Debug, thiserror::Error)]
pub struct LoadErrors(pub Vec<ManifestError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in the manifests:", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Load `dir` once, failing on the first sign of trouble anywhere (but reporting all of it).
pub fn load_strict(dir: impl AsRef<Path>) -> Result<ClusterState, LoadErrors> {
    let snapshot = DirSnapshot::read(dir.as_ref()).map_err(|e| LoadErrors(vec![e]))?;
    let mut store = ManifestStore::new();
    let problems = store.apply(&snapshot);
    if problems.is_empty() {
        Ok(store.cluster_state())
    } else {
        Err(LoadErrors(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::testdir::TestDir;
    use super::*;
    use crate::model::NamespacedName;

    #[test]
    fn strict_load_reads_all_kinds() {
        let dir = TestDir::new();
        dir.write(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
             spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n\
             ---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}\n\
             addressType: IPv4\nendpoints: [{addresses: [10.244.1.11]}]\n",
        );
        dir.write(
            "b.json",
            r#"{"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}},
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}},
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}},
                {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "deny", "namespace": "demo"}},
                {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ignored"}}
            ]}"#,
        );
        let state = load_strict(dir.path()).unwrap();
        assert!(state
            .services
            .contains_key(&NamespacedName::new("demo", "web")));
        assert!(state
            .endpoint_slices
            .contains_key(&NamespacedName::new("demo", "web-1")));
        assert!(state
            .pods
            .contains_key(&NamespacedName::new("default", "p")));
        assert_eq!(
            state.pods[&NamespacedName::new("default", "p")]
                .metadata
                .namespace
                .as_deref(),
            Some("default")
        );
        assert!(state.namespaces.contains_key("demo"));
        assert!(state.nodes.contains_key("n1"));
        assert!(state
            .network_policies
            .contains_key(&NamespacedName::new("demo", "deny")));
    }

    #[test]
    fn strict_load_reports_every_problem() {
        let dir = TestDir::new();
        dir.write(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: bad}\n",
        );
        dir.write("b.yaml", "key: [unclosed\n");
        dir.write("c.yaml", "metadata: {name: no-kind}\n");
        let err = load_strict(dir.path()).unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("a.yaml: Service default/a: spec.clusterIP"),
            "{msg}"
        );
        assert!(msg.contains("b.yaml"), "{msg}");
        assert!(msg.contains("c.yaml: document 1"), "{msg}");
    }

    #[test]
    fn strict_load_of_missing_dir_fails() {
        let err = load_strict("/nonexistent/skiff-manifests").unwrap_err();
        assert!(matches!(err.0[..], [ManifestError::ReadDir { .. }]));
    }
}

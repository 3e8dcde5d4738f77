//! The objects of a manifests directory, keeping the last good version of whatever is broken,
//! so that a typo being edited never takes a Service off the dataplane:
//!
//! - a file that cannot be read or parsed keeps every object it contributed last time;
//! - an object that fails to parse or validate keeps its previous good version, if any;
//! - objects gone from a file that parsed are removed (so are those of a deleted file);
//! - an object defined twice keeps its first definition, in file-name order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::ManifestError;
use super::object::{Object, ObjectId};
use super::parse::{parse_file, ParsedFile};
use super::snapshot::{DirSnapshot, FileSnapshot};
use crate::model::{ClusterState, NamespacedName};

#[derive(Debug, Default)]
pub struct ManifestStore {
    /// Last good version of every current object, with the file it came from.
    objects: BTreeMap<ObjectId, (Object, PathBuf)>,
    /// The last parse of each file, by content hash: an edit to one file of a large
    /// directory re-parses that file only (parsing is most of the cost of a sync).
    parsed: HashMap<PathBuf, (u64, Result<ParsedFile, ManifestError>)>,
    /// Files parsed since the store was created.
    files_parsed: u64,
}

impl ManifestStore {
    pub fn new() -> ManifestStore {
        ManifestStore::default()
    }

    /// Bring the store up to date with `snapshot`; returns the problems found (the caller logs
    /// them). Objects affected by a problem keep their last good version as described above.
    pub fn apply(&mut self, snapshot: &DirSnapshot) -> Vec<ManifestError> {
        let mut problems = Vec::new();
        let mut next: BTreeMap<ObjectId, (Object, PathBuf)> = BTreeMap::new();
        let mut parsed = HashMap::with_capacity(snapshot.files.len());
        for file in &snapshot.files {
            let parse = match self.parsed.remove(&file.path) {
                Some((hash, parse)) if hash == file.content_hash => parse,
                _ => {
                    self.files_parsed += 1;
                    parse_snapshot(file)
                }
            };
            let contributions = self.contributions(file, parse.clone(), &mut problems);
            parsed.insert(file.path.clone(), (file.content_hash, parse));
            for (id, object) in contributions {
                if let Some((_, first_file)) = next.get(&id) {
                    problems.push(ManifestError::Duplicate {
                        file: file.path.clone(),
                        object: id,
                        first_file: first_file.clone(),
                    });
                    continue;
                }
                next.insert(id, (object, file.path.clone()));
            }
        }
        self.objects = next;
        self.parsed = parsed;
        problems
    }

    /// The objects `file` provides now, after falling back to last good versions.
    fn contributions(
        &self,
        file: &FileSnapshot,
        parsed: Result<ParsedFile, ManifestError>,
        problems: &mut Vec<ManifestError>,
    ) -> Vec<(ObjectId, Object)> {
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(err) => {
                problems.push(err);
                return self.previous_of_file(&file.path);
            }
        };

        let mut out = Vec::new();
        for (id, result) in parsed.objects {
            match result {
                Ok(object) => out.push((id, object)),
                Err(err) => {
                    problems.push(err);
                    if let Some((object, _)) = self.objects.get(&id) {
                        out.push((id, object.clone()));
                    }
                }
            }
        }
        if !parsed.unidentified.is_empty() {
            problems.extend(parsed.unidentified);
            // A broken document may be any of the file's previous objects (say, one whose
            // name is being edited): keep those not defined anew rather than drop them.
            let present: BTreeSet<ObjectId> = out.iter().map(|(id, _)| id.clone()).collect();
            out.extend(
                self.previous_of_file(&file.path)
                    .into_iter()
                    .filter(|(id, _)| !present.contains(id)),
            );
        }
        out
    }

    fn previous_of_file(&self, path: &Path) -> Vec<(ObjectId, Object)> {
        self.objects
            .iter()
            .filter(|(_, (_, from))| from.as_path() == path)
            .map(|(id, (object, _))| (id.clone(), object.clone()))
            .collect()
    }

    /// The current objects as the translation's input.
    pub fn cluster_state(&self) -> ClusterState {
        let mut state = ClusterState::default();
        for (id, (object, _)) in &self.objects {
            let key = || NamespacedName::new(id.namespace.clone().unwrap_or_default(), &id.name);
            match object {
                Object::Service(svc) => {
                    state.services.insert(key(), Arc::clone(svc));
                }
                Object::EndpointSlice(slice) => {
                    state.endpoint_slices.insert(key(), Arc::clone(slice));
                }
                Object::Pod(pod) => {
                    state.pods.insert(key(), Arc::clone(pod));
                }
                Object::NetworkPolicy(policy) => {
                    state.network_policies.insert(key(), Arc::clone(policy));
                }
                Object::Namespace(ns) => {
                    state.namespaces.insert(id.name.clone(), Arc::clone(ns));
                }
                Object::Node(node) => {
                    state.nodes.insert(id.name.clone(), Arc::clone(node));
                }
            }
        }
        state
    }

    /// How many file parses the store has done (unchanged files are not parsed again).
    pub fn files_parsed(&self) -> u64 {
        self.files_parsed
    }

    /// How many objects the store holds.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

fn parse_snapshot(file: &FileSnapshot) -> Result<ParsedFile, ManifestError> {
    match &file.content {
        Err(err) => Err(ManifestError::ReadFile {
            file: file.path.clone(),
            error: err.clone(),
        }),
        Ok(text) => parse_file(&file.path, text),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::super::testdir::TestDir;
    use super::*;
    use crate::model::ClusterIps;

    fn svc(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\n\
             spec: {{clusterIP: '{ip}', ports: [{{port: 80}}]}}\n"
        )
    }

    fn apply(store: &mut ManifestStore, dir: &TestDir) -> Vec<String> {
        let snap = DirSnapshot::read(dir.path()).unwrap();
        store.apply(&snap).iter().map(|e| e.to_string()).collect()
    }

    /// name -> first cluster IP of every Service in the store.
    fn services(store: &ManifestStore) -> Vec<(String, String)> {
        store
            .cluster_state()
            .services
            .values()
            .map(|s| {
                let ip = match &s.cluster_ips {
                    ClusterIps::Ips(ips) => ips[0].to_string(),
                    other => format!("{other:?}"),
                };
                (s.name.clone(), ip)
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn applies_and_removes_vanished_objects() {
        let dir = TestDir::new();
        let mut store = ManifestStore::new();
        dir.write(
            "a.yaml",
            &format!("{}---\n{}", svc("one", "10.0.0.1"), svc("two", "10.0.0.2")),
        );
        assert!(apply(&mut store, &dir).is_empty());
        assert_eq!(
            services(&store),
            pairs(&[("one", "10.0.0.1"), ("two", "10.0.0.2")])
        );

        dir.write("a.yaml", &svc("one", "10.0.0.3"));
        assert!(apply(&mut store, &dir).is_empty());
        assert_eq!(services(&store), pairs(&[("one", "10.0.0.3")]));

        dir.remove("a.yaml");
        assert!(apply(&mut store, &dir).is_empty());
        assert!(store.is_empty());
    }

    #[test]
    fn only_changed_files_are_parsed_again() {
        let dir = TestDir::new();
        dir.write("a.yaml", &svc("a", "10.96.0.1"));
        dir.write("b.yaml", &svc("b", "10.96.0.2"));
        let mut store = ManifestStore::new();
        assert!(apply(&mut store, &dir).is_empty());
        assert_eq!(store.files_parsed(), 2);
        dir.write("b.yaml", &svc("b", "10.96.0.3"));
        assert!(apply(&mut store, &dir).is_empty());
        assert_eq!(store.files_parsed(), 3);
        assert_eq!(
            services(&store),
            pairs(&[("a", "10.96.0.1"), ("b", "10.96.0.3")])
        );
        // A broken file is not parsed again either, and keeps its last good objects.
        dir.write("a.yaml", "kind: [");
        assert_eq!(apply(&mut store, &dir).len(), 1);
        assert_eq!(apply(&mut store, &dir).len(), 1);
        assert_eq!(store.files_parsed(), 4);
        assert_eq!(
            services(&store),
            pairs(&[("a", "10.96.0.1"), ("b", "10.96.0.3")])
        );
    }

    #[test]
    fn unparsable_file_keeps_its_previous_objects() {
        let dir = TestDir::new();
        let mut store = ManifestStore::new();
        dir.write(
            "a.yaml",
            &format!("{}---\n{}", svc("one", "10.0.0.1"), svc("two", "10.0.0.2")),
        );
        dir.write("b.yaml", &svc("three", "10.0.0.3"));
        apply(&mut store, &dir);

        dir.write(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: [\n",
        );
        dir.write("b.yaml", &svc("three", "10.0.0.33"));
        let problems = apply(&mut store, &dir);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("a.yaml: invalid YAML"), "{problems:?}");
        assert_eq!(
            services(&store),
            pairs(&[
                ("one", "10.0.0.1"),
                ("three", "10.0.0.33"),
                ("two", "10.0.0.2")
            ])
        );

        // Still broken on the next scan: still kept.
        apply(&mut store, &dir);
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn invalid_object_keeps_its_previous_good_version() {
        let dir = TestDir::new();
        let mut store = ManifestStore::new();
        dir.write(
            "a.yaml",
            &format!("{}---\n{}", svc("one", "10.0.0.1"), svc("two", "10.0.0.2")),
        );
        apply(&mut store, &dir);

        dir.write(
            "a.yaml",
            &format!(
                "{}---\n{}",
                svc("one", "10.0.0.999"),
                svc("two", "10.0.0.22")
            ),
        );
        let problems = apply(&mut store, &dir);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("Service demo/one: spec.clusterIP"),
            "{problems:?}"
        );
        assert_eq!(
            services(&store),
            pairs(&[("one", "10.0.0.1"), ("two", "10.0.0.22")])
        );
    }

    #[test]
    fn new_invalid_object_is_absent() {
        let dir = TestDir::new();
        let mut store = ManifestStore::new();
        dir.write(
            "a.yaml",
            &format!("{}---\n{}", svc("one", "10.0.0.1"), svc("new", "bad")),
        );
        let problems = apply(&mut store, &dir);
        assert_eq!(problems.len(), 1);
        assert_eq!(services(&store), pairs(&[("one", "10.0.0.1")]));
    }

    #[test]
    fn invalid_network_policy_keeps_its_previous_good_version() {
        let policy = |port: &str| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {{name: np, namespace: demo}}\n\
                 spec: {{podSelector: {{}}, ingress: [{{ports: [{{port: {port}}}]}}]}}\n"
            )
        };
        let port_of = |store: &ManifestStore| {
            let state = store.cluster_state();
            let np = &state.network_policies[&NamespacedName::new("demo", "np")];
            let rule = &np.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
            format!("{:?}", rule.ports.as_ref().unwrap()[0].port)
        };
        let dir = TestDir::new();
        let mut store = ManifestStore::new();
        dir.write("np.yaml", &policy("80"));
        assert!(apply(&mut store, &dir).is_empty());
        assert_eq!(port_of(&store), "Some(Int(80))");

        dir.write("np.yaml", &policy("70000"));
        let problems = apply(&mut store, &dir);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains(
                "NetworkPolicy demo/np: spec.ingress[0].ports[0].port: port 70000 is out of range"
            ),
            "{problems:?}"
        );
        assert_eq!(port_of(&store), "Some(Int(80))");

        // Never valid: absent.
        dir.write("np.yaml", "");
        dir.write(
            "other.yaml",
            &policy("'Bad_Name'").replace("name: np", "name: other"),
        );
        let problems = apply(&mut store, &dir);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(store.cluster_state().network_policies.is_empty());
    }

    #[test]
    fn schema_error_keeps_previous_version_too() {
        let dir = TestDir::new();
        let mut store = ManifestStore::new();
        dir.write("a.yaml", &svc("one", "10.0.0.1"));
        apply(&mut store, &dir);
        dir.write(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: one, namespace: demo}\nspec: {ports: [{port: eighty}]}\n",
        );
        let problems = apply(&mut store, &dir);
        assert!(
            problems[0].contains("Service demo/one: spec.ports[0].port"),
            "{problems:?}"
        );
        assert_eq!(services(&store), pairs(&[("one", "10.0.0.1")]));
    }

    #[test]
    fn unidentifiable_document_suspends_removals_from_its_file() {
        let dir = TestDir::new();
        let mut store = ManifestStore::new();
        dir.write(
            "a.yaml",
            &format!("{}---\n{}", svc("one", "10.0.0.1"), svc("two", "10.0.0.2")),
        );
        apply(&mut store, &dir);

        // `two` loses its name mid-edit; `one` is updated meanwhile.
        dir.write(
            "a.yaml",
            &format!(
                "{}---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: demo}}\n",
                svc("one", "10.0.0.11")
            ),
        );
        let problems = apply(&mut store, &dir);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("a.yaml: document 2"), "{problems:?}");
        assert_eq!(
            services(&store),
            pairs(&[("one", "10.0.0.11"), ("two", "10.0.0.2")])
        );
    }

    #[test]
    fn duplicates_keep_the_first_definition() {
        let dir = TestDir::new();
        let mut store = ManifestStore::new();
        dir.write("a.yaml", &svc("one", "10.0.0.1"));
        dir.write(
            "b.yaml",
            &format!("{}---\n{}", svc("one", "10.0.0.2"), svc("two", "10.0.0.3")),
        );
        let problems = apply(&mut store, &dir);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("b.yaml: Service demo/one: already defined in")
                && problems[0].contains("a.yaml"),
            "{problems:?}"
        );
        assert_eq!(
            services(&store),
            pairs(&[("one", "10.0.0.1"), ("two", "10.0.0.3")])
        );

        // Within one file as well.
        dir.remove("b.yaml");
        dir.write(
            "a.yaml",
            &format!("{}---\n{}", svc("one", "10.0.0.1"), svc("one", "10.0.0.9")),
        );
        assert_eq!(apply(&mut store, &dir).len(), 1);
        assert_eq!(services(&store), pairs(&[("one", "10.0.0.1")]));
    }

    #[test]
    fn object_moving_between_files_keeps_its_good_version() {
        let dir = TestDir::new();
        let mut store = ManifestStore::new();
        dir.write("a.yaml", &svc("one", "10.0.0.1"));
        apply(&mut store, &dir);
        dir.remove("a.yaml");
        dir.write("b.yaml", &svc("one", "nonsense"));
        assert_eq!(apply(&mut store, &dir).len(), 1);
        assert_eq!(services(&store), pairs(&[("one", "10.0.0.1")]));
        // Its origin is now b.yaml: a syntax error there keeps it.
        dir.write("b.yaml", "{");
        apply(&mut store, &dir);
        assert_eq!(services(&store), pairs(&[("one", "10.0.0.1")]));
    }

    #[test]
    fn unreadable_file_keeps_its_previous_objects() {
        let dir = TestDir::new();
        let mut store = ManifestStore::new();
        dir.write("a.yaml", &svc("one", "10.0.0.1"));
        apply(&mut store, &dir);
        std::fs::write(dir.path().join("a.yaml"), [0xff, 0xfe]).unwrap();
        let problems = apply(&mut store, &dir);
        assert!(problems[0].contains("cannot read"), "{problems:?}");
        assert_eq!(store.len(), 1);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            store
                .cluster_state()
                .services
                .values()
                .next()
                .unwrap()
                .cluster_ips,
            ClusterIps::Ips(vec![ip])
        );
    }
}

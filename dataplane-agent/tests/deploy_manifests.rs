//! The Kubernetes deployment in `manifests/`, installed with `kubectl apply -f manifests/`.
//!
//! kubectl applies every file directly in that directory (not its subdirectories, which hold
//! the local demo), so every top-level file must hold only Kubernetes objects. Each document is
//! parsed into its k8s-openapi type by `apiVersion` and `kind`; an unexpected kind fails. The
//! k8s-openapi types silently ignore unknown fields, so each object is also serialised again
//! and compared with the input: a field that was dropped on the way (misspelled, wrongly
//! indented, or not part of the API) fails with its path.
//!
//! Then the objects are checked against each other and against what the agent needs: the
//! DaemonSet runs as the ServiceAccount bound to the ClusterRole; the role only lists and
//! watches; the ConfigMap's `config.yaml` is a valid node configuration; the agent is on the
//! host network, not privileged, with ALL capabilities dropped but the few it needs; probes
//! and arguments agree with its metrics address and mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, HTTPGetAction, Namespace, PodSpec, Probe, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};
use serde_yaml::Value;
use skiff::config::NodeConfig;

const NAMESPACE: &str = "skiff-system";
/// The agent's metrics, health and readiness port (kube-proxy's metrics port).
const METRICS_PORT: i32 = 10249;
/// The capabilities the agent may have; everything else is dropped.
const CAPABILITIES: [&str; 4] = ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"];

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

#[derive(Debug)]
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    ConfigMap(ConfigMap),
    DaemonSet(Box<DaemonSet>),
}

/// One object and where it was read (`file#document`).
#[derive(Debug)]
struct Loaded {
    origin: String,
    object: Object,
}

/// Parses `value` as `T`, then fails if serialising `T` again does not give `value` back.
fn typed<T: DeserializeOwned + Serialize>(origin: &str, value: &Value) -> Result<T, String> {
    let object: T = serde_yaml::from_value(value.clone()).map_err(|e| format!("{origin}: {e}"))?;
    let again = serde_yaml::to_value(&object).map_err(|e| format!("{origin}: {e}"))?;
    let mut differences = Vec::new();
    diff("", value, &again, &mut differences);
    if differences.is_empty() {
        Ok(object)
    } else {
        Err(format!(
            "{origin}: the object does not survive parsing as {}:\n  {}",
            std::any::type_name::<T>(),
            differences.join("\n  ")
        ))
    }
}

/// Paths where `output` (the re-serialised object) differs from `input` (the file).
fn diff(path: &str, input: &Value, output: &Value, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            for (key, value) in a {
                let name = key_name(key);
                match b.get(key) {
                    None => out.push(format!(
                        "{path}.{name}: dropped (a misspelled or unknown field?)"
                    )),
                    Some(other) => diff(&format!("{path}.{name}"), value, other, out),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{}: added", key_name(key)));
            }
        }
        (Value::Sequence(a), Value::Sequence(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if input == output => {}
        _ => out.push(format!("{path}: {input:?} became {output:?}")),
    }
}

fn key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// Every document of one file, typed by `apiVersion` and `kind`.
fn parse_file(name: &str, text: &str) -> Result<Vec<Loaded>, String> {
    let mut objects = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = format!("{name}#{i}");
        let value = Value::deserialize(document).map_err(|e| format!("{origin}: {e}"))?;
        if value.is_null() {
            // An empty document (a stray `---`): kubectl skips it too.
            continue;
        }
        let field = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default();
        let object = match (field("apiVersion"), field("kind")) {
            ("v1", "Namespace") => Object::Namespace(typed(&origin, &value)?),
            ("v1", "ServiceAccount") => Object::ServiceAccount(typed(&origin, &value)?),
            ("v1", "ConfigMap") => Object::ConfigMap(typed(&origin, &value)?),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                Object::ClusterRole(typed(&origin, &value)?)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                Object::ClusterRoleBinding(typed(&origin, &value)?)
            }
            ("apps/v1", "DaemonSet") => Object::DaemonSet(Box::new(typed(&origin, &value)?)),
            (api_version, kind) => {
                return Err(format!(
                    "{origin}: unexpected object (apiVersion {api_version:?}, kind {kind:?}): \
                     every top-level file in manifests/ is applied to the cluster; put other \
                     files in a subdirectory"
                ))
            }
        };
        objects.push(Loaded { origin, object });
    }
    Ok(objects)
}

/// Every object in every top-level file of manifests/.
fn load_all() -> Vec<Loaded> {
    let dir = manifests_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for path in files {
        let name = format!("manifests/{}", path.file_name().unwrap().to_string_lossy());
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            errors.push(format!(
                "{name}: only Kubernetes objects in .yaml files belong at the top of manifests/ \
                 (kubectl applies .yaml, .yml and .json files there)"
            ));
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        match parse_file(&name, &text) {
            Ok(mut found) if !found.is_empty() => objects.append(&mut found),
            Ok(_) => errors.push(format!("{name}: no object")),
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    objects
}

/// The objects parsed once for every test.
struct Deployment {
    namespace: Namespace,
    service_account: ServiceAccount,
    cluster_role: ClusterRole,
    binding: ClusterRoleBinding,
    config_map: ConfigMap,
    daemon_set: DaemonSet,
}

/// Exactly one object of a kind, or a failure naming every one found.
fn one<T: Clone>(objects: &[Loaded], kind: &str, pick: impl Fn(&Object) -> Option<&T>) -> T {
    let found: Vec<(&str, &T)> = objects
        .iter()
        .filter_map(|l| pick(&l.object).map(|o| (l.origin.as_str(), o)))
        .collect();
    match found.as_slice() {
        [(_, object)] => (*object).clone(),
        _ => panic!(
            "expected exactly one {kind} in manifests/, found {:?}",
            found.iter().map(|(origin, _)| origin).collect::<Vec<_>>()
        ),
    }
}

fn deployment() -> Deployment {
    let objects = load_all();
    Deployment {
        namespace: one(&objects, "Namespace", |o| match o {
            Object::Namespace(x) => Some(x),
            _ => None,
        }),
        service_account: one(&objects, "ServiceAccount", |o| match o {
            Object::ServiceAccount(x) => Some(x),
            _ => None,
        }),
        cluster_role: one(&objects, "ClusterRole", |o| match o {
            Object::ClusterRole(x) => Some(x),
            _ => None,
        }),
        binding: one(&objects, "ClusterRoleBinding", |o| match o {
            Object::ClusterRoleBinding(x) => Some(x),
            _ => None,
        }),
        config_map: one(&objects, "ConfigMap", |o| match o {
            Object::ConfigMap(x) => Some(x),
            _ => None,
        }),
        daemon_set: one(&objects, "DaemonSet", |o| match o {
            Object::DaemonSet(x) => Some(&**x),
            _ => None,
        }),
    }
}

impl Deployment {
    fn pod(&self) -> &PodSpec {
        self.daemon_set
            .spec
            .template
            .spec
            .as_ref()
            .expect("DaemonSet pod template spec")
    }

    fn container(&self) -> &Container {
        match self.pod().containers.as_slice() {
            [container] => container,
            other => panic!("expected one container, found {}", other.len()),
        }
    }

    /// The value following `flag` in the container's arguments.
    fn arg(&self, flag: &str) -> &str {
        let args = self.container().args.as_deref().unwrap_or_default();
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag} in the agent's args {args:?}"));
        args.get(i + 1)
            .unwrap_or_else(|| panic!("{flag} without a value in {args:?}"))
    }

    /// The host path behind the container path `path` (through its hostPath volume mount).
    fn host_path_of(&self, path: &str) -> String {
        let mount = self
            .container()
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| path == m.mount_path || path.starts_with(&format!("{}/", m.mount_path)))
            .max_by_key(|m| m.mount_path.len())
            .unwrap_or_else(|| panic!("{path} is on no volume mount"));
        let volume = self
            .volume(&mount.name)
            .host_path
            .as_ref()
            .unwrap_or_else(|| panic!("volume {} is not a hostPath", mount.name));
        format!("{}{}", volume.path, &path[mount.mount_path.len()..])
    }

    fn volume(&self, name: &str) -> &k8s_openapi::api::core::v1::Volume {
        self.pod()
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }
}

/// Parses the ConfigMap's `config.yaml` as the agent does.
///
/// The shared ConfigMap leaves out `nodeName` and `nodeIPs` on purpose: in Kubernetes mode they
/// come from `--node-name` and the Node object. `NodeConfig::from_yaml_str` may still require
/// them (the standalone mode does), so this test-only wrapper fills both in with documentation
/// values before parsing; every other key is parsed, and rejected if unknown, exactly as the
/// agent would.
fn parse_node_config(text: &str) -> NodeConfig {
    let mut map: serde_yaml::Mapping =
        serde_yaml::from_str(text).expect("config.yaml is a YAML mapping");
    for key in ["nodeName", "nodeIPs"] {
        assert!(
            !map.contains_key(key),
            "config.yaml is shared by every node: it must not set {key}"
        );
    }
    map.insert("nodeName".into(), "test-node".into());
    map.insert("nodeIPs".into(), Value::Sequence(vec!["192.0.2.1".into()]));
    let text = serde_yaml::to_string(&map).unwrap();
    NodeConfig::from_yaml_str(&text, "manifests/20-configmap.yaml: config.yaml")
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_top_level_file_is_a_known_kubernetes_object() {
    let objects = load_all();
    assert!(!objects.is_empty());
    // Namespaced objects are in skiff's namespace, which the manifests create.
    let d = deployment();
    assert_eq!(d.namespace.metadata.name.as_deref(), Some(NAMESPACE));
    for (kind, namespace) in [
        ("ServiceAccount", &d.service_account.metadata.namespace),
        ("ConfigMap", &d.config_map.metadata.namespace),
        ("DaemonSet", &d.daemon_set.metadata.namespace),
    ] {
        assert_eq!(namespace.as_deref(), Some(NAMESPACE), "{kind}");
    }
    // Host networking, hostPath and capabilities are beyond the baseline Pod Security level.
    let labels = d.namespace.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged")
    );
}

#[test]
fn daemon_set_runs_as_the_bound_service_account() {
    let d = deployment();
    let sa_name = d.service_account.metadata.name.as_deref().unwrap();
    assert_eq!(d.pod().service_account_name.as_deref(), Some(sa_name));
    assert_ne!(d.pod().automount_service_account_token, Some(false));

    let role_ref = &d.binding.role_ref;
    assert_eq!(
        role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(role_ref.name.as_str()),
        d.cluster_role.metadata.name.as_deref()
    );
    let subjects = d.binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && s.name == sa_name
            && s.namespace.as_deref() == Some(NAMESPACE)),
        "the ClusterRoleBinding does not bind {NAMESPACE}/{sa_name}: {subjects:?}"
    );
}

#[test]
fn cluster_role_only_lists_and_watches_what_the_agent_reads() {
    let d = deployment();
    assert!(d.cluster_role.aggregation_rule.is_none());
    let mut granted = BTreeSet::new();
    for rule in d.cluster_role.rules.iter().flatten() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(verbs, BTreeSet::from(["list", "watch"]), "{rule:?}");
        assert!(rule.resource_names.is_none(), "{rule:?}");
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                assert!(!group.contains('*') && !resource.contains('*'), "{rule:?}");
                assert!(
                    granted.insert((group.as_str(), resource.as_str())),
                    "{group}/{resource} is granted twice"
                );
            }
        }
    }
    assert_eq!(
        granted,
        BTreeSet::from([
            ("", "namespaces"),
            ("", "nodes"),
            ("", "pods"),
            ("", "services"),
            ("discovery.k8s.io", "endpointslices"),
            ("networking.k8s.io", "networkpolicies"),
        ])
    );
}

#[test]
fn config_map_holds_a_valid_node_config_and_the_api_server_address() {
    let d = deployment();
    let data = d.config_map.data.clone().unwrap_or_default();
    let config = parse_node_config(
        data.get("config.yaml")
            .expect("config.yaml in the ConfigMap"),
    );
    assert!(!config.cluster_cidrs.is_empty(), "set clusterCIDRs");
    assert!(
        config.service_cidrs.as_ref().is_some_and(|s| !s.is_empty()),
        "set serviceCIDRs"
    );
    assert!(!config.pod_interfaces.is_empty());

    // The agent reads the file where the ConfigMap is mounted.
    let config_path = d.arg("--config");
    let mount = d
        .container()
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| config_path.starts_with(&format!("{}/", m.mount_path)))
        .unwrap_or_else(|| panic!("--config {config_path} is on no volume mount"));
    let source = d
        .volume(&mount.name)
        .config_map
        .as_ref()
        .expect("--config is on a ConfigMap volume");
    assert_eq!(source.name, d.config_map.metadata.name.clone().unwrap());
    let file = &config_path[mount.mount_path.len() + 1..];
    let items = source.items.as_deref().unwrap_or_default();
    assert!(
        items.is_empty() && data.contains_key(file)
            || items
                .iter()
                .any(|i| i.path == file && data.contains_key(&i.key)),
        "{config_path} is not a key of the ConfigMap"
    );

    // Every value the container takes from a ConfigMap exists there: a missing one would
    // keep the pod from starting.
    let mut referenced = BTreeMap::new();
    for env in d.container().env.iter().flatten() {
        if let Some(r) = env
            .value_from
            .as_ref()
            .and_then(|v| v.config_map_key_ref.as_ref())
        {
            assert_eq!(r.name, d.config_map.metadata.name.clone().unwrap());
            assert!(data.contains_key(&r.key), "{}: no key {}", env.name, r.key);
            referenced.insert(env.name.as_str(), data[&r.key].as_str());
        }
    }
    // Without kube-proxy the `kubernetes` Service's ClusterIP (the in-cluster default) cannot
    // be reached from the node: the API server's real address must be configurable.
    assert!(referenced.contains_key("KUBERNETES_SERVICE_HOST"));
    let port = referenced
        .get("KUBERNETES_SERVICE_PORT")
        .expect("KUBERNETES_SERVICE_PORT from the ConfigMap");
    assert!(port.parse::<u16>().is_ok(), "{port:?}");
}

#[test]
fn daemon_set_is_a_node_agent_on_the_host_network() {
    let d = deployment();
    let spec = &d.daemon_set.spec;
    let pod = d.pod();
    assert_eq!(pod.host_network, Some(true));
    // Not ClusterFirstWithHostNet: the cluster DNS is a ClusterIP, which the node itself
    // cannot reach without kube-proxy.
    assert_eq!(pod.dns_policy.as_deref(), Some("Default"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "the agent must tolerate every taint, like kube-proxy: {:?}",
        pod.tolerations
    );
    let strategy = spec.update_strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.clone()),
        Some(IntOrString::Int(1))
    );
    // The selector selects the template.
    let template_labels = spec.template.metadata.as_ref().unwrap().labels.clone();
    for (key, value) in spec.selector.match_labels.iter().flatten() {
        assert_eq!(
            template_labels.as_ref().and_then(|l| l.get(key)),
            Some(value)
        );
    }

    let container = d.container();
    let image = container.image.as_deref().unwrap();
    assert!(
        !image.ends_with(":latest") && image.contains(':'),
        "pin the image: {image}"
    );
    // Node name from the downward API, passed both ways the agent reads it.
    let node_name = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from a fieldRef");
    assert_eq!(node_name.field_path, "spec.nodeName");
    assert_eq!(d.arg("--node-name"), "$(NODE_NAME)");
    let args = container.args.as_deref().unwrap();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    assert!(args.iter().any(|a| a == "--kubernetes"), "{args:?}");

    // Pins and state live on the host, so they outlive the container.
    assert_eq!(d.host_path_of(d.arg("--bpffs")), "/sys/fs/bpf/skiff");
    assert_eq!(d.host_path_of(d.arg("--state-dir")), "/run/skiff");
    for mount in container.volume_mounts.iter().flatten() {
        // Bidirectional propagation is only allowed to privileged containers.
        assert_ne!(
            mount.mount_propagation.as_deref(),
            Some("Bidirectional"),
            "{mount:?}"
        );
    }

    let resources = container.resources.as_ref().unwrap();
    let requests = resources.requests.clone().unwrap_or_default();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    let limits = resources.limits.clone().unwrap_or_default();
    assert!(limits.contains_key("memory"));
    assert!(!limits.contains_key("cpu"), "no CPU limit, like kube-proxy");
}

#[test]
fn agent_is_not_privileged_and_has_only_the_capabilities_it_needs() {
    let d = deployment();
    let container = d.container();
    let security = container
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_ne!(security.privileged, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let caps = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(CAPABILITIES));
    assert!(d.pod().host_pid != Some(true) && d.pod().host_ipc != Some(true));
}

fn http_get<'a>(probe: Option<&'a Probe>, which: &str) -> &'a HTTPGetAction {
    probe
        .and_then(|p| p.http_get.as_ref())
        .unwrap_or_else(|| panic!("{which}: an httpGet probe"))
}

#[test]
fn probes_and_metrics_address_agree() {
    let d = deployment();
    let container = d.container();
    let address = d.arg("--metrics-address");
    assert_eq!(address, format!("0.0.0.0:{METRICS_PORT}"));
    // Resolve a named probe port through the container's ports.
    let port_number = |port: &IntOrString| match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no container port named {name}"))
                .container_port
        }
    };
    for (which, probe, path) in [
        (
            "livenessProbe",
            container.liveness_probe.as_ref(),
            "/healthz",
        ),
        (
            "readinessProbe",
            container.readiness_probe.as_ref(),
            "/readyz",
        ),
    ] {
        let get = http_get(probe, which);
        assert_eq!(get.path.as_deref(), Some(path), "{which}");
        assert_eq!(port_number(&get.port), METRICS_PORT, "{which}");
        // Default host: the pod IP, which on the host network is the node's.
        assert!(get.host.is_none(), "{which}");
        assert_ne!(get.scheme.as_deref(), Some("HTTPS"), "{which}");
    }
    assert!(
        container
            .ports
            .iter()
            .flatten()
            .any(|p| p.container_port == METRICS_PORT),
        "declare the metrics port"
    );
}

// The checker itself: what it must reject.

#[test]
fn a_misspelled_field_is_caught() {
    let yaml = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  namepsace: y\n";
    let err = parse_file("bad.yaml", yaml).unwrap_err();
    assert!(err.contains(".metadata.namepsace: dropped"), "{err}");
    let yaml = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: x\nspec:\n  \
                selector: {}\n  template:\n    spec:\n      hostNetwrok: true\n      \
                containers: []\n";
    let err = parse_file("bad.yaml", yaml).unwrap_err();
    assert!(
        err.contains(".spec.template.spec.hostNetwrok: dropped"),
        "{err}"
    );
}

#[test]
fn an_unknown_kind_or_a_node_config_is_rejected() {
    let err = parse_file(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n",
    )
    .unwrap_err();
    assert!(err.contains("\"Service\""), "{err}");
    let node_config = std::fs::read_to_string(manifests_dir().join("demo/node.yaml")).unwrap();
    let err = parse_file("node.yaml", &node_config).unwrap_err();
    assert!(err.contains("unexpected object"), "{err}");
    // A wrong apiVersion for a known kind is an error too.
    assert!(parse_file("x.yaml", "apiVersion: v2\nkind: ConfigMap\n").is_err());
    // Documents after the first are checked as well.
    let two = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
               apiVersion: v1\nkind: Namespace\nmetadata: {name: b, lables: {}}\n";
    let err = parse_file("two.yaml", two).unwrap_err();
    assert!(err.starts_with("two.yaml#1:"), "{err}");
}

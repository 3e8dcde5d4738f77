//! The Kubernetes API source against an in-process fake API server: initial list, changes of
//! every kind, resumed and restarted watches, invalid objects, server-side filtering,
//! coalescing, and equivalence with the manifests source.

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fake_apiserver::{FakeApiServer, Resource};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use serde_json::{json, Value};
use skiff::config::NodeConfig;
use skiff::kube_source::{KubeOptions, KubeSource, SourceUpdate};
use skiff::manifests;
use skiff::model::{ClusterIps, ClusterState, NamespacedName};
use skiff::translate::translate;

const NODE: &str = "node-a";
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Bound on any one wait; generous because a relist waits out kube-rs's error backoff.
const WAIT: Duration = Duration::from_secs(15);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn next(source: &mut KubeSource) -> SourceUpdate {
    within("an update", source.changed()).await.unwrap()
}

/// Updates until one satisfies `done`; returns it and how many updates it took.
async fn until(
    source: &mut KubeSource,
    what: &str,
    done: impl Fn(&SourceUpdate) -> bool,
) -> (SourceUpdate, usize) {
    within(what, async {
        let mut count = 0;
        loop {
            let update = source.changed().await.unwrap();
            count += 1;
            if done(&update) {
                return (update, count);
            }
        }
    })
    .await
}

fn nn(namespace: &str, name: &str) -> NamespacedName {
    NamespacedName::new(namespace, name)
}

fn service(name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    })
}

fn with_labels(mut obj: Value, labels: Value) -> Value {
    obj["metadata"]["labels"] = labels;
    obj
}

fn slice(name: &str, service: &str, address: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "demo",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "nodeName": NODE}],
    })
}

fn pod(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "labels": {"app": "web"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "nginx"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

fn namespace(name: &str, team: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"team": team}}})
}

fn policy(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"]},
    })
}

fn node(name: &str, pod_cidr: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]},
    })
}

/// The first cluster IP of `demo/name`, if the Service is in the state.
fn cluster_ip(state: &ClusterState, name: &str) -> Option<String> {
    state
        .services
        .get(&nn("demo", name))
        .map(|s| match &s.cluster_ips {
            ClusterIps::Ips(ips) => ips[0].to_string(),
            other => format!("{other:?}"),
        })
}

fn pod_ip(state: &ClusterState, name: &str) -> Option<String> {
    state
        .pods
        .get(&nn("demo", name))
        .and_then(|p| p.status.as_ref()?.pod_ip.clone())
}

async fn start(server: &FakeApiServer) -> KubeSource {
    KubeSource::with_client(server.client(), NODE, DEBOUNCE)
}

#[tokio::test]
async fn initial_list_holds_every_kind_and_only_what_is_watched() {
    let server = FakeApiServer::start().await;
    server.apply_value(namespace("demo", "a"));
    server.apply_value(service("web", "10.96.0.10"));
    server.apply_value(slice("web-1", "web", "10.244.1.11"));
    server.apply_value(pod("web-1", "10.244.1.11"));
    server.apply_value(policy("deny", "web"));
    server.apply_value(node(NODE, "10.244.1.0/24"));
    server.apply_value(node("node-b", "10.244.2.0/24"));
    // kube-proxy never sees these two; neither must we.
    server.apply_value(with_labels(
        service("other-proxy", "10.96.0.11"),
        json!({"service.kubernetes.io/service-proxy-name": "someone-else"}),
    ));
    server.apply_value(with_labels(
        slice("headless-1", "headless", "10.244.1.12"),
        json!({"kubernetes.io/service-name": "headless", "service.kubernetes.io/headless": ""}),
    ));

    let mut source = start(&server).await;
    let update = next(&mut source).await;
    let s = &update.state;
    assert_eq!(update.problems, Vec::<String>::new());
    assert_eq!((update.watch_restarts, update.watch_errors), (0, 0));
    assert_eq!(cluster_ip(s, "web").as_deref(), Some("10.96.0.10"));
    assert_eq!(s.services.len(), 1, "{:?}", s.services.keys());
    assert_eq!(
        s.endpoint_slices.keys().collect::<Vec<_>>(),
        vec![&nn("demo", "web-1")]
    );
    assert_eq!(pod_ip(s, "web-1").as_deref(), Some("10.244.1.11"));
    assert!(s.network_policies.contains_key(&nn("demo", "deny")));
    assert!(s.namespaces.contains_key("demo"));
    assert_eq!(s.nodes.keys().collect::<Vec<_>>(), vec![NODE]);

    // What was asked for: kube-proxy's selector, this node only, bookmarks on every watch.
    let selector = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
    for resource in [Resource::Services, Resource::EndpointSlices] {
        for req in server.requests_for(resource) {
            assert_eq!(req.param("labelSelector"), Some(selector), "{req:?}");
        }
    }
    for req in server.requests_for(Resource::Nodes) {
        assert_eq!(
            req.param("fieldSelector"),
            Some("metadata.name=node-a"),
            "{req:?}"
        );
    }
    within("a watch of every kind", async {
        while !Resource::ALL
            .iter()
            .all(|r| server.requests_for(*r).iter().any(|q| q.is_watch()))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for req in server.requests().iter().filter(|r| r.is_watch()) {
        assert_eq!(req.param("allowWatchBookmarks"), Some("true"), "{req:?}");
    }
}

/// Each kind: (name, first version, second version, removal, what the state shows of it).
type KindCase = (
    &'static str,
    Value,
    Value,
    Box<dyn Fn(&FakeApiServer)>,
    fn(&ClusterState) -> Option<String>,
);

fn kind_cases() -> Vec<KindCase> {
    fn labels_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
        format!("{:?}", meta.labels)
    }
    vec![
        (
            "Service",
            service("s1", "10.96.1.1"),
            service("s1", "10.96.1.2"),
            Box::new(|s| assert!(s.delete::<core::Service>(Some("demo"), "s1"))),
            |st| cluster_ip(st, "s1"),
        ),
        (
            "EndpointSlice",
            slice("s1-a", "s1", "10.244.1.1"),
            slice("s1-a", "s1", "10.244.1.2"),
            Box::new(|s| assert!(s.delete::<discovery::EndpointSlice>(Some("demo"), "s1-a"))),
            |st| {
                st.endpoint_slices
                    .get(&nn("demo", "s1-a"))
                    .map(|s| s.endpoints[0].addresses[0].to_string())
            },
        ),
        (
            "NetworkPolicy",
            policy("np", "a"),
            policy("np", "b"),
            Box::new(|s| assert!(s.delete::<networking::NetworkPolicy>(Some("demo"), "np"))),
            |st| {
                st.network_policies
                    .get(&nn("demo", "np"))
                    .map(|p| format!("{:?}", p.spec.as_ref().unwrap().pod_selector))
            },
        ),
        (
            "Pod",
            pod("p", "10.244.1.5"),
            pod("p", "10.244.1.6"),
            Box::new(|s| assert!(s.delete::<core::Pod>(Some("demo"), "p"))),
            |st| pod_ip(st, "p"),
        ),
        (
            "Namespace",
            namespace("ns1", "a"),
            namespace("ns1", "b"),
            Box::new(|s| assert!(s.delete::<core::Namespace>(None, "ns1"))),
            |st| st.namespaces.get("ns1").map(|n| labels_of(&n.metadata)),
        ),
        (
            "Node",
            node(NODE, "10.244.1.0/24"),
            node(NODE, "10.244.9.0/24"),
            Box::new(|s| assert!(s.delete::<core::Node>(None, NODE))),
            |st| {
                st.nodes
                    .get(NODE)
                    .and_then(|n| n.spec.as_ref()?.pod_cidr.clone())
            },
        ),
    ]
}

#[tokio::test]
async fn changes_of_every_kind_reach_the_next_update() {
    let server = FakeApiServer::start().await;
    let mut source = start(&server).await;
    let initial = next(&mut source).await;
    assert_eq!(initial.state, ClusterState::default());

    for (kind, v1, v2, delete, show) in kind_cases() {
        server.apply_value(v1);
        let first = show(&next(&mut source).await.state);
        assert!(first.is_some(), "{kind}: added object missing");

        server.apply_value(v2);
        let second = show(&next(&mut source).await.state);
        assert!(
            second.is_some() && second != first,
            "{kind}: {first:?} -> {second:?}"
        );

        delete(&server);
        let update = next(&mut source).await;
        assert_eq!(show(&update.state), None, "{kind}: deleted object remains");
        assert_eq!(update.state, ClusterState::default(), "{kind}");
        assert!(update.problems.is_empty(), "{kind}: {:?}", update.problems);
    }

    // Another node's changes are filtered out by the server: no update at all.
    server.apply_value(node("node-b", "10.244.2.0/24"));
    let quiet = tokio::time::timeout(DEBOUNCE * 10, source.changed()).await;
    assert!(quiet.is_err(), "update for another node: {quiet:?}");
}

#[tokio::test]
async fn dropped_watches_resume_and_see_changes_made_meanwhile() {
    let server = FakeApiServer::start().await;
    server.apply_value(service("keep", "10.96.0.1"));
    server.apply_value(service("change", "10.96.0.2"));
    server.apply_value(pod("gone", "10.244.1.1"));
    let mut source = start(&server).await;
    next(&mut source).await;
    within("the watches", server.wait_watching()).await;

    // Changes the open watches never deliver; then the connections are cut.
    server.pause_watches();
    server.apply_value(service("change", "10.96.0.22"));
    server.apply_value(service("new", "10.96.0.3"));
    assert!(server.delete::<core::Pod>(Some("demo"), "gone"));
    server.apply_value(node(NODE, "10.244.1.0/24"));
    server.drop_watches();
    server.resume_watches();

    let (update, _) = until(&mut source, "the changes made while cut off", |u| {
        let s = &u.state;
        cluster_ip(s, "change").as_deref() == Some("10.96.0.22")
            && cluster_ip(s, "new").is_some()
            && s.pods.is_empty()
            && s.nodes.contains_key(NODE)
    })
    .await;
    assert_eq!(
        cluster_ip(&update.state, "keep").as_deref(),
        Some("10.96.0.1")
    );
    // Resumed from the last resourceVersion seen, not relisted.
    assert_eq!(update.watch_restarts, 0);
    for resource in Resource::ALL {
        let reqs = server.requests_for(resource);
        let lists = reqs.iter().filter(|r| !r.is_watch()).count();
        assert_eq!(lists, 1, "{resource:?} relisted: {reqs:?}");
    }
    let service_watches = server.requests_for(Resource::Services);
    assert!(
        service_watches.iter().filter(|r| r.is_watch()).count() >= 2,
        "{service_watches:?}"
    );
}

#[tokio::test]
async fn relist_after_410_gone_converges() {
    let server = FakeApiServer::start().await;
    server.apply_value(namespace("demo", "a"));
    server.apply_value(service("deleted", "10.96.0.1"));
    server.apply_value(service("modified", "10.96.0.2"));
    server.apply_value(service("turns-invalid", "10.96.0.3"));
    server.apply_value(service("untouched", "10.96.0.4"));
    server.apply_value(pod("deleted", "10.244.1.1"));
    server.apply_value(pod("kept", "10.244.1.2"));
    let mut source = start(&server).await;
    let before = next(&mut source).await;
    assert_eq!(before.state.services.len(), 4);
    within("the watches", server.wait_watching()).await;

    // Partitioned while things change; by the time the watches reconnect, the history is
    // compacted: 410 Gone, relist.
    server.pause_watches();
    assert!(server.delete::<core::Service>(Some("demo"), "deleted"));
    assert!(server.delete::<core::Pod>(Some("demo"), "deleted"));
    server.apply_value(service("modified", "10.96.0.22"));
    server.apply_value(service("turns-invalid", "10.96.0.300"));
    server.apply_value(service("added", "10.96.0.5"));
    server.expire_history();

    let (after, _) = until(&mut source, "every kind relisted", |u| {
        u.watch_restarts == Resource::ALL.len() as u64
    })
    .await;
    let s = &after.state;
    assert_eq!(cluster_ip(s, "deleted"), None);
    assert_eq!(pod_ip(s, "deleted"), None);
    assert_eq!(cluster_ip(s, "modified").as_deref(), Some("10.96.0.22"));
    assert_eq!(cluster_ip(s, "added").as_deref(), Some("10.96.0.5"));
    // Listed but invalid: still exists, so its last good version stays.
    assert_eq!(cluster_ip(s, "turns-invalid").as_deref(), Some("10.96.0.3"));
    assert_eq!(cluster_ip(s, "untouched").as_deref(), Some("10.96.0.4"));
    assert_eq!(pod_ip(s, "kept").as_deref(), Some("10.244.1.2"));
    assert_eq!(s.namespaces, before.state.namespaces);
    assert!(
        after.watch_errors >= Resource::ALL.len() as u64,
        "{after:?}"
    );
    for resource in Resource::ALL {
        let lists = server
            .requests_for(resource)
            .iter()
            .filter(|r| !r.is_watch())
            .count();
        assert_eq!(lists, 2, "{resource:?}");
    }

    // And the relisted watches carry on.
    server.apply_value(service("after-relist", "10.96.0.6"));
    let (update, _) = until(&mut source, "a change after the relist", |u| {
        cluster_ip(&u.state, "after-relist").is_some()
    })
    .await;
    assert_eq!(update.watch_restarts, Resource::ALL.len() as u64);
}

#[tokio::test]
async fn invalid_objects_are_reported_and_keep_their_last_good_version() {
    let server = FakeApiServer::start().await;
    server.apply_value(service("web", "10.96.0.10"));
    let mut source = start(&server).await;
    assert_eq!(
        cluster_ip(&next(&mut source).await.state, "web").as_deref(),
        Some("10.96.0.10")
    );

    let mut bad_port = service("web", "10.96.0.10");
    bad_port["spec"]["ports"][0]["port"] = json!(70000);
    let mut bad_protocol = service("web", "10.96.0.10");
    bad_protocol["spec"]["ports"][0]["protocol"] = json!("FOO");
    // Not even the schema's types: the object still gets named.
    let mut bad_schema = service("web", "10.96.0.10");
    bad_schema["spec"]["ports"][0]["port"] = json!("eighty");
    let cases = [
        (service("web", "10.96.0.300"), "spec.clusterIP"),
        (bad_port, "spec.ports[0].port: port 70000 is out of range"),
        (
            bad_protocol,
            "spec.ports[0].protocol: unknown protocol \"FOO\"",
        ),
        (bad_schema, "not a valid Service"),
    ];
    for (obj, expect) in cases {
        server.apply_value(obj);
        let update = next(&mut source).await;
        assert_eq!(update.problems.len(), 1, "{:?}", update.problems);
        let problem = &update.problems[0];
        assert!(problem.starts_with("Service demo/web: "), "{problem}");
        assert!(problem.contains(expect), "{problem}");
        assert!(
            problem.ends_with("keeping its last good version"),
            "{problem}"
        );
        assert_eq!(
            cluster_ip(&update.state, "web").as_deref(),
            Some("10.96.0.10")
        );
    }

    // Never valid: absent. Other kinds too.
    server.apply_value(service("never", "not-an-ip"));
    let update = next(&mut source).await;
    assert_eq!(cluster_ip(&update.state, "never"), None);
    assert!(
        update.problems[0].starts_with("Service demo/never: spec.clusterIP")
            && update.problems[0].ends_with("; ignored"),
        "{:?}",
        update.problems
    );
    server.apply_value(slice("web-1", "web", "10.244.1.300"));
    let update = next(&mut source).await;
    assert!(update.state.endpoint_slices.is_empty());
    assert!(
        update.problems[0].starts_with("EndpointSlice demo/web-1: endpoints[0].addresses[0]"),
        "{:?}",
        update.problems
    );

    // NetworkPolicies are validated the same way.
    server.apply_value(policy("np", "web"));
    let update = next(&mut source).await;
    assert!(update
        .state
        .network_policies
        .contains_key(&nn("demo", "np")));
    let mut bad_policy = policy("np", "db");
    bad_policy["spec"]["ingress"] = json!([{"from": [{"ipBlock": {"cidr": "10.0.0.0/16",
                                                                   "except": ["10.1.0.0/24"]}}]}]);
    server.apply_value(bad_policy);
    let update = next(&mut source).await;
    assert!(
        update.problems[0].starts_with(
            "NetworkPolicy demo/np: spec.ingress[0].from[0].ipBlock.except[0]: \"10.1.0.0/24\" \
             must be a strict subset of cidr 10.0.0.0/16"
        ) && update.problems[0].ends_with("keeping its last good version"),
        "{:?}",
        update.problems
    );
    let kept = &update.state.network_policies[&nn("demo", "np")];
    let selector = kept.spec.as_ref().unwrap().pod_selector.as_ref().unwrap();
    assert_eq!(selector.match_labels.as_ref().unwrap()["app"], "web");

    // Fixed: the new version replaces the last good one.
    server.apply_value(service("web", "10.96.0.11"));
    let update = next(&mut source).await;
    assert_eq!(
        cluster_ip(&update.state, "web").as_deref(),
        Some("10.96.0.11")
    );
    assert!(update.problems.is_empty(), "{:?}", update.problems);
}

#[tokio::test]
async fn services_for_other_proxies_are_not_watched() {
    let server = FakeApiServer::start().await;
    let other = json!({"service.kubernetes.io/service-proxy-name": "other"});
    server.apply_value(with_labels(service("theirs", "10.96.0.1"), other.clone()));
    server.apply_value(service("ours", "10.96.0.2"));
    let mut source = start(&server).await;
    let update = next(&mut source).await;
    assert_eq!(
        update.state.services.keys().collect::<Vec<_>>(),
        vec![&nn("demo", "ours")]
    );

    // Handed to another proxy: the server's watch reports it gone; and back again.
    server.apply_value(with_labels(service("ours", "10.96.0.2"), other));
    let update = next(&mut source).await;
    assert!(
        update.state.services.is_empty(),
        "{:?}",
        update.state.services
    );
    server.apply_value(service("ours", "10.96.0.2"));
    let update = next(&mut source).await;
    assert_eq!(
        cluster_ip(&update.state, "ours").as_deref(),
        Some("10.96.0.2")
    );
    assert_eq!(cluster_ip(&update.state, "theirs"), None);
}

#[tokio::test]
async fn bursts_are_coalesced() {
    let server = FakeApiServer::start().await;
    let mut source = KubeSource::with_client(server.client(), NODE, Duration::from_millis(100));
    next(&mut source).await;

    for i in 0..50 {
        server.apply_value(service(&format!("s{}", i % 10), &format!("10.96.0.{i}")));
    }
    let (update, updates) = until(&mut source, "the burst's final state", |u| {
        (40..50)
            .all(|i| cluster_ip(&u.state, &format!("s{}", i % 10)) == Some(format!("10.96.0.{i}")))
    })
    .await;
    assert!(updates < 10, "{updates} updates for one burst");
    assert_eq!(update.state.services.len(), 10);
}

#[tokio::test]
async fn continuous_churn_still_produces_updates() {
    let server = FakeApiServer::start().await;
    let debounce = Duration::from_millis(100);
    let mut source = KubeSource::with_client(server.client(), NODE, debounce);
    next(&mut source).await;
    let churn = async {
        for i in 0u32.. {
            server.apply_value(service("busy", &format!("10.96.{}.{}", i / 250, i % 250)));
            tokio::time::sleep(debounce / 4).await;
        }
    };
    // Changes never pause for a whole debounce, yet updates come (at most 10 debounces late).
    tokio::select! {
        () = churn => unreachable!(),
        update = tokio::time::timeout(debounce * 15, source.changed()) => {
            let update = update.expect("no update under continuous churn").unwrap();
            assert!(cluster_ip(&update.state, "busy").is_some());
        }
    }
}

#[tokio::test]
async fn changed_is_cancel_safe() {
    let server = FakeApiServer::start().await;
    let debounce = Duration::from_millis(100);
    let mut source = KubeSource::with_client(server.client(), NODE, debounce);
    next(&mut source).await;

    // As in the agent's loop: `changed` raced against a faster timer, so mostly cancelled.
    server.apply_value(service("web", "10.96.0.10"));
    let started = tokio::time::Instant::now();
    let update = within("an update despite cancellations", async {
        loop {
            tokio::select! {
                update = source.changed() => break update.unwrap(),
                () = tokio::time::sleep(debounce / 5) => {}
            }
        }
    })
    .await;
    assert_eq!(
        cluster_ip(&update.state, "web").as_deref(),
        Some("10.96.0.10")
    );
    // The quiet period counts from the change, not from each (cancelled) call.
    assert!(started.elapsed() < debounce * 4, "{:?}", started.elapsed());
}

/// The documents of every manifest file in `dir`, as JSON.
fn manifest_objects(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !value.is_null() {
                objects.push(value);
            }
        }
    }
    objects
}

#[tokio::test]
async fn translation_matches_the_manifests_source() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    // The examples' node (as in the demo's node config).
    let config = NodeConfig::from_yaml_str(
        "nodeName: demo-node\n\
         nodeIPs: [192.0.2.1, \"2001:db8::1\"]\n\
         clusterCIDRs: [10.244.0.0/16, \"fd00:244::/32\"]\n\
         serviceCIDRs: [10.96.0.0/16, \"fd00:96::/108\"]\n",
        "test",
    )
    .unwrap();
    let from_dir = manifests::load_strict(&examples).unwrap();

    let server = FakeApiServer::start().await;
    let objects = manifest_objects(&examples);
    assert!(objects.len() >= 6, "{objects:?}");
    for obj in objects {
        server.apply_value(obj);
    }
    let mut source = start(&server).await;
    let update = next(&mut source).await;
    assert!(update.problems.is_empty(), "{:?}", update.problems);

    assert_eq!(update.state.services, from_dir.services);
    assert_eq!(update.state.endpoint_slices, from_dir.endpoint_slices);
    let desired = translate(&update.state, &config);
    assert!(!desired.frontends.is_empty());
    assert_eq!(desired, translate(&from_dir, &config));
}

#[tokio::test]
async fn connect_reads_a_kubeconfig() {
    let server = FakeApiServer::start().await;
    server.apply_value(service("web", "10.96.0.10"));
    let dir = std::env::temp_dir().join(format!("skiff-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: '{}'}}}}]\n\
             users: [{{name: nobody, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: nobody}}}}]\n",
            server.url()
        ),
    )
    .unwrap();
    let opts = |node_name: &str| KubeOptions {
        kubeconfig: Some(kubeconfig.clone()),
        node_name: node_name.into(),
        debounce: DEBOUNCE,
    };

    let mut source = KubeSource::connect(opts(NODE)).await.unwrap();
    let update = next(&mut source).await;
    assert_eq!(
        cluster_ip(&update.state, "web").as_deref(),
        Some("10.96.0.10")
    );

    assert!(KubeSource::connect(opts("")).await.is_err());
    let missing = KubeOptions {
        kubeconfig: Some(dir.join("missing")),
        ..opts(NODE)
    };
    let err = KubeSource::connect(missing).await.err().unwrap();
    assert!(err.to_string().contains("missing"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

//! An in-process fake Kubernetes API server (plain HTTP/1.1 on 127.0.0.1) for the kube
//! source's tests. It serves what a list-then-watch client needs, the way the real one does:
//!
//! - LIST `GET /api/v1/services` etc.: a `<Kind>List` with `metadata.resourceVersion`;
//! - WATCH (`?watch=true&resourceVersion=N`): chunked JSON lines of the changes after N,
//!   BOOKMARKs when asked for (`allowWatchBookmarks=true`), and an ERROR event with a 410
//!   `Status` when N is older than the retained history;
//! - label selectors (`key`, `!key`, `key=value`, `key!=value`) and field selectors on
//!   `metadata.name` / `metadata.namespace`, on lists and watches alike; an object that
//!   stops (starts) matching a watch's selector is sent as DELETED (ADDED);
//! - one resourceVersion counter across all kinds, as etcd has.
//!
//! Test controls: [`FakeApiServer::apply`], [`FakeApiServer::delete`],
//! [`FakeApiServer::pause_watches`] (hold events back, as a partition would),
//! [`FakeApiServer::drop_watches`] (cut every watch connection mid-stream),
//! [`FakeApiServer::expire_history`] (compaction: the next watch from an old version gets
//! 410 Gone) and [`FakeApiServer::requests`].

#![allow(dead_code)] // Each test binary uses a different part of it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How often an idle watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_millis(200);

type Body = BoxBody<Bytes, io::Error>;

/// The collections the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Services,
    EndpointSlices,
    NetworkPolicies,
    Pods,
    Namespaces,
    Nodes,
}

impl Resource {
    pub const ALL: [Resource; 6] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::NetworkPolicies,
        Resource::Pods,
        Resource::Namespaces,
        Resource::Nodes,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Resource::Services => "/api/v1/services",
            Resource::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices",
            Resource::NetworkPolicies => "/apis/networking.k8s.io/v1/networkpolicies",
            Resource::Pods => "/api/v1/pods",
            Resource::Namespaces => "/api/v1/namespaces",
            Resource::Nodes => "/api/v1/nodes",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::NetworkPolicies => "NetworkPolicy",
            Resource::Pods => "Pod",
            Resource::Namespaces => "Namespace",
            Resource::Nodes => "Node",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            Resource::NetworkPolicies => "networking.k8s.io/v1",
            _ => "v1",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(self, Resource::Namespaces | Resource::Nodes)
    }

    pub fn from_kind(kind: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.kind() == kind)
    }
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct RequestLog {
    pub path: String,
    /// Decoded query parameters.
    pub params: BTreeMap<String, String>,
}

impl RequestLog {
    pub fn is_watch(&self) -> bool {
        self.params.get("watch").map(String::as_str) == Some("true")
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One write, as the watch history keeps it.
struct Change {
    rv: u64,
    resource: Resource,
    type_: ChangeType,
    object: Value,
    /// The version before a modification: tells whether the object entered or left a
    /// watch's selector.
    previous: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    resource: Resource,
    namespace: String,
    name: String,
}

#[derive(Default)]
struct State {
    /// The last resourceVersion handed out.
    rv: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: Vec<Change>,
    /// A watch from a resourceVersion below this gets 410 Gone.
    oldest_watchable_rv: u64,
    paused: bool,
    /// Bumped to cut every open watch.
    drop_generation: u64,
    /// Watch responses being streamed, by collection.
    open_watches: BTreeMap<Resource, usize>,
    requests: Vec<RequestLog>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped whenever open watches should look at the state again.
    tick: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn poke(&self) {
        self.tick.send_modify(|n| *n += 1);
    }
}

pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Owns the connection tasks: aborting it closes every connection.
    accept: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeApiServer {
    pub async fn start() -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                oldest_watchable_rv: 1,
                ..State::default()
            }),
            tick: watch::channel(0).0,
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        FakeApiServer {
            addr,
            shared,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client talking to this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Create or replace a typed object.
    pub fn apply<K: k8s_openapi::Resource + Serialize>(&self, obj: &K) -> u64 {
        let mut value = serde_json::to_value(obj).unwrap();
        value["apiVersion"] = json!(K::API_VERSION);
        value["kind"] = json!(K::KIND);
        self.apply_value(value)
    }

    /// Create or replace an object given as JSON (its `kind` says which collection; it may
    /// be anything, schema-valid or not). Returns its new resourceVersion.
    pub fn apply_value(&self, mut obj: Value) -> u64 {
        let kind = obj["kind"]
            .as_str()
            .expect("object without kind")
            .to_string();
        let resource = Resource::from_kind(&kind).unwrap_or_else(|| panic!("kind {kind}"));
        if resource.namespaced() && obj["metadata"]["namespace"].as_str().is_none() {
            obj["metadata"]["namespace"] = json!("default");
        }
        let key = object_key(resource, &obj);
        let rv = {
            let mut st = self.shared.lock();
            st.rv += 1;
            let rv = st.rv;
            let previous = st.objects.get(&key).cloned();
            let uid = previous
                .as_ref()
                .map(|p| p["metadata"]["uid"].clone())
                .unwrap_or_else(|| json!(format!("uid-{rv}")));
            obj["metadata"]["uid"] = uid;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            st.objects.insert(key, obj.clone());
            st.history.push(Change {
                rv,
                resource,
                type_: if previous.is_some() {
                    ChangeType::Modified
                } else {
                    ChangeType::Added
                },
                object: obj,
                previous,
            });
            rv
        };
        self.shared.poke();
        rv
    }

    /// Delete an object; `namespace` is `None` for cluster-scoped kinds. Returns whether it
    /// existed.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: Option<&str>, name: &str) -> bool {
        let resource = Resource::from_kind(K::KIND).unwrap();
        let key = ObjectKey {
            resource,
            namespace: namespace.unwrap_or_default().to_string(),
            name: name.to_string(),
        };
        let existed = {
            let mut st = self.shared.lock();
            match st.objects.remove(&key) {
                None => false,
                Some(mut obj) => {
                    st.rv += 1;
                    let rv = st.rv;
                    // Like the real server, the deleted object carries the deletion's version.
                    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                    st.history.push(Change {
                        rv,
                        resource,
                        type_: ChangeType::Deleted,
                        object: obj,
                        previous: None,
                    });
                    true
                }
            }
        };
        self.shared.poke();
        existed
    }

    /// Hold back every watch event and bookmark (open and new watches), as a partition would.
    pub fn pause_watches(&self) {
        self.shared.lock().paused = true;
        self.shared.poke();
    }

    pub fn resume_watches(&self) {
        self.shared.lock().paused = false;
        self.shared.poke();
    }

    /// Cut every open watch connection mid-stream (no terminating chunk).
    pub fn drop_watches(&self) {
        self.shared.lock().drop_generation += 1;
        self.shared.poke();
    }

    /// Compact the history: forget every change so far, cut the open watches and resume
    /// delivery. A client resuming from any version it has seen gets 410 Gone and must
    /// relist.
    pub fn expire_history(&self) {
        {
            let mut st = self.shared.lock();
            // An unrelated write moves the version on (as in a real cluster), so that the
            // relist's version is watchable while every version seen so far is not.
            st.rv += 1;
            st.oldest_watchable_rv = st.rv;
            st.history.clear();
            st.drop_generation += 1;
            st.paused = false;
        }
        self.shared.poke();
    }

    /// Wait until every collection has a watch open (all initial lists done and watching).
    pub async fn wait_watching(&self) {
        let mut tick = self.shared.tick.subscribe();
        loop {
            {
                let st = self.shared.lock();
                if Resource::ALL
                    .iter()
                    .all(|r| st.open_watches.get(r).is_some_and(|n| *n > 0))
                {
                    return;
                }
            }
            tick.changed().await.unwrap();
        }
    }

    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared.lock().requests.clone()
    }

    /// The requests for one collection.
    pub fn requests_for(&self, resource: Resource) -> Vec<RequestLog> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == resource.path())
            .collect()
    }
}

fn object_key(resource: Resource, obj: &Value) -> ObjectKey {
    let meta = &obj["metadata"];
    ObjectKey {
        resource,
        namespace: meta["namespace"].as_str().unwrap_or_default().to_string(),
        name: meta["name"]
            .as_str()
            .expect("object without metadata.name")
            .to_string(),
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req)) }
            });
            // Errors here are clients going away or watches being cut on purpose.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let params: BTreeMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let log = RequestLog { path, params };
    shared.lock().requests.push(log.clone());

    let Some(resource) = Resource::ALL.into_iter().find(|r| r.path() == log.path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no {}", log.path),
        );
    };
    if req.method() != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "read-only",
        );
    }
    let selector = match Selector::parse(
        log.param("labelSelector").unwrap_or_default(),
        log.param("fieldSelector").unwrap_or_default(),
    ) {
        Ok(selector) => selector,
        Err(msg) => return status(StatusCode::BAD_REQUEST, "BadRequest", &msg),
    };
    if log.is_watch() {
        watch_response(shared, resource, selector, &log)
    } else {
        list_response(shared, resource, &selector)
    }
}

fn list_response(shared: &Shared, resource: Resource, selector: &Selector) -> Response<Body> {
    let st = shared.lock();
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|(key, obj)| key.resource == resource && selector.matches(obj))
        .map(|(_, obj)| {
            // The real server leaves the type out of list items (watch events have it).
            let mut item = obj.clone();
            if let Some(fields) = item.as_object_mut() {
                fields.remove("apiVersion");
                fields.remove("kind");
            }
            item
        })
        .collect();
    // `limit` is ignored: everything fits one page, so there is no `continue`.
    let list = json!({
        "kind": format!("{}List", resource.kind()),
        "apiVersion": resource.api_version(),
        "metadata": {"resourceVersion": st.rv.to_string()},
        "items": items,
    });
    json_response(StatusCode::OK, &list)
}

fn watch_response(
    shared: &Arc<Shared>,
    resource: Resource,
    selector: Selector,
    log: &RequestLog,
) -> Response<Body> {
    let from = match log.param("resourceVersion") {
        // Unset or "0": the current state as ADDED events, then what follows.
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => return status(StatusCode::BAD_REQUEST, "BadRequest", "resourceVersion"),
        },
    };
    let bookmarks = log.param("allowWatchBookmarks") == Some("true");
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(64);
    tokio::spawn(stream_watch(
        shared.clone(),
        WatchSpec {
            resource,
            selector,
            from,
            bookmarks,
        },
        tx,
    ));
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap()
}

struct WatchSpec {
    resource: Resource,
    selector: Selector,
    from: Option<u64>,
    bookmarks: bool,
}

/// Feed one watch response until the client leaves or the watch is cut.
async fn stream_watch(
    shared: Arc<Shared>,
    spec: WatchSpec,
    tx: mpsc::Sender<Result<Frame<Bytes>, io::Error>>,
) {
    let send = |line: Value| {
        let mut text = line.to_string();
        text.push('\n');
        tx.send(Ok(Frame::data(Bytes::from(text))))
    };
    let mut tick = shared.tick.subscribe();
    let _open = OpenWatch::new(&shared, spec.resource);
    let (generation, mut cursor, initial, expired) = {
        let st = shared.lock();
        let initial: Vec<Value> = match spec.from {
            Some(_) => Vec::new(),
            None => st
                .objects
                .iter()
                .filter(|(key, obj)| key.resource == spec.resource && spec.selector.matches(obj))
                .map(|(_, obj)| event("ADDED", obj.clone()))
                .collect(),
        };
        let cursor = spec.from.unwrap_or(st.rv);
        let expired = cursor < st.oldest_watchable_rv;
        (st.drop_generation, cursor, initial, expired)
    };
    if expired {
        // What the real server answers (HTTP 200, then an ERROR event) when the requested
        // version was compacted away.
        let gone = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: {cursor}"),
            "reason": "Expired", "code": 410,
        });
        let _ = send(event("ERROR", gone)).await;
        return;
    }
    for line in initial {
        if send(line).await.is_err() {
            return;
        }
    }
    let mut next_bookmark = Instant::now() + BOOKMARK_INTERVAL;
    loop {
        let due = due_lines(
            &shared.lock(),
            &spec,
            generation,
            &mut cursor,
            &mut next_bookmark,
        );
        let Some(lines) = due else {
            // An error frame makes hyper abort the connection mid-body.
            let _ = tx
                .send(Err(io::Error::other("watch cut by the test")))
                .await;
            return;
        };
        for line in lines {
            if send(line).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = tick.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(next_bookmark) => {}
            () = tx.closed() => return,
        }
    }
}

/// Counts a watch as open while it lives.
struct OpenWatch<'a> {
    shared: &'a Shared,
    resource: Resource,
}

impl<'a> OpenWatch<'a> {
    fn new(shared: &'a Shared, resource: Resource) -> OpenWatch<'a> {
        *shared.lock().open_watches.entry(resource).or_default() += 1;
        shared.poke();
        OpenWatch { shared, resource }
    }
}

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.shared.lock().open_watches.get_mut(&self.resource) {
            *n -= 1;
        }
        self.shared.poke();
    }
}

/// What an open watch should send now, moving its cursor (and bookmark time) on; `None`
/// once the watch was cut.
fn due_lines(
    st: &State,
    spec: &WatchSpec,
    generation: u64,
    cursor: &mut u64,
    next_bookmark: &mut Instant,
) -> Option<Vec<Value>> {
    if st.drop_generation != generation {
        return None;
    }
    let mut lines = Vec::new();
    if st.paused {
        return Some(lines);
    }
    let start = st.history.partition_point(|c| c.rv <= *cursor);
    for change in &st.history[start..] {
        if change.resource == spec.resource {
            lines.extend(spec.selector.watch_event(change));
        }
    }
    *cursor = st.rv;
    if spec.bookmarks && Instant::now() >= *next_bookmark {
        lines.push(bookmark(spec.resource, st.rv));
        *next_bookmark = Instant::now() + BOOKMARK_INTERVAL;
    }
    Some(lines)
}

fn event(type_: &str, object: Value) -> Value {
    json!({"type": type_, "object": object})
}

fn bookmark(resource: Resource, rv: u64) -> Value {
    event(
        "BOOKMARK",
        json!({
            "kind": resource.kind(),
            "apiVersion": resource.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
        }),
    )
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

/// A label and field selector, as far as these tests need them.
#[derive(Debug, Default)]
struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

#[derive(Debug)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
}

impl Requirement {
    fn parse(term: &str) -> Result<Requirement, String> {
        let term = term.trim();
        if term.contains('(') || term.contains(' ') {
            return Err(format!("unsupported selector term {term:?}"));
        }
        let req = if let Some(key) = term.strip_prefix('!') {
            Requirement::NotExists(key.into())
        } else if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotEquals(k.into(), v.into())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement::Equals(k.into(), v.into())
        } else {
            Requirement::Exists(term.into())
        };
        Ok(req)
    }

    /// `lookup` gives the value of a key, if present.
    fn matches<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Requirement::Exists(k) => lookup(k).is_some(),
            Requirement::NotExists(k) => lookup(k).is_none(),
            Requirement::Equals(k, v) => lookup(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => lookup(k) != Some(v.as_str()),
        }
    }
}

impl Selector {
    fn parse(labels: &str, fields: &str) -> Result<Selector, String> {
        let terms = |s: &str| -> Result<Vec<Requirement>, String> {
            s.split(',')
                .filter(|t| !t.trim().is_empty())
                .map(Requirement::parse)
                .collect()
        };
        let selector = Selector {
            labels: terms(labels)?,
            fields: terms(fields)?,
        };
        for field in &selector.fields {
            match field {
                Requirement::Equals(k, _) | Requirement::NotEquals(k, _)
                    if k == "metadata.name" || k == "metadata.namespace" => {}
                other => return Err(format!("field selector {other:?} is not supported")),
            }
        }
        Ok(selector)
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        let label = |k: &str| meta["labels"][k].as_str();
        let field = |k: &str| match k {
            "metadata.name" => meta["name"].as_str(),
            "metadata.namespace" => meta["namespace"].as_str(),
            _ => None,
        };
        self.labels.iter().all(|r| r.matches(label)) && self.fields.iter().all(|r| r.matches(field))
    }

    /// How `change` looks through this selector, if at all.
    fn watch_event(&self, change: &Change) -> Option<Value> {
        let now = self.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
        let type_ = match (change.type_, before, now) {
            (ChangeType::Added, _, true) => "ADDED",
            (ChangeType::Deleted, _, true) => "DELETED",
            (ChangeType::Modified, true, true) => "MODIFIED",
            (ChangeType::Modified, false, true) => "ADDED",
            (ChangeType::Modified, true, false) => "DELETED",
            _ => return None,
        };
        Some(event(type_, change.object.clone()))
    }
}

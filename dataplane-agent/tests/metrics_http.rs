//! The metrics endpoint over real TCP on 127.0.0.1: routes, status codes, content type, the
//! metrics text, and the request bounds.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane_common::Reason;
use skiff::http::{self, Limits};
use skiff::metrics::{Metrics, CONTENT_TYPE};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send `request` as is and read the reply until the server closes the connection.
fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").as_bytes(),
    )
}

async fn start(metrics: Arc<Metrics>, limits: Limits) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        http::serve_with(listener, metrics, limits)
            .await
            .expect("metrics endpoint stopped")
    });
    addr
}

/// Run blocking client code off the runtime's worker threads.
async fn client<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_with_their_values() {
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http::serve(listener, Arc::clone(&metrics)));

    metrics.observe_sync(Duration::from_millis(2), 5);
    metrics.sync_failed();
    metrics.set_map_usage("SK_SVC_V1", 3, 65_536);
    metrics.set_conntrack_entries(17);
    metrics.watch_restarts(4);
    let mut packets = BTreeMap::new();
    packets.insert(Reason::NatNew, 11u64);
    packets.insert(Reason::DropMalformed, 1);
    metrics.set_packets(&packets);

    let r = client(move || get(addr, "/metrics")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some(CONTENT_TYPE));
    assert_eq!(
        r.header("content-length")
            .map(|l| l.parse::<usize>().unwrap()),
        Some(r.body.len())
    );
    for line in [
        "skiff_syncs_total 1\n",
        "skiff_sync_failures_total 1\n",
        "skiff_sync_changes_total 5\n",
        "skiff_sync_duration_seconds_count 1\n",
        "skiff_map_entries{map=\"SK_SVC_V1\"} 3\n",
        "skiff_map_capacity{map=\"SK_SVC_V1\"} 65536\n",
        "skiff_conntrack_entries 17\n",
        "skiff_watch_restarts_total 4\n",
        "skiff_packets_total{reason=\"nat_new_connection\",verdict=\"translate\"} 11\n",
        "skiff_packets_total{reason=\"malformed\",verdict=\"drop\"} 1\n",
    ] {
        assert!(r.body.contains(line), "missing {line:?} in\n{}", r.body);
    }
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);

    // A scrape reflects the values of the moment, not those of the first scrape.
    packets.insert(Reason::NatNew, 20);
    metrics.set_packets(&packets);
    let r = client(move || get(addr, "/metrics?format=text")).await;
    assert!(
        r.body.contains(
            "skiff_packets_total{reason=\"nat_new_connection\",verdict=\"translate\"} 20\n"
        ),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_errors() {
    let metrics = Arc::new(Metrics::new());
    let addr = start(Arc::clone(&metrics), Limits::default()).await;

    let r = client(move || get(addr, "/healthz")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));

    let r = client(move || get(addr, "/readyz")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    metrics.set_ready();
    let r = client(move || get(addr, "/readyz")).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let r = client(move || get(addr, "/")).await;
    assert_eq!(r.status, 404);
    let r = client(move || get(addr, "/metricsx")).await;
    assert_eq!(r.status, 404);

    let r = client(move || {
        exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
        )
    })
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = client(move || exchange(addr, b"DELETE /readyz HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    assert_eq!(r.status, 405);

    let r = client(move || exchange(addr, b"this is not http\r\n\r\n")).await;
    assert_eq!(r.status, 400);

    // One request per connection: the server closes after answering.
    let r = client(move || get(addr, "/healthz")).await;
    assert_eq!(r.header("connection"), Some("close"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused() {
    let limits = Limits {
        max_request_bytes: 1024,
        ..Limits::default()
    };
    let addr = start(Arc::new(Metrics::new()), limits).await;
    let r = client(move || {
        let mut req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..100 {
            req.extend_from_slice(format!("X-Padding-{i}: {}\r\n", "a".repeat(40)).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        exchange(addr, &req)
    })
    .await;
    assert_eq!(r.status, 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_and_does_not_block_others() {
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        max_connections: 4,
        ..Limits::default()
    };
    let addr = start(Arc::new(Metrics::new()), limits).await;
    let started = Instant::now();
    let (silent, healthy) = client(move || {
        // Connects, sends half a request line and then nothing.
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.write_all(b"GET /hea").unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let healthy = get(addr, "/healthz");
        let mut rest = Vec::new();
        // The server gives up on the silent client: the read ends (EOF or reset), well
        // before our own 10 s read timeout.
        let _ = idle.read_to_end(&mut rest);
        (started.elapsed(), healthy)
    })
    .await;
    assert_eq!(healthy.status, 200);
    assert!(
        silent < Duration::from_secs(5),
        "silent connection held for {silent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_slot() {
    let limits = Limits {
        header_timeout: Duration::from_millis(500),
        max_connections: 1,
        ..Limits::default()
    };
    let addr = start(Arc::new(Metrics::new()), limits).await;
    let (waited, r) = client(move || {
        // Occupies the only slot until the header timeout frees it.
        let _idle = TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        let r = get(addr, "/healthz");
        (t.elapsed(), r)
    })
    .await;
    assert_eq!(r.status, 200);
    assert!(
        waited >= Duration::from_millis(300),
        "served after {waited:?} although the only slot was taken"
    );
}

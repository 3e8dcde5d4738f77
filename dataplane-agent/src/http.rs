//! The agent's HTTP endpoint: `GET /metrics`, `GET /healthz`, `GET /readyz`.
//!
//! A bare hyper HTTP/1.1 server (hyper is already in the build for the Kubernetes client):
//! three fixed routes for Prometheus and the kubelet's probes need no framework. Request heads
//! are bounded in size and in time, every connection in total time, and connections in number,
//! so a misbehaving client cannot pin memory or tasks.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::metrics::{self, Metrics};

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Bounds on what one client may cost.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request head (request line and headers); larger ones get 431.
    pub max_request_bytes: usize,
    /// Time allowed to receive the request head.
    pub header_timeout: Duration,
    /// Time allowed for a whole connection, response included (a client that never reads
    /// its response is dropped).
    pub connection_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 8 * 1024,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}

/// Serve the endpoint on `listener` until an unrecoverable accept error.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> io::Result<()> {
    serve_with(listener, metrics, Limits::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    limits: Limits,
) -> io::Result<()> {
    let handler: Handler = Arc::new(move |method, path| route(method, path, &metrics));
    serve_handler(listener, handler, limits, "metrics endpoint").await
}

/// Answers one request from its method and path (query string stripped).
pub type Handler = Arc<dyn Fn(&Method, &str) -> Response<Full<Bytes>> + Send + Sync>;

/// Serve `handler` on `listener` within `limits` until an unrecoverable accept error;
/// `what` names the server in logs.
pub async fn serve_handler(
    listener: TcpListener,
    handler: Handler,
    limits: Limits,
    what: &'static str,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_request_bytes)
        // One request per connection: an idle kept-alive connection would hold a slot.
        .keep_alive(false);
    let http = Arc::new(http);
    loop {
        let permit = Arc::clone(&slots)
            .acquire_owned()
            .await
            .map_err(|_| io::Error::other("connection limiter closed"))?;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_transient(&e) => {
                // Out of descriptors, or a connection reset before accept: keep serving, but
                // do not spin while the condition lasts.
                warn!("{what}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let handler = Arc::clone(&handler);
        let http = Arc::clone(&http);
        let timeout = limits.connection_timeout;
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = handler(req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(timeout, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, "{what} connection: {e}"),
                Err(_) => debug!(%peer, "{what} connection timed out"),
            }
            drop(permit);
        });
    }
}

fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response(status, TEXT_PLAIN, format!("{body}\n"))
}

/// The response to `method` on `path` (query string already stripped).
pub fn route(method: &Method, path: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    if method != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    match path {
        "/metrics" => response(StatusCode::OK, metrics::CONTENT_TYPE, metrics.encode()),
        "/healthz" => text(StatusCode::OK, "ok"),
        _ if metrics.is_ready() => text(StatusCode::OK, "ready"),
        _ => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first sync is not in the maps yet",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn body(r: Response<Full<Bytes>>) -> String {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn routes() {
        let m = Metrics::new();
        let r = route(&Method::GET, "/healthz", &m);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "ok\n");
        assert_eq!(
            route(&Method::GET, "/readyz", &m).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        m.set_ready();
        assert_eq!(route(&Method::GET, "/readyz", &m).status(), StatusCode::OK);
        let r = route(&Method::GET, "/metrics", &m);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], metrics::CONTENT_TYPE);
        assert!(body(r).await.contains("skiff_syncs_total 0\n"));
        assert_eq!(
            route(&Method::GET, "/metrics/", &m).status(),
            StatusCode::NOT_FOUND
        );
        let r = route(&Method::POST, "/metrics", &m);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET");
        assert_eq!(
            route(&Method::HEAD, "/healthz", &m).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}

//! kube-proxy's service health checks: for each LoadBalancer Service with
//! `externalTrafficPolicy: Local`, an HTTP server on its `healthCheckNodePort` that cloud load
//! balancers probe to learn which nodes have endpoints. Any request gets kube-proxy's JSON
//! body, `200` when this node has a ready endpoint of the Service and `503` when it has none.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::desired::HealthCheck;
use crate::http::{self, Handler, Limits};

#[derive(Serialize)]
struct ServiceName<'a> {
    namespace: &'a str,
    name: &'a str,
}

/// kube-proxy's response body.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    service: ServiceName<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

/// The response for one Service's health check (whatever the method and path, as kube-proxy).
pub fn response(hc: &HealthCheck) -> Response<Full<Bytes>> {
    let body = Body {
        service: ServiceName {
            namespace: &hc.namespace,
            name: &hc.name,
        },
        local_endpoints: hc.local_endpoints,
        // The agent only serves health checks after a sync reached the maps.
        service_proxy_healthy: true,
    };
    let json = serde_json::to_string(&body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(json)));
    *r.status_mut() = if hc.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        HeaderName::from_static("x-load-balancing-endpoint-weight"),
        HeaderValue::from(hc.local_endpoints),
    );
    r
}

struct Listener {
    state: Arc<RwLock<HealthCheck>>,
    task: JoinHandle<()>,
}

/// The running health check servers, one per port, kept in line with the desired state.
#[derive(Default)]
pub struct HealthChecks {
    listeners: BTreeMap<u16, Listener>,
}

impl HealthChecks {
    /// Start servers for new ports, stop those of ports gone, update the counts of the
    /// others. Must run inside the tokio runtime. A port that cannot be bound is logged and
    /// retried on the next sync.
    pub fn sync(&mut self, wanted: &BTreeMap<u16, HealthCheck>) {
        let gone: Vec<u16> = self
            .listeners
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            if let Some(l) = self.listeners.remove(&port) {
                l.task.abort();
                info!(port, "health check server stopped");
            }
        }
        for (&port, hc) in wanted {
            if let Some(l) = self.listeners.get(&port) {
                if let Ok(mut s) = l.state.write() {
                    *s = hc.clone();
                }
                continue;
            }
            match bind(port) {
                Ok(listener) => {
                    let state = Arc::new(RwLock::new(hc.clone()));
                    let s = Arc::clone(&state);
                    let handler: Handler = Arc::new(move |_method, _path| match s.read() {
                        Ok(hc) => response(&hc),
                        Err(_) => response(&HealthCheck {
                            namespace: String::new(),
                            name: String::new(),
                            local_endpoints: 0,
                        }),
                    });
                    let task = tokio::spawn(async move {
                        let limits = Limits::default();
                        if let Err(e) =
                            http::serve_handler(listener, handler, limits, "health check").await
                        {
                            error!(port, "health check server stopped: {e}");
                        }
                    });
                    info!(port, service = %format!("{}/{}", hc.namespace, hc.name), "health check server started");
                    self.listeners.insert(port, Listener { state, task });
                }
                Err(e) => warn!(port, "binding the health check port: {e}"),
            }
        }
    }

    /// Ports served now.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for l in self.listeners.values() {
            l.task.abort();
        }
    }
}

/// Every address of the node: `[::]` (IPv4 too, unless IPv6 is off), else `0.0.0.0`.
fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).or_else(
        |_| std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
    )?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn hc(n: usize) -> HealthCheck {
        HealthCheck {
            namespace: "ns".into(),
            name: "lb".into(),
            local_endpoints: n,
        }
    }

    async fn body(r: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn kube_proxy_body_200_with_local_endpoints_503_without() {
        let r = response(&hc(2));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert_eq!(r.headers()["x-load-balancing-endpoint-weight"], "2");
        assert_eq!(
            body(r).await,
            serde_json::json!({
                "service": {"namespace": "ns", "name": "lb"},
                "localEndpoints": 2,
                "serviceProxyHealthy": true
            })
        );
        let r = response(&hc(0));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(r).await["localEndpoints"], 0);
    }
}

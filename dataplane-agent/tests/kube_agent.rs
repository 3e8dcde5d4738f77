//! The real agent binary in Kubernetes mode: `skiff run --kubernetes` in a node namespace,
//! watching an in-process fake API server (served from inside that namespace), pods behind
//! veths, real connections. Covers the wiring the source tests cannot: a config without
//! nodeName/nodeIPs, readiness, metrics and the status file, both pod programs attached to
//! every pod veth with pinned links, an endpoint change through the API, and a relist after
//! 410 Gone removing exactly the deleted service from the datapath.
//! Needs root.

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use serde_json::{json, Value};
use skiff_testbed::{
    in_netns, require_root, serial, spawn_in_netns, tcp_round, tcp_server, PrivateBpffs, TestBed,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn service(name: &str, vip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "e2e"},
           "spec": {"clusterIP": vip, "clusterIPs": [vip],
                    "ports": [{"name": "p", "port": 80, "protocol": "TCP", "targetPort": 8080}]}})
}

fn slice(name: &str, service: &str, addrs: &[&str]) -> Value {
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}, "nodeName": "e2e-node"}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "e2e",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}],
           "endpoints": endpoints})
}

/// GET a path from the agent's metrics server, from inside the node namespace.
fn http_get(ns: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let path = path.to_string();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&"127.0.0.1:10249".parse()?, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: skiff\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let code = out.split(' ').nth(1).unwrap_or("0").parse()?;
        Ok((code, out))
    })
}

/// Poll `f` every 200 ms until it is true, for at most `secs`.
fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A scratch directory removed on drop, pass or fail.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn agent_in_kubernetes_mode_follows_the_api_and_converges_after_410() -> anyhow::Result<()> {
    require_root();
    let _serial = serial();
    let mut bed = TestBed::new()?;
    let client = bed.add_pod("client", "skdc", Some("10.244.1.5".parse()?), None)?;
    let mut servers = Vec::new();
    for i in 0..2 {
        let pod = bed.add_pod(
            &format!("be{i}"),
            &format!("skd{i}"),
            Some(format!("10.244.1.{}", 11 + i).parse()?),
            None,
        )?;
        servers.push(tcp_server(pod.ns(), ip("0.0.0.0"), 8080, &pod.name)?);
    }

    // The fake API server runs on a runtime of its own inside the node namespace, where the
    // agent can reach it on loopback.
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_thread = spawn_in_netns(bed.node(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tx.send(FakeApiServer::start().await).unwrap();
            let _ = stop_rx.await;
        });
    })?;
    let server = rx.recv()?;
    server.apply_value(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "e2e-node"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}}),
    );
    server.apply_value(service("web", "10.96.0.10"));
    server.apply_value(slice("web-1", "web", &["10.244.1.11", "10.244.1.12"]));
    server.apply_value(service("gone", "10.96.0.20"));
    server.apply_value(slice("gone-1", "gone", &["10.244.1.11"]));

    // Removed on drop, after the bpffs below (dropped first: declared later).
    let scratch_dir =
        Scratch(std::env::temp_dir().join(format!("skiff-kube-agent-{}", std::process::id())));
    let scratch = scratch_dir.0.clone();
    let bpffs = PrivateBpffs::mount(scratch.join("bpffs"), env!("CARGO_BIN_EXE_skiff"))?;
    let kubeconfig = scratch.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n\
             clusters: [{{name: fake, cluster: {{server: '{}'}}}}]\nusers: [{{name: fake, user: {{}}}}]\n",
            server.url()
        ),
    )?;
    // As in the DaemonSet's ConfigMap: no nodeName, no nodeIPs.
    let config = scratch.join("config.yaml");
    std::fs::write(
        &config,
        "clusterCIDRs: [10.244.0.0/16]\nserviceCIDRs: [10.96.0.0/16]\npodInterfaces: [\"skd*\"]\n",
    )?;
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_skiff"));
    let args: Vec<std::ffi::OsString> = vec![
        "run".into(),
        "--kubernetes".into(),
        "--kubeconfig".into(),
        kubeconfig.into(),
        "--config".into(),
        config.into(),
        "--node-name".into(),
        "e2e-node".into(),
        "--bpffs".into(),
        bpffs.pin_dir().into(),
        "--metrics-address".into(),
        "127.0.0.1:10249".into(),
        "--state-dir".into(),
        scratch.join("state").into(),
    ];
    let _agent = bed.spawn(bed.node(), bin.into_os_string(), &args)?;

    // Ready once synced; both services reach their backends.
    eventually("readyz 200", 20, || {
        http_get(bed.node(), "/readyz").is_ok_and(|(c, _)| c == 200)
    });
    eventually("web answers", 10, || {
        tcp_round(client.ns(), ip("10.96.0.10"), 80, 1, TIMEOUT).is_ok_and(|t| t.ok() == 1)
    });
    let t = tcp_round(client.ns(), ip("10.96.0.10"), 80, 40, TIMEOUT)?;
    assert_eq!((t.failures, t.answers.len()), (0, 2), "{}", t.table());

    // Both pod programs on every pod veth (from-pod at TC ingress, to-pod at TC egress),
    // each a live pinned link, as `skiff status` reads them.
    let report = skiff::status::status_report(&bpffs.pin_dir(), &scratch.join("state"))?;
    let on = |hook| -> std::collections::BTreeSet<String> {
        report
            .links
            .iter()
            .filter(|l| l.hook == Some(hook))
            .filter(|l| l.kernel.as_ref().is_ok_and(|k| k.link_type == "tcx"))
            .map(|l| l.iface.clone())
            .collect()
    };
    let from_pod = on(skiff::status::Hook::TcIngress);
    assert!(from_pod.len() >= 3, "{:?}", report.links);
    assert_eq!(from_pod, on(skiff::status::Hook::TcEgress));
    assert_eq!(
        tcp_round(client.ns(), ip("10.96.0.20"), 80, 5, TIMEOUT)?.failures,
        0
    );

    // An endpoint change through the API reaches the datapath.
    server.apply_value(slice("web-1", "web", &["10.244.1.12"]));
    eventually("be0 leaves web", 10, || {
        tcp_round(client.ns(), ip("10.96.0.10"), 80, 20, TIMEOUT)
            .is_ok_and(|t| t.failures == 0 && !t.answers.contains_key("be0"))
    });

    // `gone` is deleted while the watches are cut and the history compacted: the agent gets
    // 410 Gone, relists, and removes exactly that service; `web` is never disturbed.
    server.pause_watches();
    assert!(server.delete::<k8s_openapi::api::core::v1::Service>(Some("e2e"), "gone"));
    server.expire_history();
    eventually("gone removed after the relist", 20, || {
        tcp_round(
            client.ns(),
            ip("10.96.0.20"),
            80,
            1,
            Duration::from_millis(300),
        )
        .is_ok_and(|t| t.ok() == 0)
    });
    let t = tcp_round(client.ns(), ip("10.96.0.10"), 80, 40, TIMEOUT)?;
    assert_eq!(t.failures, 0, "web disturbed by the relist: {:?}", t.errors);
    let (_, metrics) = http_get(bed.node(), "/metrics")?;
    let restarts = metrics
        .lines()
        .find(|l| l.starts_with("skiff_watch_restarts_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(restarts >= 1.0, "watch restarts not counted:\n{metrics}");
    let services_gauge = format!(
        "skiff_map_entries{{map=\"{}\"}}",
        dataplane_common::maps::SERVICES
    );
    assert!(metrics.contains(&services_gauge), "{metrics}");

    // The status file names the source (`skiff status` reads it).
    let status = std::fs::read_to_string(scratch.join("state/status.json"))?;
    assert!(status.contains("kubernetes"), "{status}");

    drop(_agent);
    drop(bed);
    drop(server);
    let _ = stop_tx.send(());
    let _ = server_thread.join();
    drop(bpffs);
    Ok(())
}

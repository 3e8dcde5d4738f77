//! Just enough of the demo's node configuration and manifests (Services and EndpointSlices)
//! to build matching pods: which addresses exist, which ports they serve, and which backends
//! each service port should reach (kube-proxy's rules: ports matched by name and protocol,
//! ready endpoints only, headless/ExternalName/other proxies' services skipped).

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize as _;
use serde_yaml::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    fn parse(s: Option<&str>) -> Result<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(Proto::Tcp),
            "UDP" => Ok(Proto::Udp),
            "SCTP" => Ok(Proto::Sctp),
            other => bail!("unknown protocol {other:?}"),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        })
    }
}

#[derive(Debug, Clone)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone)]
pub struct SlicePort {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
}

#[derive(Debug, Clone)]
pub struct Slice {
    pub namespace: String,
    pub service: String,
    pub ipv6: bool,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Default)]
pub struct Manifests {
    pub services: Vec<Service>,
    pub slices: Vec<Slice>,
}

impl Manifests {
    /// Ready backends (`address`, `port`) of one service port for one cluster IP's family.
    pub fn backends(
        &self,
        svc: &Service,
        port: &ServicePort,
        ipv6: bool,
    ) -> BTreeSet<(IpAddr, u16)> {
        let mut out = BTreeSet::new();
        for slice in &self.slices {
            if slice.namespace != svc.namespace || slice.service != svc.name || slice.ipv6 != ipv6 {
                continue;
            }
            for sp in &slice.ports {
                if sp.name != port.name || sp.proto != port.proto {
                    continue;
                }
                for ep in slice.endpoints.iter().filter(|e| e.ready) {
                    out.extend(ep.addresses.iter().map(|a| (*a, sp.port)));
                }
            }
        }
        out
    }
}

/// `podInterfaces` of the node configuration (kube-proxy-style camelCase YAML).
pub fn pod_interfaces(config: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let value: Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    match value.get("podInterfaces") {
        None => Ok(vec!["veth*".into(), "cali*".into(), "lxc*".into()]),
        Some(list) => list
            .as_sequence()
            .context("podInterfaces is not a list")?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .context("podInterfaces entry is not a string")
            })
            .collect(),
    }
}

/// Shell-style match with `*` and `?` (what `podInterfaces` patterns use).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    cur.as_str()
}

fn seq(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_sequence).into_iter().flatten()
}

fn port_number(v: Option<&Value>) -> Result<Option<u16>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let n = v.as_u64().context("port is not a number")?;
            Ok(Some(
                u16::try_from(n)
                    .ok()
                    .filter(|p| *p != 0)
                    .context("port out of range")?,
            ))
        }
    }
}

fn ip(v: &Value) -> Result<IpAddr> {
    let s = v.as_str().context("address is not a string")?;
    s.parse().with_context(|| format!("bad address {s:?}"))
}

fn service(doc: &Value) -> Result<Option<Service>> {
    let namespace = str_at(doc, &["metadata", "namespace"]).unwrap_or("default");
    let name = str_at(doc, &["metadata", "name"]).context("Service without metadata.name")?;
    let labels = doc.get("metadata").and_then(|m| m.get("labels"));
    if labels.is_some_and(|l| l.get("service.kubernetes.io/service-proxy-name").is_some())
        || str_at(doc, &["spec", "type"]) == Some("ExternalName")
    {
        return Ok(None);
    }
    let spec = doc.get("spec");
    let mut ips: Vec<&Value> = seq(spec.and_then(|s| s.get("clusterIPs"))).collect();
    if ips.is_empty() {
        ips.extend(spec.and_then(|s| s.get("clusterIP")));
    }
    if ips.iter().any(|v| v.as_str() == Some("None")) {
        return Ok(None); // headless
    }
    let cluster_ips = ips.into_iter().map(ip).collect::<Result<Vec<_>>>()?;
    let mut ports = Vec::new();
    for p in seq(spec.and_then(|s| s.get("ports"))) {
        let Some(port) = port_number(p.get("port"))? else {
            bail!("service port without a number");
        };
        ports.push(ServicePort {
            name: p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            port,
            proto: Proto::parse(p.get("protocol").and_then(Value::as_str))?,
        });
    }
    Ok(Some(Service {
        namespace: namespace.to_string(),
        name: name.to_string(),
        cluster_ips,
        ports,
    }))
}

fn slice(doc: &Value) -> Result<Option<Slice>> {
    let namespace = str_at(doc, &["metadata", "namespace"]).unwrap_or("default");
    let Some(service) = str_at(doc, &["metadata", "labels", "kubernetes.io/service-name"]) else {
        return Ok(None);
    };
    let ipv6 = match doc.get("addressType").and_then(Value::as_str) {
        Some("IPv4") => false,
        Some("IPv6") => true,
        _ => return Ok(None), // FQDN slices are not for proxies
    };
    let mut ports = Vec::new();
    for p in seq(doc.get("ports")) {
        let Some(port) = port_number(p.get("port"))? else {
            continue;
        };
        ports.push(SlicePort {
            name: p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            port,
            proto: Proto::parse(p.get("protocol").and_then(Value::as_str))?,
        });
    }
    let mut endpoints = Vec::new();
    for e in seq(doc.get("endpoints")) {
        let addresses = seq(e.get("addresses"))
            .map(ip)
            .collect::<Result<Vec<_>>>()?;
        let ready = e
            .get("conditions")
            .and_then(|c| c.get("ready"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        endpoints.push(Endpoint { addresses, ready });
    }
    Ok(Some(Slice {
        namespace: namespace.to_string(),
        service: service.to_string(),
        ipv6,
        ports,
        endpoints,
    }))
}

fn add(doc: &Value, out: &mut Manifests) -> Result<()> {
    match doc.get("kind").and_then(Value::as_str) {
        Some("Service") => out.services.extend(service(doc)?),
        Some("EndpointSlice") => out.slices.extend(slice(doc)?),
        Some("List") => {
            for item in seq(doc.get("items")) {
                add(item, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file of `dir` (all documents of each).
pub fn read_dir(dir: &Path) -> Result<Manifests> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    let mut out = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(doc).with_context(|| format!("parsing {}", file.display()))?;
            add(&value, &mut out).with_context(|| format!("in {}", file.display()))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("skd*", "skd0"));
        assert!(glob_match("skd*", "skd"));
        assert!(!glob_match("skd*", "eth0"));
        assert!(glob_match("e?h*", "eth0"));
        assert!(glob_match("eth0", "eth0"));
    }

    #[test]
    fn parses_services_and_slices() {
        let dir = std::env::temp_dir().join(format!("xtask-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
             spec:\n  clusterIPs: [10.96.0.10, 'fd00:96::10']\n  ports:\n  - {name: http, port: 80}\n\
             ---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}\n\
             addressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\n\
             endpoints:\n- addresses: [10.244.1.11]\n- addresses: [10.244.1.12]\n  conditions: {ready: false}\n\
             ---\n\
             kind: Service\nmetadata: {name: headless}\nspec: {clusterIP: None}\n",
        )
        .unwrap();
        let m = read_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(m.services.len(), 1);
        let svc = &m.services[0];
        assert_eq!(svc.cluster_ips.len(), 2);
        let v4 = m.backends(svc, &svc.ports[0], false);
        assert_eq!(
            v4.into_iter().collect::<Vec<_>>(),
            [("10.244.1.11".parse().unwrap(), 8080)]
        );
        assert!(m.backends(svc, &svc.ports[0], true).is_empty());
    }
}

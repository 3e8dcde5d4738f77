//! Node configuration (`--config FILE`): what the agent must know about the node it runs on that
//! the Kubernetes objects do not say. camelCase keys like kube-proxy's configuration file; an
//! unknown key is an error, so a typo never silently falls back to a default.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use thiserror::Error;

use crate::maglev::{valid_table_size, LbAlgorithm, DEFAULT_TABLE_SIZE};

/// Interfaces the pod-side TC program goes on when `podInterfaces` is absent: the host ends of
/// the veth pairs made by the common CNI plugins (bridge/ptp, Calico, Cilium).
pub const DEFAULT_POD_INTERFACES: [&str; 3] = ["veth*", "cali*", "lxc*"];

/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const MAX_IFNAME_LEN: usize = 15;

/// Which hook takes the packets arriving on `externalInterfaces` (`externalIngress`). Both
/// run the same pipeline; generic (skb) XDP is never used: it runs where TC does, after the
/// skb is allocated, and may copy each one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExternalIngress {
    /// Native (driver) XDP where the driver takes it, else TC ingress (the default).
    #[default]
    Auto,
    /// Native XDP only: an interface whose driver refuses it is an error.
    Xdp,
    /// TC ingress (TCX) only.
    Tc,
}

impl ExternalIngress {
    pub const fn as_str(self) -> &'static str {
        match self {
            ExternalIngress::Auto => "auto",
            ExternalIngress::Xdp => "xdp",
            ExternalIngress::Tc => "tc",
        }
    }

    pub fn parse(s: &str) -> Option<ExternalIngress> {
        [
            ExternalIngress::Auto,
            ExternalIngress::Xdp,
            ExternalIngress::Tc,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read node config {origin}: {error}")]
    Read {
        origin: String,
        error: std::io::Error,
    },
    /// YAML syntax, an unknown or missing key, or a value of the wrong type.
    #[error("node config {origin}: {error}")]
    Parse {
        origin: String,
        error: serde_yaml::Error,
    },
    #[error("node config {origin}: {key}: invalid value {value:?}: {reason}")]
    Invalid {
        origin: String,
        key: String,
        value: String,
        reason: String,
    },
}

/// The file as written; values stay strings so that a bad one is reported with its key.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawNodeConfig {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(rename = "nodeIPs", default)]
    node_ips: Option<Vec<String>>,
    #[serde(rename = "clusterCIDRs", default)]
    cluster_cidrs: Vec<String>,
    #[serde(rename = "serviceCIDRs", default)]
    service_cidrs: Option<Vec<String>>,
    #[serde(default)]
    node_port_addresses: Option<Vec<String>>,
    #[serde(default)]
    masquerade_all: bool,
    #[serde(default)]
    pod_interfaces: Option<Vec<String>>,
    #[serde(default)]
    external_interfaces: Vec<String>,
    #[serde(default)]
    external_ingress: Option<String>,
    #[serde(rename = "socketLB", default)]
    socket_lb: Option<bool>,
    #[serde(default)]
    cgroup_path: Option<String>,
    #[serde(default)]
    load_balancing: Option<String>,
    #[serde(default)]
    maglev_table_size: Option<u32>,
}

/// Validated node configuration. Build it with [`NodeConfig::load`] or
/// [`NodeConfig::from_yaml_str`]; the fields are public for reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's name, as endpoints' `nodeName` spell it.
    pub node_name: String,
    /// Every address of this node (never empty).
    pub node_ips: Vec<IpAddr>,
    /// Pod address ranges. Empty: pod traffic cannot be told apart from other traffic.
    pub cluster_cidrs: Vec<IpNet>,
    /// Service (ClusterIP) ranges, when known.
    pub service_cidrs: Option<Vec<IpNet>>,
    /// Ranges selecting the node IPs NodePorts listen on; `None` means all node IPs.
    pub node_port_addresses: Option<Vec<IpNet>>,
    /// Masquerade all service traffic, not only what needs it.
    pub masquerade_all: bool,
    /// Interface-name patterns of the host side of pod veths; a trailing `*` matches any suffix.
    pub pod_interfaces: Vec<String>,
    /// Interfaces facing outside the node (exact names): service traffic arriving there is
    /// translated by XDP or TC ingress (`external_ingress`).
    pub external_interfaces: Vec<String>,
    /// The hook on `external_interfaces` (`externalIngress`, default auto).
    pub external_ingress: ExternalIngress,
    /// Translate local sockets' service traffic at `connect()`/`sendmsg()` (cgroup hooks;
    /// default on): the only path for host processes and hostNetwork pods.
    pub socket_lb: bool,
    /// The cgroup v2 directory the socket-level programs attach to; `None`: the root of the
    /// cgroup v2 mount found in /proc/self/mountinfo.
    pub cgroup_path: Option<PathBuf>,
    /// How services pick a backend for a new connection unless their
    /// `skiff.io/lb-algorithm` annotation says otherwise (`loadBalancing`, default random).
    pub load_balancing: LbAlgorithm,
    /// Maglev table size M (`maglevTableSize`, a prime up to 65,521; default 16,381).
    pub maglev_table_size: u16,
}

impl NodeConfig {
    /// Read and validate the config file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<NodeConfig, ConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            origin: origin.clone(),
            error: source,
        })?;
        Self::from_yaml_str(&text, &origin)
    }

    /// Parse and validate config text; `origin` names it in errors (usually the file path).
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<NodeConfig, ConfigError> {
        Self::parse(text, origin, None)
    }

    /// Kubernetes mode: `node_name` (from `--node-name`/`NODE_NAME`) overrides `nodeName`, and
    /// `nodeIPs` may be absent: the agent then takes them from its Node object
    /// ([`NodeConfig::with_node_ips`]), as kube-proxy does.
    pub fn load_for_kubernetes(
        path: impl AsRef<Path>,
        node_name: Option<&str>,
    ) -> Result<NodeConfig, ConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            origin: origin.clone(),
            error: source,
        })?;
        Self::parse(&text, &origin, Some(node_name))
    }

    fn parse(
        text: &str,
        origin: &str,
        kubernetes: Option<Option<&str>>,
    ) -> Result<NodeConfig, ConfigError> {
        let raw: RawNodeConfig =
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                origin: origin.to_string(),
                error: source,
            })?;
        Validator { origin }.validate(raw, kubernetes)
    }

    /// This config with `ips` as the node's addresses when the file gave none.
    pub fn with_node_ips(mut self, ips: impl IntoIterator<Item = IpAddr>) -> NodeConfig {
        if self.node_ips.is_empty() {
            self.node_ips = ips.into_iter().collect();
        }
        self
    }

    /// Whether `ip` is a pod address (inside one of `clusterCIDRs`).
    pub fn in_cluster_cidrs(&self, ip: &IpAddr) -> bool {
        self.cluster_cidrs.iter().any(|net| net.contains(ip))
    }

    /// Whether `ip` is one of this node's addresses.
    pub fn is_node_ip(&self, ip: &IpAddr) -> bool {
        self.node_ips.contains(ip)
    }

    /// Whether the interface `name` is the host side of a pod's veth.
    pub fn matches_pod_interface(&self, name: &str) -> bool {
        self.pod_interfaces
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern,
            })
    }

    /// The node IPs NodePorts are served on: those inside `nodePortAddresses`, or all of them
    /// when it is absent.
    pub fn node_port_addresses(&self) -> Vec<IpAddr> {
        match &self.node_port_addresses {
            None => self.node_ips.clone(),
            Some(nets) => self
                .node_ips
                .iter()
                .filter(|ip| nets.iter().any(|net| net.contains(*ip)))
                .copied()
                .collect(),
        }
    }
}

struct Validator<'a> {
    origin: &'a str,
}

impl Validator<'_> {
    fn invalid(&self, key: String, value: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            key,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// `kubernetes`: `None` for the strict file-only mode; `Some(name)` in Kubernetes mode,
    /// where `name` overrides `nodeName` and `nodeIPs` may be absent.
    fn validate(
        &self,
        raw: RawNodeConfig,
        kubernetes: Option<Option<&str>>,
    ) -> Result<NodeConfig, ConfigError> {
        let node_name = match (kubernetes.flatten(), raw.node_name) {
            (Some(name), _) => name.to_string(),
            (None, Some(name)) => name,
            (None, None) => {
                let hint = if kubernetes.is_some() {
                    "required (or --node-name / NODE_NAME)"
                } else {
                    "required"
                };
                return Err(self.invalid("nodeName".into(), "", hint));
            }
        };
        if node_name.trim().is_empty() {
            return Err(self.invalid("nodeName".into(), &node_name, "must not be empty"));
        }
        let raw_ips = raw.node_ips.unwrap_or_default();
        if raw_ips.is_empty() && kubernetes.is_none() {
            // Without them the agent cannot tell host-originated traffic or serve NodePorts.
            return Err(self.invalid("nodeIPs".into(), "[]", "list every address of this node"));
        }
        let node_ips = raw_ips
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| self.invalid(format!("nodeIPs[{i}]"), s, "not an IP address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cluster_cidrs = self.cidrs("clusterCIDRs", &raw.cluster_cidrs)?;
        let service_cidrs = raw
            .service_cidrs
            .as_deref()
            .map(|list| self.cidrs("serviceCIDRs", list))
            .transpose()?;
        let node_port_addresses = raw
            .node_port_addresses
            .as_deref()
            .map(|list| self.cidrs("nodePortAddresses", list))
            .transpose()?;
        let pod_interfaces = match raw.pod_interfaces {
            None => DEFAULT_POD_INTERFACES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Some(list) => {
                for (i, pattern) in list.iter().enumerate() {
                    self.check_interface_pattern(i, pattern)?;
                }
                list
            }
        };
        for (i, name) in raw.external_interfaces.iter().enumerate() {
            self.check_interface_name(i, name)?;
        }
        let external_ingress = match raw.external_ingress.as_deref() {
            None => ExternalIngress::Auto,
            Some(v) => ExternalIngress::parse(v).ok_or_else(|| {
                self.invalid(
                    "externalIngress".into(),
                    v,
                    "expected auto (native XDP, else TC), xdp (native XDP only) or tc",
                )
            })?,
        };
        let cgroup_path = match raw.cgroup_path {
            None => None,
            Some(p) if p.starts_with('/') && !p.split('/').any(|c| c == "..") => {
                Some(PathBuf::from(p))
            }
            Some(p) => {
                return Err(self.invalid(
                    "cgroupPath".into(),
                    &p,
                    "must be an absolute path without `..`",
                ))
            }
        };
        let load_balancing = match raw.load_balancing.as_deref() {
            None => LbAlgorithm::Random,
            Some(v) => LbAlgorithm::parse(v).ok_or_else(|| {
                self.invalid("loadBalancing".into(), v, "expected random or maglev")
            })?,
        };
        let maglev_table_size = match raw.maglev_table_size {
            None => DEFAULT_TABLE_SIZE,
            Some(m) if valid_table_size(m) => m as u16,
            Some(m) => {
                return Err(self.invalid(
                    "maglevTableSize".into(),
                    &m.to_string(),
                    "must be a prime from 3 to 65521 (e.g. 251, 1021, 4093, 16381, 65521), \
                     at least 100 times the largest number of backends for even shares",
                ))
            }
        };
        Ok(NodeConfig {
            node_name,
            node_ips,
            cluster_cidrs,
            service_cidrs,
            node_port_addresses,
            masquerade_all: raw.masquerade_all,
            pod_interfaces,
            external_interfaces: raw.external_interfaces,
            external_ingress,
            socket_lb: raw.socket_lb.unwrap_or(true),
            cgroup_path,
            load_balancing,
            maglev_table_size,
        })
    }

    fn cidrs(&self, key: &str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, s)| {
                let key = format!("{key}[{i}]");
                let net: IpNet = s.trim().parse().map_err(|_| {
                    self.invalid(key.clone(), s, "not a CIDR (expected e.g. 10.244.0.0/16)")
                })?;
                // Host bits set is almost always a typo for a different range.
                if net.trunc() != net {
                    return Err(self.invalid(
                        key,
                        s,
                        format!("host bits set (did you mean {}?)", net.trunc()),
                    ));
                }
                Ok(net)
            })
            .collect()
    }

    fn check_interface_name(&self, i: usize, name: &str) -> Result<(), ConfigError> {
        let key = format!("externalInterfaces[{i}]");
        if name.is_empty() || name.contains('*') || name.contains('/') {
            return Err(self.invalid(key, name, "must be an interface name (no patterns)"));
        }
        if name.len() > MAX_IFNAME_LEN {
            return Err(self.invalid(key, name, "interface names have at most 15 bytes"));
        }
        Ok(())
    }

    fn check_interface_pattern(&self, i: usize, pattern: &str) -> Result<(), ConfigError> {
        let key = format!("podInterfaces[{i}]");
        let literal = pattern.strip_suffix('*').unwrap_or(pattern);
        if pattern.is_empty() {
            return Err(self.invalid(key, pattern, "must not be empty"));
        }
        if literal.is_empty() {
            // `*` alone would put the pod-side program on the node's uplink and loopback too.
            return Err(self.invalid(key, pattern, "a prefix is required before `*`"));
        }
        if literal.contains('*') {
            return Err(self.invalid(key, pattern, "`*` is only allowed at the end"));
        }
        if literal.len() > MAX_IFNAME_LEN {
            return Err(self.invalid(
                key,
                pattern,
                format!("interface names are at most {MAX_IFNAME_LEN} bytes"),
            ));
        }
        if literal
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err(self.invalid(key, pattern, "not a valid interface name"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "nodeName: n1\nnodeIPs: [192.0.2.1]\n";

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::from_yaml_str(text, "test.yaml")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn invalid_key(err: ConfigError) -> (String, String) {
        match err {
            ConfigError::Invalid { key, value, .. } => (key, value),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.node_name, "n1");
        assert_eq!(cfg.node_ips, vec![ip("192.0.2.1")]);
        assert!(cfg.cluster_cidrs.is_empty());
        assert_eq!(cfg.service_cidrs, None);
        assert_eq!(cfg.node_port_addresses, None);
        assert!(!cfg.masquerade_all);
        assert_eq!(cfg.pod_interfaces, vec!["veth*", "cali*", "lxc*"]);
        assert_eq!(cfg.load_balancing, LbAlgorithm::Random);
        assert_eq!(cfg.maglev_table_size, 16_381);
    }

    #[test]
    fn load_balancing_and_maglev_table_size() {
        let cfg = parse(&format!(
            "{MINIMAL}loadBalancing: maglev\nmaglevTableSize: 1021\n"
        ))
        .unwrap();
        assert_eq!(
            (cfg.load_balancing, cfg.maglev_table_size),
            (LbAlgorithm::Maglev, 1021)
        );
        let err = parse(&format!("{MINIMAL}loadBalancing: roundrobin\n")).unwrap_err();
        assert_eq!(
            invalid_key(err),
            ("loadBalancing".into(), "roundrobin".into())
        );
        for bad in ["1024", "65537", "1"] {
            let err = parse(&format!("{MINIMAL}maglevTableSize: {bad}\n")).unwrap_err();
            assert_eq!(invalid_key(err), ("maglevTableSize".into(), bad.into()));
        }
    }

    #[test]
    fn full_config_parses() {
        let cfg = parse(
            "nodeName: n1\n\
             nodeIPs: [192.0.2.1, '2001:db8::1']\n\
             clusterCIDRs: [10.244.0.0/16, 'fd00:244::/48']\n\
             serviceCIDRs: [10.96.0.0/16]\n\
             nodePortAddresses: [192.0.2.0/24]\n\
             masqueradeAll: true\n\
             podInterfaces: ['skd*', eth1]\n",
        )
        .unwrap();
        assert_eq!(cfg.node_ips.len(), 2);
        assert_eq!(cfg.cluster_cidrs.len(), 2);
        assert_eq!(
            cfg.service_cidrs,
            Some(vec!["10.96.0.0/16".parse().unwrap()])
        );
        assert!(cfg.masquerade_all);
        assert_eq!(cfg.pod_interfaces, vec!["skd*", "eth1"]);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = parse(&format!("{MINIMAL}clusterCIDR: [10.0.0.0/8]\n")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }), "{msg}");
        assert!(msg.contains("test.yaml"), "{msg}");
        assert!(msg.contains("clusterCIDR"), "{msg}");
    }

    #[test]
    fn missing_required_keys_are_errors() {
        let msg = parse("nodeIPs: [192.0.2.1]\n").unwrap_err().to_string();
        assert!(msg.contains("nodeName"), "{msg}");
        let msg = parse("nodeName: n1\n").unwrap_err().to_string();
        assert!(msg.contains("nodeIPs"), "{msg}");
        assert!(parse("").is_err());
    }

    #[test]
    fn empty_node_name_or_ips_rejected() {
        let (key, _) = invalid_key(parse("nodeName: ''\nnodeIPs: [192.0.2.1]\n").unwrap_err());
        assert_eq!(key, "nodeName");
        let (key, _) = invalid_key(parse("nodeName: n1\nnodeIPs: []\n").unwrap_err());
        assert_eq!(key, "nodeIPs");
    }

    #[test]
    fn bad_ip_names_key_and_value() {
        let err = parse("nodeName: n1\nnodeIPs: [192.0.2.1, 192.0.2.300]\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("test.yaml") && msg.contains("192.0.2.300"),
            "{msg}"
        );
        assert_eq!(
            invalid_key(err),
            ("nodeIPs[1]".to_string(), "192.0.2.300".to_string())
        );
    }

    #[test]
    fn bad_cidrs_name_key_and_value() {
        for (key, value) in [
            ("clusterCIDRs", "10.244.0.0"),
            ("serviceCIDRs", "10.96.0.0/33"),
            ("nodePortAddresses", "nonsense"),
            ("clusterCIDRs", "10.244.1.0/16"),
        ] {
            let err = parse(&format!("{MINIMAL}{key}: ['{value}']\n")).unwrap_err();
            assert_eq!(invalid_key(err), (format!("{key}[0]"), value.to_string()));
        }
    }

    #[test]
    fn host_bits_error_suggests_the_network() {
        let msg = parse(&format!("{MINIMAL}clusterCIDRs: [10.244.1.0/16]\n"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("10.244.0.0/16"), "{msg}");
    }

    #[test]
    fn wrong_type_is_a_parse_error() {
        let err = parse(&format!("{MINIMAL}masqueradeAll: sometimes\n")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(err.to_string().contains("masqueradeAll"), "{err}");
    }

    #[test]
    fn cluster_cidr_membership() {
        let cfg = parse(&format!(
            "{MINIMAL}clusterCIDRs: [10.244.0.0/16, 'fd00:244::/32']\n"
        ))
        .unwrap();
        assert!(cfg.in_cluster_cidrs(&ip("10.244.1.11")));
        assert!(cfg.in_cluster_cidrs(&ip("fd00:244:1::11")));
        assert!(!cfg.in_cluster_cidrs(&ip("10.245.0.1")));
        assert!(!cfg.in_cluster_cidrs(&ip("fd00:245::1")));
        assert!(!cfg.in_cluster_cidrs(&ip("192.0.2.1")));
        let none = parse(MINIMAL).unwrap();
        assert!(!none.in_cluster_cidrs(&ip("10.244.1.11")));
    }

    #[test]
    fn node_ip_membership() {
        let cfg = parse("nodeName: n1\nnodeIPs: [192.0.2.1, '2001:db8::1']\n").unwrap();
        assert!(cfg.is_node_ip(&ip("192.0.2.1")));
        assert!(cfg.is_node_ip(&ip("2001:db8::1")));
        assert!(!cfg.is_node_ip(&ip("192.0.2.2")));
    }

    #[test]
    fn pod_interface_patterns() {
        let cfg = parse(&format!("{MINIMAL}podInterfaces: ['skd*', eth1]\n")).unwrap();
        assert!(cfg.matches_pod_interface("skd0a1b"));
        assert!(cfg.matches_pod_interface("skd"));
        assert!(cfg.matches_pod_interface("eth1"));
        assert!(!cfg.matches_pod_interface("eth10"));
        assert!(!cfg.matches_pod_interface("veth123"));
        let defaults = parse(MINIMAL).unwrap();
        assert!(defaults.matches_pod_interface("veth9f2c"));
        assert!(defaults.matches_pod_interface("cali12345"));
        assert!(defaults.matches_pod_interface("lxc00aa"));
        assert!(!defaults.matches_pod_interface("eth0"));
    }

    #[test]
    fn bad_pod_interface_patterns_rejected() {
        for bad in ["*", "ve*th", "averyveryverylongname", "a/b", ""] {
            let err = parse(&format!("{MINIMAL}podInterfaces: ['{bad}']\n")).unwrap_err();
            assert_eq!(
                invalid_key(err),
                ("podInterfaces[0]".to_string(), bad.to_string())
            );
        }
    }

    #[test]
    fn node_port_addresses_filter_node_ips() {
        let all =
            parse("nodeName: n1\nnodeIPs: [192.0.2.1, 198.51.100.1, '2001:db8::1']\n").unwrap();
        assert_eq!(all.node_port_addresses(), all.node_ips);
        let some = parse(
            "nodeName: n1\nnodeIPs: [192.0.2.1, 198.51.100.1, '2001:db8::1']\n\
             nodePortAddresses: [198.51.100.0/24, '2001:db8::/64']\n",
        )
        .unwrap();
        assert_eq!(
            some.node_port_addresses(),
            vec![ip("198.51.100.1"), ip("2001:db8::1")]
        );
        let none =
            parse("nodeName: n1\nnodeIPs: [192.0.2.1]\nnodePortAddresses: [10.0.0.0/8]\n").unwrap();
        assert!(none.node_port_addresses().is_empty());
    }

    #[test]
    fn load_names_missing_file() {
        let err = NodeConfig::load("/nonexistent/skiff-node.yaml").unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/skiff-node.yaml"));
    }

    #[test]
    fn external_interfaces_are_exact_names() {
        assert!(parse(MINIMAL).unwrap().external_interfaces.is_empty());
        let cfg = parse(&format!("{MINIMAL}externalInterfaces: [eth0, ens5]\n")).unwrap();
        assert_eq!(cfg.external_interfaces, vec!["eth0", "ens5"]);
        for bad in ["eth*", "", "a-very-long-interface-name"] {
            let err = parse(&format!("{MINIMAL}externalInterfaces: ['{bad}']\n")).unwrap_err();
            assert_eq!(
                invalid_key(err),
                ("externalInterfaces[0]".to_string(), bad.to_string())
            );
        }
    }

    #[test]
    fn external_ingress_defaults_to_auto_and_takes_xdp_or_tc() {
        assert_eq!(
            parse(MINIMAL).unwrap().external_ingress,
            ExternalIngress::Auto
        );
        for (v, want) in [
            ("auto", ExternalIngress::Auto),
            ("xdp", ExternalIngress::Xdp),
            ("tc", ExternalIngress::Tc),
        ] {
            let cfg = parse(&format!("{MINIMAL}externalIngress: {v}\n")).unwrap();
            assert_eq!(cfg.external_ingress, want, "{v}");
        }
        // Generic XDP is deliberately not a choice; values are case-sensitive like the others.
        for bad in ["generic", "skb", "XDP", "native", ""] {
            let err = parse(&format!("{MINIMAL}externalIngress: '{bad}'\n")).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("expected auto"), "{msg}");
            assert_eq!(invalid_key(err), ("externalIngress".into(), bad.into()));
        }
        let err = parse(&format!("{MINIMAL}externalIngress: [tc]\n")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn socket_lb_defaults_on_with_an_autodetected_cgroup() {
        let cfg = parse(MINIMAL).unwrap();
        assert!(cfg.socket_lb);
        assert_eq!(cfg.cgroup_path, None);
        let cfg = parse(&format!(
            "{MINIMAL}socketLB: false\ncgroupPath: /sys/fs/cgroup/unified\n"
        ))
        .unwrap();
        assert!(!cfg.socket_lb);
        assert_eq!(
            cfg.cgroup_path,
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        for bad in ["relative/cg", "/sys/fs/cgroup/../x", ""] {
            let err = parse(&format!("{MINIMAL}cgroupPath: '{bad}'\n")).unwrap_err();
            assert_eq!(
                invalid_key(err),
                ("cgroupPath".to_string(), bad.to_string())
            );
        }
        let err = parse(&format!("{MINIMAL}socketLb: true\n")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn kubernetes_mode_takes_name_from_flag_and_ips_later() {
        let dir = std::env::temp_dir().join(format!("skiff-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(&path, "clusterCIDRs: [10.244.0.0/16]\n").unwrap();
        let cfg = NodeConfig::load_for_kubernetes(&path, Some("node-7")).unwrap();
        assert_eq!(cfg.node_name, "node-7");
        assert!(cfg.node_ips.is_empty());
        let cfg = cfg.with_node_ips([ip("192.0.2.7")]);
        assert_eq!(cfg.node_ips, vec![ip("192.0.2.7")]);
        // Addresses from the file win over the Node object's.
        std::fs::write(&path, "nodeName: n\nnodeIPs: [192.0.2.1]\n").unwrap();
        let cfg = NodeConfig::load_for_kubernetes(&path, None).unwrap();
        assert_eq!(cfg.node_name, "n");
        assert_eq!(
            cfg.with_node_ips([ip("192.0.2.7")]).node_ips,
            vec![ip("192.0.2.1")]
        );
        let err = NodeConfig::load_for_kubernetes(&path, Some("")).unwrap_err();
        assert!(err.to_string().contains("nodeName"), "{err}");
        std::fs::write(&path, "nodeIPs: [192.0.2.1]\n").unwrap();
        let err = NodeConfig::load_for_kubernetes(&path, None).unwrap_err();
        assert!(err.to_string().contains("NODE_NAME"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Several nodes on one L2 "underlay": a bridge in its own namespace, each node's `ul0` veth
//! plugged into it, and external hosts (clients outside the cluster) plugged in beside them.
//!
//! Addresses are the caller's (use documentation ranges such as 192.0.2.0/24 and
//! 2001:db8::/64). Each node routes the other nodes' pod addresses through their underlay
//! address ([`TestBed::route_via`]), like a flat-routed cluster (Calico without overlay, or
//! Cilium native routing).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context as _, Result};

use crate::bed::{new_netns, remove_namespaces, NAME_PREFIX};
use crate::netns::{ip, ip_batch};
use crate::TestBed;

/// The underlay interface of every node and external host.
pub const UNDERLAY_IF: &str = "ul0";
const BRIDGE: &str = "br0";

static UNDERLAYS: AtomicUsize = AtomicUsize::new(0);

/// A host outside the cluster on the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalHost {
    pub name: String,
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

impl ExternalHost {
    pub fn ns(&self) -> &str {
        &self.netns
    }
}

/// The bridge namespace and the external hosts. Dropping it deletes them (the nodes' `ul0`
/// peers go with the bridge namespace).
pub struct Underlay {
    prefix: String,
    netns: String,
    ports: AtomicUsize,
    /// Namespaces created, in order (bridge first).
    namespaces: Vec<String>,
    prefix_len4: u8,
}

impl Underlay {
    /// A bridge for `/prefix_len4` IPv4 (and /64 IPv6) underlay addresses.
    pub fn new(prefix_len4: u8) -> Result<Underlay> {
        if !crate::is_root() {
            bail!("an underlay needs root (network namespaces and veths)");
        }
        TestBed::cleanup_dead()?;
        let n = UNDERLAYS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAME_PREFIX}{}-u{n}-", std::process::id());
        let netns = format!("{prefix}bridge");
        new_netns(&netns)?;
        let ul = Underlay {
            prefix,
            netns: netns.clone(),
            ports: AtomicUsize::new(0),
            namespaces: vec![netns.clone()],
            prefix_len4,
        };
        ip_batch(
            &netns,
            &[
                format!("link add {BRIDGE} type bridge"),
                format!("link set {BRIDGE} up"),
            ],
        )
        .context("creating the underlay bridge")?;
        Ok(ul)
    }

    /// The bridge's namespace.
    pub fn ns(&self) -> &str {
        &self.netns
    }

    /// Plug namespace `ns` into the bridge with interface `ul0` and these addresses.
    pub(crate) fn plug(&self, ns: &str, ipv4: Ipv4Addr, ipv6: Option<Ipv6Addr>) -> Result<()> {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::Relaxed));
        ip(
            Some(&self.netns),
            &[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                UNDERLAY_IF,
                "netns",
                ns,
            ],
        )
        .with_context(|| format!("plugging {ns} into the underlay"))?;
        ip_batch(
            &self.netns,
            &[
                format!("link set {port} master {BRIDGE}"),
                format!("link set {port} up"),
            ],
        )?;
        let mut cmds = vec![
            format!("addr add {ipv4}/{} dev {UNDERLAY_IF}", self.prefix_len4),
            format!("link set {UNDERLAY_IF} up"),
        ];
        if let Some(a) = ipv6 {
            cmds.push(format!("addr add {a}/64 dev {UNDERLAY_IF} nodad"));
        }
        ip_batch(ns, &cmds).with_context(|| format!("underlay addresses of {ns}"))
    }

    /// A host outside the cluster: its own namespace on the bridge.
    pub fn add_external(
        &mut self,
        name: &str,
        ipv4: Ipv4Addr,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<ExternalHost> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("external host name {name:?}: [A-Za-z0-9-]+");
        }
        let netns = format!("{}{name}", self.prefix);
        new_netns(&netns)?;
        self.namespaces.push(netns.clone());
        self.plug(&netns, ipv4, ipv6)?;
        Ok(ExternalHost {
            name: name.into(),
            netns,
            ipv4,
            ipv6,
        })
    }

    /// Route `dest` (an address or CIDR, e.g. a LoadBalancer IP) from external host `host`
    /// through `via` (a node's underlay address), as an upstream router would.
    pub fn route(&self, host: &ExternalHost, dest: &str, via: IpAddr) -> Result<()> {
        ip(
            Some(host.ns()),
            &["route", "add", dest, "via", &via.to_string()],
        )
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        let mut names = std::mem::take(&mut self.namespaces);
        names.reverse();
        if let Err(e) = remove_namespaces(&names) {
            eprintln!("skiff-testbed: cleaning up {}: {e:#}", self.prefix);
        }
    }
}

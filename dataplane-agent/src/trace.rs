//! `skiff trace`: what happens to a packet. Loads the real programs and maps (attached to
//! nothing), fills the maps exactly as the agent does, and runs each packet through the hook
//! it would meet on the node, with BPF_PROG_TEST_RUN.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use dataplane_common::Reason;

use crate::bpf::{
    object::LoadError,
    testrun::{self, Hook, RunError},
    writer::{WriteError, Writer},
    Datapath,
};
use crate::config::NodeConfig;
use crate::desired::{DesiredState, Frontend, Protocol};
use crate::packet::{self, FlowSpec, L4Proto};
use crate::trace_node;

/// One input line: `{"proto":"tcp","src":IP,"sport":N,"dst":IP,"dport":N}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowInput {
    pub proto: String,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

/// Where a packet enters the node, inferred from its source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A pod of this node (source inside `clusterCIDRs`).
    Pod,
    /// The node itself (source is one of `nodeIPs`).
    Node,
    /// Anything else.
    External,
}

/// One output line.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TraceResult {
    /// `pass` (delivered untranslated), `dnat`, `drop` or `reject`.
    pub verdict: &'static str,
    /// The translated destination, `IP:PORT` or `[IPv6]:PORT`.
    pub dnat: Option<String>,
    /// The masquerade source address.
    pub snat: Option<String>,
    pub reason: String,
    /// Counter name of the datapath's decision (the same names as the metrics).
    pub code: Option<&'static str>,
    pub origin: Origin,
    /// The hook the packet met, or null when no skiff program is on its path.
    pub hook: Option<&'static str>,
    /// The Service port the destination belongs to (`namespace/name:port`).
    pub service: Option<String>,
}

#[derive(Debug, Error)]
pub enum TraceError {
    #[error("unknown protocol {0:?} (expected tcp, udp or sctp)")]
    Protocol(String),
    #[error("source and destination must be the same IP family")]
    Family,
    #[error("building the packet: {0}")]
    Packet(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("clearing connection tracking")]
    Conntrack(#[source] aya::maps::MapError),
    #[error("reading the service maps")]
    Maps(#[source] aya::maps::MapError),
}

pub fn format_endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The loaded datapath with the maps holding the desired state.
pub struct Tracer {
    dp: Datapath,
    config: NodeConfig,
    desired: DesiredState,
}

impl Tracer {
    pub fn new(config: NodeConfig, desired: DesiredState) -> Result<Self, TraceError> {
        let mut dp = Datapath::load()?;
        let mut writer = Writer::new(&dp.maps)?;
        writer.sync(&mut dp.maps, &desired)?;
        Ok(Tracer {
            dp,
            config,
            desired,
        })
    }

    pub fn origin(&self, src: IpAddr) -> Origin {
        if self.config.is_node_ip(&src) {
            Origin::Node
        } else if self.config.in_cluster_cidrs(&src) {
            Origin::Pod
        } else {
            Origin::External
        }
    }

    /// Trace one packet (the first packet of a new connection), from fresh connection state.
    pub fn trace(&mut self, input: &FlowInput) -> Result<TraceResult, TraceError> {
        let proto = match input.proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return Err(TraceError::Protocol(input.proto.clone())),
        };
        if input.src.is_ipv4() != input.dst.is_ipv4() {
            return Err(TraceError::Family);
        }
        let service = self
            .desired
            .frontends
            .get(&Frontend {
                addr: input.dst,
                port: input.dport,
                proto,
            })
            .map(|e| e.service.to_string());
        let origin = self.origin(input.src);
        let hook = match origin {
            Origin::Pod => Hook::TcPod,
            Origin::External => Hook::XdpExt,
            Origin::Node => {
                // No packet hook: only the socket-level one (see `trace_node`).
                let fe = Frontend {
                    addr: input.dst,
                    port: input.dport,
                    proto,
                };
                let v = trace_node::node_verdict(&self.dp.maps, self.config.socket_lb, &fe)
                    .map_err(TraceError::Maps)?;
                let (verdict, dnat, mut reason, code, hook) = trace_node::describe(&v, input.dst);
                if let Some(svc) = &service {
                    reason = format!("{reason} [service {svc}]");
                }
                return Ok(TraceResult {
                    verdict,
                    dnat,
                    snat: None,
                    reason,
                    code,
                    origin,
                    hook,
                    service,
                });
            }
        };

        let l4 = match proto {
            Protocol::Tcp => L4Proto::Tcp,
            Protocol::Udp => L4Proto::Udp,
            Protocol::Sctp => L4Proto::Sctp,
        };
        let spec = FlowSpec::new(l4, input.src, input.sport, input.dst, input.dport);
        let frame = packet::build_frame(&spec).map_err(|e| TraceError::Packet(e.to_string()))?;
        self.dp
            .maps
            .clear_flow_state()
            .map_err(TraceError::Conntrack)?;
        let out = testrun::run(&mut self.dp, hook, &frame)?;

        let code = out.reason.map(|r| r.name());
        let mut reason = out
            .reason
            .map(|r| r.describe().to_string())
            .unwrap_or_else(|| "no counter moved (unexpected)".into());
        if let Some(svc) = &service {
            reason = format!("{reason} [service {svc}]");
        }
        if out.dropped {
            return Ok(TraceResult {
                verdict: "drop",
                dnat: None,
                snat: None,
                reason,
                code,
                origin,
                hook: Some(hook.name()),
                service,
            });
        }
        if out.sent_back {
            // The packet became the reject reply (TCP RST / ICMP unreachable) to the client.
            return Ok(TraceResult {
                verdict: "reject",
                dnat: None,
                snat: None,
                reason,
                code,
                origin,
                hook: Some(hook.name()),
                service,
            });
        }
        // Leaving through an external interface, the egress program masquerades the source
        // of connections that need it (it changes nothing else).
        let egress = testrun::run(&mut self.dp, Hook::TcExt, &out.frame)?;
        if egress.dropped {
            return Ok(TraceResult {
                verdict: "drop",
                dnat: None,
                snat: None,
                reason: egress
                    .reason
                    .map(|r| r.describe().to_string())
                    .unwrap_or(reason),
                code: egress.reason.map(|r| r.name()),
                origin,
                hook: Some(Hook::TcExt.name()),
                service,
            });
        }
        if egress.reason == Some(Reason::NatMasqSource) {
            reason = format!(
                "{reason}; leaving the node: {}",
                Reason::NatMasqSource.describe()
            );
        }
        let parsed =
            packet::parse_frame(&egress.frame).map_err(|e| TraceError::Packet(e.to_string()))?;
        let dnat = (parsed.dst != input.dst || parsed.dport != input.dport)
            .then(|| format_endpoint(parsed.dst, parsed.dport));
        let snat = (parsed.src != input.src).then(|| parsed.src.to_string());
        let verdict = if dnat.is_some() { "dnat" } else { "pass" };
        Ok(TraceResult {
            verdict,
            dnat,
            snat,
            reason,
            code,
            origin,
            hook: Some(hook.name()),
            service,
        })
    }
}

/// A readable explanation of one result, for people.
pub fn explain(input: &FlowInput, r: &TraceResult) -> String {
    let mut s = format!(
        "{} {} -> {}\n  enters at: {} ({})\n",
        input.proto.to_uppercase(),
        format_endpoint(input.src, input.sport),
        format_endpoint(input.dst, input.dport),
        r.hook.unwrap_or("no skiff hook"),
        match r.origin {
            Origin::Pod => "source is a pod of this node",
            Origin::Node => "source is this node",
            Origin::External => "source is outside the node",
        }
    );
    if let Some(svc) = &r.service {
        s += &format!("  service:   {svc}\n");
    }
    s += &format!("  verdict:   {}", r.verdict);
    if let Some(d) = &r.dnat {
        s += &format!(" to {d}");
    }
    if r.verdict == "reject" {
        s += " (a TCP RST or ICMP port unreachable goes back to the client)";
    }
    if let Some(n) = &r.snat {
        s += &format!(", source masqueraded to {n}");
    }
    s += &format!("\n  why:       {}\n", r.reason);
    s
}

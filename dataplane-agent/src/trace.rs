//! `skiff trace`: what happens to a packet. Loads the real programs and maps (attached to
//! nothing), fills the maps exactly as the agent does, and runs each packet through the hook
//! it would meet on the node, with BPF_PROG_TEST_RUN.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bpf::policy_writer::{PolicyWriteError, PolicyWriter};
use crate::bpf::{
    object::LoadError,
    testrun::{self, Hook, RunError},
    writer::{WriteError, Writer},
    Datapath,
};
use crate::config::{ExternalIngress, NodeConfig};
use crate::desired::{DesiredState, Frontend, Protocol};
use crate::model::ClusterState;
use crate::packet::{self, FlowSpec, L4Proto};
use crate::policy::{compile_model, CompiledPolicy, EndVerdict, PolicyModel};
use crate::trace_node;
use dataplane_common::Reason;

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

/// Where a packet enters the node, inferred from its source address (a pod of this node
/// that the manifests name counts as a pod even outside `clusterCIDRs`).
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
    /// NetworkPolicy at both ends (when the tracer knows the policies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyTrace>,
}

/// NetworkPolicy's part in a trace: each end as the reference evaluator reads the policies,
/// checked against what the datapath did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PolicyTrace {
    /// The source pod's egress policy.
    pub egress: EndTrace,
    /// The destination pod's ingress policy.
    pub ingress: EndTrace,
    /// False when the datapath's verdict differs from the reference evaluator's (a bug).
    pub consistent: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EndTrace {
    /// The local pod at this end (`namespace/name`), if any.
    pub pod: Option<String>,
    /// `allowed`, `denied`, `not isolated`, `node` (traffic with its own node), or `not
    /// local` (no pod of this node at this end: this node does not decide).
    pub verdict: &'static str,
    /// The policies that allow it (`namespace/name`).
    pub policies: Vec<String>,
}

impl EndTrace {
    fn new(model: &PolicyModel, ip: IpAddr, v: &EndVerdict) -> EndTrace {
        let (verdict, policies) = match v {
            EndVerdict::NotLocal => ("not local", Vec::new()),
            EndVerdict::NotIsolated => ("not isolated", Vec::new()),
            EndVerdict::Node => ("node", Vec::new()),
            EndVerdict::Allowed(p) => ("allowed", p.iter().map(|n| n.to_string()).collect()),
            EndVerdict::Denied => ("denied", Vec::new()),
        };
        EndTrace {
            pod: model.pod_at(ip).map(|p| p.key.to_string()),
            verdict,
            policies,
        }
    }
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
    PolicyWrite(#[from] PolicyWriteError),
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
    /// The NetworkPolicies in the maps, once `set_policy` was called.
    policy: Option<(PolicyModel, CompiledPolicy)>,
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
            policy: None,
        })
    }

    /// Compile the NetworkPolicies of `state` into the maps, as the agent does.
    pub fn set_policy(&mut self, state: &ClusterState) -> Result<(), TraceError> {
        let model = PolicyModel::new(state, &self.config);
        let compiled = compile_model(&model, None);
        let mut writer = PolicyWriter::new(&self.dp.maps)?;
        writer.sync(&mut self.dp.maps, &compiled.maps)?;
        self.policy = Some((model, compiled));
        Ok(())
    }

    /// Whether `ip` is a pod of this node that policy knows (its to-pod hook runs).
    fn local_endpoint(&self, ip: IpAddr) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|(_, c)| c.maps.endpoints.contains_key(&crate::policy::ip_key(ip)))
    }

    /// Both ends' policy verdicts for the flow as it left the first hook, checked against
    /// the datapath's (`egress_denied`, `ingress_denied`).
    fn policy_trace(
        &self,
        src: IpAddr,
        dst: IpAddr,
        proto: Protocol,
        dport: u16,
        egress_denied: bool,
        ingress_denied: bool,
    ) -> Option<PolicyTrace> {
        let (model, _) = self.policy.as_ref()?;
        let v = crate::policy::evaluate(model, src, dst, proto.number(), dport);
        Some(PolicyTrace {
            consistent: v.egress.allows() != egress_denied && v.ingress.allows() != ingress_denied,
            egress: EndTrace::new(model, src, &v.egress),
            ingress: EndTrace::new(model, dst, &v.ingress),
        })
    }

    pub fn origin(&self, src: IpAddr) -> Origin {
        if self.config.is_node_ip(&src) {
            Origin::Node
        } else if self.config.in_cluster_cidrs(&src) || self.local_endpoint(src) {
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
            // The hook the node config puts there: both run the same pipeline, and `auto`
            // means native XDP wherever the driver takes it.
            Origin::External => match self.config.external_ingress {
                ExternalIngress::Tc => Hook::TcExtIn,
                ExternalIngress::Auto | ExternalIngress::Xdp => Hook::XdpExt,
            },
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
                    // Traffic between a pod and its own node is always allowed.
                    policy: None,
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

        let mut code = out.reason.map(|r| r.name());
        let mut reason = describe(out.reason, service.as_deref());
        // Where the packet goes after the first hook, as it left it (rewritten or not).
        let after = packet::parse_frame(&out.frame).ok();
        let (src2, dst2, dport2) = after
            .as_ref()
            .map_or((input.src, input.dst, input.dport), |p| {
                (p.src, p.dst, p.dport)
            });
        if out.dropped {
            let egress_denied = out.reason == Some(Reason::DropPolicyEgress);
            let policy = if egress_denied {
                self.policy_trace(src2, dst2, proto, dport2, true, false)
            } else {
                None
            };
            return Ok(TraceResult {
                verdict: "drop",
                dnat: None,
                snat: None,
                reason,
                code,
                origin,
                hook: Some(hook.name()),
                service,
                policy,
            });
        }
        if out.sent_back && out.reason.is_some_and(|r| r.is_reject()) {
            // The packet became the reject reply (TCP RST / ICMP unreachable) to the client.
            // (A hairpinned packet is sent back too, translated: it goes on below.)
            return Ok(TraceResult {
                verdict: "reject",
                dnat: None,
                snat: None,
                reason,
                code,
                origin,
                hook: Some(hook.name()),
                service,
                policy: None,
            });
        }
        let parsed = after.ok_or_else(|| TraceError::Packet("unparsable output frame".into()))?;
        let dnat = (parsed.dst != input.dst || parsed.dport != input.dport)
            .then(|| format_endpoint(parsed.dst, parsed.dport));
        let mut snat = (parsed.src != input.src).then(|| parsed.src.to_string());
        let into_pod = self.local_endpoint(parsed.dst);
        // Leaving the node (not into one of its pods), the external interface's egress
        // program masquerades the source of connections that need it (nothing else).
        if !into_pod && !self.desired.local_endpoints.contains(&parsed.dst) {
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
                    policy: None,
                });
            }
            if egress.reason == Some(Reason::NatMasqSource) {
                reason = format!(
                    "{reason}; leaving the node: {}",
                    Reason::NatMasqSource.describe()
                );
            }
            let left = packet::parse_frame(&egress.frame)
                .map_err(|e| TraceError::Packet(e.to_string()))?;
            snat = (left.src != input.src).then(|| left.src.to_string());
        }
        // Into a pod of this node: its to-pod hook (ingress policy) runs next.
        let mut last_hook = hook;
        let mut verdict = if dnat.is_some() { "dnat" } else { "pass" };
        let mut ingress_denied = false;
        if into_pod {
            let into = testrun::run(&mut self.dp, Hook::TcToPod, &out.frame)?;
            last_hook = Hook::TcToPod;
            if into.dropped {
                ingress_denied = into.reason == Some(Reason::DropPolicyIngress);
                verdict = "drop";
                code = into.reason.map(|r| r.name());
                reason = describe(into.reason, service.as_deref());
            }
        }
        let policy = self.policy_trace(
            parsed.src,
            parsed.dst,
            proto,
            parsed.dport,
            false,
            ingress_denied,
        );
        Ok(TraceResult {
            verdict,
            dnat,
            snat,
            reason,
            code,
            origin,
            hook: Some(last_hook.name()),
            service,
            policy,
        })
    }
}

/// Why, for people: the counter's description, and the Service port when there is one.
fn describe(reason: Option<Reason>, service: Option<&str>) -> String {
    let why = reason
        .map(|r| r.describe().to_string())
        .unwrap_or_else(|| "no counter moved (unexpected)".into());
    match service {
        Some(svc) => format!("{why} [service {svc}]"),
        None => why,
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
    if let Some(p) = &r.policy {
        for (dir, end) in [("egress", &p.egress), ("ingress", &p.ingress)] {
            let who = end.pod.as_deref().unwrap_or("-");
            let by = if end.policies.is_empty() {
                String::new()
            } else {
                format!(" by {}", end.policies.join(", "))
            };
            s += &format!("\n  {dir:<9}{who}: {}{by}", end.verdict);
        }
        if !p.consistent {
            s += "\n  WARNING:  the datapath's policy verdict differs from the reference evaluator's";
        }
    }
    s += &format!("\n  why:       {}\n", r.reason);
    s
}

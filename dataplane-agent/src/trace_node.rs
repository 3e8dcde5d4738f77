//! `trace` for traffic from the node itself (host processes, hostNetwork pods): it meets no
//! packet program, only the socket-level hooks (`bpf::socklb`), which BPF_PROG_TEST_RUN
//! cannot run. The answer is read from the same maps the hook reads: the frontend's master
//! entry and its backend slots. The choice among several backends is made per `connect()`
//! (uniformly at random, or the namespace's affinity backend), so it is reported as the
//! candidates rather than re-implemented here.

use std::net::IpAddr;

use aya::maps::MapError;
use dataplane_common::Reason;

use crate::bpf::{abi, maps::Maps};
use crate::desired::{Frontend, Protocol};
use crate::trace::format_endpoint;

/// What the socket-level hooks do with a node socket's `connect()`/`sendmsg()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeVerdict {
    /// `socketLB: false`: nothing translates the node's own traffic.
    NoHook,
    /// The protocol has no socket-level translation (SCTP).
    Untranslated,
    /// Not a service frontend: the call proceeds untouched.
    NotService,
    /// A frontend without endpoints: refused with ECONNREFUSED.
    Refused,
    /// Rewritten to one of these backends (`IP:PORT`), chosen per call.
    Backends(Vec<String>),
}

/// The hook name `trace` reports for this path.
pub const HOOK: &str = "cgroup connect/sendmsg (socket)";

/// Read what the socket-level hook would find for `fe` in the maps.
pub fn node_verdict(maps: &Maps, socket_lb: bool, fe: &Frontend) -> Result<NodeVerdict, MapError> {
    if !socket_lb {
        return Ok(NodeVerdict::NoHook);
    }
    if fe.proto == Protocol::Sctp {
        return Ok(NodeVerdict::Untranslated);
    }
    let master = match maps.services.get(&abi::service_key(fe, 0), 0) {
        Ok(v) => v,
        Err(MapError::KeyNotFound) => return Ok(NodeVerdict::NotService),
        Err(e) => return Err(e),
    };
    if master.count == 0 {
        return Ok(NodeVerdict::Refused);
    }
    let mut out = Vec::new();
    for slot in 1..=master.count {
        let id = maps
            .services
            .get(&abi::service_key(fe, slot), 0)?
            .backend_id;
        let be = maps.backends.get(&id, 0)?;
        out.push(format_endpoint(
            abi::ip_from16(be.addr),
            u16::from_be(be.port_be),
        ));
    }
    out.sort();
    out.dedup();
    Ok(NodeVerdict::Backends(out))
}

/// The `trace` fields of a verdict: (verdict, dnat, reason, counter name, hook).
pub fn describe(
    v: &NodeVerdict,
    dst: IpAddr,
) -> (
    &'static str,
    Option<String>,
    String,
    Option<&'static str>,
    Option<&'static str>,
) {
    match v {
        NodeVerdict::NoHook => (
            "pass",
            None,
            "from the node itself with socketLB: false: no skiff hook on this path; \
             passed untranslated"
                .into(),
            None,
            None,
        ),
        NodeVerdict::Untranslated => (
            "pass",
            None,
            "from the node itself: the socket-level path translates TCP and UDP only; \
             passed untranslated"
                .into(),
            None,
            None,
        ),
        NodeVerdict::NotService => (
            "pass",
            None,
            format!("from the node itself: {dst} is not a service frontend; connect() proceeds untouched"),
            None,
            Some(HOOK),
        ),
        NodeVerdict::Refused => (
            "reject",
            None,
            Reason::DropSockNoEndpoints.describe().into(),
            Some(Reason::DropSockNoEndpoints.name()),
            Some(HOOK),
        ),
        NodeVerdict::Backends(bes) => {
            let dnat = (bes.len() == 1).then(|| bes[0].clone());
            let reason = if bes.len() == 1 {
                Reason::SockNat.describe().to_string()
            } else {
                format!(
                    "{}; chosen per connect()/sendmsg() among {} (uniformly at random, or \
                     the network namespace's session-affinity backend)",
                    Reason::SockNat.describe(),
                    bes.join(", ")
                )
            };
            ("dnat", dnat, reason, Some(Reason::SockNat.name()), Some(HOOK))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_follow_the_verdict() {
        let dst: IpAddr = "10.96.0.10".parse().unwrap();
        let (v, dnat, _, code, hook) = describe(&NodeVerdict::NoHook, dst);
        assert_eq!((v, dnat, code, hook), ("pass", None, None, None));
        let (v, _, reason, code, hook) = describe(&NodeVerdict::Refused, dst);
        assert_eq!(v, "reject");
        assert!(reason.contains("ECONNREFUSED"), "{reason}");
        assert_eq!(code, Some("sock_no_endpoints"));
        assert_eq!(hook, Some(HOOK));
        let one = NodeVerdict::Backends(vec!["10.244.1.11:8080".into()]);
        let (v, dnat, _, code, _) = describe(&one, dst);
        assert_eq!(
            (v, dnat.as_deref(), code),
            ("dnat", Some("10.244.1.11:8080"), Some("sock_nat"))
        );
        let two = NodeVerdict::Backends(vec!["10.244.1.11:8080".into(), "10.244.1.12:8080".into()]);
        let (v, dnat, reason, _, _) = describe(&two, dst);
        assert_eq!((v, dnat), ("dnat", None));
        assert!(
            reason.contains("10.244.1.11:8080, 10.244.1.12:8080"),
            "{reason}"
        );
        let (v, _, reason, _, hook) = describe(&NodeVerdict::NotService, dst);
        assert_eq!((v, hook), ("pass", Some(HOOK)));
        assert!(reason.contains("10.96.0.10"));
    }
}

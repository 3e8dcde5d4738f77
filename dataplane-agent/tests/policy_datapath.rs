//! NetworkPolicy in the real eBPF programs, loaded into this kernel and run on crafted packets
//! with BPF_PROG_TEST_RUN: egress at the from-pod hook (`skiff_tc_pod`), ingress at the to-pod
//! hook (`skiff_tc_to_pod`). The maps are filled directly with ABI values (the policy compiler
//! is tested on its own). Needs root; without it these tests fail, they never skip.

use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use dataplane_common::{
    policy::{
        Endpoint, IpKey, PolicyKey, PolicyValue, PortRange, DIR_EGRESS, DIR_INGRESS,
        EP_F_EGRESS_ISOLATED, EP_F_INGRESS_ISOLATED, IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD,
        POL_F_ALL_PORTS, POL_MAX_RANGES, POL_PROTO_ANY,
    },
    Reason, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
use skiff::bpf::{
    abi::addr16,
    events::{self, Direction, EventStream, VerdictEvent},
    pins::PinDir,
    testrun::{self, Hook, RunOutcome},
    writer::Writer,
    Datapath,
};
use skiff::desired::{
    BackendAddr, DesiredState, Frontend, FrontendEntry, Protocol, ServicePortRef,
};
use skiff::packet::{self, FlowSpec, L4Proto, ParsedFrame, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use skiff_testbed::PrivateBpffs;

// Pods of this node, another node's pod, the node itself, and the world.
const A: &str = "10.244.1.5";
const B: &str = "10.244.1.11";
const REMOTE: &str = "10.244.2.6";
const NODE: &str = "192.168.1.10";
const WORLD: &str = "198.51.100.7";
const EP_A: u32 = 1;
const EP_B: u32 = 2;
const ID_A: u32 = 300;
const ID_B: u32 = 301;
const ID_REMOTE: u32 = 302;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn load() -> Datapath {
    Datapath::load().expect("loading the eBPF programs (these tests need root)")
}

fn endpoint(dp: &mut Datapath, addr: &str, id: u32, flags: u32) {
    let key = IpKey {
        addr: addr16(ip(addr)),
    };
    dp.maps
        .policy_endpoints
        .insert(key, Endpoint { id, flags }, 0)
        .unwrap();
}

/// `prefix` like "10.244.0.0/16" or "fd00::/64"; IPv4 prefixes are IPv4-mapped (+96 bits).
fn identity(dp: &mut Datapath, prefix: &str, id: u32) {
    let (addr, len) = prefix.split_once('/').unwrap();
    let a = ip(addr);
    let len: u32 = len.parse().unwrap();
    let bits = if a.is_ipv4() { len + 96 } else { len };
    let key = Key::new(bits, IpKey { addr: addr16(a) });
    dp.maps.policy_identities.insert(&key, id, 0).unwrap();
}

/// Every local and remote pod with its identity, as the compiler would write them.
fn identities(dp: &mut Datapath) {
    identity(dp, &format!("{A}/32"), ID_A);
    identity(dp, &format!("{B}/32"), ID_B);
    identity(dp, &format!("{REMOTE}/32"), ID_REMOTE);
    identity(dp, &format!("{NODE}/32"), IDENTITY_HOST);
}

fn rule_key(ep: u32, identity: u32, proto: u8, dir: u8) -> PolicyKey {
    PolicyKey {
        endpoint: ep,
        identity,
        proto,
        dir,
        _pad: [0; 2],
    }
}

fn rule(dp: &mut Datapath, ep: u32, identity: u32, proto: u8, dir: u8, ranges: &[(u16, u16)]) {
    let mut v = PolicyValue {
        flags: if ranges.is_empty() {
            POL_F_ALL_PORTS
        } else {
            0
        },
        count: ranges.len() as u16,
        ranges: [PortRange::default(); POL_MAX_RANGES],
    };
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        v.ranges[i] = PortRange { lo: *lo, hi: *hi };
    }
    dp.maps
        .policy_rules
        .insert(rule_key(ep, identity, proto, dir), v, 0)
        .unwrap();
}

fn delete_rule(dp: &mut Datapath, ep: u32, identity: u32, proto: u8, dir: u8) {
    dp.maps
        .policy_rules
        .remove(&rule_key(ep, identity, proto, dir))
        .unwrap();
}

fn flow(proto: L4Proto, src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> FlowSpec {
    FlowSpec::new(proto, ip(src), sport, ip(dst), dport)
        .with_flags(flags)
        .with_payload(b"policy".to_vec())
}

fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> FlowSpec {
    flow(L4Proto::Tcp, src, sport, dst, dport, flags)
}

fn run(dp: &mut Datapath, hook: Hook, s: &FlowSpec) -> RunOutcome {
    let frame = packet::build_frame(s).unwrap();
    testrun::run(dp, hook, &frame).unwrap()
}

fn run_parsed(dp: &mut Datapath, hook: Hook, s: &FlowSpec) -> (RunOutcome, ParsedFrame) {
    let out = run(dp, hook, s);
    let p = packet::parse_frame(&out.frame).unwrap();
    (out, p)
}

/// Run and check the counted reason; the verdict must agree with it.
#[track_caller]
fn expect(dp: &mut Datapath, hook: Hook, s: &FlowSpec, want: Reason) {
    let out = run(dp, hook, s);
    assert_eq!(
        out.reason,
        Some(want),
        "{hook:?} {:?} {}:{} -> {}:{}",
        s.proto,
        s.src,
        s.sport,
        s.dst,
        s.dport
    );
    assert_eq!(out.dropped, want.is_drop(), "{hook:?}: verdict of {want:?}");
}

/// Egress at the source pod's hook passes with the service reason (no service here).
const EGRESS_PASS: Reason = Reason::PassNoService;

fn drain(dp: &mut Datapath) -> Vec<VerdictEvent> {
    events::drain(&mut dp.maps.policy_events, 1_000)
        .iter()
        .map(|e| VerdictEvent::from_raw(e).unwrap())
        .collect()
}

#[test]
fn egress_is_allowed_by_a_rule_and_denied_without_one() {
    let mut dp = load();
    identities(&mut dp);
    endpoint(&mut dp, A, EP_A, EP_F_EGRESS_ISOLATED);
    rule(&mut dp, EP_A, ID_REMOTE, PROTO_TCP, DIR_EGRESS, &[(80, 80)]);
    expect(
        &mut dp,
        Hook::TcPod,
        &tcp(A, 40_000, REMOTE, 80, TCP_SYN),
        EGRESS_PASS,
    );
    expect(
        &mut dp,
        Hook::TcPod,
        &tcp(A, 40_001, REMOTE, 81, TCP_SYN),
        Reason::DropPolicyEgress,
    );
    // Another destination, same port: not this rule's peer.
    expect(
        &mut dp,
        Hook::TcPod,
        &tcp(A, 40_002, B, 80, TCP_SYN),
        Reason::DropPolicyEgress,
    );
    // The rule is for egress: the same peer and port are not allowed in.
    endpoint(
        &mut dp,
        A,
        EP_A,
        EP_F_EGRESS_ISOLATED | EP_F_INGRESS_ISOLATED,
    );
    expect(
        &mut dp,
        Hook::TcToPod,
        &tcp(REMOTE, 40_000, A, 80, TCP_SYN),
        Reason::DropPolicyIngress,
    );
}

#[test]
fn ingress_is_allowed_by_a_rule_and_denied_without_one() {
    let mut dp = load();
    identities(&mut dp);
    endpoint(&mut dp, B, EP_B, EP_F_INGRESS_ISOLATED);
    rule(&mut dp, EP_B, ID_A, PROTO_TCP, DIR_INGRESS, &[(80, 80)]);
    expect(
        &mut dp,
        Hook::TcToPod,
        &tcp(A, 40_000, B, 80, TCP_SYN),
        Reason::PassPolicyAllowed,
    );
    expect(
        &mut dp,
        Hook::TcToPod,
        &tcp(A, 40_001, B, 81, TCP_SYN),
        Reason::DropPolicyIngress,
    );
    expect(
        &mut dp,
        Hook::TcToPod,
        &tcp(REMOTE, 40_000, B, 80, TCP_SYN),
        Reason::DropPolicyIngress,
    );
    expect(
        &mut dp,
        Hook::TcToPod,
        &tcp(WORLD, 40_000, B, 80, TCP_SYN),
        Reason::DropPolicyIngress,
    );
    // B is not isolated for egress: it may connect anywhere.
    expect(
        &mut dp,
        Hook::TcPod,
        &tcp(B, 40_000, WORLD, 443, TCP_SYN),
        EGRESS_PASS,
    );
}

#[test]
fn tcp_udp_and_sctp_ports_match_ranges_and_their_edges() {
    let mut dp = load();
    identities(&mut dp);
    endpoint(&mut dp, B, EP_B, EP_F_INGRESS_ISOLATED);
    let ranges = [(80, 80), (8000, 8100), (65_535, 65_535)];
    for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP] {
        rule(&mut dp, EP_B, ID_A, proto, DIR_INGRESS, &ranges);
    }
    let cases = [
        (79, false),
        (80, true),
        (81, false),
        (7_999, false),
        (8_000, true),
        (8_050, true),
        (8_100, true),
        (8_101, false),
        (65_534, false),
        (65_535, true),
    ];
    for (l4, name) in [
        (L4Proto::Tcp, "tcp"),
        (L4Proto::Udp, "udp"),
        (L4Proto::Sctp, "sctp"),
    ] {
        for (i, (port, allowed)) in cases.iter().enumerate() {
            let s = flow(l4, A, 30_000 + i as u16, B, *port, TCP_SYN);
            let want = if *allowed {
                Reason::PassPolicyAllowed
            } else {
                Reason::DropPolicyIngress
            };
            let out = run(&mut dp, Hook::TcToPod, &s);
            assert_eq!(out.reason, Some(want), "{name} port {port}");
        }
    }
    // A rule for one protocol does not allow another.
    delete_rule(&mut dp, EP_B, ID_A, PROTO_UDP, DIR_INGRESS);
    expect(
        &mut dp,
        Hook::TcToPod,
        &flow(L4Proto::Udp, A, 31_000, B, 80, 0),
        Reason::DropPolicyIngress,
    );
    expect(
        &mut dp,
        Hook::TcToPod,
        &tcp(A, 31_000, B, 80, TCP_SYN),
        Reason::PassPolicyAllowed,
    );
}

#[test]
fn a_rule_without_ports_allows_icmp_a_port_rule_does_not() {
    let mut dp = load();
    identities(&mut dp);
    endpoint(&mut dp, B, EP_B, EP_F_INGRESS_ISOLATED);
    endpoint(&mut dp, A, EP_A, EP_F_EGRESS_ISOLATED);
    rule(&mut dp, EP_B, ID_A, PROTO_TCP, DIR_INGRESS, &[(0, 65_535)]);
    rule(&mut dp, EP_A, ID_B, PROTO_TCP, DIR_EGRESS, &[(0, 65_535)]);
    let ping = FlowSpec::new(L4Proto::Icmp, ip(A), 7, ip(B), 1);
    expect(&mut dp, Hook::TcToPod, &ping, Reason::DropPolicyIngress);
    expect(&mut dp, Hook::TcPod, &ping, Reason::DropPolicyEgress);
    // Rules without ports: every protocol, ICMP included.
    rule(&mut dp, EP_B, ID_A, POL_PROTO_ANY, DIR_INGRESS, &[]);
    rule(&mut dp, EP_A, ID_B, POL_PROTO_ANY, DIR_EGRESS, &[]);
    expect(&mut dp, Hook::TcPod, &ping, Reason::PassOtherProto);
    // The egress hook recorded the echo; the ingress hook still checks its own policy.
    expect(&mut dp, Hook::TcToPod, &ping, Reason::PassPolicyAllowed);
    // The echo reply is a reply at both hooks.
    let pong = ping.reversed();
    expect(&mut dp, Hook::TcPod, &pong, Reason::PassOtherProto);
    expect(&mut dp, Hook::TcToPod, &pong, Reason::PassPolicyTracked);
    // The rule without ports allows any port of the port protocols too.
    expect(
        &mut dp,
        Hook::TcToPod,
        &flow(L4Proto::Udp, A, 5_000, B, 53, 0),
        Reason::PassPolicyAllowed,
    );
}

#[test]
fn identity_any_rules_allow_every_peer() {
    let mut dp = load();
    identities(&mut dp);
    endpoint(&mut dp, B, EP_B, EP_F_INGRESS_ISOLATED);
    rule(
        &mut dp,
        EP_B,
        IDENTITY_ANY,
        PROTO_TCP,
        DIR_INGRESS,
        &[(443, 443)],
    );
    for (i, src) in [A, REMOTE, WORLD, "2001:db8::1"].iter().enumerate() {
        let dst = if src.contains(':') {
            "fd00:244:1::11"
        } else {
            B
        };
        if src.contains(':') {
            endpoint(&mut dp, dst, EP_B, EP_F_INGRESS_ISOLATED);
        }
        let sport = 40_000 + i as u16;
        expect(
            &mut dp,
            Hook::TcToPod,
            &tcp(src, sport, dst, 443, TCP_SYN),
            Reason::PassPolicyAllowed,
        );
        expect(
            &mut dp,
            Hook::TcToPod,
            &tcp(src, sport, dst, 80, TCP_SYN),
            Reason::DropPolicyIngress,
        );
    }
}

#[test]
fn the_most_specific_prefix_decides_the_identity() {
    // An ipBlock 10.20.0.0/16 except 10.20.9.0/24: the except prefix is a longer prefix
    // with an identity of its own, which no rule allows. Same for IPv6.
    const BLOCK: u32 = 400;
    const EXCEPT: u32 = 401;
    let mut dp = load();
    endpoint(&mut dp, B, EP_B, EP_F_INGRESS_ISOLATED);
    endpoint(&mut dp, "fd00:244:1::11", EP_B, EP_F_INGRESS_ISOLATED);
    identity(&mut dp, "10.20.0.0/16", BLOCK);
    identity(&mut dp, "10.20.9.0/24", EXCEPT);
    identity(&mut dp, "2001:db8::/32", BLOCK);
    identity(&mut dp, "2001:db8:9::/48", EXCEPT);
    rule(&mut dp, EP_B, BLOCK, PROTO_TCP, DIR_INGRESS, &[(80, 80)]);
    let cases = [
        ("10.20.3.3", B, true),
        ("10.20.9.9", B, false),
        ("10.21.0.1", B, false),
        ("2001:db8:1::1", "fd00:244:1::11", true),
        ("2001:db8:9::9", "fd00:244:1::11", false),
        ("2001:db9::1", "fd00:244:1::11", false),
    ];
    for (i, (src, dst, allowed)) in cases.iter().enumerate() {
        let want = if *allowed {
            Reason::PassPolicyAllowed
        } else {
            Reason::DropPolicyIngress
        };
        expect(
            &mut dp,
            Hook::TcToPod,
            &tcp(src, 40_000 + i as u16, dst, 80, TCP_SYN),
            want,
        );
    }
    // The events name the identity the LPM lookup found (a miss is the world).
    let drops: Vec<u32> = drain(&mut dp).iter().map(|e| e.identity).collect();
    assert_eq!(drops, vec![EXCEPT, IDENTITY_WORLD, EXCEPT, IDENTITY_WORLD]);
}

#[test]
fn the_node_is_always_allowed() {
    let mut dp = load();
    identities(&mut dp);
    endpoint(
        &mut dp,
        B,
        EP_B,
        EP_F_INGRESS_ISOLATED | EP_F_EGRESS_ISOLATED,
    );
    // Isolated both ways without a single rule: only the node gets through.
    expect(
        &mut dp,
        Hook::TcToPod,
        &tcp(NODE, 40_000, B, 8080, TCP_SYN),
        Reason::PassPolicyAllowed,
    );
    expect(
        &mut dp,
        Hook::TcPod,
        &tcp(B, 40_000, NODE, 10_250, TCP_SYN),
        EGRESS_PASS,
    );
    expect(
        &mut dp,
        Hook::TcToPod,
        &tcp(A, 40_000, B, 8080, TCP_SYN),
        Reason::DropPolicyIngress,
    );
    expect(
        &mut dp,
        Hook::TcPod,
        &tcp(B, 40_001, A, 80, TCP_SYN),
        Reason::DropPolicyEgress,
    );
}

#[test]
fn endpoints_without_isolation_pass_and_are_tracked() {
    let mut dp = load();
    identities(&mut dp);
    endpoint(&mut dp, B, EP_B, 0);
    let s = tcp(A, 40_000, B, 80, TCP_SYN);
    expect(&mut dp, Hook::TcToPod, &s, Reason::PassPolicyNone);
    // Recorded: a policy added now does not cut the connection.
    endpoint(&mut dp, B, EP_B, EP_F_INGRESS_ISOLATED);
    expect(
        &mut dp,
        Hook::TcToPod,
        &tcp(A, 40_000, B, 80, TCP_ACK),
        Reason::PassPolicyTracked,
    );
    expect(
        &mut dp,
        Hook::TcToPod,
        &tcp(A, 40_001, B, 80, TCP_SYN),
        Reason::DropPolicyIngress,
    );
    // Not an endpoint of this node at all.
    expect(
        &mut dp,
        Hook::TcToPod,
        &tcp(A, 40_000, "10.244.1.99", 80, TCP_SYN),
        Reason::PassPolicyNone,
    );
    expect(
        &mut dp,
        Hook::TcPod,
        &tcp("10.244.1.99", 1, WORLD, 2, TCP_SYN),
        EGRESS_PASS,
    );
}

/// A and B on this node, each isolated both ways: A may connect to B:80 (A's egress and
/// B's ingress allow it), nothing else is allowed.
fn two_isolated_pods() -> Datapath {
    let mut dp = load();
    identities(&mut dp);
    let both = EP_F_INGRESS_ISOLATED | EP_F_EGRESS_ISOLATED;
    endpoint(&mut dp, A, EP_A, both);
    endpoint(&mut dp, B, EP_B, both);
    rule(&mut dp, EP_A, ID_B, PROTO_TCP, DIR_EGRESS, &[(80, 80)]);
    rule(&mut dp, EP_B, ID_A, PROTO_TCP, DIR_INGRESS, &[(80, 80)]);
    dp
}

#[test]
fn replies_of_an_allowed_connection_pass_both_hooks() {
    let mut dp = two_isolated_pods();
    let syn = tcp(A, 40_000, B, 80, TCP_SYN);
    expect(&mut dp, Hook::TcPod, &syn, EGRESS_PASS);
    expect(&mut dp, Hook::TcToPod, &syn, Reason::PassPolicyAllowed);
    // B's egress and A's ingress allow nothing, yet the replies pass.
    let synack = tcp(B, 80, A, 40_000, TCP_SYN | TCP_ACK);
    expect(&mut dp, Hook::TcPod, &synack, EGRESS_PASS);
    expect(&mut dp, Hook::TcToPod, &synack, Reason::PassPolicyTracked);
    let ack = tcp(A, 40_000, B, 80, TCP_ACK);
    expect(&mut dp, Hook::TcPod, &ack, EGRESS_PASS);
    expect(&mut dp, Hook::TcToPod, &ack, Reason::PassPolicyTracked);
    // The reverse direction as a connection of its own is denied at both ends.
    let back = tcp(B, 40_000, A, 80, TCP_SYN);
    expect(&mut dp, Hook::TcPod, &back, Reason::DropPolicyEgress);
    expect(&mut dp, Hook::TcToPod, &back, Reason::DropPolicyIngress);
    // A reply from another port of B is no reply.
    expect(
        &mut dp,
        Hook::TcPod,
        &tcp(B, 81, A, 40_000, TCP_ACK),
        Reason::DropPolicyEgress,
    );
}

#[test]
fn a_connection_one_end_denied_gives_its_peer_no_reply_path() {
    // A's egress allows A -> B:80, B's ingress does not: B cannot answer (or send anything
    // else to A) as if the connection had been accepted.
    let mut dp = two_isolated_pods();
    delete_rule(&mut dp, EP_B, ID_A, PROTO_TCP, DIR_INGRESS);
    rule(&mut dp, EP_B, IDENTITY_ANY, PROTO_TCP, DIR_EGRESS, &[]);
    let syn = tcp(A, 40_000, B, 80, TCP_SYN);
    expect(&mut dp, Hook::TcPod, &syn, EGRESS_PASS);
    expect(&mut dp, Hook::TcToPod, &syn, Reason::DropPolicyIngress);
    let fake = tcp(B, 80, A, 40_000, TCP_SYN | TCP_ACK);
    // B's egress allows it as a connection of its own; A's ingress does not.
    expect(&mut dp, Hook::TcPod, &fake, EGRESS_PASS);
    expect(&mut dp, Hook::TcToPod, &fake, Reason::DropPolicyIngress);
}

#[test]
fn an_established_connection_outlives_its_rule_until_it_ends() {
    let mut dp = two_isolated_pods();
    let syn = tcp(A, 40_000, B, 80, TCP_SYN);
    expect(&mut dp, Hook::TcPod, &syn, EGRESS_PASS);
    expect(&mut dp, Hook::TcToPod, &syn, Reason::PassPolicyAllowed);
    delete_rule(&mut dp, EP_A, ID_B, PROTO_TCP, DIR_EGRESS);
    delete_rule(&mut dp, EP_B, ID_A, PROTO_TCP, DIR_INGRESS);
    let ack = tcp(A, 40_000, B, 80, TCP_ACK);
    expect(&mut dp, Hook::TcPod, &ack, EGRESS_PASS);
    expect(&mut dp, Hook::TcToPod, &ack, Reason::PassPolicyTracked);
    // A new connection is checked against the policy as it is now.
    let other = tcp(A, 40_001, B, 80, TCP_SYN);
    expect(&mut dp, Hook::TcPod, &other, Reason::DropPolicyEgress);
    // The connection ends (RST); a SYN reusing its tuple is a new connection.
    let rst = tcp(B, 80, A, 40_000, TCP_RST | TCP_ACK);
    expect(&mut dp, Hook::TcPod, &rst, EGRESS_PASS);
    expect(&mut dp, Hook::TcToPod, &rst, Reason::PassPolicyTracked);
    expect(&mut dp, Hook::TcPod, &syn, Reason::DropPolicyEgress);
}

#[test]
fn fin_moves_a_tracked_connection_to_the_closing_timeout() {
    let mut dp = two_isolated_pods();
    let syn = tcp(A, 40_000, B, 80, TCP_SYN);
    expect(&mut dp, Hook::TcPod, &syn, EGRESS_PASS);
    expect(&mut dp, Hook::TcToPod, &syn, Reason::PassPolicyAllowed);
    let fin = tcp(A, 40_000, B, 80, TCP_FIN | TCP_ACK);
    expect(&mut dp, Hook::TcPod, &fin, EGRESS_PASS);
    let entries = dp.maps.policy_conntrack_entries().unwrap();
    let (_, v) = entries
        .iter()
        .find(|(k, _)| k.src == addr16(ip(A)) && k.dport_be == 80u16.to_be())
        .expect("the connection's entry");
    assert_ne!(v.tcp_state & dataplane_common::TCP_S_FIN, 0, "{v:?}");
    assert_eq!(
        v.flags,
        dataplane_common::policy::PCT_F_EGRESS_OK | dataplane_common::policy::PCT_F_INGRESS_OK
    );
}

/// A service on this node: ClusterIP 10.96.0.10:80 -> B:8080.
fn with_service(dp: &mut Datapath) -> Writer {
    let mut d = DesiredState::default();
    d.frontends.insert(
        Frontend {
            addr: ip("10.96.0.10"),
            port: 80,
            proto: Protocol::Tcp,
        },
        FrontendEntry {
            service: ServicePortRef {
                namespace: "default".into(),
                name: "web".into(),
                port_name: String::new(),
            },
            backends: vec![BackendAddr {
                addr: ip(B),
                port: 8080,
                proto: Protocol::Tcp,
            }],
        },
    );
    let mut w = Writer::new(&dp.maps).unwrap();
    w.sync(&mut dp.maps, &d).unwrap();
    w
}

#[test]
fn service_connections_are_checked_on_the_backend_and_their_replies_pass() {
    let mut dp = load();
    identities(&mut dp);
    let _w = with_service(&mut dp);
    let both = EP_F_INGRESS_ISOLATED | EP_F_EGRESS_ISOLATED;
    endpoint(&mut dp, A, EP_A, both);
    endpoint(&mut dp, B, EP_B, both);
    // Policies name the backend pod and its port, not the service.
    rule(&mut dp, EP_A, ID_B, PROTO_TCP, DIR_EGRESS, &[(8080, 8080)]);
    rule(&mut dp, EP_B, ID_A, PROTO_TCP, DIR_INGRESS, &[(8080, 8080)]);

    let (out, syn_b) = run_parsed(
        &mut dp,
        Hook::TcPod,
        &tcp(A, 40_000, "10.96.0.10", 80, TCP_SYN),
    );
    assert_eq!(out.reason, Some(Reason::NatNew));
    assert!(!out.dropped);
    assert_eq!((syn_b.dst, syn_b.dport), (ip(B), 8080));
    let out = testrun::run(&mut dp, Hook::TcToPod, &out.frame).unwrap();
    assert_eq!(out.reason, Some(Reason::PassPolicyAllowed));

    // B answers; its hook translates the source back to the service, and A's ingress (which
    // allows nothing) sees a reply from the service address.
    let (out, reply) = run_parsed(
        &mut dp,
        Hook::TcPod,
        &tcp(B, 8080, A, 40_000, TCP_SYN | TCP_ACK),
    );
    assert_eq!(out.reason, Some(Reason::NatReply));
    assert!(!out.dropped);
    assert_eq!((reply.src, reply.sport), (ip("10.96.0.10"), 80));
    let out = testrun::run(&mut dp, Hook::TcToPod, &out.frame).unwrap();
    assert_eq!(out.reason, Some(Reason::PassPolicyTracked));
    assert!(!out.dropped);

    // Established packets keep passing.
    let out = run(
        &mut dp,
        Hook::TcPod,
        &tcp(A, 40_000, "10.96.0.10", 80, TCP_ACK),
    );
    assert_eq!(out.reason, Some(Reason::NatEstablished));
    let out = testrun::run(&mut dp, Hook::TcToPod, &out.frame).unwrap();
    assert_eq!(out.reason, Some(Reason::PassPolicyTracked));

    // Allowing the service address and port instead of the backend allows nothing.
    identity(&mut dp, "10.96.0.10/32", 500);
    delete_rule(&mut dp, EP_A, ID_B, PROTO_TCP, DIR_EGRESS);
    rule(&mut dp, EP_A, 500, PROTO_TCP, DIR_EGRESS, &[(80, 80)]);
    expect(
        &mut dp,
        Hook::TcPod,
        &tcp(A, 40_001, "10.96.0.10", 80, TCP_SYN),
        Reason::DropPolicyEgress,
    );
    let e = drain(&mut dp).pop().expect("a drop event");
    assert_eq!((e.dst, e.dport), (ip(B), 8080), "checked on the backend");
    assert_eq!(e.identity, ID_B);
}

#[test]
fn drops_always_and_allows_on_request_produce_events() {
    let mut dp = load();
    identities(&mut dp);
    endpoint(&mut dp, B, EP_B, EP_F_INGRESS_ISOLATED);
    rule(&mut dp, EP_B, ID_A, PROTO_UDP, DIR_INGRESS, &[(53, 53)]);
    let allowed = flow(L4Proto::Udp, A, 5_353, B, 53, 0);
    let denied = flow(L4Proto::Udp, REMOTE, 5_354, B, 53, 0);
    expect(&mut dp, Hook::TcToPod, &allowed, Reason::PassPolicyAllowed);
    expect(&mut dp, Hook::TcToPod, &denied, Reason::DropPolicyIngress);
    let evs = drain(&mut dp);
    assert_eq!(evs.len(), 1, "only the drop: {evs:?}");
    let e = &evs[0];
    assert_eq!(
        (e.src, e.sport, e.dst, e.dport),
        (ip(REMOTE), 5_354, ip(B), 53)
    );
    assert_eq!(e.proto, PROTO_UDP);
    assert_eq!(e.direction, Direction::Ingress);
    assert!(!e.allowed);
    assert_eq!((e.endpoint, e.identity), (EP_B, ID_REMOTE));
    assert_eq!(e.reason, Some(Reason::DropPolicyIngress));
    assert!(e.ts_ns > 0);

    // With allow events: each new connection once, tracked packets not again.
    dp.maps.set_allow_events(true).unwrap();
    let second = flow(L4Proto::Udp, A, 5_355, B, 53, 0);
    expect(&mut dp, Hook::TcToPod, &second, Reason::PassPolicyAllowed);
    expect(&mut dp, Hook::TcToPod, &second, Reason::PassPolicyTracked);
    // An egress drop, too, with its direction.
    endpoint(&mut dp, A, EP_A, EP_F_EGRESS_ISOLATED);
    expect(&mut dp, Hook::TcPod, &second, Reason::DropPolicyEgress);
    let evs = drain(&mut dp);
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(evs[0].allowed);
    assert_eq!(evs[0].reason, Some(Reason::PassPolicyAllowed));
    assert_eq!((evs[0].sport, evs[0].identity), (5_355, ID_A));
    assert_eq!(evs[0].direction, Direction::Ingress);
    assert!(!evs[1].allowed);
    assert_eq!(evs[1].direction, Direction::Egress);
    assert_eq!((evs[1].endpoint, evs[1].identity), (EP_A, ID_B));
    assert_eq!(evs[1].reason, Some(Reason::DropPolicyEgress));

    dp.maps.set_allow_events(false).unwrap();
    endpoint(&mut dp, A, EP_A, 0);
    expect(
        &mut dp,
        Hook::TcToPod,
        &flow(L4Proto::Udp, A, 5_356, B, 53, 0),
        Reason::PassPolicyAllowed,
    );
    assert!(drain(&mut dp).is_empty());
}

#[test]
fn fragments_and_ipv6_neighbour_discovery_are_not_policy_checked() {
    let mut dp = load();
    identities(&mut dp);
    endpoint(&mut dp, B, EP_B, EP_F_INGRESS_ISOLATED);
    endpoint(&mut dp, "fd00:244:1::11", EP_B, EP_F_INGRESS_ISOLATED);
    // A non-first IPv4 fragment: no transport header to check (the first one is checked).
    let mut frame = packet::build_frame(&tcp(A, 40_000, B, 80, TCP_ACK)).unwrap();
    frame[14 + 6] = 0x00;
    frame[14 + 7] = 0x10;
    let out = testrun::run(&mut dp, Hook::TcToPod, &frame).unwrap();
    assert_eq!(out.reason, Some(Reason::PassFragment));
    assert!(!out.dropped);
    // ICMPv6: an echo request is checked; neighbour solicitation is not.
    let echo = FlowSpec::new(L4Proto::Icmpv6, ip("fe80::1"), 1, ip("fd00:244:1::11"), 1);
    expect(&mut dp, Hook::TcToPod, &echo, Reason::DropPolicyIngress);
    let mut ns = packet::build_frame(&echo).unwrap();
    ns[14 + 40] = 135;
    let out = testrun::run(&mut dp, Hook::TcToPod, &ns).unwrap();
    assert_eq!(out.reason, Some(Reason::PassPolicyNone));
    assert!(!out.dropped);
    // Not IP at all (ARP).
    let mut arp = packet::build_frame(&tcp(A, 1, B, 2, TCP_SYN)).unwrap();
    arp[12] = 0x08;
    arp[13] = 0x06;
    let out = testrun::run(&mut dp, Hook::TcToPod, &arp).unwrap();
    assert_eq!(out.reason, Some(Reason::PassNotIp));
}

#[test]
fn truncated_packets_get_a_safe_verdict_at_the_to_pod_hook() {
    let mut dp = load();
    identities(&mut dp);
    endpoint(&mut dp, B, EP_B, EP_F_INGRESS_ISOLATED);
    endpoint(&mut dp, "fd00:244:1::11", EP_B, EP_F_INGRESS_ISOLATED);
    rule(&mut dp, EP_B, IDENTITY_ANY, POL_PROTO_ANY, DIR_INGRESS, &[]);
    for s in [
        tcp(A, 40_000, B, 80, TCP_SYN),
        flow(L4Proto::Udp, A, 40_000, B, 53, 0),
        tcp("fd00:244:1::5", 40_000, "fd00:244:1::11", 80, TCP_SYN),
    ] {
        let frame = packet::build_frame(&s).unwrap();
        let ip_header = if s.src.is_ipv4() { 20 } else { 40 };
        let full_headers = frame.len() - s.payload.len();
        // BPF_PROG_TEST_RUN refuses an skb whose IP header is incomplete (EINVAL).
        for len in 14 + ip_header..full_headers {
            let out = testrun::run(&mut dp, Hook::TcToPod, &frame[..len])
                .unwrap_or_else(|e| panic!("{len}-byte prefix: {e}"));
            assert!(out.dropped, "{len}-byte prefix: {:?}", out.reason);
            assert_eq!(out.reason, Some(Reason::DropMalformed));
        }
    }
    // A truncated ICMPv6 message: no type to read, so checked like any other (and allowed
    // here by the rule without ports), never read out of bounds.
    let echo = FlowSpec::new(
        L4Proto::Icmpv6,
        ip("fd00:244:1::5"),
        1,
        ip("fd00:244:1::11"),
        1,
    );
    let frame = packet::build_frame(&echo).unwrap();
    for len in 14 + 40..14 + 44 {
        dp.maps.clear_flow_state().unwrap();
        let out = testrun::run(&mut dp, Hook::TcToPod, &frame[..len]).unwrap();
        assert_eq!(out.reason, Some(Reason::PassPolicyAllowed), "{len} bytes");
    }
}

#[test]
fn policy_state_and_events_are_pinned_for_observe_and_restarts() {
    let scratch = std::env::temp_dir().join(format!("skiff-policy-pins-{}", std::process::id()));
    let fs = PrivateBpffs::mount(&scratch, env!("CARGO_BIN_EXE_skiff")).unwrap();
    let pins = PinDir::open(fs.pin_dir()).unwrap();
    let syn = tcp(A, 40_000, B, 80, TCP_SYN);
    {
        let mut dp = Datapath::load_with(Some(&pins)).unwrap();
        identities(&mut dp);
        endpoint(&mut dp, B, EP_B, EP_F_INGRESS_ISOLATED);
        rule(&mut dp, EP_B, ID_A, PROTO_TCP, DIR_INGRESS, &[(80, 80)]);
        expect(&mut dp, Hook::TcToPod, &syn, Reason::PassPolicyAllowed);
    }
    // A restarted agent: rules and tracked connections are still there.
    let mut dp = Datapath::load_with(Some(&pins)).unwrap();
    delete_rule(&mut dp, EP_B, ID_A, PROTO_TCP, DIR_INGRESS);
    expect(
        &mut dp,
        Hook::TcToPod,
        &tcp(A, 40_000, B, 80, TCP_ACK),
        Reason::PassPolicyTracked,
    );
    // `skiff observe` opens the pinned ring on its own and sees the drop.
    let mut stream =
        EventStream::open_pinned(&pins.map_path(dataplane_common::maps::POLICY_EVENTS)).unwrap();
    assert!(!stream.wait(std::time::Duration::from_millis(10)).unwrap());
    expect(
        &mut dp,
        Hook::TcToPod,
        &tcp(A, 40_001, B, 80, TCP_SYN),
        Reason::DropPolicyIngress,
    );
    assert!(stream.wait(std::time::Duration::from_secs(5)).unwrap());
    let e = VerdictEvent::from_raw(&stream.next().expect("the drop event")).unwrap();
    assert_eq!((e.src, e.sport, e.dst, e.dport), (ip(A), 40_001, ip(B), 80));
    assert!(!e.allowed);
    assert!(stream.next().is_none());
    drop(dp);
}

/// An ICMP error from `src` to `dst` (type and code as given) quoting the IP header and the
/// first 8 transport bytes of `quoted`. Checksums are not recomputed: the programs do not
/// check them.
fn icmp_error(src: &str, dst: &str, ty: u8, code: u8, quoted: &FlowSpec) -> Vec<u8> {
    let inner = packet::build_frame(quoted).unwrap();
    let hdr = if quoted.src.is_ipv4() { 20 } else { 40 };
    let quote = inner[14..14 + hdr + 8].to_vec();
    let proto = if quoted.src.is_ipv4() {
        L4Proto::Icmp
    } else {
        L4Proto::Icmpv6
    };
    let outer = FlowSpec::new(proto, ip(src), 0, ip(dst), 0).with_payload(quote);
    let mut frame = packet::build_frame(&outer).unwrap();
    frame[14 + hdr] = ty;
    frame[14 + hdr + 1] = code;
    frame
}

#[track_caller]
fn expect_frame(dp: &mut Datapath, hook: Hook, frame: &[u8], want: Reason) {
    let out = testrun::run(dp, hook, frame).unwrap();
    assert_eq!(out.reason, Some(want), "{hook:?}");
    assert_eq!(out.dropped, want.is_drop(), "{hook:?}: verdict of {want:?}");
}

#[test]
fn icmp_errors_about_an_allowed_connection_pass_like_its_replies() {
    let mut dp = two_isolated_pods();
    rule(&mut dp, EP_A, ID_B, PROTO_UDP, DIR_EGRESS, &[(53, 53)]);
    rule(&mut dp, EP_B, ID_A, PROTO_UDP, DIR_INGRESS, &[(53, 53)]);
    let syn = tcp(A, 40_000, B, 80, TCP_SYN);
    expect(&mut dp, Hook::TcPod, &syn, EGRESS_PASS);
    expect(&mut dp, Hook::TcToPod, &syn, Reason::PassPolicyAllowed);
    // A router on the way says the path MTU is smaller ("fragmentation needed").
    let too_big = icmp_error(WORLD, A, 3, 4, &syn);
    expect_frame(&mut dp, Hook::TcToPod, &too_big, Reason::PassPolicyTracked);
    // An error quoting a connection that was never allowed is an ICMP packet like any
    // other: A allows no ICMP in.
    let unrelated = icmp_error(WORLD, A, 3, 4, &tcp(A, 40_001, B, 80, TCP_SYN));
    expect_frame(
        &mut dp,
        Hook::TcToPod,
        &unrelated,
        Reason::DropPolicyIngress,
    );
    // ... and so is one quoting another pod's connection.
    let not_mine = icmp_error(WORLD, A, 3, 4, &tcp(REMOTE, 40_000, B, 80, TCP_SYN));
    expect_frame(&mut dp, Hook::TcToPod, &not_mine, Reason::DropPolicyIngress);
    // B has no socket on UDP 53: its "port unreachable" leaves B (which allows no egress)
    // and reaches A (which allows no ICMP in).
    let query = flow(L4Proto::Udp, A, 5_353, B, 53, 0);
    expect(&mut dp, Hook::TcPod, &query, EGRESS_PASS);
    expect(&mut dp, Hook::TcToPod, &query, Reason::PassPolicyAllowed);
    let unreachable = icmp_error(B, A, 3, 3, &query);
    expect_frame(&mut dp, Hook::TcPod, &unreachable, Reason::PassOtherProto);
    expect_frame(
        &mut dp,
        Hook::TcToPod,
        &unreachable,
        Reason::PassPolicyTracked,
    );
    // An ICMP echo is not an error: still denied.
    let ping = FlowSpec::new(L4Proto::Icmp, ip(B), 1, ip(A), 1);
    expect(&mut dp, Hook::TcPod, &ping, Reason::DropPolicyEgress);
}

#[test]
fn icmpv6_packet_too_big_about_an_allowed_connection_passes() {
    let (a6, b6) = ("fd00:244:1::5", "fd00:244:1::11");
    let mut dp = load();
    let both = EP_F_INGRESS_ISOLATED | EP_F_EGRESS_ISOLATED;
    endpoint(&mut dp, a6, EP_A, both);
    identity(&mut dp, &format!("{b6}/128"), ID_B);
    rule(&mut dp, EP_A, ID_B, PROTO_TCP, DIR_EGRESS, &[(443, 443)]);
    let syn = tcp(a6, 40_000, b6, 443, TCP_SYN);
    expect(&mut dp, Hook::TcPod, &syn, EGRESS_PASS);
    let too_big = icmp_error("2001:db8::1", a6, 2, 0, &syn);
    expect_frame(&mut dp, Hook::TcToPod, &too_big, Reason::PassPolicyTracked);
    let other = icmp_error("2001:db8::1", a6, 2, 0, &tcp(a6, 40_001, b6, 443, TCP_SYN));
    expect_frame(&mut dp, Hook::TcToPod, &other, Reason::DropPolicyIngress);
    // A truncated quote is no proof of anything.
    let cut = &too_big[..too_big.len() - 6];
    expect_frame(&mut dp, Hook::TcToPod, cut, Reason::DropPolicyIngress);
}

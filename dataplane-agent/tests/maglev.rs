//! Maglev consistent hashing in the real eBPF programs (BPF_PROG_TEST_RUN): the backend a
//! flow gets is the one the user-space hash and table predict (so every node agrees), and
//! removing one of N backends moves about 1/N of the flows. Needs root; never skips.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::IterableMap;

use dataplane_common::{maglev::flow_hash, Reason};
use skiff::bpf::{
    abi,
    testrun::{self, Hook},
    writer::Writer,
    Datapath,
};
use skiff::desired::{
    BackendAddr, DesiredState, Frontend, FrontendEntry, Protocol, ServicePortRef,
};
use skiff::maglev::{lookup_table, DEFAULT_TABLE_SIZE};
use skiff::packet::{self, FlowSpec, L4Proto, TCP_SYN};

const VIP: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn fe(addr: &str) -> Frontend {
    Frontend {
        addr: ip(addr),
        port: 80,
        proto: Protocol::Tcp,
    }
}

fn backends(prefix: &str, n: usize) -> Vec<BackendAddr> {
    let mut v: Vec<BackendAddr> = (1..=n)
        .map(|i| BackendAddr {
            addr: ip(&format!("{prefix}{i}")),
            port: 8080,
            proto: Protocol::Tcp,
        })
        .collect();
    v.sort();
    v
}

/// Maglev frontends (table size `m`) with their backends; `affinity` adds ClientIP.
fn desired(entries: &[(Frontend, Vec<BackendAddr>)], m: u16, affinity: bool) -> DesiredState {
    let mut d = DesiredState::default();
    for (f, bes) in entries {
        d.frontends.insert(
            *f,
            FrontendEntry {
                service: ServicePortRef {
                    namespace: "default".into(),
                    name: format!("svc-{}", f.addr),
                    port_name: String::new(),
                },
                backends: bes.clone(),
            },
        );
        d.maglev.insert(*f, m);
        if affinity {
            d.session_affinity.insert(*f, 10_800);
        }
    }
    d
}

fn loaded(d: &DesiredState) -> (Datapath, Writer) {
    let mut dp = Datapath::load().expect("loading the eBPF programs (these tests need root)");
    let mut w = Writer::new(&dp.maps).unwrap();
    w.sync(&mut dp.maps, d).unwrap();
    (dp, w)
}

/// A flow's first packet (a SYN) through `hook`: the backend it was sent to.
fn first_packet(dp: &mut Datapath, hook: Hook, src: IpAddr, sport: u16, dst: IpAddr) -> SocketAddr {
    let s = FlowSpec {
        tcp_flags: TCP_SYN,
        ..FlowSpec::new(L4Proto::Tcp, src, sport, dst, 80)
    };
    let out = testrun::run(dp, hook, &packet::build_frame(&s).unwrap()).unwrap();
    assert_eq!(out.reason, Some(Reason::NatNew), "{src}:{sport} -> {dst}");
    let p = packet::parse_frame(&out.frame).unwrap();
    assert!(p.ip_checksum_ok && p.l4_checksum_ok);
    SocketAddr::new(p.dst, p.dport)
}

/// What user space predicts for the flow: `table[flow_hash(5-tuple) % M]`.
fn predicted(bes: &[BackendAddr], m: u16, src: IpAddr, sport: u16, dst: IpAddr) -> SocketAddr {
    let table = lookup_table(bes, m);
    let h = flow_hash(
        &abi::addr16(src),
        &abi::addr16(dst),
        sport,
        80,
        dataplane_common::PROTO_TCP,
    );
    let be = bes[table[(h % m as u32) as usize]];
    SocketAddr::new(be.addr, be.port)
}

/// Distinct client flows: source address and port.
fn flows(n: usize, v6: bool) -> Vec<(IpAddr, u16)> {
    (0..n)
        .map(|i| {
            let src = if v6 {
                ip(&format!("fd00:244::{:x}", i % 97 + 1))
            } else {
                ip(&format!("10.244.{}.{}", i % 7, i % 211 + 1))
            };
            (src, 20_000 + (i * 7) as u16)
        })
        .collect()
}

#[test]
fn the_kernel_picks_what_the_user_space_hash_and_table_predict_on_every_node() {
    let m = DEFAULT_TABLE_SIZE;
    let bes4 = backends("10.244.9.", 5);
    let bes6 = backends("fd00:244:9::", 5);
    let d = desired(
        &[(fe(VIP), bes4.clone()), (fe(VIP6), bes6.clone())],
        m,
        false,
    );
    let (mut node_a, _wa) = loaded(&d);
    // Node b has met other backends first: its backend ids differ, its choices must not.
    let other = desired(&[(fe("10.96.0.99"), backends("10.244.8.", 7))], m, false);
    let (mut node_b, mut wb) = loaded(&other);
    let mut both = d.clone();
    both.frontends.extend(other.frontends.clone());
    both.maglev.extend(other.maglev.clone());
    wb.sync(&mut node_b.maps, &both).unwrap();
    assert_ne!(
        node_a
            .maps
            .read_backends()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        node_b
            .maps
            .read_backends()
            .unwrap()
            .keys()
            .collect::<Vec<_>>()
    );

    for (v6, hook) in [
        (false, Hook::TcPod),
        (true, Hook::TcPod),
        (false, Hook::XdpExt),
    ] {
        let (vip, bes) = if v6 {
            (ip(VIP6), &bes6)
        } else {
            (ip(VIP), &bes4)
        };
        let mut seen = BTreeMap::new();
        for (src, sport) in flows(300, v6) {
            let want = predicted(bes, m, src, sport, vip);
            let a = first_packet(&mut node_a, hook, src, sport, vip);
            node_a.maps.clear_flow_state().unwrap();
            // The same 5-tuple again, from fresh state: the same backend.
            let again = first_packet(&mut node_a, hook, src, sport, vip);
            let b = first_packet(&mut node_b, hook, src, sport, vip);
            assert_eq!(
                (a, again, b),
                (want, want, want),
                "{src}:{sport} at {hook:?}"
            );
            *seen.entry(a).or_insert(0) += 1;
        }
        // And the choices are spread over every backend.
        assert_eq!(seen.len(), bes.len(), "{seen:?}");
        node_a.maps.clear_flow_state().unwrap();
        node_b.maps.clear_flow_state().unwrap();
    }
}

#[test]
fn removing_one_of_ten_backends_moves_about_a_tenth_of_the_flows_in_the_kernel() {
    const N: usize = 10;
    const FLOWS: usize = 2_000;
    let m = DEFAULT_TABLE_SIZE;
    let all = backends("10.244.9.", N);
    let (mut dp, mut w) = loaded(&desired(&[(fe(VIP), all.clone())], m, false));
    let vip = ip(VIP);
    let flows = flows(FLOWS, false);
    let choose = |dp: &mut Datapath| -> Vec<SocketAddr> {
        let chosen = flows
            .iter()
            .map(|(src, sport)| first_packet(dp, Hook::TcPod, *src, *sport, vip))
            .collect();
        dp.maps.clear_flow_state().unwrap();
        chosen
    };
    let before = choose(&mut dp);
    let gone = all[3];
    let gone_addr = SocketAddr::new(gone.addr, gone.port);
    let rest: Vec<BackendAddr> = all.iter().copied().filter(|b| *b != gone).collect();
    w.sync(&mut dp.maps, &desired(&[(fe(VIP), rest.clone())], m, false))
        .unwrap();
    let after = choose(&mut dp);

    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let on_gone = before.iter().filter(|a| **a == gone_addr).count();
    let survivors_moved = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| **a != gone_addr && a != b)
        .count();
    let fraction = moved as f64 / FLOWS as f64;
    println!(
        "maglev in the kernel, N={N}, M={m}, {FLOWS} flows: removing one backend moved \
         {moved} flows ({fraction:.4}; 1/N = {:.4}): its own {on_gone} and {survivors_moved} \
         of surviving backends ({:.4})",
        1.0 / N as f64,
        survivors_moved as f64 / FLOWS as f64
    );
    assert!(after.iter().all(|a| *a != gone_addr));
    assert!(on_gone > 0);
    assert!(
        fraction <= 1.0 / N as f64 + 0.03,
        "{fraction:.4} of the flows moved"
    );
    assert!(
        survivors_moved as f64 / FLOWS as f64 <= 0.03,
        "{survivors_moved} flows of surviving backends moved"
    );
    // Exactly what user space predicts for the new table, too.
    for ((src, sport), a) in flows.iter().zip(&after).take(200) {
        assert_eq!(*a, predicted(&rest, m, *src, *sport, vip));
    }
}

#[test]
fn session_affinity_comes_first_and_maglev_spreads_one_clients_connections() {
    let bes = backends("10.244.9.", 5);
    let client = ip("10.244.1.5");
    let vip = ip(VIP);
    let spread = |dp: &mut Datapath| -> usize {
        let mut seen = std::collections::BTreeSet::new();
        for sport in 30_000..30_040 {
            seen.insert(first_packet(dp, Hook::TcPod, client, sport, vip));
        }
        seen.len()
    };
    let (mut dp, _w) = loaded(&desired(&[(fe(VIP), bes.clone())], 251, false));
    assert!(spread(&mut dp) >= 4, "Maglev hashes the source port too");
    let (mut dp, _w) = loaded(&desired(&[(fe(VIP), bes)], 251, true));
    assert_eq!(spread(&mut dp), 1, "affinity keeps a client on one backend");
}

/// `memlock` of a map as the kernel reports it in fdinfo (bytes it charges for the map).
fn memlock(fd: i32) -> u64 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("memlock in fdinfo")
}

#[test]
fn a_maglev_service_at_the_default_table_size_costs_about_74_kib() {
    let (mut dp, mut w) = loaded(&DesiredState::default());
    let fd = dp.maps.maglev.map().fd().as_fd().as_raw_fd();
    let empty = memlock(fd);
    let d = desired(
        &[(fe(VIP), backends("10.244.9.", 10))],
        DEFAULT_TABLE_SIZE,
        false,
    );
    w.sync(&mut dp.maps, &d).unwrap();
    let one = memlock(fd);
    let chunks = dataplane_common::maglev::chunks(DEFAULT_TABLE_SIZE.into()) as u64;
    assert_eq!(w.current().maglev.len() as u64, chunks);
    let per_service = one - empty;
    println!(
        "maglev table M={DEFAULT_TABLE_SIZE}: {chunks} chunks, {per_service} bytes per Maglev \
         service (map memlock {empty} -> {one})"
    );
    assert_eq!(per_service, chunks * 512, "one 512-byte element per chunk");
    // A second frontend with the same backends shares the table.
    let mut two = d.clone();
    let extra = desired(
        &[(fe("192.0.2.1"), backends("10.244.9.", 10))],
        DEFAULT_TABLE_SIZE,
        false,
    );
    two.frontends.extend(extra.frontends);
    two.maglev.extend(extra.maglev);
    w.sync(&mut dp.maps, &two).unwrap();
    assert_eq!(memlock(fd), one);
}

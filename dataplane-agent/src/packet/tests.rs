use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::build::{IPV4_ID, SCTP_VTAG, TCP_ACK_SEQ, TCP_SEQ, TCP_WINDOW, TTL};
use super::*;

fn v4_pair() -> (IpAddr, IpAddr) {
    (
        IpAddr::V4(Ipv4Addr::new(10, 244, 1, 7)),
        IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
    )
}

fn v6_pair() -> (IpAddr, IpAddr) {
    (
        IpAddr::V6("fd00:10:244:1::7".parse::<Ipv6Addr>().unwrap()),
        IpAddr::V6("fd00:10:96::a".parse::<Ipv6Addr>().unwrap()),
    )
}

fn icmp_for(ipv6: bool) -> L4Proto {
    if ipv6 {
        L4Proto::Icmpv6
    } else {
        L4Proto::Icmp
    }
}

fn spec(proto: L4Proto, (src, dst): (IpAddr, IpAddr)) -> FlowSpec {
    FlowSpec::new(proto, src, 40000, dst, 443)
}

/// Every protocol × family × {empty, even, odd} payload.
fn all_specs() -> Vec<FlowSpec> {
    let mut specs = Vec::new();
    for pair in [v4_pair(), v6_pair()] {
        let ipv6 = pair.0.is_ipv6();
        for proto in [L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp, icmp_for(ipv6)] {
            for payload in [&b""[..], b"hello, skiff", b"odd"] {
                let flags = if payload.is_empty() {
                    TCP_SYN
                } else {
                    TCP_ACK | TCP_PSH
                };
                specs.push(spec(proto, pair).with_flags(flags).with_payload(payload));
            }
        }
    }
    specs
}

fn ip_header_len(spec: &FlowSpec) -> usize {
    if spec.src.is_ipv6() {
        40
    } else {
        20
    }
}

/// Bytes before the payload in the built L4 segment (SCTP: common header + DATA chunk header).
fn l4_header_len(proto: L4Proto) -> usize {
    match proto {
        L4Proto::Tcp => 20,
        L4Proto::Udp | L4Proto::Icmp | L4Proto::Icmpv6 => 8,
        L4Proto::Sctp => 12 + 16,
    }
}

/// Parsed and both checksums correct.
fn verifies(frame: &[u8]) -> bool {
    parse_frame(frame).is_ok_and(|p| p.checksums_ok())
}

fn flip(frame: &[u8], byte: usize, bit: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[byte] ^= 1 << bit;
    f
}

// ---- checksum known answers ----

#[test]
fn ipv4_header_checksum_known_answer() {
    let mut hdr = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(internet_checksum(&[&hdr]), 0xb861);
    hdr[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
    assert_eq!(internet_checksum(&[&hdr]), 0);
}

#[test]
fn internet_checksum_rfc1071_example_and_odd_lengths() {
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(internet_checksum(&[&data]), !0xddf2);
    // Split at odd boundaries: same as the concatenation.
    assert_eq!(
        internet_checksum(&[&data[..3], &data[3..4], &[], &data[4..7], &data[7..]]),
        !0xddf2
    );
    // A trailing odd byte is padded with zero.
    assert_eq!(internet_checksum(&[&[0x01]]), !0x0100);
    assert_eq!(internet_checksum(&[]), 0xffff);
    // Carries fold back in.
    assert_eq!(internet_checksum(&[&[0xff, 0xff, 0x00, 0x02]]), !0x0002);
}

#[test]
fn crc32c_known_answers() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(b""), 0);
    // RFC 3720 (iSCSI) B.4 test vectors.
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
    let inc: Vec<u8> = (0..32).collect();
    assert_eq!(crc32c(&inc), 0x46DD_794E);
    let dec: Vec<u8> = (0..32).rev().collect();
    assert_eq!(crc32c(&dec), 0x113F_DB5C);
}

#[test]
fn sctp_checksum_treats_the_field_as_zero() {
    let mut pkt: Vec<u8> = (0..40).collect();
    let mut zeroed = pkt.clone();
    zeroed[8..12].fill(0);
    assert_eq!(sctp_checksum(&pkt), crc32c(&zeroed));
    pkt[8..12].copy_from_slice(&[1, 2, 3, 4]);
    assert_eq!(sctp_checksum(&pkt), crc32c(&zeroed));
    // Short input: no panic, the field's bytes that exist count as zero.
    assert_eq!(sctp_checksum(&pkt[..10]), crc32c(&zeroed[..10]));
    assert_eq!(sctp_checksum(&[]), crc32c(&[]));
}

#[test]
fn l4_checksum_rejects_mixed_families() {
    let (s4, _) = v4_pair();
    let (_, d6) = v6_pair();
    assert!(matches!(
        l4_checksum(s4, d6, IPPROTO_UDP, &[0; 8]),
        Err(PacketError::MixedFamilies { .. })
    ));
}

/// Checksums of built frames as an independent implementation (dpkt 1.9.8) computes them for
/// the same bytes, so a mistake made alike in building and parsing cannot hide. The values
/// depend on the fixed header fields (IP id, TCP sequence, SCTP tags...).
#[test]
fn checksums_match_an_independent_implementation() {
    let hello = &b"hello, skiff"[..];
    let cases: [(FlowSpec, Option<u16>, &[u8]); 8] = [
        (spec(L4Proto::Tcp, v4_pair()), Some(0x0826), &[0xf0, 0x90]),
        (
            spec(L4Proto::Udp, v4_pair()).with_payload(hello),
            Some(0x081b),
            &[0x15, 0x25],
        ),
        (
            spec(L4Proto::Sctp, v4_pair()).with_payload(hello),
            Some(0x0794),
            &[0xbd, 0x00, 0x4a, 0x0f],
        ),
        (
            spec(L4Proto::Icmp, v4_pair()).with_payload(hello),
            Some(0x082b),
            &[0x23, 0xc3],
        ),
        (spec(L4Proto::Tcp, v6_pair()), None, &[0x09, 0xe8]),
        (
            spec(L4Proto::Udp, v6_pair()).with_payload(hello),
            None,
            &[0x2e, 0x7c],
        ),
        (
            spec(L4Proto::Sctp, v6_pair()),
            None,
            &[0xa8, 0x8f, 0x47, 0x75],
        ),
        (
            spec(L4Proto::Icmpv6, v6_pair()).with_payload(hello),
            None,
            &[0xae, 0x66],
        ),
    ];
    for (s, ip_sum, l4_sum) in cases {
        let f = build_frame(&s).unwrap();
        if let Some(sum) = ip_sum {
            assert_eq!(be16(&f, ETH_HLEN + 10), sum, "{s:?}");
        }
        let at = ETH_HLEN
            + ip_header_len(&s)
            + match s.proto {
                L4Proto::Tcp => 16,
                L4Proto::Udp => 6,
                L4Proto::Sctp => 8,
                L4Proto::Icmp | L4Proto::Icmpv6 => 2,
            };
        assert_eq!(&f[at..at + l4_sum.len()], l4_sum, "{s:?}");
    }
}

// ---- building ----

#[test]
fn new_defaults_to_a_syn_without_payload() {
    let (src, dst) = v4_pair();
    let s = FlowSpec::new(L4Proto::Tcp, src, 1234, dst, 80);
    assert_eq!((s.src, s.sport, s.dst, s.dport), (src, 1234, dst, 80));
    assert_eq!(s.tcp_flags, TCP_SYN);
    assert!(s.payload.is_empty());
}

#[test]
fn reversed_swaps_addresses_and_ports() {
    let s = spec(L4Proto::Udp, v6_pair()).with_payload(&b"x"[..]);
    let r = s.reversed();
    assert_eq!(
        (r.src, r.dst, r.sport, r.dport),
        (s.dst, s.src, s.dport, s.sport)
    );
    assert_eq!(
        (r.proto, &r.payload, r.tcp_flags),
        (s.proto, &s.payload, s.tcp_flags)
    );
    assert_eq!(r.reversed(), s);
}

#[test]
fn reversed_keeps_the_echo_identifier() {
    let s = spec(L4Proto::Icmp, v4_pair());
    let r = s.reversed();
    assert_eq!(
        (r.src, r.dst, r.sport, r.dport),
        (s.dst, s.src, s.sport, s.dport)
    );
}

#[test]
fn ipv4_header_fields() {
    let s = spec(L4Proto::Udp, v4_pair()).with_payload(&b"abc"[..]);
    let f = build_frame(&s).unwrap();
    assert_eq!(&f[0..6], &DST_MAC);
    assert_eq!(&f[6..12], &SRC_MAC);
    assert_eq!(be16(&f, 12), ETH_P_IP);
    let ip = &f[ETH_HLEN..];
    assert_eq!(ip[0], 0x45);
    assert_eq!(usize::from(be16(ip, 2)), 20 + 8 + 3);
    assert_eq!(be16(ip, 4), IPV4_ID);
    assert_eq!(be16(ip, 6), 0x4000, "DF, no fragment offset");
    assert_eq!(ip[8], 64);
    assert_eq!(ip[9], IPPROTO_UDP);
    assert_eq!(&ip[12..16], &[10, 244, 1, 7]);
    assert_eq!(&ip[16..20], &[10, 96, 0, 10]);
    assert_eq!(internet_checksum(&[&ip[..20]]), 0);
    assert_eq!(f.len(), ETH_HLEN + 20 + 8 + 3);
}

#[test]
fn ipv6_header_fields() {
    let s = spec(L4Proto::Tcp, v6_pair()).with_payload(&b"abcd"[..]);
    let f = build_frame(&s).unwrap();
    assert_eq!(be16(&f, 12), ETH_P_IPV6);
    let ip = &f[ETH_HLEN..];
    assert_eq!(&ip[0..4], &[0x60, 0, 0, 0]);
    assert_eq!(usize::from(be16(ip, 4)), 20 + 4);
    assert_eq!(ip[6], IPPROTO_TCP);
    assert_eq!(ip[7], 64);
    let IpAddr::V6(src) = s.src else {
        unreachable!()
    };
    let IpAddr::V6(dst) = s.dst else {
        unreachable!()
    };
    assert_eq!(&ip[8..24], &src.octets());
    assert_eq!(&ip[24..40], &dst.octets());
    assert_eq!(f.len(), ETH_HLEN + 40 + 20 + 4);
}

#[test]
fn tcp_header_fields() {
    for flags in [
        TCP_SYN,
        TCP_ACK,
        TCP_SYN | TCP_ACK,
        TCP_FIN | TCP_ACK,
        TCP_RST,
        TCP_PSH | TCP_ACK,
    ] {
        let s = spec(L4Proto::Tcp, v4_pair()).with_flags(flags);
        let f = build_frame(&s).unwrap();
        let tcp = &f[ETH_HLEN + 20..];
        assert_eq!((be16(tcp, 0), be16(tcp, 2)), (40000, 443));
        let seq = u32::from_be_bytes(tcp[4..8].try_into().unwrap());
        let ack = u32::from_be_bytes(tcp[8..12].try_into().unwrap());
        assert_eq!(seq, TCP_SEQ);
        assert_ne!(seq, 0);
        assert_eq!(ack, if flags & TCP_ACK != 0 { TCP_ACK_SEQ } else { 0 });
        assert_eq!(tcp[12], 0x50);
        assert_eq!(tcp[13], flags);
        assert_eq!(be16(tcp, 14), TCP_WINDOW);
        assert_eq!(TCP_WINDOW, 64240);
        assert_eq!(parse_frame(&f).unwrap().tcp_flags, flags);
    }
}

#[test]
fn udp_checksum_that_computes_to_zero_is_sent_as_ffff() {
    for pair in [v4_pair(), v6_pair()] {
        // With a 2-byte payload w, the sum is S0 + w where !S0 is the checksum for w = 0;
        // choosing w = !S0 makes the computed checksum 0.
        let zero = build_frame(&spec(L4Proto::Udp, pair).with_payload(vec![0, 0])).unwrap();
        let l4 = ETH_HLEN + if pair.0.is_ipv6() { 40 } else { 20 };
        let c0 = be16(&zero, l4 + 6);
        let s = spec(L4Proto::Udp, pair).with_payload(c0.to_be_bytes().to_vec());
        let f = build_frame(&s).unwrap();
        let mut seg = f[l4..].to_vec();
        seg[6..8].fill(0);
        assert_eq!(l4_checksum(s.src, s.dst, IPPROTO_UDP, &seg).unwrap(), 0);
        assert_eq!(be16(&f, l4 + 6), 0xffff);
        assert!(parse_frame(&f).unwrap().l4_checksum_ok);
    }
}

#[test]
fn udp_zero_checksum_means_none_on_ipv4_only() {
    for (pair, ok) in [(v4_pair(), true), (v6_pair(), false)] {
        let mut f = build_frame(&spec(L4Proto::Udp, pair).with_payload(&b"data"[..])).unwrap();
        let l4 = ETH_HLEN + if pair.0.is_ipv6() { 40 } else { 20 };
        f[l4 + 6..l4 + 8].fill(0);
        assert_eq!(parse_frame(&f).unwrap().l4_checksum_ok, ok, "{pair:?}");
    }
}

#[test]
fn sctp_init_and_data_chunks() {
    for pair in [v4_pair(), v6_pair()] {
        let l4 = ETH_HLEN + if pair.0.is_ipv6() { 40 } else { 20 };

        let init = build_frame(&spec(L4Proto::Sctp, pair)).unwrap();
        let sctp = &init[l4..];
        assert_eq!(sctp.len(), 12 + 20);
        assert_eq!((be16(sctp, 0), be16(sctp, 2)), (40000, 443));
        assert_eq!(&sctp[4..8], &[0; 4], "INIT travels with verification tag 0");
        assert_eq!((sctp[12], be16(sctp, 14)), (SCTP_CHUNK_INIT, 20));
        assert_ne!(&sctp[16..20], &[0; 4], "initiate tag must be nonzero");
        let mut zeroed = sctp.to_vec();
        zeroed[8..12].fill(0);
        assert_eq!(&sctp[8..12], &crc32c(&zeroed).to_le_bytes());
        let p = parse_frame(&init).unwrap();
        assert_eq!(
            (p.sctp_chunk_type, p.payload_len, p.l4_checksum_ok),
            (Some(SCTP_CHUNK_INIT), 0, true)
        );

        let data = build_frame(&spec(L4Proto::Sctp, pair).with_payload(&b"hello"[..])).unwrap();
        let sctp = &data[l4..];
        assert_eq!(sctp.len(), 12 + 16 + 8, "5 bytes of data padded to 8");
        assert_eq!(
            u32::from_be_bytes(sctp[4..8].try_into().unwrap()),
            SCTP_VTAG
        );
        assert_eq!(
            (sctp[12], sctp[13], be16(sctp, 14)),
            (SCTP_CHUNK_DATA, 0x03, 16 + 5)
        );
        assert_eq!(&sctp[28..33], b"hello");
        assert_eq!(&sctp[33..], &[0; 3]);
        let p = parse_frame(&data).unwrap();
        assert_eq!(
            (p.sctp_chunk_type, p.payload_len, p.l4_checksum_ok),
            (Some(SCTP_CHUNK_DATA), 5, true)
        );
    }
}

#[test]
fn icmp_echo_fields() {
    for pair in [v4_pair(), v6_pair()] {
        let ipv6 = pair.0.is_ipv6();
        let s = spec(icmp_for(ipv6), pair).with_payload(&b"ping"[..]);
        let f = build_frame(&s).unwrap();
        let icmp = &f[ETH_HLEN + ip_header_len(&s)..];
        assert_eq!(
            icmp[0],
            if ipv6 {
                ICMPV6_ECHO_REQUEST
            } else {
                ICMP_ECHO_REQUEST
            }
        );
        assert_eq!(icmp[1], 0);
        assert_eq!((be16(icmp, 4), be16(icmp, 6)), (40000, 443));
        // ICMPv4 has no pseudo-header; ICMPv6 does.
        if ipv6 {
            assert_ne!(internet_checksum(&[icmp]), 0);
        } else {
            assert_eq!(internet_checksum(&[icmp]), 0);
        }
        let p = parse_frame(&f).unwrap();
        assert_eq!((p.icmp_type, p.icmp_code), (Some(icmp[0]), Some(0)));
    }
}

#[test]
fn build_errors() {
    let (s4, d4) = v4_pair();
    let (s6, d6) = v6_pair();
    for (src, dst) in [(s4, d6), (s6, d4)] {
        let err = build_frame(&FlowSpec::new(L4Proto::Tcp, src, 1, dst, 2)).unwrap_err();
        assert_eq!(err, PacketError::MixedFamilies { src, dst });
    }
    let err = build_frame(&spec(L4Proto::Icmp, (s6, d6))).unwrap_err();
    assert!(matches!(
        err,
        PacketError::ProtoFamilyMismatch {
            proto: L4Proto::Icmp,
            family: "IPv6"
        }
    ));
    let err = build_frame(&spec(L4Proto::Icmpv6, (s4, d4))).unwrap_err();
    assert!(matches!(
        err,
        PacketError::ProtoFamilyMismatch {
            proto: L4Proto::Icmpv6,
            family: "IPv4"
        }
    ));

    // Size limits: IPv4 total length and IPv6 payload length are 16 bits.
    let max_v4 = 65535 - 20 - 8;
    assert!(build_frame(&spec(L4Proto::Udp, (s4, d4)).with_payload(vec![7; max_v4])).is_ok());
    assert!(matches!(
        build_frame(&spec(L4Proto::Udp, (s4, d4)).with_payload(vec![7; max_v4 + 1])),
        Err(PacketError::TooLarge { .. })
    ));
    let max_v6 = 65535 - 8;
    let big = build_frame(&spec(L4Proto::Udp, (s6, d6)).with_payload(vec![7; max_v6])).unwrap();
    assert!(parse_frame(&big).unwrap().checksums_ok());
    assert!(matches!(
        build_frame(&spec(L4Proto::Udp, (s6, d6)).with_payload(vec![7; max_v6 + 1])),
        Err(PacketError::TooLarge { .. })
    ));
    for proto in [L4Proto::Tcp, L4Proto::Sctp, L4Proto::Icmpv6] {
        assert!(matches!(
            build_frame(&spec(proto, (s6, d6)).with_payload(vec![7; 65536])),
            Err(PacketError::TooLarge { .. })
        ));
    }
    for proto in [L4Proto::Tcp, L4Proto::Sctp, L4Proto::Icmp] {
        assert!(matches!(
            build_frame(&spec(proto, (s4, d4)).with_payload(vec![7; 65536 - 20 - 8])),
            Err(PacketError::TooLarge { .. })
        ));
    }
}

// ---- round trips ----

#[test]
fn round_trip_every_protocol_and_family() {
    for s in all_specs() {
        let f = build_frame(&s).unwrap();
        let p = parse_frame(&f).unwrap();
        let ctx = format!("{s:?}");
        assert_eq!((p.dst_mac, p.src_mac), (DST_MAC, SRC_MAC), "{ctx}");
        assert_eq!(p.proto, s.proto, "{ctx}");
        assert_eq!((p.src, p.dst), (s.src, s.dst), "{ctx}");
        assert_eq!((p.sport, p.dport), (s.sport, s.dport), "{ctx}");
        let flags = if s.proto == L4Proto::Tcp {
            s.tcp_flags
        } else {
            0
        };
        assert_eq!(p.tcp_flags, flags, "{ctx}");
        assert_eq!(p.payload_len, s.payload.len(), "{ctx}");
        assert_eq!(p.ttl, TTL, "{ctx}");
        assert_eq!(p.l4_offset, ETH_HLEN + ip_header_len(&s), "{ctx}");
        assert!(p.ip_checksum_ok && p.l4_checksum_ok, "{ctx}");
        assert!(p.checksums_ok());
        assert_eq!(p.inner, None, "{ctx}");
        assert_eq!(p.icmp_type.is_some(), s.proto.is_icmp(), "{ctx}");
        assert_eq!(
            p.sctp_chunk_type.is_some(),
            s.proto == L4Proto::Sctp,
            "{ctx}"
        );
        let at = p.l4_offset + l4_header_len(s.proto);
        assert_eq!(&f[at..at + s.payload.len()], &s.payload[..], "{ctx}");
    }
}

#[test]
fn round_trip_of_the_reply_direction() {
    for s in all_specs() {
        let p = parse_frame(&build_frame(&s.reversed()).unwrap()).unwrap();
        assert_eq!((p.src, p.dst), (s.dst, s.src));
        assert!(p.checksums_ok());
    }
}

#[test]
fn extreme_ports_and_addresses() {
    let pairs = [
        (
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::BROADCAST),
        ),
        (
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::from([0xff; 16])),
        ),
    ];
    for (src, dst) in pairs {
        for proto in [
            L4Proto::Tcp,
            L4Proto::Udp,
            L4Proto::Sctp,
            icmp_for(src.is_ipv6()),
        ] {
            for (sport, dport) in [(0, 0), (65535, 65535), (0, 65535)] {
                let s = FlowSpec::new(proto, src, sport, dst, dport).with_flags(0xff);
                let p = parse_frame(&build_frame(&s).unwrap()).unwrap();
                assert_eq!((p.src, p.dst, p.sport, p.dport), (src, dst, sport, dport));
                assert!(p.checksums_ok(), "{s:?}");
            }
        }
    }
}

#[test]
fn ipv4_options_are_skipped() {
    for proto in [L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp, L4Proto::Icmp] {
        let s = spec(proto, v4_pair()).with_payload(&b"opt"[..]);
        let plain = build_frame(&s).unwrap();
        // Insert a Router Alert option (4 bytes): IHL 6, total length + 4, new checksum.
        let mut f = plain[..ETH_HLEN + 20].to_vec();
        f.extend_from_slice(&[0x94, 0x04, 0x00, 0x00]);
        f.extend_from_slice(&plain[ETH_HLEN + 20..]);
        f[ETH_HLEN] = 0x46;
        let total = be16(&f, ETH_HLEN + 2) + 4;
        f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
        f[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
        let sum = internet_checksum(&[&f[ETH_HLEN..ETH_HLEN + 24]]);
        f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&sum.to_be_bytes());

        let p = parse_frame(&f).unwrap();
        assert_eq!(p.l4_offset, ETH_HLEN + 24);
        assert_eq!(
            (p.proto, p.sport, p.dport, p.payload_len),
            (proto, 40000, 443, 3)
        );
        assert!(p.checksums_ok(), "{proto:?}");
    }
}

#[test]
fn ethernet_padding_is_ignored() {
    for s in all_specs() {
        let f = build_frame(&s).unwrap();
        let mut padded = f.clone();
        padded.resize(f.len().max(60) + 4, 0);
        assert_eq!(parse_frame(&padded).unwrap(), parse_frame(&f).unwrap());
    }
}

// ---- checksum verification catches corruption ----

#[test]
fn flipped_address_bits_are_detected() {
    for s in all_specs() {
        let f = build_frame(&s).unwrap();
        let ipv6 = s.src.is_ipv6();
        let addrs = if ipv6 {
            ETH_HLEN + 8..ETH_HLEN + 40
        } else {
            ETH_HLEN + 12..ETH_HLEN + 20
        };
        // The pseudo-header puts the addresses under the L4 checksum (not for ICMPv4 or SCTP).
        let pseudo = matches!(s.proto, L4Proto::Tcp | L4Proto::Udp | L4Proto::Icmpv6);
        for byte in addrs {
            for bit in 0..8 {
                let p = parse_frame(&flip(&f, byte, bit)).unwrap();
                assert_eq!(p.ip_checksum_ok, ipv6, "{s:?} byte {byte} bit {bit}");
                assert_eq!(p.l4_checksum_ok, !pseudo, "{s:?} byte {byte} bit {bit}");
            }
        }
    }
}

#[test]
fn flipped_port_and_payload_bits_are_detected() {
    for s in all_specs() {
        let f = build_frame(&s).unwrap();
        let l4 = ETH_HLEN + ip_header_len(&s);
        let payload_at = l4 + l4_header_len(s.proto);
        assert_eq!(&f[payload_at..payload_at + s.payload.len()], &s.payload[..]);
        let bytes = (l4..l4 + 4).chain(payload_at..payload_at + s.payload.len());
        for byte in bytes {
            for bit in 0..8 {
                let p = parse_frame(&flip(&f, byte, bit)).unwrap();
                assert!(p.ip_checksum_ok);
                assert!(!p.l4_checksum_ok, "{s:?} byte {byte} bit {bit}");
            }
        }
    }
}

/// Every single-bit flip after the Ethernet header either fails to parse or fails a checksum,
/// except in the fields no checksum covers (IPv6 traffic class, flow label, hop limit, and the
/// addresses of SCTP over IPv6, which has no pseudo-header).
#[test]
fn every_covered_bit_flip_is_detected() {
    for s in all_specs() {
        let f = build_frame(&s).unwrap();
        let ipv6 = s.src.is_ipv6();
        let uncovered = |byte: usize, bit: u8| {
            let at = byte - ETH_HLEN;
            ipv6 && ((at == 0 && bit < 4)
                || (1..4).contains(&at)
                || at == 7
                || (s.proto == L4Proto::Sctp && (8..40).contains(&at)))
        };
        for byte in ETH_HLEN..f.len() {
            for bit in 0..8 {
                let flipped = flip(&f, byte, bit);
                assert_eq!(
                    verifies(&flipped),
                    uncovered(byte, bit),
                    "{s:?} byte {byte} bit {bit}"
                );
            }
        }
    }
}

// ---- parse errors, truncation, no panics ----

#[test]
fn every_truncation_is_an_error() {
    for s in all_specs() {
        let f = build_frame(&s).unwrap();
        for n in 0..f.len() {
            assert!(parse_frame(&f[..n]).is_err(), "{s:?} cut at {n}");
        }
        assert!(parse_frame(&f).is_ok());
    }
    assert_eq!(
        parse_frame(&[]),
        Err(PacketError::Truncated {
            layer: "Ethernet header",
            need: 14,
            have: 0
        })
    );
}

#[test]
fn unsupported_ethertypes() {
    let mut f = build_frame(&spec(L4Proto::Tcp, v4_pair())).unwrap();
    for ethertype in [0x0806u16, 0x8100, 0x88a8, 0x0000] {
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        assert_eq!(
            parse_frame(&f),
            Err(PacketError::UnsupportedEthertype(ethertype))
        );
    }
}

/// Sets a header byte of an IPv4 frame and fixes the header checksum.
fn patch_v4(f: &mut [u8], at: usize, value: u8) {
    f[ETH_HLEN + at] = value;
    let ihl = usize::from(f[ETH_HLEN] & 0x0f) * 4;
    f[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
    let sum = internet_checksum(&[&f[ETH_HLEN..ETH_HLEN + ihl.max(20)]]);
    f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&sum.to_be_bytes());
}

#[test]
fn ip_layer_errors() {
    let v4 = build_frame(&spec(L4Proto::Tcp, v4_pair())).unwrap();
    let v6 = build_frame(&spec(L4Proto::Tcp, v6_pair())).unwrap();

    let mut f = v4.clone();
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    assert!(matches!(
        parse_frame(&f),
        Err(PacketError::BadIpVersion {
            expected: 6,
            found: 4
        })
    ));
    let mut f = v6.clone();
    f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    assert!(matches!(
        parse_frame(&f),
        Err(PacketError::BadIpVersion {
            expected: 4,
            found: 6
        })
    ));

    let mut f = v4.clone();
    patch_v4(&mut f, 0, 0x44);
    assert!(matches!(
        parse_frame(&f),
        Err(PacketError::Malformed { .. })
    ));

    let mut f = v4.clone();
    patch_v4(&mut f, 9, 47);
    assert_eq!(parse_frame(&f), Err(PacketError::UnsupportedIpProto(47)));
    let mut f = v4.clone();
    patch_v4(&mut f, 9, IPPROTO_ICMPV6);
    assert!(matches!(
        parse_frame(&f),
        Err(PacketError::ProtoFamilyMismatch { .. })
    ));

    let mut f = v4.clone();
    patch_v4(&mut f, 6, 0x20); // MF
    assert_eq!(
        parse_frame(&f),
        Err(PacketError::Fragment {
            offset: 0,
            more: true
        })
    );
    let mut f = v4.clone();
    patch_v4(&mut f, 6, 0x00);
    patch_v4(&mut f, 7, 0x10);
    assert_eq!(
        parse_frame(&f),
        Err(PacketError::Fragment {
            offset: 16,
            more: false
        })
    );

    // Total length shorter than the header.
    let mut f = v4.clone();
    patch_v4(&mut f, 2, 0);
    patch_v4(&mut f, 3, 19);
    assert!(matches!(
        parse_frame(&f),
        Err(PacketError::Malformed { .. })
    ));

    for next in [0u8, 43, 44, 60] {
        let mut f = v6.clone();
        f[ETH_HLEN + 6] = next;
        assert_eq!(parse_frame(&f), Err(PacketError::Ipv6ExtensionHeader(next)));
    }
    let mut f = v6.clone();
    f[ETH_HLEN + 6] = IPPROTO_ICMP;
    assert!(matches!(
        parse_frame(&f),
        Err(PacketError::ProtoFamilyMismatch { .. })
    ));
}

#[test]
fn l4_layer_errors() {
    let tcp = build_frame(&spec(L4Proto::Tcp, v4_pair())).unwrap();
    let mut f = tcp.clone();
    f[ETH_HLEN + 20 + 12] = 0x40;
    assert!(matches!(
        parse_frame(&f),
        Err(PacketError::Malformed {
            layer: "TCP header",
            ..
        })
    ));
    let mut f = tcp.clone();
    f[ETH_HLEN + 20 + 12] = 0x60; // data offset beyond the segment
    assert!(matches!(
        parse_frame(&f),
        Err(PacketError::Truncated {
            layer: "TCP header",
            ..
        })
    ));

    let udp = build_frame(&spec(L4Proto::Udp, v4_pair()).with_payload(&b"abcd"[..])).unwrap();
    let mut f = udp.clone();
    f[ETH_HLEN + 20 + 5] = 7;
    assert!(matches!(
        parse_frame(&f),
        Err(PacketError::Malformed {
            layer: "UDP header",
            ..
        })
    ));
    let mut f = udp.clone();
    f[ETH_HLEN + 20 + 5] = 13;
    assert!(matches!(
        parse_frame(&f),
        Err(PacketError::Truncated {
            layer: "UDP datagram",
            ..
        })
    ));

    let sctp = build_frame(&spec(L4Proto::Sctp, v4_pair())).unwrap();
    let mut f = sctp.clone();
    f[ETH_HLEN + 20 + 15] = 2; // chunk length 2
    assert!(matches!(
        parse_frame(&f),
        Err(PacketError::Malformed {
            layer: "SCTP chunk",
            ..
        })
    ));
    let mut f = sctp.clone();
    f[ETH_HLEN + 20 + 15] = 24; // chunk longer than the packet
    assert!(matches!(
        parse_frame(&f),
        Err(PacketError::Truncated {
            layer: "SCTP chunk",
            ..
        })
    ));
}

/// A tiny deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_corruption_never_panics() {
    let mut frames: Vec<Vec<u8>> = all_specs()
        .iter()
        .map(|s| build_frame(s).unwrap())
        .collect();
    for f in frames.clone() {
        for ty in [3u8, 11, 1, 2] {
            if let Some(e) = icmp_error_for(&f, ty, 0) {
                frames.push(e);
            }
        }
    }
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    for _ in 0..50_000 {
        let mut f = frames[rng.below(frames.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(f.len());
            f[at] = rng.next() as u8;
        }
        if rng.below(4) == 0 {
            f.truncate(rng.below(f.len() + 1));
        }
        let _ = parse_frame(&f);
    }
}

// ---- ICMP errors ----

/// The ICMP error a router at `from` would send about `original` (type `ty`, code `code`),
/// quoting its IP header and the first 8 bytes of its L4 header, built with the public API.
fn icmp_error(original: &[u8], from: IpAddr, ty: u8, code: u8) -> Vec<u8> {
    let orig = parse_frame(original).unwrap();
    let quoted = &original[ETH_HLEN..(orig.l4_offset + 8).min(original.len())];
    icmp_error_quoting(quoted, from, orig.src, ty, code)
}

/// An ICMP error from `from` to `to` quoting `quoted`.
fn icmp_error_quoting(quoted: &[u8], from: IpAddr, to: IpAddr, ty: u8, code: u8) -> Vec<u8> {
    let ipv6 = from.is_ipv6();
    let s = FlowSpec::new(icmp_for(ipv6), from, 0, to, 0).with_payload(quoted);
    let mut f = build_frame(&s).unwrap();
    let l4 = ETH_HLEN + ip_header_len(&s);
    f[l4] = ty;
    f[l4 + 1] = code;
    f[l4 + 2..l4 + 8].fill(0);
    let sum = if ipv6 {
        l4_checksum(s.src, s.dst, IPPROTO_ICMPV6, &f[l4..]).unwrap()
    } else {
        internet_checksum(&[&f[l4..]])
    };
    f[l4 + 2..l4 + 4].copy_from_slice(&sum.to_be_bytes());
    f
}

fn router(ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6("fd00::fe".parse().unwrap())
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 168, 0, 254))
    }
}

fn icmp_error_for(original: &[u8], ty: u8, code: u8) -> Option<Vec<u8>> {
    let ipv6 = parse_frame(original).ok()?.src.is_ipv6();
    Some(icmp_error(original, router(ipv6), ty, code))
}

#[test]
fn icmp_port_unreachable_carries_the_inner_flow() {
    for s in all_specs() {
        let ipv6 = s.src.is_ipv6();
        let original = build_frame(&s).unwrap();
        let (ty, code) = if ipv6 {
            (ICMPV6_DEST_UNREACH, 4)
        } else {
            (ICMP_DEST_UNREACH, 3)
        };
        let e = icmp_error(&original, router(ipv6), ty, code);
        let p = parse_frame(&e).unwrap();
        assert_eq!(p.proto, icmp_for(ipv6));
        assert_eq!((p.src, p.dst), (router(ipv6), s.src));
        assert_eq!((p.icmp_type, p.icmp_code), (Some(ty), Some(code)));
        assert_eq!((p.sport, p.dport), (0, 0));
        assert!(p.checksums_ok(), "{s:?}");
        assert_eq!(
            p.inner,
            Some(InnerFlow {
                proto: s.proto,
                src: s.src,
                dst: s.dst,
                sport: s.sport,
                dport: s.dport,
                ip_checksum_ok: true,
            }),
            "{s:?}"
        );
    }
}

#[test]
fn other_icmp_errors_carry_the_inner_flow() {
    let cases = [
        (v4_pair(), ICMP_TIME_EXCEEDED),
        (v4_pair(), ICMP_PARAM_PROBLEM),
        (v6_pair(), ICMPV6_PACKET_TOO_BIG),
        (v6_pair(), ICMPV6_TIME_EXCEEDED),
        (v6_pair(), ICMPV6_PARAM_PROBLEM),
    ];
    for (pair, ty) in cases {
        let s = spec(L4Proto::Udp, pair);
        let e = icmp_error(&build_frame(&s).unwrap(), router(pair.0.is_ipv6()), ty, 0);
        let inner = parse_frame(&e).unwrap().inner.unwrap();
        assert_eq!(
            (inner.src, inner.dst, inner.sport, inner.dport),
            (s.src, s.dst, 40000, 443)
        );
    }
}

#[test]
fn icmp_error_reports_a_broken_inner_ip_checksum() {
    let s = spec(L4Proto::Tcp, v4_pair());
    let mut original = build_frame(&s).unwrap();
    // A translator rewrote the quoted destination without fixing the quoted header checksum.
    original[ETH_HLEN + 19] ^= 0x01;
    let e = icmp_error(&original, router(false), ICMP_DEST_UNREACH, 3);
    let p = parse_frame(&e).unwrap();
    assert!(p.checksums_ok(), "the outer message itself is consistent");
    let inner = p.inner.unwrap();
    assert!(!inner.ip_checksum_ok);
    assert_eq!(inner.dst, IpAddr::V4(Ipv4Addr::new(10, 96, 0, 11)));
}

#[test]
fn icmp_error_checksum_covers_the_quote() {
    for pair in [v4_pair(), v6_pair()] {
        let ipv6 = pair.0.is_ipv6();
        let e = icmp_error(
            &build_frame(&spec(L4Proto::Udp, pair)).unwrap(),
            router(ipv6),
            3,
            3,
        );
        let l4 = parse_frame(&e).unwrap().l4_offset;
        for byte in l4..e.len() {
            assert!(
                !parse_frame(&flip(&e, byte, 0)).unwrap().l4_checksum_ok,
                "byte {byte}"
            );
        }
    }
}

#[test]
fn icmp_error_with_an_unreadable_quote_has_no_inner_flow() {
    for pair in [v4_pair(), v6_pair()] {
        let ipv6 = pair.0.is_ipv6();
        let (other, _) = if ipv6 { v4_pair() } else { v6_pair() };
        let original = build_frame(&spec(L4Proto::Udp, pair)).unwrap();
        let other_family = build_frame(&spec(L4Proto::Udp, (other, other))).unwrap();
        let ip = &original[ETH_HLEN..];
        let hlen = if ipv6 { 40 } else { 20 };
        let mut bad_proto = ip.to_vec();
        bad_proto[if ipv6 { 6 } else { 9 }] = 47;
        let quotes: [&[u8]; 5] = [
            &[],
            &ip[..hlen - 1],           // IP header cut
            &ip[..hlen + 3],           // ports cut
            &bad_proto[..hlen + 8],    // not a supported protocol
            &other_family[ETH_HLEN..], // IPv4 quoted in ICMPv6 or the reverse
        ];
        for quoted in quotes {
            let e = icmp_error_quoting(quoted, router(ipv6), pair.0, 3, 3);
            let p = parse_frame(&e).unwrap();
            assert!(p.checksums_ok());
            assert_eq!(p.inner, None, "{quoted:02x?}");
        }
        // Ports alone (4 bytes) are enough.
        let e = icmp_error_quoting(&ip[..hlen + 4], router(ipv6), pair.0, 3, 3);
        assert_eq!(parse_frame(&e).unwrap().inner.unwrap().dport, 443);
    }
}

#[test]
fn icmp_error_quoting_an_echo_reports_its_identifier() {
    for pair in [v4_pair(), v6_pair()] {
        let ipv6 = pair.0.is_ipv6();
        let s = spec(icmp_for(ipv6), pair).with_payload(&b"ping"[..]);
        let e = icmp_error(&build_frame(&s).unwrap(), router(ipv6), 3, 1);
        let inner = parse_frame(&e).unwrap().inner.unwrap();
        assert_eq!(
            (inner.proto, inner.sport, inner.dport),
            (s.proto, 40000, 443)
        );
    }
}

#[test]
fn icmp_echo_reply_and_other_types_parse() {
    for pair in [v4_pair(), v6_pair()] {
        let ipv6 = pair.0.is_ipv6();
        let s = spec(icmp_for(ipv6), pair);
        let reply = if ipv6 {
            ICMPV6_ECHO_REPLY
        } else {
            ICMP_ECHO_REPLY
        };
        // Echo reply: identifier and sequence still reported; an unknown type: no ports.
        for (ty, ports) in [(reply, (40000, 443)), (42, (0, 0))] {
            let mut f = build_frame(&s).unwrap();
            let l4 = ETH_HLEN + ip_header_len(&s);
            f[l4] = ty;
            f[l4 + 2..l4 + 4].fill(0);
            let sum = if ipv6 {
                l4_checksum(s.src, s.dst, IPPROTO_ICMPV6, &f[l4..]).unwrap()
            } else {
                internet_checksum(&[&f[l4..]])
            };
            f[l4 + 2..l4 + 4].copy_from_slice(&sum.to_be_bytes());
            let p = parse_frame(&f).unwrap();
            assert_eq!(
                (p.icmp_type, p.sport, p.dport, &p.inner),
                (Some(ty), ports.0, ports.1, &None)
            );
            assert!(p.checksums_ok());
        }
    }
}

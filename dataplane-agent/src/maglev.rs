//! Maglev lookup tables (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016, section 3.4). Pure: backends in, table out.
//!
//! Each backend gets a permutation of the M table entries from two hashes of its name
//! (`offset`, `skip`; M prime so every `skip` visits every entry); the backends then take
//! turns claiming the next free entry of their permutation until the table is full. So:
//! - every node computing the table for the same backends gets the same table (the name is
//!   the backend's `address:port`, and the turn order is the names' sorted order, never the
//!   order the caller happens to hold them in);
//! - each backend owns ⌊M/N⌋ or ⌈M/N⌉ entries (one per turn);
//! - removing one of N backends reassigns its ≈M/N entries and only a few others (measured in
//!   the tests below and, in the kernel, in `tests/datapath.rs`).
//!
//! The datapath side (flow hash, chunked map layout) is `dataplane_common::maglev`.

use std::net::SocketAddr;

use crate::desired::BackendAddr;

/// How a service picks the backend of a new connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LbAlgorithm {
    /// Uniformly at random (kube-proxy's behaviour).
    #[default]
    Random,
    /// Maglev consistent hashing of the 5-tuple: the same backend on every node, few flows
    /// moved when a backend changes.
    Maglev,
}

impl LbAlgorithm {
    /// The spelling in the node config and the `skiff.io/lb-algorithm` annotation.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "random" => Some(LbAlgorithm::Random),
            "maglev" => Some(LbAlgorithm::Maglev),
            _ => None,
        }
    }
}

/// Service annotation choosing the algorithm per service (`maglev` or `random`), over the
/// node config's `loadBalancing`.
pub const ANNOTATION_LB_ALGORITHM: &str = "skiff.io/lb-algorithm";

/// Default table size M, as Cilium's: about 100 entries per backend up to 160 backends.
pub const DEFAULT_TABLE_SIZE: u16 = 16_381;
/// Largest prime M that fits the master entry's 16-bit `maglev_size`.
pub const MAX_TABLE_SIZE: u16 = 65_521;

/// Seeds of the two name hashes (any two different constants; the same on every node).
const OFFSET_SEED: u32 = 0x6d61_676c; // "magl"
const SKIP_SEED: u32 = 0x6576_3031; // "ev01"

/// Whether `m` can be a table size: a prime of at least 3 (so `skip` in `1..m` generates every
/// entry) that fits the map's 16 bits.
pub fn valid_table_size(m: u32) -> bool {
    (3..=MAX_TABLE_SIZE as u32).contains(&m)
        && (2..)
            .take_while(|d| d * d <= m)
            .all(|d| !m.is_multiple_of(d))
}

/// The name a backend is hashed by: `address:port` (`[v6]:port`), the same on every node.
pub fn backend_name(be: &BackendAddr) -> String {
    SocketAddr::new(be.addr, be.port).to_string()
}

/// The lookup table for `backends` (no duplicates, at most `m` of them, `m` a valid size):
/// for each of the `m` entries, the index into `backends` of the backend it selects. Empty
/// when there is no backend.
pub fn lookup_table(backends: &[BackendAddr], m: u16) -> Vec<usize> {
    let m = m as usize;
    debug_assert!(valid_table_size(m as u32));
    debug_assert!(backends.len() <= m);
    if backends.is_empty() || backends.len() > m {
        return Vec::new();
    }
    // Turn order: sorted names, independent of the caller's order.
    let mut named: Vec<(String, usize)> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (backend_name(b), i))
        .collect();
    named.sort();
    let perms: Vec<(usize, usize)> = named
        .iter()
        .map(|(name, _)| {
            let offset = murmur3_32(name.as_bytes(), OFFSET_SEED) as usize % m;
            let skip = murmur3_32(name.as_bytes(), SKIP_SEED) as usize % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next: Vec<usize> = perms.iter().map(|(offset, _)| *offset).collect();
    let mut table = vec![usize::MAX; m];
    let mut filled = 0;
    // Each turn fills one entry, so this ends after exactly m claims; each inner walk ends
    // because a permutation visits every entry and the table is not full yet.
    'fill: loop {
        for (turn, (_, skip)) in perms.iter().enumerate() {
            let mut c = next[turn];
            while table[c] != usize::MAX {
                c = (c + skip) % m;
            }
            table[c] = named[turn].1;
            next[turn] = (c + skip) % m;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

/// MurmurHash3_x86_32 (Austin Appleby's reference algorithm) over any bytes.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    use dataplane_common::maglev::{murmur3_finish, murmur3_round};
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for b in &mut blocks {
        h = murmur3_round(h, u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, byte) in tail.iter().enumerate() {
            k |= (*byte as u32) << (8 * i);
        }
        h ^= k
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
    }
    murmur3_finish(h, data.len() as u32)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use dataplane_common::{
        maglev::{flow_hash, FLOW_HASH_SEED},
        CtKey,
    };

    use super::*;
    use crate::desired::Protocol;

    fn backends(n: usize) -> Vec<BackendAddr> {
        (0..n)
            .map(|i| BackendAddr {
                addr: format!("10.244.{}.{}", i / 200, i % 200 + 1)
                    .parse()
                    .unwrap(),
                port: 8080,
                proto: Protocol::Tcp,
            })
            .collect()
    }

    #[test]
    fn murmur3_matches_published_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"test", 0), 0xba6b_d213);
        assert_eq!(murmur3_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn flow_hash_is_murmur3_over_the_ctkey_layout() {
        let key = CtKey {
            src: dataplane_common::v4_mapped([10, 244, 1, 5]),
            dst: "fd00:96::10"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            sport_be: 40_000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: dataplane_common::PROTO_TCP,
            _pad: [0; 3],
        };
        // SAFETY: CtKey is #[repr(C)] plain data of 40 bytes without implicit padding.
        let bytes: [u8; 40] = unsafe { std::mem::transmute(key) };
        assert_eq!(
            flow_hash(&key.src, &key.dst, 40_000, 80, key.proto),
            murmur3_32(&bytes, FLOW_HASH_SEED)
        );
        assert_ne!(
            flow_hash(&key.src, &key.dst, 40_001, 80, key.proto),
            flow_hash(&key.src, &key.dst, 40_000, 80, key.proto)
        );
    }

    #[test]
    fn table_sizes() {
        for m in [3, 251, 1021, 4093, 16_381, 65_521] {
            assert!(valid_table_size(m), "{m}");
        }
        for m in [0, 1, 2, 4, 255, 16_383, 65_535, 65_537, 131_071] {
            assert!(!valid_table_size(m), "{m}");
        }
    }

    fn shares(table: &[usize], n: usize) -> Vec<usize> {
        let mut count = vec![0; n];
        for i in table {
            count[*i] += 1;
        }
        count
    }

    #[test]
    fn table_is_full_and_shares_differ_by_at_most_one_entry() {
        for (n, m) in [(1, 251), (7, 251), (10, 16_381), (100, 16_381), (251, 251)] {
            let t = lookup_table(&backends(n), m);
            assert_eq!(t.len(), m as usize);
            let count = shares(&t, n);
            let (min, max) = (*count.iter().min().unwrap(), *count.iter().max().unwrap());
            assert!(min >= 1 && max - min <= 1, "n={n} m={m}: {min}..{max}");
        }
        assert!(lookup_table(&[], 251).is_empty());
    }

    #[test]
    fn the_table_depends_on_the_backends_not_on_their_order() {
        let mut bes = backends(10);
        let pick = |bes: &[BackendAddr]| -> Vec<BackendAddr> {
            lookup_table(bes, 1021).iter().map(|i| bes[*i]).collect()
        };
        let a = pick(&bes);
        bes.reverse();
        bes.swap(2, 7);
        assert_eq!(a, pick(&bes));
    }

    /// Fraction of entries whose backend differs between two tables of the same size.
    fn moved(a: &[BackendAddr], b: &[BackendAddr]) -> f64 {
        let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
        diff as f64 / a.len() as f64
    }

    #[test]
    fn removing_one_of_n_backends_moves_about_one_nth_of_the_entries() {
        let m = DEFAULT_TABLE_SIZE;
        for n in [10usize, 50] {
            let all = backends(n);
            let before: Vec<BackendAddr> = lookup_table(&all, m).iter().map(|i| all[*i]).collect();
            let mut worst_extra = 0f64;
            for gone in 0..n {
                let rest: Vec<BackendAddr> =
                    all.iter().copied().filter(|b| *b != all[gone]).collect();
                let after: Vec<BackendAddr> =
                    lookup_table(&rest, m).iter().map(|i| rest[*i]).collect();
                // Every entry of the removed backend moves; the rest is Maglev's extra.
                let fraction = moved(&before, &after);
                let own = before.iter().filter(|b| **b == all[gone]).count() as f64 / m as f64;
                let extra = fraction - own;
                worst_extra = worst_extra.max(extra);
                assert!(
                    fraction <= 1.0 / n as f64 + 0.02,
                    "n={n}, removing {gone}: {fraction:.4} of the entries moved"
                );
            }
            println!(
                "maglev M={m} N={n}: removing one backend moves its 1/N = {:.4} of the entries \
                 plus at most {worst_extra:.4} (entries of surviving backends)",
                1.0 / n as f64
            );
        }
    }

    #[test]
    fn adding_a_backend_takes_about_one_nth_from_the_others() {
        let m = DEFAULT_TABLE_SIZE;
        let all = backends(11);
        let before_set = &all[..10];
        let before: Vec<BackendAddr> = lookup_table(before_set, m)
            .iter()
            .map(|i| before_set[*i])
            .collect();
        let after: Vec<BackendAddr> = lookup_table(&all, m).iter().map(|i| all[*i]).collect();
        let fraction = moved(&before, &after);
        println!("maglev M={m}: adding an 11th backend moves {fraction:.4} of the entries");
        assert!(fraction <= 1.0 / 11.0 + 0.02, "{fraction}");
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for b in &after {
            *per.entry(backend_name(b)).or_default() += 1;
        }
        assert_eq!(per.len(), 11);
    }
}

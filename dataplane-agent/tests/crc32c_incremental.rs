//! The incremental CRC32c the eBPF programs use for SCTP port rewrites
//! (`dataplane_common::crc32c`), checked against the agent's full CRC32c on random messages,
//! offsets and lengths. Plain arithmetic: no root needed.

use dataplane_common::crc32c::{append_zeros, flip2, mul, raw, POLY, X8_POW2};
use skiff::packet::{crc32c, sctp_checksum};

/// xorshift64*: reproducible random numbers without a dependency.
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

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The raw register (init 0, no final inversion) the slow way, one bit at a time.
fn raw_bitwise(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[test]
fn raw_crc_is_crc32c_without_the_inversions() {
    // CRC32c starts from !0 and inverts at the end; `raw` does neither. A start value is
    // the same as XORing it into the first four bytes, so the two agree up to that.
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    let mut rng = Rng(1);
    for len in 0..64 {
        let data = rng.bytes(len);
        assert_eq!(raw(&data, POLY), raw_bitwise(&data), "len {len}");
        if len >= 4 {
            let mut flipped = data.clone();
            flipped[..4].iter_mut().for_each(|b| *b ^= 0xff);
            assert_eq!(!raw(&flipped, POLY), crc32c(&data), "len {len}");
        }
    }
}

#[test]
fn multiplication_by_one_and_the_zero_table() {
    let one = 0x8000_0000;
    let mut rng = Rng(2);
    for _ in 0..1000 {
        let b = rng.next() as u32;
        assert_eq!(mul(one, b, POLY), b);
        assert_eq!(mul(b, one, POLY), b);
        let a = rng.next() as u32;
        assert_eq!(mul(a, b, POLY), mul(b, a, POLY));
    }
    // Each entry is its predecessor squared, starting at x^8 = one zero byte.
    let mut reg = 0xdead_beef_u32;
    for (i, &t) in X8_POW2.iter().enumerate() {
        let zeros = vec![0u8; 1 << i];
        let slow = {
            let mut r = reg;
            for _ in &zeros {
                for _ in 0..8 {
                    r = if r & 1 != 0 {
                        (r >> 1) ^ 0x82F6_3B78
                    } else {
                        r >> 1
                    };
                }
            }
            r
        };
        assert_eq!(mul(t, reg, POLY), slow, "x^(8*2^{i})");
        reg = reg.rotate_left(7) ^ 0x1234_5678;
    }
}

#[test]
fn appending_zeros_matches_feeding_them() {
    let mut rng = Rng(3);
    let mut lens: Vec<u16> = vec![0, 1, 2, 3, 255, 256, 4095, 65_535];
    lens.extend((0..200).map(|_| rng.below(65_536) as u16));
    for n in lens {
        let k = 1 + rng.below(4);
        let d = rng.bytes(k);
        let mut fed = d.clone();
        fed.resize(d.len() + usize::from(n), 0);
        assert_eq!(
            append_zeros(raw(&d, POLY), n, POLY),
            raw_bitwise(&fed),
            "{n} zeros"
        );
    }
}

#[test]
fn replacing_two_bytes_anywhere_matches_a_full_crc32c() {
    let mut rng = Rng(4);
    for round in 0..2000 {
        // Odd and even lengths, short ones and a few near the IP maximum.
        let len = if round % 100 == 0 {
            65_535 - rng.below(64)
        } else {
            2 + rng.below(1600)
        };
        let mut msg = rng.bytes(len);
        let at = match round % 4 {
            0 => 0,
            1 => len - 2,
            _ => rng.below(len - 1),
        };
        let before = crc32c(&msg);
        let old = [msg[at], msg[at + 1]];
        let new = [rng.next() as u8, rng.next() as u8];
        msg[at..at + 2].copy_from_slice(&new);
        let after = u16::try_from(len - at - 2).unwrap();
        assert_eq!(
            flip2(before, [old[0] ^ new[0], old[1] ^ new[1]], after, POLY),
            crc32c(&msg),
            "len {len}, offset {at}"
        );
    }
}

/// What the datapath does: rewrite the source or destination port of an SCTP packet and
/// update the little-endian CRC field at byte 8 from its old value alone.
#[test]
fn sctp_port_rewrites_keep_the_checksum_valid() {
    let mut rng = Rng(5);
    for round in 0..2000 {
        let len = 12 + rng.below(1500);
        let mut sctp = rng.bytes(len);
        let crc = sctp_checksum(&sctp);
        sctp[8..12].copy_from_slice(&crc.to_le_bytes());
        let port_at = if round % 2 == 0 { 0 } else { 2 };
        let old = [sctp[port_at], sctp[port_at + 1]];
        let new = (rng.next() as u16).to_be_bytes();
        sctp[port_at..port_at + 2].copy_from_slice(&new);
        let stored = u32::from_le_bytes(sctp[8..12].try_into().unwrap());
        let after = u16::try_from(len - port_at - 2).unwrap();
        let updated = flip2(stored, [old[0] ^ new[0], old[1] ^ new[1]], after, POLY);
        sctp[8..12].copy_from_slice(&updated.to_le_bytes());
        assert_eq!(
            sctp_checksum(&sctp),
            updated,
            "len {len}, port at {port_at}"
        );
        // A different value would not verify: the check above can fail.
        if old != new {
            assert_ne!(updated, stored, "len {len}, port at {port_at}");
        }
    }
}

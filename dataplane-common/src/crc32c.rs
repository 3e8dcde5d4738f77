//! Incremental CRC32c (Castagnoli, RFC 3309) for rewriting SCTP ports without reading the
//! packet: shared by the eBPF programs and the agent's tests, which check it against a full
//! CRC32c.
//!
//! For messages of one length a CRC is affine over GF(2): flipping bits `d` at byte offset
//! `k` of an `L`-byte message flips the CRC by `raw(d ++ zeros(L - k - len(d)))`, where `raw`
//! starts from 0 and has no final inversion. Feeding `z` zero bytes to a raw register
//! multiplies it by `x^(8z)` mod P, done here by square-and-multiply over a table of
//! `x^(8·2^i)` (zlib's `crc32_combine` technique): at most 16 multiplications of 32 rounds
//! for any SCTP packet, instead of one table step per byte of the packet.
//!
//! Polynomials are reflected, as the CRC register is: bit 31 holds the coefficient of x^0.

/// The reflected CRC32c polynomial.
pub const POLY: u32 = 0x82F6_3B78;

/// `a·b mod P`, branch-free (a fixed 32 rounds keeps the verifier's walk linear).
#[inline(always)]
pub const fn mul(a: u32, mut b: u32) -> u32 {
    let mut p = 0u32;
    let mut i = 0;
    while i < 32 {
        // Coefficient of x^i in `a` selects `b·x^i`.
        p ^= b & ((a >> (31 - i)) & 1).wrapping_neg();
        // b·x: shift towards higher powers, reduce when x^32 appears.
        b = (b >> 1) ^ (POLY & (b & 1).wrapping_neg());
        i += 1;
    }
    p
}

/// `X8_POW2[i] = x^(8·2^i) mod P`: appending `2^i` zero bytes. 16 entries cover every
/// length below 65,536, the most an IP length field can give.
pub const X8_POW2: [u32; 16] = {
    let mut t = [0u32; 16];
    // x^8: bit 31 - 8.
    t[0] = 1 << (31 - 8);
    let mut i = 1;
    while i < 16 {
        t[i] = mul(t[i - 1], t[i - 1]);
        i += 1;
    }
    t
};

/// A raw CRC register after `n` more zero bytes: `crc·x^(8n) mod P`.
#[inline(always)]
pub fn append_zeros(mut crc: u32, n: u16) -> u32 {
    for (i, &t) in X8_POW2.iter().enumerate() {
        if (n >> i) & 1 != 0 {
            crc = mul(t, crc);
        }
    }
    crc
}

/// Raw CRC (initial register 0, no final inversion) of the bytes `b`.
#[inline(always)]
pub fn raw(b: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &byte in b {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (POLY & (crc & 1).wrapping_neg());
        }
    }
    crc
}

/// The CRC32c of a message whose two bytes `old` (followed by `after` more bytes) became
/// `new`, from its CRC32c `crc` before the change. Works on CRC values, not their wire
/// encoding (SCTP stores the CRC little-endian).
#[inline(always)]
pub fn replace2(crc: u32, old: [u8; 2], new: [u8; 2], after: u16) -> u32 {
    let d = [old[0] ^ new[0], old[1] ^ new[1]];
    crc ^ append_zeros(raw(&d), after)
}

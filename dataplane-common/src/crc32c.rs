//! Incremental CRC32c (Castagnoli, RFC 3309) for rewriting SCTP ports without reading the
//! packet: shared by the eBPF programs and the agent's tests, which check it against a full
//! CRC32c.
//!
//! For messages of one length a CRC is affine over GF(2): flipping bits `d` at byte offset
//! `k` of an `L`-byte message flips the CRC by `raw(d ++ zeros(L - k - len(d)))`, where `raw`
//! starts from 0 and has no final inversion. Feeding `z` zero bytes to a raw register
//! multiplies it by `x^(8z)` mod P, done here by square-and-multiply over a table of
//! `x^(8·2^i)` (zlib's `crc32_combine` technique): 16 multiplications of 32 rounds
//! for any SCTP packet, instead of one table step per byte of the packet.
//!
//! Polynomials are reflected, as the CRC register is: bit 31 holds the coefficient of x^0.
//!
//! The per-packet functions take the polynomial as an argument (always [`POLY`]): the eBPF
//! caller passes it into a global function, where the verifier sees an unknown scalar. With
//! the constant folded in, LLVM turns each reduction step into `((x << 63) s>> 63) & C`, and
//! the 6.18 verifier forks its state on every such 0/-1 mask ANDed with a constant:
//! 2^hundreds of paths for one CRC update.

/// The reflected CRC32c polynomial.
pub const POLY: u32 = 0x82F6_3B78;

/// `a·b mod poly`, branch-free (a fixed 32 rounds keeps the verifier's walk linear).
#[inline(always)]
pub const fn mul(a: u32, mut b: u32, poly: u32) -> u32 {
    let mut p = 0u32;
    let mut i = 0;
    while i < 32 {
        // Coefficient of x^i in `a` selects `b·x^i`.
        p ^= b & ((a >> (31 - i)) & 1).wrapping_neg();
        // b·x: shift towards higher powers, reduce when x^32 appears.
        b = (b >> 1) ^ (poly & (b & 1).wrapping_neg());
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
        t[i] = mul(t[i - 1], t[i - 1], POLY);
        i += 1;
    }
    t
};

/// A raw CRC register after `n` more zero bytes: `crc·x^(8n) mod poly`. Branch-free: a branch on
/// each bit of `n` would double the verifier's paths per bit.
#[inline(always)]
pub fn append_zeros(mut crc: u32, n: u16, poly: u32) -> u32 {
    for (i, &t) in X8_POW2.iter().enumerate() {
        let take = ((n as u32 >> i) & 1).wrapping_neg();
        crc = (mul(t, crc, poly) & take) | (crc & !take);
    }
    crc
}

/// Raw CRC (initial register 0, no final inversion) of the bytes `b`.
#[inline(always)]
pub fn raw(b: &[u8], poly: u32) -> u32 {
    let mut crc = 0u32;
    for &byte in b {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (poly & (crc & 1).wrapping_neg());
        }
    }
    crc
}

/// The CRC32c of a message after XORing `delta` into two of its bytes, followed by `after`
/// more bytes, from its CRC32c `crc` before. (For a rewrite `delta` is old XOR new.) Works on
/// CRC values, not their wire encoding (SCTP stores the CRC little-endian).
#[inline(always)]
pub fn flip2(crc: u32, delta: [u8; 2], after: u16, poly: u32) -> u32 {
    crc ^ append_zeros(raw(&delta, poly), after, poly)
}

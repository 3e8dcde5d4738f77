//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')), for
//! hooks without the kernel's checksum helpers (XDP). Values are used as they sit in the
//! packet: one's-complement sums do not depend on byte order as long as all words agree.

#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

#[inline(always)]
pub fn replace4(csum: u16, from: u32, to: u32) -> u16 {
    let nf = !from;
    let s = (!csum) as u64
        + (nf >> 16) as u64
        + (nf & 0xffff) as u64
        + (to >> 16) as u64
        + (to & 0xffff) as u64;
    !fold(s)
}

#[inline(always)]
pub fn replace2(csum: u16, from: u16, to: u16) -> u16 {
    let s = (!csum) as u64 + (!from) as u64 + to as u64;
    !fold(s)
}

/// Apply a 32-bit one's-complement difference as returned by `bpf_csum_diff`.
#[inline(always)]
pub fn apply_diff(csum: u16, diff: u32) -> u16 {
    let s = (!csum) as u64 + (diff >> 16) as u64 + (diff & 0xffff) as u64;
    !fold(s)
}

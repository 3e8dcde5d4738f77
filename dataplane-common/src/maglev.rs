//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): the ABI of the lookup tables and
//! the flow hash, shared by the eBPF programs and the agent so both compute the same thing.
//!
//! A Maglev frontend's master entry (`SVC_F_MAGLEV`) names a table (`maglev_table`) of
//! `maglev_size` (M, a prime) backend ids. A new connection goes to
//! `table[flow_hash(5-tuple) % M]`. The agent computes the table from the backends' addresses
//! alone, so every node with the same backends picks the same backend for the same flow, and
//! removing one of N backends moves only about 1/N of the flows.
//!
//! The table is stored in `SK_MGLV_V1` in chunks of [`MAGLEV_CHUNK`] ids, keyed by
//! ([`MaglevKey`]) table id and chunk number: one hash lookup per new connection, and an
//! element (htab header 48 B + key 8 B + value 448 B + allocator link 8 B) of exactly 512
//! bytes, the kernel's kmalloc-512 size class, so no byte is wasted to rounding.

/// Backend ids per map value. 112 * 4 = 448 bytes: see the module doc for why.
pub const MAGLEV_CHUNK: usize = 112;

/// Key of `SK_MGLV_V1`: table id and chunk number (entry `i` of the table is entry
/// `i % MAGLEV_CHUNK` of chunk `i / MAGLEV_CHUNK`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    pub table: u32,
    pub chunk: u32,
}
const _: () = assert!(core::mem::size_of::<MaglevKey>() == 8);

/// One chunk of a Maglev table: backend ids (entries past M in the last chunk are 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaglevChunk {
    pub ids: [u32; MAGLEV_CHUNK],
}
const _: () = assert!(core::mem::size_of::<MaglevChunk>() == 448);

/// Number of chunks a table of size `m` takes.
pub const fn chunks(m: u32) -> u32 {
    m.div_ceil(MAGLEV_CHUNK as u32)
}

/// Seed of [`flow_hash`]. Any constant works; it must only be the same on every node.
pub const FLOW_HASH_SEED: u32 = 0x736b_6666; // "skff"

/// The hash a Maglev frontend balances new connections by: MurmurHash3 (x86, 32-bit) with
/// [`FLOW_HASH_SEED`] over the 40 bytes `src (16) | dst (16) | sport (2, network order) |
/// dport (2, network order) | proto (1) | 3 zero bytes` (the `CtKey` layout). Addresses are
/// the 16-byte map form (IPv4-mapped for IPv4). Ports are given in host order.
///
/// Written out over fixed words, without slices, so the eBPF build verifies it as is.
#[inline(always)]
pub fn flow_hash(src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16, proto: u8) -> u32 {
    let w = |a: &[u8; 16], i: usize| u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    let s = sport.to_be_bytes();
    let d = dport.to_be_bytes();
    let words = [
        w(src, 0),
        w(src, 4),
        w(src, 8),
        w(src, 12),
        w(dst, 0),
        w(dst, 4),
        w(dst, 8),
        w(dst, 12),
        u32::from_le_bytes([s[0], s[1], d[0], d[1]]),
        proto as u32,
    ];
    let mut h = FLOW_HASH_SEED;
    let mut i = 0;
    while i < words.len() {
        h = murmur3_round(h, words[i]);
        i += 1;
    }
    murmur3_finish(h, 40)
}

/// One 4-byte block of MurmurHash3_x86_32.
#[inline(always)]
pub const fn murmur3_round(h: u32, block: u32) -> u32 {
    let k = block
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3_x86_32's finalization (`len` in bytes) after the blocks and the tail.
#[inline(always)]
pub const fn murmur3_finish(h: u32, len: u32) -> u32 {
    let mut h = h ^ len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)] plain-old-data without implicit padding (asserted above).
    unsafe impl aya::Pod for MaglevKey {}
    unsafe impl aya::Pod for MaglevChunk {}
}

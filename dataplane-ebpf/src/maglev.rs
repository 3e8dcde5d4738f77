//! Maglev backend choice: the entry of a frontend's lookup table a flow hashes to (tables and
//! hash: `dataplane_common::maglev`; the agent computes the tables).

use dataplane_common::{
    maglev::{MaglevKey, MAGLEV_CHUNK},
    ServiceValue,
};

use crate::maps::MAGLEV;

/// The table entry `hash` selects: `hash % M` (`None` for a master without a table size).
#[inline(always)]
pub fn index(svc: &ServiceValue, hash: u32) -> Option<u32> {
    hash.checked_rem(svc.maglev_size as u32)
}

/// The backend id at entry `i` of table `table`; 0 (no backend has it) when the table does
/// not hold it. A subprogram of scalars: verified without multiplying the caller's paths.
#[inline(never)]
pub fn entry(table: u32, i: u32) -> u32 {
    let key = MaglevKey {
        table,
        chunk: i / MAGLEV_CHUNK as u32,
    };
    let Some(chunk) = (unsafe { MAGLEV.get(&key) }) else {
        return 0;
    };
    // The verifier does not bound a remainder, and LLVM drops the check `get` makes because
    // it knows the remainder is below the length: a volatile read hides that from LLVM, so
    // the comparison stays and bounds the index for the verifier.
    let off = i % MAGLEV_CHUNK as u32;
    let off = unsafe { core::ptr::read_volatile(&off) } as usize;
    chunk.ids.get(off).copied().unwrap_or(0)
}

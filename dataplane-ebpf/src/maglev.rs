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

/// The backend id at entry `i` of the frontend's table, if the table holds it.
#[inline(always)]
pub fn entry(svc: &ServiceValue, i: u32) -> Option<u32> {
    let key = MaglevKey {
        table: svc.maglev_table as u32,
        chunk: i / MAGLEV_CHUNK as u32,
    };
    let chunk = unsafe { MAGLEV.get(&key) }?;
    // The verifier does not bound a remainder, and LLVM drops the check `get` makes because
    // it knows the remainder is below the length: a volatile read hides that from LLVM, so
    // the comparison stays and bounds the index for the verifier.
    let off = i % MAGLEV_CHUNK as u32;
    let off = unsafe { core::ptr::read_volatile(&off) } as usize;
    chunk.ids.get(off).copied()
}

//! Rendering Maglev frontends' lookup tables into `SK_MGLV_V1` chunks, for the writer.
//!
//! A table is immutable once written and named by its content: frontends with the same
//! backends and M share one (a NodePort on every node IP, the LoadBalancer IP and the
//! ClusterIP of a service port), a table the maps already hold with the same content keeps its
//! id (a sync with nothing changed writes nothing), and a change of backends makes a new
//! table under a new id, written whole before the masters switch to it and deleted after.
//! So the datapath only ever reads complete tables, and a table id in a live master never
//! changes meaning.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dataplane_common::maglev::{chunks, MaglevChunk, MaglevKey, MAGLEV_CHUNK};
use dataplane_common::maps::MAGLEV_MAX;
use tracing::warn;

use crate::desired::{BackendAddr, Frontend};
use crate::maglev::lookup_table;

/// Table contents as stored: backend ids, padded with 0 to whole chunks.
type Content = Vec<u32>;

/// Assigns table ids for one render.
pub struct Tables {
    /// Complete tables the maps hold, by content.
    existing: HashMap<Content, u16>,
    /// Ids in use in the maps (complete or not) or taken in this render.
    used: BTreeSet<u16>,
    /// Tables of this render, by (M, backend ids).
    rendered: HashMap<(u16, Vec<u32>), u16>,
    /// Chunks the map can still take next to everything it holds now (old tables are deleted
    /// only after the new ones are in).
    budget: u64,
}

impl Tables {
    pub fn new(current: &BTreeMap<MaglevKey, MaglevChunk>) -> Self {
        let mut by_table: BTreeMap<u32, Vec<(u32, &MaglevChunk)>> = BTreeMap::new();
        for (k, v) in current {
            by_table.entry(k.table).or_default().push((k.chunk, v));
        }
        let mut existing = HashMap::new();
        let mut used = BTreeSet::new();
        for (table, parts) in by_table {
            let Ok(id) = u16::try_from(table) else {
                continue;
            };
            used.insert(id);
            // BTreeMap order: chunks ascending. Complete = 0..n without a gap.
            if parts.iter().enumerate().all(|(i, (c, _))| *c as usize == i) {
                let content: Content = parts.iter().flat_map(|(_, v)| v.ids).collect();
                existing.insert(content, id);
            }
        }
        Tables {
            existing,
            used,
            rendered: HashMap::new(),
            budget: u64::from(MAGLEV_MAX).saturating_sub(current.len() as u64),
        }
    }

    /// The table id for a frontend balanced over `backends` (with their map ids `ids`) by a
    /// table of size `m`, its chunks added to `out`. `None`: the frontend is balanced at
    /// random instead (no backend, more backends than entries, or the map is full).
    pub fn table(
        &mut self,
        fe: &Frontend,
        m: u16,
        backends: &[BackendAddr],
        ids: &[u32],
        out: &mut BTreeMap<MaglevKey, MaglevChunk>,
    ) -> Option<u16> {
        if backends.is_empty() {
            return None;
        }
        if backends.len() > m as usize {
            warn!(frontend = ?fe, backends = backends.len(), table_size = m,
                  "more backends than Maglev table entries: balanced at random");
            return None;
        }
        if let Some(id) = self.rendered.get(&(m, ids.to_vec())) {
            return Some(*id);
        }
        let n_chunks = chunks(u32::from(m));
        let mut content: Content = lookup_table(backends, m).iter().map(|i| ids[*i]).collect();
        content.resize(n_chunks as usize * MAGLEV_CHUNK, 0);
        let id = match self.existing.get(&content) {
            Some(id) => *id,
            None => {
                if u64::from(n_chunks) > self.budget {
                    warn!(frontend = ?fe, "the Maglev table map is full: balanced at random");
                    return None;
                }
                let id = (1..=u16::MAX).find(|id| !self.used.contains(id))?;
                self.budget -= u64::from(n_chunks);
                id
            }
        };
        self.used.insert(id);
        for (chunk, part) in content.chunks_exact(MAGLEV_CHUNK).enumerate() {
            let mut v = MaglevChunk {
                ids: [0; MAGLEV_CHUNK],
            };
            v.ids.copy_from_slice(part);
            out.insert(
                MaglevKey {
                    table: u32::from(id),
                    chunk: chunk as u32,
                },
                v,
            );
        }
        self.rendered.insert((m, ids.to_vec()), id);
        Some(id)
    }
}

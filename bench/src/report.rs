//! Result rows, the printed table, BENCHMARKS.md and bench/results.json.

/// One measured figure. `key` is flat and carries the unit (e.g.
/// `datapath_tc_clusterip_established_10k_services_ns_per_packet`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figure {
    pub section: &'static str,
    pub key: String,
    pub value: f64,
    pub note: String,
}

pub fn main() -> anyhow::Result<()> {
    anyhow::bail!("skiff-bench: not written yet")
}

//! skiff-bench: the measurements behind `cargo xtask bench`. Each part returns rows of
//! figures; `report` prints the table and writes BENCHMARKS.md and bench/results.json.

mod report;

fn main() -> anyhow::Result<()> {
    report::main()
}

//! Builds the eBPF programs (dataplane-ebpf) with the pinned nightly toolchain named in
//! `ebpf-toolchain` at the workspace root, and leaves the object in OUT_DIR for embedding.
//! `cargo xtask setup` installs that toolchain, rust-src and bpf-linker.

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    // With AYA_BUILD_SKIP (clippy on machines without the eBPF toolchain) leave an empty
    // object so the crate still compiles; loading it then fails with a clear error.
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
        std::fs::write(out.join("skiff"), b"").context("writing placeholder object")?;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let toolchain_file = root.join("ebpf-toolchain");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let toolchain = std::fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?;
    let toolchain = toolchain.trim();

    let ebpf_dir = root.join("dataplane-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    // The common crate is compiled into the eBPF object too.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("dataplane-common/src").display()
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "dataplane-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(toolchain),
    )
}

//! Link arguments for bpf-linker.

fn main() {
    // `sctp::skiff_sctp_crc` stays a global function (BTF linkage global): the verifier
    // checks it once on its own instead of at every path that reaches an SCTP port rewrite.
    println!("cargo:rustc-link-arg-bins=--export=skiff_sctp_crc");
}

//! `cargo xtask setup`: check, and install when missing, what the eBPF build needs.
//!
//! 1. the pinned nightly named in `ebpf-toolchain` (the one place the name lives; the agent's
//!    build.rs reads the same file) with `rust-src`;
//! 2. Debian's `llvm-N-dev`, N being that nightly's LLVM major (read from `rustc -vV`);
//! 3. `bpf-linker` built against LLVM N.
//!
//! When everything is present each check takes a few milliseconds.

use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use crate::{cargo, is_root, run, workspace_root};

/// File at the workspace root holding the eBPF toolchain's name (e.g. `nightly-2026-05-20`).
pub const TOOLCHAIN_FILE: &str = "ebpf-toolchain";

/// The pinned eBPF toolchain's name, from [`TOOLCHAIN_FILE`].
pub fn ebpf_toolchain() -> Result<String> {
    let path = workspace_root().join(TOOLCHAIN_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let name = text.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        bail!(
            "{} must hold one toolchain name such as nightly-2026-05-20, not {text:?}",
            path.display()
        );
    }
    Ok(name.to_string())
}

fn say(what: &str) {
    println!("[setup] {what}");
}

fn done(what: &str, started: Instant) {
    println!(
        "[setup]   ok: {what} ({:.1} ms)",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn rustup_home() -> PathBuf {
    std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".rustup"))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
}

/// `<cargo home>/bin` first on PATH for this process and its children, so that rustc finds
/// `bpf-linker` there even when the shell's PATH lacks it.
pub fn ensure_cargo_bin_on_path() {
    let bin = cargo_home().join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let mut paths = vec![bin];
    paths.extend(std::env::split_paths(&path));
    if let Ok(joined) = std::env::join_paths(paths) {
        // Called at start-up, before any thread exists.
        std::env::set_var("PATH", joined);
    }
}

/// Looks `name` up on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs every check; installs what is missing.
pub fn setup() -> Result<()> {
    let started = Instant::now();
    ensure_cargo_bin_on_path();
    let toolchain = ebpf_toolchain()?;
    let llvm_major = check_toolchain(&toolchain)?;
    check_llvm_dev(llvm_major)?;
    let bpf_linker = check_bpf_linker(llvm_major)?;
    check_kube_proxy_tools()?;
    println!(
        "[setup] eBPF build prerequisites ready in {:.1} ms: {toolchain} (LLVM {llvm_major}) + \
         rust-src, llvm-{llvm_major}-dev, {}",
        started.elapsed().as_secs_f64() * 1000.0,
        bpf_linker.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. The pinned nightly with rust-src

/// The toolchain's directory under rustup's home (`<name>-<host>`), if installed.
fn toolchain_dir(name: &str) -> Option<PathBuf> {
    let dir = rustup_home().join("toolchains");
    let prefix = format!("{name}-");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix(&prefix)
                    // `<name>-<host triple>`, not a longer toolchain name like `<name>-foo-...`
                    .is_some_and(|host| host.split('-').count() >= 3)
            })
        })
        .map(|e| e.path())
        .filter(|p| p.join("bin").join("rustc").is_file())
        .collect();
    found.sort();
    found.into_iter().next()
}

fn has_component(dir: &Path, component: &str) -> bool {
    std::fs::read_to_string(dir.join("lib/rustlib/components"))
        .map(|c| c.lines().any(|l| l.trim() == component))
        .unwrap_or(false)
        || (component == "rust-src" && dir.join("lib/rustlib/src/rust/library/core").is_dir())
}

/// The LLVM major version a rustc was built with (`rustc -vV`).
fn rustc_llvm_major(rustc: &Path) -> Result<(u32, String)> {
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .with_context(|| format!("running {} -vV", rustc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .map(str::trim)
        .with_context(|| format!("no `LLVM version` in `{} -vV`: {text}", rustc.display()))?;
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("unreadable LLVM version {version:?}"))?;
    Ok((major, version.to_string()))
}

fn check_toolchain(name: &str) -> Result<u32> {
    let started = Instant::now();
    say(&format!(
        "checking rust toolchain {name} (from {TOOLCHAIN_FILE}) with component rust-src"
    ));
    let dir = match toolchain_dir(name) {
        Some(dir) => dir,
        None => {
            say(&format!(
                "  {name} is not installed: installing it (minimal profile + rust-src)"
            ));
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                name,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
                "--component",
                "clippy",
                "--no-self-update",
            ]))
            .context("installing the eBPF toolchain with rustup")?;
            toolchain_dir(name).with_context(|| {
                format!(
                    "rustup installed {name} but it is not under {}",
                    rustup_home().join("toolchains").display()
                )
            })?
        }
    };
    if !has_component(&dir, "rust-src") {
        say(&format!("  rust-src is missing: adding it to {name}"));
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", name]))
            .context("adding rust-src")?;
        if !has_component(&dir, "rust-src") {
            bail!(
                "rustup added rust-src to {name} but it is not in {}",
                dir.display()
            );
        }
    }
    // clippy on this toolchain lints the eBPF crate for its real target.
    if !dir.join("bin").join("cargo-clippy").is_file() {
        say(&format!("  clippy is missing: adding it to {name}"));
        run(Command::new("rustup").args(["component", "add", "clippy", "--toolchain", name]))
            .context("adding clippy")?;
    }
    let (major, version) = rustc_llvm_major(&dir.join("bin").join("rustc"))?;
    done(
        &format!(
            "{name} with rust-src and clippy, LLVM {version} ({})",
            dir.display()
        ),
        started,
    );
    Ok(major)
}

// ---------------------------------------------------------------------------------------------
// 2. llvm-N-dev

fn dpkg_installed(package: &str) -> Result<Option<bool>> {
    let out = match Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("running dpkg-query"),
    };
    Ok(Some(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed",
    ))
}

fn check_llvm_dev(major: u32) -> Result<()> {
    let started = Instant::now();
    let package = format!("llvm-{major}-dev");
    let prefix = format!("/usr/lib/llvm-{major}");
    say(&format!(
        "checking Debian package {package} (LLVM {major}, for bpf-linker)"
    ));
    match dpkg_installed(&package)? {
        Some(true) => {
            done(&format!("{package} is installed"), started);
            return Ok(());
        }
        Some(false) => {}
        None => {
            // Not Debian: accept any LLVM installed at the Debian path, else explain.
            if Path::new(&prefix).join("bin/llvm-config").is_file() {
                done(
                    &format!("no dpkg here; found {prefix}/bin/llvm-config"),
                    started,
                );
                return Ok(());
            }
            bail!(
                "this is not a Debian system (no dpkg-query) and {prefix}/bin/llvm-config does \
                 not exist: install LLVM {major} development files there (Debian: {package})"
            );
        }
    }
    if !is_root() {
        bail!(
            "{package} is not installed and installing it needs root: run \
             `sudo apt-get update && sudo apt-get install -y {package}` (on Debian bookworm it \
             comes from bookworm-security), or run `cargo xtask setup` as root"
        );
    }
    apt_install(&[package.as_str()]).context(
        "on Debian bookworm llvm-N-dev comes from bookworm-security: is that suite in \
         /etc/apt/sources.list*?",
    )?;
    done(&format!("installed {package}"), started);
    Ok(())
}

/// `apt-get update` and `apt-get install` of `packages`, checked afterwards with dpkg.
fn apt_install(packages: &[&str]) -> Result<()> {
    say(&format!(
        "  missing: apt-get update && apt-get install -y {}",
        packages.join(" ")
    ));
    run(Command::new("apt-get")
        .args(["update"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("apt-get update")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("apt-get install {}", packages.join(" ")))?;
    for p in packages {
        if dpkg_installed(p)? != Some(true) {
            bail!("apt-get finished but {p} is still not installed");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// iptables and nftables: the kube-proxy layouts the benchmarks (and their tests) compare
//    against.

const KUBE_PROXY_TOOLS: [&str; 2] = ["iptables", "nftables"];

fn check_kube_proxy_tools() -> Result<()> {
    let started = Instant::now();
    say("checking Debian packages iptables and nftables (kube-proxy layouts for benchmarks)");
    let mut missing = Vec::new();
    for p in KUBE_PROXY_TOOLS {
        match dpkg_installed(p)? {
            Some(true) => {}
            Some(false) => missing.push(p),
            None => {
                // Not Debian: the commands themselves will do.
                if which("iptables-restore").is_some() && which("nft").is_some() {
                    done("no dpkg here; found iptables-restore and nft", started);
                    return Ok(());
                }
                bail!("iptables-restore and nft are needed for the benchmarks: install them");
            }
        }
    }
    if missing.is_empty() {
        done("iptables and nftables are installed", started);
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{} not installed and installing needs root: `sudo apt-get install -y {}`",
            missing.join(" and "),
            missing.join(" ")
        );
    }
    apt_install(&missing)?;
    done(&format!("installed {}", missing.join(" ")), started);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. bpf-linker built against LLVM N

/// How we learnt which LLVM a bpf-linker uses.
#[derive(Debug, PartialEq, Eq)]
enum LinkerLlvm {
    Major(u32, &'static str),
    Unknown,
}

fn find_bpf_linker() -> Option<PathBuf> {
    which("bpf-linker").or_else(|| {
        let p = cargo_home().join("bin").join("bpf-linker");
        p.is_file().then_some(p)
    })
}

/// The first number after `needle` in `haystack`.
fn number_after(haystack: &[u8], needle: &[u8]) -> Option<u32> {
    let pos = haystack.windows(needle.len()).position(|w| w == needle)?;
    let digits: Vec<u8> = haystack[pos + needle.len()..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn linker_llvm(linker: &Path) -> Result<LinkerLlvm> {
    // (a) The shared libLLVM it is linked against (the dynamic string table sits near the
    // start of the file).
    let mut head = Vec::with_capacity(1 << 18);
    std::fs::File::open(linker)
        .with_context(|| format!("opening {}", linker.display()))?
        .take(1 << 18)
        .read_to_end(&mut head)?;
    if let Some(major) =
        number_after(&head, b"libLLVM.so.").or_else(|| number_after(&head, b"libLLVM-"))
    {
        return Ok(LinkerLlvm::Major(major, "its shared libLLVM"));
    }
    // (b) `bpf-linker --version`, if it names LLVM.
    let out = Command::new(linker)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", linker.display()))?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if let Some(major) = number_after(text.as_bytes(), b"LLVM version ")
        .or_else(|| number_after(text.as_bytes(), b"LLVM "))
    {
        return Ok(LinkerLlvm::Major(major, "bpf-linker --version"));
    }
    // (c) The features `cargo install` recorded.
    let record = cargo_home().join(".crates2.json");
    if let Ok(json) = std::fs::read_to_string(&record) {
        if let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(&json) {
            if let Some(installs) = value.get("installs").and_then(|v| v.as_mapping()) {
                for (key, info) in installs {
                    if !key.as_str().is_some_and(|k| k.starts_with("bpf-linker ")) {
                        continue;
                    }
                    let features = info.get("features").and_then(|f| f.as_sequence());
                    for feature in features.into_iter().flatten() {
                        if let Some(major) = feature
                            .as_str()
                            .and_then(|f| f.strip_prefix("llvm-"))
                            .and_then(|m| m.parse().ok())
                        {
                            return Ok(LinkerLlvm::Major(major, "cargo install's record"));
                        }
                    }
                }
            }
        }
    }
    Ok(LinkerLlvm::Unknown)
}

fn install_bpf_linker(major: u32) -> Result<()> {
    let prefix = format!("/usr/lib/llvm-{major}");
    let feature = format!("llvm-{major}");
    say(&format!(
        "  installing: LLVM_PREFIX={prefix} cargo install bpf-linker --no-default-features \
         --features {feature} --force (about 100 s)"
    ));
    run(cargo()
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            &feature,
            "--force",
        ])
        .env("LLVM_PREFIX", &prefix)
        .current_dir(home()))
    .context("installing bpf-linker")
}

fn check_bpf_linker(major: u32) -> Result<PathBuf> {
    let started = Instant::now();
    say(&format!(
        "checking bpf-linker (must be built against LLVM {major})"
    ));
    let mut installed_now = false;
    loop {
        let Some(linker) = find_bpf_linker() else {
            if installed_now {
                bail!(
                    "cargo install finished but bpf-linker is neither on PATH nor in {}",
                    cargo_home().join("bin").display()
                );
            }
            say("  bpf-linker is not installed");
            install_bpf_linker(major)?;
            installed_now = true;
            continue;
        };
        match linker_llvm(&linker)? {
            LinkerLlvm::Major(m, how) if m == major => {
                done(
                    &format!("{} uses LLVM {m} (from {how})", linker.display()),
                    started,
                );
                return Ok(linker);
            }
            LinkerLlvm::Major(m, how) => {
                if installed_now {
                    bail!(
                        "bpf-linker at {} uses LLVM {m} (from {how}) even after reinstalling \
                         with --features llvm-{major}",
                        linker.display()
                    );
                }
                say(&format!(
                    "  {} uses LLVM {m} (from {how}), not {major}: reinstalling",
                    linker.display()
                ));
                install_bpf_linker(major)?;
                installed_now = true;
            }
            LinkerLlvm::Unknown => {
                println!(
                    "[setup]   warning: cannot tell which LLVM {} uses; assuming LLVM {major} \
                     (reinstall with `LLVM_PREFIX=/usr/lib/llvm-{major} cargo install \
                     bpf-linker --no-default-features --features llvm-{major} --force` if the \
                     eBPF link fails)",
                    linker.display()
                );
                done(&format!("{}", linker.display()), started);
                return Ok(linker);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toolchain_file_names_a_dated_nightly() {
        let name = ebpf_toolchain().unwrap();
        assert!(name.starts_with("nightly-20"), "{name}");
    }

    #[test]
    fn numbers_after_a_needle() {
        assert_eq!(
            number_after(b"xx libLLVM.so.22.1\0", b"libLLVM.so."),
            Some(22)
        );
        assert_eq!(number_after(b"libLLVM-19.so", b"libLLVM-"), Some(19));
        assert_eq!(number_after(b"bpf-linker 0.13.0", b"LLVM "), None);
        assert_eq!(
            number_after(b"bpf-linker 0.14 (LLVM 22.1.8)", b"LLVM "),
            Some(22)
        );
    }
}

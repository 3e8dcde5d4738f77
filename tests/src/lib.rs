//! skiff-testbed: a node and its pods in network namespaces, with real sockets inside them.
//!
//! Used by skiff's end-to-end tests (`tests/tests/`) and by the demo (`cargo xtask run`).
//!
//! Topology ([`TestBed`]): one "node" namespace and any number of "pod" namespaces, each pod
//! joined to the node by a veth pair, Calico style:
//!
//! - pod side `eth0` with the pod's `/32` and `/128`, routes `169.254.1.1 dev eth0 scope link`,
//!   `default via 169.254.1.1 dev eth0` and `default via fe80::1 dev eth0`;
//! - host side (name chosen by the caller, e.g. `skd0`) in the node namespace with
//!   `proxy_arp=1` (no proxy delay) and the link-local address `fe80::1/64`; the node routes
//!   `<pod>/32` and `<pod6>/128` to it and forwards (IPv4 and IPv6), `rp_filter` off, no DAD;
//! - the node has a default route through a veth whose peer is down ([`UPLINK`]): proxy ARP
//!   needs a route for `169.254.1.1` that leaves by another device, and packets to addresses
//!   nobody owns (service IPs without skiff) are dropped there instead of looping.
//!
//! Service addresses are never assigned to any interface: skiff's eBPF programs translate them.
//!
//! Everything is bounded in time and count, and cleaned up on drop (panics included):
//! processes running in the bed's namespaces are killed and the namespaces deleted.
//! [`TestBed::cleanup_stale`] and [`TestBed::cleanup_dead`] remove leftovers of crashed runs.
//!
//! Code runs inside a namespace either as a process ([`netns_command`], [`Process`],
//! [`TestBed::spawn`]) or on a thread that entered the namespace with `setns` ([`in_netns`],
//! [`spawn_in_netns`]); the socket helpers ([`tcp_server`], [`tcp_connect_once`], ...) build
//! on the latter.

mod bed;
mod bpffs;
mod cgroup;
mod net;
mod netns;
mod process;
mod tempdir;
mod underlay;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use bed::{Pod, TestBed, NAME_PREFIX, UPLINK};
pub use bpffs::PrivateBpffs;
pub use cgroup::{run_probe, ProbeMode, ProbeOutcome, TestCgroup};
pub use net::{
    tcp_connect_once, tcp_echo_server, tcp_round, tcp_server, udp_request, udp_round, udp_server,
    EchoStats, LongLivedClient, Server, Tally,
};
pub use netns::{
    in_netns, ip, ip_batch, list_netns, netns_exists, netns_path, spawn_in_netns, sysctls,
    NETNS_DIR,
};
pub use process::{netns_command, Process};
pub use tempdir::TempDir;
pub use underlay::{ExternalHost, Underlay, UNDERLAY_IF};

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Panics (fails the test, never skips it) unless running as root.
pub fn require_root() {
    assert!(
        is_root(),
        "skiff's end-to-end tests need root (network namespaces, veths, BPF): run them as root, \
         e.g. `sudo -E cargo xtask test`; refusing to skip them"
    );
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root) or
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// The agent binary under test: `$SKIFF_BIN`, else `<target>/debug/skiff`.
///
/// Panics with a clear message if it does not exist (build it with `cargo xtask build`, or run
/// the tests through `cargo xtask test`, which sets `SKIFF_BIN`).
pub fn skiff_bin() -> PathBuf {
    let (path, source) = match std::env::var_os("SKIFF_BIN") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), "$SKIFF_BIN"),
        _ => (target_dir().join("debug").join("skiff"), "the default path"),
    };
    assert!(
        path.is_file(),
        "skiff binary not found at {} ({source}): build it with `cargo xtask build` or run the \
         tests with `cargo xtask test`, which sets SKIFF_BIN",
        path.display()
    );
    path
}

/// Holds the test-bed lock: see [`serial`].
pub struct SerialGuard {
    _file: std::fs::File,
    _guard: MutexGuard<'static, ()>,
}

/// Lock file shared by every process that runs test beds or the agent (tests and demo).
pub const LOCK_FILE: &str = "/run/skiff-testbed.lock";

/// Serializes test beds: a mutex within this process and an exclusive `flock` on [`LOCK_FILE`]
/// across processes (the agent's BPF maps are global, so two agents must not run at once).
/// Waits at most 10 minutes, then panics.
pub fn serial() -> SerialGuard {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .unwrap_or_else(|e| panic!("opening {LOCK_FILE}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                if !told {
                    eprintln!("skiff-testbed: waiting for {LOCK_FILE} (another test bed or demo)");
                    told = true;
                }
                assert!(
                    Instant::now() < deadline,
                    "{LOCK_FILE} held by another process for 10 minutes"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::Error(e)) => panic!("locking {LOCK_FILE}: {e}"),
        }
    }
    SerialGuard {
        _file: file,
        _guard: guard,
    }
}

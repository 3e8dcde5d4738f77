//! Test cgroups for the socket-level hooks, and the `skiff-probe` client that runs in them.
//!
//! Socket-level programs act on every socket of the cgroup they are attached to and of its
//! descendants, whatever the network namespace: a test must never attach them to the
//! machine's root cgroup (other processes on the machine would be translated). A
//! [`TestCgroup`] is a fresh child `skiff-test-<pid>-<n>` of the cgroup v2 hierarchy, reached
//! through a private cgroup2 mount under the temp directory, so that its path also works
//! inside `ip netns exec` (which remounts /sys and hides /sys/fs/cgroup).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// Every test cgroup's mount point is `<tmp>/skiff-cg-<pid>-<n>`.
const MOUNT_PREFIX: &str = "skiff-cg-";

static CGROUPS: AtomicUsize = AtomicUsize::new(0);

/// A child cgroup for one test; dropping it kills what still runs in it, removes it and
/// unmounts its private view of the hierarchy.
pub struct TestCgroup {
    mount: PathBuf,
    path: PathBuf,
}

fn mount_cgroup2(at: &Path) -> Result<()> {
    std::fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
    let ok = Command::new("mount")
        .args(["-t", "cgroup2", "none"])
        .arg(at)
        .status()
        .context("running mount")?
        .success();
    if !ok {
        let _ = std::fs::remove_dir(at);
        bail!("mount -t cgroup2 none {} failed", at.display());
    }
    Ok(())
}

fn unmount(at: &Path) {
    let _ = Command::new("umount").arg("-l").arg(at).status();
    let _ = std::fs::remove_dir(at);
}

impl TestCgroup {
    /// Creates the cgroup (after removing leftovers of dead test processes).
    pub fn new() -> Result<TestCgroup> {
        if !crate::is_root() {
            bail!("a test cgroup needs root");
        }
        Self::cleanup_dead();
        let n = CGROUPS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let mount = std::env::temp_dir().join(format!("{MOUNT_PREFIX}{pid}-{n}"));
        mount_cgroup2(&mount)?;
        let path = mount.join(format!("skiff-test-{pid}-{n}"));
        if let Err(e) = std::fs::create_dir(&path) {
            unmount(&mount);
            return Err(e).with_context(|| format!("creating cgroup {}", path.display()));
        }
        Ok(TestCgroup { mount, path })
    }

    /// The cgroup's directory (give it to the agent as `cgroupPath`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pids of the processes in it.
    pub fn procs(&self) -> Result<Vec<u32>> {
        procs(&self.path)
    }

    /// Removes cgroups (and their mounts) left by test processes that no longer run.
    pub fn cleanup_dead() {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(MOUNT_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            if pid.is_empty()
                || !pid.bytes().all(|b| b.is_ascii_digit())
                || Path::new("/proc").join(pid).exists()
            {
                continue;
            }
            let mount = entry.path();
            let child = mount.join(format!("skiff-test-{rest}"));
            if child.is_dir() {
                eprintln!(
                    "skiff-testbed: removing cgroup {} of a dead test",
                    child.display()
                );
                let _ = remove(&child);
            }
            unmount(&mount);
        }
    }
}

fn procs(dir: &Path) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(dir.join("cgroup.procs"))
        .with_context(|| format!("reading {}/cgroup.procs", dir.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Kill what runs in `dir` (SIGKILL) and remove it, waiting at most 2 s for it to empty.
fn remove(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        for pid in procs(dir).unwrap_or_default() {
            // SAFETY: sending a signal; no memory involved.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("removing cgroup {}", dir.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.path) {
            eprintln!("skiff-testbed: {e:#}");
        }
        unmount(&self.mount);
    }
}

/// What one `skiff-probe` attempt got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Ok {
        reply: String,
        /// The answer's source as `recvfrom()` reported it (UDP).
        from: Option<String>,
        /// `getpeername()` (TCP and connected UDP).
        peer: Option<String>,
    },
    Err {
        /// The errno, when the failure was a system call's.
        os: Option<i32>,
        message: String,
    },
}

/// How `skiff-probe` talks to the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeMode {
    Tcp,
    /// Unconnected UDP socket: `sendto()` and `recvfrom()`.
    Udp,
    /// Like `Udp`, but every attempt on one socket.
    UdpReuse,
    /// Connected UDP socket: `connect()`, `send()`, `recvfrom()`.
    UdpConnected,
}

/// Runs `probe` (the `skiff-probe` binary) `count` times against `addr:port` from network
/// namespace `netns`, inside `cgroup` when given.
pub fn run_probe(
    probe: &Path,
    cgroup: Option<&Path>,
    netns: &str,
    mode: ProbeMode,
    addr: IpAddr,
    port: u16,
    count: usize,
) -> Result<Vec<ProbeOutcome>> {
    let mut cmd = Command::new(probe);
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    let mode = match mode {
        ProbeMode::Tcp => "tcp",
        ProbeMode::Udp => "udp",
        ProbeMode::UdpReuse => "udp-reuse",
        ProbeMode::UdpConnected => "udp-connected",
    };
    cmd.args(["--netns", netns, mode])
        .arg(addr.to_string())
        .arg(port.to_string())
        .arg(count.to_string());
    // Bounded by the probe itself: `count` attempts of at most two 2-second timeouts each.
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", probe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "skiff-probe failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout.lines().map(parse_line).collect()
}

fn parse_line(line: &str) -> Result<ProbeOutcome> {
    let field = |rest: &str, key: &str| -> Option<String> {
        rest.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .filter(|v| *v != "-")
            .map(str::to_string)
    };
    if let Some(rest) = line.strip_prefix("ok ") {
        return Ok(ProbeOutcome::Ok {
            reply: field(rest, "reply=").unwrap_or_default(),
            from: field(rest, "from="),
            peer: field(rest, "peer="),
        });
    }
    if let Some(rest) = line.strip_prefix("err ") {
        let (os, message) = rest.split_once(' ').unwrap_or((rest, ""));
        return Ok(ProbeOutcome::Err {
            os: os.strip_prefix("os=").and_then(|n| n.parse().ok()),
            message: message.to_string(),
        });
    }
    bail!("unexpected skiff-probe output {line:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_lines_parse() {
        assert_eq!(
            parse_line("ok reply=be0 from=10.96.0.10:53 peer=-").unwrap(),
            ProbeOutcome::Ok {
                reply: "be0".into(),
                from: Some("10.96.0.10:53".into()),
                peer: None
            }
        );
        assert_eq!(
            parse_line("err os=111 Connection refused (os error 111)").unwrap(),
            ProbeOutcome::Err {
                os: Some(111),
                message: "Connection refused (os error 111)".into()
            }
        );
        assert!(parse_line("garbage").is_err());
    }
}

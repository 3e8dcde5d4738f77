//! A private BPF filesystem for an agent's pins. Inside `ip netns exec`, /sys is remounted and
//! /sys/fs/bpf is not a BPF filesystem, so tests and benchmarks mount one of their own; it is
//! visible in the namespace's mount view because it lives outside /sys.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

/// Dropping it runs `skiff cleanup` on the pin directory (detaching what the agent pinned),
/// unmounts, and removes the mountpoint.
pub struct PrivateBpffs {
    mountpoint: PathBuf,
    skiff: PathBuf,
}

impl PrivateBpffs {
    /// Mount a BPF filesystem at `at` (created if needed); `skiff` is the binary whose
    /// `cleanup` removes the pins on drop.
    pub fn mount(at: impl Into<PathBuf>, skiff: impl Into<PathBuf>) -> Result<PrivateBpffs> {
        let mountpoint = at.into();
        std::fs::create_dir_all(&mountpoint)?;
        let ok = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&mountpoint)
            .status()?
            .success();
        if !ok {
            bail!("mount -t bpf bpf {} failed", mountpoint.display());
        }
        Ok(PrivateBpffs {
            mountpoint,
            skiff: skiff.into(),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The directory to give the agent as `--bpffs`.
    pub fn pin_dir(&self) -> PathBuf {
        self.mountpoint.join("skiff")
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        let _ = Command::new(&self.skiff)
            .args(["cleanup", "--bpffs"])
            .arg(self.pin_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount").arg(&self.mountpoint).status();
        let _ = std::fs::remove_dir(&self.mountpoint);
    }
}

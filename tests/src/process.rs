//! Processes running inside network namespaces, killed when their guard drops.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// `ip netns exec NS PROGRAM`: add arguments and stdio, then [`Process::spawn`] it.
/// (`ip netns exec` execs the program, so the process is the program itself; it also gives it
/// a private mount namespace with the namespace's own `/sys`.)
pub fn netns_command(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// A spawned process; dropping it stops it (SIGTERM to its process group, SIGKILL after a
/// grace period) and reaps it.
pub struct Process {
    child: Option<Child>,
    label: String,
    grace: Duration,
}

impl Process {
    /// Spawns `cmd` in a process group of its own (so a terminal's Ctrl-C reaches only the
    /// parent, which then stops it in order), with stdin from /dev/null. Should this process
    /// die without stopping it (killed test harness), the child gets SIGTERM: spawn from a
    /// thread that outlives the child (the kernel ties that signal to the spawning thread).
    pub fn spawn(mut cmd: Command, label: impl Into<String>) -> Result<Process> {
        let label = label.into();
        // SAFETY: getpid before fork; in the child only async-signal-safe calls (prctl,
        // getppid) run before exec.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    // The parent died before the prctl: do not run orphaned. (No allocation
                    // between fork and exec.)
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        cmd.stdin(Stdio::null()).process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {label}: {cmd:?}"))?;
        Ok(Process {
            child: Some(child),
            label,
            grace: Duration::from_secs(3),
        })
    }

    /// How long [`Process::stop`] and drop wait after SIGTERM before SIGKILL (default 3 s).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// The label given at spawn.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The exit status if it has exited (without waiting).
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .with_context(|| format!("polling {}", self.label)),
            None => Ok(None),
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Waits at most `timeout` for it to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops it (SIGTERM, then SIGKILL after the grace period) and returns its exit status.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            anyhow::bail!("{} already stopped", self.label);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let pgid = child.id() as libc::pid_t;
        // SAFETY: signalling the process group we created; no memory is involved.
        unsafe { libc::killpg(pgid, libc::SIGTERM) };
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                // Leftover members of the group (if any) get no grace.
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "skiff-testbed: {} did not stop within {:?} of SIGTERM; killing it",
            self.label, self.grace
        );
        // SAFETY: as above.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        let _ = child.kill();
        child
            .wait()
            .with_context(|| format!("waiting for {}", self.label))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.terminate() {
                eprintln!("skiff-testbed: stopping {}: {e:#}", self.label);
            }
        }
    }
}

//! Entering network namespaces from threads, and configuring them with `ip` and sysctls.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context as _, Result};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The bind-mounted file of a named namespace.
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(ns)
}

/// Whether a named namespace exists.
pub fn netns_exists(ns: &str) -> bool {
    netns_path(ns).exists()
}

/// Names of all named namespaces (what `ip netns list` shows), sorted.
pub fn list_netns() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context(format!("listing {NETNS_DIR}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.context("listing netns")?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn open_netns(ns: &str) -> Result<File> {
    File::open(netns_path(ns)).with_context(|| format!("opening network namespace {ns:?}"))
}

fn enter(ns: &str, file: &File) -> Result<()> {
    // SAFETY: plain syscall on a valid fd; it only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context(format!("setns into {ns:?}"));
    }
    Ok(())
}

/// Runs `f` on a new thread inside network namespace `ns` and waits for it. Sockets created
/// by `f` live in that namespace (and keep living there if they escape the closure). A panic
/// in `f` is resumed in the caller.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send,
    T: Send,
{
    let file = open_netns(ns)?;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name(format!("netns:{ns}"))
            .spawn_scoped(scope, move || {
                enter(ns, &file)?;
                drop(file);
                f()
            })
            .context("spawning netns thread")?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Starts `f` on a new thread inside network namespace `ns` and returns once the thread has
/// entered it (an error if it could not).
pub fn spawn_in_netns<T, F>(ns: &str, f: F) -> Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let file = open_netns(ns)?;
    let (tx, rx) = mpsc::sync_channel::<Result<()>>(1);
    let name = ns.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("netns:{ns}"))
        .spawn(move || {
            let entered = enter(&name, &file);
            drop(file);
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            if !ok {
                // The caller gets the error through the channel; the thread ends here.
                std::panic::resume_unwind(Box::new("setns failed"));
            }
            f()
        })
        .context("spawning netns thread")?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => Err(anyhow!("netns thread for {ns:?} ended before entering it")),
    }
}

/// Writes sysctls (`("net.ipv4.ip_forward", "1")`) inside namespace `ns`. Keys use dots as
/// separators (interface names given to [`crate::TestBed`] never contain dots).
pub fn sysctls(ns: &str, settings: &[(String, String)]) -> Result<()> {
    in_netns(ns, || {
        for (key, value) in settings {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, value)
                .with_context(|| format!("sysctl {key}={value} in netns {ns:?} ({path})"))?;
        }
        Ok(())
    })
}

fn run_ip(args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("running `ip` (is iproute2 installed?)")?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("ip stdin")?;
        pipe.write_all(input.as_bytes())
            .context("writing to ip -batch")?;
    }
    let out = child.wait_with_output().context("waiting for ip")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}){}: {}",
            args.join(" "),
            out.status,
            stdin
                .map(|s| format!(" on input:\n{s}"))
                .unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `ip [-n NS] ARGS...`; an error carries ip's stderr.
pub fn ip(ns: Option<&str>, args: &[&str]) -> Result<()> {
    match ns {
        Some(ns) => {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            run_ip(&all, None)
        }
        None => run_ip(args, None),
    }
}

/// Runs several `ip` commands (one per entry, without the leading `ip`) in namespace `ns` with
/// one `ip -n NS -batch -`; stops at the first failing command.
pub fn ip_batch(ns: &str, commands: &[String]) -> Result<()> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut input = commands.join("\n");
    input.push('\n');
    run_ip(&["-n", ns, "-batch", "-"], Some(&input))
}

//! The socket-level service path: the cgroup `sock_addr` programs (`dataplane-ebpf`'s
//! `cgroup_sock`) attached to one cgroup v2 directory, which covers every socket of every
//! process in that cgroup and below it (the node's root cgroup in production: host
//! processes, hostNetwork pods and pods alike).
//!
//! Links are pinned like the TC/XDP ones (`links/sock-<program>:0:<cgroup id>`), and a
//! restarted agent adopts them and swaps their program atomically (`BPF_LINK_UPDATE`), so
//! `connect()` is never without translation. Pins of another cgroup (the configured path
//! changed) are removed once the new cgroup has its links.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use aya::programs::{
    links::{FdLink, LinkError, PinnedLink},
    CgroupAttachMode, ProgramError,
};
use thiserror::Error;
use tracing::{info, warn};

use super::pins::{PinDir, PinError};
use super::Datapath;

pub const PROG_CONNECT4: &str = "skiff_conn4";
pub const PROG_CONNECT6: &str = "skiff_conn6";
pub const PROG_SENDMSG4: &str = "skiff_send4";
pub const PROG_SENDMSG6: &str = "skiff_send6";
pub const PROG_RECVMSG4: &str = "skiff_recv4";
pub const PROG_RECVMSG6: &str = "skiff_recv6";
pub const PROG_GETPEERNAME4: &str = "skiff_peer4";
pub const PROG_GETPEERNAME6: &str = "skiff_peer6";
/// The socket-level programs; each is attached once per cgroup.
pub const SOCK_PROGRAMS: [&str; 8] = [
    PROG_CONNECT4,
    PROG_CONNECT6,
    PROG_SENDMSG4,
    PROG_SENDMSG6,
    PROG_RECVMSG4,
    PROG_RECVMSG6,
    PROG_GETPEERNAME4,
    PROG_GETPEERNAME6,
];

/// Prefix of the hook part of these programs' link pins.
const HOOK_PREFIX: &str = "sock-";
/// statfs f_type of a cgroup v2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// `BPF_LINK_UPDATE` (enum bpf_cmd).
const BPF_LINK_UPDATE: libc::c_long = 29;

#[derive(Debug, Error)]
pub enum SockLbError {
    #[error(
        "no cgroup v2 filesystem is mounted (none in /proc/self/mountinfo): set cgroupPath to \
         a cgroup v2 directory, or socketLB: false"
    )]
    NoCgroup2,
    #[error("cgroup {}: {error}", path.display())]
    Cgroup { path: PathBuf, error: io::Error },
    #[error("{} is not a cgroup v2 directory (socket-level hooks need cgroup v2)", .0.display())]
    NotCgroup2(PathBuf),
    #[error("program {0} is missing from the loaded object")]
    MissingProgram(&'static str),
    #[error("attaching {program} to cgroup {}: {error}", cgroup.display())]
    Attach {
        program: &'static str,
        cgroup: PathBuf,
        error: ProgramError,
    },
    #[error("{program}: link: {error}")]
    Link {
        program: &'static str,
        error: LinkError,
    },
    #[error("{program}: pinning the link at {}: {error}", path.display())]
    Pin {
        program: &'static str,
        path: PathBuf,
        error: aya::pin::PinError,
    },
    #[error(transparent)]
    PinDir(#[from] PinError),
}

/// The mount point of the first cgroup v2 filesystem in `/proc/self/mountinfo` text whose
/// root is the hierarchy's root (not a bind mount of a sub-cgroup).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mut fields = left.split_whitespace();
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The default `cgroupPath`: the root of this mount namespace's cgroup v2 mount.
pub fn default_cgroup_path() -> Result<PathBuf, SockLbError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|error| SockLbError::Cgroup {
            path: "/proc/self/mountinfo".into(),
            error,
        })?;
    cgroup2_mount(&text).ok_or(SockLbError::NoCgroup2)
}

/// Open a cgroup v2 directory; returns it and its cgroup id (its inode number).
pub fn open_cgroup(path: &Path) -> Result<(File, u64), SockLbError> {
    let err = |error| SockLbError::Cgroup {
        path: path.to_path_buf(),
        error,
    };
    let file = File::open(path).map_err(err)?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid open fd and a properly sized out-parameter.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    if st.f_type as i64 != CGROUP2_SUPER_MAGIC || !file.metadata().map_err(err)?.is_dir() {
        return Err(SockLbError::NotCgroup2(path.to_path_buf()));
    }
    let id = file.metadata().map_err(err)?.ino();
    Ok((file, id))
}

/// `BPF_LINK_UPDATE`: make `link` run `prog` instead of its current program, atomically.
/// (aya 0.14 offers this for TCX and XDP links only.)
fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_LINK_UPDATE; the kernel reads `size`
    // bytes of it and treats the rest of the union as zero.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            &attr as *const LinkUpdateAttr,
            std::mem::size_of::<LinkUpdateAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The agent's start-up step: attach per the node config. `socketLB: false` removes links an
/// earlier agent pinned (turning the path off); a configured `cgroupPath` that cannot be
/// used is an error; when no cgroup v2 mount is found (e.g. inside `ip netns exec`, which
/// hides /sys/fs/cgroup) the agent logs it and runs without the socket-level path.
pub fn start(
    dp: &mut Datapath,
    config: &crate::config::NodeConfig,
    pins: Option<&PinDir>,
) -> Result<Option<SockLb>, SockLbError> {
    if !config.socket_lb {
        if let Some(pins) = pins {
            remove_pins(pins)?;
        }
        info!("socketLB: false: local sockets' service traffic is not translated");
        return Ok(None);
    }
    let path = match &config.cgroup_path {
        Some(p) => p.clone(),
        None => match default_cgroup_path() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    "{e}; running without the socket-level path: host processes and \
                     hostNetwork pods cannot reach ClusterIPs"
                );
                return Ok(None);
            }
        },
    };
    SockLb::attach(dp, &path, pins).map(Some)
}

/// Remove every socket-level link pin (detaching those links).
pub fn remove_pins(pins: &PinDir) -> Result<(), SockLbError> {
    for p in pins.links()? {
        if p.hook.starts_with(HOOK_PREFIX) {
            info!(pin = %p.path.display(), "removing socket-level link pin");
            std::fs::remove_file(&p.path).map_err(|error| SockLbError::Cgroup {
                path: p.path.clone(),
                error,
            })?;
        }
    }
    Ok(())
}

/// One program's link on the cgroup.
struct Held {
    _link: FdLink,
    pin: Option<PathBuf>,
}

/// The socket-level programs attached to one cgroup.
pub struct SockLb {
    cgroup: PathBuf,
    cgroup_id: u64,
    links: Vec<Held>,
}

impl SockLb {
    /// Attach every socket-level program to `cgroup` (alongside other programs there). With `pins`, links pinned by an earlier agent for this cgroup are
    /// adopted with their program swapped atomically, new links are pinned, and pins for
    /// other cgroups are removed (detaching those) once this cgroup has every link.
    pub fn attach(
        dp: &mut Datapath,
        cgroup: &Path,
        pins: Option<&PinDir>,
    ) -> Result<SockLb, SockLbError> {
        let (file, cgroup_id) = open_cgroup(cgroup)?;
        let mut links = Vec::new();
        for program in SOCK_PROGRAMS {
            let pin = pins.map(|p| pin_path(p, program, cgroup_id));
            let prog = dp
                .sock_program(program)
                .ok_or(SockLbError::MissingProgram(program))?;
            if let Some(link) = adopt(pin.as_ref(), program, prog.fd().map(|fd| fd.as_fd())) {
                links.push(Held { _link: link, pin });
                continue;
            }
            let attach_err = |error| SockLbError::Attach {
                program,
                cgroup: cgroup.to_path_buf(),
                error,
            };
            // A bpf_link attach takes no flags (`Single` is 0) and always coexists with
            // other programs on the cgroup, as BPF_F_ALLOW_MULTI would.
            let id = prog
                .attach(&file, CgroupAttachMode::Single)
                .map_err(attach_err)?;
            let link = FdLink::try_from(prog.take_link(id).map_err(attach_err)?)
                .map_err(|error| SockLbError::Link { program, error })?;
            let link = match &pin {
                None => link,
                Some(path) => FdLink::from(link.pin(path).map_err(|error| SockLbError::Pin {
                    program,
                    path: path.clone(),
                    error,
                })?),
            };
            links.push(Held { _link: link, pin });
        }
        info!(cgroup = %cgroup.display(), cgroup_id, pinned = pins.is_some(),
            "socket-level service programs attached (connect, sendmsg, recvmsg, getpeername)");
        let lb = SockLb {
            cgroup: cgroup.to_path_buf(),
            cgroup_id,
            links,
        };
        if let Some(pins) = pins {
            lb.drop_stale_pins(pins)?;
        }
        Ok(lb)
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }

    /// Remove pins of socket-level links that are not ours (another cgroup, or a program
    /// this version no longer has): unpinning detaches them.
    fn drop_stale_pins(&self, pins: &PinDir) -> Result<(), SockLbError> {
        for p in pins.links()? {
            if !p.hook.starts_with(HOOK_PREFIX) {
                continue;
            }
            if !self.links.iter().any(|h| h.pin.as_ref() == Some(&p.path)) {
                info!(pin = %p.path.display(), "removing the pin of a socket-level link of another cgroup or version");
                if let Err(e) = std::fs::remove_file(&p.path) {
                    warn!(pin = %p.path.display(), error = %e, "removing stale link pin");
                }
            }
        }
        Ok(())
    }

    /// Detach for good: remove the pins (the other references) and drop ours.
    pub fn detach(self) {
        for h in self.links {
            if let Some(path) = &h.pin {
                if let Err(e) = std::fs::remove_file(path) {
                    warn!(path = %path.display(), error = %e, "removing link pin");
                }
            }
        }
    }
}

fn pin_path(pins: &PinDir, program: &str, cgroup_id: u64) -> PathBuf {
    pins.link_path(
        &format!("{HOOK_PREFIX}{program}"),
        0,
        &cgroup_id.to_string(),
    )
}

/// The link pinned at `pin`, now running `prog`; `None` (pin removed if unusable) when there
/// is none to adopt.
fn adopt(
    pin: Option<&PathBuf>,
    program: &'static str,
    prog: Result<BorrowedFd<'_>, ProgramError>,
) -> Option<FdLink> {
    let path = pin.filter(|p| p.exists())?;
    let result = (|| -> Result<FdLink, String> {
        let prog = prog.map_err(|e| e.to_string())?;
        // aya's FdLink does not lend its fd: update through a second reference of our own.
        let fd = link_fd(path).map_err(|e| format!("BPF_OBJ_GET: {e}"))?;
        link_update(fd.as_fd(), prog).map_err(|e| format!("BPF_LINK_UPDATE: {e}"))?;
        let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
        Ok(FdLink::from(pinned))
    })();
    match result {
        Ok(link) => {
            info!(program, pin = %path.display(), "adopted pinned cgroup link: program replaced atomically");
            Some(link)
        }
        Err(e) => {
            // E.g. the cgroup was removed (the link is defunct): attach anew.
            warn!(program, pin = %path.display(), error = %e, "unusable link pin: attaching anew");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// An fd of the link pinned at `path` (`BPF_OBJ_GET`).
fn link_fd(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        // Explicit, zeroed: the kernel rejects non-zero bytes past the command's fields.
        _pad: u32,
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_OBJ_GET pointing at a live C string.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            std::mem::size_of::<ObjGetAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_cgroup2_mount_of_a_hybrid_layout() {
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_a_unified_layout_and_skips_bind_mounts_of_sub_cgroups() {
        let text = "\
50 1 0:40 /kubepods/pod1 /host/cg rw - cgroup2 cgroup2 rw
51 1 0:40 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(cgroup2_mount(text), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn no_cgroup2_mount_is_none() {
        assert_eq!(cgroup2_mount("48 45 0:39 / /sys rw - sysfs s rw\n"), None);
        assert_eq!(cgroup2_mount(""), None);
    }

    #[test]
    fn mount_points_are_unescaped() {
        let text = "9 1 0:40 / /run/my\\040cgroup\\134x rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount(text),
            Some(PathBuf::from("/run/my cgroup\\x"))
        );
        assert_eq!(unescape("a\\04"), "a\\04");
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup() {
        assert!(matches!(
            open_cgroup(Path::new("/")),
            Err(SockLbError::NotCgroup2(_))
        ));
        assert!(matches!(
            open_cgroup(Path::new("/nonexistent-cgroup")),
            Err(SockLbError::Cgroup { .. })
        ));
    }

    #[test]
    fn pins_name_program_and_cgroup() {
        let name = format!("{HOOK_PREFIX}{PROG_CONNECT4}:0:1234");
        let (hook, idx, rest) = super::super::pins::parse_link_name(&name).unwrap();
        assert_eq!((hook, idx, rest), ("sock-skiff_conn4", 0, "1234"));
    }
}

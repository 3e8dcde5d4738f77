//! skiff's directory on a BPF filesystem: pinned maps and links outlive the agent, so an agent
//! restart (crash, upgrade) never leaves packets without a program, and connection tracking
//! and service state carry over.
//!
//! Layout under the root (default `/sys/fs/bpf/skiff`):
//! - `maps/<MAP_NAME>`: the maps of `dataplane_common::maps` (names carry a layout version).
//! - `links/<hook>:<ifindex>:<ifname>`: one TCX or XDP link per interface. The ifindex is part
//!   of the name so that an interface re-created under the same name gets a fresh link.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::programs::links::{FdLink, PinnedLink};

use thiserror::Error;

/// The magic number of a BPF filesystem (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum PinError {
    #[error(
        "{0} is not on a BPF filesystem: mount one (`mount -t bpf bpf /sys/fs/bpf`) or choose \
         another --bpffs directory"
    )]
    NotBpffs(PathBuf),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |error| PinError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Whether `path` (which must exist) lives on a BPF filesystem.
pub fn is_bpffs(path: &Path) -> Result<bool, PinError> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| PinError::Io {
        path: path.to_path_buf(),
        error: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a properly sized out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io_err(path)(io::Error::last_os_error()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// A pinned link's identity, parsed from its file name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkPin {
    pub hook: String,
    pub ifindex: u32,
    /// The interface name as pinned (dots replaced: bpffs refuses names with dots).
    pub ifname: String,
    pub path: PathBuf,
}

/// bpffs refuses names that contain a dot (they are reserved for the kernel's own objects).
fn pin_safe(name: &str) -> String {
    name.replace('.', "_")
}

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Open (creating if needed) skiff's directory. Its parent must be on a BPF filesystem.
    pub fn open(root: impl Into<PathBuf>) -> Result<PinDir, PinError> {
        let root = root.into();
        let parent = root.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() || !is_bpffs(parent)? {
            return Err(PinError::NotBpffs(parent.to_path_buf()));
        }
        let dir = PinDir { root };
        for d in [dir.root.clone(), dir.maps_dir(), dir.links_dir()] {
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn link_path(&self, hook: &str, ifindex: u32, ifname: &str) -> PathBuf {
        self.links_dir()
            .join(format!("{hook}:{ifindex}:{}", pin_safe(ifname)))
    }

    /// The pinned links, in name order.
    pub fn links(&self) -> Result<Vec<LinkPin>, PinError> {
        list_links(&self.links_dir())
    }

    /// Remove map pins whose names are not in `current`: maps of an older layout version. Call
    /// it only once every link runs the current programs (which no longer use those maps);
    /// the kernel frees a map when its last pin and program reference are gone.
    pub fn remove_stale_maps(&self, current: &[&str]) -> Result<Vec<PathBuf>, PinError> {
        let dir = self.maps_dir();
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| !current.contains(&n.as_str())) {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                removed.push(path);
            }
        }
        Ok(removed)
    }
}

/// Split a link pin's file name, `<hook>:<ifindex>:<ifname>`, into its parts.
pub fn parse_link_name(name: &str) -> Option<(&str, u32, &str)> {
    let mut parts = name.splitn(3, ':');
    let (hook, idx, ifname) = (parts.next()?, parts.next()?, parts.next()?);
    Some((hook, idx.parse().ok()?, ifname))
}

fn list_links(dir: &Path) -> Result<Vec<LinkPin>, PinError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((hook, ifindex, ifname)) = parse_link_name(&name) {
            out.push(LinkPin {
                hook: hook.to_string(),
                ifindex,
                ifname: ifname.to_string(),
                path: entry.path(),
            });
        }
    }
    out.sort();
    Ok(out)
}

/// What `cleanup` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: Vec<PathBuf>,
    pub maps: Vec<PathBuf>,
    /// Programs of the removed links still loaded after `DETACH_WAIT`: something else holds
    /// them (a running agent), so their links may still be attached.
    pub still_loaded: Vec<u32>,
}

/// How long `remove_all` waits for the kernel to detach what it unpinned.
const DETACH_WAIT: Duration = Duration::from_secs(10);

/// Remove every link and map skiff pinned under `root`, then the directories. Unpinning the
/// last reference detaches a link (its program goes with it) and frees a map. A running agent
/// keeps its own references until it exits: stop it first.
///
/// The kernel detaches an unpinned link later, on a work queue (each TCX detach waits for an
/// RCU grace period), so this waits, bounded, until the links' programs are gone: when it
/// returns, no packet meets them any more.
pub fn remove_all(root: &Path) -> Result<Removed, PinError> {
    let mut removed = Removed::default();
    if !root.exists() {
        return Ok(removed);
    }
    let mut programs = BTreeSet::new();
    for pin in list_links(&root.join("links"))? {
        if let Some(id) = link_program(&pin.path) {
            programs.insert(id);
        }
        std::fs::remove_file(&pin.path).map_err(io_err(&pin.path))?;
        removed.links.push(pin.path);
    }
    let maps = root.join("maps");
    if maps.is_dir() {
        for entry in std::fs::read_dir(&maps).map_err(io_err(&maps))? {
            let path = entry.map_err(io_err(&maps))?.path();
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            removed.maps.push(path);
        }
    }
    for d in [root.join("links"), maps, root.to_path_buf()] {
        match std::fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&d)(e)),
        }
    }
    removed.still_loaded = wait_unloaded(&programs, DETACH_WAIT);
    Ok(removed)
}

/// The program id of the link pinned at `path` (our descriptor is closed again on return).
fn link_program(path: &Path) -> Option<u32> {
    let link = FdLink::from(PinnedLink::from_pin(path).ok()?);
    link.info().ok().map(|i| i.program_id())
}

/// Wait until none of `programs` is loaded, at most `limit`; the ones still loaded.
fn wait_unloaded(programs: &BTreeSet<u32>, limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        // A program that vanishes while being listed is an error item: it is gone.
        let loaded: BTreeSet<u32> = aya::programs::loaded_programs()
            .filter_map(|p| p.ok().map(|p| p.id()))
            .collect();
        let left: Vec<u32> = programs.intersection(&loaded).copied().collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_carry_hook_index_and_a_dot_free_name() {
        let d = PinDir {
            root: PathBuf::from("/sys/fs/bpf/skiff"),
        };
        assert_eq!(
            d.link_path("tc-ingress", 7, "eth0.100"),
            PathBuf::from("/sys/fs/bpf/skiff/links/tc-ingress:7:eth0_100")
        );
    }

    #[test]
    fn a_plain_directory_is_not_bpffs() {
        assert!(!is_bpffs(Path::new("/")).unwrap());
        assert!(matches!(
            PinDir::open("/nonexistent-parent/skiff"),
            Err(PinError::NotBpffs(_))
        ));
    }
}

//! `skiff status`: what is loaded, attached and programmed on this node, read from the state the
//! agent leaves behind, so it works whether or not the agent runs and without talking to it.
//!
//! Two sources:
//! - the bpffs directory (default `/sys/fs/bpf/skiff`): maps pinned at `maps/<MAP_NAME>` and
//!   links at `links/<hook>:<ifindex>:<ifname>` (`links/<hook>-<ifname>` is understood too);
//! - `<state_dir>/status.json` (default `/run/skiff`), rewritten atomically by the agent after
//!   every sync: see [`AgentStatus`].
//!
//! Missing pieces are part of the report ("no pinned maps", "no status file"); only a directory
//! that exists but cannot be read is an error, since then nothing useful can be said.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, LinkType, PinnedLink};
use aya::Pod;
use dataplane_common::maps::{
    AFFINITY, BACKENDS, CONNTRACK, POLICY_CONNTRACK, POLICY_ENDPOINTS, POLICY_RULES, SERVICES,
    STATS,
};
use dataplane_common::policy::{Endpoint, IpKey, PolicyCtValue, PolicyKey, PolicyValue};
use dataplane_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, Reason, ServiceKey, ServiceValue,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/skiff";
pub const DEFAULT_STATE_DIR: &str = "/run/skiff";
pub const STATUS_FILE: &str = "status.json";

/// The maps the report looks for, in display order.
pub const REPORTED_MAPS: [&str; 8] = [
    SERVICES,
    BACKENDS,
    CONNTRACK,
    AFFINITY,
    STATS,
    POLICY_ENDPOINTS,
    POLICY_RULES,
    POLICY_CONNTRACK,
];

/// Where the agent writes its status in `state_dir`.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

#[derive(Debug, Error)]
pub enum StatusError {
    #[error("cannot read directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: invalid status file: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StatusError + '_ {
    move |source| StatusError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the agent's cluster state comes from. Serialized as `"manifests:<dir>"` or
/// `"kubernetes"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Source {
    Manifests(PathBuf),
    Kubernetes,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Manifests(dir) => write!(f, "manifests:{}", dir.display()),
            Source::Kubernetes => f.write_str("kubernetes"),
        }
    }
}

impl From<Source> for String {
    fn from(s: Source) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for Source {
    type Error = String;
    fn try_from(s: String) -> Result<Source, String> {
        if s == "kubernetes" {
            Ok(Source::Kubernetes)
        } else if let Some(dir) = s.strip_prefix("manifests:") {
            Ok(Source::Manifests(dir.into()))
        } else {
            Err(format!(
                "unknown source {s:?} (expected \"manifests:<dir>\" or \"kubernetes\")"
            ))
        }
    }
}

/// The hook a program is attached at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Hook {
    /// Pods' veths, packets the pod sends (`skiff_tc_pod`).
    #[serde(rename = "tc-ingress")]
    TcIngress,
    /// Pods' veths, packets going into the pod (`skiff_tc_to_pod`).
    #[serde(rename = "tc-egress")]
    TcEgress,
    /// External interfaces, packets from outside, native XDP (`skiff_xdp_ext`).
    #[serde(rename = "xdp")]
    Xdp,
    /// External interfaces, packets from outside, TC ingress (`skiff_tc_ext_in`): where
    /// native XDP is refused, or `externalIngress: tc`.
    #[serde(rename = "tc-ext-ingress")]
    TcExtIngress,
    /// TC egress on external interfaces, packets leaving the node (`skiff_tc_ext`:
    /// masquerading).
    #[serde(rename = "tc-ext-egress")]
    TcExtEgress,
}

impl Hook {
    pub const fn as_str(self) -> &'static str {
        match self {
            Hook::TcIngress => "tc-ingress",
            Hook::TcEgress => "tc-egress",
            Hook::Xdp => "xdp",
            Hook::TcExtIngress => "tc-ext-ingress",
            Hook::TcExtEgress => "tc-ext-egress",
        }
    }

    pub fn parse(s: &str) -> Option<Hook> {
        [
            Hook::TcIngress,
            Hook::TcEgress,
            Hook::Xdp,
            Hook::TcExtIngress,
            Hook::TcExtEgress,
        ]
        .into_iter()
        .find(|h| h.as_str() == s)
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One interface the agent attached a program to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    pub iface: String,
    pub hook: Hook,
    /// How: "tcx" for TC, "native" for XDP (skiff never attaches generic XDP).
    pub mode: String,
}

/// What the agent reports about itself in `<state_dir>/status.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    pub pid: u32,
    /// Unix seconds.
    pub started_at: u64,
    /// Unix seconds of the last sync attempt (0: none yet).
    pub last_sync_at: u64,
    pub last_sync_ms: f64,
    /// Map operations the last sync applied (0 when it failed).
    pub last_sync_changes: usize,
    /// Why the last sync failed; `None` when it succeeded.
    pub last_sync_error: Option<String>,
    /// Service frontends in the desired state of the last successful sync.
    pub frontends: usize,
    pub source: Source,
    pub attached: Vec<Attached>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AgentStatus {
    /// The status of this process, started now, before any sync.
    pub fn new(source: Source) -> AgentStatus {
        AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_at: unix_now(),
            last_sync_at: 0,
            last_sync_ms: 0.0,
            last_sync_changes: 0,
            last_sync_error: None,
            frontends: 0,
            source,
            attached: Vec::new(),
        }
    }

    /// Record a successful sync that ended now.
    pub fn synced(&mut self, took: Duration, changes: usize, frontends: usize) {
        self.last_sync_at = unix_now();
        self.last_sync_ms = took.as_secs_f64() * 1e3;
        self.last_sync_changes = changes;
        self.last_sync_error = None;
        self.frontends = frontends;
    }

    /// Record a failed sync that ended now.
    pub fn sync_failed(&mut self, took: Duration, error: &dyn fmt::Display) {
        self.last_sync_at = unix_now();
        self.last_sync_ms = took.as_secs_f64() * 1e3;
        self.last_sync_changes = 0;
        self.last_sync_error = Some(error.to_string());
    }

    /// Write to `path` so that readers see the old or the new file, never a partial one: write
    /// a temporary file beside it, then rename over. Creates the parent directory.
    pub fn write_atomic(&self, path: &Path) -> Result<(), StatusError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let json = serde_json::to_vec_pretty(self).map_err(|source| StatusError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let write = || -> io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error(&tmp)(e));
        }
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error(path)(e)
        })
    }

    pub fn read(path: &Path) -> Result<AgentStatus, StatusError> {
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        serde_json::from_slice(&bytes).map_err(|source| StatusError::Json {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The outcome of looking for one piece of state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe<T> {
    /// Not there (not pinned, no file).
    Absent,
    /// There, but reading it failed.
    Failed(String),
    Read(T),
}

impl<T> From<Result<T, String>> for Probe<T> {
    fn from(r: Result<T, String>) -> Probe<T> {
        r.map_or_else(Probe::Failed, Probe::Read)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapUsage {
    /// Entries in use; `None` for arrays, whose slots always all exist.
    pub entries: Option<u64>,
    pub capacity: u32,
    /// The entry count is a lower bound: the map changed so much while being walked that the
    /// walk was cut short.
    pub approximate: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapReport {
    pub name: &'static str,
    pub path: PathBuf,
    pub usage: Probe<MapUsage>,
}

/// What the kernel says about a pinned link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub link_id: u32,
    pub program_id: u32,
    pub link_type: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkReport {
    /// The pin's file name.
    pub pin: String,
    pub hook: Option<Hook>,
    pub ifindex: Option<u32>,
    pub iface: String,
    /// The interface's current name for `ifindex`, when the pin names one: `None` when no
    /// interface has that index any more (the link's device is gone).
    pub iface_now: Option<Option<String>>,
    pub kernel: Result<LinkState, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AgentState {
    /// No status file: the agent never ran with this state directory (or it was cleaned).
    NoStatusFile,
    /// The status file exists but could not be parsed.
    Invalid(String),
    Reported {
        status: AgentStatus,
        /// Whether a process with the reported pid exists.
        process_alive: bool,
    },
}

/// Everything `skiff status` shows.
#[derive(Clone, Debug)]
pub struct StatusReport {
    pub bpffs_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Unix seconds when the report was taken.
    pub taken_at: u64,
    pub agent: AgentState,
    pub maps: Vec<MapReport>,
    pub links: Vec<LinkReport>,
    pub packets: Probe<BTreeMap<Reason, u64>>,
}

/// The entries of a directory that must be readable if it exists; `None` if it does not.
fn list_dir(path: &Path) -> Result<Option<Vec<String>>, StatusError> {
    let dir_err = |source| StatusError::Dir {
        path: path.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(dir_err(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(
            entry
                .map_err(dir_err)?
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    Ok(Some(names))
}

/// Distinct keys of a hash map. Keys are collected in a set because a walk that meets a
/// concurrently deleted key restarts from the beginning (BPF_MAP_GET_NEXT_KEY); the walk is
/// capped so that constant churn (conntrack under load) cannot keep it going forever.
fn count_keys<K: Pod + Eq + Hash, V: Pod>(map: Map, capacity: u32) -> Result<MapUsage, String> {
    let map = HashMap::<MapData, K, V>::try_from(map).map_err(|e| e.to_string())?;
    let budget = 2 * capacity as usize + 1024;
    let mut seen = HashSet::new();
    let mut walked = 0usize;
    let mut approximate = false;
    for key in map.keys() {
        seen.insert(key.map_err(|e| e.to_string())?);
        walked += 1;
        if walked >= budget {
            approximate = true;
            break;
        }
    }
    Ok(MapUsage {
        entries: Some(seen.len() as u64),
        capacity,
        approximate,
    })
}

fn packet_counters(map: Map) -> Result<BTreeMap<Reason, u64>, String> {
    let stats = PerCpuArray::<MapData, u64>::try_from(map).map_err(|e| e.to_string())?;
    Reason::ALL
        .iter()
        .map(|r| {
            let per_cpu = stats.get(&r.index(), 0).map_err(|e| e.to_string())?;
            Ok((*r, per_cpu.iter().sum()))
        })
        .collect()
}

fn open_map(path: &Path) -> Result<(Map, u32), String> {
    let data = MapData::from_pin(path).map_err(|e| e.to_string())?;
    let capacity = data.info().map_err(|e| e.to_string())?.max_entries();
    let map = Map::from_map_data(data).map_err(|e| e.to_string())?;
    Ok((map, capacity))
}

fn probe_maps(maps_dir: &Path) -> (Vec<MapReport>, Probe<BTreeMap<Reason, u64>>) {
    let mut reports = Vec::new();
    let mut packets = Probe::Absent;
    for name in REPORTED_MAPS {
        let path = maps_dir.join(name);
        let usage = if !path.exists() {
            Probe::Absent
        } else {
            match open_map(&path) {
                Err(e) if name == STATS => {
                    packets = Probe::Failed(e.clone());
                    Probe::Failed(e)
                }
                Err(e) => Probe::Failed(e),
                Ok((map, capacity)) if name == STATS => {
                    packets = packet_counters(map).into();
                    Probe::Read(MapUsage {
                        entries: None,
                        capacity,
                        approximate: false,
                    })
                }
                Ok((map, capacity)) => match name {
                    SERVICES => count_keys::<ServiceKey, ServiceValue>(map, capacity),
                    BACKENDS => count_keys::<u32, Backend>(map, capacity),
                    AFFINITY => count_keys::<AffinityKey, AffinityValue>(map, capacity),
                    POLICY_ENDPOINTS => count_keys::<IpKey, Endpoint>(map, capacity),
                    POLICY_RULES => count_keys::<PolicyKey, PolicyValue>(map, capacity),
                    POLICY_CONNTRACK => count_keys::<CtKey, PolicyCtValue>(map, capacity),
                    _ => count_keys::<CtKey, CtValue>(map, capacity),
                }
                .into(),
            }
        };
        reports.push(MapReport { name, path, usage });
    }
    (reports, packets)
}

/// A link pin's hook, ifindex and interface, from its name (`crate::bpf::pins` layout).
fn parse_link_pin(name: &str) -> (Option<Hook>, Option<u32>, String) {
    match crate::bpf::pins::parse_link_name(name) {
        Some((hook, idx, iface)) => (Hook::parse(hook), Some(idx), iface.to_string()),
        None => (None, None, String::new()),
    }
}

fn link_state(path: &Path) -> Result<LinkState, String> {
    let link = FdLink::from(PinnedLink::from_pin(path).map_err(|e| e.to_string())?);
    // Dropping our descriptor afterwards does not detach: the pin holds the link.
    let info = link.info().map_err(|e| e.to_string())?;
    let link_type = match info.link_type() {
        Ok(LinkType::Tcx) => "tcx".to_string(),
        Ok(LinkType::Xdp) => "xdp".to_string(),
        Ok(other) => format!("{other:?}").to_lowercase(),
        Err(e) => e.to_string(),
    };
    Ok(LinkState {
        link_id: info.id(),
        program_id: info.program_id(),
        link_type,
    })
}

/// The name of the interface with this index in our network namespace.
fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has the IF_NAMESIZE bytes if_indextoname may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

fn probe_links(links_dir: &Path, names: Vec<String>) -> Vec<LinkReport> {
    names
        .into_iter()
        .map(|pin| {
            let (hook, ifindex, iface) = parse_link_pin(&pin);
            LinkReport {
                kernel: link_state(&links_dir.join(&pin)),
                // Index 0 (socket-level links) names no interface.
                iface_now: ifindex.filter(|&i| i != 0).map(ifname_of),
                pin,
                hook,
                ifindex,
                iface,
            }
        })
        .collect()
}

/// Read the agent's state under `bpffs_dir` and `state_dir`.
pub fn status_report(bpffs_dir: &Path, state_dir: &Path) -> Result<StatusReport, StatusError> {
    // Directories first: one that exists but cannot be listed means we lack the rights to say
    // anything, which is an error rather than "nothing there".
    let maps_dir = bpffs_dir.join("maps");
    let links_dir = bpffs_dir.join("links");
    list_dir(bpffs_dir)?;
    let map_names = list_dir(&maps_dir)?;
    let link_names = list_dir(&links_dir)?.unwrap_or_default();
    list_dir(state_dir)?;

    let (maps, packets) = match map_names {
        Some(_) => probe_maps(&maps_dir),
        None => (
            REPORTED_MAPS
                .iter()
                .map(|name| MapReport {
                    name,
                    path: maps_dir.join(name),
                    usage: Probe::Absent,
                })
                .collect(),
            Probe::Absent,
        ),
    };
    let links = probe_links(&links_dir, link_names);

    let path = status_path(state_dir);
    let agent = match AgentStatus::read(&path) {
        Ok(status) => AgentState::Reported {
            process_alive: Path::new("/proc").join(status.pid.to_string()).exists(),
            status,
        },
        Err(StatusError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            AgentState::NoStatusFile
        }
        Err(StatusError::Io { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied => {
            return Err(StatusError::Dir {
                path: state_dir.to_path_buf(),
                source,
            })
        }
        Err(e) => AgentState::Invalid(e.to_string()),
    };

    Ok(StatusReport {
        bpffs_dir: bpffs_dir.to_path_buf(),
        state_dir: state_dir.to_path_buf(),
        taken_at: unix_now(),
        agent,
        maps,
        links,
        packets,
    })
}

/// "3s", "4m 05s", "2h 07m", "3d 04h".
fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

impl StatusReport {
    fn ago(&self, at: u64) -> String {
        format!("{} ago", human_duration(self.taken_at.saturating_sub(at)))
    }

    /// Pinned maps found, out of the ones looked for.
    pub fn maps_pinned(&self) -> usize {
        self.maps
            .iter()
            .filter(|m| !matches!(m.usage, Probe::Absent))
            .count()
    }

    /// Pinned links the kernel confirms as links.
    pub fn links_live(&self) -> usize {
        self.links.iter().filter(|l| l.kernel.is_ok()).count()
    }
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status_file = status_path(&self.state_dir);
        match &self.agent {
            AgentState::NoStatusFile => writeln!(
                f,
                "Agent:     not running: no status file ({})",
                status_file.display()
            )?,
            AgentState::Invalid(e) => writeln!(f, "Agent:     unknown: {e}")?,
            AgentState::Reported {
                status,
                process_alive,
            } => {
                let state = if *process_alive {
                    format!("running (pid {})", status.pid)
                } else {
                    format!("not running (pid {} has exited)", status.pid)
                };
                writeln!(
                    f,
                    "Agent:     {state}, version {}, started {}, source {}",
                    status.version,
                    self.ago(status.started_at),
                    status.source
                )?;
                if status.last_sync_at == 0 {
                    writeln!(f, "Last sync: none yet")?;
                } else {
                    let outcome = match &status.last_sync_error {
                        None => format!(
                            "ok, {} changes, {} frontends",
                            status.last_sync_changes, status.frontends
                        ),
                        Some(e) => format!("FAILED: {e}"),
                    };
                    writeln!(
                        f,
                        "Last sync: {} (unix {}), took {:.1} ms, {outcome}",
                        self.ago(status.last_sync_at),
                        status.last_sync_at,
                        status.last_sync_ms
                    )?;
                }
            }
        }

        let pinned = self.maps_pinned();
        let loaded = match pinned {
            0 => format!(
                "no pinned maps at {}",
                self.bpffs_dir.join("maps").display()
            ),
            n if n == self.maps.len() => format!("yes ({n} maps pinned)"),
            n => format!("partly ({n} of {} maps pinned)", self.maps.len()),
        };
        writeln!(f, "Loaded:    {loaded}")?;
        writeln!(
            f,
            "Attached:  {} live of {} pinned links under {}",
            self.links_live(),
            self.links.len(),
            self.bpffs_dir.join("links").display()
        )?;
        if let AgentState::Reported { status, .. } = &self.agent {
            if !status.attached.is_empty() {
                writeln!(f, "  agent reports:")?;
                for a in &status.attached {
                    writeln!(f, "    {:<16} {:<14} {}", a.iface, a.hook.as_str(), a.mode)?;
                }
            }
        }
        if !self.links.is_empty() {
            writeln!(f, "  {:<32} {:<14} {:<16} STATE", "PIN", "HOOK", "IFACE")?;
            for l in &self.links {
                let mut state = match &l.kernel {
                    Ok(k) => format!(
                        "live ({} link {}, program {})",
                        k.link_type, k.link_id, k.program_id
                    ),
                    Err(e) => format!("not a live link: {e}"),
                };
                match &l.iface_now {
                    Some(None) => state.push_str("; interface gone"),
                    Some(Some(now)) if now.replace('.', "_") != l.iface => {
                        state.push_str(&format!("; ifindex now belongs to {now}"))
                    }
                    _ => {}
                }
                writeln!(
                    f,
                    "  {:<32} {:<14} {:<16} {state}",
                    l.pin,
                    // Socket-level links (`bpf::socklb`) name a cgroup id, not an interface.
                    l.hook.map_or(
                        if l.pin.starts_with("sock-") {
                            "cgroup"
                        } else {
                            "?"
                        },
                        Hook::as_str
                    ),
                    l.iface
                )?;
            }
        }

        writeln!(f)?;
        writeln!(f, "Maps ({}):", self.bpffs_dir.join("maps").display())?;
        writeln!(
            f,
            "  {:<14} {:>10} {:>10} {:>7}",
            "MAP", "ENTRIES", "CAPACITY", "FILL"
        )?;
        for m in &self.maps {
            match &m.usage {
                Probe::Absent => writeln!(f, "  {:<14} not pinned", m.name)?,
                Probe::Failed(e) => writeln!(f, "  {:<14} unreadable: {e}", m.name)?,
                Probe::Read(MapUsage {
                    entries: None,
                    capacity,
                    ..
                }) => writeln!(
                    f,
                    "  {:<14} {:>10} {:>10} {:>7}  (per-CPU counters)",
                    m.name, "-", capacity, "-"
                )?,
                Probe::Read(MapUsage {
                    entries: Some(n),
                    capacity,
                    approximate,
                }) => {
                    let pct = if *capacity == 0 {
                        0.0
                    } else {
                        *n as f64 * 100.0 / *capacity as f64
                    };
                    let mark = if *approximate {
                        " (at least: map changing fast)"
                    } else {
                        ""
                    };
                    writeln!(
                        f,
                        "  {:<14} {:>10} {:>10} {:>6.1}%{mark}",
                        m.name, n, capacity, pct
                    )?
                }
            }
        }

        writeln!(f)?;
        match &self.packets {
            Probe::Absent => writeln!(f, "Packets:   no counters ({STATS} not pinned)")?,
            Probe::Failed(e) => writeln!(f, "Packets:   counters unreadable: {e}")?,
            Probe::Read(counts) => {
                writeln!(f, "Packets (since the counters were created):")?;
                writeln!(f, "  {:<20} {:<10} {:>14}", "REASON", "VERDICT", "PACKETS")?;
                for (reason, n) in counts {
                    writeln!(
                        f,
                        "  {:<20} {:<10} {:>14}",
                        reason.name(),
                        crate::metrics::verdict(*reason),
                        n
                    )?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "skiff-status-{tag}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sample_status() -> AgentStatus {
        let mut s = AgentStatus::new(Source::Manifests("/etc/skiff/manifests".into()));
        s.synced(Duration::from_micros(1500), 12, 4);
        s.attached = vec![
            Attached {
                iface: "eth0".into(),
                hook: Hook::Xdp,
                mode: "native".into(),
            },
            Attached {
                iface: "veth1a2b".into(),
                hook: Hook::TcIngress,
                mode: "tcx".into(),
            },
        ];
        s
    }

    #[test]
    fn agent_status_round_trips_through_the_file() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("sub").join(STATUS_FILE);
        let mut status = sample_status();
        status.write_atomic(&path).unwrap();
        assert_eq!(AgentStatus::read(&path).unwrap(), status);

        status.sync_failed(Duration::from_millis(2), &"map full");
        status.source = Source::Kubernetes;
        status.write_atomic(&path).unwrap();
        let back = AgentStatus::read(&path).unwrap();
        assert_eq!(back, status);
        assert_eq!(back.last_sync_error.as_deref(), Some("map full"));
        // Only the file itself is left: the temporary was renamed over it.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATUS_FILE)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn agent_status_json_has_the_documented_shape() {
        let status = sample_status();
        let v: serde_json::Value = serde_json::to_value(&status).unwrap();
        assert_eq!(v["source"], "manifests:/etc/skiff/manifests");
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(v["last_sync_changes"], 12);
        assert_eq!(v["frontends"], 4);
        assert_eq!(v["last_sync_ms"], 1.5);
        assert!(v["last_sync_error"].is_null());
        assert_eq!(v["attached"][0]["hook"], "xdp");
        assert_eq!(v["attached"][1]["hook"], "tc-ingress");
        assert_eq!(v["attached"][1]["mode"], "tcx");
        for key in ["version", "started_at", "last_sync_at"] {
            assert!(v.get(key).is_some(), "{key} missing: {v}");
        }
        let k: AgentStatus = serde_json::from_value(serde_json::json!({
            "version": "0.1.0", "pid": 1, "started_at": 10, "last_sync_at": 20,
            "last_sync_ms": 0.5, "last_sync_changes": 0, "last_sync_error": "boom",
            "frontends": 0, "source": "kubernetes", "attached": [],
        }))
        .unwrap();
        assert_eq!(k.source, Source::Kubernetes);
        assert!(serde_json::from_value::<AgentStatus>(serde_json::json!({
            "version": "0.1.0", "pid": 1, "started_at": 10, "last_sync_at": 20,
            "last_sync_ms": 0.5, "last_sync_changes": 0, "last_sync_error": null,
            "frontends": 0, "source": "etcd", "attached": [],
        }))
        .is_err());
    }

    #[test]
    fn reading_a_missing_or_corrupt_file_fails_with_the_path() {
        let dir = temp_dir("corrupt");
        let path = dir.join(STATUS_FILE);
        assert!(matches!(
            AgentStatus::read(&path),
            Err(StatusError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound
        ));
        std::fs::write(&path, b"{\"version\": ").unwrap();
        let e = AgentStatus::read(&path).unwrap_err();
        assert!(matches!(e, StatusError::Json { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn link_pin_names_are_parsed() {
        assert_eq!(
            parse_link_pin("tc-ingress:7:veth1_2"),
            (Some(Hook::TcIngress), Some(7), "veth1_2".into())
        );
        assert_eq!(
            parse_link_pin("tc-egress:7:veth1_2"),
            (Some(Hook::TcEgress), Some(7), "veth1_2".into())
        );
        assert_eq!(
            parse_link_pin("tc-ext-egress:2:eth0"),
            (Some(Hook::TcExtEgress), Some(2), "eth0".into())
        );
        assert_eq!(
            parse_link_pin("xdp:2:eth0"),
            (Some(Hook::Xdp), Some(2), "eth0".into())
        );
        assert_eq!(
            parse_link_pin("tc-ext-ingress:2:eth0"),
            (Some(Hook::TcExtIngress), Some(2), "eth0".into())
        );
        assert_eq!(parse_link_pin("other"), (None, None, String::new()));
    }

    #[test]
    fn nothing_there_is_reported_not_an_error() {
        let dir = temp_dir("empty");
        let report = status_report(&dir.join("bpf"), &dir.join("run")).unwrap();
        assert_eq!(report.agent, AgentState::NoStatusFile);
        assert_eq!(report.maps_pinned(), 0);
        assert!(report.links.is_empty());
        assert_eq!(report.packets, Probe::Absent);
        let text = report.to_string();
        assert!(text.contains("not running: no status file"), "{text}");
        assert!(text.contains("no pinned maps at"), "{text}");
        for name in REPORTED_MAPS {
            assert!(text.contains(&format!("{name:<14} not pinned")), "{text}");
        }

        // A status file whose process is gone.
        let mut status = sample_status();
        status.pid = u32::MAX - 1;
        status.write_atomic(&status_path(&dir.join("run"))).unwrap();
        let report = status_report(&dir.join("bpf"), &dir.join("run")).unwrap();
        assert!(matches!(
            report.agent,
            AgentState::Reported {
                process_alive: false,
                ..
            }
        ));
        let text = report.to_string();
        assert!(text.contains("has exited"), "{text}");
        assert!(text.contains("12 changes, 4 frontends"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(65), "1m 05s");
        assert_eq!(human_duration(7_260), "2h 01m");
        assert_eq!(human_duration(90_000), "1d 01h");
    }
}

//! `skiff observe`: NetworkPolicy verdicts as they happen, like `hubble observe`. Reads the
//! pinned events ring of the running agent and names the pods with the file the agent writes
//! beside `status.json` after each policy sync.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData};
use dataplane_common::{
    maps::CONFIG, maps::POLICY_EVENTS, policy::CFG_ALLOW_EVENTS, policy::CFG_FLAGS,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bpf::events::{Direction, EventStream, EventsError, VerdictEvent};
use crate::bpf::pins::PinDir;
use crate::desired::Protocol;
use crate::policy::{CompiledPolicy, PolicyModel};

/// Pod names for events: written by the agent, read by `observe`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNames {
    /// Endpoint id -> `namespace/name` of the local pod.
    pub endpoints: BTreeMap<u32, String>,
    /// Pod IP -> `namespace/name`, every pod of the cluster.
    pub pods: BTreeMap<IpAddr, String>,
}

impl PodNames {
    pub fn new(model: &PolicyModel, compiled: &CompiledPolicy) -> PodNames {
        PodNames {
            endpoints: compiled
                .endpoints
                .iter()
                .map(|(id, e)| (*id, e.pod.to_string()))
                .collect(),
            pods: model
                .pod_ips()
                .map(|(ip, pod)| (ip, pod.key.to_string()))
                .collect(),
        }
    }

    /// Where the agent keeps the names: beside `status.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("policy-names.json")
    }

    /// Write atomically (a reader never sees half a file).
    pub fn write_atomic(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, path)
    }

    fn read(path: &Path) -> Option<PodNames> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    fn name(&self, ip: IpAddr) -> Option<&str> {
        self.pods.get(&ip).map(String::as_str)
    }
}

/// Which verdicts to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VerdictFilter {
    Dropped,
    Allowed,
    All,
}

impl VerdictFilter {
    fn wants(self, allowed: bool) -> bool {
        match self {
            VerdictFilter::Dropped => !allowed,
            VerdictFilter::Allowed => allowed,
            VerdictFilter::All => true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ObserveOptions {
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub verdict: VerdictFilter,
    /// Only events with this pod (`namespace/name`) at either end.
    pub pod: Option<String>,
    /// Stop after this many events.
    pub count: Option<usize>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub json: bool,
}

#[derive(Debug, Error)]
pub enum ObserveError {
    #[error(transparent)]
    Events(#[from] EventsError),
    #[error("the datapath settings map {}: {source}", path.display())]
    Config {
        #[source]
        source: aya::maps::MapError,
        path: PathBuf,
    },
    #[error("{0}")]
    Pins(String),
    #[error("writing: {0}")]
    Write(#[from] std::io::Error),
}

/// One event as JSON (`--json`).
#[derive(Debug, Serialize)]
pub struct EventLine<'a> {
    pub verdict: &'static str,
    pub direction: &'static str,
    pub proto: String,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub src_pod: Option<&'a str>,
    pub dst_pod: Option<&'a str>,
    /// The local pod whose policy decided.
    pub endpoint: Option<&'a str>,
    pub reason: &'static str,
}

fn proto_name(p: u8) -> String {
    Protocol::from_number(p)
        .map(|p| p.as_k8s().to_string())
        .unwrap_or_else(|| match p {
            dataplane_common::PROTO_ICMP => "ICMP".into(),
            dataplane_common::PROTO_ICMPV6 => "ICMPv6".into(),
            n => format!("proto-{n}"),
        })
}

pub fn event_line<'a>(e: &VerdictEvent, names: &'a PodNames) -> EventLine<'a> {
    EventLine {
        verdict: if e.allowed { "ALLOWED" } else { "DROPPED" },
        direction: match e.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        },
        proto: proto_name(e.proto),
        src: e.src,
        sport: e.sport,
        dst: e.dst,
        dport: e.dport,
        src_pod: names.name(e.src),
        dst_pod: names.name(e.dst),
        endpoint: names.endpoints.get(&e.endpoint).map(String::as_str),
        reason: e.reason.map_or("unknown", |r| r.name()),
    }
}

/// One line for people, in the manner of `hubble observe`.
pub fn format_event(l: &EventLine) -> String {
    let end = |pod: Option<&str>, ip: IpAddr, port: u16| match pod {
        Some(p) => format!("{p}:{port} ({ip})"),
        None => crate::trace::format_endpoint(ip, port),
    };
    format!(
        "{} -> {} {} {} by {} policy of {} ({})",
        end(l.src_pod, l.src, l.sport),
        end(l.dst_pod, l.dst, l.dport),
        l.proto,
        l.verdict,
        l.direction,
        l.endpoint.unwrap_or("an unknown pod"),
        l.reason
    )
}

fn matches(l: &EventLine, pod: Option<&str>) -> bool {
    pod.is_none_or(|p| l.src_pod == Some(p) || l.dst_pod == Some(p) || l.endpoint == Some(p))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, which stamps events.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Turns allow events on while it lives (and off again, even on SIGINT/SIGTERM).
struct AllowEvents {
    config: Array<MapData, u32>,
}

impl AllowEvents {
    fn on(pins: &PinDir) -> Result<AllowEvents, ObserveError> {
        let path = pins.map_path(CONFIG);
        let err = |source| ObserveError::Config {
            source,
            path: path.clone(),
        };
        let data = MapData::from_pin(&path).map_err(err)?;
        let mut config: Array<MapData, u32> = Array::try_from(Map::Array(data)).map_err(err)?;
        let flags = config.get(&CFG_FLAGS, 0).map_err(err)?;
        config
            .set(CFG_FLAGS, flags | CFG_ALLOW_EVENTS, 0)
            .map_err(err)?;
        Ok(AllowEvents { config })
    }
}

impl Drop for AllowEvents {
    fn drop(&mut self) {
        if let Ok(flags) = self.config.get(&CFG_FLAGS, 0) {
            let _ = self.config.set(CFG_FLAGS, flags & !CFG_ALLOW_EVENTS, 0);
        }
    }
}

/// Stream events to `out` until `count`, `duration` or a signal.
pub fn observe(
    opts: &ObserveOptions,
    out: &mut impl std::io::Write,
) -> Result<usize, ObserveError> {
    let pins = PinDir::open(&opts.bpffs)
        .map_err(|e| ObserveError::Pins(format!("{}: {e}", opts.bpffs.display())))?;
    let mut stream = EventStream::open_pinned(&pins.map_path(POLICY_EVENTS))?;
    let _allow = if opts.verdict != VerdictFilter::Dropped {
        Some(AllowEvents::on(&pins)?)
    } else {
        None
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    // The ring keeps what nobody read (up to its size): show only what happens from now on.
    let since_ns = monotonic_ns();
    let names_path = PodNames::path(&opts.state_dir);
    let mut names = PodNames::read(&names_path).unwrap_or_default();
    let mut names_read = Instant::now();
    let start = Instant::now();
    let mut shown = 0;
    while !STOP.load(Ordering::Relaxed)
        && opts.count.is_none_or(|c| shown < c)
        && opts.duration.is_none_or(|d| start.elapsed() < d)
    {
        if !stream.wait(Duration::from_millis(200))? {
            continue;
        }
        // Pods come and go: pick up the agent's latest names at most once a second.
        if names_read.elapsed() > Duration::from_secs(1) {
            names = PodNames::read(&names_path).unwrap_or(names);
            names_read = Instant::now();
        }
        for raw in stream.by_ref() {
            let Some(e) = VerdictEvent::from_raw(&raw) else {
                continue;
            };
            if e.ts_ns < since_ns {
                continue;
            }
            let line = event_line(&e, &names);
            if !opts.verdict.wants(e.allowed) || !matches(&line, opts.pod.as_deref()) {
                continue;
            }
            if opts.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&line).map_err(std::io::Error::other)?
                )?;
            } else {
                writeln!(out, "{}", format_event(&line))?;
            }
            out.flush()?;
            shown += 1;
            if opts.count.is_some_and(|c| shown >= c) {
                break;
            }
        }
    }
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::Reason;

    fn event(allowed: bool) -> VerdictEvent {
        VerdictEvent {
            ts_ns: 1,
            src: "10.244.2.22".parse().unwrap(),
            dst: "10.244.2.11".parse().unwrap(),
            sport: 40_000,
            dport: 80,
            proto: 6,
            direction: Direction::Ingress,
            allowed,
            endpoint: 7,
            identity: 300,
            reason: Some(if allowed {
                Reason::PassPolicyAllowed
            } else {
                Reason::DropPolicyIngress
            }),
        }
    }

    fn names() -> PodNames {
        PodNames {
            endpoints: [(7, "x/a".to_string())].into(),
            pods: [
                ("10.244.2.11".parse().unwrap(), "x/a".to_string()),
                ("10.244.2.22".parse().unwrap(), "y/b".to_string()),
            ]
            .into(),
        }
    }

    #[test]
    fn events_name_both_pods_and_the_deciding_policy_end() {
        let n = names();
        let l = event_line(&event(false), &n);
        assert_eq!(
            format_event(&l),
            "y/b:40000 (10.244.2.22) -> x/a:80 (10.244.2.11) TCP DROPPED by ingress policy of \
             x/a (policy_denied_ingress)"
        );
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["src_pod"], "y/b");
        assert_eq!(json["verdict"], "DROPPED");
    }

    #[test]
    fn unknown_addresses_are_shown_as_addresses() {
        let mut e = event(true);
        e.src = "192.0.2.9".parse().unwrap();
        let n = names();
        let line = format_event(&event_line(&e, &n));
        assert!(line.starts_with("192.0.2.9:40000 -> x/a:80"), "{line}");
    }

    #[test]
    fn filters_by_verdict_and_pod() {
        let n = names();
        assert!(VerdictFilter::Dropped.wants(false) && !VerdictFilter::Dropped.wants(true));
        assert!(VerdictFilter::Allowed.wants(true) && !VerdictFilter::Allowed.wants(false));
        assert!(VerdictFilter::All.wants(true) && VerdictFilter::All.wants(false));
        let l = event_line(&event(false), &n);
        assert!(matches(&l, None));
        assert!(matches(&l, Some("y/b")));
        assert!(matches(&l, Some("x/a")));
        assert!(!matches(&l, Some("z/c")));
    }
}

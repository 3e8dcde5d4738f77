//! NetworkPolicy verdict events from the `SK_EVENTS_V1` ring buffer: the datapath writes one
//! `PolicyEvent` per policy drop, and per allowed new connection when `CFG_ALLOW_EVENTS` is set
//! (`Maps::set_allow_events`). `skiff observe` reads the pinned ring with [`EventStream`]; tests
//! read the loaded one with [`drain`].
//!
//! A ring buffer has one consumer position, shared by every reader: two readers at a time
//! each see part of the events.

use std::borrow::Borrow;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Map, MapData, MapError, RingBuf};
use dataplane_common::{
    policy::{PolicyEvent, DIR_EGRESS, DIR_INGRESS, VERDICT_ALLOW, VERDICT_DROP},
    Reason,
};
use thiserror::Error;

use super::abi::ip_from16;

#[derive(Debug, Error)]
pub enum EventsError {
    #[error("opening the policy events ring {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("waiting for policy events: {0}")]
    Poll(#[source] std::io::Error),
}

/// Which end's policy decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The destination pod's ingress policy (at its to-pod hook).
    Ingress,
    /// The source pod's egress policy (at its from-pod hook).
    Egress,
}

/// One verdict event with std types (addresses, host-order ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    pub direction: Direction,
    pub allowed: bool,
    /// The local endpoint whose policy decided (`policy::Endpoint::id`).
    pub endpoint: u32,
    /// The remote address's identity.
    pub identity: u32,
    /// `None` only for an index this build does not know.
    pub reason: Option<Reason>,
}

impl VerdictEvent {
    /// `None` for a direction or verdict value the datapath never writes.
    pub fn from_raw(e: &PolicyEvent) -> Option<VerdictEvent> {
        let direction = match e.dir {
            DIR_INGRESS => Direction::Ingress,
            DIR_EGRESS => Direction::Egress,
            _ => return None,
        };
        let allowed = match e.verdict {
            VERDICT_ALLOW => true,
            VERDICT_DROP => false,
            _ => return None,
        };
        Some(VerdictEvent {
            ts_ns: e.ts_ns,
            src: ip_from16(e.src),
            dst: ip_from16(e.dst),
            sport: u16::from_be(e.sport_be),
            dport: u16::from_be(e.dport_be),
            proto: e.proto,
            direction,
            allowed,
            endpoint: e.endpoint,
            identity: e.identity,
            reason: Reason::from_index(e.reason),
        })
    }
}

/// The event in one ring record; `None` when the record is too short to hold one.
pub fn decode(record: &[u8]) -> Option<PolicyEvent> {
    if record.len() < std::mem::size_of::<PolicyEvent>() {
        return None;
    }
    // SAFETY: the length is checked; PolicyEvent is plain old data, any bytes are a value.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr() as *const PolicyEvent) })
}

/// The next event in the ring, if there is one now (records too short to decode are
/// skipped).
pub fn next_event<T: Borrow<MapData>>(ring: &mut RingBuf<T>) -> Option<PolicyEvent> {
    while let Some(item) = ring.next() {
        if let Some(e) = decode(&item) {
            return Some(e);
        }
    }
    None
}

/// The events in the ring now, at most `max` (the rest stay for the next call).
pub fn drain<T: Borrow<MapData>>(ring: &mut RingBuf<T>, max: usize) -> Vec<PolicyEvent> {
    let mut out = Vec::new();
    while out.len() < max {
        match next_event(ring) {
            Some(e) => out.push(e),
            None => break,
        }
    }
    out
}

/// The pinned events ring of a running agent.
pub struct EventStream {
    ring: RingBuf<MapData>,
}

impl EventStream {
    /// Open the ring pinned at `path` (`PinDir::map_path(maps::POLICY_EVENTS)`).
    pub fn open_pinned(path: &Path) -> Result<EventStream, EventsError> {
        let err = |source| EventsError::Open {
            path: path.to_path_buf(),
            source,
        };
        let data = MapData::from_pin(path).map_err(err)?;
        let ring = RingBuf::try_from(Map::RingBuf(data)).map_err(err)?;
        Ok(EventStream { ring })
    }

    /// Wait until the ring has data or `timeout` passes; true when there is data.
    pub fn wait(&self, timeout: Duration) -> Result<bool, EventsError> {
        let mut fds = [libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, its count, a bounded timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        match n {
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(EventsError::Poll(e))
                }
            }
            0 => Ok(false),
            _ => Ok(true),
        }
    }
}

/// The events already in the ring, without waiting: `None` when it is empty for now (not
/// fused: after `wait` there may be more).
impl Iterator for EventStream {
    type Item = PolicyEvent;

    fn next(&mut self) -> Option<PolicyEvent> {
        next_event(&mut self.ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::{v4_mapped, PROTO_TCP};

    fn raw() -> PolicyEvent {
        PolicyEvent {
            ts_ns: 7,
            src: v4_mapped([10, 244, 1, 5]),
            dst: v4_mapped([10, 244, 2, 6]),
            sport_be: 40_000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: PROTO_TCP,
            dir: DIR_INGRESS,
            verdict: VERDICT_DROP,
            _pad: 0,
            endpoint: 3,
            identity: 300,
            reason: Reason::DropPolicyIngress.index(),
            _pad2: 0,
        }
    }

    #[test]
    fn records_decode_to_events_with_std_types() {
        let e = raw();
        let bytes = unsafe {
            std::slice::from_raw_parts(
                &e as *const PolicyEvent as *const u8,
                std::mem::size_of::<PolicyEvent>(),
            )
        };
        let back = decode(bytes).unwrap();
        assert_eq!(back, e);
        assert!(decode(&bytes[..63]).is_none());
        let v = VerdictEvent::from_raw(&back).unwrap();
        assert_eq!(v.src, "10.244.1.5".parse::<IpAddr>().unwrap());
        assert_eq!(v.dst, "10.244.2.6".parse::<IpAddr>().unwrap());
        assert_eq!((v.sport, v.dport, v.proto), (40_000, 80, PROTO_TCP));
        assert_eq!(v.direction, Direction::Ingress);
        assert!(!v.allowed);
        assert_eq!((v.endpoint, v.identity), (3, 300));
        assert_eq!(v.reason, Some(Reason::DropPolicyIngress));
    }

    #[test]
    fn unknown_direction_or_verdict_is_refused() {
        let mut e = raw();
        e.dir = 9;
        assert!(VerdictEvent::from_raw(&e).is_none());
        let mut e = raw();
        e.verdict = 9;
        assert!(VerdictEvent::from_raw(&e).is_none());
    }
}

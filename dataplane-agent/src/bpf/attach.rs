//! Attaching the programs to interfaces: TC ingress (TCX) on pods' host-side veths, XDP on
//! external interfaces. With a pin directory every link is pinned, and a restarted agent
//! adopts the pinned link and swaps its program atomically (`bpf_link_update`), so packets
//! are never without a program. The agent rescans interfaces so that new pods are picked up.

use std::collections::BTreeMap;
use std::path::PathBuf;

use aya::programs::{
    links::{FdLink, LinkError, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
    ProgramError, TcAttachType, XdpMode,
};
use thiserror::Error;
use tracing::{info, warn};

use super::pins::{PinDir, PinError};
use super::Datapath;

pub const HOOK_TC: &str = "tc-ingress";
pub const HOOK_XDP: &str = "xdp";
/// TC egress on external interfaces (the source half of masquerading).
pub const HOOK_TC_EGRESS: &str = "tc-egress";

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("attaching {program} to {iface}: {error}")]
    Attach {
        program: &'static str,
        iface: String,
        error: ProgramError,
    },
    #[error("listing interfaces: {0}")]
    List(std::io::Error),
    #[error("{iface}: link: {error}")]
    Link { iface: String, error: LinkError },
    #[error("{iface}: pinning the link at {}: {error}", path.display())]
    Pin {
        iface: String,
        path: PathBuf,
        error: aya::pin::PinError,
    },
    #[error(transparent)]
    PinDir(#[from] PinError),
}

/// Names of the interfaces of this network namespace.
pub fn interfaces() -> Result<Vec<String>, AttachError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("/sys/class/net").map_err(AttachError::List)? {
        let entry = entry.map_err(AttachError::List)?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// The interface's index, or `None` when it does not exist (any more).
pub fn ifindex(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// One attached link. Dropping it closes our reference: without a pin the link detaches.
struct Held {
    ifindex: u32,
    _link: FdLink,
    pin: Option<PathBuf>,
    mode: &'static str,
}

impl Held {
    /// Detach for good: remove the pin (the last other reference) and drop ours.
    fn release(self) {
        if let Some(path) = &self.pin {
            if let Err(e) = std::fs::remove_file(path) {
                warn!(path = %path.display(), error = %e, "removing link pin");
            }
        }
    }
}

/// The interfaces skiff's programs are attached to, kept in step with the system.
pub struct Attachments {
    pins: Option<PinDir>,
    tc: BTreeMap<String, Held>,
    xdp: BTreeMap<String, Held>,
    ext_tc: BTreeMap<String, Held>,
}

impl Attachments {
    pub fn new(pins: Option<PinDir>) -> Attachments {
        Attachments {
            pins,
            tc: BTreeMap::new(),
            xdp: BTreeMap::new(),
            ext_tc: BTreeMap::new(),
        }
    }

    /// Attach the pod program to every interface in `wanted` that lacks it (adopting pinned
    /// links), release interfaces no longer wanted or re-created, and drop stale pins.
    pub fn sync_pods(&mut self, dp: &mut Datapath, wanted: &[String]) -> Vec<AttachError> {
        let mut errors = Vec::new();
        let current: BTreeMap<&String, u32> = wanted
            .iter()
            .filter_map(|n| ifindex(n).map(|i| (n, i)))
            .collect();
        let gone: Vec<String> = self
            .tc
            .iter()
            .filter(|(n, h)| current.get(n) != Some(&h.ifindex))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Some(h) = self.tc.remove(&name) {
                info!(iface = %name, "interface gone or no longer a pod interface: released");
                h.release();
            }
        }
        for (name, idx) in current {
            if self.tc.contains_key(name) {
                continue;
            }
            match self.attach_tc(dp, name, idx) {
                Ok(h) => {
                    self.tc.insert(name.clone(), h);
                }
                // An interface can vanish between listing and attaching (pod deleted).
                Err(e) => errors.push(e),
            }
        }
        if let Err(e) = self.drop_stale_pins(HOOK_TC) {
            errors.push(e);
        }
        errors
    }

    fn attach_tc(&mut self, dp: &mut Datapath, name: &str, idx: u32) -> Result<Held, AttachError> {
        self.attach_tc_program(dp, name, idx, TcAttachType::Ingress)
    }

    /// Attach a TC program with TCX: the pod program at ingress, the external egress
    /// program at egress.
    fn attach_tc_program(
        &mut self,
        dp: &mut Datapath,
        name: &str,
        idx: u32,
        direction: TcAttachType,
    ) -> Result<Held, AttachError> {
        let (hook, program, prog) = match direction {
            TcAttachType::Egress => (HOOK_TC_EGRESS, super::object::PROG_TC_EXT, dp.tc_ext()),
            _ => (HOOK_TC, super::object::PROG_TC_POD, dp.tc_pod()),
        };
        let pin = self.pins.as_ref().map(|p| p.link_path(hook, idx, name));
        let attach_err = attach_error(program, name);
        let link_err = link_error(name);
        if let Some(fd) = adopt(pin.as_ref(), name) {
            let link = SchedClassifierLink::try_from(fd).map_err(link_err)?;
            let id = prog.attach_to_link(link).map_err(attach_err)?;
            let link =
                FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(link_err)?;
            info!(iface = %name, "adopted pinned tc link: program replaced atomically");
            return Ok(Held {
                ifindex: idx,
                _link: link,
                pin,
                mode: "tcx",
            });
        }
        let id = prog.attach(name, direction).map_err(attach_err)?;
        let link = FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(link_err)?;
        let link = pin_link(link, pin.as_ref(), name)?;
        info!(iface = %name, pinned = pin.is_some(), hook, "attached tc program");
        Ok(Held {
            ifindex: idx,
            _link: link,
            pin,
            mode: "tcx",
        })
    }

    /// Attach XDP to an external interface (native (driver) mode when the driver supports
    /// it, otherwise generic mode, and say which), and the masquerade program at its TC
    /// egress.
    pub fn attach_external(
        &mut self,
        dp: &mut Datapath,
        name: &str,
    ) -> Result<&'static str, AttachError> {
        let idx = ifindex(name).ok_or_else(|| {
            AttachError::List(std::io::Error::other(format!("no interface {name}")))
        })?;
        if !self.ext_tc.contains_key(name) {
            let held = self.attach_tc_program(dp, name, idx, TcAttachType::Egress)?;
            self.ext_tc.insert(name.to_string(), held);
        }
        if let Some(h) = self.xdp.get(name) {
            return Ok(h.mode);
        }
        let pin = self.pins.as_ref().map(|p| p.link_path(HOOK_XDP, idx, name));
        let prog = dp.xdp_ext();
        let attach_err = attach_error(super::object::PROG_XDP_EXT, name);
        let link_err = link_error(name);
        let (link, mode) = if let Some(fd) = adopt(pin.as_ref(), name) {
            let link = XdpLink::try_from(fd).map_err(link_err)?;
            let id = prog.attach_to_link(link).map_err(attach_err)?;
            info!(iface = %name, "adopted pinned xdp link: program replaced atomically");
            (
                FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(link_err)?,
                "adopted",
            )
        } else {
            let (id, mode) = match prog.attach(name, XdpMode::Driver) {
                Ok(id) => (id, "native"),
                Err(e) => {
                    warn!(iface = %name, error = %e, "native XDP refused; using generic (skb) mode");
                    (
                        prog.attach(name, XdpMode::Skb).map_err(attach_err)?,
                        "generic",
                    )
                }
            };
            let link =
                FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(link_err)?;
            (pin_link(link, pin.as_ref(), name)?, mode)
        };
        info!(iface = %name, mode, "xdp program attached");
        self.xdp.insert(
            name.to_string(),
            Held {
                ifindex: idx,
                _link: link,
                pin,
                mode,
            },
        );
        Ok(mode)
    }

    /// Remove pins of this hook that no held link owns (interfaces gone while no agent ran).
    fn drop_stale_pins(&self, hook: &str) -> Result<(), AttachError> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        let held = if hook == HOOK_TC { &self.tc } else { &self.xdp };
        for p in pins.links()?.into_iter().filter(|p| p.hook == hook) {
            if !held.values().any(|h| h.pin.as_ref() == Some(&p.path)) {
                info!(pin = %p.path.display(), "removing stale link pin");
                if let Err(e) = std::fs::remove_file(&p.path) {
                    warn!(pin = %p.path.display(), error = %e, "removing stale link pin");
                }
            }
        }
        Ok(())
    }

    pub fn pod_interfaces(&self) -> impl Iterator<Item = &str> {
        self.tc.keys().map(String::as_str)
    }

    /// External interfaces with the masquerade program at their TC egress.
    pub fn external_egress_interfaces(&self) -> impl Iterator<Item = &str> {
        self.ext_tc.keys().map(String::as_str)
    }

    pub fn external_interfaces(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.xdp.iter().map(|(n, h)| (n.as_str(), h.mode))
    }

    /// Detach everything and remove the link pins (for `skiff run --detach-on-exit`).
    pub fn detach_all(&mut self) {
        for (_, h) in std::mem::take(&mut self.tc)
            .into_iter()
            .chain(std::mem::take(&mut self.xdp))
            .chain(std::mem::take(&mut self.ext_tc))
        {
            h.release();
        }
    }
}

fn attach_error<'a>(
    program: &'static str,
    iface: &'a str,
) -> impl Fn(ProgramError) -> AttachError + Copy + 'a {
    move |error| AttachError::Attach {
        program,
        iface: iface.to_string(),
        error,
    }
}

fn link_error(iface: &str) -> impl Fn(LinkError) -> AttachError + Copy + '_ {
    move |error| AttachError::Link {
        iface: iface.to_string(),
        error,
    }
}

/// The link pinned at `pin`, if there is a usable one; an unusable pin is removed.
fn adopt(pin: Option<&PathBuf>, iface: &str) -> Option<FdLink> {
    let path = pin.filter(|p| p.exists())?;
    match PinnedLink::from_pin(path) {
        Ok(p) => Some(FdLink::from(p)),
        Err(e) => {
            warn!(iface, pin = %path.display(), error = %e, "unusable link pin: attaching anew");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

fn pin_link(link: FdLink, pin: Option<&PathBuf>, iface: &str) -> Result<FdLink, AttachError> {
    match pin {
        None => Ok(link),
        Some(path) => link
            .pin(path)
            .map(FdLink::from)
            .map_err(|error| AttachError::Pin {
                iface: iface.to_string(),
                path: path.clone(),
                error,
            }),
    }
}

//! Attaching the programs to interfaces: on pods' host-side veths TC ingress (TCX, packets
//! the pod sends: services and egress policy) and TC egress (packets going into the pod:
//! ingress policy), XDP on external interfaces. With a pin directory every link is pinned, and a restarted agent
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

/// Link pin names (`pins::PinDir::link_path`) and `status::Hook` names.
pub const HOOK_TC: &str = "tc-ingress";
pub const HOOK_TC_EGRESS: &str = "tc-egress";
pub const HOOK_XDP: &str = "xdp";
/// TC egress on external interfaces (the source half of masquerading); distinct from the
/// pod veths' `tc-egress`.
pub const HOOK_TC_EXT: &str = "tc-ext-egress";

/// The TC programs: two on a pod's veth, one on an external interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcHook {
    /// `skiff_tc_pod` at a pod veth's TC ingress.
    FromPod,
    /// `skiff_tc_to_pod` at a pod veth's TC egress.
    ToPod,
    /// `skiff_tc_ext` at an external interface's TC egress.
    External,
}

impl TcHook {
    /// The pod hooks, in attach order.
    const POD: [TcHook; 2] = [TcHook::ToPod, TcHook::FromPod];

    fn hook(self) -> &'static str {
        match self {
            TcHook::FromPod => HOOK_TC,
            TcHook::ToPod => HOOK_TC_EGRESS,
            TcHook::External => HOOK_TC_EXT,
        }
    }

    fn program(self) -> &'static str {
        match self {
            TcHook::FromPod => super::object::PROG_TC_POD,
            TcHook::ToPod => super::object::PROG_TC_TO_POD,
            TcHook::External => super::object::PROG_TC_EXT,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            TcHook::FromPod => TcAttachType::Ingress,
            TcHook::ToPod | TcHook::External => TcAttachType::Egress,
        }
    }
}

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
    tc_egress: BTreeMap<String, Held>,
    xdp: BTreeMap<String, Held>,
    ext_tc: BTreeMap<String, Held>,
}

impl Attachments {
    pub fn new(pins: Option<PinDir>) -> Attachments {
        Attachments {
            pins,
            tc: BTreeMap::new(),
            tc_egress: BTreeMap::new(),
            xdp: BTreeMap::new(),
            ext_tc: BTreeMap::new(),
        }
    }

    /// Attach both pod programs to every interface in `wanted` that lacks them (adopting
    /// pinned links), release interfaces no longer wanted or re-created, and drop stale pins.
    pub fn sync_pods(&mut self, dp: &mut Datapath, wanted: &[String]) -> Vec<AttachError> {
        let mut errors = Vec::new();
        let current: BTreeMap<&String, u32> = wanted
            .iter()
            .filter_map(|n| ifindex(n).map(|i| (n, i)))
            .collect();
        // The to-pod program first: a pod's veth never enforces egress without ingress.
        for hook in TcHook::POD {
            let held = self.pod_links(hook);
            let gone: Vec<String> = held
                .iter()
                .filter(|(n, h)| current.get(n) != Some(&h.ifindex))
                .map(|(n, _)| n.clone())
                .collect();
            for name in gone {
                if let Some(h) = held.remove(&name) {
                    info!(iface = %name, hook = hook.hook(), "interface gone or no longer a pod interface: released");
                    h.release();
                }
            }
            for (name, idx) in &current {
                if self.pod_links(hook).contains_key(*name) {
                    continue;
                }
                match self.attach_tc(dp, hook, name, *idx) {
                    Ok(h) => {
                        self.pod_links(hook).insert((*name).clone(), h);
                    }
                    // An interface can vanish between listing and attaching (pod deleted).
                    Err(e) => errors.push(e),
                }
            }
            if let Err(e) = self.drop_stale_pins(hook.hook()) {
                errors.push(e);
            }
        }
        errors
    }

    fn pod_links(&mut self, hook: TcHook) -> &mut BTreeMap<String, Held> {
        match hook {
            TcHook::FromPod => &mut self.tc,
            TcHook::ToPod => &mut self.tc_egress,
            TcHook::External => &mut self.ext_tc,
        }
    }

    /// Attach a TC program with TCX (adopting its pinned link if there is one).
    fn attach_tc(
        &mut self,
        dp: &mut Datapath,
        hook: TcHook,
        name: &str,
        idx: u32,
    ) -> Result<Held, AttachError> {
        let pin = self
            .pins
            .as_ref()
            .map(|p| p.link_path(hook.hook(), idx, name));
        let prog = match hook {
            TcHook::FromPod => dp.tc_pod(),
            TcHook::ToPod => dp.tc_to_pod(),
            TcHook::External => dp.tc_ext(),
        };
        let attach_err = attach_error(hook.program(), name);
        let link_err = link_error(name);
        if let Some(fd) = adopt(pin.as_ref(), name) {
            let link = SchedClassifierLink::try_from(fd).map_err(link_err)?;
            let id = prog.attach_to_link(link).map_err(attach_err)?;
            let link =
                FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(link_err)?;
            info!(iface = %name, hook = hook.hook(), "adopted pinned tc link: program replaced atomically");
            return Ok(Held {
                ifindex: idx,
                _link: link,
                pin,
                mode: "tcx",
            });
        }
        let id = prog.attach(name, hook.attach_type()).map_err(attach_err)?;
        let link = FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(link_err)?;
        let link = pin_link(link, pin.as_ref(), name)?;
        info!(iface = %name, hook = hook.hook(), pinned = pin.is_some(), "attached tc program");
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
            let held = self.attach_tc(dp, TcHook::External, name, idx)?;
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
        let held = match hook {
            HOOK_TC => &self.tc,
            HOOK_TC_EGRESS => &self.tc_egress,
            HOOK_TC_EXT => &self.ext_tc,
            _ => &self.xdp,
        };
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

    /// Pod interfaces with the from-pod program (TC ingress).
    pub fn pod_interfaces(&self) -> impl Iterator<Item = &str> {
        self.tc.keys().map(String::as_str)
    }

    /// External interfaces with the masquerade program at their TC egress.
    pub fn external_egress_interfaces(&self) -> impl Iterator<Item = &str> {
        self.ext_tc.keys().map(String::as_str)
    }

    /// Pod interfaces with the to-pod program (TC egress).
    pub fn pod_interfaces_to_pod(&self) -> impl Iterator<Item = &str> {
        self.tc_egress.keys().map(String::as_str)
    }

    pub fn external_interfaces(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.xdp.iter().map(|(n, h)| (n.as_str(), h.mode))
    }

    /// Detach everything and remove the link pins (for `skiff run --detach-on-exit`).
    pub fn detach_all(&mut self) {
        for (_, h) in std::mem::take(&mut self.tc)
            .into_iter()
            .chain(std::mem::take(&mut self.tc_egress))
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

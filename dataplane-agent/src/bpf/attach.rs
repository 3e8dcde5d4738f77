//! Attaching the programs to interfaces: on pods' host-side veths TC ingress (TCX, packets
//! the pod sends: services and egress policy) and TC egress (packets going into the pod:
//! ingress policy); on external interfaces native XDP or TC ingress (`externalIngress`) and
//! TC egress. With a pin directory every link is pinned, and a restarted agent
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

use super::netlink::{self, XdpAttached};
use super::pins::{PinDir, PinError};
use super::Datapath;
use crate::config::ExternalIngress;

/// Link pin names (`pins::PinDir::link_path`) and `status::Hook` names.
pub const HOOK_TC: &str = "tc-ingress";
pub const HOOK_TC_EGRESS: &str = "tc-egress";
pub const HOOK_XDP: &str = "xdp";
/// TC ingress on external interfaces (`skiff_tc_ext_in`: XDP's pipeline where XDP is not
/// native or not wanted).
pub const HOOK_TC_EXT_IN: &str = "tc-ext-ingress";
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
    /// `skiff_tc_ext_in` at an external interface's TC ingress.
    ExternalIn,
}

impl TcHook {
    /// The pod hooks, in attach order.
    const POD: [TcHook; 2] = [TcHook::ToPod, TcHook::FromPod];

    fn hook(self) -> &'static str {
        match self {
            TcHook::FromPod => HOOK_TC,
            TcHook::ToPod => HOOK_TC_EGRESS,
            TcHook::External => HOOK_TC_EXT,
            TcHook::ExternalIn => HOOK_TC_EXT_IN,
        }
    }

    fn program(self) -> &'static str {
        match self {
            TcHook::FromPod => super::object::PROG_TC_POD,
            TcHook::ToPod => super::object::PROG_TC_TO_POD,
            TcHook::External => super::object::PROG_TC_EXT,
            TcHook::ExternalIn => super::object::PROG_TC_EXT_IN,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            TcHook::FromPod | TcHook::ExternalIn => TcAttachType::Ingress,
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
    #[error("{iface}: the driver refused native XDP: {}", with_causes(.error))]
    NativeXdpRefused { iface: String, error: ProgramError },
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
    ext_in: BTreeMap<String, Held>,
    ext_tc: BTreeMap<String, Held>,
}

/// The hook that takes packets from outside on an external interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExternalHook {
    /// `skiff_xdp_ext`, native (driver) mode.
    Xdp,
    /// `skiff_tc_ext_in` at TC ingress (TCX).
    Tc,
}

impl Attachments {
    pub fn new(pins: Option<PinDir>) -> Attachments {
        Attachments {
            pins,
            tc: BTreeMap::new(),
            tc_egress: BTreeMap::new(),
            xdp: BTreeMap::new(),
            ext_in: BTreeMap::new(),
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
            TcHook::ExternalIn => &mut self.ext_in,
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
            TcHook::ExternalIn => dp.tc_ext_in(),
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

    /// Attach the external ingress program to `name` as `want` says (native XDP, else TC
    /// ingress for `auto`), and the masquerade program at its TC egress. Returns the hook
    /// and mode in use. A pinned link of the hook not chosen (another mode before a restart)
    /// is removed once the chosen one is attached, so the two never both stay.
    pub fn attach_external(
        &mut self,
        dp: &mut Datapath,
        name: &str,
        want: ExternalIngress,
    ) -> Result<(ExternalHook, &'static str), AttachError> {
        let idx = ifindex(name).ok_or_else(|| {
            AttachError::List(std::io::Error::other(format!("no interface {name}")))
        })?;
        if !self.ext_tc.contains_key(name) {
            let held = self.attach_tc(dp, TcHook::External, name, idx)?;
            self.ext_tc.insert(name.to_string(), held);
        }
        if let Some(h) = self.xdp.get(name) {
            return Ok((ExternalHook::Xdp, h.mode));
        }
        if let Some(h) = self.ext_in.get(name) {
            return Ok((ExternalHook::Tc, h.mode));
        }
        let xdp_pin = self.pins.as_ref().map(|p| p.link_path(HOOK_XDP, idx, name));
        let xdp_pinned = xdp_pin.as_ref().is_some_and(|p| p.exists());
        // A pinned XDP link runs in the mode it was attached in (an older agent fell back to
        // generic XDP): adopt only a native one.
        let pinned_native = xdp_pinned
            && match netlink::xdp_attached(idx) {
                Ok(XdpAttached::Driver | XdpAttached::Hardware) => true,
                Ok(mode) => {
                    info!(iface = %name, ?mode, "the pinned XDP link is not native: replacing it");
                    false
                }
                Err(e) => {
                    warn!(iface = %name, error = %e, "cannot tell the pinned XDP link's mode: replacing it");
                    false
                }
            };
        let xdp = match want {
            ExternalIngress::Tc => None,
            ExternalIngress::Xdp => {
                if xdp_pinned && !pinned_native {
                    // Native XDP cannot be attached while a generic program is.
                    self.remove_pin(HOOK_XDP, idx, name);
                }
                Some(self.attach_xdp(dp, name, idx)?)
            }
            ExternalIngress::Auto if pinned_native => Some(self.attach_xdp(dp, name, idx)?),
            // A generic link: the driver refused native XDP to the agent that made it. TC
            // ingress takes over before it goes (below); the next start tries native again.
            ExternalIngress::Auto if xdp_pinned => None,
            ExternalIngress::Auto => match self.attach_xdp(dp, name, idx) {
                Ok(held) => Some(held),
                Err(e) => {
                    warn!(iface = %name, error = %e, "native XDP refused: using TC ingress instead");
                    None
                }
            },
        };
        let (hook, mode) = match xdp {
            Some(held) => {
                let mode = held.mode;
                self.xdp.insert(name.to_string(), held);
                self.remove_pin(HOOK_TC_EXT_IN, idx, name);
                (ExternalHook::Xdp, mode)
            }
            None => {
                let held = self.attach_tc(dp, TcHook::ExternalIn, name, idx)?;
                let mode = held.mode;
                self.ext_in.insert(name.to_string(), held);
                self.remove_pin(HOOK_XDP, idx, name);
                (ExternalHook::Tc, mode)
            }
        };
        info!(iface = %name, hook = ?hook, mode, "external ingress program attached");
        Ok((hook, mode))
    }

    /// Native XDP on `name`, adopting its pinned link (which the caller found native).
    fn attach_xdp(&mut self, dp: &mut Datapath, name: &str, idx: u32) -> Result<Held, AttachError> {
        let pin = self.pins.as_ref().map(|p| p.link_path(HOOK_XDP, idx, name));
        let prog = dp.xdp_ext();
        let attach_err = attach_error(super::object::PROG_XDP_EXT, name);
        let link_err = link_error(name);
        let link = if let Some(fd) = adopt(pin.as_ref(), name) {
            let link = XdpLink::try_from(fd).map_err(link_err)?;
            let id = prog.attach_to_link(link).map_err(attach_err)?;
            info!(iface = %name, "adopted pinned xdp link: program replaced atomically");
            FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(link_err)?
        } else {
            let id = prog.attach(name, XdpMode::Driver).map_err(|error| {
                AttachError::NativeXdpRefused {
                    iface: name.to_string(),
                    error,
                }
            })?;
            let link =
                FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(link_err)?;
            pin_link(link, pin.as_ref(), name)?
        };
        Ok(Held {
            ifindex: idx,
            _link: link,
            pin,
            mode: "native",
        })
    }

    /// Detach a link this agent does not hold by removing its pin (the pin is its last
    /// reference once the agent that made it is gone).
    fn remove_pin(&self, hook: &str, idx: u32, name: &str) {
        let Some(path) = self.pins.as_ref().map(|p| p.link_path(hook, idx, name)) else {
            return;
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {
                info!(iface = %name, pin = %path.display(), "removed the link of the external hook not in use")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(pin = %path.display(), error = %e, "removing link pin"),
        }
    }

    /// Remove the external hooks' pins that no held link owns: interfaces no longer in
    /// `externalInterfaces`, or gone while no agent ran. Call after attaching every external
    /// interface.
    pub fn drop_stale_external_pins(&self) -> Result<(), AttachError> {
        for hook in [HOOK_XDP, HOOK_TC_EXT_IN, HOOK_TC_EXT] {
            self.drop_stale_pins(hook)?;
        }
        Ok(())
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
            HOOK_TC_EXT_IN => &self.ext_in,
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

    /// External interfaces with their ingress hook and its mode.
    pub fn external_interfaces(&self) -> impl Iterator<Item = (&str, ExternalHook, &'static str)> {
        let xdp = self
            .xdp
            .iter()
            .map(|(n, h)| (n.as_str(), ExternalHook::Xdp, h.mode));
        let tc = self
            .ext_in
            .iter()
            .map(|(n, h)| (n.as_str(), ExternalHook::Tc, h.mode));
        xdp.chain(tc)
    }

    /// Detach everything and remove the link pins (for `skiff run --detach-on-exit`).
    pub fn detach_all(&mut self) {
        for (_, h) in std::mem::take(&mut self.tc)
            .into_iter()
            .chain(std::mem::take(&mut self.tc_egress))
            .chain(std::mem::take(&mut self.xdp))
            .chain(std::mem::take(&mut self.ext_in))
            .chain(std::mem::take(&mut self.ext_tc))
        {
            h.release();
        }
    }
}

/// An error and its causes on one line (the kernel's errno is in the cause of aya's errors).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
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

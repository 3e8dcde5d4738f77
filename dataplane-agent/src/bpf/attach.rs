//! Attaching the programs to interfaces: TC ingress (TCX) on pods' host-side veths, XDP on
//! external interfaces. The agent rescans interfaces so that new pods are picked up.

use std::collections::BTreeMap;

use aya::programs::{
    links::LinkError, tc::SchedClassifierLinkId, xdp::XdpLinkId, ProgramError, TcAttachType,
    XdpMode,
};
use thiserror::Error;
use tracing::{info, warn};

use super::Datapath;

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
    #[error("link: {0}")]
    Link(#[from] LinkError),
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

/// The interfaces skiff's programs are attached to, kept in step with the system.
#[derive(Default)]
pub struct Attachments {
    tc: BTreeMap<String, SchedClassifierLinkId>,
    xdp: BTreeMap<String, (XdpLinkId, &'static str)>,
}

impl Attachments {
    /// Attach the pod program to every interface in `wanted` that lacks it, and forget
    /// interfaces that disappeared (their links went with them).
    pub fn sync_pods(&mut self, dp: &mut Datapath, wanted: &[String]) -> Vec<AttachError> {
        let mut errors = Vec::new();
        self.tc.retain(|name, _| wanted.contains(name));
        for name in wanted {
            if self.tc.contains_key(name) {
                continue;
            }
            match dp.tc_pod().attach(name, TcAttachType::Ingress) {
                Ok(id) => {
                    info!(iface = %name, "attached tc ingress program");
                    self.tc.insert(name.clone(), id);
                }
                Err(source) => errors.push(AttachError::Attach {
                    program: super::object::PROG_TC_POD,
                    iface: name.clone(),
                    error: source,
                }),
            }
        }
        errors
    }

    /// Attach XDP to an external interface: native (driver) mode when the driver supports
    /// it, otherwise generic mode, and say which.
    pub fn attach_external(
        &mut self,
        dp: &mut Datapath,
        name: &str,
    ) -> Result<&'static str, AttachError> {
        if let Some((_, mode)) = self.xdp.get(name) {
            return Ok(mode);
        }
        let (id, mode) = match dp.xdp_ext().attach(name, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) => {
                warn!(iface = %name, error = %e, "native XDP refused; using generic (skb) mode");
                let id = dp.xdp_ext().attach(name, XdpMode::Skb).map_err(|source| {
                    AttachError::Attach {
                        program: super::object::PROG_XDP_EXT,
                        iface: name.to_string(),
                        error: source,
                    }
                })?;
                (id, "generic")
            }
        };
        info!(iface = %name, mode, "attached xdp program");
        self.xdp.insert(name.to_string(), (id, mode));
        Ok(mode)
    }

    pub fn pod_interfaces(&self) -> impl Iterator<Item = &str> {
        self.tc.keys().map(String::as_str)
    }

    pub fn external_interfaces(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.xdp.iter().map(|(n, (_, m))| (n.as_str(), *m))
    }

    /// Detach everything (links of vanished interfaces are already gone).
    pub fn detach_all(&mut self, dp: &mut Datapath) {
        for (name, id) in std::mem::take(&mut self.tc) {
            if let Err(e) = dp.tc_pod().detach(id) {
                warn!(iface = %name, error = %e, "detaching tc program");
            }
        }
        for (name, (id, _)) in std::mem::take(&mut self.xdp) {
            if let Err(e) = dp.xdp_ext().detach(id) {
                warn!(iface = %name, error = %e, "detaching xdp program");
            }
        }
    }
}

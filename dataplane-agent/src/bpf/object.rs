//! The embedded eBPF object and loading it into the kernel.

use aya::{
    programs::{CgroupSockAddr, SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use thiserror::Error;

use dataplane_common::maps::{
    AFFINITY, BACKENDS, CONFIG, CONNTRACK, MAGLEV, MASQ_ADDRS, POD_NETS, POLICY_CONNTRACK,
    POLICY_ENDPOINTS, POLICY_EVENTS, POLICY_IDENTITIES, POLICY_RULES, SERVICES, SERVICE_NETS, SNAT,
    SOCK, SOURCE_RANGES, STATS,
};

use super::{maps::Maps, pins::PinDir, socklb::SOCK_PROGRAMS};

/// Maps whose contents must survive an agent restart (the per-CPU scratch maps need not).
/// The policy events ring is pinned so that `skiff observe` can open it.
pub const PINNED_MAPS: [&str; 18] = [
    SERVICES,
    BACKENDS,
    CONNTRACK,
    AFFINITY,
    STATS,
    SERVICE_NETS,
    SOURCE_RANGES,
    SOCK,
    SNAT,
    MASQ_ADDRS,
    POD_NETS,
    POLICY_ENDPOINTS,
    POLICY_IDENTITIES,
    POLICY_RULES,
    POLICY_CONNTRACK,
    POLICY_EVENTS,
    CONFIG,
    MAGLEV,
];

/// The eBPF object built by build.rs from `dataplane-ebpf` (empty with AYA_BUILD_SKIP).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/skiff"));

/// TC ingress on the host side of pods' veths.
pub const PROG_TC_POD: &str = "skiff_tc_pod";
/// TC egress on the host side of pods' veths (packets going into the pod): ingress policy.
pub const PROG_TC_TO_POD: &str = "skiff_tc_to_pod";
/// XDP on the node's external interfaces.
pub const PROG_XDP_EXT: &str = "skiff_xdp_ext";
/// TC ingress on the node's external interfaces: `skiff_xdp_ext`'s pipeline where native
/// XDP is not available or not wanted (`externalAcceleration`).
pub const PROG_TC_EXT_IN: &str = "skiff_tc_ext_in";
/// TC egress on the node's external interfaces (the source half of masquerading).
pub const PROG_TC_EXT: &str = "skiff_tc_ext";
pub const PROGRAMS: [&str; 5] = [
    PROG_TC_POD,
    PROG_TC_TO_POD,
    PROG_XDP_EXT,
    PROG_TC_EXT_IN,
    PROG_TC_EXT,
];

/// Every program of the object: the packet programs and the socket-level ones.
pub fn all_programs() -> impl Iterator<Item = &'static str> {
    PROGRAMS.into_iter().chain(SOCK_PROGRAMS)
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("this binary was built with AYA_BUILD_SKIP: it has no eBPF object (run `cargo xtask build`)")]
    NoObject,
    #[error("loading the eBPF object (skiff needs root, or CAP_BPF and CAP_NET_ADMIN)")]
    Object(#[from] aya::EbpfError),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("program {name} failed to load")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {reason}")]
    Map { name: &'static str, reason: String },
}

/// The loaded programs and their maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub maps: Maps,
}

impl Datapath {
    /// Load the object with fresh, unpinned maps and have the verifier check every program
    /// (nothing is attached): for `trace` and tests.
    pub fn load() -> Result<Self, LoadError> {
        Self::load_with(None)
    }

    /// Load the object; with `pins`, the persistent maps are pinned there, and maps already
    /// pinned there by an earlier agent are reused with their contents (connection tracking
    /// and service state survive a restart).
    pub fn load_with(pins: Option<&PinDir>) -> Result<Self, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, std::path::PathBuf)> = pins
            .map(|p| PINNED_MAPS.iter().map(|m| (*m, p.map_path(m))).collect())
            .unwrap_or_default();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        for name in all_programs() {
            let prog = ebpf
                .program_mut(name)
                .ok_or(LoadError::MissingProgram(name))?;
            let res = match prog {
                aya::programs::Program::SchedClassifier(p) => p.load(),
                aya::programs::Program::Xdp(p) => p.load(),
                aya::programs::Program::CgroupSockAddr(p) => p.load(),
                _ => return Err(LoadError::MissingProgram(name)),
            };
            res.map_err(|source| LoadError::Program { name, source })?;
        }
        let maps = Maps::take(&mut ebpf)?;
        Ok(Datapath { ebpf, maps })
    }

    pub fn tc_pod(&mut self) -> &mut SchedClassifier {
        match self.ebpf.program_mut(PROG_TC_POD) {
            Some(aya::programs::Program::SchedClassifier(p)) => p,
            _ => unreachable!("checked at load"),
        }
    }

    pub fn tc_to_pod(&mut self) -> &mut SchedClassifier {
        match self.ebpf.program_mut(PROG_TC_TO_POD) {
            Some(aya::programs::Program::SchedClassifier(p)) => p,
            _ => unreachable!("checked at load"),
        }
    }

    pub fn tc_ext(&mut self) -> &mut SchedClassifier {
        match self.ebpf.program_mut(PROG_TC_EXT) {
            Some(aya::programs::Program::SchedClassifier(p)) => p,
            _ => unreachable!("checked at load"),
        }
    }

    pub fn tc_ext_in(&mut self) -> &mut SchedClassifier {
        match self.ebpf.program_mut(PROG_TC_EXT_IN) {
            Some(aya::programs::Program::SchedClassifier(p)) => p,
            _ => unreachable!("checked at load"),
        }
    }

    pub fn xdp_ext(&mut self) -> &mut Xdp {
        match self.ebpf.program_mut(PROG_XDP_EXT) {
            Some(aya::programs::Program::Xdp(p)) => p,
            _ => unreachable!("checked at load"),
        }
    }

    /// A socket-level program (one of `SOCK_PROGRAMS`).
    pub fn sock_program(&mut self, name: &'static str) -> Option<&mut CgroupSockAddr> {
        match self.ebpf.program_mut(name) {
            Some(aya::programs::Program::CgroupSockAddr(p)) => Some(p),
            _ => None,
        }
    }

    /// Instructions the verifier processed for each program (kernel >= 5.16).
    pub fn verified_instructions(&self) -> Vec<(&'static str, Option<u32>)> {
        all_programs()
            .map(|name| {
                let count = self.ebpf.program(name).and_then(|p| {
                    let info = match p {
                        aya::programs::Program::SchedClassifier(p) => p.info().ok(),
                        aya::programs::Program::Xdp(p) => p.info().ok(),
                        aya::programs::Program::CgroupSockAddr(p) => p.info().ok(),
                        _ => None,
                    };
                    info.and_then(|i| i.verified_instruction_count())
                });
                (name, count)
            })
            .collect()
    }
}

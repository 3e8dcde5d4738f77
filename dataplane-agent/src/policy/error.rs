//! Problems the policy compiler reports. None of them stops a compile: each says what was
//! left out or cut, and the module docs of `compile` say why that is the safe choice.

use std::net::IpAddr;

use thiserror::Error;

use super::model::Direction;
use crate::model::{NamespacedName, ValidationError};

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    /// An invalid NetworkPolicy in the state (the sources reject them, so only a state built
    /// by other means has one). It is left out.
    #[error(transparent)]
    InvalidPolicy(ValidationError),
    /// A field of a Pod the compiler cannot use (the Pod is kept without it).
    #[error("Pod {pod}: {field}: {problem}; ignored")]
    InvalidPod {
        pod: NamespacedName,
        field: String,
        problem: String,
    },
    /// Two live pods claim one IP: the first (in namespace/name order) keeps it.
    #[error("Pods {first} and {second} both have IP {ip}; {first} keeps it")]
    DuplicateIp {
        ip: IpAddr,
        first: NamespacedName,
        second: NamespacedName,
    },
    /// One rule key needs more port ranges than a map value holds. The lowest
    /// `POL_MAX_RANGES` ranges are kept and the rest denied: never more than the policies
    /// allow.
    #[error(
        "pod {pod}: {direction} rules for identity {identity} protocol {protocol} need {needed} \
         port ranges, the datapath holds {kept}; ports above {last_kept_port} are denied"
    )]
    TooManyRanges {
        pod: NamespacedName,
        direction: Direction,
        identity: u32,
        protocol: u8,
        needed: usize,
        kept: usize,
        last_kept_port: u16,
    },
    /// A map would need more entries than it is sized for: loading it will fail.
    #[error("policy map {map} needs {entries} entries, more than its {max}")]
    MapFull {
        map: &'static str,
        entries: usize,
        max: u32,
    },
}

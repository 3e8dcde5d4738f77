//! NetworkPolicy (networking.k8s.io/v1): the validated model, the compiler into the policy
//! maps of `dataplane_common::policy`, a reference evaluator (from the model, and from the
//! maps the way the datapath looks them up), and plain-language explanations.
//!
//! Pure: nothing here touches the kernel. The map writer and the CLI live elsewhere.

use std::net::IpAddr;

use dataplane_common::policy::IpKey;
use ipnet::IpNet;

pub mod compile;
pub mod error;
pub mod evaluate;
pub mod explain;
pub mod model;
mod ranges;
pub mod selector;

#[cfg(test)]
mod random_tests;
#[cfg(test)]
mod scale_tests;
#[cfg(test)]
mod tests;

pub use compile::{
    compile, compile_model, CompiledPolicy, EndpointInfo, IdentityClass, IdentityInfo, PolicyMaps,
};
pub use error::PolicyError;
pub use evaluate::{evaluate, lookup, EndVerdict, Verdict};
pub use explain::explain;
pub use model::{Direction, Policy, PolicyModel};

/// The `SK_EP_V1` key of an address.
pub fn ip_key(ip: IpAddr) -> IpKey {
    IpKey {
        addr: crate::bpf::abi::addr16(ip.to_canonical()),
    }
}

/// The single-address prefix of `ip` (/32 or /128).
pub fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip.to_canonical())
}

/// The `SK_IPID_V1` key of a prefix: length over the 16-byte key (IPv4: 96 + length) and
/// the masked address.
pub fn prefix_key(net: IpNet) -> (u32, IpKey) {
    let net = net.trunc();
    let len = match net {
        IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
        IpNet::V6(n) => u32::from(n.prefix_len()),
    };
    (len, ip_key(net.network()))
}

//! Everything that touches the kernel's BPF side: the embedded object, the maps (one owner),
//! the writer that applies desired state as a diff, attachment, test runs, and policy events.

pub mod abi;
pub mod attach;
pub mod events;
pub mod maglev_tables;
pub mod maps;
pub mod netlink;
pub mod object;
pub mod pins;
pub mod policy_writer;
pub mod socklb;
pub mod testrun;
pub mod writer;

pub use object::Datapath;

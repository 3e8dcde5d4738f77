//! skiff agent library: sources of Kubernetes objects, the pure translation into desired map
//! contents, and the one writer that programs the BPF maps.

pub mod bpf;
pub mod config;
pub mod desired;
pub mod manifests;
pub mod model;
pub mod packet;
pub mod run;
pub mod trace;
pub mod translate;

//! skiff agent library: sources of Kubernetes objects, the pure translation into desired map
//! contents, and the one writer that programs the BPF maps.

pub mod bpf;
pub mod config;
pub mod desired;
pub mod healthcheck;
pub mod http;
pub mod kube_source;
pub mod maglev;
pub mod manifests;
pub mod metrics;
pub mod model;
pub mod observe;
pub mod packet;
pub mod policy;
pub mod run;
pub mod status;
pub mod trace;
pub mod trace_node;
pub mod translate;

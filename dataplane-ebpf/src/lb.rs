//! Service lookup and backend selection.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use dataplane_common::{Backend, ServiceKey, ServiceValue};

use crate::{
    maps::{BACKENDS, SERVICES},
    parse::Flow,
};

#[inline(always)]
pub fn service_key(flow: &Flow, slot: u16) -> ServiceKey {
    ServiceKey {
        addr: flow.dst,
        port_be: flow.dport_be,
        slot,
        proto: flow.proto,
        scope: 0,
        _pad: [0; 2],
    }
}

/// The master entry of the service frontend this flow is addressed to.
#[inline(always)]
pub fn lookup_service(flow: &Flow) -> Option<ServiceValue> {
    unsafe { SERVICES.get(&service_key(flow, 0)) }.copied()
}

/// Pick a backend uniformly at random among the service's `count` slots.
#[inline(always)]
pub fn select_backend(flow: &Flow, count: u16) -> Option<(u32, Backend)> {
    if count == 0 {
        return None;
    }
    let r = unsafe { bpf_get_prandom_u32() };
    let slot = 1 + (r % count as u32) as u16;
    let id = unsafe { SERVICES.get(&service_key(flow, slot)) }?.backend_id;
    let be = unsafe { BACKENDS.get(&id) }?;
    Some((id, *be))
}

/// The backend with this id, if it still exists.
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    unsafe { BACKENDS.get(&id) }.copied()
}

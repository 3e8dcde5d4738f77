//! Service lookup and backend selection, for packets (`parse::Flow`) and for sockets
//! (`cgroup_sock`) alike: both implement [`Conn`].

use aya_ebpf::helpers::bpf_get_prandom_u32;
use aya_ebpf::maps::lpm_trie::Key;
use dataplane_common::{
    maglev::flow_hash, AffinityKey, AffinityValue, Backend, Reason, ServiceKey, ServiceValue,
    SourceRangeKey, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_MAGLEV,
};

use crate::{
    maglev,
    maps::{NetKey, AFFINITY, BACKENDS, SCRATCH, SERVICES, SERVICE_NETS, SOURCE_RANGES},
    parse::Flow,
};

/// What service lookup and backend selection read from a new connection.
pub trait Conn {
    /// The frontend address (IPv4-mapped for IPv4).
    fn dst(&self) -> &[u8; 16];
    /// The frontend port, network byte order.
    fn dport_be(&self) -> u16;
    fn proto(&self) -> u8;
    /// The client identity session affinity keys on.
    fn client(&self) -> &[u8; 16];
    /// The frontend scope (`SCOPE_*`) the lookups use.
    fn scope(&self) -> u8;
    /// What a Maglev frontend balances by (`maglev::flow_hash` of the 5-tuple for packets).
    fn lb_hash(&self) -> u32;
}

impl Conn for Flow {
    #[inline(always)]
    fn dst(&self) -> &[u8; 16] {
        &self.dst
    }
    #[inline(always)]
    fn dport_be(&self) -> u16 {
        self.dport_be
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn client(&self) -> &[u8; 16] {
        &self.src
    }
    #[inline(always)]
    fn scope(&self) -> u8 {
        self.scope
    }
    /// The same on every node for the same packet: what makes Maglev's choice consistent.
    #[inline(always)]
    fn lb_hash(&self) -> u32 {
        flow_hash(
            &self.src,
            &self.dst,
            u16::from_be(self.sport_be),
            u16::from_be(self.dport_be),
            self.proto,
        )
    }
}

#[inline(always)]
pub fn service_key<F: Conn>(flow: &F, slot: u16) -> ServiceKey {
    ServiceKey {
        addr: *flow.dst(),
        port_be: flow.dport_be(),
        slot,
        proto: flow.proto(),
        scope: flow.scope(),
        _pad: [0; 2],
    }
}

/// The master entry of the service frontend this flow is addressed to. Traffic from outside
/// the node (`external`) first tries the external scope (externalTrafficPolicy Local);
/// `flow.scope` records the scope found, for the slot and affinity lookups that follow.
#[inline(always)]
pub fn lookup_service(flow: &mut Flow, external: bool) -> Option<ServiceValue> {
    if external {
        flow.scope = SCOPE_EXTERNAL;
        if let Some(v) = unsafe { SERVICES.get(&service_key(flow, 0)) } {
            return Some(*v);
        }
    }
    flow.scope = SCOPE_INTERNAL;
    lookup_frontend(flow)
}

/// The master entry of the frontend `c` is addressed to, in `c`'s scope.
#[inline(always)]
pub fn lookup_frontend<F: Conn>(c: &F) -> Option<ServiceValue> {
    unsafe { SERVICES.get(&service_key(c, 0)) }.copied()
}

/// Whether the flow's source is inside the frontend's source ranges (set `id`).
#[inline(always)]
pub fn source_allowed(flow: &Flow, id: u32) -> bool {
    let key = Key::new(
        32 + 128,
        SourceRangeKey {
            id_be: id.to_be_bytes(),
            addr: flow.src,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// What the service address space says about the flow's destination when it matches no
/// frontend: `SVCNET_CLUSTER_IP`, `SVCNET_RANGE` or nothing.
#[inline(always)]
pub fn service_net(flow: &Flow) -> Option<u32> {
    let key = NetKey::new(128, flow.dst);
    SERVICE_NETS.get(&key).copied()
}

/// Pick the backend of a new connection: the client's affinity backend when the service has
/// `sessionAffinity: ClientIP` and it is still valid, else the Maglev table entry the flow
/// hashes to (`SVC_F_MAGLEV`) or a slot uniformly at random among the service's `count`
/// (remembered for affinity). The error is the drop reason.
#[inline(always)]
pub fn select_backend<F: Conn>(
    flow: &F,
    svc: &ServiceValue,
    now: u64,
) -> Result<(u32, Backend), Reason> {
    if svc.count == 0 {
        return Err(Reason::DropNoBackend);
    }
    let affinity = svc.flags & SVC_F_AFFINITY != 0;
    if affinity {
        if let Some(hit) = affinity_backend(flow, svc, now) {
            return Ok(hit);
        }
    }
    // `slot` is what affinity remembers: the slot, or for Maglev the table entry + 1.
    let (id, slot) = if svc.flags & SVC_F_MAGLEV != 0 {
        let i = maglev::index(svc, flow.lb_hash()).ok_or(Reason::DropMaglevTable)?;
        match maglev::entry(svc.maglev_table as u32, i) {
            0 => return Err(Reason::DropMaglevTable),
            id => (id, (i as u16).wrapping_add(1)),
        }
    } else {
        let r = unsafe { bpf_get_prandom_u32() };
        let slot = 1 + (r % svc.count as u32) as u16;
        let v = unsafe { SERVICES.get(&service_key(flow, slot)) }.ok_or(Reason::DropNoBackend)?;
        (v.backend_id, slot)
    };
    let be = unsafe { BACKENDS.get(&id) }.ok_or(Reason::DropNoBackend)?;
    if affinity {
        remember(flow, id, slot, now);
    }
    Ok((id, *be))
}

/// The per-CPU scratch copy of this client's affinity key (40 bytes: too many for the stack
/// next to the rest of the pipeline).
#[inline(always)]
fn affinity_key<F: Conn>(flow: &F) -> Option<&'static mut AffinityKey> {
    let s = SCRATCH.get_ptr_mut(0)?;
    let s = unsafe { &mut *s };
    s.affinity_key.service = service_key(flow, 0);
    s.affinity_key.client = *flow.client();
    Some(&mut s.affinity_key)
}

/// The client's last backend, if used within the timeout and still in the same slot of the
/// service, or for Maglev at the same table entry (a backend that left the service is never
/// chosen again). Refreshes its time, as kube-proxy's `recent` match does on each new
/// connection.
#[inline(always)]
fn affinity_backend<F: Conn>(flow: &F, svc: &ServiceValue, now: u64) -> Option<(u32, Backend)> {
    let key = affinity_key(flow)?;
    let v = AFFINITY.get_ptr_mut(&*key)?;
    let v = unsafe { &mut *v };
    let timeout_ns = svc.affinity_timeout_s as u64 * 1_000_000_000;
    if now.saturating_sub(v.last_used_ns) > timeout_ns || v.slot == 0 {
        return None;
    }
    let current = if svc.flags & SVC_F_MAGLEV != 0 {
        maglev::entry(svc.maglev_table as u32, (v.slot as u32).wrapping_sub(1))
    } else if v.slot <= svc.count {
        unsafe { SERVICES.get(&service_key(flow, v.slot)) }?.backend_id
    } else {
        return None;
    };
    if current != v.backend_id {
        return None;
    }
    let be = unsafe { BACKENDS.get(&v.backend_id) }?;
    v.last_used_ns = now;
    Some((v.backend_id, *be))
}

#[inline(always)]
fn remember<F: Conn>(flow: &F, backend_id: u32, slot: u16, now: u64) {
    if let Some(key) = affinity_key(flow) {
        let v = AffinityValue {
            backend_id,
            slot,
            _pad: 0,
            last_used_ns: now,
        };
        // A full LRU map evicts its oldest client; losing affinity is not worth a drop.
        let _ = AFFINITY.insert(&*key, &v, 0);
    }
}

/// The backend with this id, if it still exists.
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    unsafe { BACKENDS.get(&id) }.copied()
}

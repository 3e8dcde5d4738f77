//! The NetworkPolicy compiler: the cluster (policies, pods, namespaces) and this node in, the
//! contents of the policy maps (`dataplane_common::policy`) out, plus what `trace`, `explain`
//! and events need to name endpoints and identities.
//!
//! Identities. An identity is a class of addresses that every peer of every policy treats
//! alike. A pod IP's class is the pod-selector peers that match the pod, the ipBlocks that
//! contain the IP (ipBlocks match pod IPs too, as in Calico and the upstream e2e tests), and
//! the pod's resolution of the named ports used by egress rules that can reach it (a named
//! port in an egress rule resolves against the destination pod). Other addresses: every
//! ipBlock cidr and except goes into the LPM with the class "ipBlocks containing it"; with
//! longest-prefix match an address whose longest match is prefix P is in ipBlock C exactly
//! when P lies in C's cidr and in none of its excepts. A prefix whose class equals that of its
//! nearest enclosing prefix is left out (the enclosing one answers the same); `0.0.0.0/0` and
//! `::/0` are always in, as `IDENTITY_WORLD` unless an ipBlock claims them (the IPv4 root
//! keeps IPv4 addresses out of IPv6 prefixes such as `::/0` in the shared 16-byte key space).
//! This node's addresses are `IDENTITY_HOST`, whatever else claims them; a pod's address is
//! the pod's even when an ipBlock names exactly it. Numbers are handed out per class description (peers by
//! content, not position), so an unchanged class keeps its number across compiles and a
//! policy change rewrites only the entries whose class it changes. New numbers come from
//! above every number of the previous output, so a compile never gives a number it frees to
//! another class (one map sync never turns old entries of a number into another's).
//!
//! Rules. For every local pod and direction it is isolated in, for every identity some rule
//! allows: one key per protocol with the allowed port ranges. Rules without peers use
//! `IDENTITY_ANY`, rules without ports `POL_PROTO_ANY` with `POL_F_ALL_PORTS`; a key whose
//! ports a wildcard key already allows is left out. Named ports resolve against the local pod
//! for ingress and against the destination pod's identity class for egress; a name that does
//! not resolve matches nothing.
//!
//! Failing safe. A key needing more than `POL_MAX_RANGES` ranges keeps its lowest ranges and
//! denies the rest (reported): the datapath then never allows what no policy allows, and the
//! rest of the endpoint's rules are unaffected. Invalid policies in the state are reported and
//! left out (the sources never store one: they keep the last good version instead).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dataplane_common::maps::{POLICY_ENDPOINTS_MAX, POLICY_IDENTITIES_MAX, POLICY_RULES_MAX};
use dataplane_common::policy::{
    Endpoint, IpKey, PolicyKey, PolicyValue, PortRange, IDENTITY_ANY, IDENTITY_FIRST_DYNAMIC,
    IDENTITY_HOST, IDENTITY_WORLD, POL_F_ALL_PORTS, POL_MAX_RANGES, POL_PROTO_ANY,
};
use ipnet::IpNet;

use super::error::PolicyError;
use super::model::{Direction, IpBlock, NamespaceScope, Peer, PolicyModel, PortMatch};
use super::ranges::{covered, Ports};
use super::{host_net, prefix_key};
use crate::config::NodeConfig;
use crate::desired::Protocol;
use crate::model::{ClusterState, NamespacedName};

/// The contents of the policy maps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyMaps {
    /// `SK_EP_V1`: local, non-hostNetwork pods' IPs.
    pub endpoints: BTreeMap<IpKey, Endpoint>,
    /// `SK_IPID_V1`: (prefix length over the 16-byte key: IPv4 = 96 + len, IPv6 = len;
    /// address masked) -> identity.
    pub identities: BTreeMap<(u32, IpKey), u32>,
    /// `SK_POL_V1`.
    pub rules: BTreeMap<PolicyKey, PolicyValue>,
}

/// A local pod the maps hold rules for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub pod: NamespacedName,
    pub ips: Vec<IpAddr>,
    /// Policies selecting the pod for ingress; empty: not isolated for ingress.
    pub ingress_policies: Vec<NamespacedName>,
    /// Policies selecting the pod for egress; empty: not isolated for egress.
    pub egress_policies: Vec<NamespacedName>,
}

impl EndpointInfo {
    pub fn policies(&self, dir: Direction) -> &[NamespacedName] {
        match dir {
            Direction::Ingress => &self.ingress_policies,
            Direction::Egress => &self.egress_policies,
        }
    }

    pub fn isolated(&self, dir: Direction) -> bool {
        !self.policies(dir).is_empty()
    }
}

/// What the addresses of one identity have in common, in canonical form: two compiles give
/// an unchanged class the same number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityClass {
    /// Pod IPs (true) or other addresses.
    pub pod: bool,
    /// Pod-selector peers matching the pods and ipBlocks containing the addresses (sorted).
    pub peers: Vec<Peer>,
    /// The pods' resolution of named ports that egress rules use towards them (sorted).
    pub named_ports: Vec<(String, Protocol, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityInfo {
    /// `None` for `IDENTITY_HOST`.
    pub class: Option<IdentityClass>,
    /// Pods whose IPs have this identity.
    pub pods: Vec<NamespacedName>,
    /// Non-pod prefixes in the LPM with this identity (node IPs for `IDENTITY_HOST`).
    pub prefixes: Vec<IpNet>,
}

impl IdentityInfo {
    /// One line for humans.
    pub fn describe(&self) -> String {
        let Some(class) = &self.class else {
            return "this node".to_string();
        };
        let mut parts = Vec::new();
        if class.pod {
            parts.push(match self.pods.len() {
                1 => format!("pod {}", self.pods[0]),
                n if n <= 3 => format!(
                    "pods {}",
                    self.pods
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                n => format!("{n} pods ({}, ...)", self.pods[0]),
            });
        } else if class.peers.is_empty() {
            parts.push("addresses no policy names (world)".to_string());
        } else {
            parts.push("non-pod addresses".to_string());
        }
        if !class.peers.is_empty() {
            let peers: Vec<String> = class.peers.iter().map(|p| p.to_string()).collect();
            parts.push(format!("matching: {}", peers.join("; ")));
        }
        if !class.named_ports.is_empty() {
            let named: Vec<String> = class
                .named_ports
                .iter()
                .map(|(n, p, port)| format!("{n}={port}/{p}"))
                .collect();
            parts.push(format!("named ports {}", named.join(", ")));
        }
        parts.join("; ")
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompiledPolicy {
    pub maps: PolicyMaps,
    /// Endpoint id -> the local pod.
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// Identity -> what it stands for (`IDENTITY_HOST` and `IDENTITY_WORLD` always present).
    pub identities: BTreeMap<u32, IdentityInfo>,
    pub errors: Vec<PolicyError>,
}

/// Compile the policies of `state` for the node `config` describes. `previous` (the last
/// output) keeps endpoint and identity numbers stable.
pub fn compile(
    state: &ClusterState,
    config: &NodeConfig,
    previous: Option<&CompiledPolicy>,
) -> CompiledPolicy {
    compile_model(&PolicyModel::new(state, config), previous)
}

/// [`compile`] on a model already built.
pub fn compile_model(model: &PolicyModel, previous: Option<&CompiledPolicy>) -> CompiledPolicy {
    let mut out = CompiledPolicy {
        errors: model.errors.clone(),
        ..CompiledPolicy::default()
    };
    let peers = PeerTable::new(model);
    let classes = classes(model, &peers);
    let ids = Identities::allocate(&classes, &peers, model, previous, &mut out);
    endpoints_and_rules(model, &peers, &ids, previous, &mut out);

    let sizes = [
        (
            dataplane_common::maps::POLICY_ENDPOINTS,
            out.maps.endpoints.len(),
            POLICY_ENDPOINTS_MAX,
        ),
        (
            dataplane_common::maps::POLICY_IDENTITIES,
            out.maps.identities.len(),
            POLICY_IDENTITIES_MAX,
        ),
        (
            dataplane_common::maps::POLICY_RULES,
            out.maps.rules.len(),
            POLICY_RULES_MAX,
        ),
    ];
    for (map, entries, max) in sizes {
        if entries > max as usize {
            out.errors.push(PolicyError::MapFull { map, entries, max });
        }
    }
    out
}

type NamedPort<'a> = (&'a str, Protocol);

/// Every distinct peer of every policy, numbered in canonical order.
struct PeerTable<'a> {
    peers: Vec<&'a Peer>,
    index: BTreeMap<&'a Peer, usize>,
    /// Per peer: the named ports of the egress rules it is a peer of.
    egress_named: Vec<BTreeSet<NamedPort<'a>>>,
    /// Named ports of egress rules without peers: they may resolve against any pod.
    egress_named_any: BTreeSet<NamedPort<'a>>,
}

impl<'a> PeerTable<'a> {
    fn new(model: &'a PolicyModel) -> PeerTable<'a> {
        let rules = || {
            model.policies.values().flat_map(|p| {
                Direction::ALL
                    .into_iter()
                    .flat_map(move |d| p.rules(d).unwrap_or_default().iter().map(move |r| (d, r)))
            })
        };
        let distinct: BTreeSet<&Peer> = rules().flat_map(|(_, r)| &r.peers).collect();
        let peers: Vec<&Peer> = distinct.into_iter().collect();
        let index: BTreeMap<&Peer, usize> =
            peers.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let mut egress_named = vec![BTreeSet::new(); peers.len()];
        let mut egress_named_any = BTreeSet::new();
        for (dir, rule) in rules() {
            if dir != Direction::Egress {
                continue;
            }
            let named: Vec<NamedPort> = rule
                .ports
                .iter()
                .filter_map(|p| match &p.port {
                    PortMatch::Named(n) => Some((n.as_str(), p.protocol)),
                    _ => None,
                })
                .collect();
            if named.is_empty() {
                continue;
            }
            if rule.peers.is_empty() {
                egress_named_any.extend(named);
            } else {
                for peer in &rule.peers {
                    egress_named[index[peer]].extend(named.iter().copied());
                }
            }
        }
        PeerTable {
            peers,
            index,
            egress_named,
            egress_named_any,
        }
    }

    fn blocks(&self) -> impl Iterator<Item = (usize, &'a IpBlock)> + '_ {
        self.peers.iter().enumerate().filter_map(|(i, p)| match p {
            Peer::IpBlock(b) => Some((i, b)),
            Peer::Pods { .. } => None,
        })
    }
}

/// An identity class with peers as `PeerTable` indices (same order as `IdentityClass`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ClassKey<'a> {
    pod: bool,
    peers: Vec<usize>,
    named: Vec<(&'a str, Protocol, u16)>,
}

impl ClassKey<'_> {
    fn world() -> ClassKey<'static> {
        ClassKey {
            pod: false,
            peers: Vec::new(),
            named: Vec::new(),
        }
    }

    fn resolve(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named
            .iter()
            .find(|(n, p, _)| *n == name && *p == protocol)
            .map(|(_, _, port)| *port)
    }

    fn to_class(&self, peers: &PeerTable) -> IdentityClass {
        IdentityClass {
            pod: self.pod,
            peers: self.peers.iter().map(|&i| peers.peers[i].clone()).collect(),
            named_ports: self
                .named
                .iter()
                .map(|&(n, p, port)| (n.to_string(), p, port))
                .collect(),
        }
    }
}

#[derive(Default)]
struct Members<'a> {
    pods: BTreeSet<&'a NamespacedName>,
    /// LPM keys: pod IPs and prefixes.
    entries: Vec<(u32, IpKey)>,
    /// The non-pod prefixes among them.
    prefixes: Vec<IpNet>,
}

/// Every address class there is, with the LPM entries of each.
fn classes<'a>(
    model: &'a PolicyModel,
    peers: &PeerTable<'a>,
) -> BTreeMap<ClassKey<'a>, Members<'a>> {
    let mut out: BTreeMap<ClassKey, Members> = BTreeMap::new();

    // Pod-selector peers: namespaces first, then the pods of those namespaces.
    let mut matched: BTreeMap<&NamespacedName, Vec<usize>> = BTreeMap::new();
    for (i, peer) in peers.peers.iter().enumerate() {
        let Peer::Pods { namespaces, pods } = peer else {
            continue;
        };
        let in_scope: Vec<&str> = match namespaces {
            NamespaceScope::Only(ns) => vec![ns.as_str()],
            NamespaceScope::Matching(sel) => model
                .namespaces
                .iter()
                .filter(|(_, labels)| sel.matches(labels))
                .map(|(name, _)| name.as_str())
                .collect(),
        };
        for ns in in_scope {
            for pod in model.pods_in(ns) {
                if !pod.host_network && !pod.ips.is_empty() && pods.matches(&pod.labels) {
                    matched.entry(&pod.key).or_default().push(i);
                }
            }
        }
    }

    // This node's addresses are IDENTITY_HOST whatever else claims them, and a pod's
    // address is the pod's whatever ipBlock prefix equals it: leave the losers out.
    let mut taken: BTreeSet<IpNet> = model.node_ips.iter().map(|ip| host_net(*ip)).collect();

    let blocks: Vec<(usize, &IpBlock)> = peers.blocks().collect();
    for (ip, pod) in model.pod_ips() {
        if !taken.insert(host_net(ip)) {
            continue;
        }
        let mut m = matched.get(&pod.key).cloned().unwrap_or_default();
        m.extend(
            blocks
                .iter()
                .filter(|(_, b)| b.contains(ip))
                .map(|(i, _)| *i),
        );
        m.sort_unstable();
        let mut wanted = peers.egress_named_any.clone();
        for &i in &m {
            wanted.extend(peers.egress_named[i].iter().copied());
        }
        let named = wanted
            .into_iter()
            .filter_map(|(n, p)| pod.resolve(n, p).map(|port| (n, p, port)))
            .collect();
        let key = ClassKey {
            pod: true,
            peers: m,
            named,
        };
        let members = out.entry(key).or_default();
        members.pods.insert(&pod.key);
        members.entries.push(prefix_key(host_net(ip)));
    }

    // Non-pod address space: ipBlock cidrs and excepts, shortest first so that a prefix's
    // nearest enclosing prefix is classified before it.
    let mut prefixes: BTreeSet<(u8, IpNet)> = BTreeSet::new();
    for root in ["0.0.0.0/0", "::/0"] {
        let net: IpNet = root.parse().expect("valid root prefix");
        prefixes.insert((0, net));
    }
    for (_, b) in &blocks {
        prefixes.insert((b.cidr.prefix_len(), b.cidr));
        prefixes.extend(b.except.iter().map(|e| (e.prefix_len(), *e)));
    }
    let mut class_of: BTreeMap<IpNet, Vec<usize>> = BTreeMap::new();
    for (_, net) in prefixes {
        let m: Vec<usize> = blocks
            .iter()
            .filter(|(_, b)| b.cidr.contains(&net) && !b.except.iter().any(|e| e.contains(&net)))
            .map(|(i, _)| *i)
            .collect();
        let mut parent = net.supernet();
        let enclosing = loop {
            match parent {
                None => break None,
                Some(p) => match class_of.get(&p) {
                    Some(c) => break Some(c),
                    None => parent = p.supernet(),
                },
            }
        };
        if enclosing != Some(&m) && !taken.contains(&net) {
            let members = out
                .entry(ClassKey {
                    pod: false,
                    peers: m.clone(),
                    named: Vec::new(),
                })
                .or_default();
            members.entries.push(prefix_key(net));
            members.prefixes.push(net);
        }
        class_of.insert(net, m);
    }
    out
}

/// The identity numbers of this compile.
struct Identities<'a> {
    /// Per peer: the identities whose addresses it matches (sorted).
    of_peer: Vec<Vec<u32>>,
    /// Every pod identity.
    pods: Vec<u32>,
    /// Identity -> its class (for named-port resolution).
    class: BTreeMap<u32, ClassKey<'a>>,
}

impl<'a> Identities<'a> {
    fn allocate(
        classes: &BTreeMap<ClassKey<'a>, Members<'a>>,
        peers: &PeerTable<'a>,
        model: &PolicyModel,
        previous: Option<&CompiledPolicy>,
        out: &mut CompiledPolicy,
    ) -> Identities<'a> {
        let described: Vec<(&ClassKey, IdentityClass)> =
            classes.keys().map(|k| (k, k.to_class(peers))).collect();
        let prev: BTreeMap<&IdentityClass, u32> = previous
            .into_iter()
            .flat_map(|p| &p.identities)
            .filter(|(id, _)| **id >= IDENTITY_FIRST_DYNAMIC)
            .filter_map(|(id, info)| Some((info.class.as_ref()?, *id)))
            .collect();
        let mut alloc = Allocator::new(
            IDENTITY_FIRST_DYNAMIC,
            previous.and_then(|p| p.identities.keys().max().copied()),
        );
        let world = ClassKey::world();
        let mut number: BTreeMap<&ClassKey, u32> = BTreeMap::new();
        // Kept numbers first, so that a new class never takes one.
        for (key, class) in &described {
            if **key == world {
                number.insert(key, IDENTITY_WORLD);
            } else if let Some(&id) = prev.get(class) {
                alloc.reserve(id);
                number.insert(key, id);
            }
        }
        for (key, _) in &described {
            if !number.contains_key(key) {
                number.insert(key, alloc.next());
            }
        }

        let mut ids = Identities {
            of_peer: vec![Vec::new(); peers.peers.len()],
            pods: Vec::new(),
            class: BTreeMap::new(),
        };
        for (key, class) in described {
            let id = number[key];
            let members = &classes[key];
            for entry in &members.entries {
                out.maps.identities.insert(*entry, id);
            }
            out.identities.insert(
                id,
                IdentityInfo {
                    class: Some(class),
                    pods: members.pods.iter().map(|p| (*p).clone()).collect(),
                    prefixes: members.prefixes.clone(),
                },
            );
            for &p in &key.peers {
                ids.of_peer[p].push(id);
            }
            if key.pod {
                ids.pods.push(id);
            }
            ids.class.insert(id, key.clone());
        }
        for list in &mut ids.of_peer {
            list.sort_unstable();
        }
        ids.pods.sort_unstable();

        out.identities
            .entry(IDENTITY_WORLD)
            .or_insert_with(|| IdentityInfo {
                class: Some(world.to_class(peers)),
                pods: Vec::new(),
                prefixes: Vec::new(),
            });
        let node_nets: Vec<IpNet> = model.node_ips.iter().map(|ip| host_net(*ip)).collect();
        for net in &node_nets {
            out.maps.identities.insert(prefix_key(*net), IDENTITY_HOST);
        }
        out.identities.insert(
            IDENTITY_HOST,
            IdentityInfo {
                class: None,
                pods: Vec::new(),
                prefixes: node_nets,
            },
        );
        ids
    }
}

/// Hands out numbers above every number of the previous compile, so that a number freed now
/// is not reused for something else in the same map sync.
struct Allocator {
    min: u32,
    next: u32,
    used: BTreeSet<u32>,
}

impl Allocator {
    fn new(min: u32, previous_max: Option<u32>) -> Allocator {
        let next = previous_max.map_or(min, |m| m.saturating_add(1)).max(min);
        Allocator {
            min,
            next,
            used: BTreeSet::new(),
        }
    }

    fn reserve(&mut self, id: u32) {
        self.used.insert(id);
    }

    fn next(&mut self) -> u32 {
        // After u32::MAX wrap to `min` and skip what is taken (bounded: far fewer numbers are
        // in use than exist).
        loop {
            let id = self.next;
            self.next = if id == u32::MAX { self.min } else { id + 1 };
            if id >= self.min && self.used.insert(id) {
                return id;
            }
        }
    }
}

fn endpoints_and_rules(
    model: &PolicyModel,
    peers: &PeerTable,
    ids: &Identities,
    previous: Option<&CompiledPolicy>,
    out: &mut CompiledPolicy,
) {
    let local: Vec<_> = model
        .pods
        .values()
        .filter(|p| model.is_local(p) && !p.ips.is_empty())
        .collect();
    let prev: BTreeMap<&NamespacedName, u32> = previous
        .into_iter()
        .flat_map(|p| &p.endpoints)
        .map(|(id, info)| (&info.pod, *id))
        .collect();
    let mut alloc = Allocator::new(1, previous.and_then(|p| p.endpoints.keys().max().copied()));
    let mut numbers: Vec<Option<u32>> = local.iter().map(|p| prev.get(&p.key).copied()).collect();
    for id in numbers.iter().flatten() {
        alloc.reserve(*id);
    }
    for n in &mut numbers {
        if n.is_none() {
            *n = Some(alloc.next());
        }
    }

    for (pod, id) in local.into_iter().zip(numbers.into_iter().flatten()) {
        let mut info = EndpointInfo {
            pod: pod.key.clone(),
            ips: pod.ips.clone(),
            ingress_policies: Vec::new(),
            egress_policies: Vec::new(),
        };
        let mut flags = 0;
        for dir in Direction::ALL {
            let selecting: Vec<_> = model.selecting(pod, dir).collect();
            if selecting.is_empty() {
                continue;
            }
            flags |= dir.isolated_flag();
            let names = selecting.iter().map(|p| p.key.clone()).collect();
            match dir {
                Direction::Ingress => info.ingress_policies = names,
                Direction::Egress => info.egress_policies = names,
            }

            // (identity, protocol) -> ports, over every rule of every selecting policy.
            let mut acc: BTreeMap<(u32, u8), Ports> = BTreeMap::new();
            let mut allow = |identity: u32, proto: u8, lo_hi: Option<(u16, u16)>| {
                let ports = acc
                    .entry((identity, proto))
                    .or_insert_with(|| Ports::Ranges(Vec::new()));
                match lo_hi {
                    None => *ports = Ports::All,
                    Some((lo, hi)) => ports.add(lo, hi),
                }
            };
            for rule in selecting
                .iter()
                .flat_map(|p| p.rules(dir).unwrap_or_default())
            {
                let targets: Vec<u32> = if rule.peers.is_empty() {
                    vec![IDENTITY_ANY]
                } else {
                    let set: BTreeSet<u32> = rule
                        .peers
                        .iter()
                        .flat_map(|p| ids.of_peer[peers.index[p]].iter().copied())
                        .collect();
                    set.into_iter().collect()
                };
                if rule.ports.is_empty() {
                    for &t in &targets {
                        allow(t, POL_PROTO_ANY, None);
                    }
                }
                for port in &rule.ports {
                    let proto = port.protocol.number();
                    match &port.port {
                        PortMatch::All => {
                            for &t in &targets {
                                allow(t, proto, None);
                            }
                        }
                        PortMatch::Range(lo, hi) => {
                            for &t in &targets {
                                allow(t, proto, Some((*lo, *hi)));
                            }
                        }
                        PortMatch::Named(name) => match dir {
                            // Against the selected pod: it is the destination.
                            Direction::Ingress => {
                                if let Some(n) = pod.resolve(name, port.protocol) {
                                    for &t in &targets {
                                        allow(t, proto, Some((n, n)));
                                    }
                                }
                            }
                            // Against each destination pod, through its identity class.
                            Direction::Egress => {
                                let candidates = if rule.peers.is_empty() {
                                    &ids.pods
                                } else {
                                    &targets
                                };
                                for &t in candidates {
                                    if let Some(n) = ids.class[&t].resolve(name, port.protocol) {
                                        allow(t, proto, Some((n, n)));
                                    }
                                }
                            }
                        },
                    }
                }
            }
            emit(out, &pod.key, id, dir, acc);
        }
        for ip in &pod.ips {
            out.maps
                .endpoints
                .insert(super::ip_key(*ip), Endpoint { id, flags });
        }
        out.endpoints.insert(id, info);
    }
}

/// Write the rule keys of one endpoint and direction, leaving out what a wildcard key
/// already allows (the datapath consults all four wildcard combinations).
fn emit(
    out: &mut CompiledPolicy,
    pod: &NamespacedName,
    endpoint: u32,
    dir: Direction,
    acc: BTreeMap<(u32, u8), Ports>,
) {
    let acc: BTreeMap<(u32, u8), Ports> = acc.into_iter().map(|(k, v)| (k, v.merged())).collect();
    let any_any = acc.contains_key(&(IDENTITY_ANY, POL_PROTO_ANY));
    for (&(identity, proto), ports) in &acc {
        let specific_identity = identity != IDENTITY_ANY;
        let specific_proto = proto != POL_PROTO_ANY;
        if any_any && (specific_identity || specific_proto) {
            continue;
        }
        if specific_proto && acc.contains_key(&(identity, POL_PROTO_ANY)) {
            continue;
        }
        let mut ports = ports.clone();
        if specific_identity && specific_proto {
            match (&mut ports, acc.get(&(IDENTITY_ANY, proto))) {
                (_, None) => {}
                (_, Some(Ports::All)) => continue,
                (Ports::All, Some(Ports::Ranges(_))) => {}
                (Ports::Ranges(mine), Some(Ports::Ranges(any))) => {
                    mine.retain(|r| !covered(r, any));
                    if mine.is_empty() {
                        continue;
                    }
                }
            }
        }
        let key = PolicyKey {
            endpoint,
            identity,
            proto,
            dir: dir.abi(),
            _pad: [0; 2],
        };
        let mut value = PolicyValue {
            flags: 0,
            count: 0,
            ranges: [PortRange::default(); POL_MAX_RANGES],
        };
        match ports {
            Ports::All => value.flags = POL_F_ALL_PORTS,
            Ports::Ranges(ranges) => {
                let kept = ranges.len().min(POL_MAX_RANGES);
                if ranges.len() > POL_MAX_RANGES {
                    out.errors.push(PolicyError::TooManyRanges {
                        pod: pod.clone(),
                        direction: dir,
                        identity,
                        protocol: proto,
                        needed: ranges.len(),
                        kept,
                        last_kept_port: ranges[kept - 1].hi,
                    });
                }
                value.ranges[..kept].copy_from_slice(&ranges[..kept]);
                value.count = kept as u16;
            }
        }
        out.maps.rules.insert(key, value);
    }
}

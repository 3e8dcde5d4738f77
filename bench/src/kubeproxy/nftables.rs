//! kube-proxy's nftables mode (pkg/proxy/nftables/proxier.go), IPv4 ClusterIP only.
//!
//! ```text
//! table ip kube-proxy
//!   nat-prerouting, nat-output (type nat, priority dstnat) -> jump services
//!   nat-postrouting (type nat, priority srcnat)            -> jump masquerading
//!   services: ip daddr . meta l4proto . th dport vmap @service-ips     (one hash lookup)
//!   map service-ips { ipv4_addr . inet_proto . inet_service : verdict }
//!       <clusterIP> . tcp . <port> : goto service-<hash>-<ns>/<name>/<proto>/<port name>
//!   service-...: ip daddr <vip> <proto> dport <port> ip saddr != <clusterCIDR> jump mark-for-masquerade
//!                numgen random mod <n> vmap { 0 : goto endpoint-..., ... }
//!   endpoint-...__<ip>/<port>: ip saddr <ip> jump mark-for-masquerade   (hairpin)
//!                              meta l4proto <proto> dnat to <ip>:<port>
//! ```

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::{hash_name, ServicePort};

/// The table kube-proxy owns.
pub const TABLE: &str = "ip kube-proxy";

/// `service-<hash>-<ns>/<name>/<proto>/<port name>`.
pub fn service_chain(s: &ServicePort) -> String {
    let id = format!("{}/{}/{}", s.name, s.proto.as_str(), s.port_name());
    format!("service-{}-{id}", hash_name(&id, 8))
}

/// `endpoint-<hash>-<ns>/<name>/<proto>/<port name>__<ip>/<port>`.
pub fn endpoint_chain(s: &ServicePort, ep: (Ipv4Addr, u16)) -> String {
    let id = format!(
        "{}/{}/{}__{}/{}",
        s.name,
        s.proto.as_str(),
        s.port_name(),
        ep.0,
        ep.1
    );
    format!("endpoint-{}-{id}", hash_name(&id, 8))
}

/// A service port's chains (added, emptied, refilled) and its endpoints' chains.
fn write_service(out: &mut String, s: &ServicePort, cluster_cidr: &str) {
    let svc = service_chain(s);
    let p = s.proto.as_str();
    for &ep in &s.endpoints {
        let chain = endpoint_chain(s, ep);
        let _ = writeln!(out, "add chain {TABLE} {chain}");
        let _ = writeln!(out, "flush chain {TABLE} {chain}");
        let _ = writeln!(
            out,
            "add rule {TABLE} {chain} ip saddr {} jump mark-for-masquerade",
            ep.0
        );
        let _ = writeln!(
            out,
            "add rule {TABLE} {chain} meta l4proto {p} dnat to {}:{}",
            ep.0, ep.1
        );
    }
    let _ = writeln!(out, "add chain {TABLE} {svc}");
    let _ = writeln!(out, "flush chain {TABLE} {svc}");
    let _ = writeln!(
        out,
        "add rule {TABLE} {svc} ip daddr {} {p} dport {} ip saddr != {cluster_cidr} jump \
         mark-for-masquerade",
        s.cluster_ip, s.port
    );
    if !s.endpoints.is_empty() {
        let arms: Vec<String> = s
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, &ep)| format!("{i} : goto {}", endpoint_chain(s, ep)))
            .collect();
        let _ = writeln!(
            out,
            "add rule {TABLE} {svc} numgen random mod {} vmap {{ {} }}",
            s.endpoints.len(),
            arms.join(" , ")
        );
    }
}

/// The full ruleset, `nft -f` input (one transaction): the table, its fixed chains and map
/// (flushed first, as kube-proxy's full sync does), then every service port, whose
/// `service-ips` elements are added in the order given.
pub fn full_ruleset(services: &[ServicePort], cluster_cidr: &str) -> String {
    let per_service: usize = services.iter().map(|s| 400 + 420 * s.endpoints.len()).sum();
    let mut out = String::with_capacity(per_service + 4096);
    let _ = writeln!(
        out,
        "add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}"
    );
    for (chain, hook) in [
        ("mark-for-masquerade", None),
        ("masquerading", None),
        ("services", None),
        (
            "nat-prerouting",
            Some("type nat hook prerouting priority -100"),
        ),
        ("nat-output", Some("type nat hook output priority -100")),
        (
            "nat-postrouting",
            Some("type nat hook postrouting priority 100"),
        ),
    ] {
        match hook {
            Some(h) => {
                let _ = writeln!(out, "add chain {TABLE} {chain} {{ {h} ; }}");
            }
            None => {
                let _ = writeln!(out, "add chain {TABLE} {chain}");
            }
        }
        let _ = writeln!(out, "flush chain {TABLE} {chain}");
    }
    let _ = writeln!(
        out,
        "add map {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
         comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    );
    let _ = writeln!(out, "flush map {TABLE} service-ips");
    for rule in [
        "mark-for-masquerade mark set mark or 0x4000",
        "masquerading mark and 0x4000 == 0 return",
        "masquerading mark set mark xor 0x4000",
        "masquerading masquerade fully-random",
        "nat-prerouting jump services",
        "nat-output jump services",
        "nat-postrouting jump masquerading",
        "services ip daddr . meta l4proto . th dport vmap @service-ips",
    ] {
        let _ = writeln!(out, "add rule {TABLE} {rule}");
    }
    for s in services {
        write_service(&mut out, s, cluster_cidr);
    }
    for s in services {
        let _ = writeln!(
            out,
            "add element {TABLE} service-ips {{ {} . {} . {} : goto {} }}",
            s.cluster_ip,
            s.proto.as_str(),
            s.port,
            service_chain(s)
        );
    }
    out
}

/// The transaction kube-proxy's nftables mode applies when one service port's endpoints
/// change from `old` to `new`: new endpoint chains added, the service chain refilled, the
/// endpoint chains that `new` lacks flushed and deleted. Nothing else is touched.
pub fn service_update(old: &ServicePort, new: &ServicePort, cluster_cidr: &str) -> String {
    let mut out = String::new();
    write_service(&mut out, new, cluster_cidr);
    for &ep in &old.endpoints {
        if !new.endpoints.contains(&ep) {
            let chain = endpoint_chain(old, ep);
            let _ = writeln!(out, "flush chain {TABLE} {chain}");
            let _ = writeln!(out, "delete chain {TABLE} {chain}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::synthetic_services;
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn two_services_shape() {
        let s = synthetic_services(2, 3);
        let text = full_ruleset(&s, "10.244.0.0/16");
        assert!(text.starts_with("add table ip kube-proxy"));
        assert!(text.contains(
            "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict"
        ));
        assert!(text.contains("nat-prerouting { type nat hook prerouting priority -100 ; }"));
        let elements: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("add element ip kube-proxy service-ips"))
            .collect();
        assert_eq!(elements.len(), 2);
        assert!(elements[0].contains(&format!(
            "{{ 10.96.0.10 . tcp . 80 : goto {} }}",
            service_chain(&s[0])
        )));
        assert!(elements[1].contains("10.96.0.11 . tcp . 80"));
        let svc = service_chain(&s[0]);
        assert!(svc.starts_with("service-") && svc.ends_with("-bench/svc-0/tcp/p80"));
        let numgen: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("add rule ip kube-proxy {svc} numgen")))
            .collect();
        assert_eq!(numgen.len(), 1);
        assert!(numgen[0].contains("numgen random mod 3 vmap { 0 : goto endpoint-"));
        assert!(numgen[0].contains(" , 2 : goto endpoint-"));
        let (ip, port) = s[0].endpoints[1];
        let ep = endpoint_chain(&s[0], (ip, port));
        assert!(text.contains(&format!(
            "add rule ip kube-proxy {ep} meta l4proto tcp dnat to {ip}:{port}\n"
        )));
        let chains: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("add chain ip kube-proxy "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let unique: HashSet<&str> = chains.iter().copied().collect();
        assert_eq!(chains.len(), unique.len());
        assert_eq!(chains.len(), 6 + 2 * (1 + 3));
    }

    #[test]
    fn update_touches_only_that_service() {
        let old = synthetic_services(3, 3);
        let mut new = old[2].clone();
        let gone = new.endpoints[0];
        new.endpoints[0] = ("10.244.127.200".parse().unwrap(), 8080);
        let tx = service_update(&old[2], &new, "10.244.0.0/16");
        assert!(!tx.contains("svc-0") && !tx.contains("svc-1"));
        assert!(tx.contains(&format!(
            "delete chain ip kube-proxy {}",
            endpoint_chain(&old[2], gone)
        )));
        assert!(tx.contains("dnat to 10.244.127.200:8080"));
        assert!(tx.contains(&format!(
            "flush chain ip kube-proxy {}",
            service_chain(&new)
        )));
    }
}

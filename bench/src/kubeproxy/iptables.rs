//! kube-proxy's iptables mode (pkg/proxy/iptables/proxier.go), nat table, ClusterIP only.
//!
//! ```text
//! PREROUTING, OUTPUT -> KUBE-SERVICES           (added once: bootstrap())
//! POSTROUTING        -> KUBE-POSTROUTING
//! KUBE-SERVICES:  -d <clusterIP> -p <proto> --dport <port> -j KUBE-SVC-<hash>   (one per service port,
//!                 linear: a packet is compared with every rule before its own)
//!                 ... -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS           (last)
//! KUBE-SVC-<hash>: ! -s <clusterCIDR> -j KUBE-MARK-MASQ
//!                  -m statistic --mode random --probability 1/(n-i) -j KUBE-SEP-<hash>  (i < n-1)
//!                  -j KUBE-SEP-<hash>                                                    (last)
//! KUBE-SEP-<hash>: -s <endpoint> -j KUBE-MARK-MASQ   (hairpin)
//!                  -p <proto> -j DNAT --to-destination <endpoint>:<port>
//! KUBE-MARK-MASQ:  -j MARK --or-mark 0x4000
//! KUBE-POSTROUTING: masquerade what carries the mark
//! ```

use std::fmt::Write as _;

use super::{hash_name, ServicePort};

/// The mark kube-proxy sets on packets to masquerade (`--iptables-masquerade-bit` 14).
const MASQ_MARK: &str = "0x4000";

/// `KUBE-SVC-<hash>` of a service port.
pub fn svc_chain(s: &ServicePort) -> String {
    format!(
        "KUBE-SVC-{}",
        hash_name(
            &format!("{}:{}{}", s.name, s.port_name(), s.proto.as_str()),
            16
        )
    )
}

/// `KUBE-SEP-<hash>` of one endpoint of a service port.
pub fn sep_chain(s: &ServicePort, ep: (std::net::Ipv4Addr, u16)) -> String {
    format!(
        "KUBE-SEP-{}",
        hash_name(
            &format!(
                "{}:{}{}{}:{}",
                s.name,
                s.port_name(),
                s.proto.as_str(),
                ep.0,
                ep.1
            ),
            16
        )
    )
}

/// What kube-proxy installs once outside its restores (`EnsureChain`/`EnsureRule`): the jumps
/// from the built-in chains. iptables-restore `--noflush` input.
pub fn bootstrap() -> String {
    "*nat\n\
     :KUBE-SERVICES - [0:0]\n\
     :KUBE-POSTROUTING - [0:0]\n\
     -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
     -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
     -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
     COMMIT\n"
        .to_string()
}

/// `*nat` and the fixed chains' declarations.
fn write_header(out: &mut String) {
    out.push_str("*nat\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
}

/// The fixed chains' rules, then every service's KUBE-SERVICES rule in order, then the
/// NodePorts rule (kube-proxy writes it last).
fn write_fixed_rules(out: &mut String, services: &[ServicePort]) {
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(out, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully"
    );
    let _ = writeln!(out, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    for s in services {
        let p = s.proto.as_str();
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{}:{} cluster IP\" -m {p} -p {p} -d {}/32 \
             --dport {} -j {}",
            s.name,
            s.port_name(),
            s.cluster_ip,
            s.port,
            svc_chain(s)
        );
    }
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must \
         be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
}

/// Declarations of a service port's chains (`:KUBE-SVC-... - [0:0]`, `:KUBE-SEP-...`).
fn write_service_chain_decls(out: &mut String, s: &ServicePort) {
    let _ = writeln!(out, ":{} - [0:0]", svc_chain(s));
    for &ep in &s.endpoints {
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(s, ep));
    }
}

/// The rules of a service port's KUBE-SVC chain and its KUBE-SEP chains.
fn write_service_rules(out: &mut String, s: &ServicePort, cluster_cidr: &str) {
    let p = s.proto.as_str();
    let svc = svc_chain(s);
    let name = format!("{}:{}", s.name, s.port_name());
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{name} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} \
         ! -s {cluster_cidr} -j KUBE-MARK-MASQ",
        s.cluster_ip, s.port
    );
    let n = s.endpoints.len();
    for (i, &ep) in s.endpoints.iter().enumerate() {
        let sep = sep_chain(s, ep);
        if i + 1 < n {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{name} -> {}:{}\" -m statistic --mode random \
                 --probability {:.10} -j {sep}",
                ep.0,
                ep.1,
                1.0 / (n - i) as f64
            );
        } else {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{name} -> {}:{}\" -j {sep}",
                ep.0, ep.1
            );
        }
    }
    for &ep in &s.endpoints {
        let sep = sep_chain(s, ep);
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {name} -s {}/32 -j KUBE-MARK-MASQ",
            ep.0
        );
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {name} -m {p} -p {p} -j DNAT --to-destination {}:{}",
            ep.0, ep.1
        );
    }
}

/// The full sync: every nat chain of kube-proxy and every rule, iptables-restore input
/// (`*nat ... COMMIT`), for `iptables-restore --noflush` after [`bootstrap`]. Services appear
/// in KUBE-SERVICES in the order given (put the one to measure last).
pub fn full_restore(services: &[ServicePort], cluster_cidr: &str) -> String {
    // About 150 bytes per rule.
    let rules: usize = services.iter().map(|s| 2 + 3 * s.endpoints.len()).sum();
    let mut out = String::with_capacity(rules * 160 + 1024);
    write_header(&mut out);
    for s in services {
        write_service_chain_decls(&mut out, s);
    }
    write_fixed_rules(&mut out, services);
    for s in services {
        write_service_rules(&mut out, s, cluster_cidr);
    }
    out.push_str("COMMIT\n");
    out
}

/// A partial sync (kube-proxy's `MinimizeIPTablesRestore`, on by default since 1.27): the
/// fixed chains and KUBE-SERVICES in full (one rule per service port of `new`), the chains of
/// the service ports at indexes `changed` of `new` rewritten, and the KUBE-SEP chains of
/// those ports that `old` had and `new` lacks deleted (`-X`).
pub fn partial_restore(
    old: &[ServicePort],
    new: &[ServicePort],
    changed: &[usize],
    cluster_cidr: &str,
) -> String {
    let mut out = String::with_capacity(new.len() * 160 + 4096);
    write_header(&mut out);
    let mut stale = Vec::new();
    for &i in changed {
        let Some(s) = new.get(i) else { continue };
        write_service_chain_decls(&mut out, s);
        if let Some(o) = old.iter().find(|o| o.name == s.name && o.port == s.port) {
            for &ep in &o.endpoints {
                if !s.endpoints.contains(&ep) {
                    let chain = sep_chain(o, ep);
                    let _ = writeln!(out, ":{chain} - [0:0]");
                    stale.push(chain);
                }
            }
        }
    }
    write_fixed_rules(&mut out, new);
    for &i in changed {
        if let Some(s) = new.get(i) {
            write_service_rules(&mut out, s, cluster_cidr);
        }
    }
    for chain in stale {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::{synthetic_services, Proto};
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn two_services_shape() {
        let mut s = synthetic_services(2, 3);
        s[1].proto = Proto::Udp;
        let text = full_restore(&s, "10.244.0.0/16");
        assert!(text.starts_with("*nat\n"));
        assert!(text.ends_with("COMMIT\n"));
        let lines: Vec<&str> = text.lines().collect();
        // KUBE-SERVICES: one jump per service, in order, then the NodePorts rule last.
        let services: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert_eq!(services.len(), 3);
        assert!(services[0].contains("-d 10.96.0.10/32 --dport 80 -j KUBE-SVC-"));
        assert!(services[0].contains("-m tcp -p tcp"));
        assert!(services[1].contains("-d 10.96.0.11/32"));
        assert!(services[1].contains("-m udp -p udp"));
        assert!(services[2].contains("-j KUBE-NODEPORTS"));
        // Probabilities 1/3, 1/2, then an unconditional jump.
        let svc = svc_chain(&s[0]);
        let svc_rules: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("-A {svc} ")))
            .collect();
        assert_eq!(svc_rules.len(), 4);
        assert!(svc_rules[0].contains("! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"));
        assert!(svc_rules[1].contains("--probability 0.3333333333 -j KUBE-SEP-"));
        assert!(svc_rules[2].contains("--probability 0.5000000000 -j KUBE-SEP-"));
        assert!(!svc_rules[3].contains("statistic"));
        assert!(svc_rules[3].contains("-j KUBE-SEP-"));
        // Each endpoint chain: hairpin mark, then DNAT.
        let (ip, port) = s[0].endpoints[2];
        let sep = sep_chain(&s[0], (ip, port));
        let sep_rules: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("-A {sep} ")))
            .collect();
        assert_eq!(sep_rules.len(), 2);
        assert!(sep_rules[0].contains(&format!("-s {ip}/32 -j KUBE-MARK-MASQ")));
        assert!(sep_rules[1].ends_with(&format!("-j DNAT --to-destination {ip}:{port}")));
        // Every chain used is declared exactly once, and the names are unique.
        let decls: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix(':'))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let unique: HashSet<&str> = decls.iter().copied().collect();
        assert_eq!(unique.len(), decls.len());
        assert_eq!(decls.len(), 4 + 2 * (1 + 3));
        for l in &lines {
            if let Some(rest) = l.strip_prefix("-A ") {
                let chain = rest.split(' ').next().unwrap();
                assert!(unique.contains(chain), "{chain} not declared");
            }
        }
    }

    #[test]
    fn partial_sync_rewrites_services_and_one_chain() {
        let old = synthetic_services(5, 3);
        let mut new = old.clone();
        let gone = new[4].endpoints[0];
        new[4].endpoints[0] = ("10.244.127.200".parse().unwrap(), 8080);
        let text = partial_restore(&old, &new, &[4], "10.244.0.0/16");
        let count = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(count("-A KUBE-SERVICES"), 6);
        assert_eq!(count(&format!("-A {} ", svc_chain(&new[4]))), 4);
        assert_eq!(count(&format!("-A {} ", svc_chain(&new[3]))), 0);
        assert_eq!(count(&format!("-X {}", sep_chain(&old[4], gone))), 1);
        assert!(text.contains("--to-destination 10.244.127.200:8080"));
    }
}

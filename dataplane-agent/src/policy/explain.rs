//! `explain`: what NetworkPolicy does to one pod, in plain language.

use std::fmt::Write as _;

use super::model::{Direction, PodInfo, PolicyModel, PortMatch, Rule};
use crate::model::NamespacedName;

/// Which policies select `pod`, in which directions, and what each of their rules allows.
pub fn explain(model: &PolicyModel, pod: &NamespacedName) -> String {
    let Some(info) = model.pods.get(pod) else {
        return format!(
            "No live pod {pod} (it does not exist, or it has Succeeded or Failed): no policy \
             applies to it.\n"
        );
    };
    let mut s = String::new();
    let ips: Vec<String> = info.ips.iter().map(|ip| ip.to_string()).collect();
    let labels: Vec<String> = info
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        s,
        "Pod {pod} on node {}, IPs [{}], labels [{}].",
        info.node_name.as_deref().unwrap_or("<unscheduled>"),
        ips.join(", "),
        labels.join(", ")
    );
    if info.host_network {
        let _ = writeln!(
            s,
            "It uses the host network: NetworkPolicy does not apply to it, and policies' pod \
             selectors never match it (its IPs are its node's)."
        );
        return s;
    }
    if !model.is_local(info) {
        let _ = writeln!(
            s,
            "It is not on this node ({}): this node does not enforce its policies, but they \
             are as follows.",
            model.node_name
        );
    }
    for dir in Direction::ALL {
        explain_direction(&mut s, model, info, dir);
    }
    s
}

fn explain_direction(s: &mut String, model: &PolicyModel, pod: &PodInfo, dir: Direction) {
    let (title, from) = match dir {
        Direction::Ingress => ("Ingress", "from"),
        Direction::Egress => ("Egress", "to"),
    };
    let policies: Vec<_> = model.selecting(pod, dir).collect();
    if policies.is_empty() {
        let _ = writeln!(
            s,
            "{title}: not isolated (no policy selects it for {dir}): all {dir} traffic is allowed."
        );
        return;
    }
    let _ = writeln!(
        s,
        "{title}: isolated by {} {}; allowed is what any of their rules allows, plus traffic \
         {from} its own node, plus replies of allowed connections:",
        policies.len(),
        if policies.len() == 1 {
            "policy"
        } else {
            "policies"
        }
    );
    for policy in policies {
        let rules = policy.rules(dir).unwrap_or_default();
        let selects = if policy.pod_selector.is_everything() {
            "every pod of its namespace".to_string()
        } else {
            format!("pods with labels {}", policy.pod_selector)
        };
        let header = format!("  policy {} (selects {selects})", policy.key);
        if rules.is_empty() {
            let _ = writeln!(s, "{header}: no {dir} rules: allows no {dir} traffic.");
            continue;
        }
        let _ = writeln!(s, "{header}:");
        for (i, rule) in rules.iter().enumerate() {
            let _ = writeln!(
                s,
                "    rule {}: {from} {}; {}.",
                i + 1,
                peers(rule),
                ports(rule, pod, dir)
            );
        }
    }
}

fn peers(rule: &Rule) -> String {
    if rule.peers.is_empty() {
        return "anywhere (every pod and every other address)".to_string();
    }
    let list: Vec<String> = rule.peers.iter().map(|p| p.to_string()).collect();
    list.join(", or ")
}

fn ports(rule: &Rule, pod: &PodInfo, dir: Direction) -> String {
    if rule.ports.is_empty() {
        return "every port of every protocol".to_string();
    }
    let list: Vec<String> = rule
        .ports
        .iter()
        .map(|p| match (&p.port, dir) {
            (PortMatch::Named(name), Direction::Ingress) => match pod.resolve(name, p.protocol) {
                Some(n) => format!("{p} (= {n} on this pod)"),
                None => format!(
                    "{p} (this pod has no such {} port: matches nothing)",
                    p.protocol
                ),
            },
            (PortMatch::Named(_), Direction::Egress) => {
                format!("{p} (resolved on each destination pod; other addresses never match)")
            }
            _ => p.to_string(),
        })
        .collect();
    format!("on {}", list.join(", "))
}

//! What the source keeps of the objects it stores as k8s-openapi types. Dropping the rest
//! saves memory (every Pod of the cluster is watched) and, more importantly, makes the
//! frequent updates that touch only dropped fields (Pod conditions, Node heartbeats,
//! `resourceVersion`, `managedFields`) compare equal, so they cause no resync.
//!
//! Keep here whatever the translation (and NetworkPolicy) needs; extend when it needs more.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Identity, labels (for selectors) and whether the object is being deleted.
pub(super) fn metadata(meta: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        labels: meta.labels,
        deletion_timestamp: meta.deletion_timestamp,
        ..ObjectMeta::default()
    }
}

/// Where the Pod runs, its addresses and phase (NetworkPolicy peers), and its containers'
/// ports (NetworkPolicy's named ports).
pub(super) fn pod(pod: core::Pod) -> core::Pod {
    let ports_only = |c: core::Container| core::Container {
        name: c.name,
        ports: c.ports,
        // Marks a sidecar among the init containers.
        restart_policy: c.restart_policy,
        ..core::Container::default()
    };
    core::Pod {
        metadata: metadata(pod.metadata),
        spec: pod.spec.map(|s| core::PodSpec {
            node_name: s.node_name,
            host_network: s.host_network,
            containers: s.containers.into_iter().map(ports_only).collect(),
            init_containers: s
                .init_containers
                .map(|cs| cs.into_iter().map(ports_only).collect()),
            ..core::PodSpec::default()
        }),
        status: pod.status.map(|s| core::PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            host_ip: s.host_ip,
            host_ips: s.host_ips,
            ..core::PodStatus::default()
        }),
    }
}

/// The spec (pod CIDRs, taints) and addresses; not the conditions, whose heartbeat times
/// change all the time.
pub(super) fn node(node: core::Node) -> core::Node {
    core::Node {
        metadata: metadata(node.metadata),
        spec: node.spec,
        status: node.status.map(|s| core::NodeStatus {
            addresses: s.addresses,
            ..core::NodeStatus::default()
        }),
    }
}

pub(super) fn namespace(ns: core::Namespace) -> core::Namespace {
    core::Namespace {
        metadata: metadata(ns.metadata),
        ..ns
    }
}

pub(super) fn network_policy(policy: networking::NetworkPolicy) -> networking::NetworkPolicy {
    networking::NetworkPolicy {
        metadata: metadata(policy.metadata),
        ..policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_status_churn_compares_equal_after_trimming() {
        let yaml = |ready: &str, rv: &str| {
            format!(
                "metadata: {{name: p, namespace: demo, resourceVersion: '{rv}', labels: {{app: web}},\n\
                 \x20 annotations: {{big: blob}}}}\n\
                 spec:\n\
                 \x20 nodeName: n1\n\
                 \x20 hostNetwork: false\n\
                 \x20 containers: [{{name: c, image: nginx, ports: [{{name: http, containerPort: 8080}}]}}]\n\
                 \x20 initContainers: [{{name: s, image: envoy, restartPolicy: Always, ports: [{{name: admin, containerPort: 9901, protocol: UDP}}]}}]\n\
                 status:\n\
                 \x20 phase: Running\n\
                 \x20 podIP: 10.244.1.5\n\
                 \x20 podIPs: [{{ip: 10.244.1.5}}, {{ip: 'fd00::5'}}]\n\
                 \x20 conditions: [{{type: Ready, status: '{ready}'}}]\n"
            )
        };
        let a: core::Pod = serde_yaml::from_str(&yaml("True", "1")).unwrap();
        let b: core::Pod = serde_yaml::from_str(&yaml("False", "2")).unwrap();
        assert_ne!(a, b);
        let (a, b) = (pod(a), pod(b));
        assert_eq!(a, b);
        // What NetworkPolicy needs survives.
        assert_eq!(a.metadata.labels.unwrap()["app"], "web");
        let spec = a.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.containers[0].image, None);
        let ports = spec.containers[0].ports.as_ref().unwrap();
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].container_port),
            (Some("http"), 8080)
        );
        assert_eq!(spec.host_network, Some(false));
        let side = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(side.restart_policy.as_deref(), Some("Always"));
        assert_eq!(side.image, None);
        let port = &side.ports.as_ref().unwrap()[0];
        assert_eq!(
            (
                port.name.as_deref(),
                port.container_port,
                port.protocol.as_deref()
            ),
            (Some("admin"), 9901, Some("UDP"))
        );
        let status = a.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.5"));
        let ips: Vec<&str> = status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .collect();
        assert_eq!(ips, ["10.244.1.5", "fd00::5"]);
    }

    #[test]
    fn namespace_and_policy_keep_what_policy_needs() {
        let ns: core::Namespace = serde_yaml::from_str(
            "metadata: {name: x, labels: {team: a}, resourceVersion: '7'}\nstatus: {phase: Active}",
        )
        .unwrap();
        let ns = namespace(ns);
        assert_eq!(ns.metadata.labels.unwrap()["team"], "a");
        assert_eq!(ns.metadata.resource_version, None);
        let np: networking::NetworkPolicy = serde_yaml::from_str(
            "metadata: {name: p, namespace: x, generation: 3}\n\
             spec: {podSelector: {matchLabels: {a: b}}, policyTypes: [Egress], egress: [{ports: [{port: 53, protocol: UDP}]}]}",
        )
        .unwrap();
        let trimmed = network_policy(np.clone());
        assert_eq!(trimmed.spec, np.spec);
        assert_eq!(trimmed.metadata.generation, None);
    }
}

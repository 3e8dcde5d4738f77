//! The agent's Prometheus metrics (`skiff_*`), kept in one registry shared as `Arc<Metrics>`
//! between the agent loop, which records, and the HTTP endpoint, which encodes.
//!
//! Two kinds of counters live here: the agent's own events (syncs, failures), which it
//! increments, and values that are already running totals elsewhere (the per-CPU packet
//! counters in the kernel, the watcher's restart count). The latter are *set* to the absolute
//! value on each update and exposed by a collector, so nothing is ever added twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dataplane_common::Reason;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{text, DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Content type of [`Metrics::encode`]'s output (prometheus-client writes OpenMetrics text,
/// which Prometheus negotiates and parses natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the sync duration buckets, in seconds: a no-op sync of a small cluster takes
/// ~0.1 ms, a full rewrite of a large one seconds.
const SYNC_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The `verdict` label of a packet counter.
pub fn verdict(reason: Reason) -> &'static str {
    match reason {
        r if r.is_drop() => "drop",
        r if r.is_reject() => "reject",
        Reason::NatNew
        | Reason::NatEstablished
        | Reason::NatReply
        | Reason::NatNewMasq
        | Reason::NatMasqSource
        | Reason::NatReplySource
        | Reason::NatMasqReply
        | Reason::NatIcmpError
        | Reason::NatHairpin
        | Reason::SockNat
        | Reason::SockRevNat => "translate",
        _ => "pass",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExternalLabels {
    interface: String,
    /// `xdp` or `tc-ext-ingress` (the link pin and `skiff status` names).
    hook: &'static str,
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    reason: &'static str,
    verdict: &'static str,
}

/// Counters whose running total is kept elsewhere; encoded on each scrape with the last value
/// set.
#[derive(Debug, Default)]
struct AbsoluteCounters {
    /// `None` until the kernel counters were first read: exposing zeros before that would make
    /// the first real read (possibly large, after a restart that kept the maps) look like a
    /// burst of packets.
    packets: Mutex<Option<BTreeMap<Reason, u64>>>,
    watch_restarts: AtomicU64,
}

impl Collector for AbsoluteCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A panic while holding the lock cannot leave a half-written map of plain numbers.
        let packets = self
            .packets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(packets) = packets {
            let mut family = encoder.encode_descriptor(
                "packets",
                "Packets seen by the datapath, by the reason of their verdict (kernel counters summed over CPUs).",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in packets {
                let labels = PacketLabels {
                    reason: reason.name(),
                    verdict: verdict(reason),
                };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let restarts = ConstCounter::new(self.watch_restarts.load(Ordering::Relaxed));
        let metric = encoder.encode_descriptor(
            "watch_restarts",
            "Restarts of the watches on the cluster state.",
            None,
            restarts.metric_type(),
        )?;
        restarts.encode(metric)
    }
}

/// All metrics of the agent. Cheap to update from any thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    syncs: Counter,
    sync_changes: Counter,
    sync_failures: Counter,
    last_sync: Gauge<f64, AtomicU64>,
    map_entries: Family<MapLabels, Gauge<u64, AtomicU64>>,
    map_capacity: Family<MapLabels, Gauge<u64, AtomicU64>>,
    conntrack_entries: Gauge<u64, AtomicU64>,
    external_ingress: Family<ExternalLabels, Gauge<u64, AtomicU64>>,
    absolute: Arc<AbsoluteCounters>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("skiff");
        let sync_duration = Histogram::new(SYNC_BUCKETS);
        registry.register_with_unit(
            "sync_duration",
            "Time to translate the cluster state and apply the difference to the maps",
            Unit::Seconds,
            sync_duration.clone(),
        );
        let syncs = Counter::default();
        registry.register("syncs", "Successful syncs of the maps", syncs.clone());
        let sync_changes = Counter::default();
        registry.register(
            "sync_changes",
            "Map operations applied by successful syncs",
            sync_changes.clone(),
        );
        let sync_failures = Counter::default();
        registry.register(
            "sync_failures",
            "Syncs that failed to apply (retried on the next change)",
            sync_failures.clone(),
        );
        let last_sync = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "last_sync_timestamp",
            "Unix time of the last successful sync",
            Unit::Seconds,
            last_sync.clone(),
        );
        let map_entries = Family::default();
        registry.register(
            "map_entries",
            "Entries in each BPF map",
            map_entries.clone(),
        );
        let map_capacity = Family::default();
        registry.register(
            "map_capacity",
            "Maximum entries of each BPF map",
            map_capacity.clone(),
        );
        let conntrack_entries = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "conntrack_entries",
            "Entries in the connection-tracking map",
            conntrack_entries.clone(),
        );
        let external_ingress = Family::default();
        registry.register(
            "external_ingress",
            "1 for the hook (xdp: native XDP; tc-ext-ingress: TC ingress) and mode each external interface takes packets from outside with",
            external_ingress.clone(),
        );
        let absolute = Arc::new(AbsoluteCounters::default());
        registry.register_collector(Box::new(Arc::clone(&absolute)));
        Metrics {
            registry,
            sync_duration,
            syncs,
            sync_changes,
            sync_failures,
            last_sync,
            map_entries,
            map_capacity,
            conntrack_entries,
            external_ingress,
            absolute,
            ready: AtomicBool::new(false),
        }
    }

    /// Record a successful sync that took `took` and applied `changes` map operations.
    pub fn observe_sync(&self, took: Duration, changes: usize) {
        self.sync_duration.observe(took.as_secs_f64());
        self.syncs.inc();
        self.sync_changes.inc_by(changes as u64);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_sync.set(now.as_secs_f64());
    }

    pub fn sync_failed(&self) {
        self.sync_failures.inc();
    }

    pub fn set_map_usage(&self, map: &str, entries: u64, capacity: u64) {
        let labels = MapLabels { map: map.into() };
        self.map_entries.get_or_create(&labels).set(entries);
        self.map_capacity.get_or_create(&labels).set(capacity);
    }

    /// Set the packet counters to the kernel's totals (`Maps::stats()`).
    pub fn set_packets(&self, per_reason: &BTreeMap<Reason, u64>) {
        *self
            .absolute
            .packets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(per_reason.clone());
    }

    /// Record the ingress hook attached to an external interface.
    pub fn set_external_ingress(
        &self,
        interface: &str,
        hook: crate::bpf::attach::ExternalHook,
        mode: &'static str,
    ) {
        let hook = match hook {
            crate::bpf::attach::ExternalHook::Xdp => crate::bpf::attach::HOOK_XDP,
            crate::bpf::attach::ExternalHook::Tc => crate::bpf::attach::HOOK_TC_EXT_IN,
        };
        let labels = ExternalLabels {
            interface: interface.into(),
            hook,
            mode,
        };
        self.external_ingress.get_or_create(&labels).set(1);
    }

    pub fn set_conntrack_entries(&self, n: u64) {
        self.conntrack_entries.set(n);
    }

    /// Set the watch restart counter to its running total.
    pub fn watch_restarts(&self, total: u64) {
        self.absolute.watch_restarts.store(total, Ordering::Relaxed);
    }

    /// Mark the agent ready: the first full sync is in the maps.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The metrics in the OpenMetrics text format ([`CONTENT_TYPE`]), ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail, and every metric here encodes infallibly.
        if let Err(e) = text::encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line starting with `series ` (name and labels, exactly as
    /// encoded).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    fn labelled(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        text.lines().find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?.strip_prefix('{')?;
            let rest = rest.strip_suffix('}')?;
            let mut got: Vec<&str> = rest.split(',').collect();
            let mut want = labels.to_vec();
            got.sort();
            want.sort();
            (got == want).then(|| value.parse().unwrap())
        })
    }

    #[test]
    fn verdicts_follow_the_reason() {
        assert_eq!(verdict(Reason::PassNoService), "pass");
        assert_eq!(verdict(Reason::PassFragment), "pass");
        assert_eq!(verdict(Reason::NatNew), "translate");
        assert_eq!(verdict(Reason::NatReply), "translate");
        assert_eq!(verdict(Reason::DropCtFull), "drop");
        assert_eq!(verdict(Reason::RejectNoEndpoints), "reject");
        assert_eq!(verdict(Reason::SockNat), "translate");
        assert_eq!(verdict(Reason::DropSockNoEndpoints), "drop");
        for r in Reason::ALL {
            assert_eq!(verdict(r) == "drop", r.is_drop(), "{r:?}");
        }
    }

    #[test]
    fn fresh_metrics_expose_the_event_counters_at_zero() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(sample(&text, "skiff_syncs_total"), Some(0.0));
        assert_eq!(sample(&text, "skiff_sync_failures_total"), Some(0.0));
        assert_eq!(sample(&text, "skiff_watch_restarts_total"), Some(0.0));
        assert_eq!(
            sample(&text, "skiff_sync_duration_seconds_count"),
            Some(0.0)
        );
        // Kernel counters are unknown until read: absent rather than a fake zero.
        assert!(!text.contains("skiff_packets"), "{text}");
        assert!(!m.is_ready());
    }

    #[test]
    fn every_metric_is_encoded_with_its_value() {
        let m = Metrics::new();
        m.observe_sync(Duration::from_millis(3), 7);
        m.observe_sync(Duration::from_micros(50), 0);
        m.sync_failed();
        m.set_map_usage("SK_SVC_V1", 12, 65_536);
        m.set_map_usage("SK_BE_V1", 5, 262_144);
        m.set_conntrack_entries(42);
        m.watch_restarts(3);
        m.set_external_ingress("eth0", crate::bpf::attach::ExternalHook::Xdp, "native");
        m.set_external_ingress("eth1", crate::bpf::attach::ExternalHook::Tc, "tcx");
        let mut packets = BTreeMap::new();
        packets.insert(Reason::PassNoService, 100);
        packets.insert(Reason::NatNew, 9);
        packets.insert(Reason::DropNoEndpoints, 2);
        m.set_packets(&packets);
        m.set_ready();

        let text = m.encode();
        assert_eq!(sample(&text, "skiff_syncs_total"), Some(2.0), "{text}");
        assert_eq!(sample(&text, "skiff_sync_changes_total"), Some(7.0));
        assert_eq!(sample(&text, "skiff_sync_failures_total"), Some(1.0));
        assert_eq!(
            sample(&text, "skiff_sync_duration_seconds_count"),
            Some(2.0)
        );
        let sum = sample(&text, "skiff_sync_duration_seconds_sum").unwrap();
        assert!((sum - 0.00305).abs() < 1e-9, "{sum}");
        // 50 µs falls in the first bucket, 3 ms in le=0.005 (cumulative: both).
        assert_eq!(
            sample(&text, "skiff_sync_duration_seconds_bucket{le=\"0.0001\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "skiff_sync_duration_seconds_bucket{le=\"0.0025\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "skiff_sync_duration_seconds_bucket{le=\"0.005\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "skiff_sync_duration_seconds_bucket{le=\"+Inf\"}"),
            Some(2.0)
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let at = sample(&text, "skiff_last_sync_timestamp_seconds").unwrap();
        assert!((now - at).abs() < 60.0, "{at} vs {now}");
        assert_eq!(
            labelled(&text, "skiff_map_entries", &["map=\"SK_SVC_V1\""]),
            Some(12.0)
        );
        assert_eq!(
            labelled(&text, "skiff_map_capacity", &["map=\"SK_SVC_V1\""]),
            Some(65_536.0)
        );
        assert_eq!(
            labelled(&text, "skiff_map_entries", &["map=\"SK_BE_V1\""]),
            Some(5.0)
        );
        assert_eq!(
            labelled(&text, "skiff_map_capacity", &["map=\"SK_BE_V1\""]),
            Some(262_144.0)
        );
        assert_eq!(sample(&text, "skiff_conntrack_entries"), Some(42.0));
        assert_eq!(sample(&text, "skiff_watch_restarts_total"), Some(3.0));
        assert_eq!(
            labelled(
                &text,
                "skiff_external_ingress",
                &["interface=\"eth0\"", "hook=\"xdp\"", "mode=\"native\""]
            ),
            Some(1.0)
        );
        assert_eq!(
            labelled(
                &text,
                "skiff_external_ingress",
                &[
                    "interface=\"eth1\"",
                    "hook=\"tc-ext-ingress\"",
                    "mode=\"tcx\""
                ]
            ),
            Some(1.0)
        );
        assert_eq!(
            labelled(
                &text,
                "skiff_packets_total",
                &["reason=\"no_service\"", "verdict=\"pass\""]
            ),
            Some(100.0)
        );
        assert_eq!(
            labelled(
                &text,
                "skiff_packets_total",
                &["reason=\"nat_new_connection\"", "verdict=\"translate\""]
            ),
            Some(9.0)
        );
        assert_eq!(
            labelled(
                &text,
                "skiff_packets_total",
                &["reason=\"no_endpoints\"", "verdict=\"drop\""]
            ),
            Some(2.0)
        );
        assert!(text.contains("# TYPE skiff_packets counter\n"), "{text}");
        assert!(text.contains("# TYPE skiff_sync_duration_seconds histogram\n"));
        assert!(m.is_ready());
    }

    #[test]
    fn absolute_counters_are_set_not_added() {
        let m = Metrics::new();
        let mut packets = BTreeMap::new();
        packets.insert(Reason::NatReply, 10);
        m.set_packets(&packets);
        m.watch_restarts(2);
        packets.insert(Reason::NatReply, 15);
        m.set_packets(&packets);
        m.watch_restarts(5);
        let text = m.encode();
        assert_eq!(
            labelled(
                &text,
                "skiff_packets_total",
                &["reason=\"nat_reply\"", "verdict=\"translate\""]
            ),
            Some(15.0),
            "{text}"
        );
        assert_eq!(sample(&text, "skiff_watch_restarts_total"), Some(5.0));
        // Setting the map usage again replaces, too.
        m.set_map_usage("SK_CT_V1", 10, 100);
        m.set_map_usage("SK_CT_V1", 4, 100);
        let text = m.encode();
        assert_eq!(
            labelled(&text, "skiff_map_entries", &["map=\"SK_CT_V1\""]),
            Some(4.0)
        );
    }

    #[test]
    fn metrics_are_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Metrics>();
        let m = Arc::new(Metrics::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        m.observe_sync(Duration::from_micros(200), 1);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let text = m.encode();
        assert_eq!(sample(&text, "skiff_syncs_total"), Some(400.0));
        assert_eq!(sample(&text, "skiff_sync_changes_total"), Some(400.0));
    }
}

//! The Prometheus exposition of a stats snapshot (OpenMetrics text, encoded by the
//! `prometheus-client` crate). Names follow Prometheus conventions: `shardmq_`
//! prefix, counters end in `_total`, units in the name, labels for what a total
//! splits into (`shard`, `qos`, `reason`, `direction`).

use super::{heap_bytes, Gathered, Process};
use crate::shard::stats::{ShardStats, MESH_BATCH_BUCKETS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt::Error;
use std::sync::Arc;

/// One scrape: the shards' answers and the process-wide values.
#[derive(Debug)]
struct Scrape {
    shards: Vec<ShardStats>,
    answered: Vec<bool>,
    uptime: f64,
    version: &'static str,
    heap: u64,
    peak_connections: u64,
}

/// The exposition, ready to serve.
pub(crate) fn render(gathered: Gathered, process: &Arc<Process>) -> String {
    let scrape = Scrape {
        shards: gathered.stats.shards,
        answered: gathered.answered,
        uptime: process.started.elapsed().as_secs_f64(),
        version: process.version,
        heap: heap_bytes(),
        peak_connections: process.peak_connections(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// A value per shard, labelled `shard`.
fn per_shard<T: Copy + Into<f64>>(
    e: &mut DescriptorEncoder,
    shards: &[ShardStats],
    kind: MetricType,
    name: &str,
    help: &str,
    f: impl Fn(&ShardStats) -> T,
) -> Result<(), Error> {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for s in shards {
        let shard = s.shard.to_string();
        let labels = [("shard", shard.as_str())];
        let fam = m.encode_family(&labels)?;
        encode_value(fam, kind, f(s).into())?;
    }
    Ok(())
}

/// One value with labels.
fn labelled(
    e: &mut DescriptorEncoder,
    kind: MetricType,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, f64)],
) -> Result<(), Error> {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (v, x) in values {
        let labels = [(label, *v)];
        let fam = m.encode_family(&labels)?;
        encode_value(fam, kind, *x)?;
    }
    Ok(())
}

/// One value without labels.
fn single(
    e: &mut DescriptorEncoder,
    kind: MetricType,
    name: &str,
    help: &str,
    x: f64,
) -> Result<(), Error> {
    let m = e.encode_descriptor(name, help, None, kind)?;
    encode_value(m, kind, x)
}

fn encode_value(
    m: prometheus_client::encoding::MetricEncoder,
    kind: MetricType,
    x: f64,
) -> Result<(), Error> {
    match kind {
        MetricType::Counter => ConstCounter::new(x as u64).encode(m),
        // Whole numbers print as such.
        _ if x.fract() == 0.0 && x.abs() < 9.0e15 => ConstGauge::new(x as i64).encode(m),
        _ => ConstGauge::new(x).encode(m),
    }
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), Error> {
        use MetricType::{Counter, Gauge};
        let t = crate::BrokerStats {
            shards: self.shards.clone(),
        }
        .total();
        let shards = &self.shards;
        let e = &mut e;
        {
            let mut m =
                e.encode_descriptor("shardmq_build_info", "The running version.", None, Gauge)?;
            let labels = [("version", self.version)];
            let fam = m.encode_family(&labels)?;
            ConstGauge::new(1i64).encode(fam)?;
        }
        single(
            e,
            Gauge,
            "shardmq_uptime_seconds",
            "Seconds since the broker started.",
            self.uptime,
        )?;
        {
            let mut m = e.encode_descriptor(
                "shardmq_shard_up",
                "1 if the shard answered this scrape, 0 if it did not.",
                None,
                Gauge,
            )?;
            for (i, up) in self.answered.iter().enumerate() {
                let shard = i.to_string();
                let labels = [("shard", shard.as_str())];
                let fam = m.encode_family(&labels)?;
                ConstGauge::new(i64::from(*up)).encode(fam)?;
            }
        }
        per_shard(
            e,
            shards,
            Gauge,
            "shardmq_connections",
            "Clients connected, by shard.",
            |s| s.connections as f64,
        )?;
        per_shard(
            e,
            shards,
            Gauge,
            "shardmq_connections_parked",
            "Idle connections parked (no reader task until they send), by shard.",
            |s| s.connections_parked as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_parks",
            "Times an idle connection was parked.",
            t.parks as f64,
        )?;
        single(
            e,
            Gauge,
            "shardmq_connections_peak",
            "The most connections open at once since start.",
            self.peak_connections as f64,
        )?;
        per_shard(
            e,
            shards,
            Gauge,
            "shardmq_sessions",
            "Sessions, connected or persistent and offline, by shard.",
            |s| s.sessions as f64,
        )?;
        per_shard(
            e,
            shards,
            Gauge,
            "shardmq_subscriptions",
            "Subscriptions (filter, session), by shard.",
            |s| s.subscriptions as f64,
        )?;
        single(
            e,
            Gauge,
            "shardmq_retained_messages",
            "Retained messages stored.",
            t.retained as f64,
        )?;
        per_shard(
            e,
            shards,
            Gauge,
            "shardmq_queued_messages",
            "Messages waiting in session queues, by shard.",
            |s| s.queued as f64,
        )?;
        per_shard(
            e,
            shards,
            Gauge,
            "shardmq_queued_bytes",
            "Topic and payload bytes held by session queues and in-flight windows, by shard.",
            |s| s.queued_bytes as f64,
        )?;
        per_shard(
            e,
            shards,
            Gauge,
            "shardmq_inflight_messages",
            "Outgoing QoS 1/2 messages awaiting acknowledgement, by shard.",
            |s| s.inflight as f64,
        )?;
        single(
            e,
            Gauge,
            "shardmq_heap_bytes",
            "Bytes allocated and not freed (the allocator's view).",
            self.heap as f64,
        )?;
        per_shard(
            e,
            shards,
            Counter,
            "shardmq_connects",
            "CONNECTs accepted, by shard.",
            |s| s.connects as f64,
        )?;
        let disconnects: Vec<(&str, f64)> = t
            .disconnects_by_reason()
            .map(|(r, n)| (r, n as f64))
            .collect();
        labelled(
            e,
            Counter,
            "shardmq_disconnects",
            "Ended connections of connected clients, by reason.",
            "reason",
            &disconnects,
        )?;
        labelled(
            e,
            Counter,
            "shardmq_connects_refused",
            "Connections refused: bad credentials or not authorised (auth), or max_connections reached.",
            "reason",
            &[
                ("auth", t.connects_refused as f64),
                ("max_connections", t.refused_max_connections as f64),
            ],
        )?;
        let qos = |a: [u64; 3]| [("0", a[0] as f64), ("1", a[1] as f64), ("2", a[2] as f64)];
        labelled(
            e,
            Counter,
            "shardmq_messages_received",
            "PUBLISH packets received from clients, by QoS.",
            "qos",
            &qos(t.publishes_received_qos),
        )?;
        labelled(
            e,
            Counter,
            "shardmq_messages_sent",
            "PUBLISH packets sent to clients, by QoS (resends included).",
            "qos",
            &qos(t.publishes_sent_qos),
        )?;
        single(
            e,
            Counter,
            "shardmq_publish_bytes_received",
            "Payload bytes of PUBLISH packets received.",
            t.publish_bytes_received as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_publish_bytes_sent",
            "Payload bytes of PUBLISH packets sent.",
            t.publish_bytes_sent as f64,
        )?;
        per_shard(
            e,
            shards,
            Counter,
            "shardmq_bytes_received",
            "Bytes read from sockets, by shard.",
            |s| s.bytes_received as f64,
        )?;
        per_shard(
            e,
            shards,
            Counter,
            "shardmq_bytes_sent",
            "Bytes written to sockets, by shard.",
            |s| s.bytes_sent as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_packets_received",
            "MQTT packets received.",
            t.packets_received as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_packets_sent",
            "MQTT packets sent.",
            t.packets_sent as f64,
        )?;
        let drops: Vec<(&str, f64)> = t.drops().iter().map(|(r, n)| (*r, *n as f64)).collect();
        labelled(
            e,
            Counter,
            "shardmq_dropped_messages",
            "Messages dropped, by reason.",
            "reason",
            &drops,
        )?;
        single(
            e,
            Counter,
            "shardmq_retained_refused",
            "Retained messages delivered but not stored (a retained limit).",
            t.retained_refused as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_subscriptions_refused",
            "SUBSCRIBE filters answered 0x80.",
            t.subscriptions_refused as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_protocol_errors",
            "Connections closed for a malformed packet or a protocol violation.",
            t.protocol_errors as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_oversized_packets",
            "Connections closed for a packet over max_packet_size.",
            t.oversized_packets as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_log_bytes_written",
            "Bytes written to the persistence log (records and block padding).",
            t.log_bytes_written as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_log_commits",
            "Log commits: one write and one fdatasync each, for every record of a batch.",
            t.log_commits as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_log_compactions",
            "Times the log was rewritten as snapshots of the live state (every shard counts each).",
            t.log_compactions as f64,
        )?;
        single(
            e,
            Gauge,
            "shardmq_log_size_bytes",
            "Bytes in the current generation of the persistence log, all shards.",
            t.log_bytes as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_accepts_paced",
            "Times an accept waited for max_connect_rate (connections wait in the accept queue meanwhile).",
            t.accepts_paced as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_connect_timeouts",
            "Connections closed for no CONNECT within connect_timeout.",
            t.connect_timeouts as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_keepalive_timeouts",
            "Connections closed for silence past 1.5 x keep-alive.",
            t.keepalive_timeouts as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_transport_errors",
            "TLS handshakes and WebSocket upgrades that failed, and TLS or WebSocket errors.",
            t.transport_errors as f64,
        )?;
        labelled(
            e,
            Counter,
            "shardmq_cross_shard_messages",
            "Messages passed to another shard (out) and received from one (in).",
            "direction",
            &[("out", t.forwarded as f64), ("in", t.forwarded_in as f64)],
        )?;
        labelled(
            e,
            Counter,
            "shardmq_shared_subscription_messages",
            "Messages of shared-subscription groups: given to a member, passed to another shard, re-dispatched after a member left.",
            "event",
            &[
                ("delivered", t.shared_delivered as f64),
                ("forwarded", t.shared_forwarded as f64),
                ("redispatched", t.shared_redispatched as f64),
            ],
        )?;
        single(
            e,
            Gauge,
            "shardmq_shared_subscription_groups",
            "Shared-subscription groups with members.",
            t.shared_groups as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_wills_published",
            "Wills published.",
            t.wills_published as f64,
        )?;
        single(
            e,
            Counter,
            "shardmq_takeovers",
            "Sessions taken over by a new connection with the same client id.",
            t.takeovers as f64,
        )?;
        labelled(
            e,
            Counter,
            "shardmq_bridge_messages",
            "Messages bridges received from remotes (in), sent to remotes (out), and lost (dropped).",
            "direction",
            &[
                ("in", t.bridge_messages_received as f64),
                ("out", t.bridge_messages_sent as f64),
                ("dropped", t.bridge_messages_dropped as f64),
            ],
        )?;
        single(
            e,
            Counter,
            "shardmq_sessions_expired",
            "Offline persistent sessions ended by persistent_client_expiration.",
            t.sessions_expired as f64,
        )?;
        {
            let mut m = e.encode_descriptor(
                "shardmq_delivery_batch_size",
                "Messages per cross-shard batch a shard received and delivered.",
                None,
                MetricType::Histogram,
            )?;
            let buckets: Vec<(f64, u64)> = (0..MESH_BATCH_BUCKETS)
                .map(|i| {
                    let le = if i + 1 == MESH_BATCH_BUCKETS {
                        f64::MAX
                    } else {
                        (1u64 << i) as f64
                    };
                    (le, t.mesh_batches[i])
                })
                .collect();
            let count = t.mesh_batches.iter().sum();
            m.encode_histogram::<NoLabelSet>(t.mesh_batch_messages as f64, count, &buckets, None)?;
        }
        Ok(())
    }
}

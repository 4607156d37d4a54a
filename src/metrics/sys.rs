//! The retained `$SYS/broker/...` topics, under Mosquitto's names so its dashboards
//! and `mosquitto_sub -t '$SYS/#'` work, plus shardmq's own under
//! `$SYS/broker/shardmq/`. [`SysTree`] turns snapshots into the topics whose value
//! changed (sans-IO); [`run`] is the thread that feeds it and publishes.

use super::{heap_bytes, Gatherer, Process};
use crate::message::Message;
use crate::protocol::QoS;
use crate::{BrokerStats, Config};
use ahash::AHashMap;
use bytes::Bytes;
use bytestring::ByteString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Moving averages of a per-minute rate over 1, 5 and 15 minutes, as Mosquitto
/// computes its `load` topics: at each update the rate since the last update is
/// folded in with weight `1 - exp(-elapsed / window)`.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    avg: [f64; 3],
}

const WINDOWS: [(f64, &str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

impl Load {
    fn update(&mut self, delta: u64, elapsed: f64) {
        if elapsed <= 0.0 {
            return;
        }
        let per_minute = delta as f64 * 60.0 / elapsed;
        for (avg, (window, _)) in self.avg.iter_mut().zip(WINDOWS) {
            let keep = (-elapsed / window).exp();
            *avg = *avg * keep + per_minute * (1.0 - keep);
        }
    }
}

/// The loads Mosquitto publishes: `$SYS/broker/load/<name>/<window>`.
const LOADS: [&str; 8] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "publish/dropped",
    "bytes/received",
    "bytes/sent",
    "connections",
];

/// The totals the loads are rates of, in the order of [`LOADS`].
fn load_totals(s: &crate::ShardStats) -> [u64; 8] {
    [
        s.packets_received,
        s.packets_sent,
        s.publishes_received_qos.iter().sum(),
        s.publishes_sent_qos.iter().sum(),
        s.drops().iter().map(|d| d.1).sum(),
        s.bytes_received,
        s.bytes_sent,
        s.connects,
    ]
}

/// What was last published, and the state the derived values need.
#[derive(Default)]
pub(crate) struct SysTree {
    published: AHashMap<String, String>,
    loads: [Load; 8],
    last: Option<(Instant, [u64; 8])>,
    max_connected: u64,
}

impl SysTree {
    /// Every topic and value for this snapshot, in a stable order.
    pub fn values(
        &mut self,
        stats: &BrokerStats,
        process: &Process,
        now: Instant,
    ) -> Vec<(String, String)> {
        let t = stats.total();
        let totals = load_totals(&t);
        if let Some((at, prev)) = self.last {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            for i in 0..LOADS.len() {
                self.loads[i].update(totals[i].saturating_sub(prev[i]), elapsed);
            }
        }
        self.last = Some((now, totals));
        let connected = t.connections as u64;
        self.max_connected = self
            .max_connected
            .max(connected)
            .max(process.peak_connections());
        let mut v: Vec<(String, String)> = Vec::with_capacity(96);
        let mut put = |topic: &str, value: String| v.push((format!("$SYS/broker/{topic}"), value));
        put("version", format!("shardmq version {}", process.version));
        put(
            "uptime",
            format!("{} seconds", now.duration_since(process.started).as_secs()),
        );
        put("clients/connected", connected.to_string());
        put("clients/total", t.sessions.to_string());
        put(
            "clients/disconnected",
            t.sessions.saturating_sub(t.connections).to_string(),
        );
        put("clients/maximum", self.max_connected.to_string());
        put("clients/expired", t.sessions_expired.to_string());
        put("messages/received", t.packets_received.to_string());
        put("messages/sent", t.packets_sent.to_string());
        let stored = t.retained + t.queued + t.inflight;
        put("messages/stored", stored.to_string());
        put("store/messages/count", stored.to_string());
        put("store/messages/bytes", t.queued_bytes.to_string());
        put("publish/messages/received", totals[2].to_string());
        put("publish/messages/sent", totals[3].to_string());
        put("publish/messages/dropped", totals[4].to_string());
        put(
            "publish/bytes/received",
            t.publish_bytes_received.to_string(),
        );
        put("publish/bytes/sent", t.publish_bytes_sent.to_string());
        put("bytes/received", t.bytes_received.to_string());
        put("bytes/sent", t.bytes_sent.to_string());
        put("subscriptions/count", t.subscriptions.to_string());
        put("retained messages/count", t.retained.to_string());
        put("heap/current", heap_bytes().to_string());
        for (name, load) in LOADS.iter().zip(&self.loads) {
            for (avg, (_, window)) in load.avg.iter().zip(WINDOWS) {
                put(&format!("load/{name}/{window}"), format!("{avg:.2}"));
            }
        }
        for (reason, n) in t.drops() {
            put(&format!("shardmq/dropped/{reason}"), n.to_string());
        }
        for (reason, n) in t.disconnects_by_reason() {
            put(&format!("shardmq/disconnects/{reason}"), n.to_string());
        }
        put("shardmq/connects/refused", t.connects_refused.to_string());
        put(
            "shardmq/connects/refused_max",
            t.refused_max_connections.to_string(),
        );
        put("shardmq/protocol_errors", t.protocol_errors.to_string());
        put("shardmq/transport_errors", t.transport_errors.to_string());
        put("shardmq/clients/parked", t.connections_parked.to_string());
        put("shardmq/shards", stats.shards.len().to_string());
        for s in &stats.shards {
            let i = s.shard;
            put(
                &format!("shardmq/shard/{i}/connections"),
                s.connections.to_string(),
            );
            put(
                &format!("shardmq/shard/{i}/messages/received"),
                s.publishes_received_qos.iter().sum::<u64>().to_string(),
            );
            put(
                &format!("shardmq/shard/{i}/messages/sent"),
                s.publishes_sent_qos.iter().sum::<u64>().to_string(),
            );
        }
        v
    }

    /// The topics whose value differs from what was last published (all, the first
    /// time), recorded as published.
    pub fn changed(
        &mut self,
        stats: &BrokerStats,
        process: &Process,
        now: Instant,
    ) -> Vec<(String, String)> {
        let mut out = self.values(stats, process, now);
        out.retain(|(topic, value)| self.published.get(topic) != Some(value));
        for (topic, value) in &out {
            self.published.insert(topic.clone(), value.clone());
        }
        out
    }
}

/// The `$SYS` thread: every `sys_interval` seconds (read anew each time, so a reload
/// applies), gathers the shards' stats and publishes what changed, retained, through
/// shard 0. Paused while `sys_interval` is 0.
pub(crate) fn run(
    gatherer: Gatherer,
    config: Arc<Mutex<Arc<Config>>>,
    process: Arc<Process>,
    stop: Arc<AtomicBool>,
) {
    let mut tree = SysTree::default();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let interval = config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sys_interval;
        let now = Instant::now();
        if interval == 0 || now < next {
            let wait = if interval == 0 {
                Duration::from_secs(1)
            } else {
                (next - now).min(Duration::from_secs(1))
            };
            std::thread::park_timeout(wait);
            continue;
        }
        next = now + Duration::from_secs(interval);
        let gathered = gatherer.gather();
        let changed = tree.changed(&gathered.stats, &process, Instant::now());
        if changed.is_empty() {
            continue;
        }
        let msgs = changed
            .into_iter()
            .map(|(topic, value)| Message {
                topic: ByteString::from(topic),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                stamp: Default::default(),
                props: None,
            })
            .collect();
        gatherer.publish(msgs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShardStats;

    fn process() -> Process {
        Process {
            started: Instant::now(),
            version: "1.2.3",
            shared: None,
        }
    }

    fn stats(received: u64, connections: usize) -> BrokerStats {
        let s = ShardStats {
            connections,
            sessions: connections + 2,
            publishes_received_qos: [received, 0, 0],
            dropped_queue_full: 3,
            ..Default::default()
        };
        BrokerStats { shards: vec![s] }
    }

    fn get<'a>(v: &'a [(String, String)], topic: &str) -> Option<&'a str> {
        v.iter()
            .find(|(t, _)| t == topic)
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn first_update_publishes_everything_then_only_changes() {
        let p = process();
        let mut tree = SysTree::default();
        let t0 = Instant::now();
        let first = tree.changed(&stats(100, 5), &p, t0);
        assert_eq!(
            get(&first, "$SYS/broker/version"),
            Some("shardmq version 1.2.3")
        );
        assert_eq!(
            get(&first, "$SYS/broker/publish/messages/received"),
            Some("100")
        );
        assert_eq!(get(&first, "$SYS/broker/clients/connected"), Some("5"));
        assert_eq!(get(&first, "$SYS/broker/clients/disconnected"), Some("2"));
        assert_eq!(
            get(&first, "$SYS/broker/shardmq/dropped/queue_full"),
            Some("3")
        );
        let mut again = tree.changed(&stats(100, 5), &p, t0);
        // The allocator's count moves with the test harness's own allocations.
        again.retain(|(topic, _)| topic != "$SYS/broker/heap/current");
        assert!(again.is_empty(), "{again:?}");
        let later = tree.changed(&stats(160, 4), &p, t0 + Duration::from_secs(60));
        assert_eq!(
            get(&later, "$SYS/broker/publish/messages/received"),
            Some("160")
        );
        assert_eq!(get(&later, "$SYS/broker/clients/connected"), Some("4"));
        assert_eq!(get(&later, "$SYS/broker/clients/maximum"), None, "still 5");
        assert_eq!(get(&later, "$SYS/broker/version"), None);
    }

    #[test]
    fn loads_converge_on_the_per_minute_rate() {
        let p = process();
        let mut tree = SysTree::default();
        let t0 = Instant::now();
        let mut last = Vec::new();
        // 600 publishes every 10 s: 3600 a minute.
        for i in 0..200u64 {
            last = tree.values(&stats(i * 600, 1), &p, t0 + Duration::from_secs(i * 10));
        }
        let one: f64 = get(&last, "$SYS/broker/load/publish/received/1min")
            .unwrap()
            .parse()
            .unwrap();
        let fifteen: f64 = get(&last, "$SYS/broker/load/publish/received/15min")
            .unwrap()
            .parse()
            .unwrap();
        assert!((one - 3600.0).abs() < 1.0, "{one}");
        assert!(fifteen > 3000.0 && fifteen <= 3600.0, "{fifteen}");
    }
}

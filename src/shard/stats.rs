//! Counters and gauges a shard keeps about itself, read through the control plane
//! (`Broker::stats`). Plain integers owned by the shard: nothing shared, no atomics.

pub use crate::link::DisconnectReason;

/// One shard's counters (since start) and gauges (now).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: usize,
    // gauges
    /// Connections attached to a session on this shard.
    pub connections: usize,
    /// Of those, connections parked: idle, without a reader task (`net::park`).
    pub connections_parked: usize,
    pub sessions: usize,
    /// (filter, session) pairs in this shard's subscription trie.
    pub subscriptions: usize,
    /// (filter, shard) pairs in this shard's replica of other shards' interest.
    pub interest_entries: usize,
    /// Shared-subscription groups with members on any shard (as this shard knows).
    pub shared_groups: usize,
    pub retained: usize,
    pub pending_interest: usize,
    pub inflight: usize,
    pub queued: usize,
    pub queued_bytes: usize,
    // counters
    pub connects: u64,
    pub takeovers: u64,
    pub handoffs_out: u64,
    pub handoffs_in: u64,
    pub publishes_received: u64,
    /// Publishes the client's rights refused (acknowledged, not routed), wills included.
    pub publishes_refused: u64,
    /// Deliveries the subscriber's rights refused (topics it may not read).
    pub deliveries_refused: u64,
    pub forwarded: u64,
    pub forwarded_in: u64,
    pub delivered: u64,
    pub queued_total: u64,
    pub dropped_queue_full: u64,
    pub dropped_offline_qos0: u64,
    /// 5.0 messages whose Message Expiry Interval ran out before they went out.
    pub dropped_expired: u64,
    /// Messages larger than a 5.0 subscriber's Maximum Packet Size, not sent to it.
    pub dropped_too_large: u64,
    /// Queued QoS 0 messages evicted from a full queue to make room for a QoS 1/2
    /// one (they had been counted in `queued_total`).
    pub dropped_evicted_qos0: u64,
    pub retained_refused: u64,
    pub subscriptions_refused: u64,
    pub wills_published: u64,
    pub protocol_errors: u64,
    pub connect_timeouts: u64,
    pub keepalive_timeouts: u64,
    pub oversized_packets: u64,
    pub refused_max_connections: u64,
    /// CONNECTs the authenticator refused (bad credentials, anonymous not allowed).
    pub connects_refused: u64,
    /// TLS handshakes and WebSocket upgrades that failed or timed out, and TLS or
    /// WebSocket errors on established connections.
    pub transport_errors: u64,
    /// Client publishes to a `$SYS/...` topic: acknowledged, dropped (only the broker
    /// publishes there).
    pub publishes_to_sys: u64,
    /// Times an accept waited for `max_connect_rate` (connections meanwhile wait
    /// in the kernel's accept queue).
    pub accepts_paced: u64,
    /// Offline persistent sessions removed after `persistent_client_expiration`.
    pub sessions_expired: u64,
    /// Times an idle connection was parked (`net::park`).
    pub parks: u64,
    /// Bridges: messages received from remotes and published here, messages sent
    /// to remotes, and messages a bridge lost (QoS 0 while its remote was down, its
    /// queue full, or an echo of its own message from a remote that refused the
    /// bridge bit).
    pub bridge_messages_received: u64,
    pub bridge_messages_sent: u64,
    pub bridge_messages_dropped: u64,
    /// Persistence: bytes written to the log (records and padding), log commits
    /// (each one write and one fdatasync), and compactions.
    pub log_bytes_written: u64,
    pub log_commits: u64,
    pub log_compactions: u64,
    /// Persistence (gauges): bytes in the current generation of this shard's log,
    /// and the size of the snapshot it started with (its live state then).
    pub log_bytes: u64,
    pub log_snapshot_bytes: u64,
    /// Packets decoded from clients, CONNECT included.
    pub packets_received: u64,
    /// Packets written to clients, CONNACK included.
    pub packets_sent: u64,
    /// PUBLISH packets accepted from clients, by QoS (wills not included).
    pub publishes_received_qos: [u64; 3],
    /// PUBLISH packets written to clients, by QoS (resends included).
    pub publishes_sent_qos: [u64; 3],
    /// Payload bytes of the PUBLISH packets counted in `publishes_received_qos`.
    pub publish_bytes_received: u64,
    /// Payload bytes of the PUBLISH packets counted in `publishes_sent_qos`.
    pub publish_bytes_sent: u64,
    /// Bytes read from this shard's sockets (TLS and WebSocket framing included).
    pub bytes_received: u64,
    /// Bytes written to this shard's sockets.
    pub bytes_sent: u64,
    /// Ended connections of attached clients, by reason ([`DisconnectReason`]).
    pub disconnects: [u64; DisconnectReason::COUNT],
    /// Cross-shard batches this shard received, by size: bucket `i` counts batches
    /// of at most `2^i` messages (the last bucket: any larger).
    pub mesh_batches: [u64; MESH_BATCH_BUCKETS],
    /// Messages in all the batches counted in `mesh_batches`.
    pub mesh_batch_messages: u64,
    /// Messages given to a member of a shared-subscription group on this shard
    /// (re-dispatched ones included).
    pub shared_delivered: u64,
    /// Messages for a shared group passed to another shard: chosen there, or
    /// handed on because no member here was connected.
    pub shared_forwarded: u64,
    /// Messages for a shared group received from another shard.
    pub shared_forwarded_in: u64,
    /// Messages a member left (disconnected, unsubscribed or ended) without having
    /// received them, given again to another member of its group.
    pub shared_redispatched: u64,
    /// Messages for a shared group that found no member to take them (every
    /// member offline and clean, or a QoS 0 message with none connected).
    pub shared_dropped: u64,
}

/// Buckets of [`ShardStats::mesh_batches`]: 1, 2, 4, … 1024, and larger.
pub const MESH_BATCH_BUCKETS: usize = 12;

/// The bucket of a cross-shard batch of `n` messages.
pub fn mesh_batch_bucket(n: usize) -> usize {
    let b = n.max(1).next_power_of_two().trailing_zeros() as usize;
    b.min(MESH_BATCH_BUCKETS - 1)
}

impl ShardStats {
    /// This shard's dropped messages, by reason (see [`BrokerStats::drops`]).
    pub fn drops(&self) -> [(&'static str, u64); 9] {
        [
            ("queue_full", self.dropped_queue_full),
            ("offline_qos0", self.dropped_offline_qos0),
            ("evicted_qos0", self.dropped_evicted_qos0),
            ("publish_denied", self.publishes_refused),
            ("delivery_denied", self.deliveries_refused),
            ("sys_topic", self.publishes_to_sys),
            ("shared_no_member", self.shared_dropped),
            ("expired", self.dropped_expired),
            ("too_large", self.dropped_too_large),
        ]
    }

    /// Ended connections of attached clients, with each reason's name.
    pub fn disconnects_by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DisconnectReason::ALL
            .iter()
            .map(|r| (r.name(), self.disconnects[*r as usize]))
    }
}

/// Every shard's stats, in shard order.
#[derive(Debug, Clone, Default)]
pub struct BrokerStats {
    pub shards: Vec<ShardStats>,
}

impl BrokerStats {
    /// Messages dropped, by reason, summed over every shard: the names are those of
    /// the logs, `$SYS/broker/shardmq/dropped/...` and the metrics' `reason` label.
    pub fn drops(&self) -> [(&'static str, u64); 9] {
        self.total().drops()
    }

    /// Sum over all shards (the `shard` field is meaningless in the result).
    pub fn total(&self) -> ShardStats {
        let mut t = ShardStats::default();
        for s in &self.shards {
            macro_rules! add {
                ($($f:ident),*) => { $( t.$f += s.$f; )* };
            }
            add!(
                connections,
                connections_parked,
                sessions,
                subscriptions,
                interest_entries,
                pending_interest,
                inflight,
                queued,
                queued_bytes,
                connects,
                takeovers,
                handoffs_out,
                handoffs_in,
                publishes_received,
                publishes_refused,
                deliveries_refused,
                forwarded,
                forwarded_in,
                delivered,
                queued_total,
                dropped_queue_full,
                dropped_offline_qos0,
                dropped_expired,
                dropped_too_large,
                dropped_evicted_qos0,
                retained_refused,
                subscriptions_refused,
                wills_published,
                protocol_errors,
                connect_timeouts,
                keepalive_timeouts,
                oversized_packets,
                refused_max_connections,
                connects_refused,
                transport_errors
            );
            add!(
                publishes_to_sys,
                accepts_paced,
                sessions_expired,
                parks,
                bridge_messages_received,
                bridge_messages_sent,
                bridge_messages_dropped,
                log_bytes_written,
                log_commits,
                log_compactions,
                log_bytes,
                log_snapshot_bytes,
                packets_received,
                packets_sent,
                publish_bytes_received,
                publish_bytes_sent,
                bytes_received,
                bytes_sent,
                mesh_batch_messages,
                shared_delivered,
                shared_forwarded,
                shared_forwarded_in,
                shared_redispatched,
                shared_dropped
            );
            for q in 0..3 {
                t.publishes_received_qos[q] += s.publishes_received_qos[q];
                t.publishes_sent_qos[q] += s.publishes_sent_qos[q];
            }
            for (a, b) in t.disconnects.iter_mut().zip(&s.disconnects) {
                *a += b;
            }
            for (a, b) in t.mesh_batches.iter_mut().zip(&s.mesh_batches) {
                *a += b;
            }
            // Every shard holds a full replica of the retained store, and knows
            // every group.
            t.retained = t.retained.max(s.retained);
            t.shared_groups = t.shared_groups.max(s.shared_groups);
        }
        t
    }
}

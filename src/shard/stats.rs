//! Counters and gauges a shard keeps about itself, read through the control plane
//! (`Broker::stats`). Plain integers owned by the shard: nothing shared, no atomics.

/// One shard's counters (since start) and gauges (now).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: usize,
    // gauges
    /// Connections attached to a session on this shard.
    pub connections: usize,
    pub sessions: usize,
    /// (filter, session) pairs in this shard's subscription trie.
    pub subscriptions: usize,
    /// (filter, shard) pairs in this shard's replica of other shards' interest.
    pub interest_entries: usize,
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
}

/// Every shard's stats, in shard order.
#[derive(Debug, Clone, Default)]
pub struct BrokerStats {
    pub shards: Vec<ShardStats>,
}

impl BrokerStats {
    /// Sum over all shards (the `shard` field is meaningless in the result).
    pub fn total(&self) -> ShardStats {
        let mut t = ShardStats::default();
        for s in &self.shards {
            macro_rules! add {
                ($($f:ident),*) => { $( t.$f += s.$f; )* };
            }
            add!(
                connections,
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
            // Every shard holds a full replica of the retained store.
            t.retained = t.retained.max(s.retained);
        }
        t
    }
}

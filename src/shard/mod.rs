//! The shard: one executor's whole share of the broker.
//!
//! A shard owns its sessions (every client id whose home it is), a precise trie of
//! their subscriptions (`subs`), a coarse replica of which other shards have
//! subscribers for which filters (`interest`), a replica of the retained store, and
//! one outbox per other shard. It knows nothing of sockets or byte layouts: the
//! connection layer (`crate::net`) hands it decoded packets and gives it a [`Conn`]
//! to write packets to.
//!
//! The publish path, in order: a client's PUBLISH goes through its `Session`
//! (QoS handshake, acks); once its reader has handled a whole read,
//! [`Shard::route_pending`] routes what it published: [`Shard::publish_from_client`]
//! updates the retained store, delivers to local subscribers and appends the message
//! to the outbox of every shard whose interest matches; that shard delivers it to its
//! own subscribers. Consecutive QoS 0 messages on one topic travel as a run, matched
//! and written to each subscriber once.

mod bridge;
mod clients;
mod droplog;
pub mod durable;
pub mod mesh;
pub mod retained;
mod rights;
mod shared;
pub mod stats;

use crate::config::Config;
use crate::config::SharedStrategy;
use crate::link::{Conn, Listener, Writes};
use crate::message::Message;
use crate::protocol::{
    encode_publish, encode_publish_v5, topic, ConnAck, ConnAckProps, ConnAckV5, Connect,
    ConnectReturnCode, Packet, Protocol, PublishV5Props, QoS, ReasonCode, RetainHandling, SubAck,
    SubAckCode, SubAckV5, Subscribe, UnsubAckV5, Unsubscribe,
};
use crate::session::{Delivery, DropReason, Limits, Output, PeerLimits, Session, SessionError};
use crate::store;
use crate::topic::{share, TopicTrie};
use ahash::AHashMap;
use bytestring::ByteString;
use mesh::{Handoff, MeshMsg, Outbox};
use retained::{LocalUpdate, Retained};
use rights::{may_read, may_write, ClientAuth};
use slab::Slab;
use stats::{DisconnectReason, ShardStats};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::num::{NonZeroU16, NonZeroU32};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

/// The shard that owns a client id: stable across runs and processes (fixed hash
/// keys), so every connection of one client id meets the same session.
pub fn home_shard(client_id: &str, shards: usize) -> usize {
    const SEEDS: [u64; 4] = [
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    ];
    let hasher = ahash::RandomState::with_seeds(SEEDS[0], SEEDS[1], SEEDS[2], SEEDS[3]);
    (hasher.hash_one(client_id) % shards.max(1) as u64) as usize
}

/// Publishes waiting in one outbox above which this shard stops reading from its
/// clients' sockets until the outbox drains (TCP then pushes back on publishers).
const OUTBOX_HIGH_WATER: usize = 4096;

/// Consecutive QoS 0 messages on one topic are delivered as one run, up to this many
/// messages and bytes: a run goes to a subscriber's output whole, so these bound how
/// far one run takes a connection past its write high-water mark.
const MAX_RUN: usize = 64;
const MAX_RUN_BYTES: usize = 32 * 1024;

/// What the connection layer should do after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Close the connection; `graceful` after DISCONNECT (no will).
    Close {
        graceful: bool,
    },
}

/// A client's session and, while it is connected, its connection.
struct SessionEntry {
    session: Session,
    conn: Option<Rc<Conn>>,
    /// Publish sequence number of the last match that reached this session, and its
    /// slot in the match buffer: dedups overlapping subscriptions without hashing.
    match_seq: u64,
    match_slot: u32,
    /// A SUBSCRIBE is waiting for other shards: deliveries queue in the session
    /// (behind the retained messages taken when the filters were inserted) until
    /// SUBACK has been written, so nothing arrives twice or out of order.
    held: bool,
    /// The client's username and rights, when it has either.
    auth: Option<Box<ClientAuth>>,
    /// The listener its client last connected through (whose files decide its rights).
    listener: u16,
    /// While no client is connected: when the last one left, in seconds since the
    /// shard started, plus one (0 while connected), for `persistent_client_expiration`.
    offline_since: u32,
    /// The Session Expiry Interval of a 5.0 client's session, in seconds (0: it ends
    /// with the connection, `u32::MAX`: never); `None` for a 3.1/3.1.1 client's, which
    /// `persistent_client_expiration` bounds.
    expiry: Option<u32>,
    /// A 5.0 will waiting for its Will Delay Interval: the message and when it is due
    /// (as `offline_since` counts). Dropped if a client resumes the session first.
    delayed_will: Option<Box<(Message, u32)>>,
    /// The session's 5.0 subscriptions with No Local: its own messages do not come
    /// back through them. `None` while there are none.
    #[allow(clippy::box_collection)]
    no_local_filters: Option<Box<Vec<ByteString>>>,
    /// The session's 5.0 subscriptions with Retain As Published: live messages
    /// through them keep the RETAIN flag they were published with. `None` while
    /// there are none.
    #[allow(clippy::box_collection)]
    rap_filters: Option<Box<Vec<ByteString>>>,
    /// With persistence on: its positions in the streams may have moved since the
    /// last checkpoint.
    pos_dirty: bool,
    /// What it publishes never comes back to it (a remote broker's bridge, or one
    /// of this broker's own bridges).
    no_local: bool,
    /// The session of one of this broker's bridges: no client may take it over,
    /// and it stays while its remote is down.
    bridge: bool,
    /// The second (as `offline_since` counts, 0: none) it is filed under in
    /// [`Shard::due`].
    due_at: u32,
}

impl SessionEntry {
    /// Live messages published with RETAIN keep the flag for this session (through
    /// [`Shard::retained_to_keepers`]): a bridge's, a remote bridge's (as Mosquitto
    /// treats them), and one with a Retain As Published subscription.
    fn keeps_retain(&self) -> bool {
        self.bridge || self.no_local || self.rap_filters.is_some()
    }

    /// The 5.0 options of its subscription `filter`, as the log keeps them.
    fn sub_opts(&self, filter: &str) -> store::records::SubOpts {
        let has = |l: &Option<Box<Vec<ByteString>>>| {
            l.as_deref().is_some_and(|l| l.iter().any(|f| f == filter))
        };
        store::records::SubOpts {
            no_local: has(&self.no_local_filters),
            retain_as_published: has(&self.rap_filters),
            id: self.session.subscription_id(filter).map_or(0, |i| i.get()),
        }
    }

    /// The second (as `offline_since` counts: since the shard started, plus one) from
    /// which this offline session has expired: more than its 5.0 Session Expiry
    /// Interval, else `expiration` (the configured `persistent_client_expiration`),
    /// after its client left. `None`: never.
    fn expiry_due(&self, expiration: u64) -> Option<u32> {
        let limit = match self.expiry {
            Some(u32::MAX) => 0,
            Some(secs) => u64::from(secs).max(1),
            None => expiration,
        };
        (limit > 0 && self.offline_since > 0)
            .then(|| (u64::from(self.offline_since) + limit + 1).min(u64::from(u32::MAX)) as u32)
    }

    /// A session with no connection attached yet, through listener `listener`.
    fn offline(session: Session, listener: u16) -> SessionEntry {
        SessionEntry {
            session,
            conn: None,
            match_seq: 0,
            match_slot: 0,
            held: false,
            auth: None,
            listener,
            offline_since: 0,
            expiry: None,
            delayed_will: None,
            no_local_filters: None,
            rap_filters: None,
            pos_dirty: false,
            no_local: false,
            bridge: false,
            due_at: 0,
        }
    }
}

/// Waits of one SUBSCRIBE for other shards to confirm new interest.
pub struct SubscribeWait {
    outstanding: Cell<usize>,
    waker: Cell<Option<Waker>>,
}

impl SubscribeWait {
    /// True once every shard has confirmed.
    pub fn done(&self) -> bool {
        self.outstanding.get() == 0
    }

    pub fn register(&self, waker: &Waker) {
        self.waker.set(Some(waker.clone()));
    }

    fn complete_one(&self) {
        let left = self.outstanding.get().saturating_sub(1);
        self.outstanding.set(left);
        if left == 0 {
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }
}

/// An `InterestAdd` broadcast awaiting acks from every other shard.
struct PendingInterest {
    remaining: usize,
    /// Per shard: has it confirmed?
    confirmed: Vec<bool>,
    filters: Vec<ByteString>,
    waiters: Vec<Rc<SubscribeWait>>,
    /// The sessions (key, connection id) held until these filters are confirmed.
    held: Vec<(usize, u64)>,
}

/// The first half of a SUBSCRIBE: codes to send, and what to wait for first.
pub struct SubscribeStart {
    pub codes: Vec<SubAckCode>,
    /// The same outcomes as 5.0 reason codes (a refusal says why), for a 5.0 client.
    pub reasons: Vec<ReasonCode>,
    pub wait: Option<Rc<SubscribeWait>>,
}

/// One shard's state. Lives in an `Rc<RefCell<_>>` on its executor; never shared
/// with another thread.
pub struct Shard {
    pub id: usize,
    pub shards: usize,
    pub cfg: Arc<Config>,
    /// Every listener's authenticator and TLS configuration, by listener index;
    /// replaced whole on reload.
    listeners: Arc<[Listener]>,
    limits: Limits,
    sessions: Slab<SessionEntry>,
    /// Sessions by the second (since the shard started, plus one) at which something
    /// about them may fall due: a connection's keep-alive deadline, an offline
    /// session's expiry, a delayed will. One entry per session at most; the sweep
    /// looks only at those whose second has come, so an idle fleet costs it
    /// nothing (it used to look at every session four times a second).
    due: BTreeSet<(u32, u32)>,
    by_client: clients::Clients,
    subs: TopicTrie<u32, QoS>,
    interest: TopicTrie<u16, ()>,
    /// Shared-subscription groups with members anywhere, and this shard's members.
    shared: shared::Shared,
    /// Group ids matched by the message being routed (reused buffer).
    shared_matched: Vec<u32>,
    /// With `hash_client`: the hash of the client whose messages are being routed.
    publisher_hash: u64,
    retained: Retained,
    outboxes: Rc<[Outbox]>,
    backpressure: Rc<Backpressure>,
    writes: Rc<Writes>,
    pending_interest: AHashMap<u64, PendingInterest>,
    pending_filters: AHashMap<ByteString, u64>,
    next_token: u64,
    next_conn_id: u64,
    next_generated_id: u64,
    out: Output,
    matched: Vec<(u32, QoS)>,
    match_seq: u64,
    dests: Vec<bool>,
    /// Messages accepted from the client being read, routed by [`Shard::route_pending`]
    /// before its reader waits again.
    routing: Vec<Message>,
    /// A run of messages being gathered for [`Shard::deliver_local`].
    run: Run,
    pub stats: ShardStats,
    pub stopping: bool,
    /// When the shard started (offline sessions' ages count from it).
    started: Instant,
    drop_log: droplog::DropLog,
    /// The log, with persistence on.
    durable: Option<Box<durable::Durable>>,
    /// Log compaction in progress: readers read nothing from clients.
    pub paused: bool,
    /// Compaction barriers received from other shards.
    pub barriers: usize,
    /// Wills of connections lost during a compaction, published after it.
    paused_wills: Vec<Message>,
    /// The session whose publishes are being routed, when it must not get them
    /// back (see `SessionEntry::no_local`).
    no_local: Option<u32>,
    /// The sessions here that get live retained messages with the RETAIN flag
    /// (`SessionEntry::keeps_retain`; usually none).
    retain_keys: Vec<u32>,
    /// The next message delivered here is a retained one the bridges' sessions have
    /// already had with its retain flag: they do not get it again.
    skip_bridges: bool,
    /// Retained messages from other shards the bridges here got with their retain
    /// flag, whose forwarded copy (in the same batch) they must not get again.
    bridge_skip: Vec<Message>,
}

/// Readers parked because an outbox is over its high-water mark.
#[derive(Default)]
pub struct Backpressure {
    waiters: std::cell::RefCell<Vec<Waker>>,
}

impl Backpressure {
    pub fn park(&self, waker: &Waker) {
        self.waiters.borrow_mut().push(waker.clone());
    }

    pub fn release(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

impl Shard {
    pub(crate) fn new(
        id: usize,
        shards: usize,
        cfg: Arc<Config>,
        listeners: Arc<[Listener]>,
        outboxes: Rc<[Outbox]>,
        backpressure: Rc<Backpressure>,
    ) -> Shard {
        let limits = Limits {
            max_inflight: cfg.max_inflight,
            max_queued_messages: cfg.max_queued_messages,
            max_queued_bytes: cfg.max_queued_bytes,
        };
        let limits_high_water = cfg.write_buffer_high_water;
        Shard {
            id,
            shards,
            retained: Retained::new(
                id as u16,
                cfg.max_retained_messages,
                cfg.max_retained_payload,
            ),
            cfg,
            listeners,
            limits,
            sessions: Slab::new(),
            due: BTreeSet::new(),
            by_client: clients::Clients::default(),
            subs: TopicTrie::new(),
            interest: TopicTrie::new(),
            shared: shared::Shared::default(),
            shared_matched: Vec::new(),
            publisher_hash: 0,
            writes: Writes::new(limits_high_water),
            outboxes,
            backpressure,
            pending_interest: AHashMap::new(),
            pending_filters: AHashMap::new(),
            next_token: 1,
            next_conn_id: 1,
            next_generated_id: 0,
            out: Output::default(),
            matched: Vec::new(),
            match_seq: 0,
            dests: vec![false; shards],
            routing: Vec::new(),
            run: Run::default(),
            stats: ShardStats::default(),
            stopping: false,
            started: Instant::now(),
            drop_log: droplog::DropLog::default(),
            durable: None,
            paused: false,
            barriers: 0,
            paused_wills: Vec::new(),
            no_local: None,
            retain_keys: Vec::new(),
            skip_bridges: false,
            bridge_skip: Vec::new(),
        }
    }

    /// Turns persistence on (at start, before any client connects).
    pub fn set_durable(&mut self, d: durable::Durable) {
        self.durable = Some(Box::new(d));
    }

    /// A fresh connection id, unique on this shard.
    pub fn next_conn_id(&mut self) -> u64 {
        self.next_conn_id += 1;
        self.next_conn_id
    }

    /// The end of a log compaction: readers go on, and the wills held meanwhile
    /// are published.
    pub fn unpause(&mut self) {
        self.paused = false;
        for will in std::mem::take(&mut self.paused_wills) {
            self.publish_will(will);
        }
        self.backpressure.release();
    }

    /// Sends a compaction barrier to every other shard (behind all it sent).
    pub fn send_barriers(&self) {
        for (dest, outbox) in self.outboxes.iter().enumerate() {
            if dest != self.id {
                outbox.push(MeshMsg::Barrier);
            }
        }
    }

    /// True when some outbox holds so many publishes that readers should pause.
    pub fn outbox_congested(&self) -> bool {
        self.outboxes
            .iter()
            .any(|o| o.pending_publishes() > OUTBOX_HIGH_WATER)
    }

    pub fn backpressure(&self) -> &Rc<Backpressure> {
        &self.backpressure
    }

    /// The shard's list of connections with output, for its writer task.
    pub(crate) fn writes(&self) -> &Rc<Writes> {
        &self.writes
    }

    /// The client id of session `key` while `conn_id` is its connection (for logs).
    pub fn client_id_of(&self, key: usize, conn_id: u64) -> Option<ByteString> {
        self.is_current(key, conn_id)
            .then(|| self.sessions[key].session.client_id().clone())
    }

    /// The connection `key`'s session holds, if the low 32 bits of its id are `id_low`
    /// (`net::park` finds a parked connection by the two).
    pub(crate) fn conn_at(&self, key: usize, id_low: u64) -> Option<Rc<Conn>> {
        let c = self.sessions.get(key)?.conn.as_ref()?;
        (c.id & 0xffff_ffff == id_low).then(|| c.clone())
    }

    /// Closes every connection whose client has sent nothing for one and a half times
    /// its keep-alive [MQTT-3.1.2-24] (the reader then ends and the will goes out).
    /// Called periodically; a connection is closed at most one period late.
    ///
    /// Also ends persistent sessions offline for `persistent_client_expiration`.
    pub fn sweep_keep_alive(&mut self, now: Instant) {
        let expiration = self.cfg.persistent_client_expiration;
        let now_secs = self.secs_since_start(now);
        let mut expired = Vec::new();
        let mut wills = Vec::new();
        let mut look = Vec::new();
        while let Some(&(at, key)) = self.due.first() {
            if at > now_secs + 1 {
                break;
            }
            self.due.pop_first();
            look.push(key as usize);
        }
        for key in look {
            let Some(e) = self.sessions.get_mut(key) else {
                continue;
            };
            e.due_at = 0;
            match &e.conn {
                None => {
                    if e.expiry_due(expiration)
                        .is_some_and(|at| at <= now_secs + 1)
                    {
                        expired.push(key);
                        continue;
                    }
                    if e.delayed_will.as_ref().is_some_and(|w| w.1 < now_secs + 1) {
                        // Whole seconds on both sides: due one second past the delay,
                        // so the will never goes before the Will Delay Interval has
                        // passed [MQTT-3.1.3-9] (it may go up to a second late).
                        wills.push(e.delayed_will.take().map(|w| w.0));
                    }
                }
                // Detached soon, and filed again then.
                Some(conn) if conn.is_closing() => continue,
                Some(conn) => {
                    if e.session.keep_alive_deadline().is_some_and(|d| d <= now) {
                        self.stats.keepalive_timeouts += 1;
                        conn.close_because(DisconnectReason::KeepAliveTimeout);
                        continue;
                    }
                }
            }
            self.file_due(key);
        }
        for key in expired {
            tracing::info!(client = %self.sessions[key].session.client_id(), "persistent session expired");
            self.stats.sessions_expired += 1;
            self.remove_session(key);
        }
        for will in wills.into_iter().flatten() {
            self.publish_will(will);
        }
        self.drop_log.sweep(&self.stats, now);
    }

    /// Files session `key` in [`Shard::due`] under the next second at which
    /// something about it may fall due, from its state now (or takes it out, when
    /// nothing can). Called whenever that state changes: attach, detach, restore,
    /// reload; the sweep calls it again for each session it looked at.
    fn file_due(&mut self, key: usize) {
        let Some(e) = self.sessions.get(key) else {
            return;
        };
        let at = match &e.conn {
            // The first whole second after the deadline, plus one.
            Some(_) => e
                .session
                .keep_alive_deadline()
                .map(|d| self.secs_since_start(d).saturating_add(2)),
            None => {
                // Due once the second it is due in has passed (see the sweep).
                let will = e.delayed_will.as_ref().map(|w| w.1.saturating_add(1));
                match (e.expiry_due(self.cfg.persistent_client_expiration), will) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        };
        let old = e.due_at;
        if old != 0 {
            self.due.remove(&(old, key as u32));
        }
        let e = &mut self.sessions[key];
        e.due_at = at.unwrap_or(0);
        if let Some(at) = at {
            self.due.insert((at, key as u32));
        }
    }

    /// Offline sessions filed anew: their expiry bound may have changed.
    fn refile_offline(&mut self) {
        let keys: Vec<usize> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.conn.is_none())
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.file_due(key);
        }
    }

    /// Whole seconds from the shard's start to `t`.
    fn secs_since_start(&self, t: Instant) -> u32 {
        t.saturating_duration_since(self.started)
            .as_secs()
            .min(u64::from(u32::MAX - 1)) as u32
    }

    /// Listener `index` as it is now (after any reload).
    pub fn listener(&self, index: u16) -> &Listener {
        &self.listeners[usize::from(index).min(self.listeners.len() - 1)]
    }

    /// The authenticator of the listener a session's client came through.
    pub fn authenticator_of(&self, key: usize) -> Arc<dyn crate::auth::Authenticator> {
        self.listener(self.sessions[key].listener).auth.clone()
    }

    /// A client id for a client that sent an empty one: unique, and homed on this
    /// shard so the connection is never handed over.
    pub fn generate_client_id(&mut self) -> ByteString {
        loop {
            self.next_generated_id += 1;
            let id = format!("shardmq-{}-{:x}", self.id, self.next_generated_id);
            if home_shard(&id, self.shards) == self.id
                && self.by_client.get(&self.sessions, &id).is_none()
            {
                return ByteString::from(id);
            }
        }
    }

    fn is_current(&self, key: usize, conn_id: u64) -> bool {
        matches!(
            self.sessions.get(key),
            Some(SessionEntry { conn: Some(c), .. }) if c.id == conn_id
        )
    }

    /// A CONNECT accepted for a client id homed here: takes over an existing
    /// connection, resumes or discards the old session, writes CONNACK and whatever
    /// the session must resend. Returns the session's key.
    pub fn attach(
        &mut self,
        connect: Connect,
        conn: &Rc<Conn>,
        listener: u16,
        assigned_id: bool,
        now: Instant,
    ) -> Option<usize> {
        let v5 = connect.protocol == Protocol::V5;
        let mut connect = connect;
        let peer = if v5 {
            PeerLimits {
                receive_maximum: connect.props.receive_maximum.get(),
                max_packet_size: connect.props.maximum_packet_size.map(|m| m.get()),
                server_receive_maximum: self.cfg.receive_maximum,
                topic_alias_maximum: connect.props.topic_alias_maximum,
            }
        } else {
            PeerLimits::default()
        };
        // A 5.0 session lasts its Session Expiry Interval, within the configured bound.
        let expiry = v5.then(|| {
            connect
                .props
                .session_expiry
                .min(self.cfg.max_session_expiry)
        });
        // Whether the session ends with this connection.
        let ends = match expiry {
            Some(secs) => secs == 0,
            None => connect.clean_session,
        };
        let mut auth = ClientAuth::new(
            self.listener(listener).auth.as_ref(),
            &connect.client_id,
            connect.username.clone(),
        );
        if let Some(will) = &connect.will {
            let unsupported = if will.qos as u8 > self.cfg.maximum_qos {
                Some(ReasonCode::QOS_NOT_SUPPORTED)
            } else if will.retain && !self.cfg.retain_available {
                Some(ReasonCode::RETAIN_NOT_SUPPORTED)
            } else {
                None
            };
            if let Some(reason) = unsupported {
                // [MQTT-3.2.2-12], [MQTT-3.2.2-13]; a 3.1.1 client has no code for it.
                self.stats.connects_refused += 1;
                tracing::info!(client = %connect.client_id, reason = %reason, "CONNECT refused: will not supported");
                let code = ConnectReturnCode::NotAuthorized;
                conn.write_packet(&crate::net::refusal(code, v5.then_some(reason)));
                conn.close();
                return None;
            }
            if !may_write(&auth, &will.topic) {
                // A will the client could not publish itself: refused, as Mosquitto
                // refuses it, before anything of an existing session is touched.
                self.stats.publishes_refused += 1;
                tracing::debug!(client = %connect.client_id, topic = %will.topic, "will topic not authorised");
                let code = ConnectReturnCode::NotAuthorized;
                conn.write_packet(&crate::net::refusal(
                    code,
                    v5.then_some(ReasonCode::NOT_AUTHORIZED),
                ));
                conn.close();
                return None;
            }
        }
        if let Some(key) = self.by_client.get(&self.sessions, &connect.client_id) {
            if self.sessions[key].bridge {
                // A bridge's own session is not for clients.
                self.stats.connects_refused += 1;
                tracing::info!(client = %connect.client_id, "CONNECT refused: the client id of a bridge's session");
                conn.write_packet(&Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: ConnectReturnCode::IdentifierRejected,
                }));
                conn.close();
                return None;
            }
        }
        self.stats.packets_received += 1;
        let mut wills = Vec::new();
        let mut resumed = None;
        if let Some(key) = self.by_client.get(&self.sessions, &connect.client_id) {
            let entry = &mut self.sessions[key];
            if let Some(old) = entry.conn.take() {
                old.close_because(DisconnectReason::Takeover);
                self.stats.takeovers += 1;
                self.stats.connections -= 1;
                tracing::debug!(client = %connect.client_id, old = %old.peer, new = %conn.peer, "session taken over");
                let resumes = !(connect.clean_session || entry.session.clean_session());
                if resumes && entry.session.will_delay() > 0 {
                    // Resumed within the Will Delay Interval: no will [MQTT-3.1.3-9].
                    entry.session.disconnect(true);
                } else {
                    wills.extend(entry.session.disconnect(false));
                }
            }
            if connect.clean_session || entry.session.clean_session() {
                self.remove_session(key);
            } else {
                resumed = Some(key);
            }
        }
        let session_present = resumed.is_some();
        let key = resumed.unwrap_or_else(|| {
            // In bytes of its own, for as long as the session lives: a slice would keep
            // the CONNECT's whole read alive, and a shared header.
            let id = ByteString::from(&*connect.client_id);
            let session = Session::new(id, ends, self.limits.clone());
            let key = self
                .sessions
                .insert(SessionEntry::offline(session, listener));
            self.by_client.insert(&self.sessions, key);
            if !ends {
                self.log_record(&store::records::Record::Session {
                    client: &connect.client_id,
                    expiry,
                });
            }
            key
        });
        self.stats.connects += 1;
        self.stats.connections += 1;
        self.stats.packets_sent += 1;
        if v5 {
            let mut props = self.connack_props(&mut connect, assigned_id);
            if expiry != Some(connect.props.session_expiry) {
                // The bound applied: the client learns the interval in force.
                props.session_expiry = expiry;
            }
            conn.write_packet(&Packet::ConnAckV5(Box::new(ConnAckV5 {
                session_present,
                reason: ReasonCode::SUCCESS,
                props,
            })));
        } else {
            conn.write_packet(&Packet::ConnAck(ConnAck {
                session_present: session_present && connect.protocol == Protocol::V311,
                code: ConnectReturnCode::Accepted,
            }));
        }
        let entry = &mut self.sessions[key];
        entry.conn = Some(conn.clone());
        entry.held = false;
        entry.offline_since = 0;
        let had_expiry = entry.expiry.is_some();
        entry.expiry = expiry;
        if session_present {
            // Online again, under this client's interval (a new session's is in
            // its SESSION record).
            self.log_expiry(key, had_expiry);
        }
        let entry = &mut self.sessions[key];
        // Resumed in time: a delayed will is not sent [MQTT-3.1.3-9].
        entry.delayed_will = None;
        if let Some(a) = auth.as_mut() {
            // A resumed session's subscriptions, and what it kept for its client,
            // answer to the rights of whoever connected now.
            a.admit_existing(entry.session.subscriptions().map(|(f, _)| f));
            if let Some(rights) = &a.rights {
                self.stats.deliveries_refused += entry
                    .session
                    .retain_messages(|topic| rights.can_read(topic))
                    as u64;
            }
        }
        entry.auth = auth;
        entry.listener = listener;
        entry.session.set_v5(v5);
        entry.session.set_peer_limits(peer);
        entry.no_local = connect.bridge;
        update_retain_key(&mut self.retain_keys, key, entry);
        entry
            .session
            .connect(connect.keep_alive, connect.will, now, &mut self.out);
        write_out(
            entry,
            &mut self.out,
            self.cfg.write_buffer_high_water,
            &mut self.stats,
            self.durable.as_deref_mut(),
        );
        // Connected: filed under its keep-alive deadline.
        self.file_due(key);
        for will in wills {
            self.publish_will(will);
        }
        Some(key)
    }

    /// The properties of a 5.0 CONNACK: what the broker supports and its limits, the
    /// client id it chose, and the keep-alive it imposes (which `connect` then uses).
    fn connack_props(&self, connect: &mut Connect, assigned_id: bool) -> ConnAckProps {
        let max_keepalive = self.cfg.max_keepalive;
        let server_keep_alive = (max_keepalive > 0
            && (connect.keep_alive == 0 || connect.keep_alive > max_keepalive))
            .then(|| {
                connect.keep_alive = max_keepalive;
                max_keepalive
            });
        ConnAckProps {
            receive_maximum: NonZeroU16::new(self.cfg.receive_maximum).unwrap_or(NonZeroU16::MAX),
            maximum_packet_size: u32::try_from(self.cfg.max_packet_size)
                .ok()
                .and_then(NonZeroU32::new),
            assigned_client_id: assigned_id.then(|| connect.client_id.clone()),
            topic_alias_maximum: self.cfg.topic_alias_maximum,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            server_keep_alive,
            // After an enhanced authentication: its method, and the exchange's last
            // data (which replaced the client's).
            auth_method: connect.props.auth_method.clone(),
            auth_data: connect.props.auth_data.take(),
            maximum_qos: QoS::from_u8(self.cfg.maximum_qos).unwrap_or(QoS::ExactlyOnce),
            retain_available: self.cfg.retain_available,
            response_information: (connect.props.request_response_information
                && !self.cfg.response_information.is_empty())
            .then(|| {
                self.cfg
                    .response_information
                    .replace("%c", &connect.client_id)
                    .into()
            }),
            ..ConnAckProps::default()
        }
    }

    /// A reloaded configuration: limits apply from now on, to every session (a
    /// lowered bound drops nothing already held; it applies as messages arrive).
    pub fn set_config(&mut self, cfg: Arc<Config>) {
        self.limits = Limits {
            max_inflight: cfg.max_inflight,
            max_queued_messages: cfg.max_queued_messages,
            max_queued_bytes: cfg.max_queued_bytes,
        };
        for (_, e) in self.sessions.iter_mut() {
            e.session.set_limits(self.limits.clone());
        }
        self.retained
            .set_limits(cfg.max_retained_messages, cfg.max_retained_payload);
        self.writes.high_water.set(cfg.write_buffer_high_water);
        let expiration_changed =
            cfg.persistent_client_expiration != self.cfg.persistent_client_expiration;
        self.cfg = cfg;
        if expiration_changed {
            self.refile_offline();
        }
    }

    /// Reloaded listeners: new connections use them, and every session gets its
    /// rights anew from its listener's authenticator; connected clients answer to
    /// them from their next packet and delivery on.
    pub fn set_listeners(&mut self, listeners: Arc<[Listener]>) {
        self.listeners = listeners;
        for (_, e) in self.sessions.iter_mut() {
            if e.bridge {
                // A bridge's session answers to no listener's files.
                continue;
            }
            let username = e.auth.take().and_then(|a| a.username);
            let index = usize::from(e.listener).min(self.listeners.len() - 1);
            let auth = self.listeners[index].auth.as_ref();
            let mut a = ClientAuth::new(auth, e.session.client_id(), username);
            if let Some(a) = a.as_mut() {
                a.admit_existing(e.session.subscriptions().map(|(f, _)| f));
            }
            e.auth = a;
        }
    }

    /// The connection of session `key` ended (socket closed, error, timeout, or
    /// DISCONNECT when `graceful`). Publishes the will unless graceful; drops a
    /// clean session. A connection already replaced by a takeover is ignored.
    pub fn connection_lost(&mut self, key: usize, conn_id: u64, graceful: bool) {
        if !self.is_current(key, conn_id) {
            return;
        }
        let entry = &mut self.sessions[key];
        if let Some(conn) = entry.conn.take() {
            conn.close();
        }
        self.stats.connections -= 1;
        entry.held = false;
        let will_delay = entry.session.will_delay();
        let mut will = entry.session.disconnect(graceful);
        if entry.session.clean_session() || entry.expiry == Some(0) {
            self.remove_session(key);
        } else {
            let since = self.secs_since_start(Instant::now()) + 1;
            let entry = &mut self.sessions[key];
            entry.offline_since = since;
            if entry.expiry.is_some() {
                // Its interval counts from now, across a restart too.
                self.log_expiry(key, false);
            }
            let entry = &mut self.sessions[key];
            if will_delay > 0 {
                // Sent after the delay, or when the session ends if that is sooner.
                entry.delayed_will = will
                    .take()
                    .map(|w| Box::new((w, since.saturating_add(will_delay))));
            }
            self.file_due(key);
            self.release_shared(key);
        }
        if let Some(will) = will {
            self.publish_will(will);
        }
    }

    /// A 5.0 client's DISCONNECT sets its session's expiry interval (bounded by
    /// `max_session_expiry`). Returns false for the Protocol Error of raising it from
    /// 0 [MQTT-3.14.2-2].
    pub fn set_session_expiry(&mut self, key: usize, conn_id: u64, secs: u32) -> bool {
        if !self.is_current(key, conn_id) {
            return true;
        }
        let bound = self.cfg.max_session_expiry;
        let entry = &mut self.sessions[key];
        if entry.expiry == Some(0) && secs > 0 {
            return false;
        }
        entry.expiry = Some(secs.min(bound));
        true
    }

    /// A message the broker itself publishes (its `$SYS` topics): routed as a
    /// client's would be, with no publisher whose rights apply.
    pub fn publish_from_broker(&mut self, msg: Message) {
        self.route_one(msg);
    }

    /// Publishes a client's will, unless its topic is a `$SYS` one; during a log
    /// compaction, once it is over.
    fn publish_will(&mut self, will: Message) {
        if self.paused {
            self.paused_wills.push(will);
            return;
        }
        if is_sys_topic(&will.topic) {
            self.stats.publishes_to_sys += 1;
            return;
        }
        self.stats.wills_published += 1;
        let mut will = will;
        self.log_publish(None, None, &mut will);
        let hash = std::mem::take(&mut self.publisher_hash);
        self.publish_from_client(will);
        self.publisher_hash = hash;
    }

    /// Drops a session and all its subscriptions; tells other shards about filters
    /// this shard no longer has subscribers for.
    fn remove_session(&mut self, key: usize) {
        let at = self.sessions[key].due_at;
        if at != 0 {
            self.due.remove(&(at, key as u32));
        }
        self.release_shared(key);
        self.retain_keys.retain(|&k| k as usize != key);
        let mut entry = self.sessions.remove(key);
        // At once: the index finds its entries through the slab.
        self.by_client.remove(entry.session.client_id(), key);
        if let Some(will) = entry.delayed_will.take() {
            // The session ends before the will's delay: it goes now.
            self.publish_will(will.0);
        }
        if !entry.session.clean_session() {
            self.log_session_end(entry.session.client_id());
        }
        for (filter, _) in entry.session.subscriptions() {
            self.unroute(filter, key);
        }
    }

    /// Takes session `key`'s route for `filter` out of `subs` or its shared group;
    /// tells other shards when it was this shard's last one.
    fn unroute(&mut self, filter: &ByteString, key: usize) {
        let last = if share::is_shared(filter) {
            self.shared
                .remove_member(self.id as u16, filter, key as u32)
        } else {
            self.subs.remove(filter, &(key as u32)).filter_now_empty
        };
        if last {
            self.broadcast_interest_remove(filter);
        }
    }

    fn broadcast_interest_remove(&self, filter: &ByteString) {
        for (dest, outbox) in self.outboxes.iter().enumerate() {
            if dest != self.id {
                outbox.push(MeshMsg::InterestRemove {
                    filter: filter.clone(),
                });
            }
        }
    }

    /// Every packet from a connected client except CONNECT and SUBSCRIBE.
    pub fn handle_packet(
        &mut self,
        key: usize,
        conn_id: u64,
        packet: Packet,
        now: Instant,
    ) -> Flow {
        if !self.is_current(key, conn_id) {
            return Flow::Close { graceful: false };
        }
        self.stats.packets_received += 1;
        if !matches!(packet, Packet::Publish(_)) {
            // Whatever the client published before this packet goes first.
            self.route_pending();
        }
        match packet {
            Packet::Disconnect => Flow::Close { graceful: true },
            Packet::Unsubscribe(u) => {
                // Activity for keep-alive; packets that go through the session record
                // their own.
                self.sessions[key].session.touch(now);
                self.unsubscribe(key, u);
                Flow::Continue
            }
            Packet::Publish(p)
                if p.qos as u8 > self.cfg.maximum_qos
                    || (p.retain && !self.cfg.retain_available) =>
            {
                // [MQTT-3.3.1-4], [MQTT-3.3.1-5] (Mosquitto closes 3.1.1 clients too).
                let reason = if p.retain && !self.cfg.retain_available {
                    ReasonCode::RETAIN_NOT_SUPPORTED
                } else {
                    ReasonCode::QOS_NOT_SUPPORTED
                };
                self.stats.protocol_errors += 1;
                tracing::info!(client = %self.sessions[key].session.client_id(), %reason, "PUBLISH refused");
                if let Some(conn) = &self.sessions[key].conn {
                    conn.disconnect_v5(reason, reason.name());
                    conn.close();
                }
                Flow::Close { graceful: false }
            }
            Packet::Publish(p) if self.refuses_publish_v5(key, &p.topic) => {
                // 5.0 says no: PUBACK / PUBREC 0x87, which ends a QoS 2 flow (§4.3.3).
                let entry = &mut self.sessions[key];
                entry.session.touch(now);
                self.stats.publishes_received_qos[p.qos as usize] += 1;
                if is_sys_topic(&p.topic) {
                    self.stats.publishes_to_sys += 1;
                } else {
                    self.stats.publishes_refused += 1;
                }
                let why = entry
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.wants_problem_info())
                    .then(|| format!("not authorized to publish to {}", p.topic).into());
                let ack = crate::protocol::Ack {
                    reason: ReasonCode::NOT_AUTHORIZED,
                    reason_string: why,
                    ..crate::protocol::Ack::success(p.pkid)
                };
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => self.send_ack(key, Packet::PubAckV5(ack)),
                    QoS::ExactlyOnce => self.send_ack(key, Packet::PubRecV5(ack)),
                }
                Flow::Continue
            }
            Packet::Subscribe(_) | Packet::Connect(_) => {
                self.stats.protocol_errors += 1;
                tracing::info!(client = %self.sessions[key].session.client_id(), "protocol violation: a second CONNECT");
                Flow::Close { graceful: false }
            }
            packet => {
                let high_water = self.cfg.write_buffer_high_water;
                // What the log needs to know of the packet once the session has it.
                let logged = self.durable.is_some().then(|| match &packet {
                    Packet::Publish(p) => LoggedPacket::Publish(p.pkid),
                    Packet::PubRel(p) => LoggedPacket::PubRel(*p),
                    Packet::PubComp(p) => {
                        LoggedPacket::PubComp(*p, self.sessions[key].session.inflight_stamp(*p))
                    }
                    Packet::PubAck(_) | Packet::PubRec(_) => LoggedPacket::Ack,
                    _ => LoggedPacket::Other,
                });
                let entry = &mut self.sessions[key];
                if let Err(e) = entry.session.handle(packet, now, &mut self.out) {
                    if let Some(conn) = &entry.conn {
                        let reason = match e {
                            SessionError::ReceiveMaximumExceeded(_) => {
                                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED
                            }
                            _ => ReasonCode::PROTOCOL_ERROR,
                        };
                        // Said before the close, which then adds no other reason.
                        conn.disconnect_v5(reason, e.to_string());
                        conn.close();
                    }
                    self.stats.protocol_errors += 1;
                    tracing::info!(client = %entry.session.client_id(), error = %e, "protocol violation");
                    self.out.packets.clear();
                    self.out.publishes.clear();
                    return Flow::Close { graceful: false };
                }
                // Published messages are logged before their acknowledgements go.
                if !self.out.publishes.is_empty() {
                    if self.sessions[key].no_local || self.sessions[key].no_local_filters.is_some()
                    {
                        // Until `route_pending` has routed them.
                        self.no_local = Some(key as u32);
                    }
                    let mut publishes = std::mem::take(&mut self.out.publishes);
                    for mut msg in publishes.drain(..) {
                        self.stats.publishes_received_qos[msg.qos as usize] += 1;
                        self.stats.publish_bytes_received += msg.payload.len() as u64;
                        if is_sys_topic(&msg.topic) {
                            // Only the broker publishes there.
                            self.stats.publishes_to_sys += 1;
                        } else if may_write(&self.sessions[key].auth, &msg.topic) {
                            if self.cfg.shared_subscription_strategy == SharedStrategy::HashClient {
                                self.publisher_hash =
                                    shared::client_hash(self.sessions[key].session.client_id());
                            }
                            if let Some(LoggedPacket::Publish(pid)) = logged {
                                let session = &self.sessions[key].session;
                                let client = session.client_id().clone();
                                let publisher = (!session.clean_session()
                                    && msg.qos == QoS::ExactlyOnce)
                                    .then_some((&*client, pid));
                                // Kept for recovery's No Local only when it can matter.
                                let sender = self.sessions[key]
                                    .no_local_filters
                                    .is_some()
                                    .then_some(&*client);
                                self.log_publish(publisher, sender, &mut msg);
                            }
                            self.routing.push(msg);
                        } else {
                            self.stats.publishes_refused += 1;
                        }
                    }
                    self.out.publishes = publishes;
                }
                if let Some(l) = logged {
                    self.log_packet(key, l);
                }
                let entry = &mut self.sessions[key];
                write_out(
                    entry,
                    &mut self.out,
                    high_water,
                    &mut self.stats,
                    self.durable.as_deref_mut(),
                );
                Flow::Continue
            }
        }
    }

    /// Whether a 5.0 client's PUBLISH to `topic` is refused (its rights, or `$SYS`),
    /// which 5.0 answers with reason 0x87; a 3.1.1 one is acknowledged and dropped
    /// after the session has it.
    fn refuses_publish_v5(&self, key: usize, topic: &str) -> bool {
        let entry = &self.sessions[key];
        entry.conn.as_ref().is_some_and(|c| c.is_v5())
            && (is_sys_topic(topic) || !may_write(&entry.auth, topic))
    }

    /// Tells every other shard of filters newly subscribed here and records what
    /// waits for their confirmations (`waiters`); returns the token they confirm.
    fn announce_interest(
        &mut self,
        new_filters: Vec<ByteString>,
        waiters: Vec<Rc<SubscribeWait>>,
    ) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        for (dest, outbox) in self.outboxes.iter().enumerate() {
            if dest != self.id {
                outbox.push(MeshMsg::InterestAdd {
                    filters: new_filters.clone(),
                    token,
                });
            }
        }
        for f in &new_filters {
            self.pending_filters.insert(f.clone(), token);
        }
        self.pending_interest.insert(
            token,
            PendingInterest {
                remaining: self.shards - 1,
                confirmed: (0..self.shards).map(|s| s == self.id).collect(),
                filters: new_filters,
                waiters,
                held: Vec::new(),
            },
        );
        token
    }

    /// First half of SUBSCRIBE: records the granted filters (they route at once)
    /// and, for filters new to this shard, asks every other shard to record
    /// interest. SUBACK waits until they confirm: a publish accepted anywhere after
    /// SUBACK reaches this subscriber.
    pub fn subscribe_start(
        &mut self,
        key: usize,
        conn_id: u64,
        sub: &mut Subscribe,
    ) -> Option<SubscribeStart> {
        if !self.is_current(key, conn_id) {
            return None;
        }
        self.stats.packets_received += 1;
        self.sessions[key].session.touch(Instant::now());
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut reasons = Vec::new();
        let mut new_filters = Vec::new();
        let mut waits = Vec::new();
        for f in sub.filters.iter_mut() {
            if f.qos as u8 > self.cfg.maximum_qos {
                // Granted at most what the broker supports (§3.9.3).
                f.qos = QoS::from_u8(self.cfg.maximum_qos).unwrap_or(QoS::AtMostOnce);
            }
            let entry = &mut self.sessions[key];
            let session = &entry.session;
            if f.retain_handling == RetainHandling::OnNewSubscription
                && session.subscription(&f.filter).is_some()
            {
                // Retain Handling 1: retained messages only for a new subscription.
                f.retain_handling = RetainHandling::Never;
            }
            let (valid, read_filter, is_shared) = match share::parse(&f.filter) {
                share::FilterKind::Plain => {
                    (topic::valid_topic_filter(&f.filter), &*f.filter, false)
                }
                share::FilterKind::Shared(s) => (true, s.filter, true),
                share::FilterKind::Invalid => (false, &*f.filter, true),
            };
            let acceptable = valid
                && topic::within_limits(
                    &f.filter,
                    self.cfg.max_topic_length,
                    self.cfg.max_topic_levels,
                )
                && (session.subscription_count() < self.cfg.max_subscriptions_per_client
                    || session.subscription(&f.filter).is_some());
            let refusal = if !valid {
                Some(ReasonCode::TOPIC_FILTER_INVALID)
            } else if !acceptable {
                // Over a configured limit (length, levels, subscriptions per client).
                Some(ReasonCode::QUOTA_EXCEEDED)
            } else if !entry
                .auth
                .as_mut()
                .is_none_or(|a| a.admit_filter(read_filter))
            {
                Some(ReasonCode::NOT_AUTHORIZED)
            } else {
                None
            };
            if let Some(reason) = refusal {
                self.stats.subscriptions_refused += 1;
                codes.push(SubAckCode::Failure);
                reasons.push(reason);
                continue;
            }
            // The session keeps the filter in bytes of its own: a slice would keep
            // the whole read that brought the SUBSCRIBE alive, and a shared header.
            let own = ByteString::from(&*f.filter);
            set_no_local(&mut self.sessions[key], &own, f.no_local);
            set_rap(&mut self.sessions[key], &own, f.retain_as_published);
            self.sessions[key].session.set_subscription_id(&own, sub.id);
            self.sessions[key].session.subscribe(own, f.qos);
            update_retain_key(&mut self.retain_keys, key, &self.sessions[key]);
            if self.durable.is_some() && !self.sessions[key].session.clean_session() {
                let horizons = self.horizons();
                let client = self.sessions[key].session.client_id().clone();
                let opts = self.sessions[key].sub_opts(&f.filter);
                self.log_record(&store::records::Record::Sub {
                    client: &client,
                    filter: &f.filter,
                    qos: f.qos as u8,
                    opts,
                    horizons,
                });
            }
            let filter_was_new = if is_shared {
                self.shared
                    .add_member(self.id as u16, &f.filter, key as u32, f.qos)
                    .1
            } else {
                self.subs
                    .insert(&f.filter, key as u32, f.qos)
                    .filter_was_new
            };
            if self.shards > 1 {
                if filter_was_new {
                    new_filters.push(f.filter.clone());
                } else if let Some(&token) = self.pending_filters.get(&f.filter) {
                    waits.push(token);
                }
            }
            codes.push(SubAckCode::Granted(f.qos));
            reasons.push(ReasonCode(f.qos as u8));
        }
        if !new_filters.is_empty() {
            waits.push(self.announce_interest(new_filters, Vec::new()));
        }
        waits.sort_unstable();
        waits.dedup();
        if !waits.is_empty() {
            // Live messages may match the new filters from now on, while SUBACK waits.
            // Hold them in the session queue behind the retained messages as they are
            // now: each retained copy is older than anything delivered live after it.
            let high_water = self.cfg.write_buffer_high_water;
            let Shard {
                sessions,
                retained,
                out,
                stats,
                durable,
                ..
            } = self;
            let entry = &mut sessions[key];
            entry.held = true;
            entry.session.set_writable(false, out);
            deliver_retained(entry, retained, stats, out, sub, &codes);
            write_out(entry, out, high_water, stats, durable.as_deref_mut());
        }
        let wait = (!waits.is_empty()).then(|| {
            let wait = Rc::new(SubscribeWait {
                outstanding: Cell::new(waits.len()),
                waker: Cell::new(None),
            });
            for token in &waits {
                if let Some(p) = self.pending_interest.get_mut(token) {
                    p.waiters.push(wait.clone());
                    p.held.push((key, conn_id));
                }
            }
            wait
        });
        Some(SubscribeStart {
            codes,
            reasons,
            wait,
        })
    }

    /// Second half of SUBSCRIBE, once interest is confirmed: SUBACK, then the
    /// retained messages matching each granted filter.
    pub fn subscribe_finish(
        &mut self,
        key: usize,
        conn_id: u64,
        sub: &Subscribe,
        codes: Vec<SubAckCode>,
        reasons: Vec<ReasonCode>,
    ) {
        if !self.is_current(key, conn_id) {
            return;
        }
        let high_water = self.cfg.write_buffer_high_water;
        let Shard {
            sessions,
            retained,
            out,
            stats,
            durable,
            ..
        } = self;
        let entry = &mut sessions[key];
        let Some(conn) = entry.conn.clone() else {
            return;
        };
        let suback = if conn.is_v5() {
            // The refused filters and why, for a client that wants to know.
            let refused: Vec<String> = sub
                .filters
                .iter()
                .zip(&reasons)
                .filter(|(_, r)| r.is_error() && conn.wants_problem_info())
                .map(|(f, r)| format!("{}: {}", f.filter, r.name()))
                .collect();
            Packet::SubAckV5(Box::new(SubAckV5 {
                pkid: sub.pkid,
                reasons,
                reason_string: (!refused.is_empty()).then(|| refused.join("; ").into()),
                user: Default::default(),
            }))
        } else {
            Packet::SubAck(SubAck {
                pkid: sub.pkid,
                codes: codes.clone(),
            })
        };
        match durable.as_deref_mut() {
            Some(d) if d.must_wait() || conn.holding.get() > 0 => d.hold(&conn, suback),
            _ => conn.write_packet(&suback),
        }
        if entry.held {
            // The retained messages were queued when the filters went in.
            entry.held = false;
            if !conn.congested() {
                entry.session.set_writable(true, out);
            }
        } else {
            deliver_retained(entry, retained, stats, out, sub, &codes);
        }
        write_out(entry, out, high_water, stats, durable.as_deref_mut());
    }

    fn unsubscribe(&mut self, key: usize, u: Unsubscribe) {
        let v5 = self.sessions[key].conn.as_ref().is_some_and(|c| c.is_v5());
        let mut reasons = Vec::new();
        for filter in &u.filters {
            let existed = self.sessions[key].session.unsubscribe(filter).is_some();
            if self.sessions[key].no_local_filters.is_some() {
                set_no_local(&mut self.sessions[key], filter, false);
            }
            if self.sessions[key].rap_filters.is_some() {
                set_rap(&mut self.sessions[key], filter, false);
                update_retain_key(&mut self.retain_keys, key, &self.sessions[key]);
            }
            if v5 {
                reasons.push(if existed {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                });
            }
            if existed {
                if !self.sessions[key].session.clean_session() {
                    let client = self.sessions[key].session.client_id().clone();
                    self.log_record(&store::records::Record::Unsub {
                        client: &client,
                        filter,
                    });
                }
                if share::is_shared(filter) {
                    // What the group gave this member and it has not yet received
                    // goes to another member.
                    self.release_shared_group(key, filter);
                }
                self.unroute(filter, key);
            }
        }
        if v5 {
            self.send_ack(
                key,
                Packet::UnsubAckV5(Box::new(UnsubAckV5 {
                    pkid: u.pkid,
                    reasons,
                    reason_string: None,
                    user: Default::default(),
                })),
            );
        } else {
            self.send_ack(key, Packet::UnsubAck(u.pkid));
        }
    }

    /// The connection's writer drained below the low-water mark: let the session
    /// send what it queued meanwhile.
    pub fn resume_writes(&mut self, key: usize, conn_id: u64) {
        if !self.is_current(key, conn_id) {
            return;
        }
        let entry = &mut self.sessions[key];
        if entry.held {
            return;
        }
        entry.session.set_writable(true, &mut self.out);
        write_out(
            entry,
            &mut self.out,
            self.cfg.write_buffer_high_water,
            &mut self.stats,
            self.durable.as_deref_mut(),
        );
    }

    /// Routes, in order, what the client being read has published since the last
    /// call ([`Shard::handle_packet`] only accepts and acknowledges). Its reader calls
    /// this before it waits, so one read's publishes are routed together, and
    /// consecutive QoS 0 messages on one topic go as one run: one match, one encoding
    /// range and one output update per subscriber, one interest match.
    pub fn route_pending(&mut self) {
        if self.routing.is_empty() {
            self.no_local = None;
            return;
        }
        let mut routing = std::mem::take(&mut self.routing);
        let mut run = std::mem::take(&mut self.run);
        for msg in routing.drain(..) {
            if run.breaks(&msg) {
                self.publish_run(&mut run);
            }
            if Run::eligible(&msg) {
                run.push(msg);
            } else {
                self.publish_from_client(msg);
            }
        }
        self.publish_run(&mut run);
        self.routing = routing;
        self.run = run;
        self.no_local = None;
    }

    /// Publishes the run gathered so far (if any) and empties it.
    fn publish_run(&mut self, run: &mut Run) {
        match run.msgs.len() {
            0 => {}
            1 => {
                let msg = run.msgs.remove(0);
                self.publish_from_client(msg);
            }
            n => {
                self.stats.publishes_received += n as u64;
                self.deliver_local(&run.msgs);
                self.forward(&run.msgs);
                if !self.shared.is_empty() {
                    self.route_shared(&run.msgs);
                }
            }
        }
        run.clear();
    }

    /// Appends messages on one topic to the outbox of every shard whose interest
    /// matches it.
    fn forward(&mut self, msgs: &[Message]) {
        if self.shards == 1 {
            return;
        }
        let dests = &mut self.dests;
        self.interest
            .for_each_match(&msgs[0].topic, |&shard, _| dests[shard as usize] = true);
        for dest in 0..self.dests.len() {
            if std::mem::take(&mut self.dests[dest]) {
                for msg in msgs {
                    self.outboxes[dest].push(MeshMsg::Publish(msg.clone()));
                }
                self.stats.forwarded += msgs.len() as u64;
            }
        }
    }

    /// A message published by one of this shard's clients (or a will): retained
    /// store, local subscribers, then every shard with matching interest.
    pub fn publish_from_client(&mut self, msg: Message) {
        self.stats.publishes_received += 1;
        self.route_one(msg);
    }

    /// Retained store, local subscribers, then every shard with matching interest.
    fn route_one(&mut self, msg: Message) {
        // A QoS 1/2 message is stored by every session it reaches until acknowledged;
        // copy it out of the read buffer once here rather than pin the buffer there.
        let mut msg = if msg.qos == QoS::AtMostOnce {
            msg
        } else {
            msg.compact()
        };
        if msg.retain {
            match self.retained.local_update(&msg) {
                LocalUpdate::Applied(version) => {
                    for (dest, outbox) in self.outboxes.iter().enumerate() {
                        if dest != self.id {
                            outbox.push(MeshMsg::Retain {
                                msg: msg.clone(),
                                version,
                            });
                        }
                    }
                    if !self.retain_keys.is_empty() {
                        self.skip_bridges = self.retained_to_keepers(&msg);
                    }
                }
                LocalUpdate::Refused => self.stats.retained_refused += 1,
            }
            // Normal forwarding clears the flag [MQTT-3.3.1-9].
            msg.retain = false;
        }
        let msg = std::slice::from_ref(&msg);
        self.deliver_local(msg);
        self.forward(msg);
        if !self.shared.is_empty() {
            self.route_shared(msg);
        }
    }

    /// Delivers messages on one topic to this shard's matching sessions, once per
    /// session at the highest QoS among its matching subscriptions: one message, or a
    /// run of QoS 0 messages with the same retain flag.
    fn deliver_local(&mut self, run: &[Message]) {
        let msg = &run[0];
        self.match_seq += 1;
        let seq = self.match_seq;
        let high_water = self.cfg.write_buffer_high_water;
        let Shard {
            subs,
            sessions,
            matched,
            out,
            stats,
            writes,
            durable,
            no_local,
            skip_bridges,
            ..
        } = self;
        matched.clear();
        debug_assert!(run.iter().all(|m| m.topic == msg.topic
            && (run.len() == 1 || (m.qos == QoS::AtMostOnce && m.retain == msg.retain))));
        subs.for_each_match(&msg.topic, |&k, &qos| {
            let Some(e) = sessions.get_mut(k as usize) else {
                return;
            };
            if e.match_seq == seq {
                let slot = &mut matched[e.match_slot as usize];
                slot.1 = slot.1.max(qos);
            } else {
                e.match_seq = seq;
                e.match_slot = matched.len() as u32;
                matched.push((k, qos));
            }
        });
        if let Some(publisher) = *no_local {
            let own = sessions
                .get(publisher as usize)
                .and_then(|e| own_delivery_qos(e, &msg.topic));
            matched.retain_mut(|(k, qos)| match own {
                Some(q) if *k == publisher => {
                    *qos = q;
                    true
                }
                _ => *k != publisher,
            });
        }
        if std::mem::take(skip_bridges) {
            // Those that took it as a retained copy (not the publisher: it never does).
            matched.retain(|&(k, _)| {
                Some(k) == *no_local
                    || sessions
                        .get(k as usize)
                        .is_none_or(|e| bridge::retained_copy_qos(e, &msg.topic).is_none())
            });
        }
        // Encoded at most once per message, on the first subscriber that takes it as
        // is, into bytes every other such subscriber's output refers to (sent with
        // one gathered write per connection, see `net::Writes::share`). Cloning the
        // message's topic and payload per subscriber instead would touch their shared
        // reference count (on a cache line the publisher's shard also writes) twice
        // per delivery; copying the encoding per subscriber would touch one cold
        // write buffer per subscriber.
        let mut shared = None;
        // The same for 5.0 subscribers, in the 5.0 layout.
        let mut shared_v5 = None;
        let run_payload: u64 = run.iter().map(|m| m.payload.len() as u64).sum();
        for &(k, qos) in matched.iter() {
            let Some(e) = sessions.get_mut(k as usize) else {
                continue;
            };
            if !may_read(&e.auth, &msg.topic) {
                stats.deliveries_refused += run.len() as u64;
                continue;
            }
            if msg.qos.min(qos) == QoS::AtMostOnce && e.session.sends_qos0_at_once() {
                if let Some(conn) = e.conn.as_ref().filter(|c| c.holding.get() == 0) {
                    // The run's encodings lie next to each other: one range.
                    let shared = if conn.is_v5() {
                        shared_v5.get_or_insert_with(|| {
                            let now = Instant::now();
                            writes.share(|buf| {
                                for m in run {
                                    let props = m.props.as_deref().map_or_else(
                                        PublishV5Props::default,
                                        |p| PublishV5Props {
                                            message_expiry: p.remaining(now),
                                            forward: &p.forward,
                                            ..PublishV5Props::default()
                                        },
                                    );
                                    encode_publish_v5(
                                        buf,
                                        &m.topic,
                                        &m.payload,
                                        QoS::AtMostOnce,
                                        m.retain,
                                        false,
                                        0,
                                        &props,
                                    );
                                }
                            })
                        })
                    } else {
                        shared.get_or_insert_with(|| {
                            writes.share(|buf| {
                                for m in run {
                                    encode_publish(
                                        buf,
                                        &m.topic,
                                        &m.payload,
                                        QoS::AtMostOnce,
                                        m.retain,
                                        false,
                                        0,
                                    );
                                }
                            })
                        })
                    };
                    conn.write_shared(shared);
                    stats.delivered += run.len() as u64;
                    stats.packets_sent += run.len() as u64;
                    stats.publishes_sent_qos[0] += run.len() as u64;
                    stats.publish_bytes_sent += run_payload;
                    write_out(e, out, high_water, stats, durable.as_deref_mut());
                    continue;
                }
            }
            for m in run {
                e.pos_dirty |= m.stamp.is_set();
                let d = e.session.deliver(m, qos, out);
                if e.bridge && matches!(d, Delivery::Dropped(_)) {
                    stats.bridge_messages_dropped += 1;
                }
                count_delivery(stats, d, &mut e.session);
                write_out(e, out, high_water, stats, durable.as_deref_mut());
            }
        }
    }

    /// One batch from shard `src`. Returns the connections handed over to this
    /// shard, for the caller to serve.
    pub fn handle_mesh_batch(
        &mut self,
        src: usize,
        batch: Vec<MeshMsg>,
        handoffs: &mut Vec<Handoff>,
    ) {
        // Readers route before they yield, and this runs in a task of its own.
        debug_assert!(self.routing.is_empty());
        // Consecutive QoS 0 messages on one topic are delivered as one run, as on
        // the publisher's shard (see `route_pending`).
        let mut run = std::mem::take(&mut self.run);
        self.stats.mesh_batches[stats::mesh_batch_bucket(batch.len())] += 1;
        self.stats.mesh_batch_messages += batch.len() as u64;
        for msg in batch {
            let msg = match msg {
                MeshMsg::Publish(m) => {
                    self.stats.forwarded_in += 1;
                    self.saw_stamp(&m);
                    if !self.bridge_skip.is_empty() && self.take_bridge_skip(&m) {
                        self.deliver_run(&mut run);
                        self.skip_bridges = true;
                        self.deliver_local(std::slice::from_ref(&m));
                        continue;
                    }
                    if run.breaks(&m) {
                        self.deliver_run(&mut run);
                    }
                    if Run::eligible(&m) {
                        run.push(m);
                    } else {
                        self.deliver_local(std::slice::from_ref(&m));
                    }
                    continue;
                }
                other => other,
            };
            self.deliver_run(&mut run);
            self.handle_mesh_control(src, msg, handoffs);
        }
        self.deliver_run(&mut run);
        self.run = run;
        // A retained update and its forwarded copy travel in one batch.
        self.bridge_skip.clear();
    }

    /// Delivers the run gathered so far (if any) and empties it.
    fn deliver_run(&mut self, run: &mut Run) {
        if !run.msgs.is_empty() {
            self.deliver_local(&run.msgs);
            run.clear();
        }
    }

    /// A mesh message other than a forwarded publish.
    fn handle_mesh_control(&mut self, src: usize, msg: MeshMsg, handoffs: &mut Vec<Handoff>) {
        match msg {
            MeshMsg::Publish(m) => self.deliver_local(std::slice::from_ref(&m)),
            MeshMsg::Retain { msg, version } => {
                self.saw_stamp(&msg);
                if self.retained.apply(&msg, version) {
                    if !self.pending_interest.is_empty() {
                        self.retained_while_held(src, &msg);
                    }
                    if !self.retain_keys.is_empty() && self.retained_to_keepers(&msg) {
                        self.bridge_skip.push(msg);
                    }
                }
            }
            MeshMsg::InterestAdd { filters, token } => {
                for f in &filters {
                    if share::is_shared(f) {
                        self.shared.add_shard(f, src as u16);
                    } else {
                        self.interest.insert(f, src as u16, ());
                    }
                }
                self.outboxes[src].push(MeshMsg::InterestAck { token });
            }
            MeshMsg::InterestRemove { filter } => {
                if share::is_shared(&filter) {
                    self.shared.remove_shard(&filter, src as u16);
                } else {
                    self.interest.remove(&filter, &(src as u16));
                }
            }
            MeshMsg::Shared { msg, to } => {
                self.saw_stamp(&msg);
                self.stats.shared_forwarded_in += 1;
                match self.shared.id_of(&to.group) {
                    Some(id) => self.deliver_shared(id, msg, to.hash, to.hops, None),
                    None => self.stats.shared_dropped += 1,
                }
            }
            MeshMsg::InterestAck { token } => self.interest_acked(src, token),
            MeshMsg::Handoff(h) => {
                self.stats.handoffs_in += 1;
                handoffs.push(*h);
            }
            MeshMsg::Barrier => self.barriers += 1,
        }
    }

    /// A retained message from shard `src` reached this shard's replica while
    /// SUBSCRIBEs here wait for `src` to confirm new filters that match it. `src` sent
    /// it before it learned of those filters (the confirmation travels behind it), so
    /// it did not forward the message live, and the retained messages taken when the
    /// filters went in predate it: without this, a message retained and acknowledged
    /// just before the SUBSCRIBE would reach none of the held sessions. Delivered
    /// once per session, at the highest QoS granted among those filters, behind the
    /// retained messages already queued, and replacing any copy of the topic's
    /// earlier retained message still queued there (a deletion only removes it).
    fn retained_while_held(&mut self, src: usize, msg: &Message) {
        let mut hits: smallvec::SmallVec<[(usize, QoS); 4]> = smallvec::SmallVec::new();
        for p in self.pending_interest.values() {
            if p.confirmed[src] {
                continue;
            }
            for f in p
                .filters
                .iter()
                .filter(|f| !share::is_shared(f) && topic::matches(f, &msg.topic))
            {
                for &(key, conn_id) in &p.held {
                    let Some(e) = self.sessions.get(key) else {
                        continue;
                    };
                    if !e.held || e.conn.as_ref().is_none_or(|c| c.id != conn_id) {
                        continue;
                    }
                    let Some(qos) = e.session.subscription(f) else {
                        continue;
                    };
                    match hits.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, q)) => *q = (*q).max(qos),
                        None => hits.push((key, qos)),
                    }
                }
            }
        }
        let retained = Message {
            retain: true,
            ..msg.clone()
        };
        let high_water = self.cfg.write_buffer_high_water;
        for (key, qos) in hits {
            let entry = &mut self.sessions[key];
            // Held: nothing has gone out since the filters went in.
            entry.session.remove_queued_retained(&msg.topic);
            if msg.payload.is_empty() {
                continue;
            }
            if !may_read(&entry.auth, &msg.topic) {
                self.stats.deliveries_refused += 1;
                continue;
            }
            let d = entry.session.deliver(&retained, qos, &mut self.out);
            count_delivery(&mut self.stats, d, &mut entry.session);
            write_out(
                entry,
                &mut self.out,
                high_water,
                &mut self.stats,
                self.durable.as_deref_mut(),
            );
        }
    }

    fn interest_acked(&mut self, src: usize, token: u64) {
        let Some(p) = self.pending_interest.get_mut(&token) else {
            return;
        };
        if std::mem::replace(&mut p.confirmed[src], true) {
            return;
        }
        p.remaining -= 1;
        if p.remaining > 0 {
            return;
        }
        let Some(p) = self.pending_interest.remove(&token) else {
            return;
        };
        for f in &p.filters {
            if self.pending_filters.get(f) == Some(&token) {
                self.pending_filters.remove(f);
            }
        }
        for w in &p.waiters {
            w.complete_one();
        }
    }

    /// Sends a connection to its home shard.
    pub fn hand_off(&mut self, home: usize, handoff: Handoff) {
        self.stats.handoffs_out += 1;
        self.outboxes[home].push(MeshMsg::Handoff(Box::new(handoff)));
    }

    /// Closes every connection (shutdown); returns them, to wait for their output.
    pub fn close_all(&mut self) -> Vec<Rc<Conn>> {
        self.stopping = true;
        let mut closing = Vec::new();
        for (_, e) in self.sessions.iter_mut() {
            if let Some(c) = &e.conn {
                if e.bridge {
                    // The remote sees a clean end, not a lost connection.
                    c.write_packet(&Packet::Disconnect);
                }
                c.close_because(DisconnectReason::Shutdown);
                closing.push(c.clone());
            }
        }
        closing
    }

    /// A snapshot of this shard's counters and gauges.
    pub fn snapshot(&self) -> ShardStats {
        let mut s = self.stats.clone();
        s.shard = self.id;
        s.sessions = self.sessions.len();
        s.subscriptions = self.subs.len();
        s.interest_entries = self.interest.len();
        s.shared_groups = self.shared.len();
        s.retained = self.retained.len();
        s.pending_interest = self.pending_interest.len();
        let (mut inflight, mut queued, mut queued_bytes) = (0, 0, 0);
        for (_, e) in self.sessions.iter() {
            let st = e.session.stats();
            inflight += st.inflight;
            queued += st.queued;
            queued_bytes += st.queued_bytes;
        }
        s.inflight = inflight;
        s.queued = queued;
        s.queued_bytes = queued_bytes;
        (s.bytes_received, s.bytes_sent) = crate::link::bytes_moved();
        (s.log_bytes, s.log_snapshot_bytes) = self.log_sizes();
        s
    }
}

/// Delivers the retained messages matching each granted filter of a SUBSCRIBE
/// [MQTT-3.3.1-6], at min(message QoS, granted QoS), retain flag set.
/// Records whether the session's subscription `filter` has No Local.
fn set_no_local(entry: &mut SessionEntry, filter: &ByteString, no_local: bool) {
    if !no_local && entry.no_local_filters.is_none() {
        return;
    }
    let list = entry.no_local_filters.get_or_insert_with(Default::default);
    list.retain(|f| f != filter);
    if no_local {
        list.push(filter.clone());
    }
    if list.is_empty() {
        entry.no_local_filters = None;
    }
}

/// Records whether the session's subscription `filter` has Retain As Published.
fn set_rap(entry: &mut SessionEntry, filter: &ByteString, rap: bool) {
    if !rap && entry.rap_filters.is_none() {
        return;
    }
    let list = entry.rap_filters.get_or_insert_with(Default::default);
    list.retain(|f| f != filter);
    if rap {
        list.push(filter.clone());
    }
    if list.is_empty() {
        entry.rap_filters = None;
    }
}

/// Keeps session `key` in `keys` exactly while it keeps the RETAIN flag of live
/// messages (`SessionEntry::keeps_retain`).
fn update_retain_key(keys: &mut Vec<u32>, key: usize, entry: &SessionEntry) {
    let listed = keys.iter().position(|&k| k as usize == key);
    match (entry.keeps_retain(), listed) {
        (true, None) => keys.push(key as u32),
        (false, Some(i)) => {
            keys.swap_remove(i);
        }
        _ => {}
    }
}

/// The QoS at which a message the session itself published on `topic` comes back to
/// it: the highest among its matching subscriptions without No Local; `None` when
/// there is none. A bridge session gets none of its own.
fn own_delivery_qos(entry: &SessionEntry, topic: &str) -> Option<QoS> {
    if entry.no_local {
        return None;
    }
    let no_local = entry.no_local_filters.as_deref()?;
    entry
        .session
        .subscriptions()
        .filter(|(f, _)| !no_local.contains(f) && topic::matches(f, topic))
        .map(|(_, q)| q)
        .max()
}

fn deliver_retained(
    entry: &mut SessionEntry,
    retained: &Retained,
    stats: &mut ShardStats,
    out: &mut Output,
    sub: &Subscribe,
    codes: &[SubAckCode],
) {
    for (f, code) in sub.filters.iter().zip(codes) {
        // Retained messages are not sent on a shared subscription (MQTT 5.0 §4.8.2).
        if f.retain_handling == RetainHandling::Never || share::is_shared(&f.filter) {
            continue;
        }
        if let SubAckCode::Granted(qos) = *code {
            retained.for_each_match(&f.filter, |m| {
                if !may_read(&entry.auth, &m.topic) {
                    stats.deliveries_refused += 1;
                    return;
                }
                let d = entry.session.deliver(m, qos, out);
                count_delivery(stats, d, &mut entry.session);
            });
        }
    }
}

/// Consecutive QoS 0, non-retained messages on one topic, gathered to be routed as
/// one (see [`Shard::route_pending`]).
#[derive(Default)]
struct Run {
    msgs: Vec<Message>,
    /// Their topics and payloads, in bytes.
    bytes: usize,
}

impl Run {
    /// Whether `msg` can be part of a run at all.
    fn eligible(msg: &Message) -> bool {
        msg.qos == QoS::AtMostOnce && !msg.retain
    }

    /// Whether the messages gathered so far must go before `msg`: it cannot join them
    /// (another topic, not eligible, or the run is full).
    fn breaks(&self, msg: &Message) -> bool {
        let Some(first) = self.msgs.first() else {
            return false;
        };
        let joins = Self::eligible(msg)
            && self.msgs.len() < MAX_RUN
            && self.bytes < MAX_RUN_BYTES
            && first.topic == msg.topic;
        !joins
    }

    fn push(&mut self, msg: Message) {
        self.bytes += msg.topic.len() + msg.payload.len();
        self.msgs.push(msg);
    }

    fn clear(&mut self) {
        self.msgs.clear();
        self.bytes = 0;
    }
}

fn count_delivery(stats: &mut ShardStats, d: Delivery, session: &mut Session) {
    match d {
        Delivery::Sent => stats.delivered += 1,
        Delivery::Queued => {
            stats.queued_total += 1;
            // Queued QoS 0 messages evicted to make room for this one are lost too.
            stats.dropped_evicted_qos0 += session.take_evictions();
        }
        Delivery::Dropped(DropReason::QueueFull) => stats.dropped_queue_full += 1,
        Delivery::Dropped(DropReason::OfflineQoS0) => stats.dropped_offline_qos0 += 1,
        Delivery::Dropped(DropReason::Expired) => stats.dropped_expired += 1,
        Delivery::Dropped(DropReason::TooLarge) => stats.dropped_too_large += 1,
    }
}

/// Writes a session's output packets to its connection, and marks the session not
/// writable once the connection's unsent bytes pass the high-water mark.
fn write_out(
    entry: &mut SessionEntry,
    out: &mut Output,
    high_water: usize,
    stats: &mut ShardStats,
    mut durable: Option<&mut durable::Durable>,
) {
    if entry.conn.is_none() {
        out.packets.clear();
        return;
    }
    stats.dropped_expired += entry.session.take_expired();
    stats.dropped_too_large += entry.session.take_too_large();
    count_sent(stats, &out.packets);
    if let Some(d) = durable.as_deref_mut() {
        durable::filter_output(d, entry, &mut out.packets);
    }
    let Some(conn) = &entry.conn else {
        return;
    };
    conn.write_packets(&mut out.packets);
    if conn.pending() > high_water && !conn.congested() {
        conn.set_congested(true);
        entry.session.set_writable(false, out);
        count_sent(stats, &out.packets);
        if let Some(d) = durable {
            durable::filter_output(d, entry, &mut out.packets);
        }
        if let Some(conn) = &entry.conn {
            conn.write_packets(&mut out.packets);
        }
    }
}

/// What the log records of a packet from a client (with persistence on).
#[derive(Debug, Clone, Copy)]
enum LoggedPacket {
    /// A PUBLISH with this packet id.
    Publish(u16),
    /// PUBREL for an inbound QoS 2 message.
    PubRel(u16),
    /// PUBCOMP for an outbound QoS 2 flow, with the flow's message stamp.
    PubComp(u16, u64),
    /// PUBACK or PUBREC: the session's positions may move.
    Ack,
    Other,
}

/// Counts packets about to be written to a client.
fn count_sent(stats: &mut ShardStats, packets: &[Packet]) {
    stats.packets_sent += packets.len() as u64;
    for p in packets {
        if let Packet::Publish(p) = p {
            stats.publishes_sent_qos[p.qos as usize] += 1;
            stats.publish_bytes_sent += p.payload.len() as u64;
        }
    }
}

/// Whether a topic is one of the broker's own (`$SYS/...`), which clients may
/// read but never publish to.
pub(crate) fn is_sys_topic(topic: &str) -> bool {
    topic.starts_with("$SYS/") || topic == "$SYS"
}

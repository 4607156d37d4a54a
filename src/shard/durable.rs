//! A shard's side of persistence (design §11): its log writer, the acknowledgements
//! that wait for their records to be durable, and the positions its sessions have
//! reached in every shard's stream.
//!
//! The shard appends records as it goes ([`Durable::append`]), synchronously, into
//! the [`SegmentWriter`]'s buffer; the [`committer`] task takes everything appended
//! since the last commit as one batch, writes it and fdatasyncs it (glommio DMA file,
//! io_uring: the shard's other connections run meanwhile), then releases the packets
//! that waited for it. One commit is in flight at a time; whatever is appended
//! meanwhile forms the next batch (group commit, invariant 1).
//!
//! With `fsync = always`, a packet that tells a client something is durable waits
//! ([`Durable::hold`]): PUBACK, PUBREC, PUBCOMP, SUBACK, UNSUBACK, and an outbound
//! QoS 2 PUBLISH or PUBREL whose stage was just logged. Whatever the shard writes to
//! that connection after a held packet waits behind it, so order is kept.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::task::Waker;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytestring::ByteString;

use super::{SessionEntry, Shard};
use crate::config::FsyncPolicy;
use crate::link::Conn;
use crate::message::{pack_stamp, Message, MessageProps};
use crate::protocol::{Packet, QoS};
use crate::store::records::{encode, Expiry, Held, MsgBody, Position, Record, SnapshotBody, Stamp};
use crate::store::replay::{session_lives, Restored, RestoredMsg, Stored};
use crate::store::{Commit, SegmentWriter};

/// How often positions are written (a crash re-sends at most this much of what
/// sessions had acknowledged, for QoS 1).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// A session's positions as last written: per origin, the first record it may
/// still need; `None` when caught up with the horizons.
pub(super) type Lagging = (Option<Box<[(u16, u64)]>>, u16);

struct Waiting {
    need: u64,
    conn: Rc<Conn>,
    packet: Packet,
}

/// See the module docs.
pub struct Durable {
    pub(super) writer: SegmentWriter,
    pub(super) dir: PathBuf,
    pub(super) policy: FsyncPolicy,
    pub(super) interval: Duration,
    /// Every record below this is durable.
    durable: u64,
    waiting: VecDeque<Waiting>,
    /// Per origin shard: the record after the last one received from its stream.
    pub(super) horizons: Vec<u64>,
    /// Horizons as of the last checkpoint written.
    pub(super) checkpointed: Vec<u64>,
    /// Positions last written per persistent session: `None` caught up.
    pub(super) positions: AHashMap<ByteString, Lagging>,
    scratch: Vec<u8>,
    committer: Option<Waker>,
    /// The next commit is fdatasynced whatever the policy (a snapshot, shutdown).
    force_sync: bool,
    /// Segments are written with direct I/O (else through the page cache, on a
    /// filesystem that refuses O_DIRECT).
    pub(super) direct: bool,
    /// Bytes appended (frames) in this generation, and as of the end of the
    /// snapshot it started with.
    appended: u64,
    pub(super) snapshot_bytes: u64,
    /// Bytes written (frames and padding) in this generation.
    written: u64,
    /// Which writer this is (a compaction starts a new one): a commit of an
    /// earlier writer completing says nothing about this one's records.
    pub(super) epoch: u64,
}

impl Durable {
    pub fn new(
        writer: SegmentWriter,
        dir: PathBuf,
        policy: FsyncPolicy,
        interval: Duration,
        shards: usize,
    ) -> Durable {
        Durable {
            durable: writer.next_record(),
            writer,
            dir,
            policy,
            interval,
            waiting: VecDeque::new(),
            horizons: vec![0; shards],
            checkpointed: vec![0; shards],
            positions: AHashMap::new(),
            scratch: Vec::new(),
            committer: None,
            force_sync: false,
            direct: true,
            appended: 0,
            snapshot_bytes: 0,
            written: 0,
            epoch: 0,
        }
    }

    /// Appends a record; returns its number. A record the log cannot take (over
    /// the format's size limit, which configuration validation rules out for
    /// messages) stops the process rather than acknowledge what is not stored.
    pub fn append(&mut self, record: &Record<'_>) -> u64 {
        self.scratch.clear();
        let kind = encode(record, &mut self.scratch);
        match self.writer.append(kind, &self.scratch) {
            Ok(n) => {
                self.appended += (crate::store::FRAME_HEADER + self.scratch.len()) as u64;
                if let Some(w) = self.committer.take() {
                    w.wake();
                }
                n
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot append to the log; stopping");
                std::process::abort();
            }
        }
    }

    fn writer_segment_size(&self) -> u64 {
        self.writer.segment_size()
    }

    /// Number the next record gets.
    pub fn next_record(&self) -> u64 {
        self.writer.next_record()
    }

    /// Whether a packet acknowledging what was appended so far must wait.
    pub fn must_wait(&self) -> bool {
        self.policy == FsyncPolicy::Always && self.durable < self.writer.next_record()
    }

    /// Holds `packet` for `conn` until every record appended so far is durable.
    pub fn hold(&mut self, conn: &Rc<Conn>, packet: Packet) {
        conn.holding.set(conn.holding.get() + 1);
        self.waiting.push_back(Waiting {
            need: self.writer.next_record(),
            conn: conn.clone(),
            packet,
        });
    }

    /// Holds `packets` (all of them once one must wait, or one is already waiting
    /// for this connection) or leaves them to be written now.
    pub fn hold_from(&mut self, conn: &Rc<Conn>, packets: &mut Vec<Packet>, first: usize) {
        if first >= packets.len() {
            return;
        }
        for p in packets.drain(first..) {
            self.hold(conn, p);
        }
    }

    /// The batch to write next, if anything was appended since the last, and
    /// whether it must be fdatasynced whatever the policy.
    pub fn take_commit(&mut self) -> Option<(Commit, bool, PathBuf, u64, bool)> {
        let c = self.writer.commit()?;
        Some((
            c,
            std::mem::take(&mut self.force_sync),
            self.dir.clone(),
            self.epoch,
            self.direct,
        ))
    }

    /// Segments go through the page cache (the filesystem refuses O_DIRECT).
    pub fn set_buffered(&mut self) {
        self.direct = false;
    }

    /// Registers the committer's waker, unless there is something to commit.
    pub fn idle(&mut self, waker: &Waker) -> bool {
        if self.writer.pending() > 0 {
            return false;
        }
        self.committer = Some(waker.clone());
        true
    }

    /// Records below `upto` are durable: writes what waited for them; returns how
    /// many packets went out.
    pub fn completed(&mut self, upto: u64) -> u64 {
        self.durable = self.durable.max(upto);
        let mut sent = 0;
        while self.waiting.front().is_some_and(|w| w.need <= self.durable) {
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            w.conn.holding.set(w.conn.holding.get().saturating_sub(1));
            w.conn.write_packet(&w.packet);
            sent += 1;
        }
        sent
    }

    /// Nothing appended and not yet durable, nothing waiting.
    pub fn settled(&self) -> bool {
        self.writer.pending() == 0 && self.durable >= self.writer.next_record()
    }
}

/// A shard's log writer task: one batch at a time, written, fdatasynced (per the
/// policy), then acknowledged. A failed write or fdatasync stops the process: the
/// log's state on disk is then unknown, and acknowledging anything more would be
/// a lie; recovery at the next start sets the damaged tail aside.
pub async fn committer(shard: Rc<std::cell::RefCell<Shard>>) {
    use crate::store::{segment_file_name, sync_directory, SegmentFile};
    let mut file: Option<SegmentFile> = None;
    let (policy, interval) = {
        let s = shard.borrow();
        let Some(d) = s.durable.as_deref() else {
            return;
        };
        (d.policy, d.interval)
    };
    let fail = |what: &str, e: std::io::Error| -> ! {
        tracing::error!(error = %e, "log {what} failed; stopping");
        std::process::abort();
    };
    loop {
        if policy == FsyncPolicy::Interval {
            glommio::timer::Timer::new(interval).await;
        }
        std::future::poll_fn(|cx| {
            let mut s = shard.borrow_mut();
            let idle = s.durable.as_deref_mut().is_some_and(|d| d.idle(cx.waker()));
            if idle {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        let Some((commit, forced, dir, epoch, direct)) = shard
            .borrow_mut()
            .durable
            .as_deref_mut()
            .and_then(Durable::take_commit)
        else {
            continue;
        };
        let sync = policy != FsyncPolicy::Never || forced;
        let mut created = false;
        for w in &commit.writes {
            if w.new_segment.is_some() {
                if let Some(mut old) = file.take() {
                    if sync {
                        if let Err(e) = old.sync().await {
                            fail("fdatasync", e);
                        }
                    }
                    let _ = old.close().await;
                }
                let path = dir.join(segment_file_name(w.segment));
                match SegmentFile::create(&path, direct).await {
                    Ok(f) => file = Some(f),
                    Err(e) => fail("segment creation", e),
                }
                created = true;
            }
            let Some(f) = file.as_mut() else {
                fail(
                    "write",
                    std::io::Error::other("a write to a segment never created"),
                );
            };
            if let Err(e) = f.write_at(w.offset, &w.bytes).await {
                fail("write", e);
            }
        }
        if sync {
            if let Some(f) = file.as_mut() {
                if let Err(e) = f.sync().await {
                    fail("fdatasync", e);
                }
            }
            if created {
                if let Err(e) = sync_directory(&dir).await {
                    fail("directory sync", e);
                }
            }
        }
        let bytes = commit.writes.iter().map(|w| w.bytes.len() as u64).sum();
        shard
            .borrow_mut()
            .log_durable(epoch, commit.records.end, bytes);
    }
}

fn now_us() -> u64 {
    super::retained::now_us()
}

/// The wall clock and the monotonic one read together: a message's expiry is an
/// [`Instant`] in memory and microseconds since the Unix epoch in the log.
#[derive(Clone, Copy)]
pub(super) struct Clock {
    pub now: Instant,
    pub now_us: u64,
}

impl Clock {
    pub fn read() -> Clock {
        Clock {
            now: Instant::now(),
            now_us: now_us(),
        }
    }

    /// `at` on the wall clock (an instant already past: now).
    fn to_us(self, at: Instant) -> u64 {
        let left = at.saturating_duration_since(self.now).as_micros();
        self.now_us
            .saturating_add(u64::try_from(left).unwrap_or(u64::MAX))
    }

    /// `us` on the monotonic clock (a time already past: now, so that whatever
    /// expires then has expired).
    fn to_instant(self, us: u64) -> Instant {
        let left = Duration::from_micros(us.saturating_sub(self.now_us));
        self.now.checked_add(left).unwrap_or(self.now)
    }
}

fn msg_body<'a>(
    m: &'a Message,
    publisher: Option<(&'a str, u16)>,
    time_us: u64,
    clock: Clock,
) -> MsgBody<'a> {
    let (expires_us, forward) = match m.props.as_deref() {
        Some(p) => (p.expires_at.map(|at| clock.to_us(at)), &p.forward[..]),
        None => (None, &[][..]),
    };
    MsgBody {
        time_us,
        qos: m.qos as u8,
        retain: m.retain,
        publisher,
        topic: &m.topic,
        payload: &m.payload,
        expires_us,
        forward,
        sender: None,
    }
}

/// A restored message's 5.0 properties, its expiry back on the monotonic clock.
fn restored_props(m: &Stored, clock: Clock) -> Option<std::sync::Arc<MessageProps>> {
    let p = m.props.as_deref()?;
    if p.expires_us.is_none() && p.forward.is_empty() {
        return None;
    }
    Some(std::sync::Arc::new(MessageProps {
        expires_at: p.expires_us.map(|us| clock.to_instant(us)),
        forward: p.forward.clone(),
    }))
}

/// Appends a snapshot of every persistent session in `sessions`.
fn append_snapshots(
    d: &mut Durable,
    sessions: &slab::Slab<SessionEntry>,
    shared: &super::shared::Shared,
    horizons: &[(u16, u64)],
    offline_us: impl Fn(u32) -> u64,
) {
    for (_, e) in sessions.iter() {
        if !e.session.clean_session() {
            d.append(&Record::Snapshot(Shard::session_snapshot(
                e,
                shared,
                horizons,
                &offline_us,
            )));
        }
    }
}

/// Before a session's packets are written: logs the outbound QoS 2 stages among
/// them (a fresh QoS 2 PUBLISH with its packet id, PUBREL once PUBREC came) for a
/// persistent session, and holds, from the first packet that must wait for the
/// log on, everything for this connection.
pub(super) fn filter_output(d: &mut Durable, entry: &mut SessionEntry, packets: &mut Vec<Packet>) {
    let Some(conn) = entry.conn.clone() else {
        return;
    };
    let persistent = !entry.session.clean_session();
    let mut first_held = if conn.holding.get() > 0 {
        0
    } else {
        usize::MAX
    };
    for (i, p) in packets.iter().enumerate() {
        let logged = match p {
            Packet::Publish(p) if persistent && p.qos == QoS::ExactlyOnce && !p.dup => {
                let stamp = entry.session.inflight_stamp(p.pkid);
                crate::message::unpack_stamp(stamp).map(|stamp| (stamp, p.pkid, 0))
            }
            Packet::PubRel(pkid) if persistent => {
                let stamp = entry.session.inflight_stamp(*pkid);
                crate::message::unpack_stamp(stamp).map(|stamp| (stamp, *pkid, 1))
            }
            _ => None,
        };
        if let Some((stamp, pid, stage)) = logged {
            d.append(&Record::Out2 {
                client: entry.session.client_id(),
                stamp,
                pid,
                stage,
            });
        }
        let acknowledges = matches!(
            p,
            Packet::PubAck(_)
                | Packet::PubRec(_)
                | Packet::PubComp(_)
                | Packet::SubAck(_)
                | Packet::UnsubAck(_)
        );
        if first_held == usize::MAX && (logged.is_some() || acknowledges) && d.must_wait() {
            first_held = i;
        }
    }
    d.hold_from(&conn, packets, first_held);
}

impl Shard {
    /// With persistence on: logs a message one of this shard's clients published
    /// (QoS 1/2, or retained) and stamps it; for a persistent session's QoS 2
    /// PUBLISH, with the packet id that awaits PUBREL. `sender`: the publishing
    /// client, when its session has No Local subscriptions (see
    /// [`MsgBody::sender`]).
    pub(super) fn log_publish(
        &mut self,
        client: Option<(&str, u16)>,
        sender: Option<&str>,
        msg: &mut Message,
    ) {
        if self.durable.is_none() {
            return;
        }
        // A retained message the store's limits refuse is routed but not kept:
        // logged (at QoS 1/2) as a plain message, so a restart does not keep it.
        let retain = msg.retain && self.retained.would_keep(msg);
        if msg.qos == QoS::AtMostOnce && !retain {
            return;
        }
        let Some(d) = self.durable.as_deref_mut() else {
            return;
        };
        // Held until acknowledged: copied out of the read buffer once, here.
        if msg.qos != QoS::AtMostOnce {
            *msg = msg.compact();
        }
        let clock = Clock::read();
        let mut body = msg_body(msg, client, clock.now_us, clock);
        body.retain = retain;
        body.sender = sender;
        let record = d.append(&Record::Msg(body));
        msg.stamp = pack_stamp(Stamp {
            origin: self.id as u16,
            record,
        })
        .into();
    }

    /// Records below `upto` are durable.
    pub(crate) fn log_durable(&mut self, epoch: u64, upto: u64, bytes: u64) {
        if let Some(d) = self.durable.as_deref_mut() {
            if d.epoch != epoch {
                return;
            }
            d.written += bytes;
            let sent = d.completed(upto);
            self.stats.packets_sent += sent;
            self.stats.log_bytes_written += bytes;
            self.stats.log_commits += 1;
        }
    }

    /// The log's size now and at the start of its generation, for stats.
    pub(super) fn log_sizes(&self) -> (u64, u64) {
        self.durable
            .as_deref()
            .map_or((0, 0), |d| (d.written, d.snapshot_bytes))
    }

    /// Makes the next commit fdatasync whatever the policy, and start at once.
    pub fn log_flush_now(&mut self) {
        if let Some(d) = self.durable.as_deref_mut() {
            d.force_sync = true;
            if let Some(w) = d.committer.take() {
                w.wake();
            }
        }
    }

    /// Whether the log has nothing unwritten and nothing waits for it.
    pub fn log_settled(&self) -> bool {
        self.durable.as_deref().is_none_or(Durable::settled)
    }

    /// Writes `packet` to session `key`'s connection, after what is logged so far
    /// is durable if it acknowledges something.
    pub(super) fn send_ack(&mut self, key: usize, packet: Packet) {
        let Some(conn) = self.sessions[key].conn.clone() else {
            return;
        };
        self.stats.packets_sent += 1;
        match self.durable.as_deref_mut() {
            Some(d) if d.must_wait() || conn.holding.get() > 0 => d.hold(&conn, packet),
            _ => conn.write_packet(&packet),
        }
    }

    pub(super) fn log_record(&mut self, record: &Record<'_>) {
        if let Some(d) = self.durable.as_deref_mut() {
            d.append(record);
        }
    }

    /// A persistent session ended: forget its positions too.
    pub(super) fn log_session_end(&mut self, client: &str) {
        if let Some(d) = self.durable.as_deref_mut() {
            d.append(&Record::End { client });
            d.positions.remove(client);
        }
    }

    /// Where this shard stands in every stream: its own, up to what it appended
    /// (all of it routed: readers route before they yield), the others up to what
    /// arrived from them.
    pub(super) fn horizons(&self) -> Vec<(u16, u64)> {
        let Some(d) = self.durable.as_deref() else {
            return Vec::new();
        };
        let own = self
            .routing
            .iter()
            .filter_map(Message::stamp)
            .map(|s| s.record)
            .min()
            .unwrap_or(d.next_record());
        (0..self.shards)
            .map(|o| {
                let h = if o == self.id { own } else { d.horizons[o] };
                (o as u16, h)
            })
            .collect()
    }

    /// A stamped message arrived from shard `src`'s stream.
    pub(super) fn saw_stamp(&mut self, msg: &Message) {
        if let (Some(d), Some(s)) = (self.durable.as_deref_mut(), msg.stamp()) {
            if let Some(h) = d.horizons.get_mut(usize::from(s.origin)) {
                *h = (*h).max(s.record + 1);
            }
        }
    }

    /// Writes the positions of the sessions that moved since the last checkpoint
    /// (and the horizons, which caught-up sessions follow).
    pub fn checkpoint(&mut self) {
        if self.durable.is_none() {
            return;
        }
        let horizons = self.horizons();
        let mut changed: Vec<(ByteString, Lagging)> = Vec::new();
        let Some(d) = self.durable.as_deref_mut() else {
            return;
        };
        let mut mins: Vec<u64> = vec![u64::MAX; self.shards];
        for (_, e) in self.sessions.iter_mut() {
            if !std::mem::take(&mut e.pos_dirty) || e.session.clean_session() {
                continue;
            }
            mins.iter_mut().for_each(|m| *m = u64::MAX);
            let mut first_pid = 0;
            // A message held with the retain flag is usually a retained copy sent
            // on subscribe, older than the position need be. A session that keeps
            // the flag of live messages (Retain As Published) holds live ones with
            // it too: those count, or a crash could lose them.
            let live_retained = e.keeps_retain();
            e.session.for_each_held(
                |m, pid| {
                    if first_pid == 0 && m.qos == QoS::AtLeastOnce {
                        first_pid = pid;
                    }
                    if let (false, Some(s)) = (m.retain && !live_retained, m.stamp()) {
                        if let Some(x) = mins.get_mut(usize::from(s.origin)) {
                            *x = (*x).min(s.record);
                        }
                    }
                },
                |_, _| {},
            );
            let lag: Vec<(u16, u64)> = mins
                .iter()
                .enumerate()
                .filter(|(_, &m)| m != u64::MAX)
                .map(|(o, &m)| (o as u16, m))
                .collect();
            let now = ((!lag.is_empty()).then(|| lag.into_boxed_slice()), first_pid);
            let client = e.session.client_id();
            if d.positions.get(client) != Some(&now) {
                d.positions.insert(client.clone(), now.clone());
                changed.push((client.clone(), now));
            }
        }
        let moved = horizons
            .iter()
            .map(|&(_, h)| h)
            .ne(d.checkpointed.iter().copied());
        // Caught-up sessions follow the horizons: a checkpoint is due when they
        // moved, if any session has positions at all.
        let horizons_due = moved && !d.positions.is_empty();
        if changed.is_empty() && !horizons_due {
            return;
        }
        d.checkpointed = horizons.iter().map(|&(_, h)| h).collect();
        let sessions = changed
            .iter()
            .map(|(c, (p, first_pid))| Position {
                client: c,
                lagging: p.as_ref().map(|b| b.to_vec()),
                first_pid: *first_pid,
            })
            .collect();
        d.append(&Record::Checkpoint { horizons, sessions });
    }

    /// One session, whole, for a snapshot: its messages named by their stamps.
    /// `offline_us` turns the entry's `offline_since` into wall-clock time.
    pub(super) fn session_snapshot<'a>(
        e: &'a SessionEntry,
        shared: &'a super::shared::Shared,
        horizons: &[(u16, u64)],
        offline_us: impl Fn(u32) -> u64,
    ) -> SnapshotBody<'a> {
        let mut held = Vec::new();
        let mut released = Vec::new();
        let mut groups = Vec::new();
        e.session.for_each_held_tagged(
            |m, pid, tag| {
                if let Some(stamp) = m.stamp() {
                    if let Some(g) = shared.get(tag) {
                        groups.push((held.len() as u32, &*g.name));
                    }
                    held.push(Held {
                        stamp,
                        qos: m.qos as u8,
                        pid,
                        retain: m.retain,
                    });
                }
            },
            |pid, _| released.push(pid),
        );
        SnapshotBody {
            client: e.session.client_id(),
            horizons: horizons.to_vec(),
            subs: e
                .session
                .subscriptions()
                .map(|(f, q)| (&**f, q as u8, e.sub_opts(f)))
                .collect(),
            awaiting_pubrel: e.session.awaiting_pubrel().collect(),
            released,
            held,
            groups,
            expiry: e.expiry.map(|interval| Expiry {
                interval,
                offline_us: if e.conn.is_some() || e.offline_since == 0 {
                    0
                } else {
                    offline_us(e.offline_since)
                },
            }),
        }
    }

    /// At shutdown: every persistent session restated whole (with the packet ids
    /// of its QoS 1 flows in flight), so the next start resumes exactly.
    pub fn snapshot_sessions(&mut self) {
        if self.durable.is_none() {
            return;
        }
        let horizons = self.horizons();
        let offline_us = self.offline_clock();
        let Shard {
            sessions,
            durable,
            shared,
            ..
        } = self;
        if let Some(d) = durable.as_deref_mut() {
            append_snapshots(d, sessions, shared, &horizons, offline_us);
        }
    }

    /// Turns an offline session's `offline_since` (seconds since the shard
    /// started, plus one) into microseconds since the Unix epoch.
    pub(super) fn offline_clock(&self) -> impl Fn(u32) -> u64 {
        let clock = Clock::read();
        let now_secs = u64::from(self.secs_since_start(clock.now));
        move |since: u32| {
            let ago = (now_secs + 1).saturating_sub(u64::from(since));
            clock.now_us.saturating_sub(ago * 1_000_000)
        }
    }

    /// Logs a persistent session's expiry as it changed hands or went offline:
    /// a 5.0 client's interval and the time it left (0: connected), or, for a
    /// 3.1.1 client taking over a session a 5.0 one had, that it has none.
    pub(super) fn log_expiry(&mut self, key: usize, had_expiry: bool) {
        let Some(d) = self.durable.as_deref_mut() else {
            return;
        };
        let e = &self.sessions[key];
        if e.session.clean_session() || (e.expiry.is_none() && !had_expiry) {
            return;
        }
        let expiry = e.expiry.map(|interval| Expiry {
            interval,
            offline_us: if e.conn.is_some() { 0 } else { now_us() },
        });
        d.append(&Record::Expiry {
            client: e.session.client_id(),
            expiry,
        });
    }

    /// At start, with persistence on: takes the sessions homed here and the
    /// retained messages from what recovery restored, records every other shard's
    /// restored subscriptions in the interest replica, and writes the snapshot
    /// that starts this shard's log in the new generation (shard 0 writes the
    /// retained messages first, so every shard knows their stamps: 0..R of shard
    /// 0's log). Returns the messages the queue bounds turned away.
    pub fn restore(&mut self, restored: &Restored, now: std::time::Instant) -> usize {
        let clock = Clock {
            now,
            now_us: now_us(),
        };
        let Some(d) = self.durable.as_deref_mut() else {
            return 0;
        };
        let id = self.id;
        // Retained messages, in every replica.
        for (i, (_, m)) in restored.retained.iter().enumerate() {
            let stamp = Stamp {
                origin: 0,
                record: i as u64,
            };
            let msg = Message {
                topic: m.topic.clone(),
                payload: m.payload.clone(),
                qos: m.qos,
                retain: true,
                stamp: pack_stamp(stamp).into(),
                props: restored_props(m, clock),
            };
            if id == 0 {
                let r = d.append(&Record::SnapMsg(msg_body(&msg, None, m.time_us, clock)));
                debug_assert_eq!(r, i as u64);
            }
            self.retained.apply(&msg, (0, 0));
        }
        // Sessions: their message bodies once per shard, then the sessions.
        let mut copies: AHashMap<Stamp, u64> = AHashMap::new();
        let mut dropped = 0;
        for r in &restored.sessions {
            let home = super::home_shard(&r.client_id, self.shards);
            if home != id {
                for (f, _) in &r.subs {
                    if crate::topic::share::is_shared(f) {
                        self.shared
                            .add_shard(&ByteString::from(f.as_str()), home as u16);
                    } else {
                        self.interest.insert(f, home as u16, ());
                    }
                }
                continue;
            }
            let Some(d) = self.durable.as_deref_mut() else {
                return dropped;
            };
            let mut message = |m: &RestoredMsg| -> Message {
                let props = m.msg.props.as_deref();
                let record = *copies.entry(m.stamp).or_insert_with(|| {
                    // Copies held by sessions are never retained updates.
                    d.append(&Record::SnapMsg(MsgBody {
                        time_us: m.msg.time_us,
                        qos: m.msg.qos as u8,
                        retain: false,
                        publisher: None,
                        topic: &m.msg.topic,
                        payload: &m.msg.payload,
                        expires_us: props.and_then(|p| p.expires_us),
                        forward: props.map_or(&[][..], |p| &p.forward[..]),
                        sender: None,
                    }))
                });
                Message {
                    topic: m.msg.topic.clone(),
                    payload: m.msg.payload.clone(),
                    qos: m.qos,
                    retain: m.retain,
                    stamp: pack_stamp(Stamp {
                        origin: id as u16,
                        record,
                    })
                    .into(),
                    props: restored_props(&m.msg, clock),
                }
            };
            // The shared group each message came through, where the session is
            // still a member (it becomes one just below).
            let shared = &mut self.shared;
            let mut group_of = |m: &RestoredMsg| match &m.group {
                Some(g) if r.subs.iter().any(|(f, _)| f == g) => {
                    shared.ensure(&ByteString::from(g.as_str()))
                }
                _ => 0,
            };
            let inflight: Vec<(u16, Message, u32)> = r
                .inflight
                .iter()
                .map(|(p, m)| (*p, message(m), group_of(m)))
                .collect();
            let queued: Vec<(Message, u32)> =
                r.queued.iter().map(|m| (message(m), group_of(m))).collect();
            let client = ByteString::from(r.client_id.as_str());
            let mut session = crate::session::Session::new(client, false, self.limits.clone());
            for (f, q) in &r.subs {
                session.subscribe(ByteString::from(f.as_str()), *q);
            }
            for (f, o) in &r.sub_opts {
                session.set_subscription_id(
                    &ByteString::from(f.as_str()),
                    std::num::NonZeroU32::new(o.id),
                );
            }
            let released: Vec<(u16, u64)> = r.released.iter().map(|&p| (p, 0)).collect();
            dropped += session.restore(
                &r.awaiting_pubrel,
                &released,
                inflight,
                queued,
                r.maybe_sent.then_some(r.first_pid),
            );
            let mut entry = SessionEntry::offline(session, 0);
            entry.offline_since = self.secs_since_start(now) + 1;
            entry.pos_dirty = true;
            // A 5.0 session's expiry counts on from when its client left: what is
            // left of it, from now (recovery dropped those already over).
            entry.expiry = r.expiry.map(|e| {
                session_lives(e, clock.now_us)
                    .unwrap_or(1)
                    .min(self.cfg.max_session_expiry)
            });
            for (f, o) in &r.sub_opts {
                let f = ByteString::from(f.as_str());
                super::set_no_local(&mut entry, &f, o.no_local);
                super::set_rap(&mut entry, &f, o.retain_as_published);
            }
            let key = self.sessions.insert(entry);
            self.file_due(key);
            super::update_retain_key(&mut self.retain_keys, key, &self.sessions[key]);
            for (f, q) in &r.subs {
                if crate::topic::share::is_shared(f) {
                    self.shared.add_member(
                        id as u16,
                        &ByteString::from(f.as_str()),
                        key as u32,
                        *q,
                    );
                } else {
                    self.subs.insert(f, key as u32, *q);
                }
            }
            self.by_client.insert(&self.sessions, key);
        }
        let horizons: Vec<(u16, u64)> = (0..self.shards).map(|o| (o as u16, 0)).collect();
        let offline_us = self.offline_clock();
        let Shard {
            sessions,
            durable,
            shared,
            ..
        } = self;
        if let Some(d) = durable.as_deref_mut() {
            append_snapshots(d, sessions, shared, &horizons, offline_us);
            d.snapshot_bytes = d.appended;
        }
        dropped
    }

    /// Compaction, with every shard quiescent (no client read, the mesh drained)
    /// and this shard's log settled: starts the log of generation `dir`'s with a
    /// snapshot of the live state, the messages held by its persistent sessions
    /// copied once and restamped, and (shard 0) the retained messages, numbered in
    /// topic order so every shard restamps its replica alike. The old generation
    /// is dropped once every shard's snapshot is durable and current.
    pub fn compact_into(&mut self, dir: PathBuf) {
        let Some(mut old) = self.durable.take() else {
            return;
        };
        let writer = SegmentWriter::new(
            crate::store::WriterConfig {
                shard: self.id as u16,
                segment_size: old.writer_segment_size(),
            },
            crate::store::Resume::Create {
                segment: 0,
                next_record: 0,
            },
        );
        let mut d = Durable::new(writer, dir, old.policy, old.interval, self.shards);
        d.epoch = old.epoch + 1;
        d.direct = old.direct;
        // Nothing should wait (the old log was settled); whatever does, waits for
        // the new log's first commit.
        for mut w in old.waiting.drain(..) {
            w.need = 0;
            d.waiting.push_back(w);
        }
        let id = self.id as u16;
        let retained = self.retained.restamp(|i| {
            pack_stamp(Stamp {
                origin: 0,
                record: i,
            })
        });
        let clock = Clock::read();
        if id == 0 {
            for m in &retained {
                d.append(&Record::SnapMsg(msg_body(m, None, 0, clock)));
            }
        }
        let mut copies: AHashMap<u64, u64> = AHashMap::new();
        for (_, e) in self.sessions.iter_mut() {
            e.pos_dirty = true;
            if e.session.clean_session() {
                e.session.restamp(|_| 0);
                continue;
            }
            e.session.restamp(|m| {
                if !m.stamp.is_set() {
                    return 0;
                }
                let record = *copies.entry(m.stamp.get()).or_insert_with(|| {
                    d.append(&Record::SnapMsg(MsgBody {
                        retain: false,
                        ..msg_body(m, None, 0, clock)
                    }))
                });
                pack_stamp(Stamp { origin: id, record })
            });
        }
        let horizons: Vec<(u16, u64)> = (0..self.shards).map(|o| (o as u16, 0)).collect();
        let offline_us = self.offline_clock();
        append_snapshots(&mut d, &self.sessions, &self.shared, &horizons, offline_us);
        d.snapshot_bytes = d.appended;
        d.force_sync = true;
        // The committer waits on the old writer's waker.
        if let Some(w) = old.committer.take() {
            w.wake();
        }
        self.stats.log_compactions += 1;
        self.durable = Some(Box::new(d));
    }
}

impl Shard {
    /// Logs what a packet from session `key`'s client changed of its durable state.
    pub(super) fn log_packet(&mut self, key: usize, packet: super::LoggedPacket) {
        use super::LoggedPacket as L;
        let e = &mut self.sessions[key];
        if e.session.clean_session() {
            return;
        }
        let client = e.session.client_id().clone();
        match packet {
            L::PubRel(pid) => self.log_record(&Record::Rel {
                client: &client,
                pid,
            }),
            L::PubComp(pid, stamp) => {
                e.pos_dirty = true;
                // A flow restored or compacted past PUBREC has no stamp: the
                // record frees its packet id all the same.
                let stamp = crate::message::unpack_stamp(stamp).unwrap_or(Stamp {
                    origin: u16::MAX,
                    record: u64::MAX,
                });
                self.log_record(&Record::Out2 {
                    client: &client,
                    stamp,
                    pid,
                    stage: 2,
                });
            }
            L::Ack => e.pos_dirty = true,
            L::Publish(_) | L::Other => {}
        }
    }
}

//! Rebuilding the broker's durable state from the records of one generation's logs,
//! sans-IO (design §11, invariant 2).
//!
//! Feed every shard's records with [`Replay::record`], each shard's in log order
//! (shards in any order), then [`Replay::finish`]: the persistent sessions (their
//! subscriptions, inbound QoS 2 state, and the messages they hold, in flight and
//! queued) and the retained messages.
//!
//! A session's messages are found the way they were written (see
//! [`crate::store::records`]): the ones a snapshot named, still past the session's
//! position; then every message of every stream past the session's position that
//! one of its subscriptions matches (from the record the subscription was made at),
//! at the highest QoS granted, in the order they were accepted. A QoS 1 message a
//! session acknowledged after its last checkpoint comes again (with a new packet id,
//! as a QoS 1 message may); a QoS 2 flow's stage is recorded as it changes, so its
//! message comes again only with its original packet id, and not at all once PUBREC
//! has come.
//!
//! Shared subscriptions (`$share/...`) are never re-matched: each of their messages
//! went to one member only. A message given to a persistent member is named by a
//! [`Record::Assign`] on the member's shard (and a [`Record::Unassign`] if the
//! member gave it back to the group); it comes back to that member if it is past
//! the member's position, or was assigned after the last checkpoint of the
//! member's shard (which could not yet account for it).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use bytestring::ByteString;

use super::records::{decode, BadRecord, Expiry, Held, MsgBody, Record, Stamp, SubOpts};
use crate::protocol::{topic, QoS};
use crate::topic::share;

/// A message as the logs hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub time_us: u64,
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Published on its shard (a [`Record::Msg`]), so matched against subscriptions
    /// again; a snapshot's copy is only ever named.
    pub published: bool,
    /// What a 5.0 publisher gave beyond topic and payload; `None` for most.
    pub props: Option<Box<StoredProps>>,
}

/// The 5.0 fields of a [`Stored`] message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredProps {
    /// When its Message Expiry Interval runs out (microseconds since the Unix
    /// epoch); `None`: never.
    pub expires_us: Option<u64>,
    /// The properties forwarded with it, wire bytes in order.
    pub forward: Bytes,
    /// Its publisher, when that session had No Local subscriptions.
    pub sender: Option<String>,
}

/// A message a restored session holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredMsg {
    pub stamp: Stamp,
    pub msg: Stored,
    /// QoS it goes out with.
    pub qos: QoS,
    /// Sent with the retain flag (a retained message sent on subscribe).
    pub retain: bool,
    /// The shared group (`$share/...`) it came through, if any.
    pub group: Option<String>,
}

/// One persistent session, as it stood at the end of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoredSession {
    pub client_id: String,
    pub subs: Vec<(String, QoS)>,
    /// The 5.0 options of those of `subs` that have any.
    pub sub_opts: Vec<(String, SubOpts)>,
    /// A 5.0 session's Session Expiry Interval and when it went offline; `None`
    /// for a 3.1.1 session (`persistent_client_expiration` applies).
    pub expiry: Option<Expiry>,
    pub awaiting_pubrel: Vec<u16>,
    /// Outbound QoS 2 flows past PUBREC: only PUBREL is resent.
    pub released: Vec<u16>,
    /// Sent and not acknowledged, with their packet ids, in send order.
    pub inflight: Vec<(u16, RestoredMsg)>,
    /// Not sent yet, in order.
    pub queued: Vec<RestoredMsg>,
    /// The queued messages may have been sent before (the log does not end with
    /// this session's snapshot): they go out with DUP set.
    pub maybe_sent: bool,
    /// With `maybe_sent`: the packet id the first queued message had in flight,
    /// the next ones following it (see [`crate::store::records::Position`]); 0:
    /// unknown.
    pub first_pid: u16,
}

impl Restored {
    /// Drops the 5.0 sessions whose Session Expiry Interval has run out at `now_us`
    /// (microseconds since the Unix epoch): offline past their interval, or with
    /// an interval of 0 (they end with their connection, which the restart ended).
    /// A session that was connected when the log ended counts from now. Returns
    /// how many were dropped.
    pub fn expire_sessions(&mut self, now_us: u64) -> usize {
        let before = self.sessions.len();
        self.sessions.retain(|s| match s.expiry {
            None => true,
            Some(e) => session_lives(e, now_us).is_some(),
        });
        before - self.sessions.len()
    }
}

/// Seconds left of a 5.0 session's expiry at `now_us` (`u32::MAX`: never ends;
/// rounded up), or `None` once it has run out.
pub fn session_lives(e: Expiry, now_us: u64) -> Option<u32> {
    match e.interval {
        0 => None,
        u32::MAX => Some(u32::MAX),
        secs if e.offline_us == 0 => Some(secs),
        secs => {
            let end = e.offline_us.saturating_add(u64::from(secs) * 1_000_000);
            let left = end.checked_sub(now_us).filter(|&l| l > 0)?;
            Some(left.div_ceil(1_000_000).min(u64::from(secs)) as u32)
        }
    }
}

/// Everything [`Replay::finish`] restores.
#[derive(Debug, Default)]
pub struct Restored {
    pub sessions: Vec<RestoredSession>,
    /// Retained messages (stamp, message), newest per topic, deletions applied.
    pub retained: Vec<(Stamp, Stored)>,
    /// Records whose body did not parse (their frames' checksums were right: written
    /// by a newer version, or a bug), skipped.
    pub bad_records: u64,
    /// Messages in the logs, for the report.
    pub messages: u64,
}

#[derive(Debug, Default)]
struct Sub {
    qos: u8,
    opts: SubOpts,
    /// Per origin: the first record the subscription applies to.
    horizons: Vec<(u16, u64)>,
}

#[derive(Debug, Default)]
struct Sess {
    subs: BTreeMap<String, Sub>,
    /// A 5.0 session's expiry (see [`RestoredSession::expiry`]).
    expiry: Option<Expiry>,
    /// Per origin, the first record the session may still need (absent: 0).
    from: HashMap<u16, u64>,
    /// Caught up with the horizons of the last checkpoint of this shard.
    caught_on: Option<u16>,
    /// What its last snapshot named (in flight first), and from where matching
    /// messages were not yet in it.
    named: Vec<Held>,
    /// The shared groups some of `named` came through, by index.
    named_groups: HashMap<u32, String>,
    snap_horizons: HashMap<u16, u64>,
    awaiting_pubrel: HashSet<u16>,
    /// Outbound QoS 2 flows: stamp → (packet id, stage).
    out2: HashMap<Stamp, (u16, u8)>,
    /// Released flows a snapshot named (PUBREL pending), by packet id.
    released: Vec<u16>,
    /// Nothing about the session was logged after its last snapshot.
    exact: bool,
    /// From its last position: the packet id of its oldest message in flight.
    first_pid: u16,
    /// Messages given to it by shared groups since its last snapshot.
    assigned: Vec<Assigned>,
    /// Messages its last snapshot named as come through a group that it gave back
    /// to the group since ([`Record::Unassign`]).
    unassigned: HashSet<Stamp>,
    /// The assignments in force before its last snapshot (counted in
    /// [`Replay::given`]): those of `named` that this replay saw given.
    pre_snapshot: HashSet<(Stamp, String)>,
}

/// A [`Record::Assign`] still in force.
#[derive(Debug)]
struct Assigned {
    stamp: Stamp,
    group: String,
    qos: u8,
    /// The log that holds the record, and the record's number there.
    log: u16,
    at: u64,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Replay {
    streams: HashMap<u16, BTreeMap<u64, Stored>>,
    sessions: HashMap<String, Sess>,
    /// Latest checkpoint horizons per shard log.
    horizons: HashMap<u16, HashMap<u16, u64>>,
    /// Record number of the latest checkpoint per shard log.
    checkpoint_at: HashMap<u16, u64>,
    /// Every message a shared group gave to any member (persistent or not), by
    /// stamp and group: the number of its assignments not given back since.
    given: HashMap<(Stamp, String), u32>,
    /// Messages a persistent member gave back to their group (by stamp and group):
    /// if no assignment is in force for one at the end, the member that should
    /// have got it next was not recorded before the crash (its shard's log ends
    /// earlier than the giver's), and recovery gives it to a member as an orphan.
    given_back: HashSet<(Stamp, String)>,
    bad_records: u64,
}

fn stored(m: &MsgBody<'_>, published: bool) -> Option<Stored> {
    let has_props = m.expires_us.is_some() || !m.forward.is_empty() || m.sender.is_some();
    Some(Stored {
        time_us: m.time_us,
        topic: ByteString::from(m.topic),
        payload: Bytes::copy_from_slice(m.payload),
        qos: QoS::from_u8(m.qos)?,
        retain: m.retain,
        published,
        props: has_props.then(|| {
            Box::new(StoredProps {
                expires_us: m.expires_us,
                forward: Bytes::copy_from_slice(m.forward),
                sender: m.sender.map(str::to_owned),
            })
        }),
    })
}

impl Stored {
    /// Its publisher, if the log kept it (see [`MsgBody::sender`]).
    fn sender(&self) -> Option<&str> {
        self.props.as_ref()?.sender.as_deref()
    }
}

impl Replay {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record `record` of shard `shard`'s log, of kind `kind`.
    pub fn record(&mut self, shard: u16, record: u64, kind: u8, body: &[u8]) {
        match decode(kind, body) {
            Ok(r) => self.apply(shard, record, r),
            Err(BadRecord::UnknownKind(_)) | Err(_) => self.bad_records += 1,
        }
    }

    fn apply(&mut self, shard: u16, record: u64, r: Record<'_>) {
        let published = matches!(r, Record::Msg(_));
        match r {
            Record::Msg(m) | Record::SnapMsg(m) => {
                if let Some((client, pid)) = m.publisher {
                    if let Some(s) = self.sessions.get_mut(client) {
                        s.awaiting_pubrel.insert(pid);
                    }
                }
                match stored(&m, published) {
                    Some(s) => {
                        self.streams.entry(shard).or_default().insert(record, s);
                    }
                    None => self.bad_records += 1,
                }
            }
            Record::Rel { client, pid } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.awaiting_pubrel.remove(&pid);
                    s.exact = false;
                }
            }
            Record::Session { client, expiry } => {
                let s = Sess {
                    // Connected as it began.
                    expiry: expiry.map(|interval| Expiry {
                        interval,
                        offline_us: 0,
                    }),
                    ..Sess::default()
                };
                self.sessions.insert(client.to_owned(), s);
            }
            Record::Expiry { client, expiry } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.expiry = expiry;
                }
            }
            Record::End { client } => {
                self.sessions.remove(client);
            }
            Record::Sub {
                client,
                filter,
                qos,
                opts,
                horizons,
            } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.subs.insert(
                        filter.to_owned(),
                        Sub {
                            qos,
                            opts,
                            horizons,
                        },
                    );
                    s.exact = false;
                }
            }
            Record::Unsub { client, filter } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.subs.remove(filter);
                    s.exact = false;
                }
            }
            Record::Checkpoint { horizons, sessions } => {
                let h: HashMap<u16, u64> = horizons.into_iter().collect();
                for p in sessions {
                    let Some(s) = self.sessions.get_mut(p.client) else {
                        continue;
                    };
                    s.exact = false;
                    s.first_pid = p.first_pid;
                    match p.lagging {
                        None => s.caught_on = Some(shard),
                        Some(pairs) => {
                            s.caught_on = None;
                            s.from = h.clone();
                            s.from.extend(pairs);
                        }
                    }
                }
                self.horizons.insert(shard, h);
                self.checkpoint_at.insert(shard, record);
            }
            Record::Assign {
                client,
                group,
                stamp,
                qos,
            } => {
                *self.given.entry((stamp, group.to_owned())).or_insert(0) += 1;
                if let Some(s) = self.sessions.get_mut(client) {
                    s.assigned.push(Assigned {
                        stamp,
                        group: group.to_owned(),
                        qos,
                        log: shard,
                        at: record,
                    });
                    s.exact = false;
                }
            }
            Record::Unassign { client, stamp } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    let (given, given_back) = (&mut self.given, &mut self.given_back);
                    let mut gave_back = |group: &str, counted: bool| {
                        let key = (stamp, group.to_owned());
                        if counted {
                            if let Some(n) = given.get_mut(&key) {
                                *n = n.saturating_sub(1);
                            }
                        }
                        given_back.insert(key);
                    };
                    s.assigned.retain(|a| {
                        if a.stamp == stamp {
                            gave_back(&a.group, true);
                        }
                        a.stamp != stamp
                    });
                    // Named by its snapshot as come through a group: given back too.
                    if !s.unassigned.contains(&stamp) {
                        let mut named_back = false;
                        for (i, h) in s.named.iter().enumerate() {
                            if h.stamp != stamp {
                                continue;
                            }
                            if let Some(group) = s.named_groups.get(&(i as u32)) {
                                let counted = s.pre_snapshot.remove(&(stamp, group.clone()));
                                gave_back(group, counted);
                                named_back = true;
                            }
                        }
                        if named_back {
                            s.unassigned.insert(stamp);
                        }
                    }
                    s.exact = false;
                }
            }
            Record::Out2 {
                client,
                stamp,
                pid,
                stage,
            } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    if stage == 2 {
                        // Complete: the packet id is free again, whichever flow
                        // (by stamp, or named by a snapshot without one) held it.
                        s.released.retain(|&p| p != pid);
                        for v in s.out2.values_mut() {
                            if v.0 == pid && v.1 == 1 {
                                v.1 = 2;
                            }
                        }
                    }
                    s.out2.insert(stamp, (pid, stage));
                    s.exact = false;
                }
            }
            Record::Snapshot(snap) => {
                let pre_snapshot = self
                    .sessions
                    .remove(snap.client)
                    .map(|old| {
                        let mut pre = old.pre_snapshot;
                        pre.extend(old.assigned.into_iter().map(|a| (a.stamp, a.group)));
                        pre
                    })
                    .unwrap_or_default();
                let s = Sess {
                    subs: snap
                        .subs
                        .iter()
                        .map(|&(f, qos, opts)| {
                            (
                                f.to_owned(),
                                Sub {
                                    qos,
                                    opts,
                                    horizons: Vec::new(),
                                },
                            )
                        })
                        .collect(),
                    expiry: snap.expiry,
                    // The named messages are all still needed; matching resumes at
                    // the horizons.
                    from: HashMap::new(),
                    caught_on: None,
                    named: snap.held,
                    named_groups: snap
                        .groups
                        .iter()
                        .map(|&(i, g)| (i, g.to_owned()))
                        .collect(),
                    snap_horizons: snap.horizons.into_iter().collect(),
                    awaiting_pubrel: snap.awaiting_pubrel.into_iter().collect(),
                    out2: HashMap::new(),
                    released: snap.released,
                    exact: true,
                    first_pid: 0,
                    assigned: Vec::new(),
                    unassigned: HashSet::new(),
                    pre_snapshot,
                };
                self.sessions.insert(snap.client.to_owned(), s);
            }
        }
    }

    /// The state at the end of the logs.
    pub fn finish(self) -> Restored {
        let Replay {
            streams,
            sessions,
            horizons,
            checkpoint_at,
            given,
            given_back,
            bad_records,
        } = self;
        let mut out = Restored {
            bad_records,
            messages: streams.values().map(|s| s.len() as u64).sum(),
            ..Restored::default()
        };
        // Retained: the newest message per topic; an empty one deletes.
        let mut retained: HashMap<&ByteString, (u64, Stamp, &Stored)> = HashMap::new();
        for (&origin, stream) in &streams {
            for (&record, m) in stream.iter().filter(|(_, m)| m.retain) {
                let stamp = Stamp { origin, record };
                let newer = retained
                    .get(&m.topic)
                    .is_none_or(|&(t, s, _)| (m.time_us, stamp) > (t, s));
                if newer {
                    retained.insert(&m.topic, (m.time_us, stamp, m));
                }
            }
        }
        out.retained = retained
            .into_values()
            .filter(|(_, _, m)| !m.payload.is_empty())
            .map(|(_, stamp, m)| (stamp, m.clone()))
            .collect();
        out.retained.sort_by_key(|(s, _)| *s);

        let mut names: Vec<&String> = sessions.keys().collect();
        names.sort();
        let orphans = orphans(&streams, &sessions, &names, &given, &given_back);
        let sent = sent_through_groups(&sessions);
        // A QoS 2 message a group gave this session and that another member was
        // sent (the giver's UNASSIGN was not durable at the crash, the receiver's
        // ASSIGN and PUBLISH stage were): it stays with the one it was sent to.
        let sent_elsewhere = |client: &str, stamp: Stamp, group: &str, own_sent: bool| {
            !own_sent
                && sent
                    .get(&(stamp, group))
                    .is_some_and(|others| others.iter().any(|&c| c != client))
        };
        for client in names {
            let s = &sessions[client];
            let from = match s.caught_on {
                Some(shard) => horizons.get(&shard).cloned().unwrap_or_default(),
                None => s.from.clone(),
            };
            let from_of = |o: u16| from.get(&o).copied().unwrap_or(0);
            let mut r = RestoredSession {
                client_id: client.clone(),
                subs: s
                    .subs
                    .iter()
                    .filter_map(|(f, sub)| Some((f.clone(), QoS::from_u8(sub.qos)?)))
                    .collect(),
                sub_opts: s
                    .subs
                    .iter()
                    .filter(|(_, sub)| sub.opts != SubOpts::default())
                    .map(|(f, sub)| (f.clone(), sub.opts))
                    .collect(),
                expiry: s.expiry,
                awaiting_pubrel: {
                    let mut v: Vec<u16> = s.awaiting_pubrel.iter().copied().collect();
                    v.sort_unstable();
                    v
                },
                ..RestoredSession::default()
            };
            let mut used_pids: HashSet<u16> = HashSet::new();
            let mut released: Vec<u16> = s.released.clone();
            for (_, &(pid, stage)) in s.out2.iter() {
                if stage == 1 {
                    released.push(pid);
                }
            }
            released.retain(|&p| p != 0);
            released.sort_unstable();
            released.dedup();
            used_pids.extend(released.iter().copied());
            r.released = released;
            let mut place = |r: &mut RestoredSession, m: RestoredMsg, pid: u16| {
                if m.qos == QoS::AtMostOnce {
                    return;
                }
                match s.out2.get(&m.stamp) {
                    // Complete, or PUBREL pending: the PUBLISH never goes again.
                    Some(&(_, 1 | 2)) => return,
                    Some(&(p, _)) if m.qos == QoS::ExactlyOnce && p != 0 && used_pids.insert(p) => {
                        r.inflight.push((p, m));
                        return;
                    }
                    _ => {}
                }
                if pid != 0 && used_pids.insert(pid) {
                    r.inflight.push((pid, m));
                } else {
                    r.queued.push(m);
                }
            };
            // What the last snapshot named, past the session's positions.
            for (i, h) in s.named.iter().enumerate() {
                if h.stamp.record < from_of(h.stamp.origin) {
                    continue;
                }
                // Given back to its group since the snapshot.
                if s.unassigned.contains(&h.stamp) && s.named_groups.contains_key(&(i as u32)) {
                    continue;
                }
                if let Some(g) = s.named_groups.get(&(i as u32)) {
                    let own_sent = h.pid != 0 || s.out2.contains_key(&h.stamp);
                    if h.qos == 2 && sent_elsewhere(client, h.stamp, g, own_sent) {
                        continue;
                    }
                }
                let Some(m) = streams
                    .get(&h.stamp.origin)
                    .and_then(|st| st.get(&h.stamp.record))
                else {
                    continue;
                };
                let m = RestoredMsg {
                    stamp: h.stamp,
                    msg: m.clone(),
                    qos: QoS::from_u8(h.qos).unwrap_or(QoS::AtLeastOnce),
                    retain: h.retain,
                    group: s.named_groups.get(&(i as u32)).cloned(),
                };
                place(&mut r, m, h.pid);
            }
            // Every published message past the positions that a subscription matches.
            let mut matched: Vec<Matched<'_>> = Vec::new();
            for (&origin, stream) in &streams {
                let start = from_of(origin).max(s.snap_horizons.get(&origin).copied().unwrap_or(0));
                for (&record, m) in stream.range(start..).filter(|(_, m)| m.published) {
                    let mut best: Option<QoS> = None;
                    let mut keep_retain = false;
                    let own = m.sender() == Some(client.as_str());
                    for (filter, sub) in &s.subs {
                        if share::is_shared(filter) || (own && sub.opts.no_local) {
                            continue;
                        }
                        let applies = sub
                            .horizons
                            .iter()
                            .find(|(o, _)| *o == origin)
                            .is_none_or(|&(_, h)| record >= h);
                        if applies && topic::matches(filter, &m.topic) {
                            let q = QoS::from_u8(sub.qos).unwrap_or(QoS::AtMostOnce);
                            best = Some(best.map_or(q, |b| b.max(q)));
                            keep_retain |= sub.opts.retain_as_published;
                        }
                    }
                    if let Some(q) = best {
                        let retain = keep_retain && m.retain;
                        matched.push((m.time_us, Stamp { origin, record }, m, q, None, retain));
                    }
                }
            }
            // What shared groups gave it: past its position, or given after its
            // shard's last checkpoint.
            for a in &s.assigned {
                let after_checkpoint = checkpoint_at.get(&a.log).is_none_or(|&c| a.at > c);
                if !after_checkpoint && a.stamp.record < from_of(a.stamp.origin) {
                    continue;
                }
                let own_sent = s.out2.contains_key(&a.stamp);
                if a.qos == 2 && sent_elsewhere(client, a.stamp, &a.group, own_sent) {
                    continue;
                }
                let Some(m) = streams
                    .get(&a.stamp.origin)
                    .and_then(|st| st.get(&a.stamp.record))
                else {
                    continue;
                };
                let q = QoS::from_u8(a.qos).unwrap_or(QoS::AtLeastOnce);
                matched.push((m.time_us, a.stamp, m, q, Some(&a.group), false));
            }
            // What no member was recorded to have been given.
            for &(stamp, q, group) in orphans.get(client.as_str()).into_iter().flatten() {
                if let Some(m) = streams
                    .get(&stamp.origin)
                    .and_then(|st| st.get(&stamp.record))
                {
                    matched.push((m.time_us, stamp, m, q, Some(group), false));
                }
            }
            matched.sort_by_key(|&(t, stamp, _, _, _, _)| (t, stamp));
            r.maybe_sent = !(s.exact && matched.is_empty());
            r.first_pid = s.first_pid;
            for (_, stamp, m, granted, group, retain) in matched {
                let qos = m.qos.min(granted);
                let m = RestoredMsg {
                    stamp,
                    msg: m.clone(),
                    qos,
                    retain,
                    group: group.map(str::to_owned),
                };
                place(&mut r, m, 0);
            }
            out.sessions.push(r);
        }
        out
    }
}

/// A message a restored session gets besides those its snapshot named: time
/// accepted, stamp, the message, QoS granted, the shared group it came through,
/// and the retain flag it goes out with.
type Matched<'s> = (u64, Stamp, &'s Stored, QoS, Option<&'s str>, bool);

/// Per message and group: the persistent sessions the group gave it to that were
/// sent it at QoS 2 (a PUBLISH stage logged, or in flight at their snapshot).
fn sent_through_groups(sessions: &HashMap<String, Sess>) -> HashMap<(Stamp, &str), Vec<&str>> {
    let mut out: HashMap<(Stamp, &str), Vec<&str>> = HashMap::new();
    for (client, s) in sessions {
        for a in &s.assigned {
            if a.qos == 2 && s.out2.contains_key(&a.stamp) {
                out.entry((a.stamp, &a.group)).or_default().push(client);
            }
        }
        for (i, h) in s.named.iter().enumerate() {
            let Some(g) = s.named_groups.get(&(i as u32)) else {
                continue;
            };
            if h.qos == 2
                && !s.unassigned.contains(&h.stamp)
                && (h.pid != 0 || s.out2.contains_key(&h.stamp))
            {
                out.entry((h.stamp, g.as_str())).or_default().push(client);
            }
        }
    }
    out
}

/// Messages published in this generation that a shared group with persistent
/// members matches but that no [`Record::Assign`] says the group gave anyone (in
/// transit between shards at a crash, or not yet recorded), and messages a
/// persistent member gave back to the group whose next assignment was not recorded
/// (the shard it went to crashed before writing it): each goes to one of the
/// group's persistent members whose subscription applies to it (any member for
/// one given back), in turn by record number. Returns them per client, with the
/// QoS granted.
fn orphans<'s>(
    streams: &HashMap<u16, BTreeMap<u64, Stored>>,
    sessions: &'s HashMap<String, Sess>,
    names: &[&'s String],
    given: &HashMap<(Stamp, String), u32>,
    given_back: &HashSet<(Stamp, String)>,
) -> HashMap<&'s str, Vec<(Stamp, QoS, &'s str)>> {
    // Group → its persistent members (in name order) with their subscriptions.
    let mut groups: BTreeMap<&str, Vec<(&str, &Sess, &Sub)>> = BTreeMap::new();
    for &client in names {
        let sess = &sessions[client];
        for (filter, sub) in &sess.subs {
            if share::is_shared(filter) {
                groups.entry(filter).or_default().push((client, sess, sub));
            }
        }
    }
    let mut out: HashMap<&str, Vec<(Stamp, QoS, &str)>> = HashMap::new();
    if groups.is_empty() {
        return out;
    }
    let mut key = (
        Stamp {
            origin: 0,
            record: 0,
        },
        String::new(),
    );
    for (&origin, stream) in streams {
        for (&record, m) in stream.iter().filter(|(_, m)| m.qos != QoS::AtMostOnce) {
            let stamp = Stamp { origin, record };
            for (group, members) in &groups {
                if !topic::matches(share::filter_part(group), &m.topic) {
                    continue;
                }
                key.0 = stamp;
                key.1.clear();
                key.1.push_str(group);
                let in_force = given.get(&key).copied();
                if in_force.is_some_and(|n| n > 0) {
                    continue;
                }
                // A message restated by a snapshot (not published in this
                // generation) is an orphan only if given back.
                let was_given_back = given_back.contains(&key);
                if !m.published && !was_given_back {
                    continue;
                }
                if in_force.is_some() && !was_given_back {
                    continue;
                }
                // The subscription applies to it (made before it; a snapshot's
                // restated subscriptions apply from the snapshot's horizons on);
                // a message given back was the group's already.
                let applying: Vec<&(&str, &Sess, &Sub)> = members
                    .iter()
                    .filter(|(_, sess, sub)| {
                        was_given_back
                            || (record >= sess.snap_horizons.get(&origin).copied().unwrap_or(0)
                                && sub
                                    .horizons
                                    .iter()
                                    .find(|(o, _)| *o == origin)
                                    .is_none_or(|&(_, h)| record >= h))
                    })
                    .collect();
                if applying.is_empty() {
                    continue;
                }
                let (client, _, sub) = applying[(record as usize) % applying.len()];
                let q = QoS::from_u8(sub.qos).unwrap_or(QoS::AtMostOnce);
                out.entry(client).or_default().push((stamp, q, group));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;

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

use super::records::{decode, BadRecord, Held, MsgBody, Record, Stamp};
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
    /// Per origin: the first record the subscription applies to.
    horizons: Vec<(u16, u64)>,
}

#[derive(Debug, Default)]
struct Sess {
    subs: BTreeMap<String, Sub>,
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
    /// stamp and group.
    given: HashSet<(Stamp, String)>,
    bad_records: u64,
}

fn stored(m: &MsgBody<'_>, published: bool) -> Option<Stored> {
    Some(Stored {
        time_us: m.time_us,
        topic: ByteString::from(m.topic),
        payload: Bytes::copy_from_slice(m.payload),
        qos: QoS::from_u8(m.qos)?,
        retain: m.retain,
        published,
    })
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
            Record::Session { client } => {
                self.sessions.insert(client.to_owned(), Sess::default());
            }
            Record::End { client } => {
                self.sessions.remove(client);
            }
            Record::Sub {
                client,
                filter,
                qos,
                horizons,
            } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.subs.insert(filter.to_owned(), Sub { qos, horizons });
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
                self.given.insert((stamp, group.to_owned()));
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
                    s.assigned.retain(|a| a.stamp != stamp);
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
                let s = Sess {
                    subs: snap
                        .subs
                        .iter()
                        .map(|&(f, qos)| {
                            (
                                f.to_owned(),
                                Sub {
                                    qos,
                                    horizons: Vec::new(),
                                },
                            )
                        })
                        .collect(),
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
        let orphans = orphans(&streams, &sessions, &names, &given);
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
            let mut matched: Vec<(u64, Stamp, &Stored, QoS, Option<&str>)> = Vec::new();
            for (&origin, stream) in &streams {
                let start = from_of(origin).max(s.snap_horizons.get(&origin).copied().unwrap_or(0));
                for (&record, m) in stream.range(start..).filter(|(_, m)| m.published) {
                    let mut best: Option<QoS> = None;
                    for (filter, sub) in &s.subs {
                        if share::is_shared(filter) {
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
                        }
                    }
                    if let Some(q) = best {
                        matched.push((m.time_us, Stamp { origin, record }, m, q, None));
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
                let Some(m) = streams
                    .get(&a.stamp.origin)
                    .and_then(|st| st.get(&a.stamp.record))
                else {
                    continue;
                };
                let q = QoS::from_u8(a.qos).unwrap_or(QoS::AtLeastOnce);
                matched.push((m.time_us, a.stamp, m, q, Some(&a.group)));
            }
            // What no member was recorded to have been given.
            for &(stamp, q, group) in orphans.get(client.as_str()).into_iter().flatten() {
                if let Some(m) = streams
                    .get(&stamp.origin)
                    .and_then(|st| st.get(&stamp.record))
                {
                    matched.push((m.time_us, stamp, m, q, Some(group)));
                }
            }
            matched.sort_by_key(|&(t, stamp, _, _, _)| (t, stamp));
            r.maybe_sent = !(s.exact && matched.is_empty());
            r.first_pid = s.first_pid;
            for (_, stamp, m, granted, group) in matched {
                let qos = m.qos.min(granted);
                let m = RestoredMsg {
                    stamp,
                    msg: m.clone(),
                    qos,
                    retain: false,
                    group: group.map(str::to_owned),
                };
                place(&mut r, m, 0);
            }
            out.sessions.push(r);
        }
        out
    }
}

/// Messages published in this generation that a shared group with persistent
/// members matches but that no [`Record::Assign`] says the group gave anyone (in
/// transit between shards at a crash, or not yet recorded): each goes to one of
/// the group's persistent members whose subscription applies to it, in turn by
/// record number. Returns them per client, with the QoS granted.
fn orphans<'s>(
    streams: &HashMap<u16, BTreeMap<u64, Stored>>,
    sessions: &'s HashMap<String, Sess>,
    names: &[&'s String],
    given: &HashSet<(Stamp, String)>,
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
        for (&record, m) in stream
            .iter()
            .filter(|(_, m)| m.published && m.qos != QoS::AtMostOnce)
        {
            let stamp = Stamp { origin, record };
            for (group, members) in &groups {
                if !topic::matches(share::filter_part(group), &m.topic) {
                    continue;
                }
                key.0 = stamp;
                key.1.clear();
                key.1.push_str(group);
                if given.contains(&key) {
                    continue;
                }
                // The subscription applies to it (made before it; a snapshot's
                // restated subscriptions apply from the snapshot's horizons on).
                let applying: Vec<&(&str, &Sess, &Sub)> = members
                    .iter()
                    .filter(|(_, sess, sub)| {
                        record >= sess.snap_horizons.get(&origin).copied().unwrap_or(0)
                            && sub
                                .horizons
                                .iter()
                                .find(|(o, _)| *o == origin)
                                .is_none_or(|&(_, h)| record >= h)
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

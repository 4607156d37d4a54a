//! What a record's body means, sans-IO: the record kinds a shard's log holds and
//! their byte layout (design §11).
//!
//! A shard's log is two things in one sequence of records:
//! - its *stream*: the messages published on that shard, one [`Record::Msg`] per
//!   accepted QoS 1/2 or retained PUBLISH, written once whatever the number of
//!   subscribers (invariant 3). A message is named everywhere by its stamp: origin
//!   shard and record number.
//! - its sessions' state: persistent sessions ([`Record::Session`], [`Record::End`]),
//!   their subscriptions, inbound QoS 2 state ([`Record::Msg`]'s publisher and
//!   [`Record::Rel`]), outbound QoS 2 flows ([`Record::Out2`]) and, written now and
//!   then, how far each session has got in each stream ([`Record::Checkpoint`]).
//!   Nothing is written per subscriber per QoS 1 message: recovery matches each
//!   stream's messages past a session's position against its subscriptions again.
//!
//! A [`Record::Snapshot`] restates one session whole (what it holds, as stamps), so
//! that earlier records about it can go: startup compaction writes one per session
//! into a fresh generation, graceful shutdown one per session at the end of the log.
//!
//! Layout: little-endian integers; strings and byte strings as a `u32` length then
//! the bytes (topics and client ids are UTF-8, checked on decode). Every decode is
//! bounds-checked: a body that does not parse is reported, never trusted.

use std::fmt;

/// Record kind bytes (the frame's `kind`).
pub mod kind {
    /// A message published on this shard (re-matched on recovery).
    pub const MSG: u8 = 1;
    /// A message body a snapshot refers to (never re-matched).
    pub const SNAP_MSG: u8 = 2;
    /// PUBREL received for an inbound QoS 2 packet id.
    pub const REL: u8 = 3;
    /// A persistent session begins.
    pub const SESSION: u8 = 4;
    /// A session ends (clean start, expiry).
    pub const END: u8 = 5;
    /// A subscription is made or changed.
    pub const SUB: u8 = 6;
    /// A subscription is removed.
    pub const UNSUB: u8 = 7;
    /// Sessions' positions in the streams.
    pub const CHECKPOINT: u8 = 8;
    /// An outbound QoS 2 flow changed stage.
    pub const OUT2: u8 = 9;
    /// A whole session.
    pub const SNAPSHOT: u8 = 10;
    /// A message given to a persistent session as one member of a shared group.
    pub const ASSIGN: u8 = 11;
    /// A message a persistent session gave back to its shared group.
    pub const UNASSIGN: u8 = 12;
    /// A persistent session's expiry: its interval, and whether (since when) it is
    /// offline.
    pub const EXPIRY: u8 = 13;
}

/// A message's name: the shard whose stream holds it and its record number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub origin: u16,
    pub record: u64,
}

/// The message a [`Record::Msg`] or [`Record::SnapMsg`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgBody<'a> {
    /// Microseconds since the Unix epoch when it was accepted: orders messages of
    /// different streams on recovery, and retained updates to one topic (as the
    /// live store's versions do, see `shard::retained`).
    pub time_us: u64,
    /// QoS as published (0..=2).
    pub qos: u8,
    /// Published with the retain flag: it is (or deletes, when empty) the topic's
    /// retained message.
    pub retain: bool,
    /// For a QoS 2 message: the publisher's client id and packet id, whose PUBREL
    /// has not come yet.
    pub publisher: Option<(&'a str, u16)>,
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// When its Message Expiry Interval runs out, in microseconds since the Unix
    /// epoch on the clock of `time_us`; `None`: never (format 3).
    pub expires_us: Option<u64>,
    /// The 5.0 properties forwarded with it (`PublishProps::forward`, wire bytes in
    /// order); empty for none (format 3).
    pub forward: &'a [u8],
    /// The client that published it, kept only when that client's session has a
    /// No Local subscription (or is a bridge's): recovery must not give the message
    /// back to it through one (format 3).
    pub sender: Option<&'a str>,
}

/// The MQTT 5.0 options of a subscription (all off for 3.1.1, which costs nothing):
/// stored in the high bits of the QoS byte, the identifier after it when present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOpts {
    /// The subscriber's own messages do not come back through it.
    pub no_local: bool,
    /// Messages through it keep the RETAIN flag they were published with.
    pub retain_as_published: bool,
    /// Its Subscription Identifier; 0: none.
    pub id: u32,
}

/// QoS byte bits above the QoS (format 3).
const SUB_NO_LOCAL: u8 = 0x04;
const SUB_RAP: u8 = 0x08;
const SUB_ID: u8 = 0x10;

/// A 5.0 session's Session Expiry Interval and when it went offline (format 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// Seconds; 0: ends with its connection; `u32::MAX`: never.
    pub interval: u32,
    /// When its client left, in microseconds since the Unix epoch; 0: connected
    /// (its interval then counts from the next start).
    pub offline_us: u64,
}

/// One session's positions: for each origin stream, the first record it may still
/// need. `None`: caught up with the checkpoint's horizons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position<'a> {
    pub client: &'a str,
    pub lagging: Option<Vec<(u16, u64)>>,
    /// The packet id of the oldest message in flight to the session, 0 for none:
    /// after a crash, the messages restored from the oldest on get consecutive
    /// packet ids from it, as they had when they were sent (QoS 1 takes ids in
    /// order, and its acknowledgements usually come in order).
    pub first_pid: u16,
}

/// A queued or in-flight message of a [`Record::Snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub stamp: Stamp,
    /// QoS it goes out with.
    pub qos: u8,
    /// Packet id while in flight, 0 while queued.
    pub pid: u16,
    /// The retain flag it goes out with (a retained message sent on subscribe).
    pub retain: bool,
}

/// A whole session, as a snapshot restates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotBody<'a> {
    pub client: &'a str,
    /// Records of each stream from which matching messages are not yet in `held`.
    pub horizons: Vec<(u16, u64)>,
    /// Filter, granted QoS, options.
    pub subs: Vec<(&'a str, u8, SubOpts)>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub awaiting_pubrel: Vec<u16>,
    /// Outbound QoS 2 flows past PUBREC (PUBREL sent), by packet id.
    pub released: Vec<u16>,
    /// In flight (in send order), then queued.
    pub held: Vec<Held>,
    /// The shared groups (`$share/...`) some of `held` came through: (index into
    /// `held`, group). Absent from format 1.
    pub groups: Vec<(u32, &'a str)>,
    /// A 5.0 session's expiry; `None` for a 3.1.1 one (and before format 3).
    pub expiry: Option<Expiry>,
}

/// A decoded record body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Msg(MsgBody<'a>),
    SnapMsg(MsgBody<'a>),
    Rel {
        client: &'a str,
        pid: u16,
    },
    /// `expiry`: a 5.0 session's Session Expiry Interval (absent before format 3,
    /// and for a 3.1.1 session).
    Session {
        client: &'a str,
        expiry: Option<u32>,
    },
    End {
        client: &'a str,
    },
    /// `horizons`: the records of each stream from which the subscription applies.
    Sub {
        client: &'a str,
        filter: &'a str,
        qos: u8,
        opts: SubOpts,
        horizons: Vec<(u16, u64)>,
    },
    Unsub {
        client: &'a str,
        filter: &'a str,
    },
    /// Positions of the sessions that changed since the last checkpoint; the others
    /// keep theirs (a caught-up one moves with `horizons`).
    Checkpoint {
        horizons: Vec<(u16, u64)>,
        sessions: Vec<Position<'a>>,
    },
    /// Stage 0: PUBLISH sent with `pid`; 1: PUBREC received, PUBREL sent;
    /// 2: complete.
    Out2 {
        client: &'a str,
        stamp: Stamp,
        pid: u16,
        stage: u8,
    },
    Snapshot(SnapshotBody<'a>),
    /// Message `stamp` was given to persistent session `client` as a member of the
    /// shared group `group` (`$share/...`), to go out at `qos`. Shared filters are
    /// never re-matched on recovery (the message went to one member only): this
    /// record is what brings it back to its member.
    Assign {
        client: &'a str,
        group: &'a str,
        stamp: Stamp,
        qos: u8,
    },
    /// Persistent session `client` no longer holds message `stamp` of a shared
    /// group: it went to another member when this one left.
    Unassign {
        client: &'a str,
        stamp: Stamp,
    },
    /// Persistent session `client` changed hands or went offline: `expiry` is a
    /// 5.0 session's interval and offline time, `None` once a 3.1.1 client holds
    /// it (`persistent_client_expiration` then applies).
    Expiry {
        client: &'a str,
        expiry: Option<Expiry>,
    },
}

/// Why a record body does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("record body ends early")]
    Short,
    #[error("record body has {0} bytes left over")]
    Trailing(usize),
    #[error("record holds a string that is not UTF-8")]
    NotUtf8,
    #[error("record holds an invalid value")]
    Invalid,
}

/// `MsgBody` flag bits: retain is bit 0.
const MSG_PUBLISHER: u8 = 0x02;
const MSG_EXPIRES: u8 = 0x04;
const MSG_FORWARD: u8 = 0x08;
const MSG_SENDER: u8 = 0x10;

struct W<'o>(&'o mut Vec<u8>);

impl W<'_> {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        // Bodies are bounded by MAX_RECORD (16 MiB + 64 KiB) well below u32::MAX.
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
    fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    fn pairs(&mut self, v: &[(u16, u64)]) -> &mut Self {
        self.u32(v.len() as u32);
        for &(o, r) in v {
            self.u16(o).u64(r);
        }
        self
    }
    fn msg(&mut self, m: &MsgBody<'_>) -> &mut Self {
        let flags = u8::from(m.retain)
            | if m.publisher.is_some() {
                MSG_PUBLISHER
            } else {
                0
            }
            | if m.expires_us.is_some() {
                MSG_EXPIRES
            } else {
                0
            }
            | if m.forward.is_empty() { 0 } else { MSG_FORWARD }
            | if m.sender.is_some() { MSG_SENDER } else { 0 };
        self.u64(m.time_us).u8(m.qos).u8(flags);
        if let Some((client, pid)) = m.publisher {
            self.str(client).u16(pid);
        }
        self.str(m.topic).bytes(m.payload);
        // Format 3, each only when its flag says so: nothing for 3.1.1 traffic.
        if let Some(at) = m.expires_us {
            self.u64(at);
        }
        if !m.forward.is_empty() {
            self.bytes(m.forward);
        }
        if let Some(sender) = m.sender {
            self.str(sender);
        }
        self
    }
    fn sub_qos(&mut self, qos: u8, o: &SubOpts) -> &mut Self {
        let bits = if o.no_local { SUB_NO_LOCAL } else { 0 }
            | if o.retain_as_published { SUB_RAP } else { 0 }
            | if o.id != 0 { SUB_ID } else { 0 };
        self.u8(qos | bits);
        if o.id != 0 {
            self.u32(o.id);
        }
        self
    }
    fn expiry(&mut self, e: &Expiry) -> &mut Self {
        self.u32(e.interval).u64(e.offline_us)
    }
}

/// Appends the body of `record` to `out`; returns its kind byte.
pub fn encode(record: &Record<'_>, out: &mut Vec<u8>) -> u8 {
    let mut w = W(out);
    match record {
        Record::Msg(m) => {
            w.msg(m);
            kind::MSG
        }
        Record::SnapMsg(m) => {
            w.msg(m);
            kind::SNAP_MSG
        }
        Record::Rel { client, pid } => {
            w.str(client).u16(*pid);
            kind::REL
        }
        Record::Session { client, expiry } => {
            w.str(client);
            if let Some(e) = expiry {
                w.u32(*e);
            }
            kind::SESSION
        }
        Record::End { client } => {
            w.str(client);
            kind::END
        }
        Record::Sub {
            client,
            filter,
            qos,
            opts,
            horizons,
        } => {
            w.str(client)
                .str(filter)
                .sub_qos(*qos, opts)
                .pairs(horizons);
            kind::SUB
        }
        Record::Unsub { client, filter } => {
            w.str(client).str(filter);
            kind::UNSUB
        }
        Record::Checkpoint { horizons, sessions } => {
            w.pairs(horizons).u32(sessions.len() as u32);
            for p in sessions {
                w.str(p.client);
                match &p.lagging {
                    None => {
                        w.u8(0);
                    }
                    Some(pairs) => {
                        w.u8(1).pairs(pairs);
                    }
                }
                w.u16(p.first_pid);
            }
            kind::CHECKPOINT
        }
        Record::Out2 {
            client,
            stamp,
            pid,
            stage,
        } => {
            w.str(client)
                .u16(stamp.origin)
                .u64(stamp.record)
                .u16(*pid)
                .u8(*stage);
            kind::OUT2
        }
        Record::Snapshot(s) => {
            w.str(s.client).pairs(&s.horizons).u32(s.subs.len() as u32);
            for (f, q, o) in &s.subs {
                w.str(f).sub_qos(*q, o);
            }
            w.u32(s.awaiting_pubrel.len() as u32);
            for p in &s.awaiting_pubrel {
                w.u16(*p);
            }
            w.u32(s.released.len() as u32);
            for p in &s.released {
                w.u16(*p);
            }
            w.u32(s.held.len() as u32);
            for h in &s.held {
                w.u16(h.stamp.origin)
                    .u64(h.stamp.record)
                    .u8(h.qos | if h.retain { 0x80 } else { 0 })
                    .u16(h.pid);
            }
            w.u32(s.groups.len() as u32);
            for (i, g) in &s.groups {
                w.u32(*i).str(g);
            }
            if let Some(e) = &s.expiry {
                w.expiry(e);
            }
            kind::SNAPSHOT
        }
        Record::Assign {
            client,
            group,
            stamp,
            qos,
        } => {
            w.str(client)
                .str(group)
                .u16(stamp.origin)
                .u64(stamp.record)
                .u8(*qos);
            kind::ASSIGN
        }
        Record::Unassign { client, stamp } => {
            w.str(client).u16(stamp.origin).u64(stamp.record);
            kind::UNASSIGN
        }
        Record::Expiry { client, expiry } => {
            w.str(client);
            match expiry {
                None => {
                    w.u8(0);
                }
                Some(e) => {
                    w.u8(1).expiry(e);
                }
            }
            kind::EXPIRY
        }
    }
}

struct R<'a> {
    b: &'a [u8],
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadRecord> {
        if self.b.len() < n {
            return Err(BadRecord::Short);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, BadRecord> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, BadRecord> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or([0; 2]),
        ))
    }
    fn u32(&mut self) -> Result<u32, BadRecord> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }
    fn u64(&mut self) -> Result<u64, BadRecord> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], BadRecord> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, BadRecord> {
        std::str::from_utf8(self.bytes()?).map_err(|_| BadRecord::NotUtf8)
    }
    /// A count of items each at least `min` bytes long: checked against what is
    /// left, so a damaged count never makes anyone reserve gigabytes.
    fn count(&mut self, min: usize) -> Result<usize, BadRecord> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.b.len() {
            return Err(BadRecord::Short);
        }
        Ok(n)
    }
    fn pairs(&mut self) -> Result<Vec<(u16, u64)>, BadRecord> {
        let n = self.count(10)?;
        (0..n).map(|_| Ok((self.u16()?, self.u64()?))).collect()
    }
    fn qos(&mut self) -> Result<u8, BadRecord> {
        match self.u8()? {
            q @ 0..=2 => Ok(q),
            _ => Err(BadRecord::Invalid),
        }
    }
    fn msg(&mut self) -> Result<MsgBody<'a>, BadRecord> {
        let time_us = self.u64()?;
        let qos = self.qos()?;
        let flags = self.u8()?;
        if flags & !(1 | MSG_PUBLISHER | MSG_EXPIRES | MSG_FORWARD | MSG_SENDER) != 0 {
            return Err(BadRecord::Invalid);
        }
        let publisher = if flags & MSG_PUBLISHER != 0 {
            Some((self.str()?, self.u16()?))
        } else {
            None
        };
        let topic = self.str()?;
        let payload = self.bytes()?;
        let expires_us = if flags & MSG_EXPIRES != 0 {
            Some(self.u64()?)
        } else {
            None
        };
        let forward = if flags & MSG_FORWARD != 0 {
            match self.bytes()? {
                // Written only when there are some.
                [] => return Err(BadRecord::Invalid),
                f => f,
            }
        } else {
            &[]
        };
        let sender = if flags & MSG_SENDER != 0 {
            Some(self.str()?)
        } else {
            None
        };
        Ok(MsgBody {
            time_us,
            qos,
            retain: flags & 1 != 0,
            publisher,
            topic,
            payload,
            expires_us,
            forward,
            sender,
        })
    }
    /// A subscription's QoS byte and the options in its high bits (format 3).
    fn sub_qos(&mut self) -> Result<(u8, SubOpts), BadRecord> {
        let b = self.u8()?;
        if b & 0x03 > 2 || b & !(0x03 | SUB_NO_LOCAL | SUB_RAP | SUB_ID) != 0 {
            return Err(BadRecord::Invalid);
        }
        let id = if b & SUB_ID != 0 {
            match self.u32()? {
                0 => return Err(BadRecord::Invalid),
                id => id,
            }
        } else {
            0
        };
        Ok((
            b & 0x03,
            SubOpts {
                no_local: b & SUB_NO_LOCAL != 0,
                retain_as_published: b & SUB_RAP != 0,
                id,
            },
        ))
    }
    fn expiry(&mut self) -> Result<Expiry, BadRecord> {
        Ok(Expiry {
            interval: self.u32()?,
            offline_us: self.u64()?,
        })
    }
}

/// Decodes the body of a record of kind `kind`.
pub fn decode(kind: u8, body: &[u8]) -> Result<Record<'_>, BadRecord> {
    let mut r = R { b: body };
    let rec = match kind {
        kind::MSG => Record::Msg(r.msg()?),
        kind::SNAP_MSG => Record::SnapMsg(r.msg()?),
        kind::REL => Record::Rel {
            client: r.str()?,
            pid: r.u16()?,
        },
        kind::SESSION => Record::Session {
            client: r.str()?,
            // Format 3, a 5.0 session only.
            expiry: if r.b.is_empty() { None } else { Some(r.u32()?) },
        },
        kind::END => Record::End { client: r.str()? },
        kind::SUB => {
            let client = r.str()?;
            let filter = r.str()?;
            let (qos, opts) = r.sub_qos()?;
            Record::Sub {
                client,
                filter,
                qos,
                opts,
                horizons: r.pairs()?,
            }
        }
        kind::UNSUB => Record::Unsub {
            client: r.str()?,
            filter: r.str()?,
        },
        kind::CHECKPOINT => {
            let horizons = r.pairs()?;
            let n = r.count(7)?;
            let mut sessions = Vec::with_capacity(n);
            for _ in 0..n {
                let client = r.str()?;
                let lagging = match r.u8()? {
                    0 => None,
                    1 => Some(r.pairs()?),
                    _ => return Err(BadRecord::Invalid),
                };
                let first_pid = r.u16()?;
                sessions.push(Position {
                    client,
                    lagging,
                    first_pid,
                });
            }
            Record::Checkpoint { horizons, sessions }
        }
        kind::OUT2 => {
            let client = r.str()?;
            let stamp = Stamp {
                origin: r.u16()?,
                record: r.u64()?,
            };
            let pid = r.u16()?;
            let stage = r.u8()?;
            if stage > 2 {
                return Err(BadRecord::Invalid);
            }
            Record::Out2 {
                client,
                stamp,
                pid,
                stage,
            }
        }
        kind::ASSIGN => Record::Assign {
            client: r.str()?,
            group: r.str()?,
            stamp: Stamp {
                origin: r.u16()?,
                record: r.u64()?,
            },
            qos: r.qos()?,
        },
        kind::UNASSIGN => Record::Unassign {
            client: r.str()?,
            stamp: Stamp {
                origin: r.u16()?,
                record: r.u64()?,
            },
        },
        kind::EXPIRY => Record::Expiry {
            client: r.str()?,
            expiry: match r.u8()? {
                0 => None,
                1 => Some(r.expiry()?),
                _ => return Err(BadRecord::Invalid),
            },
        },
        kind::SNAPSHOT => {
            let client = r.str()?;
            let horizons = r.pairs()?;
            let n = r.count(5)?;
            let mut subs = Vec::with_capacity(n);
            for _ in 0..n {
                let f = r.str()?;
                let (q, o) = r.sub_qos()?;
                subs.push((f, q, o));
            }
            let n = r.count(2)?;
            let awaiting_pubrel = (0..n).map(|_| r.u16()).collect::<Result<_, _>>()?;
            let n = r.count(2)?;
            let released = (0..n).map(|_| r.u16()).collect::<Result<_, _>>()?;
            let n = r.count(13)?;
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                let stamp = Stamp {
                    origin: r.u16()?,
                    record: r.u64()?,
                };
                let q = r.u8()?;
                if q & 0x7F > 2 {
                    return Err(BadRecord::Invalid);
                }
                held.push(Held {
                    stamp,
                    qos: q & 0x7F,
                    retain: q & 0x80 != 0,
                    pid: r.u16()?,
                });
            }
            // Format 1 ends here.
            let mut groups = Vec::new();
            if !r.b.is_empty() {
                let n = r.count(8)?;
                for _ in 0..n {
                    let i = r.u32()?;
                    if i as usize >= held.len() {
                        return Err(BadRecord::Invalid);
                    }
                    groups.push((i, r.str()?));
                }
            }
            // Format 2 ends here; format 3 adds a 5.0 session's expiry.
            let expiry = if r.b.is_empty() {
                None
            } else {
                Some(r.expiry()?)
            };
            Record::Snapshot(SnapshotBody {
                client,
                horizons,
                subs,
                awaiting_pubrel,
                released,
                held,
                groups,
                expiry,
            })
        }
        other => return Err(BadRecord::UnknownKind(other)),
    };
    if !r.b.is_empty() {
        return Err(BadRecord::Trailing(r.b.len()));
    }
    Ok(rec)
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record<'static>> {
        let m = MsgBody {
            time_us: 1_700_000_000_123,
            qos: 2,
            retain: true,
            publisher: Some(("pub-1", 7)),
            topic: "a/b",
            payload: b"hello",
            expires_us: None,
            forward: b"",
            sender: None,
        };
        let m5 = MsgBody {
            expires_us: Some(1_700_000_060_123),
            forward: b"\x03\x00\x0atext/plain",
            sender: Some("pub-5"),
            ..m.clone()
        };
        vec![
            Record::Msg(m.clone()),
            Record::Msg(MsgBody {
                publisher: None,
                retain: false,
                qos: 1,
                payload: b"",
                ..m.clone()
            }),
            Record::Msg(m5.clone()),
            Record::Msg(MsgBody {
                publisher: None,
                sender: None,
                expires_us: None,
                ..m5.clone()
            }),
            Record::Msg(MsgBody {
                forward: b"",
                ..m5.clone()
            }),
            Record::SnapMsg(m),
            Record::SnapMsg(MsgBody { sender: None, ..m5 }),
            Record::Rel {
                client: "c",
                pid: 65535,
            },
            Record::Session {
                client: "dev/ü",
                expiry: None,
            },
            Record::Session {
                client: "v5",
                expiry: Some(u32::MAX),
            },
            Record::Expiry {
                client: "v5",
                expiry: Some(Expiry {
                    interval: 300,
                    offline_us: 1_700_000_000_000_000,
                }),
            },
            Record::Expiry {
                client: "v5",
                expiry: Some(Expiry {
                    interval: 0,
                    offline_us: 0,
                }),
            },
            Record::Expiry {
                client: "now-3.1.1",
                expiry: None,
            },
            Record::End { client: "" },
            Record::Sub {
                client: "c",
                filter: "a/+/#",
                qos: 1,
                opts: SubOpts::default(),
                horizons: vec![(0, 5), (1, 0)],
            },
            Record::Sub {
                client: "c",
                filter: "a/+/#",
                qos: 2,
                opts: SubOpts {
                    no_local: true,
                    retain_as_published: true,
                    id: 268_435_455,
                },
                horizons: vec![(0, 5)],
            },
            Record::Sub {
                client: "c",
                filter: "b",
                qos: 0,
                opts: SubOpts {
                    no_local: false,
                    retain_as_published: true,
                    id: 0,
                },
                horizons: vec![],
            },
            Record::Unsub {
                client: "c",
                filter: "a/#",
            },
            Record::Checkpoint {
                horizons: vec![(0, 10), (1, 20)],
                sessions: vec![
                    Position {
                        client: "x",
                        lagging: None,
                        first_pid: 0,
                    },
                    Position {
                        client: "y",
                        lagging: Some(vec![(1, 3)]),
                        first_pid: 9,
                    },
                ],
            },
            Record::Out2 {
                client: "c",
                stamp: Stamp {
                    origin: 1,
                    record: 99,
                },
                pid: 3,
                stage: 1,
            },
            Record::Assign {
                client: "c",
                group: "$share/g/a/#",
                stamp: Stamp {
                    origin: 2,
                    record: 1 << 40,
                },
                qos: 2,
            },
            Record::Unassign {
                client: "c",
                stamp: Stamp {
                    origin: 2,
                    record: 7,
                },
            },
            Record::Snapshot(SnapshotBody {
                client: "c",
                horizons: vec![(0, 1)],
                subs: vec![
                    ("a/#", 2, SubOpts::default()),
                    (
                        "b",
                        0,
                        SubOpts {
                            no_local: true,
                            retain_as_published: false,
                            id: 7,
                        },
                    ),
                ],
                awaiting_pubrel: vec![1, 2],
                released: vec![9],
                held: vec![
                    Held {
                        stamp: Stamp {
                            origin: 0,
                            record: 4,
                        },
                        qos: 1,
                        pid: 12,
                        retain: false,
                    },
                    Held {
                        stamp: Stamp {
                            origin: 1,
                            record: 0,
                        },
                        qos: 2,
                        pid: 0,
                        retain: true,
                    },
                ],
                groups: vec![(1, "$share/g/a/#")],
                expiry: None,
            }),
            Record::Snapshot(SnapshotBody {
                client: "v5",
                horizons: vec![],
                subs: vec![],
                awaiting_pubrel: vec![],
                released: vec![],
                held: vec![],
                groups: vec![],
                expiry: Some(Expiry {
                    interval: 2,
                    offline_us: 5,
                }),
            }),
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for rec in samples() {
            let mut body = Vec::new();
            let k = encode(&rec, &mut body);
            assert_eq!(decode(k, &body), Ok(rec.clone()), "{rec:?}");
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        for rec in samples() {
            let mut body = Vec::new();
            let k = encode(&rec, &mut body);
            for len in 0..body.len() {
                match (decode(k, &body[..len]), &rec) {
                    // Cut where format 1 or 2 ended it: a snapshot without its
                    // groups or its expiry.
                    (Ok(Record::Snapshot(cut)), Record::Snapshot(whole)) => {
                        assert!(
                            cut.expiry.is_none() && whole.expiry.is_some()
                                || cut.groups.is_empty() && !whole.groups.is_empty()
                        );
                        assert_eq!(
                            Record::Snapshot(SnapshotBody {
                                groups: whole.groups.clone(),
                                expiry: whole.expiry,
                                ..cut
                            }),
                            rec
                        );
                    }
                    // Cut where format 2 ended it: a session without its expiry.
                    (
                        Ok(Record::Session {
                            client,
                            expiry: None,
                        }),
                        Record::Session {
                            client: c,
                            expiry: Some(_),
                        },
                    ) => assert_eq!(client, *c),
                    (r, _) => assert!(r.is_err(), "{rec:?} cut to {len}"),
                }
            }
            body.push(0);
            // Left over, or (after a record that may end early in older formats)
            // the start of a field cut short.
            assert!(
                matches!(
                    decode(k, &body),
                    Err(BadRecord::Trailing(1) | BadRecord::Short)
                ),
                "{rec:?} extended"
            );
        }
        assert_eq!(decode(200, &[]), Err(BadRecord::UnknownKind(200)));
    }

    /// Format 2 bodies (what a broker before the 5.0 fields wrote) read as the
    /// same records with the new fields absent; 3.1.1 records still encode to
    /// exactly those bytes.
    #[test]
    fn format_2_bodies_read_as_before_and_3_1_1_costs_no_bytes() {
        let mut msg = Vec::new();
        W(&mut msg).u64(9).u8(1).u8(1).str("t").bytes(b"payload");
        let mut sub = Vec::new();
        W(&mut sub).str("c").str("a/#").u8(2).pairs(&[(0, 3)]);
        let mut session = Vec::new();
        W(&mut session).str("c");
        let mut snap = Vec::new();
        W(&mut snap)
            .str("c")
            .pairs(&[])
            .u32(1)
            .str("a/#")
            .u8(1)
            .u32(0)
            .u32(0)
            .u32(0)
            .u32(0);
        for (k, body) in [
            (kind::MSG, &msg),
            (kind::SUB, &sub),
            (kind::SESSION, &session),
            (kind::SNAPSHOT, &snap),
        ] {
            let rec = decode(k, body).unwrap();
            match &rec {
                Record::Msg(m) => {
                    assert_eq!((m.expires_us, m.forward, m.sender), (None, &b""[..], None))
                }
                Record::Sub { opts, .. } => assert_eq!(*opts, SubOpts::default()),
                Record::Session { expiry, .. } => assert_eq!(*expiry, None),
                Record::Snapshot(s) => {
                    assert_eq!(s.expiry, None);
                    assert_eq!(s.subs, [("a/#", 1, SubOpts::default())]);
                }
                _ => unreachable!(),
            }
            let mut again = Vec::new();
            assert_eq!(encode(&rec, &mut again), k);
            assert_eq!(&again, body, "{rec:?}");
        }
    }

    #[test]
    fn damaged_bodies_never_panic() {
        let mut rng = super::super::test_rng::Rng(0x5eed);
        for rec in samples() {
            let mut body = Vec::new();
            let k = encode(&rec, &mut body);
            for _ in 0..500 {
                let mut b = body.clone();
                let i = rng.below(b.len().max(1));
                if let Some(x) = b.get_mut(i) {
                    *x ^= 1 << rng.below(8);
                }
                let _ = decode(k, &b);
            }
        }
        // Flags saying "present" must be followed by something.
        let mut b = Vec::new();
        W(&mut b)
            .u64(0)
            .u8(1)
            .u8(MSG_FORWARD)
            .str("t")
            .bytes(b"p")
            .bytes(b"");
        assert_eq!(decode(kind::MSG, &b), Err(BadRecord::Invalid));
        let mut b = Vec::new();
        W(&mut b).str("c").str("f").u8(1 | SUB_ID).u32(0).pairs(&[]);
        assert_eq!(decode(kind::SUB, &b), Err(BadRecord::Invalid));
        // A huge count is refused before anything is reserved.
        assert_eq!(decode(kind::CHECKPOINT, &[0xff; 8]), Err(BadRecord::Short));
    }
}

//! The retained-message store, one replica per shard.
//!
//! Every update is stamped with a [`RetainVersion`] (a hybrid clock: wall-clock
//! microseconds, or one past the newest version seen, and the origin shard) and
//! broadcast; a replica applies an update only if it is newer than what it holds, so
//! all replicas converge on the same message per topic whatever order updates arrive
//! in. Deletions are kept as versioned tombstones for the same reason.

use super::mesh::RetainVersion;
use crate::message::Message;
use crate::protocol::topic;
use ahash::AHashMap;
use bytestring::ByteString;

struct Entry {
    /// `None`: deleted (a tombstone).
    msg: Option<Message>,
    version: RetainVersion,
}

/// What a local retained publish did to the store.
#[derive(Debug, PartialEq, Eq)]
pub enum LocalUpdate {
    /// Stored or deleted; broadcast the update with this version.
    Applied(RetainVersion),
    /// Not stored because of a configured limit (counted, message still routed).
    Refused,
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One shard's replica.
pub struct Retained {
    entries: AHashMap<ByteString, Entry>,
    live: usize,
    clock: u64,
    shard: u16,
    max_messages: usize,
    max_payload: usize,
}

impl Retained {
    pub fn new(shard: u16, max_messages: usize, max_payload: usize) -> Retained {
        Retained {
            entries: AHashMap::new(),
            live: 0,
            clock: 0,
            shard,
            max_messages,
            max_payload,
        }
    }

    /// New bounds (a reload): they apply to messages stored from now on.
    pub fn set_limits(&mut self, max_messages: usize, max_payload: usize) {
        self.max_messages = max_messages;
        self.max_payload = max_payload;
    }

    /// Number of retained messages held (tombstones and the broker's `$SYS` ones
    /// excluded).
    pub fn len(&self) -> usize {
        self.live
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// A retained PUBLISH from one of this shard's clients: the origin decides
    /// whether the limits allow it, replicas then apply it unconditionally.
    /// The broker's own `$SYS` messages are exempt from the limits, and not counted.
    pub fn local_update(&mut self, msg: &Message) -> LocalUpdate {
        if !self.would_keep(msg) {
            return LocalUpdate::Refused;
        }
        // A hybrid clock: microseconds of the wall clock every shard shares, or one
        // past the newest version seen. An update accepted after another one was
        // acknowledged (on any shard) gets a higher version, though the other's
        // replica update may not have reached this shard yet.
        self.clock = (self.clock + 1).max(now_us());
        let version = (self.clock, self.shard);
        self.apply(msg, version);
        LocalUpdate::Applied(version)
    }

    /// Whether [`Retained::local_update`] would store (or delete with) `msg`, as
    /// the limits stand.
    pub fn would_keep(&self, msg: &Message) -> bool {
        if msg.payload.is_empty() || super::is_sys_topic(&msg.topic) {
            return true;
        }
        if msg.payload.len() > self.max_payload {
            return false;
        }
        let exists = matches!(
            self.entries.get(&msg.topic),
            Some(Entry { msg: Some(_), .. })
        );
        exists || self.max_messages == 0 || self.live < self.max_messages
    }

    /// Applies an update if it is newer than the held one; true if it was.
    pub fn apply(&mut self, msg: &Message, version: RetainVersion) -> bool {
        self.clock = self.clock.max(version.0);
        // Stored for long: copy, so the message does not pin the whole read buffer
        // its topic and payload were sliced from.
        let new = (!msg.payload.is_empty()).then(|| Message {
            topic: ByteString::from(&*msg.topic),
            payload: bytes::Bytes::copy_from_slice(&msg.payload),
            qos: msg.qos,
            retain: true,
            stamp: msg.stamp,
            props: msg.props.clone(),
        });
        // `$SYS` messages are the broker's: not counted against the limits.
        let counted = !super::is_sys_topic(&msg.topic) as usize;
        match self.entries.get_mut(&msg.topic) {
            Some(e) if e.version >= version => false,
            Some(e) => {
                self.live = self.live + counted * new.is_some() as usize
                    - counted * e.msg.is_some() as usize;
                e.msg = new;
                e.version = version;
                true
            }
            None => {
                self.live += counted * new.is_some() as usize;
                self.entries
                    .insert(msg.topic.clone(), Entry { msg: new, version });
                true
            }
        }
    }

    /// Compaction: forgets deletions, and stamps every retained message, in topic
    /// order, with `stamp(i)` for its index `i`; returns them in that order. Every
    /// replica holds the same messages once the shards are quiescent, so every
    /// shard computes the same stamps.
    pub fn restamp(&mut self, stamp: impl Fn(u64) -> u64) -> Vec<Message> {
        self.entries.retain(|_, e| e.msg.is_some());
        let mut topics: Vec<ByteString> = self.entries.keys().cloned().collect();
        topics.sort_unstable();
        let mut out = Vec::with_capacity(topics.len());
        for t in &topics {
            if let Some(Entry { msg: Some(m), .. }) = self.entries.get_mut(t) {
                if super::is_sys_topic(t) {
                    m.stamp = Default::default();
                } else {
                    m.stamp = stamp(out.len() as u64).into();
                    out.push(m.clone());
                }
            }
        }
        out
    }

    /// Calls `f` with every retained message whose topic matches `filter`
    /// (each with its retain flag set).
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&Message)) {
        let exact = !filter.contains(['+', '#']);
        if exact {
            if let Some(Entry { msg: Some(m), .. }) = self.entries.get(filter) {
                f(m);
            }
            return;
        }
        for (t, e) in &self.entries {
            if let Some(m) = &e.msg {
                if topic::matches(filter, t) {
                    f(m);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;
    use bytes::Bytes;

    fn msg(topic: &'static str, payload: &'static str) -> Message {
        Message {
            topic: ByteString::from_static(topic),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: true,
            stamp: Default::default(),
            props: None,
        }
    }

    #[test]
    fn replicas_converge_whatever_order_racing_updates_arrive_in() {
        let mut a = Retained::new(0, 0, 1 << 20);
        let mut b = Retained::new(1, 0, 1 << 20);
        let LocalUpdate::Applied(va) = a.local_update(&msg("t", "from-a")) else {
            panic!()
        };
        let LocalUpdate::Applied(vb) = b.local_update(&msg("t", "from-b")) else {
            panic!()
        };
        a.apply(&msg("t", "from-b"), vb);
        b.apply(&msg("t", "from-a"), va);
        let get = |r: &Retained| {
            let mut out = Vec::new();
            r.for_each_match("t", |m| out.push(m.payload.clone()));
            out
        };
        assert_eq!(get(&a), get(&b));
        assert_eq!(get(&a).len(), 1);
    }

    #[test]
    fn delete_racing_an_older_set_stays_deleted_everywhere() {
        let mut a = Retained::new(0, 0, 1 << 20);
        let mut b = Retained::new(1, 0, 1 << 20);
        let LocalUpdate::Applied(v1) = b.local_update(&msg("t", "x")) else {
            panic!()
        };
        a.apply(&msg("t", "x"), v1);
        let LocalUpdate::Applied(v2) = a.local_update(&msg("t", "")) else {
            panic!()
        };
        // b learns of the delete; a sees the old set again (duplicate) and ignores it.
        b.apply(&msg("t", ""), v2);
        a.apply(&msg("t", "x"), v1);
        assert!(a.is_empty() && b.is_empty());
    }

    #[test]
    fn wildcard_filter_finds_matching_retained_messages() {
        let mut r = Retained::new(0, 0, 1 << 20);
        r.local_update(&msg("a/b", "1"));
        r.local_update(&msg("a/c", "2"));
        r.local_update(&msg("$SYS/x", "3"));
        let mut n = 0;
        r.for_each_match("#", |_| n += 1);
        assert_eq!(n, 2);
        let mut n = 0;
        r.for_each_match("a/+", |_| n += 1);
        assert_eq!(n, 2);
    }

    #[test]
    fn limits_refuse_new_topics_but_allow_replacing() {
        let mut r = Retained::new(0, 1, 4);
        assert!(matches!(
            r.local_update(&msg("a", "1")),
            LocalUpdate::Applied(_)
        ));
        assert_eq!(r.local_update(&msg("b", "1")), LocalUpdate::Refused);
        assert!(matches!(
            r.local_update(&msg("a", "2")),
            LocalUpdate::Applied(_)
        ));
        assert_eq!(r.local_update(&msg("a", "too long")), LocalUpdate::Refused);
        assert_eq!(r.len(), 1);
    }
}

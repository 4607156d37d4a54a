//! The unit the router moves: one application message, independent of any packet id.

use crate::protocol::{PublishProps, QoS};
use bytes::Bytes;
use bytestring::ByteString;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An application message as routed between sessions and shards. Cloning is cheap:
/// topic and payload are reference-counted and shared by every copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// QoS the publisher sent it with; each delivery uses min(this, granted QoS).
    pub qos: QoS,
    /// Set only when the message is sent as a retained message on subscribe.
    pub retain: bool,
    /// Where the log holds it, with persistence on (see [`Message::stamp`]); zero
    /// when it is not logged. Six bytes, in what would be padding: the message stays
    /// 72 bytes.
    pub stamp: PackedStamp,
    /// What a 5.0 publisher gave beyond topic and payload (expiry, forwarded
    /// properties); `None` for every 3.1.1 message and most 5.0 ones, which then cost
    /// one pointer and a branch. Shared by every copy.
    pub props: Option<Arc<MessageProps>>,
}

/// The 5.0 properties a message keeps while routed, queued or retained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageProps {
    /// When the Message Expiry Interval runs out; `None`: never.
    pub expires_at: Option<Instant>,
    /// Payload Format Indicator, Content Type, Response Topic, Correlation Data and
    /// User Properties as the publisher sent them (wire bytes, in order), in an
    /// allocation of their own.
    pub forward: Bytes,
}

impl MessageProps {
    /// From a PUBLISH's (or a will's) properties received at `now`; `None` when there
    /// is nothing to keep.
    pub fn new(expiry: Option<u32>, forward: &Bytes, now: Instant) -> Option<Arc<MessageProps>> {
        if expiry.is_none() && forward.is_empty() {
            return None;
        }
        Some(Arc::new(MessageProps {
            expires_at: expiry.map(|s| now + Duration::from_secs(u64::from(s))),
            forward: Bytes::copy_from_slice(forward),
        }))
    }

    /// Seconds of the interval that remain at `now`, rounded up; `Some(0)` once
    /// expired; `None` without an interval.
    pub fn remaining(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            secs.min(u64::from(u32::MAX)) as u32
        })
    }

    /// The properties of a PUBLISH that carries the message to a 5.0 client at `now`:
    /// the remaining expiry and the forwarded properties.
    pub fn publish_props(&self, now: Instant) -> Box<PublishProps> {
        Box::new(PublishProps {
            message_expiry: self.remaining(now),
            forward: self.forward.clone(),
            ..PublishProps::default()
        })
    }
}

impl Message {
    /// The same message in one allocation of its own. Topic and payload decoded from a
    /// connection are slices of its read buffer and keep the whole buffer alive; a
    /// message that is stored (an offline or congested session's queue, a QoS 1/2
    /// message awaiting acknowledgement, a will) is compacted first, so what it holds
    /// is what `max_queued_bytes` counts.
    pub fn compact(&self) -> Message {
        let (topic, payload) = compact_parts(&self.topic, &self.payload);
        Message {
            topic,
            payload,
            qos: self.qos,
            retain: self.retain,
            stamp: self.stamp,
            props: self.props.clone(),
        }
    }

    /// Whether the message's expiry interval has run out at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.props
            .as_ref()
            .is_some_and(|p| p.expires_at.is_some_and(|at| at <= now))
    }

    /// Whether it expires at all (only then is the clock read for it).
    pub fn expires(&self) -> bool {
        self.props.as_ref().is_some_and(|p| p.expires_at.is_some())
    }

    /// The message's place in the log: origin shard and record number.
    pub fn stamp(&self) -> Option<crate::store::records::Stamp> {
        unpack_stamp(self.stamp.get())
    }
}

/// A [`Message::stamp`] in 48 bits (see [`pack_stamp`]), aligned to 2 bytes so that
/// it fits the padding after the QoS and retain flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PackedStamp([u16; 3]);

impl PackedStamp {
    /// The packed value ([`pack_stamp`]); 0: not logged.
    pub fn get(self) -> u64 {
        let [a, b, c] = self.0;
        u64::from(a) | (u64::from(b) << 16) | (u64::from(c) << 32)
    }

    /// Whether the message is logged.
    pub fn is_set(self) -> bool {
        self.0 != [0; 3]
    }
}

impl From<u64> for PackedStamp {
    /// The low 48 bits of a [`pack_stamp`] value.
    fn from(v: u64) -> Self {
        PackedStamp([v as u16, (v >> 16) as u16, (v >> 32) as u16])
    }
}

/// Bits of a packed stamp that hold the record number (plus one): 2.7 × 10^11
/// records per generation of a shard's log, which compaction starts afresh.
const RECORD_BITS: u32 = 38;

/// Packs a stamp into 48 bits: origin shard (below 1024, the most shards there can
/// be) in the top 10, record number plus one below (0 stays "not logged").
pub fn pack_stamp(s: crate::store::records::Stamp) -> u64 {
    (u64::from(s.origin & 0x3FF) << RECORD_BITS) | ((s.record + 1) & ((1 << RECORD_BITS) - 1))
}

/// The inverse of [`pack_stamp`].
pub fn unpack_stamp(v: u64) -> Option<crate::store::records::Stamp> {
    let record = v & ((1 << RECORD_BITS) - 1);
    (record != 0).then(|| crate::store::records::Stamp {
        origin: ((v >> RECORD_BITS) & 0x3FF) as u16,
        record: record - 1,
    })
}

/// Copies `topic` and `payload` into one fresh buffer and returns slices of it.
pub(crate) fn compact_parts(topic: &ByteString, payload: &Bytes) -> (ByteString, Bytes) {
    let mut buf = Vec::with_capacity(topic.len() + payload.len());
    buf.extend_from_slice(topic.as_bytes());
    buf.extend_from_slice(payload);
    let mut all = Bytes::from(buf);
    let payload = all.split_off(topic.len());
    // The bytes are a copy of a valid string.
    let topic = ByteString::try_from(all).expect("copied from a valid topic");
    (topic, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_costs_no_bytes_and_round_trips() {
        use crate::store::records::Stamp;
        // 72 bytes of topic, payload, flags and stamp, and the 5.0 properties' pointer.
        assert_eq!(std::mem::size_of::<Message>(), 80);
        for s in [
            Stamp {
                origin: 0,
                record: 0,
            },
            Stamp {
                origin: 1023,
                record: (1 << RECORD_BITS) - 2,
            },
            Stamp {
                origin: 7,
                record: 123_456_789,
            },
        ] {
            let packed = PackedStamp::from(pack_stamp(s));
            assert!(packed.is_set());
            assert_eq!(unpack_stamp(packed.get()), Some(s));
        }
        assert_eq!(unpack_stamp(PackedStamp::default().get()), None);
    }

    #[test]
    fn compact_copies_out_of_a_shared_buffer() {
        let buf = Bytes::from_static(b"a/topicpayload and more bytes of a read buffer");
        let msg = Message {
            topic: ByteString::try_from(buf.slice(0..7)).unwrap(),
            payload: buf.slice(7..14),
            qos: QoS::AtLeastOnce,
            retain: true,
            stamp: Default::default(),
            props: None,
        };
        let c = msg.compact();
        assert_eq!(c, msg);
        assert_ne!(
            c.payload.as_ptr(),
            msg.payload.as_ptr(),
            "a copy, not a slice"
        );
        let empty = Message {
            topic: ByteString::from_static("t"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            stamp: Default::default(),
            props: None,
        };
        assert_eq!(empty.compact(), empty);
    }
}

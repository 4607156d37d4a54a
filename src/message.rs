//! The unit the router moves: one application message, independent of any packet id.

use crate::protocol::QoS;
use bytes::Bytes;
use bytestring::ByteString;

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
        }
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
        assert_eq!(std::mem::size_of::<Message>(), 72);
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
        };
        assert_eq!(empty.compact(), empty);
    }
}

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
    /// Where the log holds it, with persistence on (see [`Message::stamp`]); 0 when
    /// it is not logged.
    pub stamp: u64,
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
        unpack_stamp(self.stamp)
    }
}

/// Packs a stamp into [`Message::stamp`]'s `u64`: origin in the top 16 bits, record
/// number plus one below (0 stays "not logged").
pub fn pack_stamp(s: crate::store::records::Stamp) -> u64 {
    (u64::from(s.origin) << 48) | ((s.record + 1) & ((1 << 48) - 1))
}

/// The inverse of [`pack_stamp`].
pub fn unpack_stamp(v: u64) -> Option<crate::store::records::Stamp> {
    let record = v & ((1 << 48) - 1);
    (record != 0).then(|| crate::store::records::Stamp {
        origin: (v >> 48) as u16,
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
    fn compact_copies_out_of_a_shared_buffer() {
        let buf = Bytes::from_static(b"a/topicpayload and more bytes of a read buffer");
        let msg = Message {
            topic: ByteString::try_from(buf.slice(0..7)).unwrap(),
            payload: buf.slice(7..14),
            qos: QoS::AtLeastOnce,
            retain: true,
            stamp: 0,
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
            stamp: 0,
        };
        assert_eq!(empty.compact(), empty);
    }
}

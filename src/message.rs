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
}

//! Packet types: one struct or variant per MQTT control packet.

use bytes::Bytes;
use bytestring::ByteString;

/// Protocol revision announced in CONNECT: "MQIsdp"/3 (MQTT 3.1) or "MQTT"/4 (3.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1, protocol name "MQIsdp", level 3.
    V31,
    /// MQTT 3.1.1, protocol name "MQTT", level 4.
    V311,
}

impl Protocol {
    /// The version, as people name it: "3.1" or "3.1.1".
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V31 => "3.1",
            Protocol::V311 => "3.1.1",
        }
    }
}

/// Quality of service of a publish or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value 0..=2; `None` for 3 (reserved) and above.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectReturnCode {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUsernameOrPassword = 4,
    NotAuthorized = 5,
}

/// The will a client leaves in CONNECT, published if it goes away without DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    /// The bridge bit (0x80) was set on the protocol level (0x83, 0x84): the client is
    /// another broker's bridge, as Mosquitto's `try_private` announces it. Such a
    /// client is not sent back the messages it published itself.
    pub bridge: bool,
    pub clean_session: bool,
    /// Seconds; 0 disables keep-alive.
    pub keep_alive: u16,
    /// May be empty (3.1.1 with clean session only); the broker then assigns one.
    pub client_id: ByteString,
    pub will: Option<LastWill>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ConnectReturnCode,
}

/// A PUBLISH packet. `topic` and `payload` are reference-counted slices of the read
/// buffer, so routing one publish to many subscribers never copies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: ByteString,
    /// Packet identifier; 0 for QoS 0 (absent on the wire).
    pub pkid: u16,
    pub payload: Bytes,
}

/// One filter of a SUBSCRIBE. The filter is well-formed UTF-8 but its wildcard use is
/// not yet checked: an invalid filter earns 0x80 in SUBACK, not a closed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    pub filter: ByteString,
    pub qos: QoS,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    /// Never empty: a SUBSCRIBE without filters is a protocol violation.
    pub filters: Vec<SubscribeFilter>,
}

/// One SUBACK return code: the granted QoS, or 0x80 (failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubAckCode {
    Granted(QoS),
    Failure,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub codes: Vec<SubAckCode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    /// Never empty: an UNSUBSCRIBE without filters is a protocol violation.
    pub filters: Vec<ByteString>,
}

/// Every MQTT 3.1.1 control packet. Acks carry only their packet identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(u16),
    PingReq,
    PingResp,
    Disconnect,
}

impl Packet {
    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect => "DISCONNECT",
        }
    }
}

//! Packet types: one struct or variant per MQTT control packet.
//!
//! One type serves both revisions where the packet's meaning is the same (CONNECT,
//! PUBLISH, SUBSCRIBE, UNSUBSCRIBE, the pings): its MQTT 5.0 fields are empty or at
//! their defaults under 3.1.1. Where 5.0 changed what a packet says (the acks carry a
//! reason code and properties, DISCONNECT a reason, AUTH is new), the 5.0 form has its
//! own variant (`PubAckV5`, `DisconnectV5`, ...): the decoder returns those, and only
//! those, on a 5.0 connection, and the 3.1.1 variants never change shape.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use bytestring::ByteString;

use super::properties::{self, PacketKind, Properties, PropertyError};
use super::reason::ReasonCode;

/// Protocol revision announced in CONNECT: "MQIsdp"/3 (MQTT 3.1), "MQTT"/4 (3.1.1) or
/// "MQTT"/5 (5.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1, protocol name "MQIsdp", level 3.
    V31,
    /// MQTT 3.1.1, protocol name "MQTT", level 4.
    V311,
    /// MQTT 5.0, protocol name "MQTT", level 5.
    V5,
}

impl Protocol {
    /// The version, as people name it: "3.1", "3.1.1" or "5.0".
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V31 => "3.1",
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5.0",
        }
    }
}

/// User properties (§3.3.2.3.7): name/value pairs in wire order; repeats allowed.
pub type UserProperties = Vec<(ByteString, ByteString)>;

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
    /// The Will Properties (MQTT 5.0); the default under 3.1.1.
    pub props: WillProps,
}

/// The Will Properties of a 5.0 CONNECT (§3.1.3.2). The ones the broker acts on are
/// typed; the ones it only passes on to the will's subscribers are kept encoded, in
/// the layout of [`PublishProps::forward`], so publishing the will needs no re-encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProps {
    /// Will Delay Interval, seconds (absent: 0).
    pub delay_interval: u32,
    /// Message Expiry Interval of the will message, seconds; `None`: it never expires.
    pub message_expiry: Option<u32>,
    /// Payload Format Indicator, Content Type, Response Topic, Correlation Data and
    /// User Properties, encoded as on the wire (no Property Length), in arrival order.
    pub forward: Bytes,
}

impl WillProps {
    /// Whether there is nothing to send (the will of a 3.1.1 client, or of a 5.0 client
    /// that gave no Will Properties).
    pub fn is_empty(&self) -> bool {
        self.delay_interval == 0 && self.message_expiry.is_none() && self.forward.is_empty()
    }

    /// The properties of the PUBLISH that carries the will: its expiry and forwarded
    /// properties; `None` when it has neither.
    pub fn publish_props(&self) -> Option<Box<PublishProps>> {
        if self.message_expiry.is_none() && self.forward.is_empty() {
            return None;
        }
        Some(Box::new(PublishProps {
            message_expiry: self.message_expiry,
            forward: self.forward.clone(),
            ..PublishProps::default()
        }))
    }
}

/// The properties of a 5.0 CONNECT (§3.1.2.11), each at the value the specification
/// gives it when absent; an absent property and one sent at its default value are
/// the same thing, and the encoder leaves default values out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectProps {
    /// Session Expiry Interval, seconds; 0 (the default) ends the session with the
    /// connection, `u32::MAX` never.
    pub session_expiry: u32,
    /// Receive Maximum: QoS 1/2 publishes the client takes unacknowledged (65535).
    pub receive_maximum: NonZeroU16,
    /// Maximum Packet Size the client accepts; `None`: no limit beyond the protocol's.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// Topic Alias Maximum: highest alias the client accepts from the server (0: none).
    pub topic_alias_maximum: u16,
    /// Request Response Information (false).
    pub request_response_information: bool,
    /// Request Problem Information (true).
    pub request_problem_information: bool,
    /// Authentication Method, for enhanced authentication (AUTH).
    pub auth_method: Option<ByteString>,
    /// Authentication Data; never present without a method.
    pub auth_data: Option<Bytes>,
    /// User Properties, in order.
    pub user: UserProperties,
}

impl Default for ConnectProps {
    fn default() -> ConnectProps {
        ConnectProps {
            session_expiry: 0,
            receive_maximum: NonZeroU16::MAX,
            maximum_packet_size: None,
            topic_alias_maximum: 0,
            request_response_information: false,
            request_problem_information: true,
            auth_method: None,
            auth_data: None,
            user: UserProperties::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    /// The bridge bit (0x80) was set on the protocol level (0x83, 0x84): the client is
    /// another broker's bridge, as Mosquitto's `try_private` announces it. Such a
    /// client is not sent back the messages it published itself.
    pub bridge: bool,
    /// Clean Session (3.1.1) or Clean Start (5.0): the same bit.
    pub clean_session: bool,
    /// Seconds; 0 disables keep-alive.
    pub keep_alive: u16,
    /// May be empty (3.1.1 with clean session only, 5.0 always); the broker then
    /// assigns one.
    pub client_id: ByteString,
    pub will: Option<LastWill>,
    pub username: Option<ByteString>,
    /// Under 5.0 a password may come without a username (§3.1.2.9).
    pub password: Option<Bytes>,
    /// The CONNECT properties (5.0); the default under 3.1 and 3.1.1.
    pub props: ConnectProps,
}

/// A 3.1 / 3.1.1 CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ConnectReturnCode,
}

/// A 5.0 CONNACK (§3.2). A 3.1.1 return code converts with `ReasonCode::from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAckV5 {
    pub session_present: bool,
    /// One of the codes [`ReasonCode::valid_in`] allows in CONNACK.
    pub reason: ReasonCode,
    pub props: ConnAckProps,
}

/// The properties of a 5.0 CONNACK (§3.2.2.3), each at the value the specification
/// gives it when absent; the encoder leaves default values out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAckProps {
    /// Session Expiry Interval the server imposes; `None`: the client's stands.
    pub session_expiry: Option<u32>,
    /// Receive Maximum: QoS 1/2 publishes the server takes unacknowledged (65535).
    pub receive_maximum: NonZeroU16,
    /// Maximum QoS the server supports (2; only 0 or 1 is ever sent).
    pub maximum_qos: QoS,
    /// Retain Available (true).
    pub retain_available: bool,
    /// Maximum Packet Size the server accepts; `None`: no limit beyond the protocol's.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// Assigned Client Identifier, for a client that sent an empty one.
    pub assigned_client_id: Option<ByteString>,
    /// Topic Alias Maximum: highest alias the server accepts (0: none).
    pub topic_alias_maximum: u16,
    /// Reason String: a diagnostic for people.
    pub reason_string: Option<ByteString>,
    /// User Properties, in order.
    pub user: UserProperties,
    /// Wildcard Subscription Available (true).
    pub wildcard_subscription_available: bool,
    /// Subscription Identifiers Available (true).
    pub subscription_identifiers_available: bool,
    /// Shared Subscription Available (true).
    pub shared_subscription_available: bool,
    /// Server Keep Alive, seconds; `None`: the client's keep alive stands.
    pub server_keep_alive: Option<u16>,
    /// Response Information, the basis of the client's response topics.
    pub response_information: Option<ByteString>,
    /// Server Reference: another server to use.
    pub server_reference: Option<ByteString>,
    /// Authentication Method of the exchange.
    pub auth_method: Option<ByteString>,
    /// Authentication Data; never present without a method.
    pub auth_data: Option<Bytes>,
}

impl Default for ConnAckProps {
    fn default() -> ConnAckProps {
        ConnAckProps {
            session_expiry: None,
            receive_maximum: NonZeroU16::MAX,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            maximum_packet_size: None,
            assigned_client_id: None,
            topic_alias_maximum: 0,
            reason_string: None,
            user: UserProperties::new(),
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            auth_method: None,
            auth_data: None,
        }
    }
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
    /// The 5.0 properties; `None` under 3.1.1 and for a 5.0 PUBLISH without any, so a
    /// 3.1.1 publish pays one word for them and nothing else.
    pub props: Option<Box<PublishProps>>,
}

/// The properties of a 5.0 PUBLISH (§3.3.2.3). What the broker acts on is typed; what
/// it only forwards is one encoded byte range, shared by every copy of the message,
/// so fanning it out never parses or encodes it again (DESIGN §13).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProps {
    /// Topic Alias; on this connection only, never forwarded.
    pub topic_alias: Option<NonZeroU16>,
    /// Message Expiry Interval, seconds; `None`: the message never expires. A broker
    /// forwards the time that remains.
    pub message_expiry: Option<u32>,
    /// Subscription Identifiers, in arrival order: set by a server for the
    /// subscriptions a delivery matched. In a PUBLISH from a client they are a
    /// Protocol Error [MQTT-3.3.4-6], which the receiver checks (it knows the direction).
    pub subscription_ids: Vec<NonZeroU32>,
    /// Payload Format Indicator, Content Type, Response Topic, Correlation Data and User
    /// Properties exactly as they arrived (no Property Length, order kept): a slice of
    /// the received frame when they were contiguous in it.
    pub forward: Bytes,
}

impl PublishProps {
    /// Whether no property is set (such a PUBLISH carries `props: None`).
    pub fn is_empty(&self) -> bool {
        self.topic_alias.is_none()
            && self.message_expiry.is_none()
            && self.subscription_ids.is_empty()
            && self.forward.is_empty()
    }

    /// The forwarded properties parsed, for the rare reader that wants one (a
    /// Payload Format Indicator check, a bridge, a test).
    pub fn forwarded(&self) -> Result<Properties, PropertyError> {
        properties::decode_body(&self.forward, PacketKind::Publish)
    }

    /// Encodes `props` into the layout of [`PublishProps::forward`]. The caller puts
    /// only forwarded properties in (no Topic Alias, Message Expiry Interval or
    /// Subscription Identifier); nothing is checked.
    pub fn encode_forward(props: &Properties) -> Bytes {
        properties::encode_body(props)
    }
}

/// One filter of a SUBSCRIBE. The filter is well-formed UTF-8 but its wildcard use is
/// not yet checked: an invalid filter earns 0x80 in SUBACK, not a closed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    pub filter: ByteString,
    /// Requested QoS (3.1.1), Maximum QoS (5.0).
    pub qos: QoS,
    /// No Local (5.0): do not send this client its own publishes. Always false under
    /// 3.1.1, where the option bits are reserved.
    pub no_local: bool,
    /// Retain As Published (5.0): keep the RETAIN flag on forwarded messages.
    pub retain_as_published: bool,
    /// Retain Handling (5.0): when to send retained messages.
    pub retain_handling: RetainHandling,
}

/// Retain Handling subscription option (§3.8.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe (3.1.1's behaviour).
    #[default]
    OnSubscribe = 0,
    /// 1: send them only if the subscription did not exist before.
    OnNewSubscription = 1,
    /// 2: do not send them.
    Never = 2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    /// Never empty: a SUBSCRIBE without filters is a protocol violation.
    pub filters: Vec<SubscribeFilter>,
    /// Subscription Identifier (5.0), 1..=268,435,455.
    pub id: Option<NonZeroU32>,
    /// User Properties (5.0), in order.
    pub user: UserProperties,
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
    /// User Properties (5.0), in order.
    pub user: UserProperties,
}

/// A 5.0 PUBACK, PUBREC, PUBREL or PUBCOMP (§3.4-§3.7). On the wire the reason code
/// and the properties may be left out (§3.4.2.1); the encoder writes the shortest form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub pkid: u16,
    /// One of the codes [`ReasonCode::valid_in`] allows in this packet.
    pub reason: ReasonCode,
    pub reason_string: Option<ByteString>,
    pub user: UserProperties,
}

impl Ack {
    /// Success, no properties: the two-byte form.
    pub fn success(pkid: u16) -> Ack {
        Ack {
            pkid,
            reason: ReasonCode::SUCCESS,
            reason_string: None,
            user: UserProperties::new(),
        }
    }
}

/// A 5.0 SUBACK (§3.9) or UNSUBACK (§3.11): one reason code per filter, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAckV5 {
    pub pkid: u16,
    pub reasons: Vec<ReasonCode>,
    pub reason_string: Option<ByteString>,
    pub user: UserProperties,
}

/// A 5.0 UNSUBACK has the layout of a 5.0 SUBACK.
pub type UnsubAckV5 = SubAckV5;

/// A 5.0 DISCONNECT (§3.14), from either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectV5 {
    pub reason: ReasonCode,
    /// Session Expiry Interval: a client may change it here (not from 0, which the
    /// receiver checks against CONNECT); a server never sends it.
    pub session_expiry: Option<u32>,
    pub reason_string: Option<ByteString>,
    /// Server Reference: another server to use (with 0x9C or 0x9D).
    pub server_reference: Option<ByteString>,
    pub user: UserProperties,
}

impl DisconnectV5 {
    /// A DISCONNECT with `reason` and no properties.
    pub fn new(reason: ReasonCode) -> DisconnectV5 {
        DisconnectV5 {
            reason,
            session_expiry: None,
            reason_string: None,
            server_reference: None,
            user: UserProperties::new(),
        }
    }
}

/// A 5.0 AUTH (§3.15): one step of an enhanced authentication exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// 0x00 Success, 0x18 Continue authentication or 0x19 Re-authenticate.
    pub reason: ReasonCode,
    pub method: Option<ByteString>,
    /// Never present without a method.
    pub data: Option<Bytes>,
    pub reason_string: Option<ByteString>,
    pub user: UserProperties,
}

/// Every MQTT control packet. The 3.1.1 acks carry only their packet identifier; on a
/// 5.0 connection the decoder returns the `…V5` variants and [`Packet::Auth`] instead
/// of `ConnAck`, `PubAck`, `PubRec`, `PubRel`, `PubComp`, `SubAck`, `UnsubAck` and
/// `Disconnect`.
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
    /// 5.0 CONNACK.
    ConnAckV5(Box<ConnAckV5>),
    /// 5.0 PUBACK.
    PubAckV5(Ack),
    /// 5.0 PUBREC.
    PubRecV5(Ack),
    /// 5.0 PUBREL.
    PubRelV5(Ack),
    /// 5.0 PUBCOMP.
    PubCompV5(Ack),
    /// 5.0 SUBACK.
    SubAckV5(Box<SubAckV5>),
    /// 5.0 UNSUBACK.
    UnsubAckV5(Box<UnsubAckV5>),
    /// 5.0 DISCONNECT.
    DisconnectV5(Box<DisconnectV5>),
    /// AUTH (5.0 only).
    Auth(Box<Auth>),
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
            Packet::ConnAckV5(_) => "CONNACK",
            Packet::PubAckV5(_) => "PUBACK",
            Packet::PubRecV5(_) => "PUBREC",
            Packet::PubRelV5(_) => "PUBREL",
            Packet::PubCompV5(_) => "PUBCOMP",
            Packet::SubAckV5(_) => "SUBACK",
            Packet::UnsubAckV5(_) => "UNSUBACK",
            Packet::DisconnectV5(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

//! MQTT 5.0 properties (OASIS MQTT 5.0 §2.2.2), sans-IO: the identifiers, their data
//! types, the packets each may appear in, and a codec for a whole property list.
//!
//! [`decode`] reads a Property Length and the properties it covers from a slice that
//! holds a complete packet (the read loop has already waited for every byte), so a
//! length or value that runs past the slice is a Malformed Packet, never "need more
//! bytes". It enforces the rules the specification states for a property on its own:
//! where it may appear, whether it may repeat, and the values it may take. Rules that
//! tie a property to another field or to session state (Authentication Data without
//! Authentication Method, a Topic Alias above the negotiated maximum, a Subscription
//! Identifier in a PUBLISH sent by a client) are left to the caller, as the 3.1.1
//! decoder leaves state and direction to its caller.
//!
//! [`Properties`] keeps the order properties arrived in, so user properties are
//! forwarded unchanged and in order (§3.3.2.3.7).

use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::encode::{remaining_length_len, write_remaining_length};
use super::packet::QoS;

/// Reason code 0x81 Malformed Packet (§2.4): the bytes cannot be parsed as the
/// specification lays them out.
pub const MALFORMED_PACKET: u8 = 0x81;

/// Reason code 0x82 Protocol Error (§2.4): the bytes parse, but break a rule the
/// specification states about their contents.
pub const PROTOCOL_ERROR: u8 = 0x82;

/// Reason code 0x94 Topic Alias invalid: the Protocol Error §3.3.4 names for a Topic
/// Alias of 0 ("the receiver uses DISCONNECT with Reason Code of 0x94").
pub const TOPIC_ALIAS_INVALID: u8 = 0x94;

/// Where a property list occurs: the control packets that carry one, plus the Will
/// Properties of CONNECT, which have their own table column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// CONNECT's own properties (§3.1.2.11).
    Connect,
    /// CONNACK (§3.2.2.3).
    ConnAck,
    /// PUBLISH (§3.3.2.3).
    Publish,
    /// PUBACK (§3.4.2.2).
    PubAck,
    /// PUBREC (§3.5.2.2).
    PubRec,
    /// PUBREL (§3.6.2.2).
    PubRel,
    /// PUBCOMP (§3.7.2.2).
    PubComp,
    /// SUBSCRIBE (§3.8.2.1).
    Subscribe,
    /// SUBACK (§3.9.2.1).
    SubAck,
    /// UNSUBSCRIBE (§3.10.2.1).
    Unsubscribe,
    /// UNSUBACK (§3.11.2.1).
    UnsubAck,
    /// DISCONNECT (§3.14.2.2).
    Disconnect,
    /// AUTH (§3.15.2.2).
    Auth,
    /// The Will Properties in CONNECT's payload (§3.1.3.2).
    Will,
}

impl PacketKind {
    /// Every kind, in the order of the specification's table; for tests and tables.
    pub const ALL: [PacketKind; 14] = [
        PacketKind::Connect,
        PacketKind::ConnAck,
        PacketKind::Publish,
        PacketKind::PubAck,
        PacketKind::PubRec,
        PacketKind::PubRel,
        PacketKind::PubComp,
        PacketKind::Subscribe,
        PacketKind::SubAck,
        PacketKind::Unsubscribe,
        PacketKind::UnsubAck,
        PacketKind::Disconnect,
        PacketKind::Auth,
        PacketKind::Will,
    ];

    /// The name the specification uses, for log lines and error messages.
    pub fn name(self) -> &'static str {
        match self {
            PacketKind::Connect => "CONNECT",
            PacketKind::ConnAck => "CONNACK",
            PacketKind::Publish => "PUBLISH",
            PacketKind::PubAck => "PUBACK",
            PacketKind::PubRec => "PUBREC",
            PacketKind::PubRel => "PUBREL",
            PacketKind::PubComp => "PUBCOMP",
            PacketKind::Subscribe => "SUBSCRIBE",
            PacketKind::SubAck => "SUBACK",
            PacketKind::Unsubscribe => "UNSUBSCRIBE",
            PacketKind::UnsubAck => "UNSUBACK",
            PacketKind::Disconnect => "DISCONNECT",
            PacketKind::Auth => "AUTH",
            PacketKind::Will => "Will Properties",
        }
    }
}

impl fmt::Display for PacketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The wire encodings a property value can have (§1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// One byte (§1.5.1).
    Byte,
    /// Big-endian u16 (§1.5.2).
    TwoByteInteger,
    /// Big-endian u32 (§1.5.3).
    FourByteInteger,
    /// One to four bytes, seven bits each, least significant first (§1.5.5).
    VariableByteInteger,
    /// u16 length then well-formed UTF-8 without U+0000 (§1.5.4).
    Utf8String,
    /// u16 length then bytes (§1.5.6).
    BinaryData,
    /// Two UTF-8 strings, name then value (§1.5.7).
    Utf8StringPair,
}

/// Property identifiers (§2.2.2.2, Table 2-4). The identifier is defined as a Variable
/// Byte Integer, but every identifier in MQTT 5.0 fits in one byte, so a first byte
/// with the continuation bit set is simply not an identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PropertyId {
    /// Whether the payload is UTF-8 (§3.3.2.3.2).
    PayloadFormatIndicator = 0x01,
    /// Seconds the message may wait for delivery (§3.3.2.3.3).
    MessageExpiryInterval = 0x02,
    /// The payload's MIME type, opaque to the server (§3.3.2.3.9).
    ContentType = 0x03,
    /// Topic a request's answer goes to (§3.3.2.3.5).
    ResponseTopic = 0x08,
    /// Opaque bytes tying a response to its request (§3.3.2.3.6).
    CorrelationData = 0x09,
    /// Names a subscription so deliveries can say which matched (§3.8.2.1.2).
    SubscriptionIdentifier = 0x0B,
    /// Seconds the session outlives the connection (§3.1.2.11.2).
    SessionExpiryInterval = 0x11,
    /// The client id the server chose for an empty one (§3.2.2.3.7).
    AssignedClientIdentifier = 0x12,
    /// The keep alive the server imposes over the client's (§3.2.2.3.14).
    ServerKeepAlive = 0x13,
    /// Names the extended authentication method (§3.1.2.11.9).
    AuthenticationMethod = 0x15,
    /// Method-specific authentication bytes (§3.1.2.11.10).
    AuthenticationData = 0x16,
    /// Whether Reason String / User Property may come back on failures (§3.1.2.11.7).
    RequestProblemInformation = 0x17,
    /// Seconds to wait before publishing the will (§3.1.3.2.2).
    WillDelayInterval = 0x18,
    /// Whether the client asks for Response Information (§3.1.2.11.6).
    RequestResponseInformation = 0x19,
    /// Basis for the client's response topics (§3.2.2.3.15).
    ResponseInformation = 0x1A,
    /// Another server to use instead (§3.2.2.3.16, §4.11).
    ServerReference = 0x1C,
    /// Human-readable diagnostic; not to be parsed (§3.2.2.3.9).
    ReasonString = 0x1F,
    /// How many QoS 1 and 2 publishes the sender will take unacknowledged (§3.1.2.11.3).
    ReceiveMaximum = 0x21,
    /// Highest Topic Alias the sender accepts; 0 means none (§3.1.2.11.5).
    TopicAliasMaximum = 0x22,
    /// Stands in for the topic name on this connection (§3.3.2.3.4).
    TopicAlias = 0x23,
    /// Highest QoS the server supports, when below 2 (§3.2.2.3.4).
    MaximumQoS = 0x24,
    /// Whether the server supports retained messages (§3.2.2.3.5).
    RetainAvailable = 0x25,
    /// An application name/value pair, forwarded unchanged (§3.3.2.3.7).
    UserProperty = 0x26,
    /// Largest packet the sender accepts (§3.1.2.11.4).
    MaximumPacketSize = 0x27,
    /// Whether the server supports wildcard subscriptions (§3.2.2.3.11).
    WildcardSubscriptionAvailable = 0x28,
    /// Whether the server supports Subscription Identifiers (§3.2.2.3.12).
    SubscriptionIdentifierAvailable = 0x29,
    /// Whether the server supports shared subscriptions (§3.2.2.3.13).
    SharedSubscriptionAvailable = 0x2A,
}

impl PropertyId {
    /// Every identifier, in ascending order.
    pub const ALL: [PropertyId; 27] = [
        PropertyId::PayloadFormatIndicator,
        PropertyId::MessageExpiryInterval,
        PropertyId::ContentType,
        PropertyId::ResponseTopic,
        PropertyId::CorrelationData,
        PropertyId::SubscriptionIdentifier,
        PropertyId::SessionExpiryInterval,
        PropertyId::AssignedClientIdentifier,
        PropertyId::ServerKeepAlive,
        PropertyId::AuthenticationMethod,
        PropertyId::AuthenticationData,
        PropertyId::RequestProblemInformation,
        PropertyId::WillDelayInterval,
        PropertyId::RequestResponseInformation,
        PropertyId::ResponseInformation,
        PropertyId::ServerReference,
        PropertyId::ReasonString,
        PropertyId::ReceiveMaximum,
        PropertyId::TopicAliasMaximum,
        PropertyId::TopicAlias,
        PropertyId::MaximumQoS,
        PropertyId::RetainAvailable,
        PropertyId::UserProperty,
        PropertyId::MaximumPacketSize,
        PropertyId::WildcardSubscriptionAvailable,
        PropertyId::SubscriptionIdentifierAvailable,
        PropertyId::SharedSubscriptionAvailable,
    ];

    /// The identifier for a wire byte; `None` for a byte the specification does not
    /// assign (a Malformed Packet when received).
    pub fn from_u8(v: u8) -> Option<PropertyId> {
        PropertyId::ALL.iter().copied().find(|id| *id as u8 == v)
    }

    /// The specification's name, for log lines and error messages.
    pub fn name(self) -> &'static str {
        match self {
            PropertyId::PayloadFormatIndicator => "Payload Format Indicator",
            PropertyId::MessageExpiryInterval => "Message Expiry Interval",
            PropertyId::ContentType => "Content Type",
            PropertyId::ResponseTopic => "Response Topic",
            PropertyId::CorrelationData => "Correlation Data",
            PropertyId::SubscriptionIdentifier => "Subscription Identifier",
            PropertyId::SessionExpiryInterval => "Session Expiry Interval",
            PropertyId::AssignedClientIdentifier => "Assigned Client Identifier",
            PropertyId::ServerKeepAlive => "Server Keep Alive",
            PropertyId::AuthenticationMethod => "Authentication Method",
            PropertyId::AuthenticationData => "Authentication Data",
            PropertyId::RequestProblemInformation => "Request Problem Information",
            PropertyId::WillDelayInterval => "Will Delay Interval",
            PropertyId::RequestResponseInformation => "Request Response Information",
            PropertyId::ResponseInformation => "Response Information",
            PropertyId::ServerReference => "Server Reference",
            PropertyId::ReasonString => "Reason String",
            PropertyId::ReceiveMaximum => "Receive Maximum",
            PropertyId::TopicAliasMaximum => "Topic Alias Maximum",
            PropertyId::TopicAlias => "Topic Alias",
            PropertyId::MaximumQoS => "Maximum QoS",
            PropertyId::RetainAvailable => "Retain Available",
            PropertyId::UserProperty => "User Property",
            PropertyId::MaximumPacketSize => "Maximum Packet Size",
            PropertyId::WildcardSubscriptionAvailable => "Wildcard Subscription Available",
            PropertyId::SubscriptionIdentifierAvailable => "Subscription Identifier Available",
            PropertyId::SharedSubscriptionAvailable => "Shared Subscription Available",
        }
    }

    /// How the value is encoded on the wire (Table 2-4).
    pub fn data_type(self) -> DataType {
        use PropertyId::*;
        match self {
            PayloadFormatIndicator
            | RequestProblemInformation
            | RequestResponseInformation
            | MaximumQoS
            | RetainAvailable
            | WildcardSubscriptionAvailable
            | SubscriptionIdentifierAvailable
            | SharedSubscriptionAvailable => DataType::Byte,
            ServerKeepAlive | ReceiveMaximum | TopicAliasMaximum | TopicAlias => {
                DataType::TwoByteInteger
            }
            MessageExpiryInterval
            | SessionExpiryInterval
            | WillDelayInterval
            | MaximumPacketSize => DataType::FourByteInteger,
            SubscriptionIdentifier => DataType::VariableByteInteger,
            ContentType
            | ResponseTopic
            | AssignedClientIdentifier
            | AuthenticationMethod
            | ResponseInformation
            | ServerReference
            | ReasonString => DataType::Utf8String,
            CorrelationData | AuthenticationData => DataType::BinaryData,
            UserProperty => DataType::Utf8StringPair,
        }
    }

    /// Whether the property may appear in `kind` (the "Packet / Will Properties"
    /// column of Table 2-4). Anywhere else it is a Malformed Packet (§2.2.2.2).
    pub fn allowed_in(self, kind: PacketKind) -> bool {
        use PacketKind as K;
        use PropertyId::*;
        match self {
            PayloadFormatIndicator
            | MessageExpiryInterval
            | ContentType
            | ResponseTopic
            | CorrelationData => matches!(kind, K::Publish | K::Will),
            SubscriptionIdentifier => matches!(kind, K::Publish | K::Subscribe),
            SessionExpiryInterval => matches!(kind, K::Connect | K::ConnAck | K::Disconnect),
            AssignedClientIdentifier
            | ServerKeepAlive
            | ResponseInformation
            | MaximumQoS
            | RetainAvailable
            | WildcardSubscriptionAvailable
            | SubscriptionIdentifierAvailable
            | SharedSubscriptionAvailable => kind == K::ConnAck,
            AuthenticationMethod | AuthenticationData => {
                matches!(kind, K::Connect | K::ConnAck | K::Auth)
            }
            RequestProblemInformation | RequestResponseInformation => kind == K::Connect,
            WillDelayInterval => kind == K::Will,
            ServerReference => matches!(kind, K::ConnAck | K::Disconnect),
            ReasonString => matches!(
                kind,
                K::ConnAck
                    | K::PubAck
                    | K::PubRec
                    | K::PubRel
                    | K::PubComp
                    | K::SubAck
                    | K::UnsubAck
                    | K::Disconnect
                    | K::Auth
            ),
            ReceiveMaximum | TopicAliasMaximum | MaximumPacketSize => {
                matches!(kind, K::Connect | K::ConnAck)
            }
            TopicAlias => kind == K::Publish,
            // Every kind that has a property list at all.
            UserProperty => true,
        }
    }

    /// Whether the property may appear more than once in `kind`. User Property may
    /// repeat wherever it is allowed (each packet's section says "The User Property
    /// is allowed to appear multiple times"); Subscription Identifier may repeat in PUBLISH, one per
    /// matching subscription (§3.3.2.3.8), but not in SUBSCRIBE (§3.8.2.1.2). For
    /// everything else a second occurrence is a Protocol Error.
    pub fn repeatable_in(self, kind: PacketKind) -> bool {
        match self {
            PropertyId::UserProperty => true,
            PropertyId::SubscriptionIdentifier => kind == PacketKind::Publish,
            _ => false,
        }
    }
}

impl fmt::Display for PropertyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#04x})", self.name(), *self as u8)
    }
}

/// What the Payload Format Indicator says about the payload (§3.3.2.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PayloadFormat {
    /// 0: unspecified bytes, the same as sending no indicator.
    Unspecified = 0,
    /// 1: UTF-8 encoded character data.
    Utf8 = 1,
}

/// One property with its value in the type the specification gives it, so that most
/// values the specification forbids (a Receive Maximum of 0, a Retain Available of 2)
/// cannot be represented at all. Two rules the types cannot express are the caller's:
/// a Maximum QoS of 2 is written as given, and a Subscription Identifier above
/// 268,435,455 makes [`Property::encode`] panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    /// 0x01, Byte.
    PayloadFormatIndicator(PayloadFormat),
    /// 0x02, Four Byte Integer: seconds.
    MessageExpiryInterval(u32),
    /// 0x03, UTF-8 String.
    ContentType(ByteString),
    /// 0x08, UTF-8 String.
    ResponseTopic(ByteString),
    /// 0x09, Binary Data.
    CorrelationData(Bytes),
    /// 0x0B, Variable Byte Integer, 1..=268,435,455.
    SubscriptionIdentifier(NonZeroU32),
    /// 0x11, Four Byte Integer: seconds.
    SessionExpiryInterval(u32),
    /// 0x12, UTF-8 String.
    AssignedClientIdentifier(ByteString),
    /// 0x13, Two Byte Integer: seconds.
    ServerKeepAlive(u16),
    /// 0x15, UTF-8 String.
    AuthenticationMethod(ByteString),
    /// 0x16, Binary Data.
    AuthenticationData(Bytes),
    /// 0x17, Byte, 0 or 1.
    RequestProblemInformation(bool),
    /// 0x18, Four Byte Integer: seconds.
    WillDelayInterval(u32),
    /// 0x19, Byte, 0 or 1.
    RequestResponseInformation(bool),
    /// 0x1A, UTF-8 String.
    ResponseInformation(ByteString),
    /// 0x1C, UTF-8 String.
    ServerReference(ByteString),
    /// 0x1F, UTF-8 String.
    ReasonString(ByteString),
    /// 0x21, Two Byte Integer, not 0.
    ReceiveMaximum(NonZeroU16),
    /// 0x22, Two Byte Integer.
    TopicAliasMaximum(u16),
    /// 0x23, Two Byte Integer, not 0.
    TopicAlias(NonZeroU16),
    /// 0x24, Byte, 0 or 1 (a server that supports QoS 2 sends no Maximum QoS).
    MaximumQoS(QoS),
    /// 0x25, Byte, 0 or 1.
    RetainAvailable(bool),
    /// 0x26, UTF-8 String Pair: name, then value.
    UserProperty(ByteString, ByteString),
    /// 0x27, Four Byte Integer, not 0.
    MaximumPacketSize(NonZeroU32),
    /// 0x28, Byte, 0 or 1.
    WildcardSubscriptionAvailable(bool),
    /// 0x29, Byte, 0 or 1.
    SubscriptionIdentifierAvailable(bool),
    /// 0x2A, Byte, 0 or 1.
    SharedSubscriptionAvailable(bool),
}

impl Property {
    /// The identifier written before the value.
    pub fn id(&self) -> PropertyId {
        match self {
            Property::PayloadFormatIndicator(_) => PropertyId::PayloadFormatIndicator,
            Property::MessageExpiryInterval(_) => PropertyId::MessageExpiryInterval,
            Property::ContentType(_) => PropertyId::ContentType,
            Property::ResponseTopic(_) => PropertyId::ResponseTopic,
            Property::CorrelationData(_) => PropertyId::CorrelationData,
            Property::SubscriptionIdentifier(_) => PropertyId::SubscriptionIdentifier,
            Property::SessionExpiryInterval(_) => PropertyId::SessionExpiryInterval,
            Property::AssignedClientIdentifier(_) => PropertyId::AssignedClientIdentifier,
            Property::ServerKeepAlive(_) => PropertyId::ServerKeepAlive,
            Property::AuthenticationMethod(_) => PropertyId::AuthenticationMethod,
            Property::AuthenticationData(_) => PropertyId::AuthenticationData,
            Property::RequestProblemInformation(_) => PropertyId::RequestProblemInformation,
            Property::WillDelayInterval(_) => PropertyId::WillDelayInterval,
            Property::RequestResponseInformation(_) => PropertyId::RequestResponseInformation,
            Property::ResponseInformation(_) => PropertyId::ResponseInformation,
            Property::ServerReference(_) => PropertyId::ServerReference,
            Property::ReasonString(_) => PropertyId::ReasonString,
            Property::ReceiveMaximum(_) => PropertyId::ReceiveMaximum,
            Property::TopicAliasMaximum(_) => PropertyId::TopicAliasMaximum,
            Property::TopicAlias(_) => PropertyId::TopicAlias,
            Property::MaximumQoS(_) => PropertyId::MaximumQoS,
            Property::RetainAvailable(_) => PropertyId::RetainAvailable,
            Property::UserProperty(_, _) => PropertyId::UserProperty,
            Property::MaximumPacketSize(_) => PropertyId::MaximumPacketSize,
            Property::WildcardSubscriptionAvailable(_) => PropertyId::WildcardSubscriptionAvailable,
            Property::SubscriptionIdentifierAvailable(_) => {
                PropertyId::SubscriptionIdentifierAvailable
            }
            Property::SharedSubscriptionAvailable(_) => PropertyId::SharedSubscriptionAvailable,
        }
    }

    /// Bytes this property takes on the wire, identifier included.
    pub fn encoded_len(&self) -> usize {
        let value = match self {
            Property::PayloadFormatIndicator(_)
            | Property::RequestProblemInformation(_)
            | Property::RequestResponseInformation(_)
            | Property::MaximumQoS(_)
            | Property::RetainAvailable(_)
            | Property::WildcardSubscriptionAvailable(_)
            | Property::SubscriptionIdentifierAvailable(_)
            | Property::SharedSubscriptionAvailable(_) => 1,
            Property::ServerKeepAlive(_)
            | Property::TopicAliasMaximum(_)
            | Property::ReceiveMaximum(_)
            | Property::TopicAlias(_) => 2,
            Property::MessageExpiryInterval(_)
            | Property::SessionExpiryInterval(_)
            | Property::WillDelayInterval(_)
            | Property::MaximumPacketSize(_) => 4,
            Property::SubscriptionIdentifier(v) => remaining_length_len(v.get() as usize),
            Property::ContentType(s)
            | Property::ResponseTopic(s)
            | Property::AssignedClientIdentifier(s)
            | Property::AuthenticationMethod(s)
            | Property::ResponseInformation(s)
            | Property::ServerReference(s)
            | Property::ReasonString(s) => 2 + s.len(),
            Property::CorrelationData(b) | Property::AuthenticationData(b) => 2 + b.len(),
            Property::UserProperty(name, value) => 4 + name.len() + value.len(),
        };
        1 + value
    }

    /// Appends the identifier and the value.
    ///
    /// # Panics
    /// If a string or binary value is longer than 65535 bytes, or a Subscription
    /// Identifier exceeds 268,435,455: neither can be represented on the wire.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.id() as u8);
        match self {
            Property::PayloadFormatIndicator(v) => out.put_u8(*v as u8),
            Property::RequestProblemInformation(b)
            | Property::RequestResponseInformation(b)
            | Property::RetainAvailable(b)
            | Property::WildcardSubscriptionAvailable(b)
            | Property::SubscriptionIdentifierAvailable(b)
            | Property::SharedSubscriptionAvailable(b) => out.put_u8(u8::from(*b)),
            Property::MaximumQoS(q) => out.put_u8(*q as u8),
            Property::ServerKeepAlive(v) | Property::TopicAliasMaximum(v) => out.put_u16(*v),
            Property::ReceiveMaximum(v) | Property::TopicAlias(v) => out.put_u16(v.get()),
            Property::MessageExpiryInterval(v)
            | Property::SessionExpiryInterval(v)
            | Property::WillDelayInterval(v) => out.put_u32(*v),
            Property::MaximumPacketSize(v) => out.put_u32(v.get()),
            Property::SubscriptionIdentifier(v) => write_remaining_length(out, v.get() as usize),
            Property::ContentType(s)
            | Property::ResponseTopic(s)
            | Property::AssignedClientIdentifier(s)
            | Property::AuthenticationMethod(s)
            | Property::ResponseInformation(s)
            | Property::ServerReference(s)
            | Property::ReasonString(s) => put_prefixed(out, s.as_bytes()),
            Property::CorrelationData(b) | Property::AuthenticationData(b) => put_prefixed(out, b),
            Property::UserProperty(name, value) => {
                put_prefixed(out, name.as_bytes());
                put_prefixed(out, value.as_bytes());
            }
        }
    }
}

/// A property list in wire order. Order matters only for user properties, which the
/// server must forward unchanged and in order (§3.3.2.3.7); keeping a plain list
/// keeps every property's order without a special case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    list: Vec<Property>,
}

impl Properties {
    /// An empty list (encoded as a single Property Length byte of 0).
    pub fn new() -> Properties {
        Properties::default()
    }

    /// Appends `p`; no check is made that it is allowed or not repeated, so tests can
    /// build illegal lists.
    pub fn push(&mut self, p: Property) {
        self.list.push(p);
    }

    /// Number of properties, repeats counted.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are no properties.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The properties in wire order.
    pub fn iter(&self) -> std::slice::Iter<'_, Property> {
        self.list.iter()
    }

    /// The first property with identifier `id`; for the non-repeatable properties,
    /// which a decoded list holds at most once, the only one.
    pub fn get(&self, id: PropertyId) -> Option<&Property> {
        self.list.iter().find(|p| p.id() == id)
    }

    /// The user properties as (name, value), in wire order.
    pub fn user_properties(&self) -> impl Iterator<Item = (&ByteString, &ByteString)> {
        self.list.iter().filter_map(|p| match p {
            Property::UserProperty(name, value) => Some((name, value)),
            _ => None,
        })
    }

    /// Bytes of the properties alone, without the Property Length field.
    fn body_len(&self) -> usize {
        self.list.iter().map(Property::encoded_len).sum()
    }
}

impl From<Vec<Property>> for Properties {
    fn from(list: Vec<Property>) -> Properties {
        Properties { list }
    }
}

impl FromIterator<Property> for Properties {
    fn from_iter<I: IntoIterator<Item = Property>>(iter: I) -> Properties {
        Properties {
            list: iter.into_iter().collect(),
        }
    }
}

impl IntoIterator for Properties {
    type Item = Property;
    type IntoIter = std::vec::IntoIter<Property>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.into_iter()
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = &'a Property;
    type IntoIter = std::slice::Iter<'a, Property>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

/// Why a property list cannot be accepted. Every variant ends the connection;
/// [`PropertyError::reason_code`] gives the reason code for the CONNACK or DISCONNECT
/// sent first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyError {
    /// The Property Length, or a Subscription Identifier, continues past its fourth
    /// byte (§1.5.5).
    #[error("malformed variable byte integer")]
    MalformedVarInt,
    /// The Property Length runs past the packet, or a value runs past the Property
    /// Length.
    #[error("property list truncated")]
    Truncated,
    /// An identifier Table 2-4 does not assign (§2.2.2.2).
    #[error("unknown property identifier {0:#04x}")]
    UnknownIdentifier(u8),
    /// A known property in a packet whose column of Table 2-4 does not list it: "a
    /// Control Packet which contains an Identifier which is not valid for its packet
    /// type ... is a Malformed Packet" (§2.2.2.2).
    #[error("{id} is not allowed in {kind}")]
    NotAllowed {
        /// The property found.
        id: PropertyId,
        /// Where it was found.
        kind: PacketKind,
    },
    /// A second occurrence of a property that may appear only once there ("It is a
    /// Protocol Error to include ... more than once").
    #[error("{id} appears more than once in {kind}")]
    Duplicate {
        /// The repeated property.
        id: PropertyId,
        /// Where it was repeated.
        kind: PacketKind,
    },
    /// A UTF-8 string value that is not well-formed UTF-8 [MQTT-1.5.4-1].
    #[error("property string is not valid UTF-8")]
    InvalidUtf8,
    /// A UTF-8 string value containing U+0000 [MQTT-1.5.4-2].
    #[error("property string contains U+0000")]
    NullCharacter,
    /// A value outside the range the specification gives the property: a flag byte
    /// other than 0 or 1, or a zero Receive Maximum, Maximum Packet Size, Subscription
    /// Identifier or Topic Alias. Each property's section calls these a Protocol
    /// Error, except the Payload Format Indicator: §3.3.2.3.2 lists only 0 and 1 but
    /// names no error for other values, so they are refused as data the protocol does
    /// not allow, the definition of a Protocol Error in §1.2.
    #[error("invalid value {value} for {id}")]
    InvalidValue {
        /// The property.
        id: PropertyId,
        /// The value received.
        value: u32,
    },
}

impl PropertyError {
    /// The reason code (§2.4) the specification names for this error: 0x81 Malformed
    /// Packet when the bytes cannot be parsed as a property list of this packet, 0x82
    /// Protocol Error when they parse but break a rule about their contents, and the
    /// more specific 0x94 Topic Alias invalid for a Topic Alias of 0 (§3.3.4).
    pub fn reason_code(&self) -> u8 {
        match self {
            PropertyError::InvalidValue {
                id: PropertyId::TopicAlias,
                ..
            } => TOPIC_ALIAS_INVALID,
            PropertyError::MalformedVarInt
            | PropertyError::Truncated
            | PropertyError::UnknownIdentifier(_)
            | PropertyError::NotAllowed { .. }
            | PropertyError::InvalidUtf8
            | PropertyError::NullCharacter => MALFORMED_PACKET,
            PropertyError::Duplicate { .. } | PropertyError::InvalidValue { .. } => PROTOCOL_ERROR,
        }
    }
}

/// Decodes the Property Length at the front of `buf` and the properties it covers, as
/// they may appear in `kind`.
///
/// `buf` holds the rest of a complete packet, so anything that runs past it is
/// malformed. Returns the properties and the bytes consumed (the length field plus the
/// properties); whatever follows (a payload, a reason code list) is left to the caller.
/// A Property Length need not be minimally encoded (§1.5.5 asks it of senders only).
pub fn decode(buf: &[u8], kind: PacketKind) -> Result<(Properties, usize), PropertyError> {
    let (len, len_width) = read_var_int(buf)?;
    let end = len_width
        .checked_add(len as usize)
        .filter(|end| *end <= buf.len())
        .ok_or(PropertyError::Truncated)?;
    Ok((decode_body(&buf[len_width..end], kind)?, end))
}

/// Decodes a property list without its Property Length: `body` is exactly the
/// properties, as [`PublishProps::forward`](super::PublishProps::forward) holds them.
pub fn decode_body(body: &[u8], kind: PacketKind) -> Result<Properties, PropertyError> {
    let mut rest = body;
    let mut props = Properties::new();
    let mut seen = Seen::default();
    while let Some((&first, tail)) = rest.split_first() {
        rest = tail;
        let id = seen.admit(first, kind)?;
        props.push(read_value(id, &mut rest)?);
    }
    Ok(props)
}

/// The identifiers met so far in one list, to refuse a repeat.
#[derive(Default)]
struct Seen(u64);

impl Seen {
    /// Checks identifier byte `first` in `kind`: known, allowed there, and not a second
    /// occurrence of a property that may appear once.
    fn admit(&mut self, first: u8, kind: PacketKind) -> Result<PropertyId, PropertyError> {
        let id = PropertyId::from_u8(first).ok_or(PropertyError::UnknownIdentifier(first))?;
        if !id.allowed_in(kind) {
            return Err(PropertyError::NotAllowed { id, kind });
        }
        // Identifiers run up to 0x2A, so one bit each fits in a u64.
        let bit = 1u64 << (id as u8);
        if self.0 & bit != 0 && !id.repeatable_in(kind) {
            return Err(PropertyError::Duplicate { id, kind });
        }
        self.0 |= bit;
        Ok(id)
    }
}

/// Checks the property list at the front of `buf` exactly as [`decode`] does, without
/// building it: for each property, `each` gets its identifier, its value if it is an
/// integer (0 for strings and binary data), and the range of `buf` the whole property
/// (identifier included) takes. Returns the bytes consumed, Property Length included.
/// Used where properties are kept as wire bytes (PUBLISH, Will Properties).
pub(crate) fn walk(
    buf: &[u8],
    kind: PacketKind,
    mut each: impl FnMut(PropertyId, u32, std::ops::Range<usize>),
) -> Result<usize, PropertyError> {
    let (len, len_width) = read_var_int(buf)?;
    let end = len_width
        .checked_add(len as usize)
        .filter(|end| *end <= buf.len())
        .ok_or(PropertyError::Truncated)?;
    let mut rest = &buf[len_width..end];
    let mut seen = Seen::default();
    while let Some((&first, tail)) = rest.split_first() {
        let start = end - rest.len();
        rest = tail;
        let id = seen.admit(first, kind)?;
        let value = check_value(id, &mut rest)?;
        each(id, value, start..end - rest.len());
    }
    Ok(end)
}

/// Reads and checks the value of `id` like [`read_value`], without copying strings
/// or binary data: the integer value, or 0.
fn check_value(id: PropertyId, rest: &mut &[u8]) -> Result<u32, PropertyError> {
    fn check_string(rest: &mut &[u8]) -> Result<(), PropertyError> {
        let len = take_u16(rest)?;
        let s = std::str::from_utf8(take(rest, len as usize)?)
            .map_err(|_| PropertyError::InvalidUtf8)?;
        if s.as_bytes().contains(&0) {
            return Err(PropertyError::NullCharacter);
        }
        Ok(())
    }
    match id.data_type() {
        DataType::Utf8String => check_string(rest).map(|()| 0),
        DataType::Utf8StringPair => {
            check_string(rest)?;
            check_string(rest).map(|()| 0)
        }
        DataType::BinaryData => {
            let len = take_u16(rest)?;
            take(rest, len as usize).map(|_| 0)
        }
        _ => Ok(match read_value(id, rest)? {
            Property::PayloadFormatIndicator(v) => u32::from(v as u8),
            Property::MessageExpiryInterval(v)
            | Property::SessionExpiryInterval(v)
            | Property::WillDelayInterval(v) => v,
            Property::SubscriptionIdentifier(v) | Property::MaximumPacketSize(v) => v.get(),
            Property::TopicAlias(v) | Property::ReceiveMaximum(v) => u32::from(v.get()),
            Property::ServerKeepAlive(v) | Property::TopicAliasMaximum(v) => u32::from(v),
            Property::MaximumQoS(q) => u32::from(q as u8),
            Property::RequestProblemInformation(b)
            | Property::RequestResponseInformation(b)
            | Property::RetainAvailable(b)
            | Property::WildcardSubscriptionAvailable(b)
            | Property::SubscriptionIdentifierAvailable(b)
            | Property::SharedSubscriptionAvailable(b) => u32::from(b),
            _ => 0,
        }),
    }
}

/// Appends the Property Length and every property in `props`, in order.
///
/// # Panics
/// As [`Property::encode`], or if the list is longer than 268,435,455 bytes.
pub fn encode(props: &Properties, out: &mut BytesMut) {
    let body = props.body_len();
    out.reserve(remaining_length_len(body) + body);
    write_remaining_length(out, body);
    for p in props {
        p.encode(out);
    }
}

/// The properties of `props` in order, without a Property Length: the layout of
/// [`PublishProps::forward`](super::PublishProps::forward).
pub fn encode_body(props: &Properties) -> Bytes {
    let mut out = BytesMut::with_capacity(props.body_len());
    for p in props {
        p.encode(&mut out);
    }
    out.freeze()
}

/// Bytes [`encode`] writes for `props`: the Property Length field plus the properties,
/// to add into a packet's remaining length.
pub fn encoded_len(props: &Properties) -> usize {
    let body = props.body_len();
    remaining_length_len(body) + body
}

/// Reads a Variable Byte Integer (§1.5.5) from the front of `buf`: its value and width.
fn read_var_int(buf: &[u8]) -> Result<(u32, usize), PropertyError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if i == 4 {
            return Err(PropertyError::MalformedVarInt);
        }
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    // Ran out of bytes: a fifth continuation byte would have been caught above.
    Err(PropertyError::Truncated)
}

/// Splits `n` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], PropertyError> {
    if rest.len() < n {
        return Err(PropertyError::Truncated);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_u8(rest: &mut &[u8]) -> Result<u8, PropertyError> {
    Ok(take(rest, 1)?[0])
}

fn take_u16(rest: &mut &[u8]) -> Result<u16, PropertyError> {
    let b = take(rest, 2)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, PropertyError> {
    let b = take(rest, 4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn take_binary(rest: &mut &[u8]) -> Result<Bytes, PropertyError> {
    let len = take_u16(rest)?;
    Ok(Bytes::copy_from_slice(take(rest, len as usize)?))
}

fn take_string(rest: &mut &[u8]) -> Result<ByteString, PropertyError> {
    let len = take_u16(rest)?;
    let s =
        std::str::from_utf8(take(rest, len as usize)?).map_err(|_| PropertyError::InvalidUtf8)?;
    if s.contains('\0') {
        return Err(PropertyError::NullCharacter);
    }
    Ok(ByteString::from(s))
}

/// A flag byte that the specification allows only as 0 or 1.
fn take_flag(rest: &mut &[u8], id: PropertyId) -> Result<bool, PropertyError> {
    match take_u8(rest)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(PropertyError::InvalidValue {
            id,
            value: u32::from(v),
        }),
    }
}

fn nonzero_u16(v: u16, id: PropertyId) -> Result<NonZeroU16, PropertyError> {
    NonZeroU16::new(v).ok_or(PropertyError::InvalidValue { id, value: 0 })
}

fn nonzero_u32(v: u32, id: PropertyId) -> Result<NonZeroU32, PropertyError> {
    NonZeroU32::new(v).ok_or(PropertyError::InvalidValue { id, value: 0 })
}

/// Reads the value of property `id` from the front of `rest`.
fn read_value(id: PropertyId, rest: &mut &[u8]) -> Result<Property, PropertyError> {
    use PropertyId as I;
    Ok(match id {
        I::PayloadFormatIndicator => match take_u8(rest)? {
            0 => Property::PayloadFormatIndicator(PayloadFormat::Unspecified),
            1 => Property::PayloadFormatIndicator(PayloadFormat::Utf8),
            v => {
                return Err(PropertyError::InvalidValue {
                    id,
                    value: u32::from(v),
                })
            }
        },
        I::MessageExpiryInterval => Property::MessageExpiryInterval(take_u32(rest)?),
        I::ContentType => Property::ContentType(take_string(rest)?),
        I::ResponseTopic => Property::ResponseTopic(take_string(rest)?),
        I::CorrelationData => Property::CorrelationData(take_binary(rest)?),
        I::SubscriptionIdentifier => {
            let (v, width) = read_var_int(rest)?;
            *rest = &rest[width..];
            Property::SubscriptionIdentifier(nonzero_u32(v, id)?)
        }
        I::SessionExpiryInterval => Property::SessionExpiryInterval(take_u32(rest)?),
        I::AssignedClientIdentifier => Property::AssignedClientIdentifier(take_string(rest)?),
        I::ServerKeepAlive => Property::ServerKeepAlive(take_u16(rest)?),
        I::AuthenticationMethod => Property::AuthenticationMethod(take_string(rest)?),
        I::AuthenticationData => Property::AuthenticationData(take_binary(rest)?),
        I::RequestProblemInformation => Property::RequestProblemInformation(take_flag(rest, id)?),
        I::WillDelayInterval => Property::WillDelayInterval(take_u32(rest)?),
        I::RequestResponseInformation => Property::RequestResponseInformation(take_flag(rest, id)?),
        I::ResponseInformation => Property::ResponseInformation(take_string(rest)?),
        I::ServerReference => Property::ServerReference(take_string(rest)?),
        I::ReasonString => Property::ReasonString(take_string(rest)?),
        I::ReceiveMaximum => Property::ReceiveMaximum(nonzero_u16(take_u16(rest)?, id)?),
        I::TopicAliasMaximum => Property::TopicAliasMaximum(take_u16(rest)?),
        I::TopicAlias => Property::TopicAlias(nonzero_u16(take_u16(rest)?, id)?),
        I::MaximumQoS => Property::MaximumQoS(if take_flag(rest, id)? {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        }),
        I::RetainAvailable => Property::RetainAvailable(take_flag(rest, id)?),
        I::UserProperty => {
            let name = take_string(rest)?;
            let value = take_string(rest)?;
            Property::UserProperty(name, value)
        }
        I::MaximumPacketSize => Property::MaximumPacketSize(nonzero_u32(take_u32(rest)?, id)?),
        I::WildcardSubscriptionAvailable => {
            Property::WildcardSubscriptionAvailable(take_flag(rest, id)?)
        }
        I::SubscriptionIdentifierAvailable => {
            Property::SubscriptionIdentifierAvailable(take_flag(rest, id)?)
        }
        I::SharedSubscriptionAvailable => {
            Property::SharedSubscriptionAvailable(take_flag(rest, id)?)
        }
    })
}

/// Appends a 16-bit length prefix and `bytes` (a UTF-8 string or binary value).
///
/// # Panics
/// If `bytes` is longer than 65535 bytes (it cannot be represented on the wire).
fn put_prefixed(out: &mut BytesMut, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or_else(|_| {
        panic!(
            "MQTT property string or binary value of {} bytes exceeds 65535",
            bytes.len()
        )
    });
    out.put_u16(len);
    out.put_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> ByteString {
        ByteString::from(v)
    }

    /// One sample of every property, with a value that exercises its width.
    fn samples() -> Vec<Property> {
        vec![
            Property::PayloadFormatIndicator(PayloadFormat::Utf8),
            Property::MessageExpiryInterval(0xDEAD_BEEF),
            Property::ContentType(s("application/json")),
            Property::ResponseTopic(s("reply/to/me")),
            Property::CorrelationData(Bytes::from_static(&[0, 1, 0xFF])),
            Property::SubscriptionIdentifier(NonZeroU32::new(268_435_455).unwrap()),
            Property::SessionExpiryInterval(u32::MAX),
            Property::AssignedClientIdentifier(s("auto-1")),
            Property::ServerKeepAlive(0x1234),
            Property::AuthenticationMethod(s("SCRAM-SHA-256")),
            Property::AuthenticationData(Bytes::from_static(b"\x00nonce")),
            Property::RequestProblemInformation(false),
            Property::WillDelayInterval(60),
            Property::RequestResponseInformation(true),
            Property::ResponseInformation(s("resp/")),
            Property::ServerReference(s("other:1883")),
            Property::ReasonString(s("héllo")),
            Property::ReceiveMaximum(NonZeroU16::new(65_535).unwrap()),
            Property::TopicAliasMaximum(0),
            Property::TopicAlias(NonZeroU16::new(7).unwrap()),
            Property::MaximumQoS(QoS::AtLeastOnce),
            Property::RetainAvailable(false),
            Property::UserProperty(s("k"), s("")),
            Property::MaximumPacketSize(NonZeroU32::new(1).unwrap()),
            Property::WildcardSubscriptionAvailable(true),
            Property::SubscriptionIdentifierAvailable(false),
            Property::SharedSubscriptionAvailable(true),
        ]
    }

    fn encoded(props: &Properties) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(props, &mut out);
        assert_eq!(out.len(), encoded_len(props), "encoded_len disagrees");
        out.to_vec()
    }

    /// A property list made of a one-byte Property Length and `body`.
    fn list(body: &[u8]) -> Vec<u8> {
        assert!(body.len() < 128);
        let mut v = vec![body.len() as u8];
        v.extend_from_slice(body);
        v
    }

    fn err(bytes: &[u8], kind: PacketKind) -> PropertyError {
        decode(bytes, kind).expect_err("decode should fail")
    }

    #[test]
    fn samples_cover_every_identifier_once() {
        let ids: Vec<PropertyId> = samples().iter().map(Property::id).collect();
        assert_eq!(ids, PropertyId::ALL.to_vec());
    }

    #[test]
    fn every_identifier_round_trips_through_from_u8() {
        for id in PropertyId::ALL {
            assert_eq!(PropertyId::from_u8(id as u8), Some(id));
        }
        let assigned: Vec<u8> = PropertyId::ALL.iter().map(|id| *id as u8).collect();
        for b in 0..=u8::MAX {
            if !assigned.contains(&b) {
                assert_eq!(PropertyId::from_u8(b), None, "{b:#04x}");
            }
        }
    }

    #[test]
    fn every_property_round_trips_in_every_kind_that_allows_it() {
        for p in samples() {
            let kinds: Vec<PacketKind> = PacketKind::ALL
                .into_iter()
                .filter(|k| p.id().allowed_in(*k))
                .collect();
            assert!(!kinds.is_empty(), "{} allowed nowhere", p.id());
            for kind in kinds {
                let props = Properties::from(vec![p.clone()]);
                let bytes = encoded(&props);
                let (back, used) = decode(&bytes, kind).unwrap();
                assert_eq!(back, props, "{} in {kind}", p.id());
                assert_eq!(used, bytes.len());
            }
        }
    }

    #[test]
    fn every_data_type_is_written_as_section_1_5_lays_it_out() {
        let cases: Vec<(Property, Vec<u8>)> = vec![
            (Property::RetainAvailable(true), vec![0x25, 1]),
            (Property::ServerKeepAlive(0x0102), vec![0x13, 1, 2]),
            (
                Property::MaximumPacketSize(NonZeroU32::new(0x0102_0304).unwrap()),
                vec![0x27, 1, 2, 3, 4],
            ),
            (
                Property::SubscriptionIdentifier(NonZeroU32::new(128).unwrap()),
                vec![0x0B, 0x80, 0x01],
            ),
            (
                Property::ReasonString(s("ab")),
                vec![0x1F, 0, 2, b'a', b'b'],
            ),
            (
                Property::CorrelationData(Bytes::from_static(&[9])),
                vec![0x09, 0, 1, 9],
            ),
            (
                Property::UserProperty(s("a"), s("b")),
                vec![0x26, 0, 1, b'a', 0, 1, b'b'],
            ),
        ];
        for (p, wire) in cases {
            let mut out = BytesMut::new();
            p.encode(&mut out);
            assert_eq!(out.to_vec(), wire, "{}", p.id());
            assert_eq!(p.encoded_len(), wire.len());
        }
    }

    #[test]
    fn a_full_connack_list_round_trips_in_order() {
        let mut props: Properties = samples()
            .into_iter()
            .filter(|p| p.id().allowed_in(PacketKind::ConnAck))
            .filter(|p| p.id() != PropertyId::ReasonString)
            .collect();
        // Long enough that the Property Length needs a second byte.
        props.push(Property::ReasonString(ByteString::from("r".repeat(200))));
        let bytes = encoded(&props);
        assert!(bytes[0] & 0x80 != 0, "Property Length takes two bytes");
        assert_eq!(
            decode(&bytes, PacketKind::ConnAck).unwrap(),
            (props, bytes.len())
        );
    }

    #[test]
    fn empty_property_length_decodes_to_no_properties() {
        let (props, used) = decode(&[0x00], PacketKind::PubAck).unwrap();
        assert!(props.is_empty());
        assert_eq!(used, 1);
        assert_eq!(encoded(&Properties::new()), vec![0x00]);
    }

    #[test]
    fn decode_leaves_what_follows_the_properties_alone() {
        let mut bytes = list(&[0x23, 0, 5]);
        bytes.extend_from_slice(b"payload");
        let (props, used) = decode(&bytes, PacketKind::Publish).unwrap();
        assert_eq!(used, 4);
        assert_eq!(
            props.get(PropertyId::TopicAlias),
            Some(&Property::TopicAlias(NonZeroU16::new(5).unwrap()))
        );
    }

    #[test]
    fn non_minimal_property_length_is_accepted() {
        // Length 2 written in two bytes, then Retain Available = 1.
        let bytes = [0x82, 0x00, 0x25, 0x01];
        let (props, used) = decode(&bytes, PacketKind::ConnAck).unwrap();
        assert_eq!(used, 4);
        assert_eq!(props.len(), 1);
    }

    #[test]
    fn user_properties_repeat_and_keep_their_order() {
        let props = Properties::from(vec![
            Property::UserProperty(s("b"), s("2")),
            Property::ContentType(s("text/plain")),
            Property::UserProperty(s("a"), s("1")),
            Property::UserProperty(s("b"), s("2")),
        ]);
        let bytes = encoded(&props);
        let (back, _) = decode(&bytes, PacketKind::Publish).unwrap();
        assert_eq!(back, props);
        let users: Vec<(&str, &str)> = back.user_properties().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(users, [("b", "2"), ("a", "1"), ("b", "2")]);
    }

    #[test]
    fn user_property_is_allowed_and_repeatable_in_every_kind() {
        let bytes = list(&[0x26, 0, 1, b'k', 0, 0, 0x26, 0, 1, b'k', 0, 0]);
        for kind in PacketKind::ALL {
            let (props, _) = decode(&bytes, kind).unwrap();
            assert_eq!(props.len(), 2, "{kind}");
        }
    }

    #[test]
    fn subscription_identifier_may_repeat_in_publish_but_not_in_subscribe() {
        let bytes = list(&[0x0B, 0x01, 0x0B, 0x02]);
        let (props, _) = decode(&bytes, PacketKind::Publish).unwrap();
        assert_eq!(props.len(), 2);
        let e = err(&bytes, PacketKind::Subscribe);
        assert_eq!(
            e,
            PropertyError::Duplicate {
                id: PropertyId::SubscriptionIdentifier,
                kind: PacketKind::Subscribe
            }
        );
        assert_eq!(e.reason_code(), PROTOCOL_ERROR);
    }

    #[test]
    fn duplicate_non_repeatable_property_is_a_protocol_error() {
        let e = err(
            &list(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2]),
            PacketKind::Publish,
        );
        assert_eq!(
            e,
            PropertyError::Duplicate {
                id: PropertyId::MessageExpiryInterval,
                kind: PacketKind::Publish
            }
        );
        assert_eq!(e.reason_code(), 0x82);
    }

    #[test]
    fn unknown_identifier_is_malformed() {
        for id in [0x00, 0x04, 0x2B, 0x80] {
            let e = err(&list(&[id, 0]), PacketKind::Connect);
            assert_eq!(e, PropertyError::UnknownIdentifier(id));
            assert_eq!(e.reason_code(), 0x81);
        }
    }

    #[test]
    fn publish_property_is_refused_in_connack() {
        let e = err(&list(&[0x23, 0, 1]), PacketKind::ConnAck);
        assert_eq!(
            e,
            PropertyError::NotAllowed {
                id: PropertyId::TopicAlias,
                kind: PacketKind::ConnAck
            }
        );
        assert_eq!(e.reason_code(), MALFORMED_PACKET);
    }

    #[test]
    fn connack_property_is_refused_in_publish() {
        let e = err(&list(&[0x24, 0]), PacketKind::Publish);
        assert_eq!(
            e,
            PropertyError::NotAllowed {
                id: PropertyId::MaximumQoS,
                kind: PacketKind::Publish
            }
        );
        assert_eq!(e.reason_code(), MALFORMED_PACKET);
    }

    #[test]
    fn will_delay_interval_belongs_to_will_properties_only() {
        let bytes = list(&[0x18, 0, 0, 0, 10]);
        assert!(decode(&bytes, PacketKind::Will).is_ok());
        for kind in [PacketKind::Connect, PacketKind::Publish] {
            assert!(matches!(
                err(&bytes, kind),
                PropertyError::NotAllowed { .. }
            ));
        }
    }

    #[test]
    fn property_length_running_past_the_buffer_is_malformed() {
        let e = err(&[0x05, 0x25, 0x01], PacketKind::ConnAck);
        assert_eq!(e, PropertyError::Truncated);
        assert_eq!(e.reason_code(), 0x81);
        // The length field itself cut short.
        assert_eq!(err(&[0x80], PacketKind::ConnAck), PropertyError::Truncated);
        assert_eq!(err(&[], PacketKind::ConnAck), PropertyError::Truncated);
    }

    #[test]
    fn value_running_past_the_property_length_is_malformed() {
        // Property Length 3 covers the identifier and two of four value bytes; the
        // other two are in the buffer but belong to whatever follows.
        let e = err(&[0x03, 0x02, 0, 0, 0, 1], PacketKind::Publish);
        assert_eq!(e, PropertyError::Truncated);
        assert_eq!(e.reason_code(), MALFORMED_PACKET);
    }

    #[test]
    fn truncated_value_of_each_data_type_is_malformed() {
        let cases: [&[u8]; 7] = [
            &[0x25],                         // Byte
            &[0x13, 0],                      // Two Byte Integer
            &[0x27, 0, 0, 1],                // Four Byte Integer
            &[0x0B, 0x80],                   // Variable Byte Integer
            &[0x1F, 0, 3, b'a'],             // UTF-8 String
            &[0x16, 0],                      // Binary Data
            &[0x26, 0, 1, b'k', 0, 2, b'v'], // UTF-8 String Pair
        ];
        for body in cases {
            let kind = PacketKind::ALL
                .into_iter()
                .find(|k| PropertyId::from_u8(body[0]).unwrap().allowed_in(*k))
                .unwrap();
            let e = err(&list(body), kind);
            assert_eq!(e, PropertyError::Truncated, "{body:?}");
            assert_eq!(e.reason_code(), 0x81);
        }
    }

    #[test]
    fn five_byte_property_length_is_malformed() {
        let e = err(&[0x80, 0x80, 0x80, 0x80, 0x01, 0x00], PacketKind::Publish);
        assert_eq!(e, PropertyError::MalformedVarInt);
        assert_eq!(e.reason_code(), 0x81);
    }

    #[test]
    fn five_byte_subscription_identifier_is_malformed() {
        let e = err(
            &list(&[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01]),
            PacketKind::Subscribe,
        );
        assert_eq!(e, PropertyError::MalformedVarInt);
        assert_eq!(e.reason_code(), 0x81);
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let e = err(&list(&[0x03, 0, 2, 0xC3, 0x28]), PacketKind::Publish);
        assert_eq!(e, PropertyError::InvalidUtf8);
        assert_eq!(e.reason_code(), 0x81);
        // A UTF-16 surrogate (U+D800) encoded as UTF-8 is not well-formed either.
        let e = err(&list(&[0x1F, 0, 3, 0xED, 0xA0, 0x80]), PacketKind::PubAck);
        assert_eq!(e, PropertyError::InvalidUtf8);
    }

    #[test]
    fn string_with_nul_is_malformed() {
        let e = err(&list(&[0x26, 0, 1, b'k', 0, 1, 0x00]), PacketKind::Publish);
        assert_eq!(e, PropertyError::NullCharacter);
        assert_eq!(e.reason_code(), 0x81);
    }

    #[test]
    fn flag_bytes_other_than_0_or_1_are_protocol_errors() {
        let cases = [
            (PropertyId::PayloadFormatIndicator, PacketKind::Publish),
            (PropertyId::RequestProblemInformation, PacketKind::Connect),
            (PropertyId::RequestResponseInformation, PacketKind::Connect),
            (PropertyId::MaximumQoS, PacketKind::ConnAck),
            (PropertyId::RetainAvailable, PacketKind::ConnAck),
            (
                PropertyId::WildcardSubscriptionAvailable,
                PacketKind::ConnAck,
            ),
            (
                PropertyId::SubscriptionIdentifierAvailable,
                PacketKind::ConnAck,
            ),
            (PropertyId::SharedSubscriptionAvailable, PacketKind::ConnAck),
        ];
        for (id, kind) in cases {
            for good in [0, 1] {
                assert!(
                    decode(&list(&[id as u8, good]), kind).is_ok(),
                    "{id} {good}"
                );
            }
            let e = err(&list(&[id as u8, 2]), kind);
            assert_eq!(e, PropertyError::InvalidValue { id, value: 2 });
            assert_eq!(e.reason_code(), 0x82, "{id}");
        }
    }

    #[test]
    fn zero_values_the_spec_forbids_are_protocol_errors() {
        let cases: [(&[u8], PropertyId, PacketKind); 3] = [
            (
                &[0x21, 0, 0],
                PropertyId::ReceiveMaximum,
                PacketKind::Connect,
            ),
            (
                &[0x27, 0, 0, 0, 0],
                PropertyId::MaximumPacketSize,
                PacketKind::ConnAck,
            ),
            (
                &[0x0B, 0x00],
                PropertyId::SubscriptionIdentifier,
                PacketKind::Subscribe,
            ),
        ];
        for (body, id, kind) in cases {
            let e = err(&list(body), kind);
            assert_eq!(e, PropertyError::InvalidValue { id, value: 0 });
            assert_eq!(e.reason_code(), PROTOCOL_ERROR, "{id}");
        }
    }

    #[test]
    fn zero_topic_alias_is_refused_with_topic_alias_invalid() {
        let e = err(&list(&[0x23, 0, 0]), PacketKind::Publish);
        assert_eq!(
            e,
            PropertyError::InvalidValue {
                id: PropertyId::TopicAlias,
                value: 0
            }
        );
        assert_eq!(e.reason_code(), TOPIC_ALIAS_INVALID);
    }

    #[test]
    fn zero_is_fine_where_the_spec_allows_it() {
        let cases: [(&[u8], PacketKind); 4] = [
            (&[0x22, 0, 0], PacketKind::Connect), // Topic Alias Maximum
            (&[0x13, 0, 0], PacketKind::ConnAck), // Server Keep Alive
            (&[0x11, 0, 0, 0, 0], PacketKind::Disconnect), // Session Expiry Interval
            (&[0x02, 0, 0, 0, 0], PacketKind::Will), // Message Expiry Interval
        ];
        for (body, kind) in cases {
            assert!(decode(&list(body), kind).is_ok(), "{body:?}");
        }
    }

    #[test]
    fn the_first_error_in_wire_order_is_reported() {
        // A duplicate before an unknown identifier: the duplicate is found first.
        let bytes = list(&[0x25, 1, 0x25, 1, 0x7F]);
        assert!(matches!(
            err(&bytes, PacketKind::ConnAck),
            PropertyError::Duplicate { .. }
        ));
    }
}

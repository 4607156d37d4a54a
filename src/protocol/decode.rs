//! Decoding packets from a connection's read buffer.
//!
//! [`decode`] looks at the front of a `BytesMut`: if it holds a complete packet, the
//! packet is split off, frozen and parsed without copying (topics, strings and payloads
//! are slices of the frozen bytes). It enforces every well-formedness rule of MQTT
//! 3.1.1 and 5.0 that can be judged from one packet in isolation; whether a packet may
//! be sent in the current state or direction (a client sending CONNACK, a second
//! CONNECT, a Subscription Identifier in a client's PUBLISH, a Topic Alias above the
//! negotiated maximum or not yet mapped) is left to the caller. The 5.0 layouts are
//! read by `decode_v5`, chosen by [`DecodeOptions::v5`] after CONNECT.

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;

use super::decode_v5;
use super::packet::{
    ConnAck, Connect, ConnectProps, ConnectReturnCode, LastWill, Packet, Protocol, Publish, QoS,
    RetainHandling, SubAck, SubAckCode, Subscribe, SubscribeFilter, Unsubscribe, WillProps,
};
use super::properties::{PacketKind, PropertyError};
use super::reason::ReasonCode;

/// Why the bytes at the front of a read buffer are not an acceptable MQTT packet. Every
/// variant means the connection must be closed; [`DecodeError::connack_code`] says
/// whether a 3.1.1 CONNACK must be sent first, [`DecodeError::reason_code`] which
/// reason code a 5.0 CONNACK or DISCONNECT carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The packet (fixed header included) is larger than the configured maximum.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    PacketTooLarge {
        /// Fixed header plus remaining length, as announced.
        size: usize,
        /// The limit passed to [`decode`].
        max: usize,
    },
    /// The remaining-length field continues past its fourth byte (§2.2.3).
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// Control packet type 0, or 15 (AUTH) on a connection that is not 5.0.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// Fixed-header flag bits other than the ones the packet type requires
    /// [MQTT-2.2.2-1], [MQTT-2.2.2-2].
    #[error("invalid fixed-header flags {flags:#06b} for {packet}")]
    InvalidFlags {
        /// Name of the packet type, as in [`Packet::name`].
        packet: &'static str,
        /// The low four bits of the first byte.
        flags: u8,
    },
    /// A field runs past the end of the packet.
    #[error("packet truncated: a field runs past the remaining length")]
    Truncated,
    /// Bytes left over after the last field, or a fixed-size packet with the wrong
    /// remaining length.
    #[error("remaining length does not match the packet's contents")]
    LengthMismatch,
    /// A UTF-8 string field is not well-formed UTF-8 [MQTT-1.5.3-1].
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A UTF-8 string field contains U+0000 [MQTT-1.5.3-2].
    #[error("string contains U+0000")]
    NullCharacter,
    /// A client id, username, will topic, topic name or topic filter contains a
    /// control character (U+0001..U+001F, U+007F..U+009F). §1.5.3 says such data
    /// SHOULD NOT be sent and lets the receiver close the connection over it.
    #[error("string contains a control character")]
    ControlCharacter,
    /// CONNECT protocol name is neither "MQTT" nor "MQIsdp" [MQTT-3.1.2-1].
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// CONNECT protocol name is known but its level is not a matching one ("MQTT" 4 or
    /// 5, "MQIsdp" 3).
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// CONNECT flags break a rule of §3.1.2; the text says which.
    #[error("invalid CONNECT flags: {0}")]
    InvalidConnectFlags(&'static str),
    /// The client identifier cannot be accepted (empty without clean session, or empty
    /// under MQTT 3.1) [MQTT-3.1.3-8].
    #[error("client identifier rejected")]
    IdentifierRejected,
    /// PUBLISH QoS 3 [MQTT-3.3.1-4], or a SUBSCRIBE requested-QoS byte above 2 or with
    /// reserved bits set [MQTT-3-8.3-4].
    #[error("invalid QoS")]
    InvalidQoS,
    /// PUBLISH with QoS 0 and the DUP flag set [MQTT-3.3.1-2].
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    /// Packet identifier 0 [MQTT-2.3.1-1].
    #[error("packet identifier is 0")]
    ZeroPacketId,
    /// PUBLISH (or will) topic is empty or contains a wildcard [MQTT-3.3.2-2].
    #[error("invalid topic name")]
    InvalidTopicName,
    /// SUBSCRIBE without any topic filter [MQTT-3.8.3-3].
    #[error("SUBSCRIBE without topic filters")]
    EmptySubscribe,
    /// UNSUBSCRIBE without any topic filter [MQTT-3.10.3-2].
    #[error("UNSUBSCRIBE without topic filters")]
    EmptyUnsubscribe,
    /// A zero-length topic filter in SUBSCRIBE or UNSUBSCRIBE [MQTT-4.7.3-1]: a protocol
    /// violation [MQTT-4.8.0-1], unlike a malformed but non-empty filter, which only
    /// gets SUBACK 0x80.
    #[error("zero-length topic filter")]
    EmptyTopicFilter,
    /// A PUBLISH or will topic longer than [`DecodeOptions::max_topic_length`].
    #[error("topic of {len} bytes exceeds the maximum of {max}")]
    TopicTooLong {
        /// Length of the topic in bytes.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A PUBLISH or will topic with more levels than [`DecodeOptions::max_topic_levels`].
    #[error("topic has more than {max} levels")]
    TooManyTopicLevels {
        /// The configured maximum.
        max: usize,
    },
    /// CONNACK acknowledge-flags byte with reserved bits 7-1 set (§3.2.2.1).
    #[error("invalid CONNACK flags {0:#04x}")]
    InvalidConnAckFlags(u8),
    /// CONNACK return code above 5 (§3.2.2.3).
    #[error("invalid CONNACK return code {0}")]
    InvalidConnAckCode(u8),
    /// SUBACK return code other than 0, 1, 2 or 0x80 [MQTT-3.9.3-2].
    #[error("invalid SUBACK return code {0:#04x}")]
    InvalidSubAckCode(u8),
    /// A 5.0 property list that breaks a rule of §2.2.2 or of its property.
    #[error(transparent)]
    Property(#[from] PropertyError),
    /// A 5.0 reason code that its packet may not carry (Table 2-6). The packet parses,
    /// so this is a Protocol Error (§1.2), not a Malformed Packet.
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode {
        /// Name of the packet type, as in [`Packet::name`].
        packet: &'static str,
        /// The byte received.
        code: u8,
    },
    /// Authentication Data without an Authentication Method (§3.1.2.11.10, §3.15.2.2.3).
    #[error("authentication data without an authentication method")]
    AuthDataWithoutMethod,
    /// A 5.0 PUBLISH with an empty topic and no Topic Alias (§3.3.4).
    #[error("empty topic name without a topic alias")]
    MissingTopicName,
    /// Reserved bits 6-7 of a 5.0 subscription options byte set [MQTT-3.8.3-5].
    #[error("reserved bits set in subscription options {0:#04x}")]
    ReservedSubscriptionOptions(u8),
    /// Maximum QoS 3 or Retain Handling 3 in a 5.0 subscription options byte
    /// (§3.8.3.1).
    #[error("invalid subscription options {0:#04x}")]
    InvalidSubscriptionOptions(u8),
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    #[error("no local set on a shared subscription")]
    NoLocalOnSharedSubscription,
}

impl DecodeError {
    /// The CONNACK return code a server must send before closing the connection over
    /// this error, or `None` when it must just close. Only meaningful for errors in a
    /// client's first packet.
    pub fn connack_code(&self) -> Option<ConnectReturnCode> {
        match self {
            // [MQTT-3.1.2-2]
            DecodeError::UnsupportedProtocolLevel(_) => {
                Some(ConnectReturnCode::UnacceptableProtocolVersion)
            }
            // [MQTT-3.1.3-8]
            DecodeError::IdentifierRejected => Some(ConnectReturnCode::IdentifierRejected),
            _ => None,
        }
    }

    /// The 5.0 reason code for the CONNACK (errors in CONNECT) or the DISCONNECT
    /// (errors in any later packet) a server sends before closing a 5.0 connection
    /// over this error (§4.13): 0x81 when the bytes cannot be parsed as the packet,
    /// 0x82 when they parse but break a rule about their contents, and the specific
    /// codes the specification names (0x84, 0x85, 0x90, 0x94, 0x95).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::MalformedRemainingLength
            | DecodeError::InvalidPacketType(_)
            | DecodeError::InvalidFlags { .. }
            | DecodeError::Truncated
            | DecodeError::LengthMismatch
            | DecodeError::InvalidUtf8
            | DecodeError::NullCharacter
            | DecodeError::InvalidConnectFlags(_)
            | DecodeError::InvalidQoS
            | DecodeError::DupOnQoS0
            | DecodeError::InvalidConnAckFlags(_)
            | DecodeError::InvalidConnAckCode(_)
            | DecodeError::InvalidSubAckCode(_)
            | DecodeError::ReservedSubscriptionOptions(_) => ReasonCode::MALFORMED_PACKET,
            // Parsed, but carrying data the protocol does not allow there (§1.2): a
            // control character in a string, a reason code the packet may not carry.
            DecodeError::InvalidReasonCode { .. }
            | DecodeError::ControlCharacter
            | DecodeError::ZeroPacketId
            | DecodeError::EmptySubscribe
            | DecodeError::EmptyUnsubscribe
            | DecodeError::EmptyTopicFilter
            | DecodeError::AuthDataWithoutMethod
            | DecodeError::MissingTopicName
            | DecodeError::InvalidSubscriptionOptions(_)
            | DecodeError::NoLocalOnSharedSubscription => ReasonCode::PROTOCOL_ERROR,
            // §3.1.2.1: a wrong protocol name MAY be answered with 0x84.
            DecodeError::InvalidProtocolName | DecodeError::UnsupportedProtocolLevel(_) => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            DecodeError::IdentifierRejected => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            DecodeError::InvalidTopicName
            | DecodeError::TopicTooLong { .. }
            | DecodeError::TooManyTopicLevels { .. } => ReasonCode::TOPIC_NAME_INVALID,
            DecodeError::Property(e) => ReasonCode(e.reason_code()),
        }
    }
}

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// What a connection's decoder enforces beyond the fixed rules of the protocol: the
/// configured size limits, and which revision's rules apply to the flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Largest packet accepted, fixed header included.
    pub max_packet_size: usize,
    /// Longest PUBLISH or will topic, in bytes.
    pub max_topic_length: usize,
    /// Most levels in a PUBLISH or will topic (`a/b/c` has 3).
    pub max_topic_levels: usize,
    /// Longest client identifier, in bytes; a longer one gets CONNACK 0x02.
    pub max_client_id_length: usize,
    /// The connection speaks MQTT 3.1 (`MQIsdp`), which has no rule on the fixed-header
    /// flags of packets other than PUBLISH: a 3.1 client may set DUP on a resent PUBREL,
    /// SUBSCRIBE or UNSUBSCRIBE. Before CONNECT this is unknown and false; CONNECT's own
    /// flags are judged once its protocol name is read.
    pub mqtt31: bool,
    /// The connection speaks MQTT 5.0: every packet after CONNECT has the 5.0 layout
    /// (properties, reason codes) and AUTH is allowed. Before CONNECT this is unknown
    /// and false; CONNECT's layout follows its own protocol level.
    pub v5: bool,
}

impl DecodeOptions {
    /// Only the packet-size limit; every other limit is as wide as the wire allows.
    pub fn new(max_packet_size: usize) -> DecodeOptions {
        DecodeOptions {
            max_packet_size,
            max_topic_length: usize::MAX,
            max_topic_levels: usize::MAX,
            max_client_id_length: usize::MAX,
            mqtt31: false,
            v5: false,
        }
    }
}

/// Decodes the packet at the front of `buf`, if it is complete, with no limit other
/// than `max_packet_size` (see [`decode_with`]).
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, DecodeError> {
    decode_with(buf, &DecodeOptions::new(max_packet_size))
}

/// Decodes the packet at the front of `buf`, if it is complete.
///
/// Returns `Ok(None)` (leaving `buf` untouched) when more bytes are needed, and
/// `Ok(Some(packet))` after removing exactly that packet's bytes from `buf`. The type
/// and flags of the first byte are checked as soon as it arrives (CONNECT's flags once
/// its protocol name is known), and the total size as soon as the remaining-length
/// field is complete, so an oversized packet is refused before it is buffered. After
/// an `Err` the connection must be closed; the contents of `buf` are then unspecified.
pub fn decode_with(
    buf: &mut BytesMut,
    opts: &DecodeOptions,
) -> Result<Option<Packet>, DecodeError> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(None);
    };
    check_fixed_header(first, opts)?;
    let Some((remaining, field_len)) = read_remaining_length(rest)? else {
        return Ok(None);
    };
    let header_len = 1 + field_len;
    let total = header_len + remaining;
    if total > opts.max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            max: opts.max_packet_size,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let kind = first >> 4;
    let packet = match kind {
        // Returned as is: the packet is built in the caller's slot, not moved through
        // this frame (a move of the 80-byte result costs more than the rest of the
        // decode of a small PUBLISH).
        PUBLISH => return decode_publish(first, buf.split_to(total).freeze(), header_len, opts),
        CONNECT | SUBSCRIBE | UNSUBSCRIBE => {
            // These carry strings or payloads: share the bytes instead of copying.
            let frame = buf.split_to(total).freeze();
            let mut r = Reader {
                frame: &frame,
                pos: header_len,
            };
            match kind {
                CONNECT => decode_connect(&mut r, first & 0x0F, opts)?,
                SUBSCRIBE => decode_subscribe(&mut r, opts.v5)?,
                _ => decode_unsubscribe(&mut r, opts.v5)?,
            }
        }
        // 5.0 acks, DISCONNECT and AUTH may carry strings: share the bytes too.
        _ if opts.v5 => {
            let frame = buf.split_to(total).freeze();
            let mut r = Reader {
                frame: &frame,
                pos: header_len,
            };
            decode_v5::decode_other(kind, &mut r)?
        }
        _ => {
            let body = buf.get(header_len..total).ok_or(DecodeError::Truncated)?;
            let packet = decode_small(kind, body)?;
            buf.advance(total);
            packet
        }
    };
    Ok(Some(packet))
}

/// The protocol level of the CONNECT at the front of `buf`: `Some` only when `buf`
/// holds the whole packet, within `opts.max_packet_size`, and its protocol name is
/// "MQTT" or "MQIsdp" (the point at which [`decode_with`] judges the level). Lets a
/// server that does not serve a revision yet refuse it before the rest is parsed.
pub fn peek_connect_level(buf: &[u8], opts: &DecodeOptions) -> Option<u8> {
    let (&first, rest) = buf.split_first()?;
    if first >> 4 != CONNECT {
        return None;
    }
    let (remaining, field_len) = read_remaining_length(rest).ok()??;
    let header_len = 1 + field_len;
    let total = header_len + remaining;
    if total > opts.max_packet_size || buf.len() < total {
        return None;
    }
    let body = buf.get(header_len..total)?;
    let (len, body) = body.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let name = body.get(..len)?;
    if name != b"MQTT" && name != b"MQIsdp" {
        return None;
    }
    body.get(len).copied()
}

/// Checks the packet type and the fixed-header flags (§2.2.2). Under MQTT 3.1
/// (`mqtt31`) only PUBLISH's flags have rules. CONNECT's flags are checked by
/// [`decode_connect`], once the protocol name says which revision applies. AUTH
/// exists only on a 5.0 connection.
fn check_fixed_header(first: u8, opts: &DecodeOptions) -> Result<(), DecodeError> {
    let flags = first & 0x0F;
    let (packet, expected) = match first >> 4 {
        CONNECT => return Ok(()),
        CONNACK => ("CONNACK", 0),
        PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS);
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::DupOnQoS0);
            }
            return Ok(());
        }
        PUBACK => ("PUBACK", 0),
        PUBREC => ("PUBREC", 0),
        PUBREL => ("PUBREL", 0b0010),
        PUBCOMP => ("PUBCOMP", 0),
        SUBSCRIBE => ("SUBSCRIBE", 0b0010),
        SUBACK => ("SUBACK", 0),
        UNSUBSCRIBE => ("UNSUBSCRIBE", 0b0010),
        UNSUBACK => ("UNSUBACK", 0),
        PINGREQ => ("PINGREQ", 0),
        PINGRESP => ("PINGRESP", 0),
        DISCONNECT => ("DISCONNECT", 0),
        AUTH if opts.v5 => ("AUTH", 0),
        other => return Err(DecodeError::InvalidPacketType(other)),
    };
    if flags == expected || opts.mqtt31 {
        Ok(())
    } else {
        Err(DecodeError::InvalidFlags { packet, flags })
    }
}

/// Reads the remaining-length field at the start of `bytes` (§2.2.3): `Ok(None)` if it
/// is not complete yet, else the value and the number of bytes the field took.
pub(crate) fn read_remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
        if i == 3 {
            return Err(DecodeError::MalformedRemainingLength);
        }
    }
    Ok(None)
}

/// Packets without strings or payloads, parsed in place from the read buffer.
fn decode_small(kind: u8, body: &[u8]) -> Result<Packet, DecodeError> {
    Ok(match kind {
        CONNACK => {
            let &[flags, code] = body else {
                return Err(DecodeError::LengthMismatch);
            };
            if flags & 0xFE != 0 {
                return Err(DecodeError::InvalidConnAckFlags(flags));
            }
            let code = match code {
                0 => ConnectReturnCode::Accepted,
                1 => ConnectReturnCode::UnacceptableProtocolVersion,
                2 => ConnectReturnCode::IdentifierRejected,
                3 => ConnectReturnCode::ServerUnavailable,
                4 => ConnectReturnCode::BadUsernameOrPassword,
                5 => ConnectReturnCode::NotAuthorized,
                other => return Err(DecodeError::InvalidConnAckCode(other)),
            };
            Packet::ConnAck(ConnAck {
                session_present: flags & 1 != 0,
                code,
            })
        }
        PUBACK => Packet::PubAck(exact_packet_id(body)?),
        PUBREC => Packet::PubRec(exact_packet_id(body)?),
        PUBREL => Packet::PubRel(exact_packet_id(body)?),
        PUBCOMP => Packet::PubComp(exact_packet_id(body)?),
        UNSUBACK => Packet::UnsubAck(exact_packet_id(body)?),
        SUBACK => {
            let Some((id, codes)) = body.split_first_chunk::<2>() else {
                return Err(DecodeError::Truncated);
            };
            let pkid = nonzero_packet_id(u16::from_be_bytes(*id))?;
            let codes = codes
                .iter()
                .map(|&c| match c {
                    0x80 => Ok(SubAckCode::Failure),
                    _ => QoS::from_u8(c)
                        .map(SubAckCode::Granted)
                        .ok_or(DecodeError::InvalidSubAckCode(c)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Packet::SubAck(SubAck { pkid, codes })
        }
        PINGREQ | PINGRESP | DISCONNECT => {
            if !body.is_empty() {
                return Err(DecodeError::LengthMismatch);
            }
            match kind {
                PINGREQ => Packet::PingReq,
                PINGRESP => Packet::PingResp,
                _ => Packet::Disconnect,
            }
        }
        // check_fixed_header admits no other type here.
        other => return Err(DecodeError::InvalidPacketType(other)),
    })
}

/// The body of a packet that is exactly a packet identifier (PUBACK & co).
fn exact_packet_id(body: &[u8]) -> Result<u16, DecodeError> {
    match *body {
        [hi, lo] => nonzero_packet_id(u16::from_be_bytes([hi, lo])),
        _ => Err(DecodeError::LengthMismatch),
    }
}

fn nonzero_packet_id(id: u16) -> Result<u16, DecodeError> {
    if id == 0 {
        Err(DecodeError::ZeroPacketId)
    } else {
        Ok(id)
    }
}

/// Checks a topic name's bytes (already known to be UTF-8): non-empty, no wildcards
/// [MQTT-3.3.2-2], no U+0000 [MQTT-1.5.3-2], no control character (§1.5.3), and within
/// the configured length and level limits.
fn check_topic_name(topic: &str, opts: &DecodeOptions) -> Result<(), DecodeError> {
    let bytes = topic.as_bytes();
    if bytes.is_empty() {
        return Err(DecodeError::InvalidTopicName);
    }
    // Fast scan; find out which rule was broken only when it flags something.
    if may_be_invalid_in_topic(bytes) {
        check_characters(topic)?;
        if bytes.iter().any(|&b| matches!(b, b'+' | b'#')) {
            return Err(DecodeError::InvalidTopicName);
        }
    }
    check_topic_limits(bytes, opts)
}

/// The configured length and level limits of a PUBLISH or will topic.
fn check_topic_limits(bytes: &[u8], opts: &DecodeOptions) -> Result<(), DecodeError> {
    if bytes.len() > opts.max_topic_length {
        return Err(DecodeError::TopicTooLong {
            len: bytes.len(),
            max: opts.max_topic_length,
        });
    }
    // A topic of n levels has n - 1 slashes, so one shorter than the limit is within it
    // without counting (the common case: short topics cost nothing here).
    if bytes.len() >= opts.max_topic_levels
        && crate::protocol::topic::level_count(bytes) > opts.max_topic_levels
    {
        return Err(DecodeError::TooManyTopicLevels {
            max: opts.max_topic_levels,
        });
    }
    Ok(())
}

/// U+0000 [MQTT-1.5.3-2] and the control characters U+0001..U+001F and U+007F..U+009F,
/// which §1.5.3 lets a server close the connection over.
fn check_characters(s: &str) -> Result<(), DecodeError> {
    let bytes = s.as_bytes();
    if bytes.contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    if s.chars()
        .any(|c| matches!(c, '\u{1}'..='\u{1f}' | '\u{7f}'..='\u{9f}'))
    {
        return Err(DecodeError::ControlCharacter);
    }
    Ok(())
}

/// Whether `bytes` may hold U+0000, '+', '#' or a control character: a byte below
/// 0x20, 0x7F, or 0xC2 (the lead byte of U+0080..U+009F, and of other characters,
/// which the exact check then tells apart). Eight bytes at a time (SWAR): a word has a
/// byte below `n` (n <= 0x80) iff `(w - n·0x01..01) & !w & 0x80..80` is non-zero, and
/// XOR with a repeated byte turns that byte into zero (below 1).
fn may_be_invalid_in_topic(bytes: &[u8]) -> bool {
    const LO: u64 = u64::from_ne_bytes([0x01; 8]);
    const HI: u64 = u64::from_ne_bytes([0x80; 8]);
    const SPACE: u64 = u64::from_ne_bytes([0x20; 8]);
    const PLUS: u64 = u64::from_ne_bytes([b'+'; 8]);
    const HASH: u64 = u64::from_ne_bytes([b'#'; 8]);
    const DEL: u64 = u64::from_ne_bytes([0x7F; 8]);
    const C2: u64 = u64::from_ne_bytes([0xC2; 8]);
    fn has_byte_below(w: u64, n: u64) -> bool {
        w.wrapping_sub(n) & !w & HI != 0
    }
    fn has_zero_byte(w: u64) -> bool {
        has_byte_below(w, LO)
    }
    let (words, tail) = bytes.as_chunks::<8>();
    words.iter().any(|word| {
        let w = u64::from_ne_bytes(*word);
        has_byte_below(w, SPACE)
            | has_zero_byte(w ^ PLUS)
            | has_zero_byte(w ^ HASH)
            | has_zero_byte(w ^ DEL)
            | has_zero_byte(w ^ C2)
    }) || tail
        .iter()
        .any(|&b| b < 0x20 || matches!(b, b'+' | b'#' | 0x7F | 0xC2))
}

/// A cursor over one complete frozen packet; every read is bounds-checked.
pub(super) struct Reader<'a> {
    pub(super) frame: &'a Bytes,
    pub(super) pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn remaining(&self) -> usize {
        self.frame.len().saturating_sub(self.pos)
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.frame.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        match self.frame.get(self.pos..self.pos + 2) {
            Some(&[hi, lo]) => {
                self.pos += 2;
                Ok(u16::from_be_bytes([hi, lo]))
            }
            _ => Err(DecodeError::Truncated),
        }
    }

    pub(super) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        nonzero_packet_id(self.u16()?)
    }

    /// The range of a length-prefixed field (§1.5.3), checked against the frame.
    fn prefixed_range(&mut self) -> Result<std::ops::Range<usize>, DecodeError> {
        let len = usize::from(self.u16()?);
        let start = self.pos;
        let end = start + len;
        if end > self.frame.len() {
            return Err(DecodeError::Truncated);
        }
        self.pos = end;
        Ok(start..end)
    }

    /// A length-prefixed field as raw bytes borrowed from the frame.
    fn prefixed_slice(&mut self) -> Result<&'a [u8], DecodeError> {
        let range = self.prefixed_range()?;
        let frame: &'a Bytes = self.frame;
        frame.get(range).ok_or(DecodeError::Truncated)
    }

    /// Binary data (§1.5.3-like: 2-byte length and bytes), shared with the frame.
    pub(super) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let range = self.prefixed_range()?;
        Ok(self.frame.slice(range))
    }

    /// A UTF-8 encoded string: well-formed UTF-8 [MQTT-1.5.3-1] without U+0000
    /// [MQTT-1.5.3-2] and without control characters (§1.5.3). Every string a client
    /// sends (client id, will topic, username, topic filters) is read this way.
    pub(super) fn string(&mut self) -> Result<ByteString, DecodeError> {
        let s = self.utf8()?;
        check_characters(&s)?;
        Ok(s)
    }

    /// A UTF-8 string without the U+0000 check (the caller does it).
    fn utf8(&mut self) -> Result<ByteString, DecodeError> {
        ByteString::try_from(self.binary()?).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// A topic name: a string that is non-empty and free of wildcards [MQTT-3.3.2-2],
    /// within the configured limits.
    pub(super) fn topic_name(&mut self, opts: &DecodeOptions) -> Result<ByteString, DecodeError> {
        let s = self.utf8()?;
        check_topic_name(&s, opts)?;
        Ok(s)
    }

    /// A topic filter in SUBSCRIBE or UNSUBSCRIBE: a string, non-empty [MQTT-4.7.3-1].
    pub(super) fn topic_filter(&mut self) -> Result<ByteString, DecodeError> {
        let s = self.string()?;
        if s.is_empty() {
            return Err(DecodeError::EmptyTopicFilter);
        }
        Ok(s)
    }

    pub(super) fn expect_end(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::LengthMismatch)
        }
    }
}

/// CONNECT (§3.1); `header_flags` are the low four bits of its first byte.
fn decode_connect(
    r: &mut Reader<'_>,
    header_flags: u8,
    opts: &DecodeOptions,
) -> Result<Packet, DecodeError> {
    // §3.1.2.1-2: the level is checked right away, before the rest is parsed, so that a
    // newer client (whose CONNECT may have a different layout) gets CONNACK 0x01 rather
    // than a closed connection.
    let name = r.prefixed_slice()?;
    let is_mqtt = name == b"MQTT";
    let is_mqisdp = name == b"MQIsdp";
    let raw_level = r.u8()?;
    // The top bit marks a bridge (Mosquitto's `try_private`: 0x83, 0x84); the
    // revision is in the rest.
    let bridge = raw_level & 0x80 != 0;
    let level = raw_level & 0x7F;
    let protocol = match (is_mqtt, is_mqisdp, level) {
        (true, _, 4) => Protocol::V311,
        (true, _, 5) => Protocol::V5,
        (_, true, 3) => Protocol::V31,
        (true, _, _) | (_, true, _) => {
            return Err(DecodeError::UnsupportedProtocolLevel(raw_level))
        }
        _ => return Err(DecodeError::InvalidProtocolName),
    };

    // MQTT 3.1 has no rule on CONNECT's fixed-header flags or its reserved flag bit
    // (Mosquitto accepts both from 3.1 clients); 3.1.1 and 5.0 require zeros
    // [MQTT-2.2.2-2].
    let v5 = protocol == Protocol::V5;
    let v311 = protocol != Protocol::V31;
    if v311 && header_flags != 0 {
        return Err(DecodeError::InvalidFlags {
            packet: "CONNECT",
            flags: header_flags,
        });
    }

    // §3.1.2.3
    let flags = r.u8()?;
    if v311 && flags & 0x01 != 0 {
        return Err(DecodeError::InvalidConnectFlags("reserved flag is set")); // [MQTT-3.1.2-3]
    }
    let clean_session = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && will_qos != 0 {
        return Err(DecodeError::InvalidConnectFlags(
            "will QoS set without will flag", // [MQTT-3.1.2-13]
        ));
    }
    if !will_flag && will_retain {
        return Err(DecodeError::InvalidConnectFlags(
            "will retain set without will flag", // [MQTT-3.1.2-15]
        ));
    }
    let Some(will_qos) = QoS::from_u8(will_qos) else {
        return Err(DecodeError::InvalidConnectFlags("will QoS is 3")); // [MQTT-3.1.2-14]
    };
    // 5.0 allows a password without a username (§3.1.2.9).
    if password_flag && !username_flag && !v5 {
        return Err(DecodeError::InvalidConnectFlags(
            "password flag set without username flag", // [MQTT-3.1.2-22]
        ));
    }
    let keep_alive = r.u16()?;
    let props = if v5 {
        decode_v5::connect_props(r)?
    } else {
        ConnectProps::default()
    };

    // §3.1.3
    let client_id = r.string()?;
    let will = if will_flag {
        let will_props = if v5 {
            decode_v5::will_props(r)?
        } else {
            WillProps::default()
        };
        let topic = r.topic_name(opts)?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            props: will_props,
        })
    } else {
        None
    };
    // Some MQTT 3.1 clients set the username/password flags but omit the fields; like
    // mosquitto, accept that for "MQIsdp" when the packet simply ends there.
    let legacy_absent = |r: &Reader<'_>| protocol == Protocol::V31 && r.remaining() == 0;
    let username = if username_flag && !legacy_absent(r) {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag && !legacy_absent(r) {
        Some(r.binary()?)
    } else {
        None
    };
    r.expect_end()?;

    // 5.0 lets any client send an empty id and be assigned one (§3.1.3.1).
    if client_id.is_empty() && (protocol == Protocol::V31 || (!clean_session && !v5)) {
        return Err(DecodeError::IdentifierRejected); // [MQTT-3.1.3-8]
    }
    if client_id.len() > opts.max_client_id_length {
        return Err(DecodeError::IdentifierRejected); // [MQTT-3.1.3-5]: the server MAY refuse
    }
    Ok(Packet::Connect(Box::new(Connect {
        protocol,
        bridge,
        clean_session,
        keep_alive,
        client_id,
        will,
        username,
        password,
        props,
    })))
}

/// PUBLISH (§3.3). The hot path: the frozen frame itself becomes the topic and one
/// split yields the payload, so decoding costs a single reference-count increment.
fn decode_publish(
    first: u8,
    frame: Bytes,
    header_len: usize,
    opts: &DecodeOptions,
) -> Result<Option<Packet>, DecodeError> {
    if opts.v5 {
        return decode_publish_v5(first, frame, header_len, opts);
    }
    // 3.1.1 and 3.1: the same code as before 5.0 existed (DESIGN §13).
    let dup = first & 0b1000 != 0;
    // check_fixed_header has already refused QoS 3.
    let qos = QoS::from_u8((first >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let retain = first & 1 != 0;
    let mut r = Reader {
        frame: &frame,
        pos: header_len,
    };
    let topic_range = r.prefixed_range()?;
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let payload_start = r.pos;
    let (topic, payload) = split_publish(frame, topic_range, payload_start)?;
    check_topic_name(&topic, opts)?;
    Ok(Some(Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic,
        pkid,
        payload,
        props: None,
    })))
}

/// A PUBLISH frame's topic and payload, by the ranges its reader found. Inlined, so
/// that the 3.1.1 path compiles as one piece.
#[inline(always)]
fn split_publish(
    mut frame: Bytes,
    topic_range: std::ops::Range<usize>,
    payload_start: usize,
) -> Result<(ByteString, Bytes), DecodeError> {
    // Guaranteed by the reader; checked so that split_off/advance can never panic.
    if topic_range.start > topic_range.end
        || topic_range.end > payload_start
        || payload_start > frame.len()
    {
        return Err(DecodeError::Truncated);
    }
    let payload = frame.split_off(payload_start);
    frame.truncate(topic_range.end);
    frame.advance(topic_range.start);
    let topic = ByteString::try_from(frame).map_err(|_| DecodeError::InvalidUtf8)?;
    Ok((topic, payload))
}

/// [`decode_publish`] on a 5.0 connection: properties after the packet id, and an
/// empty topic allowed with a Topic Alias. Kept out of line, so that the 3.1.1 path
/// stays as small as it was before 5.0.
#[inline(never)]
fn decode_publish_v5(
    first: u8,
    frame: Bytes,
    header_len: usize,
    opts: &DecodeOptions,
) -> Result<Option<Packet>, DecodeError> {
    let dup = first & 0b1000 != 0;
    // check_fixed_header has already refused QoS 3.
    let qos = QoS::from_u8((first >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let retain = first & 1 != 0;
    let mut r = Reader {
        frame: &frame,
        pos: header_len,
    };
    let topic_range = r.prefixed_range()?;
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let props = decode_v5::publish_props(&mut r)?;
    let payload_start = r.pos;
    let (topic, payload) = split_publish(frame, topic_range, payload_start)?;
    if topic.is_empty() {
        // An empty topic stands for the one the alias maps to (§3.3.2.3.4).
        if props.as_ref().is_none_or(|p| p.topic_alias.is_none()) {
            return Err(DecodeError::MissingTopicName);
        }
    } else {
        check_topic_name(&topic, opts)?;
    }
    Ok(Some(Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic,
        pkid,
        payload,
        props,
    })))
}

fn decode_subscribe(r: &mut Reader<'_>, v5: bool) -> Result<Packet, DecodeError> {
    let pkid = r.packet_id()?;
    let (id, user) = if v5 {
        decode_v5::subscribe_props(r)?
    } else {
        (None, Vec::new())
    };
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        // Wildcard placement is the broker's call (SUBACK 0x80), not a decode error;
        // an empty filter is a protocol violation.
        let filter = r.topic_filter()?;
        let f = if v5 {
            decode_v5::subscription_options(filter, r.u8()?)?
        } else {
            // Requested QoS: bits 7-2 reserved, value 0..=2 [MQTT-3-8.3-4].
            let qos = QoS::from_u8(r.u8()?).ok_or(DecodeError::InvalidQoS)?;
            SubscribeFilter {
                filter,
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            }
        };
        filters.push(f);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscribe); // [MQTT-3.8.3-3]
    }
    Ok(Packet::Subscribe(Subscribe {
        pkid,
        filters,
        id,
        user,
    }))
}

fn decode_unsubscribe(r: &mut Reader<'_>, v5: bool) -> Result<Packet, DecodeError> {
    let pkid = r.packet_id()?;
    let user = if v5 {
        decode_v5::user_only(r, PacketKind::Unsubscribe)?
    } else {
        Vec::new()
    };
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(r.topic_filter()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptyUnsubscribe); // [MQTT-3.10.3-2]
    }
    Ok(Packet::Unsubscribe(Unsubscribe {
        pkid,
        filters,
        user,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::encode::write_remaining_length;
    use super::*;
    use bytes::BufMut;

    const MAX: usize = 1 << 20;

    fn encode(p: &Packet) -> BytesMut {
        let mut out = BytesMut::new();
        p.encode(&mut out);
        out
    }

    fn decode_all(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
        decode(&mut BytesMut::from(bytes), MAX)
    }

    fn decode_err(bytes: &[u8]) -> DecodeError {
        decode_all(bytes).expect_err("packet should be rejected")
    }

    use crate::protocol::test_bytes::{field, raw};

    /// A CONNECT from its protocol name, level, flags, and payload fields (each
    /// length-prefixed), with keep-alive 60.
    fn raw_connect(name: &[u8], level: u8, flags: u8, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = field(name);
        body.extend_from_slice(&[level, flags, 0, 60]);
        for f in fields {
            body.extend_from_slice(&field(f));
        }
        raw(0x10, &body)
    }

    /// A PUBLISH from its first byte, topic bytes, optional packet id and payload.
    fn raw_publish(first: u8, topic: &[u8], pkid: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let mut body = field(topic);
        if let Some(id) = pkid {
            body.extend_from_slice(&id.to_be_bytes());
        }
        body.extend_from_slice(payload);
        raw(first, &body)
    }

    fn raw_subscribe(pkid: u16, filters: &[(&[u8], u8)]) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        for (f, q) in filters {
            body.extend_from_slice(&field(f));
            body.push(*q);
        }
        raw(0x82, &body)
    }

    fn raw_unsubscribe(pkid: u16, filters: &[&[u8]]) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        for f in filters {
            body.extend_from_slice(&field(f));
        }
        raw(0xA2, &body)
    }

    fn connect(protocol: Protocol) -> Connect {
        Connect {
            props: Default::default(),
            protocol,
            bridge: false,
            clean_session: true,
            keep_alive: 60,
            client_id: ByteString::from_static("client-1"),
            will: None,
            username: None,
            password: None,
        }
    }

    fn publish(qos: QoS, dup: bool, retain: bool, payload: &'static [u8]) -> Publish {
        Publish {
            props: None,
            dup,
            qos,
            retain,
            topic: ByteString::from_static("sport/tennis/ü"),
            pkid: if qos == QoS::AtMostOnce { 0 } else { 4242 },
            payload: Bytes::from_static(payload),
        }
    }

    /// One valid packet of every type and shape the round-trip tests use.
    fn samples() -> Vec<Packet> {
        let mut out = Vec::new();
        for protocol in [Protocol::V31, Protocol::V311] {
            out.push(Packet::Connect(Box::new(connect(protocol))));
            let mut c = connect(protocol);
            c.clean_session = false;
            c.keep_alive = 0;
            c.will = Some(LastWill {
                props: Default::default(),
                topic: ByteString::from_static("clients/client-1/status"),
                payload: Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: true,
            });
            c.username = Some(ByteString::from_static("user"));
            c.password = Some(Bytes::from_static(b"\x00\xffsecret"));
            out.push(Packet::Connect(Box::new(c)));
            let mut c = connect(protocol);
            c.will = Some(LastWill {
                props: Default::default(),
                topic: ByteString::from_static("w"),
                payload: Bytes::new(),
                qos: QoS::ExactlyOnce,
                retain: false,
            });
            c.username = Some(ByteString::from_static(""));
            out.push(Packet::Connect(Box::new(c)));
            let mut c = connect(protocol);
            c.username = Some(ByteString::from_static("only-user"));
            c.keep_alive = u16::MAX;
            out.push(Packet::Connect(Box::new(c)));
            // A bridge (protocol level 0x83 / 0x84).
            let mut c = connect(protocol);
            c.bridge = true;
            out.push(Packet::Connect(Box::new(c)));
        }
        let mut c = connect(Protocol::V311);
        c.client_id = ByteString::from_static("");
        out.push(Packet::Connect(Box::new(c)));
        for session_present in [false, true] {
            out.push(Packet::ConnAck(ConnAck {
                session_present,
                code: ConnectReturnCode::Accepted,
            }));
        }
        for code in [
            ConnectReturnCode::UnacceptableProtocolVersion,
            ConnectReturnCode::IdentifierRejected,
            ConnectReturnCode::ServerUnavailable,
            ConnectReturnCode::BadUsernameOrPassword,
            ConnectReturnCode::NotAuthorized,
        ] {
            out.push(Packet::ConnAck(ConnAck {
                session_present: false,
                code,
            }));
        }
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for retain in [false, true] {
                out.push(Packet::Publish(publish(qos, false, retain, b"hello")));
                if qos != QoS::AtMostOnce {
                    out.push(Packet::Publish(publish(qos, true, retain, b"hello")));
                }
            }
            out.push(Packet::Publish(publish(qos, false, false, b"")));
        }
        out.push(Packet::Publish(publish(
            QoS::AtLeastOnce,
            false,
            false,
            &[0xAB; 300],
        )));
        out.extend([
            Packet::PubAck(1),
            Packet::PubRec(2),
            Packet::PubRel(3),
            Packet::PubComp(u16::MAX),
            Packet::UnsubAck(5),
            Packet::PingReq,
            Packet::PingResp,
            Packet::Disconnect,
        ]);
        out.push(Packet::Subscribe(Subscribe {
            id: None,
            user: Vec::new(),
            pkid: 10,
            filters: vec![
                SubscribeFilter {
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: Default::default(),
                    filter: ByteString::from_static("sport/+/player1"),
                    qos: QoS::AtMostOnce,
                },
                SubscribeFilter {
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: Default::default(),
                    filter: ByteString::from_static("#"),
                    qos: QoS::AtLeastOnce,
                },
                SubscribeFilter {
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: Default::default(),
                    filter: ByteString::from_static("$SYS/#"),
                    qos: QoS::ExactlyOnce,
                },
            ],
        }));
        out.push(Packet::SubAck(SubAck {
            pkid: 10,
            codes: vec![
                SubAckCode::Granted(QoS::AtMostOnce),
                SubAckCode::Granted(QoS::AtLeastOnce),
                SubAckCode::Granted(QoS::ExactlyOnce),
                SubAckCode::Failure,
            ],
        }));
        out.push(Packet::Unsubscribe(Unsubscribe {
            user: Vec::new(),
            pkid: 11,
            filters: vec![ByteString::from_static("a/b"), ByteString::from_static("#")],
        }));
        out
    }

    fn assert_round_trips(p: &Packet) {
        let mut buf = encode(p);
        let decoded = decode(&mut buf, MAX);
        assert_eq!(decoded, Ok(Some(p.clone())), "round trip of {p:?}");
        assert!(buf.is_empty(), "{} left bytes behind", p.name());
    }

    // ---- round trips ----------------------------------------------------------------

    #[test]
    fn the_bridge_bit_on_the_protocol_level_is_accepted_and_kept() {
        for (name, level, protocol) in [
            (&b"MQTT"[..], 0x84, Protocol::V311),
            (&b"MQIsdp"[..], 0x83, Protocol::V31),
        ] {
            let bytes = raw_connect(name, level, 0x02, &[b"bridge-1"]);
            match decode_all(&bytes) {
                Ok(Some(Packet::Connect(c))) => {
                    assert!(c.bridge);
                    assert_eq!(c.protocol, protocol);
                }
                other => panic!("{other:?}"),
            }
        }
        // Only the top bit: 0xC4 is no revision.
        assert!(matches!(
            decode_err(&raw_connect(b"MQTT", 0xC4, 0x02, &[b"c"])),
            DecodeError::UnsupportedProtocolLevel(0xC4)
        ));
    }

    #[test]
    fn every_packet_type_round_trips() {
        let samples = samples();
        let mut seen: Vec<&str> = samples.iter().map(Packet::name).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 14, "samples must cover all 14 packet types");
        for p in &samples {
            assert_round_trips(p);
        }
    }

    #[test]
    fn connect_round_trips_at_both_protocol_levels_with_and_without_will_and_credentials() {
        for protocol in [Protocol::V31, Protocol::V311] {
            for will in [false, true] {
                for username in [false, true] {
                    for password in [false, true] {
                        if password && !username {
                            continue;
                        }
                        let mut c = connect(protocol);
                        c.will = will.then(|| LastWill {
                            props: Default::default(),
                            topic: ByteString::from_static("will/topic"),
                            payload: Bytes::from_static(b"bye"),
                            qos: QoS::ExactlyOnce,
                            retain: true,
                        });
                        c.username = username.then(|| ByteString::from_static("u"));
                        c.password = password.then(|| Bytes::from_static(b"p"));
                        assert_round_trips(&Packet::Connect(Box::new(c)));
                    }
                }
            }
        }
    }

    #[test]
    fn connect_protocol_name_and_level_select_the_revision() {
        let v311 = decode_all(&raw_connect(b"MQTT", 4, 0x02, &[b"c"]));
        let v31 = decode_all(&raw_connect(b"MQIsdp", 3, 0x02, &[b"c"]));
        assert!(matches!(v311, Ok(Some(Packet::Connect(c))) if c.protocol == Protocol::V311));
        assert!(matches!(v31, Ok(Some(Packet::Connect(c))) if c.protocol == Protocol::V31));
    }

    #[test]
    fn publish_round_trips_at_every_qos_with_dup_and_retain() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for retain in [false, true] {
                for dup in [false, true] {
                    if dup && qos == QoS::AtMostOnce {
                        continue;
                    }
                    assert_round_trips(&Packet::Publish(publish(qos, dup, retain, b"payload")));
                }
            }
        }
    }

    #[test]
    fn publish_with_empty_payload_is_accepted() {
        let p = decode_all(&raw_publish(0x30, b"t", None, b""))
            .unwrap()
            .unwrap();
        assert!(matches!(p, Packet::Publish(p) if p.payload.is_empty() && p.topic == "t"));
    }

    #[test]
    fn decoded_publish_shares_the_read_buffer_instead_of_copying() {
        let mut buf = BytesMut::from(&raw_publish(0x32, b"a/b", Some(1), &[9; 1000])[..]);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let Ok(Some(Packet::Publish(p))) = decode(&mut buf, MAX) else {
            panic!("expected a PUBLISH");
        };
        assert!(range.contains(&(p.payload.as_ptr() as usize)));
        assert!(range.contains(&(p.topic.as_bytes().as_ptr() as usize)));
        assert_eq!(p.payload.len(), 1000);
    }

    #[test]
    fn subscribe_filters_with_bad_wildcards_are_left_to_the_broker() {
        let bytes = raw_subscribe(1, &[(b"a/#/b", 0), (b"sport+", 1), (b"#/", 2)]);
        let Ok(Some(Packet::Subscribe(s))) = decode_all(&bytes) else {
            panic!("expected a SUBSCRIBE");
        };
        let filters: Vec<&str> = s.filters.iter().map(|f| &*f.filter).collect();
        assert_eq!(filters, ["a/#/b", "sport+", "#/"]);
    }

    // ---- framing --------------------------------------------------------------------

    #[test]
    fn every_prefix_of_a_valid_packet_needs_more_bytes_and_leaves_buffer_untouched() {
        for p in samples() {
            let full = encode(&p);
            for n in 0..full.len() {
                let mut buf = BytesMut::from(&full[..n]);
                assert_eq!(decode(&mut buf, MAX), Ok(None), "{} prefix {n}", p.name());
                assert_eq!(&buf[..], &full[..n], "{} prefix {n} was modified", p.name());
            }
        }
    }

    #[test]
    fn back_to_back_packets_decode_one_after_the_other() {
        let samples = samples();
        let mut buf = BytesMut::new();
        for p in &samples {
            p.encode(&mut buf);
        }
        let tail = encode(&Packet::Publish(publish(
            QoS::AtLeastOnce,
            false,
            false,
            b"x",
        )));
        buf.put_slice(&tail[..tail.len() - 1]);
        for p in &samples {
            assert_eq!(decode(&mut buf, MAX), Ok(Some(p.clone())));
        }
        assert_eq!(decode(&mut buf, MAX), Ok(None));
        assert_eq!(&buf[..], &tail[..tail.len() - 1]);
        buf.put_u8(*tail.last().unwrap());
        assert!(matches!(
            decode(&mut buf, MAX),
            Ok(Some(Packet::Publish(_)))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn remaining_length_boundaries_round_trip() {
        for (len, width) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (2_097_151, 3),
            (2_097_152, 4),
            (268_435_455, 4),
        ] {
            let mut field = BytesMut::new();
            write_remaining_length(&mut field, len);
            assert_eq!(
                read_remaining_length(&field),
                Ok(Some((len, width))),
                "{len}"
            );
            // Each incomplete prefix of the field is "need more".
            for n in 0..width {
                assert_eq!(read_remaining_length(&field[..n]), Ok(None), "{len}/{n}");
            }
            // Through decode: the size it reports proves the length was read right.
            let mut header = BytesMut::from(&[0x30][..]);
            header.put_slice(&field);
            let size = 1 + width + len;
            assert_eq!(
                decode(&mut header.clone(), size - 1),
                Err(DecodeError::PacketTooLarge {
                    size,
                    max: size - 1
                })
            );
            if len > 0 {
                assert_eq!(decode(&mut header, size), Ok(None));
            }
        }
    }

    #[test]
    fn two_byte_remaining_length_packet_decodes() {
        let payload = [7u8; 200];
        let bytes = raw_publish(0x30, b"t", None, &payload);
        assert_eq!(bytes[1..3], [0xCB, 0x01]); // 3 + 200 = 203 = 75 + 128
        let Ok(Some(Packet::Publish(p))) = decode_all(&bytes) else {
            panic!("expected a PUBLISH");
        };
        assert_eq!(&p.payload[..], &payload[..]);
    }

    #[test]
    fn non_minimal_remaining_length_encoding_is_accepted() {
        // 3.1.1 does not forbid it: 0x82 0x00 is 2 in two bytes.
        assert_eq!(
            decode_all(&[0x40, 0x82, 0x00, 0, 1]),
            Ok(Some(Packet::PubAck(1)))
        );
    }

    #[test]
    fn five_byte_remaining_length_is_rejected_immediately() {
        assert_eq!(
            decode_all(&[0x30, 0x80, 0x80, 0x80, 0x80]),
            Err(DecodeError::MalformedRemainingLength)
        );
        assert_eq!(
            decode_all(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0, 0]),
            Err(DecodeError::MalformedRemainingLength)
        );
        assert_eq!(decode_all(&[0x30, 0xFF, 0xFF, 0xFF]), Ok(None));
    }

    #[test]
    fn oversized_packet_is_refused_when_only_its_fixed_header_has_arrived() {
        // PUBLISH announcing 1,000,000 bytes of remaining length: 0xC0 0x84 0x3D.
        let mut buf = BytesMut::from(&[0x30, 0xC0, 0x84, 0x3D][..]);
        assert_eq!(
            decode(&mut buf, 65_536),
            Err(DecodeError::PacketTooLarge {
                size: 1_000_004,
                max: 65_536
            })
        );
        // The limit counts the fixed header too and is inclusive.
        let ping = [0xC0, 0x00];
        assert_eq!(
            decode(&mut BytesMut::from(&ping[..]), 1),
            Err(DecodeError::PacketTooLarge { size: 2, max: 1 })
        );
        assert_eq!(
            decode(&mut BytesMut::from(&ping[..]), 2),
            Ok(Some(Packet::PingReq))
        );
    }

    #[test]
    fn reserved_packet_types_are_rejected_from_the_first_byte() {
        assert_eq!(decode_all(&[0x00]), Err(DecodeError::InvalidPacketType(0)));
        assert_eq!(
            decode_all(&[0xF0, 0]),
            Err(DecodeError::InvalidPacketType(15))
        );
    }

    #[test]
    fn wrong_fixed_header_flags_are_rejected() {
        // CONNECT's are judged once its protocol name is known (see
        // mqtt31_flag_bits_are_accepted_from_31_clients_only).
        let cases: [(u8, &str, u8); 12] = [
            (2, "CONNACK", 0),
            (4, "PUBACK", 0),
            (5, "PUBREC", 0),
            (6, "PUBREL", 2),
            (7, "PUBCOMP", 0),
            (8, "SUBSCRIBE", 2),
            (9, "SUBACK", 0),
            (10, "UNSUBSCRIBE", 2),
            (11, "UNSUBACK", 0),
            (12, "PINGREQ", 0),
            (13, "PINGRESP", 0),
            (14, "DISCONNECT", 0),
        ];
        for (kind, packet, required) in cases {
            for flags in (0..16).filter(|&f| f != required) {
                assert_eq!(
                    decode_all(&[kind << 4 | flags]),
                    Err(DecodeError::InvalidFlags { packet, flags }),
                    "{packet} with flags {flags:#06b}"
                );
            }
        }
    }

    #[test]
    fn fixed_size_packets_with_wrong_remaining_length_are_rejected() {
        for first in [0x40, 0x50, 0x62, 0x70, 0xB0, 0x20] {
            for body in [&[][..], &[1][..], &[0, 1, 0][..]] {
                assert_eq!(
                    decode_err(&raw(first, body)),
                    DecodeError::LengthMismatch,
                    "{first:#04x} {body:?}"
                );
            }
        }
        for first in [0xC0, 0xD0, 0xE0] {
            assert_eq!(decode_err(&raw(first, &[0])), DecodeError::LengthMismatch);
        }
    }

    #[test]
    fn fields_overrunning_the_remaining_length_are_truncated() {
        // Topic length says 5, only 3 bytes follow.
        assert_eq!(
            decode_err(&raw(0x30, &[0, 5, b'a', b'b', b'c'])),
            DecodeError::Truncated
        );
        // Topic length field itself cut short.
        assert_eq!(decode_err(&raw(0x30, &[0])), DecodeError::Truncated);
        // QoS 1 without its packet identifier.
        assert_eq!(
            decode_err(&raw(0x32, &[0, 1, b't', 0])),
            DecodeError::Truncated
        );
        // Filter without its requested QoS.
        let mut s = raw_subscribe(1, &[(b"a", 0)]);
        s.pop();
        s[1] -= 1;
        assert_eq!(decode_err(&s), DecodeError::Truncated);
        // SUBSCRIBE / UNSUBSCRIBE / SUBACK shorter than a packet identifier.
        assert_eq!(decode_err(&raw(0x82, &[0])), DecodeError::Truncated);
        assert_eq!(decode_err(&raw(0xA2, &[0])), DecodeError::Truncated);
        assert_eq!(decode_err(&raw(0x90, &[0])), DecodeError::Truncated);
        // CONNECT cut after the flags, and with a client id overrunning.
        let mut body = field(b"MQTT");
        body.extend_from_slice(&[4, 2]);
        assert_eq!(decode_err(&raw(0x10, &body)), DecodeError::Truncated);
        body.extend_from_slice(&[0, 60, 0, 9, b'x']);
        assert_eq!(decode_err(&raw(0x10, &body)), DecodeError::Truncated);
        // Username flag set but the username missing (MQTT 3.1.1).
        assert_eq!(
            decode_err(&raw_connect(b"MQTT", 4, 0x82, &[b"c"])),
            DecodeError::Truncated
        );
        // Will flag set but the will message missing.
        assert_eq!(
            decode_err(&raw_connect(b"MQTT", 4, 0x06, &[b"c", b"w"])),
            DecodeError::Truncated
        );
    }

    #[test]
    fn bytes_left_over_after_connect_are_rejected() {
        let mut body = raw_connect(b"MQTT", 4, 0x02, &[b"c"]);
        body.push(0);
        body[1] += 1;
        assert_eq!(decode_err(&body), DecodeError::LengthMismatch);
    }

    // ---- strings --------------------------------------------------------------------

    const BAD_UTF8: [&[u8]; 4] = [
        b"\xFF",
        b"a\xC3",        // truncated sequence
        b"\xC0\x80",     // overlong U+0000
        b"\xED\xA0\x80", // UTF-16 surrogate U+D800 [MQTT-1.5.3-1]
    ];

    #[test]
    fn invalid_utf8_is_rejected_in_topic_client_id_filters_and_username() {
        for bad in BAD_UTF8 {
            assert_eq!(
                decode_err(&raw_publish(0x30, bad, None, b"")),
                DecodeError::InvalidUtf8
            );
            assert_eq!(
                decode_err(&raw_connect(b"MQTT", 4, 0x02, &[bad])),
                DecodeError::InvalidUtf8
            );
            assert_eq!(
                decode_err(&raw_connect(b"MQTT", 4, 0x06, &[b"c", bad, b"m"])),
                DecodeError::InvalidUtf8
            );
            assert_eq!(
                decode_err(&raw_connect(b"MQTT", 4, 0x82, &[b"c", bad])),
                DecodeError::InvalidUtf8
            );
            assert_eq!(
                decode_err(&raw_subscribe(1, &[(bad, 0)])),
                DecodeError::InvalidUtf8
            );
            assert_eq!(
                decode_err(&raw_unsubscribe(1, &[bad])),
                DecodeError::InvalidUtf8
            );
        }
    }

    #[test]
    fn null_character_is_rejected_in_topic_client_id_filters_and_username() {
        let nul: &[u8] = b"a\0b";
        assert_eq!(
            decode_err(&raw_publish(0x30, nul, None, b"")),
            DecodeError::NullCharacter
        );
        assert_eq!(
            decode_err(&raw_connect(b"MQTT", 4, 0x02, &[nul])),
            DecodeError::NullCharacter
        );
        assert_eq!(
            decode_err(&raw_connect(b"MQTT", 4, 0x06, &[b"c", nul, b"m"])),
            DecodeError::NullCharacter
        );
        assert_eq!(
            decode_err(&raw_connect(b"MQTT", 4, 0x82, &[b"c", nul])),
            DecodeError::NullCharacter
        );
        assert_eq!(
            decode_err(&raw_subscribe(1, &[(nul, 0)])),
            DecodeError::NullCharacter
        );
        assert_eq!(
            decode_err(&raw_unsubscribe(1, &[nul])),
            DecodeError::NullCharacter
        );
    }

    #[test]
    fn binary_fields_may_hold_any_bytes() {
        let bytes = raw_connect(b"MQTT", 4, 0xC6, &[b"c", b"w", b"\0\xFF", b"u", b"\0\xFF"]);
        let Ok(Some(Packet::Connect(c))) = decode_all(&bytes) else {
            panic!("expected a CONNECT");
        };
        assert_eq!(c.password.as_deref(), Some(&b"\0\xFF"[..]));
        assert_eq!(
            c.will.map(|w| w.payload),
            Some(Bytes::from_static(b"\0\xFF"))
        );
    }

    // ---- CONNECT --------------------------------------------------------------------

    #[test]
    fn unknown_protocol_name_is_rejected() {
        for name in [&b"MQTX"[..], b"mqtt", b"MQIsdp\0", b"", b"\xFF"] {
            assert_eq!(
                decode_err(&raw_connect(name, 4, 0x02, &[b"c"])),
                DecodeError::InvalidProtocolName
            );
        }
    }

    #[test]
    fn known_protocol_name_with_wrong_level_is_unsupported_and_earns_connack_1() {
        for (name, level) in [
            (&b"MQTT"[..], 3),
            (b"MQTT", 6),
            (b"MQTT", 0),
            (b"MQIsdp", 4),
        ] {
            let err = decode_err(&raw_connect(name, level, 0x02, &[b"c"]));
            assert_eq!(err, DecodeError::UnsupportedProtocolLevel(level));
            assert_eq!(
                err.connack_code(),
                Some(ConnectReturnCode::UnacceptableProtocolVersion)
            );
        }
    }

    #[test]
    fn level_5_is_visible_to_peek_before_the_rest_of_connect_is_parsed() {
        // MQTT 5 CONNECT: properties length 0 before the client id; cut short on purpose.
        let mut body = field(b"MQTT");
        body.extend_from_slice(&[5, 0x02, 0, 60, 0]);
        let bytes = raw(0x10, &body);
        let opts = DecodeOptions::new(MAX);
        assert_eq!(peek_connect_level(&bytes, &opts), Some(5));
        assert_eq!(decode_err(&bytes), DecodeError::Truncated);
        // Only once the whole packet is there, and within the size limit.
        assert_eq!(peek_connect_level(&bytes[..bytes.len() - 1], &opts), None);
        let small = DecodeOptions::new(bytes.len() - 1);
        assert_eq!(peek_connect_level(&bytes, &small), None);
        let v311 = raw_connect(b"MQTT", 4, 0x02, &[b"c"]);
        assert_eq!(peek_connect_level(&v311, &opts), Some(4));
        assert_eq!(
            peek_connect_level(&raw_connect(b"MQTX", 5, 0, &[]), &opts),
            None
        );
        assert_eq!(peek_connect_level(&raw(0x30, &body), &opts), None);
    }

    #[test]
    fn connect_reserved_flag_is_rejected() {
        assert_eq!(
            decode_err(&raw_connect(b"MQTT", 4, 0x03, &[b"c"])),
            DecodeError::InvalidConnectFlags("reserved flag is set")
        );
    }

    #[test]
    fn will_qos_or_retain_without_will_flag_is_rejected() {
        for flags in [0x0A, 0x12, 0x1A, 0x22] {
            assert!(matches!(
                decode_err(&raw_connect(b"MQTT", 4, flags, &[b"c"])),
                DecodeError::InvalidConnectFlags(_)
            ));
        }
    }

    #[test]
    fn will_qos_3_is_rejected() {
        assert_eq!(
            decode_err(&raw_connect(b"MQTT", 4, 0x1E, &[b"c", b"w", b"m"])),
            DecodeError::InvalidConnectFlags("will QoS is 3")
        );
    }

    #[test]
    fn password_without_username_is_rejected() {
        for (name, level) in [(&b"MQTT"[..], 4), (b"MQIsdp", 3)] {
            assert_eq!(
                decode_err(&raw_connect(name, level, 0x42, &[b"c", b"p"])),
                DecodeError::InvalidConnectFlags("password flag set without username flag")
            );
        }
    }

    #[test]
    fn will_topic_with_wildcard_or_empty_is_rejected() {
        for topic in [&b"a/+"[..], b"#", b""] {
            assert_eq!(
                decode_err(&raw_connect(b"MQTT", 4, 0x06, &[b"c", topic, b"m"])),
                DecodeError::InvalidTopicName
            );
        }
    }

    #[test]
    fn empty_client_id_without_clean_session_is_rejected_with_connack_2() {
        let err = decode_err(&raw_connect(b"MQTT", 4, 0x00, &[b""]));
        assert_eq!(err, DecodeError::IdentifierRejected);
        assert_eq!(
            err.connack_code(),
            Some(ConnectReturnCode::IdentifierRejected)
        );
    }

    #[test]
    fn empty_client_id_is_rejected_under_mqtt_3_1_even_with_clean_session() {
        assert_eq!(
            decode_err(&raw_connect(b"MQIsdp", 3, 0x02, &[b""])),
            DecodeError::IdentifierRejected
        );
    }

    #[test]
    fn empty_client_id_with_clean_session_is_accepted_under_mqtt_3_1_1() {
        let Ok(Some(Packet::Connect(c))) = decode_all(&raw_connect(b"MQTT", 4, 0x02, &[b""]))
        else {
            panic!("expected a CONNECT");
        };
        assert!(c.client_id.is_empty() && c.clean_session);
    }

    #[test]
    fn mqtt_3_1_connect_may_omit_flagged_username_and_password() {
        let Ok(Some(Packet::Connect(c))) = decode_all(&raw_connect(b"MQIsdp", 3, 0xC2, &[b"c"]))
        else {
            panic!("expected a CONNECT");
        };
        assert_eq!((c.username, c.password), (None, None));
        let Ok(Some(Packet::Connect(c))) =
            decode_all(&raw_connect(b"MQIsdp", 3, 0xC2, &[b"c", b"u"]))
        else {
            panic!("expected a CONNECT");
        };
        assert_eq!((c.username.as_deref(), c.password), (Some("u"), None));
    }

    #[test]
    fn only_protocol_level_and_identifier_errors_earn_a_connack() {
        for err in [
            DecodeError::InvalidProtocolName,
            DecodeError::InvalidConnectFlags("reserved flag is set"),
            DecodeError::MalformedRemainingLength,
            DecodeError::PacketTooLarge { size: 2, max: 1 },
            DecodeError::InvalidUtf8,
            DecodeError::Truncated,
        ] {
            assert_eq!(err.connack_code(), None, "{err}");
        }
    }

    // ---- PUBLISH --------------------------------------------------------------------

    #[test]
    fn publish_with_qos_3_is_rejected() {
        assert_eq!(decode_all(&[0x36]), Err(DecodeError::InvalidQoS));
        assert_eq!(decode_all(&[0x3F]), Err(DecodeError::InvalidQoS));
    }

    #[test]
    fn publish_with_dup_on_qos0_is_rejected() {
        assert_eq!(decode_all(&[0x38]), Err(DecodeError::DupOnQoS0));
        assert_eq!(decode_all(&[0x39]), Err(DecodeError::DupOnQoS0));
    }

    #[test]
    fn publish_with_wildcard_topic_is_rejected() {
        for topic in [&b"sport/+"[..], b"#", b"sport/tennis#", b"a+b"] {
            assert_eq!(
                decode_err(&raw_publish(0x30, topic, None, b"p")),
                DecodeError::InvalidTopicName
            );
        }
    }

    #[test]
    fn topic_scan_finds_forbidden_bytes_at_every_position() {
        let flagged = |b: u8| b < 0x20 || matches!(b, b'+' | b'#' | 0x7F | 0xC2);
        for len in 1..40 {
            assert!(!may_be_invalid_in_topic(&vec![b'a'; len]), "clean {len}");
            for at in 0..len {
                for bad in (0..=255u8).filter(|&b| flagged(b)) {
                    let mut topic = vec![b'a'; len];
                    topic[at] = bad;
                    assert!(may_be_invalid_in_topic(&topic), "{bad} at {at} of {len}");
                }
            }
        }
        // Bytes next to the forbidden ones must not be mistaken for them.
        let near: Vec<u8> = (1..=255u8).filter(|&b| !flagged(b)).collect();
        assert!(!may_be_invalid_in_topic(&near));
        for start in 0..near.len() {
            assert!(!may_be_invalid_in_topic(&near[start..]), "from {start}");
        }
    }

    #[test]
    fn control_characters_close_in_every_string_a_client_sends() {
        for bad in ["a\u{1}b", "\u{1f}", "x\u{7f}", "\u{80}", "t/\u{9f}/u"] {
            let b = bad.as_bytes();
            assert_eq!(
                decode_err(&raw_publish(0x30, b, None, b"p")),
                DecodeError::ControlCharacter,
                "topic name {bad:?}"
            );
            assert_eq!(
                decode_err(&raw_subscribe(1, &[(b"ok", 0), (b, 0)])),
                DecodeError::ControlCharacter,
                "filter {bad:?}"
            );
            assert_eq!(
                decode_err(&raw_unsubscribe(1, &[b])),
                DecodeError::ControlCharacter,
                "unsubscribe filter {bad:?}"
            );
            // Client id, will topic, username.
            let id = raw_connect(b"MQTT", 4, 0x02, &[b]);
            assert_eq!(
                decode_err(&id),
                DecodeError::ControlCharacter,
                "client id {bad:?}"
            );
            let will = raw_connect(b"MQTT", 4, 0x06, &[b"c", b, b"payload"]);
            assert_eq!(
                decode_err(&will),
                DecodeError::ControlCharacter,
                "will {bad:?}"
            );
            let user = raw_connect(b"MQTT", 4, 0x82, &[b"c", b]);
            assert_eq!(
                decode_err(&user),
                DecodeError::ControlCharacter,
                "user {bad:?}"
            );
        }
        // Neighbours of the control ranges are fine: space, '~', U+00A0, 'é', '😀'.
        for ok in [" ", "~", "\u{a0}", "é", "😀", "a/\u{c2}\u{a9}"] {
            let b = ok.as_bytes();
            assert!(decode_all(&raw_publish(0x30, b, None, b"p"))
                .unwrap()
                .is_some());
            assert!(decode_all(&raw_subscribe(1, &[(b, 0)])).unwrap().is_some());
        }
        // The password is binary data, not a string.
        let pass = raw_connect(b"MQTT", 4, 0xC2, &[b"c", b"u", b"\x01\x7f"]);
        assert!(decode_all(&pass).unwrap().is_some());
    }

    #[test]
    fn an_empty_topic_filter_is_a_protocol_violation() {
        for bytes in [
            raw_subscribe(1, &[(b"", 0)]),
            raw_subscribe(1, &[(b"a", 0), (b"", 1)]),
            raw_unsubscribe(1, &[b""]),
            raw_unsubscribe(1, &[b"a", b""]),
        ] {
            assert_eq!(
                decode_err(&bytes),
                DecodeError::EmptyTopicFilter,
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn topic_limits_apply_to_publish_and_will_topics_and_the_client_id_to_its_limit() {
        let opts = DecodeOptions {
            max_topic_length: 12,
            max_topic_levels: 3,
            max_client_id_length: 5,
            ..DecodeOptions::new(MAX)
        };
        let with = |bytes: &[u8]| decode_with(&mut BytesMut::from(bytes), &opts);
        assert!(with(&raw_publish(0x30, b"a/b/c", None, b""))
            .unwrap()
            .is_some());
        assert!(with(&raw_publish(0x30, b"abcdefghijkl", None, b""))
            .unwrap()
            .is_some());
        assert_eq!(
            with(&raw_publish(0x30, b"a/b/c/d", None, b"")),
            Err(DecodeError::TooManyTopicLevels { max: 3 })
        );
        assert_eq!(
            with(&raw_publish(0x30, b"///", None, b"")),
            Err(DecodeError::TooManyTopicLevels { max: 3 })
        );
        assert_eq!(
            with(&raw_publish(0x30, b"abcdefghijklm", None, b"")),
            Err(DecodeError::TopicTooLong { len: 13, max: 12 })
        );
        let will = raw_connect(b"MQTT", 4, 0x06, &[b"c", b"w/x/y/z", b"p"]);
        assert_eq!(with(&will), Err(DecodeError::TooManyTopicLevels { max: 3 }));
        let long_id = raw_connect(b"MQTT", 4, 0x02, &[b"abcdef"]);
        let e = with(&long_id).unwrap_err();
        assert_eq!(e, DecodeError::IdentifierRejected);
        assert_eq!(
            e.connack_code(),
            Some(ConnectReturnCode::IdentifierRejected)
        );
        assert!(with(&raw_connect(b"MQTT", 4, 0x02, &[b"abcde"]))
            .unwrap()
            .is_some());
        // Filters are the broker's to judge (SUBACK 0x80), not the decoder's.
        assert!(with(&raw_subscribe(1, &[(b"a/b/c/d/e", 0)]))
            .unwrap()
            .is_some());
    }

    #[test]
    fn mqtt31_flag_bits_are_accepted_from_31_clients_only() {
        // CONNECT with fixed-header flags, and with the reserved flag bit.
        for (first, flags) in [(0x11, 0x02), (0x10, 0x03), (0x1F, 0x03)] {
            let mut c = raw_connect(b"MQIsdp", 3, flags, &[b"c"]);
            c[0] = first;
            assert!(matches!(
                decode_all(&c),
                Ok(Some(Packet::Connect(ref c))) if c.protocol == Protocol::V31
            ));
            let mut c = raw_connect(b"MQTT", 4, flags, &[b"c"]);
            c[0] = first;
            assert!(
                decode_all(&c).is_err(),
                "3.1.1 CONNECT {first:#x} {flags:#x}"
            );
        }
        // DUP on a resent PUBREL, SUBSCRIBE, UNSUBSCRIBE.
        let v31 = DecodeOptions {
            mqtt31: true,
            ..DecodeOptions::new(MAX)
        };
        let pubrel = raw(0x6A, &[0, 7]);
        assert_eq!(
            decode_with(&mut BytesMut::from(&pubrel[..]), &v31),
            Ok(Some(Packet::PubRel(7)))
        );
        assert!(decode_all(&pubrel).is_err());
        let mut sub = raw_subscribe(3, &[(b"a", 1)]);
        sub[0] = 0x8A;
        assert!(decode_with(&mut BytesMut::from(&sub[..]), &v31)
            .unwrap()
            .is_some());
        assert!(decode_all(&sub).is_err());
        let mut unsub = raw_unsubscribe(3, &[b"a"]);
        unsub[0] = 0xAA;
        assert!(decode_with(&mut BytesMut::from(&unsub[..]), &v31)
            .unwrap()
            .is_some());
        assert!(decode_all(&unsub).is_err());
        // PUBLISH keeps its rules under 3.1.
        assert_eq!(
            decode_with(&mut BytesMut::from(&[0x36u8][..]), &v31),
            Err(DecodeError::InvalidQoS)
        );
    }

    #[test]
    fn publish_with_empty_topic_is_rejected() {
        assert_eq!(
            decode_err(&raw_publish(0x32, b"", Some(1), b"p")),
            DecodeError::InvalidTopicName
        );
    }

    #[test]
    fn zero_packet_identifier_is_rejected_wherever_one_is_carried() {
        for bytes in [
            raw_publish(0x32, b"t", Some(0), b""),
            raw_publish(0x34, b"t", Some(0), b""),
            raw_subscribe(0, &[(b"a", 0)]),
            raw_unsubscribe(0, &[b"a"]),
            raw(0x40, &[0, 0]),
            raw(0x50, &[0, 0]),
            raw(0x62, &[0, 0]),
            raw(0x70, &[0, 0]),
            raw(0xB0, &[0, 0]),
            raw(0x90, &[0, 0, 0]),
        ] {
            assert_eq!(decode_err(&bytes), DecodeError::ZeroPacketId, "{bytes:?}");
        }
    }

    // ---- SUBSCRIBE / UNSUBSCRIBE / acks ---------------------------------------------

    #[test]
    fn subscribe_without_filters_is_rejected() {
        assert_eq!(
            decode_err(&raw_subscribe(1, &[])),
            DecodeError::EmptySubscribe
        );
    }

    #[test]
    fn unsubscribe_without_filters_is_rejected() {
        assert_eq!(
            decode_err(&raw_unsubscribe(1, &[])),
            DecodeError::EmptyUnsubscribe
        );
    }

    #[test]
    fn subscribe_requested_qos_above_2_or_with_reserved_bits_is_rejected() {
        for qos in [3, 4, 0x80, 0xFC, 0xFF] {
            assert_eq!(
                decode_err(&raw_subscribe(1, &[(b"a", 0), (b"b", qos)])),
                DecodeError::InvalidQoS,
                "requested QoS {qos:#04x}"
            );
        }
    }

    #[test]
    fn connack_with_reserved_flags_or_unknown_code_is_rejected() {
        assert_eq!(
            decode_err(&raw(0x20, &[0x02, 0])),
            DecodeError::InvalidConnAckFlags(2)
        );
        assert_eq!(
            decode_err(&raw(0x20, &[0, 6])),
            DecodeError::InvalidConnAckCode(6)
        );
    }

    #[test]
    fn suback_with_unknown_return_code_is_rejected() {
        for code in [3, 0x81, 0xFF] {
            assert_eq!(
                decode_err(&raw(0x90, &[0, 1, 0, code])),
                DecodeError::InvalidSubAckCode(code)
            );
        }
    }

    // ---- robustness -----------------------------------------------------------------

    /// Decodes until the buffer is exhausted, needs more, or errors; must never panic.
    fn drain(bytes: &[u8], max: usize) {
        let mut buf = BytesMut::from(bytes);
        while let Ok(Some(_)) = decode(&mut buf, max) {}
    }

    #[test]
    fn arbitrary_and_mutated_input_never_panics() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let samples: Vec<Vec<u8>> = samples().iter().map(|p| encode(p).to_vec()).collect();
        for _ in 0..20_000 {
            let len = (next() % 48) as usize;
            let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            drain(&random, 1 << 16);
            let mut mutated = samples[(next() as usize) % samples.len()].clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % mutated.len();
                mutated[i] = next() as u8;
            }
            drain(&mutated, 1 << 16);
            let cut = (next() as usize) % (mutated.len() + 1);
            drain(&mutated[..cut], 1 << 16);
        }
    }
}

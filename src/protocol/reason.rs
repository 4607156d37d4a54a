//! MQTT 5.0 reason codes (§2.4, Table 2-6): the one-byte outcome carried by CONNACK,
//! the acknowledgements, DISCONNECT and AUTH.
//!
//! A code is a plain byte with named constants, because the specification gives one
//! value several names depending on the packet (0x00 is Success, Normal disconnection
//! and Granted QoS 0). [`ReasonCode::valid_in`] holds the table's "Packets" column, so
//! the decoder can refuse a code that its packet does not allow.

use std::fmt;

use super::packet::ConnectReturnCode;
use super::properties::PacketKind;

/// A reason code as it travels on the wire. Any byte can be held (the encoder writes
/// what it is given); [`ReasonCode::valid_in`] says whether a packet may carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    /// 0x00 Success (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, AUTH).
    pub const SUCCESS: ReasonCode = ReasonCode(0x00);
    /// 0x00 Normal disconnection (DISCONNECT).
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode(0x00);
    /// 0x00 Granted QoS 0 (SUBACK).
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode(0x00);
    /// 0x01 Granted QoS 1 (SUBACK).
    pub const GRANTED_QOS_1: ReasonCode = ReasonCode(0x01);
    /// 0x02 Granted QoS 2 (SUBACK).
    pub const GRANTED_QOS_2: ReasonCode = ReasonCode(0x02);
    /// 0x04 Disconnect with Will Message (DISCONNECT).
    pub const DISCONNECT_WITH_WILL: ReasonCode = ReasonCode(0x04);
    /// 0x10 No matching subscribers (PUBACK, PUBREC).
    pub const NO_MATCHING_SUBSCRIBERS: ReasonCode = ReasonCode(0x10);
    /// 0x11 No subscription existed (UNSUBACK).
    pub const NO_SUBSCRIPTION_EXISTED: ReasonCode = ReasonCode(0x11);
    /// 0x18 Continue authentication (AUTH).
    pub const CONTINUE_AUTHENTICATION: ReasonCode = ReasonCode(0x18);
    /// 0x19 Re-authenticate (AUTH).
    pub const REAUTHENTICATE: ReasonCode = ReasonCode(0x19);
    /// 0x80 Unspecified error.
    pub const UNSPECIFIED_ERROR: ReasonCode = ReasonCode(0x80);
    /// 0x81 Malformed Packet.
    pub const MALFORMED_PACKET: ReasonCode = ReasonCode(0x81);
    /// 0x82 Protocol Error.
    pub const PROTOCOL_ERROR: ReasonCode = ReasonCode(0x82);
    /// 0x83 Implementation specific error.
    pub const IMPLEMENTATION_SPECIFIC_ERROR: ReasonCode = ReasonCode(0x83);
    /// 0x84 Unsupported Protocol Version (CONNACK).
    pub const UNSUPPORTED_PROTOCOL_VERSION: ReasonCode = ReasonCode(0x84);
    /// 0x85 Client Identifier not valid (CONNACK).
    pub const CLIENT_IDENTIFIER_NOT_VALID: ReasonCode = ReasonCode(0x85);
    /// 0x86 Bad User Name or Password (CONNACK).
    pub const BAD_USER_NAME_OR_PASSWORD: ReasonCode = ReasonCode(0x86);
    /// 0x87 Not authorized.
    pub const NOT_AUTHORIZED: ReasonCode = ReasonCode(0x87);
    /// 0x88 Server unavailable (CONNACK).
    pub const SERVER_UNAVAILABLE: ReasonCode = ReasonCode(0x88);
    /// 0x89 Server busy.
    pub const SERVER_BUSY: ReasonCode = ReasonCode(0x89);
    /// 0x8A Banned (CONNACK).
    pub const BANNED: ReasonCode = ReasonCode(0x8A);
    /// 0x8B Server shutting down (DISCONNECT).
    pub const SERVER_SHUTTING_DOWN: ReasonCode = ReasonCode(0x8B);
    /// 0x8C Bad authentication method.
    pub const BAD_AUTHENTICATION_METHOD: ReasonCode = ReasonCode(0x8C);
    /// 0x8D Keep Alive timeout (DISCONNECT).
    pub const KEEP_ALIVE_TIMEOUT: ReasonCode = ReasonCode(0x8D);
    /// 0x8E Session taken over (DISCONNECT).
    pub const SESSION_TAKEN_OVER: ReasonCode = ReasonCode(0x8E);
    /// 0x8F Topic Filter invalid.
    pub const TOPIC_FILTER_INVALID: ReasonCode = ReasonCode(0x8F);
    /// 0x90 Topic Name invalid.
    pub const TOPIC_NAME_INVALID: ReasonCode = ReasonCode(0x90);
    /// 0x91 Packet Identifier in use.
    pub const PACKET_IDENTIFIER_IN_USE: ReasonCode = ReasonCode(0x91);
    /// 0x92 Packet Identifier not found (PUBREL, PUBCOMP).
    pub const PACKET_IDENTIFIER_NOT_FOUND: ReasonCode = ReasonCode(0x92);
    /// 0x93 Receive Maximum exceeded (DISCONNECT).
    pub const RECEIVE_MAXIMUM_EXCEEDED: ReasonCode = ReasonCode(0x93);
    /// 0x94 Topic Alias invalid (DISCONNECT).
    pub const TOPIC_ALIAS_INVALID: ReasonCode = ReasonCode(0x94);
    /// 0x95 Packet too large.
    pub const PACKET_TOO_LARGE: ReasonCode = ReasonCode(0x95);
    /// 0x96 Message rate too high (DISCONNECT).
    pub const MESSAGE_RATE_TOO_HIGH: ReasonCode = ReasonCode(0x96);
    /// 0x97 Quota exceeded.
    pub const QUOTA_EXCEEDED: ReasonCode = ReasonCode(0x97);
    /// 0x98 Administrative action (DISCONNECT).
    pub const ADMINISTRATIVE_ACTION: ReasonCode = ReasonCode(0x98);
    /// 0x99 Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: ReasonCode = ReasonCode(0x99);
    /// 0x9A Retain not supported.
    pub const RETAIN_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9A);
    /// 0x9B QoS not supported.
    pub const QOS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9B);
    /// 0x9C Use another server.
    pub const USE_ANOTHER_SERVER: ReasonCode = ReasonCode(0x9C);
    /// 0x9D Server moved.
    pub const SERVER_MOVED: ReasonCode = ReasonCode(0x9D);
    /// 0x9E Shared Subscriptions not supported.
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9E);
    /// 0x9F Connection rate exceeded.
    pub const CONNECTION_RATE_EXCEEDED: ReasonCode = ReasonCode(0x9F);
    /// 0xA0 Maximum connect time (DISCONNECT).
    pub const MAXIMUM_CONNECT_TIME: ReasonCode = ReasonCode(0xA0);
    /// 0xA1 Subscription Identifiers not supported.
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA1);
    /// 0xA2 Wildcard Subscriptions not supported.
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA2);

    /// Every value Table 2-6 assigns, ascending, each once.
    pub const ALL: [u8; 43] = [
        0x00, 0x01, 0x02, 0x04, 0x10, 0x11, 0x18, 0x19, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86,
        0x87, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x8D, 0x8E, 0x8F, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95,
        0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    ];

    /// The wire byte.
    pub fn value(self) -> u8 {
        self.0
    }

    /// Whether the code reports a failure: 0x80 and above (§2.4).
    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }

    /// The specification's name, for log lines. 0x00 to 0x02 have one name per packet
    /// type; the generic one is given ("Success", "Granted QoS 1", "Granted QoS 2").
    pub fn name(self) -> &'static str {
        match self.0 {
            0x00 => "Success",
            0x01 => "Granted QoS 1",
            0x02 => "Granted QoS 2",
            0x04 => "Disconnect with Will Message",
            0x10 => "No matching subscribers",
            0x11 => "No subscription existed",
            0x18 => "Continue authentication",
            0x19 => "Re-authenticate",
            0x80 => "Unspecified error",
            0x81 => "Malformed Packet",
            0x82 => "Protocol Error",
            0x83 => "Implementation specific error",
            0x84 => "Unsupported Protocol Version",
            0x85 => "Client Identifier not valid",
            0x86 => "Bad User Name or Password",
            0x87 => "Not authorized",
            0x88 => "Server unavailable",
            0x89 => "Server busy",
            0x8A => "Banned",
            0x8B => "Server shutting down",
            0x8C => "Bad authentication method",
            0x8D => "Keep Alive timeout",
            0x8E => "Session taken over",
            0x8F => "Topic Filter invalid",
            0x90 => "Topic Name invalid",
            0x91 => "Packet Identifier in use",
            0x92 => "Packet Identifier not found",
            0x93 => "Receive Maximum exceeded",
            0x94 => "Topic Alias invalid",
            0x95 => "Packet too large",
            0x96 => "Message rate too high",
            0x97 => "Quota exceeded",
            0x98 => "Administrative action",
            0x99 => "Payload format invalid",
            0x9A => "Retain not supported",
            0x9B => "QoS not supported",
            0x9C => "Use another server",
            0x9D => "Server moved",
            0x9E => "Shared Subscriptions not supported",
            0x9F => "Connection rate exceeded",
            0xA0 => "Maximum connect time",
            0xA1 => "Subscription Identifiers not supported",
            0xA2 => "Wildcard Subscriptions not supported",
            _ => "unassigned",
        }
    }

    /// Whether a packet of `kind` may carry this code (the "Packets" column of Table
    /// 2-6, as repeated in each packet's section). The Will Properties carry no code.
    pub fn valid_in(self, kind: PacketKind) -> bool {
        use PacketKind as K;
        let c = self.0;
        match kind {
            K::ConnAck => matches!(
                c,
                0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F
            ),
            K::PubAck | K::PubRec => {
                matches!(
                    c,
                    0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
                )
            }
            K::PubRel | K::PubComp => matches!(c, 0x00 | 0x92),
            K::SubAck => matches!(
                c,
                0x00 | 0x01 | 0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
            ),
            K::UnsubAck => matches!(c, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91),
            K::Disconnect => matches!(
                c,
                0x00 | 0x04
                    | 0x80..=0x83
                    | 0x87
                    | 0x89
                    | 0x8B
                    | 0x8D..=0x90
                    | 0x93..=0xA2
            ),
            K::Auth => matches!(c, 0x00 | 0x18 | 0x19),
            K::Connect | K::Publish | K::Subscribe | K::Unsubscribe | K::Will => false,
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#04x})", self.name(), self.0)
    }
}

impl From<ConnectReturnCode> for ReasonCode {
    /// The 5.0 CONNACK code with the meaning of a 3.1.1 return code, so a decision
    /// taken in 3.1.1 terms (authentication, identifier checks) answers a 5.0 client.
    fn from(code: ConnectReturnCode) -> ReasonCode {
        match code {
            ConnectReturnCode::Accepted => ReasonCode::SUCCESS,
            ConnectReturnCode::UnacceptableProtocolVersion => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            ConnectReturnCode::IdentifierRejected => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            ConnectReturnCode::ServerUnavailable => ReasonCode::SERVER_UNAVAILABLE,
            ConnectReturnCode::BadUsernameOrPassword => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            ConnectReturnCode::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_assigned_code_has_a_name_and_others_do_not() {
        for b in 0..=u8::MAX {
            let named = ReasonCode(b).name() != "unassigned";
            assert_eq!(named, ReasonCode::ALL.contains(&b), "{b:#04x}");
        }
    }

    #[test]
    fn every_assigned_code_is_valid_in_some_packet_and_unassigned_ones_in_none() {
        for b in 0..=u8::MAX {
            let somewhere = PacketKind::ALL
                .into_iter()
                .any(|k| ReasonCode(b).valid_in(k));
            assert_eq!(somewhere, ReasonCode::ALL.contains(&b), "{b:#04x}");
        }
    }

    #[test]
    fn validity_follows_the_packet_sections() {
        let per_packet: [(PacketKind, &[u8]); 9] = [
            (
                PacketKind::ConnAck,
                &[
                    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C,
                    0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
                ],
            ),
            (
                PacketKind::PubAck,
                &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
            ),
            (
                PacketKind::PubRec,
                &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
            ),
            (PacketKind::PubRel, &[0x00, 0x92]),
            (PacketKind::PubComp, &[0x00, 0x92]),
            (
                PacketKind::SubAck,
                &[
                    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
                ],
            ),
            (
                PacketKind::UnsubAck,
                &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
            ),
            (
                PacketKind::Disconnect,
                &[
                    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90,
                    0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F,
                    0xA0, 0xA1, 0xA2,
                ],
            ),
            (PacketKind::Auth, &[0x00, 0x18, 0x19]),
        ];
        for (kind, codes) in per_packet {
            for b in 0..=u8::MAX {
                assert_eq!(
                    ReasonCode(b).valid_in(kind),
                    codes.contains(&b),
                    "{b:#04x} in {kind}"
                );
            }
        }
    }

    #[test]
    fn connect_return_codes_map_to_their_5_0_meaning() {
        let pairs = [
            (ConnectReturnCode::Accepted, 0x00),
            (ConnectReturnCode::UnacceptableProtocolVersion, 0x84),
            (ConnectReturnCode::IdentifierRejected, 0x85),
            (ConnectReturnCode::ServerUnavailable, 0x88),
            (ConnectReturnCode::BadUsernameOrPassword, 0x86),
            (ConnectReturnCode::NotAuthorized, 0x87),
        ];
        for (code, v) in pairs {
            assert_eq!(ReasonCode::from(code), ReasonCode(v));
            assert!(ReasonCode(v).valid_in(PacketKind::ConnAck));
        }
    }
}

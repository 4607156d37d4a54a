//! The MQTT 5.0 parts of decoding: property lists folded into the packets' typed
//! fields, reason codes checked against their packet, and the 5.0 layouts of the
//! packets whose 3.1.1 layout has no room for them. [`super::decode`] calls in here
//! only for a level-5 CONNECT or when [`DecodeOptions::v5`](super::DecodeOptions::v5)
//! is set, so the 3.1.1 path never runs this code.
//!
//! Cross-field rules that one packet shows on its own are enforced here: Authentication
//! Data without a Method, an empty topic without a Topic Alias, No Local on a shared
//! subscription. Rules that need the direction or the session are the caller's: a
//! Subscription Identifier in a PUBLISH from a client [MQTT-3.3.4-6], a Topic Alias
//! above the announced maximum or not yet mapped, a DISCONNECT from a server carrying a
//! Session Expiry Interval, a client raising its Session Expiry Interval from 0 at
//! DISCONNECT, the Receive Maximum quota, a CONNACK with Session Present set and a
//! non-zero reason code [MQTT-3.2.2-6], an AUTH without the Authentication Method
//! CONNECT named [MQTT-4.12.0-5] (the codec accepts AUTH's short forms, which carry
//! none), a QoS or Retain the server did not grant, and the order of an AUTH exchange.

use std::num::{NonZeroU16, NonZeroU32};
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::decode::{DecodeError, Reader};
use super::packet::{
    Ack, Auth, ConnAckProps, ConnAckV5, ConnectProps, DisconnectV5, Packet, PublishProps, QoS,
    RetainHandling, SubAckV5, SubscribeFilter, UserProperties, WillProps,
};
use super::properties::{self, PacketKind, Properties, Property, PropertyId};
use super::reason::ReasonCode;

const CONNACK: u8 = 2;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBACK: u8 = 9;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// The bytes of the frame from the reader's position on.
fn rest<'a>(r: &Reader<'a>) -> Result<&'a [u8], DecodeError> {
    let frame: &'a Bytes = r.frame;
    frame.get(r.pos..).ok_or(DecodeError::Truncated)
}

/// A property list as it may appear in `kind`, at the reader's position.
fn props(r: &mut Reader<'_>, kind: PacketKind) -> Result<Properties, DecodeError> {
    let (list, used) = properties::decode(rest(r)?, kind)?;
    r.pos += used;
    Ok(list)
}

/// A reason code that `kind` may carry.
fn reason(r: &mut Reader<'_>, kind: PacketKind) -> Result<ReasonCode, DecodeError> {
    let code = ReasonCode(r.u8()?);
    if code.valid_in(kind) {
        Ok(code)
    } else {
        Err(DecodeError::InvalidReasonCode {
            packet: kind.name(),
            code: code.0,
        })
    }
}

/// Authentication Data is a Protocol Error without an Authentication Method.
fn check_auth(method: &Option<ByteString>, data: &Option<Bytes>) -> Result<(), DecodeError> {
    if data.is_some() && method.is_none() {
        Err(DecodeError::AuthDataWithoutMethod)
    } else {
        Ok(())
    }
}

/// A list that only Reason String and User Property may be in (the acks).
fn reason_props(
    r: &mut Reader<'_>,
    kind: PacketKind,
) -> Result<(Option<ByteString>, UserProperties), DecodeError> {
    let mut reason_string = None;
    let mut user = UserProperties::new();
    for p in props(r, kind)? {
        match p {
            Property::ReasonString(s) => reason_string = Some(s),
            Property::UserProperty(k, v) => user.push((k, v)),
            // The codec admits nothing else in these packets.
            _ => {}
        }
    }
    Ok((reason_string, user))
}

/// A list that only User Property may be in (UNSUBSCRIBE).
pub(super) fn user_only(
    r: &mut Reader<'_>,
    kind: PacketKind,
) -> Result<UserProperties, DecodeError> {
    let mut user = UserProperties::new();
    for p in props(r, kind)? {
        if let Property::UserProperty(k, v) = p {
            user.push((k, v));
        }
    }
    Ok(user)
}

/// CONNECT's properties (§3.1.2.11).
pub(super) fn connect_props(r: &mut Reader<'_>) -> Result<ConnectProps, DecodeError> {
    let mut c = ConnectProps::default();
    for p in props(r, PacketKind::Connect)? {
        match p {
            Property::SessionExpiryInterval(v) => c.session_expiry = v,
            Property::ReceiveMaximum(v) => c.receive_maximum = v,
            Property::MaximumPacketSize(v) => c.maximum_packet_size = Some(v),
            Property::TopicAliasMaximum(v) => c.topic_alias_maximum = v,
            Property::RequestResponseInformation(v) => c.request_response_information = v,
            Property::RequestProblemInformation(v) => c.request_problem_information = v,
            Property::AuthenticationMethod(v) => c.auth_method = Some(v),
            Property::AuthenticationData(v) => c.auth_data = Some(v),
            Property::UserProperty(k, v) => c.user.push((k, v)),
            _ => {}
        }
    }
    check_auth(&c.auth_method, &c.auth_data)?;
    Ok(c)
}

/// Walks the list at the reader's position for `kind`: `typed` takes the properties
/// the broker acts on (returning true); every other one is forwarded. The forwarded
/// ones come back as one byte range: a slice of the frame when they were contiguous
/// (the usual case), else a copy of them joined in arrival order.
fn typed_and_forwarded(
    r: &mut Reader<'_>,
    kind: PacketKind,
    mut typed: impl FnMut(PropertyId, u32) -> bool,
) -> Result<Bytes, DecodeError> {
    let base = r.pos;
    let buf = rest(r)?;
    let mut run: Option<Range<usize>> = None;
    let mut pieces: Vec<Range<usize>> = Vec::new();
    let used = properties::walk(buf, kind, |id, value, range| {
        if typed(id, value) {
            return;
        }
        if !pieces.is_empty() {
            pieces.push(range);
            return;
        }
        match &mut run {
            None => run = Some(range),
            Some(f) if f.end == range.start => f.end = range.end,
            Some(f) => {
                pieces.push(f.clone());
                pieces.push(range);
            }
        }
    })?;
    r.pos += used;
    if !pieces.is_empty() {
        let mut joined = BytesMut::with_capacity(pieces.iter().map(|p| p.len()).sum());
        for p in pieces {
            joined.put_slice(&buf[p]);
        }
        return Ok(joined.freeze());
    }
    Ok(match run {
        Some(f) => r.frame.slice(base + f.start..base + f.end),
        None => Bytes::new(),
    })
}

/// The Will Properties of CONNECT (§3.1.3.2).
pub(super) fn will_props(r: &mut Reader<'_>) -> Result<WillProps, DecodeError> {
    let mut w = WillProps::default();
    w.forward = typed_and_forwarded(r, PacketKind::Will, |id, v| match id {
        PropertyId::WillDelayInterval => {
            w.delay_interval = v;
            true
        }
        PropertyId::MessageExpiryInterval => {
            w.message_expiry = Some(v);
            true
        }
        _ => false,
    })?;
    Ok(w)
}

/// PUBLISH's properties (§3.3.2.3); `None` for an empty list, the common case, which
/// costs one byte comparison.
pub(super) fn publish_props(r: &mut Reader<'_>) -> Result<Option<Box<PublishProps>>, DecodeError> {
    if rest(r)?.first() == Some(&0) {
        r.pos += 1;
        return Ok(None);
    }
    let mut p = PublishProps::default();
    p.forward = typed_and_forwarded(r, PacketKind::Publish, |id, v| match id {
        // walk has refused 0 for both; the conversions cannot fail.
        PropertyId::TopicAlias => {
            p.topic_alias = u16::try_from(v).ok().and_then(NonZeroU16::new);
            true
        }
        PropertyId::SubscriptionIdentifier => {
            p.subscription_ids.extend(NonZeroU32::new(v));
            true
        }
        PropertyId::MessageExpiryInterval => {
            p.message_expiry = Some(v);
            true
        }
        _ => false,
    })?;
    Ok((!p.is_empty()).then(|| Box::new(p)))
}

/// SUBSCRIBE's properties (§3.8.2.1): the Subscription Identifier and User Properties.
pub(super) fn subscribe_props(
    r: &mut Reader<'_>,
) -> Result<(Option<NonZeroU32>, UserProperties), DecodeError> {
    let mut id = None;
    let mut user = UserProperties::new();
    for p in props(r, PacketKind::Subscribe)? {
        match p {
            Property::SubscriptionIdentifier(v) => id = Some(v),
            Property::UserProperty(k, v) => user.push((k, v)),
            _ => {}
        }
    }
    Ok((id, user))
}

/// One filter's Subscription Options byte (§3.8.3.1).
pub(super) fn subscription_options(
    filter: ByteString,
    options: u8,
) -> Result<SubscribeFilter, DecodeError> {
    if options & 0xC0 != 0 {
        return Err(DecodeError::ReservedSubscriptionOptions(options)); // [MQTT-3.8.3-5]
    }
    let qos =
        QoS::from_u8(options & 0b11).ok_or(DecodeError::InvalidSubscriptionOptions(options))?;
    let retain_handling = match (options >> 4) & 0b11 {
        0 => RetainHandling::OnSubscribe,
        1 => RetainHandling::OnNewSubscription,
        2 => RetainHandling::Never,
        _ => return Err(DecodeError::InvalidSubscriptionOptions(options)),
    };
    let no_local = options & 0x04 != 0;
    if no_local && filter.starts_with("$share/") {
        return Err(DecodeError::NoLocalOnSharedSubscription); // [MQTT-3.8.3-4]
    }
    Ok(SubscribeFilter {
        filter,
        qos,
        no_local,
        retain_as_published: options & 0x08 != 0,
        retain_handling,
    })
}

/// The 5.0 packets other than CONNECT, PUBLISH, SUBSCRIBE and UNSUBSCRIBE.
pub(super) fn decode_other(kind: u8, r: &mut Reader<'_>) -> Result<Packet, DecodeError> {
    let packet = match kind {
        CONNACK => Packet::ConnAckV5(Box::new(connack(r)?)),
        PUBACK => Packet::PubAckV5(ack(r, PacketKind::PubAck)?),
        PUBREC => Packet::PubRecV5(ack(r, PacketKind::PubRec)?),
        PUBREL => Packet::PubRelV5(ack(r, PacketKind::PubRel)?),
        PUBCOMP => Packet::PubCompV5(ack(r, PacketKind::PubComp)?),
        SUBACK => Packet::SubAckV5(Box::new(reason_list(r, PacketKind::SubAck)?)),
        UNSUBACK => Packet::UnsubAckV5(Box::new(reason_list(r, PacketKind::UnsubAck)?)),
        PINGREQ => Packet::PingReq,
        PINGRESP => Packet::PingResp,
        DISCONNECT => Packet::DisconnectV5(Box::new(disconnect(r)?)),
        AUTH => Packet::Auth(Box::new(auth(r)?)),
        // check_fixed_header admits no other type here.
        other => return Err(DecodeError::InvalidPacketType(other)),
    };
    r.expect_end()?;
    Ok(packet)
}

/// CONNACK (§3.2).
fn connack(r: &mut Reader<'_>) -> Result<ConnAckV5, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::InvalidConnAckFlags(flags));
    }
    let reason = reason(r, PacketKind::ConnAck)?;
    let mut c = ConnAckProps::default();
    for p in props(r, PacketKind::ConnAck)? {
        match p {
            Property::SessionExpiryInterval(v) => c.session_expiry = Some(v),
            Property::ReceiveMaximum(v) => c.receive_maximum = v,
            Property::MaximumQoS(q) => c.maximum_qos = q,
            Property::RetainAvailable(v) => c.retain_available = v,
            Property::MaximumPacketSize(v) => c.maximum_packet_size = Some(v),
            Property::AssignedClientIdentifier(v) => c.assigned_client_id = Some(v),
            Property::TopicAliasMaximum(v) => c.topic_alias_maximum = v,
            Property::ReasonString(v) => c.reason_string = Some(v),
            Property::UserProperty(k, v) => c.user.push((k, v)),
            Property::WildcardSubscriptionAvailable(v) => c.wildcard_subscription_available = v,
            Property::SubscriptionIdentifierAvailable(v) => {
                c.subscription_identifiers_available = v
            }
            Property::SharedSubscriptionAvailable(v) => c.shared_subscription_available = v,
            Property::ServerKeepAlive(v) => c.server_keep_alive = Some(v),
            Property::ResponseInformation(v) => c.response_information = Some(v),
            Property::ServerReference(v) => c.server_reference = Some(v),
            Property::AuthenticationMethod(v) => c.auth_method = Some(v),
            Property::AuthenticationData(v) => c.auth_data = Some(v),
            _ => {}
        }
    }
    check_auth(&c.auth_method, &c.auth_data)?;
    Ok(ConnAckV5 {
        session_present: flags & 1 != 0,
        reason,
        props: c,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4.2.1): a Remaining Length of 2 means Success
/// and no properties, 3 a reason code and no properties.
fn ack(r: &mut Reader<'_>, kind: PacketKind) -> Result<Ack, DecodeError> {
    let pkid = r.packet_id()?;
    if r.remaining() == 0 {
        return Ok(Ack::success(pkid));
    }
    let reason = reason(r, kind)?;
    let (reason_string, user) = if r.remaining() == 0 {
        (None, UserProperties::new())
    } else {
        reason_props(r, kind)?
    };
    Ok(Ack {
        pkid,
        reason,
        reason_string,
        user,
    })
}

/// SUBACK (§3.9) and UNSUBACK (§3.11): properties, then one reason code per filter.
fn reason_list(r: &mut Reader<'_>, kind: PacketKind) -> Result<SubAckV5, DecodeError> {
    let pkid = r.packet_id()?;
    let (reason_string, user) = reason_props(r, kind)?;
    let mut reasons = Vec::with_capacity(r.remaining());
    while r.remaining() > 0 {
        reasons.push(reason(r, kind)?);
    }
    Ok(SubAckV5 {
        pkid,
        reasons,
        reason_string,
        user,
    })
}

/// DISCONNECT (§3.14): a Remaining Length of 0 means Normal disconnection, and the
/// properties may be left out after the reason code (§3.14.2.2.1).
fn disconnect(r: &mut Reader<'_>) -> Result<DisconnectV5, DecodeError> {
    if r.remaining() == 0 {
        return Ok(DisconnectV5::new(ReasonCode::NORMAL_DISCONNECTION));
    }
    let mut d = DisconnectV5::new(reason(r, PacketKind::Disconnect)?);
    if r.remaining() == 0 {
        return Ok(d);
    }
    for p in props(r, PacketKind::Disconnect)? {
        match p {
            Property::SessionExpiryInterval(v) => d.session_expiry = Some(v),
            Property::ReasonString(v) => d.reason_string = Some(v),
            Property::ServerReference(v) => d.server_reference = Some(v),
            Property::UserProperty(k, v) => d.user.push((k, v)),
            _ => {}
        }
    }
    Ok(d)
}

/// AUTH (§3.15): a Remaining Length of 0 means Success and no properties, and the
/// properties may be left out after the reason code (§3.15.2.2.1).
fn auth(r: &mut Reader<'_>) -> Result<Auth, DecodeError> {
    let mut a = Auth {
        reason: ReasonCode::SUCCESS,
        method: None,
        data: None,
        reason_string: None,
        user: UserProperties::new(),
    };
    if r.remaining() == 0 {
        return Ok(a);
    }
    a.reason = reason(r, PacketKind::Auth)?;
    if r.remaining() == 0 {
        return Ok(a);
    }
    for p in props(r, PacketKind::Auth)? {
        match p {
            Property::AuthenticationMethod(v) => a.method = Some(v),
            Property::AuthenticationData(v) => a.data = Some(v),
            Property::ReasonString(v) => a.reason_string = Some(v),
            Property::UserProperty(k, v) => a.user.push((k, v)),
            _ => {}
        }
    }
    check_auth(&a.method, &a.data)?;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::super::decode::{decode_with, peek_connect_level, DecodeOptions};
    use super::super::encode::{encoded_len_v5, write_remaining_length};
    use super::super::encode_v5::{encode_publish_v5, PublishV5Props};
    use super::super::packet::{
        Connect, LastWill, Protocol, Publish, Subscribe, UnsubAckV5, Unsubscribe,
    };
    use super::super::properties::PropertyError;
    use super::*;
    use bytes::BytesMut;

    const MAX: usize = 1 << 20;

    fn v5() -> DecodeOptions {
        DecodeOptions {
            v5: true,
            ..DecodeOptions::new(MAX)
        }
    }

    fn s(v: &str) -> ByteString {
        ByteString::from(v)
    }

    fn decode5(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
        decode_with(&mut BytesMut::from(bytes), &v5())
    }

    fn decode5_packet(bytes: &[u8]) -> Packet {
        match decode5(bytes) {
            Ok(Some(p)) => p,
            other => panic!("expected a packet from {bytes:?}, got {other:?}"),
        }
    }

    fn decode5_err(bytes: &[u8]) -> DecodeError {
        decode5(bytes).expect_err("packet should be rejected")
    }

    use crate::protocol::test_bytes::{field, raw};

    /// A property list with its Property Length, from properties.
    fn plist(props: Vec<Property>) -> Vec<u8> {
        let mut out = BytesMut::new();
        properties::encode(&Properties::from(props), &mut out);
        out.to_vec()
    }

    /// A property list with its Property Length, from raw property bytes.
    fn list(body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_remaining_length(&mut out, body.len());
        out.put_slice(body);
        out.to_vec()
    }

    fn encode5(p: &Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        p.encode_v5(&mut out);
        assert_eq!(out.len(), encoded_len_v5(p), "encoded_len_v5 of {p:?}");
        out.to_vec()
    }

    fn connect5() -> Connect {
        Connect {
            protocol: Protocol::V5,
            bridge: false,
            clean_session: true,
            keep_alive: 30,
            client_id: s("client-5"),
            will: None,
            username: None,
            password: None,
            props: ConnectProps::default(),
        }
    }

    fn forward() -> Bytes {
        PublishProps::encode_forward(&Properties::from(vec![
            Property::PayloadFormatIndicator(properties::PayloadFormat::Utf8),
            Property::ContentType(s("text/plain")),
            Property::UserProperty(s("b"), s("2")),
            Property::ResponseTopic(s("reply/here")),
            Property::CorrelationData(Bytes::from_static(b"\x00id")),
            Property::UserProperty(s("a"), s("1")),
        ]))
    }

    fn publish5(qos: QoS, props: Option<PublishProps>) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: qos == QoS::AtLeastOnce,
            topic: s("sensors/ü/1"),
            pkid: if qos == QoS::AtMostOnce { 0 } else { 77 },
            payload: Bytes::from_static(b"21.5"),
            props: props.map(Box::new),
        }
    }

    fn ack_full(pkid: u16, reason: u8) -> Ack {
        Ack {
            pkid,
            reason: ReasonCode(reason),
            reason_string: Some(s("why")),
            user: vec![(s("k"), s("v")), (s("k"), s("w"))],
        }
    }

    /// One valid 5.0 packet of every type, in several shapes.
    fn samples() -> Vec<Packet> {
        let mut out = vec![Packet::Connect(Box::new(connect5()))];
        let mut c = connect5();
        c.clean_session = false;
        c.client_id = s("");
        c.username = Some(s("user"));
        c.password = Some(Bytes::from_static(b"\x00pw"));
        c.props = ConnectProps {
            session_expiry: u32::MAX,
            receive_maximum: NonZeroU16::new(20).unwrap(),
            maximum_packet_size: NonZeroU32::new(4096),
            topic_alias_maximum: 10,
            request_response_information: true,
            request_problem_information: false,
            auth_method: Some(s("SCRAM-SHA-1")),
            auth_data: Some(Bytes::from_static(b"client-first")),
            user: vec![(s("region"), s("eu")), (s("region"), s("us"))],
        };
        c.will = Some(LastWill {
            topic: s("clients/5/status"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::ExactlyOnce,
            retain: true,
            props: WillProps {
                delay_interval: 30,
                message_expiry: Some(600),
                forward: forward(),
            },
        });
        out.push(Packet::Connect(Box::new(c)));
        // Password without username is allowed in 5.0; a will without properties.
        let mut c = connect5();
        c.password = Some(Bytes::from_static(b"token"));
        c.will = Some(LastWill {
            topic: s("w"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            props: WillProps::default(),
        });
        out.push(Packet::Connect(Box::new(c)));

        out.push(Packet::ConnAckV5(Box::new(ConnAckV5 {
            session_present: true,
            reason: ReasonCode::SUCCESS,
            props: ConnAckProps::default(),
        })));
        out.push(Packet::ConnAckV5(Box::new(ConnAckV5 {
            session_present: false,
            reason: ReasonCode::SUCCESS,
            props: ConnAckProps {
                session_expiry: Some(3600),
                receive_maximum: NonZeroU16::new(100).unwrap(),
                maximum_qos: QoS::AtLeastOnce,
                retain_available: false,
                maximum_packet_size: NonZeroU32::new(1 << 20),
                assigned_client_id: Some(s("auto-7")),
                topic_alias_maximum: 16,
                reason_string: Some(s("welcome")),
                user: vec![(s("a"), s("b"))],
                wildcard_subscription_available: false,
                subscription_identifiers_available: false,
                shared_subscription_available: false,
                server_keep_alive: Some(120),
                response_information: Some(s("resp/7/")),
                server_reference: Some(s("other:1883")),
                auth_method: Some(s("SCRAM-SHA-1")),
                auth_data: Some(Bytes::from_static(b"server-final")),
            },
        })));
        out.push(Packet::ConnAckV5(Box::new(ConnAckV5 {
            session_present: false,
            reason: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            props: ConnAckProps {
                maximum_qos: QoS::AtMostOnce,
                ..ConnAckProps::default()
            },
        })));

        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            out.push(Packet::Publish(publish5(qos, None)));
            out.push(Packet::Publish(publish5(
                qos,
                Some(PublishProps {
                    topic_alias: NonZeroU16::new(3),
                    message_expiry: Some(60),
                    subscription_ids: vec![
                        NonZeroU32::new(1).unwrap(),
                        NonZeroU32::new(268_435_455).unwrap(),
                    ],
                    forward: forward(),
                }),
            )));
        }
        // An aliased publish with an empty topic; a publish with only forwarded ones.
        let mut p = publish5(
            QoS::AtLeastOnce,
            Some(PublishProps {
                topic_alias: NonZeroU16::new(1),
                ..PublishProps::default()
            }),
        );
        p.topic = s("");
        out.push(Packet::Publish(p));
        out.push(Packet::Publish(publish5(
            QoS::AtMostOnce,
            Some(PublishProps {
                forward: forward(),
                ..PublishProps::default()
            }),
        )));

        for (make, codes) in [
            (Packet::PubAckV5 as fn(Ack) -> Packet, 0x10),
            (Packet::PubRecV5, 0x97),
            (Packet::PubRelV5, 0x92),
            (Packet::PubCompV5, 0x92),
        ] {
            out.push(make(Ack::success(1)));
            out.push(make(Ack {
                reason: ReasonCode(codes),
                ..Ack::success(2)
            }));
            out.push(make(ack_full(u16::MAX, codes)));
            out.push(make(Ack {
                reason: ReasonCode::SUCCESS,
                ..ack_full(3, 0)
            }));
        }

        out.push(Packet::Subscribe(Subscribe {
            pkid: 9,
            filters: vec![
                SubscribeFilter {
                    filter: s("a/+/c"),
                    qos: QoS::AtMostOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::OnSubscribe,
                },
                SubscribeFilter {
                    filter: s("#"),
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::OnNewSubscription,
                },
                SubscribeFilter {
                    filter: s("$share/g/x"),
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: RetainHandling::Never,
                },
            ],
            id: NonZeroU32::new(12_345),
            user: vec![(s("u"), s("1"))],
        }));
        out.push(Packet::Subscribe(Subscribe {
            pkid: 10,
            filters: vec![SubscribeFilter {
                filter: s("t"),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            }],
            id: None,
            user: Vec::new(),
        }));
        out.push(Packet::SubAckV5(Box::new(SubAckV5 {
            pkid: 9,
            reasons: [
                0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
            ]
            .map(ReasonCode)
            .to_vec(),
            reason_string: Some(s("partly")),
            user: vec![(s("x"), s("y"))],
        })));
        out.push(Packet::SubAckV5(Box::new(SubAckV5 {
            pkid: 10,
            reasons: vec![ReasonCode::GRANTED_QOS_1],
            reason_string: None,
            user: Vec::new(),
        })));
        out.push(Packet::Unsubscribe(Unsubscribe {
            pkid: 11,
            filters: vec![s("a/b"), s("#")],
            user: vec![(s("why"), s("done"))],
        }));
        out.push(Packet::Unsubscribe(Unsubscribe {
            pkid: 12,
            filters: vec![s("a")],
            user: Vec::new(),
        }));
        out.push(Packet::UnsubAckV5(Box::new(UnsubAckV5 {
            pkid: 11,
            reasons: [0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91]
                .map(ReasonCode)
                .to_vec(),
            reason_string: Some(s("r")),
            user: Vec::new(),
        })));
        out.push(Packet::PingReq);
        out.push(Packet::PingResp);
        out.push(Packet::DisconnectV5(Box::new(DisconnectV5::new(
            ReasonCode::NORMAL_DISCONNECTION,
        ))));
        out.push(Packet::DisconnectV5(Box::new(DisconnectV5::new(
            ReasonCode::SESSION_TAKEN_OVER,
        ))));
        out.push(Packet::DisconnectV5(Box::new(DisconnectV5 {
            reason: ReasonCode::USE_ANOTHER_SERVER,
            session_expiry: Some(0),
            reason_string: Some(s("moving")),
            server_reference: Some(s("b:1883")),
            user: vec![(s("k"), s("v"))],
        })));
        out.push(Packet::Auth(Box::new(Auth {
            reason: ReasonCode::SUCCESS,
            method: None,
            data: None,
            reason_string: None,
            user: Vec::new(),
        })));
        out.push(Packet::Auth(Box::new(Auth {
            reason: ReasonCode::CONTINUE_AUTHENTICATION,
            method: None,
            data: None,
            reason_string: None,
            user: Vec::new(),
        })));
        out.push(Packet::Auth(Box::new(Auth {
            reason: ReasonCode::REAUTHENTICATE,
            method: Some(s("SCRAM-SHA-1")),
            data: Some(Bytes::from_static(b"\x01\x02")),
            reason_string: Some(s("again")),
            user: vec![(s("a"), s(""))],
        })));
        out
    }

    fn assert_round_trips(p: &Packet) {
        let bytes = encode5(p);
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            decode_with(&mut buf, &v5()),
            Ok(Some(p.clone())),
            "round trip of {p:?}"
        );
        assert!(buf.is_empty(), "{} left bytes behind", p.name());
    }

    // ---- round trips ----------------------------------------------------------------

    #[test]
    fn every_packet_type_round_trips_at_5_0() {
        let samples = samples();
        let mut seen: Vec<&str> = samples.iter().map(Packet::name).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 15, "samples must cover all 15 packet types");
        for p in &samples {
            assert_round_trips(p);
        }
    }

    #[test]
    fn every_prefix_of_a_5_0_packet_needs_more_bytes_and_leaves_buffer_untouched() {
        for p in samples() {
            let full = encode5(&p);
            for n in 0..full.len() {
                let mut buf = BytesMut::from(&full[..n]);
                assert_eq!(decode_with(&mut buf, &v5()), Ok(None), "{p:?} prefix {n}");
                assert_eq!(&buf[..], &full[..n]);
            }
        }
    }

    #[test]
    fn back_to_back_5_0_packets_decode_one_after_the_other() {
        let samples = samples();
        let mut buf = BytesMut::new();
        for p in &samples {
            p.encode_v5(&mut buf);
        }
        for p in &samples {
            assert_eq!(decode_with(&mut buf, &v5()), Ok(Some(p.clone())));
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn connect_at_level_5_decodes_without_the_v5_option() {
        // CONNECT's layout follows its own level; the option is for what follows it.
        let c = Packet::Connect(Box::new(connect5()));
        let mut buf = BytesMut::from(&encode5(&c)[..]);
        assert_eq!(decode_with(&mut buf, &DecodeOptions::new(MAX)), Ok(Some(c)));
    }

    // ---- short forms ----------------------------------------------------------------

    #[test]
    fn acks_are_written_in_their_shortest_form_and_every_form_is_read() {
        for (first, make) in [
            (0x40, Packet::PubAckV5 as fn(Ack) -> Packet),
            (0x50, Packet::PubRecV5),
            (0x62, Packet::PubRelV5),
            (0x70, Packet::PubCompV5),
        ] {
            let ok = make(Ack::success(5));
            assert_eq!(encode5(&ok), [first, 2, 0, 5]);
            assert_eq!(decode5_packet(&[first, 2, 0, 5]), ok);
            // The long forms of the same thing.
            assert_eq!(decode5_packet(&[first, 3, 0, 5, 0]), ok);
            assert_eq!(decode5_packet(&[first, 4, 0, 5, 0, 0]), ok);
            let code = if first >= 0x62 { 0x92 } else { 0x80 };
            let failed = make(Ack {
                reason: ReasonCode(code),
                ..Ack::success(5)
            });
            assert_eq!(encode5(&failed), [first, 3, 0, 5, code]);
            assert_eq!(decode5_packet(&[first, 3, 0, 5, code]), failed);
            let with_props = make(ack_full(5, code));
            assert!(encode5(&with_props)[1] > 4);
        }
    }

    #[test]
    fn the_3_1_1_acks_and_disconnect_are_the_5_0_success_forms() {
        for (p, v5) in [
            (Packet::PubAck(4), Packet::PubAckV5(Ack::success(4))),
            (Packet::PubRec(4), Packet::PubRecV5(Ack::success(4))),
            (Packet::PubRel(4), Packet::PubRelV5(Ack::success(4))),
            (Packet::PubComp(4), Packet::PubCompV5(Ack::success(4))),
            (
                Packet::Disconnect,
                Packet::DisconnectV5(Box::new(DisconnectV5::new(ReasonCode::SUCCESS))),
            ),
        ] {
            assert_eq!(encode5(&p), encode5(&v5));
            assert_eq!(decode5_packet(&encode5(&p)), v5);
        }
    }

    #[test]
    fn disconnect_and_auth_short_forms() {
        let normal = decode5_packet(&[0xE0, 0]);
        assert_eq!(
            normal,
            Packet::DisconnectV5(Box::new(DisconnectV5::new(ReasonCode(0))))
        );
        assert_eq!(encode5(&normal), [0xE0, 0]);
        let taken = Packet::DisconnectV5(Box::new(DisconnectV5::new(ReasonCode(0x8E))));
        assert_eq!(encode5(&taken), [0xE0, 1, 0x8E]);
        assert_eq!(decode5_packet(&[0xE0, 1, 0x8E]), taken);
        assert_eq!(decode5_packet(&[0xE0, 2, 0x8E, 0]), taken);
        let auth = decode5_packet(&[0xF0, 0]);
        assert!(matches!(&auth, Packet::Auth(a) if a.reason == ReasonCode::SUCCESS));
        assert_eq!(encode5(&auth), [0xF0, 0]);
        assert!(matches!(decode5_packet(&[0xF0, 1, 0x18]),
            Packet::Auth(a) if a.reason == ReasonCode::CONTINUE_AUTHENTICATION));
    }

    // ---- properties in every packet -------------------------------------------------

    /// One sample of every property, at a value other than its default.
    fn property_samples() -> Vec<Vec<Property>> {
        use properties::PayloadFormat;
        vec![
            vec![Property::PayloadFormatIndicator(PayloadFormat::Utf8)],
            vec![Property::MessageExpiryInterval(99)],
            vec![Property::ContentType(s("a/b"))],
            vec![Property::ResponseTopic(s("r"))],
            vec![Property::CorrelationData(Bytes::from_static(b"c"))],
            vec![Property::SubscriptionIdentifier(
                NonZeroU32::new(7).unwrap(),
            )],
            vec![Property::SessionExpiryInterval(10)],
            vec![Property::AssignedClientIdentifier(s("id"))],
            vec![Property::ServerKeepAlive(5)],
            vec![Property::AuthenticationMethod(s("m"))],
            // Data is only valid with a method.
            vec![
                Property::AuthenticationMethod(s("m")),
                Property::AuthenticationData(Bytes::from_static(b"d")),
            ],
            vec![Property::RequestProblemInformation(false)],
            vec![Property::WillDelayInterval(3)],
            vec![Property::RequestResponseInformation(true)],
            vec![Property::ResponseInformation(s("ri"))],
            vec![Property::ServerReference(s("sr"))],
            vec![Property::ReasonString(s("rs"))],
            vec![Property::ReceiveMaximum(NonZeroU16::new(9).unwrap())],
            vec![Property::TopicAliasMaximum(4)],
            vec![Property::TopicAlias(NonZeroU16::new(2).unwrap())],
            vec![Property::MaximumQoS(QoS::AtMostOnce)],
            vec![Property::RetainAvailable(false)],
            vec![Property::UserProperty(s("k"), s("v"))],
            vec![Property::MaximumPacketSize(NonZeroU32::new(100).unwrap())],
            vec![Property::WildcardSubscriptionAvailable(false)],
            vec![Property::SubscriptionIdentifierAvailable(false)],
            vec![Property::SharedSubscriptionAvailable(false)],
        ]
    }

    /// A minimal valid packet of `kind` with `props` (Property Length included) as its
    /// property list (for `Will`, the Will Properties of a CONNECT).
    fn packet_with(kind: PacketKind, props: &[u8]) -> Vec<u8> {
        let cat = |parts: &[&[u8]]| parts.concat();
        match kind {
            PacketKind::Connect => raw(
                0x10,
                &cat(&[&field(b"MQTT"), &[5, 0x02, 0, 60], props, &field(b"c")]),
            ),
            PacketKind::Will => raw(
                0x10,
                &cat(&[
                    &field(b"MQTT"),
                    &[5, 0x06, 0, 60, 0],
                    &field(b"c"),
                    props,
                    &field(b"w"),
                    &field(b"m"),
                ]),
            ),
            PacketKind::ConnAck => raw(0x20, &cat(&[&[0, 0], props])),
            PacketKind::Publish => raw(0x32, &cat(&[&field(b"t"), &[0, 1], props, b"p"])),
            PacketKind::PubAck => raw(0x40, &cat(&[&[0, 1, 0], props])),
            PacketKind::PubRec => raw(0x50, &cat(&[&[0, 1, 0], props])),
            PacketKind::PubRel => raw(0x62, &cat(&[&[0, 1, 0], props])),
            PacketKind::PubComp => raw(0x70, &cat(&[&[0, 1, 0], props])),
            PacketKind::Subscribe => raw(0x82, &cat(&[&[0, 1], props, &field(b"a"), &[1]])),
            PacketKind::SubAck => raw(0x90, &cat(&[&[0, 1], props, &[0]])),
            PacketKind::Unsubscribe => raw(0xA2, &cat(&[&[0, 1], props, &field(b"a")])),
            PacketKind::UnsubAck => raw(0xB0, &cat(&[&[0, 1], props, &[0]])),
            PacketKind::Disconnect => raw(0xE0, &cat(&[&[0], props])),
            PacketKind::Auth => raw(0xF0, &cat(&[&[0x18], props])),
        }
    }

    #[test]
    fn every_property_is_read_into_every_packet_that_allows_it_and_refused_elsewhere() {
        for kind in PacketKind::ALL {
            let bare = decode5_packet(&packet_with(kind, &[0]));
            for sample in property_samples() {
                let id = sample.last().unwrap().id();
                let bytes = packet_with(kind, &plist(sample.clone()));
                if id.allowed_in(kind) && sample.iter().all(|p| p.id().allowed_in(kind)) {
                    let p = decode5_packet(&bytes);
                    // The property was kept, not dropped: the packet differs from the
                    // bare one and survives a round trip.
                    assert_ne!(p, bare, "{id} in {kind} was lost");
                    assert_round_trips(&p);
                } else {
                    // The first property the packet does not allow is the one refused.
                    let id = sample
                        .iter()
                        .map(Property::id)
                        .find(|id| !id.allowed_in(kind))
                        .unwrap();
                    let e = decode5_err(&bytes);
                    assert_eq!(
                        e,
                        DecodeError::Property(PropertyError::NotAllowed { id, kind }),
                        "{id} in {kind}"
                    );
                    assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
                }
            }
        }
    }

    #[test]
    fn duplicate_non_repeatable_property_is_a_protocol_error_in_each_packet() {
        let cases: [(PacketKind, &[u8]); 6] = [
            (PacketKind::Connect, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]),
            (PacketKind::Will, &[0x18, 0, 0, 0, 1, 0x18, 0, 0, 0, 2]),
            (PacketKind::Publish, &[0x23, 0, 1, 0x23, 0, 2]),
            (
                PacketKind::Publish,
                &[0x03, 0, 1, b'a', 0x02, 0, 0, 0, 1, 0x03, 0, 0],
            ),
            (PacketKind::Subscribe, &[0x0B, 1, 0x0B, 2]),
            (PacketKind::PubAck, &[0x1F, 0, 0, 0x1F, 0, 0]),
        ];
        for (kind, body) in cases {
            let e = decode5_err(&packet_with(kind, &list(body)));
            assert!(
                matches!(e, DecodeError::Property(PropertyError::Duplicate { .. })),
                "{kind}: {e:?}"
            );
            assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
        }
        // Repeatable ones are fine: user properties anywhere, identifiers in PUBLISH.
        decode5_packet(&packet_with(
            PacketKind::Publish,
            &list(&[0x0B, 1, 0x0B, 2]),
        ));
    }

    #[test]
    fn property_length_past_the_packet_is_malformed() {
        for kind in PacketKind::ALL {
            // Property Length 9 with one 2-byte property, then the packet's own tail.
            let bytes = packet_with(kind, &[9, 0x26, 0]);
            let e = decode5_err(&bytes);
            assert!(
                matches!(
                    e,
                    DecodeError::Property(_) | DecodeError::Truncated | DecodeError::InvalidUtf8
                ),
                "{kind}: {e:?}"
            );
            assert_eq!(
                e.reason_code(),
                ReasonCode::MALFORMED_PACKET,
                "{kind}: {e:?}"
            );
        }
        // A Property Length running past the end of the packet, exactly.
        let e = decode5_err(&raw(0x40, &[0, 1, 0, 5, 0x1F, 0, 1, b'a']));
        assert_eq!(e, DecodeError::Property(PropertyError::Truncated));
    }

    #[test]
    fn bad_property_values_are_refused_with_their_reason_code() {
        let cases: [(PacketKind, &[u8], u8); 9] = [
            (PacketKind::Connect, &[0x21, 0, 0], 0x82), // Receive Maximum 0
            (PacketKind::Connect, &[0x27, 0, 0, 0, 0], 0x82), // Maximum Packet Size 0
            (PacketKind::ConnAck, &[0x21, 0, 0], 0x82),
            (PacketKind::ConnAck, &[0x24, 2], 0x82), // Maximum QoS 2
            (PacketKind::Publish, &[0x01, 2], 0x82), // Payload Format 2
            (PacketKind::Will, &[0x01, 2], 0x82),
            (PacketKind::Publish, &[0x23, 0, 0], 0x94), // Topic Alias 0
            (PacketKind::Subscribe, &[0x0B, 0], 0x82),  // Subscription Identifier 0
            (PacketKind::Connect, &[0x17, 2], 0x82),    // Request Problem Information 2
        ];
        for (kind, body, code) in cases {
            let e = decode5_err(&packet_with(kind, &list(body)));
            assert!(
                matches!(e, DecodeError::Property(PropertyError::InvalidValue { .. })),
                "{kind} {body:?}: {e:?}"
            );
            assert_eq!(e.reason_code(), ReasonCode(code), "{kind} {body:?}");
        }
    }

    #[test]
    fn authentication_data_without_method_is_a_protocol_error() {
        for kind in [PacketKind::Connect, PacketKind::ConnAck, PacketKind::Auth] {
            let e = decode5_err(&packet_with(kind, &list(&[0x16, 0, 1, 9])));
            assert_eq!(e, DecodeError::AuthDataWithoutMethod, "{kind}");
            assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
        }
    }

    // ---- reason codes ---------------------------------------------------------------

    #[test]
    fn a_reason_code_its_packet_may_not_carry_is_a_protocol_error() {
        type Shape = fn(u8) -> Vec<u8>;
        let shapes: [(PacketKind, Shape); 9] = [
            (PacketKind::ConnAck, |c| raw(0x20, &[0, c, 0])),
            (PacketKind::PubAck, |c| raw(0x40, &[0, 1, c])),
            (PacketKind::PubRec, |c| raw(0x50, &[0, 1, c])),
            (PacketKind::PubRel, |c| raw(0x62, &[0, 1, c, 0])),
            (PacketKind::PubComp, |c| raw(0x70, &[0, 1, c])),
            (PacketKind::SubAck, |c| raw(0x90, &[0, 1, 0, 0, c])),
            (PacketKind::UnsubAck, |c| raw(0xB0, &[0, 1, 0, c])),
            (PacketKind::Disconnect, |c| raw(0xE0, &[c])),
            (PacketKind::Auth, |c| raw(0xF0, &[c, 0])),
        ];
        for (kind, shape) in shapes {
            for code in 0..=u8::MAX {
                let got = decode5(&shape(code));
                if ReasonCode(code).valid_in(kind) {
                    assert!(matches!(got, Ok(Some(_))), "{code:#04x} in {kind}: {got:?}");
                } else {
                    assert_eq!(
                        got,
                        Err(DecodeError::InvalidReasonCode {
                            packet: kind.name(),
                            code
                        }),
                        "{code:#04x} in {kind}"
                    );
                    assert_eq!(got.unwrap_err().reason_code(), ReasonCode::PROTOCOL_ERROR);
                }
            }
        }
    }

    #[test]
    fn connack_with_reserved_flags_is_refused() {
        assert_eq!(
            decode5_err(&raw(0x20, &[0x02, 0, 0])),
            DecodeError::InvalidConnAckFlags(2)
        );
        assert_eq!(
            decode5_err(&raw(0x20, &[0, 0])),
            DecodeError::Property(PropertyError::Truncated)
        );
    }

    // ---- SUBSCRIBE options ----------------------------------------------------------

    fn subscribe_with(filter: &[u8], options: u8) -> Vec<u8> {
        raw(0x82, &[&[0, 1, 0][..], &field(filter), &[options]].concat())
    }

    #[test]
    fn subscription_options_are_read_bit_by_bit() {
        for options in 0..=0x3Fu8 {
            let qos = options & 3;
            let rh = (options >> 4) & 3;
            let got = decode5(&subscribe_with(b"a/b", options));
            if qos == 3 || rh == 3 {
                let e = got.unwrap_err();
                assert_eq!(e, DecodeError::InvalidSubscriptionOptions(options));
                assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
                continue;
            }
            let Ok(Some(Packet::Subscribe(s))) = got else {
                panic!("{options:#04x}: {got:?}");
            };
            let f = &s.filters[0];
            assert_eq!(f.qos as u8, qos);
            assert_eq!(f.no_local, options & 4 != 0);
            assert_eq!(f.retain_as_published, options & 8 != 0);
            assert_eq!(f.retain_handling as u8, rh);
        }
    }

    #[test]
    fn reserved_subscription_option_bits_are_malformed() {
        for options in [0x40, 0x80, 0xC1] {
            let e = decode5_err(&subscribe_with(b"a", options));
            assert_eq!(e, DecodeError::ReservedSubscriptionOptions(options));
            assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
        }
    }

    #[test]
    fn no_local_on_a_shared_subscription_is_a_protocol_error() {
        let e = decode5_err(&subscribe_with(b"$share/g/t", 0x04));
        assert_eq!(e, DecodeError::NoLocalOnSharedSubscription);
        assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
        assert!(decode5(&subscribe_with(b"$share/g/t", 0x01)).is_ok());
        assert!(decode5(&subscribe_with(b"$sharex/t", 0x04)).is_ok());
    }

    #[test]
    fn subscribe_options_stay_reserved_under_3_1_1() {
        let mut buf = BytesMut::from(&subscribe_with(b"a", 0x04)[..]);
        // Under 3.1.1 the byte after the packet id is the filter's length.
        assert!(decode_with(&mut buf, &DecodeOptions::new(MAX)).is_err());
    }

    // ---- PUBLISH --------------------------------------------------------------------

    #[test]
    fn forwarded_properties_are_a_slice_of_the_frame_when_contiguous() {
        let fwd = forward();
        let props = [&[0x23, 0, 4][..], &fwd, &[0x02, 0, 0, 0, 9]].concat();
        let bytes = raw(
            0x30,
            &[&field(b"t")[..], &list(&props), b"payload"].concat(),
        );
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let Ok(Some(Packet::Publish(p))) = decode_with(&mut buf, &v5()) else {
            panic!("expected a PUBLISH");
        };
        let props = p.props.expect("properties");
        assert_eq!(props.topic_alias, NonZeroU16::new(4));
        assert_eq!(props.message_expiry, Some(9));
        assert_eq!(props.forward, fwd);
        assert!(frame.contains(&(props.forward.as_ptr() as usize)));
        assert_eq!(&p.payload[..], b"payload");
        let users: Vec<_> = props
            .forwarded()
            .unwrap()
            .user_properties()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(users, [("b".into(), "2".into()), ("a".into(), "1".into())]);
    }

    #[test]
    fn interleaved_forwarded_properties_are_joined_in_arrival_order() {
        let a = plist(vec![Property::UserProperty(s("first"), s("1"))]);
        let b = plist(vec![Property::ContentType(s("text/plain"))]);
        // Strip the Property Length byte of each single-property list.
        let props = [&a[1..], &[0x23, 0, 4], &[0x0B, 5], &b[1..]].concat();
        let bytes = raw(0x30, &[&field(b"t")[..], &list(&props), b"x"].concat());
        let Packet::Publish(p) = decode5_packet(&bytes) else {
            panic!("expected a PUBLISH");
        };
        let props = p.props.expect("properties");
        assert_eq!(props.forward, [&a[1..], &b[1..]].concat());
        assert_eq!(props.subscription_ids, vec![NonZeroU32::new(5).unwrap()]);
    }

    #[test]
    fn publish_without_properties_costs_no_box_at_either_version() {
        let bytes = raw(0x30, &[&field(b"t")[..], &[0], b"x"].concat());
        let Packet::Publish(p) = decode5_packet(&bytes) else {
            panic!("expected a PUBLISH");
        };
        assert_eq!(p.props, None);
        assert_eq!(&p.payload[..], b"x");
        // The same bytes under 3.1.1: the 0 is the payload's first byte.
        let mut buf = BytesMut::from(&bytes[..]);
        let Ok(Some(Packet::Publish(p))) = decode_with(&mut buf, &DecodeOptions::new(MAX)) else {
            panic!("expected a PUBLISH");
        };
        assert_eq!((p.props, &p.payload[..]), (None, &b"\0x"[..]));
    }

    #[test]
    fn empty_topic_needs_a_topic_alias() {
        let no_alias = raw(0x30, &[&field(b"")[..], &[0], b"x"].concat());
        let e = decode5_err(&no_alias);
        assert_eq!(e, DecodeError::MissingTopicName);
        assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
        let only_expiry = raw(
            0x30,
            &[&field(b"")[..], &list(&[0x02, 0, 0, 0, 1])].concat(),
        );
        assert_eq!(decode5_err(&only_expiry), DecodeError::MissingTopicName);
        let aliased = raw(0x30, &[&field(b"")[..], &list(&[0x23, 0, 1])].concat());
        let Packet::Publish(p) = decode5_packet(&aliased) else {
            panic!("expected a PUBLISH");
        };
        assert!(p.topic.is_empty());
        // A topic with a wildcard is still refused, with Topic Name invalid.
        let wild = raw(0x30, &[&field(b"a/+")[..], &[0]].concat());
        assert_eq!(
            decode5_err(&wild).reason_code(),
            ReasonCode::TOPIC_NAME_INVALID
        );
    }

    #[test]
    fn encode_publish_v5_writes_the_per_subscriber_additions_and_the_shared_bytes() {
        let fwd = forward();
        let ids = [NonZeroU32::new(1).unwrap(), NonZeroU32::new(300).unwrap()];
        let props = PublishV5Props {
            topic_alias: NonZeroU16::new(9),
            message_expiry: Some(42),
            subscription_ids: &ids,
            forward: &fwd,
        };
        let mut out = BytesMut::new();
        encode_publish_v5(
            &mut out,
            "",
            b"data",
            QoS::ExactlyOnce,
            true,
            true,
            7,
            &props,
        );
        let Packet::Publish(p) = decode5_packet(&out) else {
            panic!("expected a PUBLISH");
        };
        assert_eq!(
            (p.dup, p.qos, p.retain, p.pkid),
            (true, QoS::ExactlyOnce, true, 7)
        );
        assert_eq!((&*p.topic, &p.payload[..]), ("", &b"data"[..]));
        let got = p.props.expect("properties");
        assert_eq!(
            *got,
            PublishProps {
                topic_alias: NonZeroU16::new(9),
                message_expiry: Some(42),
                subscription_ids: ids.to_vec(),
                forward: fwd,
            }
        );
        // With no properties at all: one Property Length byte of 0.
        out.clear();
        encode_publish_v5(
            &mut out,
            "t",
            b"p",
            QoS::AtMostOnce,
            false,
            true,
            1,
            &PublishV5Props::default(),
        );
        assert_eq!(&out[..], [0x30, 5, 0, 1, b't', 0, b'p']);
    }

    // ---- CONNECT --------------------------------------------------------------------

    fn connect_bytes(flags: u8, props: &[u8], payload: &[&[u8]]) -> Vec<u8> {
        let mut body = [&field(b"MQTT")[..], &[5, flags, 0, 60], props].concat();
        for f in payload {
            body.extend_from_slice(&field(f));
        }
        raw(0x10, &body)
    }

    #[test]
    fn connect_5_0_allows_password_without_username_and_an_empty_id_without_clean_start() {
        let Packet::Connect(c) = decode5_packet(&connect_bytes(0x40, &[0], &[b"", b"pw"])) else {
            panic!("expected a CONNECT");
        };
        assert_eq!(c.protocol, Protocol::V5);
        assert!(!c.clean_session);
        assert_eq!(
            (c.username, c.password.as_deref()),
            (None, Some(&b"pw"[..]))
        );
    }

    #[test]
    fn connect_5_0_keeps_the_3_1_1_flag_rules() {
        let e = decode5_err(&connect_bytes(0x03, &[0], &[b"c"]));
        assert_eq!(e, DecodeError::InvalidConnectFlags("reserved flag is set"));
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
        let mut fixed = connect_bytes(0x02, &[0], &[b"c"]);
        fixed[0] = 0x11;
        assert!(matches!(
            decode5_err(&fixed),
            DecodeError::InvalidFlags { .. }
        ));
        assert!(matches!(
            decode5_err(&connect_bytes(0x1E, &[0], &[b"c"])),
            DecodeError::InvalidConnectFlags(_)
        ));
    }

    #[test]
    fn will_properties_keep_the_forwarded_ones_as_wire_bytes() {
        let fwd = forward();
        let props = [&[0x18, 0, 0, 0, 5][..], &fwd].concat();
        let bytes = packet_with(PacketKind::Will, &list(&props));
        let Packet::Connect(c) = decode5_packet(&bytes) else {
            panic!("expected a CONNECT");
        };
        let w = c.will.expect("will");
        assert_eq!(w.props.delay_interval, 5);
        assert_eq!(w.props.forward, fwd);
        let p = w.props.publish_props().expect("publish properties");
        assert_eq!((p.message_expiry, &p.forward), (None, &fwd));
        // A will delay alone gives the will's PUBLISH no properties.
        let delay_only = WillProps {
            delay_interval: 5,
            ..WillProps::default()
        };
        assert_eq!(delay_only.publish_props(), None);
    }

    // ---- AUTH and version ---------------------------------------------------------

    #[test]
    fn auth_exists_only_at_5_0() {
        let mut buf = BytesMut::from(&[0xF0u8, 0][..]);
        assert_eq!(
            decode_with(&mut buf, &DecodeOptions::new(MAX)),
            Err(DecodeError::InvalidPacketType(15))
        );
        assert!(matches!(decode5_packet(&[0xF0, 0]), Packet::Auth(_)));
        assert_eq!(
            decode5_err(&[0xF1, 0]),
            DecodeError::InvalidFlags {
                packet: "AUTH",
                flags: 1
            }
        );
        // MQTT 3.1 flag leniency does not extend to AUTH at 3.1.1.
        let v31 = DecodeOptions {
            mqtt31: true,
            ..DecodeOptions::new(MAX)
        };
        assert!(decode_with(&mut BytesMut::from(&[0xF0u8, 0][..]), &v31).is_err());
    }

    #[test]
    fn a_5_0_connection_never_yields_the_3_1_1_ack_variants() {
        for bytes in [
            raw(0x20, &[0, 0, 0]),
            raw(0x40, &[0, 1]),
            raw(0x50, &[0, 1]),
            raw(0x62, &[0, 1]),
            raw(0x70, &[0, 1]),
            raw(0x90, &[0, 1, 0, 0]),
            raw(0xB0, &[0, 1, 0, 0]),
            raw(0xE0, &[]),
        ] {
            let p = decode5_packet(&bytes);
            assert!(
                !matches!(
                    p,
                    Packet::ConnAck(_)
                        | Packet::PubAck(_)
                        | Packet::PubRec(_)
                        | Packet::PubRel(_)
                        | Packet::PubComp(_)
                        | Packet::SubAck(_)
                        | Packet::UnsubAck(_)
                        | Packet::Disconnect
                ),
                "{p:?}"
            );
        }
    }

    #[test]
    fn zero_packet_identifier_is_refused_at_5_0() {
        for bytes in [
            raw(0x40, &[0, 0]),
            raw(0x90, &[0, 0, 0, 0]),
            raw(0xB0, &[0, 0, 0, 0]),
        ] {
            let e = decode5_err(&bytes);
            assert_eq!(e, DecodeError::ZeroPacketId);
            assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
        }
    }

    // ---- truncation -----------------------------------------------------------------

    #[test]
    fn a_body_cut_short_at_every_length_is_refused_or_a_shorter_valid_form() {
        // Representative packets; each cut keeps a correct Remaining Length, so the
        // decoder sees a complete but short packet.
        let reps: Vec<Packet> = samples()
            .into_iter()
            .filter(|p| {
                matches!(
                    p,
                    Packet::Connect(_)
                        | Packet::ConnAckV5(_)
                        | Packet::Publish(_)
                        | Packet::PubAckV5(_)
                        | Packet::Subscribe(_)
                        | Packet::DisconnectV5(_)
                        | Packet::Auth(_)
                )
            })
            .collect();
        for p in reps {
            let full = encode5(&p);
            let body = &full[full.len() - body_len(&full)..];
            for cut in 0..body.len() {
                let bytes = raw(full[0], &body[..cut]);
                match decode5(&bytes) {
                    Err(_) => {}
                    // Acks, DISCONNECT and AUTH have shorter forms; a PUBLISH payload
                    // may be cut anywhere, a SUBSCRIBE after any whole filter.
                    Ok(Some(q)) => assert!(
                        matches!(
                            q,
                            Packet::PubAckV5(_)
                                | Packet::DisconnectV5(_)
                                | Packet::Auth(_)
                                | Packet::Publish(_)
                                | Packet::Subscribe(_)
                        ),
                        "{p:?} cut at {cut} decoded as {q:?}"
                    ),
                    Ok(None) => panic!("{p:?} cut at {cut}: complete packet needs more"),
                }
            }
        }
    }

    /// The Remaining Length announced by a packet's fixed header.
    fn body_len(packet: &[u8]) -> usize {
        super::super::decode::read_remaining_length(&packet[1..])
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn peek_sees_level_5_only_in_a_complete_connect() {
        let bytes = encode5(&Packet::Connect(Box::new(connect5())));
        assert_eq!(peek_connect_level(&bytes, &v5()), Some(5));
        assert_eq!(peek_connect_level(&bytes[..bytes.len() - 1], &v5()), None);
    }

    #[test]
    fn mutated_5_0_packets_never_panic_and_what_decodes_round_trips() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let samples: Vec<Vec<u8>> = samples().iter().map(encode5).collect();
        for _ in 0..20_000 {
            let mut bytes = samples[(next() as usize) % samples.len()].clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % bytes.len();
                bytes[i] = next() as u8;
            }
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(p)) = decode_with(&mut buf, &v5()) {
                let again = encode5(&p);
                assert_eq!(decode5(&again), Ok(Some(p)), "{bytes:?}");
            }
        }
    }

    // ---- error mapping --------------------------------------------------------------

    #[test]
    fn decode_errors_map_to_the_reason_codes_the_server_sends() {
        let cases = [
            (DecodeError::PacketTooLarge { size: 2, max: 1 }, 0x95),
            (DecodeError::MalformedRemainingLength, 0x81),
            (DecodeError::Truncated, 0x81),
            (DecodeError::InvalidUtf8, 0x81),
            (DecodeError::InvalidQoS, 0x81),
            (DecodeError::UnsupportedProtocolLevel(6), 0x84),
            (DecodeError::InvalidProtocolName, 0x84),
            (DecodeError::IdentifierRejected, 0x85),
            (DecodeError::InvalidTopicName, 0x90),
            (DecodeError::TopicTooLong { len: 2, max: 1 }, 0x90),
            (DecodeError::EmptySubscribe, 0x82),
            (DecodeError::ZeroPacketId, 0x82),
            (
                DecodeError::Property(PropertyError::InvalidValue {
                    id: PropertyId::TopicAlias,
                    value: 0,
                }),
                0x94,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.reason_code(), ReasonCode(code), "{e}");
            // Every code fits the packets a server sends it in.
            assert!(
                e.reason_code().valid_in(PacketKind::Disconnect)
                    || e.reason_code().valid_in(PacketKind::ConnAck),
                "{e}"
            );
        }
    }
}

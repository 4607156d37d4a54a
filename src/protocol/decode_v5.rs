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
//! DISCONNECT, the Receive Maximum quota, and the order of an AUTH exchange.

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
        SUBACK => Packet::SubAckV5(reason_list(r, PacketKind::SubAck)?),
        UNSUBACK => Packet::UnsubAckV5(reason_list(r, PacketKind::UnsubAck)?),
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

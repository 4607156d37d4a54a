//! The MQTT 5.0 parts of encoding: property lists from the packets' typed fields, the
//! shortest allowed forms of the acks, DISCONNECT and AUTH (§3.4.2.1, §3.14.2.1,
//! §3.15.2.1), and [`encode_publish_v5`], the fan-out path of a 5.0 PUBLISH.
//!
//! Like the 3.1.1 encoder, this writes what it is given: reason codes, property values
//! and field combinations are not checked, so tests can build illegal packets.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::encode::{remaining_length_len, write_prefixed, write_remaining_length};
use super::packet::{
    Ack, Auth, ConnAckProps, ConnAckV5, ConnectProps, DisconnectV5, Packet, Publish, PublishProps,
    QoS, SubAckCode, SubAckV5, Subscribe, Unsubscribe, WillProps,
};
use super::properties::{self, Properties, Property, PropertyId};
use super::reason::ReasonCode;

/// What a 5.0 PUBLISH carries besides topic, payload and header: the per-subscriber
/// additions (alias, remaining expiry, matched subscription identifiers) and the
/// forwarded properties, shared by every subscriber as one byte range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishV5Props<'a> {
    /// Topic Alias to send; the topic may then be empty (an alias already mapped).
    pub topic_alias: Option<NonZeroU16>,
    /// Message Expiry Interval: the seconds that remain, when the message expires.
    pub message_expiry: Option<u32>,
    /// Subscription Identifiers of the subscriptions this delivery matched.
    pub subscription_ids: &'a [NonZeroU32],
    /// [`PublishProps::forward`] of the message, written unchanged.
    pub forward: &'a [u8],
}

impl<'a> PublishV5Props<'a> {
    /// The properties of a decoded PUBLISH, as they were.
    pub fn from_props(p: &'a PublishProps) -> PublishV5Props<'a> {
        PublishV5Props {
            topic_alias: p.topic_alias,
            message_expiry: p.message_expiry,
            subscription_ids: &p.subscription_ids,
            forward: &p.forward,
        }
    }

    /// Bytes of the properties, without the Property Length field.
    fn body_len(&self) -> usize {
        let alias = if self.topic_alias.is_some() { 3 } else { 0 };
        let expiry = if self.message_expiry.is_some() { 5 } else { 0 };
        let ids: usize = self
            .subscription_ids
            .iter()
            .map(|id| 1 + remaining_length_len(id.get() as usize))
            .sum();
        alias + expiry + ids + self.forward.len()
    }

    fn write(&self, out: &mut BytesMut, body_len: usize) {
        write_remaining_length(out, body_len);
        if let Some(alias) = self.topic_alias {
            out.put_u8(PropertyId::TopicAlias as u8);
            out.put_u16(alias.get());
        }
        if let Some(expiry) = self.message_expiry {
            out.put_u8(PropertyId::MessageExpiryInterval as u8);
            out.put_u32(expiry);
        }
        for id in self.subscription_ids {
            out.put_u8(PropertyId::SubscriptionIdentifier as u8);
            write_remaining_length(out, id.get() as usize);
        }
        out.put_slice(self.forward);
    }
}

fn publish_remaining_len(
    topic_len: usize,
    payload_len: usize,
    qos: QoS,
    props_len: usize,
) -> usize {
    let pkid = if qos == QoS::AtMostOnce { 0 } else { 2 };
    2 + topic_len + pkid + remaining_length_len(props_len) + props_len + payload_len
}

/// Writes a 5.0 PUBLISH straight into `out`, reserving the exact size once; the 5.0
/// counterpart of [`encode_publish`](super::encode_publish), which stays the 3.1.1
/// path. `topic` may be empty when `props.topic_alias` names one the receiver has
/// mapped. `pkid` and `dup` are treated as there.
///
/// # Panics
/// If `topic` is longer than 65535 bytes, a Subscription Identifier exceeds
/// 268,435,455, or the remaining length would exceed 268,435,455 bytes.
#[allow(clippy::too_many_arguments)]
pub fn encode_publish_v5(
    out: &mut BytesMut,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: u16,
    props: &PublishV5Props<'_>,
) {
    let body = props.body_len();
    let remaining = publish_remaining_len(topic.len(), payload.len(), qos, body);
    out.reserve(1 + remaining_length_len(remaining) + remaining);
    let dup = dup && qos != QoS::AtMostOnce;
    out.put_u8(0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain));
    write_remaining_length(out, remaining);
    write_prefixed(out, topic.as_bytes());
    if qos != QoS::AtMostOnce {
        out.put_u16(pkid);
    }
    props.write(out, body);
    out.put_slice(payload);
}

fn publish_props(p: &Publish) -> PublishV5Props<'_> {
    p.props
        .as_deref()
        .map(PublishV5Props::from_props)
        .unwrap_or_default()
}

/// Bytes of a Reason String and User Properties, without the Property Length.
fn reason_body_len(reason_string: &Option<ByteString>, user: &[(ByteString, ByteString)]) -> usize {
    let rs = reason_string.as_ref().map_or(0, |s| 3 + s.len());
    rs + user
        .iter()
        .map(|(k, v)| 5 + k.len() + v.len())
        .sum::<usize>()
}

fn write_reason_props(
    out: &mut BytesMut,
    body_len: usize,
    reason_string: &Option<ByteString>,
    user: &[(ByteString, ByteString)],
) {
    write_remaining_length(out, body_len);
    if let Some(s) = reason_string {
        out.put_u8(PropertyId::ReasonString as u8);
        write_prefixed(out, s.as_bytes());
    }
    for (k, v) in user {
        out.put_u8(PropertyId::UserProperty as u8);
        write_prefixed(out, k.as_bytes());
        write_prefixed(out, v.as_bytes());
    }
}

fn with_length(body: usize) -> usize {
    remaining_length_len(body) + body
}

fn push_user(list: &mut Properties, user: &[(ByteString, ByteString)]) {
    for (k, v) in user {
        list.push(Property::UserProperty(k.clone(), v.clone()));
    }
}

/// CONNECT's properties, leaving out those at their default value.
pub(super) fn connect_properties(c: &ConnectProps) -> Properties {
    let d = ConnectProps::default();
    let mut list = Properties::new();
    if c.session_expiry != d.session_expiry {
        list.push(Property::SessionExpiryInterval(c.session_expiry));
    }
    if c.receive_maximum != d.receive_maximum {
        list.push(Property::ReceiveMaximum(c.receive_maximum));
    }
    if let Some(v) = c.maximum_packet_size {
        list.push(Property::MaximumPacketSize(v));
    }
    if c.topic_alias_maximum != d.topic_alias_maximum {
        list.push(Property::TopicAliasMaximum(c.topic_alias_maximum));
    }
    if c.request_response_information != d.request_response_information {
        list.push(Property::RequestResponseInformation(
            c.request_response_information,
        ));
    }
    if c.request_problem_information != d.request_problem_information {
        list.push(Property::RequestProblemInformation(
            c.request_problem_information,
        ));
    }
    if let Some(v) = &c.auth_method {
        list.push(Property::AuthenticationMethod(v.clone()));
    }
    if let Some(v) = &c.auth_data {
        list.push(Property::AuthenticationData(v.clone()));
    }
    push_user(&mut list, &c.user);
    list
}

fn will_body_len(w: &WillProps) -> usize {
    let delay = if w.delay_interval != 0 { 5 } else { 0 };
    let expiry = if w.message_expiry.is_some() { 5 } else { 0 };
    delay + expiry + w.forward.len()
}

/// Bytes of the Will Properties, Property Length included.
pub(super) fn will_props_len(w: &WillProps) -> usize {
    with_length(will_body_len(w))
}

pub(super) fn write_will_props(out: &mut BytesMut, w: &WillProps) {
    write_remaining_length(out, will_body_len(w));
    if w.delay_interval != 0 {
        out.put_u8(PropertyId::WillDelayInterval as u8);
        out.put_u32(w.delay_interval);
    }
    if let Some(v) = w.message_expiry {
        out.put_u8(PropertyId::MessageExpiryInterval as u8);
        out.put_u32(v);
    }
    out.put_slice(&w.forward);
}

fn connack_properties(c: &ConnAckProps) -> Properties {
    let d = ConnAckProps::default();
    let mut list = Properties::new();
    if let Some(v) = c.session_expiry {
        list.push(Property::SessionExpiryInterval(v));
    }
    if c.receive_maximum != d.receive_maximum {
        list.push(Property::ReceiveMaximum(c.receive_maximum));
    }
    if c.maximum_qos != d.maximum_qos {
        list.push(Property::MaximumQoS(c.maximum_qos));
    }
    if c.retain_available != d.retain_available {
        list.push(Property::RetainAvailable(c.retain_available));
    }
    if let Some(v) = c.maximum_packet_size {
        list.push(Property::MaximumPacketSize(v));
    }
    if let Some(v) = &c.assigned_client_id {
        list.push(Property::AssignedClientIdentifier(v.clone()));
    }
    if c.topic_alias_maximum != d.topic_alias_maximum {
        list.push(Property::TopicAliasMaximum(c.topic_alias_maximum));
    }
    if let Some(v) = &c.reason_string {
        list.push(Property::ReasonString(v.clone()));
    }
    push_user(&mut list, &c.user);
    if c.wildcard_subscription_available != d.wildcard_subscription_available {
        list.push(Property::WildcardSubscriptionAvailable(
            c.wildcard_subscription_available,
        ));
    }
    if c.subscription_identifiers_available != d.subscription_identifiers_available {
        list.push(Property::SubscriptionIdentifierAvailable(
            c.subscription_identifiers_available,
        ));
    }
    if c.shared_subscription_available != d.shared_subscription_available {
        list.push(Property::SharedSubscriptionAvailable(
            c.shared_subscription_available,
        ));
    }
    if let Some(v) = c.server_keep_alive {
        list.push(Property::ServerKeepAlive(v));
    }
    if let Some(v) = &c.response_information {
        list.push(Property::ResponseInformation(v.clone()));
    }
    if let Some(v) = &c.server_reference {
        list.push(Property::ServerReference(v.clone()));
    }
    if let Some(v) = &c.auth_method {
        list.push(Property::AuthenticationMethod(v.clone()));
    }
    if let Some(v) = &c.auth_data {
        list.push(Property::AuthenticationData(v.clone()));
    }
    list
}

fn subscribe_properties(s: &Subscribe) -> Properties {
    let mut list = Properties::new();
    if let Some(id) = s.id {
        list.push(Property::SubscriptionIdentifier(id));
    }
    push_user(&mut list, &s.user);
    list
}

fn unsubscribe_properties(u: &Unsubscribe) -> Properties {
    let mut list = Properties::new();
    push_user(&mut list, &u.user);
    list
}

fn disconnect_properties(d: &DisconnectV5) -> Properties {
    let mut list = Properties::new();
    if let Some(v) = d.session_expiry {
        list.push(Property::SessionExpiryInterval(v));
    }
    if let Some(v) = &d.reason_string {
        list.push(Property::ReasonString(v.clone()));
    }
    if let Some(v) = &d.server_reference {
        list.push(Property::ServerReference(v.clone()));
    }
    push_user(&mut list, &d.user);
    list
}

fn auth_properties(a: &Auth) -> Properties {
    let mut list = Properties::new();
    if let Some(v) = &a.method {
        list.push(Property::AuthenticationMethod(v.clone()));
    }
    if let Some(v) = &a.data {
        list.push(Property::AuthenticationData(v.clone()));
    }
    if let Some(v) = &a.reason_string {
        list.push(Property::ReasonString(v.clone()));
    }
    push_user(&mut list, &a.user);
    list
}

/// Remaining length of an ack: 2 for Success without properties, 3 for another code
/// without properties, else code and properties (§3.4.2.1).
fn ack_remaining_len(a: &Ack) -> usize {
    let body = reason_body_len(&a.reason_string, &a.user);
    if body > 0 {
        3 + with_length(body)
    } else if a.reason != ReasonCode::SUCCESS {
        3
    } else {
        2
    }
}

fn encode_ack(out: &mut BytesMut, first: u8, a: &Ack) {
    let remaining = ack_remaining_len(a);
    super::encode::begin(out, first, remaining);
    out.put_u16(a.pkid);
    if remaining > 2 {
        out.put_u8(a.reason.0);
    }
    if remaining > 3 {
        let body = reason_body_len(&a.reason_string, &a.user);
        write_reason_props(out, body, &a.reason_string, &a.user);
    }
}

/// Remaining length of DISCONNECT or AUTH: 0 for code 0 without properties, 1 for
/// another code without properties, else code and properties.
fn coded_remaining_len(reason: ReasonCode, props: &Properties) -> usize {
    if !props.is_empty() {
        1 + properties::encoded_len(props)
    } else if reason != ReasonCode::SUCCESS {
        1
    } else {
        0
    }
}

fn encode_coded(out: &mut BytesMut, first: u8, reason: ReasonCode, props: &Properties) {
    let remaining = coded_remaining_len(reason, props);
    super::encode::begin(out, first, remaining);
    if remaining > 0 {
        out.put_u8(reason.0);
    }
    if remaining > 1 {
        properties::encode(props, out);
    }
}

fn reason_list_remaining_len(s: &SubAckV5) -> usize {
    2 + with_length(reason_body_len(&s.reason_string, &s.user)) + s.reasons.len()
}

fn encode_reason_list(out: &mut BytesMut, first: u8, s: &SubAckV5) {
    super::encode::begin(out, first, reason_list_remaining_len(s));
    out.put_u16(s.pkid);
    let body = reason_body_len(&s.reason_string, &s.user);
    write_reason_props(out, body, &s.reason_string, &s.user);
    for r in &s.reasons {
        out.put_u8(r.0);
    }
}

fn connack_remaining_len(c: &ConnAckV5) -> usize {
    2 + properties::encoded_len(&connack_properties(&c.props))
}

fn encode_connack(out: &mut BytesMut, c: &ConnAckV5) {
    let props = connack_properties(&c.props);
    super::encode::begin(out, 0x20, 2 + properties::encoded_len(&props));
    out.put_u8(u8::from(c.session_present));
    out.put_u8(c.reason.0);
    properties::encode(&props, out);
}

fn subscribe_remaining_len(s: &Subscribe) -> usize {
    2 + properties::encoded_len(&subscribe_properties(s))
        + s.filters
            .iter()
            .map(|f| 2 + f.filter.len() + 1)
            .sum::<usize>()
}

fn encode_subscribe(out: &mut BytesMut, s: &Subscribe) {
    super::encode::begin(out, 0x82, subscribe_remaining_len(s));
    out.put_u16(s.pkid);
    properties::encode(&subscribe_properties(s), out);
    for f in &s.filters {
        write_prefixed(out, f.filter.as_bytes());
        out.put_u8(
            f.qos as u8
                | u8::from(f.no_local) << 2
                | u8::from(f.retain_as_published) << 3
                | (f.retain_handling as u8) << 4,
        );
    }
}

fn unsubscribe_remaining_len(u: &Unsubscribe) -> usize {
    2 + properties::encoded_len(&unsubscribe_properties(u))
        + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>()
}

fn encode_unsubscribe(out: &mut BytesMut, u: &Unsubscribe) {
    super::encode::begin(out, 0xA2, unsubscribe_remaining_len(u));
    out.put_u16(u.pkid);
    properties::encode(&unsubscribe_properties(u), out);
    for f in &u.filters {
        write_prefixed(out, f.as_bytes());
    }
}

/// Remaining length of the 5.0 form of `p`, for the packets whose 5.0 form differs
/// from the 3.1.1 one (a 3.1.1 `ConnAck` or `SubAck` is written as the 5.0 packet with
/// the same meaning); `None` for the others (CONNECT follows its own protocol field;
/// the pings and the other 3.1.1 variants have one layout).
pub(super) fn remaining_len(p: &Packet) -> Option<usize> {
    Some(match p {
        Packet::Publish(p) => {
            let body = publish_props(p).body_len();
            publish_remaining_len(p.topic.len(), p.payload.len(), p.qos, body)
        }
        Packet::Subscribe(s) => subscribe_remaining_len(s),
        Packet::Unsubscribe(u) => unsubscribe_remaining_len(u),
        // Flags, the code's 5.0 meaning, an empty property list.
        Packet::ConnAck(_) => 3,
        // Packet id, an empty property list, the codes (all valid 5.0 SUBACK codes).
        Packet::SubAck(s) => 3 + s.codes.len(),
        _ => return only_v5_remaining_len(p),
    })
}

/// Remaining length of the variants that exist only in 5.0; `None` for the others.
pub(super) fn only_v5_remaining_len(p: &Packet) -> Option<usize> {
    Some(match p {
        Packet::ConnAckV5(c) => connack_remaining_len(c),
        Packet::PubAckV5(a) | Packet::PubRecV5(a) | Packet::PubRelV5(a) | Packet::PubCompV5(a) => {
            ack_remaining_len(a)
        }
        Packet::SubAckV5(s) | Packet::UnsubAckV5(s) => reason_list_remaining_len(s),
        Packet::DisconnectV5(d) => coded_remaining_len(d.reason, &disconnect_properties(d)),
        Packet::Auth(a) => coded_remaining_len(a.reason, &auth_properties(a)),
        _ => return None,
    })
}

/// Writes the 5.0 form of `p` if it has its own (see [`remaining_len`]); false if not.
pub(super) fn encode(p: &Packet, out: &mut BytesMut) -> bool {
    match p {
        Packet::Publish(p) => encode_publish_v5(
            out,
            &p.topic,
            &p.payload,
            p.qos,
            p.retain,
            p.dup,
            p.pkid,
            &publish_props(p),
        ),
        Packet::Subscribe(s) => encode_subscribe(out, s),
        Packet::Unsubscribe(u) => encode_unsubscribe(out, u),
        Packet::ConnAck(c) => {
            let code = ReasonCode::from(c.code);
            super::encode::begin(out, 0x20, 3);
            out.put_slice(&[u8::from(c.session_present), code.0, 0]);
        }
        Packet::SubAck(s) => {
            super::encode::begin(out, 0x90, 3 + s.codes.len());
            out.put_u16(s.pkid);
            out.put_u8(0);
            for code in &s.codes {
                out.put_u8(match code {
                    SubAckCode::Granted(q) => *q as u8,
                    SubAckCode::Failure => ReasonCode::UNSPECIFIED_ERROR.0,
                });
            }
        }
        _ => return encode_only_v5(p, out),
    }
    true
}

/// Writes the variants that exist only in 5.0; false for the others.
pub(super) fn encode_only_v5(p: &Packet, out: &mut BytesMut) -> bool {
    match p {
        Packet::ConnAckV5(c) => encode_connack(out, c),
        Packet::PubAckV5(a) => encode_ack(out, 0x40, a),
        Packet::PubRecV5(a) => encode_ack(out, 0x50, a),
        Packet::PubRelV5(a) => encode_ack(out, 0x62, a),
        Packet::PubCompV5(a) => encode_ack(out, 0x70, a),
        Packet::SubAckV5(s) => encode_reason_list(out, 0x90, s),
        Packet::UnsubAckV5(s) => encode_reason_list(out, 0xB0, s),
        Packet::DisconnectV5(d) => encode_coded(out, 0xE0, d.reason, &disconnect_properties(d)),
        Packet::Auth(a) => encode_coded(out, 0xF0, a.reason, &auth_properties(a)),
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::packet::{Connect, RetainHandling, SubscribeFilter};
    use super::super::Protocol;
    use super::*;
    use bytes::Bytes;

    fn bytes_v5(p: &Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        p.encode_v5(&mut out);
        assert_eq!(out.len(), super::super::encoded_len_v5(p));
        out.to_vec()
    }

    #[test]
    fn connect_5_0_layout_has_properties_after_keep_alive_and_before_the_will() {
        let mut c = Connect {
            protocol: Protocol::V5,
            bridge: false,
            clean_session: true,
            keep_alive: 60,
            client_id: ByteString::from_static("c"),
            will: None,
            username: None,
            password: None,
            props: ConnectProps::default(),
        };
        let minimal = [
            0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b'c',
        ];
        assert_eq!(bytes_v5(&Packet::Connect(Box::new(c.clone()))), minimal);
        // encode follows the protocol field too.
        let mut out = BytesMut::new();
        Packet::Connect(Box::new(c.clone())).encode(&mut out);
        assert_eq!(&out[..], minimal);
        c.props.session_expiry = 0x0102_0304;
        c.will = Some(super::super::LastWill {
            topic: ByteString::from_static("w"),
            payload: Bytes::from_static(b"m"),
            qos: QoS::AtMostOnce,
            retain: false,
            props: WillProps {
                delay_interval: 7,
                message_expiry: None,
                forward: Bytes::new(),
            },
        });
        let wire = bytes_v5(&Packet::Connect(Box::new(c)));
        assert_eq!(
            &wire[12..],
            [
                5, 0x11, 1, 2, 3, 4, // properties
                0, 1, b'c', // client id
                5, 0x18, 0, 0, 0, 7, // will properties
                0, 1, b'w', 0, 1, b'm'
            ]
        );
        assert_eq!(wire[9], 0x06);
    }

    #[test]
    fn subscribe_options_byte_and_suback_layout() {
        let s = Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![SubscribeFilter {
                filter: ByteString::from_static("a"),
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::Never,
            }],
            id: NonZeroU32::new(128),
            user: Vec::new(),
        });
        assert_eq!(
            bytes_v5(&s),
            [0x82, 10, 0, 1, 3, 0x0B, 0x80, 0x01, 0, 1, b'a', 0x2E]
        );
        // The 3.1.1 encoder writes the requested QoS alone, as before.
        let mut out = BytesMut::new();
        s.encode(&mut out);
        assert_eq!(&out[..], [0x82, 6, 0, 1, 0, 1, b'a', 2]);
        let a = Packet::SubAckV5(Box::new(SubAckV5 {
            pkid: 1,
            reasons: vec![ReasonCode::GRANTED_QOS_2, ReasonCode::NOT_AUTHORIZED],
            reason_string: None,
            user: Vec::new(),
        }));
        assert_eq!(bytes_v5(&a), [0x90, 5, 0, 1, 0, 2, 0x87]);
    }

    #[test]
    fn a_3_1_1_connack_or_suback_is_written_as_the_5_0_packet_with_its_meaning() {
        use super::super::packet::{ConnAck, ConnectReturnCode, SubAck};
        let c = Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::BadUsernameOrPassword,
        });
        assert_eq!(bytes_v5(&c), [0x20, 3, 0, 0x86, 0]);
        let a = Packet::SubAck(SubAck {
            pkid: 2,
            codes: vec![SubAckCode::Granted(QoS::AtLeastOnce), SubAckCode::Failure],
        });
        assert_eq!(bytes_v5(&a), [0x90, 5, 0, 2, 0, 1, 0x80]);
    }

    #[test]
    fn connack_leaves_default_properties_out() {
        let c = Packet::ConnAckV5(Box::new(ConnAckV5 {
            session_present: true,
            reason: ReasonCode::SUCCESS,
            props: ConnAckProps::default(),
        }));
        assert_eq!(bytes_v5(&c), [0x20, 3, 1, 0, 0]);
        let c = Packet::ConnAckV5(Box::new(ConnAckV5 {
            session_present: false,
            reason: ReasonCode::SUCCESS,
            props: ConnAckProps {
                maximum_qos: QoS::AtLeastOnce,
                topic_alias_maximum: 10,
                ..ConnAckProps::default()
            },
        }));
        assert_eq!(bytes_v5(&c), [0x20, 8, 0, 0, 5, 0x24, 1, 0x22, 0, 10]);
    }
}

//! Encoding packets into a write buffer.
//!
//! [`Packet::encode`] writes any packet in its 3.1.1 form (the 5.0-only variants in
//! their one form, CONNECT as its protocol field says); [`Packet::encode_v5`] writes
//! the 5.0 form of PUBLISH, SUBSCRIBE and UNSUBSCRIBE too, and of the 3.1.1 acks
//! that have a 5.0 meaning. [`encode_publish`] is the
//! 3.1.1 fan-out hot path,
//! writing a PUBLISH from borrowed parts straight into a connection's buffer without
//! building a [`Publish`](super::Publish) first. Both reserve the exact size once and
//! never allocate otherwise.
//!
//! The encoder writes what it is given: it does not validate topic names, packet
//! identifiers or CONNECT flag combinations, so tests and the load generator can
//! produce illegal packets on purpose. The one exception is a PUBLISH with QoS 0,
//! whose DUP bit is always written as 0 [MQTT-3.3.1-2].

use bytes::{BufMut, BytesMut};

use super::encode_v5;
use super::packet::{Connect, Packet, Protocol, QoS, SubAck, SubAckCode, Subscribe, Unsubscribe};
use super::properties;

/// Largest value the four-byte remaining-length field can hold (§2.2.3).
pub(crate) const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Number of bytes the remaining-length field takes for `len`.
pub(crate) fn remaining_length_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends the variable-length encoding of `len` (§2.2.3).
///
/// # Panics
/// If `len` exceeds [`MAX_REMAINING_LENGTH`]; no packet decoded from the network can
/// be re-encoded larger than it arrived, so this is a programming error.
pub(crate) fn write_remaining_length(out: &mut BytesMut, len: usize) {
    assert!(
        len <= MAX_REMAINING_LENGTH,
        "MQTT remaining length {len} exceeds {MAX_REMAINING_LENGTH}"
    );
    let mut field = [0u8; 4];
    let mut n = 0;
    let mut x = len;
    for slot in field.iter_mut() {
        let mut byte = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            byte |= 0x80;
        }
        *slot = byte;
        n += 1;
        if x == 0 {
            break;
        }
    }
    out.put_slice(&field[..n]);
}

/// Appends a 16-bit length prefix and `bytes` (a UTF-8 string or binary data field).
///
/// # Panics
/// If `bytes` is longer than 65535 bytes (it cannot be represented on the wire).
pub(super) fn write_prefixed(out: &mut BytesMut, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or_else(|_| {
        panic!(
            "MQTT string or binary field of {} bytes exceeds 65535",
            bytes.len()
        )
    });
    out.put_u16(len);
    out.put_slice(bytes);
}

fn publish_remaining_len(topic_len: usize, payload_len: usize, qos: QoS) -> usize {
    let pkid = if qos == QoS::AtMostOnce { 0 } else { 2 };
    2 + topic_len + pkid + payload_len
}

/// Writes a PUBLISH straight into `out` (the fan-out hot path): reserves the exact size
/// once and copies `topic` and `payload` in, with no other allocation.
///
/// `pkid` is ignored for QoS 0 (the field is absent), as is `dup`, which the spec
/// requires to be 0 for QoS 0 [MQTT-3.3.1-2]. For QoS 1 and 2 `pkid` should be non-zero
/// [MQTT-2.3.1-1]; 0 is written as given.
///
/// # Panics
/// If `topic` is longer than 65535 bytes or the packet's remaining length would exceed
/// 268,435,455 bytes; neither can happen for a topic and payload taken from a decoded
/// packet.
pub fn encode_publish(
    out: &mut BytesMut,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: u16,
) {
    let remaining = publish_remaining_len(topic.len(), payload.len(), qos);
    out.reserve(1 + remaining_length_len(remaining) + remaining);
    let dup = dup && qos != QoS::AtMostOnce;
    out.put_u8(0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain));
    write_remaining_length(out, remaining);
    write_prefixed(out, topic.as_bytes());
    if qos != QoS::AtMostOnce {
        out.put_u16(pkid);
    }
    out.put_slice(payload);
}

fn protocol_name_and_level(protocol: Protocol) -> (&'static [u8], u8) {
    match protocol {
        Protocol::V31 => (b"MQIsdp", 3),
        Protocol::V311 => (b"MQTT", 4),
        Protocol::V5 => (b"MQTT", 5),
    }
}

fn connect_remaining_len(c: &Connect) -> usize {
    let (name, _) = protocol_name_and_level(c.protocol);
    // name, level, flags, keep-alive, client id
    let mut len = 2 + name.len() + 1 + 1 + 2 + 2 + c.client_id.len();
    if let Some(will) = &c.will {
        len += 2 + will.topic.len() + 2 + will.payload.len();
    }
    if c.protocol == Protocol::V5 {
        len += properties::encoded_len(&encode_v5::connect_properties(&c.props));
        if let Some(will) = &c.will {
            len += encode_v5::will_props_len(&will.props);
        }
    }
    if let Some(username) = &c.username {
        len += 2 + username.len();
    }
    if let Some(password) = &c.password {
        len += 2 + password.len();
    }
    len
}

fn subscribe_remaining_len(s: &Subscribe) -> usize {
    2 + s
        .filters
        .iter()
        .map(|f| 2 + f.filter.len() + 1)
        .sum::<usize>()
}

fn unsubscribe_remaining_len(u: &Unsubscribe) -> usize {
    2 + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>()
}

/// Remaining length (everything after the fixed header) of `p`.
fn remaining_len(p: &Packet) -> usize {
    match p {
        Packet::Connect(c) => connect_remaining_len(c),
        Packet::ConnAck(_) => 2,
        Packet::Publish(p) => publish_remaining_len(p.topic.len(), p.payload.len(), p.qos),
        Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::UnsubAck(_) => 2,
        Packet::Subscribe(s) => subscribe_remaining_len(s),
        Packet::SubAck(s) => 2 + s.codes.len(),
        Packet::Unsubscribe(u) => unsubscribe_remaining_len(u),
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
        Packet::ConnAckV5(_)
        | Packet::PubAckV5(_)
        | Packet::PubRecV5(_)
        | Packet::PubRelV5(_)
        | Packet::PubCompV5(_)
        | Packet::SubAckV5(_)
        | Packet::UnsubAckV5(_)
        | Packet::DisconnectV5(_)
        | Packet::Auth(_) => encode_v5::only_v5_remaining_len(p).unwrap_or(0),
    }
}

/// Total number of bytes `p` takes on the wire, fixed header included, as
/// [`Packet::encode`] writes it; lets the caller size buffers or enforce a client's
/// maximum packet size before encoding.
pub fn encoded_len(p: &Packet) -> usize {
    let remaining = remaining_len(p);
    1 + remaining_length_len(remaining) + remaining
}

/// Total number of bytes `p` takes on the wire as [`Packet::encode_v5`] writes it.
pub fn encoded_len_v5(p: &Packet) -> usize {
    let remaining = encode_v5::remaining_len(p).unwrap_or_else(|| remaining_len(p));
    1 + remaining_length_len(remaining) + remaining
}

impl Packet {
    /// Appends the wire bytes of this packet to `out`, reserving the exact size once:
    /// the 3.1.1 layout for the packets both revisions share, except CONNECT, whose
    /// layout follows its `protocol`; the 5.0-only variants in their 5.0 layout.
    ///
    /// # Panics
    /// If a string or binary field is longer than 65535 bytes or the remaining length
    /// exceeds 268,435,455 bytes (not representable on the wire; impossible for fields
    /// taken from decoded packets).
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Packet::Publish(p) => {
                encode_publish(out, &p.topic, &p.payload, p.qos, p.retain, p.dup, p.pkid)
            }
            Packet::Connect(c) => encode_connect(out, c),
            Packet::ConnAck(c) => {
                put_fixed(out, [0x20, 2, u8::from(c.session_present), c.code as u8])
            }
            Packet::PubAck(id) => encode_ack(out, 0x40, *id),
            Packet::PubRec(id) => encode_ack(out, 0x50, *id),
            Packet::PubRel(id) => encode_ack(out, 0x62, *id),
            Packet::PubComp(id) => encode_ack(out, 0x70, *id),
            Packet::Subscribe(s) => encode_subscribe(out, s),
            Packet::SubAck(s) => encode_suback(out, s),
            Packet::Unsubscribe(u) => encode_unsubscribe(out, u),
            Packet::UnsubAck(id) => encode_ack(out, 0xB0, *id),
            Packet::PingReq => put_fixed(out, [0xC0, 0]),
            Packet::PingResp => put_fixed(out, [0xD0, 0]),
            Packet::Disconnect => put_fixed(out, [0xE0, 0]),
            Packet::ConnAckV5(_)
            | Packet::PubAckV5(_)
            | Packet::PubRecV5(_)
            | Packet::PubRelV5(_)
            | Packet::PubCompV5(_)
            | Packet::SubAckV5(_)
            | Packet::UnsubAckV5(_)
            | Packet::DisconnectV5(_)
            | Packet::Auth(_) => {
                encode_v5::encode_only_v5(self, out);
            }
        }
    }

    /// Appends the MQTT 5.0 wire bytes of this packet to `out`: PUBLISH (with its
    /// `props`), SUBSCRIBE and UNSUBSCRIBE in their 5.0 layout, everything else as
    /// [`Packet::encode`] writes it. Among the 3.1.1 variants, `PubAck`, `PubRec`,
    /// `PubRel`, `PubComp` and `Disconnect` come out as the short 5.0 forms meaning
    /// Success (§3.4.2.1, §3.14.2.1), and `ConnAck` and `SubAck` as the 5.0 packets
    /// with the same meaning (the return code's reason code, no properties), so a 5.0
    /// connection may be sent those; `UnsubAck(u16)` has no 5.0 reading (5.0 needs a
    /// reason code per filter) and must not be.
    ///
    /// # Panics
    /// As [`Packet::encode`].
    pub fn encode_v5(&self, out: &mut BytesMut) {
        if !encode_v5::encode(self, out) {
            self.encode(out);
        }
    }

    /// [`Packet::encode_v5`] for a receiver whose Maximum Packet Size is `max` (0: no
    /// maximum): a packet that would be larger goes without its Reason String and
    /// User Properties, which may not make a packet too large (§3.1.2.11.4). PUBLISH
    /// sizes are the sender's to check, before it gets here.
    pub fn encode_v5_within(&self, out: &mut BytesMut, max: u32) {
        let start = out.len();
        self.encode_v5(out);
        if max == 0 || out.len() - start <= max as usize {
            return;
        }
        let mut bare = self.clone();
        match &mut bare {
            Packet::PubAckV5(a)
            | Packet::PubRecV5(a)
            | Packet::PubRelV5(a)
            | Packet::PubCompV5(a) => {
                a.reason_string = None;
                a.user.clear();
            }
            Packet::SubAckV5(a) | Packet::UnsubAckV5(a) => {
                a.reason_string = None;
                a.user.clear();
            }
            Packet::DisconnectV5(d) => {
                d.reason_string = None;
                d.user.clear();
            }
            Packet::ConnAckV5(c) => {
                c.props.reason_string = None;
                c.props.user.clear();
            }
            Packet::Auth(a) => {
                a.reason_string = None;
                a.user.clear();
            }
            _ => return,
        }
        out.truncate(start);
        bare.encode_v5(out);
    }
}

/// A packet whose wire form is a handful of known bytes.
fn put_fixed<const N: usize>(out: &mut BytesMut, bytes: [u8; N]) {
    out.reserve(N);
    out.put_slice(&bytes);
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP and UNSUBACK: first byte, length 2, packet id.
fn encode_ack(out: &mut BytesMut, first: u8, pkid: u16) {
    let [hi, lo] = pkid.to_be_bytes();
    put_fixed(out, [first, 2, hi, lo]);
}

/// Writes the first byte and remaining length of a variable-size packet, reserving
/// room for the whole packet so the body that follows never reallocates.
pub(super) fn begin(out: &mut BytesMut, first: u8, remaining: usize) {
    out.reserve(1 + remaining_length_len(remaining) + remaining);
    out.put_u8(first);
    write_remaining_length(out, remaining);
}

fn encode_connect(out: &mut BytesMut, c: &Connect) {
    begin(out, 0x10, connect_remaining_len(c));
    let (name, level) = protocol_name_and_level(c.protocol);
    write_prefixed(out, name);
    out.put_u8(if c.bridge { level | 0x80 } else { level });
    let mut flags = 0u8;
    if c.clean_session {
        flags |= 0x02;
    }
    if let Some(will) = &c.will {
        flags |= 0x04 | ((will.qos as u8) << 3);
        if will.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    let v5 = c.protocol == Protocol::V5;
    if v5 {
        properties::encode(&encode_v5::connect_properties(&c.props), out);
    }
    write_prefixed(out, c.client_id.as_bytes());
    if let Some(will) = &c.will {
        if v5 {
            encode_v5::write_will_props(out, &will.props);
        }
        write_prefixed(out, will.topic.as_bytes());
        write_prefixed(out, &will.payload);
    }
    if let Some(username) = &c.username {
        write_prefixed(out, username.as_bytes());
    }
    if let Some(password) = &c.password {
        write_prefixed(out, password);
    }
}

fn encode_subscribe(out: &mut BytesMut, s: &Subscribe) {
    begin(out, 0x82, subscribe_remaining_len(s));
    out.put_u16(s.pkid);
    for f in &s.filters {
        write_prefixed(out, f.filter.as_bytes());
        out.put_u8(f.qos as u8);
    }
}

fn encode_suback(out: &mut BytesMut, s: &SubAck) {
    begin(out, 0x90, 2 + s.codes.len());
    out.put_u16(s.pkid);
    for code in &s.codes {
        out.put_u8(match code {
            SubAckCode::Granted(q) => *q as u8,
            SubAckCode::Failure => 0x80,
        });
    }
}

fn encode_unsubscribe(out: &mut BytesMut, u: &Unsubscribe) {
    begin(out, 0xA2, unsubscribe_remaining_len(u));
    out.put_u16(u.pkid);
    for f in &u.filters {
        write_prefixed(out, f.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::packet::{ConnAck, ConnectReturnCode, LastWill, Publish, SubscribeFilter};
    use bytes::Bytes;
    use bytestring::ByteString;

    fn bytes_of(p: &Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        p.encode(&mut out);
        assert_eq!(out.len(), encoded_len(p), "encoded_len disagrees for {p:?}");
        out.to_vec()
    }

    #[test]
    fn remaining_length_field_has_minimal_width_at_each_boundary() {
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
            let mut out = BytesMut::new();
            write_remaining_length(&mut out, len);
            assert_eq!(out.len(), width, "width of {len}");
            assert_eq!(remaining_length_len(len), width);
        }
    }

    #[test]
    fn remaining_length_matches_spec_examples() {
        // §2.2.3, Table 2.4: lowest and highest value of each width.
        let cases: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (len, expected) in cases {
            let mut out = BytesMut::new();
            write_remaining_length(&mut out, len);
            assert_eq!(&out[..], expected, "encoding of {len}");
        }
    }

    #[test]
    #[should_panic(expected = "exceeds")]
    fn remaining_length_beyond_protocol_maximum_is_a_programming_error() {
        write_remaining_length(&mut BytesMut::new(), MAX_REMAINING_LENGTH + 1);
    }

    #[test]
    fn fixed_size_packets_have_exact_wire_bytes() {
        assert_eq!(bytes_of(&Packet::PubAck(0x1234)), [0x40, 2, 0x12, 0x34]);
        assert_eq!(bytes_of(&Packet::PubRec(1)), [0x50, 2, 0, 1]);
        assert_eq!(bytes_of(&Packet::PubRel(1)), [0x62, 2, 0, 1]);
        assert_eq!(bytes_of(&Packet::PubComp(1)), [0x70, 2, 0, 1]);
        assert_eq!(bytes_of(&Packet::UnsubAck(7)), [0xB0, 2, 0, 7]);
        assert_eq!(bytes_of(&Packet::PingReq), [0xC0, 0]);
        assert_eq!(bytes_of(&Packet::PingResp), [0xD0, 0]);
        assert_eq!(bytes_of(&Packet::Disconnect), [0xE0, 0]);
        assert_eq!(
            bytes_of(&Packet::ConnAck(ConnAck {
                session_present: true,
                code: ConnectReturnCode::Accepted
            })),
            [0x20, 2, 1, 0]
        );
        assert_eq!(
            bytes_of(&Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::NotAuthorized
            })),
            [0x20, 2, 0, 5]
        );
    }

    #[test]
    fn connect_uses_protocol_name_and_level_of_its_revision() {
        let mut c = Connect {
            props: Default::default(),
            protocol: Protocol::V311,
            bridge: false,
            clean_session: true,
            keep_alive: 60,
            client_id: ByteString::from_static("c"),
            will: None,
            username: None,
            password: None,
        };
        assert_eq!(
            bytes_of(&Packet::Connect(Box::new(c.clone()))),
            [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c']
        );
        c.protocol = Protocol::V31;
        assert_eq!(
            bytes_of(&Packet::Connect(Box::new(c))),
            [0x10, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'c']
        );
    }

    #[test]
    fn connect_flags_reflect_will_username_and_password() {
        let c = Connect {
            props: Default::default(),
            protocol: Protocol::V311,
            bridge: false,
            clean_session: false,
            keep_alive: 0,
            client_id: ByteString::from_static("c"),
            will: Some(LastWill {
                props: Default::default(),
                topic: ByteString::from_static("w"),
                payload: Bytes::from_static(b"x"),
                qos: QoS::ExactlyOnce,
                retain: true,
            }),
            username: Some(ByteString::from_static("u")),
            password: Some(Bytes::from_static(b"p")),
        };
        let wire = bytes_of(&Packet::Connect(Box::new(c)));
        assert_eq!(wire[9], 0x80 | 0x40 | 0x20 | 0x10 | 0x04);
    }

    #[test]
    fn publish_header_carries_dup_qos_and_retain() {
        let mut out = BytesMut::new();
        encode_publish(&mut out, "a/b", b"hi", QoS::AtLeastOnce, true, true, 10);
        assert_eq!(
            &out[..],
            [0x3B, 9, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i']
        );
        out.clear();
        encode_publish(&mut out, "t", b"", QoS::ExactlyOnce, false, false, 0xFFFF);
        assert_eq!(&out[..], [0x34, 5, 0, 1, b't', 0xFF, 0xFF]);
    }

    #[test]
    fn qos0_publish_omits_packet_id_and_never_sets_dup() {
        let mut out = BytesMut::new();
        encode_publish(&mut out, "t", b"p", QoS::AtMostOnce, false, true, 99);
        assert_eq!(&out[..], [0x30, 4, 0, 1, b't', b'p']);
    }

    #[test]
    fn encode_publish_appends_after_existing_bytes_and_reserves_once() {
        let mut out = BytesMut::with_capacity(0);
        out.put_slice(b"xx");
        let payload = vec![7u8; 300];
        encode_publish(
            &mut out,
            "topic",
            &payload,
            QoS::AtLeastOnce,
            false,
            false,
            1,
        );
        let p = Packet::Publish(Publish {
            props: None,
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: ByteString::from_static("topic"),
            pkid: 1,
            payload: Bytes::from(payload),
        });
        assert_eq!(&out[..2], b"xx");
        assert_eq!(out.len(), 2 + encoded_len(&p));
        assert_eq!(&out[2..], &bytes_of(&p)[..]);
    }

    #[test]
    fn subscribe_unsubscribe_and_suback_layouts() {
        let s = Packet::Subscribe(Subscribe {
            id: None,
            user: Vec::new(),
            pkid: 1,
            filters: vec![
                SubscribeFilter {
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: Default::default(),
                    filter: ByteString::from_static("a"),
                    qos: QoS::AtLeastOnce,
                },
                SubscribeFilter {
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: Default::default(),
                    filter: ByteString::from_static("#"),
                    qos: QoS::ExactlyOnce,
                },
            ],
        });
        assert_eq!(bytes_of(&s), [0x82, 10, 0, 1, 0, 1, b'a', 1, 0, 1, b'#', 2]);
        let u = Packet::Unsubscribe(Unsubscribe {
            user: Vec::new(),
            pkid: 2,
            filters: vec![ByteString::from_static("a")],
        });
        assert_eq!(bytes_of(&u), [0xA2, 5, 0, 2, 0, 1, b'a']);
        let a = Packet::SubAck(SubAck {
            pkid: 3,
            codes: vec![
                SubAckCode::Granted(QoS::AtMostOnce),
                SubAckCode::Granted(QoS::ExactlyOnce),
                SubAckCode::Failure,
            ],
        });
        assert_eq!(bytes_of(&a), [0x90, 5, 0, 3, 0, 2, 0x80]);
    }
}

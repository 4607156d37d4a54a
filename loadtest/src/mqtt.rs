//! The client side of MQTT 3.1.1 and 5.0, as much as a load generator needs: encoding
//! of the packets a client sends and decoding of those a server sends. It is written
//! apart from the broker's codec on purpose, so that a bug there cannot hide itself here.
//!
//! 5.0 differs from 3.1.1 here in: CONNECT (level 5 and properties), the property
//! length in PUBLISH, SUBSCRIBE, CONNACK and SUBACK, acknowledgements that may carry a
//! reason code and properties after the packet id (the generator sends the short
//! form, which means success), and a DISCONNECT the server may send with a reason.

/// The protocol version every client of a run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl Protocol {
    /// From the protocol level of CONNECT (4 or 5).
    pub fn from_level(level: u8) -> Option<Protocol> {
        match level {
            4 => Some(Protocol::V311),
            5 => Some(Protocol::V5),
            _ => None,
        }
    }

    pub fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }

    /// "3.1.1" or "5.0".
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5.0",
        }
    }

    fn v5(self) -> bool {
        self == Protocol::V5
    }
}

/// The CONNACK properties the generator acts on (5.0; `None` when absent and in 3.1.1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnAckProps {
    /// QoS 1/2 publishes the server takes in flight from this client.
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub maximum_packet_size: Option<u32>,
}

/// A packet from the server, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    ConnAck {
        session_present: bool,
        /// The 3.1.1 return code or the 5.0 reason code: 0 is success in both.
        code: u8,
        props: ConnAckProps,
    },
    Publish {
        qos: u8,
        dup: bool,
        retain: bool,
        topic: &'a [u8],
        pid: u16,
        payload: &'a [u8],
    },
    /// Packet id and reason code (always 0 in 3.1.1; below 0x80 is success in 5.0).
    PubAck(u16, u8),
    PubRec(u16, u8),
    PubRel(u16, u8),
    PubComp(u16, u8),
    SubAck {
        pid: u16,
        codes: &'a [u8],
    },
    UnsubAck(u16),
    PingResp,
    /// 5.0 only: the server closes the connection, saying why.
    Disconnect {
        reason: u8,
    },
}

/// Reads a variable byte integer at `buf[at..]`: `Ok(None)` when `buf` ends first.
fn var_int(buf: &[u8], at: usize) -> Result<Option<(usize, usize)>, String> {
    let mut v: usize = 0;
    let mut shift = 0;
    let mut i = at;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        v |= ((b & 0x7f) as usize) << shift;
        i += 1;
        if b & 0x80 == 0 {
            return Ok(Some((v, i - at)));
        }
        shift += 7;
        if shift > 21 {
            return Err("variable byte integer longer than 4 bytes".into());
        }
    }
}

/// Walks the properties at the start of `body` (their length first), checks each one's
/// length, and returns the CONNACK figures among them and the bytes they took.
fn properties(body: &[u8], what: &str) -> Result<(ConnAckProps, usize), String> {
    let bad = || format!("malformed {what} properties");
    let (len, n) = var_int(body, 0)?.ok_or_else(bad)?;
    let end = n + len;
    if body.len() < end {
        return Err(bad());
    }
    let mut props = ConnAckProps::default();
    let mut i = n;
    while i < end {
        let id = body[i];
        i += 1;
        let rest = &body[i..end];
        let u16_at = |r: &[u8]| r.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        let size = match id {
            // Byte.
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
            // Two-byte integer.
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            // Four-byte integer.
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            // Variable byte integer (subscription identifier).
            0x0b => var_int(rest, 0)?.ok_or_else(bad)?.1,
            // UTF-8 string or binary data.
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => {
                2 + u16_at(rest).ok_or_else(bad)? as usize
            }
            // String pair (user property).
            0x26 => {
                let k = 2 + u16_at(rest).ok_or_else(bad)? as usize;
                k + 2 + u16_at(rest.get(k..).ok_or_else(bad)?).ok_or_else(bad)? as usize
            }
            _ => return Err(format!("{what}: unknown property 0x{id:02x}")),
        };
        if rest.len() < size {
            return Err(bad());
        }
        match id {
            0x21 => {
                let v = u16_at(rest).expect("checked");
                if v == 0 {
                    return Err(format!("{what}: Receive Maximum of 0"));
                }
                props.receive_maximum = Some(v);
            }
            0x24 => props.maximum_qos = Some(rest[0]),
            0x27 => {
                props.maximum_packet_size =
                    Some(u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]))
            }
            _ => {}
        }
        i += size;
    }
    Ok((props, end))
}

/// Decodes the first complete packet of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the packet and the number of bytes it took.
pub fn decode(
    buf: &[u8],
    max_packet: usize,
    protocol: Protocol,
) -> Result<Option<(Incoming<'_>, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let first = buf[0];
    let Some((len, n)) = var_int(buf, 1).map_err(|_| "remaining length longer than 4 bytes")?
    else {
        return Ok(None);
    };
    let i = 1 + n;
    if len > max_packet {
        return Err(format!(
            "packet of {len} bytes is over the {max_packet}-byte limit"
        ));
    }
    let total = i + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[i..total];
    let v5 = protocol.v5();
    // PUBACK, PUBREC, PUBREL, PUBCOMP: the packet id, then in 5.0 an optional reason
    // code and optional properties.
    let ack = |name: &str, flags: u8| -> Result<(u16, u8), String> {
        if first & 0x0f != flags || body.len() < 2 || (!v5 && body.len() != 2) {
            return Err(format!("malformed {name}"));
        }
        let pid = u16::from_be_bytes([body[0], body[1]]);
        let reason = body.get(2).copied().unwrap_or(0);
        if body.len() > 3 {
            let (_, used) = properties(&body[3..], name)?;
            if 3 + used != body.len() {
                return Err(format!("malformed {name}"));
            }
        }
        Ok((pid, reason))
    };
    let packet = match first >> 4 {
        2 => {
            if first & 0x0f != 0 || body.len() < 2 || body[0] & 0xfe != 0 {
                return Err("malformed CONNACK".into());
            }
            // A server that does not speak 5.0 answers a level-5 CONNECT with a
            // 3.1.1 CONNACK (no properties) and return code 1: taken as it is.
            let props = if v5 && body.len() > 2 {
                let (props, used) = properties(&body[2..], "CONNACK")?;
                if 2 + used != body.len() {
                    return Err("malformed CONNACK".into());
                }
                props
            } else if body.len() != 2 {
                return Err("malformed CONNACK".into());
            } else {
                ConnAckProps::default()
            };
            Incoming::ConnAck {
                session_present: body[0] & 1 == 1,
                code: body[1],
                props,
            }
        }
        3 => {
            let qos = (first >> 1) & 3;
            if qos == 3 || body.len() < 2 {
                return Err("malformed PUBLISH".into());
            }
            let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
            let mut at = 2 + tlen;
            if body.len() < at {
                return Err("malformed PUBLISH topic".into());
            }
            let topic = &body[2..at];
            let mut pid = 0;
            if qos > 0 {
                if body.len() < at + 2 {
                    return Err("malformed PUBLISH packet id".into());
                }
                pid = u16::from_be_bytes([body[at], body[at + 1]]);
                at += 2;
            }
            if v5 {
                // No Topic Alias Maximum is announced, so the server sends none and
                // every PUBLISH names its topic.
                if topic.is_empty() {
                    return Err("PUBLISH without a topic (no topic alias was allowed)".into());
                }
                at += properties(&body[at..], "PUBLISH")?.1;
            }
            Incoming::Publish {
                qos,
                dup: first & 8 != 0,
                retain: first & 1 != 0,
                topic,
                pid,
                payload: &body[at..],
            }
        }
        4 => {
            let (pid, reason) = ack("PUBACK", 0)?;
            Incoming::PubAck(pid, reason)
        }
        5 => {
            let (pid, reason) = ack("PUBREC", 0)?;
            Incoming::PubRec(pid, reason)
        }
        6 => {
            let (pid, reason) = ack("PUBREL", 2)?;
            Incoming::PubRel(pid, reason)
        }
        7 => {
            let (pid, reason) = ack("PUBCOMP", 0)?;
            Incoming::PubComp(pid, reason)
        }
        9 => {
            if first & 0x0f != 0 || body.len() < 3 {
                return Err("malformed SUBACK".into());
            }
            let mut at = 2;
            if v5 {
                at += properties(&body[2..], "SUBACK")?.1;
            }
            if body.len() <= at {
                return Err("malformed SUBACK".into());
            }
            Incoming::SubAck {
                pid: u16::from_be_bytes([body[0], body[1]]),
                codes: &body[at..],
            }
        }
        11 => {
            if first & 0x0f != 0 || body.len() < 2 || (!v5 && body.len() != 2) {
                return Err("malformed UNSUBACK".into());
            }
            Incoming::UnsubAck(u16::from_be_bytes([body[0], body[1]]))
        }
        13 => {
            if first & 0x0f != 0 || !body.is_empty() {
                return Err("malformed PINGRESP".into());
            }
            Incoming::PingResp
        }
        14 if v5 => {
            if first & 0x0f != 0 {
                return Err("malformed DISCONNECT".into());
            }
            let reason = body.first().copied().unwrap_or(0);
            if body.len() > 1 {
                let (_, used) = properties(&body[1..], "DISCONNECT")?;
                if 1 + used != body.len() {
                    return Err("malformed DISCONNECT".into());
                }
            }
            Incoming::Disconnect { reason }
        }
        t => return Err(format!("server sent packet type {t}")),
    };
    Ok(Some((packet, total)))
}

fn put_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut b = (len & 0x7f) as u8;
        len >>= 7;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// CONNECT with protocol level 4, no will, no credentials.
pub fn connect(out: &mut Vec<u8>, client_id: &[u8], clean_session: bool, keep_alive: u16) {
    connect_with(
        out,
        &Connect {
            protocol: Protocol::V311,
            client_id,
            clean_session,
            keep_alive,
            username: None,
            password: None,
            receive_maximum: u16::MAX,
        },
    );
}

/// What goes into a CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    pub protocol: Protocol,
    pub client_id: &'a [u8],
    /// Clean session (3.1.1) or clean start (5.0). In 5.0, a client that keeps its
    /// session also asks that it never expire, which is what clean session 0 means
    /// in 3.1.1.
    pub clean_session: bool,
    pub keep_alive: u16,
    /// A password goes only with a username (as 3.1.1 requires).
    pub username: Option<&'a [u8]>,
    pub password: Option<&'a [u8]>,
    /// 5.0: the Receive Maximum announced (QoS 1/2 publishes the server may have in
    /// flight to this client); not sent when it is 65535, the default.
    pub receive_maximum: u16,
}

/// CONNECT with no will.
pub fn connect_with(out: &mut Vec<u8>, c: &Connect) {
    let password = c.username.and(c.password);
    let mut flags = if c.clean_session { 0x02 } else { 0 };
    // 5.0 properties: Session Expiry Interval, Receive Maximum.
    let mut props: Vec<u8> = Vec::new();
    if c.protocol.v5() {
        if !c.clean_session {
            props.push(0x11);
            props.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        if c.receive_maximum != u16::MAX {
            props.push(0x21);
            props.extend_from_slice(&c.receive_maximum.max(1).to_be_bytes());
        }
    }
    let mut len = 10 + 2 + c.client_id.len();
    if c.protocol.v5() {
        len += var_len(props.len()) + props.len();
    }
    if let Some(u) = c.username {
        flags |= 0x80;
        len += 2 + u.len();
    }
    if let Some(p) = password {
        flags |= 0x40;
        len += 2 + p.len();
    }
    out.push(0x10);
    put_len(out, len);
    put_str(out, b"MQTT");
    out.push(c.protocol.level());
    out.push(flags);
    out.extend_from_slice(&c.keep_alive.to_be_bytes());
    if c.protocol.v5() {
        put_len(out, props.len());
        out.extend_from_slice(&props);
    }
    put_str(out, c.client_id);
    if let Some(u) = c.username {
        put_str(out, u);
    }
    if let Some(p) = password {
        put_str(out, p);
    }
}

/// Bytes of `len` as a variable byte integer.
fn var_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// What a CONNACK code other than 0 means: a 3.1.1 return code (3.2.2.3) or a 5.0
/// reason code (3.2.2.2). A server that does not speak 5.0 answers a level-5 CONNECT
/// with return code 1.
pub fn connack_reason(code: u8) -> &'static str {
    match code {
        1 => "unacceptable protocol version",
        2 => "identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x84 => "unsupported protocol version",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8a => "banned",
        0x8c => "bad authentication method",
        0x90 => "topic name invalid",
        0x95 => "packet too large",
        0x97 => "quota exceeded",
        0x99 => "payload format invalid",
        0x9a => "retain not supported",
        0x9b => "QoS not supported",
        0x9c => "use another server",
        0x9d => "server moved",
        0x9f => "connection rate exceeded",
        _ => "reserved code",
    }
}

/// Whether a CONNACK code says the server does not take this protocol version.
pub fn refuses_version(code: u8) -> bool {
    code == 1 || code == 0x84
}

/// What a 5.0 reason code of 0x80 or above in PUBACK, PUBREC, SUBACK or DISCONNECT
/// means.
pub fn reason_name(code: u8) -> &'static str {
    match code {
        0x00 => "normal disconnection",
        0x04 => "disconnect with will message",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x87 => "not authorized",
        0x89 => "server busy",
        0x8b => "server shutting down",
        0x8d => "keep alive timeout",
        0x8e => "session taken over",
        0x8f => "topic filter invalid",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x92 => "packet identifier not found",
        0x93 => "receive maximum exceeded",
        0x94 => "topic alias invalid",
        0x95 => "packet too large",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        0x98 => "administrative action",
        0x99 => "payload format invalid",
        0x9a => "retain not supported",
        0x9b => "QoS not supported",
        0x9c => "use another server",
        0x9d => "server moved",
        0x9e => "shared subscriptions not supported",
        0x9f => "connection rate exceeded",
        0xa0 => "maximum connect time",
        0xa1 => "subscription identifiers not supported",
        0xa2 => "wildcard subscriptions not supported",
        _ => "reserved code",
    }
}

/// SUBSCRIBE to one filter; in 5.0 with no properties and the subscription options
/// byte holding only the QoS (no local, retain as published and retain handling 0).
pub fn subscribe(out: &mut Vec<u8>, protocol: Protocol, pid: u16, filter: &[u8], qos: u8) {
    let props = usize::from(protocol.v5());
    out.push(0x82);
    put_len(out, 2 + props + 2 + filter.len() + 1);
    out.extend_from_slice(&pid.to_be_bytes());
    if protocol.v5() {
        out.push(0);
    }
    put_str(out, filter);
    out.push(qos);
}

/// PUBLISH whose payload is `head` followed by zeros up to `payload_len` bytes; in 5.0
/// with no properties.
pub fn publish(
    out: &mut Vec<u8>,
    protocol: Protocol,
    topic: &[u8],
    qos: u8,
    pid: u16,
    head: &[u8],
    payload_len: usize,
) {
    debug_assert!(head.len() <= payload_len);
    out.push(0x30 | (qos << 1));
    let pid_len = if qos > 0 { 2 } else { 0 };
    let props = usize::from(protocol.v5());
    put_len(out, 2 + topic.len() + pid_len + props + payload_len);
    put_str(out, topic);
    if qos > 0 {
        out.extend_from_slice(&pid.to_be_bytes());
    }
    if protocol.v5() {
        out.push(0);
    }
    out.extend_from_slice(head);
    out.resize(out.len() + payload_len - head.len(), 0);
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: `first` is the fixed header's first byte. The
/// same bytes in 3.1.1 and 5.0: in 5.0 this short form means reason code 0, success.
pub fn ack(out: &mut Vec<u8>, first: u8, pid: u16) {
    out.push(first);
    out.push(2);
    out.extend_from_slice(&pid.to_be_bytes());
}

pub const PUBACK: u8 = 0x40;
pub const PUBREC: u8 = 0x50;
pub const PUBREL: u8 = 0x62;
pub const PUBCOMP: u8 = 0x70;

pub fn pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xc0, 0]);
}

/// DISCONNECT: in 5.0, remaining length 0 is reason code 0, normal disconnection.
pub fn disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xe0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_bytes_match_the_specification_example() {
        let mut out = Vec::new();
        connect(&mut out, b"ab", true, 60);
        assert_eq!(
            out,
            [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 2, b'a', b'b']
        );
    }

    #[test]
    fn connect_with_credentials_sets_both_flags_and_appends_both_strings() {
        let mut out = Vec::new();
        let c = Connect {
            protocol: Protocol::V311,
            client_id: b"ab",
            clean_session: true,
            keep_alive: 60,
            username: Some(b"u"),
            password: Some(b"pw"),
            receive_maximum: 100,
        };
        connect_with(&mut out, &c);
        assert_eq!(
            out,
            [
                0x10, 21, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0, 60, 0, 2, b'a', b'b', 0, 1,
                b'u', 0, 2, b'p', b'w'
            ]
        );
        let mut only_user = Vec::new();
        connect_with(
            &mut only_user,
            &Connect {
                password: None,
                ..c
            },
        );
        assert_eq!(only_user[9], 0x82);
        assert_eq!(only_user[1] as usize, only_user.len() - 2);
    }

    #[test]
    fn publish_round_trips_through_decode() {
        for qos in 0..3u8 {
            let mut out = Vec::new();
            publish(&mut out, Protocol::V311, b"a/b", qos, 7, b"hd", 200);
            let (p, used) = decode(&out, 1 << 20, Protocol::V311).unwrap().unwrap();
            assert_eq!(used, out.len());
            match p {
                Incoming::Publish {
                    qos: q,
                    topic,
                    pid,
                    payload,
                    dup,
                    retain,
                } => {
                    assert_eq!((q, topic, dup, retain), (qos, &b"a/b"[..], false, false));
                    assert_eq!(pid, if qos > 0 { 7 } else { 0 });
                    assert_eq!(payload.len(), 200);
                    assert_eq!(&payload[..2], b"hd");
                    assert!(payload[2..].iter().all(|&b| b == 0));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn partial_packets_need_more_bytes() {
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut out = Vec::new();
            publish(&mut out, protocol, b"t", 1, 1, b"", 300);
            for cut in 0..out.len() {
                assert_eq!(
                    decode(&out[..cut], 1 << 20, protocol).unwrap(),
                    None,
                    "cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn server_packets_decode() {
        let cases: [(&[u8], Incoming); 7] = [
            (
                &[0x20, 2, 1, 0],
                Incoming::ConnAck {
                    session_present: true,
                    code: 0,
                    props: ConnAckProps::default(),
                },
            ),
            (&[0x40, 2, 0, 9], Incoming::PubAck(9, 0)),
            (&[0x50, 2, 1, 0], Incoming::PubRec(256, 0)),
            (&[0x62, 2, 0, 3], Incoming::PubRel(3, 0)),
            (&[0x70, 2, 0, 4], Incoming::PubComp(4, 0)),
            (
                &[0x90, 3, 0, 5, 1],
                Incoming::SubAck {
                    pid: 5,
                    codes: &[1],
                },
            ),
            (&[0xd0, 0], Incoming::PingResp),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                decode(bytes, 100, Protocol::V311).unwrap(),
                Some((want, bytes.len()))
            );
        }
    }

    #[test]
    fn bad_server_packets_are_errors() {
        for bytes in [
            &[0x60, 2, 0, 1][..],                   // PUBREL without its reserved flags
            &[0x10, 0][..],                         // CONNECT from a server
            &[0x36, 0][..],                         // QoS 3
            &[0x30, 0xff, 0xff, 0xff, 0xff, 1][..], // five-byte length
            &[0x40, 3, 0, 1, 0][..],                // a 5.0 PUBACK in 3.1.1
            &[0xe0, 0][..],                         // DISCONNECT from a 3.1.1 server
        ] {
            assert!(decode(bytes, 1 << 20, Protocol::V311).is_err(), "{bytes:?}");
        }
        assert!(
            decode(&[0x30, 0x80, 0x01], 100, Protocol::V311).is_err(),
            "over the limit"
        );
    }

    #[test]
    fn connect_v5_has_level_5_and_properties() {
        let mut out = Vec::new();
        let c = Connect {
            protocol: Protocol::V5,
            client_id: b"ab",
            clean_session: true,
            keep_alive: 60,
            username: None,
            password: None,
            receive_maximum: 1600,
        };
        connect_with(&mut out, &c);
        // Variable header: name, level 5, flags, keep alive, then 3 bytes of
        // properties: Receive Maximum (0x21) 1600.
        assert_eq!(
            out,
            [
                0x10, 18, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 3, 0x21, 0x06, 0x40, 0, 2,
                b'a', b'b'
            ]
        );
        // The default Receive Maximum is not sent: an empty property list.
        let mut plain = Vec::new();
        connect_with(
            &mut plain,
            &Connect {
                receive_maximum: u16::MAX,
                ..c
            },
        );
        assert_eq!(plain[1] as usize, plain.len() - 2);
        assert_eq!(&plain[8..13], &[5, 2, 0, 60, 0]);
        // Keeping the session asks for a session that never expires.
        let mut kept = Vec::new();
        connect_with(
            &mut kept,
            &Connect {
                clean_session: false,
                username: Some(b"u"),
                password: Some(b"p"),
                ..c
            },
        );
        assert_eq!(kept[1] as usize, kept.len() - 2);
        assert_eq!(kept[9], 0xc0);
        assert_eq!(
            &kept[12..21],
            &[8, 0x11, 0xff, 0xff, 0xff, 0xff, 0x21, 0x06, 0x40]
        );
    }

    /// What the generator sends in 5.0, read back by the broker crate's codec (written
    /// apart from this one).
    #[test]
    fn v5_client_packets_decode_with_the_brokers_codec() {
        use shardmq::protocol::{decode_with, DecodeOptions, Packet, Protocol as P};
        let mut out = Vec::new();
        connect_with(
            &mut out,
            &Connect {
                protocol: Protocol::V5,
                client_id: b"lt-1",
                clean_session: false,
                keep_alive: 30,
                username: Some(b"u"),
                password: Some(b"pw"),
                receive_maximum: 500,
            },
        );
        let mut buf = bytes::BytesMut::from(&out[..]);
        let mut opts = DecodeOptions::new(1 << 20);
        let Some(Packet::Connect(c)) = decode_with(&mut buf, &opts).unwrap() else {
            panic!("not a CONNECT");
        };
        assert_eq!(c.protocol, P::V5);
        assert_eq!(&c.client_id[..], "lt-1");
        assert!(!c.clean_session);
        assert_eq!(c.keep_alive, 30);
        assert_eq!(c.props.receive_maximum.get(), 500);
        assert_eq!(c.props.session_expiry, u32::MAX);
        assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
        assert!(buf.is_empty());

        opts.v5 = true;
        let mut out = Vec::new();
        subscribe(&mut out, Protocol::V5, 1, b"$share/g/a/#", 1);
        publish(&mut out, Protocol::V5, b"a/b", 1, 9, b"head", 64);
        let mut buf = bytes::BytesMut::from(&out[..]);
        let Some(Packet::Subscribe(s)) = decode_with(&mut buf, &opts).unwrap() else {
            panic!("not a SUBSCRIBE");
        };
        assert_eq!(s.pkid, 1);
        assert_eq!(s.filters.len(), 1);
        assert_eq!(&s.filters[0].filter[..], "$share/g/a/#");
        assert!(!s.filters[0].no_local);
        let Some(Packet::Publish(p)) = decode_with(&mut buf, &opts).unwrap() else {
            panic!("not a PUBLISH");
        };
        assert_eq!((&p.topic[..], p.pkid, p.payload.len()), ("a/b", 9, 64));
        assert_eq!(&p.payload[..4], b"head");
        assert!(p.props.is_none());
        assert!(buf.is_empty());
    }

    #[test]
    fn subscribe_v5_carries_properties_and_options() {
        let mut out = Vec::new();
        subscribe(&mut out, Protocol::V5, 1, b"a/#", 1);
        assert_eq!(out, [0x82, 9, 0, 1, 0, 0, 3, b'a', b'/', b'#', 1]);
        let mut old = Vec::new();
        subscribe(&mut old, Protocol::V311, 1, b"a/#", 1);
        assert_eq!(old, [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'#', 1]);
    }

    #[test]
    fn publish_v5_round_trips_through_decode() {
        for qos in 0..3u8 {
            let mut out = Vec::new();
            publish(&mut out, Protocol::V5, b"a/b", qos, 7, b"hd", 100);
            let pid_len = if qos > 0 { 2 } else { 0 };
            assert_eq!(out[1] as usize, 2 + 3 + pid_len + 1 + 100);
            assert_eq!(out[2 + 5 + pid_len], 0, "empty property length");
            let (p, used) = decode(&out, 1 << 20, Protocol::V5).unwrap().unwrap();
            assert_eq!(used, out.len());
            let Incoming::Publish {
                qos: q,
                pid,
                payload,
                ..
            } = p
            else {
                panic!("{p:?}")
            };
            assert_eq!(q, qos);
            assert_eq!(pid, if qos > 0 { 7 } else { 0 });
            assert_eq!(payload.len(), 100);
            assert_eq!(&payload[..2], b"hd");
        }
    }

    #[test]
    fn publish_v5_from_a_server_skips_its_properties() {
        // QoS 1, topic "t", pid 3, properties: message expiry (4 bytes), user property
        // ("k", "v"), subscription identifier 200 (two bytes), content type "x".
        let props = [
            0x02, 0, 0, 0, 9, 0x26, 0, 1, b'k', 0, 1, b'v', 0x0b, 0xc8, 0x01, 0x03, 0, 1, b'x',
        ];
        let mut body = vec![0, 1, b't', 0, 3, props.len() as u8];
        body.extend_from_slice(&props);
        body.extend_from_slice(b"payload");
        let mut bytes = vec![0x32, body.len() as u8];
        bytes.extend_from_slice(&body);
        let (p, used) = decode(&bytes, 1 << 20, Protocol::V5).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            p,
            Incoming::Publish {
                qos: 1,
                dup: false,
                retain: false,
                topic: b"t",
                pid: 3,
                payload: b"payload",
            }
        );
        // A property length past the end of the packet: malformed.
        let mut cut = bytes.clone();
        cut[7] = 40;
        assert!(decode(&cut, 1 << 20, Protocol::V5).is_err());
    }

    #[test]
    fn server_packets_decode_v5() {
        let cases: [(&[u8], Incoming); 11] = [
            // CONNACK with Receive Maximum 64, Maximum QoS 1, a reason string.
            (
                &[
                    0x20, 14, 0, 0, 11, 0x21, 0, 64, 0x24, 1, 0x1f, 0, 3, b'h', b'e', b'y',
                ],
                Incoming::ConnAck {
                    session_present: false,
                    code: 0,
                    props: ConnAckProps {
                        receive_maximum: Some(64),
                        maximum_qos: Some(1),
                        maximum_packet_size: None,
                    },
                },
            ),
            // A server without 5.0 answers in 3.1.1: return code 1, no properties.
            (
                &[0x20, 2, 0, 1],
                Incoming::ConnAck {
                    session_present: false,
                    code: 1,
                    props: ConnAckProps::default(),
                },
            ),
            (&[0x40, 2, 0, 9], Incoming::PubAck(9, 0)),
            (&[0x40, 3, 0, 9, 0x10], Incoming::PubAck(9, 0x10)),
            (&[0x40, 4, 0, 9, 0x97, 0], Incoming::PubAck(9, 0x97)),
            (&[0x50, 3, 1, 0, 0], Incoming::PubRec(256, 0)),
            (&[0x62, 2, 0, 3], Incoming::PubRel(3, 0)),
            (&[0x70, 3, 0, 4, 0x92], Incoming::PubComp(4, 0x92)),
            (
                &[0x90, 4, 0, 5, 0, 1],
                Incoming::SubAck {
                    pid: 5,
                    codes: &[1],
                },
            ),
            (&[0xb0, 4, 0, 5, 0, 0], Incoming::UnsubAck(5)),
            (&[0xe0, 2, 0x93, 0], Incoming::Disconnect { reason: 0x93 }),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                decode(bytes, 100, Protocol::V5).unwrap(),
                Some((want, bytes.len())),
                "{bytes:x?}"
            );
        }
        assert_eq!(
            decode(&[0xe0, 0], 100, Protocol::V5).unwrap(),
            Some((Incoming::Disconnect { reason: 0 }, 2))
        );
    }

    #[test]
    fn bad_v5_server_packets_are_errors() {
        for bytes in [
            &[0x20, 4, 0, 0, 3, 0x21][..],       // property cut short
            &[0x20, 5, 0, 0, 2, 0x21, 0][..],    // property list longer than its bytes
            &[0x20, 4, 0, 0, 1, 0x7f][..],       // unknown property
            &[0x20, 6, 0, 0, 3, 0x21, 0, 0][..], // Receive Maximum 0
            &[0x40, 5, 0, 1, 0, 2, 0x1f][..],    // PUBACK properties cut short
            &[0x90, 3, 0, 1, 0][..],             // SUBACK without a code
            &[0x31, 3, 0, 0, 0][..],             // PUBLISH with an empty topic
            &[0xf0, 0][..],                      // AUTH, never asked for
        ] {
            assert!(decode(bytes, 1 << 20, Protocol::V5).is_err(), "{bytes:x?}");
        }
    }

    #[test]
    fn reason_codes_have_names() {
        assert!(refuses_version(1) && refuses_version(0x84) && !refuses_version(0x85));
        assert_eq!(connack_reason(0x84), "unsupported protocol version");
        assert_eq!(reason_name(0x93), "receive maximum exceeded");
    }
}

//! The client side of MQTT 3.1.1, as much as a load generator needs: encoding of the
//! packets a client sends and decoding of those a server sends. It is written apart
//! from the broker's codec on purpose, so that a bug there cannot hide itself here.

/// A packet from the server, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish {
        qos: u8,
        dup: bool,
        retain: bool,
        topic: &'a [u8],
        pid: u16,
        payload: &'a [u8],
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    SubAck {
        pid: u16,
        codes: &'a [u8],
    },
    UnsubAck(u16),
    PingResp,
}

/// Decodes the first complete packet of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the packet and the number of bytes it took.
pub fn decode(buf: &[u8], max_packet: usize) -> Result<Option<(Incoming<'_>, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let first = buf[0];
    let mut len: usize = 0;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err("remaining length longer than 4 bytes".into());
        }
    }
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
    let pid_only = |name: &str, flags: u8| -> Result<u16, String> {
        if first & 0x0f != flags || body.len() != 2 {
            return Err(format!("malformed {name}"));
        }
        Ok(u16::from_be_bytes([body[0], body[1]]))
    };
    let packet = match first >> 4 {
        2 => {
            if first & 0x0f != 0 || body.len() != 2 || body[0] & 0xfe != 0 {
                return Err("malformed CONNACK".into());
            }
            Incoming::ConnAck {
                session_present: body[0] & 1 == 1,
                code: body[1],
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
            Incoming::Publish {
                qos,
                dup: first & 8 != 0,
                retain: first & 1 != 0,
                topic,
                pid,
                payload: &body[at..],
            }
        }
        4 => Incoming::PubAck(pid_only("PUBACK", 0)?),
        5 => Incoming::PubRec(pid_only("PUBREC", 0)?),
        6 => Incoming::PubRel(pid_only("PUBREL", 2)?),
        7 => Incoming::PubComp(pid_only("PUBCOMP", 0)?),
        9 => {
            if first & 0x0f != 0 || body.len() < 3 {
                return Err("malformed SUBACK".into());
            }
            Incoming::SubAck {
                pid: u16::from_be_bytes([body[0], body[1]]),
                codes: &body[2..],
            }
        }
        11 => Incoming::UnsubAck(pid_only("UNSUBACK", 0)?),
        13 => {
            if first & 0x0f != 0 || !body.is_empty() {
                return Err("malformed PINGRESP".into());
            }
            Incoming::PingResp
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
    connect_with(out, client_id, clean_session, keep_alive, None, None);
}

/// CONNECT with protocol level 4, no will, and optionally a username and a password
/// (a password needs a username in 3.1.1).
pub fn connect_with(
    out: &mut Vec<u8>,
    client_id: &[u8],
    clean_session: bool,
    keep_alive: u16,
    username: Option<&[u8]>,
    password: Option<&[u8]>,
) {
    let password = username.and(password);
    let mut flags = if clean_session { 0x02 } else { 0 };
    let mut len = 10 + 2 + client_id.len();
    if let Some(u) = username {
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
    out.push(4);
    out.push(flags);
    out.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(out, client_id);
    if let Some(u) = username {
        put_str(out, u);
    }
    if let Some(p) = password {
        put_str(out, p);
    }
}

/// What a CONNACK return code other than 0 means (MQTT 3.1.1, 3.2.2.3).
pub fn connack_reason(code: u8) -> &'static str {
    match code {
        1 => "unacceptable protocol version",
        2 => "identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "reserved return code",
    }
}

pub fn subscribe(out: &mut Vec<u8>, pid: u16, filter: &[u8], qos: u8) {
    out.push(0x82);
    put_len(out, 2 + 2 + filter.len() + 1);
    out.extend_from_slice(&pid.to_be_bytes());
    put_str(out, filter);
    out.push(qos);
}

/// PUBLISH whose payload is `head` followed by zeros up to `payload_len` bytes.
pub fn publish(
    out: &mut Vec<u8>,
    topic: &[u8],
    qos: u8,
    pid: u16,
    head: &[u8],
    payload_len: usize,
) {
    debug_assert!(head.len() <= payload_len);
    out.push(0x30 | (qos << 1));
    let pid_len = if qos > 0 { 2 } else { 0 };
    put_len(out, 2 + topic.len() + pid_len + payload_len);
    put_str(out, topic);
    if qos > 0 {
        out.extend_from_slice(&pid.to_be_bytes());
    }
    out.extend_from_slice(head);
    out.resize(out.len() + payload_len - head.len(), 0);
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: `first` is the fixed header's first byte.
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
        connect_with(&mut out, b"ab", true, 60, Some(b"u"), Some(b"pw"));
        assert_eq!(
            out,
            [
                0x10, 21, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0, 60, 0, 2, b'a', b'b', 0, 1,
                b'u', 0, 2, b'p', b'w'
            ]
        );
        let mut only_user = Vec::new();
        connect_with(&mut only_user, b"ab", true, 60, Some(b"u"), None);
        assert_eq!(only_user[9], 0x82);
        assert_eq!(only_user[1] as usize, only_user.len() - 2);
    }

    #[test]
    fn publish_round_trips_through_decode() {
        for qos in 0..3u8 {
            let mut out = Vec::new();
            publish(&mut out, b"a/b", qos, 7, b"hd", 200);
            let (p, used) = decode(&out, 1 << 20).unwrap().unwrap();
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
        let mut out = Vec::new();
        publish(&mut out, b"t", 1, 1, b"", 300);
        for cut in 0..out.len() {
            assert_eq!(decode(&out[..cut], 1 << 20).unwrap(), None, "cut at {cut}");
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
                },
            ),
            (&[0x40, 2, 0, 9], Incoming::PubAck(9)),
            (&[0x50, 2, 1, 0], Incoming::PubRec(256)),
            (&[0x62, 2, 0, 3], Incoming::PubRel(3)),
            (&[0x70, 2, 0, 4], Incoming::PubComp(4)),
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
            assert_eq!(decode(bytes, 100).unwrap(), Some((want, bytes.len())));
        }
    }

    #[test]
    fn bad_server_packets_are_errors() {
        for bytes in [
            &[0x60, 2, 0, 1][..],                   // PUBREL without its reserved flags
            &[0x10, 0][..],                         // CONNECT from a server
            &[0x36, 0][..],                         // QoS 3
            &[0x30, 0xff, 0xff, 0xff, 0xff, 1][..], // five-byte length
        ] {
            assert!(decode(bytes, 1 << 20).is_err(), "{bytes:?}");
        }
        assert!(decode(&[0x30, 0x80, 0x01], 100).is_err(), "over the limit");
    }
}

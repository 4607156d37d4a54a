//! MQTT 5.0 end to end: CONNACK and its properties, refusals with reason codes, acks
//! in 5.0 form, 5.0 ↔ 3.1.1 delivery (retained messages and wills included), and the
//! DISCONNECT a 5.0 client gets before the broker closes its connection. Raw 5.0
//! packets are built and read with the broker's own codec; rumqttc's `v5` client is
//! the independent check.

mod common;
use bytes::BytesMut;
use common::*;
use shardmq::protocol::{
    decode_with, Ack, Auth, ConnAckV5, Connect, ConnectProps, DecodeOptions, DisconnectV5,
    LastWill, Packet, Protocol, Publish as P5, PublishProps, QoS as Q, ReasonCode, Subscribe,
    SubscribeFilter, Unsubscribe, UserProperties, WillProps,
};
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

// ---------------------------------------------------------------------------------
// A raw 5.0 client
// ---------------------------------------------------------------------------------

fn connect5(id: &str) -> Connect {
    Connect {
        protocol: Protocol::V5,
        clean_session: true,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        props: ConnectProps::default(),
        bridge: false,
    }
}

fn enc(p: &Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    p.encode_v5(&mut b);
    b.to_vec()
}

fn dec(pkt: &Pkt) -> Packet {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[pkt.first]);
    buf.extend_from_slice(&remaining_length(pkt.body.len()));
    buf.extend_from_slice(&pkt.body);
    let opts = DecodeOptions {
        v5: true,
        ..DecodeOptions::new(usize::MAX)
    };
    decode_with(&mut buf, &opts)
        .unwrap_or_else(|e| panic!("the broker's packet {pkt:?} decodes as 5.0: {e}"))
        .expect("complete")
}

/// Sends `c` and returns the connection with its CONNACK.
fn open5(addr: SocketAddr, c: Connect) -> (Raw, ConnAckV5) {
    let mut raw = Raw::open(addr);
    raw.send(&enc(&Packet::Connect(Box::new(c))));
    match dec(&raw.recv()) {
        Packet::ConnAckV5(ack) => (raw, *ack),
        p => panic!("expected a 5.0 CONNACK, got {p:?}"),
    }
}

/// Connects and asserts success.
fn client5(addr: SocketAddr, c: Connect) -> Raw {
    let (raw, ack) = open5(addr, c);
    assert_eq!(ack.reason, ReasonCode::SUCCESS, "{ack:?}");
    raw
}

fn filter(f: &str, qos: Q) -> SubscribeFilter {
    SubscribeFilter {
        filter: f.into(),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: Default::default(),
    }
}

fn subscribe5(raw: &mut Raw, pkid: u16, filters: &[(&str, Q)]) -> Vec<ReasonCode> {
    raw.send(&enc(&Packet::Subscribe(Subscribe {
        pkid,
        filters: filters.iter().map(|(f, q)| filter(f, *q)).collect(),
        id: None,
        user: UserProperties::new(),
    })));
    match dec(&raw.recv_kind(SUBACK)) {
        Packet::SubAckV5(s) => {
            assert_eq!(s.pkid, pkid);
            s.reasons
        }
        p => panic!("expected a 5.0 SUBACK, got {p:?}"),
    }
}

fn publish5(topic: &str, payload: &[u8], qos: Q, retain: bool, pkid: u16) -> P5 {
    P5 {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        pkid,
        payload: bytes::Bytes::copy_from_slice(payload),
        props: None,
    }
}

fn recv_publish5(raw: &mut Raw) -> P5 {
    match dec(&raw.recv_kind(PUBLISH)) {
        Packet::Publish(p) => p,
        p => panic!("expected PUBLISH, got {p:?}"),
    }
}

/// The broker sends DISCONNECT with `reason`, then closes.
fn expect_disconnect(raw: &mut Raw, reason: ReasonCode, what: &str) {
    let got = raw.expect_closed();
    let last = got
        .last()
        .unwrap_or_else(|| panic!("{what}: closed without DISCONNECT"));
    match dec(last) {
        Packet::DisconnectV5(d) => assert_eq!(d.reason, reason, "{what}: {d:?}"),
        p => panic!("{what}: expected DISCONNECT, got {p:?} (all: {got:?})"),
    }
}

fn refused_with(addr: SocketAddr, c: Connect, reason: ReasonCode, what: &str) {
    let (mut raw, ack) = open5(addr, c);
    assert_eq!(ack.reason, reason, "{what}: {ack:?}");
    assert!(!ack.session_present, "{what}");
    raw.expect_closed();
}

// ---------------------------------------------------------------------------------
// CONNECT and CONNACK
// ---------------------------------------------------------------------------------

#[test]
fn connack_carries_the_brokers_limits_and_the_assigned_client_id() {
    let b = broker_with(|c| {
        c.max_keepalive = 30;
        c.receive_maximum = 100;
        c.max_packet_size = 4096;
    });
    // Empty client id and keep-alive 0: the broker chooses both.
    let mut c = connect5("");
    c.keep_alive = 0;
    let (mut raw, ack) = open5(b.local_addr(), c);
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    assert!(!ack.session_present);
    let p = &ack.props;
    let assigned = p.assigned_client_id.as_ref().expect("assigned client id");
    assert!(!assigned.is_empty());
    assert_eq!(p.server_keep_alive, Some(30));
    assert_eq!(p.receive_maximum.get(), 100);
    assert_eq!(p.maximum_packet_size.map(NonZeroU32::get), Some(4096));
    assert_eq!(p.topic_alias_maximum, 10);
    assert!(p.retain_available);
    assert!(p.wildcard_subscription_available);
    assert!(p.subscription_identifiers_available);
    assert!(p.shared_subscription_available);
    // The session lives under the assigned id: a publish to it arrives.
    assert_eq!(
        subscribe5(&mut raw, 1, &[("v5/assigned", Q::AtMostOnce)]),
        [ReasonCode::GRANTED_QOS_0]
    );
    let mut pubr = client5(b.local_addr(), connect5(&unique("p")));
    pubr.send(&enc(&Packet::Publish(publish5(
        "v5/assigned",
        b"x",
        Q::AtMostOnce,
        false,
        0,
    ))));
    assert_eq!(&recv_publish5(&mut raw).payload[..], b"x");

    // Asking for more than the maximum keep-alive gets the maximum; less stands.
    let mut c = connect5(&unique("ka"));
    c.keep_alive = 600;
    assert_eq!(open5(b.local_addr(), c).1.props.server_keep_alive, Some(30));
    let mut c = connect5(&unique("ka"));
    c.keep_alive = 10;
    let (_raw, ack) = open5(b.local_addr(), c);
    assert_eq!(ack.props.server_keep_alive, None);
    assert_eq!(ack.props.assigned_client_id, None);
}

#[test]
fn refusals_carry_5_0_reason_codes() {
    let b = broker_with(|c| {
        c.max_client_id_length = 23;
        c.allow_anonymous = Some(false);
    });
    let addr = b.local_addr();
    let mut c = connect5("auth-method");
    c.props.auth_method = Some("SCRAM-SHA-1".into());
    refused_with(
        addr,
        c,
        ReasonCode::BAD_AUTHENTICATION_METHOD,
        "authentication method",
    );
    refused_with(
        addr,
        connect5(&"x".repeat(30)),
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        "client id too long",
    );
    refused_with(
        addr,
        connect5("anon"),
        ReasonCode::NOT_AUTHORIZED,
        "anonymous",
    );
}

#[test]
fn max_connections_refuses_with_server_unavailable() {
    let b = broker_with(|c| c.max_connections = 1);
    let _first = client5(b.local_addr(), connect5(&unique("first")));
    refused_with(
        b.local_addr(),
        connect5(&unique("second")),
        ReasonCode::SERVER_UNAVAILABLE,
        "over max_connections",
    );
}

#[test]
fn session_present_on_resume() {
    let b = broker();
    let id = unique("resume");
    let mut c = connect5(&id);
    c.clean_session = false;
    c.props.session_expiry = u32::MAX;
    let mut raw = client5(b.local_addr(), c.clone());
    raw.send(&enc(&Packet::DisconnectV5(Box::new(DisconnectV5::new(
        ReasonCode::NORMAL_DISCONNECTION,
    )))));
    raw.expect_closed();
    let (_raw, ack) = open5(b.local_addr(), c);
    assert!(ack.session_present);
}

// ---------------------------------------------------------------------------------
// Acks and delivery
// ---------------------------------------------------------------------------------

#[test]
fn acks_are_in_5_0_form_and_delivery_crosses_shards() {
    let b = broker();
    let addr = b.local_addr();
    let mut sub = client5(addr, connect5(&id_on_shard("sub", 1)));
    let mut publ = client5(addr, connect5(&id_on_shard("pub", 0)));
    let reasons = subscribe5(
        &mut sub,
        7,
        &[
            ("x5/0", Q::AtMostOnce),
            ("x5/1", Q::AtLeastOnce),
            ("x5/2", Q::ExactlyOnce),
        ],
    );
    assert_eq!(
        reasons,
        [
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::GRANTED_QOS_2
        ]
    );
    publ.send(&enc(&Packet::Publish(publish5(
        "x5/0",
        b"zero",
        Q::AtMostOnce,
        false,
        0,
    ))));
    let p = recv_publish5(&mut sub);
    assert_eq!(
        (&p.topic[..], &p.payload[..], p.qos),
        ("x5/0", &b"zero"[..], Q::AtMostOnce)
    );
    assert!(p.props.is_none());

    publ.send(&enc(&Packet::Publish(publish5(
        "x5/1",
        b"one",
        Q::AtLeastOnce,
        false,
        11,
    ))));
    match dec(&publ.recv_kind(PUBACK)) {
        Packet::PubAckV5(a) => assert_eq!((a.pkid, a.reason), (11, ReasonCode::SUCCESS)),
        p => panic!("{p:?}"),
    }
    let p = recv_publish5(&mut sub);
    assert_eq!((&p.payload[..], p.qos), (&b"one"[..], Q::AtLeastOnce));
    sub.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));

    publ.send(&enc(&Packet::Publish(publish5(
        "x5/2",
        b"two",
        Q::ExactlyOnce,
        false,
        12,
    ))));
    assert!(matches!(dec(&publ.recv_kind(PUBREC)), Packet::PubRecV5(a) if a.pkid == 12));
    publ.send(&enc(&Packet::PubRelV5(Ack::success(12))));
    assert!(matches!(dec(&publ.recv_kind(PUBCOMP)), Packet::PubCompV5(a) if a.pkid == 12));
    let p = recv_publish5(&mut sub);
    assert_eq!((&p.payload[..], p.qos), (&b"two"[..], Q::ExactlyOnce));
    sub.send(&enc(&Packet::PubRecV5(Ack::success(p.pkid))));
    assert!(matches!(dec(&sub.recv_kind(PUBREL)), Packet::PubRelV5(a) if a.pkid == p.pkid));
    sub.send(&enc(&Packet::PubCompV5(Ack::success(p.pkid))));

    sub.send(&enc(&Packet::Unsubscribe(Unsubscribe {
        pkid: 8,
        filters: vec!["x5/0".into()],
        user: UserProperties::new(),
    })));
    match dec(&sub.recv_kind(UNSUBACK)) {
        Packet::UnsubAckV5(u) => {
            assert_eq!((u.pkid, &u.reasons[..]), (8, &[ReasonCode::SUCCESS][..]))
        }
        p => panic!("{p:?}"),
    }
    sub.expect_silence(QUIET);
    wait_stats(&b, "nothing in flight", |s| s.inflight == 0);
}

fn forward_props() -> bytes::Bytes {
    use shardmq::protocol::properties::{Properties, Property};
    let mut p = Properties::new();
    p.push(Property::ContentType("text/plain".into()));
    p.push(Property::UserProperty("k".into(), "v1".into()));
    p.push(Property::ResponseTopic("reply/here".into()));
    p.push(Property::CorrelationData(bytes::Bytes::from_static(
        b"corr",
    )));
    p.push(Property::UserProperty("k".into(), "v2".into()));
    PublishProps::encode_forward(&p)
}

#[test]
fn publish_properties_are_forwarded_in_order_with_the_remaining_expiry() {
    let b = broker();
    let addr = b.local_addr();
    let mut sub = client5(addr, connect5(&id_on_shard("sub", 0)));
    subscribe5(&mut sub, 1, &[("props/#", Q::AtLeastOnce)]);
    let (mut sub3, _) = Raw::connect(addr, &id_on_shard("sub3", 0), true);
    sub3.send(&subscribe_packet(1, &[("props/#", 1)]));
    sub3.recv_kind(SUBACK);
    let mut publ = client5(addr, connect5(&id_on_shard("pub", 1)));
    for qos in [Q::AtMostOnce, Q::AtLeastOnce] {
        let mut p = publish5("props/a", b"with", qos, false, 3);
        p.props = Some(Box::new(PublishProps {
            message_expiry: Some(60),
            forward: forward_props(),
            ..PublishProps::default()
        }));
        publ.send(&enc(&Packet::Publish(p)));
        if qos == Q::AtLeastOnce {
            publ.recv_kind(PUBACK);
        }
        let got = recv_publish5(&mut sub);
        assert_eq!(&got.payload[..], b"with");
        let props = got.props.expect("properties forwarded");
        assert_eq!(props.forward, forward_props(), "unchanged and in order");
        let left = props.message_expiry.expect("remaining expiry");
        assert!(left > 0 && left <= 60, "{left}");
        assert!(props.topic_alias.is_none());
        if qos == Q::AtLeastOnce {
            sub.send(&enc(&Packet::PubAckV5(Ack::success(got.pkid))));
        }
        // The 3.1.1 subscriber gets the message without them.
        let p3 = sub3.expect_publish();
        assert_eq!(p3.payload, b"with");
        if qos == Q::AtLeastOnce {
            sub3.send(&puback(p3.pid));
        }
    }
}

#[test]
fn expired_messages_are_not_delivered() {
    let b = broker();
    let addr = b.local_addr();
    let id = id_on_shard("off", 1);
    let mut raw = client5(addr, persistent5(&id, 600));
    subscribe5(&mut raw, 1, &[("exp/#", Q::AtLeastOnce)]);
    disconnect5(&mut raw, ReasonCode::NORMAL_DISCONNECTION, None);
    let mut publ = client5(addr, connect5(&id_on_shard("pub", 0)));
    for (topic, expiry, retain) in [
        ("exp/short", 1, false),
        ("exp/long", 600, false),
        ("exp/retained", 1, true),
    ] {
        let mut p = publish5(topic, topic.as_bytes(), Q::AtLeastOnce, retain, 9);
        p.props = Some(Box::new(PublishProps {
            message_expiry: Some(expiry),
            ..PublishProps::default()
        }));
        publ.send(&enc(&Packet::Publish(p)));
        publ.recv_kind(PUBACK);
    }
    std::thread::sleep(Duration::from_millis(2100));
    let (mut raw, ack) = open5(addr, persistent5(&id, 600));
    assert!(ack.session_present);
    let p = recv_publish5(&mut raw);
    assert_eq!(&p.topic[..], "exp/long");
    let left = p.props.and_then(|p| p.message_expiry).expect("expiry");
    assert!(
        (590..=599).contains(&left),
        "the time queued is taken off: {left}"
    );
    raw.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));
    raw.expect_silence(QUIET);
    wait_stats(&b, "the expired ones counted", |s| s.dropped_expired >= 2);
    // An expired retained message is not sent on subscribe either.
    let mut late = client5(addr, connect5(&id_on_shard("late", 0)));
    subscribe5(&mut late, 1, &[("exp/retained", Q::AtLeastOnce)]);
    late.expect_silence(QUIET);
}

#[test]
fn will_properties_reach_5_0_subscribers() {
    let b = broker();
    let addr = b.local_addr();
    let mut sub = client5(addr, connect5(&id_on_shard("sub", 0)));
    subscribe5(&mut sub, 1, &[("wp/#", Q::AtMostOnce)]);
    let mut c = connect5(&id_on_shard("w", 1));
    c.will = Some(LastWill {
        topic: "wp/x".into(),
        payload: bytes::Bytes::from_static(b"bye"),
        qos: Q::AtMostOnce,
        retain: false,
        props: WillProps {
            message_expiry: Some(30),
            forward: forward_props(),
            ..WillProps::default()
        },
    });
    drop(client5(addr, c));
    let p = recv_publish5(&mut sub);
    let props = p.props.expect("will properties");
    assert_eq!(props.forward, forward_props());
    assert!(props.message_expiry.is_some_and(|s| s <= 30));
}

#[test]
fn v311_and_v5_clients_exchange_messages_retained_messages_and_wills() {
    let b = broker();
    let addr = b.local_addr();
    let mut sub5 = client5(addr, connect5(&id_on_shard("sub5", 0)));
    let (mut sub3, _) = Raw::connect(addr, &id_on_shard("sub3", 1), true);
    subscribe5(&mut sub5, 1, &[("mix/#", Q::AtLeastOnce)]);
    sub3.send(&subscribe_packet(1, &[("mix/#", 1)]));
    sub3.recv_kind(SUBACK);

    // 3.1.1 publisher → both.
    let (mut pub3, _) = Raw::connect(addr, &id_on_shard("pub3", 1), true);
    pub3.send(&publish_packet("mix/from3", b"three", 1, false, false, 5));
    pub3.recv_kind(PUBACK);
    let p = recv_publish5(&mut sub5);
    assert_eq!((&p.topic[..], &p.payload[..]), ("mix/from3", &b"three"[..]));
    sub5.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));
    let p = sub3.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("mix/from3", &b"three"[..])
    );
    sub3.send(&puback(p.pid));

    // 5.0 publisher (with properties) → both; the 3.1.1 one gets a 3.1.1 PUBLISH.
    let mut pub5 = client5(addr, connect5(&id_on_shard("pub5", 0)));
    let mut m = publish5("mix/from5", b"five", Q::AtLeastOnce, false, 6);
    m.props = Some(Box::new(PublishProps {
        message_expiry: Some(100),
        ..PublishProps::default()
    }));
    pub5.send(&enc(&Packet::Publish(m)));
    pub5.recv_kind(PUBACK);
    let p = sub3.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("mix/from5", &b"five"[..])
    );
    sub3.send(&puback(p.pid));
    let p = recv_publish5(&mut sub5);
    assert_eq!(&p.payload[..], b"five");
    sub5.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));

    // Retained, both ways.
    pub3.send(&publish_packet("ret/from3", b"r3", 0, true, false, 0));
    pub5.send(&enc(&Packet::Publish(publish5(
        "ret/from5",
        b"r5",
        Q::AtMostOnce,
        true,
        0,
    ))));
    wait_stats(&b, "two retained", |s| s.retained >= 2);
    let mut late5 = client5(addr, connect5(&id_on_shard("late5", 1)));
    subscribe5(&mut late5, 2, &[("ret/from3", Q::AtMostOnce)]);
    let p = recv_publish5(&mut late5);
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"r3");
    let (mut late3, _) = Raw::connect(addr, &id_on_shard("late3", 0), true);
    late3.send(&subscribe_packet(2, &[("ret/from5", 0)]));
    late3.recv_kind(SUBACK);
    let p = late3.expect_publish();
    assert!(p.retain);
    assert_eq!(p.payload, b"r5");

    // Wills, both ways (connections dropped without DISCONNECT).
    let mut c = connect5(&id_on_shard("will5", 1));
    c.will = Some(LastWill {
        topic: "mix/will5".into(),
        payload: bytes::Bytes::from_static(b"gone5"),
        qos: Q::AtLeastOnce,
        retain: false,
        props: WillProps::default(),
    });
    drop(client5(addr, c));
    let p = sub3.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("mix/will5", &b"gone5"[..])
    );
    sub3.send(&puback(p.pid));
    let p = recv_publish5(&mut sub5);
    assert_eq!(&p.payload[..], b"gone5");
    sub5.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));

    let opts =
        ConnectOpts::new(&id_on_shard("will3", 0), true).will("mix/will3", b"gone3", 1, false);
    drop(Raw::connect_with(addr, &opts).0);
    let p = recv_publish5(&mut sub5);
    assert_eq!((&p.topic[..], &p.payload[..]), ("mix/will3", &b"gone3"[..]));
}

#[test]
fn rumqttc_v5_clients_publish_and_subscribe_across_shards() {
    use rumqttc::v5::mqttbytes::QoS as RQ;
    use rumqttc::v5::{Client, Event, Incoming, MqttOptions};
    use rumqttc::Outgoing;
    let b = broker();
    let addr = b.local_addr();
    let start = |id: String| {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        Client::new(o, 64)
    };
    let (sub, mut sub_conn) = start(id_on_shard("rsub", 0));
    let (publ, mut pub_conn) = start(id_on_shard("rpub", 1));
    let next = |c: &mut rumqttc::v5::Connection| -> Incoming {
        loop {
            match c.recv_timeout(TIMEOUT) {
                Ok(Ok(Event::Incoming(i))) => return i,
                Ok(Ok(Event::Outgoing(_))) => {}
                other => panic!("rumqttc: {other:?}"),
            }
        }
    };
    assert!(matches!(next(&mut sub_conn), Incoming::ConnAck(_)));
    assert!(matches!(next(&mut pub_conn), Incoming::ConnAck(_)));
    sub.subscribe("r5/+", RQ::ExactlyOnce).unwrap();
    match next(&mut sub_conn) {
        Incoming::SubAck(s) => assert_eq!(s.return_codes.len(), 1),
        i => panic!("{i:?}"),
    }
    for (i, q) in [RQ::AtMostOnce, RQ::AtLeastOnce, RQ::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publ.publish(format!("r5/{i}"), q, false, vec![i as u8; 3])
            .unwrap();
        // The publisher's loop sends it, and takes its acks.
        loop {
            match pub_conn.recv_timeout(TIMEOUT) {
                Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) if q == RQ::AtMostOnce => break,
                Ok(Ok(Event::Incoming(Incoming::PubAck(_) | Incoming::PubComp(_)))) => break,
                Ok(Ok(_)) => {}
                other => panic!("rumqttc: {other:?}"),
            }
        }
        let got = loop {
            if let Incoming::Publish(p) = next(&mut sub_conn) {
                break p;
            }
        };
        assert_eq!(&got.topic[..], format!("r5/{i}").as_bytes());
        assert_eq!(got.qos, q);
        assert_eq!(&got.payload[..], &[i as u8; 3][..]);
    }
}

// ---------------------------------------------------------------------------------
// DISCONNECT from the broker, and from the client
// ---------------------------------------------------------------------------------

/// Sends `bad` after CONNECT and expects DISCONNECT `reason` then close, while a
/// bystander on the other shard keeps receiving.
fn violation(bad: &[u8], reason: ReasonCode, what: &str, cfg: impl FnOnce(&mut Config)) {
    let b = broker_with(cfg);
    let addr = b.local_addr();
    let mut by = client5(addr, connect5(&id_on_shard("by", 1)));
    subscribe5(&mut by, 1, &[("by", Q::AtMostOnce)]);
    let mut raw = client5(addr, connect5(&id_on_shard("bad", 0)));
    raw.send(bad);
    expect_disconnect(&mut raw, reason, what);
    let mut p = client5(addr, connect5(&id_on_shard("p", 0)));
    p.send(&enc(&Packet::Publish(publish5(
        "by",
        b"ok",
        Q::AtMostOnce,
        false,
        0,
    ))));
    assert_eq!(&recv_publish5(&mut by).payload[..], b"ok", "{what}");
}

#[test]
fn malformed_packet_gets_disconnect_0x81() {
    // PUBLISH with QoS 3.
    violation(
        &[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01],
        ReasonCode::MALFORMED_PACKET,
        "QoS 3",
        |_| {},
    );
}

#[test]
fn protocol_errors_get_disconnect_0x82() {
    let second_connect = enc(&Packet::Connect(Box::new(connect5("again"))));
    violation(
        &second_connect,
        ReasonCode::PROTOCOL_ERROR,
        "second CONNECT",
        |_| {},
    );
    let auth = enc(&Packet::Auth(Box::new(Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        method: Some("X".into()),
        data: None,
        reason_string: None,
        user: UserProperties::new(),
    })));
    violation(
        &auth,
        ReasonCode::PROTOCOL_ERROR,
        "AUTH without a method",
        |_| {},
    );
}

#[test]
fn packet_too_large_gets_disconnect_0x95() {
    let big = enc(&Packet::Publish(publish5(
        "t",
        &[0u8; 200],
        Q::AtMostOnce,
        false,
        0,
    )));
    violation(&big, ReasonCode::PACKET_TOO_LARGE, "too large", |c| {
        c.max_packet_size = 100
    });
}

#[test]
fn topic_alias_gets_disconnect_0x94() {
    let mut p = publish5("a/b", b"x", Q::AtMostOnce, false, 0);
    p.props = Some(Box::new(PublishProps {
        topic_alias: NonZeroU16::new(1),
        ..PublishProps::default()
    }));
    violation(
        &enc(&Packet::Publish(p)),
        ReasonCode::TOPIC_ALIAS_INVALID,
        "alias with topic_alias_maximum 0",
        |c| c.topic_alias_maximum = 0,
    );
}

#[test]
fn subscription_identifiers_come_with_the_messages_they_matched() {
    let b = broker();
    let addr = b.local_addr();
    let mut sub = client5(addr, connect5(&id_on_shard("si", 1)));
    let with_id = |raw: &mut Raw, pkid: u16, f: &str, id: Option<u32>| {
        raw.send(&enc(&Packet::Subscribe(Subscribe {
            pkid,
            filters: vec![filter(f, Q::AtLeastOnce)],
            id: id.and_then(NonZeroU32::new),
            user: UserProperties::new(),
        })));
        raw.recv_kind(SUBACK);
    };
    with_id(&mut sub, 1, "si/#", Some(5));
    with_id(&mut sub, 2, "si/a/+", Some(7));
    with_id(&mut sub, 3, "si/plain", None);
    let mut publ = client5(addr, connect5(&id_on_shard("sip", 0)));
    let ids_for = |sub: &mut Raw, publ: &mut Raw, topic: &str| -> Vec<u32> {
        publ.send(&enc(&Packet::Publish(publish5(
            topic,
            b"x",
            Q::AtMostOnce,
            false,
            0,
        ))));
        let p = recv_publish5(sub);
        assert_eq!(&p.topic[..], topic);
        p.props
            .map(|p| p.subscription_ids.iter().map(|i| i.get()).collect())
            .unwrap_or_default()
    };
    assert_eq!(ids_for(&mut sub, &mut publ, "si/a/b"), [5, 7]);
    assert_eq!(ids_for(&mut sub, &mut publ, "si/q"), [5]);
    assert_eq!(ids_for(&mut sub, &mut publ, "si/plain"), [5]);
    // Subscribing again without an identifier removes it.
    with_id(&mut sub, 4, "si/#", None);
    assert_eq!(ids_for(&mut sub, &mut publ, "si/a/c"), [7]);
    assert_eq!(ids_for(&mut sub, &mut publ, "si/z"), Vec::<u32>::new());
}

#[test]
fn takeover_gets_disconnect_0x8e() {
    let b = broker();
    let id = unique("take");
    let mut old = client5(b.local_addr(), connect5(&id));
    let _new = client5(b.local_addr(), connect5(&id));
    expect_disconnect(&mut old, ReasonCode::SESSION_TAKEN_OVER, "takeover");
}

#[test]
fn keep_alive_timeout_gets_disconnect_0x8d() {
    let b = broker();
    let mut c = connect5(&unique("ka"));
    c.keep_alive = 1;
    let mut raw = client5(b.local_addr(), c);
    expect_disconnect(&mut raw, ReasonCode::KEEP_ALIVE_TIMEOUT, "keep-alive");
}

#[test]
fn shutdown_gets_disconnect_0x8b() {
    let b = broker();
    let mut raw = client5(b.local_addr(), connect5(&unique("down")));
    b.shutdown();
    expect_disconnect(&mut raw, ReasonCode::SERVER_SHUTTING_DOWN, "shutdown");
}

#[test]
fn disconnect_with_will_message_publishes_the_will_and_normal_disconnect_does_not() {
    let b = broker();
    let addr = b.local_addr();
    let (mut watch, _) = Raw::connect(addr, &id_on_shard("watch", 0), true);
    watch.send(&subscribe_packet(1, &[("wills/#", 0)]));
    watch.recv_kind(SUBACK);
    for (reason, published) in [
        (ReasonCode::DISCONNECT_WITH_WILL, true),
        (ReasonCode::NORMAL_DISCONNECTION, false),
    ] {
        let mut c = connect5(&id_on_shard("w", 1));
        c.will = Some(LastWill {
            topic: format!("wills/{}", reason.0).into(),
            payload: bytes::Bytes::from_static(b"bye"),
            qos: Q::AtMostOnce,
            retain: false,
            props: WillProps::default(),
        });
        let mut raw = client5(addr, c);
        raw.send(&enc(&Packet::DisconnectV5(Box::new(DisconnectV5::new(
            reason,
        )))));
        raw.expect_closed();
        if published {
            let p = watch.expect_publish();
            assert_eq!(p.topic, "wills/4");
        } else {
            watch.expect_silence(QUIET);
        }
    }
}

// ---------------------------------------------------------------------------------
// Session expiry and will delay
// ---------------------------------------------------------------------------------

fn persistent5(id: &str, expiry: u32) -> Connect {
    let mut c = connect5(id);
    c.clean_session = false;
    c.props.session_expiry = expiry;
    c
}

fn disconnect5(raw: &mut Raw, reason: ReasonCode, expiry: Option<u32>) {
    let mut d = DisconnectV5::new(reason);
    d.session_expiry = expiry;
    raw.send(&enc(&Packet::DisconnectV5(Box::new(d))));
    raw.expect_closed();
}

#[test]
fn session_expiry_0_ends_the_session_with_the_connection() {
    let b = broker();
    let id = unique("se0");
    let mut raw = client5(b.local_addr(), persistent5(&id, 0));
    subscribe5(&mut raw, 1, &[("se0", Q::AtLeastOnce)]);
    disconnect5(&mut raw, ReasonCode::NORMAL_DISCONNECTION, None);
    let (_raw, ack) = open5(b.local_addr(), persistent5(&id, 0));
    assert!(!ack.session_present);
}

#[test]
fn session_expiry_keeps_the_session_and_its_messages_until_it_expires() {
    let b = broker();
    let addr = b.local_addr();
    let id = id_on_shard("se", 1);
    let mut raw = client5(addr, persistent5(&id, 2));
    subscribe5(&mut raw, 1, &[("se/t", Q::AtLeastOnce)]);
    disconnect5(&mut raw, ReasonCode::NORMAL_DISCONNECTION, None);
    // Queued while offline, delivered on resume.
    let mut publ = client5(addr, connect5(&id_on_shard("sep", 0)));
    publ.send(&enc(&Packet::Publish(publish5(
        "se/t",
        b"kept",
        Q::AtLeastOnce,
        false,
        1,
    ))));
    publ.recv_kind(PUBACK);
    let (mut raw, ack) = open5(addr, persistent5(&id, 2));
    assert!(ack.session_present);
    let p = recv_publish5(&mut raw);
    assert_eq!(&p.payload[..], b"kept");
    raw.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));
    disconnect5(&mut raw, ReasonCode::NORMAL_DISCONNECTION, None);
    // Past the interval (2 s, swept within a second): gone.
    std::thread::sleep(Duration::from_millis(3500));
    let (_raw, ack) = open5(addr, persistent5(&id, 2));
    assert!(!ack.session_present);
}

#[test]
fn disconnect_may_shorten_the_expiry_but_not_raise_it_from_0() {
    let b = broker();
    let id = unique("sed");
    let mut raw = client5(b.local_addr(), persistent5(&id, 600));
    disconnect5(&mut raw, ReasonCode::NORMAL_DISCONNECTION, Some(0));
    let (mut raw, ack) = open5(b.local_addr(), persistent5(&id, 0));
    assert!(!ack.session_present, "DISCONNECT set the expiry to 0");
    let mut d = DisconnectV5::new(ReasonCode::NORMAL_DISCONNECTION);
    d.session_expiry = Some(60);
    raw.send(&enc(&Packet::DisconnectV5(Box::new(d))));
    expect_disconnect(&mut raw, ReasonCode::PROTOCOL_ERROR, "expiry raised from 0");
}

#[test]
fn max_session_expiry_bounds_the_interval_and_connack_says_so() {
    let b = broker_with(|c| c.max_session_expiry = 1);
    let id = unique("sem");
    let (mut raw, ack) = open5(b.local_addr(), persistent5(&id, 100));
    assert_eq!(ack.props.session_expiry, Some(1));
    disconnect5(&mut raw, ReasonCode::NORMAL_DISCONNECTION, None);
    std::thread::sleep(Duration::from_millis(2500));
    let (_raw, ack) = open5(b.local_addr(), persistent5(&id, 100));
    assert!(!ack.session_present);
    // Within the bound: nothing said.
    let (_raw, ack) = open5(b.local_addr(), persistent5(&unique("sem"), 1));
    assert_eq!(ack.props.session_expiry, None);
}

fn with_delayed_will(mut c: Connect, topic: &str, delay: u32) -> Connect {
    c.will = Some(LastWill {
        topic: topic.into(),
        payload: bytes::Bytes::from_static(b"late"),
        qos: Q::AtMostOnce,
        retain: false,
        props: WillProps {
            delay_interval: delay,
            ..WillProps::default()
        },
    });
    c
}

#[test]
fn will_delay_defers_the_will_and_a_resume_in_time_cancels_it() {
    let b = broker();
    let addr = b.local_addr();
    let (mut watch, _) = Raw::connect(addr, &id_on_shard("watch", 0), true);
    watch.send(&subscribe_packet(1, &[("delayed/#", 0)]));
    watch.recv_kind(SUBACK);

    // Delay 1 s, session 60 s: the will comes after the delay.
    let id = id_on_shard("wd", 1);
    drop(client5(
        addr,
        with_delayed_will(persistent5(&id, 60), "delayed/a", 1),
    ));
    // Never before the delay [MQTT-3.1.3-9] (the delay starts when the broker sees
    // the connection go, after this drop).
    watch.expect_silence(Duration::from_millis(950));
    let p = watch
        .recv_within(Duration::from_secs(3))
        .expect("delayed will");
    assert_eq!(p.publish().topic, "delayed/a");

    // Delay 2 s, resumed after a moment: never sent.
    let id = id_on_shard("wr", 1);
    drop(client5(
        addr,
        with_delayed_will(persistent5(&id, 60), "delayed/b", 2),
    ));
    std::thread::sleep(Duration::from_millis(300));
    let (_again, ack) = open5(addr, persistent5(&id, 60));
    assert!(ack.session_present);
    watch.expect_silence(Duration::from_millis(3000));

    // Delay 30 s, session 1 s: sent when the session ends.
    let id = id_on_shard("we", 0);
    drop(client5(
        addr,
        with_delayed_will(persistent5(&id, 1), "delayed/c", 30),
    ));
    let p = watch
        .recv_within(Duration::from_secs(4))
        .expect("will at session end");
    assert_eq!(p.publish().topic, "delayed/c");
}

// ---------------------------------------------------------------------------------
// Subscription options
// ---------------------------------------------------------------------------------

fn subscribe_opts(raw: &mut Raw, pkid: u16, f: SubscribeFilter) -> Vec<ReasonCode> {
    raw.send(&enc(&Packet::Subscribe(Subscribe {
        pkid,
        filters: vec![f],
        id: None,
        user: UserProperties::new(),
    })));
    match dec(&raw.recv_kind(SUBACK)) {
        Packet::SubAckV5(s) => s.reasons,
        p => panic!("expected a 5.0 SUBACK, got {p:?}"),
    }
}

#[test]
fn no_local_keeps_a_clients_own_messages_from_it() {
    let b = broker();
    let addr = b.local_addr();
    let mut me = client5(addr, connect5(&id_on_shard("me", 0)));
    let mut other = client5(addr, connect5(&id_on_shard("other", 1)));
    subscribe5(&mut other, 1, &[("nl/#", Q::AtMostOnce)]);
    let mut f = filter("nl/#", Q::AtLeastOnce);
    f.no_local = true;
    subscribe_opts(&mut me, 1, f);
    subscribe5(&mut me, 2, &[("nl/both", Q::AtMostOnce)]);
    me.send(&enc(&Packet::Publish(publish5(
        "nl/a",
        b"a",
        Q::AtMostOnce,
        false,
        0,
    ))));
    me.send(&enc(&Packet::Publish(publish5(
        "nl/both",
        b"b",
        Q::AtLeastOnce,
        false,
        4,
    ))));
    me.recv_kind(PUBACK);
    // Through the subscription without No Local only, at its QoS.
    let p = recv_publish5(&mut me);
    assert_eq!((&p.topic[..], p.qos), ("nl/both", Q::AtMostOnce));
    me.expect_silence(QUIET);
    assert_eq!(&recv_publish5(&mut other).topic[..], "nl/a");
    assert_eq!(&recv_publish5(&mut other).topic[..], "nl/both");
    // Others' messages still arrive through a No Local subscription.
    other.send(&enc(&Packet::Publish(publish5(
        "nl/x",
        b"x",
        Q::AtMostOnce,
        false,
        0,
    ))));
    assert_eq!(&recv_publish5(&mut me).topic[..], "nl/x");
}

#[test]
fn retain_handling_0_1_2() {
    let b = broker();
    let addr = b.local_addr();
    let mut publ = client5(addr, connect5(&id_on_shard("p", 0)));
    publ.send(&enc(&Packet::Publish(publish5(
        "rh/t",
        b"kept",
        Q::AtMostOnce,
        true,
        0,
    ))));
    wait_stats(&b, "retained", |s| s.retained >= 1);
    let mut sub = client5(addr, connect5(&id_on_shard("s", 1)));
    let with = |rh: u8| {
        let mut f = filter("rh/t", Q::AtMostOnce);
        f.retain_handling = match rh {
            0 => shardmq::protocol::RetainHandling::OnSubscribe,
            1 => shardmq::protocol::RetainHandling::OnNewSubscription,
            _ => shardmq::protocol::RetainHandling::Never,
        };
        f
    };
    subscribe_opts(&mut sub, 1, with(2));
    sub.expect_silence(QUIET);
    sub.send(&enc(&Packet::Unsubscribe(Unsubscribe {
        pkid: 2,
        filters: vec!["rh/t".into()],
        user: UserProperties::new(),
    })));
    sub.recv_kind(UNSUBACK);
    subscribe_opts(&mut sub, 3, with(1));
    assert!(
        recv_publish5(&mut sub).retain,
        "1: a new subscription gets them"
    );
    subscribe_opts(&mut sub, 4, with(1));
    sub.expect_silence(QUIET);
    subscribe_opts(&mut sub, 5, with(0));
    assert!(
        recv_publish5(&mut sub).retain,
        "0: every subscribe gets them"
    );
}

/// Retain As Published [MQTT-3.3.1-12, MQTT-3.3.1-13]: a live message published with
/// RETAIN keeps the flag through a subscription with the option, and loses it
/// through one without, whichever shard the publisher is on; each subscriber gets
/// it once. A message published without RETAIN goes without it either way.
#[test]
fn retain_as_published_keeps_the_flag_of_live_messages() {
    let b = broker();
    let addr = b.local_addr();
    let mut keep = Vec::new();
    let mut plain = Vec::new();
    for shard in 0..2 {
        let mut k = client5(addr, connect5(&id_on_shard("rap-keep", shard)));
        let mut f = filter("rap/#", Q::AtLeastOnce);
        f.retain_as_published = true;
        subscribe_opts(&mut k, 1, f);
        keep.push(k);
        let mut p = client5(addr, connect5(&id_on_shard("rap-plain", shard)));
        subscribe5(&mut p, 1, &[("rap/#", Q::AtLeastOnce)]);
        plain.push(p);
    }
    for shard in 0..2 {
        let mut publ = client5(addr, connect5(&id_on_shard("rap-pub", shard)));
        let topic = format!("rap/{shard}");
        publ.send(&enc(&Packet::Publish(publish5(
            &topic,
            b"kept",
            Q::AtLeastOnce,
            true,
            1,
        ))));
        publ.recv_kind(PUBACK);
        publ.send(&enc(&Packet::Publish(publish5(
            &topic,
            b"live",
            Q::AtLeastOnce,
            false,
            2,
        ))));
        publ.recv_kind(PUBACK);
        for (subs, flag) in [(&mut keep, true), (&mut plain, false)] {
            for s in subs.iter_mut() {
                let p = recv_publish5(s);
                assert_eq!((&p.topic[..], &p.payload[..]), (&topic[..], &b"kept"[..]));
                assert_eq!(p.retain, flag, "published with RETAIN, option {flag}");
                s.send(&enc(&Packet::PubAck(p.pkid)));
                let p = recv_publish5(s);
                assert_eq!(&p.payload[..], b"live");
                assert!(!p.retain, "published without RETAIN");
                s.send(&enc(&Packet::PubAck(p.pkid)));
            }
        }
    }
    for s in keep.iter_mut().chain(plain.iter_mut()) {
        s.expect_silence(QUIET);
    }
}

#[test]
fn suback_reason_codes_say_why_a_filter_was_refused() {
    let acl = std::env::temp_dir().join(format!("{}.acl", unique("mqtt5-acl")));
    std::fs::write(&acl, "topic readwrite ok/#\n").unwrap();
    let path = acl.clone();
    let b = broker_with(move |c| {
        c.acl_file = Some(path);
        c.max_subscriptions_per_client = 2;
    });
    let mut raw = client5(b.local_addr(), connect5(&unique("codes")));
    let reasons = subscribe5(
        &mut raw,
        1,
        &[
            ("ok/a", Q::AtLeastOnce),
            ("ok/#/bad", Q::AtMostOnce),
            ("secret/x", Q::AtMostOnce),
            ("ok/b", Q::ExactlyOnce),
            ("ok/c", Q::AtMostOnce),
        ],
    );
    assert_eq!(
        reasons,
        [
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::NOT_AUTHORIZED,
            ReasonCode::GRANTED_QOS_2,
            ReasonCode::QUOTA_EXCEEDED,
        ]
    );
    let _ = std::fs::remove_file(acl);
}

// ---------------------------------------------------------------------------------
// Flow control
// ---------------------------------------------------------------------------------

#[test]
fn the_clients_receive_maximum_caps_what_is_in_flight_to_it() {
    let b = broker();
    let addr = b.local_addr();
    let mut c = connect5(&id_on_shard("rm", 1));
    c.props.receive_maximum = NonZeroU16::new(2).unwrap();
    let mut sub = client5(addr, c);
    subscribe5(&mut sub, 1, &[("rm/t", Q::AtLeastOnce)]);
    let mut publ = client5(addr, connect5(&id_on_shard("rmp", 0)));
    for i in 0..5u16 {
        publ.send(&enc(&Packet::Publish(publish5(
            "rm/t",
            &[i as u8],
            Q::AtLeastOnce,
            false,
            i + 1,
        ))));
        publ.recv_kind(PUBACK);
    }
    let first = recv_publish5(&mut sub);
    let second = recv_publish5(&mut sub);
    sub.expect_silence(QUIET);
    sub.send(&enc(&Packet::PubAckV5(Ack::success(first.pkid))));
    let third = recv_publish5(&mut sub);
    assert_eq!(
        [first.payload[0], second.payload[0], third.payload[0]],
        [0, 1, 2]
    );
    sub.expect_silence(QUIET);
}

#[test]
fn more_qos2_publishes_than_the_receive_maximum_get_disconnect_0x93() {
    let mut bad = Vec::new();
    for pkid in 1..=3 {
        bad.extend(enc(&Packet::Publish(publish5(
            "rmx",
            b"x",
            Q::ExactlyOnce,
            false,
            pkid,
        ))));
    }
    violation(
        &bad,
        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
        "receive maximum",
        |c| c.receive_maximum = 2,
    );
}

#[test]
fn a_message_over_the_clients_maximum_packet_size_is_dropped_for_it_and_counted() {
    let b = broker();
    let addr = b.local_addr();
    let mut c = connect5(&id_on_shard("mps", 1));
    c.props.maximum_packet_size = NonZeroU32::new(100);
    let mut small = client5(addr, c);
    subscribe5(&mut small, 1, &[("mps/#", Q::AtLeastOnce)]);
    let (mut sub3, _) = Raw::connect(addr, &id_on_shard("mps3", 1), true);
    sub3.send(&subscribe_packet(1, &[("mps/#", 0)]));
    sub3.recv_kind(SUBACK);
    let mut publ = client5(addr, connect5(&id_on_shard("mpsp", 0)));
    for qos in [Q::AtMostOnce, Q::AtLeastOnce] {
        publ.send(&enc(&Packet::Publish(publish5(
            "mps/big", &[7; 200], qos, false, 1,
        ))));
        publ.send(&enc(&Packet::Publish(publish5(
            "mps/small",
            b"ok",
            qos,
            false,
            2,
        ))));
        let p = recv_publish5(&mut small);
        assert_eq!(&p.topic[..], "mps/small");
        if qos == Q::AtLeastOnce {
            small.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));
        }
        assert_eq!(sub3.expect_publish().topic, "mps/big");
        assert_eq!(sub3.expect_publish().topic, "mps/small");
    }
    small.expect_silence(QUIET);
    wait_stats(&b, "two dropped as too large", |s| s.dropped_too_large == 2);
}

// ---------------------------------------------------------------------------------
// Topic aliases
// ---------------------------------------------------------------------------------

fn aliased(topic: &str, alias: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = publish5(topic, payload, Q::AtMostOnce, false, 0);
    p.props = Some(Box::new(PublishProps {
        topic_alias: NonZeroU16::new(alias),
        ..PublishProps::default()
    }));
    enc(&Packet::Publish(p))
}

#[test]
fn a_clients_topic_aliases_stand_for_their_topics() {
    let b = broker();
    let addr = b.local_addr();
    let (mut sub3, _) = Raw::connect(addr, &id_on_shard("tas", 1), true);
    sub3.send(&subscribe_packet(1, &[("ta/#", 0)]));
    sub3.recv_kind(SUBACK);
    let mut publ = client5(addr, connect5(&id_on_shard("tap", 0)));
    publ.send(&aliased("ta/first", 1, b"1"));
    publ.send(&aliased("", 1, b"2"));
    publ.send(&aliased("ta/second", 1, b"3"));
    publ.send(&aliased("", 1, b"4"));
    for (topic, payload) in [
        ("ta/first", "1"),
        ("ta/first", "2"),
        ("ta/second", "3"),
        ("ta/second", "4"),
    ] {
        let p = sub3.expect_publish();
        assert_eq!(
            (p.topic.as_str(), p.payload_str().as_str()),
            (topic, payload)
        );
    }
}

#[test]
fn topic_alias_errors_get_their_disconnect_reasons() {
    violation(
        &aliased("a", 11, b"x"),
        ReasonCode::TOPIC_ALIAS_INVALID,
        "above the maximum (10)",
        |_| {},
    );
    violation(
        &aliased("", 3, b"x"),
        ReasonCode::PROTOCOL_ERROR,
        "an alias never set",
        |_| {},
    );
    // Alias 0 is refused by the decoder with the same reason.
    let mut zero = aliased("a", 1, b"x");
    let at = zero.len() - 2; // the alias' low byte sits before the 1-byte payload
    zero[at] = 0;
    violation(&zero, ReasonCode::TOPIC_ALIAS_INVALID, "alias 0", |_| {});
}

#[test]
fn the_broker_uses_aliases_toward_a_client_that_accepts_them() {
    let b = broker();
    let addr = b.local_addr();
    let mut c = connect5(&id_on_shard("tac", 1));
    c.props.topic_alias_maximum = 2;
    let mut sub = client5(addr, c);
    subscribe5(&mut sub, 1, &[("out/#", Q::AtLeastOnce)]);
    let mut publ = client5(addr, connect5(&id_on_shard("tacp", 0)));
    let mut got = Vec::new();
    for (i, topic) in ["out/a", "out/a", "out/b", "out/c", "out/b", "out/c"]
        .into_iter()
        .enumerate()
    {
        let qos = if i % 2 == 0 {
            Q::AtMostOnce
        } else {
            Q::AtLeastOnce
        };
        publ.send(&enc(&Packet::Publish(publish5(topic, b"x", qos, false, 1))));
        let p = recv_publish5(&mut sub);
        if p.qos == Q::AtLeastOnce {
            sub.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));
        }
        let alias = p.props.and_then(|p| p.topic_alias).map(|a| a.get());
        got.push((p.topic.to_string(), alias));
    }
    let want: Vec<(String, Option<u16>)> = [
        ("out/a", Some(1)),
        ("", Some(1)),
        ("out/b", Some(2)),
        ("out/c", None),
        ("", Some(2)),
        ("out/c", None),
    ]
    .into_iter()
    .map(|(t, a)| (t.to_string(), a))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn a_shared_group_of_5_0_and_3_1_1_members_gets_each_message_once() {
    let b = broker();
    let addr = b.local_addr();
    let mut m1 = client5(addr, connect5(&id_on_shard("m1", 0)));
    let mut m2 = client5(addr, connect5(&id_on_shard("m2", 1)));
    let (mut m3, _) = Raw::connect(addr, &id_on_shard("m3", 1), true);
    subscribe5(&mut m1, 1, &[("$share/g/sh/#", Q::AtLeastOnce)]);
    subscribe5(&mut m2, 1, &[("$share/g/sh/#", Q::AtLeastOnce)]);
    m3.send(&subscribe_packet(1, &[("$share/g/sh/#", 1)]));
    m3.recv_kind(SUBACK);
    let mut publ = client5(addr, connect5(&id_on_shard("shp", 0)));
    for i in 0..9u16 {
        publ.send(&enc(&Packet::Publish(publish5(
            "sh/t",
            &[i as u8],
            Q::AtLeastOnce,
            false,
            i + 1,
        ))));
        publ.recv_kind(PUBACK);
    }
    let mut got = Vec::new();
    for m in [&mut m1, &mut m2] {
        while let Some(p) = m.recv_within(QUIET) {
            let p = match dec(&p) {
                Packet::Publish(p) => p,
                other => panic!("{other:?}"),
            };
            m.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));
            got.push(p.payload[0]);
        }
    }
    while let Some(p) = m3.recv_within(QUIET) {
        let p = p.publish();
        m3.send(&puback(p.pid));
        got.push(p.payload[0]);
    }
    got.sort_unstable();
    assert_eq!(
        got,
        (0..9).collect::<Vec<u8>>(),
        "each message exactly once"
    );
}

// ---------------------------------------------------------------------------------
// Enhanced authentication (AUTH): SCRAM-SHA-512 over the password file
// ---------------------------------------------------------------------------------

mod scram_auth {
    use super::*;
    use shardmq::auth::password::{PasswordFile, PasswordHash};
    use shardmq::auth::scram::client::ScramClient;

    const METHOD: &str = "SCRAM-SHA-512";

    /// A broker whose password file has alice (pencil) as `$7$` and old (a `$6$` hash).
    fn broker() -> (Broker, std::path::PathBuf) {
        let mut f = PasswordFile::default();
        f.set("alice", PasswordHash::new(b"pencil"));
        f.set(
            "old",
            PasswordHash::Sha512 {
                salt: b"salt".to_vec(),
                hash: vec![7; 64],
            },
        );
        let path = std::env::temp_dir().join(format!(
            "shardmq-scram-{}-{}",
            std::process::id(),
            unique("pw")
        ));
        std::fs::write(&path, f.to_string()).unwrap();
        let p = path.clone();
        (broker_with(move |c| c.password_file = Some(p)), path)
    }

    fn auth(reason: ReasonCode, method: &str, data: Option<String>) -> Vec<u8> {
        enc(&Packet::Auth(Box::new(Auth {
            reason,
            method: Some(method.into()),
            data: data.map(bytes::Bytes::from),
            reason_string: None,
            user: UserProperties::new(),
        })))
    }

    fn recv_auth(raw: &mut Raw) -> Auth {
        match dec(&raw.recv()) {
            Packet::Auth(a) => *a,
            p => panic!("expected AUTH, got {p:?}"),
        }
    }

    fn text(b: &Option<bytes::Bytes>) -> &str {
        std::str::from_utf8(b.as_deref().expect("authentication data")).unwrap()
    }

    /// CONNECT with client-first, the server's challenge answered: the connection
    /// with its CONNACK, and whether the server proved it knows the password.
    fn scram_connect(
        addr: SocketAddr,
        id: &str,
        user: &str,
        password: &[u8],
    ) -> (Raw, ConnAckV5, bool) {
        let mut scram = ScramClient::new(user, password, "rOprNGfwEbeRWgbNEkqO");
        let mut c = connect5(id);
        c.props.auth_method = Some(METHOD.into());
        c.props.auth_data = Some(scram.first().into());
        let mut raw = Raw::open(addr);
        raw.send(&enc(&Packet::Connect(Box::new(c))));
        let challenge = match dec(&raw.recv()) {
            Packet::Auth(a) => *a,
            Packet::ConnAckV5(ack) => return (raw, *ack, false),
            p => panic!("expected AUTH, got {p:?}"),
        };
        assert_eq!(challenge.reason, ReasonCode::CONTINUE_AUTHENTICATION);
        assert_eq!(challenge.method.as_deref(), Some(METHOD));
        let last = scram
            .last(text(&challenge.data))
            .expect("a valid server-first");
        raw.send(&auth(
            ReasonCode::CONTINUE_AUTHENTICATION,
            METHOD,
            Some(last),
        ));
        let ack = match dec(&raw.recv()) {
            Packet::ConnAckV5(ack) => *ack,
            p => panic!("expected CONNACK, got {p:?}"),
        };
        let proved = ack.props.auth_data.is_some() && scram.verify(text(&ack.props.auth_data));
        (raw, ack, proved)
    }

    #[test]
    fn scram_sha_512_connects_with_the_password_files_hash_both_ways_proven() {
        let (b, path) = broker();
        let addr = b.local_addr();
        for shard in 0..2 {
            let id = id_on_shard("scram", shard);
            let (mut raw, ack, proved) = scram_connect(addr, &id, "alice", b"pencil");
            assert_eq!(ack.reason, ReasonCode::SUCCESS, "{ack:?}");
            assert_eq!(ack.props.auth_method.as_deref(), Some(METHOD));
            assert!(
                proved,
                "the server's signature proves it has the password's hash"
            );
            // A working connection.
            subscribe5(&mut raw, 1, &[("t/scram", Q::AtMostOnce)]);
            raw.send(&enc(&Packet::Publish(publish5(
                "t/scram",
                b"hi",
                Q::AtMostOnce,
                false,
                0,
            ))));
            assert_eq!(&recv_publish5(&mut raw).payload[..], b"hi");
        }
        // Refusals: wrong password, unknown user, a `$6$` user, a CONNECT naming
        // another user than the one proven — CONNACK 0x87, then closed.
        for (user, pw, named) in [
            ("alice", &b"pen"[..], None),
            ("mallory", b"pencil", None),
            ("old", b"secret", None),
            ("alice", b"pencil", Some("old")),
        ] {
            let mut scram = ScramClient::new(user, pw, "abcdef");
            let mut c = connect5("refused");
            c.props.auth_method = Some(METHOD.into());
            c.props.auth_data = Some(scram.first().into());
            c.username = named.map(Into::into);
            let mut raw = Raw::open(addr);
            raw.send(&enc(&Packet::Connect(Box::new(c))));
            let ack = match dec(&raw.recv()) {
                Packet::Auth(challenge) => {
                    let last = scram.last(text(&challenge.data)).unwrap();
                    raw.send(&auth(
                        ReasonCode::CONTINUE_AUTHENTICATION,
                        METHOD,
                        Some(last),
                    ));
                    match dec(&raw.recv()) {
                        Packet::ConnAckV5(ack) => *ack,
                        p => panic!("expected CONNACK, got {p:?}"),
                    }
                }
                Packet::ConnAckV5(ack) => *ack,
                p => panic!("expected AUTH or CONNACK, got {p:?}"),
            };
            assert_eq!(
                ack.reason,
                ReasonCode::NOT_AUTHORIZED,
                "{user} {named:?}: {ack:?}"
            );
            raw.expect_closed();
        }
        // Another method: 0x8C.
        let mut c = connect5("other-method");
        c.props.auth_method = Some("SCRAM-SHA-256".into());
        refused_with(
            addr,
            c,
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "SCRAM-SHA-256",
        );
        // Something other than AUTH in the middle of the exchange: 0x82.
        let scram = ScramClient::new("alice", b"pencil", "abcdef");
        let mut c = connect5("not-auth");
        c.props.auth_method = Some(METHOD.into());
        c.props.auth_data = Some(scram.first().into());
        let mut raw = Raw::open(addr);
        raw.send(&enc(&Packet::Connect(Box::new(c))));
        recv_auth(&mut raw);
        raw.send(&[0xC0, 0x00]);
        let got = raw.expect_closed();
        match got.last().map(dec) {
            Some(Packet::ConnAckV5(ack)) => assert_eq!(ack.reason, ReasonCode::PROTOCOL_ERROR),
            p => panic!("expected CONNACK 0x82, got {p:?}"),
        }
        drop(b);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_client_re_authenticates_and_a_failed_re_authentication_disconnects() {
        let (b, path) = broker();
        let addr = b.local_addr();
        let (mut raw, ack, _) = scram_connect(addr, &id_on_shard("reauth", 1), "alice", b"pencil");
        assert_eq!(ack.reason, ReasonCode::SUCCESS, "{ack:?}");
        subscribe5(&mut raw, 1, &[("t/re", Q::AtLeastOnce)]);
        for round in 0..2 {
            let mut scram = ScramClient::new("alice", b"pencil", &format!("nonce{round}"));
            raw.send(&auth(
                ReasonCode::REAUTHENTICATE,
                METHOD,
                Some(scram.first()),
            ));
            let challenge = recv_auth(&mut raw);
            assert_eq!(challenge.reason, ReasonCode::CONTINUE_AUTHENTICATION);
            let last = scram.last(text(&challenge.data)).unwrap();
            raw.send(&auth(
                ReasonCode::CONTINUE_AUTHENTICATION,
                METHOD,
                Some(last),
            ));
            let done = recv_auth(&mut raw);
            assert_eq!(done.reason, ReasonCode::SUCCESS, "{done:?}");
            assert!(scram.verify(text(&done.data)));
        }
        // Still the same session, still served.
        raw.send(&enc(&Packet::Publish(publish5(
            "t/re",
            b"after",
            Q::AtMostOnce,
            false,
            0,
        ))));
        assert_eq!(&recv_publish5(&mut raw).payload[..], b"after");
        // A wrong password on re-authentication: DISCONNECT 0x87.
        let mut scram = ScramClient::new("alice", b"wrong", "n2");
        raw.send(&auth(
            ReasonCode::REAUTHENTICATE,
            METHOD,
            Some(scram.first()),
        ));
        let challenge = recv_auth(&mut raw);
        let last = scram.last(text(&challenge.data)).unwrap();
        raw.send(&auth(
            ReasonCode::CONTINUE_AUTHENTICATION,
            METHOD,
            Some(last),
        ));
        expect_disconnect(
            &mut raw,
            ReasonCode::NOT_AUTHORIZED,
            "wrong password on re-authentication",
        );
        // Another method, or continuing an exchange never started: 0x82.
        for (reason, method) in [
            (ReasonCode::REAUTHENTICATE, "SCRAM-SHA-256"),
            (ReasonCode::CONTINUE_AUTHENTICATION, METHOD),
        ] {
            let (mut raw, ack, _) = scram_connect(addr, "reauth-bad", "alice", b"pencil");
            assert_eq!(ack.reason, ReasonCode::SUCCESS);
            raw.send(&auth(reason, method, Some("n,,n=alice,r=x".into())));
            expect_disconnect(&mut raw, ReasonCode::PROTOCOL_ERROR, method);
        }
        drop(b);
        let _ = std::fs::remove_file(path);
    }
}

// ---------------------------------------------------------------------------------
// maximum_qos, retain_available, Response Information, reason strings
// ---------------------------------------------------------------------------------

#[test]
fn maximum_qos_and_retain_available_are_announced_and_enforced() {
    let b = broker_with(|c| {
        c.maximum_qos = 1;
        c.retain_available = false;
    });
    let addr = b.local_addr();
    let (mut raw, ack) = open5(addr, connect5(&id_on_shard("mq", 0)));
    assert_eq!(ack.props.maximum_qos, Q::AtLeastOnce);
    assert!(!ack.props.retain_available);
    // A subscription asking QoS 2 is granted 1, and a QoS 1 publish goes through.
    assert_eq!(
        subscribe5(&mut raw, 1, &[("mq/t", Q::ExactlyOnce)]),
        [ReasonCode::GRANTED_QOS_1]
    );
    let mut p = client5(addr, connect5(&id_on_shard("mqp", 1)));
    p.send(&enc(&Packet::Publish(publish5(
        "mq/t",
        b"one",
        Q::AtLeastOnce,
        false,
        1,
    ))));
    assert_eq!(&recv_publish5(&mut raw).payload[..], b"one");
    // QoS 2 and retained publishes close the connection with their reasons.
    p.send(&enc(&Packet::Publish(publish5(
        "mq/t",
        b"two",
        Q::ExactlyOnce,
        false,
        2,
    ))));
    expect_disconnect(&mut p, ReasonCode::QOS_NOT_SUPPORTED, "QoS 2 publish");
    let mut p = client5(addr, connect5(&id_on_shard("mqr", 1)));
    p.send(&enc(&Packet::Publish(publish5(
        "mq/t",
        b"r",
        Q::AtMostOnce,
        true,
        0,
    ))));
    expect_disconnect(&mut p, ReasonCode::RETAIN_NOT_SUPPORTED, "retained publish");
    // Wills above them are refused at CONNECT.
    let mut c = connect5("will-q2");
    c.will = Some(LastWill {
        topic: "w".into(),
        payload: bytes::Bytes::from_static(b"w"),
        qos: Q::ExactlyOnce,
        retain: false,
        props: WillProps::default(),
    });
    refused_with(addr, c, ReasonCode::QOS_NOT_SUPPORTED, "will QoS 2");
    let mut c = connect5("will-retained");
    c.will = Some(LastWill {
        topic: "w".into(),
        payload: bytes::Bytes::from_static(b"w"),
        qos: Q::AtMostOnce,
        retain: true,
        props: WillProps::default(),
    });
    refused_with(addr, c, ReasonCode::RETAIN_NOT_SUPPORTED, "retained will");
    // A 3.1.1 client publishing above the maximum is closed as well.
    let mut old = Raw::open(addr);
    old.send(&connect_packet("mq311", true));
    old.recv_kind(CONNACK);
    old.send(&publish_packet("mq/t", b"q2", 2, false, false, 7));
    old.expect_closed();
    // Nothing was lost for the subscriber meanwhile.
    let mut p = client5(addr, connect5(&id_on_shard("mqp2", 0)));
    p.send(&enc(&Packet::Publish(publish5(
        "mq/t",
        b"still",
        Q::AtMostOnce,
        false,
        0,
    ))));
    assert_eq!(&recv_publish5(&mut raw).payload[..], b"still");
}

#[test]
fn response_information_is_given_to_clients_that_ask() {
    let b = broker_with(|c| c.response_information = "replies/%c".into());
    let mut c = connect5("asker");
    c.props.request_response_information = true;
    let (_raw, ack) = open5(b.local_addr(), c);
    assert_eq!(
        ack.props.response_information.as_deref(),
        Some("replies/asker")
    );
    let (_raw, ack) = open5(b.local_addr(), connect5("not-asking"));
    assert_eq!(ack.props.response_information, None);
    // Unconfigured: none, even when asked.
    let b = broker_with(|_| {});
    let mut c = connect5("asker");
    c.props.request_response_information = true;
    assert_eq!(open5(b.local_addr(), c).1.props.response_information, None);
}

fn acl_broker() -> (Broker, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "shardmq-acl5-{}-{}",
        std::process::id(),
        unique("acl")
    ));
    std::fs::write(&path, "topic readwrite open/#\n").unwrap();
    let p = path.clone();
    (broker_with(move |c| c.acl_file = Some(p)), path)
}

fn recv_ack(raw: &mut Raw, kind: u8) -> Ack {
    match dec(&raw.recv_kind(kind)) {
        Packet::PubAckV5(a) | Packet::PubRecV5(a) => a,
        p => panic!("expected an ack, got {p:?}"),
    }
}

#[test]
fn a_publish_the_acl_refuses_gets_0x87_with_a_reason_string_if_wanted() {
    let (b, path) = acl_broker();
    let addr = b.local_addr();
    let mut sub = client5(addr, connect5(&id_on_shard("acl-sub", 1)));
    subscribe5(&mut sub, 1, &[("open/#", Q::AtLeastOnce)]);
    let mut p = client5(addr, connect5(&id_on_shard("acl-pub", 0)));
    p.send(&enc(&Packet::Publish(publish5(
        "closed/x",
        b"no",
        Q::AtLeastOnce,
        false,
        5,
    ))));
    let a = recv_ack(&mut p, PUBACK);
    assert_eq!((a.pkid, a.reason), (5, ReasonCode::NOT_AUTHORIZED));
    assert!(
        a.reason_string
            .as_deref()
            .is_some_and(|s| s.contains("closed/x")),
        "{a:?}"
    );
    p.send(&enc(&Packet::Publish(publish5(
        "$SYS/x",
        b"no",
        Q::AtLeastOnce,
        false,
        6,
    ))));
    assert_eq!(recv_ack(&mut p, PUBACK).reason, ReasonCode::NOT_AUTHORIZED);
    // QoS 2: PUBREC 0x87 ends the flow; the id is free again for an allowed topic.
    p.send(&enc(&Packet::Publish(publish5(
        "closed/x",
        b"no",
        Q::ExactlyOnce,
        false,
        9,
    ))));
    assert_eq!(recv_ack(&mut p, PUBREC).reason, ReasonCode::NOT_AUTHORIZED);
    p.send(&enc(&Packet::Publish(publish5(
        "open/x",
        b"yes",
        Q::ExactlyOnce,
        false,
        9,
    ))));
    let a = recv_ack(&mut p, PUBREC);
    assert_eq!((a.pkid, a.reason), (9, ReasonCode::SUCCESS));
    p.send(&enc(&Packet::PubRelV5(Ack::success(9))));
    assert_eq!(&recv_publish5(&mut sub).payload[..], b"yes");
    // Request Problem Information 0: the code, no reason string [MQTT-3.1.2-29].
    let mut c = connect5(&id_on_shard("acl-quiet", 1));
    c.props.request_problem_information = false;
    let mut q = client5(addr, c);
    q.send(&enc(&Packet::Publish(publish5(
        "closed/x",
        b"no",
        Q::AtLeastOnce,
        false,
        1,
    ))));
    let a = recv_ack(&mut q, PUBACK);
    assert_eq!(
        (a.reason, a.reason_string),
        (ReasonCode::NOT_AUTHORIZED, None)
    );
    drop(b);
    let _ = std::fs::remove_file(path);
}

#[test]
fn suback_and_disconnect_carry_reason_strings_within_the_clients_maximum_packet_size() {
    let b = broker_with(|_| {});
    let addr = b.local_addr();
    let suback = |c: Connect| {
        let mut raw = client5(addr, c);
        raw.send(&enc(&Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![
                filter("ok/#", Q::AtMostOnce),
                filter("bad/#/x", Q::AtMostOnce),
            ],
            id: None,
            user: UserProperties::new(),
        })));
        match dec(&raw.recv_kind(SUBACK)) {
            Packet::SubAckV5(s) => *s,
            p => panic!("expected SUBACK, got {p:?}"),
        }
    };
    let s = suback(connect5("rs-1"));
    assert_eq!(
        s.reasons,
        [ReasonCode::GRANTED_QOS_0, ReasonCode::TOPIC_FILTER_INVALID]
    );
    assert!(
        s.reason_string
            .as_deref()
            .is_some_and(|r| r.contains("bad/#/x")),
        "{s:?}"
    );
    let mut quiet = connect5("rs-2");
    quiet.props.request_problem_information = false;
    assert_eq!(suback(quiet).reason_string, None);
    // A client whose Maximum Packet Size leaves no room for the string gets the codes.
    let mut small = connect5("rs-3");
    small.props.maximum_packet_size = NonZeroU32::new(16);
    let s = suback(small);
    assert_eq!((s.reasons.len(), s.reason_string), (2, None));
    // The DISCONNECT for a malformed packet says what was wrong.
    let mut raw = client5(addr, connect5("rs-4"));
    raw.send(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]);
    let got = raw.expect_closed();
    match got.last().map(dec) {
        Some(Packet::DisconnectV5(d)) => {
            assert_eq!(d.reason, ReasonCode::MALFORMED_PACKET);
            assert!(
                d.reason_string.as_deref().is_some_and(|r| !r.is_empty()),
                "{d:?}"
            );
        }
        p => panic!("expected DISCONNECT, got {p:?}"),
    }
}

// ---------------------------------------------------------------------------------
// Persistence: a 5.0 session's state across a restart (graceful and kill -9)
// ---------------------------------------------------------------------------------

mod persistence {
    use super::*;
    use common::persist::{DataDir, Mode, Node};

    /// Long enough for a 2 s expiry to run out while the broker is down.
    const DOWNTIME: Duration = Duration::from_millis(3500);

    fn publish_acked(raw: &mut Raw, p: P5) {
        let qos = p.qos;
        raw.send(&enc(&Packet::Publish(p)));
        if qos == Q::AtLeastOnce {
            raw.recv_kind(PUBACK);
        }
    }

    /// PUBLISHes (each acknowledged) until one on `sentinel`; returns those before.
    fn until(raw: &mut Raw, sentinel: &str) -> Vec<P5> {
        let mut got = Vec::new();
        loop {
            let p = recv_publish5(raw);
            if p.qos == Q::AtLeastOnce {
                raw.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));
            }
            if &p.topic[..] == sentinel {
                return got;
            }
            got.push(p);
        }
    }

    fn topics(ps: &[P5]) -> Vec<String> {
        ps.iter().map(|p| p.topic.to_string()).collect()
    }

    fn subscribe_with(raw: &mut Raw, pkid: u16, f: SubscribeFilter, id: Option<u32>) {
        raw.send(&enc(&Packet::Subscribe(Subscribe {
            pkid,
            filters: vec![f],
            id: id.and_then(NonZeroU32::new),
            user: UserProperties::new(),
        })));
        raw.recv_kind(SUBACK);
    }

    fn ids(p: &P5) -> Vec<u32> {
        p.props
            .as_ref()
            .map(|p| p.subscription_ids.iter().map(|i| i.get()).collect())
            .unwrap_or_default()
    }

    fn session_expiry_survives(mode: Mode) {
        let dir = DataDir::new("se5");
        let node = Node::start(mode, dir.path(), SHARDS);
        let topic = unique("se5");
        // (client id, interval at CONNECT, interval at DISCONNECT, survives)
        let cases = [
            (id_on_shard("se5-long", 1), 300, None, true),
            (id_on_shard("se5-short", 0), 2, None, false),
            (id_on_shard("se5-never", 1), u32::MAX, None, true),
            (id_on_shard("se5-lowered", 0), 300, Some(2), false),
            (id_on_shard("se5-raised", 1), 2, Some(300), true),
        ];
        for (id, at_connect, at_disconnect, _) in &cases {
            let mut c = client5(node.addr(), persistent5(id, *at_connect));
            subscribe5(&mut c, 1, &[(&format!("{topic}/#"), Q::AtLeastOnce)]);
            disconnect5(&mut c, ReasonCode::NORMAL_DISCONNECTION, *at_disconnect);
        }
        // A message queued for each while they are away.
        let mut publ = client5(node.addr(), connect5(&id_on_shard("se5-pub", 0)));
        publish_acked(
            &mut publ,
            publish5(&format!("{topic}/queued"), b"q", Q::AtLeastOnce, false, 1),
        );
        drop(publ);
        let dir_path = dir.path().to_path_buf();
        node.stop();
        std::thread::sleep(DOWNTIME);
        let node = Node::start(mode, &dir_path, SHARDS);
        for (id, _, _, survives) in &cases {
            let (mut c, ack) = open5(node.addr(), persistent5(id, 300));
            assert_eq!(ack.reason, ReasonCode::SUCCESS);
            assert_eq!(
                ack.session_present,
                *survives,
                "{mode:?}: {id}: session present; log:\n{}",
                node.log()
            );
            if *survives {
                let p = recv_publish5(&mut c);
                assert_eq!(&p.topic[..], format!("{topic}/queued"), "{id}");
                c.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));
            } else {
                c.expect_silence(QUIET);
            }
            disconnect5(&mut c, ReasonCode::NORMAL_DISCONNECTION, Some(0));
        }
        node.stop();
    }

    #[test]
    fn graceful_restart_keeps_a_5_0_sessions_expiry_counting() {
        session_expiry_survives(Mode::Graceful);
    }

    #[test]
    fn killed_broker_keeps_a_5_0_sessions_expiry_counting() {
        session_expiry_survives(Mode::Killed);
    }

    fn subscription_options_survive(mode: Mode) {
        let dir = DataDir::new("so5");
        let node = Node::start(mode, dir.path(), SHARDS);
        let topic = unique("so5");
        let id = id_on_shard("so5-sub", 1);
        let mut c = client5(node.addr(), persistent5(&id, 300));
        let own = format!("{topic}/own/#");
        subscribe_with(
            &mut c,
            1,
            SubscribeFilter {
                no_local: true,
                ..filter(&own, Q::AtLeastOnce)
            },
            Some(11),
        );
        subscribe_with(
            &mut c,
            2,
            filter(&format!("{topic}/+/x"), Q::AtLeastOnce),
            Some(22),
        );
        let rap = format!("{topic}/rap");
        subscribe_with(
            &mut c,
            3,
            SubscribeFilter {
                retain_as_published: true,
                ..filter(&rap, Q::AtLeastOnce)
            },
            None,
        );
        // Its own message (not sent back), then away while another's is queued:
        // after a crash recovery matches both again.
        publish_acked(
            &mut c,
            publish5(&format!("{topic}/own/mine"), b"m", Q::AtLeastOnce, false, 1),
        );
        disconnect5(&mut c, ReasonCode::NORMAL_DISCONNECTION, None);
        let mut publ = client5(node.addr(), connect5(&id_on_shard("so5-pub", 0)));
        publish_acked(
            &mut publ,
            publish5(
                &format!("{topic}/own/theirs"),
                b"t",
                Q::AtLeastOnce,
                false,
                1,
            ),
        );
        drop(publ);

        let node = node.restart();
        let (mut c, ack) = open5(node.addr(), persistent5(&id, 300));
        assert!(ack.session_present, "{mode:?}; log:\n{}", node.log());
        let mut publ = client5(node.addr(), connect5(&id_on_shard("so5-pub", 0)));
        let sentinel = format!("{topic}/own/sentinel");
        publish_acked(
            &mut publ,
            publish5(&sentinel, b"s", Q::AtLeastOnce, false, 2),
        );
        let got = until(&mut c, &sentinel);
        assert_eq!(
            topics(&got),
            [format!("{topic}/own/theirs")],
            "{mode:?}: No Local keeps its own message away"
        );
        assert_eq!(ids(&got[0]), [11]);
        // Live after the restart: No Local, identifiers, Retain As Published.
        publish_acked(
            &mut c,
            publish5(
                &format!("{topic}/own/mine2"),
                b"m",
                Q::AtLeastOnce,
                false,
                2,
            ),
        );
        publish_acked(
            &mut publ,
            publish5(&format!("{topic}/own/x"), b"x", Q::AtLeastOnce, false, 3),
        );
        let p = recv_publish5(&mut c);
        assert_eq!(
            &p.topic[..],
            format!("{topic}/own/x"),
            "not its own message"
        );
        assert_eq!(ids(&p), [11, 22]);
        c.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));
        publish_acked(&mut publ, publish5(&rap, b"r", Q::AtLeastOnce, true, 4));
        let p = recv_publish5(&mut c);
        assert_eq!(&p.topic[..], rap);
        assert!(p.retain, "Retain As Published survives the restart");
        assert!(ids(&p).is_empty());
        c.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));
        node.stop();
    }

    #[test]
    fn graceful_restart_keeps_subscription_ids_no_local_and_retain_as_published() {
        subscription_options_survive(Mode::Graceful);
    }

    #[test]
    fn killed_broker_keeps_subscription_ids_no_local_and_retain_as_published() {
        subscription_options_survive(Mode::Killed);
    }

    /// A live message published with RETAIN, queued for an offline Retain As
    /// Published subscriber, survives a crash after the positions were written.
    fn retain_as_published_queue_survives(mode: Mode) {
        let dir = DataDir::new("rap5");
        let node = Node::start(mode, dir.path(), SHARDS);
        let topic = unique("rap5");
        let id = id_on_shard("rap5-sub", 1);
        let mut c = client5(node.addr(), persistent5(&id, 300));
        subscribe_with(
            &mut c,
            1,
            SubscribeFilter {
                retain_as_published: true,
                ..filter(&format!("{topic}/#"), Q::AtLeastOnce)
            },
            None,
        );
        disconnect5(&mut c, ReasonCode::NORMAL_DISCONNECTION, None);
        let mut publ = client5(node.addr(), connect5(&id_on_shard("rap5-pub", 0)));
        let retained = format!("{topic}/r");
        publish_acked(
            &mut publ,
            publish5(&retained, b"r", Q::AtLeastOnce, true, 1),
        );
        drop(publ);
        // Past a position checkpoint (written every second).
        std::thread::sleep(Duration::from_millis(2500));
        let node = node.restart();
        let (mut c, ack) = open5(node.addr(), persistent5(&id, 300));
        assert!(ack.session_present);
        let mut publ = client5(node.addr(), connect5(&id_on_shard("rap5-pub", 0)));
        let sentinel = format!("{topic}/sentinel");
        publish_acked(
            &mut publ,
            publish5(&sentinel, b"", Q::AtLeastOnce, false, 2),
        );
        let got = until(&mut c, &sentinel);
        assert_eq!(topics(&got), [retained], "{mode:?}; log:\n{}", node.log());
        assert!(got[0].retain, "with the flag it was published with");
        node.stop();
    }

    #[test]
    fn graceful_restart_keeps_live_retained_messages_queued_for_retain_as_published() {
        retain_as_published_queue_survives(Mode::Graceful);
    }

    #[test]
    fn killed_broker_keeps_live_retained_messages_queued_for_retain_as_published() {
        retain_as_published_queue_survives(Mode::Killed);
    }

    fn with_props(mut p: P5, expiry: Option<u32>) -> P5 {
        p.props = Some(Box::new(PublishProps {
            message_expiry: expiry,
            forward: forward_props(),
            ..PublishProps::default()
        }));
        p
    }

    fn message_properties_survive(mode: Mode) {
        let dir = DataDir::new("mp5");
        let node = Node::start(mode, dir.path(), SHARDS);
        let topic = unique("mp5");
        let id = id_on_shard("mp5-sub", 1);
        let mut c = client5(node.addr(), persistent5(&id, 600));
        subscribe5(&mut c, 1, &[(&format!("{topic}/q/#"), Q::AtLeastOnce)]);
        disconnect5(&mut c, ReasonCode::NORMAL_DISCONNECTION, None);
        let mut publ = client5(node.addr(), connect5(&id_on_shard("mp5-pub", 0)));
        let t = |s: &str| format!("{topic}/{s}");
        for p in [
            with_props(
                publish5(&t("q/keep"), b"k", Q::AtLeastOnce, false, 1),
                Some(600),
            ),
            with_props(
                publish5(&t("q/short"), b"s", Q::AtLeastOnce, false, 2),
                Some(2),
            ),
            with_props(
                publish5(&t("q/forever"), b"f", Q::AtLeastOnce, false, 3),
                None,
            ),
            publish5(&t("q/plain"), b"p", Q::AtLeastOnce, false, 4),
            with_props(
                publish5(&t("r/keep"), b"rk", Q::AtLeastOnce, true, 5),
                Some(600),
            ),
            with_props(
                publish5(&t("r/short"), b"rs", Q::AtLeastOnce, true, 6),
                Some(2),
            ),
        ] {
            publish_acked(&mut publ, p);
        }
        drop(publ);
        let dir_path = dir.path().to_path_buf();
        node.stop();
        std::thread::sleep(DOWNTIME);
        let node = Node::start(mode, &dir_path, SHARDS);

        let (mut c, ack) = open5(node.addr(), persistent5(&id, 600));
        assert!(ack.session_present, "{mode:?}; log:\n{}", node.log());
        let mut publ = client5(node.addr(), connect5(&id_on_shard("mp5-pub", 0)));
        let sentinel = t("q/sentinel");
        publish_acked(
            &mut publ,
            publish5(&sentinel, b"", Q::AtLeastOnce, false, 7),
        );
        let got = until(&mut c, &sentinel);
        assert_eq!(
            topics(&got),
            [t("q/keep"), t("q/forever"), t("q/plain")],
            "{mode:?}: the message whose expiry passed while the broker was down is not delivered"
        );
        for p in &got[..2] {
            let props = p.props.as_ref().expect("properties restored");
            assert_eq!(props.forward, forward_props(), "unchanged and in order");
        }
        let left = got[0].props.as_ref().unwrap().message_expiry;
        assert!(
            left.is_some_and(|l| l > 0 && l <= 600 - DOWNTIME.as_secs() as u32),
            "the time queued, the downtime included, is taken off: {left:?}"
        );
        assert_eq!(got[1].props.as_ref().unwrap().message_expiry, None);
        assert!(got[2].props.as_ref().is_none_or(|p| p.forward.is_empty()));
        // Retained: with their properties, and not once expired.
        let mut late = client5(node.addr(), connect5(&id_on_shard("mp5-late", 1)));
        subscribe5(&mut late, 1, &[(&t("r/#"), Q::AtLeastOnce)]);
        let p = recv_publish5(&mut late);
        assert_eq!(&p.topic[..], t("r/keep"));
        assert!(p.retain);
        let props = p.props.expect("retained properties restored");
        assert_eq!(props.forward, forward_props());
        assert!(props
            .message_expiry
            .is_some_and(|l| l > 0 && l <= 600 - DOWNTIME.as_secs() as u32));
        late.send(&enc(&Packet::PubAckV5(Ack::success(p.pkid))));
        late.expect_silence(QUIET);
        node.stop();
    }

    #[test]
    fn graceful_restart_keeps_queued_messages_properties_and_expiry() {
        message_properties_survive(Mode::Graceful);
    }

    #[test]
    fn killed_broker_keeps_queued_messages_properties_and_expiry() {
        message_properties_survive(Mode::Killed);
    }
}

//! Connection establishment and teardown (MQTT 3.1.1 §3.1, §3.2, §3.12, §3.14), through
//! real sockets on a 2-shard broker.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn valid_mqtt311_connect_gets_connack_accepted() {
    let b = broker();
    let mut raw = Raw::open(b.local_addr());
    raw.send(&connect_packet(&unique("c311"), true));
    let p = raw.recv();
    // [MQTT-3.2.0-1] first packet from the server is CONNACK; 0x20 0x02 0x00 0x00.
    assert_eq!(p.first, 0x20, "CONNACK fixed header: {p:?}");
    assert_eq!(
        p.body,
        vec![0x00, 0x00],
        "CONNACK: session present 0, return code 0"
    );
    raw.ping();
    raw.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn valid_connect_is_accepted_on_both_home_shards() {
    let b = broker();
    for shard in 0..SHARDS {
        for _ in 0..5 {
            let (mut raw, sp) = Raw::connect(b.local_addr(), &id_on_shard("home", shard), true);
            assert!(!sp);
            raw.ping();
            raw.disconnect();
        }
    }
    assert_no_leaks(&b);
}

#[test]
fn mqtt31_mqisdp_connect_gets_connack_accepted() {
    let b = broker();
    let mut opts = ConnectOpts::new(&unique("c31"), true);
    opts.protocol_name = b"MQIsdp".to_vec();
    opts.level = 3;
    let (mut raw, flags, rc) = Raw::connect_opts(b.local_addr(), &opts);
    assert_eq!(rc, 0, "MQTT 3.1 (MQIsdp, level 3) CONNECT must be accepted");
    // MQTT 3.1 has no session-present flag; the byte is reserved (0).
    assert_eq!(flags, 0, "CONNACK first byte to an MQTT 3.1 client");
    raw.ping();
    raw.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn mqtt31_client_can_publish_and_subscribe() {
    let b = broker();
    let topic = unique("v31/t");
    let mut opts = ConnectOpts::new(&id_on_shard("c31sub", 1), true);
    opts.protocol_name = b"MQIsdp".to_vec();
    opts.level = 3;
    let (mut sub, _) = Raw::connect_with(b.local_addr(), &opts);
    assert_eq!(sub.subscribe(1, &[(&topic, 1)]), vec![1]);
    let mut opts = ConnectOpts::new(&id_on_shard("c31pub", 0), true);
    opts.protocol_name = b"MQIsdp".to_vec();
    opts.level = 3;
    let (mut publ, _) = Raw::connect_with(b.local_addr(), &opts);
    publ.publish(&topic, b"hello 3.1", 1, false);
    let p = sub.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice(), p.qos),
        (topic.as_str(), &b"hello 3.1"[..], 1)
    );
    sub.ack(&p);
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn unsupported_protocol_level_gets_connack_0x01_then_close() {
    let b = broker();
    // Level 5 is MQTT 5.0, served (tests/mqtt5.rs).
    for level in [2u8, 6, 0xFF] {
        let mut opts = ConnectOpts::new(&unique("badlevel"), true);
        opts.level = level;
        let mut raw = Raw::open(b.local_addr());
        raw.send(&opts.encode());
        // [MQTT-3.1.2-2] CONNACK with return code 0x01 then disconnect.
        let got = raw.expect_closed();
        assert_eq!(
            got,
            vec![Pkt {
                first: 0x20,
                body: vec![0x00, 0x01]
            }],
            "protocol level {level}: expected exactly CONNACK 0x01 before the close"
        );
    }
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn empty_client_id_with_clean_session_0_gets_connack_0x02_then_close() {
    let b = broker();
    let mut raw = Raw::open(b.local_addr());
    raw.send(&connect_packet("", false));
    // [MQTT-3.1.3-8] CONNACK 0x02 (identifier rejected) then close.
    let got = raw.expect_closed();
    assert_eq!(
        got,
        vec![Pkt {
            first: 0x20,
            body: vec![0x00, 0x02]
        }]
    );
    assert_no_leaks(&b);
}

#[test]
fn empty_client_id_with_clean_session_1_is_accepted() {
    let b = broker();
    // [MQTT-3.1.3-6] the server assigns a unique id.
    let (mut raw, sp) = Raw::connect(b.local_addr(), "", true);
    assert!(
        !sp,
        "session present must be 0 for a clean session [MQTT-3.2.2-1]"
    );
    let topic = unique("anon/t");
    assert_eq!(raw.subscribe(3, &[(&topic, 1)]), vec![1]);
    raw.publish(&topic, b"self", 1, false);
    let p = raw.recv_kind(PUBLISH).publish();
    assert_eq!(p.payload, b"self");
    raw.ack(&p);
    raw.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn two_clients_with_empty_ids_do_not_take_over_each_other() {
    let b = broker();
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (raw, _) = Raw::connect(b.local_addr(), "", true);
        clients.push(raw);
    }
    for c in clients.iter_mut() {
        c.ping(); // each still open: the assigned ids are unique
    }
    wait_stats(&b, "6 connections", |s| s.connections == 6);
    assert_eq!(b.stats().total().takeovers, 0);
    for c in clients {
        c.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn second_connect_on_a_connection_closes_it() {
    let b = broker();
    let id = unique("twice");
    let (mut raw, _) = Raw::connect(b.local_addr(), &id, true);
    raw.send(&connect_packet(&id, true));
    // [MQTT-3.1.0-2] a second CONNECT is a protocol violation: disconnect.
    let got = raw.expect_closed();
    assert!(
        got.iter().all(|p| p.kind() != CONNACK),
        "no second CONNACK may be sent: {got:?}"
    );
    wait_stats(&b, "protocol_errors >= 1", |s| s.protocol_errors >= 1);
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn first_packet_not_connect_closes_connection() {
    let b = broker();
    let cases: Vec<Vec<u8>> = vec![
        PINGREQ_BYTES.to_vec(),
        subscribe_packet(1, &[("a/b", 0)]),
        publish_packet("a/b", b"x", 0, false, false, 0),
        DISCONNECT_BYTES.to_vec(),
    ];
    for bytes in cases {
        let mut raw = Raw::open(b.local_addr());
        raw.send(&bytes);
        // [MQTT-3.1.0-1] the first packet must be CONNECT.
        let got = raw.expect_closed();
        assert!(
            got.is_empty(),
            "nothing may be sent back to {bytes:02x?}; got {got:?}"
        );
    }
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn pingreq_gets_pingresp() {
    let b = broker();
    let (mut raw, _) = Raw::connect(b.local_addr(), &unique("ping"), true);
    for _ in 0..3 {
        raw.send(&PINGREQ_BYTES);
        // [MQTT-3.12.4-1]
        let p = raw.recv();
        assert_eq!(
            p,
            Pkt {
                first: 0xD0,
                body: vec![]
            }
        );
    }
    raw.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn disconnect_makes_the_broker_close_the_connection() {
    let b = broker();
    let (mut raw, _) = Raw::connect(b.local_addr(), &unique("bye"), true);
    raw.send(&DISCONNECT_BYTES);
    // [MQTT-3.14.4-3] ... the server closes the network connection.
    let got = raw.expect_closed();
    assert!(got.is_empty(), "nothing is answered to DISCONNECT: {got:?}");
    assert_no_leaks(&b);
}

#[test]
fn connect_never_sent_is_closed_after_connect_timeout() {
    let b = broker();
    let mut silent = Raw::open(b.local_addr());
    // Also a connection that sends only part of its CONNECT.
    let mut partial = Raw::open(b.local_addr());
    let c = connect_packet("partial", true);
    partial.send(&c[..5]);
    // connect_timeout = 1 s; generous deadline.
    let got = silent.expect_closed_within(Duration::from_secs(4));
    assert!(got.is_empty(), "{got:?}");
    let got = partial.expect_closed_within(Duration::from_secs(4));
    assert!(got.is_empty(), "{got:?}");
    wait_stats(&b, "connect_timeouts >= 2", |s| s.connect_timeouts >= 2);
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn connection_beyond_max_connections_gets_connack_0x03_then_close() {
    let b = broker_with(|c| c.max_connections = 3);
    let mut held = Vec::new();
    for i in 0..3 {
        let (mut raw, _) = Raw::connect(b.local_addr(), &unique(&format!("max{i}")), true);
        raw.ping();
        held.push(raw);
    }
    let mut fourth = Raw::open(b.local_addr());
    fourth.send_lossy(&connect_packet(&unique("max-extra"), true));
    // 0x03: server unavailable.
    let got = fourth.expect_closed();
    assert_eq!(
        got,
        vec![Pkt {
            first: 0x20,
            body: vec![0x00, 0x03]
        }]
    );
    wait_stats(&b, "refused_max_connections >= 1", |s| {
        s.refused_max_connections >= 1
    });
    for c in held.iter_mut() {
        c.ping(); // the three accepted ones are unaffected
    }
    // A freed slot is reusable.
    held.pop().unwrap().disconnect();
    wait_stats(&b, "2 connections", |s| s.connections == 2);
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let mut raw = Raw::open(b.local_addr());
        raw.send(&connect_packet(&unique("max-again"), true));
        let p = raw.recv();
        if p.body == [0, 0] {
            raw.disconnect();
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot never freed: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in held {
        c.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn connect_with_reserved_flag_bit_set_is_closed() {
    let b = broker();
    let mut opts = ConnectOpts::new(&unique("resv"), true);
    opts.extra_flags = 0x01;
    let mut raw = Raw::open(b.local_addr());
    raw.send(&opts.encode());
    // [MQTT-3.1.2-3] reserved flag must be 0, else disconnect.
    let got = raw.expect_closed();
    assert!(
        got.iter().all(|p| p.body != [0, 0]),
        "must not be accepted: {got:?}"
    );
    assert_broker_healthy(b.local_addr());
}

#[test]
fn connect_with_will_qos_3_is_closed() {
    let b = broker();
    let opts = ConnectOpts::new(&unique("wq3"), true).will("w/t", b"x", 3, false);
    let mut raw = Raw::open(b.local_addr());
    raw.send(&opts.encode());
    // [MQTT-3.1.2-14] will QoS must not be 3.
    let got = raw.expect_closed();
    assert!(
        got.iter().all(|p| p.body != [0, 0]),
        "must not be accepted: {got:?}"
    );
    assert_broker_healthy(b.local_addr());
}

#[test]
fn connect_with_will_qos_but_no_will_flag_is_closed() {
    let b = broker();
    let mut opts = ConnectOpts::new(&unique("wqnf"), true);
    opts.extra_flags = 0x08; // will QoS 1 without will flag
    let mut raw = Raw::open(b.local_addr());
    raw.send(&opts.encode());
    // [MQTT-3.1.2-13] will QoS must be 0 when the will flag is 0.
    let got = raw.expect_closed();
    assert!(
        got.iter().all(|p| p.body != [0, 0]),
        "must not be accepted: {got:?}"
    );
    assert_broker_healthy(b.local_addr());
}

#[test]
fn connect_with_will_retain_but_no_will_flag_is_closed() {
    let b = broker();
    let mut opts = ConnectOpts::new(&unique("wrnf"), true);
    opts.extra_flags = 0x20;
    let mut raw = Raw::open(b.local_addr());
    raw.send(&opts.encode());
    // [MQTT-3.1.2-15] will retain must be 0 when the will flag is 0.
    let got = raw.expect_closed();
    assert!(
        got.iter().all(|p| p.body != [0, 0]),
        "must not be accepted: {got:?}"
    );
    assert_broker_healthy(b.local_addr());
}

#[test]
fn connect_with_password_but_no_username_is_closed() {
    let b = broker();
    let mut opts = ConnectOpts::new(&unique("pwnouser"), true);
    opts.password = Some(b"secret".to_vec());
    let mut raw = Raw::open(b.local_addr());
    raw.send(&opts.encode());
    // [MQTT-3.1.2-22] password flag requires the user name flag.
    let got = raw.expect_closed();
    assert!(
        got.iter().all(|p| p.body != [0, 0]),
        "must not be accepted: {got:?}"
    );
    assert_broker_healthy(b.local_addr());
}

#[test]
fn connect_with_username_and_password_is_accepted() {
    let b = broker();
    let mut opts = ConnectOpts::new(&unique("userpw"), true);
    opts.username = Some(b"user".to_vec());
    opts.password = Some(b"pw".to_vec());
    let (mut raw, _) = Raw::connect_with(b.local_addr(), &opts);
    raw.ping();
    raw.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn client_id_with_invalid_utf8_is_closed() {
    let b = broker();
    let mut opts = ConnectOpts::new("x", true);
    opts.client_id = vec![b'a', 0xC3, 0x28];
    let mut raw = Raw::open(b.local_addr());
    raw.send(&opts.encode());
    // [MQTT-1.5.3-1] / [MQTT-3.1.3-4]
    let got = raw.expect_closed();
    assert!(
        got.iter().all(|p| p.body != [0, 0]),
        "must not be accepted: {got:?}"
    );
    assert_broker_healthy(b.local_addr());
}

#[test]
fn rumqttc_client_connects_and_round_trips() {
    let b = broker();
    let topic = unique("rq/t");
    let mut sub = mq(b.local_addr(), &id_on_shard("rq-sub", 0), true);
    assert!(!sub.session_present);
    assert_eq!(sub.subscribe(&topic, 1), Some(1));
    let mut publ = mq(b.local_addr(), &id_on_shard("rq-pub", 1), true);
    publ.publish_acked(&topic, 1, false, b"hi");
    let p = sub.recv_publish();
    assert_eq!(&p.payload[..], b"hi");
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn long_client_ids_are_accepted() {
    // Server MAY allow more than 23 bytes (§3.1.3.1); real clients use UUID-length ids.
    // Up to max_client_id_length (default 1024) is accepted.
    let b = broker();
    for len in [24usize, 36, 100, 1024] {
        let id = "k".repeat(len);
        let (mut raw, _) = Raw::connect(b.local_addr(), &id, true);
        raw.ping();
        raw.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn keep_alive_0_disables_the_keep_alive_timeout() {
    let b = broker();
    let opts = ConnectOpts::new(&unique("ka0"), true).keep_alive(0);
    let (mut raw, _) = Raw::connect_with(b.local_addr(), &opts);
    // §3.1.2.10: a keep-alive of 0 turns the mechanism off.
    raw.expect_silence(std::time::Duration::from_millis(2500));
    raw.ping();
    raw.disconnect();
    assert_eq!(b.stats().total().keepalive_timeouts, 0);
    assert_no_leaks(&b);
}

#[test]
fn disconnect_with_nonzero_flags_is_a_protocol_error() {
    let b = broker();
    let mut w = Raw::connect(b.local_addr(), &id_on_shard("dw", 1), true).0;
    assert_eq!(w.subscribe(1, &[("dflags/will", 1)]), vec![1]);
    let opts =
        ConnectOpts::new(&id_on_shard("dflags", 0), true).will("dflags/will", b"w", 1, false);
    let (mut c, _) = Raw::connect_with(b.local_addr(), &opts);
    c.send(&[0xE1, 0x00]);
    c.expect_closed();
    // Not a valid DISCONNECT [MQTT-2.2.2-2], so the will is not discarded.
    let p = w.expect_publish();
    assert_eq!(p.payload, b"w");
    w.ack(&p);
    w.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn mqtt31_resumed_session_gets_connack_byte_1_zero() {
    // In MQTT 3.1 the first CONNACK variable-header byte is reserved (no session
    // present flag): a 3.1 client must see 0 there even when its session resumes.
    let b = broker();
    let mut opts = ConnectOpts::new(&unique("v31ps"), false);
    opts.protocol_name = b"MQIsdp".to_vec();
    opts.level = 3;
    let (mut c, flags, rc) = Raw::connect_opts(b.local_addr(), &opts);
    assert_eq!((flags, rc), (0, 0));
    assert_eq!(c.subscribe(1, &[("v31ps/t", 1)]), vec![1]);
    c.disconnect();
    let (c, flags, rc) = Raw::connect_opts(b.local_addr(), &opts);
    assert_eq!(rc, 0);
    assert_eq!(flags, 0, "MQTT 3.1 CONNACK byte 1 is reserved");
    c.disconnect();
    opts.clean = true;
    Raw::connect_with(b.local_addr(), &opts).0.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn data_after_a_rejected_connect_is_not_processed() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("rej-sub", 0), true).0;
    assert_eq!(sub.subscribe(1, &[("rej/#", 0)]), vec![0]);
    for bad in [connect_packet("", false), {
        let mut o = ConnectOpts::new(&unique("rej"), true);
        o.level = 9;
        o.encode()
    }] {
        let mut c = Raw::open(b.local_addr());
        let mut bytes = bad.clone();
        bytes.extend(publish_packet(
            "rej/t",
            b"must not pass",
            0,
            false,
            false,
            0,
        ));
        c.send(&bytes);
        let got = c.expect_closed();
        assert_eq!(got.len(), 1, "only a CONNACK: {got:?}");
        assert_ne!(got[0].body[1], 0);
    }
    // [MQTT-3.1.4-5] nothing sent after a rejected CONNECT is processed.
    sub.expect_silence(QUIET);
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn packets_sent_together_with_connect_survive_the_handoff_to_the_home_shard() {
    let b = broker();
    // Whatever shard accepts the socket, the bytes after CONNECT must reach the home
    // shard with the connection.
    for i in 0..24 {
        let id = id_on_shard(&format!("burst{i}"), i % 2);
        let topic = format!("burst/{i}");
        let mut bytes = connect_packet(&id, true);
        bytes.extend(subscribe_packet(1, &[(&topic, 1)]));
        bytes.extend(publish_packet(&topic, b"me", 1, false, false, 2));
        bytes.extend(PINGREQ_BYTES);
        let mut c = Raw::open(b.local_addr());
        c.send(&bytes);
        let mut kinds = Vec::new();
        let mut got_publish = None;
        while kinds.len() < 5 {
            let p = c.recv();
            if p.kind() == PUBLISH {
                got_publish = Some(p.publish());
            }
            kinds.push(p.kind());
        }
        assert_eq!(kinds[0], CONNACK, "attempt {i}: first packet {kinds:?}");
        let mut rest = kinds[1..].to_vec();
        rest.sort();
        assert_eq!(rest, vec![PUBLISH, PUBACK, SUBACK, PINGRESP], "attempt {i}");
        let p = got_publish.unwrap();
        assert_eq!(p.payload, b"me");
        c.ack(&p);
        c.disconnect();
    }
    let s = b.stats().total();
    assert!(
        s.handoffs_in >= 1,
        "no handoff happened in 24 attempts: {s:#?}"
    );
    assert_no_leaks(&b);
}

#[test]
fn packets_split_into_single_bytes_are_decoded() {
    let b = broker();
    let id = unique("bytewise");
    let mut c = Raw::open(b.local_addr());
    let mut bytes = connect_packet(&id, true);
    bytes.extend(subscribe_packet(1, &[("bw/t", 2)]));
    bytes.extend(publish_packet("bw/t", &[9u8; 300], 2, false, false, 2));
    for byte in bytes {
        c.send(&[byte]);
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    assert_eq!(c.recv().kind(), CONNACK);
    assert_eq!(c.recv_kind(SUBACK).body, vec![0, 1, 2]);
    assert_eq!(c.recv_kind(PUBREC).pid(), 2);
    for byte in pubrel(2) {
        c.send(&[byte]);
    }
    assert_eq!(c.recv_kind(PUBCOMP).pid(), 2);
    let p = c.recv_kind(PUBLISH).publish();
    assert_eq!(p.payload, vec![9u8; 300]);
    c.ack(&p);
    c.disconnect();
    assert_no_leaks(&b);
}

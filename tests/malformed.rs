//! Bad bytes from a client (MQTT 3.1.1 §1.5.3, §2, §4.8): the connection is closed,
//! nothing panics, the event is counted, and other clients carry on.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn garbage_bytes_before_connect_close_the_connection() {
    let b = broker();
    let mut c = Raw::open(b.local_addr());
    c.send_lossy(&[
        0xFF, 0xFE, 0x00, 0x13, 0x37, 0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0x00, 0x00,
    ]);
    let got = c.expect_closed();
    assert!(got.is_empty(), "{got:?}");
    let mut c = Raw::open(b.local_addr());
    c.send_lossy(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let got = c.expect_closed();
    assert!(got.is_empty(), "{got:?}");
    wait_stats(&b, "protocol_errors >= 2", |s| s.protocol_errors >= 2);
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn garbage_bytes_after_connect_close_the_connection() {
    // Packet type 0 and 15 are reserved.
    assert_protocol_error(&[0x00, 0x00], "type 0");
    assert_protocol_error(&[0xF0, 0x00], "type 15");
}

#[test]
fn truncated_packet_followed_by_close_publishes_the_will() {
    let b = broker();
    let mut w = Raw::connect(b.local_addr(), &id_on_shard("tw", 1), true).0;
    assert_eq!(w.subscribe(1, &[("trunc/will", 1)]), vec![1]);
    let opts =
        ConnectOpts::new(&id_on_shard("trunc", 0), true).will("trunc/will", b"cut", 1, false);
    let (mut c, _) = Raw::connect_with(b.local_addr(), &opts);
    let full = publish_packet("trunc/t", &[7u8; 100], 1, false, false, 1);
    c.send(&full[..40]);
    c.drop_connection();
    let p = w.expect_publish();
    assert_eq!(p.payload, b"cut");
    w.ack(&p);
    w.disconnect();
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn truncated_connect_followed_by_close_is_harmless() {
    let b = broker();
    for cut in [1, 2, 5, 10] {
        let mut c = Raw::open(b.local_addr());
        let full = connect_packet("trunc-connect", true);
        c.send(&full[..cut]);
        c.drop_connection();
    }
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn remaining_length_with_five_bytes_closes_the_connection() {
    // §2.2.3: at most four bytes; 0xFF 0xFF 0xFF 0xFF 0x01 is malformed.
    assert_protocol_error(
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00],
        "5-byte remaining length",
    );
}

#[test]
fn remaining_length_with_five_bytes_before_connect_closes_the_connection() {
    let b = broker();
    let mut c = Raw::open(b.local_addr());
    c.send_lossy(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    let got = c.expect_closed();
    assert!(got.is_empty(), "{got:?}");
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn subscribe_with_reserved_flags_0000_closes_the_connection() {
    // [MQTT-3.8.1-1] SUBSCRIBE flags must be 0010.
    let mut bad = subscribe_packet(1, &[("a/b", 0)]);
    bad[0] = 0x80;
    assert_protocol_error(&bad, "SUBSCRIBE flags 0000");
}

#[test]
fn unsubscribe_with_reserved_flags_0000_closes_the_connection() {
    // [MQTT-3.10.1-1] UNSUBSCRIBE flags must be 0010.
    let mut bad = unsubscribe_packet(1, &["a/b"]);
    bad[0] = 0xA0;
    assert_protocol_error(&bad, "UNSUBSCRIBE flags 0000");
}

#[test]
fn pubrel_with_reserved_flags_0000_closes_the_connection() {
    // [MQTT-3.6.1-1] PUBREL flags must be 0010.
    assert_protocol_error(&[0x60, 0x02, 0x00, 0x01], "PUBREL flags 0000");
}

#[test]
fn puback_or_pingreq_with_nonzero_flags_closes_the_connection() {
    // [MQTT-2.2.2-2] reserved flags must be as listed in Table 2.2.
    assert_protocol_error(&[0x41, 0x02, 0x00, 0x01], "PUBACK flags 0001");
    assert_protocol_error(&[0xC1, 0x00], "PINGREQ flags 0001");
}

#[test]
fn publish_with_qos_3_closes_the_connection() {
    // [MQTT-3.3.1-4] a PUBLISH with both QoS bits set is malformed.
    let mut bad = publish_packet("a/b", b"x", 2, false, false, 1);
    bad[0] |= 0x06;
    assert_protocol_error(&bad, "PUBLISH QoS 3");
}

#[test]
fn publish_with_invalid_utf8_topic_closes_the_connection() {
    // [MQTT-1.5.3-1]
    assert_protocol_error(
        &publish_packet_bytes(&[b'a', b'/', 0xC3, 0x28], b"x", 0, false, false, 0),
        "bad UTF-8 topic",
    );
}

#[test]
fn publish_with_utf16_surrogate_in_topic_closes_the_connection() {
    // [MQTT-1.5.3-1] U+D800..U+DFFF encoded in "UTF-8" are ill-formed.
    assert_protocol_error(
        &publish_packet_bytes(&[b'a', 0xED, 0xA0, 0x80], b"x", 1, false, false, 3),
        "surrogate topic",
    );
}

#[test]
fn publish_with_null_character_in_topic_closes_the_connection() {
    // [MQTT-1.5.3-2] U+0000 in a UTF-8 string: close.
    assert_protocol_error(
        &publish_packet_bytes(b"a\0b", b"x", 0, false, false, 0),
        "U+0000 topic",
    );
}

#[test]
fn subscribe_with_null_character_in_filter_closes_the_connection() {
    // [MQTT-1.5.3-2]
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend(mqtt_str(b"a/\0"));
    body.push(0);
    assert_protocol_error(&packet(0x82, &body), "U+0000 filter");
}

#[test]
fn subscribe_with_invalid_utf8_filter_closes_the_connection() {
    // [MQTT-1.5.3-1]
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend(mqtt_str(&[b'a', 0xFF]));
    body.push(0);
    assert_protocol_error(&packet(0x82, &body), "bad UTF-8 filter");
}

#[test]
fn subscribe_with_requested_qos_3_closes_the_connection() {
    // [MQTT-3-8.3-4] QoS not 0, 1 or 2 / reserved bits non-zero: malformed.
    assert_protocol_error(&subscribe_packet(1, &[("a/b", 3)]), "SUBSCRIBE QoS 3");
    assert_protocol_error(
        &subscribe_packet(1, &[("a/b", 0x41)]),
        "SUBSCRIBE reserved bits",
    );
}

#[test]
fn subscribe_without_filters_closes_the_connection() {
    // [MQTT-3.8.3-3] at least one filter.
    assert_protocol_error(&packet(0x82, &[0x00, 0x01]), "empty SUBSCRIBE");
}

#[test]
fn unsubscribe_without_filters_closes_the_connection() {
    // [MQTT-3.10.3-2] at least one filter.
    assert_protocol_error(&packet(0xA2, &[0x00, 0x01]), "empty UNSUBSCRIBE");
}

#[test]
fn packet_id_zero_closes_the_connection() {
    // [MQTT-2.3.1-1] SUBSCRIBE, UNSUBSCRIBE and QoS > 0 PUBLISH need a non-zero id.
    assert_protocol_error(
        &publish_packet("a/b", b"x", 1, false, false, 0),
        "PUBLISH pid 0",
    );
    assert_protocol_error(&subscribe_packet(0, &[("a/b", 0)]), "SUBSCRIBE pid 0");
}

#[test]
fn string_length_beyond_packet_closes_the_connection() {
    // Topic length says 200 bytes but the packet holds 3.
    assert_protocol_error(
        &packet(0x30, &[0x00, 0xC8, b'a', b'b', b'c']),
        "topic overruns packet",
    );
}

#[test]
fn publish_before_connect_closes_the_connection() {
    let b = broker();
    let mut c = Raw::open(b.local_addr());
    c.send(&publish_packet("pre/t", b"x", 1, false, false, 1));
    // [MQTT-3.1.0-1]
    let got = c.expect_closed();
    assert!(got.is_empty(), "{got:?}");
    wait_stats(&b, "protocol_errors >= 1", |s| s.protocol_errors >= 1);
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn second_connect_closes_the_connection() {
    // [MQTT-3.1.0-2]
    assert_protocol_error(&connect_packet("again", true), "second CONNECT");
}

#[test]
fn wildcard_in_publish_topic_closes_the_connection() {
    // [MQTT-3.3.2-2]
    assert_protocol_error(
        &publish_packet("a/+/b", b"x", 0, false, false, 0),
        "+ in topic",
    );
    assert_protocol_error(
        &publish_packet("a/#", b"x", 1, false, false, 1),
        "# in topic",
    );
}

#[test]
fn empty_publish_topic_closes_the_connection() {
    // [MQTT-4.7.3-1] topic names are at least one character.
    assert_protocol_error(&publish_packet("", b"x", 0, false, false, 0), "empty topic");
}

#[test]
fn wildcard_publish_is_not_delivered() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("wp-sub", 0), true).0;
    assert_eq!(sub.subscribe(1, &[("#", 1)]), vec![1]);
    let (mut c, _) = Raw::connect(b.local_addr(), &id_on_shard("wp-pub", 1), true);
    c.send_lossy(&publish_packet("a/+", b"x", 0, false, false, 0));
    c.expect_closed();
    sub.expect_silence(QUIET);
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn packet_over_max_packet_size_is_closed_before_it_is_buffered() {
    let b = broker_with(|c| c.max_packet_size = 1024);
    let mut w = Raw::connect(b.local_addr(), &id_on_shard("ow", 0), true).0;
    assert_eq!(w.subscribe(1, &[("big/#", 1)]), vec![1]);
    let (mut c, _) = Raw::connect(b.local_addr(), &id_on_shard("ovr", 1), true);
    // Header claiming 1 MB, then only the topic: the broker must close without
    // waiting for the rest.
    let mut header = vec![0x30];
    header.extend(remaining_length(1024 * 1024));
    header.extend(mqtt_str(b"big/t"));
    c.send(&header);
    let got = c.expect_closed();
    assert!(got.is_empty(), "{got:?}");
    wait_stats(&b, "oversized_packets >= 1", |s| s.oversized_packets >= 1);
    // A packet just under the limit still passes.
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("ok", 1), true).0;
    publ.publish("big/ok", &[1u8; 900], 1, false);
    let p = w.expect_publish();
    assert_eq!(p.payload.len(), 900);
    w.ack(&p);
    w.expect_silence(QUIET);
    publ.disconnect();
    w.disconnect();
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn connect_over_max_packet_size_is_closed() {
    let b = broker_with(|c| c.max_packet_size = 1024);
    let mut c = Raw::open(b.local_addr());
    let mut header = vec![0x10];
    header.extend(remaining_length(100_000));
    c.send(&header);
    let got = c.expect_closed();
    assert!(got.iter().all(|p| p.body != [0, 0]), "{got:?}");
    wait_stats(&b, "oversized_packets >= 1", |s| s.oversized_packets >= 1);
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn many_bad_clients_in_parallel_do_not_disturb_a_good_one() {
    let b = broker();
    let addr = b.local_addr();
    let mut sub = Raw::connect(addr, &id_on_shard("par-sub", 0), true).0;
    assert_eq!(sub.subscribe(1, &[("par/t", 1)]), vec![1]);
    let bads: Vec<Vec<u8>> = vec![
        vec![0xFF; 64],
        vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        publish_packet_bytes(b"a\0", b"", 0, false, false, 0),
        vec![0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
        vec![0x10, 0x00],
        vec![0x10, 0x02, 0x00, 0x04],
    ];
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let bad = bads[i % bads.len()].clone();
            std::thread::spawn(move || {
                let mut c = Raw::open(addr);
                if i % 2 == 0 {
                    c.send(&connect_packet(&format!("bad-{i}"), true));
                    let _ = c.recv();
                }
                c.send_lossy(&bad);
                c.expect_closed_within(Duration::from_secs(4));
            })
        })
        .collect();
    let mut publ = Raw::connect(addr, &id_on_shard("par-pub", 1), true).0;
    for i in 0..50 {
        publ.publish("par/t", i.to_string().as_bytes(), 1, false);
    }
    for i in 0..50 {
        let p = sub.expect_publish();
        assert_eq!(p.payload_str(), i.to_string());
        sub.ack(&p);
    }
    for h in handles {
        h.join().expect("bad client thread");
    }
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

/// With the topic limits raised to what the wire allows, the trie's insertion,
/// matching and removal go 60,000 levels deep without recursing.
#[test]
fn very_deep_topics_and_filters_do_not_crash_the_broker() {
    let b = broker_with(|c| {
        c.max_topic_levels = 65_535;
        c.max_topic_length = 65_535;
    });
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("deep-sub", 0), true).0;
    // A filter of 20,000 levels and a topic of 30,000 levels (limits: 65,535 bytes).
    let deep_filter = vec!["+"; 20_000].join("/");
    assert_eq!(
        sub.subscribe(1, &[("#", 1), (&deep_filter, 1), ("+/#", 1)]),
        vec![1, 1, 1]
    );
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("deep-pub", 1), true).0;
    let deep_topic = vec!["a"; 30_000].join("/");
    publ.publish(&deep_topic, b"deep", 1, true);
    let slash_topic = "/".repeat(60_000);
    publ.publish(&slash_topic, b"slashes", 1, false);
    let p = sub.expect_publish();
    assert_eq!(p.payload, b"deep");
    sub.ack(&p);
    let p = sub.expect_publish();
    assert_eq!(p.payload, b"slashes");
    sub.ack(&p);
    // Retained deep topic delivered to a new deep wildcard subscription too.
    let mut sub2 = Raw::connect(b.local_addr(), &id_on_shard("deep-sub2", 1), true).0;
    let filter2 = format!("{}/#", vec!["+"; 29_000].join("/"));
    assert_eq!(sub2.subscribe(1, &[(&filter2, 1)]), vec![1]);
    let p = sub2.expect_publish();
    assert_eq!((p.payload.as_slice(), p.retain), (&b"deep"[..], true));
    sub2.ack(&p);
    sub2.disconnect();
    publ.disconnect();
    sub.disconnect();
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

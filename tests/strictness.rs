//! Protocol handling as strict as MQTT 3.1.1 allows, and as lenient as MQTT 3.1 needs:
//! control characters in strings (§1.5.3), zero-length topic filters [MQTT-4.7.3-1],
//! acknowledgements of the wrong kind (§4.3), and the flag bits 3.1 clients set. Each
//! case, sent as raw bytes to a 2-shard broker: the connection closes (or gets the
//! stated answer), the event is counted, and other clients carry on.

mod common;
use common::*;

/// One of each control-character class §1.5.3 names: U+0001..U+001F, U+007F..U+009F.
const CONTROLS: [&str; 5] = ["\u{1}", "\u{1f}", "\u{7f}", "\u{80}", "\u{9f}"];

/// A CONNECT the broker must close without a CONNACK, counted as a protocol error.
fn assert_connect_closed(opts: &ConnectOpts, what: &str) {
    let b = broker();
    let mut c = Raw::open(b.local_addr());
    c.send_lossy(&opts.encode());
    let got = c.expect_closed();
    assert!(
        got.is_empty(),
        "{what}: nothing may be sent back; got {got:?}"
    );
    wait_stats(&b, &format!("{what}: protocol_errors >= 1"), |s| {
        s.protocol_errors >= 1
    });
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn control_characters_in_client_id_username_or_will_topic_close_the_connection() {
    for ctl in CONTROLS {
        let opts = ConnectOpts::new(&format!("dev{ctl}ice"), true);
        assert_connect_closed(&opts, &format!("client id with {ctl:?}"));

        let mut opts = ConnectOpts::new(&unique("cu"), true);
        opts.username = Some(format!("user{ctl}").into_bytes());
        assert_connect_closed(&opts, &format!("username with {ctl:?}"));

        let opts = ConnectOpts::new(&unique("cw"), true).will(&format!("w/{ctl}"), b"x", 1, false);
        assert_connect_closed(&opts, &format!("will topic with {ctl:?}"));
    }
}

#[test]
fn control_characters_in_topic_names_and_filters_close_the_connection() {
    for ctl in CONTROLS {
        let topic = format!("a/{ctl}/b");
        assert_protocol_error(
            &publish_packet(&topic, b"x", 1, false, false, 1),
            &format!("PUBLISH topic with {ctl:?}"),
        );
        assert_protocol_error(
            &subscribe_packet(1, &[("ok/t", 0), (&topic, 1)]),
            &format!("SUBSCRIBE filter with {ctl:?}"),
        );
        assert_protocol_error(
            &unsubscribe_packet(1, &[&topic]),
            &format!("UNSUBSCRIBE filter with {ctl:?}"),
        );
    }
}

#[test]
fn characters_next_to_the_control_ranges_are_accepted() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("near-sub", 0), true).0;
    // Space, '~', U+00A0 (after U+009F), 'é', '©' (0xC2 0xA9 shares U+0080's lead byte).
    let topics = ["near/ /x", "near/~", "near/\u{a0}", "near/é", "near/©"];
    let filters: Vec<(&str, u8)> = topics.iter().map(|t| (*t, 1)).collect();
    assert_eq!(sub.subscribe(1, &filters), vec![1; topics.len()]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("near-pub", 1), true).0;
    for t in topics {
        publ.publish(t, b"ok", 1, false);
        let p = sub.expect_publish();
        assert_eq!(p.topic, t);
        sub.ack(&p);
    }
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn a_zero_length_topic_filter_closes_the_connection() {
    // [MQTT-4.7.3-1] topic filters are at least one character long; a violation of
    // the protocol closes the connection [MQTT-4.8.0-1].
    assert_protocol_error(&subscribe_packet(1, &[("", 1)]), "SUBSCRIBE of ''");
    assert_protocol_error(
        &subscribe_packet(1, &[("ok", 1), ("", 0)]),
        "SUBSCRIBE of 'ok' and ''",
    );
    assert_protocol_error(&unsubscribe_packet(1, &[""]), "UNSUBSCRIBE of ''");
    assert_protocol_error(
        &unsubscribe_packet(1, &["ok", ""]),
        "UNSUBSCRIBE of 'ok' and ''",
    );
}

#[test]
fn malformed_but_non_empty_filters_keep_suback_0x80() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &unique("bad-f"), true).0;
    assert_eq!(
        sub.subscribe(5, &[("a/#/b", 1), ("a+", 1), ("ok", 1)]),
        vec![0x80, 0x80, 1]
    );
    sub.ping();
    sub.disconnect();
    assert_no_leaks(&b);
}

/// A subscriber (with a will, on shard 1) that has one delivery in flight at `qos` from
/// a publisher on shard 0; returns the broker, the will watcher, the subscriber and the
/// delivery.
fn delivery_in_flight(qos: u8, what: &str) -> (Broker, Raw, Raw, Publish) {
    let b = broker();
    let mut w = Raw::connect(b.local_addr(), &id_on_shard("ackw", 0), true).0;
    assert_eq!(w.subscribe(1, &[("ack/will", 1)]), vec![1]);
    let opts =
        ConnectOpts::new(&id_on_shard("acks", 1), true).will("ack/will", what.as_bytes(), 1, false);
    let (mut sub, _) = Raw::connect_with(b.local_addr(), &opts);
    assert_eq!(sub.subscribe(1, &[("ack/t", qos)]), vec![qos]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("ackp", 0), true).0;
    publ.publish("ack/t", b"m", qos, false);
    publ.disconnect();
    let p = sub.expect_publish();
    assert_eq!(p.qos, qos);
    (b, w, sub, p)
}

/// The subscriber sends `acks`; the broker must close it (will published, counted).
fn assert_wrong_ack_closes(qos: u8, acks: &[fn(u16) -> Vec<u8>], what: &str) {
    let (b, mut w, mut sub, p) = delivery_in_flight(qos, what);
    for (i, ack) in acks.iter().enumerate() {
        if i + 1 < acks.len() {
            // A correct step first (PUBREC): its PUBREL comes back.
            sub.send(&ack(p.pid));
            assert_eq!(sub.recv_kind(PUBREL).pid(), p.pid, "{what}");
        } else {
            sub.send_lossy(&ack(p.pid));
        }
    }
    sub.expect_closed();
    let will = w.expect_publish();
    assert_eq!(will.payload_str(), what);
    w.ack(&will);
    w.disconnect();
    wait_stats(&b, &format!("{what}: protocol_errors >= 1"), |s| {
        s.protocol_errors >= 1
    });
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn an_acknowledgement_of_the_wrong_kind_closes_the_connection() {
    assert_wrong_ack_closes(1, &[pubrec], "PUBREC for QoS 1");
    assert_wrong_ack_closes(1, &[pubcomp], "PUBCOMP for QoS 1");
    assert_wrong_ack_closes(2, &[puback], "PUBACK for QoS 2 awaiting PUBREC");
    assert_wrong_ack_closes(2, &[pubcomp], "PUBCOMP for QoS 2 awaiting PUBREC");
    assert_wrong_ack_closes(2, &[pubrec, puback], "PUBACK for QoS 2 awaiting PUBCOMP");
}

#[test]
fn a_repeated_pubrec_is_answered_with_pubrel_again() {
    let (b, w, mut sub, p) = delivery_in_flight(2, "repeated PUBREC");
    for _ in 0..2 {
        sub.send(&pubrec(p.pid));
        let rel = sub.recv_kind(PUBREL);
        assert_eq!((rel.first, rel.pid()), (0x62, p.pid));
    }
    sub.send(&pubcomp(p.pid));
    sub.ping();
    sub.disconnect();
    w.disconnect();
    assert_eq!(b.stats().total().protocol_errors, 0);
    assert_no_leaks(&b);
}

fn mqtt31(client_id: &str) -> ConnectOpts {
    let mut opts = ConnectOpts::new(client_id, true);
    opts.protocol_name = b"MQIsdp".to_vec();
    opts.level = 3;
    opts
}

#[test]
fn mqtt31_connect_with_reserved_bits_is_accepted_and_311_is_not() {
    let b = broker();
    // The reserved connect-flag bit, and fixed-header flags 0010 (3.1 clients that set
    // QoS 1 on CONNECT) and 1111.
    for (first, reserved) in [(0x10u8, 0x01u8), (0x12, 0), (0x1F, 0x01)] {
        let mut opts = mqtt31(&unique("v31r"));
        opts.extra_flags = reserved;
        let mut bytes = opts.encode();
        bytes[0] = first;
        let mut c = Raw::open(b.local_addr());
        c.send(&bytes);
        let ack = c.recv_kind(CONNACK);
        assert_eq!(ack.body, [0, 0], "3.1 CONNECT {first:#04x} {reserved:#04x}");
        c.ping();
        c.disconnect();

        let mut opts = ConnectOpts::new(&unique("v311r"), true);
        opts.extra_flags = reserved;
        let mut bytes = opts.encode();
        bytes[0] = first;
        let mut c = Raw::open(b.local_addr());
        c.send_lossy(&bytes);
        let got = c.expect_closed();
        assert!(
            got.is_empty(),
            "3.1.1 CONNECT {first:#04x} {reserved:#04x}: {got:?}"
        );
    }
    wait_stats(&b, "three 3.1.1 CONNECTs refused", |s| {
        s.protocol_errors >= 3
    });
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn mqtt31_client_may_set_dup_on_pubrel_subscribe_and_unsubscribe() {
    let b = broker();
    let (mut sub, _) = Raw::connect_with(b.local_addr(), &mqtt31(&id_on_shard("v31s", 0)));
    let (mut c, _) = Raw::connect_with(b.local_addr(), &mqtt31(&id_on_shard("v31d", 1)));
    // SUBSCRIBE resent with DUP: SUBACK.
    let mut s = subscribe_packet(7, &[("v31/dup", 2)]);
    s[0] = 0x8A;
    c.send(&s);
    let ack = c.recv_kind(SUBACK);
    assert_eq!((ack.pid(), &ack.body[2..]), (7, &[2u8][..]));
    assert_eq!(sub.subscribe(1, &[("v31/dup", 2)]), vec![2]);
    // A QoS 2 publish whose PUBREL is resent with DUP: PUBCOMP each time, and the
    // message is delivered once.
    c.send(&publish_packet("v31/dup", b"once", 2, false, false, 9));
    assert_eq!(c.recv_kind(PUBREC).pid(), 9);
    c.send(&publish_packet("v31/dup", b"once", 2, false, true, 9));
    assert_eq!(c.recv_kind(PUBREC).pid(), 9);
    for _ in 0..2 {
        c.send(&[0x6A, 0x02, 0x00, 0x09]);
        assert_eq!(c.recv_kind(PUBCOMP).pid(), 9);
    }
    for r in [&mut sub, &mut c] {
        let p = r.expect_publish();
        assert_eq!(p.payload, b"once");
        r.ack(&p);
        r.expect_silence(QUIET);
    }
    // UNSUBSCRIBE resent with DUP: UNSUBACK.
    let mut u = unsubscribe_packet(8, &["v31/dup"]);
    u[0] = 0xAA;
    c.send(&u);
    assert_eq!(c.recv_kind(UNSUBACK).pid(), 8);
    c.ping();
    c.disconnect();
    sub.disconnect();
    assert_eq!(b.stats().total().protocol_errors, 0);
    assert_no_leaks(&b);
}

#[test]
fn mqtt311_client_setting_dup_on_pubrel_subscribe_or_unsubscribe_is_closed() {
    // [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]: the flags must be 0010.
    assert_protocol_error(&[0x6A, 0x02, 0x00, 0x01], "3.1.1 PUBREL with DUP");
    let mut s = subscribe_packet(1, &[("a", 0)]);
    s[0] = 0x8A;
    assert_protocol_error(&s, "3.1.1 SUBSCRIBE with DUP");
    let mut u = unsubscribe_packet(1, &["a"]);
    u[0] = 0xAA;
    assert_protocol_error(&u, "3.1.1 UNSUBSCRIBE with DUP");
}

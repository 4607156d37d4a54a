//! Persistent and clean sessions (MQTT 3.1.1 §3.1.2.4, §3.2.2.2, §4.1, §4.4).

mod common;
use common::*;

#[test]
fn persistent_session_keeps_subscriptions_and_queues_qos1_qos2_while_offline() {
    let b = broker();
    let id = id_on_shard("ps", 1);
    let (mut c, sp) = Raw::connect(b.local_addr(), &id, false);
    // [MQTT-3.2.2-3] no stored session: session present 0.
    assert!(
        !sp,
        "first connect with clean session 0 and no stored session: SP must be 0"
    );
    assert_eq!(c.subscribe(1, &[("ps/t", 2)]), vec![2]);
    c.disconnect();

    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("ps-pub", 0), true).0;
    publ.publish("ps/t", b"offline-q1", 1, false);
    publ.publish("ps/t", b"offline-q2", 2, false);

    let (mut c, sp) = Raw::connect(b.local_addr(), &id, false);
    // [MQTT-3.2.2-2] stored session resumed: session present 1.
    assert!(
        sp,
        "reconnect with clean session 0 must report session present 1"
    );
    let p1 = c.expect_publish();
    assert_eq!((p1.payload.as_slice(), p1.qos), (&b"offline-q1"[..], 1));
    c.ack(&p1);
    let p2 = c.expect_publish();
    assert_eq!((p2.payload.as_slice(), p2.qos), (&b"offline-q2"[..], 2));
    c.ack(&p2);
    // The subscription itself survived: a live publish arrives too.
    publ.publish("ps/t", b"live", 1, false);
    let p3 = c.expect_publish();
    assert_eq!(p3.payload, b"live");
    c.ack(&p3);
    publ.disconnect();
    c.disconnect();
    wait_stats(&b, "persistent session kept", |s| {
        s.sessions == 1 && s.subscriptions == 1
    });
    // Clean it up: clean session 1 discards it.
    let (c, sp) = Raw::connect(b.local_addr(), &id, true);
    assert!(!sp);
    c.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn messages_queued_while_offline_are_delivered_in_order() {
    let b = broker();
    let id = id_on_shard("pso", 0);
    let (mut c, _) = Raw::connect(b.local_addr(), &id, false);
    assert_eq!(c.subscribe(1, &[("pso/t", 1)]), vec![1]);
    c.disconnect();
    let mut publ = mq(b.local_addr(), &id_on_shard("pso-pub", 1), true);
    for i in 0..20 {
        publ.publish_acked("pso/t", 1, false, i.to_string().as_bytes());
    }
    let (mut c, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(sp);
    for i in 0..20 {
        let p = c.expect_publish();
        assert_eq!(
            p.payload_str(),
            i.to_string(),
            "offline queue order [MQTT-4.6.0-6]"
        );
        c.ack(&p);
    }
    publ.disconnect();
    c.disconnect();
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn clean_session_1_reports_session_present_0_and_discards_the_old_session() {
    let b = broker();
    let id = id_on_shard("cs", 0);
    let (mut c, _) = Raw::connect(b.local_addr(), &id, false);
    assert_eq!(c.subscribe(1, &[("cs/t", 1)]), vec![1]);
    c.disconnect();
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("cs-pub", 1), true).0;
    publ.publish("cs/t", b"queued", 1, false);

    let (mut c, sp) = Raw::connect(b.local_addr(), &id, true);
    // [MQTT-3.2.2-1] clean session 1: SP 0; [MQTT-3.1.2-6] previous session discarded.
    assert!(!sp, "clean session 1 must report session present 0");
    c.expect_silence(QUIET);
    publ.publish("cs/t", b"after", 1, false);
    c.expect_silence(QUIET); // the old subscription is gone
    c.disconnect();

    // Nothing was kept after the clean session ended either.
    let (c, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(
        !sp,
        "a clean-session connection leaves no session behind [MQTT-3.1.2-6]"
    );
    c.disconnect();
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    publ.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn clean_session_1_keeps_nothing_after_disconnect() {
    let b = broker();
    let id = id_on_shard("cs1", 1);
    let (mut c, _) = Raw::connect(b.local_addr(), &id, true);
    assert_eq!(c.subscribe(1, &[("cs1/#", 2)]), vec![2]);
    c.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn unacked_qos1_message_is_resent_with_dup_and_same_packet_id_after_reconnect() {
    let b = broker();
    let id = id_on_shard("dup1", 1);
    let (mut c, _) = Raw::connect(b.local_addr(), &id, false);
    assert_eq!(c.subscribe(1, &[("dup1/t", 1)]), vec![1]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("dup1-pub", 0), true).0;
    publ.publish("dup1/t", b"unacked", 1, false);
    let first = c.expect_publish();
    assert_eq!((first.qos, first.dup), (1, false));
    c.drop_connection(); // no PUBACK, no DISCONNECT

    // The broker may not have noticed the close yet; a takeover also works.
    let (mut c, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(sp);
    let again = c.expect_publish();
    // [MQTT-4.4.0-1] resend with the original packet id; [MQTT-3.3.1-1] DUP = 1.
    assert_eq!(again.pid, first.pid, "same packet identifier");
    assert!(again.dup, "DUP must be 1 on redelivery: {again:?}");
    assert_eq!(
        (again.payload.as_slice(), again.qos, again.topic.as_str()),
        (&b"unacked"[..], 1, "dup1/t")
    );
    c.ack(&again);
    c.expect_silence(QUIET);
    c.disconnect();
    // After the PUBACK nothing is resent on the next resume.
    let (mut c, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(sp);
    c.expect_silence(QUIET);
    c.disconnect();
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    publ.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn unacked_qos2_publish_is_resent_with_dup_after_reconnect() {
    let b = broker();
    let id = id_on_shard("dup2", 0);
    let (mut c, _) = Raw::connect(b.local_addr(), &id, false);
    assert_eq!(c.subscribe(1, &[("dup2/t", 2)]), vec![2]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("dup2-pub", 1), true).0;
    publ.publish("dup2/t", b"q2", 2, false);
    let first = c.expect_publish();
    assert_eq!((first.qos, first.dup), (2, false));
    c.disconnect(); // clean DISCONNECT, still no PUBREC

    let (mut c, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(sp);
    let again = c.expect_publish();
    assert_eq!(
        again.pid, first.pid,
        "same packet identifier [MQTT-4.4.0-1]"
    );
    assert!(
        again.dup,
        "DUP must be 1 on redelivery [MQTT-3.3.1-1]: {again:?}"
    );
    assert_eq!(again.qos, 2);
    c.ack(&again);
    c.expect_silence(QUIET);
    c.disconnect();
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    publ.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn qos2_pubrel_is_resent_after_reconnect() {
    let b = broker();
    let id = id_on_shard("rel", 1);
    let (mut c, _) = Raw::connect(b.local_addr(), &id, false);
    assert_eq!(c.subscribe(1, &[("rel/t", 2)]), vec![2]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("rel-pub", 0), true).0;
    publ.publish("rel/t", b"x", 2, false);
    let p = c.expect_publish();
    assert_eq!(p.qos, 2);
    c.send(&pubrec(p.pid));
    let rel = c.recv();
    assert_eq!(
        rel,
        Pkt {
            first: 0x62,
            body: p.pid.to_be_bytes().to_vec()
        }
    );
    c.drop_connection(); // before PUBCOMP

    let (mut c, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(sp);
    // [MQTT-4.4.0-1] the PUBREL is resent with the original id; the PUBLISH is not.
    let again = c.recv();
    assert_eq!(
        again,
        Pkt {
            first: 0x62,
            body: p.pid.to_be_bytes().to_vec()
        },
        "expected the PUBREL to be resent"
    );
    c.send(&pubcomp(p.pid));
    c.expect_silence(QUIET);
    c.disconnect();
    // Completed: nothing is resent on the next resume.
    let (mut c, _) = Raw::connect(b.local_addr(), &id, false);
    c.expect_silence(QUIET);
    c.disconnect();
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    publ.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn offline_queue_is_bounded_by_max_queued_messages() {
    let b = broker_with(|c| c.max_queued_messages = 10);
    let id = id_on_shard("oq", 1);
    let (mut c, _) = Raw::connect(b.local_addr(), &id, false);
    assert_eq!(c.subscribe(1, &[("oq/t", 1)]), vec![1]);
    c.disconnect();
    wait_stats(&b, "subscriber offline", |s| s.connections == 0);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("oq-pub", 0), true).0;
    for i in 0..50 {
        publ.publish("oq/t", i.to_string().as_bytes(), 1, false);
    }
    publ.disconnect();
    // The broker drops new messages once the queue is full: the first 10 are kept.
    wait_stats(&b, "dropped_queue_full == 40", |s| {
        s.dropped_queue_full == 40
    });
    let (mut c, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(sp);
    let mut got = Vec::new();
    while let Some(p) = c.recv_within(QUIET * 2) {
        let p = p.publish();
        c.ack(&p);
        got.push(p.payload_str());
    }
    let want: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "exactly the first 10 queued messages");
    assert_eq!(b.stats().total().dropped_queue_full, 40);
    c.disconnect();
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn persistent_session_with_rumqttc_receives_offline_messages() {
    let b = broker();
    let id = id_on_shard("rmq-ps", 0);
    let mut c = mq(b.local_addr(), &id, false);
    assert_eq!(c.subscribe("rps/#", 1), Some(1));
    c.disconnect();
    let mut publ = mq(b.local_addr(), &id_on_shard("rmq-ps-pub", 1), true);
    publ.publish_acked("rps/a", 1, false, b"while away");
    publ.disconnect();
    let mut c = mq(b.local_addr(), &id, false);
    assert!(c.session_present, "[MQTT-3.2.2-2]");
    let p = c.recv_publish();
    assert_eq!(&p.payload[..], b"while away");
    c.disconnect();
    let c = mq(b.local_addr(), &id, true);
    assert!(!c.session_present);
    c.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn several_unacked_messages_are_resent_in_original_order_with_same_ids() {
    let b = broker();
    let id = id_on_shard("multi", 0);
    let (mut c, _) = Raw::connect(b.local_addr(), &id, false);
    assert_eq!(c.subscribe(1, &[("multi/t", 2)]), vec![2]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("multi-pub", 1), true).0;
    for i in 0..6 {
        publ.publish(
            "multi/t",
            i.to_string().as_bytes(),
            1 + (i % 2) as u8,
            false,
        );
    }
    let first: Vec<Publish> = (0..6).map(|_| c.expect_publish()).collect();
    c.drop_connection();
    let (mut c, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(sp);
    // [MQTT-4.4.0-1] resent with the original ids; [MQTT-4.6.0-1] in the original order.
    for want in &first {
        let p = c.expect_publish();
        assert_eq!(
            (p.pid, p.qos, p.payload_str(), p.dup),
            (want.pid, want.qos, want.payload_str(), true)
        );
        c.ack(&p);
    }
    c.expect_silence(QUIET);
    c.disconnect();
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    publ.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn resent_and_queued_messages_follow_each_other_in_order() {
    // Some messages were in flight (unacked) when the client vanished, more arrived
    // while it was offline: on resume the in-flight ones come first, then the rest.
    let b = broker_with(|c| c.max_inflight = 3);
    let id = id_on_shard("mix", 1);
    let (mut c, _) = Raw::connect(b.local_addr(), &id, false);
    assert_eq!(c.subscribe(1, &[("mix/t", 1)]), vec![1]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("mix-pub", 0), true).0;
    for i in 0..5 {
        publ.publish("mix/t", i.to_string().as_bytes(), 1, false);
    }
    let inflight: Vec<Publish> = (0..3).map(|_| c.expect_publish()).collect();
    c.drop_connection();
    wait_stats(&b, "subscriber gone", |s| s.connections == 1);
    for i in 5..8 {
        publ.publish("mix/t", i.to_string().as_bytes(), 1, false);
    }
    let (mut c, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(sp);
    let mut got = Vec::new();
    for _ in 0..8 {
        let p = c.expect_publish();
        c.ack(&p);
        got.push(p.payload_str());
    }
    let want: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
    assert_eq!(
        inflight.iter().map(|p| p.payload_str()).collect::<Vec<_>>(),
        vec!["0", "1", "2"]
    );
    c.expect_silence(QUIET);
    c.disconnect();
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    publ.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn offline_queue_is_bounded_by_max_queued_bytes() {
    // 10 messages of (topic 4 + payload 96) = 100 bytes fit in 1000 bytes; the rest drop.
    let b = broker_with(|c| c.max_queued_bytes = 1000);
    let id = id_on_shard("oqb", 0);
    let (mut c, _) = Raw::connect(b.local_addr(), &id, false);
    assert_eq!(c.subscribe(1, &[("oq/b", 1)]), vec![1]);
    c.disconnect();
    wait_stats(&b, "subscriber offline", |s| s.connections == 0);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("oqb-pub", 1), true).0;
    for i in 0..30 {
        let mut payload = format!("{i:02}").into_bytes();
        payload.resize(96, b'.');
        publ.publish("oq/b", &payload, 1, false);
    }
    publ.disconnect();
    wait_stats(&b, "dropped_queue_full == 20", |s| {
        s.dropped_queue_full == 20
    });
    let (mut c, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(sp);
    let mut got = Vec::new();
    while let Some(p) = c.recv_within(QUIET * 2) {
        let p = p.publish();
        c.ack(&p);
        got.push(p.payload_str()[..2].to_string());
    }
    let want: Vec<String> = (0..10).map(|i| format!("{i:02}")).collect();
    assert_eq!(got, want);
    c.disconnect();
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn message_published_with_retain_while_offline_is_delivered_with_retain_0() {
    let b = broker();
    let id = id_on_shard("offret", 1);
    let (mut c, _) = Raw::connect(b.local_addr(), &id, false);
    assert_eq!(c.subscribe(1, &[("offret/t", 1)]), vec![1]);
    c.disconnect();
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("offret-pub", 0), true).0;
    publ.publish("offret/t", b"r", 1, true);
    let (mut c, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(sp);
    // The subscription existed when the message was published: it is a normal
    // forward, so RETAIN is 0 [MQTT-3.3.1-9] (one copy, not also a retained one).
    let p = c.expect_publish();
    assert_eq!(
        (p.payload.as_slice(), p.retain),
        (&b"r"[..], false),
        "{p:?}"
    );
    c.ack(&p);
    c.expect_silence(QUIET);
    c.disconnect();
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    publ.disconnect();
    assert_no_leaks(&b);
}

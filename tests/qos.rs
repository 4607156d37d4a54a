//! Publish/subscribe and the QoS flows (MQTT 3.1.1 §3.3–§3.11, §4.3, §4.6), with
//! publisher and subscriber on the same shard and on different shards.

mod common;
use common::*;

/// Every (publish QoS, subscription QoS) pair is delivered once at min(pub, granted).
fn qos_matrix(pub_shard: usize, sub_shard: usize) {
    let b = broker();
    let mut sub = mq(b.local_addr(), &id_on_shard("mx-sub", sub_shard), true);
    for sq in 0..3u8 {
        assert_eq!(
            sub.subscribe(&format!("mx/s{sq}"), sq),
            Some(sq),
            "granted QoS"
        );
    }
    let mut publ = mq(b.local_addr(), &id_on_shard("mx-pub", pub_shard), true);
    for pq in 0..3u8 {
        for sq in 0..3u8 {
            publ.publish_acked(
                &format!("mx/s{sq}"),
                pq,
                false,
                format!("p{pq}s{sq}").as_bytes(),
            );
        }
    }
    let mut got = Vec::new();
    for _ in 0..9 {
        let p = sub.recv_publish();
        let payload = String::from_utf8(p.payload.to_vec()).unwrap();
        got.push((payload, qos_num(p.qos), p.retain));
    }
    // No duplicates afterwards.
    if let Some(extra) = sub.recv_publish_within(QUIET) {
        panic!("unexpected extra delivery {extra:?}; got so far {got:?}");
    }
    got.sort();
    let mut want = Vec::new();
    for pq in 0..3u8 {
        for sq in 0..3u8 {
            want.push((format!("p{pq}s{sq}"), pq.min(sq), false));
        }
    }
    want.sort();
    // [MQTT-3.8.4-6] / §4.3: delivered at the minimum of publish QoS and granted QoS.
    assert_eq!(got, want, "(payload, delivered QoS, retain)");
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn qos_is_downgraded_to_granted_qos_across_shards_0_to_1() {
    qos_matrix(0, 1);
}

#[test]
fn qos_is_downgraded_to_granted_qos_across_shards_1_to_0() {
    qos_matrix(1, 0);
}

#[test]
fn qos_is_downgraded_to_granted_qos_on_the_same_shard_0() {
    qos_matrix(0, 0);
}

#[test]
fn qos_is_downgraded_to_granted_qos_on_the_same_shard_1() {
    qos_matrix(1, 1);
}

#[test]
fn broker_acknowledges_raw_publisher_with_puback_pubrec_pubcomp() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("ack-sub", 1), true).0;
    assert_eq!(sub.subscribe(1, &[("ack/t", 2)]), vec![2]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("ack-pub", 0), true).0;

    publ.send(&publish_packet("ack/t", b"one", 1, false, false, 7));
    // [MQTT-4.3.2-2] PUBACK with the same packet id; exactly 0x40 0x02 pid.
    assert_eq!(
        publ.recv(),
        Pkt {
            first: 0x40,
            body: vec![0, 7]
        }
    );

    publ.send(&publish_packet("ack/t", b"two", 2, false, false, 0x1234));
    // [MQTT-4.3.3-2] PUBREC with the same packet id.
    assert_eq!(
        publ.recv(),
        Pkt {
            first: 0x50,
            body: vec![0x12, 0x34]
        }
    );
    publ.send(&pubrel(0x1234));
    // [MQTT-4.3.3-2] PUBCOMP with the same packet id.
    assert_eq!(
        publ.recv(),
        Pkt {
            first: 0x70,
            body: vec![0x12, 0x34]
        }
    );

    let p1 = sub.expect_publish();
    assert_eq!((p1.payload.as_slice(), p1.qos), (&b"one"[..], 1));
    sub.ack(&p1);
    let p2 = sub.expect_publish();
    assert_eq!((p2.payload.as_slice(), p2.qos), (&b"two"[..], 2));
    sub.ack(&p2);
    publ.publish("ack/end", b"", 0, false);
    sub.expect_silence(QUIET);
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn broker_delivers_qos1_and_qos2_to_raw_subscriber_with_correct_flows() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("out-sub", 0), true).0;
    assert_eq!(sub.subscribe(1, &[("out/t", 2)]), vec![2]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("out-pub", 1), true).0;

    publ.publish("out/t", b"q1", 1, false);
    let p = sub.expect_publish();
    assert_eq!((p.qos, p.dup, p.retain), (1, false, false), "{p:?}");
    // [MQTT-2.3.1-1] QoS > 0 PUBLISH carries a non-zero packet id.
    assert_ne!(p.pid, 0);
    sub.send(&puback(p.pid));

    publ.publish("out/t", b"q2", 2, false);
    let p = sub.expect_publish();
    assert_eq!((p.qos, p.dup, p.retain), (2, false, false), "{p:?}");
    assert_ne!(p.pid, 0);
    sub.send(&pubrec(p.pid));
    // [MQTT-4.3.3-1] PUBREL (fixed header 0x62 [MQTT-3.6.1-1]) with the same id.
    let rel = sub.recv();
    assert_eq!(
        rel,
        Pkt {
            first: 0x62,
            body: p.pid.to_be_bytes().to_vec()
        }
    );
    sub.send(&pubcomp(p.pid));
    sub.ping();
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn qos2_publish_resent_with_dup_before_pubrel_is_delivered_once() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("dd-sub", 1), true).0;
    assert_eq!(sub.subscribe(1, &[("dd/t", 2), ("dd/end", 0)]), vec![2, 0]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("dd-pub", 0), true).0;

    publ.send(&publish_packet("dd/t", b"once", 2, false, false, 42));
    assert_eq!(
        publ.recv(),
        Pkt {
            first: 0x50,
            body: vec![0, 42]
        }
    );
    // Resend (as after a lost PUBREC) with DUP=1: PUBREC again, no second delivery
    // [MQTT-4.3.3-2].
    publ.send(&publish_packet("dd/t", b"once", 2, false, true, 42));
    assert_eq!(
        publ.recv(),
        Pkt {
            first: 0x50,
            body: vec![0, 42]
        }
    );
    publ.send(&publish_packet("dd/t", b"once", 2, false, true, 42));
    assert_eq!(
        publ.recv(),
        Pkt {
            first: 0x50,
            body: vec![0, 42]
        }
    );
    publ.send(&pubrel(42));
    assert_eq!(
        publ.recv(),
        Pkt {
            first: 0x70,
            body: vec![0, 42]
        }
    );
    publ.publish("dd/end", b"", 0, false);

    let got = sub.publishes_until("dd/end");
    assert_eq!(
        got.len(),
        1,
        "QoS 2 message must be delivered exactly once: {got:?}"
    );
    assert_eq!(got[0].payload, b"once");
    sub.expect_silence(QUIET);
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn qos2_packet_id_can_be_reused_after_pubcomp() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("re-sub", 0), true).0;
    assert_eq!(sub.subscribe(1, &[("re/t", 2), ("re/end", 0)]), vec![2, 0]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("re-pub", 1), true).0;
    for payload in [&b"first"[..], b"second"] {
        publ.send(&publish_packet("re/t", payload, 2, false, false, 9));
        assert_eq!(
            publ.recv(),
            Pkt {
                first: 0x50,
                body: vec![0, 9]
            }
        );
        publ.send(&pubrel(9));
        assert_eq!(
            publ.recv(),
            Pkt {
                first: 0x70,
                body: vec![0, 9]
            }
        );
    }
    publ.publish("re/end", b"", 0, false);
    let got: Vec<Vec<u8>> = sub
        .publishes_until("re/end")
        .into_iter()
        .map(|p| p.payload)
        .collect();
    assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn pubrel_for_unknown_packet_id_gets_pubcomp() {
    let b = broker();
    let mut c = Raw::connect(b.local_addr(), &unique("relunk"), true).0;
    c.send(&pubrel(77));
    // §4.3.3: the receiver answers PUBREL with PUBCOMP (the state may already be gone).
    assert_eq!(
        c.recv(),
        Pkt {
            first: 0x70,
            body: vec![0, 77]
        }
    );
    c.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn per_publisher_order_is_preserved_across_shards() {
    let b = broker();
    let mut sub = mq(b.local_addr(), &id_on_shard("ord-sub", 1), true);
    assert_eq!(sub.subscribe("ord/t", 1), Some(1));
    let mut publ = mq(b.local_addr(), &id_on_shard("ord-pub", 0), true);
    const N: usize = 1000;
    for i in 0..N {
        publ.publish("ord/t", 1, false, i.to_string().as_bytes());
    }
    let mut got = Vec::with_capacity(N);
    for _ in 0..N {
        let p = sub.recv_publish();
        got.push(
            String::from_utf8(p.payload.to_vec())
                .unwrap()
                .parse::<usize>()
                .unwrap(),
        );
    }
    let want: Vec<usize> = (0..N).collect();
    // [MQTT-4.6.0-6] messages from one client on one topic arrive in order.
    if got != want {
        let first_bad = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
        panic!(
            "order broken at index {first_bad}: got {:?} ...",
            &got[first_bad..(first_bad + 10).min(N)]
        );
    }
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn per_publisher_order_is_preserved_for_pipelined_raw_qos1_publishes() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("ordr-sub", 0), true).0;
    assert_eq!(sub.subscribe(1, &[("ordr/t", 1)]), vec![1]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("ordr-pub", 1), true).0;
    const N: u16 = 300;
    let mut batch = Vec::new();
    for i in 1..=N {
        batch.extend(publish_packet(
            "ordr/t",
            i.to_string().as_bytes(),
            1,
            false,
            false,
            i,
        ));
    }
    publ.send(&batch);
    for i in 1..=N {
        let a = publ.recv_kind(PUBACK);
        assert_eq!(a.pid(), i, "PUBACKs in order");
    }
    for i in 1..=N {
        let p = sub.expect_publish();
        assert_eq!(p.payload_str(), i.to_string(), "message order");
        sub.ack(&p);
    }
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn overlapping_subscriptions_deliver_at_the_highest_granted_qos() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("ov-sub", 1), true).0;
    assert_eq!(sub.subscribe(1, &[("a/#", 0)]), vec![0]);
    assert_eq!(sub.subscribe(2, &[("a/b", 2)]), vec![2]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("ov-pub", 0), true).0;
    publ.publish("a/b", b"m", 2, false);
    publ.publish("a/zz-end", b"", 0, false);
    let got = sub.publishes_until("a/zz-end");
    // [MQTT-3.3.5-1] respecting the maximum QoS of all matching subscriptions.
    assert!(
        got.iter().any(|p| p.qos == 2 && p.payload == b"m"),
        "a copy at QoS 2 must be delivered: {got:?}"
    );
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn overlapping_subscriptions_deliver_one_copy() {
    // Spec allows extra copies (§3.3.5 MAY); shardmq's design (DESIGN.md §3) promises one.
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("ov1-sub", 0), true).0;
    assert_eq!(
        sub.subscribe(1, &[("a/#", 0), ("a/b", 2), ("+/b", 1), ("#", 0)]),
        vec![0, 2, 1, 0]
    );
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("ov1-pub", 1), true).0;
    publ.publish("a/b", b"m", 2, false);
    publ.publish("a/zz-end", b"", 0, false);
    let got = sub.publishes_until("a/zz-end");
    assert_eq!(got.len(), 1, "exactly one copy: {got:?}");
    assert_eq!(got[0].qos, 2);
    sub.expect_silence(QUIET);
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn resubscribing_with_a_different_qos_replaces_the_subscription() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("rq-sub", 1), true).0;
    assert_eq!(sub.subscribe(1, &[("rs/t", 0)]), vec![0]);
    assert_eq!(sub.subscribe(2, &[("rs/t", 2)]), vec![2]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("rq-pub", 0), true).0;
    publ.publish("rs/t", b"m", 2, false);
    // [MQTT-3.8.4-3] the new subscription replaces the old one: one copy, at QoS 2.
    let p = sub.expect_publish();
    assert_eq!(p.qos, 2);
    sub.ack(&p);
    sub.expect_silence(QUIET);
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn suback_has_0x80_for_invalid_filters_and_grants_the_others() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("inv-sub", 0), true).0;
    let codes = sub.subscribe(
        5,
        &[
            ("ok/1", 1),
            ("a/#/b", 2),
            ("a+", 0),
            ("ok/2", 2),
            ("a/b#", 1),
            ("+a/b", 0),
            ("ok/+", 0),
        ],
    );
    // [MQTT-4.7.1-2], [MQTT-4.7.1-3]: these filters are invalid; SUBACK carries one
    // return code per filter, in order [MQTT-3.8.4-5].
    assert_eq!(codes, vec![1, 0x80, 0x80, 2, 0x80, 0x80, 0]);
    // The connection stays usable and the valid filters work.
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("inv-pub", 1), true).0;
    publ.publish("ok/1", b"x", 1, false);
    let p = sub.expect_publish();
    assert_eq!((p.topic.as_str(), p.qos), ("ok/1", 1));
    sub.ack(&p);
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn unsubscribe_stops_delivery_and_unsuback_arrives() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("un-sub", 1), true).0;
    assert_eq!(sub.subscribe(1, &[("un/t", 1), ("un/end", 0)]), vec![1, 0]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("un-pub", 0), true).0;
    publ.publish("un/t", b"before", 1, false);
    let p = sub.expect_publish();
    assert_eq!(p.payload, b"before");
    sub.ack(&p);
    // [MQTT-3.10.4-4] UNSUBACK with the same packet id (checked in the helper).
    sub.unsubscribe(0x0101, &["un/t"]);
    publ.publish("un/t", b"after", 1, false);
    publ.publish("un/end", b"", 0, false);
    // [MQTT-3.10.4-2] the server stops adding messages for the filter.
    let got = sub.publishes_until("un/end");
    assert!(got.is_empty(), "nothing after UNSUBSCRIBE: {got:?}");
    sub.expect_silence(QUIET);
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn unsubscribe_of_unknown_filter_still_gets_unsuback() {
    let b = broker();
    let mut c = Raw::connect(b.local_addr(), &unique("un-unknown"), true).0;
    // [MQTT-3.10.4-5] UNSUBACK even if no filter matched.
    c.unsubscribe(3, &["never/subscribed", "x/#"]);
    c.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn unsubscribe_from_one_shard_does_not_affect_subscribers_on_the_other() {
    let b = broker();
    let mut s0 = Raw::connect(b.local_addr(), &id_on_shard("u2-s0", 0), true).0;
    let mut s1 = Raw::connect(b.local_addr(), &id_on_shard("u2-s1", 1), true).0;
    assert_eq!(s0.subscribe(1, &[("u2/t", 1)]), vec![1]);
    assert_eq!(s1.subscribe(1, &[("u2/t", 1)]), vec![1]);
    s0.unsubscribe(2, &["u2/t"]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("u2-pub", 0), true).0;
    publ.publish("u2/t", b"still", 1, false);
    let p = s1.expect_publish();
    assert_eq!(p.payload, b"still");
    s1.ack(&p);
    s0.expect_silence(QUIET);
    publ.disconnect();
    s0.disconnect();
    s1.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn subscription_is_visible_to_other_shard_publishers_right_after_suback() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("vis-sub", 1), true).0;
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("vis-pub", 0), true).0;
    for i in 0..50u16 {
        let filter = if i % 2 == 0 {
            format!("vis/{i}/+")
        } else {
            format!("vis/{i}/x")
        };
        let topic = format!("vis/{i}/x");
        assert_eq!(sub.subscribe(i + 1, &[(&filter, 1)]), vec![1]);
        // Invariant (DESIGN.md §3): a PUBLISH accepted after the SUBACK reaches it.
        publ.send(&publish_packet(&topic, b"v", 0, false, false, 0));
        let p = sub.recv_within(TIMEOUT).unwrap_or_else(|| {
            panic!("iteration {i}: publish right after SUBACK of {filter} was lost")
        });
        let p = p.publish();
        assert_eq!(p.topic, topic, "iteration {i}");
    }
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn one_publish_reaches_subscribers_on_both_shards() {
    let b = broker();
    let mut subs = Vec::new();
    for shard in [0, 0, 1, 1] {
        let mut s = Raw::connect(b.local_addr(), &id_on_shard("fan-sub", shard), true).0;
        assert_eq!(s.subscribe(1, &[("fan/+", 1)]), vec![1]);
        subs.push(s);
    }
    let mut publ = mq(b.local_addr(), &id_on_shard("fan-pub", 0), true);
    publ.publish_acked("fan/x", 1, false, b"all");
    for s in subs.iter_mut() {
        let p = s.expect_publish();
        assert_eq!(
            (p.topic.as_str(), p.payload.as_slice()),
            ("fan/x", &b"all"[..])
        );
        s.ack(&p);
    }
    publ.disconnect();
    for s in subs {
        s.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn large_payload_is_delivered_intact() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("big-sub", 0), true).0;
    assert_eq!(sub.subscribe(1, &[("big/t", 1)]), vec![1]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("big-pub", 1), true).0;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    publ.publish("big/t", &payload, 1, false);
    let p = sub.expect_publish();
    assert_eq!(p.payload.len(), payload.len());
    assert!(p.payload == payload, "payload corrupted");
    sub.ack(&p);
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn zero_length_payload_is_delivered() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("z-sub", 1), true).0;
    assert_eq!(sub.subscribe(1, &[("z/t", 2)]), vec![2]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("z-pub", 0), true).0;
    publ.publish("z/t", b"", 2, false);
    let p = sub.expect_publish();
    assert!(p.payload.is_empty());
    sub.ack(&p);
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn client_receives_its_own_publish_when_subscribed() {
    let b = broker();
    let mut c = mq(b.local_addr(), &unique("self"), true);
    assert_eq!(c.subscribe("self/t", 1), Some(1));
    c.publish("self/t", 1, false, b"echo");
    let p = c.recv_publish();
    assert_eq!(&p.payload[..], b"echo");
    c.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn inbound_qos2_state_survives_reconnect_of_a_persistent_publisher() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("iq-sub", 1), true).0;
    assert_eq!(sub.subscribe(1, &[("iq/t", 2), ("iq/end", 0)]), vec![2, 0]);
    let id = id_on_shard("iq-pub", 0);
    let (mut publ, _) = Raw::connect(b.local_addr(), &id, false);
    publ.send(&publish_packet("iq/t", b"exactly once", 2, false, false, 5));
    assert_eq!(
        publ.recv(),
        Pkt {
            first: 0x50,
            body: vec![0, 5]
        }
    );
    publ.drop_connection(); // PUBREC lost, as far as the client knows

    let (mut publ, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(sp);
    // §4.1: the server's session state includes QoS 2 messages received but not
    // completely acknowledged; the resent PUBLISH must not be delivered again.
    publ.send(&publish_packet("iq/t", b"exactly once", 2, false, true, 5));
    assert_eq!(
        publ.recv(),
        Pkt {
            first: 0x50,
            body: vec![0, 5]
        }
    );
    publ.send(&pubrel(5));
    assert_eq!(
        publ.recv(),
        Pkt {
            first: 0x70,
            body: vec![0, 5]
        }
    );
    publ.publish("iq/end", b"", 0, false);
    let got = sub.publishes_until("iq/end");
    assert_eq!(got.len(), 1, "delivered exactly once: {got:?}");
    publ.disconnect();
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn inflight_window_bounds_unacked_deliveries_and_keeps_order() {
    let b = broker_with(|c| c.max_inflight = 4);
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("win-sub", 0), true).0;
    assert_eq!(sub.subscribe(1, &[("win/t", 1)]), vec![1]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("win-pub", 1), true).0;
    for i in 0..20 {
        publ.publish("win/t", i.to_string().as_bytes(), 1, false);
    }
    // Without acks, only max_inflight messages are outstanding, with distinct ids.
    let mut first = Vec::new();
    while let Some(p) = sub.recv_within(QUIET) {
        first.push(p.publish());
    }
    assert_eq!(
        first.len(),
        4,
        "max_inflight = 4 unacknowledged deliveries: {first:?}"
    );
    let mut ids: Vec<u16> = first.iter().map(|p| p.pid).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "packet ids in flight must be distinct");
    let mut got: Vec<String> = Vec::new();
    for p in &first {
        sub.ack(p);
        got.push(p.payload_str());
    }
    while got.len() < 20 {
        let p = sub.expect_publish();
        sub.ack(&p);
        got.push(p.payload_str());
    }
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
    sub.expect_silence(QUIET);
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn outstanding_packet_ids_are_unique_and_nonzero() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("pids-sub", 1), true).0;
    assert_eq!(sub.subscribe(1, &[("pids/t", 2)]), vec![2]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("pids-pub", 0), true).0;
    for i in 0..40 {
        publ.publish("pids/t", i.to_string().as_bytes(), 1 + (i % 2) as u8, false);
    }
    let mut got = Vec::new();
    while let Some(p) = sub.recv_within(QUIET) {
        got.push(p.publish());
    }
    assert_eq!(got.len(), 40, "default max_inflight (64) lets all 40 out");
    let mut ids: Vec<u16> = got.iter().map(|p| p.pid).collect();
    assert!(ids.iter().all(|&i| i != 0), "[MQTT-2.3.1-1]");
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        40,
        "[MQTT-2.3.1-2] ids of unacknowledged packets must be unique"
    );
    for p in &got {
        sub.ack(p);
    }
    sub.ping();
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn many_publishers_on_both_shards_each_keep_their_order() {
    let b = broker();
    let mut sub = mq(b.local_addr(), &id_on_shard("many-sub", 0), true);
    assert_eq!(sub.subscribe("many/+", 1), Some(1));
    const P: usize = 16;
    const N: usize = 50;
    let addr = b.local_addr();
    let handles: Vec<_> = (0..P)
        .map(|p| {
            std::thread::spawn(move || {
                let mut c =
                    Raw::connect(addr, &id_on_shard(&format!("many-pub{p}"), p % 2), true).0;
                let mut batch = Vec::new();
                for i in 0..N {
                    batch.extend(publish_packet(
                        &format!("many/{p}"),
                        i.to_string().as_bytes(),
                        1,
                        false,
                        false,
                        i as u16 + 1,
                    ));
                }
                c.send(&batch);
                for _ in 0..N {
                    c.recv_kind(PUBACK);
                }
                c.disconnect();
            })
        })
        .collect();
    let mut next = [0usize; P];
    for _ in 0..P * N {
        let m = sub.recv_publish();
        let p: usize = m.topic.trim_start_matches("many/").parse().unwrap();
        let i: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        assert_eq!(i, next[p], "publisher {p} out of order");
        next[p] += 1;
    }
    for h in handles {
        h.join().unwrap();
    }
    assert!(sub.recv_publish_within(QUIET).is_none(), "duplicates");
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn one_publish_fans_out_to_many_subscribers_across_shards() {
    let b = broker();
    let mut subs: Vec<Raw> = (0..40)
        .map(|i| {
            let mut s = Raw::connect(b.local_addr(), &id_on_shard("fo", i % 2), true).0;
            let f = if i % 3 == 0 {
                "fo/#"
            } else if i % 3 == 1 {
                "fo/+/x"
            } else {
                "fo/y/x"
            };
            assert_eq!(s.subscribe(1, &[(f, 2)]), vec![2]);
            s
        })
        .collect();
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("fo-pub", 1), true).0;
    publ.publish("fo/y/x", b"everyone", 2, false);
    for s in subs.iter_mut() {
        let p = s.expect_publish();
        assert_eq!((p.payload.as_slice(), p.qos), (&b"everyone"[..], 2));
        s.ack(&p);
    }
    publ.disconnect();
    for s in subs {
        s.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn stalled_subscriber_does_not_hold_up_other_subscribers() {
    let b = broker();
    // This subscriber never reads: its socket, write buffer and queue fill up.
    let mut stalled = Raw::connect(b.local_addr(), &id_on_shard("stall", 0), true).0;
    assert_eq!(stalled.subscribe(1, &[("stall/t", 0)]), vec![0]);
    let mut readers = vec![
        mq(b.local_addr(), &id_on_shard("stall-reader", 0), true),
        mq(b.local_addr(), &id_on_shard("stall-reader1", 1), true),
    ];
    for r in readers.iter_mut() {
        assert_eq!(r.subscribe("stall/t", 0), Some(0));
    }
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("stall-pub", 1), true).0;
    // The publisher is paced by the readers (batches of 100, far below the queue
    // bounds), so only the stalled subscriber can overflow.
    const BATCH: usize = 100;
    const BATCHES: usize = 60;
    let filler = vec![b'x'; 4000];
    for batch in 0..BATCHES {
        let mut bytes = Vec::new();
        for i in batch * BATCH..(batch + 1) * BATCH {
            let mut p = i.to_string().into_bytes();
            p.push(b':');
            p.extend_from_slice(&filler);
            bytes.extend(publish_packet("stall/t", &p, 0, false, false, 0));
        }
        publ.send(&bytes);
        for r in readers.iter_mut() {
            for i in batch * BATCH..(batch + 1) * BATCH {
                let m = r.recv_publish_within(TIMEOUT).unwrap_or_else(|| {
                    panic!("reader {} stopped receiving at message {i} while another subscriber is stalled", r.id)
                });
                let s = std::str::from_utf8(&m.payload).unwrap();
                let got: usize = s.split(':').next().unwrap().parse().unwrap();
                assert_eq!(got, i, "reader {}: lost or reordered messages", r.id);
            }
        }
    }
    wait_stats(
        &b,
        "stalled subscriber's overflow dropped and counted",
        |s| s.dropped_queue_full > 0,
    );
    publ.disconnect();
    let _ = stalled.stream.shutdown(std::net::Shutdown::Both);
    for r in readers {
        r.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn dup_flag_is_not_propagated_from_publisher_to_subscribers() {
    let b = broker();
    let mut s1 = Raw::connect(b.local_addr(), &id_on_shard("dupp-s1", 1), true).0;
    assert_eq!(s1.subscribe(1, &[("dupp/t", 1)]), vec![1]);
    let mut s0 = Raw::connect(b.local_addr(), &id_on_shard("dupp-s0", 0), true).0;
    assert_eq!(s0.subscribe(1, &[("dupp/t", 0)]), vec![0]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("dupp-pub", 0), true).0;
    publ.send(&publish_packet("dupp/t", b"d", 1, false, true, 11));
    assert_eq!(
        publ.recv(),
        Pkt {
            first: 0x40,
            body: vec![0, 11]
        }
    );
    // [MQTT-3.3.1-3] the outgoing DUP flag is set independently of the incoming one;
    // a first delivery has DUP 0 [MQTT-4.3.2-1]; QoS 0 always DUP 0 [MQTT-3.3.1-2].
    let p = s1.expect_publish();
    assert_eq!((p.qos, p.dup), (1, false), "{p:?}");
    s1.ack(&p);
    let p = s0.expect_publish();
    assert_eq!((p.qos, p.dup), (0, false), "{p:?}");
    publ.disconnect();
    s0.disconnect();
    s1.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn pipelined_qos2_acks_come_back_in_order() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("p2-sub", 0), true).0;
    assert_eq!(sub.subscribe(1, &[("p2/t", 2)]), vec![2]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("p2-pub", 1), true).0;
    let mut bytes = Vec::new();
    for i in 1..=20u16 {
        bytes.extend(publish_packet(
            "p2/t",
            i.to_string().as_bytes(),
            2,
            false,
            false,
            i,
        ));
    }
    publ.send(&bytes);
    // [MQTT-4.6.0-3] PUBRECs in the order the PUBLISHes were received.
    for i in 1..=20u16 {
        assert_eq!(
            publ.recv(),
            Pkt {
                first: 0x50,
                body: i.to_be_bytes().to_vec()
            }
        );
    }
    let rels: Vec<u8> = (1..=20u16).flat_map(pubrel).collect();
    publ.send(&rels);
    for i in 1..=20u16 {
        assert_eq!(
            publ.recv(),
            Pkt {
                first: 0x70,
                body: i.to_be_bytes().to_vec()
            }
        );
    }
    for i in 1..=20u16 {
        let p = sub.expect_publish();
        assert_eq!(p.payload_str(), i.to_string());
        sub.ack(&p);
    }
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn unsubscribe_removes_only_the_identical_filter() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("ux-sub", 0), true).0;
    assert_eq!(
        sub.subscribe(1, &[("ux/+", 1), ("ux/b", 1), ("ux/end", 0)]),
        vec![1, 1, 0]
    );
    // Unsubscribing "ux/+" leaves "ux/b"; "ux/c" is not a filter at all (§4.7 wiki
    // note: you cannot punch holes into a wildcard subscription).
    sub.unsubscribe(2, &["ux/+", "ux/c"]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("ux-pub", 1), true).0;
    publ.publish("ux/b", b"b", 1, false);
    publ.publish("ux/c", b"c", 1, false);
    publ.publish("ux/end", b"", 0, false);
    let got: Vec<String> = sub
        .publishes_until("ux/end")
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(got, vec!["ux/b".to_string()]);
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn subscribe_with_many_filters_gets_one_return_code_each() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &unique("many-f"), true).0;
    let filters: Vec<String> = (0..500).map(|i| format!("mf/{i}/+")).collect();
    let pairs: Vec<(&str, u8)> = filters
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_str(), (i % 3) as u8))
        .collect();
    let codes = sub.subscribe(1, &pairs);
    let want: Vec<u8> = (0..500).map(|i| (i % 3) as u8).collect();
    assert_eq!(codes, want, "[MQTT-3.8.4-5]");
    let names: Vec<&str> = filters.iter().map(|s| s.as_str()).collect();
    sub.unsubscribe(2, &names);
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn subscribe_unsubscribe_churn_keeps_cross_shard_delivery_exact() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("churn-sub", 1), true).0;
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("churn-pub", 0), true).0;
    for i in 0..30u16 {
        assert_eq!(sub.subscribe(i * 2 + 1, &[("churn/t", 1)]), vec![1]);
        publ.send(&publish_packet(
            "churn/t",
            i.to_string().as_bytes(),
            0,
            false,
            false,
            0,
        ));
        let p = sub
            .recv_within(TIMEOUT)
            .unwrap_or_else(|| panic!("round {i}: publish after re-SUBSCRIBE lost"))
            .publish();
        assert_eq!(p.payload_str(), i.to_string(), "round {i}");
        sub.unsubscribe(i * 2 + 2, &["churn/t"]);
    }
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn subscriber_replaced_on_the_same_shard_keeps_receiving_cross_shard_publishes() {
    let b = broker();
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("repl-pub", 0), true).0;
    for i in 0..20 {
        let mut sub = Raw::connect(b.local_addr(), &id_on_shard("repl-sub", 1), true).0;
        assert_eq!(sub.subscribe(1, &[("repl/+", 0)]), vec![0]);
        publ.send(&publish_packet("repl/x", b"x", 0, false, false, 0));
        sub.recv_within(TIMEOUT)
            .unwrap_or_else(|| panic!("round {i}: lost"))
            .publish();
        // The only subscriber of the filter on its shard leaves (interest removed)...
        sub.drop_connection();
    }
    publ.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn connection_dropped_while_subscribe_is_pending_leaks_nothing() {
    let b = broker();
    for i in 0..30 {
        let persistent = i % 3 == 0;
        let id = id_on_shard(&format!("pend{i}"), i % 2);
        if persistent {
            assert_no_leaks(&b);
        }
        let mut c = Raw::open(b.local_addr());
        let mut bytes = connect_packet(&id, !persistent);
        let filters: Vec<String> = (0..20).map(|j| format!("pend/{i}/{j}/#")).collect();
        let pairs: Vec<(&str, u8)> = filters.iter().map(|f| (f.as_str(), 1)).collect();
        bytes.extend(subscribe_packet(1, &pairs));
        c.send(&bytes);
        c.drop_connection(); // before the SUBACK
        if persistent {
            // The session stays (clean session 0); once it exists, discard it by
            // connecting with clean session 1. (Separate connections have no defined
            // processing order, so wait for the first to be processed.)
            wait_stats(&b, "persistent session stored", |s| {
                s.sessions == 1 && s.connections == 0
            });
            Raw::connect(b.local_addr(), &id, true).0.disconnect();
        }
    }
    assert_no_leaks(&b);
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn a_burst_of_mixed_publishes_in_one_segment_arrives_complete_and_in_order_on_both_shards() {
    // One write carries runs of QoS 0 messages on one topic, broken by other topics,
    // a QoS 1 message and a retained one, then DISCONNECT: every subscriber gets its
    // matching messages once, in publish order, at its QoS, on either shard.
    let b = broker();
    let mut all = Raw::connect(b.local_addr(), &id_on_shard("bu-all", 0), true).0;
    assert_eq!(all.subscribe(1, &[("burst/#", 1)]), vec![1]);
    let mut only_a = Raw::connect(b.local_addr(), &id_on_shard("bu-a", 1), true).0;
    assert_eq!(only_a.subscribe(1, &[("burst/a", 0)]), vec![0]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("bu-pub", 0), true).0;

    // (topic, payload, qos, retain)
    let mut sent: Vec<(&str, String, u8, bool)> = Vec::new();
    for i in 0..100 {
        sent.push(("burst/a", format!("a{i}"), 0, false));
    }
    for i in 0..3 {
        sent.push(("burst/b", format!("b{i}"), 0, false));
    }
    sent.push(("burst/a", "q1".into(), 1, false));
    sent.push(("burst/a", "kept".into(), 0, true));
    for i in 100..300 {
        sent.push(("burst/a", format!("a{i}"), 0, false));
    }
    let mut bytes = Vec::new();
    for (topic, payload, qos, retain) in &sent {
        bytes.extend(publish_packet(
            topic,
            payload.as_bytes(),
            *qos,
            *retain,
            false,
            7,
        ));
    }
    bytes.extend([0xE0, 0x00]);
    publ.send(&bytes);
    assert_eq!(publ.recv_kind(PUBACK).pid(), 7);
    publ.expect_closed();

    let check = |sub: &mut Raw, filter: &str, granted: u8| {
        let matches = |t: &str| filter == "burst/#" || t == filter;
        for (topic, payload, qos, _) in sent.iter().filter(|m| matches(m.0)) {
            let p = sub
                .recv_within(TIMEOUT)
                .unwrap_or_else(|| panic!("{filter}: {topic} {payload} not delivered"))
                .publish();
            assert_eq!(
                (p.topic.as_str(), p.payload_str(), p.qos, p.retain),
                (*topic, payload.clone(), (*qos).min(granted), false),
                "{filter}: publish order and QoS"
            );
            sub.ack(&p);
        }
        sub.expect_silence(std::time::Duration::from_millis(100));
    };
    check(&mut all, "burst/#", 1);
    check(&mut only_a, "burst/a", 0);
    all.disconnect();
    only_a.disconnect();
    assert_no_leaks(&b);
}

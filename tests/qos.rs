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
fn suback_has_0x80_for_an_empty_filter() {
    let b = broker();
    let mut sub = Raw::connect(b.local_addr(), &unique("empty-f"), true).0;
    // [MQTT-4.7.3-1] topic filters are at least one character long.
    assert_eq!(sub.subscribe(5, &[("", 1), ("ok", 1)]), vec![0x80, 1]);
    sub.ping();
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

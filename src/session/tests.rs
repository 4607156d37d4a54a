//! Behaviour tests of the session state machine, one per rule, plus a randomized run
//! against a simulated client.

use super::*;
use crate::protocol::{
    ConnAck, Connect, ConnectReturnCode, Protocol, SubAck, Subscribe, Unsubscribe,
};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};

fn limits(max_inflight: u16, max_queued_messages: usize, max_queued_bytes: usize) -> Limits {
    Limits {
        max_inflight,
        max_queued_messages,
        max_queued_bytes,
    }
}

fn roomy() -> Limits {
    limits(10, 100, 1 << 20)
}

fn msg(topic: &'static str, payload: &'static str, qos: QoS) -> Message {
    Message {
        topic: ByteString::from_static(topic),
        payload: Bytes::from_static(payload.as_bytes()),
        qos,
        retain: false,
        stamp: Default::default(),
        props: None,
    }
}

fn session(l: Limits) -> Session {
    Session::new(ByteString::from_static("client"), false, l)
}

fn connected(l: Limits) -> (Session, Output, Instant) {
    let mut s = session(l);
    let mut out = Output::default();
    let now = Instant::now();
    s.connect(0, None, now, &mut out);
    assert!(out.packets.is_empty());
    (s, out, now)
}

fn take(out: &mut Output) -> Vec<Packet> {
    std::mem::take(&mut out.packets)
}

fn publish(topic: &'static str, payload: &'static str, qos: QoS, pkid: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        props: None,
        dup,
        qos,
        retain: false,
        topic: ByteString::from_static(topic),
        pkid,
        payload: Bytes::from_static(payload.as_bytes()),
    })
}

/// (pkid, payload, qos, dup) of each PUBLISH, for compact assertions.
fn publishes(packets: &[Packet]) -> Vec<(u16, String, QoS, bool)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                p.pkid,
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.qos,
                p.dup,
            )),
            _ => None,
        })
        .collect()
}

fn pkid_of(p: &Packet) -> u16 {
    match p {
        Packet::Publish(p) => p.pkid,
        other => panic!("expected PUBLISH, got {}", other.name()),
    }
}

// ---------------------------------------------------------------- inbound

#[test]
fn inbound_qos0_is_routed_without_ack() {
    let (mut s, mut out, now) = connected(roomy());
    s.handle(
        publish("a/b", "x", QoS::AtMostOnce, 0, false),
        now,
        &mut out,
    )
    .unwrap();
    assert!(out.packets.is_empty());
    assert_eq!(out.publishes, vec![msg("a/b", "x", QoS::AtMostOnce)]);
}

#[test]
fn inbound_retain_flag_is_passed_to_router() {
    let (mut s, mut out, now) = connected(roomy());
    let Packet::Publish(mut p) = publish("a", "x", QoS::AtLeastOnce, 3, false) else {
        unreachable!()
    };
    p.retain = true;
    s.handle(Packet::Publish(p), now, &mut out).unwrap();
    assert!(out.publishes[0].retain);
}

#[test]
fn inbound_qos1_is_routed_and_acked() {
    let (mut s, mut out, now) = connected(roomy());
    s.handle(publish("a", "x", QoS::AtLeastOnce, 7, false), now, &mut out)
        .unwrap();
    assert_eq!(out.packets, vec![Packet::PubAck(7)]);
    assert_eq!(out.publishes, vec![msg("a", "x", QoS::AtLeastOnce)]);
}

#[test]
fn inbound_qos1_resent_is_a_new_publication() {
    let (mut s, mut out, now) = connected(roomy());
    s.handle(publish("a", "x", QoS::AtLeastOnce, 7, false), now, &mut out)
        .unwrap();
    s.handle(publish("a", "x", QoS::AtLeastOnce, 7, true), now, &mut out)
        .unwrap();
    assert_eq!(out.packets, vec![Packet::PubAck(7), Packet::PubAck(7)]);
    assert_eq!(out.publishes.len(), 2);
}

#[test]
fn inbound_qos2_is_routed_once_and_answered_with_pubrec() {
    let (mut s, mut out, now) = connected(roomy());
    s.handle(publish("a", "x", QoS::ExactlyOnce, 9, false), now, &mut out)
        .unwrap();
    assert_eq!(out.packets, vec![Packet::PubRec(9)]);
    assert_eq!(out.publishes, vec![msg("a", "x", QoS::ExactlyOnce)]);
    assert_eq!(s.stats().awaiting_pubrel, 1);
    out.packets.clear();
    out.publishes.clear();
    s.handle(Packet::PubRel(9), now, &mut out).unwrap();
    assert_eq!(out.packets, vec![Packet::PubComp(9)]);
    assert!(out.publishes.is_empty());
    assert_eq!(s.stats().awaiting_pubrel, 0);
}

#[test]
fn inbound_qos2_resent_before_pubrel_is_delivered_once() {
    let (mut s, mut out, now) = connected(roomy());
    s.handle(publish("a", "x", QoS::ExactlyOnce, 9, false), now, &mut out)
        .unwrap();
    s.handle(publish("a", "x", QoS::ExactlyOnce, 9, true), now, &mut out)
        .unwrap();
    // A client may even resend without DUP; still the same packet id, still one delivery.
    s.handle(publish("a", "x", QoS::ExactlyOnce, 9, false), now, &mut out)
        .unwrap();
    assert_eq!(
        out.packets,
        vec![Packet::PubRec(9), Packet::PubRec(9), Packet::PubRec(9)]
    );
    assert_eq!(out.publishes.len(), 1);
}

#[test]
fn inbound_pubrel_for_unknown_id_gets_pubcomp() {
    let (mut s, mut out, now) = connected(roomy());
    s.handle(Packet::PubRel(42), now, &mut out).unwrap();
    assert_eq!(out.packets, vec![Packet::PubComp(42)]);
}

/// 5.0 names an unknown packet id in PUBCOMP: 0x92 (§3.7.2.1); a known one is a
/// plain success.
#[test]
fn inbound_pubrel_for_unknown_id_gets_0x92_at_5_0() {
    let (mut s, mut out, now) = connected(roomy());
    s.set_v5(true);
    s.handle(Packet::PubRel(42), now, &mut out).unwrap();
    s.handle(publish("a", "x", QoS::ExactlyOnce, 9, false), now, &mut out)
        .unwrap();
    s.handle(Packet::PubRel(9), now, &mut out).unwrap();
    assert_eq!(
        out.packets,
        vec![
            Packet::PubCompV5(v5_ack(42, 0x92)),
            Packet::PubRec(9),
            Packet::PubComp(9)
        ]
    );
}

fn v5_ack(pkid: u16, reason: u8) -> crate::protocol::Ack {
    crate::protocol::Ack {
        reason: crate::protocol::ReasonCode(reason),
        ..crate::protocol::Ack::success(pkid)
    }
}

#[test]
fn inbound_duplicate_pubrel_gets_pubcomp_again() {
    let (mut s, mut out, now) = connected(roomy());
    s.handle(publish("a", "x", QoS::ExactlyOnce, 9, false), now, &mut out)
        .unwrap();
    s.handle(Packet::PubRel(9), now, &mut out).unwrap();
    s.handle(Packet::PubRel(9), now, &mut out).unwrap();
    assert_eq!(
        out.packets,
        vec![Packet::PubRec(9), Packet::PubComp(9), Packet::PubComp(9)]
    );
}

#[test]
fn inbound_qos2_same_id_after_pubrel_is_a_new_message() {
    let (mut s, mut out, now) = connected(roomy());
    s.handle(publish("a", "x", QoS::ExactlyOnce, 9, false), now, &mut out)
        .unwrap();
    s.handle(Packet::PubRel(9), now, &mut out).unwrap();
    s.handle(publish("a", "y", QoS::ExactlyOnce, 9, false), now, &mut out)
        .unwrap();
    assert_eq!(
        out.publishes,
        vec![
            msg("a", "x", QoS::ExactlyOnce),
            msg("a", "y", QoS::ExactlyOnce)
        ]
    );
}

#[test]
fn inbound_qos2_ids_are_independent() {
    let (mut s, mut out, now) = connected(roomy());
    for id in [1, 2, 3] {
        s.handle(
            publish("a", "x", QoS::ExactlyOnce, id, false),
            now,
            &mut out,
        )
        .unwrap();
    }
    s.handle(Packet::PubRel(2), now, &mut out).unwrap();
    s.handle(publish("a", "x", QoS::ExactlyOnce, 1, true), now, &mut out)
        .unwrap();
    s.handle(publish("a", "x", QoS::ExactlyOnce, 2, false), now, &mut out)
        .unwrap();
    assert_eq!(out.publishes.len(), 4);
    assert_eq!(s.stats().awaiting_pubrel, 3);
}

#[test]
fn inbound_qos2_state_survives_disconnect_and_connect() {
    let (mut s, mut out, now) = connected(roomy());
    s.handle(publish("a", "x", QoS::ExactlyOnce, 9, false), now, &mut out)
        .unwrap();
    assert_eq!(s.disconnect(false), None);
    out.packets.clear();
    out.publishes.clear();
    s.connect(0, None, now, &mut out);
    s.handle(publish("a", "x", QoS::ExactlyOnce, 9, true), now, &mut out)
        .unwrap();
    assert_eq!(out.packets, vec![Packet::PubRec(9)]);
    assert!(out.publishes.is_empty(), "redelivered after resume");
    s.handle(Packet::PubRel(9), now, &mut out).unwrap();
    assert_eq!(out.packets, vec![Packet::PubRec(9), Packet::PubComp(9)]);
}

#[test]
fn inbound_zero_packet_ids_are_protocol_violations() {
    let (mut s, mut out, now) = connected(roomy());
    for p in [
        publish("a", "x", QoS::AtLeastOnce, 0, false),
        publish("a", "x", QoS::ExactlyOnce, 0, false),
        Packet::PubAck(0),
        Packet::PubRec(0),
        Packet::PubRel(0),
        Packet::PubComp(0),
    ] {
        let name = p.name();
        assert_eq!(
            s.handle(p, now, &mut out),
            Err(SessionError::ZeroPacketId(name))
        );
    }
    assert!(out.packets.is_empty());
    assert!(out.publishes.is_empty());
}

#[test]
fn inbound_qos0_with_dup_is_a_protocol_violation() {
    let (mut s, mut out, now) = connected(roomy());
    assert_eq!(
        s.handle(publish("a", "x", QoS::AtMostOnce, 0, true), now, &mut out),
        Err(SessionError::DupOnQoS0)
    );
    assert!(out.publishes.is_empty());
}

#[test]
fn pingreq_is_answered_with_pingresp() {
    let (mut s, mut out, now) = connected(roomy());
    s.handle(Packet::PingReq, now, &mut out).unwrap();
    assert_eq!(out.packets, vec![Packet::PingResp]);
}

#[test]
fn unexpected_packets_are_rejected() {
    let (mut s, mut out, now) = connected(roomy());
    let connect = Packet::Connect(Box::new(Connect {
        props: Default::default(),
        protocol: Protocol::V311,
        bridge: false,
        clean_session: false,
        keep_alive: 10,
        client_id: ByteString::from_static("client"),
        will: None,
        username: None,
        password: None,
    }));
    let bad = [
        connect,
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Accepted,
        }),
        Packet::Subscribe(Subscribe {
            id: None,
            user: Vec::new(),
            pkid: 1,
            filters: vec![],
        }),
        Packet::SubAck(SubAck {
            pkid: 1,
            codes: vec![],
        }),
        Packet::Unsubscribe(Unsubscribe {
            user: Vec::new(),
            pkid: 1,
            filters: vec![],
        }),
        Packet::UnsubAck(1),
        Packet::PingResp,
    ];
    for p in bad {
        let name = p.name();
        assert_eq!(
            s.handle(p, now, &mut out),
            Err(SessionError::UnexpectedPacket(name))
        );
    }
    assert!(out.packets.is_empty());
}

#[test]
fn packets_while_not_connected_are_rejected() {
    let mut s = session(roomy());
    let mut out = Output::default();
    assert_eq!(
        s.handle(Packet::PingReq, Instant::now(), &mut out),
        Err(SessionError::NotConnected)
    );
    assert!(out.packets.is_empty());
}

// ---------------------------------------------------------------- outbound

#[test]
fn outbound_qos0_is_sent_at_once_without_id() {
    let (mut s, mut out, _) = connected(roomy());
    assert_eq!(
        s.deliver(&msg("t", "a", QoS::AtMostOnce), QoS::ExactlyOnce, &mut out),
        Delivery::Sent
    );
    assert_eq!(
        out.packets,
        vec![publish("t", "a", QoS::AtMostOnce, 0, false)]
    );
    assert_eq!(s.stats().inflight, 0);
}

#[test]
fn outbound_qos1_full_flow() {
    let (mut s, mut out, now) = connected(roomy());
    assert_eq!(
        s.deliver(&msg("t", "a", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out),
        Delivery::Sent
    );
    assert_eq!(
        out.packets,
        vec![publish("t", "a", QoS::AtLeastOnce, 1, false)]
    );
    assert_eq!(s.stats().inflight, 1);
    out.packets.clear();
    s.handle(Packet::PubAck(1), now, &mut out).unwrap();
    assert!(out.packets.is_empty());
    assert_eq!(s.stats().inflight, 0);
    // A duplicate PUBACK for a completed id needs no answer.
    s.handle(Packet::PubAck(1), now, &mut out).unwrap();
    assert!(out.packets.is_empty());
}

#[test]
fn outbound_qos2_full_flow() {
    let (mut s, mut out, now) = connected(roomy());
    assert_eq!(
        s.deliver(&msg("t", "a", QoS::ExactlyOnce), QoS::ExactlyOnce, &mut out),
        Delivery::Sent
    );
    assert_eq!(
        take(&mut out),
        vec![publish("t", "a", QoS::ExactlyOnce, 1, false)]
    );
    s.handle(Packet::PubRec(1), now, &mut out).unwrap();
    assert_eq!(take(&mut out), vec![Packet::PubRel(1)]);
    assert_eq!(
        s.stats().inflight,
        1,
        "awaiting PUBCOMP still occupies the window"
    );
    // Duplicate PUBREC: PUBREL again.
    s.handle(Packet::PubRec(1), now, &mut out).unwrap();
    assert_eq!(take(&mut out), vec![Packet::PubRel(1)]);
    s.handle(Packet::PubComp(1), now, &mut out).unwrap();
    assert!(out.packets.is_empty());
    assert_eq!(s.stats().inflight, 0);
    // Duplicate PUBCOMP: ignored.
    s.handle(Packet::PubComp(1), now, &mut out).unwrap();
    assert!(out.packets.is_empty());
}

#[test]
fn pubrec_for_unknown_id_is_answered_with_pubrel() {
    let (mut s, mut out, now) = connected(roomy());
    s.handle(Packet::PubRec(77), now, &mut out).unwrap();
    assert_eq!(out.packets, vec![Packet::PubRel(77)]);
}

#[test]
fn acks_of_the_wrong_kind_are_protocol_violations() {
    // (ack, stage to bring flow 2 to first): flow 1 is QoS 1, flow 2 is QoS 2.
    let wrong = [
        (Packet::PubRec(1), false), // PUBREC for a QoS 1 flow
        (Packet::PubComp(1), false),
        (Packet::PubAck(2), false), // PUBACK for a QoS 2 flow awaiting PUBREC
        (Packet::PubComp(2), false), // PUBCOMP before PUBREC
        (Packet::PubAck(2), true),  // PUBACK for a flow awaiting PUBCOMP
    ];
    for (ack, released) in wrong {
        let (mut s, mut out, now) = connected(roomy());
        s.deliver(
            &msg("t", "q1", QoS::AtLeastOnce),
            QoS::AtLeastOnce,
            &mut out,
        );
        s.deliver(
            &msg("t", "q2", QoS::ExactlyOnce),
            QoS::ExactlyOnce,
            &mut out,
        );
        if released {
            s.handle(Packet::PubRec(2), now, &mut out).unwrap();
        }
        out.packets.clear();
        let name = ack.name();
        assert!(
            matches!(
                s.handle(ack.clone(), now, &mut out),
                Err(SessionError::WrongAcknowledgement(n, _)) if n == name
            ),
            "{ack:?} (released: {released})"
        );
    }
}

#[test]
fn right_acks_complete_flows_and_a_repeated_pubrec_gets_pubrel_again() {
    let (mut s, mut out, now) = connected(roomy());
    s.deliver(
        &msg("t", "q1", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        &mut out,
    );
    s.deliver(
        &msg("t", "q2", QoS::ExactlyOnce),
        QoS::ExactlyOnce,
        &mut out,
    );
    out.packets.clear();
    s.handle(Packet::PubAck(1), now, &mut out).unwrap();
    s.handle(Packet::PubRec(2), now, &mut out).unwrap();
    s.handle(Packet::PubRec(2), now, &mut out).unwrap(); // repeated while awaiting PUBCOMP
    assert_eq!(out.packets, vec![Packet::PubRel(2), Packet::PubRel(2)]);
    s.handle(Packet::PubComp(2), now, &mut out).unwrap();
    assert_eq!(s.stats().inflight, 0);
    // Acks for ids no longer in flight (late duplicates) are not violations.
    s.handle(Packet::PubAck(1), now, &mut out).unwrap();
    s.handle(Packet::PubComp(2), now, &mut out).unwrap();
}

#[test]
fn outbound_is_downgraded_to_the_granted_qos() {
    let (mut s, mut out, _) = connected(roomy());
    s.deliver(&msg("t", "a", QoS::ExactlyOnce), QoS::AtLeastOnce, &mut out);
    s.deliver(&msg("t", "b", QoS::ExactlyOnce), QoS::AtMostOnce, &mut out);
    s.deliver(&msg("t", "c", QoS::AtLeastOnce), QoS::ExactlyOnce, &mut out);
    s.deliver(&msg("t", "d", QoS::AtMostOnce), QoS::ExactlyOnce, &mut out);
    assert_eq!(
        publishes(&out.packets),
        vec![
            (1, "a".into(), QoS::AtLeastOnce, false),
            (0, "b".into(), QoS::AtMostOnce, false),
            (2, "c".into(), QoS::AtLeastOnce, false),
            (0, "d".into(), QoS::AtMostOnce, false),
        ]
    );
}

#[test]
fn outbound_retain_flag_is_kept_as_given() {
    let (mut s, mut out, _) = connected(roomy());
    let mut m = msg("t", "a", QoS::AtLeastOnce);
    m.retain = true;
    s.deliver(&m, QoS::AtLeastOnce, &mut out);
    let Packet::Publish(p) = &out.packets[0] else {
        panic!()
    };
    assert!(p.retain);
}

#[test]
fn outbound_messages_share_topic_and_payload_buffers() {
    let l = limits(1, 10, 1000);
    let (mut s, mut out, _) = connected(l);
    let a = Message {
        topic: ByteString::from("t/shared"),
        payload: Bytes::from(vec![7u8; 64]),
        qos: QoS::AtLeastOnce,
        retain: false,
        stamp: Default::default(),
        props: None,
    };
    s.deliver(&a, QoS::AtLeastOnce, &mut out); // in flight
    s.deliver(&a, QoS::AtLeastOnce, &mut out); // queued
    let Packet::Publish(p) = &out.packets[0] else {
        panic!()
    };
    assert_eq!(p.payload.as_ptr(), a.payload.as_ptr());
    assert_eq!(p.topic.as_ptr(), a.topic.as_ptr());
    let Stage::Published(held) = s.inflight.get_mut(1).unwrap() else {
        panic!()
    };
    assert_eq!(held.payload.as_ptr(), a.payload.as_ptr());
    assert_eq!(
        s.queue.pop().unwrap().0.payload.as_ptr(),
        a.payload.as_ptr()
    );
}

// ---------------------------------------------------------------- window

#[test]
fn window_limit_queues_and_refills_in_fifo_order() {
    let (mut s, mut out, now) = connected(limits(2, 100, 1 << 20));
    for p in ["a", "b", "c", "d"] {
        s.deliver(&msg("t", p, QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    }
    assert_eq!(
        publishes(&take(&mut out)),
        vec![
            (1, "a".into(), QoS::AtLeastOnce, false),
            (2, "b".into(), QoS::AtLeastOnce, false)
        ]
    );
    assert_eq!(s.stats().queued, 2);
    s.handle(Packet::PubAck(1), now, &mut out).unwrap();
    assert_eq!(
        publishes(&take(&mut out)),
        vec![(3, "c".into(), QoS::AtLeastOnce, false)]
    );
    s.handle(Packet::PubAck(2), now, &mut out).unwrap();
    assert_eq!(
        publishes(&take(&mut out)),
        vec![(4, "d".into(), QoS::AtLeastOnce, false)]
    );
    assert_eq!(s.stats().queued, 0);
}

#[test]
fn new_messages_never_overtake_queued_ones() {
    let (mut s, mut out, now) = connected(limits(1, 100, 1 << 20));
    assert_eq!(
        s.deliver(&msg("t", "a", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out),
        Delivery::Sent
    );
    assert_eq!(
        s.deliver(&msg("t", "b", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out),
        Delivery::Queued
    );
    // QoS 0 goes behind the queued QoS 1 rather than overtaking it.
    assert_eq!(
        s.deliver(&msg("t", "c", QoS::AtMostOnce), QoS::AtMostOnce, &mut out),
        Delivery::Queued
    );
    take(&mut out);
    s.handle(Packet::PubAck(1), now, &mut out).unwrap();
    assert_eq!(
        publishes(&take(&mut out)),
        vec![
            (2, "b".into(), QoS::AtLeastOnce, false),
            (0, "c".into(), QoS::AtMostOnce, false)
        ]
    );
    // Queue empty again: QoS 0 goes at once even with a full window.
    assert_eq!(
        s.deliver(&msg("t", "d", QoS::AtMostOnce), QoS::AtMostOnce, &mut out),
        Delivery::Sent
    );
}

#[test]
fn pubrec_does_not_free_a_window_slot_but_pubcomp_does() {
    let (mut s, mut out, now) = connected(limits(1, 100, 1 << 20));
    s.deliver(&msg("t", "a", QoS::ExactlyOnce), QoS::ExactlyOnce, &mut out);
    s.deliver(&msg("t", "b", QoS::ExactlyOnce), QoS::ExactlyOnce, &mut out);
    take(&mut out);
    s.handle(Packet::PubRec(1), now, &mut out).unwrap();
    assert_eq!(take(&mut out), vec![Packet::PubRel(1)]);
    s.handle(Packet::PubComp(1), now, &mut out).unwrap();
    assert_eq!(
        publishes(&take(&mut out)),
        vec![(2, "b".into(), QoS::ExactlyOnce, false)]
    );
}

#[test]
fn out_of_order_acks_free_slots_and_keep_fifo() {
    let (mut s, mut out, now) = connected(limits(3, 100, 1 << 20));
    for p in ["a", "b", "c", "d", "e"] {
        s.deliver(&msg("t", p, QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    }
    take(&mut out);
    s.handle(Packet::PubAck(2), now, &mut out).unwrap();
    assert_eq!(
        publishes(&take(&mut out)),
        vec![(4, "d".into(), QoS::AtLeastOnce, false)]
    );
    s.handle(Packet::PubAck(3), now, &mut out).unwrap();
    assert_eq!(
        publishes(&take(&mut out)),
        vec![(5, "e".into(), QoS::AtLeastOnce, false)]
    );
    // Resume order is the original send order of what is left: a(1), d(4), e(5).
    s.disconnect(false);
    s.connect(0, None, now, &mut out);
    assert_eq!(
        publishes(&take(&mut out)),
        vec![
            (1, "a".into(), QoS::AtLeastOnce, true),
            (4, "d".into(), QoS::AtLeastOnce, true),
            (5, "e".into(), QoS::AtLeastOnce, true)
        ]
    );
}

#[test]
fn large_window_out_of_order_acks_keep_bookkeeping_bounded() {
    let n = 4000u16;
    let (mut s, mut out, now) = connected(limits(n, 10, 1 << 20));
    let m = msg("t", "x", QoS::AtLeastOnce);
    for _ in 0..n {
        s.deliver(&m, QoS::AtLeastOnce, &mut out);
    }
    out.packets.clear();
    // Keep id 1 in flight forever; ack everything else in reverse, sending more each time.
    for round in 0..5u32 {
        let live: Vec<u16> = s.inflight.iter().map(|(id, _)| id).collect();
        for &id in live.iter().skip(1).rev() {
            s.handle(Packet::PubAck(id), now, &mut out).unwrap();
            assert!(s.inflight.slot_count() <= 2 * s.inflight.len() + 17);
        }
        while s.stats().inflight < usize::from(n) {
            assert_eq!(s.deliver(&m, QoS::AtLeastOnce, &mut out), Delivery::Sent);
        }
        out.packets.clear();
        assert_eq!(
            s.inflight.iter().next().map(|(id, _)| id),
            Some(1),
            "round {round}"
        );
    }
    // Every remaining id is found again after the compactions.
    let live: Vec<u16> = s.inflight.iter().map(|(id, _)| id).collect();
    for id in live {
        s.handle(Packet::PubAck(id), now, &mut out).unwrap();
    }
    assert_eq!(s.stats().inflight, 0);
    assert_eq!(s.inflight.slot_count(), 0);
}

#[test]
fn a_drained_window_is_given_back_and_packet_ids_keep_cycling() {
    let (mut s, mut out, now) = connected(roomy());
    let m = msg("t", "x", QoS::AtLeastOnce);
    for want in 1..=3u16 {
        assert_eq!(s.deliver(&m, QoS::AtLeastOnce, &mut out), Delivery::Sent);
        assert!(s.inflight.is_held());
        let [Packet::Publish(p)] = &take(&mut out)[..] else {
            panic!("one PUBLISH expected")
        };
        assert_eq!(p.pkid, want, "ids go on where they were");
        s.handle(Packet::PubAck(p.pkid), now, &mut out).unwrap();
        assert!(!s.inflight.is_held(), "an idle session holds no window");
    }
    // QoS 2: the window is kept through PUBREC and given back at PUBCOMP.
    let m = msg("t", "x", QoS::ExactlyOnce);
    assert_eq!(s.deliver(&m, QoS::ExactlyOnce, &mut out), Delivery::Sent);
    let [Packet::Publish(p)] = &take(&mut out)[..] else {
        panic!("one PUBLISH expected")
    };
    s.handle(Packet::PubRec(p.pkid), now, &mut out).unwrap();
    assert!(s.inflight.is_held());
    s.handle(Packet::PubComp(p.pkid), now, &mut out).unwrap();
    assert!(!s.inflight.is_held());
    // A window that held many flows at once stays: the next burst needs it again.
    let (mut s, mut out, now) = connected(limits(64, 100, 1 << 20));
    let m = msg("t", "x", QoS::AtLeastOnce);
    for _ in 0..20 {
        assert_eq!(s.deliver(&m, QoS::AtLeastOnce, &mut out), Delivery::Sent);
    }
    for p in take(&mut out) {
        let Packet::Publish(p) = p else {
            panic!("PUBLISH expected")
        };
        s.handle(Packet::PubAck(p.pkid), now, &mut out).unwrap();
    }
    assert_eq!(s.stats().inflight, 0);
    assert!(s.inflight.is_held());
}

#[test]
fn packet_ids_wrap_around_skipping_ids_in_flight() {
    let (mut s, mut out, now) = connected(limits(3, 100, 1 << 20));
    let m = msg("t", "x", QoS::AtLeastOnce);
    // Ids 1 and 2 stay in flight.
    s.deliver(&m, QoS::AtLeastOnce, &mut out);
    s.deliver(&m, QoS::AtLeastOnce, &mut out);
    // Cycle the third slot through ids 3..=65535.
    for expect in 3..=u16::MAX {
        out.packets.clear();
        assert_eq!(s.deliver(&m, QoS::AtLeastOnce, &mut out), Delivery::Sent);
        assert_eq!(pkid_of(&out.packets[0]), expect);
        s.handle(Packet::PubAck(expect), now, &mut out).unwrap();
    }
    out.packets.clear();
    s.deliver(&m, QoS::AtLeastOnce, &mut out);
    assert_eq!(
        pkid_of(&out.packets[0]),
        3,
        "wrapped, skipping 1 and 2 in flight"
    );
    s.handle(Packet::PubAck(1), now, &mut out).unwrap();
    out.packets.clear();
    s.deliver(&m, QoS::AtLeastOnce, &mut out);
    assert_eq!(
        pkid_of(&out.packets[0]),
        4,
        "cyclic: continues after 3, not at 1"
    );
}

#[test]
fn packet_id_exhaustion_queues_until_an_id_is_freed() {
    let (mut s, mut out, now) = connected(limits(u16::MAX, 10, 1 << 20));
    let m = msg("t", "x", QoS::ExactlyOnce);
    let mut seen = vec![false; 65536];
    for _ in 0..u16::MAX {
        assert_eq!(s.deliver(&m, QoS::ExactlyOnce, &mut out), Delivery::Sent);
    }
    for p in &out.packets {
        let id = pkid_of(p);
        assert!(id != 0 && !seen[usize::from(id)], "id {id} reused");
        seen[usize::from(id)] = true;
    }
    out.packets.clear();
    let last = msg("t", "last", QoS::ExactlyOnce);
    assert_eq!(
        s.deliver(&last, QoS::ExactlyOnce, &mut out),
        Delivery::Queued
    );
    assert!(out.packets.is_empty());
    assert_eq!(s.stats().inflight, 65535);
    // PUBREC does not free the id.
    s.handle(Packet::PubRec(500), now, &mut out).unwrap();
    assert_eq!(take(&mut out), vec![Packet::PubRel(500)]);
    s.handle(Packet::PubComp(500), now, &mut out).unwrap();
    assert_eq!(
        publishes(&take(&mut out)),
        vec![(500, "last".into(), QoS::ExactlyOnce, false)]
    );
    assert_eq!(s.stats().queued, 0);
}

#[test]
fn max_inflight_zero_is_treated_as_one() {
    let (mut s, mut out, _) = connected(limits(0, 10, 1000));
    assert_eq!(
        s.deliver(&msg("t", "a", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out),
        Delivery::Sent
    );
    assert_eq!(
        s.deliver(&msg("t", "b", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out),
        Delivery::Queued
    );
}

// ---------------------------------------------------------------- queue

#[test]
fn queue_is_bounded_by_message_count() {
    let mut s = session(limits(10, 3, 1 << 20));
    let mut out = Output::default();
    for _ in 0..3 {
        assert_eq!(
            s.deliver(&msg("t", "x", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out),
            Delivery::Queued
        );
    }
    assert_eq!(
        s.deliver(&msg("t", "x", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out),
        Delivery::Dropped(DropReason::QueueFull)
    );
    assert_eq!(s.stats().queued, 3);
    assert!(out.packets.is_empty());
}

#[test]
fn queue_is_bounded_by_bytes() {
    // Each message costs topic 1 + payload 4 = 5 bytes.
    let mut s = session(limits(10, 100, 12));
    let mut out = Output::default();
    let m = msg("t", "1234", QoS::AtLeastOnce);
    assert_eq!(s.deliver(&m, QoS::AtLeastOnce, &mut out), Delivery::Queued);
    assert_eq!(s.deliver(&m, QoS::AtLeastOnce, &mut out), Delivery::Queued);
    assert_eq!(
        s.deliver(&m, QoS::AtLeastOnce, &mut out),
        Delivery::Dropped(DropReason::QueueFull)
    );
    // A smaller one still fits exactly.
    assert_eq!(
        s.deliver(&msg("t", "1", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out),
        Delivery::Queued
    );
    assert_eq!(s.stats().queued_bytes, 12);
}

#[test]
fn message_larger_than_the_byte_bound_is_dropped() {
    let mut s = session(limits(10, 100, 4));
    let mut out = Output::default();
    assert_eq!(
        s.deliver(
            &msg("t", "1234", QoS::AtLeastOnce),
            QoS::AtLeastOnce,
            &mut out
        ),
        Delivery::Dropped(DropReason::QueueFull)
    );
    assert_eq!(s.stats().queued, 0);
}

#[test]
fn queued_qos0_is_evicted_oldest_first_for_qos1() {
    let (mut s, mut out, _) = connected(limits(10, 3, 1 << 20));
    s.set_writable(false, &mut out);
    s.deliver(&msg("t", "q0a", QoS::AtMostOnce), QoS::AtMostOnce, &mut out);
    s.deliver(
        &msg("t", "q1a", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        &mut out,
    );
    s.deliver(&msg("t", "q0b", QoS::AtMostOnce), QoS::AtMostOnce, &mut out);
    assert_eq!(
        s.deliver(
            &msg("t", "q2", QoS::ExactlyOnce),
            QoS::ExactlyOnce,
            &mut out
        ),
        Delivery::Queued
    );
    assert_eq!(s.stats().evicted_qos0, 1);
    // A new QoS 0 never evicts.
    assert_eq!(
        s.deliver(&msg("t", "q0c", QoS::AtMostOnce), QoS::AtMostOnce, &mut out),
        Delivery::Dropped(DropReason::QueueFull)
    );
    s.set_writable(true, &mut out);
    assert_eq!(
        publishes(&take(&mut out)),
        vec![
            (1, "q1a".into(), QoS::AtLeastOnce, false),
            (0, "q0b".into(), QoS::AtMostOnce, false),
            (2, "q2".into(), QoS::ExactlyOnce, false),
        ]
    );
}

#[test]
fn several_qos0_are_evicted_to_make_byte_room() {
    // Costs: "t" + payload.
    let (mut s, mut out, _) = connected(limits(10, 100, 10));
    s.set_writable(false, &mut out);
    s.deliver(&msg("t", "aa", QoS::AtMostOnce), QoS::AtMostOnce, &mut out); // 3
    s.deliver(&msg("t", "bb", QoS::AtMostOnce), QoS::AtMostOnce, &mut out); // 3
    s.deliver(&msg("t", "cc", QoS::AtMostOnce), QoS::AtMostOnce, &mut out); // 3
    assert_eq!(s.stats().queued_bytes, 9);
    assert_eq!(
        s.deliver(
            &msg("t", "xxxxx", QoS::AtLeastOnce),
            QoS::AtLeastOnce,
            &mut out
        ), // 6
        Delivery::Queued
    );
    assert_eq!(s.stats().evicted_qos0, 2);
    assert_eq!(s.stats().queued_bytes, 9);
    s.set_writable(true, &mut out);
    assert_eq!(
        publishes(&take(&mut out)),
        vec![
            (0, "cc".into(), QoS::AtMostOnce, false),
            (1, "xxxxx".into(), QoS::AtLeastOnce, false),
        ]
    );
}

#[test]
fn qos0_is_not_evicted_when_that_would_not_make_room() {
    let (mut s, mut out, _) = connected(limits(10, 100, 10));
    s.set_writable(false, &mut out);
    s.deliver(
        &msg("t", "q1q1", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        &mut out,
    ); // 5
    s.deliver(&msg("t", "aaa", QoS::AtMostOnce), QoS::AtMostOnce, &mut out); // 4
    assert_eq!(
        s.deliver(
            &msg("t", "xxxxx", QoS::AtLeastOnce),
            QoS::AtLeastOnce,
            &mut out
        ), // 6
        Delivery::Dropped(DropReason::QueueFull)
    );
    assert_eq!(s.stats().queued, 2, "nothing evicted in vain");
    assert_eq!(s.stats().evicted_qos0, 0);
}

#[test]
fn offline_qos0_is_dropped_and_qos1_queued() {
    let mut s = session(roomy());
    let mut out = Output::default();
    assert_eq!(
        s.deliver(&msg("t", "a", QoS::AtMostOnce), QoS::ExactlyOnce, &mut out),
        Delivery::Dropped(DropReason::OfflineQoS0)
    );
    // Downgraded to QoS 0 by the subscription: also dropped.
    assert_eq!(
        s.deliver(&msg("t", "a", QoS::ExactlyOnce), QoS::AtMostOnce, &mut out),
        Delivery::Dropped(DropReason::OfflineQoS0)
    );
    assert_eq!(
        s.deliver(&msg("t", "b", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out),
        Delivery::Queued
    );
    assert!(out.packets.is_empty());
    s.connect(0, None, Instant::now(), &mut out);
    assert_eq!(
        publishes(&out.packets),
        vec![(1, "b".into(), QoS::AtLeastOnce, false)]
    );
}

#[test]
fn not_writable_queues_qos0_and_set_writable_flushes_in_order() {
    let (mut s, mut out, _) = connected(limits(2, 100, 1 << 20));
    s.set_writable(false, &mut out);
    let seq = [
        ("a", QoS::AtMostOnce),
        ("b", QoS::AtLeastOnce),
        ("c", QoS::AtMostOnce),
        ("d", QoS::ExactlyOnce),
        ("e", QoS::AtMostOnce),
        ("f", QoS::AtLeastOnce),
        ("g", QoS::AtMostOnce),
    ];
    for (p, q) in seq {
        assert_eq!(
            s.deliver(&msg("t", p, q), QoS::ExactlyOnce, &mut out),
            Delivery::Queued
        );
    }
    assert!(
        out.packets.is_empty(),
        "QoS 1 queued although the window had room"
    );
    s.set_writable(true, &mut out);
    // Window of 2: stops before f, and g waits behind it.
    assert_eq!(
        publishes(&take(&mut out)),
        vec![
            (0, "a".into(), QoS::AtMostOnce, false),
            (1, "b".into(), QoS::AtLeastOnce, false),
            (0, "c".into(), QoS::AtMostOnce, false),
            (2, "d".into(), QoS::ExactlyOnce, false),
            (0, "e".into(), QoS::AtMostOnce, false),
        ]
    );
    assert_eq!(s.stats().queued, 2);
}

#[test]
fn acks_while_not_writable_do_not_send() {
    let (mut s, mut out, now) = connected(limits(1, 100, 1 << 20));
    s.deliver(&msg("t", "a", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    s.deliver(&msg("t", "b", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    take(&mut out);
    s.set_writable(false, &mut out);
    s.handle(Packet::PubAck(1), now, &mut out).unwrap();
    assert!(out.packets.is_empty());
    s.set_writable(true, &mut out);
    assert_eq!(
        publishes(&take(&mut out)),
        vec![(2, "b".into(), QoS::AtLeastOnce, false)]
    );
}

// ---------------------------------------------------------------- resume

#[test]
fn resume_resends_inflight_with_dup_and_original_ids_then_queued() {
    let (mut s, mut out, now) = connected(limits(6, 100, 1 << 20));
    s.deliver(&msg("t", "a", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out); // 1
    s.deliver(&msg("t", "b", QoS::ExactlyOnce), QoS::ExactlyOnce, &mut out); // 2
    s.deliver(&msg("t", "c", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out); // 3
    s.deliver(&msg("t", "d", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out); // 4
    s.handle(Packet::PubRec(2), now, &mut out).unwrap();
    assert_eq!(s.disconnect(false), None);
    out.packets.clear();
    assert_eq!(
        s.deliver(&msg("t", "e", QoS::ExactlyOnce), QoS::ExactlyOnce, &mut out),
        Delivery::Queued
    );
    assert_eq!(
        s.deliver(&msg("t", "f", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out),
        Delivery::Queued
    );
    assert_eq!(
        s.deliver(&msg("t", "g", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out),
        Delivery::Queued
    );
    assert!(out.packets.is_empty());
    s.connect(30, None, now, &mut out);
    assert_eq!(
        out.packets,
        vec![
            publish("t", "a", QoS::AtLeastOnce, 1, true),
            Packet::PubRel(2),
            publish("t", "c", QoS::AtLeastOnce, 3, true),
            publish("t", "d", QoS::AtLeastOnce, 4, true),
            publish("t", "e", QoS::ExactlyOnce, 5, false),
            publish("t", "f", QoS::AtLeastOnce, 6, false),
        ]
    );
    assert_eq!(s.stats().queued, 1, "g waits for the window");
}

#[test]
fn resume_never_resends_a_publish_whose_pubrec_arrived() {
    let (mut s, mut out, now) = connected(roomy());
    s.deliver(&msg("t", "a", QoS::ExactlyOnce), QoS::ExactlyOnce, &mut out);
    s.handle(Packet::PubRec(1), now, &mut out).unwrap();
    for _ in 0..3 {
        s.disconnect(false);
        out.packets.clear();
        s.connect(0, None, now, &mut out);
        assert_eq!(out.packets, vec![Packet::PubRel(1)]);
    }
    s.handle(Packet::PubComp(1), now, &mut out).unwrap();
    s.disconnect(false);
    out.packets.clear();
    s.connect(0, None, now, &mut out);
    assert!(out.packets.is_empty());
}

#[test]
fn resume_keeps_queued_qos0_from_the_previous_connection() {
    let (mut s, mut out, now) = connected(roomy());
    s.set_writable(false, &mut out);
    s.deliver(&msg("t", "a", QoS::AtMostOnce), QoS::AtMostOnce, &mut out);
    s.disconnect(true);
    s.connect(0, None, now, &mut out);
    assert_eq!(
        publishes(&out.packets),
        vec![(0, "a".into(), QoS::AtMostOnce, false)]
    );
}

#[test]
fn disconnect_keeps_state_and_subscriptions() {
    let (mut s, mut out, now) = connected(limits(1, 10, 1000));
    s.subscribe(ByteString::from_static("a/#"), QoS::AtLeastOnce);
    s.deliver(&msg("t", "a", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    s.deliver(&msg("t", "b", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    s.handle(publish("t", "x", QoS::ExactlyOnce, 5, false), now, &mut out)
        .unwrap();
    s.disconnect(false);
    assert!(!s.is_connected());
    assert_eq!(
        s.stats(),
        SessionStats {
            inflight: 1,
            inflight_bytes: 2,
            queued: 1,
            queued_bytes: 2,
            awaiting_pubrel: 1,
            evicted_qos0: 0
        }
    );
    assert_eq!(s.subscriptions().count(), 1);
}

#[test]
fn messages_held_in_flight_are_bounded_by_bytes_too() {
    // 1000 bytes allowed in flight and in the queue; each message costs 1 + 300.
    let (mut s, mut out, now) = connected(limits(64, 100, 1000));
    let big: &'static str = Box::leak("x".repeat(300).into_boxed_str());
    for _ in 0..10 {
        s.deliver(&msg("t", big, QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    }
    let sent = publishes(&take(&mut out));
    assert_eq!(sent.len(), 3, "a fourth would hold 1204 bytes");
    let st = s.stats();
    assert_eq!((st.inflight, st.inflight_bytes), (3, 903));
    assert_eq!(
        (st.queued, st.queued_bytes),
        (3, 903),
        "the queue has its own bound"
    );
    // An acknowledgement frees bytes, and the next queued message goes out.
    s.handle(Packet::PubAck(sent[0].0), now, &mut out).unwrap();
    assert_eq!(publishes(&take(&mut out)).len(), 1);
    assert_eq!(s.stats().inflight_bytes, 903);
    // At QoS 2, PUBREC releases the message: its bytes no longer count.
    let (mut s, mut out, now) = connected(limits(64, 100, 1000));
    for _ in 0..4 {
        s.deliver(&msg("t", big, QoS::ExactlyOnce), QoS::ExactlyOnce, &mut out);
    }
    let sent = publishes(&take(&mut out));
    assert_eq!(sent.len(), 3);
    s.handle(Packet::PubRec(sent[0].0), now, &mut out).unwrap();
    let after = take(&mut out);
    assert_eq!(after[0], Packet::PubRel(sent[0].0));
    assert_eq!(publishes(&after).len(), 1, "the queued fourth goes out");
    assert_eq!((s.stats().inflight, s.stats().inflight_bytes), (4, 903));
}

#[test]
fn one_message_larger_than_the_byte_bound_still_goes_out_alone() {
    let (mut s, mut out, now) = connected(limits(64, 100, 100));
    let big: &'static str = Box::leak("y".repeat(500).into_boxed_str());
    s.deliver(&msg("t", big, QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    let sent = publishes(&take(&mut out));
    assert_eq!(sent.len(), 1);
    s.deliver(
        &msg("t", "small", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        &mut out,
    );
    assert!(take(&mut out).is_empty(), "waits while the big one is held");
    s.handle(Packet::PubAck(sent[0].0), now, &mut out).unwrap();
    assert_eq!(publishes(&take(&mut out)).len(), 1);
}

// ---------------------------------------------------------------- will

fn will() -> LastWill {
    LastWill {
        props: Default::default(),
        topic: ByteString::from_static("will/t"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
    }
}

#[test]
fn will_is_returned_on_ungraceful_disconnect() {
    let mut s = session(roomy());
    let mut out = Output::default();
    s.connect(0, Some(will()), Instant::now(), &mut out);
    assert_eq!(
        s.disconnect(false),
        Some(Message {
            topic: ByteString::from_static("will/t"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            stamp: Default::default(),
            props: None,
        })
    );
}

#[test]
fn will_is_not_returned_after_disconnect_packet() {
    let mut s = session(roomy());
    let mut out = Output::default();
    let now = Instant::now();
    s.connect(0, Some(will()), now, &mut out);
    s.handle(Packet::Disconnect, now, &mut out).unwrap();
    // Even if the caller then reports the close as ungraceful.
    assert_eq!(s.disconnect(false), None);
}

#[test]
fn will_is_not_returned_on_graceful_disconnect() {
    let mut s = session(roomy());
    let mut out = Output::default();
    s.connect(0, Some(will()), Instant::now(), &mut out);
    assert_eq!(s.disconnect(true), None);
    assert_eq!(s.disconnect(false), None, "cleared, not kept for later");
}

#[test]
fn will_is_not_returned_twice() {
    let mut s = session(roomy());
    let mut out = Output::default();
    s.connect(0, Some(will()), Instant::now(), &mut out);
    assert!(s.disconnect(false).is_some());
    assert_eq!(s.disconnect(false), None);
}

#[test]
fn will_belongs_to_one_connection() {
    let mut s = session(roomy());
    let mut out = Output::default();
    let now = Instant::now();
    s.connect(0, Some(will()), now, &mut out);
    s.disconnect(true);
    s.connect(0, None, now, &mut out);
    assert_eq!(s.disconnect(false), None);
}

// ---------------------------------------------------------------- keep-alive

#[test]
fn keep_alive_deadline_is_one_and_a_half_times_after_last_activity() {
    let mut s = session(roomy());
    let mut out = Output::default();
    let t0 = Instant::now();
    assert_eq!(s.keep_alive_deadline(), None);
    s.connect(10, None, t0, &mut out);
    assert_eq!(s.keep_alive_deadline(), Some(t0 + Duration::from_secs(15)));
    let t1 = t0 + Duration::from_secs(7);
    s.handle(Packet::PingReq, t1, &mut out).unwrap();
    assert_eq!(s.keep_alive_deadline(), Some(t1 + Duration::from_secs(15)));
    let t2 = t1 + Duration::from_secs(1);
    s.handle(publish("a", "x", QoS::AtMostOnce, 0, false), t2, &mut out)
        .unwrap();
    assert_eq!(s.keep_alive_deadline(), Some(t2 + Duration::from_secs(15)));
    s.disconnect(false);
    assert_eq!(s.keep_alive_deadline(), None);
}

#[test]
fn keep_alive_odd_seconds_and_maximum() {
    let mut s = session(roomy());
    let mut out = Output::default();
    let t0 = Instant::now();
    s.connect(1, None, t0, &mut out);
    assert_eq!(
        s.keep_alive_deadline(),
        Some(t0 + Duration::from_millis(1500))
    );
    s.disconnect(false);
    s.connect(u16::MAX, None, t0, &mut out);
    assert_eq!(
        s.keep_alive_deadline(),
        Some(t0 + Duration::from_millis(65535 * 1500))
    );
}

#[test]
fn keep_alive_zero_has_no_deadline() {
    let mut s = session(roomy());
    let mut out = Output::default();
    let now = Instant::now();
    s.connect(0, None, now, &mut out);
    s.handle(Packet::PingReq, now, &mut out).unwrap();
    assert_eq!(s.keep_alive_deadline(), None);
}

// ---------------------------------------------------------------- misc

#[test]
fn subscriptions_are_recorded_replaced_and_removed() {
    let mut s = session(roomy());
    assert_eq!(
        s.subscribe(ByteString::from_static("a/+"), QoS::AtLeastOnce),
        None
    );
    assert_eq!(
        s.subscribe(ByteString::from_static("a/+"), QoS::ExactlyOnce),
        Some(QoS::AtLeastOnce)
    );
    assert_eq!(
        s.subscribe(ByteString::from_static("b"), QoS::AtMostOnce),
        None
    );
    let mut subs: Vec<(String, QoS)> = s.subscriptions().map(|(f, q)| (f.to_string(), q)).collect();
    subs.sort();
    assert_eq!(
        subs,
        vec![
            ("a/+".into(), QoS::ExactlyOnce),
            ("b".into(), QoS::AtMostOnce)
        ]
    );
    assert_eq!(s.unsubscribe("a/+"), Some(QoS::ExactlyOnce));
    assert_eq!(s.unsubscribe("a/+"), None);
    assert_eq!(s.subscriptions().count(), 1);
}

#[test]
fn accessors_report_identity() {
    let s = Session::new(ByteString::from_static("id-1"), true, roomy());
    assert_eq!(s.client_id(), "id-1");
    assert!(s.clean_session());
    assert!(!s.is_connected());
}

#[test]
fn output_vectors_are_reused_without_reallocation() {
    let (mut s, mut out, now) = connected(limits(4, 100, 1 << 20));
    let m = msg("t", "x", QoS::AtLeastOnce);
    let mut steady = None;
    for i in 0..1000u32 {
        for _ in 0..4 {
            s.deliver(&m, QoS::AtLeastOnce, &mut out);
        }
        let ids: Vec<u16> = out.packets.iter().map(pkid_of).collect();
        out.packets.clear();
        for id in ids {
            s.handle(Packet::PubAck(id), now, &mut out).unwrap();
        }
        s.handle(
            publish("in", "y", QoS::AtLeastOnce, 1, false),
            now,
            &mut out,
        )
        .unwrap();
        out.packets.clear();
        out.publishes.clear();
        if i == 10 {
            steady = Some((out.packets.as_ptr(), out.publishes.as_ptr()));
        } else if i > 10 {
            assert_eq!(steady, Some((out.packets.as_ptr(), out.publishes.as_ptr())));
        }
    }
}

// ---------------------------------------------------------------- randomized

/// Deterministic xorshift64* generator: reproducible without dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn qos(&mut self) -> QoS {
        match self.below(3) {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientStage {
    /// PUBLISH received, nothing sent back yet.
    Published,
    /// QoS 2: PUBREC sent.
    RecSent,
    /// QoS 2: PUBREL received.
    Released,
}

#[derive(Debug)]
struct ClientFlow {
    seq: u64,
    qos: QoS,
    stage: ClientStage,
    /// Write index when the client sent PUBREC.
    rec_at: Option<u64>,
}

/// A QoS 2 message the simulated client publishes to the broker.
#[derive(Debug)]
struct ClientPub {
    payload_id: u64,
    got_pubrec: bool,
    rel_sent: bool,
}

/// A client with a persistent session talking to a [`Session`] over a lossy-on-disconnect
/// link, checking the broker's guarantees as it goes.
struct Sim {
    rng: Rng,
    s: Session,
    l: Limits,
    out: Output,
    now: Instant,
    /// Packets written by the broker, each with its write index, not yet read by the
    /// client; lost on disconnect.
    inbox: VecDeque<(u64, Packet)>,
    written: u64,
    /// Per delivered sequence number: (effective QoS, retain, must arrive).
    sent: Vec<(QoS, bool, bool)>,
    received: Vec<bool>,
    last_first: Option<u64>,
    /// The client's view of the broker's outgoing flows, by packet id.
    flows: BTreeMap<u16, ClientFlow>,
    /// Per sequence number: the write index when the client completed its flow. Copies
    /// written before that may still be read (stale); none may be written after.
    completed: Vec<Option<u64>>,
    will_set: bool,
    // Inbound (client → broker) QoS 2.
    pubs: BTreeMap<u16, ClientPub>,
    next_client_pkid: u16,
    next_payload_id: u64,
    routed: Vec<u32>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let window = if rng.chance(20) {
            1 + rng.below(300)
        } else {
            1 + rng.below(6)
        };
        let l = limits(
            window as u16,
            rng.below(12) as usize,
            rng.below(16 * 12) as usize,
        );
        let mut s = Session::new(ByteString::from_static("sim"), false, l.clone());
        // Start near the end of the id space so runs also wrap around.
        s.next_pkid = 65535 - rng.below(400) as u16;
        Sim {
            rng,
            s,
            l,
            out: Output::default(),
            now: Instant::now(),
            inbox: VecDeque::new(),
            written: 0,
            sent: Vec::new(),
            received: Vec::new(),
            last_first: None,
            flows: BTreeMap::new(),
            completed: Vec::new(),
            will_set: false,
            pubs: BTreeMap::new(),
            next_client_pkid: 1,
            next_payload_id: 0,
            routed: Vec::new(),
        }
    }

    fn collect(&mut self) {
        for p in self.out.packets.drain(..) {
            self.inbox.push_back((self.written, p));
            self.written += 1;
        }
        for m in self.out.publishes.drain(..) {
            let id = u64::from_be_bytes(m.payload[..8].try_into().unwrap());
            if m.qos == QoS::ExactlyOnce {
                self.routed[id as usize] += 1;
                assert!(self.routed[id as usize] <= 1, "inbound QoS 2 routed twice");
            }
        }
        let st = self.s.stats();
        assert!(st.inflight <= usize::from(self.l.max_inflight));
        assert!(st.queued <= self.l.max_queued_messages);
        assert!(st.queued_bytes <= self.l.max_queued_bytes);
        assert!(self.s.inflight.slot_count() <= 2 * st.inflight + 17);
        assert_eq!(
            st.awaiting_pubrel,
            self.s.awaiting_pubrel.as_ref().map_or(0, |ids| ids.len())
        );
    }

    fn send(&mut self, p: Packet) {
        self.s.handle(p, self.now, &mut self.out).unwrap();
        self.collect();
    }

    fn deliver(&mut self) {
        let seq = self.sent.len() as u64;
        let m = Message {
            topic: ByteString::from_static("t/x"),
            payload: Bytes::copy_from_slice(&seq.to_be_bytes()),
            qos: self.rng.qos(),
            retain: self.rng.chance(10),
            stamp: Default::default(),
            props: None,
        };
        let granted = self.rng.qos();
        let eff = m.qos.min(granted);
        let d = self.s.deliver(&m, granted, &mut self.out);
        if !self.s.is_connected() && eff == QoS::AtMostOnce {
            assert_eq!(d, Delivery::Dropped(DropReason::OfflineQoS0));
        }
        let must = eff != QoS::AtMostOnce && d != Delivery::Dropped(DropReason::QueueFull);
        self.sent.push((eff, m.retain, must));
        self.received.push(false);
        self.completed.push(None);
        self.collect();
    }

    /// The client reads one packet the broker wrote.
    fn read_one(&mut self) {
        let Some((at, p)) = self.inbox.pop_front() else {
            return;
        };
        match p {
            Packet::Publish(p) => {
                let seq = u64::from_be_bytes(p.payload[..8].try_into().unwrap());
                let (eff, retain, _) = self.sent[seq as usize];
                assert_eq!(p.qos, eff, "wrong QoS for message {seq}");
                assert_eq!(p.retain, retain);
                if p.qos == QoS::AtMostOnce {
                    assert!(!p.dup && p.pkid == 0);
                } else {
                    assert_ne!(p.pkid, 0);
                    match self.flows.get(&p.pkid) {
                        Some(f) => {
                            assert!(p.dup, "packet id {} reused while in flight", p.pkid);
                            assert_eq!(f.seq, seq, "dup PUBLISH with another message");
                            if let Some(rec_at) = f.rec_at {
                                assert!(at < rec_at, "PUBLISH resent after PUBREC");
                            }
                        }
                        None => {
                            if let Some(done_at) = self.completed[seq as usize] {
                                assert!(at < done_at, "resent after completion");
                                return; // a stale copy written before the client completed
                            }
                            self.flows.insert(
                                p.pkid,
                                ClientFlow {
                                    seq,
                                    qos: p.qos,
                                    stage: ClientStage::Published,
                                    rec_at: None,
                                },
                            );
                        }
                    }
                }
                if !self.received[seq as usize] {
                    if let Some(last) = self.last_first {
                        assert!(
                            seq > last,
                            "message {seq} arrived after {last}: out of order"
                        );
                    }
                    self.last_first = Some(seq);
                    self.received[seq as usize] = true;
                }
            }
            Packet::PubRel(id) => {
                if let Some(f) = self.flows.get_mut(&id) {
                    assert_ne!(f.stage, ClientStage::Published, "PUBREL before PUBREC");
                    f.stage = ClientStage::Released;
                }
            }
            Packet::PubRec(id) => {
                if let Some(p) = self.pubs.get_mut(&id) {
                    p.got_pubrec = true;
                }
            }
            Packet::PubComp(id) => {
                if self.pubs.get(&id).is_some_and(|p| p.rel_sent) {
                    self.pubs.remove(&id);
                }
            }
            Packet::PubAck(_) | Packet::PingResp => {}
            other => panic!("broker sent {}", other.name()),
        }
    }

    /// The client acknowledges one flow, chosen at random (out of order).
    fn ack_one(&mut self) {
        if self.flows.is_empty() {
            return;
        }
        let i = self.rng.below(self.flows.len() as u64) as usize;
        let (&id, f) = self.flows.iter_mut().nth(i).unwrap();
        let packet = match (f.qos, f.stage) {
            (QoS::AtLeastOnce, _) => {
                self.completed[f.seq as usize] = Some(self.written);
                self.flows.remove(&id);
                Packet::PubAck(id)
            }
            (_, ClientStage::Published) => {
                f.stage = ClientStage::RecSent;
                f.rec_at = Some(self.written);
                Packet::PubRec(id)
            }
            (_, ClientStage::RecSent) => Packet::PubRec(id), // duplicate
            (_, ClientStage::Released) => {
                self.completed[f.seq as usize] = Some(self.written);
                self.flows.remove(&id);
                Packet::PubComp(id)
            }
        };
        self.send(packet);
    }

    /// Repeated acknowledgements the protocol allows: PUBREC again for a QoS 2 flow
    /// the client has acknowledged once (the broker answers PUBREL again).
    fn noise(&mut self) {
        let Some((&id, f)) = self.flows.iter().next() else {
            return;
        };
        let p = match (f.qos, f.stage) {
            (QoS::ExactlyOnce, ClientStage::RecSent | ClientStage::Released) => Packet::PubRec(id),
            _ => Packet::PingReq,
        };
        self.send(p);
    }

    fn client_publish(&mut self) {
        match self.rng.below(4) {
            0 => {
                // New QoS 2 message.
                let mut id = self.next_client_pkid;
                while self.pubs.contains_key(&id) {
                    id = id.wrapping_add(1).max(1);
                }
                self.next_client_pkid = id.wrapping_add(1).max(1);
                let payload_id = self.next_payload_id;
                self.next_payload_id += 1;
                self.routed.push(0);
                self.pubs.insert(
                    id,
                    ClientPub {
                        payload_id,
                        got_pubrec: false,
                        rel_sent: false,
                    },
                );
                self.send(self.inbound(id, payload_id, false));
            }
            1 => {
                // Resend a PUBLISH not yet released, with or without DUP.
                let dup = self.rng.chance(70);
                let pick = self
                    .pubs
                    .iter()
                    .find(|(_, p)| !p.rel_sent)
                    .map(|(&id, p)| (id, p.payload_id));
                if let Some((id, pl)) = pick {
                    self.send(self.inbound(id, pl, dup));
                }
            }
            2 => {
                // PUBREL for one whose PUBREC came back.
                let pick = self.pubs.iter_mut().find(|(_, p)| p.got_pubrec);
                if let Some((&id, p)) = pick {
                    p.rel_sent = true;
                    self.send(Packet::PubRel(id));
                }
            }
            _ => {
                // QoS 0/1 traffic: routed at once, exactly once per packet.
                let qos = if self.rng.chance(50) {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                let before = self.out.publishes.len();
                let p = Packet::Publish(Publish {
                    props: None,
                    dup: false,
                    qos,
                    retain: false,
                    topic: ByteString::from_static("in/1"),
                    pkid: if qos == QoS::AtMostOnce { 0 } else { 9 },
                    payload: Bytes::from_static(&[0xff; 8]),
                });
                self.s.handle(p, self.now, &mut self.out).unwrap();
                assert_eq!(self.out.publishes.len(), before + 1);
                self.out.publishes.clear();
                self.collect();
            }
        }
    }

    fn inbound(&self, id: u16, payload_id: u64, dup: bool) -> Packet {
        Packet::Publish(Publish {
            props: None,
            dup,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: ByteString::from_static("in/2"),
            pkid: id,
            payload: Bytes::copy_from_slice(&payload_id.to_be_bytes()),
        })
    }

    fn connect(&mut self) {
        self.will_set = self.rng.chance(50);
        let will = self.will_set.then(|| LastWill {
            props: Default::default(),
            topic: ByteString::from_static("w"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
        });
        self.s
            .connect(self.rng.below(3) as u16, will, self.now, &mut self.out);
        self.collect();
        // The client resumes its own QoS 2 flows too.
        let resend: Vec<(u16, u64, bool)> = self
            .pubs
            .iter()
            .map(|(&id, p)| (id, p.payload_id, p.rel_sent))
            .collect();
        for (id, pl, rel) in resend {
            if self.rng.chance(60) {
                let p = if rel {
                    Packet::PubRel(id)
                } else {
                    self.inbound(id, pl, true)
                };
                self.send(p);
            }
        }
    }

    fn disconnect(&mut self) {
        let graceful = self.rng.chance(30);
        if graceful {
            self.send(Packet::Disconnect);
        }
        let will = self.s.disconnect(graceful);
        assert_eq!(will.is_some(), self.will_set && !graceful);
        self.will_set = false;
        assert_eq!(self.s.disconnect(false), None);
        self.inbox.clear();
    }

    fn step(&mut self) {
        self.now += Duration::from_millis(self.rng.below(500));
        if !self.s.is_connected() {
            if self.rng.chance(30) {
                self.connect();
            } else {
                self.deliver();
            }
            return;
        }
        match self.rng.below(100) {
            0..=29 => self.deliver(),
            30..=54 => {
                for _ in 0..=self.rng.below(4) {
                    self.read_one();
                }
            }
            55..=74 => self.ack_one(),
            75..=79 => self.noise(),
            80..=86 => {
                let w = self.rng.chance(60);
                self.s.set_writable(w, &mut self.out);
                self.collect();
            }
            87..=96 => self.client_publish(),
            _ => self.disconnect(),
        }
    }

    /// Reconnects and lets the client drain everything; then every QoS >= 1 message the
    /// broker accepted must have arrived and every inbound QoS 2 message routed once.
    fn finish(&mut self) {
        if !self.s.is_connected() {
            self.connect();
        }
        self.s.set_writable(true, &mut self.out);
        self.collect();
        for _ in 0..100_000 {
            while !self.inbox.is_empty() {
                self.read_one();
            }
            if self.flows.is_empty() && self.s.stats().inflight == 0 && self.s.stats().queued == 0 {
                break;
            }
            self.ack_one();
        }
        assert_eq!(self.s.stats().inflight, 0);
        assert_eq!(self.s.stats().queued, 0);
        for (seq, &(_, _, must)) in self.sent.iter().enumerate() {
            assert!(
                !must || self.received[seq],
                "accepted message {seq} never arrived"
            );
        }
        // Finish the client's QoS 2 publishes.
        let ids: Vec<(u16, u64, bool)> = self
            .pubs
            .iter()
            .map(|(&id, p)| (id, p.payload_id, p.rel_sent))
            .collect();
        for (id, pl, rel) in ids {
            if !rel {
                self.send(self.inbound(id, pl, true));
            }
            self.send(Packet::PubRel(id));
        }
        assert_eq!(self.s.stats().awaiting_pubrel, 0);
        assert!(
            self.routed.iter().all(|&n| n == 1),
            "inbound QoS 2 not exactly once"
        );
    }
}

#[test]
fn randomized_client_keeps_every_guarantee() {
    for seed in 0..300 {
        eprintln!("seed {seed}");
        let mut sim = Sim::new(seed);
        for _ in 0..1500 {
            sim.step();
        }
        sim.finish();
    }
}

/// The shard writes a shared encoding instead of calling `deliver` exactly when
/// `sends_qos0_at_once` holds; that is only right if `deliver` would then have sent the
/// same plain PUBLISH and changed nothing else, and if it would not have sent at once
/// whenever it does not hold.
#[test]
fn sends_qos0_at_once_agrees_with_deliver() {
    let retained = Message {
        retain: true,
        ..msg("t", "r", QoS::AtMostOnce)
    };
    // (state name, session in that state)
    let mut states: Vec<(&str, Session)> = Vec::new();
    states.push(("offline", session(roomy())));
    let (s, _, _) = connected(roomy());
    states.push(("idle", s));
    let (mut s, mut out, _) = connected(roomy());
    s.set_writable(false, &mut out);
    states.push(("not writable", s));
    let (mut s, mut out, _) = connected(roomy());
    s.set_writable(false, &mut out);
    s.deliver(
        &msg("t", "queued", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        &mut out,
    );
    s.set_writable(true, &mut out);
    s.set_writable(false, &mut out);
    s.deliver(
        &msg("t", "queued", QoS::AtMostOnce),
        QoS::AtMostOnce,
        &mut out,
    );
    states.push(("queue not empty", s));
    let (mut s, mut out, _) = connected(limits(1, 100, 1 << 20));
    s.deliver(&msg("t", "a", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    states.push(("window full, nothing queued", s));
    let (mut s, mut out, _) = connected(limits(1, 100, 1 << 20));
    s.deliver(&msg("t", "a", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    s.deliver(&msg("t", "b", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    states.push(("window full, QoS 1 queued", s));

    for (name, mut s) in states {
        let at_once = s.sends_qos0_at_once();
        let before = s.stats();
        for m in [&msg("t", "p", QoS::AtMostOnce), &retained] {
            for granted in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let mut out = Output::default();
                let mut probe = s.stats();
                let d = s.deliver(m, granted, &mut out);
                if at_once {
                    assert_eq!(d, Delivery::Sent, "{name}");
                    assert_eq!(
                        take(&mut out),
                        vec![Packet::Publish(Publish {
                            props: None,
                            dup: false,
                            qos: QoS::AtMostOnce,
                            retain: m.retain,
                            topic: m.topic.clone(),
                            pkid: 0,
                            payload: m.payload.clone(),
                        })],
                        "{name}"
                    );
                    probe.evicted_qos0 = s.stats().evicted_qos0;
                    assert_eq!(s.stats(), probe, "{name}: state changed");
                } else {
                    assert_ne!(d, Delivery::Sent, "{name}");
                    assert!(publishes(&out.packets).is_empty(), "{name}");
                }
                assert!(out.publishes.is_empty());
            }
        }
        assert_eq!(at_once, s.sends_qos0_at_once(), "{name}");
        if at_once {
            assert_eq!(s.stats(), before, "{name}");
        }
    }
}

// ---------------------------------------------------------------------------------
// MQTT 5.0: peer limits, message expiry and properties
// ---------------------------------------------------------------------------------

fn v5_connected(peer: PeerLimits) -> (Session, Output, Instant) {
    let (mut s, out, now) = connected(roomy());
    s.set_v5(true);
    s.set_peer_limits(peer);
    (s, out, now)
}

#[test]
fn the_clients_receive_maximum_narrows_the_window() {
    let (mut s, mut out, now) = v5_connected(PeerLimits {
        receive_maximum: 2,
        ..PeerLimits::default()
    });
    for p in ["a", "b", "c"] {
        s.deliver(&msg("t", p, QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    }
    let sent = take(&mut out);
    assert_eq!(
        publishes(&sent).len(),
        2,
        "max_inflight is 10, the client's 2"
    );
    s.handle(Packet::PubAck(pkid_of(&sent[0])), now, &mut out)
        .unwrap();
    assert_eq!(publishes(&take(&mut out))[0].1, "c");
}

#[test]
fn qos2_publishes_beyond_the_brokers_receive_maximum_are_an_error() {
    let (mut s, mut out, now) = v5_connected(PeerLimits {
        server_receive_maximum: 1,
        ..PeerLimits::default()
    });
    s.handle(publish("t", "1", QoS::ExactlyOnce, 1, false), now, &mut out)
        .unwrap();
    // The same packet id again is a resend, not a new flow.
    s.handle(publish("t", "1", QoS::ExactlyOnce, 1, true), now, &mut out)
        .unwrap();
    assert_eq!(
        s.handle(publish("t", "2", QoS::ExactlyOnce, 2, false), now, &mut out),
        Err(SessionError::ReceiveMaximumExceeded(1))
    );
    s.handle(Packet::PubRel(1), now, &mut out).unwrap();
    s.handle(publish("t", "2", QoS::ExactlyOnce, 2, false), now, &mut out)
        .unwrap();
}

#[test]
fn a_publish_over_the_clients_maximum_packet_size_is_dropped() {
    let (mut s, mut out, _) = v5_connected(PeerLimits {
        max_packet_size: Some(20),
        ..PeerLimits::default()
    });
    let d = s.deliver(
        &msg("t", "a payload of more than twenty bytes", QoS::AtMostOnce),
        QoS::AtMostOnce,
        &mut out,
    );
    assert_eq!(d, Delivery::Dropped(DropReason::TooLarge));
    assert_eq!(
        s.deliver(
            &msg("t", "small", QoS::AtLeastOnce),
            QoS::AtLeastOnce,
            &mut out
        ),
        Delivery::Sent
    );
    assert!(!s.sends_qos0_at_once(), "each delivery is measured");
}

#[test]
fn expired_messages_are_dropped_and_the_rest_carry_what_remains_of_their_interval() {
    let (mut s, mut out, now) = v5_connected(PeerLimits::default());
    let with_expiry = |secs: u32, at: Instant, payload: &'static str| Message {
        props: crate::message::MessageProps::new(
            Some(secs),
            &Bytes::from_static(&[0x03, 0x00, 0x01, b'x']),
            at,
        ),
        ..msg("t", payload, QoS::AtLeastOnce)
    };
    // Received 10 s ago with 5 s to live: gone.
    let old = now - Duration::from_secs(10);
    assert_eq!(
        s.deliver(&with_expiry(5, old, "old"), QoS::AtLeastOnce, &mut out),
        Delivery::Dropped(DropReason::Expired)
    );
    // Received 10 s ago with 60 s to live: about 50 s left, properties kept.
    s.deliver(&with_expiry(60, old, "fresh"), QoS::AtLeastOnce, &mut out);
    match &take(&mut out)[..] {
        [Packet::Publish(p)] => {
            let props = p.props.as_deref().expect("properties");
            assert!(matches!(props.message_expiry, Some(49..=50)), "{props:?}");
            assert_eq!(&props.forward[..], &[0x03, 0x00, 0x01, b'x']);
        }
        other => panic!("{other:?}"),
    }
    // A 3.1.1 session gets no properties.
    s.set_v5(false);
    s.deliver(&with_expiry(60, now, "plain"), QoS::AtMostOnce, &mut out);
    match &take(&mut out)[..] {
        [Packet::Publish(p)] => assert!(p.props.is_none()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_queued_message_that_expires_while_offline_is_not_sent_on_resume() {
    let (mut s, mut out, now) = v5_connected(PeerLimits::default());
    s.disconnect(false);
    let m = Message {
        props: crate::message::MessageProps::new(Some(1), &Bytes::new(), now),
        ..msg("t", "short", QoS::AtLeastOnce)
    };
    assert_eq!(s.deliver(&m, QoS::AtLeastOnce, &mut out), Delivery::Queued);
    s.deliver(
        &msg("t", "kept", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        &mut out,
    );
    std::thread::sleep(Duration::from_millis(1100));
    s.connect(0, None, Instant::now(), &mut out);
    let sent = publishes(&take(&mut out));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, "kept");
    assert_eq!(s.take_expired(), 1);
}

#[test]
fn a_simulated_clock_decides_expiry_to_the_step() {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            simulate_clock(None);
        }
    }
    let _reset = Reset;
    let start = Instant::now() + Duration::from_secs(3600);
    simulate_clock(Some(start));
    let (mut s, mut out, _) = v5_connected(PeerLimits::default());
    s.set_writable(false, &mut out);
    let expiring = |secs: u32, payload: &'static str| Message {
        props: crate::message::MessageProps::new(Some(secs), &Bytes::new(), start),
        ..msg("t", payload, QoS::AtLeastOnce)
    };
    for (secs, payload) in [(2, "two"), (3, "three"), (0, "zero")] {
        s.deliver(&expiring(secs, payload), QoS::AtLeastOnce, &mut out);
    }
    // The wall clock is an hour behind: only the simulated one can expire them.
    simulate_clock(Some(start + Duration::from_millis(2000)));
    s.set_writable(true, &mut out);
    match &take(&mut out)[..] {
        [Packet::Publish(p)] => {
            assert_eq!(&p.payload[..], b"three");
            assert_eq!(p.props.as_deref().and_then(|p| p.message_expiry), Some(1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.take_expired(),
        1,
        "the 2 s message, exactly at its expiry"
    );
}

#[test]
fn a_queued_message_grown_over_the_maximum_packet_size_is_dropped_and_counted() {
    let (mut s, mut out, _) = v5_connected(PeerLimits {
        max_packet_size: Some(19),
        ..PeerLimits::default()
    });
    s.set_writable(false, &mut out);
    // 18 bytes as delivered: it fits, and waits.
    let m = msg("t/x", "12345678", QoS::AtLeastOnce);
    assert_eq!(s.deliver(&m, QoS::AtLeastOnce, &mut out), Delivery::Queued);
    s.deliver(
        &msg("t/x", "1", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        &mut out,
    );
    // A subscription identifier adds 2 bytes to its PUBLISH while it waits.
    let filter = ByteString::from_static("t/x");
    s.set_subscription_id(&filter, NonZeroU32::new(7));
    s.set_writable(true, &mut out);
    let sent = publishes(&take(&mut out));
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].1, "1");
    assert_eq!(s.take_too_large(), 1);
    assert_eq!(s.take_too_large(), 0, "reported once");
    assert_eq!(s.stats().queued, 0);
}

#[test]
fn a_resume_with_a_smaller_maximum_packet_size_discards_flows_over_it() {
    let (mut s, mut out, now) = v5_connected(PeerLimits::default());
    s.deliver(
        &msg("t", "a payload of some length", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        &mut out,
    );
    s.deliver(
        &msg("t", "short", QoS::ExactlyOnce),
        QoS::ExactlyOnce,
        &mut out,
    );
    assert_eq!(take(&mut out).len(), 2);
    s.disconnect(false);
    s.set_peer_limits(PeerLimits {
        max_packet_size: Some(20),
        ..PeerLimits::default()
    });
    s.connect(0, None, now, &mut out);
    // The large flow is discarded as if completed [MQTT-3.1.2-25]; the small one is
    // resent.
    let resent = publishes(&take(&mut out));
    assert_eq!(resent.len(), 1, "{resent:?}");
    assert_eq!(resent[0].2, QoS::ExactlyOnce);
    assert!(resent[0].3, "resent with DUP");
    assert_eq!(s.stats().inflight, 1);
    assert_eq!(s.take_too_large(), 1);
}

#[test]
fn shared_messages_in_flight_and_queued_are_taken_back_and_others_stay() {
    let (mut s, mut out, _) = connected(limits(2, 100, 1 << 20));
    // Two in flight (one shared, one not), then queued: shared, plain, shared QoS 0.
    s.deliver_tagged(
        &msg("t", "a", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        7,
        &mut out,
    );
    s.deliver(&msg("t", "b", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    s.deliver_tagged(
        &msg("t", "c", QoS::ExactlyOnce),
        QoS::ExactlyOnce,
        7,
        &mut out,
    );
    s.deliver(&msg("t", "d", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    s.deliver_tagged(
        &msg("t", "e", QoS::AtMostOnce),
        QoS::AtLeastOnce,
        7,
        &mut out,
    );
    take(&mut out);
    s.disconnect(false);
    let taken: Vec<(String, u32)> = s
        .take_shared(|_| true)
        .into_iter()
        .map(|(m, g)| (String::from_utf8(m.payload.to_vec()).unwrap(), g))
        .collect();
    assert_eq!(taken, vec![("a".into(), 7), ("c".into(), 7)]);
    assert_eq!(s.stats().inflight, 1);
    assert_eq!(
        s.stats().queued,
        2,
        "the plain QoS 1 and the QoS 0 messages stay"
    );
    assert!(s.take_shared(|_| true).is_empty());
}

#[test]
fn a_shared_qos2_flow_past_pubrec_stays_with_its_session() {
    let (mut s, mut out, now) = connected(roomy());
    s.deliver_tagged(
        &msg("t", "a", QoS::ExactlyOnce),
        QoS::ExactlyOnce,
        3,
        &mut out,
    );
    let pkid = pkid_of(&take(&mut out)[0]);
    s.handle(Packet::PubRec(pkid), now, &mut out).unwrap();
    assert!(s.take_shared(|_| true).is_empty());
    assert_eq!(s.stats().inflight, 1);
}

#[test]
fn a_queued_shared_message_keeps_its_group_once_it_is_sent() {
    let (mut s, mut out, now) = connected(limits(1, 100, 1 << 20));
    s.deliver(&msg("t", "a", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    s.deliver_tagged(
        &msg("t", "b", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        9,
        &mut out,
    );
    let first = pkid_of(&take(&mut out)[0]);
    s.handle(Packet::PubAck(first), now, &mut out).unwrap();
    assert_eq!(take(&mut out).len(), 1, "b goes out");
    let taken = s.take_shared(|_| true);
    assert_eq!(taken.len(), 1);
    assert_eq!((&taken[0].0.payload[..], taken[0].1), (&b"b"[..], 9));
    assert_eq!(s.stats().inflight, 0);
}

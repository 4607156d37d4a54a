//! Persistence end to end (`--data-dir`): what a broker keeps across a restart on the
//! same data directory, both after a graceful stop (the in-process [`Broker`] shut
//! down) and after an abrupt one (the real binary killed with SIGKILL).
//!
//! Every scenario runs twice: `graceful_*` and `killed_*`. With the default
//! `fsync = always`, whatever the broker acknowledged (PUBACK, PUBREC, PUBCOMP,
//! SUBACK) is on disk, so a kill -9 right after the acknowledgement loses nothing.

mod common;
use common::persist::{config, DataDir, Mode, Node};
use common::*;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// Helpers (the broker on a data directory is `common::persist`)
// ---------------------------------------------------------------------------------

/// A client id whose home shard is `shard` of `n`.
fn id_on(prefix: &str, shard: usize, n: usize) -> String {
    let base = unique(prefix);
    (0..)
        .map(|i| format!("{base}-{i}"))
        .find(|id| shardmq::home_shard(id, n) == shard)
        .unwrap()
}

/// PUBLISHes (acked as a well-behaved subscriber) until one whose payload is
/// `sentinel`; returns those before it.
fn raw_until_payload(c: &mut Raw, sentinel: &[u8]) -> Vec<Publish> {
    let mut got = Vec::new();
    loop {
        let p = c.recv_kind(PUBLISH).publish();
        c.ack(&p);
        if p.payload == sentinel {
            return got;
        }
        got.push(p);
    }
}

fn payloads(ps: &[Publish]) -> Vec<String> {
    ps.iter().map(|p| p.payload_str()).collect()
}

// ---------------------------------------------------------------------------------
// 1. A persistent session and its subscriptions survive
// ---------------------------------------------------------------------------------

fn session_and_subscriptions_survive(mode: Mode) {
    let dir = DataDir::new("session");
    let node = Node::start(mode, dir.path(), SHARDS);
    let id = id_on_shard("dur-sess", 1);
    let topic = unique("dur/sess");
    let mut c = mq(node.addr(), &id, false);
    assert!(!c.session_present, "a new session: session present 0");
    assert_eq!(c.subscribe(&format!("{topic}/+"), 1), Some(1));
    assert_eq!(c.subscribe(&format!("{topic}/exact"), 2), Some(2));
    c.disconnect();

    let node = node.restart();
    let mut c = mq(node.addr(), &id, false);
    assert!(
        c.session_present,
        "{mode:?}: the persistent session must survive the restart (session present 1); log:\n{}",
        node.log()
    );
    // No SUBSCRIBE after the restart: the subscriptions came back with the session.
    let mut publ = mq(node.addr(), &id_on_shard("dur-sess-pub", 0), true);
    publ.publish_acked(&format!("{topic}/a"), 1, false, b"after restart");
    let p = c.recv_publish();
    assert_eq!(p.topic, format!("{topic}/a"));
    assert_eq!(&p.payload[..], b"after restart");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    publ.publish_acked(&format!("{topic}/exact"), 2, false, b"exact");
    // Matches both filters; MQTT 3.1.1 allows one or two copies, at least one at QoS 2.
    let p = c.recv_publish();
    assert_eq!(&p.payload[..], b"exact");
    publ.disconnect();
    c.disconnect();
    node.stop();
}

#[test]
fn graceful_restart_keeps_persistent_session_and_subscriptions() {
    session_and_subscriptions_survive(Mode::Graceful);
}

#[test]
fn killed_broker_keeps_persistent_session_and_subscriptions() {
    session_and_subscriptions_survive(Mode::Killed);
}

// ---------------------------------------------------------------------------------
// 2. Queued QoS 1 / QoS 2 messages of an offline subscriber survive
// ---------------------------------------------------------------------------------

const PER_PUBLISHER: usize = 10;

fn queued_messages_survive(mode: Mode) {
    let dir = DataDir::new("queued");
    let node = Node::start(mode, dir.path(), SHARDS);
    let id = id_on_shard("dur-q", 0);
    let topic = unique("dur/q");
    let mut c = mq(node.addr(), &id, false);
    assert_eq!(c.subscribe(&format!("{topic}/#"), 2), Some(2));
    c.disconnect();

    // Two publishers, one on each shard, alternating QoS 1 and QoS 2.
    let mut pubs = [
        mq(node.addr(), &id_on_shard("dur-q-pa", 0), true),
        mq(node.addr(), &id_on_shard("dur-q-pb", 1), true),
    ];
    for i in 0..PER_PUBLISHER {
        for (n, p) in pubs.iter_mut().enumerate() {
            let q = 1 + (i % 2) as u8;
            p.publish_acked(
                &format!("{topic}/{n}"),
                q,
                false,
                format!("{n}:{i}:{q}").as_bytes(),
            );
        }
    }
    for p in pubs {
        p.disconnect();
    }

    let node = node.restart();
    let mut c = mq(node.addr(), &id, false);
    assert!(c.session_present, "{mode:?}: session present after restart");
    // Receive until every message has come at least once, then a while longer for
    // duplicates.
    let mut got: Vec<(usize, usize, u8, u8)> = Vec::new(); // publisher, seq, qos sent, qos received
    let mut distinct = std::collections::HashSet::new();
    let deadline = Instant::now() + TIMEOUT;
    while distinct.len() < 2 * PER_PUBLISHER {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(p) = c.recv_publish_within(left) else {
            panic!(
                "{mode:?}: only {} of {} queued messages arrived after the restart: {got:?}; log:\n{}",
                distinct.len(),
                2 * PER_PUBLISHER,
                node.log()
            );
        };
        let s = String::from_utf8(p.payload.to_vec()).unwrap();
        let parts: Vec<usize> = s.split(':').map(|x| x.parse().unwrap()).collect();
        assert_eq!(p.topic, format!("{topic}/{}", parts[0]));
        got.push((parts[0], parts[1], parts[2] as u8, qos_num(p.qos)));
        distinct.insert((parts[0], parts[1]));
    }
    while let Some(p) = c.recv_publish_within(QUIET) {
        let s = String::from_utf8(p.payload.to_vec()).unwrap();
        let parts: Vec<usize> = s.split(':').map(|x| x.parse().unwrap()).collect();
        got.push((parts[0], parts[1], parts[2] as u8, qos_num(p.qos)));
    }
    for n in 0..2 {
        let mine: Vec<_> = got.iter().filter(|g| g.0 == n).collect();
        // QoS kept: published QoS, subscribed at 2.
        for g in &mine {
            assert_eq!(
                g.2, g.3,
                "{mode:?}: message {g:?} delivered at its published QoS"
            );
        }
        // QoS 2: exactly once.
        for i in (0..PER_PUBLISHER).filter(|i| i % 2 == 1) {
            let copies = mine.iter().filter(|g| g.1 == i).count();
            assert_eq!(
                copies, 1,
                "{mode:?}: QoS 2 message {n}:{i} must arrive exactly once; got {got:?}"
            );
        }
        // Order per publisher (a QoS 1 duplicate, allowed, is skipped).
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<usize> = mine
            .iter()
            .filter(|g| seen.insert(g.1))
            .map(|g| g.1)
            .collect();
        assert_eq!(
            firsts,
            (0..PER_PUBLISHER).collect::<Vec<_>>(),
            "{mode:?}: publisher {n}'s messages in order; got {got:?}"
        );
    }
    c.disconnect();
    // Delivered and acknowledged: nothing comes again on the next resume.
    let mut c = mq(node.addr(), &id, false);
    assert!(c.session_present);
    if let Some(p) = c.recv_publish_within(QUIET) {
        // A QoS 1 message acknowledged after the last checkpoint may come again only
        // after a crash; nothing may come again after PUBACKs on a running broker.
        panic!("{mode:?}: delivered messages came again on resume: {p:?}");
    }
    c.disconnect();
    node.stop();
}

#[test]
fn graceful_restart_keeps_queued_qos1_qos2_messages() {
    queued_messages_survive(Mode::Graceful);
}

#[test]
fn killed_broker_keeps_queued_qos1_qos2_messages() {
    queued_messages_survive(Mode::Killed);
}

// ---------------------------------------------------------------------------------
// 3. In-flight outgoing QoS 1 messages come again with DUP
// ---------------------------------------------------------------------------------

fn inflight_messages_survive(mode: Mode) {
    let dir = DataDir::new("inflight");
    let node = Node::start(mode, dir.path(), SHARDS);
    let id = id_on_shard("dur-inf", 1);
    let topic = unique("dur/inf");
    let (mut c, _) = Raw::connect(node.addr(), &id, false);
    assert_eq!(c.subscribe(1, &[(&topic, 1)]), vec![1]);
    let mut publ = Raw::connect(node.addr(), &id_on_shard("dur-inf-pub", 0), true).0;
    // Acknowledged ones first, so the unacknowledged ones' packet ids are not the
    // ones a fresh session would pick.
    for i in 0..5 {
        publ.publish(&topic, format!("acked-{i}").as_bytes(), 1, false);
        let p = c.expect_publish();
        c.ack(&p);
    }
    for i in 0..3 {
        publ.publish(&topic, format!("unacked-{i}").as_bytes(), 1, false);
    }
    let first: Vec<Publish> = (0..3).map(|_| c.expect_publish()).collect();
    assert_eq!(
        payloads(&first),
        ["unacked-0", "unacked-1", "unacked-2"],
        "before the restart"
    );
    assert!(first.iter().all(|p| p.qos == 1 && !p.dup));
    c.drop_connection(); // no PUBACK, no DISCONNECT
    publ.disconnect();
    if mode == Mode::Killed {
        // Positions (with the packet id of the oldest message in flight) are
        // checkpointed every second: let one pass before the crash.
        std::thread::sleep(Duration::from_millis(2500));
    }

    let node = node.restart();
    let (mut c, sp) = Raw::connect(node.addr(), &id, false);
    assert!(sp, "{mode:?}: session present after restart");
    let mut again: Vec<Publish> = (0..3).map(|_| c.expect_publish()).collect();
    if mode == Mode::Killed {
        // Acknowledged after the last checkpoint: they may come again first.
        while again
            .first()
            .is_some_and(|p| p.payload.starts_with(b"acked-"))
        {
            c.ack(&again.remove(0));
            again.push(c.expect_publish());
        }
    }
    assert_eq!(
        payloads(&again),
        ["unacked-0", "unacked-1", "unacked-2"],
        "{mode:?}: unacknowledged messages come again, in order"
    );
    for (a, f) in again.iter().zip(&first) {
        assert_eq!((a.qos, a.topic.as_str()), (1, topic.as_str()));
        assert!(
            a.dup,
            "{mode:?}: a redelivered PUBLISH must have DUP = 1 [MQTT-3.3.1-1]: {a:?}; \
             sent before the restart: {first:?}; after: {again:?}"
        );
        assert_eq!(
            a.pid, f.pid,
            "{mode:?}: redelivered with the original packet id [MQTT-4.4.0-1]"
        );
    }
    for p in &again {
        c.ack(p);
    }
    c.expect_silence(QUIET);
    c.disconnect();
    node.stop();
}

#[test]
fn graceful_restart_resends_unacknowledged_qos1_with_dup_and_same_ids() {
    inflight_messages_survive(Mode::Graceful);
}

#[test]
fn killed_broker_resends_unacknowledged_qos1_with_dup_and_same_ids() {
    inflight_messages_survive(Mode::Killed);
}

// ---------------------------------------------------------------------------------
// 4. Inbound QoS 2 state: a re-sent PUBLISH after PUBREC is not delivered twice
// ---------------------------------------------------------------------------------

fn inbound_qos2_survives(mode: Mode) {
    let dir = DataDir::new("in2");
    let node = Node::start(mode, dir.path(), SHARDS);
    let topic = unique("dur/in2");
    // An offline persistent subscriber.
    let sub_id = id_on_shard("dur-in2-sub", 0);
    let (mut s, _) = Raw::connect(node.addr(), &sub_id, false);
    assert_eq!(s.subscribe(1, &[(&topic, 2)]), vec![2]);
    s.disconnect();
    // The publisher, with a persistent session, stops after PUBREC.
    let pub_id = id_on_shard("dur-in2-pub", 1);
    let (mut p, _) = Raw::connect(node.addr(), &pub_id, false);
    p.send(&publish_packet(&topic, b"exactly-once", 2, false, false, 7));
    let rec = p.recv_kind(PUBREC);
    assert_eq!(rec.pid(), 7);
    p.drop_connection();

    let node = node.restart();
    // A subscriber that comes after the restart must not see the re-sent PUBLISH
    // either: the broker accepted it before.
    let (mut watch, _) = Raw::connect(node.addr(), &id_on_shard("dur-in2-watch", 0), true);
    assert_eq!(watch.subscribe(1, &[(&topic, 2)]), vec![2]);
    let (mut p, sp) = Raw::connect(node.addr(), &pub_id, false);
    assert!(
        sp,
        "{mode:?}: the publisher's session is present after restart"
    );
    p.send(&publish_packet(&topic, b"exactly-once", 2, false, true, 7));
    let rec = p.recv_kind(PUBREC);
    assert_eq!(rec.pid(), 7, "PUBREC for the re-sent PUBLISH");
    p.send(&pubrel(7));
    let comp = p.recv_kind(PUBCOMP);
    assert_eq!(comp.pid(), 7, "PUBCOMP after PUBREL");
    // After PUBCOMP the id is free: a new message with id 7 is a new message.
    p.send(&publish_packet(&topic, b"sentinel", 2, false, false, 7));
    assert_eq!(p.recv_kind(PUBREC).pid(), 7);
    p.send(&pubrel(7));
    assert_eq!(p.recv_kind(PUBCOMP).pid(), 7);

    let before = raw_until_payload(&mut watch, b"sentinel");
    assert!(
        before.is_empty(),
        "{mode:?}: the DUP re-send of an already received QoS 2 PUBLISH must not be \
         delivered again [MQTT-4.3.3-2]; a subscriber got {before:?}"
    );
    let (mut s, sp) = Raw::connect(node.addr(), &sub_id, false);
    assert!(sp);
    let got = raw_until_payload(&mut s, b"sentinel");
    assert_eq!(
        payloads(&got),
        ["exactly-once"],
        "{mode:?}: the offline subscriber gets the QoS 2 message exactly once"
    );
    assert_eq!(got[0].qos, 2);
    s.expect_silence(QUIET);
    watch.expect_silence(QUIET);
    s.disconnect();
    watch.disconnect();
    p.disconnect();
    node.stop();
}

#[test]
fn graceful_restart_keeps_inbound_qos2_state() {
    inbound_qos2_survives(Mode::Graceful);
}

#[test]
fn killed_broker_keeps_inbound_qos2_state() {
    inbound_qos2_survives(Mode::Killed);
}

// ---------------------------------------------------------------------------------
// 5. Retained messages survive, deletions too
// ---------------------------------------------------------------------------------

/// Retained messages under `topic/#` as a new subscriber gets them (topic, payload),
/// sorted; every one must carry the retain flag.
fn retained_under(addr: SocketAddr, topic: &str, sentinel: &[u8]) -> Vec<(String, String)> {
    let (mut s, _) = Raw::connect(addr, &id_on_shard("dur-ret-s", 1), true);
    assert_eq!(s.subscribe(1, &[(&format!("{topic}/#"), 1)]), vec![1]);
    let mut p = Raw::connect(addr, &id_on_shard("dur-ret-p", 0), true).0;
    p.publish(&format!("{topic}/zz"), sentinel, 1, false);
    let got = raw_until_payload(&mut s, sentinel);
    s.disconnect();
    p.disconnect();
    assert!(
        got.iter().all(|p| p.retain),
        "retained messages sent on subscribe carry retain 1: {got:?}"
    );
    let mut got: Vec<(String, String)> = got
        .iter()
        .map(|p| (p.topic.clone(), p.payload_str()))
        .collect();
    got.sort();
    got
}

fn retained_survive(mode: Mode) {
    let dir = DataDir::new("retained");
    let node = Node::start(mode, dir.path(), SHARDS);
    let topic = unique("dur/ret");
    // Each topic updated by one publisher (one shard's stream).
    let mut a = Raw::connect(node.addr(), &id_on_shard("dur-ret-a", 0), true).0;
    let mut b = Raw::connect(node.addr(), &id_on_shard("dur-ret-b", 1), true).0;
    a.publish(&format!("{topic}/a"), b"A", 1, true);
    b.publish(&format!("{topic}/b"), b"B", 2, true);
    b.publish(&format!("{topic}/b"), b"", 1, true); // deletes B
    a.publish(&format!("{topic}/c"), b"C1", 1, true);
    a.publish(&format!("{topic}/c"), b"C2", 2, true); // replaces C1
    a.publish(&format!("{topic}/d"), b"D", 2, true);
    a.publish(&format!("{topic}/d"), b"", 2, true); // deleted by a QoS 2 empty one
    b.publish(&format!("{topic}/e"), b"E", 1, true);
    a.disconnect();
    b.disconnect();
    let expected = vec![
        (format!("{topic}/a"), "A".to_string()),
        (format!("{topic}/c"), "C2".to_string()),
        (format!("{topic}/e"), "E".to_string()),
    ];
    assert_eq!(
        retained_under(node.addr(), &topic, b"sentinel-1"),
        expected,
        "{mode:?}: the retained messages before the restart"
    );

    let node = node.restart();
    assert_eq!(
        retained_under(node.addr(), &topic, b"sentinel-2"),
        expected,
        "{mode:?}: the retained messages after the restart (c replaced, b and d \
         deleted); log:\n{}",
        node.log()
    );
    // A second restart (from the snapshot the first one wrote) keeps them too.
    let node = node.restart();
    assert_eq!(
        retained_under(node.addr(), &topic, b"sentinel-3"),
        expected,
        "{mode:?}: the retained messages after a second restart"
    );
    node.stop();
}

#[test]
fn graceful_restart_keeps_retained_messages_and_deletions() {
    retained_survive(Mode::Graceful);
}

#[test]
fn killed_broker_keeps_retained_messages_and_deletions() {
    retained_survive(Mode::Killed);
}

const RETAIN_ROUNDS: usize = 8;

/// Retained updates to one topic from publishers on different shards, each sent
/// after the previous one was acknowledged: the last one is the topic's retained
/// message, before and after a restart.
fn retained_cross_shard_survive(mode: Mode) {
    let dir = DataDir::new("retained-x");
    let node = Node::start(mode, dir.path(), SHARDS);
    let topic = unique("dur/retx");
    let mut pubs = [
        Raw::connect(node.addr(), &id_on_shard("dur-retx-a", 0), true).0,
        Raw::connect(node.addr(), &id_on_shard("dur-retx-b", 1), true).0,
    ];
    let mut expected = Vec::new();
    for k in 0..RETAIN_ROUNDS {
        let (first, second) = (k % 2, 1 - k % 2);
        // Replaced from the other shard.
        let t = format!("{topic}/c{k}");
        pubs[first].publish(&t, format!("C{k}-old").as_bytes(), 1, true);
        pubs[second].publish(&t, format!("C{k}-new").as_bytes(), 2, true);
        expected.push((t, format!("C{k}-new")));
        // Deleted from the other shard.
        let t = format!("{topic}/d{k}");
        pubs[first].publish(&t, b"D", 2, true);
        pubs[second].publish(&t, b"", 1, true);
    }
    for p in pubs {
        p.disconnect();
    }
    expected.sort();
    let before = retained_under(node.addr(), &topic, b"sentinel-1");
    let node = node.restart();
    let after = retained_under(node.addr(), &topic, b"sentinel-2");
    let wrong = |got: &[(String, String)]| -> Vec<(String, String)> {
        got.iter()
            .filter(|g| !expected.contains(g))
            .cloned()
            .collect()
    };
    assert!(
        before == expected && after == expected,
        "{mode:?}: the last retained update of each topic (made from the other shard, \
         after the first was acknowledged) must win; deviations before the restart: \
         {:?}; after the restart: {:?}; expected {expected:?}",
        wrong(&before),
        wrong(&after)
    );
    node.stop();
}

#[test]
fn graceful_restart_keeps_the_last_retained_update_across_shards() {
    retained_cross_shard_survive(Mode::Graceful);
}

#[test]
fn killed_broker_keeps_the_last_retained_update_across_shards() {
    retained_cross_shard_survive(Mode::Killed);
}

// ---------------------------------------------------------------------------------
// 6. A clean-session connect ends a persistent session, durably
// ---------------------------------------------------------------------------------

fn session_end_survives(mode: Mode) {
    let dir = DataDir::new("end");
    let node = Node::start(mode, dir.path(), SHARDS);
    let topic = unique("dur/end");
    let id = id_on_shard("dur-end", 0);
    // A control session that stays, to tell a lost directory from an ended session.
    let keep = id_on_shard("dur-end-keep", 1);
    for who in [&id, &keep] {
        let (mut c, _) = Raw::connect(node.addr(), who, false);
        assert_eq!(c.subscribe(1, &[(&topic, 1)]), vec![1]);
        c.disconnect();
    }
    // Clean session 1 discards the stored session. Its QoS 1 PUBLISH is
    // acknowledged only once everything its shard logged before (the session's end
    // included) is durable, so a kill after the PUBACK may not lose the end.
    let (mut c, sp) = Raw::connect(node.addr(), &id, true);
    assert!(!sp, "clean session 1: session present 0");
    c.publish(&format!("{topic}/other"), b"x", 1, false);
    c.disconnect();
    // A message for the topic now: queued for `keep` only.
    let mut publ = Raw::connect(node.addr(), &id_on_shard("dur-end-pub", 1), true).0;
    publ.publish(&topic, b"queued", 1, false);
    publ.disconnect();

    let node = node.restart();
    let (mut k, sp) = Raw::connect(node.addr(), &keep, false);
    assert!(sp, "{mode:?}: the other persistent session is still there");
    let p = k.expect_publish();
    assert_eq!(p.payload, b"queued");
    k.ack(&p);
    k.disconnect();
    let (mut c, sp) = Raw::connect(node.addr(), &id, false);
    assert!(
        !sp,
        "{mode:?}: a session ended by clean session 1 must stay ended after restart"
    );
    // Nothing queued, and no subscription left: a new publish does not reach it.
    let mut publ = Raw::connect(node.addr(), &id_on_shard("dur-end-pub2", 1), true).0;
    publ.publish(&topic, b"after", 1, false);
    assert_eq!(
        c.subscribe(2, &[(&format!("{topic}/sentinel"), 1)]),
        vec![1]
    );
    publ.publish(&format!("{topic}/sentinel"), b"sentinel", 1, false);
    let got = raw_until_payload(&mut c, b"sentinel");
    assert!(
        got.is_empty(),
        "{mode:?}: the ended session's subscription or queue came back: {got:?}"
    );
    c.disconnect();
    publ.disconnect();
    // The new persistent session made after the restart is itself kept.
    let node = node.restart();
    let (c, sp) = Raw::connect(node.addr(), &id, false);
    assert!(
        sp,
        "{mode:?}: the session made after the first restart is kept"
    );
    c.disconnect();
    node.stop();
}

#[test]
fn graceful_restart_keeps_a_session_ended_by_clean_session() {
    session_end_survives(Mode::Graceful);
}

#[test]
fn killed_broker_keeps_a_session_ended_by_clean_session() {
    session_end_survives(Mode::Killed);
}

// ---------------------------------------------------------------------------------
// 7. One broker per data directory
// ---------------------------------------------------------------------------------

fn second_broker_refused(mode: Mode) {
    let dir = DataDir::new("lock");
    let node = Node::start(mode, dir.path(), SHARDS);
    let id = id_on_shard("dur-lock", 0);
    let (mut c, _) = Raw::connect(node.addr(), &id, false);
    assert_eq!(c.subscribe(1, &[("dur/lock", 1)]), vec![1]);
    c.disconnect();

    match Broker::start(config(dir.path(), SHARDS)) {
        Ok(_) => panic!("{mode:?}: a second broker on a data directory in use must not start"),
        Err(e) => {
            assert!(
                matches!(e, shardmq::StartError::Data(_)),
                "{mode:?}: expected StartError::Data, got {e:?}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("LOCK") || msg.contains("in use"),
                "{mode:?}: the error names the lock: {msg}"
            );
        }
    }
    // The refused start harmed neither the running broker nor its state.
    assert_broker_healthy(node.addr());
    let (c, sp) = Raw::connect(node.addr(), &id, false);
    assert!(sp);
    c.disconnect();
    let node = node.restart();
    let (c, sp) = Raw::connect(node.addr(), &id, false);
    assert!(
        sp,
        "{mode:?}: the session survives the refused second start"
    );
    c.disconnect();
    node.stop();
}

#[test]
fn graceful_second_broker_on_the_same_data_dir_is_refused() {
    second_broker_refused(Mode::Graceful);
}

#[test]
fn killed_second_broker_on_the_same_data_dir_is_refused() {
    second_broker_refused(Mode::Killed);
}

// ---------------------------------------------------------------------------------
// 8. The shard count may change between runs
// ---------------------------------------------------------------------------------

fn shard_count_changes(mode: Mode) {
    let dir = DataDir::new("reshard");
    let node = Node::start(mode, dir.path(), 2);
    let topic = unique("dur/reshard");
    // Sessions whose home shards differ in both runs (2 then 3 shards).
    let mut ids = Vec::new();
    for (s2, s3) in [(0, 0), (0, 2), (1, 1), (1, 2), (0, 1), (1, 0)] {
        let base = unique("dur-rs");
        let id = (0..)
            .map(|i| format!("{base}-{i}"))
            .find(|id| shardmq::home_shard(id, 2) == s2 && shardmq::home_shard(id, 3) == s3)
            .unwrap();
        ids.push(id);
    }
    for id in &ids {
        let (mut c, _) = Raw::connect(node.addr(), id, false);
        assert_eq!(c.subscribe(1, &[(&format!("{topic}/#"), 2)]), vec![2]);
        c.disconnect();
    }
    let mut pa = Raw::connect(node.addr(), &id_on_shard("dur-rs-pa", 0), true).0;
    let mut pb = Raw::connect(node.addr(), &id_on_shard("dur-rs-pb", 1), true).0;
    pa.publish(&format!("{topic}/a"), b"a1", 1, false);
    pb.publish(&format!("{topic}/b"), b"b1", 2, false);
    pa.publish(&format!("{topic}/a"), b"a2", 2, false);
    pb.publish(&format!("{topic}/b"), b"b2", 1, false);
    pa.disconnect();
    pb.disconnect();

    let node = node.restart_with(3);
    let mut publ = Raw::connect(node.addr(), &id_on("dur-rs-p3", 2, 3), true).0;
    // Live messages on the 3-shard broker reach the restored subscriptions too.
    publ.publish(&format!("{topic}/z"), b"sentinel", 1, false);
    for id in &ids {
        let (mut c, sp) = Raw::connect(node.addr(), id, false);
        assert!(
            sp,
            "{mode:?}: session {id} (made on 2 shards) present on 3 shards; log:\n{}",
            node.log()
        );
        let got = raw_until_payload(&mut c, b"sentinel");
        let mut from_a: Vec<String> = got
            .iter()
            .filter(|p| p.topic.ends_with("/a"))
            .map(|p| p.payload_str())
            .collect();
        let mut from_b: Vec<String> = got
            .iter()
            .filter(|p| p.topic.ends_with("/b"))
            .map(|p| p.payload_str())
            .collect();
        // QoS 1 duplicates are allowed; order per publisher is not.
        from_a.dedup();
        from_b.dedup();
        assert_eq!(
            (from_a, from_b),
            (
                vec!["a1".to_string(), "a2".into()],
                vec!["b1".to_string(), "b2".into()]
            ),
            "{mode:?}: session {id}'s queued messages on 3 shards: {got:?}"
        );
        let q2: Vec<_> = got
            .iter()
            .filter(|p| p.qos == 2)
            .map(|p| p.payload_str())
            .collect();
        let mut q2s = q2.clone();
        q2s.sort();
        assert_eq!(
            q2s,
            ["a2", "b1"],
            "{mode:?}: QoS 2 exactly once for {id}: {got:?}"
        );
        c.disconnect();
    }
    publ.disconnect();
    // And back to 2 shards: the sessions are still there, and what they
    // acknowledged does not come again (after a crash, a QoS 1 message acknowledged
    // since the last checkpoint may; a QoS 2 one never).
    let node = node.restart_with(2);
    let mut publ = Raw::connect(node.addr(), &id_on_shard("dur-rs-p2", 0), true).0;
    publ.publish(&format!("{topic}/z"), b"sentinel-2", 1, false);
    for id in &ids {
        let (mut c, sp) = Raw::connect(node.addr(), id, false);
        assert!(sp, "{mode:?}: session {id} present back on 2 shards");
        let got = raw_until_payload(&mut c, b"sentinel-2");
        match mode {
            Mode::Graceful => assert!(got.is_empty(), "delivered messages came again: {got:?}"),
            Mode::Killed => assert!(
                got.iter().all(|p| p.qos == 1),
                "a QoS 2 message delivered before the crash came again: {got:?}"
            ),
        }
        c.disconnect();
    }
    publ.disconnect();
    node.stop();
}

#[test]
fn graceful_restart_with_more_shards_finds_sessions_and_queues() {
    shard_count_changes(Mode::Graceful);
}

#[test]
fn killed_broker_restarted_with_more_shards_finds_sessions_and_queues() {
    shard_count_changes(Mode::Killed);
}

// ---------------------------------------------------------------------------------
// 9. A damaged log tail
// ---------------------------------------------------------------------------------

/// The current generation's directory, from DIR/CURRENT.
fn current_generation(dir: &Path) -> PathBuf {
    let current = std::fs::read_to_string(dir.join("CURRENT")).expect("DIR/CURRENT");
    let gen: u64 = current
        .lines()
        .find_map(|l| l.strip_prefix("generation "))
        .unwrap_or_else(|| panic!("no generation in CURRENT: {current:?}"))
        .trim()
        .parse()
        .unwrap();
    let path = dir.join(format!("gen-{gen:010}"));
    assert!(
        path.is_dir(),
        "{} exists (CURRENT: {current:?})",
        path.display()
    );
    path
}

/// Appends garbage to the last segment of every shard of the current generation;
/// returns how many files it damaged.
fn damage_tails(dir: &Path) -> usize {
    let gen = current_generation(dir);
    let mut damaged = 0;
    for shard in std::fs::read_dir(&gen).unwrap() {
        let shard = shard.unwrap().path();
        if !shard.is_dir()
            || !shard
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("shard-")
        {
            continue;
        }
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&shard)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        let last = logs
            .last()
            .unwrap_or_else(|| panic!("no segment in {}", shard.display()));
        let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
        let garbage: Vec<u8> = (0..777u32).map(|i| (i * 37 + 11) as u8).collect();
        f.write_all(&garbage).unwrap();
        f.sync_all().unwrap();
        damaged += 1;
    }
    damaged
}

fn damaged_tail_is_survived(mode: Mode) {
    let dir = DataDir::new("damage");
    let node = Node::start(mode, dir.path(), SHARDS);
    let topic = unique("dur/dmg");
    let id = id_on_shard("dur-dmg", 1);
    let (mut c, _) = Raw::connect(node.addr(), &id, false);
    assert_eq!(c.subscribe(1, &[(&format!("{topic}/#"), 1)]), vec![1]);
    c.disconnect();
    let mut publ = Raw::connect(node.addr(), &id_on_shard("dur-dmg-pub", 0), true).0;
    publ.publish(&format!("{topic}/ret"), b"retained", 1, true);
    publ.publish(&format!("{topic}/q"), b"queued-1", 1, false);
    publ.publish(&format!("{topic}/q"), b"queued-2", 2, false);
    publ.disconnect();

    node.stop();
    assert_eq!(
        damage_tails(dir.path()),
        SHARDS,
        "one damaged segment per shard"
    );

    let node = Node::start(mode, dir.path(), SHARDS);
    if mode == Mode::Killed {
        assert!(
            node.log().contains("damage"),
            "the broker reports the damaged tails it set aside; log:\n{}",
            node.log()
        );
    }
    let check = |node: &Node, what: &str, sentinel: &[u8]| {
        let (mut c, sp) = Raw::connect(node.addr(), &id, false);
        assert!(
            sp,
            "{mode:?} {what}: the session before the damage is intact; log:\n{}",
            node.log()
        );
        let mut publ = Raw::connect(node.addr(), &id_on_shard("dur-dmg-pub2", 0), true).0;
        publ.publish(&format!("{topic}/z"), sentinel, 1, false);
        let got = raw_until_payload(&mut c, sentinel);
        publ.disconnect();
        c.disconnect();
        got
    };
    let got = check(&node, "after the damage", b"sentinel-1");
    assert_eq!(
        payloads(&got),
        ["retained", "queued-1", "queued-2"],
        "{mode:?}: the queued messages before the damage are intact"
    );
    let (mut s, _) = Raw::connect(node.addr(), &id_on_shard("dur-dmg-s", 0), true);
    assert_eq!(s.subscribe(1, &[(&format!("{topic}/ret"), 1)]), vec![1]);
    let r = s.expect_publish();
    assert_eq!((r.payload.as_slice(), r.retain), (&b"retained"[..], true));
    s.ack(&r);
    s.disconnect();
    // The broker keeps working on the damaged directory: another restart finds the
    // same state (nothing queued now, the session still there).
    let node = node.restart();
    let got = check(&node, "on the restart after that", b"sentinel-2");
    match mode {
        Mode::Graceful => assert!(got.is_empty(), "nothing left queued: {got:?}"),
        // A QoS 1 message acknowledged since the last checkpoint may come again after
        // a crash; a completed QoS 2 one may not.
        Mode::Killed => assert!(
            got.iter().all(|p| p.qos == 1),
            "a QoS 2 message delivered before the crash came again: {got:?}"
        ),
    }
    node.stop();
}

#[test]
fn graceful_restart_survives_a_damaged_log_tail() {
    damaged_tail_is_survived(Mode::Graceful);
}

#[test]
fn killed_broker_survives_a_damaged_log_tail() {
    damaged_tail_is_survived(Mode::Killed);
}

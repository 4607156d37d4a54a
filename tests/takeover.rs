//! A second connection with the same client id takes over (MQTT 3.1.1 [MQTT-3.1.4-2]),
//! whichever shards accepted the two connections.

mod common;
use common::*;

#[test]
fn second_connection_with_same_client_id_closes_the_first() {
    let b = broker();
    // The kernel spreads connections over both accepting shards, so over many attempts
    // both the same-shard and the cross-shard (handoff) cases occur.
    for i in 0..30 {
        let id = id_on_shard(&format!("to{i}"), i % 2);
        let clean = i % 3 == 0;
        let (mut first, _) = Raw::connect(b.local_addr(), &id, clean);
        first.ping();
        let (mut second, _) = Raw::connect(b.local_addr(), &id, clean);
        // [MQTT-3.1.4-2] the server disconnects the existing client.
        let got = first.expect_closed();
        assert!(got.is_empty(), "attempt {i}: old connection got {got:?}");
        second.ping();
        second.disconnect();
        if !clean {
            Raw::connect(b.local_addr(), &id, true).0.disconnect();
        }
    }
    let s = wait_stats(&b, "30 takeovers", |s| s.takeovers >= 30);
    assert!(
        s.handoffs_in >= 1,
        "no connection was ever handed to its home shard: {s:#?}"
    );
    assert_no_leaks(&b);
}

#[test]
fn takeover_with_clean_session_0_continues_the_session() {
    let b = broker();
    for shard in 0..SHARDS {
        let id = id_on_shard("tc0", shard);
        let (mut first, _) = Raw::connect(b.local_addr(), &id, false);
        assert_eq!(first.subscribe(1, &[("tc0/t", 1)]), vec![1]);
        let (mut second, sp) = Raw::connect(b.local_addr(), &id, false);
        first.expect_closed();
        assert!(
            sp,
            "session present 1 when taking over a clean-session-0 session [MQTT-3.2.2-2]"
        );
        let mut publ = Raw::connect(b.local_addr(), &id_on_shard("tc0-pub", 1 - shard), true).0;
        publ.publish("tc0/t", b"to the new connection", 1, false);
        let p = second.expect_publish();
        assert_eq!(p.payload, b"to the new connection");
        second.ack(&p);
        publ.disconnect();
        second.disconnect();
        Raw::connect(b.local_addr(), &id, true).0.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn takeover_continues_unacked_messages_on_the_new_connection() {
    let b = broker();
    let id = id_on_shard("tcu", 0);
    let (mut first, _) = Raw::connect(b.local_addr(), &id, false);
    assert_eq!(first.subscribe(1, &[("tcu/t", 1)]), vec![1]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("tcu-pub", 1), true).0;
    publ.publish("tcu/t", b"pending", 1, false);
    let p = first.expect_publish();
    let (mut second, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(sp);
    first.expect_closed();
    let again = second.expect_publish();
    assert_eq!(
        (again.pid, again.dup, again.payload.as_slice()),
        (p.pid, true, &b"pending"[..])
    );
    second.ack(&again);
    second.disconnect();
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    publ.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn takeover_with_clean_session_1_discards_the_session() {
    let b = broker();
    for shard in 0..SHARDS {
        let id = id_on_shard("tc1", shard);
        let (mut first, _) = Raw::connect(b.local_addr(), &id, false);
        assert_eq!(first.subscribe(1, &[("tc1/t", 1)]), vec![1]);
        let (mut second, sp) = Raw::connect(b.local_addr(), &id, true);
        first.expect_closed();
        assert!(!sp, "clean session 1: session present 0 [MQTT-3.2.2-1]");
        let mut publ = Raw::connect(b.local_addr(), &id_on_shard("tc1-pub", 1 - shard), true).0;
        publ.publish("tc1/t", b"nobody", 1, false);
        second.expect_silence(QUIET);
        publ.disconnect();
        second.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn will_of_taken_over_connection_is_published() {
    let b = broker();
    let mut watcher = Raw::connect(b.local_addr(), &id_on_shard("tw-watch", 1), true).0;
    assert_eq!(watcher.subscribe(1, &[("tw/will", 1)]), vec![1]);
    let id = id_on_shard("tw", 0);
    let opts = ConnectOpts::new(&id, true).will("tw/will", b"gone", 1, false);
    let (mut first, _) = Raw::connect_with(b.local_addr(), &opts);
    let (second, _) = Raw::connect(b.local_addr(), &id, true);
    first.expect_closed();
    // [MQTT-3.1.2-8] the old network connection closed without DISCONNECT.
    let p = watcher.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("tw/will", &b"gone"[..])
    );
    watcher.ack(&p);
    second.disconnect();
    watcher.expect_silence(QUIET); // the new connection had no will
    watcher.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn repeated_takeovers_leak_no_sessions() {
    let b = broker();
    let ids: Vec<String> = (0..4).map(|i| id_on_shard("leak", i % 2)).collect();
    for round in 0..5 {
        for id in &ids {
            let (mut a, _) = Raw::connect(b.local_addr(), id, round % 2 == 0);
            assert_eq!(a.subscribe(1, &[("leak/t", 1), ("leak/#", 0)]), vec![1, 0]);
            let (mut c, _) = Raw::connect(b.local_addr(), id, true);
            a.expect_closed();
            assert_eq!(c.subscribe(1, &[("leak/x", 2)]), vec![2]);
            c.drop_connection();
        }
    }
    assert_no_leaks(&b);
}

#[test]
fn rumqttc_client_is_taken_over_by_raw_client_with_same_id() {
    let b = broker();
    let id = id_on_shard("rto", 1);
    let mut old = mq(b.local_addr(), &id, false);
    assert_eq!(old.subscribe("rto/t", 1), Some(1));
    let (mut new, sp) = Raw::connect(b.local_addr(), &id, false);
    assert!(sp);
    let mut publ = mq(b.local_addr(), &id_on_shard("rto-pub", 0), true);
    publ.publish_acked("rto/t", 1, false, b"x");
    let p = new.expect_publish();
    assert_eq!(p.payload, b"x");
    new.ack(&p);
    new.disconnect();
    publ.disconnect();
    drop(old);
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn concurrent_connects_with_the_same_id_leave_exactly_one_connection() {
    let b = broker();
    let addr = b.local_addr();
    for round in 0..5 {
        let id = id_on_shard(&format!("race{round}"), round % 2);
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let id = id.clone();
                std::thread::spawn(move || {
                    let (c, _) = Raw::connect(addr, &id, round % 2 == 0);
                    c
                })
            })
            .collect();
        let mut conns: Vec<Raw> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        // Exactly one survives: all others are closed by takeovers.
        std::thread::sleep(QUIET);
        let mut open = Vec::new();
        for (i, c) in conns.iter_mut().enumerate() {
            if !c.is_closed_now() {
                open.push(i);
            }
        }
        assert_eq!(open.len(), 1, "round {round}: open connections {open:?}");
        let survivor = conns.swap_remove(open[0]);
        let mut survivor = survivor;
        survivor.ping();
        wait_stats(&b, "one connection", |s| {
            s.connections == 1 && s.sessions == 1
        });
        survivor.disconnect();
        Raw::connect(addr, &id, true).0.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn broker_shutdown_closes_every_connection() {
    let b = broker();
    let mut conns: Vec<Raw> = (0..4)
        .map(|i| Raw::connect(b.local_addr(), &id_on_shard("sd", i % 2), i % 2 == 0).0)
        .collect();
    for c in conns.iter_mut() {
        c.ping();
    }
    b.shutdown();
    for c in conns.iter_mut() {
        c.expect_closed();
    }
}

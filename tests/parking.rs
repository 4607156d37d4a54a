//! Idle connections park: a connection silent for a moment loses its reader task and
//! its I/O source and waits in its shard's epoll set (`net::park`). A parked
//! connection is still a connection: it receives at every QoS, what it sends is read,
//! it is closed by its keep-alive (will and all), taken over, counted against
//! `max_connections`, unparked when its socket fills, and closed at shutdown. Each
//! test first waits until the broker reports its connections parked
//! (`connections_parked`), so the parked path is the one under test.

mod common;
use common::*;
use std::io::Read;
use std::net::Shutdown;
use std::process::{Command, Stdio};
use std::time::Duration;

fn parked(b: &shardmq::Broker, n: usize) -> shardmq::ShardStats {
    wait_stats(b, &format!("at least {n} connections parked"), |s| {
        s.connections_parked >= n
    })
}

#[test]
fn parked_clients_receive_at_every_qos_and_what_they_send_is_read() {
    let b = broker();
    let addr = b.local_addr();
    let mut subs: Vec<Raw> = (0..SHARDS)
        .map(|s| {
            let (mut r, _) = Raw::connect(addr, &id_on_shard("park-sub", s), true);
            assert_eq!(r.subscribe(1, &[("park/t", 2)]), vec![2]);
            r
        })
        .collect();
    let mut rumq = mq(addr, &id_on_shard("park-rumqttc", 1), true);
    assert_eq!(rumq.subscribe("park/t", 2), Some(2));
    // Independent client: mosquitto_sub, waiting for three messages.
    let mosq = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args([
            "-i",
            &id_on_shard("park-mosq", 0),
            "-t",
            "park/t",
            "-q",
            "2",
        ])
        .args(["-C", "3", "-W", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs (Debian's mosquitto-clients)");
    let (mut publ, _) = Raw::connect(addr, &id_on_shard("park-pub", 0), true);
    // Every subscription made (mosquitto_sub's too) and every client parked.
    let before = wait_stats(&b, "all subscribed and parked", |s| {
        s.subscriptions >= SHARDS + 2 && s.connections_parked >= SHARDS + 3
    });
    assert!(before.parks >= (SHARDS + 3) as u64, "{before:#?}");

    // The parked publisher is read again: each PUBLISH is acknowledged and routed
    // to the parked subscribers (written to their sockets without waking them).
    for qos in 0..=2u8 {
        publ.publish("park/t", format!("m{qos}").as_bytes(), qos, false);
    }
    for sub in &mut subs {
        for qos in 0..=2u8 {
            let p = sub.expect_publish();
            assert_eq!((p.payload_str(), p.qos), (format!("m{qos}"), qos));
            sub.ack(&p);
        }
    }
    for qos in 0..=2u8 {
        let p = rumq.recv_publish();
        assert_eq!(
            (&p.payload[..], p.qos as u8),
            (format!("m{qos}").as_bytes(), qos)
        );
    }
    let out = mosq.wait_with_output().expect("mosquitto_sub ends");
    assert!(out.status.success(), "mosquitto_sub got its three messages");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "m0\nm1\nm2\n");

    // They park again once silent, and a PINGREQ from a parked client is answered.
    parked(&b, SHARDS + 1);
    for sub in &mut subs {
        sub.ping();
    }
    publ.ping();
    for sub in subs {
        sub.disconnect();
    }
    publ.disconnect();
    rumq.disconnect();
    assert_no_leaks(&b);
    let s = b.stats().total();
    assert_eq!(s.connections_parked, 0, "{s:#?}");
}

#[test]
fn a_parked_client_that_goes_silent_is_closed_by_its_keep_alive_and_its_will_goes_out() {
    let b = broker();
    let addr = b.local_addr();
    let (mut watcher, _) = Raw::connect(addr, &id_on_shard("park-watch", 0), true);
    assert_eq!(watcher.subscribe(1, &[("park/will", 1)]), vec![1]);
    let opts = ConnectOpts::new(&id_on_shard("park-silent", 1), true)
        .keep_alive(1)
        .will("park/will", b"gone", 1, false);
    let (mut silent, _) = Raw::connect_with(addr, &opts);
    parked(&b, 2);
    // Nothing more from it: 1.5 x 1 s later the broker closes it.
    silent.expect_closed_within(Duration::from_secs(10));
    let p = watcher.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload_str()),
        ("park/will", "gone".to_string())
    );
    watcher.ack(&p);
    let s = b.stats().total();
    assert_eq!(s.keepalive_timeouts, 1, "{s:#?}");
    watcher.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn a_parked_client_is_taken_over_and_its_session_goes_on_on_the_new_connection() {
    let b = broker();
    let addr = b.local_addr();
    let id = id_on_shard("park-takeover", 1);
    let (mut first, _) = Raw::connect(addr, &id, false);
    assert_eq!(first.subscribe(1, &[("park/takeover", 1)]), vec![1]);
    parked(&b, 1);
    let (mut second, present) = Raw::connect(addr, &id, false);
    assert!(present, "the session is resumed");
    first.expect_closed();
    let (mut publ, _) = Raw::connect(addr, &id_on_shard("park-takeover-pub", 0), true);
    publ.publish("park/takeover", b"to the new one", 1, false);
    let p = second.expect_publish();
    assert_eq!(p.payload_str(), "to the new one");
    second.ack(&p);
    let s = b.stats().total();
    assert_eq!(s.takeovers, 1, "{s:#?}");
    // Clean up the persistent session.
    second.disconnect();
    let (clean, _) = Raw::connect(addr, &id, true);
    clean.disconnect();
    publ.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn parked_connections_count_against_max_connections() {
    let b = broker_with(|c| c.max_connections = 2);
    let addr = b.local_addr();
    let (a, _) = Raw::connect(addr, &id_on_shard("park-max", 0), true);
    let (c, _) = Raw::connect(addr, &id_on_shard("park-max", 1), true);
    parked(&b, 2);
    // A third is refused: parked, the two still hold their places.
    let mut third = Raw::open(addr);
    third.send_lossy(&connect_packet(&id_on_shard("park-max", 0), true));
    third.expect_closed();
    let s = b.stats().total();
    assert_eq!((s.connections, s.refused_max_connections), (2, 1), "{s:#?}");
    a.disconnect();
    c.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn a_parked_subscriber_that_stops_reading_gets_everything_once_it_reads_again() {
    // Room for every message in flight at once, so what holds them back is the
    // subscriber's socket.
    let b = broker_with(|c| {
        c.max_inflight = 1000;
        c.max_packet_size = 1 << 20;
        c.max_queued_bytes = 64 << 20;
    });
    let addr = b.local_addr();
    let (mut sub, _) = Raw::connect(addr, &id_on_shard("park-slow", 1), true);
    assert_eq!(sub.subscribe(1, &[("park/flood", 1)]), vec![1]);
    let (mut publ, _) = Raw::connect(addr, &id_on_shard("park-flood", 0), true);
    parked(&b, 2);
    // The subscriber reads nothing while more than its socket holds is sent to it:
    // the broker's write to the parked socket fills it and must wait for room.
    let payload = vec![b'x'; 64 * 1024];
    let n = 200u16;
    for i in 0..n {
        let mut p = i.to_be_bytes().to_vec();
        p.extend_from_slice(&payload);
        publ.send(&publish_packet("park/flood", &p, 1, false, false, i + 1));
        let ack = publ.recv_kind(PUBACK);
        assert_eq!(ack.pid(), i + 1);
    }
    for i in 0..n {
        let p = sub.expect_publish();
        assert_eq!(&p.payload[..2], &i.to_be_bytes(), "in order, none lost");
        sub.ack(&p);
    }
    sub.disconnect();
    publ.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn a_parked_client_that_hangs_up_is_seen_gone_and_its_will_goes_out() {
    let b = broker();
    let addr = b.local_addr();
    let (mut watcher, _) = Raw::connect(addr, &id_on_shard("park-hup-watch", 0), true);
    assert_eq!(watcher.subscribe(1, &[("park/hup", 1)]), vec![1]);
    let opts =
        ConnectOpts::new(&id_on_shard("park-hup", 1), true).will("park/hup", b"cut", 1, false);
    let (gone, _) = Raw::connect_with(addr, &opts);
    parked(&b, 2);
    gone.stream.shutdown(Shutdown::Both).unwrap();
    drop(gone);
    let p = watcher.expect_publish();
    assert_eq!(p.payload_str(), "cut");
    watcher.ack(&p);
    watcher.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn shutdown_closes_parked_connections() {
    let b = broker();
    let addr = b.local_addr();
    let mut clients: Vec<Raw> = (0..4)
        .map(|i| Raw::connect(addr, &id_on_shard("park-down", i % SHARDS), true).0)
        .collect();
    parked(&b, 4);
    b.shutdown();
    for c in &mut clients {
        c.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        // EOF (the broker closed it), after at most what it still owed.
        c.stream
            .read_to_end(&mut rest)
            .expect("closed at shutdown, not left open");
    }
}

#[test]
fn with_park_idle_after_ms_0_no_connection_parks() {
    let b = broker_with(|c| c.park_idle_after_ms = 0);
    let addr = b.local_addr();
    let (mut sub, _) = Raw::connect(addr, &id_on_shard("nopark-sub", 1), true);
    assert_eq!(sub.subscribe(1, &[("nopark/t", 1)]), vec![1]);
    let (mut publ, _) = Raw::connect(addr, &id_on_shard("nopark-pub", 0), true);
    // Ten times the default delay, in silence.
    sub.expect_silence(Duration::from_millis(300));
    let s = b.stats().total();
    assert_eq!((s.connections_parked, s.parks), (0, 0), "{s:#?}");
    publ.publish("nopark/t", b"read by its task", 1, false);
    let p = sub.expect_publish();
    assert_eq!(p.payload_str(), "read by its task");
    sub.ack(&p);
    sub.disconnect();
    publ.disconnect();
    assert_no_leaks(&b);
}

//! The will message and keep-alive (MQTT 3.1.1 §3.1.2.5–§3.1.2.10, [MQTT-3.1.2-24]).

mod common;
use common::*;
use std::time::{Duration, Instant};

fn watcher(b: &Broker, shard: usize, filter: &str) -> Raw {
    let mut w = Raw::connect(b.local_addr(), &id_on_shard("watch", shard), true).0;
    assert_eq!(w.subscribe(1, &[(filter, 2)]), vec![2]);
    w
}

#[test]
fn will_is_published_when_the_socket_closes_without_disconnect() {
    let b = broker();
    for (client_shard, watch_shard) in [(0, 1), (1, 0), (0, 0)] {
        let mut w = watcher(&b, watch_shard, "will/+");
        let opts = ConnectOpts::new(&id_on_shard("wc", client_shard), true)
            .will("will/a", b"lost", 1, false);
        let (c, _) = Raw::connect_with(b.local_addr(), &opts);
        c.drop_connection();
        // [MQTT-3.1.2-8] published when the network connection is closed abnormally.
        let p = w.expect_publish();
        assert_eq!(
            (p.topic.as_str(), p.payload.as_slice(), p.qos, p.retain),
            ("will/a", &b"lost"[..], 1, false)
        );
        w.ack(&p);
        w.disconnect();
    }
    wait_stats(&b, "wills_published >= 3", |s| s.wills_published >= 3);
    assert_no_leaks(&b);
}

#[test]
fn will_is_published_on_keep_alive_timeout() {
    let b = broker();
    let mut w = watcher(&b, 0, "ka/will");
    let opts = ConnectOpts::new(&id_on_shard("ka", 1), true)
        .keep_alive(1)
        .will("ka/will", b"silent", 1, false);
    let (mut c, _) = Raw::connect_with(b.local_addr(), &opts);
    let last_sent = Instant::now();
    // Go silent. [MQTT-3.1.2-24] the server disconnects after 1.5 x keep-alive.
    let got = c.expect_closed_within(Duration::from_secs(4));
    assert!(got.is_empty(), "{got:?}");
    let waited = last_sent.elapsed();
    // The grace period is one and a half times the keep-alive [MQTT-3.1.2-24].
    assert!(
        waited >= Duration::from_millis(1400),
        "closed after {waited:?}, before 1.5 x keep-alive elapsed"
    );
    let p = w.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("ka/will", &b"silent"[..])
    );
    w.ack(&p);
    wait_stats(&b, "keepalive_timeouts >= 1", |s| s.keepalive_timeouts >= 1);
    w.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn keep_alive_is_extended_by_client_activity() {
    let b = broker();
    let opts = ConnectOpts::new(&unique("kalive"), true).keep_alive(1);
    let (mut c, _) = Raw::connect_with(b.local_addr(), &opts);
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(400));
        // Any control packet counts as activity, not only PINGREQ.
        if n % 2 == 0 {
            c.ping();
        } else {
            c.publish("ka/activity", b"", 1, false);
        }
        n += 1;
    }
    assert_eq!(b.stats().total().keepalive_timeouts, 0);
    c.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn will_is_not_published_after_disconnect() {
    let b = broker();
    let mut w = watcher(&b, 1, "nw/#");
    for shard in 0..SHARDS {
        let opts =
            ConnectOpts::new(&id_on_shard("nw", shard), true).will("nw/will", b"no", 1, false);
        let (c, _) = Raw::connect_with(b.local_addr(), &opts);
        // [MQTT-3.1.2-10] / [MQTT-3.14.4-3] DISCONNECT discards the will.
        c.disconnect();
    }
    wait_stats(&b, "only the watcher left", |s| {
        s.connections == 1 && s.sessions == 1
    });
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("nw-pub", 0), true).0;
    publ.publish("nw/end", b"", 0, false);
    let got = w.publishes_until("nw/end");
    assert!(got.is_empty(), "will published despite DISCONNECT: {got:?}");
    w.expect_silence(QUIET);
    assert_eq!(b.stats().total().wills_published, 0);
    publ.disconnect();
    w.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn will_retain_flag_is_honoured() {
    let b = broker();
    let mut existing = watcher(&b, 1, "wr/status");
    let opts = ConnectOpts::new(&id_on_shard("wr", 0), true).will("wr/status", b"offline", 1, true);
    let (c, _) = Raw::connect_with(b.local_addr(), &opts);
    c.drop_connection();
    // An existing subscriber gets it as a normal forward: RETAIN 0 [MQTT-3.3.1-9].
    let p = existing.expect_publish();
    assert_eq!((p.payload.as_slice(), p.retain), (&b"offline"[..], false));
    existing.ack(&p);
    existing.disconnect();
    wait_stats(&b, "will published", |s| {
        s.wills_published >= 1 && s.retained >= 1
    });
    // [MQTT-3.1.2-17] will retain 1: published as a retained message, so a later
    // subscriber (on either shard) receives it with RETAIN 1.
    for shard in 0..SHARDS {
        let mut later = Raw::connect(b.local_addr(), &id_on_shard("wr-later", shard), true).0;
        assert_eq!(later.subscribe(1, &[("wr/status", 1)]), vec![1]);
        let p = later.expect_publish();
        assert_eq!(
            (p.payload.as_slice(), p.retain, p.qos),
            (&b"offline"[..], true, 1)
        );
        later.ack(&p);
        later.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn will_without_retain_is_not_retained() {
    let b = broker();
    let opts =
        ConnectOpts::new(&id_on_shard("wnr", 1), true).will("wnr/status", b"offline", 1, false);
    let (c, _) = Raw::connect_with(b.local_addr(), &opts);
    c.drop_connection();
    wait_stats(&b, "will published", |s| s.wills_published >= 1);
    // [MQTT-3.1.2-16] will retain 0: published as a non-retained message.
    let mut later = Raw::connect(b.local_addr(), &id_on_shard("wnr-later", 0), true).0;
    assert_eq!(later.subscribe(1, &[("wnr/status", 1)]), vec![1]);
    later.expect_silence(QUIET);
    later.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn will_qos_is_honoured() {
    let b = broker();
    let mut w = watcher(&b, 1, "wq/+");
    for will_qos in 0..3u8 {
        let topic = format!("wq/{will_qos}");
        let opts =
            ConnectOpts::new(&id_on_shard("wq", 0), true).will(&topic, b"w", will_qos, false);
        let (c, _) = Raw::connect_with(b.local_addr(), &opts);
        c.drop_connection();
        let p = w.expect_publish();
        // Subscription granted QoS 2: delivered at the will's own QoS.
        assert_eq!(
            (p.topic.as_str(), p.qos),
            (topic.as_str(), will_qos),
            "[MQTT-3.1.2-14] will QoS"
        );
        w.ack(&p);
    }
    w.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn will_is_published_when_broker_closes_for_a_protocol_error() {
    let b = broker();
    let mut w = watcher(&b, 0, "pe/will");
    let opts = ConnectOpts::new(&id_on_shard("pe", 1), true).will("pe/will", b"violated", 1, false);
    let (mut c, _) = Raw::connect_with(b.local_addr(), &opts);
    c.send(&connect_packet("pe-again", true)); // second CONNECT: protocol violation
    c.expect_closed();
    // §3.1.2.5: "The Server closes the Network Connection because of a protocol error".
    let p = w.expect_publish();
    assert_eq!(p.payload, b"violated");
    w.ack(&p);
    w.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn rumqttc_last_will_is_published_when_its_connection_drops() {
    let b = broker();
    let mut w = mq(b.local_addr(), &id_on_shard("rw-watch", 0), true);
    assert_eq!(w.subscribe("rw/lw", 1), Some(1));
    let mut c = mq_with(b.local_addr(), &id_on_shard("rw-client", 1), true, |o| {
        o.set_last_will(rumqttc::LastWill::new(
            "rw/lw",
            "bye",
            QoS::AtLeastOnce,
            false,
        ));
    });
    assert_eq!(c.subscribe("rw/other", 0), Some(0));
    c.kill(); // socket closed without DISCONNECT
    let p = w.recv_publish();
    assert_eq!((&p.payload[..], qos_num(p.qos)), (&b"bye"[..], 1));
    w.disconnect();
    assert_no_leaks(&b);
}

//! Limits on what one client may make the broker hold or walk: topic levels, topic
//! length, subscriptions per client, client id length. Each over its limit gets the
//! documented answer (closed connection, SUBACK 0x80 or CONNACK 0x02), and other
//! clients carry on.

mod common;
use common::*;

fn levels(n: usize) -> String {
    vec!["l"; n].join("/")
}

#[test]
fn a_publish_over_max_topic_levels_closes_the_connection() {
    let b = broker();
    // At the default limit of 128 levels, a publish goes through.
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("lv-sub", 0), true).0;
    assert_eq!(sub.subscribe(1, &[("#", 1)]), vec![1]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("lv-pub", 1), true).0;
    publ.publish(&levels(128), b"128", 1, false);
    let p = sub.expect_publish();
    assert_eq!(p.payload, b"128");
    sub.ack(&p);
    publ.disconnect();
    sub.disconnect();
    drop(b);
    // One more closes the connection, as does the 60,000-level topic `/` × 59,999.
    assert_protocol_error(
        &publish_packet(&levels(129), b"x", 1, false, false, 1),
        "129 levels",
    );
    assert_protocol_error(
        &publish_packet(&"/".repeat(59_999), b"x", 0, false, false, 0),
        "60,000 levels",
    );
}

#[test]
fn a_will_topic_over_the_limits_closes_the_connection_before_connack() {
    let b = broker_with(|c| c.max_topic_length = 100);
    for topic in [levels(129), "w".repeat(101)] {
        let opts = ConnectOpts::new(&unique("lw"), true).will(&topic, b"x", 0, false);
        let mut c = Raw::open(b.local_addr());
        c.send_lossy(&opts.encode());
        let got = c.expect_closed();
        assert!(got.is_empty(), "{got:?}");
    }
    wait_stats(&b, "two refused CONNECTs", |s| s.protocol_errors >= 2);
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn a_publish_over_max_topic_length_closes_the_connection() {
    let b = broker_with(|c| c.max_topic_length = 100);
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("len-sub", 0), true).0;
    assert_eq!(sub.subscribe(1, &[("#", 1)]), vec![1]);
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("len-pub", 1), true).0;
    publ.publish(&"t".repeat(100), b"100", 1, false);
    let p = sub.expect_publish();
    assert_eq!(p.payload, b"100");
    sub.ack(&p);
    publ.send_lossy(&publish_packet(&"t".repeat(101), b"x", 1, false, false, 1));
    assert!(publ.expect_closed().is_empty());
    sub.expect_silence(QUIET);
    wait_stats(&b, "protocol_errors >= 1", |s| s.protocol_errors >= 1);
    sub.disconnect();
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

#[test]
fn filters_over_the_topic_limits_get_suback_0x80_and_the_rest_are_granted() {
    let b = broker_with(|c| c.max_topic_length = 300);
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("flt", 1), true).0;
    let at_levels = levels(128);
    let over_levels = format!("{}/+", levels(128));
    let at_length = "f".repeat(300);
    let over_length = "f".repeat(301);
    let deep_slashes = "/".repeat(20_000);
    assert_eq!(
        sub.subscribe(
            1,
            &[
                (&at_levels, 1),
                (&over_levels, 1),
                (&at_length, 0),
                (&over_length, 1),
                (&deep_slashes, 2),
                ("ok/#", 2),
            ],
        ),
        vec![1, 0x80, 0, 0x80, 0x80, 2]
    );
    let s = wait_stats(&b, "3 subscriptions", |s| s.subscriptions == 3);
    assert_eq!(s.subscriptions_refused, 3);
    // The connection stays usable, and the granted filters route.
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("flt-pub", 0), true).0;
    publ.publish(&at_levels, b"deep", 1, false);
    let p = sub.expect_publish();
    assert_eq!(p.payload, b"deep");
    sub.ack(&p);
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn subscriptions_beyond_max_subscriptions_per_client_get_suback_0x80() {
    let b = broker_with(|c| c.max_subscriptions_per_client = 4);
    let mut sub = Raw::connect(b.local_addr(), &id_on_shard("msc", 0), true).0;
    assert_eq!(
        sub.subscribe(1, &[("m/1", 1), ("m/2", 1), ("m/3", 1)]),
        vec![1, 1, 1]
    );
    // The fourth fits, the fifth and sixth do not; a filter already held is a
    // replacement (new QoS), not a new subscription.
    assert_eq!(
        sub.subscribe(2, &[("m/4", 0), ("m/5", 1), ("m/1", 2), ("m/6", 1)]),
        vec![0, 0x80, 2, 0x80]
    );
    wait_stats(&b, "4 subscriptions", |s| s.subscriptions == 4);
    // Unsubscribing makes room again.
    sub.unsubscribe(3, &["m/2"]);
    assert_eq!(sub.subscribe(4, &[("m/5", 1), ("m/6", 1)]), vec![1, 0x80]);
    // Another client has its own allowance.
    let mut other = Raw::connect(b.local_addr(), &id_on_shard("msc2", 1), true).0;
    assert_eq!(
        other.subscribe(1, &[("o/1", 1), ("o/2", 1), ("o/3", 1), ("o/4", 1)]),
        vec![1; 4]
    );
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("msc-pub", 1), true).0;
    publ.publish("m/5", b"room", 1, false);
    let p = sub.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("m/5", &b"room"[..])
    );
    sub.ack(&p);
    publ.disconnect();
    other.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn a_persistent_session_keeps_its_subscription_allowance_across_reconnects() {
    let b = broker_with(|c| c.max_subscriptions_per_client = 2);
    let id = id_on_shard("msp", 1);
    let mut c = Raw::connect(b.local_addr(), &id, false).0;
    assert_eq!(c.subscribe(1, &[("p/1", 1), ("p/2", 1)]), vec![1, 1]);
    c.disconnect();
    let (mut c, present) = Raw::connect(b.local_addr(), &id, false);
    assert!(present);
    assert_eq!(c.subscribe(2, &[("p/3", 1), ("p/2", 0)]), vec![0x80, 0]);
    c.disconnect();
    // End the session.
    Raw::connect(b.local_addr(), &id, true).0.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn a_client_id_over_max_client_id_length_gets_connack_0x02() {
    let b = broker_with(|c| c.max_client_id_length = 64);
    let (c, _) = Raw::connect(b.local_addr(), &"i".repeat(64), true);
    c.disconnect();
    let opts = ConnectOpts::new(&"i".repeat(65), true);
    let (mut c, flags, rc) = Raw::connect_opts(b.local_addr(), &opts);
    // [MQTT-3.1.3-5]: the server MAY refuse; [MQTT-3.2.2-5]: then it closes.
    assert_eq!((flags, rc), (0, 0x02));
    c.expect_closed();
    assert_broker_healthy(b.local_addr());
    assert_no_leaks(&b);
}

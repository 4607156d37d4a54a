//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5.0 §4.8.2) from MQTT 3.1.1
//! clients, end to end on a 2-shard broker: each message to exactly one member of
//! each group, members on both shards (placed with `id_on_shard`), nothing lost when
//! a member drops, and what persistent members were given surviving a restart.

mod common;
use common::*;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// Drains a member until nothing has arrived for `QUIET`; returns the payloads.
fn drain(m: &mut Mq) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(p) = m.recv_publish_within(Duration::from_millis(600)) {
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    got
}

/// Members of `group` on `filter`: `n` clients alternating between the shards.
fn members(b: &Broker, prefix: &str, n: usize, group_filter: &str, q: u8) -> Vec<Mq> {
    (0..n)
        .map(|i| {
            let mut m = mq(b.local_addr(), &id_on_shard(prefix, i % SHARDS), true);
            assert_eq!(m.subscribe(group_filter, q), Some(q));
            m
        })
        .collect()
}

/// Publishes `per` messages `"{p}:{i}"` from each of `publishers` clients (one per
/// shard, each on its own thread), every one acknowledged.
fn publish_from_both_shards(b: &Broker, topic: &str, publishers: usize, per: usize, q: u8) {
    let threads: Vec<_> = (0..publishers)
        .map(|p| {
            let mut c = mq(b.local_addr(), &id_on_shard("sh-pub", p % SHARDS), true);
            let topic = topic.to_string();
            std::thread::spawn(move || {
                for i in 0..per {
                    c.publish_acked(&topic, q, false, format!("{p}:{i}").as_bytes());
                }
                c.disconnect();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn each_qos1_message_goes_to_exactly_one_member_spread_over_both_shards() {
    let b = broker();
    let topic = unique("sh/load");
    let mut ms = members(&b, "sh-m", 4, &format!("$share/workers/{topic}"), 1);
    publish_from_both_shards(&b, &topic, 2, 1000, 1);
    let mut all: HashMap<String, usize> = HashMap::new();
    let mut per_member = Vec::new();
    for m in ms.iter_mut() {
        let got = drain(m);
        per_member.push(got.len());
        for p in got {
            *all.entry(p).or_default() += 1;
        }
    }
    assert_eq!(
        all.len(),
        2000,
        "every message reached the group: {per_member:?}"
    );
    let dups: Vec<_> = all.iter().filter(|(_, &n)| n > 1).collect();
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    for (i, n) in per_member.iter().enumerate() {
        assert!(*n >= 200, "member {i} got a fair share: {per_member:?}");
    }
    let s = b.stats().total();
    assert!(s.shared_delivered >= 2000, "{s:#?}");
    assert_eq!(s.shared_groups, 1);
    for m in ms {
        m.disconnect();
    }
    assert_no_leaks(&b);
    wait_stats(&b, "groups gone with their members", |s| {
        s.shared_groups == 0
    });
}

#[test]
fn qos0_messages_go_to_one_member_each() {
    let b = broker();
    let topic = unique("sh/q0");
    let mut ms = members(&b, "sh-q0", 3, &format!("$share/g/{topic}"), 0);
    // From one publisher per shard; QoS 0 is acknowledged by a ping round trip.
    for p in 0..2 {
        let (mut c, _) = Raw::connect(b.local_addr(), &id_on_shard("sh-q0-pub", p), true);
        for i in 0..300 {
            c.send(&publish_packet(
                &topic,
                format!("{p}:{i}").as_bytes(),
                0,
                false,
                false,
                0,
            ));
        }
        c.ping();
        c.disconnect();
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut counts = Vec::new();
    for m in ms.iter_mut() {
        let got = drain(m);
        counts.push(got.len());
        total += got.len();
        seen.extend(got);
    }
    assert_eq!(total, 600, "each message once to the group: {counts:?}");
    assert_eq!(seen.len(), 600);
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
}

#[test]
fn two_groups_on_one_filter_each_get_every_message_once() {
    let b = broker();
    let topic = unique("sh/two");
    let mut a = members(&b, "sh-ga", 2, &format!("$share/a/{topic}/#"), 1);
    let mut bb = members(&b, "sh-gb", 3, &format!("$share/b/{topic}/+"), 1);
    publish_from_both_shards(&b, &format!("{topic}/x"), 2, 200, 1);
    for (name, group) in [("a", &mut a), ("b", &mut bb)] {
        let mut all: Vec<String> = group.iter_mut().flat_map(drain).collect();
        assert_eq!(all.len(), 400, "group {name}");
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 400, "group {name}: no duplicates");
    }
}

#[test]
fn a_session_with_a_shared_and_a_plain_subscription_gets_both_copies() {
    let b = broker();
    let topic = unique("sh/both");
    let mut m = mq(b.local_addr(), &id_on_shard("sh-both", 1), true);
    assert_eq!(m.subscribe(&format!("$share/g/{topic}"), 1), Some(1));
    assert_eq!(m.subscribe(&topic, 0), Some(0));
    let mut p = mq(b.local_addr(), &id_on_shard("sh-both-pub", 0), true);
    p.publish_acked(&topic, 1, false, b"once");
    let mut qos = vec![qos_num(m.recv_publish().qos), qos_num(m.recv_publish().qos)];
    qos.sort();
    assert_eq!(qos, vec![0, 1], "one copy per subscription");
    assert!(m.recv_publish_within(QUIET).is_none());
}

#[test]
fn retained_messages_are_not_sent_on_a_shared_subscribe() {
    let b = broker();
    let topic = unique("sh/ret");
    let mut p = mq(b.local_addr(), &id_on_shard("sh-ret-pub", 0), true);
    p.publish_acked(&topic, 1, true, b"kept");
    let mut m = mq(b.local_addr(), &id_on_shard("sh-ret", 1), true);
    assert_eq!(m.subscribe(&format!("$share/g/{topic}"), 1), Some(1));
    assert!(
        m.recv_publish_within(QUIET).is_none(),
        "no retained message on a shared subscribe"
    );
    // A plain subscription still gets it, and a live retained publish reaches the
    // group (as a normal message).
    assert_eq!(m.subscribe(&topic, 1), Some(1));
    assert!(m.recv_publish().retain);
    p.publish_acked(&topic, 1, true, b"live");
    let got: Vec<bool> = (0..2).map(|_| m.recv_publish().retain).collect();
    assert_eq!(got, vec![false, false]);
}

#[test]
fn invalid_shared_filters_are_refused_with_0x80() {
    let b = broker();
    let (mut c, _) = Raw::connect(b.local_addr(), &id_on_shard("sh-bad", 0), true);
    let codes = c.subscribe(
        1,
        &[
            ("$share/g/ok", 1),
            ("$share//a", 1),
            ("$share/g+/a", 1),
            ("$share/#/a", 1),
            ("$share/g", 1),
            ("$share/g/a/#/b", 1),
            ("$share", 0),
        ],
    );
    assert_eq!(codes, vec![1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]);
    assert!(b.stats().total().subscriptions_refused >= 6);
}

#[test]
fn unsubscribe_stops_delivery_to_that_member() {
    let b = broker();
    let topic = unique("sh/unsub");
    let filter = format!("$share/g/{topic}");
    let mut ms = members(&b, "sh-un", 2, &filter, 1);
    ms[0].unsubscribe(&filter);
    publish_from_both_shards(&b, &topic, 2, 50, 1);
    assert!(
        drain(&mut ms[0]).is_empty(),
        "unsubscribed member gets nothing"
    );
    assert_eq!(drain(&mut ms[1]).len(), 100, "the other member gets all");
    ms[1].unsubscribe(&filter);
    wait_stats(&b, "group gone after last unsubscribe", |s| {
        s.shared_groups == 0
    });
}

#[test]
fn hash_client_keeps_a_publishers_messages_with_one_member() {
    let b = broker_with(|c| {
        c.shared_subscription_strategy = shardmq::config::SharedStrategy::HashClient
    });
    let topic = unique("sh/hash");
    let mut ms = members(&b, "sh-h", 4, &format!("$share/g/{topic}"), 1);
    publish_from_both_shards(&b, &topic, 4, 50, 1);
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    for (i, m) in ms.iter_mut().enumerate() {
        for p in drain(m) {
            total += 1;
            let publisher = p.split(':').next().unwrap().to_string();
            let prev = owner.insert(publisher.clone(), i);
            assert!(
                prev.is_none_or(|o| o == i),
                "publisher {publisher}'s messages went to members {prev:?} and {i}"
            );
        }
    }
    assert_eq!(total, 200);
}

/// A member that stops acknowledging and then loses its connection: what it had in
/// flight or queued goes to the other members. Duplicates to the group are only the
/// messages that were in flight to it at the drop, at most its window.
#[test]
fn a_member_dropping_mid_stream_loses_nothing_for_the_group() {
    const WINDOW: u16 = 8;
    let b = broker_with(|c| c.max_inflight = WINDOW);
    let topic = unique("sh/drop");
    let filter = format!("$share/g/{topic}");
    let mut ms = members(&b, "sh-drop", 3, &filter, 1);
    // The dropping member: a raw client on shard 1 that never acknowledges.
    let (mut raw, _) = Raw::connect(b.local_addr(), &id_on_shard("sh-drop-raw", 1), true);
    assert_eq!(raw.subscribe(1, &[(&filter, 1)]), vec![1]);

    let total = 1000;
    let t = {
        let topic = topic.clone();
        let mut c = mq(b.local_addr(), &id_on_shard("sh-drop-pub", 0), true);
        std::thread::spawn(move || {
            for i in 0..total {
                c.publish_acked(&topic, 1, false, format!("0:{i}").as_bytes());
            }
            c.disconnect();
        })
    };
    // Read what reaches the raw member for a while, then kill its socket.
    let mut raw_got = Vec::new();
    let until = Instant::now() + Duration::from_millis(400);
    while let Some(p) = raw.recv_within(until.saturating_duration_since(Instant::now())) {
        if p.kind() == PUBLISH {
            raw_got.push(p.publish().payload_str());
        }
    }
    raw.drop_connection();
    t.join().unwrap();

    let mut all: HashMap<String, usize> = HashMap::new();
    for m in ms.iter_mut() {
        for p in drain(m) {
            *all.entry(p).or_default() += 1;
        }
    }
    for p in &raw_got {
        *all.entry(p.clone()).or_default() += 1;
    }
    assert_eq!(
        all.len(),
        total,
        "nothing lost; raw member got {}",
        raw_got.len()
    );
    let dups: Vec<&String> = all.iter().filter(|(_, &n)| n > 1).map(|(p, _)| p).collect();
    assert!(
        dups.len() <= usize::from(WINDOW),
        "duplicates only for what was in flight at the drop: {} > {WINDOW}",
        dups.len()
    );
    assert!(
        dups.iter().all(|d| raw_got.contains(d)),
        "a duplicate is a message the dropped member had"
    );
    assert!(!raw_got.is_empty(), "the dropped member had taken some");
    let s = b.stats().total();
    assert!(s.shared_redispatched >= raw_got.len() as u64, "{s:#?}");
}

/// A QoS 2 message sent to a member stays with it, whether its PUBREC came or not:
/// the delivery is completed with that client or with no one [MQTT-4.8.2-4,
/// MQTT-4.8.2-5]. Here the member's session ends (clean session), so neither message
/// goes to the other member; a later one does.
#[test]
fn a_qos2_message_sent_to_a_member_is_not_given_to_another_member() {
    let b = broker();
    let topic = unique("sh/q2");
    let filter = format!("$share/g/{topic}");
    let (mut raw, _) = Raw::connect(b.local_addr(), &id_on_shard("sh-q2-raw", 0), true);
    assert_eq!(raw.subscribe(1, &[(&filter, 2)]), vec![2]);
    let mut p = mq(b.local_addr(), &id_on_shard("sh-q2-pub", 1), true);
    p.publish_acked(&topic, 2, false, b"received");
    let first = raw.expect_publish();
    raw.send(&pubrec(first.pid));
    raw.recv_kind(PUBREL);
    p.publish_acked(&topic, 2, false, b"not-received");
    let second = raw.expect_publish();
    assert_eq!(second.payload_str(), "not-received");
    // Another member joins, then the first drops without completing anything.
    let mut other = mq(b.local_addr(), &id_on_shard("sh-q2-other", 1), true);
    assert_eq!(other.subscribe(&filter, 2), Some(2));
    raw.drop_connection();
    // The publisher and the other member stay connected.
    wait_stats(&b, "the dropped member's connection ended", |s| {
        s.connections == 2
    });
    p.publish_acked(&topic, 2, false, b"later");
    let got = drain(&mut other);
    assert_eq!(got, vec!["later".to_string()]);
}

/// A shard whose members are all offline hands the message on to a shard with a
/// connected member rather than queue it: the offline persistent member on shard 0
/// gets nothing while the member on shard 1 is connected, whichever shard the
/// publisher's shard picks.
#[test]
fn a_message_goes_to_a_connected_member_on_another_shard_before_an_offline_one() {
    let b = broker();
    let topic = unique("sh/handon");
    let filter = format!("$share/g/{topic}");
    let offline = id_on_shard("sh-handon-off", 0);
    let mut m = mq(b.local_addr(), &offline, false);
    assert_eq!(m.subscribe(&filter, 1), Some(1));
    m.disconnect();
    let mut online = mq(b.local_addr(), &id_on_shard("sh-handon-on", 1), true);
    assert_eq!(online.subscribe(&filter, 1), Some(1));
    publish_from_both_shards(&b, &topic, 2, 50, 1);
    assert_eq!(drain(&mut online).len(), 100, "all to the connected member");
    let s = b.stats().total();
    assert!(s.shared_forwarded > 0, "{s:#?}");
    let mut m = mq(b.local_addr(), &offline, false);
    assert!(m.session_present);
    assert!(drain(&mut m).is_empty(), "nothing was queued offline");
}

/// MQTT 3.1 (`MQIsdp`, level 3) clients use shared subscriptions too.
#[test]
fn an_mqtt_3_1_client_can_be_a_member() {
    let b = broker();
    let topic = unique("sh/v31");
    let mut opts = ConnectOpts::new(&id_on_shard("sh-v31", 1), true);
    opts.protocol_name = b"MQIsdp".to_vec();
    opts.level = 3;
    let (mut c, _) = Raw::connect_with(b.local_addr(), &opts);
    assert_eq!(
        c.subscribe(1, &[(&format!("$share/g/{topic}"), 1), ("$share//x", 1)]),
        vec![1, 0x80]
    );
    let mut p = mq(b.local_addr(), &id_on_shard("sh-v31-pub", 0), true);
    p.publish_acked(&topic, 1, false, b"hello");
    let got = c.expect_publish();
    assert_eq!((got.payload_str().as_str(), got.qos), ("hello", 1));
    c.ack(&got);
}

/// The only member leaving keeps what it was given (nobody else could take it).
#[test]
fn a_lone_persistent_member_keeps_its_messages_while_offline() {
    let b = broker();
    let topic = unique("sh/lone");
    let filter = format!("$share/g/{topic}");
    let id = id_on_shard("sh-lone", 1);
    let mut m = mq(b.local_addr(), &id, false);
    assert_eq!(m.subscribe(&filter, 1), Some(1));
    m.disconnect();
    let mut p = mq(b.local_addr(), &id_on_shard("sh-lone-pub", 0), true);
    for i in 0..5 {
        p.publish_acked(&topic, 1, false, format!("{i}").as_bytes());
    }
    let mut m = mq(b.local_addr(), &id, false);
    assert!(m.session_present);
    assert_eq!(drain(&mut m), vec!["0", "1", "2", "3", "4"]);
}

// ---------------------------------------------------------------------------------
// Persistence: a broker on a data directory, restarted gracefully (in process) or
// killed with SIGKILL (the real binary), as in tests/durability.rs.
// ---------------------------------------------------------------------------------

use common::persist::{DataDir, Mode, Node};

/// A persistent member offline with shared messages queued for it (its group's
/// other member connected only after the restart): after the restart it gets them,
/// each once, and the other member none of them.
fn queued_shared_messages_survive(mode: Mode) {
    let dir = DataDir::new("queued");
    let node = Node::start(mode, dir.path(), SHARDS);
    let topic = unique("shp/q");
    let filter = format!("$share/g/{topic}/#");
    let id = id_on_shard("shp-member", 1);
    let mut m = mq(node.addr(), &id, false);
    assert_eq!(m.subscribe(&filter, 2), Some(2));
    m.disconnect();
    let mut p = mq(node.addr(), &id_on_shard("shp-pub", 0), true);
    for i in 0..20 {
        let q = 1 + (i % 2) as u8;
        p.publish_acked(&format!("{topic}/{i}"), q, false, format!("{i}").as_bytes());
    }
    p.disconnect();

    let node = node.restart();
    // Another member of the group, on the other shard, connected first.
    let mut other = mq(node.addr(), &id_on_shard("shp-other", 0), true);
    assert_eq!(other.subscribe(&filter, 2), Some(2));
    let mut m = mq(node.addr(), &id, false);
    assert!(m.session_present, "{mode:?}: session present");
    let mut got = drain(&mut m);
    got.sort_by_key(|s| s.parse::<u32>().unwrap());
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(
        got, want,
        "{mode:?}: each queued message once to its member"
    );
    assert!(
        drain(&mut other).is_empty(),
        "{mode:?}: none went to the other member"
    );
    // The group still works: new messages reach a member, once.
    let mut p = mq(node.addr(), &id_on_shard("shp-pub2", 1), true);
    for i in 0..10 {
        p.publish_acked(&format!("{topic}/n"), 1, false, format!("n{i}").as_bytes());
    }
    let mut after = drain(&mut m);
    after.extend(drain(&mut other));
    after.sort();
    assert_eq!(after.len(), 10, "{mode:?}: {after:?}");
    after.dedup();
    assert_eq!(after.len(), 10, "{mode:?}: no duplicates");
}

#[test]
fn graceful_restart_keeps_shared_messages_queued_for_a_persistent_member() {
    queued_shared_messages_survive(Mode::Graceful);
}

#[test]
fn killed_broker_keeps_shared_messages_queued_for_a_persistent_member() {
    queued_shared_messages_survive(Mode::Killed);
}

/// Two persistent members, both offline, both given messages: after a restart
/// each gets back its own, and no message reaches both.
fn two_persistent_members_keep_their_own(mode: Mode) {
    let dir = DataDir::new("two");
    let node = Node::start(mode, dir.path(), SHARDS);
    let topic = unique("shp/two");
    let filter = format!("$share/g/{topic}");
    let ids = [id_on_shard("shp-a", 0), id_on_shard("shp-b", 1)];
    // Both connected while the messages come, neither acknowledging: raw clients.
    let mut raws: Vec<Raw> = ids
        .iter()
        .map(|id| {
            let (mut r, _) = Raw::connect(node.addr(), id, false);
            assert_eq!(r.subscribe(1, &[(&filter, 1)]), vec![1]);
            r
        })
        .collect();
    let mut p = mq(node.addr(), &id_on_shard("shp-two-pub", 0), true);
    for i in 0..200 {
        p.publish_acked(&topic, 1, false, format!("{i}").as_bytes());
    }
    p.disconnect();
    // Each saw its window's worth; the rest is queued in one or the other. Their
    // sockets stay open through the stop: nothing is given back.
    let mut seen: Vec<HashSet<String>> = Vec::new();
    for r in raws.iter_mut() {
        let mut s = HashSet::new();
        while let Some(pk) = r.recv_within(Duration::from_millis(300)) {
            if pk.kind() == PUBLISH {
                s.insert(pk.publish().payload_str());
            }
        }
        seen.push(s);
    }
    let node = node.restart();
    drop(raws);
    let mut all: HashMap<String, usize> = HashMap::new();
    for (n, id) in ids.iter().enumerate() {
        let mut m = mq(node.addr(), id, false);
        assert!(m.session_present);
        for p in drain(&mut m) {
            *all.entry(p).or_default() += 1;
        }
        m.disconnect();
        for s in &seen[n] {
            all.entry(s.clone()).or_default();
        }
    }
    assert_eq!(all.len(), 200, "{mode:?}: every message with one member");
    let twice: Vec<_> = all.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "{mode:?}: given to both: {twice:?}");
}

#[test]
fn graceful_restart_keeps_each_persistent_members_own_shared_messages() {
    two_persistent_members_keep_their_own(Mode::Graceful);
}

#[test]
fn killed_broker_keeps_each_persistent_members_own_shared_messages() {
    two_persistent_members_keep_their_own(Mode::Killed);
}

/// What a persistent member got back after a restart still belongs to its group:
/// when the member then drops without acknowledging, another member gets it.
fn restored_shared_messages_go_to_another_member_when_theirs_drops(mode: Mode) {
    let dir = DataDir::new("regive");
    let node = Node::start(mode, dir.path(), SHARDS);
    let topic = unique("shp/regive");
    let filter = format!("$share/g/{topic}");
    let id = id_on_shard("shp-regive", 1);
    let mut m = mq(node.addr(), &id, false);
    assert_eq!(m.subscribe(&filter, 1), Some(1));
    m.disconnect();
    let mut p = mq(node.addr(), &id_on_shard("shp-regive-pub", 0), true);
    for i in 0..20 {
        p.publish_acked(&topic, 1, false, format!("{i}").as_bytes());
    }
    p.disconnect();

    let node = node.restart();
    let mut other = mq(node.addr(), &id_on_shard("shp-regive-other", 0), true);
    assert_eq!(other.subscribe(&filter, 1), Some(1));
    // The member comes back, takes its messages in flight, and drops.
    let (mut raw, present) = Raw::connect(node.addr(), &id, false);
    assert!(present, "{mode:?}: session present");
    let mut seen = 0;
    while let Some(pk) = raw.recv_within(Duration::from_millis(500)) {
        if pk.kind() == PUBLISH {
            seen += 1;
        }
    }
    assert_eq!(seen, 20, "{mode:?}: its messages came back to it");
    raw.drop_connection();
    let mut got = drain(&mut other);
    got.sort_by_key(|s| s.parse::<u32>().unwrap());
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "{mode:?}: given to the other member");
    let mut m = mq(node.addr(), &id, false);
    assert!(
        drain(&mut m).is_empty(),
        "{mode:?}: and forgotten by the first"
    );
}

#[test]
fn graceful_restart_keeps_restored_shared_messages_in_their_group() {
    restored_shared_messages_go_to_another_member_when_theirs_drops(Mode::Graceful);
}

#[test]
fn killed_broker_keeps_restored_shared_messages_in_their_group() {
    restored_shared_messages_go_to_another_member_when_theirs_drops(Mode::Killed);
}

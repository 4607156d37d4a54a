//! Robustness against clients that misbehave at scale, at CI scale: a subscriber that
//! stops reading while publishers send flat out, offline persistent sessions whose
//! topics keep receiving traffic, connect/subscribe/disconnect churn, and takeover
//! storms across shards.
//!
//! Every assertion is on the broker's own gauges and counters: bounds that hold at
//! every sample, drops counted by reason, every message either delivered or counted,
//! and nothing left behind afterwards. None is on time: a broker that lets one client
//! block the others fails by a deadline passing without progress. `tests/soak.rs`
//! (run by `scripts/soak.sh`) holds the full-scale versions.

mod common;
use common::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// A subscriber that stops reading
// ---------------------------------------------------------------------------------

/// Limits of the stall tests: small, so ten thousand messages overflow them many times.
const MAX_QUEUED: usize = 50;
const MAX_QUEUED_BYTES: usize = 64 * 1024;
const HIGH_WATER: usize = 64 * 1024;
const MAX_INFLIGHT: u16 = 64;
/// Messages the healthy readers may have outstanding. 16 × 2 KB stays below the
/// high-water mark and 16 well below `MAX_INFLIGHT`, so they never need a queue: every
/// queued or dropped message belongs to the stalled subscriber.
const WINDOW: u64 = 16;
/// Messages published while the subscriber is stalled (split over two publishers).
const STALL_MESSAGES: u64 = 10_000;

fn stall_limits(c: &mut Config) {
    c.max_queued_messages = MAX_QUEUED;
    c.max_queued_bytes = MAX_QUEUED_BYTES;
    c.write_buffer_high_water = HIGH_WATER;
    c.max_inflight = MAX_INFLIGHT;
}

/// Starts two publishers homed on shard 0, each sending `per_publisher` messages;
/// payload indexes start at `first_index`.
fn start_publishers(
    addr: std::net::SocketAddr,
    topic: &str,
    qos: u8,
    payload_len: usize,
    per_publisher: u64,
    first_index: u32,
    window: &Arc<Window>,
) -> Vec<JoinHandle<PublisherReport>> {
    (0..2)
        .map(|i| {
            spawn_publisher(PublisherSpec {
                addr,
                id: id_on_shard("stall-pub", 0),
                topics: vec![topic.to_string()],
                qos,
                index: first_index + i,
                payload_len,
                count: per_publisher,
                stop: None,
                window: Some(window.clone()),
            })
        })
        .collect()
}

/// Samples the broker's gauges until the publishers finish: the queue (only the
/// stalled subscriber has one) never exceeds either bound. Returns the largest
/// (queued, queued_bytes) seen and the number of samples.
fn sample_until_done(
    b: &Broker,
    publishers: Vec<JoinHandle<PublisherReport>>,
    qos: u8,
    per_publisher: u64,
) -> (usize, usize, usize) {
    let (mut max_q, mut max_b, mut samples) = (0, 0, 0);
    while publishers.iter().any(|h| !h.is_finished()) {
        let s = b.stats().total();
        assert!(
            s.queued <= MAX_QUEUED && s.queued_bytes <= MAX_QUEUED_BYTES,
            "queue bound exceeded while the subscriber is stalled: queued {} (max {MAX_QUEUED}), \
             queued_bytes {} (max {MAX_QUEUED_BYTES})",
            s.queued,
            s.queued_bytes
        );
        max_q = max_q.max(s.queued);
        max_b = max_b.max(s.queued_bytes);
        samples += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    for h in publishers {
        let r = h.join().expect("publisher thread");
        assert_eq!(r.sent, per_publisher, "every message was sent");
        if qos > 0 {
            assert_eq!(
                r.acked, per_publisher,
                "every QoS 1 publish was acknowledged although a subscriber stalled"
            );
        }
    }
    (max_q, max_b, samples)
}

/// Messages of one publisher must arrive in the order sent, none twice.
fn assert_in_order(who: &str, got: &[Publish]) {
    let mut last: HashMap<u32, u32> = HashMap::new();
    for p in got {
        let (publisher, seq) = parse_load_payload(&p.payload);
        if let Some(&prev) = last.get(&publisher) {
            assert!(
                seq > prev,
                "{who}: publisher {publisher}'s #{seq} came after #{prev}"
            );
        }
        last.insert(publisher, seq);
    }
}

/// Reads (and acknowledges) until the broker holds nothing more for anyone: no
/// queued and no in-flight message left, then a PINGREQ round trip so that whatever
/// was written before it has been read. Used when only `raw`'s session may still
/// hold messages.
fn drain_until_broker_empty(b: &Broker, raw: &mut Raw) -> Vec<Publish> {
    let mut got = Vec::new();
    let deadline = Instant::now() + TIMEOUT * 2;
    loop {
        got.extend(drain_publishes(raw, Duration::from_millis(50)));
        let s = b.stats().total();
        if s.queued == 0 && s.inflight == 0 && s.queued_bytes == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed subscriber read and acknowledged everything, yet the broker still \
             holds queued {} ({} bytes), in flight {}",
            s.queued,
            s.queued_bytes,
            s.inflight
        );
    }
    raw.ping();
    got.extend(drain_publishes(raw, Duration::ZERO));
    got
}

/// One stall scenario. A subscriber homed on shard 1 subscribes and stops reading;
/// healthy readers on both shards read everything; two publishers on shard 0 send
/// `STALL_MESSAGES` as fast as the readers take them. Then:
/// - clean, QoS 0: the stalled client vanishes (socket closed without reading);
/// - clean, QoS 1: it resumes reading, and gets what the broker held for it;
/// - persistent: it vanishes, its topic gets more traffic while it is offline, then
///   it resumes its session and gets exactly what was held.
fn stall_scenario(qos: u8, persistent: bool) {
    let b = broker_with(stall_limits);
    let addr = b.local_addr();
    let topic = format!("{}/t", unique("stall"));
    // QoS 0 with 2 KB payloads reaches the byte bound first; QoS 1 with 1 KB the
    // message bound.
    let payload_len = if qos == 0 { 2000 } else { 1000 };
    let cost = queue_cost(&topic, payload_len);
    let bound = MAX_QUEUED.min(MAX_QUEUED_BYTES / cost);
    let n = STALL_MESSAGES;

    let stalled_id = id_on_shard("stalled", 1);
    let (mut stalled, _) = stalled_subscriber(addr, &stalled_id, !persistent, &topic, qos);
    let readers: Vec<Reader> = (0..SHARDS)
        .map(|shard| {
            let (mut r, _) = Raw::connect(addr, &id_on_shard("healthy", shard), true);
            assert_eq!(r.subscribe(1, &[(&topic, qos)]), vec![qos]);
            spawn_reader(&format!("healthy reader on shard {shard}"), r)
        })
        .collect();
    let window = Window::new(WINDOW);
    for r in &readers {
        window.watch(r);
    }

    let pubs = start_publishers(addr, &topic, qos, payload_len, n / 2, 0, &window);
    let (max_q, max_b, samples) = sample_until_done(&b, pubs, qos, n / 2);
    for r in &readers {
        r.wait_for(n);
        r.sync();
    }
    // Every routed message was sent, queued or dropped with a reason.
    let s = wait_stats(&b, "3 subscribers × n messages accounted for", |s| {
        s.delivered + s.queued_total + s.dropped_queue_full + s.dropped_offline_qos0 == 3 * n
    });
    println!(
        "stall qos {qos} persistent {persistent}: bound {bound} messages; {samples} samples, \
         max queued {max_q} ({max_b} bytes); at rest queued {} ({} bytes), in flight {}, \
         dropped_queue_full {}",
        s.queued, s.queued_bytes, s.inflight, s.dropped_queue_full
    );
    assert_eq!(
        (s.queued, s.queued_bytes),
        (bound, bound * cost),
        "the stalled subscriber's queue stops exactly at its bound"
    );
    assert!(
        s.dropped_queue_full > 0,
        "messages beyond the bound are counted as dropped_queue_full: {s:#?}"
    );
    assert_eq!((s.dropped_offline_qos0, s.dropped_evicted_qos0), (0, 0));
    if qos == 1 {
        assert!(
            s.inflight > 0 && s.inflight <= usize::from(MAX_INFLIGHT),
            "the stalled subscriber's window holds 1..={MAX_INFLIGHT}: {}",
            s.inflight
        );
    } else {
        assert_eq!(s.inflight, 0);
    }

    let mut healthy_total = n;
    match (persistent, qos) {
        (false, 0) => {
            // It goes away without reading anything: all it held is released.
            vanish(stalled);
            wait_stats(&b, "the vanished subscriber's queue is released", |s| {
                s.queued == 0 && s.queued_bytes == 0 && s.sessions == 2 && s.connections == 2
            });
        }
        (false, _) => {
            // It resumes reading: it gets what the broker still held for it, and every
            // message it misses was counted as a drop.
            let got = drain_until_broker_empty(&b, &mut stalled);
            assert_in_order("resumed subscriber", &got);
            assert_eq!(
                got.len() as u64 + s.dropped_queue_full,
                n,
                "every message was either delivered to the stalled subscriber or counted as \
                 dropped"
            );
            // And it is an ordinary subscriber again.
            let (mut p, _) = Raw::connect(addr, &id_on_shard("stall-live", 0), true);
            p.publish(&topic, &load_payload(9, 0, 100), 1, false);
            let live = stalled.expect_publish();
            assert_eq!(parse_load_payload(&live.payload), (9, 0));
            stalled.ack(&live);
            p.disconnect();
            healthy_total += 1;
            stalled.disconnect();
        }
        (true, _) => {
            let held = s.queued + s.inflight;
            vanish(stalled);
            wait_stats(&b, "the stalled connection is gone", |s| s.connections == 2);
            // Offline, the queue stays at its bound whatever arrives.
            let m = 4 * bound as u64;
            let pubs = start_publishers(addr, &topic, qos, payload_len, m / 2, 2, &window);
            sample_until_done(&b, pubs, qos, m / 2);
            healthy_total += m;
            for r in &readers {
                r.wait_for(healthy_total);
                r.sync();
            }
            let off = wait_stats(&b, "offline traffic accounted for", |t| {
                t.delivered + t.queued_total + t.dropped_queue_full + t.dropped_offline_qos0
                    == 3 * (n + m)
            });
            assert_eq!(
                (off.queued, off.queued_bytes, off.inflight),
                (s.queued, s.queued_bytes, s.inflight),
                "the offline session's queue and window stay as they were"
            );
            if qos == 0 {
                assert_eq!(
                    (off.dropped_offline_qos0, off.dropped_queue_full),
                    (m, s.dropped_queue_full),
                    "QoS 0 for an offline session is dropped as dropped_offline_qos0"
                );
            } else {
                assert_eq!(
                    off.dropped_queue_full,
                    s.dropped_queue_full + m,
                    "QoS 1 for a full offline queue is dropped as dropped_queue_full"
                );
            }
            // On resume it gets exactly what was held: the window again (DUP), then
            // the queue; at most max_inflight + max_queued_messages.
            let (mut back, sp) = Raw::connect(addr, &stalled_id, false);
            assert!(sp, "the persistent session was kept");
            let got = drain_until_broker_empty(&b, &mut back);
            assert_eq!(got.len(), held, "resumed session gets exactly what it held");
            assert!(held <= usize::from(MAX_INFLIGHT) + MAX_QUEUED);
            assert_in_order("resumed session", &got);
            let dups = got.iter().filter(|p| p.dup).count();
            assert_eq!(
                dups, s.inflight,
                "the in-flight messages are resent with DUP, the queued ones without"
            );
            assert!(
                got.iter().all(|p| parse_load_payload(&p.payload).0 < 2),
                "nothing published while it was offline with a full queue was kept"
            );
            back.disconnect();
            Raw::connect(addr, &stalled_id, true).0.disconnect();
        }
    }
    for r in readers {
        let name = r.name.clone();
        let (raw, report) = r.stop();
        assert_eq!(
            (
                report.received,
                report.gaps,
                report.backwards,
                report.closed
            ),
            (healthy_total, 0, 0, false),
            "{name} got every message once, in order: {report:?}"
        );
        raw.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn stalled_qos0_subscriber_is_bounded_and_released_when_it_vanishes() {
    stall_scenario(0, false);
}

#[test]
fn stalled_qos1_subscriber_is_bounded_and_gets_the_held_messages_on_resume() {
    stall_scenario(1, false);
}

#[test]
fn stalled_persistent_qos0_session_stays_bounded_offline_and_resumes_its_queue() {
    stall_scenario(0, true);
}

#[test]
fn stalled_persistent_qos1_session_stays_bounded_offline_and_resumes_its_queue() {
    stall_scenario(1, true);
}

/// A full queue makes room for a QoS 1 message by evicting its oldest QoS 0 one. That
/// message is lost as surely as a refused one, so it must be counted as a drop: the
/// messages a subscriber never gets equal the drops counted (`dropped_evicted_qos0`).
#[test]
fn qos0_messages_evicted_from_a_full_queue_are_counted_as_drops() {
    let b = broker_with(|c| {
        c.max_inflight = 1;
        c.max_queued_messages = 5;
    });
    let addr = b.local_addr();
    let topic = unique("evict/t");
    let (mut sub, _) = Raw::connect(addr, &id_on_shard("evict-sub", 1), true);
    assert_eq!(sub.subscribe(1, &[(&topic, 1)]), vec![1]);
    let (mut publ, _) = Raw::connect(addr, &id_on_shard("evict-pub", 0), true);
    // #0 (QoS 1) fills the window and stays unacknowledged; #1 (QoS 1) waits in the
    // queue, and the QoS 0 ones queue behind it (FIFO); then QoS 1 ones arrive at a
    // full queue, each evicting the oldest QoS 0 message.
    let plan: Vec<u8> = vec![1, 1, 0, 0, 0, 0, 1, 1, 1];
    for (i, &q) in plan.iter().enumerate() {
        publ.publish(&topic, &load_payload(0, i as u32, 16), q, false);
    }
    let first = sub.expect_publish();
    assert_eq!(parse_load_payload(&first.payload), (0, 0));
    wait_stats(&b, "every publish routed", |s| {
        s.delivered + s.queued_total + s.dropped_queue_full + s.dropped_offline_qos0
            == plan.len() as u64
    });
    sub.ack(&first);
    let mut got = vec![first];
    got.extend(drain_until_broker_empty(&b, &mut sub));
    assert_in_order("subscriber", &got);
    let s = b.stats().total();
    let missing = plan.len() as u64 - got.len() as u64;
    println!(
        "eviction: published {}, received {}, dropped_queue_full {}, dropped_offline_qos0 {}, \
         dropped_evicted_qos0 {}",
        plan.len(),
        got.len(),
        s.dropped_queue_full,
        s.dropped_offline_qos0,
        s.dropped_evicted_qos0
    );
    assert_eq!(
        (missing, s.dropped_evicted_qos0, s.dropped_queue_full),
        (3, 3, 0),
        "three QoS 1 messages arrive at the full queue, each evicting a QoS 0 one"
    );
    assert_eq!(
        s.dropped_queue_full + s.dropped_offline_qos0 + s.dropped_evicted_qos0,
        missing,
        "every message the subscriber never got is counted as a drop ({missing} missing)"
    );
    publ.disconnect();
    sub.disconnect();
    assert_no_leaks(&b);
}

// ---------------------------------------------------------------------------------
// Offline persistent sessions
// ---------------------------------------------------------------------------------

/// 300 persistent sessions on both shards go offline; their topics receive more than
/// each queue may hold. Half of them hit the message bound (small payloads), half the
/// byte bound (large ones). Each queue stops exactly at its bound, the totals are
/// exact, every excess message is counted, and each session gets exactly its queue
/// back, oldest first.
#[test]
fn offline_persistent_sessions_each_stop_at_their_bound_and_resume_exactly_it() {
    const SESSIONS: usize = 300;
    const MAX_Q: usize = 20;
    const MAX_B: usize = 4096;
    const SENT: u32 = 30;
    let b = broker_with(|c| {
        c.max_queued_messages = MAX_Q;
        c.max_queued_bytes = MAX_B;
    });
    let addr = b.local_addr();
    let tag = unique("off");
    // Group 0: 100-byte payloads, the message bound applies. Group 1: 900 bytes, the
    // byte bound does (4 of them fit in 4096).
    let groups = [
        (format!("{tag}/small"), 100usize),
        (format!("{tag}/large"), 900usize),
    ];
    let bound = |g: usize| MAX_Q.min(MAX_B / queue_cost(&groups[g].0, groups[g].1));
    assert_eq!((bound(0), bound(1)), (20, 4));
    let ids: Vec<(String, usize)> = (0..SESSIONS)
        .map(|i| (id_on_shard(&tag, i % SHARDS), (i / SHARDS) % 2))
        .collect();

    let for_all = |f: &(dyn Fn(&str, usize) + Sync)| {
        std::thread::scope(|scope| {
            for chunk in ids.chunks(SESSIONS / 4) {
                scope.spawn(move || {
                    for (id, g) in chunk {
                        f(id, *g);
                    }
                });
            }
        });
    };
    for_all(&|id, g| {
        let (mut c, _) = Raw::connect(addr, id, false);
        assert_eq!(c.subscribe(1, &[(&groups[g].0, 1)]), vec![1]);
        c.disconnect();
    });
    wait_stats(&b, "all sessions offline", |s| {
        s.connections == 0 && s.sessions == SESSIONS && s.subscriptions == SESSIONS
    });

    let (mut publ, _) = Raw::connect(addr, &id_on_shard("off-pub", 0), true);
    for seq in 0..SENT {
        for (topic, len) in &groups {
            publ.publish(topic, &load_payload(0, seq, *len), 1, false);
        }
    }
    publ.disconnect();
    let per_group = SESSIONS / 2;
    let want_q = per_group * (bound(0) + bound(1));
    let want_bytes = per_group
        * (bound(0) * queue_cost(&groups[0].0, groups[0].1)
            + bound(1) * queue_cost(&groups[1].0, groups[1].1));
    let want_dropped =
        (per_group * (SENT as usize - bound(0)) + per_group * (SENT as usize - bound(1))) as u64;
    let s = wait_stats(&b, "every offline delivery queued or dropped", |s| {
        s.queued_total + s.dropped_queue_full == (SESSIONS * SENT as usize) as u64
    });
    println!(
        "offline: {SESSIONS} sessions hold {} messages, {} bytes; dropped_queue_full {}",
        s.queued, s.queued_bytes, s.dropped_queue_full
    );
    assert_eq!(
        (s.queued, s.queued_bytes, s.dropped_queue_full),
        (want_q, want_bytes, want_dropped),
        "each offline queue stops exactly at its bound and the rest is counted as dropped"
    );
    for shard in b.stats().shards {
        assert!(
            shard.queued > 0,
            "both shards hold offline queues: {shard:#?}"
        );
    }
    assert_eq!(s.dropped_offline_qos0, 0);

    // On resume each session gets exactly its queue (the window of 64 takes it all at
    // once, so it is written before the PINGRESP), oldest first.
    for_all(&|id, g| {
        let (mut c, sp) = Raw::connect(addr, id, false);
        assert!(sp, "{id}: session present");
        c.send(&PINGREQ_BYTES);
        let mut got = Vec::new();
        loop {
            let p = c.recv();
            if p.kind() == PINGRESP {
                break;
            }
            let p = p.publish();
            c.ack(&p);
            got.push(parse_load_payload(&p.payload).1);
        }
        let want: Vec<u32> = (0..bound(g) as u32).collect();
        assert_eq!(
            got,
            want,
            "{id}: the oldest {} messages, in order",
            bound(g)
        );
        c.disconnect();
    });
    wait_stats(&b, "every resumed queue delivered and acknowledged", |s| {
        s.queued == 0 && s.queued_bytes == 0 && s.inflight == 0 && s.sessions == SESSIONS
    });
    for_all(&|id, _| Raw::connect(addr, id, true).0.disconnect());
    assert_no_leaks(&b);
}

// ---------------------------------------------------------------------------------
// Churn
// ---------------------------------------------------------------------------------

/// Thousands of connect/subscribe/(publish)/disconnect cycles from several threads,
/// on both shards, clean and persistent, with DISCONNECT and with dropped sockets:
/// afterwards every gauge is back where it started.
#[test]
fn connect_subscribe_disconnect_churn_leaks_nothing() {
    const THREADS: usize = 4;
    const CYCLES: usize = 500;
    let b = broker();
    let addr = b.local_addr();
    let before = b.stats().total();
    let tag = unique("churn");
    let connects: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let tag = &tag;
                scope.spawn(move || {
                    (0..CYCLES)
                        .map(|i| churn_cycle(addr, tag, t, i))
                        .sum::<u64>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_no_leaks(&b);
    let after = b.stats().total();
    assert_eq!(
        gauges(&after),
        gauges(&before),
        "gauges back to their start"
    );
    assert_eq!(
        after.connects - before.connects,
        connects,
        "every CONNECT counted"
    );
    println!(
        "churn: {} cycles, {connects} connects, {} takeovers, {} wills, dropped {}+{}",
        THREADS * CYCLES,
        after.takeovers,
        after.wills_published,
        after.dropped_queue_full,
        after.dropped_offline_qos0
    );
    assert_broker_healthy(addr);
    assert_no_leaks(&b);
}

// ---------------------------------------------------------------------------------
// Takeover storm
// ---------------------------------------------------------------------------------

/// Several threads race connections for a handful of client ids homed on both
/// shards: clean and persistent mixed, some with subscriptions, wills and publishes,
/// ended by DISCONNECT, by a dropped socket, or by the next takeover. Afterwards at
/// most one session per id remains, once each id has connected with a clean session
/// nothing at all remains, and every will published was counted.
#[test]
fn takeover_storm_leaves_one_session_per_id_and_nothing_after_clean_connects() {
    const THREADS: u64 = 4;
    const ATTEMPTS: usize = 150;
    let b = broker();
    let addr = b.local_addr();
    let tag = unique("storm");
    let ids: Vec<String> = (0..6).map(|i| id_on_shard(&tag, i % SHARDS)).collect();
    let will_topic = format!("{tag}/will");
    let (mut watcher, _) = Raw::connect(addr, &id_on_shard("storm-watch", 0), true);
    assert_eq!(watcher.subscribe(1, &[(&will_topic, 0)]), vec![0]);
    let watcher = spawn_reader("will watcher", watcher);

    let (accepted, closed_early) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (ids, tag, will_topic) = (&ids, &tag, &will_topic);
                scope.spawn(move || storm_thread(addr, t, ATTEMPTS, ids, tag, will_topic))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |a, x| (a.0 + x.0, a.1 + x.1))
    });
    let s = wait_stats(&b, "only the watcher still connected", |s| {
        s.connections == 1
    });
    println!(
        "storm: {accepted} connections accepted, {closed_early} taken over before CONNACK was \
         read; {} takeovers, {} handoffs, {} sessions left, {} wills published",
        s.takeovers,
        s.handoffs_in,
        s.sessions - 1,
        s.wills_published
    );
    assert!(s.takeovers > 0, "the storm raced for the same ids: {s:#?}");
    assert!(
        s.sessions - 1 <= ids.len(),
        "at most one session per client id after the storm: {} sessions for {} ids",
        s.sessions - 1,
        ids.len()
    );
    for id in &ids {
        Raw::connect(addr, id, true).0.disconnect();
    }
    let s = wait_stats(&b, "only the watcher's session left", |s| {
        s.connections == 1
            && s.sessions == 1
            && s.subscriptions == 1
            && s.interest_entries == 1
            && s.inflight == 0
            && s.queued == 0
            && s.queued_bytes == 0
            && s.pending_interest == 0
    });
    assert_broker_healthy(addr);
    let (raw, report) = watcher.stop();
    raw.disconnect();
    assert_no_leaks(&b);
    // The watcher reads everything, so it saw each published will exactly once.
    let wills = report.received;
    assert_eq!(
        s.wills_published, wills,
        "wills_published counts every will published (the watcher received {wills})"
    );
}

/// The will of a connection closed by a takeover is published [MQTT-3.1.2-8] and,
/// like every other will, counted in `wills_published`.
#[test]
fn will_of_taken_over_connection_is_counted_as_published() {
    let b = broker();
    for shard in 0..SHARDS {
        let will_topic = unique("tw-count/will");
        let mut watcher =
            Raw::connect(b.local_addr(), &id_on_shard("twc-watch", 1 - shard), true).0;
        assert_eq!(watcher.subscribe(1, &[(&will_topic, 1)]), vec![1]);
        let before = b.stats().total().wills_published;
        let id = id_on_shard("twc", shard);
        let opts = ConnectOpts::new(&id, true).will(&will_topic, b"taken over", 1, false);
        let (mut first, _) = Raw::connect_with(b.local_addr(), &opts);
        let (second, _) = Raw::connect(b.local_addr(), &id, true);
        first.expect_closed();
        let p = watcher.expect_publish();
        assert_eq!(p.payload, b"taken over");
        watcher.ack(&p);
        let after = b.stats().total().wills_published;
        assert_eq!(
            after - before,
            1,
            "one will published on takeover (shard {shard}), one counted"
        );
        second.disconnect();
        watcher.disconnect();
    }
    assert_no_leaks(&b);
}

//! Session state machine throughput: what one subscriber costs the shard per message.
//!
//! Every case drives a [`Session`] the way the shard does: routed messages go in through
//! `deliver`, the client's acks through `handle`, and the one [`Output`] is drained after
//! every call and reused, so steady state allocates nothing in the harness. Limits are
//! the configuration defaults (window 64, queue 1000 messages / 1 MiB), payloads 32 B.
//! Throughput is in messages, so criterion's `elem/s` reads as messages per second.
//!
//! - `deliver_qos0`: one QoS 0 message to a connected session; `+encode` also writes the
//!   PUBLISH into a reused buffer as the connection's `write_packets` does.
//! - `qos1_cycle/D`, `qos2_cycle/D`: D messages delivered, then every flow completed by
//!   the client (PUBACK; or PUBREC, PUBREL out, PUBCOMP), D in flight at most; the window
//!   never fills.
//! - `offline_queue/enqueue`, `offline_queue/drain`: a persistent session offline takes
//!   QoS 1 messages up to its queue bound; on reconnect it sends the window, then one
//!   more per PUBACK until the queue is empty. Each case times only its own phase.
//!
//! Run: `cargo bench --bench session -- --warm-up-time 1 --measurement-time 2`

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardmq::config::Config;
use shardmq::message::Message;
use shardmq::protocol::{Packet, QoS};
use shardmq::session::{Delivery, Limits, Output, Session};
use std::hint::black_box;
use std::time::{Duration, Instant};

const TOPIC: &str = "sensors/building-7/floor-3/temperature";
const PAYLOAD_SIZE: usize = 32;
/// Flows in flight per cycle: one at a time, and a burst well inside the window.
const DEPTHS: [usize; 2] = [1, 32];

/// The limits a shard gives every session by default.
fn limits() -> Limits {
    let c = Config::default();
    Limits {
        max_inflight: c.max_inflight,
        max_queued_messages: c.max_queued_messages,
        max_queued_bytes: c.max_queued_bytes,
    }
}

/// A routed message; topic and payload are owned (not static) so cloning them costs the
/// reference counting it costs in the broker.
fn message(qos: QoS) -> Message {
    Message {
        topic: ByteString::from(TOPIC.to_owned()),
        payload: Bytes::from(vec![0x5Au8; PAYLOAD_SIZE]),
        qos,
        retain: false,
        stamp: Default::default(),
        props: None,
    }
}

fn persistent_session() -> Session {
    Session::new(ByteString::from_static("bench-client"), false, limits())
}

fn connected(now: Instant, out: &mut Output) -> Session {
    let mut s = persistent_session();
    s.connect(0, None, now, out);
    assert!(out.packets.is_empty());
    s
}

/// Moves the packet ids of the PUBLISHes in `out` into `pkids` and clears `out`.
fn take_pkids(out: &mut Output, pkids: &mut Vec<u16>) {
    pkids.clear();
    pkids.extend(out.packets.iter().filter_map(|p| match p {
        Packet::Publish(p) => Some(p.pkid),
        _ => None,
    }));
    out.packets.clear();
}

fn bench_deliver_qos0(c: &mut Criterion) {
    let mut group = c.benchmark_group("deliver_qos0");
    group.throughput(Throughput::Elements(1));
    let now = Instant::now();
    let msg = message(QoS::AtMostOnce);
    let mut out = Output::default();
    let mut s = connected(now, &mut out);
    assert_eq!(s.deliver(&msg, QoS::AtMostOnce, &mut out), Delivery::Sent);
    out.packets.clear();
    group.bench_function("session", |b| {
        b.iter(|| {
            let d = s.deliver(black_box(&msg), QoS::AtMostOnce, &mut out);
            out.packets.clear();
            black_box(d)
        })
    });
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    group.bench_function("session+encode", |b| {
        b.iter(|| {
            let d = s.deliver(black_box(&msg), QoS::AtMostOnce, &mut out);
            wbuf.clear();
            for p in &out.packets {
                p.encode(&mut wbuf);
            }
            out.packets.clear();
            black_box((d, wbuf.len()))
        })
    });
    group.finish();
}

/// Delivers `depth` messages at `qos`, then completes every flow as a client would.
/// Returns the number of PUBLISHes that went out (always `depth`).
fn cycle(
    s: &mut Session,
    msg: &Message,
    qos: QoS,
    depth: usize,
    now: Instant,
    out: &mut Output,
    pkids: &mut Vec<u16>,
) -> usize {
    for _ in 0..depth {
        black_box(s.deliver(black_box(msg), qos, out));
    }
    take_pkids(out, pkids);
    let sent = pkids.len();
    for &pkid in pkids.iter() {
        let ack = match qos {
            QoS::ExactlyOnce => Packet::PubRec(pkid),
            _ => Packet::PubAck(pkid),
        };
        let _ = s.handle(ack, now, out);
    }
    if qos == QoS::ExactlyOnce {
        // PUBRELs out, then PUBCOMPs in.
        out.packets.clear();
        for &pkid in pkids.iter() {
            let _ = s.handle(Packet::PubComp(pkid), now, out);
        }
    }
    out.packets.clear();
    sent
}

fn bench_cycles(c: &mut Criterion) {
    for (name, qos) in [
        ("qos1_cycle", QoS::AtLeastOnce),
        ("qos2_cycle", QoS::ExactlyOnce),
    ] {
        let mut group = c.benchmark_group(name);
        let now = Instant::now();
        let msg = message(qos);
        for depth in DEPTHS {
            let mut out = Output::default();
            let mut pkids = Vec::with_capacity(depth);
            let mut s = connected(now, &mut out);
            // The whole cycle goes through, and leaves nothing behind.
            assert_eq!(
                cycle(&mut s, &msg, qos, depth, now, &mut out, &mut pkids),
                depth
            );
            let st = s.stats();
            assert_eq!((st.inflight, st.queued), (0, 0));
            group.throughput(Throughput::Elements(depth as u64));
            group.bench_function(BenchmarkId::from_parameter(depth), |b| {
                b.iter(|| cycle(&mut s, &msg, qos, depth, now, &mut out, &mut pkids))
            });
        }
        group.finish();
    }
}

/// Fills the offline session's queue with `bound` messages; returns how many queued.
fn fill_offline(s: &mut Session, msg: &Message, bound: usize, out: &mut Output) -> usize {
    let mut queued = 0;
    for _ in 0..bound {
        queued += usize::from(s.deliver(black_box(msg), QoS::AtLeastOnce, out) == Delivery::Queued);
    }
    queued
}

/// Reconnects and acks every PUBLISH until the queue and window are empty; returns how
/// many PUBLISHes went out.
fn drain(s: &mut Session, now: Instant, out: &mut Output, pkids: &mut Vec<u16>) -> usize {
    s.connect(0, None, now, out);
    let mut sent = 0;
    loop {
        take_pkids(out, pkids);
        if pkids.is_empty() {
            return sent;
        }
        sent += pkids.len();
        for &pkid in pkids.iter() {
            let _ = s.handle(Packet::PubAck(pkid), now, out);
        }
    }
}

fn bench_offline_queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("offline_queue");
    let bound = limits().max_queued_messages;
    let now = Instant::now();
    let msg = message(QoS::AtLeastOnce);
    let mut out = Output::default();
    let mut pkids = Vec::with_capacity(bound);
    let mut s = persistent_session();
    // The byte bound is not what stops the fill: every message is queued, and all of
    // them come out on reconnect.
    assert_eq!(fill_offline(&mut s, &msg, bound, &mut out), bound);
    assert_eq!(
        s.deliver(&msg, QoS::AtLeastOnce, &mut out),
        Delivery::Dropped(shardmq::session::DropReason::QueueFull)
    );
    assert_eq!(drain(&mut s, now, &mut out, &mut pkids), bound);
    s.disconnect(true);
    assert_eq!(s.stats().queued + s.stats().inflight, 0);

    group.throughput(Throughput::Elements(bound as u64));
    group.bench_function(BenchmarkId::new("enqueue", bound), |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                black_box(fill_offline(&mut s, &msg, bound, &mut out));
                timed += t.elapsed();
                drain(&mut s, now, &mut out, &mut pkids);
                s.disconnect(true);
            }
            timed
        })
    });
    group.bench_function(BenchmarkId::new("drain", bound), |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                fill_offline(&mut s, &msg, bound, &mut out);
                let t = Instant::now();
                black_box(drain(&mut s, now, &mut out, &mut pkids));
                timed += t.elapsed();
                s.disconnect(true);
            }
            timed
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_deliver_qos0,
    bench_cycles,
    bench_offline_queue
);
criterion_main!(benches);

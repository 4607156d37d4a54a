//! The persistence log's CPU cost, sans-IO (the disk's own cost is in
//! `scripts/bench-durability.sh`).
//!
//! - `append_commit/N`: N published QoS 1 messages (64 B payload) encoded as `MSG`
//!   records and appended to a segment writer, then one commit (the block-aligned
//!   writes of a group commit), as a shard does per read batch.
//! - `replay/N`: a log of N published messages and one persistent session
//!   subscribed to them, through the replay that rebuilds the session's queue at
//!   start (per message: decode, match, place).
//!
//! Throughput is in messages, so `elem/s` reads as messages per second.
//!
//! Run: `cargo bench --bench store -- --warm-up-time 1 --measurement-time 2`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardmq::store::records::{encode, MsgBody, Record};
use shardmq::store::replay::Replay;
use shardmq::store::{Resume, SegmentWriter, WriterConfig};
use std::hint::black_box;

const TOPIC: &str = "sensors/building-7/floor-3/temperature";
const PAYLOAD: [u8; 64] = [0x5A; 64];

fn msg(i: u64) -> Record<'static> {
    Record::Msg(MsgBody {
        time_us: 1_764_000_000_000_000 + i,
        qos: 1,
        retain: false,
        publisher: None,
        topic: TOPIC,
        payload: &PAYLOAD,
        expires_us: None,
        forward: b"",
        sender: None,
    })
}

fn writer() -> SegmentWriter {
    SegmentWriter::new(
        WriterConfig {
            shard: 0,
            segment_size: 64 << 20,
        },
        Resume::Create {
            segment: 0,
            next_record: 0,
        },
    )
}

fn append_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_commit");
    for n in [1u64, 16, 256] {
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            let mut w = writer();
            let mut body = Vec::new();
            b.iter(|| {
                for i in 0..n {
                    body.clear();
                    let kind = encode(&msg(i), &mut body);
                    // A new segment every 64 MiB, as in the broker.
                    if w.append(kind, &body).is_err() {
                        w = writer();
                    }
                }
                black_box(w.commit())
            });
        });
    }
    g.finish();
}

fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    for n in [10_000u64, 100_000] {
        // One session subscribed before every message; shard 1 publishes.
        let mut records: Vec<(u16, u64, u8, Vec<u8>)> = Vec::new();
        let put = |shard: u16, rec: Record<'_>, records: &mut Vec<_>| {
            let mut body = Vec::new();
            let kind = encode(&rec, &mut body);
            let n = records
                .iter()
                .filter(|r: &&(u16, u64, u8, Vec<u8>)| r.0 == shard)
                .count();
            records.push((shard, n as u64, kind, body));
        };
        put(
            0,
            Record::Session {
                client: "dev",
                expiry: None,
            },
            &mut records,
        );
        put(
            0,
            Record::Sub {
                client: "dev",
                filter: "sensors/#",
                qos: 1,
                opts: Default::default(),
                horizons: vec![],
            },
            &mut records,
        );
        for i in 0..n {
            let mut body = Vec::new();
            let kind = encode(&msg(i), &mut body);
            records.push((1, i, kind, body));
        }
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::from_parameter(n), &records, |b, records| {
            b.iter(|| {
                let mut r = Replay::new();
                for (shard, record, kind, body) in records {
                    r.record(*shard, *record, *kind, body);
                }
                let restored = r.finish();
                assert_eq!(restored.sessions[0].queued.len() as u64, n);
                black_box(restored)
            });
        });
    }
    g.finish();
}

criterion_group!(benches, append_commit, replay);
criterion_main!(benches);

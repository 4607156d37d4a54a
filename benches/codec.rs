//! Codec throughput: decoding and encoding PUBLISH packets, the broker's hot path.
//!
//! Decoding runs over a buffer of back-to-back packets, as the read loop sees them;
//! encoding uses `encode_publish` into a reused write buffer, as fan-out does. Run with
//! `cargo bench --bench codec`.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardmq::protocol::{decode, encode_publish, QoS};
use std::hint::black_box;

const TOPIC: &str = "sensors/building-7/floor-3/temperature";
const PAYLOAD_SIZES: [usize; 3] = [16, 256, 4096];
const QOS_LEVELS: [QoS; 2] = [QoS::AtMostOnce, QoS::AtLeastOnce];
/// Packets per decode iteration, so buffer set-up is amortised as in a real read loop.
const BATCH: usize = 64;
const MAX_PACKET_SIZE: usize = 1 << 20;

fn label(qos: QoS, size: usize) -> String {
    format!("qos{}/{}B", qos as u8, size)
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_publish");
    for qos in QOS_LEVELS {
        for size in PAYLOAD_SIZES {
            let payload = vec![0x5Au8; size];
            let mut wire = BytesMut::new();
            for i in 0..BATCH {
                encode_publish(&mut wire, TOPIC, &payload, qos, false, false, i as u16 + 1);
            }
            group.throughput(Throughput::Bytes(wire.len() as u64));
            group.bench_function(label(qos, size), |b| {
                b.iter_batched(
                    || BytesMut::from(&wire[..]),
                    |mut buf| {
                        let mut packets = Vec::with_capacity(BATCH);
                        while let Ok(Some(p)) = decode(&mut buf, MAX_PACKET_SIZE) {
                            packets.push(p);
                        }
                        assert_eq!(packets.len(), BATCH);
                        // Dropped outside the timed section.
                        (buf, packets)
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_publish");
    for qos in QOS_LEVELS {
        for size in PAYLOAD_SIZES {
            let payload = vec![0x5Au8; size];
            let mut out = BytesMut::with_capacity(2 * size + 256);
            encode_publish(&mut out, TOPIC, &payload, qos, false, false, 1);
            group.throughput(Throughput::Bytes(out.len() as u64));
            group.bench_function(label(qos, size), |b| {
                b.iter(|| {
                    out.clear();
                    encode_publish(
                        &mut out,
                        black_box(TOPIC),
                        black_box(&payload),
                        qos,
                        false,
                        false,
                        black_box(7),
                    );
                    black_box(out.len())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);

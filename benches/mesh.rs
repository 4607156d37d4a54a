//! Cross-shard hand-off throughput: what forwarding one publish to another shard costs,
//! by batch size.
//!
//! - `outbox_local/N`: one thread pushes N publishes into an [`Outbox`], takes the batch
//!   and iterates it, consuming every message. The batching cost without a channel.
//! - `cross_shard/N`: the same path as the broker, between two glommio executors pinned
//!   to two CPUs and joined by a full channel mesh of `Batch` with the default
//!   capacity. On the sending executor a producer task pushes N publishes and parks on
//!   [`Backpressure`] (as a reader does) until the runtime's own flusher task
//!   has taken the outbox and sent it; the receiving executor's task
//!   consumes each batch as `handle_mesh_batch` does (by value, dropping every message
//!   on the receiving CPU). Parking per batch keeps every batch exactly N long; the
//!   channel still pipelines up to its capacity. Each sample times `iters` batches
//!   end to end, including a final empty batch the receiver echoes once it has
//!   consumed everything before it (the runtime never sends an empty batch).
//!
//! Throughput is in messages (payload 32 B), so `elem/s` reads as publishes per second.
//!
//! Run: `cargo bench --bench mesh -- --warm-up-time 1 --measurement-time 2`

use bytes::Bytes;
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::{spawn_local, ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use shardmq::bench_support::{allowed_cpus, flusher, Backpressure, Batch, MeshMsg, Outbox};
use shardmq::config::Config;
use shardmq::message::Message;
use shardmq::protocol::QoS;
use std::future::poll_fn;
use std::hint::black_box;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

const TOPIC: &str = "sensors/building-7/floor-3/temperature";
const PAYLOAD_SIZE: usize = 32;
const BATCH_SIZES: [usize; 3] = [1, 16, 256];
/// Memory glommio reserves per executor for storage I/O, as the broker sets it.
const IO_MEMORY: usize = 512 * 1024;

/// A publish as the router forwards it; topic and payload are reference-counted and
/// shared with the sender's copy, so the receiver's drop touches the same counts.
fn message() -> Message {
    Message {
        topic: ByteString::from(TOPIC.to_owned()),
        payload: Bytes::from(vec![0x5Au8; PAYLOAD_SIZE]),
        qos: QoS::AtLeastOnce,
        retain: false,
        stamp: Default::default(),
        props: None,
    }
}

/// What the receiving shard does with a batch, minus routing: takes every item by value.
fn consume(batch: Batch) -> usize {
    let mut bytes = 0;
    for item in batch {
        if let MeshMsg::Publish(m) = item {
            bytes += black_box(&m).payload.len();
        }
    }
    bytes
}

fn bench_outbox_local(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbox_local");
    let msg = message();
    let outbox = Outbox::default();
    for n in BATCH_SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                for _ in 0..n {
                    outbox.push(MeshMsg::Publish(msg.clone()));
                }
                let batch = outbox
                    .take_or_register(Waker::noop())
                    .expect("the outbox holds what was pushed");
                consume(batch)
            })
        });
    }
    group.finish();
}

/// One timed run: `batches` batches of `size` publishes.
struct Run {
    batches: u64,
    size: usize,
}

/// Two executors joined by a channel mesh, kept across samples so that starting them is
/// never timed. Dropping it stops both.
struct ShardPair {
    runs: crossbeam_channel::Sender<Option<Run>>,
    elapsed: crossbeam_channel::Receiver<Duration>,
    handles: Vec<ExecutorJoinHandle<()>>,
}

impl ShardPair {
    fn start() -> ShardPair {
        let mesh = MeshBuilder::<Batch, Full>::full(2, Config::default().mesh_channel_capacity);
        let cpus = allowed_cpus().unwrap_or_default();
        let placement = |i: usize| match cpus.len() {
            0 => Placement::Unbound,
            n => Placement::Fixed(cpus[i % n]),
        };
        if cpus.len() < 2 {
            eprintln!("mesh: fewer than 2 CPUs allowed; both executors share one");
        }
        let (runs, runs_rx) = crossbeam_channel::unbounded();
        let (elapsed_tx, elapsed) = crossbeam_channel::unbounded();
        let receiving = mesh.clone();
        let handles = vec![
            LocalExecutorBuilder::new(placement(0))
                .name("bench-shard-0")
                .io_memory(IO_MEMORY)
                .spawn(move || sending_shard(mesh, runs_rx, elapsed_tx))
                .expect("start the sending executor"),
            LocalExecutorBuilder::new(placement(1))
                .name("bench-shard-1")
                .io_memory(IO_MEMORY)
                .spawn(move || receiving_shard(receiving))
                .expect("start the receiving executor"),
        ];
        ShardPair {
            runs,
            elapsed,
            handles,
        }
    }

    fn time(&self, batches: u64, size: usize) -> Duration {
        self.runs
            .send(Some(Run { batches, size }))
            .expect("sending executor alive");
        self.elapsed.recv().expect("sending executor alive")
    }
}

impl Drop for ShardPair {
    fn drop(&mut self) {
        let _ = self.runs.send(None);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

async fn sending_shard(
    mesh: MeshBuilder<Batch, Full>,
    runs: crossbeam_channel::Receiver<Option<Run>>,
    elapsed: crossbeam_channel::Sender<Duration>,
) {
    let (senders, mut receivers) = mesh.join().await.expect("join the mesh");
    let peer = 1 - senders.peer_id();
    let (_, echoes) = receivers.streams().pop().expect("a stream from the peer");
    let senders = Rc::new(senders);
    // One outbox per shard, as the runtime has; only the peer's is used.
    let outboxes: Rc<[Outbox]> = (0..2).map(|_| Outbox::default()).collect();
    let outbox = &outboxes[peer];
    let backpressure = Rc::new(Backpressure::default());
    spawn_local(flusher(
        senders.clone(),
        outboxes.clone(),
        peer,
        backpressure.clone(),
    ))
    .detach();
    let msg = message();
    // Blocking the executor between runs is fine: nothing is in flight then.
    while let Ok(Some(run)) = runs.recv() {
        let start = Instant::now();
        for _ in 0..run.batches {
            for _ in 0..run.size {
                outbox.push(MeshMsg::Publish(msg.clone()));
            }
            poll_fn(|cx| {
                if outbox.pending_publishes() == 0 {
                    Poll::Ready(())
                } else {
                    backpressure.park(cx.waker());
                    Poll::Pending
                }
            })
            .await;
        }
        // The flusher's last send has completed (it released us), so this goes last.
        if senders.send_to(peer, Vec::new()).await.is_err() || echoes.recv().await.is_none() {
            return;
        }
        if elapsed.send(start.elapsed()).is_err() {
            break;
        }
    }
    senders.close();
}

async fn receiving_shard(mesh: MeshBuilder<Batch, Full>) {
    let (senders, mut receivers) = mesh.join().await.expect("join the mesh");
    let peer = 1 - senders.peer_id();
    let (_, rx) = receivers.streams().pop().expect("a stream from the peer");
    let mut bytes = 0;
    while let Some(batch) = rx.recv().await {
        if batch.is_empty() {
            if senders.send_to(peer, batch).await.is_err() {
                break;
            }
        } else {
            bytes += consume(batch);
        }
    }
    black_box(bytes);
}

fn bench_cross_shard(c: &mut Criterion) {
    let pair = ShardPair::start();
    let mut group = c.benchmark_group("cross_shard");
    for n in BATCH_SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| pair.time(iters, n))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_outbox_local, bench_cross_shard);
criterion_main!(benches);

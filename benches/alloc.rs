//! Allocations on the hot path: how many times the broker calls the allocator per
//! delivered message, and how many bytes it asks for.
//!
//! A counting global allocator wraps the system one (see `alloc/measure.rs`). Two
//! parts, each measured in steady state after a warm-up:
//!
//! - Unit: the hot-path pieces through the public API, counted on the calling thread
//!   alone (exact): `Session::deliver` at QoS 0, at QoS 1 with its PUBACK, the PUBLISH
//!   encoder, the decoder over buffers of 64 PUBLISH packets, the topic trie's match.
//! - End to end: a real broker (2 shards, 127.0.0.1:0) and raw blocking clients in
//!   this thread, in lock-step rounds: the publisher sends 64 pre-encoded PUBLISH
//!   packets at once, every subscriber reads (and at QoS 1 acknowledges) all 64 into
//!   a fixed buffer, then the next round. Counted on every thread; the client's own
//!   thread is counted apart and must allocate nothing, so every allocation counted
//!   is the broker's. Nothing waits in a session queue (checked against the broker's
//!   counters): the rounds never fill the in-flight window or the write buffer.
//!
//! Run: `cargo bench --bench alloc`. With `SHARDMQ_ALLOC_TRACE=1`, every row that
//! allocates also lists its call sites (the allocations' stacks, grouped).

#[path = "alloc/measure.rs"]
mod measure;

use measure::{Counts, Scenario, Traces};

#[global_allocator]
static COUNTING: measure::Counting = measure::Counting;

fn per(n: u64, of: u64) -> f64 {
    n as f64 / of.max(1) as f64
}

fn row(name: &str, n: u64, c: Counts, extra: &str) {
    println!(
        "| {name:<40} | {n:>9} | {:>7.3} | {:>8.3} | {:>7.1} |{extra}",
        per(c.allocs, n),
        per(c.reallocs, n),
        per(c.bytes, n),
    );
}

fn traces(t: Option<Traces>, counted: Counts, per: u64) {
    if let Some(t) = t {
        t.report(counted.calls(), per, 12);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (`cargo test --benches`) gets a
    // quick pass that only checks the code runs.
    let full = std::env::args().any(|a| a == "--bench");
    let trace = measure::trace_requested();
    let scale: usize = if full { 1 } else { 20 };
    let started = std::time::Instant::now();

    println!("Allocations per call, steady state, counted on the calling thread");
    println!();
    println!(
        "| {:<40} | {:>9} | {:>7} | {:>8} | {:>7} |",
        "unit", "calls", "allocs", "reallocs", "bytes"
    );
    println!(
        "|{:-<42}|{:->10}:|{:->8}:|{:->9}:|{:->8}:|",
        "", "", "", "", ""
    );
    let n = (1_000_000 / scale) as u64;
    for u in [
        measure::session_deliver_qos0(n, trace),
        measure::session_deliver_qos1_puback(n, trace),
        measure::encode(n, trace),
        measure::decode_publishes(n as usize / measure::DECODE_BATCH, trace),
        measure::trie_match(n, trace),
    ] {
        row(u.name, u.calls, u.counts, "");
        traces(u.traces, u.counts, u.calls);
    }

    println!();
    println!(
        "End to end, 2 shards, lock-step rounds of 64 publishes (or 1 where the row says \
         so); per delivered message, counted on every thread"
    );
    println!();
    println!(
        "| {:<40} | {:>9} | {:>7} | {:>8} | {:>7} | client allocs |",
        "scenario", "delivered", "allocs", "reallocs", "bytes"
    );
    println!(
        "|{:-<42}|{:->10}:|{:->8}:|{:->9}:|{:->8}:|{:->14}:|",
        "", "", "", "", "", ""
    );
    let rounds = 2000 / scale;
    for sc in [
        Scenario::p2p("p2p QoS 0, same shard", 0, 0, rounds),
        Scenario::p2p("p2p QoS 0, cross-shard", 0, 1, rounds),
        Scenario::p2p("p2p QoS 1, same shard", 1, 0, rounds),
        Scenario::p2p("p2p QoS 1, cross-shard", 1, 1, rounds),
        Scenario::p2p("p2p QoS 0, same shard, 1 per round", 0, 0, 2 * rounds).burst(1),
        Scenario::p2p("p2p QoS 0, cross-shard, 1 per round", 0, 1, 2 * rounds).burst(1),
        Scenario::fanout("fan-out 1→100 QoS 0 (50 per shard)", 100, rounds / 10),
    ] {
        let r = measure::run_e2e(&sc, trace);
        row(
            r.name,
            r.delivered,
            r.counts,
            &format!(" {:>13} |", r.client.calls()),
        );
        assert_eq!(
            r.client.calls(),
            0,
            "{}: the client allocated in the window",
            r.name
        );
        traces(r.traces, r.counts, r.delivered);
    }
    println!();
    let n = 19_000 / scale;
    let idle = measure::idle_subscriber(n);
    println!(
        "An idle subscriber ({n} sessions, each connected with one subscription, its one \
         QoS 1 message acknowledged), heap bytes asked for and kept, per session:"
    );
    println!();
    println!("| {:<52} | {:>6} | {:>6} |", "piece", "bytes", "blocks");
    println!("|{:-<54}|{:->7}:|{:->7}:|", "", "", "");
    for (piece, bytes, blocks) in [
        (
            "Session, in the shard's slab (size_of)",
            idle.session_size as i64,
            0,
        ),
        (
            "what the session allocates (client id, filter, record)",
            idle.session.bytes,
            idle.session.blocks,
        ),
        (
            "  of which the client id's and filter's bytes",
            idle.ids as i64,
            2,
        ),
        (
            "subs trie entry (storm/<id>, one subscriber)",
            idle.subs_entry.bytes,
            idle.subs_entry.blocks,
        ),
        (
            "interest trie entry (the other shard's replica)",
            idle.interest_entry.bytes,
            idle.interest_entry.blocks,
        ),
    ] {
        println!("| {piece:<52} | {bytes:>6} | {blocks:>6} |");
    }
    println!();
    println!(
        "allocs: alloc calls; reallocs: realloc calls; bytes: bytes both asked for \
         (a realloc counts its new size). Took {:.1} s.",
        started.elapsed().as_secs_f64()
    );
}

//! The deep-filter attack: clients subscribing to filters of tens of thousands of
//! levels (`/` × 60,000 is a 60 KB packet and, unchecked, a million trie nodes per
//! megabyte) must not grow the broker's memory. Alone in its test binary, because it
//! reads the resident set size of this process, which holds the broker.

mod common;
use common::*;

/// Resident set size of this process, in bytes (/proc/self/statm, field 2, in pages).
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("resident pages");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page as usize
}

const ATTACKERS: usize = 6;
const FILTERS_EACH: usize = 20;
const LEVELS: usize = 60_000;
/// Without the topic limits, these 120 distinct filters grew RSS by about 1.5 GB (the
/// test, run with `max_topic_levels` and `max_topic_length` at 65535); with them,
/// nothing is stored and the growth measured is under 1 MB (read buffers, SUBACKs,
/// allocator slack).
const RSS_BOUND: usize = 24 << 20;

#[test]
fn deep_filters_from_many_clients_leave_memory_bounded_and_others_working() {
    let b = broker();
    let addr = b.local_addr();
    let mut watcher = Raw::connect(addr, &id_on_shard("atk-watch", 0), true).0;
    assert_eq!(watcher.subscribe(1, &[("atk/ok", 1)]), vec![1]);
    let mut attackers: Vec<Raw> = (0..ATTACKERS)
        .map(|i| Raw::connect(addr, &id_on_shard("atk", i % SHARDS), true).0)
        .collect();
    // Warm-up: every attacker sends one packet of the attack's size first, so read
    // buffers and the allocator's arenas are part of the baseline.
    for a in attackers.iter_mut() {
        a.publish("atk/warm", &vec![b'w'; LEVELS], 0, false);
    }
    let before = rss_bytes();
    for round in 0..FILTERS_EACH {
        let threads: Vec<_> = attackers
            .drain(..)
            .enumerate()
            .map(|(i, mut a)| {
                // Distinct filters, so no two share a trie path.
                let deep = format!("{i}-{round}{}", "/".repeat(LEVELS - 1));
                std::thread::spawn(move || {
                    let codes = a.subscribe(round as u16 + 1, &[(&deep, 1)]);
                    assert_eq!(codes, vec![0x80], "a filter of {LEVELS} levels is refused");
                    a
                })
            })
            .collect();
        attackers = threads.into_iter().map(|t| t.join().unwrap()).collect();
    }
    // Other clients keep working meanwhile and after.
    let mut publ = Raw::connect(addr, &id_on_shard("atk-pub", 1), true).0;
    publ.publish("atk/ok", b"still here", 1, false);
    let p = watcher.expect_publish();
    assert_eq!(p.payload, b"still here");
    watcher.ack(&p);
    let after = rss_bytes();
    let grown = after.saturating_sub(before);
    assert!(
        grown < RSS_BOUND,
        "{ATTACKERS} clients × {FILTERS_EACH} filters of {LEVELS} levels grew RSS by {} KiB \
         (bound {} KiB)",
        grown >> 10,
        RSS_BOUND >> 10
    );
    eprintln!("RSS grew by {} KiB", grown >> 10);
    let s = b.stats().total();
    assert_eq!(
        s.subscriptions, 1,
        "only the watcher's subscription is held: {s:?}"
    );
    assert_eq!(s.subscriptions_refused, (ATTACKERS * FILTERS_EACH) as u64);
    for a in attackers {
        a.disconnect();
    }
    publ.disconnect();
    watcher.disconnect();
    assert_no_leaks(&b);
}

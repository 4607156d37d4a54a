//! Criterion benchmarks for `shardmq::topic::TopicTrie`, the per-shard
//! subscription index: matching PUBLISH topics against tries of 1 k, 100 k and
//! 1 M filters (topics that hit and topics that miss), plus insert+remove.
//!
//! The filter mix is a fleet of devices: about 80 % exact filters of 3–5 levels
//! (`fleet/{region}/{device}/telemetry`, ...) and 20 % wildcard ones
//! (`fleet/{region}/+/telemetry`, `fleet/{region}/#`, `+/{region}/#`,
//! device-level `+`/`#`). Every filter is distinct and has one key.
//!
//! Run: `cargo bench --bench trie -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shardmq::topic::TopicTrie;

/// Trie sizes (number of distinct filters) to measure.
const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
/// Topics per probe set; cycled through so one cached path does not dominate.
const PROBES: usize = 4096;

/// Deterministic xorshift64*, so every run builds the same tries.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }
}

/// Layout of a benchmark trie of `n` filters.
struct Fleet {
    n: usize,
    regions: usize,
    exact: usize,
    device_wildcards: usize,
}

impl Fleet {
    fn new(n: usize) -> Self {
        let regions = (n / 200).max(2);
        let wildcards = n / 5;
        let device_wildcards = wildcards.saturating_sub(3 * regions);
        Self {
            n,
            regions,
            exact: n - 3 * regions - device_wildcards,
            device_wildcards,
        }
    }

    /// Every filter of the trie, each exactly once.
    fn filters(&self) -> impl Iterator<Item = String> + '_ {
        let exact = (0..self.exact).map(move |d| {
            let r = d % self.regions;
            match d % 3 {
                0 => format!("fleet/r{r}/d{d}/telemetry"),
                1 => format!("fleet/r{r}/d{d}"),
                _ => format!("fleet/r{r}/d{d}/telemetry/temp"),
            }
        });
        let region = (0..self.regions).flat_map(|r| {
            [
                format!("fleet/r{r}/+/telemetry"),
                format!("fleet/r{r}/#"),
                format!("+/r{r}/#"),
            ]
        });
        let device = (0..self.device_wildcards).map(move |d| {
            let r = d % self.regions;
            match d % 3 {
                0 => format!("fleet/r{r}/d{d}/+"),
                1 => format!("fleet/+/d{d}/telemetry"),
                _ => format!("fleet/r{r}/d{d}/#"),
            }
        });
        exact.chain(region).chain(device)
    }

    fn build(&self) -> TopicTrie<u32, u8> {
        let mut trie = TopicTrie::new();
        for (key, filter) in self.filters().enumerate() {
            let _ = trie.insert(&filter, key as u32, (key % 3) as u8);
        }
        trie
    }

    /// Telemetry topics of existing devices: each matches several filters.
    fn hits(&self, rng: &mut XorShift) -> Vec<String> {
        (0..PROBES)
            .map(|_| {
                let d = rng.below(self.exact);
                format!("fleet/r{}/d{d}/telemetry", d % self.regions)
            })
            .collect()
    }

    /// Same shape, unknown region and device: walks the wildcard branches and
    /// matches nothing.
    fn misses(&self, rng: &mut XorShift) -> Vec<String> {
        (0..PROBES)
            .map(|_| {
                let d = rng.below(self.n);
                format!("fleet/q{}/u{d}/telemetry", d % self.regions)
            })
            .collect()
    }
}

/// Resident set size in bytes (Linux), to print an approximate cost per filter.
fn rss_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn bench_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("for_each_match");
    for &n in &SIZES {
        let fleet = Fleet::new(n);
        let before = rss_bytes();
        let trie = fleet.build();
        if let (Some(before), Some(after)) = (before, rss_bytes()) {
            eprintln!(
                "trie n={n}: {} filters, {} entries, {} nodes, ~{} bytes RSS per filter",
                trie.filter_count(),
                trie.len(),
                trie.node_count(),
                after.saturating_sub(before) / n
            );
        }
        let mut rng = XorShift(0x5EED ^ n as u64);
        for (name, topics) in [
            ("hit", fleet.hits(&mut rng)),
            ("miss", fleet.misses(&mut rng)),
        ] {
            let mut total = 0usize;
            for topic in &topics {
                trie.for_each_match(topic, |_, _| total += 1);
            }
            eprintln!(
                "trie n={n} {name}: {:.2} matches per topic",
                total as f64 / topics.len() as f64
            );
            group.bench_with_input(BenchmarkId::new(name, n), &topics, |b, topics| {
                let mut i = 0usize;
                b.iter(|| {
                    let topic = &topics[i % PROBES];
                    i = i.wrapping_add(1);
                    let mut qos = 0u8;
                    trie.for_each_match(black_box(topic), |_, q| qos = qos.max(*q));
                    black_box(qos)
                })
            });
        }
    }
    group.finish();
}

fn bench_insert_remove(c: &mut Criterion) {
    let mut group = c.benchmark_group("insert_remove");
    let fleet = Fleet::new(100_000);
    let mut trie = fleet.build();
    // A new device filter under an existing region: creates then prunes nodes.
    group.bench_function("new_filter_in_100k", |b| {
        b.iter(|| {
            let _ = trie.insert(black_box("fleet/r7/dnew/telemetry"), 7_777_777, 1);
            trie.remove(black_box("fleet/r7/dnew/telemetry"), &7_777_777)
        })
    });
    // One more subscriber on a fan-out filter that already has 100 k keys.
    let mut fan_out = TopicTrie::new();
    for key in 0..100_000u32 {
        let _ = fan_out.insert("broadcast/all", key, 0u8);
    }
    group.bench_function("key_on_100k_fan_out", |b| {
        b.iter(|| {
            let _ = fan_out.insert(black_box("broadcast/all"), 7_777_777, 1);
            fan_out.remove(black_box("broadcast/all"), &7_777_777)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_match, bench_insert_remove);
criterion_main!(benches);

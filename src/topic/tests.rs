//! Behaviour tests for the topic trie: MQTT 3.1.1 §4.7 examples, the `$` rule,
//! insert/remove bookkeeping, pruning, fan-out filters and a randomized
//! comparison against a naive reference matcher.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// Tiny deterministic xorshift64* generator (no `rand` dependency).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Naive MQTT 3.1.1 matcher used as the oracle.
fn reference_matches(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    let mut i = 0;
    loop {
        match (f.get(i), t.get(i)) {
            (Some(&"#"), _) if i + 1 == f.len() => return true,
            (Some(fl), Some(tl)) if *fl == "+" || fl == tl => i += 1,
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Keys reported for `topic`, sorted (one per matching filter).
fn keys<V>(trie: &TopicTrie<u32, V>, topic: &str) -> Vec<u32> {
    let mut out = Vec::new();
    trie.for_each_match(topic, |k, _| out.push(*k));
    out.sort_unstable();
    out
}

/// Does the single filter `filter` match `topic`, according to the trie?
fn trie_matches(filter: &str, topic: &str) -> bool {
    let mut trie = TopicTrie::new();
    let _ = trie.insert(filter, 1u32, 0u8);
    let hits = keys(&trie, topic);
    assert!(hits.len() <= 1, "{filter} reported {hits:?} for {topic}");
    let hit = hits == [1];
    assert_eq!(
        hit,
        reference_matches(filter, topic),
        "reference disagrees on {filter:?} / {topic:?}"
    );
    hit
}

fn assert_matches(filter: &str, topics: &[&str]) {
    for topic in topics {
        assert!(
            trie_matches(filter, topic),
            "{filter:?} should match {topic:?}"
        );
    }
}

fn assert_no_match(filter: &str, topics: &[&str]) {
    for topic in topics {
        assert!(
            !trie_matches(filter, topic),
            "{filter:?} must not match {topic:?}"
        );
    }
}

#[test]
fn spec_multi_level_wildcard_examples() {
    // §4.7.1.2
    assert_matches(
        "sport/tennis/player1/#",
        &[
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ],
    );
    assert_matches("sport/#", &["sport"]);
    assert_no_match(
        "sport/tennis/player1/#",
        &["sport/tennis", "sport/tennis/player2"],
    );
}

#[test]
fn spec_single_level_wildcard_examples() {
    // §4.7.1.3
    assert_matches(
        "sport/tennis/+",
        &["sport/tennis/player1", "sport/tennis/player2"],
    );
    assert_no_match(
        "sport/tennis/+",
        &["sport/tennis/player1/ranking", "sport/tennis"],
    );
    assert_no_match("sport/+", &["sport"]);
    assert_matches("sport/+", &["sport/"]);
    assert_matches("+/+", &["/finance"]);
    assert_matches("/+", &["/finance"]);
    assert_no_match("+", &["/finance"]);
    assert_matches(
        "+/tennis/#",
        &["sport/tennis", "sport/tennis/player1/ranking"],
    );
    assert_matches(
        "sport/+/player1",
        &["sport/tennis/player1", "sport//player1"],
    );
}

#[test]
fn spec_dollar_topics_examples() {
    // §4.7.2
    assert_no_match("#", &["$SYS/monitor/Clients", "$SYS", "$"]);
    assert_no_match("+/monitor/Clients", &["$SYS/monitor/Clients"]);
    assert_matches("$SYS/#", &["$SYS/monitor/Clients"]);
    assert_matches("$SYS/monitor/+", &["$SYS/monitor/Clients"]);
}

#[test]
fn spec_topic_semantics_examples() {
    // §4.7.3: case-sensitive, spaces significant, leading '/' is a level.
    assert_no_match("ACCOUNTS", &["Accounts", "accounts"]);
    assert_matches("Accounts payable", &["Accounts payable"]);
    assert_no_match(
        "Accounts payable",
        &["Accounts  payable", "Accountspayable"],
    );
    assert_no_match("/finance", &["finance"]);
    assert_no_match("finance", &["/finance"]);
    assert_matches("/", &["/"]);
    assert_matches("#", &["/", "a", "/a/b", "a/b/"]);
}

#[test]
fn hash_wildcard_matches_parent_level() {
    assert_matches(
        "sport/#",
        &["sport", "sport/", "sport/a", "sport/a/b", "sport//"],
    );
    assert_no_match("sport/#", &["sports", "spor", "Sport", "x/sport"]);
    assert_matches("a/b/#", &["a/b"]);
    assert_no_match("a/b/#", &["a"]);
}

#[test]
fn plus_matches_one_possibly_empty_level() {
    assert_matches("a/+/b", &["a//b", "a/x/b"]);
    assert_no_match("a/+/b", &["a/b", "a/x/y/b", "a//b/"]);
    assert_matches("+/+", &["/", "a/", "/a", "a/b"]);
    assert_no_match("+/+", &["a", "a/b/c", "//"]);
    assert_matches("+", &["a", ""]);
    assert_matches("+/#", &["a", "/", "a/b/c"]);
}

#[test]
fn empty_levels_are_distinct_levels() {
    assert_matches("a//b", &["a//b"]);
    assert_no_match("a//b", &["a/b", "a///b"]);
    assert_matches("a/", &["a/"]);
    assert_no_match("a/", &["a"]);
    assert_no_match("a", &["a/"]);
    assert_matches("//", &["//"]);
    assert_matches("/#", &["/", "/a", "//"]);
    assert_no_match("/#", &["a"]);
}

#[test]
fn dollar_topics_skip_leading_wildcards_only() {
    assert_matches("$SYS/#", &["$SYS", "$SYS/x", "$SYS/x/y"]);
    assert_no_match("+/x", &["$a/x"]);
    assert_no_match("+", &["$"]);
    assert_no_match("+/#", &["$SYS/x"]);
    assert_matches("$SYS/+", &["$SYS/x"]);
    // The rule is about the topic's first character and the filter's first level.
    assert_matches("a/+", &["a/$b"]);
    assert_matches("a/#", &["a/$b"]);
    assert_matches("#", &["a$"]);
    assert_matches("+/a", &["x$/a"]);
}

#[test]
fn matching_reports_every_matching_filter_once() {
    let mut trie = TopicTrie::new();
    let filters = [
        "a/b/c", "a/+/c", "a/#", "#", "+/b/#", "a/b/c/#", "+/+/+", "a/b", "a/b/c/d", "x/#",
    ];
    for (i, f) in filters.iter().enumerate() {
        let _ = trie.insert(f, i as u32, 0);
    }
    // Same key 100 on two matching filters is reported twice (caller dedups).
    let _ = trie.insert("a/b/c", 100, 1);
    let _ = trie.insert("a/#", 100, 1);
    assert_eq!(keys(&trie, "a/b/c"), vec![0, 1, 2, 3, 4, 5, 6, 100, 100]);
    assert_eq!(keys(&trie, "a/b"), vec![2, 3, 4, 7, 100]);
    assert_eq!(keys(&trie, "q"), vec![3]);
    assert!(keys(&trie, "$q/b/c").is_empty());
}

#[test]
fn insert_reports_new_filter_and_replaced_value() {
    let mut trie = TopicTrie::new();
    assert_eq!(
        trie.insert("a/b", 1u32, 0u8),
        Inserted {
            filter_was_new: true,
            previous: None
        }
    );
    assert_eq!(
        trie.insert("a/b", 2, 1),
        Inserted {
            filter_was_new: false,
            previous: None
        }
    );
    assert_eq!(
        trie.insert("a/b", 1, 2),
        Inserted {
            filter_was_new: false,
            previous: Some(0)
        }
    );
    assert_eq!(trie.get("a/b", &1), Some(&2));
    assert_eq!(trie.get("a/b", &2), Some(&1));
    assert_eq!(trie.get("a/b", &3), None);
    assert_eq!(trie.get("a", &1), None);
    assert_eq!(trie.get("a/b/c", &1), None);
    assert_eq!(trie.len(), 2);
    assert_eq!(trie.filter_count(), 1);
    // A prefix of an existing filter is a new filter.
    assert!(trie.insert("a", 1, 0).filter_was_new);
    assert!(trie.insert("a/#", 1, 0).filter_was_new);
    assert!(trie.insert("a/+", 1, 0).filter_was_new);
    assert!(!trie.insert("a/#", 2, 0).filter_was_new);
    assert_eq!(trie.get("a/#", &2), Some(&0));
    assert_eq!(trie.len(), 6);
    assert_eq!(trie.filter_count(), 4);
}

#[test]
fn remove_reports_value_and_when_filter_becomes_empty() {
    let mut trie = TopicTrie::new();
    let _ = trie.insert("a/#", 1u32, 1u8);
    let _ = trie.insert("a/#", 2, 2);
    assert_eq!(
        trie.remove("a/#", &3),
        Removed {
            removed: None,
            filter_now_empty: false
        }
    );
    assert_eq!(
        trie.remove("a/+", &1),
        Removed {
            removed: None,
            filter_now_empty: false
        }
    );
    assert_eq!(
        trie.remove("a/#", &1),
        Removed {
            removed: Some(1),
            filter_now_empty: false
        }
    );
    assert_eq!(
        trie.remove("a/#", &2),
        Removed {
            removed: Some(2),
            filter_now_empty: true
        }
    );
    assert_eq!(
        trie.remove("a/#", &2),
        Removed {
            removed: None,
            filter_now_empty: false
        }
    );
    assert!(trie.is_empty());
    assert_eq!(trie.filter_count(), 0);
    assert_eq!(trie.node_count(), 1);
}

#[test]
fn node_count_counts_one_node_per_level() {
    let mut trie = TopicTrie::new();
    assert_eq!(trie.node_count(), 1);
    let _ = trie.insert("a/b/c", 1u32, ());
    assert_eq!(trie.node_count(), 4);
    let _ = trie.insert("a/b/#", 1, ());
    assert_eq!(trie.node_count(), 5);
    let _ = trie.insert("a/+/c", 1, ());
    assert_eq!(trie.node_count(), 7);
    let _ = trie.insert("a/b/c", 2, ());
    assert_eq!(trie.node_count(), 7);
    let _ = trie.remove("a/b/#", &1);
    assert_eq!(trie.node_count(), 6);
    let _ = trie.remove("a/b/c", &1);
    assert_eq!(trie.node_count(), 6);
    let _ = trie.remove("a/b/c", &2);
    assert_eq!(trie.node_count(), 4);
    let _ = trie.remove("a/+/c", &1);
    assert_eq!(trie.node_count(), 1);
}

#[test]
fn removal_prunes_back_to_root_node_count() {
    let filters = [
        "a",
        "a/b",
        "a/b/c",
        "a/b/c/d",
        "a/#",
        "a/b/#",
        "#",
        "+",
        "+/+",
        "+/b/#",
        "/",
        "//",
        "",
        "a//",
        "$SYS/#",
        "$SYS/x",
        "a/+/c",
        "x/y/z/w/v",
        "a/b/c/d/e/f/g",
    ];
    for order in 0..8u64 {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ order);
        let mut trie = TopicTrie::new();
        let mut pairs = Vec::new();
        for f in filters {
            for k in 0..3u32 {
                let _ = trie.insert(f, k, k as u8);
                pairs.push((f, k));
            }
        }
        assert_eq!(trie.len(), filters.len() * 3);
        assert_eq!(trie.filter_count(), filters.len());
        rng.shuffle(&mut pairs);
        for (f, k) in &pairs {
            assert_eq!(trie.remove(f, k).removed, Some(*k as u8));
        }
        assert!(trie.is_empty());
        assert_eq!(trie.filter_count(), 0);
        assert_eq!(trie.node_count(), 1, "leak with order {order}");
        assert!(trie.root.children.is_none());
        assert!(keys(&trie, "a/b/c").is_empty());
    }
}

#[test]
fn removing_one_filter_keeps_siblings_and_prefixes() {
    let mut trie = TopicTrie::new();
    let _ = trie.insert("a/b/c/d", 1u32, 0u8);
    let _ = trie.insert("a/b", 2, 0);
    let _ = trie.insert("a/b/x", 3, 0);
    let _ = trie.remove("a/b/c/d", &1);
    assert_eq!(keys(&trie, "a/b"), vec![2]);
    assert_eq!(keys(&trie, "a/b/x"), vec![3]);
    assert!(keys(&trie, "a/b/c/d").is_empty());
    assert_eq!(trie.node_count(), 4); // root, a, b, x
    let _ = trie.remove("a/b", &2);
    assert_eq!(keys(&trie, "a/b/x"), vec![3]);
    assert_eq!(trie.node_count(), 4);
    let _ = trie.remove("a/b/x", &3);
    assert_eq!(trie.node_count(), 1);
}

#[test]
fn many_children_switch_to_map_and_back() {
    let mut trie = TopicTrie::new();
    let names: Vec<String> = (0..200).map(|i| format!("dev{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        let _ = trie.insert(&format!("fleet/{n}/t"), i as u32, 0u8);
        let _ = trie.insert(&format!("fleet/{n}"), 1000 + i as u32, 0u8);
    }
    assert_eq!(trie.node_count(), 2 + 2 * names.len());
    for (i, n) in names.iter().enumerate() {
        assert_eq!(keys(&trie, &format!("fleet/{n}/t")), vec![i as u32]);
        assert_eq!(keys(&trie, &format!("fleet/{n}")), vec![1000 + i as u32]);
    }
    let mut rng = XorShift(7);
    let mut order: Vec<usize> = (0..names.len()).collect();
    rng.shuffle(&mut order);
    for (removed, &i) in order.iter().enumerate() {
        let _ = trie.remove(&format!("fleet/{}/t", names[i]), &(i as u32));
        let _ = trie.remove(&format!("fleet/{}", names[i]), &(1000 + i as u32));
        // Survivors still match after every promotion/demotion.
        if removed % 17 == 0 {
            for &j in &order[removed + 1..] {
                assert_eq!(
                    keys(&trie, &format!("fleet/{}/t", names[j])),
                    vec![j as u32]
                );
            }
        }
    }
    assert_eq!(trie.node_count(), 1);
}

#[test]
fn many_keys_on_one_filter() {
    const N: u32 = 10_000;
    let mut trie = TopicTrie::new();
    for k in 0..N {
        let r = trie.insert("hot/topic", k, (k % 3) as u8);
        assert_eq!(r.filter_was_new, k == 0);
        assert_eq!(r.previous, None);
    }
    // Replacing keeps one entry per key.
    assert_eq!(trie.insert("hot/topic", 42, 7).previous, Some(0));
    assert_eq!(trie.len(), N as usize);
    let mut live: BTreeSet<u32> = (0..N).collect();
    let mut order: Vec<u32> = (0..N).collect();
    let mut rng = XorShift(0xDEAD_BEEF);
    rng.shuffle(&mut order);
    for (i, k) in order.iter().enumerate() {
        let expected = if *k == 42 { 7 } else { (k % 3) as u8 };
        let r = trie.remove("hot/topic", k);
        assert_eq!(r.removed, Some(expected));
        assert_eq!(r.filter_now_empty, i + 1 == N as usize);
        assert_eq!(trie.remove("hot/topic", k).removed, None);
        live.remove(k);
        if i % 997 == 0 || live.len() < 40 {
            let seen: Vec<u32> = keys(&trie, "hot/topic");
            assert_eq!(seen, live.iter().copied().collect::<Vec<_>>());
            for probe in live.iter().take(5) {
                assert!(trie.get("hot/topic", probe).is_some());
            }
        }
    }
    assert!(trie.is_empty());
    assert_eq!(trie.node_count(), 1);
}

#[test]
fn fan_out_filter_reinserts_after_shrinking() {
    let mut trie = TopicTrie::new();
    for round in 0..3u32 {
        for k in 0..2000u32 {
            let _ = trie.insert("t", k, round);
        }
        for k in (0..2000u32).filter(|k| k % 10 != 0) {
            assert_eq!(trie.remove("t", &k).removed, Some(round));
        }
        assert_eq!(
            keys(&trie, "t"),
            (0..200).map(|k| k * 10).collect::<Vec<_>>()
        );
        assert_eq!(trie.root.entries("t").map(|e| e.len()), Some(200));
    }
}

#[test]
fn very_deep_filters_do_not_overflow_the_stack() {
    let deep: String = vec!["a"; 100_000].join("/");
    let mut trie = TopicTrie::new();
    let _ = trie.insert(&deep, 1u32, ());
    let _ = trie.insert(&format!("{deep}/#"), 2, ());
    let plus: String = vec!["+"; 100_000].join("/");
    let _ = trie.insert(&plus, 3, ());
    assert_eq!(keys(&trie, &deep), vec![1, 2, 3]);
    assert_eq!(trie.remove(&deep, &1).removed, Some(()));
    assert_eq!(trie.remove(&plus, &3).removed, Some(()));
    assert_eq!(keys(&trie, &deep), vec![2]);
    // Dropping the remaining 100 k-level branch must not recurse either.
    drop(trie);
}

#[test]
fn invalid_filters_do_not_panic_and_stay_consistent() {
    let mut trie = TopicTrie::new();
    for f in ["a/#/b", "a+", "#a", "a/b#", "##", "+a/+"] {
        assert!(trie.insert(f, 1u32, 0u8).filter_was_new);
        assert_eq!(trie.get(f, &1), Some(&0));
    }
    // Non-final '#' is a literal level: it does not act as a wildcard.
    assert!(keys(&trie, "a/x/b").is_empty());
    for f in ["a/#/b", "a+", "#a", "a/b#", "##", "+a/+"] {
        assert!(trie.remove(f, &1).filter_now_empty);
    }
    assert_eq!(trie.node_count(), 1);
}

/// One `(filter, key)` subscription of the randomized model.
type Model = BTreeMap<(String, u32), u32>;

fn random_levels(rng: &mut XorShift, alphabet: &[&str], wildcards: bool) -> String {
    let n = 1 + rng.below(4);
    let mut levels = Vec::with_capacity(n);
    for i in 0..n {
        let roll = rng.below(10);
        if wildcards && roll < 2 {
            levels.push("+");
        } else if wildcards && roll == 2 && i + 1 == n {
            levels.push("#");
        } else {
            levels.push(alphabet[rng.below(alphabet.len())]);
        }
    }
    levels.join("/")
}

fn check_against_model(trie: &TopicTrie<u32, (String, u32)>, model: &Model, topics: &[String]) {
    assert_eq!(trie.len(), model.len());
    let filters: BTreeSet<&str> = model.keys().map(|(f, _)| f.as_str()).collect();
    assert_eq!(trie.filter_count(), filters.len());
    // One node per distinct level prefix, plus the root.
    let mut prefixes = BTreeSet::new();
    for f in &filters {
        let levels: Vec<&str> = f.split('/').collect();
        for i in 1..=levels.len() {
            prefixes.insert(levels[..i].join("/"));
        }
    }
    assert_eq!(trie.node_count(), 1 + prefixes.len());
    for ((filter, key), stamp) in model {
        assert_eq!(trie.get(filter, key), Some(&(filter.clone(), *stamp)));
    }
    for topic in topics {
        let mut got = Vec::new();
        trie.for_each_match(topic, |k, (f, s)| got.push((f.clone(), *k, *s)));
        got.sort();
        let mut want: Vec<(String, u32, u32)> = model
            .iter()
            .filter(|((f, _), _)| reference_matches(f, topic))
            .map(|((f, k), s)| (f.clone(), *k, *s))
            .collect();
        want.sort();
        assert_eq!(got, want, "topic {topic:?}");
    }
}

#[test]
fn randomized_matches_agree_with_reference_matcher() {
    // Ten names, so some nodes switch to a child map; one name is too long to
    // be stored inline.
    let alphabet = [
        "a",
        "b",
        "",
        "$x",
        "$SYS",
        "A",
        " a",
        "ab",
        "x",
        "a-level-name-too-long-to-be-inline",
    ];
    let mut rng = XorShift(0x1234_5678_9ABC_DEF1);
    let mut trie: TopicTrie<u32, (String, u32)> = TopicTrie::new();
    let mut model = Model::new();
    let topics: Vec<String> = (0..600)
        .map(|_| random_levels(&mut rng, &alphabet, false))
        .chain(["$", "/", "$SYS", "a", ""].iter().map(|s| s.to_string()))
        .collect();
    let filters: Vec<String> = (0..3000)
        .map(|_| random_levels(&mut rng, &alphabet, true))
        .collect();
    for (stamp, filter) in filters.iter().enumerate() {
        let key = rng.below(6) as u32;
        let stamp = stamp as u32;
        let r = trie.insert(filter, key, (filter.clone(), stamp));
        let had_filter = model.keys().any(|(f, _)| f == filter);
        let prev = model.insert((filter.clone(), key), stamp);
        assert_eq!(r.filter_was_new, !had_filter);
        assert_eq!(r.previous.map(|(_, s)| s), prev);
    }
    check_against_model(&trie, &model, &topics);

    // Remove about half, interleaved with some re-inserts.
    let mut live: Vec<(String, u32)> = model.keys().cloned().collect();
    rng.shuffle(&mut live);
    for (i, (filter, key)) in live.iter().enumerate().take(live.len() / 2) {
        let r = trie.remove(filter, key);
        let stamp = model.remove(&(filter.clone(), *key));
        assert_eq!(r.removed.map(|(_, s)| s), stamp);
        let still = model.keys().any(|(f, _)| f == filter);
        assert_eq!(r.filter_now_empty, !still);
        if i % 5 == 0 {
            let f = random_levels(&mut rng, &alphabet, true);
            let _ = trie.insert(&f, 99, (f.clone(), 0));
            model.insert((f, 99), 0);
        }
    }
    check_against_model(&trie, &model, &topics);

    // Remove everything: back to the bare root.
    let rest: Vec<(String, u32)> = model.keys().cloned().collect();
    for (filter, key) in rest {
        assert!(trie.remove(&filter, &key).removed.is_some());
        model.remove(&(filter, key));
    }
    check_against_model(&trie, &model, &topics);
    assert_eq!(trie.node_count(), 1);
}

#[test]
fn find_slash_agrees_with_a_byte_scan() {
    for len in 0..40 {
        for at in 0..=len {
            let mut bytes = vec![b'x'; len];
            if at < len {
                bytes[at] = b'/';
                // A later slash and a high byte must not confuse the word scan.
                if at + 3 < len {
                    bytes[at + 3] = b'/';
                }
            }
            if at > 0 {
                bytes[at - 1] = 0xC3;
            }
            let want = bytes.iter().position(|&b| b == b'/');
            assert_eq!(find_slash(&bytes), want, "len {len} at {at}");
            for b in [0x2E, 0x30, 0xAF, 0x00] {
                let mut other = bytes.clone();
                other
                    .iter_mut()
                    .filter(|x| **x == b'x')
                    .for_each(|x| *x = b);
                let want = other.iter().position(|&c| c == b'/');
                assert_eq!(find_slash(&other), want, "len {len} at {at} fill {b:#x}");
            }
        }
    }
}

#[test]
fn long_level_names_are_stored_and_matched() {
    let long = "a-level-name-longer-than-the-inline-capacity";
    let mut trie = TopicTrie::new();
    let filter = format!("{long}/x/{long}");
    let _ = trie.insert(&filter, 1u32, 0u8);
    let _ = trie.insert(&format!("{long}/+/{long}"), 2, 0);
    let _ = trie.insert("exactly-22-bytes-long!/#", 3, 0);
    let _ = trie.insert("exactly-23-bytes-long!!/#", 4, 0);
    assert_eq!(keys(&trie, &filter), vec![1, 2]);
    assert!(keys(&trie, &format!("{long}/x/{}", &long[1..])).is_empty());
    assert_eq!(keys(&trie, "exactly-22-bytes-long!"), vec![3]);
    assert_eq!(keys(&trie, "exactly-23-bytes-long!!/a"), vec![4]);
    assert!(keys(&trie, "exactly-22-bytes-long!!").is_empty());
    assert_eq!(trie.get(&filter, &1), Some(&0));
}

#[test]
fn node_layout_stays_compact() {
    use std::mem::size_of;
    assert_eq!(size_of::<level::LevelName>(), 24);
    assert_eq!(size_of::<node::Node<u32, u8>>(), 40);
    assert!(size_of::<node::Children<u32, u8>>() <= 112);
}

#[test]
fn deep_topics_with_many_plus_branches_match_fully() {
    // Every level of the exact path has a `+` sibling, so more than 16 branches
    // are pending at once and the match stack spills to the heap.
    const DEPTH: usize = 24;
    let mut trie = TopicTrie::new();
    let mut filters = Vec::new();
    for plus_at in 0..DEPTH {
        let levels: Vec<&str> = (0..DEPTH)
            .map(|i| if i == plus_at { "+" } else { "a" })
            .collect();
        filters.push(levels.join("/"));
    }
    filters.push(vec!["a"; DEPTH].join("/"));
    filters.push(vec!["+"; DEPTH].join("/"));
    filters.push(format!("{}/#", vec!["a"; DEPTH - 1].join("/")));
    for (key, filter) in filters.iter().enumerate() {
        let _ = trie.insert(filter, key as u32, 0u8);
    }
    let topic = vec!["a"; DEPTH].join("/");
    assert_eq!(
        keys(&trie, &topic),
        (0..filters.len() as u32).collect::<Vec<_>>()
    );
    let other = format!("{}/b", vec!["a"; DEPTH - 1].join("/"));
    assert_eq!(
        keys(&trie, &other),
        vec![DEPTH as u32 - 1, DEPTH as u32 + 1, DEPTH as u32 + 2]
    );
    for (key, filter) in filters.iter().enumerate() {
        assert!(trie.remove(filter, &(key as u32)).filter_now_empty);
    }
    assert_eq!(trie.node_count(), 1);
}

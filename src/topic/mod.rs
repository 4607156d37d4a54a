//! Topic-filter trie: which subscriptions match a PUBLISH topic name.
//!
//! Each shard keeps two of these: `subs` (its own sessions' subscriptions,
//! key = session slot, value = granted QoS) and `interest` (which other shards
//! subscribe to a filter, key = shard id, value = `()`). Filters are inserted on
//! SUBSCRIBE, removed on UNSUBSCRIBE / session end, and every PUBLISH is matched
//! against both, so [`TopicTrie::for_each_match`] is the hot path: it does not
//! allocate (short of topics deeper than 16 levels), never recurses, and hashes
//! only exact levels of nodes with many children.
//!
//! Matching follows MQTT 3.1.1 §4.7: levels are separated by `/` and compared
//! byte-exactly; `+` matches exactly one level (which may be empty); a final `#`
//! matches its parent level and any number of levels below it; topic names
//! starting with `$` are not matched by filters whose first level is `+` or `#`
//! [MQTT-4.7.2-1].
//!
//! The trie assumes filters were validated by the protocol layer. Invalid ones do
//! not panic: a `#` that is not the last level, or a `+`/`#` inside a level, is
//! stored as a literal level (which no valid topic name can match).
//!
//! Shared subscriptions (`$share/{group}/{filter}`) are parsed by [`share`]; a
//! shard keeps its groups in a trie of their own, keyed by the filter part.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]

mod entries;
mod level;
mod node;
pub mod share;
#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::Hash;

use smallvec::SmallVec;

use node::Node;

/// Pending branches of a match that fit on the stack before spilling to the
/// heap. Each pending branch is a `+` child passed on the way down (at most one
/// per level of the current path), so only a topic deeper than 16 levels that
/// also meets `+` children at more than 16 of them can spill.
const MATCH_STACK: usize = 16;

/// A match branch still to explore: a node and the topic levels left after it
/// (`None` once every level has been consumed).
type Branch<'t, 'n, K, V> = (&'n Node<K, V>, Option<&'t [u8]>);

/// A set of `(topic filter, key) -> value` subscriptions, matched against topic
/// names. Keys are small copyable ids (session slot, shard id); a key appears at
/// most once per filter.
pub struct TopicTrie<K, V> {
    root: Node<K, V>,
    len: usize,
    filters: usize,
    nodes: usize,
}

/// Result of [`TopicTrie::insert`], so the caller can propagate interest only
/// when a filter goes from unsubscribed to subscribed and report replacements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted<V> {
    /// The filter had no entries at all before this insert.
    pub filter_was_new: bool,
    /// The value that was replaced, when `(filter, key)` already existed.
    pub previous: Option<V>,
}

/// Result of [`TopicTrie::remove`], so the caller can withdraw interest exactly
/// when the last subscriber of a filter goes away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed<V> {
    /// The value that was stored for `(filter, key)`; `None` if there was none.
    pub removed: Option<V>,
    /// This removal left the filter with no entries (never true when nothing
    /// was removed).
    pub filter_now_empty: bool,
}

impl<K, V> TopicTrie<K, V> {
    /// An empty trie (just the root node), ready for a shard to fill.
    pub fn new() -> Self {
        Self {
            root: Node::new(),
            len: 0,
            filters: 0,
            nodes: 1,
        }
    }

    /// Number of `(filter, key)` entries, for metrics and limits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no entries, so a shard can skip matching entirely.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of filters with at least one entry, for metrics.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// Number of trie nodes including the root (a trailing `#` counts as one);
    /// it returns to 1 once everything is removed, which lets tests detect leaks.
    pub fn node_count(&self) -> usize {
        self.nodes
    }

    /// Calls `f(key, value)` for every entry of every filter matching the topic
    /// name `topic`: this is how a PUBLISH finds its receivers. A key subscribed
    /// through several matching filters is reported once per filter; the caller
    /// de-duplicates (keeping the highest QoS). The order is unspecified.
    ///
    /// Never recurses, and allocates nothing unless more than 16 `+` branches
    /// are pending at once (which needs a topic deeper than 16 levels). `f` runs
    /// while the trie is borrowed, so it should only collect (e.g. push the key
    /// into a reusable buffer).
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&K, &V)) {
        let Some(top) = self.root.children.as_deref() else {
            return;
        };
        // [MQTT-4.7.2-1]: `$` topics are not matched by a leading `+` or `#`.
        let dollar = topic.starts_with('$');
        if !dollar {
            if let Some(hash) = top.hash.as_deref() {
                hash.for_each(&mut f);
            }
        }
        let (level, rest) = split_level(topic.as_bytes());
        let mut pending: SmallVec<[Branch<'_, '_, K, V>; MATCH_STACK]> = SmallVec::new();
        if !dollar {
            if let Some(plus) = top.plus.as_deref() {
                pending.push((plus, rest));
            }
        }
        // `rest` is `None` once every level of the topic has been consumed.
        let mut current = top
            .exact
            .as_ref()
            .and_then(|e| e.get(level))
            .map(|n| (n, rest));
        loop {
            let Some((node, rest)) = current.take().or_else(|| pending.pop()) else {
                return;
            };
            let Some(children) = node.children.as_deref() else {
                if rest.is_none() {
                    node.entries.for_each(&mut f);
                }
                continue;
            };
            // `prefix/#` matches `prefix` itself and everything below it.
            if let Some(hash) = children.hash.as_deref() {
                hash.for_each(&mut f);
            }
            match rest {
                None => node.entries.for_each(&mut f),
                Some(remaining) => {
                    let (level, rest) = split_level(remaining);
                    if let Some(plus) = children.plus.as_deref() {
                        pending.push((plus, rest));
                    }
                    current = children
                        .exact
                        .as_ref()
                        .and_then(|e| e.get(level))
                        .map(|n| (n, rest));
                }
            }
        }
    }
}

impl<K: Copy + Eq + Hash, V> TopicTrie<K, V> {
    /// Subscribes `key` to `filter` with `value`, replacing the value if the
    /// pair already exists (a repeated SUBSCRIBE replaces the granted QoS).
    /// `filter` must be a valid filter (see the module docs).
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Inserted<V> {
        let mut created = 0;
        let entries = self.root.entries_or_insert(filter, &mut created);
        let filter_was_new = entries.is_empty();
        let previous = entries.insert(key, value);
        self.nodes += created;
        if previous.is_none() {
            self.len += 1;
        }
        if filter_was_new {
            self.filters += 1;
        }
        Inserted {
            filter_was_new,
            previous,
        }
    }

    /// Unsubscribes `key` from `filter`, pruning every node left empty so a
    /// removed filter keeps no memory (sessions churn all day).
    pub fn remove(&mut self, filter: &str, key: &K) -> Removed<V> {
        let Some(taken) = self.root.take_entry(filter, key) else {
            return Removed {
                removed: None,
                filter_now_empty: false,
            };
        };
        self.len = self.len.saturating_sub(1);
        if taken.filter_now_empty {
            self.filters = self.filters.saturating_sub(1);
        }
        if taken.hash_slot_freed {
            self.nodes = self.nodes.saturating_sub(1);
        }
        if let Some(cut) = taken.prune_at {
            // Nodes at depths cut+1 ..= depth hold nothing but this branch.
            self.nodes = self.nodes.saturating_sub(taken.depth.saturating_sub(cut));
            self.root.detach_branch(filter, cut);
        }
        Removed {
            removed: Some(taken.value),
            filter_now_empty: taken.filter_now_empty,
        }
    }

    /// The value stored for `(filter, key)`, e.g. to check an existing grant.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        self.root.entries(filter)?.get(key)
    }
}

impl<K, V> Default for TopicTrie<K, V> {
    /// Same as [`TopicTrie::new`], so the trie can sit in `Default` structs.
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for TopicTrie<K, V> {
    /// Summary only: a trie may hold millions of entries.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicTrie")
            .field("len", &self.len)
            .field("filters", &self.filters)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// Splits off the first level: `("a", Some("b/c"))` for `"a/b/c"`, `("c", None)`
/// for `"c"`. `None` means no level follows (distinct from an empty last level).
#[inline]
fn split_level(topic: &[u8]) -> (&[u8], Option<&[u8]>) {
    match find_slash(topic) {
        Some(at) => match (topic.get(..at), topic.get(at + 1..)) {
            (Some(level), Some(rest)) => (level, Some(rest)),
            _ => (topic, None),
        },
        None => (topic, None),
    }
}

/// Position of the first `/`, eight bytes at a time (levels are short, so this
/// beats both a byte loop and `memchr`'s setup cost).
#[inline]
fn find_slash(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const SLASHES: u64 = u64::from_ne_bytes([b'/'; 8]);
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or([0; 8])) ^ SLASHES;
        // Classic "has zero byte": the lowest flagged byte is the first `/`.
        let found = word.wrapping_sub(ONES) & !word & HIGHS;
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'/')
        .map(|at| offset + at)
}

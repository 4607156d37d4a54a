//! The `(key, value)` entries stored on one filter of the topic trie.
//!
//! Most filters have one or two subscribers, so entries live inline in the node
//! until they spill. A few filters have a huge fan-out (one topic with 100 k
//! subscribers), so once a filter holds more than a handful of keys a side index
//! `key -> position` makes insert/replace/remove O(1) while the entries themselves
//! stay in one contiguous vector that `for_each_match` walks without hashing.

use std::hash::Hash;
use std::mem;

use ahash::AHashMap;
use smallvec::SmallVec;

/// Entries kept inline before spilling to the heap. Two `(u32, u8)` pairs fit in
/// the space the spilled `(pointer, length)` needs anyway.
const INLINE: usize = 2;
/// Build the key index once a filter holds more entries than this; below it a
/// linear scan over a few contiguous keys is as fast as hashing.
const INDEX_ABOVE: usize = 16;
/// Drop the key index again when a filter shrinks below this (hysteresis, so a
/// filter hovering around the threshold does not rebuild the index every time).
const UNINDEX_BELOW: usize = 8;
/// Do not bother shrinking an index smaller than this capacity.
const MIN_INDEX_CAPACITY: usize = 64;

/// The entries of one filter: a dense vector of `(key, value)` pairs plus, for
/// large filters only, an index from key to position in that vector.
pub(super) struct Entries<K, V> {
    items: SmallVec<[(K, V); INLINE]>,
    index: Option<Box<AHashMap<K, usize>>>,
}

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Self {
            items: SmallVec::new(),
            index: None,
        }
    }
}

impl<K, V> Entries<K, V> {
    /// True when the filter has no entries (the node may then be pruned).
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of entries, for tests and invariants.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    /// Reports every entry; this is the hot loop of message fan-out.
    #[inline]
    pub(super) fn for_each<F: FnMut(&K, &V)>(&self, f: &mut F) {
        for (key, value) in &self.items {
            f(key, value);
        }
    }
}

impl<K: Copy + Eq + Hash, V> Entries<K, V> {
    fn position(&self, key: &K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.items.iter().position(|(k, _)| k == key),
        }
    }

    /// The value stored for `key`, if any.
    pub(super) fn get(&self, key: &K) -> Option<&V> {
        let at = self.position(key)?;
        self.items.get(at).map(|(_, value)| value)
    }

    /// Inserts or replaces; returns the replaced value.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let existing = match &self.index {
            Some(index) => index.get(&key).and_then(|&at| self.items.get_mut(at)),
            None => self.items.iter_mut().find(|(k, _)| *k == key),
        };
        if let Some((_, slot)) = existing {
            return Some(mem::replace(slot, value));
        }
        let at = self.items.len();
        self.items.push((key, value));
        match &mut self.index {
            Some(index) => {
                index.insert(key, at);
            }
            None if self.items.len() > INDEX_ABOVE => {
                let mut index = AHashMap::with_capacity(self.items.len() * 2);
                index.extend(self.items.iter().enumerate().map(|(i, (k, _))| (*k, i)));
                self.index = Some(Box::new(index));
            }
            None => {}
        }
        None
    }

    /// Removes `key` in O(1) (swap-remove plus index fix-up) and returns its value.
    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        let at = match &mut self.index {
            Some(index) => index.remove(key)?,
            None => self.items.iter().position(|(k, _)| k == key)?,
        };
        if at >= self.items.len() {
            return None;
        }
        let (_, value) = self.items.swap_remove(at);
        if let Some(index) = &mut self.index {
            // The former last entry now lives at `at`.
            if let Some((moved, _)) = self.items.get(at) {
                if let Some(slot) = index.get_mut(moved) {
                    *slot = at;
                }
            }
        }
        self.shrink();
        Some(value)
    }

    /// Gives memory back once a filter has lost most of its entries, so a
    /// topic that once had 100 k subscribers does not keep 100 k slots forever.
    /// Shrinking only at a quarter of capacity keeps removal amortised O(1).
    fn shrink(&mut self) {
        let len = self.items.len();
        if len < UNINDEX_BELOW {
            self.index = None;
        } else if let Some(index) = &mut self.index {
            if index.capacity() > MIN_INDEX_CAPACITY && len * 4 < index.capacity() {
                index.shrink_to(len * 2);
            }
        }
        if self.items.spilled() && len * 4 <= self.items.capacity() {
            self.items.shrink_to_fit();
        }
    }
}

//! Trie nodes: one node per distinct filter prefix (level sequence).
//!
//! Layout choices, all for memory (millions of filters) and matching speed:
//! * a node is just its entries plus an optional boxed [`Children`], so a leaf
//!   (the common case: the last level of a filter) costs no child storage;
//! * exact-level children are a short list while there are few of them (most
//!   nodes have one or two children and a string compare beats hashing) and an
//!   `AHashMap<LevelName, Node>` once there are many (short names inline);
//! * `+` and `#` have dedicated slots so matching never hashes a wildcard; a
//!   `#` level is always the last one, so its slot is just the entries.
//!
//! Nothing here recurses over the depth of the trie (filters may have tens of
//! thousands of levels): walks are loops and [`Node`]'s `Drop` is iterative.

use std::hash::Hash;
use std::mem;

use ahash::AHashMap;
use smallvec::SmallVec;

use super::entries::Entries;
use super::level::LevelName;

/// Above this many exact children a node switches from a list to a hash map.
const FEW_MAX: usize = 8;
/// Below this many exact children a map-based node goes back to a list.
const FEW_MIN: usize = 4;
/// Do not bother shrinking a child map smaller than this capacity.
const MIN_MAP_CAPACITY: usize = 64;

/// One level sequence of the trie; `entries` belong to the filter that ends here.
pub(super) struct Node<K, V> {
    pub(super) entries: Entries<K, V>,
    pub(super) children: Option<Box<Children<K, V>>>,
}

/// Everything below a node. Exists only while at least one slot is occupied.
pub(super) struct Children<K, V> {
    pub(super) exact: Option<Exact<K, V>>,
    pub(super) plus: Option<Box<Node<K, V>>>,
    /// Entries of the filter `<this prefix>/#`; present only while non-empty.
    pub(super) hash: Option<Box<Entries<K, V>>>,
}

/// Exact-level children, keyed by the level string.
pub(super) enum Exact<K, V> {
    /// Up to [`FEW_MAX`] children, scanned linearly. `head` is non-optional so a
    /// child can always be handed out by reference without an unwrap: lookups
    /// for insertion move the wanted child into `head`.
    Few {
        head: (LevelName, Node<K, V>),
        tail: Vec<(LevelName, Node<K, V>)>,
    },
    /// Many children (for example one per device under a region). Not boxed:
    /// the map is smaller than the `Few` variant, and boxing would add a cache
    /// miss to every lookup.
    Many(AHashMap<LevelName, Node<K, V>>),
}

impl<K, V> Default for Children<K, V> {
    fn default() -> Self {
        Self {
            exact: None,
            plus: None,
            hash: None,
        }
    }
}

impl<K, V> Node<K, V> {
    /// An empty node.
    pub(super) fn new() -> Self {
        Self {
            entries: Entries::default(),
            children: None,
        }
    }

    /// True when nothing is stored at or below this node, so it can be pruned.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.children.is_none()
    }

    /// Whether this node must stay if the single child on some path below it is
    /// removed: it holds entries itself, a `#` filter, or other children.
    pub(super) fn survives_losing_one_child(&self) -> bool {
        !self.entries.is_empty()
            || self
                .children
                .as_deref()
                .is_some_and(|c| c.hash.is_some() || c.child_count() > 1)
    }

    /// The child for a filter level (`+` means the wildcard slot).
    pub(super) fn child(&self, level: &[u8]) -> Option<&Node<K, V>> {
        let children = self.children.as_deref()?;
        if level == b"+" {
            children.plus.as_deref()
        } else {
            children.exact.as_ref()?.get(level)
        }
    }

    /// Mutable [`Node::child`].
    pub(super) fn child_mut(&mut self, level: &[u8]) -> Option<&mut Node<K, V>> {
        let children = self.children.as_deref_mut()?;
        if level == b"+" {
            children.plus.as_deref_mut()
        } else {
            children.exact.as_mut()?.get_mut(level)
        }
    }

    /// Walks (creating as needed) to the entries of `filter`, counting the nodes
    /// created in `created` (a `#` slot counts as a node).
    pub(super) fn entries_or_insert<'a>(
        &'a mut self,
        filter: &str,
        created: &mut usize,
    ) -> &'a mut Entries<K, V> {
        let mut node = self;
        let mut levels = levels_of(filter);
        let mut next = levels.next();
        while let Some(level) = next {
            next = levels.next();
            let children = node.children.get_or_insert_with(Box::default);
            if next.is_none() && level == b"#" {
                return children.hash.get_or_insert_with(|| {
                    *created += 1;
                    Box::default()
                });
            }
            node = children.child_or_insert(level, created);
        }
        &mut node.entries
    }

    /// The entries of `filter`, if the filter has a node.
    pub(super) fn entries(&self, filter: &str) -> Option<&Entries<K, V>> {
        let mut node = self;
        let mut levels = levels_of(filter);
        let mut next = levels.next();
        while let Some(level) = next {
            next = levels.next();
            if next.is_none() && level == b"#" {
                return node.children.as_deref()?.hash.as_deref();
            }
            node = node.child(level)?;
        }
        Some(&node.entries)
    }

    /// Removes the child for filter level `level_index` of `filter` below the
    /// node reached by the levels before it, dropping that whole branch.
    pub(super) fn detach_branch(&mut self, filter: &str, level_index: usize) {
        let mut node = self;
        let mut levels = levels_of(filter);
        for _ in 0..level_index {
            let Some(next) = levels.next().and_then(|level| node.child_mut(level)) else {
                return;
            };
            node = next;
        }
        let Some(level) = levels.next() else {
            return;
        };
        if let Some(children) = node.children.as_deref_mut() {
            children.remove_child(level);
            if children.is_empty() {
                node.children = None;
            }
        }
    }
}

impl<K: Copy + Eq + Hash, V> Node<K, V> {
    /// First half of a removal: walks to `filter`, removes `key` from it and
    /// cleans the node it ended on. Pruning the branch is left to the caller
    /// (see [`Taken::prune_at`]), because it needs a second walk from the root.
    pub(super) fn take_entry(&mut self, filter: &str, key: &K) -> Option<Taken<V>> {
        let mut node = self;
        let mut depth = 0usize;
        let mut cut = 0usize;
        let mut levels = levels_of(filter);
        let mut next = levels.next();
        let mut in_hash_slot = false;
        while let Some(level) = next {
            next = levels.next();
            if next.is_none() && level == b"#" {
                in_hash_slot = true;
                break;
            }
            if node.survives_losing_one_child() {
                cut = depth;
            }
            node = node.child_mut(level)?;
            depth += 1;
        }
        let (value, filter_now_empty) = if in_hash_slot {
            let children = node.children.as_deref_mut()?;
            let hash = children.hash.as_deref_mut()?;
            let value = hash.remove(key)?;
            let empty = hash.is_empty();
            if empty {
                children.hash = None;
            }
            (value, empty)
        } else {
            let value = node.entries.remove(key)?;
            (value, node.entries.is_empty())
        };
        if node.children.as_deref().is_some_and(Children::is_empty) {
            node.children = None;
        }
        let prune_at = (depth > 0 && node.is_empty()).then_some(cut);
        Some(Taken {
            value,
            filter_now_empty,
            hash_slot_freed: in_hash_slot && filter_now_empty,
            prune_at,
            depth,
        })
    }
}

/// The levels of a filter, as bytes (a filter always has at least one level).
fn levels_of(filter: &str) -> impl Iterator<Item = &[u8]> {
    filter.as_bytes().split(|&b| b == b'/')
}

/// Outcome of [`Node::take_entry`].
pub(super) struct Taken<V> {
    pub(super) value: V,
    pub(super) filter_now_empty: bool,
    /// The `#` slot the entry came from is now gone (one node fewer).
    pub(super) hash_slot_freed: bool,
    /// The node the filter ended on is now empty: detach the branch starting at
    /// this level index (the levels above it belong to surviving nodes).
    pub(super) prune_at: Option<usize>,
    /// Depth of the node the walk ended on (root = 0).
    pub(super) depth: usize,
}

impl<K, V> Children<K, V> {
    /// True when no slot is occupied (the box can be freed).
    pub(super) fn is_empty(&self) -> bool {
        self.exact.is_none() && self.plus.is_none() && self.hash.is_none()
    }

    /// Number of child nodes (exact plus `+`; the `#` slot is not a child node).
    fn child_count(&self) -> usize {
        self.exact.as_ref().map_or(0, Exact::len) + usize::from(self.plus.is_some())
    }

    /// The child for filter level `level`, created if missing.
    fn child_or_insert(&mut self, level: &[u8], created: &mut usize) -> &mut Node<K, V> {
        if level == b"+" {
            return self.plus.get_or_insert_with(|| {
                *created += 1;
                Box::new(Node::new())
            });
        }
        self.exact
            .get_or_insert_with(|| {
                *created += 1;
                Exact::Few {
                    head: (LevelName::new(level), Node::new()),
                    tail: Vec::new(),
                }
            })
            .get_or_insert(level, created)
    }

    /// Drops the child for filter level `level` (and its whole subtree).
    fn remove_child(&mut self, level: &[u8]) {
        if level == b"+" {
            self.plus = None;
            return;
        }
        let Some(exact) = self.exact.as_mut() else {
            return;
        };
        match exact {
            Exact::Few { head, tail } => {
                if head.0.is(level) {
                    match tail.pop() {
                        Some(last) => *head = last,
                        None => self.exact = None,
                    }
                } else {
                    tail.retain(|(name, _)| !name.is(level));
                    if tail.capacity() > 2 * tail.len() {
                        tail.shrink_to_fit();
                    }
                }
            }
            Exact::Many(map) => {
                map.remove(level);
                if map.len() < FEW_MIN {
                    let mut remaining = mem::take(map).into_iter();
                    self.exact = remaining.next().map(|head| Exact::Few {
                        head,
                        tail: remaining.collect(),
                    });
                } else if map.capacity() > MIN_MAP_CAPACITY && map.len() * 4 < map.capacity() {
                    let target = map.len() * 2;
                    map.shrink_to(target);
                }
            }
        }
    }

    /// Calls `f` on every child node (used by the iterative drop).
    fn for_each_child_mut(&mut self, mut f: impl FnMut(&mut Node<K, V>)) {
        match &mut self.exact {
            Some(Exact::Few { head, tail }) => {
                f(&mut head.1);
                tail.iter_mut().for_each(|(_, node)| f(node));
            }
            Some(Exact::Many(map)) => map.values_mut().for_each(&mut f),
            None => {}
        }
        if let Some(plus) = self.plus.as_deref_mut() {
            f(plus);
        }
    }
}

impl<K, V> Exact<K, V> {
    fn len(&self) -> usize {
        match self {
            Exact::Few { tail, .. } => 1 + tail.len(),
            Exact::Many(map) => map.len(),
        }
    }

    /// The child named exactly `level` (no wildcard interpretation).
    #[inline(always)]
    pub(super) fn get(&self, level: &[u8]) -> Option<&Node<K, V>> {
        match self {
            Exact::Few { head, tail } => {
                if head.0.is(level) {
                    Some(&head.1)
                } else {
                    tail.iter()
                        .find(|(name, _)| name.is(level))
                        .map(|(_, node)| node)
                }
            }
            Exact::Many(map) => map.get(level),
        }
    }

    fn get_mut(&mut self, level: &[u8]) -> Option<&mut Node<K, V>> {
        match self {
            Exact::Few { head, tail } => {
                if head.0.is(level) {
                    Some(&mut head.1)
                } else {
                    tail.iter_mut()
                        .find(|(name, _)| name.is(level))
                        .map(|(_, node)| node)
                }
            }
            Exact::Many(map) => map.get_mut(level),
        }
    }

    fn get_or_insert(&mut self, level: &[u8], created: &mut usize) -> &mut Node<K, V> {
        if let Exact::Few { head, tail } = self {
            let missing = !head.0.is(level) && !tail.iter().any(|(name, _)| name.is(level));
            if missing && tail.len() + 1 >= FEW_MAX {
                self.promote();
            }
        }
        match self {
            Exact::Few { head, tail } => {
                if !head.0.is(level) {
                    // Move the wanted child into `head` so it can be returned
                    // without a fallible index (and hot children stay in front).
                    if let Some(slot) = tail.iter_mut().find(|(name, _)| name.is(level)) {
                        mem::swap(head, slot);
                    } else {
                        *created += 1;
                        let old = mem::replace(head, (LevelName::new(level), Node::new()));
                        tail.push(old);
                    }
                }
                &mut head.1
            }
            Exact::Many(map) => {
                // remove + re-insert hands back a `&mut` without an unwrap and
                // without allocating the key again for an existing child.
                let (name, node) = map.remove_entry(level).unwrap_or_else(|| {
                    *created += 1;
                    (LevelName::new(level), Node::new())
                });
                map.entry(name).or_insert(node)
            }
        }
    }

    /// Turns a full list into a map.
    fn promote(&mut self) {
        let old = mem::replace(self, Exact::Many(AHashMap::default()));
        match (old, self) {
            (Exact::Few { head, tail }, Exact::Many(map)) => {
                map.reserve(2 * FEW_MAX);
                map.insert(head.0, head.1);
                map.extend(tail);
            }
            (old, this) => *this = old,
        }
    }
}

impl<K, V> Drop for Node<K, V> {
    /// Iterative, so dropping a filter with 100 k levels cannot overflow the stack.
    fn drop(&mut self) {
        let Some(first) = self.children.take() else {
            return;
        };
        let mut pending: SmallVec<[Box<Children<K, V>>; 16]> = SmallVec::new();
        pending.push(first);
        while let Some(mut children) = pending.pop() {
            children.for_each_child_mut(|node| {
                if let Some(grandchildren) = node.children.take() {
                    pending.push(grandchildren);
                }
            });
            // `children` drops here; its nodes no longer own any children.
        }
    }
}

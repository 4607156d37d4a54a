//! A hasher state that takes no room in the map that uses it.
//!
//! `ahash::RandomState` is 32 bytes, stored in every map. Per-session maps (the
//! subscriptions, the in-flight index, the QoS 2 packet ids awaiting PUBREL) would pay
//! that per client; [`RandomKeys`] is zero-sized and reads one set of keys, drawn at
//! random once per process, so keys a client chooses still cannot be aimed at
//! collisions.

use std::hash::BuildHasher;
use std::sync::OnceLock;

static KEYS: OnceLock<ahash::RandomState> = OnceLock::new();

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomKeys;

impl BuildHasher for RandomKeys {
    type Hasher = ahash::AHasher;

    fn build_hasher(&self) -> ahash::AHasher {
        KEYS.get_or_init(ahash::RandomState::new).build_hasher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_sized_and_consistent() {
        assert_eq!(std::mem::size_of::<RandomKeys>(), 0);
        assert_eq!(RandomKeys.hash_one("a/b"), RandomKeys.hash_one("a/b"));
        assert_ne!(RandomKeys.hash_one("a/b"), RandomKeys.hash_one("a/c"));
    }
}

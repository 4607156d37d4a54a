//! Level names as stored in the trie: short names inline, long ones boxed.
//!
//! Nearly every MQTT level is short (`telemetry`, `d123456`, `eu-west-1`), and
//! with millions of nodes a `Box<str>` per level would cost a heap allocation
//! (16 bytes of pointer plus at least 32 bytes of allocation) and, worse, a
//! pointer chase into cold memory on every comparison while matching. Names of up
//! to [`INLINE_NAME`] bytes live inside the node entry instead (24 bytes total).
//!
//! Names are bytes, compared byte-exactly (MQTT levels are case-sensitive and
//! spaces are significant), and they hash and compare exactly like `[u8]`, so a
//! hash map keyed by [`LevelName`] is queried with a plain `&[u8]`.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

/// Longest name stored inline; with the tag and length byte this makes 24 bytes.
const INLINE_NAME: usize = 22;

/// The name of one exact level.
pub(super) enum LevelName {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Heap(Box<[u8]>),
}

impl LevelName {
    /// Copies `level` into a name, inline when it fits.
    pub(super) fn new(level: &[u8]) -> Self {
        match u8::try_from(level.len()) {
            Ok(len) if level.len() <= INLINE_NAME => {
                let mut bytes = [0u8; INLINE_NAME];
                bytes
                    .iter_mut()
                    .zip(level)
                    .for_each(|(dst, src)| *dst = *src);
                LevelName::Inline { len, bytes }
            }
            _ => LevelName::Heap(level.into()),
        }
    }

    /// The name's bytes.
    #[inline]
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            LevelName::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(&[]),
            LevelName::Heap(bytes) => bytes,
        }
    }

    /// Equality with a cheap pre-check: sibling names tend to share a length
    /// (`d1001`, `d1002`), so compare the last byte before the full comparison.
    #[inline]
    pub(super) fn is(&self, level: &[u8]) -> bool {
        let name = self.as_bytes();
        name.len() == level.len() && name.last() == level.last() && name == level
    }
}

impl Borrow<[u8]> for LevelName {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for LevelName {
    /// Hashes exactly like `[u8]`, as `Borrow<[u8]>` requires.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for LevelName {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for LevelName {}

//! The shard's index from client id to session key.
//!
//! The session already holds its client id, so the index holds only the sessions'
//! slab keys and hashes and compares through the sessions' own ids: 4 bytes a slot
//! instead of a second `ByteString` and the key (40 bytes), and no shared header for
//! a second handle on the id's bytes. Used on CONNECT and when a session ends, never
//! per message.
//!
//! Every key in the index must be a session in the slab: a key taken out of the slab
//! is taken out of the index at once, before anything can insert (a rehash reads
//! each key's id).

use super::SessionEntry;
use hashbrown::HashTable;
use slab::Slab;

/// See the module documentation.
#[derive(Default)]
pub(super) struct Clients {
    keys: HashTable<u32>,
    hasher: ahash::RandomState,
}

fn id(sessions: &Slab<SessionEntry>, key: u32) -> &str {
    sessions
        .get(key as usize)
        .map_or("", |e| e.session.client_id())
}

impl Clients {
    fn hash(&self, client_id: &str) -> u64 {
        self.hasher.hash_one(client_id)
    }

    /// The key of the session of `client_id`, if it has one here.
    pub(super) fn get(&self, sessions: &Slab<SessionEntry>, client_id: &str) -> Option<usize> {
        self.keys
            .find(self.hash(client_id), |&k| id(sessions, k) == client_id)
            .map(|&k| k as usize)
    }

    /// Indexes the session `key` under its client id, which no other session here
    /// has.
    pub(super) fn insert(&mut self, sessions: &Slab<SessionEntry>, key: usize) {
        let hash = self.hash(id(sessions, key as u32));
        let hasher = &self.hasher;
        self.keys
            .insert_unique(hash, key as u32, |&k| hasher.hash_one(id(sessions, k)));
    }

    /// Forgets the session `key`, whose client id was `client_id` (the session may
    /// already be out of the slab).
    pub(super) fn remove(&mut self, client_id: &str, key: usize) {
        if let Ok(e) = self
            .keys
            .find_entry(self.hash(client_id), |&k| k as usize == key)
        {
            e.remove();
        }
    }
}

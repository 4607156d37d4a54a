//! What travels between shards, and the per-destination outboxes that batch it.
//!
//! Everything a shard sends to another goes into that destination's [`Outbox`]; one
//! flusher task per destination moves the whole outbox as a single channel item. A
//! shard's receive side only ever appends to outboxes, never waits on a send, so no
//! two shards can wait on each other.

use crate::message::Message;
use crate::protocol::Connect;
use bytes::Bytes;
use bytestring::ByteString;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::task::Waker;

/// Version of a retained-store update: a Lamport clock plus the origin shard, so
/// every shard settles on the same winner when two updates of one topic race.
pub type RetainVersion = (u64, u16);

/// A connection counted against `max_connections`; the count drops when this is
/// dropped, on whichever shard the connection ends.
pub type ConnSlot = crate::ConnectionSlot;

/// One item of cross-shard traffic.
pub enum MeshMsg {
    /// A publish from one of the sender's clients, for the receiver's local
    /// subscribers only (never forwarded again).
    Publish(Message),
    /// A message for one member of a shared-subscription group (see [`SharedFor`]).
    /// The group's part is boxed: every item of the mesh is as large as the largest.
    Shared { msg: Message, to: Box<SharedFor> },
    /// A retained-store update (empty payload: delete), sent to every shard.
    Retain {
        msg: Message,
        version: RetainVersion,
    },
    /// The sender now has subscribers for these filters; answer with `InterestAck`.
    InterestAdd {
        filters: Vec<ByteString>,
        token: u64,
    },
    /// The receiver recorded an `InterestAdd`.
    InterestAck { token: u64 },
    /// The sender no longer has subscribers for this filter.
    InterestRemove { filter: ByteString },
    /// A connection whose CONNECT arrived on the sender but whose client id lives on
    /// the receiver.
    Handoff(Box<Handoff>),
    /// Log compaction: the sender reads no client and everything it sent before
    /// this has arrived.
    Barrier,
}

/// Where a [`MeshMsg::Shared`] message goes: the receiver gives it to one of its
/// connected members of `group` (its whole `$share/...` string), or hands it on to
/// the next shard of the group; `hops` counts the shards that had no connected
/// member, and the last one asked queues it in an offline persistent member.
pub struct SharedFor {
    pub group: ByteString,
    /// The publisher's hash, with `hash_client`.
    pub hash: u64,
    pub hops: u16,
}

/// A socket moving to its home shard with everything read from it so far.
pub struct Handoff {
    pub fd: OwnedFd,
    /// TLS and WebSocket state, for a connection on such a listener (rustls's
    /// connection is `Send`): the handshake is done, CONNECT read.
    pub wire: Option<Box<crate::link::wire::Wire>>,
    /// Boxed: it is held for the whole life of the connection's task.
    pub connect: Box<Connect>,
    /// Bytes read after the CONNECT packet.
    pub leftover: Bytes,
    pub peer: SocketAddr,
    pub slot: ConnSlot,
    /// Index of the listener it came through.
    pub listener: u16,
}

/// The batch one channel item carries.
pub type Batch = Vec<MeshMsg>;

/// Pending traffic for one destination shard.
#[derive(Default)]
pub struct Outbox {
    items: RefCell<Vec<MeshMsg>>,
    publishes: Cell<usize>,
    flusher: Cell<Option<Waker>>,
}

impl Outbox {
    /// Appends an item and wakes the flusher (it runs once the current task yields,
    /// so everything appended in one read batch leaves as one channel item).
    pub fn push(&self, msg: MeshMsg) {
        if matches!(msg, MeshMsg::Publish(_) | MeshMsg::Shared { .. }) {
            self.publishes.set(self.publishes.get() + 1);
        }
        self.items.borrow_mut().push(msg);
        if let Some(w) = self.flusher.take() {
            w.wake();
        }
    }

    /// Publishes waiting to leave; the backpressure signal.
    pub fn pending_publishes(&self) -> usize {
        self.publishes.get()
    }

    /// Takes everything pending, or registers the flusher's waker when empty.
    pub fn take_or_register(&self, waker: &Waker) -> Option<Batch> {
        let mut items = self.items.borrow_mut();
        if items.is_empty() {
            self.flusher.set(Some(waker.clone()));
            None
        } else {
            self.publishes.set(0);
            Some(std::mem::take(&mut *items))
        }
    }
}

#[cfg(test)]
mod tests {
    /// Outboxes hold `MeshMsg`s by value: a variant larger than a forwarded
    /// publish's would cost every cross-shard message.
    #[test]
    fn a_mesh_item_is_no_larger_than_a_retained_update() {
        let size = std::mem::size_of::<super::MeshMsg>();
        assert!(size <= 96, "MeshMsg is {size} bytes");
    }
}

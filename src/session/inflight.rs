//! The outgoing in-flight window: QoS 1/2 PUBLISHes this broker sent to the client and
//! that the client has not yet fully acknowledged, kept in send order.
//!
//! Send order matters because a resumed session resends them in that order
//! [MQTT-4.4.0-1, MQTT-4.6.0-1]; lookup by packet id matters because acks name the id.
//! Slots live in a `VecDeque` in send order, each stamped with a monotonically growing
//! sequence number; a map takes a packet id to its slot's sequence number. An ack for the
//! oldest slot (the usual case) pops it in O(1); an out-of-order ack leaves a tombstone,
//! found by direct indexing or, after a compaction, by binary search on the sequence
//! numbers (O(log window)). Tombstones at the front are popped at once and the deque is
//! compacted when they outnumber the live slots, so the memory stays O(window) and the
//! work amortised O(1) per ack.

use super::queue::cost;
use crate::message::Message;
use crate::protocol::QoS;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

/// Where one outgoing QoS 1/2 flow stands.
#[derive(Debug)]
pub(crate) enum Stage {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2). The message (with its
    /// effective QoS) is kept so it can be resent on resume.
    Published(Message),
    /// QoS 2 only: PUBREC received and PUBREL sent; waiting for PUBCOMP. The message is
    /// no longer needed: the PUBLISH must never be resent once PUBREL was sent. Keeps
    /// the message's log stamp ([`Message::stamp`]) for the durable log.
    Released(u64),
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    pkid: u16,
    /// The shared-subscription group the message was given to this session for
    /// (the shard's group id), 0 for none: such a flow can be handed to another
    /// member when this one leaves. Lies in what would be padding.
    tag: u32,
    /// `None` is a tombstone left by an out-of-order completion.
    stage: Option<Stage>,
}

/// Tombstones are compacted away once there are more of them than this and more of them
/// than live slots; below it the deque is small enough that they cost nothing.
const COMPACT_MIN_TOMBSTONES: usize = 16;

/// See the module documentation. Held only while a session has a QoS 1/2 flow: a
/// session with none (most of an idle fleet, and every session between bursts)
/// holds a null pointer. A drained window goes back to this thread's spares
/// ([`SPARE`]), and the next session that needs one takes it from there, so a client
/// that acknowledges each message before the next arrives allocates nothing per
/// message either. A window that grew past [`SPARE_SLOTS_MAX`] stays with its
/// session when it drains, as every window did before: a session that keeps many
/// messages in flight would otherwise grow a window again for every burst. The packet
/// id cycle's position is the session's, so that ids go on cycling across windows.
#[derive(Debug, Default)]
pub(crate) struct Inflight(Option<Box<Flows>>);

/// Drained windows kept per thread at most. A spare is empty but keeps its
/// capacity (at most about 2 KiB; 560 bytes for a window that held up to 4 flows),
/// and the spares are never more than the windows that were held at once: enough
/// for a fan-out at QoS 1 to thousands of sessions that each acknowledge before the
/// next message, without an allocation per delivery.
const SPARES_MAX: usize = 4096;
/// A drained window with room for more flows than this stays with its session.
const SPARE_SLOTS_MAX: usize = 16;

/// The boxes move between the sessions and the spares as they are, never copied.
#[allow(clippy::vec_box)]
type Spares = RefCell<Vec<Box<Flows>>>;

thread_local! {
    /// Drained in-flight windows, for reuse by this thread's sessions.
    static SPARE: Spares = const { RefCell::new(Vec::new()) };
}

impl Inflight {
    pub(crate) fn new() -> Inflight {
        Inflight(None)
    }

    fn get(&self) -> Option<&Flows> {
        self.0.as_deref()
    }

    fn get_or_init(&mut self) -> &mut Flows {
        self.0.get_or_insert_with(|| {
            SPARE
                .try_with(|s| s.borrow_mut().pop())
                .ok()
                .flatten()
                .unwrap_or_else(|| Box::new(Flows::new()))
        })
    }

    /// Gives a small window back once nothing is in flight (to the spares while
    /// they have room, else to the allocator).
    fn release_if_empty(&mut self) {
        let small_and_drained = self.0.as_deref().is_some_and(|f| {
            f.index.is_empty()
                && f.slots.capacity() <= SPARE_SLOTS_MAX
                && f.index.capacity() <= SPARE_SLOTS_MAX
        });
        if !small_and_drained {
            return;
        }
        if let Some(mut f) = self.0.take() {
            f.clear();
            let _ = SPARE.try_with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < SPARES_MAX {
                    s.push(f);
                }
            });
        }
    }

    /// Number of flows in flight (awaiting PUBACK, PUBREC or PUBCOMP).
    pub(crate) fn len(&self) -> usize {
        self.get().map_or(0, Flows::len)
    }

    /// Topic + payload bytes held for resending.
    pub(crate) fn bytes(&self) -> usize {
        self.get().map_or(0, |f| f.bytes)
    }

    /// The next free packet id, cycling through 1..=65535 and skipping ids still in
    /// flight [MQTT-2.3.1-2]. `None` only when all 65535 ids are in flight. The id is
    /// not reserved until [`Inflight::insert_tagged`]. `next` is the position of the
    /// cycle, which the session keeps.
    pub(crate) fn next_free_pkid(&self, next: &mut u16) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = (*next).max(1);
            *next = if id == u16::MAX { 1 } else { id + 1 };
            if self.get().is_none_or(|f| !f.index.contains_key(&id)) {
                return Some(id);
            }
        }
        None
    }

    /// Records a PUBLISH sent with `pkid`, given through shared-subscription group
    /// `tag` (0: none); false (and nothing changes) if the id is 0 or in use.
    pub(crate) fn insert_tagged(&mut self, pkid: u16, msg: Message, tag: u32) -> bool {
        if !self.is_free(pkid) {
            return false;
        }
        self.get_or_init().insert(pkid, msg, tag)
    }

    /// Removes every QoS 1 flow still awaiting PUBACK that came through a
    /// shared-subscription group `take` accepts, in send order, with its group id.
    /// A QoS 2 flow stays once its PUBLISH went out: the delivery must be completed to
    /// that client when it reconnects, and to no other [MQTT-4.8.2-4, MQTT-4.8.2-5].
    pub(crate) fn take_tagged(&mut self, take: &mut dyn FnMut(u32) -> bool) -> Vec<(Message, u32)> {
        let Some(f) = self.0.as_deref_mut() else {
            return Vec::new();
        };
        let pkids: Vec<(u16, u32)> = f
            .slots
            .iter()
            .filter(|s| {
                s.tag != 0
                    && matches!(&s.stage, Some(Stage::Published(m)) if m.qos == QoS::AtLeastOnce)
                    && take(s.tag)
            })
            .map(|s| (s.pkid, s.tag))
            .collect();
        let mut taken = Vec::with_capacity(pkids.len());
        for (pkid, tag) in pkids {
            if let Some(Stage::Published(m)) = f.remove(pkid) {
                taken.push((m, tag));
            }
        }
        self.release_if_empty();
        taken
    }

    pub(crate) fn get_mut(&mut self, pkid: u16) -> Option<&mut Stage> {
        self.0.as_deref_mut()?.get_mut(pkid)
    }

    /// PUBREC for a QoS 2 flow: see [`Flows::release`].
    pub(crate) fn release(&mut self, pkid: u16) -> bool {
        self.0.as_deref_mut().is_some_and(|f| f.release(pkid))
    }

    pub(crate) fn remove(&mut self, pkid: u16) -> Option<Stage> {
        let stage = self.0.as_deref_mut()?.remove(pkid);
        self.release_if_empty();
        stage
    }

    /// Live flows in send order, for resending on resume.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u16, &Stage)> {
        self.get().into_iter().flat_map(Flows::iter)
    }

    /// [`Inflight::iter`] with each flow's shared-subscription group id (0: none).
    pub(crate) fn iter_tagged(&self) -> impl Iterator<Item = (u16, u32, &Stage)> {
        self.get().into_iter().flat_map(|f| {
            f.slots
                .iter()
                .filter_map(|s| s.stage.as_ref().map(|st| (s.pkid, s.tag, st)))
        })
    }

    /// Changes the log stamp of every flow (`f` maps old to new; see
    /// [`Message::stamp`]).
    pub(crate) fn restamp(&mut self, f: &mut dyn FnMut(&Message) -> u64) {
        if let Some(flows) = self.0.as_deref_mut() {
            for slot in flows.slots.iter_mut() {
                match &mut slot.stage {
                    Some(Stage::Published(m)) => m.stamp = f(m).into(),
                    Some(Stage::Released(stamp)) => *stamp = 0,
                    None => {}
                }
            }
        }
    }

    /// Whether `pkid` is a usable packet id not in flight.
    pub(crate) fn is_free(&self, pkid: u16) -> bool {
        pkid != 0 && self.get().is_none_or(|f| !f.index.contains_key(&pkid))
    }

    /// Records a QoS 2 flow restored past PUBREC; false if `pkid` is 0 or in use.
    pub(crate) fn insert_released(&mut self, pkid: u16, stamp: u64) -> bool {
        if !self.is_free(pkid) {
            return false;
        }
        let f = self.get_or_init();
        let seq = f.next_seq;
        f.next_seq += 1;
        f.index.insert(pkid, seq);
        f.slots.push_back(Slot {
            seq,
            pkid,
            tag: 0,
            stage: Some(Stage::Released(stamp)),
        });
        true
    }

    /// Whether a window is held (tests check that a drained one is given back).
    #[cfg(test)]
    pub(crate) fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// Slots held including tombstones (tests check the bound).
    #[cfg(test)]
    pub(crate) fn slot_count(&self) -> usize {
        self.get().map_or(0, Flows::slot_count)
    }
}

/// The window itself, behind [`Inflight`]'s pointer.
#[derive(Debug)]
struct Flows {
    slots: VecDeque<Slot>,
    index: HashMap<u16, u64, crate::hash::RandomKeys>,
    next_seq: u64,
    tombstones: usize,
    /// Topic + payload bytes of the messages held (flows not yet released).
    bytes: usize,
}

impl Flows {
    fn new() -> Flows {
        Flows {
            slots: VecDeque::new(),
            index: HashMap::default(),
            next_seq: 0,
            tombstones: 0,
            bytes: 0,
        }
    }

    /// Empties a drained window for reuse, keeping its capacity.
    fn clear(&mut self) {
        self.slots.clear();
        self.index.clear();
        self.next_seq = 0;
        self.tombstones = 0;
        self.bytes = 0;
    }

    /// Number of flows in flight (awaiting PUBACK, PUBREC or PUBCOMP).
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Records a just-sent PUBLISH under `pkid` (from [`Inflight::next_free_pkid`]).
    /// Returns false, recording nothing, if the id is 0 or already in flight.
    pub(crate) fn insert(&mut self, pkid: u16, msg: Message, tag: u32) -> bool {
        if pkid == 0 || self.index.contains_key(&pkid) {
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += cost(&msg);
        self.index.insert(pkid, seq);
        self.slots.push_back(Slot {
            seq,
            pkid,
            tag,
            stage: Some(Stage::Published(msg)),
        });
        true
    }

    fn position(&self, pkid: u16) -> Option<usize> {
        let seq = *self.index.get(&pkid)?;
        let front = self.slots.front()?.seq;
        // Without compaction since the front, slot i has sequence number front + i.
        let guess = usize::try_from(seq.checked_sub(front)?).ok()?;
        if self.slots.get(guess).is_some_and(|s| s.seq == seq) {
            return Some(guess);
        }
        self.slots.binary_search_by_key(&seq, |s| s.seq).ok()
    }

    /// The stage of the flow using `pkid`, if any.
    pub(crate) fn get_mut(&mut self, pkid: u16) -> Option<&mut Stage> {
        let i = self.position(pkid)?;
        self.slots.get_mut(i)?.stage.as_mut()
    }

    /// PUBREC arrived for the QoS 2 flow using `pkid`: the message is no longer
    /// needed, only the PUBREL stage. False if the flow is not a published QoS 2 one.
    pub(crate) fn release(&mut self, pkid: u16) -> bool {
        let Some(stage) = self.get_mut(pkid) else {
            return false;
        };
        let Stage::Published(m) = stage else {
            return false;
        };
        if m.qos != QoS::ExactlyOnce {
            return false;
        }
        let c = cost(m);
        *stage = Stage::Released(m.stamp.get());
        self.bytes -= c;
        true
    }

    /// Completes the flow using `pkid`, freeing the id and its window slot.
    pub(crate) fn remove(&mut self, pkid: u16) -> Option<Stage> {
        let i = self.position(pkid)?;
        let stage = self.slots.get_mut(i)?.stage.take()?;
        if let Stage::Published(m) = &stage {
            self.bytes -= cost(m);
        }
        self.index.remove(&pkid);
        self.tombstones += 1;
        while self.slots.front().is_some_and(|s| s.stage.is_none()) {
            self.slots.pop_front();
            self.tombstones -= 1;
        }
        while self.slots.back().is_some_and(|s| s.stage.is_none()) {
            self.slots.pop_back();
            self.tombstones -= 1;
        }
        if self.tombstones > COMPACT_MIN_TOMBSTONES && self.tombstones > self.index.len() {
            self.slots.retain(|s| s.stage.is_some());
            self.tombstones = 0;
        }
        Some(stage)
    }

    /// Live flows in send order, for resending on resume.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u16, &Stage)> {
        self.slots
            .iter()
            .filter_map(|s| s.stage.as_ref().map(|st| (s.pkid, st)))
    }

    /// Slots held including tombstones (tests check the bound).
    #[cfg(test)]
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }
}

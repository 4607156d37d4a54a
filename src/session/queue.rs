//! The bounded FIFO of messages waiting to go out to the client (offline, write buffer
//! full, or in-flight window full).
//!
//! It is bounded by a message count and by bytes (payload + topic), and QoS 0 messages are
//! evicted before a QoS 1/2 message is refused. To evict the oldest QoS 0 message in O(1)
//! without tombstones, QoS 0 and QoS 1/2 messages live in two deques, each entry stamped
//! with a sequence number; the FIFO front is whichever deque's front is older.

use super::{DropReason, Limits};
use crate::message::Message;
use crate::protocol::QoS;
use std::collections::VecDeque;

#[derive(Debug)]
struct Entry {
    seq: u64,
    /// `msg.qos` is the effective (already downgraded) QoS.
    msg: Message,
}

/// See the module documentation. Allocated on the first message queued: a session that
/// never queues (most of an idle fleet) holds a null pointer. The evictions counter is
/// cumulative, so the queue is kept once allocated.
#[derive(Debug, Default)]
pub(crate) struct Queue(Option<Box<Fifo>>);

impl Queue {
    pub(crate) fn new() -> Queue {
        Queue(None)
    }

    fn get(&self) -> Option<&Fifo> {
        self.0.as_deref()
    }

    pub(crate) fn len(&self) -> usize {
        self.get().map_or(0, Fifo::len)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.get().is_none_or(Fifo::is_empty)
    }

    pub(crate) fn bytes(&self) -> usize {
        self.get().map_or(0, |f| f.bytes)
    }

    /// QoS 0 messages evicted so far to make room for QoS 1/2 ones.
    pub(crate) fn evicted(&self) -> u64 {
        self.get().map_or(0, |f| f.evicted)
    }

    /// See [`Fifo::push`]; `tag`: the shared-subscription group the message came
    /// through (0: none; only QoS 1/2 messages keep it).
    pub(crate) fn push_tagged(
        &mut self,
        msg: Message,
        tag: u32,
        limits: &Limits,
    ) -> Result<(), DropReason> {
        self.0
            .get_or_insert_with(|| Box::new(Fifo::new()))
            .push(msg, tag, limits)
    }

    /// Removes every queued QoS 1/2 message that came through a shared-subscription
    /// group `take` accepts, oldest first, with its group id.
    pub(crate) fn take_tagged(&mut self, take: &mut dyn FnMut(u32) -> bool) -> Vec<(Message, u32)> {
        match self.0.as_deref_mut() {
            Some(f) => f.take_tagged(take),
            None => Vec::new(),
        }
    }

    /// Effective QoS of the oldest queued message.
    pub(crate) fn front_qos(&self) -> Option<QoS> {
        self.get()?.front_qos()
    }

    /// What the oldest queued message costs against the byte bounds.
    pub(crate) fn front_cost(&self) -> Option<usize> {
        self.get()?.front_cost()
    }

    /// Removes and returns the oldest queued message, with its shared-subscription
    /// group id (0: none).
    pub(crate) fn pop(&mut self) -> Option<(Message, u32)> {
        self.0.as_deref_mut()?.pop()
    }

    /// The QoS 1/2 messages queued now may have been sent before (restored after a
    /// crash): [`Queue::take_redelivery`] says so as each goes out.
    pub(crate) fn mark_redelivery(&mut self, first_pid: u16) {
        if let Some(f) = self.0.as_deref_mut() {
            f.redelivery = f.high.len();
            f.redelivery_pid = first_pid;
        }
    }

    /// Whether the QoS 1/2 message just popped was marked by
    /// [`Queue::mark_redelivery`], and the packet id it likely had (consecutive
    /// from the first one given; `None` when unknown).
    pub(crate) fn take_redelivery(&mut self) -> (bool, Option<u16>) {
        match self.0.as_deref_mut() {
            Some(f) if f.redelivery > 0 => {
                f.redelivery -= 1;
                let pid = f.redelivery_pid;
                if pid != 0 {
                    f.redelivery_pid = if pid == u16::MAX { 1 } else { pid + 1 };
                }
                (true, (pid != 0).then_some(pid))
            }
            _ => (false, None),
        }
    }

    /// Calls `f` with every queued QoS 1/2 message, oldest first (QoS 0 messages
    /// are never kept across a restart).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Message)) {
        if let Some(q) = self.get() {
            for e in &q.high {
                f(&e.msg);
            }
        }
    }

    /// [`Queue::for_each`] with each message's shared-subscription group id (0: none).
    pub(crate) fn for_each_tagged(&self, mut f: impl FnMut(&Message, u32)) {
        if let Some(q) = self.get() {
            for e in &q.high {
                let tag = q.tags.as_deref().and_then(|t| t.get(&e.seq)).copied();
                f(&e.msg, tag.unwrap_or(0));
            }
        }
    }

    /// Changes the log stamp of every queued QoS 1/2 message.
    pub(crate) fn restamp(&mut self, f: &mut dyn FnMut(&Message) -> u64) {
        if let Some(q) = self.0.as_deref_mut() {
            for e in q.high.iter_mut() {
                e.msg.stamp = f(&e.msg).into();
            }
        }
    }

    /// Drops the queued retained copies (retain flag set) of messages on `topic`.
    pub(crate) fn remove_retained(&mut self, topic: &str) {
        if let Some(f) = self.0.as_deref_mut() {
            f.remove_retained(topic);
        }
    }

    /// Drops every queued message whose topic fails `keep`; returns how many.
    pub(crate) fn retain_topics(&mut self, keep: &mut dyn FnMut(&str) -> bool) -> usize {
        match self.0.as_deref_mut() {
            Some(f) => f.retain_topics(keep),
            None => 0,
        }
    }
}

/// The queue itself, behind [`Queue`]'s pointer.
#[derive(Debug)]
struct Fifo {
    /// QoS 1 and 2 messages, oldest first.
    high: VecDeque<Entry>,
    /// QoS 0 messages, oldest first.
    low: VecDeque<Entry>,
    next_seq: u64,
    bytes: usize,
    low_bytes: usize,
    evicted: u64,
    /// QoS 1/2 messages at the front that may have been sent before, and the
    /// packet id the next of them likely had (0: unknown).
    redelivery: usize,
    redelivery_pid: u16,
    /// Shared-subscription group ids of the QoS 1/2 messages that have one, by
    /// sequence number; allocated on the first (most sessions never have any).
    #[allow(clippy::box_collection)]
    tags: Option<Box<std::collections::HashMap<u64, u32, crate::hash::RandomKeys>>>,
}

/// What a message costs against `max_queued_bytes`.
pub(crate) fn cost(msg: &Message) -> usize {
    msg.payload.len().saturating_add(msg.topic.len())
}

impl Fifo {
    fn new() -> Fifo {
        Fifo {
            high: VecDeque::new(),
            low: VecDeque::new(),
            next_seq: 0,
            bytes: 0,
            low_bytes: 0,
            evicted: 0,
            redelivery: 0,
            redelivery_pid: 0,
            tags: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.high.len() + self.low.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.high.is_empty() && self.low.is_empty()
    }

    /// Appends `msg` (its `qos` already the effective one) within `limits`, evicting the
    /// oldest QoS 0 messages first if that makes room for a QoS 1/2 one.
    pub(crate) fn push(
        &mut self,
        msg: Message,
        tag: u32,
        limits: &Limits,
    ) -> Result<(), DropReason> {
        let size = cost(&msg);
        let fits = |count: usize, bytes: usize| {
            count < limits.max_queued_messages
                && bytes
                    .checked_add(size)
                    .is_some_and(|b| b <= limits.max_queued_bytes)
        };
        if !fits(self.len(), self.bytes) {
            if msg.qos == QoS::AtMostOnce || !fits(self.high.len(), self.bytes - self.low_bytes) {
                return Err(DropReason::QueueFull);
            }
            while !fits(self.len(), self.bytes) {
                match self.low.pop_front() {
                    Some(e) => {
                        let c = cost(&e.msg);
                        self.bytes -= c;
                        self.low_bytes -= c;
                        self.evicted += 1;
                    }
                    // Unreachable: with every QoS 0 message gone it fits (checked above).
                    None => return Err(DropReason::QueueFull),
                }
            }
        }
        // QoS 1/2 messages were compacted when published (see `Shard::publish_from_client`);
        // a QoS 0 one may still be a slice of a read buffer.
        let msg = if msg.qos == QoS::AtMostOnce {
            msg.compact()
        } else {
            msg
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += size;
        if msg.qos == QoS::AtMostOnce {
            self.low_bytes += size;
            self.low.push_back(Entry { seq, msg });
        } else {
            if tag != 0 {
                self.tags
                    .get_or_insert_with(Default::default)
                    .insert(seq, tag);
            }
            self.high.push_back(Entry { seq, msg });
        }
        Ok(())
    }

    fn front_is_low(&self) -> Option<bool> {
        match (self.high.front(), self.low.front()) {
            (None, None) => None,
            (Some(_), None) => Some(false),
            (None, Some(_)) => Some(true),
            (Some(h), Some(l)) => Some(l.seq < h.seq),
        }
    }

    /// Effective QoS of the oldest queued message.
    pub(crate) fn front_qos(&self) -> Option<QoS> {
        match self.front_is_low()? {
            true => Some(QoS::AtMostOnce),
            false => self.high.front().map(|e| e.msg.qos),
        }
    }

    /// What the oldest queued message costs against the byte bounds.
    pub(crate) fn front_cost(&self) -> Option<usize> {
        let e = if self.front_is_low()? {
            self.low.front()?
        } else {
            self.high.front()?
        };
        Some(cost(&e.msg))
    }

    fn retain_topics(&mut self, keep: &mut dyn FnMut(&str) -> bool) -> usize {
        let (mut removed, mut removed_low, mut count) = (0, 0, 0);
        let tags = &mut self.tags;
        self.high.retain(|e| {
            let k = keep(&e.msg.topic);
            if !k {
                removed += cost(&e.msg);
                count += 1;
                if let Some(t) = tags.as_deref_mut() {
                    t.remove(&e.seq);
                }
            }
            k
        });
        self.low.retain(|e| {
            let k = keep(&e.msg.topic);
            if !k {
                removed_low += cost(&e.msg);
                count += 1;
            }
            k
        });
        self.bytes -= removed + removed_low;
        self.low_bytes -= removed_low;
        count
    }

    fn remove_retained(&mut self, topic: &str) {
        let (mut removed, mut removed_low) = (0, 0);
        let stale = |e: &Entry| e.msg.retain && e.msg.topic == topic;
        self.high.retain(|e| {
            let keep = !stale(e);
            if !keep {
                removed += cost(&e.msg);
            }
            keep
        });
        self.low.retain(|e| {
            let keep = !stale(e);
            if !keep {
                removed_low += cost(&e.msg);
            }
            keep
        });
        self.bytes -= removed + removed_low;
        self.low_bytes -= removed_low;
    }

    /// See [`Queue::take_tagged`].
    fn take_tagged(&mut self, take: &mut dyn FnMut(u32) -> bool) -> Vec<(Message, u32)> {
        let Some(tags) = self.tags.as_deref_mut() else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        let mut removed = 0;
        self.high.retain(|e| match tags.get(&e.seq).copied() {
            Some(tag) if take(tag) => {
                tags.remove(&e.seq);
                removed += cost(&e.msg);
                taken.push((e.msg.clone(), tag));
                false
            }
            _ => true,
        });
        self.bytes -= removed;
        // Those restored after a crash were queued first; fewer of them are left.
        self.redelivery = self.redelivery.min(self.high.len());
        taken
    }

    /// Removes and returns the oldest queued message.
    pub(crate) fn pop(&mut self) -> Option<(Message, u32)> {
        let low = self.front_is_low()?;
        let e = if low {
            self.low.pop_front()?
        } else {
            self.high.pop_front()?
        };
        let c = cost(&e.msg);
        self.bytes -= c;
        if low {
            self.low_bytes -= c;
        }
        let tag = match self.tags.as_deref_mut() {
            Some(t) if !low => t.remove(&e.seq).unwrap_or(0),
            _ => 0,
        };
        Some((e.msg, tag))
    }
}

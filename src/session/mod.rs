//! The per-client MQTT 3.1.1 session state machine, sans-IO.
//!
//! A [`Session`] holds everything MQTT says outlives a connection for a persistent
//! session (§4.1): outgoing QoS 1/2 flows in flight, the queue of messages not yet sent,
//! the packet ids of incoming QoS 2 messages awaiting PUBREL, and the subscriptions. It
//! does no I/O and reads no clock: the shard feeds it packets, routed messages, write
//! buffer pressure and the current time, and collects what to write and what to route in
//! an [`Output`].
//!
//! Guarantees the shard relies on:
//! - An acknowledged message is never lost: inbound QoS 1/2 messages are handed to the
//!   router in the same call that produces their PUBACK/PUBREC; outgoing QoS 1/2 messages
//!   stay in flight or queued until the client completes their flow, across connections.
//! - Order: messages go out in the order they were delivered to the session (a single
//!   FIFO across QoS levels: a message never overtakes a queued or in-flight one), and a
//!   resumed session resends in-flight flows in their original order (§4.4, §4.6).
//! - Memory is bounded by [`Limits`]: at most `max_inflight` flows in flight and at most
//!   `max_queued_messages` / `max_queued_bytes` queued; incoming QoS 2 state is bounded by
//!   the 65535 packet ids.

mod inflight;
mod queue;
mod subscriptions;
#[cfg(test)]
mod tests;

use crate::hash::RandomKeys;
use crate::message::{Message, MessageProps};
use crate::protocol::{LastWill, Packet, Publish, QoS};
use bytestring::ByteString;
use inflight::{Inflight, Stage};
use queue::Queue;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subscriptions::Subscriptions;

thread_local! {
    /// A clock that replaces `Instant::now()` for this thread's sessions; see
    /// [`simulate_clock`].
    static SIMULATED_NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The time the session's message-expiry reads see: the wall clock, unless the
/// thread simulates one. Only read for messages that carry 5.0 properties, so a
/// 3.1.1 session never reads a clock on delivery.
fn now() -> Instant {
    SIMULATED_NOW.with(Cell::get).unwrap_or_else(Instant::now)
}

/// Sets (or, with `None`, ends) a simulated clock for the sessions on this thread:
/// message expiry (on delivery, when a queued message goes out, in the remaining
/// interval a PUBLISH carries, and from when a received PUBLISH or a will starts
/// counting) reads it instead of the wall clock. For the fuzz harness, which steps
/// time by hand so that expiry happens at exactly the step the model expects; the
/// broker never sets it.
#[doc(hidden)]
pub fn simulate_clock(now: Option<Instant>) {
    SIMULATED_NOW.with(|c| c.set(now));
}

/// Per-session resource bounds, from configuration, so a slow or absent client cannot make
/// the broker hold unbounded state for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Outgoing QoS 1/2 flows awaiting acknowledgement at once (1..=65535; 0 is treated
    /// as 1). Flow control towards the client.
    pub max_inflight: u16,
    /// Messages held in the send queue at most.
    pub max_queued_messages: usize,
    /// Payload + topic bytes held in the send queue at most.
    pub max_queued_bytes: usize,
}

/// What one call produced, so the session never does I/O itself. The caller drains both
/// vectors after every call and reuses them, so steady state allocates nothing.
#[derive(Debug, Default)]
pub struct Output {
    /// Packets to write to the client, in order.
    pub packets: Vec<Packet>,
    /// Messages the client published that the router must route now. For QoS 1/2 the ack
    /// is already in `packets`: the router takes the message synchronously, so acking at
    /// once is correct.
    pub publishes: Vec<Message>,
}

/// What [`Session::deliver`] did with a routed message, so the shard can count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A PUBLISH for it is in [`Output::packets`].
    Sent,
    /// Held in the session's queue (offline, write buffer full, window full, or behind
    /// older queued messages); it goes out later in FIFO order.
    Queued,
    /// Not delivered, for the given reason.
    Dropped(DropReason),
}

/// Why a message was dropped, so the shard can count drops by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue is at its message or byte bound and evicting QoS 0 messages would not
    /// make room (or the new message is itself QoS 0).
    QueueFull,
    /// The client is not connected and the message is QoS 0 (not stored for offline
    /// clients, as §3.1.2.4 allows).
    OfflineQoS0,
    /// A 5.0 message's expiry interval ran out.
    Expired,
    /// The PUBLISH would be larger than the Maximum Packet Size the 5.0 client
    /// announced [MQTT-3.1.2-25].
    TooLarge,
}

/// A protocol violation by the client; the caller closes the connection (§4.8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A packet a client must not send at this point (a second CONNECT, server-to-client
    /// packets), or SUBSCRIBE/UNSUBSCRIBE, which the shard must handle itself.
    #[error("unexpected {0} packet from the client")]
    UnexpectedPacket(&'static str),
    /// A packet that needs a non-zero packet identifier carried 0 [MQTT-2.3.1-1].
    #[error("{0} with packet identifier 0")]
    ZeroPacketId(&'static str),
    /// A QoS 0 PUBLISH with the DUP flag set [MQTT-3.3.1-2].
    #[error("QoS 0 PUBLISH with DUP set")]
    DupOnQoS0,
    /// An acknowledgement of the wrong kind for an outgoing flow in flight: PUBREC or
    /// PUBCOMP for a QoS 1 delivery, PUBACK or PUBCOMP for a QoS 2 delivery awaiting
    /// PUBREC, PUBACK for one awaiting PUBCOMP (§4.3.2, §4.3.3).
    #[error("{0} for packet identifier {1}, whose flow expects another acknowledgement")]
    WrongAcknowledgement(&'static str, u16),
    /// `handle` was called while no connection is attached.
    #[error("packet received while no connection is attached")]
    NotConnected,
    /// More incoming QoS 2 flows awaiting PUBREL than the Receive Maximum the broker
    /// announced to a 5.0 client (§3.3.4): DISCONNECT 0x93.
    #[error("more than {0} QoS 2 publishes unacknowledged (Receive Maximum)")]
    ReceiveMaximumExceeded(u16),
}

/// A snapshot of the session's resource use, for metrics and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    /// Outgoing QoS 1/2 flows awaiting PUBACK, PUBREC or PUBCOMP.
    pub inflight: usize,
    /// Payload + topic bytes of the messages those flows hold for resending.
    pub inflight_bytes: usize,
    /// Messages waiting in the send queue.
    pub queued: usize,
    /// Payload + topic bytes of the queued messages.
    pub queued_bytes: usize,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub awaiting_pubrel: usize,
    /// Queued QoS 0 messages evicted so far (cumulative) to make room for QoS 1/2 ones;
    /// these are drops the shard does not see through [`Delivery`].
    pub evicted_qos0: u64,
}

/// The flow-control limits of a 5.0 connection (§4.9, §3.1.2.11.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// The client's Receive Maximum: QoS 1/2 deliveries in flight to it, at most
    /// (with `max_inflight`).
    pub receive_maximum: u16,
    /// The client's Maximum Packet Size: a larger PUBLISH is dropped for it.
    pub max_packet_size: Option<u32>,
    /// The broker's Receive Maximum: QoS 2 publishes from the client awaiting PUBREL.
    pub server_receive_maximum: u16,
    /// The client's Topic Alias Maximum: its PUBLISH packets are rewritten per
    /// connection, so they are not shared.
    pub topic_alias_maximum: u16,
}

impl Default for PeerLimits {
    fn default() -> PeerLimits {
        PeerLimits {
            receive_maximum: u16::MAX,
            max_packet_size: None,
            server_receive_maximum: u16::MAX,
            topic_alias_maximum: 0,
        }
    }
}

/// One client's session; see the module documentation.
#[derive(Debug)]
pub struct Session {
    client_id: ByteString,
    clean_session: bool,
    limits: Limits,
    connected: bool,
    writable: bool,
    keep_alive: u16,
    last_activity: Option<Instant>,
    /// Boxed: most sessions have none, and it is large.
    will: Option<Box<LastWill>>,
    /// The client speaks MQTT 5.0: its PUBLISH packets carry the messages' properties.
    v5: bool,
    /// What the 5.0 client announced and the broker holds it to; see
    /// [`Session::set_peer_limits`].
    peer: PeerLimits,
    /// `queue.evicted()` as of the last `take_evictions`.
    evictions_reported: u64,
    /// Queued messages dropped as expired on their way out, not yet reported.
    expired: u32,
    /// Messages dropped on their way out (queued, or resent in flight) as over the
    /// 5.0 client's Maximum Packet Size, not yet reported. Two halves of what was
    /// one counter: the session stays the size it was.
    too_large: u32,
    inflight: Inflight,
    /// The next packet id to try for an outgoing flow ([`Inflight::next_free_pkid`]).
    next_pkid: u16,
    queue: Queue,
    /// Incoming QoS 2 packet ids whose PUBLISH was routed and whose PUBREL has not come.
    /// Allocated on the first incoming QoS 2 message: boxed, the map itself would cost
    /// every session 32 bytes.
    #[allow(clippy::box_collection)]
    awaiting_pubrel: Option<Box<HashSet<u16, RandomKeys>>>,
    subscriptions: Subscriptions,
    /// The Subscription Identifiers of the 5.0 client's subscriptions that have one;
    /// `None` while none has.
    #[allow(clippy::box_collection)]
    subscription_ids: Option<Box<HashMap<ByteString, NonZeroU32, RandomKeys>>>,
}

/// What a message keeps of a 5.0 PUBLISH's properties, received now.
#[inline(never)]
fn message_props(props: &crate::protocol::PublishProps) -> Option<Arc<MessageProps>> {
    MessageProps::new(props.message_expiry, &props.forward, now())
}

/// The PUBLISH that carries `msg` to a 3.1.1 or 3.1 client: no properties.
fn publish_packet(msg: &Message, pkid: u16, dup: bool) -> Packet {
    Packet::Publish(publish(msg, pkid, dup))
}

/// The PUBLISH that carries `msg`, without properties.
fn publish(msg: &Message, pkid: u16, dup: bool) -> Publish {
    Publish {
        dup,
        qos: msg.qos,
        retain: msg.retain,
        topic: msg.topic.clone(),
        pkid,
        payload: msg.payload.clone(),
        props: None,
    }
}

impl Session {
    /// Replaces the session's bounds (a reload). Nothing held is dropped: a lowered
    /// bound applies as messages arrive and leave.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = Limits {
            max_inflight: limits.max_inflight.max(1),
            ..limits
        };
    }

    /// A fresh session with nothing in flight, queued or subscribed, not connected.
    pub fn new(client_id: ByteString, clean_session: bool, limits: Limits) -> Session {
        Session {
            client_id,
            clean_session,
            limits: Limits {
                max_inflight: limits.max_inflight.max(1),
                ..limits
            },
            connected: false,
            writable: false,
            keep_alive: 0,
            last_activity: None,
            will: None,
            v5: false,
            peer: PeerLimits::default(),
            evictions_reported: 0,
            expired: 0,
            too_large: 0,
            inflight: Inflight::new(),
            next_pkid: 1,
            queue: Queue::new(),
            awaiting_pubrel: None,
            subscriptions: Subscriptions::default(),
            subscription_ids: None,
        }
    }

    /// The client identifier the session belongs to.
    pub fn client_id(&self) -> &ByteString {
        &self.client_id
    }

    /// Whether the session ends with its connection (the shard then drops it).
    pub fn clean_session(&self) -> bool {
        self.clean_session
    }

    /// Whether the client (the one connected last) speaks MQTT 5.0.
    pub fn set_v5(&mut self, v5: bool) {
        self.v5 = v5;
    }

    /// The 5.0 client's limits (its Receive Maximum and Maximum Packet Size) and the
    /// Receive Maximum the broker announced to it; the defaults (none) for 3.1.1.
    pub fn set_peer_limits(&mut self, peer: PeerLimits) {
        self.peer = peer;
    }

    /// Whether a connection is attached.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// A connection is attached (CONNECT accepted; the caller has already written
    /// CONNACK). Pushes every unacknowledged outgoing QoS 1/2 PUBLISH again with DUP set
    /// and its original packet id, and PUBREL for those whose PUBREC arrived, all in their
    /// original order [MQTT-4.4.0-1, MQTT-4.6.0-1]; then as many queued messages as the
    /// window allows. (Re)starts the keep-alive clock at `now`, stores the will and marks
    /// the session writable.
    pub fn connect(
        &mut self,
        keep_alive: u16,
        will: Option<LastWill>,
        now: Instant,
        out: &mut Output,
    ) {
        self.connected = true;
        self.writable = true;
        self.keep_alive = keep_alive;
        self.last_activity = Some(now);
        // Held for the whole connection: not as a slice of the CONNECT's buffer.
        self.will = will.map(|w| {
            let (topic, payload) = crate::message::compact_parts(&w.topic, &w.payload);
            Box::new(LastWill {
                topic,
                payload,
                ..w
            })
        });
        // A flow whose PUBLISH is now over the client's Maximum Packet Size (a
        // smaller one than it had, or more subscription identifiers) is discarded
        // and counts as completed [MQTT-3.1.2-25].
        let mut too_large = Vec::new();
        for (pkid, stage) in self.inflight.iter() {
            match stage {
                Stage::Published(msg) => {
                    let packet = self.packet(msg, pkid, true);
                    if self.over_max_packet_size(&packet) {
                        too_large.push(pkid);
                    } else {
                        out.packets.push(packet);
                    }
                }
                Stage::Released(_) => out.packets.push(Packet::PubRel(pkid)),
            }
        }
        for pkid in too_large {
            self.inflight.remove(pkid);
            self.too_large = self.too_large.saturating_add(1);
        }
        self.flush(out);
    }

    /// The Will Delay Interval of the will held, in seconds (0 without one).
    pub fn will_delay(&self) -> u32 {
        self.will.as_ref().map_or(0, |w| w.props.delay_interval)
    }

    /// The connection is gone. Returns the will as a message unless `graceful`
    /// (DISCONNECT received) or there is none; the will is cleared either way, so it is
    /// never published twice. Everything else is kept for a resume.
    pub fn disconnect(&mut self, graceful: bool) -> Option<Message> {
        self.connected = false;
        self.writable = false;
        self.last_activity = None;
        let will = self.will.take()?;
        if graceful {
            return None;
        }
        let props = crate::message::MessageProps::new(
            will.props.message_expiry,
            &will.props.forward,
            now(),
        );
        Some(Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            stamp: Default::default(),
            props,
        })
    }

    /// A packet from the client; records `now` as the last activity for keep-alive.
    /// Errors are protocol violations: the caller closes the connection (and, not having
    /// seen DISCONNECT, calls `disconnect(false)`).
    pub fn handle(
        &mut self,
        packet: Packet,
        now: Instant,
        out: &mut Output,
    ) -> Result<(), SessionError> {
        if !self.connected {
            return Err(SessionError::NotConnected);
        }
        self.last_activity = Some(now);
        match packet {
            Packet::Publish(p) => self.receive_publish(p, out)?,
            Packet::PubAck(pkid) => {
                nonzero(pkid, "PUBACK")?;
                match self.inflight.get_mut(pkid) {
                    Some(Stage::Published(m)) if m.qos == QoS::AtLeastOnce => {
                        self.inflight.remove(pkid);
                        self.flush(out);
                    }
                    // A QoS 2 flow is acknowledged with PUBREC, then PUBCOMP.
                    Some(_) => return Err(SessionError::WrongAcknowledgement("PUBACK", pkid)),
                    // Not in flight: a late duplicate; nothing to do.
                    None => {}
                }
            }
            Packet::PubRec(pkid) => {
                nonzero(pkid, "PUBREC")?;
                match self.inflight.get_mut(pkid) {
                    Some(Stage::Published(m)) if m.qos == QoS::AtLeastOnce => {
                        return Err(SessionError::WrongAcknowledgement("PUBREC", pkid));
                    }
                    Some(Stage::Published(_)) => {
                        if self.inflight.release(pkid) {
                            out.packets.push(Packet::PubRel(pkid));
                            // The message's bytes are freed: the window may have room.
                            self.flush(out);
                        }
                    }
                    // A repeated PUBREC (our PUBREL may have crossed it) is answered
                    // with PUBREL again [MQTT-4.3.3-1]; so is one for an id no longer
                    // in flight, which completes the client's side of the flow.
                    Some(Stage::Released(_)) | None => out.packets.push(Packet::PubRel(pkid)),
                }
            }
            Packet::PubComp(pkid) => {
                nonzero(pkid, "PUBCOMP")?;
                match self.inflight.get_mut(pkid) {
                    Some(Stage::Released(_)) => {
                        self.inflight.remove(pkid);
                        self.flush(out);
                    }
                    // PUBCOMP answers PUBREL: for a QoS 1 flow, or a QoS 2 flow still
                    // awaiting PUBREC, it is the wrong packet.
                    Some(Stage::Published(_)) => {
                        return Err(SessionError::WrongAcknowledgement("PUBCOMP", pkid));
                    }
                    None => {}
                }
            }
            Packet::PubRel(pkid) => {
                nonzero(pkid, "PUBREL")?;
                let known = self
                    .awaiting_pubrel
                    .as_mut()
                    .is_some_and(|ids| ids.remove(&pkid));
                if known || !self.v5 {
                    out.packets.push(Packet::PubComp(pkid));
                } else {
                    // 5.0 names the case (§3.7.2.1); 3.1.1 completes it all the same.
                    out.packets.push(Packet::PubCompV5(crate::protocol::Ack {
                        reason: crate::protocol::ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                        ..crate::protocol::Ack::success(pkid)
                    }));
                }
            }
            Packet::PingReq => out.packets.push(Packet::PingResp),
            Packet::Disconnect => self.will = None,
            other @ (Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::Subscribe(_)
            | Packet::SubAck(_)
            | Packet::Unsubscribe(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp
            // A 5.0 connection's acknowledgements reach the session as the 3.1.1 ones
            // (`net` maps them); the rest are never a client's to send.
            | Packet::ConnAckV5(_)
            | Packet::PubAckV5(_)
            | Packet::PubRecV5(_)
            | Packet::PubRelV5(_)
            | Packet::PubCompV5(_)
            | Packet::SubAckV5(_)
            | Packet::UnsubAckV5(_)
            | Packet::DisconnectV5(_)
            | Packet::Auth(_)) => return Err(SessionError::UnexpectedPacket(other.name())),
        }
        Ok(())
    }

    fn receive_publish(&mut self, p: Publish, out: &mut Output) -> Result<(), SessionError> {
        let msg = |p: Publish| Message {
            // A 3.1.1 publish has none: one test, the conversion out of line.
            props: match p.props {
                None => None,
                Some(props) => message_props(&props),
            },
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            stamp: Default::default(),
        };
        match p.qos {
            QoS::AtMostOnce => {
                if p.dup {
                    return Err(SessionError::DupOnQoS0);
                }
                out.publishes.push(msg(p));
            }
            QoS::AtLeastOnce => {
                nonzero(p.pkid, "PUBLISH")?;
                let pkid = p.pkid;
                out.publishes.push(msg(p));
                out.packets.push(Packet::PubAck(pkid));
            }
            QoS::ExactlyOnce => {
                nonzero(p.pkid, "PUBLISH")?;
                let pkid = p.pkid;
                let awaiting = self.awaiting_pubrel.get_or_insert_with(Default::default);
                let max = self.peer.server_receive_maximum;
                if awaiting.len() >= usize::from(max) && !awaiting.contains(&pkid) {
                    return Err(SessionError::ReceiveMaximumExceeded(max));
                }
                if awaiting.insert(pkid) {
                    out.publishes.push(msg(p));
                }
                out.packets.push(Packet::PubRec(pkid));
            }
        }
        Ok(())
    }

    /// A message routed to this session with the QoS granted by the matching
    /// subscription; it goes out at min(msg.qos, granted) with `msg.retain` as given.
    /// Sent at once when connected, writable, nothing is queued ahead of it and (QoS 1/2)
    /// the window has room; otherwise queued, except that QoS 0 is dropped while offline.
    /// A full queue evicts its oldest QoS 0 messages for a QoS 1/2 one if that makes room,
    /// else drops the new message; the bounds are never exceeded.
    pub fn deliver(&mut self, msg: &Message, granted: QoS, out: &mut Output) -> Delivery {
        self.deliver_tagged(msg, granted, 0, out)
    }

    /// [`Session::deliver`] for a message given to this session as one member of a
    /// shared-subscription group (`group`: the shard's id for it, not 0). While the
    /// message is queued or awaits PUBACK/PUBREC it can be taken back with
    /// [`Session::take_shared`], to go to another member.
    pub fn deliver_tagged(
        &mut self,
        msg: &Message,
        granted: QoS,
        group: u32,
        out: &mut Output,
    ) -> Delivery {
        let qos = msg.qos.min(granted);
        if !self.connected && qos == QoS::AtMostOnce {
            return Delivery::Dropped(DropReason::OfflineQoS0);
        }
        if msg.expires() && msg.expired(now()) {
            return Delivery::Dropped(DropReason::Expired);
        }
        let msg = Message {
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            qos,
            retain: msg.retain,
            stamp: msg.stamp,
            props: msg.props.clone(),
        };
        if self.peer.max_packet_size.is_some()
            && self.over_max_packet_size(&self.packet(&msg, 1, false))
        {
            return Delivery::Dropped(DropReason::TooLarge);
        }
        if self.connected && self.writable && self.queue.is_empty() {
            if qos == QoS::AtMostOnce {
                out.packets.push(self.packet(&msg, 0, false));
                return Delivery::Sent;
            }
            if self.window_has_room(queue::cost(&msg)) {
                if let Some(pkid) = self.inflight.next_free_pkid(&mut self.next_pkid) {
                    out.packets.push(self.packet(&msg, pkid, false));
                    self.inflight.insert_tagged(pkid, msg, group);
                    return Delivery::Sent;
                }
            }
        }
        match self.queue.push_tagged(msg, group, &self.limits) {
            Ok(()) => Delivery::Queued,
            Err(reason) => Delivery::Dropped(reason),
        }
    }

    /// Takes back every QoS 1/2 message given to the session through a shared
    /// subscription that its client has not received for sure: QoS 1 in flight
    /// awaiting PUBACK (in send order), then queued. A QoS 2 message stays once sent
    /// (§4.8.2: it is completed with that client or with no one). Only groups `take` accepts. Each comes with its
    /// group id, for the shard to give it to another member of the group; the
    /// session forgets them.
    pub fn take_shared(&mut self, mut take: impl FnMut(u32) -> bool) -> Vec<(Message, u32)> {
        let mut taken = self.inflight.take_tagged(&mut take);
        taken.extend(self.queue.take_tagged(&mut take));
        taken
    }

    /// The log stamp of the outgoing flow using `pkid` (see [`Message::stamp`]); 0
    /// when there is none or it is not logged.
    pub fn inflight_stamp(&mut self, pkid: u16) -> u64 {
        match self.inflight.get_mut(pkid) {
            Some(Stage::Published(m)) => m.stamp.get(),
            Some(Stage::Released(stamp)) => *stamp,
            None => 0,
        }
    }

    /// Calls `f` with every message the session holds for its client: in flight (in
    /// send order, with its packet id), then queued (with 0), and with
    /// `released(pkid, stamp)` every QoS 2 flow past PUBREC.
    pub fn for_each_held(
        &self,
        mut f: impl FnMut(&Message, u16),
        mut released: impl FnMut(u16, u64),
    ) {
        for (pkid, stage) in self.inflight.iter() {
            match stage {
                Stage::Published(m) => f(m, pkid),
                Stage::Released(stamp) => released(pkid, *stamp),
            }
        }
        self.queue.for_each(|m| f(m, 0));
    }

    /// [`Session::for_each_held`], with each message's shared-subscription group id
    /// (0: none), for a snapshot.
    pub fn for_each_held_tagged(
        &self,
        mut f: impl FnMut(&Message, u16, u32),
        mut released: impl FnMut(u16, u64),
    ) {
        for (pkid, tag, stage) in self.inflight.iter_tagged() {
            match stage {
                Stage::Published(m) => f(m, pkid, tag),
                Stage::Released(stamp) => released(pkid, *stamp),
            }
        }
        self.queue.for_each_tagged(|m, tag| f(m, 0, tag));
    }

    /// Gives every message held a new log stamp (`f` maps the message to it), when
    /// the log is compacted into a new generation. Flows past PUBREC lose theirs.
    pub fn restamp(&mut self, mut f: impl FnMut(&Message) -> u64) {
        self.inflight.restamp(&mut f);
        self.queue.restamp(&mut f);
    }

    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub fn awaiting_pubrel(&self) -> impl Iterator<Item = u16> + '_ {
        self.awaiting_pubrel
            .iter()
            .flat_map(|ids| ids.iter().copied())
    }

    /// Puts back what a persistent session held before a restart (offline; its
    /// subscriptions are recorded by the caller with [`Session::subscribe`]):
    /// incoming QoS 2 ids awaiting PUBREL, outgoing flows past PUBREC
    /// `(pkid, stamp)`, flows in flight with their packet ids, in send order, and
    /// queued messages (with `maybe_sent`, they may have gone out before a crash:
    /// each is sent with DUP set, the QoS 1 ones with consecutive packet ids from
    /// the one given, where free, as they had before; 0: any free ids). Each message
    /// comes with the id of the shared-subscription group it came through (0: none;
    /// see [`Session::deliver_tagged`]). The queue's bounds apply; returns how many
    /// messages they (or a packet id in use twice) turned away.
    pub fn restore(
        &mut self,
        awaiting_pubrel: &[u16],
        released: &[(u16, u64)],
        inflight: Vec<(u16, Message, u32)>,
        queued: Vec<(Message, u32)>,
        maybe_sent: Option<u16>,
    ) -> usize {
        if !awaiting_pubrel.is_empty() {
            self.awaiting_pubrel
                .get_or_insert_with(Default::default)
                .extend(awaiting_pubrel.iter().copied().filter(|&p| p != 0));
        }
        for &(pkid, stamp) in released {
            self.inflight.insert_released(pkid, stamp);
        }
        let mut dropped = 0;
        for (pkid, msg, group) in inflight {
            if !self.inflight.insert_tagged(pkid, msg, group) {
                dropped += 1;
            }
        }
        for (msg, group) in queued {
            if self.queue.push_tagged(msg, group, &self.limits).is_err() {
                dropped += 1;
            }
        }
        if let Some(first_pid) = maybe_sent {
            self.queue.mark_redelivery(first_pid);
        }
        dropped
    }

    /// Whether a QoS 0 delivery would go out at once, as a plain PUBLISH with the
    /// message's retain flag, changing no state: connected, writable, nothing queued
    /// ahead. The shard then writes one encoding of the message, shared by every such
    /// subscriber, instead of calling [`Session::deliver`] (see `Shard::deliver_local`).
    pub fn sends_qos0_at_once(&self) -> bool {
        self.connected && self.writable && self.queue.is_empty() && (!self.v5 || self.plain_v5())
    }

    /// Whether the 5.0 client gets the same PUBLISH as any other: no Maximum Packet
    /// Size to check, no Subscription Identifiers to add, no Topic Aliases to apply.
    fn plain_v5(&self) -> bool {
        self.peer.max_packet_size.is_none()
            && self.subscription_ids.is_none()
            && self.peer.topic_alias_maximum == 0
    }

    /// Whether a delivery would go out at once, whatever its QoS: connected,
    /// writable, nothing queued and room in the window. A shared-subscription group
    /// prefers such a member to one that is behind.
    pub fn ready(&self) -> bool {
        self.connected
            && self.writable
            && self.queue.is_empty()
            && self.inflight.len()
                < usize::from(self.limits.max_inflight.min(self.peer.receive_maximum))
    }

    /// The connection's write buffer went over (`false`) or back under (`true`) its
    /// high-water mark. On `true`, sends queued messages in FIFO order: QoS 0 freely,
    /// QoS 1/2 while the window has room.
    pub fn set_writable(&mut self, writable: bool, out: &mut Output) {
        self.writable = writable;
        self.flush(out);
    }

    /// When the client last sent anything (`None` when not connected).
    pub fn last_activity(&self) -> Option<Instant> {
        self.last_activity.filter(|_| self.connected)
    }

    /// Records activity from the client for keep-alive (for packets the shard handles
    /// itself; [`Session::handle`] records its own).
    pub fn touch(&mut self, now: Instant) {
        if self.connected {
            self.last_activity = Some(now);
        }
    }

    /// When the shard must close the connection for silence: last activity + 1.5 ×
    /// keep-alive (§3.1.2.10). `None` when keep-alive is 0 or not connected.
    pub fn keep_alive_deadline(&self) -> Option<Instant> {
        if !self.connected || self.keep_alive == 0 {
            return None;
        }
        self.last_activity?
            .checked_add(Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// Records a subscription (kept across connections for a persistent session; the
    /// shard's trie does the routing). Returns the QoS it replaced, if any.
    pub fn subscribe(&mut self, filter: ByteString, qos: QoS) -> Option<QoS> {
        self.subscriptions.insert(filter, qos)
    }

    /// Sets (or, with `None`, clears) the Subscription Identifier of the subscription
    /// `filter`: every PUBLISH that subscription matches carries it.
    pub fn set_subscription_id(&mut self, filter: &ByteString, id: Option<NonZeroU32>) {
        match id {
            Some(id) => {
                self.subscription_ids
                    .get_or_insert_with(Default::default)
                    .insert(filter.clone(), id);
            }
            None => {
                if let Some(ids) = &mut self.subscription_ids {
                    ids.remove(filter);
                    if ids.is_empty() {
                        self.subscription_ids = None;
                    }
                }
            }
        }
    }

    /// The Subscription Identifier of the subscription `filter`, if it has one.
    pub fn subscription_id(&self, filter: &str) -> Option<NonZeroU32> {
        self.subscription_ids.as_ref()?.get(filter).copied()
    }

    /// The PUBLISH that carries `msg` to this session's client: with its properties
    /// and the identifiers of the subscriptions its topic matches, for a 5.0 client.
    fn packet(&self, msg: &Message, pkid: u16, dup: bool) -> Packet {
        if self.v5 {
            self.packet_v5(msg, pkid, dup)
        } else {
            publish_packet(msg, pkid, dup)
        }
    }

    /// [`Session::packet`] for a 5.0 client: the message's properties (the remaining
    /// expiry as of now) and the matching Subscription Identifiers. Out of line, so
    /// that the 3.1.1 path stays as it was before 5.0.
    #[inline(never)]
    fn packet_v5(&self, msg: &Message, pkid: u16, dup: bool) -> Packet {
        let mut p = publish(msg, pkid, dup);
        p.props = msg.props.as_ref().map(|m| m.publish_props(now()));
        if let Some(ids) = &self.subscription_ids {
            let mut matched: Vec<NonZeroU32> = ids
                .iter()
                .filter(|(f, _)| crate::protocol::topic::matches(f, &msg.topic))
                .map(|(_, id)| *id)
                .collect();
            if !matched.is_empty() {
                matched.sort_unstable();
                matched.dedup();
                p.props
                    .get_or_insert_with(Default::default)
                    .subscription_ids = matched;
            }
        }
        Packet::Publish(p)
    }

    /// Forgets a subscription; returns its QoS if it existed.
    pub fn unsubscribe(&mut self, filter: &str) -> Option<QoS> {
        if let Some(ids) = &mut self.subscription_ids {
            ids.remove(filter);
            if ids.is_empty() {
                self.subscription_ids = None;
            }
        }
        self.subscriptions.remove(filter)
    }

    /// Drops what the session holds for its client on topics `keep` refuses: queued
    /// messages, and in-flight ones not yet acknowledged at all (a QoS 2 flow past
    /// PUBREC has already been delivered and completes). Used when a persistent
    /// session resumes under rights that may differ from those it queued under.
    /// Returns how many were dropped.
    pub fn retain_messages(&mut self, mut keep: impl FnMut(&str) -> bool) -> usize {
        let mut dropped = self.queue.retain_topics(&mut keep);
        let refused: Vec<u16> = self
            .inflight
            .iter()
            .filter_map(|(pkid, stage)| match stage {
                Stage::Published(m) if !keep(&m.topic) => Some(pkid),
                _ => None,
            })
            .collect();
        for pkid in refused {
            self.inflight.remove(pkid);
            dropped += 1;
        }
        dropped
    }

    /// Drops queued retained copies of messages on `topic`: a newer retained message
    /// (or its deletion) has replaced them while they waited.
    pub fn remove_queued_retained(&mut self, topic: &str) {
        self.queue.remove_retained(topic);
    }

    /// The QoS granted to `filter`, if subscribed.
    pub fn subscription(&self, filter: &str) -> Option<QoS> {
        self.subscriptions.get(filter)
    }

    /// Number of subscriptions held (bounded by `max_subscriptions_per_client`).
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// The session's subscriptions, in no particular order (to rebuild routes on resume
    /// or remove them when the session ends).
    pub fn subscriptions(&self) -> impl Iterator<Item = (&ByteString, QoS)> {
        self.subscriptions.iter()
    }

    /// Current resource use, for metrics and limit checks.
    /// Queued QoS 0 messages evicted since the last call, for the shard to count as
    /// drops (a message queued by [`Session::deliver`] may have evicted some).
    /// Queued messages found expired as they were about to go out, since the last call.
    pub fn take_expired(&mut self) -> u64 {
        u64::from(std::mem::take(&mut self.expired))
    }

    /// Messages dropped on their way out, since the last call, as over the 5.0
    /// client's Maximum Packet Size: queued ones whose PUBLISH grew (subscription
    /// identifiers added while they waited) or met a smaller maximum on resume, and
    /// flows in flight whose resend did. [`Session::deliver`] reports the ones it
    /// drops itself.
    pub fn take_too_large(&mut self) -> u64 {
        u64::from(std::mem::take(&mut self.too_large))
    }

    pub fn take_evictions(&mut self) -> u64 {
        let total = self.queue.evicted();
        let new = total - self.evictions_reported;
        self.evictions_reported = total;
        new
    }

    pub fn stats(&self) -> SessionStats {
        SessionStats {
            inflight: self.inflight.len(),
            inflight_bytes: self.inflight.bytes(),
            queued: self.queue.len(),
            queued_bytes: self.queue.bytes(),
            awaiting_pubrel: self.awaiting_pubrel.as_ref().map_or(0, |ids| ids.len()),
            evicted_qos0: self.queue.evicted(),
        }
    }

    /// Whether a QoS 1/2 message costing `size` bytes may go out now: the window has
    /// a free slot, and the messages held for resending stay within
    /// `max_queued_bytes` (one message is always allowed, however large), so a client
    /// that never acknowledges holds at most that much on top of its queue.
    fn window_has_room(&self, size: usize) -> bool {
        self.inflight.len() < usize::from(self.limits.max_inflight.min(self.peer.receive_maximum))
            && (self.inflight.bytes() == 0
                || self.inflight.bytes().saturating_add(size) <= self.limits.max_queued_bytes)
    }

    /// Whether `packet` is larger than the 5.0 client's Maximum Packet Size: the
    /// broker must not send it [MQTT-3.1.2-24].
    fn over_max_packet_size(&self, packet: &Packet) -> bool {
        self.peer
            .max_packet_size
            .is_some_and(|max| crate::protocol::encoded_len_v5(packet) > max as usize)
    }

    /// Sends queued messages in FIFO order while connected, writable and (for QoS 1/2)
    /// the window has room; stops at the first that cannot go, so none overtakes another.
    fn flush(&mut self, out: &mut Output) {
        if !(self.connected && self.writable) {
            return;
        }
        while let Some(qos) = self.queue.front_qos() {
            if qos == QoS::AtMostOnce {
                if let Some((msg, _)) = self.queue.pop() {
                    if msg.expires() && msg.expired(now()) {
                        self.expired = self.expired.saturating_add(1);
                    } else {
                        let packet = self.packet(&msg, 0, false);
                        if self.over_max_packet_size(&packet) {
                            self.too_large = self.too_large.saturating_add(1);
                        } else {
                            out.packets.push(packet);
                        }
                    }
                }
                continue;
            }
            if !self.window_has_room(self.queue.front_cost().unwrap_or(0)) {
                break;
            }
            let Some(mut pkid) = self.inflight.next_free_pkid(&mut self.next_pkid) else {
                break;
            };
            let Some((msg, group)) = self.queue.pop() else {
                break;
            };
            let (dup, hint) = self.queue.take_redelivery();
            if msg.expires() && msg.expired(now()) {
                // Not delivered once expired [MQTT-3.3.2-5].
                self.expired = self.expired.saturating_add(1);
                continue;
            }
            if let Some(h) =
                hint.filter(|&h| msg.qos == QoS::AtLeastOnce && self.inflight.is_free(h))
            {
                pkid = h;
            }
            let packet = self.packet(&msg, pkid, dup);
            if self.over_max_packet_size(&packet) {
                // Measured on delivery, but it may have grown since (subscription
                // identifiers) or the client announced a smaller maximum on resume.
                self.too_large = self.too_large.saturating_add(1);
                continue;
            }
            out.packets.push(packet);
            self.inflight.insert_tagged(pkid, msg, group);
        }
    }
}

fn nonzero(pkid: u16, packet: &'static str) -> Result<(), SessionError> {
    if pkid == 0 {
        Err(SessionError::ZeroPacketId(packet))
    } else {
        Ok(())
    }
}

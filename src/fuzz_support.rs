//! The two hostile-input fuzz cases, kept in the broker crate so that the crashers the
//! fuzzer finds replay as ordinary tests (`tests/fuzz_regressions.rs`) without
//! libFuzzer or a nightly toolchain. The cargo-fuzz targets in `fuzz/` only call these.
//!
//! Each case turns arbitrary bytes into input the broker could receive from a client
//! and panics when, and only when, something is wrong: an error the broker answers by
//! closing the connection is fine; a panic inside the broker, or a broken invariant
//! (checked here with `assert!`), is a finding.
//!
//! Not a stable API.

#![doc(hidden)]

use crate::config::Config;
use crate::message::Message;
use crate::message::MessageProps;
use crate::protocol::properties::PacketKind;
use crate::protocol::topic::{level_count, matches, valid_topic_filter};
use crate::protocol::{
    decode_with, encoded_len, encoded_len_v5, ConnAck, Connect, ConnectReturnCode, DecodeError,
    DecodeOptions, LastWill, Packet, Protocol, Publish, QoS, ReasonCode, SubAck, SubAckCode,
    Subscribe, SubscribeFilter, Unsubscribe,
};
use crate::protocol::{Ack, PublishProps, WillProps};
use crate::session::{
    simulate_clock, Delivery, DropReason, Limits, Output, PeerLimits, Session, SessionError,
};
use crate::topic::TopicTrie;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------ decode

/// The large maximum packet size decode_case uses (the configuration's default).
const LARGE_MAX_PACKET: usize = 1 << 20;

/// Feeds `data` to the decoder the way a connection's read loop does.
///
/// Layout: byte 0 picks a small maximum packet size (2 + byte) and small topic limits
/// (levels: 1 + its top three bits; length: the small packet size), bytes 1 and 2 seed
/// the sizes of the chunks the rest arrives in (1 to byte 1 + 1 bytes each), bit 7 of
/// byte 2 decodes under MQTT 3.1's flag rules, else bit 6 decodes as a 5.0 connection
/// (properties, reason codes, AUTH), and the rest is the byte stream a client sends. For the small limits and the configuration's defaults, the stream is decoded
/// both as it arrives in chunks and all at once; checked:
/// - the chunking changes nothing: the same packets, then the same error or the same
///   number of bytes left over waiting for more;
/// - `Ok(None)` leaves the buffer untouched; a packet consumes at least one byte and at
///   most the maximum packet size;
/// - nothing decoded breaks a limit or a string rule: topics within the length and
///   level limits (or empty with a topic alias, at 5.0), client ids within theirs, no
///   control character in any string, no empty topic filter; at 5.0, every reason code
///   is one its packet may carry and a PUBLISH's `props` is never `Some` and empty;
/// - every packet re-encodes (at its version) to `encoded_len` bytes, no more than it
///   arrived in, and decodes back to an equal packet;
/// - routing what was decoded (SUBSCRIBE/UNSUBSCRIBE filters into a [`TopicTrie`],
///   PUBLISH and will topics matched against it) agrees with [`matches`], and removing
///   every filter leaves the trie empty.
pub fn decode_case(data: &[u8]) {
    let (header, stream) = data.split_at(data.len().min(3));
    let byte = |i: usize| header.get(i).copied().unwrap_or(0);
    let small_max = 2 + usize::from(byte(0));
    let max_chunk = usize::from(byte(1)) + 1;
    let seed = u64::from(byte(1)) << 8 | u64::from(byte(2));
    let mqtt31 = byte(2) & 0x80 != 0;
    let v5 = !mqtt31 && byte(2) & 0x40 != 0;
    let chunks = chunk_sizes(stream.len(), max_chunk, seed);
    let small = DecodeOptions {
        max_packet_size: small_max,
        max_topic_length: small_max,
        max_topic_levels: 1 + usize::from(byte(0) >> 5),
        max_client_id_length: 23,
        mqtt31,
        v5,
    };
    let defaults = Config::default().decode_options(mqtt31, v5);
    for opts in [small, defaults] {
        let whole = decode_stream(stream, &[stream.len()], &opts);
        let chunked = decode_stream(stream, &chunks, &opts);
        assert_eq!(whole, chunked, "chunking changed what was decoded");
        for (packet, frame_len) in &whole.packets {
            assert_within_limits(packet, &opts);
            assert_round_trip(packet, *frame_len, v5);
        }
        if opts == defaults {
            route(whole.packets.iter().map(|(p, _)| p));
        }
    }
}

/// [`decode_case`] on a 5.0 connection, whatever the third byte says: every input
/// goes through the 5.0 decoder (`decode_v5`), none is spent on 3.1.1 or 3.1.
pub fn decode_v5_case(data: &[u8]) {
    let mut data = data.to_vec();
    if data.len() < 3 {
        data.resize(3, 0);
    }
    // Bit 7 clear (not 3.1), bit 6 set (5.0).
    data[2] = (data[2] & 0x3F) | 0x40;
    decode_case(&data);
}

/// What the decoder let through keeps to the limits and string rules it enforces.
fn assert_within_limits(packet: &Packet, opts: &DecodeOptions) {
    let clean = |s: &str| {
        !s.chars()
            .any(|c| matches!(c, '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}'))
    };
    let topic_ok = |t: &str| {
        clean(t)
            && !t.is_empty()
            && t.len() <= opts.max_topic_length
            && level_count(t.as_bytes()) <= opts.max_topic_levels
    };
    let aliased = |p: &crate::protocol::Publish| {
        opts.v5 && p.topic.is_empty() && p.props.as_ref().is_some_and(|p| p.topic_alias.is_some())
    };
    let reason_ok = |code: ReasonCode, kind: PacketKind| {
        assert!(code.valid_in(kind), "{code} in {kind}");
    };
    match packet {
        Packet::Publish(p) => {
            assert!(topic_ok(&p.topic) || aliased(p), "topic {:?}", p.topic);
            assert!(p.props.as_ref().is_none_or(|p| !p.is_empty()));
        }
        Packet::ConnAckV5(c) => reason_ok(c.reason, PacketKind::ConnAck),
        Packet::PubAckV5(a) => reason_ok(a.reason, PacketKind::PubAck),
        Packet::PubRecV5(a) => reason_ok(a.reason, PacketKind::PubRec),
        Packet::PubRelV5(a) => reason_ok(a.reason, PacketKind::PubRel),
        Packet::PubCompV5(a) => reason_ok(a.reason, PacketKind::PubComp),
        Packet::SubAckV5(a) => a
            .reasons
            .iter()
            .for_each(|r| reason_ok(*r, PacketKind::SubAck)),
        Packet::UnsubAckV5(a) => a
            .reasons
            .iter()
            .for_each(|r| reason_ok(*r, PacketKind::UnsubAck)),
        Packet::DisconnectV5(d) => reason_ok(d.reason, PacketKind::Disconnect),
        Packet::Auth(a) => reason_ok(a.reason, PacketKind::Auth),
        Packet::Connect(c) => {
            assert!(clean(&c.client_id) && c.client_id.len() <= opts.max_client_id_length);
            assert!(c.username.as_deref().is_none_or(clean));
            if let Some(w) = &c.will {
                assert!(topic_ok(&w.topic), "will topic {:?}", w.topic);
            }
        }
        Packet::Subscribe(s) => {
            for f in &s.filters {
                assert!(clean(&f.filter) && !f.filter.is_empty(), "{:?}", f.filter);
            }
        }
        Packet::Unsubscribe(u) => {
            for f in &u.filters {
                assert!(clean(f) && !f.is_empty(), "{f:?}");
            }
        }
        _ => {}
    }
}

/// What decoding one stream produced.
#[derive(Debug, PartialEq)]
struct Decoded {
    /// Each packet with the number of bytes it was decoded from.
    packets: Vec<(Packet, usize)>,
    /// The error that ended the stream, or the bytes left waiting for more.
    end: Result<usize, DecodeError>,
}

/// Chunk sizes (1..=max_chunk, from a xorshift generator) covering `len` bytes.
fn chunk_sizes(len: usize, max_chunk: usize, seed: u64) -> Vec<usize> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut sizes = Vec::new();
    let mut left = len;
    while left > 0 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (state % max_chunk as u64) as usize + 1;
        let n = n.min(left);
        sizes.push(n);
        left -= n;
    }
    sizes
}

/// Appends `stream` to a read buffer chunk by chunk and, after each chunk, decodes every
/// complete packet, like the read loop; stops at the first error.
fn decode_stream(stream: &[u8], chunks: &[usize], opts: &DecodeOptions) -> Decoded {
    let max = opts.max_packet_size;
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut rest = stream;
    for &n in chunks {
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match decode_with(&mut buf, opts) {
                Ok(Some(packet)) => {
                    let used = before - buf.len();
                    assert!(used >= 2 && used <= max, "{used} bytes used, max {max}");
                    packets.push((packet, used));
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                Err(e) => {
                    return Decoded {
                        packets,
                        end: Err(e),
                    }
                }
            }
        }
    }
    Decoded {
        packets,
        end: Ok(buf.len()),
    }
}

/// A decoded packet encodes to at most the bytes it came from (so it never exceeds the
/// limit it was checked against) and decodes back to itself, at its version.
fn assert_round_trip(packet: &Packet, frame_len: usize, v5: bool) {
    let mut out = BytesMut::new();
    if v5 {
        packet.encode_v5(&mut out);
        assert_eq!(out.len(), encoded_len_v5(packet), "encoded_len_v5 is wrong");
    } else {
        packet.encode(&mut out);
        assert_eq!(out.len(), encoded_len(packet), "encoded_len is wrong");
    }
    assert!(
        out.len() <= frame_len,
        "{} re-encodes to {} bytes from {frame_len}",
        packet.name(),
        out.len()
    );
    let mut buf = out.clone();
    let opts = DecodeOptions {
        v5,
        ..DecodeOptions::new(LARGE_MAX_PACKET)
    };
    match decode_with(&mut buf, &opts) {
        Ok(Some(back)) => {
            assert_eq!(&back, packet, "round trip changed the packet");
            assert!(buf.is_empty(), "re-encoded packet left bytes over");
        }
        other => panic!("re-encoded {} does not decode: {other:?}", packet.name()),
    }
}

/// Routes decoded packets as the shard does, with the trie checked against a plain list
/// of (filter, key, QoS) and [`matches`]. The key is the SUBSCRIBE packet id mod 4, so
/// several "sessions" share filters.
fn route<'a>(packets: impl Iterator<Item = &'a Packet>) {
    let mut trie: TopicTrie<u16, QoS> = TopicTrie::new();
    let mut model: Vec<(ByteString, u16, QoS)> = Vec::new();
    for packet in packets {
        match packet {
            Packet::Subscribe(s) => {
                for f in &s.filters {
                    if !valid_topic_filter(&f.filter) {
                        continue;
                    }
                    let key = s.pkid % 4;
                    let new_filter = !model.iter().any(|e| e.0 == f.filter);
                    let old = model.iter().position(|e| e.0 == f.filter && e.1 == key);
                    let inserted = trie.insert(&f.filter, key, f.qos);
                    assert_eq!(inserted.filter_was_new, new_filter);
                    match old {
                        Some(i) => {
                            assert_eq!(inserted.previous, Some(model[i].2));
                            model[i].2 = f.qos;
                        }
                        None => {
                            assert_eq!(inserted.previous, None);
                            model.push((f.filter.clone(), key, f.qos));
                        }
                    }
                }
            }
            Packet::Unsubscribe(u) => {
                for f in &u.filters {
                    unroute(&mut trie, &mut model, f, u.pkid % 4);
                }
            }
            // An empty (aliased, 5.0) topic names no topic to match.
            Packet::Publish(p) if !p.topic.is_empty() => assert_matches(&trie, &model, &p.topic),
            Packet::Connect(c) => {
                if let Some(will) = &c.will {
                    assert_matches(&trie, &model, &will.topic);
                }
            }
            _ => {}
        }
        assert_eq!(trie.len(), model.len());
        let filters: BTreeSet<&str> = model.iter().map(|e| &*e.0).collect();
        assert_eq!(trie.filter_count(), filters.len());
    }
    while let Some((filter, key, _)) = model.last().cloned() {
        unroute(&mut trie, &mut model, &filter, key);
    }
    assert!(trie.is_empty());
    assert_eq!(
        trie.node_count(),
        1,
        "removing every filter left nodes behind"
    );
}

fn unroute(
    trie: &mut TopicTrie<u16, QoS>,
    model: &mut Vec<(ByteString, u16, QoS)>,
    filter: &str,
    key: u16,
) {
    let removed = trie.remove(filter, &key);
    match model.iter().position(|e| &*e.0 == filter && e.1 == key) {
        Some(i) => {
            let (_, _, qos) = model.remove(i);
            assert_eq!(removed.removed, Some(qos));
            assert_eq!(
                removed.filter_now_empty,
                !model.iter().any(|e| &*e.0 == filter)
            );
        }
        None => {
            assert_eq!(removed.removed, None);
            assert!(!removed.filter_now_empty);
        }
    }
}

fn assert_matches(trie: &TopicTrie<u16, QoS>, model: &[(ByteString, u16, QoS)], topic: &str) {
    let mut got = Vec::new();
    trie.for_each_match(topic, |&k, &q| got.push((k, q)));
    let mut want: Vec<(u16, QoS)> = model
        .iter()
        .filter(|e| matches(&e.0, topic))
        .map(|e| (e.1, e.2))
        .collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "trie and matches() disagree on {topic:?}");
}

// ----------------------------------------------------------------------- session

/// Topic of every message the case delivers; with the 8-byte sequence number at the
/// front of each payload it sets the least a queued message costs.
const TOPIC: &str = "t/x";
const MIN_COST: usize = TOPIC.len() + 8;
const MAX_COST: usize = TOPIC.len() + 8 + 600;

/// Queue bounds picked by bits 3-4 of the first byte: (messages, bytes).
const QUEUE_LIMITS: [(usize, usize); 4] = [(8, 512), (8, 64), (1, 512), (0, 0)];

/// Filters the SUBSCRIBE/UNSUBSCRIBE operations pick from.
const FILTERS: [&str; 6] = ["t/x", "t/+", "#", "$SYS/#", "a/b/c", "+/+"];

/// A 5.0 case's client Receive Maximum, by bits 0-1 of its peer byte.
const RECEIVE_MAXIMUMS: [u16; 4] = [1, 2, 3, u16::MAX];
/// A 5.0 case's client Maximum Packet Size, by bits 2-4 of its peer byte: around the
/// sizes the deliveries come in (16 bytes at least, about 650 at most).
const MAX_PACKET_SIZES: [Option<u32>; 8] = [
    None,
    Some(18),
    Some(24),
    Some(40),
    Some(64),
    Some(300),
    Some(630),
    None,
];
/// A 5.0 case's broker Receive Maximum (inbound QoS 2 awaiting PUBREL), by bits 5-6.
const SERVER_RECEIVE_MAXIMUMS: [u16; 4] = [1, 2, 4, u16::MAX];

/// Forwarded properties a 5.0 message or will may carry, as on the wire: a User
/// Property "k" = "v".
const FORWARD: &[u8] = &[0x26, 0, 1, b'k', 0, 1, b'v'];

/// Runs `data` as a sequence of operations on one client's [`Session`], driven the way
/// the shard drives it, and checks the session against a model after every step.
///
/// Byte 0 picks the limits (max_inflight 0..=4, one of [`QUEUE_LIMITS`]), whether the
/// first connection asks for a clean session (bit 7) and, with bit 6, a 5.0 session:
/// then byte 1 picks the peer limits the shard sets on every connection (the client's
/// Receive Maximum from [`RECEIVE_MAXIMUMS`], its Maximum Packet Size from
/// [`MAX_PACKET_SIZES`], the broker's Receive Maximum from [`SERVER_RECEIVE_MAXIMUMS`]).
/// Then each operation is one byte (the opcode, mod 16) followed by its argument
/// bytes: client packets (PUBLISH at any QoS
/// with any packet id and DUP, PUBACK/PUBREC/PUBREL/PUBCOMP for in-flight or arbitrary
/// ids, PINGREQ, DISCONNECT, packets only a server may send), deliveries at any QoS,
/// write-buffer pressure, subscriptions, reconnects (clean, resumed, taking over) and
/// disconnects (with or without DISCONNECT), and the clock. A protocol violation is
/// answered as the shard answers it: the connection closes without DISCONNECT.
///
/// A 5.0 case reads more argument bytes for some operations: deliveries carry a
/// Message Expiry Interval (0 s to 31 s, or the largest) and forwarded properties,
/// client PUBLISH packets an expiry, subscriptions a Subscription Identifier, wills a
/// Will Delay Interval and an expiry. The session reads a simulated clock (see
/// [`simulate_clock`]) that the clock operation steps, so expiry is exact.
///
/// At the end the client reconnects and acknowledges everything; every QoS 1/2 message
/// the session accepted (sent or queued) must by then have been sent, or have expired
/// while queued and been counted as such.
pub fn session_case(data: &[u8]) {
    let mut input = Input { data, pos: 0 };
    let config = input.byte();
    let (max_queued_messages, max_queued_bytes) = QUEUE_LIMITS[usize::from(config >> 3) & 3];
    let limits = Limits {
        max_inflight: u16::from(config % 5),
        max_queued_messages,
        max_queued_bytes,
    };
    let peer = (config & 0x40 != 0).then(|| {
        let b = usize::from(input.byte());
        PeerLimits {
            receive_maximum: RECEIVE_MAXIMUMS[b & 3],
            max_packet_size: MAX_PACKET_SIZES[(b >> 2) & 7],
            server_receive_maximum: SERVER_RECEIVE_MAXIMUMS[(b >> 5) & 3],
            topic_alias_maximum: 0,
        }
    });
    let mut h = Harness::new(limits, peer);
    h.connect(config & 0x80 != 0, 0, None);
    h.check();
    while let Some(op) = input.next() {
        h.step(op, &mut input);
        h.check();
    }
    h.drain();
}

/// The fuzz input as a stream of argument bytes; reads past the end yield 0.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn byte(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn qos(&mut self) -> QoS {
        QoS::from_u8(self.byte() % 3).unwrap_or(QoS::AtMostOnce)
    }
}

/// Whether a flow in flight uses `pkid` and meets `test`.
fn in_flight(flows: &[Flow], pkid: u16, test: impl Fn(&Flow) -> bool) -> bool {
    flows.iter().any(|f| f.pkid == pkid && test(f))
}

/// What the model knows of one message delivered to the session.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// Effective QoS: min(message, granted).
    qos: QoS,
    retain: bool,
    /// Topic + payload bytes.
    cost: usize,
    /// When it expires (simulated clock) and the interval it had, in seconds.
    expiry: Option<(Instant, u32)>,
    /// Whether it carries [`FORWARD`].
    forward: bool,
}

/// Resets the session's simulated clock when a case ends, however it ends.
struct ClockGuard;

impl Drop for ClockGuard {
    fn drop(&mut self) {
        simulate_clock(None);
    }
}

/// The model's view of one outgoing QoS 1/2 flow.
#[derive(Debug, Clone, Copy)]
struct Flow {
    pkid: u16,
    seq: u64,
    qos: QoS,
    /// Topic + payload bytes held for resending until released or completed.
    cost: usize,
    /// PUBREC received and PUBREL sent (QoS 2).
    released: bool,
}

/// One Session plus everything the client and the shard know about it.
struct Harness {
    limits: Limits,
    /// The 5.0 peer limits the shard sets on every connection; `None`: 3.1.1.
    peer: Option<PeerLimits>,
    /// `None` once a clean session has ended (the shard drops it).
    session: Option<Session>,
    clean: bool,
    out: Output,
    now: Instant,
    last_activity: Instant,
    keep_alive: u16,
    connected: bool,
    writable: bool,
    will_set: bool,
    /// The Will Properties of the will held (5.0).
    will_props: WillProps,
    /// Outgoing flows in send order.
    flows: Vec<Flow>,
    /// Messages the session took (sent or queued) and still holds, has evicted or
    /// has dropped as expired: equals in-flight + queued + evicted QoS 0 + expired
    /// (as `take_expired` reported) at all times.
    held: u64,
    /// Per delivered sequence number, what the message was.
    sent: Vec<Sent>,
    /// Accepted QoS 1/2 messages not yet sent once.
    unsent: BTreeSet<u64>,
    /// Sequence number of the last message sent for the first time (FIFO order).
    last_first: Option<u64>,
    awaiting_pubrel: BTreeSet<u16>,
    subscriptions: BTreeMap<String, QoS>,
    /// Subscription Identifiers of the subscriptions that have one (5.0).
    subscription_ids: BTreeMap<String, NonZeroU32>,
    /// Sum of what `take_evictions` reported.
    evictions_taken: u64,
    /// Sum of what `take_expired` reported.
    expired_taken: u64,
    /// Accepted QoS 1/2 messages the session passed over on their way out, expired or
    /// too large (which, when both hold, the model cannot tell).
    dropped_unsent: u64,
    /// Sum of what `take_too_large` reported.
    too_large_taken: u64,
    /// Accepted QoS 1/2 messages not yet sent whose PUBLISH was over the client's
    /// Maximum Packet Size at the end of some step (so the session may have passed
    /// them over since: subscription identifiers change only between flushes).
    maybe_too_large: BTreeSet<u64>,
    _clock: ClockGuard,
}

impl Harness {
    fn new(limits: Limits, peer: Option<PeerLimits>) -> Harness {
        let now = Instant::now();
        simulate_clock(Some(now));
        Harness {
            limits,
            peer,
            session: None,
            clean: false,
            out: Output::default(),
            now,
            last_activity: now,
            keep_alive: 0,
            connected: false,
            writable: false,
            will_set: false,
            will_props: WillProps::default(),
            flows: Vec::new(),
            held: 0,
            sent: Vec::new(),
            unsent: BTreeSet::new(),
            last_first: None,
            awaiting_pubrel: BTreeSet::new(),
            subscriptions: BTreeMap::new(),
            subscription_ids: BTreeMap::new(),
            evictions_taken: 0,
            expired_taken: 0,
            dropped_unsent: 0,
            too_large_taken: 0,
            maybe_too_large: BTreeSet::new(),
            _clock: ClockGuard,
        }
    }

    /// QoS 1/2 flows in flight at most: the broker's bound, and a 5.0 client's
    /// Receive Maximum.
    fn max_inflight(&self) -> usize {
        let window = self.limits.max_inflight.max(1);
        usize::from(window.min(self.peer.map_or(u16::MAX, |p| p.receive_maximum)))
    }

    fn v5(&self) -> bool {
        self.peer.is_some()
    }

    fn step(&mut self, op: u8, input: &mut Input<'_>) {
        match op % 16 {
            0..=2 => {
                let qos = input.qos();
                let granted = input.qos();
                let flags = input.byte();
                let props = if self.v5() { input.byte() } else { 0 };
                self.deliver(qos, granted, flags, props);
            }
            3 | 4 => {
                let flags = input.byte();
                let qos = QoS::from_u8(flags & 3).unwrap_or(QoS::AtMostOnce);
                let pkid = match input.byte() {
                    0xFF => input.u16(),
                    b => u16::from(b % 8),
                };
                // At 5.0, bit 5 adds an expiry of flags >> 6 seconds and FORWARD.
                let props = (self.v5() && flags & 0x20 != 0).then(|| {
                    Box::new(PublishProps {
                        message_expiry: Some(u32::from(flags >> 6)),
                        forward: Bytes::from_static(FORWARD),
                        ..PublishProps::default()
                    })
                });
                self.client(Packet::Publish(Publish {
                    props,
                    dup: flags & 4 != 0,
                    qos,
                    retain: flags & 8 != 0,
                    topic: ByteString::from_static(if flags & 0x10 == 0 { "in/a" } else { "in/b" }),
                    pkid,
                    payload: Bytes::copy_from_slice(&[flags; 3]),
                }));
            }
            5 => {
                let pkid = self.ack_pkid(input);
                self.client(Packet::PubAck(pkid));
            }
            6 => {
                let pkid = self.ack_pkid(input);
                self.client(Packet::PubRec(pkid));
            }
            7 => {
                let pkid = match input.byte() {
                    0xFF => input.u16(),
                    b => u16::from(b % 8),
                };
                self.client(Packet::PubRel(pkid));
            }
            8 => {
                let pkid = self.ack_pkid(input);
                self.client(Packet::PubComp(pkid));
            }
            9 => {
                let writable = input.byte() & 1 != 0;
                self.set_writable(writable);
            }
            10 => {
                let flags = input.byte();
                let keep_alive = match flags >> 6 {
                    0 => 0,
                    1 => 1,
                    2 => u16::MAX,
                    _ => input.u16(),
                };
                // At 5.0, bit 4 adds Will Properties from the next byte: a delay of
                // bits 0-3 seconds, with bit 4 an expiry of bits 5-7 seconds, with
                // bits 5-7 not 0 FORWARD too.
                let will_props = if self.v5() && flags & 0x12 == 0x12 {
                    let b = input.byte();
                    WillProps {
                        delay_interval: u32::from(b & 0x0F),
                        message_expiry: (b & 0x10 != 0).then_some(u32::from(b >> 5)),
                        forward: if b >> 5 != 0 {
                            Bytes::from_static(FORWARD)
                        } else {
                            Bytes::new()
                        },
                    }
                } else {
                    WillProps::default()
                };
                let will = (flags & 2 != 0).then(|| LastWill {
                    props: will_props,
                    topic: ByteString::from_static("will"),
                    payload: Bytes::from_static(b"gone"),
                    qos: QoS::from_u8((flags >> 2) % 3).unwrap_or(QoS::AtMostOnce),
                    retain: flags & 0x20 != 0,
                });
                self.connect(flags & 1 != 0, keep_alive, will);
            }
            11 => {
                let how = input.byte() % 3;
                self.disconnect(how);
            }
            12 => {
                let b = input.byte();
                let qos = input.qos();
                // At 5.0 a subscription may carry an identifier, of 1 to 4 bytes.
                let id = if self.v5() {
                    let b = input.byte();
                    let low = u32::from(b & 0x3F);
                    NonZeroU32::new(match b >> 6 {
                        0 => 0,
                        1 => low,
                        2 => (low << 8) | 0x80,
                        _ => 268_435_455 - low,
                    })
                } else {
                    None
                };
                self.subscription(
                    FILTERS[usize::from(b >> 1) % FILTERS.len()],
                    b & 1 == 0,
                    qos,
                    id,
                );
            }
            13 => self.client(Packet::PingReq),
            14 => {
                let which = input.byte();
                self.client(server_only_packet(which));
            }
            _ => {
                let ms = input.u16();
                self.now += Duration::from_millis(u64::from(ms) * 8);
                simulate_clock(Some(self.now));
            }
        }
    }

    /// A packet id for an acknowledgement: usually one of the flows in flight, else a
    /// small id (0 included) or any id.
    fn ack_pkid(&self, input: &mut Input<'_>) -> u16 {
        match input.byte() {
            0xFF => input.u16(),
            b if b < 0xC0 && !self.flows.is_empty() => {
                self.flows[usize::from(b) % self.flows.len()].pkid
            }
            b => u16::from(b % 8),
        }
    }

    /// A new session when there is none or either side asks for a clean one, as the
    /// shard's `attach` does; a connection still attached is taken over first.
    fn connect(&mut self, clean: bool, keep_alive: u16, will: Option<LastWill>) {
        if self.connected {
            self.drop_connection(false);
        }
        if clean || self.clean {
            self.session = None;
        }
        if self.session.is_none() {
            self.reset(clean);
        }
        let s = self.session.as_mut().expect("session exists");
        self.will_set = will.is_some();
        self.will_props = will.as_ref().map(|w| w.props.clone()).unwrap_or_default();
        s.set_v5(self.peer.is_some());
        s.set_peer_limits(self.peer.unwrap_or_default());
        s.connect(keep_alive, will, self.now, &mut self.out);
        self.connected = true;
        self.writable = true;
        self.keep_alive = keep_alive;
        self.last_activity = self.now;
        // Resent first, in their original order: PUBLISH with DUP for flows awaiting
        // PUBACK/PUBREC, PUBREL for flows awaiting PUBCOMP.
        let packets = std::mem::take(&mut self.out.packets);
        // A flow whose PUBLISH is now over the client's Maximum Packet Size is
        // discarded as if completed, not resent [MQTT-3.1.2-25].
        let flows = std::mem::take(&mut self.flows);
        self.flows = flows
            .into_iter()
            .filter(|f| f.released || !self.too_large_now(f.seq, f.qos))
            .collect();
        assert!(
            packets.len() >= self.flows.len(),
            "resume lost in-flight flows"
        );
        let (resent, fresh) = packets.split_at(self.flows.len());
        for (flow, packet) in self.flows.iter().zip(resent) {
            match packet {
                Packet::PubRel(id) if flow.released => assert_eq!(*id, flow.pkid),
                Packet::Publish(p) if !flow.released => {
                    assert!(p.dup, "resent PUBLISH without DUP");
                    assert_eq!(p.pkid, flow.pkid);
                    assert_eq!(p.qos, flow.qos);
                    assert_eq!(seq_of(p), flow.seq, "resent another message");
                    assert_eq!(p.retain, self.sent[flow.seq as usize].retain);
                    self.check_v5_publish(p, false);
                }
                other => panic!("resume sent {other:?} for {flow:?}"),
            }
        }
        self.absorb(fresh);
        self.after_call();
    }

    /// Starts a fresh session (the previous one, if any, is forgotten with its state).
    fn reset(&mut self, clean: bool) {
        self.session = Some(Session::new(
            ByteString::from_static("fuzz"),
            clean,
            self.limits.clone(),
        ));
        self.clean = clean;
        self.flows.clear();
        self.held = 0;
        self.unsent.clear();
        self.last_first = None;
        self.awaiting_pubrel.clear();
        self.subscriptions.clear();
        self.subscription_ids.clear();
        self.evictions_taken = 0;
        self.expired_taken = 0;
        self.dropped_unsent = 0;
        self.too_large_taken = 0;
        self.maybe_too_large.clear();
    }

    /// `how`: 0 the client sent DISCONNECT, 1 the connection closed cleanly without
    /// it (graceful but no packet), 2 the connection broke.
    fn disconnect(&mut self, how: u8) {
        if !self.connected {
            if let Some(s) = &mut self.session {
                assert_eq!(s.disconnect(how == 1), None, "will without a connection");
            }
            return;
        }
        if how == 0 {
            self.client(Packet::Disconnect);
        } else {
            self.drop_connection(how == 1);
        }
    }

    /// The connection ends: the will comes back unless graceful or already cleared, and
    /// a clean session ends with it.
    fn drop_connection(&mut self, graceful: bool) {
        let s = self.session.as_mut().expect("connected session");
        let will = s.disconnect(graceful);
        assert_eq!(will.is_some(), self.will_set && !graceful, "will");
        if let Some(w) = will {
            // Its expiry counts from now, when it is published.
            let props = &self.will_props;
            let want = MessageProps::new(props.message_expiry, &props.forward, self.now);
            assert_eq!(w.props, want, "will properties");
            assert!(&*w.topic == "will" && &w.payload[..] == b"gone");
        }
        assert_eq!(s.will_delay(), 0, "will delay without a will");
        assert_eq!(s.disconnect(false), None, "will returned twice");
        assert!(!s.is_connected());
        self.will_set = false;
        self.connected = false;
        self.writable = false;
        if self.clean {
            self.session = None;
        }
    }

    /// A packet from the client, handled as the shard's `handle_packet` does.
    fn client(&mut self, packet: Packet) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        // One more inbound QoS 2 flow than the broker's Receive Maximum allows.
        let server_receive_maximum = self.peer.map_or(u16::MAX, |p| p.server_receive_maximum);
        let over_receive_maximum = matches!(&packet, Packet::Publish(p)
            if p.qos == QoS::ExactlyOnce
                && p.pkid != 0
                && !self.awaiting_pubrel.contains(&p.pkid)
                && self.awaiting_pubrel.len() >= usize::from(server_receive_maximum));
        let violation = over_receive_maximum
            || match &packet {
                Packet::Publish(p) => {
                    if p.qos == QoS::AtMostOnce {
                        p.dup
                    } else {
                        p.pkid == 0
                    }
                }
                // An acknowledgement of the wrong kind for a flow in flight closes the
                // connection; one for an id not in flight is a late duplicate.
                Packet::PubAck(id) => {
                    *id == 0 || in_flight(&self.flows, *id, |f| f.qos != QoS::AtLeastOnce)
                }
                Packet::PubRec(id) => {
                    *id == 0 || in_flight(&self.flows, *id, |f| f.qos == QoS::AtLeastOnce)
                }
                Packet::PubComp(id) => *id == 0 || in_flight(&self.flows, *id, |f| !f.released),
                Packet::PubRel(id) => *id == 0,
                Packet::PingReq | Packet::Disconnect => false,
                _ => true,
            };
        let result = s.handle(packet.clone(), self.now, &mut self.out);
        if !self.connected {
            assert_eq!(result, Err(SessionError::NotConnected));
            assert!(self.out.packets.is_empty() && self.out.publishes.is_empty());
            return;
        }
        self.last_activity = self.now;
        if let Err(e) = result {
            assert!(violation, "{} refused: {e}", packet.name());
            if over_receive_maximum {
                assert_eq!(
                    e,
                    SessionError::ReceiveMaximumExceeded(server_receive_maximum)
                );
            }
            self.out.packets.clear();
            self.out.publishes.clear();
            self.drop_connection(false);
            return;
        }
        assert!(!violation, "{} accepted", packet.name());
        let packets = std::mem::take(&mut self.out.packets);
        let publishes = std::mem::take(&mut self.out.publishes);
        let expect_routed = |routed: bool| {
            if routed {
                let Packet::Publish(p) = &packet else {
                    unreachable!()
                };
                assert_eq!(
                    publishes.len(),
                    1,
                    "PUBLISH routed {} times",
                    publishes.len()
                );
                let m = &publishes[0];
                assert!(m.topic == p.topic && m.payload == p.payload);
                assert!(m.qos == p.qos && m.retain == p.retain);
                // A 5.0 publisher's expiry counts from when the broker received it.
                let want = p.props.as_ref().and_then(|props| {
                    MessageProps::new(props.message_expiry, &props.forward, self.now)
                });
                assert_eq!(m.props, want, "routed message properties");
            } else {
                assert!(publishes.is_empty(), "routed without a PUBLISH to route");
            }
        };
        // The answer the packet calls for, then whatever it let flush.
        let (answer, rest): (Option<Packet>, &[Packet]) = match &packet {
            Packet::Publish(p) => {
                let (answer, routed) = match p.qos {
                    QoS::AtMostOnce => (None, true),
                    QoS::AtLeastOnce => (Some(Packet::PubAck(p.pkid)), true),
                    QoS::ExactlyOnce => (
                        Some(Packet::PubRec(p.pkid)),
                        self.awaiting_pubrel.insert(p.pkid),
                    ),
                };
                expect_routed(routed);
                match answer {
                    Some(_) => (answer, packets.get(1..).unwrap_or(&[])),
                    None => (None, &packets[..]),
                }
            }
            Packet::PubAck(id) => {
                expect_routed(false);
                if let Some(i) = self.flow(*id, QoS::AtLeastOnce, false) {
                    self.complete(i);
                }
                (None, &packets[..])
            }
            Packet::PubRec(id) => {
                expect_routed(false);
                match self.flows.iter().position(|f| f.pkid == *id) {
                    Some(i) => {
                        self.flows[i].released = true;
                        (Some(Packet::PubRel(*id)), packets.get(1..).unwrap_or(&[]))
                    }
                    None => (Some(Packet::PubRel(*id)), packets.get(1..).unwrap_or(&[])),
                }
            }
            Packet::PubComp(id) => {
                expect_routed(false);
                if let Some(i) = self.flow(*id, QoS::ExactlyOnce, true) {
                    self.complete(i);
                }
                (None, &packets[..])
            }
            Packet::PubRel(id) => {
                expect_routed(false);
                // 5.0 answers an unknown id with PUBCOMP 0x92 (§3.7.2.1).
                let answer = if self.awaiting_pubrel.remove(id) || !self.v5() {
                    Packet::PubComp(*id)
                } else {
                    Packet::PubCompV5(Ack {
                        reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                        ..Ack::success(*id)
                    })
                };
                (Some(answer), packets.get(1..).unwrap_or(&[]))
            }
            Packet::PingReq => (Some(Packet::PingResp), packets.get(1..).unwrap_or(&[])),
            Packet::Disconnect => {
                self.will_set = false;
                (None, &packets[..])
            }
            other => unreachable!("{} accepted", other.name()),
        };
        if let Some(answer) = answer {
            assert_eq!(packets.first(), Some(&answer), "wrong answer");
        }
        self.absorb(rest);
        if matches!(packet, Packet::Disconnect) {
            // The shard closes the connection gracefully.
            assert!(rest.is_empty());
            self.drop_connection(true);
        }
        self.after_call();
    }

    /// The flow using `pkid` if it is at this QoS and stage.
    fn flow(&self, pkid: u16, qos: QoS, released: bool) -> Option<usize> {
        self.flows
            .iter()
            .position(|f| f.pkid == pkid && f.qos == qos && f.released == released)
    }

    fn complete(&mut self, i: usize) {
        self.flows.remove(i);
        self.held -= 1;
    }

    /// A message routed to the session, as the shard's delivery does. `props` (5.0):
    /// bit 0 an expiry of bits 2-6 seconds (the largest there is with bit 7), bit 1
    /// FORWARD.
    fn deliver(&mut self, qos: QoS, granted: QoS, flags: u8, props: u8) {
        if self.session.is_none() {
            return;
        }
        let seq = self.sent.len() as u64;
        let len = if flags & 0x80 != 0 {
            600
        } else {
            usize::from(flags & 0x7F) * 2
        };
        let mut payload = seq.to_be_bytes().to_vec();
        payload.resize(8 + len, flags);
        let interval = (props & 1 != 0).then(|| match props & 0x80 {
            0 => u32::from(props >> 2) & 0x1F,
            _ => u32::MAX,
        });
        let forward = props & 2 != 0;
        let forward_bytes = if forward {
            Bytes::from_static(FORWARD)
        } else {
            Bytes::new()
        };
        let msg = Message {
            topic: ByteString::from_static(TOPIC),
            payload: Bytes::from(payload),
            qos,
            retain: flags & 1 != 0,
            stamp: Default::default(),
            props: MessageProps::new(interval, &forward_bytes, self.now),
        };
        let eff = qos.min(granted);
        let expiry = interval.map(|i| (self.now + Duration::from_secs(u64::from(i)), i));
        self.sent.push(Sent {
            qos: eff,
            retain: msg.retain,
            cost: msg.topic.len() + msg.payload.len(),
            expiry,
            forward,
        });
        // What the shard must drop for this client before it queues anything: expired
        // already, or a PUBLISH over the client's Maximum Packet Size.
        let expired = interval == Some(0);
        let too_large = self
            .peer
            .and_then(|p| p.max_packet_size)
            .is_some_and(|max| {
                let props = self.expected_props(seq);
                v5_publish_len(msg.payload.len(), eff, props.as_deref()) > max as usize
            });
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let before = s.stats();
        let delivery = s.deliver(&msg, granted, &mut self.out);
        let packets = std::mem::take(&mut self.out.packets);
        assert!(self.out.publishes.is_empty());
        match delivery {
            Delivery::Sent => {
                assert!(self.connected && self.writable, "sent while it cannot be");
                assert_eq!(packets.len(), 1);
                assert_eq!(before.queued, 0, "sent ahead of queued messages");
            }
            Delivery::Queued => assert!(packets.is_empty()),
            Delivery::Dropped(DropReason::OfflineQoS0) => {
                assert!(!self.connected && eff == QoS::AtMostOnce);
                assert!(packets.is_empty());
            }
            Delivery::Dropped(DropReason::QueueFull) => assert!(packets.is_empty()),
            Delivery::Dropped(DropReason::Expired | DropReason::TooLarge) => {
                assert!(packets.is_empty());
            }
        }
        if !self.connected && eff == QoS::AtMostOnce {
            assert_eq!(delivery, Delivery::Dropped(DropReason::OfflineQoS0));
        } else if expired {
            assert_eq!(delivery, Delivery::Dropped(DropReason::Expired));
        } else if too_large {
            assert_eq!(delivery, Delivery::Dropped(DropReason::TooLarge));
        } else {
            assert!(
                !matches!(
                    delivery,
                    Delivery::Dropped(DropReason::Expired | DropReason::TooLarge)
                ),
                "{delivery:?}"
            );
        }
        if matches!(delivery, Delivery::Sent | Delivery::Queued) {
            self.held += 1;
            if eff != QoS::AtMostOnce {
                self.unsent.insert(seq);
            }
        }
        self.absorb(&packets);
        self.after_call();
    }

    fn set_writable(&mut self, writable: bool) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        s.set_writable(writable, &mut self.out);
        if self.connected {
            self.writable = writable;
        }
        let packets = std::mem::take(&mut self.out.packets);
        if !writable {
            assert!(packets.is_empty(), "sent while not writable");
        }
        self.absorb(&packets);
        self.after_call();
    }

    /// SUBSCRIBE (with its identifier, at 5.0; a subscription without one clears
    /// the one it replaces, as the shard does) or UNSUBSCRIBE.
    fn subscription(&mut self, filter: &str, subscribe: bool, qos: QoS, id: Option<NonZeroU32>) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if subscribe {
            let prev = s.subscribe(ByteString::from(filter), qos);
            assert_eq!(prev, self.subscriptions.insert(filter.to_owned(), qos));
            if self.peer.is_some() {
                s.set_subscription_id(&ByteString::from(filter), id);
                match id {
                    Some(id) => self.subscription_ids.insert(filter.to_owned(), id),
                    None => self.subscription_ids.remove(filter),
                };
            }
        } else {
            let prev = s.unsubscribe(filter);
            assert_eq!(prev, self.subscriptions.remove(filter));
            self.subscription_ids.remove(filter);
        }
    }

    /// Whether a PUBLISH of message `seq` at `qos` is over the client's Maximum Packet
    /// Size now.
    fn too_large_now(&self, seq: u64, qos: QoS) -> bool {
        let Some(max) = self.peer.and_then(|p| p.max_packet_size) else {
            return false;
        };
        let payload = self.sent[seq as usize].cost - TOPIC.len();
        v5_publish_len(payload, qos, self.expected_props(seq).as_deref()) > max as usize
    }

    /// The properties a PUBLISH of message `seq` carries now: none at 3.1.1; at 5.0
    /// the remaining expiry, FORWARD, and the identifiers of the subscriptions that
    /// match [`TOPIC`], ascending.
    fn expected_props(&self, seq: u64) -> Option<Box<PublishProps>> {
        self.peer?;
        let sent = &self.sent[seq as usize];
        let mut ids: Vec<NonZeroU32> = self
            .subscription_ids
            .iter()
            .filter(|(f, _)| matches(f, TOPIC))
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let props = PublishProps {
            message_expiry: sent.expiry.map(|(at, _)| {
                let left = at.saturating_duration_since(self.now);
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                secs.min(u64::from(u32::MAX)) as u32
            }),
            subscription_ids: ids,
            forward: if sent.forward {
                Bytes::from_static(FORWARD)
            } else {
                Bytes::new()
            },
            ..PublishProps::default()
        };
        (!props.is_empty()).then(|| Box::new(props))
    }

    /// A PUBLISH the session sent, first or again: its properties are the ones
    /// the message and subscriptions call for, a remaining expiry never more than
    /// the original (and, `first` time out, not run out), and it is within the
    /// client's Maximum Packet Size.
    fn check_v5_publish(&self, p: &Publish, first: bool) {
        let seq = seq_of(p);
        let want = self.expected_props(seq);
        assert_eq!(p.props, want, "properties of message {seq}");
        if let Some((_, interval)) = self.sent[seq as usize].expiry {
            let left = want.as_ref().and_then(|w| w.message_expiry);
            assert!(
                left.is_some_and(|l| l <= interval),
                "expiry {left:?} of {interval}"
            );
            if first {
                assert_ne!(left, Some(0), "message {seq} sent expired");
            }
        }
        let len = encoded_len_v5(&Packet::Publish(p.clone()));
        if self.peer.is_some() {
            assert_eq!(len, v5_publish_len(p.payload.len(), p.qos, want.as_deref()));
        }
        if let Some(max) = self.peer.and_then(|p| p.max_packet_size) {
            assert!(
                len <= max as usize,
                "PUBLISH of {len} bytes over the client's maximum of {max}"
            );
        }
    }

    /// Checks new PUBLISH packets the session wrote (not resends) and records them.
    fn absorb(&mut self, packets: &[Packet]) {
        for packet in packets {
            let Packet::Publish(p) = packet else {
                panic!("unexpected {packet:?} from the session");
            };
            assert!(
                self.connected && self.writable,
                "PUBLISH while it cannot be"
            );
            assert!(!p.dup, "new PUBLISH with DUP");
            let seq = seq_of(p);
            let Sent {
                qos: eff,
                retain,
                cost,
                ..
            } = *self
                .sent
                .get(seq as usize)
                .expect("PUBLISH of a message never delivered");
            assert_eq!(p.qos, eff, "wrong QoS");
            self.check_v5_publish(p, true);
            // FIFO: accepted QoS 1/2 messages older than this one that never went out
            // never will; only expiry or the Maximum Packet Size may pass one over.
            let passed: Vec<u64> = self.unsent.range(..seq).copied().collect();
            for old in passed {
                self.passed_over(old);
            }
            assert_eq!(p.retain, retain, "wrong retain flag");
            assert_eq!(&*p.topic, TOPIC);
            if p.qos == QoS::AtMostOnce {
                assert_eq!(p.pkid, 0);
                self.held -= 1;
            } else {
                assert_ne!(p.pkid, 0, "packet id 0");
                assert!(
                    self.flows.iter().all(|f| f.pkid != p.pkid),
                    "packet id {} reused while in flight",
                    p.pkid
                );
                assert!(self.unsent.remove(&seq), "message {seq} sent twice");
                self.flows.push(Flow {
                    pkid: p.pkid,
                    seq,
                    qos: p.qos,
                    cost,
                    released: false,
                });
            }
            if let Some(last) = self.last_first {
                assert!(seq > last, "message {seq} sent after {last}: out of order");
            }
            self.last_first = Some(seq);
        }
    }

    /// Accepted QoS 1/2 message `seq` will never be sent: it must have expired or
    /// been over the client's Maximum Packet Size, and the session counts it.
    fn passed_over(&mut self, seq: u64) {
        let expired = self.sent[seq as usize]
            .expiry
            .is_some_and(|(at, _)| at <= self.now);
        assert!(
            expired || self.maybe_too_large.contains(&seq),
            "message {seq} passed over (or never sent), neither expired nor too large"
        );
        self.dropped_unsent += 1;
        self.unsent.remove(&seq);
    }

    fn after_call(&mut self) {
        assert!(self.out.packets.is_empty() && self.out.publishes.is_empty());
    }

    /// Invariants after every step.
    fn check(&mut self) {
        let max_inflight = self.max_inflight();
        let over: Vec<u64> = self
            .unsent
            .iter()
            .copied()
            .filter(|&seq| self.too_large_now(seq, self.sent[seq as usize].qos))
            .collect();
        self.maybe_too_large.extend(over);
        let Some(s) = &mut self.session else {
            assert!(!self.connected);
            return;
        };
        self.evictions_taken += s.take_evictions();
        self.expired_taken += s.take_expired();
        self.too_large_taken += s.take_too_large();
        let st = s.stats();
        let max_bytes = self.limits.max_queued_bytes;
        // The bounds that keep a client's memory bounded.
        assert!(st.inflight <= max_inflight, "window: {st:?}");
        assert!(
            st.queued <= self.limits.max_queued_messages,
            "queue: {st:?}"
        );
        assert!(st.queued_bytes <= max_bytes, "queued bytes: {st:?}");
        let held_flows = self.flows.iter().filter(|f| !f.released).count();
        assert!(
            st.inflight_bytes <= max_bytes || held_flows == 1,
            "in-flight bytes over the bound with {held_flows} messages held: {st:?}"
        );
        // The session's books agree with what it sent and was told.
        assert!(
            st.queued_bytes >= st.queued * MIN_COST && st.queued_bytes <= st.queued * MAX_COST,
            "queued bytes do not add up: {st:?}"
        );
        assert_eq!(st.inflight, self.flows.len(), "in-flight count");
        let inflight_bytes: usize = self
            .flows
            .iter()
            .filter(|f| !f.released)
            .map(|f| f.cost)
            .sum();
        assert_eq!(st.inflight_bytes, inflight_bytes, "in-flight bytes");
        assert_eq!(
            st.inflight as u64
                + st.queued as u64
                + st.evicted_qos0
                + self.expired_taken
                + self.too_large_taken,
            self.held,
            "messages lost or invented: {st:?}"
        );
        assert!(
            self.dropped_unsent <= self.expired_taken + self.too_large_taken,
            "drops not counted"
        );
        let will_delay = if self.will_set {
            self.will_props.delay_interval
        } else {
            0
        };
        assert_eq!(s.will_delay(), will_delay, "will delay");
        assert_eq!(self.evictions_taken, st.evicted_qos0, "evictions reported");
        assert_eq!(st.awaiting_pubrel, self.awaiting_pubrel.len());
        // Nothing waits in the queue that could go out: QoS 0 goes whenever the
        // connection is writable, the front QoS 1/2 message (no bigger than everything
        // queued) when the window has a slot and the bytes held stay in bounds.
        let front_fits = st.inflight_bytes == 0 || st.inflight_bytes + st.queued_bytes <= max_bytes;
        if self.connected && self.writable && st.inflight < max_inflight && front_fits {
            assert_eq!(
                st.queued, 0,
                "queue stalled with room in the window: {st:?}"
            );
        }
        assert_eq!(s.is_connected(), self.connected);
        assert_eq!(s.clean_session(), self.clean);
        assert_eq!(&**s.client_id(), "fuzz");
        let deadline = (self.connected && self.keep_alive > 0)
            .then(|| self.last_activity + Duration::from_millis(u64::from(self.keep_alive) * 1500));
        assert_eq!(s.keep_alive_deadline(), deadline);
        let subs: BTreeMap<String, QoS> =
            s.subscriptions().map(|(f, q)| (f.to_string(), q)).collect();
        assert_eq!(subs, self.subscriptions);
    }

    /// Reconnects if needed and acknowledges every flow until nothing is left; every
    /// accepted QoS 1/2 message must have been sent by then.
    fn drain(&mut self) {
        if self.session.is_none() {
            return;
        }
        if !self.connected {
            self.connect(false, 0, None);
        }
        self.set_writable(true);
        self.check();
        for _ in 0..64 {
            let Some(flow) = self.flows.first().copied() else {
                break;
            };
            match (flow.qos, flow.released) {
                (QoS::AtLeastOnce, _) => self.client(Packet::PubAck(flow.pkid)),
                (_, false) => self.client(Packet::PubRec(flow.pkid)),
                (_, true) => self.client(Packet::PubComp(flow.pkid)),
            }
            self.check();
        }
        let st = self.session.as_ref().expect("connected session").stats();
        assert_eq!((st.inflight, st.queued), (0, 0), "not drained: {st:?}");
        // Left unsent with the queue empty: passed over (expired or too large), or lost.
        let left: Vec<u64> = self.unsent.iter().copied().collect();
        for seq in left {
            self.passed_over(seq);
        }
        assert!(
            self.dropped_unsent <= self.expired_taken + self.too_large_taken,
            "drops not counted"
        );
        // Finish the client's own QoS 2 flows.
        let ids: Vec<u16> = self.awaiting_pubrel.iter().copied().collect();
        for id in ids {
            self.client(Packet::PubRel(id));
        }
        self.check();
        assert_eq!(
            self.session.as_ref().map(|s| s.stats().awaiting_pubrel),
            Some(0)
        );
    }
}

/// The size of a 5.0 PUBLISH of a delivered message (topic [`TOPIC`]) with `payload`
/// bytes of payload and `props`, worked out from §3.3 rather than by the encoder.
fn v5_publish_len(payload: usize, qos: QoS, props: Option<&PublishProps>) -> usize {
    let varint = |n: usize| match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    let props_len = props.map_or(0, |p| {
        let ids: usize = p
            .subscription_ids
            .iter()
            .map(|id| 1 + varint(id.get() as usize))
            .sum();
        p.message_expiry.map_or(0, |_| 5) + p.forward.len() + ids
    });
    let pkid = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + TOPIC.len() + pkid + varint(props_len) + props_len + payload;
    1 + varint(remaining) + remaining
}

/// The sequence number at the front of a delivered message's payload.
fn seq_of(p: &Publish) -> u64 {
    let head = p
        .payload
        .get(..8)
        .expect("payload carries a sequence number");
    u64::from_be_bytes(head.try_into().expect("8 bytes"))
}

/// A packet a client must not send to a server (or that the shard handles itself).
fn server_only_packet(which: u8) -> Packet {
    match which % 7 {
        0 => Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Accepted,
        }),
        1 => Packet::SubAck(SubAck {
            pkid: 1,
            codes: vec![SubAckCode::Failure],
        }),
        2 => Packet::UnsubAck(1),
        3 => Packet::PingResp,
        4 => Packet::Subscribe(Subscribe {
            id: None,
            user: Vec::new(),
            pkid: 1,
            filters: vec![SubscribeFilter {
                no_local: false,
                retain_as_published: false,
                retain_handling: Default::default(),
                filter: ByteString::from_static("t/x"),
                qos: QoS::AtLeastOnce,
            }],
        }),
        5 => Packet::Unsubscribe(Unsubscribe {
            user: Vec::new(),
            pkid: 1,
            filters: vec![ByteString::from_static("t/x")],
        }),
        _ => Packet::Connect(Box::new(Connect {
            props: Default::default(),
            protocol: Protocol::V311,
            bridge: false,
            clean_session: true,
            keep_alive: 0,
            client_id: ByteString::from_static("fuzz"),
            will: None,
            username: None,
            password: None,
        })),
    }
}

// ------------------------------------------------------------------------ passwd

/// User name [`passwd_case`] adds (or, with bit 7 of byte 0, the file's first user it
/// replaces).
const NEW_USER: &str = "fuzz-new-user";

/// Feeds `data` to the password-file parser the way `FileAuth::load` does, then edits
/// the result the way `shardmq passwd` does.
///
/// Layout: byte 0 picks the edits (bits 0-1: iterations - 1 of the `$7$` hash the case
/// makes; bits 2-6: which user to remove, modulo the number of users; bit 7: give the
/// new hash to the file's first user instead of [`NEW_USER`]); the rest, lossily as
/// UTF-8, is the file. Its first 16 bytes are the password of the new hashes, and byte
/// 0 with the next 11 bytes their salt. Checked:
/// - parsing never panics; a refused file reports at least one line, every line number
///   within 1..=the number of lines, in increasing order;
/// - an accepted file has exactly one user per line that is not blank or a comment,
///   each found with `get` under its name with the hash the line holds; re-formatting
///   it with `to_string()` and parsing again gives an equal file, and every hash
///   formats back to text that parses to an equal hash;
/// - `verify` does not panic on any `$6$` hash or on a `$7$` hash of at most 16
///   iterations (bigger counts would make the fuzzer slow);
/// - `remove` drops exactly one user and leaves every other findable with its hash;
///   `set` with a `$7$` hash the case makes (1 to 4 iterations) and a `$6$` hash makes
///   the password verify and another one fail, and the file still round-trips.
pub fn passwd_case(data: &[u8]) {
    use crate::auth::password::{PasswordFile, PasswordHash};

    let (control, rest) = match data.split_first() {
        Some((&c, rest)) => (c, rest),
        None => (0, data),
    };
    let text = String::from_utf8_lossy(rest);
    let line_count = text.lines().count();
    let mut file = match PasswordFile::parse(&text) {
        Ok(file) => file,
        Err(errors) => {
            let lines: Vec<usize> = errors.0.iter().map(|e| e.line).collect();
            assert!(!lines.is_empty(), "refused without a reason");
            assert!(
                lines.iter().all(|&l| (1..=line_count).contains(&l)),
                "line numbers {lines:?} outside 1..={line_count}"
            );
            assert!(
                lines.windows(2).all(|w| w[0] < w[1]),
                "line numbers {lines:?} not in increasing order"
            );
            return;
        }
    };

    // Every user line, as the file format defines it.
    let mut users: Vec<(&str, PasswordHash)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line.split_once(':').expect("an accepted line has a colon");
        let hash = PasswordHash::parse(hash).expect("an accepted line has a hash");
        users.push((user, hash));
    }
    assert_eq!(file.len(), users.len(), "users lost or invented");
    assert_eq!(file.is_empty(), users.is_empty());
    for (user, hash) in &users {
        assert_eq!(file.get(user), Some(hash), "user {user:?}");
        let back = PasswordHash::parse(&hash.to_string()).expect("a formatted hash parses");
        assert_eq!(&back, hash, "hash round trip");
        let cheap = match hash {
            PasswordHash::Sha512 { .. } => true,
            PasswordHash::Pbkdf2 { iterations, .. } => *iterations <= 16,
        };
        if cheap {
            hash.verify(rest.get(..16).unwrap_or(rest));
        }
    }
    assert_passwd_round_trip(&file);

    if !users.is_empty() {
        let (gone, _) = users.remove(usize::from(control >> 2 & 0x1f) % users.len());
        assert!(file.remove(gone), "{gone:?} not removed");
        assert!(!file.remove(gone), "{gone:?} removed twice");
        assert!(file.get(gone).is_none());
        assert_eq!(file.len(), users.len());
        for (user, hash) in &users {
            assert_eq!(
                file.get(user),
                Some(hash),
                "{user:?} after removing {gone:?}"
            );
        }
        assert_passwd_round_trip(&file);
    }

    let password = rest.get(..16).unwrap_or(rest);
    let salt: Vec<u8> = std::iter::once(control)
        .chain(rest.iter().copied().skip(16).take(11))
        .collect();
    let user = match users.first() {
        Some((first, _)) if control & 0x80 != 0 => *first,
        _ => NEW_USER,
    };
    let before = file.len();
    let existed = file.get(user).is_some();
    let sha512 = {
        use sha2::{Digest, Sha512};
        let mut h = Sha512::new();
        h.update(password);
        h.update(&salt);
        PasswordHash::Sha512 {
            salt: salt.clone(),
            hash: h.finalize().to_vec(),
        }
    };
    let pbkdf2 = PasswordHash::pbkdf2(password, salt, u32::from(control & 3) + 1);
    for hash in [sha512, pbkdf2] {
        file.set(user, hash.clone());
        assert_eq!(file.len(), before + usize::from(!existed));
        assert_eq!(file.get(user), Some(&hash));
        assert!(file.verify(user, password), "the password does not verify");
        let mut wrong = password.to_vec();
        wrong.push(b'!');
        assert!(!file.verify(user, &wrong), "a wrong password verifies");
        assert!(!file.verify("fuzz-nobody", password));
        for (other, other_hash) in users.iter().filter(|(u, _)| *u != user) {
            assert_eq!(file.get(other), Some(other_hash), "{other:?} after set");
        }
        assert_passwd_round_trip(&file);
    }
}

/// A file formats to text that parses back to an equal file.
fn assert_passwd_round_trip(file: &crate::auth::password::PasswordFile) {
    let text = file.to_string();
    let back = crate::auth::password::PasswordFile::parse(&text)
        .unwrap_or_else(|e| panic!("formatted file does not parse: {e}"));
    assert_eq!(&back, file, "round trip changed the file");
    assert_eq!(back.to_string(), text);
}

// --------------------------------------------------------------------------- acl

/// Most topics and filters an [`acl_case`] input lists, rule topics it takes from the
/// file, and levels per topic or filter: bounds on the work per input.
const ACL_MAX_ENTRIES: usize = 16;
const ACL_MAX_LEVELS: usize = 8;

/// A rule of an ACL file as the model reads it: whose (`None`: anonymous, or the
/// patterns), what it grants and its topic.
#[derive(Debug)]
struct ModelRule<'a> {
    pattern: bool,
    user: Option<&'a str>,
    access: &'a str,
    topic: &'a str,
}

/// Feeds an ACL file and one client to the ACL code the way `FileAuth` does.
///
/// Layout: byte 0 bit 0 says whether the client gives a username; the rest, lossily as
/// UTF-8, is split at NUL characters into the file's text, the client id, the username
/// (only with bit 0) and then at most 16 topics and filters (entries over 8 levels are
/// skipped). Parsing must never panic. For an accepted file, the client's rules are
/// compiled with `for_client` and checked against a model of the documented rules
/// (own rules first, deny winning, then the patterns with `%c` and `%u` put in once,
/// none for a client id or username holding a wildcard, no `%u` pattern without a
/// username) over a pool of topics: the listed topics, instances of every listed
/// filter and rule topic, and for every pair of them a topic both match, when there is
/// one. Checked:
/// - `can_read` and `can_write` agree with the model on every topic of the pool;
/// - for every listed valid filter, `filter_access` says `Allowed` only if `can_read`
///   holds on every topic of the pool the filter matches, `Denied` only if it holds on
///   none;
/// - over the listed filters and the rule topics: if `covers(a, b)`, every topic of the
///   pool `b` matches is matched by `a`; if some topic is matched by both, then
///   `intersects(a, b)`, both ways round.
pub fn acl_case(data: &[u8]) {
    use crate::auth::acl::{covers, intersects, AclFile, FilterAccess};
    use crate::protocol::topic::valid_topic_name;

    let (control, rest) = match data.split_first() {
        Some((&c, rest)) => (c, rest),
        None => (0, data),
    };
    let input = String::from_utf8_lossy(rest);
    let mut parts = input.split('\0');
    let text = parts.next().unwrap_or("");
    let client_id = parts.next().unwrap_or("");
    let username = if control & 1 != 0 {
        Some(parts.next().unwrap_or(""))
    } else {
        None
    };
    let entries: Vec<&str> = parts
        .filter(|e| level_count(e.as_bytes()) <= ACL_MAX_LEVELS)
        .take(ACL_MAX_ENTRIES)
        .collect();

    let line_count = text.lines().count();
    let acl = match AclFile::parse(text) {
        Ok(acl) => acl,
        Err(errors) => {
            let lines: Vec<usize> = errors.0.iter().map(|e| e.line).collect();
            assert!(!lines.is_empty(), "refused without a reason");
            assert!(
                lines.iter().all(|&l| (1..=line_count).contains(&l)),
                "line numbers {lines:?} outside 1..={line_count}"
            );
            assert!(
                lines.windows(2).all(|w| w[0] < w[1]),
                "line numbers {lines:?} not in increasing order"
            );
            return;
        }
    };
    let rules = model_rules(text);
    let client = acl.for_client(client_id, username);

    // The rules that apply to this client, topics substituted, as (access, topic).
    let own: Vec<(&str, String)> = rules
        .iter()
        .filter(|r| !r.pattern && r.user == username)
        .map(|r| (r.access, r.topic.to_string()))
        .collect();
    let wild = |s: &str| s.contains(['+', '#']);
    let patterns: Option<Vec<(&str, String)>> = (!wild(client_id) && !username.is_some_and(wild))
        .then(|| {
            rules
                .iter()
                .filter(|r| r.pattern && (username.is_some() || !r.topic.contains("%u")))
                .map(|r| {
                    (
                        r.access,
                        substitute(r.topic, client_id, username.unwrap_or("")),
                    )
                })
                .collect()
        });

    // Filters: the listed valid ones, then the client's rule topics (for covers and
    // intersects, which filter_access applies to them).
    let listed: Vec<&str> = entries
        .iter()
        .copied()
        .filter(|e| valid_topic_filter(e))
        .collect();
    let mut filters: Vec<String> = listed.iter().map(|f| f.to_string()).collect();
    for (_, topic) in own.iter().chain(patterns.iter().flatten()) {
        if filters.len() >= 2 * ACL_MAX_ENTRIES {
            break;
        }
        if valid_topic_filter(topic)
            && level_count(topic.as_bytes()) <= ACL_MAX_LEVELS
            && !filters.contains(topic)
        {
            filters.push(topic.clone());
        }
    }

    let mut pool: BTreeSet<String> = entries
        .iter()
        .filter(|e| valid_topic_name(e))
        .map(|e| e.to_string())
        .collect();
    for f in &filters {
        pool.extend(instances(f));
    }
    for (i, a) in filters.iter().enumerate() {
        for b in &filters[i + 1..] {
            pool.extend(common_topic(a, b));
        }
    }

    // can_read/can_write against the model.
    let says = |rules: &[(&str, String)], topic: &str, grant: &str| {
        let hit = |access: &str| rules.iter().any(|r| r.0 == access && matches(&r.1, topic));
        if hit("deny") {
            Some(false)
        } else if hit(grant) || hit("readwrite") {
            Some(true)
        } else {
            None
        }
    };
    let model = |topic: &str, grant: &str| {
        says(&own, topic, grant)
            .or_else(|| patterns.as_deref().and_then(|p| says(p, topic, grant)))
            .unwrap_or(false)
    };
    let mut readable: BTreeMap<&str, bool> = BTreeMap::new();
    for t in &pool {
        let read = client.can_read(t);
        assert_eq!(read, model(t, "read"), "can_read({t:?})");
        assert_eq!(client.can_write(t), model(t, "write"), "can_write({t:?})");
        readable.insert(t, read);
    }

    for f in &listed {
        let verdict = client.filter_access(f);
        let want = match verdict {
            FilterAccess::Allowed => true,
            FilterAccess::Denied => false,
            FilterAccess::PerMessage => continue,
        };
        for (t, &read) in &readable {
            if matches(f, t) {
                assert_eq!(
                    read, want,
                    "filter_access({f:?}) is {verdict:?}; topic {t:?}"
                );
            }
        }
    }

    for a in &filters {
        for b in &filters {
            let both = pool.iter().find(|t| matches(a, t) && matches(b, t));
            if let Some(t) = both {
                assert!(intersects(a, b), "{a:?} and {b:?} both match {t:?}");
            }
            if covers(a, b) {
                if let Some(t) = pool.iter().find(|t| matches(b, t) && !matches(a, t)) {
                    panic!("covers({a:?}, {b:?}) but only the second matches {t:?}");
                }
            }
        }
    }
}

/// The rules of an accepted ACL file, read as its format defines: blank lines and `#`
/// comments skipped; `user NAME` starts a user's rules; `topic`/`pattern` take an
/// optional access word (`readwrite` when absent) and a topic running to the end of
/// the line.
fn model_rules(text: &str) -> Vec<ModelRule<'_>> {
    fn word(s: &str) -> (&str, &str) {
        let s = s.trim();
        match s.find(char::is_whitespace) {
            Some(i) => (&s[..i], s[i..].trim()),
            None => (s, ""),
        }
    }
    let mut rules = Vec::new();
    let mut user = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, rest) = word(line);
        if keyword == "user" {
            user = Some(rest);
            continue;
        }
        let (access, topic) = match word(rest) {
            (a @ ("read" | "write" | "readwrite" | "deny"), topic) => (a, topic),
            _ => ("readwrite", rest),
        };
        rules.push(ModelRule {
            pattern: keyword == "pattern",
            user: if keyword == "pattern" { None } else { user },
            access,
            topic,
        });
    }
    rules
}

/// A pattern's topic with `%c` and `%u` replaced in one pass: what replaces them is
/// never read again for more `%` sequences.
fn substitute(pattern: &str, client_id: &str, username: &str) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("%c") {
            out.push_str(client_id);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("%u") {
            out.push_str(username);
            rest = after;
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Topics a valid filter matches: wildcards as one `x` level, and without a final `#`
/// (which also matches its parent).
fn instances(filter: &str) -> Vec<String> {
    let levels: Vec<&str> = filter.split('/').collect();
    fn plain<'a>(l: &&'a str) -> &'a str {
        if matches!(*l, "+" | "#") {
            "x"
        } else {
            l
        }
    }
    let mut out = vec![levels.iter().map(plain).collect::<Vec<_>>().join("/")];
    if let Some((&"#", parent)) = levels.split_last() {
        if !parent.is_empty() {
            out.push(parent.iter().map(plain).collect::<Vec<_>>().join("/"));
        }
    }
    out
}

/// A topic both valid filters match, if there is one: level by level, a literal where
/// either has one, `x` where both have `+`, and at a `#` the rest of the other filter.
fn common_topic(a: &str, b: &str) -> Option<String> {
    let (x, y): (Vec<&str>, Vec<&str>) = (a.split('/').collect(), b.split('/').collect());
    let mut out: Vec<&str> = Vec::new();
    let mut k = 0;
    loop {
        let rest = match (x.get(k), y.get(k)) {
            (Some(&"#"), _) => &y[k.min(y.len())..],
            (_, Some(&"#")) => &x[k.min(x.len())..],
            (None, None) => &[][..],
            (Some(_), None) | (None, Some(_)) => return None,
            (Some(&p), Some(&q)) => {
                out.push(match (p, q) {
                    ("+", "+") => "x",
                    ("+", l) | (l, "+") => l,
                    (p, q) if p == q => p,
                    _ => return None,
                });
                k += 1;
                continue;
            }
        };
        out.extend(
            rest.iter()
                .map(|l| if matches!(*l, "+" | "#") { "x" } else { *l }),
        );
        if out.is_empty() {
            out.push("x");
        }
        let topic = out.join("/");
        return (matches(a, &topic) && matches(b, &topic)).then_some(topic);
    }
}

// ------------------------------------------------------------------- websocket

/// The upgrade request `ws_case` sends before its frames in constructed mode.
const WS_UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

/// Feeds bytes to the WebSocket layer of a `ws` listener ([`crate::link::wire::Wire`]:
/// tungstenite's upgrade and frame reader, as a connection's read loop drives it).
///
/// Layout: byte 0 picks the mode (bit 0) and the chunk size the input arrives in
/// (16 + its upper bits × 8 bytes, so tungstenite's guard against upgrades dribbled
/// in tiny reads stays out of the way). Raw mode: the rest is the byte stream. Built
/// mode: the rest describes frames: for each, one byte of flags (bits 0-1: binary,
/// continuation, ping or text; bit 2: FIN; bits 3-7: payload length) and then that
/// many payload bytes; they are masked and sent after a valid upgrade.
///
/// Checked: nothing panics, whatever arrives; once the layer has failed it keeps
/// failing and yields no MQTT bytes again; the MQTT bytes it yields are never
/// more than the bytes that came in; in built mode, a stream of well-formed binary
/// frames (fragmented or not, pings between fragments) yields exactly their payloads,
/// in order, and a text frame is an error.
pub fn ws_case(data: &[u8]) {
    use crate::link::wire::{Peer, Wire};
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let chunk = 16 + usize::from(mode >> 1) * 8;
    // Built mode sends its frames after the upgrade's answer, as a client must
    // (RFC 6455 §4.1): tungstenite refuses bytes behind the request.
    let (parts, expect) = if mode & 1 == 0 {
        (vec![rest.to_vec()], None)
    } else {
        let (stream, payloads, text) = ws_frames(rest);
        (
            vec![WS_UPGRADE.as_bytes().to_vec(), stream],
            Some((payloads, text)),
        )
    };
    let input_len: usize = parts.iter().map(Vec::len).sum();
    let mut w = Wire::ws("/mqtt", None, 1 << 16);
    let mut mqtt = BytesMut::new();
    let mut failed = false;
    let mut closed = false;
    for piece in parts.iter().flat_map(|p| p.chunks(chunk)) {
        let before = mqtt.len();
        // (A call may yield the frames before a bad one and then fail: the
        // connection closes on the error, so those bytes are never acted on.)
        match w.decode(piece, &mut mqtt) {
            Ok(Peer::Open) => assert!(!failed, "decoding went on after an error"),
            Ok(Peer::Closed) => closed = true,
            Err(_) => {
                if failed {
                    assert_eq!(mqtt.len(), before, "MQTT bytes after the layer failed");
                }
                failed = true;
            }
        }
        assert!(mqtt.len() <= input_len, "more MQTT bytes than input");
    }
    if let Some((payloads, text)) = expect {
        if text {
            assert!(failed, "a text frame must close the connection");
        } else if !closed {
            assert!(!failed, "well-formed frames were refused");
            assert_eq!(&mqtt[..], &payloads[..], "payloads changed on the way");
        }
    }
}

/// Built mode's frames: the stream, the binary payloads in order (of complete
/// messages only), and whether a text frame was sent before the last complete one.
fn ws_frames(desc: &[u8]) -> (Vec<u8>, Vec<u8>, bool) {
    let mask = [0x5Au8, 0xA5, 0x3C, 0xC3];
    let mut stream = Vec::new();
    let mut delivered = Vec::new();
    let mut pending = Vec::new();
    let mut in_message = false;
    let mut text = false;
    let mut i = 0;
    while let Some(&flags) = desc.get(i) {
        i += 1;
        let len = usize::from(flags >> 3).min(desc.len() - i);
        let payload = &desc[i..i + len];
        i += len;
        let fin = flags & 4 != 0;
        let opcode = match flags & 3 {
            // A continuation outside a message, or a new message inside one, would
            // be a protocol error: keep built streams well-formed except for text.
            0 | 1 if in_message => 0,
            0 | 1 => 2,
            2 => 9,
            _ => 1,
        };
        // Pings and text frames are sent whole: a text message left unfinished is
        // only an error once it completes (tungstenite hands over whole messages).
        let fin = fin || opcode == 9 || opcode == 1;
        if opcode == 1 {
            if in_message {
                continue;
            }
            text = true;
        }
        stream.push(if fin { 0x80 } else { 0 } | opcode);
        stream.push(0x80 | len as u8);
        stream.extend_from_slice(&mask);
        stream.extend(payload.iter().enumerate().map(|(k, b)| b ^ mask[k % 4]));
        match opcode {
            0 | 2 => {
                pending.extend_from_slice(payload);
                in_message = !fin;
                if fin && !text {
                    delivered.append(&mut pending);
                }
            }
            _ => {}
        }
        if text {
            break;
        }
    }
    (stream, delivered, text)
}

// ------------------------------------------------------------------------- store

/// The small block size [`store_case`] also reads with, so that inputs of a few
/// hundred bytes cross block boundaries and exercise padding.
const SMALL_BLOCK: usize = 64;

/// Reads `data` as a segment of a shard's log, the way recovery does after a crash.
///
/// Layout: the whole input is the segment's records (no header; offset 0 is a block
/// boundary). It is read with the file layer's block size ([`crate::store::BLOCK`])
/// and with [`SMALL_BLOCK`]; its first 32 bytes are also decoded as a segment header.
/// Checked, for both block sizes:
/// - nothing panics, the reader yields records and then exactly one `End`;
/// - every record lies within the input, its checksum (recomputed) matches the one
///   in its frame, and offsets strictly increase;
/// - re-encoding the records, with zero padding to a block boundary wherever the
///   reader skipped bytes between them, reproduces the input up to the reported end
///   exactly; what is set aside runs from there to the end of the input;
/// - an `End::Corrupt` has a valid record somewhere after its offset;
/// - reading only the part kept (the input up to the end's offset, which the file
///   layer will truncate the segment to) gives the same records and ends cleanly.
///
/// A header that decodes encodes back to the same 32 bytes (an older format
/// version's, to the same fields under the current version).
pub fn store_case(data: &[u8]) {
    use crate::store::{decode_header, encode_header, HEADER_LEN};
    if let Ok(header) = decode_header(data) {
        let again = encode_header(&header);
        if data.get(8..12) == Some(&crate::store::FORMAT_VERSION.to_le_bytes()[..]) {
            assert_eq!(again[..], data[..HEADER_LEN]);
        } else {
            // An older version is read, and written back as the current one.
            assert_eq!(again[..8], data[..8]);
            assert_eq!(again[12..28], data[12..28]);
        }
    }
    for block in [crate::store::BLOCK, SMALL_BLOCK] {
        let (records, end) = read_segment(data, block);
        let kept = end.set_aside().map_or(data.len(), |range| {
            assert_eq!(range.end, data.len(), "the set-aside part runs to the end");
            assert!(range.start < range.end, "an empty set-aside part");
            range.start
        });
        assert_reencodes(data, &records, kept, block);
        if let crate::store::End::Corrupt { offset, .. } = end {
            assert!(
                (offset + 1..data.len()).any(|at| crate::store::frame_at(data, at).is_ok()),
                "Corrupt at {offset} with no valid record after it"
            );
        }
        let (again, clean) = read_segment(&data[..kept], block);
        assert_eq!(again, records, "the kept part reads differently");
        assert_eq!(
            clean,
            crate::store::End::Clean,
            "the kept part is not clean"
        );
    }
}

/// Arbitrary bytes as the records of a data directory's logs, through the replay
/// that rebuilds sessions and retained messages at start.
///
/// Layout: records one after another, each `[shard: u8 (mod 3)][kind: u8 (mod 14)]
/// [len: u8][body: len bytes]` (a short last one takes what is left); each shard's
/// records are numbered in order. Checked: nothing panics; a body that decodes
/// encodes back to the same bytes; every restored session's packet ids in flight
/// are distinct, non-zero, and distinct from its released ones; every message it
/// holds goes out at QoS 1 or 2, no higher than it was published with; retained
/// messages have distinct topics and payloads; dropping the 5.0 sessions whose
/// expiry ran out (at a time taken from the input) keeps only sessions that live.
pub fn replay_case(data: &[u8]) {
    use crate::store::records::{decode, encode};
    use crate::store::replay::Replay;
    let mut replay = Replay::new();
    let mut next = [0u64; 3];
    let mut rest = data;
    while rest.len() >= 3 {
        let shard = usize::from(rest[0] % 3);
        let kind = rest[1] % 14;
        let len = usize::from(rest[2]).min(rest.len() - 3);
        let body = &rest[3..3 + len];
        rest = &rest[3 + len..];
        if let Ok(r) = decode(kind, body) {
            let mut again = Vec::new();
            assert_eq!(encode(&r, &mut again), kind, "kind changed");
            assert_eq!(again, body, "a record re-encodes differently");
        }
        replay.record(shard as u16, next[shard], kind, body);
        next[shard] += 1;
    }
    let mut restored = replay.finish();
    let now_us = data
        .iter()
        .fold(0u64, |a, &b| a.rotate_left(8) ^ u64::from(b));
    restored.expire_sessions(now_us);
    for s in &restored.sessions {
        if let Some(e) = s.expiry {
            assert!(
                crate::store::replay::session_lives(e, now_us).is_some(),
                "an expired session kept"
            );
        }
        let mut pids = std::collections::HashSet::new();
        for &p in s.released.iter().chain(s.inflight.iter().map(|(p, _)| p)) {
            assert!(p != 0, "packet id 0 in flight");
            assert!(pids.insert(p), "packet id {p} twice");
        }
        for m in s.inflight.iter().map(|(_, m)| m).chain(&s.queued) {
            assert!(m.qos != QoS::AtMostOnce, "QoS 0 message restored");
            assert!(m.qos <= m.msg.qos, "QoS raised");
        }
    }
    let mut topics = std::collections::HashSet::new();
    for (_, m) in &restored.retained {
        assert!(topics.insert(m.topic.clone()), "retained topic twice");
        assert!(!m.payload.is_empty(), "a deletion restored as a message");
    }
}

/// A record as [`store_case`] keeps it: offset, kind, body.
type StoredRecord<'a> = (usize, u8, &'a [u8]);

/// Every record of `data` (offset, kind, body) and how it ended; checks that the
/// reader ends exactly once and that records are in bounds, verified and in order.
fn read_segment(data: &[u8], block: usize) -> (Vec<StoredRecord<'_>>, crate::store::End) {
    use crate::store::{checksum, Item, Reader, FRAME_HEADER};
    let mut reader = Reader::new(data).with_block(block);
    let mut records: Vec<StoredRecord> = Vec::new();
    let end = loop {
        match reader.next().expect("the reader ends with End") {
            Item::Record { offset, kind, body } => {
                let frame_end = offset + FRAME_HEADER + body.len();
                assert!(frame_end <= data.len(), "record past the input");
                assert!(
                    std::ptr::eq(body.as_ptr(), data[offset + FRAME_HEADER..].as_ptr()),
                    "body not borrowed from its frame"
                );
                let stored = u32::from_le_bytes(data[offset + 4..offset + 8].try_into().unwrap());
                assert_eq!(checksum(kind, body), stored, "checksum not verified");
                if let Some(&(last, _, last_body)) = records.last() {
                    assert!(offset >= last + FRAME_HEADER + last_body.len(), "overlap");
                }
                records.push((offset, kind, body));
            }
            Item::End(end) => break end,
        }
    };
    assert!(reader.next().is_none(), "items after End");
    (records, end)
}

/// The records, re-encoded with zero padding to a block boundary in every gap the
/// reader skipped (and before `kept`), are exactly `data[..kept]`.
fn assert_reencodes(data: &[u8], records: &[StoredRecord], kept: usize, block: usize) {
    use crate::store::{encode_record, pad};
    let mut out = Vec::with_capacity(kept);
    let pad_to = |out: &mut Vec<u8>, to: usize| {
        if out.len() < to {
            pad(out, 0, block);
            assert_eq!(
                out.len(),
                to,
                "skipped bytes that are not padding to a boundary"
            );
        }
    };
    for &(offset, kind, body) in records {
        pad_to(&mut out, offset);
        assert_eq!(out.len(), offset, "records out of order");
        encode_record(kind, body, &mut out).expect("a record read fits");
    }
    pad_to(&mut out, kept);
    assert!(
        out[..] == data[..kept],
        "re-encoding differs from the input"
    );
}

/// Arbitrary bytes as the start of a connection on a `proxy_protocol` listener,
/// through the PROXY header parser (which runs before any authentication).
///
/// Checked: nothing panics; a header found is no longer than the input, is found
/// again in exactly its own bytes and with anything after it, and every shorter
/// prefix of it asks for more bytes; "more bytes" is only ever asked while the
/// input is shorter than the longest header the parser accepts.
pub fn proxy_case(data: &[u8]) {
    use crate::net::proxy::{parse, MAX_HEADER};
    let result = parse(data);
    match result {
        Ok(Some(h)) => {
            assert!(h.len <= data.len() && h.len > 0, "header length {}", h.len);
            assert_eq!(parse(&data[..h.len]), Ok(Some(h)), "the header alone");
            let mut more = data[..h.len].to_vec();
            more.extend_from_slice(b"\x10\x0c\x00\x04MQTT");
            assert_eq!(parse(&more), Ok(Some(h)), "the header with bytes after it");
            for cut in 0..h.len {
                assert_eq!(parse(&data[..cut]), Ok(None), "prefix of {cut} bytes");
            }
        }
        Ok(None) => assert!(
            data.len() < MAX_HEADER,
            "asked for more after {} bytes",
            data.len()
        ),
        Err(_) => {}
    }
}

// ------------------------------------------------------------------------- scram

/// Runs `data` as a client's side of a SCRAM-SHA-512 exchange against the broker's
/// ([`crate::auth::scram::ScramServer`], one user `alice` with password `pencil`).
///
/// Byte 0 picks the mode. Even: the rest, split at its first NUL, is client-first
/// and client-final as the client sends them; no input may authenticate (the fuzzer
/// cannot forge a proof), a server-first must extend the client's nonce, and a
/// finished exchange refuses every further step. Odd: the rest names the user and
/// the client nonce of a genuine client, which must succeed exactly for `alice`
/// with a valid nonce and verify the server's signature.
pub fn scram_case(data: &[u8]) {
    use crate::auth::password::PasswordHash;
    use crate::auth::scram::{client::ScramClient, Credentials, Lookup, ScramServer};
    use crate::auth::AuthExchange;
    use crate::auth::AuthStep;

    let hash = PasswordHash::pbkdf2(b"pencil", b"saltsaltsalt".to_vec(), 2);
    let lookup: std::sync::Arc<Lookup> = std::sync::Arc::new(move |user: &str| {
        Ok((user == "alice").then(|| Credentials::from_hash(&hash).expect("a $7$ hash")))
    });
    let mut server = ScramServer::new(lookup, [1; 32]);
    let (mode, rest) = data.split_first().map_or((0, data), |(&m, r)| (m, r));
    if mode & 1 == 0 {
        let (first, last) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        match server.step(Some(first)) {
            AuthStep::Continue(Some(server_first)) => {
                let text = std::str::from_utf8(&server_first).expect("server-first is text");
                let client_nonce = std::str::from_utf8(first)
                    .ok()
                    .and_then(|t| t.split(',').find_map(|f| f.strip_prefix("r=")))
                    .expect("a challenge only for a client-first with a nonce");
                assert!(
                    text.starts_with(&format!("r={client_nonce}")),
                    "{text:?} does not extend {client_nonce:?}"
                );
                let step = server.step(Some(last));
                assert!(
                    matches!(step, AuthStep::Fail(_)),
                    "{step:?} without a proof"
                );
            }
            AuthStep::Fail(_) => {}
            other => panic!("{other:?} for a client-first"),
        }
        assert!(
            matches!(server.step(Some(rest)), AuthStep::Fail(_)),
            "a step after the end"
        );
        return;
    }
    let text = String::from_utf8_lossy(rest);
    let (user, nonce) = text.split_once('\0').unwrap_or((&text, "n"));
    let mut client = ScramClient::new(user, b"pencil", nonce);
    let valid_nonce = !nonce.is_empty() && nonce.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    let expect = user == "alice" && valid_nonce;
    let AuthStep::Continue(Some(server_first)) = server.step(Some(client.first().as_bytes()))
    else {
        assert!(!expect || user.is_empty(), "genuine client-first refused");
        return;
    };
    let last = match client.last(std::str::from_utf8(&server_first).expect("text")) {
        Ok(last) => last,
        // A nonce with a comma reads as a shorter one on the broker's side.
        Err(_) if !valid_nonce => return,
        Err(e) => panic!("server-first refused by a genuine client: {e}"),
    };
    match server.step(Some(last.as_bytes())) {
        AuthStep::Success { username, data } => {
            assert!(expect, "authenticated {user:?}");
            assert_eq!(username, "alice");
            let data = data.expect("server-final");
            assert!(client.verify(std::str::from_utf8(&data).expect("text")));
        }
        AuthStep::Fail(_) => assert!(!expect, "alice refused with nonce {nonce:?}"),
        AuthStep::Continue(_) => panic!("a third round"),
    }
}

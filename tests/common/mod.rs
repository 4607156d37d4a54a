//! Shared helpers for the end-to-end tests: starting a 2-shard broker on an ephemeral
//! port, choosing client ids by home shard, waiting on the broker's stats, a raw-socket
//! MQTT client with hand-encoded packets (for exact byte-level checks), and a thin
//! wrapper around the independent `rumqttc` client.
//!
//! Every read has a deadline, so a wrong broker fails a test instead of hanging it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use shardmq::{Broker, Config, ShardStats};

/// How long any single expected event may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait when checking that something does NOT arrive.
pub const QUIET: Duration = Duration::from_millis(300);

/// Shards every test broker runs.
pub const SHARDS: usize = 2;

// ---------------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------------

/// A broker with 2 shards on 127.0.0.1:0 and a 1 s connect timeout.
pub fn broker() -> Broker {
    broker_with(|_| {})
}

/// Like [`broker`], with further configuration.
pub fn broker_with(f: impl FnOnce(&mut Config)) -> Broker {
    Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(SHARDS)
        .configure(|c| {
            c.connect_timeout = 1.0;
            f(c);
        })
        .start()
        .expect("broker starts")
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique within this test process.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A client id whose home shard is `shard` (of 2).
pub fn id_on_shard(prefix: &str, shard: usize) -> String {
    let base = unique(prefix);
    for i in 0.. {
        let id = format!("{base}-{i}");
        if shardmq::home_shard(&id, SHARDS) == shard {
            return id;
        }
    }
    unreachable!()
}

/// Polls the broker's summed stats until `pred` holds, or panics after a deadline
/// with the last snapshot.
pub fn wait_stats(broker: &Broker, what: &str, pred: impl Fn(&ShardStats) -> bool) -> ShardStats {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let s = broker.stats().total();
        if pred(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for stats: {what}; last stats: {s:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// After every client of a test has gone (clean sessions), nothing may be left:
/// no connection, no session, no subscription, no interest replica entry.
pub fn assert_no_leaks(broker: &Broker) {
    wait_stats(
        broker,
        "no leaked connections/sessions/subscriptions/interest/in-flight/queued state after all clients left",
        |s| {
            s.connections == 0
                && s.sessions == 0
                && s.subscriptions == 0
                && s.interest_entries == 0
                && s.pending_interest == 0
                && s.inflight == 0
                && s.queued == 0
                && s.queued_bytes == 0
        },
    );
}

/// A well-behaved client can still publish and receive on this broker (used after
/// feeding another connection bad bytes).
pub fn assert_broker_healthy(addr: SocketAddr) {
    let topic = unique("health/check");
    let (mut sub, _) = Raw::connect(addr, &id_on_shard("health-sub", 1), true);
    assert_eq!(sub.subscribe(1, &[(&topic, 1)]), vec![1]);
    let (mut publ, _) = Raw::connect(addr, &id_on_shard("health-pub", 0), true);
    publ.publish(&topic, b"alive", 1, false);
    let p = sub.expect_publish();
    assert_eq!(p.topic, topic);
    assert_eq!(p.payload, b"alive");
    sub.ack(&p);
    publ.disconnect();
    sub.disconnect();
}

/// Connects a client (whose will tells us the broker saw an abnormal close), sends
/// `bad`, and checks: the broker closes the connection sending nothing but `allowed`
/// packet types first, the will is published, and another client still works.
pub fn assert_closed_after(bad: &[u8], what: &str) -> Broker {
    let b = broker();
    let mut w = Raw::connect(b.local_addr(), &id_on_shard("mw", 0), true).0;
    assert_eq!(w.subscribe(1, &[("mal/will", 1)]), vec![1]);
    let opts =
        ConnectOpts::new(&id_on_shard("mal", 1), true).will("mal/will", what.as_bytes(), 1, false);
    let (mut c, _) = Raw::connect_with(b.local_addr(), &opts);
    c.ping();
    c.send_lossy(bad);
    let got = c.expect_closed();
    assert!(
        got.iter().all(|p| p.kind() != PUBACK
            && p.kind() != SUBACK
            && p.kind() != PUBREC
            && p.kind() != PUBCOMP
            && p.kind() != UNSUBACK),
        "{what}: the bad packet must not be acknowledged; got {got:?}"
    );
    // The broker closed it without DISCONNECT from the client: will is published.
    let p = w.expect_publish();
    assert_eq!(p.payload_str(), what);
    w.ack(&p);
    w.disconnect();
    assert_broker_healthy(b.local_addr());
    b
}

pub fn assert_protocol_error(bad: &[u8], what: &str) {
    let b = assert_closed_after(bad, what);
    wait_stats(&b, &format!("{what}: protocol_errors >= 1"), |s| {
        s.protocol_errors >= 1
    });
    assert_no_leaks(&b);
}

// ---------------------------------------------------------------------------------
// Packet encoding
// ---------------------------------------------------------------------------------

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const UNSUBACK: u8 = 11;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

pub const PINGREQ_BYTES: [u8; 2] = [0xC0, 0x00];
pub const DISCONNECT_BYTES: [u8; 2] = [0xE0, 0x00];

/// The variable-length "remaining length" encoding.
pub fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

/// A whole packet: first byte, remaining length, body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(remaining_length(body.len()));
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string (any bytes, so tests can send invalid UTF-8).
pub fn mqtt_str(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A will for [`ConnectOpts`].
#[derive(Clone, Debug)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// Everything a CONNECT can carry, with raw knobs for invalid ones.
#[derive(Clone, Debug)]
pub struct ConnectOpts {
    pub protocol_name: Vec<u8>,
    pub level: u8,
    pub client_id: Vec<u8>,
    pub clean: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub username: Option<Vec<u8>>,
    pub password: Option<Vec<u8>>,
    /// OR-ed into the connect flags byte (to set reserved or inconsistent bits).
    pub extra_flags: u8,
}

impl ConnectOpts {
    pub fn new(client_id: &str, clean: bool) -> ConnectOpts {
        ConnectOpts {
            protocol_name: b"MQTT".to_vec(),
            level: 4,
            client_id: client_id.as_bytes().to_vec(),
            clean,
            keep_alive: 60,
            will: None,
            username: None,
            password: None,
            extra_flags: 0,
        }
    }

    pub fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> ConnectOpts {
        self.will = Some(Will {
            topic: topic.to_string(),
            payload: payload.to_vec(),
            qos,
            retain,
        });
        self
    }

    pub fn keep_alive(mut self, secs: u16) -> ConnectOpts {
        self.keep_alive = secs;
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut flags = self.extra_flags;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        let mut body = mqtt_str(&self.protocol_name);
        body.push(self.level);
        body.push(flags);
        body.extend(self.keep_alive.to_be_bytes());
        body.extend(mqtt_str(&self.client_id));
        if let Some(w) = &self.will {
            body.extend(mqtt_str(w.topic.as_bytes()));
            body.extend(mqtt_str(&w.payload));
        }
        if let Some(u) = &self.username {
            body.extend(mqtt_str(u));
        }
        if let Some(p) = &self.password {
            body.extend(mqtt_str(p));
        }
        packet(0x10, &body)
    }
}

/// A plain MQTT 3.1.1 CONNECT.
pub fn connect_packet(client_id: &str, clean: bool) -> Vec<u8> {
    ConnectOpts::new(client_id, clean).encode()
}

/// A PUBLISH with a topic given as raw bytes.
pub fn publish_packet_bytes(
    topic: &[u8],
    payload: &[u8],
    qos: u8,
    retain: bool,
    dup: bool,
    pid: u16,
) -> Vec<u8> {
    let mut first = 0x30 | (qos << 1);
    if retain {
        first |= 0x01;
    }
    if dup {
        first |= 0x08;
    }
    let mut body = mqtt_str(topic);
    if qos > 0 {
        body.extend(pid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(first, &body)
}

pub fn publish_packet(
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    dup: bool,
    pid: u16,
) -> Vec<u8> {
    publish_packet_bytes(topic.as_bytes(), payload, qos, retain, dup, pid)
}

pub fn subscribe_packet(pid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for (f, q) in filters {
        body.extend(mqtt_str(f.as_bytes()));
        body.push(*q);
    }
    packet(0x82, &body)
}

pub fn unsubscribe_packet(pid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for f in filters {
        body.extend(mqtt_str(f.as_bytes()));
    }
    packet(0xA2, &body)
}

fn ack_packet(first: u8, pid: u16) -> Vec<u8> {
    packet(first, &pid.to_be_bytes())
}
pub fn puback(pid: u16) -> Vec<u8> {
    ack_packet(0x40, pid)
}
pub fn pubrec(pid: u16) -> Vec<u8> {
    ack_packet(0x50, pid)
}
pub fn pubrel(pid: u16) -> Vec<u8> {
    ack_packet(0x62, pid)
}
pub fn pubcomp(pid: u16) -> Vec<u8> {
    ack_packet(0x70, pid)
}

// ---------------------------------------------------------------------------------
// Packet decoding
// ---------------------------------------------------------------------------------

/// One packet as read from the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkt {
    pub first: u8,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Pkt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Pkt {{ type: {} ({}), flags: {:#06b}, body: {:02x?} }}",
            self.kind(),
            kind_name(self.kind()),
            self.flags(),
            &self.body[..self.body.len().min(64)]
        )
    }
}

pub fn kind_name(k: u8) -> &'static str {
    match k {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        _ => "reserved",
    }
}

impl Pkt {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
    pub fn flags(&self) -> u8 {
        self.first & 0x0F
    }
    /// The packet identifier of an ack / SUBACK / UNSUBACK (first two body bytes).
    pub fn pid(&self) -> u16 {
        assert!(self.body.len() >= 2, "packet has no packet id: {self:?}");
        u16::from_be_bytes([self.body[0], self.body[1]])
    }
    pub fn publish(&self) -> Publish {
        assert_eq!(self.kind(), PUBLISH, "expected PUBLISH, got {self:?}");
        let qos = (self.first >> 1) & 3;
        assert!(qos < 3, "PUBLISH with QoS 3 from broker: {self:?}");
        let tlen = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
        let topic = String::from_utf8(self.body[2..2 + tlen].to_vec()).expect("topic is UTF-8");
        let mut at = 2 + tlen;
        let pid = if qos > 0 {
            let p = u16::from_be_bytes([self.body[at], self.body[at + 1]]);
            at += 2;
            p
        } else {
            0
        };
        Publish {
            dup: self.first & 0x08 != 0,
            qos,
            retain: self.first & 0x01 != 0,
            topic,
            pid,
            payload: self.body[at..].to_vec(),
        }
    }
}

/// A decoded PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub pid: u16,
    pub payload: Vec<u8>,
}

impl Publish {
    pub fn payload_str(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

// ---------------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------------

/// Why a read ended without a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The peer closed the connection (EOF or reset).
    Closed,
    /// Nothing complete arrived before the deadline.
    Timeout,
}

/// A minimal MQTT client on a plain `TcpStream`: the test decides every byte.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    stash: VecDeque<Pkt>,
    closed: bool,
    next_pid: u16,
}

impl Raw {
    /// Opens a TCP connection and sends nothing.
    pub fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
            stash: VecDeque::new(),
            closed: false,
            next_pid: 1000,
        }
    }

    /// The next connection accepted on `listener`, for a test playing the broker's
    /// part (a bridge's remote).
    pub fn accept(listener: &std::net::TcpListener) -> Raw {
        let (stream, _) = listener.accept().expect("tcp accept");
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
            stash: VecDeque::new(),
            closed: false,
            next_pid: 1000,
        }
    }

    /// Opens, sends `opts`' CONNECT, and returns the CONNACK's (flags byte, return code).
    pub fn connect_opts(addr: SocketAddr, opts: &ConnectOpts) -> (Raw, u8, u8) {
        let mut raw = Raw::open(addr);
        raw.send(&opts.encode());
        let p = raw.recv();
        assert_eq!(p.kind(), CONNACK, "expected CONNACK, got {p:?}");
        assert_eq!(p.flags(), 0, "CONNACK fixed-header flags must be 0: {p:?}");
        assert_eq!(p.body.len(), 2, "CONNACK remaining length must be 2: {p:?}");
        (raw, p.body[0], p.body[1])
    }

    /// Connects (MQTT 3.1.1) and asserts CONNACK 0; returns session present.
    pub fn connect(addr: SocketAddr, client_id: &str, clean: bool) -> (Raw, bool) {
        Raw::connect_with(addr, &ConnectOpts::new(client_id, clean))
    }

    /// Connects with `opts` and asserts CONNACK 0; returns session present.
    pub fn connect_with(addr: SocketAddr, opts: &ConnectOpts) -> (Raw, bool) {
        let (raw, flags, rc) = Raw::connect_opts(addr, opts);
        assert_eq!(
            rc,
            0,
            "CONNACK return code for {:?}",
            String::from_utf8_lossy(&opts.client_id)
        );
        assert_eq!(
            flags & 0xFE,
            0,
            "CONNACK acknowledge flags bits 7-1 are reserved"
        );
        (raw, flags & 1 == 1)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to broker");
    }

    /// Sends, ignoring errors (the broker may already have closed the socket).
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    fn parse_buffered(&mut self) -> Option<Pkt> {
        if self.buf.len() < 2 {
            return None;
        }
        let mut len = 0usize;
        let mut mult = 1usize;
        let mut i = 1;
        loop {
            if i >= self.buf.len() {
                return None;
            }
            let b = self.buf[i];
            len += (b & 0x7F) as usize * mult;
            mult *= 128;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            assert!(i <= 4, "broker sent a remaining length longer than 4 bytes");
        }
        if self.buf.len() < i + len {
            return None;
        }
        let first = self.buf[0];
        let body = self.buf[i..i + len].to_vec();
        self.buf.drain(..i + len);
        Some(Pkt { first, body })
    }

    /// The next packet from the wire (not the stash), by `deadline`.
    pub fn read_packet(&mut self, deadline: Instant) -> Result<Pkt, ReadEnd> {
        loop {
            if let Some(p) = self.parse_buffered() {
                return Ok(p);
            }
            if self.closed {
                return Err(ReadEnd::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadEnd::Timeout);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(wait)).unwrap();
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }

    /// The next packet (stash first) within `d`; `None` on timeout; panics if closed.
    pub fn recv_within(&mut self, d: Duration) -> Option<Pkt> {
        if let Some(p) = self.stash.pop_front() {
            return Some(p);
        }
        match self.read_packet(Instant::now() + d) {
            Ok(p) => Some(p),
            Err(ReadEnd::Timeout) => None,
            Err(ReadEnd::Closed) => panic!("broker closed the connection unexpectedly"),
        }
    }

    /// The next packet; panics on timeout or close.
    pub fn recv(&mut self) -> Pkt {
        self.recv_within(TIMEOUT)
            .expect("timed out waiting for a packet from the broker")
    }

    /// The next packet of type `kind`, keeping any other packets for later `recv`s.
    pub fn recv_kind(&mut self, kind: u8) -> Pkt {
        if let Some(i) = self.stash.iter().position(|p| p.kind() == kind) {
            return self.stash.remove(i).unwrap();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.read_packet(deadline) {
                Ok(p) if p.kind() == kind => return p,
                Ok(p) => self.stash.push_back(p),
                Err(e) => panic!(
                    "waiting for {}: {e:?}; other packets received meanwhile: {:?}",
                    kind_name(kind),
                    self.stash
                ),
            }
        }
    }

    /// The next packet must be a PUBLISH.
    pub fn expect_publish(&mut self) -> Publish {
        let p = self.recv();
        p.publish()
    }

    /// No packet at all arrives within `d` (and the connection stays open).
    pub fn expect_silence(&mut self, d: Duration) {
        if let Some(p) = self.recv_within(d) {
            panic!("expected nothing from the broker, got {p:?}");
        }
    }

    /// The broker closes the connection within `d`; returns packets it sent before.
    pub fn expect_closed_within(&mut self, d: Duration) -> Vec<Pkt> {
        let deadline = Instant::now() + d;
        let mut got: Vec<Pkt> = self.stash.drain(..).collect();
        loop {
            match self.read_packet(deadline) {
                Ok(p) => got.push(p),
                Err(ReadEnd::Closed) => return got,
                Err(ReadEnd::Timeout) => {
                    panic!("broker did not close the connection within {d:?}; it sent {got:?}")
                }
            }
        }
    }

    /// The broker closes the connection (within [`TIMEOUT`]).
    pub fn expect_closed(&mut self) -> Vec<Pkt> {
        self.expect_closed_within(TIMEOUT)
    }

    /// Whether the broker has closed the connection, without waiting long.
    pub fn is_closed_now(&mut self) -> bool {
        match self.read_packet(Instant::now() + Duration::from_millis(50)) {
            Ok(p) => {
                self.stash.push_back(p);
                false
            }
            Err(ReadEnd::Closed) => true,
            Err(ReadEnd::Timeout) => false,
        }
    }

    pub fn take_pid(&mut self) -> u16 {
        self.next_pid = self.next_pid.wrapping_add(1).max(1);
        self.next_pid
    }

    /// SUBSCRIBE and wait for the SUBACK; returns its return codes.
    pub fn subscribe(&mut self, pid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&subscribe_packet(pid, filters));
        let p = self.recv_kind(SUBACK);
        assert_eq!(p.flags(), 0, "SUBACK flags");
        assert_eq!(
            p.pid(),
            pid,
            "SUBACK must carry the SUBSCRIBE's packet id [MQTT-3.8.4-2]"
        );
        p.body[2..].to_vec()
    }

    /// UNSUBSCRIBE and wait for the UNSUBACK.
    pub fn unsubscribe(&mut self, pid: u16, filters: &[&str]) {
        self.send(&unsubscribe_packet(pid, filters));
        let p = self.recv_kind(UNSUBACK);
        assert_eq!(p.flags(), 0, "UNSUBACK flags");
        assert_eq!(p.body.len(), 2, "UNSUBACK remaining length is 2");
        assert_eq!(
            p.pid(),
            pid,
            "UNSUBACK must carry the UNSUBSCRIBE's packet id [MQTT-3.10.4-4]"
        );
    }

    /// PUBLISH and complete the QoS flow as a well-behaved publisher; for QoS 0, a
    /// PINGREQ round trip makes sure the broker has processed it.
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        let pid = if qos > 0 { self.take_pid() } else { 0 };
        self.send(&publish_packet(topic, payload, qos, retain, false, pid));
        match qos {
            0 => self.ping(),
            1 => {
                let a = self.recv_kind(PUBACK);
                assert_eq!(a.pid(), pid, "PUBACK packet id");
            }
            2 => {
                let r = self.recv_kind(PUBREC);
                assert_eq!(r.pid(), pid, "PUBREC packet id");
                self.send(&pubrel(pid));
                let c = self.recv_kind(PUBCOMP);
                assert_eq!(c.pid(), pid, "PUBCOMP packet id");
            }
            _ => unreachable!(),
        }
    }

    /// Acknowledges a received PUBLISH as a well-behaved subscriber (QoS 2: PUBREC,
    /// wait for PUBREL, PUBCOMP).
    pub fn ack(&mut self, p: &Publish) {
        match p.qos {
            0 => {}
            1 => self.send(&puback(p.pid)),
            2 => {
                self.send(&pubrec(p.pid));
                let rel = self.recv_kind(PUBREL);
                assert_eq!(
                    rel.first, 0x62,
                    "PUBREL fixed header must be 0x62 [MQTT-3.6.1-1]"
                );
                assert_eq!(rel.pid(), p.pid, "PUBREL packet id");
                self.send(&pubcomp(p.pid));
            }
            _ => unreachable!(),
        }
    }

    /// PINGREQ → PINGRESP (other packets are kept for later).
    pub fn ping(&mut self) {
        self.send(&PINGREQ_BYTES);
        let p = self.recv_kind(PINGRESP);
        assert_eq!(p.first, 0xD0);
        assert!(p.body.is_empty());
    }

    /// Receives PUBLISHes (acking each) until one on `sentinel_topic` arrives; returns
    /// those before it. With a sentinel published after the messages under test, a
    /// missing message shows up without waiting for a timeout.
    pub fn publishes_until(&mut self, sentinel_topic: &str) -> Vec<Publish> {
        let mut got = Vec::new();
        loop {
            let p = self.recv_kind(PUBLISH).publish();
            self.ack(&p);
            if p.topic == sentinel_topic {
                return got;
            }
            got.push(p);
        }
    }

    /// Sends DISCONNECT and waits for the broker to close.
    pub fn disconnect(mut self) {
        self.send_lossy(&DISCONNECT_BYTES);
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.read_packet(deadline) {
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    /// Closes the socket without DISCONNECT (an abnormal close: the will fires).
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

// ---------------------------------------------------------------------------------
// rumqttc wrapper
// ---------------------------------------------------------------------------------

pub use rumqttc::QoS;

pub fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => panic!("bad qos"),
    }
}

pub fn qos_num(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// A rumqttc client whose event loop runs on its own thread; events come back over a
/// channel. The loop stops at the first connection error (no automatic reconnect, so
/// a taken-over client stays down).
pub struct Mq {
    pub client: rumqttc::Client,
    pub id: String,
    rx: mpsc::Receiver<Result<rumqttc::Event, String>>,
    publishes: VecDeque<rumqttc::Publish>,
    others: VecDeque<rumqttc::Event>,
    pub session_present: bool,
    dead: bool,
    kill: Arc<AtomicBool>,
}

/// Connects a rumqttc client (keep-alive 30 s) and waits for CONNACK.
pub fn mq(addr: SocketAddr, id: &str, clean: bool) -> Mq {
    mq_with(addr, id, clean, |_| {})
}

pub fn mq_with(
    addr: SocketAddr,
    id: &str,
    clean: bool,
    f: impl FnOnce(&mut rumqttc::MqttOptions),
) -> Mq {
    mq_on(addr.ip().to_string(), addr.port(), id, move |o| {
        o.set_clean_session(clean);
        f(o);
    })
}

/// Like [`mq_with`] (clean session), to a host name: a TLS server name, or a
/// `ws://` / `wss://` URL with the WebSocket transports.
pub fn mq_on(host: String, port: u16, id: &str, f: impl FnOnce(&mut rumqttc::MqttOptions)) -> Mq {
    let mut opts = rumqttc::MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    f(&mut opts);
    let (client, mut connection) = rumqttc::Client::new(opts, 128);
    let (tx, rx) = mpsc::channel();
    let kill = Arc::new(AtomicBool::new(false));
    let killed = kill.clone();
    std::thread::spawn(move || {
        loop {
            let ev = match connection.recv() {
                Ok(ev) => ev,
                Err(_) => break,
            };
            if killed.load(Ordering::SeqCst) {
                // Drop the socket without DISCONNECT.
                connection.eventloop.clean();
                break;
            }
            let stop = ev.is_err();
            if tx.send(ev.map_err(|e| e.to_string())).is_err() || stop {
                break;
            }
        }
    });
    let mut m = Mq {
        client,
        id: id.to_string(),
        rx,
        publishes: VecDeque::new(),
        others: VecDeque::new(),
        session_present: false,
        dead: false,
        kill,
    };
    let ack = m.wait_event("CONNACK", |e| match e {
        rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)) => Some(a.clone()),
        _ => None,
    });
    assert_eq!(
        ack.code,
        rumqttc::ConnectReturnCode::Success,
        "rumqttc CONNACK for {id}"
    );
    m.session_present = ack.session_present;
    m
}

impl Mq {
    /// Pulls one event from the loop into the buffers; false on timeout.
    fn pump(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        match self.rx.recv_timeout(deadline - now) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                self.publishes.push_back(p);
                true
            }
            Ok(Ok(e)) => {
                self.others.push_back(e);
                true
            }
            Ok(Err(e)) => {
                self.dead = true;
                panic!("rumqttc client {} lost its connection: {e}", self.id)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("rumqttc client {} event loop ended", self.id)
            }
        }
    }

    /// Waits for a non-PUBLISH event `f` picks (earlier others are discarded).
    pub fn wait_event<T>(&mut self, what: &str, f: impl Fn(&rumqttc::Event) -> Option<T>) -> T {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            while let Some(e) = self.others.pop_front() {
                if let Some(t) = f(&e) {
                    return t;
                }
            }
            if !self.pump(deadline) {
                panic!("rumqttc client {}: timed out waiting for {what}", self.id);
            }
        }
    }

    /// Subscribes and returns the granted QoS (None for failure 0x80).
    pub fn subscribe(&mut self, filter: &str, q: u8) -> Option<u8> {
        self.client.subscribe(filter, qos(q)).unwrap();
        let codes = self.wait_event("SUBACK", |e| match e {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a)) => Some(a.return_codes.clone()),
            _ => None,
        });
        assert_eq!(codes.len(), 1);
        match codes[0] {
            rumqttc::SubscribeReasonCode::Success(q) => Some(qos_num(q)),
            rumqttc::SubscribeReasonCode::Failure => None,
        }
    }

    pub fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).unwrap();
        self.wait_event("UNSUBACK", |e| match e {
            rumqttc::Event::Incoming(rumqttc::Packet::UnsubAck(_)) => Some(()),
            _ => None,
        });
    }

    /// Publishes without waiting.
    pub fn publish(&mut self, topic: &str, q: u8, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos(q), retain, payload.to_vec())
            .unwrap();
    }

    /// Publishes and waits until the broker has acknowledged it (QoS 1: PUBACK,
    /// QoS 2: PUBCOMP; QoS 0: the packet went out). Use with no other publish pending.
    pub fn publish_acked(&mut self, topic: &str, q: u8, retain: bool, payload: &[u8]) {
        self.publish(topic, q, retain, payload);
        let pkid = self.wait_event("outgoing PUBLISH", |e| match e {
            rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(id)) => Some(*id),
            _ => None,
        });
        match q {
            0 => {}
            1 => self.wait_event("PUBACK", |e| match e {
                rumqttc::Event::Incoming(rumqttc::Packet::PubAck(a)) if a.pkid == pkid => Some(()),
                _ => None,
            }),
            _ => self.wait_event("PUBCOMP", |e| match e {
                rumqttc::Event::Incoming(rumqttc::Packet::PubComp(a)) if a.pkid == pkid => Some(()),
                _ => None,
            }),
        }
    }

    /// The next received PUBLISH within `d`.
    pub fn recv_publish_within(&mut self, d: Duration) -> Option<rumqttc::Publish> {
        let deadline = Instant::now() + d;
        loop {
            if let Some(p) = self.publishes.pop_front() {
                return Some(p);
            }
            if !self.pump(deadline) {
                return None;
            }
        }
    }

    /// The next received PUBLISH; panics on timeout.
    pub fn recv_publish(&mut self) -> rumqttc::Publish {
        self.recv_publish_within(TIMEOUT)
            .unwrap_or_else(|| panic!("rumqttc client {}: no PUBLISH arrived", self.id))
    }

    /// PUBLISHes received until one on `sentinel_topic`; returns those before it.
    pub fn publishes_until(&mut self, sentinel_topic: &str) -> Vec<rumqttc::Publish> {
        let mut got = Vec::new();
        loop {
            let p = self.recv_publish();
            if p.topic == sentinel_topic {
                return got;
            }
            got.push(p);
        }
    }

    /// Closes the socket without DISCONNECT (an abnormal close: the will fires). The
    /// event loop only notices on its next event, so one harmless request wakes it.
    pub fn kill(mut self) {
        self.kill.store(true, Ordering::SeqCst);
        let _ = self.client.try_unsubscribe("kill/wakeup");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                _ if Instant::now() > deadline => panic!("rumqttc loop did not stop"),
                _ => {}
            }
        }
        self.dead = true;
    }

    /// Sends DISCONNECT and lets the loop end.
    pub fn disconnect(mut self) {
        let _ = self.client.disconnect();
        // Wait (briefly) for the loop to report the DISCONNECT went out / the end.
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect))) => {}
                Ok(Ok(_)) => continue,
                Ok(Err(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
            }
        }
        self.dead = true;
    }
}

impl Drop for Mq {
    /// A client dropped without `disconnect`/`kill` (e.g. a failing test) closes its
    /// socket instead of lingering until the broker goes away.
    fn drop(&mut self) {
        if !self.dead {
            self.kill.store(true, Ordering::SeqCst);
            let _ = self.client.try_unsubscribe("kill/wakeup");
        }
    }
}

// ---------------------------------------------------------------------------------
// Load (robustness and soak tests)
// ---------------------------------------------------------------------------------

pub mod load;
#[allow(unused_imports)]
pub use load::*;

pub mod churn;
#[allow(unused_imports)]
pub use churn::*;

pub mod persist;

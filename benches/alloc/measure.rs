//! Allocation counting for `benches/alloc.rs` and `tests/alloc.rs`: a global allocator
//! that counts, the hot-path pieces driven through the public API, and an end-to-end
//! run through a real broker with raw clients that allocate nothing while measured.
//!
//! Counts: `allocs` are `alloc`/`alloc_zeroed` calls, `reallocs` are `realloc` calls,
//! `bytes` is what both asked for (a realloc counts its whole new size). Frees are not
//! counted. Every counter is a relaxed atomic (all threads) plus a thread-local copy
//! (the calling thread only), so a single-threaded measurement is exact whatever other
//! threads do.
//!
//! With `SHARDMQ_ALLOC_TRACE=1` every counted allocation inside a measured window also
//! records its stack (up to [`TRACE_CAP`] of them), and [`Traces::report`] names the
//! call sites. Capturing a stack is slow: use it to find sites, not to read figures.
#![allow(dead_code)]

use bytes::BytesMut;
use bytestring::ByteString;
use shardmq::config::Config;
use shardmq::message::Message;
use shardmq::protocol::{decode, encode_publish, Packet, QoS};
use shardmq::session::{Delivery, Limits, Output, Session};
use shardmq::topic::TopicTrie;
use shardmq::Broker;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// The counting allocator
// ---------------------------------------------------------------------------------

/// Wraps [`System`] and counts; install with `#[global_allocator]`.
pub struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static LOCAL: Cell<Counts> = const { Cell::new(Counts::ZERO) };
    /// The calling thread's live heap: bytes and blocks it allocated less those it
    /// freed (see [`Live`]).
    static LIVE: Cell<Live> = const { Cell::new(Live { bytes: 0, blocks: 0 }) };
    /// Set while this thread records a stack: what that allocates is not counted.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Stacks recorded at most per window.
pub const TRACE_CAP: usize = 20_000;
static TRACING: AtomicBool = AtomicBool::new(false);
/// Stacks recorded in the current window, each with the bytes it asked for.
static TRACES: Mutex<Vec<(backtrace::Backtrace, usize)>> = Mutex::new(Vec::new());

#[inline]
fn count(realloc: bool, size: usize) {
    if BUSY.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    if realloc {
        REALLOCS.fetch_add(1, Relaxed);
    } else {
        ALLOCS.fetch_add(1, Relaxed);
    }
    BYTES.fetch_add(size as u64, Relaxed);
    let _ = LOCAL.try_with(|l| {
        let mut c = l.get();
        if realloc {
            c.reallocs += 1;
        } else {
            c.allocs += 1;
        }
        c.bytes += size as u64;
        l.set(c);
    });
    if TRACING.load(Relaxed) {
        record_stack(size);
    }
}

/// Adds to this thread's live heap (a free subtracts).
#[inline]
fn live(bytes: i64, blocks: i64) {
    if BUSY.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    let _ = LIVE.try_with(|l| {
        let v = l.get();
        l.set(Live {
            bytes: v.bytes + bytes,
            blocks: v.blocks + blocks,
        });
    });
}

#[cold]
fn record_stack(size: usize) {
    let _ = BUSY.try_with(|busy| {
        busy.set(true);
        let bt = backtrace::Backtrace::new_unresolved();
        if let Ok(mut traces) = TRACES.lock() {
            if traces.len() < TRACE_CAP {
                traces.push((bt, size));
            }
        }
        busy.set(false);
    });
}

// SAFETY: every call goes straight to `System`; the counting around it never allocates
// (const thread-locals without destructors, atomics) except while recording a stack,
// which `BUSY` keeps from recursing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(false, layout.size());
        live(layout.size() as i64, 1);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(false, layout.size());
        live(layout.size() as i64, 1);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(true, new_size);
        live(new_size as i64 - layout.size() as i64, 0);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live(-(layout.size() as i64), -1);
        System.dealloc(ptr, layout)
    }
}

/// A snapshot of the counters, or the difference of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub allocs: u64,
    pub reallocs: u64,
    pub bytes: u64,
}

impl Counts {
    const ZERO: Counts = Counts {
        allocs: 0,
        reallocs: 0,
        bytes: 0,
    };

    /// Every thread's allocations so far.
    pub fn global() -> Counts {
        Counts {
            allocs: ALLOCS.load(Relaxed),
            reallocs: REALLOCS.load(Relaxed),
            bytes: BYTES.load(Relaxed),
        }
    }

    /// The calling thread's allocations so far.
    pub fn local() -> Counts {
        LOCAL.with(Cell::get)
    }

    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            allocs: self.allocs - earlier.allocs,
            reallocs: self.reallocs - earlier.reallocs,
            bytes: self.bytes - earlier.bytes,
        }
    }

    /// Calls that obtained memory: allocations plus reallocations.
    pub fn calls(&self) -> u64 {
        self.allocs + self.reallocs
    }
}

/// What the calling thread holds on the heap: bytes asked for (without the
/// allocator's own overhead) and blocks, allocations less frees. A difference of two
/// snapshots is what the code between them kept, exactly, whatever other threads do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Live {
    pub bytes: i64,
    pub blocks: i64,
}

impl Live {
    pub fn local() -> Live {
        LIVE.with(Cell::get)
    }

    pub fn since(self, earlier: Live) -> Live {
        Live {
            bytes: self.bytes - earlier.bytes,
            blocks: self.blocks - earlier.blocks,
        }
    }
}

/// Whether `SHARDMQ_ALLOC_TRACE` asks for stacks.
pub fn trace_requested() -> bool {
    std::env::var_os("SHARDMQ_ALLOC_TRACE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Stacks recorded in one window.
pub struct Traces(Vec<(backtrace::Backtrace, usize)>);

/// Starts recording stacks (clears what an earlier window left).
fn trace_start() {
    let mut t = TRACES.lock().unwrap();
    t.clear();
    t.reserve(TRACE_CAP);
    drop(t);
    TRACING.store(true, Relaxed);
}

fn trace_stop() -> Traces {
    TRACING.store(false, Relaxed);
    Traces(std::mem::take(&mut *TRACES.lock().unwrap()))
}

/// Frames that belong to the allocator, the stack recorder or the standard library:
/// a call site is the first frame past them.
fn plumbing(name: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "backtrace::",
        "__rust",
        "__rdl",
        "alloc::",
        "<alloc::",
        "core::",
        "<core::",
        "std::",
        "<std::",
        "<&",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || name.contains("measure::")
}

impl Traces {
    /// Groups the stacks by call site (the first frame past the allocator and the
    /// standard library, then callers outside the standard library, and the first
    /// broker source line) and prints the `top` sites, most frequent first, with their
    /// rate per `per` (e.g. delivered messages). `counted` is what the window counted:
    /// when more than [`TRACE_CAP`] were, the rates are scaled up from the sample.
    pub fn report(self, counted: u64, per: u64, top: usize) {
        if self.0.is_empty() {
            return;
        }
        let recorded = self.0.len();
        let scale = counted.max(recorded as u64) as f64 / recorded as f64;
        // Resolve each distinct stack once.
        type Group = (usize, u64, backtrace::Backtrace);
        let mut by_ips: HashMap<Vec<usize>, Group> = HashMap::new();
        for (bt, size) in self.0 {
            let ips: Vec<usize> = bt.frames().iter().map(|f| f.ip() as usize).collect();
            let g = by_ips.entry(ips).or_insert((0, 0, bt));
            g.0 += 1;
            g.1 += size as u64;
        }
        let mut sites: HashMap<String, (usize, u64)> = HashMap::new();
        for (_, (n, bytes, mut bt)) in by_ips {
            bt.resolve();
            let site = sites.entry(site_of(&bt)).or_default();
            site.0 += n;
            site.1 += bytes;
        }
        let mut sites: Vec<_> = sites.into_iter().collect();
        sites.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if recorded == TRACE_CAP {
            println!("    (stacks of the first {recorded} of {counted} allocations; rates scaled)");
        }
        let per = per.max(1) as f64;
        for (site, (n, bytes)) in sites.into_iter().take(top) {
            let (n, bytes) = (n as f64 * scale / per, bytes as f64 * scale / per);
            println!("    {n:>8.4} allocs {bytes:>8.1} B per message  {site}");
        }
    }
}

fn site_of(bt: &backtrace::Backtrace) -> String {
    let mut chain: Vec<String> = Vec::new();
    let mut line = None;
    for sym in bt.frames().iter().flat_map(|f| f.symbols()) {
        let Some(name) = sym.name() else { continue };
        let name = format!("{name:#}");
        if plumbing(&name) {
            continue;
        }
        if line.is_none() && name.starts_with("shardmq::") {
            if let (Some(file), Some(l)) = (sym.filename(), sym.lineno()) {
                let file = file.to_string_lossy();
                let file = file.rsplit_once("/src/").map_or(&*file, |(_, f)| f);
                line = Some(format!("src/{file}:{l}"));
            }
        }
        if chain.len() < 6 {
            chain.push(name);
        }
        if chain.len() >= 6 && line.is_some() {
            break;
        }
    }
    let mut s = chain.join(" <- ");
    if let Some(l) = line {
        s.push_str(&format!("  [{l}]"));
    }
    s
}

/// Runs `f` as a measured window: the calling thread's counts (`local`) and every
/// thread's (`global`), and the stacks if asked for.
pub fn window<R>(trace: bool, f: impl FnOnce() -> R) -> (R, Window) {
    if trace {
        trace_start();
    }
    let (g0, l0) = (Counts::global(), Counts::local());
    let r = f();
    let (l1, g1) = (Counts::local(), Counts::global());
    let traces = trace.then(trace_stop);
    (
        r,
        Window {
            global: g1.since(g0),
            local: l1.since(l0),
            traces,
        },
    )
}

/// What one measured window allocated.
pub struct Window {
    /// Every thread.
    pub global: Counts,
    /// The measuring thread alone.
    pub local: Counts,
    pub traces: Option<Traces>,
}

// ---------------------------------------------------------------------------------
// Unit level: the hot-path pieces, one thread, steady state
// ---------------------------------------------------------------------------------

pub const TOPIC: &str = "sensors/building-7/floor-3/temperature";
pub const PAYLOAD: usize = 64;

/// One unit measurement: what `calls` calls allocated on the calling thread.
pub struct Unit {
    pub name: &'static str,
    pub calls: u64,
    pub counts: Counts,
    pub traces: Option<Traces>,
}

fn limits() -> Limits {
    let c = Config::default();
    Limits {
        max_inflight: c.max_inflight,
        max_queued_messages: c.max_queued_messages,
        max_queued_bytes: c.max_queued_bytes,
    }
}

/// A routed message whose topic and payload are slices of one shared buffer, as a
/// decoded PUBLISH's are (a slice of the connection's read buffer).
fn message(qos: QoS) -> Message {
    let mut wire = BytesMut::new();
    encode_publish(&mut wire, TOPIC, &[0x5A; PAYLOAD], qos, false, false, 1);
    match decode(&mut wire, 1 << 20) {
        Ok(Some(Packet::Publish(p))) => Message {
            topic: p.topic,
            payload: p.payload,
            qos,
            retain: false,
            stamp: Default::default(),
            props: None,
        },
        other => panic!("not a publish: {other:?}"),
    }
}

fn connected_session(out: &mut Output) -> Session {
    let mut s = Session::new(ByteString::from_static("alloc-client"), true, limits());
    s.connect(0, None, Instant::now(), out);
    s
}

/// What an idle subscriber's session keeps on the heap, counted on this thread:
/// `n` sessions each connect, subscribe to a filter of their own (`storm/<client id>`,
/// the loadtest's storm) and take one QoS 1 message through to its PUBACK, as the
/// shard drives them. The client ids and filters are made before the count (the
/// shard copies each from the read into bytes of the session's own, counted in
/// [`IdleSubscriber::ids`]); the sessions themselves live in the shard's slab, by
/// value ([`IdleSubscriber::session_size`]).
pub struct IdleSubscriber {
    pub sessions: usize,
    /// Everything the sessions keep, per session.
    pub session: Live,
    /// `size_of::<Session>()`: its slot in the shard's slab.
    pub session_size: usize,
    /// The client id's and the filter's own bytes, per session.
    pub ids: usize,
    /// The `subs` trie entry of each filter (a one-level-below-`storm` leaf with one
    /// subscriber), per filter, with the growth of the `storm/` node's child map.
    pub subs_entry: Live,
    /// The same filters in an `interest` replica (filter → shard), per filter.
    pub interest_entry: Live,
}

pub fn idle_subscriber(n: usize) -> IdleSubscriber {
    use shardmq::topic::TopicTrie;
    let msg = message(QoS::AtLeastOnce);
    let mut out = Output::default();
    out.packets.reserve(16);
    let ids: Vec<ByteString> = (0..n)
        .map(|i| ByteString::from(format!("lt0000000-s{i}")))
        .collect();
    let filters: Vec<ByteString> = ids
        .iter()
        .map(|id| ByteString::from(format!("storm/{id}")))
        .collect();
    let mut sessions: Vec<Session> = Vec::with_capacity(n + 1);
    let now = Instant::now();
    let round_trip = |s: &mut Session, out: &mut Output| {
        assert_eq!(s.deliver(&msg, QoS::AtLeastOnce, out), Delivery::Sent);
        let Some(Packet::Publish(p)) = out.packets.pop() else {
            panic!("no PUBLISH out")
        };
        s.handle(Packet::PubAck(p.pkid), now, out)
            .expect("PUBACK accepted");
        out.packets.clear();
    };
    // Warm: this thread's first in-flight window, kept as a spare once drained.
    let mut warm = connected_session(&mut out);
    round_trip(&mut warm, &mut out);
    drop(warm);

    let before = Live::local();
    let mut id_bytes = 0;
    for (id, filter) in ids.iter().zip(&filters) {
        // What the shard does: the id and the filter copied out of the read.
        let id = ByteString::from(&**id);
        let filter = ByteString::from(&**filter);
        id_bytes += id.len() + filter.len();
        let mut s = Session::new(id, true, limits());
        s.connect(60, None, now, &mut out);
        s.subscribe(filter, QoS::AtLeastOnce);
        round_trip(&mut s, &mut out);
        sessions.push(s);
    }
    let session = Live::local().since(before);

    let mut subs: TopicTrie<u32, QoS> = TopicTrie::new();
    let before = Live::local();
    for (i, f) in filters.iter().enumerate() {
        subs.insert(f, i as u32, QoS::AtLeastOnce);
    }
    let subs_entry = Live::local().since(before);
    let mut interest: TopicTrie<u16, ()> = TopicTrie::new();
    let before = Live::local();
    for f in &filters {
        interest.insert(f, 1, ());
    }
    let interest_entry = Live::local().since(before);
    let per = |l: Live| Live {
        bytes: l.bytes / n as i64,
        blocks: l.blocks / n as i64,
    };
    IdleSubscriber {
        sessions: n,
        session: per(session),
        session_size: std::mem::size_of::<Session>(),
        ids: id_bytes / n,
        subs_entry: per(subs_entry),
        interest_entry: per(interest_entry),
    }
}

/// Runs `step` to warm up (10 000 times, or `calls` if fewer), then `calls` times in a
/// window.
fn unit(name: &'static str, calls: u64, trace: bool, mut step: impl FnMut()) -> Unit {
    for _ in 0..calls.min(10_000) {
        step();
    }
    let ((), w) = window(trace, || {
        for _ in 0..calls {
            step();
        }
    });
    Unit {
        name,
        calls,
        counts: w.local,
        traces: w.traces,
    }
}

/// `Session::deliver` of a QoS 0 message to a connected session, its output drained.
pub fn session_deliver_qos0(calls: u64, trace: bool) -> Unit {
    let msg = message(QoS::AtMostOnce);
    let mut out = Output::default();
    let mut s = connected_session(&mut out);
    unit("Session::deliver QoS 0", calls, trace, || {
        let d = s.deliver(black_box(&msg), QoS::AtMostOnce, &mut out);
        assert_eq!(d, Delivery::Sent);
        out.packets.clear();
    })
}

/// `Session::deliver` of a QoS 1 message, then `Session::handle` of its PUBACK.
pub fn session_deliver_qos1_puback(calls: u64, trace: bool) -> Unit {
    let msg = message(QoS::AtLeastOnce);
    let mut out = Output::default();
    let mut s = connected_session(&mut out);
    let now = Instant::now();
    unit("Session::deliver QoS 1 + PUBACK", calls, trace, || {
        let d = s.deliver(black_box(&msg), QoS::AtLeastOnce, &mut out);
        assert_eq!(d, Delivery::Sent);
        let Some(Packet::Publish(p)) = out.packets.pop() else {
            panic!("no PUBLISH out")
        };
        s.handle(Packet::PubAck(p.pkid), now, &mut out)
            .expect("PUBACK accepted");
        out.packets.clear();
    })
}

/// `encode_publish` of a QoS 1 PUBLISH into a reused write buffer.
pub fn encode(calls: u64, trace: bool) -> Unit {
    let payload = [0x5Au8; PAYLOAD];
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    unit("encode_publish (QoS 1)", calls, trace, || {
        wbuf.clear();
        encode_publish(
            &mut wbuf,
            black_box(TOPIC),
            black_box(&payload),
            QoS::AtLeastOnce,
            false,
            false,
            7,
        );
        black_box(wbuf.len());
    })
}

/// PUBLISH packets per read buffer in [`decode_publishes`].
pub const DECODE_BATCH: usize = 64;

/// `decode` over `buffers` read buffers of [`DECODE_BATCH`] back-to-back PUBLISH
/// packets, counted per packet; the buffers are filled and the packets dropped outside
/// the window.
pub fn decode_publishes(buffers: usize, trace: bool) -> Unit {
    let mut wire = BytesMut::new();
    for i in 0..DECODE_BATCH {
        encode_publish(
            &mut wire,
            TOPIC,
            &[0x5A; PAYLOAD],
            QoS::AtLeastOnce,
            false,
            false,
            i as u16 + 1,
        );
    }
    let run = |n: usize, trace: bool| {
        let mut bufs: Vec<BytesMut> = (0..n).map(|_| BytesMut::from(&wire[..])).collect();
        let mut packets: Vec<Packet> = Vec::with_capacity(n * DECODE_BATCH);
        let ((), w) = window(trace, || {
            for buf in &mut bufs {
                while let Ok(Some(p)) = decode(buf, 1 << 20) {
                    packets.push(p);
                }
            }
        });
        assert_eq!(packets.len(), n * DECODE_BATCH);
        w
    };
    run(16, false); // warm-up
    let w = run(buffers, trace);
    Unit {
        name: "decode (64 PUBLISH per buffer)",
        calls: (buffers * DECODE_BATCH) as u64,
        counts: w.local,
        traces: w.traces,
    }
}

/// `TopicTrie::for_each_match` on a trie of 1000 filters (exact and wildcard), the
/// matches collected into a reused vector as the shard does.
pub fn trie_match(calls: u64, trace: bool) -> Unit {
    let mut trie: TopicTrie<u32, QoS> = TopicTrie::new();
    let mut key = 0;
    for r in 0..10 {
        for d in 0..90 {
            trie.insert(&format!("fleet/r{r}/d{d}/telemetry"), key, QoS::AtMostOnce);
            key += 1;
        }
        for f in [
            format!("fleet/r{r}/+/telemetry"),
            format!("fleet/r{r}/#"),
            format!("+/r{r}/#"),
        ] {
            trie.insert(&f, key, QoS::AtLeastOnce);
            key += 1;
        }
    }
    let topics: Vec<String> = (0..64)
        .map(|i| format!("fleet/r{}/d{}/telemetry", i % 10, i % 90))
        .collect();
    let mut matched: Vec<(u32, QoS)> = Vec::with_capacity(64);
    let mut i = 0;
    unit(
        "TopicTrie::for_each_match (1000 filters)",
        calls,
        trace,
        || {
            matched.clear();
            trie.for_each_match(black_box(&topics[i % topics.len()]), |&k, &q| {
                matched.push((k, q))
            });
            assert_eq!(matched.len(), 4);
            i += 1;
        },
    )
}

// ---------------------------------------------------------------------------------
// End to end: a real broker, raw clients
// ---------------------------------------------------------------------------------

/// How long any one read may wait before the run fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const SHARDS: usize = 2;

/// A broker with 2 shards on 127.0.0.1:0. The in-flight window is larger than a
/// lock-step round can fill, so no delivery ever waits in a session queue (queueing
/// allocates, legitimately, and is not what this measures).
pub fn start_broker() -> Broker {
    Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(SHARDS)
        .configure(|c| c.max_inflight = 1024)
        .start()
        .expect("broker starts")
}

/// A client id whose home shard is `shard`.
fn id_on_shard(prefix: &str, shard: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| shardmq::home_shard(id, SHARDS) == shard)
        .unwrap()
}

/// A minimal MQTT client over a blocking socket. Packets to send are encoded before
/// the measured window; reads go into one buffer allocated at connect and parsed in
/// place, so nothing here allocates once connected.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    name: String,
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl RawClient {
    /// Connects with a clean session and a 60 s keep-alive, and waits for CONNACK.
    pub fn connect(addr: SocketAddr, id: &str) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut c = RawClient {
            stream,
            buf: vec![0; 256 * 1024],
            start: 0,
            end: 0,
            name: id.to_owned(),
        };
        let mut body = Vec::new();
        put_str(&mut body, "MQTT");
        body.extend_from_slice(&[4, 0x02, 0, 60]);
        put_str(&mut body, id);
        c.send(&frame(0x10, &body));
        let (first, body) = c.next_packet();
        assert_eq!((first, body), (0x20, &[0u8, 0][..]), "{id}: CONNACK");
        c
    }

    /// Subscribes to one filter and waits for a SUBACK granting `qos`.
    pub fn subscribe(&mut self, filter: &str, qos: u8) {
        let mut body = vec![0, 1];
        put_str(&mut body, filter);
        body.push(qos);
        self.send(&frame(0x82, &body));
        let (first, body) = self.next_packet();
        assert_eq!((first, body), (0x90, &[0, 1, qos][..]), "SUBACK");
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next packet: its first byte and its body (valid until the next call).
    pub fn next_packet(&mut self) -> (u8, &[u8]) {
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some((header, body)) = parse_header(avail) {
                if avail.len() >= header + body {
                    let at = self.start;
                    self.start += header + body;
                    return (self.buf[at], &self.buf[at + header..at + header + body]);
                }
            }
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            } else if self.start > 0 && self.buf.len() - self.end < 16 * 1024 {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => panic!("{}: the broker closed the connection", self.name),
                Ok(n) => self.end += n,
                Err(e) => panic!("{}: read failed: {e}", self.name),
            }
        }
    }
}

/// (fixed header length, remaining length) of the packet at the start of `b`, if
/// the fixed header is complete.
fn parse_header(b: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *b.get(1 + i)?;
        len |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((2 + i, len));
        }
    }
    panic!("malformed remaining length");
}

/// One end-to-end scenario: a publisher on shard 0, subscribers on the given shards,
/// all on one topic, published to in lock-step rounds.
pub struct Scenario {
    pub name: &'static str,
    pub qos: u8,
    /// Home shard of each subscriber.
    pub subscribers: Vec<usize>,
    /// PUBLISH packets per round; every delivery of a round is read (and, at QoS 1,
    /// acknowledged) before the next round is sent.
    pub burst: usize,
    pub warmup_rounds: usize,
    pub rounds: usize,
}

impl Scenario {
    pub fn p2p(name: &'static str, qos: u8, sub_shard: usize, rounds: usize) -> Scenario {
        Scenario {
            name,
            qos,
            subscribers: vec![sub_shard],
            burst: 64,
            warmup_rounds: 200,
            rounds,
        }
    }

    /// The same scenario with `burst` publishes per round.
    pub fn burst(self, burst: usize) -> Scenario {
        Scenario { burst, ..self }
    }

    pub fn fanout(name: &'static str, n: usize, rounds: usize) -> Scenario {
        Scenario {
            name,
            qos: 0,
            subscribers: (0..n).map(|i| i % SHARDS).collect(),
            burst: 64,
            warmup_rounds: 20,
            rounds,
        }
    }
}

/// What one scenario's measured window allocated.
pub struct E2e {
    pub name: &'static str,
    pub delivered: u64,
    /// Every thread (the broker's shards and the client).
    pub counts: Counts,
    /// The client's thread alone: must be zero, so that `counts` is the broker's.
    pub client: Counts,
    pub traces: Option<Traces>,
}

/// Runs a scenario on a fresh broker.
pub fn run_e2e(sc: &Scenario, trace: bool) -> E2e {
    let broker = start_broker();
    let addr = broker.local_addr();
    let topic = format!("alloc/{}/t", sc.name.replace(' ', "-"));
    let mut subs: Vec<RawClient> = sc
        .subscribers
        .iter()
        .enumerate()
        .map(|(i, &shard)| {
            let mut c = RawClient::connect(addr, &id_on_shard(&format!("alloc-sub{i}"), shard));
            c.subscribe(&topic, sc.qos);
            c
        })
        .collect();
    let mut publisher = RawClient::connect(addr, &id_on_shard("alloc-pub", 0));

    // Everything a round sends, encoded now.
    let qos = QoS::from_u8(sc.qos).unwrap();
    let mut burst = BytesMut::new();
    for i in 0..sc.burst {
        encode_publish(
            &mut burst,
            &topic,
            &[0x5A; PAYLOAD],
            qos,
            false,
            false,
            i as u16 + 1,
        );
    }
    let burst = burst.freeze();
    let mut acks: Vec<u8> = Vec::with_capacity(4 * sc.burst);

    let round = |subs: &mut [RawClient], publisher: &mut RawClient, acks: &mut Vec<u8>| {
        publisher.send(&burst);
        for sub in subs.iter_mut() {
            acks.clear();
            for _ in 0..sc.burst {
                let (first, body) = sub.next_packet();
                assert_eq!(
                    first & 0xF6,
                    0x30 | (sc.qos << 1),
                    "{}: a PUBLISH",
                    sub.name
                );
                if sc.qos > 0 {
                    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    acks.extend_from_slice(&[0x40, 2]);
                    acks.extend_from_slice(&body[2 + topic_len..4 + topic_len]);
                }
            }
            if sc.qos > 0 {
                sub.send(acks);
            }
        }
        if sc.qos > 0 {
            for _ in 0..sc.burst {
                let (first, _) = publisher.next_packet();
                assert_eq!(first, 0x40, "PUBACK to the publisher");
            }
        }
    };

    for _ in 0..sc.warmup_rounds {
        round(&mut subs, &mut publisher, &mut acks);
    }
    let before = broker.stats().total();
    let ((), w) = window(trace, || {
        for _ in 0..sc.rounds {
            round(&mut subs, &mut publisher, &mut acks);
        }
    });
    let after = broker.stats().total();
    let delivered = (sc.rounds * sc.burst * sc.subscribers.len()) as u64;
    assert_eq!(
        after.delivered - before.delivered,
        delivered,
        "{}: deliveries",
        sc.name
    );
    assert_eq!(
        (after.queued_total, after.dropped_queue_full),
        (before.queued_total, before.dropped_queue_full),
        "{}: nothing may queue or drop in the window",
        sc.name
    );
    drop((subs, publisher));
    broker.shutdown();
    E2e {
        name: sc.name,
        delivered,
        counts: w.global,
        client: w.local,
        traces: w.traces,
    }
}

//! Load helpers for the robustness and soak tests: publishers that send as fast as a
//! window lets them, subscribers that read, acknowledge and check order on their own
//! threads, a subscriber that never reads, lenient connects for takeover races, and
//! the broker's resident memory read from /proc.
//!
//! Nothing here measures time for an assertion: a stall shows up as a deadline passing
//! without progress, with a message saying which side stopped moving.

use super::*;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::thread::JoinHandle;

/// Payload of load messages: publisher index and sequence number (both u32, big
/// endian), then filler up to `len` bytes, so a reader can check order and loss.
pub fn load_payload(publisher: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(8));
    p.extend(publisher.to_be_bytes());
    p.extend(seq.to_be_bytes());
    p.resize(len.max(8), b'x');
    p
}

/// (publisher, sequence) of a [`load_payload`].
pub fn parse_load_payload(p: &[u8]) -> (u32, u32) {
    assert!(p.len() >= 8, "not a load payload: {p:02x?}");
    (
        u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
        u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
    )
}

/// What a message costs against `max_queued_bytes` (topic + payload), as the broker
/// counts it.
pub fn queue_cost(topic: &str, payload_len: usize) -> usize {
    topic.len() + payload_len
}

// ---------------------------------------------------------------------------------
// Flow control
// ---------------------------------------------------------------------------------

/// Closed-loop flow control for publishers: at most `size` messages may have been
/// sent and not yet received by every watched reader. With `size` messages' worth of
/// bytes below the write-buffer high-water mark and `size` below `max_inflight`, the
/// readers never need a queue, so every queued or dropped message belongs to the
/// subscriber that stopped reading.
pub struct Window {
    size: u64,
    sent: AtomicU64,
    readers: Mutex<Vec<Arc<AtomicU64>>>,
    paused: AtomicBool,
}

impl Window {
    pub fn new(size: u64) -> Arc<Window> {
        Arc::new(Window {
            size,
            sent: AtomicU64::new(0),
            readers: Mutex::new(Vec::new()),
            paused: AtomicBool::new(false),
        })
    }

    /// Adds a reader whose count gates the publishers.
    pub fn watch(&self, reader: &Reader) {
        self.readers.lock().unwrap().push(reader.counter());
    }

    /// Messages sent so far by every publisher using this window.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    fn slowest(&self) -> u64 {
        let readers = self.readers.lock().unwrap();
        readers
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Holds the publishers (they wait without failing) until [`Window::resume`], and
    /// returns once every watched reader has received everything sent.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        // A publisher may have taken a slot just before the pause: wait it out.
        std::thread::sleep(Duration::from_millis(50));
        let deadline = Instant::now() + TIMEOUT;
        while self.slowest() < self.sent() {
            assert!(
                Instant::now() < deadline,
                "readers did not catch up with the publishers ({} of {})",
                self.slowest(),
                self.sent()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Takes one slot if one is free.
    pub fn try_acquire(&self) -> bool {
        if self.paused.load(Ordering::SeqCst) {
            return false;
        }
        let s = self.sent.load(Ordering::SeqCst);
        let slowest = self.slowest();
        if slowest != u64::MAX && s.saturating_sub(slowest) >= self.size {
            return false;
        }
        self.sent
            .compare_exchange(s, s + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Takes one slot, waiting for the readers; panics if they make no progress for
    /// [`TIMEOUT`] (a broker that let one subscriber block the others).
    pub fn acquire(&self) {
        let mut last = self.slowest();
        let mut since = Instant::now();
        while !self.try_acquire() {
            let now = self.slowest();
            if now != last || self.paused.load(Ordering::SeqCst) {
                last = now;
                since = Instant::now();
            } else if since.elapsed() > TIMEOUT {
                panic!(
                    "readers received nothing for {TIMEOUT:?} (sent {}, slowest reader at {now}): \
                     the broker stopped delivering to subscribers that read",
                    self.sent()
                );
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

// ---------------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------------

/// One load publisher.
#[derive(Clone)]
pub struct PublisherSpec {
    pub addr: SocketAddr,
    pub id: String,
    /// Message k goes to `topics[k % topics.len()]`.
    pub topics: Vec<String>,
    pub qos: u8,
    /// Index written into each payload (see [`load_payload`]).
    pub index: u32,
    pub payload_len: usize,
    /// Messages to send at most.
    pub count: u64,
    /// Stop once this is set (duration-bounded runs), whatever `count` says.
    pub stop: Option<Arc<AtomicBool>>,
    /// Flow control shared with the other publishers, if any.
    pub window: Option<Arc<Window>>,
}

/// What a publisher did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublisherReport {
    pub sent: u64,
    /// PUBACKs received (QoS 1).
    pub acked: u64,
}

/// QoS 1 publishes a publisher has awaiting PUBACK at most (well below 65535 ids).
const PUB_MAX_UNACKED: u64 = 1024;

/// Starts a publisher on its own thread: connects (clean session), sends `count`
/// messages as fast as the window (and, at QoS 1, its PUBACKs) allow, waits for every
/// PUBACK, then disconnects. The thread panics if the broker stops reading it or stops
/// acknowledging for [`TIMEOUT`].
pub fn spawn_publisher(spec: PublisherSpec) -> JoinHandle<PublisherReport> {
    std::thread::spawn(move || run_publisher(spec))
}

fn run_publisher(spec: PublisherSpec) -> PublisherReport {
    let (raw, _) = Raw::connect(spec.addr, &spec.id, true);
    let mut stream = raw.stream.try_clone().expect("clone publisher socket");
    let acked = Arc::new(AtomicU64::new(0));
    // Messages handed to the kernel so far; `done` once the writer has finished.
    let flushed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (ack_thread, mut own_raw) = if spec.qos > 0 {
        let (acked, flushed, done) = (acked.clone(), flushed.clone(), done.clone());
        let id = spec.id.clone();
        let t = std::thread::spawn(move || count_pubacks(raw, &id, &acked, &flushed, &done));
        (Some(t), None)
    } else {
        (None, Some(raw))
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut sent = 0u64;
    let mut waiting_since: Option<Instant> = None;
    let flush = |stream: &mut TcpStream, buf: &mut Vec<u8>, sent: u64| {
        if !buf.is_empty() {
            stream
                .write_all(buf)
                .unwrap_or_else(|e| panic!("publisher {}: write: {e}", spec.id));
            buf.clear();
        }
        flushed.store(sent, Ordering::SeqCst);
    };
    while sent < spec.count {
        if spec.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            break;
        }
        if spec.qos > 0 && sent - acked.load(Ordering::SeqCst) >= PUB_MAX_UNACKED {
            flush(&mut stream, &mut buf, sent);
            let since = *waiting_since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < TIMEOUT,
                "publisher {}: no PUBACK for {TIMEOUT:?} with {PUB_MAX_UNACKED} publishes \
                 unacknowledged: the broker stopped acknowledging publishers",
                spec.id
            );
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        waiting_since = None;
        if let Some(w) = &spec.window {
            if !w.try_acquire() {
                flush(&mut stream, &mut buf, sent);
                w.acquire();
            }
        }
        let pid = if spec.qos > 0 {
            (sent % 65535) as u16 + 1
        } else {
            0
        };
        let payload = load_payload(spec.index, sent as u32, spec.payload_len);
        buf.extend(publish_packet(
            &spec.topics[(sent % spec.topics.len() as u64) as usize],
            &payload,
            spec.qos,
            false,
            false,
            pid,
        ));
        sent += 1;
        if buf.len() >= 32 * 1024 {
            flush(&mut stream, &mut buf, sent);
        }
    }
    flush(&mut stream, &mut buf, sent);
    done.store(true, Ordering::SeqCst);
    let raw = match ack_thread {
        Some(t) => t.join().expect("PUBACK reader"),
        None => {
            // A PINGREQ round trip: the broker has read every publish before it.
            let mut raw = own_raw.take().unwrap();
            raw.ping();
            raw
        }
    };
    raw.disconnect();
    PublisherReport {
        sent,
        acked: acked.load(Ordering::SeqCst),
    }
}

/// Counts PUBACKs (they must come in order) until the writer is done and all its
/// publishes are acknowledged.
fn count_pubacks(
    mut raw: Raw,
    id: &str,
    acked: &AtomicU64,
    flushed: &AtomicU64,
    done: &AtomicBool,
) -> Raw {
    let mut last_progress = Instant::now();
    loop {
        let n = acked.load(Ordering::SeqCst);
        let writer_done = done.load(Ordering::SeqCst);
        let out = flushed.load(Ordering::SeqCst);
        if writer_done && n == out {
            return raw;
        }
        if n == out {
            // Nothing outstanding: the writer is waiting for its window, not for us.
            last_progress = Instant::now();
        }
        match raw.read_packet(Instant::now() + Duration::from_millis(20)) {
            Ok(p) if p.kind() == PUBACK => {
                let expected = (n % 65535) as u16 + 1;
                assert_eq!(p.pid(), expected, "publisher {id}: PUBACKs in order");
                acked.fetch_add(1, Ordering::SeqCst);
                last_progress = Instant::now();
            }
            Ok(p) => panic!("publisher {id}: unexpected {p:?}"),
            Err(ReadEnd::Closed) => panic!("publisher {id}: the broker closed the connection"),
            Err(ReadEnd::Timeout) => assert!(
                last_progress.elapsed() < TIMEOUT,
                "publisher {id}: no PUBACK for {TIMEOUT:?} ({n} of {out} acknowledged): \
                 the stalled subscriber blocks the publisher"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------
// Reader (a subscriber that keeps up)
// ---------------------------------------------------------------------------------

/// What a reader saw.
#[derive(Debug, Default, Clone)]
pub struct ReaderReport {
    pub received: u64,
    /// Messages whose sequence number skipped ahead (a message before them was lost).
    pub gaps: u64,
    /// Messages whose sequence number went backwards (duplicates or reordering).
    pub backwards: u64,
    /// Messages that came with DUP set.
    pub dups: u64,
    /// The first irregularity, for the failure message.
    pub first_irregular: Option<String>,
    /// Whether the broker closed the connection.
    pub closed: bool,
}

/// A subscriber on its own thread that reads and acknowledges every PUBLISH and
/// checks each publisher's sequence numbers.
pub struct Reader {
    pub name: String,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sync_req: Arc<AtomicU64>,
    sync_done: Arc<AtomicU64>,
    handle: Option<JoinHandle<(Raw, ReaderReport)>>,
}

/// Starts reading `raw` (already subscribed) on a thread.
pub fn spawn_reader(name: &str, raw: Raw) -> Reader {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sync_req = Arc::new(AtomicU64::new(0));
    let sync_done = Arc::new(AtomicU64::new(0));
    let handle = {
        let (received, stop, sync_req, sync_done) = (
            received.clone(),
            stop.clone(),
            sync_req.clone(),
            sync_done.clone(),
        );
        let name = name.to_string();
        std::thread::spawn(move || read_all(&name, raw, &received, &stop, &sync_req, &sync_done))
    };
    Reader {
        name: name.to_string(),
        received,
        stop,
        sync_req,
        sync_done,
        handle: Some(handle),
    }
}

fn read_all(
    name: &str,
    mut raw: Raw,
    received: &AtomicU64,
    stop: &AtomicBool,
    sync_req: &AtomicU64,
    sync_done: &AtomicU64,
) -> (Raw, ReaderReport) {
    let mut report = ReaderReport::default();
    let mut next: Vec<u32> = Vec::new();
    let mut pinged = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let want = sync_req.load(Ordering::SeqCst);
        if want > pinged {
            raw.send_lossy(&PINGREQ_BYTES);
            pinged = want;
        }
        match raw.read_packet(Instant::now() + Duration::from_millis(20)) {
            Ok(p) if p.kind() == PUBLISH => {
                let p = p.publish();
                if p.qos == 1 {
                    raw.send_lossy(&puback(p.pid));
                }
                if p.dup {
                    report.dups += 1;
                }
                let (publisher, seq) = parse_load_payload(&p.payload);
                let publisher = publisher as usize;
                if next.len() <= publisher {
                    next.resize(publisher + 1, 0);
                }
                if seq != next[publisher] {
                    if seq > next[publisher] {
                        report.gaps += 1;
                    } else {
                        report.backwards += 1;
                    }
                    report.first_irregular.get_or_insert_with(|| {
                        format!(
                            "{name}: publisher {publisher}: expected #{}, got #{seq}",
                            next[publisher]
                        )
                    });
                }
                next[publisher] = next[publisher].max(seq + 1);
                report.received += 1;
                received.fetch_add(1, Ordering::SeqCst);
            }
            Ok(p) if p.kind() == PINGRESP => sync_done.store(pinged, Ordering::SeqCst),
            Ok(p) => panic!("{name}: unexpected {p:?}"),
            Err(ReadEnd::Timeout) => {}
            Err(ReadEnd::Closed) => {
                report.closed = true;
                break;
            }
        }
    }
    (raw, report)
}

impl Reader {
    /// The shared count of messages received (for a [`Window`]).
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.received.clone()
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Waits until `n` messages have arrived; panics if the count stops moving for
    /// [`TIMEOUT`].
    pub fn wait_for(&self, n: u64) {
        let mut last = self.received();
        let mut since = Instant::now();
        while self.received() < n {
            let now = self.received();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() > TIMEOUT {
                panic!(
                    "{}: stuck at {now} of {n} messages for {TIMEOUT:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A PINGREQ round trip: when it returns, the broker has processed every PUBACK
    /// this reader sent before.
    pub fn sync(&self) {
        let req = self.sync_req.fetch_add(1, Ordering::SeqCst) + 1;
        let deadline = Instant::now() + TIMEOUT;
        while self.sync_done.load(Ordering::SeqCst) < req {
            assert!(
                Instant::now() < deadline,
                "{}: no PINGRESP within {TIMEOUT:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the thread; returns the connection and what was seen.
    pub fn stop(mut self) -> (Raw, ReaderReport) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .unwrap()
            .join()
            .unwrap_or_else(|_| panic!("{}: reader thread panicked", self.name))
    }
}

/// Reads and acknowledges PUBLISHes until none arrives for `quiet`; returns them.
pub fn drain_publishes(raw: &mut Raw, quiet: Duration) -> Vec<Publish> {
    let mut got = Vec::new();
    while let Some(p) = raw.recv_within(quiet) {
        if p.kind() != PUBLISH {
            continue;
        }
        let p = p.publish();
        raw.ack(&p);
        got.push(p);
    }
    got
}

// ---------------------------------------------------------------------------------
// A subscriber that stops reading
// ---------------------------------------------------------------------------------

/// Connects, subscribes `filter` at `qos`, shrinks its socket receive buffer, and
/// from then on is never read by the test until it "resumes".
pub fn stalled_subscriber(
    addr: SocketAddr,
    id: &str,
    clean: bool,
    filter: &str,
    qos: u8,
) -> (Raw, bool) {
    let (mut raw, sp) = Raw::connect(addr, id, clean);
    assert_eq!(raw.subscribe(1, &[(filter, qos)]), vec![qos]);
    set_receive_buffer(&raw.stream, 4096);
    (raw, sp)
}

/// The client disappears as a crashed process or a dead link would: the socket is
/// closed at once with a reset (SO_LINGER 0), without DISCONNECT and without letting
/// the broker write anything more to it.
pub fn vanish(raw: Raw) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is open for the life of `raw.stream`, and we pass a valid linger
    // struct with its size.
    let rc = unsafe {
        libc::setsockopt(
            raw.stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_LINGER");
    drop(raw);
}

/// SO_RCVBUF, so the kernel holds little for a client that does not read and the
/// broker's own bounds are reached quickly.
pub fn set_receive_buffer(stream: &TcpStream, bytes: i32) {
    // SAFETY: the fd is open for the life of `stream`, and we pass a valid i32 with
    // its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_RCVBUF");
}

// ---------------------------------------------------------------------------------
// Lenient operations for takeover races
// ---------------------------------------------------------------------------------

/// Connects, but accepts that the broker may close the connection at once (another
/// connection took the client id over before CONNACK was read). Panics on a refusal
/// or if nothing at all happens within [`TIMEOUT`].
pub fn try_connect(addr: SocketAddr, opts: &ConnectOpts) -> Option<(Raw, bool)> {
    let mut raw = Raw::open(addr);
    raw.send_lossy(&opts.encode());
    match raw.read_packet(Instant::now() + TIMEOUT) {
        Ok(p) => {
            assert_eq!(p.kind(), CONNACK, "expected CONNACK, got {p:?}");
            assert_eq!(p.body[1], 0, "CONNACK return code");
            Some((raw, p.body[0] & 1 == 1))
        }
        Err(ReadEnd::Closed) => None,
        Err(ReadEnd::Timeout) => panic!(
            "no CONNACK and no close within {TIMEOUT:?} for {:?}",
            String::from_utf8_lossy(&opts.client_id)
        ),
    }
}

/// SUBSCRIBE, then wait for the SUBACK or the close of a connection taken over
/// meanwhile; PUBLISHes arriving first are ignored. False if closed.
pub fn try_subscribe(raw: &mut Raw, pid: u16, filters: &[(&str, u8)]) -> bool {
    raw.send_lossy(&subscribe_packet(pid, filters));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match raw.read_packet(deadline) {
            Ok(p) if p.kind() == SUBACK => {
                assert_eq!(p.pid(), pid, "SUBACK packet id");
                return true;
            }
            Ok(_) => {}
            Err(ReadEnd::Closed) => return false,
            Err(ReadEnd::Timeout) => panic!("no SUBACK and no close within {TIMEOUT:?}"),
        }
    }
}

/// A small deterministic generator (xorshift), so races vary by seed but a failing
/// seed can be rerun.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ---------------------------------------------------------------------------------
// Stats and memory
// ---------------------------------------------------------------------------------

/// The gauges that must return to their starting values once clients have gone.
pub fn gauges(s: &ShardStats) -> [(&'static str, usize); 9] {
    [
        ("connections", s.connections),
        ("sessions", s.sessions),
        ("subscriptions", s.subscriptions),
        ("interest_entries", s.interest_entries),
        ("pending_interest", s.pending_interest),
        ("inflight", s.inflight),
        ("queued", s.queued),
        ("queued_bytes", s.queued_bytes),
        ("retained", s.retained),
    ]
}

/// One shard's stats.
pub fn shard_stats(broker: &Broker, shard: usize) -> ShardStats {
    broker
        .stats()
        .shards
        .into_iter()
        .find(|s| s.shard == shard)
        .unwrap_or_else(|| panic!("shard {shard} did not answer the stats request"))
}

/// Resident and peak resident memory of process `pid` (VmRSS, VmHWM), in bytes.
pub fn process_memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Kernel memory held by TCP sockets system-wide (the `mem` of /proc/net/sockstat, in
/// pages), in bytes: what the socket buffers of a stalled client cost outside the
/// broker's RSS.
pub fn kernel_tcp_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            let pages: u64 = it.next()?.parse().ok()?;
            return Some(pages * 4096);
        }
    }
    None
}

/// Bytes as MiB with one decimal, for reports.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

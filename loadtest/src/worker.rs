//! One load-generating thread: a mio event loop over its share of the clients.
//! Reads are drained to the last complete packet before anything is acted on, and
//! everything a connection has to send in one turn of the loop goes out in one write.
//! Over TLS, a connection's rustls state sits between its socket and those buffers
//! (sans-IO: socket bytes go in with `read_tls`, MQTT bytes come out of `reader`, and
//! the reverse on the way out); the plain path does not touch it.

use crate::mqtt::{self, Incoming};
use crate::plan::{ClientSpec, Role};
use crate::run::{Pacing, Phase, Shared};
use crate::track::{self, Arrival, Stream};
use crate::window::Window;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest packet accepted from a server.
const MAX_PACKET: usize = 16 << 20;
/// Read buffer of a client that receives publishes.
const ACTIVE_READ_BUF: usize = 64 << 10;
/// Read buffer of an idle client (CONNACK and PINGRESP only).
const IDLE_READ_BUF: usize = 64;
/// A publisher with this much unsent in its write buffer waits for the socket.
const WRITE_HIGH_WATER: usize = 256 << 10;
/// Most publishes one publisher writes in one turn of the loop.
const PUBLISH_BATCH: u64 = 256;
/// One socket read over TLS, shared by the thread's connections: rustls takes the
/// bytes from it, so nothing stays behind between reads.
const TLS_READ_BUF: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not connected: waiting for a turn to connect (or to reconnect).
    Waiting,
    /// TCP connect in progress.
    Connecting,
    /// CONNECT sent (over TLS: queued behind the handshake).
    AwaitConnAck,
    AwaitSubAck,
    /// A storm's client: its message published, waiting for its PUBACK and its copy.
    AwaitStorm,
    Ready,
    /// Gone for good (failed during set-up, or closed at the end).
    Closed,
}

struct Publisher {
    index: u32,
    topic: Vec<u8>,
    seq: u64,
    /// Packet ids awaiting PUBACK or PUBCOMP, as a bitset over all 65536 ids.
    inflight: Vec<u64>,
    inflight_count: usize,
    next_pid: u16,
    /// 5.0: the Receive Maximum of the broker's CONNACK, which bounds this
    /// publisher's QoS 1/2 publishes in flight (`usize::MAX`: none announced).
    server_receive_maximum: usize,
}

impl Publisher {
    fn take_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1);
            let pid = self.next_pid;
            if pid == 0 {
                continue;
            }
            let (w, b) = (pid as usize / 64, pid as usize % 64);
            if self.inflight[w] & (1 << b) == 0 {
                self.inflight[w] |= 1 << b;
                self.inflight_count += 1;
                return pid;
            }
        }
    }

    /// Frees `pid`; false when it was not in flight.
    fn release(&mut self, pid: u16) -> bool {
        let (w, b) = (pid as usize / 64, pid as usize % 64);
        if self.inflight[w] & (1 << b) == 0 {
            return false;
        }
        self.inflight[w] &= !(1 << b);
        self.inflight_count -= 1;
        true
    }

    fn clear(&mut self) -> usize {
        let n = self.inflight_count;
        self.inflight.iter_mut().for_each(|w| *w = 0);
        self.inflight_count = 0;
        n
    }
}

struct Subscriber {
    index: u32,
    filter: Vec<u8>,
    /// Publisher index of `streams[0]`.
    first_publisher: u32,
    streams: Vec<Stream>,
    granted: u8,
}

struct Conn {
    spec: ClientSpec,
    stream: Option<TcpStream>,
    /// The TLS session over `stream`, when the run uses TLS.
    tls: Option<Box<ClientConnection>>,
    state: State,
    rbuf: Vec<u8>,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    dirty: bool,
    last_write: Instant,
    publisher: Option<Publisher>,
    subscriber: Option<Subscriber>,
    /// A storm's client: its topic, and what of its one message came back.
    storm: Option<Box<Storm>>,
}

struct Storm {
    topic: Vec<u8>,
    /// False: subscribe only (`conns --subscribe`), no message.
    message: bool,
    acked: bool,
    received: bool,
}

/// Packet id of a storm client's one message.
const STORM_PID: u16 = 7;

/// New connections one turn of the event loop starts, at most: between turns, the
/// answers to those already open are handled.
const CONNECTS_PER_TURN: usize = 64;

/// Settled deliveries a subscribing thread has not yet added to the window, in all
/// and per publisher: kept locally so the per-message path touches no atomics, and
/// added once per turn of the loop.
struct Settles {
    total: u64,
    /// Indexed by publisher; empty on a thread without subscribers.
    by_publisher: Vec<u64>,
    /// Publishers with a non-zero entry, so a flush is not a walk over all of them.
    touched: Vec<u32>,
}

impl Settles {
    fn new(publishers: usize) -> Settles {
        Settles {
            total: 0,
            by_publisher: vec![0; publishers],
            touched: Vec::new(),
        }
    }

    fn add(&mut self, publisher: u32, n: u64) {
        self.total += n;
        if let Some(d) = self.by_publisher.get_mut(publisher as usize) {
            if *d == 0 {
                self.touched.push(publisher);
            }
            *d += n;
        }
    }

    fn flush(&mut self, window: &Window) {
        if self.total == 0 {
            return;
        }
        for p in self.touched.drain(..) {
            window.settle_publisher(p, std::mem::take(&mut self.by_publisher[p as usize]));
        }
        window.settle(std::mem::take(&mut self.total));
    }
}

/// What a worker hands back when the run ends.
pub struct WorkerResult {
    pub latency: Histogram<u64>,
    /// (subscriber index, first publisher index, streams) per subscriber.
    pub streams: Vec<(u32, u32, Vec<Stream>)>,
    /// (publisher index, messages sent) per publisher.
    pub sent: Vec<(u32, u64)>,
    pub min_granted: u8,
    /// 5.0: the lowest Receive Maximum a broker's CONNACK announced to a publisher.
    pub server_receive_maximum: Option<u16>,
    pub connected: u64,
    pub connect_failures: u64,
    pub disconnects: u64,
    pub misrouted: u64,
    pub unacked_at_end: u64,
    pub late_sends: u64,
    pub errors: Vec<String>,
    /// When this thread opened its first socket, and when its last client became
    /// ready during set-up (CONNACK, or SUBACK for a subscriber).
    pub first_connect: Option<Instant>,
    pub last_ready: Option<Instant>,
    /// The TLS version and cipher suite of the first handshake that completed.
    pub tls_session: Option<(String, String)>,
}

/// Errors a worker keeps for the report.
const MAX_ERRORS_KEPT: usize = 20;
/// A client the broker dropped mid-run reconnects after this long.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Token of the pacing timer.
const TIMER: Token = Token(usize::MAX);
/// Rate pacing never wakes more often than this.
const MIN_TICK: Duration = Duration::from_micros(20);

pub struct Worker {
    poll: Poll,
    /// Rate pacing: a timerfd armed for when the next message is due, so sends
    /// follow the schedule to the microsecond rather than epoll's milliseconds.
    timer: Option<Timer>,
    conns: Vec<Conn>,
    shared: Arc<Shared>,
    /// Clients to connect, each not before its instant (a reconnect backs off).
    waiting: VecDeque<(usize, Instant)>,
    handshaking: usize,
    ready: usize,
    failed: usize,
    reported_ready: bool,
    publishers: Vec<usize>,
    rr: usize,
    dirty: Vec<usize>,
    /// Counts not yet added to the shared totals.
    d_delivered: u64,
    d_unacked: i64,
    settles: Settles,
    /// Publish step scratch: (connection, messages it may send) per publisher ready
    /// to send, kept to reuse its allocation.
    wants: Vec<(usize, u64)>,
    /// Rate pacing: messages this thread has sent, and its share of the rate.
    rate_sent: u64,
    rate_share: f64,
    latency: Histogram<u64>,
    result: WorkerResult,
    last_ping_check: Instant,
    source_ips: Vec<IpAddr>,
    next_source: usize,
    /// Socket reads over TLS land here first (empty when the run is plain).
    tls_scratch: Vec<u8>,
}

fn new_histogram() -> Histogram<u64> {
    // Nanoseconds from 1 ns to 100 s at three significant figures.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

impl Worker {
    pub fn new(specs: Vec<ClientSpec>, shared: Arc<Shared>, source_ips: Vec<IpAddr>) -> Worker {
        let opts = &shared.opts;
        let mut publishers = Vec::new();
        let conns: Vec<Conn> = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let publisher = match &spec.role {
                    Role::Publisher { index, topic } => {
                        publishers.push(i);
                        Some(Publisher {
                            index: *index,
                            topic: topic.clone().into_bytes(),
                            seq: 0,
                            inflight: if opts.pub_qos > 0 {
                                vec![0; 1024]
                            } else {
                                Vec::new()
                            },
                            inflight_count: 0,
                            next_pid: 0,
                            server_receive_maximum: usize::MAX,
                        })
                    }
                    _ => None,
                };
                let subscriber = match &spec.role {
                    Role::Subscriber {
                        index,
                        filter,
                        first_publisher,
                        publishers,
                    } => Some(Subscriber {
                        index: *index,
                        filter: filter.clone().into_bytes(),
                        first_publisher: *first_publisher,
                        streams: vec![Stream::default(); *publishers as usize],
                        granted: opts.sub_qos,
                    }),
                    _ => None,
                };
                let storm = match &spec.role {
                    Role::Storm { topic, message } => Some(Box::new(Storm {
                        topic: topic.clone().into_bytes(),
                        message: *message,
                        acked: false,
                        received: false,
                    })),
                    _ => None,
                };
                Conn {
                    storm,
                    spec,
                    stream: None,
                    tls: None,
                    state: State::Waiting,
                    rbuf: Vec::new(),
                    rlen: 0,
                    wbuf: Vec::new(),
                    wpos: 0,
                    dirty: false,
                    last_write: Instant::now(),
                    publisher,
                    subscriber,
                }
            })
            .collect();
        let has_subscribers = conns.iter().any(|c| c.subscriber.is_some());
        let plan_publishers = shared.plan_publishers;
        let total_pubs = plan_publishers.max(1) as f64;
        let rate_share = match opts.pacing {
            Pacing::Rate(r) => r * publishers.len() as f64 / total_pubs,
            Pacing::Window(_) => 0.0,
        };
        let tls_scratch = if opts.tls.is_some() {
            vec![0; TLS_READ_BUF]
        } else {
            Vec::new()
        };
        let poll = Poll::new().expect("epoll instance");
        let timer = match opts.pacing {
            Pacing::Rate(_) if !publishers.is_empty() => {
                Some(Timer::new(&poll).expect("timerfd for rate pacing"))
            }
            _ => None,
        };
        Worker {
            poll,
            timer,
            waiting: {
                let now = Instant::now();
                (0..conns.len()).map(|i| (i, now)).collect()
            },
            conns,
            shared,
            handshaking: 0,
            ready: 0,
            failed: 0,
            reported_ready: false,
            publishers,
            rr: 0,
            dirty: Vec::new(),
            d_delivered: 0,
            d_unacked: 0,
            settles: Settles::new(if has_subscribers { plan_publishers } else { 0 }),
            wants: Vec::new(),
            rate_sent: 0,
            rate_share,
            latency: new_histogram(),
            result: WorkerResult {
                latency: new_histogram(),
                streams: Vec::new(),
                sent: Vec::new(),
                min_granted: 2,
                server_receive_maximum: None,
                connected: 0,
                connect_failures: 0,
                disconnects: 0,
                misrouted: 0,
                unacked_at_end: 0,
                late_sends: 0,
                errors: Vec::new(),
                first_connect: None,
                last_ready: None,
                tls_session: None,
            },
            last_ping_check: Instant::now(),
            source_ips,
            next_source: 0,
            tls_scratch,
        }
    }

    pub fn run(mut self) -> WorkerResult {
        let mut events = Events::with_capacity(1024);
        loop {
            let phase = self.shared.phase();
            if phase == Phase::Done {
                break;
            }
            let more = self.start_connects();
            let timeout = if more {
                Duration::ZERO
            } else {
                self.poll_timeout(phase)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    self.fatal(format!("poll: {e}"));
                    break;
                }
            }
            let now = Instant::now();
            for ev in events.iter() {
                if ev.token() == TIMER {
                    if let Some(t) = &self.timer {
                        t.clear();
                    }
                    continue;
                }
                let i = ev.token().0;
                self.on_event(
                    i,
                    ev.is_readable() || ev.is_read_closed(),
                    ev.is_writable(),
                    now,
                );
            }
            if self.shared.phase() == Phase::Running {
                self.publish_step(now);
            }
            if now.duration_since(self.last_ping_check) >= Duration::from_secs(1) {
                self.last_ping_check = now;
                self.keep_alive(now);
            }
            self.flush_dirty(now);
            self.report_progress();
        }
        self.finish()
    }

    fn poll_timeout(&self, phase: Phase) -> Duration {
        if phase != Phase::Running || self.publishers.is_empty() {
            return Duration::from_millis(20);
        }
        match self.shared.opts.pacing {
            // The timer wakes the loop when the next message is due.
            Pacing::Rate(_) => Duration::from_millis(100),
            Pacing::Window(_) => {
                if self.shared.window.room() >= self.shared.fanout && self.any_publisher_can_send()
                {
                    Duration::ZERO
                } else {
                    Duration::from_millis(1)
                }
            }
        }
    }

    fn fatal(&mut self, msg: String) {
        self.note_error(msg.clone());
        self.shared.set_fatal(msg);
    }

    /// Keeps the first few errors for the report; a broker that keeps failing
    /// reconnects must not grow the list without bound.
    fn note_error(&mut self, msg: String) {
        if self.result.errors.len() < MAX_ERRORS_KEPT {
            self.result.errors.push(msg);
        }
    }

    // ---- connecting ----

    /// Opens connections up to the concurrency limit, at most [`CONNECTS_PER_TURN`]
    /// per turn of the event loop, so that a storm's later connects do not wait behind
    /// its earlier ones' answers; true when more could start at once.
    fn start_connects(&mut self) -> bool {
        let limit = self.shared.opts.connect_concurrency;
        let now = Instant::now();
        let mut started = 0;
        while self.handshaking < limit {
            match self.waiting.front() {
                Some(&(_, at)) if at <= now => {}
                _ => return false,
            }
            if started == CONNECTS_PER_TURN {
                return true;
            }
            started += 1;
            let Some((i, _)) = self.waiting.pop_front() else {
                break;
            };
            self.handshaking += 1;
            if self.result.first_connect.is_none() {
                self.result.first_connect = Some(now);
            }
            match self.open_socket(i) {
                Ok(mut stream) => {
                    let reg = self.poll.registry().register(
                        &mut stream,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    if let Err(e) = reg {
                        self.setup_failed(i, format!("register: {e}"));
                        continue;
                    }
                    let c = &mut self.conns[i];
                    c.stream = Some(stream);
                    c.state = State::Connecting;
                    c.rlen = 0;
                    c.wbuf.clear();
                    c.wpos = 0;
                }
                Err(e) => self.setup_failed(i, format!("connect: {e}")),
            }
        }
        false
    }

    fn open_socket(&mut self, i: usize) -> std::io::Result<TcpStream> {
        let opts = &self.shared.opts;
        let broker =
            crate::plan::broker_for(&self.conns[i].spec.role, opts.broker, &opts.sub_brokers);
        if self.source_ips.is_empty() {
            return TcpStream::connect(broker);
        }
        let ip = self.source_ips[self.next_source % self.source_ips.len()];
        self.next_source += 1;
        connect_from(ip, broker)
    }

    /// A connection failed before it was ready (or while reconnecting).
    fn setup_failed(&mut self, i: usize, why: String) {
        let retry = self.shared.phase() != Phase::Setup && self.conns[i].spec.role.is_active();
        self.drop_socket(i);
        self.handshaking = self.handshaking.saturating_sub(1);
        if retry {
            // A reconnect attempt during the run: try again on a later turn.
            self.conns[i].state = State::Waiting;
            self.waiting
                .push_back((i, Instant::now() + RECONNECT_DELAY));
            self.note_error(format!("{}: {why}", self.conns[i].spec.client_id));
            return;
        }
        self.conns[i].state = State::Closed;
        self.failed += 1;
        self.result.connect_failures += 1;
        let msg = format!("{}: {why}", self.conns[i].spec.client_id);
        if self.shared.opts.tolerate_connect_failures {
            self.note_error(msg);
        } else {
            self.fatal(msg);
        }
    }

    fn drop_socket(&mut self, i: usize) {
        self.conns[i].tls = None;
        if let Some(mut s) = self.conns[i].stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
    }

    /// The broker closed, or the socket failed, after the client was ready.
    fn connection_lost(&mut self, i: usize, why: String) {
        let was_ready = self.conns[i].state == State::Ready;
        if !was_ready {
            self.setup_failed(i, why);
            return;
        }
        self.drop_socket(i);
        self.ready -= 1;
        self.result.disconnects += 1;
        self.shared.connected.fetch_sub(1, Relaxed);
        self.note_error(format!(
            "{}: connection lost: {why}",
            self.conns[i].spec.client_id
        ));
        let c = &mut self.conns[i];
        if let Some(p) = c.publisher.as_mut() {
            // A clean session forgets what was in flight: those messages may be lost.
            self.d_unacked -= p.clear() as i64;
        }
        if c.spec.role.is_active() && self.shared.phase() != Phase::Done {
            c.state = State::Waiting;
            self.waiting
                .push_back((i, Instant::now() + RECONNECT_DELAY));
        } else {
            c.state = State::Closed;
        }
    }

    fn became_ready(&mut self, i: usize) {
        self.conns[i].state = State::Ready;
        self.ready += 1;
        self.handshaking = self.handshaking.saturating_sub(1);
        self.shared.connected.fetch_add(1, Relaxed);
        if self.shared.phase() == Phase::Setup {
            self.result.last_ready = Some(Instant::now());
        }
    }

    // ---- events ----

    fn on_event(&mut self, i: usize, readable: bool, writable: bool, now: Instant) {
        match self.conns[i].state {
            State::Waiting | State::Closed => {}
            State::Connecting => {
                let stream = self.conns[i].stream.as_ref().expect("connecting socket");
                match stream.take_error() {
                    Ok(Some(e)) | Err(e) => return self.setup_failed(i, e.to_string()),
                    Ok(None) => {}
                }
                match stream.peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::NotConnected => return,
                    Err(e) => return self.setup_failed(i, e.to_string()),
                }
                let _ = stream.set_nodelay(true);
                let shared = self.shared.clone();
                let opts = &shared.opts;
                let active = self.conns[i].spec.role.is_active();
                let c = &mut self.conns[i];
                if let Some(t) = &opts.tls {
                    // The client hello goes out with the first flush; CONNECT waits
                    // in rustls until the handshake is done.
                    match ClientConnection::new(t.config.clone(), t.server_name.clone()) {
                        Ok(conn) => c.tls = Some(Box::new(conn)),
                        Err(e) => return self.setup_failed(i, format!("TLS: {e}")),
                    }
                }
                c.state = State::AwaitConnAck;
                let cap = if active {
                    ACTIVE_READ_BUF
                } else {
                    IDLE_READ_BUF
                };
                if c.rbuf.len() != cap {
                    c.rbuf = vec![0; cap];
                }
                let clean_session = !(opts.persistent_subscribers
                    && matches!(c.spec.role, Role::Subscriber { .. } | Role::Storm { .. }));
                mqtt::connect_with(
                    &mut c.wbuf,
                    &mqtt::Connect {
                        protocol: opts.protocol,
                        client_id: c.spec.client_id.as_bytes(),
                        clean_session,
                        keep_alive: opts.keep_alive,
                        username: opts.username.as_deref(),
                        password: opts.password.as_deref(),
                        receive_maximum: opts.receive_maximum,
                    },
                );
                self.mark_dirty(i);
                if readable {
                    self.read(i, now);
                }
            }
            _ => {
                if readable {
                    self.read(i, now);
                }
                if writable && self.conns[i].stream.is_some() {
                    self.flush(i, now);
                }
            }
        }
    }

    fn read(&mut self, i: usize, now: Instant) {
        if self.conns[i].tls.is_some() {
            return self.read_tls(i, now);
        }
        loop {
            let c = &mut self.conns[i];
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            if c.rlen == c.rbuf.len() {
                // A packet bigger than the buffer: grow it.
                let new_len = (c.rbuf.len() * 2).min(MAX_PACKET + 8);
                if new_len == c.rbuf.len() {
                    return self.connection_lost(i, "oversized packet".into());
                }
                c.rbuf.resize(new_len, 0);
            }
            let rlen = c.rlen;
            match stream.read(&mut c.rbuf[rlen..]) {
                Ok(0) => return self.connection_lost(i, "closed by the broker".into()),
                Ok(n) => {
                    self.conns[i].rlen += n;
                    if let Err(e) = self.process(i, now) {
                        self.note_error(format!("{}: {e}", self.conns[i].spec.client_id));
                        self.shared.protocol_errors.fetch_add(1, Relaxed);
                        return self.connection_lost(i, e);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.connection_lost(i, e.to_string()),
            }
        }
    }

    /// Acts on every complete packet in the read buffer.
    fn process(&mut self, i: usize, now: Instant) -> Result<(), String> {
        let now_ns = self.shared.clock_ns(now);
        let (m_start, m_end) = self.shared.window_ns();
        let mut at = 0;
        let mut became_ready = false;
        let c = &mut self.conns[i];
        let (sub_qos, pub_qos) = (self.shared.opts.sub_qos, self.shared.opts.pub_qos);
        let protocol = self.shared.opts.protocol;
        while let Some((packet, used)) = mqtt::decode(&c.rbuf[at..c.rlen], MAX_PACKET, protocol)? {
            at += used;
            match packet {
                Incoming::ConnAck {
                    code,
                    props,
                    session_present,
                } => {
                    if c.state != State::AwaitConnAck {
                        return Err("unexpected CONNACK".into());
                    }
                    if code != 0 {
                        let version =
                            if protocol == mqtt::Protocol::V5 && mqtt::refuses_version(code) {
                                "; the broker does not accept MQTT 5.0"
                            } else {
                                ""
                            };
                        let shown = match protocol {
                            mqtt::Protocol::V311 => format!("code {code}"),
                            mqtt::Protocol::V5 => format!("code 0x{code:02x}"),
                        };
                        return Err(format!(
                            "CONNACK refused the connection with {shown} ({}){version}",
                            mqtt::connack_reason(code)
                        ));
                    }
                    if let Some(p) = c.publisher.as_mut() {
                        if props.maximum_qos.is_some_and(|q| q < pub_qos) {
                            return Err(format!(
                                "the broker's Maximum QoS is {}, below the publish QoS {pub_qos}",
                                props.maximum_qos.unwrap_or(0)
                            ));
                        }
                        if let Some(m) = props.receive_maximum {
                            p.server_receive_maximum = m as usize;
                            let min = &mut self.result.server_receive_maximum;
                            *min = Some(min.map_or(m, |x| x.min(m)));
                        }
                    }
                    if let Some(s) = c.subscriber.as_ref() {
                        mqtt::subscribe(&mut c.wbuf, protocol, 1, &s.filter, sub_qos);
                        c.state = State::AwaitSubAck;
                    } else if let Some(s) = c.storm.as_ref() {
                        if session_present && !s.message {
                            became_ready = true;
                        } else if session_present {
                            // A resumed session still has its subscription.
                            storm_publish(&mut c.wbuf, protocol, s);
                            c.state = State::AwaitStorm;
                        } else {
                            mqtt::subscribe(&mut c.wbuf, protocol, 1, &s.topic, 1);
                            c.state = State::AwaitSubAck;
                        }
                    } else {
                        became_ready = true;
                    }
                }
                Incoming::SubAck { pid, codes } => {
                    if c.state != State::AwaitSubAck || pid != 1 || codes.len() != 1 {
                        return Err("unexpected SUBACK".into());
                    }
                    if codes[0] == 0x80 {
                        return Err("SUBACK refused the subscription".into());
                    }
                    if codes[0] > 0x80 {
                        return Err(format!(
                            "SUBACK refused the subscription with reason 0x{:02x} ({})",
                            codes[0],
                            mqtt::reason_name(codes[0])
                        ));
                    }
                    if codes[0] > 2 {
                        return Err(format!("SUBACK return code {}", codes[0]));
                    }
                    if let Some(s) = c.storm.as_ref() {
                        if !s.message {
                            became_ready = true;
                            continue;
                        }
                        storm_publish(&mut c.wbuf, protocol, s);
                        c.state = State::AwaitStorm;
                        continue;
                    }
                    let s = c.subscriber.as_mut().expect("subscriber");
                    s.granted = codes[0];
                    self.result.min_granted = self.result.min_granted.min(codes[0]);
                    became_ready = true;
                }
                Incoming::Publish {
                    qos, pid, payload, ..
                } => {
                    match qos {
                        1 => mqtt::ack(&mut c.wbuf, mqtt::PUBACK, pid),
                        2 => mqtt::ack(&mut c.wbuf, mqtt::PUBREC, pid),
                        _ => {}
                    }
                    if let Some(s) = c.storm.as_mut() {
                        // Its own message (a resumed session may get it more than
                        // once, which the storm tolerates).
                        if c.state == State::AwaitStorm && !s.received {
                            s.received = true;
                            became_ready |= s.acked;
                        }
                        continue;
                    }
                    self.d_delivered += 1;
                    let Some(s) = c.subscriber.as_mut() else {
                        self.result.misrouted += 1;
                        continue;
                    };
                    let Some((publisher, seq, sent_ns)) = track::decode_header(payload) else {
                        self.result.misrouted += 1;
                        continue;
                    };
                    let Some(stream) = publisher
                        .checked_sub(s.first_publisher)
                        .and_then(|k| s.streams.get_mut(k as usize))
                    else {
                        self.result.misrouted += 1;
                        continue;
                    };
                    match stream.arrive(seq) {
                        Arrival::Duplicate => {}
                        arrival => {
                            let skipped = match arrival {
                                // A shared group's member: the others got those.
                                Arrival::Ahead { .. } if self.shared.opts.shared_group => 0,
                                Arrival::Ahead { skipped } => skipped,
                                _ => 0,
                            };
                            self.settles.add(publisher, 1 + skipped);
                            if now_ns >= m_start && now_ns < m_end {
                                let lat = now_ns.saturating_sub(sent_ns).max(1);
                                let _ = self.latency.record(lat.min(100_000_000_000));
                            }
                        }
                    }
                }
                Incoming::PubAck(pid, reason) | Incoming::PubComp(pid, reason) => {
                    if reason >= 0x80 {
                        return Err(format!(
                            "publish {pid} refused with reason 0x{reason:02x} ({})",
                            mqtt::reason_name(reason)
                        ));
                    }
                    if let Some(s) = c.storm.as_mut() {
                        if c.state != State::AwaitStorm || pid != STORM_PID || s.acked {
                            return Err(format!("unexpected acknowledgement {pid}"));
                        }
                        s.acked = true;
                        became_ready |= s.received;
                        continue;
                    }
                    let Some(p) = c.publisher.as_mut() else {
                        return Err("acknowledgement sent to a client that does not publish".into());
                    };
                    if !p.release(pid) {
                        return Err(format!("acknowledgement for packet id {pid} not in flight"));
                    }
                    self.d_unacked -= 1;
                }
                Incoming::PubRec(pid, reason) => {
                    if reason >= 0x80 {
                        return Err(format!(
                            "publish {pid} refused by PUBREC with reason 0x{reason:02x} ({})",
                            mqtt::reason_name(reason)
                        ));
                    }
                    mqtt::ack(&mut c.wbuf, mqtt::PUBREL, pid);
                }
                Incoming::PubRel(pid, reason) => {
                    if reason >= 0x80 {
                        return Err(format!(
                            "PUBREL {pid} with reason 0x{reason:02x} ({})",
                            mqtt::reason_name(reason)
                        ));
                    }
                    mqtt::ack(&mut c.wbuf, mqtt::PUBCOMP, pid);
                }
                Incoming::Disconnect { reason } => {
                    return Err(format!(
                        "DISCONNECT from the broker with reason 0x{reason:02x} ({})",
                        mqtt::reason_name(reason)
                    ));
                }
                Incoming::UnsubAck(_) | Incoming::PingResp => {}
            }
        }
        if at > 0 {
            c.rbuf.copy_within(at..c.rlen, 0);
            c.rlen -= at;
        }
        let dirty = c.wbuf.len() > c.wpos;
        if dirty {
            self.mark_dirty(i);
        }
        if became_ready {
            self.became_ready(i);
        }
        Ok(())
    }

    // ---- writing ----

    fn mark_dirty(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(i);
        }
    }

    fn flush_dirty(&mut self, now: Instant) {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            self.conns[i].dirty = false;
            if self.conns[i].stream.is_some() {
                self.flush(i, now);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn flush(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        if c.state == State::Connecting {
            return;
        }
        if c.tls.is_some() {
            return self.flush_tls(i, now);
        }
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        while c.wpos < c.wbuf.len() {
            match stream.write(&c.wbuf[c.wpos..]) {
                Ok(0) => return self.connection_lost(i, "write returned 0".into()),
                Ok(n) => {
                    c.wpos += n;
                    c.last_write = now;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.connection_lost(i, e.to_string()),
            }
        }
        if c.wpos == c.wbuf.len() {
            c.wbuf.clear();
            c.wpos = 0;
        } else if c.wpos > (64 << 10) {
            c.wbuf.drain(..c.wpos);
            c.wpos = 0;
        }
    }

    // ---- TLS ----

    /// `read` over TLS: each socket read is handed to rustls whole, and the MQTT
    /// bytes it decrypts go through `process` as on the plain path.
    fn read_tls(&mut self, i: usize, now: Instant) {
        let mut scratch = std::mem::take(&mut self.tls_scratch);
        self.read_tls_with(i, now, &mut scratch);
        self.tls_scratch = scratch;
    }

    fn read_tls_with(&mut self, i: usize, now: Instant, scratch: &mut [u8]) {
        loop {
            let Some(stream) = self.conns[i].stream.as_mut() else {
                return;
            };
            let n = match stream.read(scratch) {
                Ok(0) => return self.connection_lost(i, "closed by the broker".into()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return self.connection_lost(i, e.to_string()),
            };
            let mut input = &scratch[..n];
            while !input.is_empty() {
                let c = &mut self.conns[i];
                let (Some(tls), Some(stream)) = (c.tls.as_mut(), c.stream.as_mut()) else {
                    return;
                };
                if let Err(e) = tls.read_tls(&mut input) {
                    return self.connection_lost(i, format!("TLS: {e}"));
                }
                let io = match tls.process_new_packets() {
                    Ok(io) => io,
                    Err(e) => {
                        // Best effort: the alert rustls queued tells the broker why.
                        let _ = tls.write_tls(stream);
                        return self.connection_lost(i, format!("TLS: {e}"));
                    }
                };
                if self.result.tls_session.is_none() && !tls.is_handshaking() {
                    self.result.tls_session = Some((
                        tls.protocol_version()
                            .map_or("?".into(), |v| format!("{v:?}")),
                        tls.negotiated_cipher_suite()
                            .map_or("?".into(), |s| format!("{:?}", s.suite())),
                    ));
                }
                if io.plaintext_bytes_to_read() > 0 && !self.take_plaintext(i, now) {
                    return;
                }
                if io.peer_has_closed() {
                    return self.connection_lost(i, "closed by the broker (TLS)".into());
                }
            }
        }
        // Handshake messages, alerts or key updates rustls wants to send.
        if self.conns[i].tls.as_ref().is_some_and(|t| t.wants_write()) {
            self.mark_dirty(i);
        }
    }

    /// Moves what rustls decrypted into the read buffer and processes it; false when
    /// the connection is gone.
    fn take_plaintext(&mut self, i: usize, now: Instant) -> bool {
        loop {
            let c = &mut self.conns[i];
            let Some(tls) = c.tls.as_mut() else {
                return false;
            };
            if c.rlen == c.rbuf.len() {
                let new_len = (c.rbuf.len() * 2).min(MAX_PACKET + 8);
                if new_len == c.rbuf.len() {
                    self.connection_lost(i, "oversized packet".into());
                    return false;
                }
                c.rbuf.resize(new_len, 0);
            }
            let rlen = c.rlen;
            match tls.reader().read(&mut c.rbuf[rlen..]) {
                Ok(0) => {
                    self.connection_lost(i, "closed by the broker (TLS close_notify)".into());
                    return false;
                }
                Ok(n) => {
                    c.rlen += n;
                    if let Err(e) = self.process(i, now) {
                        self.note_error(format!("{}: {e}", self.conns[i].spec.client_id));
                        self.shared.protocol_errors.fetch_add(1, Relaxed);
                        self.connection_lost(i, e);
                        return false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) => {
                    self.connection_lost(i, format!("TLS: {e}"));
                    return false;
                }
            }
        }
    }

    /// `flush` over TLS: the write buffer goes into rustls (encrypted as it is
    /// taken, up to rustls's buffer limit), and rustls's records go to the socket.
    fn flush_tls(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        let (Some(tls), Some(stream)) = (c.tls.as_mut(), c.stream.as_mut()) else {
            return;
        };
        let failed = loop {
            let mut took = false;
            if c.wpos < c.wbuf.len() {
                match tls.writer().write(&c.wbuf[c.wpos..]) {
                    Ok(n) => {
                        c.wpos += n;
                        took = n > 0;
                    }
                    Err(e) => break Some(format!("TLS: {e}")),
                }
            }
            if !tls.wants_write() {
                // Nothing to send: done, or (during the handshake) CONNECT is
                // waiting inside rustls.
                if took {
                    continue;
                }
                break None;
            }
            match tls.write_tls(stream) {
                Ok(0) => break Some("write returned 0".into()),
                Ok(_) => c.last_write = now,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Some(e.to_string()),
            }
        };
        if let Some(why) = failed {
            return self.connection_lost(i, why);
        }
        if c.wpos == c.wbuf.len() {
            c.wbuf.clear();
            c.wpos = 0;
        } else if c.wpos > (64 << 10) {
            c.wbuf.drain(..c.wpos);
            c.wpos = 0;
        }
    }

    fn keep_alive(&mut self, now: Instant) {
        let ka = self.shared.opts.keep_alive;
        if ka == 0 {
            return;
        }
        let half = Duration::from_secs(ka as u64) / 2;
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if c.state == State::Ready && now.duration_since(c.last_write) >= half {
                mqtt::pingreq(&mut c.wbuf);
                self.mark_dirty(i);
            }
        }
    }

    // ---- publishing ----

    fn any_publisher_can_send(&self) -> bool {
        self.publishers.iter().any(|&i| self.sendable(i) > 0)
    }

    /// Messages publisher connection `i` may write now: none unless it is ready and
    /// its socket keeps up; at most its free packet ids (QoS 1/2), its room in the
    /// window and one batch.
    fn sendable(&self, i: usize) -> u64 {
        let c = &self.conns[i];
        let Some(p) = c.publisher.as_ref() else {
            return 0;
        };
        if c.state != State::Ready || c.wbuf.len() - c.wpos >= WRITE_HIGH_WATER {
            return 0;
        }
        let opts = &self.shared.opts;
        let inflight = if opts.pub_qos > 0 {
            opts.pub_inflight
                .min(p.server_receive_maximum)
                .saturating_sub(p.inflight_count) as u64
        } else {
            u64::MAX
        };
        inflight
            .min(self.shared.window.publisher_room(p.index, p.seq))
            .min(PUBLISH_BATCH)
    }

    fn publish_step(&mut self, now: Instant) {
        if self.publishers.is_empty() {
            return;
        }
        // This thread's own deliveries count before it claims room.
        self.flush_settles();
        let n = self.publishers.len();
        let mut wants = std::mem::take(&mut self.wants);
        wants.clear();
        let want = match self.shared.opts.pacing {
            Pacing::Window(_) => {
                // Each publisher asks for what it can send, beginning with a
                // different one each turn so none is always last to get room.
                for k in 0..n {
                    let i = self.publishers[(self.rr + k) % n];
                    let w = self.sendable(i);
                    if w > 0 {
                        wants.push((i, w));
                    }
                }
                wants.iter().map(|&(_, w)| w).sum()
            }
            Pacing::Rate(_) => {
                let elapsed = now.saturating_duration_since(self.shared.start_instant());
                let due = (elapsed.as_secs_f64() * self.rate_share) as u64;
                let budget = due.saturating_sub(self.rate_sent);
                let share = self.rate_share;
                // Message k is due at k / share seconds after the start; those due
                // over a millisecond ago are late.
                let late = ((elapsed.as_secs_f64() - 0.001) * share).max(0.0) as u64;
                self.result.late_sends += late.saturating_sub(self.rate_sent).min(budget);
                let next_due = (self.rate_sent + budget + 1) as f64 / share;
                let wait = Duration::from_secs_f64((next_due - elapsed.as_secs_f64()).max(0.0));
                if let Some(t) = &self.timer {
                    t.arm(wait.max(MIN_TICK));
                }
                if budget > 0 {
                    let per_pub = budget.div_ceil(n as u64).clamp(1, PUBLISH_BATCH);
                    for k in 0..n {
                        let i = self.publishers[(self.rr + k) % n];
                        let w = self.sendable(i).min(per_pub);
                        if w > 0 {
                            wants.push((i, w));
                        }
                    }
                }
                budget.min(wants.iter().map(|&(_, w)| w).sum())
            }
        };
        // Reserved before anything is written, so the window holds whatever the
        // other threads do meanwhile; what is not written goes back at once.
        let granted = self.shared.window.claim(want);
        let mut budget = granted;
        if budget > 0 {
            let now_ns = self.shared.clock_ns(now);
            let opts = &self.shared.opts;
            let (qos, payload, protocol) = (opts.pub_qos, opts.payload, opts.protocol);
            for &(i, w) in &wants {
                if budget == 0 {
                    break;
                }
                let count = w.min(budget);
                let c = &mut self.conns[i];
                let p = c.publisher.as_mut().expect("publisher");
                for _ in 0..count {
                    let pid = if qos > 0 { p.take_pid() } else { 0 };
                    let head = track::encode_header(p.index, p.seq, now_ns);
                    p.seq += 1;
                    mqtt::publish(&mut c.wbuf, protocol, &p.topic, qos, pid, &head, payload);
                }
                budget -= count;
                self.mark_dirty(i);
            }
        }
        self.shared.window.give_back(budget);
        let sent_total = granted - budget;
        self.wants = wants;
        self.rr = (self.rr + 1) % n;
        self.rate_sent += sent_total;
        if self.shared.opts.pub_qos > 0 {
            self.d_unacked += sent_total as i64;
        }
    }

    // ---- bookkeeping ----

    /// Adds this thread's settled deliveries to the window's counts.
    fn flush_settles(&mut self) {
        self.settles.flush(&self.shared.window);
    }

    fn report_progress(&mut self) {
        self.flush_settles();
        let s = &self.shared;
        if self.d_delivered > 0 {
            s.delivered
                .fetch_add(std::mem::take(&mut self.d_delivered), Relaxed);
        }
        if self.d_unacked != 0 {
            s.unacked
                .fetch_add(std::mem::take(&mut self.d_unacked), Relaxed);
        }
        if !self.reported_ready && self.ready + self.failed == self.conns.len() {
            self.reported_ready = true;
            s.ready_workers.fetch_add(1, Release);
        }
    }

    fn finish(mut self) -> WorkerResult {
        // Say goodbye properly, best effort, then close.
        for i in 0..self.conns.len() {
            if self.conns[i].state == State::Ready {
                let c = &mut self.conns[i];
                mqtt::disconnect(&mut c.wbuf);
                if let Some(tls) = c.tls.as_mut() {
                    tls.send_close_notify();
                }
                self.flush(i, Instant::now());
            }
            self.drop_socket(i);
        }
        self.report_progress();
        let mut r = self.result;
        r.latency = self.latency;
        r.connected = self.ready as u64;
        for c in self.conns {
            if let Some(p) = c.publisher {
                r.sent.push((p.index, p.seq));
                r.unacked_at_end += p.inflight_count as u64;
            }
            if let Some(s) = c.subscriber {
                r.streams.push((s.index, s.first_publisher, s.streams));
            }
        }
        r
    }
}

/// A non-blocking connect from a chosen source address (to go past the ~28 k
/// ephemeral ports one source address has towards one destination).
fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let (IpAddr::V4(src), SocketAddr::V4(dst)) = (source, to) else {
        return TcpStream::connect(to);
    };
    // SAFETY: plain socket syscalls on a descriptor this function owns until it is
    // wrapped in a TcpStream (or closed on error).
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fail = |fd| {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            Err(e)
        };
        let one: libc::c_int = 1;
        // Let connect() pick the port, per destination, rather than bind().
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let local = sin(src, 0);
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
            return fail(fd);
        }
        let remote = sin(*dst.ip(), dst.port());
        if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                libc::close(fd);
                return Err(e);
            }
        }
        Ok(TcpStream::from_std(std::net::TcpStream::from_raw_fd(fd)))
    }
}

/// A non-blocking timerfd registered with the worker's poll.
struct Timer {
    fd: std::os::fd::OwnedFd,
}

impl Timer {
    fn new(poll: &Poll) -> std::io::Result<Timer> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: timerfd_create returns a new descriptor (or -1), owned from here on.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        poll.registry().register(
            &mut mio::unix::SourceFd(&fd.as_raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
        Ok(Timer { fd })
    }

    /// Fires once, `after` from now.
    fn arm(&self, after: Duration) {
        use std::os::fd::AsRawFd;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: the descriptor is a timerfd we own; spec is a valid itimerspec.
        unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    }

    fn clear(&self) {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into buf from our own descriptor.
        unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }
}

/// A storm client's one QoS 1 message, to its own topic.
fn storm_publish(out: &mut Vec<u8>, protocol: mqtt::Protocol, s: &Storm) {
    mqtt::publish(out, protocol, &s.topic, 1, STORM_PID, b"storm", 5);
}

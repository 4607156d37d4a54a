//! One run of a scenario: set up every client, pace the publishers through warm-up
//! and measurement, drain, and turn what the workers saw into a report.

use crate::mqtt::Protocol;
use crate::plan::{self, Scenario};
use crate::procfs;
use crate::window::Window;
use crate::worker::{Worker, WorkerResult};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How publishers are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// A fixed total rate, in messages per second, shared by all publishers.
    Rate(f64),
    /// Closed loop: outstanding deliveries (published × fan-out − received) never
    /// pass this many, at any instant and whatever the number of threads; each
    /// publisher has its share of them (see `window`).
    Window(u64),
}

/// Everything a run needs, already validated.
#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: Scenario,
    pub broker: SocketAddr,
    /// MQTT 3.1.1 (the default) or 5.0, for every client.
    pub protocol: Protocol,
    pub clients: usize,
    pub publishers: Option<usize>,
    pub subscribers: Option<usize>,
    pub pub_qos: u8,
    pub sub_qos: u8,
    pub payload: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// `None`: a window of 100 deliveries per client on the busier side.
    pub pacing: Option<Pacing>,
    pub broker_pid: Option<u32>,
    pub label: Option<String>,
    pub broker_name: Option<String>,
    pub topic_prefix: Option<String>,
    /// Client ids are this plus p/s/c and an index (default: lt<random tag>-).
    pub client_id_prefix: Option<String>,
    pub threads: usize,
    pub keep_alive: u16,
    /// Source addresses to spread connections over (127.0.0.1, .2, …); 0 = automatic
    /// (one per 2000 connections to a loopback broker).
    pub source_ips: usize,
    pub connect_concurrency: usize,
    /// QoS 1/2 publishes awaiting acknowledgement per publisher (default: 1024 at
    /// QoS 1; 20 at QoS 2, since Mosquitto 2.0 completes the QoS 2 handshake for
    /// publishes beyond its max_inflight_messages of 20 but drops the messages).
    pub pub_inflight: Option<usize>,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub progress: bool,
    /// Connect over TLS (`None`: plain TCP).
    pub tls: Option<crate::tls::TlsOptions>,
    /// Credentials every client gives in CONNECT.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Subscribers connect with clean session 0.
    pub persistent_subscribers: bool,
    /// Conns: each connection subscribes to its own topic (conns/CLIENT_ID, QoS 1).
    pub conns_subscribe: bool,
    /// Fanout: subscribers spread round-robin over these (publishers stay on
    /// `broker`); empty = every client on `broker`.
    pub sub_brokers: Vec<SocketAddr>,
}

impl Options {
    /// Defaults for `scenario` against `broker`, as the command line has them.
    pub fn new(scenario: Scenario, broker: SocketAddr, clients: usize) -> Options {
        Options {
            scenario,
            broker,
            protocol: Protocol::V311,
            clients,
            publishers: None,
            subscribers: None,
            pub_qos: 0,
            sub_qos: 0,
            payload: 64,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            pacing: None,
            broker_pid: None,
            label: None,
            broker_name: None,
            topic_prefix: None,
            client_id_prefix: None,
            threads: default_threads(),
            keep_alive: 60,
            source_ips: 0,
            // A storm: every client at once.
            connect_concurrency: if scenario == Scenario::Storm {
                clients
            } else {
                16
            },
            pub_inflight: None,
            connect_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            progress: false,
            tls: None,
            username: None,
            password: None,
            persistent_subscribers: false,
            conns_subscribe: false,
            sub_brokers: Vec::new(),
        }
    }
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// What the workers see of the options, with the plan's figures resolved.
#[derive(Debug)]
pub struct WorkerOptions {
    pub broker: SocketAddr,
    pub protocol: Protocol,
    /// 5.0: the Receive Maximum every client announces, so that the broker's
    /// in-flight quota toward a subscriber never throttles it below the window.
    pub receive_maximum: u16,
    pub pacing: Pacing,
    pub pub_qos: u8,
    pub sub_qos: u8,
    pub payload: usize,
    pub keep_alive: u16,
    pub connect_concurrency: usize,
    pub pub_inflight: usize,
    /// Idle-connection runs count failed connects instead of giving up.
    pub tolerate_connect_failures: bool,
    pub tls: Option<crate::tls::TlsClient>,
    pub username: Option<Vec<u8>>,
    pub password: Option<Vec<u8>>,
    /// Subscribers connect with clean session 0.
    pub persistent_subscribers: bool,
    /// Subscribers are members of one shared group: each sees only some of every
    /// publisher's messages, so a gap in one member's sequence is not a loss.
    pub shared_group: bool,
    /// Subscribers spread round-robin over these (empty: all on `broker`).
    pub sub_brokers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting and subscribing.
    Setup = 0,
    /// Publishing (warm-up, then measurement).
    Running = 1,
    /// No new publishes; waiting for what is in flight.
    Draining = 2,
    /// Disconnect and return results.
    Done = 3,
}

/// State shared by the workers and the coordinating thread.
pub struct Shared {
    pub opts: WorkerOptions,
    pub fanout: u64,
    pub plan_publishers: usize,
    /// Messages published, deliveries settled, and the bound between them.
    pub window: Window,
    base: Instant,
    phase: AtomicU8,
    start_ns: AtomicU64,
    measure_start_ns: AtomicU64,
    measure_end_ns: AtomicU64,
    pub delivered: AtomicU64,
    pub unacked: AtomicI64,
    pub connected: AtomicU64,
    pub ready_workers: AtomicUsize,
    pub protocol_errors: AtomicU64,
    fatal: Mutex<Option<String>>,
}

impl Shared {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Acquire) {
            0 => Phase::Setup,
            1 => Phase::Running,
            2 => Phase::Draining,
            _ => Phase::Done,
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Release);
    }

    /// Nanoseconds since the run's clock base; what payload timestamps hold.
    pub fn clock_ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// When publishing started.
    pub fn start_instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.start_ns.load(Relaxed))
    }

    /// The measurement window, in clock nanoseconds.
    pub fn window_ns(&self) -> (u64, u64) {
        (
            self.measure_start_ns.load(Relaxed),
            self.measure_end_ns.load(Relaxed),
        )
    }

    pub fn set_fatal(&self, msg: String) {
        let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(msg);
        }
    }

    fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

// ---- the report ----

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum PacingReport {
    Rate { rate: f64 },
    Window { window: u64 },
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadtestCpu {
    pub threads: usize,
    pub cpu_s: f64,
    /// CPU seconds per second of the measured window: 1.0 is one core busy.
    pub cpu_cores: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerProcess {
    pub pid: u32,
    pub cpu_s: f64,
    /// Broker CPU microseconds per delivered message (null for idle connections).
    pub cpu_us_per_msg: Option<f64>,
    pub cpu_cores: f64,
    pub rss_bytes: u64,
    pub rss_start_bytes: u64,
}

/// Messages each publisher sent over the whole run: how evenly the publishers
/// shared the window (or the rate).
#[derive(Debug, Clone, Serialize)]
pub struct PerPublisherReport {
    pub min: u64,
    pub mean: f64,
    pub max: u64,
}

/// The TLS a run used: what it asked for and what the broker negotiated.
#[derive(Debug, Clone, Serialize)]
pub struct TlsReport {
    pub server_name: String,
    pub cafile: String,
    /// Of the first handshake that completed (`None` if none did).
    pub version: Option<String>,
    pub cipher_suite: Option<String>,
    /// Each connection makes a full handshake (no session resumption).
    pub resumption: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnsReport {
    pub target: usize,
    pub connected: u64,
    pub failed: u64,
    /// From the first connect attempt to the last CONNACK, across all threads.
    pub connect_s: f64,
    /// `connected / connect_s`.
    pub connect_per_s: f64,
    pub rss_per_conn_bytes: Option<f64>,
    /// CPU per connection made, over the whole set-up (the broker's with
    /// `--broker-pid`): what a connect costs each side, handshake included.
    pub broker_cpu_us_per_connect: Option<f64>,
    pub loadtest_cpu_us_per_connect: f64,
}

/// The result of one run: printed as a table and written as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub version: u32,
    pub scenario: &'static str,
    pub label: String,
    /// "3.1.1" or "5.0".
    pub protocol: &'static str,
    /// The CONNECT protocol level: 4 or 5.
    pub protocol_level: u8,
    pub broker_name: String,
    pub broker: String,
    /// Fanout with `--sub-brokers`: where the subscribers were (round-robin).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sub_brokers: Vec<String>,
    /// "tcp" or "tls".
    pub transport: &'static str,
    pub tls: Option<TlsReport>,
    /// The username clients gave in CONNECT (all the same; `None`: none).
    pub username: Option<String>,
    /// Subscribers connected with clean session 0.
    pub persistent_subscribers: bool,
    pub clients: usize,
    /// Connection handshakes in progress at once, per load-generator thread.
    pub connect_concurrency: usize,
    /// Conns: each connection holds one subscription.
    pub conns_subscribe: bool,
    pub publishers: usize,
    pub subscribers: usize,
    pub fanout: u64,
    pub pub_qos: u8,
    pub sub_qos: u8,
    /// The lowest QoS the broker granted a subscriber.
    pub granted_qos: Option<u8>,
    /// 5.0: the lowest Receive Maximum the broker announced to a publisher, which
    /// bounds its QoS 1/2 publishes in flight (`None`: none announced, or 3.1.1).
    pub server_receive_maximum: Option<u16>,
    /// min(publish QoS, granted QoS): what delivery guarantee the run checks.
    pub effective_qos: u8,
    pub payload: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub pacing: PacingReport,
    /// Messages published and delivered inside the measured window.
    pub published: u64,
    pub delivered: u64,
    pub published_per_s: f64,
    pub delivered_per_s: f64,
    /// Publish to delivery, in microseconds, for deliveries inside the window.
    pub latency_us: Option<LatencyReport>,
    pub published_total: u64,
    pub delivered_total: u64,
    pub expected_total: u64,
    /// `None` without publishers.
    pub per_publisher: Option<PerPublisherReport>,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub misrouted: u64,
    pub disconnects: u64,
    pub connect_failures: u64,
    pub protocol_errors: u64,
    pub unacked_at_end: u64,
    /// Rate pacing: messages sent more than 1 ms behind their schedule.
    pub late_sends: u64,
    pub loadtest: LoadtestCpu,
    pub broker_process: Option<BrokerProcess>,
    pub conns: Option<ConnsReport>,
    pub ok: bool,
    pub failures: Vec<String>,
    pub errors: Vec<String>,
}

// ---- running ----

struct Snapshot {
    at: Instant,
    published: u64,
    delivered: u64,
    own_cpu: Duration,
    broker_cpu: Option<Duration>,
}

fn snapshot(shared: &Shared, pid: Option<u32>) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        published: shared.window.published(),
        delivered: shared.delivered.load(Relaxed),
        own_cpu: procfs::own_cpu(),
        broker_cpu: pid.and_then(procfs::process_cpu),
    }
}

/// A short random-enough tag so concurrent or repeated runs never share topics or
/// client ids.
fn run_tag() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let x = (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32);
    let x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{:06x}", x >> 40)
}

fn source_ips(opts: &Options, connections: usize) -> Vec<IpAddr> {
    let IpAddr::V4(ip) = opts.broker.ip() else {
        return Vec::new();
    };
    if !ip.is_loopback() {
        return Vec::new();
    }
    // The kernel's search for a free ephemeral port slows down as one source
    // address's ports fill up (at 19 k connections from one address, connecting
    // ran five times slower here), so keep each address to about 2000.
    let n = match opts.source_ips {
        0 if connections > 2_000 => connections.div_ceil(2_000),
        0 => return Vec::new(),
        n => n,
    };
    (1..=n.min(250) as u8)
        .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)))
        .collect()
}

/// Runs one scenario. `Err` is a set-up failure (nothing was measured); a run that
/// measured something returns its report, whose `ok` says whether it passed.
pub fn run(opts: &Options) -> Result<RunReport, String> {
    if opts.pub_qos > 2 || opts.sub_qos > 2 {
        return Err("QoS must be 0, 1 or 2".into());
    }
    if opts.payload < crate::track::HEADER_LEN {
        return Err(format!(
            "--payload must be at least {} bytes (publisher, sequence number, timestamp)",
            crate::track::HEADER_LEN
        ));
    }
    if opts.scenario == Scenario::Latency && !matches!(opts.pacing, Some(Pacing::Rate(_))) {
        return Err("latency needs --rate".into());
    }
    if let Some(Pacing::Rate(r)) = opts.pacing {
        if !(r > 0.0 && r.is_finite()) {
            return Err("--rate must be positive".into());
        }
    }
    let pub_inflight = opts
        .pub_inflight
        .unwrap_or(if opts.pub_qos == 2 { 20 } else { 1024 });
    if pub_inflight == 0 || pub_inflight > 65_535 {
        return Err("--pub-inflight must be 1..=65535".into());
    }
    if !opts.sub_brokers.is_empty() && opts.scenario != Scenario::Fanout {
        return Err("--sub-brokers applies to the fanout scenario only".into());
    }
    let tag = run_tag();
    let topic_prefix = opts
        .topic_prefix
        .clone()
        .unwrap_or_else(|| format!("shardmq-loadtest/{tag}"));
    let mut plan = plan::build(
        opts.scenario,
        opts.clients,
        opts.publishers,
        opts.subscribers,
        &topic_prefix,
        &opts
            .client_id_prefix
            .clone()
            .unwrap_or_else(|| format!("lt{tag}-")),
    )?;
    if opts.conns_subscribe {
        // An idle device with its command topic: subscribed, nothing more.
        for c in &mut plan.clients {
            if matches!(c.role, plan::Role::Idle) {
                c.role = plan::Role::Storm {
                    topic: format!("conns/{}", c.client_id),
                    message: false,
                };
            }
        }
    }
    let nofile = procfs::raise_nofile();
    if plan.clients.len() as u64 + 64 > nofile {
        return Err(format!(
            "{} connections need more open files than the limit of {nofile} (raise `ulimit -n`)",
            plan.clients.len()
        ));
    }
    let pacing = opts.pacing.unwrap_or(Pacing::Window(
        100 * plan.publishers.max(plan.subscribers).max(1) as u64,
    ));
    if let Pacing::Window(w) = pacing {
        if w < plan.fanout {
            return Err(format!(
                "--window must hold one message's deliveries: at least the fan-out, {}",
                plan.fanout
            ));
        }
    }
    let tls = opts
        .tls
        .as_ref()
        .map(crate::tls::TlsClient::new)
        .transpose()?;
    if opts.password.is_some() && opts.username.is_none() {
        return Err("--password needs --username".into());
    }
    let threads = opts.threads.max(1).min(plan.clients.len());
    let dealt = plan::deal(plan.clients.clone(), threads);
    let shared = Arc::new(Shared {
        opts: WorkerOptions {
            broker: opts.broker,
            protocol: opts.protocol,
            receive_maximum: match pacing {
                Pacing::Window(w) => w.clamp(1, u16::MAX as u64) as u16,
                Pacing::Rate(_) => u16::MAX,
            },
            pacing,
            pub_qos: opts.pub_qos,
            sub_qos: opts.sub_qos,
            payload: opts.payload,
            keep_alive: opts.keep_alive,
            connect_concurrency: opts.connect_concurrency.max(1),
            pub_inflight,
            tolerate_connect_failures: opts.scenario.holds_connections(),
            tls,
            username: opts.username.as_ref().map(|u| u.clone().into_bytes()),
            password: opts.password.as_ref().map(|p| p.clone().into_bytes()),
            persistent_subscribers: opts.persistent_subscribers,
            shared_group: opts.scenario == Scenario::Shared,
            sub_brokers: opts.sub_brokers.clone(),
        },
        fanout: plan.fanout,
        plan_publishers: plan.publishers,
        window: Window::new(
            match pacing {
                Pacing::Window(w) => Some(w),
                Pacing::Rate(_) => None,
            },
            plan.fanout,
            plan.publishers,
        ),
        base: Instant::now(),
        phase: AtomicU8::new(Phase::Setup as u8),
        start_ns: AtomicU64::new(0),
        measure_start_ns: AtomicU64::new(u64::MAX),
        measure_end_ns: AtomicU64::new(u64::MAX),
        delivered: AtomicU64::new(0),
        unacked: AtomicI64::new(0),
        connected: AtomicU64::new(0),
        ready_workers: AtomicUsize::new(0),
        protocol_errors: AtomicU64::new(0),
        fatal: Mutex::new(None),
    });
    let pid = opts.broker_pid;
    if let Some(p) = pid {
        if procfs::process_cpu(p).is_none() {
            return Err(format!("--broker-pid {p}: no such process in /proc"));
        }
    }
    let rss_start = pid.and_then(procfs::process_rss);
    let ips = source_ips(opts, plan.clients.len());
    let progress = Progress::new(opts.progress);

    // Set-up: connect (and subscribe) everything.
    let connect_start = Instant::now();
    let setup_cpu = (procfs::own_cpu(), pid.and_then(procfs::process_cpu));
    let handles: Vec<_> = dealt
        .into_iter()
        .enumerate()
        .map(|(k, specs)| {
            let shared = shared.clone();
            let ips = ips.clone();
            std::thread::Builder::new()
                .name(format!("loadtest-{k}"))
                .spawn(move || Worker::new(specs, shared, ips).run())
                .expect("spawn worker thread")
        })
        .collect();
    let mut setup_error = None;
    while shared.ready_workers.load(Acquire) < threads {
        if let Some(f) = shared.fatal() {
            setup_error = Some(f);
            break;
        }
        if connect_start.elapsed() > opts.connect_timeout {
            setup_error = Some(format!(
                "only {} of {} clients ready after {:?}",
                shared.connected.load(Relaxed),
                plan.clients.len(),
                opts.connect_timeout
            ));
            break;
        }
        progress.line(format_args!(
            "connecting {}/{}",
            shared.connected.load(Relaxed),
            plan.clients.len()
        ));
        std::thread::sleep(Duration::from_millis(20));
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    let setup_cpu = (
        procfs::own_cpu().saturating_sub(setup_cpu.0),
        pid.and_then(procfs::process_cpu)
            .zip(setup_cpu.1)
            .map(|(b, a)| b.saturating_sub(a)),
    );
    if setup_error.is_none() && !opts.scenario.holds_connections() {
        // Every worker is done setting up, but a failure may be why.
        setup_error = shared.fatal();
    }
    if let Some(e) = setup_error {
        shared.set_phase(Phase::Done);
        for h in handles {
            let _ = h.join();
        }
        progress.done();
        return Err(e);
    }

    let mut failures = Vec::new();
    let (first, last) = if opts.scenario.holds_connections() {
        // Hold the connections; measure what they cost the broker.
        let first = snapshot(&shared, pid);
        let end = first.at + opts.duration;
        while Instant::now() < end {
            progress.line(format_args!(
                "holding {} connections, {:.0} s left",
                shared.connected.load(Relaxed),
                (end - Instant::now()).as_secs_f64()
            ));
            std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
        }
        (first, snapshot(&shared, pid))
    } else {
        let start = Instant::now();
        let m_start = start + opts.warmup;
        let m_end = m_start + opts.duration;
        shared.start_ns.store(shared.clock_ns(start), Relaxed);
        shared
            .measure_start_ns
            .store(shared.clock_ns(m_start), Relaxed);
        shared.measure_end_ns.store(shared.clock_ns(m_end), Relaxed);
        shared.set_phase(Phase::Running);
        let mut first = None;
        let mut last_settled = (0, Instant::now());
        let mut prev = snapshot(&shared, None);
        loop {
            let now = Instant::now();
            if first.is_none() && now >= m_start {
                first = Some(snapshot(&shared, pid));
            }
            if now >= m_end {
                break;
            }
            if let Some(f) = shared.fatal() {
                failures.push(f);
                break;
            }
            let settled = shared.window.settled();
            if settled != last_settled.0 {
                last_settled = (settled, now);
            } else if now - last_settled.1 > Duration::from_secs(5) {
                failures.push(format!(
                    "no deliveries for 5 s with {} outstanding",
                    (shared.window.published() * plan.fanout).saturating_sub(settled)
                ));
                break;
            }
            if now - prev.at >= Duration::from_millis(500) {
                let cur = snapshot(&shared, None);
                let dt = (cur.at - prev.at).as_secs_f64();
                progress.line(format_args!(
                    "{} {:5.1}s  pub {:>9.0}/s  recv {:>9.0}/s  outstanding {:>8}  conns {}",
                    if now < m_start { "warm-up" } else { "measure" },
                    (now - start).as_secs_f64(),
                    (cur.published - prev.published) as f64 / dt,
                    (cur.delivered - prev.delivered) as f64 / dt,
                    (cur.published * plan.fanout).saturating_sub(shared.window.settled()),
                    shared.connected.load(Relaxed),
                ));
                prev = cur;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let last = snapshot(&shared, pid);
        let first = first.unwrap_or_else(|| snapshot(&shared, pid));
        // Drain: wait for what is still in flight, or until nothing moves.
        shared.set_phase(Phase::Draining);
        let quiet = if opts.pub_qos.min(opts.sub_qos) == 0 {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(3)
        };
        let drain_start = Instant::now();
        let mut moved = (
            shared.delivered.load(Relaxed),
            shared.unacked.load(Relaxed),
            Instant::now(),
        );
        loop {
            let expected = shared.window.published() * plan.fanout;
            let settled = shared.window.settled();
            let unacked = shared.unacked.load(Relaxed);
            if settled >= expected && unacked <= 0 {
                break;
            }
            let delivered = shared.delivered.load(Relaxed);
            let now = Instant::now();
            if (delivered, unacked) != (moved.0, moved.1) {
                moved = (delivered, unacked, now);
            } else if now - moved.2 > quiet {
                break;
            }
            if now - drain_start > opts.drain_timeout {
                break;
            }
            progress.line(format_args!(
                "draining: {} deliveries outstanding, {} unacknowledged",
                expected.saturating_sub(settled),
                unacked
            ));
            std::thread::sleep(Duration::from_millis(10));
        }
        (first, last)
    };
    // Memory is read before the clients leave.
    let rss_end = pid.and_then(procfs::process_rss);
    shared.set_phase(Phase::Done);
    let results: Vec<WorkerResult> = handles
        .into_iter()
        .map(|h| h.join().map_err(|_| "a worker thread panicked".to_string()))
        .collect::<Result<_, _>>()?;
    progress.done();
    if let Some(f) = shared.fatal() {
        if !failures.contains(&f) {
            failures.push(f);
        }
    }
    Ok(build_report(
        opts,
        &plan,
        pacing,
        threads,
        &shared,
        results,
        Span {
            first,
            last,
            rss_start,
            rss_end,
            connect_s,
            setup_cpu,
        },
        failures,
    ))
}

/// The measured span of a run.
struct Span {
    first: Snapshot,
    last: Snapshot,
    rss_start: Option<u64>,
    rss_end: Option<u64>,
    connect_s: f64,
    /// The generator's and the broker's CPU over the set-up.
    setup_cpu: (Duration, Option<Duration>),
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    opts: &Options,
    plan: &plan::Plan,
    pacing: Pacing,
    threads: usize,
    shared: &Shared,
    results: Vec<WorkerResult>,
    w: Span,
    mut failures: Vec<String>,
) -> RunReport {
    let secs = (w.last.at - w.first.at).as_secs_f64().max(1e-9);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).expect("bounds");
    let mut sent = vec![0u64; plan.publishers];
    let (mut lost, mut dup, mut reorder) = (0, 0, 0);
    let (mut misrouted, mut disconnects, mut connect_failures) = (0, 0, 0);
    let (mut unacked, mut late, mut connected) = (0, 0, 0);
    let mut min_granted = 2u8;
    let mut errors = Vec::new();
    let first_connect = results.iter().filter_map(|r| r.first_connect).min();
    let last_ready = results.iter().filter_map(|r| r.last_ready).max();
    let tls_session = results.iter().find_map(|r| r.tls_session.clone());
    let server_receive_maximum = results
        .iter()
        .filter_map(|r| r.server_receive_maximum)
        .min();
    for r in &results {
        let _ = latency.add(&r.latency);
        for &(p, n) in &r.sent {
            sent[p as usize] = n;
        }
        misrouted += r.misrouted;
        disconnects += r.disconnects;
        connect_failures += r.connect_failures;
        unacked += r.unacked_at_end;
        late += r.late_sends;
        connected += r.connected;
        min_granted = min_granted.min(r.min_granted);
        errors.extend(r.errors.iter().take(20).cloned());
    }
    let mut delivered_total = 0;
    if opts.scenario == Scenario::Shared {
        // One group: a message is lost when no member got it, duplicated when more
        // than one copy reached the group. Order across members is not kept.
        let mut by_publisher: Vec<Vec<&crate::track::Stream>> = vec![Vec::new(); sent.len()];
        for r in &results {
            for (_, first, streams) in &r.streams {
                for (k, s) in streams.iter().enumerate() {
                    if let Some(v) = by_publisher.get_mut(*first as usize + k) {
                        v.push(s);
                    }
                    delivered_total += s.received;
                }
            }
        }
        for (p, streams) in by_publisher.iter().enumerate() {
            let (l, d) = crate::track::group_lost_and_duplicated(streams, sent[p]);
            lost += l;
            dup += d;
        }
    } else {
        for r in &results {
            for (_, first, streams) in &r.streams {
                for (k, s) in streams.iter().enumerate() {
                    lost += s.lost(sent[*first as usize + k]);
                    dup += s.duplicated;
                    reorder += s.reordered;
                    delivered_total += s.received;
                }
            }
        }
    }
    let published_total: u64 = sent.iter().sum();
    let per_publisher = (!sent.is_empty()).then(|| PerPublisherReport {
        min: sent.iter().copied().min().unwrap_or(0),
        mean: published_total as f64 / sent.len() as f64,
        max: sent.iter().copied().max().unwrap_or(0),
    });
    let has_subs = plan.subscribers > 0;
    let granted_qos = has_subs.then_some(min_granted);
    let effective_qos = opts.pub_qos.min(granted_qos.unwrap_or(opts.sub_qos));
    if effective_qos >= 1 && lost > 0 {
        failures.push(format!("{lost} messages lost at QoS {effective_qos}"));
    }
    if effective_qos >= 1 && reorder > 0 {
        failures.push(format!(
            "{reorder} messages out of order at QoS {effective_qos}"
        ));
    }
    if effective_qos == 2 && dup > 0 {
        failures.push(format!("{dup} messages duplicated at QoS 2"));
    }
    if misrouted > 0 {
        failures.push(format!(
            "{misrouted} messages reached a client that should not have them"
        ));
    }
    if disconnects > 0 {
        failures.push(format!(
            "the broker dropped {disconnects} connections during the run"
        ));
    }
    let protocol_errors = shared.protocol_errors.load(Relaxed);
    if protocol_errors > 0 {
        failures.push(format!("{protocol_errors} protocol errors from the broker"));
    }
    if opts.scenario.holds_connections() && connect_failures > 0 {
        failures.push(format!(
            "{connect_failures} of {} connections failed",
            opts.clients
        ));
    }
    if granted_qos.is_some_and(|g| g < opts.sub_qos) {
        errors.push(format!(
            "the broker granted QoS {} for a QoS {} subscription",
            min_granted, opts.sub_qos
        ));
    }
    let in_window = |a: u64, b: u64| b.saturating_sub(a);
    let published = in_window(w.first.published, w.last.published);
    let delivered = in_window(w.first.delivered, w.last.delivered);
    let own_cpu = w.last.own_cpu.saturating_sub(w.first.own_cpu).as_secs_f64();
    let broker_process = match (opts.broker_pid, w.first.broker_cpu, w.last.broker_cpu) {
        (Some(pid), Some(a), Some(b)) => {
            let cpu = b.saturating_sub(a).as_secs_f64();
            Some(BrokerProcess {
                pid,
                cpu_s: cpu,
                cpu_us_per_msg: (delivered > 0).then(|| cpu * 1e6 / delivered as f64),
                cpu_cores: cpu / secs,
                rss_bytes: w.rss_end.unwrap_or(0),
                rss_start_bytes: w.rss_start.unwrap_or(0),
            })
        }
        _ => None,
    };
    // The set-up's span as the workers saw it; the coordinator's own clock (which
    // also counts starting the threads and its 20 ms polls) when none became ready.
    let connect_s = match (first_connect, last_ready) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => w.connect_s,
    };
    let conns = (opts.scenario.holds_connections()).then(|| ConnsReport {
        target: opts.clients,
        connected,
        failed: connect_failures,
        connect_s,
        connect_per_s: connected as f64 / connect_s.max(1e-9),
        broker_cpu_us_per_connect: w
            .setup_cpu
            .1
            .filter(|_| connected > 0)
            .map(|c| c.as_secs_f64() * 1e6 / connected as f64),
        loadtest_cpu_us_per_connect: w.setup_cpu.0.as_secs_f64() * 1e6 / connected.max(1) as f64,
        rss_per_conn_bytes: match (w.rss_start, w.rss_end) {
            (Some(a), Some(b)) if connected > 0 => {
                Some(b.saturating_sub(a) as f64 / connected as f64)
            }
            _ => None,
        },
    });
    let latency_us = (!latency.is_empty()).then(|| {
        let q = |p: f64| latency.value_at_quantile(p) as f64 / 1000.0;
        LatencyReport {
            count: latency.len(),
            mean: latency.mean() / 1000.0,
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: latency.max() as f64 / 1000.0,
        }
    });
    RunReport {
        version: 1,
        scenario: opts.scenario.name(),
        label: opts.label.clone().unwrap_or_else(|| match opts.protocol {
            Protocol::V311 => opts.scenario.name().to_string(),
            Protocol::V5 => format!("{}-v5", opts.scenario.name()),
        }),
        protocol: opts.protocol.name(),
        protocol_level: opts.protocol.level(),
        broker_name: opts
            .broker_name
            .clone()
            .unwrap_or_else(|| opts.broker.to_string()),
        broker: opts.broker.to_string(),
        sub_brokers: opts.sub_brokers.iter().map(|a| a.to_string()).collect(),
        transport: if opts.tls.is_some() { "tls" } else { "tcp" },
        tls: opts.tls.as_ref().map(|t| {
            let (version, cipher_suite) = tls_session.unzip();
            TlsReport {
                server_name: t.server_name.clone(),
                cafile: t.cafile.display().to_string(),
                version,
                cipher_suite,
                resumption: false,
            }
        }),
        username: opts.username.clone(),
        persistent_subscribers: opts.persistent_subscribers,
        clients: opts.clients,
        connect_concurrency: opts.connect_concurrency,
        conns_subscribe: opts.conns_subscribe,
        publishers: plan.publishers,
        subscribers: plan.subscribers,
        fanout: plan.fanout,
        pub_qos: opts.pub_qos,
        sub_qos: opts.sub_qos,
        granted_qos,
        server_receive_maximum,
        effective_qos,
        payload: opts.payload,
        warmup_s: opts.warmup.as_secs_f64(),
        duration_s: secs,
        pacing: match pacing {
            Pacing::Rate(rate) => PacingReport::Rate { rate },
            Pacing::Window(window) => PacingReport::Window { window },
        },
        published,
        delivered,
        published_per_s: published as f64 / secs,
        delivered_per_s: delivered as f64 / secs,
        latency_us,
        published_total,
        delivered_total,
        expected_total: published_total * plan.fanout,
        per_publisher,
        lost,
        duplicated: dup,
        reordered: reorder,
        misrouted,
        disconnects,
        connect_failures,
        protocol_errors,
        unacked_at_end: unacked,
        late_sends: late,
        loadtest: LoadtestCpu {
            threads,
            cpu_s: own_cpu,
            cpu_cores: own_cpu / secs,
        },
        broker_process,
        conns,
        ok: failures.is_empty(),
        failures,
        errors,
    }
}

/// A live status line on a terminal (stderr), nothing otherwise.
struct Progress {
    on: bool,
    last: std::cell::Cell<Option<Instant>>,
}

impl Progress {
    fn new(wanted: bool) -> Progress {
        Progress {
            on: wanted && std::io::stderr().is_terminal(),
            last: std::cell::Cell::new(None),
        }
    }

    fn line(&self, args: std::fmt::Arguments) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .get()
            .is_some_and(|t| now - t < Duration::from_millis(200))
        {
            return;
        }
        self.last.set(Some(now));
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[2K{args}");
        let _ = e.flush();
    }

    fn done(&self) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

impl RunReport {
    /// The human-readable table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| t.push_str(&format!("{k:<11}{v}\n"));
        let pacing = match self.pacing {
            PacingReport::Rate { rate } => format!("fixed rate {} msgs/s", si(rate)),
            PacingReport::Window { window } => format!("window of {window} deliveries"),
        };
        if self.conns.is_some() {
            row(
                "scenario",
                format!(
                    "{} [{}]: {} {}",
                    self.scenario,
                    self.label,
                    self.clients,
                    if self.scenario == "storm" {
                        if self.connect_concurrency >= self.clients {
                            "clients at once, each SUBSCRIBE + one QoS 1 message to itself"
                                .to_string()
                        } else {
                            format!(
                                "clients, {} per thread at a time, each SUBSCRIBE + one QoS 1 message to itself",
                                self.connect_concurrency
                            )
                        }
                    } else if self.conns_subscribe {
                        "idle connections, each subscribed to its own topic".to_string()
                    } else {
                        "idle connections".to_string()
                    }
                ),
            );
        } else {
            row(
            "scenario",
            format!(
                "{} [{}]: {} publishers, {} subscribers, fan-out {}, QoS {}→{}, {} B payload, {pacing}",
                self.scenario,
                self.label,
                self.publishers,
                self.subscribers,
                self.fanout,
                self.pub_qos,
                self.sub_qos,
                self.payload
            ),
        );
        }
        let over = match &self.tls {
            Some(t) => format!(
                " over TLS ({}, {})",
                t.version.as_deref().unwrap_or("no handshake completed"),
                t.cipher_suite.as_deref().unwrap_or("-")
            ),
            None => " over TCP".into(),
        };
        let user = self
            .username
            .as_ref()
            .map_or(String::new(), |u| format!(", username {u}"));
        row(
            "broker",
            format!(
                "{} at {}, MQTT {}{over}{user}",
                self.broker_name, self.broker, self.protocol
            ),
        );
        if let Some(m) = self.server_receive_maximum.filter(|_| self.pub_qos > 0) {
            row(
                "inflight",
                format!("the broker's Receive Maximum caps each publisher at {m} QoS 1/2 publishes in flight"),
            );
        }
        if self.conns.is_some() {
            row("window", format!("{:.2} s held", self.duration_s));
        } else {
            row(
                "window",
                format!(
                    "{:.2} s measured after {:.2} s warm-up",
                    self.duration_s, self.warmup_s
                ),
            );
        }
        if let Some(c) = &self.conns {
            row(
                "connected",
                format!(
                    "{} of {} in {:.2} s ({} conn/s), {} failed",
                    c.connected,
                    c.target,
                    c.connect_s,
                    si(c.connect_per_s),
                    c.failed
                ),
            );
            let broker = c
                .broker_cpu_us_per_connect
                .map_or(String::new(), |b| format!("broker {b:.0} µs, "));
            row(
                "setup cpu",
                format!(
                    "{broker}loadtest {:.0} µs per connection",
                    c.loadtest_cpu_us_per_connect
                ),
            );
            if let Some(b) = c.rss_per_conn_bytes {
                row("memory", format!("{b:.0} B of broker RSS per connection"));
            }
        } else {
            row(
                "published",
                format!(
                    "{} msgs/s ({} msgs)",
                    si(self.published_per_s),
                    self.published
                ),
            );
            row(
                "delivered",
                format!(
                    "{} msgs/s ({} msgs)",
                    si(self.delivered_per_s),
                    self.delivered
                ),
            );
            match &self.latency_us {
                Some(l) => row(
                    "latency",
                    format!(
                        "p50 {:.0} µs  p90 {:.0} µs  p99 {:.0} µs  p99.9 {:.0} µs  max {:.0} µs  ({} samples)",
                        l.p50, l.p90, l.p99, l.p999, l.max, l.count
                    ),
                ),
                None => row("latency", "no deliveries in the window".into()),
            }
            row(
                "integrity",
                format!(
                    "QoS {} checked: {} published, {} of {} expected deliveries received; lost {}, duplicated {}, out of order {}, misrouted {}, disconnects {}",
                    self.effective_qos,
                    self.published_total,
                    self.delivered_total,
                    self.expected_total,
                    self.lost,
                    self.duplicated,
                    self.reordered,
                    self.misrouted,
                    self.disconnects
                ),
            );
            if let Some(p) = self.per_publisher.as_ref().filter(|_| self.publishers > 1) {
                row(
                    "publishers",
                    format!(
                        "sent per publisher: min {}, mean {:.0}, max {}",
                        p.min, p.mean, p.max
                    ),
                );
            }
            if self.late_sends > 0 {
                row(
                    "pacing",
                    format!(
                        "{} messages sent over 1 ms behind schedule",
                        self.late_sends
                    ),
                );
            }
        }
        if let Some(b) = &self.broker_process {
            let per = b
                .cpu_us_per_msg
                .map_or(String::new(), |u| format!(", {u:.2} µs per delivered msg"));
            row(
                "broker cpu",
                format!("{:.2} s ({:.2} cores){per}", b.cpu_s, b.cpu_cores),
            );
            row(
                "broker rss",
                format!("{} (at start {})", mb(b.rss_bytes), mb(b.rss_start_bytes)),
            );
        }
        row(
            "loadtest",
            format!(
                "{:.2} cores busy on {} threads",
                self.loadtest.cpu_cores, self.loadtest.threads
            ),
        );
        if self.ok {
            row("result", "ok".into());
        } else {
            row("result", format!("FAILED: {}", self.failures.join("; ")));
        }
        t
    }
}

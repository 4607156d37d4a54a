//! The `shardmq-loadtest` command: run one scenario against a broker.

use clap::{Args, Parser, Subcommand};
use shardmq_loadtest::{run, Options, Pacing, Scenario, TlsOptions};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "Load generator for MQTT 3.1.1 and 5.0 brokers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N publisher→subscriber pairs, one topic each.
    P2p(RunArgs),
    /// N publishers on their own topics, one wildcard subscriber (see --subscribers).
    Fanin(RunArgs),
    /// P publishers (--publishers, default 1), N subscribers on one topic.
    Fanout(RunArgs),
    /// Open and hold N idle connections; report connect rate and broker memory.
    Conns(RunArgs),
    /// A reconnect storm: N clients connect at once, each subscribes to its own topic
    /// (storm/CLIENT_ID) and gets one QoS 1 message it publishes there; report the
    /// rate and memory. --persistent: clean session 0, so a second run with the same
    /// --client-id-prefix resumes the sessions (no SUBSCRIBE; the message still
    /// goes through).
    Storm(RunArgs),
    /// p2p at a fixed total rate (--rate is required).
    Latency(RunArgs),
    /// P publishers (--publishers, default 2) to one shared-subscription group
    /// ($share/lt/...) of N subscribers: every message to exactly one member.
    Shared(RunArgs),
    /// Compare runs (their --json files): a table per scenario and broker, the
    /// reference broker's ratio to the best peer, a scaling table against the
    /// reference's variants (--variant), and an SVG chart.
    Report(shardmq_loadtest::report::ReportArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The broker to drive.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    broker: String,
    /// MQTT protocol level of every client: 4 (3.1.1) or 5 (5.0). A 5.0 run's default
    /// label ends in -v5.
    #[arg(long, value_name = "LEVEL", default_value_t = 4,
          value_parser = clap::value_parser!(u8).range(4..=5))]
    protocol: u8,
    /// The scenario's N: pairs (p2p, latency), publishers (fanin), subscribers
    /// (fanout), connections (conns).
    #[arg(long, value_name = "N")]
    clients: Option<usize>,
    /// QoS of publishes and subscriptions (see --pub-qos, --sub-qos).
    #[arg(long, value_name = "Q", default_value_t = 0)]
    qos: u8,
    #[arg(long, value_name = "Q")]
    pub_qos: Option<u8>,
    #[arg(long, value_name = "Q")]
    sub_qos: Option<u8>,
    /// Payload size (at least 20: publisher, sequence number, timestamp).
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    payload: usize,
    /// Length of the measured window.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Publishing before the measured window starts.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Fixed total publish rate, shared by all publishers.
    #[arg(long, value_name = "MSGS_PER_S", conflicts_with = "window")]
    rate: Option<f64>,
    /// Closed loop: publishers pause while this many deliveries are outstanding
    /// (default: 100 per client on the busier side).
    #[arg(long, value_name = "N")]
    window: Option<u64>,
    /// The broker's process id: report its CPU per delivered message and its RSS.
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Publishers (fanout; default 1).
    #[arg(long, value_name = "P")]
    publishers: Option<usize>,
    /// Wildcard subscribers (fanin; default 1).
    #[arg(long, value_name = "S")]
    subscribers: Option<usize>,
    /// Topic prefix (default: shardmq-loadtest/<random tag>).
    #[arg(long, value_name = "PREFIX")]
    topic_prefix: Option<String>,
    /// Client id prefix (default: lt<random tag>-); ids end in p/s/c and an index.
    #[arg(long, value_name = "PREFIX")]
    client_id_prefix: Option<String>,
    /// A name for this run in reports (default: the scenario).
    #[arg(long)]
    label: Option<String>,
    /// A name for the broker in reports (default: its address).
    #[arg(long)]
    broker_name: Option<String>,
    /// Event-loop threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Keep-alive sent in CONNECT; PINGREQ goes out at half of it when idle.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    keepalive: u16,
    /// Spread connections over 127.0.0.1..=127.0.0.N (default: one address per
    /// 2000 connections to a loopback broker).
    #[arg(long, value_name = "N", default_value_t = 0)]
    source_ips: usize,
    /// Connection handshakes in progress at once, per thread (default 16; storm: every
    /// client at once, as a fleet reconnects after a blip).
    #[arg(long, value_name = "N")]
    connect_concurrency: Option<usize>,
    /// QoS 1/2 publishes awaiting acknowledgement, per publisher
    /// (default: 1024 at QoS 1, 20 at QoS 2).
    #[arg(long, value_name = "N")]
    pub_inflight: Option<usize>,
    /// Give up if the clients are not all connected by then.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    connect_timeout: f64,
    /// Longest wait for in-flight messages after the window.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    drain_timeout: f64,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
    /// Connect over TLS (1.3 or 1.2, as the broker chooses; a full handshake per
    /// connection). Needs --cafile.
    #[arg(long)]
    tls: bool,
    /// PEM file of the CA(s) the broker's certificate must chain to.
    #[arg(long, value_name = "FILE", requires = "tls")]
    cafile: Option<PathBuf>,
    /// Name the broker's certificate is checked against (and sent as SNI).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "localhost",
        requires = "tls"
    )]
    tls_server_name: String,
    /// Username every client gives in CONNECT.
    #[arg(long, value_name = "U")]
    username: Option<String>,
    /// Password every client gives in CONNECT (needs --username).
    #[arg(long, value_name = "P", requires = "username")]
    password: Option<String>,
    /// Subscribers connect with clean session 0 (persistent sessions, kept by the
    /// broker after the run; the default client ids are unique per run).
    #[arg(long)]
    persistent: bool,
    /// Conns: each connection subscribes to its own topic (conns/CLIENT_ID, QoS 1),
    /// as a device does to its command topic, then idles.
    #[arg(long)]
    subscribe: bool,
    /// Fanout: spread the subscribers round-robin over these brokers (publishers
    /// stay on --broker), e.g. edges bridged to a root.
    #[arg(long, value_name = "HOST:PORT,...")]
    sub_brokers: Option<String>,
}

fn secs(name: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| format!("--{name} must be a non-negative number of seconds"))
}

fn options(scenario: Scenario, a: &RunArgs) -> Result<Options, String> {
    let broker: SocketAddr = a
        .broker
        .to_socket_addrs()
        .map_err(|e| format!("--broker {}: {e}", a.broker))?
        .next()
        .ok_or_else(|| format!("--broker {}: no address", a.broker))?;
    let default_clients = match scenario {
        Scenario::P2p | Scenario::Latency => 16,
        Scenario::Fanin => 32,
        Scenario::Fanout => 100,
        Scenario::Conns | Scenario::Storm => 1000,
        Scenario::Shared => 8,
    };
    let mut o = Options::new(scenario, broker, a.clients.unwrap_or(default_clients));
    o.protocol = shardmq_loadtest::mqtt::Protocol::from_level(a.protocol)
        .ok_or("--protocol must be 4 (3.1.1) or 5 (5.0)")?;
    o.publishers = a.publishers;
    o.subscribers = a.subscribers;
    o.pub_qos = a.pub_qos.unwrap_or(a.qos);
    o.sub_qos = a.sub_qos.unwrap_or(a.qos);
    o.payload = a.payload;
    o.duration = secs("duration", a.duration)?;
    o.warmup = secs("warmup", a.warmup)?;
    o.pacing = match (a.rate, a.window) {
        (Some(r), _) => Some(Pacing::Rate(r)),
        (None, Some(w)) => Some(Pacing::Window(w.max(1))),
        (None, None) => None,
    };
    o.broker_pid = a.broker_pid;
    o.label = a.label.clone();
    o.broker_name = a.broker_name.clone();
    o.topic_prefix = a.topic_prefix.clone();
    o.client_id_prefix = a.client_id_prefix.clone();
    if let Some(t) = a.threads {
        o.threads = t.max(1);
    }
    o.keep_alive = a.keepalive;
    o.source_ips = a.source_ips;
    if let Some(c) = a.connect_concurrency {
        o.connect_concurrency = c;
    }
    o.pub_inflight = a.pub_inflight;
    o.connect_timeout = secs("connect-timeout", a.connect_timeout)?;
    o.drain_timeout = secs("drain-timeout", a.drain_timeout)?;
    o.progress = !a.quiet;
    if a.tls {
        let cafile = a
            .cafile
            .clone()
            .ok_or("--tls needs --cafile (the CA that signed the broker's certificate)")?;
        o.tls = Some(TlsOptions {
            cafile,
            server_name: a.tls_server_name.clone(),
        });
    }
    o.username = a.username.clone();
    o.password = a.password.clone();
    o.persistent_subscribers = a.persistent;
    if a.subscribe && scenario != Scenario::Conns {
        return Err("--subscribe is for the conns scenario".into());
    }
    o.conns_subscribe = a.subscribe;
    if let Some(list) = &a.sub_brokers {
        o.sub_brokers = shardmq_loadtest::plan::parse_brokers(list)?;
    }
    Ok(o)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (scenario, args) = match &cli.command {
        Command::P2p(a) => (Scenario::P2p, a),
        Command::Fanin(a) => (Scenario::Fanin, a),
        Command::Fanout(a) => (Scenario::Fanout, a),
        Command::Conns(a) => (Scenario::Conns, a),
        Command::Storm(a) => (Scenario::Storm, a),
        Command::Latency(a) => (Scenario::Latency, a),
        Command::Shared(a) => (Scenario::Shared, a),
        Command::Report(a) => {
            return match shardmq_loadtest::report::run(a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("shardmq-loadtest report: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    let opts = match options(scenario, args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("shardmq-loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "shardmq-loadtest: {} against {}: {e}",
                scenario.name(),
                opts.broker
            );
            return ExitCode::from(2);
        }
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).expect("report serializes");
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("shardmq-loadtest: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    for e in report.errors.iter().take(10) {
        eprintln!("  note: {e}");
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

//! The `shardmq` command: flags and config file → `Config` → `Broker` → signals.

mod passwd;

use clap::{Parser, Subcommand};
use shardmq::config::{ListenerConfig, Transport};
use shardmq::{Broker, Config};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// A thread-per-core MQTT 3.1.1 broker. Every flag overrides the matching key of the
/// config file; the key names are given in brackets.
#[derive(Debug, Parser)]
#[command(name = "shardmq", version, about)]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to accept MQTT over TCP on; repeat for several [listeners]
    /// (default 0.0.0.0:1883). Any --*listen flag replaces the file's listeners.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Address to accept MQTT over TLS on (needs --cert and --key) [listener].
    #[arg(long = "tls-listen", value_name = "ADDR")]
    tls_listen: Vec<SocketAddr>,
    /// Address to accept MQTT over WebSocket on, path /mqtt [listener].
    #[arg(long = "ws-listen", value_name = "ADDR")]
    ws_listen: Vec<SocketAddr>,
    /// Address to accept MQTT over WebSocket over TLS on [listener].
    #[arg(long = "wss-listen", value_name = "ADDR")]
    wss_listen: Vec<SocketAddr>,
    /// Certificate chain of the TLS listeners, PEM [cert].
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Private key of the TLS listeners, PEM [key].
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates are verified against [client_ca].
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// TLS clients must present a certificate signed by --client-ca
    /// [require_client_cert].
    #[arg(long)]
    require_client_cert: bool,
    /// A TLS client certificate's common name is the client's username
    /// [use_identity_as_username].
    #[arg(long)]
    use_identity_as_username: bool,
    /// Number of shards; 0 = one per CPU available [shards].
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Largest packet accepted, in bytes [max_packet_size].
    #[arg(long, value_name = "BYTES")]
    max_packet_size: Option<usize>,
    /// Unacknowledged outgoing QoS 1/2 messages per session [max_inflight].
    #[arg(long, value_name = "N")]
    max_inflight: Option<u16>,
    /// Messages queued per session behind the in-flight window [max_queued_messages].
    #[arg(long, value_name = "N")]
    max_queued_messages: Option<usize>,
    /// Bytes queued per session [max_queued_bytes].
    #[arg(long, value_name = "BYTES")]
    max_queued_bytes: Option<usize>,
    /// Seconds a new connection has to send CONNECT [connect_timeout].
    #[arg(long, value_name = "SECS")]
    connect_timeout: Option<f64>,
    /// Open connections allowed, 0 = unlimited [max_connections].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Retained messages stored, 0 = unlimited [max_retained_messages].
    #[arg(long, value_name = "N")]
    max_retained_messages: Option<usize>,
    /// Largest retained payload stored, in bytes [max_retained_payload].
    #[arg(long, value_name = "BYTES")]
    max_retained_payload: Option<usize>,
    /// Unsent bytes per connection before messages wait in the session queue
    /// [write_buffer_high_water].
    #[arg(long, value_name = "BYTES")]
    write_buffer_high_water: Option<usize>,
    /// Capacity in batches of each cross-shard channel [mesh_channel_capacity].
    #[arg(long, value_name = "N")]
    mesh_channel_capacity: Option<usize>,
    /// Most levels in a topic name or filter [max_topic_levels].
    #[arg(long, value_name = "N")]
    max_topic_levels: Option<usize>,
    /// Longest topic name or filter, in bytes [max_topic_length].
    #[arg(long, value_name = "BYTES")]
    max_topic_length: Option<usize>,
    /// Subscriptions one session may hold [max_subscriptions_per_client].
    #[arg(long, value_name = "N")]
    max_subscriptions_per_client: Option<usize>,
    /// Longest client identifier, in bytes [max_client_id_length].
    #[arg(long, value_name = "BYTES")]
    max_client_id_length: Option<usize>,
    /// Mosquitto password file; clients giving a username must give its password
    /// [password_file].
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Mosquitto ACL file [acl_file].
    #[arg(long, value_name = "FILE")]
    acl_file: Option<PathBuf>,
    /// Accept clients without a username; default true without a password file,
    /// false with one [allow_anonymous].
    #[arg(long, value_name = "true|false")]
    allow_anonymous: Option<bool>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, update or delete users in a Mosquitto-format password file.
    Passwd(passwd::PasswdArgs),
    /// Check a configuration file, and every file it names, without starting.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
}

impl Args {
    fn into_config(self) -> Result<Config, shardmq::ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let flagged = !(self.listen.is_empty()
            && self.tls_listen.is_empty()
            && self.ws_listen.is_empty()
            && self.wss_listen.is_empty());
        if flagged {
            c.listeners = self.listen;
            c.listener.clear();
            for (addrs, transport) in [
                (self.tls_listen, Transport::Tls),
                (self.ws_listen, Transport::Ws),
                (self.wss_listen, Transport::Wss),
            ] {
                for a in addrs {
                    c.listener.push(ListenerConfig::new(a, transport));
                }
            }
        }
        if let Some(p) = self.cert {
            c.cert = Some(p);
        }
        if let Some(p) = self.key {
            c.key = Some(p);
        }
        if let Some(p) = self.client_ca {
            c.client_ca = Some(p);
        }
        if self.require_client_cert {
            c.require_client_cert = true;
        }
        if self.use_identity_as_username {
            c.use_identity_as_username = true;
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            shards,
            max_packet_size,
            max_inflight,
            max_queued_messages,
            max_queued_bytes,
            connect_timeout,
            max_connections,
            max_retained_messages,
            max_retained_payload,
            write_buffer_high_water,
            mesh_channel_capacity,
            max_topic_levels,
            max_topic_length,
            max_subscriptions_per_client,
            max_client_id_length
        );
        if let Some(p) = self.password_file {
            c.password_file = Some(p);
        }
        if let Some(p) = self.acl_file {
            c.acl_file = Some(p);
        }
        if let Some(a) = self.allow_anonymous {
            c.allow_anonymous = Some(a);
        }
        c.validate()?;
        Ok(c)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error")),
        )
        .init();
    let args = Args::parse();
    match args.command {
        Some(Command::Passwd(p)) => return passwd::run(p),
        Some(Command::CheckConfig { file }) => return check_config(&file),
        None => {}
    }
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    raise_fd_limit();
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let broker = match Broker::start(config) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let listeners: Vec<String> = broker.local_addrs().iter().map(|a| a.to_string()).collect();
    for spec in broker.config().listener_specs() {
        let by_certificate = spec.tls.as_ref().is_some_and(|t| t.require_client_cert);
        if spec.security.anonymous_allowed() && !by_certificate && !spec.address.ip().is_loopback()
        {
            tracing::warn!(
                listener = %spec.address,
                "anonymous clients are accepted on a non-loopback address: anyone who reaches \
                 it may publish and subscribe (set a password file, or allow_anonymous = false)"
            );
        }
    }
    tracing::info!(
        listeners = %listeners.join(","),
        shards = broker.shards(),
        version = env!("CARGO_PKG_VERSION"),
        "shardmq started"
    );
    for signal in signals.forever() {
        match signal {
            SIGHUP => match broker.reload() {
                Ok(()) => {
                    tracing::info!("SIGHUP: password, ACL, certificate and key files reloaded")
                }
                Err(e) => {
                    tracing::error!("SIGHUP: reload refused, the previous files stay in force: {e}")
                }
            },
            _ => {
                tracing::info!(signal, "shutting down");
                break;
            }
        }
    }
    broker.shutdown();
    tracing::info!("shardmq stopped");
    ExitCode::SUCCESS
}

/// A broker holds one descriptor per connection: lift the soft limit to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` holds the limits read above with the soft one raised to the hard one.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// `shardmq check-config FILE`: exit 0 and a summary, or exit 2 and the reason (TOML
/// errors name the line).
fn check_config(file: &std::path::Path) -> ExitCode {
    let result = Config::from_file(file)
        .map_err(shardmq::StartError::from)
        .and_then(|c| Broker::check(&c).map(|()| c));
    match result {
        Ok(c) => {
            let specs = c.listener_specs();
            println!("{}: ok, {} listener(s)", file.display(), specs.len());
            for s in specs {
                println!("  {} {:?}", s.address, s.transport);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::from(2)
        }
    }
}

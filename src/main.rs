//! The `shardmq` command: flags and config file → `Config` → `Broker` → signals.

mod passwd;

use clap::{Parser, Subcommand};
use shardmq::config::{FsyncPolicy, ListenerConfig, LogFormat, SharedStrategy, Transport};
use shardmq::{Broker, Config};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// A thread-per-core MQTT 5.0 / 3.1.1 / 3.1 broker. Every flag overrides the matching key of the
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
    /// New connections accepted per second on each listener, 0 = unlimited; the
    /// rest wait in the accept queue [max_connect_rate].
    #[arg(long, value_name = "N")]
    max_connect_rate: Option<u32>,
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
    /// Silence after which a client's connection is parked, 0 = never
    /// [park_idle_after_ms].
    #[arg(long, value_name = "MS")]
    park_idle_after_ms: Option<u32>,
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
    /// Connections start with a PROXY protocol header (v1 or v2) from a load
    /// balancer, which is then required [proxy_protocol].
    #[arg(long)]
    proxy_protocol: bool,
    /// Seconds an offline persistent session is kept, 0 = until its client ends it
    /// [persistent_client_expiration].
    #[arg(long, value_name = "SECS")]
    persistent_client_expiration: Option<u64>,
    /// Seconds between $SYS updates, 0 = off [sys_interval].
    #[arg(long, value_name = "SECS")]
    sys_interval: Option<u64>,
    /// Address to serve GET /metrics (Prometheus) and GET /healthz on [metrics_listen].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log line format: text or json [log_format].
    #[arg(long, value_name = "text|json")]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. info or debug or info,shardmq=debug; RUST_LOG wins [log_level].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Keep sessions, subscriptions, queued QoS 1/2 messages and retained messages
    /// in DIR across restarts and crashes; unset: in memory only [data_dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// When acknowledged messages reach the disk: always (before the
    /// acknowledgement), interval or never [fsync].
    #[arg(long, value_name = "always|interval|never")]
    fsync: Option<FsyncPolicy>,
    /// Milliseconds between fdatasyncs with --fsync interval [fsync_interval_ms].
    #[arg(long, value_name = "MS")]
    fsync_interval_ms: Option<u64>,
    /// Compact the log once it holds more than this and twice its live state
    /// [log_compaction_bytes].
    #[arg(long, value_name = "BYTES")]
    log_compaction_bytes: Option<u64>,
    /// How a shared-subscription group picks the member a message goes to
    /// [shared_subscription_strategy].
    #[arg(long, value_name = "round_robin|hash_client")]
    shared_subscription_strategy: Option<SharedStrategy>,
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
    /// The config file with the flags applied on top (again on each SIGHUP).
    fn to_config(&self) -> Result<Config, shardmq::ConfigError> {
        self.clone_flags().into_config()
    }

    fn clone_flags(&self) -> Args {
        Args {
            command: None,
            config: self.config.clone(),
            listen: self.listen.clone(),
            tls_listen: self.tls_listen.clone(),
            ws_listen: self.ws_listen.clone(),
            wss_listen: self.wss_listen.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: self.client_ca.clone(),
            require_client_cert: self.require_client_cert,
            use_identity_as_username: self.use_identity_as_username,
            shards: self.shards,
            max_packet_size: self.max_packet_size,
            max_inflight: self.max_inflight,
            max_queued_messages: self.max_queued_messages,
            max_queued_bytes: self.max_queued_bytes,
            connect_timeout: self.connect_timeout,
            max_connections: self.max_connections,
            max_connect_rate: self.max_connect_rate,
            max_retained_messages: self.max_retained_messages,
            max_retained_payload: self.max_retained_payload,
            write_buffer_high_water: self.write_buffer_high_water,
            mesh_channel_capacity: self.mesh_channel_capacity,
            park_idle_after_ms: self.park_idle_after_ms,
            max_topic_levels: self.max_topic_levels,
            max_topic_length: self.max_topic_length,
            max_subscriptions_per_client: self.max_subscriptions_per_client,
            max_client_id_length: self.max_client_id_length,
            password_file: self.password_file.clone(),
            acl_file: self.acl_file.clone(),
            allow_anonymous: self.allow_anonymous,
            proxy_protocol: self.proxy_protocol,
            persistent_client_expiration: self.persistent_client_expiration,
            sys_interval: self.sys_interval,
            metrics_listen: self.metrics_listen,
            log_format: self.log_format,
            log_level: self.log_level.clone(),
            data_dir: self.data_dir.clone(),
            fsync: self.fsync,
            fsync_interval_ms: self.fsync_interval_ms,
            log_compaction_bytes: self.log_compaction_bytes,
            shared_subscription_strategy: self.shared_subscription_strategy,
        }
    }

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
            max_connect_rate,
            max_retained_messages,
            max_retained_payload,
            write_buffer_high_water,
            mesh_channel_capacity,
            park_idle_after_ms,
            max_topic_levels,
            max_topic_length,
            max_subscriptions_per_client,
            max_client_id_length,
            persistent_client_expiration,
            sys_interval,
            log_format,
            fsync,
            fsync_interval_ms,
            log_compaction_bytes,
            shared_subscription_strategy
        );
        if let Some(d) = self.data_dir {
            c.data_dir = Some(d);
        }
        if self.proxy_protocol {
            c.proxy_protocol = true;
        }
        if let Some(a) = self.metrics_listen {
            c.metrics_listen = Some(a);
        }
        if let Some(l) = self.log_level {
            c.log_level = l;
        }
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

/// Changes the log filter of a running process (SIGHUP with a new `log_level`).
type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The filter for `log_level`; rustls's own chatter stays at error unless asked for.
fn log_filter(level: &str) -> tracing_subscriber::EnvFilter {
    let spec = if level.contains("rustls") {
        level.to_owned()
    } else {
        format!("{level},rustls=error")
    };
    tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"))
}

/// Installs the log subscriber: `RUST_LOG` if set, else `log_level`; text or JSON
/// lines on standard output. Returns the handle that changes the filter on reload, or `None`
/// when `RUST_LOG` decides.
fn init_logging(level: &str, format: LogFormat) -> Option<LogHandle> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = if from_env {
        tracing_subscriber::EnvFilter::from_default_env()
    } else {
        log_filter(level)
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Colours only on a terminal, and not with NO_COLOR set: a journal or a file
    // gets plain lines.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stdout)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stdout)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .init();
    (!from_env).then_some(handle)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Passwd(p)) => {
            init_logging("info", LogFormat::Text);
            return passwd::run(p);
        }
        Some(Command::CheckConfig { file }) => return check_config(&file),
        None => {}
    }
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            init_logging("info", LogFormat::Text);
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let log = init_logging(&config.log_level, config.log_format);
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
    // Readiness for systemd (Type=notify); nothing happens without NOTIFY_SOCKET.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    for signal in signals.forever() {
        match signal {
            SIGHUP => reload(&args, &broker, log.as_ref()),
            _ => {
                tracing::info!(signal, "shutting down");
                break;
            }
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    broker.shutdown();
    tracing::info!("shardmq stopped");
    ExitCode::SUCCESS
}

/// SIGHUP: reads the config file again (flags still override it) and applies what
/// can change at run time; re-reads the password, ACL, certificate and key files in
/// any case. A file that does not parse, or names a bad file, changes nothing.
fn reload(args: &Args, broker: &Broker, log: Option<&LogHandle>) {
    if args.config.is_none() {
        match broker.reload() {
            Ok(()) => tracing::info!("SIGHUP: password, ACL, certificate and key files reloaded"),
            Err(e) => {
                tracing::error!("SIGHUP: reload refused, the previous files stay in force: {e}")
            }
        }
        return;
    }
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("SIGHUP: configuration not reloaded, nothing changed: {e}");
            return;
        }
    };
    let level = config.log_level.clone();
    match broker.reconfigure(config) {
        Ok(r) => {
            if r.applied.iter().any(|k| k == "log_level") {
                match log {
                    Some(h) => {
                        let _ = h.reload(log_filter(&level));
                    }
                    None => tracing::warn!("SIGHUP: log_level not applied: RUST_LOG decides"),
                }
            }
            if !r.need_restart.is_empty() {
                tracing::warn!(
                    keys = %r.need_restart.join(","),
                    "SIGHUP: these changes need a restart; the running values stay"
                );
            }
            let changed = if r.applied.is_empty() {
                "none".to_owned()
            } else {
                r.applied.join(",")
            };
            tracing::info!(
                %changed,
                "SIGHUP: configuration reloaded (password, ACL, certificate and key files read again)"
            );
        }
        Err(e) => tracing::error!("SIGHUP: configuration not reloaded, nothing changed: {e}"),
    }
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

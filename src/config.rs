//! Broker configuration: defaults, the TOML file, command-line flags, validation.
//!
//! Every setting has a config key; `main` applies flags on top of the file. All limits
//! that bound memory live here, so a reader can see at one glance what a client may cost.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors reading or checking a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting {key}: {why}")]
    Invalid { key: &'static str, why: String },
}

/// How a listener carries MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT over TCP.
    #[default]
    Tcp,
    /// MQTT over TLS (1.2 and 1.3).
    Tls,
    /// MQTT over WebSocket (RFC 6455, subprotocol `mqtt`).
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Transport {
    pub fn uses_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    pub fn uses_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

/// A `[[listener]]` table. Keys left out take the top-level key of the same name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    #[serde(default)]
    pub transport: Transport,
    /// WebSocket path (default `/mqtt`).
    pub path: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: Option<bool>,
    pub use_identity_as_username: Option<bool>,
    pub password_file: Option<PathBuf>,
    pub acl_file: Option<PathBuf>,
    pub allow_anonymous: Option<bool>,
    /// Connections start with a PROXY protocol header (v1 or v2), which is required.
    pub proxy_protocol: Option<bool>,
}

impl ListenerConfig {
    /// A listener on `address` with every other key taken from the top level.
    pub fn new(address: SocketAddr, transport: Transport) -> ListenerConfig {
        ListenerConfig {
            address,
            transport,
            path: None,
            cert: None,
            key: None,
            client_ca: None,
            require_client_cert: None,
            use_identity_as_username: None,
            password_file: None,
            acl_file: None,
            allow_anonymous: None,
            proxy_protocol: None,
        }
    }
}

/// A listener's TLS settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: the CAs client certificates are verified against.
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: bool,
    /// The client certificate's common name becomes the username; no password.
    pub use_identity_as_username: bool,
}

/// Who may connect through a listener and what they may do: the files, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Security {
    pub password_file: Option<PathBuf>,
    pub acl_file: Option<PathBuf>,
    pub allow_anonymous: Option<bool>,
}

impl Security {
    /// Whether anything is to be checked (else everyone may do everything).
    pub fn is_set(&self) -> bool {
        self.password_file.is_some() || self.acl_file.is_some() || self.allow_anonymous.is_some()
    }

    /// Whether clients without a username are accepted, the default applied.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.password_file.is_none())
    }
}

/// One listener, every setting resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub address: SocketAddr,
    pub transport: Transport,
    pub path: String,
    pub tls: Option<TlsSettings>,
    pub security: Security,
    /// Connections must start with a PROXY protocol header, whose source address
    /// stands for the client's.
    pub proxy_protocol: bool,
}

/// The whole configuration of one broker. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// TCP addresses to accept plain MQTT connections on; every shard binds each one.
    pub listeners: Vec<SocketAddr>,
    /// Listeners of any transport, each with its own settings (`[[listener]]`).
    pub listener: Vec<ListenerConfig>,
    /// Default certificate chain (PEM) of TLS listeners.
    pub cert: Option<PathBuf>,
    /// Default private key (PEM) of TLS listeners.
    pub key: Option<PathBuf>,
    /// Default CA file (PEM) client certificates are verified against.
    pub client_ca: Option<PathBuf>,
    /// Default: a TLS client must present a certificate signed by `client_ca`.
    pub require_client_cert: bool,
    /// Default: a TLS client certificate's common name is its username.
    pub use_identity_as_username: bool,
    /// Number of shards (one executor thread each). 0: one per CPU the process may use.
    pub shards: usize,
    /// Largest packet accepted from a client, in bytes (fixed header included).
    /// A larger one closes the connection before it is buffered.
    pub max_packet_size: usize,
    /// Outgoing QoS 1/2 messages per session awaiting acknowledgement (1..=65535).
    pub max_inflight: u16,
    /// Messages queued per session behind the in-flight window (while offline, or
    /// while the client reads slower than messages arrive).
    pub max_queued_messages: usize,
    /// Bytes (topic + payload) queued per session; whichever queue bound is hit first
    /// applies. Over either bound a message is dropped and counted, QoS 0 first.
    pub max_queued_bytes: usize,
    /// Seconds a new connection has to complete its CONNECT packet.
    pub connect_timeout: f64,
    /// Open connections across all shards; the excess is answered with CONNACK 0x03.
    /// 0 means no limit.
    pub max_connections: usize,
    /// New connections accepted per second on each listener, across all shards; 0
    /// means no limit. Connections beyond it wait in the kernel's accept queue (they
    /// are not refused), and one that waited longer than `connect_timeout` is closed
    /// unanswered when its turn comes; the CONNECT timeout counts from when the
    /// connection was made, not from when it was accepted.
    pub max_connect_rate: u32,
    /// Retained messages kept (distinct topics); a new retained topic beyond this is
    /// delivered normally but not stored. 0 means no limit.
    pub max_retained_messages: usize,
    /// Largest payload stored as a retained message; larger ones are delivered
    /// normally but not stored.
    pub max_retained_payload: usize,
    /// Bytes of unsent output per connection above which new messages wait in the
    /// session queue instead (so a slow reader is bounded by the queue limits).
    pub write_buffer_high_water: usize,
    /// Capacity, in batches, of each cross-shard channel.
    pub mesh_channel_capacity: usize,
    /// Milliseconds a client's connection must have sent nothing before it is
    /// parked (no reader task until it sends again; the delay doubles for a
    /// connection that is soon read again). 0: connections never park.
    pub park_idle_after_ms: u32,
    /// Most levels in a topic name or filter. A PUBLISH (or will) over it closes the
    /// connection; a SUBSCRIBE filter over it gets SUBACK 0x80.
    pub max_topic_levels: usize,
    /// Longest topic name or filter, in bytes; over it, as for `max_topic_levels`.
    pub max_topic_length: usize,
    /// Subscriptions one session may hold; a SUBSCRIBE filter beyond it (one the
    /// session does not hold already) gets SUBACK 0x80.
    pub max_subscriptions_per_client: usize,
    /// Longest client identifier, in bytes; a longer one gets CONNACK 0x02.
    pub max_client_id_length: usize,
    /// Mosquitto password file (`user:$7$…` lines, see `shardmq passwd`). A client
    /// giving a username must give its password; a bad pair gets CONNACK 0x04.
    pub password_file: Option<PathBuf>,
    /// Mosquitto ACL file (`topic`, `user`, `pattern` lines). Without one, every
    /// client may publish and subscribe to everything.
    pub acl_file: Option<PathBuf>,
    /// Whether clients without a username are accepted (refused with CONNACK 0x05).
    /// Unset: true without a password file, false with one.
    pub allow_anonymous: Option<bool>,
    /// Default for every listener: connections come through a load balancer and start
    /// with a PROXY protocol header (v1 or v2), which is then required; the address
    /// it gives is the client's (in logs, and for the authenticator).
    pub proxy_protocol: bool,
    /// Seconds a persistent session (clean session 0) is kept while no client is
    /// connected to it; then it ends, with its subscriptions and queued messages.
    /// 0: kept until a client ends it (Mosquitto's `persistent_client_expiration`).
    pub persistent_client_expiration: u64,
    /// Seconds between updates of the retained `$SYS/broker/...` topics (each sent
    /// only when its value changed). 0 turns `$SYS` off.
    pub sys_interval: u64,
    /// Address of the HTTP endpoint serving `GET /metrics` (Prometheus) and
    /// `GET /healthz`. Unset: no endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Log line format: `text` (for people) or `json` (one object per line, for log
    /// shippers).
    pub log_format: LogFormat,
    /// Log filter, as `RUST_LOG` takes it (`info`, `debug`, `info,shardmq=debug`).
    /// `RUST_LOG`, when set, wins.
    pub log_level: String,
    /// Directory of the persistent state (sessions, subscriptions, queued QoS 1/2
    /// messages, retained messages). Unset: everything is kept in memory only.
    pub data_dir: Option<PathBuf>,
    /// When acknowledged messages reach the disk, with `data_dir` set.
    pub fsync: FsyncPolicy,
    /// Milliseconds between fdatasyncs with `fsync = "interval"`.
    pub fsync_interval_ms: u64,
    /// The log is compacted (rewritten as a snapshot of the live state, clients
    /// paused meanwhile) once it holds more than this many bytes and more than
    /// twice the live state it started from.
    pub log_compaction_bytes: u64,
    /// MQTT 5.0: the longest keep-alive a 5.0 client may use, in seconds. A client
    /// asking for more, or for 0 (none), is given this value in CONNACK's Server Keep
    /// Alive. 0: no limit.
    pub max_keepalive: u16,
    /// MQTT 5.0: the Receive Maximum announced in CONNACK, the QoS 2 publishes a 5.0
    /// client may have awaiting PUBREL (1..=65535); one more gets DISCONNECT 0x93.
    pub receive_maximum: u16,
    /// MQTT 5.0: the longest Session Expiry Interval a 5.0 client's session gets, in
    /// seconds; a client asking for more is told this value in CONNACK. 4294967295
    /// (the default): no bound, a session may be kept forever.
    pub max_session_expiry: u32,
    /// MQTT 5.0: the Topic Alias Maximum announced in CONNACK, the highest alias a 5.0
    /// client may use toward the broker; 0: none (an alias then gets DISCONNECT 0x94).
    pub topic_alias_maximum: u16,
    /// The highest QoS clients may publish with (0, 1 or 2; announced to 5.0 clients
    /// in CONNACK when below 2). A PUBLISH or will above it closes the connection
    /// (5.0: DISCONNECT / CONNACK 0x9B); a subscription asking more is granted this.
    pub maximum_qos: u8,
    /// Whether clients may publish retained messages (announced to 5.0 clients in
    /// CONNACK when false). A retained PUBLISH or will then closes the connection
    /// (5.0: DISCONNECT / CONNACK 0x9A).
    pub retain_available: bool,
    /// MQTT 5.0: the Response Information a client that sets Request Response
    /// Information gets in CONNACK, the base of its response topics; `%c` stands for
    /// its client id (so an ACL `pattern` can give each client its own). Empty: none.
    pub response_information: String,
    /// Bridges to remote brokers (`[[bridge]]` tables).
    pub bridge: Vec<BridgeConfig>,
    /// How a message for a shared-subscription group (`$share/{group}/{filter}`)
    /// picks the member it goes to: `round_robin` (default) or `hash_client`.
    pub shared_subscription_strategy: SharedStrategy,
}

/// How a shared-subscription group picks a member (`shared_subscription_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    /// In turn: over the shards holding connected members, then over the connected
    /// members on the chosen shard. Spreads the load evenly.
    #[default]
    RoundRobin,
    /// A hash of the publisher's client id picks the shard and the member, so one
    /// publisher's messages stay with one member while the group does not change
    /// (and keep their order).
    HashClient,
}

impl std::str::FromStr for SharedStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round_robin" => Ok(SharedStrategy::RoundRobin),
            "hash_client" => Ok(SharedStrategy::HashClient),
            _ => Err(format!("{s:?}: expected round_robin or hash_client")),
        }
    }
}

/// How a bridge reaches its remote broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BridgeTransport {
    #[default]
    Tcp,
    Tls,
}

/// Which way a bridge topic carries messages (Mosquitto's `topic ... out|in|both`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Local messages go to the remote.
    #[default]
    Out,
    /// Remote messages are published locally.
    In,
    Both,
}

impl Direction {
    pub fn carries_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }

    pub fn carries_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }
}

/// One topic of a bridge, with Mosquitto's meaning: the local filter is
/// `local_prefix + pattern`, the remote one `remote_prefix + pattern`; a message
/// crossing the bridge has one prefix replaced by the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTopic {
    /// A topic filter (wildcards allowed); may be empty when both prefixes are set,
    /// which then name one topic each.
    pub pattern: String,
    #[serde(default)]
    pub direction: Direction,
    /// The most QoS a message takes across the bridge on this topic (0, 1 or 2).
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub local_prefix: String,
    #[serde(default)]
    pub remote_prefix: String,
}

impl BridgeTopic {
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }
}

fn default_true() -> bool {
    true
}

fn default_bridge_keepalive() -> u16 {
    60
}

fn default_bridge_protocol() -> String {
    "3.1.1".into()
}

fn default_reconnect_min() -> f64 {
    1.0
}

fn default_reconnect_max() -> f64 {
    30.0
}

/// A `[[bridge]]` table: an outgoing connection to another broker (DESIGN §14).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Names the bridge in logs and in `$SYS/broker/connection/{name}/state`.
    pub name: String,
    /// The remote broker, `host:port`.
    pub address: String,
    #[serde(default)]
    pub transport: BridgeTransport,
    /// PEM: the CAs the remote's certificate is verified against (TLS).
    pub ca: Option<PathBuf>,
    /// PEM: a client certificate chain and its key, if the remote asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The client id on the remote (default: the bridge's name). The bridge's session
    /// here is `local.{client_id}`, as Mosquitto names it.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Clean session on the remote, and here: with `false` (the default) both ends
    /// keep the bridge's subscriptions and queued QoS 1/2 messages while it is down
    /// (here across restarts too, with `data_dir`).
    #[serde(default)]
    pub clean_session: bool,
    /// Seconds between PINGREQs; the connection is dropped when the remote has
    /// sent nothing for 1.5 times this. 0: no keep-alive.
    #[serde(default = "default_bridge_keepalive")]
    pub keepalive: u16,
    /// "3.1.1", "3.1" or "5.0".
    #[serde(default = "default_bridge_protocol")]
    pub protocol: String,
    /// 3.1.1 and 3.1: announce the bridge to the remote (protocol level with 0x80
    /// set), so that it does not send back what the bridge published; when the
    /// remote refuses it, the bridge connects again without it. A 5.0 bridge
    /// subscribes with No Local instead.
    #[serde(default = "default_true")]
    pub try_private: bool,
    /// Seconds before the first reconnection attempt; each failure doubles it, up to
    /// `reconnect_delay_max`, with jitter.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_delay_min: f64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_delay_max: f64,
    pub topics: Vec<BridgeTopic>,
}

impl BridgeConfig {
    /// The client id on the remote.
    pub fn remote_client_id(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| self.name.clone())
    }

    /// The client id of the bridge's session on this broker.
    pub fn local_client_id(&self) -> String {
        format!("local.{}", self.remote_client_id())
    }

    /// Checks one bridge's settings.
    fn validate(&self) -> Result<(), String> {
        use crate::protocol::topic::valid_topic_filter;
        let name = &self.name;
        if name.is_empty() || name.contains(['/', '+', '#']) || name.chars().any(char::is_control) {
            return Err(format!(
                "name {name:?} must be non-empty, without '/', '+', '#' or control characters"
            ));
        }
        let Some((host, port)) = self.address.rsplit_once(':') else {
            return Err(format!(
                "{name}: address {:?} must be host:port",
                self.address
            ));
        };
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "{name}: address {:?} must be host:port",
                self.address
            ));
        }
        match self.protocol.as_str() {
            "3.1.1" | "3.1" | "5" | "5.0" => {}
            other => {
                return Err(format!(
                    "{name}: protocol {other:?}: expected \"3.1.1\", \"3.1\" or \"5.0\""
                ))
            }
        }
        match self.transport {
            BridgeTransport::Tls if self.ca.is_none() => {
                return Err(format!("{name}: transport = \"tls\" needs ca"))
            }
            BridgeTransport::Tcp
                if self.ca.is_some() || self.cert.is_some() || self.key.is_some() =>
            {
                return Err(format!("{name}: ca, cert and key need transport = \"tls\""))
            }
            _ => {}
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(format!("{name}: cert and key go together"));
        }
        let id = self.remote_client_id();
        if id.is_empty() || id.len() > 65_535 - 6 {
            return Err(format!("{name}: client_id must be 1 to 65529 bytes"));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(format!("{name}: password needs username"));
        }
        let delays = (self.reconnect_delay_min, self.reconnect_delay_max);
        if !(delays.0.is_finite() && delays.0 > 0.0 && delays.1.is_finite() && delays.1 >= delays.0)
        {
            return Err(format!(
                "{name}: reconnect_delay_min must be positive and at most reconnect_delay_max"
            ));
        }
        if self.topics.is_empty() {
            return Err(format!("{name}: at least one topic is required"));
        }
        for t in &self.topics {
            if t.qos > 2 {
                return Err(format!(
                    "{name}: topic {:?}: qos must be 0, 1 or 2",
                    t.pattern
                ));
            }
            for prefix in [&t.local_prefix, &t.remote_prefix] {
                if prefix.contains(['+', '#']) {
                    return Err(format!("{name}: prefix {prefix:?} must not hold wildcards"));
                }
            }
            if t.pattern.is_empty() && (t.local_prefix.is_empty() || t.remote_prefix.is_empty()) {
                return Err(format!(
                    "{name}: an empty pattern needs both local_prefix and remote_prefix"
                ));
            }
            for f in [t.local_filter(), t.remote_filter()] {
                if !valid_topic_filter(&f) || f.len() > 65_535 {
                    return Err(format!("{name}: {f:?} is not a valid topic filter"));
                }
            }
        }
        Ok(())
    }
}

/// When the log is made durable (`fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// PUBACK/PUBREC/PUBCOMP wait for the write and fdatasync of their records
    /// (batched per shard): nothing acknowledged is lost, even on power loss.
    #[default]
    Always,
    /// Acknowledged at once; what was logged is written and fdatasynced together
    /// every `fsync_interval_ms`: a crash of the process, or power loss, can lose
    /// up to one interval of acknowledged messages.
    Interval,
    /// Acknowledged at once; written as soon as the previous write completes
    /// (direct I/O, not through the page cache), never fdatasynced: a crash of the
    /// process can lose what was not yet written (about one batch), power loss
    /// whatever the device had not made durable itself.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "interval" => Ok(FsyncPolicy::Interval),
            "never" => Ok(FsyncPolicy::Never),
            _ => Err(format!("{s:?}: expected always, interval or never")),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?}: expected text or json")),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![SocketAddr::from(([0, 0, 0, 0], 1883))],
            listener: Vec::new(),
            cert: None,
            key: None,
            client_ca: None,
            require_client_cert: false,
            use_identity_as_username: false,
            shards: 0,
            max_packet_size: 1024 * 1024,
            max_inflight: 64,
            max_queued_messages: 1000,
            max_queued_bytes: 1024 * 1024,
            connect_timeout: 10.0,
            max_connections: 0,
            max_connect_rate: 0,
            max_retained_messages: 100_000,
            max_retained_payload: 1024 * 1024,
            write_buffer_high_water: 256 * 1024,
            mesh_channel_capacity: 32,
            park_idle_after_ms: 30,
            max_topic_levels: 128,
            max_topic_length: 4096,
            max_subscriptions_per_client: 1000,
            max_client_id_length: 1024,
            password_file: None,
            acl_file: None,
            allow_anonymous: None,
            proxy_protocol: false,
            persistent_client_expiration: 0,
            sys_interval: 10,
            metrics_listen: None,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            data_dir: None,
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 100,
            log_compaction_bytes: 256 * 1024 * 1024,
            max_keepalive: 0,
            receive_maximum: 65_535,
            max_session_expiry: u32::MAX,
            topic_alias_maximum: 10,
            maximum_qos: 2,
            retain_available: true,
            response_information: String::new(),
            bridge: Vec::new(),
            shared_subscription_strategy: SharedStrategy::RoundRobin,
        }
    }
}

/// The largest packet accepted with persistence on: a logged message must fit one
/// log record ([`crate::store::MAX_RECORD`], 16 MiB + 64 KiB, with room for the
/// record's own fields).
pub const MAX_PERSISTED_PACKET: usize = 16 * 1024 * 1024;

/// The largest packet MQTT can express: 268,435,455 bytes of remaining length plus a
/// 5-byte fixed header.
pub const MQTT_MAX_PACKET: usize = 268_435_455 + 5;

impl Config {
    /// Reads a TOML file; keys absent from it keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses TOML text (see [`Config`] for the keys). A file with `[[listener]]`
    /// tables and no `listeners` key listens only where its tables say.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let parse_error = |source| ConfigError::Parse {
            path: "<text>".into(),
            source: Box::new(source),
        };
        let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let explicit_listeners = table.contains_key("listeners");
        let mut c: Config = toml::from_str(text).map_err(parse_error)?;
        if !explicit_listeners && !c.listener.is_empty() {
            c.listeners.clear();
        }
        Ok(c)
    }

    /// Every listener, plain `listeners` first, then the `[[listener]]` tables, with
    /// the top-level keys filled in.
    pub fn listener_specs(&self) -> Vec<ListenerSpec> {
        let top_security = Security {
            password_file: self.password_file.clone(),
            acl_file: self.acl_file.clone(),
            allow_anonymous: self.allow_anonymous,
        };
        let mut specs: Vec<ListenerSpec> = self
            .listeners
            .iter()
            .map(|&address| ListenerSpec {
                address,
                transport: Transport::Tcp,
                path: "/mqtt".into(),
                tls: None,
                security: top_security.clone(),
                proxy_protocol: self.proxy_protocol,
            })
            .collect();
        for l in &self.listener {
            let tls = l.transport.uses_tls().then(|| TlsSettings {
                cert: l
                    .cert
                    .clone()
                    .or_else(|| self.cert.clone())
                    .unwrap_or_default(),
                key: l
                    .key
                    .clone()
                    .or_else(|| self.key.clone())
                    .unwrap_or_default(),
                client_ca: l.client_ca.clone().or_else(|| self.client_ca.clone()),
                require_client_cert: l.require_client_cert.unwrap_or(self.require_client_cert),
                use_identity_as_username: l
                    .use_identity_as_username
                    .unwrap_or(self.use_identity_as_username),
            });
            specs.push(ListenerSpec {
                address: l.address,
                transport: l.transport,
                path: l.path.clone().unwrap_or_else(|| "/mqtt".into()),
                tls,
                security: Security {
                    password_file: l
                        .password_file
                        .clone()
                        .or_else(|| self.password_file.clone()),
                    acl_file: l.acl_file.clone().or_else(|| self.acl_file.clone()),
                    allow_anonymous: l.allow_anonymous.or(self.allow_anonymous),
                },
                proxy_protocol: l.proxy_protocol.unwrap_or(self.proxy_protocol),
            });
        }
        specs
    }

    /// The connect timeout as a `Duration`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout)
    }

    /// What each connection's decoder enforces; `mqtt31` for a 3.1 (`MQIsdp`) client,
    /// `v5` for a 5.0 one.
    pub fn decode_options(&self, mqtt31: bool, v5: bool) -> crate::protocol::DecodeOptions {
        crate::protocol::DecodeOptions {
            max_packet_size: self.max_packet_size,
            max_topic_length: self.max_topic_length,
            max_topic_levels: self.max_topic_levels,
            max_client_id_length: self.max_client_id_length,
            mqtt31,
            v5,
        }
    }

    /// Number of shards to start: `shards`, or the CPUs this process may use.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    /// Checks every setting; the broker refuses to start on an invalid one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, why: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                why: why.into(),
            })
        }
        if self.listeners.is_empty() && self.listener.is_empty() {
            return invalid("listeners", "at least one listener is required");
        }
        for spec in self.listener_specs() {
            if spec.transport.uses_websocket() && !spec.path.starts_with('/') {
                return invalid(
                    "listener.path",
                    format!("{:?} must start with '/'", spec.path),
                );
            }
            if let Some(tls) = &spec.tls {
                if tls.cert.as_os_str().is_empty() || tls.key.as_os_str().is_empty() {
                    return invalid(
                        "cert",
                        format!("the TLS listener on {} needs cert and key", spec.address),
                    );
                }
                if tls.require_client_cert && tls.client_ca.is_none() {
                    return invalid(
                        "client_ca",
                        format!("{}: require_client_cert needs client_ca", spec.address),
                    );
                }
                if tls.use_identity_as_username && !tls.require_client_cert {
                    return invalid(
                        "use_identity_as_username",
                        format!("{}: needs require_client_cert", spec.address),
                    );
                }
            }
        }
        if self.shards > 1024 {
            return invalid("shards", "at most 1024 shards");
        }
        if self.max_packet_size < 16 || self.max_packet_size > MQTT_MAX_PACKET {
            return invalid(
                "max_packet_size",
                format!("must be between 16 and {MQTT_MAX_PACKET}"),
            );
        }
        if self.max_inflight == 0 {
            return invalid("max_inflight", "must be between 1 and 65535");
        }
        if self.maximum_qos > 2 {
            return invalid("maximum_qos", "must be 0, 1 or 2");
        }
        if self.receive_maximum == 0 {
            return invalid("receive_maximum", "must be between 1 and 65535");
        }
        if !(self.connect_timeout.is_finite() && self.connect_timeout > 0.0) {
            return invalid("connect_timeout", "must be a positive number of seconds");
        }
        if self.data_dir.is_some() && self.max_packet_size > MAX_PERSISTED_PACKET {
            return invalid(
                "max_packet_size",
                format!("at most {MAX_PERSISTED_PACKET} with data_dir (the log's record bound)"),
            );
        }
        if self.fsync_interval_ms == 0 || self.fsync_interval_ms > 60_000 {
            return invalid("fsync_interval_ms", "must be between 1 and 60000");
        }
        if self.write_buffer_high_water < 1024 {
            return invalid("write_buffer_high_water", "must be at least 1024");
        }
        if self.mesh_channel_capacity == 0 {
            return invalid("mesh_channel_capacity", "must be at least 1");
        }
        if self.park_idle_after_ms > 60_000 {
            return invalid("park_idle_after_ms", "at most 60000 (a minute)");
        }
        if self.max_topic_levels == 0 {
            return invalid("max_topic_levels", "must be at least 1");
        }
        if self.max_topic_length == 0 || self.max_topic_length > 65_535 {
            return invalid("max_topic_length", "must be between 1 and 65535");
        }
        if self.max_subscriptions_per_client == 0 {
            return invalid("max_subscriptions_per_client", "must be at least 1");
        }
        if self.max_client_id_length < 23 || self.max_client_id_length > 65_535 {
            // MQTT 3.1.1 requires a server to accept ids of 1 to 23 characters [MQTT-3.1.3-5].
            return invalid("max_client_id_length", "must be between 23 and 65535");
        }
        let mut names = std::collections::HashSet::new();
        for b in &self.bridge {
            b.validate().or_else(|why| invalid("bridge", why))?;
            if !names.insert(b.name.as_str()) {
                return invalid("bridge", format!("two bridges are named {:?}", b.name));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return invalid("log_level", format!("{:?}: {e}", self.log_level));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_listen_on_1883() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listeners, vec!["0.0.0.0:1883".parse().unwrap()]);
    }

    #[test]
    fn toml_keys_override_defaults_and_others_keep_them() {
        let c = Config::from_toml(
            "listeners = [\"127.0.0.1:1999\"]\nshards = 3\nmax_inflight = 10\nconnect_timeout = 2.5\n",
        )
        .unwrap();
        assert_eq!(c.shards, 3);
        assert_eq!(c.max_inflight, 10);
        assert_eq!(c.connect_timeout(), Duration::from_millis(2500));
        assert_eq!(c.max_queued_messages, Config::default().max_queued_messages);
    }

    #[test]
    fn the_example_file_lists_the_defaults() {
        let c = Config::from_toml(include_str!("../shardmq.example.toml")).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn listener_tables_take_top_level_defaults_and_replace_the_default_listener() {
        let c = Config::from_toml(
            r#"
cert = "/etc/c.pem"
key = "/etc/k.pem"
password_file = "/etc/pw"

[[listener]]
address = "0.0.0.0:8883"
transport = "tls"
allow_anonymous = true

[[listener]]
address = "127.0.0.1:8080"
transport = "ws"
path = "/ws"
password_file = "/etc/pw2"
"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert!(
            c.listeners.is_empty(),
            "no default 1883 when tables are given"
        );
        let specs = c.listener_specs();
        assert_eq!(specs.len(), 2);
        let tls = specs[0].tls.as_ref().unwrap();
        assert_eq!(tls.cert, PathBuf::from("/etc/c.pem"));
        assert!(!tls.require_client_cert);
        assert_eq!(
            specs[0].security.password_file,
            Some(PathBuf::from("/etc/pw"))
        );
        assert!(specs[0].security.anonymous_allowed());
        assert_eq!(
            (specs[1].transport, specs[1].path.as_str()),
            (Transport::Ws, "/ws")
        );
        assert!(specs[1].tls.is_none());
        assert_eq!(
            specs[1].security.password_file,
            Some(PathBuf::from("/etc/pw2"))
        );
        assert!(!specs[1].security.anonymous_allowed());
        // Both kinds together.
        let c = Config::from_toml(
            "listeners = [\"127.0.0.1:1883\"]\n[[listener]]\naddress = \"127.0.0.1:9001\"\ntransport = \"ws\"\n",
        )
        .unwrap();
        assert_eq!(c.listener_specs().len(), 2);
    }

    #[test]
    fn tls_listeners_need_their_files() {
        let mut c = Config::default();
        c.listener.push(ListenerConfig::new(
            "127.0.0.1:8883".parse().unwrap(),
            Transport::Tls,
        ));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid { key: "cert", .. })
        ));
        c.cert = Some("c".into());
        c.key = Some("k".into());
        c.validate().unwrap();
        c.require_client_cert = true;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                key: "client_ca",
                ..
            })
        ));
        c.client_ca = Some("ca".into());
        c.use_identity_as_username = true;
        c.validate().unwrap();
        c.require_client_cert = false;
        assert!(c.validate().is_err());
    }

    #[test]
    fn unknown_key_is_an_error() {
        assert!(Config::from_toml("max_inflite = 3").is_err());
    }

    #[test]
    fn topic_and_client_id_limits_are_checked() {
        for (key, c) in [
            (
                "max_topic_levels",
                Config {
                    max_topic_levels: 0,
                    ..Config::default()
                },
            ),
            (
                "max_topic_length",
                Config {
                    max_topic_length: 65_536,
                    ..Config::default()
                },
            ),
            (
                "max_subscriptions_per_client",
                Config {
                    max_subscriptions_per_client: 0,
                    ..Config::default()
                },
            ),
            (
                "max_client_id_length",
                Config {
                    max_client_id_length: 22,
                    ..Config::default()
                },
            ),
        ] {
            match c.validate() {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
        let c = Config::from_toml("max_topic_levels = 8\nmax_client_id_length = 64\n").unwrap();
        assert_eq!((c.max_topic_levels, c.max_client_id_length), (8, 64));
        let d = c.decode_options(true, false);
        assert_eq!(
            (d.max_topic_levels, d.max_client_id_length, d.mqtt31),
            (8, 64, true)
        );
    }

    #[test]
    fn bridge_tables_are_read_with_mosquittos_defaults() {
        let c = Config::from_toml(
            r#"
[[bridge]]
name = "cloud"
address = "mqtt.example.com:8883"
transport = "tls"
ca = "/etc/shardmq/cloud-ca.pem"
username = "site1"
password = "secret"
topics = [
  { pattern = "sensors/#", direction = "out", qos = 1, local_prefix = "", remote_prefix = "site1/" },
  { pattern = "cmd/#", direction = "in", qos = 2, remote_prefix = "site1/" },
  { pattern = "status" },
]
"#,
        )
        .unwrap();
        c.validate().unwrap();
        let b = &c.bridge[0];
        assert_eq!(b.remote_client_id(), "cloud");
        assert_eq!(b.local_client_id(), "local.cloud");
        assert_eq!(
            (b.keepalive, b.clean_session, b.try_private),
            (60, false, true)
        );
        assert_eq!(b.protocol, "3.1.1");
        assert_eq!(b.topics[1].remote_filter(), "site1/cmd/#");
        assert_eq!(b.topics[1].local_filter(), "cmd/#");
        // Mosquitto's defaults: out, QoS 0, no prefixes.
        assert_eq!(b.topics[2].direction, Direction::Out);
        assert_eq!(b.topics[2].qos, 0);
    }

    #[test]
    fn the_example_files_bridge_block_is_valid_once_uncommented() {
        let example = include_str!("../shardmq.example.toml");
        let block = &example[example.find("# [[bridge]]").unwrap()..];
        let text: String = block
            .lines()
            .map(|l| {
                let l = l.strip_prefix("# ").unwrap_or(l);
                // The comment after the value.
                match l.find("  #") {
                    Some(i) => &l[..i],
                    None => l,
                }
                .to_string()
                    + "\n"
            })
            .collect();
        let c = Config::from_toml(&text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.bridge[0].name, "cloud");
        assert_eq!(c.bridge[0].topics.len(), 2);
    }

    #[test]
    fn bad_bridge_settings_are_refused_with_the_reason() {
        let base = || BridgeConfig {
            name: "b".into(),
            address: "127.0.0.1:1883".into(),
            transport: BridgeTransport::Tcp,
            ca: None,
            cert: None,
            key: None,
            client_id: None,
            username: None,
            password: None,
            clean_session: false,
            keepalive: 60,
            protocol: "3.1.1".into(),
            try_private: true,
            reconnect_delay_min: 1.0,
            reconnect_delay_max: 30.0,
            topics: vec![BridgeTopic {
                pattern: "#".into(),
                direction: Direction::Both,
                qos: 1,
                local_prefix: String::new(),
                remote_prefix: String::new(),
            }],
        };
        let check = |b: BridgeConfig| {
            let c = Config {
                bridge: vec![b],
                ..Config::default()
            };
            match c.validate() {
                Err(ConfigError::Invalid { key: "bridge", why }) => why,
                other => panic!("{other:?}"),
            }
        };
        Config {
            bridge: vec![base()],
            ..Config::default()
        }
        .validate()
        .unwrap();
        Config {
            bridge: vec![BridgeConfig {
                protocol: "5.0".into(),
                ..base()
            }],
            ..Config::default()
        }
        .validate()
        .unwrap();
        let why = check(BridgeConfig {
            protocol: "4".into(),
            ..base()
        });
        assert!(why.contains("\"5.0\""), "{why}");
        assert!(check(BridgeConfig {
            address: "nowhere".into(),
            ..base()
        })
        .contains("host:port"));
        assert!(check(BridgeConfig {
            transport: BridgeTransport::Tls,
            ..base()
        })
        .contains("needs ca"));
        assert!(check(BridgeConfig {
            name: "a/b".into(),
            ..base()
        })
        .contains("name"));
        assert!(check(BridgeConfig {
            topics: Vec::new(),
            ..base()
        })
        .contains("topic"));
        let mut bad_qos = base();
        bad_qos.topics[0].qos = 3;
        assert!(check(bad_qos).contains("qos"));
        let mut bad_filter = base();
        bad_filter.topics[0].pattern = "a/#/b".into();
        assert!(check(bad_filter).contains("not a valid topic filter"));
        let mut wild_prefix = base();
        wild_prefix.topics[0].local_prefix = "+/".into();
        assert!(check(wild_prefix).contains("wildcards"));
        assert!(check(BridgeConfig {
            password: Some("p".into()),
            ..base()
        })
        .contains("password needs username"));
        let twice = Config {
            bridge: vec![base(), base()],
            ..Config::default()
        };
        assert!(twice.validate().is_err());
        assert!(Config::from_toml(
            "[[bridge]]\nname = \"x\"\naddress = \"h:1\"\ntopics = []\nprotocoll = \"3.1.1\"\n"
        )
        .is_err());
    }

    #[test]
    fn zero_inflight_is_rejected() {
        let c = Config {
            max_inflight: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}

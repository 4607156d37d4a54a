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

/// The whole configuration of one broker. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// TCP addresses to accept MQTT connections on; every shard binds each one.
    pub listeners: Vec<SocketAddr>,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![SocketAddr::from(([0, 0, 0, 0], 1883))],
            shards: 0,
            max_packet_size: 1024 * 1024,
            max_inflight: 64,
            max_queued_messages: 1000,
            max_queued_bytes: 1024 * 1024,
            connect_timeout: 10.0,
            max_connections: 0,
            max_retained_messages: 100_000,
            max_retained_payload: 1024 * 1024,
            write_buffer_high_water: 256 * 1024,
            mesh_channel_capacity: 32,
            max_topic_levels: 128,
            max_topic_length: 4096,
            max_subscriptions_per_client: 1000,
            max_client_id_length: 1024,
            password_file: None,
            acl_file: None,
            allow_anonymous: None,
        }
    }
}

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

    /// Parses TOML text (see [`Config`] for the keys).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<text>".into(),
            source: Box::new(source),
        })
    }

    /// The connect timeout as a `Duration`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout)
    }

    /// What each connection's decoder enforces; `mqtt31` for a 3.1 (`MQIsdp`) client.
    pub fn decode_options(&self, mqtt31: bool) -> crate::protocol::DecodeOptions {
        crate::protocol::DecodeOptions {
            max_packet_size: self.max_packet_size,
            max_topic_length: self.max_topic_length,
            max_topic_levels: self.max_topic_levels,
            max_client_id_length: self.max_client_id_length,
            mqtt31,
        }
    }

    /// Whether clients without a username are accepted, once the default is applied.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.password_file.is_none())
    }

    /// Whether any security file or setting is configured (else everyone may do
    /// everything, at no cost per message).
    pub fn has_security(&self) -> bool {
        self.password_file.is_some() || self.acl_file.is_some() || self.allow_anonymous.is_some()
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
        if self.listeners.is_empty() {
            return invalid("listeners", "at least one listener is required");
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
        if !(self.connect_timeout.is_finite() && self.connect_timeout > 0.0) {
            return invalid("connect_timeout", "must be a positive number of seconds");
        }
        if self.write_buffer_high_water < 1024 {
            return invalid("write_buffer_high_water", "must be at least 1024");
        }
        if self.mesh_channel_capacity == 0 {
            return invalid("mesh_channel_capacity", "must be at least 1");
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
        let d = c.decode_options(true);
        assert_eq!(
            (d.max_topic_levels, d.max_client_id_length, d.mqtt31),
            (8, 64, true)
        );
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

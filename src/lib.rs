//! shardmq: a thread-per-core MQTT 3.1.1 (and 3.1) broker.
//!
//! [`Broker`] runs the whole broker inside any program: N shards, each a glommio
//! executor pinned to a CPU, every one accepting on every listener. Read the modules
//! in data-flow order: `protocol` (bytes ↔ packets), `topic` (filter trie),
//! `session` (one client's protocol state), `shard` (routing between sessions and
//! shards), `net` (sockets).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = shardmq::Broker::builder()
//!     .listen("127.0.0.1:0".parse()?)
//!     .shards(2)
//!     .start()?;
//! println!("listening on {}", broker.local_addr());
//! assert_eq!(broker.stats().total().connections, 0);
//! broker.shutdown();
//! # Ok(())
//! # }
//! ```

mod affinity;
pub mod auth;
mod bridge;
pub mod config;
pub mod fuzz_support;
mod hash;
pub(crate) mod link;
pub mod message;
mod metrics;
mod net;
pub mod protocol;
mod runtime;
pub mod session;
mod shard;
pub mod store;
pub mod topic;

/// Internals the criterion benches drive directly (the cross-shard hand-off); not a
/// stable API.
#[doc(hidden)]
pub mod bench_support {
    pub use crate::affinity::allowed_cpus;
    pub use crate::runtime::flusher;
    pub use crate::shard::mesh::{Batch, MeshMsg, Outbox};
    pub use crate::shard::Backpressure;
}

pub use auth::{AllowAll, AuthError, Authenticator, FileAuth, Rights};
pub use config::{Config, ConfigError};
pub use shard::home_shard;
pub use shard::stats::{BrokerStats, DisconnectReason, ShardStats};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement, PoolPlacement};
use runtime::{Control, ShardInit};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Thread names of shard executors start with this.
const SHARD_THREAD_PREFIX: &str = "shardmq-";

/// A panic on a shard thread aborts the whole process, after logging it.
///
/// A shard owns its sessions, its part of the routing state and its share of the
/// connections. A shard that died and left the others running would make its clients
/// hang, and their messages would vanish while the broker still looked alive. So a
/// panic anywhere in a shard (a bug: client input never panics) logs an error with
/// the shard, the message and the location, lets the previous hook print its report,
/// and aborts, so that a supervisor restarts the broker. Panics on other threads (an
/// embedding application's) go to the previous hook unchanged. Installed once per
/// process, by the first `Broker::start`.
fn abort_on_shard_panic() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            if !name.starts_with(SHARD_THREAD_PREFIX) {
                return previous(info);
            }
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let location = info.location().map(|l| l.to_string()).unwrap_or_default();
            tracing::error!(shard = name, %location, "panic in a shard, aborting: {msg}");
            previous(info);
            std::process::abort();
        }));
    });
}

/// Memory glommio reserves per executor for storage I/O; the broker does none.
const IO_MEMORY: usize = 512 * 1024;
/// Submission queue depth of each shard's io_uring rings (glommio's default is
/// 128). The kernel sizes a ring's table of cancellable requests from it (up to
/// 256 buckets at 4096 and more); with the default's 8 buckets, every read that
/// is cancelled (a connection handed to its home shard, a connection closing)
/// walks a chain of one in eight of all the connections waiting to read, which
/// made cancellation a fifth of the broker's CPU in a storm of 15 000 clients.
const RING_DEPTH: usize = 4096;

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start shard {shard}: {why}")]
    Shard { shard: usize, why: String },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tls(#[from] net::tls::TlsError),
    #[error(transparent)]
    Data(#[from] store::generation::DataDirError),
}

/// State every shard may read: the configuration, the listeners as they started,
/// and the one process-wide count (open connections, for `max_connections`; touched
/// once per connection, never per message).
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub listeners: Arc<[link::Listener]>,
    /// The bridges, each run by the home shard of its session.
    pub bridges: Vec<Arc<bridge::BridgeSpec>>,
    connections: AtomicUsize,
    /// `Config::max_connections`, as last reloaded.
    max_connections: AtomicUsize,
    /// The most connections open at once.
    peak: AtomicUsize,
}

/// Every listener's runtime state: its authenticator (the embedder's, or one per
/// distinct set of security files, else [`AllowAll`]) and its TLS configuration.
fn build_listeners(
    config: &Config,
    custom: Option<&Arc<dyn Authenticator>>,
) -> Result<Arc<[link::Listener]>, StartError> {
    let mut by_files: Vec<(config::Security, Arc<dyn Authenticator>)> = Vec::new();
    let mut out = Vec::new();
    for spec in config.listener_specs() {
        let auth: Arc<dyn Authenticator> = match custom {
            Some(a) => a.clone(),
            None if !spec.security.is_set() => Arc::new(AllowAll),
            None => match by_files.iter().find(|(s, _)| *s == spec.security) {
                Some((_, a)) => a.clone(),
                None => {
                    let s = &spec.security;
                    let a: Arc<dyn Authenticator> = Arc::new(FileAuth::load(
                        s.password_file.as_deref(),
                        s.acl_file.as_deref(),
                        s.allow_anonymous,
                    )?);
                    by_files.push((spec.security.clone(), a.clone()));
                    a
                }
            },
        };
        let tls = match &spec.tls {
            Some(t) => Some(net::tls::server_config(t)?),
            None => None,
        };
        out.push(link::Listener { spec, auth, tls });
    }
    Ok(out.into())
}

/// Every bridge's runtime settings (its TLS files read).
fn build_bridges(config: &Config) -> Result<Vec<Arc<bridge::BridgeSpec>>, StartError> {
    config
        .bridge
        .iter()
        .map(|b| {
            bridge::BridgeSpec::new(b).map(Arc::new).map_err(|e| {
                StartError::Config(ConfigError::Invalid {
                    key: "bridge",
                    why: format!("{}: {e}", b.name),
                })
            })
        })
        .collect()
}

impl Shared {
    /// The most connections open at once since start.
    pub fn peak_connections(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// A slot for a new connection, or `None` at `max_connections`.
    pub fn acquire_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let prev = self.connections.fetch_add(1, Ordering::Relaxed);
        let max = self.max_connections.load(Ordering::Relaxed);
        if max > 0 && prev >= max {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.peak.fetch_max(prev + 1, Ordering::Relaxed);
        Some(ConnectionSlot(self.clone()))
    }
}

/// One connection counted against `max_connections`, released when dropped on
/// whichever shard the connection ends.
pub struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Builds a [`Broker`]: start from defaults or a [`Config`], adjust, `start()`.
#[derive(Default)]
pub struct BrokerBuilder {
    config: Config,
    listeners_set: bool,
    auth: Option<Arc<dyn Authenticator>>,
}

impl BrokerBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self.listeners_set = true;
        self
    }

    /// Adds a listener; the first call replaces the default `0.0.0.0:1883`.
    /// Port 0 picks a free port, shared by every shard.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        if !self.listeners_set {
            self.config.listeners.clear();
            self.listeners_set = true;
        }
        self.config.listeners.push(addr);
        self
    }

    /// Number of shards (0: one per CPU).
    pub fn shards(mut self, n: usize) -> Self {
        self.config.shards = n;
        self
    }

    /// Plugs in authentication and authorisation, in place of the configuration's
    /// password and ACL files.
    pub fn authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Adjusts any other setting.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    pub fn start(self) -> Result<Broker, StartError> {
        Broker::start_with(self.config, self.auth)
    }
}

/// A running broker. Dropping it shuts it down.
pub struct Broker {
    addrs: Vec<SocketAddr>,
    controls: Vec<crossbeam_channel::Sender<Control>>,
    handles: Vec<ExecutorJoinHandle<()>>,
    /// The configuration in force (replaced by [`Broker::reconfigure`]); the
    /// `$SYS` publisher reads it too.
    config: Arc<Mutex<Arc<Config>>>,
    shared: Arc<Shared>,
    /// The embedder's authenticator, used on every listener in place of files.
    custom_auth: Option<Arc<dyn Authenticator>>,
    /// The `$SYS` publisher and the metrics endpoint, when running.
    metrics: Option<metrics::Running>,
    /// The data directory, locked while the broker runs (persistence on).
    data: Option<store::generation::DataDir>,
    /// The thread that has the log compacted (and holds the data directory while
    /// the broker serves).
    compactor: Option<Compactor>,
}

struct Compactor {
    stop: crossbeam_channel::Sender<()>,
    handle: std::thread::JoinHandle<store::generation::DataDir>,
}

/// How often the compactor looks at the log's size.
const COMPACTION_CHECK: Duration = Duration::from_secs(2);

/// Has every shard's log compacted when it outgrows `log_compaction_bytes` and
/// twice its live state; returns the data directory when told to stop.
fn compactor(
    mut dir: store::generation::DataDir,
    controls: Vec<crossbeam_channel::Sender<Control>>,
    threshold: u64,
    stop: crossbeam_channel::Receiver<()>,
) -> store::generation::DataDir {
    let n = controls.len();
    loop {
        match stop.recv_timeout(COMPACTION_CHECK) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return dir,
        }
        let (tx, rx) = crossbeam_channel::bounded(n);
        for c in &controls {
            let _ = c.send(Control::Stats(tx.clone()));
        }
        let (mut size, mut live) = (0u64, 0u64);
        for _ in 0..n {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(s) => {
                    size += s.log_bytes;
                    live += s.log_snapshot_bytes;
                }
                Err(_) => return dir,
            }
        }
        if size < threshold || size < live.saturating_mul(2) {
            continue;
        }
        let t0 = std::time::Instant::now();
        let next = match dir.prepare_next(n) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot prepare the log's compaction");
                continue;
            }
        };
        let gen_dir = store::generation::generation_dir(dir.path(), next);
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        for c in &controls {
            let _ = c.send(Control::Compact(gen_dir.clone(), done_tx.clone()));
        }
        for _ in 0..n {
            if done_rx.recv_timeout(Duration::from_secs(300)).is_err() {
                // Shards now log into a generation that is not current.
                tracing::error!("a shard did not finish the log's compaction; stopping");
                std::process::abort();
            }
        }
        if let Err(e) = dir.switch(next, false) {
            tracing::error!(error = %e, "cannot make the compacted log current; stopping");
            std::process::abort();
        }
        for c in &controls {
            let _ = c.send(Control::Resume);
        }
        tracing::info!(
            generation = next,
            bytes_before = size,
            ms = t0.elapsed().as_millis() as u64,
            "log compacted"
        );
    }
}

/// What [`Broker::reconfigure`] did: the keys it applied and the keys whose new
/// values wait for a restart (the running broker keeps the old ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfigured {
    pub applied: Vec<String>,
    pub need_restart: Vec<String>,
}

/// Keys a running broker cannot change: its sockets, threads and channels.
const RESTART_KEYS: &[&str] = &[
    "shards",
    "mesh_channel_capacity",
    "park_idle_after_ms",
    "metrics_listen",
    "log_format",
    "data_dir",
    "fsync",
    "fsync_interval_ms",
    "log_compaction_bytes",
    "bridge",
];

impl Broker {
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// Checks a configuration as `start` would, without starting anything: every
    /// setting, and every password, ACL, certificate and key file it names.
    pub fn check(config: &Config) -> Result<(), StartError> {
        config.validate()?;
        build_listeners(config, None)?;
        build_bridges(config)?;
        Ok(())
    }

    /// Starts a broker with this configuration: its password and ACL files, if any,
    /// decide who may connect through each listener and what each client may do.
    pub fn start(config: Config) -> Result<Broker, StartError> {
        Broker::start_with(config, None)
    }

    fn start_with(
        config: Config,
        custom_auth: Option<Arc<dyn Authenticator>>,
    ) -> Result<Broker, StartError> {
        config.validate()?;
        let listeners = build_listeners(&config, custom_auth.as_ref())?;
        let bridges = build_bridges(&config)?;
        abort_on_shard_panic();
        let n = config.shard_count();
        let shared = Arc::new(Shared {
            max_connections: AtomicUsize::new(config.max_connections),
            config: Arc::new(config),
            listeners,
            bridges,
            connections: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let mesh = (n > 1).then(|| MeshBuilder::full(n, shared.config.mesh_channel_capacity));
        let cpus = affinity::allowed_cpus();
        let mut broker = Broker {
            addrs: Vec::new(),
            controls: Vec::new(),
            handles: Vec::new(),
            config: Arc::new(Mutex::new(shared.config.clone())),
            shared: shared.clone(),
            custom_auth,
            metrics: None,
            data: None,
            compactor: None,
        };
        // Persistence: read the current generation, prepare the next one; every
        // shard writes its part of the state there before anyone is served.
        let mut restore = None;
        let mut damaged = false;
        let mut next_generation = 0;
        let (restored_tx, restored_rx) = match &shared.config.data_dir {
            Some(path) => {
                let t0 = std::time::Instant::now();
                let (dir, mut restored, report) = store::generation::DataDir::open(path)?;
                // 5.0 sessions whose expiry ran out while the broker was down.
                let expired_sessions = restored.expire_sessions(shard::retained::now_us());
                for d in &report.damage {
                    tracing::warn!(damage = %d, "log damage set aside");
                }
                damaged = !report.damage.is_empty();
                tracing::info!(
                    dir = %path.display(),
                    generation = dir.generation(),
                    segments = report.segments,
                    bytes = report.bytes,
                    records = report.records,
                    sessions = restored.sessions.len(),
                    expired_sessions,
                    retained = restored.retained.len(),
                    queued = restored.sessions.iter().map(|s| s.inflight.len() + s.queued.len()).sum::<usize>(),
                    bad_records = restored.bad_records,
                    ms = t0.elapsed().as_millis() as u64,
                    "recovered persistent state"
                );
                next_generation = dir.prepare_next(n)?;
                restore = Some(Arc::new(restored));
                broker.data = Some(dir);
                let (tx, rx) = crossbeam_channel::unbounded();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        for i in 0..n {
            let (control_tx, control_rx) = crossbeam_channel::unbounded();
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            // The first shard binds what was asked (port 0 included); the others bind
            // the addresses it got, so all share each port through SO_REUSEPORT.
            let listen = if i == 0 {
                shared.listeners.iter().map(|l| l.spec.address).collect()
            } else {
                broker.addrs.clone()
            };
            let init = ShardInit {
                shards: n,
                shared: shared.clone(),
                listen,
                mesh: mesh.clone(),
                control: control_rx,
                ready: ready_tx,
                store: match (&broker.data, &restore, &restored_tx) {
                    (Some(dir), Some(r), Some(tx)) => Some(runtime::StoreInit {
                        data_dir: dir.path().to_owned(),
                        generation: next_generation,
                        restored: r.clone(),
                        restored_tx: tx.clone(),
                    }),
                    _ => None,
                },
            };
            let placement = match &cpus {
                Some(cpus) if !cpus.is_empty() => Placement::Fixed(cpus[i % cpus.len()]),
                _ => Placement::Unbound,
            };
            let spawned = LocalExecutorBuilder::new(placement)
                .name(&format!("{SHARD_THREAD_PREFIX}{i}"))
                .io_memory(IO_MEMORY)
                .ring_depth(RING_DEPTH)
                // Two blocking threads: one waits on the shard's parked connections
                // (`net::park`) while the other hashes passwords.
                .blocking_thread_pool_placement(PoolPlacement::Unbound(2))
                .spawn(move || runtime::run(init));
            let handle = match spawned {
                Ok(h) => h,
                Err(e) => {
                    broker.stop();
                    return Err(StartError::Shard {
                        shard: i,
                        why: e.to_string(),
                    });
                }
            };
            broker.controls.push(control_tx);
            broker.handles.push(handle);
            match ready_rx.recv() {
                Ok(Ok(bound)) => {
                    if i == 0 {
                        broker.addrs = bound;
                    }
                }
                Ok(Err((addr, source))) => {
                    broker.stop();
                    return Err(StartError::Bind { addr, source });
                }
                Err(_) => {
                    broker.stop();
                    return Err(StartError::Shard {
                        shard: i,
                        why: "exited during start".into(),
                    });
                }
            }
        }
        for c in &broker.controls {
            let _ = c.send(Control::Go);
        }
        if let (Some(rx), Some(dir)) = (restored_rx, broker.data.as_mut()) {
            // Every shard has made its snapshot durable: the new generation is
            // complete, and becomes the current one before anyone is served.
            for i in 0..n {
                if rx.recv().is_err() {
                    broker.stop();
                    return Err(StartError::Shard {
                        shard: i,
                        why: "exited while writing its snapshot".into(),
                    });
                }
            }
            if let Err(e) = dir.switch(next_generation, damaged) {
                broker.stop();
                return Err(e.into());
            }
            drop(restore);
            for c in &broker.controls {
                let _ = c.send(Control::Serve);
            }
        }
        if let Some(dir) = broker.data.take() {
            let (stop, stop_rx) = crossbeam_channel::bounded(1);
            let controls = broker.controls.clone();
            let threshold = shared.config.log_compaction_bytes;
            let handle = std::thread::Builder::new()
                .name("shardmq-compactor".into())
                .spawn(move || compactor(dir, controls, threshold, stop_rx))
                .map_err(|e| StartError::Shard {
                    shard: 0,
                    why: format!("cannot start the compactor thread: {e}"),
                })?;
            broker.compactor = Some(Compactor { stop, handle });
        }
        match metrics::start(
            broker.controls.clone(),
            broker.config.clone(),
            broker.shared.clone(),
        ) {
            Ok(m) => broker.metrics = Some(m),
            Err((addr, source)) => {
                broker.stop();
                return Err(StartError::Bind { addr, source });
            }
        }
        Ok(broker)
    }

    /// The metrics endpoint's bound address, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.http_addr())
    }

    /// The first listener's bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every listener's bound address, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> Arc<Config> {
        self.current_config()
    }

    fn current_config(&self) -> Arc<Config> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Number of shards running.
    pub fn shards(&self) -> usize {
        self.handles.len()
    }

    /// A snapshot of every shard's counters and gauges.
    pub fn stats(&self) -> BrokerStats {
        let mut shards = Vec::with_capacity(self.controls.len());
        for c in &self.controls {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if c.send(Control::Stats(tx)).is_ok() {
                if let Ok(s) = rx.recv_timeout(Duration::from_secs(5)) {
                    shards.push(s);
                }
            }
        }
        BrokerStats { shards }
    }

    /// Reads the password files, ACL files, certificates and keys again (SIGHUP).
    /// On success every shard switches to them, and this returns once all have: new
    /// connections are checked against the new passwords and handshake with the new
    /// certificates, existing connections stay, and every session, connected or not,
    /// gets its rights from the new ACLs. On failure (an unreadable file, a bad line)
    /// nothing changes. An embedder's authenticator is kept as it is.
    pub fn reload(&self) -> Result<(), StartError> {
        let listeners = build_listeners(&self.current_config(), self.custom_auth.as_ref())?;
        self.set_listeners(listeners, None);
        Ok(())
    }

    /// Switches to a new configuration (SIGHUP with a config file): checks it
    /// whole, reads every file it names, and on success applies what can change at
    /// run time (limits, `sys_interval`, `log_level` as far as the broker is
    /// concerned, `persistent_client_expiration`, password, ACL, certificate and
    /// key files) and keeps the running values of what needs a restart (listeners
    /// added, removed or moved, `shards`, `mesh_channel_capacity`, `park_idle_after_ms`,
    /// `metrics_listen`, `log_format`), naming both. On failure nothing changes.
    pub fn reconfigure(&self, new: Config) -> Result<Reconfigured, StartError> {
        new.validate()?;
        let old = self.current_config();
        let mut new = new;
        let mut report = Reconfigured::default();
        let endpoints = |c: &Config| -> Vec<(SocketAddr, config::Transport)> {
            c.listener_specs()
                .iter()
                .map(|s| (s.address, s.transport))
                .collect()
        };
        let old_table = config_table(&old);
        let new_table = config_table(&new);
        let mut keys: Vec<&String> = old_table.keys().chain(new_table.keys()).collect();
        keys.sort();
        keys.dedup();
        let moved = endpoints(&old) != endpoints(&new);
        for key in keys {
            if old_table.get(key) == new_table.get(key) {
                continue;
            }
            let restart = RESTART_KEYS.contains(&key.as_str())
                || (moved && (key == "listeners" || key == "listener"));
            if restart {
                report.need_restart.push(key.clone());
            } else {
                report.applied.push(key.clone());
            }
        }
        new.shards = old.shards;
        new.mesh_channel_capacity = old.mesh_channel_capacity;
        new.park_idle_after_ms = old.park_idle_after_ms;
        new.metrics_listen = old.metrics_listen;
        new.log_format = old.log_format;
        new.data_dir = old.data_dir.clone();
        new.fsync = old.fsync;
        new.fsync_interval_ms = old.fsync_interval_ms;
        new.log_compaction_bytes = old.log_compaction_bytes;
        new.bridge = old.bridge.clone();
        if moved {
            new.listeners = old.listeners.clone();
            new.listener = old.listener.clone();
        }
        let listeners = build_listeners(&new, self.custom_auth.as_ref())?;
        let new = Arc::new(new);
        self.shared
            .max_connections
            .store(new.max_connections, Ordering::Relaxed);
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = new.clone();
        self.set_listeners(listeners, Some(new));
        Ok(report)
    }

    /// Switches every listener to `auth` in place of the configuration's files.
    pub fn set_authenticator(&self, auth: Arc<dyn Authenticator>) -> Result<(), StartError> {
        let listeners = build_listeners(&self.current_config(), Some(&auth))?;
        self.set_listeners(listeners, None);
        Ok(())
    }

    fn set_listeners(&self, listeners: Arc<[link::Listener]>, config: Option<Arc<Config>>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut sent = 0;
        for c in &self.controls {
            if c.send(Control::Reload(
                listeners.clone(),
                config.clone(),
                tx.clone(),
            ))
            .is_ok()
            {
                sent += 1;
            }
        }
        for _ in 0..sent {
            if rx.recv_timeout(Duration::from_secs(5)).is_err() {
                break;
            }
        }
    }

    /// Closes every connection and stops every shard; returns when all have exited.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(m) = self.metrics.take() {
            m.stop();
        }
        // A compaction in progress finishes first; the data directory stays
        // locked until every shard has stopped.
        if let Some(c) = self.compactor.take() {
            let _ = c.stop.send(());
            if let Ok(dir) = c.handle.join() {
                self.data = Some(dir);
            }
        }
        for c in self.controls.drain(..) {
            let _ = c.send(Control::Shutdown);
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        self.data = None;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A configuration as its TOML table, to compare key by key.
fn config_table(c: &Config) -> toml::Table {
    toml::Table::try_from(c).unwrap_or_default()
}

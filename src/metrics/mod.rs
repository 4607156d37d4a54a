//! What an operator sees without a debugger (DESIGN §12): the retained `$SYS`
//! topics and the Prometheus endpoint. Both run on threads of their own and are fed
//! by stats snapshots each shard answers on its control poll, so neither ever
//! blocks a shard: a shard only clones its counters.

mod http;
mod prom;
pub(crate) mod sys;

use crate::runtime::Control;
use crate::{BrokerStats, Config};
use crossbeam_channel::Sender;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a gatherer waits for each shard's snapshot. A shard answers on its next
/// control poll (every 20 ms) unless it is stuck.
pub(crate) const SHARD_ANSWER: Duration = Duration::from_secs(2);

/// Asks every shard for its stats.
#[derive(Clone)]
pub(crate) struct Gatherer {
    controls: Vec<Sender<Control>>,
}

/// The shards' answers: every snapshot received, and which shards answered.
pub(crate) struct Gathered {
    pub stats: BrokerStats,
    pub answered: Vec<bool>,
}

impl Gatherer {
    pub fn gather(&self) -> Gathered {
        let deadline = Instant::now() + SHARD_ANSWER;
        // Ask all first, then collect: the shards answer in parallel.
        let asked: Vec<_> = self
            .controls
            .iter()
            .map(|c| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                c.send(Control::Stats(tx)).ok().map(|()| rx)
            })
            .collect();
        let mut stats = BrokerStats::default();
        let mut answered = Vec::with_capacity(asked.len());
        for rx in asked {
            match rx.and_then(|rx| rx.recv_deadline(deadline).ok()) {
                Some(s) => {
                    stats.shards.push(s);
                    answered.push(true);
                }
                None => answered.push(false),
            }
        }
        Gathered { stats, answered }
    }

    /// Publishes messages as the broker, through shard 0.
    pub fn publish(&self, msgs: Vec<crate::message::Message>) {
        if let Some(c) = self.controls.first() {
            let _ = c.send(Control::SysPublish(msgs));
        }
    }
}

/// Broker-wide values the shards do not hold.
pub(crate) struct Process {
    pub started: Instant,
    pub version: &'static str,
    pub shared: Option<Arc<crate::Shared>>,
}

impl Process {
    /// The most connections open at once since start.
    pub fn peak_connections(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.peak_connections() as u64)
    }
}

/// The running `$SYS` publisher and metrics endpoint.
pub(crate) struct Running {
    stop: Arc<AtomicBool>,
    sys: Option<JoinHandle<()>>,
    http: Option<http::Server>,
}

impl Running {
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.addr)
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.http.take() {
            h.stop();
        }
        if let Some(t) = self.sys.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Starts the `$SYS` publisher (always: `sys_interval` 0 only pauses it, and a
/// reload may change it) and, if `metrics_listen` is set, the HTTP endpoint.
pub(crate) fn start(
    controls: Vec<Sender<Control>>,
    config: Arc<Mutex<Arc<Config>>>,
    shared: Arc<crate::Shared>,
) -> Result<Running, (SocketAddr, std::io::Error)> {
    let gatherer = Gatherer { controls };
    let process = Arc::new(Process {
        started: Instant::now(),
        version: env!("CARGO_PKG_VERSION"),
        shared: Some(shared),
    });
    let listen = config
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .metrics_listen;
    let http = match listen {
        Some(addr) => Some(http::Server::start(
            addr,
            gatherer.clone(),
            process.clone(),
        )?),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sys = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("shardmq-sys".into())
            .spawn(move || sys::run(gatherer, config, process, stop))
            .map_err(|e| (SocketAddr::from(([0, 0, 0, 0], 0)), e))?
    };
    Ok(Running {
        stop,
        sys: Some(sys),
        http,
    })
}

/// Bytes the allocator has handed out and not had back (glibc's view; what
/// Mosquitto's `heap/current` reports of its own allocator).
pub(crate) fn heap_bytes() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and only reads the allocator's state.
        let m = unsafe { libc::mallinfo2() };
        (m.uordblks + m.hblkhd) as u64
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0
    }
}

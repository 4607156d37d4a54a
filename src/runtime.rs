//! Starting and running one shard on its executor: bind listeners, join the mesh,
//! spawn the flusher and receiver tasks, accept connections, and poll the control
//! plane until shutdown.

use crate::shard::mesh::{Batch, Outbox};
use crate::shard::stats::ShardStats;
use crate::shard::{Backpressure, Shard};
use crate::{net, Shared};
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::net::TcpListener;
use glommio::spawn_local;
use glommio::timer::Timer;
use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// Messages from the main thread to a shard, polled on a timer (the main thread may
/// block; a shard never does).
pub enum Control {
    /// Every shard has bound its listeners: join the mesh and start serving (with
    /// persistence on: restore, write the snapshot, and wait for `Serve`).
    Go,
    /// Persistence on: every shard's snapshot is durable and current; serve.
    Serve,
    /// Compact the log into the generation whose shard directories are under this
    /// directory: pause reading clients, wait for every shard's barrier, write the
    /// snapshot there, say so on the sender, and wait for `Resume`.
    Compact(std::path::PathBuf, crossbeam_channel::Sender<()>),
    /// The compacted generation is current: read clients again.
    Resume,
    /// Reply with a stats snapshot.
    Stats(crossbeam_channel::Sender<ShardStats>),
    /// Close every connection and stop.
    Shutdown,
    /// Publish these retained messages as the broker (`$SYS` topics): stored in
    /// the retained store and delivered to matching subscribers, whose read rights
    /// apply as to any message.
    SysPublish(Vec<crate::message::Message>),
    /// Reloaded listeners (authenticators, TLS configurations) and, if it changed,
    /// configuration: new connections use them, every session gets its rights and
    /// limits anew; replies once applied.
    Reload(
        Arc<[crate::link::Listener]>,
        Option<Arc<crate::Config>>,
        crossbeam_channel::Sender<()>,
    ),
}

/// Result of binding a shard's listeners, reported to the main thread.
pub type Bound = Result<Vec<SocketAddr>, (SocketAddr, std::io::Error)>;

/// Everything a shard's executor starts with.
pub struct ShardInit {
    pub shards: usize,
    pub shared: Arc<Shared>,
    pub listen: Vec<SocketAddr>,
    pub mesh: Option<MeshBuilder<Batch, Full>>,
    pub control: crossbeam_channel::Receiver<Control>,
    pub ready: crossbeam_channel::Sender<Bound>,
    /// With persistence on: what recovery restored, and where to log.
    pub store: Option<StoreInit>,
}

/// A shard's share of persistence at start.
pub struct StoreInit {
    pub data_dir: std::path::PathBuf,
    /// The generation this run writes.
    pub generation: u64,
    pub restored: Arc<crate::store::replay::Restored>,
    /// Told when this shard's snapshot is durable.
    pub restored_tx: crossbeam_channel::Sender<()>,
}

const CONTROL_POLL: Duration = Duration::from_millis(20);
/// Longest a shutdown waits for connections to send what they owe their clients.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often a shutdown looks whether every connection has flushed.
const SHUTDOWN_POLL: Duration = Duration::from_millis(5);

/// The shard's main future: returns on shutdown.
pub async fn run(init: ShardInit) {
    let mut listeners = Vec::with_capacity(init.listen.len());
    let mut listener_fds = Vec::with_capacity(init.listen.len());
    let mut addrs = Vec::with_capacity(init.listen.len());
    for addr in &init.listen {
        match bind_listener(addr).and_then(|(l, fd)| Ok((l.local_addr()?, l, fd))) {
            Ok((local, l, fd)) => {
                addrs.push(local);
                listeners.push(l);
                listener_fds.push(fd);
            }
            Err(e) => {
                let _ = init
                    .ready
                    .send(Err((*addr, std::io::Error::other(e.to_string()))));
                return;
            }
        }
    }
    let _ = init.ready.send(Ok(addrs));
    // Startup only: nothing else runs on this executor yet, so blocking is fine.
    match init.control.recv() {
        Ok(Control::Go) => {}
        _ => return,
    }
    let (senders, receivers) = match init.mesh {
        Some(mesh) => match mesh.join().await {
            Ok((s, r)) => (Some(s), Some(r)),
            Err(e) => {
                tracing::error!(error = %e, "shard failed to join the mesh");
                return;
            }
        },
        None => (None, None),
    };
    let id = senders.as_ref().map_or(0, |s| s.peer_id());
    let n = init.shards;
    let outboxes: Rc<[Outbox]> = (0..n).map(|_| Outbox::default()).collect();
    let backpressure = Rc::new(Backpressure::default());
    let shard = Rc::new(RefCell::new(Shard::new(
        id,
        n,
        init.shared.config.clone(),
        init.shared.listeners.clone(),
        outboxes.clone(),
        backpressure.clone(),
    )));
    if let Some(senders) = senders {
        let senders = Rc::new(senders);
        for dest in (0..n).filter(|&d| d != id) {
            spawn_local(flusher(
                senders.clone(),
                outboxes.clone(),
                dest,
                backpressure.clone(),
            ))
            .detach();
        }
    }
    if let Some(mut receivers) = receivers {
        for (src, rx) in receivers.streams() {
            spawn_local(mesh_receiver(shard.clone(), src, rx)).detach();
        }
    }
    let writes = shard.borrow().writes().clone();
    spawn_local(net::write_loop(shard.clone(), writes)).detach();
    spawn_local(keep_alive_sweep(shard.clone())).detach();
    let park_after = shard.borrow().cfg.park_idle_after_ms;
    net::park::start(shard.clone(), park_after);
    if let Some(store) = init.store {
        if !start_log(&shard, store, &init.control).await {
            return;
        }
    }
    for spec in &init.shared.bridges {
        if crate::shard::home_shard(&spec.local_client_id, n) == id {
            spawn_local(crate::bridge::run(shard.clone(), spec.clone())).detach();
        }
    }
    for (index, listener) in listeners.into_iter().enumerate() {
        spawn_local(net::accept_loop(
            shard.clone(),
            listener,
            index as u16,
            init.shared.clone(),
        ))
        .detach();
    }
    tracing::debug!(shard = id, "shard running");
    let mut deferred = std::collections::VecDeque::new();
    loop {
        Timer::new(CONTROL_POLL).await;
        while let Some(c) = deferred
            .pop_front()
            .or_else(|| init.control.try_recv().ok())
        {
            match c {
                Control::Go | Control::Serve | Control::Resume => {}
                Control::Compact(gen_dir, done) => {
                    compact(&shard, gen_dir, done, &init.control, &mut deferred).await;
                }
                Control::Stats(reply) => {
                    let _ = reply.send(shard.borrow().snapshot());
                }
                Control::Reload(listeners, config, done) => {
                    let mut s = shard.borrow_mut();
                    if let Some(config) = config {
                        s.set_config(config);
                    }
                    s.set_listeners(listeners);
                    drop(s);
                    let _ = done.send(());
                }
                Control::SysPublish(msgs) => {
                    let mut s = shard.borrow_mut();
                    for msg in msgs {
                        s.publish_from_broker(msg);
                    }
                }
                Control::Shutdown => {
                    // What waits for the log goes out first, while connections are
                    // still open (bounded: clients may still be publishing).
                    let deadline = std::time::Instant::now() + LOG_SETTLE;
                    while std::time::Instant::now() < deadline && !shard.borrow().log_settled() {
                        Timer::new(SHUTDOWN_POLL).await;
                    }
                    // Every connection sends what it owes, then its FIN; whatever
                    // its client sent meanwhile is read and discarded before the
                    // socket closes, so the client sees a clean close, not a reset.
                    let closing = shard.borrow_mut().close_all();
                    // Out of the port's SO_REUSEPORT group at once: a listener
                    // closed only when the process exits lingers while io_uring
                    // tears down, and a broker restarted on the same port would see
                    // the kernel hand some new connections to it, to be reset.
                    for &fd in &listener_fds {
                        // SAFETY: `fd` is a listening socket owned by an accept
                        // task that is still alive; shutdown does not close it.
                        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                    }
                    let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
                    while std::time::Instant::now() < deadline
                        && !closing.iter().all(|c| c.is_done())
                    {
                        Timer::new(SHUTDOWN_POLL).await;
                    }
                    for c in &closing {
                        c.discard_input();
                    }
                    // Persistence: every session restated, then the log made
                    // durable, so the next start resumes exactly.
                    shard.borrow_mut().snapshot_sessions();
                    shard.borrow_mut().log_flush_now();
                    let deadline = std::time::Instant::now() + LOG_SETTLE;
                    while std::time::Instant::now() < deadline && !shard.borrow().log_settled() {
                        Timer::new(SHUTDOWN_POLL).await;
                    }
                    return;
                }
            }
        }
    }
}

/// Longest a shutdown waits for the log to be durable, before and after closing
/// connections.
const LOG_SETTLE: Duration = Duration::from_secs(5);

/// Persistence at start: opens this shard's log in the new generation, restores
/// the sessions homed here and the retained messages, makes the snapshot durable,
/// tells the main thread, and waits for `Serve`. False: stop (shutdown, or the log
/// could not be opened).
async fn start_log(
    shard: &Rc<RefCell<Shard>>,
    store: StoreInit,
    control: &crossbeam_channel::Receiver<Control>,
) -> bool {
    use crate::store::generation::shard_dir;
    use crate::store::{Resume, SegmentWriter, WriterConfig};
    let (id, shards, cfg) = {
        let s = shard.borrow();
        (s.id, s.shards, s.cfg.clone())
    };
    let dir = shard_dir(&store.data_dir, store.generation, id);
    let direct = match crate::store::direct_io_works(&dir).await {
        Ok(direct) => direct,
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot open the log directory");
            return false;
        }
    };
    if !direct && id == 0 {
        tracing::warn!(dir = %store.data_dir.display(), "the filesystem refuses direct I/O (O_DIRECT): the log is written through the page cache, with the same fdatasync before each acknowledgement");
    }
    let writer = SegmentWriter::new(
        WriterConfig {
            shard: id as u16,
            segment_size: SEGMENT_SIZE,
        },
        Resume::Create {
            segment: 0,
            next_record: 0,
        },
    );
    let mut durable = crate::shard::durable::Durable::new(
        writer,
        dir,
        cfg.fsync,
        Duration::from_millis(cfg.fsync_interval_ms),
        shards,
    );
    if !direct {
        durable.set_buffered();
    }
    shard.borrow_mut().set_durable(durable);
    let dropped = shard
        .borrow_mut()
        .restore(&store.restored, std::time::Instant::now());
    if dropped > 0 {
        tracing::warn!(
            shard = id,
            dropped,
            "restored messages over the queue bounds dropped"
        );
    }
    drop(store.restored);
    spawn_local(crate::shard::durable::committer(shard.clone())).detach();
    spawn_local(checkpoints(shard.clone())).detach();
    // The snapshot is made durable whatever the fsync policy: the switch to this
    // generation depends on it.
    shard.borrow_mut().log_flush_now();
    while !shard.borrow().log_settled() {
        Timer::new(SHUTDOWN_POLL).await;
    }
    let _ = store.restored_tx.send(());
    loop {
        match control.try_recv() {
            Ok(Control::Serve) => return true,
            Ok(Control::Shutdown) | Err(crossbeam_channel::TryRecvError::Disconnected) => {
                return false
            }
            Ok(_) | Err(crossbeam_channel::TryRecvError::Empty) => {
                Timer::new(SHUTDOWN_POLL).await;
            }
        }
    }
}

/// Log compaction on this shard (see [`Control::Compact`]); control messages that
/// come meanwhile, other than stats, wait in `deferred`.
async fn compact(
    shard: &Rc<RefCell<Shard>>,
    gen_dir: std::path::PathBuf,
    done: crossbeam_channel::Sender<()>,
    control: &crossbeam_channel::Receiver<Control>,
    deferred: &mut std::collections::VecDeque<Control>,
) {
    let others = {
        let mut s = shard.borrow_mut();
        s.paused = true;
        s.send_barriers();
        s.shards - 1
    };
    // Readers stop before their next read; once every other shard's barrier has
    // come, nothing sent before it is still on the way.
    while shard.borrow().barriers < others {
        Timer::new(SHUTDOWN_POLL).await;
    }
    shard.borrow_mut().barriers -= others;
    let id = shard.borrow().id;
    let dir = gen_dir.join(format!("shard-{id}"));
    if let Err(e) = crate::store::prime_iopoll_probe(&dir).await {
        tracing::error!(dir = %dir.display(), error = %e, "cannot open the compacted log; stopping");
        std::process::abort();
    }
    // Settled, then switched with no wait in between: nothing is appended to the
    // old log, or in flight to it, once the new one takes over.
    while !shard.borrow().log_settled() {
        Timer::new(SHUTDOWN_POLL).await;
    }
    shard.borrow_mut().compact_into(dir);
    shard.borrow_mut().log_flush_now();
    while !shard.borrow().log_settled() {
        Timer::new(SHUTDOWN_POLL).await;
    }
    let _ = done.send(());
    loop {
        match control.try_recv() {
            Ok(Control::Resume) | Err(crossbeam_channel::TryRecvError::Disconnected) => break,
            Ok(Control::Stats(reply)) => {
                let _ = reply.send(shard.borrow().snapshot());
            }
            Ok(other) => deferred.push_back(other),
            Err(crossbeam_channel::TryRecvError::Empty) => {
                Timer::new(SHUTDOWN_POLL).await;
            }
        }
    }
    shard.borrow_mut().unpause();
}

/// Largest log segment file.
const SEGMENT_SIZE: u64 = 64 << 20;

/// Writes the sessions' positions every [`crate::shard::durable::CHECKPOINT_INTERVAL`].
async fn checkpoints(shard: Rc<RefCell<Shard>>) {
    loop {
        Timer::new(crate::shard::durable::CHECKPOINT_INTERVAL).await;
        shard.borrow_mut().checkpoint();
    }
}

/// Accept-queue length asked for, per shard and listener. The kernel caps it at
/// `net.core.somaxconn` (4096 by default): a reconnect storm arrives faster than any
/// broker accepts, and a full queue drops handshakes, which the devices retry only
/// after a second or more (SYN retransmission).
const LISTEN_BACKLOG: i32 = 65535;

/// Binds a listening socket as glommio's `TcpListener::bind` does (SO_REUSEPORT,
/// so every shard binds the same address), with a backlog of [`LISTEN_BACKLOG`],
/// keeping its descriptor so that shutdown can stop it listening at once.
fn bind_listener(addr: &SocketAddr) -> std::io::Result<(TcpListener, std::os::fd::RawFd)> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(*addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.bind(&(*addr).into())?;
    socket.listen(LISTEN_BACKLOG)?;
    let fd = socket.into_raw_fd();
    // SAFETY: `fd` is a bound, listening TCP socket that nothing else owns.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    Ok((listener, fd))
}

/// How often a shard looks for connections silent past their keep-alive.
const KEEP_ALIVE_SWEEP: Duration = Duration::from_millis(250);

/// Enforces keep-alive for all of the shard's connections with one timer.
async fn keep_alive_sweep(shard: Rc<RefCell<Shard>>) {
    loop {
        Timer::new(KEEP_ALIVE_SWEEP).await;
        shard
            .borrow_mut()
            .sweep_keep_alive(std::time::Instant::now());
    }
}

/// Moves one destination's outbox over the mesh, a whole outbox per channel item.
/// Parked readers are released once a batch has left (the channel took it).
pub async fn flusher(
    senders: Rc<Senders<Batch>>,
    outboxes: Rc<[Outbox]>,
    dest: usize,
    backpressure: Rc<Backpressure>,
) {
    loop {
        let batch = poll_fn(|cx| match outboxes[dest].take_or_register(cx.waker()) {
            Some(b) => Poll::Ready(b),
            None => Poll::Pending,
        })
        .await;
        if senders.send_to(dest, batch).await.is_err() {
            return;
        }
        backpressure.release();
    }
}

/// Applies every batch shard `src` sends; serves connections handed over.
async fn mesh_receiver(shard: Rc<RefCell<Shard>>, src: usize, rx: ConnectedReceiver<Batch>) {
    let mut handoffs = Vec::new();
    while let Some(batch) = rx.recv().await {
        shard
            .borrow_mut()
            .handle_mesh_batch(src, batch, &mut handoffs);
        for h in handoffs.drain(..) {
            spawn_local(net::serve_handoff(shard.clone(), h)).detach();
        }
    }
}

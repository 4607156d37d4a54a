//! A connection as the shard sees it (DESIGN §8): write a packet, write a shared
//! encoding, close; and what lies under it: the connection's output buffer
//! ([`output`]), its TLS or WebSocket layer ([`wire`]), and the listener it came
//! through. Below both `shard/` (which writes to connections) and `net/` (which
//! reads and writes their sockets), so neither imports the other's internals in a
//! circle.

use crate::auth::Authenticator;
use crate::config::{ListenerSpec, Transport};
use crate::protocol::{DisconnectV5, Packet, ReasonCode};
use crate::ConnectionSlot;
use bytes::BytesMut;
use glommio::net::TcpStream;
use glommio::task::JoinHandle;
use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;

pub(crate) mod output;
pub(crate) mod wire;
pub use output::Encoded;
use output::{Chunks, Output};
use wire::{Wire, WireError};

thread_local! {
    /// Bytes this thread's sockets have taken in and sent out. A shard is one
    /// thread, so these are the shard's; plain cells, read by its stats snapshot.
    static BYTES_IN: Cell<u64> = const { Cell::new(0) };
    static BYTES_OUT: Cell<u64> = const { Cell::new(0) };
}

/// Counts bytes read from a socket on this thread.
pub(crate) fn count_received(n: usize) {
    BYTES_IN.with(|c| c.set(c.get() + n as u64));
}

/// Counts bytes written to a socket on this thread.
pub(crate) fn count_sent(n: usize) {
    BYTES_OUT.with(|c| c.set(c.get() + n as u64));
}

/// (received, sent): the bytes this thread's sockets have moved so far.
pub(crate) fn bytes_moved() -> (u64, u64) {
    (BYTES_IN.with(Cell::get), BYTES_OUT.with(Cell::get))
}

/// Why an attached client's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The client closed the connection without DISCONNECT.
    ClosedByClient,
    /// Nothing from the client for 1.5 × its keep-alive.
    KeepAliveTimeout,
    /// A malformed packet or a protocol violation.
    ProtocolError,
    /// Another connection with the same client id took the session over.
    Takeover,
    /// Reading or writing the socket failed.
    SocketError,
    /// A TLS or WebSocket error.
    TransportError,
    /// The broker shut down.
    Shutdown,
    /// A 5.0 re-authentication failed.
    AuthFailed,
}

impl DisconnectReason {
    pub const COUNT: usize = 9;
    pub const ALL: [DisconnectReason; Self::COUNT] = [
        DisconnectReason::ClientDisconnect,
        DisconnectReason::ClosedByClient,
        DisconnectReason::KeepAliveTimeout,
        DisconnectReason::ProtocolError,
        DisconnectReason::Takeover,
        DisconnectReason::SocketError,
        DisconnectReason::TransportError,
        DisconnectReason::Shutdown,
        DisconnectReason::AuthFailed,
    ];

    /// The reason code of the DISCONNECT a 5.0 client gets when the broker closes its
    /// connection for this reason; `None` when the broker does not close it.
    pub fn reason_code(self) -> Option<ReasonCode> {
        match self {
            DisconnectReason::KeepAliveTimeout => Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
            DisconnectReason::ProtocolError => Some(ReasonCode::PROTOCOL_ERROR),
            DisconnectReason::Takeover => Some(ReasonCode::SESSION_TAKEN_OVER),
            DisconnectReason::Shutdown => Some(ReasonCode::SERVER_SHUTTING_DOWN),
            DisconnectReason::AuthFailed => Some(ReasonCode::NOT_AUTHORIZED),
            _ => None,
        }
    }

    /// The Reason String of the DISCONNECT a 5.0 client gets for it.
    pub fn text(self) -> &'static str {
        match self {
            DisconnectReason::KeepAliveTimeout => "nothing received for 1.5 times the keep alive",
            DisconnectReason::Takeover => "another connection took the session over",
            DisconnectReason::Shutdown => "the broker is shutting down",
            DisconnectReason::AuthFailed => "re-authentication failed",
            _ => "",
        }
    }

    /// The name used in logs, `$SYS` topics and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            DisconnectReason::ClientDisconnect => "client_disconnect",
            DisconnectReason::ClosedByClient => "closed_by_client",
            DisconnectReason::KeepAliveTimeout => "keepalive_timeout",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::Takeover => "takeover",
            DisconnectReason::SocketError => "socket_error",
            DisconnectReason::TransportError => "transport_error",
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::AuthFailed => "auth_failed",
        }
    }
}

/// One listener at run time: what it was configured with, who may connect through
/// it and what they may do, and its TLS configuration. Replaced whole on reload.
pub struct Listener {
    pub spec: ListenerSpec,
    pub auth: Arc<dyn Authenticator>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Listener {
    /// The transport state a new connection on this listener starts with.
    pub(crate) fn new_wire(&self, max_packet_size: usize) -> Result<Option<Box<Wire>>, WireError> {
        let tls = match &self.tls {
            Some(cfg) => Some(rustls::ServerConnection::new(cfg.clone())?),
            None => None,
        };
        Ok(match (self.spec.transport, tls) {
            (Transport::Tcp, _) => None,
            (Transport::Tls, Some(t)) => Some(Box::new(Wire::tls(t))),
            (Transport::Ws, _) => Some(Box::new(Wire::ws(&self.spec.path, None, max_packet_size))),
            (Transport::Wss, Some(t)) => Some(Box::new(Wire::ws(
                &self.spec.path,
                Some(t),
                max_packet_size,
            ))),
            (Transport::Tls | Transport::Wss, None) => {
                return Err(WireError::Ws(
                    "TLS listener without a TLS configuration".into(),
                ))
            }
        })
    }
}

/// One shard's connections with output to send, its writer task's waker, and the
/// encodings its deliveries share.
pub struct Writes {
    pub(crate) dirty: RefCell<Vec<Rc<Conn>>>,
    pub(crate) waker: Cell<Option<Waker>>,
    /// `Config::write_buffer_high_water`: a congested connection resumes below half.
    pub(crate) high_water: Cell<usize>,
    pub(crate) chunks: Chunks,
}

impl Writes {
    pub(crate) fn new(high_water: usize) -> Rc<Writes> {
        Rc::new(Writes {
            dirty: RefCell::new(Vec::new()),
            waker: Cell::new(None),
            high_water: Cell::new(high_water),
            chunks: Chunks::default(),
        })
    }

    /// Encodes once for any number of connections ([`Conn::write_shared`]).
    pub fn share(&self, encode: impl FnOnce(&mut BytesMut)) -> Encoded {
        self.chunks.share(encode)
    }
}

/// A connection's socket: a glommio stream while a task reads it, the bare
/// descriptor while it is parked (`net::park`).
pub(crate) enum Sock {
    /// Boxed: a parked connection keeps only the descriptor, and the stream is
    /// a third of what the `Conn` around it would cost.
    Live(Box<TcpStream>),
    /// The descriptor, and the connection's place in `max_connections`, which
    /// the reader held.
    Parked(OwnedFd, ConnectionSlot),
    /// Only between the two while unparking.
    Gone,
}

impl Sock {
    /// A stream a task reads ([`Conn::allow_parking`] lets its reads time out).
    pub(crate) fn live(stream: TcpStream) -> Sock {
        Sock::Live(Box::new(stream))
    }

    /// The socket's descriptor (-1 in the instant between parked and live).
    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Sock::Live(s) => s.as_raw_fd(),
            Sock::Parked(fd, _) => fd.as_raw_fd(),
            Sock::Gone => -1,
        }
    }

    /// Shuts the write side down: the client reads EOF after what was sent.
    pub(crate) fn shutdown_write(&self) {
        // SAFETY: a plain syscall on the descriptor this socket owns.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_WR) };
    }
}

/// Who reads a connection (`net::park`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Park {
    /// Its reader task.
    Active,
    /// Nobody: it waits in the shard's epoll set.
    Parked,
}

/// The shard's handle on one live connection: its socket, the output buffer the
/// shard's writer drains, and the flags that pace and close it.
pub struct Conn {
    /// Unique per shard; tells a connection apart from the one that took it over.
    pub id: u64,
    pub peer: SocketAddr,
    /// The session's key on the shard (for `Shard::resume_writes`).
    pub(crate) key: Cell<usize>,
    pub(crate) stream: RefCell<Sock>,
    /// Whether a task reads it, or it waits in the shard's epoll set (`net::park`).
    pub(crate) park: Cell<Park>,
    /// How long it waits before parking: [`crate::net::park::delay`] of this level,
    /// which grows for a connection that is soon read again after parking.
    pub(crate) park_level: Cell<u8>,
    /// When it was last parked (`net::park`'s clock, in milliseconds).
    pub(crate) parked_at: Cell<u32>,
    /// TLS and/or WebSocket between the socket and MQTT; `None` for plain TCP.
    pub(crate) wire: RefCell<Option<Box<Wire>>>,
    pub(crate) out: RefCell<Output>,
    pub(crate) writes: Rc<Writes>,
    /// The task that reads the connection, while it waits; also woken when `done` is
    /// set, as the same task then waits for the connection's output to drain.
    pub(crate) reader: Cell<Option<Waker>>,
    /// The socket buffer was full: a task of its own ([`write_blocked`]) waits for it
    /// to take more, and it alone writes meanwhile.
    pub(crate) blocked: Cell<bool>,
    pub(crate) blocked_task: Cell<Option<JoinHandle<()>>>,
    pub(crate) closing: Cell<bool>,
    pub(crate) congested: Cell<bool>,
    /// On its shard's [`Writes`] list.
    pub(crate) listed: Cell<bool>,
    /// Closing and everything sent (write side shut down), or writing failed.
    pub(crate) done: Cell<bool>,
    /// Why the broker closed it, when it did.
    pub(crate) why: Cell<Option<DisconnectReason>>,
    /// Packets for it waiting for their log records to be durable (the shard's
    /// `Durable`); while any wait, whatever else is written to it waits behind them.
    pub(crate) holding: Cell<u32>,
    /// The client speaks MQTT 5.0: every packet written to it is encoded in the 5.0
    /// layout ([`Packet::encode_v5`]; a 3.1.1 ack becomes its 5.0 success form).
    pub(crate) v5: Cell<bool>,
    /// The client speaks MQTT 3.1 (for a reader started again after parking).
    pub(crate) mqtt31: Cell<bool>,
    /// 5.0: the client's Request Problem Information (reason strings on acks).
    pub(crate) problem_info: Cell<bool>,
    /// 5.0: the client's Maximum Packet Size (0: none).
    pub(crate) max_packet: Cell<u32>,
    /// 5.0 Topic Aliases: the client's (inbound) and the broker's (outbound), created
    /// on first use.
    pub(crate) aliases: RefCell<Option<Box<Aliases>>>,
    /// 5.0 enhanced authentication: set when the client authenticated with a method
    /// in CONNECT, so that it may re-authenticate (§4.12.1).
    pub(crate) reauth: Cell<Option<Box<Reauth>>>,
}

/// What a re-authentication needs: the CONNECT's method, the user it proved, and
/// the exchange in progress.
pub struct Reauth {
    pub method: bytestring::ByteString,
    pub username: bytestring::ByteString,
    pub exchange: Option<Box<dyn crate::auth::AuthExchange>>,
}

/// The Topic Aliases of one 5.0 connection (§3.3.2.3.4). They last as long as it.
#[derive(Debug, Default)]
pub struct Aliases {
    /// Inbound: alias − 1 → topic, as the client set them.
    pub inbound: Vec<bytestring::ByteString>,
    /// Outbound: topic → alias the broker assigned, up to `out_max`.
    pub outbound: std::collections::HashMap<bytestring::ByteString, u16>,
    /// The client's Topic Alias Maximum (0: the broker sends none).
    pub out_max: u16,
}

impl Aliases {
    /// Rewrites a PUBLISH to the client to use an alias: a topic sent before goes as
    /// its alias with an empty topic; a new one gets the next alias while any is left.
    fn apply(&mut self, p: &mut crate::protocol::Publish) {
        if self.out_max == 0 || p.topic.is_empty() {
            return;
        }
        let alias = match self.outbound.get(&p.topic) {
            Some(&a) => {
                p.topic = bytestring::ByteString::new();
                a
            }
            None if self.outbound.len() < usize::from(self.out_max) => {
                let a = self.outbound.len() as u16 + 1;
                // Copied: the map outlives the buffer the topic may be a slice of.
                self.outbound
                    .insert(bytestring::ByteString::from(&*p.topic), a);
                a
            }
            None => return,
        };
        p.props.get_or_insert_with(Default::default).topic_alias = std::num::NonZeroU16::new(alias);
    }
}

impl Conn {
    pub(crate) fn new(
        id: u64,
        peer: SocketAddr,
        stream: TcpStream,
        wire: Option<Box<Wire>>,
        writes: Rc<Writes>,
    ) -> Rc<Conn> {
        Rc::new(Conn {
            id,
            peer,
            key: Cell::new(usize::MAX),
            stream: RefCell::new(Sock::live(stream)),
            park: Cell::new(Park::Active),
            park_level: Cell::new(0),
            parked_at: Cell::new(0),
            wire: RefCell::new(wire),
            out: RefCell::new(Output::default()),
            writes,
            reader: Cell::new(None),
            blocked: Cell::new(false),
            blocked_task: Cell::new(None),
            closing: Cell::new(false),
            congested: Cell::new(false),
            listed: Cell::new(false),
            done: Cell::new(false),
            why: Cell::new(None),
            holding: Cell::new(0),
            v5: Cell::new(false),
            mqtt31: Cell::new(false),
            problem_info: Cell::new(true),
            max_packet: Cell::new(0),
            aliases: RefCell::new(None),
            reauth: Cell::new(None),
        })
    }

    /// Encodes a packet into the output buffer (ignored once closing).
    pub fn write_packet(self: &Rc<Self>, packet: &Packet) {
        if self.closing.get() {
            return;
        }
        let v5 = self.v5.get();
        if v5 {
            if let (Packet::Publish(p), Some(a)) = (packet, self.aliases.borrow_mut().as_mut()) {
                let mut p = p.clone();
                a.apply(&mut p);
                self.out
                    .borrow_mut()
                    .push_own(|buf| Packet::Publish(p).encode_v5(buf));
                self.schedule_write();
                return;
            }
        }
        let max = self.max_packet.get();
        self.out.borrow_mut().push_own(|buf| {
            if v5 {
                packet.encode_v5_within(buf, max)
            } else {
                packet.encode(buf)
            }
        });
        self.schedule_write();
    }

    /// Whether the client speaks MQTT 5.0.
    pub fn is_v5(&self) -> bool {
        self.v5.get()
    }

    /// On a 5.0 connection, writes a DISCONNECT with `reason` and `why` as its Reason
    /// String (then the caller closes it); nothing under 3.1.1, which has no server
    /// DISCONNECT.
    pub fn disconnect_v5(self: &Rc<Self>, reason: ReasonCode, why: impl Into<String>) {
        if self.v5.get() {
            let why: String = why.into();
            self.write_packet(&Packet::DisconnectV5(Box::new(DisconnectV5 {
                reason_string: (!why.is_empty()).then(|| why.into()),
                ..DisconnectV5::new(reason)
            })));
        }
    }

    /// Whether acknowledgements to this client may carry a Reason String: it did not
    /// set Request Problem Information to 0 [MQTT-3.1.2-29].
    pub fn wants_problem_info(&self) -> bool {
        self.v5.get() && self.problem_info.get()
    }

    /// Appends whole packets encoded once for many connections ([`Writes::share`]),
    /// by reference; a connection waiting for its socket takes a copy instead, so
    /// that it does not hold the shared bytes. Ignored once closing.
    pub fn write_shared(self: &Rc<Self>, shared: &Encoded) {
        if self.closing.get() {
            return;
        }
        if self.blocked.get() {
            self.out.borrow_mut().push_copy(shared);
        } else {
            self.out.borrow_mut().push_shared(shared);
        }
        self.schedule_write();
    }

    /// Encodes and drains a batch of packets.
    pub fn write_packets(self: &Rc<Self>, packets: &mut Vec<Packet>) {
        if packets.is_empty() {
            return;
        }
        if !self.closing.get() {
            let v5 = self.v5.get();
            if v5 {
                if let Some(a) = self.aliases.borrow_mut().as_mut() {
                    for p in packets.iter_mut() {
                        if let Packet::Publish(p) = p {
                            a.apply(p);
                        }
                    }
                }
            }
            let max = self.max_packet.get();
            self.out.borrow_mut().push_own(|buf| {
                for p in packets.iter() {
                    if v5 {
                        p.encode_v5_within(buf, max);
                    } else {
                        p.encode(buf);
                    }
                }
            });
            self.schedule_write();
        }
        packets.clear();
    }

    /// Puts the connection on its shard's write list (once) and wakes the writer,
    /// unless a blocked-socket task owns its writes.
    pub(crate) fn schedule_write(self: &Rc<Self>) {
        if self.listed.get() || self.done.get() || self.blocked.get() {
            return;
        }
        self.listed.set(true);
        self.writes.dirty.borrow_mut().push(self.clone());
        if let Some(w) = self.writes.waker.take() {
            w.wake();
        }
    }

    /// Bytes written by the shard and not yet handed to the kernel.
    pub fn pending(&self) -> usize {
        self.out.borrow().len() + self.wire.borrow().as_ref().map_or(0, |w| w.out.len())
    }

    /// Moves the MQTT output through the connection's TLS or WebSocket layer into
    /// the bytes for its socket. Nothing to do for plain TCP.
    pub(crate) fn encode_output(&self) -> io::Result<()> {
        let mut wire = self.wire.borrow_mut();
        let Some(w) = wire.as_mut() else {
            return Ok(());
        };
        let mut out = self.out.borrow_mut();
        if out.len() == 0 {
            return Ok(());
        }
        out.take_all(|bytes| w.encode(bytes))
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Sends what the TLS or WebSocket layer holds for the socket, without waiting.
    pub(crate) fn send_wire(&self, fd: std::os::fd::RawFd) -> io::Result<bool> {
        match self.wire.borrow_mut().as_mut() {
            Some(w) => output::send_bytes(fd, &mut w.out),
            None => Ok(true),
        }
    }

    /// Drops whatever is unsent.
    pub(crate) fn discard_output(&self) {
        self.out.borrow_mut().discard();
        if let Some(w) = self.wire.borrow_mut().as_mut() {
            w.out.clear();
        }
    }

    pub fn congested(&self) -> bool {
        self.congested.get()
    }

    pub fn set_congested(&self, congested: bool) {
        self.congested.set(congested);
    }

    /// [`Conn::close`], recording why (the first reason given stands).
    pub fn close_because(self: &Rc<Self>, why: DisconnectReason) {
        if let Some(reason) = why.reason_code() {
            self.disconnect_v5(reason, why.text());
        }
        if self.why.get().is_none() {
            self.why.set(Some(why));
        }
        self.close();
    }

    /// Why the broker closed the connection, if it did.
    pub fn close_reason(&self) -> Option<DisconnectReason> {
        self.why.get()
    }

    /// Asks the writer to flush what is pending and close; stops the reader.
    pub fn close(self: &Rc<Self>) {
        if !self.closing.replace(true) {
            self.schedule_write();
        }
        self.wake_reader();
    }

    /// Closes the connection and waits until what it still owes its peer has gone
    /// out, for at most `linger`; after that the rest is dropped. False if it was.
    pub(crate) async fn close_and_flush(self: &Rc<Self>, linger: std::time::Duration) -> bool {
        self.close();
        let flushed = glommio::timer::timeout(linger, async {
            std::future::poll_fn(|cx| {
                if self.done.get() {
                    return std::task::Poll::Ready(());
                }
                self.reader.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            })
            .await;
            Ok(())
        })
        .await;
        if flushed.is_err() {
            if let Some(task) = self.blocked_task.take() {
                task.cancel();
            }
            self.blocked.set(false);
            self.discard_output();
            self.set_done();
        }
        flushed.is_ok()
    }

    /// Closing and everything owed sent (or given up on).
    pub fn is_done(&self) -> bool {
        self.done.get()
    }

    /// Reads and drops whatever the client sent that is waiting in the socket, so
    /// that closing it sends no reset. Never waits.
    pub fn discard_input(&self) {
        let fd = self.stream.borrow().fd();
        let mut buf = [0u8; 4096];
        // Bounded: a client that keeps sending gets its reset after 256 KiB.
        for _ in 0..64 {
            // SAFETY: `buf` is valid for its length; `fd` is the open socket this
            // connection owns.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n <= 0 {
                return;
            }
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// The blocked-socket task is finishing.
    pub(crate) fn unblock(&self) {
        self.blocked.set(false);
        self.blocked_task.take();
    }

    pub(crate) fn set_done(&self) {
        self.done.set(true);
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    /// Lets the connection park when idle (`net::park`): on a shard that parks,
    /// its reads time out after its park delay, so that its reader can park it. For
    /// a client's connection, not a bridge's, whose reader never ends while the
    /// bridge is up. Called again whenever the stream is new or the delay changed.
    pub(crate) fn allow_parking(&self) {
        if let Sock::Live(s) = &*self.stream.borrow() {
            if crate::net::park::enabled() {
                // Fails only for a zero duration, which `delay` never is.
                let _ = s.set_read_timeout(Some(crate::net::park::delay(self.park_level.get())));
            }
        }
    }

    pub(crate) fn wake_reader(self: &Rc<Self>) {
        match self.park.get() {
            Park::Parked => crate::net::park::request_unpark(self),
            Park::Active => {
                if let Some(w) = self.reader.take() {
                    w.wake();
                }
            }
        }
    }
}

//! Connections: accept, the TLS handshake and WebSocket upgrade, read CONNECT under a
//! timeout, hand the socket to its home shard, then serve it with one reader task
//! and the shard's writer. The connection object itself lives in `link/`, below both
//! this folder and `shard/`.
//!
//! The reader drains every complete packet from each read before it reads again and
//! hands them to the shard; the shard writes replies and deliveries into the
//! connection's [`Conn`] buffer, which puts the connection on its shard's list of
//! connections with output ([`Writes`]). One writer task per shard sends each listed
//! connection's whole buffer with one write, once the tasks that filled them have run
//! (glommio's stream writes are unbuffered, so this is where the batching happens).
//! Only a connection whose socket buffer is full gets a task of its own, which waits
//! until the socket takes more. An idle connection therefore costs one task (its
//! reader) and no buffers.

use crate::auth::{AuthExchange, AuthStep};
use crate::protocol::{
    decode_with, peek_connect_level, Auth, ConnAck, ConnAckProps, ConnAckV5, Connect,
    ConnectReturnCode, DecodeError, DecodeOptions, Packet, Protocol, ReasonCode, Subscribe,
};
use crate::shard::mesh::Handoff;
use crate::shard::{home_shard, Flow, Shard, SubscribeWait};
use crate::{ConnectionSlot, Shared};
use bytes::Bytes;
use bytes::BytesMut;
use bytestring::ByteString;
use glommio::net::{TcpListener, TcpStream};
use glommio::spawn_local;
use glommio::timer::Timer;
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};

pub(crate) mod park;
pub mod proxy;
pub mod tls;
use crate::link::output;
use crate::link::wire::{Peer, Wire, WireError};
use crate::link::{Conn, DisconnectReason, Park, Reauth, Sock, Writes};

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 16 * 1024;
/// The first read after a connection has waited with nothing buffered.
const SMALL_READ: usize = 1024;
/// How long a closing connection may take to flush what it still has to send.
const WRITER_LINGER: Duration = Duration::from_secs(5);

/// Why a connection ended, for the log and the counters.
enum End {
    Eof,
    Disconnect,
    ClosedByBroker,
    Violation,
    Decode(DecodeError),
    Io(io::Error),
    /// TLS or WebSocket failed (handshake, upgrade, record, frame).
    Transport(WireError),
    /// The PROXY protocol header a listener requires was missing or malformed.
    Proxy(proxy::ProxyError),
    /// A 5.0 client broke a rule the broker checks after decoding (a Topic Alias it
    /// did not grant, a Subscription Identifier in a PUBLISH, AUTH without a method):
    /// DISCONNECT with this reason code.
    Refused(ReasonCode),
    /// A 5.0 DISCONNECT with reason 0x04: closed by the client, will published.
    DisconnectWithWill,
    /// A 5.0 re-authentication failed: DISCONNECT with this reason code.
    AuthFailed(ReasonCode),
    /// Idle: the reader ends and the connection is parked ([`park`]).
    Park,
}

impl std::fmt::Debug for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Eof => f.write_str("closed by client"),
            End::Disconnect => f.write_str("DISCONNECT"),
            End::ClosedByBroker => f.write_str("closed by broker"),
            End::Violation => f.write_str("protocol violation"),
            End::Decode(e) => write!(f, "malformed packet: {e}"),
            End::Io(e) => write!(f, "i/o error: {e}"),
            End::Transport(e) => write!(f, "transport error: {e}"),
            End::Proxy(e) => write!(f, "{e}"),
            End::Refused(r) => write!(f, "protocol violation (reason {:#04x})", r.0),
            End::AuthFailed(r) => write!(f, "re-authentication failed (reason {:#04x})", r.0),
            End::DisconnectWithWill => f.write_str("DISCONNECT with will"),
            End::Park => f.write_str("parked"),
        }
    }
}

/// Accepts connections on one listener for the rest of the shard's life.
pub(crate) async fn accept_loop(
    shard: Rc<RefCell<Shard>>,
    listener: TcpListener,
    index: u16,
    shared: Arc<Shared>,
) {
    let mut pace = Pace::default();
    loop {
        let (rate, shards) = {
            let s = shard.borrow();
            (s.cfg.max_connect_rate, s.shards)
        };
        if rate > 0 {
            // This shard's share of the listener's rate; the kernel spreads new
            // connections evenly over the shards' sockets.
            let per_shard = f64::from(rate) / shards as f64;
            let wait = pace.delay(per_shard, Instant::now());
            if !wait.is_zero() {
                shard.borrow_mut().stats.accepts_paced += 1;
                Timer::new(wait).await;
                continue;
            }
        }
        match listener.accept().await {
            Ok(stream) => {
                if shard.borrow().stopping {
                    return;
                }
                // The CONNECT timeout counts from when the connection was made: one
                // that waited in the accept queue for all of it is closed unanswered,
                // and does not use up the rate.
                let mut waited = Duration::ZERO;
                if rate > 0 {
                    waited = Duration::from_millis(idle_ms(&stream).map_or(0, u64::from));
                    let mut s = shard.borrow_mut();
                    if waited >= s.cfg.connect_timeout() {
                        s.stats.connect_timeouts += 1;
                        tracing::debug!(
                            ?waited,
                            "waited in the accept queue past the connect timeout"
                        );
                        pace.refund();
                        continue;
                    }
                }
                let slot = shared.acquire_connection();
                spawn_local(handle_new(shard.clone(), stream, slot, index, waited)).detach();
            }
            Err(_) if shard.borrow().stopping => return,
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                Timer::new(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Paces accepts for `max_connect_rate`: a token bucket holding at most a tenth of a
/// second's worth (at least one), so a storm is smoothed rather than refused.
struct Pace {
    tokens: f64,
    last: Option<Instant>,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            tokens: 1.0,
            last: None,
        }
    }
}

impl Pace {
    /// Gives back the token of a connection that was not served.
    fn refund(&mut self) {
        self.tokens += 1.0;
    }

    /// Zero (and a token taken) if a connection may be accepted now, else how long
    /// until one may.
    fn delay(&mut self, rate: f64, now: Instant) -> Duration {
        let burst = (rate / 10.0).max(1.0);
        if let Some(last) = self.last {
            let earned = now.saturating_duration_since(last).as_secs_f64() * rate;
            self.tokens = (self.tokens + earned).min(burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / rate)
        }
    }
}

/// Milliseconds since the socket last received data (or was established): for a
/// connection that waited in the accept queue, about how long it waited.
fn idle_ms(stream: &TcpStream) -> Option<u32> {
    // SAFETY: a zeroed tcp_info is valid; getsockopt writes at most `len` bytes
    // into it, and the descriptor is the stream's open socket.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info.tcpi_last_data_recv)
    }
}

/// A new socket: read and check CONNECT, then serve it here or hand it to the
/// client id's home shard.
async fn handle_new(
    shard: Rc<RefCell<Shard>>,
    stream: TcpStream,
    slot: Option<ConnectionSlot>,
    listener: u16,
    waited: Duration,
) {
    let mut peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let _ = stream.set_nodelay(true);
    let (timeout, limits, wire, identity, proxied) = {
        let s = shard.borrow();
        let l = s.listener(listener);
        let identity = l
            .spec
            .tls
            .as_ref()
            .is_some_and(|t| t.use_identity_as_username);
        (
            s.cfg.connect_timeout(),
            s.cfg.decode_options(false, false),
            l.new_wire(s.cfg.max_packet_size),
            identity,
            l.spec.proxy_protocol,
        )
    };
    // What is left of the connect timeout after the wait in the accept queue.
    let timeout = timeout.saturating_sub(waited);
    let started = Instant::now();
    let mut wire = match wire {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot start the connection's transport");
            return;
        }
    };
    let stream = RefCell::new(stream);
    let mut rbuf = BytesMut::new();
    // The TLS handshake and the WebSocket upgrade happen here too, under the same
    // timeout as CONNECT.
    // So does the PROXY protocol header, on a listener behind a load balancer.
    let mut source = None;
    // Whether the first packet is a complete level-5 CONNECT, for the form of a refusal.
    let mut level5 = false;
    let first = glommio::timer::timeout(timeout, async {
        let mut start = BytesMut::new();
        if proxied {
            match read_proxy_header(&stream, &mut start).await {
                Ok(s) => source = Some(s),
                Err(end) => return Ok(Err(end)),
            }
        }
        Ok(read_first_packet(&stream, &mut rbuf, &limits, &mut wire, start, &mut level5).await)
    })
    .await;
    if let Some(Some(client)) = source {
        // The client's own address, as the load balancer saw it.
        peer = client;
    }
    let connect = match first {
        Err(_) => {
            let mut s = shard.borrow_mut();
            s.stats.connect_timeouts += 1;
            if wire.as_ref().is_some_and(|w| !w.is_established()) {
                s.stats.transport_errors += 1;
                tracing::info!(%peer, "TLS handshake or WebSocket upgrade not done within the connect timeout");
            } else {
                tracing::debug!(%peer, "no CONNECT within the connect timeout");
            }
            return;
        }
        Ok(Err(end)) => {
            let refusal = {
                let mut s = shard.borrow_mut();
                match &end {
                    End::Decode(e) => {
                        if matches!(e, DecodeError::PacketTooLarge { .. }) {
                            s.stats.oversized_packets += 1;
                        }
                        s.stats.protocol_errors += 1;
                        // A 5.0 CONNECT that breaks a rule gets CONNACK with the
                        // reason (§4.13.1); one of another revision only when 3.1.1
                        // has a return code for it.
                        if level5 {
                            Some((ConnectReturnCode::NotAuthorized, Some(e.reason_code())))
                        } else {
                            e.connack_code().map(|c| (c, None))
                        }
                    }
                    End::Violation => {
                        s.stats.protocol_errors += 1;
                        None
                    }
                    End::Transport(e) => {
                        s.stats.transport_errors += 1;
                        // Logged at info: a failed handshake is an operator's concern
                        // (a wrong certificate, a client of the wrong kind).
                        tracing::info!(%peer, error = %e, "TLS handshake or WebSocket upgrade failed");
                        None
                    }
                    End::Proxy(e) => {
                        s.stats.transport_errors += 1;
                        tracing::info!(%peer, error = %e, "connection refused");
                        None
                    }
                    _ => None,
                }
            };
            if let Some((code, v5)) = refusal {
                refuse(&stream, &mut wire, code, v5).await;
            } else if let Some(w) = wire.as_mut() {
                // A TLS alert or an HTTP refusal, if the transport has one to send.
                let bytes = std::mem::take(&mut w.out);
                let _ = write_all(&stream, &bytes).await;
            }
            tracing::debug!(%peer, reason = ?end, "connection closed before CONNECT completed");
            return;
        }
        Ok(Ok(connect)) => connect,
    };
    let v5 = connect.protocol == Protocol::V5;
    let v5_code = |code: ConnectReturnCode| v5.then(|| ReasonCode::from(code));
    let Some(slot) = slot else {
        shard.borrow_mut().stats.refused_max_connections += 1;
        tracing::debug!(%peer, "max_connections reached");
        let code = ConnectReturnCode::ServerUnavailable;
        refuse(&stream, &mut wire, code, v5_code(code)).await;
        return;
    };
    let mut connect = connect;
    // Enhanced authentication (§4.12): the exchange decides instead of the password.
    let mut enhanced = false;
    if let Some(method) = connect.props.auth_method.clone() {
        let (auth, limits) = {
            let s = shard.borrow();
            (
                s.listener(listener).auth.clone(),
                s.cfg.decode_options(false, true),
            )
        };
        let Some(exchange) = auth.start_auth(&method, peer) else {
            // Not a method this listener offers [MQTT-4.12.0-1].
            shard.borrow_mut().stats.connects_refused += 1;
            tracing::info!(client = %connect.client_id, %peer, %method, "CONNECT refused: authentication method not supported");
            let code = ConnectReturnCode::NotAuthorized;
            refuse(
                &stream,
                &mut wire,
                code,
                Some(ReasonCode::BAD_AUTHENTICATION_METHOD),
            )
            .await;
            return;
        };
        let first = connect.props.auth_data.take();
        let left = timeout.saturating_sub(started.elapsed());
        let outcome = glommio::timer::timeout(left, async {
            Ok(enhanced_auth(
                &stream, &mut rbuf, &limits, &mut wire, &method, exchange, first,
            )
            .await)
        })
        .await
        .unwrap_or(Err(ReasonCode::NOT_AUTHORIZED));
        let refused = match outcome {
            Ok((user, _)) if connect.username.as_ref().is_some_and(|u| *u != user) => {
                // CONNECT named one user and the exchange proved another.
                Some(ReasonCode::NOT_AUTHORIZED)
            }
            Ok((user, data)) => {
                connect.username = Some(user);
                // From here on, the data for the CONNACK.
                connect.props.auth_data = data;
                None
            }
            Err(reason) => Some(reason),
        };
        if let Some(reason) = refused {
            shard.borrow_mut().stats.connects_refused += 1;
            tracing::info!(client = %connect.client_id, %peer, %method, reason = reason.0, "CONNECT refused: enhanced authentication failed");
            refuse(
                &stream,
                &mut wire,
                ConnectReturnCode::NotAuthorized,
                Some(reason),
            )
            .await;
            return;
        }
        enhanced = true;
    }
    // The client certificate's common name as the username: verified by the TLS
    // handshake, so no password check (Mosquitto's use_identity_as_username).
    let identity_code = identity.then(|| {
        let cn = wire
            .as_ref()
            .and_then(|w| w.tls_session())
            .and_then(|t| t.peer_certificates())
            .and_then(|certs| certs.first())
            .and_then(tls::common_name);
        match cn {
            Some(cn) => {
                connect.username = Some(cn.into());
                connect.password = None;
                ConnectReturnCode::Accepted
            }
            None => ConnectReturnCode::NotAuthorized,
        }
    });
    // An expensive password hash is verified on a blocking thread, so the shard's
    // other connections never wait for it (DESIGN §9).
    let auth = shard.borrow().listener(listener).auth.clone();
    let (mut connect, code) = if let Some(code) = identity_code {
        (connect, code)
    } else if enhanced {
        (connect, ConnectReturnCode::Accepted)
    } else if auth.connect_is_slow(&connect) {
        glommio::executor()
            .spawn_blocking(move || {
                let code = auth.connect(&connect, peer);
                (connect, code)
            })
            .await
    } else {
        let code = auth.connect(&connect, peer);
        (connect, code)
    };
    let assigned_id = connect.client_id.is_empty();
    let home = {
        let mut s = shard.borrow_mut();
        if assigned_id {
            connect.client_id = s.generate_client_id();
        }
        home_shard(&connect.client_id, s.shards)
    };
    if code != ConnectReturnCode::Accepted {
        shard.borrow_mut().stats.connects_refused += 1;
        tracing::info!(client = %connect.client_id, %peer, ?code, "CONNECT refused");
        refuse(&stream, &mut wire, code, v5_code(code)).await;
        return;
    }
    let me = shard.borrow().id;
    let stream = stream.into_inner();
    if home == me {
        let accepted = Accepted {
            stream,
            wire,
            connect: Box::new(connect),
            rbuf,
            peer,
            slot,
            listener,
            assigned_id,
        };
        spawn_local(serve(shard, Box::new(accepted))).detach();
        return;
    }
    // SAFETY: the descriptor belongs to `stream`, which stays alive for this statement;
    // the clone is a new descriptor for the same socket, owned by the result.
    let fd = match unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot duplicate socket for handoff");
            return;
        }
    };
    drop(stream);
    shard.borrow_mut().hand_off(
        home,
        Handoff {
            fd,
            wire,
            connect: Box::new(connect),
            leftover: rbuf.freeze(),
            peer,
            slot,
            listener,
        },
    );
}

/// Reads until the first packet is complete; it must be CONNECT [MQTT-3.1.0-1].
/// Through a `wire`, the TLS handshake and the WebSocket upgrade come first: their
/// answers are sent as they are produced.
///
/// `start` holds bytes already read from the socket (after a PROXY header).
async fn read_first_packet(
    stream: &RefCell<TcpStream>,
    rbuf: &mut BytesMut,
    limits: &DecodeOptions,
    wire: &mut Option<Box<Wire>>,
    start: BytesMut,
    level5: &mut bool,
) -> Result<Connect, End> {
    match read_packet(stream, rbuf, limits, wire, start, level5).await? {
        Packet::Connect(c) => Ok(*c),
        _ => Err(End::Violation),
    }
}

/// Reads until a packet is complete, before the connection has a [`Conn`] (CONNECT,
/// and the AUTH packets of an enhanced authentication).
async fn read_packet(
    stream: &RefCell<TcpStream>,
    rbuf: &mut BytesMut,
    limits: &DecodeOptions,
    wire: &mut Option<Box<Wire>>,
    start: BytesMut,
    level5: &mut bool,
) -> Result<Packet, End> {
    // Bytes from the socket not yet through the TLS or WebSocket layer.
    let mut raw = start;
    if wire.is_none() {
        rbuf.extend_from_slice(&raw);
        raw.clear();
    }
    loop {
        // A complete level-5 CONNECT that fails to decode is refused in 5.0 form.
        *level5 = peek_connect_level(rbuf, limits) == Some(5);
        match decode_with(rbuf, limits) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(End::Decode(e)),
        }
        let Some(w) = wire.as_mut() else {
            match read_some(stream, rbuf, &mut false, None).await {
                Ok(0) => return Err(End::Eof),
                Ok(_) => {}
                Err(e) => return Err(End::Io(e)),
            }
            continue;
        };
        if raw.is_empty() {
            match read_some(stream, &mut raw, &mut false, None).await {
                Ok(0) => return Err(End::Eof),
                Ok(_) => {}
                Err(e) => return Err(End::Io(e)),
            }
        }
        let decoded = w.decode(&raw, rbuf);
        raw.clear();
        if !w.out.is_empty() {
            let bytes = std::mem::take(&mut w.out);
            if let Err(e) = write_all(stream, &bytes).await {
                return Err(End::Io(e));
            }
        }
        match decoded {
            Ok(Peer::Open) => {}
            Ok(Peer::Closed) => return Err(End::Eof),
            Err(e) => return Err(End::Transport(e)),
        }
    }
}

/// Reads a PROXY protocol header: the client's address (`None`: the header says to
/// keep the connection's own), with whatever followed it left in `buf`.
async fn read_proxy_header(
    stream: &RefCell<TcpStream>,
    buf: &mut BytesMut,
) -> Result<Option<SocketAddr>, End> {
    loop {
        match proxy::parse(buf) {
            Ok(Some(h)) => {
                let _ = buf.split_to(h.len);
                return Ok(h.source);
            }
            Ok(None) => {}
            Err(e) => return Err(End::Proxy(e)),
        }
        match read_some(stream, buf, &mut false, None).await {
            Ok(0) => return Err(End::Eof),
            Ok(_) => {}
            Err(e) => return Err(End::Io(e)),
        }
    }
}

/// Answers CONNECT with a refusal (then the caller drops the socket): with `v5`, a
/// 5.0 CONNACK with that reason code, else a 3.1.1 one with `code`.
async fn refuse(
    stream: &RefCell<TcpStream>,
    wire: &mut Option<Box<Wire>>,
    code: ConnectReturnCode,
    v5: Option<ReasonCode>,
) {
    let _ = send_early(stream, wire, &refusal(code, v5), true).await;
}

/// The CONNACK refusing a CONNECT: with `v5`, the 5.0 one with that reason code and
/// its Reason String, else the 3.1.1 one with `code`.
pub(crate) fn refusal(code: ConnectReturnCode, v5: Option<ReasonCode>) -> Packet {
    match v5 {
        Some(reason) => Packet::ConnAckV5(Box::new(ConnAckV5 {
            session_present: false,
            reason,
            props: ConnAckProps {
                reason_string: refusal_text(reason).map(ByteString::from_static),
                ..ConnAckProps::default()
            },
        })),
        None => Packet::ConnAck(ConnAck {
            session_present: false,
            code,
        }),
    }
}

/// A Reason String for a CONNACK refusal: what an operator reading a device's log
/// needs to know.
fn refusal_text(reason: ReasonCode) -> Option<&'static str> {
    Some(match reason {
        ReasonCode::NOT_AUTHORIZED => "not authorized",
        ReasonCode::BAD_USER_NAME_OR_PASSWORD => "bad user name or password",
        ReasonCode::BAD_AUTHENTICATION_METHOD => "authentication method not supported",
        ReasonCode::SERVER_UNAVAILABLE => "server unavailable",
        ReasonCode::SERVER_BUSY => "server busy",
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => "client identifier not valid",
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => "unsupported protocol version",
        ReasonCode::MALFORMED_PACKET => "malformed CONNECT",
        ReasonCode::PROTOCOL_ERROR => "protocol error",
        ReasonCode::PACKET_TOO_LARGE => "packet too large",
        ReasonCode::CONNECTION_RATE_EXCEEDED => "connection rate exceeded",
        ReasonCode::QOS_NOT_SUPPORTED => "will QoS not supported",
        ReasonCode::RETAIN_NOT_SUPPORTED => "retained will not supported",
        _ => return None,
    })
}

/// Writes one packet on a connection that has no [`Conn`] yet (during CONNECT),
/// through its TLS or WebSocket layer if any; `close` ends that layer after it.
async fn send_early(
    stream: &RefCell<TcpStream>,
    wire: &mut Option<Box<Wire>>,
    packet: &Packet,
    close: bool,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(16);
    if matches!(packet, Packet::ConnAck(_)) {
        packet.encode(&mut buf);
    } else {
        packet.encode_v5(&mut buf);
    }
    if let Some(w) = wire.as_mut() {
        w.encode(&buf)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if close {
            w.close();
        }
        buf = std::mem::take(&mut w.out);
    }
    write_all(stream, &buf).await
}

/// Runs an enhanced authentication exchange during CONNECT (§4.12): AUTH 0x18 each
/// way until the authenticator decides. The user it proved, and the data for the
/// CONNACK; or the reason to refuse with.
async fn enhanced_auth(
    stream: &RefCell<TcpStream>,
    rbuf: &mut BytesMut,
    limits: &DecodeOptions,
    wire: &mut Option<Box<Wire>>,
    method: &ByteString,
    mut exchange: Box<dyn AuthExchange>,
    first: Option<Bytes>,
) -> Result<(ByteString, Option<Bytes>), ReasonCode> {
    let mut data = first;
    loop {
        match exchange.step(data.as_deref()) {
            AuthStep::Continue(reply) => {
                let packet = Packet::Auth(Box::new(Auth {
                    reason: ReasonCode::CONTINUE_AUTHENTICATION,
                    method: Some(method.clone()),
                    data: reply,
                    reason_string: None,
                    user: Default::default(),
                }));
                if send_early(stream, wire, &packet, false).await.is_err() {
                    return Err(ReasonCode::UNSPECIFIED_ERROR);
                }
            }
            AuthStep::Success { username, data } => return Ok((username, data)),
            AuthStep::Fail(reason) => return Err(reason),
        }
        match read_packet(stream, rbuf, limits, wire, BytesMut::new(), &mut false).await {
            // The client continues with the same method [MQTT-4.12.0-5].
            Ok(Packet::Auth(a))
                if a.reason == ReasonCode::CONTINUE_AUTHENTICATION
                    && a.method.as_ref() == Some(method) =>
            {
                data = a.data;
            }
            Ok(_) => return Err(ReasonCode::PROTOCOL_ERROR),
            Err(End::Decode(e)) => return Err(e.reason_code()),
            Err(_) => return Err(ReasonCode::UNSPECIFIED_ERROR),
        }
    }
}

/// A connection handed over by another shard: rebuild the stream on this executor.
pub(crate) async fn serve_handoff(shard: Rc<RefCell<Shard>>, h: Handoff) {
    let Handoff {
        fd,
        wire,
        connect,
        leftover,
        peer,
        slot,
        listener,
    } = h;
    // SAFETY: `fd` is an owned, open, connected TCP socket; ownership moves into the
    // stream, which closes it when dropped.
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    let rbuf = BytesMut::from(&leftover[..]);
    let accepted = Accepted {
        stream,
        wire,
        connect,
        rbuf,
        peer,
        slot,
        listener,
        // Generated ids are homed where they are generated: never handed off.
        assigned_id: false,
    };
    spawn_local(serve(shard, Box::new(accepted))).detach();
}

/// What [`serve`] starts from, in one allocation that ends when it starts.
struct Accepted {
    stream: TcpStream,
    wire: Option<Box<Wire>>,
    connect: Box<Connect>,
    rbuf: BytesMut,
    peer: SocketAddr,
    slot: ConnectionSlot,
    listener: u16,
    /// The broker chose the client id (the client sent an empty one).
    assigned_id: bool,
}

/// Serves a connection whose CONNECT was accepted, on its home shard, until it ends.
///
/// Spawned as a task of its own: a future keeps room for its arguments for its whole
/// life, so it takes them behind one pointer, and the larger future that read the
/// CONNECT ends first. This task is most of what an idle connection costs.
async fn serve(shard: Rc<RefCell<Shard>>, accepted: Box<Accepted>) {
    // A box moved out of is freed only when its binding goes out of scope: these
    // blocks end the bindings here, not with the connection.
    let (conn, key, rbuf, peer, slot) = {
        let Accepted {
            stream,
            wire,
            connect,
            rbuf,
            peer,
            slot,
            listener,
            assigned_id,
        } = *{ accepted };
        let mut s = shard.borrow_mut();
        let conn = Conn::new(s.next_conn_id(), peer, stream, wire, s.writes().clone());
        tracing::info!(
            client = %connect.client_id,
            %peer,
            protocol = connect.protocol.name(),
            shard = s.id,
            clean_session = connect.clean_session,
            keep_alive = connect.keep_alive,
            username = connect.username.as_deref().unwrap_or(""),
            "client connected"
        );
        let mqtt31 = connect.protocol == Protocol::V31;
        conn.mqtt31.set(mqtt31);
        conn.allow_parking();
        conn.v5.set(connect.protocol == Protocol::V5);
        conn.problem_info
            .set(connect.props.request_problem_information);
        conn.max_packet
            .set(connect.props.maximum_packet_size.map_or(0, |m| m.get()));
        if let (Some(method), Some(username)) = (&connect.props.auth_method, &connect.username) {
            conn.reauth.set(Some(Box::new(Reauth {
                method: method.clone(),
                username: username.clone(),
                exchange: None,
            })));
        }
        if connect.props.topic_alias_maximum > 0 {
            *conn.aliases.borrow_mut() = Some(Box::new(crate::link::Aliases {
                out_max: connect.props.topic_alias_maximum,
                ..Default::default()
            }));
        }
        let key = s.attach(*{ connect }, &conn, listener, assigned_id, Instant::now());
        if let Some(key) = key {
            conn.key.set(key);
        }
        (conn, key, rbuf, peer, slot)
    };
    match key {
        Some(_) => run(shard, conn, rbuf, slot, false).await,
        // Refused at attach (a will it may not publish): the CONNACK still goes out.
        None => {
            drop(rbuf);
            finish(&conn, peer).await;
            drop(slot);
        }
    }
}

/// Reads an attached connection until it ends, then ends it: from [`serve`], and
/// again from [`park`] each time a parked connection has something to read.
///
/// `resumed`: the connection was parked, so its first read goes ahead even while its
/// output is congested, as a reader already waiting in a read would: that is how a
/// client that stopped reading is seen hanging up.
pub(crate) async fn run(
    shard: Rc<RefCell<Shard>>,
    conn: Rc<Conn>,
    rbuf: BytesMut,
    slot: ConnectionSlot,
    resumed: bool,
) {
    // Keep-alive [MQTT-3.1.2-24] is enforced by the shard's sweep
    // (`Shard::sweep_keep_alive`), which closes the connection; no timer per
    // connection.
    let mut slot = slot;
    let mut rbuf = rbuf;
    let mut resumed = resumed;
    let end = loop {
        // Read from the connection at each call, not kept: what a future holds
        // across its awaits every reading connection pays for.
        match read_loop(
            &shard,
            &conn,
            conn.key.get(),
            rbuf,
            conn.mqtt31.get(),
            resumed,
        )
        .await
        {
            End::Park => match park::park(&shard, &conn, slot) {
                Ok(()) => return,
                Err(back) => {
                    // Not parked (a write waits for the socket): read on, as the
                    // reader was.
                    slot = back;
                    conn.park.set(Park::Active);
                    // The delay may have grown (see `park::park`).
                    conn.allow_parking();
                    rbuf = BytesMut::new();
                    resumed = true;
                }
            },
            end => break end,
        }
    };
    let (key, peer) = (conn.key.get(), conn.peer);
    {
        // A 5.0 client learns why the broker closes its connection.
        match &end {
            End::Decode(e) => conn.disconnect_v5(e.reason_code(), e.to_string()),
            End::Violation => conn.disconnect_v5(ReasonCode::PROTOCOL_ERROR, "protocol error"),
            End::Refused(r) => conn.disconnect_v5(*r, r.name()),
            End::AuthFailed(r) => conn.disconnect_v5(*r, "re-authentication failed"),
            _ => {}
        }
        let mut s = shard.borrow_mut();
        if matches!(end, End::Refused(_)) {
            s.stats.protocol_errors += 1;
        }
        if let End::Decode(e) = &end {
            if matches!(e, DecodeError::PacketTooLarge { .. }) {
                s.stats.oversized_packets += 1;
            }
            s.stats.protocol_errors += 1;
        }
        if let End::Transport(e) = &end {
            s.stats.transport_errors += 1;
            tracing::info!(%peer, error = %e, "TLS or WebSocket error");
        }
        // What the client published before it went is routed before its will.
        s.route_pending();
        let reason = match &end {
            End::Eof => DisconnectReason::ClosedByClient,
            End::Disconnect | End::DisconnectWithWill => DisconnectReason::ClientDisconnect,
            End::Violation | End::Decode(_) | End::Refused(_) => DisconnectReason::ProtocolError,
            End::Io(_) => DisconnectReason::SocketError,
            End::Transport(_) | End::Proxy(_) => DisconnectReason::TransportError,
            End::AuthFailed(_) => DisconnectReason::AuthFailed,
            // Closed by the broker for a reason it recorded; else the connection
            // was replaced while a SUBSCRIBE waited.
            End::ClosedByBroker | End::Park => {
                conn.close_reason().unwrap_or(DisconnectReason::Takeover)
            }
        };
        s.stats.disconnects[reason as usize] += 1;
        match s.client_id_of(key, conn.id) {
            Some(client) => {
                tracing::info!(%client, %peer, shard = s.id, reason = reason.name(), detail = ?end, "client disconnected")
            }
            None => {
                tracing::info!(%peer, shard = s.id, reason = reason.name(), detail = ?end, "client disconnected")
            }
        }
        s.connection_lost(key, conn.id, matches!(end, End::Disconnect));
    }
    finish(&conn, peer).await;
    drop(slot);
}

/// Closes `conn` and lets what it still owes the client go out, for a while.
async fn finish(conn: &Rc<Conn>, peer: SocketAddr) {
    if !conn.close_and_flush(WRITER_LINGER).await {
        tracing::debug!(%peer, "gave up flushing a closed connection");
    }
}
/// Decodes and dispatches every complete packet, then reads more, until the
/// connection ends.
async fn read_loop(
    shard: &Rc<RefCell<Shard>>,
    conn: &Rc<Conn>,
    key: usize,
    mut rbuf: BytesMut,
    mqtt31: bool,
    resumed: bool,
) -> End {
    let v5 = conn.is_v5();
    let mut hot = false;
    // A resumed reader's first read does not wait for congestion to clear.
    let mut waits = !resumed;
    loop {
        let now = Instant::now();
        loop {
            // Log compaction: nothing more is taken from this client until it is
            // over, even what was read before it began.
            if shard.borrow().paused {
                shard.borrow_mut().route_pending();
                if !wait_until_readable(shard, conn).await {
                    return End::ClosedByBroker;
                }
            }
            // The limits are read per packet rather than kept: every byte a reader
            // keeps across a wait is a byte every idle connection costs.
            let decoded = {
                let limits = shard.borrow().cfg.decode_options(mqtt31, v5);
                decode_with(&mut rbuf, &limits)
            };
            let packet = match decoded {
                Ok(Some(Packet::Auth(a))) => {
                    if let Err(end) = reauthenticate(shard, conn, key, *a) {
                        return end;
                    }
                    continue;
                }
                Ok(Some(p)) if v5 => match from_v5(p, conn, shard.borrow().cfg.topic_alias_maximum)
                {
                    Ok(p) => p,
                    Err(end) => return end,
                },
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return End::Decode(e),
            };
            if let Packet::DisconnectV5(d) = packet {
                let mut s = shard.borrow_mut();
                if let Some(secs) = d.session_expiry {
                    if !s.set_session_expiry(key, conn.id, secs) {
                        return End::Refused(ReasonCode::PROTOCOL_ERROR);
                    }
                }
                s.handle_packet(key, conn.id, Packet::Disconnect, now);
                return if d.reason == ReasonCode::DISCONNECT_WITH_WILL {
                    End::DisconnectWithWill
                } else {
                    End::Disconnect
                };
            }
            if let Packet::Subscribe(sub) = packet {
                shard.borrow_mut().route_pending();
                // Boxed: the wait is rare and its state large, and an inline await
                // would make every connection's reader that large for its whole life.
                if !Box::pin(subscribe(shard, conn, key, sub)).await {
                    return End::ClosedByBroker;
                }
                continue;
            }
            match shard.borrow_mut().handle_packet(key, conn.id, packet, now) {
                Flow::Continue => {}
                Flow::Close { graceful: true } => return End::Disconnect,
                Flow::Close { graceful: false } => return End::Violation,
            }
        }
        shard.borrow_mut().route_pending();
        if waits && !wait_until_readable(shard, conn).await {
            return End::ClosedByBroker;
        }
        waits = true;
        if conn.wire.borrow().is_none() {
            match read_some(&conn.stream, &mut rbuf, &mut hot, Some(conn)).await {
                Ok(0) => return End::Eof,
                Ok(_) => {}
                Err(_) if conn.closing.get() => return End::ClosedByBroker,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return End::Park,
                Err(e) => return End::Io(e),
            }
            continue;
        }
        let (decoded, reply) = match read_wire(conn, &mut rbuf).await {
            Ok(Some(r)) => r,
            Ok(None) => return End::Eof,
            Err(_) if conn.closing.get() => return End::ClosedByBroker,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return End::Park,
            Err(e) => return End::Io(e),
        };
        if reply {
            // Pongs, close replies, TLS records rustls produced on reading.
            conn.schedule_write();
        }
        match decoded {
            Ok(Peer::Open) => {}
            Ok(Peer::Closed) => return End::Eof,
            Err(e) => return End::Transport(e),
        }
    }
}

/// AUTH from a connected 5.0 client: a re-authentication (§4.12.1), started with
/// 0x19 and continued with 0x18, by the method and user of its CONNECT. Success
/// answers AUTH 0x00; failure closes the connection (DISCONNECT with the reason).
fn reauthenticate(
    shard: &Rc<RefCell<Shard>>,
    conn: &Rc<Conn>,
    key: usize,
    a: Auth,
) -> Result<(), End> {
    let Some(mut state) = conn.reauth.take() else {
        // No method in CONNECT: the client may send no AUTH [MQTT-4.12.0-7].
        return Err(End::Refused(ReasonCode::PROTOCOL_ERROR));
    };
    if a.method.as_ref() != Some(&state.method) {
        return Err(End::Refused(ReasonCode::PROTOCOL_ERROR));
    }
    let step = match (a.reason, state.exchange.as_mut()) {
        (ReasonCode::REAUTHENTICATE, None) => {
            let auth = shard.borrow().authenticator_of(key);
            match auth.start_auth(&state.method, conn.peer) {
                Some(x) => state.exchange.insert(x).step(a.data.as_deref()),
                None => AuthStep::Fail(ReasonCode::BAD_AUTHENTICATION_METHOD),
            }
        }
        (ReasonCode::CONTINUE_AUTHENTICATION, Some(x)) => x.step(a.data.as_deref()),
        _ => return Err(End::Refused(ReasonCode::PROTOCOL_ERROR)),
    };
    let (reason, data) = match step {
        AuthStep::Continue(data) => (ReasonCode::CONTINUE_AUTHENTICATION, data),
        // The same user again: its session and rights stay as they are.
        AuthStep::Success { username, data } if username == state.username => {
            state.exchange = None;
            (ReasonCode::SUCCESS, data)
        }
        AuthStep::Success { .. } | AuthStep::Fail(_) => {
            let reason = match step {
                AuthStep::Fail(r) => r,
                _ => ReasonCode::NOT_AUTHORIZED,
            };
            tracing::info!(peer = %conn.peer, method = %state.method, reason = reason.0, "re-authentication failed");
            return Err(End::AuthFailed(reason));
        }
    };
    conn.write_packet(&Packet::Auth(Box::new(Auth {
        reason,
        method: Some(state.method.clone()),
        data,
        reason_string: None,
        user: Default::default(),
    })));
    conn.reauth.set(Some(state));
    Ok(())
}

/// A packet from a 5.0 client in the terms the session handles (the 3.1.1 acks;
/// their reason codes and properties are for the client's own information), or how
/// the connection ends.
fn from_v5(packet: Packet, conn: &Conn, alias_max: u16) -> Result<Packet, End> {
    Ok(match packet {
        Packet::PubAckV5(a) => Packet::PubAck(a.pkid),
        Packet::PubRecV5(a) => Packet::PubRec(a.pkid),
        Packet::PubRelV5(a) => Packet::PubRel(a.pkid),
        Packet::PubCompV5(a) => Packet::PubComp(a.pkid),
        Packet::Publish(mut p) => {
            if let Some(props) = &mut p.props {
                if !props.subscription_ids.is_empty() {
                    // [MQTT-3.3.4-6]
                    return Err(End::Refused(ReasonCode::PROTOCOL_ERROR));
                }
                if let Some(alias) = props.topic_alias.take() {
                    let alias = usize::from(alias.get());
                    if alias > usize::from(alias_max) {
                        // Above the announced Topic Alias Maximum [MQTT-3.3.2-9].
                        return Err(End::Refused(ReasonCode::TOPIC_ALIAS_INVALID));
                    }
                    let mut aliases = conn.aliases.borrow_mut();
                    let a = aliases.get_or_insert_with(Default::default);
                    if a.inbound.len() < alias {
                        a.inbound.resize(alias, bytestring::ByteString::new());
                    }
                    if p.topic.is_empty() {
                        let topic = &a.inbound[alias - 1];
                        if topic.is_empty() {
                            // An alias the client never set [MQTT-3.3.2-7].
                            return Err(End::Refused(ReasonCode::PROTOCOL_ERROR));
                        }
                        p.topic = topic.clone();
                    } else {
                        a.inbound[alias - 1] = bytestring::ByteString::from(&*p.topic);
                    }
                }
                if props.is_empty() {
                    p.props = None;
                }
            }
            Packet::Publish(p)
        }
        p => p,
    })
}

/// One read from a TLS or WebSocket connection's socket, decoded at once into
/// `rbuf`: `None` at EOF, else what the layer made of it and whether it has bytes to
/// send back. The raw bytes live on the stack only while the read completes, so a
/// waiting connection holds no buffer for them.
pub(crate) async fn read_wire(
    conn: &Rc<Conn>,
    rbuf: &mut BytesMut,
) -> io::Result<Option<(Result<Peer, WireError>, bool)>> {
    poll_fn(|cx| {
        if conn.closing.get() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by the broker",
            )));
        }
        conn.reader.set(Some(cx.waker().clone()));
        let mut raw = [0u8; READ_CHUNK];
        let n = ready!(poll_conn(conn, cx, &mut raw, rbuf.is_empty()))?;
        if n == 0 {
            return Poll::Ready(Ok(None));
        }
        crate::link::count_received(n);
        let mut wire = conn.wire.borrow_mut();
        let Some(w) = wire.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        let decoded = w.decode(&raw[..n], rbuf);
        Poll::Ready(Ok(Some((decoded, !w.out.is_empty()))))
    })
    .await
}

/// SUBSCRIBE: routes at once, waits for other shards to confirm new interest, then
/// SUBACK. False if the connection is closing or was taken over.
async fn subscribe(
    shard: &Rc<RefCell<Shard>>,
    conn: &Rc<Conn>,
    key: usize,
    sub: Subscribe,
) -> bool {
    let mut sub = sub;
    let start = shard.borrow_mut().subscribe_start(key, conn.id, &mut sub);
    let Some(start) = start else {
        return false;
    };
    if let Some(wait) = &start.wait {
        wait_interest(wait, conn).await;
        if conn.closing.get() {
            return false;
        }
    }
    shard
        .borrow_mut()
        .subscribe_finish(key, conn.id, &sub, start.codes, start.reasons);
    true
}

/// Waits until every shard has confirmed a SUBSCRIBE's new interest (or the
/// connection is closing).
async fn wait_interest(wait: &SubscribeWait, conn: &Conn) {
    poll_fn(|cx| {
        if wait.done() || conn.closing.get() {
            return Poll::Ready(());
        }
        wait.register(cx.waker());
        conn.reader.set(Some(cx.waker().clone()));
        Poll::Pending
    })
    .await
}

/// Backpressure: reading more is pointless while this connection's own output is
/// over its high-water mark (the client is not reading) or an outbox to another
/// shard is full. Returns false if the connection is closing.
async fn wait_until_readable(shard: &Rc<RefCell<Shard>>, conn: &Conn) -> bool {
    poll_fn(|cx| {
        if conn.closing.get() {
            return Poll::Ready(false);
        }
        if conn.congested() {
            conn.reader.set(Some(cx.waker().clone()));
            return Poll::Pending;
        }
        let s = shard.borrow();
        if s.outbox_congested() || s.paused {
            s.backpressure().park(cx.waker());
            conn.reader.set(Some(cx.waker().clone()));
            return Poll::Pending;
        }
        Poll::Ready(true)
    })
    .await
}

/// One read into `buf`. Ends early with an error when `conn` starts closing.
///
/// A connection with nothing buffered holds no read buffer while it waits: the
/// first read after a wait goes into a small buffer on the stack and is copied out,
/// and a 16 KiB chunk is reserved only while data keeps coming (a read that filled
/// its buffer, tracked in `hot`) or a packet is incomplete. So an idle connection
/// costs no read buffer, and a busy one reads in large chunks.
async fn read_some(
    stream: &impl ReadSock,
    buf: &mut BytesMut,
    hot: &mut bool,
    conn: Option<&Conn>,
) -> io::Result<usize> {
    let start = buf.len();
    let small = start == 0 && !*hot;
    if small {
        // Give back whatever is left of an earlier chunk before waiting.
        *buf = BytesMut::new();
    } else if buf.capacity() - start < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    poll_fn(|cx| {
        if let Some(conn) = conn {
            if conn.closing.get() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed by the broker",
                )));
            }
            conn.reader.set(Some(cx.waker().clone()));
        }
        let poll = |cx: &mut Context<'_>, into: &mut [u8]| match conn {
            Some(conn) => poll_conn(conn, cx, into, start == 0),
            None => stream.poll_read_sock(cx, into),
        };
        if small {
            let mut first = [0u8; SMALL_READ];
            let res = ready!(poll(cx, &mut first));
            if let Ok(n) = res {
                crate::link::count_received(n);
                // A full small read means more is coming: take a whole chunk.
                *hot = n == SMALL_READ;
                buf.reserve(if *hot { READ_CHUNK } else { n });
                buf.extend_from_slice(&first[..n]);
            }
            return Poll::Ready(res);
        }
        let end = buf.capacity();
        buf.resize(end, 0);
        match poll(cx, &mut buf[start..end]) {
            Poll::Pending => {
                buf.truncate(start);
                Poll::Pending
            }
            Poll::Ready(res) => {
                let n = *res.as_ref().unwrap_or(&0);
                crate::link::count_received(n);
                *hot = start + n == end;
                buf.truncate(start + n);
                Poll::Ready(res)
            }
        }
    })
    .await
}

/// Reads `conn`'s socket. A client's socket on a shard that parks times out after
/// its park delay ([`park::delay`]) without a byte; then, if the reader holds no
/// part of a packet (`empty`), the read ends with `WouldBlock` and the reader offers
/// the connection to [`park::park`]. Holding part of a packet, it waits on.
fn poll_conn(
    conn: &Conn,
    cx: &mut Context<'_>,
    into: &mut [u8],
    empty: bool,
) -> Poll<io::Result<usize>> {
    loop {
        match conn.stream.poll_read_sock(cx, into) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                if empty {
                    return Poll::Ready(Err(io::ErrorKind::WouldBlock.into()));
                }
            }
            other => return other,
        }
    }
}

/// A socket a reader polls: the stream that reads CONNECT, or a connection's.
trait ReadSock {
    fn poll_read_sock(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
}

impl ReadSock for RefCell<TcpStream> {
    fn poll_read_sock(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.borrow_mut()).poll_read(cx, buf)
    }
}

impl ReadSock for RefCell<Sock> {
    fn poll_read_sock(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match &mut *self.borrow_mut() {
            Sock::Live(s) => Pin::new(&mut **s).poll_read(cx, buf),
            // A parked socket has no reader; one that reads unparks it first.
            Sock::Parked(..) | Sock::Gone => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "parked")))
            }
        }
    }
}

async fn write_all(stream: &RefCell<TcpStream>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, data)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        crate::link::count_sent(n);
        data = &data[n..];
    }
    Ok(())
}

/// The shard's writer: sends each listed connection's whole buffer with one write,
/// after the tasks that filled the buffers have run. A socket that takes only part
/// gets a task of its own ([`write_blocked`]) until it drains.
pub(crate) async fn write_loop(shard: Rc<RefCell<Shard>>, writes: Rc<Writes>) {
    let mut batch = Vec::new();
    loop {
        poll_fn(|cx| {
            if writes.dirty.borrow().is_empty() {
                writes.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        std::mem::swap(&mut batch, &mut *writes.dirty.borrow_mut());
        for conn in batch.drain(..) {
            conn.listed.set(false);
            send_listed(&shard, &conn);
        }
        writes.chunks.recycle();
    }
}

/// Writes as much of `conn`'s output as its socket takes now.
fn send_listed(shard: &Rc<RefCell<Shard>>, conn: &Rc<Conn>) {
    if conn.done.get() {
        return;
    }
    let fd = conn.stream.borrow().fd();
    let res = if conn.wire.borrow().is_some() {
        conn.encode_output().and_then(|_| conn.send_wire(fd))
    } else {
        conn.out.borrow_mut().send_now(fd)
    };
    match res {
        Ok(true) => sent_all(shard, conn),
        Ok(false) => {
            // The socket buffer is full: a task waits for room.
            // glommio starts running a new task at once: no borrow may be held.
            conn.blocked.set(true);
            let task = spawn_local(write_blocked(shard.clone(), conn.clone())).detach();
            if conn.blocked.get() {
                conn.blocked_task.set(Some(task));
            }
        }
        Err(e) => write_failed(conn, e),
    }
}

/// Sends `conn`'s output, waiting for the socket as needed, until it is empty; then
/// the shard's writer takes over again. Meanwhile the output stays plain (see
/// [`Conn::write_shared`]).
async fn write_blocked(shard: Rc<RefCell<Shard>>, conn: Rc<Conn>) {
    // Waiting for room needs the stream: a parked connection is read again.
    if conn.park.get() == Park::Parked {
        park::unpark_now(&shard, &conn);
    }
    loop {
        if let Err(e) = conn.encode_output() {
            conn.unblock();
            return write_failed(&conn, e);
        }
        let res = poll_fn(|cx| {
            let wire = conn.wire.borrow();
            let out = conn.out.borrow();
            let bytes: &[u8] = match wire.as_ref() {
                Some(w) => &w.out,
                None => out.plain_unsent(),
            };
            if bytes.is_empty() {
                return Poll::Ready(Ok(None));
            }
            match &mut *conn.stream.borrow_mut() {
                Sock::Live(s) => Pin::new(&mut **s).poll_write(cx, bytes).map_ok(Some),
                Sock::Parked(..) | Sock::Gone => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "no stream to wait on",
                ))),
            }
        })
        .await;
        match res {
            Ok(None) => break,
            Ok(Some(0)) => {
                conn.unblock();
                return write_failed(&conn, io::ErrorKind::WriteZero.into());
            }
            Ok(Some(n)) => {
                crate::link::count_sent(n);
                match conn.wire.borrow_mut().as_mut() {
                    Some(w) => bytes::Buf::advance(&mut w.out, n),
                    None => conn.out.borrow_mut().consume(n),
                }
            }
            Err(e) => {
                conn.unblock();
                return write_failed(&conn, e);
            }
        }
    }
    conn.unblock();
    sent_all(&shard, &conn);
}

/// Everything written so far has gone to the kernel: let a congested session send
/// again, and finish a closing connection.
fn sent_all(shard: &Rc<RefCell<Shard>>, conn: &Rc<Conn>) {
    if conn.congested() && conn.pending() <= conn.writes.high_water.get() / 2 {
        conn.set_congested(false);
        conn.wake_reader();
        // May write more: the connection is listed again.
        shard.borrow_mut().resume_writes(conn.key.get(), conn.id);
    }
    if conn.closing.get() && conn.pending() == 0 && !conn.done.get() {
        // A WebSocket close frame and TLS close_notify, best effort, so the client
        // can tell a close from a cut.
        let goodbye = conn.wire.borrow_mut().as_mut().map(|w| {
            w.close();
            std::mem::take(&mut w.out)
        });
        if let Some(mut bytes) = goodbye {
            let fd = conn.stream.borrow().fd();
            let _ = output::send_bytes(fd, &mut bytes);
        }
        // Half-close: the client sees EOF after the last byte we owed it.
        conn.stream.borrow().shutdown_write();
        conn.set_done();
    }
}

fn write_failed(conn: &Rc<Conn>, e: io::Error) {
    tracing::debug!(peer = %conn.peer, error = %e, "write failed");
    conn.discard_output();
    conn.set_done();
    conn.close_because(DisconnectReason::SocketError);
}

#[cfg(test)]
mod tests {
    use super::Pace;
    use std::time::{Duration, Instant};

    #[test]
    fn pace_lets_a_tenth_of_a_second_through_then_spaces_accepts_at_the_rate() {
        let mut p = Pace::default();
        let t0 = Instant::now();
        // 100/s: a burst of up to 10, then one every 10 ms.
        assert_eq!(p.delay(100.0, t0), Duration::ZERO);
        let wait = p.delay(100.0, t0);
        assert!(
            wait > Duration::from_millis(9) && wait <= Duration::from_millis(10),
            "{wait:?}"
        );
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(p.delay(100.0, t1), Duration::ZERO);
        // After a long pause, at most the burst is available at once.
        let t2 = t1 + Duration::from_secs(60);
        let burst = (0..100)
            .take_while(|_| p.delay(100.0, t2).is_zero())
            .count();
        assert_eq!(burst, 10);
        // Below 10/s the burst is one connection.
        let mut slow = Pace::default();
        assert_eq!(slow.delay(2.0, t0), Duration::ZERO);
        assert_eq!(slow.delay(2.0, t0), Duration::from_millis(500));
    }
}

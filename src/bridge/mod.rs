//! Bridges (DESIGN §14): outgoing connections to remote brokers.
//!
//! A bridge lives on the home shard of its session's client id
//! (`local.{client_id}`), as a client's session does. At start the shard makes that
//! session (or finds it restored from the log) and subscribes it to the local filter
//! of every `out`/`both` topic, so what matches is routed to it like to any
//! subscriber, and queued (QoS 1/2, within the session's bounds) while the remote is
//! down. The bridge then connects out, announces itself with the bridge bit
//! (protocol level 0x84, as Mosquitto's `try_private`), subscribes on the remote to
//! the remote filter of every `in`/`both` topic, and attaches its connection to the
//! session as a client's connection is attached: the session resends what was in
//! flight, with DUP, and drains its queue into it; the connection's wire layer
//! ([`wire::BridgeLayer`]) rewrites each PUBLISH's topic to the remote one on the
//! way out. What the remote sends goes through the same session as a client's
//! packets (QoS 1 and 2 acknowledged as a broker acknowledges a client), with its
//! topic rewritten to the local one, and is published here as if by a local client.
//!
//! Loops: the session never gets back what it published itself (as MQTT 5's
//! no-local), so a message that came in over a bridge never goes back out over it;
//! the remote, told by the bridge bit, does the same on its side. A remote that
//! refuses the bit gets a second CONNECT without it, and then the bridge drops the
//! remote's copies of messages it just sent there ([`wire::EchoGuard`]).
//!
//! A 5.0 bridge (`protocol = "5.0"`) needs no bit: it subscribes on the remote with
//! No Local (and Retain As Published, so retained messages stay retained), sends and
//! takes 5.0 packets, so message properties cross in both directions, and honours
//! the remote's Receive Maximum and Maximum Packet Size as a 5.0 client's.

pub(crate) mod topics;
pub(crate) mod wire;

use crate::config::{BridgeConfig, BridgeTransport};
use crate::link::wire::{Peer, Wire, WireError};
use crate::link::{Conn, DisconnectReason};
use crate::net::tls::TlsError;
use crate::protocol::{
    decode_with, ConnectProps, ConnectReturnCode, DecodeError, DecodeOptions, Packet, Protocol,
    Publish, QoS, ReasonCode, SubAckCode, Subscribe, SubscribeFilter,
};
use crate::session::PeerLimits;
use crate::shard::Shard;
use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use topics::TopicMap;

/// One configured bridge, ready to run: built on the main thread at start, so a bad
/// certificate file stops the start, as a listener's does.
pub struct BridgeSpec {
    pub cfg: BridgeConfig,
    map: Arc<TopicMap>,
    tls: Option<Arc<rustls::ClientConfig>>,
    protocol: Protocol,
    /// The client id of the bridge's session here (its home shard runs the bridge).
    pub local_client_id: String,
}

impl BridgeSpec {
    /// From a validated configuration; reads the TLS files.
    pub fn new(cfg: &BridgeConfig) -> Result<BridgeSpec, TlsError> {
        let tls = match cfg.transport {
            BridgeTransport::Tls => Some(crate::net::tls::client_config(
                cfg.ca.as_deref().unwrap_or(std::path::Path::new("")),
                cfg.cert.as_deref(),
                cfg.key.as_deref(),
            )?),
            BridgeTransport::Tcp => None,
        };
        Ok(BridgeSpec {
            map: Arc::new(TopicMap::new(&cfg.topics)),
            tls,
            protocol: match cfg.protocol.as_str() {
                "3.1" => Protocol::V31,
                "5" | "5.0" => Protocol::V5,
                _ => Protocol::V311,
            },
            local_client_id: cfg.local_client_id(),
            cfg: cfg.clone(),
        })
    }

    /// The host part of `address`, as the TLS server name.
    fn host(&self) -> &str {
        let host = self
            .cfg
            .address
            .rsplit_once(':')
            .map_or(self.cfg.address.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("cannot resolve the address: {0}")]
    Resolve(std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Transport(#[from] WireError),
    #[error("malformed packet from the remote: {0}")]
    Decode(#[from] DecodeError),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("closed by the remote before CONNACK")]
    Closed,
    #[error("CONNACK refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    #[error("CONNACK refused the connection: {0}")]
    RefusedV5(ReasonCode),
    #[error("{0} instead of CONNACK")]
    Unexpected(&'static str),
    #[error("no CONNACK within the connect timeout")]
    Timeout,
}

/// A connection whose CONNACK accepted the bridge.
struct Established {
    stream: TcpStream,
    wire: Box<Wire>,
    /// Bytes the remote sent behind CONNACK.
    rbuf: BytesMut,
    peer: SocketAddr,
    /// A 5.0 remote's limits, from its CONNACK.
    limits: Option<PeerLimits>,
}

/// Reconnection delays: doubling from the minimum up to the maximum, each drawn
/// between half and all of its value (jitter, so bridges that lost one remote do not
/// all come back at the same instant).
struct Backoff {
    min: f64,
    max: f64,
    failures: u32,
}

impl Backoff {
    fn reset(&mut self) {
        self.failures = 0;
    }

    fn next(&mut self) -> Duration {
        let base = (self.min * 2f64.powi(self.failures.min(30) as i32)).min(self.max);
        self.failures += 1;
        let mut r = [0u8; 4];
        let _ = getrandom::getrandom(&mut r);
        let unit = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
        Duration::from_secs_f64(base * (0.5 + 0.5 * unit))
    }
}

/// Runs one bridge on its home shard until the broker stops.
pub(crate) async fn run(shard: Rc<RefCell<Shard>>, spec: Arc<BridgeSpec>) {
    let name = spec.cfg.name.clone();
    let filters = spec.map.local_subscriptions();
    let (key, wait) =
        shard
            .borrow_mut()
            .bridge_session(&spec.local_client_id, spec.cfg.clean_session, &filters);
    // Every shard forwards what matches before the remote hears from the bridge.
    if let Some(wait) = wait {
        poll_fn(|cx| {
            if wait.done() {
                return Poll::Ready(());
            }
            wait.register(cx.waker());
            Poll::Pending
        })
        .await;
    }
    shard.borrow_mut().bridge_state(&name, false);
    let mut backoff = Backoff {
        min: spec.cfg.reconnect_delay_min,
        max: spec.cfg.reconnect_delay_max,
        failures: 0,
    };
    // A 5.0 bridge has No Local instead of the bit.
    let mut private = spec.cfg.try_private && spec.protocol != Protocol::V5;
    loop {
        if shard.borrow().stopping {
            return;
        }
        let timeout = shard.borrow().cfg.connect_timeout();
        let attempt = connect(&spec, private, timeout).await;
        let attempt = match attempt {
            Err(
                e @ (ConnectError::Refused(ConnectReturnCode::UnacceptableProtocolVersion)
                | ConnectError::Closed),
            ) if private => {
                tracing::warn!(bridge = %name, error = %e, "the remote refused the bridge bit; connecting without it (loops are then prevented here)");
                private = false;
                connect(&spec, private, timeout).await
            }
            other => other,
        };
        match attempt {
            Ok(est) => {
                backoff.reset();
                let loop_safe = private || spec.protocol == Protocol::V5;
                let end = serve(&shard, &spec, key, est, loop_safe).await;
                tracing::info!(bridge = %name, address = %spec.cfg.address, reason = end.name(), "bridge disconnected");
                shard.borrow_mut().bridge_state(&name, false);
                if shard.borrow().stopping {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(bridge = %name, address = %spec.cfg.address, error = %e, "bridge connection failed");
            }
        }
        let delay = backoff.next();
        tracing::debug!(bridge = %name, ?delay, "bridge reconnects");
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if shard.borrow().stopping {
                return;
            }
            Timer::new((until - Instant::now()).min(Duration::from_millis(100))).await;
        }
    }
}

/// Connects, (TLS handshake,) CONNECT, CONNACK, all within `timeout`.
async fn connect(
    spec: &BridgeSpec,
    private: bool,
    timeout: Duration,
) -> Result<Established, ConnectError> {
    let address = spec.cfg.address.clone();
    let addrs = glommio::executor()
        .spawn_blocking(move || {
            std::net::ToSocketAddrs::to_socket_addrs(&address).map(|a| a.collect::<Vec<_>>())
        })
        .await
        .map_err(ConnectError::Resolve)?;
    let Some(&peer) = addrs.first() else {
        return Err(ConnectError::Resolve(std::io::ErrorKind::NotFound.into()));
    };
    let res = glommio::timer::timeout(timeout, async {
        Ok(handshake(spec, private, peer, timeout).await)
    })
    .await;
    match res {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout),
    }
}

async fn handshake(
    spec: &BridgeSpec,
    private: bool,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<Established, ConnectError> {
    let mut stream = TcpStream::connect_timeout(peer, timeout)
        .await
        .map_err(|e| ConnectError::Io(std::io::Error::other(e.to_string())))?;
    let _ = stream.set_nodelay(true);
    let tls = match &spec.tls {
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from(spec.host().to_string())
                .map_err(|e| ConnectError::Io(std::io::Error::other(e.to_string())))?;
            Some(rustls::ClientConnection::new(cfg.clone(), name)?)
        }
        None => None,
    };
    let v5 = spec.protocol == Protocol::V5;
    let layer = Box::new(wire::BridgeLayer::new(spec.map.clone(), v5));
    let mut wire = Box::new(Wire::client(tls, layer));
    let cfg = &spec.cfg;
    let connect = Packet::Connect(Box::new(crate::protocol::Connect {
        protocol: spec.protocol,
        bridge: private,
        clean_session: cfg.clean_session,
        keep_alive: cfg.keepalive,
        client_id: cfg.remote_client_id().into(),
        will: None,
        username: cfg.username.as_deref().map(Into::into),
        password: cfg
            .password
            .as_deref()
            .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
        props: ConnectProps {
            // The session lasts as long as a 3.1.1 bridge's would.
            session_expiry: if cfg.clean_session { 0 } else { u32::MAX },
            ..ConnectProps::default()
        },
    }));
    let mut buf = BytesMut::new();
    connect.encode(&mut buf);
    wire.encode(&buf)?;
    let mut rbuf = BytesMut::new();
    let opts = DecodeOptions {
        v5,
        ..DecodeOptions::new(crate::config::MQTT_MAX_PACKET)
    };
    let mut raw = vec![0u8; 16 * 1024];
    loop {
        if !wire.out.is_empty() {
            let bytes = std::mem::take(&mut wire.out);
            stream.write_all(&bytes).await?;
            crate::link::count_sent(bytes.len());
        }
        match decode_with(&mut rbuf, &opts)? {
            Some(Packet::ConnAck(ack)) => {
                if ack.code != ConnectReturnCode::Accepted {
                    return Err(ConnectError::Refused(ack.code));
                }
                return Ok(Established {
                    stream,
                    wire,
                    rbuf,
                    peer,
                    limits: None,
                });
            }
            Some(Packet::ConnAckV5(ack)) => {
                if ack.reason != ReasonCode::SUCCESS {
                    return Err(ConnectError::RefusedV5(ack.reason));
                }
                if ack.props.maximum_qos != QoS::ExactlyOnce || !ack.props.retain_available {
                    tracing::warn!(bridge = %cfg.name, maximum_qos = ack.props.maximum_qos as u8, retain_available = ack.props.retain_available, "the remote limits QoS or retained messages: messages beyond them end the connection");
                }
                return Ok(Established {
                    stream,
                    wire,
                    rbuf,
                    peer,
                    limits: Some(PeerLimits {
                        receive_maximum: ack.props.receive_maximum.get(),
                        max_packet_size: ack.props.maximum_packet_size.map(|m| m.get()),
                        ..PeerLimits::default()
                    }),
                });
            }
            Some(other) => return Err(ConnectError::Unexpected(other.name())),
            None => {}
        }
        let n = stream.read(&mut raw).await?;
        if n == 0 {
            return Err(ConnectError::Closed);
        }
        crate::link::count_received(n);
        if wire.decode(&raw[..n], &mut rbuf)? == Peer::Closed {
            return Err(ConnectError::Closed);
        }
    }
}

/// Why a bridge's connection ended.
#[derive(Debug)]
enum End {
    Closed,
    Broker(DisconnectReason),
    Io(std::io::Error),
    Transport(WireError),
    Decode(DecodeError),
    Violation(&'static str),
}

impl End {
    fn name(&self) -> String {
        match self {
            End::Closed => "closed by the remote".into(),
            End::Broker(r) => r.name().into(),
            End::Io(e) => format!("socket error: {e}"),
            End::Transport(e) => format!("transport error: {e}"),
            End::Decode(e) => format!("malformed packet from the remote: {e}"),
            End::Violation(what) => format!("protocol violation by the remote: {what}"),
        }
    }
}

/// Packet id of the bridge's SUBSCRIBE on each connection.
const SUBSCRIBE_ID: u16 = 1;
/// How often the bridge checks its keep-alive and moves its counters to the shard's.
const TICK: Duration = Duration::from_millis(250);

/// Serves one established connection until it ends.
async fn serve(
    shard: &Rc<RefCell<Shard>>,
    spec: &BridgeSpec,
    key: usize,
    est: Established,
    loop_safe: bool,
) -> End {
    let Established {
        stream,
        mut wire,
        mut rbuf,
        peer,
        limits,
    } = est;
    let name = &spec.cfg.name;
    let v5 = limits.is_some();
    if !loop_safe {
        if let Some(b) = layer(&mut wire) {
            b.echo = Some(wire::EchoGuard::default());
        }
    }
    let conn = {
        let mut s = shard.borrow_mut();
        let conn = Conn::new(
            s.next_conn_id(),
            peer,
            stream,
            Some(wire),
            s.writes().clone(),
        );
        conn.v5.set(v5);
        let remote = spec.map.remote_subscriptions();
        let subscribing = !remote.is_empty();
        if subscribing {
            conn.write_packet(&Packet::Subscribe(Subscribe {
                pkid: SUBSCRIBE_ID,
                filters: remote
                    .into_iter()
                    .map(|(filter, qos)| SubscribeFilter {
                        filter: filter.into(),
                        qos,
                        // 5.0: what the bridge publishes there does not come back,
                        // and retained messages arrive retained.
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: Default::default(),
                    })
                    .collect(),
                id: None,
                user: Vec::new(),
            }));
        }
        s.bridge_attach(key, &conn, limits, Instant::now());
        tracing::info!(bridge = %name, address = %spec.cfg.address, %peer, shard = s.id, protocol = spec.protocol.name(), loop_safe, "bridge connected");
        if !subscribing {
            s.bridge_state(name, true);
        }
        conn
    };
    let last_heard = Rc::new(Cell::new(Instant::now()));
    let ticker = glommio::spawn_local(tick(
        shard.clone(),
        conn.clone(),
        last_heard.clone(),
        spec.cfg.keepalive,
    ))
    .detach();
    let end = read_loop(shard, spec, &conn, key, &mut rbuf, &last_heard).await;
    ticker.cancel();
    {
        let mut s = shard.borrow_mut();
        s.route_pending();
        sync_counters(&mut s, &conn);
        s.bridge_detach(key, conn.id);
    }
    // What is owed to the remote (the DISCONNECT on shutdown) goes out, for a while.
    conn.close_and_flush(Duration::from_secs(2)).await;
    end
}

/// The bridge's layer of its connection's wire.
fn layer(wire: &mut Wire) -> Option<&mut wire::BridgeLayer> {
    wire.outgoing()?.downcast_mut()
}

/// Moves the wire layer's count of messages sent into the shard's counters.
fn sync_counters(s: &mut Shard, conn: &Conn) {
    if let Some(b) = conn.wire.borrow_mut().as_mut().and_then(|w| layer(w)) {
        s.stats.bridge_messages_sent += std::mem::take(&mut b.published);
        s.stats.bridge_messages_dropped += std::mem::take(&mut b.unmapped);
    }
}

/// Keep-alive (a PINGREQ every `keepalive` seconds; the connection closed when the
/// remote has been silent for 1.5 times that) and counters, until the connection
/// closes.
async fn tick(shard: Rc<RefCell<Shard>>, conn: Rc<Conn>, last_heard: Rc<Cell<Instant>>, ka: u16) {
    let keepalive = Duration::from_secs(u64::from(ka));
    let mut last_ping = Instant::now();
    while !conn.is_closing() {
        Timer::new(TICK).await;
        sync_counters(&mut shard.borrow_mut(), &conn);
        if ka == 0 {
            continue;
        }
        let now = Instant::now();
        {
            let s = shard.borrow();
            if s.paused || s.outbox_congested() {
                // Not reading the remote, on purpose: its silence is ours.
                last_heard.set(now);
                continue;
            }
        }
        if now.duration_since(last_heard.get()) > keepalive.mul_f64(1.5) {
            shard.borrow_mut().stats.keepalive_timeouts += 1;
            conn.close_because(DisconnectReason::KeepAliveTimeout);
            return;
        }
        if now.duration_since(last_ping) >= keepalive {
            last_ping = now;
            conn.write_packet(&Packet::PingReq);
        }
    }
}

/// Reads and handles what the remote sends until the connection ends.
async fn read_loop(
    shard: &Rc<RefCell<Shard>>,
    spec: &BridgeSpec,
    conn: &Rc<Conn>,
    key: usize,
    rbuf: &mut BytesMut,
    last_heard: &Cell<Instant>,
) -> End {
    let mqtt31 = spec.protocol == Protocol::V31;
    let v5 = spec.protocol == Protocol::V5;
    loop {
        let now = Instant::now();
        loop {
            // Log compaction: nothing more is taken from the remote until it is
            // over, as from a client.
            if shard.borrow().paused {
                shard.borrow_mut().route_pending();
                if !wait_until_readable(shard, conn).await {
                    return End::Broker(conn.close_reason().unwrap_or(DisconnectReason::Shutdown));
                }
            }
            let decoded = {
                let opts = shard.borrow().cfg.decode_options(mqtt31, v5);
                decode_with(rbuf, &opts)
            };
            let packet = match decoded {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return End::Decode(e),
            };
            last_heard.set(now);
            if let Err(end) = handle(shard, spec, conn, key, packet, now) {
                return end;
            }
        }
        shard.borrow_mut().route_pending();
        if !wait_until_readable(shard, conn).await {
            return End::Broker(conn.close_reason().unwrap_or(DisconnectReason::Shutdown));
        }
        match crate::net::read_wire(conn, rbuf).await {
            Ok(Some((decoded, reply))) => {
                if reply {
                    conn.schedule_write();
                }
                match decoded {
                    Ok(Peer::Open) => {}
                    Ok(Peer::Closed) => return End::Closed,
                    Err(e) => return End::Transport(e),
                }
            }
            Ok(None) => return End::Closed,
            Err(_) if conn.is_closing() => {
                return End::Broker(conn.close_reason().unwrap_or(DisconnectReason::Shutdown))
            }
            Err(e) => return End::Io(e),
        }
    }
}

/// Backpressure, as for a client: nothing more is read from the remote while an
/// outbox to another shard is over its high-water mark or the log is being
/// compacted. (Unlike a client, the bridge still reads while its own output waits:
/// two brokers bridged both ways must not each wait for the other to read.) False
/// once the connection is closing.
async fn wait_until_readable(shard: &Rc<RefCell<Shard>>, conn: &Conn) -> bool {
    poll_fn(|cx| {
        if conn.is_closing() {
            return Poll::Ready(false);
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

/// One packet from the remote.
fn handle(
    shard: &Rc<RefCell<Shard>>,
    spec: &BridgeSpec,
    conn: &Rc<Conn>,
    key: usize,
    packet: Packet,
    now: Instant,
) -> Result<(), End> {
    let packet = match packet {
        Packet::Publish(p) if p.props.as_ref().is_some_and(|p| p.topic_alias.is_some()) => {
            // The bridge announced no Topic Alias Maximum [MQTT-3.3.2-8].
            return Err(End::Violation("a topic alias"));
        }
        Packet::Publish(p) => match inbound(shard, spec, conn, p) {
            Some(p) => Packet::Publish(p),
            None => return Ok(()),
        },
        // 5.0 acknowledgements reach the session as the 3.1.1 ones.
        Packet::PubAckV5(a) => Packet::PubAck(a.pkid),
        Packet::PubRecV5(a) => Packet::PubRec(a.pkid),
        Packet::PubRelV5(a) => Packet::PubRel(a.pkid),
        Packet::PubCompV5(a) => Packet::PubComp(a.pkid),
        Packet::SubAckV5(ack) => {
            if ack.pkid == SUBSCRIBE_ID {
                let remote = spec.map.remote_subscriptions();
                for ((filter, _), code) in remote.iter().zip(&ack.reasons) {
                    if code.is_error() {
                        tracing::warn!(bridge = %spec.cfg.name, %filter, reason = %code, "the remote refused the bridge's subscription");
                    }
                }
                shard.borrow_mut().bridge_state(&spec.cfg.name, true);
            }
            return Ok(());
        }
        Packet::UnsubAckV5(_) => return Ok(()),
        Packet::DisconnectV5(d) => {
            tracing::info!(bridge = %spec.cfg.name, reason = %d.reason, why = d.reason_string.as_deref().unwrap_or(""), "the remote sent DISCONNECT");
            return Err(End::Closed);
        }
        Packet::SubAck(ack) => {
            if ack.pkid == SUBSCRIBE_ID {
                let remote = spec.map.remote_subscriptions();
                for ((filter, _), code) in remote.iter().zip(&ack.codes) {
                    if *code == SubAckCode::Failure {
                        tracing::warn!(bridge = %spec.cfg.name, %filter, "the remote refused the bridge's subscription");
                    }
                }
                // Connected, and subscribed on the remote: both directions flow.
                shard.borrow_mut().bridge_state(&spec.cfg.name, true);
            }
            return Ok(());
        }
        Packet::PingResp | Packet::UnsubAck(_) => return Ok(()),
        p @ (Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_)) => p,
        other => return Err(End::Violation(other.name())),
    };
    match shard.borrow_mut().handle_packet(key, conn.id, packet, now) {
        crate::shard::Flow::Continue => Ok(()),
        crate::shard::Flow::Close { .. } => Err(End::Violation("rejected by the session")),
    }
}

/// A PUBLISH from the remote, its topic made local; `None` when it is not to be
/// published here (no `in` topic carries it, its local topic is over
/// `max_topic_length`, or it is the remote's copy of a message the bridge sent), in
/// which case it is acknowledged here and counted as dropped.
fn inbound(
    shard: &Rc<RefCell<Shard>>,
    spec: &BridgeSpec,
    conn: &Rc<Conn>,
    mut p: Publish,
) -> Option<Publish> {
    let echo = conn
        .wire
        .borrow_mut()
        .as_mut()
        .and_then(|w| layer(w))
        .and_then(|b| b.echo.as_mut())
        .is_some_and(|g| g.is_echo(&p.topic, &p.payload));
    let mut s = shard.borrow_mut();
    let max_len = s.cfg.max_topic_length;
    let local = if echo {
        None
    } else {
        // The local prefix may make it longer than the limit.
        spec.map.inbound(&p.topic).filter(|t| t.len() <= max_len)
    };
    let Some(local) = local else {
        s.stats.bridge_messages_dropped += 1;
        // (On a 5.0 connection these go out as the 5.0 success forms.)
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => conn.write_packet(&Packet::PubAck(p.pkid)),
            // The remote's PUBREL then gets its PUBCOMP from the session.
            QoS::ExactlyOnce => conn.write_packet(&Packet::PubRec(p.pkid)),
        }
        return None;
    };
    s.stats.bridge_messages_received += 1;
    p.topic = local.into();
    Some(p)
}

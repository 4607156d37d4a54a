//! What lies between a socket and MQTT's bytes on a TLS, WebSocket or WebSocket over
//! TLS connection (DESIGN §9), sans-IO: raw bytes from the socket go in
//! ([`Wire::decode`]), MQTT bytes come out; MQTT bytes go in ([`Wire::encode`]),
//! bytes for the socket collect in [`Wire::out`]. Plain TCP has no `Wire` and keeps
//! its zero-copy path.
//!
//! TLS is rustls's own sans-IO `ServerConnection`; WebSocket is tungstenite's, both
//! its HTTP upgrade and its frames, over [`Pipe`], an in-memory stream. The handshakes
//! happen in the same calls as the data: whatever the client sends first (the TLS
//! ClientHello, the HTTP upgrade) goes through `decode`, and the replies come out in
//! `out`, so the connection's first-packet loop needs no second I/O loop.

use bytes::{Buf, BytesMut};
use rustls::{ConnectionCommon, ServerConnection, SideData};
use std::io::{self, Read, Write};
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, ServerHandshake, WebSocket};

/// An in-memory stream for tungstenite: reads take what `decode` put in `input`
/// (`WouldBlock` when empty), writes collect in `output`.
#[derive(Debug, Default)]
pub struct Pipe {
    input: BytesMut,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input.advance(n);
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks the upgrade request: the listener's path, and `mqtt` among the offered
/// subprotocols [MQTT-6.0.0-3]; answers with the subprotocol chosen.
#[derive(Debug, Clone)]
pub struct Upgrade {
    path: String,
}

impl Callback for Upgrade {
    fn on_request(self, req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
        let refuse = |status: u16, why: &str| {
            let mut r = ErrorResponse::new(Some(why.to_string()));
            *r.status_mut() = tungstenite::http::StatusCode::from_u16(status)
                .unwrap_or(tungstenite::http::StatusCode::BAD_REQUEST);
            r
        };
        if req.uri().path() != self.path {
            return Err(refuse(404, "no MQTT endpoint at this path\n"));
        }
        let offers_mqtt = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
        if !offers_mqtt {
            return Err(refuse(400, "the WebSocket subprotocol must be mqtt\n"));
        }
        resp.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tungstenite::http::HeaderValue::from_static("mqtt"),
        );
        Ok(resp)
    }
}

enum Ws {
    Handshake(MidHandshake<ServerHandshake<Pipe, Upgrade>>),
    Open(WebSocket<Pipe>),
    /// Between states, or after a failed upgrade.
    Gone,
}

/// The layers of one connection.
enum Layers {
    Tls(Box<ServerConnection>),
    Ws(Box<Ws>),
    Wss(Box<ServerConnection>, Box<Ws>),
    /// An outgoing connection (a bridge's, see `crate::bridge`): what the shard
    /// writes is mapped on the way out, then optionally goes through TLS as the
    /// client.
    Client(Box<ClientLayers>),
}

/// What an outgoing connection does to the MQTT bytes the shard writes to it before
/// they are sent (a bridge rewrites its topics); defined by the connection's owner.
pub trait Outgoing: Send {
    /// MQTT bytes written by the shard (whole packets, possibly split across calls)
    /// to the MQTT bytes to send.
    fn map(&mut self, mqtt: &[u8]) -> Result<BytesMut, WireError>;
    /// For the owner to reach its own state.
    fn as_any(&mut self) -> &mut dyn std::any::Any;
}

/// The layers of an outgoing connection.
struct ClientLayers {
    tls: Option<rustls::ClientConnection>,
    outgoing: Box<dyn Outgoing>,
}

/// What [`Wire::decode`] found besides MQTT bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The connection goes on.
    Open,
    /// The client closed it properly (TLS close_notify, WebSocket close frame).
    Closed,
}

/// Why a connection's transport failed; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("WebSocket upgrade refused: {0}")]
    Upgrade(String),
    #[error("WebSocket: {0}")]
    Ws(String),
    #[error("a WebSocket text frame (MQTT travels in binary frames only)")]
    TextFrame,
    #[error("outgoing: {0}")]
    Outgoing(String),
}

/// One connection's transport; see the module documentation.
pub struct Wire {
    layers: Layers,
    /// Bytes for the socket, not yet sent.
    pub out: BytesMut,
}

/// tungstenite's limits: a WebSocket message may hold a whole MQTT packet of the
/// largest size accepted, and then some packets more.
fn ws_config(max_packet_size: usize) -> WebSocketConfig {
    let max = max_packet_size.saturating_add(64 * 1024);
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

impl Wire {
    pub fn tls(conn: ServerConnection) -> Wire {
        Wire {
            layers: Layers::Tls(Box::new(conn)),
            out: BytesMut::new(),
        }
    }

    /// An outgoing connection (to a remote broker), as its client: optionally TLS,
    /// and what the shard writes mapped by `outgoing` first.
    pub fn client(tls: Option<rustls::ClientConnection>, outgoing: Box<dyn Outgoing>) -> Wire {
        Wire {
            layers: Layers::Client(Box::new(ClientLayers { tls, outgoing })),
            out: BytesMut::new(),
        }
    }

    /// The [`Outgoing`] of an outgoing connection, for its owner to downcast.
    pub fn outgoing(&mut self) -> Option<&mut dyn std::any::Any> {
        match &mut self.layers {
            Layers::Client(c) => Some(c.outgoing.as_any()),
            _ => None,
        }
    }

    /// WebSocket, upgraded on `path`, optionally inside TLS.
    pub fn ws(path: &str, tls: Option<ServerConnection>, max_packet_size: usize) -> Wire {
        let upgrade = Upgrade {
            path: path.to_string(),
        };
        let handshake =
            ServerHandshake::start(Pipe::default(), upgrade, Some(ws_config(max_packet_size)));
        let ws = Box::new(Ws::Handshake(handshake));
        Wire {
            layers: match tls {
                Some(t) => Layers::Wss(Box::new(t), ws),
                None => Layers::Ws(ws),
            },
            out: BytesMut::new(),
        }
    }

    /// The TLS connection, once its handshake is done (for the client certificate).
    pub fn tls_session(&self) -> Option<&ServerConnection> {
        match &self.layers {
            Layers::Tls(t) | Layers::Wss(t, _) => Some(t),
            Layers::Ws(_) | Layers::Client(_) => None,
        }
    }

    /// Whether the TLS handshake and the WebSocket upgrade are both done.
    pub fn is_established(&self) -> bool {
        let tls_done = self.tls_session().is_none_or(|t| !t.is_handshaking());
        let ws_done = match &self.layers {
            Layers::Ws(w) | Layers::Wss(_, w) => matches!(**w, Ws::Open(_)),
            Layers::Tls(_) => true,
            Layers::Client(c) => return c.tls.as_ref().is_none_or(|t| !t.is_handshaking()),
        };
        tls_done && ws_done
    }

    /// Raw bytes from the socket: MQTT bytes are appended to `mqtt`, and whatever the
    /// transport answers (handshake messages, pongs, close replies) to `out`.
    pub fn decode(&mut self, raw: &[u8], mqtt: &mut BytesMut) -> Result<Peer, WireError> {
        let Wire { layers, out } = self;
        match layers {
            Layers::Tls(tls) => {
                let (peer, res) = tls_decode(&mut ***tls, raw, &mut |plain| {
                    mqtt.extend_from_slice(plain);
                    Ok(())
                });
                tls_flush(&mut ***tls, out);
                res.map(|_| peer)
            }
            Layers::Client(c) => match c.tls.as_mut() {
                Some(tls) => {
                    let (peer, res) = tls_decode(&mut **tls, raw, &mut |plain| {
                        mqtt.extend_from_slice(plain);
                        Ok(())
                    });
                    tls_flush(&mut **tls, out);
                    res.map(|_| peer)
                }
                None => {
                    mqtt.extend_from_slice(raw);
                    Ok(Peer::Open)
                }
            },
            Layers::Ws(ws) => {
                let mut pipe_out = Vec::new();
                let res = ws_decode(ws, raw, mqtt, &mut pipe_out);
                out.extend_from_slice(&pipe_out);
                res
            }
            Layers::Wss(tls, ws) => {
                let mut plain_in = BytesMut::new();
                let (tls_peer, res) = tls_decode(&mut ***tls, raw, &mut |plain| {
                    plain_in.extend_from_slice(plain);
                    Ok(())
                });
                let mut ws_out = Vec::new();
                let ws_res = if plain_in.is_empty() {
                    Ok(Peer::Open)
                } else {
                    ws_decode(ws, &plain_in, mqtt, &mut ws_out)
                };
                if !ws_out.is_empty() {
                    // Written into rustls, which frames it; a full buffer is not
                    // possible with the default (unbounded) send buffer.
                    let _ = tls.writer().write_all(&ws_out);
                }
                tls_flush(&mut ***tls, out);
                res?;
                let ws_peer = ws_res?;
                Ok(if tls_peer == Peer::Closed || ws_peer == Peer::Closed {
                    Peer::Closed
                } else {
                    Peer::Open
                })
            }
        }
    }

    /// MQTT bytes to send: framed and encrypted into `out`.
    pub fn encode(&mut self, mqtt: &[u8]) -> Result<(), WireError> {
        let Wire { layers, out } = self;
        match layers {
            Layers::Tls(tls) => {
                let _ = tls.writer().write_all(mqtt);
                tls_flush(&mut ***tls, out);
                Ok(())
            }
            Layers::Client(c) => {
                let mapped = c.outgoing.map(mqtt)?;
                match c.tls.as_mut() {
                    Some(tls) => {
                        let _ = tls.writer().write_all(&mapped);
                        tls_flush(&mut **tls, out);
                    }
                    None => out.extend_from_slice(&mapped),
                }
                Ok(())
            }
            Layers::Ws(ws) => {
                let framed = ws_encode(ws, mqtt)?;
                out.extend_from_slice(&framed);
                Ok(())
            }
            Layers::Wss(tls, ws) => {
                let framed = ws_encode(ws, mqtt)?;
                let _ = tls.writer().write_all(&framed);
                tls_flush(&mut ***tls, out);
                Ok(())
            }
        }
    }

    /// A goodbye the client can tell from a dropped connection: a WebSocket close
    /// frame, then TLS close_notify, into `out`.
    pub fn close(&mut self) {
        let Wire { layers, out } = self;
        let close_ws = |ws: &mut Ws| -> Vec<u8> {
            if let Ws::Open(w) = ws {
                let _ = w.close(None);
                let _ = w.flush();
                return std::mem::take(&mut w.get_mut().output);
            }
            Vec::new()
        };
        match layers {
            Layers::Tls(tls) => {
                tls.send_close_notify();
                tls_flush(&mut ***tls, out);
            }
            Layers::Ws(ws) => out.extend_from_slice(&close_ws(ws)),
            Layers::Wss(tls, ws) => {
                let bytes = close_ws(ws);
                let _ = tls.writer().write_all(&bytes);
                tls.send_close_notify();
                tls_flush(&mut ***tls, out);
            }
            Layers::Client(c) => {
                if let Some(tls) = c.tls.as_mut() {
                    tls.send_close_notify();
                    tls_flush(&mut **tls, out);
                }
            }
        }
    }
}

/// Feeds `raw` to rustls and hands every plaintext byte to `sink`.
fn tls_decode<D: SideData>(
    tls: &mut ConnectionCommon<D>,
    mut raw: &[u8],
    sink: &mut dyn FnMut(&[u8]) -> Result<(), WireError>,
) -> (Peer, Result<(), WireError>) {
    let mut peer = Peer::Open;
    let mut plain = [0u8; 16 * 1024];
    loop {
        if !raw.is_empty() {
            match tls.read_tls(&mut raw) {
                Ok(_) => {}
                Err(e) => return (peer, Err(WireError::Ws(format!("TLS input: {e}")))),
            }
        }
        if let Err(e) = tls.process_new_packets() {
            return (peer, Err(e.into()));
        }
        loop {
            match tls.reader().read(&mut plain) {
                Ok(0) => {
                    peer = Peer::Closed;
                    break;
                }
                Ok(n) => {
                    if let Err(e) = sink(&plain[..n]) {
                        return (peer, Err(e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // Unexpected EOF without close_notify: treated as a close.
                    let _ = e;
                    peer = Peer::Closed;
                    break;
                }
            }
        }
        if raw.is_empty() {
            return (peer, Ok(()));
        }
    }
}

/// Moves the TLS records rustls has ready into `out`.
fn tls_flush<D: SideData>(tls: &mut ConnectionCommon<D>, out: &mut BytesMut) {
    let mut w = BytesWriter(out);
    while tls.wants_write() {
        if tls.write_tls(&mut w).is_err() {
            break;
        }
    }
}

struct BytesWriter<'a>(&'a mut BytesMut);

impl Write for BytesWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Feeds `raw` (plaintext: after TLS, if any) to the WebSocket side: the upgrade
/// while it is not done, then frames; binary payloads go to `mqtt`, and whatever the
/// WebSocket answers to `reply`.
fn ws_decode(
    ws: &mut Ws,
    raw: &[u8],
    mqtt: &mut BytesMut,
    reply: &mut Vec<u8>,
) -> Result<Peer, WireError> {
    match std::mem::replace(ws, Ws::Gone) {
        Ws::Handshake(mut mid) => {
            mid.get_mut().get_mut().input.extend_from_slice(raw);
            match mid.handshake() {
                Ok(mut socket) => {
                    reply.append(&mut socket.get_mut().output);
                    // Frames sent right behind the upgrade request are already here.
                    let rest = std::mem::take(&mut socket.get_mut().input);
                    *ws = Ws::Open(socket);
                    if rest.is_empty() {
                        return Ok(Peer::Open);
                    }
                    ws_decode(ws, &rest, mqtt, reply)
                }
                Err(HandshakeError::Interrupted(mut mid)) => {
                    reply.append(&mut mid.get_mut().get_mut().output);
                    *ws = Ws::Handshake(mid);
                    Ok(Peer::Open)
                }
                Err(HandshakeError::Failure(e)) => {
                    // tungstenite has written the HTTP error response into the pipe,
                    // which is gone with the failed handshake: answer ourselves.
                    reply.extend_from_slice(refusal(&e).as_bytes());
                    Err(WireError::Upgrade(e.to_string()))
                }
            }
        }
        Ws::Open(mut socket) => {
            socket.get_mut().input.extend_from_slice(raw);
            let mut peer = Peer::Open;
            let res = loop {
                match socket.read() {
                    Ok(Message::Binary(b)) => mqtt.extend_from_slice(&b),
                    Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
                    Ok(Message::Close(_)) => peer = Peer::Closed,
                    // [MQTT-6.0.0-1]: anything but binary data frames closes the connection.
                    Ok(Message::Text(_)) => break Err(WireError::TextFrame),
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        break Ok(())
                    }
                    Err(tungstenite::Error::ConnectionClosed)
                    | Err(tungstenite::Error::AlreadyClosed) => {
                        peer = Peer::Closed;
                        break Ok(());
                    }
                    Err(e) => break Err(WireError::Ws(e.to_string())),
                }
            };
            // Pongs and close replies tungstenite queued.
            let _ = socket.flush();
            reply.append(&mut socket.get_mut().output);
            // After an error the connection is done: nothing more is read from it.
            *ws = if res.is_ok() {
                Ws::Open(socket)
            } else {
                Ws::Gone
            };
            res.map(|_| peer)
        }
        Ws::Gone => Err(WireError::Ws("connection already failed".into())),
    }
}

/// The HTTP answer to a refused upgrade.
fn refusal(e: &tungstenite::Error) -> String {
    let (status, reason) = match e {
        tungstenite::Error::Http(resp) => (
            resp.status().as_u16(),
            resp.status().canonical_reason().unwrap_or("Bad Request"),
        ),
        _ => (400, "Bad Request"),
    };
    format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
}

/// MQTT bytes as one binary frame.
fn ws_encode(ws: &mut Ws, mqtt: &[u8]) -> Result<Vec<u8>, WireError> {
    let Ws::Open(socket) = ws else {
        return Err(WireError::Ws("output before the upgrade".into()));
    };
    socket
        .send(Message::binary(mqtt.to_vec()))
        .map_err(|e| WireError::Ws(e.to_string()))?;
    Ok(std::mem::take(&mut socket.get_mut().output))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

    /// A masked client frame (RFC 6455 §5.2) with the given opcode.
    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11u8, 0x22, 0x33, 0x44];
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend((n as u16).to_be_bytes());
            }
        }
        f.extend(mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    fn upgraded() -> Wire {
        let mut w = Wire::ws("/mqtt", None, 1 << 20);
        let mut mqtt = BytesMut::new();
        assert_eq!(w.decode(UPGRADE.as_bytes(), &mut mqtt).unwrap(), Peer::Open);
        let reply = String::from_utf8(w.out.split().to_vec()).unwrap();
        assert!(reply.starts_with("HTTP/1.1 101"), "{reply}");
        assert!(
            reply
                .to_ascii_lowercase()
                .contains("sec-websocket-protocol: mqtt"),
            "{reply}"
        );
        assert!(w.is_established());
        w
    }

    #[test]
    fn the_upgrade_may_arrive_in_pieces() {
        // tungstenite refuses an upgrade dribbled in dozens of tiny reads (a slow
        // client attack), and bytes sent before the server's answer ("a client MUST
        // wait for a response", RFC 6455 §4.1); a few pieces are fine.
        let mut w = Wire::ws("/mqtt", None, 1 << 20);
        let mut mqtt = BytesMut::new();
        for piece in UPGRADE.as_bytes().chunks(16) {
            assert_eq!(w.decode(piece, &mut mqtt).unwrap(), Peer::Open);
        }
        assert!(w.is_established());
        w.decode(&frame(2, true, b"\x10\x00"), &mut mqtt).unwrap();
        assert_eq!(&mqtt[..], b"\x10\x00");
    }

    #[test]
    fn frames_split_anywhere_and_fragmented_messages_give_the_same_bytes() {
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let mut stream = frame(2, false, &payload[..100]);
        stream.extend(frame(0, false, &payload[100..250]));
        stream.extend(frame(9, true, b"ping")); // a ping between fragments
        stream.extend(frame(0, true, &payload[250..]));
        stream.extend(frame(2, true, b"second"));
        for cut in [1usize, 2, 7, 100, stream.len()] {
            let mut w = upgraded();
            let mut mqtt = BytesMut::new();
            for chunk in stream.chunks(cut) {
                assert_eq!(w.decode(chunk, &mut mqtt).unwrap(), Peer::Open);
            }
            let mut want = payload.clone();
            want.extend_from_slice(b"second");
            assert_eq!(&mqtt[..], &want[..], "cut {cut}");
            // The ping was answered: an unmasked pong frame with its payload.
            assert_eq!(
                &w.out[..],
                &[0x8A, 4, b'p', b'i', b'n', b'g'][..],
                "cut {cut}"
            );
        }
    }

    #[test]
    fn output_is_one_unmasked_binary_frame() {
        let mut w = upgraded();
        w.encode(b"\x20\x02\x00\x00").unwrap();
        assert_eq!(&w.out[..], &[0x82, 4, 0x20, 2, 0, 0][..]);
    }

    #[test]
    fn text_frames_and_garbage_are_errors_and_close_frames_end_the_connection() {
        let mut mqtt = BytesMut::new();
        let mut w = upgraded();
        assert!(matches!(
            w.decode(&frame(1, true, b"hi"), &mut mqtt),
            Err(WireError::TextFrame)
        ));
        let mut w = upgraded();
        assert!(
            w.decode(&[0x82, 0x05, 1, 2, 3, 4, 5], &mut mqtt).is_err(),
            "unmasked"
        );
        let mut w = upgraded();
        assert_eq!(
            w.decode(&frame(8, true, &[3, 232]), &mut mqtt).unwrap(),
            Peer::Closed
        );
        assert_eq!(w.out[0], 0x88, "the close is answered");
    }

    #[test]
    fn refused_upgrades_get_an_http_status() {
        for (request, status) in [
            (UPGRADE.replace("/mqtt", "/other"), "404"),
            (
                UPGRADE.replace("Sec-WebSocket-Protocol: mqtt\r\n", ""),
                "400",
            ),
            ("PUT / HTTP/1.1\r\n\r\n".to_string(), "400"),
        ] {
            let mut w = Wire::ws("/mqtt", None, 1 << 20);
            let mut mqtt = BytesMut::new();
            assert!(
                w.decode(request.as_bytes(), &mut mqtt).is_err(),
                "{request}"
            );
            let reply = String::from_utf8(w.out.to_vec()).unwrap();
            assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{reply}");
        }
    }

    #[test]
    fn a_message_over_the_size_limit_is_an_error() {
        let mut w = Wire::ws("/mqtt", None, 100);
        let mut mqtt = BytesMut::new();
        w.decode(UPGRADE.as_bytes(), &mut mqtt).unwrap();
        // A header announcing 2^40 bytes.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend((1u64 << 40).to_be_bytes());
        huge.extend([0, 0, 0, 0]);
        assert!(w.decode(&huge, &mut mqtt).is_err());
    }
}

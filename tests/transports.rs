//! TLS, WebSocket and WebSocket over TLS listeners, through real sockets: rumqttc
//! (its rustls and WebSocket transports), tungstenite as a raw WebSocket client, and
//! raw bytes; certificates made here with rcgen. Each listener on a 2-shard broker,
//! next to a plain TCP one, with clients placed so messages cross shards.

mod common;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use shardmq::config::{ListenerConfig, Transport};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate
/// (CN `device-1`), all in PEM, written to a directory of their own.
struct Pki {
    dir: PathBuf,
    ca: String,
    client_cert: String,
    client_key: String,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "shardmq-tls-{}-{}",
            std::process::id(),
            unique(name)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = Pki {
            dir,
            ca: String::new(),
            client_cert: String::new(),
            client_key: String::new(),
        };
        p.issue();
        p
    }

    /// A new CA and new certificates, written over the old files.
    fn issue(&mut self) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("test CA {}", unique("ca")));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "device-1");
        let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
        std::fs::write(self.path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(self.path("server.pem"), server.pem()).unwrap();
        std::fs::write(self.path("server.key"), server_key.serialize_pem()).unwrap();
        self.ca = ca.pem();
        self.client_cert = client.pem();
        self.client_key = client_key.serialize_pem();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn tls_config(&self, client: bool) -> rumqttc::TlsConfiguration {
        rumqttc::TlsConfiguration::Simple {
            ca: self.ca.clone().into_bytes(),
            alpn: None,
            client_auth: client.then(|| {
                (
                    self.client_cert.clone().into_bytes(),
                    self.client_key.clone().into_bytes(),
                )
            }),
        }
    }
}

/// A broker with a plain listener first, then one listener of each `transports`.
fn broker_with_listeners(
    pki: &Pki,
    transports: &[Transport],
    f: impl FnOnce(&mut Config),
) -> Broker {
    broker_with(|c| {
        c.cert = Some(pki.path("server.pem"));
        c.key = Some(pki.path("server.key"));
        for &t in transports {
            c.listener
                .push(ListenerConfig::new("127.0.0.1:0".parse().unwrap(), t));
        }
        f(c);
    })
}

fn rumqttc_over(
    addr: SocketAddr,
    transport: rumqttc::Transport,
    id: &str,
    f: impl FnOnce(&mut rumqttc::MqttOptions),
) -> Mq {
    let host = match &transport {
        rumqttc::Transport::Ws | rumqttc::Transport::Wss(_) => {
            let scheme = if matches!(transport, rumqttc::Transport::Ws) {
                "ws"
            } else {
                "wss"
            };
            format!("{scheme}://localhost:{}/mqtt", addr.port())
        }
        _ => "localhost".to_string(),
    };
    mq_on(host, addr.port(), id, move |o| {
        o.set_transport(transport);
        f(o);
    })
}

/// Publishes from a plain TCP client on shard 0 and receives on `sub` (shard 1).
fn round_trip(plain: SocketAddr, sub: &mut Mq, topic: &str) {
    assert_eq!(sub.subscribe(topic, 1), Some(1));
    let mut p = mq(plain, &id_on_shard("plain-pub", 0), true);
    p.publish_acked(topic, 1, false, b"across");
    let m = sub.recv_publish();
    assert_eq!((m.topic.as_str(), &m.payload[..]), (topic, &b"across"[..]));
    // And back: the secured client publishes, the plain one receives.
    assert_eq!(p.subscribe(&format!("{topic}/back"), 1), Some(1));
    sub.publish_acked(&format!("{topic}/back"), 1, false, b"back");
    let m = p.recv_publish();
    assert_eq!(&m.payload[..], b"back");
    p.disconnect();
}

#[test]
fn rumqttc_over_tls_ws_and_wss_talks_to_plain_tcp_clients() {
    let pki = Pki::new("all");
    let b = broker_with_listeners(
        &pki,
        &[Transport::Tls, Transport::Ws, Transport::Wss],
        |_| {},
    );
    let addrs = b.local_addrs().to_vec();
    assert_eq!(addrs.len(), 4);
    let mut tls = rumqttc_over(
        addrs[1],
        rumqttc::Transport::tls_with_config(pki.tls_config(false)),
        &id_on_shard("tls", 1),
        |_| {},
    );
    round_trip(addrs[0], &mut tls, "t/tls");
    let mut ws = rumqttc_over(
        addrs[2],
        rumqttc::Transport::Ws,
        &id_on_shard("ws", 1),
        |_| {},
    );
    round_trip(addrs[0], &mut ws, "t/ws");
    let mut wss = rumqttc_over(
        addrs[3],
        rumqttc::Transport::wss_with_config(pki.tls_config(false)),
        &id_on_shard("wss", 1),
        |_| {},
    );
    round_trip(addrs[0], &mut wss, "t/wss");
    for c in [tls, ws, wss] {
        c.disconnect();
    }
    assert_no_leaks(&b);
    assert_eq!(b.stats().total().transport_errors, 0);
}

#[test]
fn a_bad_tls_handshake_is_closed_counted_and_disturbs_no_one() {
    let pki = Pki::new("bad");
    let b = broker_with_listeners(&pki, &[Transport::Tls], |_| {});
    let (plain, tls_addr) = (b.local_addrs()[0], b.local_addrs()[1]);
    let mut good = rumqttc_over(
        tls_addr,
        rumqttc::Transport::tls_with_config(pki.tls_config(false)),
        &id_on_shard("good", 0),
        |_| {},
    );
    // Plain MQTT sent to the TLS port, then garbage: both closed.
    for bytes in [
        connect_packet("plain-on-tls", true),
        vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
    ] {
        let mut raw = Raw::open(tls_addr);
        raw.send_lossy(&bytes);
        let _ = raw.expect_closed();
    }
    // A client that trusts another CA refuses the server; the server counts it.
    let other = Pki::new("other");
    let mut opts = rumqttc::MqttOptions::new("distrust", "localhost", tls_addr.port());
    opts.set_transport(rumqttc::Transport::tls_with_config(other.tls_config(false)));
    let (_c, mut conn) = rumqttc::Client::new(opts, 8);
    assert!(conn.iter().next().unwrap().is_err());
    // Silence on the TLS port: closed after the connect timeout (1 s in tests).
    let mut silent = Raw::open(tls_addr);
    let _ = silent.expect_closed_within(Duration::from_secs(5));
    wait_stats(&b, "four transport errors", |s| s.transport_errors >= 4);
    round_trip(plain, &mut good, "t/still");
    good.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn client_certificates_are_required_and_their_common_name_is_the_username() {
    let pki = Pki::new("mtls");
    let dir = pki.dir.clone();
    std::fs::write(
        dir.join("acl"),
        "user device-1\ntopic readwrite devices/device-1/#\n",
    )
    .unwrap();
    let b = broker_with_listeners(&pki, &[Transport::Tls], |c| {
        c.client_ca = Some(pki.path("ca.pem"));
        c.require_client_cert = true;
        c.use_identity_as_username = true;
        c.acl_file = Some(dir.join("acl"));
    });
    let tls_addr = b.local_addrs()[1];
    // Without a certificate: the handshake fails.
    let mut opts = rumqttc::MqttOptions::new("nocert", "localhost", tls_addr.port());
    opts.set_transport(rumqttc::Transport::tls_with_config(pki.tls_config(false)));
    let (_c, mut conn) = rumqttc::Client::new(opts, 8);
    assert!(conn.iter().next().unwrap().is_err());
    // With one: its CN is the username the ACL knows, without a password.
    let mut dev = rumqttc_over(
        tls_addr,
        rumqttc::Transport::tls_with_config(pki.tls_config(true)),
        &id_on_shard("dev", 1),
        |_| {},
    );
    assert_eq!(dev.subscribe("devices/device-1/cmd", 1), Some(1));
    assert_eq!(dev.subscribe("devices/device-2/cmd", 1), None);
    dev.publish_acked("devices/device-1/cmd", 1, false, b"mine");
    assert_eq!(&dev.recv_publish().payload[..], b"mine");
    dev.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn a_reload_swaps_certificates_for_new_connections_and_keeps_old_ones() {
    let mut pki = Pki::new("rotate");
    let b = broker_with_listeners(&pki, &[Transport::Tls], |_| {});
    let (plain, tls_addr) = (b.local_addrs()[0], b.local_addrs()[1]);
    let old_ca = pki.tls_config(false);
    let mut before = rumqttc_over(
        tls_addr,
        rumqttc::Transport::tls_with_config(old_ca.clone()),
        &id_on_shard("before", 1),
        |_| {},
    );
    pki.issue();
    b.reload().unwrap();
    // New connections present the new certificate: a client of the old CA fails,
    // one of the new CA gets in.
    let mut opts = rumqttc::MqttOptions::new("old-ca", "localhost", tls_addr.port());
    opts.set_transport(rumqttc::Transport::tls_with_config(old_ca));
    let (_c, mut conn) = rumqttc::Client::new(opts, 8);
    assert!(conn.iter().next().unwrap().is_err());
    let mut after = rumqttc_over(
        tls_addr,
        rumqttc::Transport::tls_with_config(pki.tls_config(false)),
        &id_on_shard("after", 0),
        |_| {},
    );
    // The connection made before the reload still works.
    round_trip(plain, &mut before, "t/rotated");
    round_trip(plain, &mut after, "t/rotated2");
    before.disconnect();
    after.disconnect();
    // A broken key file is refused; the running certificates stay.
    std::fs::write(pki.path("server.key"), "not a key").unwrap();
    assert!(b.reload().is_err());
    let c = rumqttc_over(
        tls_addr,
        rumqttc::Transport::tls_with_config(pki.tls_config(false)),
        &id_on_shard("still", 0),
        |_| {},
    );
    c.disconnect();
    assert_no_leaks(&b);
}

/// A raw WebSocket client (tungstenite) on `addr`, offering `subprotocol`.
fn ws_client(
    addr: SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
) -> Result<tungstenite::WebSocket<TcpStream>, Box<tungstenite::Error>> {
    use tungstenite::client::IntoClientRequest;
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    tungstenite::client(req, stream)
        .map(|(ws, resp)| {
            assert_eq!(
                resp.headers()
                    .get("Sec-WebSocket-Protocol")
                    .map(|v| v.to_str().unwrap()),
                Some("mqtt"),
                "[MQTT-6.0.0-4] the server answers with the mqtt subprotocol"
            );
            ws
        })
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => Box::new(e),
            tungstenite::HandshakeError::Interrupted(_) => unreachable!("blocking socket"),
        })
}

/// The next binary message's bytes.
fn ws_recv(ws: &mut tungstenite::WebSocket<TcpStream>) -> Vec<u8> {
    loop {
        match ws.read().expect("a message") {
            tungstenite::Message::Binary(b) => return b.to_vec(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn websocket_upgrades_to_other_paths_or_without_mqtt_are_refused() {
    let pki = Pki::new("wsref");
    let b = broker_with_listeners(&pki, &[Transport::Ws], |_| {});
    let ws_addr = b.local_addrs()[1];
    for (path, offer, status) in [
        ("/other", Some("mqtt"), 404),
        ("/mqtt", None, 400),
        ("/mqtt", Some("chat, superchat"), 400),
    ] {
        match ws_client(ws_addr, path, offer).map_err(|e| *e) {
            Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), status, "{path} {offer:?}"),
            other => panic!("{path} {offer:?}: {other:?}"),
        }
    }
    // Not HTTP at all.
    let mut raw = Raw::open(ws_addr);
    raw.send_lossy(&connect_packet("not-ws", true));
    raw.expect_closed();
    wait_stats(&b, "refusals counted", |s| s.transport_errors >= 4);
    let ws = ws_client(ws_addr, "/mqtt", Some("mqttv3.1, mqtt")).expect("a list with mqtt");
    drop(ws);
    assert_broker_healthy(b.local_addrs()[0]);
}

#[test]
fn mqtt_packets_span_websocket_frames_and_frames_hold_several_packets() {
    let pki = Pki::new("frames");
    let b = broker_with_listeners(&pki, &[Transport::Ws], |_| {});
    let (plain, ws_addr) = (b.local_addrs()[0], b.local_addrs()[1]);
    let mut ws = ws_client(ws_addr, "/mqtt", Some("mqtt")).unwrap();
    // CONNECT in three messages, split mid-packet.
    let connect = connect_packet(&id_on_shard("frames", 1), true);
    for part in [&connect[..3], &connect[3..10], &connect[10..]] {
        ws.send(tungstenite::Message::binary(part.to_vec()))
            .unwrap();
    }
    assert_eq!(ws_recv(&mut ws), [0x20, 2, 0, 0], "CONNACK");
    // SUBSCRIBE and PINGREQ in one message.
    let mut two = subscribe_packet(7, &[("frames/t", 1)]);
    two.extend_from_slice(&PINGREQ_BYTES);
    ws.send(tungstenite::Message::binary(two)).unwrap();
    let mut got = ws_recv(&mut ws);
    if got.len() == 5 {
        got.extend(ws_recv(&mut ws));
    }
    assert_eq!(got, [0x90, 3, 0, 7, 1, 0xD0, 0], "SUBACK then PINGRESP");
    // A WebSocket ping is answered with a pong carrying its data.
    ws.send(tungstenite::Message::Ping(b"hello"[..].into()))
        .unwrap();
    match ws.read().unwrap() {
        tungstenite::Message::Pong(d) => assert_eq!(&d[..], b"hello"),
        other => panic!("{other:?}"),
    }
    // A message from a plain client arrives as binary frames.
    let mut p = mq(plain, &id_on_shard("fp", 0), true);
    p.publish_acked("frames/t", 1, false, b"payload");
    let publish = ws_recv(&mut ws);
    assert_eq!(publish[0] & 0xF0, 0x30);
    assert!(publish.ends_with(b"payload"));
    let pid = u16::from_be_bytes([publish[12], publish[13]]);
    ws.send(tungstenite::Message::binary(puback(pid))).unwrap();
    p.disconnect();
    // A close frame closes the connection, with a close frame back.
    ws.close(None).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline);
    }
    assert_no_leaks(&b);
}

#[test]
fn a_websocket_text_frame_closes_the_connection() {
    let pki = Pki::new("text");
    let b = broker_with_listeners(&pki, &[Transport::Ws], |_| {});
    let ws_addr = b.local_addrs()[1];
    let mut ws = ws_client(ws_addr, "/mqtt", Some("mqtt")).unwrap();
    ws.send(tungstenite::Message::binary(connect_packet("texter", true)))
        .unwrap();
    assert_eq!(ws_recv(&mut ws), [0x20, 2, 0, 0]);
    // [MQTT-6.0.0-1]: MQTT travels in binary frames; anything else closes.
    ws.send(tungstenite::Message::text("hello")).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(_) => break,
        }
        assert!(Instant::now() < deadline, "still open");
    }
    wait_stats(&b, "counted", |s| s.transport_errors >= 1);
    assert_no_leaks(&b);
}

#[test]
fn tls_connections_handed_to_the_other_shard_keep_working() {
    // Many clients with ids homed on both shards: whichever shard accepts a
    // connection, the one that serves it continues the same TLS session.
    let pki = Pki::new("handoff");
    let b = broker_with_listeners(&pki, &[Transport::Tls, Transport::Wss], |_| {});
    let addrs = b.local_addrs().to_vec();
    let mut clients = Vec::new();
    for i in 0..8 {
        let transport = if i % 2 == 0 {
            rumqttc::Transport::tls_with_config(pki.tls_config(false))
        } else {
            rumqttc::Transport::wss_with_config(pki.tls_config(false))
        };
        let addr = addrs[1 + i % 2];
        let mut c = rumqttc_over(addr, transport, &id_on_shard("ho", i % 2), |_| {});
        assert_eq!(c.subscribe(&format!("ho/{i}"), 1), Some(1));
        clients.push(c);
    }
    let mut p = mq(addrs[0], &id_on_shard("hop", 0), true);
    for i in 0..8 {
        p.publish_acked(&format!("ho/{i}"), 1, false, format!("m{i}").as_bytes());
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.recv_publish().payload, format!("m{i}").into_bytes());
    }
    let s = b.stats().total();
    assert!(s.handoffs_in > 0, "some connections changed shards: {s:?}");
    p.disconnect();
    for c in clients {
        c.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn idle_tls_ws_and_wss_connections_park_and_still_talk_both_ways() {
    let pki = Pki::new("park");
    let b = broker_with_listeners(
        &pki,
        &[Transport::Tls, Transport::Ws, Transport::Wss],
        |_| {},
    );
    let addrs = b.local_addrs().to_vec();
    let mut clients = vec![
        (
            "tls",
            rumqttc_over(
                addrs[1],
                rumqttc::Transport::tls_with_config(pki.tls_config(false)),
                &id_on_shard("park-tls", 1),
                |_| {},
            ),
        ),
        (
            "ws",
            rumqttc_over(
                addrs[2],
                rumqttc::Transport::Ws,
                &id_on_shard("park-ws", 0),
                |_| {},
            ),
        ),
        (
            "wss",
            rumqttc_over(
                addrs[3],
                rumqttc::Transport::wss_with_config(pki.tls_config(false)),
                &id_on_shard("park-wss", 1),
                |_| {},
            ),
        ),
    ];
    for (name, c) in &mut clients {
        assert_eq!(c.subscribe(&format!("park/{name}"), 1), Some(1));
    }
    let mut p = mq(addrs[0], &id_on_shard("park-plain", 0), true);
    assert_eq!(p.subscribe("park/back/#", 1), Some(1));
    // Parked with the transport's state (TLS session, WebSocket framing) kept.
    wait_stats(&b, "the four clients parked", |s| s.connections_parked >= 4);
    for (name, c) in &mut clients {
        p.publish_acked(&format!("park/{name}"), 1, false, name.as_bytes());
        let m = c.recv_publish();
        assert_eq!(&m.payload[..], name.as_bytes());
    }
    wait_stats(&b, "parked again", |s| s.connections_parked >= 4);
    for (name, c) in &mut clients {
        c.publish_acked(&format!("park/back/{name}"), 1, false, b"back");
        let m = p.recv_publish();
        assert_eq!(m.topic, format!("park/back/{name}"));
    }
    for (_, c) in clients {
        c.disconnect();
    }
    p.disconnect();
    assert_no_leaks(&b);
    assert_eq!(b.stats().total().transport_errors, 0);
}

//! The PROXY protocol on a listener behind a load balancer: the header's source
//! address is the client's (here seen by an authenticator that records every
//! CONNECT's peer), a connection without the header is refused, and Debian's HAProxy
//! (`send-proxy` and `send-proxy-v2`) in front works. Brokers run 2 shards.

mod common;

use common::*;
use shardmq::protocol::{Connect, ConnectReturnCode};
use shardmq::Authenticator;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Accepts everyone, and remembers the peer address each client id connected from.
#[derive(Default)]
struct Peers(Mutex<HashMap<String, SocketAddr>>);

impl Authenticator for Peers {
    fn connect(&self, connect: &Connect, peer: SocketAddr) -> ConnectReturnCode {
        self.0
            .lock()
            .unwrap()
            .insert(connect.client_id.to_string(), peer);
        ConnectReturnCode::Accepted
    }
}

impl Peers {
    fn of(&self, client: &str) -> Option<SocketAddr> {
        self.0.lock().unwrap().get(client).copied()
    }
}

/// A broker with a plain listener and a PROXY-protocol listener (in that order).
fn proxied_broker() -> (Broker, Arc<Peers>) {
    let peers = Arc::new(Peers::default());
    let mut proxied = shardmq::config::ListenerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        shardmq::config::Transport::Tcp,
    );
    proxied.proxy_protocol = Some(true);
    let b = Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(SHARDS)
        .authenticator(peers.clone())
        .configure(|c| {
            c.connect_timeout = 1.0;
            c.listener.push(proxied);
        })
        .start()
        .expect("broker starts");
    (b, peers)
}

fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 only here")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(s.ip().octets());
    h.extend(d.ip().octets());
    h.extend(s.port().to_be_bytes());
    h.extend(d.port().to_be_bytes());
    h
}

#[test]
fn the_header_gives_the_client_address_v1_and_v2() {
    let (b, peers) = proxied_broker();
    let plain = b.local_addrs()[0];
    let proxied = b.local_addrs()[1];
    // v1, with the CONNECT in the same segment.
    let mut raw = Raw::open(proxied);
    let mut bytes = b"PROXY TCP4 203.0.113.9 192.0.2.1 40001 1883\r\n".to_vec();
    bytes.extend(connect_packet("via-v1", true));
    raw.send(&bytes);
    assert_eq!(raw.recv().body, vec![0, 0], "CONNACK accepted");
    assert_eq!(
        peers.of("via-v1"),
        Some("203.0.113.9:40001".parse().unwrap())
    );
    // v2, in pieces.
    let mut raw2 = Raw::open(proxied);
    let h = v2_header("198.51.100.20:5555".parse().unwrap(), proxied);
    raw2.send(&h[..7]);
    std::thread::sleep(Duration::from_millis(50));
    raw2.send(&h[7..]);
    raw2.send(&connect_packet("via-v2", true));
    assert_eq!(raw2.recv().body, vec![0, 0]);
    assert_eq!(
        peers.of("via-v2"),
        Some("198.51.100.20:5555".parse().unwrap())
    );
    // The two talk to each other as any clients do.
    raw.send(&subscribe_packet(1, &[("p/#", 0)]));
    raw.recv_kind(9);
    raw2.send(&publish_packet("p/x", b"hi", 0, false, false, 0));
    assert_eq!(raw.expect_publish().payload, b"hi");
    // The plain listener of the same broker needs no header.
    let (_c, _) = Raw::connect(plain, "plain-one", true);
    assert_eq!(peers.of("plain-one").unwrap().ip().to_string(), "127.0.0.1");
}

#[test]
fn a_connection_without_the_header_is_refused() {
    let (b, peers) = proxied_broker();
    let proxied = b.local_addrs()[1];
    for (what, bytes) in [
        ("a bare CONNECT", connect_packet("no-header", true)),
        (
            "a malformed v1 header",
            b"PROXY TCP4 203.0.113.9 192.0.2.1 040001 1883\r\n".to_vec(),
        ),
    ] {
        let mut raw = Raw::open(proxied);
        raw.send(&bytes);
        let got = raw.expect_closed_within(TIMEOUT);
        assert!(got.is_empty(), "{what}: nothing answered, got {got:?}");
    }
    assert_eq!(peers.of("no-header"), None);
    wait_stats(&b, "refusals counted", |s| s.transport_errors >= 2);
    assert_broker_healthy(b.local_addrs()[0]);
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn haproxy() -> String {
    for p in ["/usr/sbin/haproxy", "/usr/bin/haproxy"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("Debian's haproxy is not installed (scripts/test.sh installs it)");
}

#[test]
fn clients_behind_haproxy_are_seen_with_their_own_addresses() {
    let (b, peers) = proxied_broker();
    let proxied = b.local_addrs()[1];
    for send_proxy in ["send-proxy", "send-proxy-v2"] {
        let front = free_port();
        let dir =
            std::env::temp_dir().join(unique(&format!("shardmq-haproxy-{}", std::process::id())));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                 frontend mqtt\n  bind 127.0.0.1:{front}\n  default_backend shardmq\n\
                 backend shardmq\n  server b1 {proxied} {send_proxy}\n"
            ),
        )
        .unwrap();
        let child = Command::new(haproxy())
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("haproxy starts");
        let _guard = Haproxy(child);
        let front_addr: SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(front_addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not open {front_addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let id = unique(&format!("through-{send_proxy}"));
        let (mut c, _) = Raw::connect(front_addr, &id, true);
        let mine = c.stream.local_addr().unwrap();
        assert_eq!(
            peers.of(&id),
            Some(mine),
            "{send_proxy}: the client's own address"
        );
        // And MQTT works through it.
        c.send(&subscribe_packet(1, &[("h/#", 1)]));
        c.recv_kind(9);
        c.send(&publish_packet("h/x", b"through", 1, false, false, 3));
        let mut got_ack = false;
        let mut got_msg = false;
        while !(got_ack && got_msg) {
            let p = c.recv();
            match p.kind() {
                4 => got_ack = true,
                3 => {
                    let m = p.publish();
                    assert_eq!(m.payload, b"through");
                    c.send(&puback(m.pid));
                    got_msg = true;
                }
                k => panic!("unexpected packet kind {k}"),
            }
        }
        c.send(&[0xE0, 0]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Bridges (DESIGN §14) end to end, against Debian's Mosquitto as the other broker
//! (started here on a free port with a generated config): messages in, out and both
//! ways with prefixes at QoS 0, 1 and 2; the remote stopped and restarted under QoS 1
//! load; loops (a `both` bridge, and Mosquitto's own bridge into shardmq); TLS; the
//! `$SYS/broker/connection/{name}/state` topic. shardmq runs 2 shards, with clients
//! on both; clients on either side are rumqttc.

mod common;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use shardmq::config::{BridgeConfig, BridgeTopic, BridgeTransport, Direction};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A directory of its own, removed at the end.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!(
        "shardmq-bridge-{}-{}",
        std::process::id(),
        unique(name)
    ));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's mosquitto on 127.0.0.1:`port`, with `extra` config lines; stopped with
/// SIGTERM (so that, with persistence, it saves its state) and started again on
/// the same port.
struct Mosquitto {
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    fn start(d: &Path, extra: &str) -> Mosquitto {
        let port = free_port();
        let conf = d.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\nuser root\n{extra}"),
        )
        .unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            conf,
        };
        m.run();
        m
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn run(&mut self) {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is installed (scripts/test.sh installs it)");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        while TcpStream::connect(self.addr()).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not open its port");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, and wait for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a plain kill(2) on the pid of a child this test started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn topic(pattern: &str, direction: Direction, qos: u8, local: &str, remote: &str) -> BridgeTopic {
    BridgeTopic {
        pattern: pattern.into(),
        direction,
        qos,
        local_prefix: local.into(),
        remote_prefix: remote.into(),
    }
}

/// A bridge named `name` to `remote`, reconnecting quickly (tests restart remotes).
fn bridge(name: &str, remote: SocketAddr, topics: Vec<BridgeTopic>) -> BridgeConfig {
    BridgeConfig {
        name: name.into(),
        address: remote.to_string(),
        transport: BridgeTransport::Tcp,
        ca: None,
        cert: None,
        key: None,
        client_id: None,
        username: None,
        password: None,
        clean_session: false,
        keepalive: 5,
        protocol: "3.1.1".into(),
        try_private: true,
        reconnect_delay_min: 0.05,
        reconnect_delay_max: 0.2,
        topics,
    }
}

/// The next value of the retained state topic of bridge `name`, as seen by `sub`.
fn next_state(sub: &mut Mq, name: &str) -> String {
    let p = sub.recv_publish();
    assert_eq!(p.topic, format!("$SYS/broker/connection/{name}/state"));
    String::from_utf8(p.payload.to_vec()).unwrap()
}

/// A local subscriber to the bridge's state; returns once it reads "1" (connected and
/// subscribed on the remote).
fn wait_connected(addr: SocketAddr, name: &str) -> Mq {
    let mut sub = mq(addr, &unique("state"), true);
    sub.subscribe(&format!("$SYS/broker/connection/{name}/state"), 0);
    let deadline = Instant::now() + TIMEOUT;
    while next_state(&mut sub, name) != "1" {
        assert!(Instant::now() < deadline, "bridge {name} did not connect");
    }
    sub
}

/// Every PUBLISH `sub` receives until nothing comes for `QUIET`, as (topic, payload).
fn drain(sub: &mut Mq) -> Vec<(String, String, u8)> {
    let mut got = Vec::new();
    while let Some(p) = sub.recv_publish_within(QUIET) {
        got.push((
            p.topic.clone(),
            String::from_utf8(p.payload.to_vec()).unwrap(),
            qos_num(p.qos),
        ));
    }
    got
}

/// `n` PUBLISHes from `sub`, as (topic, payload, qos), failing after the timeout.
fn take(sub: &mut Mq, n: usize) -> Vec<(String, String, u8)> {
    (0..n)
        .map(|_| {
            let p = sub.recv_publish();
            (
                p.topic.clone(),
                String::from_utf8(p.payload.to_vec()).unwrap(),
                qos_num(p.qos),
            )
        })
        .collect()
}

#[test]
fn messages_cross_in_out_and_both_ways_with_prefixes_at_every_qos() {
    let d = dir("directions");
    let remote = Mosquitto::start(&d.0, "");
    let b = broker_with(|c| {
        c.bridge.push(bridge(
            "dirs",
            remote.addr(),
            vec![
                topic("up/#", Direction::Out, 2, "site/", "fleet/site/"),
                topic("down/#", Direction::In, 2, "site/", "fleet/site/"),
                topic("sync/#", Direction::Both, 1, "site/", "fleet/site/"),
            ],
        ))
    });
    let addr = b.local_addr();
    let _state = wait_connected(addr, "dirs");
    let mut remote_sub = mq(remote.addr(), "remote-sub", true);
    remote_sub.subscribe("fleet/#", 2);
    let mut local_subs: Vec<Mq> = (0..SHARDS)
        .map(|s| {
            let mut m = mq(addr, &id_on_shard("local-sub", s), true);
            m.subscribe("site/#", 2);
            m
        })
        .collect();
    let mut local_pubs: Vec<Mq> = (0..SHARDS)
        .map(|s| mq(addr, &id_on_shard("local-pub", s), true))
        .collect();
    let mut remote_pub = mq(remote.addr(), "remote-pub", true);

    for q in 0..=2u8 {
        // Out: from a publisher on each shard, to the remote, prefix swapped.
        for (s, p) in local_pubs.iter_mut().enumerate() {
            p.publish_acked(&format!("site/up/{s}"), q, false, format!("out {q} {s}").as_bytes());
        }
        let mut got = take(&mut remote_sub, SHARDS);
        got.sort();
        let want: Vec<_> = (0..SHARDS)
            .map(|s| (format!("fleet/site/up/{s}"), format!("out {q} {s}"), q))
            .collect();
        assert_eq!(got, want, "out at QoS {q}");
        // The local subscribers get them once, as any local message.
        for sub in &mut local_subs {
            let mut got = take(sub, SHARDS);
            got.sort();
            let want: Vec<_> = (0..SHARDS)
                .map(|s| (format!("site/up/{s}"), format!("out {q} {s}"), q))
                .collect();
            assert_eq!(got, want);
        }
        // In: from the remote, to subscribers on both shards.
        remote_pub.publish_acked("fleet/site/down/cmd", q, false, format!("in {q}").as_bytes());
        for sub in &mut local_subs {
            assert_eq!(
                take(sub, 1),
                vec![("site/down/cmd".to_string(), format!("in {q}"), q)],
                "in at QoS {q}"
            );
        }
        assert_eq!(take(&mut remote_sub, 1)[0].0, "fleet/site/down/cmd");
        // Both (topic QoS 1: QoS 2 messages cross at 1).
        let crossed = q.min(1);
        local_pubs[1].publish_acked("site/sync/a", q, false, format!("sync out {q}").as_bytes());
        assert_eq!(
            take(&mut remote_sub, 1),
            vec![("fleet/site/sync/a".to_string(), format!("sync out {q}"), crossed)]
        );
        remote_pub.publish_acked("fleet/site/sync/b", q, false, format!("sync in {q}").as_bytes());
        for sub in &mut local_subs {
            let got = take(sub, 2);
            assert_eq!(got[0], ("site/sync/a".to_string(), format!("sync out {q}"), q));
            assert_eq!(got[1], ("site/sync/b".to_string(), format!("sync in {q}"), crossed));
        }
        assert_eq!(take(&mut remote_sub, 1)[0].0, "fleet/site/sync/b");
    }
    // Nothing else crossed: no echo, no copies.
    assert!(drain(&mut remote_sub).is_empty());
    for sub in &mut local_subs {
        assert!(drain(sub).is_empty());
    }
    let t = b.stats().total();
    assert!(t.bridge_messages_received >= 6, "{t:?}");
    b.shutdown();
}

//! Bridges (DESIGN §14) end to end, against Debian's Mosquitto as the other broker
//! (started here on a free port with a generated config): messages in, out and both
//! ways with prefixes at QoS 0, 1 and 2; the remote stopped and restarted under QoS 1
//! load; loops (a `both` bridge, and Mosquitto's own bridge into shardmq); TLS; the
//! `$SYS/broker/connection/{name}/state` topic; the same over MQTT 5.0, with message
//! properties crossing (Debian's `mosquitto_pub`/`mosquitto_sub -V 5`). shardmq runs
//! 2 shards, with clients on both; clients on either side are rumqttc.

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
        Mosquitto::start_on(d, free_port(), extra)
    }

    fn start_on(d: &Path, port: u16, extra: &str) -> Mosquitto {
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
    directions("3.1.1");
}

/// The same over MQTT 5.0: No Local instead of the bridge bit, 5.0 packets both ways.
#[test]
fn messages_cross_in_out_and_both_ways_with_prefixes_at_every_qos_over_mqtt_5_0() {
    directions("5.0");
}

fn directions(protocol: &str) {
    let d = dir("directions");
    let remote = Mosquitto::start(&d.0, "");
    let b = broker_with(|c| {
        let mut cfg = bridge(
            "dirs",
            remote.addr(),
            vec![
                topic("up/#", Direction::Out, 2, "site/", "fleet/site/"),
                topic("down/#", Direction::In, 2, "site/", "fleet/site/"),
                topic("sync/#", Direction::Both, 1, "site/", "fleet/site/"),
            ],
        );
        cfg.protocol = protocol.into();
        c.bridge.push(cfg)
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
            p.publish_acked(
                &format!("site/up/{s}"),
                q,
                false,
                format!("out {q} {s}").as_bytes(),
            );
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
        remote_pub.publish_acked(
            "fleet/site/down/cmd",
            q,
            false,
            format!("in {q}").as_bytes(),
        );
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
            vec![(
                "fleet/site/sync/a".to_string(),
                format!("sync out {q}"),
                crossed
            )]
        );
        remote_pub.publish_acked(
            "fleet/site/sync/b",
            q,
            false,
            format!("sync in {q}").as_bytes(),
        );
        for sub in &mut local_subs {
            let got = take(sub, 2);
            assert_eq!(
                got[0],
                ("site/sync/a".to_string(), format!("sync out {q}"), q)
            );
            assert_eq!(
                got[1],
                ("site/sync/b".to_string(), format!("sync in {q}"), crossed)
            );
        }
        assert_eq!(take(&mut remote_sub, 1)[0].0, "fleet/site/sync/b");
    }
    // Nothing else crossed: no echo, no copies.
    assert!(drain(&mut remote_sub).is_empty());
    for sub in &mut local_subs {
        assert!(drain(sub).is_empty());
    }
    // A retained message from the remote is retained here too.
    remote_pub.publish_acked("fleet/site/down/config", 1, true, b"v2");
    for sub in &mut local_subs {
        assert_eq!(take(sub, 1)[0].1, "v2");
    }
    let mut late = mq(addr, &id_on_shard("late", 0), true);
    late.subscribe("site/down/#", 1);
    let p = late.recv_publish();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("site/down/config", &b"v2"[..], true)
    );
    // The bridge's session is not for clients.
    let (_raw, _, code) = Raw::connect_opts(addr, &ConnectOpts::new("local.dirs", false));
    assert_eq!(
        code, 2,
        "CONNACK 0x02 for the client id of a bridge's session"
    );
    let t = b.stats().total();
    assert!(t.bridge_messages_received >= 7, "{t:?}");
    assert!(t.bridge_messages_sent >= 9, "{t:?}");
    b.shutdown();
}

#[test]
fn the_remote_restarting_under_qos1_load_loses_nothing_and_the_state_goes_1_0_1() {
    let d = dir("restart");
    let store = d.0.join("store");
    std::fs::create_dir_all(&store).unwrap();
    // With persistence, SIGTERM saves what the remote queued for its subscriber.
    let mut remote = Mosquitto::start(
        &d.0,
        &format!(
            "persistence true\npersistence_location {}/\nautosave_interval 0\n",
            store.display()
        ),
    );
    // A persistent subscriber on the remote, offline while the load runs.
    let mut remote_sub = mq_with(remote.addr(), "load-sub", false, |_| {});
    remote_sub.subscribe("r/load/#", 1);
    remote_sub.disconnect();
    let b = broker_with(|c| {
        c.bridge.push(bridge(
            "load",
            remote.addr(),
            vec![topic("load/#", Direction::Out, 1, "", "r/")],
        ))
    });
    let addr = b.local_addr();
    let mut state = wait_connected(addr, "load");
    let mut pubs: Vec<Mq> = (0..SHARDS)
        .map(|s| mq(addr, &id_on_shard("load-pub", s), true))
        .collect();
    const N: usize = 500;
    let publish = |pubs: &mut Vec<Mq>, range: std::ops::Range<usize>| {
        for i in range {
            // Alternating shards, each publisher on its own topic: order is per
            // publisher.
            let s = i % SHARDS;
            pubs[s].publish_acked(&format!("load/{s}"), 1, false, i.to_string().as_bytes());
        }
    };
    publish(&mut pubs, 0..N / 4);
    remote.stop();
    assert_eq!(next_state(&mut state, "load"), "0");
    // While the remote is down: acknowledged here, queued in the bridge's session.
    publish(&mut pubs, N / 4..N * 3 / 4);
    remote.run();
    publish(&mut pubs, N * 3 / 4..N);
    assert_eq!(next_state(&mut state, "load"), "1");
    let mut remote_sub = mq_with(remote.addr(), "load-sub", false, |_| {});
    let mut first_seen: HashMap<usize, usize> = HashMap::new();
    let mut last = [None::<usize>; SHARDS];
    let deadline = Instant::now() + TIMEOUT * 2;
    while first_seen.len() < N {
        assert!(
            Instant::now() < deadline,
            "{} of {N} arrived",
            first_seen.len()
        );
        let Some(p) = remote_sub.recv_publish_within(TIMEOUT) else {
            continue;
        };
        let i: usize = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        assert_eq!(p.topic, format!("r/load/{}", i % SHARDS));
        let n = first_seen.len();
        if first_seen.insert(i, n).is_none() {
            // A QoS 1 message in flight when the remote stopped may come twice;
            // the first copies arrive in each publisher's order.
            let s = i % SHARDS;
            assert!(last[s] < Some(i), "{i} after {:?}", last[s]);
            last[s] = Some(i);
        }
    }
    assert_eq!(b.stats().total().bridge_messages_dropped, 0);
    b.shutdown();
}

#[test]
fn the_connection_state_is_published_retained_and_follows_the_remote() {
    let d = dir("state");
    let mut remote = Mosquitto::start(&d.0, "");
    let b = broker_with(|c| {
        c.bridge.push(bridge(
            "watch",
            remote.addr(),
            vec![topic("w/#", Direction::Both, 0, "", "")],
        ))
    });
    let mut state = wait_connected(b.local_addr(), "watch");
    remote.stop();
    assert_eq!(next_state(&mut state, "watch"), "0");
    // A subscriber arriving now reads the retained value.
    let mut late = mq(b.local_addr(), &unique("late"), true);
    late.subscribe("$SYS/broker/connection/watch/state", 0);
    assert_eq!(next_state(&mut late, "watch"), "0");
    remote.run();
    assert_eq!(next_state(&mut state, "watch"), "1");
    assert_eq!(next_state(&mut late, "watch"), "1");
    b.shutdown();
}

/// Subscribers to `{name}/#` on both shards and on the remote, publishers on both
/// shards (to `here`) and on the remote (to `there`), at every QoS up to `max_qos`:
/// each subscriber gets each message exactly once.
fn each_message_once_on_both_sides(
    addr: SocketAddr,
    remote: SocketAddr,
    name: &str,
    here: &str,
    there: &str,
    max_qos: u8,
) {
    let filter = format!("{name}/#");
    let mut subs: Vec<Mq> = (0..SHARDS)
        .map(|s| {
            let mut m = mq(addr, &id_on_shard(&format!("{name}-sub"), s), true);
            m.subscribe(&filter, max_qos);
            m
        })
        .collect();
    let mut remote_sub = mq(remote, &format!("{name}-remote-sub"), true);
    remote_sub.subscribe(&filter, max_qos);
    let mut local_pubs: Vec<Mq> = (0..SHARDS)
        .map(|s| mq(addr, &id_on_shard(&format!("{name}-pub"), s), true))
        .collect();
    let mut remote_pub = mq(remote, &format!("{name}-remote-pub"), true);
    let mut want = Vec::new();
    for q in 0..=max_qos {
        for (s, p) in local_pubs.iter_mut().enumerate() {
            let m = format!("here {s} {q}");
            p.publish_acked(here, q, false, m.as_bytes());
            want.push((here.to_string(), m, q));
        }
        let m = format!("there {q}");
        remote_pub.publish_acked(there, q, false, m.as_bytes());
        want.push((there.to_string(), m, q));
    }
    want.sort();
    for sub in subs.iter_mut().chain(std::iter::once(&mut remote_sub)) {
        let mut got = drain(sub);
        got.sort();
        assert_eq!(got, want, "each message exactly once at {}", sub.id);
    }
}

#[test]
fn a_both_ways_bridge_carries_each_message_once_to_each_side() {
    let d = dir("loop");
    let remote = Mosquitto::start(&d.0, "");
    let b = broker_with(|c| {
        c.bridge.push(bridge(
            "loop",
            remote.addr(),
            vec![topic("loop/#", Direction::Both, 2, "", "")],
        ))
    });
    let addr = b.local_addr();
    let _state = wait_connected(addr, "loop");
    each_message_once_on_both_sides(addr, remote.addr(), "loop", "loop/here", "loop/there", 2);
    b.shutdown();
}

#[test]
fn a_5_0_both_ways_bridge_carries_each_message_once_to_each_side() {
    let d = dir("loop5");
    let remote = Mosquitto::start(&d.0, "");
    let b = broker_with(|c| {
        let mut cfg = bridge(
            "loop5",
            remote.addr(),
            vec![topic("loop5/#", Direction::Both, 2, "", "")],
        );
        cfg.protocol = "5.0".into();
        c.bridge.push(cfg)
    });
    let addr = b.local_addr();
    let _state = wait_connected(addr, "loop5");
    each_message_once_on_both_sides(addr, remote.addr(), "loop5", "loop5/here", "loop5/there", 2);
    b.shutdown();
}

/// `mosquitto_sub -V 5` at `addr`: the first message on `filter`, printed as
/// topic, payload, content type, user properties.
fn mosquitto_sub5(addr: SocketAddr, filter: &str) -> std::process::Child {
    Command::new("mosquitto_sub")
        .args(["-V", "5", "-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-t", filter, "-C", "1", "-W", "20", "-q", "1"])
        .args(["-F", "%t|%p|%C|%P"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs (Debian's mosquitto-clients)")
}

fn mosquitto_pub5(addr: SocketAddr, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-V", "5", "-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-t", topic, "-m", payload, "-q", "1"])
        .args(["-D", "publish", "content-type", "text/plain"])
        .args(["-D", "publish", "user-property", "origin", "sensor-7"])
        .status()
        .expect("mosquitto_pub runs");
    assert!(status.success());
}

/// Publishes with `publish` until `sub` (a mosquitto_sub started with
/// [`mosquitto_sub5`], which has then subscribed and got one) prints its line.
fn publish_until_received(mut sub: std::process::Child, publish: impl Fn()) -> String {
    let deadline = Instant::now() + TIMEOUT;
    while sub.try_wait().expect("mosquitto_sub state").is_none() {
        assert!(Instant::now() < deadline, "nothing reached mosquitto_sub");
        publish();
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = sub.wait_with_output().expect("mosquitto_sub ends");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_5_0_bridge_carries_message_properties_both_ways() {
    let d = dir("props5");
    let remote = Mosquitto::start(&d.0, "");
    let b = broker_with(|c| {
        let mut cfg = bridge(
            "props5",
            remote.addr(),
            vec![topic("p5/#", Direction::Both, 1, "site/", "fleet/")],
        );
        cfg.protocol = "5.0".into();
        c.bridge.push(cfg)
    });
    let addr = b.local_addr();
    let _state = wait_connected(addr, "props5");
    // Out: a 5.0 publisher here, a 5.0 subscriber on the remote.
    let sub = mosquitto_sub5(remote.addr(), "fleet/p5/out");
    let got = publish_until_received(sub, || mosquitto_pub5(addr, "site/p5/out", "up"));
    assert_eq!(got, "fleet/p5/out|up|text/plain|origin:sensor-7");
    // In: a 5.0 publisher on the remote, a 5.0 subscriber here.
    let sub = mosquitto_sub5(addr, "site/p5/in");
    let got = publish_until_received(sub, || mosquitto_pub5(remote.addr(), "fleet/p5/in", "down"));
    assert_eq!(got, "site/p5/in|down|text/plain|origin:sensor-7");
    b.shutdown();
}

#[test]
fn a_mosquitto_bridge_into_shardmq_gets_each_message_once_each_way() {
    let b = broker();
    let addr = b.local_addr();
    let d = dir("mosquitto-bridge");
    let remote = Mosquitto::start(
        &d.0,
        &format!(
            "connection into-shardmq\naddress {addr}\ntopic fleet/# both 1\n\
             try_private true\ncleansession true\nrestart_timeout 1\nnotifications false\n"
        ),
    );
    // Mosquitto's bridge is connected and subscribed here.
    wait_stats(&b, "Mosquitto's bridge subscribed", |s| {
        s.connections >= 1 && s.subscriptions >= 1
    });
    each_message_once_on_both_sides(addr, remote.addr(), "fleet", "fleet/a", "fleet/b", 1);
    b.shutdown();
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate,
/// in PEM files under `d`.
fn pki(d: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bridge test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(d.join("server.pem"), server.pem()).unwrap();
    std::fs::write(d.join("server.key"), server_key.serialize_pem()).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "bridge-1");
    let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
    std::fs::write(d.join("client.pem"), client.pem()).unwrap();
    std::fs::write(d.join("client.key"), client_key.serialize_pem()).unwrap();
}

#[test]
fn a_bridge_over_tls_with_a_client_certificate_carries_messages_both_ways() {
    let d = dir("tls");
    pki(&d.0);
    let tls_port = free_port();
    let remote = Mosquitto::start(
        &d.0,
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\n\
             keyfile {0}/server.key\nrequire_certificate true\n",
            d.0.display()
        ),
    );
    let b = broker_with(|c| {
        let mut cfg = bridge(
            "secure",
            format!("127.0.0.1:{tls_port}").parse().unwrap(),
            vec![topic("tls/#", Direction::Both, 1, "", "")],
        );
        cfg.address = format!("localhost:{tls_port}");
        cfg.transport = BridgeTransport::Tls;
        cfg.ca = Some(d.0.join("ca.pem"));
        cfg.cert = Some(d.0.join("client.pem"));
        cfg.key = Some(d.0.join("client.key"));
        c.bridge.push(cfg);
    });
    let addr = b.local_addr();
    let _state = wait_connected(addr, "secure");
    let mut local_sub = mq(addr, &id_on_shard("tls-sub", 1), true);
    local_sub.subscribe("tls/in", 1);
    // The plain listener of the same Mosquitto, for its clients.
    let mut remote_sub = mq(remote.addr(), "tls-remote-sub", true);
    remote_sub.subscribe("tls/out", 1);
    let mut local_pub = mq(addr, &id_on_shard("tls-pub", 0), true);
    local_pub.publish_acked("tls/out", 1, false, b"through TLS");
    assert_eq!(
        take(&mut remote_sub, 1),
        vec![("tls/out".to_string(), "through TLS".to_string(), 1)]
    );
    let mut remote_pub = mq(remote.addr(), "tls-remote-pub", true);
    remote_pub.publish_acked("tls/in", 1, false, b"back through TLS");
    assert_eq!(
        take(&mut local_sub, 1),
        vec![("tls/in".to_string(), "back through TLS".to_string(), 1)]
    );
    b.shutdown();
}

#[test]
fn a_remote_refusing_the_bridge_bit_gets_a_plain_connect_and_its_echoes_are_dropped() {
    // The remote: a test playing a broker that knows nothing of bridges.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let remote_addr = listener.local_addr().unwrap();
    let b = broker_with(|c| {
        c.bridge.push(bridge(
            "plain",
            remote_addr,
            vec![topic("echo/#", Direction::Both, 1, "", "")],
        ))
    });
    let level = |connect: &Pkt| {
        assert_eq!(connect.kind(), 1, "{connect:?}");
        connect.body[6]
    };
    // First CONNECT: protocol level 0x84, refused with 0x01.
    let mut first = Raw::accept(&listener);
    assert_eq!(level(&first.recv()), 0x84);
    first.send(&[0x20, 2, 0, 1]);
    drop(first);
    // Second: plain 3.1.1, accepted.
    let mut remote = Raw::accept(&listener);
    assert_eq!(level(&remote.recv()), 0x04);
    remote.send(&[0x20, 2, 0, 0]);
    let sub = remote.recv();
    assert_eq!(sub.kind(), 8, "SUBSCRIBE, got {sub:?}");
    remote.send(&packet(0x90, &[sub.body[0], sub.body[1], 1]));
    let addr = b.local_addr();
    let _state = wait_connected(addr, "plain");
    let mut local_sub = mq(addr, &id_on_shard("echo-sub", 0), true);
    local_sub.subscribe("echo/#", 1);
    let mut local_pub = mq(addr, &id_on_shard("echo-pub", 1), true);
    local_pub.publish_acked("echo/a", 1, false, b"from here");
    // The bridge sends it; this remote sends it back, as a broker that takes the
    // bridge for a plain client does.
    let p = remote.recv().publish();
    assert_eq!(
        (p.topic.as_str(), p.payload_str().as_str(), p.qos),
        ("echo/a", "from here", 1)
    );
    remote.send(&puback(p.pid));
    remote.send(&publish_packet_bytes(
        b"echo/a",
        b"from here",
        1,
        false,
        false,
        7,
    ));
    assert_eq!(remote.recv_kind(4).pid(), 7, "the echo is acknowledged");
    // A message of the remote's own is published here.
    remote.send(&publish_packet_bytes(
        b"echo/b",
        b"from there",
        1,
        false,
        false,
        8,
    ));
    assert_eq!(remote.recv_kind(4).pid(), 8);
    assert_eq!(
        drain(&mut local_sub),
        vec![
            ("echo/a".to_string(), "from here".to_string(), 1),
            ("echo/b".to_string(), "from there".to_string(), 1)
        ],
        "the echo was not published a second time"
    );
    assert_eq!(b.stats().total().bridge_messages_dropped, 1);
    b.shutdown();
    // On shutdown the remote gets DISCONNECT.
    let end = remote.expect_closed();
    assert!(end.iter().any(|p| p.kind() == 14), "{end:?}");
}

#[test]
fn with_a_data_dir_the_bridge_session_keeps_its_queue_across_a_restart() {
    let d = dir("durable");
    let data = d.0.join("data");
    // The remote is not there yet.
    let port = free_port();
    let remote_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = || {
        let data = data.clone();
        broker_with(move |c| {
            c.data_dir = Some(data);
            c.bridge.push(bridge(
                "durable",
                remote_addr,
                vec![topic("keep/#", Direction::Out, 2, "", "")],
            ));
        })
    };
    let b = start();
    let mut pubs: Vec<Mq> = (0..SHARDS)
        .map(|s| mq(b.local_addr(), &id_on_shard("keep-pub", s), true))
        .collect();
    for i in 0..20 {
        let s = i % SHARDS;
        pubs[s].publish_acked(
            "keep/q1",
            1 + (i % 2) as u8,
            false,
            i.to_string().as_bytes(),
        );
    }
    // QoS 0 while the remote is down is dropped, and counted.
    pubs[0].publish_acked("keep/q0", 0, false, b"lost");
    wait_stats(&b, "the QoS 0 message dropped", |s| {
        s.bridge_messages_dropped == 1
    });
    drop(pubs);
    b.shutdown();
    let remote = Mosquitto::start_on(&d.0, port, "");
    let mut remote_sub = mq(remote.addr(), "keep-sub", true);
    remote_sub.subscribe("keep/#", 2);
    let b = start();
    let got = take(&mut remote_sub, 20);
    // Queued before the restart, sent after it, each publisher's in its order.
    let numbers: Vec<usize> = got.iter().map(|(_, p, _)| p.parse().unwrap()).collect();
    for s in 0..SHARDS {
        let mine: Vec<usize> = numbers
            .iter()
            .copied()
            .filter(|i| i % SHARDS == s)
            .collect();
        let want: Vec<usize> = (0..20).filter(|i| i % SHARDS == s).collect();
        assert_eq!(mine, want, "publisher on shard {s}");
    }
    assert!(got.iter().all(|(t, _, _)| t == "keep/q1"));
    assert!(drain(&mut remote_sub).is_empty());
    b.shutdown();
}

#[test]
fn a_silent_remote_is_pinged_then_dropped_and_connected_again() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let remote_addr = listener.local_addr().unwrap();
    let b = broker_with(|c| {
        let mut cfg = bridge(
            "quiet",
            remote_addr,
            vec![topic("q/#", Direction::Out, 0, "", "")],
        );
        cfg.keepalive = 1;
        c.bridge.push(cfg);
    });
    let mut remote = Raw::accept(&listener);
    let connect = remote.recv();
    assert_eq!(connect.kind(), 1);
    // Keep-alive 1 s in CONNECT.
    assert_eq!(&connect.body[8..10], &[0, 1]);
    remote.send(&[0x20, 2, 0, 0]);
    let _state = wait_connected(b.local_addr(), "quiet");
    // Answered pings keep it up.
    for _ in 0..2 {
        assert_eq!(remote.recv().kind(), 12, "PINGREQ");
        remote.send(&[0xD0, 0]);
    }
    // Unanswered, the bridge gives up on this connection and makes another.
    assert_eq!(remote.recv().kind(), 12, "PINGREQ");
    remote.expect_closed();
    let mut again = Raw::accept(&listener);
    assert_eq!(again.recv().kind(), 1, "a new CONNECT");
    wait_stats(&b, "the keep-alive timeout counted", |s| {
        s.keepalive_timeouts >= 1
    });
    b.shutdown();
}

#[test]
fn unacknowledged_messages_go_again_with_dup_after_a_reconnection_over_mqtt_3_1() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let remote_addr = listener.local_addr().unwrap();
    let b = broker_with(|c| {
        let mut cfg = bridge(
            "old",
            remote_addr,
            vec![topic("dup/#", Direction::Out, 2, "", "")],
        );
        cfg.protocol = "3.1".into();
        c.bridge.push(cfg);
    });
    let accept = || {
        let mut remote = Raw::accept(&listener);
        let connect = remote.recv();
        assert_eq!(connect.kind(), 1);
        // "MQIsdp", level 3 with the bridge bit.
        assert_eq!(&connect.body[..9], b"\x00\x06MQIsdp\x83");
        remote.send(&[0x20, 2, 0, 0]);
        remote
    };
    let mut remote = accept();
    let addr = b.local_addr();
    let _state = wait_connected(addr, "old");
    let mut publisher = mq(addr, &id_on_shard("dup-pub", 0), true);
    publisher.publish_acked("dup/1", 1, false, b"one");
    publisher.publish_acked("dup/2", 2, false, b"two");
    publisher.publish_acked("dup/3", 2, false, b"three");
    let one = remote.recv().publish();
    let two = remote.recv().publish();
    let three = remote.recv().publish();
    assert_eq!((one.qos, two.qos, three.qos, one.dup), (1, 2, 2, false));
    // "two" gets as far as PUBREC; "one" and "three" are not acknowledged at all.
    remote.send(&pubrec(two.pid));
    assert_eq!(remote.recv_kind(6).pid(), two.pid, "PUBREL");
    remote.drop_connection();
    // On the next connection: each again in order, with DUP and its packet id,
    // and the PUBREL again.
    let mut remote = accept();
    let again: Vec<Pkt> = (0..3).map(|_| remote.recv()).collect();
    let p = again[0].publish();
    assert_eq!((p.topic.as_str(), p.pid, p.dup), ("dup/1", one.pid, true));
    assert_eq!(again[1].kind(), 6, "PUBREL for the message past PUBREC");
    assert_eq!(again[1].pid(), two.pid);
    let p = again[2].publish();
    assert_eq!((p.topic.as_str(), p.pid, p.dup), ("dup/3", three.pid, true));
    remote.send(&puback(one.pid));
    remote.send(&pubcomp(two.pid));
    remote.send(&pubrec(three.pid));
    assert_eq!(remote.recv_kind(6).pid(), three.pid);
    remote.send(&pubcomp(three.pid));
    wait_stats(&b, "nothing left in flight", |s| s.inflight == 0);
    b.shutdown();
}

#[test]
fn retained_messages_go_out_retained_live_and_on_each_connection() {
    let d = dir("retained-out");
    let port = free_port();
    let remote_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let b = broker_with(|c| {
        c.bridge.push(bridge(
            "ret",
            remote_addr,
            vec![topic("#", Direction::Out, 1, "ret/", "up/")],
        ))
    });
    let addr = b.local_addr();
    let mut pubs: Vec<Mq> = (0..SHARDS)
        .map(|s| mq(addr, &id_on_shard("ret-pub", s), true))
        .collect();
    // Retained here before the remote is up: sent, retained, once it is.
    pubs[1].publish_acked("ret/early", 1, true, b"e");
    let remote = Mosquitto::start_on(&d.0, port, "");
    let _state = wait_connected(addr, "ret");
    let mut probe = mq(remote.addr(), "ret-probe", true);
    probe.subscribe("up/early", 1);
    assert_eq!(&probe.recv_publish().payload[..], b"e");
    let mut live = mq(remote.addr(), "ret-live", true);
    live.subscribe("up/#", 1);
    let p = live.recv_publish();
    assert_eq!((p.topic.as_str(), p.retain), ("up/early", true));
    // Retained while connected, from both shards (one of them is the bridge's),
    // and a plain message.
    for (s, p) in pubs.iter_mut().enumerate() {
        p.publish_acked(&format!("ret/{s}"), 1, true, format!("r{s}").as_bytes());
    }
    pubs[0].publish_acked("ret/plain", 1, false, b"p");
    let mut got: Vec<(String, bool)> = (0..SHARDS + 1)
        .map(|_| {
            let p = live.recv_publish();
            (p.topic.clone(), p.retain)
        })
        .collect();
    got.sort();
    // Live deliveries to a plain subscriber on the remote: each once, the retained
    // ones forwarded with their flag, which Mosquitto clears for a live subscriber.
    assert_eq!(
        got,
        vec![
            ("up/0".to_string(), false),
            ("up/1".to_string(), false),
            ("up/plain".to_string(), false)
        ]
    );
    assert!(drain(&mut live).is_empty(), "no copies");
    // The remote retained all three retained ones.
    let mut late = mq(remote.addr(), "ret-late", true);
    late.subscribe("up/#", 1);
    let mut retained: Vec<(String, String, bool)> = (0..SHARDS + 1)
        .map(|_| {
            let p = late.recv_publish();
            (
                p.topic.clone(),
                String::from_utf8(p.payload.to_vec()).unwrap(),
                p.retain,
            )
        })
        .collect();
    retained.sort();
    assert_eq!(
        retained,
        vec![
            ("up/0".to_string(), "r0".to_string(), true),
            ("up/1".to_string(), "r1".to_string(), true),
            ("up/early".to_string(), "e".to_string(), true)
        ]
    );
    assert!(drain(&mut late).is_empty());
    b.shutdown();
}

/// A shardmq edge bridged into a shardmq root (topics `in`): a message the root gets
/// retained while the bridge is up reaches the edge retained (the root keeps the
/// retain flag for a connection with the bridge bit, as Mosquitto does), so the
/// edge's retained store follows the root's; a plain message stays plain. Publishers
/// on both of the root's shards.
#[test]
fn a_shardmq_root_keeps_retain_flags_for_a_shardmq_edge() {
    let root = broker();
    let root_addr = root.local_addr();
    let edge = broker_with(|c| {
        c.bridge.push(bridge(
            "root",
            root_addr,
            vec![topic("fleet/#", Direction::In, 1, "", "")],
        ))
    });
    let edge_addr = edge.local_addr();
    let _state = wait_connected(edge_addr, "root");
    let mut live = mq(edge_addr, &unique("edge-live"), true);
    live.subscribe("fleet/#", 1);
    for s in 0..SHARDS {
        let mut p = mq(root_addr, &id_on_shard("root-pub", s), true);
        p.publish_acked(
            &format!("fleet/cfg/{s}"),
            1,
            true,
            format!("v{s}").as_bytes(),
        );
        p.publish_acked(&format!("fleet/plain/{s}"), 1, false, b"p");
    }
    let mut got = take(&mut live, 2 * SHARDS);
    got.sort();
    assert_eq!(got.len(), 2 * SHARDS, "each once: {got:?}");
    assert!(drain(&mut live).is_empty(), "no copies");
    // A subscriber arriving at the edge later gets the retained ones from the edge.
    let mut late = mq(edge_addr, &unique("edge-late"), true);
    late.subscribe("fleet/cfg/#", 1);
    let mut retained: Vec<(String, bool)> = (0..SHARDS)
        .map(|_| {
            let p = late.recv_publish();
            (p.topic.clone(), p.retain)
        })
        .collect();
    retained.sort();
    let want: Vec<(String, bool)> = (0..SHARDS)
        .map(|s| (format!("fleet/cfg/{s}"), true))
        .collect();
    assert_eq!(retained, want);
}

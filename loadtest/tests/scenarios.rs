//! Every scenario, briefly, against shardmq (2 shards, in this process) and against
//! Mosquitto (Debian's, started here on a free port), plus a run through a lossy
//! path that the load generator must catch. Assertions are on counts, never on
//! timings.

use shardmq_loadtest::{run, Options, Pacing, Protocol, RunReport, Scenario};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn shardmq() -> shardmq::Broker {
    shardmq::Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(2)
        .start()
        .expect("broker starts")
}

/// Debian's mosquitto on a free loopback port, killed on drop.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mosquitto_binary() -> String {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if std::path::Path::new(p).exists() {
            return p.to_string();
        }
    }
    panic!(
        "mosquitto is not installed: `apt-get install mosquitto` (.ci/run installs it); \
         these tests compare against it"
    );
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let bin = mosquitto_binary();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("loadtest-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 100000\nset_tcp_nodelay true\nlog_dest none\n"
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not open port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            child,
            addr,
            _dir: TempDir(dir),
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn opts(scenario: Scenario, broker: SocketAddr, clients: usize, qos: u8) -> Options {
    let mut o = Options::new(scenario, broker, clients);
    o.pub_qos = qos;
    o.sub_qos = qos;
    o.duration = Duration::from_millis(1000);
    o.warmup = Duration::from_millis(200);
    o.threads = 2;
    o
}

/// The drop counters of a broker that has them (shardmq, in this process).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Drops {
    queue_full: u64,
    offline_qos0: u64,
    evicted_qos0: u64,
}

impl Drops {
    fn of(broker: &shardmq::Broker) -> Drops {
        let t = broker.stats().total();
        Drops {
            queue_full: t.dropped_queue_full,
            offline_qos0: t.dropped_offline_qos0,
            evicted_qos0: t.dropped_evicted_qos0,
        }
    }
}

impl std::fmt::Display for Drops {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "broker drops: queue_full={}, offline_qos0={}, evicted_qos0={}",
            self.queue_full, self.offline_qos0, self.evicted_qos0
        )
    }
}

/// Reads a broker's drop counters; `None` for a broker without them (Mosquitto).
type DropsOf<'a> = Option<&'a dyn Fn() -> Drops>;

/// A run that must pass and must have moved real traffic. With `drops`, the broker
/// must have dropped nothing (its counters are since it started, so a drop fails
/// the scenario it happened in and every later one), and every failure says what it
/// dropped: a run the broker's queue bound cut short reads as such, not as a loss.
fn check_active(r: &RunReport, what: &str, drops: DropsOf) {
    let drops = drops.map(|f| f());
    let said = drops.map_or(String::new(), |d| format!("\n{d}"));
    if let Some(d) = drops {
        assert_eq!(
            d,
            Drops::default(),
            "{what}: the broker dropped messages: {d}\n{}",
            r.table()
        );
    }
    assert!(r.ok, "{what}: {}\n{:?}{said}", r.table(), r.errors);
    assert!(r.published_total > 0, "{what}: nothing published");
    assert!(r.delivered > 0, "{what}: nothing delivered in the window");
    assert!(r.latency_us.is_some(), "{what}: no latency samples");
    assert_eq!(r.expected_total, r.published_total * r.fanout, "{what}");
    assert_eq!(
        (r.misrouted, r.disconnects, r.protocol_errors),
        (0, 0, 0),
        "{what}"
    );
    if r.effective_qos >= 1 {
        assert_eq!(r.lost, 0, "{what}{said}");
        assert_eq!(
            r.delivered_total,
            r.expected_total,
            "{what}: {}{said}",
            r.table()
        );
    }
}

/// Every scenario against one broker.
fn all_scenarios(broker: SocketAddr, pid: Option<u32>, name: &str, drops: DropsOf) {
    let with_pid = |mut o: Options| {
        o.broker_pid = pid;
        o.broker_name = Some(name.to_string());
        o
    };
    for qos in [0, 1, 2] {
        let r = run(&with_pid(opts(Scenario::P2p, broker, 4, qos))).expect("p2p runs");
        check_active(&r, &format!("{name} p2p qos {qos}"), drops);
        assert_eq!((r.publishers, r.subscribers, r.effective_qos), (4, 4, qos));
    }
    let r = run(&with_pid(opts(Scenario::Fanin, broker, 8, 1))).expect("fanin runs");
    check_active(&r, &format!("{name} fanin"), drops);
    assert_eq!((r.publishers, r.subscribers, r.fanout), (8, 1, 1));

    let mut o = with_pid(opts(Scenario::Fanout, broker, 20, 1));
    o.publishers = Some(2);
    // The window bounds the deliveries in flight across all subscribers, so one
    // subscriber far behind the rest could hold all of them. At 1000 (the default
    // would be 2000), even that stays inside a session's bound of
    // max_queued_messages + max_inflight = 1064, so no drop is possible.
    o.pacing = Some(Pacing::Window(1000));
    let r = run(&o).expect("fanout runs");
    check_active(&r, &format!("{name} fanout"), drops);
    assert_eq!((r.publishers, r.subscribers, r.fanout), (2, 20, 20));

    let mut o = with_pid(opts(Scenario::Latency, broker, 4, 0));
    o.pacing = Some(Pacing::Rate(2000.0));
    let r = run(&o).expect("latency runs");
    check_active(&r, &format!("{name} latency"), drops);
    // About 2000 msgs/s over about a second: the pacing is followed, loosely (the
    // bound is on counts; a slow machine only makes it smaller).
    assert!(r.published_total <= 2000 * 3, "{}", r.table());

    let r = run(&with_pid(opts(Scenario::Conns, broker, 300, 0))).expect("conns runs");
    assert!(r.ok, "{}", r.table());
    let c = r.conns.as_ref().expect("conns section");
    assert_eq!((c.connected, c.failed), (300, 0));
    assert_eq!(r.published_total, 0);

    // A storm: every client subscribed and got its own QoS 1 message back.
    let r = run(&with_pid(opts(Scenario::Storm, broker, 200, 1))).expect("storm runs");
    assert!(r.ok, "{}", r.table());
    let s = r.conns.as_ref().expect("conns section");
    assert_eq!((s.connected, s.failed), (200, 0));

    if pid.is_some() {
        let b = r.broker_process.as_ref().expect("broker process figures");
        assert!(b.rss_bytes > 0);
        assert!(c.rss_per_conn_bytes.is_some());
    }
}

#[test]
fn every_scenario_against_shardmq() {
    let broker = shardmq();
    let drops = || Drops::of(&broker);
    all_scenarios(broker.local_addr(), None, "shardmq", Some(&drops));
    // Every client said DISCONNECT and closed; the broker notices within moments.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = broker.stats().total();
        if stats.connections == 0 && stats.sessions == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "clients left behind: {stats:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_scenario_against_mosquitto() {
    let m = Mosquitto::start();
    all_scenarios(m.addr, Some(m.child.id()), "mosquitto", None);
}

/// In a fanin run the publishers on the subscriber's thread, which spends its
/// turns reading deliveries, get about as many messages out as those on threads that
/// only publish: each publisher has its share of the window.
#[test]
fn fanin_publishers_share_the_window_fairly() {
    let broker = shardmq();
    let drops = || Drops::of(&broker);
    for (threads, qos) in [(2, 1), (3, 0)] {
        let mut o = opts(Scenario::Fanin, broker.local_addr(), 8, qos);
        o.threads = threads;
        let r = run(&o).expect("fanin runs");
        let what = format!("fanin on {threads} threads at QoS {qos}");
        check_active(&r, &what, Some(&drops));
        let p = r.per_publisher.as_ref().expect("per-publisher figures");
        assert!(
            p.min as f64 >= p.mean / 4.0,
            "{what}: a publisher starved: {p:?}\n{}",
            r.table()
        );
    }
}

#[test]
fn an_unreachable_broker_is_a_setup_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = opts(
        Scenario::P2p,
        format!("127.0.0.1:{port}").parse().unwrap(),
        2,
        0,
    );
    let e = run(&o).expect_err("nothing listens there");
    assert!(e.contains("refused"), "{e}");
}

#[test]
fn bad_options_are_refused() {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut o = opts(Scenario::P2p, addr, 2, 0);
    o.payload = 8;
    assert!(run(&o).unwrap_err().contains("payload"));
    let o = opts(Scenario::Latency, addr, 2, 0);
    assert!(run(&o).unwrap_err().contains("--rate"));
}

/// Raw MQTT CONNECT (clean session) for `client_id`, waiting for CONNACK.
fn connect_raw(addr: SocketAddr, client_id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut p = vec![0x10, (12 + client_id.len()) as u8, 0, 4];
    p.extend_from_slice(b"MQTT");
    p.extend_from_slice(&[4, 2, 0, 60]);
    p.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    p.extend_from_slice(client_id.as_bytes());
    s.write_all(&p).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0]);
    s
}

/// A QoS 1 run whose subscriber is taken over mid-run by another clean-session
/// client with its id: the messages published while it reconnects are lost, and the
/// load generator must say so and exit non-zero.
#[test]
fn a_subscriber_kicked_mid_run_shows_up_as_loss() {
    let broker = shardmq();
    let addr = broker.local_addr();
    let dir = std::env::temp_dir().join(format!("loadtest-lossy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = TempDir(dir.clone());
    let json = dir.join("lossy.json");
    let child = Command::new(env!("CARGO_BIN_EXE_shardmq-loadtest"))
        .args([
            "p2p",
            "--broker",
            &addr.to_string(),
            "--clients",
            "1",
            "--qos",
            "1",
        ])
        .args([
            "--duration",
            "3",
            "--warmup",
            "0.5",
            "--rate",
            "5000",
            "--quiet",
        ])
        .args(["--client-id-prefix", "lossy-", "--json"])
        .arg(&json)
        .stdout(Stdio::piped())
        .spawn()
        .expect("loadtest starts");
    // Wait until the run is publishing, then take the subscriber's id.
    std::thread::sleep(Duration::from_millis(1500));
    let interloper = connect_raw(addr, "lossy-s0");
    drop(interloper);
    let out = child.wait_with_output().expect("loadtest exits");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a QoS 1 loss fails the run:\n{stdout}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["lost"].as_u64().unwrap() > 0, "{v}");
    assert!(v["disconnects"].as_u64().unwrap() >= 1, "{v}");
    assert!(
        v["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().contains("lost")),
        "{v}"
    );
    assert!(stdout.contains("FAILED"), "{stdout}");
}

/// The command line and its JSON, end to end, on a clean run.
#[test]
fn the_binary_writes_its_json() {
    let broker = shardmq();
    let dir = std::env::temp_dir().join(format!("loadtest-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = TempDir(dir.clone());
    let json = dir.join("run.json");
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq-loadtest"))
        .args([
            "fanout",
            "--broker",
            &broker.local_addr().to_string(),
            "--clients",
            "10",
        ])
        .args([
            "--qos",
            "1",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--quiet",
        ])
        .args(["--label", "fo-test", "--broker-name", "shardmq", "--json"])
        .arg(&json)
        .output()
        .expect("loadtest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["scenario"], "fanout");
    assert_eq!(v["label"], "fo-test");
    assert_eq!(v["broker_name"], "shardmq");
    assert_eq!(v["fanout"], 10);
    assert_eq!(v["pacing"]["mode"], "window");
    assert_eq!(v["lost"], 0);
    assert!(v["delivered_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["latency_us"]["p99"].as_f64().unwrap() > 0.0);
    assert!(v["loadtest"]["cpu_s"].is_number());
    assert!(stdout.contains("delivered"), "{stdout}");
}

/// MQTT 5.0 against Mosquitto: p2p at QoS 1, fanout at QoS 0 and 1, and a shared
/// group at QoS 1, each with nothing lost; the broker's Receive Maximum (Mosquitto's
/// max_inflight_messages, 20 by default) caps the publishers.
#[test]
fn protocol_5_against_mosquitto() {
    let m = Mosquitto::start();
    let v5 = |mut o: Options| {
        o.protocol = Protocol::V5;
        o.broker_pid = Some(m.child.id());
        o.broker_name = Some("mosquitto".into());
        o
    };
    let r = run(&v5(opts(Scenario::P2p, m.addr, 4, 1))).expect("p2p runs");
    check_active(&r, "mosquitto p2p 5.0 qos 1", None);
    assert_eq!((r.protocol, r.protocol_level), ("5.0", 5));
    assert_eq!(r.label, "p2p-v5");
    assert_eq!(r.server_receive_maximum, Some(20), "{}", r.table());
    assert!(r.table().contains("MQTT 5.0"), "{}", r.table());

    for qos in [0, 1] {
        let mut o = v5(opts(Scenario::Fanout, m.addr, 20, qos));
        o.publishers = Some(1);
        o.pacing = Some(Pacing::Window(1000));
        let r = run(&o).expect("fanout runs");
        check_active(&r, &format!("mosquitto fanout 5.0 qos {qos}"), None);
        assert_eq!((r.publishers, r.subscribers, r.fanout), (1, 20, 20));
        if qos == 0 {
            // Nothing lost on loopback with the window far below the queue bound.
            assert_eq!(r.lost, 0, "{}", r.table());
        }
    }

    let mut o = v5(opts(Scenario::Shared, m.addr, 4, 1));
    o.publishers = Some(2);
    let r = run(&o).expect("shared runs");
    check_active(&r, "mosquitto shared 5.0 qos 1", None);
    assert_eq!((r.publishers, r.subscribers, r.fanout), (2, 4, 1));
}

/// A broker without 5.0 answers a level-5 CONNECT with a 3.1.1 CONNACK, return code
/// 1: the run is a set-up error that says so.
#[test]
fn a_broker_refusing_5_0_is_a_setup_error_that_says_so() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut b = [0u8; 256];
                if s.read(&mut b).unwrap_or(0) > 0 && b[0] == 0x10 {
                    let _ = s.write_all(&[0x20, 2, 0, 1]);
                }
                let _ = s.read(&mut b);
            });
        }
    });
    let mut o = opts(Scenario::P2p, addr, 2, 1);
    o.protocol = Protocol::V5;
    o.connect_timeout = Duration::from_secs(10);
    let e = run(&o).expect_err("refused");
    assert!(e.contains("does not accept MQTT 5.0"), "{e}");
}

#[test]
fn conns_subscribe_leaves_one_subscription_per_connection() {
    let broker = shardmq();
    let mut o = opts(Scenario::Conns, broker.local_addr(), 300, 1);
    o.conns_subscribe = true;
    // Persistent sessions, so the subscriptions outlive the run and can be counted.
    o.persistent_subscribers = true;
    let r = run(&o).expect("conns --subscribe runs");
    assert!(r.ok, "{}", r.table());
    let c = r.conns.as_ref().expect("conns section");
    assert_eq!((c.connected, c.failed), (300, 0));
    assert!(r.conns_subscribe);
    assert_eq!(r.published_total, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = broker.stats().total();
        if stats.connections == 0 {
            assert_eq!(
                (stats.sessions, stats.subscriptions),
                (300, 300),
                "{stats:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "connections left: {stats:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

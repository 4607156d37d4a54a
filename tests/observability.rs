//! What an operator sees: the `$SYS` topics (read with our raw client and with
//! Debian's `mosquitto_sub`), the Prometheus endpoint (parsed by Python's
//! `prometheus_client`), `/healthz`, the log lines of the real binary (text and
//! JSON), SIGHUP re-reading the config file, `check-config`, graceful shutdown and
//! persistent-session expiration. Brokers run 2 shards on loopback.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PUBLISH: u8 = 3;
const SUBACK: u8 = 9;
const PUBACK: u8 = 4;

/// Every `$SYS` topic the broker must keep (Mosquitto's names).
const SYS_TOPICS: &[&str] = &[
    "version",
    "uptime",
    "clients/connected",
    "clients/disconnected",
    "clients/total",
    "clients/maximum",
    "clients/expired",
    "messages/received",
    "messages/sent",
    "messages/stored",
    "publish/messages/received",
    "publish/messages/sent",
    "publish/messages/dropped",
    "publish/bytes/received",
    "publish/bytes/sent",
    "bytes/received",
    "bytes/sent",
    "subscriptions/count",
    "retained messages/count",
    "store/messages/count",
    "store/messages/bytes",
    "heap/current",
];

const LOADS: &[&str] = &[
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "bytes/received",
    "bytes/sent",
    "connections",
];

/// Reads `$SYS` messages from `raw` into `seen` until `done(seen)` holds.
fn read_sys_until(
    raw: &mut Raw,
    seen: &mut HashMap<String, String>,
    what: &str,
    done: impl Fn(&HashMap<String, String>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(seen) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for $SYS: {what}; seen: {seen:#?}"
        );
        if let Some(p) = raw.recv_within(Duration::from_millis(200)) {
            if p.kind() == PUBLISH {
                let p = p.publish();
                seen.insert(p.topic.clone(), p.payload_str());
            }
        }
    }
}

fn num(seen: &HashMap<String, String>, topic: &str) -> u64 {
    let v = seen
        .get(&format!("$SYS/broker/{topic}"))
        .unwrap_or_else(|| panic!("no $SYS/broker/{topic}"));
    v.parse()
        .unwrap_or_else(|_| panic!("$SYS/broker/{topic} = {v:?} is not a count"))
}

#[test]
fn sys_topics_count_known_traffic() {
    let b = broker_with(|c| c.sys_interval = 1);
    let addr = b.local_addr();
    let (mut sys, _) = Raw::connect(addr, &id_on_shard("sys", 0), true);
    sys.send(&subscribe_packet(1, &[("$SYS/#", 0)]));
    assert_eq!(sys.recv_kind(SUBACK).body[2], 0);
    let (mut sub, _) = Raw::connect(addr, &id_on_shard("sub", 1), true);
    sub.send(&subscribe_packet(1, &[("t/#", 0)]));
    sub.recv_kind(SUBACK);
    let (mut publisher, _) = Raw::connect(addr, &id_on_shard("pub", 0), true);
    for i in 0..100u32 {
        publisher.send(&publish_packet("t/x", &i.to_be_bytes(), 0, false, false, 0));
    }
    for _ in 0..100 {
        assert_eq!(sub.recv().kind(), PUBLISH);
    }
    let mut seen = HashMap::new();
    read_sys_until(&mut sys, &mut seen, "100 publishes counted", |s| {
        s.get("$SYS/broker/publish/messages/received")
            .is_some_and(|v| v == "100")
            && s.get("$SYS/broker/clients/connected")
                .is_some_and(|v| v == "3")
            && SYS_TOPICS
                .iter()
                .all(|t| s.contains_key(&format!("$SYS/broker/{t}")))
            && s.contains_key("$SYS/broker/load/connections/15min")
            && s.contains_key("$SYS/broker/shardmq/shard/1/messages/sent")
    });
    for t in SYS_TOPICS {
        assert!(
            seen.contains_key(&format!("$SYS/broker/{t}")),
            "$SYS/broker/{t} missing: {seen:#?}"
        );
    }
    for l in LOADS {
        for w in ["1min", "5min", "15min"] {
            let v = &seen[&format!("$SYS/broker/load/{l}/{w}")];
            assert!(v.parse::<f64>().is_ok(), "load/{l}/{w} = {v:?}");
        }
    }
    assert!(seen["$SYS/broker/version"].starts_with("shardmq version "));
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));
    assert_eq!(num(&seen, "publish/bytes/received"), 400);
    assert!(num(&seen, "publish/messages/sent") >= 100);
    assert!(num(&seen, "publish/bytes/sent") >= 400);
    assert!(num(&seen, "messages/received") >= 3 + 2 + 100);
    assert!(num(&seen, "bytes/received") > 100 * 9);
    assert!(num(&seen, "bytes/sent") > 100 * 9);
    assert_eq!(num(&seen, "subscriptions/count"), 2);
    assert_eq!(num(&seen, "clients/total"), 3);
    assert_eq!(num(&seen, "clients/disconnected"), 0);
    assert!(num(&seen, "clients/maximum") >= 3);
    assert_eq!(num(&seen, "clients/expired"), 0);
    assert_eq!(num(&seen, "publish/messages/dropped"), 0);
    assert!(num(&seen, "heap/current") > 0);
    for shard in 0..SHARDS {
        assert!(seen.contains_key(&format!("$SYS/broker/shardmq/shard/{shard}/connections")));
    }
    assert_eq!(num(&seen, "shardmq/shard/0/messages/received"), 100);
    assert_eq!(num(&seen, "shardmq/dropped/queue_full"), 0);
    // A subscriber that leaves shows as one connection fewer.
    drop(sub);
    read_sys_until(&mut sys, &mut seen, "a client left", |s| {
        s.get("$SYS/broker/clients/connected")
            .is_some_and(|v| v == "2")
    });
}

#[test]
fn clients_cannot_publish_to_sys_and_acls_apply_to_it() {
    let d = TempDir::new("sysacl");
    let acl = d.path("acl");
    std::fs::write(
        &acl,
        "user admin\ntopic read $SYS/#\n\nuser alice\ntopic readwrite a/#\n",
    )
    .unwrap();
    let b = broker_with(|c| {
        c.sys_interval = 1;
        c.acl_file = Some(acl.clone());
    });
    let addr = b.local_addr();
    let mut admin_opts = ConnectOpts::new(&id_on_shard("admin", 1), true);
    admin_opts.username = Some(b"admin".to_vec());
    let (mut admin, _) = Raw::connect_with(addr, &admin_opts);
    let mut alice_opts = ConnectOpts::new(&id_on_shard("alice", 0), true);
    alice_opts.username = Some(b"alice".to_vec());
    let (mut alice, _) = Raw::connect_with(addr, &alice_opts);
    // alice may not read $SYS; admin may.
    alice.send(&subscribe_packet(1, &[("$SYS/#", 0)]));
    assert_eq!(alice.recv_kind(SUBACK).body[2], 0x80);
    admin.send(&subscribe_packet(1, &[("$SYS/broker/version", 0)]));
    assert_eq!(admin.recv_kind(SUBACK).body[2], 0);
    // (Retained, or live if the first $SYS update came after the subscription.)
    let p = admin.recv_kind(PUBLISH).publish();
    assert!(p.payload_str().starts_with("shardmq version "));
    // A client's publish to $SYS is acknowledged and dropped, even with rights.
    let (mut anyone, _) = Raw::connect(addr, &id_on_shard("anon", 0), true);
    anyone.send(&publish_packet(
        "$SYS/broker/version",
        b"fake",
        1,
        true,
        false,
        7,
    ));
    assert_eq!(anyone.recv_kind(PUBACK).pid(), 7);
    let s = wait_stats(&b, "the $SYS publish dropped", |s| s.publishes_to_sys == 1);
    assert_eq!(b.stats().drops()[5], ("sys_topic", 1));
    assert_eq!(s.publishes_refused, 0);
    admin.expect_silence(QUIET);
    let (mut late, _) = Raw::connect_with(addr, &{
        let mut o = ConnectOpts::new(&id_on_shard("admin2", 0), true);
        o.username = Some(b"admin".to_vec());
        o
    });
    late.send(&subscribe_packet(1, &[("$SYS/broker/version", 0)]));
    late.recv_kind(SUBACK);
    assert!(late
        .recv_kind(PUBLISH)
        .publish()
        .payload_str()
        .starts_with("shardmq version "));
    // Wildcards from the root do not match $SYS topics [MQTT-4.7.2-1].
    let (mut all, _) = Raw::connect(addr, &id_on_shard("all", 1), true);
    all.send(&subscribe_packet(1, &[("#", 0), ("+/broker/#", 0)]));
    all.recv_kind(SUBACK);
    all.expect_silence(Duration::from_millis(1500));
}

#[test]
fn persistent_sessions_expire_after_persistent_client_expiration() {
    let b = broker_with(|c| c.persistent_client_expiration = 1);
    let addr = b.local_addr();
    let id = id_on_shard("expiring", 1);
    let (mut c, present) = Raw::connect(addr, &id, false);
    assert!(!present);
    c.send(&subscribe_packet(1, &[("e/#", 1)]));
    c.recv_kind(SUBACK);
    c.send(&[0xE0, 0]);
    wait_stats(&b, "offline session kept", |s| {
        s.connections == 0 && s.sessions == 1
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = b.stats().total();
        if s.sessions == 0 {
            assert_eq!(s.sessions_expired, 1);
            assert_eq!(s.subscriptions, 0);
            break;
        }
        assert!(Instant::now() < deadline, "session never expired: {s:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_c, present) = Raw::connect(addr, &id, false);
    assert!(!present, "an expired session is gone");
    // A session whose client comes back in time is kept.
    let b = broker_with(|c| c.persistent_client_expiration = 3600);
    let (mut c, _) = Raw::connect(b.local_addr(), &id, false);
    c.send(&[0xE0, 0]);
    std::thread::sleep(Duration::from_millis(600));
    let (_c, present) = Raw::connect(b.local_addr(), &id, false);
    assert!(present);
}

#[test]
fn a_reload_that_shortens_persistent_client_expiration_expires_sessions_already_offline() {
    let b = broker_with(|c| c.persistent_client_expiration = 3600);
    let addr = b.local_addr();
    let ids = [id_on_shard("shortened", 0), id_on_shard("shortened", 1)];
    for id in &ids {
        let (mut c, _) = Raw::connect(addr, id, false);
        c.send(&[0xE0, 0]);
    }
    wait_stats(&b, "offline sessions kept", |s| {
        s.connections == 0 && s.sessions == 2
    });
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(b.stats().total().sessions, 2, "kept under the hour");
    let cfg = shardmq::Config {
        listeners: vec!["127.0.0.1:0".parse().unwrap()],
        connect_timeout: 1.0,
        persistent_client_expiration: 1,
        ..Default::default()
    };
    b.reconfigure(cfg).expect("reconfigured");
    // Both left more than a second ago: the next sweep ends them.
    wait_stats(&b, "sessions expired after the reload", |s| {
        s.sessions == 0 && s.sessions_expired == 2
    });
}

#[test]
fn shutdown_sends_queued_output_then_closes_cleanly() {
    let b = broker_with(|_| {});
    let addr = b.local_addr();
    let (mut sub, _) = Raw::connect(addr, &id_on_shard("sub", 1), true);
    sub.send(&subscribe_packet(1, &[("s/#", 0)]));
    sub.recv_kind(SUBACK);
    let (mut publisher, _) = Raw::connect(addr, &id_on_shard("pub", 0), true);
    for i in 0..1000u32 {
        publisher.send(&publish_packet("s/x", &i.to_be_bytes(), 0, false, false, 0));
    }
    // An idle client that sends something just before the shutdown, which the
    // broker never reads: it must still see a close, not a reset.
    let (mut idle, _) = Raw::connect(addr, &id_on_shard("idle", 0), true);
    wait_stats(&b, "all 1000 delivered", |s| s.delivered >= 1000);
    idle.send(&[0xC0, 0]);
    b.shutdown();
    let mut got = 0;
    let end = loop {
        match sub.read_packet(Instant::now() + TIMEOUT) {
            Ok(p) if p.kind() == PUBLISH => got += 1,
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(got, 1000, "every message sent before the close ({end:?})");
    for (name, raw) in [("subscriber", &mut sub), ("idle client", &mut idle)] {
        raw.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match raw.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => panic!("{name}: expected a clean close (EOF), got {e}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The real binary: log lines, SIGHUP, the metrics endpoint, check-config.
// ---------------------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "shardmq-obs-{}-{}",
            std::process::id(),
            unique(name)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The real binary, its log lines collected as they come.
struct Binary {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    fn start(args: &[String], wait_for: SocketAddr) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("shardmq starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    match line {
                        Ok(l) => log.lock().unwrap().push(l),
                        Err(_) => return,
                    }
                }
            });
        }
        let b = Binary { child, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(wait_for).is_err() {
            assert!(
                Instant::now() < deadline,
                "shardmq did not open {wait_for}: {:?}",
                b.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line satisfies `pred`; returns it.
    fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {what}; log:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the child this test started.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "shardmq did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over plain HTTP/1.1: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The exposition as Python's `prometheus_client` parses it: one
/// `name{label="v",...} value` line per sample, labels sorted.
fn parse_with_prometheus_client(text: &str) -> HashMap<String, f64> {
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = sys.stdin.read()
for family in text_string_to_metric_families(text):
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        print("%s{%s} %r" % (s.name, labels, s.value))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect()
}

/// `mosquitto_sub -t TOPIC -C 1`: the first (retained) value.
fn mosquitto_sub_one(addr: SocketAddr, topic: &str) -> String {
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output()
        .expect("mosquitto_sub runs (Debian's mosquitto-clients)");
    assert!(out.status.success(), "mosquitto_sub: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
}

#[test]
fn a_forced_drop_shows_in_sys_in_metrics_and_in_the_log() {
    let addr = free_addr();
    let metrics = free_addr();
    let args: Vec<String> = [
        "--listen",
        &addr.to_string(),
        "--shards",
        "2",
        "--sys-interval",
        "1",
        "--metrics-listen",
        &metrics.to_string(),
        "--max-inflight",
        "1",
        "--max-queued-messages",
        "10",
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let bin = Binary::start(&args, addr);
    // A subscriber that never acknowledges: 1 in flight, 10 queued, the rest dropped.
    let stalled_id = "stalled-subscriber";
    let (mut stalled, _) = Raw::connect(addr, stalled_id, true);
    stalled.send(&subscribe_packet(1, &[("d/#", 1)]));
    stalled.recv_kind(SUBACK);
    let (mut publisher, _) = Raw::connect(addr, "drop-publisher", true);
    for i in 0..50u16 {
        publisher.send(&publish_packet("d/x", b"payload", 1, false, false, i + 1));
        assert_eq!(publisher.recv_kind(PUBACK).pid(), i + 1);
    }
    // The log: one line for the connect, one rate-limited line for the drops.
    let connected = bin.wait_line("for the connect", |l| {
        l.contains("\"message\":\"client connected\"") && l.contains(stalled_id)
    });
    for field in [
        "\"peer\":\"127.0.0.1:",
        "\"protocol\":\"3.1.1\"",
        "\"shard\":",
    ] {
        assert!(connected.contains(field), "{field} in {connected}");
    }
    let dropped = bin.wait_line("for the drops", |l| {
        l.contains("messages dropped") && l.contains("\"reason\":\"queue_full\"")
    });
    assert!(dropped.contains("\"level\":\"WARN\""), "{dropped}");
    // $SYS, read by Debian's mosquitto_sub.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = mosquitto_sub_one(addr, "$SYS/broker/shardmq/dropped/queue_full");
        if v == "39" {
            break;
        }
        assert!(Instant::now() < deadline, "queue_full in $SYS: {v}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        mosquitto_sub_one(addr, "$SYS/broker/publish/messages/dropped"),
        "39"
    );
    assert!(mosquitto_sub_one(addr, "$SYS/broker/version").starts_with("shardmq version"));
    // Prometheus, parsed by a real parser.
    let (status, body) = http_get(metrics, "/metrics");
    assert_eq!(status, 200, "{body}");
    let m = parse_with_prometheus_client(&body);
    assert_eq!(
        m["shardmq_dropped_messages_total{reason=\"queue_full\"}"],
        39.0
    );
    assert_eq!(
        m["shardmq_dropped_messages_total{reason=\"offline_qos0\"}"],
        0.0
    );
    assert_eq!(m["shardmq_messages_received_total{qos=\"1\"}"], 50.0);
    assert_eq!(
        m["shardmq_inflight_messages{shard=\"0\"}"] + m["shardmq_inflight_messages{shard=\"1\"}"],
        1.0
    );
    assert_eq!(
        m["shardmq_queued_messages{shard=\"0\"}"] + m["shardmq_queued_messages{shard=\"1\"}"],
        10.0
    );
    let connections: f64 = (0..2)
        .map(|s| m[&format!("shardmq_connections{{shard=\"{s}\"}}")])
        .sum();
    assert!(connections >= 2.0, "{connections}");
    assert_eq!(m["shardmq_shard_up{shard=\"0\"}"], 1.0);
    assert_eq!(m["shardmq_shard_up{shard=\"1\"}"], 1.0);
    assert!(
        m["shardmq_bytes_received_total{shard=\"0\"}"]
            + m["shardmq_bytes_received_total{shard=\"1\"}"]
            > 0.0
    );
    assert!(m.contains_key("shardmq_delivery_batch_size_bucket{le=\"+Inf\"}"));
    assert!(m.contains_key("shardmq_build_info{version=\"0.1.0\"}"));
    let (status, body) = http_get(metrics, "/healthz");
    assert_eq!((status, body.starts_with("ok")), (200, true), "{body}");
    assert_eq!(http_get(metrics, "/nothing").0, 404);
    // A keep-alive timeout is logged with its reason.
    let (mut silent, _) =
        Raw::connect_with(addr, &ConnectOpts::new("silent-one", true).keep_alive(1));
    let line = bin.wait_line("for the keep-alive timeout", |l| {
        l.contains("client disconnected") && l.contains("silent-one")
    });
    assert!(line.contains("\"reason\":\"keepalive_timeout\""), "{line}");
    silent.expect_closed_within(TIMEOUT);
    stalled.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let line = bin.wait_line("for the stalled subscriber's end", |l| {
        l.contains("client disconnected") && l.contains(stalled_id)
    });
    assert!(line.contains("\"reason\":\"closed_by_client\""), "{line}");
    // Graceful stop: exit 0, and the publisher sees a clean close.
    let status = bin.stop();
    assert!(status.success(), "{status:?}");
    publisher
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    match publisher.stream.read(&mut buf) {
        Ok(0) => {}
        other => panic!("expected EOF after shutdown, got {other:?}"),
    }
}

#[test]
fn sighup_rereads_the_config_file_and_applies_a_new_limit() {
    let d = TempDir::new("hup");
    let file = d.path("shardmq.toml");
    let addr = free_addr();
    let write = |extra: &str| {
        std::fs::write(
            &file,
            format!("listeners = [\"{addr}\"]\nshards = 2\nsys_interval = 0\n{extra}"),
        )
        .unwrap()
    };
    write("max_connections = 1\n");
    let bin = Binary::start(&["--config".to_string(), file.display().to_string()], addr);
    // The readiness probe above took the one slot for a moment; wait until free.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (_first, rc) = loop {
        let (raw, _, rc) = Raw::connect_opts(addr, &ConnectOpts::new("first", true));
        if rc == 0 {
            break (raw, rc);
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(rc, 0);
    let (_, _, rc) = Raw::connect_opts(addr, &ConnectOpts::new("second", true));
    assert_eq!(rc, 3, "max_connections = 1");
    // A new limit, and a key that needs a restart.
    write("max_connections = 10\nlog_level = \"debug\"\n");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("shards = 2", "shards = 3");
    std::fs::write(&file, text).unwrap();
    bin.signal(libc::SIGHUP);
    let line = bin.wait_line("for the reload", |l| l.contains("configuration reloaded"));
    assert!(line.contains("max_connections"), "{line}");
    assert!(line.contains("log_level"), "{line}");
    let line = bin.wait_line("for what needs a restart", |l| l.contains("need a restart"));
    assert!(line.contains("shards"), "{line}");
    let (_second, _, rc) = Raw::connect_opts(addr, &ConnectOpts::new("second", true));
    assert_eq!(rc, 0, "the new max_connections applies");
    // The new log level applies too: a connection that never sends CONNECT is
    // logged at debug level.
    drop(TcpStream::connect(addr).unwrap());
    bin.wait_line("at debug level", |l| l.contains("DEBUG"));
    // A file that does not parse changes nothing, and says why.
    std::fs::write(&file, "max_connections = = 1\n").unwrap();
    bin.signal(libc::SIGHUP);
    let line = bin.wait_line("for the refused reload", |l| l.contains("not reloaded"));
    assert!(line.contains("line 1"), "{line}");
    let (_third, _, rc) = Raw::connect_opts(addr, &ConnectOpts::new("third", true));
    assert_eq!(rc, 0, "the previous configuration stays");
    assert!(bin.stop().success());
}

#[test]
fn check_config_accepts_the_new_keys_and_names_the_line_of_a_bad_one() {
    let d = TempDir::new("check");
    let good = d.path("good.toml");
    std::fs::write(
        &good,
        "sys_interval = 5\nmetrics_listen = \"127.0.0.1:9883\"\nlog_format = \"json\"\nlog_level = \"info,shardmq=debug\"\npersistent_client_expiration = 86400\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bad = d.path("bad.toml");
    std::fs::write(&bad, "sys_interval = 5\nlog_format = \"xml\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("log_format"),
        "{err}"
    );
    std::fs::write(&bad, "log_level = \"info,,=bad[\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("log_level"));
    // The production starting point that ships in the package is valid.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/shardmq.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["check-config", shipped])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_broker_restarted_on_the_same_port_takes_connections_at_once() {
    // A stopped broker's listeners leave the port's SO_REUSEPORT group when it
    // stops, not later while io_uring tears down: otherwise the kernel hands some
    // of the new broker's first connections to the old listener, which resets them.
    let addr = free_addr();
    let args: Vec<String> = [
        "--listen",
        &addr.to_string(),
        "--shards",
        "2",
        "--sys-interval",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for round in 0..6 {
        let bin = Binary::start(&args, addr);
        for i in 0..10 {
            let (mut raw, _, rc) = Raw::connect_opts(
                addr,
                &ConnectOpts::new(&format!("restart-{round}-{i}"), true),
            );
            assert_eq!(rc, 0, "round {round}, client {i}");
            raw.send(&[0xE0, 0]);
        }
        assert!(bin.stop().success());
    }
}

//! The generator over TLS with a username and password, against shardmq (in this
//! process) with a TLS listener and a password file; certificates made here with
//! rcgen. Assertions are on counts and errors, never on timings.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use shardmq::auth::password::{PasswordFile, PasswordHash};
use shardmq::config::{ListenerConfig, Transport};
use shardmq_loadtest::{run, Options, Scenario, TlsOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A directory of its own, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!(
            "loadtest-tls-{}-{name}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a server certificate for localhost/127.0.0.1 (ca.pem, server.pem,
/// server.key), and a password file for `bench`/`secret` (passwd).
fn pki(dir: &Dir) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "loadtest test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.path("server.key"), server_key.serialize_pem()).unwrap();
    let mut pw = PasswordFile::default();
    pw.set("bench", PasswordHash::new(b"secret"));
    std::fs::write(dir.path("passwd"), pw.to_string()).unwrap();
}

/// A 2-shard broker with a plain listener (anonymous refused, as the password file
/// applies) and a TLS listener; returns it and the TLS address.
fn broker(dir: &Dir) -> (shardmq::Broker, SocketAddr) {
    let (cert, key, pw) = (
        dir.path("server.pem"),
        dir.path("server.key"),
        dir.path("passwd"),
    );
    let b = shardmq::Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(2)
        .configure(|c| {
            c.cert = Some(cert);
            c.key = Some(key);
            c.listener.push(ListenerConfig::new(
                "127.0.0.1:0".parse().unwrap(),
                Transport::Tls,
            ));
            c.password_file = Some(pw);
        })
        .start()
        .expect("broker starts");
    let addrs = b.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2, "a plain and a TLS listener: {addrs:?}");
    (b, addrs[1])
}

fn tls_opts(dir: &Dir, addr: SocketAddr, password: &str) -> Options {
    let mut o = Options::new(Scenario::P2p, addr, 4);
    o.pub_qos = 1;
    o.sub_qos = 1;
    o.duration = Duration::from_millis(1000);
    o.warmup = Duration::from_millis(200);
    o.threads = 2;
    o.connect_timeout = Duration::from_secs(20);
    o.tls = Some(TlsOptions {
        cafile: dir.path("ca.pem"),
        server_name: "localhost".into(),
    });
    o.username = Some("bench".into());
    o.password = Some(password.into());
    o
}

#[test]
fn p2p_qos1_over_tls_with_a_password_loses_nothing() {
    let dir = Dir::new("p2p");
    pki(&dir);
    let (b, addr) = broker(&dir);
    let r = run(&tls_opts(&dir, addr, "secret")).expect("p2p over TLS runs");
    let what = r.table();
    assert!(r.ok, "{what}\n{:?}", r.errors);
    assert_eq!(r.transport, "tls", "{what}");
    let tls = r.tls.as_ref().expect("TLS in the report");
    assert!(
        tls.version
            .as_deref()
            .is_some_and(|v| v.starts_with("TLSv1_")),
        "{what}"
    );
    assert!(tls.cipher_suite.is_some(), "{what}");
    assert_eq!(r.username.as_deref(), Some("bench"));
    assert!(r.published_total > 0 && r.delivered > 0, "{what}");
    assert_eq!(r.effective_qos, 1, "{what}");
    assert_eq!(
        (
            r.lost,
            r.reordered,
            r.misrouted,
            r.disconnects,
            r.protocol_errors
        ),
        (0, 0, 0, 0, 0),
        "{what}"
    );
    assert_eq!(r.delivered_total, r.expected_total, "{what}");
    assert_eq!(r.unacked_at_end, 0, "{what}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["transport"], "tls");
    assert_eq!(json["tls"]["resumption"], false);
    b.shutdown();
}

#[test]
fn a_wrong_password_fails_the_run_with_connack_4() {
    let dir = Dir::new("badpw");
    pki(&dir);
    let (b, addr) = broker(&dir);
    let e = run(&tls_opts(&dir, addr, "not-the-password")).expect_err("refused");
    assert!(
        e.contains("CONNACK refused the connection with code 4 (bad user name or password)"),
        "{e}"
    );
    b.shutdown();
}

#[test]
fn idle_connections_over_tls_report_their_connect_rate() {
    let dir = Dir::new("conns");
    pki(&dir);
    let (b, addr) = broker(&dir);
    let mut o = tls_opts(&dir, addr, "secret");
    o.scenario = Scenario::Conns;
    o.clients = 50;
    o.duration = Duration::from_millis(200);
    let r = run(&o).expect("conns over TLS runs");
    assert!(r.ok, "{}\n{:?}", r.table(), r.errors);
    let c = r.conns.as_ref().expect("conns report");
    assert_eq!((c.connected, c.failed), (50, 0));
    assert!(c.connect_s > 0.0 && c.connect_per_s > 0.0, "{}", r.table());
    assert!(
        (c.connect_per_s * c.connect_s - 50.0).abs() < 1e-6,
        "{}",
        r.table()
    );
    assert!(c.loadtest_cpu_us_per_connect > 0.0, "{}", r.table());
    assert_eq!(c.broker_cpu_us_per_connect, None, "no --broker-pid");
    b.shutdown();
}

#[test]
fn a_certificate_from_another_ca_is_a_setup_error() {
    let dir = Dir::new("otherca");
    pki(&dir);
    let (b, addr) = broker(&dir);
    let other = Dir::new("otherca-client");
    pki(&other);
    let mut o = tls_opts(&dir, addr, "secret");
    o.tls = Some(TlsOptions {
        cafile: other.path("ca.pem"),
        server_name: "localhost".into(),
    });
    let e = run(&o).expect_err("certificate refused");
    assert!(e.contains("TLS") && e.contains("certificate"), "{e}");
    b.shutdown();
}

#[test]
fn plain_tcp_to_a_tls_listener_is_a_setup_error_not_a_hang() {
    let dir = Dir::new("plain");
    pki(&dir);
    let (b, addr) = broker(&dir);
    let mut o = tls_opts(&dir, addr, "secret");
    o.tls = None;
    o.connect_timeout = Duration::from_secs(15);
    assert!(run(&o).is_err());
    b.shutdown();
}

//! `shardmq passwd` against Mosquitto itself: a file it writes is read by Debian's
//! mosquitto broker (checked with mosquitto_pub), and one `mosquitto_passwd` writes is
//! updated by it and still read by both.

mod common;
use common::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn shardmq_passwd(args: &[&str], file: &Path) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardmq"));
    cmd.arg("passwd");
    let (flags, rest): (Vec<&str>, Vec<&str>) = args.iter().partition(|a| a.starts_with('-'));
    cmd.args(flags).arg(file).args(rest);
    cmd.output().expect("shardmq passwd runs")
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!(
        "shardmq-passwd-{}-{}",
        std::process::id(),
        unique(name)
    ));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// Debian's mosquitto with `password_file`, anonymous access off, on a free port.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_with(d: &Path, password_file: &Path) -> Mosquitto {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = d.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
             persistence false\nlog_dest none\nuser root\n",
            password_file.display()
        ),
    )
    .unwrap();
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is installed (scripts/test.sh installs it)");
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
    Mosquitto { child, port }
}

/// Whether mosquitto_pub gets in with these credentials.
fn mosquitto_pub_ok(port: u16, user: &str, password: &str) -> bool {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-u", user, "-P", password, "-t", "t", "-m", "x", "-q", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mosquitto_pub runs (mosquitto-clients; scripts/test.sh installs it)")
        .success()
}

#[test]
fn a_file_written_by_shardmq_passwd_is_read_by_mosquitto_and_by_shardmq() {
    let d = dir("write");
    let file = d.0.join("passwd");
    assert!(shardmq_passwd(&["-c", "-b", "alice", "wonderland"], &file)
        .status
        .success());
    assert!(shardmq_passwd(&["-b", "bob", "builder"], &file)
        .status
        .success());
    assert!(shardmq_passwd(&["-b", "carol", "c"], &file)
        .status
        .success());
    assert!(shardmq_passwd(&["-D", "carol"], &file).status.success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("alice:$7$101$") && text.contains("\nbob:$7$"),
        "{text}"
    );
    assert!(!text.contains("carol"));
    let m = mosquitto_with(&d.0, &file);
    assert!(mosquitto_pub_ok(m.port, "alice", "wonderland"));
    assert!(mosquitto_pub_ok(m.port, "bob", "builder"));
    assert!(!mosquitto_pub_ok(m.port, "alice", "builder"));
    assert!(!mosquitto_pub_ok(m.port, "carol", "c"));
    let b = broker_with(|c| c.password_file = Some(file.clone()));
    let (c, _) = Raw::connect_with(b.local_addr(), &{
        let mut o = ConnectOpts::new("a", true);
        o.username = Some(b"alice".to_vec());
        o.password = Some(b"wonderland".to_vec());
        o
    });
    c.disconnect();
}

#[test]
fn shardmq_passwd_updates_a_file_mosquitto_passwd_wrote() {
    let d = dir("update");
    let file = d.0.join("passwd");
    let ok = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&file)
        .args(["dave", "first"])
        .status()
        .expect("mosquitto_passwd runs")
        .success();
    assert!(ok);
    assert!(shardmq_passwd(&["-b", "erin", "second"], &file)
        .status
        .success());
    assert!(shardmq_passwd(&["-b", "dave", "changed"], &file)
        .status
        .success());
    let m = mosquitto_with(&d.0, &file);
    assert!(mosquitto_pub_ok(m.port, "dave", "changed"));
    assert!(!mosquitto_pub_ok(m.port, "dave", "first"));
    assert!(mosquitto_pub_ok(m.port, "erin", "second"));
}

#[test]
fn shardmq_passwd_refuses_what_it_cannot_do() {
    let d = dir("refuse");
    let file = d.0.join("passwd");
    // No file without -c; no -b without a password; a bad file is not rewritten.
    let out = shardmq_passwd(&["-b", "a", "b"], &file);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-c"));
    assert!(!shardmq_passwd(&["-c", "a", "b"], &file).status.success());
    std::fs::write(&file, "a:plain\n").unwrap();
    let out = shardmq_passwd(&["-b", "x", "y"], &file);
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "a:plain\n");
    assert!(!shardmq_passwd(&["-D", "nobody"], &d.0.join("missing"))
        .status
        .success());
}

/// Connects with a username and password; the CONNACK return code.
fn connack_code(addr: SocketAddr, user: &str, password: &str) -> Option<u8> {
    let mut o = ConnectOpts::new(&unique("hup"), true);
    o.username = Some(user.as_bytes().to_vec());
    o.password = Some(password.as_bytes().to_vec());
    let mut raw = Raw::open(addr);
    raw.send(&o.encode());
    let p = raw.recv_within(Duration::from_secs(2))?;
    (p.kind() == CONNACK).then(|| p.body[1])
}

#[test]
fn sighup_reloads_the_password_file_of_a_running_broker() {
    let d = dir("hup");
    let file = d.0.join("passwd");
    assert!(shardmq_passwd(&["-c", "-b", "alice", "one"], &file)
        .status
        .success());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args([
            "--listen",
            &addr.to_string(),
            "--shards",
            "2",
            "--password-file",
        ])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("shardmq starts");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "shardmq did not open {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id() as i32;
    // The log goes to standard output.
    let log = child.stdout.take().unwrap();
    let _guard = Kill(child);
    assert_eq!(connack_code(addr, "alice", "one"), Some(0));
    assert!(shardmq_passwd(&["-b", "alice", "two"], &file)
        .status
        .success());
    // SAFETY: kill(2) on the child we started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connack_code(addr, "alice", "two") != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the new password never took effect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(connack_code(addr, "alice", "one"), Some(4));
    // A broken file: the reload is refused, and logged; the old one stays.
    std::fs::write(&file, "alice:broken\n").unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(connack_code(addr, "alice", "two"), Some(0));
    drop(_guard);
    let log = std::io::read_to_string(log).unwrap();
    assert!(
        log.contains("reload refused") && log.contains("line 1"),
        "{log}"
    );
}

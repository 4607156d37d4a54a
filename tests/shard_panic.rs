//! A panic on a shard thread aborts the process with a log line, rather than leaving
//! a dead shard behind a broker that still accepts connections. The panic here comes
//! from an embedder's `Authenticator`, which runs on the shard. The test runs itself
//! as a child process, since the child is meant to die.

use shardmq::protocol::{Connect, ConnectReturnCode};
use shardmq::{Authenticator, Broker};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const CHILD: &str = "SHARDMQ_SHARD_PANIC_CHILD";

struct Panics;

impl Authenticator for Panics {
    fn connect(&self, _c: &Connect, _peer: SocketAddr) -> ConnectReturnCode {
        panic!("the authenticator failed");
    }
}

/// In the child: start a broker whose authenticator panics, and connect to it.
#[test]
fn child_connects_to_a_broker_whose_authenticator_panics() {
    if std::env::var_os(CHILD).is_none() {
        return; // only meaningful as the child of the test below
    }
    let broker = Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(2)
        .authenticator(Arc::new(Panics))
        .start()
        .unwrap();
    let mut s = TcpStream::connect(broker.local_addr()).unwrap();
    s.write_all(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'x',
    ])
    .unwrap();
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 4];
    let _ = s.read(&mut buf);
    // Still alive after the panic: the process did not abort.
    std::thread::sleep(Duration::from_secs(5));
    println!("SURVIVED");
}

#[test]
fn a_panic_on_a_shard_aborts_the_process_with_a_message() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_connects_to_a_broker_whose_authenticator_panics",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains("SURVIVED"),
        "the child lived on:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{:?}\n{stderr}",
        out.status
    );
    assert!(stderr.contains("the authenticator failed"), "{stderr}");
    assert!(
        stderr.contains("shardmq-"),
        "the report names the shard thread:\n{stderr}"
    );
}

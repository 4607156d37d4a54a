//! A broker on a data directory, restartable two ways: in process with a graceful
//! shutdown, or as the real binary killed with SIGKILL (tests/durability.rs,
//! tests/shared_subscriptions.rs).

use super::unique;
use shardmq::{Broker, Config};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In-process broker, stopped with `Broker::shutdown`.
    Graceful,
    /// The `shardmq` binary, stopped with SIGKILL.
    Killed,
}

/// A data directory under the system temp dir, removed on drop.
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(name: &str) -> DataDir {
        let path = std::env::temp_dir().join(format!(
            "shardmq-data-{}-{}",
            unique(name),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        DataDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The in-process broker's configuration on `dir`.
pub fn config(dir: &Path, shards: usize) -> Config {
    Config {
        listeners: vec!["127.0.0.1:0".parse().unwrap()],
        shards,
        connect_timeout: 1.0,
        sys_interval: 0,
        data_dir: Some(dir.to_path_buf()),
        ..Config::default()
    }
}

/// A child `shardmq` process; its stdout/stderr lines are collected for diagnostics.
pub struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

enum Inner {
    InProc(Box<Broker>),
    Proc(Proc),
}

/// A running broker on a data directory.
pub struct Node {
    addr: SocketAddr,
    mode: Mode,
    dir: PathBuf,
    shards: usize,
    inner: Option<Inner>,
}

impl Node {
    pub fn start(mode: Mode, dir: &Path, shards: usize) -> Node {
        let inner = match mode {
            Mode::Graceful => Inner::InProc(Box::new(
                Broker::start(config(dir, shards)).expect("broker starts"),
            )),
            Mode::Killed => Inner::Proc(spawn_binary(dir, shards)),
        };
        let addr = match &inner {
            Inner::InProc(b) => b.local_addr(),
            Inner::Proc(p) => p.addr(),
        };
        Node {
            addr,
            mode,
            dir: dir.to_path_buf(),
            shards,
            inner: Some(inner),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the broker the way its mode says (graceful shutdown or SIGKILL) and
    /// waits until it has fully stopped (the data directory is unlocked).
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        match self.inner.take() {
            Some(Inner::InProc(b)) => b.shutdown(),
            Some(Inner::Proc(mut p)) => {
                let _ = p.child.kill(); // SIGKILL
                let _ = p.child.wait();
            }
            None => {}
        }
    }

    /// Stops and starts again on the same data directory with `shards` shards.
    pub fn restart_with(self, shards: usize) -> Node {
        let (mode, dir) = (self.mode, self.dir.clone());
        self.stop();
        Node::start(mode, &dir, shards)
    }

    pub fn restart(self) -> Node {
        let shards = self.shards;
        self.restart_with(shards)
    }

    /// The child's log so far (empty in process).
    pub fn log(&self) -> String {
        match &self.inner {
            Some(Inner::Proc(p)) => p.log.lock().unwrap().join("\n"),
            _ => String::new(),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

impl Proc {
    fn addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            {
                let log = self.log.lock().unwrap();
                for line in log.iter() {
                    if line.contains("shardmq started") {
                        if let Some(i) = line.find("listeners=") {
                            let rest = &line[i + "listeners=".len()..];
                            let first = rest
                                .split(|c: char| c.is_whitespace() || c == ',')
                                .next()
                                .unwrap()
                                .trim_matches('"');
                            return first.parse().unwrap_or_else(|e| {
                                panic!("cannot parse listener {first:?} in {line:?}: {e}")
                            });
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "shardmq did not report its listeners; log:\n{}",
                    self.log.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `shardmq` binary on `dir`, its output collected.
pub fn spawn_binary(dir: &Path, shards: usize) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["--listen", "127.0.0.1:0", "--shards"])
        .arg(shards.to_string())
        .arg("--data-dir")
        .arg(dir)
        .args(["--sys-interval", "0", "--log-level", "info"])
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shardmq binary runs");
    let log = Arc::new(Mutex::new(Vec::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                match line {
                    Ok(l) => log.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
    }
    Proc { child, log }
}

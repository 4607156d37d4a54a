//! The closed-loop window against a stub broker that accepts everything and delivers
//! nothing: whatever the threads do, no more messages reach it than the window
//! holds, and no publisher takes more than its share. The runs themselves fail
//! (nothing is delivered); the assertions are on what the stub received.

use shardmq_loadtest::{run, Options, Pacing, Scenario};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Answers CONNECT, SUBSCRIBE (granting the QoS asked for), QoS 1/2 PUBLISH and
/// PINGREQ, counts the PUBLISH packets, and never sends one.
struct Stub {
    addr: SocketAddr,
    publishes: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

impl Stub {
    fn start() -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local address");
        let publishes = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let (p, o) = (publishes.clone(), open.clone());
        // The accepting thread outlives the test's use of it; the process ends it.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (p, o) = (p.clone(), o.clone());
                o.fetch_add(1, SeqCst);
                std::thread::spawn(move || {
                    let _ = serve(conn, &p);
                    o.fetch_sub(1, SeqCst);
                });
            }
        });
        Stub {
            addr,
            publishes,
            open,
        }
    }

    /// PUBLISH packets received, once every client has gone (so none is still being
    /// read).
    fn publishes(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.open.load(SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.publishes.load(SeqCst)
    }
}

fn serve(conn: TcpStream, publishes: &AtomicU64) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let mut reply = Vec::new();
    loop {
        let mut head = [0u8; 1];
        r.read_exact(&mut head)?;
        let mut len = 0usize;
        for shift in (0..28).step_by(7) {
            let mut b = [0u8; 1];
            r.read_exact(&mut b)?;
            len |= ((b[0] & 0x7f) as usize) << shift;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        let pid = |at: usize| [body[at], body[at + 1]];
        match head[0] >> 4 {
            1 => reply.extend_from_slice(&[0x20, 2, 0, 0]),
            3 => {
                publishes.fetch_add(1, SeqCst);
                let qos = (head[0] >> 1) & 3;
                if qos > 0 {
                    let topic = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let ack = if qos == 1 { 0x40 } else { 0x50 };
                    reply.extend_from_slice(&[ack, 2]);
                    reply.extend_from_slice(&pid(2 + topic));
                }
            }
            // PUBREL: PUBCOMP
            6 => {
                reply.extend_from_slice(&[0x70, 2]);
                reply.extend_from_slice(&pid(0));
            }
            8 => {
                let mut granted = Vec::new();
                let mut at = 2;
                while at + 2 < body.len() {
                    let n = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
                    at += 2 + n;
                    granted.push(body[at] & 3);
                    at += 1;
                }
                reply.extend_from_slice(&[0x90, 2 + granted.len() as u8]);
                reply.extend_from_slice(&pid(0));
                reply.extend_from_slice(&granted);
            }
            12 => reply.extend_from_slice(&[0xd0, 0]),
            14 => return Ok(()),
            _ => {}
        }
        if r.buffer().is_empty() && !reply.is_empty() {
            out.write_all(&reply)?;
            reply.clear();
        }
    }
}

#[test]
fn no_more_than_the_window_reaches_a_broker_that_never_delivers() {
    // (scenario, clients, subscribers, threads, QoS, window; None: the default)
    let runs = [
        (Scenario::P2p, 4, None, 2, 0, None),
        (Scenario::P2p, 6, None, 3, 1, Some(50)),
        (Scenario::Fanin, 8, Some(2), 2, 1, Some(101)),
        (Scenario::Fanin, 8, None, 4, 0, None),
        (Scenario::Fanout, 10, None, 2, 1, Some(1000)),
    ];
    for (scenario, clients, subscribers, threads, qos, window) in runs {
        let stub = Stub::start();
        let mut o = Options::new(scenario, stub.addr, clients);
        o.subscribers = subscribers;
        if scenario == Scenario::Fanout {
            o.publishers = Some(3);
        }
        o.pub_qos = qos;
        o.sub_qos = qos;
        o.threads = threads;
        o.pacing = window.map(Pacing::Window);
        o.warmup = Duration::from_millis(100);
        o.duration = Duration::from_millis(300);
        o.drain_timeout = Duration::from_millis(300);
        let r = run(&o).expect("the stub accepts every client");
        let what = format!(
            "{} with {clients} clients on {threads} threads at QoS {qos}",
            scenario.name()
        );
        let window = match r.pacing {
            shardmq_loadtest::run::PacingReport::Window { window } => window,
            _ => panic!("{what}: not window pacing"),
        };
        let received = stub.publishes();
        assert!(received > 0, "{what}: nothing published\n{}", r.table());
        assert!(
            received * r.fanout <= window,
            "{what}: {received} messages × fan-out {} past the window of {window}",
            r.fanout
        );
        assert!(received <= r.published_total, "{what}");
        // Each publisher kept to its share.
        let share = window.div_ceil(r.publishers as u64).max(r.fanout);
        let most = r.per_publisher.as_ref().expect("publishers").max;
        assert!(
            most * r.fanout <= share,
            "{what}: a publisher sent {most}, its share is {share} deliveries"
        );
    }
}

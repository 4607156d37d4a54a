//! `max_connect_rate`: a storm is smoothed, not refused, and a connection that waited
//! in the accept queue past `connect_timeout` is closed unanswered. Brokers run 2
//! shards; the clients are raw sockets that send CONNECT at once.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Opens `n` connections, each sending CONNECT at once; then, for each, its CONNACK
/// return code, or `None` if the broker closed it without one.
fn storm(addr: std::net::SocketAddr, n: usize, prefix: &str) -> Vec<Option<u8>> {
    let mut clients: Vec<Raw> = (0..n)
        .map(|i| {
            let mut r = Raw::open(addr);
            r.send(&connect_packet(&format!("{prefix}-{i}"), true));
            r
        })
        .collect();
    clients
        .iter_mut()
        .map(
            |c| match c.read_packet(Instant::now() + Duration::from_secs(20)) {
                Ok(p) => {
                    assert_eq!(p.kind(), 2, "CONNACK expected, got {p:?}");
                    Some(p.body[1])
                }
                Err(ReadEnd::Closed) => None,
                Err(ReadEnd::Timeout) => panic!("neither CONNACK nor close"),
            },
        )
        .collect()
}

#[test]
fn a_storm_is_paced_and_every_connection_served() {
    let b = broker_with(|c| {
        c.max_connect_rate = 60;
        c.connect_timeout = 20.0;
    });
    let codes = storm(b.local_addr(), 60, "paced");
    assert!(
        codes.iter().all(|c| *c == Some(0)),
        "every connection accepted: {codes:?}"
    );
    let s = b.stats().total();
    assert!(s.accepts_paced > 0, "the rate held accepts back: {s:#?}");
    assert_eq!(s.refused_max_connections, 0);
    assert_eq!(s.connect_timeouts, 0);
}

#[test]
fn a_connection_that_waited_past_the_connect_timeout_is_closed_unanswered() {
    // One connection a second over two shards, and one second to connect: most of
    // a storm of 12 waits too long.
    let b = broker_with(|c| {
        c.max_connect_rate = 2;
        c.connect_timeout = 1.0;
    });
    let codes = storm(b.local_addr(), 12, "late");
    assert!(
        codes.iter().all(|c| matches!(c, None | Some(0))),
        "never refused with a CONNACK code: {codes:?}"
    );
    let served = codes.iter().filter(|c| c.is_some()).count();
    assert!(served >= 1, "the first ones are served: {codes:?}");
    assert!(served < 12, "some waited too long: {codes:?}");
    let s = wait_stats(&b, "the late ones counted", |s| {
        s.connect_timeouts as usize >= 12 - served
    });
    assert!(s.accepts_paced > 0);
    // The broker still serves clients once the storm has passed.
    std::thread::sleep(Duration::from_millis(1100));
    let (_c, _) = Raw::connect(b.local_addr(), "after-the-storm", true);
}

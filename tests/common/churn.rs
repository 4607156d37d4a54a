//! Client behaviour for the churn and takeover-storm tests (CI scale in
//! `tests/robustness.rs`, full scale in `tests/soak.rs`).

use super::*;

/// One connect/subscribe/disconnect cycle of a churn test; `kind` picks the variant.
/// Returns the number of CONNECTs it made.
pub fn churn_cycle(addr: std::net::SocketAddr, tag: &str, thread: usize, i: usize) -> u64 {
    let id = id_on_shard(&format!("{tag}-{thread}"), i % SHARDS);
    let own = format!("{tag}/own/{id}");
    let shared = format!("{tag}/shared/#");
    let kind = (i / SHARDS + thread) % 5;
    let persistent = kind >= 3;
    let mut opts = ConnectOpts::new(&id, !persistent);
    if kind == 1 || kind == 4 {
        opts = opts.will(&format!("{tag}/shared/will"), b"gone", 1, false);
    }
    let (mut c, sp) = Raw::connect_with(addr, &opts);
    assert!(!sp, "{id}: no session was left from an earlier cycle");
    assert_eq!(c.subscribe(1, &[(&own, 1), (&shared, 1)]), vec![1, 1]);
    if kind == 2 || kind == 4 {
        c.publish(&format!("{tag}/shared/{i}"), b"churn", 1, false);
    }
    match kind {
        // Clean session, DISCONNECT.
        0 | 2 => c.disconnect(),
        // Clean session, socket dropped (the will fires).
        1 => c.drop_connection(),
        // Persistent, then discarded by a clean-session connect.
        _ => {
            if kind == 3 {
                c.disconnect();
            } else {
                c.drop_connection();
            }
            let (c, _) = Raw::connect(addr, &id, true);
            c.disconnect();
            return 2;
        }
    }
    1
}

/// One storm thread; returns (connections accepted, connections closed before their
/// CONNACK was read).
pub fn storm_thread(
    addr: std::net::SocketAddr,
    seed: u64,
    attempts: usize,
    ids: &[String],
    tag: &str,
    will_topic: &str,
) -> (u64, u64) {
    let mut rng = Rng::new(seed + 1);
    let mut held: Vec<Raw> = Vec::new();
    let (mut accepted, mut closed_early) = (0, 0);
    for n in 0..attempts {
        let id = &ids[rng.below(ids.len() as u64) as usize];
        let mut opts = ConnectOpts::new(id, rng.chance(50));
        if rng.chance(40) {
            opts = opts.will(
                will_topic,
                &load_payload(seed as u32, n as u32, 16),
                rng.below(2) as u8,
                false,
            );
        }
        let Some((mut c, _)) = try_connect(addr, &opts) else {
            closed_early += 1;
            continue;
        };
        accepted += 1;
        if rng.chance(50) && !try_subscribe(&mut c, 1, &[(&format!("{tag}/t/{id}"), 1)]) {
            continue;
        }
        if rng.chance(30) {
            c.send_lossy(&publish_packet(
                &format!("{tag}/t/{}", ids[rng.below(ids.len() as u64) as usize]),
                b"storm",
                1,
                false,
                false,
                7,
            ));
        }
        match rng.below(3) {
            0 => c.disconnect(),
            1 => c.drop_connection(),
            _ => {
                // Left open for a later connection with the same id to take over.
                held.push(c);
                if held.len() > 3 {
                    held.remove(0).drop_connection();
                }
            }
        }
    }
    for c in held {
        c.drop_connection();
    }
    (accepted, closed_early)
}

//! Prints what a data directory holds (the state a start would restore): every
//! persistent session's subscriptions and message counts, and the retained
//! messages. Usage: cargo run --example inspect_data -- DIR [--messages]
fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: inspect_data DIR [--messages]");
        std::process::exit(2);
    };
    let show = args.next().as_deref() == Some("--messages");
    let dir = std::path::Path::new(&dir);
    let current = std::fs::read_to_string(dir.join("CURRENT")).unwrap_or_default();
    let Some(g) = current
        .lines()
        .find_map(|l| l.strip_prefix("generation "))
        .and_then(|g| g.trim().parse::<u64>().ok())
    else {
        eprintln!("{}: no CURRENT generation", dir.display());
        std::process::exit(1);
    };
    let gdir = shardmq::store::generation::generation_dir(dir, g);
    let (restored, report) = match shardmq::store::generation::read_generation(&gdir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    println!(
        "generation {g}: {} segments, {} bytes, {} records, {} messages, {} bad records",
        report.segments, report.bytes, report.records, restored.messages, restored.bad_records
    );
    for d in &report.damage {
        println!("damage: {d}");
    }
    for s in &restored.sessions {
        println!(
            "session {:?}: {} subscriptions, {} in flight, {} queued, {} released, {} awaiting PUBREL",
            s.client_id,
            s.subs.len(),
            s.inflight.len(),
            s.queued.len(),
            s.released.len(),
            s.awaiting_pubrel.len()
        );
        if show {
            for (pid, m) in &s.inflight {
                println!(
                    "  in flight {pid} {} {} {:?}",
                    m.stamp, m.msg.topic, m.msg.payload
                );
            }
            for m in &s.queued {
                println!("  queued {} {} {:?}", m.stamp, m.msg.topic, m.msg.payload);
            }
        }
    }
    for (stamp, m) in &restored.retained {
        println!("retained {stamp} {} {:?}", m.topic, m.payload);
    }
}

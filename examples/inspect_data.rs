//! Prints what a data directory holds (the state a start would restore): every
//! persistent session's expiry, subscriptions (with their 5.0 options) and message
//! counts, and the retained messages; with `--messages`, each message with its 5.0
//! properties. Usage: cargo run --example inspect_data -- DIR [--messages]
use shardmq::store::replay::Stored;

/// A message's 5.0 fields, for printing (empty for a 3.1.1 one).
fn props(m: &Stored) -> String {
    let Some(p) = m.props.as_deref() else {
        return String::new();
    };
    let mut out = String::new();
    if let Some(at) = p.expires_us {
        out += &format!(" expires_us={at}");
    }
    if !p.forward.is_empty() {
        out += &format!(" forward={:?}", p.forward);
    }
    if let Some(s) = &p.sender {
        out += &format!(" sender={s:?}");
    }
    out
}

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
        match s.expiry {
            None => println!("  MQTT 3.1.1 session (persistent_client_expiration applies)"),
            Some(e) if e.offline_us == 0 => println!(
                "  session expiry interval {} s, connected when the log ended",
                e.interval
            ),
            Some(e) => println!(
                "  session expiry interval {} s, offline since {} us",
                e.interval, e.offline_us
            ),
        }
        for (f, q) in &s.subs {
            let o = s
                .sub_opts
                .iter()
                .find(|(g, _)| g == f)
                .map(|(_, o)| *o)
                .unwrap_or_default();
            println!(
                "  subscription {f:?} qos {} no_local={} retain_as_published={} id={}",
                *q as u8, o.no_local, o.retain_as_published, o.id
            );
        }
        if show {
            for (pid, m) in &s.inflight {
                println!(
                    "  in flight {pid} {} {} {:?}{}",
                    m.stamp,
                    m.msg.topic,
                    m.msg.payload,
                    props(&m.msg)
                );
            }
            for m in &s.queued {
                println!(
                    "  queued {} {} {:?}{}",
                    m.stamp,
                    m.msg.topic,
                    m.msg.payload,
                    props(&m.msg)
                );
            }
        }
    }
    for (stamp, m) in &restored.retained {
        println!("retained {stamp} {} {:?}{}", m.topic, m.payload, props(m));
    }
}

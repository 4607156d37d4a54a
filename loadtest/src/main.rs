//! shardmq-loadtest: the load generator's crate. Its scenarios (p2p, fan-in,
//! fan-out, idle connections, fixed-rate latency) are the next piece of work; until
//! then the binary says so instead of pretending to measure anything.

fn main() -> std::process::ExitCode {
    eprintln!("shardmq-loadtest: no scenarios are implemented in this version");
    std::process::ExitCode::from(2)
}

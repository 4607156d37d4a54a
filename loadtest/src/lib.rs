//! shardmq-loadtest: a load generator for any MQTT 3.1.1 or 5.0 broker.
//!
//! Scenarios open real TCP (or TLS) connections to the broker from a few event-loop threads.
//! Every payload carries its publisher, a sequence number and its send time, so the
//! subscriber side checks delivery (loss, duplicates, order) while it measures
//! throughput and latency. See `docs/BENCHMARKS.md` for the method.

pub mod mqtt;
pub mod plan;
pub mod procfs;
pub mod report;
pub mod run;
pub mod tls;
pub mod track;
pub mod window;
mod worker;

pub use mqtt::Protocol;
pub use plan::Scenario;
pub use run::{run, Options, Pacing, RunReport};
pub use tls::TlsOptions;

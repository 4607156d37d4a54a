//! Arbitrary sequences of client packets, deliveries, reconnects and backpressure
//! against one session state machine; see `shardmq::fuzz_support::session_case`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardmq::fuzz_support::session_case(data));

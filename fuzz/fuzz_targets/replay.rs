//! Arbitrary bytes as the records of a data directory's logs, through the replay
//! that rebuilds sessions and retained messages; see
//! `shardmq::fuzz_support::replay_case`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardmq::fuzz_support::replay_case(data));

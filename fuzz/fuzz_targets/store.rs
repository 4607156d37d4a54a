//! Arbitrary bytes as a segment of a shard's log, through the recovery reader; see
//! `shardmq::fuzz_support::store_case`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardmq::fuzz_support::store_case(data));

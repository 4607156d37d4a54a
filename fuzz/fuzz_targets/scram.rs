//! Arbitrary SCRAM-SHA-512 client messages against the broker's side of the exchange,
//! and genuine clients with arbitrary names and nonces; see
//! `shardmq::fuzz_support::scram_case`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardmq::fuzz_support::scram_case(data));

//! Arbitrary bytes, or frames built from them, through the WebSocket layer of a `ws`
//! listener (tungstenite's upgrade and frame reader); see
//! `shardmq::fuzz_support::ws_case`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardmq::fuzz_support::ws_case(data));

//! Arbitrary bytes at the start of a connection on a `proxy_protocol` listener,
//! through the PROXY header parser; see `shardmq::fuzz_support::proxy_case`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardmq::fuzz_support::proxy_case(data));

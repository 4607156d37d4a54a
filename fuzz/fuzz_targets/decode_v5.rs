//! Arbitrary bytes from a 5.0 client, in arbitrary chunks, through the decoder (and the
//! routing of what it decodes); see `shardmq::fuzz_support::decode_v5_case`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardmq::fuzz_support::decode_v5_case(data));

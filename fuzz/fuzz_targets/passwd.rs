//! Arbitrary text as a Mosquitto password file, parsed, edited and written back; see
//! `shardmq::fuzz_support::passwd_case`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardmq::fuzz_support::passwd_case(data));

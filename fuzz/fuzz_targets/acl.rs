//! Arbitrary text as a Mosquitto ACL file, with a client and topics to check it on; see
//! `shardmq::fuzz_support::acl_case`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardmq::fuzz_support::acl_case(data));

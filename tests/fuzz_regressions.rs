//! Replays every input kept under `fuzz/regressions/` through the fuzz cases: the
//! crashers the fuzzer found (fixed since) and hand-written seeds, so none comes back
//! and the cases themselves keep passing without libFuzzer (`scripts/fuzz.sh` runs
//! the fuzzer).

use shardmq::fuzz_support::{
    acl_case, decode_case, decode_v5_case, passwd_case, proxy_case, replay_case, scram_case,
    session_case, store_case, ws_case,
};
use std::path::{Path, PathBuf};

/// The files of `fuzz/regressions/<target>/`, sorted; never empty, so the test cannot
/// pass by finding nothing.
fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
}

/// Runs `case` on every input of `target`, naming the input that fails.
fn replay(target: &str, case: fn(&[u8])) {
    for path in inputs(target) {
        let data = std::fs::read(&path).expect("readable input");
        let result = std::panic::catch_unwind(|| case(&data));
        assert!(result.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn decoder_survives_every_kept_input() {
    replay("decode", decode_case);
}

/// The 5.0 target's inputs, and the decode ones forced onto a 5.0 connection.
#[test]
fn decoder_at_5_0_survives_every_kept_input() {
    replay("decode_v5", decode_v5_case);
    replay("decode", decode_v5_case);
}

#[test]
fn session_survives_every_kept_input() {
    replay("session", session_case);
}

#[test]
fn scram_exchange_survives_every_kept_input() {
    replay("scram", scram_case);
}

#[test]
fn password_file_parser_survives_every_kept_input() {
    replay("passwd", passwd_case);
}

#[test]
fn acl_survives_every_kept_input() {
    replay("acl", acl_case);
}

#[test]
fn websocket_layer_survives_every_kept_input() {
    replay("ws", ws_case);
}

#[test]
fn log_recovery_survives_every_kept_input() {
    replay("store", store_case);
}

#[test]
fn log_replay_survives_every_kept_input() {
    replay("replay", replay_case);
}

#[test]
fn proxy_header_parser_survives_every_kept_input() {
    replay("proxy", proxy_case);
}

/// Inputs in `fuzz/findings/<target>/` show bugs not fixed yet (described in
/// `fuzz/findings/README.md`), so each must still fail; once the bug is fixed this test
/// fails, and the input moves to `fuzz/regressions/`. Ignored because the bugs are
/// outside the fuzz harness: `cargo test --test fuzz_regressions -- --ignored`.
#[test]
#[ignore]
fn every_finding_still_reproduces() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/findings");
    type Case = fn(&[u8]);
    let cases: [(&str, Case); 6] = [
        ("decode", decode_case),
        ("session", session_case),
        ("passwd", passwd_case),
        ("scram", scram_case),
        ("acl", acl_case),
        ("ws", ws_case),
    ];
    for (target, case) in cases {
        let Ok(dir) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for path in dir.map(|e| e.expect("directory entry").path()) {
            let data = std::fs::read(&path).expect("readable input");
            let result = std::panic::catch_unwind(|| case(&data));
            assert!(
                result.is_err(),
                "{} passes now: move it to regressions/",
                path.display()
            );
        }
    }
}

/// The `seed-valid-*` passwd inputs are files the parser accepts (after the control
/// byte passwd_case reads first), so the fuzzer starts past the first refusal; their
/// hashes, made by Python's hashlib, verify with the passwords make_seeds.py used.
#[test]
fn valid_passwd_seeds_are_accepted_and_verify_with_hashlib_hashes() {
    use shardmq::auth::password::PasswordFile;
    let parse = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions/passwd")
            .join(name);
        let data = std::fs::read(&path).expect("readable input");
        let text = String::from_utf8(data[1..].to_vec()).expect("UTF-8 seed");
        PasswordFile::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    for path in inputs("passwd") {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("seed-valid-") {
            parse(name);
        }
    }
    let file = parse("seed-valid-mosquitto-file");
    assert_eq!(file.len(), 5);
    assert!(file.verify("alice", b"secret") && !file.verify("alice", b"Secret"));
    assert!(file.verify("bob", b"hunter2") && !file.verify("bob", b"hunter3"));
    assert!(file.verify("carol", b"pw"));
    assert!(file.verify("dave with space", b""));
    assert!(file.verify("\u{e9}ve", "p\u{e4}ss".as_bytes()));
    let file = parse("seed-valid-replace-first-user");
    assert!(file.verify("admin", b"admin") && file.verify("guest", b"guest"));
}

/// The `seed-valid-*` decode inputs really are well-formed client streams (after the
/// three bytes decode_case reads first), so they lead the fuzzer through every packet
/// type rather than into the first error.
#[test]
fn valid_decode_seeds_are_well_formed_streams() {
    let seeds: Vec<PathBuf> = inputs("decode")
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-valid-"))
        })
        .collect();
    assert!(!seeds.is_empty(), "no seed-valid-* inputs");
    for path in seeds {
        let data = std::fs::read(&path).expect("readable input");
        let mut buf = bytes::BytesMut::from(&data[3..]);
        let mut count = 0;
        while let Some(packet) = shardmq::protocol::decode(&mut buf, 1 << 20)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        {
            assert!(count > 0 || matches!(packet, shardmq::protocol::Packet::Connect(_)));
            count += 1;
        }
        assert!(buf.is_empty(), "{}: trailing bytes", path.display());
        assert!(count >= 2, "{}: {count} packets", path.display());
    }
}

/// The `seed-mqtt5-valid-*` decode inputs are well-formed 5.0 client streams: a level-5
/// CONNECT, then every packet a 5.0 client sends, each with properties, decoded on a
/// 5.0 connection (bit 6 of the third byte, which decode_case reads).
#[test]
fn valid_mqtt5_decode_seeds_are_well_formed_5_0_streams() {
    use shardmq::protocol::{decode_with, DecodeOptions, Packet, Protocol};
    let seeds: Vec<PathBuf> = inputs("decode")
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-mqtt5-valid-"))
        })
        .collect();
    assert!(!seeds.is_empty(), "no seed-mqtt5-valid-* inputs");
    let opts = DecodeOptions {
        v5: true,
        ..DecodeOptions::new(1 << 20)
    };
    for path in seeds {
        let data = std::fs::read(&path).expect("readable input");
        assert_eq!(data[2] & 0xC0, 0x40, "{}: not a 5.0 input", path.display());
        let mut buf = bytes::BytesMut::from(&data[3..]);
        let mut names = Vec::new();
        while let Some(packet) =
            decode_with(&mut buf, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        {
            if names.is_empty() {
                assert!(matches!(&packet, Packet::Connect(c) if c.protocol == Protocol::V5));
            }
            names.push(packet.name());
        }
        assert!(buf.is_empty(), "{}: trailing bytes", path.display());
        assert_eq!(names.len(), 13, "{}: {names:?}", path.display());
        assert!(names.contains(&"AUTH"), "{}: {names:?}", path.display());
    }
}

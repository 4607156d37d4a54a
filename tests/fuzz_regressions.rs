//! Replays every input kept under `fuzz/regressions/` through the fuzz cases: the
//! crashers the fuzzer found (fixed since) and hand-written seeds, so none comes back
//! and the cases themselves keep passing without libFuzzer (`scripts/fuzz.sh` runs
//! the fuzzer).

use shardmq::fuzz_support::{decode_case, session_case};
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

#[test]
fn session_survives_every_kept_input() {
    replay("session", session_case);
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

//! The command line: `shardmq check-config` on good and bad files.

use std::path::PathBuf;
use std::process::Command;

fn check(text: &str, extra: &[(&str, &str)]) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!(
        "shardmq-cli-{}-{}",
        std::process::id(),
        text.len() + extra.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, body) in extra {
        std::fs::write(dir.join(name), body).unwrap();
    }
    let file: PathBuf = dir.join("shardmq.toml");
    std::fs::write(&file, text.replace("$DIR", &dir.display().to_string())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("shardmq runs");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_config_accepts_the_example_and_names_what_is_wrong() {
    let example = include_str!("../shardmq.example.toml");
    let (ok, out) = check(example, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("ok, 1 listener"), "{out}");

    let (ok, out) = check("shards = 2\nmax_inflight = \"many\"\n", &[]);
    assert!(!ok);
    assert!(out.contains("line 2"), "{out}");

    let (ok, out) = check("max_inflight = 0\n", &[]);
    assert!(!ok);
    assert!(out.contains("max_inflight"), "{out}");

    let (ok, out) = check(
        "password_file = \"$DIR/passwd\"\n",
        &[("passwd", "alice:plain\n")],
    );
    assert!(!ok);
    assert!(out.contains("line 1"), "{out}");

    let (ok, out) = check(
        "[[listener]]\naddress = \"127.0.0.1:8883\"\ntransport = \"tls\"\ncert = \"$DIR/none.pem\"\nkey = \"$DIR/none.key\"\n",
        &[],
    );
    assert!(!ok);
    assert!(out.contains("none.pem"), "{out}");
}

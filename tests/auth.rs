//! Passwords and ACLs through real sockets, with an independent client (rumqttc) and
//! raw bytes, on a 2-shard broker reading Mosquitto-format files: who may connect,
//! and what each client may publish, subscribe to and receive on every delivery path
//! (live, retained on subscribe, and the backlog of a resumed session), and a reload
//! that swaps both files.

mod common;
use common::*;
use shardmq::auth::password::{PasswordFile, PasswordHash};
use std::path::{Path, PathBuf};

/// A directory of its own, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!(
            "shardmq-auth-{}-{}",
            std::process::id(),
            unique(name)
        ));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn password_file(users: &[(&str, &str)]) -> String {
    let mut f = PasswordFile::default();
    for (u, p) in users {
        f.set(u, PasswordHash::new(p.as_bytes()));
    }
    f.to_string()
}

const ACL: &str = "\
# anonymous
topic read public/#

user alice
topic readwrite alice/#
topic read sensors/#
topic deny sensors/secret/#
topic write cmd/#

user bob
topic readwrite bob/#
topic read cmd/#

pattern readwrite devices/%c/#
pattern read inbox/%u/#
";

fn secured(dir: &Dir, users: &[(&str, &str)], allow_anonymous: Option<bool>) -> Broker {
    let pw = dir.write("passwd", &password_file(users));
    let acl = dir.write("acl", ACL);
    broker_with(|c| {
        c.password_file = Some(pw);
        c.acl_file = Some(acl);
        c.allow_anonymous = allow_anonymous;
    })
}

/// What a rumqttc client gets back for this CONNECT: Ok on success, else the code.
fn rumqttc_connect(
    addr: std::net::SocketAddr,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<(), rumqttc::ConnectReturnCode> {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    let (_client, mut connection) = rumqttc::Client::new(opts, 8);
    for ev in connection.iter() {
        match ev {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => {
                assert_eq!(a.code, rumqttc::ConnectReturnCode::Success);
                return Ok(());
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(e) => panic!("{id}: {e}"),
        }
    }
    panic!("{id}: no CONNACK");
}

fn user(addr: std::net::SocketAddr, id: &str, u: &str, p: &str, clean: bool) -> Mq {
    mq_with(addr, id, clean, |o| {
        o.set_credentials(u, p);
    })
}

#[test]
fn passwords_decide_who_connects_with_connack_0x04_and_0x05() {
    let dir = Dir::new("pw");
    let b = secured(&dir, &[("alice", "wonderland"), ("bob", "builder")], None);
    let addr = b.local_addr();
    assert_eq!(
        rumqttc_connect(addr, "a1", Some(("alice", "wonderland"))),
        Ok(())
    );
    assert_eq!(
        rumqttc_connect(addr, "b1", Some(("bob", "builder"))),
        Ok(())
    );
    use rumqttc::ConnectReturnCode::*;
    assert_eq!(
        rumqttc_connect(addr, "a2", Some(("alice", "Wonderland"))),
        Err(BadUserNamePassword)
    );
    assert_eq!(
        rumqttc_connect(addr, "x", Some(("mallory", "wonderland"))),
        Err(BadUserNamePassword)
    );
    // A password file turns anonymous access off unless it is asked for.
    assert_eq!(rumqttc_connect(addr, "anon", None), Err(NotAuthorized));
    // A username without a password (raw bytes: rumqttc always sends both).
    let mut opts = ConnectOpts::new("nopass", true);
    opts.username = Some(b"alice".to_vec());
    let (mut c, _, rc) = Raw::connect_opts(addr, &opts);
    assert_eq!(rc, 0x04);
    c.expect_closed();
    let s = wait_stats(&b, "4 refusals", |s| s.connects_refused >= 4);
    assert_eq!(s.connects_refused, 4);
    assert_no_leaks(&b);

    let open = secured(&Dir::new("pw-open"), &[("alice", "w")], Some(true));
    assert_eq!(rumqttc_connect(open.local_addr(), "anon", None), Ok(()));
}

#[test]
fn a_password_file_written_by_mosquitto_passwd_is_accepted() {
    let dir = Dir::new("mosq");
    let pw = dir.0.join("passwd");
    let ok = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&pw)
        .args(["devices", "s3cr3t"])
        .status()
        .expect("mosquitto_passwd runs (Debian's mosquitto package; scripts/test.sh installs it)");
    assert!(ok.success());
    let b = broker_with(|c| c.password_file = Some(pw.clone()));
    assert_eq!(
        rumqttc_connect(b.local_addr(), "d1", Some(("devices", "s3cr3t"))),
        Ok(())
    );
    assert_eq!(
        rumqttc_connect(b.local_addr(), "d2", Some(("devices", "nope"))),
        Err(rumqttc::ConnectReturnCode::BadUserNamePassword)
    );
}

#[test]
fn a_bad_line_in_a_security_file_stops_the_broker_from_starting() {
    let dir = Dir::new("bad");
    let pw = dir.write("passwd", "alice:plaintext\n");
    let e = Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(SHARDS)
        .configure(|c| c.password_file = Some(pw))
        .start()
        .err()
        .expect("refused");
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn publishes_without_write_access_are_acknowledged_and_dropped() {
    let dir = Dir::new("write");
    let b = secured(&dir, &[("alice", "a"), ("bob", "b")], None);
    let addr = b.local_addr();
    let mut bob = user(addr, &id_on_shard("bob", 0), "bob", "b", true);
    assert_eq!(bob.subscribe("cmd/#", 1), Some(1));
    assert_eq!(bob.subscribe("bob/#", 1), Some(1));
    let mut alice = user(addr, &id_on_shard("alice", 1), "alice", "a", true);
    // Alice may write cmd/#, not bob/#: both QoS 1 publishes are acknowledged.
    alice.publish_acked("bob/hijack", 1, false, b"no");
    alice.publish_acked("cmd/go", 1, false, b"yes");
    let p = bob.recv_publish();
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("cmd/go", &b"yes"[..]));
    assert!(bob.recv_publish_within(QUIET).is_none());
    let s = wait_stats(&b, "one refused publish", |s| s.publishes_refused >= 1);
    assert_eq!(s.publishes_refused, 1);
    alice.disconnect();
    bob.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn subscriptions_without_read_access_get_0x80_and_wider_ones_are_filtered_per_message() {
    let dir = Dir::new("read");
    let b = secured(&dir, &[("alice", "a"), ("bob", "b")], None);
    let addr = b.local_addr();
    let mut alice = user(addr, &id_on_shard("al", 0), "alice", "a", true);
    assert_eq!(alice.subscribe("bob/#", 1), None, "no read access at all");
    assert_eq!(alice.subscribe("sensors/secret/x", 1), None, "denied");
    assert_eq!(alice.subscribe("#", 1), Some(1), "some topics readable");
    let mut bob = user(addr, &id_on_shard("bo", 1), "bob", "b", true);
    // Bob writes on his own topics; alice, subscribed to '#', may read none of them.
    bob.publish_acked("bob/x", 1, false, b"bob's");
    let mut writer = user(addr, &id_on_shard("w", 1), "alice", "a", true);
    writer.publish_acked("alice/one", 1, false, b"1");
    let p = alice.recv_publish();
    assert_eq!(p.topic, "alice/one");
    assert!(
        alice.recv_publish_within(QUIET).is_none(),
        "bob/x is not alice's to read"
    );
    let s = wait_stats(&b, "refusals counted", |s| {
        s.subscriptions_refused >= 2 && s.deliveries_refused >= 1
    });
    assert_eq!(s.subscriptions_refused, 2);
    for c in [alice, bob, writer] {
        c.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn patterns_substitute_client_id_and_username() {
    let dir = Dir::new("pattern");
    let b = secured(&dir, &[("alice", "a"), ("bob", "b")], Some(true));
    let addr = b.local_addr();
    // An anonymous device may use its own subtree, by client id.
    let mut dev = mq(addr, "dev-42", true);
    assert_eq!(dev.subscribe("devices/dev-42/#", 1), Some(1));
    assert_eq!(dev.subscribe("devices/dev-43/#", 1), None);
    dev.publish_acked("devices/dev-42/state", 1, false, b"on");
    let p = dev.recv_publish();
    assert_eq!(p.topic, "devices/dev-42/state");
    // %u: bob reads his inbox, not alice's.
    let mut bob = user(addr, &id_on_shard("bx", 0), "bob", "b", true);
    assert_eq!(bob.subscribe("inbox/bob/#", 1), Some(1));
    assert_eq!(bob.subscribe("inbox/alice/#", 1), None);
    // A client id with a wildcard never matches a pattern (raw: rumqttc would refuse it).
    let (mut wild, _) = Raw::connect(addr, "dev+", true);
    assert_eq!(wild.subscribe(1, &[("devices/dev+/#", 1)]), vec![0x80]);
    wild.disconnect();
    dev.disconnect();
    bob.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn retained_messages_on_subscribe_are_filtered_by_read_access() {
    let dir = Dir::new("retained");
    let b = secured(&dir, &[("alice", "a"), ("bob", "b"), ("root", "r")], None);
    let addr = b.local_addr();
    // Retained messages on topics alice may and may not read (written by their owners).
    let mut bob = user(addr, &id_on_shard("rb", 0), "bob", "b", true);
    bob.publish_acked("bob/status", 1, true, b"bob's");
    let mut alice_w = user(addr, &id_on_shard("ra", 1), "alice", "a", true);
    alice_w.publish_acked("alice/status", 1, true, b"alice's");
    let mut alice = user(addr, &id_on_shard("rs", 1), "alice", "a", true);
    assert_eq!(alice.subscribe("+/status", 1), Some(1));
    let p = alice.recv_publish();
    assert_eq!((p.topic.as_str(), p.retain), ("alice/status", true));
    assert!(alice.recv_publish_within(QUIET).is_none());
    // Clear them.
    bob.publish_acked("bob/status", 1, true, b"");
    alice_w.publish_acked("alice/status", 1, true, b"");
    for c in [alice, alice_w, bob] {
        c.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn a_resumed_session_keeps_only_what_its_new_user_may_read() {
    let dir = Dir::new("backlog");
    let b = secured(&dir, &[("alice", "a"), ("bob", "b")], None);
    let addr = b.local_addr();
    let id = id_on_shard("shared-device", 1);
    // Alice's persistent session subscribes to her topics and the sensors.
    let mut a = user(addr, &id, "alice", "a", false);
    assert_eq!(a.subscribe("alice/#", 1), Some(1));
    assert_eq!(a.subscribe("sensors/#", 1), Some(1));
    a.disconnect();
    // While it is offline, messages queue for it.
    let mut w = user(addr, &id_on_shard("aw", 0), "alice", "a", true);
    w.publish_acked("alice/note", 1, false, b"for alice");
    w.disconnect();
    wait_stats(&b, "one message queued", |s| s.queued == 1);
    // Bob resumes the session (same client id): alice's backlog is not his to read,
    // and neither are live messages through her subscriptions.
    let mut as_bob = user(addr, &id, "bob", "b", false);
    assert!(as_bob.session_present);
    assert!(as_bob.recv_publish_within(QUIET).is_none());
    let s = wait_stats(&b, "backlog refused", |s| s.deliveries_refused >= 1);
    assert_eq!(s.queued, 0);
    let mut w = user(addr, &id_on_shard("aw2", 0), "alice", "a", true);
    w.publish_acked("alice/live", 1, false, b"still alice's");
    assert!(as_bob.recv_publish_within(QUIET).is_none());
    as_bob.disconnect();
    // Offline, the session answers to its last client (bob). Once alice has taken
    // it back, what arrives while she is offline is queued for her again.
    user(addr, &id, "alice", "a", false).disconnect();
    w.publish_acked("alice/later", 1, false, b"hers");
    w.disconnect();
    let mut a = user(addr, &id, "alice", "a", false);
    let p = a.recv_publish();
    assert_eq!(p.topic, "alice/later");
    a.disconnect();
    user(addr, &id, "alice", "a", true).disconnect();
    assert_no_leaks(&b);
}

#[test]
fn a_will_on_a_topic_the_client_may_not_write_is_refused_with_0x05() {
    let dir = Dir::new("will");
    let b = secured(&dir, &[("alice", "a")], None);
    let mut opts = ConnectOpts::new("willy", true).will("bob/will", b"x", 1, false);
    opts.username = Some(b"alice".to_vec());
    opts.password = Some(b"a".to_vec());
    let (mut c, _, rc) = Raw::connect_opts(b.local_addr(), &opts);
    assert_eq!(rc, 0x05);
    c.expect_closed();
    let mut opts = ConnectOpts::new("willy", true).will("alice/will", b"x", 1, false);
    opts.username = Some(b"alice".to_vec());
    opts.password = Some(b"a".to_vec());
    let (c, _) = Raw::connect_with(b.local_addr(), &opts);
    c.disconnect();
    assert_no_leaks(&b);
}

fn reload_files(dir: &Path, users: &[(&str, &str)], acl: &str) {
    std::fs::write(dir.join("passwd"), password_file(users)).unwrap();
    std::fs::write(dir.join("acl"), acl).unwrap();
}

#[test]
fn a_reload_swaps_passwords_and_rules_and_a_bad_file_changes_nothing() {
    let dir = Dir::new("reload");
    let b = secured(&dir, &[("alice", "old")], None);
    let addr = b.local_addr();
    let mut alice = user(addr, &id_on_shard("rl", 0), "alice", "old", true);
    assert_eq!(alice.subscribe("alice/#", 1), Some(1));
    // New password; alice loses read access to alice/#.
    reload_files(
        &dir.0,
        &[("alice", "new")],
        "user alice\ntopic write alice/#\n",
    );
    b.reload().unwrap();
    use rumqttc::ConnectReturnCode::*;
    assert_eq!(
        rumqttc_connect(addr, "rl2", Some(("alice", "old"))),
        Err(BadUserNamePassword)
    );
    assert_eq!(rumqttc_connect(addr, "rl3", Some(("alice", "new"))), Ok(()));
    // The connected client was not dropped, and gets the new rules.
    alice.publish_acked("alice/x", 1, false, b"written");
    assert!(
        alice.recv_publish_within(QUIET).is_none(),
        "no read access any more"
    );
    // A bad file is refused and the previous ones stay in force.
    std::fs::write(dir.0.join("passwd"), "alice:not-a-hash\n").unwrap();
    let e = b.reload().unwrap_err().to_string();
    assert!(e.contains("line 1"), "{e}");
    assert_eq!(rumqttc_connect(addr, "rl4", Some(("alice", "new"))), Ok(()));
    alice.disconnect();
    assert_no_leaks(&b);
}

#[test]
fn without_security_files_nothing_is_checked() {
    let b = broker();
    assert_eq!(
        rumqttc_connect(b.local_addr(), "free", Some(("any", "thing"))),
        Ok(())
    );
    assert_eq!(rumqttc_connect(b.local_addr(), "free2", None), Ok(()));
}

#[test]
fn each_listener_has_its_own_password_file_acl_and_anonymous_access() {
    let dir = Dir::new("per-listener");
    let pw = dir.write("passwd", &password_file(&[("alice", "a")]));
    let acl = dir.write(
        "acl",
        "topic read public/#\nuser alice\ntopic readwrite #\n",
    );
    let b = broker_with(|c| {
        // The plain listener takes the top-level keys: password file, anonymous off.
        c.password_file = Some(pw.clone());
        // A second, for anonymous readers, with the ACL.
        let mut open = shardmq::config::ListenerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            shardmq::config::Transport::Tcp,
        );
        open.password_file = None;
        open.acl_file = Some(acl.clone());
        open.allow_anonymous = Some(true);
        c.listener.push(open);
    });
    let (secured, open) = (b.local_addrs()[0], b.local_addrs()[1]);
    use rumqttc::ConnectReturnCode::*;
    assert_eq!(rumqttc_connect(secured, "a1", None), Err(NotAuthorized));
    assert_eq!(rumqttc_connect(secured, "a2", Some(("alice", "a"))), Ok(()));
    assert_eq!(rumqttc_connect(open, "a3", None), Ok(()));
    // On the open listener, anonymous clients only read public/#; there is no ACL on
    // the secured one, so alice may do anything there.
    let mut reader = mq(open, &id_on_shard("pl-r", 0), true);
    assert_eq!(reader.subscribe("public/#", 1), Some(1));
    assert_eq!(reader.subscribe("private/#", 1), None);
    let mut alice = user(secured, &id_on_shard("pl-a", 1), "alice", "a", true);
    alice.publish_acked("public/news", 1, false, b"hello");
    assert_eq!(&reader.recv_publish().payload[..], b"hello");
    reader.disconnect();
    alice.disconnect();
    assert_no_leaks(&b);
}

//! Topic filter matching (MQTT 3.1.1 §4.7): `+`, `#`, `$`-topics, through sockets.
//! One subscriber per filter on shard 1, one publisher on shard 0; after publishing
//! every candidate topic the publisher sends a sentinel every subscriber also follows.

mod common;
use common::*;
use std::collections::BTreeSet;

const SENTINEL: &str = "zz-sentinel";

/// For each (filter, topics it must match), checks that exactly those of `topics`
/// are delivered to a subscriber of the filter.
fn check_matching(topics: &[&str], cases: &[(&str, &[&str])]) {
    let b = broker();
    let mut subs = Vec::new();
    for (i, (filter, _)) in cases.iter().enumerate() {
        let mut s = Raw::connect(
            b.local_addr(),
            &id_on_shard(&format!("m{i}"), 1 - i % 2),
            true,
        )
        .0;
        let codes = s.subscribe(1, &[(filter, 1), (SENTINEL, 1)]);
        assert_eq!(codes, vec![1, 1], "SUBACK for filter {filter:?}");
        subs.push(s);
    }
    let mut publ = Raw::connect(b.local_addr(), &id_on_shard("mpub", 0), true).0;
    for t in topics {
        publ.publish(t, t.as_bytes(), 1, false);
    }
    publ.publish(SENTINEL, b"", 1, false);
    let mut failures = Vec::new();
    for ((filter, want), s) in cases.iter().zip(subs.iter_mut()) {
        let got: BTreeSet<String> = s
            .publishes_until(SENTINEL)
            .into_iter()
            .map(|p| p.topic)
            .collect();
        let want: BTreeSet<String> = want.iter().map(|t| t.to_string()).collect();
        if got != want {
            failures.push(format!(
                "filter {filter:?}: delivered {got:?}, expected {want:?}"
            ));
        }
    }
    std::thread::sleep(QUIET);
    for s in subs.iter_mut() {
        if let Some(p) = s.recv_within(std::time::Duration::from_millis(10)) {
            failures.push(format!("late delivery {p:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "topic matching wrong:\n{}",
        failures.join("\n")
    );
    publ.disconnect();
    for s in subs {
        s.disconnect();
    }
    assert_no_leaks(&b);
}

#[test]
fn multi_level_wildcard_matches_parent_and_all_descendants() {
    let topics = [
        "sport",
        "sport/",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
        "sports",
        "other/sport",
    ];
    check_matching(
        &topics,
        &[
            // §4.7.1.2: "sport/tennis/player1/#" matches player1, its ranking, score/wimbledon.
            (
                "sport/tennis/player1/#",
                &[
                    "sport/tennis/player1",
                    "sport/tennis/player1/ranking",
                    "sport/tennis/player1/score/wimbledon",
                ],
            ),
            // "sport/#" also matches the singular "sport".
            (
                "sport/#",
                &[
                    "sport",
                    "sport/",
                    "sport/tennis",
                    "sport/tennis/player1",
                    "sport/tennis/player1/ranking",
                    "sport/tennis/player1/score/wimbledon",
                ],
            ),
            ("#", &topics),
            ("sport", &["sport"]),
        ],
    );
}

#[test]
fn single_level_wildcard_matches_exactly_one_level() {
    let topics = [
        "sport",
        "sport/",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "/finance",
        "finance",
        "a//b",
        "a/x/b",
        "a/x/y/b",
    ];
    check_matching(
        &topics,
        &[
            // §4.7.1.3 examples.
            ("sport/tennis/+", &["sport/tennis/player1"]),
            ("sport/+", &["sport/", "sport/tennis"]),
            ("+", &["sport", "finance"]),
            ("+/+", &["sport/", "sport/tennis", "/finance"]),
            ("/+", &["/finance"]),
            (
                "+/tennis/#",
                &[
                    "sport/tennis",
                    "sport/tennis/player1",
                    "sport/tennis/player1/ranking",
                ],
            ),
            ("a/+/b", &["a//b", "a/x/b"]),
            ("+/+/+", &["sport/tennis/player1", "a//b", "a/x/b"]),
        ],
    );
}

#[test]
fn topic_matching_is_case_sensitive_and_allows_spaces() {
    let topics = [
        "ACCOUNTS",
        "Accounts",
        "accounts",
        "Accounts payable",
        "Accounts payable/x",
    ];
    check_matching(
        &topics,
        &[
            // §4.7.3: topic names are case sensitive; spaces are allowed.
            ("Accounts", &["Accounts"]),
            ("ACCOUNTS", &["ACCOUNTS"]),
            ("Accounts payable", &["Accounts payable"]),
            ("Accounts payable/+", &["Accounts payable/x"]),
        ],
    );
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    // ($SYS itself is the broker's: clients may not publish there, so another
    // $-topic plays its part; tests/observability.rs covers $SYS.)
    let topics = ["$SYSX/x", "$SYSX/monitor/Clients", "$other/x", "plain/x"];
    check_matching(
        &topics,
        &[
            // [MQTT-4.7.2-1] filters starting with a wildcard do not match $-topics.
            ("#", &["plain/x"]),
            ("+/x", &["plain/x"]),
            ("+/monitor/Clients", &[]),
            ("$SYSX/#", &["$SYSX/x", "$SYSX/monitor/Clients"]),
            ("$SYSX/monitor/+", &["$SYSX/monitor/Clients"]),
            ("$other/+", &["$other/x"]),
        ],
    );
}

#[test]
fn utf8_multibyte_topics_match() {
    let topics = [
        "température/salle",
        "température/cuisine",
        "温度/房间",
        "temperature/salle",
    ];
    check_matching(
        &topics,
        &[
            (
                "température/+",
                &["température/salle", "température/cuisine"],
            ),
            ("温度/#", &["温度/房间"]),
            ("+/salle", &["température/salle", "temperature/salle"]),
        ],
    );
}

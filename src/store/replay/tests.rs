use super::*;
use crate::store::records::{encode, Position, SnapshotBody};
use crate::store::replay::session_lives;

/// Writes records into a replay as shard logs would, numbering each shard's records.
struct Logs {
    replay: Replay,
    next: HashMap<u16, u64>,
}

impl Logs {
    fn new() -> Self {
        Logs {
            replay: Replay::new(),
            next: HashMap::new(),
        }
    }

    fn put(&mut self, shard: u16, r: Record<'_>) -> Stamp {
        let mut body = Vec::new();
        let kind = encode(&r, &mut body);
        let n = self.next.entry(shard).or_insert(0);
        let record = *n;
        *n += 1;
        self.replay.record(shard, record, kind, &body);
        Stamp {
            origin: shard,
            record,
        }
    }

    fn msg(&mut self, shard: u16, topic: &str, qos: u8, time_us: u64) -> Stamp {
        self.put(
            shard,
            Record::Msg(MsgBody {
                time_us,
                qos,
                retain: false,
                publisher: None,
                topic,
                payload: topic.as_bytes(),
                expires_us: None,
                forward: b"",
                sender: None,
            }),
        )
    }

    fn session(&mut self, shard: u16, client: &str, filter: &str, qos: u8) {
        self.put(
            shard,
            Record::Session {
                client,
                expiry: None,
            },
        );
        let horizons = self.next.iter().map(|(&s, &n)| (s, n)).collect();
        self.put(
            shard,
            Record::Sub {
                client,
                filter,
                qos,
                opts: Default::default(),
                horizons,
            },
        );
    }

    fn horizons(&self) -> Vec<(u16, u64)> {
        self.next.iter().map(|(&s, &n)| (s, n)).collect()
    }
}

fn topics(msgs: &[RestoredMsg]) -> Vec<&str> {
    msgs.iter().map(|m| &*m.msg.topic).collect()
}

#[test]
fn a_session_gets_what_matched_after_it_subscribed_in_acceptance_order() {
    let mut l = Logs::new();
    l.msg(0, "a/early", 1, 1);
    l.session(1, "dev", "a/#", 2);
    l.msg(1, "a/two", 2, 30);
    l.msg(0, "a/one", 1, 20);
    l.msg(0, "b/other", 1, 25);
    l.msg(0, "a/zero", 0, 26);
    let r = l.replay.finish();
    assert_eq!(r.sessions.len(), 1);
    let s = &r.sessions[0];
    assert_eq!(s.client_id, "dev");
    assert_eq!(s.subs, vec![("a/#".to_owned(), QoS::ExactlyOnce)]);
    assert_eq!(topics(&s.queued), ["a/one", "a/two"]);
    assert_eq!(s.queued[1].qos, QoS::ExactlyOnce);
    assert!(s.inflight.is_empty());
}

#[test]
fn the_granted_qos_caps_and_overlapping_filters_give_one_copy_at_the_highest() {
    let mut l = Logs::new();
    l.session(0, "dev", "a/+", 0);
    l.put(
        0,
        Record::Sub {
            client: "dev",
            filter: "a/#",
            qos: 1,
            opts: Default::default(),
            horizons: vec![],
        },
    );
    l.msg(0, "a/x", 2, 5);
    let r = l.replay.finish();
    assert_eq!(r.sessions[0].queued.len(), 1);
    assert_eq!(r.sessions[0].queued[0].qos, QoS::AtLeastOnce);
}

#[test]
fn checkpoints_move_positions_and_caught_up_sessions_follow_the_horizons() {
    let mut l = Logs::new();
    l.session(0, "slow", "t", 1);
    l.session(0, "fast", "t", 1);
    let first = l.msg(1, "t", 1, 1);
    l.msg(1, "t", 1, 2);
    // "slow" still needs the first; "fast" has everything so far.
    let horizons = l.horizons();
    l.put(
        0,
        Record::Checkpoint {
            horizons,
            sessions: vec![
                Position {
                    client: "slow",
                    lagging: Some(vec![(1, first.record)]),
                    first_pid: 0,
                },
                Position {
                    client: "fast",
                    lagging: None,
                    first_pid: 0,
                },
            ],
        },
    );
    l.msg(1, "t", 1, 3);
    let r = l.replay.finish();
    let by = |c: &str| r.sessions.iter().find(|s| s.client_id == c).unwrap();
    assert_eq!(by("slow").queued.len(), 3);
    assert_eq!(by("fast").queued.len(), 1);
    assert_eq!(by("fast").queued[0].stamp.record, 2);
}

#[test]
fn an_unsubscribed_filter_and_an_ended_session_match_nothing() {
    let mut l = Logs::new();
    l.session(0, "a", "t", 1);
    l.session(0, "b", "t", 1);
    l.put(
        0,
        Record::Unsub {
            client: "a",
            filter: "t",
        },
    );
    l.put(0, Record::End { client: "b" });
    l.msg(1, "t", 1, 1);
    let r = l.replay.finish();
    assert_eq!(r.sessions.len(), 1);
    assert!(r.sessions[0].queued.is_empty());
    assert!(r.sessions[0].subs.is_empty());
}

#[test]
fn qos2_flows_come_back_with_their_packet_ids_and_never_after_pubrec() {
    let mut l = Logs::new();
    l.session(0, "dev", "t", 2);
    let sent = l.msg(1, "t", 2, 1);
    let recd = l.msg(1, "t", 2, 2);
    let done = l.msg(1, "t", 2, 3);
    l.msg(1, "t", 2, 4);
    for (stamp, pid, stage) in [(sent, 7, 0), (recd, 8, 0), (recd, 8, 1), (done, 9, 2)] {
        l.put(
            0,
            Record::Out2 {
                client: "dev",
                stamp,
                pid,
                stage,
            },
        );
    }
    let r = l.replay.finish();
    let s = &r.sessions[0];
    assert_eq!(s.inflight.len(), 1);
    assert_eq!(s.inflight[0].0, 7);
    assert_eq!(s.inflight[0].1.stamp, sent);
    assert_eq!(s.released, vec![8]);
    assert_eq!(s.queued.len(), 1);
    assert_eq!(s.queued[0].stamp.record, 3);
}

#[test]
fn inbound_qos2_state_survives_until_pubrel() {
    let mut l = Logs::new();
    l.put(
        0,
        Record::Session {
            client: "p",
            expiry: None,
        },
    );
    for pid in [1, 2] {
        l.put(
            0,
            Record::Msg(MsgBody {
                time_us: 1,
                qos: 2,
                retain: false,
                publisher: Some(("p", pid)),
                topic: "x",
                payload: b"",
                expires_us: None,
                forward: b"",
                sender: None,
            }),
        );
    }
    l.put(
        0,
        Record::Rel {
            client: "p",
            pid: 1,
        },
    );
    let r = l.replay.finish();
    assert_eq!(r.sessions[0].awaiting_pubrel, vec![2]);
}

#[test]
fn retained_keeps_the_newest_per_topic_and_deletions() {
    let mut l = Logs::new();
    let put = |l: &mut Logs, shard, topic, payload: &'static [u8], t| {
        l.put(
            shard,
            Record::Msg(MsgBody {
                time_us: t,
                qos: 1,
                retain: true,
                publisher: None,
                topic,
                payload,
                expires_us: None,
                forward: b"",
                sender: None,
            }),
        )
    };
    put(&mut l, 0, "a", b"old", 1);
    put(&mut l, 1, "a", b"new", 2);
    put(&mut l, 0, "b", b"kept", 1);
    put(&mut l, 1, "c", b"x", 1);
    put(&mut l, 0, "c", b"", 3);
    let r = l.replay.finish();
    let got: Vec<(&str, &[u8])> = r
        .retained
        .iter()
        .map(|(_, m)| (&*m.topic, &m.payload[..]))
        .collect();
    assert_eq!(got.len(), 2);
    assert!(got.contains(&("a", b"new".as_slice())));
    assert!(got.contains(&("b", b"kept".as_slice())));
}

#[test]
fn a_snapshot_restates_a_session_and_later_positions_apply_to_what_it_named() {
    let mut l = Logs::new();
    let m1 = l.put(
        0,
        Record::SnapMsg(MsgBody {
            time_us: 1,
            qos: 1,
            retain: false,
            publisher: None,
            topic: "t",
            payload: b"1",
            expires_us: None,
            forward: b"",
            sender: None,
        }),
    );
    let m2 = l.put(
        0,
        Record::SnapMsg(MsgBody {
            time_us: 2,
            qos: 1,
            retain: false,
            publisher: None,
            topic: "t",
            payload: b"2",
            expires_us: None,
            forward: b"",
            sender: None,
        }),
    );
    let horizons = l.horizons();
    l.put(
        0,
        Record::Snapshot(SnapshotBody {
            client: "dev",
            horizons: horizons.clone(),
            subs: vec![("t", 1, Default::default())],
            awaiting_pubrel: vec![4],
            released: vec![5],
            held: vec![
                Held {
                    stamp: m1,
                    qos: 1,
                    pid: 3,
                    retain: false,
                },
                Held {
                    stamp: m2,
                    qos: 1,
                    pid: 0,
                    retain: false,
                },
            ],
            groups: vec![],
            expiry: None,
        }),
    );
    let live = l.msg(1, "t", 1, 3);
    let r = l.replay.finish();
    let s = &r.sessions[0];
    assert_eq!(s.inflight.len(), 1);
    assert_eq!(s.inflight[0].0, 3);
    assert_eq!(
        s.queued.iter().map(|m| m.stamp).collect::<Vec<_>>(),
        [m2, live]
    );
    assert_eq!(s.awaiting_pubrel, vec![4]);
    assert_eq!(s.released, vec![5]);
}

#[test]
fn records_that_do_not_parse_are_counted_and_skipped() {
    let mut r = Replay::new();
    r.record(0, 0, 99, b"??");
    r.record(0, 1, crate::store::records::kind::MSG, b"\x01");
    assert_eq!(r.finish().bad_records, 2);
}

#[test]
fn only_a_session_restated_last_by_its_snapshot_is_known_not_to_have_sent_its_queue() {
    let snapshot = |l: &mut Logs| {
        let m = l.put(
            0,
            Record::SnapMsg(MsgBody {
                time_us: 1,
                qos: 1,
                retain: false,
                publisher: None,
                topic: "t",
                payload: b"1",
                expires_us: None,
                forward: b"",
                sender: None,
            }),
        );
        let horizons = l.horizons();
        l.put(
            0,
            Record::Snapshot(SnapshotBody {
                client: "dev",
                horizons,
                subs: vec![("t", 1, Default::default())],
                awaiting_pubrel: vec![],
                released: vec![],
                held: vec![Held {
                    stamp: m,
                    qos: 1,
                    pid: 0,
                    retain: false,
                }],
                groups: vec![],
                expiry: None,
            }),
        );
    };
    // A graceful shutdown: the snapshot is the session's last word.
    let mut l = Logs::new();
    snapshot(&mut l);
    let r = l.replay.finish();
    assert_eq!(r.sessions[0].queued.len(), 1);
    assert!(!r.sessions[0].maybe_sent);
    // A crash after the session went on: its queue may have gone out.
    let mut l = Logs::new();
    snapshot(&mut l);
    l.put(
        0,
        Record::Checkpoint {
            horizons: vec![],
            sessions: vec![Position {
                client: "dev",
                lagging: Some(vec![(0, 0)]),
                first_pid: 0,
            }],
        },
    );
    let r = l.replay.finish();
    assert_eq!(r.sessions[0].queued.len(), 1);
    assert!(r.sessions[0].maybe_sent);
}

#[test]
fn a_completed_flow_frees_its_packet_id_even_without_a_stamp() {
    let mut l = Logs::new();
    let horizons = l.horizons();
    l.put(
        0,
        Record::Snapshot(SnapshotBody {
            client: "dev",
            horizons,
            subs: vec![("t", 2, Default::default())],
            awaiting_pubrel: vec![],
            released: vec![5],
            held: vec![],
            groups: vec![],
            expiry: None,
        }),
    );
    // PUBCOMP for 5 (its stamp lost in a compaction), then 5 reused.
    l.put(
        0,
        Record::Out2 {
            client: "dev",
            stamp: Stamp {
                origin: u16::MAX,
                record: u64::MAX,
            },
            pid: 5,
            stage: 2,
        },
    );
    let m = l.msg(1, "t", 2, 10);
    l.put(
        0,
        Record::Out2 {
            client: "dev",
            stamp: m,
            pid: 5,
            stage: 0,
        },
    );
    let r = l.replay.finish();
    let s = &r.sessions[0];
    assert!(s.released.is_empty());
    assert_eq!(s.inflight.len(), 1);
    assert_eq!((s.inflight[0].0, s.inflight[0].1.stamp), (5, m));
    assert!(s.queued.is_empty());
}

#[test]
fn shared_filters_are_not_rematched_only_assigned_messages_come_back() {
    let mut l = Logs::new();
    l.session(0, "a", "$share/g/t/#", 1);
    l.session(1, "b", "$share/g/t/#", 1);
    let m1 = l.msg(0, "t/1", 1, 1);
    let m2 = l.msg(0, "t/2", 1, 2);
    let m3 = l.msg(1, "t/3", 1, 3);
    for (shard, client, stamp) in [(0, "a", m1), (1, "b", m2), (0, "a", m3)] {
        l.put(
            shard,
            Record::Assign {
                client,
                group: "$share/g/t/#",
                stamp,
                qos: 1,
            },
        );
    }
    let r = l.replay.finish();
    let by = |c: &str| r.sessions.iter().find(|s| s.client_id == c).unwrap();
    assert_eq!(topics(&by("a").queued), vec!["t/1", "t/3"]);
    assert_eq!(topics(&by("b").queued), vec!["t/2"]);
    assert_eq!(
        by("a").subs,
        vec![("$share/g/t/#".to_string(), QoS::AtLeastOnce)]
    );
}

#[test]
fn a_shared_message_given_back_or_acknowledged_before_a_checkpoint_stays_away() {
    let mut l = Logs::new();
    l.session(0, "a", "$share/g/t", 2);
    l.session(0, "b", "t", 1);
    let given_back = l.msg(1, "t", 2, 1);
    let acked = l.msg(1, "t", 1, 2);
    let pending = l.msg(1, "t", 1, 3);
    for stamp in [given_back, acked, pending] {
        l.put(
            0,
            Record::Assign {
                client: "a",
                group: "$share/g/t",
                stamp,
                qos: 2,
            },
        );
    }
    l.put(
        0,
        Record::Unassign {
            client: "a",
            stamp: given_back,
        },
    );
    // Given back, it went to a clean member (recorded on its shard).
    l.put(
        1,
        Record::Assign {
            client: "clean",
            group: "$share/g/t",
            stamp: given_back,
            qos: 2,
        },
    );
    // "a" still holds `pending` at the checkpoint; "b" (not shared) is caught up.
    let horizons = l.horizons();
    l.put(
        0,
        Record::Checkpoint {
            horizons,
            sessions: vec![Position {
                client: "a",
                lagging: Some(vec![(1, pending.record)]),
                first_pid: 0,
            }],
        },
    );
    // Assigned after the checkpoint, older than the position: still comes back.
    l.put(
        0,
        Record::Assign {
            client: "a",
            group: "$share/g/t",
            stamp: acked,
            qos: 1,
        },
    );
    let r = l.replay.finish();
    let a = r.sessions.iter().find(|s| s.client_id == "a").unwrap();
    let stamps: Vec<(Stamp, QoS)> = a.queued.iter().map(|m| (m.stamp, m.qos)).collect();
    assert_eq!(
        stamps,
        vec![(acked, QoS::AtLeastOnce), (pending, QoS::AtLeastOnce)]
    );
}

#[test]
fn a_snapshot_replaces_earlier_assignments() {
    let mut l = Logs::new();
    l.session(0, "a", "$share/g/t", 1);
    let m = l.msg(0, "t", 1, 1);
    l.put(
        0,
        Record::Assign {
            client: "a",
            group: "$share/g/t",
            stamp: m,
            qos: 1,
        },
    );
    let horizons = l.horizons();
    l.put(
        0,
        Record::Snapshot(SnapshotBody {
            client: "a",
            horizons,
            subs: vec![("$share/g/t", 1, Default::default())],
            awaiting_pubrel: vec![],
            released: vec![],
            held: vec![crate::store::records::Held {
                stamp: m,
                qos: 1,
                pid: 0,
                retain: false,
            }],
            groups: vec![],
            expiry: None,
        }),
    );
    let r = l.replay.finish();
    assert_eq!(r.sessions[0].queued.len(), 1, "named once, not twice");
}

#[test]
fn a_shared_message_no_member_was_recorded_to_get_goes_to_one_persistent_member() {
    let mut l = Logs::new();
    l.session(0, "a", "$share/g/t/+", 1);
    l.session(1, "b", "$share/g/t/+", 2);
    let given = l.msg(0, "t/given", 1, 1);
    // Given to a clean member: recorded, though no session is restored for it.
    l.put(
        1,
        Record::Assign {
            client: "clean",
            group: "$share/g/t/+",
            stamp: given,
            qos: 1,
        },
    );
    let lost: Vec<Stamp> = (0..4).map(|i| l.msg(1, "t/transit", 2, 10 + i)).collect();
    l.msg(1, "t/qos0", 0, 20);
    let r = l.replay.finish();
    let mut all: Vec<Stamp> = Vec::new();
    let mut per = Vec::new();
    for s in &r.sessions {
        per.push(s.queued.len());
        all.extend(s.queued.iter().map(|m| m.stamp));
        assert!(s.queued.iter().all(|m| &*m.msg.topic == "t/transit"));
    }
    all.sort();
    assert_eq!(all, lost, "each once, to one member");
    assert_eq!(per, vec![2, 2], "spread over the members");
}

#[test]
fn a_message_before_a_snapshot_is_no_orphan_of_the_groups_it_restates() {
    let mut l = Logs::new();
    // Published while the group had no member at all: nobody was given it.
    l.msg(0, "t", 1, 1);
    let horizons = l.horizons();
    l.put(
        0,
        Record::Snapshot(SnapshotBody {
            client: "a",
            horizons,
            subs: vec![("$share/g/t", 1, Default::default())],
            awaiting_pubrel: vec![],
            released: vec![],
            held: vec![],
            groups: vec![],
            expiry: None,
        }),
    );
    let after = l.msg(0, "t", 1, 2);
    let r = l.replay.finish();
    let got: Vec<Stamp> = r.sessions[0].queued.iter().map(|m| m.stamp).collect();
    assert_eq!(
        got,
        vec![after],
        "only what came after the snapshot, unrecorded"
    );
}

#[test]
fn a_shared_message_a_snapshot_named_and_given_back_since_stays_away() {
    let mut l = Logs::new();
    l.session(0, "a", "$share/g/t", 2);
    l.session(1, "b", "$share/g/t", 2);
    let older = l.msg(0, "t", 2, 1);
    let m = l.msg(0, "t", 2, 2);
    for stamp in [older, m] {
        l.put(
            0,
            Record::Assign {
                client: "a",
                group: "$share/g/t",
                stamp,
                qos: 2,
            },
        );
    }
    // "a" held both at its snapshot: `older` in flight, `m` queued.
    let horizons = l.horizons();
    l.put(
        0,
        Record::Snapshot(SnapshotBody {
            client: "a",
            horizons,
            subs: vec![("$share/g/t", 2, Default::default())],
            awaiting_pubrel: vec![],
            released: vec![],
            held: vec![
                crate::store::records::Held {
                    stamp: older,
                    qos: 2,
                    pid: 1,
                    retain: false,
                },
                crate::store::records::Held {
                    stamp: m,
                    qos: 2,
                    pid: 0,
                    retain: false,
                },
            ],
            groups: vec![(0, "$share/g/t"), (1, "$share/g/t")],
            expiry: None,
        }),
    );
    // It left: `m` (queued) went to "b", `older` (sent) stays with it.
    l.put(
        0,
        Record::Unassign {
            client: "a",
            stamp: m,
        },
    );
    l.put(
        1,
        Record::Assign {
            client: "b",
            group: "$share/g/t",
            stamp: m,
            qos: 2,
        },
    );
    let r = l.replay.finish();
    let by = |c: &str| r.sessions.iter().find(|s| s.client_id == c).unwrap();
    let stamps = |c: &str| -> Vec<Stamp> {
        let s = by(c);
        s.inflight
            .iter()
            .map(|(_, m)| m.stamp)
            .chain(s.queued.iter().map(|m| m.stamp))
            .collect()
    };
    assert_eq!(stamps("a"), vec![older], "given back: not a's any more");
    assert_eq!(stamps("b"), vec![m]);
}

#[test]
fn a_shared_message_given_back_whose_new_assign_was_lost_goes_to_a_member() {
    let mut l = Logs::new();
    l.session(0, "a", "$share/g/t", 1);
    l.session(1, "b", "$share/g/t", 1);
    let m = l.msg(0, "t", 1, 1);
    l.put(
        0,
        Record::Assign {
            client: "a",
            group: "$share/g/t",
            stamp: m,
            qos: 1,
        },
    );
    // "a" left and gave it back; the crash came before shard 1 wrote b's ASSIGN.
    l.put(
        0,
        Record::Unassign {
            client: "a",
            stamp: m,
        },
    );
    let r = l.replay.finish();
    let all: Vec<Stamp> = r
        .sessions
        .iter()
        .flat_map(|s| s.queued.iter().map(|m| m.stamp))
        .collect();
    assert_eq!(
        all,
        vec![m],
        "acknowledged to its publisher: one member gets it"
    );
}

#[test]
fn a_message_a_snapshot_named_given_back_whose_new_assign_was_lost_goes_to_a_member() {
    let mut l = Logs::new();
    // A new generation (compaction, restart): `m` restated as held, the snapshots
    // restate "a" with `m` queued, "b" with nothing; no ASSIGN of `m` in it.
    let m = l.put(
        0,
        Record::SnapMsg(MsgBody {
            time_us: 1,
            qos: 2,
            retain: false,
            publisher: None,
            topic: "t",
            payload: b"t",
            expires_us: None,
            forward: b"",
            sender: None,
        }),
    );
    let horizons = l.horizons();
    for (client, held) in [("a", vec![m]), ("b", vec![])] {
        let n = held.len() as u32;
        l.put(
            0,
            Record::Snapshot(SnapshotBody {
                client,
                horizons: horizons.clone(),
                subs: vec![("$share/g/t", 2, Default::default())],
                awaiting_pubrel: vec![],
                released: vec![],
                held: held
                    .into_iter()
                    .map(|stamp| crate::store::records::Held {
                        stamp,
                        qos: 2,
                        pid: 0,
                        retain: false,
                    })
                    .collect(),
                groups: (0..n).map(|i| (i, "$share/g/t")).collect(),
                expiry: None,
            }),
        );
    }
    l.put(
        0,
        Record::Unassign {
            client: "a",
            stamp: m,
        },
    );
    let r = l.replay.finish();
    let all: Vec<(String, Stamp)> = r
        .sessions
        .iter()
        .flat_map(|s| s.queued.iter().map(|q| (s.client_id.clone(), q.stamp)))
        .collect();
    assert_eq!(all.len(), 1, "once, to one member: {all:?}");
    assert_eq!(all[0].1, m);
}

#[test]
fn a_qos2_shared_message_sent_to_the_next_member_stays_there_when_the_unassign_was_lost() {
    let mut l = Logs::new();
    l.session(0, "a", "$share/g/t", 2);
    l.session(1, "b", "$share/g/t", 2);
    let m = l.msg(0, "t", 2, 1);
    l.put(
        0,
        Record::Assign {
            client: "a",
            group: "$share/g/t",
            stamp: m,
            qos: 2,
        },
    );
    // "a" left with `m` queued and gave it back; its UNASSIGN was not durable at the
    // crash, b's ASSIGN and PUBLISH stage were.
    l.put(
        1,
        Record::Assign {
            client: "b",
            group: "$share/g/t",
            stamp: m,
            qos: 2,
        },
    );
    l.put(
        1,
        Record::Out2 {
            client: "b",
            stamp: m,
            pid: 1,
            stage: 0,
        },
    );
    let r = l.replay.finish();
    let by = |c: &str| r.sessions.iter().find(|s| s.client_id == c).unwrap();
    assert!(
        by("a").queued.is_empty() && by("a").inflight.is_empty(),
        "{:?}",
        by("a")
    );
    assert_eq!(by("b").inflight.len(), 1, "{:?}", by("b"));
}

// ---------------------------------------------------------------------------------
// MQTT 5.0: subscription options, message properties, session expiry
// ---------------------------------------------------------------------------------

fn msg5<'a>(topic: &'a str, time_us: u64, retain: bool, sender: Option<&'a str>) -> MsgBody<'a> {
    MsgBody {
        time_us,
        qos: 1,
        retain,
        publisher: None,
        topic,
        payload: topic.as_bytes(),
        expires_us: None,
        forward: b"",
        sender,
    }
}

fn sub5(client: &str, filter: &str, opts: SubOpts, l: &mut Logs) {
    let horizons = l.horizons();
    l.put(
        0,
        Record::Sub {
            client,
            filter,
            qos: 1,
            opts,
            horizons,
        },
    );
}

#[test]
fn no_local_keeps_a_sessions_own_messages_from_coming_back_on_recovery() {
    let mut l = Logs::new();
    l.put(
        0,
        Record::Session {
            client: "me",
            expiry: Some(300),
        },
    );
    let no_local = SubOpts {
        no_local: true,
        ..SubOpts::default()
    };
    sub5("me", "a/#", no_local, &mut l);
    sub5("me", "b/#", SubOpts::default(), &mut l);
    l.put(1, Record::Msg(msg5("a/own", 1, false, Some("me"))));
    l.put(1, Record::Msg(msg5("a/other", 2, false, Some("you"))));
    l.put(1, Record::Msg(msg5("a/unknown", 3, false, None)));
    // Its own, but through a subscription without No Local as well.
    l.put(1, Record::Msg(msg5("b/own", 4, false, Some("me"))));
    let r = l.replay.finish();
    let s = &r.sessions[0];
    assert_eq!(topics(&s.queued), ["a/other", "a/unknown", "b/own"]);
    assert_eq!(s.sub_opts, [("a/#".to_owned(), no_local)]);
}

#[test]
fn retain_as_published_keeps_the_retain_flag_of_rematched_messages() {
    let mut l = Logs::new();
    l.put(
        0,
        Record::Session {
            client: "c",
            expiry: None,
        },
    );
    let rap = SubOpts {
        retain_as_published: true,
        id: 9,
        ..SubOpts::default()
    };
    sub5("c", "rap/#", rap, &mut l);
    sub5("c", "plain/#", SubOpts::default(), &mut l);
    l.put(1, Record::Msg(msg5("rap/r", 1, true, None)));
    l.put(1, Record::Msg(msg5("rap/n", 2, false, None)));
    l.put(1, Record::Msg(msg5("plain/r", 3, true, None)));
    let r = l.replay.finish();
    let s = &r.sessions[0];
    let flags: Vec<(&str, bool)> = s.queued.iter().map(|m| (&*m.msg.topic, m.retain)).collect();
    assert_eq!(
        flags,
        [("rap/r", true), ("rap/n", false), ("plain/r", false)]
    );
    assert_eq!(s.sub_opts, [("rap/#".to_owned(), rap)]);
}

#[test]
fn message_properties_come_back_with_the_message() {
    let mut l = Logs::new();
    l.session(0, "c", "p/#", 1);
    let body = MsgBody {
        expires_us: Some(5_000_000),
        forward: b"\x03\x00\x01x",
        ..msg5("p/a", 1, false, Some("pub"))
    };
    l.put(1, Record::Msg(body));
    l.msg(1, "p/plain", 1, 2);
    let r = l.replay.finish();
    let q = &r.sessions[0].queued;
    let p = q[0].msg.props.as_deref().expect("properties");
    assert_eq!(p.expires_us, Some(5_000_000));
    assert_eq!(&p.forward[..], b"\x03\x00\x01x");
    assert_eq!(p.sender.as_deref(), Some("pub"));
    assert_eq!(q[1].msg.props, None, "3.1.1 messages carry nothing");
}

#[test]
fn a_5_0_sessions_expiry_counts_from_when_it_went_offline() {
    const S: u64 = 1_000_000;
    let t0 = 1_700_000_000 * S;
    let mut l = Logs::new();
    for (client, interval) in [("short", 2), ("long", 300), ("never", u32::MAX)] {
        l.put(
            0,
            Record::Session {
                client,
                expiry: Some(interval),
            },
        );
        l.put(
            0,
            Record::Expiry {
                client,
                expiry: Some(Expiry {
                    interval,
                    offline_us: t0,
                }),
            },
        );
    }
    // Connected when the log ended: counts from the restart.
    l.put(
        1,
        Record::Session {
            client: "online",
            expiry: Some(2),
        },
    );
    // Resumed with an interval of 0: it ended with its connection.
    l.put(
        1,
        Record::Session {
            client: "zero",
            expiry: Some(60),
        },
    );
    l.put(
        1,
        Record::Expiry {
            client: "zero",
            expiry: Some(Expiry {
                interval: 0,
                offline_us: 0,
            }),
        },
    );
    // A 3.1.1 client took it over: no interval of its own.
    l.put(
        1,
        Record::Session {
            client: "v311",
            expiry: Some(2),
        },
    );
    l.put(
        1,
        Record::Expiry {
            client: "v311",
            expiry: None,
        },
    );
    let mut r = l.replay.finish();
    let names =
        |r: &Restored| -> Vec<String> { r.sessions.iter().map(|s| s.client_id.clone()).collect() };
    assert_eq!(r.sessions.len(), 6);
    let by = |r: &Restored, c: &str| r.sessions.iter().find(|s| s.client_id == c).unwrap().expiry;
    assert_eq!(
        by(&r, "long"),
        Some(Expiry {
            interval: 300,
            offline_us: t0
        })
    );
    assert_eq!(r.expire_sessions(t0 + S), 1, "{:?}", names(&r));
    assert!(!names(&r).contains(&"zero".to_owned()));
    assert_eq!(r.expire_sessions(t0 + 3 * S), 1);
    assert_eq!(names(&r), ["long", "never", "online", "v311"]);
    assert_eq!(r.expire_sessions(t0 + 301 * S), 1);
    assert_eq!(names(&r), ["never", "online", "v311"]);
    // What is left of an interval, rounded up.
    let e = Expiry {
        interval: 300,
        offline_us: t0,
    };
    assert_eq!(session_lives(e, t0 + 100 * S + 1), Some(200));
    assert_eq!(session_lives(e, t0 + 300 * S), None);
    assert_eq!(session_lives(e, t0 - S), Some(300), "a clock gone back");
}

#[test]
fn a_snapshot_restates_a_sessions_expiry_and_subscription_options() {
    let mut l = Logs::new();
    let opts = SubOpts {
        no_local: true,
        retain_as_published: true,
        id: 42,
    };
    let expiry = Some(Expiry {
        interval: 60,
        offline_us: 7,
    });
    l.put(
        0,
        Record::Snapshot(SnapshotBody {
            client: "c",
            horizons: vec![],
            subs: vec![("t/#", 1, opts), ("u", 2, SubOpts::default())],
            awaiting_pubrel: vec![],
            released: vec![],
            held: vec![],
            groups: vec![],
            expiry,
        }),
    );
    let r = l.replay.finish();
    assert_eq!(r.sessions[0].expiry, expiry);
    assert_eq!(r.sessions[0].sub_opts, [("t/#".to_owned(), opts)]);
}

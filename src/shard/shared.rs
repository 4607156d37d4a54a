//! Shared-subscription groups (`$share/{group}/{filter}`, design §13), as one shard
//! knows them.
//!
//! A group is named by its whole subscribed string: members anywhere who subscribed
//! with the same string are one group. Every shard keeps every group that has
//! members on any shard, with the shards that hold members (the replica, kept like
//! the `interest` one: a shard's first member of a group is announced with
//! `InterestAdd` and confirmed before SUBACK, its last one leaving with
//! `InterestRemove`), and, for the groups it has members of, those members.
//!
//! A message matching a group's filter goes to one member: the publishing shard
//! picks one shard holding members ([`Shared::pick_shard`]), that shard one of its
//! connected members ([`Shared::pick_member`]). A shard with no connected member
//! hands the message on to the next shard of the group, and the last one asked
//! queues it in an offline persistent member. Group ids are local to the shard and
//! never reused, so a session can tag what it was given with one (see
//! `Session::deliver_tagged`) and the tag never names another group.
//!
//! The hot path pays one check: [`Shared::is_empty`].

use ahash::AHashMap;
use bytestring::ByteString;
use smallvec::SmallVec;

use super::mesh::SharedFor;
use super::{count_delivery, write_out, MeshMsg, Shard};
use crate::config::SharedStrategy;
use crate::message::Message;
use crate::protocol::QoS;
use crate::store::records::Record;
use crate::topic::{share, TopicTrie};

/// One group, as this shard knows it.
#[derive(Debug)]
pub(super) struct Group {
    /// The subscribed string, `$share/{group}/{filter}`.
    pub name: ByteString,
    /// Shards holding members (this one included while it has any), ascending.
    pub shards: SmallVec<[u16; 4]>,
    /// This shard's members: session key and granted QoS, in joining order.
    pub members: Vec<(u32, QoS)>,
    /// Round-robin cursors over `shards` and over `members`.
    next_shard: usize,
    next_member: usize,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Filter part → ids of the groups with that filter.
    trie: TopicTrie<u32, ()>,
    groups: AHashMap<u32, Group>,
    by_name: AHashMap<ByteString, u32>,
    next_id: u32,
}

impl Shared {
    /// No group has members anywhere: the publish path skips shared routing.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Number of groups known (members anywhere).
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn get(&self, id: u32) -> Option<&Group> {
        self.groups.get(&id)
    }

    pub fn id_of(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Calls `f` with the id of every group whose filter matches `topic`.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(u32)) {
        self.trie.for_each_match(topic, |&id, _| f(id));
    }

    /// The id of group `name`, created (with no shard and no member) if unknown:
    /// the caller makes a member of it at once.
    pub fn ensure(&mut self, name: &ByteString) -> u32 {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let id = self.next_id;
        self.trie.insert(share::filter_part(name), id, ());
        self.by_name.insert(name.clone(), id);
        self.groups.insert(
            id,
            Group {
                name: name.clone(),
                shards: SmallVec::new(),
                members: Vec::new(),
                next_shard: 0,
                next_member: 0,
            },
        );
        id
    }

    fn drop_if_unused(&mut self, id: u32) {
        let Some(g) = self.groups.get(&id) else {
            return;
        };
        if g.shards.is_empty() && g.members.is_empty() {
            let name = g.name.clone();
            self.trie.remove(share::filter_part(&name), &id);
            self.by_name.remove(&name);
            self.groups.remove(&id);
        }
    }

    /// Session `key` of shard `me` joins group `name` (or changes its QoS). Returns
    /// the group's id and whether it is the shard's first member (to announce).
    pub fn add_member(&mut self, me: u16, name: &ByteString, key: u32, qos: QoS) -> (u32, bool) {
        let id = self.ensure(name);
        let Some(g) = self.groups.get_mut(&id) else {
            return (id, false);
        };
        if let Some(m) = g.members.iter_mut().find(|m| m.0 == key) {
            m.1 = qos;
            return (id, false);
        }
        g.members.push((key, qos));
        let first = g.members.len() == 1;
        if first {
            insert_sorted(&mut g.shards, me);
        }
        (id, first)
    }

    /// Session `key` of shard `me` leaves group `name`. Returns whether it was the
    /// shard's last member (to withdraw).
    pub fn remove_member(&mut self, me: u16, name: &str, key: u32) -> bool {
        let Some(id) = self.id_of(name) else {
            return false;
        };
        let Some(g) = self.groups.get_mut(&id) else {
            return false;
        };
        let before = g.members.len();
        g.members.retain(|m| m.0 != key);
        let last = before > 0 && g.members.is_empty();
        if last {
            g.shards.retain(|s| *s != me);
        }
        self.drop_if_unused(id);
        last
    }

    /// Shard `shard` has members of group `name` (an `InterestAdd`).
    pub fn add_shard(&mut self, name: &ByteString, shard: u16) {
        let id = self.ensure(name);
        if let Some(g) = self.groups.get_mut(&id) {
            insert_sorted(&mut g.shards, shard);
        }
    }

    /// Shard `shard` has no members of group `name` any more.
    pub fn remove_shard(&mut self, name: &str, shard: u16) {
        let Some(id) = self.id_of(name) else {
            return;
        };
        if let Some(g) = self.groups.get_mut(&id) {
            g.shards.retain(|s| *s != shard);
        }
        self.drop_if_unused(id);
    }

    /// The shard a message for group `id` goes to: in turn, or by the publisher's
    /// hash. `None` when no shard holds members.
    pub fn pick_shard(&mut self, id: u32, strategy: SharedStrategy, hash: u64) -> Option<u16> {
        let g = self.groups.get_mut(&id)?;
        let i = pick(&mut g.next_shard, g.shards.len(), strategy, hash)?;
        g.shards.get(i).copied()
    }

    /// One of this shard's members of group `id` that `eligible` accepts: in turn,
    /// or by the publisher's hash (the part of it the shard pick did not use).
    pub fn pick_member(
        &mut self,
        id: u32,
        strategy: SharedStrategy,
        hash: u64,
        mut eligible: impl FnMut(u32) -> bool,
    ) -> Option<(u32, QoS)> {
        let g = self.groups.get_mut(&id)?;
        let n = g.members.len();
        if n == 0 {
            return None;
        }
        let hash = hash / g.shards.len().max(1) as u64;
        let start = pick(&mut g.next_member, n, strategy, hash)?;
        (0..n)
            .map(|i| (start + i) % n)
            .filter_map(|i| g.members.get(i).copied())
            .find(|m| eligible(m.0))
    }

    /// The shard after `me` in group `id`'s ring of shards (`None` if there is no
    /// other).
    pub fn next_shard_after(&self, id: u32, me: u16) -> Option<u16> {
        let g = self.groups.get(&id)?;
        let next = g
            .shards
            .iter()
            .copied()
            .find(|&s| s > me)
            .or_else(|| g.shards.first().copied())?;
        (next != me).then_some(next)
    }
}

fn insert_sorted(shards: &mut SmallVec<[u16; 4]>, shard: u16) {
    if let Err(at) = shards.binary_search(&shard) {
        shards.insert(at, shard);
    }
}

/// An index below `n`: the cursor's (advancing it) with round robin, the hash's
/// with `hash_client`.
fn pick(cursor: &mut usize, n: usize, strategy: SharedStrategy, hash: u64) -> Option<usize> {
    if n == 0 {
        return None;
    }
    Some(match strategy {
        SharedStrategy::RoundRobin => {
            let i = *cursor % n;
            *cursor = (i + 1) % n;
            i
        }
        SharedStrategy::HashClient => (hash % n as u64) as usize,
    })
}

/// The publisher's hash for `hash_client`: stable across runs and shards.
pub(super) fn client_hash(client_id: &str) -> u64 {
    let hasher = ahash::RandomState::with_seeds(
        0x4528_21e6_38d0_1377,
        0xbe54_66cf_34e9_0c6c,
        0xc0ac_29b7_c97c_50dd,
        0x3f84_d5b5_b547_0917,
    );
    hasher.hash_one(client_id)
}

impl Shard {
    /// Messages on one topic, published on this shard: one copy to one member of
    /// each matching group.
    pub(super) fn route_shared(&mut self, msgs: &[Message]) {
        let mut ids = std::mem::take(&mut self.shared_matched);
        ids.clear();
        self.shared
            .for_each_match(&msgs[0].topic, |id| ids.push(id));
        let strategy = self.cfg.shared_subscription_strategy;
        let hash = self.publisher_hash;
        for &id in &ids {
            for msg in msgs {
                let Some(shard) = self.shared.pick_shard(id, strategy, hash) else {
                    continue;
                };
                if usize::from(shard) == self.id {
                    self.deliver_shared(id, msg.clone(), hash, 0, None);
                } else if let Some(g) = self.shared.get(id) {
                    self.stats.shared_forwarded += 1;
                    self.outboxes[usize::from(shard)].push(MeshMsg::Shared {
                        msg: msg.clone(),
                        to: Box::new(SharedFor {
                            group: g.name.clone(),
                            hash,
                            hops: 0,
                        }),
                    });
                }
            }
        }
        self.shared_matched = ids;
    }

    /// A message for group `id` reached this shard (`hops` shards before it had no
    /// connected member): to a connected member here, else on to the next shard of
    /// the group, else (the last one asked) queued in an offline persistent member
    /// here. `except`: a member that must not get it (the one giving it back).
    pub(super) fn deliver_shared(
        &mut self,
        id: u32,
        msg: Message,
        hash: u64,
        hops: u16,
        except: Option<usize>,
    ) {
        let strategy = self.cfg.shared_subscription_strategy;
        // A connected member that can take it at once, else any connected one
        // (with `hash_client`, the hash alone decides among the connected ones).
        let passes: &[bool] = match strategy {
            SharedStrategy::RoundRobin => &[true, false],
            SharedStrategy::HashClient => &[false],
        };
        for &need_ready in passes {
            let sessions = &self.sessions;
            let connected = |k: u32| {
                Some(k as usize) != except
                    && sessions.get(k as usize).is_some_and(|e| {
                        e.conn.as_ref().is_some_and(|c| !c.is_closing())
                            && (!need_ready || e.session.ready())
                    })
            };
            if let Some((key, qos)) = self.shared.pick_member(id, strategy, hash, connected) {
                self.give_shared(key as usize, id, qos, &msg);
                return;
            }
        }
        let Some(group) = self.shared.get(id) else {
            self.stats.shared_dropped += 1;
            return;
        };
        if usize::from(hops) + 1 < group.shards.len() {
            if let Some(next) = self.shared.next_shard_after(id, self.id as u16) {
                self.stats.shared_forwarded += 1;
                self.outboxes[usize::from(next)].push(MeshMsg::Shared {
                    msg,
                    to: Box::new(SharedFor {
                        group: group.name.clone(),
                        hash,
                        hops: hops + 1,
                    }),
                });
                return;
            }
        }
        if msg.qos != QoS::AtMostOnce {
            let sessions = &self.sessions;
            let persistent = |k: u32| {
                Some(k as usize) != except
                    && sessions
                        .get(k as usize)
                        .is_some_and(|e| !e.session.clean_session())
            };
            if let Some((key, qos)) = self.shared.pick_member(id, strategy, hash, persistent) {
                self.give_shared(key as usize, id, qos, &msg);
                return;
            }
        }
        self.stats.shared_dropped += 1;
    }

    /// Gives `msg` to session `key` as its member of group `id`, granted `qos`.
    fn give_shared(&mut self, key: usize, id: u32, qos: QoS, msg: &Message) {
        let high_water = self.cfg.write_buffer_high_water;
        let Shard {
            sessions,
            shared,
            out,
            stats,
            durable,
            ..
        } = self;
        let Some(e) = sessions.get_mut(key) else {
            return;
        };
        if !super::rights::may_read(&e.auth, &msg.topic) {
            stats.deliveries_refused += 1;
            return;
        }
        // Every logged message a group gives is recorded, to whichever member:
        // recovery gives a persistent member what no record says was given (a
        // message in transit at a crash), and brings back what was given to one.
        let effective = msg.qos.min(qos);
        if let (Some(d), Some(stamp)) = (durable.as_deref_mut(), msg.stamp()) {
            if let Some(g) = shared.get(id) {
                d.append(&Record::Assign {
                    client: e.session.client_id(),
                    group: &g.name,
                    stamp,
                    qos: effective as u8,
                });
            }
        }
        e.pos_dirty |= msg.stamp.is_set();
        stats.shared_delivered += 1;
        let d = e.session.deliver_tagged(msg, qos, id, out);
        count_delivery(stats, d, &mut e.session);
        write_out(e, out, high_water, stats, durable.as_deref_mut());
    }

    /// Session `key` is gone or offline: what its shared groups gave it and its
    /// client has not received for sure (QoS 1/2, queued or awaiting PUBACK or
    /// PUBREC) goes to other members, for each group that has another member.
    pub(super) fn release_shared(&mut self, key: usize) {
        self.release_shared_where(key, |_| true);
    }

    /// [`Shard::release_shared`] for group `name` only (an UNSUBSCRIBE).
    pub(super) fn release_shared_group(&mut self, key: usize, name: &str) {
        if let Some(id) = self.shared.id_of(name) {
            self.release_shared_where(key, |g| g == id);
        }
    }

    fn release_shared_where(&mut self, key: usize, only: impl Fn(u32) -> bool) {
        // At shutdown every member leaves, and other shards may already have written
        // their snapshots: each keeps what it holds (a persistent one in its snapshot).
        if self.stopping {
            return;
        }
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        if !e.session.subscriptions().any(|(f, _)| share::is_shared(f)) {
            return;
        }
        let (me, shared) = (self.id as u16, &self.shared);
        let others = |id: u32| {
            only(id)
                && shared.get(id).is_some_and(|g| {
                    g.members.iter().any(|m| m.0 as usize != key)
                        || g.shards.iter().any(|&s| s != me)
                })
        };
        let taken = e.session.take_shared(others);
        if taken.is_empty() {
            return;
        }
        e.pos_dirty = true;
        if let (Some(d), false) = (self.durable.as_deref_mut(), e.session.clean_session()) {
            for (m, _) in &taken {
                if let Some(stamp) = m.stamp() {
                    d.append(&Record::Unassign {
                        client: e.session.client_id(),
                        stamp,
                    });
                }
            }
        }
        let hash = self.publisher_hash;
        for (msg, id) in taken {
            self.stats.shared_redispatched += 1;
            // Given back, it goes as a new delivery to the next member: a member
            // connected here, else another shard's, else an offline persistent one.
            self.deliver_shared(id, msg, hash, 0, Some(key));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const RR: SharedStrategy = SharedStrategy::RoundRobin;
    const HASH: SharedStrategy = SharedStrategy::HashClient;

    fn name(s: &'static str) -> ByteString {
        ByteString::from_static(s)
    }

    #[test]
    fn first_and_last_local_member_are_reported_for_interest() {
        let mut s = Shared::default();
        let g = name("$share/g/a/+");
        assert!(s.add_member(0, &g, 1, QoS::AtLeastOnce).1);
        assert!(!s.add_member(0, &g, 2, QoS::AtMostOnce).1);
        assert!(!s.add_member(0, &g, 2, QoS::AtLeastOnce).1, "a QoS change");
        assert!(!s.remove_member(0, &g, 1));
        assert!(s.remove_member(0, &g, 2));
        assert!(s.is_empty(), "no member anywhere: the group is gone");
        assert_eq!(s.trie.node_count(), 1);
    }

    #[test]
    fn a_group_lives_while_any_shard_holds_members() {
        let mut s = Shared::default();
        let g = name("$share/g/t");
        s.add_shard(&g, 3);
        let id = s.id_of(&g).unwrap();
        let mut hits = Vec::new();
        s.for_each_match("t", |id| hits.push(id));
        assert_eq!(hits, vec![id]);
        s.add_member(1, &g, 7, QoS::AtLeastOnce);
        assert_eq!(s.get(id).unwrap().shards.as_slice(), &[1, 3]);
        s.remove_member(1, &g, 7);
        assert_eq!(s.id_of(&g), Some(id), "shard 3 still has members");
        s.remove_shard(&g, 3);
        assert!(s.is_empty());
    }

    #[test]
    fn groups_with_one_filter_match_separately_and_other_filters_do_not() {
        let mut s = Shared::default();
        s.add_member(0, &name("$share/a/x/#"), 1, QoS::AtLeastOnce);
        s.add_member(0, &name("$share/b/x/#"), 1, QoS::AtLeastOnce);
        s.add_member(0, &name("$share/c/y"), 1, QoS::AtLeastOnce);
        let mut hits = 0;
        s.for_each_match("x/1", |_| hits += 1);
        assert_eq!(hits, 2);
    }

    #[test]
    fn round_robin_takes_shards_and_members_in_turn() {
        let mut s = Shared::default();
        let g = name("$share/g/t");
        let (id, _) = s.add_member(0, &g, 10, QoS::AtLeastOnce);
        s.add_member(0, &g, 11, QoS::AtLeastOnce);
        s.add_member(0, &g, 12, QoS::AtLeastOnce);
        s.add_shard(&g, 1);
        let shards: Vec<u16> = (0..4).map(|_| s.pick_shard(id, RR, 0).unwrap()).collect();
        assert_eq!(shards, vec![0, 1, 0, 1]);
        let members: Vec<u32> = (0..6)
            .map(|_| s.pick_member(id, RR, 0, |_| true).unwrap().0)
            .collect();
        assert_eq!(members, vec![10, 11, 12, 10, 11, 12]);
    }

    #[test]
    fn members_that_are_not_eligible_are_skipped() {
        let mut s = Shared::default();
        let g = name("$share/g/t");
        let (id, _) = s.add_member(0, &g, 10, QoS::AtLeastOnce);
        s.add_member(0, &g, 11, QoS::AtLeastOnce);
        s.add_member(0, &g, 12, QoS::AtLeastOnce);
        let members: Vec<u32> = (0..4)
            .map(|_| s.pick_member(id, RR, 0, |k| k != 11).unwrap().0)
            .collect();
        assert_eq!(members, vec![10, 12, 12, 10]);
        assert_eq!(s.pick_member(id, RR, 0, |_| false), None);
    }

    #[test]
    fn hash_client_keeps_one_publisher_on_one_member() {
        let mut s = Shared::default();
        let g = name("$share/g/t");
        let (id, _) = s.add_member(0, &g, 10, QoS::AtLeastOnce);
        s.add_member(0, &g, 11, QoS::AtLeastOnce);
        s.add_shard(&g, 1);
        for hash in [0u64, 1, 2, 3, 0xdead_beef, u64::MAX] {
            let first = (
                s.pick_shard(id, HASH, hash),
                s.pick_member(id, HASH, hash, |_| true),
            );
            for _ in 0..5 {
                assert_eq!(
                    (
                        s.pick_shard(id, HASH, hash),
                        s.pick_member(id, HASH, hash, |_| true)
                    ),
                    first
                );
            }
        }
        // Different publishers reach every shard and member.
        let picks: std::collections::BTreeSet<(u16, u32)> = (0..64u64)
            .map(|h| {
                let h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                (
                    s.pick_shard(id, HASH, h).unwrap(),
                    s.pick_member(id, HASH, h, |_| true).unwrap().0,
                )
            })
            .collect();
        assert_eq!(picks.len(), 4, "{picks:?}");
    }

    #[test]
    fn the_ring_of_shards_wraps_and_skips_itself() {
        let mut s = Shared::default();
        let g = name("$share/g/t");
        s.add_shard(&g, 0);
        s.add_shard(&g, 2);
        s.add_shard(&g, 5);
        let id = s.id_of(&g).unwrap();
        assert_eq!(s.next_shard_after(id, 0), Some(2));
        assert_eq!(s.next_shard_after(id, 2), Some(5));
        assert_eq!(s.next_shard_after(id, 5), Some(0));
        assert_eq!(
            s.next_shard_after(id, 3),
            Some(5),
            "a shard not in the ring"
        );
        s.remove_shard(&g, 2);
        s.remove_shard(&g, 5);
        assert_eq!(s.next_shard_after(id, 0), None);
    }
}

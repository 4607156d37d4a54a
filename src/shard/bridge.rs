//! The shard's side of a bridge homed here (see `crate::bridge`): the bridge's
//! session, made and subscribed at start, its remote connection attached to it like a
//! client's and detached without ending it.

use super::{count_delivery, write_out, Cell, Rc, SessionEntry, Shard, SubscribeWait};
use crate::link::Conn;
use crate::message::Message;
use crate::protocol::{topic, QoS};
use crate::session::{Delivery, Session};
use crate::store;
use bytestring::ByteString;
use std::time::Instant;

impl Shard {
    /// The session of a bridge homed here, under `client_id`: restored (with
    /// persistence), or made now; marked as a bridge's, and subscribed to exactly
    /// `filters`. Returns its key, and what to wait for before other shards forward
    /// matching messages (every shard has confirmed the new filters).
    pub(crate) fn bridge_session(
        &mut self,
        client_id: &str,
        clean_session: bool,
        filters: &[(String, QoS)],
    ) -> (usize, Option<Rc<SubscribeWait>>) {
        let key = match self.by_client.get(&self.sessions, client_id) {
            Some(key) => key,
            None => {
                let id = ByteString::from(client_id);
                let session = Session::new(id.clone(), clean_session, self.limits.clone());
                let key = self.sessions.insert(SessionEntry::offline(session, 0));
                self.by_client.insert(&self.sessions, key);
                if !clean_session {
                    self.log_record(&store::records::Record::Session {
                        client: &id,
                        expiry: None,
                    });
                }
                key
            }
        };
        if !self.retain_keys.contains(&(key as u32)) {
            self.retain_keys.push(key as u32);
        }
        let entry = &mut self.sessions[key];
        entry.bridge = true;
        entry.no_local = true;
        entry.offline_since = 0;
        let persistent = !entry.session.clean_session();
        let client = entry.session.client_id().clone();
        // Filters no longer configured go.
        let stale: Vec<ByteString> = entry
            .session
            .subscriptions()
            .filter(|(f, _)| !filters.iter().any(|(c, _)| c == &***f))
            .map(|(f, _)| f.clone())
            .collect();
        for filter in stale {
            self.sessions[key].session.unsubscribe(&filter);
            if persistent {
                self.log_record(&store::records::Record::Unsub {
                    client: &client,
                    filter: &filter,
                });
            }
            if self.subs.remove(&filter, &(key as u32)).filter_now_empty {
                self.broadcast_interest_remove(&filter);
            }
        }
        let mut new_filters = Vec::new();
        for (filter, qos) in filters {
            let filter = ByteString::from(filter.as_str());
            if self.sessions[key].session.subscription(&filter) == Some(*qos) {
                continue;
            }
            self.sessions[key].session.subscribe(filter.clone(), *qos);
            if persistent && self.durable.is_some() {
                let horizons = self.horizons();
                self.log_record(&store::records::Record::Sub {
                    client: &client,
                    filter: &filter,
                    qos: *qos as u8,
                    opts: Default::default(),
                    horizons,
                });
            }
            if self.subs.insert(&filter, key as u32, *qos).filter_was_new && self.shards > 1 {
                new_filters.push(filter);
            }
        }
        if new_filters.is_empty() {
            return (key, None);
        }
        let wait = Rc::new(SubscribeWait {
            outstanding: Cell::new(1),
            waker: Cell::new(None),
        });
        self.announce_interest(new_filters, vec![wait.clone()]);
        (key, Some(wait))
    }

    /// The bridge's connection to its remote is up (CONNACK received): the session
    /// resends what is in flight (DUP set) and drains its queue into it. Keep-alive
    /// is the bridge's own business (it pings the remote), not the shard's sweep.
    /// `limits`: a 5.0 remote's, from its CONNACK (`None` for 3.1.1 and 3.1).
    pub(crate) fn bridge_attach(
        &mut self,
        key: usize,
        conn: &Rc<Conn>,
        limits: Option<crate::session::PeerLimits>,
        now: Instant,
    ) {
        let server_receive_maximum = self.cfg.receive_maximum;
        let entry = &mut self.sessions[key];
        debug_assert!(entry.bridge && entry.conn.is_none());
        entry.session.set_v5(limits.is_some());
        entry.session.set_peer_limits(match limits {
            Some(l) => crate::session::PeerLimits {
                server_receive_maximum,
                ..l
            },
            None => Default::default(),
        });
        conn.key.set(key);
        entry.conn = Some(conn.clone());
        entry.held = false;
        self.stats.connects += 1;
        self.stats.connections += 1;
        entry.session.connect(0, None, now, &mut self.out);
        write_out(
            entry,
            &mut self.out,
            self.cfg.write_buffer_high_water,
            &mut self.stats,
            self.durable.as_deref_mut(),
        );
        // Then every retained message its filters match, retained, as Mosquitto's
        // bridges send them on each connection: the remote's retained store
        // follows this one's.
        let mut retained: Vec<Message> = Vec::new();
        for (filter, _) in self.sessions[key].session.subscriptions() {
            self.retained.for_each_match(filter, |m| {
                if !retained.iter().any(|r| r.topic == m.topic) {
                    retained.push(m.clone());
                }
            });
        }
        for msg in retained {
            self.retained_to_bridge(key, &msg);
        }
    }

    /// A retained update just accepted here (published here, or from another
    /// shard): every session on this shard that keeps the RETAIN flag of live
    /// messages (`SessionEntry::keeps_retain`: bridges, as Mosquitto's bridges
    /// forward retained messages, and Retain As Published subscriptions
    /// [MQTT-3.3.1-13]) and whose filters match it gets it with its retain flag (all
    /// other deliveries clear the flag). Returns whether any did; their copy of the
    /// plain delivery that follows is then skipped.
    pub(super) fn retained_to_keepers(&mut self, msg: &Message) -> bool {
        let mut any = false;
        for i in 0..self.retain_keys.len() {
            let key = self.retain_keys[i];
            // A bridge does not get back what it published; a client's own
            // message takes the plain path, which knows its No Local filters.
            if self.no_local != Some(key) {
                any |= self.retained_to_bridge(key as usize, msg);
            }
        }
        any
    }

    /// Delivers `msg` with its retain flag to session `key` if its filters that keep
    /// the flag (all of a bridge's, a client's Retain As Published ones) match it, at
    /// the highest QoS among them; whether they did.
    fn retained_to_bridge(&mut self, key: usize, msg: &Message) -> bool {
        let Some(entry) = self.sessions.get_mut(key) else {
            return false;
        };
        let Some(qos) = retained_copy_qos(entry, &msg.topic) else {
            return false;
        };
        let copy = Message {
            retain: true,
            ..msg.clone()
        };
        entry.pos_dirty |= copy.stamp.is_set();
        let d = entry.session.deliver(&copy, qos, &mut self.out);
        if entry.bridge && matches!(d, Delivery::Dropped(_)) {
            self.stats.bridge_messages_dropped += 1;
        }
        count_delivery(&mut self.stats, d, &mut entry.session);
        write_out(
            entry,
            &mut self.out,
            self.cfg.write_buffer_high_water,
            &mut self.stats,
            self.durable.as_deref_mut(),
        );
        true
    }

    /// Whether `msg`, forwarded from another shard, is the plain copy of a retained
    /// update the bridges here already got (the same topic and payload bytes);
    /// forgets it if so.
    pub(super) fn take_bridge_skip(&mut self, msg: &Message) -> bool {
        let same = |r: &Message| {
            r.topic == msg.topic
                && r.payload.as_ptr() == msg.payload.as_ptr()
                && r.payload.len() == msg.payload.len()
        };
        match self.bridge_skip.iter().position(same) {
            Some(i) => {
                self.bridge_skip.remove(i);
                true
            }
            None => false,
        }
    }

    /// The bridge's connection ended: the session stays, queueing QoS 1/2 messages
    /// for the next one (QoS 0 ones are dropped and counted meanwhile).
    pub(crate) fn bridge_detach(&mut self, key: usize, conn_id: u64) {
        if !self.is_current(key, conn_id) {
            return;
        }
        let entry = &mut self.sessions[key];
        if let Some(conn) = entry.conn.take() {
            conn.close();
        }
        self.stats.connections -= 1;
        entry.session.disconnect(true);
    }

    /// Publishes the bridge's state as Mosquitto does: retained
    /// `$SYS/broker/connection/{name}/state`, "1" connected, "0" not.
    pub(crate) fn bridge_state(&mut self, name: &str, connected: bool) {
        let msg = Message {
            topic: format!("$SYS/broker/connection/{name}/state").into(),
            payload: bytes::Bytes::from_static(if connected { b"1" } else { b"0" }),
            qos: QoS::AtMostOnce,
            retain: true,
            stamp: Default::default(),
            props: None,
        };
        self.publish_from_broker(msg);
    }
}

/// The QoS at which session `entry` takes a live message on `topic` published with
/// RETAIN as a retained copy: the highest among its filters that keep the flag (all of
/// a bridge's, a client's Retain As Published ones) and match; `None` when none does
/// or it may not read the topic.
pub(super) fn retained_copy_qos(entry: &SessionEntry, topic_name: &str) -> Option<QoS> {
    if !entry.keeps_retain() {
        return None;
    }
    let every = entry.bridge || entry.no_local;
    if !every && !super::rights::may_read(&entry.auth, topic_name) {
        return None;
    }
    let rap = entry.rap_filters.as_deref();
    entry
        .session
        .subscriptions()
        .filter(|(f, _)| {
            (every || rap.is_some_and(|r| r.contains(f))) && topic::matches(f, topic_name)
        })
        .map(|(_, q)| q)
        .max()
}

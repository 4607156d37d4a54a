//! The shard's side of a bridge homed here (see `crate::bridge`): the bridge's
//! session, made and subscribed at start, its remote connection attached to it like a
//! client's and detached without ending it.

use super::{write_out, Cell, MeshMsg, PendingInterest, Rc, SessionEntry, Shard, SubscribeWait};
use crate::link::Conn;
use crate::message::Message;
use crate::protocol::QoS;
use crate::session::Session;
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
        let key = match self.by_client.get(client_id) {
            Some(&key) => key,
            None => {
                let id = ByteString::from(client_id);
                let session = Session::new(id.clone(), clean_session, self.limits.clone());
                let key = self.sessions.insert(SessionEntry::offline(session, 0));
                self.by_client.insert(id.clone(), key);
                if !clean_session {
                    self.log_record(&store::records::Record::Session { client: &id });
                }
                key
            }
        };
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
        let token = self.next_token;
        self.next_token += 1;
        for (dest, outbox) in self.outboxes.iter().enumerate() {
            if dest != self.id {
                outbox.push(MeshMsg::InterestAdd {
                    filters: new_filters.clone(),
                    token,
                });
            }
        }
        for f in &new_filters {
            self.pending_filters.insert(f.clone(), token);
        }
        let wait = Rc::new(SubscribeWait {
            outstanding: Cell::new(1),
            waker: Cell::new(None),
        });
        self.pending_interest.insert(
            token,
            PendingInterest {
                remaining: self.shards - 1,
                confirmed: (0..self.shards).map(|s| s == self.id).collect(),
                filters: new_filters,
                waiters: vec![wait.clone()],
                held: Vec::new(),
            },
        );
        (key, Some(wait))
    }

    /// The bridge's connection to its remote is up (CONNACK received): the session
    /// resends what is in flight (DUP set) and drains its queue into it. Keep-alive
    /// is the bridge's own business (it pings the remote), not the shard's sweep.
    pub(crate) fn bridge_attach(&mut self, key: usize, conn: &Rc<Conn>, now: Instant) {
        let entry = &mut self.sessions[key];
        debug_assert!(entry.bridge && entry.conn.is_none());
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
        };
        self.publish_from_broker(msg);
    }
}

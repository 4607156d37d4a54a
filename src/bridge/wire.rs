//! The bridge's layer between its session's output and the remote's socket, sans-IO
//! (the [`Outgoing`] of its [`crate::link::wire::Wire`], under TLS if any): every PUBLISH
//! the session writes carries a local topic, and leaves with the remote one. So the
//! shard writes to a bridge exactly as to a client (shared encodings included), and
//! only the bridge pays for the rewrite.
//!
//! It also keeps, when the remote refused the bridge bit, a bounded record of what
//! it sent ([`EchoGuard`]), so that the remote's copy of it coming back is not
//! published here a second time.

use super::topics::TopicMap;
use crate::link::wire::{Outgoing, WireError};
use crate::protocol::{decode_with, DecodeOptions, Packet};
use bytes::BytesMut;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// See the module documentation.
pub struct BridgeLayer {
    map: Arc<TopicMap>,
    /// MQTT bytes of a packet not yet complete (the shard writes whole packets, so
    /// this is normally empty between calls).
    pending: BytesMut,
    /// PUBLISH packets sent so far (the bridge's "out" count).
    pub published: u64,
    /// Local messages with no outbound topic (none, as the session subscribes only to
    /// what the topics carry out) or one over MQTT's 65535 bytes, dropped.
    pub unmapped: u64,
    /// Set when the remote refused the bridge bit.
    pub echo: Option<EchoGuard>,
    /// The connection speaks MQTT 5.0.
    v5: bool,
}

impl BridgeLayer {
    pub fn new(map: Arc<TopicMap>, v5: bool) -> BridgeLayer {
        BridgeLayer {
            map,
            pending: BytesMut::new(),
            published: 0,
            unmapped: 0,
            echo: None,
            v5,
        }
    }

    /// MQTT bytes from the session: the same packets, PUBLISH topics mapped out.
    pub fn map_out(&mut self, mqtt: &[u8]) -> Result<BytesMut, WireError> {
        self.pending.extend_from_slice(mqtt);
        let mut mapped = BytesMut::with_capacity(self.pending.len() + 64);
        let opts = DecodeOptions {
            v5: self.v5,
            ..DecodeOptions::new(crate::config::MQTT_MAX_PACKET)
        };
        loop {
            let packet = decode_with(&mut self.pending, &opts)
                .map_err(|e| WireError::Outgoing(format!("output not MQTT: {e}")))?;
            let Some(packet) = packet else {
                return Ok(mapped);
            };
            match packet {
                Packet::Publish(mut p) => {
                    // A topic the remote prefix makes longer than MQTT allows is
                    // dropped like one no topic carries out.
                    let remote = self.map.outbound(&p.topic).filter(|t| t.len() <= 65_535);
                    let Some(remote) = remote else {
                        self.unmapped += 1;
                        continue;
                    };
                    p.topic = remote.into();
                    if let Some(echo) = &mut self.echo {
                        echo.sent(&p.topic, &p.payload);
                    }
                    self.published += 1;
                    self.encode(&Packet::Publish(p), &mut mapped);
                }
                other => self.encode(&other, &mut mapped),
            }
        }
    }
}

impl BridgeLayer {
    fn encode(&self, packet: &Packet, out: &mut BytesMut) {
        if self.v5 {
            packet.encode_v5(out);
        } else {
            packet.encode(out);
        }
    }
}

impl Outgoing for BridgeLayer {
    fn map(&mut self, mqtt: &[u8]) -> Result<BytesMut, WireError> {
        self.map_out(mqtt)
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Most messages remembered for echo detection.
const ECHO_MEMORY: usize = 4096;

/// Fingerprints of the messages last sent to a remote that does not know it talks to a
/// bridge: a message arriving from it with the topic and payload of one of them is
/// taken for that message coming back, and not published again (each fingerprint
/// matches once). The last [`ECHO_MEMORY`] messages are remembered.
#[derive(Default)]
pub struct EchoGuard {
    order: VecDeque<u64>,
    counts: HashMap<u64, u32>,
}

fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
    let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
    hasher.hash_one((topic, payload))
}

impl EchoGuard {
    /// A message went to the remote.
    pub fn sent(&mut self, topic: &str, payload: &[u8]) {
        let f = fingerprint(topic, payload);
        *self.counts.entry(f).or_default() += 1;
        self.order.push_back(f);
        if self.order.len() > ECHO_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.forget(old);
            }
        }
    }

    /// A message came from the remote: true if it is one the bridge sent (it is then
    /// forgotten).
    pub fn is_echo(&mut self, topic: &str, payload: &[u8]) -> bool {
        let f = fingerprint(topic, payload);
        if !self.counts.contains_key(&f) {
            return false;
        }
        self.forget(f);
        if let Some(i) = self.order.iter().position(|&o| o == f) {
            self.order.remove(i);
        }
        true
    }

    fn forget(&mut self, f: u64) {
        if let Some(c) = self.counts.get_mut(&f) {
            *c -= 1;
            if *c == 0 {
                self.counts.remove(&f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BridgeTopic, Direction};
    use crate::protocol::{decode, Publish, QoS};
    use bytes::Bytes;

    fn layer() -> BridgeLayer {
        let map = TopicMap::new(&[BridgeTopic {
            pattern: "#".into(),
            direction: Direction::Out,
            qos: 2,
            local_prefix: "here/".into(),
            remote_prefix: "there/".into(),
        }]);
        BridgeLayer::new(Arc::new(map), false)
    }

    fn publish(topic: &str, pkid: u16) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.to_string().into(),
            pkid,
            payload: Bytes::from_static(b"payload"),
            props: None,
        })
    }

    #[test]
    fn publish_topics_are_mapped_and_other_packets_pass_as_they_are() {
        let mut l = layer();
        let mut input = BytesMut::new();
        publish("here/a/b", 7).encode(&mut input);
        Packet::PubAck(3).encode(&mut input);
        publish("here/c", 8).encode(&mut input);
        // Split anywhere: a partial packet waits for the rest.
        let (first, second) = input.split_at(5);
        let mut out = l.map_out(first).unwrap();
        out.extend_from_slice(&l.map_out(second).unwrap());
        let mut got = Vec::new();
        while let Some(p) = decode(&mut out, 1 << 20).unwrap() {
            got.push(p);
        }
        assert_eq!(
            got,
            vec![
                publish("there/a/b", 7),
                Packet::PubAck(3),
                publish("there/c", 8)
            ]
        );
        assert_eq!(l.published, 2);
    }

    #[test]
    fn the_echo_guard_matches_each_sent_message_once() {
        let mut g = EchoGuard::default();
        g.sent("t", b"1");
        g.sent("t", b"1");
        assert!(g.is_echo("t", b"1"));
        assert!(g.is_echo("t", b"1"));
        assert!(!g.is_echo("t", b"1"));
        assert!(!g.is_echo("u", b"1"));
        for i in 0..ECHO_MEMORY + 1 {
            g.sent("t", i.to_string().as_bytes());
        }
        assert!(!g.is_echo("t", b"0"), "the oldest is forgotten");
        assert!(g.is_echo("t", b"1"));
    }
}

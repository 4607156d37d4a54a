//! A bridge's topics, sans-IO: which filters it subscribes to on each side, and how
//! a topic is rewritten when a message crosses (Mosquitto's `topic pattern
//! [[[out|in|both] qos] local-prefix remote-prefix]`).

use crate::config::{BridgeTopic, Direction};
use crate::protocol::{topic, QoS};

/// One configured topic, its filters resolved.
#[derive(Debug, Clone)]
struct Mapping {
    direction: Direction,
    qos: QoS,
    local_prefix: String,
    remote_prefix: String,
    local_filter: String,
    remote_filter: String,
}

/// Every topic of one bridge.
#[derive(Debug, Clone)]
pub struct TopicMap {
    topics: Vec<Mapping>,
}

/// `prefix_from + rest` → `prefix_to + rest`, if `topic` starts with `prefix_from`.
fn swap_prefix(topic: &str, from: &str, to: &str) -> Option<String> {
    let rest = topic.strip_prefix(from)?;
    let mut t = String::with_capacity(to.len() + rest.len());
    t.push_str(to);
    t.push_str(rest);
    Some(t)
}

/// Adds `(filter, qos)` to `list`, or raises the QoS of the filter already there.
fn add(list: &mut Vec<(String, QoS)>, filter: &str, qos: QoS) {
    match list.iter_mut().find(|(f, _)| f == filter) {
        Some((_, q)) => *q = (*q).max(qos),
        None => list.push((filter.to_string(), qos)),
    }
}

impl TopicMap {
    /// From the configuration (already validated).
    pub fn new(topics: &[BridgeTopic]) -> TopicMap {
        TopicMap {
            topics: topics
                .iter()
                .map(|t| Mapping {
                    direction: t.direction,
                    qos: QoS::from_u8(t.qos).unwrap_or(QoS::AtMostOnce),
                    local_prefix: t.local_prefix.clone(),
                    remote_prefix: t.remote_prefix.clone(),
                    local_filter: t.local_filter(),
                    remote_filter: t.remote_filter(),
                })
                .collect(),
        }
    }

    /// What the bridge's session here subscribes to: the local filter of every
    /// `out`/`both` topic, at its QoS (the highest, for a filter given twice).
    pub fn local_subscriptions(&self) -> Vec<(String, QoS)> {
        let mut list = Vec::new();
        for m in self.topics.iter().filter(|m| m.direction.carries_out()) {
            add(&mut list, &m.local_filter, m.qos);
        }
        list
    }

    /// What the bridge subscribes to on the remote: the remote filter of every
    /// `in`/`both` topic, at its QoS.
    pub fn remote_subscriptions(&self) -> Vec<(String, QoS)> {
        let mut list = Vec::new();
        for m in self.topics.iter().filter(|m| m.direction.carries_in()) {
            add(&mut list, &m.remote_filter, m.qos);
        }
        list
    }

    /// The local topic of a message received from the remote: the first `in`/`both`
    /// topic whose remote filter matches, with its remote prefix replaced by the
    /// local one; `None` if no topic carries it in.
    pub fn inbound(&self, remote_topic: &str) -> Option<String> {
        self.topics
            .iter()
            .filter(|m| m.direction.carries_in() && topic::matches(&m.remote_filter, remote_topic))
            .find_map(|m| swap_prefix(remote_topic, &m.remote_prefix, &m.local_prefix))
    }

    /// The remote topic of a local message going out: the first `out`/`both` topic
    /// whose local filter matches, with its local prefix replaced by the remote one.
    pub fn outbound(&self, local_topic: &str) -> Option<String> {
        self.topics
            .iter()
            .filter(|m| m.direction.carries_out() && topic::matches(&m.local_filter, local_topic))
            .find_map(|m| swap_prefix(local_topic, &m.local_prefix, &m.remote_prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pattern: &str, direction: Direction, qos: u8, local: &str, remote: &str) -> BridgeTopic {
        BridgeTopic {
            pattern: pattern.into(),
            direction,
            qos,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    #[test]
    fn prefixes_are_swapped_as_mosquitto_does() {
        let map = TopicMap::new(&[
            t("sensors/#", Direction::Out, 1, "site1/", "fleet/site1/"),
            t("cmd/#", Direction::In, 2, "site1/", "fleet/site1/"),
            t("both/+", Direction::Both, 0, "", "r/"),
        ]);
        assert_eq!(
            map.local_subscriptions(),
            vec![
                ("site1/sensors/#".to_string(), QoS::AtLeastOnce),
                ("both/+".to_string(), QoS::AtMostOnce)
            ]
        );
        assert_eq!(
            map.remote_subscriptions(),
            vec![
                ("fleet/site1/cmd/#".to_string(), QoS::ExactlyOnce),
                ("r/both/+".to_string(), QoS::AtMostOnce)
            ]
        );
        assert_eq!(
            map.outbound("site1/sensors/a/b").as_deref(),
            Some("fleet/site1/sensors/a/b")
        );
        assert_eq!(
            map.inbound("fleet/site1/cmd/reboot").as_deref(),
            Some("site1/cmd/reboot")
        );
        // Directions are kept apart.
        assert_eq!(map.outbound("site1/cmd/reboot"), None);
        assert_eq!(map.inbound("fleet/site1/sensors/a"), None);
        assert_eq!(map.inbound("r/both/x").as_deref(), Some("both/x"));
        assert_eq!(map.outbound("both/x").as_deref(), Some("r/both/x"));
    }

    #[test]
    fn an_empty_pattern_maps_one_topic_to_another() {
        let map = TopicMap::new(&[t("", Direction::Both, 1, "local/status", "remote/status")]);
        assert_eq!(
            map.outbound("local/status").as_deref(),
            Some("remote/status")
        );
        assert_eq!(
            map.inbound("remote/status").as_deref(),
            Some("local/status")
        );
        assert_eq!(map.inbound("remote/status/x"), None);
    }

    #[test]
    fn a_topic_matching_the_filter_but_not_the_prefix_is_not_mapped() {
        // "x/#" matches "x" itself, which does not start with the prefix "x/".
        let map = TopicMap::new(&[t("#", Direction::In, 0, "l/", "x/")]);
        assert_eq!(map.inbound("x"), None);
        assert_eq!(map.inbound("x/y").as_deref(), Some("l/y"));
    }
}

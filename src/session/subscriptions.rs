//! A session's own record of its subscriptions: filter → granted QoS.
//!
//! Routing never reads it (the shard's trie does); SUBSCRIBE, UNSUBSCRIBE, resume and
//! the session's end do. Most clients hold one to a few filters, and a hash map's
//! smallest table (four buckets of a 40-byte entry) costs 180 bytes for one. So a few
//! filters are a vector sized exactly, searched linearly, and a session switches to a
//! map only once it holds more than [`FEW_MAX`].

use crate::hash::RandomKeys;
use crate::protocol::QoS;
use bytestring::ByteString;
use std::collections::HashMap;

/// Above this many filters the record becomes a map.
const FEW_MAX: usize = 8;
/// Below this many filters a map becomes a vector again.
const FEW_MIN: usize = 4;

/// See the module documentation.
#[derive(Debug)]
pub(crate) enum Subscriptions {
    Few(Vec<(ByteString, QoS)>),
    Many(HashMap<ByteString, QoS, RandomKeys>),
}

impl Default for Subscriptions {
    fn default() -> Subscriptions {
        Subscriptions::Few(Vec::new())
    }
}

impl Subscriptions {
    /// Records `filter` at `qos`; returns the QoS it replaced, if any.
    pub(crate) fn insert(&mut self, filter: ByteString, qos: QoS) -> Option<QoS> {
        match self {
            Subscriptions::Few(v) => {
                if let Some((_, q)) = v.iter_mut().find(|(f, _)| *f == filter) {
                    return Some(std::mem::replace(q, qos));
                }
                if v.len() < FEW_MAX {
                    // Exactly: the default growth would make room for four.
                    v.reserve_exact(1);
                    v.push((filter, qos));
                } else {
                    let mut m: HashMap<ByteString, QoS, RandomKeys> =
                        HashMap::with_capacity_and_hasher(2 * FEW_MAX, RandomKeys);
                    m.extend(v.drain(..));
                    m.insert(filter, qos);
                    *self = Subscriptions::Many(m);
                }
                None
            }
            Subscriptions::Many(m) => m.insert(filter, qos),
        }
    }

    /// Forgets `filter`; returns its QoS if it was recorded.
    pub(crate) fn remove(&mut self, filter: &str) -> Option<QoS> {
        match self {
            Subscriptions::Few(v) => {
                let i = v.iter().position(|(f, _)| f == filter)?;
                let (_, q) = v.remove(i);
                if v.len() * 2 <= v.capacity() {
                    v.shrink_to_fit();
                }
                Some(q)
            }
            Subscriptions::Many(m) => {
                let q = m.remove(filter)?;
                if m.len() < FEW_MIN {
                    let mut v = Vec::with_capacity(m.len());
                    v.extend(m.drain());
                    *self = Subscriptions::Few(v);
                }
                Some(q)
            }
        }
    }

    /// The QoS granted to `filter`, if recorded.
    pub(crate) fn get(&self, filter: &str) -> Option<QoS> {
        match self {
            Subscriptions::Few(v) => v.iter().find(|(f, _)| f == filter).map(|(_, q)| *q),
            Subscriptions::Many(m) => m.get(filter).copied(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Subscriptions::Few(v) => v.len(),
            Subscriptions::Many(m) => m.len(),
        }
    }

    /// Every filter with its QoS, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ByteString, QoS)> {
        let (few, many) = match self {
            Subscriptions::Few(v) => (Some(v), None),
            Subscriptions::Many(m) => (None, Some(m)),
        };
        few.into_iter()
            .flatten()
            .map(|(f, q)| (f, *q))
            .chain(many.into_iter().flatten().map(|(f, q)| (f, *q)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(i: usize) -> ByteString {
        ByteString::from(format!("a/{i}"))
    }

    #[test]
    fn one_filter_costs_one_exact_allocation() {
        let mut s = Subscriptions::default();
        assert_eq!(s.insert(filter(1), QoS::AtLeastOnce), None);
        let Subscriptions::Few(v) = &s else {
            panic!("one filter is a vector")
        };
        assert_eq!(v.capacity(), 1);
    }

    #[test]
    fn behaves_as_a_map_across_the_switch_both_ways() {
        let mut s = Subscriptions::default();
        let mut model = std::collections::HashMap::new();
        for round in 0..3 {
            for i in 0..(3 * FEW_MAX) {
                let q = if (i + round) % 2 == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::ExactlyOnce
                };
                assert_eq!(s.insert(filter(i), q), model.insert(filter(i), q));
                assert_eq!(s.len(), model.len());
            }
            assert!(matches!(s, Subscriptions::Many(_)));
            for i in (0..(3 * FEW_MAX)).rev() {
                assert_eq!(s.get(&filter(i)), model.get(&filter(i)).copied());
                assert_eq!(s.remove(&filter(i)), model.remove(&filter(i)));
                assert_eq!(s.remove(&filter(i)), None);
                let mut got: Vec<_> = s.iter().map(|(f, q)| (f.clone(), q)).collect();
                let mut want: Vec<_> = model.iter().map(|(f, q)| (f.clone(), *q)).collect();
                got.sort_by(|a, b| a.0.cmp(&b.0));
                want.sort_by(|a, b| a.0.cmp(&b.0));
                assert_eq!(got, want);
            }
            assert!(matches!(s, Subscriptions::Few(_)));
        }
    }
}

//! What every payload carries (publisher, sequence number, send time) and the
//! per-stream bookkeeping on the subscriber side that turns arrivals into delivered,
//! lost, duplicated and out-of-order counts.

/// Bytes at the start of every payload: publisher index (u32), sequence number
/// (u64) and send time in nanoseconds since the run's clock base (u64), little-endian.
pub const HEADER_LEN: usize = 20;

pub fn encode_header(publisher: u32, seq: u64, sent_ns: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&publisher.to_le_bytes());
    h[4..12].copy_from_slice(&seq.to_le_bytes());
    h[12..].copy_from_slice(&sent_ns.to_le_bytes());
    h
}

pub fn decode_header(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let h = payload.get(..HEADER_LEN)?;
    Some((
        u32::from_le_bytes(h[..4].try_into().ok()?),
        u64::from_le_bytes(h[4..12].try_into().ok()?),
        u64::from_le_bytes(h[12..].try_into().ok()?),
    ))
}

/// How one arrival relates to what came before it on its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next sequence number.
    InOrder,
    /// Later than the next one: the `skipped` numbers in between are missing for now.
    Ahead { skipped: u64 },
    /// A number that was missing arrived after later ones did.
    Late,
    /// A number that had already arrived.
    Duplicate,
}

/// One publisher's messages as seen by one subscriber. Sequence numbers start at 0.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    /// Every number below this has arrived or is in `missing`.
    next: u64,
    /// Half-open ranges of numbers below `next` that have not arrived, in order.
    missing: Vec<(u64, u64)>,
    pub received: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

impl Stream {
    pub fn arrive(&mut self, seq: u64) -> Arrival {
        self.received += 1;
        if seq == self.next {
            self.next += 1;
            return Arrival::InOrder;
        }
        if seq > self.next {
            let skipped = seq - self.next;
            self.missing.push((self.next, seq));
            self.next = seq + 1;
            return Arrival::Ahead { skipped };
        }
        // Behind: either a hole being filled late, or a duplicate.
        let i = self.missing.partition_point(|&(_, end)| end <= seq);
        match self.missing.get(i).copied() {
            Some((start, end)) if start <= seq => {
                match (seq == start, seq + 1 == end) {
                    (true, true) => {
                        self.missing.remove(i);
                    }
                    (true, false) => self.missing[i].0 = seq + 1,
                    (false, true) => self.missing[i].1 = seq,
                    (false, false) => {
                        self.missing[i].1 = seq;
                        self.missing.insert(i + 1, (seq + 1, end));
                    }
                }
                self.reordered += 1;
                Arrival::Late
            }
            _ => {
                self.duplicated += 1;
                Arrival::Duplicate
            }
        }
    }

    /// Messages that never arrived, given how many the publisher sent in all.
    pub fn lost(&self, sent: u64) -> u64 {
        let holes: u64 = self.missing.iter().map(|&(s, e)| e - s).sum();
        holes + sent.saturating_sub(self.next)
    }

    /// The numbers below `sent` that have not arrived, as sorted half-open ranges.
    fn absent(&self, sent: u64) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .missing
            .iter()
            .map(|&(s, e)| (s, e.min(sent)))
            .filter(|&(s, e)| s < e)
            .collect();
        if self.next < sent {
            v.push((self.next, sent));
        }
        v
    }
}

/// One publisher's messages as the members of one shared group saw them: how many
/// of the `sent` reached no member, and how many copies came beyond one each.
pub fn group_lost_and_duplicated(members: &[&Stream], sent: u64) -> (u64, u64) {
    // Absent from the group: absent from every member (intersect their ranges).
    let mut absent = vec![(0, sent)];
    for m in members {
        let theirs = m.absent(sent);
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < absent.len() && j < theirs.len() {
            let (a, b) = (absent[i], theirs[j]);
            let (s, e) = (a.0.max(b.0), a.1.min(b.1));
            if s < e {
                out.push((s, e));
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        absent = out;
    }
    let lost: u64 = absent.iter().map(|&(s, e)| e - s).sum();
    let received: u64 = members.iter().map(|m| m.received).sum();
    (lost, received.saturating_sub(sent - lost))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = encode_header(7, 1 << 40, 123_456_789);
        assert_eq!(decode_header(&h), Some((7, 1 << 40, 123_456_789)));
        assert_eq!(decode_header(&h[..19]), None);
    }

    #[test]
    fn in_order_stream_has_nothing_to_report() {
        let mut s = Stream::default();
        for i in 0..100 {
            assert_eq!(s.arrive(i), Arrival::InOrder);
        }
        assert_eq!((s.lost(100), s.duplicated, s.reordered), (0, 0, 0));
        assert_eq!(s.lost(103), 3, "the tail that never came is lost");
    }

    #[test]
    fn gaps_late_arrivals_and_duplicates_are_told_apart() {
        let mut s = Stream::default();
        assert_eq!(s.arrive(0), Arrival::InOrder);
        assert_eq!(s.arrive(5), Arrival::Ahead { skipped: 4 });
        assert_eq!(s.arrive(3), Arrival::Late);
        assert_eq!(s.arrive(3), Arrival::Duplicate);
        assert_eq!(s.arrive(1), Arrival::Late);
        assert_eq!(s.arrive(4), Arrival::Late);
        assert_eq!(s.arrive(5), Arrival::Duplicate);
        assert_eq!(s.arrive(0), Arrival::Duplicate);
        assert_eq!(s.arrive(6), Arrival::InOrder);
        assert_eq!(s.lost(7), 1, "only 2 is still missing");
        assert_eq!((s.duplicated, s.reordered, s.received), (3, 3, 9));
        assert_eq!(s.arrive(2), Arrival::Late);
        assert_eq!(s.lost(7), 0);
    }

    #[test]
    fn matches_a_set_model_on_shuffled_input() {
        // Deterministic pseudo-random arrivals with drops, swaps and repeats.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50 {
            let sent = 200u64;
            let mut order: Vec<u64> = (0..sent).filter(|_| rnd() % 10 != 0).collect();
            for _ in 0..20 {
                let (a, b) = (rnd() as usize % order.len(), rnd() as usize % order.len());
                order.swap(a, b);
            }
            for _ in 0..10 {
                let v = order[rnd() as usize % order.len()];
                order.push(v);
            }
            let mut s = Stream::default();
            let mut seen = std::collections::HashSet::new();
            let mut dups = 0;
            for &v in &order {
                if !seen.insert(v) {
                    dups += 1;
                }
                s.arrive(v);
            }
            assert_eq!(s.lost(sent), sent - seen.len() as u64);
            assert_eq!(s.duplicated, dups);
            assert_eq!(s.received, order.len() as u64);
        }
    }

    #[test]
    fn a_group_loses_what_no_member_got_and_counts_extra_copies() {
        let mut a = Stream::default();
        let mut b = Stream::default();
        for seq in [0, 2, 4, 5] {
            a.arrive(seq);
        }
        for seq in [1, 3, 5, 8] {
            b.arrive(seq);
        }
        // 0..10 sent: 6, 7 and 9 reached nobody; 5 came twice.
        assert_eq!(group_lost_and_duplicated(&[&a, &b], 10), (3, 1));
        assert_eq!(group_lost_and_duplicated(&[], 4), (4, 0));
    }
}

//! The closed-loop window, shared by every worker thread: how many messages have
//! been published, how many deliveries have settled, and the bound on the deliveries
//! in between.
//!
//! The bound is hard. A thread reserves messages in the published count (a
//! compare-and-swap against the settled count it has just read) before it writes
//! them, and gives back what it did not write, so no interleaving of threads can put
//! more than the window in flight. Counting after the fact, as threads once did, let
//! two threads each spend the same free room and run the window over by half; a
//! broker that bounds a session's queue at the window's size then drops the excess.
//!
//! Every publisher also has a share of the window, so the publishers of a thread
//! that is busy reading deliveries are not starved by those of a thread that only
//! publishes and so claims the free room first.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

pub struct Window {
    /// Deliveries that may be outstanding (published × fan-out − settled); `None`
    /// under rate pacing, where the window only counts.
    limit: Option<u64>,
    fanout: u64,
    /// Deliveries one publisher may have outstanding: its part of the window, but
    /// never less than one message's worth so each can always send.
    share: u64,
    /// Messages published, plus those reserved and about to be: a reservation is
    /// written or given back within one publish step.
    published: AtomicU64,
    /// Deliveries plus messages known missing (a later one arrived first): what no
    /// longer counts as outstanding.
    settled: AtomicU64,
    /// `settled`, per publisher index. It lags the total (a subscriber adds to it
    /// once per turn of its loop), which only makes a publisher wait longer.
    settled_by_publisher: Box<[AtomicU64]>,
}

impl Window {
    /// A window of `limit` deliveries over `publishers` publishers whose messages go
    /// to `fanout` subscribers each; `None` never closes.
    pub fn new(limit: Option<u64>, fanout: u64, publishers: usize) -> Window {
        let fanout = fanout.max(1);
        let share = match limit {
            Some(w) => w.div_ceil(publishers.max(1) as u64).max(fanout),
            None => u64::MAX,
        };
        Window {
            limit,
            fanout,
            share,
            published: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            settled_by_publisher: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Reserves up to `want` messages and returns how many it got: all of them when
    /// the window never closes, otherwise as many as fit without the outstanding
    /// deliveries passing the limit. Reserve before writing; give back what is not
    /// written (`give_back`).
    ///
    /// Every update of the counters is sequentially consistent, so one order holds
    /// for all of them: at the moment the exchange succeeds, the settled count is at
    /// least what was read, and published × fan-out − settled ≤ limit. Later
    /// settles only lower the outstanding figure and later claims keep the same
    /// inequality, so it holds at every instant. Deliveries actually in flight are
    /// fewer still: every message written was reserved first, and every settle is
    /// counted only after its delivery arrived.
    pub fn claim(&self, want: u64) -> u64 {
        if want == 0 {
            return 0;
        }
        let Some(limit) = self.limit else {
            self.published.fetch_add(want, SeqCst);
            return want;
        };
        let mut published = self.published.load(SeqCst);
        loop {
            let settled = self.settled.load(SeqCst);
            let outstanding = published
                .saturating_mul(self.fanout)
                .saturating_sub(settled);
            let n = want.min(limit.saturating_sub(outstanding) / self.fanout);
            if n == 0 {
                return 0;
            }
            match self
                .published
                .compare_exchange_weak(published, published + n, SeqCst, SeqCst)
            {
                Ok(_) => return n,
                Err(now) => published = now,
            }
        }
    }

    /// Returns reserved messages that were not written.
    pub fn give_back(&self, n: u64) {
        if n > 0 {
            self.published.fetch_sub(n, SeqCst);
        }
    }

    /// Deliveries that may start now (`u64::MAX` when the window never closes).
    pub fn room(&self) -> u64 {
        let Some(limit) = self.limit else {
            return u64::MAX;
        };
        limit.saturating_sub(self.outstanding())
    }

    /// Messages publisher `index`, having sent `sent` in all, may still send under
    /// its share of the window.
    ///
    /// A publisher whose share is taken by messages that will never arrive (lost
    /// while a client reconnected, with nothing later on its stream to show them
    /// missing) stops for the rest of the run, as the whole run once did when the
    /// window itself filled that way; the loss is reported either way.
    pub fn publisher_room(&self, index: u32, sent: u64) -> u64 {
        if self.limit.is_none() {
            return u64::MAX;
        }
        let settled = self
            .settled_by_publisher
            .get(index as usize)
            .map_or(0, |s| s.load(Relaxed));
        let outstanding = sent.saturating_mul(self.fanout).saturating_sub(settled);
        self.share.saturating_sub(outstanding) / self.fanout
    }

    /// `deliveries` arrived (or are known missing).
    pub fn settle(&self, deliveries: u64) {
        if deliveries > 0 {
            self.settled.fetch_add(deliveries, SeqCst);
        }
    }

    /// `deliveries` of publisher `index` settled; `settle` counts them in the total.
    pub fn settle_publisher(&self, index: u32, deliveries: u64) {
        if let Some(s) = self.settled_by_publisher.get(index as usize) {
            s.fetch_add(deliveries, Relaxed);
        }
    }

    /// Messages published (exact between publish steps).
    pub fn published(&self) -> u64 {
        self.published.load(SeqCst)
    }

    pub fn settled(&self) -> u64 {
        self.settled.load(SeqCst)
    }

    /// Published × fan-out − settled.
    pub fn outstanding(&self) -> u64 {
        self.published()
            .saturating_mul(self.fanout)
            .saturating_sub(self.settled())
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;
    use std::sync::Arc;

    /// xorshift: deterministic per thread, no dependencies.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Threads that claim, "send" part of each claim, give back the rest, and settle
    /// deliveries of what they sent at random, checking after every claim the
    /// deliveries actually in flight (sent × fan-out − settled, counted on their
    /// own). A claim that reads the counts and then adds to the published count
    /// without the exchange (two threads spending the same free room) fails this on
    /// every run, by 5 to 40 %.
    #[test]
    fn interleaved_claimers_never_exceed_the_window() {
        for (limit, fanout, threads) in [(800, 1, 4), (100, 3, 3), (7, 2, 4), (64, 20, 2)] {
            let w = Arc::new(Window::new(Some(limit), fanout, 1));
            let in_flight = Arc::new(AtomicI64::new(0));
            let peak = Arc::new(AtomicI64::new(0));
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (w, in_flight, peak) = (w.clone(), in_flight.clone(), peak.clone());
                    std::thread::spawn(move || {
                        let mut rnd = rng(t + 1);
                        // Deliveries this thread sent that nobody has settled yet.
                        let mut mine = 0u64;
                        for _ in 0..20_000 {
                            let got = w.claim(rnd() % (limit / fanout + 2));
                            let sent = if got > 0 {
                                got - rnd() % (got + 1) / 2
                            } else {
                                0
                            };
                            let now = in_flight.fetch_add((sent * fanout) as i64, SeqCst)
                                + (sent * fanout) as i64;
                            w.give_back(got - sent);
                            peak.fetch_max(now, SeqCst);
                            assert!(
                                now <= limit as i64,
                                "{now} deliveries in flight, window {limit}"
                            );
                            mine += sent * fanout;
                            // Settle some of this thread's own: the subscriber is
                            // elsewhere, the order of the counters is what matters.
                            let d = if rnd().is_multiple_of(4) {
                                mine
                            } else {
                                rnd() % (mine + 1)
                            };
                            mine -= d;
                            in_flight.fetch_sub(d as i64, SeqCst);
                            w.settle(d);
                            if rnd().is_multiple_of(8) {
                                std::thread::yield_now();
                            }
                        }
                        in_flight.fetch_sub(mine as i64, SeqCst);
                        w.settle(mine);
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("claimer");
            }
            assert_eq!(w.outstanding(), 0);
            assert!(
                peak.load(SeqCst) > 0,
                "the claimers sent something ({limit}, {fanout})"
            );
        }
    }

    #[test]
    fn a_claim_gets_what_fits_and_given_back_room_is_claimable_again() {
        let w = Window::new(Some(10), 3, 2);
        assert_eq!(w.claim(5), 3, "3 messages × 3 deliveries fit in 10");
        assert_eq!(w.claim(1), 0);
        w.give_back(1);
        assert_eq!((w.published(), w.room()), (2, 4));
        assert_eq!(w.claim(1), 1);
        w.settle(5);
        assert_eq!(w.outstanding(), 4);
        assert_eq!(w.claim(9), 2);
        assert_eq!(w.outstanding(), 10);
    }

    #[test]
    fn each_publisher_has_its_share_and_always_at_least_one_message() {
        let w = Window::new(Some(800), 1, 8);
        assert_eq!(w.publisher_room(3, 0), 100);
        assert_eq!(w.publisher_room(3, 100), 0);
        w.settle(40);
        w.settle_publisher(3, 40);
        assert_eq!(w.publisher_room(3, 100), 40);
        assert_eq!(w.publisher_room(4, 100), 0, "another publisher's settles");
        // More subscribers than the share would allow: one message still fits.
        let w = Window::new(Some(10), 20, 4);
        assert_eq!(w.publisher_room(0, 0), 1);
        assert_eq!(w.publisher_room(0, 1), 0);
    }

    #[test]
    fn without_a_limit_claims_are_granted_and_counted() {
        let w = Window::new(None, 5, 2);
        assert_eq!(w.claim(1_000_000), 1_000_000);
        assert_eq!(w.publisher_room(0, 1_000_000), u64::MAX);
        assert_eq!(w.room(), u64::MAX);
        assert_eq!(w.published(), 1_000_000);
    }
}

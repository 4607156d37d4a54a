//! Drops, logged rate-limited: at most one line per reason per interval across all
//! shards, each with the count since the previous line of that reason.
//!
//! The message path only bumps the shard's plain counters; each shard's periodic
//! sweep moves what it counted since its last sweep into a process-wide pending
//! count per reason, and whichever shard finds a reason's interval over first
//! writes the line. Atomics are touched once per sweep, never per message.

use super::stats::ShardStats;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Reasons, in the order of [`ShardStats::drops`].
const REASONS: usize = 9;

/// Milliseconds between two lines of one reason.
pub const DROP_LOG_INTERVAL_MS: u64 = 10_000;

/// Drops counted by some shard and not yet logged, per reason.
static PENDING: [AtomicU64; REASONS] = [const { AtomicU64::new(0) }; REASONS];
/// Earliest time (ms since [`epoch`]) the next line of each reason may be written.
static NEXT_LINE: [AtomicU64; REASONS] = [const { AtomicU64::new(0) }; REASONS];

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// One shard's view: what it has already handed over.
#[derive(Debug, Default)]
pub struct DropLog {
    handed_over: [u64; REASONS],
}

impl DropLog {
    /// Hands over this shard's new drops and writes any line that is due.
    pub fn sweep(&mut self, stats: &ShardStats, now: Instant) {
        let now_ms = now.saturating_duration_since(epoch()).as_millis() as u64;
        for (i, (reason, count)) in stats.drops().into_iter().enumerate() {
            let new = count - self.handed_over[i];
            if new > 0 {
                self.handed_over[i] = count;
                PENDING[i].fetch_add(new, Ordering::Relaxed);
            }
            if PENDING[i].load(Ordering::Relaxed) == 0 {
                continue;
            }
            let next = NEXT_LINE[i].load(Ordering::Relaxed);
            if now_ms < next {
                continue;
            }
            let claimed = NEXT_LINE[i].compare_exchange(
                next,
                now_ms + DROP_LOG_INTERVAL_MS,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if claimed.is_ok() {
                let n = PENDING[i].swap(0, Ordering::Relaxed);
                if n > 0 {
                    tracing::warn!(
                        reason,
                        count = n,
                        "messages dropped: {n} ({reason}) since the last such line"
                    );
                }
            }
        }
    }
}

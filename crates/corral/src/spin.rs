//! How long a waiter watches before it sleeps, learnt from its last waits.
//!
//! Watching for an answer due within microseconds is far cheaper than
//! sleeping and being woken across CPUs (35–60 µs on small VMs), but only
//! while the other side has a CPU to answer from. When the machine is busy
//! (a CPU hog, more runnable threads than CPUs), the watcher holds the very
//! CPU its peer waits for: every watch fails, and a round trip costs the
//! whole watch plus the wake-up. So the budget adapts, as glibc's adaptive
//! mutexes do: an answer caught while watching lets the next watch run
//! longer; after [`MISSES_TOLERATED`] watches in a row that ended in sleep
//! (one alone is noise: a page fault, a preempted peer), each further one
//! halves the budget, down to none, and then a wake-up on the same CPU (a
//! few µs) takes its place. Every
//! [`PROBE_EVERY`]th wait with no budget watches in full again, so a
//! machine that has calmed down is noticed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Below this a watch is not worth starting (ns).
const MIN_NS: u32 = 2_000;
/// One wait in this many watches in full while the budget is spent.
const PROBE_EVERY: u32 = 256;
/// Watches in a row that may end in sleep before the budget shrinks.
const MISSES_TOLERATED: u32 = 4;

/// This thread's CPU as a mark for shared memory: the CPU plus one, so
/// that 0 (a word never written) names none. A side that publishes stores
/// its mark; a side about to watch for it compares with [`ran_here`].
pub(crate) fn cpu_mark() -> u64 {
    crate::sys::current_cpu() as u64 + 1
}

/// Whether `mark` (from [`cpu_mark`]) names the CPU this thread runs on:
/// the thread that left it is not running now, and may wait for this very
/// CPU, so a watch for it would hold the CPU it needs.
pub(crate) fn ran_here(mark: u64) -> bool {
    mark == cpu_mark()
}

/// A learnt watch budget (shared by the threads of one waiting side; the
/// counters are hints, so relaxed updates suffice).
#[derive(Debug)]
pub(crate) struct SpinBudget {
    max_ns: u32,
    ns: AtomicU32,
    idle_waits: AtomicU32,
    /// Watches in a row that ended in sleep.
    misses: AtomicU32,
}

impl SpinBudget {
    /// A budget that starts at, and never exceeds, `max`.
    pub(crate) const fn new(max: Duration) -> SpinBudget {
        let max_ns = max.as_nanos() as u32;
        SpinBudget {
            max_ns,
            ns: AtomicU32::new(max_ns),
            idle_waits: AtomicU32::new(0),
            misses: AtomicU32::new(0),
        }
    }

    /// When this wait stops watching (`now` when it should not watch at all).
    pub(crate) fn watch_until(&self, now: Instant) -> Instant {
        let mut ns = self.ns.load(Ordering::Relaxed);
        if ns == 0
            && self
                .idle_waits
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(PROBE_EVERY)
        {
            ns = self.max_ns;
        }
        now + Duration::from_nanos(u64::from(ns))
    }

    /// The answer came while watching, `waited` after the wait began:
    /// watch longer next time (at least twice that long).
    pub(crate) fn caught(&self, waited: Duration) {
        let ns = self.ns.load(Ordering::Relaxed);
        let waited = u32::try_from(waited.as_nanos()).unwrap_or(u32::MAX);
        let next = ns.max(waited).saturating_mul(2).clamp(MIN_NS, self.max_ns);
        self.ns.store(next, Ordering::Relaxed);
        self.misses.store(0, Ordering::Relaxed);
    }

    /// The watch ran out and the waiter slept: past a few such waits in a
    /// row, watch half as long next time.
    pub(crate) fn missed(&self) {
        if self.misses.fetch_add(1, Ordering::Relaxed) + 1 < MISSES_TOLERATED {
            return;
        }
        let half = self.ns.load(Ordering::Relaxed) / 2;
        self.ns
            .store(if half < MIN_NS { 0 } else { half }, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch_ns(budget: &SpinBudget) -> u128 {
        let now = Instant::now();
        (budget.watch_until(now) - now).as_nanos()
    }

    #[test]
    fn misses_shrink_the_watch_to_none_and_catches_grow_it_back() {
        let budget = SpinBudget::new(Duration::from_micros(100));
        assert_eq!(watch_ns(&budget), 100_000);
        for _ in 0..MISSES_TOLERATED - 1 {
            budget.missed();
        }
        // A few misses in a row are noise.
        assert_eq!(watch_ns(&budget), 100_000);
        for _ in 0..20 {
            budget.missed();
        }
        // Spent: only one wait in PROBE_EVERY watches (in full).
        let watching = (0..PROBE_EVERY * 2)
            .filter(|_| watch_ns(&budget) > 0)
            .count();
        assert_eq!(watching, 2);
        // A probe caught an answer 5 µs in: the next watch covers that.
        budget.caught(Duration::from_micros(5));
        assert_eq!(watch_ns(&budget), 10_000);
        budget.caught(Duration::ZERO);
        assert_eq!(watch_ns(&budget), 20_000);
        for _ in 0..20 {
            budget.caught(Duration::ZERO);
        }
        assert_eq!(watch_ns(&budget), 100_000);
        for _ in 0..MISSES_TOLERATED {
            budget.missed();
        }
        assert_eq!(watch_ns(&budget), 50_000);
    }
}

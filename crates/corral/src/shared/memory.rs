//! What corral's shared-memory algorithms (the queue's ring, semaphores,
//! conditions, events, barriers) need from the memory they live in, so that
//! the same code runs on a shared memory region (the real thing) and on
//! loom's model of memory (the model checker, in the tests).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::shared::object::Object;
use crate::sys::{self, Acquired, NotAcquired};

/// How long a waiting side watches the other before it sleeps: waking a
/// sleeping process costs 35–60 µs on a 2-CPU machine.
pub(crate) const SPIN: Duration = Duration::from_micros(50);
/// Spins for [`SPIN`] from its first use (the clock is not read before a
/// wait is needed: reading it costs as much as a whole uncontended get).
pub(crate) struct Spinner(Option<Instant>);

impl Spinner {
    pub(crate) fn new() -> Spinner {
        Spinner(None)
    }

    /// `true` (after a pause instruction) while the spin lasts. With
    /// `peer_here` (the side waited for last ran on this very CPU, so it is
    /// not running now), the spin yields the CPU instead: a pause would
    /// hold the CPU that side needs, and sleeping at once would cost a
    /// wake-up per message while the two take turns on one CPU.
    pub(crate) fn spin(&mut self, peer_here: bool) -> bool {
        let now = Instant::now();
        if now >= *self.0.get_or_insert(now + SPIN) {
            return false;
        }
        if peer_here {
            std::thread::yield_now();
        } else {
            // Between looks, leave the other side's line alone for a while:
            // every look steals it from the process writing it.
            for _ in 0..8 {
                std::hint::spin_loop();
            }
        }
        true
    }
}

/// How a call waits.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    /// As long as it takes.
    Block,
    /// Not at all.
    Try,
    /// Until the instant.
    Until(Instant),
}

impl Wait {
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Wait::Block => None,
            Wait::Try => Some(Instant::now()),
            Wait::Until(at) => Some(at),
        }
    }
}

/// A 64-bit atomic word.
pub(crate) trait Word64 {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn fetch_add(&self, value: u64, order: Ordering) -> u64;
    fn fetch_or(&self, value: u64, order: Ordering) -> u64;
    fn fetch_and(&self, value: u64, order: Ordering) -> u64;
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
}

/// A 32-bit atomic word, the unit futexes wait on.
pub(crate) trait Word32 {
    fn load(&self, order: Ordering) -> u32;
    fn store(&self, value: u32, order: Ordering);
    fn fetch_add(&self, value: u32, order: Ordering) -> u32;
    fn fetch_or(&self, value: u32, order: Ordering) -> u32;
    fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u32, u32>;
}

/// The ring's view of its memory: words, bytes, robust locks and futexes.
pub(crate) trait Memory {
    type U64: Word64;
    type U32: Word32;

    /// The 64-bit word at byte `at`.
    fn w64(&self, at: usize) -> &Self::U64;
    /// The 32-bit word at byte `at`.
    fn w32(&self, at: usize) -> &Self::U32;
    /// Copies `bytes` in at byte `at`.
    fn store(&self, at: usize, bytes: &[u8]);
    /// Copies `out.len()` bytes out from byte `at`.
    fn load(&self, at: usize, out: &mut [u8]);
    /// Appends `len` bytes from byte `at` to `out`.
    fn append(&self, at: usize, len: usize, out: &mut Vec<u8>);
    /// A full memory fence.
    fn fence(&self);
    /// Locks the robust lock at byte `at` (`Err`: busy, or held by this
    /// thread, or timed out).
    fn lock(&self, at: usize, wait: Wait) -> Result<Acquired, ()>;
    /// Unlocks the lock at byte `at`, held by this thread.
    fn unlock(&self, at: usize);
    /// Sleeps while `word` holds `expected`, until `deadline`; `false` if
    /// the deadline had passed.
    fn wait_until(&self, word: &Self::U32, expected: u32, deadline: Option<Instant>) -> bool;
    /// Sleeps while `word` holds `expected`, at most `timeout`.
    fn wait_for(&self, word: &Self::U32, expected: u32, timeout: Duration);
    /// Wakes up to `count` sleepers on `word`; returns how many woke.
    fn wake(&self, word: &Self::U32, count: u32) -> usize;
    /// This process's id, as [`Sleepers`] records it.
    fn pid(&self) -> u32;
    /// Is process `pid` alive (not gone, not a zombie)?
    fn alive(&self, pid: u32) -> bool;
    /// A monotonic clock in nanoseconds, the same in every process.
    fn now_ns(&self) -> u64;
    /// Spins a little before sleeping (yielding the CPU instead of
    /// pausing if `peer_here`, see [`Spinner::spin`]): `true` while it is
    /// worth it.
    fn spin(&self, spinner: &mut Spinner, peer_here: bool) -> bool {
        spinner.spin(peer_here)
    }
}

/// Implements [`Word64`] and [`Word32`] for atomic types with the standard
/// methods (std's here, loom's in the model).
macro_rules! delegate_words {
    ($a64:ty, $a32:ty) => {
        impl $crate::shared::memory::Word64 for $a64 {
            #[inline]
            fn load(&self, order: Ordering) -> u64 {
                <$a64>::load(self, order)
            }
            #[inline]
            fn store(&self, value: u64, order: Ordering) {
                <$a64>::store(self, value, order)
            }
            #[inline]
            fn fetch_add(&self, value: u64, order: Ordering) -> u64 {
                <$a64>::fetch_add(self, value, order)
            }
            #[inline]
            fn fetch_or(&self, value: u64, order: Ordering) -> u64 {
                <$a64>::fetch_or(self, value, order)
            }
            #[inline]
            fn fetch_and(&self, value: u64, order: Ordering) -> u64 {
                <$a64>::fetch_and(self, value, order)
            }
            #[inline]
            fn compare_exchange(
                &self,
                current: u64,
                new: u64,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u64, u64> {
                <$a64>::compare_exchange(self, current, new, success, failure)
            }
        }

        impl $crate::shared::memory::Word32 for $a32 {
            #[inline]
            fn load(&self, order: Ordering) -> u32 {
                <$a32>::load(self, order)
            }
            #[inline]
            fn store(&self, value: u32, order: Ordering) {
                <$a32>::store(self, value, order)
            }
            #[inline]
            fn fetch_add(&self, value: u32, order: Ordering) -> u32 {
                <$a32>::fetch_add(self, value, order)
            }
            #[inline]
            fn fetch_or(&self, value: u32, order: Ordering) -> u32 {
                <$a32>::fetch_or(self, value, order)
            }
            #[inline]
            fn compare_exchange(
                &self,
                current: u32,
                new: u32,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u32, u32> {
                <$a32>::compare_exchange(self, current, new, success, failure)
            }
        }
    };
}
#[cfg(test)]
pub(crate) use delegate_words;

delegate_words!(AtomicU64, AtomicU32);

/// An object's shared memory region: the real thing.
pub(crate) type Region = Object;

impl Memory for Object {
    type U64 = AtomicU64;
    type U32 = AtomicU32;

    #[inline]
    fn w64(&self, at: usize) -> &AtomicU64 {
        self.region().word64(at)
    }

    #[inline]
    fn w32(&self, at: usize) -> &AtomicU32 {
        self.region().word32(at)
    }

    #[inline]
    fn store(&self, at: usize, bytes: &[u8]) {
        self.region().store_bytes(at, bytes);
    }

    #[inline]
    fn load(&self, at: usize, out: &mut [u8]) {
        self.region().load_into(at, out);
    }

    #[inline]
    fn append(&self, at: usize, len: usize, out: &mut Vec<u8>) {
        self.region().load_append(at, len, out);
    }

    #[inline]
    fn fence(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    #[inline]
    fn lock(&self, at: usize, wait: Wait) -> Result<Acquired, ()> {
        let m = self.region().robust_mutex(at);
        let result = match wait {
            Wait::Block => m.lock(),
            Wait::Try => m.try_lock(),
            Wait::Until(deadline) => m.lock_until(deadline),
        };
        match result {
            Ok(how) => Ok(how),
            Err(NotAcquired::Busy | NotAcquired::TimedOut) => Err(()),
            Err(NotAcquired::Deadlock) if matches!(wait, Wait::Try) => Err(()),
            Err(NotAcquired::Deadlock) => {
                panic!("this thread already holds a corral lock it is waiting for: a deadlock")
            }
            Err(NotAcquired::Os(e)) => panic!("a shared lock is corrupt: {e}"),
        }
    }

    #[inline]
    fn unlock(&self, at: usize) {
        self.region().robust_mutex(at).unlock();
    }

    fn wait_until(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> bool {
        sys::futex_wait_until(word, expected, deadline)
    }

    fn wait_for(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        sys::futex_wait(word, expected, Some(timeout));
    }

    fn wake(&self, word: &AtomicU32, count: u32) -> usize {
        sys::futex_wake(word, count)
    }

    fn pid(&self) -> u32 {
        std::process::id()
    }

    fn alive(&self, pid: u32) -> bool {
        sys::process_alive(pid)
    }

    fn now_ns(&self) -> u64 {
        sys::monotonic_ns()
    }
}

/// Who sleeps on a futex, robustly: 64 slots, each holding the pid of its
/// sleeper and marked in a bitmask. A sleeper that finds every slot taken
/// is counted nowhere: it naps ([`OVERFLOW_NAP`] at most) and looks again,
/// so no count can leak when sleepers are killed, however many at once.
///
/// A plain count of sleepers leaks when a sleeper is SIGKILLed: the waker
/// then makes a futex system call on every publication forever. Here a
/// wake that woke nobody while the mask says someone sleeps makes the waker
/// check the recorded pids and clear the slots of dead processes
/// ([`Sleepers::heal`]). A live sleeper is never cleared, so no wake-up is
/// ever lost to healing.
///
/// Layout at `at`: the mask (u64), a word no longer used (u32), the time of
/// the last healing (u64, monotonic ns), then at `at + 64` the 64 pid slots
/// (u32 each).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sleepers {
    at: usize,
}

/// How often at most [`Sleepers`] looks for dead sleepers (a wake that woke
/// no one is usually a sleeper that was woken and has not withdrawn yet).
const HEAL_EVERY_NS: u64 = 50_000_000;

/// How long a sleeper that found no slot sleeps before it looks again (no
/// waker knows it sleeps).
const OVERFLOW_NAP: Duration = Duration::from_millis(2);

/// A sleeper's place in [`Sleepers`] (`None`: no slot was free).
#[derive(Debug)]
pub(crate) struct Ticket(Option<usize>);

impl Sleepers {
    /// Bytes the record takes.
    pub(crate) const BYTES: usize = 64 + 64 * 4;

    /// The record at byte `at` (8-aligned).
    pub(crate) const fn at(at: usize) -> Sleepers {
        Sleepers { at }
    }

    fn slot(&self, i: usize) -> usize {
        self.at + 64 + 4 * i
    }

    /// Announces the caller as a sleeper, then fences (the sleeper's half of
    /// the Dekker pair with [`Sleepers::wake`]).
    pub(crate) fn enter<M: Memory>(&self, m: &M) -> Ticket {
        let me = m.pid().max(1);
        let start = me as usize % 64;
        for k in 0..64 {
            let i = (start + k) % 64;
            if m.w32(self.slot(i))
                .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                m.w64(self.at).fetch_or(1 << i, Ordering::SeqCst);
                m.fence();
                return Ticket(Some(i));
            }
        }
        Ticket(None)
    }

    /// Sleeps while `word` holds `expected`, until `deadline`; returns
    /// false once the deadline has passed (true: woken, or spuriously). A
    /// sleeper without a slot only naps, since no waker knows of it.
    pub(crate) fn sleep<M: Memory>(
        &self,
        m: &M,
        ticket: &Ticket,
        word: &M::U32,
        expected: u32,
        deadline: Option<Instant>,
    ) -> bool {
        if ticket.0.is_some() {
            return m.wait_until(word, expected, deadline);
        }
        let nap = Instant::now() + OVERFLOW_NAP;
        let until = deadline.map_or(nap, |d| d.min(nap));
        m.wait_until(word, expected, Some(until));
        deadline.is_none_or(|d| Instant::now() < d)
    }

    /// Withdraws a sleeper.
    pub(crate) fn leave<M: Memory>(&self, m: &M, ticket: Ticket) {
        if let Some(i) = ticket.0 {
            m.w64(self.at).fetch_and(!(1 << i), Ordering::SeqCst);
            m.w32(self.slot(i)).store(0, Ordering::Release);
        }
    }

    /// After the waker's publication and fence: wakes up to `count`
    /// sleepers on `word` if any are announced, healing the record if the
    /// announced ones turn out to be dead.
    #[inline]
    pub(crate) fn wake<M: Memory>(&self, m: &M, word: &M::U32, count: u32) {
        if m.w64(self.at).load(Ordering::Relaxed) == 0 {
            return;
        }
        if m.wake(word, count) == 0 {
            // Usually a sleeper already woken and not yet withdrawn: heal
            // at most every `HEAL_EVERY`, whoever calls.
            let now = m.now_ns();
            let last = m.w64(self.at + 16).load(Ordering::Relaxed);
            if now.saturating_sub(last) >= HEAL_EVERY_NS
                && m.w64(self.at + 16)
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                self.heal(m);
            }
        }
    }

    /// How many sleepers are announced.
    pub(crate) fn count<M: Memory>(&self, m: &M) -> u32 {
        m.w64(self.at).load(Ordering::Acquire).count_ones()
    }

    /// Clears the slots of sleepers whose process is gone.
    #[cold]
    fn heal<M: Memory>(&self, m: &M) {
        let mask = m.w64(self.at).load(Ordering::Acquire);
        for i in (0..64).filter(|i| mask & (1 << i) != 0) {
            let pid = m.w32(self.slot(i)).load(Ordering::Acquire);
            if pid != 0 && !m.alive(pid) {
                m.w64(self.at).fetch_and(!(1 << i), Ordering::SeqCst);
                let _ = m.w32(self.slot(i)).compare_exchange(
                    pid,
                    0,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
    }
}

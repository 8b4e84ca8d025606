//! `Barrier`: N processes meet, then all go on.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::deadline;
use crate::Error;
use crate::shared::memory::{Memory, Word32};
use crate::shared::object::{HEADER, Kind, Object, object_handle_serde};
use crate::sys::code;

/// How many have arrived in the current round.
const ARRIVED: usize = HEADER;
/// The round number (low 30 bits), the broken flag (top bit) and the reset
/// flag (the round ended by [`Barrier::reset`]): waiters sleep on it, so a
/// completed round, a break and a reset all wake them.
const ROUND: usize = HEADER + 4;
const BROKEN: u32 = 1 << 31;
const RESET: u32 = 1 << 30;
const COUNTER: u32 = RESET - 1;

/// Header parameters: parties, default timeout (ns, 0: none), action offset
/// and the identity of the binary it belongs to (0: no action).
const P_PARTIES: usize = 0;
const P_TIMEOUT: usize = 1;
const P_ACTION: usize = 2;
const P_ACTION_BINARY: usize = 3;

/// A process-shared barrier (Python's `multiprocessing.Barrier`): each of
/// `parties` callers of [`Barrier::wait`] blocks until all have arrived.
///
/// A wait that times out, or [`Barrier::abort`], breaks the barrier: every
/// waiter, now and later, gets [`BarrierError::Broken`] (Python's
/// `BrokenBarrierError`). A party that dies before arriving leaves the
/// others waiting, as in Python: use [`Barrier::wait_timeout`] when parties
/// may die.
///
/// # Examples
///
/// ```no_run
/// use corral::Barrier;
/// fn party(b: Barrier) -> bool { b.wait().unwrap().is_leader() }
/// corral::init();
/// let b = Barrier::new(3).unwrap();
/// let kids: Vec<_> = (0..2).map(|_| corral::spawn(party, b.clone()).unwrap()).collect();
/// let mut leaders = b.wait().unwrap().is_leader() as u32;
/// for k in kids { leaders += k.join().unwrap() as u32; }
/// assert_eq!(leaders, 1);
/// ```
#[derive(Clone)]
pub struct Barrier {
    obj: Object,
}

/// How a [`Barrier::wait`] ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarrierWaitResult {
    index: u32,
}

impl BarrierWaitResult {
    /// The arrival order of this party in its round, 0-based (Python's
    /// return value of `wait`).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Is this the last party to arrive (exactly one per round)?
    pub fn is_leader(&self) -> bool {
        self.index == 0
    }
}

/// Why a [`Barrier::wait`] failed.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
#[non_exhaustive]
pub enum BarrierError {
    /// The barrier is broken (a wait timed out or it was aborted).
    #[error("the barrier is broken: a party timed out or it was aborted")]
    Broken,
    /// This wait timed out (and broke the barrier for everyone).
    #[error("timed out waiting at the barrier; it is now broken")]
    Timeout,
}

/// Options for a [`Barrier`]: Python's `Barrier(parties, action=,
/// timeout=)`. Made by [`Barrier::builder`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// fn round_done() { println!("everyone arrived") }
/// let b = corral::Barrier::builder(1)
///     .action(round_done)
///     .timeout(Duration::from_secs(30))
///     .build()
///     .unwrap();
/// assert!(b.wait().unwrap().is_leader());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct BarrierBuilder {
    parties: u32,
    action: Option<fn()>,
    timeout: Option<Duration>,
}

impl BarrierBuilder {
    /// A function the last party to arrive runs, once per round, before
    /// any party goes on (Python's `action`). Every process that waits
    /// runs the same binary, so a plain `fn()` can run in any of them. If
    /// it panics, the barrier breaks (the others get
    /// [`BarrierError::Broken`]) and the panic goes on in that party.
    pub fn action(mut self, action: fn()) -> BarrierBuilder {
        self.action = Some(action);
        self
    }

    /// The limit of a [`Barrier::wait`] (Python's `timeout`); past it the
    /// wait fails with [`BarrierError::Timeout`] and breaks the barrier.
    pub fn timeout(mut self, timeout: Duration) -> BarrierBuilder {
        self.timeout = Some(timeout);
        self
    }

    /// Creates the barrier.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for 0 parties or more than 2³⁰ − 1;
    /// [`Error::Io`] if shared memory cannot be created.
    pub fn build(self) -> Result<Barrier, Error> {
        if self.parties == 0 || self.parties > COUNTER {
            return Err(Error::Unsupported(
                "a Barrier needs between 1 and 2^30 - 1 parties",
            ));
        }
        let timeout = self.timeout.map_or(0, |t| {
            u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1)
        });
        let (action, binary) = match self.action {
            Some(f) => (code::action_offset(f), code::identity_hash()),
            None => (0, 0),
        };
        let params = [u64::from(self.parties), timeout, action as u64, binary];
        Ok(Barrier {
            obj: Object::create(Kind::Barrier, ROUND + 4, &params)?,
        })
    }
}

impl Barrier {
    /// A barrier for `parties` participants.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for 0 parties or more than 2³⁰ − 1;
    /// [`Error::Io`] if shared memory cannot be created.
    pub fn new(parties: u32) -> Result<Barrier, Error> {
        Barrier::builder(parties).build()
    }

    /// Options: an action run once per round, a default timeout.
    pub fn builder(parties: u32) -> BarrierBuilder {
        BarrierBuilder {
            parties,
            action: None,
            timeout: None,
        }
    }

    fn from_object(obj: Object) -> Result<Barrier, String> {
        Ok(Barrier { obj })
    }

    /// How many parties the barrier waits for.
    pub fn parties(&self) -> u32 {
        self.obj.param(P_PARTIES) as u32
    }

    /// The default limit of [`wait`](Barrier::wait), if one was set.
    pub fn timeout(&self) -> Option<Duration> {
        match self.obj.param(P_TIMEOUT) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// The action, resolved in this process (a handle from a different
    /// binary cannot reach here: handles cross only to corral children).
    fn action(&self) -> Option<fn()> {
        let binary = self.obj.param(P_ACTION_BINARY);
        if binary == 0 {
            return None;
        }
        let verified = code::Verified::check_hash(binary).ok()?;
        Some(verified.action(self.obj.param(P_ACTION) as i64))
    }

    /// Returns the barrier to its first state (Python's `reset`): parties
    /// waiting now get [`BarrierError::Broken`]; a broken barrier can be
    /// used again. As in Python, a party in the middle of arriving while it
    /// runs may be counted in the new round: reset only when every party's
    /// state is known.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = corral::Barrier::new(2).unwrap();
    /// b.abort();
    /// assert!(b.is_broken());
    /// b.reset();
    /// assert!(!b.is_broken());
    /// ```
    pub fn reset(&self) {
        let round = self.obj.w32(ROUND);
        let now = round.load(Ordering::SeqCst);
        self.obj.w32(ARRIVED).store(0, Ordering::SeqCst);
        round.store(((now & COUNTER) + 1) & COUNTER | RESET, Ordering::SeqCst);
        self.obj.wake(round, u32::MAX);
    }

    /// How many parties wait at the barrier now.
    pub fn n_waiting(&self) -> u32 {
        self.obj.w32(ARRIVED).load(Ordering::Acquire)
    }

    /// Is the barrier broken?
    pub fn is_broken(&self) -> bool {
        self.obj.w32(ROUND).load(Ordering::Acquire) & BROKEN != 0
    }

    /// Breaks the barrier: every waiter, now and later, gets
    /// [`BarrierError::Broken`].
    ///
    /// # Examples
    ///
    /// ```
    /// let b = corral::Barrier::new(2).unwrap();
    /// b.abort();
    /// assert_eq!(b.wait(), Err(corral::BarrierError::Broken));
    /// ```
    pub fn abort(&self) {
        abort(&self.obj);
    }

    /// Waits until all parties have arrived (at most the barrier's
    /// [`timeout`](BarrierBuilder::timeout), if it has one).
    ///
    /// # Errors
    ///
    /// [`BarrierError::Broken`] if the barrier is or becomes broken (or is
    /// reset); [`BarrierError::Timeout`] past the barrier's timeout.
    pub fn wait(&self) -> Result<BarrierWaitResult, BarrierError> {
        let limit = self.timeout().and_then(deadline);
        wait_until(&self.obj, self.parties(), limit, self.action())
    }

    /// Waits at most `timeout`; on expiry the barrier breaks (as in Python).
    ///
    /// # Errors
    ///
    /// [`BarrierError::Timeout`] for this caller, [`BarrierError::Broken`]
    /// for the others.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<BarrierWaitResult, BarrierError> {
        wait_until(&self.obj, self.parties(), deadline(timeout), self.action())
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.is_broken())
            .finish()
    }
}

object_handle_serde!(Barrier, Kind::Barrier);

fn abort<M: Memory>(m: &M) {
    m.w32(ROUND).fetch_or(BROKEN, Ordering::SeqCst);
    m.wake(m.w32(ROUND), u32::MAX);
}

fn wait_until<M: Memory>(
    m: &M,
    parties: u32,
    deadline: Option<Instant>,
    action: Option<fn()>,
) -> Result<BarrierWaitResult, BarrierError> {
    let round = m.w32(ROUND).load(Ordering::SeqCst);
    if round & BROKEN != 0 {
        return Err(BarrierError::Broken);
    }
    let arrived = m.w32(ARRIVED).fetch_add(1, Ordering::SeqCst) + 1;
    let index = parties - arrived;
    if arrived == parties {
        if let Some(action) = action {
            // Run before anyone goes on; a panic breaks the barrier.
            if let Err(panic) = std::panic::catch_unwind(action) {
                abort(m);
                std::panic::resume_unwind(panic);
            }
        }
        // The last to arrive opens the next round, then wakes the others
        // (who sleep on the round word: the change itself cannot be missed).
        m.w32(ARRIVED).store(0, Ordering::SeqCst);
        let next = ((round & COUNTER) + 1) & COUNTER;
        if m.w32(ROUND)
            .compare_exchange(round, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(BarrierError::Broken);
        }
        m.wake(m.w32(ROUND), u32::MAX);
        return Ok(BarrierWaitResult { index });
    }
    loop {
        let now = m.w32(ROUND).load(Ordering::SeqCst);
        if now & BROKEN != 0 {
            return Err(BarrierError::Broken);
        }
        if now != round {
            if now & RESET != 0 && now & COUNTER == ((round & COUNTER) + 1) & COUNTER {
                return Err(BarrierError::Broken);
            }
            return Ok(BarrierWaitResult { index });
        }
        if !m.wait_until(m.w32(ROUND), round, deadline) {
            abort(m);
            return Err(BarrierError::Timeout);
        }
    }
}

/// The barrier under loom: every party passes each round, with one leader
/// per round, and no party runs into the next round early.
#[cfg(test)]
mod model {
    use crate::shared::model::{Model, bounded};

    #[test]
    fn three_parties_two_rounds() {
        bounded(2).check(|| {
            let m = Model::new(super::ROUND + 4, 0);
            let others: Vec<_> = (0..2)
                .map(|_| {
                    let m = m.clone();
                    loom::thread::spawn(move || {
                        (0..2)
                            .map(|_| super::wait_until(&m, 3, None, None).unwrap().is_leader())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mine: Vec<bool> = (0..2)
                .map(|_| super::wait_until(&m, 3, None, None).unwrap().is_leader())
                .collect();
            let theirs: Vec<Vec<bool>> = others.into_iter().map(|t| t.join().unwrap()).collect();
            for round in 0..2 {
                let leaders = [mine[round], theirs[0][round], theirs[1][round]];
                assert_eq!(leaders.iter().filter(|&&l| l).count(), 1);
            }
        });
    }
}

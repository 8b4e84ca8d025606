//! `Barrier`: N processes meet, then all go on.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::deadline;
use crate::Error;
use crate::shared::memory::{Memory, Word32};
use crate::shared::object::{HEADER, Kind, Object, object_handle_serde};

/// How many have arrived in the current round.
const ARRIVED: usize = HEADER;
/// The round number (low 31 bits) and the broken flag (top bit): waiters
/// sleep on it, so both a completed round and a break wake them.
const ROUND: usize = HEADER + 4;
const BROKEN: u32 = 1 << 31;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BarrierError {
    /// The barrier is broken (a wait timed out or it was aborted).
    #[error("the barrier is broken: a party timed out or it was aborted")]
    Broken,
    /// This wait timed out (and broke the barrier for everyone).
    #[error("timed out waiting at the barrier; it is now broken")]
    Timeout,
}

impl Barrier {
    /// A barrier for `parties` participants.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for 0 parties or more than 2³¹ − 1;
    /// [`Error::Io`] if shared memory cannot be created.
    pub fn new(parties: u32) -> Result<Barrier, Error> {
        if parties == 0 || parties >= BROKEN {
            return Err(Error::Unsupported(
                "a Barrier needs between 1 and 2^31 - 1 parties",
            ));
        }
        Ok(Barrier {
            obj: Object::create(Kind::Barrier, ROUND + 4, &[u64::from(parties)])?,
        })
    }

    fn from_object(obj: Object) -> Result<Barrier, String> {
        Ok(Barrier { obj })
    }

    /// How many parties the barrier waits for.
    pub fn parties(&self) -> u32 {
        self.obj.param(0) as u32
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

    /// Waits until all parties have arrived.
    ///
    /// # Errors
    ///
    /// [`BarrierError::Broken`] if the barrier is or becomes broken.
    pub fn wait(&self) -> Result<BarrierWaitResult, BarrierError> {
        wait_until(&self.obj, self.parties(), None)
    }

    /// Waits at most `timeout`; on expiry the barrier breaks (as in Python).
    ///
    /// # Errors
    ///
    /// [`BarrierError::Timeout`] for this caller, [`BarrierError::Broken`]
    /// for the others.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<BarrierWaitResult, BarrierError> {
        wait_until(&self.obj, self.parties(), deadline(timeout))
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
) -> Result<BarrierWaitResult, BarrierError> {
    let round = m.w32(ROUND).load(Ordering::SeqCst);
    if round & BROKEN != 0 {
        return Err(BarrierError::Broken);
    }
    let arrived = m.w32(ARRIVED).fetch_add(1, Ordering::SeqCst) + 1;
    let index = parties - arrived;
    if arrived == parties {
        // The last to arrive opens the next round, then wakes the others
        // (who sleep on the round word: the change itself cannot be missed).
        m.w32(ARRIVED).store(0, Ordering::SeqCst);
        let next = (round + 1) & !BROKEN;
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
                            .map(|_| super::wait_until(&m, 3, None).unwrap().is_leader())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mine: Vec<bool> = (0..2)
                .map(|_| super::wait_until(&m, 3, None).unwrap().is_leader())
                .collect();
            let theirs: Vec<Vec<bool>> = others.into_iter().map(|t| t.join().unwrap()).collect();
            for round in 0..2 {
                let leaders = [mine[round], theirs[0][round], theirs[1][round]];
                assert_eq!(leaders.iter().filter(|&&l| l).count(), 1);
            }
        });
    }
}

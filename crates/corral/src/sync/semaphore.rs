//! `Semaphore`: a fixed number of permits, each a robust mutex.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{AcquireError, deadline};
use crate::Error;
use crate::shared::memory::{Memory, Sleepers, Wait, Word32};
use crate::shared::object::{HEADER, Kind, Object, object_handle_serde};
use crate::sys::{self, Acquired};

/// Counts releases: sleepers wait for it to change.
const RELEASED: usize = HEADER;
/// Who sleeps waiting for a permit.
const SLEEPERS: Sleepers = Sleepers::at(HEADER + 64);
/// The permits' mutexes, one cache line each.
const SLOTS: usize = (HEADER + 64 + Sleepers::BYTES).next_multiple_of(64);

/// The most permits a semaphore may have.
const MAX_PERMITS: usize = 1 << 16;

/// How long a sleeping acquirer goes without checking for permits whose
/// holder died (a death wakes nobody: the holder's permit is a mutex no one
/// sleeps on).
const DEAD_HOLDER_CHECK: Duration = Duration::from_millis(20);

/// A process-shared counting semaphore (Python's `multiprocessing.Semaphore`
/// used as `with sem:`), robust to a holder that dies.
///
/// Each permit is a robust mutex: a holder killed while holding one gives it
/// back through the kernel, and the acquirer that picks it up is told with
/// [`AcquireError::OwnerDied`]. Permits are taken and returned through
/// [`SemaphoreGuard`]s, so a semaphore can never be released more often than
/// it was acquired: every corral semaphore is bounded, and
/// [`BoundedSemaphore`] is the same type.
///
/// # Examples
///
/// ```
/// let sem = corral::Semaphore::new(2).unwrap();
/// let a = sem.acquire().unwrap();
/// let b = sem.acquire().unwrap();
/// assert!(sem.try_acquire().is_err());
/// drop(a);
/// assert!(sem.try_acquire().is_ok());
/// # drop(b);
/// ```
#[derive(Clone)]
pub struct Semaphore {
    obj: Object,
}

/// Python's `BoundedSemaphore`: see [`Semaphore`], which is always bounded.
pub type BoundedSemaphore = Semaphore;

impl Semaphore {
    /// A semaphore with `permits` permits, all free.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for 0 or more than 65,536 permits;
    /// [`Error::Io`] if shared memory cannot be created.
    pub fn new(permits: usize) -> Result<Semaphore, Error> {
        if permits == 0 || permits > MAX_PERMITS {
            return Err(Error::Unsupported(
                "a Semaphore needs between 1 and 65,536 permits",
            ));
        }
        let obj = Object::create(
            Kind::Semaphore,
            SLOTS + permits * sys::MUTEX_BYTES,
            &[permits as u64],
        )?;
        for i in 0..permits {
            obj.region()
                .robust_mutex(SLOTS + i * sys::MUTEX_BYTES)
                .init(false)
                .map_err(Error::io("initialising a process-shared mutex"))?;
        }
        Ok(Semaphore { obj })
    }

    fn from_object(obj: Object) -> Result<Semaphore, String> {
        let permits = obj.param(0) as usize;
        if permits == 0
            || permits > MAX_PERMITS
            || obj.region().len() < SLOTS + permits * sys::MUTEX_BYTES
        {
            return Err("a corrupt Semaphore handle".into());
        }
        Ok(Semaphore { obj })
    }

    /// How many permits the semaphore has (held or not).
    pub fn permits(&self) -> usize {
        self.obj.param(0) as usize
    }

    /// How many permits are free now (Python's `get_value()`, which macOS
    /// lacks). A permit whose holder died is free (its next taker is told).
    /// The answer may be stale by the time it is read.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = corral::Semaphore::new(3).unwrap();
    /// let held = sem.acquire().unwrap();
    /// assert_eq!(sem.value(), 2);
    /// drop(held);
    /// assert_eq!(sem.value(), 3);
    /// ```
    #[doc(alias = "get_value")]
    pub fn value(&self) -> usize {
        (0..self.permits())
            .filter(|&i| self.obj.region().robust_mutex(slot_at(i)).owner() == 0)
            .count()
    }

    /// Returns a permit this thread holds without a guard (one kept with
    /// [`SemaphoreGuard::keep`]): Python's `acquire()` … `release()`
    /// written apart.
    ///
    /// Each permit is a robust lock owned by the thread that took it, which
    /// is what lets a dead holder's permit come back; so only that thread
    /// can return it. Python's other use, `Semaphore(0)` released by
    /// another process as a signal, is an [`Event`](crate::Event) or a
    /// [`Queue`](crate::Queue) here.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if this thread holds no permit (Python's
    /// `BoundedSemaphore` raises `ValueError`).
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = corral::Semaphore::new(1).unwrap();
    /// sem.acquire().unwrap().keep();
    /// assert_eq!(sem.value(), 0);
    /// sem.release().unwrap();
    /// assert_eq!(sem.value(), 1);
    /// assert!(sem.release().is_err());
    /// ```
    pub fn release(&self) -> Result<(), Error> {
        let me = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        let held =
            (0..self.permits()).find(|&i| self.obj.region().robust_mutex(slot_at(i)).owner() == me);
        match held {
            Some(slot) => {
                release(&self.obj, slot);
                Ok(())
            }
            None => Err(Error::InvalidArgument(
                "Semaphore::release: this thread holds no permit (only the thread that took a permit can return it)",
            )),
        }
    }

    fn acquire_until(
        &self,
        wait: bool,
        deadline: Option<Instant>,
    ) -> Result<SemaphoreGuard<'_>, AcquireError<SemaphoreGuard<'_>>> {
        let start = rustix::thread::gettid().as_raw_nonzero().get() as usize;
        let (slot, how) = acquire(&self.obj, self.permits(), start, wait, deadline)?;
        let guard = SemaphoreGuard {
            sem: self,
            slot,
            _not_send: PhantomData,
        };
        match how {
            Acquired::Clean => Ok(guard),
            Acquired::OwnerDied => Err(AcquireError::OwnerDied(guard)),
        }
    }

    /// Takes a permit, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// Only [`AcquireError::OwnerDied`] (the permit's previous holder died;
    /// the guard is inside).
    pub fn acquire(&self) -> Result<SemaphoreGuard<'_>, AcquireError<SemaphoreGuard<'_>>> {
        self.acquire_until(true, None)
    }

    /// Takes a permit if one is free.
    ///
    /// # Errors
    ///
    /// [`AcquireError::WouldBlock`], or [`AcquireError::OwnerDied`].
    pub fn try_acquire(&self) -> Result<SemaphoreGuard<'_>, AcquireError<SemaphoreGuard<'_>>> {
        self.acquire_until(false, None)
    }

    /// Takes a permit, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`], or [`AcquireError::OwnerDied`].
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<SemaphoreGuard<'_>, AcquireError<SemaphoreGuard<'_>>> {
        self.acquire_until(true, deadline(timeout))
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("permits", &self.permits())
            .finish_non_exhaustive()
    }
}

object_handle_serde!(Semaphore, Kind::Semaphore);

fn slot_at(i: usize) -> usize {
    SLOTS + i * sys::MUTEX_BYTES
}

/// Takes a free permit (each a robust lock), trying them from `start`; a
/// permit whose holder died comes back as `OwnerDied`. Sleeps between
/// passes until a release, or [`DEAD_HOLDER_CHECK`] (a death wakes no one).
fn acquire<M: Memory, G>(
    m: &M,
    permits: usize,
    start: usize,
    wait: bool,
    deadline: Option<Instant>,
) -> Result<(usize, Acquired), AcquireError<G>> {
    loop {
        let seen = m.w32(RELEASED).load(Ordering::SeqCst);
        let found = (0..permits)
            .map(|k| (start + k) % permits)
            .find_map(|i| m.lock(slot_at(i), Wait::Try).ok().map(|how| (i, how)));
        if let Some(taken) = found {
            return Ok(taken);
        }
        if !wait {
            return Err(AcquireError::WouldBlock);
        }
        let now = Instant::now();
        let nap = match deadline {
            Some(at) if now >= at => return Err(AcquireError::Timeout),
            Some(at) => at.min(now + DEAD_HOLDER_CHECK),
            None => now + DEAD_HOLDER_CHECK,
        };
        // Dekker with `release`'s fence: it sees this sleeper, or this
        // pass sees its release (through `RELEASED`, which the futex
        // compares).
        let ticket = SLEEPERS.enter(m);
        SLEEPERS.sleep(m, &ticket, m.w32(RELEASED), seen, Some(nap));
        SLEEPERS.leave(m, ticket);
    }
}

/// Returns permit `slot` and wakes a waiter.
fn release<M: Memory>(m: &M, slot: usize) {
    m.unlock(slot_at(slot));
    m.w32(RELEASED).fetch_add(1, Ordering::SeqCst);
    m.fence();
    SLEEPERS.wake(m, m.w32(RELEASED), 1);
}

/// Holds one permit of a [`Semaphore`]; returns it on drop.
#[must_use = "the permit is returned as soon as the guard is dropped"]
pub struct SemaphoreGuard<'a> {
    sem: &'a Semaphore,
    slot: usize,
    _not_send: PhantomData<*const ()>,
}

impl SemaphoreGuard<'_> {
    /// Keeps the permit after the guard is gone: return it later with
    /// [`Semaphore::release`], from this same thread.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = corral::Semaphore::new(1).unwrap();
    /// sem.acquire().unwrap().keep();
    /// assert!(sem.try_acquire().is_err());
    /// sem.release().unwrap();
    /// ```
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        release(&self.sem.obj, self.slot);
    }
}

impl fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphoreGuard")
            .field("permit", &self.slot)
            .finish()
    }
}

/// The semaphore under loom: permits are never held twice, a holder that
/// dies gives its permit back (and the taker is told), and waiters get
/// permits as they are returned.
#[cfg(test)]
mod model {
    use loom::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::SeqCst;

    use super::*;
    use crate::shared::model::{Model, bounded};

    #[test]
    fn two_permits_three_takers_and_a_dead_holder() {
        bounded(2).check(|| {
            let m = Model::new(slot_at(2), 0);
            // A holder that dies with permit 0.
            let (dead, how) = acquire::<_, ()>(&m, 2, 0, false, None).unwrap();
            assert_eq!((dead, how), (0, Acquired::Clean));
            m.die_holding(slot_at(0));
            let inside = loom::sync::Arc::new(AtomicUsize::new(0));
            let died = loom::sync::Arc::new(AtomicUsize::new(0));
            let takers: Vec<_> = (0..3)
                .map(|t| {
                    let (m, inside, died) = (m.clone(), inside.clone(), died.clone());
                    loom::thread::spawn(move || {
                        let (slot, how) = acquire::<_, ()>(&m, 2, t, true, None).unwrap();
                        assert!(
                            inside.fetch_add(1, SeqCst) < 2,
                            "three holders of two permits"
                        );
                        if how == Acquired::OwnerDied {
                            died.fetch_add(1, SeqCst);
                        }
                        inside.fetch_sub(1, SeqCst);
                        release(&m, slot);
                    })
                })
                .collect();
            for t in takers {
                t.join().unwrap();
            }
            assert_eq!(
                died.load(SeqCst),
                1,
                "the dead holder's permit, reported once"
            );
        });
    }
}

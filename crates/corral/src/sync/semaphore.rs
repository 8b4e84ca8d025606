//! `Semaphore`: a fixed number of permits, each a robust mutex.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{AcquireError, deadline};
use crate::Error;
use crate::shared::object::{HEADER, Kind, Object, object_handle_serde};
use crate::sys::{self, Acquired, NotAcquired, RobustMutex};

/// Counts releases: sleepers wait for it to change.
const RELEASED: usize = HEADER;
/// How many acquirers sleep.
const WAITERS: usize = HEADER + 4;
/// The permits' mutexes, one cache line each.
const SLOTS: usize = HEADER + 64;

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

    fn slot(&self, i: usize) -> RobustMutex<'_> {
        self.obj.region().robust_mutex(SLOTS + i * sys::MUTEX_BYTES)
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.obj.region().word32(offset)
    }

    /// One pass over the permits, starting at a place of this thread's.
    fn scan(&self) -> Option<(usize, Acquired)> {
        let n = self.permits();
        let start = rustix::thread::gettid().as_raw_nonzero().get() as usize % n;
        (0..n)
            .map(|k| (start + k) % n)
            .find_map(|i| match self.slot(i).try_lock() {
                Ok(how) => Some((i, how)),
                Err(NotAcquired::Busy | NotAcquired::Deadlock) => None,
                Err(e) => panic!("the shared Semaphore is corrupt: {e:?}"),
            })
    }

    fn acquire_until(
        &self,
        wait: bool,
        deadline: Option<Instant>,
    ) -> Result<SemaphoreGuard<'_>, AcquireError<SemaphoreGuard<'_>>> {
        loop {
            let seen = self.word(RELEASED).load(Ordering::SeqCst);
            if let Some((slot, how)) = self.scan() {
                let guard = SemaphoreGuard {
                    sem: self,
                    slot,
                    _not_send: PhantomData,
                };
                return match how {
                    Acquired::Clean => Ok(guard),
                    Acquired::OwnerDied => Err(AcquireError::OwnerDied(guard)),
                };
            }
            if !wait {
                return Err(AcquireError::WouldBlock);
            }
            let now = Instant::now();
            let nap = match deadline {
                Some(at) if now >= at => return Err(AcquireError::Timeout),
                Some(at) => (at - now).min(DEAD_HOLDER_CHECK),
                None => DEAD_HOLDER_CHECK,
            };
            self.word(WAITERS).fetch_add(1, Ordering::SeqCst);
            sys::futex_wait(self.word(RELEASED), seen, Some(nap));
            self.word(WAITERS).fetch_sub(1, Ordering::SeqCst);
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

/// Holds one permit of a [`Semaphore`]; returns it on drop.
#[must_use = "the permit is returned as soon as the guard is dropped"]
pub struct SemaphoreGuard<'a> {
    sem: &'a Semaphore,
    slot: usize,
    _not_send: PhantomData<*const ()>,
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        self.sem.slot(self.slot).unlock();
        self.sem.word(RELEASED).fetch_add(1, Ordering::SeqCst);
        if self.sem.word(WAITERS).load(Ordering::SeqCst) > 0 {
            sys::futex_wake(self.sem.word(RELEASED), 1);
        }
    }
}

impl fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphoreGuard")
            .field("permit", &self.slot)
            .finish()
    }
}

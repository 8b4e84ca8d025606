//! `Lock`, `RLock` and `Condition`: robust process-shared mutexes.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{AcquireError, deadline, outcome};
use crate::Error;
use crate::shared::memory::{Memory, Sleepers, Wait, Word32};
use crate::shared::object::{HEADER, Kind, Object, object_handle_serde};
use crate::sys::{self, Acquired, NotAcquired, RobustMutex};

/// Where an object's mutex lives.
const MUTEX: usize = HEADER;
/// A condition's notification counter (a futex word after the mutex).
const COND_SEQ: usize = MUTEX + sys::MUTEX_BYTES;
/// Who sleeps on a condition.
const COND_SLEEPERS: Sleepers = Sleepers::at(COND_SEQ + 64);
const COND_END: usize = COND_SEQ + 64 + Sleepers::BYTES;

fn create(kind: Kind, recursive: bool, len: usize) -> Result<Object, Error> {
    let obj = Object::create(kind, len, &[])?;
    obj.region()
        .robust_mutex(MUTEX)
        .init(recursive)
        .map_err(Error::io("initialising a process-shared mutex"))?;
    Ok(obj)
}

#[inline]
fn acquire_with(mutex: RobustMutex<'_>, how: How) -> Result<Acquired, NotAcquired> {
    match how {
        How::Wait => mutex.lock(),
        How::Try => mutex.try_lock(),
        How::Until(Some(at)) => mutex.lock_until(at),
        How::Until(None) => mutex.lock(),
    }
}

#[derive(Clone, Copy)]
enum How {
    Wait,
    Try,
    Until(Option<Instant>),
}

macro_rules! lock_type {
    (
        $(#[$doc:meta])*
        $name:ident, $guard:ident, $kind:expr, $recursive:expr, $what:literal
    ) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            obj: Object,
        }

        impl $name {
            /// Creates a free lock in fresh shared memory.
            ///
            /// # Errors
            ///
            /// [`Error::Io`] if shared memory cannot be created (out of
            /// descriptors or memory).
            pub fn new() -> Result<$name, Error> {
                Ok($name { obj: create($kind, $recursive, MUTEX + sys::MUTEX_BYTES)? })
            }

            fn from_object(obj: Object) -> Result<$name, String> {
                Ok($name { obj })
            }

            #[inline]
            fn acquire_how(&self, how: How) -> Result<$guard<'_>, AcquireError<$guard<'_>>> {
                let mutex = self.obj.region().robust_mutex(MUTEX);
                outcome(acquire_with(mutex, how), matches!(how, How::Try), $what, || $guard {
                    mutex,
                    _not_send: PhantomData,
                })
            }

            /// Acquires, waiting as long as it takes. A holder that died
            /// does not block: the lock comes back in
            /// [`AcquireError::OwnerDied`].
            ///
            /// # Errors
            ///
            /// Only [`AcquireError::OwnerDied`], which carries the guard.
            ///
            /// # Panics
            ///
            /// If the shared memory was corrupted by someone writing over it.
            #[inline]
            pub fn acquire(&self) -> Result<$guard<'_>, AcquireError<$guard<'_>>> {
                self.acquire_how(How::Wait)
            }

            /// Acquires if nobody holds the lock.
            ///
            /// # Errors
            ///
            /// [`AcquireError::WouldBlock`] if it is held, or
            /// [`AcquireError::OwnerDied`] (acquired).
            #[inline]
            pub fn try_acquire(&self) -> Result<$guard<'_>, AcquireError<$guard<'_>>> {
                self.acquire_how(How::Try)
            }

            /// Acquires, waiting at most `timeout`.
            ///
            /// # Errors
            ///
            /// [`AcquireError::Timeout`], or [`AcquireError::OwnerDied`]
            /// (acquired).
            pub fn acquire_timeout(
                &self,
                timeout: Duration,
            ) -> Result<$guard<'_>, AcquireError<$guard<'_>>> {
                self.acquire_how(How::Until(deadline(timeout)))
            }

            /// Whether some thread, in any process, holds the lock now
            /// (Python 3.14's `locked()`). A holder that died no longer
            /// holds it (the kernel frees it; the next acquirer is told with
            /// [`AcquireError::OwnerDied`]). The answer may be
            /// stale by the time it is read: use it for diagnostics, not to
            /// decide whether to acquire.
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("let lock = corral::", stringify!($name), "::new().unwrap();")]
            /// assert!(!lock.locked());
            /// let guard = lock.acquire().unwrap();
            /// assert!(lock.locked());
            /// drop(guard);
            /// assert!(!lock.locked());
            /// ```
            pub fn locked(&self) -> bool {
                self.obj.region().robust_mutex(MUTEX).owner() != 0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        object_handle_serde!($name, $kind);

        /// Holds the lock; releases it on drop.
        #[must_use = "the lock is released as soon as the guard is dropped"]
        pub struct $guard<'a> {
            mutex: RobustMutex<'a>,
            _not_send: PhantomData<*const ()>,
        }

        impl Drop for $guard<'_> {
            #[inline]
            fn drop(&mut self) {
                self.mutex.unlock();
            }
        }

        impl fmt::Debug for $guard<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($guard)).finish_non_exhaustive()
            }
        }
    };
}

impl Lock {
    /// The lock whose mutex is at the start of `obj`'s body (a `Value`'s or
    /// an `Array`'s own lock).
    pub(crate) fn over(obj: Object) -> Lock {
        Lock { obj }
    }

    /// The shared object its mutex lives in.
    pub(crate) fn object(&self) -> &Object {
        &self.obj
    }
}

lock_type!(
    /// A process-shared mutual-exclusion lock (Python's
    /// `multiprocessing.Lock`), robust to a holder that dies.
    ///
    /// Uncontended, acquire and release cost about as much as a
    /// `std::sync::Mutex` (see `bench/`). A thread that acquires a `Lock` it
    /// already holds gets a panic that says so, not a silent deadlock.
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = corral::Lock::new().unwrap();
    /// {
    ///     let _held = lock.acquire().unwrap();
    ///     assert!(lock.try_acquire().is_err());
    /// }
    /// assert!(lock.try_acquire().is_ok());
    /// ```
    Lock, LockGuard, Kind::Lock, false, "Lock"
);

lock_type!(
    /// A reentrant process-shared lock (Python's `multiprocessing.RLock`):
    /// the holding thread may acquire it again; it is free once every guard
    /// is dropped. Robust to a holder that dies.
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = corral::RLock::new().unwrap();
    /// let outer = lock.acquire().unwrap();
    /// let inner = lock.acquire().unwrap(); // same thread: fine
    /// drop(inner);
    /// drop(outer);
    /// ```
    RLock, RLockGuard, Kind::RLock, true, "RLock"
);

/// A process-shared condition variable with its own [`Lock`]-like mutex
/// (Python's `multiprocessing.Condition`).
///
/// Acquire it to get a [`ConditionGuard`]; wait and notify through the
/// guard. As everywhere, a wait may wake spuriously: wait in a loop, or use
/// [`ConditionGuard::wait_while`].
///
/// # Examples
///
/// ```no_run
/// use corral::{Condition, Value};
/// fn producer((cond, ready): (Condition, Value<u32>)) {
///     let guard = cond.acquire().unwrap();
///     ready.set(1);
///     guard.notify_all();
/// }
/// corral::init();
/// let cond = Condition::new().unwrap();
/// let ready = Value::new(0u32).unwrap();
/// let mut guard = cond.acquire().unwrap();
/// let child = corral::spawn(producer, (cond.clone(), ready.clone())).unwrap();
/// guard.wait_while(|| ready.get() == 0);
/// drop(guard);
/// child.join().unwrap();
/// ```
#[derive(Clone)]
pub struct Condition {
    obj: Object,
}

impl Condition {
    /// Creates a condition with its lock free.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if shared memory cannot be created.
    pub fn new() -> Result<Condition, Error> {
        Ok(Condition {
            obj: create(Kind::Condition, false, COND_END)?,
        })
    }

    fn from_object(obj: Object) -> Result<Condition, String> {
        Ok(Condition { obj })
    }

    fn acquire_how(
        &self,
        how: How,
    ) -> Result<ConditionGuard<'_>, AcquireError<ConditionGuard<'_>>> {
        let mutex = self.obj.region().robust_mutex(MUTEX);
        outcome(
            acquire_with(mutex, how),
            matches!(how, How::Try),
            "Condition",
            || ConditionGuard {
                cond: self,
                mutex,
                owner_died: false,
                _not_send: PhantomData,
            },
        )
    }

    /// Acquires the condition's lock.
    ///
    /// # Errors
    ///
    /// Only [`AcquireError::OwnerDied`], which carries the guard.
    pub fn acquire(&self) -> Result<ConditionGuard<'_>, AcquireError<ConditionGuard<'_>>> {
        self.acquire_how(How::Wait)
    }

    /// Acquires the lock if it is free.
    ///
    /// # Errors
    ///
    /// [`AcquireError::WouldBlock`], or [`AcquireError::OwnerDied`].
    pub fn try_acquire(&self) -> Result<ConditionGuard<'_>, AcquireError<ConditionGuard<'_>>> {
        self.acquire_how(How::Try)
    }

    /// Acquires the lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`], or [`AcquireError::OwnerDied`].
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ConditionGuard<'_>, AcquireError<ConditionGuard<'_>>> {
        self.acquire_how(How::Until(deadline(timeout)))
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition").finish_non_exhaustive()
    }
}

object_handle_serde!(Condition, Kind::Condition);

/// Holds a [`Condition`]'s lock; waits and notifies.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    mutex: RobustMutex<'a>,
    owner_died: bool,
    _not_send: PhantomData<*const ()>,
}

impl ConditionGuard<'_> {
    /// Releases the lock, sleeps until notified (or `deadline`), and
    /// reacquires. Returns whether it was notified (or woke spuriously)
    /// rather than timed out.
    fn wait_until(&mut self, deadline: Option<Instant>) -> bool {
        let (woke, died) = cond_wait(&self.cond.obj, deadline);
        self.owner_died |= died;
        woke
    }

    /// Releases the lock, sleeps until notified, and reacquires. May wake
    /// spuriously.
    pub fn wait(&mut self) {
        self.wait_until(None);
    }

    /// Like [`ConditionGuard::wait`], for at most `timeout`; returns `false`
    /// if the time ran out.
    pub fn wait_timeout(&mut self, timeout: Duration) -> bool {
        self.wait_until(deadline(timeout))
    }

    /// Waits while `condition` holds (Python's `wait_for` with the test
    /// negated, like `std::sync::Condvar::wait_while`).
    pub fn wait_while(&mut self, mut condition: impl FnMut() -> bool) {
        while condition() {
            self.wait();
        }
    }

    /// Waits while `condition` holds, at most `timeout`; returns `false` if
    /// it still held when the time ran out.
    pub fn wait_while_timeout(
        &mut self,
        timeout: Duration,
        mut condition: impl FnMut() -> bool,
    ) -> bool {
        let at = deadline(timeout);
        while condition() {
            if !self.wait_until(at) {
                return !condition();
            }
        }
        true
    }

    /// Wakes up to `n` waiters.
    pub fn notify(&self, n: u32) {
        cond_notify(&self.cond.obj, n);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.notify(u32::MAX);
    }

    /// Did a holder die while this guard waited (its lock came back through
    /// the kernel's owner-died path)?
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }
}

impl Drop for ConditionGuard<'_> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

impl fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionGuard")
            .field("owner_died", &self.owner_died)
            .finish_non_exhaustive()
    }
}

/// The condition's wait, its lock held on entry and on return: (notified
/// or spurious rather than timed out, the lock came back from a dead holder).
fn cond_wait<M: Memory>(m: &M, deadline: Option<Instant>) -> (bool, bool) {
    let seen = m.w32(COND_SEQ).load(Ordering::Acquire);
    // Dekker with `cond_notify`'s fence (inside `enter`).
    let ticket = COND_SLEEPERS.enter(m);
    m.unlock(MUTEX);
    let woke = COND_SLEEPERS.sleep(m, &ticket, m.w32(COND_SEQ), seen, deadline);
    COND_SLEEPERS.leave(m, ticket);
    let died = match m.lock(MUTEX, Wait::Block) {
        Ok(Acquired::Clean) => false,
        Ok(Acquired::OwnerDied) => true,
        Err(()) => unreachable!("a waiting lock does not fail"),
    };
    let expired = !woke || deadline.is_some_and(|at| Instant::now() >= at);
    (
        !expired || m.w32(COND_SEQ).load(Ordering::Acquire) != seen,
        died,
    )
}

/// Wakes up to `n` waiters of the condition.
fn cond_notify<M: Memory>(m: &M, n: u32) {
    m.w32(COND_SEQ).fetch_add(1, Ordering::SeqCst);
    m.fence();
    COND_SLEEPERS.wake(m, m.w32(COND_SEQ), n);
}

/// The condition's protocol under loom: a waiter that saw the predicate
/// false under the lock never misses the notification that makes it true.
#[cfg(test)]
mod model {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::shared::model::{Model, bounded};

    /// The predicate: a word guarded by the condition's lock.
    const READY: usize = COND_END;

    #[test]
    fn a_notification_is_never_lost() {
        bounded(3).check(|| {
            let m = Model::new(READY + 4, 0);
            let notifier = {
                let m = m.clone();
                loom::thread::spawn(move || {
                    assert_eq!(m.lock(MUTEX, Wait::Block), Ok(Acquired::Clean));
                    m.w32(READY).store(1, Relaxed);
                    cond_notify(&m, u32::MAX);
                    m.unlock(MUTEX);
                })
            };
            assert_eq!(m.lock(MUTEX, Wait::Block), Ok(Acquired::Clean));
            while m.w32(READY).load(Relaxed) == 0 {
                cond_wait(&m, None);
            }
            m.unlock(MUTEX);
            notifier.join().unwrap();
        });
    }
}

//! Process-shared synchronisation: [`Lock`], [`RLock`], [`Semaphore`],
//! [`Condition`], [`Event`], [`Barrier`].
//!
//! Each is a handle to a small shared-memory object: clone it, or pass it to
//! [`crate::spawn`] or a pool task, and every copy names the same lock. The
//! object disappears when the last process holding a handle drops it.
//!
//! # A holder that dies
//!
//! Python's locks deadlock forever when their holder is killed. corral's
//! [`Lock`], [`RLock`], [`Semaphore`] and [`Condition`] use the kernel's
//! robust futexes: the next acquirer gets the lock and is told, through
//! [`AcquireError::OwnerDied`], which carries the guard. Whatever the dead
//! holder was protecting may be half-updated; the acquirer decides.
//!
//! ```no_run
//! use corral::{AcquireError, Lock};
//!
//! fn die_holding(lock: Lock) {
//!     let guard = lock.acquire().unwrap();
//!     std::mem::forget(guard);
//!     std::process::abort();
//! }
//!
//! corral::init();
//! let lock = Lock::new().unwrap();
//! let child = corral::spawn(die_holding, lock.clone()).unwrap();
//! assert!(child.join().is_err());
//! match lock.acquire() {
//!     Err(AcquireError::OwnerDied(_guard)) => { /* repair the protected state */ }
//!     other => panic!("expected OwnerDied, got {other:?}"),
//! }
//! assert!(lock.acquire().is_ok()); // and it is an ordinary lock again
//! ```
//!
//! # The four forms
//!
//! Every acquisition comes as `x()` (wait as long as needed), `try_x()`
//! ([`AcquireError::WouldBlock`] at once), `x_timeout(d)`
//! ([`AcquireError::Timeout`]) — Python's `acquire()`,
//! `acquire(block=False)` and `acquire(timeout=d)`. Guards release on drop
//! and are neither `Send` nor `Clone`: the thread that acquired releases.

mod barrier;
mod event;
mod lock;
mod semaphore;

use std::fmt;

pub use barrier::{Barrier, BarrierBuilder, BarrierError, BarrierWaitResult};
pub use event::Event;
pub use lock::{Condition, ConditionGuard, Lock, LockGuard, RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphoreGuard};

use crate::sys::{Acquired, NotAcquired};

/// An acquisition that did not simply succeed.
///
/// # Examples
///
/// ```
/// let lock = corral::Lock::new().unwrap();
/// let held = lock.acquire().unwrap();
/// assert!(matches!(lock.try_acquire(), Err(corral::AcquireError::WouldBlock)));
/// drop(held);
/// assert!(lock.try_acquire().is_ok());
/// ```
pub enum AcquireError<G> {
    /// The previous holder died holding it. The acquisition succeeded: here
    /// is the guard. What the lock protected may be inconsistent.
    OwnerDied(G),
    /// `try_` form: someone else holds it.
    WouldBlock,
    /// `_timeout` form: the time ran out.
    Timeout,
}

impl<G> AcquireError<G> {
    /// The guard, if the acquisition succeeded (the previous owner died).
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = corral::Lock::new().unwrap();
    /// // Accept a lock whose previous owner died, as Python would have.
    /// let guard = lock.acquire().or_else(|e| e.into_guard().ok_or(())).unwrap();
    /// # drop(guard);
    /// ```
    pub fn into_guard(self) -> Option<G> {
        match self {
            AcquireError::OwnerDied(g) => Some(g),
            AcquireError::WouldBlock | AcquireError::Timeout => None,
        }
    }
}

impl<G> fmt::Debug for AcquireError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            AcquireError::WouldBlock => f.write_str("WouldBlock"),
            AcquireError::Timeout => f.write_str("Timeout"),
        }
    }
}

impl<G> fmt::Display for AcquireError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcquireError::OwnerDied(_) => {
                "the previous holder died holding the lock; it is now held by the caller, \
                 and the state it protects may need repair"
            }
            AcquireError::WouldBlock => "the lock is held by someone else",
            AcquireError::Timeout => "timed out waiting for the lock",
        })
    }
}

impl<G> std::error::Error for AcquireError<G> {}

/// Turns a robust-mutex outcome into a guard or an [`AcquireError`].
///
/// A `try_` form on a lock this thread holds would block: `WouldBlock`, as
/// Python's `acquire(False)` returns `False`. A waiting form would deadlock:
/// a panic that says so.
#[inline]
fn outcome<G>(
    result: Result<Acquired, NotAcquired>,
    trying: bool,
    what: &str,
    guard: impl FnOnce() -> G,
) -> Result<G, AcquireError<G>> {
    match result {
        Err(NotAcquired::Deadlock) if trying => Err(AcquireError::WouldBlock),
        Ok(Acquired::Clean) => Ok(guard()),
        Ok(Acquired::OwnerDied) => Err(AcquireError::OwnerDied(guard())),
        Err(NotAcquired::Busy) => Err(AcquireError::WouldBlock),
        Err(NotAcquired::TimedOut) => Err(AcquireError::Timeout),
        Err(NotAcquired::Deadlock) => panic!(
            "this thread already holds this corral::{what}, which is not reentrant: \
             acquiring it again would deadlock (use corral::RLock)"
        ),
        Err(NotAcquired::Os(e)) => panic!("the shared {what} is corrupt: {e}"),
    }
}

/// The deadline `timeout` from now (`None` if it is too far to represent).
fn deadline(timeout: std::time::Duration) -> Option<std::time::Instant> {
    crate::time::deadline(timeout)
}

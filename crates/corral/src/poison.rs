//! Taking a lock whose holder panicked.
//!
//! corral's threads (a pool's dispatcher, the threads that submit and wait,
//! callbacks) share state behind `std::sync::Mutex`es, and take each one
//! through [`lock`] (and wait on their condition variables through [`wait`]
//! and [`wait_timeout`]): a panic while a lock was held is reported where it
//! happened, and does not fail every later call that needs the same lock.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Locks `m`, also if a thread panicked while holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv` with `guard`, also if a thread panicked while holding the
/// lock.
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv` with `guard` for at most `timeout` (a spurious or timed-out
/// wake-up returns too), also if a thread panicked while holding the lock.
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    cv.wait_timeout(guard, timeout)
        .unwrap_or_else(PoisonError::into_inner)
        .0
}

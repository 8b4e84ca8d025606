//! Taking a lock whose holder panicked.
//!
//! corral's threads (a pool's dispatcher, the threads that submit and wait,
//! callbacks) share state behind `std::sync::Mutex`es, and take each one
//! through [`lock`]: a panic while a lock was held is reported where it
//! happened, and does not fail every later call that needs the same lock.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, also if a thread panicked while holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

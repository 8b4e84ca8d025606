//! What a manager call can fail with.

use std::time::Duration;

/// A manager call's failure. Every call ends in a value or one of these —
/// never a hang: a dead manager is noticed at once (its connection closes),
/// a stopped or unreachable one within a few seconds (no heartbeat).
///
/// # Examples
///
/// ```no_run
/// use corral::manager::{Manager, ManagerError};
/// let manager = Manager::start().unwrap();
/// let jobs = manager.queue::<u32>().unwrap();
/// match jobs.get_timeout(std::time::Duration::from_millis(10)) {
///     Err(ManagerError::Empty) => println!("nothing yet"),
///     Err(ManagerError::Unreachable { .. }) => println!("the manager is gone"),
///     other => println!("{other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The manager cannot be reached: it died, stopped answering, or
    /// nothing listens at its address. The next call tries to connect
    /// again (a restarted manager is picked up).
    #[error(
        "the manager at {address} is unreachable ({why}); calls fail until it is back, \
         then proxies to registered objects reconnect"
    )]
    Unreachable {
        /// Its address.
        address: String,
        /// What happened.
        why: String,
    },
    /// The object is not on the manager: the manager restarted (only
    /// registered objects survive that, found again by name) or every
    /// holder released it.
    #[error("{0}: make it again (or register it by name so it survives restarts)")]
    ObjectLost(String),
    /// The call's time ran out ([`with_timeout`](crate::manager::Dict::with_timeout)
    /// or a `_timeout` form).
    #[error("the manager call timed out after {0:?}")]
    Timeout(Duration),
    /// A queue's `get` found it empty (`try_` and `_timeout` forms).
    #[error("the queue is empty")]
    Empty,
    /// A bounded queue's `put` found it full.
    #[error("the queue is full")]
    Full,
    /// A `try_` form found the lock or semaphore taken.
    #[error("the lock is held by another owner")]
    WouldBlock,
    /// A barrier was broken (aborted, reset, timed out, or a party's
    /// process died waiting).
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// The object raised (Python's `KeyError`, `IndexError`, `ValueError`
    /// …): the class and message.
    #[error("{class}: {message}")]
    Raised {
        /// Python's exception class name.
        class: String,
        /// Its message.
        message: String,
    },
    /// A value could not be turned into plain data, or back.
    #[error("manager data: {0}")]
    Codec(String),
    /// The server refused the request itself.
    #[error("the manager refused the request: {0}")]
    Refused(String),
    /// Connecting or starting failed (wrong authkey, no such address, …).
    #[error(transparent)]
    Corral(#[from] crate::Error),
}

impl ManagerError {
    pub(crate) fn raised(class: String, message: String) -> ManagerError {
        match class.as_str() {
            "Empty" => ManagerError::Empty,
            "Full" => ManagerError::Full,
            "BrokenBarrierError" => ManagerError::BrokenBarrier,
            _ => ManagerError::Raised { class, message },
        }
    }
}

//! `Event`: a process-shared flag that can be waited on.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::deadline;
use crate::Error;
use crate::shared::object::{HEADER, Kind, Object, object_handle_serde};
use crate::sys;

/// The flag (0 or 1), also the futex word.
const FLAG: usize = HEADER;
/// How many processes sleep on the flag.
const WAITERS: usize = HEADER + 4;

/// A process-shared event (Python's `multiprocessing.Event`): a flag that
/// starts clear; [`Event::wait`] sleeps until someone sets it.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use corral::Event;
/// fn starter(go: Event) { go.set(); }
/// corral::init();
/// let go = Event::new().unwrap();
/// let child = corral::spawn(starter, go.clone()).unwrap();
/// assert!(go.wait_timeout(Duration::from_secs(5)));
/// child.join().unwrap();
/// ```
#[derive(Clone)]
pub struct Event {
    obj: Object,
}

impl Event {
    /// A clear event.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if shared memory cannot be created.
    pub fn new() -> Result<Event, Error> {
        Ok(Event {
            obj: Object::create(Kind::Event, WAITERS + 4, &[])?,
        })
    }

    fn from_object(obj: Object) -> Result<Event, String> {
        Ok(Event { obj })
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.obj.region().word32(offset)
    }

    /// Is the flag set?
    ///
    /// # Examples
    ///
    /// ```
    /// let e = corral::Event::new().unwrap();
    /// assert!(!e.is_set());
    /// e.set();
    /// assert!(e.is_set());
    /// e.clear();
    /// assert!(!e.is_set());
    /// ```
    pub fn is_set(&self) -> bool {
        self.word(FLAG).load(Ordering::Acquire) != 0
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        self.word(FLAG).store(1, Ordering::SeqCst);
        if self.word(WAITERS).load(Ordering::SeqCst) > 0 {
            sys::futex_wake(self.word(FLAG), u32::MAX);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.word(FLAG).store(0, Ordering::SeqCst);
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        while !self.is_set() {
            self.word(WAITERS).fetch_add(1, Ordering::SeqCst);
            let slept = sys::futex_wait_until(self.word(FLAG), 0, deadline);
            self.word(WAITERS).fetch_sub(1, Ordering::SeqCst);
            if !slept {
                return self.is_set();
            }
        }
        true
    }

    /// Waits until the flag is set (at once if it is).
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout` for the flag; returns whether it is set.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let e = corral::Event::new().unwrap();
    /// assert!(!e.wait_timeout(Duration::from_millis(10)));
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(deadline(timeout))
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish()
    }
}

object_handle_serde!(Event, Kind::Event);

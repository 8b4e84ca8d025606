//! `Event`: a process-shared flag that can be waited on.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::deadline;
use crate::Error;
use crate::shared::memory::{Memory, Sleepers, Word32};
use crate::shared::object::{HEADER, Kind, Object, object_handle_serde};

/// The flag (0 or 1), also the futex word.
const FLAG: usize = HEADER;
/// Who sleeps on the flag.
const SLEEPERS: Sleepers = Sleepers::at(HEADER + 64);
const END: usize = HEADER + 64 + Sleepers::BYTES;

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
            obj: Object::create(Kind::Event, END, &[])?,
        })
    }

    fn from_object(obj: Object) -> Result<Event, String> {
        Ok(Event { obj })
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
        is_set(&self.obj)
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        set(&self.obj);
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.obj.w32(FLAG).store(0, Ordering::SeqCst);
    }

    /// Waits until the flag is set (at once if it is).
    pub fn wait(&self) {
        wait_until(&self.obj, None);
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
        wait_until(&self.obj, deadline(timeout))
    }
}

fn is_set<M: Memory>(m: &M) -> bool {
    m.w32(FLAG).load(Ordering::Acquire) != 0
}

fn set<M: Memory>(m: &M) {
    m.w32(FLAG).store(1, Ordering::SeqCst);
    // Dekker with a waiter's fence: it sees the flag, or this sees it.
    m.fence();
    SLEEPERS.wake(m, m.w32(FLAG), u32::MAX);
}

fn wait_until<M: Memory>(m: &M, deadline: Option<Instant>) -> bool {
    while !is_set(m) {
        let ticket = SLEEPERS.enter(m);
        let slept = SLEEPERS.sleep(m, &ticket, m.w32(FLAG), 0, deadline);
        SLEEPERS.leave(m, ticket);
        if !slept {
            return is_set(m);
        }
    }
    true
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish()
    }
}

object_handle_serde!(Event, Kind::Event);

/// The event's protocol under loom: a waiter never misses a `set`.
#[cfg(test)]
mod model {
    use crate::shared::model::{Model, bounded};

    #[test]
    fn a_waiter_never_misses_a_set() {
        bounded(3).check(|| {
            let m = Model::new(super::END, 0);
            let setter = {
                let m = m.clone();
                loom::thread::spawn(move || super::set(&m))
            };
            assert!(super::wait_until(&m, None));
            setter.join().unwrap();
        });
    }
}

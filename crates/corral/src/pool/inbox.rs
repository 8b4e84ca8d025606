//! Where a thread submitting work leaves it when another thread holds the
//! pool's lock, so that submitting never waits for the lock.
//!
//! The pool's supervisor threads hold its lock while they read outcomes
//! and hand out batches; a round of the dispatcher under load lasts tens to
//! hundreds of microseconds, longer when the holder loses its CPU. A thread
//! submitting one task at a time spent half its time waiting for it
//! (measured: 340 of 670 ms over a million tasks). Now such a thread leaves
//! its jobs here and goes on; the next thread to take the lock queues them,
//! and the dispatcher is woken so that some thread does.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Items left for the next holder of the pool's lock.
#[derive(Debug)]
pub(super) struct Inbox<T> {
    state: Mutex<State<T>>,
    /// Whether `state` holds items (read without its lock).
    full: AtomicBool,
    /// Whether the dispatcher was called for the items there now.
    called: AtomicBool,
}

#[derive(Debug)]
struct State<T> {
    items: Vec<T>,
    /// Accepts nothing more (the pool stopped accepting work).
    closed: bool,
}

impl<T> Inbox<T> {
    pub(super) fn new() -> Inbox<T> {
        Inbox {
            state: Mutex::new(State {
                items: Vec::new(),
                closed: false,
            }),
            full: AtomicBool::new(false),
            called: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves `items`: `Ok(true)` if the caller must call the dispatcher
    /// (nobody did since the inbox was last emptied), `Err` with the items
    /// if it is closed (the caller then takes the lock, and is refused
    /// there).
    pub(super) fn offer(&self, items: Vec<T>) -> Result<bool, Vec<T>> {
        let mut state = self.state();
        if state.closed {
            return Err(items);
        }
        state.items.extend(items);
        self.full.store(true, Ordering::Release);
        drop(state);
        Ok(!self.called.swap(true, Ordering::AcqRel))
    }

    /// Takes what was left (nothing without a look at the lock if it is
    /// empty); `close` also makes it accept nothing more, so that nothing
    /// is left in it after.
    pub(super) fn take(&self, close: bool) -> Vec<T> {
        if !close && !self.full.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut state = self.state();
        state.closed |= close;
        self.full.store(false, Ordering::Relaxed);
        // Cleared under the lock, after the items it was set for are
        // taken: an offer after this calls the dispatcher again.
        self.called.store(false, Ordering::Release);
        std::mem::take(&mut state.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_taken_once_in_order_and_the_dispatcher_called_once_a_fill() {
        let inbox = Inbox::new();
        assert_eq!(inbox.offer(vec![1, 2]), Ok(true));
        assert_eq!(inbox.offer(vec![3]), Ok(false), "called already");
        assert_eq!(inbox.take(false), [1, 2, 3]);
        assert!(inbox.take(false).is_empty());
        assert_eq!(inbox.offer(vec![4]), Ok(true), "emptied: called again");
        assert_eq!(inbox.take(true), [4]);
        assert_eq!(inbox.offer(vec![5]), Err(vec![5]), "closed");
        assert!(inbox.take(false).is_empty());
    }

    #[test]
    fn items_offered_from_many_threads_are_all_taken() {
        let inbox = std::sync::Arc::new(Inbox::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let inbox = inbox.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        inbox.offer(vec![t * 1000 + i]).expect("open");
                    }
                })
            })
            .collect();
        let mut taken = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while taken.len() < 4000 {
            assert!(std::time::Instant::now() < deadline, "items lost");
            taken.extend(inbox.take(false));
        }
        for t in threads {
            t.join().expect("thread");
        }
        taken.extend(inbox.take(true));
        taken.sort_unstable();
        assert_eq!(taken, (0..4000).collect::<Vec<_>>());
    }
}

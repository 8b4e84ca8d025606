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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::poison::lock;

/// Items left for the next holder of the pool's lock.
#[derive(Debug)]
pub(super) struct Inbox<T> {
    state: Mutex<State<T>>,
    /// Whether `state` holds items (read without its lock).
    full: AtomicBool,
    /// How many items the last take found: the room the next take leaves.
    room: AtomicUsize,
}

/// The most items a take makes room for in advance.
const ROOM_MAX: usize = 256;

#[derive(Debug)]
struct State<T> {
    /// The items left. The offer that finds them none owes the dispatcher
    /// a wake-up; one that finds some knows that wake-up is owed already,
    /// and that its own items will be taken with theirs. (A "called" mark
    /// kept beside the lock instead could be set by a late offerer after a
    /// take had emptied the inbox, and leave the next offers' items with no
    /// wake-up owed at all.)
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
            room: AtomicUsize::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        lock(&self.state)
    }

    /// Leaves `items` (a vector, or an array of one: no vector to allocate
    /// and free for a single task): `Ok(true)` if the caller must call the
    /// dispatcher (the inbox was empty), `Err` with the items if it is
    /// closed (the caller then takes the lock, and is refused there).
    pub(super) fn offer<I: IntoIterator<Item = T>>(&self, items: I) -> Result<bool, I> {
        let mut state = self.state();
        if state.closed {
            return Err(items);
        }
        let first = state.items.is_empty();
        // Item by item: usually one, moved inline (`extend` copies through
        // `memcpy`).
        for item in items {
            state.items.push(item);
        }
        self.full.store(true, Ordering::Release);
        Ok(first)
    }

    /// Whether items were left and not taken yet (a dispatcher is called).
    pub(super) fn holds_items(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Takes what was left (nothing without a look at the lock if it is
    /// empty); `close` also makes it accept nothing more, so that nothing
    /// is left in it after.
    pub(super) fn take(&self, close: bool) -> Vec<T> {
        if !close && !self.full.load(Ordering::Acquire) {
            return Vec::new();
        }
        // Room for as many items as the last take found, made before the lock:
        // the next offers push into it without growing it (each growth
        // copied every item left so far), and the thread that takes them
        // frees it.
        let room = Vec::with_capacity(if close {
            0
        } else {
            self.room.load(Ordering::Relaxed)
        });
        let mut state = self.state();
        state.closed |= close;
        self.full.store(false, Ordering::Relaxed);
        let taken = std::mem::replace(&mut state.items, room);
        drop(state);
        self.room
            .store(taken.len().clamp(4, ROOM_MAX), Ordering::Relaxed);
        taken
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
    fn a_take_leaves_room_for_as_many_items_as_it_found() {
        let inbox = Inbox::new();
        for i in 0..10 {
            inbox.offer([i]).expect("open");
        }
        assert!(inbox.holds_items());
        assert_eq!(inbox.take(false).len(), 10);
        assert!(!inbox.holds_items());
        // The room is made at the next take, before its lock.
        inbox.offer([10]).expect("open");
        assert_eq!(inbox.take(false), [10]);
        inbox.offer([11]).expect("open");
        assert!(inbox.take(false).capacity() >= 10, "room made");
        for i in 0..2 * ROOM_MAX {
            inbox.offer([i]).expect("open");
        }
        assert_eq!(inbox.take(false).len(), 2 * ROOM_MAX);
        inbox.offer([0]).expect("open");
        inbox.take(false);
        inbox.offer([0]).expect("open");
        let next = inbox.take(false);
        assert!(
            (ROOM_MAX..2 * ROOM_MAX).contains(&next.capacity()),
            "bounded"
        );
    }

    /// Producers offer items and pass on each wake-up owed; a dispatcher
    /// takes only when woken, as the pool's does when no other thread takes
    /// the pool's lock. Every item must be taken by the end: one offered
    /// with no wake-up owed is left behind.
    #[test]
    fn no_item_is_left_without_a_wake_up_owed() {
        use std::sync::mpsc;
        const EACH: usize = 50_000;
        let inbox = std::sync::Arc::new(Inbox::new());
        let (wake, woken) = mpsc::channel::<()>();
        let producers: Vec<_> = (0..3)
            .map(|_| {
                let (inbox, wake) = (inbox.clone(), wake.clone());
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        if inbox.offer(vec![i]).expect("open") {
                            wake.send(()).expect("the dispatcher");
                        }
                    }
                })
            })
            .collect();
        drop(wake);
        // Until every producer is done and its wake-ups are read.
        let mut taken = 0;
        while woken.recv().is_ok() {
            taken += inbox.take(false).len();
        }
        for p in producers {
            p.join().expect("a producer");
        }
        assert_eq!(
            inbox.take(true).len(),
            0,
            "items offered with no wake-up owed"
        );
        assert_eq!(taken, 3 * EACH);
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

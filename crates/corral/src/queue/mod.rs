//! Queues between processes: [`Queue`], [`JoinableQueue`], [`SimpleQueue`].
//!
//! A corral queue lives in shared memory: a ring of bytes with one robust
//! lock for producers and one for consumers (see the design notes in
//! `queue/ring.rs`). Many producers and many consumers, in any processes,
//! share it through cloned or passed handles.
//!
//! Unlike Python's `multiprocessing.Queue`, there is no feeder thread:
//!
//! * [`Queue::put`] encodes and stores the item before it returns, so an
//!   item that cannot be serialized is an error of that `put`
//!   ([`PutError::Codec`]), never a traceback in a background thread;
//! * an item whose `put` returned `Ok` is in shared memory, not in a
//!   buffer of the producing process: it is not lost when that process
//!   exits or is killed, and a process never hangs at exit flushing it;
//! * a consumer killed in the middle of a `get` does not corrupt the queue
//!   or block the others (its lock comes back through the kernel);
//! * a message of any size crosses: large ones stream through the ring.
//!
//! # Example: a worker farm
//!
//! ```no_run
//! use corral::Queue;
//! fn worker((tasks, results): (Queue<Option<u64>>, Queue<(u64, u64)>)) {
//!     while let Ok(Some(n)) = tasks.get() {
//!         results.put((n, n * n)).unwrap();
//!     }
//! }
//! corral::init();
//! let tasks = Queue::bounded(16).unwrap();
//! let results = Queue::unbounded().unwrap();
//! let workers: Vec<_> = (0..4)
//!     .map(|_| corral::spawn(worker, (tasks.clone(), results.clone())).unwrap())
//!     .collect();
//! for n in 0..100 {
//!     tasks.put(Some(n)).unwrap(); // blocks while 16 are waiting: backpressure
//! }
//! for _ in &workers {
//!     tasks.put(None).unwrap(); // one sentinel per worker
//! }
//! let mut squares: Vec<(u64, u64)> = (0..100).map(|_| results.get().unwrap()).collect();
//! squares.sort();
//! assert_eq!(squares[7], (7, 49));
//! for w in workers { w.join().unwrap(); }
//! ```
//!
//! # Sizes
//!
//! A queue holds messages in a ring of bytes: 1 MiB for a bounded queue,
//! 64 MiB (of address space; memory is used only as it fills) for an
//! unbounded one, or what [`Queue::with_buffer`] says. An unbounded queue
//! therefore holds at most that many bytes of pending messages; beyond, a
//! `put` waits for consumers as a full pipe would, rather than growing the
//! producer's memory without limit.

mod ring;

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::time::{Duration, Instant};

use crate::shared::object::{Kind, Object, object_handle_serde};
use crate::{CodecError, Data, Error, wire};
use ring::{GetFail, PutFail, Ring, Wait};

/// The ring of a bounded queue.
const BOUNDED_BUFFER: usize = 1 << 20;
/// The ring of an unbounded queue (address space; filled lazily).
const UNBOUNDED_BUFFER: usize = 64 << 20;

/// The largest scratch buffer a thread keeps between calls: enough for
/// messages of a few MiB to cost no allocation (and no page faults).
const KEEP_SCRATCH: usize = 8 << 20;

thread_local! {
    /// Encoding and decoding scratch, reused by every queue call of a thread.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer (a fresh one if it is in use).
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let r = f(&mut buf);
            if buf.capacity() > KEEP_SCRATCH {
                *buf = Vec::new(); // do not keep a huge buffer alive
            }
            r
        }
        Err(_) => f(&mut Vec::new()),
    })
}

/// Why a [`Queue::put`] did not store the item. `Full` and `Closed` hand the
/// item back.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum PutError<T> {
    /// `try_put` / `put_timeout`: the queue stayed full.
    #[error("the queue is full")]
    Full(T),
    /// The queue was closed with [`Queue::close`].
    #[error("the queue is closed")]
    Closed(T),
    /// The item cannot be serialized (or holds a corral handle: send
    /// handles through a `Pipe` or as a spawn argument).
    #[error(transparent)]
    Codec(CodecError),
}

impl<T> PutError<T> {
    /// The item, if the error hands it back.
    ///
    /// # Examples
    ///
    /// ```
    /// let q = corral::Queue::bounded(1).unwrap();
    /// q.put(1).unwrap();
    /// assert_eq!(q.try_put(2).unwrap_err().into_inner(), Some(2));
    /// ```
    pub fn into_inner(self) -> Option<T> {
        match self {
            PutError::Full(t) | PutError::Closed(t) => Some(t),
            PutError::Codec(_) => None,
        }
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::Codec(e) => f.debug_tuple("Codec").field(e).finish(),
        }
    }
}

/// Why a [`Queue::get`] returned no item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum GetError {
    /// `try_get`: nothing was waiting.
    #[error("the queue is empty")]
    Empty,
    /// `get_timeout`: nothing came in time.
    #[error("timed out waiting for an item")]
    Timeout,
    /// The queue was closed and everything put before has been taken.
    #[error("the queue is closed and drained")]
    Disconnected,
    /// The item could not be decoded as `T` (the two sides disagree on the
    /// type, or `T`'s `Deserialize` failed or panicked). The item is
    /// consumed.
    #[error(transparent)]
    Codec(CodecError),
}

/// A process-shared FIFO queue of `T` (Python's `multiprocessing.Queue`).
///
/// See the [module docs](crate::queue). Clone the handle or pass it to a
/// child; every copy is the same queue.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use corral::{GetError, Queue};
/// let q: Queue<String> = Queue::bounded(2).unwrap();
/// q.put("a".to_string()).unwrap();
/// q.put("b".to_string()).unwrap();
/// assert!(q.try_put("c".to_string()).is_err()); // full: the item comes back
/// assert_eq!(q.len(), 2);
/// assert_eq!(q.get().unwrap(), "a");
/// assert_eq!(q.get_timeout(Duration::from_millis(10)).unwrap(), "b");
/// assert_eq!(q.try_get(), Err(GetError::Empty));
/// ```
pub struct Queue<T> {
    ring: Ring,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            ring: self.ring.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.ring.len())
            .field("closed", &self.ring.is_closed())
            .finish_non_exhaustive()
    }
}

/// The ring's item limit: 0 for none.
fn item_limit(capacity: Option<usize>) -> Result<u64, Error> {
    match capacity {
        Some(0) => Err(Error::Unsupported(
            "a bounded queue needs a capacity of at least 1",
        )),
        Some(c) => Ok(c as u64),
        None => Ok(0),
    }
}

fn ring_size(bytes: usize) -> usize {
    bytes.clamp(4096, 1 << 40).next_power_of_two()
}

impl<T: Data> Queue<T> {
    /// A queue that holds at most `capacity` items: `put` waits beyond
    /// (Python's `Queue(maxsize)`).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for a capacity of 0; [`Error::Io`] if shared
    /// memory cannot be created.
    pub fn bounded(capacity: usize) -> Result<Queue<T>, Error> {
        Queue::with_buffer(Some(capacity), BOUNDED_BUFFER)
    }

    /// A queue without an item limit (Python's `Queue()`); see the module
    /// docs for its byte limit.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if shared memory cannot be created.
    pub fn unbounded() -> Result<Queue<T>, Error> {
        Queue::with_buffer(None, UNBOUNDED_BUFFER)
    }

    /// A queue with an item limit (or none) and a ring of `buffer_bytes`
    /// (rounded up to a power of two, at least 4 KiB). Messages larger
    /// than a quarter of the ring stream through it.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for a capacity of `Some(0)`; [`Error::Io`] if
    /// shared memory cannot be created.
    ///
    /// # Examples
    ///
    /// ```
    /// // A small ring still carries a large message.
    /// let q = corral::Queue::<Vec<u8>>::with_buffer(Some(4), 64 << 10).unwrap();
    /// let big = vec![7u8; 1 << 20];
    /// let taker = { let q = q.clone(); std::thread::spawn(move || q.get().unwrap()) };
    /// q.put(big.clone()).unwrap();
    /// assert_eq!(taker.join().unwrap(), big);
    /// ```
    pub fn with_buffer(capacity: Option<usize>, buffer_bytes: usize) -> Result<Queue<T>, Error> {
        let ring = Ring::create(ring_size(buffer_bytes), item_limit(capacity)?, false)?;
        Ok(Queue {
            ring,
            _type: PhantomData,
        })
    }

    fn from_object(obj: Object) -> Result<Queue<T>, String> {
        Ok(Queue {
            ring: Ring::from_object(obj)?,
            _type: PhantomData,
        })
    }

    fn put_with(&self, item: T, wait: Wait) -> Result<(), PutError<T>> {
        let outcome = with_scratch(|buf| {
            wire::encode_plain_into(&item, buf).map_err(PutError::Codec)?;
            Ok(self.ring.put(buf, wait))
        });
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(PutFail::Full)) => Err(PutError::Full(item)),
            Ok(Err(PutFail::Closed)) => Err(PutError::Closed(item)),
            Err(e) => Err(e),
        }
    }

    /// Stores `item`, waiting while the queue is full.
    ///
    /// # Errors
    ///
    /// [`PutError::Closed`] (with the item) after [`Queue::close`];
    /// [`PutError::Codec`] if the item cannot be serialized.
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_with(item, Wait::Block)
    }

    /// Stores `item` if there is room now.
    ///
    /// # Errors
    ///
    /// [`PutError::Full`] with the item, or as [`Queue::put`].
    pub fn try_put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_with(item, Wait::Try)
    }

    /// Stores `item`, waiting at most `timeout` for room. (A message larger
    /// than a quarter of the ring that has started to stream is finished
    /// whatever the timeout.)
    ///
    /// # Errors
    ///
    /// [`PutError::Full`] with the item, or as [`Queue::put`].
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_with(item, until(timeout))
    }

    fn get_with(&self, wait: Wait) -> Result<T, GetError> {
        with_scratch(|buf| {
            self.ring.get(buf, wait).map_err(|e| match e {
                GetFail::Empty => GetError::Empty,
                GetFail::Timeout => GetError::Timeout,
                GetFail::Closed => GetError::Disconnected,
            })?;
            wire::decode_plain_guarded(buf).map_err(GetError::Codec)
        })
    }

    /// Takes the oldest item, waiting for one.
    ///
    /// # Errors
    ///
    /// [`GetError::Disconnected`] once the queue is closed and drained;
    /// [`GetError::Codec`] if the item does not decode as `T`.
    pub fn get(&self) -> Result<T, GetError> {
        self.get_with(Wait::Block)
    }

    /// Takes the oldest item if there is one.
    ///
    /// # Errors
    ///
    /// [`GetError::Empty`], or as [`Queue::get`].
    pub fn try_get(&self) -> Result<T, GetError> {
        self.get_with(Wait::Try)
    }

    /// Takes the oldest item, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`GetError::Timeout`], or as [`Queue::get`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_with(until(timeout))
    }

    /// Python 3.13's `Queue.shutdown(immediate)`: closes the queue (see
    /// [`close`](Queue::close): puts fail, gets return what is left and
    /// then [`GetError::Disconnected`]); with `immediate`, what is left is
    /// discarded too, so every get fails at once. Returns how many items
    /// were discarded (on a [`JoinableQueue`] each counts as done, so
    /// `join` returns).
    ///
    /// # Examples
    ///
    /// ```
    /// let q = corral::Queue::unbounded().unwrap();
    /// q.put(1).unwrap();
    /// q.put(2).unwrap();
    /// assert_eq!(q.shutdown(true), 2);
    /// assert_eq!(q.get(), Err(corral::GetError::Disconnected));
    /// ```
    pub fn shutdown(&self, immediate: bool) -> usize {
        self.close();
        if !immediate {
            return 0;
        }
        let mut discarded = 0;
        loop {
            match self.try_get() {
                Ok(item) => drop(item),
                // An item that cannot be decoded is gone all the same.
                Err(GetError::Codec(_)) => {}
                Err(_) => return discarded,
            }
            discarded += 1;
            if self.ring.object().param(2) != 0 {
                self.ring.task_done();
            }
        }
    }
}

impl<T> Queue<T> {
    /// How many items are in the queue (Python's `qsize`, exact here).
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Is the queue empty?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The item limit (`None`: unbounded).
    pub fn capacity(&self) -> Option<usize> {
        match self.ring.object().param(1) {
            0 => None,
            c => Some(c as usize),
        }
    }

    /// Closes the queue for every process: later puts fail with
    /// [`PutError::Closed`], waiting ones wake up, and gets return what is
    /// left, then [`GetError::Disconnected`] instead of waiting.
    ///
    /// (Python's `close` only means "this process will put no more"; here
    /// it is the end of the stream for everyone.)
    ///
    /// # Examples
    ///
    /// ```
    /// let q = corral::Queue::unbounded().unwrap();
    /// q.put(1).unwrap();
    /// q.close();
    /// assert!(q.put(2).is_err());
    /// assert_eq!(q.get().unwrap(), 1);
    /// assert_eq!(q.get(), Err(corral::GetError::Disconnected));
    /// ```
    pub fn close(&self) {
        self.ring.close();
    }

    /// Has the queue been closed?
    pub fn is_closed(&self) -> bool {
        self.ring.is_closed()
    }

    /// How many consumers are announced as asleep in `get` (for tests).
    #[doc(hidden)]
    pub fn sleeping_consumers(&self) -> u32 {
        self.ring.sleeping_consumers()
    }
}

object_handle_serde!(Queue<T: Data>, Kind::Queue, |this| this.ring.object());

impl<T> Queue<T> {
    pub(crate) fn watched(&self) -> &dyn crate::process::Watched {
        &self.ring
    }
}

impl<T> JoinableQueue<T> {
    pub(crate) fn watched(&self) -> &dyn crate::process::Watched {
        &self.queue.ring
    }
}

impl<T> SimpleQueue<T> {
    pub(crate) fn watched(&self) -> &dyn crate::process::Watched {
        &self.queue.ring
    }
}

impl crate::process::Watched for Ring {
    fn readable(&self) -> bool {
        Ring::readable(self)
    }
    fn watch_once(&self, stop: &std::sync::atomic::AtomicBool) {
        Ring::watch_once(self, stop)
    }
    fn interrupt(&self) {
        Ring::interrupt(self)
    }
}

fn until(timeout: Duration) -> Wait {
    match Instant::now().checked_add(timeout) {
        Some(at) => Wait::Until(at),
        None => Wait::Block,
    }
}

/// A [`Queue`] that counts unfinished items (Python's
/// `multiprocessing.JoinableQueue`): every `put` adds one, every
/// [`task_done`](JoinableQueue::task_done) removes one, and
/// [`join`](JoinableQueue::join) waits for zero. Everything else is a
/// `Queue` (it derefs to one).
///
/// # Examples
///
/// ```
/// let q = corral::JoinableQueue::unbounded().unwrap();
/// q.put(1).unwrap();
/// let item: i32 = q.get().unwrap();
/// q.task_done();
/// q.join();
/// # assert_eq!(item, 1);
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("len", &self.queue.len())
            .field("unfinished", &self.queue.ring.unfinished())
            .finish_non_exhaustive()
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T: Data> JoinableQueue<T> {
    fn with_buffer(capacity: Option<usize>, bytes: usize) -> Result<JoinableQueue<T>, Error> {
        let ring = Ring::create(ring_size(bytes), item_limit(capacity)?, true)?;
        Ok(JoinableQueue {
            queue: Queue {
                ring,
                _type: PhantomData,
            },
        })
    }

    /// See [`Queue::bounded`].
    ///
    /// # Errors
    ///
    /// As [`Queue::bounded`].
    pub fn bounded(capacity: usize) -> Result<JoinableQueue<T>, Error> {
        JoinableQueue::with_buffer(Some(capacity), BOUNDED_BUFFER)
    }

    /// See [`Queue::unbounded`].
    ///
    /// # Errors
    ///
    /// As [`Queue::unbounded`].
    pub fn unbounded() -> Result<JoinableQueue<T>, Error> {
        JoinableQueue::with_buffer(None, UNBOUNDED_BUFFER)
    }

    fn from_object(obj: Object) -> Result<JoinableQueue<T>, String> {
        let queue = Queue::from_object(obj)?;
        if queue.ring.object().param(2) == 0 {
            return Err("the queue received is not a JoinableQueue".into());
        }
        Ok(JoinableQueue { queue })
    }
}

impl<T> JoinableQueue<T> {
    /// Marks one item taken from the queue as processed.
    ///
    /// # Panics
    ///
    /// If called more times than items were put (Python raises
    /// `ValueError`).
    pub fn task_done(&self) {
        assert!(
            self.queue.ring.task_done(),
            "task_done() called more times than items were put in the JoinableQueue"
        );
    }

    /// Waits until every item put has been marked done.
    pub fn join(&self) {
        self.queue.ring.join(None);
    }

    /// Like [`JoinableQueue::join`], for at most `timeout`; returns whether
    /// every item was done.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.queue.ring.join(Instant::now().checked_add(timeout))
    }
}

object_handle_serde!(JoinableQueue<T: Data>, Kind::Queue, |this| this.queue.ring.object());

/// An unbounded queue with only `put`, `get` and `is_empty` (Python's
/// `multiprocessing.SimpleQueue`). It is a [`Queue`] underneath, with the
/// same guarantees.
///
/// # Examples
///
/// ```
/// let q = corral::SimpleQueue::new().unwrap();
/// q.put("x".to_string()).unwrap();
/// assert!(!q.is_empty());
/// assert_eq!(q.get().unwrap(), "x");
/// ```
pub struct SimpleQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleQueue").finish_non_exhaustive()
    }
}

impl<T: Data> SimpleQueue<T> {
    /// A new, empty queue.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if shared memory cannot be created.
    pub fn new() -> Result<SimpleQueue<T>, Error> {
        Ok(SimpleQueue {
            queue: Queue::unbounded()?,
        })
    }

    fn from_object(obj: Object) -> Result<SimpleQueue<T>, String> {
        Ok(SimpleQueue {
            queue: Queue::from_object(obj)?,
        })
    }

    /// See [`Queue::put`].
    ///
    /// # Errors
    ///
    /// As [`Queue::put`].
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.queue.put(item)
    }

    /// See [`Queue::get`].
    ///
    /// # Errors
    ///
    /// As [`Queue::get`].
    pub fn get(&self) -> Result<T, GetError> {
        self.queue.get()
    }

    /// See [`Queue::try_get`].
    ///
    /// # Errors
    ///
    /// As [`Queue::try_get`].
    pub fn try_get(&self) -> Result<T, GetError> {
        self.queue.try_get()
    }

    /// See [`Queue::get_timeout`].
    ///
    /// # Errors
    ///
    /// As [`Queue::get_timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.queue.get_timeout(timeout)
    }

    /// Is the queue empty?
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// See [`Queue::close`].
    pub fn close(&self) {
        self.queue.close();
    }
}

object_handle_serde!(SimpleQueue<T: Data>, Kind::Queue, |this| this.queue.ring.object());

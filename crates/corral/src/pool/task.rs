//! Handles on submitted tasks, and waiting on many of them.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::core::{Raw, Shared, Sink};
use crate::{Data, TaskError, TaskTimeout};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct SlotState<R> {
    result: Option<Result<R, TaskError>>,
    taken: bool,
    wakers: Vec<Waker>,
}

/// Where one task's outcome lands.
pub(super) struct TaskSlot<R> {
    done: AtomicBool,
    state: Mutex<SlotState<R>>,
}

impl<R> TaskSlot<R> {
    pub(super) fn new() -> TaskSlot<R> {
        TaskSlot {
            done: AtomicBool::new(false),
            state: Mutex::new(SlotState {
                result: None,
                taken: false,
                wakers: Vec::new(),
            }),
        }
    }

    /// Stores the outcome unless one is there; true if it was stored.
    fn complete(&self, result: Result<R, TaskError>) -> bool {
        let wakers = {
            let mut st = lock(&self.state);
            if st.result.is_some() || st.taken {
                return false;
            }
            st.result = Some(result);
            self.done.store(true, Ordering::Release);
            std::mem::take(&mut st.wakers)
        };
        for w in wakers {
            w.wake();
        }
        true
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Registers `waker` unless the task is done; true if done.
    fn register(&self, waker: &Waker) -> bool {
        let mut st = lock(&self.state);
        if self.is_done() {
            return true;
        }
        if !st.wakers.iter().any(|w| w.will_wake(waker)) {
            st.wakers.push(waker.clone());
        }
        false
    }

    fn take(&self) -> Option<Result<R, TaskError>> {
        let mut st = lock(&self.state);
        let r = st.result.take();
        st.taken |= r.is_some();
        r
    }
}

impl<R: Data> Sink for TaskSlot<R> {
    fn deliver(&self, outcomes: &mut dyn Iterator<Item = (u32, Raw<'_>)>) {
        for (_, raw) in outcomes {
            if !self.is_done() {
                self.complete(raw.decode());
            }
        }
    }

    fn wanted(&self, _: u32) -> bool {
        !self.is_done()
    }
}

/// Wakes a parked thread.
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

fn thread_waker() -> Waker {
    Waker::from(Arc::new(ThreadWaker(std::thread::current())))
}

/// Parks this thread until it is woken or `deadline` comes; false once the
/// deadline has passed (then it does not park).
fn park(deadline: Option<Instant>) -> bool {
    match deadline {
        None => std::thread::park(),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::park_timeout(left);
        }
    }
    true
}

/// A task submitted to a [`crate::Pool`]: Python's `AsyncResult` /
/// `concurrent.futures.Future`.
///
/// Wait for it with [`join`](Task::join), or `.await` it: `Task<R>` is a
/// [`Future`] whose output is `Result<R, TaskError>`, woken by the pool's
/// dispatcher thread, so awaiting it never blocks an async runtime. Dropping
/// a task does not cancel it (its result is discarded).
///
/// # Examples
///
/// ```no_run
/// fn square(x: u64) -> u64 { x * x }
/// corral::init();
/// let pool = corral::Pool::new(2).unwrap();
/// let tasks: Vec<_> = (0..4).map(|x| pool.submit(square, x)).collect();
/// let squares: Vec<u64> = tasks.into_iter().map(|t| t.join().unwrap()).collect();
/// assert_eq!(squares, [0, 1, 4, 9]);
/// ```
pub struct Task<R> {
    slot: Arc<TaskSlot<R>>,
    shared: Arc<Shared>,
}

impl<R> fmt::Debug for Task<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("finished", &self.slot.is_done())
            .finish()
    }
}

impl<R: Data> Task<R> {
    pub(super) fn new(slot: Arc<TaskSlot<R>>, shared: Arc<Shared>) -> Task<R> {
        Task { slot, shared }
    }

    /// Waits for the task and returns its value or why it has none.
    ///
    /// # Errors
    ///
    /// Any [`TaskError`]: the task panicked, timed out, lost its worker,
    /// went over the memory limit, was cancelled, could not cross, or the
    /// pool closed first.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn half(x: u32) -> u32 { assert!(x % 2 == 0, "odd"); x / 2 }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// assert_eq!(pool.submit(half, 8).join().unwrap(), 4);
    /// let err = pool.submit(half, 3).join().unwrap_err();
    /// assert_eq!(err.panic().unwrap().message, "odd");
    /// ```
    pub fn join(self) -> Result<R, TaskError> {
        self.wait(None);
        self.slot.take().unwrap_or(Err(TaskError::Cancelled))
    }

    /// Like [`join`](Task::join), but gives up after `timeout` and hands the
    /// task back in [`TaskTimeout::Elapsed`]. The task keeps running.
    ///
    /// # Errors
    ///
    /// [`TaskTimeout::Elapsed`] with the task; [`TaskTimeout::Failed`] with
    /// the task's error.
    pub fn join_timeout(self, timeout: Duration) -> Result<R, TaskTimeout<R>> {
        if self.wait(crate::time::deadline(timeout)) {
            self.slot
                .take()
                .unwrap_or(Err(TaskError::Cancelled))
                .map_err(TaskTimeout::Failed)
        } else {
            Err(TaskTimeout::Elapsed(self))
        }
    }

    /// Whether the task has ended (with its value or an error).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn id(x: u8) -> u8 { x }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// let task = pool.submit(id, 1);
    /// assert!(corral::wait_all(std::slice::from_ref(&task), None));
    /// assert!(task.is_finished());
    /// ```
    pub fn is_finished(&self) -> bool {
        self.slot.is_done()
    }

    /// Cancels the task: a queued task will not run (whether it waits in
    /// the pool's queue or already in a worker's); a running one has its
    /// worker killed (and replaced). Either way it ends with
    /// [`TaskError::Cancelled`], at once. A task that has ended is left
    /// alone.
    ///
    /// Python's `Future.cancel` cannot stop a running task; pebble's can,
    /// and so can this (billiard calls it `terminate_job`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn forever(_: ()) { loop { std::thread::park() } }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// let task = pool.submit(forever, ());
    /// task.cancel(); // skipped if not started yet, else its worker is killed
    /// assert_eq!(task.join(), Err(corral::TaskError::Cancelled));
    /// ```
    #[doc(alias = "terminate_job")]
    pub fn cancel(&self) {
        if self.slot.complete(Err(TaskError::Cancelled)) {
            let sink: Arc<dyn Sink> = self.slot.clone();
            self.shared.cancel(&sink, 0);
        }
    }

    /// Waits until done or `deadline`; true if done.
    fn wait(&self, deadline: Option<Instant>) -> bool {
        if self.shared.help_until(deadline, || self.slot.is_done()) {
            return true;
        }
        let waker = thread_waker();
        loop {
            if self.slot.register(&waker) {
                return true;
            }
            if !park(deadline) {
                return self.slot.is_done();
            }
        }
    }
}

impl<R: Data> Future for Task<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.slot.register(cx.waker()) {
            match self.slot.take() {
                Some(result) => Poll::Ready(result),
                None => panic!("a corral Task was polled after it completed"),
            }
        } else {
            Poll::Pending
        }
    }
}

/// Waits until every task has ended, or until `timeout` passes (`None`: no
/// limit). Returns whether all ended. (`concurrent.futures.wait` with
/// `ALL_COMPLETED`.)
///
/// # Examples
///
/// ```no_run
/// fn id(x: u8) -> u8 { x }
/// corral::init();
/// let pool = corral::Pool::new(2).unwrap();
/// let tasks: Vec<_> = (0..8).map(|x| pool.submit(id, x)).collect();
/// assert!(corral::wait_all(&tasks, None));
/// assert!(tasks.iter().all(|t| t.is_finished()));
/// ```
pub fn wait_all<R: Data>(tasks: &[Task<R>], timeout: Option<Duration>) -> bool {
    let deadline = crate::time::deadline_opt(timeout);
    let waker = thread_waker();
    for task in tasks {
        while !task.slot.register(&waker) {
            if !park(deadline) {
                return false;
            }
        }
    }
    true
}

/// Waits until at least one task has ended, or until `timeout` passes.
/// Returns the index of an ended task (the lowest), or `None` on timeout.
/// (`concurrent.futures.wait` with `FIRST_COMPLETED`.)
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
/// corral::init();
/// let pool = corral::Pool::new(2).unwrap();
/// let tasks = vec![pool.submit(nap, 2_000), pool.submit(nap, 1)];
/// assert_eq!(corral::wait_any(&tasks, Some(Duration::from_secs(1))), Some(1));
/// ```
pub fn wait_any<R: Data>(tasks: &[Task<R>], timeout: Option<Duration>) -> Option<usize> {
    let deadline = crate::time::deadline_opt(timeout);
    let waker = thread_waker();
    loop {
        if let Some(i) = tasks.iter().position(|t| t.slot.register(&waker)) {
            return Some(i);
        }
        if tasks.is_empty() || !park(deadline) {
            return None;
        }
    }
}

/// Wakes an [`AsCompleted`] with the index of the task that ended.
struct IndexWaker {
    ready: Arc<ReadyList>,
    index: usize,
}

struct ReadyList {
    indices: Mutex<VecDeque<usize>>,
    thread: Mutex<Option<Thread>>,
}

impl Wake for IndexWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.ready.indices).push_back(self.index);
        if let Some(t) = lock(&self.ready.thread).as_ref() {
            t.unpark();
        }
    }
}

/// Yields tasks' outcomes in the order they end, each with the task's index
/// in the input. Python's `concurrent.futures.as_completed`.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
/// corral::init();
/// let pool = corral::Pool::new(2).unwrap();
/// let tasks = vec![pool.submit(nap, 300), pool.submit(nap, 1)];
/// let order: Vec<usize> = corral::as_completed(tasks).map(|(i, _)| i).collect();
/// assert_eq!(order, [1, 0]);
/// ```
pub fn as_completed<R: Data>(tasks: impl IntoIterator<Item = Task<R>>) -> AsCompleted<R> {
    let tasks: Vec<Option<Task<R>>> = tasks.into_iter().map(Some).collect();
    let ready = Arc::new(ReadyList {
        indices: Mutex::new(VecDeque::new()),
        thread: Mutex::new(None),
    });
    for (index, task) in tasks.iter().enumerate() {
        let waker = Waker::from(Arc::new(IndexWaker {
            ready: ready.clone(),
            index,
        }));
        if task.as_ref().expect("just made").slot.register(&waker) {
            lock(&ready.indices).push_back(index);
        }
    }
    AsCompleted {
        left: tasks.len(),
        tasks,
        ready,
        _r: PhantomData,
    }
}

/// The iterator made by [`as_completed`]: `(index, outcome)` pairs in the
/// order the tasks end.
///
/// # Examples
///
/// ```no_run
/// fn id(x: u8) -> u8 { x }
/// corral::init();
/// let pool = corral::Pool::new(2).unwrap();
/// let mut done = corral::as_completed((0..3).map(|x| pool.submit(id, x)));
/// assert_eq!(done.len(), 3);
/// let (index, value) = done.next().unwrap();
/// assert_eq!(value.unwrap(), index as u8);
/// ```
pub struct AsCompleted<R> {
    tasks: Vec<Option<Task<R>>>,
    ready: Arc<ReadyList>,
    left: usize,
    _r: PhantomData<R>,
}

impl<R> fmt::Debug for AsCompleted<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("left", &self.left)
            .finish()
    }
}

impl<R: Data> Iterator for AsCompleted<R> {
    type Item = (usize, Result<R, TaskError>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        *lock(&self.ready.thread) = Some(std::thread::current());
        loop {
            let next = lock(&self.ready.indices).pop_front();
            match next {
                Some(i) => {
                    if let Some(task) = self.tasks.get_mut(i).and_then(Option::take) {
                        self.left -= 1;
                        return Some((i, task.join()));
                    }
                }
                None => std::thread::park(),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<R: Data> ExactSizeIterator for AsCompleted<R> {}

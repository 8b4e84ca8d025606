//! Handles on submitted tasks, and waiting on many of them.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::engine::EngineRef;
use super::job::{Cancel, Raw, Sink};
use crate::poison::lock;
use crate::{Data, TaskError, TaskTimeout};

/// A user's value the pool holds until its caller takes it. If the caller
/// gives the call up (drops its [`Task`], `imap` or `map_async`), the value
/// is dropped by whichever thread lets the call go last, the pool's own
/// threads included: its `Drop` then runs under a guard, so that a panic
/// there (reported on stderr, as any panic) stays with this value instead of
/// unwinding through the pool. Before, a result whose `Drop` panicked on
/// the dispatcher thread closed the pool.
pub(super) struct Held<R>(Option<R>);

impl<R> Held<R> {
    #[inline]
    pub(super) fn new(value: R) -> Held<R> {
        Held(Some(value))
    }

    /// The value, for its caller.
    #[inline]
    pub(super) fn into_inner(mut self) -> R {
        self.0.take().expect("a held value is taken once")
    }
}

impl<R> Drop for Held<R> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(value)));
            // The payload may itself panic on drop.
            if let Err(payload) = dropped {
                std::mem::forget(payload);
            }
        }
    }
}

struct SlotState<R> {
    /// The error boxed: a slot is allocated for every task, and a small one
    /// is written in place (a `TaskError` inline made it 150 bytes, copied
    /// through `memcpy` for every task).
    result: Option<Result<Held<R>, Box<TaskError>>>,
    taken: bool,
    wakers: Vec<Waker>,
}

/// Where one task's outcome lands.
pub(crate) struct TaskSlot<R> {
    done: AtomicBool,
    /// The pid of the worker it was last handed to (0: none yet).
    worker: AtomicU32,
    state: Mutex<SlotState<R>>,
}

impl<R> TaskSlot<R> {
    pub(crate) fn new() -> TaskSlot<R> {
        TaskSlot {
            done: AtomicBool::new(false),
            worker: AtomicU32::new(0),
            state: Mutex::new(SlotState {
                result: None,
                taken: false,
                wakers: Vec::new(),
            }),
        }
    }

    /// Stores the outcome unless one is there; true if it was stored.
    pub(super) fn complete(&self, result: Result<R, TaskError>) -> bool {
        let wakers = {
            let mut st = lock(&self.state);
            if st.result.is_some() || st.taken {
                return false;
            }
            st.result = Some(result.map(Held::new).map_err(Box::new));
            self.done.store(true, Ordering::Release);
            std::mem::take(&mut st.wakers)
        };
        for w in wakers {
            w.wake();
        }
        true
    }

    pub(super) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Makes the slot as new, if nothing else holds it and its lock is
    /// sound; whether it did.
    fn reset(&mut self) -> bool {
        let Ok(state) = self.state.get_mut() else {
            return false;
        };
        state.result = None;
        state.taken = false;
        state.wakers.clear();
        *self.done.get_mut() = false;
        *self.worker.get_mut() = 0;
        true
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

    /// Whether it ended with an error.
    fn failed(&self) -> bool {
        self.is_done()
            && lock(&self.state)
                .result
                .as_ref()
                .is_some_and(Result::is_err)
    }

    fn take(&self) -> Option<Result<R, TaskError>> {
        let mut st = lock(&self.state);
        let r = st.result.take();
        st.taken |= r.is_some();
        r.map(unpack)
    }
}

/// An outcome as the slot holds it, as the task gives it.
fn unpack<R>(held: Result<Held<R>, Box<TaskError>>) -> Result<R, TaskError> {
    held.map(Held::into_inner).map_err(|e| *e)
}

/// How many bytes of ended tasks' slots a thread keeps at most: a burst of
/// 100,000 tasks of a small result (a `u64`'s slot is 64 bytes; at 4 MiB,
/// a third of such a burst allocated its slots anew: submit-each
/// 3.10 -> 3.35 M/s with 8, 12 alternating pairs). glibc would keep the
/// memory of as many slots freed anyway.
const SPARE_BYTES: usize = 8 << 20;

/// Slots of tasks a thread joined, nothing else holding them, kept for the
/// tasks it submits next. A slot from the allocator cost the submitting
/// thread, the one a stream of small tasks is bound by, an allocation and
/// a free: 110-150 ns of its 450-550 a task, glibc's bins taking the many
/// slots freed at once after a burst one by one.
#[derive(Default)]
struct Spares {
    slots: Vec<Arc<dyn Any + Send + Sync>>,
    bytes: usize,
}

thread_local! {
    static SPARES: RefCell<Spares> = RefCell::default();
}

impl Spares {
    fn pop(&mut self) -> Option<Arc<dyn Any + Send + Sync>> {
        let slot = self.slots.pop()?;
        self.bytes -= std::mem::size_of_val(&*slot);
        Some(slot)
    }

    fn push(&mut self, slot: Arc<dyn Any + Send + Sync>) {
        let size = std::mem::size_of_val(&*slot);
        if self.bytes + size <= SPARE_BYTES {
            self.bytes += size;
            self.slots.push(slot);
        }
    }
}

impl<R: Data> TaskSlot<R> {
    /// A slot for a new task: one this thread kept, or a new one.
    pub(crate) fn fresh() -> Arc<TaskSlot<R>> {
        let kept = SPARES.try_with(|s| s.borrow_mut().pop()).ok().flatten();
        match kept.map(Arc::downcast::<TaskSlot<R>>) {
            Some(Ok(slot)) => slot,
            Some(Err(other)) => {
                // Another result type's: back on top, for its own tasks.
                let _ = SPARES.try_with(|s| s.borrow_mut().push(other));
                Arc::new(TaskSlot::new())
            }
            None => Arc::new(TaskSlot::new()),
        }
    }

    /// Takes the outcome, as [`take`](TaskSlot::take) does, and keeps the
    /// slot for this thread's next task if nothing else holds it: then its
    /// lock is not taken (two atomic operations fewer a task, each a drain
    /// of the thread's stores; `bench/README.md`).
    fn take_and_keep(mut slot: Arc<TaskSlot<R>>) -> Option<Result<R, TaskError>> {
        let Some(own) = Arc::get_mut(&mut slot) else {
            return slot.take();
        };
        let Ok(state) = own.state.get_mut() else {
            return slot.take();
        };
        let result = state.result.take().map(unpack);
        own.reset();
        let _ = SPARES.try_with(|s| s.borrow_mut().push(slot));
        result
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

    fn assigned(&self, pid: u32) {
        self.worker.store(pid, Ordering::Relaxed);
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
    shared: EngineRef,
    /// For a task that stands for a whole call (`map_async`): the call's
    /// sink, whose items a cancellation cancels.
    whole: Option<Arc<dyn Sink>>,
}

impl<R> fmt::Debug for Task<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("finished", &self.slot.is_done())
            .finish()
    }
}

impl<R: Data> Task<R> {
    pub(crate) fn new(slot: Arc<TaskSlot<R>>, shared: EngineRef) -> Task<R> {
        Task {
            slot,
            shared,
            whole: None,
        }
    }

    /// A task that ends when every item of `sink`'s call has (`map_async`).
    pub(super) fn whole(slot: Arc<TaskSlot<R>>, shared: EngineRef, sink: Arc<dyn Sink>) -> Task<R> {
        Task {
            slot,
            shared,
            whole: Some(sink),
        }
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
        self.take()
    }

    /// The outcome of a task that ended (cancelled if none is left); its
    /// slot is kept for this thread's next task.
    fn take(self) -> Result<R, TaskError> {
        let Task {
            slot,
            shared,
            whole,
        } = self;
        drop((shared, whole));
        TaskSlot::take_and_keep(slot).unwrap_or(Err(TaskError::Cancelled))
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
            self.take().map_err(TaskTimeout::Failed)
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
        self.settle_copy();
        self.slot.is_done()
    }

    /// In a forked child's copy of the task (which no one there will end):
    /// ends it with [`TaskError::ForkedCopy`], so that every wait for it
    /// ends at once; whether it is a copy.
    fn settle_copy(&self) -> bool {
        let forked = self.shared.forked();
        let copy = forked.is_some();
        if let Some(forked) = forked {
            self.slot.complete(Err(forked));
        }
        copy
    }

    /// Hands `waker` to the task unless it has ended; whether it has (a
    /// forked copy's, at once).
    fn register(&self, waker: &Waker) -> bool {
        self.settle_copy();
        self.slot.register(waker)
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
        if !self.slot.complete(Err(TaskError::Cancelled)) {
            return;
        }
        match &self.whole {
            Some(sink) => {
                sink.abandon();
                self.shared.cancel(Cancel::Sink(sink), true);
            }
            None => {
                let sink: Arc<dyn Sink> = self.slot.clone();
                self.shared.cancel(Cancel::Item(&sink, 0), true);
            }
        }
    }

    /// Whether the task ended with an error (Python's
    /// `future.exception() is not None`). False while it runs.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn fails(_: ()) { panic!("no") }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// let task = pool.submit(fails, ());
    /// corral::wait_all(std::slice::from_ref(&task), None);
    /// assert!(task.failed());
    /// ```
    pub fn failed(&self) -> bool {
        self.settle_copy();
        self.slot.failed()
    }

    /// The pid of the worker process this task was handed to last: the
    /// one that died, for [`TaskError::WorkerLost`] (pebble's
    /// `ProcessExpired.pid`). `None` before it reached a worker, and for a
    /// [`Pool::map_async`](crate::Pool::map_async) task. A panic carries its
    /// own in [`RemotePanic::pid`](crate::RemotePanic::pid).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use corral::TaskError;
    /// fn crash(_: ()) { std::process::abort() }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// let task = pool.submit(crash, ());
    /// corral::wait_all(std::slice::from_ref(&task), None);
    /// let pid = task.worker_pid().unwrap();
    /// assert!(matches!(task.join(), Err(TaskError::WorkerLost(_))));
    /// println!("worker {pid} died");
    /// ```
    pub fn worker_pid(&self) -> Option<u32> {
        match self.slot.worker.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Runs `f` with the task's outcome once it has ended: Python's
    /// `future.add_done_callback(fn)` and `apply_async(callback=,
    /// error_callback=)` in one (match on the `Result`).
    ///
    /// Callbacks run one at a time on the pool's callback thread, never
    /// under its lock, so a callback may submit more work. [`Pool::join`]
    /// (and dropping the pool) waits until every callback has run. A
    /// callback that panics is reported on stderr and does not stop the
    /// others. Registered once the pool has joined, `f` runs here, now.
    ///
    /// [`Pool::join`]: crate::Pool::join
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::sync::{Arc, Mutex};
    /// fn square(x: u64) -> u64 { x * x }
    /// corral::init();
    /// let pool = corral::Pool::new(2).unwrap();
    /// let total = Arc::new(Mutex::new(0));
    /// for x in 0..4 {
    ///     let total = total.clone();
    ///     pool.submit(square, x).on_done(move |outcome| match outcome {
    ///         Ok(v) => *total.lock().unwrap() += v,
    ///         Err(e) => eprintln!("failed: {e}"),
    ///     });
    /// }
    /// pool.join(); // the callbacks have run
    /// assert_eq!(*total.lock().unwrap(), 14);
    /// ```
    #[doc(alias = "add_done_callback")]
    #[doc(alias = "callback")]
    #[doc(alias = "error_callback")]
    pub fn on_done(self, f: impl FnOnce(Result<R, TaskError>) + Send + 'static) {
        let slot = self.slot.clone();
        let run: super::callback::Callback =
            Box::new(move || f(slot.take().unwrap_or(Err(TaskError::Cancelled))));
        match self.shared.callbacks().waker(run) {
            Ok(waker) => {
                if self.slot.register(&waker) {
                    waker.wake();
                }
            }
            Err(run) => {
                self.wait(None);
                run();
            }
        }
    }

    /// Waits until the task has ended, at most `timeout`; true if it has
    /// (Python's `AsyncResult.wait(timeout)`). Unlike
    /// [`join_timeout`](Task::join_timeout) it keeps the handle, so
    /// [`worker_pid`](Task::worker_pid) still tells which worker it ran on.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// fn crash(_: ()) { std::process::abort() }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// let task = pool.submit(crash, ());
    /// assert!(task.wait_timeout(Duration::from_secs(10)));
    /// let pid = task.worker_pid(); // the worker that died
    /// assert!(task.join().is_err() && pid.is_some());
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait(Instant::now().checked_add(timeout))
    }

    /// [`join`](Task::join) for a task whose caller has watched for its
    /// outcome already (`Pool::apply`): it sleeps at once if not done, not
    /// after a second watch (which, on a busy machine, would hold the CPU
    /// its worker waits for twice as long).
    pub(super) fn join_watched(self) -> Result<R, TaskError> {
        self.wait_from(None, true);
        self.take()
    }

    /// Waits until done or `deadline`; true if done.
    fn wait(&self, deadline: Option<Instant>) -> bool {
        self.wait_from(deadline, false)
    }

    /// Waits until done or `deadline`, watching first unless `watched`;
    /// true if done.
    fn wait_from(&self, deadline: Option<Instant>, watched: bool) -> bool {
        // Done already (the common case after `apply`'s watch): no bell.
        if self.slot.is_done() {
            return true;
        }
        let ready = &mut || self.slot.is_done();
        let register = &mut |waker: &Waker| self.slot.register(waker);
        let waited = if watched {
            self.shared.sleep_until(deadline, ready, register)
        } else {
            self.shared.wait_for(deadline, ready, register)
        };
        if let Some(done) = waited {
            return done;
        }
        if self.settle_copy() {
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

impl<R> crate::process::sealed::Sealed for Task<R> {}

impl<R: Data> crate::process::sealed::Notify for TaskSlot<R> {
    fn is_ready(&self) -> bool {
        self.is_done()
    }

    fn register(&self, waker: &Waker) -> bool {
        TaskSlot::register(self, waker)
    }
}

/// A task is ready for [`crate::wait`] once it has ended.
impl<R: Data> crate::Waitable for Task<R> {
    fn wait_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        Vec::new()
    }

    fn wait_task(&self) -> Option<&dyn crate::process::sealed::Notify> {
        self.settle_copy();
        Some(&*self.slot)
    }
}

impl<R: Data> Future for Task<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.settle_copy();
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
        while !task.register(&waker) {
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
        if let Some(i) = tasks.iter().position(|t| t.register(&waker)) {
            return Some(i);
        }
        if tasks.is_empty() || !park(deadline) {
            return None;
        }
    }
}

/// Waits until a task fails, or every task has ended, or `timeout` passes:
/// `concurrent.futures.wait` with `FIRST_EXCEPTION`. Returns the index of
/// a failed task (the lowest), or `None` when all ended without an error or
/// time ran out (tell them apart with [`Task::is_finished`]).
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// fn check(x: u64) -> u64 { assert!(x != 2, "bad input"); std::thread::sleep(Duration::from_millis(100 * x)); x }
/// corral::init();
/// let pool = corral::Pool::new(2).unwrap();
/// let tasks: Vec<_> = (0..6).map(|x| pool.submit(check, x)).collect();
/// assert_eq!(corral::wait_first_error(&tasks, None), Some(2));
/// ```
#[doc(alias = "FIRST_EXCEPTION")]
pub fn wait_first_error<R: Data>(tasks: &[Task<R>], timeout: Option<Duration>) -> Option<usize> {
    let deadline = crate::time::deadline_opt(timeout);
    let waker = thread_waker();
    loop {
        let mut all = true;
        for (i, task) in tasks.iter().enumerate() {
            if task.register(&waker) {
                if task.slot.failed() {
                    return Some(i);
                }
            } else {
                all = false;
            }
        }
        if all || !park(deadline) {
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
        if task.as_ref().expect("just made").register(&waker) {
            lock(&ready.indices).push_back(index);
        }
    }
    AsCompleted {
        left: tasks.len(),
        tasks,
        ready,
        deadline: None,
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
    deadline: Option<Instant>,
    _r: PhantomData<R>,
}

impl<R: Data> AsCompleted<R> {
    /// Stops yielding once `timeout` has passed from now, even if tasks
    /// remain (Python's `as_completed(fs, timeout)`, which raises
    /// `TimeoutError` there): check [`timed_out`](AsCompleted::timed_out),
    /// and take the unfinished tasks back with
    /// [`into_remaining`](AsCompleted::into_remaining).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// corral::init();
    /// let pool = corral::Pool::new(2).unwrap();
    /// let tasks = vec![pool.submit(nap, 10), pool.submit(nap, 60_000)];
    /// let mut done = corral::as_completed(tasks).timeout(Duration::from_secs(1));
    /// assert_eq!(done.next().map(|(i, _)| i), Some(0));
    /// assert!(done.next().is_none() && done.timed_out());
    /// for (_, task) in done.into_remaining() {
    ///     task.cancel();
    /// }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> AsCompleted<R> {
        self.deadline = crate::time::deadline(timeout);
        self
    }

    /// Whether it stopped because its [`timeout`](AsCompleted::timeout)
    /// passed with tasks left.
    pub fn timed_out(&self) -> bool {
        self.left > 0 && self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The tasks not yielded yet, with their indices in the input.
    pub fn into_remaining(self) -> Vec<(usize, Task<R>)> {
        self.tasks
            .into_iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .collect()
    }
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
                None if !park(self.deadline) => return None,
                None => {}
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<R: Data> ExactSizeIterator for AsCompleted<R> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn spares() -> (usize, usize) {
        SPARES.with(|s| {
            let s = s.borrow();
            (s.slots.len(), s.bytes)
        })
    }

    #[test]
    fn a_joined_slot_comes_back_as_new_for_the_next_task_of_its_type() {
        let slot = TaskSlot::<u64>::fresh();
        slot.worker.store(7, Ordering::Relaxed);
        assert!(slot.complete(Ok(5)));
        let at = Arc::as_ptr(&slot);
        let before = spares().0;
        let taken = TaskSlot::take_and_keep(slot);
        assert_eq!(taken.map(|r| r.ok()), Some(Some(5)));
        assert_eq!(spares().0, before + 1);

        // Another type's task does not take it, and leaves it kept.
        let other = TaskSlot::<String>::fresh();
        assert_eq!(spares().0, before + 1);
        drop(other);

        let again = TaskSlot::<u64>::fresh();
        assert_eq!(Arc::as_ptr(&again), at, "the kept slot");
        assert_eq!(spares().0, before);
        assert!(!again.is_done());
        assert_eq!(again.worker.load(Ordering::Relaxed), 0);
        assert!(again.take().is_none(), "no outcome, not taken");
        assert!(
            again.complete(Err(TaskError::Cancelled)),
            "takes a new outcome"
        );
    }

    #[test]
    fn a_slot_something_else_holds_is_not_kept() {
        let slot = TaskSlot::<u64>::fresh();
        assert!(slot.complete(Ok(3)));
        let job: Arc<dyn Sink> = slot.clone();
        let before = spares().0;
        let taken = TaskSlot::take_and_keep(slot);
        assert_eq!(taken.map(|r| r.ok()), Some(Some(3)), "taken under the lock");
        assert_eq!(spares().0, before, "the job still holds it");
        drop(job);
    }

    /// A result of 1 KiB.
    type Big = ([u64; 32], [u64; 32], [u64; 32], [u64; 32]);

    #[test]
    fn a_thread_keeps_at_most_its_byte_bound() {
        let size = std::mem::size_of::<TaskSlot<Big>>();
        let most = SPARE_BYTES / size;
        for _ in 0..most + 10 {
            TaskSlot::take_and_keep(Arc::new(TaskSlot::<Big>::new()));
        }
        let (count, bytes) = spares();
        assert_eq!(count, most);
        assert!(bytes <= SPARE_BYTES && bytes == count * size);
        for _ in 0..count {
            drop(TaskSlot::<Big>::fresh());
        }
        assert_eq!(spares(), (0, 0));
    }
}

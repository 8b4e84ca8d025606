//! A supervised pool of worker processes: Python's `multiprocessing.Pool`
//! and `ProcessPoolExecutor`, without their hangs.
//!
//! ```no_run
//! use std::time::Duration;
//! use corral::Pool;
//!
//! fn square(x: u64) -> u64 { x * x }
//!
//! corral::init();
//! let pool = Pool::builder()
//!     .processes(4)
//!     .task_timeout(Duration::from_secs(30))
//!     .build()
//!     .unwrap();
//! assert_eq!(pool.apply(square, 7).unwrap(), 49);
//! assert_eq!(pool.map(square, 0..4).unwrap(), [0, 1, 4, 9]);
//! let total: u64 = pool.imap(square, 0..1_000).map(Result::unwrap).sum();
//! # let _ = total;
//! ```
//!
//! # What the pool promises
//!
//! * **Every task ends exactly once**, with its value or a [`TaskError`].
//! * **A dying worker fails only the item it was running.** Whatever killed
//!   it (a signal, a segfault, `abort`, `exit`, the OOM killer), that item
//!   gets [`TaskError::WorkerLost`] with the exit status. Items of the same
//!   batch that finished keep their results (they survive in shared memory
//!   even if the worker dies before sending them); items not yet started run
//!   on another worker. The worker is replaced and the pool goes on.
//! * **Per-task timeouts.** With [`PoolBuilder::task_timeout`] (every task)
//!   or [`Pool::submit_with_timeout`] (one task), a task running past its
//!   limit has its worker killed (SIGTERM, then SIGKILL 20 ms later) and
//!   ends with [`TaskError::TimedOut`]. The limit also covers time spent
//!   waiting inside a worker that stopped making progress (one stopped with
//!   SIGSTOP, say): such a worker is killed and its unstarted items run
//!   elsewhere. Limits saturate: `Duration::MAX` means none.
//! * **A task's subprocesses end with it.** A timeout, a cancel, `terminate`
//!   or the death of this program kills the worker's whole process group
//!   (what `std::process::Command` starts stays in it), and the group is
//!   killed again when the worker dies, before it is reaped. Descendants
//!   that leave the group (`setsid`, daemons) are found through Linux's
//!   child-subreaper and the worker's mark in their environment, and killed
//!   once the worker is gone (see `start/orphans.rs` for what escapes).
//! * **The pool never breaks by accident.** A worker's life is one state
//!   machine (`pool/life.rs`): a failed send, end-of-file and a process exit
//!   are different events, and only a worker that never got to say READY
//!   counts as a start-up failure. The pool stops running tasks only when its
//!   initializer fails ([`TaskError::InitializerFailed`]) or, without one,
//!   when every new worker dies before it is ready, many times in a row
//!   ([`TaskError::PoolBroken`]). A pool keeps a few spare descriptors, so a
//!   replacement worker starts even when tasks queued with handles hold all
//!   the others.
//! * **Memory caps.** [`PoolBuilder::memory_limit`] caps each worker's
//!   address space (`RLIMIT_AS`). A task whose allocation fails ends with
//!   [`TaskError::MemoryExceeded`]. (cgroup v2 `memory.max` would cap
//!   resident memory instead, but needs a delegated memory controller, which
//!   most machines, this project's CI included, do not give to a user
//!   process; the rlimit works everywhere. It counts *virtual* memory, so
//!   leave room for the worker's own ~20-100 MiB of mappings.)
//! * **Values that cannot cross** (serialize or deserialize, either way)
//!   fail their own task with [`TaskError::Codec`]; nothing hangs.
//! * **Lazy input.** [`Pool::imap`] and [`Pool::imap_unordered`] pull input
//!   only as results are consumed, keeping a bounded number of items in
//!   flight: an endless iterator runs in constant memory.
//! * **Backpressure.** [`PoolBuilder::max_pending`] bounds the queue:
//!   `submit` blocks while that many items wait.
//! * **Clean ends.** Dropping the pool stops accepting work, lets submitted
//!   work finish (within its timeout) and stops the workers;
//!   [`Pool::terminate`] kills them at once. No process, descriptor or
//!   shared memory is left behind, and the workers die with this process if
//!   it is killed. A worker that loses its fork server ends its task with
//!   [`TaskError::Lost`], which says why (Linux reports no status for it).
//! * **Nesting.** A task may create and use its own pool.
//! * **A pool belongs to the process that made it.** A forked child (of
//!   [`ProcessBuilder::fork_closure`](crate::ProcessBuilder::fork_closure),
//!   the `Fork` start method, a plain `fork`) has copies of its parent's
//!   pool handles and tasks, not the pool: there every call fails at once
//!   with [`TaskError::ForkedCopy`], closing or dropping the copy does
//!   nothing, and the parent's pool is untouched. Make a pool in the child:
//!   a child of any fork starts afresh, with a fork server of its own. The
//!   other way round, a task that forks and whose child returns too (rather
//!   than ending with `_exit` or `exec`) gets its own value back: the child
//!   ends as it comes back into corral, and never serves the pool.
//!
//! # How it works
//!
//! One supervisor state, guarded by one lock, knows which batch each worker
//! holds; a dispatcher thread reaps and replaces workers and enforces
//! deadlines. Work travels in batches through a ring in each worker's shared
//! memory, and outcomes come back through another: while both sides are
//! busy, no system call at all. A worker out of batches watches its ring
//! for 100 µs (10 µs when the thread it waits for is off its CPU, perhaps
//! waiting for this one), then sleeps in its socket, where the supervisor
//! wakes it; a caller waiting for a result reads the rings itself for
//! 100 µs, during which workers publish without a word, then sleeps while
//! the dispatcher is woken instead. The socket carries what shared memory cannot:
//! descriptors, and values too large for a ring.

pub(crate) mod callback;
mod core;
pub(crate) mod engine;
mod inbox;
mod job;
mod life;
mod pod;
mod results;
mod ring;
mod task;
mod worker;

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[cfg_attr(not(feature = "cluster"), allow(unused_imports))]
pub(crate) use self::core::count_failure;
use self::core::{Config, Shared};
use self::engine::{EngineRef, Owned};
use self::job::Args;
#[cfg_attr(not(feature = "cluster"), allow(unused_imports))]
pub(crate) use self::job::{
    Cancel, Job, JobBuilder, Raw, Sink, deliver_guarded, fail_jobs, refusal,
};
pub use self::task::{AsCompleted, Task, as_completed, wait_all, wait_any, wait_first_error};
use self::task::{Held, TaskSlot};
use crate::poison::{self, lock};
use crate::start::bootstrap::func_offset;
use crate::start::{identity, runtime};
use crate::{Data, Error, StartMethod, TaskError, wire};

/// Counters of a pool's life, from [`Pool::stats`].
///
/// # Examples
///
/// ```no_run
/// fn id(x: u8) -> u8 { x }
/// corral::init();
/// let pool = corral::Pool::new(2).unwrap();
/// pool.map(id, 0..10).unwrap();
/// let stats = pool.stats();
/// assert_eq!(stats.completed, 10);
/// assert_eq!(stats.workers_replaced, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Items accepted.
    pub submitted: u64,
    /// Items that returned a value.
    pub completed: u64,
    /// Items that ended with an error (all kinds, including the ones below).
    pub failed: u64,
    /// Items that ran past the task timeout.
    pub timed_out: u64,
    /// Items cancelled while running or queued.
    pub cancelled: u64,
    /// Items whose worker died under them (including memory-limit deaths).
    pub lost: u64,
    /// Worker processes started, replacements included.
    pub workers_started: u64,
    /// Workers replaced after a death, a timeout or a cancellation.
    pub workers_replaced: u64,
    /// Workers that retired after `max_tasks_per_child` items.
    pub workers_retired: u64,
    /// Workers alive now.
    pub workers: usize,
    /// Items waiting for a worker now.
    pub queued: usize,
    /// Outcomes dropped because their item had ended already: a cluster
    /// node's redelivered work, run twice and reported once (always 0 for
    /// a local pool).
    pub duplicates: u64,
}

/// One live worker of a pool, from [`Pool::workers`]: its pid and what it
/// has done.
///
/// # Examples
///
/// ```no_run
/// fn id(x: u8) -> u8 { x }
/// corral::init();
/// let pool = corral::Pool::new(2).unwrap();
/// pool.map(id, 0..100).unwrap();
/// let workers = pool.workers();
/// assert_eq!(workers.len(), 2);
/// assert_eq!(workers.iter().map(|w| w.completed).sum::<u64>(), 100);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Its process id.
    pub pid: u32,
    /// Items it ran that returned a value.
    pub completed: u64,
    /// Items it ran that ended with an error (a panic, a value that could
    /// not cross, a cancellation).
    pub failed: u64,
    /// Whether it holds work now.
    pub busy: bool,
    /// Whether it has started and takes work (not starting up or leaving).
    pub ready: bool,
}

/// Options for a [`Pool`]; made by [`Pool::builder`].
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use corral::{Pool, StartMethod};
/// fn setup(level: u8) { let _ = level; }
/// corral::init();
/// let pool = Pool::builder()
///     .processes(4)
///     .initializer(setup, 3)
///     .max_tasks_per_child(1_000)
///     .task_timeout(Duration::from_secs(30))
///     .memory_limit(512 << 20)
///     .max_pending(10_000)
///     .start_method(StartMethod::ForkServer)
///     .build()
///     .unwrap();
/// # drop(pool);
/// ```
#[derive(Debug, Default)]
pub struct PoolBuilder {
    processes: Option<usize>,
    init: Option<Result<worker::InitMsg, crate::CodecError>>,
    max_tasks: Option<u64>,
    task_timeout: Option<Duration>,
    memory_limit: Option<u64>,
    max_pending: Option<usize>,
    start_method: StartMethod,
    idle_timeout: Option<Duration>,
    recycle_memory: Option<u64>,
}

impl PoolBuilder {
    /// How many worker processes (default: the available parallelism). The
    /// pool never runs more.
    pub fn processes(mut self, n: usize) -> PoolBuilder {
        self.processes = Some(n);
        self
    }

    /// A function each worker runs once, with `arg`, before its first task
    /// (Python's `initializer`/`initargs`). If it fails (panics, crashes, or
    /// runs past the [`task_timeout`](PoolBuilder::task_timeout), when one
    /// is set) the pool is broken: every queued and later task ends with
    /// [`TaskError::InitializerFailed`], and no worker is restarted.
    ///
    /// `arg` may hold corral handles (a queue, a lock, a shared value):
    /// every worker, replacements included, gets its own copy of each, and
    /// the pool keeps them open while it lives (the way loky and Python
    /// pass a `Queue` through `initargs` to every worker).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use corral::{Pool, Queue};
    /// fn hello(q: Queue<u32>) { q.put(std::process::id()).unwrap(); }
    /// corral::init();
    /// let started = Queue::unbounded().unwrap();
    /// let pool = Pool::builder().processes(2).initializer(hello, started.clone()).build().unwrap();
    /// let a = started.get().unwrap();
    /// let b = started.get().unwrap();
    /// assert_ne!(a, b);
    /// # drop(pool);
    /// ```
    pub fn initializer<A: Data>(mut self, f: fn(A), arg: A) -> PoolBuilder {
        self.init = Some(wire::encode(&arg).and_then(|e| {
            if e.fds.len() > crate::sys::MAX_FDS_PER_MESSAGE / 2 {
                return Err(crate::CodecError::new(
                    "an initializer argument can hold at most 125 corral handles",
                ));
            }
            Ok(worker::InitMsg {
                entry: worker::job_entry_offset::<A, ()>(),
                func: func_offset(f),
                arg: e.bytes,
                fds: worker::InitFds(Arc::new(e.fds)),
            })
        }));
        self
    }

    /// Replaces a worker after it has run `n` tasks (Python's
    /// `maxtasksperchild`): a bound on what a leaky task can accumulate.
    pub fn max_tasks_per_child(mut self, n: u64) -> PoolBuilder {
        self.max_tasks = Some(n);
        self
    }

    /// Limits each task's running time: past it, the worker is killed and
    /// replaced, and the task ends with [`TaskError::TimedOut`] (reported
    /// within milliseconds of the deadline).
    pub fn task_timeout(mut self, timeout: Duration) -> PoolBuilder {
        self.task_timeout = Some(timeout);
        self
    }

    /// Caps each worker's memory at `bytes` of address space (`RLIMIT_AS`;
    /// see the [module docs](crate::pool) for why not a cgroup). A task that
    /// goes over ends with [`TaskError::MemoryExceeded`]; its worker is
    /// replaced.
    pub fn memory_limit(mut self, bytes: u64) -> PoolBuilder {
        self.memory_limit = Some(bytes);
        self
    }

    /// Makes `submit` (and `map`) block while `n` items wait for a worker:
    /// backpressure for fast producers. Default: unbounded.
    pub fn max_pending(mut self, n: usize) -> PoolBuilder {
        self.max_pending = Some(n);
        self
    }

    /// Lets a worker that has had nothing to do for `timeout` exit (loky's
    /// `idle_worker_timeout`); workers start again when work arrives. A
    /// pool that sits idle then holds no processes.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// fn id(x: u8) -> u8 { x }
    /// corral::init();
    /// let pool = corral::Pool::builder().processes(2).idle_timeout(Duration::from_millis(200)).build().unwrap();
    /// std::thread::sleep(Duration::from_secs(1));
    /// assert_eq!(pool.stats().workers, 0); // gone while idle
    /// assert_eq!(pool.apply(id, 7).unwrap(), 7); // and back for work
    /// ```
    #[doc(alias = "idle_worker_timeout")]
    pub fn idle_timeout(mut self, timeout: Duration) -> PoolBuilder {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Replaces a worker *between* tasks once its resident memory exceeds
    /// `bytes` (loky's protection against leaking tasks): it takes no new
    /// work, finishes what it holds, exits, and a fresh worker takes its
    /// place. No task fails. Memory is read every 50 ms or so, so a worker
    /// may run a few more items before it retires. Beside
    /// [`memory_limit`](PoolBuilder::memory_limit), a hard cap that fails
    /// the task crossing it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn leak(n: usize) -> usize { std::mem::forget(vec![1u8; n]); n }
    /// corral::init();
    /// let pool = corral::Pool::builder().processes(1).recycle_memory(256 << 20).build().unwrap();
    /// for _ in 0..100 { pool.apply(leak, 16 << 20).unwrap(); } // never fails
    /// assert!(pool.stats().workers_retired > 0);
    /// ```
    pub fn recycle_memory(mut self, bytes: u64) -> PoolBuilder {
        self.recycle_memory = Some(bytes);
        self
    }

    /// How workers are started (default [`StartMethod::ForkServer`]).
    pub fn start_method(mut self, method: StartMethod) -> PoolBuilder {
        self.start_method = method;
        self
    }

    /// Starts the workers and the dispatcher.
    ///
    /// # Errors
    ///
    /// [`Error::NotInitialized`] without [`crate::init`]; [`Error::Codec`]
    /// if the initializer's argument cannot be serialized; [`Error::Io`] if
    /// the system refuses processes or descriptors;
    /// [`Error::Unsupported`] for a pool of zero processes;
    /// [`Error::InvalidArgument`] for `max_tasks_per_child(0)` or
    /// `max_pending(0)` (Python raises `ValueError`).
    pub fn build(self) -> Result<Pool, Error> {
        if self.max_tasks == Some(0) {
            return Err(Error::InvalidArgument(
                "max_tasks_per_child must be at least 1 (leave it unset for no limit)",
            ));
        }
        if self.max_pending == Some(0) {
            return Err(Error::InvalidArgument(
                "max_pending must be at least 1 (leave it unset for no limit)",
            ));
        }
        runtime::ensure_initialized()?;
        identity::check_depth()?;
        let processes = self.processes.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        });
        if processes == 0 {
            return Err(Error::Unsupported("a pool needs at least one process"));
        }
        let init = self.init.transpose()?;
        let shared = Shared::new(Config {
            processes,
            init,
            max_tasks: self.max_tasks,
            task_timeout: self.task_timeout,
            memory_limit: self.memory_limit,
            max_pending: self.max_pending.unwrap_or(usize::MAX),
            start_method: self.start_method,
            idle_timeout: self.idle_timeout,
            recycle_memory: self.recycle_memory,
        })?;
        let runner = shared.clone();
        let thread = std::thread::Builder::new()
            .name("corral-pool".into())
            .spawn(move || {
                let _gone = DispatcherGone(runner.clone());
                runner.run_dispatcher();
            });
        match thread {
            Ok(handle) => Ok(Pool {
                shared: Owned::handle(shared),
                dispatcher: Mutex::new(Some(handle)),
                numbers: Mutex::new(None),
            }),
            Err(e) => {
                shared.lock().dispatcher_gone = true;
                shared.terminate();
                Err(Error::Io {
                    context: "starting the pool's dispatcher thread",
                    source: e,
                })
            }
        }
    }
}

/// Marks the dispatcher gone however its thread ends.
struct DispatcherGone(Arc<Shared>);

impl Drop for DispatcherGone {
    fn drop(&mut self) {
        self.0.mark_dispatcher_gone();
        if std::thread::panicking() {
            // A bug in the dispatcher must not leave callers waiting forever:
            // kill the workers and end every unfinished task.
            self.0.terminate();
        }
    }
}

/// A pool of worker processes that run functions on serialized arguments.
///
/// See the [module docs](crate::pool) for its promises. Tasks are plain
/// functions (`fn(A) -> R`; closures that capture nothing coerce), as for
/// [`crate::spawn`].
///
/// | Python | corral |
/// |---|---|
/// | `Pool(4)` / `ProcessPoolExecutor(4)` | [`Pool::new(4)`](Pool::new) |
/// | `apply_async(f, (x,))` / `submit(f, x)` | [`pool.submit(f, x)`](Pool::submit) |
/// | `apply(f, (x,))` | [`pool.apply(f, x)`](Pool::apply) |
/// | `map(f, xs, chunksize)` | [`pool.map(f, xs)`](Pool::map), [`map_chunked`](Pool::map_chunked) |
/// | `imap` / `imap_unordered` | [`pool.imap`](Pool::imap) / [`imap_unordered`](Pool::imap_unordered) |
/// | `as_completed(fs)`, `wait(fs)` | [`as_completed`], [`wait_all`], [`wait_any`] |
/// | `close()`, `join()`, `terminate()` | the same |
/// | pebble `schedule(f, timeout=)` | [`Pool::submit_with_timeout`], [`PoolBuilder::task_timeout`] |
///
/// # Examples
///
/// ```no_run
/// fn square(x: u64) -> u64 { x * x }
/// corral::init();
/// let pool = corral::Pool::new(2).unwrap();
/// assert_eq!(pool.map(square, 1..=3).unwrap(), [1, 4, 9]);
/// ```
pub struct Pool {
    shared: EngineRef,
    /// The engine's thread, joined when the pool is.
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    /// The items of the last `map` of plain numbers, kept for the next
    /// (see `Pool::map_numbers`).
    numbers: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Pool {
    /// A pool of `processes` workers with default options.
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    pub fn new(processes: usize) -> Result<Pool, Error> {
        Pool::builder().processes(processes).build()
    }

    /// Options for a pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// corral::init();
    /// assert_eq!(corral::Pool::new(3).unwrap().processes(), 3);
    /// ```
    pub fn processes(&self) -> usize {
        self.shared.processes()
    }

    /// Changes the number of workers of a live pool (loky's reusable
    /// executor, resized): new workers start at once; extra ones retire
    /// between tasks, idle ones first. No task fails.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for 0.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn id(x: u8) -> u8 { x }
    /// corral::init();
    /// let pool = corral::Pool::new(2).unwrap();
    /// pool.resize(4).unwrap();
    /// assert_eq!(pool.processes(), 4);
    /// assert_eq!(pool.map(id, 0..8).unwrap().len(), 8);
    /// pool.resize(1).unwrap();
    /// ```
    pub fn resize(&self, processes: usize) -> Result<(), Error> {
        if processes == 0 {
            return Err(Error::InvalidArgument("a pool needs at least one process"));
        }
        self.shared.resize(processes)
    }

    /// Submits `f(arg)` and returns its [`Task`] at once (blocking only
    /// while [`max_pending`](PoolBuilder::max_pending) items wait).
    ///
    /// An argument that cannot be serialized gives a task that has already
    /// failed with [`TaskError::Codec`]; a closed pool, one that failed
    /// with [`TaskError::PoolClosed`].
    ///
    /// A task's outcome waits in a small slot of memory. Once a thread
    /// has joined a task, that slot is kept for the next task the thread
    /// submits (at most 8 MiB of them a thread, freed when it ends: a
    /// burst of some 100,000 small tasks), so a stream of small tasks costs
    /// no allocation each.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn add((a, b): (i32, i32)) -> i32 { a + b }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// assert_eq!(pool.submit(add, (2, 3)).join().unwrap(), 5);
    /// ```
    #[doc(alias = "apply_async")]
    pub fn submit<A: Data, R: Data>(&self, f: fn(A) -> R, arg: A) -> Task<R> {
        self.submit_inner(f, arg, None, false)
    }

    /// Like [`submit`](Pool::submit), with a time limit for this task alone
    /// (it replaces the pool's [`task_timeout`](PoolBuilder::task_timeout)):
    /// pebble's `schedule(f, args, timeout=...)`. Past it, the worker is
    /// killed and replaced and the task ends with [`TaskError::TimedOut`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use corral::TaskError;
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// let task = pool.submit_with_timeout(nap, 5_000, Duration::from_millis(100));
    /// assert_eq!(task.join(), Err(TaskError::TimedOut(Duration::from_millis(100))));
    /// ```
    #[doc(alias = "schedule")]
    pub fn submit_with_timeout<A: Data, R: Data>(
        &self,
        f: fn(A) -> R,
        arg: A,
        timeout: Duration,
    ) -> Task<R> {
        self.submit_inner(f, arg, Some(timeout), false)
    }

    /// A task of `f(arg)`; `waits` if the caller waits for it at once
    /// (its watch for the outcome then begins before the hand-off).
    fn submit_inner<A: Data, R: Data>(
        &self,
        f: fn(A) -> R,
        arg: A,
        timeout: Option<Duration>,
        waits: bool,
    ) -> Task<R> {
        let slot = TaskSlot::<R>::fresh();
        let task = Task::new(slot.clone(), self.shared.clone());
        let mut args = Args::new();
        match wire::encode_into(&arg, &mut args) {
            Ok(fds) if fds.len() > crate::sys::MAX_FDS_PER_MESSAGE => {
                let error = TaskError::Codec("more than 250 corral handles in one argument".into());
                slot.deliver(&mut std::iter::once((0, Raw::Failed(Box::new(error)))));
            }
            Ok(fds) => {
                drop(arg);
                let function = (worker::job_entry_offset::<A, R>(), func_offset(f));
                if waits {
                    let job = Job::single(function, args, fds, slot.clone(), timeout);
                    self.shared
                        .submit_and_help(vec![job], &mut || slot.is_done());
                } else {
                    // The job takes this reference: a clone and a drop
                    // fewer (two atomic operations a task).
                    self.shared
                        .submit_one(Job::single(function, args, fds, slot, timeout));
                }
            }
            Err(e) => {
                let error = TaskError::Codec(format!("the argument: {}", e.message()));
                slot.deliver(&mut std::iter::once((0, Raw::Failed(Box::new(error)))));
            }
        }
        task
    }

    /// Runs `f(arg)` in a worker and waits for it: `submit(f, arg).join()`.
    ///
    /// # Errors
    ///
    /// Any [`TaskError`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn double(x: i32) -> i32 { x * 2 }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// assert_eq!(pool.apply(double, 21).unwrap(), 42);
    /// ```
    pub fn apply<A: Data, R: Data>(&self, f: fn(A) -> R, arg: A) -> Result<R, TaskError> {
        self.submit_inner(f, arg, None, true).join_watched()
    }

    /// Runs `f` on every item and returns the results in input order.
    ///
    /// Items travel in chunks (about four per worker, like Python's default
    /// `chunksize`), so a big map costs a few system calls, not one per item.
    /// Every item runs even if some fail; the error returned is that of the
    /// first failing item in input order. Use [`imap`](Pool::imap) for every
    /// item's own outcome.
    ///
    /// A map of plain numbers (`fn(T) -> T` with `T` a primitive integer or
    /// float) encodes nothing: it runs as [`map_pod`](Pool::map_pod), the
    /// workers reading the items from this process and writing the results
    /// into the vector returned, as joblib memory-maps large arrays on its
    /// own, with the same promises (every item runs even if some panic or
    /// kill their worker; the first failure in input order is the error).
    /// It does so unless the pool has a `task_timeout` or
    /// `max_tasks_per_child`, which apply per item here and would apply per
    /// range there. The pool keeps the vector it gathered the items into
    /// (up to 4 MiB) for its next such map, whose items then land in pages
    /// already in memory.
    ///
    /// # Errors
    ///
    /// The first item's [`TaskError`], in input order.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn square(x: u64) -> u64 { x * x }
    /// corral::init();
    /// let pool = corral::Pool::new(2).unwrap();
    /// assert_eq!(pool.map(square, vec![1, 2, 3]).unwrap(), [1, 4, 9]);
    /// ```
    pub fn map<A: Data, R: Data, I: IntoIterator<Item = A>>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> Result<Vec<R>, TaskError> {
        self.map_inner(f, items, None)
    }

    /// [`map`](Pool::map) with an explicit chunk size (items per batch a
    /// worker takes at once; Python's `chunksize`). Small chunks balance
    /// uneven tasks; large ones cost less per item.
    ///
    /// # Errors
    ///
    /// As [`map`](Pool::map).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn square(x: u64) -> u64 { x * x }
    /// corral::init();
    /// let pool = corral::Pool::new(2).unwrap();
    /// assert_eq!(pool.map_chunked(square, 0..4, 1).unwrap(), [0, 1, 4, 9]);
    /// ```
    pub fn map_chunked<A: Data, R: Data, I: IntoIterator<Item = A>>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunk_size: usize,
    ) -> Result<Vec<R>, TaskError> {
        if chunk_size == 0 {
            return Err(TaskError::InvalidArgument(
                "map_chunked needs a chunk size of at least 1".into(),
            ));
        }
        self.map_inner(f, items, Some(chunk_size))
    }

    fn map_inner<A: Data, R: Data, I: IntoIterator<Item = A>>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunk: Option<usize>,
    ) -> Result<Vec<R>, TaskError> {
        let items = match chunk {
            None => match self.map_numbers(f, items) {
                Ok(done) => return done,
                Err(items) => items,
            },
            Some(_) => items,
        };
        match self.start_map(f, items, chunk, None) {
            Some(sink) => sink.wait(&*self.shared),
            None => Ok(Vec::new()),
        }
    }

    /// Like [`map`](Pool::map), but returns at once with a [`Task`] for the
    /// whole call (Python's `map_async`): join it, `.await` it, register an
    /// [`on_done`](Task::on_done) callback, or [`cancel`](Task::cancel) it,
    /// which cancels every item not ended (the running ones' workers are
    /// killed). The input is read and encoded before it returns.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn square(x: u64) -> u64 { x * x }
    /// corral::init();
    /// let pool = corral::Pool::new(2).unwrap();
    /// let all = pool.map_async(square, 0..100);
    /// // ... other work ...
    /// assert_eq!(all.join().unwrap()[9], 81);
    /// ```
    pub fn map_async<A: Data, R: Data, I: IntoIterator<Item = A>>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> Task<Vec<R>> {
        let slot = Arc::new(TaskSlot::<Vec<R>>::new());
        match self.start_map(f, items, None, Some(slot.clone())) {
            Some(sink) => Task::whole(slot, self.shared.clone(), sink),
            None => {
                slot.complete(Ok(Vec::new()));
                Task::new(slot, self.shared.clone())
            }
        }
    }

    /// Encodes and submits a map's items in chunks; `None` for no items.
    fn start_map<A: Data, R: Data, I: IntoIterator<Item = A>>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunk: Option<usize>,
        task: Option<Arc<TaskSlot<Vec<R>>>>,
    ) -> Option<Arc<MapSink<R>>> {
        let items = items.into_iter();
        // Chunks are sized from the item count; an iterator that knows its
        // length exactly is not collected first.
        match items.size_hint() {
            (low, Some(high)) if low == high => self.submit_map(f, items, low, chunk, task),
            _ => {
                let all: Vec<A> = items.collect();
                let n = all.len();
                self.submit_map(f, all.into_iter(), n, chunk, task)
            }
        }
    }

    /// Encodes and submits the first `n` of `items` in chunks (fewer if
    /// the iterator ends early); `None` for no items. Monomorphized for the
    /// iterator, so pulling an item is not a dynamic call.
    fn submit_map<A: Data, R: Data>(
        &self,
        f: fn(A) -> R,
        mut items: impl Iterator<Item = A>,
        n: usize,
        chunk: Option<usize>,
        task: Option<Arc<TaskSlot<Vec<R>>>>,
    ) -> Option<Arc<MapSink<R>>> {
        if n == 0 {
            return None;
        }
        let chunk =
            self.fit_quota(chunk.unwrap_or_else(|| n.div_ceil(4 * self.processes()).max(1)));
        let sink = Arc::new(MapSink::<R>::new(n, task));
        let dyn_sink: Arc<dyn Sink> = sink.clone();
        let (entry, func) = (worker::map_entry_offset::<A, R>(), func_offset(f));
        let mut count = 0;
        while count < n {
            let mut job = JobBuilder::new(entry, func, chunk.min(n - count), dyn_sink.clone());
            let end = count + chunk.min(n - count);
            while count < end
                && let Some(item) = items.next()
            {
                add_item(&mut job, count as u32, &item);
                count += 1;
            }
            // Each chunk goes out as soon as it is encoded: workers start
            // while the rest is being encoded.
            if job.len() > 0 {
                self.shared.submit(vec![job.build()]);
            }
            if count < end {
                break; // the iterator promised more items than it had
            }
        }
        if count < n {
            sink.truncate(count);
        }
        Some(sink)
    }

    /// Runs `f` on the items lazily and yields the outcomes in input order.
    ///
    /// Input is pulled only as outcomes are consumed, with a bounded window
    /// in flight (four chunks a worker, at most 64 MiB of encoded arguments,
    /// at least 64 items a worker), so an endless iterator runs in constant
    /// memory. Each item has its own outcome: a failing item does
    /// not stop the others.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn square(x: u64) -> u64 { x * x }
    /// corral::init();
    /// let pool = corral::Pool::new(2).unwrap();
    /// let first: Vec<u64> = pool.imap(square, 0..).take(4).map(Result::unwrap).collect();
    /// assert_eq!(first, [0, 1, 4, 9]);
    /// ```
    pub fn imap<A: Data, R: Data, I>(&self, f: fn(A) -> R, items: I) -> Imap<'_, A, R, I::IntoIter>
    where
        I: IntoIterator<Item = A>,
    {
        Imap::new(PoolRef::Borrowed(self), f, items.into_iter(), true)
    }

    /// Like [`imap`](Pool::imap), but yields outcomes as they come.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn square(x: u64) -> u64 { x * x }
    /// corral::init();
    /// let pool = corral::Pool::new(2).unwrap();
    /// let mut all: Vec<u64> = pool.imap_unordered(square, 0..4).map(Result::unwrap).collect();
    /// all.sort();
    /// assert_eq!(all, [0, 1, 4, 9]);
    /// ```
    pub fn imap_unordered<A: Data, R: Data, I>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> Imap<'_, A, R, I::IntoIter>
    where
        I: IntoIterator<Item = A>,
    {
        Imap::new(PoolRef::Borrowed(self), f, items.into_iter(), false)
    }

    /// Like [`imap`](Pool::imap), but the iterator holds the pool itself (an
    /// `Arc`) rather than borrowing it, so it can be stored, returned or
    /// handed to another thread (a language binding's iterator object, a
    /// struct field) for as long as it is needed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// fn square(x: u64) -> u64 { x * x }
    /// corral::init();
    /// let pool = Arc::new(corral::Pool::new(2).unwrap());
    /// let squares = pool.imap_owned(square, 0..); // Imap<'static, ..>
    /// let first = std::thread::spawn(move || squares.take(3).map(Result::unwrap).collect::<Vec<_>>());
    /// assert_eq!(first.join().unwrap(), [0, 1, 4]);
    /// ```
    pub fn imap_owned<A: Data, R: Data, I>(
        self: &Arc<Pool>,
        f: fn(A) -> R,
        items: I,
    ) -> Imap<'static, A, R, I::IntoIter>
    where
        I: IntoIterator<Item = A>,
    {
        Imap::new(PoolRef::Owned(self.clone()), f, items.into_iter(), true)
    }

    /// Like [`imap_unordered`](Pool::imap_unordered), holding the pool as
    /// [`imap_owned`](Pool::imap_owned) does.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// fn square(x: u64) -> u64 { x * x }
    /// corral::init();
    /// let pool = Arc::new(corral::Pool::new(2).unwrap());
    /// let mut all: Vec<u64> = pool.imap_unordered_owned(square, 0..4).map(Result::unwrap).collect();
    /// all.sort();
    /// assert_eq!(all, [0, 1, 4, 9]);
    /// ```
    pub fn imap_unordered_owned<A: Data, R: Data, I>(
        self: &Arc<Pool>,
        f: fn(A) -> R,
        items: I,
    ) -> Imap<'static, A, R, I::IntoIter>
    where
        I: IntoIterator<Item = A>,
    {
        Imap::new(PoolRef::Owned(self.clone()), f, items.into_iter(), false)
    }

    /// Stops accepting work; what was submitted still runs. Later submits
    /// fail with [`TaskError::PoolClosed`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn id(x: u8) -> u8 { x }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// let before = pool.submit(id, 1);
    /// pool.close();
    /// assert_eq!(before.join().unwrap(), 1);
    /// assert_eq!(pool.apply(id, 2), Err(corral::TaskError::PoolClosed));
    /// ```
    pub fn close(&self) {
        self.shared.close();
    }

    /// Closes the pool, waits for every submitted task and stops the
    /// workers. (Python requires `close()` first; here `join` implies it.)
    /// When it returns, every worker has been reaped, as Python's `join`
    /// leaves them: no zombie, no `/proc` entry, and whatever a worker
    /// left in its process group sent `SIGKILL`. (Only a fork server
    /// stopped from outside, `SIGSTOP`, leaves a worker to reap later: the
    /// pool waits 2 s for its report.)
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn id(x: u8) -> u8 { x }
    /// corral::init();
    /// let pool = corral::Pool::new(2).unwrap();
    /// let tasks: Vec<_> = (0..4).map(|x| pool.submit(id, x)).collect();
    /// pool.join(); // every task has ended; the workers are gone
    /// assert!(tasks.iter().all(|t| t.is_finished()));
    /// ```
    pub fn join(&self) {
        self.shared.join(None);
        self.join_dispatcher();
        self.shared.callbacks().finish();
    }

    /// [`join`](Pool::join) for at most `timeout`: true if every task ended
    /// and the workers are gone; false if time ran out first (the pool
    /// stays closed, its tasks keep running; call it again, or
    /// [`terminate`](Pool::terminate)). Python's `join` has no timeout.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// pool.submit(nap, 60_000);
    /// assert!(!pool.join_timeout(Duration::from_millis(100)));
    /// pool.terminate();
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        if !self.shared.join(crate::time::deadline(timeout)) {
            return false;
        }
        self.join_dispatcher();
        self.shared.callbacks().finish();
        true
    }

    /// Stops the pool: `executor.shutdown(wait=True, cancel_futures=...)`.
    /// With `cancel_pending`, every task that has not started ends with
    /// [`TaskError::Cancelled`] (whether it waits in the pool's queue or
    /// already in a worker's batch); running tasks finish either way. Then
    /// waits like [`join`](Pool::join).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// let tasks: Vec<_> = (0..10).map(|_| pool.submit(nap, 200)).collect();
    /// std::thread::sleep(Duration::from_millis(50)); // the first one runs
    /// pool.shutdown(true);
    /// let cancelled = tasks.into_iter().filter(|t| t.failed()).count();
    /// assert_eq!(cancelled, 9);
    /// ```
    #[doc(alias = "cancel_futures")]
    pub fn shutdown(&self, cancel_pending: bool) {
        self.shared.close();
        if cancel_pending {
            self.shared.cancel(Cancel::All, false);
        }
        self.join();
    }

    /// Kills the workers at once. Unfinished tasks end with
    /// [`TaskError::PoolClosed`]. When it returns, the workers have been
    /// reaped, as after [`join`](Pool::join).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn forever(_: ()) { loop { std::thread::park() } }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// let task = pool.submit(forever, ());
    /// pool.terminate();
    /// assert_eq!(task.join(), Err(corral::TaskError::PoolClosed));
    /// ```
    pub fn terminate(&self) {
        self.shared.terminate();
        self.join_dispatcher();
        self.shared.callbacks().finish();
    }

    /// A job size no larger than a worker's task quota
    /// (`max_tasks_per_child`), so that jobs rarely need splitting.
    fn fit_quota(&self, items: usize) -> usize {
        self.shared
            .max_tasks()
            .map_or(items, |quota| items.min(quota as usize))
            .max(1)
    }

    /// The pool's counters.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn crash(_: ()) { std::process::abort() }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// let _ = pool.apply(crash, ());
    /// let stats = pool.stats();
    /// assert_eq!((stats.lost, stats.workers_replaced), (1, 1));
    /// ```
    pub fn stats(&self) -> PoolStats {
        self.shared.stats()
    }

    /// Each live worker: its pid and per-worker counts (Python's
    /// `pool._pool` pids, observable).
    pub fn workers(&self) -> Vec<WorkerStats> {
        self.shared.worker_stats()
    }

    /// A pool on another engine (a cluster), which owns its threads.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn from_engine<E: engine::Engine + 'static>(engine: Arc<E>) -> Pool {
        Pool {
            shared: Owned::handle(engine),
            dispatcher: Mutex::new(None),
            numbers: Mutex::new(None),
        }
    }

    /// Queues jobs built elsewhere (a cluster node's, from the stream).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn submit_jobs(&self, jobs: Vec<Job>) {
        self.shared.submit(jobs);
    }

    fn join_dispatcher(&self) {
        if self.shared.forked().is_some() {
            // The parent's thread: not this process's to join.
            return;
        }
        let handle = lock(&self.dispatcher).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Pool {
    /// Graceful: like [`Pool::join`].
    fn drop(&mut self) {
        self.join();
    }
}

/// Appends one encoded item to a job; an item that cannot be encoded fails
/// on its own.
fn add_item<A: Data>(job: &mut JobBuilder, index: u32, item: &A) {
    // Plain data (the common case) needs no descriptor table.
    if job.fds.is_empty() && wire::encode_plain_into(item, &mut job.args).is_ok() {
        job.ends.push(job.args.len() as u32);
        job.indices.push(index);
        return;
    }
    match wire::encode_into(item, &mut job.args) {
        Ok(fds) => {
            if !fds.is_empty() || !job.fds.is_empty() {
                job.fds.resize_with(job.ends.len(), Vec::new);
                job.fds.push(fds);
            }
            job.ends.push(job.args.len() as u32);
            job.indices.push(index);
        }
        Err(e) => {
            let error = TaskError::Codec(format!("the argument: {}", e.message()));
            job.sink
                .deliver(&mut std::iter::once((index, Raw::Failed(Box::new(error)))));
        }
    }
}

struct MapState<R> {
    /// Values by item; errors (rare) on the side, so a big map of small
    /// values stays small.
    values: Vec<Option<Held<R>>>,
    errors: std::collections::BTreeMap<u32, TaskError>,
    left: usize,
    /// Woken when the last item ends (the waiting thread, asleep on the
    /// pool's bell).
    waker: Option<std::task::Waker>,
}

impl<R: Data> MapState<R> {
    /// Item `index`'s outcome, decoded by `outcome` unless the item has
    /// one already.
    #[inline]
    fn take(&mut self, index: u32, outcome: impl FnOnce() -> Result<R, TaskError>) {
        let i = index as usize;
        let known = self.values.get(i).is_none_or(Option::is_some)
            || (!self.errors.is_empty() && self.errors.contains_key(&index));
        if known {
            return;
        }
        match outcome() {
            Ok(value) => self.values[i] = Some(Held::new(value)),
            Err(e) => {
                self.errors.insert(index, e);
            }
        }
        self.left -= 1;
    }
}

/// The outcomes of one `map` call.
struct MapSink<R> {
    state: Mutex<MapState<R>>,
    done: Condvar,
    /// Given up (its `map_async` task was cancelled): outcomes are ignored.
    cancelled: AtomicBool,
    /// `map_async`'s task, completed when the last item ends.
    task: Option<Arc<TaskSlot<Vec<R>>>>,
}

impl<R: Data> MapSink<R> {
    fn new(n: usize, task: Option<Arc<TaskSlot<Vec<R>>>>) -> MapSink<R> {
        MapSink {
            state: Mutex::new(MapState {
                values: (0..n).map(|_| None).collect(),
                errors: std::collections::BTreeMap::new(),
                left: n,
                waker: None,
            }),
            done: Condvar::new(),
            cancelled: AtomicBool::new(false),
            task,
        }
    }

    /// Every item has ended: wakes `map`, or completes `map_async`'s task.
    fn finished(&self, st: &mut MapState<R>) {
        self.done.notify_all();
        if let Some(waker) = st.waker.take() {
            waker.wake();
        }
        if let Some(task) = &self.task {
            task.complete(MapSink::collect(st));
        }
    }

    /// The values in input order, or the first error in input order.
    fn collect(st: &mut MapState<R>) -> Result<Vec<R>, TaskError> {
        if let Some((_, first)) = std::mem::take(&mut st.errors).into_iter().next() {
            return Err(first);
        }
        Ok(std::mem::take(&mut st.values)
            .into_iter()
            .map(|v| v.expect("every item has an outcome").into_inner())
            .collect())
    }

    /// Forgets the items from `n` on (they were never submitted).
    fn truncate(&self, n: usize) {
        let mut st = lock(&self.state);
        let missing = st.values.len() - n;
        st.values.truncate(n);
        st.left -= missing;
        if st.left == 0 {
            self.finished(&mut st);
        }
    }

    /// Waits for every item; each one's outcome, in order.
    fn wait_each(&self, shared: &dyn engine::Engine) -> Vec<Result<R, TaskError>> {
        let mut st = self.wait_ended(shared);
        let mut errors = std::mem::take(&mut st.errors);
        std::mem::take(&mut st.values)
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.map(Held::into_inner).ok_or_else(|| {
                    let error = errors.remove(&(i as u32));
                    error.expect("every item has an outcome")
                })
            })
            .collect()
    }

    fn wait(&self, shared: &dyn engine::Engine) -> Result<Vec<R>, TaskError> {
        MapSink::collect(&mut self.wait_ended(shared))
    }

    /// Waits until every item has ended.
    fn wait_ended(&self, shared: &dyn engine::Engine) -> MutexGuard<'_, MapState<R>> {
        shared.wait_for(None, &mut || lock(&self.state).left == 0, &mut |waker| {
            let mut st = lock(&self.state);
            st.waker = Some(waker.clone());
            st.left == 0
        });
        let mut st = lock(&self.state);
        while st.left > 0 {
            st = poison::wait(&self.done, st);
        }
        st
    }
}

impl<R: Data> Sink for MapSink<R> {
    fn deliver(&self, outcomes: &mut dyn Iterator<Item = (u32, Raw<'_>)>) {
        if self.cancelled.load(Ordering::Acquire) {
            return;
        }
        let mut st = lock(&self.state);
        if st.left == 0 {
            return;
        }
        for (index, raw) in outcomes {
            st.take(index, || raw.decode());
        }
        if st.left == 0 {
            self.finished(&mut st);
        }
    }

    fn deliver_values(&self, values: &mut job::Values<'_, '_>) {
        if self.cancelled.load(Ordering::Acquire) {
            return;
        }
        let mut st = lock(&self.state);
        if st.left == 0 {
            return;
        }
        while let Some((index, bytes)) = values.next_value() {
            st.take(index, || job::decode_value(bytes));
        }
        if st.left == 0 {
            self.finished(&mut st);
        }
    }

    fn wanted(&self, _: u32) -> bool {
        !self.cancelled()
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn abandon(&self) {
        self.cancelled.store(true, Ordering::Release);
    }
}

struct StreamState<R> {
    /// Ordered mode: outcomes of the items from number `base` on, by
    /// distance from `base` (item numbers wrap at 2³²; the window is far
    /// smaller).
    ring: VecDeque<Option<Result<Held<R>, TaskError>>>,
    base: u32,
    /// Unordered mode: outcomes in completion order.
    arrived: VecDeque<Result<Held<R>, TaskError>>,
    /// Woken when outcomes arrive (the waiting thread, asleep on the
    /// pool's bell).
    waker: Option<std::task::Waker>,
}

/// The outcomes of one `imap` call.
struct StreamSink<R> {
    ordered: bool,
    state: Mutex<StreamState<R>>,
    arrived: Condvar,
    /// The iterator was dropped or cancelled: nothing more is wanted.
    cancelled: AtomicBool,
}

impl<R: Data> Sink for StreamSink<R> {
    fn deliver(&self, outcomes: &mut dyn Iterator<Item = (u32, Raw<'_>)>) {
        if self.cancelled.load(Ordering::Acquire) {
            return;
        }
        let mut st = lock(&self.state);
        for (index, raw) in outcomes {
            let outcome = raw.decode().map(Held::new);
            if self.ordered {
                let at = index.wrapping_sub(st.base) as usize;
                if st.ring.len() <= at {
                    st.ring.resize_with(at + 1, || None);
                }
                if st.ring[at].is_none() {
                    st.ring[at] = Some(outcome);
                }
            } else {
                st.arrived.push_back(outcome);
            }
        }
        self.arrived.notify_all();
        if let Some(waker) = st.waker.take() {
            waker.wake();
        }
    }

    fn wanted(&self, _: u32) -> bool {
        !self.cancelled()
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn abandon(&self) {
        self.cancelled.store(true, Ordering::Release);
    }
}

impl<R> StreamSink<R> {
    /// Moves the outcomes that are next in this stream's order, as many as
    /// have arrived, to `out`; returns how many.
    fn take_into(&self, out: &mut VecDeque<Result<R, TaskError>>) -> usize {
        let mut st = lock(&self.state);
        if self.ordered {
            let n = st.ring.iter().take_while(|o| o.is_some()).count();
            st.base = st.base.wrapping_add(n as u32);
            out.extend(
                st.ring
                    .drain(..n)
                    .flatten()
                    .map(|o| o.map(Held::into_inner)),
            );
            n
        } else {
            let n = st.arrived.len();
            out.extend(st.arrived.drain(..).map(|o| o.map(Held::into_inner)));
            n
        }
    }

    /// Hands `waker` the next delivery; true if an outcome is ready now.
    fn register(&self, waker: &std::task::Waker) -> bool {
        let mut st = lock(&self.state);
        st.waker = Some(waker.clone());
        if self.ordered {
            st.ring.front().is_some_and(Option::is_some)
        } else {
            !st.arrived.is_empty()
        }
    }

    /// Sleeps until an outcome may be ready.
    fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits for the next outcome to arrive, or until `deadline`.
    fn wait_until(&self, deadline: Option<Instant>) {
        let st = lock(&self.state);
        let ready = if self.ordered {
            st.ring.front().is_some_and(Option::is_some)
        } else {
            !st.arrived.is_empty()
        };
        if ready {
            return;
        }
        match deadline {
            None => drop(poison::wait(&self.arrived, st)),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                drop(poison::wait_timeout(&self.arrived, st, left));
            }
        }
    }
}

/// Sizes `imap`'s chunks from how fast outcomes come back: a chunk should
/// keep a worker busy for about [`AutoChunk::TARGET`], so fast items travel
/// by the thousand (the cost of `map`) and slow ones one by one (the
/// balance of Python's `chunksize=1`). It doubles at each refill while the
/// last refill measured a larger ideal size, and halves when that ideal
/// falls below a quarter of it. It starts where the pool's last `imap` of
/// the same function ended (one item the first time).
#[derive(Debug)]
struct AutoChunk {
    size: usize,
    /// When the last refill happened, and how many outcomes had been
    /// yielded then.
    mark: Option<(Instant, u64)>,
}

impl AutoChunk {
    /// Worker time one chunk should take.
    const TARGET: Duration = Duration::from_millis(2);
    /// The largest automatic chunk.
    const MAX: usize = 4096;

    fn new(size: usize) -> AutoChunk {
        AutoChunk {
            size: size.clamp(1, Self::MAX),
            mark: None,
        }
    }

    /// The chunk size for the next refill, given the outcomes yielded so
    /// far.
    fn tune(&mut self, yielded: u64, processes: usize) -> usize {
        let now = Instant::now();
        if let Some((at, before)) = self.mark
            && yielded > before
        {
            // Wall time per item across the pool; a chunk runs on one
            // worker, so it takes `processes` times that.
            let per_item = now.duration_since(at).as_secs_f64() / (yielded - before) as f64;
            let ideal = (Self::TARGET.as_secs_f64() / (per_item * processes as f64).max(1e-9))
                .clamp(1.0, Self::MAX as f64) as usize;
            // Grow fast; shrink only when far off (a measure taken while
            // the window was small overstates the time per item).
            if ideal > self.size {
                self.size = (self.size * 2).min(ideal);
            } else if ideal < self.size / 4 {
                self.size = (self.size / 2).max(1);
            }
        }
        self.mark = Some((now, yielded));
        self.size
    }

    /// Encoded arguments in flight, at most (when items are larger than 64
    /// per worker make, the floor of 64 items a worker wins).
    const MAX_BYTES: usize = 64 << 20;

    /// The items in flight for chunks of `chunk` of items of `item_bytes`
    /// encoded bytes: four chunks a worker, at most [`AutoChunk::MAX_BYTES`]
    /// of arguments, and at least 64 items a worker.
    fn window(chunk: usize, processes: usize, item_bytes: usize) -> u64 {
        let by_bytes = Self::MAX_BYTES / item_bytes.max(1);
        (4 * chunk * processes).min(by_bytes).max(64 * processes) as u64
    }
}

/// The lazy iterator of [`Pool::imap`] and [`Pool::imap_unordered`].
///
/// It yields `Result<R, TaskError>` per input item and pulls input only as
/// it yields, with a bounded window of items in flight. It is a plain
/// iterator, exact-sized when its input is, so progress bars such as
/// `indicatif`'s `.progress()` wrap it as they wrap any other.
///
/// Items travel to workers in chunks, sized automatically (a few dozen
/// items per worker at a time) unless [`chunk_size`](Imap::chunk_size) sets
/// them (Python's `chunksize`).
///
/// # Dropping and cancelling
///
/// Dropping it early cancels the items that have not started (whether they
/// wait in the pool's queue or in a worker's batch) and lets the running
/// ones finish; their outcomes are discarded. [`cancel`](Imap::cancel) also
/// stops the running ones.
///
/// # Panics
///
/// If the input iterator panics, the outcomes of the items pulled before it
/// are yielded first; then `next` raises the input's panic again (Python's
/// `imap` raises the iterator's exception at that point).
///
/// # Examples
///
/// ```no_run
/// fn parse(s: String) -> u32 { s.parse().unwrap() }
/// corral::init();
/// let pool = corral::Pool::new(2).unwrap();
/// let lines = ["1", "2", "x", "4"].map(String::from);
/// let parsed: Vec<Option<u32>> = pool.imap(parse, lines).map(Result::ok).collect();
/// assert_eq!(parsed, [Some(1), Some(2), None, Some(4)]);
/// ```
pub struct Imap<'p, A, R, I> {
    pool: PoolRef<'p>,
    input: Option<I>,
    sink: Arc<StreamSink<R>>,
    /// The same sink, as the pool sees it.
    dyn_sink: Arc<dyn Sink>,
    /// Outcomes taken from the sink, not yielded yet.
    ready: VecDeque<Result<R, TaskError>>,
    entry: i64,
    func: i64,
    /// Items per job, as set by [`Imap::chunk_size`] (`None`: automatic).
    chunk: Option<usize>,
    /// Automatic chunks: the size now and what it was measured from.
    auto: AutoChunk,
    /// Encoded bytes per item, as the last refill found them.
    item_bytes: usize,
    submitted: u64,
    yielded: u64,
    window: u64,
    /// [`max_in_flight`](Imap::max_in_flight), if set.
    cap: Option<u64>,
    /// The input iterator panicked: re-raised once everything pulled before
    /// it has been yielded (Python raises the iterator's exception there).
    input_panic: Option<Box<dyn std::any::Any + Send>>,
    _a: PhantomData<fn(A)>,
}

/// The pool an [`Imap`] runs on: borrowed, or held.
enum PoolRef<'p> {
    Borrowed(&'p Pool),
    Owned(Arc<Pool>),
}

impl std::ops::Deref for PoolRef<'_> {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        match self {
            PoolRef::Borrowed(pool) => pool,
            PoolRef::Owned(pool) => pool,
        }
    }
}

impl<A, R, I> fmt::Debug for Imap<'_, A, R, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("ordered", &self.sink.ordered)
            .field("in_flight", &(self.submitted - self.yielded))
            .finish()
    }
}

impl<'p, A: Data, R: Data, I: Iterator<Item = A>> Imap<'p, A, R, I> {
    fn new(pool: PoolRef<'p>, f: fn(A) -> R, input: I, ordered: bool) -> Self {
        let auto = AutoChunk::new(pool.shared.chunk_hint(func_offset(f)));
        let window = 64 * pool.processes() as u64;
        let sink = Arc::new(StreamSink {
            ordered,
            state: Mutex::new(StreamState {
                ring: VecDeque::new(),
                base: 0,
                arrived: VecDeque::new(),
                waker: None,
            }),
            arrived: Condvar::new(),
            cancelled: AtomicBool::new(false),
        });
        Imap {
            pool,
            input: Some(input),
            dyn_sink: sink.clone(),
            sink,
            ready: VecDeque::new(),
            entry: worker::job_entry_offset::<A, R>(),
            func: func_offset(f),
            chunk: None,
            auto,
            item_bytes: 8,
            submitted: 0,
            yielded: 0,
            window,
            cap: None,
            input_panic: None,
            _a: PhantomData,
        }
    }

    /// Sends items to workers `n` at a time (Python's `imap(f, xs,
    /// chunksize=n)`): larger chunks cost less per item, smaller ones
    /// balance uneven items better. The window of items in flight grows to
    /// hold at least four chunks per worker. Takes effect for items not
    /// pulled yet (input is pulled at the first `next`).
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn square(x: u64) -> u64 { x * x }
    /// corral::init();
    /// let pool = corral::Pool::new(2).unwrap();
    /// let total: u64 = pool.imap(square, 0..10_000).chunk_size(256).map(Result::unwrap).sum();
    /// assert_eq!(total, (0..10_000u64).map(|x| x * x).sum());
    /// ```
    #[doc(alias = "chunksize")]
    pub fn chunk_size(mut self, n: usize) -> Self {
        assert!(n > 0, "imap's chunk size must be at least 1");
        let n = self.pool.fit_quota(n);
        self.chunk = Some(n);
        self.window = self.window.max((4 * n * self.pool.processes()) as u64);
        self
    }

    /// Pulls at most `n` items ahead of what has been yielded (the window
    /// of items in flight, which is otherwise sized from the chunks, at
    /// least 64 items a worker): for items that are large, or that stand
    /// for many (a batch). Takes effect at the next pull.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn total(xs: Vec<u64>) -> u64 { xs.iter().sum() }
    /// corral::init();
    /// let pool = corral::Pool::new(2).unwrap();
    /// // Batches of 10,000 numbers: no more than 8 of them pulled at once.
    /// let batches = (0..1_000_000u64).collect::<Vec<_>>();
    /// let batches = batches.chunks(10_000).map(<[u64]>::to_vec);
    /// let sums = pool.imap(total, batches).max_in_flight(8);
    /// assert_eq!(sums.map(Result::unwrap).sum::<u64>(), 499_999_500_000);
    /// ```
    pub fn max_in_flight(mut self, n: usize) -> Self {
        assert!(n > 0, "imap's window must hold at least one item");
        self.cap = Some(n as u64);
        self
    }

    /// Cancels every item in flight and stops pulling input: items not
    /// started are skipped, running ones have their workers killed (and
    /// replaced). The iterator then ends.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// corral::init();
    /// let pool = corral::Pool::new(2).unwrap();
    /// let mut naps = pool.imap(nap, std::iter::repeat(60_000));
    /// naps.cancel(); // returns at once; the workers are replaced
    /// assert!(naps.next().is_none());
    /// ```
    pub fn cancel(&mut self) {
        self.stop(true);
    }

    /// Cancels what is in flight (killing the running items if `kill`).
    fn stop(&mut self, kill: bool) {
        self.input = None;
        self.input_panic = None;
        self.ready.clear();
        self.yielded = self.submitted;
        if !self.dyn_sink.cancelled() {
            self.dyn_sink.abandon();
            self.pool.shared.cancel(Cancel::Sink(&self.dyn_sink), kill);
        }
    }

    /// The window, within [`max_in_flight`](Imap::max_in_flight).
    fn capped_window(&self) -> u64 {
        self.cap.map_or(self.window, |cap| self.window.min(cap))
    }

    /// Pulls input until the window is full, once it is half empty: a
    /// refill is one submission, with the new items in a few jobs.
    fn refill(&mut self) {
        let in_flight = self.submitted - self.yielded;
        if self.input.is_none() || in_flight > self.capped_window() / 2 {
            return;
        }
        let processes = self.pool.processes();
        let per_job = match self.chunk {
            Some(n) => n,
            None => {
                let n = self.pool.fit_quota(self.auto.tune(self.yielded, processes));
                self.window = AutoChunk::window(n, processes, self.item_bytes);
                // A short input is shared among the workers, however large
                // the chunks the last imap settled on.
                let known = self.input.as_ref().map_or(0, |i| i.size_hint().0);
                if known > 0 {
                    n.min(known.div_ceil(processes))
                } else {
                    n
                }
            }
        };
        // The window may have shrunk below what is in flight (larger items,
        // smaller chunks): then nothing is pulled this time.
        let room = self.capped_window().saturating_sub(in_flight) as usize;
        if room == 0 {
            return;
        }
        let sink = self.dyn_sink.clone();
        let mut jobs = Vec::new();
        let mut pulled = 0;
        while pulled < room {
            let mut job = JobBuilder::new(self.entry, self.func, per_job, sink.clone());
            while job.ends.len() < per_job && pulled < room {
                let Some(item) = self.pull() else {
                    self.input = None;
                    break;
                };
                add_item(&mut job, self.submitted as u32, &item);
                drop(item);
                self.submitted += 1;
                pulled += 1;
            }
            if job.len() > 0 {
                jobs.push(job.build());
            }
            if self.input.is_none() {
                break;
            }
        }
        if pulled > 0 {
            let bytes: usize = jobs.iter().map(|j| j.args.len()).sum();
            self.item_bytes = bytes.div_ceil(pulled).max(1);
        }
        if !jobs.is_empty() {
            self.pool.shared.submit(jobs);
        }
    }

    /// The next input item; a panic of the input is kept for later.
    fn pull(&mut self) -> Option<A> {
        let input = self.input.as_mut()?;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| input.next())) {
            Ok(item) => item,
            Err(panic) => {
                self.input_panic = Some(panic);
                None
            }
        }
    }

    /// Waits until outcomes have arrived and moves them to `ready`.
    fn fetch(&mut self) {
        let (sink, ready) = (&self.sink, &mut self.ready);
        if sink.take_into(ready) > 0 {
            return;
        }
        let got = self
            .pool
            .shared
            .wait_for(None, &mut || sink.take_into(ready) > 0, &mut |w| {
                sink.register(w)
            })
            == Some(true);
        while !got && ready.is_empty() {
            sink.wait();
            sink.take_into(ready);
        }
    }
}

impl<A: Data, R: Data, I: Iterator<Item = A>> Imap<'_, A, R, I> {
    /// Waits until [`next`](Iterator::next) would return without waiting
    /// (an outcome has arrived, or the iterator has ended), at most
    /// `timeout`; true if it would. Python's `IMapIterator.next(timeout)`
    /// is this followed by `next`; a caller that must stay responsive (to
    /// Ctrl-C, say) waits in slices.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// corral::init();
    /// let pool = corral::Pool::new(1).unwrap();
    /// let mut naps = pool.imap(nap, [300]);
    /// assert!(!naps.wait_next(Duration::from_millis(10)));
    /// assert!(naps.wait_next(Duration::from_secs(10)));
    /// assert_eq!(naps.next().unwrap().unwrap(), 300);
    /// ```
    pub fn wait_next(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        self.refill();
        if self.yielded == self.submitted || !self.ready.is_empty() {
            return true;
        }
        let (sink, ready) = (&self.sink, &mut self.ready);
        if sink.take_into(ready) > 0 {
            return true;
        }
        if let Some(got) =
            self.pool
                .shared
                .wait_for(deadline, &mut || sink.take_into(ready) > 0, &mut |w| {
                    sink.register(w)
                })
        {
            return got;
        }
        loop {
            sink.wait_until(deadline);
            if sink.take_into(ready) > 0 {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
        }
    }
}

impl<A: Data, R: Data, I: Iterator<Item = A>> Iterator for Imap<'_, A, R, I> {
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.refill();
        if self.yielded == self.submitted {
            if let Some(panic) = self.input_panic.take() {
                std::panic::resume_unwind(panic);
            }
            return None;
        }
        if self.ready.is_empty() {
            self.fetch();
        }
        let outcome = self.ready.pop_front();
        self.yielded += 1;
        outcome
    }

    /// Exact when the input's is: the items in flight plus the input's.
    fn size_hint(&self) -> (usize, Option<usize>) {
        let in_flight = (self.submitted - self.yielded) as usize;
        match &self.input {
            Some(input) => {
                let (low, high) = input.size_hint();
                (
                    low.saturating_add(in_flight),
                    high.and_then(|h| h.checked_add(in_flight)),
                )
            }
            None => (in_flight, Some(in_flight)),
        }
    }
}

/// With an input of known length, `imap` has one too, so progress bars
/// (`indicatif`'s `.progress()`) show it.
impl<A: Data, R: Data, I: ExactSizeIterator<Item = A>> ExactSizeIterator for Imap<'_, A, R, I> {}

impl<A, R, I> Drop for Imap<'_, A, R, I> {
    /// Cancels the items not started; running ones finish.
    fn drop(&mut self) {
        if self.chunk.is_none() {
            self.pool.shared.set_chunk_hint(self.func, self.auto.size);
        }
        if self.submitted > self.yielded && !self.dyn_sink.cancelled() {
            self.dyn_sink.abandon();
            self.pool.shared.cancel(Cancel::Sink(&self.dyn_sink), false);
        }
    }
}

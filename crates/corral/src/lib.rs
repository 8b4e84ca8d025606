//! # corral: Python's `multiprocessing`, done right
//!
//! corral starts processes that run a function, talks to them over pipes and
//! never loses track of them. Everything Python's `multiprocessing` promised,
//! plus what it never kept: a child that crashes is reported exactly (panic
//! message and backtrace, signal or exit code), nothing hangs, no child
//! outlives its parent (even a SIGKILLed one), no zombie is left behind.
//!
//! ## Quick start
//!
//! ```no_run
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() {
//!     corral::init(); // first line of main: in a child, it runs the task instead
//!     let child = corral::spawn(square, 7).unwrap();
//!     assert_eq!(child.join().unwrap(), 49);
//! }
//! ```
//!
//! [`init`] belongs on the first line of `main`: it starts the fork server
//! while your program is still single-threaded. Forgetting it is a clear
//! [`Error::NotInitialized`] at the first spawn, never a fork bomb. Children
//! started by re-execution (and a re-executed fork server) take their role
//! before `main` runs, so nothing of your `main` runs again in them.
//!
//! To depend on corral (until it is published), name this repository's
//! crate by path or git in your `Cargo.toml`; corral re-exports the two
//! crates its API speaks, so you need no other dependency:
//!
//! ```toml
//! [dependencies]
//! corral = { path = "../corral/crates/corral" }   # or: { git = "<this repository>" }
//! ```
//!
//! ```
//! #[derive(corral::serde::Serialize, corral::serde::Deserialize)]
//! #[serde(crate = "corral::serde")]
//! struct Job { id: u32, path: String }
//! fn takes<T: corral::Data>(_: T) {}
//! takes(Job { id: 1, path: "a".into() });
//! ```
//!
//! ## With tokio (or any thread pool)
//!
//! Call [`init`] before the runtime starts its threads: a plain `main` that
//! builds the runtime after `init`, rather than `#[tokio::main]`, which
//! starts threads before your first line runs.
//!
//! ```no_run
//! fn square(x: u64) -> u64 { x * x }
//!
//! fn main() {
//!     corral::init();
//!     let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//!     runtime.block_on(async {
//!         let pool = corral::Pool::new(2).unwrap();
//!         assert_eq!(pool.submit(square, 7).await.unwrap(), 49); // a Task is a Future
//!     });
//! }
//! ```
//!
//! A late `init` still works (the fork server then starts by re-executing
//! the program, and corral says so once on stderr).
//!
//! ## Tasks cross as data
//!
//! A task is a function `fn(A) -> R` (a closure that captures nothing coerces
//! to one) and an argument `A`; both `A` and `R` are serde types ([`Data`]).
//! The child runs the same binary, so the function travels as an offset in
//! that binary, checked against the child's build-id before it is called.
//! A struct implementing [`Job`] is the equivalent of subclassing Python's
//! `Process`. Only [`ProcessBuilder::fork_closure`] runs a capturing closure
//! (it forks the caller).
//!
//! ## Start methods
//!
//! [`StartMethod::ForkServer`] (default) forks children from a clean server
//! started at [`init`]; [`StartMethod::Spawn`] re-executes the binary;
//! [`StartMethod::Fork`] forks the caller. See [`StartMethod`].
//!
//! ```no_run
//! use corral::{Process, StartMethod};
//! fn pid(_: ()) -> u32 { std::process::id() }
//! corral::init();
//! let child = Process::builder()
//!     .name("worker")
//!     .start_method(StartMethod::Spawn)
//!     .spawn(pid, ())
//!     .unwrap();
//! let reported = child.pid();
//! assert_eq!(child.join().unwrap(), reported);
//! ```
//!
//! ## Panics and crashes come back as data
//!
//! ```no_run
//! use corral::{ExitStatus, ProcessError};
//! fn fails(_: ()) { panic!("disk full") }
//! fn crashes(_: ()) { std::process::abort() }
//! corral::init();
//! match corral::spawn(fails, ()).unwrap().join() {
//!     Err(ProcessError::Panicked(p)) => println!("{} at {:?}\n{}", p.message, p.location, p.backtrace),
//!     other => unreachable!("{other:?}"),
//! }
//! let err = corral::spawn(crashes, ()).unwrap().join().unwrap_err();
//! assert_eq!(err.exit_status(), Some(ExitStatus::Signal(6)));
//! ```
//!
//! ## Waiting, timeouts, signals
//!
//! [`Child::join_timeout`] gives the child back when time is up;
//! [`Child::terminate`] / [`Child::kill`] send SIGTERM / SIGKILL (the latter to
//! the child's whole process group); [`wait`] waits on several children,
//! pipe ends and queues at once, like `multiprocessing.connection.wait`.
//!
//! ## Pipes
//!
//! ```no_run
//! use corral::{Connection, Pipe};
//! fn doubler(conn: Connection) {
//!     while let Ok(n) = conn.recv::<u64>() {
//!         conn.send(&(n * 2)).unwrap();
//!     }
//! }
//! corral::init();
//! let (ours, theirs) = Pipe::duplex().unwrap();
//! let child = corral::spawn(doubler, theirs).unwrap(); // pipe ends are handles: pass them
//! ours.send(&21u64).unwrap();
//! assert_eq!(ours.recv::<u64>().unwrap(), 42);
//! drop(ours); // the child sees end-of-file and returns
//! child.join().unwrap();
//! ```
//!
//! ## Pools
//!
//! A [`Pool`] keeps worker processes and runs tasks on them: [`Pool::submit`]
//! (Python's `apply_async`) gives a [`Task`] to `join` or `.await`;
//! [`Pool::map`], [`Pool::imap`] and [`Pool::imap_unordered`] run a function
//! over many items. Unlike Python's pools, a worker that dies fails only the
//! item it was running ([`TaskError::WorkerLost`]), a task can have a
//! timeout and a memory cap, a value that cannot cross fails its own task,
//! and `imap` pulls its input lazily. For plain numbers, [`Pool::map_pod`]
//! encodes nothing: each worker reads its share of the slice from the
//! caller's memory and writes its results into the vector returned. See
//! the [`pool`] module.
//!
//! ```no_run
//! use std::time::Duration;
//! use corral::{Pool, TaskError};
//! fn slow_square(x: u64) -> u64 {
//!     if x == 3 { std::thread::sleep(Duration::from_secs(60)) }
//!     x * x
//! }
//! corral::init();
//! let pool = Pool::builder().processes(4).task_timeout(Duration::from_secs(1)).build().unwrap();
//! let outcomes: Vec<Result<u64, TaskError>> = pool.imap(slow_square, 0..5).collect();
//! assert_eq!(outcomes[2], Ok(4));
//! assert!(matches!(outcomes[3], Err(TaskError::TimedOut(_))));
//! ```
//!
//! ## Queues, locks and shared memory
//!
//! A [`Queue`] lives in shared memory: many producers and consumers in any
//! processes, `put` returns only once the item is stored (there is no feeder
//! thread to lose it), and a process killed in the middle of a `put` or a
//! `get` neither corrupts nor blocks the queue. See the [`queue`] module.
//! [`Lock`], [`RLock`], [`Semaphore`], [`Condition`], [`Event`] and
//! [`Barrier`] are process-shared; a lock whose holder dies goes to the next
//! acquirer with [`AcquireError::OwnerDied`] instead of deadlocking (the
//! [`sync`] module). [`Value`], [`Array`], [`RawValue`], [`RawArray`] and
//! [`SharedMemory`] hold plain data every process maps (the [`shared`]
//! module). All of them are handles: clone them, or pass them to
//! [`spawn`] or a pool task like any argument.
//!
//! ```no_run
//! use corral::{Queue, Value};
//! fn worker((tasks, done): (Queue<Option<u64>>, Value<u64>)) {
//!     while let Ok(Some(n)) = tasks.get() {
//!         *done.lock() += n;
//!     }
//! }
//! corral::init();
//! let tasks = Queue::bounded(64).unwrap();
//! let done = Value::new(0u64).unwrap();
//! let kids: Vec<_> = (0..4)
//!     .map(|_| corral::spawn(worker, (tasks.clone(), done.clone())).unwrap())
//!     .collect();
//! for n in 1..=100 {
//!     tasks.put(Some(n)).unwrap();
//! }
//! for _ in &kids {
//!     tasks.put(None).unwrap(); // one sentinel per worker
//! }
//! for k in kids {
//!     k.join().unwrap();
//! }
//! assert_eq!(done.get(), 5050);
//! ```
//!
//! ## Unfinished work: what dropping does, and the ways out
//!
//! * Dropping a [`Task`] does not stop it: the task runs to its end and its
//!   outcome is discarded (as with Python's futures). Stop it with
//!   [`Task::cancel`].
//! * Dropping a [`Pool`] (or [`Pool::join`]) waits for every submitted task,
//!   then stops the workers: a task that never ends keeps the program
//!   waiting, as Python's `with Pool()` / executor `shutdown(wait=True)`
//!   do. The ways out: a time limit ([`PoolBuilder::task_timeout`],
//!   [`Pool::submit_with_timeout`]), [`Task::cancel`],
//!   [`Pool::shutdown(true)`](Pool::shutdown) (cancels what has not
//!   started), [`Pool::join_timeout`], and [`Pool::terminate`] (kills the
//!   workers at once; unfinished tasks end with [`TaskError::PoolClosed`]).
//! * Dropping an [`Imap`] cancels its items that have not started.
//!
//! (The story behind this: a nested executor whose abandoned task held the
//! program open at exit. With corral, give the inner pool a timeout, or
//! `terminate` it on the error path.)
//!
//! ## Python's "join before draining" deadlock
//!
//! Python warns that a process which put items on a `Queue` cannot be
//! joined before the items are taken (its feeder thread blocks the exit).
//! corral's [`Queue::put`] returns only once the item is stored in shared
//! memory, so a child that has put its items exits, and `join` returns,
//! whether or not anyone took them: the deadlock does not exist. It still
//! exists with a [`Pipe`]: a child blocked sending a message larger than the
//! pipe's buffer cannot exit until the parent reads it, so read a child's
//! messages before (or while) joining it, or use [`Child::join_timeout`].
//!
//! ## Across the network, and with Python
//!
//! [`connection::Listener`] and [`connection::Client`] are Python's
//! `multiprocessing.connection` (authenticated, byte-compatible): corral
//! programs exchange serde values over TCP or Unix sockets, and a stock
//! Python program can be on either end.
//!
//! ```no_run
//! use corral::connection::{Client, Listener};
//! let listener = Listener::bind("127.0.0.1:0", b"key").unwrap();
//! let at = listener.address().clone();
//! std::thread::spawn(move || {
//!     let conn = listener.accept().unwrap();
//!     let n: u64 = conn.recv().unwrap();
//!     conn.send(&(n + 1)).unwrap();
//! });
//! let conn = Client::new(at, b"key").connect().unwrap();
//! conn.send(&41u64).unwrap();
//! assert_eq!(conn.recv::<u64>().unwrap(), 42);
//! ```
//!
//! ## Managers
//!
//! A [`manager::Manager`] is a server process holding dicts, lists,
//! queues, values, locks, events, barriers and namespaces that any process
//! reaches through proxies — children of every start method, pool tasks,
//! programs on other hosts, and stock Python clients. A dead manager is an
//! error at once, never a hang; a restarted one is reconnected; a dead
//! client's objects are freed; `d[k] += 1` has an atomic form.
//!
//! ```no_run
//! use corral::manager::{List, Manager};
//!
//! fn record((results, x): (List<u64>, u64)) {
//!     results.push(x * x).unwrap();
//! }
//!
//! fn main() {
//!     corral::init();
//!     let manager = Manager::start().unwrap();
//!     let results = manager.list::<u64>().unwrap();
//!     let pool = corral::Pool::new(2).unwrap();
//!     pool.map(record, (0..8).map(|x| (results.clone(), x))).unwrap();
//!     let hits = manager.dict::<String, u64>().unwrap();
//!     hits.add("runs".into(), 1).unwrap(); // atomic, unlike Python's d[k] += 1
//!     assert_eq!(results.len().unwrap(), 8);
//! }
//! ```
//!
//! ## On many machines
//!
//! [`Pool::cluster`] builds the same [`Pool`] on nodes behind a Redis
//! broker (feature `cluster`, on by default): the same calls, the same
//! [`Task`] and [`TaskError`]. A node is this very program started with
//! `CORRAL_NODE=redis://…`, which `init()` recognises; each runs a local
//! supervised pool. A dead node's tasks run elsewhere, each outcome counts
//! once, a dead broker is an error within a bound (see [`cluster`]).
//!
//! ```no_run
//! fn square(x: u64) -> u64 { x * x }
//!
//! fn main() {
//!     corral::init(); // a node, if CORRAL_NODE is set
//!     let pool = corral::Pool::cluster("redis://:secret@10.0.0.5:6379/").build().unwrap();
//!     assert_eq!(pool.map(square, 0..4u64).unwrap(), [0, 1, 4, 9]);
//! }
//! ```
//!
//! ## External programs
//!
//! [`command::Command`] is `subprocess.run` with what it lacks: the program
//! leads its own process group, a timeout walks a TERM → grace → KILL
//! sequence over the whole tree (grandchildren included), memory and CPU
//! caps hold for the job, and [`command::Finished`] says how it ended, why
//! it was killed, and what it used. Run inside a pool task, jobs inherit
//! the pool's guarantees (they die with their worker and with the program).
//! The `corral` command (`crates/corral-cli`) runs every job this way.
//!
//! ```no_run
//! use std::time::Duration;
//! use corral::command::Command;
//!
//! let done = Command::new("make")
//!     .arg("test")
//!     .timeout(Duration::from_secs(600))
//!     .memory_limit(4 << 30)
//!     .run(|_stream, bytes| print!("{}", String::from_utf8_lossy(bytes)))
//!     .unwrap();
//! println!("{:?} after {:?}, peak {} bytes", done.status, done.runtime, done.max_rss);
//! ```
//!
//! ## Lifetimes: no zombies, no orphans
//!
//! * Every child is reaped: by [`Child::join`], or, for a dropped handle, at
//!   the next spawn or at exit.
//! * At normal exit, daemon children are terminated and the others joined
//!   (Python's semantics). A child does the same for its own children when
//!   its function returns; then, like Python's children (`os._exit`), a child
//!   of the fork server or of `Spawn` flushes stdout and stderr and ends with
//!   `_exit`: exit handlers that libraries registered with `atexit` run in
//!   your program, not in its children.
//! * If the parent dies, however it dies, its children die within
//!   milliseconds: the fork server sees its socket close and kills them, and
//!   each child also carries `PR_SET_PDEATHSIG`.
//! * Queues, locks and values are anonymous shared memory (memfd): they
//!   vanish with the last process that holds them. A named [`SharedMemory`]
//!   segment is removed by the fork server when its creator dies.
//! * A forked child (of [`ProcessBuilder::fork_closure`], the `Fork` start
//!   method, or a `fork` of your program's own: `libc::fork`, Python's
//!   `os.fork`) starts afresh: its own fork server, pools and children.
//!   Its copies of its parent's handles are copies, not the things: a
//!   pool's calls fail with [`TaskError::ForkedCopy`], a child's `join`
//!   with [`ProcessError::ForkedCopy`], and a [`Manager`](manager::Manager)
//!   or Unix [`Listener`](connection::Listener) dropped there leaves the
//!   parent's running. Queues, pipes, locks and shared values are meant to
//!   be shared, and stay so.
//!
//! ## Hosting corral in another runtime
//!
//! A language binding loads corral as a library (corral for Python,
//! `crates/corral-py`, is one): its executable is an interpreter, not your
//! program. Before [`init`] it can set what corral runs when it must start a
//! process by re-execution ([`set_reexec`] with a [`Reexec::Command`] that
//! starts the interpreter and loads corral again, which then takes its role
//! at `init`, or [`Reexec::Refuse`]); run its own code around corral's forks
//! ([`at_fork`]: Python's fork protocol, say) and when a child ends normally
//! ([`at_child_exit`]: flush buffers). Children check the build-id of the
//! object holding corral's code (the extension module), not of the
//! interpreter. [`Pool::imap_owned`] gives an iterator that holds its pool,
//! for an iterator object of the host's; [`Task::wait_timeout`] and
//! [`Imap::wait_next`] wait in slices, so the host can look at its signals
//! (Ctrl-C) in between.
//!
//! ## Testing
//!
//! Test binaries have no `main` of yours; add one line at the top level of
//! each test crate (integration test file or the crate root for unit tests):
//!
//! ```ignore
//! corral::test_support!();
//! ```
//!
//! It runs [`init`] before the test harness starts (an ELF constructor), so
//! `cargo test` can spawn real processes under every start method.
//!
//! ## Platform support
//!
//! Linux (pidfd, `close_range`, memfd, robust futexes: kernel 5.9 or later)
//! with glibc (process-shared robust mutexes). Other platforms
//! are not supported yet.
#![deny(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

#[cfg(feature = "cluster")]
pub mod cluster;
pub mod command;
pub mod connection;
mod error;
pub mod manager;
pub mod pipe;
mod poison;
pub mod pool;
mod process;
pub mod queue;
pub mod shared;
mod spin;
mod start;
pub mod sync;
mod sys;
mod time;
mod trace;
mod wire;

/// The bytemuck crate that [`Value`] and [`Array`] take their element types
/// from (`Pod`), re-exported.
pub use bytemuck;
pub use error::{
    CodecError, Error, JoinTimeout, ProcessError, RecvError, RemotePanic, SendError, TaskError,
    TaskTimeout, WireError,
};
pub use pipe::{Connection, Pipe, Receiver, Sender};
pub use pool::{
    AsCompleted, Imap, Pool, PoolBuilder, PoolStats, Task, WorkerStats, as_completed, wait_all,
    wait_any, wait_first_error,
};
pub use process::{
    Child, ExitStatus, Job, Process, ProcessBuilder, ProcessInfo, Waitable, active_children,
    current_process, parent_process, spawn, wait,
};
pub use queue::{GetError, JoinableQueue, PutError, Queue, SimpleQueue};
/// The serde crate corral's API speaks, re-exported: derive
/// `corral::serde::{Serialize, Deserialize}` (with
/// `#[serde(crate = "corral::serde")]`) without a dependency of your own.
pub use serde;
pub use shared::{
    Array, ArrayGuard, RawArray, RawValue, SharedGuard, SharedMemory, Value, ValueGuard,
};
pub use start::StartMethod;
pub use start::reexec::{Reexec, at_child_exit, at_fork, set_reexec};
pub use sync::{
    AcquireError, Barrier, BarrierBuilder, BarrierError, BarrierWaitResult, BoundedSemaphore,
    Condition, ConditionGuard, Event, Lock, LockGuard, RLock, RLockGuard, Semaphore,
    SemaphoreGuard,
};

/// What can cross a process boundary: serde-serializable, owned, sendable.
///
/// Implemented for every type that qualifies. For a type of your own,
/// derive serde's traits (through corral's re-export, no dependency needed):
/// `#[derive(corral::serde::Serialize, corral::serde::Deserialize)]` with
/// `#[serde(crate = "corral::serde")]`.
///
/// # Examples
///
/// ```
/// fn takes<T: corral::Data>(_: T) {}
/// takes((1u8, String::from("two"), vec![3.0f64]));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot cross a process boundary (it is not `corral::Data`)",
    label = "not serde-serializable, not owned, or not `Send`",
    note = "derive serde's traits: `#[derive(corral::serde::Serialize, corral::serde::Deserialize)]` \
            with `#[serde(crate = \"corral::serde\")]`; borrowed data (`&str`, `&[T]`) must become \
            owned (`String`, `Vec<T>`)"
)]
pub trait Data: serde::Serialize + serde::de::DeserializeOwned + Send + 'static {}

impl<T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static> Data for T {}

/// Prepares this process for corral; call it as the first line of `main`.
///
/// * In your program: starts the fork server while the program is still
///   single-threaded and arranges Python's exit semantics (daemon children
///   terminated, the others joined).
/// * In a child started by [`StartMethod::Spawn`], or in a re-executed fork
///   server: runs that role and **never returns**. Code before `init()` runs
///   again in such children, which is why it must come first.
///
/// Calling it again is harmless.
///
/// # Examples
///
/// ```no_run
/// corral::init();
/// // ... the rest of `main`
/// ```
pub fn init() {
    start::runtime::init();
    #[cfg(feature = "cluster")]
    cluster::node::run_if_asked();
}

/// Makes `cargo test` able to spawn processes: runs [`init`] before the test
/// harness starts. Put it once at the top level of each test crate.
///
/// # Examples
///
/// ```ignore
/// corral::test_support!();
///
/// fn double(x: i32) -> i32 { x * 2 }
///
/// #[test]
/// fn doubles_in_a_child() {
///     assert_eq!(corral::spawn(double, 21).unwrap().join().unwrap(), 42);
/// }
/// ```
#[macro_export]
macro_rules! test_support {
    () => {
        #[used]
        #[allow(unsafe_code)]
        #[unsafe(link_section = ".init_array")]
        static __CORRAL_TEST_SUPPORT: extern "C" fn() = {
            extern "C" fn corral_test_support() {
                $crate::init();
            }
            corral_test_support
        };
    };
}

/// Plumbing for corral's own tests, fuzz targets and benchmarks. Not part of
/// the public API; may change at any time.
#[doc(hidden)]
pub mod internal {
    pub use crate::wire::{decode_untrusted, frame_bytes, split_frames};

    /// Runs `data` through the manager's request decoder and objects (the
    /// `manager_request` fuzz target).
    pub fn fuzz_manager_request(data: &[u8]) {
        crate::manager::server::fuzz_request(data);
    }

    /// Whether this thread is inside the manager's guarded pickle decoder,
    /// whose panics are caught and refused (for a fuzz target's panic hook).
    pub fn in_guarded_decode() -> bool {
        crate::manager::protocol::decoding()
    }

    /// The pid of this process's fork server, if it runs one.
    pub fn fork_server_pid() -> Option<u32> {
        crate::start::runtime::server_pid().map(|p| p as u32)
    }

    /// How many descriptors this process holds for the spare child its fork
    /// server offered (0 or 3): leak checks leave them out.
    pub fn spare_fds() -> usize {
        crate::start::runtime::spare_fds()
    }

    /// The pid of the spare child this process's fork server offered, if it
    /// has (reads the offers that arrived).
    pub fn spare_pid() -> Option<u32> {
        crate::start::runtime::spare_pid().map(|p| p as u32)
    }

    /// Spawns (by re-execution) with a forged binary identity, to prove that
    /// a child refuses a task meant for another binary.
    pub fn spawn_with_identity<A: crate::Data, R: crate::Data>(
        identity: Vec<u8>,
        f: fn(A) -> R,
        arg: A,
    ) -> Result<crate::Child<R>, crate::Error> {
        crate::Process::builder()
            .start_method(crate::StartMethod::Spawn)
            .with_identity(identity)
            .spawn(f, arg)
    }
}

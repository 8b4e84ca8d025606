//! What runs a pool's jobs, behind the one `Pool` API.
//!
//! [`Pool`](crate::Pool), [`Task`](crate::Task) and `imap` build jobs and
//! hand them to an engine; the engine runs them and delivers each item's
//! outcome to the job's sink. This crate has two: the local dispatcher and
//! its worker processes ([`Shared`]), and, with the `cluster` feature,
//! nodes behind a Redis stream (`crate::cluster`). Everything above the
//! engine (tasks, callbacks, `map`, `imap`'s window and chunking, waiting)
//! is one code for both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::callback::Callbacks;
use super::core::Shared;
use super::job::{Cancel, Job, fail_jobs};
use super::{PoolStats, WorkerStats};
use crate::{Error, TaskError};

/// Runs jobs and reports their items' outcomes to their sinks.
pub(crate) trait Engine: Send + Sync + std::fmt::Debug {
    /// Queues jobs (blocking while the engine's `max_pending` items wait);
    /// a closed or broken engine fails them at once.
    fn submit(&self, jobs: Vec<Job>);
    /// [`submit`](Engine::submit) of one job (a task).
    fn submit_one(&self, job: Job) {
        self.submit(vec![job]);
    }
    /// Queues jobs for a thread that waits for them at once (`apply`), and
    /// works or spins as [`help_until`](Engine::help_until) does; whether
    /// `ready` holds. The watch begins before the hand-off, so that a
    /// worker that ends the job before this thread has run again (it took
    /// this CPU) leaves its outcome to this thread, not to a third.
    fn submit_and_help(&self, jobs: Vec<Job>, ready: &mut dyn FnMut() -> bool) -> bool {
        self.submit(jobs);
        self.help_until(None, ready)
    }
    /// Cancels the items `what` names that have not ended; running ones
    /// are stopped if `kill_running` and the engine can.
    fn cancel(&self, what: Cancel<'_>, kill_running: bool);
    /// Works (or spins) briefly until `ready` holds or `deadline` passes;
    /// whether it holds. The caller parks afterwards if it must.
    fn help_until(&self, deadline: Option<Instant>, ready: &mut dyn FnMut() -> bool) -> bool;
    /// After `help_until`: sleeps until `ready` holds or `deadline` passes,
    /// woken by the workers themselves; whether it holds. `register` hands
    /// a waker to what `ready` watches (true if it holds already), before
    /// every sleep, for outcomes that come another way. `None` if this engine has no such
    /// sleep or another thread sleeps so now: the caller parks instead.
    fn sleep_until(
        &self,
        _deadline: Option<Instant>,
        _ready: &mut dyn FnMut() -> bool,
        _register: &mut dyn FnMut(&std::task::Waker) -> bool,
    ) -> Option<bool> {
        None
    }
    /// `help_until`, then, if `ready` does not hold yet, `sleep_until`:
    /// `Some` whether it holds, or `None` if the caller must park.
    fn wait_for(
        &self,
        deadline: Option<Instant>,
        ready: &mut dyn FnMut() -> bool,
        register: &mut dyn FnMut(&std::task::Waker) -> bool,
    ) -> Option<bool> {
        if self.help_until(deadline, ready) {
            return Some(true);
        }
        self.sleep_until(deadline, ready, register)
    }
    /// Why this handle of the engine can do nothing, if it can't: it is a
    /// forked child's copy ([`Owned`]).
    fn forked(&self) -> Option<TaskError> {
        None
    }
    /// Where done callbacks run.
    fn callbacks(&self) -> &Callbacks;
    /// How many tasks run at once (the number of worker processes).
    fn processes(&self) -> usize;
    /// Items one worker may run before it is replaced, if limited.
    fn max_tasks(&self) -> Option<u64>;
    /// The time limit of an item that sets none of its own.
    fn task_timeout(&self) -> Option<Duration>;
    /// The chunk size the last `imap` of `func` settled on.
    fn chunk_hint(&self, func: i64) -> usize;
    /// Records the chunk size an `imap` of `func` settled on.
    fn set_chunk_hint(&self, func: i64, size: usize);
    /// Whether jobs may carry shared memory (`map_pod`).
    fn shares_memory(&self) -> bool;
    /// A shared byte array of at least `bytes` for `map_pod`.
    fn scratch(&self, bytes: usize) -> Result<crate::RawArray<u8>, Error>;
    /// Gives a `map_pod` array back for reuse.
    fn return_scratch(&self, array: crate::RawArray<u8>);
    /// Sets how many workers to keep.
    fn resize(&self, processes: usize) -> Result<(), Error>;
    /// Stops accepting work.
    fn close(&self);
    /// Waits for all work, then stops; false if `deadline` came first.
    fn join(&self, deadline: Option<Instant>) -> bool;
    /// Stops at once; unfinished items end with `PoolClosed`.
    fn terminate(&self);
    /// The counters.
    fn stats(&self) -> PoolStats;
    /// Each worker's counters.
    fn worker_stats(&self) -> Vec<WorkerStats>;
}

impl Engine for Shared {
    fn submit(&self, jobs: Vec<Job>) {
        Shared::submit(self, jobs);
    }

    fn submit_one(&self, job: Job) {
        Shared::submit_one(self, job);
    }

    fn submit_and_help(&self, jobs: Vec<Job>, ready: &mut dyn FnMut() -> bool) -> bool {
        Shared::submit_and_help(self, jobs, ready)
    }

    fn cancel(&self, what: Cancel<'_>, kill_running: bool) {
        Shared::cancel(self, what, kill_running);
    }

    fn help_until(&self, deadline: Option<Instant>, ready: &mut dyn FnMut() -> bool) -> bool {
        Shared::help_until(self, deadline, ready)
    }

    fn sleep_until(
        &self,
        deadline: Option<Instant>,
        ready: &mut dyn FnMut() -> bool,
        register: &mut dyn FnMut(&std::task::Waker) -> bool,
    ) -> Option<bool> {
        Shared::sleep_on_bell(self, deadline, ready, register)
    }

    fn callbacks(&self) -> &Callbacks {
        &self.callbacks
    }

    fn processes(&self) -> usize {
        self.lock().target
    }

    fn max_tasks(&self) -> Option<u64> {
        self.config.max_tasks
    }

    fn task_timeout(&self) -> Option<Duration> {
        self.config.task_timeout
    }

    fn chunk_hint(&self, func: i64) -> usize {
        Shared::chunk_hint(self, func)
    }

    fn set_chunk_hint(&self, func: i64, size: usize) {
        Shared::set_chunk_hint(self, func, size);
    }

    fn shares_memory(&self) -> bool {
        true
    }

    fn scratch(&self, bytes: usize) -> Result<crate::RawArray<u8>, Error> {
        Shared::scratch(self, bytes)
    }

    fn return_scratch(&self, array: crate::RawArray<u8>) {
        Shared::return_scratch(self, array);
    }

    fn resize(&self, processes: usize) -> Result<(), Error> {
        Shared::resize(self, processes);
        Ok(())
    }

    fn close(&self) {
        Shared::close(self);
    }

    fn join(&self, deadline: Option<Instant>) -> bool {
        Shared::join(self, deadline)
    }

    fn terminate(&self) {
        Shared::terminate(self);
    }

    fn stats(&self) -> PoolStats {
        Shared::stats(self)
    }

    fn worker_stats(&self) -> Vec<WorkerStats> {
        Shared::worker_stats(self)
    }
}

/// An engine as its pool's handles hold it: in the process that made it,
/// the engine itself; in a forked child (which has a copy of every handle,
/// and none of the engine's threads), nothing of it. There every call fails
/// with [`TaskError::ForkedCopy`] or does nothing, without touching the
/// engine: not its shared memory or workers (the parent's), nor even its
/// locks, which a thread of the parent may have held at the fork. Python's
/// pools hang there, and a child's tasks wedged corral's parent pool.
#[derive(Debug)]
pub(crate) struct Owned<E> {
    engine: Arc<E>,
    /// `sys::forks()` where the pool was made.
    forks: u64,
    /// The process that made it.
    owner: u32,
    /// Where callbacks go in a forked child: nowhere, so they run on the
    /// thread that registers them.
    orphan: Callbacks,
}

impl<E: Engine + 'static> Owned<E> {
    /// A handle of `engine`, owned by the calling process.
    pub(crate) fn handle(engine: Arc<E>) -> EngineRef {
        let orphan = Callbacks::default();
        orphan.finish();
        Arc::new(Owned {
            engine,
            forks: crate::sys::watch_forks(),
            owner: std::process::id(),
            orphan,
        })
    }

    /// The engine, in the process that made it.
    fn here(&self) -> Option<&E> {
        (crate::sys::forks() == self.forks).then_some(&*self.engine)
    }
}

impl<E: Engine + 'static> Engine for Owned<E> {
    fn submit(&self, jobs: Vec<Job>) {
        match self.here() {
            Some(engine) => engine.submit(jobs),
            None => fail_jobs(&jobs, &TaskError::ForkedCopy(self.owner)),
        }
    }

    fn submit_one(&self, job: Job) {
        match self.here() {
            Some(engine) => engine.submit_one(job),
            None => fail_jobs(&[job], &TaskError::ForkedCopy(self.owner)),
        }
    }

    fn submit_and_help(&self, jobs: Vec<Job>, ready: &mut dyn FnMut() -> bool) -> bool {
        match self.here() {
            Some(engine) => engine.submit_and_help(jobs, ready),
            None => {
                fail_jobs(&jobs, &TaskError::ForkedCopy(self.owner));
                ready()
            }
        }
    }

    fn cancel(&self, what: Cancel<'_>, kill_running: bool) {
        if let Some(engine) = self.here() {
            engine.cancel(what, kill_running);
        }
    }

    fn help_until(&self, deadline: Option<Instant>, ready: &mut dyn FnMut() -> bool) -> bool {
        match self.here() {
            Some(engine) => engine.help_until(deadline, ready),
            None => ready(),
        }
    }

    fn sleep_until(
        &self,
        deadline: Option<Instant>,
        ready: &mut dyn FnMut() -> bool,
        register: &mut dyn FnMut(&std::task::Waker) -> bool,
    ) -> Option<bool> {
        self.here()?.sleep_until(deadline, ready, register)
    }

    fn forked(&self) -> Option<TaskError> {
        self.here()
            .is_none()
            .then_some(TaskError::ForkedCopy(self.owner))
    }

    fn callbacks(&self) -> &Callbacks {
        self.here()
            .map_or(&self.orphan, |engine| engine.callbacks())
    }

    fn processes(&self) -> usize {
        // One in a forked copy: what is sized by it stays valid (jobs and
        // windows), and its jobs fail as they are submitted.
        self.here().map_or(1, |engine| engine.processes())
    }

    fn max_tasks(&self) -> Option<u64> {
        self.here()?.max_tasks()
    }

    fn task_timeout(&self) -> Option<Duration> {
        self.here()?.task_timeout()
    }

    fn chunk_hint(&self, func: i64) -> usize {
        self.here().map_or(1, |engine| engine.chunk_hint(func))
    }

    fn set_chunk_hint(&self, func: i64, size: usize) {
        if let Some(engine) = self.here() {
            engine.set_chunk_hint(func, size);
        }
    }

    fn shares_memory(&self) -> bool {
        // What kind of engine it is (no lock): a copy's `map_pod` fails as
        // its jobs are submitted, as every call's do.
        self.engine.shares_memory()
    }

    fn scratch(&self, bytes: usize) -> Result<crate::RawArray<u8>, Error> {
        match self.here() {
            Some(engine) => engine.scratch(bytes),
            None => Err(Error::Unsupported(FORKED)),
        }
    }

    fn return_scratch(&self, array: crate::RawArray<u8>) {
        if let Some(engine) = self.here() {
            engine.return_scratch(array);
        }
    }

    fn resize(&self, processes: usize) -> Result<(), Error> {
        match self.here() {
            Some(engine) => engine.resize(processes),
            None => Err(Error::Unsupported(FORKED)),
        }
    }

    fn close(&self) {
        if let Some(engine) = self.here() {
            engine.close();
        }
    }

    fn join(&self, deadline: Option<Instant>) -> bool {
        self.here().is_none_or(|engine| engine.join(deadline))
    }

    fn terminate(&self) {
        if let Some(engine) = self.here() {
            engine.terminate();
        }
    }

    fn stats(&self) -> PoolStats {
        self.here().map(|engine| engine.stats()).unwrap_or_default()
    }

    fn worker_stats(&self) -> Vec<WorkerStats> {
        self.here()
            .map(|engine| engine.worker_stats())
            .unwrap_or_default()
    }
}

/// What a forked copy of a pool says to what returns an [`Error`].
const FORKED: &str = "a forked copy of a pool handle: the pool belongs to the parent process; create a pool in the child";

/// An engine as `Pool`, its tasks and iterators hold it.
pub(crate) type EngineRef = Arc<dyn Engine>;

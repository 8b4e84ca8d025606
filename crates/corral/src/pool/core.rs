//! The supervisor: one state, one dispatcher thread, any thread may help.
//!
//! All of a pool's state lives in one [`Core`] behind one mutex: the queue,
//! every worker with the batches it holds (so the pool always knows which
//! item each worker is running), counters, and the pool's lifecycle. The
//! dispatcher thread sleeps in `poll` on the workers' sockets and pidfds, a
//! wake-up eventfd and the next deadline; it alone reaps and replaces
//! workers and enforces timeouts. Threads that submit or wait may take the
//! lock to hand out work and read results themselves, which keeps the
//! 35-60 µs cross-CPU wake-up of a dispatcher hop off the round trip of a
//! waiting caller.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use super::callback::Callbacks;
use super::inbox::Inbox;
use super::job::{self, Cancel, Job, Raw, deliver_guarded, fail_jobs, refusal};
use super::life::{Action, Event, Life, Retire, Why};
use super::results;
use super::ring;
use super::worker::{self, BatchMsg, InitMsg, JobMsg, RegionFd, WorkerBoot};
use crate::poison;
use crate::sys::{self, SharedRegion};
use crate::wire::{self, FrameReader, Out, Progress};
use crate::{
    Child, Connection, Error, ExitStatus, PoolStats, Process, RemotePanic, StartMethod, TaskError,
    WorkerStats,
};
use crate::{time, trace};

/// How long a thread waiting for a result reads results itself before it
/// sleeps: a result due within microseconds is cheaper to watch for than to
/// be woken for (35-60 µs across CPUs on small VMs).
const SPIN: Duration = Duration::from_micros(100);
/// Batches a worker may hold at once: one running, one waiting in its socket
/// so that it never idles between batches.
const MAX_INFLIGHT: usize = 2;
/// Most items in one batch.
const MAX_BATCH_ITEMS: usize = 4096;
/// Most argument bytes in one batch (a single larger job still goes alone).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// The longest job list an ended batch lends to its worker's next
/// (`Worker::spare_jobs`): about 35 KB; a longer one is freed.
const SPARE_JOBS_MAX: usize = 256;
/// How long a worker whose send failed for want of kernel resources is left
/// alone before the next try.
const SEND_RETRY: Duration = Duration::from_millis(10);
/// Descriptors a pool keeps for replacing a worker when the program has
/// none left: more than one worker's start takes.
const SPARE_FDS: usize = 16;
/// The largest scratch array a pool keeps between `map_pod` calls.
const MAX_SCRATCH: usize = 1 << 30;
/// How often a worker's resident memory is read (`recycle_memory`).
const MEMORY_CHECK: Duration = Duration::from_millis(50);
/// Socket buffer for a worker channel.
const SOCKET_BUFFER: usize = 4 << 20;

/// Whether a worker holding work told of its outcomes from this thread's
/// CPU (rang the bell, announced them, or left them to a watcher: see
/// `WorkerHead::told_on`) and has not taken its next batch since: the
/// thread reading them runs where the worker waits to run, so a watch that
/// spins here delays the very outcome it waits for, and yields the CPU at
/// each turn instead. With 1 ms tasks that sleep, the next task's start
/// took a median of 10-66 µs (p90 over 100) instead of 2-11. It yields from
/// its first turn: after 2 µs of spinning, as until 2026-12-04, the `apply`
/// round trip's slow mode under a CPU hog (caller and worker on one CPU,
/// the worker giving way too: `worker::Inbox::gives_way`) took 5.8 µs
/// instead of 3.8 (medians of 5,000 round trips, six alternating runs).
fn teller_waits_here(core: &Core) -> bool {
    let here = crate::spin::cpu_mark();
    core.workers
        .iter()
        .any(|w| !w.inflight.is_empty() && w.head().told_on.load(Ordering::Relaxed) == here)
}

// A worker's skip tables cover every batch it may hold, and every
// position of a batch but its last job's (see `worker::Skips`).
const _: () = assert!(MAX_INFLIGHT <= worker::SKIP_TABLES && MAX_BATCH_ITEMS <= worker::SKIP_BITS);

/// Positions `range` of the batch `seq` a worker holds, whose skip table is
/// `table`.
struct Covered {
    seq: u64,
    table: usize,
    range: Range<usize>,
}

/// Tells each worker to skip the items of `what` it holds and has not
/// started; returns, by worker, what it was told.
fn post_skips(core: &Core, what: &Cancel<'_>) -> Vec<(usize, Vec<Covered>)> {
    let mut posted = Vec::new();
    for (k, w) in core.workers.iter().enumerate() {
        if w.life.being_killed() {
            continue;
        }
        let covered = w.covered(what);
        for c in &covered {
            w.head().skips[c.table].post(&c.range);
        }
        if !covered.is_empty() {
            posted.push((k, covered));
        }
    }
    posted
}

/// A batch a worker holds.
struct InFlight {
    seq: u64,
    jobs: Vec<Job>,
    /// Flattened index at which each job starts.
    starts: Vec<usize>,
    /// Which items have an outcome.
    got: Vec<bool>,
    remaining: usize,
    /// The shortest time limit of its items, if any has one (the worker
    /// then stamps starts).
    shortest: Option<Duration>,
    /// Its end was read (see `Shared::end_batches`).
    ended: bool,
    /// Its skip table in the worker's head (`worker::Skips`).
    skips: usize,
}

impl InFlight {
    fn locate(&self, index: usize) -> (usize, usize) {
        let job = self.starts.partition_point(|&s| s <= index) - 1;
        (job, index - self.starts[job])
    }

    /// The time limit of item `index`, given the pool's default.
    fn timeout(&self, index: usize, default: Option<Duration>) -> Option<Duration> {
        self.jobs[self.locate(index).0].timeout().or(default)
    }
}

/// One worker process and what it holds.
struct Worker {
    id: u64,
    child: Child<()>,
    pidfd: Arc<OwnedFd>,
    sock: Arc<OwnedFd>,
    reader: FrameReader,
    /// End-of-file (or a torn stream) was read: no more frames will come.
    read_done: bool,
    /// Frames read while a send was blocked, not yet handled.
    backlog: Vec<Vec<u8>>,
    /// Frames read from its socket (see `WorkerHead::frames_sent`).
    frames_read: u64,
    /// Where its ring's new entries are copied (kept for its capacity).
    ring_copy: Vec<u8>,
    /// The buffer its batches are encoded in (see `send_batch`).
    frame_copy: Vec<u8>,
    /// Job lists of its ended batches, cleared, for its next ones: a batch
    /// of single tasks holds a list of kilobytes, whose allocation would
    /// make the allocator sort its small free chunks (`malloc_consolidate`),
    /// and the submitting thread then takes the slow path for its own.
    spare_jobs: Vec<Vec<Job>>,
    region: SharedRegion,
    inflight: VecDeque<InFlight>,
    /// Where it is in its life: the one place that says what it may do.
    life: Life,
    /// Items it may still take before it retires (`max_tasks_per_child`).
    tasks_left: Option<u64>,
    /// When it was started (its initializer's deadline counts from here).
    spawned: Instant,
    /// No send before this: the last one failed for want of kernel memory
    /// or descriptor room, with nothing sent.
    send_after: Option<Instant>,
    /// A batch waits in its task ring but the wake-up failed (`send_after`
    /// says when to try again).
    owes_wake: bool,
    /// The last progress seen in its region (batch, started, finished) and
    /// when it changed: a worker that holds a timed batch and shows none for
    /// longer than the time limit is stalled (stopped, say).
    progress: (u64, u64, u64),
    progress_at: Instant,
    /// Since when it has held no work (`None`: it holds some).
    idle_since: Option<Instant>,
    /// Items it ended: with a value, and with an error.
    completed: u64,
    failed: u64,
    /// When to read its resident memory next (`recycle_memory`).
    next_memory_check: Instant,
}

impl Worker {
    /// Records a batch handed to this worker.
    fn took(&mut self, batch: InFlight) {
        if let Some(left) = &mut self.tasks_left {
            *left = left.saturating_sub(batch.remaining as u64);
        }
        self.idle_since = None;
        let pid = self.child.pid();
        for job in batch.jobs.iter().filter(|j| j.len() == 1) {
            job.sink.assigned(pid);
        }
        self.inflight.push_back(batch);
    }

    /// Feeds its state machine an event and carries out the action.
    fn apply(&mut self, event: Event, now: Instant) {
        let event = match event {
            // A process that died on its own was not killed by the pool: its
            // running item takes the blame for its death.
            Event::Kill(_) | Event::SendBroken if self.exited() => Event::Eof,
            other => other,
        };
        match self.life.on(event, now) {
            Action::Nothing => {}
            Action::Term => {
                let _ = self.child.proc().signal_tree(sys::Sig::Term);
            }
            Action::Kill => {
                let _ = self.child.proc().signal_tree(sys::Sig::Kill);
            }
            Action::Shutdown => {
                let _ = rustix::net::shutdown(&*self.sock, rustix::net::Shutdown::Both);
            }
        }
    }

    /// Whether the process has exited (its pidfd is readable).
    fn exited(&self) -> bool {
        matches!(
            sys::poll_readable(&[self.pidfd.as_fd()], Some(Duration::ZERO)).as_deref(),
            Ok([true])
        )
    }

    /// Whether it may be handed another batch now.
    fn has_room(&self, now: Instant) -> bool {
        self.may_have_room() && self.send_after.is_none_or(|t| now >= t)
    }

    /// [`has_room`](Worker::has_room) but for a send put off to later: what
    /// can be told without reading the clock.
    fn may_have_room(&self) -> bool {
        self.life.takes_work() && self.inflight.len() < MAX_INFLIGHT && self.tasks_left != Some(0)
    }

    /// Notes the progress its region shows; returns when it last changed.
    fn observe_progress(&mut self, now: Instant) -> Instant {
        let seen = (
            self.head().seq.load(Ordering::Acquire),
            self.head().started.load(Ordering::Acquire),
            self.head().finished.load(Ordering::Acquire),
        );
        if seen != self.progress {
            self.progress = seen;
            self.progress_at = now;
        }
        self.progress_at
    }

    /// The head of its shared region.
    fn head(&self) -> &worker::WorkerHead {
        worker::head(&self.region)
    }

    /// The positions of its batches that `what` covers, as (batch, range):
    /// jobs of one call lie side by side in a batch, one range for them all.
    fn covered(&self, what: &Cancel<'_>) -> Vec<Covered> {
        let mut covered: Vec<Covered> = Vec::new();
        for batch in &self.inflight {
            for (job, &start) in batch.jobs.iter().zip(&batch.starts) {
                let Some(r) = what.covers(job) else {
                    continue;
                };
                let range = start + r.start..start + r.end;
                match covered.last_mut() {
                    Some(last) if last.seq == batch.seq && last.range.end == range.start => {
                        last.range.end = range.end;
                    }
                    _ => covered.push(Covered {
                        seq: batch.seq,
                        table: batch.skips,
                        range,
                    }),
                }
            }
        }
        covered
    }

    /// The item it runs now, as (batch, position), if any. Its batch need
    /// not be the front one: a worker that finished the front batch runs
    /// the next while the front's outcomes wait unread (a cancelled task
    /// whose worker skipped it, then the next task, handed to that worker
    /// and cancelled as it ran, was left to run to its end).
    fn running(&self) -> Option<(u64, usize)> {
        let seq = self.head().seq.load(Ordering::SeqCst);
        let started = self.head().started.load(Ordering::SeqCst) as usize;
        let finished = self.head().finished.load(Ordering::SeqCst) as usize;
        let held = self.inflight.iter().any(|b| b.seq == seq);
        (held && started > finished).then(|| (seq, started - 1))
    }

    /// Whether it ever said READY (a READY frame read, or a batch begun).
    fn said_ready(&self) -> bool {
        let seq = self.head().seq.load(Ordering::Acquire);
        self.life.said_ready() || (seq != 0 && seq != worker::SEQ_INIT_FAILED)
    }
}

/// The pool's configuration, fixed at build time.
#[derive(Debug)]
pub(super) struct Config {
    pub(super) processes: usize,
    pub(super) init: Option<InitMsg>,
    pub(super) max_tasks: Option<u64>,
    pub(super) task_timeout: Option<Duration>,
    pub(super) memory_limit: Option<u64>,
    pub(super) max_pending: usize,
    pub(super) start_method: StartMethod,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) recycle_memory: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Accepting work.
    Open,
    /// No new work; what was submitted still runs.
    Closed,
    /// Workers are being stopped; the dispatcher exits once they are gone.
    Stopping,
    /// Killed: nothing runs any more.
    Terminated,
}

/// Everything the pool knows, behind one lock.
pub(super) struct Core {
    pending: VecDeque<Job>,
    pending_items: usize,
    workers: Vec<Worker>,
    next_seq: u64,
    next_worker: u64,
    pub(super) phase: Phase,
    /// How many workers it should have (`processes`, or as resized).
    pub(super) target: usize,
    /// Why the pool runs no more tasks (its initializer failed, or workers
    /// keep dying before they are ready): the error every task then gets.
    broken: Option<TaskError>,
    /// Items submitted that have not ended.
    pub(super) outstanding: usize,
    pub(super) stats: PoolStats,
    /// Threads waiting on [`Shared::changed`].
    waiters: usize,
    /// Consecutive workers that died before they were ready.
    early_deaths: u32,
    /// When to try again after a failed spawn.
    retry_spawn: Option<Instant>,
    /// Descriptors kept for a replacement worker (see `keep_spare_fds`).
    spare_fds: Vec<OwnedFd>,
    /// Set by the dispatcher thread when it has exited.
    pub(super) dispatcher_gone: bool,
    /// When the dispatcher, asleep or about to be, looks again by itself
    /// (`None`: only when woken). A thread that hands out a timed batch
    /// wakes it unless it looks in time to see that batch's deadline.
    dispatcher_wake: Option<Instant>,
    /// A worker went idle (read by a thread other than the dispatcher)
    /// with an idle limit the dispatcher does not know of yet: it must be
    /// woken to plan for it.
    idle_news: bool,
}

impl Core {
    /// Worker `i`, with the counters its outcomes move.
    fn worker_and_counts(&mut self, i: usize) -> (&mut Worker, &mut PoolStats, &mut usize) {
        (&mut self.workers[i], &mut self.stats, &mut self.outstanding)
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("phase", &self.phase)
            .field("workers", &self.workers.len())
            .field("pending_items", &self.pending_items)
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

/// The state shared by the pool handle, its tasks and the dispatcher.
#[derive(Debug)]
pub(super) struct Shared {
    core: Mutex<Core>,
    /// Signalled when items end, the queue shrinks or the phase changes (for
    /// threads that registered in `Core::waiters`).
    changed: Condvar,
    /// Wakes the dispatcher thread.
    wake: OwnedFd,
    /// The region shared with every worker ([`worker::PoolHead`]); also
    /// held by the wakers of threads asleep on its bell.
    region: Arc<SharedRegion>,
    pub(super) config: Config,
    /// Where done callbacks run.
    pub(super) callbacks: Callbacks,
    /// The chunk size each function's last `imap` settled on.
    chunk_hints: Mutex<std::collections::HashMap<i64, usize>>,
    /// Shared byte arrays `map_pod` reuses (their pages, once touched, stay
    /// mapped: a fresh mapping costs a page fault per 4 KiB).
    scratch: Mutex<Vec<crate::RawArray<u8>>>,
    /// Jobs submitted while another thread held `core`: queued by the next
    /// thread to take it ([`Shared::lock`]).
    inbox: Inbox<Job>,
}

/// A thread watching the rings ([`worker::PoolHead::watching`]): ends
/// the watch when dropped, also by a panic (a watch that never ended would
/// silence the workers for good).
struct Watch<'a>(&'a Shared);

impl<'a> Watch<'a> {
    fn start(shared: &'a Shared) -> Watch<'a> {
        shared.watching().fetch_add(1, Ordering::SeqCst);
        Watch(shared)
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.0.stop_watching();
    }
}

/// The bell, claimed by the thread asleep on it: given back when dropped
/// (before that thread's [`Watch`] ends), also by a panic.
struct BellClaim<'a>(&'a worker::PoolHead);

impl Drop for BellClaim<'_> {
    fn drop(&mut self) {
        ring::release_bell::<SharedRegion>(&self.0.sleeper);
    }
}

/// A waker that rings a pool's bell: for the thread asleep on it, whose
/// task may end by a way that does not ring it (a frame, a death, a
/// timeout). It holds the pool's region, not the pool, so a waker left in a
/// task keeps no pool alive.
struct Bell(Arc<SharedRegion>);

impl Wake for Bell {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.layout::<worker::PoolHead>().ring();
    }
}

fn now_ns() -> u64 {
    sys::monotonic_ns()
}

impl Shared {
    /// Starts the workers; the dispatcher thread is started by the caller.
    pub(super) fn new(config: Config) -> Result<Arc<Shared>, Error> {
        let wake = sys::eventfd().map_err(Error::io("creating the pool's wake-up eventfd"))?;
        let region = SharedRegion::create(c"corral-pool", size_of::<worker::PoolHead>())
            .map_err(Error::io("creating the pool's shared memory"))?;
        if sys::global_barrier_works() {
            let head = region.layout::<worker::PoolHead>();
            head.barrier.store(1, Ordering::Relaxed);
        }
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                pending: VecDeque::new(),
                pending_items: 0,
                workers: Vec::new(),
                // A fresh region reads 0: no batch may have that number.
                next_seq: 1,
                next_worker: 0,
                phase: Phase::Open,
                target: config.processes,
                broken: None,
                outstanding: 0,
                stats: PoolStats::default(),
                waiters: 0,
                early_deaths: 0,
                retry_spawn: None,
                spare_fds: Vec::new(),
                dispatcher_gone: false,
                dispatcher_wake: None,
                idle_news: false,
            }),
            changed: Condvar::new(),
            wake,
            region: Arc::new(region),
            config,
            callbacks: Callbacks::default(),
            chunk_hints: Mutex::new(std::collections::HashMap::new()),
            scratch: Mutex::new(Vec::new()),
            inbox: Inbox::new(),
        });
        {
            let mut core = shared.lock();
            for _ in 0..shared.config.processes {
                let worker = shared.spawn_worker(&mut core)?;
                core.workers.push(worker);
            }
            shared.keep_spare_fds(&mut core);
        }
        Ok(shared)
    }

    /// Takes the pool's lock, and queues the jobs left in the inbox.
    pub(super) fn lock(&self) -> MutexGuard<'_, Core> {
        let mut core = poison::lock(&self.core);
        self.queue(&mut core, self.inbox.take(false));
        core
    }

    /// [`lock`](Shared::lock), if no other thread holds it.
    pub(super) fn try_lock(&self) -> Option<MutexGuard<'_, Core>> {
        let mut core = match self.core.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        self.queue(&mut core, self.inbox.take(false));
        Some(core)
    }

    /// Queues jobs accepted while the pool was open (or fails them, if it
    /// is broken since).
    fn queue(&self, core: &mut Core, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let items: usize = jobs.iter().map(Job::len).sum();
        if let Some(error) = &core.broken {
            count_failure(&mut core.stats, error, items);
            fail_jobs(&jobs, error);
            return;
        }
        core.stats.submitted += items as u64;
        core.outstanding += items;
        core.pending_items += items;
        core.pending.extend(jobs);
    }

    /// The pool accepts no more work: the inbox neither (what it holds was
    /// accepted, and is queued).
    fn stop_accepting(&self, core: &mut Core) {
        self.queue(core, self.inbox.take(true));
    }

    /// Records that the dispatcher thread has ended (however it ended).
    pub(super) fn mark_dispatcher_gone(&self) {
        let mut core = self.lock();
        core.dispatcher_gone = true;
        drop(core);
        self.changed.notify_all();
    }

    /// Wakes the dispatcher thread.
    pub(super) fn wake_dispatcher(&self) {
        sys::eventfd_notify(self.wake.as_fd());
    }

    /// Waits on the condition until `done(core)` holds or `deadline` passes.
    pub(super) fn wait_until<'a>(
        &'a self,
        mut core: MutexGuard<'a, Core>,
        deadline: Option<Instant>,
        mut done: impl FnMut(&mut Core) -> bool,
    ) -> MutexGuard<'a, Core> {
        while !done(&mut core) {
            core.waiters += 1;
            core = match deadline {
                None => poison::wait(&self.changed, core),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        core.waiters -= 1;
                        return core;
                    }
                    poison::wait_timeout(&self.changed, core, left)
                }
            };
            core.waiters -= 1;
        }
        core
    }

    fn notify(&self, core: &Core) {
        if core.waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// Queues jobs, waiting while `max_pending` items wait already.
    ///
    /// On error (closed or broken pool) the jobs are failed with it.
    pub(super) fn submit(&self, jobs: Vec<Job>) {
        match self.lock_or_leave(jobs) {
            Ok(()) => {}
            Err((core, jobs)) => self.submit_locked(core, jobs),
        }
    }

    /// [`submit`](Shared::submit) of one job.
    pub(super) fn submit_one(&self, job: Job) {
        match self.lock_or_leave([job]) {
            Ok(()) => {}
            Err((core, [job])) => self.submit_locked(core, vec![job]),
        }
    }

    /// Without a bound on the queue, a thread never waits for the lock to
    /// submit: it leaves the jobs in the inbox if another holds it
    /// (`Ok`). Otherwise the lock, and the jobs back.
    fn lock_or_leave<J: IntoIterator<Item = Job>>(
        &self,
        jobs: J,
    ) -> Result<(), (MutexGuard<'_, Core>, J)> {
        if self.config.max_pending != usize::MAX {
            return Err((self.lock(), jobs));
        }
        // Jobs left already: the dispatcher is called, these go with them
        // (no try at a lock it likely holds, whose line is on its CPU).
        if !self.inbox.holds_items()
            && let Some(core) = self.try_lock()
        {
            return Err((core, jobs));
        }
        match self.inbox.offer(jobs) {
            Ok(call) => {
                if call {
                    self.wake_dispatcher();
                }
                Ok(())
            }
            Err(back) => Err((self.lock(), back)),
        }
    }

    /// [`submit`](Shared::submit), the lock held.
    fn submit_locked<'a>(&'a self, mut core: MutexGuard<'a, Core>, jobs: Vec<Job>) {
        let items: usize = jobs.iter().map(Job::len).sum();
        let max = self.config.max_pending;
        if core.pending_items + items > max && core.pending_items > 0 {
            core = self.wait_until(core, None, |c| {
                c.pending_items == 0 || c.pending_items + items <= max || c.phase != Phase::Open
            });
        }
        if let Some(error) = refusal(core.broken.as_ref(), core.phase == Phase::Open) {
            drop(core);
            fail_jobs(&jobs, &error);
            return;
        }
        core.stats.submitted += items as u64;
        core.outstanding += items;
        core.pending_items += items;
        core.pending.extend(jobs);
        let deadline_news = self.dispatch(&mut core);
        // Workers that left while idle (or a pool grown by `resize`) are
        // started by the dispatcher.
        let short = core.workers.iter().filter(|w| w.life.takes_work()).count() < core.target;
        drop(core);
        if short || deadline_news {
            // The dispatcher must start workers, or learn of a new deadline.
            self.wake_dispatcher();
        }
    }

    /// Spins for a short while ([`SPIN`], or until `deadline`), reading
    /// results itself, until `ready` holds; returns whether it does. The
    /// caller sleeps afterwards if it must. While it spins, workers publish
    /// outcomes in their rings without a word on their sockets.
    pub(super) fn help_until(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        ready() || self.watch_until(Watch::start(self), deadline, ready)
    }

    /// [`submit`](Shared::submit), then [`help_until`](Shared::help_until)
    /// with the watch begun before the hand-off. On a busy machine the
    /// worker woken often takes this thread's CPU at once, and ends the
    /// job before this thread runs again: seeing no watcher, it used to
    /// announce its outcome to the dispatcher, a third thread to run on
    /// that CPU (and one waiting for the lock this thread held). A submit
    /// that may wait for room (`max_pending`) waits unwatched: a watcher
    /// that does not read would leave untold the very outcomes that make
    /// the room.
    pub(super) fn submit_and_help(&self, jobs: Vec<Job>, mut ready: impl FnMut() -> bool) -> bool {
        if self.config.max_pending != usize::MAX {
            self.submit(jobs);
            return self.help_until(None, ready);
        }
        // Unbounded, `submit` never blocks: it leaves the jobs in the
        // inbox if another thread holds the lock.
        let watch = Watch::start(self);
        self.submit(jobs);
        ready() || self.watch_until(watch, None, ready)
    }

    /// The loop of [`help_until`](Shared::help_until), in `watch`.
    fn watch_until(
        &self,
        watch: Watch<'_>,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        let start = Instant::now();
        let until = deadline.map_or(start + SPIN, |d| d.min(start + SPIN));
        let done = loop {
            if ready() {
                break true;
            }
            let pumped = self.try_lock().map(|mut core| {
                self.pump(&mut core);
                core
            });
            let now = Instant::now();
            if now >= until {
                break false;
            }
            if pumped.is_some_and(|core| teller_waits_here(&core)) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        };
        drop(watch);
        done || ready()
    }

    /// Sleeps on the pool's bell until `ready` holds or `deadline` passes
    /// (see [`worker::PoolHead::sleeper`]); `None` if another thread
    /// sleeps on it. The sleeper counts as watching, so workers publish
    /// without a word to the dispatcher and ring the bell instead; woken,
    /// the sleeper reads what they published. An outcome that comes
    /// another way (a frame, a death, a timeout) reaches it through the
    /// waker `register` hands on, which rings the bell too.
    pub(super) fn sleep_on_bell(
        &self,
        deadline: Option<Instant>,
        ready: &mut dyn FnMut() -> bool,
        register: &mut dyn FnMut(&Waker) -> bool,
    ) -> Option<bool> {
        let head = self.region.layout::<worker::PoolHead>();
        let watch = Watch::start(self);
        if !ring::claim_bell(&*self.region, &head.sleeper, crate::spin::cpu_mark()) {
            return None;
        }
        let claim = BellClaim(head);
        let done = self.sleep_rung(head, deadline, ready, register);
        drop((claim, watch));
        // `ready` last, also when `register` found it done: for an `imap`,
        // it is what takes the outcomes.
        Some(ready() || done)
    }

    /// The bell sleeper's loop: hands its waker on, reads what workers
    /// published, then sleeps until the bell rings (or has rung since it
    /// looked). The waker is handed on at every turn: a sink may wake it
    /// for outcomes that do not make `ready` hold (an `imap`'s later
    /// items), and each wake uses it up.
    fn sleep_rung(
        &self,
        head: &worker::PoolHead,
        deadline: Option<Instant>,
        ready: &mut dyn FnMut() -> bool,
        register: &mut dyn FnMut(&Waker) -> bool,
    ) -> bool {
        let waker = Waker::from(Arc::new(Bell(self.region.clone())));
        loop {
            let rung = head.bell.load(Ordering::SeqCst);
            if register(&waker) {
                return true;
            }
            self.pump(&mut self.lock());
            if ready() {
                return true;
            }
            let left = match deadline {
                None => None,
                Some(d) => match d.saturating_duration_since(Instant::now()) {
                    left if left.is_zero() => return false,
                    left => Some(left),
                },
            };
            // Where it sleeps, for a worker deciding how long to watch.
            head.sleeper
                .store(crate::spin::cpu_mark(), Ordering::Relaxed);
            sys::futex_wait(&head.bell, rung, left);
        }
    }

    fn watching(&self) -> &std::sync::atomic::AtomicU64 {
        &self.region.layout::<worker::PoolHead>().watching
    }

    /// Ends a watch; the last watcher out reads what workers published
    /// without announcing it (they saw it watching).
    fn stop_watching(&self) {
        if ring::leave_watch(&*self.region, self.watching()) {
            self.pump(&mut self.lock());
        }
    }

    /// Reads what workers have sent and hands out work, without blocking.
    /// Any thread may call it.
    pub(super) fn pump(&self, core: &mut Core) {
        let mut progress = false;
        for i in 0..core.workers.len() {
            if !core.workers[i].inflight.is_empty() {
                progress |= self.read_worker(core, i, false);
            }
        }
        // Hands out work and wakes threads waiting for a change; a timed
        // batch handed to an idle worker here (by a thread helping, not the
        // dispatcher) must reach the dispatcher, which sleeps until the
        // next deadline it knows.
        if progress && (self.dispatch(core) | std::mem::take(&mut core.idle_news)) {
            self.wake_dispatcher();
        }
    }

    /// Reads and handles everything worker `i` has sent or published; true
    /// if anything. Reads whatever the worker's state: a worker that can no
    /// longer be sent to may still have results (or its READY frame) to
    /// read. Its socket is read if `force`, or if it sent frames not read
    /// yet.
    fn read_worker(&self, core: &mut Core, i: usize, force: bool) -> bool {
        let mut any = false;
        // A batch whose end was read with items missing gets a second look
        // at both channels: whatever the worker sent before the end is
        // readable by then.
        for last in [false, true] {
            let w = &mut core.workers[i];
            let (frames, eof) = take_frames(w, force || last);
            let mut ring = std::mem::take(&mut w.ring_copy);
            ring.clear();
            let drained = ring::drain(worker::results_ring(&w.region), &mut ring);
            any |= !frames.is_empty() || drained == Ok(true);
            for frame in frames {
                self.handle_frame(core, i, &frame);
            }
            match drained {
                Ok(true) => self.take_entries(core, i, &ring),
                Ok(false) => {}
                Err(()) => self.kill_worker(core, i),
            }
            core.workers[i].ring_copy = ring;
            if eof {
                core.workers[i].apply(Event::Eof, Instant::now());
            }
            if self.end_batches(core, i, last) {
                break;
            }
        }
        any
    }

    fn handle_frame(&self, core: &mut Core, i: usize, frame: &[u8]) {
        let Some(header) = frame.get(..worker::FRAME_HEADER) else {
            return self.kill_worker(core, i);
        };
        let seq = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let body = &frame[worker::FRAME_HEADER..];
        match seq {
            worker::SEQ_READY => {
                let now = Instant::now();
                let w = &mut core.workers[i];
                w.apply(Event::Ready, now);
                // Batches it holds start their clock now, not while it
                // started up.
                w.progress_at = now;
                if w.inflight.is_empty() {
                    w.idle_since = Some(now);
                }
                core.early_deaths = 0;
            }
            worker::SEQ_INIT_FAILED => {
                let why = match results::entries(body).next() {
                    Some(r) if r.tag == results::TAG_PANIC => {
                        match postcard::from_bytes::<RemotePanic>(r.body) {
                            Ok(p) => format!("it panicked: {p}"),
                            Err(_) => "it panicked".to_owned(),
                        }
                    }
                    Some(r) => String::from_utf8_lossy(r.body).into_owned(),
                    None => "no report".to_owned(),
                };
                self.break_pool(core, TaskError::InitializerFailed(why));
            }
            worker::SEQ_WAKE => {}
            worker::SEQ_RESULTS => self.take_entries(core, i, body),
            _ => self.kill_worker(core, i),
        }
    }

    /// Hands the outcomes among `entries` to their batches' sinks and marks
    /// the batches whose end they hold.
    fn take_entries(&self, core: &mut Core, i: usize, entries: &[u8]) {
        let (w, stats, outstanding) = core.worker_and_counts(i);
        let mut entries = results::entries(entries);
        while let Some(first) = entries.peek() {
            let seq = first.seq;
            let Some(batch) = w.inflight.iter_mut().find(|b| b.seq == seq) else {
                // A batch it was never given: not the worker we started.
                return self.kill_worker(core, i);
            };
            if first.tag == results::TAG_DONE {
                batch.ended = true;
                entries.pass(&first);
                continue;
            }
            let before = (stats.completed, stats.failed);
            deliver_records(batch, &mut entries, stats, outstanding);
            w.completed += stats.completed - before.0;
            w.failed += stats.failed - before.1;
        }
    }

    /// Retires worker `i`'s batches whose end was read; false, retiring
    /// none, if one of them misses items and this is not the `last` look.
    fn end_batches(&self, core: &mut Core, i: usize, last: bool) -> bool {
        let (w, stats, outstanding) = core.worker_and_counts(i);
        if !last && w.inflight.iter().any(|b| b.ended && b.remaining > 0) {
            return false;
        }
        let mut ended = false;
        while let Some(k) = w.inflight.iter().position(|b| b.ended) {
            let batch = w.inflight.remove(k).expect("a batch");
            ended = true;
            if batch.remaining > 0 {
                let error = TaskError::Codec("the worker skipped the item".into());
                fail_missing(&batch, &error, stats, outstanding);
            }
            let mut jobs = batch.jobs;
            jobs.clear();
            if w.spare_jobs.len() < MAX_INFLIGHT && jobs.capacity() <= SPARE_JOBS_MAX {
                w.spare_jobs.push(jobs);
            }
        }
        if ended && w.inflight.is_empty() {
            let now = Instant::now();
            w.idle_since = Some(now);
            // A leaving worker is done: whichever thread read its last
            // outcome tells it, not only the dispatcher.
            w.apply(Event::Drained, now);
            let idle_end = self.config.idle_timeout.and_then(|l| time::after(now, l));
            core.idle_news |= idle_end.is_some_and(|t| core.dispatcher_wake.is_none_or(|d| d > t));
        }
        true
    }

    /// Kills worker `i`, whose channel spoke nonsense (its death is handled
    /// by the dispatcher).
    fn kill_worker(&self, core: &mut Core, i: usize) {
        core.workers[i].apply(Event::Kill(Why::Broken), Instant::now());
        self.wake_dispatcher();
    }

    /// The pool cannot run tasks (see [`Core::broken`]): fail everything,
    /// run nothing more.
    fn break_pool(&self, core: &mut Core, error: TaskError) {
        if core.broken.is_some() {
            return;
        }
        trace::event!(error, error = %error, "pool broken: it runs no more tasks");
        core.broken = Some(error.clone());
        let jobs: Vec<Job> = core.pending.drain(..).collect();
        core.pending_items = 0;
        for job in &jobs {
            count_failure(&mut core.stats, &error, job.len());
            job.fail_all(&error);
        }
        core.outstanding -= jobs.iter().map(Job::len).sum::<usize>();
        self.notify(core);
    }

    /// Hands waiting jobs to workers with room. Returns true if a batch with
    /// a time limit went out that the dispatcher would not look at in time
    /// (it sleeps without a deadline, or past the soonest this batch can
    /// need): the caller must wake it. Whether the worker held nothing does
    /// not matter: a batch it holds may have ended unread (a helping thread
    /// read its outcomes from the ring, so the worker told nobody), and the
    /// new batch then runs at once.
    fn dispatch(&self, core: &mut Core) -> bool {
        let mut deadline_news = false;
        // Submitting a task while every worker holds all it may (the common
        // case under load) reads no clock.
        if !core.workers.iter().any(Worker::may_have_room) {
            self.notify(core);
            return false;
        }
        let now = Instant::now();
        while core.pending_items > 0 {
            let eligible = core.workers.iter().filter(|w| w.has_room(now)).count();
            let Some(i) = (0..core.workers.len())
                .filter(|&i| core.workers[i].has_room(now))
                .min_by_key(|&i| core.workers[i].inflight.len())
            else {
                break;
            };
            let share = core.pending_items.div_ceil(eligible.max(1));
            let mut room = share.clamp(1, MAX_BATCH_ITEMS);
            if let Some(left) = core.workers[i].tasks_left {
                room = room.min(left as usize);
            }
            let spare = core.workers[i].spare_jobs.pop().unwrap_or_default();
            let jobs = self.take_batch(core, room, spare);
            if jobs.is_empty() {
                continue;
            }
            let w = &mut core.workers[i];
            if w.inflight.is_empty() {
                w.progress_at = now;
            }
            let seq = core.next_seq;
            core.next_seq += 1;
            let default_timeout = self.config.task_timeout;
            let looks_at = core.dispatcher_wake;
            if let Err((jobs, failure)) = send_batch(w, seq, jobs, default_timeout) {
                // Nothing of the batch is the worker's: it goes back first in
                // line. What the failure says of the worker is its state
                // machine's business; a failed send is never taken for a death.
                match failure {
                    SendFailure::NotNow => w.send_after = Some(now + SEND_RETRY),
                    SendFailure::Closed => w.apply(Event::SendClosed, now),
                    SendFailure::Broken => w.apply(Event::SendBroken, now),
                }
                for job in jobs.into_iter().rev() {
                    core.pending_items += job.len();
                    core.pending.push_front(job);
                }
                self.wake_dispatcher();
            } else if let Some(limit) = w.inflight.back().and_then(|b| b.shortest)
                && let Some(soonest) = time::after(now, limit)
                && looks_at.is_none_or(|t| t > soonest)
            {
                deadline_news = true;
            }
        }
        self.notify(core);
        deadline_news
    }

    /// Takes up to `room` items off the queue for one batch: at most
    /// [`MAX_BATCH_BYTES`] of arguments (a larger single item goes alone) and
    /// at most [`sys::MAX_FDS_PER_MESSAGE`] descriptors, splitting a job
    /// where a limit falls. An item that alone has more descriptors than one
    /// message carries fails with a codec error.
    fn take_batch(&self, core: &mut Core, room: usize, mut jobs: Vec<Job>) -> Vec<Job> {
        debug_assert!(jobs.is_empty());
        let (mut items, mut bytes, mut fds) = (0, 0, 0);
        while items < room
            && bytes < MAX_BATCH_BYTES
            && let Some(mut job) = core.pending.pop_front()
        {
            core.pending_items -= job.len();
            if job.sink.cancelled() || (job.len() == 1 && !job.sink.wanted(job.index(0))) {
                // Cancelled while queued: it has its outcome already.
                core.outstanding -= job.len();
                count_failure(&mut core.stats, &TaskError::Cancelled, job.len());
                continue;
            }
            if let Some(first) = job.fds().first().map(Vec::len)
                && first > sys::MAX_FDS_PER_MESSAGE
            {
                let one = job.take_front(1);
                if job.len() > 0 {
                    core.pending_items += job.len();
                    core.pending.push_front(job);
                }
                let error = TaskError::Codec(format!(
                    "the argument holds {first} corral handles; one task can carry at most {}",
                    sys::MAX_FDS_PER_MESSAGE
                ));
                core.outstanding -= 1;
                count_failure(&mut core.stats, &error, 1);
                one.fail_all(&error);
                continue;
            }
            // Only a worker's task quota splits a job by items (map and imap
            // size their jobs already); descriptors split any job.
            let quota = self.config.max_tasks.is_some();
            let fits = job.fits(
                quota.then_some(room - items),
                sys::MAX_FDS_PER_MESSAGE - fds,
            );
            if fits == 0 {
                core.pending_items += job.len();
                core.pending.push_front(job);
                break;
            }
            if fits < job.len() {
                let front = job.take_front(fits);
                core.pending_items += job.len();
                core.pending.push_front(job);
                job = front;
            }
            items += job.len();
            bytes += job.args.len();
            fds += job.fds().iter().map(Vec::len).sum::<usize>();
            jobs.push(job);
        }
        jobs
    }

    /// Spawns one worker.
    fn spawn_worker(&self, core: &mut Core) -> Result<Worker, Error> {
        let (ours, theirs) = sys::socketpair().map_err(Error::io("creating a worker channel"))?;
        sys::set_socket_buffers(ours.as_fd(), SOCKET_BUFFER);
        sys::set_nonblocking(ours.as_fd(), true)
            .map_err(Error::io("configuring a worker channel"))?;
        let region = SharedRegion::create(c"corral-pool-worker", worker::REGION_BYTES)
            .map_err(Error::io("creating a worker's shared memory"))?;
        let dup = |r: &SharedRegion| {
            r.as_fd()
                .try_clone_to_owned()
                .map(RegionFd)
                .map_err(Error::io("duplicating a descriptor"))
        };
        let boot = WorkerBoot {
            conn: Connection::from(theirs),
            region: dup(&region)?,
            pool: dup(&self.region)?,
            identity: sys::executable_identity().to_vec(),
            init: self.config.init.clone(),
            memory_limit: self.config.memory_limit,
            max_tasks: self.config.max_tasks,
        };
        let child = Process::builder()
            .name("corral-worker")
            .daemon(true)
            .start_method(self.config.start_method)
            .group_dies_with_leader()
            .spawn(worker::worker_main, boot)?;
        let pidfd = child
            .proc()
            .wait_fds()
            .first()
            .expect("a pidfd")
            .try_clone_to_owned()
            .map_err(Error::io("duplicating a pidfd"))?;
        core.next_worker += 1;
        core.stats.workers_started += 1;
        trace::event!(info, pid = child.pid(), "worker started");
        Ok(Worker {
            id: core.next_worker,
            child,
            pidfd: Arc::new(pidfd),
            sock: Arc::new(ours),
            reader: FrameReader::new(wire::MAX_FRAME),
            backlog: Vec::new(),
            frames_read: 0,
            ring_copy: Vec::new(),
            frame_copy: Vec::new(),
            spare_jobs: Vec::new(),
            read_done: false,
            region,
            inflight: VecDeque::new(),
            life: Life::Starting,
            tasks_left: self.config.max_tasks,
            spawned: Instant::now(),
            send_after: None,
            owes_wake: false,
            progress: (0, 0, 0),
            progress_at: Instant::now(),
            idle_since: None,
            next_memory_check: Instant::now(),
            completed: 0,
            failed: 0,
        })
    }

    /// Cancels the items `what` names wherever a worker holds them: those
    /// not started yet are put in the worker's skip table; a running one has
    /// its worker killed if `kill_running`. (Items still in the pool's queue
    /// are skipped when their turn comes: their sink no longer wants them.)
    pub(super) fn cancel(&self, what: Cancel<'_>, kill_running: bool) {
        let mut core = self.lock();
        let posted = post_skips(&core, &what);
        let killed = kill_running && !posted.is_empty() && self.kill_covered(&mut core, &posted);
        if let Cancel::All = what {
            let jobs: Vec<Job> = core.pending.drain(..).collect();
            core.pending_items = 0;
            for job in &jobs {
                count_failure(&mut core.stats, &TaskError::Cancelled, job.len());
                core.outstanding -= job.len();
                job.fail_all(&TaskError::Cancelled);
            }
            self.notify(&core);
        }
        drop(core);
        if killed {
            self.wake_dispatcher();
        }
    }

    /// Kills each worker of `posted` that runs an item it was told to
    /// skip; whether any. Read after the posts, and after the barrier that
    /// fences the workers' plain stores of `started` (`Recorder::begin`):
    /// either a worker sees the skip, or this sees the item started.
    fn kill_covered(&self, core: &mut Core, posted: &[(usize, Vec<Covered>)]) -> bool {
        self.fence_cancellations();
        let now = Instant::now();
        let mut killed = false;
        for (k, covered) in posted {
            let w = &mut core.workers[*k];
            if let Some((seq, index)) = w.running()
                && covered
                    .iter()
                    .any(|c| c.seq == seq && c.range.contains(&index))
            {
                w.apply(Event::Kill(Why::Cancel { seq, index }), now);
                killed = true;
            }
        }
        killed
    }

    /// The heavy half of the fence between a cancellation's post and its
    /// look at `started` (see `Recorder::begin`). Should the barrier fail
    /// (a seccomp filter installed since the pool began), the workers go
    /// back to fenced stores from their next item, and this cancellation's
    /// item that started unseen runs, its outcome discarded.
    fn fence_cancellations(&self) {
        let barrier = &self.region.layout::<worker::PoolHead>().barrier;
        if barrier.load(Ordering::Relaxed) == 1 && !sys::global_barrier() {
            barrier.store(0, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::SeqCst);
            trace::event!(
                warn,
                "membarrier failed: cancellations fall back to fenced stores"
            );
        }
    }

    /// The chunk size the last `imap` of function `func` settled on (1 if
    /// none ran).
    pub(super) fn chunk_hint(&self, func: i64) -> usize {
        let hints = poison::lock(&self.chunk_hints);
        hints.get(&func).copied().unwrap_or(1)
    }

    /// Remembers the chunk size an `imap` of `func` settled on.
    pub(super) fn set_chunk_hint(&self, func: i64, size: usize) {
        let mut hints = poison::lock(&self.chunk_hints);
        if hints.len() < 1024 || hints.contains_key(&func) {
            hints.insert(func, size);
        }
    }

    /// A shared byte array of at least `bytes` bytes, reused if one is free.
    pub(super) fn scratch(&self, bytes: usize) -> Result<crate::RawArray<u8>, Error> {
        let mut free = poison::lock(&self.scratch);
        let fitting = free
            .iter()
            .enumerate()
            .filter(|(_, a)| a.len() >= bytes)
            .min_by_key(|(_, a)| a.len())
            .map(|(i, _)| i);
        match fitting {
            Some(i) => Ok(free.swap_remove(i)),
            None => crate::RawArray::untouched(bytes.max(4096).next_power_of_two()),
        }
    }

    /// Keeps a scratch array for the next `map_pod` (at most four, of at
    /// most [`MAX_SCRATCH`] bytes each).
    pub(super) fn return_scratch(&self, array: crate::RawArray<u8>) {
        let mut free = poison::lock(&self.scratch);
        if array.len() <= MAX_SCRATCH {
            free.push(array);
            free.sort_by_key(|a| std::cmp::Reverse(a.len()));
            free.truncate(4);
        }
    }

    /// Sets how many workers the pool keeps; the dispatcher starts or
    /// retires workers to match.
    pub(super) fn resize(&self, n: usize) {
        self.lock().target = n;
        self.wake_dispatcher();
    }

    /// Stops accepting work.
    pub(super) fn close(&self) {
        let mut core = self.lock();
        self.stop_accepting(&mut core);
        if core.phase == Phase::Open {
            core.phase = Phase::Closed;
        }
        self.notify(&core);
    }

    /// Waits for all work, then stops the workers and the dispatcher;
    /// false if `deadline` came first (the pool stays closed).
    pub(super) fn join(&self, deadline: Option<Instant>) -> bool {
        let mut core = self.lock();
        self.stop_accepting(&mut core);
        if core.phase == Phase::Open {
            core.phase = Phase::Closed;
        }
        core = self.wait_until(core, deadline, |c| {
            c.outstanding == 0 || c.phase == Phase::Terminated
        });
        if core.outstanding > 0 && core.phase != Phase::Terminated {
            return false;
        }
        if core.phase == Phase::Closed {
            core.phase = Phase::Stopping;
        }
        self.wake_dispatcher();
        // Idle workers exit at once; a lingering one is killed within a
        // second or so by the stop sequence.
        drop(self.wait_until(core, None, |c| c.dispatcher_gone));
        true
    }

    /// Kills every worker and fails every unfinished item. An item a worker
    /// holds fails when that worker is buried, dead: until then it may still
    /// be running (and `map_pod` relies on no worker writing its results
    /// once its ranges have ended).
    pub(super) fn terminate(&self) {
        let mut core = self.lock();
        self.stop_accepting(&mut core);
        if core.phase != Phase::Terminated {
            core.phase = Phase::Terminated;
            let error = TaskError::PoolClosed;
            let Core {
                workers,
                pending,
                pending_items,
                stats,
                outstanding,
                ..
            } = &mut *core;
            let now = Instant::now();
            for w in workers.iter_mut() {
                w.apply(Event::Terminate, now);
            }
            for job in pending.drain(..) {
                count_failure(stats, &error, job.len());
                *outstanding -= job.len();
                job.fail_all(&error);
            }
            *pending_items = 0;
        }
        self.wake_dispatcher();
        let mut core = self.wait_until(core, None, |c| c.dispatcher_gone);
        self.bury_orphaned(&mut core);
    }

    /// After the dispatcher ended without burying its workers (it can only
    /// have panicked): kills each, waits for its death, and fails what it
    /// held.
    fn bury_orphaned(&self, core: &mut Core) {
        let Core {
            workers,
            stats,
            outstanding,
            ..
        } = core;
        for w in workers.drain(..) {
            let _ = w.child.kill();
            let _ = w.child.proc().wait(None);
            for batch in &w.inflight {
                fail_missing(batch, &TaskError::PoolClosed, stats, outstanding);
            }
        }
    }

    /// The dispatcher thread's body.
    pub(super) fn run_dispatcher(self: Arc<Shared>) {
        let mut dead: Vec<u64> = Vec::new();
        loop {
            let (socks, pidfds, ids, timeout) = {
                let mut core = self.lock();
                self.service(&mut core, &dead);
                if self.finished(&mut core) {
                    core.dispatcher_gone = true;
                    self.changed.notify_all();
                    return;
                }
                let wake = self.next_deadline(&mut core);
                core.dispatcher_wake = wake;
                let timeout = wake.map(|d| d.saturating_duration_since(Instant::now()));
                let mut socks = Vec::new();
                let mut pidfds = Vec::new();
                let mut ids = Vec::new();
                for w in &core.workers {
                    ids.push(w.id);
                    pidfds.push(w.pidfd.clone());
                    // Every live channel: a batch handed out by another
                    // thread after this poll starts must still wake us.
                    socks.push((!w.read_done).then(|| w.sock.clone()));
                }
                (socks, pidfds, ids, timeout)
            };
            let mut fds: Vec<BorrowedFd<'_>> = vec![self.wake.as_fd()];
            fds.extend(pidfds.iter().map(|p| p.as_fd()));
            fds.extend(socks.iter().flatten().map(|s| s.as_fd()));
            let ready = sys::poll_readable(&fds, timeout).unwrap_or_default();
            if ready.first() == Some(&true) {
                sys::eventfd_drain(self.wake.as_fd());
            }
            dead.clear();
            for (k, id) in ids.iter().enumerate() {
                if ready.get(1 + k) == Some(&true) {
                    dead.push(*id);
                }
            }
        }
    }

    /// One round of the dispatcher: results, deaths, timeouts, replacements,
    /// work.
    fn service(&self, core: &mut Core, dead: &[u64]) {
        core.idle_news = false;
        for i in 0..core.workers.len() {
            self.read_worker(core, i, true);
        }
        for id in dead {
            if let Some(i) = core.workers.iter().position(|w| w.id == *id) {
                self.bury(core, i);
            }
        }
        self.enforce_timeouts(core);
        self.retire_workers(core);
        self.replace_workers(core);
        self.dispatch(core);
        if core.phase == Phase::Stopping || core.phase == Phase::Terminated {
            self.stop_workers(core);
        }
        self.notify(core);
    }

    /// Whether the dispatcher's work is over.
    fn finished(&self, core: &mut Core) -> bool {
        matches!(core.phase, Phase::Stopping | Phase::Terminated) && core.workers.is_empty()
    }

    /// The earliest moment the dispatcher must look again without an event.
    fn next_deadline(&self, core: &mut Core) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(t) = core.retry_spawn {
            at(t);
        }
        let open = !matches!(core.phase, Phase::Stopping | Phase::Terminated);
        if !open && !core.workers.is_empty() {
            at(now + Duration::from_millis(50));
        }
        let pending_items = core.pending_items;
        for w in &mut core.workers {
            if let Some(t) = w.life.next_tick() {
                at(t);
            }
            if let Some(t) = w.send_after {
                at(t);
            }
            match self.worker_deadline(w, now) {
                Some((t, _)) => at(t),
                // An item without a limit runs (or is next) before timed
                // ones: look again within the shortest of their limits, since
                // nobody may tell the dispatcher when they start.
                None => {
                    let shortest = w.inflight.iter().filter_map(|b| b.shortest).min();
                    if let Some(t) = shortest.and_then(|limit| time::after(now, limit)) {
                        at(t);
                    }
                }
            }
            // As `retire_workers` retires idle workers: a deadline it
            // would not act on would wake the dispatcher again at once.
            if let Some(t) = self
                .config
                .idle_timeout
                .filter(|_| open && pending_items == 0 && matches!(w.life, Life::Ready))
                .zip(w.idle_since)
                .and_then(|(limit, since)| time::after(since, limit))
            {
                at(t);
            }
        }
        if self.config.recycle_memory.is_some() && core.outstanding > 0 {
            at(now + MEMORY_CHECK);
        }
        next
    }

    /// Kills workers past a deadline; escalates pending kills.
    fn enforce_timeouts(&self, core: &mut Core) {
        let now = Instant::now();
        for w in &mut core.workers {
            w.apply(Event::Tick, now);
            if w.send_after.is_some_and(|t| now >= t) {
                w.send_after = None;
                if std::mem::take(&mut w.owes_wake) {
                    wake_if_asleep(w);
                }
            }
            if let Some((t, why)) = self.worker_deadline(w, now)
                && now >= t
            {
                w.apply(Event::Kill(why), now);
            }
        }
    }

    /// When worker `w` must be killed if nothing changes, and why: its
    /// initializer's limit, its running item's limit, or, holding a timed
    /// batch and starting nothing, the limit of the item it should start
    /// next (a worker stopped with SIGSTOP is found this way). Every sum
    /// saturates: a limit of `Duration::MAX` means never.
    fn worker_deadline(&self, w: &mut Worker, now: Instant) -> Option<(Instant, Why)> {
        if w.life.being_killed() {
            return None;
        }
        let default = self.config.task_timeout;
        if !w.said_ready()
            && let Some(timeout) = default.filter(|_| self.config.init.is_some())
        {
            return Some((time::after(w.spawned, timeout)?, Why::Init));
        }
        let (seq, started, finished) = (
            w.head().seq.load(Ordering::Acquire),
            w.head().started.load(Ordering::Acquire) as usize,
            w.head().finished.load(Ordering::Acquire) as usize,
        );
        // The batch the worker is on is the one its head names. Batches
        // before it have ended unread (a helping thread read their outcomes
        // from the ring, and the worker told nobody); one it has finished
        // leaves the next to start. A worker not ready yet names none: it
        // starts at the front (its READY may be read by a helping thread,
        // not by the dispatcher, which must not sleep without a deadline).
        let (k, index) = match w.inflight.iter().position(|b| b.seq == seq) {
            Some(k) if started > finished => {
                let batch = w.inflight[k].shortest.and(Some(&w.inflight[k]))?;
                let index = started - 1;
                let timeout = batch.timeout(index, default)?;
                let start_ns = w.head().start_ns.load(Ordering::Acquire);
                let left_ns = time::ns_after(start_ns, timeout).saturating_sub(now_ns());
                let deadline = now.checked_add(Duration::from_nanos(left_ns))?;
                return Some((deadline, Why::Timeout { seq, index }));
            }
            Some(k) if finished < w.inflight[k].got.len() => (k, finished),
            Some(k) => (k + 1, 0),
            None => (0, 0),
        };
        let timeout = (w.inflight.get(k))
            .filter(|b| b.shortest.is_some() && index < b.got.len())?
            .timeout(index, default)?;
        let since = w.observe_progress(now);
        Some((time::after(since, timeout)?, Why::Stalled))
    }

    /// Handles the death of worker `i`: keeps finished results, fails the
    /// item that was running, requeues the rest, counts.
    fn bury(&self, core: &mut Core, i: usize) {
        // Whatever it wrote before dying is still in the socket or its
        // ring, READY included: read it whatever the worker's state. Then
        // the pack it left open, whose values are outcomes all the same.
        self.read_worker(core, i, true);
        self.read_staged_pack(core, i);
        let mut w = core.workers.remove(i);
        let death = Death::of(&w);
        let failed_item = self.settle_running(core, &mut w, &death);
        self.requeue_unfinished(core, &mut w);
        let stopping =
            matches!(core.phase, Phase::Stopping | Phase::Terminated) || core.broken.is_some();
        let retiring = matches!(w.life.why(), Some(Why::Retire(_)));
        let retired = death == Death::Exited(ExitStatus::Code(0))
            && (w.tasks_left == Some(0) || retiring)
            && !failed_item;
        if retired {
            core.stats.workers_retired += 1;
        } else if !stopping {
            core.stats.workers_replaced += 1;
        }
        death.report(&w, !retired && !stopping);
        if !w.said_ready() && !stopping {
            self.died_starting(core, &w, &death);
        }
        self.notify(core);
    }

    /// Delivers the values of the pack dead worker `i` left open (see
    /// `worker::staged_pack`), if it belongs to a batch it holds.
    fn read_staged_pack(&self, core: &mut Core, i: usize) {
        let w = &core.workers[i];
        let Some((seq, pack)) = worker::staged_pack(&w.region) else {
            return;
        };
        if w.inflight.iter().any(|b| b.seq == seq) {
            self.take_entries(core, i, &pack);
        }
    }

    /// Delivers what dead worker `w` finished of its front batch and fails
    /// the item it was running, if its death was that item's doing. Returns
    /// whether an item failed.
    fn settle_running(&self, core: &mut Core, w: &mut Worker, death: &Death) -> bool {
        let Core {
            stats, outstanding, ..
        } = core;
        let Some(front) = w.inflight.front_mut() else {
            return false;
        };
        let seq = worker::head(&w.region).seq.load(Ordering::Acquire);
        if seq != front.seq {
            return false;
        }
        let started = worker::head(&w.region).started.load(Ordering::Acquire) as usize;
        let finished = worker::head(&w.region).finished.load(Ordering::Acquire) as usize;
        if started <= finished || started > front.got.len() || front.got[started - 1] {
            return false;
        }
        let index = started - 1;
        let out_of_memory = worker::head(&w.region)
            .out_of_memory
            .load(Ordering::Acquire)
            == 1;
        let error = match w.life.why() {
            Some(Why::Timeout { seq: s, index: x }) if (s, x) == (seq, index) => {
                Some(TaskError::TimedOut(
                    front
                        .timeout(index, self.config.task_timeout)
                        .unwrap_or_default(),
                ))
            }
            Some(Why::Cancel { seq: s, index: x }) if (s, x) == (seq, index) => {
                Some(TaskError::Cancelled)
            }
            Some(Why::Stop | Why::Terminate) => Some(TaskError::PoolClosed),
            // Killed by the pool for another reason (another item's limit
            // that finished meanwhile, a stall, a torn channel): this item
            // is a bystander and runs again.
            Some(why) if why.is_kill() => None,
            _ if out_of_memory => Some(TaskError::MemoryExceeded(
                self.config.memory_limit.unwrap_or_default(),
            )),
            _ => Some(match death {
                Death::Exited(status) => TaskError::WorkerLost(*status),
                Death::Lost(why) => TaskError::Lost(why.clone()),
            }),
        };
        let Some(error) = error else {
            return false;
        };
        trace::event!(warn, pid = w.child.pid(), error = %error, "task failed with its worker");
        let (j, p) = front.locate(index);
        front.got[index] = true;
        front.remaining -= 1;
        *outstanding -= 1;
        count_failure(stats, &error, 1);
        let job = &front.jobs[j];
        job.sink.deliver(&mut std::iter::once((
            job.index(p),
            Raw::Failed(Box::new(error)),
        )));
        true
    }

    /// Everything else dead worker `w` held runs elsewhere, first in line
    /// (or fails, if the pool runs nothing more).
    fn requeue_unfinished(&self, core: &mut Core, w: &mut Worker) {
        let mut requeue = Vec::new();
        for mut batch in w.inflight.drain(..) {
            for (j, job) in batch.jobs.iter_mut().enumerate() {
                let start = batch.starts[j];
                let missing: Vec<usize> =
                    (0..job.len()).filter(|&p| !batch.got[start + p]).collect();
                if !missing.is_empty() {
                    requeue.push(job.subset(&missing));
                }
            }
        }
        let refusal = match (&core.broken, core.phase) {
            (Some(error), _) => Some(error.clone()),
            (None, Phase::Terminated) => Some(TaskError::PoolClosed),
            _ => None,
        };
        if let Some(error) = refusal {
            for job in &requeue {
                count_failure(&mut core.stats, &error, job.len());
                core.outstanding -= job.len();
                job.fail_all(&error);
            }
        } else {
            for job in requeue.into_iter().rev() {
                core.pending_items += job.len();
                core.pending.push_front(job);
            }
        }
    }

    /// A worker died before it was ready. Its initializer's own report or
    /// time limit breaks the pool at once (handled where they are seen);
    /// other deaths break it only when every start fails, many times in a
    /// row, and the initializer is named only if the pool has one.
    fn died_starting(&self, core: &mut Core, w: &Worker, death: &Death) {
        if w.life.why() == Some(Why::Init) {
            let timeout = self.config.task_timeout.unwrap_or_default();
            let why = format!("it ran past the task timeout of {timeout:?}");
            return self.break_pool(core, TaskError::InitializerFailed(why));
        }
        if w.life.being_killed() {
            // The pool ended it (a torn channel, say): not a start-up failure.
            return;
        }
        core.early_deaths += 1;
        let limit = 3 * core.target.max(1);
        if (core.early_deaths as usize) < limit {
            return;
        }
        let n = core.early_deaths;
        let error = if self.config.init.is_some() {
            TaskError::InitializerFailed(format!(
                "{n} workers in a row died while running it (the last: {death})"
            ))
        } else {
            TaskError::PoolBroken(format!(
                "{n} workers in a row died before they were ready (the last: {death})"
            ))
        };
        self.break_pool(core, error);
    }

    /// Retires workers between tasks: beyond the pool's size (idle ones
    /// first), idle past the idle timeout, or grown past the memory
    /// threshold; lets those that are done with their work go.
    fn retire_workers(&self, core: &mut Core) {
        if matches!(core.phase, Phase::Stopping | Phase::Terminated) {
            return;
        }
        let now = Instant::now();
        let mut extra = core
            .workers
            .iter()
            .filter(|w| w.life.takes_work())
            .count()
            .saturating_sub(core.target);
        let idle_limit = self.config.idle_timeout.filter(|_| core.pending_items == 0);
        // Idle workers go first when shrinking (sorted: idle ones first).
        let mut order: Vec<usize> = (0..core.workers.len()).collect();
        order.sort_by_key(|&i| core.workers[i].inflight.len());
        for i in order {
            let w = &mut core.workers[i];
            if !matches!(w.life, Life::Ready) {
                continue;
            }
            let why = if extra > 0 {
                extra -= 1;
                Some(Retire::Shrink)
            } else if idle_limit
                .zip(w.idle_since)
                .is_some_and(|(limit, since)| time::after(since, limit).is_some_and(|t| now >= t))
            {
                Some(Retire::Idle)
            } else {
                self.memory_grown(w, now).then_some(Retire::Memory)
            };
            if let Some(why) = why {
                w.apply(Event::Retire(why), now);
            }
        }
        for w in &mut core.workers {
            if w.inflight.is_empty() {
                w.apply(Event::Drained, now);
            }
        }
    }

    /// Whether worker `w` has grown past `recycle_memory` (read at most
    /// every [`MEMORY_CHECK`]).
    fn memory_grown(&self, w: &mut Worker, now: Instant) -> bool {
        let Some(limit) = self.config.recycle_memory else {
            return false;
        };
        if now < w.next_memory_check {
            return false;
        }
        w.next_memory_check = now + MEMORY_CHECK;
        sys::resident_bytes(w.child.pid()).is_some_and(|rss| rss > limit)
    }

    /// Starts workers until there are as many as the pool's size, when they
    /// have work to do (with an idle timeout: only while work waits).
    fn replace_workers(&self, core: &mut Core) {
        let wanted = match core.phase {
            Phase::Open | Phase::Closed if self.config.idle_timeout.is_some() => {
                if core.pending_items == 0 {
                    return;
                }
                core.target
            }
            Phase::Open => core.target,
            Phase::Closed if core.outstanding > 0 => core.target,
            _ => return,
        };
        if core.broken.is_some() {
            return;
        }
        if core.retry_spawn.is_some_and(|t| Instant::now() < t) {
            return;
        }
        core.retry_spawn = None;
        while core.workers.len() < wanted {
            match self.spawn_worker(core) {
                Ok(w) => core.workers.push(w),
                Err(_) if !core.spare_fds.is_empty() => {
                    // Perhaps out of descriptors: those were kept for this.
                    core.spare_fds.clear();
                }
                Err(_) => {
                    // Out of processes or memory for now: try again shortly.
                    core.retry_spawn = Some(Instant::now() + Duration::from_millis(100));
                    return;
                }
            }
        }
        self.keep_spare_fds(core);
    }

    /// Holds [`SPARE_FDS`] descriptors (as far as there are free ones) that
    /// a worker's replacement may use when the program has run out: tasks
    /// waiting in the queue hold descriptors of their handles, and without
    /// a worker to run them none would ever be freed.
    fn keep_spare_fds(&self, core: &mut Core) {
        while core.spare_fds.len() < SPARE_FDS {
            match self.wake.try_clone() {
                Ok(fd) => core.spare_fds.push(fd),
                Err(_) => break,
            }
        }
    }

    /// Closing: lets idle workers exit (closing their channel), kills those
    /// that linger; terminating: they were killed already. Buries the dead.
    fn stop_workers(&self, core: &mut Core) {
        let now = Instant::now();
        let event = if core.phase == Phase::Terminated {
            Event::Terminate
        } else {
            Event::Stop
        };
        for w in &mut core.workers {
            w.apply(event, now);
            w.apply(Event::Tick, now);
        }
        let mut i = 0;
        while i < core.workers.len() {
            if core.workers[i].child.is_alive() {
                i += 1;
            } else {
                // What it held ends now, with what it finished delivered.
                self.bury(core, i);
            }
        }
    }

    /// Each live worker's pid and counts.
    pub(super) fn worker_stats(&self) -> Vec<WorkerStats> {
        let core = self.lock();
        core.workers
            .iter()
            .map(|w| WorkerStats {
                pid: w.child.pid(),
                completed: w.completed,
                failed: w.failed,
                busy: !w.inflight.is_empty(),
                ready: matches!(w.life, Life::Ready),
            })
            .collect()
    }

    pub(super) fn stats(&self) -> PoolStats {
        let core = self.lock();
        PoolStats {
            workers: core.workers.len(),
            queued: core.pending_items,
            ..core.stats
        }
    }
}

/// How long a burial waits at most for the fork server's report that it
/// reaped the worker (see [`Death::of`]): long enough for a server behind a
/// queue of starts on a loaded machine (a crash past it is reported lost,
/// without its status), short enough that a stopped server delays a join
/// by seconds, not minutes.
const REAP_REPORT_WAIT: Duration = Duration::from_secs(2);

/// How a worker's process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Death {
    Exited(ExitStatus),
    /// Its status is unknown (the fork server that reaped it died).
    Lost(String),
}

impl Death {
    /// How dead worker `w` ended, once it has been reaped: here if it is a
    /// child of this process; otherwise by the fork server, which kills its
    /// group, reaps it and only then reports its status. Waiting for that
    /// report makes a buried worker gone, with no `/proc` entry (`join` and
    /// `terminate` promise the workers are gone), rather than a zombie the
    /// server is in the middle of reaping.
    fn of(w: &Worker) -> Death {
        // The report comes within microseconds; a server stopped (SIGSTOP)
        // delays each burial by the bound, after which the worker is left
        // to it as a zombie.
        let report_by = crate::time::deadline(REAP_REPORT_WAIT);
        let outcome = w.child.join_in_place(report_by);
        match (outcome, w.child.exit_status_by(report_by)) {
            (_, Some(status)) => Death::Exited(status),
            // Its status is lost (the kernel reaped it with `SIGCHLD`
            // ignored, or the server died): its result speaks.
            (Ok(()), None) => Death::Exited(ExitStatus::Code(0)),
            (Err(e), None) => Death::Lost(e.to_string()),
        }
    }

    /// Tells the trace that worker `w` ended this way.
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    fn report(&self, w: &Worker, replaced: bool) {
        trace::event!(
            info,
            pid = w.child.pid(),
            death = %self,
            why = ?w.life.why(),
            replaced = replaced,
            "worker ended"
        );
    }
}

impl std::fmt::Display for Death {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Death::Exited(status) => write!(f, "{status}"),
            Death::Lost(why) => write!(f, "lost: {why}"),
        }
    }
}

/// Why a batch could not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendFailure {
    /// Nothing left, for want of kernel memory or descriptor room: the
    /// worker is fine; try again shortly.
    NotNow,
    /// Nothing left: the worker's end is closed (it is exiting).
    Closed,
    /// Part of the frame left before the failure: the stream is torn.
    Broken,
}

impl SendFailure {
    fn of(failed: &wire::SendFailed) -> SendFailure {
        use rustix::io::Errno;
        if failed.partial {
            return SendFailure::Broken;
        }
        match failed.error.raw_os_error().map(Errno::from_raw_os_error) {
            Some(Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN) => SendFailure::Closed,
            Some(
                Errno::NOBUFS | Errno::NOMEM | Errno::TOOMANYREFS | Errno::MFILE | Errno::NFILE,
            ) => SendFailure::NotNow,
            _ => SendFailure::Broken,
        }
    }
}

/// Sends a batch to `w`; on failure hands the jobs back, with what the
/// failure says of the worker.
fn send_batch(
    w: &mut Worker,
    seq: u64,
    jobs: Vec<Job>,
    default_timeout: Option<Duration>,
) -> Result<(), (Vec<Job>, SendFailure)> {
    let shortest = jobs
        .iter()
        .filter_map(|j| j.timeout().or(default_timeout))
        .min();
    let timed = shortest.is_some();
    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    let mut starts = Vec::with_capacity(jobs.len());
    let mut total = 0;
    let mut bytes = 64;
    for job in &jobs {
        starts.push(total);
        total += job.len();
        bytes += job.args.len() + 8 * job.len() + 32;
        fds.extend(job.fds().iter().flatten().map(|fd| fd.as_fd()));
    }
    let wire = WireJobs::of(&jobs);
    let msg = BatchMsg {
        seq,
        timed,
        jobs: wire.messages(&jobs),
    };
    // A skip table no batch it holds has: the worker ended that batch (it
    // holds fewer than `MAX_INFLIGHT`). Given before the hand-off, which
    // publishes it to the worker.
    let skips = (0..worker::SKIP_TABLES)
        .find(|&t| w.inflight.iter().all(|b| b.skips != t))
        .expect("a worker with room has a free skip table");
    w.head().skips[skips].assign(seq);
    debug_assert!(
        fds.len() <= sys::MAX_FDS_PER_MESSAGE,
        "take_batch splits by descriptors"
    );
    let sent = encode_and_hand(w, &msg, &fds, bytes);
    drop(msg);
    drop(fds);
    if let Err(failure) = sent {
        return Err((jobs, failure));
    }
    w.took(InFlight {
        seq,
        got: vec![false; total],
        remaining: total,
        jobs,
        starts,
        shortest,
        ended: false,
        skips,
    });
    Ok(())
}

/// Encodes a batch (about `bytes` long) and hands it to its worker.
fn encode_and_hand(
    w: &mut Worker,
    msg: &BatchMsg<'_>,
    fds: &[BorrowedFd<'_>],
    bytes: usize,
) -> Result<(), SendFailure> {
    // The frame buffer is the worker's, kept from batch to batch while it
    // stays ring-sized: a fresh one for every batch costs the allocator a
    // large-chunk search.
    let mut framed = std::mem::take(&mut w.frame_copy);
    framed.clear();
    framed.reserve(bytes + 4);
    framed.extend_from_slice(&[0; 4]);
    match postcard::to_extend(msg, framed) {
        Ok(mut framed) => {
            let sent = hand_batch(w, &mut framed, fds);
            if framed.capacity() <= worker::TASK_MAX {
                w.frame_copy = framed;
            }
            sent
        }
        // Only byte slices and integers: encoding cannot fail.
        Err(_) => Err(SendFailure::Broken),
    }
}

/// A batch's jobs as its worker reads them: each run of small jobs that
/// share a function and carry no descriptors (single tasks submitted one by
/// one) goes as one job, since the worker numbers items across the whole
/// batch and only the pool tells their sinks apart. Every table (argument ends,
/// descriptor counts) lies back to back in one buffer, and the arguments
/// of merged runs in another: a few allocations a batch, not two a job.
struct WireJobs {
    tables: Vec<u8>,
    args: Vec<u8>,
    runs: Vec<WireRun>,
}

/// Jobs with more argument bytes than this go on the wire alone: copying
/// them to merge would cost more than the message a job costs (about 50 ns
/// to encode, decode and dispatch in the worker).
const MERGE_ARGS_MAX: usize = 1024;

/// One job on the wire: jobs `first..first + count` of the batch.
struct WireRun {
    first: usize,
    count: usize,
    /// Where its argument ends and its descriptor counts end in `tables`.
    ends_end: usize,
    counts_end: usize,
    /// Its arguments in `args` if merged (else the one job's own).
    args: Range<usize>,
}

impl WireJobs {
    fn of(jobs: &[Job]) -> WireJobs {
        let mut wire = WireJobs {
            tables: Vec::with_capacity(jobs.iter().map(|j| 4 * j.len()).sum()),
            args: Vec::new(),
            runs: Vec::new(),
        };
        for (i, job) in jobs.iter().enumerate() {
            let joins = wire.runs.last().is_some_and(|run| {
                let first = &jobs[run.first];
                (first.entry, first.func) == (job.entry, job.func)
                    && [first, job]
                        .iter()
                        .all(|j| j.fds().is_empty() && j.args.len() <= MERGE_ARGS_MAX)
            });
            if !joins {
                wire.tables.extend(job.ends().flat_map(|e| e.to_le_bytes()));
                let ends_end = wire.tables.len();
                let counts = job.fds().iter().map(|f| f.len() as u32);
                wire.tables.extend(counts.flat_map(u32::to_le_bytes));
                let (counts_end, at) = (wire.tables.len(), wire.args.len());
                wire.runs.push(WireRun {
                    first: i,
                    count: 1,
                    ends_end,
                    counts_end,
                    args: at..at,
                });
                continue;
            }
            let run = wire.runs.last_mut().expect("a run");
            if run.count == 1 {
                Out::append(&mut wire.args, &jobs[run.first].args);
            }
            let offset = (wire.args.len() - run.args.start) as u32;
            // Usually a single task's few bytes: appended without `memcpy`.
            Out::append(&mut wire.args, &job.args);
            let ends = job.ends().map(|e| e + offset);
            wire.tables.extend(ends.flat_map(u32::to_le_bytes));
            run.count += 1;
            run.ends_end = wire.tables.len();
            run.counts_end = wire.tables.len();
            run.args.end = wire.args.len();
        }
        wire
    }

    fn messages<'a>(&'a self, jobs: &'a [Job]) -> Vec<JobMsg<'a>> {
        let mut from = 0;
        let mut messages = Vec::with_capacity(self.runs.len());
        for run in &self.runs {
            let job = &jobs[run.first];
            messages.push(JobMsg {
                entry: job.entry,
                func: job.func,
                ends: &self.tables[from..run.ends_end],
                fds: &self.tables[run.ends_end..run.counts_end],
                args: if run.count == 1 {
                    &job.args
                } else {
                    &self.args[run.args.clone()]
                },
            });
            from = run.counts_end;
        }
        messages
    }
}

/// Hands an encoded batch (after 4 bytes left for its length) to `w`: by
/// its task ring if it can, else by its socket with a marker in the ring;
/// then wakes it if it sleeps. On failure nothing reached the worker.
fn hand_batch(
    w: &mut Worker,
    framed: &mut [u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), SendFailure> {
    // The worker holds at most `MAX_INFLIGHT` batches, each at most
    // `TASK_MAX` in the ring: there is always room (checked all the same).
    if fds.is_empty() && framed.len() <= worker::TASK_MAX {
        let len = (framed.len() - 4) as u32;
        framed[..4].copy_from_slice(&len.to_le_bytes());
        if !ring::Writer::new(worker::task_ring(&w.region)).push(framed, 0) {
            return Err(SendFailure::NotNow);
        }
    } else {
        if !ring::Writer::new(worker::task_ring(&w.region)).has_room(4) {
            return Err(SendFailure::NotNow);
        }
        send_frame_reading(w, &framed[4..], fds).map_err(|f| SendFailure::of(&f))?;
        ring::Writer::new(worker::task_ring(&w.region)).push(&[0; 4], 0);
    }
    // Where the thread that hands it out runs: a hint for the worker's
    // watch (`WorkerHead::handed_on`).
    w.head()
        .handed_on
        .store(crate::spin::cpu_mark(), Ordering::Relaxed);
    wake_if_asleep(w);
    Ok(())
}

/// Wakes `w` with a bare frame if it sleeps for want of a batch (one was
/// just published). A wake-up that cannot be sent for want of kernel
/// resources is owed, and sent again by the dispatcher.
fn wake_if_asleep(w: &mut Worker) {
    if !ring::must_wake(&w.region, &w.head().asleep) {
        return;
    }
    let Err(failed) = send_frame_reading(w, &[], &[]) else {
        return;
    };
    let now = Instant::now();
    match SendFailure::of(&failed) {
        SendFailure::NotNow => {
            w.head().asleep.store(1, Ordering::SeqCst);
            w.owes_wake = true;
            w.send_after = Some(now + SEND_RETRY);
        }
        SendFailure::Closed => w.apply(Event::SendClosed, now),
        SendFailure::Broken => w.apply(Event::SendBroken, now),
    }
}

/// Takes the frames of `w` read so far and what its socket holds now (read
/// only if `socket`, or if it sent frames not read yet); and whether the
/// socket reached its end.
fn take_frames(w: &mut Worker, socket: bool) -> (Vec<Vec<u8>>, bool) {
    let mut frames = std::mem::take(&mut w.backlog);
    let unread = w.head().frames_sent.load(Ordering::Acquire) != w.frames_read;
    let mut eof = false;
    while (socket || unread) && !w.read_done {
        match w.reader.read_from(w.sock.as_fd()) {
            Ok(Progress::Frame(frame)) => {
                w.frames_read += 1;
                frames.push(frame);
            }
            Ok(Progress::Pending) => break,
            Ok(Progress::Eof) | Err(_) => {
                w.read_done = true;
                eof = true;
            }
        }
    }
    (frames, eof)
}

/// Writes a frame to the worker; while the socket is full, reads what the
/// worker sends (into its backlog) so that neither side can block the other.
fn send_frame_reading(
    w: &mut Worker,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), wire::SendFailed> {
    let (header, n) = wire::encode_header(payload.len() as u64);
    let sock = w.sock.as_fd();
    let (reader, backlog, read_done) = (&mut w.reader, &mut w.backlog, &mut w.read_done);
    let frames_read = &mut w.frames_read;
    wire::send_all_with(sock, &[&header[..n], payload], fds, || {
        let (readable, _) = sys::poll_in_out(sock)?;
        while readable && !*read_done {
            match reader.read_from(sock) {
                Ok(Progress::Frame(frame)) => {
                    *frames_read += 1;
                    backlog.push(frame);
                }
                Ok(Progress::Pending) => return Ok(()),
                Ok(Progress::Eof) | Err(_) => *read_done = true,
            }
        }
        if *read_done {
            // It closed its end: it will never read the rest.
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        Ok(())
    })
}

/// Hands the entries of `batch` at the front of `entries` (up to its end
/// or another batch's entry) to their jobs' sinks, each job's run in one
/// call, straight from the ring's bytes.
fn deliver_records(
    batch: &mut InFlight,
    entries: &mut results::Entries<'_>,
    stats: &mut PoolStats,
    outstanding: &mut usize,
) {
    let (seq, items) = (batch.seq, batch.got.len());
    // The next run is most often the next job's (a batch of single tasks):
    // looked at before a search.
    let mut next_job = 0;
    // A pack's values not handed yet: a pack may hold the items of several
    // jobs (those the batch sent as one).
    let mut pack: Option<Pack<'_>> = None;
    loop {
        let index = match &pack {
            Some(p) => p.index,
            None => {
                let Some(first) = entries.peek() else { return };
                if first.seq != seq || first.tag == results::TAG_DONE {
                    return;
                }
                if first.index as usize >= items {
                    entries.pass(&first);
                    continue;
                }
                first.index as usize
            }
        };
        if index >= items {
            pack = None; // values past the batch's items: not ours
            continue;
        }
        let job_end = |j: usize| batch.starts.get(j + 1).copied().unwrap_or(items);
        let j = if next_job < batch.jobs.len()
            && (batch.starts[next_job]..job_end(next_job)).contains(&index)
        {
            next_job
        } else {
            batch.starts.partition_point(|&s| s <= index) - 1
        };
        next_job = j + 1;
        let items_of_job = batch.starts[j]..job_end(j);
        if let Some(p) = pack.take() {
            pack = deliver_pack(batch, j, items_of_job, p, stats, outstanding);
            continue;
        }
        let mut run = Run {
            entries: &mut *entries,
            pack: &mut pack,
            seq,
            items: items_of_job,
            job: &batch.jobs[j],
            got: &mut batch.got,
            remaining: &mut batch.remaining,
            outstanding: &mut *outstanding,
            stats: &mut *stats,
            last: None,
        };
        deliver_guarded(&*run.job.sink, &mut run, |run| run.last);
        // A sink takes every outcome it is offered; this only guards the
        // bookkeeping against one that stops early.
        run.for_each(drop);
    }
}

/// Hands job `j`'s values in `pack` (its items are the batch's `items`) to
/// its sink in one call; returns what is left of the pack (the next job's
/// values), if anything.
fn deliver_pack<'b>(
    batch: &mut InFlight,
    j: usize,
    items: Range<usize>,
    pack: Pack<'b>,
    stats: &mut PoolStats,
    outstanding: &mut usize,
) -> Option<Pack<'b>> {
    let job = &batch.jobs[j];
    let got = &mut batch.got[items.clone()];
    let mut values = job::Values::new(job, pack.index - items.start, pack.body, got);
    job::deliver_values_guarded(&*job.sink, &mut values);
    // A sink stops early only when cancelled: the rest still count.
    values.finish();
    let taken = values.taken();
    stats.completed += taken as u64;
    batch.remaining -= taken;
    *outstanding -= taken;
    let (pos, body) = values.rest()?;
    Some(Pack {
        index: items.start + pos,
        body,
    })
}

/// The outcomes of one job's run of entries other than packs, as its sink
/// takes them: each counted once, duplicates (an item already ended)
/// passed over. A pack ends the run, and is left in `pack`.
struct Run<'e, 'b> {
    entries: &'e mut results::Entries<'b>,
    /// Where a pack met is left, for [`deliver_pack`].
    pack: &'e mut Option<Pack<'b>>,
    seq: u64,
    /// The job's positions in its batch.
    items: Range<usize>,
    job: &'e Job,
    got: &'e mut [bool],
    remaining: &'e mut usize,
    outstanding: &'e mut usize,
    stats: &'e mut PoolStats,
    /// The number of the outcome it gave last.
    last: Option<u32>,
}

/// The values of a pack entry not handed out yet: the next one is item
/// `index`'s.
struct Pack<'b> {
    index: usize,
    body: &'b [u8],
}

impl<'b> Iterator for Run<'_, 'b> {
    type Item = (u32, Raw<'b>);

    #[inline]
    fn next(&mut self) -> Option<(u32, Raw<'b>)> {
        loop {
            if self.pack.is_some() {
                return None;
            }
            let (seq, items) = (self.seq, &self.items);
            let r = self.entries.next_if(|r| {
                r.seq == seq && r.tag != results::TAG_DONE && items.contains(&(r.index as usize))
            })?;
            if r.tag == results::TAG_PACK {
                *self.pack = Some(Pack {
                    index: r.index as usize,
                    body: r.body,
                });
                return None;
            }
            if let Some(outcome) = self.take(r.index as usize, r.tag, r.body) {
                return Some(outcome);
            }
        }
    }
}

impl<'b> Run<'_, 'b> {
    /// Counts item `index`'s outcome, of `tag` and `body`, and gives it;
    /// `None` if the item has one already.
    #[inline]
    fn take(&mut self, index: usize, tag: u8, body: &'b [u8]) -> Option<(u32, Raw<'b>)> {
        if std::mem::replace(&mut self.got[index], true) {
            return None;
        }
        *self.remaining -= 1;
        *self.outstanding -= 1;
        let raw = match tag {
            results::TAG_VALUE => {
                self.stats.completed += 1;
                Raw::Value(body)
            }
            results::TAG_PANIC => {
                self.stats.failed += 1;
                Raw::Panic(body)
            }
            results::TAG_CANCELLED => {
                count_failure(self.stats, &TaskError::Cancelled, 1);
                Raw::Failed(Box::new(TaskError::Cancelled))
            }
            _ => {
                self.stats.failed += 1;
                Raw::Codec(body)
            }
        };
        let number = self.job.index(index - self.items.start);
        self.last = Some(number);
        Some((number, raw))
    }
}

/// Fails the items of `batch` that have no outcome.
fn fail_missing(
    batch: &InFlight,
    error: &TaskError,
    stats: &mut PoolStats,
    outstanding: &mut usize,
) {
    for (j, job) in batch.jobs.iter().enumerate() {
        let start = batch.starts[j];
        let mut it = (0..job.len())
            .filter(|&p| !batch.got[start + p])
            .map(|p| (job.index(p), Raw::Failed(Box::new(error.clone()))));
        let mut n = 0;
        job.sink.deliver(&mut it.by_ref().inspect(|_| n += 1));
        count_failure(stats, error, n);
        *outstanding -= n;
    }
}

pub(crate) fn count_failure(stats: &mut PoolStats, error: &TaskError, n: usize) {
    let n = n as u64;
    stats.failed += n;
    match error {
        TaskError::TimedOut(_) => stats.timed_out += n,
        TaskError::Cancelled => stats.cancelled += n,
        TaskError::WorkerLost(_) | TaskError::MemoryExceeded(_) => stats.lost += n,
        _ => {}
    }
}

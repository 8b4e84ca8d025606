//! The worker process: runs batches of items and reports every outcome.
//!
//! # Protocol
//!
//! The supervisor sends a *batch* per frame ([`BatchMsg`]): a sequence
//! number and items, each an entry point, a function, an encoded argument and
//! a count of descriptors (the frame's `SCM_RIGHTS`, in item order).
//!
//! The worker publishes each outcome as an entry of the results ring in its
//! shared region (see [`results`]), and a batch's end as a last entry: no
//! system call. An entry too large for the ring, or one that finds it full,
//! goes by the socket instead, in a [`SEQ_RESULTS`] frame. At a batch's end,
//! and when outcomes have waited [`FLUSH_NS`], the worker announces them with
//! a bare [`SEQ_WAKE`] frame, unless a thread of the supervisor is watching
//! the rings at that moment ([`PoolHead::watching`]): then nothing is sent,
//! and the watcher reads them (the last one to leave reads once more). A
//! waiting thread that has watched long enough sleeps on the pool's bell (a
//! futex in the pool's region, [`PoolHead::bell`]) while it still counts as
//! watching: the worker then rings the bell, and the sleeper reads the
//! outcomes itself. The wait then costs one wake-up, not two (the
//! dispatcher thread's, then the waiting thread's).
//!
//! # What survives a crash
//!
//! Before an item runs, the worker publishes the batch sequence, how many
//! items it has started and when the current one started. An entry is
//! visible only once whole, so when a worker dies, whatever killed it, the
//! supervisor reads its ring like any other time: finished items keep their
//! results, the item that was running is the one that failed, and unstarted
//! items run elsewhere.
//!
//! A `map`'s values are gathered in *packs* (one entry for up to
//! [`PACK_ITEMS`] values, see [`results::TAG_PACK`]) before they are
//! published. Each value of the open pack is also copied, as it is added,
//! into the region's pack area, whose length the worker stores after the
//! copy; the supervisor reads that area when it buries the worker, so that
//! a value is never lost, nor its item run again, once the item has
//! finished.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::results::{self, TAG_CANCELLED, TAG_CODEC, TAG_DONE, TAG_PANIC, TAG_VALUE};
use super::ring::{self, RingAt};
use crate::poison;
use crate::start::bootstrap;
use crate::start::orphans::TREE_ENV;
use crate::sys::code::{Verified, code_pointer};
use crate::sys::{self, SharedRegion};
use crate::{Connection, Data, wire};

sys::shared_layout! {
    /// The head of a pool worker's shared region: the progress the worker
    /// publishes and the supervisor reads (also after the worker died), the
    /// positions of its results ring, and the skip tables the supervisor
    /// writes. The ring's bytes follow.
    ///
    /// Its words are grouped by who writes them and how often, each group
    /// on its own 128 bytes (a cache line and the one the CPU fetches with
    /// it): a word written at every item beside one the other side polls
    /// or writes moves the line between the CPUs at every item. Sharing one
    /// line, the worker's `started` store waited for the line a watching
    /// supervisor had just read `tail` from (and written `head` to): 12 ns
    /// of a `map` item's 88 (`bench/README.md`).
    pub(super) struct WorkerHead {
        // The worker's progress: written at each item, read by the
        // supervisor now and then (a tick, a cancellation, a death).
        /// Sequence number of the batch being run (0: none yet;
        /// [`SEQ_INIT_FAILED`] while the initializer runs).
        pub(super) seq: AtomicU64,
        /// How many items of that batch have started.
        pub(super) started: AtomicU64,
        /// When the current item started ([`sys::monotonic_ns`]).
        pub(super) start_ns: AtomicU64,
        /// How many items of the batch have finished (their entry written).
        pub(super) finished: AtomicU64,
        /// 1 once an allocation failure aborted the worker.
        pub(super) out_of_memory: AtomicU64,
        /// The open pack (see [`Recorder::pack_value`]), read only once
        /// the worker is dead: its batch, its first item, and the bytes of
        /// its values in the pack area (0: none open).
        pub(super) pack_seq: AtomicU64,
        pub(super) pack_first: AtomicU64,
        pub(super) pack_bytes: AtomicU64,
        _progress_line: [AtomicU64; 8],
        // What the worker published: written at each outcome (or frame),
        // polled by the supervisor's threads.
        /// Bytes of entries the worker has published in the results ring.
        pub(super) tail: AtomicU64,
        /// Frames the worker has sent on its socket: the supervisor reads
        /// the socket only when it has not seen them all (or `poll` says so).
        pub(super) frames_sent: AtomicU64,
        /// The CPU the worker last told the supervisor of outcomes from
        /// (rang the pool's bell, then yielded to the thread it woke,
        /// announced them to the dispatcher, or left them at a batch's end
        /// to a thread watching; [`crate::spin::cpu_mark`]), until it takes
        /// its next batch (0: none): a thread woken there, or watching
        /// there, may hold the CPU the worker needs (see
        /// `teller_waits_here`). Noted for a watcher too since its watch
        /// began before the hand-off (`Shared::submit_and_help`): under a
        /// CPU hog, the `apply` round trip's slow mode otherwise had a
        /// tail of 220-240 µs (the caller watching while the worker it had
        /// woken waited for its CPU).
        pub(super) told_on: AtomicU64,
        _published_line: [AtomicU64; 13],
        // What the supervisor read: written as it reads.
        /// Bytes of the results ring the supervisor has consumed.
        pub(super) head: AtomicU64,
        _consumed_line: [AtomicU64; 15],
        // What the supervisor handed: written at each batch.
        /// Bytes of batches the supervisor has published in the task ring.
        pub(super) task_tail: AtomicU64,
        /// The CPU the supervisor thread that handed the last batch ran on
        /// ([`crate::spin::cpu_mark`]; 0: none yet): see
        /// `Inbox::hander_waits_for_this_cpu`.
        pub(super) handed_on: AtomicU64,
        _handed_line: [AtomicU64; 14],
        // What the worker took: written at each batch.
        /// Bytes of the task ring the worker has consumed.
        pub(super) task_head: AtomicU64,
        /// 1 while the worker sleeps in its socket for want of a batch: the
        /// supervisor that publishes one then wakes it with a bare frame.
        pub(super) asleep: AtomicU64,
        _taken_line: [AtomicU64; 14],
        // Cancellations: written by the supervisor now and then, a count
        // read by the worker at each item.
        /// Items the supervisor cancelled after handing them out, one
        /// table for each batch the worker may hold; the worker skips them.
        pub(super) skips: [Skips; SKIP_TABLES],
    }
}

// Each group of `WorkerHead` starts its own 128 bytes.
const _: () = {
    use std::mem::offset_of;
    let groups = [
        offset_of!(WorkerHead, tail),
        offset_of!(WorkerHead, head),
        offset_of!(WorkerHead, task_tail),
        offset_of!(WorkerHead, task_head),
        offset_of!(WorkerHead, skips),
    ];
    let mut k = 0;
    while k < groups.len() {
        assert!(groups[k] == (k + 1) * 128);
        k += 1;
    }
};

sys::shared_layout! {
    /// The head of the region a pool shares with all its workers.
    pub(super) struct PoolHead {
        /// Threads of the supervisor reading results right now: while there
        /// are any, workers publish outcomes without a word on the socket.
        pub(super) watching: AtomicU64,
        /// While one of those threads sleeps on `bell` rather than
        /// spinning ([`ring::claim_bell`]), the CPU it last slept on
        /// ([`crate::spin::cpu_mark`]; 0: no sleeper): a worker with
        /// outcomes to announce rings the bell instead, and the sleeper
        /// reads them itself, without a hop through the dispatcher thread.
        pub(super) sleeper: AtomicU64,
        /// The futex the sleeper waits on: a count of rings.
        pub(super) bell: AtomicU32,
        /// 1 if the pool fences its cancellations with a global barrier
        /// ([`sys::global_barrier`]): a worker registered for it marks
        /// each item started with a plain store ([`Recorder::begin`]).
        pub(super) barrier: AtomicU32,
    }
}

impl PoolHead {
    /// Wakes the thread asleep on the bell, if any.
    pub(super) fn ring(&self) {
        self.bell.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(&self.bell, 1);
    }
}

sys::shared_layout! {
    /// The positions of one batch the supervisor cancelled after handing it
    /// out. A table serves one batch at a time: the supervisor gives it to
    /// the next batch it hands once the worker has ended the last (it holds
    /// at most [`SKIP_TABLES`] batches), so it never fills up however many
    /// cancellations a busy worker takes (a list of 28 entries, emptied only
    /// when the worker held nothing, let a cancelled task run once full).
    pub(super) struct Skips {
        /// The batch it is for (0: none).
        pub(super) seq: AtomicU64,
        /// Cancellations posted to it: the worker reads `bits` only when
        /// this is not 0.
        pub(super) posted: AtomicU64,
        /// 1 if every position from [`SKIP_BITS`] on is cancelled. They all
        /// belong to the batch's last job (the supervisor adds no job to a
        /// batch that holds that many items), which a cancellation covers
        /// whole.
        pub(super) beyond: AtomicU64,
        /// Bit `p % 64` of word `p / 64` set: position `p` is cancelled.
        pub(super) bits: [AtomicU64; SKIP_BITS / 64],
    }
}

/// Skip tables in a worker's head: one for each batch it may hold.
pub(super) const SKIP_TABLES: usize = 2;
/// Positions of a batch a skip table has a bit for.
pub(super) const SKIP_BITS: usize = 4096;

impl Skips {
    /// Gives the table to batch `seq`, clearing what an earlier batch left.
    pub(super) fn assign(&self, seq: u64) {
        if self.posted.load(Ordering::Relaxed) != 0 {
            self.bits.iter().for_each(|w| w.store(0, Ordering::Relaxed));
            self.beyond.store(0, Ordering::Relaxed);
            self.posted.store(0, Ordering::Relaxed);
        }
        self.seq.store(seq, Ordering::Relaxed);
    }

    /// Marks positions `range` cancelled (SeqCst, paired with the worker's
    /// look in [`Recorder::cancelled`]: see `Shared::cancel`).
    pub(super) fn post(&self, range: &std::ops::Range<usize>) {
        let end = range.end.min(SKIP_BITS);
        let mut p = range.start;
        // A word at a time: a whole cancelled batch is 64 stores, not 4096.
        while p < end {
            let word = p / 64;
            let upto = end.min((word + 1) * 64);
            let mask = u64::MAX >> (64 - (upto - p)) << (p % 64);
            self.bits[word].fetch_or(mask, Ordering::Relaxed);
            p = upto;
        }
        if range.end > SKIP_BITS {
            self.beyond.store(1, Ordering::Relaxed);
        }
        self.posted.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether position `at` is cancelled.
    fn covers(&self, at: usize) -> bool {
        match self.bits.get(at / 64) {
            Some(word) => word.load(Ordering::Relaxed) & (1 << (at % 64)) != 0,
            None => self.beyond.load(Ordering::Relaxed) == 1,
        }
    }
}
/// Where the results ring starts.
const RESULTS_OFFSET: usize = size_of::<WorkerHead>();
/// Results ring capacity: an entry that does not fit goes by the socket.
const RESULTS_BYTES: usize = 1 << 20;
/// Where the task ring starts.
const TASKS_OFFSET: usize = RESULTS_OFFSET + RESULTS_BYTES;
/// Task ring capacity.
const TASKS_BYTES: usize = 512 << 10;
/// The largest batch that goes by the task ring, with its length: a worker
/// holds at most two batches, so two of these and the markers of others
/// always fit.
pub(super) const TASK_MAX: usize = TASKS_BYTES / 4;
/// Where the pack area starts: a copy of the open pack's values, which
/// outlives the worker (see [`Recorder::pack_value`]).
const PACK_OFFSET: usize = TASKS_OFFSET + TASKS_BYTES;
/// The pack area's size: a pack closes before its values outgrow it.
const PACK_BYTES: usize = 64 << 10;
/// Size of a worker's shared region (its pages come as they are touched).
pub(super) const REGION_BYTES: usize = PACK_OFFSET + PACK_BYTES;
/// Most values in one pack.
const PACK_ITEMS: u32 = 256;
/// How long a pack stays open after its first value (coarse clock, ns),
/// looked at every [`PACK_LOOK`] values: a `map` of slow items publishes
/// its outcomes a few at a time.
const PACK_NS: u64 = 1_000_000;
/// A pack's age is looked at once in this many values.
const PACK_LOOK: u32 = 8;

/// Frame sequence number: the worker is initialized and waiting.
pub(super) const SEQ_READY: u64 = u64::MAX - 1;
/// Frame sequence number: the initializer failed (one entry).
pub(super) const SEQ_INIT_FAILED: u64 = u64::MAX;
/// Frame sequence number: outcomes wait in the ring (no body).
pub(super) const SEQ_WAKE: u64 = u64::MAX - 2;
/// Frame sequence number: entries that did not go by the ring.
pub(super) const SEQ_RESULTS: u64 = 0;

/// Bytes before the entries of a frame (`[seq: u64][reserved: u8]`).
pub(super) const FRAME_HEADER: usize = 9;

/// The results ring of a worker's region.
pub(super) fn results_ring(region: &SharedRegion) -> RingAt<'_> {
    RingAt {
        mem: region,
        offset: RESULTS_OFFSET,
        capacity: RESULTS_BYTES,
        tail: &head(region).tail,
        head: &head(region).head,
    }
}

/// The task ring of a worker's region: batches, each `[len: u32 LE]` and
/// its encoding; a length of 0 is a marker that says the next batch comes
/// by the socket (it carries descriptors, or is larger than [`TASK_MAX`]).
pub(super) fn task_ring(region: &SharedRegion) -> RingAt<'_> {
    RingAt {
        mem: region,
        offset: TASKS_OFFSET,
        capacity: TASKS_BYTES,
        tail: &head(region).task_tail,
        head: &head(region).task_head,
    }
}

/// One batch, as it crosses to the worker.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct BatchMsg<'a> {
    pub(super) seq: u64,
    /// Whether any item has a time limit: only then are starts stamped.
    pub(super) timed: bool,
    #[serde(borrow)]
    pub(super) jobs: Vec<JobMsg<'a>>,
}

/// One job of a batch: items that share a function.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JobMsg<'a> {
    pub(super) entry: i64,
    pub(super) func: i64,
    /// End of each item's argument in `args` (`u32` LE each).
    #[serde(borrow, serialize_with = "as_bytes")]
    pub(super) ends: &'a [u8],
    /// How many descriptors each item has (`u32` LE each), or empty: none.
    #[serde(borrow, serialize_with = "as_bytes")]
    pub(super) fds: &'a [u8],
    /// The encoded arguments, back to back.
    #[serde(borrow, serialize_with = "as_bytes")]
    pub(super) args: &'a [u8],
}

fn as_bytes<S: Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

fn u32_at(bytes: &[u8], i: usize) -> u32 {
    bytes
        .get(4 * i..4 * i + 4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

impl JobMsg<'_> {
    fn len(&self) -> usize {
        self.ends.len() / 4
    }
}

/// The initializer, as it crosses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct InitMsg {
    pub(super) entry: i64,
    pub(super) func: i64,
    pub(super) arg: Vec<u8>,
    /// The descriptors of the corral handles in `arg`, shared by every
    /// worker's start.
    pub(super) fds: InitFds,
}

/// The initializer argument's descriptors: kept by the pool, sent (as
/// copies) with every worker it starts.
#[derive(Clone, Debug, Default)]
pub(super) struct InitFds(pub(super) Arc<Vec<OwnedFd>>);

impl Serialize for InitFds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct One<'a>(&'a OwnedFd);
        impl Serialize for One<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                wire::serialize_fd(self.0.as_fd(), s)
            }
        }
        s.collect_seq(self.0.iter().map(One))
    }
}

impl<'de> Deserialize<'de> for InitFds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<InitFds, D::Error> {
        let fds: Vec<RegionFd> = Deserialize::deserialize(d)?;
        Ok(InitFds(Arc::new(fds.into_iter().map(|f| f.0).collect())))
    }
}

/// Everything a worker starts with (its spawn argument).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WorkerBoot {
    pub(super) conn: Connection,
    pub(super) region: RegionFd,
    /// The region the pool shares with all its workers ([`PoolHead`]).
    pub(super) pool: RegionFd,
    pub(super) identity: Vec<u8>,
    pub(super) init: Option<InitMsg>,
    pub(super) memory_limit: Option<u64>,
    pub(super) max_tasks: Option<u64>,
}

/// A shared region's descriptor as a spawn argument.
#[derive(Debug)]
pub(super) struct RegionFd(pub(super) OwnedFd);

impl Serialize for RegionFd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        wire::serialize_fd(self.0.as_fd(), s)
    }
}

impl<'de> Deserialize<'de> for RegionFd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RegionFd, D::Error> {
        wire::deserialize_fd(d).map(RegionFd)
    }
}

/// The signature of a pool job entry point (a monomorphized loop that runs
/// the function at the given offset on each item of a job).
pub(crate) type JobEntry = fn(
    &Verified,
    i64,
    &JobMsg<'_>,
    &mut std::vec::IntoIter<OwnedFd>,
    &mut Recorder<'_>,
) -> Result<(), crate::SendError>;
code_pointer!(JobEntry);

/// The entry offset for jobs of type `fn(A) -> R`.
pub(super) fn job_entry_offset<A: Data, R: Data>() -> i64 {
    sys::code::offset_of(job_trampoline::<A, R, false> as JobEntry as usize)
}

/// The entry offset for a `map`'s jobs of type `fn(A) -> R`: their values
/// end in packs ([`results::TAG_PACK`]).
pub(super) fn map_entry_offset<A: Data, R: Data>() -> i64 {
    sys::code::offset_of(job_trampoline::<A, R, true> as JobEntry as usize)
}

/// Runs every item of a job: decodes each argument, calls `f`, records the
/// outcome. Monomorphized, so a job of small items pays no dynamic dispatch
/// per item. With `PACKED` (a `map`'s jobs), values end in packs, and items
/// that carry descriptors one by one.
fn job_trampoline<A: Data, R: Data, const PACKED: bool>(
    verified: &Verified,
    func: i64,
    job: &JobMsg<'_>,
    fds: &mut std::vec::IntoIter<OwnedFd>,
    rec: &mut Recorder<'_>,
) -> Result<(), crate::SendError> {
    let f = verified.func::<A, R>(func);
    if PACKED && job.fds.is_empty() && !rec.holding {
        run_packed(job, rec, f)
    } else {
        run_items(job, fds, rec, f)
    }
}

/// A [`Pool::map_pod`](crate::Pool::map_pod) function as its jobs carry
/// it: by pointer ([`ByPointer`]), or by its type alone ([`ByType`]), which
/// compiles it into the workers' item loop.
pub(super) trait PodFunc<A, R>: Copy + Send + 'static {
    /// The function's offset for the job (0 when its type says it all).
    fn offset(self) -> i64;
    /// The function in a worker whose code is verified to be the caller's.
    fn in_worker(verified: &Verified, offset: i64) -> Self;
    fn call(self, item: A) -> R;
}

/// A `map_pod` function known by its address: called through it.
pub(super) struct ByPointer<A, R>(pub(super) fn(A) -> R);

// Not derived: a derive would ask `A` and `R` to be `Copy`, where only the
// pointer is copied.
impl<A, R> Clone for ByPointer<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, R> Copy for ByPointer<A, R> {}

impl<A: 'static, R: 'static> PodFunc<A, R> for ByPointer<A, R> {
    fn offset(self) -> i64 {
        bootstrap::func_offset(self.0)
    }

    fn in_worker(verified: &Verified, offset: i64) -> Self {
        ByPointer(verified.func::<A, R>(offset))
    }

    #[inline]
    fn call(self, item: A) -> R {
        (self.0)(item)
    }
}

/// A `map_pod` function known by its type (a fn item, or a closure that
/// captures nothing: zero-sized), which the entry monomorphized for it
/// calls inline: a cheap function runs in a tight loop the compiler sees
/// whole, not one indirect call per item.
#[derive(Clone, Copy)]
pub(super) struct ByType<F>(pub(super) F);

impl<A, R, F: Fn(A) -> R + Copy + Send + 'static> PodFunc<A, R> for ByType<F> {
    fn offset(self) -> i64 {
        0
    }

    fn in_worker(verified: &Verified, _: i64) -> Self {
        ByType(verified.by_type::<F>())
    }

    #[inline(always)]
    fn call(self, item: A) -> R {
        (self.0)(item)
    }
}

/// The entry offset for [`Pool::map_pod`](crate::Pool::map_pod) jobs of
/// `A -> R` through `f`'s type.
pub(super) fn pod_entry_offset<A: Pod + Send, R: Pod + Send, P: PodFunc<A, R>>(_f: P) -> i64 {
    sys::code::offset_of(pod_trampoline::<A, R, P> as JobEntry as usize)
}

/// Runs [`PodChunk`] items: each applies `f` to a range of the caller's
/// items, writing its results where the chunk says.
fn pod_trampoline<A: Pod + Send, R: Pod + Send, P: PodFunc<A, R>>(
    verified: &Verified,
    func: i64,
    job: &JobMsg<'_>,
    fds: &mut std::vec::IntoIter<OwnedFd>,
    rec: &mut Recorder<'_>,
) -> Result<(), crate::SendError> {
    let f = P::in_worker(verified, func);
    run_items(job, fds, rec, move |chunk: PodChunk<A, R>| chunk.run(f))
}

/// A range of a `map_pod`: its items are read from `input` and its results
/// written to `output`; nothing is encoded per item.
#[derive(Serialize, Deserialize)]
pub(super) struct PodChunk<A, R> {
    pub(super) input: PodInput,
    pub(super) output: PodOutput,
    pub(super) start: u64,
    pub(super) len: u64,
    /// A shared array and the index of the word in it where the worker
    /// counts the items it has begun: if it dies, the caller knows which
    /// item it was running and runs the ones after it elsewhere.
    pub(super) progress: Option<(RegionFd, u32)>,
    #[serde(skip)]
    pub(super) types: std::marker::PhantomData<fn(A) -> R>,
}

/// Where a `map_pod` range's items are.
#[derive(Serialize, Deserialize)]
pub(super) enum PodInput {
    /// In the caller's own slice (its pid and the slice's address), which
    /// the worker reads with `process_vm_readv`. A worker that reads late
    /// (after a failed call returned) harms nobody: reading another
    /// process's memory changes nothing there.
    Caller { pid: i32, addr: u64 },
    /// In a shared array the caller copied them into (the pool's reused
    /// scratch space, which a worker maps once: see [`mapped`]).
    Shared(RegionFd),
}

/// Where a `map_pod` range's results go.
#[derive(Serialize, Deserialize)]
pub(super) enum PodOutput {
    /// Straight into the caller's result vector (its pid and the vector's
    /// address), with `process_vm_writev`. Sound because the caller keeps
    /// the vector until every range has ended, and a range ends only once
    /// its worker reported it or is dead; and because the worker writes
    /// nothing once the caller is gone (its pid could then name another
    /// process).
    Caller { pid: i32, addr: u64 },
    /// Into a shared array the caller copies them from.
    Shared(RegionFd),
}

/// What a worker says of a `map_pod` range it ran.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PodRan {
    /// Every result is in place.
    Done,
    /// The kernel would not let this worker reach the caller's memory (this
    /// `errno`): the range goes again through shared memory.
    Refused(i32),
}

impl<A: Pod, R: Pod> PodChunk<A, R> {
    /// Bytes of items read (and of results written) at a time: larger
    /// blocks pay fewer system calls, smaller ones stay in the caches.
    /// 64 KiB (a block's items and results in 128 KiB of L2, or 64 KiB
    /// where results are written over their items): 10M `u64`
    /// squared ran 1.3 times as fast as with 256 KiB, 100k 1.6 times
    /// (medians of eight alternating pairs); 16 and 128 KiB the same as 64
    /// within the noise.
    const BLOCK_BYTES: usize = 64 << 10;

    fn run(self, f: impl PodFunc<A, R>) -> PodRan {
        let input = PodSide::from(self.input);
        let output = PodSide::from(self.output);
        let progress = self.progress.map(|(fd, word)| {
            let array = mapped(fd.0).expect("mapping map_pod's progress");
            (array, PROGRESS_STRIDE * word as usize)
        });
        let unwatched = AtomicU64::new(0);
        let begun = progress
            .as_ref()
            .map_or(&unwatched, |(array, at)| array.word_at(*at));
        let end = (self.start + self.len) as usize;
        let (a, r) = (size_of::<A>(), size_of::<R>());
        let block = (Self::BLOCK_BYTES / a.max(r).max(1)).max(1);
        let mut kept = KeptBuffer::take((block * a).div_ceil(8) + (block * r).div_ceil(8));
        let (mut own_items, mut own_results);
        let (items, results): (&mut [A], &mut [R]) = match kept.split(block) {
            Some(split) => split,
            None => {
                own_items = vec![A::zeroed(); block];
                own_results = vec![R::zeroed(); block];
                (&mut own_items, &mut own_results)
            }
        };
        // Every item runs even if some panic (as in `map`); the range then
        // fails with the first panic.
        let mut panics = bootstrap::FirstPanic::default();
        for from in (self.start as usize..end).step_by(block) {
            let n = block.min(end - from);
            let (items, results) = (&mut items[..n], &mut results[..n]);
            let copied = input
                .read(from * a, bytemuck::cast_slice_mut(items))
                .and_then(|()| {
                    let done = (from - self.start as usize) as u64;
                    let out: &[u8] = if a == r {
                        run_block(&mut InPlace::new(items, f), begun, done, &mut panics);
                        bytemuck::cast_slice(items)
                    } else {
                        let mut block = Beside { items, results, f };
                        run_block(&mut block, begun, done, &mut panics);
                        bytemuck::cast_slice(results)
                    };
                    output.write(from * r, out)
                });
            if let Err(errno) = copied {
                return PodRan::Refused(errno);
            }
        }
        panics.raise();
        PodRan::Done
    }
}

/// Runs each item of `block`, noting in `begun` each item it begins
/// (`done` plus its number from 1). Every item runs even if some panic; a
/// panicking item's result is zeroed and its panic given to `panics`. One
/// guard covers the items up to a panic, not one each: a guard per item
/// kept `f` from being called in a tight loop, and cost half again the time
/// of a cheap `f`. A forked copy of this worker that `f` returns into ends
/// there, looked for after each group of [`FORK_CHECK`] items, outside the
/// item loop (a look inside it, through a call, cost 10M `u64` squared 7 %).
fn run_block(
    block: &mut impl Block,
    begun: &AtomicU64,
    done: u64,
    panics: &mut bootstrap::FirstPanic,
) {
    let (mut next, forks, len) = (0, sys::forks(), block.len());
    while next < len {
        let ran = panics.run(|| {
            let mut at = done + next as u64;
            for from in (next..len).step_by(FORK_CHECK) {
                block.run(from..len.min(from + FORK_CHECK), &mut at, begun);
                if sys::forks() != forks {
                    bootstrap::leave_as_a_forked_copy();
                }
            }
        });
        next = match ran {
            Some(()) => len,
            None => {
                // The item that panicked is the last one begun.
                let failed = (begun.load(Ordering::Relaxed) - done - 1) as usize;
                block.zero(failed);
                failed + 1
            }
        };
    }
}

/// A block of a `map_pod` range in a worker: its items, and where their
/// results go.
trait Block {
    fn len(&self) -> usize;
    /// Runs the items of `range`, counting each in `at`, and storing the
    /// count in `begun`, as it begins.
    fn run(&mut self, range: std::ops::Range<usize>, at: &mut u64, begun: &AtomicU64);
    /// Zeroes the result of item `i` (one that panicked).
    fn zero(&mut self, i: usize);
}

/// Results written over their items, where both have one size: the item
/// loop touches half the cache lines of [`Beside`]'s (10M `u64` squared:
/// the loop's 1.8 ns an item went to 1.1, and the map from 257 to 266 M/s,
/// faster in 10 of 10 alternating pairs).
struct InPlace<'a, A, R, P> {
    items: &'a mut [A],
    f: P,
    results: std::marker::PhantomData<fn() -> R>,
}

impl<'a, A: Pod, R: Pod, P: PodFunc<A, R>> InPlace<'a, A, R, P> {
    fn new(items: &'a mut [A], f: P) -> Self {
        debug_assert_eq!(size_of::<A>(), size_of::<R>());
        InPlace {
            items,
            f,
            results: std::marker::PhantomData,
        }
    }
}

impl<A: Pod, R: Pod, P: PodFunc<A, R>> Block for InPlace<'_, A, R, P> {
    fn len(&self) -> usize {
        self.items.len()
    }

    #[inline(always)]
    fn run(&mut self, range: std::ops::Range<usize>, at: &mut u64, begun: &AtomicU64) {
        for x in &mut self.items[range] {
            *at += 1;
            begun.store(*at, Ordering::Relaxed);
            // Of one size (`new`): a copy of the bytes.
            *x = bytemuck::cast(self.f.call(*x));
        }
    }

    fn zero(&mut self, i: usize) {
        self.items[i] = A::zeroed();
    }
}

/// Results written beside their items, where the two differ in size.
struct Beside<'a, A, R, P> {
    items: &'a [A],
    results: &'a mut [R],
    f: P,
}

impl<A: Pod, R: Pod, P: PodFunc<A, R>> Block for Beside<'_, A, R, P> {
    fn len(&self) -> usize {
        self.items.len()
    }

    #[inline(always)]
    fn run(&mut self, range: std::ops::Range<usize>, at: &mut u64, begun: &AtomicU64) {
        let items = &self.items[range.clone()];
        for (out, &x) in self.results[range].iter_mut().zip(items) {
            *at += 1;
            begun.store(*at, Ordering::Relaxed);
            *out = self.f.call(x);
        }
    }

    fn zero(&mut self, i: usize) {
        self.results[i] = R::zeroed();
    }
}

/// Bytes between two ranges' progress words in a `map_pod`'s shared
/// array: each worker stores to its word at every item, so two words in
/// one cache line (or in the pair of lines the CPU fetches together) would
/// make the workers take that line from each other at every item.
pub(super) const PROGRESS_STRIDE: usize = 128;

/// Items between two looks, in a `map_pod` block, for a forked copy of the
/// worker: `f` forked and its child returned, and that copy must end
/// before it runs much of the rest (each item may fork again: a copy runs
/// at most this many less one, making at most 2^7 short-lived copies). A
/// look after every item cost a cheap `f` a tenth of its speed.
const FORK_CHECK: usize = 8;

/// A worker's `map_pod` block buffer, kept from one range to the next:
/// fresh buffers of a few hundred KiB would each be a new mapping, and a
/// page fault per 4 KiB, every range.
static KEPT_BUFFER: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

/// [`KEPT_BUFFER`] while a range runs (given back when dropped).
struct KeptBuffer(Vec<u64>);

impl KeptBuffer {
    /// The kept buffer, grown to `words` words.
    fn take(words: usize) -> KeptBuffer {
        let mut kept = std::mem::take(&mut *poison::lock(&KEPT_BUFFER));
        if kept.len() < words {
            kept.resize(words, 0);
        }
        KeptBuffer(kept)
    }

    /// Room for `block` items and as many results, or `None` for types it
    /// cannot hold: aligned to more than its 8-byte words, or of size 0.
    fn split<A: Pod, R: Pod>(&mut self, block: usize) -> Option<(&mut [A], &mut [R])> {
        let (a, r) = (size_of::<A>(), size_of::<R>());
        if a == 0 || r == 0 || align_of::<A>() > 8 || align_of::<R>() > 8 {
            return None;
        }
        let (i, o) = self.0.split_at_mut((block * a).div_ceil(8));
        let i: &mut [u8] = bytemuck::cast_slice_mut(i);
        let o: &mut [u8] = bytemuck::cast_slice_mut(o);
        Some((
            bytemuck::cast_slice_mut(&mut i[..block * a]),
            bytemuck::cast_slice_mut(&mut o[..block * r]),
        ))
    }
}

impl Drop for KeptBuffer {
    fn drop(&mut self) {
        *poison::lock(&KEPT_BUFFER) = std::mem::take(&mut self.0);
    }
}

/// A worker's side of a [`PodInput`] or [`PodOutput`].
enum PodSide {
    Caller { pid: i32, addr: u64 },
    Mapped(crate::RawArray<u8>),
}

impl PodSide {
    /// Reads the bytes from offset `at` into `into`; the `errno` of a read
    /// the kernel refused.
    fn read(&self, at: usize, into: &mut [u8]) -> Result<(), i32> {
        match self {
            PodSide::Caller { pid, addr } => {
                sys::read_process_memory(*pid, addr + at as u64, into).map_err(errno)
            }
            PodSide::Mapped(array) => {
                array.load_bytes_into(at, into);
                Ok(())
            }
        }
    }

    /// Writes `bytes` at offset `at`; the `errno` of a write the kernel
    /// refused, or `ESRCH` once the caller is gone.
    fn write(&self, at: usize, bytes: &[u8]) -> Result<(), i32> {
        match self {
            PodSide::Caller { pid, addr } => {
                if !caller_alive(*pid) {
                    return Err(libc::ESRCH);
                }
                sys::write_process_memory(*pid, addr + at as u64, bytes).map_err(errno)
            }
            PodSide::Mapped(array) => {
                array.store_bytes_at(at, bytes);
                Ok(())
            }
        }
    }
}

impl From<PodInput> for PodSide {
    fn from(input: PodInput) -> PodSide {
        match input {
            PodInput::Caller { pid, addr } => PodSide::Caller { pid, addr },
            PodInput::Shared(fd) => PodSide::Mapped(mapped(fd.0).expect("mapping map_pod's input")),
        }
    }
}

impl From<PodOutput> for PodSide {
    fn from(output: PodOutput) -> PodSide {
        match output {
            PodOutput::Caller { pid, addr } => PodSide::Caller { pid, addr },
            PodOutput::Shared(fd) => {
                PodSide::Mapped(mapped(fd.0).expect("mapping map_pod's output"))
            }
        }
    }
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// A pidfd of the last caller this worker wrote to, opened at its first
/// write: the caller was alive then (it had just sent the range), so the
/// pidfd names it and no process that might take its pid later.
static CALLER: std::sync::Mutex<Option<(i32, OwnedFd)>> = std::sync::Mutex::new(None);

/// Whether caller `pid` still runs: checked before each write, so that a
/// worker stops writing once its caller is gone. (For the write that
/// follows a check to reach another process, the caller's pid would have
/// to be freed and handed out again in between: the kernel hands pids out
/// in turn, so only after all the others.)
fn caller_alive(pid: i32) -> bool {
    let mut caller = poison::lock(&CALLER);
    if caller.as_ref().is_none_or(|(p, _)| *p != pid) {
        *caller = sys::pidfd_open(pid).ok().map(|fd| (pid, fd));
    }
    // A pidfd turns readable when its process exits.
    caller.as_ref().is_some_and(|(_, fd)| {
        matches!(
            sys::poll_readable(&[fd.as_fd()], Some(Duration::ZERO)).as_deref(),
            Ok([false])
        )
    })
}

/// The scratch arrays this worker has mapped, by the identity of their
/// memory (device, inode): the pool reuses its scratch arrays, so mapping
/// each once spares a fresh mapping, and a page fault per 4 KiB touched,
/// per range. At most [`MAPPED_KEPT`] are kept.
static MAPPED: std::sync::Mutex<Vec<(MemoryId, crate::RawArray<u8>)>> =
    std::sync::Mutex::new(Vec::new());
/// A shared mapping's identity: the device and inode of its memory.
type MemoryId = (u64, u64);
const MAPPED_KEPT: usize = 4;

/// The array behind `fd`, mapped once per worker.
fn mapped(fd: OwnedFd) -> Result<crate::RawArray<u8>, String> {
    let st = rustix::fs::fstat(&fd).map_err(|e| e.to_string())?;
    let key = (st.st_dev as u64, st.st_ino as u64);
    let mut maps = poison::lock(&MAPPED);
    if let Some((_, array)) = maps.iter().find(|(k, _)| *k == key) {
        return Ok(array.clone());
    }
    let array = crate::RawArray::from_fd(fd)?;
    maps.push((key, array.clone()));
    if maps.len() > MAPPED_KEPT {
        maps.remove(0);
    }
    Ok(array)
}

/// Decodes each item of `job`, calls `f` on it, records the outcome.
#[inline]
fn run_items<A: Data, R: Data>(
    job: &JobMsg<'_>,
    fds: &mut std::vec::IntoIter<OwnedFd>,
    rec: &mut Recorder<'_>,
    f: impl Fn(A) -> R + Copy,
) -> Result<(), crate::SendError> {
    let mut start = 0usize;
    for (i, end) in job.ends.chunks_exact(4).enumerate() {
        let end = u32::from_le_bytes(end.try_into().expect("4 bytes")) as usize;
        let arg = job.args.get(start..end).unwrap_or(&[]);
        start = end;
        let at = rec.begin();
        if rec.cancelled() {
            rec.end(at, TAG_CANCELLED)?;
            continue;
        }
        let out = &mut rec.msg;
        let decoded = if job.fds.is_empty() {
            wire::decode_plain::<A>(arg)
        } else {
            let item_fds = u32_at(job.fds, i) as usize;
            wire::decode::<A>(arg, fds.by_ref().take(item_fds).collect())
        };
        let (tag, value) = match decoded {
            Ok(arg) => run_one(f, arg, out),
            Err(e) => {
                out.extend_from_slice(format!("the argument: {}", e.message()).as_bytes());
                (TAG_CODEC, None)
            }
        };
        // Published first, dropped after: a result whose `Drop` kills the
        // worker (or panics) is delivered all the same.
        rec.end(at, tag)?;
        if let Some(value) = value.filter(|_| std::mem::needs_drop::<R>()) {
            let _ = bootstrap::catch_panic_hooked(move || drop(value));
        }
    }
    Ok(())
}

/// [`run_items`] for items without descriptors whose values go in packs:
/// each value is added to the open pack, any other outcome closes it and
/// goes alone. The pack is closed when the job ends.
#[inline]
fn run_packed<A: Data, R: Data>(
    job: &JobMsg<'_>,
    rec: &mut Recorder<'_>,
    f: impl Fn(A) -> R + Copy,
) -> Result<(), crate::SendError> {
    let mut start = 0usize;
    for end in job.ends.chunks_exact(4) {
        let end = u32::from_le_bytes(end.try_into().expect("4 bytes")) as usize;
        let arg = job.args.get(start..end).unwrap_or(&[]);
        start = end;
        rec.mark_started();
        if rec.cancelled() {
            rec.close_pack()?;
            let at = rec.open_entry();
            rec.end(at, TAG_CANCELLED)?;
            continue;
        }
        let at = rec.open_pack_item();
        let (tag, value) = match wire::decode_plain::<A>(arg) {
            Ok(arg) => run_one(f, arg, &mut rec.msg),
            Err(e) => {
                let why = format!("the argument: {}", e.message());
                rec.msg.extend_from_slice(why.as_bytes());
                (TAG_CODEC, None)
            }
        };
        if tag == TAG_VALUE {
            rec.pack_value(at)?;
        } else {
            rec.alone(at, tag)?;
        }
        if let Some(value) = value.filter(|_| std::mem::needs_drop::<R>()) {
            let _ = bootstrap::catch_panic_hooked(move || drop(value));
        }
    }
    rec.close_pack()
}

/// Calls `f(arg)` and appends its outcome to `out`; returns the tag and the
/// value, which the caller drops once the outcome is published.
#[inline]
fn run_one<A, R: Data>(f: impl FnOnce(A) -> R, arg: A, out: &mut Vec<u8>) -> (u8, Option<R>) {
    match bootstrap::catch_panic_hooked(move || f(arg)) {
        Ok(value) => match wire::encode_plain_into(&value, out) {
            Ok(()) => (TAG_VALUE, Some(value)),
            Err(e) => {
                out.extend_from_slice(format!("the result: {}", e.message()).as_bytes());
                (TAG_CODEC, Some(value))
            }
        },
        Err(panic) => {
            let _ = wire::encode_plain_into(&panic, out);
            (TAG_PANIC, None)
        }
    }
}

/// How long a finished item's outcome may wait, unannounced, for the ones
/// after it in its batch while nobody watches the ring: slow items are
/// announced one by one, fast ones together.
const FLUSH_NS: u64 = 2_000_000;

/// The head of a worker's region.
pub(super) fn head(region: &SharedRegion) -> &WorkerHead {
    region.layout::<WorkerHead>()
}

/// Where a worker writes outcomes: the results ring (or, for an entry that
/// does not fit it, the socket), with the progress words the supervisor
/// watches.
pub(crate) struct Recorder<'a> {
    region: &'a SharedRegion,
    pool: &'a PoolHead,
    /// The skip table of the batch being run (none for the initializer).
    skips: Option<&'a Skips>,
    seq: u64,
    started: &'a AtomicU64,
    finished: &'a AtomicU64,
    /// Bytes of the open pack's values in the pack area.
    pack_bytes: &'a AtomicU64,
    start_ns: &'a AtomicU64,
    frames_sent: &'a AtomicU64,
    ring: ring::Writer<'a>,
    conn: &'a Connection,
    /// A frame header, then the entry being written: sent as it is if the
    /// entry does not go by the ring.
    msg: Vec<u8>,
    next: u32,
    timed: bool,
    /// When to announce the outcomes published so far (coarse clock, ns).
    flush_at: u64,
    /// Publishes nothing: the initializer's outcome stays in `msg`, told
    /// only if it failed.
    holding: bool,
    /// Registered for the pool's global barrier ([`PoolHead::barrier`]).
    light_fence: bool,
    /// The open pack in `msg`, if any.
    pack: Option<Pack>,
}

/// A pack being filled (see [`Recorder::pack_value`]).
struct Pack {
    /// Values in it.
    count: u32,
    /// When it closes (coarse clock, ns).
    close_at: u64,
}

impl Recorder<'_> {
    /// Announces the next item; returns where its entry starts in `msg`.
    #[inline]
    fn begin(&mut self) -> usize {
        self.mark_started();
        self.open_entry()
    }

    /// Starts the entry of the next item's outcome in `msg`; returns where.
    #[inline]
    fn open_entry(&mut self) -> usize {
        self.msg.truncate(FRAME_HEADER);
        results::open_entry(&mut self.msg, self.seq, self.next)
    }

    /// Marks the next item started.
    #[inline]
    fn mark_started(&mut self) {
        if self.timed {
            self.start_ns.store(sys::monotonic_ns(), Ordering::Relaxed);
        }
        // Paired with the supervisor's in `Shared::cancel` (post a skip,
        // then read `started`): either it sees this item started (and kills
        // the worker), or this worker sees the cancellation (and skips the
        // item). That takes a full fence between this store and the load
        // of `posted`: a SeqCst store (`xchg`, which waits for the line
        // the supervisor reads: 12 ns of a `map` item's 88 here), or, once
        // registered, a compiler fence whose hardware half the supervisor
        // makes for both sides by a global barrier after its post.
        let started = u64::from(self.next) + 1;
        if self.light_fence && self.pool.barrier.load(Ordering::Relaxed) == 1 {
            self.started.store(started, Ordering::Relaxed);
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            self.started.store(started, Ordering::SeqCst);
        }
    }

    /// Whether the supervisor cancelled the item just announced.
    #[inline]
    fn cancelled(&self) -> bool {
        self.skips.is_some_and(|skips| {
            skips.posted.load(Ordering::SeqCst) != 0 && skips.covers(self.next as usize)
        })
    }

    /// Seals the entry started at `at` and publishes it; announces what was
    /// published once outcomes have waited long enough.
    #[inline]
    fn end(&mut self, at: usize, tag: u8) -> Result<(), crate::SendError> {
        results::close_entry(&mut self.msg, at, tag);
        self.next += 1;
        if self.holding {
            return Ok(());
        }
        self.publish()?;
        self.finished.store(u64::from(self.next), Ordering::Release);
        self.tell_if_due()
    }

    /// After a publication: announces what was published if outcomes
    /// have waited long enough.
    #[inline]
    fn tell_if_due(&mut self) -> Result<(), crate::SendError> {
        // A thread watching the rings reads the outcome without a word: no
        // clock read while one is there. This look is a plain load, not
        // `announce`'s fenced one, so it can miss a watcher leaving at this
        // instant; the outcome then waits for the next item's end or the
        // batch's, as one finished within `FLUSH_NS` of the last
        // announcement does anyway.
        if self.pool.watching.load(Ordering::Relaxed) > 0
            && self.pool.sleeper.load(Ordering::Relaxed) == 0
        {
            return Ok(());
        }
        let now = sys::monotonic_coarse_ns();
        if now >= self.flush_at {
            self.announce()?;
            self.flush_at = now + FLUSH_NS;
        }
        Ok(())
    }

    /// Starts the next item's value in the open pack, opening one if none
    /// is; returns where the value starts in `msg`.
    #[inline]
    fn open_pack_item(&mut self) -> usize {
        if self.pack.is_none() {
            let head = head(self.region);
            head.pack_seq.store(self.seq, Ordering::Relaxed);
            head.pack_first
                .store(u64::from(self.next), Ordering::Relaxed);
            self.open_entry();
        }
        results::open_pack_item(&mut self.msg)
    }

    /// Adds the value encoded at `at` in `msg` to the open pack, and copies
    /// it into the pack area: a worker that dies leaves the pack there,
    /// and the supervisor reads it at the burial (`staged_pack`), so that
    /// a value is never lost once its item has finished. Closes the pack
    /// once full or old.
    #[inline]
    fn pack_value(&mut self, at: usize) -> Result<(), crate::SendError> {
        let len = results::seal_pack_item(&mut self.msg, at);
        let from = at - (FRAME_HEADER + results::ENTRY_HEADER);
        let to = self.msg.len() - (FRAME_HEADER + results::ENTRY_HEADER);
        if to > PACK_BYTES {
            // No room left in the pack area: the value goes in a pack of
            // its own, or, too large for one, alone.
            let value = self.msg.split_off(at);
            self.msg.truncate(at);
            self.close_pack()?;
            let at = self.open_pack_item();
            self.msg
                .extend_from_slice(&value[results::PACK_ITEM_HEADER..]);
            return if value.len() <= PACK_BYTES {
                self.pack_value(at)
            } else {
                self.alone(at, TAG_VALUE)
            };
        }
        // The length and the value apart: a load across both, just written
        // by two stores, waited for them to drain.
        let area = PACK_OFFSET + from;
        self.region.store_bytes(area, &len);
        self.region
            .store_bytes(area + len.len(), &self.msg[at + len.len()..]);
        self.pack_bytes.store(to as u64, Ordering::Relaxed);
        self.next += 1;
        self.finished.store(u64::from(self.next), Ordering::Release);
        let pack = self.pack.get_or_insert_with(|| Pack {
            count: 0,
            close_at: sys::monotonic_coarse_ns().saturating_add(PACK_NS),
        });
        pack.count += 1;
        // The clock is read at every [`PACK_LOOK`]th value: a read at each
        // cost a small item 5-9 ns, more than the rest of its bookkeeping.
        let full = pack.count >= PACK_ITEMS
            || (pack.count.is_multiple_of(PACK_LOOK)
                && sys::monotonic_coarse_ns() >= pack.close_at);
        if full {
            self.close_pack()?;
        }
        Ok(())
    }

    /// The outcome at `at` in `msg` (opened as a pack's value) goes alone,
    /// with `tag`: the open pack is closed first.
    fn alone(&mut self, at: usize, tag: u8) -> Result<(), crate::SendError> {
        let outcome = self.msg.split_off(at + results::PACK_ITEM_HEADER);
        self.msg.truncate(at);
        if self.pack.is_some() {
            self.close_pack()?;
        }
        let at = self.open_entry();
        self.msg.extend_from_slice(&outcome);
        self.end(at, tag)
    }

    /// Publishes the open pack, if any (an opened one without values is
    /// dropped).
    fn close_pack(&mut self) -> Result<(), crate::SendError> {
        let Some(_) = self.pack.take() else {
            self.msg.truncate(FRAME_HEADER);
            return Ok(());
        };
        results::close_entry(&mut self.msg, FRAME_HEADER, results::TAG_PACK);
        self.publish()?;
        self.pack_bytes.store(0, Ordering::Relaxed);
        self.msg.truncate(FRAME_HEADER);
        self.tell_if_due()
    }

    /// Publishes the entry in `msg`: in the ring, or, if it does not fit
    /// there, by the socket.
    #[inline]
    fn publish(&mut self) -> Result<(), crate::SendError> {
        if results::publish(&mut self.ring, &self.msg[FRAME_HEADER..]) {
            return Ok(());
        }
        self.msg[..8].copy_from_slice(&SEQ_RESULTS.to_le_bytes());
        self.send(None)
    }

    /// Sends `msg`, or a bare frame of sequence number `bare`.
    fn send(&self, bare: Option<u64>) -> Result<(), crate::SendError> {
        match bare {
            Some(seq) => self.conn.send_bytes(&frame_header(seq))?,
            None => self.conn.send_bytes(&self.msg)?,
        }
        self.frames_sent.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Tells the supervisor that outcomes wait in the ring: rings the bell
    /// its sleeping watcher waits on, or, with no watcher at all (or a
    /// sleeper on this very CPU), sends a word to its dispatcher thread.
    /// A sleeper woken from its own CPU would stay there, beside this
    /// worker's watch for the next batch: in alternating runs, 6 of 20 then
    /// ran every later `apply` round trip at 10-35 µs instead of 1 µs (the
    /// dispatcher, which sleeps at once, leaves its CPU to the thread it
    /// wakes). Whoever is told, or watches, notes the CPU it is told from
    /// ([`WorkerHead::told_on`]).
    fn announce(&self) -> Result<(), crate::SendError> {
        let here = crate::spin::cpu_mark;
        let owed = ring::owed(self.region, &self.pool.watching, &self.pool.sleeper, here);
        match owed {
            ring::Owed::Nothing => {}
            ring::Owed::Ring => self.pool.ring(),
            ring::Owed::Announce => self.send(Some(SEQ_WAKE))?,
        }
        head(self.region).told_on.store(here(), Ordering::Relaxed);
        if owed == ring::Owed::Ring {
            std::thread::yield_now();
        }
        Ok(())
    }
}

/// When panics abort: records the panic as the outcome of the running item,
/// in the ring, where the supervisor looks when the worker dies.
fn report_abort(region: &SharedRegion, panic: &crate::RemotePanic) {
    let seq = head(region).seq.load(Ordering::Relaxed);
    let started = head(region).started.load(Ordering::Relaxed);
    let finished = head(region).finished.load(Ordering::Relaxed);
    if seq == SEQ_INIT_FAILED || started == 0 || started <= finished {
        return; // not inside an item (the initializer reports its own way)
    }
    let mut entry = Vec::new();
    let at = results::open_entry(&mut entry, seq, (started - 1) as u32);
    if wire::encode_plain_into(panic, &mut entry).is_err() {
        return;
    }
    results::close_entry(&mut entry, at, TAG_PANIC);
    if results::publish(&mut ring::Writer::new(results_ring(region)), &entry) {
        head(region).finished.store(started, Ordering::Release);
    }
}

/// The pack a dead worker left open, if it left one with values (see
/// [`Recorder::pack_value`]): its batch and the pack as an entry. Read
/// only once the worker is dead: a live one writes the pack area as it
/// goes.
pub(super) fn staged_pack(region: &SharedRegion) -> Option<(u64, Vec<u8>)> {
    let head = head(region);
    let bytes = usize::try_from(head.pack_bytes.load(Ordering::Acquire)).ok()?;
    if bytes == 0 || bytes > PACK_BYTES {
        return None;
    }
    let (seq, first) = (
        head.pack_seq.load(Ordering::Relaxed),
        head.pack_first.load(Ordering::Relaxed),
    );
    let mut entry = Vec::with_capacity(results::ENTRY_HEADER + bytes);
    let at = results::open_entry(&mut entry, seq, u32::try_from(first).ok()?);
    region.load_append(PACK_OFFSET, bytes, &mut entry);
    results::close_entry(&mut entry, at, results::TAG_PACK);
    Some((seq, entry))
}

fn frame_header(seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(0);
    out
}

/// The worker's main function (spawned by the pool; returns when the pool
/// closes its socket or the task quota is used up).
pub(super) fn worker_main(boot: WorkerBoot) {
    let WorkerBoot {
        conn,
        region,
        pool,
        identity,
        init,
        memory_limit,
        max_tasks,
    } = boot;
    let (Ok(region), Ok(pool)) = (SharedRegion::map(region.0), SharedRegion::map(pool.0)) else {
        return;
    };
    // The worker keeps its regions until it exits, and the abort flag must
    // stay valid for a signal handler: give them the life of the process.
    let region: &'static SharedRegion = Box::leak(Box::new(region));
    let pool: &'static SharedRegion = Box::leak(Box::new(pool));
    let verified = match set_up(region, &identity, memory_limit) {
        Ok(verified) => verified,
        Err(why) => return fail_to_start(&conn, why.as_bytes()),
    };
    let mut rec = Recorder::new(region, pool, &conn);
    if let Some(init) = init
        && !run_init(&verified, &mut rec, init)
    {
        return;
    }
    rec.holding = false;
    if rec.send(Some(SEQ_READY)).is_err() {
        return;
    }
    let mut inbox = Inbox::new(&conn, region, pool);
    let mut left = max_tasks.unwrap_or(u64::MAX);
    while left > 0 {
        let Some((frame, fds)) = inbox.next() else {
            return; // the pool is gone or closed us
        };
        let Ok(batch) = postcard::from_bytes::<BatchMsg<'_>>(frame) else {
            return; // cannot happen between two copies of one binary
        };
        let items: usize = batch.jobs.iter().map(JobMsg::len).sum();
        if run_batch(&verified, &mut rec, batch, fds).is_err() {
            return;
        }
        left = left.saturating_sub(items as u64);
    }
}

/// Prepares the worker process before its initializer: the out-of-memory
/// flag, its environment, the check that it runs the pool's binary, its
/// memory limit and the panic hook; why it cannot run tasks, if it cannot.
fn set_up(
    region: &'static SharedRegion,
    identity: &[u8],
    memory_limit: Option<u64>,
) -> Result<Verified, String> {
    sys::flag_out_of_memory_aborts(&head(region).out_of_memory);
    // Descendants inherit the mark: one that escapes the process group and
    // outlives its parent is still known as this worker's (start/orphans.rs).
    sys::set_env_single_threaded(TREE_ENV, &std::process::id().to_string());
    // Rust's allocation-failure handler prints a backtrace when this is set,
    // which hides the failure's errno from the flag above. Task panics
    // carry their backtrace in `RemotePanic` regardless.
    sys::remove_env(std::ffi::OsStr::new("RUST_BACKTRACE"));
    let verified = Verified::check(identity)?;
    if let Some(limit) = memory_limit {
        sys::limit_address_space(limit).map_err(|e| format!("setting the memory limit: {e}"))?;
    }
    // Nothing the initializer does belongs to a batch.
    head(region).seq.store(SEQ_INIT_FAILED, Ordering::Release);
    bootstrap::install_panic_hook();
    if cfg!(panic = "abort") {
        bootstrap::set_abort_report(Box::new(move |panic| report_abort(region, panic)));
    }
    Ok(verified)
}

/// Tells the pool that this worker cannot run tasks, and why.
fn fail_to_start(conn: &Connection, why: &[u8]) {
    let mut msg = frame_header(SEQ_INIT_FAILED);
    let at = results::open_entry(&mut msg, SEQ_INIT_FAILED, 0);
    msg.extend_from_slice(why);
    results::close_entry(&mut msg, at, TAG_CODEC);
    let _ = conn.send_bytes(&msg);
}

impl<'a> Recorder<'a> {
    /// The recorder of a worker whose region is `region`, holding its
    /// outcomes until the initializer has run.
    fn new(region: &'a SharedRegion, pool: &'a SharedRegion, conn: &'a Connection) -> Self {
        Recorder {
            region,
            pool: pool.layout::<PoolHead>(),
            started: &head(region).started,
            finished: &head(region).finished,
            pack_bytes: &head(region).pack_bytes,
            start_ns: &head(region).start_ns,
            frames_sent: &head(region).frames_sent,
            skips: None,
            ring: ring::Writer::new(results_ring(region)),
            seq: SEQ_INIT_FAILED,
            conn,
            msg: frame_header(SEQ_INIT_FAILED),
            next: 0,
            timed: false,
            flush_at: u64::MAX,
            holding: true,
            light_fence: pool.layout::<PoolHead>().barrier.load(Ordering::Relaxed) == 1
                && sys::register_for_global_barrier(),
            pack: None,
        }
    }
}

/// How long a worker that ran out of batches watches its task ring before
/// it sleeps in its socket. Fixed, not learnt as a pipe's watch is
/// ([`crate::spin::SpinBudget`]): a worker's waits between batches often
/// outlast a watch while the supervisor refills it, and a learnt budget
/// shrank to nothing, so that every batch cost a wake-up; in alternating
/// runs the fixed watch gave submit-each 1.1-1.4 M/s against 0.6, and an
/// `apply` round trip under a CPU hog of 2-6 us against 25-38. It costs at
/// most this much CPU after each batch; an idle pool uses none.
const WATCH: Duration = Duration::from_micros(100);
/// After this much of [`WATCH`], a watch ends early if the supervisor's
/// watcher has not read this worker's last outcomes
/// (`Inbox::peer_waits_for_a_cpu`), or if no thread watches and the one
/// that handed the last batch last ran on this CPU
/// (`Inbox::hander_waits_for_this_cpu`): spin only while the peer runs.
/// Under a CPU hog, in runs of each build alone: Python's `Pool.apply`
/// round trip went from 4-6 us or 231-255 us (bimodal) to 47-70 us, the
/// executor's from 160-277 us to 23-83 us, and the Rust `map` of 100k
/// from 9.4-10.1 to 15.7-17.8 M items/s (alternating runs). A watch
/// that finds that thread's last CPU its own yields it at each turn from
/// the start instead (`Inbox::gives_way`), but for one in [`PROBE`].
const WATCH_PEER: Duration = Duration::from_micros(10);

/// Of the watches in a row that would give way to the hander on this CPU
/// (`Inbox::gives_way`), one in this many does not, but spins and sleeps
/// as before. Two threads that only yield to each other never sleep, so
/// the scheduler never places either anew: where another CPU is idle,
/// they kept sharing one (in 2026-12-03's trial without this look, Python's
/// `Pool.apply` took 6.5 µs in 11 of 16 unloaded runs, against 1.5). With
/// it, the unloaded runs that begin on one CPU move apart within the run:
/// Python's `apply` took about 6 µs in 4 of 40 runs (the build before: 0
/// of 20), and the Rust `apply` 3.8 µs in 1 of 30 (2.0-2.3 otherwise).
/// One in 16 did no better (4 of 20). The machine's phase matters more:
/// an hour later the Rust `apply` took 5-6 µs in 18 of 30 short runs (the
/// build before: 20 µs in 2 of 12), and a look spinning the whole
/// [`WATCH`] did no better (15 of 30; `bench/README.md`).
const PROBE: u32 = 64;

/// Where a worker's batches come from: its task ring, in order, where a
/// marker stands for each batch that comes by the socket instead.
struct Inbox<'a> {
    conn: &'a Connection,
    ring: RingAt<'a>,
    asleep: &'a AtomicU64,
    /// Bytes taken from the ring, and where the next message in them starts.
    taken: Vec<u8>,
    at: usize,
    /// Batches the socket brought before the ring's marker for them was
    /// reached (read while sleeping).
    early: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    /// The batch the socket brought last, while it runs.
    held: Vec<u8>,
    /// This worker's results ring, and the count of the supervisor's
    /// threads watching results: a watcher that leaves this worker's
    /// outcomes unread is not on a CPU.
    results: RingAt<'a>,
    watching: &'a AtomicU64,
    sleeper: &'a AtomicU64,
    handed_on: &'a AtomicU64,
    /// Watches in a row that found the hander on this CPU.
    gave_way: u32,
}

/// A message of the task ring.
enum Message {
    /// Where its encoding lies among the bytes taken.
    Batch(std::ops::Range<usize>),
    /// The next batch comes by the socket.
    BySocket,
}

impl<'a> Inbox<'a> {
    /// The inbox of a worker whose region is `region`, in pool `pool`.
    fn new(conn: &'a Connection, region: &'a SharedRegion, pool: &'a SharedRegion) -> Self {
        Inbox {
            conn,
            ring: task_ring(region),
            asleep: &head(region).asleep,
            taken: Vec::new(),
            at: 0,
            early: VecDeque::new(),
            held: Vec::new(),
            results: results_ring(region),
            watching: &pool.layout::<PoolHead>().watching,
            sleeper: &pool.layout::<PoolHead>().sleeper,
            handed_on: &head(region).handed_on,
            gave_way: 0,
        }
    }

    /// The next batch, with its descriptors; `None` once the pool is gone.
    /// A batch from the ring is read where it was copied out to, not
    /// copied again.
    fn next(&mut self) -> Option<(&[u8], Vec<OwnedFd>)> {
        loop {
            match self.pop() {
                Some(Message::Batch(at)) => return Some((&self.taken[at], Vec::new())),
                Some(Message::BySocket) => return self.by_socket(),
                None => {}
            }
            self.taken.clear();
            self.at = 0;
            // Positions that make no sense: not the supervisor we knew.
            if ring::drain(self.ring, &mut self.taken).ok()? {
                continue;
            }
            if !self.watch() {
                self.sleep()?;
            }
        }
    }

    /// The next message among those taken from the ring, if any.
    fn pop(&mut self) -> Option<Message> {
        let rest = self.taken.get(self.at..)?;
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().expect("4 bytes")) as usize;
        rest.get(4..4 + len)?;
        let message = if len == 0 {
            Message::BySocket
        } else {
            Message::Batch(self.at + 4..self.at + 4 + len)
        };
        self.at += ring::padded(4 + len);
        Some(message)
    }

    /// Watches the ring for a while; true if something was published.
    fn watch(&mut self) -> bool {
        let start = Instant::now();
        let until = start + WATCH;
        let give_way = self.gives_way();
        // A watch that gives way looks once a turn: 64 `pause`s took about
        // 3 µs here, all of it on the CPU the hander waits for.
        let spins = if give_way { 1 } else { 64 };
        loop {
            for _ in 0..spins {
                if ring::nonempty(self.ring) {
                    return true;
                }
                if !give_way {
                    std::hint::spin_loop();
                }
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            if give_way {
                std::thread::yield_now();
            } else if now >= start + WATCH_PEER
                && (self.peer_waits_for_a_cpu() || self.hander_waits_for_this_cpu())
            {
                return false;
            }
        }
    }

    /// Whether this watch yields its CPU at each turn: the thread that
    /// handed the last batch last ran on this very CPU, so its next step
    /// (reading this worker's outcome, handing the next batch) waits for
    /// it. Ending the watch instead (after [`WATCH_PEER`], as until
    /// 2026-12-04) held that thread off for 10 µs and then left the worker
    /// asleep, so that the next batch paid a wake-up: under a CPU hog, the
    /// `apply` round trip's slow mode (caller and worker on one CPU) took
    /// 16.4-20.4 µs, now 3.8-3.9 with the caller's watch yielding at once
    /// too (`core::teller_waits_here`; 5.8 without); Python's
    /// `corral.Pool.apply` 30-42 µs, now 6.2 (medians, alternating runs).
    /// Every [`PROBE`]th such watch in a row spins and sleeps as any other
    /// instead (see there).
    fn gives_way(&mut self) -> bool {
        if !crate::spin::ran_here(self.handed_on.load(Ordering::Relaxed)) {
            self.gave_way = 0;
            return false;
        }
        self.gave_way = self.gave_way.wrapping_add(1);
        !self.gave_way.is_multiple_of(PROBE)
    }

    /// Whether a supervisor thread watches for outcomes but has left this
    /// worker's unread: it is not running, and may be waiting for the very
    /// CPU this watch holds (on a busy machine), so the watch ends.
    fn peer_waits_for_a_cpu(&self) -> bool {
        // A watcher asleep on the bell, rung, is on its way; it waits for
        // this CPU only if it sleeps on it.
        match self.sleeper.load(Ordering::Relaxed) {
            0 => self.watching.load(Ordering::Relaxed) > 0 && ring::nonempty(self.results),
            mark => crate::spin::ran_here(mark) && ring::nonempty(self.results),
        }
    }

    /// Whether the supervisor thread that handed the last batch, not
    /// watching for outcomes, last ran on this very CPU: it is not running
    /// now, and may wait for this CPU (on a busy machine, the worker it
    /// woke took the CPU from it), so the watch ends.
    fn hander_waits_for_this_cpu(&self) -> bool {
        (self.watching.load(Ordering::Relaxed) == 0 || self.sleeper.load(Ordering::Relaxed) != 0)
            && crate::spin::ran_here(self.handed_on.load(Ordering::Relaxed))
    }

    /// Sleeps in the socket until the supervisor wakes it or sends a batch
    /// there; `None` if the pool is gone.
    fn sleep(&mut self) -> Option<()> {
        if !ring::must_sleep(self.ring, self.asleep) {
            return Some(());
        }
        let (frame, fds) = self.conn.recv_frame().ok()?;
        self.asleep.store(0, Ordering::Relaxed);
        // An empty frame only wakes.
        if !frame.is_empty() {
            self.early.push_back((frame, fds));
        }
        Some(())
    }

    /// The batch a marker stands for.
    fn by_socket(&mut self) -> Option<(&[u8], Vec<OwnedFd>)> {
        let (frame, fds) = match self.early.pop_front() {
            Some(batch) => batch,
            None => loop {
                let (frame, fds) = self.conn.recv_frame().ok()?;
                if !frame.is_empty() {
                    break (frame, fds);
                }
            },
        };
        self.held = frame;
        Some((&self.held, fds))
    }
}

/// Runs the initializer; false (its failure told) if the worker must stop.
fn run_init(verified: &Verified, rec: &mut Recorder<'_>, init: InitMsg) -> bool {
    let end = (init.arg.len() as u32).to_le_bytes();
    let fds: Vec<OwnedFd> = Arc::try_unwrap(init.fds.0).unwrap_or_default();
    let count = (fds.len() as u32).to_le_bytes();
    let job = JobMsg {
        entry: init.entry,
        func: init.func,
        ends: &end,
        fds: if fds.is_empty() { &[] } else { &count },
        args: &init.arg,
    };
    let entry = verified.entry::<JobEntry>(init.entry);
    if entry(verified, init.func, &job, &mut fds.into_iter(), rec).is_err() {
        return false;
    }
    if let Some(outcome) = results::entries(&rec.msg[FRAME_HEADER..]).next()
        && outcome.tag != TAG_VALUE
    {
        let _ = rec.send(None);
        return false;
    }
    true
}

/// Runs one batch; `Err` if the supervisor is gone.
fn run_batch(
    verified: &Verified,
    rec: &mut Recorder<'_>,
    batch: BatchMsg<'_>,
    fds: Vec<OwnedFd>,
) -> Result<(), crate::SendError> {
    let region = rec.region;
    head(region).started.store(0, Ordering::Relaxed);
    head(region).finished.store(0, Ordering::Relaxed);
    head(region).seq.store(batch.seq, Ordering::Release);
    head(region).told_on.store(0, Ordering::Relaxed);
    rec.next = 0;
    rec.timed = batch.timed;
    rec.seq = batch.seq;
    // Given to the batch before it was handed (`send_batch`).
    rec.skips = head(region)
        .skips
        .iter()
        .find(|t| t.seq.load(Ordering::Relaxed) == batch.seq);
    rec.flush_at = sys::monotonic_coarse_ns() + FLUSH_NS;
    let mut fds = fds.into_iter();
    for job in &batch.jobs {
        let entry = verified.entry::<JobEntry>(job.entry);
        entry(verified, job.func, job, &mut fds, rec)?;
    }
    rec.msg.truncate(FRAME_HEADER);
    let at = results::open_entry(&mut rec.msg, batch.seq, 0);
    results::close_entry(&mut rec.msg, at, TAG_DONE);
    rec.publish()?;
    rec.announce()
}

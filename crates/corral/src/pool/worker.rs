//! The worker process: runs batches of items and reports every outcome.
//!
//! # Protocol
//!
//! The supervisor sends a *batch* per frame ([`BatchMsg`]): a sequence
//! number and items, each an entry point, a function, an encoded argument and
//! a count of descriptors (the frame's `SCM_RIGHTS`, in item order). The
//! worker answers with *result* frames: `[seq: u64 LE][done: u8]` then
//! records `[index: u32 LE][tag: u8][len: u32 LE][bytes]`, where `index` is
//! the item's position in its batch. `done` marks the batch's last frame.
//!
//! # What survives a crash
//!
//! Each worker shares a [`SharedRegion`] with its supervisor. Before an item
//! runs, the worker publishes the batch sequence, how many items it has
//! started and when the current one started; after it runs, the record is
//! appended to the region's *arena* before it joins the next result frame.
//! If the worker dies, whatever killed it, the supervisor reads the arena:
//! finished items keep their results, the item that was running is the one
//! that failed, and unstarted items run elsewhere. Records that reached both
//! the socket and the arena are told apart by their index.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::start::bootstrap;
use crate::start::orphans::TREE_ENV;
use crate::sys::code::{Verified, code_pointer};
use crate::sys::{self, SharedRegion};
use crate::{Connection, Data, wire};

sys::shared_layout! {
    /// The head of a pool worker's shared region: the progress the worker
    /// publishes and the supervisor reads (also after the worker died), and
    /// the skip list the supervisor writes. The arena of records follows.
    pub(super) struct WorkerHead {
        /// Sequence number of the batch being run (0: none yet;
        /// [`SEQ_INIT_FAILED`] while the initializer runs).
        pub(super) seq: AtomicU64,
        /// How many items of that batch have started.
        pub(super) started: AtomicU64,
        /// When the current item started ([`sys::monotonic_ns`]).
        pub(super) start_ns: AtomicU64,
        /// Bytes of records in the arena.
        pub(super) arena_len: AtomicU64,
        /// 1 once an allocation failure aborted the worker.
        pub(super) out_of_memory: AtomicU64,
        /// How many items of the batch have finished (their record written).
        pub(super) finished: AtomicU64,
        reserved: AtomicU64,
        /// How many entries of `skips` are in use.
        pub(super) skip_count: AtomicU64,
        /// Items the supervisor cancelled after handing them out; the worker
        /// skips them.
        pub(super) skips: [Skip; CANCEL_SLOTS],
    }
}

sys::shared_layout! {
    /// One skip-list entry: positions `range` (see [`skip_range`]) of batch
    /// `seq`.
    pub(super) struct Skip {
        pub(super) seq: AtomicU64,
        pub(super) range: AtomicU64,
    }
}

/// Room for that many skip entries.
pub(super) const CANCEL_SLOTS: usize = 28;
/// Where the arena starts.
pub(super) const ARENA_OFFSET: usize = size_of::<WorkerHead>();
/// Arena capacity: results beyond it are flushed to the socket first.
pub(super) const ARENA_BYTES: usize = 1 << 20;
/// Size of a worker's shared region.
pub(super) const REGION_BYTES: usize = ARENA_OFFSET + ARENA_BYTES;

/// Result-frame sequence number: the worker is initialized and waiting.
pub(super) const SEQ_READY: u64 = u64::MAX - 1;
/// Result-frame sequence number: the initializer failed (one record).
pub(super) const SEQ_INIT_FAILED: u64 = u64::MAX;

/// Record tag: an encoded value.
pub(super) const TAG_VALUE: u8 = 0;
/// Record tag: a postcard-encoded [`crate::RemotePanic`].
pub(super) const TAG_PANIC: u8 = 1;
/// Record tag: a codec error message (UTF-8).
pub(super) const TAG_CODEC: u8 = 2;
/// Record tag: skipped, the supervisor cancelled it (no body).
pub(super) const TAG_CANCELLED: u8 = 3;

/// Bytes before the records of a result frame.
pub(super) const FRAME_HEADER: usize = 9;
/// Bytes before the payload of a record.
pub(super) const RECORD_HEADER: usize = 9;

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
    sys::code::offset_of(job_trampoline::<A, R> as JobEntry as usize)
}

/// Runs every item of a job: decodes each argument, calls `f`, records the
/// outcome. Monomorphized, so a job of small items pays no dynamic dispatch
/// per item.
fn job_trampoline<A: Data, R: Data>(
    verified: &Verified,
    func: i64,
    job: &JobMsg<'_>,
    fds: &mut std::vec::IntoIter<OwnedFd>,
    rec: &mut Recorder<'_>,
) -> Result<(), crate::SendError> {
    run_items(job, fds, rec, verified.func::<A, R>(func))
}

/// The entry offset for [`Pool::map_pod`](crate::Pool::map_pod) jobs of
/// `fn(A) -> R`.
pub(super) fn pod_entry_offset<A: Pod + Send, R: Pod + Send>() -> i64 {
    sys::code::offset_of(pod_trampoline::<A, R> as JobEntry as usize)
}

/// Runs [`PodChunk`] items: each applies `f` to a range of a shared input
/// array, writing a shared output array.
fn pod_trampoline<A: Pod + Send, R: Pod + Send>(
    verified: &Verified,
    func: i64,
    job: &JobMsg<'_>,
    fds: &mut std::vec::IntoIter<OwnedFd>,
    rec: &mut Recorder<'_>,
) -> Result<(), crate::SendError> {
    let f = verified.func::<A, R>(func);
    run_items(job, fds, rec, move |chunk: PodChunk<A, R>| chunk.run(f))
}

/// A range of a `map_pod`: its items are read from `input` and its results
/// written to `output`, both shared byte arrays (the pool's reused scratch
/// space, which a worker maps once: see [`mapped`]); nothing is encoded per
/// item.
#[derive(Serialize, Deserialize)]
pub(super) struct PodChunk<A, R> {
    pub(super) input: RegionFd,
    pub(super) output: RegionFd,
    pub(super) start: u64,
    pub(super) len: u64,
    #[serde(skip)]
    pub(super) types: std::marker::PhantomData<fn(A) -> R>,
}

impl<A: Pod, R: Pod> PodChunk<A, R> {
    /// Items copied in and results copied out this many at a time.
    const BLOCK: usize = 4096;

    fn run(self, f: fn(A) -> R) {
        let input = mapped(self.input.0).expect("mapping map_pod's input");
        let output = mapped(self.output.0).expect("mapping map_pod's output");
        let end = (self.start + self.len) as usize;
        let (a, r) = (size_of::<A>(), size_of::<R>());
        // On the heap: a block of a large `A` would not fit a stack.
        let mut items: Vec<A> = Vec::new();
        items.resize(Self::BLOCK, A::zeroed());
        let mut results = Vec::with_capacity(Self::BLOCK);
        for from in (self.start as usize..end).step_by(Self::BLOCK) {
            let n = Self::BLOCK.min(end - from);
            input.load_bytes_into(from * a, bytemuck::cast_slice_mut(&mut items[..n]));
            results.clear();
            results.extend(items[..n].iter().map(|&x| f(x)));
            output.store_bytes_at(from * r, bytemuck::cast_slice(&results));
        }
    }
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
    let mut maps = MAPPED.lock().unwrap_or_else(|p| p.into_inner());
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
        if let Some(value) = value {
            let _ = bootstrap::catch_panic_hooked(move || drop(value));
        }
    }
    Ok(())
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

/// How long a finished item's outcome may wait for the ones after it in its
/// batch before it is sent on its own.
const FLUSH_NS: u64 = 2_000_000;

/// The head of a worker's region.
pub(super) fn head(region: &SharedRegion) -> &WorkerHead {
    region.layout::<WorkerHead>()
}

/// A skip-list entry's positions `range` of a batch, as one word: the
/// first in the low half, the end (excluded) in the high half.
pub(super) fn skip_range(range: &std::ops::Range<usize>) -> u64 {
    (range.start as u64 & 0xffff_ffff) | ((range.end as u64) << 32)
}

/// Whether position `at` is in a skip-list entry's range.
#[inline]
fn in_skip_range(word: u64, at: u32) -> bool {
    let (from, to) = (word as u32, (word >> 32) as u32);
    from <= at && at < to
}

/// Where a worker writes outcomes: the next result frame, mirrored in the
/// shared arena, with the progress words the supervisor watches.
pub(crate) struct Recorder<'a> {
    region: &'a SharedRegion,
    cancels: &'a AtomicU64,
    seq: u64,
    started: &'a AtomicU64,
    finished: &'a AtomicU64,
    start_ns: &'a AtomicU64,
    arena_len: &'a AtomicU64,
    conn: &'a Connection,
    msg: Vec<u8>,
    arena: usize,
    next: u32,
    timed: bool,
    /// When to hand over the outcomes gathered so far (coarse clock, ns).
    flush_at: u64,
}

impl Recorder<'_> {
    /// Announces the next item; returns where its record starts.
    #[inline]
    fn begin(&mut self) -> usize {
        if self.timed {
            self.start_ns.store(sys::monotonic_ns(), Ordering::Relaxed);
        }
        // SeqCst, paired with the supervisor's in `Shared::cancel`: either
        // it sees this item started (and kills the worker), or this worker
        // sees the cancellation (and skips the item).
        self.started
            .store(u64::from(self.next) + 1, Ordering::SeqCst);
        open_record(&mut self.msg, self.next)
    }

    /// Whether the supervisor cancelled the item just announced.
    #[inline]
    fn cancelled(&self) -> bool {
        let n = self.cancels.load(Ordering::SeqCst) as usize;
        n > 0
            && (0..n.min(CANCEL_SLOTS)).any(|k| {
                let skip = &head(self.region).skips[k];
                skip.seq.load(Ordering::Relaxed) == self.seq
                    && in_skip_range(skip.range.load(Ordering::Relaxed), self.next)
            })
    }

    /// Seals the record started at `at`, mirrors it in the arena (or, if
    /// the arena is full, sends what has accumulated).
    #[inline]
    fn end(&mut self, at: usize, tag: u8) -> Result<(), crate::SendError> {
        close_record(&mut self.msg, at, tag);
        let record = &self.msg[at..];
        let now = sys::monotonic_coarse_ns();
        if self.arena + record.len() <= ARENA_BYTES && now < self.flush_at {
            self.region.store_bytes(ARENA_OFFSET + self.arena, record);
            self.arena += record.len();
            self.arena_len.store(self.arena as u64, Ordering::Release);
        } else {
            // The arena is full, or outcomes have waited long enough (slow
            // items are reported one by one, fast ones together): hand
            // everything over now. Until the frame is out, the arena still
            // holds what it held; clear it only after.
            self.conn.send_bytes(&self.msg)?;
            self.msg.truncate(FRAME_HEADER);
            self.arena = 0;
            self.arena_len.store(0, Ordering::Release);
            self.flush_at = now + FLUSH_NS;
        }
        self.next += 1;
        self.finished.store(u64::from(self.next), Ordering::Release);
        Ok(())
    }
}

/// When panics abort: records the panic as the outcome of the running item,
/// in the arena, where the supervisor looks when the worker dies.
fn report_abort(region: &SharedRegion, panic: &crate::RemotePanic) {
    let started = head(region).started.load(Ordering::Relaxed);
    let finished = head(region).finished.load(Ordering::Relaxed);
    if started == 0 || started <= finished {
        return; // not inside an item (the initializer reports its own way)
    }
    let mut record = Vec::new();
    let at = open_record(&mut record, (started - 1) as u32);
    if wire::encode_plain_into(panic, &mut record).is_err() {
        return;
    }
    close_record(&mut record, at, TAG_PANIC);
    let arena = head(region).arena_len.load(Ordering::Relaxed) as usize;
    if arena + record.len() <= ARENA_BYTES {
        region.store_bytes(ARENA_OFFSET + arena, &record);
        head(region)
            .arena_len
            .store((arena + record.len()) as u64, Ordering::Release);
        head(region).finished.store(started, Ordering::Release);
    }
}

/// Appends a record header for item `index`; returns where it starts.
#[inline]
fn open_record(out: &mut Vec<u8>, index: u32) -> usize {
    let at = out.len();
    let i = index.to_le_bytes();
    out.extend_from_slice(&[i[0], i[1], i[2], i[3], 0, 0, 0, 0, 0]);
    at
}

/// Fills in the tag and length of the record opened at `at`.
#[inline]
fn close_record(out: &mut [u8], at: usize, tag: u8) {
    let len = (out.len() - at - RECORD_HEADER) as u32;
    out[at + 4] = tag;
    out[at + 5..at + 9].copy_from_slice(&len.to_le_bytes());
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
        identity,
        init,
        memory_limit,
        max_tasks,
    } = boot;
    let Ok(region) = SharedRegion::map(region.0) else {
        return;
    };
    // The worker keeps its region until it exits, and the abort flag must
    // stay valid for a signal handler: give it the life of the process.
    let region: &'static SharedRegion = Box::leak(Box::new(region));
    sys::flag_out_of_memory_aborts(&head(region).out_of_memory);
    // Descendants inherit the mark: one that escapes the process group and
    // outlives its parent is still known as this worker's (start/orphans.rs).
    sys::set_env_single_threaded(TREE_ENV, &std::process::id().to_string());
    // Rust's allocation-failure handler prints a backtrace when this is set,
    // which hides the failure's errno from the flag above. Task panics
    // carry their backtrace in `RemotePanic` regardless.
    sys::remove_env(std::ffi::OsStr::new("RUST_BACKTRACE"));
    let fail = |tag: u8, why: &[u8]| {
        let mut msg = frame_header(SEQ_INIT_FAILED);
        let at = open_record(&mut msg, 0);
        msg.extend_from_slice(why);
        close_record(&mut msg, at, tag);
        let _ = conn.send_bytes(&msg);
    };
    let verified = match Verified::check(&identity) {
        Ok(v) => v,
        Err(why) => return fail(TAG_CODEC, why.as_bytes()),
    };
    if let Some(limit) = memory_limit
        && let Err(e) = sys::limit_address_space(limit)
    {
        return fail(
            TAG_CODEC,
            format!("setting the memory limit: {e}").as_bytes(),
        );
    }
    // Whatever the initializer leaves in the arena belongs to no batch.
    head(region).seq.store(SEQ_INIT_FAILED, Ordering::Release);
    bootstrap::install_panic_hook();
    if cfg!(panic = "abort") {
        bootstrap::set_abort_report(Box::new(move |panic| report_abort(region, panic)));
    }
    let mut rec = Recorder {
        region,
        started: &head(region).started,
        finished: &head(region).finished,
        start_ns: &head(region).start_ns,
        arena_len: &head(region).arena_len,
        cancels: &head(region).skip_count,
        seq: SEQ_INIT_FAILED,
        conn: &conn,
        msg: frame_header(SEQ_INIT_FAILED),
        arena: 0,
        next: 0,
        timed: false,
        // The initializer's outcome is reported only if it fails.
        flush_at: u64::MAX,
    };
    if let Some(init) = init {
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
        if entry(&verified, init.func, &job, &mut fds.into_iter(), &mut rec).is_err() {
            return;
        }
        if let Some(record) = records(&rec.msg[FRAME_HEADER..]).next()
            && record.tag != TAG_VALUE
        {
            let _ = conn.send_bytes(&rec.msg);
            return;
        }
    }
    if conn.send_bytes(&frame_header(SEQ_READY)).is_err() {
        return;
    }
    let mut left = max_tasks.unwrap_or(u64::MAX);
    while left > 0 {
        let Ok((frame, fds)) = conn.recv_frame() else {
            return; // the pool is gone or closed us
        };
        let Ok(batch) = postcard::from_bytes::<BatchMsg<'_>>(&frame) else {
            return; // cannot happen between two copies of one binary
        };
        let items: usize = batch.jobs.iter().map(JobMsg::len).sum();
        if run_batch(&verified, &mut rec, batch, fds).is_err() {
            return;
        }
        left = left.saturating_sub(items as u64);
    }
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
    head(region).arena_len.store(0, Ordering::Relaxed);
    head(region).seq.store(batch.seq, Ordering::Release);
    rec.msg.clear();
    let items: usize = batch.jobs.iter().map(JobMsg::len).sum();
    rec.msg
        .reserve((FRAME_HEADER + items * (RECORD_HEADER + 8)).min(ARENA_BYTES));
    rec.msg.extend_from_slice(&batch.seq.to_le_bytes());
    rec.msg.push(0);
    rec.arena = 0;
    rec.next = 0;
    rec.timed = batch.timed;
    rec.seq = batch.seq;
    rec.flush_at = sys::monotonic_coarse_ns() + FLUSH_NS;
    let mut fds = fds.into_iter();
    for job in &batch.jobs {
        let entry = verified.entry::<JobEntry>(job.entry);
        entry(verified, job.func, job, &mut fds, rec)?;
    }
    rec.msg[8] = 1;
    rec.conn.send_bytes(&rec.msg)?;
    head(region).arena_len.store(0, Ordering::Release);
    Ok(())
}

/// One record parsed out of a result frame or the arena.
#[derive(Debug)]
pub(super) struct Record<'a> {
    pub(super) index: u32,
    pub(super) tag: u8,
    pub(super) body: &'a [u8],
}

/// Splits records; stops at the first malformed one.
pub(super) fn records(mut bytes: &[u8]) -> impl Iterator<Item = Record<'_>> {
    std::iter::from_fn(move || {
        if bytes.len() < RECORD_HEADER {
            return None;
        }
        let index = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        let tag = bytes[4];
        let len = u32::from_le_bytes(bytes[5..9].try_into().expect("4 bytes")) as usize;
        let body = bytes.get(RECORD_HEADER..RECORD_HEADER + len)?;
        bytes = &bytes[RECORD_HEADER + len..];
        Some(Record { index, tag, body })
    })
}

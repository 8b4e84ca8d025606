//! The work a pool runs, as both engines see it: jobs (items that share a
//! function and a sink), the sinks their outcomes go to, and which items a
//! cancellation covers. The local supervisor (`core`) and the cluster's
//! client (`crate::cluster`) take jobs through [`Engine`](super::engine::Engine)
//! and report each item's outcome to its job's sink.

use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use smallvec::{SmallVec, smallvec};

use crate::{Data, RemotePanic, TaskError, wire};

/// An outcome on its way to a sink.
#[derive(Debug)]
pub(crate) enum Raw<'a> {
    Value(&'a [u8]),
    Panic(&'a [u8]),
    Codec(&'a [u8]),
    /// Boxed: outcomes travel by the thousand, and errors are rare.
    Failed(Box<TaskError>),
}

impl Raw<'_> {
    /// Decodes the outcome as the task's result.
    pub(crate) fn decode<R: Data>(self) -> Result<R, TaskError> {
        match self {
            Raw::Value(bytes) => wire::decode_plain(bytes)
                .map_err(|e| TaskError::Codec(format!("the result: {}", e.message()))),
            Raw::Panic(bytes) => Err(match postcard::from_bytes::<RemotePanic>(bytes) {
                Ok(panic) => TaskError::Panicked(panic),
                Err(e) => TaskError::Codec(format!("a panic report: {e}")),
            }),
            Raw::Codec(text) => Err(TaskError::Codec(String::from_utf8_lossy(text).into_owned())),
            Raw::Failed(e) => Err(*e),
        }
    }
    /// The outcome as owned data, a value still encoded: for forwarding it
    /// to another machine (a cluster node's results).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn into_owned(self) -> Result<Vec<u8>, TaskError> {
        match self {
            Raw::Value(bytes) => Ok(bytes.to_vec()),
            other => Err(other
                .decode::<()>()
                .err()
                .unwrap_or_else(|| TaskError::Codec("a failure without an error".into()))),
        }
    }
}

/// Where the outcomes of a job's items go (a task's slot, a map's vector, an
/// iterator's buffer). Items are numbered by the sink.
pub(crate) trait Sink: Send + Sync {
    /// Takes outcomes of some of its items.
    fn deliver(&self, outcomes: &mut dyn Iterator<Item = (u32, Raw<'_>)>);
    /// Whether item `index` still needs to run (false once cancelled).
    fn wanted(&self, index: u32) -> bool;
    /// Whether none of its items needs to run any more (the whole call
    /// was cancelled or abandoned).
    fn cancelled(&self) -> bool {
        false
    }
    /// Gives up on every item not ended yet (each ends as cancelled).
    fn abandon(&self) {}
    /// Item(s) of a one-item job were handed to the worker with this pid.
    fn assigned(&self, _pid: u32) {}
}

/// Hands outcomes to `sink`, guarding the user code decoding runs (a
/// result's `Deserialize`) on whichever thread reads them, the dispatcher's
/// or a waiting caller's: a panic there fails the item being decoded (the
/// last one `outcomes` gave, `last`) with a codec error, and the later
/// outcomes are handed on. One guard a call, not one an item: a guard
/// around each decode, or an adapter recording each item's number, cost a
/// `map` of small items 15-25 % of its rate.
pub(crate) fn deliver_guarded<'a, I: Iterator<Item = (u32, Raw<'a>)>>(
    sink: &dyn Sink,
    outcomes: &mut I,
    last: impl Fn(&I) -> Option<u32>,
) {
    use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
    loop {
        let Err(payload) = catch_unwind(AssertUnwindSafe(|| sink.deliver(&mut *outcomes))) else {
            return;
        };
        // Not in an outcome's decoding: a bug of the sink's own.
        let Some(index) = last(outcomes) else {
            resume_unwind(payload)
        };
        let message = crate::error::panic_message(&*payload);
        // The payload may itself panic on drop.
        std::mem::forget(payload);
        let error = TaskError::Codec(format!("{message} (a panic while decoding the result)"));
        sink.deliver(&mut std::iter::once((index, Raw::Failed(Box::new(error)))));
    }
}

/// Which items a cancellation covers.
#[derive(Clone, Copy)]
pub(crate) enum Cancel<'a> {
    /// One item of a sink.
    Item(&'a Arc<dyn Sink>, u32),
    /// Every item of a sink.
    Sink(&'a Arc<dyn Sink>),
    /// Every item the pool holds.
    All,
}

impl Cancel<'_> {
    /// The positions of `job` it covers.
    pub(super) fn covers(&self, job: &Job) -> Option<Range<usize>> {
        match *self {
            Cancel::Item(sink, index) if Arc::ptr_eq(&job.sink, sink) => (0..job.len())
                .find(|&p| job.index(p) == index)
                .map(|p| p..p + 1),
            Cancel::Sink(sink) if Arc::ptr_eq(&job.sink, sink) => Some(0..job.len()),
            Cancel::All => Some(0..job.len()),
            _ => None,
        }
    }
}

/// A job's encoded arguments: a single task's small argument is kept
/// inline, so that submitting it allocates nothing more than its slot. (A
/// buffer allocated by the caller and freed by the pool thread is glibc's
/// slowest pattern: with it and the one-entry [`Ends`] on the heap, a task
/// cost 585–795 ns of CPU in all, without them 385–470; `bench/README.md`.)
pub(crate) type Args = SmallVec<[u8; 16]>;

/// Where each item's argument ends in [`Args`] (inline for a few items).
pub(crate) type Ends = SmallVec<[u32; 4]>;

/// Items that share a function and a sink, in flight or waiting.
pub(crate) struct Job {
    pub(crate) entry: i64,
    pub(crate) func: i64,
    /// The encoded arguments, back to back.
    pub(crate) args: Args,
    /// End of each item's argument in `args`.
    pub(crate) ends: Ends,
    /// Each item's number in the sink; empty: numbered from 0 (a single
    /// task's job, which so costs no allocation). Read by [`Job::index`].
    /// (Boxed slices, not vectors, keep a job within 128 bytes, which the
    /// compiler moves inline: a job is moved about five times on its way
    /// to a worker, and at 144 bytes each move was a call to `memcpy`,
    /// most of the ten a single task made; `bench/README.md`.)
    pub(crate) indices: Box<[u32]>,
    /// Each item's descriptors (empty: none for any item).
    pub(crate) fds: Box<[Vec<OwnedFd>]>,
    pub(crate) sink: Arc<dyn Sink>,
    /// The items' own time limit (`None`: the pool's `task_timeout`).
    pub(crate) timeout: Option<Duration>,
}

const _: () = assert!(std::mem::size_of::<Job>() <= 128);

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("items", &self.len()).finish()
    }
}

/// A job being filled item by item (`map`, `imap`, `map_pod`): its tables
/// grow as plain vectors (the codec's fast path) and move into the job once.
pub(crate) struct JobBuilder {
    entry: i64,
    func: i64,
    pub(crate) args: Vec<u8>,
    pub(crate) ends: Vec<u32>,
    pub(crate) indices: Vec<u32>,
    pub(crate) fds: Vec<Vec<OwnedFd>>,
    pub(crate) sink: Arc<dyn Sink>,
}

impl JobBuilder {
    /// An empty job for items of `sink`, with room for `items`.
    pub(crate) fn new(entry: i64, func: i64, items: usize, sink: Arc<dyn Sink>) -> JobBuilder {
        JobBuilder {
            entry,
            func,
            args: Vec::new(),
            ends: Vec::with_capacity(items),
            indices: Vec::with_capacity(items),
            fds: Vec::new(),
            sink,
        }
    }

    /// How many items it holds.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The job (with the pool's time limit).
    pub(crate) fn build(self) -> Job {
        Job {
            entry: self.entry,
            func: self.func,
            args: Args::from_vec(self.args),
            ends: Ends::from_vec(self.ends),
            indices: self.indices.into_boxed_slice(),
            fds: self.fds.into_boxed_slice(),
            sink: self.sink,
            timeout: None,
        }
    }
}

impl Job {
    /// A job of items already encoded back to back (a cluster node's,
    /// from the stream), numbered from 0.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn encoded(
        (entry, func): (i64, i64),
        args: Vec<u8>,
        ends: Vec<u32>,
        sink: Arc<dyn Sink>,
        timeout: Option<Duration>,
    ) -> Job {
        Job {
            entry,
            func,
            indices: Box::default(),
            args: Args::from_vec(args),
            ends: Ends::from_vec(ends),
            fds: Box::default(),
            sink,
            timeout,
        }
    }

    /// A job of one item.
    pub(super) fn single(
        (entry, func): (i64, i64),
        args: Args,
        fds: Vec<OwnedFd>,
        sink: Arc<dyn Sink>,
        timeout: Option<Duration>,
    ) -> Job {
        let fds = if fds.is_empty() {
            Box::default()
        } else {
            Box::new([fds]) as Box<[_]>
        };
        Job {
            entry,
            func,
            ends: smallvec![args.len() as u32],
            args,
            indices: Box::default(),
            fds,
            sink,
            timeout,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn arg(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.args[start..self.ends[i] as usize]
    }

    /// A job of the items at `positions` (moving their descriptors).
    pub(super) fn subset(&mut self, positions: &[usize]) -> Job {
        let mut out = JobBuilder::new(self.entry, self.func, positions.len(), self.sink.clone());
        for &p in positions {
            out.args.extend_from_slice(self.arg(p));
            out.ends.push(out.args.len() as u32);
            out.indices.push(self.index(p));
            if !self.fds.is_empty() {
                out.fds.push(std::mem::take(&mut self.fds[p]));
            }
        }
        if out.fds.iter().all(Vec::is_empty) {
            out.fds.clear();
        }
        Job {
            timeout: self.timeout,
            ..out.build()
        }
    }

    /// How many of its leading items fit in `items` more items (`None`: any
    /// number) carrying at most `fds` descriptors.
    pub(super) fn fits(&self, items: Option<usize>, fds: usize) -> usize {
        let most = items.map_or(self.len(), |n| n.min(self.len()));
        if self.fds.is_empty() {
            return most;
        }
        let mut carried = 0;
        self.fds[..most]
            .iter()
            .take_while(|f| {
                carried += f.len();
                carried <= fds
            })
            .count()
    }

    /// Splits off the first `n` items as a job of their own.
    pub(super) fn take_front(&mut self, n: usize) -> Job {
        let positions: Vec<usize> = (0..n).collect();
        let front = self.subset(&positions);
        let rest: Vec<usize> = (n..self.len()).collect();
        *self = self.subset(&rest);
        front
    }

    pub(crate) fn fail_all(&self, error: &TaskError) {
        let mut it = (0..self.len()).map(|p| (self.index(p), Raw::Failed(Box::new(error.clone()))));
        self.sink.deliver(&mut it);
    }

    /// The number in its sink of the item at position `p`. A list, when
    /// there is one, numbers every item: a short one is a bug, not a job
    /// numbered from 0 past its end.
    pub(crate) fn index(&self, p: usize) -> u32 {
        if self.indices.is_empty() {
            p as u32
        } else {
            self.indices[p]
        }
    }

    /// Takes every item's number in its sink, in position order.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn take_indices(&mut self) -> Vec<u32> {
        if self.indices.is_empty() {
            (0..self.len() as u32).collect()
        } else {
            std::mem::take(&mut self.indices).into_vec()
        }
    }
}

/// Why an engine takes no new jobs, if it takes none: the failure that
/// broke it, else `PoolClosed` once it is not open. Both engines admit
/// jobs by this rule.
pub(crate) fn refusal(broken: Option<&TaskError>, open: bool) -> Option<TaskError> {
    match (broken, open) {
        (Some(error), _) => Some(error.clone()),
        (None, true) => None,
        (None, false) => Some(TaskError::PoolClosed),
    }
}

/// Ends every item of `jobs` with `error`.
pub(crate) fn fail_jobs(jobs: &[Job], error: &TaskError) {
    for job in jobs {
        job.fail_all(error);
    }
}

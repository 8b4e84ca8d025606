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

use super::results;
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
            Raw::Value(bytes) => decode_value(bytes),
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

/// Decodes a task's result from its value's bytes.
#[inline]
pub(crate) fn decode_value<R: Data>(bytes: &[u8]) -> Result<R, TaskError> {
    wire::decode_plain(bytes).map_err(|e| TaskError::Codec(format!("the result: {}", e.message())))
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
    /// Takes the values of a run of a job's items, read straight from a
    /// pack. A sink that takes many overrides it with a loop over
    /// [`Values::next_value`], monomorphized for its type, rather than a
    /// dynamic call an item.
    fn deliver_values(&self, values: &mut Values<'_, '_>) {
        self.deliver(values);
    }
}

/// The values of a run of one job's items, one after another in a pack's
/// body (`results::pack_next`), each item counted once: an item that has
/// an outcome already (`got`) is passed over.
pub(crate) struct Values<'a, 'b> {
    job: &'a Job,
    /// The job's next item, and the end of the run.
    pos: usize,
    end: usize,
    body: &'b [u8],
    /// The job's items that have an outcome.
    got: &'a mut [bool],
    /// How many values it gave.
    taken: usize,
    /// The number of the item it gave last.
    last: Option<u32>,
}

impl<'a, 'b> Values<'a, 'b> {
    /// The values in `body` of `job`'s items from `pos` on, up to the
    /// job's end (or the body's).
    pub(crate) fn new(job: &'a Job, pos: usize, body: &'b [u8], got: &'a mut [bool]) -> Self {
        let end = job.len().min(got.len());
        Values {
            job,
            pos,
            end,
            body,
            got,
            taken: 0,
            last: None,
        }
    }

    /// The next item's number and its value's bytes.
    #[inline]
    pub(crate) fn next_value(&mut self) -> Option<(u32, &'b [u8])> {
        while self.pos < self.end {
            let (value, rest) = results::pack_next(self.body)?;
            let pos = self.pos;
            (self.pos, self.body) = (pos + 1, rest);
            if !std::mem::replace(&mut self.got[pos], true) {
                self.taken += 1;
                let number = self.job.index(pos);
                self.last = Some(number);
                return Some((number, value));
            }
        }
        None
    }

    /// Passes over the values the sink did not take (it stops early only
    /// when cancelled): each still counts as its item's outcome.
    pub(crate) fn finish(&mut self) {
        while self.next_value().is_some() {}
    }

    /// How many items it gave an outcome.
    pub(crate) fn taken(&self) -> usize {
        self.taken
    }

    /// Once the run is over: the job's end and the pack's bytes after it
    /// (the next job's values), if it reached the job's end with bytes
    /// left; `None` if the pack ended first (or stopped making sense).
    pub(crate) fn rest(&self) -> Option<(usize, &'b [u8])> {
        (self.pos == self.end && !self.body.is_empty()).then_some((self.pos, self.body))
    }
}

impl<'b> Iterator for Values<'_, 'b> {
    type Item = (u32, Raw<'b>);

    fn next(&mut self) -> Option<(u32, Raw<'b>)> {
        self.next_value()
            .map(|(number, value)| (number, Raw::Value(value)))
    }
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
    guarded(sink, outcomes, last, |sink, outcomes| {
        sink.deliver(outcomes)
    });
}

/// [`deliver_guarded`] for a pack's values ([`Sink::deliver_values`]).
pub(crate) fn deliver_values_guarded(sink: &dyn Sink, values: &mut Values<'_, '_>) {
    guarded(
        sink,
        values,
        |v| v.last,
        |sink, values| sink.deliver_values(values),
    );
}

/// Calls `give` until it returns without a panic; each panic fails the
/// outcome `last` names (see [`deliver_guarded`]).
fn guarded<I>(
    sink: &dyn Sink,
    outcomes: &mut I,
    last: impl Fn(&I) -> Option<u32>,
    give: impl Fn(&dyn Sink, &mut I),
) {
    use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
    loop {
        let Err(payload) = catch_unwind(AssertUnwindSafe(|| give(sink, &mut *outcomes))) else {
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

/// Each item's number in its sink (inline for a few items).
pub(crate) type Indices = SmallVec<[u32; 4]>;

/// Items that share a function and a sink, in flight or waiting.
///
/// A single task's job is one cache line (64 bytes): the function, its
/// argument inline, its sink. It crosses from the submitting thread's CPU to
/// the pool thread's and is moved a few times on its way to a worker, and
/// every line of it crosses (submit-each, alternating runs: 512 ns of CPU a
/// task at 128 bytes, 430 at 64; padded to 192 bytes, 655 against 570;
/// `bench/README.md`). Whatever else a job may have (more items, their
/// numbers, descriptors, its own time limit) is in [`Items`], boxed.
pub(crate) struct Job {
    pub(crate) entry: i64,
    pub(crate) func: i64,
    /// The encoded arguments, back to back.
    pub(crate) args: Args,
    pub(crate) sink: Arc<dyn Sink>,
    /// `None`: one item, numbered 0, its argument all of `args`, without
    /// descriptors, under the pool's time limit.
    items: Option<Box<Items>>,
}

const _: () = assert!(std::mem::size_of::<Job>() <= 64);

/// A job's items past the single task's case: one allocation, its tables
/// inline for a few items (a `map` of chunk size 1 makes a job of each
/// item, and the pool thread frees it: a free from another thread is
/// glibc's slowest path).
struct Items {
    /// End of each item's argument in `args`.
    ends: Ends,
    /// Each item's number in the sink; empty: numbered from 0. Read by
    /// [`Job::index`].
    indices: Indices,
    /// Each item's descriptors (empty: none for any item).
    fds: Box<[Vec<OwnedFd>]>,
    /// The items' own time limit (`None`: the pool's `task_timeout`).
    timeout: Option<Duration>,
}

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
    pub(crate) ends: Ends,
    pub(crate) indices: Indices,
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
            ends: Ends::with_capacity(items),
            indices: Indices::with_capacity(items),
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
        self.build_timed(None)
    }

    /// The job, with a time limit of its own if `timeout`.
    fn build_timed(self, timeout: Option<Duration>) -> Job {
        Job::new(
            (self.entry, self.func),
            Args::from_vec(self.args),
            Items {
                ends: self.ends,
                indices: self.indices,
                fds: self.fds.into_boxed_slice(),
                timeout,
            },
            self.sink,
        )
    }
}

impl Job {
    /// A job of `items`, boxed only if it is more than a single task.
    fn new((entry, func): (i64, i64), args: Args, items: Items, sink: Arc<dyn Sink>) -> Job {
        let single = items.ends.len() == 1
            && items.ends[0] as usize == args.len()
            && items.indices.iter().all(|&i| i == 0)
            && items.fds.iter().all(Vec::is_empty)
            && items.timeout.is_none();
        Job {
            entry,
            func,
            args,
            sink,
            items: (!single).then(|| Box::new(items)),
        }
    }

    /// A job of items already encoded back to back (a cluster node's,
    /// from the stream), numbered from 0.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn encoded(
        function: (i64, i64),
        args: Vec<u8>,
        ends: Vec<u32>,
        sink: Arc<dyn Sink>,
        timeout: Option<Duration>,
    ) -> Job {
        let items = Items {
            ends: Ends::from_vec(ends),
            indices: Indices::new(),
            fds: Box::default(),
            timeout,
        };
        Job::new(function, Args::from_vec(args), items, sink)
    }

    /// A job of one item.
    pub(super) fn single(
        function: (i64, i64),
        args: Args,
        fds: Vec<OwnedFd>,
        sink: Arc<dyn Sink>,
        timeout: Option<Duration>,
    ) -> Job {
        if fds.is_empty() && timeout.is_none() {
            let (entry, func) = function;
            return Job {
                entry,
                func,
                args,
                sink,
                items: None,
            };
        }
        let items = Items {
            ends: smallvec![args.len() as u32],
            indices: Indices::new(),
            fds: if fds.is_empty() {
                Box::default()
            } else {
                Box::new([fds])
            },
            timeout,
        };
        Job::new(function, args, items, sink)
    }

    pub(crate) fn len(&self) -> usize {
        self.items.as_ref().map_or(1, |t| t.ends.len())
    }

    /// Where item `i`'s argument ends in `args`.
    pub(crate) fn end(&self, i: usize) -> u32 {
        match &self.items {
            None => {
                debug_assert_eq!(i, 0, "a single task's job has one item");
                self.args.len() as u32
            }
            Some(t) => t.ends[i],
        }
    }

    /// Where each item's argument ends in `args`, in position order.
    pub(crate) fn ends(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len()).map(|i| self.end(i))
    }

    /// Each item's descriptors (empty: none for any item).
    pub(crate) fn fds(&self) -> &[Vec<OwnedFd>] {
        self.items.as_ref().map_or(&[], |t| &t.fds)
    }

    /// The items' own time limit (`None`: the pool's).
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.items.as_ref().and_then(|t| t.timeout)
    }

    pub(crate) fn arg(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.end(i - 1) as usize };
        &self.args[start..self.end(i) as usize]
    }

    /// A job of the items at `positions` (moving their descriptors).
    pub(super) fn subset(&mut self, positions: &[usize]) -> Job {
        let mut out = JobBuilder::new(self.entry, self.func, positions.len(), self.sink.clone());
        let has_fds = !self.fds().is_empty();
        for &p in positions {
            out.args.extend_from_slice(self.arg(p));
            out.ends.push(out.args.len() as u32);
            out.indices.push(self.index(p));
        }
        if has_fds {
            let fds = self.items.as_mut().map_or(&mut [][..], |t| &mut t.fds[..]);
            out.fds = positions
                .iter()
                .map(|&p| std::mem::take(&mut fds[p]))
                .collect();
        }
        if out.fds.iter().all(Vec::is_empty) {
            out.fds.clear();
        }
        out.build_timed(self.timeout())
    }

    /// How many of its leading items fit in `items` more items (`None`: any
    /// number) carrying at most `fds` descriptors.
    pub(super) fn fits(&self, items: Option<usize>, fds: usize) -> usize {
        let most = items.map_or(self.len(), |n| n.min(self.len()));
        if self.fds().is_empty() {
            return most;
        }
        let mut carried = 0;
        self.fds()[..most]
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
    #[inline]
    pub(crate) fn index(&self, p: usize) -> u32 {
        match &self.items {
            Some(t) if !t.indices.is_empty() => t.indices[p],
            _ => p as u32,
        }
    }

    /// Takes every item's number in its sink, in position order.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn take_indices(&mut self) -> Vec<u32> {
        match &mut self.items {
            Some(t) if !t.indices.is_empty() => std::mem::take(&mut t.indices).into_vec(),
            _ => (0..self.len() as u32).collect(),
        }
    }

    /// Its arguments and where each ends, taking them (a cluster client's,
    /// for the stream).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn take_args(&mut self) -> (Vec<u8>, Vec<u32>) {
        let ends = match &mut self.items {
            Some(t) => std::mem::take(&mut t.ends).into_vec(),
            None => vec![self.args.len() as u32],
        };
        (std::mem::take(&mut self.args).into_vec(), ends)
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Nowhere;

    impl Sink for Nowhere {
        fn deliver(&self, _: &mut dyn Iterator<Item = (u32, Raw<'_>)>) {}
        fn wanted(&self, _: u32) -> bool {
            true
        }
    }

    fn builder(items: &[(u32, &[u8])]) -> JobBuilder {
        let mut b = JobBuilder::new(1, 2, items.len(), Arc::new(Nowhere));
        for &(index, arg) in items {
            b.args.extend_from_slice(arg);
            b.ends.push(b.args.len() as u32);
            b.indices.push(index);
        }
        b
    }

    fn items(job: &Job) -> Vec<(u32, Vec<u8>)> {
        (0..job.len())
            .map(|p| (job.index(p), job.arg(p).to_vec()))
            .collect()
    }

    fn single(arg: &[u8], fds: Vec<OwnedFd>, timeout: Option<Duration>) -> Job {
        Job::single(
            (1, 2),
            Args::from_slice(arg),
            fds,
            Arc::new(Nowhere),
            timeout,
        )
    }

    #[test]
    fn a_single_task_is_one_line_and_keeps_its_number_limit_and_descriptors() {
        let plain = single(b"abc", Vec::new(), None);
        assert!(plain.items.is_none(), "nothing boxed");
        assert_eq!(items(&plain), [(0, b"abc".to_vec())]);
        assert_eq!(plain.ends().collect::<Vec<_>>(), [3]);
        let limit = Some(Duration::from_millis(5));
        let timed = single(b"x", Vec::new(), limit);
        assert_eq!((timed.timeout(), timed.len()), (limit, 1));
        assert!(timed.fds().is_empty(), "no descriptors: none for any item");
        let fd = rustix::io::dup(std::io::stdin()).expect("dup");
        let with_fd = single(b"", vec![fd], None);
        assert_eq!((with_fd.fds().len(), with_fd.fds()[0].len()), (1, 1));
        // One item built, numbered 5, keeps its number; numbered 0, is one line.
        let five = builder(&[(5, b"q")]).build();
        assert_eq!(items(&five), [(5, b"q".to_vec())]);
        assert!(builder(&[(0, b"q")]).build().items.is_none());
    }

    #[test]
    fn a_split_job_keeps_each_items_number_argument_and_time_limit() {
        let limit = Some(Duration::from_secs(1));
        let mut job = builder(&[(7, b"a"), (0, b"bb"), (9, b"")]).build_timed(limit);
        let front = job.take_front(1);
        assert_eq!(items(&front), [(7, b"a".to_vec())]);
        assert_eq!(items(&job), [(0, b"bb".to_vec()), (9, Vec::new())]);
        assert_eq!((front.timeout(), job.timeout()), (limit, limit));
        let mut untimed = builder(&[(0, b"a"), (1, b"b")]).build();
        let one = untimed.take_front(1);
        assert!(one.items.is_none(), "a plain single task again");
        assert_eq!(
            (items(&untimed), untimed.take_indices()),
            (vec![(1, b"b".to_vec())], vec![1])
        );
        assert_eq!(untimed.take_args(), (b"b".to_vec(), vec![1]));
    }

    /// A pack's body of `values`, each as `[len: u32][bytes]`.
    fn pack(values: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        for v in values {
            let at = results::open_pack_item(&mut body);
            body.extend_from_slice(v);
            results::seal_pack_item(&mut body, at);
        }
        body
    }

    fn taken(values: &mut Values<'_, '_>) -> Vec<(u32, Vec<u8>)> {
        std::iter::from_fn(|| values.next_value())
            .map(|(n, v)| (n, v.to_vec()))
            .collect()
    }

    #[test]
    fn a_packs_values_go_to_their_items_once_and_the_rest_to_the_next_job() {
        let job = builder(&[(10, b""), (11, b""), (12, b""), (13, b"")]).build();
        // From position 1 on; item 12 has its outcome already.
        let body = pack(&[b"b", b"c", b"d", b"e", b"next"]);
        let mut got = [false, false, true, false];
        let mut values = Values::new(&job, 1, &body, &mut got);
        assert_eq!(
            taken(&mut values),
            [(11, b"b".to_vec()), (13, b"d".to_vec())]
        );
        assert_eq!(values.taken(), 2);
        // The job's end reached with a value left: the next job's.
        assert_eq!(values.rest(), Some((4, &pack(&[b"e", b"next"])[..])));
        assert_eq!(got, [false, true, true, true]);
        // A pack that ends first, or stops making sense, leaves nothing.
        let mut got = [false; 4];
        let mut short = Values::new(&job, 0, &body[..9], &mut got);
        assert_eq!(taken(&mut short), [(10, b"b".to_vec())]);
        assert_eq!(short.rest(), None);
        let mut got = [false; 4];
        let mut rest = Values::new(&job, 0, &body, &mut got);
        rest.finish();
        assert_eq!((rest.taken(), got), (4, [true; 4]));
    }
}

//! `map_pod`: a map over plain data with no encoding per item: workers read
//! the items from the caller's memory and write the results into it, or,
//! where the kernel refuses that, go through shared memory (joblib's memory
//! mapping, done for Rust).
//!
//! Shared-memory code: its one `unsafe` block takes the results' memory,
//! which is not cleared first ([`sys::Landing`]), as written once every
//! range has been reported written.

use std::any::{Any, TypeId};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytemuck::Pod;

use super::worker::{self, ByPointer, ByType, PodFunc, PodInput, PodOutput, PodRan};
use super::{JobBuilder, MapSink, Pool, Sink, add_item};
use crate::poison;
use crate::{Data, Error, RawArray, TaskError, sys, trace};

impl Pool {
    /// [`map`](Pool::map) for plain data, without encoding
    /// (`bytemuck::Pod` items and results): each worker reads its ranges of
    /// `items` straight from the caller's memory and writes their results
    /// straight into the vector returned, with `process_vm_readv` and
    /// `process_vm_writev` (one copy each way, made by the kernel in the
    /// worker; MPI's "cross memory attach"). The pool's supervision is the
    /// same, per range of items (a worker takes two ranges of its share): a
    /// range whose worker dies fails the call with that error, and the
    /// items after the one it was running run on another worker; a range
    /// past the task timeout fails the call, the rest of it unrun (the
    /// timeout applies to the range). Every item runs even if some panic,
    /// as in [`map`](Pool::map); the error is the first failure in input
    /// order. The call returns only once every range has ended, and a
    /// range ends only once its worker reported it or is dead: no worker
    /// writes into the vector after that.
    ///
    /// `f` is a `fn`, or a closure that captures nothing. Passed by name (a
    /// fn item) or as such a closure, it is known by its type, and the
    /// workers' loop over a range calls it inline: a cheap `f` runs as a
    /// compiled loop would, not one indirect call per item (10M `u64`
    /// squared, medians of four alternating runs: 220–289 M/s through a
    /// pointer, 327–375 inline). A `fn` pointer is called through it. A
    /// closure that captures variables is refused
    /// ([`TaskError::InvalidArgument`]): they live in this process.
    ///
    /// Where the kernel will not let a worker reach the caller (the ptrace
    /// access check: a process made undumpable, workers without the
    /// capabilities of their caller, Yama's `ptrace_scope`, a seccomp
    /// filter), the ranges go through shared memory instead, as joblib's
    /// memory-mapped arrays do: the items are copied into it (each range
    /// sent as soon as its items are in), and the results copied out. The
    /// first refusal is remembered for the rest of the program.
    ///
    /// The results are written into a fresh vector, which is not cleared
    /// first (every value is written before the call returns it; clearing
    /// was a pass over the vector that took about a quarter of the time of
    /// a `map` of 100k `u64`), and where each first write of a page costs a
    /// page fault: above 8 MiB the vector asks for transparent huge pages
    /// (`MADV_HUGEPAGE`, a fault per 2 MiB rather than per 4 KiB, where the
    /// kernel allows them), except in a virtual machine whose kernel hands
    /// freed memory back to the host (free page reporting), where a fresh
    /// huge page costs 512 faults of the host's.
    ///
    /// # Errors
    ///
    /// The first failing range's [`TaskError`], in input order;
    /// [`TaskError::Codec`] if shared memory is needed and cannot be
    /// created; [`TaskError::InvalidArgument`] on a cluster pool (its
    /// workers share no memory with the caller) or for a closure that
    /// captures.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn square(x: f64) -> f64 { x * x }
    /// corral::init();
    /// let pool = corral::Pool::new(2).unwrap();
    /// let xs: Vec<f64> = (0..1_000_000).map(|i| i as f64).collect();
    /// let squares = pool.map_pod(square, &xs).unwrap();
    /// assert_eq!(squares[1_000], 1e6);
    /// let halves = pool.map_pod(|x: f64| x / 2.0, &xs).unwrap();
    /// assert_eq!(halves[1_000], 500.0);
    /// ```
    #[doc(alias = "memmap")]
    pub fn map_pod<A, R, F>(&self, f: F, items: &[A]) -> Result<Vec<R>, TaskError>
    where
        A: Pod + Send,
        R: Pod + Send,
        F: Fn(A) -> R + Copy + Send + 'static,
    {
        if size_of::<F>() == 0 {
            return self.pod_map(ByType(f), items);
        }
        match (&f as &dyn Any).downcast_ref::<fn(A) -> R>() {
            Some(&f) => self.pod_map(ByPointer(f), items),
            None => Err(TaskError::InvalidArgument(
                "map_pod's function captures variables of this process, which its workers \
                 cannot see: pass a fn, or a closure that captures nothing"
                    .into(),
            )),
        }
    }

    /// [`map_pod`](Pool::map_pod) with its function by type or by pointer.
    fn pod_map<A, R, P>(&self, f: P, items: &[A]) -> Result<Vec<R>, TaskError>
    where
        A: Pod + Send,
        R: Pod + Send,
        P: PodFunc<A, R>,
    {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if !self.shared.shares_memory() {
            return Err(TaskError::InvalidArgument(
                "map_pod shares memory with the workers, which a cluster pool cannot: use map"
                    .into(),
            ));
        }
        let n = items.len();
        let chunks = 2 * self.processes();
        let per = self.fit_quota(n.div_ceil(chunks)) as u64;
        let ranges: Vec<(u64, u64)> = (0..n as u64)
            .step_by(per as usize)
            .map(|start| (start, per.min(n as u64 - start)))
            .collect();
        let mut results = sys::Landing::<R>::new(n);
        let Err((error, mut rest)) = self.pod_round(f, items, &mut results, &ranges) else {
            #[expect(
                unsafe_code,
                reason = "the workers, not this process, wrote the results"
            )]
            // SAFETY: the round succeeded, so every range ended written in
            // full: in place by a worker that reported it done after its
            // last write (a range ends only once its worker reported it or
            // is dead, and a dead one's range fails the round), or through
            // shared memory, copied out by `copy_out`.
            let filled = unsafe { results.assume_filled() };
            return Ok(filled);
        };
        // A worker died in a range: the items after the one it was running
        // run all the same, as `map`'s do (their results go with the
        // call's). Each round leaves out at least the item that failed it.
        // (A range past the task timeout is not resumed: the call would
        // outlive the timeout many times over.)
        let left = |rest: &[(u64, u64)]| rest.iter().map(|r| r.1).sum::<u64>();
        while !rest.is_empty() {
            let before = left(&rest);
            rest = match self.pod_round(f, items, &mut results, &rest) {
                Ok(()) => break,
                Err((_, again)) if left(&again) < before => again,
                Err(_) => break,
            };
        }
        Err(error)
    }

    /// Runs `ranges` in place, or through shared memory where the kernel
    /// refuses; on failure, the first range's error and the items that
    /// never began of the ranges whose worker died.
    fn pod_round<A: Pod + Send, R: Pod + Send>(
        &self,
        f: impl PodFunc<A, R>,
        items: &[A],
        results: &mut sys::Landing<R>,
        ranges: &[(u64, u64)],
    ) -> Result<(), (TaskError, Vec<(u64, u64)>)> {
        let progress = Progress::new(self, ranges);
        let ran = self
            .pod_in_place(f, items, results, ranges, progress.as_ref())
            .and_then(|refused| {
                self.pod_through_shared(f, items, results, &refused, progress.as_ref())
            });
        let outcome = ran.map_err(|failed| {
            let rest = progress
                .as_ref()
                .map_or_else(Vec::new, |p| p.not_begun(&failed.resume));
            (failed.error, rest)
        });
        if let Some(p) = progress {
            self.shared.return_scratch(p.words);
        }
        outcome
    }

    /// Runs `ranges` with each worker reading its items from `items` and
    /// writing its results into `results` itself (cross memory attach: one
    /// copy each way, made by the kernel in the worker). The ranges the
    /// kernel would not let a worker do so (all of them once it has refused
    /// once).
    fn pod_in_place<A: Pod + Send, R: Pod + Send>(
        &self,
        f: impl PodFunc<A, R>,
        items: &[A],
        results: &mut sys::Landing<R>,
        ranges: &[(u64, u64)],
        progress: Option<&Progress>,
    ) -> Result<Vec<(u64, u64)>, PodFailed> {
        if CALLER_UNREACHABLE.load(Ordering::Relaxed) {
            return Ok(ranges.to_vec());
        }
        let pid = std::process::id() as i32;
        let (from, to) = (items.as_ptr() as u64, results.addr());
        // `results` is not touched here until every range has ended: a
        // range ends once its worker reported it (after its last write) or
        // is dead, so no worker writes into it after this returns.
        let ran = self.pod_jobs(f, ranges, progress, |_| {
            Ok((
                PodInput::Caller { pid, addr: from },
                PodOutput::Caller { pid, addr: to },
            ))
        })?;
        if ran.iter().any(Result::is_err) {
            return Err(PodFailed::of(ranges, &ran));
        }
        let mut refused = Vec::new();
        for (&range, ran) in ranges.iter().zip(&ran) {
            if let Ok(PodRan::Refused(_errno)) = ran {
                refused.push(range);
                if CALLER_UNREACHABLE.swap(true, Ordering::Relaxed) {
                    continue;
                }
                trace::event!(
                    info,
                    error = %std::io::Error::from_raw_os_error(*_errno),
                    "map_pod's workers may not reach the caller's memory: it goes through shared memory"
                );
            }
        }
        Ok(refused)
    }

    /// Runs `ranges` through shared memory: their items copied into a
    /// shared array, each range going out as soon as its items are there
    /// (workers start while the rest is copied), and their results copied
    /// from another into `results`.
    fn pod_through_shared<A: Pod + Send, R: Pod + Send>(
        &self,
        f: impl PodFunc<A, R>,
        items: &[A],
        results: &mut sys::Landing<R>,
        ranges: &[(u64, u64)],
        progress: Option<&Progress>,
    ) -> Result<(), PodFailed> {
        if ranges.is_empty() {
            return Ok(());
        }
        let in_bytes: &[u8] = bytemuck::cast_slice(items);
        let input = self
            .shared
            .scratch(in_bytes.len())
            .map_err(|e| PodFailed::from(in_shared_memory(e)))?;
        let output = match self.shared.scratch(results.byte_len()) {
            Ok(output) => output,
            Err(e) => {
                self.shared.return_scratch(input);
                return Err(in_shared_memory(e).into());
            }
        };
        let a = size_of::<A>();
        let ran = self.pod_jobs(f, ranges, progress, |(start, len)| {
            let (from, to) = (start as usize * a, (start + len) as usize * a);
            input.store_bytes_at(from, &in_bytes[from..to]);
            Ok((
                PodInput::Shared(worker::RegionFd(input.dup_fd()?)),
                PodOutput::Shared(worker::RegionFd(output.dup_fd()?)),
            ))
        });
        let done = matches!(&ran, Ok(ran) if ran.iter().all(|r| *r == Ok(PodRan::Done)));
        if done {
            copy_out(
                &output,
                results.bytes_mut(),
                size_of::<R>(),
                ranges,
                self.processes(),
            );
        }
        // Ranges that failed may still be written by no one: every range
        // has ended, so the scratch space is free again.
        self.shared.return_scratch(input);
        self.shared.return_scratch(output);
        let ran = ran?;
        if ran.iter().any(Result::is_err) {
            return Err(PodFailed::of(ranges, &ran));
        }
        if !done {
            // Shared arrays are never refused: a worker that says so is
            // not one of ours.
            return Err(TaskError::Codec("a worker refused map_pod's shared arrays".into()).into());
        }
        Ok(())
    }

    /// Runs each of `ranges` as one job, where `sides(range)` (called just
    /// before the range goes out) says where its items and results are: a
    /// worker's results for a range reach the others' sooner, and a
    /// failure fails only its range. What the workers said of each range,
    /// in order, or why they could not all be sent; either way only once
    /// every range has ended.
    fn pod_jobs<A: Pod + Send, R: Pod + Send>(
        &self,
        f: impl PodFunc<A, R>,
        ranges: &[(u64, u64)],
        progress: Option<&Progress>,
        mut sides: impl FnMut((u64, u64)) -> std::io::Result<(PodInput, PodOutput)>,
    ) -> Result<Vec<Result<PodRan, TaskError>>, PodFailed> {
        let sink = Arc::new(MapSink::<PodRan>::new(ranges.len(), None));
        let dyn_sink: Arc<dyn Sink> = sink.clone();
        let (entry, func) = (worker::pod_entry_offset(f), f.offset());
        for (index, &(start, len)) in ranges.iter().enumerate() {
            let watched = progress.map(|p| p.share(start)).transpose();
            let (input, output, progress) = match sides((start, len))
                .and_then(|(input, output)| Ok((input, output, watched?)))
            {
                Ok(sides) => sides,
                Err(e) => {
                    // The ranges not sent yet end here; those sent run on.
                    sink.truncate(index);
                    let _ = sink.wait(&*self.shared);
                    return Err(TaskError::Codec(format!(
                        "sharing map_pod's arrays with the workers: {e}"
                    ))
                    .into());
                }
            };
            let chunk = worker::PodChunk::<A, R> {
                input,
                output,
                start,
                len,
                progress,
                types: PhantomData,
            };
            let mut job = JobBuilder::new(entry, func, 1, dyn_sink.clone());
            add_item(&mut job, index as u32, &chunk);
            self.shared.submit(vec![job.build()]);
        }
        Ok(sink.wait_each(&*self.shared))
    }
}

impl Pool {
    /// `map` of plain numbers (`fn(T) -> T` for a primitive `T`) through
    /// [`map_pod`](Pool::map_pod)'s path, as joblib memory-maps large
    /// arrays on its own. The items back (`Err`) where `map` must encode
    /// each one: other types; a pool whose items have a time limit or a
    /// task count per worker, which `map_pod` would apply per range; a
    /// cluster pool; a forked copy.
    pub(super) fn map_numbers<A: Data, R: Data, I: IntoIterator<Item = A>>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> Result<Result<Vec<R>, TaskError>, I> {
        let numbers =
            TypeId::of::<A>() == TypeId::of::<R>() && NUMBERS.contains(&TypeId::of::<A>());
        let engine = &*self.shared;
        // (A forked copy takes `map`'s path: this one locks the pool's kept
        // buffer, which a thread of the parent may have held at the fork.)
        if !numbers
            || engine.forked().is_some()
            || !engine.shares_memory()
            || engine.task_timeout().is_some()
            || engine.max_tasks().is_some()
        {
            return Err(items);
        }
        // As `map` does: an exact size hint is trusted, and the iterator not
        // pulled past it.
        let items = items.into_iter();
        let mut buffer = self.numbers_buffer::<A>();
        match items.size_hint() {
            (low, Some(high)) if low == high => buffer.extend(items.take(low)),
            _ => buffer.extend(items),
        }
        let out = self
            .map_pod_any(&f, &buffer)
            .expect("a type of NUMBERS is mapped by map_pod_any");
        self.keep_numbers_buffer(buffer);
        Ok(*out
            .downcast::<Result<Vec<R>, TaskError>>()
            .expect("map_pod_any returns the results of `f`"))
    }

    /// An empty vector for a `map`'s items: the last `map`'s, if it mapped
    /// the same type and no other call holds it. Its pages are already
    /// faulted in, where a fresh vector of 100k `u64` (800 KB, which the
    /// allocator may map afresh for each call) costs ~200 page faults to
    /// fill: a repeated `map` of 100k ran 1.7-3x as fast with it.
    fn numbers_buffer<A: Data>(&self) -> Vec<A> {
        let kept = poison::lock(&self.numbers).take();
        match kept.map(|b| b.downcast::<Vec<A>>()) {
            Some(Ok(mut buffer)) => {
                buffer.clear();
                *buffer
            }
            _ => Vec::new(),
        }
    }

    /// Keeps `buffer` for the next `map` of plain numbers, unless it is
    /// larger than [`KEPT_NUMBERS_BYTES`] (a pool does not hold on to a
    /// big map's memory).
    fn keep_numbers_buffer<A: Data>(&self, buffer: Vec<A>) {
        if buffer.capacity() * std::mem::size_of::<A>() <= KEPT_NUMBERS_BYTES {
            *poison::lock(&self.numbers) = Some(Box::new(buffer));
        }
    }

    /// `map_pod(f, items)` for `f: fn(T) -> T` and `items: Vec<T>` with `T`
    /// one of [`NUMBERS`], its `Result<Vec<T>, TaskError>` boxed: not
    /// generic, so its twelve `map_pod`s are compiled once, not for every
    /// `map` of a program.
    fn map_pod_any(&self, f: &dyn Any, items: &dyn Any) -> Option<Box<dyn Any>> {
        macro_rules! each {
            ($($t:ty),*) => {$(
                if let (Some(&f), Some(items)) =
                    (f.downcast_ref::<fn($t) -> $t>(), items.downcast_ref::<Vec<$t>>())
                {
                    return Some(Box::new(self.map_pod(f, items)));
                }
            )*};
        }
        each!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, f32, f64);
        None
    }
}

/// The largest item vector a pool keeps from one `map` of plain numbers
/// for the next (see [`Pool::map_numbers`]).
const KEPT_NUMBERS_BYTES: usize = 4 << 20;

/// The types `map` hands to `map_pod` (see [`Pool::map_numbers`]).
const NUMBERS: [TypeId; 12] = [
    TypeId::of::<u8>(),
    TypeId::of::<u16>(),
    TypeId::of::<u32>(),
    TypeId::of::<u64>(),
    TypeId::of::<usize>(),
    TypeId::of::<i8>(),
    TypeId::of::<i16>(),
    TypeId::of::<i32>(),
    TypeId::of::<i64>(),
    TypeId::of::<isize>(),
    TypeId::of::<f32>(),
    TypeId::of::<f64>(),
];

/// Why a round of `map_pod` failed: the first failing range's error, in
/// input order, and the ranges whose worker died (or was refused the
/// caller's memory), whose items that never began still run.
struct PodFailed {
    error: TaskError,
    resume: Vec<(u64, u64)>,
}

impl PodFailed {
    /// The failure of `ranges` that ended as `ran` (one of them an error).
    fn of(ranges: &[(u64, u64)], ran: &[Result<PodRan, TaskError>]) -> PodFailed {
        let error = ran
            .iter()
            .find_map(|r| r.as_ref().err())
            .expect("a range failed")
            .clone();
        let resume = ranges
            .iter()
            .zip(ran)
            .filter(|(_, ran)| {
                matches!(
                    ran,
                    Ok(PodRan::Refused(_))
                        | Err(TaskError::WorkerLost(_) | TaskError::MemoryExceeded(_))
                )
            })
            .map(|(&range, _)| range)
            .collect();
        PodFailed { error, resume }
    }
}

impl From<TaskError> for PodFailed {
    fn from(error: TaskError) -> PodFailed {
        PodFailed {
            error,
            resume: Vec::new(),
        }
    }
}

/// Where the workers of one round of `map_pod` count the items of each
/// range they have begun (one word a range, in shared memory): after a
/// worker dies, the items after the one it was running still run.
struct Progress {
    words: RawArray<u8>,
    /// Where each range starts, in order.
    starts: Vec<u64>,
}

impl Progress {
    /// Zeroed words for `ranges`; `None` if no shared memory is to be had
    /// (then a dying worker's range simply fails).
    fn new(pool: &Pool, ranges: &[(u64, u64)]) -> Option<Progress> {
        let words = pool
            .shared
            .scratch(worker::PROGRESS_STRIDE * ranges.len())
            .ok()?;
        let progress = Progress {
            words,
            starts: ranges.iter().map(|r| r.0).collect(),
        };
        for i in 0..ranges.len() {
            progress.word(i).store(0, Ordering::Relaxed);
        }
        Some(progress)
    }

    /// The word of the `i`th range.
    fn word(&self, i: usize) -> &std::sync::atomic::AtomicU64 {
        self.words.word_at(worker::PROGRESS_STRIDE * i)
    }

    /// The word of the range starting at `start`, for its worker.
    fn share(&self, start: u64) -> std::io::Result<(worker::RegionFd, u32)> {
        let index = self.starts.binary_search(&start).expect("a range's start");
        Ok((worker::RegionFd(self.words.dup_fd()?), index as u32))
    }

    /// The part of each of `ranges` (of this round) whose items never
    /// began (read once every range has ended).
    fn not_begun(&self, ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
        ranges
            .iter()
            .filter_map(|&(start, len)| {
                let i = self.starts.binary_search(&start).expect("a range's start");
                let begun = self.word(i).load(Ordering::Relaxed).min(len);
                (begun < len).then(|| (start + begun, len - begun))
            })
            .collect()
    }
}

/// Once a worker could not reach a caller's memory (the kernel's ptrace
/// policy, a seccomp filter or an undumpable process: reasons that hold for
/// the whole program), every later `map_pod` goes through shared memory.
static CALLER_UNREACHABLE: AtomicBool = AtomicBool::new(false);

fn in_shared_memory(e: Error) -> TaskError {
    TaskError::Codec(format!("placing map_pod's arrays in shared memory: {e}"))
}

/// Copies the results of `ranges` (of `r` bytes each) from `output` into
/// `bytes`, the results' memory. Writing fresh memory costs a page fault per
/// page: a large copy is shared among threads, as rayon's `collect` shares
/// it.
fn copy_out(
    output: &RawArray<u8>,
    bytes: &mut [MaybeUninit<u8>],
    r: usize,
    ranges: &[(u64, u64)],
    threads: usize,
) {
    // Ranges that follow each other are copied as one.
    let mut runs: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(start, len) in ranges {
        match runs.last_mut() {
            Some(run) if run.0 + run.1 == start => run.1 += len,
            _ => runs.push((start, len)),
        }
    }
    for (start, len) in runs {
        let range = &mut bytes[start as usize * r..(start + len) as usize * r];
        let per = copy_part(range.len(), threads);
        in_parallel(range.chunks_mut(per), |k, part| {
            output.load_bytes_into_uninit(start as usize * r + k * per, part);
        });
    }
}

/// Below this many bytes a copy stays on the calling thread.
const PARALLEL_COPY: usize = 8 << 20;

/// The size of each part when `len` bytes are copied by up to `threads`
/// threads (at least [`PARALLEL_COPY`] bytes a part).
fn copy_part(len: usize, threads: usize) -> usize {
    len.div_ceil(threads.max(1)).max(PARALLEL_COPY)
}

/// Calls `copy(k, part)` for each part, the first on this thread and the
/// others on threads of their own: a large copy into fresh memory is bound
/// by its page faults, which threads take in parallel.
fn in_parallel<P: Send>(parts: impl Iterator<Item = P>, copy: impl Fn(usize, P) + Sync) {
    let mut parts = parts.enumerate();
    let Some((_, first)) = parts.next() else {
        return;
    };
    let copy = &copy;
    std::thread::scope(|scope| {
        let mut here = vec![(0, first)];
        for (k, part) in parts {
            // No thread to be had (a process at its thread limit): this
            // thread copies that part too.
            let (tx, rx) = std::sync::mpsc::channel();
            let helper = std::thread::Builder::new()
                .name("corral-copy".into())
                .spawn_scoped(scope, move || rx.recv().map(|part| copy(k, part)));
            match helper {
                Ok(_) => drop(tx.send(part)),
                Err(_) => here.push((k, part)),
            }
        }
        for (k, part) in here {
            copy(k, part);
        }
    });
}

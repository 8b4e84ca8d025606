//! `map_pod`: a map over plain data through shared memory, with no
//! encoding per item (joblib's memory mapping, done for Rust).

use std::marker::PhantomData;
use std::sync::Arc;

use super::{Job, MapSink, Pool, Sink, add_item, worker};
use crate::start::bootstrap::func_offset;
use crate::{Error, TaskError, sys};

impl Pool {
    /// [`map`](Pool::map) for plain data, without encoding: the items are
    /// copied once into shared memory, each worker applies `f` to its
    /// ranges in place and writes the results to a shared output, which is
    /// copied out once (joblib's memory mapping, for `bytemuck::Pod` types).
    /// The pool's supervision is the same, per range: a range whose worker
    /// dies, panics or runs past the task timeout fails the call with that
    /// error; the others are not redone.
    ///
    /// Each range goes to the workers as soon as its items are in shared
    /// memory, so they start while the rest is copied. The results are
    /// written into a fresh vector, where each first write of a page costs
    /// a page fault: above 8 MiB the vector asks for transparent huge pages
    /// (`MADV_HUGEPAGE`, a fault per 2 MiB rather than per 4 KiB, where the
    /// kernel allows them) and the copy is split among short-lived threads,
    /// one per worker at most.
    ///
    /// # Errors
    ///
    /// The first failing range's [`TaskError`], in input order;
    /// [`TaskError::Codec`] if shared memory cannot be created.
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
    /// ```
    #[doc(alias = "memmap")]
    pub fn map_pod<A, R>(&self, f: fn(A) -> R, items: &[A]) -> Result<Vec<R>, TaskError>
    where
        A: bytemuck::Pod + Send,
        R: bytemuck::Pod + Send,
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
        let shared =
            |e: Error| TaskError::Codec(format!("placing the items in shared memory: {e}"));
        let in_bytes: &[u8] = bytemuck::cast_slice(items);
        let input = self.shared.scratch(in_bytes.len()).map_err(shared)?;
        let output = self
            .shared
            .scratch(items.len() * std::mem::size_of::<R>())
            .map_err(shared)?;
        let n = items.len();
        let chunks = 4 * self.processes();
        let per = self.fit_quota(n.div_ceil(chunks)) as u64;
        let ranges: Vec<(u64, u64)> = (0..n as u64)
            .step_by(per as usize)
            .map(|start| (start, per.min(n as u64 - start)))
            .collect();
        let sink = Arc::new(MapSink::<()>::new(ranges.len(), None));
        let dyn_sink: Arc<dyn Sink> = sink.clone();
        let (entry, func) = (worker::pod_entry_offset::<A, R>(), func_offset(f));
        // One range a job: a worker's results for a range reach the others'
        // sooner, and a failure fails only its range.
        let mut jobs: Vec<Job> = Vec::with_capacity(ranges.len());
        for (index, &(start, len)) in ranges.iter().enumerate() {
            let fds = input.dup_fd().and_then(|i| Ok((i, output.dup_fd()?)));
            let (i, o) = fds.map_err(|e| {
                TaskError::Codec(format!("duplicating map_pod's shared arrays: {e}"))
            })?;
            let mut job = Job::new(entry, func, 1, dyn_sink.clone());
            let chunk = worker::PodChunk::<A, R> {
                input: worker::RegionFd(i),
                output: worker::RegionFd(o),
                start,
                len,
                types: PhantomData,
            };
            add_item(&mut job, index as u32, &chunk);
            jobs.push(job);
        }
        // Each range goes out as soon as its items are in place: workers
        // start while the rest is copied.
        let a = size_of::<A>();
        for (job, &(start, len)) in jobs.into_iter().zip(&ranges) {
            let (from, to) = (start as usize * a, (start + len) as usize * a);
            input.store_bytes_at(from, &in_bytes[from..to]);
            self.shared.submit(vec![job]);
        }
        let outcome = sink.wait(&*self.shared).map(|_| {
            // Fresh from the allocator, not yet touched (for a large
            // vector): writing it costs a page fault per page, so huge
            // pages where the kernel has them.
            let mut results: Vec<R> = bytemuck::allocation::zeroed_vec(n);
            if n * size_of::<R>() >= PARALLEL_COPY {
                sys::prefer_huge_pages(&mut results);
            }
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut results);
            // Writing fresh memory costs a page fault per page: shared
            // among threads, as rayon's `collect` shares it.
            let per = copy_part(bytes.len(), self.processes());
            in_parallel(bytes.chunks_mut(per), |k, part| {
                output.load_bytes_into(k * per, part);
            });
            results
        });
        // Ranges that failed may still be written by no one: every item has
        // ended, so the scratch space is free again.
        self.shared.return_scratch(input);
        self.shared.return_scratch(output);
        outcome
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

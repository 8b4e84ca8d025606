//! `corral._corral._Pool`: corral's supervised pool running Python calls.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use corral::{Imap, Pool, TaskError, TaskTimeout};
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator, PyList, PyRange, PySequence, PyTuple};

use crate::support;
use crate::task::{self, PyTask, deadline, lock, slice};
use crate::value::{Call, Callable, Mode, Out, PyFunc, packed};
use crate::worker::{py_batch, py_init, py_job};

fn mode(m: u8) -> PyResult<Mode> {
    match m {
        0 => Ok(Mode::One),
        1 => Ok(Mode::Star),
        2 => Ok(Mode::ArgsKwargs),
        _ => Err(PyValueError::new_err("unknown call mode")),
    }
}

fn seconds(s: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    s.map(|s| {
        Duration::try_from_secs_f64(s).map_err(|_| {
            PyValueError::new_err(format!("{what} must be a positive number of seconds"))
        })
    })
    .transpose()
}

/// A pool of worker processes (`corral._corral._Pool`).
#[pyclass(frozen, name = "_Pool", module = "corral._corral")]
pub(crate) struct PyPool {
    pool: Arc<Pool>,
    /// Whether submitting can block (`max_pending` is set).
    bounded: bool,
    /// Whether tasks have a time limit (`task_timeout` is set): a `map`
    /// then runs each item as a task of its own, timed alone.
    timed: bool,
}

#[pymethods]
impl PyPool {
    #[new]
    #[pyo3(signature = (processes=None, initializer=None, maxtasksperchild=None, task_timeout=None, memory_limit=None, max_pending=None))]
    fn new(
        py: Python<'_>,
        processes: Option<usize>,
        initializer: Option<(PyRef<'_, PyFunc>, Bound<'_, PyAny>)>,
        maxtasksperchild: Option<u64>,
        task_timeout: Option<f64>,
        memory_limit: Option<u64>,
        max_pending: Option<usize>,
    ) -> PyResult<PyPool> {
        let mut b = Pool::builder();
        if let Some(n) = processes {
            b = b.processes(n);
        }
        if let Some((func, args)) = initializer {
            let call = Callable::new(&func, Mode::Star).call(&args)?;
            b = b.initializer(py_init, call);
        }
        if let Some(n) = maxtasksperchild {
            b = b.max_tasks_per_child(n);
        }
        if let Some(d) = seconds(task_timeout, "task_timeout")? {
            b = b.task_timeout(d);
        }
        if let Some(bytes) = memory_limit {
            b = b.memory_limit(bytes);
        }
        if let Some(n) = max_pending {
            b = b.max_pending(n);
        }
        let pool = py
            .detach(|| b.build())
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?;
        Ok(PyPool {
            pool: Arc::new(pool),
            bounded: max_pending.is_some(),
            timed: task_timeout.is_some(),
        })
    }

    /// Submits `func(*args, **kwargs)`; a task handle.
    #[pyo3(signature = (func, args, kwargs=None, timeout=None))]
    fn submit(
        &self,
        py: Python<'_>,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<PyTask> {
        self.start(py, func, args, kwargs, timeout).map(PyTask::new)
    }

    /// Runs `func(*args, **kwargs)` and waits for it (Ctrl-C raises here,
    /// and cancels the task).
    #[pyo3(signature = (func, args, kwargs=None))]
    fn apply(
        &self,
        py: Python<'_>,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let task = self.start(py, func, args, kwargs, None)?;
        task::join(py, task)
    }

    /// Runs `func` on every item, in order; raises the first failure. Items
    /// travel in batches (`chunksize` items, else automatic) that a worker
    /// runs item by item; a batch whose worker died is run again item by
    /// item, so that only the item that killed it fails. With a
    /// `task_timeout`, or `chunksize=1`, each item is a task of its own.
    #[pyo3(signature = (func, mode, items, chunksize=None))]
    fn map(
        &self,
        py: Python<'_>,
        func: PyRef<'_, PyFunc>,
        mode: u8,
        items: &Bound<'_, PyAny>,
        chunksize: Option<usize>,
    ) -> PyResult<Py<PyList>> {
        let callable = Callable::new(&func, self::mode(mode)?);
        if chunksize == Some(0) {
            return Err(PyValueError::new_err("chunksize must be at least 1"));
        }
        // A sequence is read item by item as corral sends chunks out; any
        // other iterable is read whole first (its length is needed).
        let items = match items.len() {
            Ok(_) => items.clone(),
            Err(_) => PyList::new(py, items.try_iter()?.collect::<PyResult<Vec<_>>>()?)?.into_any(),
        };
        let n = items.len()?;
        if let Some(size) = self.batch_size(n, chunksize) {
            return self.map_batched(py, &callable, items, n, size);
        }
        // The callable travels with the first item of each chunk.
        let every = chunksize
            .unwrap_or_else(|| n.div_ceil(4 * self.pool.processes()))
            .max(1);
        let mut failed = None;
        let mut iter = items.try_iter()?;
        let calls = (0..n).map(|i| {
            let call = match iter.next() {
                Some(Ok(item)) => callable.call_with(&item, i.is_multiple_of(every)),
                Some(Err(e)) => Err(e),
                None => Err(PyValueError::new_err(
                    "the sequence changed size during map",
                )),
            };
            call.unwrap_or_else(|e| {
                failed.get_or_insert(e);
                Call::nothing()
            })
        });
        let outs = match chunksize {
            None => self.map_auto(py, calls),
            Some(n) => self.map_chunks(py, calls.collect(), n),
        };
        if let Some(e) = failed {
            return Err(e);
        }
        let mut outs = outs?;
        self.resend_missing(py, &callable, &mut outs)?;
        let values: Vec<Py<PyAny>> = outs
            .into_iter()
            .map(|out| task::outcome(py, out))
            .collect::<PyResult<_>>()?;
        Ok(PyList::new(py, values)?.unbind())
    }

    /// A lazy iterator of outcomes (`ordered`: input order, else completion
    /// order), pulling `items` as results are consumed.
    #[pyo3(signature = (func, mode, items, ordered, chunksize=None))]
    fn imap(
        &self,
        func: PyRef<'_, PyFunc>,
        mode: u8,
        items: &Bound<'_, PyAny>,
        ordered: bool,
        chunksize: Option<usize>,
    ) -> PyResult<PyImap> {
        let callable = Callable::new(&func, self::mode(mode)?);
        let input = PyInput {
            iter: items.try_iter()?.unbind(),
            callable: callable.clone(),
            pulled: 0,
            first: 4 * self.pool.processes(),
            every: chunksize.unwrap_or(64).max(1),
            error: Arc::new(Mutex::new(None)),
        };
        let error = input.error.clone();
        let mut imap = if ordered {
            self.pool.imap_owned(py_job, input)
        } else {
            self.pool.imap_unordered_owned(py_job, input)
        };
        if let Some(n) = chunksize {
            if n == 0 {
                return Err(PyValueError::new_err("chunksize must be at least 1"));
            }
            imap = imap.chunk_size(n);
        }
        Ok(PyImap {
            imap: Mutex::new(Some(imap)),
            cancelled: AtomicBool::new(false),
            pool: self.pool.clone(),
            callable,
            error,
        })
    }

    /// The number of workers.
    #[getter]
    fn processes(&self) -> usize {
        self.pool.processes()
    }

    /// Stops accepting work.
    fn close(&self) {
        self.pool.close();
    }

    /// Waits for the workers to exit (after `close` or `terminate`), at most
    /// `timeout` seconds; true if they did.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = deadline(timeout);
        loop {
            if py.detach(|| self.pool.join_timeout(slice(deadline))) {
                return Ok(true);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// Stops at once: workers killed, unfinished tasks cancelled.
    fn terminate(&self, py: Python<'_>) {
        py.detach(|| self.pool.terminate());
    }

    /// Stops accepting work; with `cancel_pending`, tasks not started are
    /// cancelled (running ones finish).
    fn shutdown(&self, py: Python<'_>, cancel_pending: bool) {
        py.detach(|| self.pool.shutdown(cancel_pending));
    }

    /// Counters: submitted, completed, failed, timed out, lost, workers.
    fn stats(&self) -> std::collections::HashMap<&'static str, u64> {
        let s = self.pool.stats();
        [
            ("submitted", s.submitted),
            ("completed", s.completed),
            ("failed", s.failed),
            ("timed_out", s.timed_out),
            ("cancelled", s.cancelled),
            ("lost", s.lost),
            ("workers_started", s.workers_started),
            ("workers_replaced", s.workers_replaced),
        ]
        .into_iter()
        .collect()
    }

    /// The pids of the live workers.
    fn worker_pids(&self) -> Vec<u32> {
        self.pool.workers().iter().map(|w| w.pid).collect()
    }
}

/// The most items a batch of a `map` holds when `chunksize` is not given:
/// a batch whose worker dies is run again item by item.
const MAX_BATCH: usize = 4096;

impl PyPool {
    /// Items per batch of a `map` of `n` items; `None`: one task per item.
    fn batch_size(&self, n: usize, chunksize: Option<usize>) -> Option<usize> {
        if self.timed {
            return None;
        }
        // At least 8 batches per worker, to even out uneven items (Python
        // makes 4).
        let size =
            chunksize.unwrap_or_else(|| n.div_ceil(8 * self.pool.processes()).min(MAX_BATCH));
        (size > 1).then_some(size)
    }

    /// `map` in batches of `size` items, in order.
    fn map_batched(
        &self,
        py: Python<'_>,
        callable: &Callable,
        items: Bound<'_, PyAny>,
        n: usize,
        size: usize,
    ) -> PyResult<Py<PyList>> {
        // Lists, tuples and ranges are sliced as they are (a slice of a
        // range pickles in a few bytes); other sequences are listed first.
        let items = if items.is_exact_instance_of::<PyList>()
            || items.is_exact_instance_of::<PyTuple>()
            || items.is_exact_instance_of::<PyRange>()
        {
            items.cast_into::<PySequence>()?
        } else {
            items.cast::<PySequence>()?.to_list()?.into_sequence()
        };
        // Every batch is submitted first (workers start on the first while
        // the rest are pickled), then the results are taken in order.
        let carry_always = callable.func.bytes.len() <= CARRY_ALWAYS;
        let mut tasks = Pending(VecDeque::with_capacity(n.div_ceil(size)));
        for (b, from) in (0..n).step_by(size).enumerate() {
            let carry = carry_always || b < 2 * self.pool.processes();
            let batch = items.get_slice(from, (from + size).min(n))?;
            let call = callable.batch(&batch, carry)?;
            tasks
                .0
                .push_back(self.submit_call(py, py_batch, call, None));
        }
        let values = PyList::empty(py);
        while let Some(task) = tasks.0.pop_front() {
            let (result, _) = task::wait(py, task)?;
            let from = values.len();
            let to = (from + size).min(n);
            self.take_batch(py, callable, result, &items, from..to, &values)?;
        }
        Ok(values.unbind())
    }

    /// Adds the values of the batch of `items[range]` to `values`, or
    /// raises its first failure (in item order).
    fn take_batch(
        &self,
        py: Python<'_>,
        callable: &Callable,
        result: Result<Out, TaskError>,
        items: &Bound<'_, PySequence>,
        range: std::ops::Range<usize>,
        values: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        match result {
            Ok(Out::Batch(bytes, failed)) => {
                if let Some((_, out)) = failed.into_iter().next() {
                    return Err(raised(py, out));
                }
                let list = support::call(py, support::LOADS, (PyBytes::new(py, &bytes),))?;
                values.call_method1(intern!(py, "extend"), (list,))?;
                Ok(())
            }
            Ok(Out::NeedFunc(arg)) => {
                let task = self.submit_call(py, py_batch, callable.call_arg(arg), None);
                let (result, _) = task::wait(py, task)?;
                self.take_batch(py, callable, result, items, range, values)
            }
            Ok(out) => Err(raised(py, out)),
            // The worker died under the batch (or went past its memory
            // limit): its items run again one task each, and only the one
            // to blame fails.
            Err(
                TaskError::WorkerLost(_)
                | TaskError::MemoryExceeded(_)
                | TaskError::Lost(_)
                | TaskError::Codec(_),
            ) => {
                let batch = items.get_slice(range.start, range.end)?;
                self.run_each(py, callable, &batch, values)
            }
            Err(e) => Err(task::task_error(py, &e, None)),
        }
    }

    /// Runs each item of `batch` as a task of its own, adding the values to
    /// `values`, or raises the first failure.
    fn run_each(
        &self,
        py: Python<'_>,
        callable: &Callable,
        batch: &Bound<'_, PySequence>,
        values: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        let calls = batch
            .try_iter()?
            .map(|item| callable.call(&item?))
            .collect::<PyResult<Vec<_>>>()?;
        for out in self.map_auto(py, calls.into_iter())? {
            values.append(task::outcome(py, out)?)?;
        }
        Ok(())
    }

    /// Submits `func(*args, **kwargs)` (with its own timeout, if given).
    fn start(
        &self,
        py: Python<'_>,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<corral::Task<Out>> {
        let func = PyFunc::of(func)?;
        let (mode, arg) = packed(args, kwargs)?;
        let call = Callable::new(&func.borrow(), mode).call(&arg)?;
        let timeout = seconds(timeout, "timeout")?;
        Ok(self.submit_call(py, py_job, call, timeout))
    }

    /// Submits `job(call)` (with its own timeout, if given).
    fn submit_call(
        &self,
        py: Python<'_>,
        job: fn(Call) -> Out,
        call: Call,
        timeout: Option<Duration>,
    ) -> corral::Task<Out> {
        let submit = || match timeout {
            Some(t) => self.pool.submit_with_timeout(job, call, t),
            None => self.pool.submit(job, call),
        };
        // Only a pool with `max_pending` can make a submit wait; the GIL is
        // released only for those.
        if self.bounded {
            py.detach(submit)
        } else {
            submit()
        }
    }

    /// Runs again, with the callable, the items whose worker lacked it (a
    /// worker that joined mid-map, replacing one that died).
    fn resend_missing(
        &self,
        py: Python<'_>,
        callable: &Callable,
        outs: &mut [Out],
    ) -> PyResult<()> {
        let mut missing = Vec::new();
        let mut calls = Vec::new();
        for (i, out) in outs.iter_mut().enumerate() {
            if matches!(out, Out::NeedFunc(_))
                && let Out::NeedFunc(arg) = std::mem::replace(out, Out::Exit(0))
            {
                missing.push(i);
                calls.push(callable.call_arg(arg));
            }
        }
        if calls.is_empty() {
            return Ok(());
        }
        for (i, out) in missing
            .into_iter()
            .zip(self.map_auto(py, calls.into_iter())?)
        {
            outs[i] = out;
        }
        Ok(())
    }

    /// `map` in corral's automatic chunks, waited for in signal slices.
    /// The calls are made as corral sends them out, chunk by chunk, with
    /// the GIL held: workers start on the first chunk while the rest is
    /// being made.
    fn map_auto(
        &self,
        py: Python<'_>,
        calls: impl ExactSizeIterator<Item = Call>,
    ) -> PyResult<Vec<Out>> {
        let mut task = self.pool.map_async(py_job, calls);
        loop {
            match py.detach(|| task.join_timeout(task::SIGNAL_SLICE)) {
                Ok(outs) => return Ok(outs),
                Err(TaskTimeout::Failed(e)) => return Err(task::task_error(py, &e, None)),
                Err(TaskTimeout::Elapsed(t)) => task = t,
            }
            if let Err(interrupted) = py.check_signals() {
                task.cancel();
                return Err(interrupted);
            }
        }
    }

    /// `map` in chunks of `n`, through a lazy iterator (signals are looked
    /// at between results).
    fn map_chunks(&self, py: Python<'_>, calls: Vec<Call>, n: usize) -> PyResult<Vec<Out>> {
        let total = calls.len();
        let mut imap = self.pool.imap_owned(py_job, calls).chunk_size(n);
        let mut outs = Vec::with_capacity(total);
        let mut last_check = Instant::now();
        while outs.len() < total {
            let step = py.detach(|| {
                let mut got = Vec::new();
                while got.len() < 1024 && outs.len() + got.len() < total {
                    match imap.next() {
                        Some(r) => got.push(r),
                        None => break,
                    }
                    if last_check.elapsed() >= task::SIGNAL_SLICE {
                        break;
                    }
                }
                got
            });
            if step.is_empty() {
                break;
            }
            for r in step {
                outs.push(r.map_err(|e: TaskError| task::task_error(py, &e, None))?);
            }
            last_check = Instant::now();
            if let Err(interrupted) = py.check_signals() {
                imap.cancel();
                return Err(interrupted);
            }
        }
        Ok(outs)
    }
}

/// A Python iterator as the input of a lazy `imap`: pulled on the thread
/// that asks for the next result, which takes the GIL for it.
struct PyInput {
    iter: Py<PyIterator>,
    callable: Callable,
    /// Items pulled so far. The callable travels with each of the `first`
    /// items and every `every`th after (a worker that lacks it answers
    /// `NeedFunc`, and the item is sent again with it).
    pulled: usize,
    first: usize,
    every: usize,
    /// The exception the input raised, re-raised once the results before
    /// it have been yielded.
    error: Arc<Mutex<Option<PyErr>>>,
}

impl Iterator for PyInput {
    type Item = Call;

    fn next(&mut self) -> Option<Call> {
        Python::attach(|py| {
            let mut iter = self.iter.bind(py).clone();
            let item = match iter.next()? {
                Ok(item) => item,
                Err(e) => {
                    *lock(&self.error) = Some(e);
                    return None;
                }
            };
            let carry = self.pulled < self.first || self.pulled.is_multiple_of(self.every);
            self.pulled += 1;
            match self.callable.call_with(&item, carry) {
                Ok(call) => Some(call),
                Err(e) => {
                    *lock(&self.error) = Some(e);
                    None
                }
            }
        })
    }
}

/// A callable pickled in at most this many bytes travels with every batch
/// of a `map`; a larger one with the first batches only (a worker that
/// lacks it answers `NeedFunc`, and the batch is sent again with it).
const CARRY_ALWAYS: usize = 4096;

/// The exception of an outcome that is a failure (a batch's item, or a
/// whole batch that failed).
fn raised(py: Python<'_>, out: Out) -> PyErr {
    match task::outcome(py, out) {
        Err(e) => e,
        Ok(_) => pyo3::exceptions::PyRuntimeError::new_err(
            "corral: a map batch came back as a single value",
        ),
    }
}

/// The tasks of a `map` not yet taken: cancelled if the `map` ends early
/// (it raised, or Ctrl-C).
struct Pending(VecDeque<corral::Task<Out>>);

impl Drop for Pending {
    fn drop(&mut self) {
        for task in &self.0 {
            task.cancel();
        }
    }
}

/// Locks `m`, waiting for it with the GIL released: its holder may be
/// waiting with the GIL released itself, and must get the GIL back.
fn lock_without_gil<'a, T: Send>(py: Python<'_>, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
    loop {
        match m.try_lock() {
            Ok(guard) => return guard,
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(TryLockError::WouldBlock) => py.detach(|| drop(lock(m))),
        }
    }
}

/// The next result of `imap`, waited for in signal slices, so that Ctrl-C
/// is seen (it cancels what is in flight, and raises), and so is a
/// `cancelled` flag set from another thread (it cancels).
fn next_result<I: Iterator<Item = Call> + Send>(
    py: Python<'_>,
    imap: &mut Imap<'static, Call, Out, I>,
    cancelled: Option<&AtomicBool>,
) -> PyResult<Option<Result<Out, TaskError>>> {
    loop {
        if cancelled.is_some_and(|c| c.load(Ordering::Acquire)) {
            imap.cancel();
        }
        if py.detach(|| imap.wait_next(task::SIGNAL_SLICE)) {
            return Ok(py.detach(|| imap.next()));
        }
        if let Err(interrupted) = py.check_signals() {
            imap.cancel();
            return Err(interrupted);
        }
    }
}

/// A lazy `imap` / `imap_unordered` (`corral._corral._Imap`).
#[pyclass(frozen, name = "_Imap", module = "corral._corral")]
pub(crate) struct PyImap {
    imap: Mutex<Option<Imap<'static, Call, Out, PyInput>>>,
    /// `cancel` was called (from any thread).
    cancelled: AtomicBool,
    /// For items sent again with their callable.
    pool: Arc<Pool>,
    callable: Callable,
    error: Arc<Mutex<Option<PyErr>>>,
}

#[pymethods]
impl PyImap {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let mut guard = lock_without_gil(py, &self.imap);
        let Some(imap) = guard.as_mut() else {
            return Ok(None);
        };
        match next_result(py, imap, Some(&self.cancelled))? {
            Some(Ok(Out::NeedFunc(arg))) => {
                let task = py.detach(|| self.pool.submit(py_job, self.callable.call_arg(arg)));
                drop(guard);
                task::join(py, task).map(Some)
            }
            Some(Ok(out)) => task::outcome(py, out).map(Some),
            Some(Err(e)) => Err(task::task_error(py, &e, None)),
            None => {
                *guard = None;
                match lock(&self.error).take() {
                    Some(e) => Err(e),
                    None => Ok(None),
                }
            }
        }
    }

    /// Cancels what is in flight and stops pulling input.
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        // Done here if no thread is waiting in `__next__`; else that thread
        // does it within a signal slice.
        let mut guard = match self.imap.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if let Some(imap) = guard.as_mut() {
            imap.cancel();
        }
    }
}

//! `corral._corral._Imap`: a lazy `imap` / `imap_unordered`, pulling its
//! input as results are consumed. In input order with a `chunksize` above
//! one, items travel in batches (see [`crate::batch`]); otherwise each item
//! is a task of its own, in corral's chunks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use corral::{Imap, Pool, TaskError};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyIterator, PyList};

use crate::batch::{self, Outcomes};
use crate::task::{self, lock};
use crate::value::{Call, Callable, Out};
use crate::worker::{py_batch, py_job};

/// What an `imap` runs.
enum Stream {
    /// One task per item.
    Items(Imap<'static, Call, Out, PyInput>),
    /// Batches, in input order.
    Batches(Batched),
}

struct Batched {
    imap: Imap<'static, Call, Out, BatchInput>,
    /// The items of the batches sent and not yet taken, in order.
    sent: Arc<Mutex<VecDeque<Py<PyList>>>>,
    /// Outcomes of the batch being taken, not yet yielded.
    ready: VecDeque<PyResult<Py<PyAny>>>,
}

/// A lazy `imap` / `imap_unordered` (`corral._corral._Imap`).
#[pyclass(frozen, name = "_Imap", module = "corral._corral")]
pub(crate) struct PyImap {
    stream: Mutex<Option<Stream>>,
    /// `cancel` was called (from any thread).
    cancelled: AtomicBool,
    /// For items sent again with their callable.
    pool: Arc<Pool>,
    callable: Callable,
    /// The exception the input raised, re-raised once the results before
    /// it have been yielded.
    error: Arc<Mutex<Option<PyErr>>>,
}

impl PyImap {
    /// An `imap` of `callable` over `items` on `pool`.
    pub(crate) fn new(
        pool: &Arc<Pool>,
        callable: Callable,
        items: &Bound<'_, PyAny>,
        ordered: bool,
        chunksize: Option<usize>,
    ) -> PyResult<PyImap> {
        if chunksize == Some(0) {
            return Err(PyValueError::new_err("chunksize must be at least 1"));
        }
        let iter = items.try_iter()?.unbind();
        let error = Arc::new(Mutex::new(None));
        let stream = match chunksize {
            Some(size) if ordered && size > 1 => {
                Stream::Batches(batched(pool, &callable, iter, size, &error))
            }
            _ => Stream::Items(items_one_by_one(
                pool, &callable, iter, ordered, chunksize, &error,
            )),
        };
        Ok(PyImap {
            stream: Mutex::new(Some(stream)),
            cancelled: AtomicBool::new(false),
            pool: pool.clone(),
            callable,
            error,
        })
    }
}

fn batched(
    pool: &Arc<Pool>,
    callable: &Callable,
    iter: Py<PyIterator>,
    size: usize,
    error: &Arc<Mutex<Option<PyErr>>>,
) -> Batched {
    let sent = Arc::new(Mutex::new(VecDeque::new()));
    let input = BatchInput {
        iter,
        callable: callable.clone(),
        size,
        processes: pool.processes(),
        made: 0,
        done: false,
        sent: sent.clone(),
        error: error.clone(),
    };
    // One batch a job, and four a worker pulled ahead (a batch stands for
    // many items: the engine's window counts batches).
    let imap = pool
        .imap_owned(py_batch, input)
        .chunk_size(1)
        .max_in_flight(4 * pool.processes());
    Batched {
        imap,
        sent,
        ready: VecDeque::new(),
    }
}

fn items_one_by_one(
    pool: &Arc<Pool>,
    callable: &Callable,
    iter: Py<PyIterator>,
    ordered: bool,
    chunksize: Option<usize>,
    error: &Arc<Mutex<Option<PyErr>>>,
) -> Imap<'static, Call, Out, PyInput> {
    let input = PyInput {
        iter,
        callable: callable.clone(),
        pulled: 0,
        first: 4 * pool.processes(),
        every: chunksize.unwrap_or(64).max(1),
        error: error.clone(),
    };
    let imap = if ordered {
        pool.imap_owned(py_job, input)
    } else {
        pool.imap_unordered_owned(py_job, input)
    };
    match chunksize {
        Some(n) => imap.chunk_size(n),
        None => imap,
    }
}

/// What `__next__` found.
enum Step {
    Value(PyResult<Py<PyAny>>),
    /// An item whose worker lacked the callable, sent again with it.
    Resent(corral::Task<Out>),
    End,
}

#[pymethods]
impl PyImap {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let mut guard = lock_without_gil(py, &self.stream);
        let step = match guard.as_mut() {
            None => return Ok(None),
            Some(Stream::Items(imap)) => self.next_item(py, imap)?,
            Some(Stream::Batches(b)) => self.next_batched(py, b)?,
        };
        match step {
            Step::Value(value) => value.map(Some),
            Step::Resent(task) => {
                drop(guard);
                task::join(py, task).map(Some)
            }
            Step::End => {
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
        let mut guard = match self.stream.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        match guard.as_mut() {
            Some(Stream::Items(imap)) => imap.cancel(),
            Some(Stream::Batches(b)) => b.imap.cancel(),
            None => {}
        }
    }
}

impl PyImap {
    fn next_item(
        &self,
        py: Python<'_>,
        imap: &mut Imap<'static, Call, Out, PyInput>,
    ) -> PyResult<Step> {
        Ok(match next_result(py, imap, Some(&self.cancelled))? {
            Some(Ok(Out::NeedFunc(arg))) => {
                let call = self.callable.call_arg(arg);
                Step::Resent(py.detach(|| self.pool.submit(py_job, call)))
            }
            Some(Ok(out)) => Step::Value(task::outcome(py, out)),
            Some(Err(e)) => Step::Value(Err(task::task_error(py, &e, None))),
            None => Step::End,
        })
    }

    fn next_batched(&self, py: Python<'_>, b: &mut Batched) -> PyResult<Step> {
        loop {
            if let Some(value) = b.ready.pop_front() {
                return Ok(Step::Value(value));
            }
            let Some(result) = next_result(py, &mut b.imap, Some(&self.cancelled))? else {
                return Ok(Step::End);
            };
            // Results come in input order: this one is of the oldest batch.
            let Some(items) = lock(&b.sent).pop_front() else {
                return Ok(Step::End);
            };
            let items = items.into_bound(py).into_any();
            let items = || Ok(items.clone());
            match batch::outcomes(py, &self.pool, &self.callable, result, &items)? {
                Outcomes::Values(values) => {
                    for value in values.try_iter()? {
                        b.ready.push_back(value.map(Bound::unbind));
                    }
                }
                Outcomes::Each(each) => b.ready.extend(each),
            }
        }
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

/// A Python iterator as the input of a batched `imap`: `size` items at a
/// time, each batch kept in `sent` until its result is taken.
struct BatchInput {
    iter: Py<PyIterator>,
    callable: Callable,
    size: usize,
    processes: usize,
    /// Batches made so far.
    made: usize,
    /// The input ended (or raised).
    done: bool,
    sent: Arc<Mutex<VecDeque<Py<PyList>>>>,
    error: Arc<Mutex<Option<PyErr>>>,
}

impl BatchInput {
    /// The next `size` items (fewer at the end of the input).
    fn pull<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = PyList::empty(py);
        let mut iter = self.iter.bind(py).clone();
        while items.len() < self.size {
            match iter.next() {
                Some(Ok(item)) => items.append(item)?,
                Some(Err(e)) => {
                    self.done = true;
                    *lock(&self.error) = Some(e);
                    break;
                }
                None => {
                    self.done = true;
                    break;
                }
            }
        }
        Ok(items)
    }
}

impl Iterator for BatchInput {
    type Item = Call;

    fn next(&mut self) -> Option<Call> {
        if self.done {
            return None;
        }
        Python::attach(|py| {
            let made = self.pull(py).and_then(|items| {
                let carry = batch::carries(&self.callable, self.made, self.processes);
                let call = self.callable.batch(&items, carry)?;
                Ok((items, call))
            });
            match made {
                Ok((items, _)) if items.is_empty() => None,
                Ok((items, call)) => {
                    self.made += 1;
                    lock(&self.sent).push_back(items.unbind());
                    Some(call)
                }
                Err(e) => {
                    self.done = true;
                    *lock(&self.error) = Some(e);
                    None
                }
            }
        })
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
/// is seen (it cancels what is in flight, and raises), and so is
/// `cancelled`, if given, set from another thread (it cancels).
pub(crate) fn next_result<I: Iterator<Item = Call> + Send>(
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

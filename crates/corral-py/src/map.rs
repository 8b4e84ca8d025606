//! `map` and `starmap` of `corral._corral._Pool`: in batches (see
//! [`crate::batch`]), or one task per item (`chunksize=1`, or a pool with a
//! `task_timeout`, whose limit is each item's own).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use corral::{TaskError, TaskTimeout};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyRange, PySequence, PyTuple};

use crate::batch::{self, Outcomes};
use crate::imap::next_result;
use crate::pool::PyPool;
use crate::task::{self, lock};
use crate::value::{Call, Callable, Out};
use crate::worker::{py_batch, py_job};

/// The most items a batch of a `map` holds when `chunksize` is not given:
/// a batch whose worker dies is run again item by item.
const MAX_BATCH: usize = 4096;

impl PyPool {
    /// Items per batch of a `map` of `n` items; `None`: one task per item.
    pub(crate) fn batch_size(&self, n: usize, chunksize: Option<usize>) -> Option<usize> {
        if self.timed {
            return None;
        }
        // At least 8 batches per worker, to even out uneven items (Python
        // makes 4).
        let size =
            chunksize.unwrap_or_else(|| n.div_ceil(8 * self.pool.processes()).min(MAX_BATCH));
        (size > 1).then_some(size)
    }

    /// `map` in batches of `size` items, in order, through a lazy `imap`:
    /// batches are pickled as corral sends them out, four a worker in
    /// flight, each dispatched on its own (a worker that runs slow takes
    /// fewer), and their values are taken in order.
    pub(crate) fn map_batched(
        &self,
        py: Python<'_>,
        callable: &Callable,
        items: Bound<'_, PyAny>,
        n: usize,
        size: usize,
    ) -> PyResult<Py<PyList>> {
        let items = sliceable(items)?;
        let slices = Slices {
            items: items.clone().unbind(),
            n,
            size,
            at: 0,
            callable: callable.clone(),
            processes: self.pool.processes(),
            error: Arc::new(Mutex::new(None)),
        };
        let error = slices.error.clone();
        let mut imap = self
            .pool
            .imap_owned(py_batch, slices)
            .chunk_size(1)
            .max_in_flight(4 * self.pool.processes());
        let values = PyList::empty(py);
        while let Some(result) = next_result(py, &mut imap, None)? {
            let from = values.len();
            let batch = || Ok(items.get_slice(from, (from + size).min(n))?.into_any());
            match batch::outcomes(py, &self.pool, callable, result, &batch)? {
                Outcomes::Values(list) => {
                    values.call_method1(intern!(py, "extend"), (list,))?;
                }
                Outcomes::Each(each) => {
                    for value in each {
                        values.append(value?)?;
                    }
                }
            }
        }
        if let Some(e) = lock(&error).take() {
            return Err(e);
        }
        Ok(values.unbind())
    }

    /// Runs again, with the callable, the items whose worker lacked it (a
    /// worker that joined mid-map, replacing one that died).
    pub(crate) fn resend_missing(
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
    pub(crate) fn map_auto(
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
    pub(crate) fn map_chunks(
        &self,
        py: Python<'_>,
        calls: Vec<Call>,
        n: usize,
    ) -> PyResult<Vec<Out>> {
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

/// `items` as a sequence to slice: lists, tuples and ranges as they are (a
/// slice of a range pickles in a few bytes), other sequences listed first.
fn sliceable(items: Bound<'_, PyAny>) -> PyResult<Bound<'_, PySequence>> {
    if items.is_exact_instance_of::<PyList>()
        || items.is_exact_instance_of::<PyTuple>()
        || items.is_exact_instance_of::<PyRange>()
    {
        Ok(items.cast_into::<PySequence>()?)
    } else {
        Ok(items.cast::<PySequence>()?.to_list()?.into_sequence())
    }
}

/// The batches of a sequence, sliced and pickled as corral pulls them (on
/// the thread waiting for the results, which takes the GIL for it).
struct Slices {
    items: Py<PySequence>,
    n: usize,
    size: usize,
    /// The first item of the next batch.
    at: usize,
    callable: Callable,
    processes: usize,
    /// Why a batch could not be made, raised after the batches before it.
    error: Arc<Mutex<Option<PyErr>>>,
}

impl Iterator for Slices {
    type Item = Call;

    fn next(&mut self) -> Option<Call> {
        if self.at >= self.n {
            return None;
        }
        let (from, to) = (self.at, (self.at + self.size).min(self.n));
        self.at = to;
        let carry = batch::carries(&self.callable, from / self.size, self.processes);
        Python::attach(|py| {
            let batch = self.items.bind(py).get_slice(from, to);
            match batch.and_then(|batch| self.callable.batch(&batch, carry)) {
                Ok(call) => Some(call),
                Err(e) => {
                    self.at = self.n;
                    *lock(&self.error) = Some(e);
                    None
                }
            }
        })
    }
}

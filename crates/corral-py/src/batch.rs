//! Batches: many items of a `map` or an `imap` in one task, which a worker
//! runs item by item (`corral._support.run_batch`), each item failing
//! alone. A batch that fails as a whole (its worker died under it, or it
//! could not run there) runs again one task per item, so that only the item
//! to blame fails; the items before it in the batch may then run twice.

use std::collections::VecDeque;

use corral::{Pool, Task, TaskError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::support;
use crate::task;
use crate::value::{Callable, Out};
use crate::worker::{py_batch, py_job};

/// A callable pickled in at most this many bytes travels with every batch;
/// a larger one with the first batches only (a worker that lacks it answers
/// `NeedFunc`, and the batch is sent again with it).
const CARRY_ALWAYS: usize = 4096;

/// Whether batch number `index` carries the callable itself.
pub(crate) fn carries(callable: &Callable, index: usize, processes: usize) -> bool {
    callable.func.bytes.len() <= CARRY_ALWAYS || index < 2 * processes
}

/// The outcomes of a batch's items.
pub(crate) enum Outcomes<'py> {
    /// Every item returned: their values, a list.
    Values(Bound<'py, PyAny>),
    /// Item by item, a value or an exception.
    Each(Vec<PyResult<Py<PyAny>>>),
}

/// The outcomes of a batch from its `result`. `items` gives the batch's
/// items, asked for only if they must run again one by one.
pub(crate) fn outcomes<'py>(
    py: Python<'py>,
    pool: &Pool,
    callable: &Callable,
    result: Result<Out, TaskError>,
    items: &dyn Fn() -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Outcomes<'py>> {
    match result {
        Ok(Out::Batch(bytes, failed)) => {
            let values = support::call(py, support::LOADS, (PyBytes::new(py, &bytes),))?;
            if failed.is_empty() {
                return Ok(Outcomes::Values(values));
            }
            let mut each: Vec<PyResult<Py<PyAny>>> =
                values.try_iter()?.map(|v| v.map(Bound::unbind)).collect();
            for (i, out) in failed {
                if let Some(slot) = each.get_mut(i as usize) {
                    *slot = Err(raised(py, out));
                }
            }
            Ok(Outcomes::Each(each))
        }
        Ok(Out::NeedFunc(arg)) => {
            let task = py.detach(|| pool.submit(py_batch, callable.call_arg(arg)));
            let (result, _) = task::wait(py, task)?;
            outcomes(py, pool, callable, result, items)
        }
        // The batch failed as a whole: run its items one task each.
        Ok(_)
        | Err(
            TaskError::WorkerLost(_)
            | TaskError::MemoryExceeded(_)
            | TaskError::Lost(_)
            | TaskError::Codec(_),
        ) => each(py, pool, callable, &items()?).map(Outcomes::Each),
        Err(e) => Err(task::task_error(py, &e, None)),
    }
}

/// The exception of an outcome that is a failure.
fn raised(py: Python<'_>, out: Out) -> PyErr {
    match task::outcome(py, out) {
        Err(e) => e,
        Ok(_) => {
            pyo3::exceptions::PyRuntimeError::new_err("corral: a failure came back as a value")
        }
    }
}

/// Runs each item of `items` as a task of its own; the outcome of each.
fn each(
    py: Python<'_>,
    pool: &Pool,
    callable: &Callable,
    items: &Bound<'_, PyAny>,
) -> PyResult<Vec<PyResult<Py<PyAny>>>> {
    let mut tasks = Pending::default();
    let mut unsent = Vec::new();
    for (i, item) in items.try_iter()?.enumerate() {
        match callable.call(&item?) {
            Ok(call) => tasks.0.push_back(py.detach(|| pool.submit(py_job, call))),
            Err(e) => unsent.push((i, e)),
        }
    }
    let mut outs = Vec::with_capacity(tasks.0.len() + unsent.len());
    while let Some(task) = tasks.0.pop_front() {
        let (r, pid) = task::wait(py, task)?;
        outs.push(task::result(py, r, pid));
    }
    for (i, e) in unsent {
        outs.insert(i, Err(e));
    }
    Ok(outs)
}

/// Tasks not yet taken: cancelled if whoever waits for them stops early (an
/// exception, Ctrl-C).
#[derive(Default)]
struct Pending(VecDeque<Task<Out>>);

impl Drop for Pending {
    fn drop(&mut self) {
        for task in &self.0 {
            task.cancel();
        }
    }
}

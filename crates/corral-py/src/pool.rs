//! `corral._corral._Pool`: corral's supervised pool running Python calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral::Pool;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::imap::PyImap;
use crate::task::{self, PyTask, deadline, slice};
use crate::value::{Call, Callable, Mode, Out, PyFunc, packed};
use crate::worker::{py_init, py_job};

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
    pub(crate) pool: Arc<Pool>,
    /// Whether submitting can block (`max_pending` is set).
    bounded: bool,
    /// Whether tasks have a time limit (`task_timeout` is set): a `map`
    /// then runs each item as a task of its own, timed alone.
    pub(crate) timed: bool,
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
        func: &Bound<'_, PyAny>,
        mode: u8,
        items: &Bound<'_, PyAny>,
        chunksize: Option<usize>,
    ) -> PyResult<Py<PyList>> {
        let callable = Callable::new(PyFunc::of(func)?.get(), self::mode(mode)?);
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
        func: &Bound<'_, PyAny>,
        mode: u8,
        items: &Bound<'_, PyAny>,
        ordered: bool,
        chunksize: Option<usize>,
    ) -> PyResult<PyImap> {
        let callable = Callable::new(PyFunc::of(func)?.get(), self::mode(mode)?);
        PyImap::new(&self.pool, callable, items, ordered, chunksize)
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

impl PyPool {
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
        let call = Callable::new(func.get(), mode).call(&arg)?;
        let timeout = seconds(timeout, "timeout")?;
        Ok(self.submit_call(py, py_job, call, timeout))
    }

    /// Submits `job(call)` (with its own timeout, if given).
    pub(crate) fn submit_call(
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
}

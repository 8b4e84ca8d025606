//! A submitted call as Python sees it: waited on with the GIL released and
//! Ctrl-C honoured, cancelled, and with done-callbacks run on one thread of
//! the binding's (never on the pool's dispatcher).

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use corral::{ExitStatus, Task, TaskError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::support;
use crate::value::Out;

/// How long a wait runs with the GIL released before it looks for signals
/// (Ctrl-C) again.
pub(crate) const SIGNAL_SLICE: Duration = Duration::from_millis(50);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The deadline `timeout` seconds from now; `None` waits forever (as does a
/// timeout too large to represent).
pub(crate) fn deadline(timeout: Option<f64>) -> Option<Instant> {
    let t = timeout?;
    Instant::now().checked_add(Duration::try_from_secs_f64(t.max(0.0)).ok()?)
}

/// What is left until `deadline`, at most one signal slice.
pub(crate) fn slice(deadline: Option<Instant>) -> Duration {
    deadline.map_or(SIGNAL_SLICE, |d| {
        d.saturating_duration_since(Instant::now())
            .min(SIGNAL_SLICE)
    })
}

/// The Python exception for a task that did not return.
pub(crate) fn task_error(py: Python<'_>, err: &TaskError, pid: Option<u32>) -> PyErr {
    let (kind, signal, code, seconds, limit) = match err {
        TaskError::TimedOut(d) => ("timeout", None, None, Some(d.as_secs_f64()), None),
        TaskError::WorkerLost(ExitStatus::Signal(s)) => ("lost", Some(*s), None, None, None),
        TaskError::WorkerLost(ExitStatus::Code(c)) => ("lost", None, Some(*c), None, None),
        TaskError::MemoryExceeded(bytes) => ("memory", None, None, None, Some(*bytes)),
        TaskError::Cancelled => ("cancelled", None, None, None, None),
        TaskError::PoolClosed => ("closed", None, None, None, None),
        _ => ("failed", None, None, None, None),
    };
    let made = support::call(
        py,
        support::TASK_ERROR,
        (kind, err.to_string(), signal, code, pid, seconds, limit),
    );
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// The Python value of a call's outcome, or the exception it raised.
pub(crate) fn outcome(py: Python<'_>, out: Out) -> PyResult<Py<PyAny>> {
    match out {
        Out::Value(arg) => Ok(arg.into_py(py)?.unbind()),
        Out::Raised(bytes) => {
            let exc = support::call(py, support::REMOTE_ERROR, (PyBytes::new(py, &bytes),))?;
            Err(PyErr::from_value(exc))
        }
        Out::Exit(code) => Err(pyo3::exceptions::PySystemExit::new_err(code)),
        // Only map items go without their callable, and map resends those;
        // only map sends batches, and takes their values apart itself.
        Out::NeedFunc(_) | Out::Batch(..) => Err(pyo3::exceptions::PyRuntimeError::new_err(
            "corral: a map's outcome reached a single task",
        )),
    }
}

/// [`outcome`] of a task's result.
pub(crate) fn result(
    py: Python<'_>,
    r: Result<Out, TaskError>,
    pid: Option<u32>,
) -> PyResult<Py<PyAny>> {
    match r {
        Ok(out) => outcome(py, out),
        Err(e) => Err(task_error(py, &e, pid)),
    }
}

/// Waits for `task` with the GIL released, honouring Ctrl-C (which cancels
/// the task), and returns its value or raises.
pub(crate) fn join(py: Python<'_>, task: Task<Out>) -> PyResult<Py<PyAny>> {
    let (r, pid) = wait(py, task)?;
    result(py, r, pid)
}

/// Waits for `task` as [`join`] does; its result and the worker that ran
/// it.
pub(crate) fn wait(
    py: Python<'_>,
    task: Task<Out>,
) -> PyResult<(Result<Out, TaskError>, Option<u32>)> {
    loop {
        // A task already ended costs no release of the GIL.
        if task.is_finished() || py.detach(|| task.wait_timeout(SIGNAL_SLICE)) {
            let pid = task.worker_pid();
            return Ok((task.join(), pid));
        }
        if let Err(interrupted) = py.check_signals() {
            task.cancel();
            return Err(interrupted);
        }
    }
}

enum State {
    Running(Task<Out>),
    /// A thread is waiting in `join`, holding the task; `cancel` is asked of
    /// it when it puts the task back.
    Joining {
        cancel: bool,
    },
    Finished(PyResult<Py<PyAny>>),
}

pub(crate) struct Core {
    state: Mutex<State>,
    finished: Condvar,
    callbacks: Mutex<Vec<Py<PyAny>>>,
    pid: Mutex<Option<u32>>,
}

/// A submitted task (`corral.AsyncResult`): `get(timeout)`, `wait`,
/// `ready`, `successful`, `cancel`, `worker_pid`, `add_done_callback`.
#[pyclass(frozen, name = "AsyncResult", module = "corral")]
pub(crate) struct PyTask {
    core: Arc<Core>,
}

impl PyTask {
    pub(crate) fn new(task: Task<Out>) -> PyTask {
        PyTask {
            core: Arc::new(Core {
                state: Mutex::new(State::Running(task)),
                finished: Condvar::new(),
                callbacks: Mutex::new(Vec::new()),
                pid: Mutex::new(None),
            }),
        }
    }
}

impl Core {
    /// Records the outcome, wakes waiters and runs the callbacks.
    fn finish(&self, py: Python<'_>, r: Result<Out, TaskError>, task_pid: Option<u32>) {
        let pid = task_pid.or(*lock(&self.pid));
        *lock(&self.pid) = pid;
        let value = result(py, r, pid);
        *lock(&self.state) = State::Finished(value);
        self.finished.notify_all();
        let callbacks = std::mem::take(&mut *lock(&self.callbacks));
        for cb in callbacks {
            if let Err(e) = cb.call0(py) {
                e.write_unraisable(py, Some(cb.bind(py)));
            }
        }
    }

    /// Takes the task out to join it, if it is running here.
    fn take(&self) -> Option<Task<Out>> {
        let mut state = lock(&self.state);
        match std::mem::replace(&mut *state, State::Joining { cancel: false }) {
            State::Running(task) => Some(task),
            other => {
                *state = other;
                None
            }
        }
    }

    /// Puts a task back after a join that timed out.
    fn put_back(self: &Arc<Self>, task: Task<Out>) {
        *lock(&self.pid) = task.worker_pid();
        let mut state = lock(&self.state);
        if let State::Joining { cancel: true } = *state {
            task.cancel();
        }
        *state = State::Running(task);
        drop(state);
        if !lock(&self.callbacks).is_empty() {
            self.watch();
        }
    }

    /// Waits up to `slice` with the GIL released; true once finished.
    fn wait_slice(self: &Arc<Self>, py: Python<'_>, slice: Duration) -> bool {
        if let Some(task) = self.take() {
            if py.detach(|| task.wait_timeout(slice)) {
                let pid = task.worker_pid();
                let r = py.detach(|| task.join());
                self.finish(py, r, pid);
            } else {
                self.put_back(task);
            }
        } else {
            py.detach(|| {
                let state = lock(&self.state);
                if !matches!(*state, State::Finished(_)) {
                    let _ = self.finished.wait_timeout(state, slice);
                }
            });
        }
        matches!(*lock(&self.state), State::Finished(_))
    }

    /// Has the binding's completion thread finish the task when it ends,
    /// so that callbacks run without a waiter.
    fn watch(self: &Arc<Self>) {
        let waker = Waker::from(Arc::new(Watch(Arc::downgrade(self))));
        let mut state = lock(&self.state);
        if let State::Running(task) = &mut *state {
            let pid = task.worker_pid();
            let mut cx = Context::from_waker(&waker);
            if let Poll::Ready(r) = Pin::new(task).poll(&mut cx) {
                // Ended meanwhile: the poll took the outcome; hand it over.
                *state = State::Joining { cancel: false };
                drop(state);
                let _ = completion_thread().send((self.clone(), Some((r, pid))));
            }
        }
    }

    /// On the completion thread: finishes the task if it has ended. The GIL
    /// is taken only to finish it: a task a waiter holds costs this thread
    /// nothing, and does not make the waiter hand the GIL over.
    fn complete(self: &Arc<Self>, taken: Option<Collected>) {
        let (r, pid) = match taken {
            Some(collected) => collected,
            None => {
                let Some(task) = self.take() else { return };
                if !task.is_finished() {
                    return self.put_back(task);
                }
                let pid = task.worker_pid();
                (task.join(), pid)
            }
        };
        Python::attach(|py| self.finish(py, r, pid));
    }
}

/// An outcome already taken from its task, with the worker's pid.
type Collected = (Result<Out, TaskError>, Option<u32>);

/// The waker of a watched task: hands it to the completion thread.
struct Watch(std::sync::Weak<Core>);

impl Wake for Watch {
    fn wake(self: Arc<Self>) {
        if let Some(core) = self.0.upgrade() {
            let _ = completion_thread().send((core, None));
        }
    }
}

/// The thread that finishes watched tasks and runs their callbacks.
fn completion_thread() -> Sender<(Arc<Core>, Option<Collected>)> {
    type Job = (Arc<Core>, Option<Collected>);
    static TX: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    lock(TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("corral-callbacks".into())
            .spawn(move || {
                for (core, taken) in rx {
                    core.complete(taken);
                }
            })
            .expect("starting corral's callback thread");
        Mutex::new(tx)
    }))
    .clone()
}

#[pymethods]
impl PyTask {
    /// Waits until the task ends or `timeout` seconds pass; true if it ended.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = deadline(timeout);
        loop {
            if self.core.wait_slice(py, slice(deadline)) {
                return Ok(true);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// The value; raises the task's exception, or `TimeoutError` if it has
    /// not ended within `timeout` seconds (`AsyncResult.get`).
    #[pyo3(signature = (timeout=None))]
    fn get(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        if !self.wait(py, timeout)? {
            return Err(pyo3::exceptions::PyTimeoutError::new_err(format!(
                "the task has not ended within {} s",
                timeout.unwrap_or(0.0)
            )));
        }
        self.outcome(py)
    }

    /// Whether the task has ended (`AsyncResult.ready`).
    fn ready(&self, py: Python<'_>) -> bool {
        self.done(py)
    }

    /// Whether it ended with a value; `ValueError` while it runs.
    fn successful(&self, py: Python<'_>) -> PyResult<bool> {
        if !self.done(py) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "the task has not ended",
            ));
        }
        Ok(matches!(*lock(&self.core.state), State::Finished(Ok(_))))
    }

    /// The value, or raises the task's exception. Only once it has ended.
    fn outcome(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &*lock(&self.core.state) {
            State::Finished(Ok(v)) => Ok(v.clone_ref(py)),
            State::Finished(Err(e)) => Err(e.clone_ref(py)),
            _ => Err(pyo3::exceptions::PyRuntimeError::new_err(
                "the task has not ended",
            )),
        }
    }

    /// Whether it has ended.
    fn done(&self, py: Python<'_>) -> bool {
        let ended = match &*lock(&self.core.state) {
            State::Finished(_) => return true,
            State::Running(task) => task.is_finished(),
            State::Joining { .. } => false,
        };
        // Ended but not collected: collect it, so `outcome` works.
        ended && self.core.wait_slice(py, Duration::ZERO)
    }

    /// Cancels it: skipped if not started, else its worker is killed (and
    /// replaced). False if it had already ended.
    fn cancel(&self) -> bool {
        match &mut *lock(&self.core.state) {
            State::Running(task) => {
                if task.is_finished() {
                    return false;
                }
                task.cancel();
                true
            }
            State::Joining { cancel } => {
                *cancel = true;
                true
            }
            State::Finished(_) => false,
        }
    }

    /// The pid of the worker it ran on (the one that died, for
    /// `WorkerLost`), if it reached one.
    #[getter]
    fn worker_pid(&self) -> Option<u32> {
        match &*lock(&self.core.state) {
            State::Running(task) => task.worker_pid(),
            _ => *lock(&self.core.pid),
        }
    }

    /// Calls `f()` once the task has ended (at once if it has), on the
    /// binding's callback thread.
    fn add_done_callback(&self, py: Python<'_>, f: Py<PyAny>) -> PyResult<()> {
        // Checked and registered under the state's lock: `finish` sets the
        // state first and takes the callbacks after, so none is missed.
        let first = {
            let state = lock(&self.core.state);
            if matches!(*state, State::Finished(_)) {
                drop(state);
                return f.call0(py).map(drop);
            }
            let mut cbs = lock(&self.core.callbacks);
            cbs.push(f);
            cbs.len() == 1
        };
        if first {
            self.core.watch();
        }
        Ok(())
    }
}

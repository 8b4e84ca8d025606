//! `corral._corral._Process`: one Python call in a child process.

use std::sync::Mutex;
use std::time::Instant;

use corral::{Child, ExitStatus, JoinTimeout, ProcessError};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use crate::task::{deadline, lock, slice};
use crate::value::{Callable, Mode, Out, PyFunc};
use crate::worker::py_process;

enum State {
    Running(Child<Out>),
    /// A thread is joining it.
    Joining,
    /// Ended, with Python's exit code (negative: the signal).
    Ended(i32),
}

/// A child process running a Python call.
#[pyclass(frozen, name = "_Process", module = "corral._corral")]
pub(crate) struct PyProcess {
    state: Mutex<State>,
    pid: u32,
}

fn os_error(e: impl std::fmt::Display) -> PyErr {
    PyOSError::new_err(e.to_string())
}

/// Python's exit code for how a child ended.
fn exit_code(r: Result<Out, ProcessError>) -> i32 {
    match r {
        Ok(Out::Value(_)) => 0,
        Ok(Out::Raised(_)) => 1,
        Ok(Out::Exit(code)) => code,
        Ok(Out::NeedFunc(_) | Out::Batch(..)) => 1,
        Err(ProcessError::Exited(ExitStatus::Code(c))) => c,
        Err(ProcessError::Exited(ExitStatus::Signal(s))) => -s,
        Err(_) => 1,
    }
}

#[pymethods]
impl PyProcess {
    /// Starts `func(*args, **kwargs)` (`arg` is the pair) in a child.
    #[new]
    #[pyo3(signature = (func, arg, name=None, daemon=false))]
    fn start(
        py: Python<'_>,
        func: PyRef<'_, PyFunc>,
        arg: &Bound<'_, PyAny>,
        name: Option<String>,
        daemon: bool,
    ) -> PyResult<PyProcess> {
        let call = Callable::new(&func, Mode::ArgsKwargs).call(arg)?;
        let mut builder = corral::Process::builder().daemon(daemon);
        if let Some(name) = name {
            builder = builder.name(name);
        }
        let child = py
            .detach(|| builder.spawn(py_process, call))
            .map_err(os_error)?;
        Ok(PyProcess {
            pid: child.pid(),
            state: Mutex::new(State::Running(child)),
        })
    }

    /// Waits for it to end, at most `timeout` seconds; true if it has.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = deadline(timeout);
        loop {
            let child = {
                let mut state = lock(&self.state);
                match std::mem::replace(&mut *state, State::Joining) {
                    State::Running(child) => Some(child),
                    State::Ended(code) => {
                        *state = State::Ended(code);
                        return Ok(true);
                    }
                    State::Joining => None,
                }
            };
            if let Some(child) = child {
                let joined = py.detach(|| child.join_timeout(slice(deadline)));
                *lock(&self.state) = match joined {
                    Ok(out) => State::Ended(exit_code(Ok(out))),
                    Err(JoinTimeout::Failed(e)) => State::Ended(exit_code(Err(e))),
                    Err(JoinTimeout::Elapsed(child)) => State::Running(child),
                };
            } else {
                py.detach(|| {
                    std::thread::sleep(slice(deadline).min(crate::task::SIGNAL_SLICE / 10))
                });
            }
            if matches!(*lock(&self.state), State::Ended(_)) {
                return Ok(true);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// Python's `exitcode`: `None` while it runs, else the code (negative:
    /// killed by that signal).
    #[getter]
    fn exitcode(&self, py: Python<'_>) -> PyResult<Option<i32>> {
        if let State::Running(child) = &*lock(&self.state)
            && child.is_alive()
        {
            return Ok(None);
        }
        // It ended: collect it (at once).
        self.join(py, Some(0.0))?;
        Ok(match *lock(&self.state) {
            State::Ended(code) => Some(code),
            _ => None,
        })
    }

    #[getter]
    fn pid(&self) -> u32 {
        self.pid
    }

    fn is_alive(&self) -> bool {
        match &*lock(&self.state) {
            State::Running(child) => child.is_alive(),
            State::Joining => true,
            State::Ended(_) => false,
        }
    }

    /// SIGTERM.
    fn terminate(&self) -> PyResult<()> {
        if let State::Running(child) = &*lock(&self.state) {
            child.terminate().map_err(os_error)?;
        }
        Ok(())
    }

    /// SIGKILL.
    fn kill(&self) -> PyResult<()> {
        if let State::Running(child) = &*lock(&self.state) {
            child.kill().map_err(os_error)?;
        }
        Ok(())
    }
}

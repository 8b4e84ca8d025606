//! The Python half of the binding (`corral/_support.py`): pickling, loading
//! callables and the main module in workers, exceptions. Its functions are
//! looked up once per process.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// `dumps(obj) -> bytes`.
pub(crate) const DUMPS: usize = 0;
/// `loads(bytes) -> obj`.
pub(crate) const LOADS: usize = 1;
/// `load_function(bytes, main) -> callable`.
pub(crate) const LOAD_FUNCTION: usize = 2;
/// `pack_exception(exc) -> bytes`.
pub(crate) const PACK_EXCEPTION: usize = 3;
/// `remote_error(bytes) -> exception`.
pub(crate) const REMOTE_ERROR: usize = 4;
/// `task_error(kind, message, signal, exitcode, pid, seconds, limit) -> exception`.
pub(crate) const TASK_ERROR: usize = 5;
/// `after_fork_in_child()`.
pub(crate) const AFTER_FORK: usize = 6;
/// `at_worker_exit()`.
pub(crate) const AT_EXIT: usize = 7;
/// `report_process_exception(bytes)`: prints a `Process` target's traceback.
pub(crate) const REPORT: usize = 8;

/// `run_batch(f, mode, items) -> (bytes, [(position, bytes)])`.
pub(crate) const RUN_BATCH: usize = 9;
/// `dump_function(f) -> _Func`.
pub(crate) const DUMP_FUNCTION: usize = 10;
/// `_functions`: the dict of `_Func`s made so far, `{id(f): (f, _Func)}`.
pub(crate) const FUNCTIONS: usize = 11;

const NAMES: [&str; 12] = [
    "dumps",
    "loads",
    "load_function",
    "pack_exception",
    "remote_error",
    "task_error",
    "after_fork_in_child",
    "at_worker_exit",
    "report_process_exception",
    "run_batch",
    "dump_function",
    "_functions",
];

static FUNCS: PyOnceLock<Vec<Py<PyAny>>> = PyOnceLock::new();

fn funcs(py: Python<'_>) -> PyResult<&Vec<Py<PyAny>>> {
    FUNCS.get_or_try_init(py, || {
        let module = py.import("corral._support")?;
        NAMES
            .iter()
            .map(|name| module.getattr(*name).map(Bound::unbind))
            .collect()
    })
}

/// Calls helper `which` with `args`.
pub(crate) fn call<'py, A>(py: Python<'py>, which: usize, args: A) -> PyResult<Bound<'py, PyAny>>
where
    A: pyo3::call::PyCallArgs<'py>,
{
    funcs(py)?[which].bind(py).call1(args)
}

/// Helper `which` itself (a function, or the `_functions` dict).
pub(crate) fn get(py: Python<'_>, which: usize) -> PyResult<&Bound<'_, PyAny>> {
    Ok(funcs(py)?[which].bind(py))
}

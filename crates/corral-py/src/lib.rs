//! corral for Python: the extension module `corral._corral`.
//!
//! The Python package `corral` (in `python/corral/`) is the API; this module
//! is its engine: corral's supervised pool and processes running Python
//! calls. A call crosses as data ([`value::Call`]): the callable pickled (by
//! reference where it can be), plain values natively, the rest pickled. Each
//! worker is a fork of corral's fork server, itself a fork of the interpreter
//! taken when `corral` finished importing; Python's fork protocol runs first
//! in every child ([`fork`]).

use std::ffi::OsString;

use pyo3::prelude::*;

mod batch;
mod fork;
mod imap;
mod map;
mod pool;
mod process;
mod support;
mod sys;
mod task;
mod value;
mod worker;

/// Starts corral in this interpreter: the command a re-executed child runs
/// (`reexec`: the interpreter with code that imports `corral`), the fork
/// hooks, then `corral::init()` (the fork server is forked now if the
/// interpreter has one thread, else started by re-execution when first
/// needed). In a child started by re-execution this never returns.
#[pyfunction]
fn _init(reexec: Vec<OsString>) {
    corral::set_reexec(corral::Reexec::Command(reexec));
    corral::at_fork(None, None, Some(fork::after_fork_in_child));
    corral::at_child_exit(fork::at_child_exit);
    corral::init();
}

/// The pid of this process's fork server, once it runs.
#[pyfunction]
fn _fork_server_pid() -> Option<u32> {
    corral::internal::fork_server_pid()
}

/// Descriptors held for the fork server's spare child on offer (0 or 3).
#[pyfunction]
fn _spare_fds() -> usize {
    corral::internal::spare_fds()
}

#[pymodule]
fn _corral(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_init, m)?)?;
    m.add_function(wrap_pyfunction!(_fork_server_pid, m)?)?;
    m.add_function(wrap_pyfunction!(_spare_fds, m)?)?;
    m.add_class::<pool::PyPool>()?;
    m.add_class::<imap::PyImap>()?;
    m.add_class::<task::PyTask>()?;
    m.add_class::<process::PyProcess>()?;
    m.add_class::<value::PyFunc>()?;
    Ok(())
}

//! Python's fork protocol in corral's children, and their exit.
#![allow(unsafe_code)]

use pyo3::prelude::*;

use crate::support;

/// First thing in every corral child (the `after_in_child` fork hook): the
/// interpreter is a copy of the one that imported corral; Python's own fork
/// protocol makes it sound (locks, thread states, `os.register_at_fork`
/// hooks: without it every worker would share one `random` state).
/// `PyOS_BeforeFork` first: 3.13's `PyOS_AfterFork_Child` releases the
/// import lock that it takes.
pub(crate) fn after_fork_in_child() {
    // Attached first: the process that forked may have released the GIL
    // (a pool built inside a task forks its server with the GIL released);
    // the child has one thread, which takes it.
    Python::attach(|py| {
        // SAFETY: the child has one thread, this one, which holds the GIL;
        // the pair is what CPython's own `os.fork` runs around a fork, here
        // run back to back in the child.
        unsafe {
            pyo3::ffi::PyOS_BeforeFork();
            pyo3::ffi::PyOS_AfterFork_Child();
        }
        crate::worker::forget_loaded();
        if let Err(e) = support::call(py, support::AFTER_FORK, ()) {
            e.print(py);
        }
    });
}

/// At a child's normal end (the `at_child_exit` hook): flushes Python's
/// standard streams, as the interpreter would at exit.
pub(crate) fn at_child_exit() {
    Python::attach(|py| {
        let _ = support::call(py, support::AT_EXIT, ());
    });
}

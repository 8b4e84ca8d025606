//! Python's fork protocol in corral's children, and their exit.

use pyo3::prelude::*;

use crate::support;

/// First thing in every corral child (the `after_in_child` fork hook): the
/// interpreter is a copy of the one that imported corral; Python's own fork
/// protocol makes it sound (without it every worker would share one
/// `random` state).
pub(crate) fn after_fork_in_child() {
    // Attached first: the process that forked may have released the GIL
    // (a pool built inside a task forks its server with the GIL released);
    // the child has one thread, which takes it.
    Python::attach(|py| {
        crate::sys::fork_protocol_in_child(py);
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

//! The interpreter's C API that PyO3 does not wrap: the only `unsafe` of
//! the extension.
#![allow(unsafe_code)]

/// Python's fork protocol, run back to back in a freshly forked child: what
/// CPython's own `os.fork` runs around a fork (locks, thread states and the
/// `os.register_at_fork` hooks made sound in the child). `PyOS_BeforeFork`
/// first: 3.13's `PyOS_AfterFork_Child` releases the import lock it takes.
///
/// The caller holds the GIL (the `Python` token proves it) and the process
/// has one thread: a corral child just forked.
pub(crate) fn fork_protocol_in_child(_py: pyo3::Python<'_>) {
    // SAFETY: the GIL is held by this thread (the token), which is the only
    // thread of a process just forked; the pair runs in the order CPython's
    // `os.fork` runs it.
    unsafe {
        pyo3::ffi::PyOS_BeforeFork();
        pyo3::ffi::PyOS_AfterFork_Child();
    }
}

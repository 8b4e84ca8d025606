//! Process-wide state: initialisation, the fork server client, the registry
//! of live children and what happens at exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use super::bootstrap::{self, BOOT_ENV};
use super::forkserver::{self, SERVER_ENV, ServerClient};
use super::reexec::ROLE_AT_INIT_ENV;
use crate::poison::lock;
use crate::process::Proc;
use crate::{Error, sys};

static INITIALIZED: AtomicBool = AtomicBool::new(false);

struct State {
    server: Mutex<Option<ServerClient>>,
    /// The working directory and environment the running fork server has
    /// (what its children start with unless told otherwise).
    baseline: Mutex<Option<Context>>,
    /// Named shared memory the server must remove when this process dies.
    tracked_shm: Mutex<Vec<String>>,
    children: Mutex<Vec<Arc<Proc>>>,
}

/// A working directory and environment (`KEY=VALUE` entries).
#[derive(Debug, PartialEq, Eq)]
struct Context {
    cwd: Vec<u8>,
    env: Vec<Vec<u8>>,
}

impl Context {
    fn current() -> Context {
        use std::os::unix::ffi::OsStrExt;
        let cwd = std::env::current_dir()
            .map(|d| d.as_os_str().as_bytes().to_vec())
            .unwrap_or_default();
        Context {
            cwd,
            env: forkserver::env_entries(),
        }
    }
}

/// The live children of this process that corral tracks, with their names
/// and daemon flags (reaping those that have ended).
pub(crate) fn live_children() -> Vec<Arc<Proc>> {
    let Some(state) = STATE.get_if_built() else {
        return Vec::new();
    };
    let mut children = lock(&state.children);
    children.retain(|c| Arc::strong_count(c) > 1 || !c.try_finish());
    children
        .iter()
        .filter(|c| !c.try_finish())
        .cloned()
        .collect()
}

static STATE: sys::ForkLocal<State> = sys::ForkLocal::new(|| {
    // A child that ends with `_exit` skips `at_exit`: it ends its own
    // children through this instead.
    bootstrap::before_quick_exit(finalize_children);
    State {
        server: Mutex::new(None),
        baseline: Mutex::new(None),
        tracked_shm: Mutex::new(Vec::new()),
        children: Mutex::new(Vec::new()),
    }
});

/// What a child must be told of this process's working directory and
/// environment: only what changed since the fork server started.
pub(crate) fn start_context() -> bootstrap::StartContext {
    let baseline = lock(&STATE.get().baseline);
    let Some(base) = baseline.as_ref() else {
        // No server yet: the one about to start has today's.
        return bootstrap::StartContext::default();
    };
    let now = Context::current();
    bootstrap::StartContext {
        cwd: (now.cwd != base.cwd && !now.cwd.is_empty()).then_some(now.cwd),
        env: (now.env != base.env).then_some(now.env),
    }
}

sys::before_main!(take_role_before_main);

/// Takes a re-executed child's role before `main` (see
/// [`sys::before_main`]), so nothing of `main` (a tokio runtime built by
/// `#[tokio::main]`, say) runs in it; unless it was started by a
/// [`Reexec::Command`](super::reexec::Reexec::Command), whose start-up runs
/// until [`init`] (a library loaded by a host takes its role only when the
/// host is ready).
fn take_role_before_main() {
    if std::env::var_os(ROLE_AT_INIT_ENV).is_none() {
        take_role();
    }
}

/// In a child started by re-execution (`Spawn`) or a re-executed fork
/// server: runs that role and never returns; [`init`] calls it again,
/// harmlessly.
fn take_role() {
    if let Some(spec) = std::env::var_os(BOOT_ENV) {
        sys::remove_env(BOOT_ENV.as_ref());
        mark_initialized();
        bootstrap::run_exec_child(&spec);
    }
    if let Some(spec) = std::env::var_os(SERVER_ENV) {
        sys::remove_env(SERVER_ENV.as_ref());
        forkserver::serve_exec(&spec);
    }
}

/// See [`crate::init`].
pub(crate) fn init() {
    if std::env::var_os(ROLE_AT_INIT_ENV).is_some() {
        sys::remove_env(ROLE_AT_INIT_ENV.as_ref());
    }
    take_role();
    if !mark_initialized() {
        return;
    }
    // A child of a fork of this program's own (`libc::fork`, Python's
    // `os.fork`) starts afresh, as corral's own forked children do: its own
    // fork server, pools and children, none of this process's.
    sys::watch_forks();
    // Work every child would otherwise repeat: done once here, inherited by
    // the fork server and everything it forks.
    let _ = sys::executable_identity();
    // Each live child costs a few descriptors: allow as many as the hard
    // limit does, as Go's runtime does (1024 would stop near 340 children).
    sys::raise_fd_limit();
    // Fork the server now, while the program is (normally) single-threaded.
    // A failure here is retried, and reported, at the first spawn.
    let threads = sys::thread_count();
    if threads == 1 {
        let _ = with_server(|_| Ok(()));
    } else {
        // Forking a multi-threaded program is unsafe: the server will be
        // started by re-executing this binary at the first spawn (safe, as
        // roles are taken before `main`, but slower).
        eprintln!(
            "corral: init() found {threads} threads running; the fork server will start by \
             re-executing this program at the first spawn. Call corral::init() first in main, \
             before any thread or async runtime starts (with tokio: a plain `fn main` that \
             calls corral::init() and then builds the runtime)."
        );
    }
}

/// Marks the process initialized; returns whether this call did it.
fn mark_initialized() -> bool {
    let first = !INITIALIZED.swap(true, Ordering::AcqRel);
    if first {
        sys::at_exit(at_exit);
    }
    first
}

/// Fails with [`Error::NotInitialized`] unless [`crate::init`] ran.
pub(crate) fn ensure_initialized() -> Result<(), Error> {
    if INITIALIZED.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(Error::NotInitialized)
    }
}

/// Runs `f` with this process's fork server, starting one if needed and
/// restarting it once if it turns out to be dead.
///
/// Only a server that is really gone (exited, or its connection closed) is
/// replaced: replacing a live one would kill every child it started. Any
/// other failure (out of descriptors, say) is this call's error alone.
pub(crate) fn with_server<T>(f: impl Fn(&ServerClient) -> Result<T, Error>) -> Result<T, Error> {
    let mut server = lock(&STATE.get().server);
    for attempt in 0..2 {
        if server.is_none() {
            let client = ServerClient::start()?;
            // A forked child closes its copy (else the server would not see
            // end-of-file when this process dies).
            sys::close_in_forked_children(client.raw_fd());
            *lock(&STATE.get().baseline) = Some(Context::current());
            if attempt > 0 {
                hand_over(&client);
            }
            *server = Some(client);
        }
        let client = server.as_ref().expect("just set");
        match f(client) {
            Err(Error::ForkServer(_)) if attempt == 0 && client.is_gone() => {
                *server = None;
                sys::close_in_forked_children(-1);
            }
            other => return other,
        }
    }
    unreachable!("the loop returns on its second attempt")
}

/// Tells a replacement fork server what the dead one was keeping for this
/// process: the named segments to remove, the children it forked itself to
/// kill, when this process dies.
fn hand_over(client: &ServerClient) {
    for name in lock(&STATE.get().tracked_shm).iter() {
        let _ = client.track_shm(name, true);
    }
    for child in lock(&STATE.get().children).iter() {
        if let Some((pid, pidfd)) = child.own_pidfd() {
            let _ = client.watch(pid, pidfd);
        }
    }
}

/// Has this process's fork server remove `/dev/shm/<name>` when this
/// process ends, however it ends (`track: false` undoes it). Remembered, so
/// that a replacement server is told too.
pub(crate) fn track_shm(name: &str, track: bool) -> Result<(), Error> {
    {
        let mut tracked = lock(&STATE.get().tracked_shm);
        if track {
            tracked.push(name.to_owned());
        } else {
            tracked.retain(|n| n != name);
        }
    }
    with_server(|server| server.track_shm(name, track))
}

/// The fork server's pid, if this process has one running.
pub(crate) fn server_pid() -> Option<i32> {
    lock(&STATE.get().server).as_ref().map(ServerClient::pid)
}

/// How many descriptors this process holds for a spare child on offer from
/// its fork server (see [`super::spare`]): 0 or 3.
pub(crate) fn spare_fds() -> usize {
    lock(&STATE.get().server)
        .as_ref()
        .map_or(0, ServerClient::held_fds)
}

/// The pid of the spare child this process was offered, after reading the
/// offers that arrived (see [`super::spare`]).
pub(crate) fn spare_pid() -> Option<i32> {
    lock(&STATE.get().server)
        .as_ref()
        .and_then(|server| server.offered_pid().ok().flatten())
}

/// In a child forked directly: drops the parent's fork server connection.
pub(crate) fn forget_inherited_server() {
    sys::close_inherited_connection();
}

/// Tracks a live child until it is reaped.
pub(crate) fn register(child: Arc<Proc>) {
    let mut children = lock(&STATE.get().children);
    // Reap children whose handles were dropped and that have since exited:
    // no zombie outlives the next spawn.
    children.retain(|c| Arc::strong_count(c) > 1 || !c.try_finish());
    children.push(child);
}

/// Stops tracking a child (it was reaped through its handle).
pub(crate) fn unregister(child: &Arc<Proc>) {
    lock(&STATE.get().children).retain(|c| !Arc::ptr_eq(c, child));
}

/// Python's exit semantics: daemon children are terminated, the others are
/// joined. Then the fork server's socket closes and the server kills anything
/// left.
extern "C" fn at_exit() {
    finalize_children();
}

/// See [`at_exit`]; also called directly by a child that ends with `_exit`.
pub(crate) fn finalize_children() {
    // A process that never started a child has nothing to do (and building
    // the state here would cost a fresh child page faults for nothing).
    let Some(state) = STATE.get_if_built() else {
        return;
    };
    let children = match state.children.try_lock() {
        Ok(mut guard) => std::mem::take(&mut *guard),
        Err(TryLockError::Poisoned(p)) => std::mem::take(&mut *p.into_inner()),
        // Another thread is spawning while the process exits: leave the
        // children to the fork server and the death signal.
        Err(TryLockError::WouldBlock) => Vec::new(),
    };
    for child in children.iter().filter(|c| c.daemon()) {
        let _ = child.signal(sys::Sig::Term);
    }
    let grace = Instant::now() + Duration::from_secs(1);
    for child in &children {
        if child.daemon() {
            if !child.wait(Some(grace)).unwrap_or(true) {
                let _ = child.signal(sys::Sig::Kill);
                let _ = child.wait(None);
            }
        } else {
            let _ = child.wait(None);
        }
    }
    if let Ok(mut server) = state.server.try_lock() {
        server.take();
    }
}

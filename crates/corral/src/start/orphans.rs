//! Descendants that outlive their parent: the fork server adopts them.
//!
//! A task's subprocesses normally stay in its worker's process group, which
//! dies with the worker. A descendant that leaves the group (`setsid`, a
//! double-forking daemon) escapes that. Two things Linux offers find it:
//!
//! * the fork server is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so a
//!   descendant whose parent is gone becomes the server's child instead of
//!   init's, and the server wakes on `SIGCHLD` (a signalfd);
//! * every pool worker puts its pid in its environment ([`TREE_ENV`]), which
//!   its descendants inherit and `/proc/<pid>/environ` shows.
//!
//! So an adopted orphan carrying the mark of a worker dies, with its
//! subtree, as soon as that worker is gone (at once if it already is). Any
//! other orphan is reaped once it has exited and the server has a moment
//! with nothing to do (200 µs; 20 ms at the latest), and killed when the
//! parent program dies: the server then kills whatever is left below it,
//! round after round, until it has no child at all. What escapes: a
//! descendant that clears its environment and whose parent still lives (it
//! is not an orphan yet) survives its worker until the program ends.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::sys;

/// The environment variable naming the pool worker a process descends from.
pub(crate) const TREE_ENV: &str = "CORRAL_WORKER_TREE";

/// One adopted orphan.
struct Orphan {
    pid: i32,
    pidfd: OwnedFd,
    /// The pool worker it descends from, as its environment says.
    mark: Mark,
    adopted: Instant,
}

/// How long an orphan's environment is read again while it reads empty:
/// an `exec` ends within it; an environment emptied on purpose stays so.
const UNREAD_FOR: Duration = Duration::from_secs(1);

/// What an orphan's environment says of the worker it descends from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Worker(i32),
    /// No worker's mark.
    None,
    /// Not readable yet: an orphan adopted in the middle of an `exec`
    /// shows an empty environment. Read again at each sweep, sweeps kept
    /// coming while one is unread (for [`UNREAD_FOR`] at most, then taken
    /// for unmarked); before, such an orphan was taken for unmarked at
    /// once, and a daemon adopted so outlived its worker (seen once in CI).
    Unread,
}

impl Mark {
    fn of(pid: i32) -> Mark {
        match sys::env_of(pid, TREE_ENV) {
            None => Mark::Unread,
            Some(value) => value
                .and_then(|v| v.parse().ok())
                .map_or(Mark::None, Mark::Worker),
        }
    }
}

/// The server's adopted orphans.
pub(super) struct Orphans {
    server: i32,
    adopted: Vec<Orphan>,
    /// Readable when a child of the server exited (`None`: no signalfd).
    sigchld: Option<OwnedFd>,
}

impl Orphans {
    /// Makes the calling server a subreaper that wakes on `SIGCHLD`.
    pub(super) fn new(server: i32) -> Orphans {
        let _ = sys::become_subreaper();
        Orphans {
            server,
            adopted: Vec::new(),
            sigchld: sys::sigchld_fd().ok(),
        }
    }

    /// The signalfd to poll, if there is one.
    pub(super) fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.sigchld.as_ref().map(|fd| fd.as_fd())
    }

    /// Reads the pending `SIGCHLD` (left pending, it would wake every poll);
    /// a [`sweep`](Orphans::sweep) is then due.
    pub(super) fn take_signal(&self) {
        if let Some(fd) = &self.sigchld {
            sys::signalfd_drain(fd.as_fd());
        }
    }

    /// After a child of the server exited: reaps adopted orphans that are
    /// gone, adopts new ones (children of the server not in `kids`), and
    /// kills those whose worker is no longer among `workers`. Whether one
    /// could not be read yet (then another sweep is due).
    pub(super) fn sweep(&mut self, kids: &[i32], workers: &[i32]) -> bool {
        self.adopted
            .retain(|o| matches!(sys::reap(o.pidfd.as_fd(), false), Ok(None)));
        for pid in sys::children_of(self.server) {
            if kids.contains(&pid) || self.adopted.iter().any(|o| o.pid == pid) {
                continue;
            }
            if let Ok(pidfd) = sys::pidfd_open(pid) {
                self.adopted.push(Orphan {
                    pid,
                    pidfd,
                    mark: Mark::Unread,
                    adopted: Instant::now(),
                });
            }
        }
        let mut unread = false;
        for orphan in &mut self.adopted {
            if orphan.mark == Mark::Unread {
                orphan.mark = match Mark::of(orphan.pid) {
                    Mark::Unread if orphan.adopted.elapsed() >= UNREAD_FOR => Mark::None,
                    mark => mark,
                };
                unread |= orphan.mark == Mark::Unread;
            }
            if let Mark::Worker(w) = orphan.mark
                && !workers.contains(&w)
            {
                sys::kill_tree(orphan.pid);
            }
        }
        unread
    }

    /// The parent program is gone: every process left in the server's
    /// subtree dies too, and is reaped, until the server has no child left
    /// (or `until` passes). Looked for again after each round, not once: a
    /// descendant whose own parent dies meanwhile (a nested pool's worker,
    /// killed by its fork server, which is itself being killed) becomes the
    /// server's child only then, and one seen too early would outlive the
    /// program, adopted by init.
    pub(super) fn kill_all(&mut self, until: Instant) {
        // Reaped below by `waitpid` like every other child.
        self.adopted.clear();
        loop {
            sys::reap_exited_children();
            let children = sys::children_of(self.server);
            if children.is_empty() || Instant::now() >= until {
                return;
            }
            for pid in children {
                sys::kill_tree(pid);
            }
            self.wait_for_an_exit(until);
        }
    }

    /// Waits for a child to exit (a `SIGCHLD`), at most a few milliseconds
    /// and not past `until`.
    fn wait_for_an_exit(&self, until: Instant) {
        let most = until
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(5));
        match &self.sigchld {
            Some(fd) => {
                let _ = sys::poll_readable(&[fd.as_fd()], Some(most));
                sys::signalfd_drain(fd.as_fd());
            }
            None => std::thread::sleep(most.min(Duration::from_millis(1))),
        }
    }
}

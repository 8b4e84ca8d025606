//! A handle on a running child and the state behind it.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::poison;
use crate::start::bootstrap::decode_outcome;
use crate::start::forkserver::decode_status;
use crate::start::runtime;
use crate::wire::{self, FrameReader, Progress};
use crate::{Data, Error, ExitStatus, JoinTimeout, ProcessError, sys};

/// Who reaps the child and so knows its exit status.
#[derive(Debug)]
pub(crate) enum Reaper {
    /// This process forked it and reaps it through its pidfd.
    Own,
    /// The fork server forked it; it writes the status to this pipe.
    Server { status: OwnedFd },
    /// This process forked it, but it had exited and been reaped by the
    /// kernel (`SIGCHLD` ignored) before a pidfd could be opened: its status
    /// is unknown. Its "pidfd" is an always-readable stand-in.
    Kernel,
}

#[derive(Clone, Copy, Debug)]
enum Fate {
    Exited(ExitStatus),
    /// The fork server died before it could report the status.
    Lost,
}

#[derive(Debug)]
struct ProcState {
    reader: FrameReader,
    frame: Option<Vec<u8>>,
    /// No more result bytes will be read (a frame arrived, or the stream
    /// ended or broke).
    result_done: bool,
    /// The process has exited (its pidfd is readable).
    exited: bool,
    /// Its exit status, once known. For a fork-server child the status
    /// arrives through the status pipe and is only read when someone needs
    /// it, which keeps the server's report off the join path.
    fate: Option<Fate>,
}

/// The untyped state of one child process.
#[derive(Debug)]
pub(crate) struct Proc {
    pid: i32,
    name: Option<String>,
    daemon: bool,
    pidfd: OwnedFd,
    reaper: Reaper,
    result: OwnedFd,
    /// Kill what is left of its process group when it exits (pool workers).
    group_dies: bool,
    /// `sys::watch_forks()` in the process that started it, and that
    /// process: a forked child holds a copy of this handle that must not
    /// read the result (the socket is shared: it would take the result
    /// meant for the parent) nor reap.
    forks: u64,
    owner: u32,
    state: Mutex<ProcState>,
}

impl Proc {
    pub(crate) fn new(
        pid: i32,
        name: Option<String>,
        daemon: bool,
        pidfd: OwnedFd,
        reaper: Reaper,
        result: OwnedFd,
    ) -> Proc {
        let _ = sys::set_nonblocking(result.as_fd(), true);
        Proc {
            pid,
            name,
            daemon,
            pidfd,
            reaper,
            result,
            group_dies: false,
            forks: sys::watch_forks(),
            owner: std::process::id(),
            state: Mutex::new(ProcState {
                reader: FrameReader::new(wire::MAX_FRAME),
                frame: None,
                result_done: false,
                exited: false,
                fate: None,
            }),
        }
    }

    /// See [`Proc::group_dies`]'s field.
    pub(crate) fn group_dies(mut self, on: bool) -> Proc {
        self.group_dies = on;
        self
    }

    /// The pid and pidfd of a child this process forked itself (and so
    /// reaps), for a fork server to watch.
    pub(crate) fn own_pidfd(&self) -> Option<(i32, BorrowedFd<'_>)> {
        match self.reaper {
            Reaper::Own if !self.lock().exited => Some((self.pid, self.pidfd.as_fd())),
            _ => None,
        }
    }

    pub(crate) fn daemon(&self) -> bool {
        self.daemon
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid as u32
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The error of a forked child's copy of this handle, which neither
    /// reads the result nor reaps; `None` in the process that started it.
    fn copied(&self) -> Option<ProcessError> {
        (sys::forks() != self.forks).then_some(ProcessError::ForkedCopy(self.owner))
    }

    fn lock(&self) -> MutexGuard<'_, ProcState> {
        poison::lock(&self.state)
    }

    /// Reads whatever result bytes are available without blocking.
    fn pump(&self, st: &mut ProcState) {
        while !st.result_done {
            match st.reader.read_from(self.result.as_fd()) {
                Ok(Progress::Pending) => return,
                Ok(Progress::Frame(frame)) => {
                    st.frame = Some(frame);
                    st.result_done = true;
                }
                // End of stream, a torn frame or an I/O error: the child died
                // without a (whole) result; its exit status tells the story.
                Ok(Progress::Eof) | Err(_) => st.result_done = true,
            }
        }
    }

    /// After the child exited: reads the rest of its result and, for a child
    /// of this process, reaps it.
    fn on_exit(&self, st: &mut ProcState) -> std::io::Result<()> {
        self.pump(st);
        st.result_done = true;
        st.exited = true;
        if let Reaper::Own = self.reaper
            && self.group_dies
        {
            // Not reaped yet: the zombie keeps the group id from reuse.
            let _ = sys::signal_group(self.pid, sys::Sig::Kill);
        }
        if let Reaper::Kernel = self.reaper {
            st.fate = Some(Fate::Lost);
        }
        if let Reaper::Own = self.reaper {
            match sys::reap(self.pidfd.as_fd(), true) {
                Ok(Some(ended)) => st.fate = Some(Fate::Exited(ended.into())),
                Ok(None) => {}
                // SIGCHLD is ignored (SIG_IGN, common in daemons): the kernel
                // reaped it and kept no status. Its result, if it sent one,
                // was read above.
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => st.fate = Some(Fate::Lost),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The exit status of an exited child, waiting at most until `deadline`
    /// for the fork server to report it.
    fn fate(&self, st: &mut ProcState, deadline: Option<Instant>) -> std::io::Result<Option<Fate>> {
        if st.fate.is_some() || !st.exited {
            return Ok(st.fate);
        }
        let Reaper::Server { status } = &self.reaper else {
            return Ok(st.fate);
        };
        if !sys::poll_readable(&[status.as_fd()], remaining(deadline))?[0] {
            return Ok(None);
        }
        let mut message = [0u8; 8];
        let mut got = 0;
        while got < message.len() {
            match sys::read(status.as_fd(), &mut message[got..])? {
                0 => break,
                n => got += n,
            }
        }
        let fate = if got == message.len() {
            Fate::Exited(decode_status(&message))
        } else {
            Fate::Lost
        };
        st.fate = Some(fate);
        Ok(st.fate)
    }

    /// Waits until the child has exited, or until `deadline`. Returns whether
    /// it exited. Spins briefly before sleeping: a child that is about to
    /// finish is cheaper to watch than to be woken by (a cross-CPU wake-up
    /// costs 35-60 µs on small VMs).
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> std::io::Result<bool> {
        if self.copied().is_some() {
            // A copy only watches: its pidfd is readable once the child exits.
            return Ok(sys::poll_readable(&[self.pidfd.as_fd()], remaining(deadline))?[0]);
        }
        let spin_until = Instant::now() + SPIN;
        loop {
            let result_done = {
                let mut st = self.lock();
                if st.exited {
                    return Ok(true);
                }
                self.pump(&mut st);
                st.result_done
            };
            let mut fds = vec![self.pidfd.as_fd()];
            if !result_done {
                fds.push(self.result.as_fd());
            }
            let spinning = Instant::now() < spin_until;
            let timeout = if spinning {
                Some(Duration::ZERO)
            } else {
                remaining(deadline)
            };
            let ready = sys::poll_readable(&fds, timeout)?;
            if ready[0] {
                let mut st = self.lock();
                if !st.exited {
                    self.on_exit(&mut st)?;
                }
                return Ok(true);
            }
            if spinning {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
                std::hint::spin_loop();
                continue;
            }
            if !ready.iter().any(|&r| r) {
                return Ok(false);
            }
        }
    }

    /// Reaps the child if it has exited, without blocking.
    pub(crate) fn try_finish(&self) -> bool {
        self.wait(Some(Instant::now())).unwrap_or(true)
    }

    /// Sends a signal to the child (race-free through its pidfd).
    pub(crate) fn signal(&self, sig: sys::Sig) -> std::io::Result<()> {
        if matches!(self.reaper, Reaper::Kernel) || self.lock().exited {
            return Ok(());
        }
        sys::signal(self.pidfd.as_fd(), sig)
    }

    /// Sends `sig` to the child's process group and the child.
    pub(crate) fn signal_tree(&self, sig: sys::Sig) -> std::io::Result<()> {
        let exited = self.lock().exited;
        if exited || sys::poll_readable(&[self.pidfd.as_fd()], Some(Duration::ZERO))?[0] {
            // Already gone. A fork server may have reaped it, so its pid (and
            // group id) may be recycled: do not signal by number. (A worker's
            // group is killed by whoever reaps it, before reaping.)
            return Ok(());
        }
        // The leader was alive an instant ago, so the group is still its own.
        sys::signal_group(self.pid, sig)?;
        sys::signal(self.pidfd.as_fd(), sig)
    }

    /// The child's result, or how it ended without one, waiting until
    /// `report_by` at most for the fork server's report of its status.
    fn outcome<R: Data>(&self, report_by: Option<Instant>) -> Result<R, ProcessError> {
        let mut st = self.lock();
        if let Some(frame) = st.frame.take() {
            return decode_outcome(&frame).map_err(|e| match self.fate(&mut st, report_by) {
                Ok(Some(Fate::Exited(status))) => e.with_exit_status(status),
                _ => e,
            });
        }
        match self.fate(&mut st, report_by)? {
            Some(Fate::Exited(status)) => Err(ProcessError::Exited(status)),
            Some(Fate::Lost) | None => Err(ProcessError::Lost),
        }
    }

    pub(crate) fn wait_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.pidfd.as_fd(), self.result.as_fd()]
    }
}

/// How long a waiter polls before it sleeps.
const SPIN: Duration = Duration::from_micros(300);

/// How long `join` waits at most for the fork server's report of an exited
/// child's status: it comes within microseconds of the exit; a minute means
/// the server is wedged, which is as good as lost.
const REPORT_WAIT: Duration = Duration::from_secs(60);

/// How long `exit_status` waits at most for that report of a child seen
/// exited: a question about a status, not a join, gives up sooner.
const STATUS_WAIT: Duration = Duration::from_secs(10);

fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// A child process that runs a function and returns an `R`.
///
/// Made by [`crate::spawn`] or [`crate::ProcessBuilder`]. Like
/// `std::thread::JoinHandle`, [`join`](Child::join) waits for the child and
/// returns its result.
///
/// # Dropping
///
/// Dropping a `Child` does not stop the process (as in Python). corral still
/// reaps it (no zombie outlives the next spawn), joins it at normal program
/// exit unless it is a daemon, and kills it if this process dies.
///
/// # Examples
///
/// ```no_run
/// fn add((a, b): (u64, u64)) -> u64 { a + b }
/// corral::init();
/// let child = corral::spawn(add, (1, 2)).unwrap();
/// println!("running as pid {}", child.pid());
/// assert_eq!(child.join().unwrap(), 3);
/// ```
pub struct Child<R> {
    proc: Arc<Proc>,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Child<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.proc.pid)
            .field("name", &self.proc.name)
            .field("daemon", &self.proc.daemon)
            .finish()
    }
}

impl<R: Data> Child<R> {
    pub(crate) fn new(proc: Proc) -> Child<R> {
        let proc = Arc::new(proc);
        runtime::register(proc.clone());
        Child {
            proc,
            _result: PhantomData,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid as u32
    }

    /// The child's name, if it was given one.
    pub fn name(&self) -> Option<&str> {
        self.proc.name.as_deref()
    }

    /// Whether the child is a daemon (terminated, not joined, at exit).
    pub fn is_daemon(&self) -> bool {
        self.proc.daemon
    }

    /// Whether the child is still running.
    pub fn is_alive(&self) -> bool {
        !self.proc.try_finish()
    }

    /// Waits for the child to exit and returns its result.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Panicked`] with the child's panic message, location and
    /// backtrace; [`ProcessError::Exited`] with the exit code or signal if it
    /// ended without a result (crash, `exit`, kill); [`ProcessError::Codec`]
    /// if the argument or result could not cross; at once,
    /// [`ProcessError::ForkedCopy`] in a forked child of the process that
    /// started it (only that one gets the result).
    pub fn join(self) -> Result<R, ProcessError> {
        if let Some(copied) = self.proc.copied() {
            return Err(copied);
        }
        self.proc.wait(None)?;
        runtime::unregister(&self.proc);
        self.proc.outcome(crate::time::deadline(REPORT_WAIT))
    }

    /// Whether this handle is a forked child's copy (see
    /// [`ProcessError::ForkedCopy`]).
    pub(crate) fn is_forked_copy(&self) -> bool {
        self.proc.copied().is_some()
    }

    /// [`join`](Child::join) for an owner that keeps the handle (a pool's
    /// worker record), waiting until `report_by` at most for the fork
    /// server's report; joining it again returns a codec or lost error.
    pub(crate) fn join_in_place(&self, report_by: Option<Instant>) -> Result<R, ProcessError> {
        self.proc.wait(None)?;
        runtime::unregister(&self.proc);
        self.proc.outcome(report_by)
    }

    /// Like [`join`](Child::join), but gives up after `timeout` and hands the
    /// child back in [`JoinTimeout::Elapsed`].
    #[doc(alias = "join_deadline")]
    pub fn join_timeout(self, timeout: Duration) -> Result<R, JoinTimeout<R>> {
        if let Some(copied) = self.proc.copied() {
            return Err(JoinTimeout::Failed(copied));
        }
        match self.proc.wait(crate::time::deadline(timeout)) {
            Ok(true) => {
                runtime::unregister(&self.proc);
                let report_by = crate::time::deadline(REPORT_WAIT);
                self.proc.outcome(report_by).map_err(JoinTimeout::Failed)
            }
            Ok(false) => Err(JoinTimeout::Elapsed(self)),
            Err(e) => Err(JoinTimeout::Failed(ProcessError::Io(e))),
        }
    }

    /// Sends `SIGTERM` to the child. A child that already exited is not an error.
    pub fn terminate(&self) -> Result<(), Error> {
        self.proc
            .signal(sys::Sig::Term)
            .map_err(Error::io("sending SIGTERM"))
    }

    /// Sends `SIGINT` to the child, as Ctrl-C would: Python's
    /// `os.kill(p.pid, signal.SIGINT)`, where `KeyboardInterrupt` lets the
    /// child clean up. A Rust child ends at once unless it handles the
    /// signal (with a crate such as `ctrlc` or `signal-hook`), or ignores
    /// it: a child inherits its parent's "ignored" (a program started in
    /// the background of a non-interactive shell has `SIGINT` ignored, as
    /// under `nohup cmd &`). A child that already exited is not an error.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use corral::ExitStatus;
    /// fn forever(_: ()) { loop { std::thread::park() } }
    /// corral::init();
    /// let child = corral::spawn(forever, ()).unwrap();
    /// child.interrupt().unwrap();
    /// let err = child.join().unwrap_err();
    /// assert_eq!(err.exit_status(), Some(ExitStatus::Signal(2))); // SIGINT
    /// ```
    pub fn interrupt(&self) -> Result<(), Error> {
        self.proc
            .signal(sys::Sig::Int)
            .map_err(Error::io("sending SIGINT"))
    }

    /// Sends `SIGKILL` to the child and its process group (anything it started
    /// with `std::process::Command`, say). A child that already exited is not
    /// an error.
    pub fn kill(&self) -> Result<(), Error> {
        self.proc
            .signal_tree(sys::Sig::Kill)
            .map_err(Error::io("sending SIGKILL"))
    }

    /// The exit status, if the child has exited. Does not wait for a running
    /// child (it may wait a moment for the fork server's report of an exited
    /// one).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit_status_by(crate::time::deadline(STATUS_WAIT))
    }

    /// [`exit_status`](Child::exit_status), waiting until `report_by` at
    /// most for the fork server's report.
    pub(crate) fn exit_status_by(&self, report_by: Option<Instant>) -> Option<ExitStatus> {
        if !self.proc.try_finish() {
            return None;
        }
        let mut st = self.proc.lock();
        match self.proc.fate(&mut st, report_by) {
            Ok(Some(Fate::Exited(status))) => Some(status),
            _ => None,
        }
    }

    pub(crate) fn proc(&self) -> &Proc {
        &self.proc
    }
}

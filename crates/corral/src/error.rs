//! Every public error type of corral, in one place.
//!
//! Errors say what happened and, where there is one, what to do about it.
//! They are `Send + Sync + 'static`; wrapped `io::Error`s stay reachable
//! through [`std::error::Error::source`].

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

use crate::ExitStatus;
use crate::process::Child;

/// An error starting a process or using a corral handle.
///
/// # Examples
///
/// ```
/// let err = corral::Error::NotInitialized;
/// assert!(err.to_string().contains("corral::init()"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A process was started before [`crate::init`] ran.
    #[error(
        "corral::init() was not called: make `corral::init();` the first line of `main` \
         (in a test crate, add `corral::test_support!();` once at its top level)"
    )]
    NotInitialized,
    /// A system call failed. Out of descriptors (`EMFILE`/`ENFILE`) or
    /// processes (`EAGAIN` from fork), the message says what to do.
    #[error("{context}: {source}{}", hint(source))]
    Io {
        /// What corral was doing.
        context: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The argument could not be serialized.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The fork server that starts children is gone or answered nonsense.
    #[error("the corral fork server failed ({0}); it restarts on the next spawn")]
    ForkServer(String),
    /// The operation is not available on this platform or configuration.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// An argument is out of range (Python raises `ValueError`).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A connection's handshake failed: the peer holds another authkey, or
    /// speaks a digest this side does not accept (Python's
    /// `AuthenticationError`).
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// corral had to re-execute (to start a fork server in a program that
    /// already had threads, or a `Spawn` child) and the program refused it
    /// with [`crate::set_reexec`]`(Reexec::Refuse)`.
    #[error(
        "corral must re-execute this program to {0}, and re-execution is refused here \
         (corral::Reexec::Refuse); start corral before any thread (call corral::init() first), \
         use another start method, or set a re-exec command with corral::set_reexec"
    )]
    ReexecRefused(&'static str),
    /// This process is a corral child `depth` levels down, at the limit:
    /// tasks that start processes or pools recursively (loky's
    /// `LokyRecursionError`).
    #[error(
        "processes nested {depth} levels deep may start no more (the limit is {limit}): \
         a task starts processes or pools recursively; if that is meant, raise the limit \
         with the CORRAL_MAX_DEPTH environment variable"
    )]
    NestingTooDeep {
        /// How deep this process is (the main program is 0).
        depth: u32,
        /// The limit in force.
        limit: u32,
    },
}

/// What to do about a resource error, as a sentence to append.
fn hint(source: &io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::EMFILE) => {
            "; this process has no file descriptor left: close handles it no longer needs \
             (each live child holds 3), or raise the hard limit (`ulimit -Hn`, \
             LimitNOFILE= in systemd); corral::init() raised the soft limit to the hard one"
        }
        Some(libc::ENFILE) => "; the whole system is out of file descriptors (fs.file-max)",
        Some(libc::ENOSPC) => {
            "; shared memory is full: free segments, or enlarge /dev/shm \
             (Docker's default is 64 MiB: run with --shm-size)"
        }
        Some(libc::EAGAIN) => {
            "; the system refused another process: check `ulimit -u` and the pids cgroup"
        }
        _ => "",
    }
}

impl Error {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { context, source }
    }
}

/// A value that could not be serialized or deserialized.
///
/// # Examples
///
/// ```
/// let err = corral::CodecError::new("a test");
/// assert_eq!(err.to_string(), "serialization failed: a test");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("serialization failed: {message}")]
pub struct CodecError {
    message: String,
    /// How the child ended, when this failure is a child's result.
    #[serde(skip)]
    exit_status: Option<ExitStatus>,
}

impl CodecError {
    /// A codec error with a message.
    pub fn new(message: impl Into<String>) -> CodecError {
        CodecError {
            message: message.into(),
            exit_status: None,
        }
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The message a panic was raised with (`panic!("...")`'s text), for a
/// panic caught on its way out of user code.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

/// A malformed frame on a corral channel: truncated, oversized or corrupt.
///
/// # Examples
///
/// ```
/// let err = corral::WireError::TooLarge { len: 1 << 40, max: 1 << 31 };
/// assert!(err.to_string().contains("too large"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The stream ended inside a frame.
    #[error("frame truncated: expected {expected} bytes, the stream ended after {received}")]
    Truncated {
        /// Bytes the frame announced (header included).
        expected: u64,
        /// Bytes that arrived.
        received: u64,
    },
    /// The frame announces more than the channel accepts.
    #[error("frame too large: {len} bytes announced, at most {max} accepted")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The frame's content is not a valid corral message.
    #[error("corrupt frame: {0}")]
    Corrupt(&'static str),
}

/// How a child ended, when it did not return a value.
///
/// `Display` includes the panic message.
///
/// # Examples
///
/// ```
/// use corral::{ExitStatus, ProcessError};
/// let err = ProcessError::Exited(ExitStatus::Signal(9));
/// assert_eq!(err.to_string(), "the child ended without a result: killed by signal 9 (SIGKILL)");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The child's function panicked.
    #[error("the child panicked: {0}")]
    Panicked(RemotePanic),
    /// The child exited or was killed before it produced a result.
    #[error("the child ended without a result: {0}")]
    Exited(ExitStatus),
    /// The argument or the result could not be (de)serialized.
    #[error("the child's argument or result failed to cross: {0}")]
    Codec(CodecError),
    /// The child refused the task (for example, it runs a different binary).
    #[error("the child refused to run the task: {0}")]
    Refused(String),
    /// The child's exit status is unknown: the fork server that reaps it
    /// died, or this process ignores `SIGCHLD` (so the kernel reaped it).
    #[error(
        "the child ended without a result and its exit status is unknown \
         (the fork server that reaps it died, or SIGCHLD is ignored)"
    )]
    Lost,
    /// A system call failed while waiting for the child.
    #[error("waiting for the child failed: {0}")]
    Io(#[from] io::Error),
    /// The child was started by this process (its pid), and the handle is a
    /// forked child's copy of it: only the process that started a child
    /// gets its result (the copy would take it from there).
    #[error(
        "this child was started by process {0}, and this is a forked child of it: only that process joins it"
    )]
    ForkedCopy(u32),
}

impl ProcessError {
    /// The panic, if the child panicked.
    pub fn panic(&self) -> Option<&RemotePanic> {
        match self {
            ProcessError::Panicked(p) => Some(p),
            _ => None,
        }
    }

    /// How the child ended, when known: for a child that ended without a
    /// result, and for one that panicked or whose result could not cross
    /// (Python's `exitcode`, readable after `join`). `None` for a refused
    /// task or a lost status.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use corral::ExitStatus;
    /// fn fails(_: ()) { panic!("no") }
    /// corral::init();
    /// let err = corral::spawn(fails, ()).unwrap().join().unwrap_err();
    /// assert_eq!(err.exit_status(), Some(ExitStatus::Code(1)));
    /// ```
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self {
            ProcessError::Exited(s) => Some(*s),
            ProcessError::Panicked(p) => p.exit_status,
            ProcessError::Codec(e) => e.exit_status,
            _ => None,
        }
    }

    /// Records how the child ended, for [`exit_status`](Self::exit_status).
    pub(crate) fn with_exit_status(mut self, status: ExitStatus) -> ProcessError {
        match &mut self {
            ProcessError::Panicked(p) => p.exit_status = Some(status),
            ProcessError::Codec(e) => e.exit_status = Some(status),
            _ => {}
        }
        self
    }
}

/// A panic that happened in another process, brought back as data.
///
/// # Examples
///
/// ```no_run
/// fn fails(_: ()) -> u8 { panic!("boom") }
/// corral::init();
/// let err = corral::spawn(fails, ()).unwrap().join().unwrap_err();
/// let panic = err.panic().unwrap();
/// assert_eq!(panic.message, "boom");
/// println!("{}", panic.backtrace);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemotePanic {
    /// The panic message (`"Box<dyn Any>"` for a payload that is not a string).
    pub message: String,
    /// `file:line:column` of the panic, when known.
    pub location: Option<String>,
    /// The child's backtrace at the panic (empty if it could not be captured).
    pub backtrace: String,
    /// The process id of the child that panicked.
    pub pid: u32,
    /// How that process ended, when it was a [`Child`] (a
    /// pool worker goes on: `None`). Python's `exitcode` after a raise.
    #[serde(skip)]
    pub exit_status: Option<ExitStatus>,
}

impl fmt::Display for RemotePanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(at) => write!(f, "'{}' at {} (pid {})", self.message, at, self.pid),
            None => write!(f, "'{}' (pid {})", self.message, self.pid),
        }
    }
}

impl std::error::Error for RemotePanic {}

/// The result of [`Child::join_timeout`]: the child is still running (and is
/// handed back), or it ended with an error.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use corral::JoinTimeout;
/// fn slow(_: ()) { std::thread::sleep(Duration::from_secs(5)) }
/// corral::init();
/// let child = corral::spawn(slow, ()).unwrap();
/// match child.join_timeout(Duration::from_millis(10)) {
///     Err(JoinTimeout::Elapsed(child)) => child.kill().unwrap(),
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(thiserror::Error)]
pub enum JoinTimeout<R> {
    /// The timeout passed; here is the child back.
    #[error("the child is still running after the timeout")]
    Elapsed(Child<R>),
    /// The child ended without a value.
    #[error(transparent)]
    Failed(ProcessError),
}

impl<R> fmt::Debug for JoinTimeout<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinTimeout::Elapsed(child) => f.debug_tuple("Elapsed").field(child).finish(),
            JoinTimeout::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// An error sending on a [`crate::Pipe`] end.
///
/// # Examples
///
/// ```
/// let (a, b) = corral::Pipe::duplex().unwrap();
/// drop(b);
/// assert!(matches!(a.send(&1u8), Err(corral::SendError::Disconnected)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The other end is closed.
    #[error("sending on a closed pipe")]
    Disconnected,
    /// The value could not be serialized.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A system call failed.
    #[error("sending failed: {0}")]
    Io(io::Error),
}

/// An error receiving from a [`crate::Pipe`] end.
///
/// # Examples
///
/// ```
/// let (a, b) = corral::Pipe::duplex().unwrap();
/// a.send_bytes(b"hello").unwrap();
/// let mut small = [0u8; 2];
/// match b.recv_bytes_into(&mut small) {
///     Err(corral::RecvError::BufferTooSmall { needed }) => assert_eq!(needed, 5),
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The other end is closed and nothing is left to read.
    #[error("receiving on a closed pipe")]
    Disconnected,
    /// Nothing arrived before the timeout.
    #[error("timed out waiting on a pipe")]
    Timeout,
    /// The buffer is too small; the message stays queued for the next call.
    #[error("buffer too small: the message needs {needed} bytes")]
    BufferTooSmall {
        /// The size the message needs.
        needed: usize,
    },
    /// The frame was malformed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The value could not be deserialized.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A system call failed.
    #[error("receiving failed: {0}")]
    Io(io::Error),
}

/// Why a pool task ended without a value. Every task submitted to a
/// [`crate::Pool`] ends exactly once: with its value or with one of these.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use corral::{Pool, TaskError};
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
/// corral::init();
/// let pool = Pool::builder().processes(2).task_timeout(Duration::from_millis(100)).build().unwrap();
/// assert!(matches!(pool.apply(nap, 10_000), Err(TaskError::TimedOut(_))));
/// assert_eq!(pool.apply(nap, 1).unwrap(), 1); // the worker was replaced
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskError {
    /// The task's function panicked in the worker.
    #[error("the task panicked: {0}")]
    Panicked(RemotePanic),
    /// The task ran longer than the pool's `task_timeout`; its worker was
    /// killed (SIGTERM, then SIGKILL) and replaced.
    #[error("the task ran past its timeout of {0:?}; its worker was killed and replaced")]
    TimedOut(std::time::Duration),
    /// The worker running the task died (a crash, a signal, `exit`, the
    /// OOM killer); it was replaced, and only this task failed.
    #[error("the worker running the task died ({0}); it was replaced")]
    WorkerLost(ExitStatus),
    /// The task went past the pool's `memory_limit` (bytes of address space
    /// per worker); its worker was replaced.
    #[error(
        "the task exceeded the worker memory limit of {0} bytes; raise `memory_limit` or use less"
    )]
    MemoryExceeded(u64),
    /// The task was cancelled ([`crate::Task::cancel`]).
    #[error("the task was cancelled")]
    Cancelled,
    /// The argument or the result could not be serialized or deserialized,
    /// or the result's `Deserialize` panicked (in the caller's process:
    /// that task alone fails, with the panic's message).
    #[error("the task's argument or result failed to cross between processes: {0}")]
    Codec(String),
    /// The pool was closed or terminated before the task could run or finish.
    #[error("the pool was closed or terminated before the task finished")]
    PoolClosed,
    /// The pool's initializer failed, so the pool runs no task (it does not
    /// restart failing workers forever).
    #[error("the pool's initializer failed ({0}); the pool runs no more tasks")]
    InitializerFailed(String),
    /// The worker running the task vanished and its exit status is unknown
    /// (the fork server that reaped it died with it, say). Linux reports no
    /// exit code for such a worker; this says what is known.
    #[error("the worker running the task was lost ({0}); it was replaced")]
    Lost(String),
    /// Workers of a pool without an initializer died before they were
    /// ready, every time, many times in a row (a memory limit too small for
    /// a worker to start, say): the pool runs no more tasks rather than
    /// restart them forever.
    #[error("the pool cannot start workers ({0}); the pool runs no more tasks")]
    PoolBroken(String),
    /// An argument of the call is out of range (Python raises `ValueError`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A cluster pool's broker (Redis) could not be reached within the
    /// pool's `broker_timeout`, or restarted without its data (persistence
    /// off) while the task waited in it.
    #[error("the cluster's broker lost the task: {0}")]
    Broker(String),
    /// A cluster node refused the task: it runs a different binary than
    /// the submitter (code is found by offset, so only the same build may
    /// run it), or the task's entry was malformed.
    #[error("a cluster node refused the task: {0}")]
    Refused(String),
    /// The task was handed to cluster nodes this many times, and each one
    /// died or vanished before reporting an outcome (a poison task that
    /// brings nodes down, say): it is failed instead of redelivered forever.
    #[error(
        "the task was delivered {0} times and no node reported an outcome; it is not delivered again"
    )]
    DeliveryLimit(u32),
    /// The pool belongs to this process (its pid): the call was made in a
    /// forked child of it, on a copy of its handle. A child has copies of
    /// its parent's values, but not the pool itself (its threads did not
    /// come along; its workers and shared memory are the parent's, and
    /// stay untouched). Create a pool in the child.
    #[error(
        "this pool belongs to process {0}, and this is a forked child of it: create a pool in the child"
    )]
    ForkedCopy(u32),
}

impl TaskError {
    /// The panic, if the task panicked.
    pub fn panic(&self) -> Option<&RemotePanic> {
        match self {
            TaskError::Panicked(p) => Some(p),
            _ => None,
        }
    }
}

/// The result of [`crate::Task::join_timeout`]: the task is still running
/// (and is handed back), or it ended with an error.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use corral::{Pool, TaskTimeout};
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
/// corral::init();
/// let pool = Pool::new(1).unwrap();
/// match pool.submit(nap, 300).join_timeout(Duration::from_millis(10)) {
///     Err(TaskTimeout::Elapsed(task)) => assert_eq!(task.join().unwrap(), 300),
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(thiserror::Error)]
pub enum TaskTimeout<R> {
    /// The timeout passed; here is the task back.
    #[error("the task is still running after the timeout")]
    Elapsed(crate::Task<R>),
    /// The task ended without a value.
    #[error(transparent)]
    Failed(TaskError),
}

impl<R> fmt::Debug for TaskTimeout<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskTimeout::Elapsed(_) => f.write_str("Elapsed(..)"),
            TaskTimeout::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

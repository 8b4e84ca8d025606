//! Configuring and starting a child process.

use std::os::fd::{AsFd, BorrowedFd, RawFd};

use super::child::{Proc, Reaper};
use crate::start::bootstrap::{self, Outcome, StartMeta};
use crate::start::forkserver::Launch;
use crate::start::reexec::{ExecPlan, ForkHooks};
use crate::start::{identity, runtime};
use crate::{Child, CodecError, Data, Error, Job, StartMethod, sys, wire};

/// Starts a child process that runs `f(arg)` and returns its handle.
///
/// The process equivalent of `std::thread::spawn`, and of Python's
/// `Process(target=f, args=arg).start()`. `f` is a function (a closure that
/// captures nothing coerces to one); `arg` and the result cross as serialized
/// data. It uses the default start method, [`StartMethod::ForkServer`].
///
/// # Errors
///
/// [`Error::NotInitialized`] if [`crate::init`] did not run; [`Error::Codec`]
/// if `arg` cannot be serialized; [`Error::Io`] if the system refuses a new
/// process.
///
/// # Examples
///
/// ```no_run
/// fn work((a, b): (u64, u64)) -> u64 { a * b }
///
/// corral::init();
/// let child = corral::spawn(work, (6, 7)).unwrap();
/// assert_eq!(child.join().unwrap(), 42);
/// ```
pub fn spawn<A: Data, R: Data>(f: fn(A) -> R, arg: A) -> Result<Child<R>, Error> {
    Process::builder().spawn(f, arg)
}

/// The entry point for configuring processes: [`Process::builder`].
///
/// # Examples
///
/// ```no_run
/// use corral::{Process, StartMethod};
/// fn hello(name: String) -> String { format!("hello, {name}") }
/// corral::init();
/// let child = Process::builder()
///     .name("greeter")
///     .daemon(true)
///     .start_method(StartMethod::Spawn)
///     .spawn(hello, "corral".to_string())
///     .unwrap();
/// assert_eq!(child.join().unwrap(), "hello, corral");
/// ```
#[derive(Debug)]
pub struct Process(());

impl Process {
    /// A builder with the defaults: no name, not a daemon, the fork server.
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder::default()
    }
}

/// Options for starting a child process.
///
/// # Examples
///
/// ```no_run
/// use corral::ProcessBuilder;
/// fn id(x: u8) -> u8 { x }
/// corral::init();
/// let child = ProcessBuilder::new().name("echo").spawn(id, 5).unwrap();
/// assert_eq!(child.name(), Some("echo"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ProcessBuilder {
    name: Option<String>,
    daemon: bool,
    start_method: StartMethod,
    identity: Option<Vec<u8>>,
    group_dies: bool,
}

impl ProcessBuilder {
    /// Same as [`Process::builder`].
    pub fn new() -> ProcessBuilder {
        ProcessBuilder::default()
    }

    /// Names the child: shown by [`Child::name`] and, truncated to 15 bytes,
    /// by `ps` and `top`.
    pub fn name(mut self, name: impl Into<String>) -> ProcessBuilder {
        self.name = Some(name.into());
        self
    }

    /// A daemon child is terminated, not joined, when this program exits
    /// normally (Python's `daemon=True`). Either kind dies with this process
    /// if it is killed.
    pub fn daemon(mut self, daemon: bool) -> ProcessBuilder {
        self.daemon = daemon;
        self
    }

    /// How the child is created; see [`StartMethod`].
    pub fn start_method(mut self, method: StartMethod) -> ProcessBuilder {
        self.start_method = method;
        self
    }

    /// When the child exits, whatever is left in its process group is killed
    /// (pool workers: a task's subprocesses never outlive its worker).
    pub(crate) fn group_dies_with_leader(mut self) -> ProcessBuilder {
        self.group_dies = true;
        self
    }

    pub(crate) fn with_identity(mut self, identity: Vec<u8>) -> ProcessBuilder {
        self.identity = Some(identity);
        self
    }

    /// Starts a child running `f(arg)`. See [`crate::spawn`].
    pub fn spawn<A: Data, R: Data>(self, f: fn(A) -> R, arg: A) -> Result<Child<R>, Error> {
        runtime::ensure_initialized()?;
        match self.start_method {
            StartMethod::ForkServer => self.spawn_via_server(Launch::Fork, f, arg),
            StartMethod::Spawn => self.spawn_via_server(Launch::Exec, f, arg),
            StartMethod::Fork => self.fork_task(f, arg),
        }
    }

    /// Starts a child running `job.run()`: the equivalent of subclassing
    /// Python's `Process` and overriding `run`.
    pub fn spawn_job<J: Job>(self, job: J) -> Result<Child<J::Output>, Error> {
        self.spawn(run_job::<J>, job)
    }

    /// Forks this process and runs the closure `f` in the child, whatever
    /// [`start_method`](ProcessBuilder::start_method) says: only a forked
    /// child can run a closure that captures its environment. `R` still
    /// crosses as serialized data.
    ///
    /// # Caveats
    ///
    /// The child is a copy of this program with only the calling thread. A
    /// lock held by another thread at that instant stays locked in the child;
    /// if `f` touches it, the child hangs (it cannot corrupt memory). Use the
    /// default start method from multi-threaded programs when you can, and
    /// bound the wait with [`Child::join_timeout`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// corral::init();
    /// let table = vec![1u64, 2, 3];
    /// let child = corral::Process::builder().fork_closure(move || table.iter().sum::<u64>()).unwrap();
    /// assert_eq!(child.join().unwrap(), 6);
    /// ```
    pub fn fork_closure<F, R>(self, f: F) -> Result<Child<R>, Error>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Data,
    {
        runtime::ensure_initialized()?;
        self.fork_body(f)
    }

    fn spawn_via_server<A: Data, R: Data>(
        self,
        launch: Launch,
        f: fn(A) -> R,
        arg: A,
    ) -> Result<Child<R>, Error> {
        identity::check_depth()?;
        let exec = match launch {
            Launch::Exec => ExecPlan::current("start a Spawn child")?.host_command(),
            Launch::Fork => None,
        };
        let encoded = wire::encode(&arg)?;
        if encoded.fds.len() > sys::MAX_FDS_PER_MESSAGE - 2 {
            return Err(Error::Unsupported(
                "more than 248 corral handles in one argument",
            ));
        }
        let meta = StartMeta {
            identity: self
                .identity
                .clone()
                .unwrap_or_else(|| sys::executable_identity().to_vec()),
            entry: bootstrap::entry_offset::<A, R>(),
            func: bootstrap::func_offset(f),
            name: self.name.clone(),
            daemon: self.daemon,
            parent: std::process::id(),
            depth: identity::depth() + 1,
            group_dies: self.group_dies,
            context: runtime::start_context(),
            exec,
        };
        let meta = postcard::to_stdvec(&meta)
            .map_err(|e| Error::Codec(crate::CodecError::new(e.to_string())))?;
        let handles: Vec<BorrowedFd<'_>> = encoded.fds.iter().map(|fd| fd.as_fd()).collect();
        let started = runtime::with_server(|server| {
            server.spawn(launch, self.group_dies, (&meta, &encoded.bytes), &handles)
        })?;
        drop(handles);
        drop(encoded);
        // The argument moved to the child: its handles close here, as a
        // moved value would.
        drop(arg);
        let reaper = Reaper::Server {
            status: started.status,
        };
        let proc = Proc::new(
            started.pid,
            self.name,
            self.daemon,
            started.pidfd,
            reaper,
            started.result,
        );
        Ok(Child::new(proc.group_dies(self.group_dies)))
    }

    /// The Fork start method for a function: the argument still crosses as
    /// data, and the child keeps only the descriptors of its handles (as under
    /// the other methods), so it never holds a copy of, say, the parent's end
    /// of a pipe it is meant to read to end-of-file.
    fn fork_task<A: Data, R: Data>(self, f: fn(A) -> R, arg: A) -> Result<Child<R>, Error> {
        let encoded = wire::encode(&arg)?;
        drop(arg);
        let handles: Vec<RawFd> = encoded.fds.iter().map(sys::raw).collect();
        let bytes = &encoded.bytes;
        let mut keep = handles.clone();
        keep.push(-1);
        let child = self.fork_with(move |result| {
            *keep.last_mut().expect("the result slot") = result;
            sys::close_all_except(&mut keep);
            let fds = sys::adopt_inherited_fds(&handles);
            match wire::decode::<A>(bytes, fds) {
                Ok(arg) => bootstrap::run_body(move || f(arg)),
                Err(e) => Outcome::Codec(CodecError::new(format!("the argument: {}", e.message()))),
            }
        });
        drop(encoded);
        child
    }

    fn fork_body<R: Data>(self, body: impl FnOnce() -> R) -> Result<Child<R>, Error> {
        self.fork_with(move |_| bootstrap::run_body(body))
    }

    /// Forks; the child runs `body` (given its result descriptor) and reports.
    fn fork_with<R: Data>(self, body: impl FnOnce(RawFd) -> Outcome) -> Result<Child<R>, Error> {
        let (ours, theirs) = sys::socketpair().map_err(Error::io("creating the result socket"))?;
        let parent = sys::getpid();
        let main_thread = sys::is_main_thread();
        let result = theirs.as_fd();
        let name = self.name.as_deref().and_then(sys::process_name);
        identity::check_depth()?;
        let identity = identity::Identity {
            name: self.name.clone(),
            daemon: self.daemon,
            parent: parent as u32,
            depth: identity::depth() + 1,
        };
        // Installed here, not in the child: installing takes std's panic-hook
        // lock, which another thread of ours may hold at the moment of the
        // fork (a test panicking, say) and which the child could never get.
        bootstrap::install_panic_hook();
        let hooks = ForkHooks::before();
        let pid = sys::fork_with(move || {
            runtime::forget_inherited_server();
            sys::enter_child(parent, main_thread, name.as_deref());
            hooks.in_child();
            identity::set_identity(identity);
            bootstrap::keep_result_fd(result);
            let outcome = body(sys::raw(&result));
            bootstrap::finish(result, outcome, bootstrap::Ending::Careful)
        })
        .map_err(Error::io("forking"));
        ForkHooks::after_fork_in_parent();
        let pid = pid?;
        drop(theirs);
        let (pidfd, reaper) = match sys::pidfd_open(pid) {
            Ok(pidfd) => (pidfd, Reaper::Own),
            // With SIGCHLD ignored, a quick child is gone (reaped by the
            // kernel) before its pidfd can be opened: its result, if it sent
            // one, is still in the socket.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => (
                sys::ready_fd().map_err(Error::io("opening a pidfd"))?,
                Reaper::Kernel,
            ),
            Err(e) => return Err(Error::io("opening a pidfd")(e)),
        };
        if matches!(reaper, Reaper::Own) {
            // The fork server kills the child's process group (the
            // subprocesses it started) and the child when this process dies:
            // the death signal ends the child alone, and follows the thread
            // that forked (if not the main one), not this process.
            let _ = runtime::with_server(|server| server.watch(pid, pidfd.as_fd()));
        }
        Ok(Child::new(
            Proc::new(pid, self.name, self.daemon, pidfd, reaper, ours).group_dies(self.group_dies),
        ))
    }
}

fn run_job<J: Job>(job: J) -> J::Output {
    job.run()
}

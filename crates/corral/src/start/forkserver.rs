//! The fork server: a small single-threaded process that forks children on
//! request.
//!
//! # Protocol
//!
//! The parent holds one end of a Unix stream socket; the server the other. A
//! request is a 16-byte header `[kind: u32][meta length: u32][arg length:
//! u64]` (little-endian), the encoded [`StartMeta`], the argument bytes and,
//! attached with `SCM_RIGHTS`, the child's result socket, the write end of its
//! status pipe and the descriptors of the handles in the argument. The server
//! forks, answers `[pid: i32][errno: i32]` with a pidfd of the child attached,
//! and from then on watches the child: when it exits, the server reaps it and
//! writes its wait status to the status pipe.
//!
//! Once it has served a Fork request, the server keeps one *spare* forked
//! ahead of need and offers it unasked (`[pid][-1]`, with a pidfd, the
//! spare's socket and its status pipe attached): the parent's next Fork
//! start writes its request straight to the spare and tells the server with
//! a `taken` request, so neither a fork nor a wait for the server is on its
//! path. See [`super::spare`].
//!
//! A `watch` request hands the server a pidfd of a child the parent forked
//! itself (the Fork start method from a non-main thread), for the last duty
//! below.
//!
//! `track` / `untrack` requests name POSIX shared memory objects
//! (`/dev/shm/<name>`) that the server removes when the parent dies: Python's
//! `resource_tracker`, without a process of its own.
//!
//! # Back-to-back starts
//!
//! A program that starts children one after the other (start, join, start
//! again) sends each request the moment the last child has exited. An idle
//! CPU of a virtual machine wakes slowly, so when a child's exit leaves no
//! other child of the server running, the server watches for the next
//! request for [`WATCH_AFTER_EXIT`] rather than sleeping at once (a watch
//! that sees nothing come makes the next exits pass without one:
//! [`Watch`]). And when no other child runs, it forks the next one pinned
//! to the CPU it runs on (the child takes the server's mask back first
//! thing): the child runs there at once, and the server answers after it,
//! rather than the child waiting on the parent's CPU, where the parent
//! watches for the answer, or on an idle one; back to back, the parent then
//! reads the answer and the child's exit together. Either alone gained
//! nothing; both made back-to-back starts about 15 % faster on a 2-CPU VM
//! (`bench/README.md`). Neither applies to a pool's workers, which are
//! replaced while others run: a replacement pinned beside them waited for
//! them, and the watch took a CPU from them (a pool with
//! `max_tasks_per_child(1)` took 45 % and 10–20 % longer a task). A `Spawn`
//! child, whose start is long, is never pinned, and its caller sleeps at
//! once for the server's answer ([`pins`], [`reply_watch`]): either could
//! put its whole start beside a busy thread.
//!
//! # Lifetime
//!
//! The server sees end-of-file on its socket when the parent dies, however it
//! dies (only the parent holds that end, close-on-exec). It then kills every
//! child it started or watches, with their process groups, reaps its own and
//! exits. That is how no process outlives a SIGKILLed parent. The server's
//! own children also carry `PR_SET_PDEATHSIG(SIGKILL)` (tied to the server),
//! so they die with it whatever kills it.
//!
//! [`StartMeta`]: super::bootstrap::StartMeta

use std::ffi::CString;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::bootstrap::{self, BOOT_ENV};
use super::child::{Kid, Prepared, c_entries, child_main};
use super::orphans::Orphans;
use super::reexec::{ExecPlan, ForkHooks, ROLE_AT_INIT_ENV};
use super::request::{
    KIND_EXEC, KIND_FORK, KIND_KILL, KIND_TAKEN, KIND_TRACK_SHM, KIND_UNTRACK_SHM, KIND_WATCH,
    Request, read_request, send_request,
};
use super::spare::{OFFER, Offer, Spares, Started};
use crate::poison;
use crate::{Error, sys, wire};

/// Environment variable through which an exec'd fork server finds its socket.
pub(crate) const SERVER_ENV: &str = "CORRAL_SERVER";

/// How the server should start a child.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Launch {
    /// Fork and run the task in the forked child.
    Fork,
    /// Fork and re-execute the binary.
    Exec,
}

/// The parent's connection to its fork server.
#[derive(Debug)]
pub(crate) struct ServerClient {
    sock: OwnedFd,
    pid: i32,
    /// The server is this process's child: reaped when the client drops.
    pidfd: Option<OwnedFd>,
    /// The spare the server offered, for the next Fork start.
    offer: std::sync::Mutex<Option<Offer>>,
}

/// A message from the server, and the descriptors that came with it.
type Message = ([u8; 8], Vec<OwnedFd>);

/// A message's two fields: `[pid: i32][errno: i32]` (an offer's errno is
/// [`OFFER`]).
fn pid_and_errno(message: &[u8; 8]) -> (i32, i32) {
    let field = |at: usize| i32::from_le_bytes(message[at..at + 4].try_into().expect("4 bytes"));
    (field(0), field(4))
}

impl Drop for ServerClient {
    /// Closes the socket (the server then kills what it started and exits)
    /// and reaps the server, so that it never lingers as a zombie.
    fn drop(&mut self) {
        let _ = rustix::net::shutdown(&self.sock, rustix::net::Shutdown::Both);
        if let Some(pidfd) = &self.pidfd {
            let exited =
                sys::poll_readable(&[pidfd.as_fd()], Some(std::time::Duration::from_secs(2)));
            if !matches!(exited.as_deref(), Ok([true])) {
                let _ = sys::signal(pidfd.as_fd(), sys::Sig::Kill);
            }
            let _ = sys::reap(pidfd.as_fd(), true);
        }
    }
}

impl ServerClient {
    /// Starts a fork server for the calling process: forked directly while the
    /// process is single-threaded, re-executed otherwise.
    pub(crate) fn start() -> Result<ServerClient, Error> {
        let (ours, theirs) =
            sys::socketpair().map_err(Error::io("creating the fork server socket"))?;
        let parent = sys::getpid();
        // No death signal for the server: it must outlive the parent by the
        // moment it takes to see end-of-file and kill the children it watches.
        let die_with_parent = false;
        let theirs_raw = sys::raw(&theirs);
        let pid = if sys::thread_count() == 1 {
            sys::fork_with(|| {
                sys::enter_child(parent, die_with_parent, Some(c"corral-server"));
                sys::close_all_except(&mut [theirs_raw]);
                serve(theirs_raw)
            })
        } else {
            let plan = ExecPlan::current("start its fork server after threads started")?;
            let mut env = exec_env();
            env.push(
                sys::c_string(format!("{SERVER_ENV}={theirs_raw}").as_bytes())
                    .map_err(Error::io("preparing the fork server"))?,
            );
            let exec = plan.with_env(&env);
            sys::fork_with(|| {
                // Only async-signal-safe calls until exec: the process may
                // have other threads.
                sys::enter_child(parent, die_with_parent, None);
                let _ = sys::set_cloexec(theirs.as_fd(), false);
                let _ = exec.exec();
                sys::exit_immediately(127)
            })
        }
        .map_err(Error::io("forking the fork server"))?;
        drop(theirs);
        let pidfd = sys::pidfd_open(pid).ok();
        Ok(ServerClient {
            sock: ours,
            pid,
            pidfd,
            offer: std::sync::Mutex::new(None),
        })
    }

    /// Whether the server is gone: exited, or its end of the socket closed.
    pub(crate) fn is_gone(&self) -> bool {
        let exited = self.pidfd.as_ref().is_some_and(|fd| {
            matches!(
                sys::poll_readable(&[fd.as_fd()], Some(std::time::Duration::ZERO)).as_deref(),
                Ok([true])
            )
        });
        exited || sys::peer_closed(self.sock.as_fd())
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// The raw number of the parent's end of the socket.
    pub(crate) fn raw_fd(&self) -> RawFd {
        sys::raw(&self.sock)
    }

    /// Starts a child with the argument's `handles`: through the spare the
    /// server offered, for a Fork start if there is one (see
    /// [`super::spare`]), or else by a request to the server.
    pub(crate) fn spawn(
        &self,
        launch: Launch,
        group_dies: bool,
        request: (&[u8], &[u8]),
        handles: &[BorrowedFd<'_>],
    ) -> Result<Started, Error> {
        let (meta, arg) = request;
        if let Launch::Fork = launch
            && let Some(offer) = self.take_offer()?
        {
            match offer.start(self.sock.as_fd(), (meta, arg, group_dies), handles) {
                Some(Ok(started)) => return Ok(started),
                Some(Err(e)) => return Err(Error::ForkServer(format!("sending a request: {e}"))),
                // The spare is gone: the server forks.
                None => {}
            }
        }
        let kind = match launch {
            Launch::Fork => KIND_FORK,
            Launch::Exec => KIND_EXEC,
        };
        let (result, theirs) =
            sys::socketpair().map_err(Error::io("creating the result socket"))?;
        let (status, status_write) = sys::pipe().map_err(Error::io("creating the status pipe"))?;
        let mut fds = vec![theirs.as_fd(), status_write.as_fd()];
        fds.extend_from_slice(handles);
        self.send(kind, meta, arg, &fds)?;
        let (pid, pidfd) = self.read_reply(reply_watch(launch))?;
        Ok(Started {
            pid,
            pidfd,
            result,
            status,
        })
    }

    /// The server's answer to a start request, watched for up to `watch`
    /// before sleeping: the child's pid and a pidfd of it. Offers that come
    /// first are kept.
    fn read_reply(&self, watch: Duration) -> Result<(i32, OwnedFd), Error> {
        let (reply, received) = loop {
            let message = self.read_message(Some(watch))?.expect("a blocking read");
            if let Some(reply) = self.keep_offer(message) {
                break reply;
            }
        };
        let (pid, errno) = pid_and_errno(&reply);
        if pid <= 0 {
            return Err(Error::Io {
                context: "the fork server could not fork",
                source: io::Error::from_raw_os_error(errno),
            });
        }
        if let Some(pidfd) = received.into_iter().next() {
            return Ok((pid, pidfd));
        }
        // The kernel dropped the pidfd: this process has no descriptor left.
        // The child runs without a handle; have the server end it.
        match sys::pidfd_open(pid) {
            Ok(pidfd) => Ok((pid, pidfd)),
            Err(_) => {
                let _ = self.send(KIND_KILL, &pid.to_le_bytes(), &[], &[]);
                Err(Error::Io {
                    context: "receiving the new child's pidfd",
                    source: io::Error::from_raw_os_error(libc::EMFILE),
                })
            }
        }
    }

    /// How many descriptors the spare on offer holds here (0 or 3).
    pub(crate) fn held_fds(&self) -> usize {
        let held = poison::lock(&self.offer);
        held.as_ref().map_or(0, |_| Offer::FDS)
    }

    /// The spare on offer, after reading the offers that arrived.
    fn take_offer(&self) -> Result<Option<Offer>, Error> {
        self.read_offers()?;
        Ok(poison::lock(&self.offer).take())
    }

    /// The pid of the spare on offer, after reading the offers that arrived.
    pub(crate) fn offered_pid(&self) -> Result<Option<i32>, Error> {
        self.read_offers()?;
        let held = poison::lock(&self.offer);
        Ok(held.as_ref().map(Offer::pid))
    }

    fn read_offers(&self) -> Result<(), Error> {
        while let Some(message) = self.read_message(None)? {
            // Only offers come unasked.
            let _ = self.keep_offer(message);
        }
        Ok(())
    }

    /// Keeps `message` if it is an offer (replacing an older one, whose spare
    /// then ends); any other message is handed back.
    fn keep_offer(&self, message: Message) -> Option<Message> {
        let (bytes, fds) = message;
        let (pid, errno) = pid_and_errno(&bytes);
        if errno != OFFER {
            return Some((bytes, fds));
        }
        *poison::lock(&self.offer) = Offer::new(pid, fds);
        None
    }

    /// Reads one 8-byte message (a reply or an offer) and its descriptors.
    /// `wait`: watch for it that long, then sleep; `None`: `None` if none
    /// has begun to arrive.
    fn read_message(&self, wait: Option<Duration>) -> Result<Option<Message>, Error> {
        let mut message = [0u8; 8];
        let mut got = 0;
        let mut received = Vec::new();
        let spin_until = Instant::now() + wait.unwrap_or(Duration::ZERO);
        while got < message.len() {
            let blocking = (wait.is_some() || got > 0) && Instant::now() >= spin_until;
            let n = match sys::recv_with_fds_flags(
                self.sock.as_fd(),
                &mut message[got..],
                &mut received,
                blocking,
            ) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if wait.is_none() && got == 0 {
                        return Ok(None);
                    }
                    std::hint::spin_loop();
                    continue;
                }
                other => other,
            }
            .map_err(|e| Error::ForkServer(format!("reading its answer: {e}")))?;
            if n == 0 {
                return Err(Error::ForkServer("it closed the connection".into()));
            }
            got += n;
        }
        Ok(Some((message, received)))
    }

    /// Asks the server to kill `pidfd`'s process if this process dies.
    pub(crate) fn watch(&self, pid: i32, pidfd: BorrowedFd<'_>) -> Result<(), Error> {
        self.send(KIND_WATCH, &pid.to_le_bytes(), &[], &[pidfd])
    }

    /// Asks the server to remove the shared memory object `name` when this
    /// process dies (or `forget` it: it was removed already).
    pub(crate) fn track_shm(&self, name: &str, track: bool) -> Result<(), Error> {
        let kind = if track {
            KIND_TRACK_SHM
        } else {
            KIND_UNTRACK_SHM
        };
        self.send(kind, name.as_bytes(), &[], &[])
    }

    fn send(
        &self,
        kind: u32,
        meta: &[u8],
        arg: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        send_request(self.sock.as_fd(), kind, meta, arg, fds)
            .map_err(|e| Error::ForkServer(format!("sending a request: {e}")))
    }
}

/// This process's environment without corral's variables, as `KEY=VALUE`.
pub(crate) fn env_entries() -> Vec<Vec<u8>> {
    std::env::vars_os()
        .filter(|(k, _)| k != BOOT_ENV && k != SERVER_ENV && k != ROLE_AT_INIT_ENV)
        .map(|(k, v)| {
            let mut entry = k.into_encoded_bytes();
            entry.push(b'=');
            entry.extend(v.into_encoded_bytes());
            entry
        })
        .collect()
}

/// The environment for re-executed children: ours without corral's variables.
fn exec_env() -> Vec<CString> {
    c_entries(env_entries())
}

/// Entry of a fork server started by re-execution (from `init()`).
pub(crate) fn serve_exec(spec: &std::ffi::OsStr) -> ! {
    match spec
        .to_str()
        .and_then(|s| s.parse::<RawFd>().ok())
        .filter(|&fd| sys::is_open(fd))
    {
        Some(fd) => {
            if let Some(name) = sys::process_name("corral-server") {
                sys::set_process_name(&name);
            }
            serve(fd)
        }
        None => sys::exit_immediately(2),
    }
}

/// The server loop. Never returns.
fn serve(ctrl: RawFd) -> ! {
    let ctrl = sys::adopt_inherited_fds(&[ctrl])
        .pop()
        .expect("one descriptor");
    let _ = sys::set_cloexec(ctrl.as_fd(), true);
    let server_pid = sys::getpid();
    // The parent may close a status pipe before the server reports into it.
    sys::ignore_sigpipe();
    // It ends when the parent does, not at a `pkill` of the whole program
    // (it would leave what it started to no one).
    sys::block_ending_signals();
    // A parent that ignores SIGCHLD would have the kernel reap the server's
    // children before it can open their pidfds or report their status.
    sys::default_sigchld();
    // Inherited by every child: they need not set it up each.
    bootstrap::install_panic_hook();
    warm_for_children();
    // Read from the code's file mapping: before the code is copied
    // (`CodeCopy`), and inherited by every child.
    let _ = sys::executable_identity();
    let plan = ExecPlan::same_program();
    let env = exec_env();
    let server = Server {
        ctrl: &ctrl,
        pid: server_pid,
        parent: sys::getppid(),
        plan: &plan,
        env: &env,
    };
    let mut state = State {
        kids: Vec::new(),
        shm_names: Vec::new(),
        orphans: Orphans::new(server_pid),
        spares: Spares::default(),
        sweep_due: None,
        code: CodeCopy::new(),
        watch: Watch::default(),
    };
    loop {
        state.turn(&server);
    }
}

/// Sets up, once and here, what every child would otherwise set up on its
/// way to its function, so that each inherits it ready: the codec's
/// thread-local tables (the first registration of a thread-local destructor
/// resolves a libc symbol lazily, through the dynamic linker's lookup) and
/// stdout's buffer. A fork copies none of the page tables of the program's
/// code, so each page of this a child ran was a page fault of its own.
fn warm_for_children() {
    if let Ok(encoded) = wire::encode(&0u8) {
        let _ = wire::decode::<u8>(&encoded.bytes, encoded.fds);
    }
    let _ = io::Write::flush(&mut io::stdout());
}

/// The environment variable that keeps the fork server's code mapped from
/// its file when set to `0` (for debuggers and profilers, which find no file
/// behind a copy).
const HUGE_CODE_ENV: &str = "CORRAL_HUGE_CODE";

/// Fork starts the server serves before it copies its code: the copy costs
/// 0.5–15 ms of the server's time per huge page on a VM (and a start that
/// comes meanwhile waits), which a program that starts a few children
/// never gets back.
const STARTS_BEFORE_CODE_COPY: u32 = 16;

/// The copy of the server's code and read-only data into huge pages
/// ([`sys::HugeCode`]), after which each child forked maps them with a few
/// page-table entries copied by `fork`, rather than a page fault (and 16
/// entries mapped, then unmapped at its exit) for each 64 KiB of code it
/// runs.
enum CodeCopy {
    /// Counting fork starts until the copy pays.
    Waiting { starts: u32 },
    /// To be planned at the next idle moment.
    Due,
    /// Copying, a huge page per idle moment.
    Copying(sys::HugeCode),
    /// Done, not possible here, or turned off.
    Done,
}

impl CodeCopy {
    fn new() -> CodeCopy {
        match std::env::var_os(HUGE_CODE_ENV) {
            Some(v) if v == "0" => CodeCopy::Done,
            _ => CodeCopy::Waiting { starts: 0 },
        }
    }

    /// A fork start was served.
    fn counted_start(&mut self) {
        if let CodeCopy::Waiting { starts } = self {
            *starts += 1;
            if *starts >= STARTS_BEFORE_CODE_COPY {
                *self = CodeCopy::Due;
            }
        }
    }

    /// Whether work on the copy waits for an idle moment.
    fn pending(&self) -> bool {
        matches!(self, CodeCopy::Due | CodeCopy::Copying(_))
    }

    /// Plans the copy, or copies one huge page more.
    fn step(&mut self) {
        match self {
            CodeCopy::Due => {
                *self = sys::HugeCode::plan().map_or(CodeCopy::Done, CodeCopy::Copying)
            }
            CodeCopy::Copying(copy) => {
                if !copy.step() {
                    *self = CodeCopy::Done;
                }
            }
            CodeCopy::Waiting { .. } | CodeCopy::Done => {}
        }
    }
}

/// What the server keeps between turns of its loop.
struct State {
    kids: Vec<Kid>,
    shm_names: Vec<String>,
    orphans: Orphans,
    spares: Spares,
    /// Since when a sweep for orphans is due: a child of the server exited.
    sweep_due: Option<Instant>,
    /// The copy of the server's code into huge pages.
    code: CodeCopy,
    /// The watch for the next request after a child's exit.
    watch: Watch,
}

/// How long the server must have had nothing to do before it forks a
/// spare: a fork takes ~100 µs of CPU, which starts that come back to back
/// would wait for (or share two cores with) rather than gain from.
const IDLE_BEFORE_SPARE: Duration = Duration::from_micros(500);

/// How long the server must have had nothing to do before it copies the
/// next huge page of its code (0.5–15 ms each on a VM).
const IDLE_BEFORE_CODE_COPY: Duration = Duration::from_micros(500);

/// How long the server must have had nothing to do before it sweeps for
/// orphans after a child's exit: the sweep reads `/proc` (~15 µs), which a
/// start that follows the exit at once would wait for.
const IDLE_BEFORE_SWEEP: Duration = Duration::from_micros(200);

/// How long a sweep waits at most for the server to be idle.
const SWEEP_AT_LATEST: Duration = Duration::from_millis(20);

/// Requests served in one turn at most, before exits are looked at.
const REQUESTS_PER_TURN: usize = 64;

impl State {
    /// Waits for something to do and does it: the requests waiting (all of
    /// them, so that a spare's `taken` is read before its exit is
    /// reported), the children that exited; and, once nothing has come for
    /// a while, the work that waits for idleness: the sweep for orphans,
    /// then the next spare.
    fn turn(&mut self, server: &Server<'_>) {
        if self
            .sweep_due
            .is_some_and(|due| due.elapsed() >= SWEEP_AT_LATEST)
        {
            return self.sweep();
        }
        let ready = {
            let mut fds = vec![server.ctrl.as_fd()];
            fds.extend(self.orphans.wake_fd());
            fds.extend(self.kids.iter().map(|k| k.pidfd.as_fd()));
            let idle_wait = self.idle_wait();
            self.watch.wait(&fds, idle_wait)
        };
        let Ok(ready) = ready else { self.shutdown() };
        if !ready.contains(&true) {
            return self.idle_work(server);
        }
        let first_kid = 1 + usize::from(self.orphans.wake_fd().is_some());
        let sigchld = first_kid == 2 && ready[1];
        // Read before the requests change `kids`.
        let exited: Vec<i32> = (self.kids.iter().enumerate())
            .filter(|&(i, _)| ready[first_kid + i])
            .map(|(_, k)| k.pid)
            .collect();
        // Before the requests: a Fork request among them wants a spare
        // again, even if the one on offer just died unused.
        for pid in &exited {
            self.spares.ended(*pid);
        }
        if ready[0] {
            self.serve_waiting(server);
        }
        let (mut worker_ended, mut child_ended) = (false, false);
        for pid in &exited {
            if let Some(i) = self.kids.iter().position(|k| k.pid == *pid) {
                let kid = self.kids.swap_remove(i);
                worker_ended |= kid.group_dies;
                // Not a watched one: the parent's, whose orphans are not ours.
                child_ended |= kid.status.is_some();
                report(kid, server.parent);
            }
        }
        // A pool's workers are replaced while others run: not watched for.
        if child_ended && !worker_ended && self.none_running() {
            self.watch.after_exit();
        }
        if sigchld || child_ended {
            self.orphans.take_signal();
            self.sweep_due.get_or_insert_with(Instant::now);
        }
        if worker_ended {
            // Orphans of a worker die with it, without waiting.
            self.sweep();
        }
    }

    /// How long to wait for something to do before the idle work; `None`:
    /// there is none (wait for ever).
    fn idle_wait(&self) -> Option<Duration> {
        let sweep = self
            .sweep_due
            .map(|due| IDLE_BEFORE_SWEEP.min(SWEEP_AT_LATEST.saturating_sub(due.elapsed())));
        let spare = self.spare_needed().then_some(IDLE_BEFORE_SPARE);
        let code = self.code.pending().then_some(IDLE_BEFORE_CODE_COPY);
        sweep.into_iter().chain(spare).chain(code).min()
    }

    /// Whether no child of the server runs (a spare on offer waits).
    fn none_running(&self) -> bool {
        none_running(&self.kids, &self.spares)
    }

    fn spare_needed(&self) -> bool {
        self.spares.wanted && self.spares.offered.is_none()
    }

    /// Nothing came for a while: sweeps for orphans if a sweep is due, else
    /// copies one more huge page of code, else forks the next spare if one
    /// is needed (after the copy, so that it forks from it).
    fn idle_work(&mut self, server: &Server<'_>) {
        if self.sweep_due.is_some() {
            self.sweep();
        } else if self.code.pending() {
            self.code.step();
        } else if self.spare_needed() {
            // The spare is for the next start (or the one that took the last).
            self.code.counted_start();
            let spare = self
                .spares
                .refill(server.pid, server.ctrl.as_fd(), server.plan);
            self.kids.extend(spare);
        }
    }

    /// Serves the requests waiting, up to [`REQUESTS_PER_TURN`]. (It does
    /// not yield its CPU to a child it forked: under a CPU hog, the yield
    /// gave the server's turn to the hog, and back-to-back starts took
    /// twice as long; `bench/README.md`.)
    fn serve_waiting(&mut self, server: &Server<'_>) {
        for _ in 0..REQUESTS_PER_TURN {
            self.serve_one(server);
            if !server.request_waiting() {
                return;
            }
        }
    }

    /// Reaps gone orphans, adopts new ones, kills those of gone workers.
    fn sweep(&mut self) {
        self.sweep_due = None;
        let pids: Vec<i32> = self.kids.iter().map(|k| k.pid).collect();
        let workers: Vec<i32> = (self.kids.iter())
            .filter(|k| k.group_dies)
            .map(|k| k.pid)
            .collect();
        if self.orphans.sweep(&pids, &workers) {
            // An orphan's environment could not be read: look again soon.
            self.sweep_due = Some(Instant::now());
        }
    }

    /// Reads and serves one request; shuts down at end-of-file.
    fn serve_one(&mut self, server: &Server<'_>) {
        match read_request(server.ctrl.as_fd()) {
            Ok(Some(request)) if request.kind == KIND_TRACK_SHM => {
                self.shm_names.extend(String::from_utf8(request.meta).ok())
            }
            Ok(Some(request)) if request.kind == KIND_UNTRACK_SHM => {
                self.shm_names.retain(|n| n.as_bytes() != request.meta)
            }
            Ok(Some(request)) => {
                if request.kind == KIND_FORK {
                    self.code.counted_start();
                }
                handle(request, server, &mut self.kids, &mut self.spares)
            }
            Ok(None) | Err(_) => self.shutdown(),
        }
    }

    fn shutdown(&mut self) -> ! {
        shutdown(
            std::mem::take(&mut self.kids),
            &self.shm_names,
            &mut self.orphans,
        )
    }
}

/// How long the server watches for the next request after a child's exit.
const WATCH_AFTER_EXIT: Duration = Duration::from_micros(100);

/// The most exits let pass without a watch after watches that saw no
/// request come.
const MAX_WATCH_SKIP: u32 = 64;

/// The server's watch for the next request after a child's exit, which
/// adapts: a watch that sees no request come (starts are not back to back,
/// or the parent waits for this very CPU) lets the next exit pass without
/// one, then twice as many, up to [`MAX_WATCH_SKIP`]; a request seen starts
/// over.
#[derive(Default)]
struct Watch {
    /// Watching until then (the next wait spins, up to it).
    until: Option<Instant>,
    /// Exits still to let pass without a watch.
    skip: u32,
    /// Exits to let pass after the next watch that sees nothing.
    backoff: u32,
}

impl Watch {
    /// A child exited (and was reported): watch for the next request, or
    /// let this exit pass.
    fn after_exit(&mut self) {
        match self.skip.checked_sub(1) {
            Some(left) => self.skip = left,
            None => self.until = Some(Instant::now() + WATCH_AFTER_EXIT),
        }
    }

    /// Which of `fds` are readable (the first: the control socket, where
    /// requests come): watched for (polled without sleeping) while a watch
    /// lasts, then waited for up to `timeout` (`None`: for ever).
    fn wait(&mut self, fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
        if let Some(until) = self.until.take() {
            while Instant::now() < until {
                let ready = sys::poll_readable(fds, Some(Duration::ZERO))?;
                if ready.contains(&true) {
                    if ready[0] {
                        self.backoff = 0;
                    }
                    return Ok(ready);
                }
                std::hint::spin_loop();
            }
            self.backoff = (self.backoff * 2).clamp(1, MAX_WATCH_SKIP);
            self.skip = self.backoff;
        }
        sys::poll_readable(fds, timeout)
    }
}

/// A child ended: its status to its status pipe (after killing what is
/// left of its group if it was a pool worker's). A child the parent forked
/// itself (watched) that ends while the parent is exiting takes its group
/// with it, as at the server's shutdown: its death signal comes when the
/// parent's first thread ends, which may be before the parent's socket
/// closes, and its subprocesses would otherwise outlive the program.
fn report(kid: Kid, parent: i32) {
    let Some(status) = kid.status else {
        // Its first thread gone, the parent shows as a zombie meanwhile.
        if !sys::process_alive(parent as u32) {
            let _ = sys::signal_group(kid.pid, sys::Sig::Kill);
        }
        return;
    };
    if kid.group_dies {
        // Before reaping: the zombie keeps the group id from reuse.
        let _ = sys::signal_group(kid.pid, sys::Sig::Kill);
    }
    // Not reapable: the pipe closes without a status ("lost").
    if let Ok(Some(ended)) = sys::reap(kid.pidfd.as_fd(), true) {
        let _ = sys::write_all(status.as_fd(), &encode_status(ended));
    }
}

/// A status-pipe message: how a child ended.
fn encode_status(ended: sys::Ended) -> [u8; 8] {
    let mut message = [0u8; 8];
    let value = match ended {
        sys::Ended::Code(code) => code,
        sys::Ended::Signal(sig) => {
            message[0] = 1;
            sig
        }
    };
    message[4..].copy_from_slice(&value.to_le_bytes());
    message
}

/// Decodes a status-pipe message written by the server.
pub(crate) fn decode_status(message: &[u8; 8]) -> crate::ExitStatus {
    let value = i32::from_le_bytes(message[4..].try_into().expect("4 bytes"));
    if message[0] == 1 {
        crate::ExitStatus::Signal(value)
    } else {
        crate::ExitStatus::Code(value)
    }
}

fn shutdown(kids: Vec<Kid>, shm_names: &[String], orphans: &mut Orphans) -> ! {
    for name in shm_names {
        let _ = sys::SharedRegion::unlink_named(name);
    }
    // The group first: one call ends a worker with the subprocesses of its
    // tasks, none of them left orphaned by the worker's death meanwhile.
    for kid in &kids {
        let _ = sys::signal_group(kid.pid, sys::Sig::Kill);
        let _ = sys::signal(kid.pidfd.as_fd(), sys::Sig::Kill);
    }
    // A killed worker's children become ours only once it has exited: wait
    // for that (briefly: SIGKILL is not ignorable) before sweeping, or a
    // job a worker started would outlive the program.
    let until = Instant::now() + Duration::from_secs(2);
    for kid in &kids {
        let left = until.saturating_duration_since(Instant::now());
        let _ = sys::poll_readable(&[kid.pidfd.as_fd()], Some(left));
    }
    // The kids are the server's children (but for those it only watches):
    // `kill_all` reaps them with the rest of its subtree.
    drop(kids);
    orphans.kill_all(Instant::now() + Duration::from_secs(2));
    sys::exit_immediately(0)
}

/// What [`handle`] needs of the server's own state.
struct Server<'a> {
    ctrl: &'a OwnedFd,
    pid: i32,
    /// The program the server serves, its parent.
    parent: i32,
    plan: &'a ExecPlan,
    env: &'a [CString],
}

impl Server<'_> {
    /// Answers a start request: the child's pid and a pidfd of it, or an
    /// errno.
    fn reply(&self, pid: i32, errno: i32, pidfd: Option<&OwnedFd>) {
        let mut message = [0u8; 8];
        message[..4].copy_from_slice(&pid.to_le_bytes());
        message[4..].copy_from_slice(&errno.to_le_bytes());
        let attached: Vec<BorrowedFd<'_>> = pidfd.map(|fd| fd.as_fd()).into_iter().collect();
        let _ = sys::send_with_fds(self.ctrl.as_fd(), &[IoSlice::new(&message)], &attached);
    }

    /// Whether another request is waiting on the control socket.
    fn request_waiting(&self) -> bool {
        matches!(
            sys::poll_readable(&[self.ctrl.as_fd()], Some(Duration::ZERO)).as_deref(),
            Ok([true])
        )
    }
}

/// Serves a request other than shared-memory tracking.
fn handle(request: Request, server: &Server<'_>, kids: &mut Vec<Kid>, spares: &mut Spares) {
    match request.kind {
        KIND_KILL => kill(kids, &request.meta),
        KIND_WATCH => watch(kids, &request.meta, request.fds),
        KIND_TAKEN => spares.taken(kids, &request.meta),
        KIND_FORK | KIND_EXEC if request.fds.len() >= 2 => start(request, server, kids, spares),
        _ => server.reply(-1, libc::EINVAL, None),
    }
}

/// Forks a child for a start request and answers it.
fn start(request: Request, server: &Server<'_>, kids: &mut Vec<Kid>, spares: &mut Spares) {
    let Request {
        kind,
        meta,
        arg,
        mut fds,
    } = request;
    let status = fds.remove(1);
    let prepared = Prepared::new(kind, &meta, &arg, &fds);
    let group_dies = prepared.group_dies();
    if kind == KIND_FORK {
        spares.wanted = true;
    }
    let pin = pins(&prepared, none_running(kids, spares));
    match fork_child(prepared, &fds, server, pin) {
        Ok((pid, pidfd)) => {
            server.reply(pid, 0, Some(&pidfd));
            kids.push(Kid {
                pid,
                pidfd,
                status: Some(status),
                group_dies,
            });
        }
        Err(e) => server.reply(-1, e.raw_os_error().unwrap_or(libc::EIO), None),
    }
}

/// A child whose parent could not take its pidfd: nobody can use it.
fn kill(kids: &[Kid], meta: &[u8]) {
    if let Ok(pid) = meta.try_into().map(i32::from_le_bytes)
        && let Some(kid) = kids.iter().find(|k| k.pid == pid)
    {
        let _ = sys::signal(kid.pidfd.as_fd(), sys::Sig::Kill);
    }
}

/// A child the parent forked itself, to kill if the parent dies.
fn watch(kids: &mut Vec<Kid>, meta: &[u8], mut fds: Vec<OwnedFd>) {
    if let (Some(pidfd), Ok(pid)) = (fds.pop(), meta.try_into().map(i32::from_le_bytes)) {
        kids.push(Kid {
            pid,
            pidfd,
            status: None,
            group_dies: false,
        });
    }
}

/// How long a start's caller watches for the server's answer before it
/// sleeps. A Fork start's answer comes once the server has forked (about
/// 150 µs), which is cheaper to watch for than to be woken by. A `Spawn`
/// start's caller sleeps at once: while it watches, its CPU looks busy to
/// the kernel, which then puts the child the server forks on the other CPU,
/// whatever runs there, and a child that re-executes the program needs a
/// millisecond and more of CPU before its task starts (under a CPU hog on
/// the other CPU, a whole run of `Spawn` starts and joins took 4.0 ms each
/// rather than 1.5 in 3 of 21 runs; none of 33 without the watch).
fn reply_watch(launch: Launch) -> Duration {
    match launch {
        Launch::Fork => Duration::from_micros(300),
        Launch::Exec => Duration::ZERO,
    }
}

/// Whether the child of `prepared` is forked pinned to the server's CPU
/// (see "Back-to-back starts" above): only a lone start (`alone`: no other
/// child of the server runs), not a pool's worker, and only a child that
/// runs the task itself. Pinned beside other children, a child queues
/// behind them; and a re-executing child (`Spawn`) needs a millisecond and
/// more of CPU before its task starts, longer than any wait the pin saves:
/// pinned to a CPU another thread keeps busy, it shared that CPU for its
/// whole start (under a CPU hog, a `Spawn` child pinned beside it took
/// 3.7-4.0 ms to start and join, one on the other CPU 1.5; unloaded,
/// unpinning changed nothing). Where the kernel puts an unpinned child
/// depends on its caller too: [`reply_watch`].
fn pins(prepared: &Prepared<'_>, alone: bool) -> bool {
    alone && prepared.is_fork() && !prepared.group_dies()
}

/// Whether none of `kids` runs but the spare on offer, which waits.
fn none_running(kids: &[Kid], spares: &Spares) -> bool {
    kids.iter().all(|k| spares.offered == Some(k.pid))
}

/// Forks a child for a prepared request; its pid and a pidfd of it. `pin`:
/// queue the child on this CPU (see "Back-to-back starts" above); it gets
/// the server's mask back first thing.
fn fork_child(
    prepared: Prepared<'_>,
    fds: &[OwnedFd],
    server: &Server<'_>,
    pin: bool,
) -> io::Result<(i32, OwnedFd)> {
    let mut keep: Vec<RawFd> = fds.iter().map(sys::raw).collect();
    let hooks = prepared.is_fork().then(ForkHooks::before);
    let pinned = pin.then(sys::pin_here).flatten();
    let forked = sys::fork_with(|| {
        if let Some(mask) = &pinned {
            mask.restore();
        }
        if let Some(hooks) = &hooks {
            hooks.in_child();
        }
        child_main(prepared, &mut keep, server.pid, server.plan, server.env)
    });
    if let Some(mask) = &pinned {
        mask.restore();
    }
    if hooks.is_some() {
        ForkHooks::after_fork_in_parent();
    }
    let pid = forked?;
    Ok((pid, sys::pidfd_open(pid)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start message of a child, a pool's worker or not.
    fn meta(group_dies: bool) -> Vec<u8> {
        postcard::to_stdvec(&bootstrap::StartMeta {
            identity: Vec::new(),
            entry: 0,
            func: 0,
            name: None,
            daemon: false,
            parent: 1,
            depth: 1,
            group_dies,
            context: Default::default(),
            exec: None,
        })
        .unwrap()
    }

    #[test]
    fn only_a_lone_forked_child_that_is_no_worker_is_pinned() {
        let (plain, worker) = (meta(false), meta(true));
        let pinned = |kind, meta: &[u8], alone| pins(&Prepared::new(kind, meta, &[], &[]), alone);
        assert!(pinned(KIND_FORK, &plain, true));
        assert!(!pinned(KIND_FORK, &plain, false), "beside other children");
        assert!(!pinned(KIND_FORK, &worker, true), "a pool's worker");
        assert!(
            !pinned(KIND_EXEC, &plain, true),
            "a Spawn child's start is long"
        );
    }

    #[test]
    fn a_spawn_starts_caller_sleeps_at_once_for_the_answer() {
        assert_eq!(reply_watch(Launch::Exec), Duration::ZERO);
        assert!(reply_watch(Launch::Fork) > Duration::ZERO);
    }

    /// Which of `exits` were watched, each watch seeing `fd` as it is.
    fn watched(watch: &mut Watch, fd: BorrowedFd<'_>, exits: usize) -> Vec<bool> {
        (0..exits)
            .map(|_| {
                watch.after_exit();
                let watching = watch.until.is_some();
                watch.wait(&[fd], Some(Duration::ZERO)).unwrap();
                watching
            })
            .collect()
    }

    #[test]
    fn watches_that_see_nothing_let_ever_more_exits_pass_and_a_request_starts_over() {
        let (ours, theirs) = sys::socketpair().unwrap();
        let mut watch = Watch::default();
        let (t, f) = (true, false);
        assert_eq!(
            watched(&mut watch, ours.as_fd(), 11),
            [t, f, t, f, f, t, f, f, f, f, t]
        );
        // The eight exits owed pass; then a watch sees a request, and every
        // exit is watched again.
        sys::write_all(theirs.as_fd(), b"x").unwrap();
        assert_eq!(
            watched(&mut watch, ours.as_fd(), 11),
            [f, f, f, f, f, f, f, f, t, t, t]
        );
        // Never more than MAX_WATCH_SKIP exits pass in a row.
        let mut buf = [0u8; 1];
        sys::read(ours.as_fd(), &mut buf).unwrap();
        let seen = watched(&mut watch, ours.as_fd(), 400);
        let longest = seen.split(|&w| w).map(<[bool]>::len).max();
        assert_eq!(longest, Some(MAX_WATCH_SKIP as usize));
    }
}

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
//! A `watch` request hands the server a pidfd of a child the parent forked
//! itself (the Fork start method from a non-main thread), for the last duty
//! below.
//!
//! `track` / `untrack` requests name POSIX shared memory objects
//! (`/dev/shm/<name>`) that the server removes when the parent dies: Python's
//! `resource_tracker`, without a process of its own.
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

use super::bootstrap::{self, BOOT_ENV, Ending, Outcome, StartMeta};
use super::orphans::Orphans;
use super::reexec::{ExecPlan, ForkHooks, ROLE_AT_INIT_ENV};
use crate::{Error, sys, wire};

/// Environment variable through which an exec'd fork server finds its socket.
pub(crate) const SERVER_ENV: &str = "CORRAL_SERVER";

const KIND_FORK: u32 = 0;
const KIND_EXEC: u32 = 1;
const KIND_WATCH: u32 = 2;
const KIND_TRACK_SHM: u32 = 3;
const KIND_UNTRACK_SHM: u32 = 4;
const KIND_KILL: u32 = 5;

const MAX_META: usize = 1 << 20;

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

    /// Asks the server to start a child. `fds` are the child's result socket,
    /// the write end of its status pipe, then the argument's handles.
    pub(crate) fn spawn(
        &self,
        launch: Launch,
        meta: &[u8],
        arg: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(i32, OwnedFd), Error> {
        let kind = match launch {
            Launch::Fork => KIND_FORK,
            Launch::Exec => KIND_EXEC,
        };
        self.send(kind, meta, arg, fds)?;
        let mut reply = [0u8; 8];
        let mut got = 0;
        let mut received = Vec::new();
        // A fork takes ~150 µs; watching for the answer that long is cheaper
        // than being woken by it.
        let spin_until = std::time::Instant::now() + std::time::Duration::from_micros(300);
        while got < reply.len() {
            let spinning = std::time::Instant::now() < spin_until;
            let n = match sys::recv_with_fds_flags(
                self.sock.as_fd(),
                &mut reply[got..],
                &mut received,
                !spinning,
            ) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
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
        let pid = i32::from_le_bytes(reply[..4].try_into().expect("4 bytes"));
        let errno = i32::from_le_bytes(reply[4..].try_into().expect("4 bytes"));
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
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[4..8].copy_from_slice(&(meta.len() as u32).to_le_bytes());
        header[8..].copy_from_slice(&(arg.len() as u64).to_le_bytes());
        wire::send_all(self.sock.as_fd(), &[&header, meta, arg], fds)
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

/// The environment for re-executed children: `entries` as C strings.
fn c_entries(entries: Vec<Vec<u8>>) -> Vec<CString> {
    entries
        .into_iter()
        .filter_map(|e| CString::new(e).ok())
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

struct Kid {
    pid: i32,
    pidfd: OwnedFd,
    /// The status pipe for children the server forked; `None` for watched ones.
    status: Option<OwnedFd>,
    /// Kill what is left of its process group when it exits.
    group_dies: bool,
}

struct Request {
    kind: u32,
    meta: Vec<u8>,
    arg: Vec<u8>,
    fds: Vec<OwnedFd>,
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
    // A parent that ignores SIGCHLD would have the kernel reap the server's
    // children before it can open their pidfds or report their status.
    sys::default_sigchld();
    // Inherited by every child: they need not set it up each.
    bootstrap::install_panic_hook();
    let _ = sys::executable_identity();
    let plan = ExecPlan::same_program();
    let env = exec_env();
    let mut kids: Vec<Kid> = Vec::new();
    let mut shm_names: Vec<String> = Vec::new();
    let mut orphans = Orphans::new(server_pid);
    loop {
        let ready = {
            let mut fds = vec![ctrl.as_fd()];
            fds.extend(orphans.wake_fd());
            fds.extend(kids.iter().map(|k| k.pidfd.as_fd()));
            sys::poll_readable(&fds, None)
        };
        let Ok(ready) = ready else {
            shutdown(kids, &shm_names, &mut orphans)
        };
        let first_kid = 1 + usize::from(orphans.wake_fd().is_some());
        let mut exited = first_kid == 2 && ready[1];
        for i in (0..kids.len()).rev() {
            if ready[first_kid + i] {
                report(kids.swap_remove(i));
                exited = true;
            }
        }
        if exited {
            let pids: Vec<i32> = kids.iter().map(|k| k.pid).collect();
            let workers: Vec<i32> = kids
                .iter()
                .filter(|k| k.group_dies)
                .map(|k| k.pid)
                .collect();
            orphans.sweep(&pids, &workers);
        }
        if ready[0] {
            match read_request(ctrl.as_fd()) {
                Ok(Some(request)) if request.kind == KIND_TRACK_SHM => {
                    shm_names.extend(String::from_utf8(request.meta).ok())
                }
                Ok(Some(request)) if request.kind == KIND_UNTRACK_SHM => {
                    shm_names.retain(|n| n.as_bytes() != request.meta)
                }
                Ok(Some(request)) => handle(request, &ctrl, &mut kids, server_pid, &plan, &env),
                Ok(None) | Err(_) => shutdown(kids, &shm_names, &mut orphans),
            }
        }
    }
}

fn report(kid: Kid) {
    let Some(status) = kid.status else { return };
    if kid.group_dies {
        // Before reaping: the zombie keeps the group id from reuse.
        let _ = sys::signal_group(kid.pid, sys::Sig::Kill);
    }
    let mut message = [0u8; 8];
    match sys::reap(kid.pidfd.as_fd(), true) {
        Ok(Some(sys::Ended::Code(code))) => message[4..].copy_from_slice(&code.to_le_bytes()),
        Ok(Some(sys::Ended::Signal(sig))) => {
            message[0] = 1;
            message[4..].copy_from_slice(&sig.to_le_bytes());
        }
        // Not reapable: close the pipe without a status ("lost").
        Ok(None) | Err(_) => return,
    }
    let _ = sys::write_all(status.as_fd(), &message);
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
    for kid in &kids {
        let _ = sys::signal(kid.pidfd.as_fd(), sys::Sig::Kill);
        let _ = sys::signal_group(kid.pid, sys::Sig::Kill);
    }
    // A killed worker's children become ours only once it has exited: wait
    // for that (briefly: SIGKILL is not ignorable) before sweeping, or a
    // job a worker started would outlive the program.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    for kid in &kids {
        let left = until.saturating_duration_since(std::time::Instant::now());
        let _ = sys::poll_readable(&[kid.pidfd.as_fd()], Some(left));
    }
    let pids: Vec<i32> = kids.iter().map(|k| k.pid).collect();
    orphans.kill_all(&pids);
    for kid in kids {
        if kid.status.is_some() {
            let _ = sys::reap(kid.pidfd.as_fd(), true);
        }
    }
    sys::exit_immediately(0)
}

fn read_request(ctrl: BorrowedFd<'_>) -> io::Result<Option<Request>> {
    let mut header = [0u8; 16];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < header.len() {
        let n = sys::recv_with_fds(ctrl, &mut header[got..], &mut fds)?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    let kind = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let meta_len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
    let arg_len = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
    if meta_len > MAX_META || arg_len > wire::MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "oversized request",
        ));
    }
    let meta = wire::read_exact_growing(ctrl, meta_len, &mut fds)?;
    let arg = wire::read_exact_growing(ctrl, arg_len as usize, &mut fds)?;
    Ok(Some(Request {
        kind,
        meta,
        arg,
        fds,
    }))
}

fn handle(
    request: Request,
    ctrl: &OwnedFd,
    kids: &mut Vec<Kid>,
    server_pid: i32,
    plan: &ExecPlan,
    env: &[CString],
) {
    let Request {
        kind,
        meta,
        arg,
        mut fds,
    } = request;
    if kind == KIND_KILL {
        // A child whose parent could not take its pidfd: nobody can use it.
        if let Ok(pid) = meta.as_slice().try_into().map(i32::from_le_bytes)
            && let Some(kid) = kids.iter().find(|k| k.pid == pid)
        {
            let _ = sys::signal(kid.pidfd.as_fd(), sys::Sig::Kill);
        }
        return;
    }
    if kind == KIND_WATCH {
        if let (Some(pidfd), Ok(pid)) = (
            fds.pop(),
            meta.as_slice().try_into().map(i32::from_le_bytes),
        ) {
            kids.push(Kid {
                pid,
                pidfd,
                status: None,
                group_dies: false,
            });
        }
        return;
    }
    let reply = |pid: i32, errno: i32, pidfd: Option<&OwnedFd>| {
        let mut message = [0u8; 8];
        message[..4].copy_from_slice(&pid.to_le_bytes());
        message[4..].copy_from_slice(&errno.to_le_bytes());
        let attached: Vec<BorrowedFd<'_>> = pidfd.map(|fd| fd.as_fd()).into_iter().collect();
        let _ = sys::send_with_fds(ctrl.as_fd(), &[IoSlice::new(&message)], &attached);
    };
    if fds.len() < 2 || (kind != KIND_FORK && kind != KIND_EXEC) {
        return reply(-1, libc::EINVAL, None);
    }
    let status = fds.remove(1);
    // Everything the child needs is prepared here, before the fork: each
    // allocation in the child would cost it copy-on-write faults.
    let start = postcard::from_bytes::<StartMeta>(&meta).map_err(|e| e.to_string());
    let meta_ok = start.as_ref().ok();
    // Unnamed children would keep the server's name: `ps` would show a row
    // of "corral-server"s.
    let name = sys::process_name(
        meta_ok
            .and_then(|m| m.name.as_deref())
            .unwrap_or("corral-child"),
    );
    let group_dies = meta_ok.is_some_and(|m| m.group_dies);
    let context = meta_ok.map(|m| m.context.clone()).unwrap_or_default();
    let cwd = context.cwd.and_then(|d| CString::new(d).ok());
    let child_env = context.env.map(c_entries);
    let mut keep: Vec<RawFd> = fds.iter().map(sys::raw).collect();
    let handles: Vec<RawFd> = keep[1..].to_vec();
    let prepared = Prepared {
        kind,
        start,
        meta: &meta,
        arg: &arg,
        name,
        handles,
        cwd,
        env: child_env,
    };
    let hooks = (kind == KIND_FORK).then(ForkHooks::before);
    let forked = sys::fork_with(|| {
        if let Some(hooks) = &hooks {
            hooks.in_child();
        }
        child_main(prepared, &mut keep, server_pid, plan, env)
    });
    if hooks.is_some() {
        ForkHooks::after_fork_in_parent();
    }
    drop(fds);
    match forked.and_then(|pid| Ok((pid, sys::pidfd_open(pid)?))) {
        Ok((pid, pidfd)) => {
            reply(pid, 0, Some(&pidfd));
            kids.push(Kid {
                pid,
                pidfd,
                status: Some(status),
                group_dies,
            });
        }
        Err(e) => reply(-1, e.raw_os_error().unwrap_or(libc::EIO), None),
    }
}

/// A start request, decoded and made ready by the server before it forks.
struct Prepared<'a> {
    kind: u32,
    start: Result<StartMeta, String>,
    meta: &'a [u8],
    arg: &'a [u8],
    name: Option<CString>,
    /// The argument's handles (the result socket is `keep[0]`).
    handles: Vec<RawFd>,
    /// The parent's working directory, where it differs from ours.
    cwd: Option<CString>,
    /// The parent's environment, where it differs from ours.
    env: Option<Vec<CString>>,
}

fn child_main(
    prepared: Prepared<'_>,
    keep: &mut [RawFd],
    server_pid: i32,
    plan: &ExecPlan,
    env: &[CString],
) -> ! {
    sys::enter_child(server_pid, true, prepared.name.as_deref());
    // The server blocks SIGCHLD for its signalfd; the child must not.
    sys::unblock_sigchld();
    let result_raw = keep[0];
    sys::close_all_except(keep);
    let result = sys::adopt_inherited_fds(&[result_raw])
        .pop()
        .expect("the result socket");
    bootstrap::keep_result_fd(result.as_fd());
    let handles = sys::adopt_inherited_fds(&prepared.handles);
    if let Some(cwd) = &prepared.cwd
        && let Err(e) = sys::chdir(cwd)
    {
        bootstrap::finish(
            result.as_fd(),
            Outcome::Refused(format!("entering the parent's directory {cwd:?}: {e}")),
            Ending::Quick,
        )
    }
    let start = match prepared.start {
        Ok(start) => start,
        Err(e) => bootstrap::finish(
            result.as_fd(),
            Outcome::Refused(format!("corrupt start message: {e}")),
            Ending::Quick,
        ),
    };
    if prepared.kind == KIND_FORK {
        if let Some(env) = &prepared.env {
            sys::replace_env(env);
        }
        let outcome = bootstrap::run_task(&start, prepared.arg, handles);
        bootstrap::finish(result.as_fd(), outcome, Ending::Quick)
    }
    let env = prepared.env.as_deref().unwrap_or(env);
    // The parent's own command, if it set one; else ours (the same program).
    let own;
    let plan = match start.exec.clone().map(ExecPlan::command) {
        Some(Ok(parents)) => {
            own = parents;
            &own
        }
        Some(Err(e)) => bootstrap::finish(
            result.as_fd(),
            Outcome::Refused(format!("the re-exec command: {e}")),
            Ending::Quick,
        ),
        None => plan,
    };
    let failure = match exec_child(prepared.meta, prepared.arg, &result, &handles, plan, env) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    bootstrap::finish(
        result.as_fd(),
        Outcome::Refused(format!("re-executing the binary failed: {failure}")),
        Ending::Quick,
    )
}

fn exec_child(
    meta_bytes: &[u8],
    arg: &[u8],
    result: &OwnedFd,
    handles: &[OwnedFd],
    plan: &ExecPlan,
    env: &[CString],
) -> io::Result<std::convert::Infallible> {
    let memfd = sys::memfd_with(&bootstrap::boot_file(meta_bytes, arg))?;
    for fd in handles.iter().chain([&memfd, result]) {
        sys::set_cloexec(fd.as_fd(), false)?;
    }
    let raws: Vec<RawFd> = handles.iter().map(sys::raw).collect();
    let spec = bootstrap::boot_spec(sys::raw(&memfd), sys::raw(result), &raws);
    let mut env = env.to_vec();
    env.push(sys::c_string(format!("{BOOT_ENV}={spec}").as_bytes())?);
    Err(plan.with_env(&env).exec())
}

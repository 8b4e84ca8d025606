//! Linux system calls, wrapped into safe functions with I/O-safe types.
//!
//! # Safety
//!
//! Each `unsafe` block below states the invariant it relies on. The blocks
//! are: `fork`, `execve`, `atexit`, `_exit`, environment removal, `close_range`
//! in a freshly forked child, adopting file descriptors that the child
//! bootstrap received by number, the `SIGABRT` handler that flags
//! out-of-memory aborts of pool workers, replacing the environment of a fresh
//! child, and the fork server's `SIGCHLD` signalfd and subreaper `prctl`.

use std::convert::Infallible;
use std::ffi::{CStr, CString, OsStr};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

/// Most file descriptors one message may carry (the kernel's `SCM_MAX_FD` is 253).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 250;

/// Forks the calling process and runs `child` in the child.
///
/// Returns the child's pid in the parent. `child` never returns (its return
/// type is uninhabited): it must end the process.
///
/// # Caveats
///
/// The child is a copy of the caller with only the calling thread. Memory
/// safety holds (each process owns its own copy of every value), but a lock
/// that another thread held at the instant of the fork stays locked forever in
/// the child. glibc's `malloc` is fork-safe; code run by `child` must avoid
/// other locks that foreign threads may hold. corral's own globals are
/// [`super::ForkLocal`] and are rebuilt in the child.
pub(crate) fn fork_with(child: impl FnOnce() -> Infallible) -> io::Result<i32> {
    // SAFETY: `fork` itself has no memory-safety preconditions; the hazard is
    // the one documented above (deadlock on locks held by vanished threads),
    // which `child` is responsible for avoiding. The child never returns into
    // the caller's frames: `child` diverges.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            super::new_process_generation();
            #[expect(unreachable_code, reason = "`child` cannot return; this spells it out")]
            match child() {}
        }
        pid => {
            // Every corral child leads its own process group; the child sets
            // it too (`enter_child`), but it may not have run yet when the
            // parent signals the group, and then the signal would miss it or
            // (sent to the parent's group) hit the wrong processes.
            if let Some(p) = Pid::from_raw(pid) {
                let _ = rustix::process::setpgid(Some(p), Some(p));
            }
            Ok(pid)
        }
    }
}

/// Whether the calling thread is the process's main thread.
pub(crate) fn is_main_thread() -> bool {
    rustix::thread::gettid() == rustix::process::getpid()
}

/// The number of threads of the calling process.
pub(crate) fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

/// The calling process's id.
pub(crate) fn getpid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// The calling process's parent's id.
pub(crate) fn getppid() -> i32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
}

/// Whether a process with this pid exists (a zombie counts).
pub(crate) fn process_exists(pid: i32) -> bool {
    match Pid::from_raw(pid) {
        Some(pid) => !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        ),
        None => false,
    }
}

/// Makes a freshly forked process a well-behaved corral child: its own process
/// group (so signals reach its descendants), killed when `parent` dies (if
/// `die_with_parent`), and named for `ps` (see [`process_name`]).
///
/// Exits immediately if `parent` is already gone. Allocates nothing: every
/// write in a fresh child costs a copy-on-write page fault.
pub(crate) fn enter_child(parent: i32, die_with_parent: bool, name: Option<&CStr>) {
    let _ = rustix::process::setpgid(None, None);
    if die_with_parent {
        let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
        // The parent may have died before the death signal was armed.
        if getppid() != parent {
            exit_immediately(1);
        }
    }
    if let Some(name) = name {
        set_process_name(name);
    }
}

/// Names the calling thread (the main thread's name is the process's, as
/// `ps` and `top` show it).
pub(crate) fn set_process_name(name: &CStr) {
    let _ = rustix::thread::set_name(name);
}

/// A process name as the kernel takes it (at most 15 bytes, no NUL).
pub(crate) fn process_name(name: &str) -> Option<CString> {
    let short: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    CString::new(short).ok()
}

/// Closes every descriptor above stderr except those in `keep`.
///
/// Only for a freshly forked child that will never drop the `OwnedFd` values
/// it inherited (it ends with [`exit_immediately`] or `std::process::exit`).
pub(crate) fn close_all_except(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut next = 3u32;
    for fd in keep
        .iter()
        .map(|&fd| fd as u32)
        .filter(|&fd| fd > 2)
        .chain([u32::MAX])
    {
        if fd > next {
            let last = if fd == u32::MAX { u32::MAX } else { fd - 1 };
            // SAFETY: close_range only closes descriptors. The caller is a
            // freshly forked child whose inherited `OwnedFd` values are never
            // dropped (the process exits without running destructors), so no
            // live owner will close or use these numbers again.
            unsafe { libc::syscall(libc::SYS_close_range, next, last, 0) };
        }
        next = next.max(fd.saturating_add(1));
    }
}

/// Adopts descriptors that this process received by number from its parent
/// through the corral bootstrap protocol.
///
/// Only the child bootstrap calls this, once, with the numbers its start
/// message lists; nothing else in the process owns them.
pub(crate) fn adopt_inherited_fds(raw: &[RawFd]) -> Vec<OwnedFd> {
    raw.iter()
        .map(|&fd| {
            // SAFETY: the bootstrap protocol hands each listed descriptor to
            // this process exactly once and nothing else refers to it, so
            // taking ownership here is the only owner.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect()
}

/// Sets or clears close-on-exec.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = if on {
        rustix::io::FdFlags::CLOEXEC
    } else {
        rustix::io::FdFlags::empty()
    };
    rustix::io::fcntl_setfd(fd, flags)?;
    Ok(())
}

/// Sets or clears `O_NONBLOCK`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let mut flags = rustix::fs::fcntl_getfl(fd)?;
    flags.set(rustix::fs::OFlags::NONBLOCK, on);
    rustix::fs::fcntl_setfl(fd, flags)?;
    Ok(())
}

/// A program, arguments and environment made ready for `execve` before a
/// fork: the child of a threaded process may not allocate, so it only calls
/// [`ExecArgs::exec`].
#[derive(Debug)]
pub(crate) struct ExecArgs {
    program: CString,
    /// Owners of the strings the pointer arrays point into.
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl ExecArgs {
    /// Prepares `program` with `argv` and the environment `envp`.
    pub(crate) fn new(program: CString, argv: Vec<CString>, envp: Vec<CString>) -> ExecArgs {
        let nul_ended = |v: &[CString]| {
            let mut ptrs: Vec<*const libc::c_char> = v.iter().map(|a| a.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            ptrs
        };
        let (argv_ptrs, env_ptrs) = (nul_ended(&argv), nul_ended(&envp));
        let mut strings = argv;
        strings.extend(envp);
        ExecArgs {
            program,
            _strings: strings,
            argv: argv_ptrs,
            envp: env_ptrs,
        }
    }

    /// Replaces this process; returns only on failure. Allocates nothing.
    pub(crate) fn exec(&self) -> io::Error {
        // SAFETY: `program` and every string the arrays point to are owned
        // by `self` (moving a `CString` does not move its heap bytes), so
        // they outlive the call; both arrays end with a null pointer as
        // execve requires.
        unsafe {
            libc::execve(
                self.program.as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            )
        };
        io::Error::last_os_error()
    }
}

/// Ends the process at once: no destructors, no `atexit` handlers, no flush.
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// Registers `f` to run when the process exits normally.
pub(crate) fn at_exit(f: extern "C" fn()) {
    // SAFETY: `f` is a plain `extern "C" fn()` with 'static lifetime, which is
    // what `atexit` requires.
    unsafe { libc::atexit(f) };
}

/// Removes an environment variable.
///
/// Only called from `corral::init` in a child the bootstrap just started, or
/// by a pool worker before its first task: before the process runs any user
/// code that could start threads.
pub(crate) fn remove_env(key: &OsStr) {
    // SAFETY: edition 2024 makes this unsafe because another thread could
    // read the environment concurrently. The bootstrap calls it before any
    // user code runs, while the process has a single thread.
    unsafe { std::env::remove_var(key) };
}

/// The size of a transparent huge page on x86-64 and arm64 (4 KiB base
/// pages).
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the 2 MiB-aligned part of `buf` with transparent
/// huge pages when it is first written (`MADV_HUGEPAGE`): fresh memory then
/// costs a fault per 2 MiB rather than per 4 KiB. Best effort: a kernel
/// without them, or a buffer with no aligned 2 MiB in it, is left as is;
/// so is every buffer where the hypervisor takes freed memory back (see
/// [`host_takes_free_pages`]).
pub(crate) fn prefer_huge_pages<T>(buf: &mut [T]) {
    if host_takes_free_pages() {
        return;
    }
    let start = buf.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(buf);
    let first = start.next_multiple_of(HUGE_PAGE);
    let last = end - end % HUGE_PAGE;
    if first >= last {
        return;
    }
    // SAFETY: the range lies inside `buf`, memory this call borrows
    // exclusively, and the advice changes neither its contents nor its
    // mapping's validity: only the size of the pages that back it.
    let _ = unsafe {
        rustix::mm::madvise(
            first as *mut std::ffi::c_void,
            last - first,
            rustix::mm::Advice::LinuxHugepage,
        )
    };
}

/// Whether this kernel hands free memory back to its hypervisor (free page
/// reporting: a balloon driver registered, so the parameter names the
/// smallest block reported, 2 MiB on x86-64; it reads -1 while none is).
/// A huge page made of reported memory is faulted back in by the host 4 KiB
/// at a time: on a Firecracker VM, writing 80 MB of fresh huge pages took
/// 150-260 ms once the last ones were freed over 2 s before (reporting's
/// delay), against 34-54 ms in 4 KiB pages and 5 ms for huge pages reused
/// at once (`bench/README.md`).
pub(crate) fn host_takes_free_pages() -> bool {
    static REPORTING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REPORTING.get_or_init(|| {
        std::fs::read_to_string("/sys/module/page_reporting/parameters/page_reporting_order")
            .ok()
            .and_then(|order| order.trim().parse::<i64>().ok())
            .is_some_and(|order| (0..u32::MAX as i64).contains(&order) && order < 64)
    })
}

/// The CPU this thread runs on (it may move at any time after).
pub(crate) fn current_cpu() -> usize {
    rustix::thread::sched_getcpu()
}

/// The CPUs a thread may run on, as it had them before [`pin_here`].
pub(crate) struct Affinity(rustix::thread::CpuSet);

impl Affinity {
    /// Gives the calling thread this mask again (in a forked child: the
    /// mask of the thread that forked it). If it is refused (its CPUs went
    /// away meanwhile), every CPU the thread's cpuset allows, rather than
    /// staying pinned.
    pub(crate) fn restore(&self) {
        if rustix::thread::sched_setaffinity(None, &self.0).is_err() {
            let mut every = rustix::thread::CpuSet::new();
            (0..rustix::thread::CpuSet::MAX_CPU).for_each(|cpu| every.set(cpu));
            let _ = rustix::thread::sched_setaffinity(None, &every);
        }
    }
}

/// Pins the calling thread to the CPU it runs on, and returns the mask it
/// had: a child it forks meanwhile is queued on that CPU. `None` if it
/// could not be pinned (a seccomp filter, say), which changes nothing.
pub(crate) fn pin_here() -> Option<Affinity> {
    let had = rustix::thread::sched_getaffinity(None).ok()?;
    let mut here = rustix::thread::CpuSet::new();
    here.set(rustix::thread::sched_getcpu());
    rustix::thread::sched_setaffinity(None, &here).ok()?;
    Some(Affinity(had))
}

/// Whether [`global_barrier`] works here (`membarrier`'s global expedited
/// command: Linux 4.16 and later, unless a seccomp filter forbids it);
/// asked, and tried once, per process.
pub(crate) fn global_barrier_works() -> bool {
    use rustix::thread::{MembarrierQuery, membarrier_query};
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        let needed = MembarrierQuery::GLOBAL_EXPEDITED | MembarrierQuery::REGISTER_GLOBAL_EXPEDITED;
        membarrier_query().contains(needed) && global_barrier()
    })
}

/// Registers this process for [`global_barrier`]: from now on, another
/// process's call makes each of this process's running threads execute a
/// full memory barrier before it returns. False if it could not.
pub(crate) fn register_for_global_barrier() -> bool {
    use rustix::thread::{MembarrierCommand, membarrier};
    membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok()
}

/// Makes every running thread of every registered process (see
/// [`register_for_global_barrier`]) execute a full memory barrier, and
/// returns once they all have (1-2 µs here): the heavy side of an
/// asymmetric fence, whose light side is a compiler fence. Threads not
/// running have passed a context switch, itself a full barrier. False if
/// the call failed (it cannot once [`global_barrier_works`] said yes,
/// unless a seccomp filter was installed since).
pub(crate) fn global_barrier() -> bool {
    use rustix::thread::{MembarrierCommand, membarrier};
    membarrier(MembarrierCommand::GlobalExpedited).is_ok()
}
/// Raises the soft limit on open descriptors to the hard limit.
pub(crate) fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// Whether the peer of a stream socket has closed its end (end-of-file or
/// hang-up is pending), without reading anything.
pub(crate) fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    let mut polls = [PollFd::new(&fd, PollFlags::RDHUP)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut polls, Some(&zero)), Ok(n) if n > 0)
        && polls[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
}

/// Changes the working directory.
pub(crate) fn chdir(dir: &CStr) -> io::Result<()> {
    Ok(rustix::process::chdir(dir)?)
}

/// Replaces this process's whole environment with `entries` (`KEY=VALUE`).
///
/// Only for a freshly forked, single-threaded child (the fork server's
/// children, before they run anything else).
pub(crate) fn replace_env(entries: &[CString]) {
    let keys: Vec<std::ffi::OsString> = std::env::vars_os().map(|(k, _)| k).collect();
    for key in keys {
        // SAFETY: the caller is a freshly forked child with one thread, so
        // no other thread reads or writes the environment concurrently.
        unsafe { std::env::remove_var(key) };
    }
    for entry in entries {
        let bytes = entry.as_bytes();
        let Some(eq) = bytes.iter().position(|&b| b == b'=').filter(|&i| i > 0) else {
            continue;
        };
        let (key, value) = (&bytes[..eq], &bytes[eq + 1..]);
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: as above, one thread.
        unsafe { std::env::set_var(OsStr::from_bytes(key), OsStr::from_bytes(value)) };
    }
}

/// Opens a pidfd for `pid`.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// How a reaped process ended (the layers above call it `ExitStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

/// Reaps the child behind `pidfd` (which must be a child of this process).
///
/// Returns `None` if it is still running and `block` is false.
pub(crate) fn reap(pidfd: BorrowedFd<'_>, block: bool) -> io::Result<Option<Ended>> {
    let mut options = WaitIdOptions::EXITED;
    if !block {
        options |= WaitIdOptions::NOHANG;
    }
    loop {
        match rustix::process::waitid(WaitId::PidFd(pidfd), options) {
            Ok(Some(status)) => return Ok(decode_wait(&status)),
            Ok(None) => return Ok(None),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for the child `pid` to exit and reaps it: for a child whose pidfd
/// could not be opened.
pub(crate) fn reap_pid(pid: i32) -> io::Result<()> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map(|_| ()).map_err(Into::into),
        }
    }
}

/// Reaps every child of this process that has exited, whoever it is (an
/// adopted orphan too).
pub(crate) fn reap_exited_children() {
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::NOHANG) {
            Ok(Some(_)) | Err(rustix::io::Errno::INTR) => continue,
            // None exited yet, or no child at all.
            Ok(None) | Err(_) => return,
        }
    }
}

fn decode_wait(status: &rustix::process::WaitIdStatus) -> Option<Ended> {
    if let Some(code) = status.exit_status() {
        Some(Ended::Code(code))
    } else {
        status.terminating_signal().map(Ended::Signal)
    }
}

/// A signal corral sends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sig {
    Int,
    Term,
    Kill,
}

impl Sig {
    fn to_rustix(self) -> Signal {
        match self {
            Sig::Int => Signal::INT,
            Sig::Term => Signal::TERM,
            Sig::Kill => Signal::KILL,
        }
    }
}

/// Sends `sig` to the process behind `pidfd` (race-free against pid reuse).
/// A process that already exited is not an error.
pub(crate) fn signal(pidfd: BorrowedFd<'_>, sig: Sig) -> io::Result<()> {
    match rustix::process::pidfd_send_signal(pidfd, sig.to_rustix()) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends `sig` to the process group `pgid`. A vanished group is not an error.
pub(crate) fn signal_group(pgid: i32, sig: Sig) -> io::Result<()> {
    let Some(pgid) = Pid::from_raw(pgid) else {
        return Ok(());
    };
    match rustix::process::kill_process_group(pgid, sig.to_rustix()) {
        Ok(()) | Err(rustix::io::Errno::SRCH) | Err(rustix::io::Errno::PERM) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Waits until at least one descriptor is readable (or at its end, or in
/// error), or until `timeout` passes. Returns which ones are ready.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let mut polls: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let timespec = timeout.map(|t| Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    loop {
        match rustix::event::poll(&mut polls, timespec.as_ref()) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(polls.iter().map(|p| !p.revents().is_empty()).collect())
}

/// A connected pair of close-on-exec Unix stream sockets.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Sets both socket buffer sizes (the kernel caps them at `wmem_max`/`rmem_max`).
pub(crate) fn set_socket_buffers(fd: BorrowedFd<'_>, bytes: usize) {
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, bytes);
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(fd, bytes);
}

/// A close-on-exec pipe: `(read end, write end)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Reads into `buf`, retrying on `EINTR`. `Ok(0)` is end of file.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `buf`, retrying on `EINTR` and short writes.
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sends `iov` on a stream socket with `fds` attached to its first byte.
/// Returns how many bytes went out (possibly fewer than `iov` holds).
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    iov: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    // On the stack: this runs for every message sent.
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let used = if fds.is_empty() { 0 } else { space.len() };
    let mut control = SendAncillaryBuffer::new(&mut space[..used]);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    loop {
        match rustix::net::sendmsg(sock, iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives into `buf` from a stream socket; descriptors that arrive are
/// appended to `fds` (close-on-exec). `Ok(0)` is end of file.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    recv_with_fds_flags(sock, buf, fds, true)
}

/// [`recv_with_fds`], failing with `WouldBlock` instead of waiting unless
/// `block`.
pub(crate) fn recv_with_fds_flags(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    block: bool,
) -> io::Result<usize> {
    let flags = if block {
        RecvFlags::CMSG_CLOEXEC
    } else {
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT
    };
    // On the stack: this runs for every read of a message.
    let mut space =
        [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE + 3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let received = loop {
        match rustix::net::recvmsg(sock, &mut iov, &mut control, flags) {
            Ok(r) => break r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    Ok(received.bytes)
}

/// A sealed-size anonymous file holding `bytes`, for handing data across `exec`.
pub(crate) fn memfd_with(bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(c"corral-boot", rustix::fs::MemfdFlags::CLOEXEC)?;
    write_all(fd.as_fd(), bytes)?;
    rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(0))?;
    Ok(fd)
}

/// A C string for `exec`, or an error naming the offending value.
pub(crate) fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
}

/// Whether `fd` refers to an open descriptor.
pub(crate) fn is_open(fd: RawFd) -> bool {
    fd >= 0 && std::fs::metadata(format!("/proc/self/fd/{fd}")).is_ok()
}

/// Closes a raw descriptor this process inherited by fork and no longer needs.
///
/// Only for a freshly forked child, for descriptors whose `OwnedFd` owner lives
/// in a stale [`super::ForkLocal`] that is never dropped.
pub(crate) fn close_inherited(fd: RawFd) {
    if fd > 2 {
        // SAFETY: the owner of `fd` is a value of the parent's generation that
        // this process never uses or drops again, so closing the number here
        // cannot cause a double close or a use after close.
        unsafe { libc::close(fd) };
    }
}

/// Copies the bytes at `addr` in process `pid`'s memory into `buf`
/// (`process_vm_readv`, "cross memory attach"): one copy, made by the
/// kernel, with no mapping shared. Fails as the kernel does: `EPERM` where
/// this process may not reach that one (a ptrace access check: another
/// user, a process made undumpable, Yama's `ptrace_scope`), `ENOSYS` or
/// `EPERM` under a seccomp filter, `ESRCH` once it is gone, `EFAULT` for an
/// address it has not mapped (or, writing, not mapped writable).
pub(crate) fn read_process_memory(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    cross_copy(pid, addr, buf.as_mut_ptr(), buf.len(), CrossCopy::Read)
}

/// Copies `buf` to `addr` in process `pid`'s memory (`process_vm_writev`);
/// fails as [`read_process_memory`] does.
///
/// Writing another process's memory is safe for this one; for that one it
/// is whatever the bytes mean at `addr`. The caller must know that process
/// expects them there, and that `pid` is still that process.
pub(crate) fn write_process_memory(pid: i32, addr: u64, buf: &[u8]) -> io::Result<()> {
    cross_copy(
        pid,
        addr,
        buf.as_ptr().cast_mut(),
        buf.len(),
        CrossCopy::Write,
    )
}

#[derive(Clone, Copy, PartialEq)]
enum CrossCopy {
    Read,
    Write,
}

/// `process_vm_readv`/`writev` of `len` bytes between this process's `local`
/// and `addr` in `pid`, repeated over partial copies.
fn cross_copy(pid: i32, addr: u64, local: *mut u8, len: usize, way: CrossCopy) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let local = libc::iovec {
            iov_base: local.wrapping_add(done).cast(),
            iov_len: len - done,
        };
        let remote = libc::iovec {
            iov_base: (addr + done as u64) as usize as *mut libc::c_void,
            iov_len: len - done,
        };
        // SAFETY: `local` describes the rest of a buffer of this process
        // that the caller lends for `len` bytes (writable for a read, and
        // only read for a write); `remote` is only an address in the other
        // process, which the kernel checks and never resolves in this one.
        let got = unsafe {
            match way {
                CrossCopy::Read => libc::process_vm_readv(pid, &local, 1, &remote, 1, 0),
                CrossCopy::Write => libc::process_vm_writev(pid, &local, 1, &remote, 1, 0),
            }
        };
        match got {
            -1 => return Err(io::Error::last_os_error()),
            // A partial copy stops at a page the other process has not
            // mapped: the next call says why.
            0 => return Err(io::Error::from_raw_os_error(libc::EFAULT)),
            n => done += n as usize,
        }
    }
    Ok(())
}

/// The arguments this process was started with, from `/proc/self/cmdline`.
pub(crate) fn own_cmdline() -> Vec<CString> {
    let mut raw = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    if raw.last() == Some(&0) {
        raw.pop();
    }
    raw.split(|&b| b == 0)
        .filter_map(|a| CString::new(a).ok())
        .collect()
}

/// Raw number of a descriptor, for the boot protocol.
pub(crate) fn raw(fd: &impl AsRawFd) -> RawFd {
    fd.as_raw_fd()
}

/// Waits until `fd` can be written to.
pub(crate) fn poll_writable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut polls = [PollFd::new(&fd, PollFlags::OUT)];
    loop {
        match rustix::event::poll(&mut polls, None) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Ignores `SIGPIPE` in this process (Rust's `main` does this for programs;
/// a fork server started before `main`, from a test binary's constructor,
/// must do it itself). Writes to closed pipes then fail with `EPIPE`.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN involves no handler code and no memory.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Makes this process the reaper of its orphaned descendants
/// (`PR_SET_CHILD_SUBREAPER`): a descendant whose parent dies becomes its
/// child instead of init's.
pub(crate) fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes no pointers.
    match unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Blocks `SIGCHLD` and returns a non-blocking signalfd that becomes
/// readable when one is pending (so `poll` wakes when any child exits).
pub(crate) fn sigchld_fd() -> io::Result<OwnedFd> {
    let mut mask = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given; sigaddset,
    // sigprocmask and signalfd read that initialised set only. The new
    // descriptor is owned by nobody else.
    unsafe {
        libc::sigemptyset(mask.as_mut_ptr());
        libc::sigaddset(mask.as_mut_ptr(), libc::SIGCHLD);
        let mask = mask.assume_init();
        if libc::sigprocmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The signals that ask a process to end and that a fork server holds
/// blocked: `SIGTERM`, `SIGINT`, `SIGHUP`, `SIGQUIT`, as a kernel signal
/// set.
const ENDING_SIGNALS: u64 = (1 << (libc::SIGTERM - 1))
    | (1 << (libc::SIGINT - 1))
    | (1 << (libc::SIGHUP - 1))
    | (1 << (libc::SIGQUIT - 1));

/// Blocks the signals that ask a process to end ([`ENDING_SIGNALS`]): a
/// fork server ends when its parent does (its socket closes), killing what
/// it started then; `pkill` of the whole program, server included, would
/// otherwise end the server first and leave that to no one. `SIGKILL`
/// cannot be blocked.
pub(crate) fn block_ending_signals() {
    sigprocmask_raw(libc::SIG_BLOCK, ENDING_SIGNALS);
}

/// Unblocks what a fork server blocks (`SIGCHLD` for its signalfd, and
/// [`ENDING_SIGNALS`]): its child must not inherit that mask.
/// Async-signal-safe.
pub(crate) fn unblock_server_signals() {
    sigprocmask_raw(
        libc::SIG_UNBLOCK,
        (1 << (libc::SIGCHLD - 1)) | ENDING_SIGNALS,
    );
}

/// `rt_sigprocmask(how, mask)`: the system call itself, with the kernel's
/// 64-bit mask, through the same libc page as [`close_all_except`]'s, where
/// `sigemptyset` and `sigprocmask` are two more pages of libc's code, each
/// a page fault in a fork server's child (see `sys::text`).
fn sigprocmask_raw(how: libc::c_int, mask: u64) {
    // SAFETY: `rt_sigprocmask` reads `size_of::<u64>()` bytes of the mask
    // (the kernel's signal set) and writes no old set (null).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            how,
            &raw const mask,
            std::ptr::null_mut::<u64>(),
            size_of::<u64>(),
        )
    };
}

/// The resident memory of process `pid`, in bytes, from `/proc/<pid>/statm`.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// The children of process `pid` (all its threads'), from `/proc`.
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(bytes) = read_at_once(&path.to_string_lossy()) {
            out.extend(
                String::from_utf8_lossy(&bytes)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// Process `pid`'s name (`comm`, as `ps` shows it), from `/proc`; also of a
/// zombie not yet reaped.
pub(crate) fn name_of(pid: i32) -> Option<String> {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(name.trim_end().to_owned())
}

/// How much of a `/proc` file [`read_at_once`] tries first.
const PROC_READ: usize = 4 << 10;

/// A `/proc` file read in one `read`: what several reads return is not one
/// snapshot (a list of children read in pieces skips one when an earlier
/// one exits between two reads; an environment is cut by an `exec`). A
/// file that fills the buffer is opened and read again with one twice as
/// large. (Small first: the fork server reads these after each child's
/// exit, and each page of a buffer it zeroes is a copy-on-write fault
/// while a child shares its heap.)
fn read_at_once(path: &str) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut size = PROC_READ;
    loop {
        let mut bytes = vec![0; size];
        let n = std::fs::File::open(path)?.read(&mut bytes)?;
        if n < size || size >= 16 << 20 {
            bytes.truncate(n);
            return Ok(bytes);
        }
        size *= 2;
    }
}

/// The value of `key` in process `pid`'s environment (as it was at its
/// `exec`), from `/proc`: `Some(None)` if it has no such variable, `None`
/// if its environment cannot be read now (gone, or in the middle of an
/// `exec`: look again later). An environment emptied on purpose
/// (`env -i`) reads as the latter too.
pub(crate) fn env_of(pid: i32, key: &str) -> Option<Option<String>> {
    // The file reads the memory of the program the process ran when it was
    // opened, each `read` on its own, so a process that `exec`s between two
    // reads ends the file early, and the variables after the cut (a
    // worker's mark is the last one) were missing (`std::fs::read` starts
    // with a 32-byte read: 170 of 30,827 reads of a process that execs in
    // a loop came out cut).
    let environ = read_at_once(&format!("/proc/{pid}/environ")).ok()?;
    // Between `execve`'s switch to the new program's memory and its setting
    // up of the new stack, the file reads empty (about 5 % of the reads of
    // a process that execs in a loop).
    if environ.is_empty() {
        return None;
    }
    Some(environ.split(|&b| b == 0).find_map(|entry| {
        let rest = entry.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
        String::from_utf8(rest.to_vec()).ok()
    }))
}

/// Puts `key=value` in this process's environment.
///
/// Only for a process that has one thread (a pool worker before it runs any
/// user code).
pub(crate) fn set_env_single_threaded(key: &str, value: &str) {
    // SAFETY: the caller runs with a single thread, so nothing reads or
    // writes the environment concurrently.
    unsafe { std::env::set_var(key, value) };
}

/// SIGKILLs process `pid` and all its descendants (found through `/proc`,
/// parents stopped first so that none can fork a new child meanwhile).
pub(crate) fn kill_tree(pid: i32) {
    let mut seen = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if seen.contains(&p) || seen.len() > 100_000 {
            continue;
        }
        if let Some(p) = Pid::from_raw(p) {
            let _ = rustix::process::kill_process(p, Signal::STOP);
        }
        seen.push(p);
        todo.extend(children_of(p));
    }
    for p in seen.into_iter().filter_map(Pid::from_raw) {
        let _ = rustix::process::kill_process(p, Signal::KILL);
    }
}

/// Caps this process's address space (`RLIMIT_AS`) at `bytes`: allocations
/// beyond it fail (and Rust aborts on a failed allocation).
pub(crate) fn limit_address_space(bytes: u64) -> io::Result<()> {
    let limit = rustix::process::Rlimit {
        current: Some(bytes),
        maximum: Some(bytes),
    };
    rustix::process::setrlimit(rustix::process::Resource::As, limit)?;
    Ok(())
}

static ABORT_FLAG: std::sync::atomic::AtomicPtr<std::sync::atomic::AtomicU64> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_abort(_: libc::c_int) {
    // SAFETY: reading this thread's errno is async-signal-safe.
    let errno = unsafe { *libc::__errno_location() };
    let flag = ABORT_FLAG.load(std::sync::atomic::Ordering::Acquire);
    if errno == libc::ENOMEM && !flag.is_null() {
        // SAFETY: `flag` came from a `&'static AtomicU64`; an atomic store is
        // async-signal-safe.
        unsafe { (*flag).store(1, std::sync::atomic::Ordering::Release) };
    }
    // Returning lets `abort` go on to kill the process with SIGABRT.
}

/// Makes an abort caused by a failed allocation (errno `ENOMEM`, as Rust's
/// allocation-error handler leaves it) set `flag` to 1 before the process
/// dies, so that its parent can tell "out of memory" from other aborts.
///
/// The handler prints a backtrace first when `RUST_BACKTRACE` is set, which
/// overwrites errno; callers unset it (see the pool worker).
pub(crate) fn flag_out_of_memory_aborts(flag: &'static std::sync::atomic::AtomicU64) {
    ABORT_FLAG.store(
        flag as *const _ as *mut std::sync::atomic::AtomicU64,
        std::sync::atomic::Ordering::Release,
    );
    // SAFETY: a zeroed sigaction is valid; the handler only reads errno and
    // does one atomic store, both async-signal-safe; SA_RESETHAND restores the
    // default action so that `abort` still ends the process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_abort as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESETHAND;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut());
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: comparable across processes.
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The coarse monotonic clock (a few ms of resolution, a few ns a read).
pub(crate) fn monotonic_coarse_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A non-blocking eventfd, for waking a thread blocked in [`poll_readable`].
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?)
}

/// Makes an eventfd readable.
pub(crate) fn eventfd_notify(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Makes an eventfd unreadable again.
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(fd, &mut buf);
}

/// A descriptor that is always readable (a signalled eventfd): stands in for
/// the pidfd of a process that is already gone.
pub(crate) fn ready_fd() -> io::Result<OwnedFd> {
    let fd = eventfd()?;
    eventfd_notify(fd.as_fd());
    Ok(fd)
}

/// Sets `SIGCHLD` back to its default disposition (a fork server must reap
/// its own children, whatever its parent ignores).
pub(crate) fn default_sigchld() {
    // SAFETY: installing SIG_DFL involves no handler code and no memory.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
}

/// Reads every pending signal from a non-blocking signalfd.
pub(crate) fn signalfd_drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 128 * 8];
    while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// Waits until `fd` is readable or writable; returns (readable, writable).
pub(crate) fn poll_in_out(fd: BorrowedFd<'_>) -> io::Result<(bool, bool)> {
    let mut polls = [PollFd::new(&fd, PollFlags::IN | PollFlags::OUT)];
    loop {
        match rustix::event::poll(&mut polls, None) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let r = polls[0].revents();
    let failed = r.intersects(PollFlags::ERR | PollFlags::HUP);
    Ok((
        r.contains(PollFlags::IN) || failed,
        r.contains(PollFlags::OUT),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus_allowed() -> usize {
        rustix::thread::sched_getaffinity(None).map_or(0, |set| set.count() as usize)
    }

    #[test]
    fn a_pinned_thread_gets_its_mask_back_or_every_cpu() {
        std::thread::spawn(|| {
            let all = cpus_allowed();
            let pinned = pin_here().expect("pinned");
            assert_eq!(cpus_allowed(), 1);
            pinned.restore();
            assert_eq!(cpus_allowed(), all);
            // A mask the kernel refuses (no CPU at all): every CPU the
            // cpuset allows instead (more than `all` under `taskset`).
            pin_here().expect("pinned again");
            Affinity(rustix::thread::CpuSet::new()).restore();
            assert!(cpus_allowed() >= all);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_file_over_the_first_buffer_is_read_whole() {
        let dir = std::env::temp_dir().join(format!("corral-read-at-once-{}", std::process::id()));
        let bytes: Vec<u8> = (0..3 * PROC_READ + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&dir, &bytes).unwrap();
        let read = read_at_once(&dir.to_string_lossy());
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(read.unwrap(), bytes);
        let own = children_of(std::process::id() as i32);
        let child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let with = children_of(std::process::id() as i32);
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(with.contains(&(child.id() as i32)), "{with:?}");
        assert!(!own.contains(&(child.id() as i32)));
    }
}

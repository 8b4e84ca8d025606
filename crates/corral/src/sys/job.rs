//! An external program run as a supervised job: limits applied between its
//! `fork` and `exec`, signals to its process group, and reaping with the
//! resources it used.
//!
//! # Safety
//!
//! Two `unsafe` blocks: the `pre_exec` hook (which runs only async-signal-safe
//! system calls in the forked child) and `wait4` (given a pointer to a local
//! `rusage` it initialises).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use rustix::process::{Pid, Resource, Rlimit, Signal};

use super::Ended;

/// What the child sets up for itself between `fork` and `exec`.
#[derive(Debug, Default)]
pub(crate) struct ExecLimits {
    /// `RLIMIT_AS`, in bytes.
    pub(crate) address_space: Option<u64>,
    /// `RLIMIT_CPU`, in seconds (SIGXCPU at the soft limit, SIGKILL one
    /// second later at the hard one).
    pub(crate) cpu_seconds: Option<u64>,
    /// The niceness to add.
    pub(crate) nice: Option<i32>,
    /// A cgroup's `cgroup.procs`, open for writing: the child moves itself
    /// in, so that everything it starts is in the group from the beginning.
    pub(crate) cgroup_procs: Option<OwnedFd>,
}

impl ExecLimits {
    fn is_empty(&self) -> bool {
        self.address_space.is_none()
            && self.cpu_seconds.is_none()
            && self.nice.is_none()
            && self.cgroup_procs.is_none()
    }
}

/// Makes `cmd`'s child apply `limits` to itself before it executes the
/// program. Without limits, `cmd` keeps the standard library's fast
/// `posix_spawn` path.
pub(crate) fn limit_at_exec(cmd: &mut std::process::Command, limits: ExecLimits) {
    if limits.is_empty() {
        return;
    }
    let hook = move || -> io::Result<()> {
        if let Some(fd) = &limits.cgroup_procs {
            rustix::io::write(fd, b"0")?;
        }
        if let Some(bytes) = limits.address_space {
            set_limit(Resource::As, bytes, bytes)?;
        }
        if let Some(secs) = limits.cpu_seconds {
            set_limit(Resource::Cpu, secs, secs.saturating_add(1))?;
        }
        if let Some(nice) = limits.nice {
            let now = rustix::process::getpriority_process(None)?;
            rustix::process::setpriority_process(None, now.saturating_add(nice))?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before `exec`. It allocates
    // nothing and takes no lock: it only makes system calls (`write`,
    // `setrlimit`, `getpriority`, `setpriority`) on values moved into it.
    unsafe { cmd.pre_exec(hook) };
}

fn set_limit(resource: Resource, soft: u64, hard: u64) -> io::Result<()> {
    let limit = Rlimit {
        current: Some(soft),
        maximum: Some(hard),
    };
    Ok(rustix::process::setrlimit(resource, limit)?)
}

/// The resources a reaped child (with its waited-for descendants) used.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Usage {
    pub(crate) user: Duration,
    pub(crate) system: Duration,
    /// Peak resident memory, in bytes.
    pub(crate) max_rss: u64,
}

/// Waits for child `pid` to end and reaps it (`wait4`), with its resources.
pub(crate) fn reap_with_usage(pid: i32) -> io::Result<(Ended, Usage)> {
    let mut status = 0;
    let mut usage = MaybeUninit::<libc::rusage>::zeroed();
    loop {
        // SAFETY: `status` and `usage` are valid, writable locals; `wait4`
        // fills them and keeps no pointer.
        let got = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
        if got == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    // SAFETY: `wait4` returned the child, so it wrote the whole `rusage`
    // (and it started zeroed in any case).
    let usage = unsafe { usage.assume_init() };
    let ended = if libc::WIFSIGNALED(status) {
        Ended::Signal(libc::WTERMSIG(status))
    } else {
        Ended::Code(libc::WEXITSTATUS(status))
    };
    Ok((
        ended,
        Usage {
            user: timeval(usage.ru_utime),
            system: timeval(usage.ru_stime),
            max_rss: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
        },
    ))
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
}

/// Sends signal number `signo` to process group `pgid`. Returns whether the
/// group still had a member.
pub(crate) fn signal_group_number(pgid: i32, signo: i32) -> bool {
    let (Some(pgid), Some(sig)) = (Pid::from_raw(pgid), Signal::from_named_raw(signo)) else {
        return false;
    };
    !matches!(
        rustix::process::kill_process_group(pgid, sig),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Sends signal number `signo` to process `pid` (nothing if it is gone).
pub(crate) fn signal_number(pid: i32, signo: i32) {
    if let (Some(pid), Some(sig)) = (Pid::from_raw(pid), Signal::from_named_raw(signo)) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Whether process group `pgid` still has a member.
pub(crate) fn group_alive(pgid: i32) -> bool {
    Pid::from_raw(pgid).is_some_and(|p| {
        !matches!(
            rustix::process::test_kill_process_group(p),
            Err(rustix::io::Errno::SRCH)
        )
    })
}

/// The number of the signal called `name` (`TERM`, `SIGTERM`, `15`).
pub(crate) fn signal_by_name(name: &str) -> Option<i32> {
    let name = name.trim().to_ascii_uppercase();
    let bare = name.strip_prefix("SIG").unwrap_or(&name);
    let number = match bare {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "XCPU" => libc::SIGXCPU,
        other => other.parse().ok()?,
    };
    Signal::from_named_raw(number).map(|_| number)
}

/// The numbers of `SIGKILL` and `SIGXCPU`, for code that names them.
pub(crate) const SIGKILL: i32 = libc::SIGKILL;
pub(crate) const SIGXCPU: i32 = libc::SIGXCPU;

//! External programs run under supervision: `subprocess.run` with a timeout
//! that kills the whole process tree, a memory cap, a CPU-time cap and the
//! resources the program used.
//!
//! Python's `subprocess.run(timeout=…)` kills only the direct child: a
//! grandchild that holds the output pipe keeps `communicate()` waiting, and
//! survives. A [`Command`] runs its program as the leader of a new process
//! group; at the timeout it walks a [`KillSequence`] (GNU parallel's
//! `--term-seq`: `TERM`, a grace period, …, `KILL`) over the whole group,
//! then kills what is left of the tree. Called inside a pool task, the job
//! also inherits the pool's guarantees: it dies with its worker, and a
//! descendant that escaped the group dies once its worker is gone.
//!
//! `memory_limit` uses a memory cgroup when this process may create one (a
//! hard cap on the whole tree, an exact [`KillReason::Memory`] verdict, the
//! tree's peak memory), else `RLIMIT_AS` on each process of the job.
//!
//! The `corral run` command runs every job through this type.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use corral::command::{Command, KillReason, Stream};
//!
//! let mut out = Vec::new();
//! let done = Command::new("sh")
//!     .args(["-c", "echo hi; sleep 30 & sleep 30"])
//!     .timeout(Duration::from_millis(200))
//!     .run(|stream, bytes| if stream == Stream::Stdout { out.extend_from_slice(bytes) })
//!     .unwrap();
//! assert_eq!(out, b"hi\n");
//! assert_eq!(done.killed, Some(KillReason::Timeout)); // both sleeps are gone too
//! ```

mod cgroup;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::ExitStatus;
use crate::sys;
use cgroup::MemoryCgroup;

/// Which output stream a chunk of bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The program's standard output.
    Stdout,
    /// The program's standard error.
    Stderr,
}

/// Why corral killed a program.
///
/// # Examples
///
/// ```
/// use corral::command::KillReason;
/// assert_eq!(KillReason::Timeout.to_string(), "timeout");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KillReason {
    /// It ran past its timeout.
    Timeout,
    /// It went past its memory limit (known for sure with a memory cgroup).
    Memory,
    /// It used up its CPU time.
    CpuTime,
}

impl fmt::Display for KillReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KillReason::Timeout => "timeout",
            KillReason::Memory => "memory",
            KillReason::CpuTime => "cpu-time",
        })
    }
}

/// The signals sent to a program's process group at its timeout, each
/// followed by the time to wait for the group to end: GNU parallel's
/// `--term-seq` (`TERM,200,TERM,100,TERM,50,KILL,25`, the default). Whatever
/// survives the sequence is killed with `SIGKILL`.
///
/// # Examples
///
/// ```
/// use corral::command::KillSequence;
/// let seq = KillSequence::parse("TERM,1000,KILL,25").unwrap();
/// assert_eq!(seq.to_string(), "TERM,1000,KILL,25");
/// assert!(KillSequence::parse("TERM,soon").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillSequence {
    steps: Vec<(i32, String, Duration)>,
}

impl Default for KillSequence {
    fn default() -> KillSequence {
        KillSequence::parse("TERM,200,TERM,100,TERM,50,KILL,25").expect("valid")
    }
}

impl KillSequence {
    /// Parses `SIGNAL,MILLISECONDS,…` (signal names with or without `SIG`,
    /// or numbers).
    pub fn parse(text: &str) -> Result<KillSequence, String> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        if !parts.len().is_multiple_of(2) || parts.is_empty() {
            return Err(format!(
                "`{text}`: expected SIGNAL,MILLISECONDS pairs, e.g. TERM,200,KILL,25"
            ));
        }
        let mut steps = Vec::new();
        for pair in parts.chunks(2) {
            let signo = sys::signal_by_name(pair[0]).ok_or_else(|| {
                format!("`{}` is not a signal name (TERM, INT, KILL, …)", pair[0])
            })?;
            let ms: u64 = pair[1]
                .parse()
                .map_err(|_| format!("`{}` is not a number of milliseconds", pair[1]))?;
            let name = pair[0].to_ascii_uppercase();
            let name = name.strip_prefix("SIG").unwrap_or(&name).to_owned();
            steps.push((signo, name, Duration::from_millis(ms)));
        }
        Ok(KillSequence { steps })
    }

    /// The longest the sequence can take.
    pub fn total(&self) -> Duration {
        self.steps.iter().map(|s| s.2).sum()
    }
}

impl fmt::Display for KillSequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .steps
            .iter()
            .map(|(_, name, wait)| format!("{name},{}", wait.as_millis()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// How a supervised program ended and what it used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// Its exit code or the signal that ended it.
    pub status: ExitStatus,
    /// Why corral killed it, if it did.
    pub killed: Option<KillReason>,
    /// When it started (wall clock).
    pub started: SystemTime,
    /// How long it ran, until its output closed.
    pub runtime: Duration,
    /// CPU time in user mode, its waited-for descendants included.
    pub user_cpu: Duration,
    /// CPU time in the kernel, its waited-for descendants included.
    pub system_cpu: Duration,
    /// Peak resident memory in bytes: of the whole tree with a memory
    /// cgroup, else of its largest process.
    pub max_rss: u64,
}

impl Finished {
    /// Whether it exited with code 0 and was not killed.
    pub fn success(&self) -> bool {
        self.status == ExitStatus::Code(0) && self.killed.is_none()
    }
}

/// An external program to run under supervision.
///
/// Its standard input is `/dev/null`; its output is handed to
/// [`run`](Command::run)'s callback (or inherited, see
/// [`inherit_output`](Command::inherit_output)).
///
/// # Examples
///
/// ```
/// use corral::command::Command;
/// let done = Command::new("sh").args(["-c", "exit 3"]).run(|_, _| {}).unwrap();
/// assert_eq!(done.status, corral::ExitStatus::Code(3));
/// ```
#[derive(Clone, Debug)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
    inherit_output: bool,
    timeout: Option<Duration>,
    kill_sequence: KillSequence,
    memory_limit: Option<u64>,
    cpu_time: Option<Duration>,
    nice: Option<i32>,
}

impl Command {
    /// A command that runs `program` (looked up in `PATH`), with no arguments.
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            inherit_output: false,
            timeout: None,
            kill_sequence: KillSequence::default(),
            memory_limit: None,
            cpu_time: None,
            nice: None,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Command {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Command {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the program.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Command {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the program in `dir`.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Command {
        self.dir = Some(dir.into());
        self
    }

    /// Lets the program write to this process's standard output and error
    /// directly (the callback then sees nothing).
    pub fn inherit_output(mut self, inherit: bool) -> Command {
        self.inherit_output = inherit;
        self
    }

    /// Kills the program's whole tree once it has run this long.
    pub fn timeout(mut self, timeout: Duration) -> Command {
        self.timeout = Some(timeout);
        self
    }

    /// The signals sent at the timeout (default: GNU parallel's).
    pub fn kill_sequence(mut self, sequence: KillSequence) -> Command {
        self.kill_sequence = sequence;
        self
    }

    /// Caps the program's memory (see the [module docs](self)).
    pub fn memory_limit(mut self, bytes: u64) -> Command {
        self.memory_limit = Some(bytes);
        self
    }

    /// Caps each of its processes' CPU time (`RLIMIT_CPU`, whole seconds,
    /// rounded up).
    pub fn cpu_time(mut self, limit: Duration) -> Command {
        self.cpu_time = Some(limit);
        self
    }

    /// Runs it this much nicer (`nice(1)`'s increment).
    pub fn nice(mut self, increment: i32) -> Command {
        self.nice = Some(increment);
        self
    }

    /// The longest [`run`](Command::run) can take: the timeout plus the
    /// kill sequence (`None` without a timeout).
    pub fn longest(&self) -> Option<Duration> {
        self.timeout.map(|t| t + self.kill_sequence.total())
    }

    /// Runs the program to its end, handing each chunk of its output to
    /// `on_output` as it arrives.
    ///
    /// Returns once the program has ended and its output pipes are closed
    /// (a background process that keeps them open is waited for, up to the
    /// timeout). Fails only if the program could not be started.
    pub fn run(&self, mut on_output: impl FnMut(Stream, &[u8])) -> io::Result<Finished> {
        let (mut cmd, cgroup) = self.prepare();
        let started = SystemTime::now();
        let clock = Instant::now();
        let mut child = cmd.spawn()?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let mut job = Job {
            pid,
            pidfd: sys::pidfd_open(pid)?,
            pipes: [
                child.stdout.take().map(OwnedFd::from),
                child.stderr.take().map(OwnedFd::from),
            ],
            ended: None,
            killed: None,
            cgroup,
        };
        let deadline = self.timeout.map(|t| clock + t);
        job.supervise(deadline, &self.kill_sequence, &mut on_output)?;
        let runtime = clock.elapsed();
        Ok(job.finish(started, runtime, self.cpu_time))
    }

    fn prepare(&self) -> (std::process::Command, Option<MemoryCgroup>) {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .process_group(0);
        if !self.inherit_output {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        let cgroup = self.memory_limit.and_then(|b| MemoryCgroup::create(b).ok());
        let (cgroup, procs) = match cgroup {
            Some((group, procs)) => (Some(group), Some(procs)),
            None => (None, None),
        };
        let limits = sys::ExecLimits {
            address_space: self.memory_limit.filter(|_| cgroup.is_none()),
            cpu_seconds: self
                .cpu_time
                .map(|t| t.as_secs() + u64::from(t.subsec_nanos() > 0)),
            nice: self.nice,
            cgroup_procs: procs,
        };
        sys::limit_at_exec(&mut cmd, limits);
        (cmd, cgroup)
    }
}

/// A running program and what is known of it.
struct Job {
    pid: i32,
    pidfd: OwnedFd,
    /// Its stdout and stderr pipes, `None` once at their end.
    pipes: [Option<OwnedFd>; 2],
    ended: Option<(sys::Ended, sys::Usage)>,
    killed: Option<KillReason>,
    cgroup: Option<MemoryCgroup>,
}

impl Job {
    /// Reads output and waits for the end, killing the tree at `deadline`.
    fn supervise(
        &mut self,
        deadline: Option<Instant>,
        sequence: &KillSequence,
        on_output: &mut dyn FnMut(Stream, &[u8]),
    ) -> io::Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        while self.ended.is_none() || self.pipes.iter().any(Option::is_some) {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                self.stop_tree(sequence);
                self.drain(&mut buf, on_output);
                self.pipes = [None, None];
                break;
            }
            let ready = self.wait_ready(left)?;
            for (i, is_ready) in ready.into_iter().enumerate() {
                if is_ready {
                    self.read_pipe(i, &mut buf, on_output);
                }
            }
            self.try_reap()?;
        }
        if self.ended.is_none() {
            self.ended = Some(sys::reap_with_usage(self.pid)?);
        }
        Ok(())
    }

    /// Polls the open pipes and, until it is reaped, the process.
    fn wait_ready(&self, timeout: Option<Duration>) -> io::Result<[bool; 2]> {
        let mut fds = Vec::with_capacity(3);
        let mut which = Vec::with_capacity(3);
        for (i, pipe) in self.pipes.iter().enumerate() {
            if let Some(fd) = pipe {
                fds.push(fd.as_fd());
                which.push(i);
            }
        }
        if self.ended.is_none() {
            fds.push(self.pidfd.as_fd());
            which.push(2);
        }
        let ready = sys::poll_readable(&fds, timeout)?;
        let mut out = [false; 2];
        for (slot, r) in which.into_iter().zip(ready) {
            if slot < 2 {
                out[slot] = r;
            }
        }
        Ok(out)
    }

    fn read_pipe(&mut self, i: usize, buf: &mut [u8], on_output: &mut dyn FnMut(Stream, &[u8])) {
        let Some(fd) = &self.pipes[i] else { return };
        match sys::read(fd.as_fd(), buf) {
            Ok(0) | Err(_) => self.pipes[i] = None,
            Ok(n) => on_output(STREAMS[i], &buf[..n]),
        }
    }

    /// Reads what is already in the pipes, without waiting.
    fn drain(&mut self, buf: &mut [u8], on_output: &mut dyn FnMut(Stream, &[u8])) {
        for _ in 0..64 {
            let Ok(ready) = self.wait_ready(Some(Duration::ZERO)) else {
                return;
            };
            if !ready.contains(&true) {
                return;
            }
            for (i, is_ready) in ready.into_iter().enumerate() {
                if is_ready {
                    self.read_pipe(i, buf, on_output);
                }
            }
        }
    }

    /// Reaps the process if it has ended.
    fn try_reap(&mut self) -> io::Result<()> {
        if self.ended.is_none()
            && sys::poll_readable(&[self.pidfd.as_fd()], Some(Duration::ZERO))?[0]
        {
            self.ended = Some(sys::reap_with_usage(self.pid)?);
        }
        Ok(())
    }

    /// Whether anything of the job is still running.
    fn alive(&mut self) -> bool {
        let _ = self.try_reap();
        sys::group_alive(self.pid) || self.cgroup.as_ref().is_some_and(|c| !c.pids().is_empty())
    }

    /// The timeout: walks the kill sequence over the group, then kills
    /// whatever is left of the tree.
    fn stop_tree(&mut self, sequence: &KillSequence) {
        self.killed = Some(KillReason::Timeout);
        for (signo, _, wait) in &sequence.steps {
            if !self.alive() {
                return;
            }
            self.signal_all(*signo);
            let until = Instant::now() + *wait;
            while Instant::now() < until && self.alive() {
                let _ = sys::poll_readable(&[self.pidfd.as_fd()], Some(Duration::from_millis(2)));
            }
        }
        if self.ended.is_none() {
            sys::kill_tree(self.pid);
        }
        self.signal_all(sys::SIGKILL);
    }

    fn signal_all(&self, signo: i32) {
        sys::signal_group_number(self.pid, signo);
        for pid in self.cgroup.iter().flat_map(MemoryCgroup::pids) {
            sys::signal_number(pid, signo);
        }
    }

    fn finish(
        self,
        started: SystemTime,
        runtime: Duration,
        cpu_limit: Option<Duration>,
    ) -> Finished {
        let (ended, usage) = self
            .ended
            .unwrap_or((sys::Ended::Code(-1), sys::Usage::default()));
        let status = ExitStatus::from(ended);
        let cpu = usage.user + usage.system;
        let killed = self.killed.or_else(|| {
            if self.cgroup.as_ref().is_some_and(MemoryCgroup::oom_killed) {
                Some(KillReason::Memory)
            } else if status == ExitStatus::Signal(sys::SIGXCPU)
                || (status == ExitStatus::Signal(sys::SIGKILL)
                    && cpu_limit.is_some_and(|l| cpu >= l))
            {
                Some(KillReason::CpuTime)
            } else {
                None
            }
        });
        let max_rss = self
            .cgroup
            .as_ref()
            .and_then(MemoryCgroup::peak)
            .unwrap_or(usage.max_rss);
        Finished {
            status,
            killed,
            started,
            runtime,
            user_cpu: usage.user,
            system_cpu: usage.system,
            max_rss,
        }
    }
}

const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

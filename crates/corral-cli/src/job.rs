//! One job as a pool task: what the runner sends to a worker (a local one
//! or a cluster node's) and what comes back.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use corral::command::{Command, Finished, KillSequence, Stream};
use serde::{Deserialize, Serialize};

use crate::captured::{Captured, Collector};
use crate::template::SLOT_MARK;

/// How a job's output travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Output {
    /// Collected and returned with the report (grouped output, `-k`,
    /// `--results`, the cluster).
    Collect,
    /// Written by the worker as whole lines, each prefixed with the tag.
    Lines { tag: Option<String> },
    /// The job writes to the terminal itself (`-u`).
    Inherit,
}

/// A job, as a worker receives it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Spec {
    /// The job's number.
    pub(crate) seq: u64,
    /// The command; `{%}` may still be [`SLOT_MARK`].
    pub(crate) argv: Vec<String>,
    /// The command line as the joblog shows it (same mark).
    pub(crate) line: String,
    /// The job slot, when the runner assigns it (a cluster's jobs); `None`:
    /// this worker's own.
    pub(crate) slot: Option<u32>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) kill_sequence: KillSequence,
    pub(crate) memory: Option<u64>,
    pub(crate) cpu_time: Option<Duration>,
    pub(crate) nice: Option<i32>,
    pub(crate) output: Output,
    /// Where collected output beyond a few MiB goes (local runs).
    pub(crate) spill_dir: Option<PathBuf>,
}

/// What a worker reports of a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Report {
    /// The job's number.
    pub(crate) seq: u64,
    /// `Err`: the program could not be started (with the exit code a shell
    /// would give: 127 not found, 126 not executable).
    pub(crate) finished: Result<Finished, (i32, String)>,
    pub(crate) stdout: Captured,
    pub(crate) stderr: Captured,
    /// The machine it ran on.
    pub(crate) host: String,
    /// The command line with its slot.
    pub(crate) line: String,
    /// No job was waiting for this task (see [`run_next`]).
    pub(crate) skipped: bool,
}

impl Spec {
    /// The longest the job can take on its worker, kill sequence included.
    pub(crate) fn longest(&self) -> Option<Duration> {
        self.timeout.map(|t| t + self.kill_sequence.total())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .kill_sequence(self.kill_sequence.clone())
            .inherit_output(self.output == Output::Inherit);
        for (k, v) in &self.env {
            cmd = cmd.env(k, v);
        }
        if let Some(t) = self.timeout {
            cmd = cmd.timeout(t);
        }
        if let Some(m) = self.memory {
            cmd = cmd.memory_limit(m);
        }
        if let Some(c) = self.cpu_time {
            cmd = cmd.cpu_time(c);
        }
        if let Some(n) = self.nice {
            cmd = cmd.nice(n);
        }
        cmd
    }
}

/// What every local worker shares with the runner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Shared {
    /// One entry per slot: the pid of the worker holding it (0: free).
    pub(crate) slots: corral::Array<i32>,
    /// Which job each [`run_next`] task took: at `token % len`, the token
    /// then the job's number (read by the runner if the worker died).
    pub(crate) taken: corral::RawArray<u64>,
    /// Jobs waiting for a worker ([`run_next`]).
    pub(crate) queue: corral::Queue<Spec>,
}

/// This worker's slot and what it shares with the runner.
static WORKER: OnceLock<(u32, Shared)> = OnceLock::new();

/// The pool's initializer: this worker takes the lowest free slot (one
/// whose worker is gone, after a crash), for life. A worker runs one job at
/// a time, so slots are unique among running jobs, as GNU parallel's are.
pub(crate) fn join_pool(shared: Shared) {
    let me = std::process::id() as i32;
    let slot = {
        let mut slots = shared.slots.lock();
        let free = slots.iter().position(|&p| p == 0 || !alive(p));
        let i = free.unwrap_or(slots.len() - 1);
        slots[i] = me;
        i as u32 + 1
    };
    let _ = WORKER.set((slot, shared));
}

impl Shared {
    /// The length of `taken` for this many tasks in flight (a pair each,
    /// and room to spare so that no live entry is overwritten).
    pub(crate) fn taken_len(in_flight: usize) -> usize {
        4 * (in_flight + 1)
    }

    /// The job that task `token` took, if it took one.
    pub(crate) fn job_of(&self, token: u64) -> Option<u64> {
        let at = (token as usize % (self.taken.len() / 2)) * 2;
        (self.taken.get(at) == Some(token))
            .then(|| self.taken.get(at + 1))
            .flatten()
    }

    fn took(&self, token: u64, seq: u64) {
        let at = (token as usize % (self.taken.len() / 2)) * 2;
        self.taken.set(at + 1, seq);
        self.taken.set(at, token);
    }
}

/// The pool task when workers take jobs from the shared queue: runs the
/// next waiting job, if there is one. The runner keeps two such tasks per
/// worker in the pool, so a worker that finishes a job takes the next from
/// the queue at once; a task stuck behind a long job holds no job, so no
/// job waits for a busy worker while another is free.
pub(crate) fn run_next(token: u64) -> Report {
    let Some((_, shared)) = WORKER.get() else {
        return Report::skipped(0);
    };
    let Ok(spec) = shared.queue.try_get() else {
        return Report::skipped(0);
    };
    shared.took(token, spec.seq);
    run(spec)
}

impl Report {
    fn skipped(seq: u64) -> Report {
        Report {
            seq,
            finished: Err((-1, String::new())),
            stdout: Captured::default(),
            stderr: Captured::default(),
            host: String::new(),
            line: String::new(),
            skipped: true,
        }
    }
}

/// Whether process `pid` runs (a zombie does not, nor one being reaped:
/// state `X`, seen for an instant).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X', 'x']))
    })
}

impl Spec {
    /// Puts the slot where the runner left the mark.
    fn with_slot(mut self, slot: u32) -> Spec {
        let n = slot.to_string();
        for word in self
            .argv
            .iter_mut()
            .chain(self.env.iter_mut().map(|(_, v)| v))
        {
            if word.contains(SLOT_MARK) {
                *word = word.replace(SLOT_MARK, &n);
            }
        }
        self.line = self.line.replace(SLOT_MARK, &n);
        self
    }
}

/// The pool task: runs one job on this worker.
pub(crate) fn run(spec: Spec) -> Report {
    let slot = spec.slot.or(WORKER.get().map(|w| w.0)).unwrap_or(1);
    let seq = spec.seq;
    let spec = spec.with_slot(slot);
    let spill = |stream: &str| {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("{seq}-{}-{n}.{stream}", std::process::id());
        spec.spill_dir.as_ref().map(|d| d.join(name))
    };
    let mut out = Collector::new(spill("out"));
    let mut err = Collector::new(spill("err"));
    let mut lines = match &spec.output {
        Output::Lines { tag } => Some(LineWriter::new(tag.clone())),
        _ => None,
    };
    let finished = spec
        .command()
        .run(|stream, bytes| match (&mut lines, stream) {
            (Some(w), s) => w.push(s, bytes),
            (None, Stream::Stdout) => out.push(bytes),
            (None, Stream::Stderr) => err.push(bytes),
        });
    if let Some(w) = &mut lines {
        w.flush_partial();
    }
    let finished = finished.map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => 127,
            _ => 126,
        };
        (code, format!("corral: {}: {e}", spec.argv[0]))
    });
    Report {
        seq,
        finished,
        stdout: out.finish(),
        stderr: err.finish(),
        host: host(),
        line: spec.line,
        skipped: false,
    }
}

fn host() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Writes whole lines to this process's stdout or stderr, each batch in one
/// `write`, so jobs running side by side never cut each other's lines.
struct LineWriter {
    tag: Option<String>,
    partial: [Vec<u8>; 2],
}

impl LineWriter {
    fn new(tag: Option<String>) -> LineWriter {
        LineWriter {
            tag,
            partial: [Vec::new(), Vec::new()],
        }
    }

    fn push(&mut self, stream: Stream, bytes: &[u8]) {
        let i = usize::from(stream == Stream::Stderr);
        self.partial[i].extend_from_slice(bytes);
        if let Some(end) = self.partial[i].iter().rposition(|&b| b == b'\n') {
            let rest = self.partial[i].split_off(end + 1);
            let whole = std::mem::replace(&mut self.partial[i], rest);
            write_lines(stream, &whole, self.tag.as_deref());
        }
    }

    fn flush_partial(&mut self) {
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let rest = std::mem::take(&mut self.partial[i]);
            if !rest.is_empty() {
                write_lines(stream, &rest, self.tag.as_deref());
            }
        }
    }
}

/// Writes `bytes` (whole lines) to the stream, tagged, in one `write` call.
pub(crate) fn write_lines(stream: Stream, bytes: &[u8], tag: Option<&str>) {
    let tagged = tag.map(|t| tag_lines(bytes, t));
    let bytes = tagged.as_deref().unwrap_or(bytes);
    match stream {
        Stream::Stdout => write_all(std::io::stdout().as_fd(), bytes),
        Stream::Stderr => write_all(std::io::stderr().as_fd(), bytes),
    }
}

fn write_all(fd: std::os::fd::BorrowedFd<'_>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
    }
}

/// Prefixes every line of `bytes` with `tag` and a tab.
pub(crate) fn tag_lines(bytes: &[u8], tag: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 16);
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(tag.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(line);
    }
    out
}

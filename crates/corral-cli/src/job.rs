//! One job as a pool task: what the runner sends to a worker (a local one
//! or a cluster node's) and what comes back.

use std::os::fd::AsFd;
use std::time::Duration;

use corral::command::{Command, Finished, KillSequence, Stream};
use serde::{Deserialize, Serialize};

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
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) kill_sequence: KillSequence,
    pub(crate) memory: Option<u64>,
    pub(crate) cpu_time: Option<Duration>,
    pub(crate) nice: Option<i32>,
    pub(crate) output: Output,
}

/// What a worker reports of a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Report {
    /// `Err`: the program could not be started (with the exit code a shell
    /// would give: 127 not found, 126 not executable).
    pub(crate) finished: Result<Finished, (i32, String)>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    /// The machine it ran on.
    pub(crate) host: String,
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

/// The pool task: runs one job on this worker.
pub(crate) fn run(spec: Spec) -> Report {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut lines = match &spec.output {
        Output::Lines { tag } => Some(LineWriter::new(tag.clone())),
        _ => None,
    };
    let finished = spec
        .command()
        .run(|stream, bytes| match (&mut lines, stream) {
            (Some(w), s) => w.push(s, bytes),
            (None, Stream::Stdout) => out.extend_from_slice(bytes),
            (None, Stream::Stderr) => err.extend_from_slice(bytes),
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
        finished,
        stdout: out,
        stderr: err,
        host: host(),
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

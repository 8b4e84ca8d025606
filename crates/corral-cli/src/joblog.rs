//! The joblog: GNU parallel's 9 tab-separated columns (so tools that read
//! them keep working) plus `MaxRSS`, `UserCPU`, `SysCPU` and `KillReason`;
//! and `--resume`, keyed on the command line rather than the job number.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

pub(crate) const HEADER: &str = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\tMaxRSS\tUserCPU\tSysCPU\tKillReason";

/// One finished job, as the joblog records it.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    pub(crate) seq: u64,
    pub(crate) host: &'a str,
    pub(crate) start: SystemTime,
    pub(crate) runtime: Duration,
    pub(crate) received: u64,
    pub(crate) exitval: i32,
    pub(crate) signal: i32,
    pub(crate) command: &'a str,
    pub(crate) max_rss: u64,
    pub(crate) user: Duration,
    pub(crate) system: Duration,
    pub(crate) kill_reason: Option<String>,
}

/// An open joblog.
#[derive(Debug)]
pub(crate) struct Joblog {
    out: BufWriter<File>,
}

impl Joblog {
    /// Opens `path`: appended to when resuming (with a header if it is new),
    /// else truncated.
    pub(crate) fn open(path: &Path, append: bool) -> io::Result<Joblog> {
        let fresh = !append
            || std::fs::metadata(path)
                .map(|m| m.len() == 0)
                .unwrap_or(true);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)?;
        let mut log = Joblog {
            out: BufWriter::new(file),
        };
        if fresh {
            writeln!(log.out, "{HEADER}")?;
            log.out.flush()?;
        }
        Ok(log)
    }

    /// Appends one job (flushed at once, so a killed run keeps its record).
    pub(crate) fn record(&mut self, e: &Entry<'_>) -> io::Result<()> {
        let start = e
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        writeln!(
            self.out,
            "{}\t{}\t{:.3}\t{:.3}\t0\t{}\t{}\t{}\t{}\t{}\t{:.3}\t{:.3}\t{}",
            e.seq,
            e.host,
            start.as_secs_f64(),
            e.runtime.as_secs_f64(),
            e.received,
            e.exitval,
            e.signal,
            e.command.replace(['\t', '\n'], " "),
            e.max_rss,
            e.user.as_secs_f64(),
            e.system.as_secs_f64(),
            e.kill_reason.as_deref().unwrap_or("-"),
        )?;
        self.out.flush()
    }
}

/// The command lines a previous run recorded: all of them, or those that
/// succeeded only.
pub(crate) fn done_commands(path: &Path, succeeded_only: bool) -> io::Result<HashSet<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    let mut done = HashSet::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 9 {
            continue;
        }
        let ok = cols[6] == "0" && cols[7] == "0";
        if ok || !succeeded_only {
            done.insert(cols[8].to_owned());
        }
    }
    Ok(done)
}

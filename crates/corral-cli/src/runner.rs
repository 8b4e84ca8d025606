//! The scheduler: feeds jobs to the pool (at most `-j` at a time), retries,
//! halts, orders and records what comes back. One thread; a job's
//! supervision (timeout, tree kill, limits) happens on its worker.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use corral::command::{KillReason, KillSequence};
use corral::{ExitStatus, Pool, TaskError};

use crate::captured::{Captured, SpillDir};
use crate::input::Jobs;
use crate::job::{self, Output, Report, Spec};
use crate::joblog::{Entry, Joblog};
use crate::opts::{Count, Halt, Threshold, Timeout, When};
use crate::progress::Progress;
use crate::template::{SLOT_MARK, Template};
use crate::wake::Tasks;

/// How output reaches the terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Group,
    Line,
    Ungroup,
}

/// Everything the options decided.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) template: Template,
    pub(crate) jobs: usize,
    pub(crate) timeout: Option<Timeout>,
    pub(crate) kill_sequence: KillSequence,
    pub(crate) memory: Option<u64>,
    pub(crate) cpu_time: Option<Duration>,
    pub(crate) nice: Option<i32>,
    pub(crate) tries: u32,
    pub(crate) delay: Option<Duration>,
    pub(crate) halt: Option<Halt>,
    pub(crate) keep_order: bool,
    pub(crate) tag: bool,
    pub(crate) mode: Mode,
    pub(crate) results: Option<PathBuf>,
    pub(crate) joblog: Option<Joblog>,
    pub(crate) skip: HashSet<String>,
    pub(crate) progress: Progress,
    pub(crate) quiet: bool,
    /// The jobs run on cluster nodes (the joblog's Host is the node's).
    pub(crate) cluster: bool,
    /// What the local workers share with the runner (their slots, the job
    /// queue); `None` on a cluster.
    pub(crate) shared: Option<job::Shared>,
    /// Where jobs put collected output beyond a few MiB (local runs).
    pub(crate) spill: Option<SpillDir>,
}

/// A job waiting to start (a new one, or a retry after its backoff).
struct Waiting {
    seq: u64,
    args: Vec<String>,
    attempt: u32,
    not_before: Instant,
}

/// A job on a worker.
struct Running {
    args: Vec<String>,
    attempt: u32,
    /// The slot the runner gave it (a cluster's job); local workers use their own.
    slot: Option<u32>,
    line: String,
}

/// A finished job's output, waiting for its turn (`-k`).
struct Printed {
    stdout: Captured,
    stderr: Captured,
    tag: Option<String>,
}

/// Why the run stopped starting jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Feeding,
    /// `--halt soon`: finishing the running jobs, starting none.
    Draining,
    /// `--halt now` or a signal: the running jobs were killed.
    Stopped,
}

#[derive(Debug, Default)]
struct Tally {
    done: u64,
    ok: u64,
    failed: u64,
    timed_out: u64,
    memory: u64,
    retries: u64,
    skipped: u64,
    /// The exit status `--halt …,fail` ends with.
    halt_status: Option<i32>,
}

/// The run's state machine.
pub(crate) struct Runner {
    cfg: Config,
    pool: Pool,
    inputs: Jobs,
    next_seq: u64,
    inputs_exhausted: bool,
    retry: VecDeque<Waiting>,
    running: BTreeMap<u64, Running>,
    free_slots: BTreeSet<u32>,
    /// Local jobs go through the workers' shared queue (not with `--halt`,
    /// `--delay` or `--timeout N%`, which decide at each start from what
    /// has ended: then each job is handed out here as a slot frees).
    queued: bool,
    /// Tasks handed to the pool at most.
    in_flight: usize,
    next_token: u64,
    /// `run_next` tasks not yet ended.
    tokens: usize,
    /// Running jobs no live task has claimed, since when (see `reconcile`).
    suspects: HashMap<u64, Instant>,
    order: VecDeque<u64>,
    finished_output: BTreeMap<u64, Printed>,
    successes: Vec<Duration>,
    last_start: Option<Instant>,
    tally: Tally,
    phase: Phase,
    tasks: Tasks<Report>,
    signal: Arc<AtomicUsize>,
    input_error: Option<String>,
    started: Instant,
}

impl Runner {
    pub(crate) fn new(cfg: Config, pool: Pool, inputs: Jobs, signal: Arc<AtomicUsize>) -> Runner {
        let free_slots = (1..=cfg.jobs as u32).collect();
        let per_job_timeout = matches!(cfg.timeout, Some(Timeout::Percent(_)));
        let queued =
            cfg.shared.is_some() && cfg.halt.is_none() && cfg.delay.is_none() && !per_job_timeout;
        // Queued, each worker has its next job at hand the moment one ends.
        let in_flight = if queued { 2 * cfg.jobs } else { cfg.jobs };
        Runner {
            cfg,
            pool,
            inputs,
            next_seq: 0,
            inputs_exhausted: false,
            retry: VecDeque::new(),
            running: BTreeMap::new(),
            free_slots,
            queued,
            in_flight,
            next_token: 0,
            tokens: 0,
            suspects: HashMap::new(),
            order: VecDeque::new(),
            finished_output: BTreeMap::new(),
            successes: Vec::new(),
            last_start: None,
            tally: Tally::default(),
            phase: Phase::Feeding,
            tasks: Tasks::new(),
            signal,
            input_error: None,
            started: Instant::now(),
        }
    }

    /// Runs every job; returns the exit status.
    pub(crate) fn run(mut self) -> i32 {
        loop {
            if let Some(code) = self.check_signal() {
                return code;
            }
            let wake = self.start_jobs();
            self.reconcile();
            if self.running.is_empty() && self.nothing_left() {
                break;
            }
            let wait = wake
                .map(|w| w.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100));
            if let Some((key, result)) = self.tasks.next(wait) {
                self.finished(key, result);
            }
        }
        self.flush_ordered(true);
        self.pool.close();
        self.pool.join();
        self.exit_status()
    }

    fn nothing_left(&self) -> bool {
        self.phase != Phase::Feeding || self.inputs_exhausted && self.retry.is_empty()
    }

    /// Starts jobs while there is a free slot; returns when to look again
    /// if something waits for its time (`--delay`, a retry's backoff).
    fn start_jobs(&mut self) -> Option<Instant> {
        while self.phase == Phase::Feeding && self.running.len() < self.in_flight {
            let now = Instant::now();
            if let (Some(delay), Some(last)) = (self.cfg.delay, self.last_start)
                && now < last + delay
            {
                return Some(last + delay);
            }
            let next = match self.retry.front() {
                Some(w) if w.not_before <= now => self.retry.pop_front(),
                _ => self.next_input(),
            };
            match next {
                Some(w) => self.start(w),
                None if !self.retry.is_empty() => {
                    return self.retry.iter().map(|w| w.not_before).min();
                }
                None => return None,
            }
        }
        None
    }

    /// The next input not skipped by `--resume`; `None` at the end.
    fn next_input(&mut self) -> Option<Waiting> {
        loop {
            if self.inputs_exhausted {
                return None;
            }
            let Some(next) = self.inputs.next() else {
                self.inputs_exhausted = true;
                return None;
            };
            let args = match next {
                Ok(args) => args,
                Err(e) => {
                    self.input_error = Some(e);
                    self.inputs_exhausted = true;
                    return None;
                }
            };
            self.next_seq += 1;
            let seq = self.next_seq;
            if self.already_done(&args, seq) {
                self.tally.skipped += 1;
                continue;
            }
            return Some(Waiting {
                seq,
                args,
                attempt: 1,
                not_before: Instant::now(),
            });
        }
    }

    /// `--resume`: whether the joblog has this job's command line (whatever
    /// slot it ran in).
    fn already_done(&self, args: &[String], seq: u64) -> bool {
        if self.cfg.skip.is_empty() {
            return false;
        }
        let line = self.cfg.template.expand(args, seq, None).line;
        if !line.contains(SLOT_MARK) {
            return self.cfg.skip.contains(&line);
        }
        (1..=2 * self.cfg.jobs).any(|s| {
            let with_slot = line.replace(SLOT_MARK, &s.to_string());
            self.cfg.skip.contains(&with_slot)
        })
    }

    fn start(&mut self, w: Waiting) {
        let slot = match self.cfg.shared {
            Some(_) => None,
            None => self.free_slots.pop_first(),
        };
        let expanded = self.cfg.template.expand(&w.args, w.seq, slot);
        let line = expanded.line.clone();
        let spec = self.spec(expanded.argv, line, w.seq, slot, &w.args);
        let seq = w.seq;
        self.hand_out(spec);
        if w.attempt == 1 {
            self.order.push_back(seq);
        }
        self.running.insert(
            seq,
            Running {
                args: w.args,
                attempt: w.attempt,
                slot,
                line: expanded.line,
            },
        );
        self.last_start = Some(Instant::now());
    }

    /// Gives a job to the pool: as its own task, or (queued) into the
    /// workers' queue with a task that takes the next job from it.
    fn hand_out(&mut self, spec: Spec) {
        match self.cfg.shared.as_ref().filter(|_| self.queued) {
            // Taken by a `run_next` task (see `reconcile`).
            Some(shared) => {
                if let Err(e) = shared.queue.put(spec) {
                    eprintln!("corral: cannot queue a job: {e}");
                }
            }
            None => {
                let seq = spec.seq;
                // The worker enforces the timeout; the pool's is a backstop.
                let backstop = self.backstop(&spec);
                let task = self.submit(job::run, spec, backstop);
                self.tasks.add(seq, task);
            }
        }
    }

    fn submit<A: corral::Data>(
        &self,
        f: fn(A) -> Report,
        arg: A,
        limit: Option<Duration>,
    ) -> corral::Task<Report> {
        match limit {
            Some(limit) => self.pool.submit_with_timeout(f, arg, limit),
            None => self.pool.submit(f, arg),
        }
    }

    /// The pool's own limit for a job's task: the job's longest run and a
    /// margin. (A queued job may run under another job's task: the same
    /// limit, since queued runs have one fixed timeout.)
    fn backstop(&self, spec: &Spec) -> Option<Duration> {
        spec.longest().map(|l| l + Duration::from_secs(10))
    }

    fn spec(
        &self,
        argv: Vec<String>,
        line: String,
        seq: u64,
        slot: Option<u32>,
        args: &[String],
    ) -> Spec {
        let slot_text = slot.map_or_else(|| SLOT_MARK.to_owned(), |s| s.to_string());
        let env = vec![
            ("CORRAL_SEQ".to_owned(), seq.to_string()),
            ("CORRAL_SLOT".to_owned(), slot_text.clone()),
            ("PARALLEL_SEQ".to_owned(), seq.to_string()),
            ("PARALLEL_JOBSLOT".to_owned(), slot_text),
        ];
        let output = match self.cfg.mode {
            Mode::Group => Output::Collect,
            Mode::Line => Output::Lines {
                tag: self.cfg.tag.then(|| args.join("\t")),
            },
            Mode::Ungroup => Output::Inherit,
        };
        Spec {
            seq,
            argv,
            line,
            slot,
            env,
            timeout: self.job_timeout(),
            kill_sequence: self.cfg.kill_sequence.clone(),
            memory: self.cfg.memory,
            cpu_time: self.cfg.cpu_time,
            nice: self.cfg.nice,
            output,
            spill_dir: self.cfg.spill.as_ref().map(|d| d.path().to_owned()),
        }
    }

    /// A fixed timeout, or a percentage of the median successful runtime
    /// (none until 3 jobs have succeeded).
    fn job_timeout(&self) -> Option<Duration> {
        match self.cfg.timeout? {
            Timeout::Fixed(d) => Some(d),
            Timeout::Percent(p) if self.successes.len() >= 3 => {
                let mut runs = self.successes.clone();
                let mid = runs.len() / 2;
                let (_, median, _) = runs.select_nth_unstable(mid);
                Some(median.mul_f64(p / 100.0))
            }
            Timeout::Percent(_) => None,
        }
    }

    /// Which job a task that ended ran (`None`: no job to record).
    fn job_of(&mut self, key: u64, result: &Result<Report, TaskError>) -> Option<u64> {
        if !self.queued {
            return Some(key);
        }
        self.tokens -= 1;
        match result {
            Ok(r) if r.skipped => None,
            Ok(r) => Some(r.seq),
            // The worker died: the job it took, if it took one.
            Err(_) => self.cfg.shared.as_ref()?.job_of(key),
        }
    }

    /// Queued: keeps two `run_next` tasks per worker in the pool while jobs
    /// run; a job that no task reported once none is left (its worker died
    /// as it took it) failed.
    fn reconcile(&mut self) {
        let Some(shared) = self.cfg.shared.as_ref().filter(|_| self.queued) else {
            return;
        };
        if self.running.is_empty() {
            return;
        }
        if shared.queue.is_empty() {
            // Every job that runs is claimed by a live task; one that stays
            // unclaimed for a second lost its worker as it was taken.
            let claimed: HashSet<u64> =
                self.tasks.keys().filter_map(|t| shared.job_of(t)).collect();
            let now = Instant::now();
            let unclaimed: Vec<u64> = self
                .running
                .keys()
                .copied()
                .filter(|s| !claimed.contains(s))
                .collect();
            self.suspects.retain(|s, _| unclaimed.contains(s));
            let mut lost = Vec::new();
            for seq in unclaimed {
                let since = *self.suspects.entry(seq).or_insert(now);
                if now.duration_since(since) > Duration::from_secs(1) {
                    lost.push(seq);
                }
            }
            for seq in lost {
                self.suspects.remove(&seq);
                self.finished_job(seq, Err(TaskError::WorkerLost(ExitStatus::Signal(9))));
            }
        }
        let backstop = self.cfg.timeout.and_then(|_| self.backstop_fixed());
        while self.tokens < 2 * self.cfg.jobs {
            self.next_token += 1;
            self.tokens += 1;
            let task = self.submit(job::run_next, self.next_token, backstop);
            self.tasks.add(self.next_token, task);
        }
    }

    /// The backstop of a queued run (one fixed timeout for every job).
    fn backstop_fixed(&self) -> Option<Duration> {
        match self.cfg.timeout? {
            Timeout::Fixed(t) => Some(t + self.cfg.kill_sequence.total() + Duration::from_secs(10)),
            Timeout::Percent(_) => None,
        }
    }

    /// A task came back.
    fn finished(&mut self, key: u64, result: Result<Report, TaskError>) {
        if let Some(seq) = self.job_of(key, &result) {
            self.finished_job(seq, result);
        }
    }

    /// A job came back: retry it, or record it.
    fn finished_job(&mut self, seq: u64, result: Result<Report, TaskError>) {
        let Some(mut run) = self.running.remove(&seq) else {
            return;
        };
        self.free_slots.extend(run.slot);
        if let Ok(report) = &result {
            run.line.clone_from(&report.line);
        }
        let outcome = Outcome::of(&result);
        if !outcome.ok && run.attempt < self.cfg.tries && self.phase == Phase::Feeding {
            if let Ok(r) = &result {
                r.stdout.discard();
                r.stderr.discard();
            }
            self.tally.retries += 1;
            let not_before = Instant::now() + backoff(self.cfg.delay, run.attempt);
            let waiting = Waiting {
                seq,
                args: run.args,
                attempt: run.attempt + 1,
                not_before,
            };
            let at = self.retry.partition_point(|w| w.not_before <= not_before);
            self.retry.insert(at, waiting);
            return;
        }
        self.record(seq, &run, &outcome, result);
        self.check_halt(&outcome);
    }

    fn record(
        &mut self,
        seq: u64,
        run: &Running,
        outcome: &Outcome,
        result: Result<Report, TaskError>,
    ) {
        let t = &mut self.tally;
        t.done += 1;
        if outcome.ok {
            t.ok += 1;
        } else {
            t.failed += 1;
        }
        match outcome.killed.as_deref() {
            Some("timeout") => t.timed_out += 1,
            Some("memory") => t.memory += 1,
            _ => {}
        }
        let (stdout, stderr, host) = match result {
            Ok(r) => {
                if let (true, Ok(f)) = (outcome.ok, &r.finished) {
                    self.successes.push(f.runtime);
                }
                let mut stderr = r.stderr;
                if let Err((_, msg)) = &r.finished {
                    stderr.push_line(msg);
                }
                (r.stdout, stderr, r.host)
            }
            Err(e) => {
                let mut stderr = Captured::default();
                stderr.push_line(&format!("corral: job {seq}: {e}"));
                (Captured::default(), stderr, String::new())
            }
        };
        self.log(seq, run, outcome, &host, stdout.len() + stderr.len());
        if let Some(dir) = &self.cfg.results {
            save_results(dir, seq, &run.args, &stdout, &stderr);
        }
        let tag = self.cfg.tag.then(|| run.args.join("\t"));
        self.finished_output.insert(
            seq,
            Printed {
                stdout,
                stderr,
                tag,
            },
        );
        self.flush_ordered(false);
        self.cfg
            .progress
            .job_done(self.tally.done, self.tally.failed);
    }

    fn log(&mut self, seq: u64, run: &Running, o: &Outcome, host: &str, received: u64) {
        let Some(log) = &mut self.cfg.joblog else {
            return;
        };
        let host = if self.cfg.cluster { host } else { ":" };
        let entry = Entry {
            seq,
            host,
            start: o.start,
            runtime: o.runtime,
            received,
            exitval: o.exitval,
            signal: o.signal,
            command: &run.line,
            max_rss: o.max_rss,
            user: o.user,
            system: o.system,
            kill_reason: o.killed.clone(),
        };
        if let Err(e) = log.record(&entry) {
            eprintln!("corral: cannot write the joblog: {e}");
        }
    }

    /// Prints finished output: at once, or in input order with `-k`.
    fn flush_ordered(&mut self, all: bool) {
        if !self.cfg.keep_order || all {
            let ready = std::mem::take(&mut self.finished_output);
            let done: HashSet<u64> = ready.keys().copied().collect();
            self.order.retain(|s| !done.contains(s));
            for p in ready.into_values() {
                self.print(p);
            }
            return;
        }
        while let Some(&seq) = self.order.front() {
            let Some(p) = self.finished_output.remove(&seq) else {
                break;
            };
            self.order.pop_front();
            self.print(p);
        }
    }

    fn print(&self, p: Printed) {
        let write = || {
            let tag = p.tag.as_deref();
            if !p.stdout.is_empty() {
                let mut out = std::io::stdout().lock();
                let _ = p.stdout.write_to(&mut out, tag);
                let _ = out.flush();
            }
            if !p.stderr.is_empty() {
                let _ = p.stderr.write_to(&mut std::io::stderr().lock(), tag);
            }
        };
        self.cfg.progress.suspend(write);
        p.stdout.discard();
        p.stderr.discard();
    }

    /// `--halt`: stops when its condition is met.
    fn check_halt(&mut self, outcome: &Outcome) {
        let Some(halt) = self.cfg.halt else { return };
        if self.tally.halt_status.is_some() {
            return;
        }
        let t = &self.tally;
        let count = match halt.what {
            Count::Fail => t.failed,
            Count::Success => t.ok,
            Count::Done => t.done,
        };
        let reached = match halt.threshold {
            Threshold::Jobs(n) => count >= n,
            Threshold::Percent(p) => {
                let total = self
                    .inputs
                    .known_len()
                    .map(|n| n as u64 + t.done + self.running.len() as u64);
                let base = total.unwrap_or(t.done).max(1);
                t.done >= 3.min(base) && count as f64 * 100.0 >= p * base as f64
            }
        };
        if !reached {
            return;
        }
        if halt.what == Count::Fail {
            self.tally.halt_status = Some(outcome.status_code());
        } else {
            self.tally.halt_status = Some(0);
        }
        match halt.when {
            When::Soon => {
                self.phase = Phase::Draining;
            }
            When::Now => self.stop("halt"),
        }
    }

    /// Kills every running job (its worker, hence its whole tree) and records
    /// it as killed for `reason`.
    fn stop(&mut self, reason: &str) {
        self.phase = Phase::Stopped;
        self.retry.clear();
        self.pool.terminate();
        self.tasks.clear();
        let running = std::mem::take(&mut self.running);
        for (seq, mut run) in running {
            run.line = run.line.replace(SLOT_MARK, "{%}");
            let killed = Outcome::killed(reason);
            self.record(seq, &run, &killed, Err(TaskError::Cancelled));
        }
    }

    /// On SIGINT/SIGTERM/SIGHUP: stops every job and returns 128 + signal.
    fn check_signal(&mut self) -> Option<i32> {
        let sig = self.signal.load(Ordering::Relaxed);
        if sig == 0 {
            return None;
        }
        self.stop("interrupted");
        self.flush_ordered(true);
        self.summary();
        Some(128 + sig as i32)
    }

    fn exit_status(&mut self) -> i32 {
        self.cfg.progress.finish();
        self.summary();
        if let Some(e) = &self.input_error {
            eprintln!("corral: {e}");
            return 255;
        }
        match self.tally.halt_status {
            Some(code) => code,
            None => self.tally.failed.min(101) as i32,
        }
    }

    fn summary(&self) {
        if self.cfg.quiet {
            return;
        }
        let t = &self.tally;
        let plural = if t.done == 1 { "" } else { "s" };
        let mut line = format!(
            "corral: {} job{plural}, {} succeeded, {} failed",
            t.done, t.ok, t.failed
        );
        if t.timed_out > 0 {
            line += &format!(" ({} timed out)", t.timed_out);
        }
        if t.memory > 0 {
            line += &format!(" ({} over the memory cap)", t.memory);
        }
        if t.retries > 0 {
            line += &format!(", {} retries", t.retries);
        }
        if t.skipped > 0 {
            line += &format!(", {} skipped (resume)", t.skipped);
        }
        if self.phase == Phase::Stopped {
            line += ", stopped early";
        }
        eprintln!("{line}, {:.2} s", self.started.elapsed().as_secs_f64());
    }
}

/// A job's result, as the joblog and the counts see it.
struct Outcome {
    ok: bool,
    exitval: i32,
    signal: i32,
    killed: Option<String>,
    start: std::time::SystemTime,
    runtime: Duration,
    user: Duration,
    system: Duration,
    max_rss: u64,
}

impl Outcome {
    fn of(result: &Result<Report, TaskError>) -> Outcome {
        let mut o = Outcome::failed(-1, 0, None);
        match result {
            Ok(Report {
                finished: Ok(f), ..
            }) => {
                o.ok = f.success();
                (o.exitval, o.signal) = match f.status {
                    ExitStatus::Code(c) => (c, 0),
                    ExitStatus::Signal(s) => (0, s),
                };
                if f.killed == Some(KillReason::Timeout) {
                    // GNU parallel's record of a timed-out job.
                    (o.exitval, o.signal) = (-1, 15);
                }
                o.killed = f.killed.map(|k| k.to_string());
                (o.start, o.runtime, o.user, o.system, o.max_rss) =
                    (f.started, f.runtime, f.user_cpu, f.system_cpu, f.max_rss);
            }
            Ok(Report {
                finished: Err((code, _)),
                ..
            }) => o.exitval = *code,
            Err(e) => {
                o.exitval = -1;
                if let TaskError::WorkerLost(ExitStatus::Signal(s)) = e {
                    o.signal = *s;
                }
                o.killed = Some(match e {
                    TaskError::TimedOut(_) => "timeout".to_owned(),
                    TaskError::MemoryExceeded(_) => "memory".to_owned(),
                    _ => "worker-lost".to_owned(),
                });
            }
        }
        o
    }

    /// A job corral killed for `reason` (`--halt now`, a signal).
    fn killed(reason: &str) -> Outcome {
        Outcome::failed(-1, 9, Some(reason.to_owned()))
    }

    fn failed(exitval: i32, signal: i32, killed: Option<String>) -> Outcome {
        Outcome {
            ok: false,
            exitval,
            signal,
            killed,
            start: std::time::SystemTime::now(),
            runtime: Duration::ZERO,
            user: Duration::ZERO,
            system: Duration::ZERO,
            max_rss: 0,
        }
    }

    /// The status a failing job gives `--halt …,fail` (a shell's way).
    fn status_code(&self) -> i32 {
        match (self.exitval, self.signal) {
            (c, 0) if c > 0 => c.min(255),
            (_, s) if s > 0 => (128 + s).min(255),
            _ => 1,
        }
    }
}

/// The wait before retry number `attempt`: `--delay` (at least 100 ms)
/// doubled per attempt, capped at a minute, with full jitter.
fn backoff(delay: Option<Duration>, attempt: u32) -> Duration {
    let base = delay
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(100));
    let cap = base
        .saturating_mul(1 << attempt.min(16))
        .min(Duration::from_secs(60));
    let nanos = cap.as_nanos() as u64;
    let mut seed = Instant::now().elapsed().as_nanos() as u64
        ^ (u64::from(std::process::id()) << 32)
        ^ u64::from(attempt);
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    Duration::from_nanos(nanos / 2 + seed % (nanos / 2 + 1))
}

/// `--results DIR`: DIR/1/<input 1>/2/<input 2>/{seq,stdout,stderr}.
fn save_results(
    dir: &std::path::Path,
    seq: u64,
    args: &[String],
    stdout: &Captured,
    stderr: &Captured,
) {
    let mut path = dir.to_path_buf();
    for (i, arg) in args.iter().enumerate() {
        path.push((i + 1).to_string());
        let clean: String = arg
            .chars()
            .map(|c| if c == '/' || c == '\0' { '_' } else { c })
            .collect();
        path.push(match clean.as_str() {
            "" | "." | ".." => format!("_{clean}"),
            _ => clean,
        });
    }
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&path)?;
        std::fs::write(path.join("seq"), format!("{seq}\n"))?;
        stdout.save(&path.join("stdout"))?;
        stderr.save(&path.join("stderr"))
    };
    if let Err(e) = write() {
        eprintln!("corral: cannot save results in {}: {e}", path.display());
    }
}

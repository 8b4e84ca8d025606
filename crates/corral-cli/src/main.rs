//! `corral`: a supervised parallel runner for the shell, with GNU parallel's
//! grammar, on corral's pool.
//!
//! `corral run [OPTIONS] COMMAND [ARGS…] ::: INPUTS…` runs one job per
//! input (or combination of inputs), at most `-j` at a time. Every job runs
//! on a pool worker, which starts it as the leader of its own process group,
//! enforces its timeout (a TERM → grace → KILL sequence over the whole tree)
//! and its memory and CPU caps, and reports how it ended and what it used.
//! Because the jobs hang off corral's supervised pool, a killed `corral`
//! takes every job tree with it. `corral worker URL` and `corral run
//! --cluster URL` run the same jobs on other machines through corral's
//! cluster pool.

mod captured;
mod cli;
mod input;
mod job;
mod joblog;
mod opts;
mod progress;
mod runner;
mod template;
mod wake;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use clap::{CommandFactory, Parser};
use corral::Pool;
use corral::command::KillSequence;

use cli::{Cli, Command, RunArgs, WorkerArgs};
use input::{Jobs, Split};
use runner::{Config, Mode, Runner};
use template::Template;

/// GNU parallel's status for bad options and input.
const USAGE: u8 = 255;

fn main() -> ExitCode {
    corral::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(USAGE);
        }
    };
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Worker(args) => worker(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "corral", &mut std::io::stdout());
            Ok(0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(message) => {
            eprintln!("corral: {message}");
            ExitCode::from(USAGE)
        }
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run(args: RunArgs) -> Result<i32, String> {
    let (command, inputs) = input::split_command(args.command.clone())?;
    let template = Template::parse(&command, args.shell)?;
    let split = Split {
        record: match (&args.delimiter, args.null) {
            (_, true) => 0,
            (Some(d), false) => input::delimiter(d)?,
            (None, false) => b'\n',
        },
        colsep: args
            .colsep
            .as_deref()
            .map(|s| String::from_utf8_lossy(&input::unescape(s)).into_owned()),
    };
    if inputs.is_empty() && input::stdin_is_terminal() {
        eprintln!("corral: reading inputs from the terminal (give them with ::: or pipe them in)");
    }
    let jobs = Jobs::new(&inputs, split)?;
    let mut cfg = config(&args, template)?;
    if args.dry_run {
        return dry_run(&cfg, jobs);
    }
    cfg.progress = progress::Progress::new(args.bar, args.eta, jobs.known_len());
    let pool = pool(&args, &mut cfg)?;
    let signal = Arc::new(AtomicUsize::new(0));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)
            .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    Ok(Runner::new(cfg, pool, jobs, signal).run())
}

/// Turns the options into a [`Config`], refusing bad values before any job
/// starts.
fn config(args: &RunArgs, template: Template) -> Result<Config, String> {
    let mode = match (args.line_buffer, args.ungroup) {
        (true, _) => Mode::Line,
        (_, true) => Mode::Ungroup,
        _ => Mode::Group,
    };
    if args.cluster.is_some() && mode != Mode::Group {
        return Err(
            "--line-buffer and -u need local jobs: a cluster's jobs send their output back whole"
                .into(),
        );
    }
    if args.results.is_some() && mode != Mode::Group {
        return Err("--results needs grouped output (not --line-buffer or -u)".into());
    }
    let skip = match (&args.joblog, args.resume, args.resume_failed) {
        (Some(path), true, _) | (Some(path), _, true) => {
            joblog::done_commands(path, args.resume_failed)
                .map_err(|e| format!("cannot read the joblog {}: {e}", path.display()))?
        }
        _ => Default::default(),
    };
    let joblog = match &args.joblog {
        Some(path) => Some(
            joblog::Joblog::open(path, args.resume || args.resume_failed)
                .map_err(|e| format!("cannot write the joblog {}: {e}", path.display()))?,
        )
        .filter(|_| !args.dry_run),
        None => None,
    };
    Ok(Config {
        template,
        jobs: match (&args.jobs, &args.cluster) {
            (Some(j), _) => opts::jobs(j, cpus())?,
            // The nodes bound what runs; this bounds what waits in Redis.
            (None, Some(_)) => 256,
            (None, None) => cpus(),
        },
        timeout: args.timeout.as_deref().map(opts::timeout).transpose()?,
        kill_sequence: KillSequence::parse(&args.term_seq)
            .map_err(|e| format!("--term-seq {e}"))?,
        memory: args.memory.as_deref().map(opts::size).transpose()?,
        cpu_time: args.cpu_time.as_deref().map(opts::duration).transpose()?,
        nice: args.nice,
        tries: args.retries.max(1),
        delay: args.delay.as_deref().map(opts::duration).transpose()?,
        halt: args.halt.as_deref().map(opts::halt).transpose()?.flatten(),
        keep_order: args.keep_order,
        tag: args.tag,
        mode,
        results: args.results.clone(),
        joblog,
        skip,
        progress: progress::Progress::new(false, false, None),
        quiet: args.quiet,
        cluster: args.cluster.is_some(),
        shared: None,
        spill: None,
    })
}

/// The pool the jobs run on: local workers (which share their slots and a
/// stop flag with the runner), or a cluster's nodes.
fn pool(args: &RunArgs, cfg: &mut Config) -> Result<Pool, String> {
    if let Some(url) = &args.cluster {
        return Pool::cluster(url)
            .build()
            .map_err(|e| format!("cannot reach the cluster: {e}"));
    }
    let jobs = cfg.jobs;
    let fail = |e: corral::Error| format!("cannot start {jobs} workers: {e}");
    let shared = job::Shared {
        // Room for replacements that start before a dead worker is reaped.
        slots: corral::Array::zeroed(2 * jobs).map_err(fail)?,
        taken: corral::RawArray::zeroed(job::Shared::taken_len(2 * jobs)).map_err(fail)?,
        queue: corral::Queue::unbounded().map_err(fail)?,
    };
    let pool = Pool::builder()
        .processes(jobs)
        .initializer(job::join_pool, shared.clone())
        .build()
        .map_err(fail)?;
    cfg.shared = Some(shared);
    if cfg.mode == Mode::Group {
        cfg.spill = captured::SpillDir::create().ok();
    }
    Ok(pool)
}

/// `--dry-run`: prints each command instead of running it.
fn dry_run(cfg: &Config, jobs: Jobs) -> Result<i32, String> {
    let mut seq = 0u64;
    for args in jobs {
        seq += 1;
        let line = cfg.template.expand(&args?, seq, Some(1)).line;
        if !cfg.skip.contains(&line) {
            println!("{line}");
        }
    }
    Ok(0)
}

/// `corral worker URL`: a cluster node running `corral run --cluster` jobs.
fn worker(args: WorkerArgs) -> Result<i32, String> {
    let jobs = opts::jobs(args.jobs.as_deref().unwrap_or("100%"), cpus())?;
    corral::cluster::Node::new(&args.url)
        .pool(Pool::builder().processes(jobs))
        .visibility_timeout(opts::duration(&args.visibility_timeout)?)
        .run()
        .map_err(|e| e.to_string())?;
    Ok(0)
}

//! The command line (clap).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const RUN_EXAMPLES: &str = "\
Examples:
  corral run gzip ::: *.log                       compress every log, one job per CPU
  corral run -j 4 --timeout 30s --memory 1G -- convert {} {.}.png ::: *.svg
  find . -name '*.txt' | corral run wc -l         one job per line of stdin
  corral run 'gzip {} && rm {}' ::: *.csv         one string with shell syntax runs in sh -c
  corral run echo {1}-{2} ::: a b ::: 1 2         a-1 a-2 b-1 b-2 (every combination)
  corral run echo {1}={2} ::: a b :::+ 1 2        a=1 b=2 (linked sources)
  corral run -k --tag --joblog jobs.tsv ./job.sh :::: inputs.txt
  corral run --resume-failed --joblog jobs.tsv ./job.sh :::: inputs.txt
  corral run --retries 3 --halt now,fail=10% curl -fsS {} ::: $(cat urls)
  corral worker redis://:secret@host:6379/        run jobs for other machines
  corral run --cluster redis://:secret@host:6379/ ./job.sh ::: 1 2 3

Replacement strings: {} input, {.} without extension, {/} basename, {//} dirname,
{/.} basename without extension, {#} job number, {%} job slot, {n} and {n.} {n/}
{n//} {n/.} the n-th input. With none in the command, the inputs are appended.
Each job also sees CORRAL_SEQ and CORRAL_SLOT (and PARALLEL_SEQ, PARALLEL_JOBSLOT).

Exit status: the number of failed jobs (at most 101); with --halt …,fail the failing
job's status; 255 for bad options or input.";

/// A supervised parallel runner: GNU parallel's grammar, with limits and
/// cleanup for every job.
#[derive(Debug, Parser)]
#[command(name = "corral", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Runs a command once per input, in parallel, each job supervised.
    #[command(after_help = RUN_EXAMPLES)]
    Run(Box<RunArgs>),
    /// Runs jobs sent by `corral run --cluster URL` (a cluster node).
    Worker(WorkerArgs),
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Jobs at a time: N, N% of the CPUs, +N or -N relative to them [default: one per CPU; 256 in flight with --cluster].
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub(crate) jobs: Option<String>,

    /// Kill a job's whole process tree after this long (30s, 2m, or 200% of the median successful runtime).
    #[arg(long, value_name = "DURATION|N%")]
    pub(crate) timeout: Option<String>,

    /// Signals sent to a timed-out job's process group, each with milliseconds to wait.
    #[arg(
        long,
        value_name = "SIG,MS,…",
        default_value = "TERM,200,TERM,100,TERM,50,KILL,25"
    )]
    pub(crate) term_seq: String,

    /// Memory cap per job (512M, 1G): a memory cgroup for the whole job tree when allowed, else RLIMIT_AS.
    #[arg(long, value_name = "SIZE")]
    pub(crate) memory: Option<String>,

    /// CPU-time cap per job process (RLIMIT_CPU).
    #[arg(long, value_name = "DURATION")]
    pub(crate) cpu_time: Option<String>,

    /// Run jobs with this niceness increment.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) nice: Option<i32>,

    /// Run a failed job up to N times in all (GNU parallel's meaning).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) retries: u32,

    /// Wait this long between job starts; retries wait it doubled per attempt, with jitter.
    #[arg(long, value_name = "DURATION")]
    pub(crate) delay: Option<String>,

    /// Stop early: never, or now|soon,fail|success|done=N|P% (GNU parallel's grammar).
    #[arg(long, value_name = "WHEN,WHAT=N")]
    pub(crate) halt: Option<String>,

    /// Keep the output in the order of the inputs.
    #[arg(short = 'k', long = "keep-order")]
    pub(crate) keep_order: bool,

    /// Prefix each output line with the job's inputs and a tab.
    #[arg(long)]
    pub(crate) tag: bool,

    /// Print output as whole lines as soon as they come, instead of per job.
    #[arg(long, conflicts_with_all = ["ungroup", "keep_order"])]
    pub(crate) line_buffer: bool,

    /// Let jobs write straight to the terminal (output may mix mid-line).
    #[arg(short = 'u', long, conflicts_with_all = ["keep_order", "tag"])]
    pub(crate) ungroup: bool,

    /// Save each job's stdout, stderr and seq under DIR/1/<input>/….
    #[arg(long, value_name = "DIR")]
    pub(crate) results: Option<PathBuf>,

    /// Record every job in a GNU parallel joblog (9 columns) plus MaxRSS, UserCPU, SysCPU, KillReason.
    #[arg(long, value_name = "FILE")]
    pub(crate) joblog: Option<PathBuf>,

    /// Skip the jobs whose command line the joblog already has.
    #[arg(long, requires = "joblog")]
    pub(crate) resume: bool,

    /// Skip the jobs the joblog shows as succeeded; run the failed and new ones.
    #[arg(long, requires = "joblog", conflicts_with = "resume")]
    pub(crate) resume_failed: bool,

    /// Show a progress bar on stderr.
    #[arg(long)]
    pub(crate) bar: bool,

    /// Show the estimated time left on stderr.
    #[arg(long)]
    pub(crate) eta: bool,

    /// Print the commands instead of running them.
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Run the command through `sh -c` (automatic when it is one string with shell syntax).
    #[arg(long)]
    pub(crate) shell: bool,

    /// Input records end with NUL instead of newline.
    #[arg(short = '0', long = "null", conflicts_with = "delimiter")]
    pub(crate) null: bool,

    /// Input records end with this byte (\n, \t, \0 allowed).
    #[arg(short = 'd', long, value_name = "DELIM")]
    pub(crate) delimiter: Option<String>,

    /// Split each input record into columns {1} {2} … at this string (literal; \t allowed).
    #[arg(long, value_name = "SEP")]
    pub(crate) colsep: Option<String>,

    /// Run the jobs on the nodes of a corral cluster (`corral worker URL`) instead of here.
    #[arg(long, value_name = "redis://…")]
    pub(crate) cluster: Option<String>,

    /// No summary line on stderr.
    #[arg(short, long)]
    pub(crate) quiet: bool,

    /// The command, its arguments, then the inputs: ::: values, :::: files, :::+ and ::::+ to link.
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        num_args = 0..
    )]
    pub(crate) command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The cluster's Redis URL (redis://[:password@]host:port/[db]).
    pub(crate) url: String,

    /// Jobs at a time on this machine [default: one per CPU].
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub(crate) jobs: Option<String>,

    /// How long a silent node's jobs wait before another node takes them over.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub(crate) visibility_timeout: String,
}

//! The `corral` command, run as a real binary: grammar, output, supervision
//! (timeouts, memory, signals), records, and the cluster.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use corral_fixtures::{Redis, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_corral");

/// Runs `corral ARGS` with `stdin`, bounded at 60 s.
fn corral_with(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start corral");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
            if corral_fixtures::is_gone(pid) {
                return;
            }
        }
        corral_fixtures::sigkill(pid);
    });
    let out = child.wait_with_output().unwrap();
    let _ = watchdog.join();
    out
}

fn corral(args: &[&str]) -> Output {
    corral_with(args, b"")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(out: &Output) -> Vec<String> {
    stdout(out).lines().map(str::to_owned).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// A fresh scratch directory, removed when the test ends (a failed one too).
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("corral-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// Pids of live job processes (not corral's own, whose command line holds
/// the script too) whose command line contains `marker`.
fn procs_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(marker) && !cmdline.starts_with(BIN) && pid != std::process::id() {
            out.push(pid);
        }
    }
    out
}

/// A unique `sleep` length, so that a test can find its own sleeps.
fn sleep_marker(tag: u32) -> String {
    format!("{}.{:03}{tag}", 900 + std::process::id() % 97, tag)
}

/// Parses a joblog into rows of columns (header excluded), checking the header.
fn joblog(path: &Path) -> Vec<Vec<String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut rows = text.lines();
    // A joblog just created may not have its header yet.
    let Some(header) = rows.next() else {
        return Vec::new();
    };
    assert_eq!(
        header,
        "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\tMaxRSS\tUserCPU\tSysCPU\tKillReason"
    );
    rows.map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

#[test]
fn gnu_grammar_sources_and_replacement_strings() {
    // parallel echo ::: A B ::: D E   (every combination)
    let out = corral(&["run", "-k", "echo", ":::", "A", "B", ":::", "D", "E"]);
    assert_eq!(lines(&out), ["A D", "A E", "B D", "B E"]);
    // parallel echo ::: A B C :::+ D E F   (linked)
    let out = corral(&[
        "run", "-k", "echo", ":::", "A", "B", "C", ":::+", "D", "E", "F",
    ]);
    assert_eq!(lines(&out), ["A D", "B E", "C F"]);
    // parallel echo {.} {/} {//} {/.} ::: dir/sub/file.ext
    let out = corral(&[
        "run",
        "echo",
        "{.}",
        "{/}",
        "{//}",
        "{/.}",
        ":::",
        "dir/sub/file.ext",
    ]);
    assert_eq!(lines(&out), ["dir/sub/file file.ext dir/sub file"]);
    // parallel echo {2} {1} ::: a b ::: c   (positional)
    let out = corral(&[
        "run", "-k", "echo", "{2}-{1.}", ":::", "a.x", "b.y", ":::", "c",
    ]);
    assert_eq!(lines(&out), ["c-a", "c-b"]);
    // {#} and {%}: job numbers and slots
    let out = corral(&[
        "run", "-k", "-j", "2", "echo", "{#}", "{%}", ":::", "a", "b", "c",
    ]);
    let rows = lines(&out);
    assert_eq!(rows.len(), 3);
    for (i, row) in rows.iter().enumerate() {
        let (seq, slot) = row.split_once(' ').unwrap();
        assert_eq!(seq, (i + 1).to_string());
        assert!(slot == "1" || slot == "2", "{row}");
    }
    // stdin lines when there is no source; :::: files; -0; -d; --colsep
    let out = corral_with(&["run", "-k", "echo", "got"], b"x y\nz\n");
    assert_eq!(lines(&out), ["got x y", "got z"]);
    let dir = scratch("grammar");
    let file = dir.join("in.txt");
    std::fs::write(&file, "1,one\n2,two\n").unwrap();
    let f = file.to_str().unwrap();
    let out = corral(&["run", "-k", "--colsep", ",", "echo", "{2}={1}", "::::", f]);
    assert_eq!(lines(&out), ["one=1", "two=2"]);
    let out = corral_with(&["run", "-k", "-0", "echo"], b"a b\0c\nd\0");
    assert_eq!(stdout(&out), "a b\nc\nd\n");
    let out = corral_with(&["run", "-k", "-d", ":", "echo"], b"p:q");
    assert_eq!(lines(&out), ["p", "q"]);
}

#[test]
fn exec_without_quoting_traps_and_shell_strings() {
    // `exit {}` stays one argument: job 2 fails with 1, the status counts it.
    let out = corral(&["run", "-k", "sh", "-c", "exit {}", ":::", "0", "1"]);
    assert_eq!(code(&out), 1);
    // An argument with spaces and quotes reaches the program as it is.
    let out = corral(&["run", "printf", "[%s]\\n", ":::", "it's a b"]);
    assert_eq!(stdout(&out), "[it's a b]\n");
    // One string with shell syntax runs in sh, with the inputs quoted.
    let out = corral(&[
        "run",
        "-k",
        "echo {} && echo second {}",
        ":::",
        "a b",
        "c;d",
    ]);
    assert_eq!(lines(&out), ["a b", "second a b", "c;d", "second c;d"]);
    // The job sees its number and slot in the environment.
    let out = corral(&[
        "run",
        "-j",
        "1",
        "sh",
        "-c",
        "echo $CORRAL_SEQ/$CORRAL_SLOT/$PARALLEL_SEQ",
        ":::",
        "x",
    ]);
    assert_eq!(stdout(&out), "1/1/1\n");
    // A program that does not exist: 127, like a shell.
    let dir = scratch("missing");
    let log = dir.join("log.tsv");
    let out = corral(&[
        "run",
        "--joblog",
        log.to_str().unwrap(),
        "no-such-program-corral",
        ":::",
        "a",
    ]);
    assert_eq!(code(&out), 1);
    assert_eq!(joblog(&log)[0][6], "127");
}

#[test]
fn keep_order_grouping_and_tags() {
    // Later inputs finish first; -k prints in input order anyway.
    let out = corral(&[
        "run",
        "-k",
        "-j",
        "3",
        "sh",
        "-c",
        "sleep {}; echo {}",
        ":::",
        "0.3",
        "0.2",
        "0.1",
    ]);
    assert_eq!(lines(&out), ["0.3", "0.2", "0.1"]);
    // Grouped (the default): each job's lines stay together although the
    // jobs write at the same time.
    let script = "for i in 1 2 3 4 5; do echo {}$i; sleep 0.02; done";
    let out = corral(&["run", "-j", "3", script, ":::", "a", "b", "c"]);
    let rows = lines(&out);
    assert_eq!(rows.len(), 15);
    for chunk in rows.chunks(5) {
        let job = &chunk[0][..1];
        assert!(chunk.iter().all(|l| l.starts_with(job)), "{rows:?}");
    }
    // --tag prefixes each line with the inputs; --line-buffer keeps whole lines.
    let out = corral(&[
        "run",
        "-k",
        "--tag",
        "printf",
        "one\\ntwo\\n",
        ":::",
        "x",
        "y",
    ]);
    assert_eq!(lines(&out), ["x\tone", "x\ttwo", "y\tone", "y\ttwo"]);
    let out = corral(&[
        "run",
        "--line-buffer",
        "--tag",
        "-j",
        "3",
        script,
        ":::",
        "a",
        "b",
        "c",
    ]);
    let rows = sorted(lines(&out));
    assert_eq!(rows.len(), 15);
    assert!(
        rows.iter()
            .all(|l| l.len() == 4 && l.as_bytes()[1] == b'\t' && l[..1] == l[2..3]),
        "{rows:?}"
    );
}

#[test]
fn a_timeout_kills_the_whole_job_tree() {
    let marker = sleep_marker(1);
    let dir = scratch("timeout");
    let log = dir.join("log.tsv");
    let script = format!("sleep {marker} & sleep {marker}; echo never");
    let started = Instant::now();
    let out = corral(&[
        "run",
        "--timeout",
        "1s",
        "--joblog",
        log.to_str().unwrap(),
        &script,
        ":::",
        "x",
    ]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(code(&out), 1);
    assert_eq!(stdout(&out), "");
    assert!(
        wait_for(Duration::from_secs(2), || procs_with(&marker).is_empty()),
        "left: {:?}",
        procs_with(&marker)
    );
    let row = &joblog(&log)[0];
    assert_eq!(
        (row[6].as_str(), row[7].as_str(), row[12].as_str()),
        ("-1", "15", "timeout")
    );
    let runtime: f64 = row[3].parse().unwrap();
    assert!((1.0..10.0).contains(&runtime), "{runtime}");
    // A configurable sequence: a job ignoring TERM dies by KILL.
    let script = format!("trap '' TERM; sleep {marker} & sleep {marker}");
    let out = corral(&[
        "run",
        "--timeout",
        "0.5s",
        "--term-seq",
        "TERM,300,KILL,25",
        &script,
        ":::",
        "x",
    ]);
    assert_eq!(code(&out), 1);
    assert!(wait_for(Duration::from_secs(2), || procs_with(&marker).is_empty()));
    // 200% of the median successful runtime: the slow fourth job is cut.
    let out = corral(&[
        "run",
        "-k",
        "-j",
        "1",
        "--timeout",
        "200%",
        "--joblog",
        log.to_str().unwrap(),
        "sleep",
        ":::",
        "0.1",
        "0.1",
        "0.1",
        &marker,
    ]);
    assert_eq!(code(&out), 1);
    let rows = joblog(&log);
    assert_eq!(
        rows.iter().map(|r| r[12].as_str()).collect::<Vec<_>>(),
        ["-", "-", "-", "timeout"]
    );
    assert!(wait_for(Duration::from_secs(2), || procs_with(&marker).is_empty()));
}

#[test]
fn a_memory_cap_fails_only_the_job_that_goes_over() {
    let dir = scratch("memory");
    let log = dir.join("log.tsv");
    let (python, _) = corral_fixtures::python();
    let script =
        "import sys; b = bytearray(int(sys.argv[1]) << 20); print('allocated', len(b) >> 20)";
    let out = corral(&[
        "run",
        "-k",
        "--memory",
        "64M",
        "--joblog",
        log.to_str().unwrap(),
        python,
        "-c",
        script,
        ":::",
        "16",
        "256",
        "8",
    ]);
    assert_eq!(lines(&out), ["allocated 16", "allocated 8"]);
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    let rows = joblog(&log);
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r[6] != "0" || r[7] != "0")
        .map(|r| r[0].as_str())
        .collect();
    assert_eq!(failed, ["2"]);
    // With a memory cgroup (root here) the verdict is exact; with RLIMIT_AS
    // the allocation fails (MemoryError) and the program exits with 1.
    // Rows are in the order jobs ended.
    let over = rows.iter().find(|r| r[0] == "2").unwrap();
    if cgroup_v1_memory() {
        assert_eq!((over[7].as_str(), over[12].as_str()), ("9", "memory"));
        assert!(String::from_utf8_lossy(&out.stderr).contains("over the memory cap"));
    }
}

fn cgroup_v1_memory() -> bool {
    rustix_is_root() && Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn retries_and_halt() {
    let dir = scratch("retries");
    let log = dir.join("log.tsv");
    // Each job fails until its third try.
    let script = format!(
        "n=$(cat {d}/{{}} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {d}/{{}}; [ $n -ge 3 ]",
        d = dir.display()
    );
    let out = corral(&[
        "run",
        "--retries",
        "3",
        "--delay",
        "0.01s",
        "--joblog",
        log.to_str().unwrap(),
        &script,
        ":::",
        "a",
        "b",
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(joblog(&log).len(), 2, "one record per job");
    assert!(String::from_utf8_lossy(&out.stderr).contains("4 retries"));
    // Two tries are not enough: both fail.
    let out = corral(&[
        "run",
        "--retries",
        "2",
        "sh",
        "-c",
        "exit 1",
        ":::",
        "a",
        "b",
    ]);
    assert_eq!(code(&out), 2);

    // --halt now,fail=1: the failing job's status, the others killed at once.
    let marker = sleep_marker(2);
    let started = Instant::now();
    let out = corral(&[
        "run",
        "-j",
        "3",
        "--halt",
        "now,fail=1",
        "--joblog",
        log.to_str().unwrap(),
        "sh",
        "-c",
        "{}",
        ":::",
        &format!("sleep {marker}"),
        "sleep 0.2; exit 7",
        &format!("sleep {marker}"),
    ]);
    assert_eq!(code(&out), 7);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(wait_for(Duration::from_secs(2), || procs_with(&marker).is_empty()));
    let rows = joblog(&log);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows.iter().filter(|r| r[12] == "halt").count(), 2);

    // --halt soon,fail=1: running jobs finish, no new one starts.
    let out = corral(&[
        "run",
        "-k",
        "-j",
        "2",
        "--halt",
        "soon,fail=1",
        "sh",
        "-c",
        "{}",
        ":::",
        "sleep 0.5; echo slow",
        "exit 3",
        "echo never1",
        "echo never2",
    ]);
    assert_eq!(code(&out), 3);
    assert_eq!(lines(&out), ["slow"]);
    // --halt now,success=1 ends with 0.
    let out = corral(&[
        "run",
        "-j",
        "2",
        "--halt",
        "now,success=1",
        "sh",
        "-c",
        "{}",
        ":::",
        &format!("sleep {marker}"),
        "true",
    ]);
    assert_eq!(code(&out), 0);
    assert!(wait_for(Duration::from_secs(2), || procs_with(&marker).is_empty()));
}

#[test]
fn joblog_results_dry_run_and_exit_status() {
    let dir = scratch("records");
    let log = dir.join("log.tsv");
    let results = dir.join("res");
    let out = corral(&[
        "run",
        "-k",
        "--joblog",
        log.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
        "sh",
        "-c",
        "echo out {}; echo err {} >&2; exit {}",
        ":::",
        "0",
        "3",
    ]);
    assert_eq!(code(&out), 1);
    let mut rows = joblog(&log);
    rows.sort_by_key(|r| r[0].parse::<u64>().unwrap());
    assert_eq!(rows.len(), 2);
    for (row, exit) in rows.iter().zip(["0", "3"]) {
        assert_eq!(row.len(), 13);
        assert_eq!(row[1], ":");
        assert!(row[2].parse::<f64>().unwrap() > 1.7e9);
        assert!(row[3].parse::<f64>().unwrap() >= 0.0);
        assert_eq!((row[6].as_str(), row[7].as_str()), (exit, "0"));
        assert!(row[8].starts_with("sh -c 'echo out"), "{}", row[8]);
        assert!(row[9].parse::<u64>().unwrap() > 0, "MaxRSS");
        row[10].parse::<f64>().unwrap();
        row[11].parse::<f64>().unwrap();
        assert_eq!(row[12], "-");
    }
    let saved = results.join("1").join("3");
    assert_eq!(
        std::fs::read_to_string(saved.join("stdout")).unwrap(),
        "out 3\n"
    );
    assert_eq!(
        std::fs::read_to_string(saved.join("stderr")).unwrap(),
        "err 3\n"
    );
    assert_eq!(std::fs::read_to_string(saved.join("seq")).unwrap(), "2\n");
    // --dry-run prints and runs nothing.
    let touched = dir.join("touched");
    let out = corral(&[
        "run",
        "--dry-run",
        "touch",
        touched.to_str().unwrap(),
        ":::",
        "a b",
    ]);
    assert_eq!(stdout(&out), format!("touch {} 'a b'\n", touched.display()));
    assert!(!touched.exists());
    // The status counts failures, capped at 101.
    let many: Vec<String> = (0..103).map(|i| i.to_string()).collect();
    let mut args = vec!["run", "-j", "4", "false", ":::"];
    args.extend(many.iter().map(String::as_str));
    assert_eq!(code(&corral(&args)), 101);
}

#[test]
fn bad_input_is_refused_before_any_job_starts() {
    let dir = scratch("bad");
    let touched = dir.join("touched");
    let t = touched.to_str().unwrap();
    for args in [
        vec!["run", "--no-such-option", "touch", t, ":::", "a"],
        vec!["run", "--halt", "sometimes", "touch", t, ":::", "a"],
        vec!["run", "--timeout", "soon", "touch", t, ":::", "a"],
        vec!["run", "--memory", "lots", "touch", t, ":::", "a"],
        vec!["run", "-j", "many", "touch", t, ":::", "a"],
        vec!["run", "touch", t, "::::", "/no/such/input/file"],
        vec!["run", "--term-seq", "TERM,x", "touch", t, ":::", "a"],
        vec!["run", "--resume"],
        vec!["frobnicate"],
    ] {
        let out = corral(&args);
        assert_eq!(code(&out), 255, "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.trim().is_empty(), "{args:?}: no message");
        assert!(!touched.exists(), "{args:?} started a job");
    }
    let completions = corral(&["completions", "bash"]);
    assert_eq!(code(&completions), 0);
    assert!(stdout(&completions).contains("complete") && stdout(&completions).contains("--joblog"));
    let help = stdout(&corral(&["run", "--help"]));
    assert!(help.contains("Examples:") && help.contains("corral run -j 4 --timeout 30s"));
}

/// A child process killed (and reaped) when the test ends, even by a panic.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `corral run` in the background on jobs that sleep with a marker;
/// whatever a failed assertion leaves running is killed on drop.
struct Background {
    child: Child,
    marker: String,
}

impl Background {
    fn start(marker: &str) -> Background {
        // The input goes in a comment: the job is the two sleeps.
        let script = format!("sleep {marker} & sleep {marker} # {{}}");
        let child = Command::new(BIN)
            .args(["run", "-j", "2", script.as_str(), ":::", "a", "b", "c", "d"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Background {
            child,
            marker: marker.to_owned(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in procs_with(&self.marker) {
            corral_fixtures::sigkill(pid);
        }
    }
}

#[test]
fn a_signalled_or_killed_corral_leaves_no_job_behind() {
    for (tag, signal) in [(3, libc_sig::INT), (4, libc_sig::TERM), (5, libc_sig::KILL)] {
        let marker = sleep_marker(tag);
        let mut run = Background::start(&marker);
        // Two jobs: each a shell and its two sleeps.
        assert!(
            wait_for(Duration::from_secs(10), || procs_with(&marker).len() >= 6),
            "jobs did not start"
        );
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(run.child.id().to_string())
            .status();
        let status = run.child.wait().unwrap();
        if signal != libc_sig::KILL {
            assert_eq!(status.code(), Some(128 + signal), "signal {signal}");
        }
        let gone = wait_for(Duration::from_secs(1), || procs_with(&marker).is_empty());
        assert!(
            gone,
            "signal {signal}: jobs left after 1 s: {:?}",
            procs_with(&marker)
        );
    }
}

/// `pkill corral`: SIGTERM to corral and to every process of it below (its
/// fork server and workers, all named corral), not to the jobs. The fork
/// server holds the signal blocked and ends when corral does, killing the
/// jobs of the workers that died; had it ended at once, they would have
/// been left to no one.
#[test]
fn a_pkill_of_every_corral_process_leaves_no_job_behind() {
    let marker = sleep_marker(6);
    let mut run = Background::start(&marker);
    assert!(
        wait_for(Duration::from_secs(10), || procs_with(&marker).len() >= 6),
        "jobs did not start"
    );
    let exe = std::fs::canonicalize(BIN).unwrap();
    let is_corral =
        |pid: &u32| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe);
    let mut ours = vec![run.child.id()];
    ours.extend(
        corral_fixtures::descendants(run.child.id())
            .into_iter()
            .filter(is_corral),
    );
    assert!(
        ours.len() >= 4,
        "corral, its fork server and two workers: {ours:?}"
    );
    for pid in &ours {
        let _ = Command::new("kill")
            .arg(format!("-{}", libc_sig::TERM))
            .arg(pid.to_string())
            .status();
    }
    let _ = run.child.wait();
    let gone = wait_for(Duration::from_secs(1), || procs_with(&marker).is_empty());
    assert!(
        gone,
        "jobs left 1 s after the pkill: {:?}",
        procs_with(&marker)
    );
}

mod libc_sig {
    pub(super) const INT: i32 = 2;
    pub(super) const KILL: i32 = 9;
    pub(super) const TERM: i32 = 15;
}

#[test]
fn resume_failed_after_a_killed_run() {
    let dir = scratch("resume");
    let log = dir.join("log.tsv");
    let runs = dir.join("runs");
    let l = log.to_str().unwrap();
    // Inputs 1-6; odd ones fail the first time; 5 and 6 are slow: the run
    // is SIGKILLed while they run.
    let script = format!(
        "echo {{}} >> {r}; case {{}} in 1|3) [ -e {d}/ok{{}} ] || {{ touch {d}/ok{{}}; exit 1; }};; 5|6) [ -e {d}/fast ] || sleep 30;; esac",
        r = runs.display(),
        d = dir.display()
    );
    let inputs = ["1", "2", "3", "4", "5", "6"];
    let mut args = vec!["run", "-j", "2", "--joblog", l, script.as_str(), ":::"];
    args.extend(inputs);
    let mut child = Guard(
        Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_for(Duration::from_secs(20), || joblog(&log).len() == 4),
        "first 4 jobs"
    );
    assert!(
        wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(&runs).is_ok_and(|r| r.lines().count() == 6)
        }),
        "jobs 5 and 6 start: {:?}",
        std::fs::read_to_string(&runs)
    );
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    std::fs::write(dir.join("fast"), "").unwrap();
    let mut args = vec![
        "run",
        "-j",
        "2",
        "--resume-failed",
        "--joblog",
        l,
        script.as_str(),
        ":::",
    ];
    args.extend(inputs);
    let out = corral(&args);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 skipped"));
    // The second run ran 1 and 3 (failed), 5 and 6 (never recorded), not 2 or 4.
    let ran = std::fs::read_to_string(&runs).unwrap();
    let second: Vec<&str> = ran.lines().skip(6).collect();
    assert_eq!(
        sorted(second.iter().map(|s| s.to_string()).collect()),
        ["1", "3", "5", "6"]
    );
    let rows = joblog(&log);
    let ok: Vec<&str> = rows
        .iter()
        .filter(|r| r[6] == "0")
        .map(|r| r[0].as_str())
        .collect();
    assert_eq!(
        sorted(ok.iter().map(|s| s.to_string()).collect()),
        ["1", "2", "3", "4", "5", "6"]
    );
}

#[test]
fn cluster_jobs_are_recorded_once_when_a_node_dies() {
    let redis = Redis::start();
    let url = redis.url();
    let node = || {
        Guard(
            Command::new(BIN)
                .args(["worker", &url, "-j", "2", "--visibility-timeout", "1s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut a = node();
    let b = node();
    let dir = scratch("cluster");
    let log = dir.join("log.tsv");
    let inputs: Vec<String> = (1..=40).map(|i| i.to_string()).collect();
    let mut args = vec![
        "run",
        "--cluster",
        &url,
        "--joblog",
        log.to_str().unwrap(),
        "sh",
        "-c",
        "sleep 0.1; echo $(({} * 2))",
        ":::",
    ];
    args.extend(inputs.iter().map(String::as_str));
    let run = std::thread::spawn({
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        move || corral(&args.iter().map(String::as_str).collect::<Vec<_>>())
    });
    assert!(wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() > 6)
    }));
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let out = run.join().unwrap();
    drop(b);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let mut doubled: Vec<u64> = lines(&out).iter().map(|l| l.parse().unwrap()).collect();
    doubled.sort();
    assert_eq!(doubled, (1..=40).map(|i| i * 2).collect::<Vec<u64>>());
    let rows = joblog(&log);
    let mut seqs: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=40).collect::<Vec<u64>>(),
        "every job exactly once"
    );
    assert!(
        rows.iter().all(|r| r[1] != ":" && !r[1].is_empty()),
        "the node's host name"
    );
}

#[test]
fn no_job_waits_behind_a_long_one_and_slots_stay_unique() {
    // -j 2: while job 1 runs for 3 s, the other worker runs all the rest.
    let out = corral(&[
        "run",
        "-j",
        "2",
        "sh",
        "-c",
        "sleep {}; echo {}",
        ":::",
        "3",
        "0.1",
        "0.1",
        "0.1",
        "0.1",
    ]);
    assert_eq!(lines(&out), ["0.1", "0.1", "0.1", "0.1", "3"]);
    // A slot is held by one running job at a time: a job fails if its slot's
    // directory exists already.
    let dir = scratch("slots");
    let script = format!(
        "mkdir {d}/s{{%}} || exit 9; sleep 0.1; rmdir {d}/s{{%}}; echo {{%}}",
        d = dir.display()
    );
    let inputs: Vec<String> = (0..12).map(|i| i.to_string()).collect();
    let mut args = vec!["run", "-j", "3", script.as_str(), ":::"];
    args.extend(inputs.iter().map(String::as_str));
    let out = corral(&args);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let slots = sorted(lines(&out));
    assert_eq!(slots.len(), 12);
    assert!(
        slots.iter().all(|s| ["1", "2", "3"].contains(&s.as_str())),
        "{slots:?}"
    );
}

#[test]
fn a_worker_killed_under_a_job_fails_that_job_only() {
    let dir = scratch("worker-killed");
    let log = dir.join("log.tsv");
    let pids = dir.join("pids");
    // Job 2 writes its worker's pid (its parent) and waits to be killed.
    let script = format!(
        "if [ {{}} = 2 ]; then echo $PPID > {p}; sleep 30; fi; echo {{}}",
        p = pids.display()
    );
    let args: Vec<String> = [
        "run",
        "-k",
        "-j",
        "2",
        "--joblog",
        log.to_str().unwrap(),
        &script,
        ":::",
        "1",
        "2",
        "3",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run =
        std::thread::spawn(move || corral(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&pids).is_ok_and(|p| p.ends_with('\n'))
    }));
    let worker: u32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    corral_fixtures::sigkill(worker);
    let out = run.join().unwrap();
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines(&out), ["1", "3", "4"]);
    let rows = joblog(&log);
    assert_eq!(rows.len(), 4, "every job recorded once");
    let lost: Vec<&Vec<String>> = rows.iter().filter(|r| r[12] != "-").collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(
        (lost[0][0].as_str(), lost[0][12].as_str()),
        ("2", "worker-lost")
    );
}

#[test]
fn large_outputs_spill_to_disk_and_are_cleaned_up() {
    let dir = scratch("spill");
    // Three jobs of 20 MB each, grouped and in order: beyond the 8 MiB kept
    // in memory, the rest goes through the run's spill directory.
    let script = "head -c 20000000 /dev/zero | tr '\\0' {}";
    let out = Command::new(BIN)
        .args(["run", "-k", "-j", "3", script, ":::", "a", "b", "c"])
        .env("TMPDIR", dir.as_os_str())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), 60_000_000);
    for (i, c) in [b'a', b'b', b'c'].into_iter().enumerate() {
        let part = &out.stdout[i * 20_000_000..(i + 1) * 20_000_000];
        assert!(part.iter().all(|&b| b == c), "job {i} out of order or cut");
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

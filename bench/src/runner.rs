//! The `corral` command beside xargs -P, GNU parallel and rust-parallel,
//! each paired with a minimal spawn floor (`spawn-floor`) in the same run
//! (issue #13): 2,000 × `true` and 200 × a 10 ms job, at `-j 2`.
//!
//! CPU is counted for the runner and everything it starts, through a
//! cgroup v1 `cpuacct` group of the run's own (a runner whose helpers are
//! not its waited-for children would hide them from `getrusage`). Without
//! `cpuacct` the figures fall back to `RUSAGE_CHILDREN` and say so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{emit, median};

/// One runner: its name in the figures and the words before the job's program.
struct Runner {
    name: &'static str,
    prefix: Vec<String>,
}

/// The runners found on this machine (the absent ones are reported).
fn runners(dir: &Path) -> Vec<Runner> {
    let tools = Path::new("bench/.tools");
    let mut out = vec![
        Runner {
            name: "xargs",
            prefix: words(&["xargs", "-P2", "-n1"]),
        },
        Runner {
            name: "corral",
            prefix: vec![
                dir.join("corral").display().to_string(),
                "run".into(),
                "-q".into(),
                "-j2".into(),
            ],
        },
    ];
    let rust_parallel = tools.join("bin/rust-parallel");
    if rust_parallel.exists() {
        out.push(Runner {
            name: "rust-parallel",
            prefix: vec![rust_parallel.display().to_string(), "-j2".into()],
        });
    } else {
        eprintln!(
            "runner bench: rust-parallel absent ({} missing)",
            rust_parallel.display()
        );
    }
    let parallel = tools.join("parallel/usr/bin/parallel");
    if parallel.exists() {
        out.push(Runner {
            name: "GNU parallel",
            prefix: vec![
                parallel.display().to_string(),
                "--will-cite".into(),
                "-j2".into(),
            ],
        });
    } else {
        eprintln!(
            "runner bench: GNU parallel absent ({} missing)",
            parallel.display()
        );
    }
    out
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// Runs every runner on both workloads, alternating with the floor.
pub(crate) fn run(quick: bool) {
    let exe = std::env::current_exe().expect("own path");
    let dir = exe.parent().expect("target dir").to_path_buf();
    let meter = Meter::new();
    if !meter.exact() {
        eprintln!(
            "runner bench: no cpuacct cgroup; CPU from RUSAGE_CHILDREN (misses what a runner does not wait for)"
        );
    }
    let scale = if quick { 10 } else { 1 };
    let workloads = [
        ("true x2000", PathBuf::from("/bin/true"), 2000 / scale),
        ("10ms x200", dir.join("sleep10ms"), 200 / scale),
    ];
    let floor = Runner {
        name: "floor",
        prefix: vec![dir.join("spawn-floor").display().to_string(), "2".into()],
    };
    for (label, program, n) in &workloads {
        let input: String = (1..=*n).map(|i| format!("{i}\n")).collect();
        let (mut floor_wall, mut floor_cpu) = (Vec::new(), Vec::new());
        for runner in runners(&dir) {
            let (w, c) = meter.measure(&floor, program, &input);
            floor_wall.push(w);
            floor_cpu.push(c);
            let (wall, cpu) = meter.measure(&runner, program, &input);
            emit(&format!("runner {} {label} wall", runner.name), wall, "s");
            emit(&format!("runner {} {label} cpu", runner.name), cpu, "s");
        }
        emit(
            &format!("runner floor {label} wall"),
            median(floor_wall),
            "s",
        );
        emit(&format!("runner floor {label} cpu"), median(floor_cpu), "s");
    }
    emit(
        "runner cpu counted by cgroup",
        if meter.exact() { 1.0 } else { 0.0 },
        "bool",
    );
}

/// Wall and CPU time of one runner invocation, descendants included.
struct Meter {
    /// A cpuacct group of this run's own.
    group: Option<PathBuf>,
}

impl Meter {
    fn new() -> Meter {
        let group = own_cpuacct().and_then(|base| {
            let dir = base.join(format!("corral-bench-{}", std::process::id()));
            std::fs::create_dir(&dir).ok().map(|_| dir)
        });
        Meter { group }
    }

    fn exact(&self) -> bool {
        self.group.is_some()
    }

    /// Runs `runner` on `program` with `input` on its stdin.
    fn measure(&self, runner: &Runner, program: &Path, input: &str) -> (f64, f64) {
        let mut argv = runner.prefix.clone();
        argv.push(program.display().to_string());
        let mut cmd = match &self.group {
            // The shell joins the group, then becomes the runner.
            Some(g) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
                    .arg(g)
                    .args(&argv);
                c
            }
            None => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        let cpu_before = self.cpu();
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the runner");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("feed");
        let status = child.wait().expect("wait");
        let wall = started.elapsed().as_secs_f64();
        assert!(status.success(), "{} failed: {status}", runner.name);
        self.settle();
        (wall, self.cpu() - cpu_before)
    }

    /// Waits (≤ 5 s) until nothing of the last runner is left in the group.
    fn settle(&self) {
        let Some(g) = &self.group else { return };
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let procs = std::fs::read_to_string(g.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// CPU seconds used so far: by the group, or by reaped children.
    fn cpu(&self) -> f64 {
        match &self.group {
            Some(g) => {
                let ns: u64 = std::fs::read_to_string(g.join("cpuacct.usage"))
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0);
                ns as f64 / 1e9
            }
            None => children_cpu(),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if let Some(g) = &self.group {
            let _ = std::fs::remove_dir(g);
        }
    }
}

/// This process's cgroup in the v1 `cpuacct` hierarchy, if there is one.
fn own_cpuacct() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (controllers, path) = text
        .lines()
        .filter_map(|l| l.split_once(':').and_then(|(_, rest)| rest.split_once(':')))
        .find(|(c, _)| c.split(',').any(|c| c == "cpuacct"))?;
    let dir = PathBuf::from("/sys/fs/cgroup")
        .join(controllers)
        .join(path.trim_start_matches('/'));
    dir.join("cpuacct.usage").exists().then_some(dir)
}

fn children_cpu() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the zeroed, writable `rusage` it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

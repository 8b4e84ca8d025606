//! The randomized fault soak: in one pool, tasks that SIGKILL, abort,
//! segfault, exit, hang and panic, tasks whose arguments carry handles,
//! cancels, per-task and pool timeouts, workers SIGSTOPped from outside, and
//! plain spawns under a low descriptor limit, all at once. Every task must
//! end exactly once with its own outcome, the pool must never break, and
//! nothing may be left: children, descriptors, `/dev/shm`, threads.
//!
//! `CORRAL_SOAK=N` runs N tasks (default 3,000); `CORRAL_SOAK_SEED` picks
//! the random sequence (default 1). The soak runs in a forked child of the
//! test, whose descriptor limit it lowers, so that it counts its own
//! descriptors and children only.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral::{ExitStatus, Pool, Queue, StartMethod, Task, TaskError, TaskTimeout};
use corral_fixtures as fx;

corral::test_support!();

/// What a task is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
enum Kind {
    Value,
    Handle,
    Kill,
    Abort,
    Segfault,
    Exit,
    Panic,
    Hang,
    OwnTimeout,
    Cancel,
}

const KINDS: [(Kind, u64); 10] = [
    (Kind::Value, 700),
    (Kind::Handle, 150),
    (Kind::Kill, 20),
    (Kind::Abort, 20),
    (Kind::Segfault, 20),
    (Kind::Exit, 20),
    (Kind::Panic, 30),
    (Kind::Hang, 5),
    (Kind::OwnTimeout, 5),
    (Kind::Cancel, 30),
];

/// xorshift64*: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn kind(&mut self) -> Kind {
        let total: u64 = KINDS.iter().map(|(_, w)| w).sum();
        let mut pick = self.next() % total;
        for (kind, weight) in KINDS {
            if pick < weight {
                return kind;
            }
            pick -= weight;
        }
        unreachable!("weights cover the range")
    }
}

/// The task: does what its kind says, returns `x` and its worker's pid.
fn run((kind, x, handle): (Kind, u64, Option<Queue<u64>>)) -> (u64, u32) {
    match kind {
        Kind::Kill => fx::kill_self(()),
        Kind::Abort => fx::abort(()),
        Kind::Segfault => fx::segfault(()),
        Kind::Exit => fx::exit_with(3),
        Kind::Panic => panic!("task {x} panics"),
        Kind::Hang | Kind::OwnTimeout => fx::hang(()),
        Kind::Cancel => std::thread::sleep(Duration::from_millis(20)),
        Kind::Value | Kind::Handle => {}
    }
    drop(handle);
    (x, std::process::id())
}

/// Whether `outcome` is one that a task of `kind` may end with.
fn fits(kind: Kind, outcome: &Result<(u64, u32), TaskError>, x: u64) -> bool {
    match (kind, outcome) {
        (Kind::Value | Kind::Handle | Kind::Cancel, Ok((v, _))) => *v == x,
        (Kind::Kill, Err(TaskError::WorkerLost(ExitStatus::Signal(9)))) => true,
        (Kind::Abort, Err(TaskError::WorkerLost(ExitStatus::Signal(6)))) => true,
        (Kind::Segfault, Err(TaskError::WorkerLost(ExitStatus::Signal(11)))) => true,
        (Kind::Exit, Err(TaskError::WorkerLost(ExitStatus::Code(3)))) => true,
        (Kind::Panic, Err(TaskError::Panicked(p))) => p.message == format!("task {x} panics"),
        (Kind::Hang | Kind::OwnTimeout, Err(TaskError::TimedOut(_))) => true,
        (Kind::Cancel, Err(TaskError::Cancelled)) => true,
        // Under the lowered limit a handle may not be duplicable.
        (Kind::Handle, Err(TaskError::Codec(why))) => why.contains("Too many open files"),
        _ => false,
    }
}

/// The soak's findings, sent back to the test.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Report {
    tasks: u64,
    by_kind: Vec<(String, u64)>,
    /// Tasks that timed out because their worker was stopped while running
    /// them.
    stopped_running: u64,
    stops: u64,
    /// Handle tasks refused at submission for want of a descriptor.
    handles_refused: u64,
    spawns_ok: u64,
    spawns_refused: u64,
    wrong: Vec<String>,
    left: Vec<String>,
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Sends SIGSTOP to `pid` (a worker).
fn stop(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status();
}

fn soak((n, seed): (u64, u64)) -> Report {
    use rustix::process::{Resource, getrlimit, setrlimit};
    // This process's fork server (and its descriptors) first, then the
    // baseline, then a limit that the pool, queued handles and the spawns
    // beside them run into now and then.
    fx::done(corral::spawn(fx::exit_with, 0).unwrap()).unwrap_err();
    let (fds0, shm0, threads0) = (fx::open_fds(), fx::shm_entries(), threads());
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = Some(fds0 as u64 + 48);
    setrlimit(Resource::Nofile, limit).unwrap();

    let handle: Queue<u64> = Queue::bounded(1).unwrap();
    let pool = Pool::builder()
        .processes(3)
        .task_timeout(Duration::from_secs(1))
        .max_pending(400)
        .build()
        .unwrap();
    let pids = Arc::new(Mutex::new(BTreeSet::new()));
    let stops = Arc::new(AtomicU64::new(0));
    let (spawns_ok, spawns_refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let running = Arc::new(AtomicBool::new(true));
    // Beside the pool: plain spawns, short of descriptors now and then, and
    // a worker SIGSTOPped from outside every so often.
    let chaos = {
        let (pids, stops, running) = (pids.clone(), stops.clone(), running.clone());
        let (spawns_ok, spawns_refused) = (spawns_ok.clone(), spawns_refused.clone());
        std::thread::spawn(move || {
            let mut round = 0u64;
            while running.load(Ordering::SeqCst) {
                round += 1;
                match corral::spawn(fx::exit_with, 0) {
                    Ok(child) => {
                        let _ = fx::done(child);
                        spawns_ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        spawns_refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
                if round % 100 == 0
                    && let Some(&pid) = pids.lock().unwrap().iter().next_back()
                {
                    stop(pid);
                    stops.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let mut rng = Rng(seed.max(1));
    let mut by_kind: HashMap<Kind, u64> = HashMap::new();
    let mut wrong = Vec::new();
    let mut stopped_running = 0;
    let mut handles_refused = 0;
    let mut window: Vec<(Kind, u64, Task<(u64, u32)>)> = Vec::new();
    let mut settle = |(kind, x, task): (Kind, u64, Task<(u64, u32)>), wrong: &mut Vec<String>| {
        let outcome = match task.join_timeout(Duration::from_secs(60)) {
            Ok(v) => Ok(v),
            Err(TaskTimeout::Failed(e)) => Err(e),
            Err(TaskTimeout::Elapsed(_)) => {
                wrong.push(format!("task {x} ({kind:?}) still running after 60 s"));
                return;
            }
        };
        if let Ok((_, pid)) = &outcome {
            pids.lock().unwrap().insert(*pid);
        }
        let may_hang = matches!(kind, Kind::Hang | Kind::OwnTimeout);
        if matches!(outcome, Err(TaskError::Codec(_))) {
            handles_refused += 1;
        }
        if !may_hang && matches!(outcome, Err(TaskError::TimedOut(_))) {
            // Its worker was stopped while it ran.
            stopped_running += 1;
        } else if !fits(kind, &outcome, x) {
            wrong.push(format!("task {x} ({kind:?}): {outcome:?}"));
        }
    };
    for x in 0..n {
        let kind = rng.kind();
        *by_kind.entry(kind).or_default() += 1;
        let arg = (kind, x, (kind == Kind::Handle).then(|| handle.clone()));
        let task = match kind {
            Kind::OwnTimeout => pool.submit_with_timeout(run, arg, Duration::from_millis(200)),
            _ => pool.submit(run, arg),
        };
        if kind == Kind::Cancel {
            task.cancel();
        }
        window.push((kind, x, task));
        if window.len() >= 300 {
            for entry in window.drain(..150) {
                settle(entry, &mut wrong);
            }
        }
    }
    for entry in window.drain(..) {
        settle(entry, &mut wrong);
    }
    running.store(false, Ordering::SeqCst);
    chaos.join().unwrap();
    let stats = pool.stats();
    let mut left = Vec::new();
    if stats.submitted + handles_refused != n {
        left.push(format!(
            "submitted {} + refused {handles_refused} of {n}",
            stats.submitted
        ));
    }
    let workers: Vec<u32> = pids.lock().unwrap().iter().copied().collect();
    drop(pool);
    drop(handle);
    let settled = fx::wait_for(Duration::from_secs(10), || {
        workers.iter().all(|&p| fx::is_gone(p))
            && fx::open_fds() <= fds0
            && fx::shm_entries() == shm0
            && threads() <= threads0
            && fx::zombie_children().is_empty()
    });
    if !settled {
        left.push(format!(
            "workers alive: {:?}; fds {} (was {fds0}); /dev/shm {:?} (was {:?}); threads {} (was {threads0}); zombies {:?}",
            workers.iter().filter(|&&p| !fx::is_gone(p)).collect::<Vec<_>>(),
            fx::open_fds(),
            fx::shm_entries(),
            shm0,
            threads(),
            fx::zombie_children(),
        ));
    }
    let mut by_kind: Vec<(String, u64)> = by_kind
        .into_iter()
        .map(|(k, c)| (format!("{k:?}"), c))
        .collect();
    by_kind.sort();
    Report {
        tasks: n,
        by_kind,
        stopped_running,
        stops: stops.load(Ordering::SeqCst),
        handles_refused,
        spawns_ok: spawns_ok.load(Ordering::SeqCst),
        spawns_refused: spawns_refused.load(Ordering::SeqCst),
        wrong,
        left,
    }
}

#[test]
fn randomized_fault_soak() {
    let n: u64 = std::env::var("CORRAL_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let seed: u64 = std::env::var("CORRAL_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let started = Instant::now();
    let child = corral::Process::builder()
        .start_method(StartMethod::Fork)
        .spawn(soak, (n, seed))
        .unwrap();
    let limit = Duration::from_secs(300 + n / 100);
    let report = match child.join_timeout(limit) {
        Ok(report) => report,
        Err(corral::JoinTimeout::Elapsed(child)) => {
            let _ = child.kill();
            panic!("the soak did not finish in {limit:?}");
        }
        Err(corral::JoinTimeout::Failed(e)) => panic!("the soak failed: {e}"),
    };
    eprintln!("soak: {report:?} in {:?}", started.elapsed());
    assert!(report.wrong.is_empty(), "{:#?}", report.wrong);
    assert!(report.left.is_empty(), "{:#?}", report.left);
    assert!(
        report.stopped_running <= report.stops,
        "{} tasks timed out on {} stopped workers",
        report.stopped_running,
        report.stops
    );
    assert_eq!(report.tasks, n);
}

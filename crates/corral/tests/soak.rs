//! The randomized fault soak: in one pool, tasks that SIGKILL, abort,
//! segfault, exit, hang and panic, tasks whose arguments carry handles,
//! cancels, per-task and pool timeouts, workers SIGSTOPped from outside,
//! plain spawns under a low descriptor limit, `map_async` calls cancelled,
//! `imap` calls dropped half read, and the pool resized, all at once. Every task must
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
    resizes: u64,
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

/// Whether `pid` is, right now, a pool worker of this process: a child of
/// its fork server named `corral-worker` (pids are reused: `pid_max` may be
/// as low as 32,768, and a long soak goes through more).
fn our_worker(pid: u32) -> bool {
    let Some(server) = corral::internal::fork_server_pid() else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let comm_ok = stat.contains("(corral-worker)");
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1));
        comm_ok && ppid == Some(server.to_string().as_str())
    })
}

/// Workers of this process still alive.
fn live_workers() -> Vec<u32> {
    fx::server_children()
        .into_iter()
        .filter(|&p| our_worker(p))
        .collect()
}

/// Sends SIGSTOP to `pid`, if it is still one of this process's workers.
fn stop(pid: u32) {
    if !our_worker(pid) {
        return;
    }
    // The worker may be gone already: then there is nothing to stop.
    let _ = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// What the thread beside the pool did.
#[derive(Default)]
struct Chaos {
    /// Worker pids seen in results, most recent last.
    pids: Mutex<Vec<u32>>,
    stops: AtomicU64,
    resizes: AtomicU64,
    spawns_ok: AtomicU64,
    spawns_refused: AtomicU64,
    running: AtomicBool,
}

impl Chaos {
    /// Beside the pool: plain spawns, short of descriptors now and then, and
    /// a worker SIGSTOPped from outside every so often.
    fn run(&self, pool: &Pool) {
        let mut round = 0u64;
        while self.running.load(Ordering::SeqCst) {
            round += 1;
            let counter = match corral::spawn(fx::exit_with, 0) {
                Ok(child) => {
                    let _ = fx::done(child);
                    &self.spawns_ok
                }
                Err(_) => &self.spawns_refused,
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let last_worker = self.pids.lock().unwrap().last().copied();
            if round.is_multiple_of(100)
                && let Some(pid) = last_worker
            {
                stop(pid);
                self.stops.fetch_add(1, Ordering::SeqCst);
            }
            if round.is_multiple_of(60) {
                // Between two and four workers: extra ones retire between
                // tasks, new ones start at once.
                pool.resize(2 + (round / 60 % 3) as usize).unwrap();
                self.resizes.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A submitted task and what it was asked to do.
struct Pending {
    kind: Kind,
    x: u64,
    task: Task<(u64, u32)>,
}

/// The outcomes seen so far.
#[derive(Default)]
struct Tally {
    wrong: Vec<String>,
    stopped_running: u64,
    handles_refused: u64,
    /// Items submitted by the `map_async` and `imap` calls.
    extra: u64,
}

/// Whole-call cancellation beside the tasks: a `map_async` cancelled (at
/// once or not) ends with every value or `Cancelled`; an `imap` read in
/// part yields exact values and, dropped, leaves nothing behind.
fn calls(pool: &Pool, rng: &mut Rng, tally: &mut Tally) {
    let xs: Vec<u64> = (0..20).map(|i| 1_000_000 + i).collect();
    let args = || xs.iter().map(|&x| (Kind::Value, x, None::<Queue<u64>>));
    let all = pool.map_async(run, args());
    if rng.next().is_multiple_of(2) {
        all.cancel();
    }
    match all.join_timeout(Duration::from_secs(60)) {
        Ok(values) => {
            let got: Vec<u64> = values.iter().map(|(v, _)| *v).collect();
            if got != xs {
                tally.wrong.push(format!("map_async returned {got:?}"));
            }
        }
        Err(TaskTimeout::Failed(TaskError::Cancelled)) => {}
        Err(TaskTimeout::Failed(e)) => tally.wrong.push(format!("map_async failed: {e}")),
        Err(TaskTimeout::Elapsed(_)) => tally
            .wrong
            .push("map_async still running after 60 s".into()),
    }
    let read = (rng.next() % 5) as usize;
    for (i, outcome) in pool.imap(run, args()).take(read).enumerate() {
        match outcome {
            // A stopped worker may time an item out.
            Ok((v, _)) if v == xs[i] => {}
            Err(TaskError::TimedOut(_)) => tally.stopped_running += 1,
            other => tally.wrong.push(format!("imap item {i}: {other:?}")),
        }
    }
    // (An imap that is never read pulls nothing: its input is lazy.)
    tally.extra += if read > 0 { 40 } else { 20 };
}

impl Tally {
    fn settle(&mut self, Pending { kind, x, task }: Pending, chaos: &Chaos) {
        let outcome = match task.join_timeout(Duration::from_secs(60)) {
            Ok(v) => Ok(v),
            Err(TaskTimeout::Failed(e)) => Err(e),
            Err(TaskTimeout::Elapsed(_)) => {
                self.wrong
                    .push(format!("task {x} ({kind:?}) still running after 60 s"));
                return;
            }
        };
        if let Ok((_, pid)) = &outcome {
            let mut pids = chaos.pids.lock().unwrap();
            pids.retain(|p| p != pid);
            pids.push(*pid);
            let excess = pids.len().saturating_sub(16);
            pids.drain(..excess);
        }
        if matches!(outcome, Err(TaskError::Codec(_))) {
            self.handles_refused += 1;
        }
        let may_hang = matches!(kind, Kind::Hang | Kind::OwnTimeout);
        if !may_hang && matches!(outcome, Err(TaskError::TimedOut(_))) {
            // Its worker was stopped while it ran.
            self.stopped_running += 1;
        } else if !fits(kind, &outcome, x) {
            self.wrong.push(format!("task {x} ({kind:?}): {outcome:?}"));
        }
    }
}

/// Submits `n` random tasks, settling them in windows.
fn drive(
    pool: &Pool,
    handle: &Queue<u64>,
    n: u64,
    seed: u64,
    chaos: &Chaos,
) -> (Tally, Vec<(String, u64)>) {
    let mut rng = Rng(seed.max(1));
    let mut by_kind: HashMap<Kind, u64> = HashMap::new();
    let mut tally = Tally::default();
    let mut window: Vec<Pending> = Vec::new();
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
        window.push(Pending { kind, x, task });
        if x % 250 == 249 {
            calls(pool, &mut rng, &mut tally);
        }
        if window.len() >= 300 {
            window.drain(..150).for_each(|p| tally.settle(p, chaos));
        }
    }
    window.drain(..).for_each(|p| tally.settle(p, chaos));
    let mut by_kind: Vec<(String, u64)> = by_kind
        .into_iter()
        .map(|(k, c)| (format!("{k:?}"), c))
        .collect();
    by_kind.sort();
    (tally, by_kind)
}

/// This process's descriptors, `/dev/shm` entries and threads.
fn resources() -> (usize, BTreeSet<String>, usize) {
    (fx::open_fds(), fx::shm_entries(), threads())
}

fn soak((n, seed): (u64, u64)) -> Report {
    use rustix::process::{Resource, getrlimit, setrlimit};
    // This process's fork server (and its descriptors) first, then the
    // baseline, then a limit that the pool, queued handles and the spawns
    // beside them run into now and then.
    fx::done(corral::spawn(fx::exit_with, 0).unwrap()).unwrap_err();
    let before = resources();
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = Some(before.0 as u64 + 48);
    setrlimit(Resource::Nofile, limit).unwrap();

    let handle: Queue<u64> = Queue::bounded(1).unwrap();
    let pool = Arc::new(
        Pool::builder()
            .processes(3)
            .task_timeout(Duration::from_secs(1))
            .max_pending(400)
            .build()
            .unwrap(),
    );
    let chaos = Arc::new(Chaos {
        running: AtomicBool::new(true),
        ..Chaos::default()
    });
    let beside = {
        let (chaos, pool) = (chaos.clone(), pool.clone());
        std::thread::spawn(move || chaos.run(&pool))
    };
    let (tally, by_kind) = drive(&pool, &handle, n, seed, &chaos);
    chaos.running.store(false, Ordering::SeqCst);
    beside.join().unwrap();

    let mut left = Vec::new();
    let submitted = pool.stats().submitted;
    if submitted + tally.handles_refused != n + tally.extra {
        left.push(format!(
            "submitted {submitted} + refused {} of {n} + {}",
            tally.handles_refused, tally.extra
        ));
    }
    drop((pool, handle));
    let settled = fx::wait_for(Duration::from_secs(10), || {
        let now = resources();
        live_workers().is_empty()
            && now.0 <= before.0
            && now.1 == before.1
            && now.2 <= before.2
            && fx::zombie_children().is_empty()
    });
    if !settled {
        left.push(format!(
            "workers alive {:?}; (fds, /dev/shm, threads) {:?}, was {before:?}; zombies {:?}",
            live_workers(),
            resources(),
            fx::zombie_children(),
        ));
    }
    Report {
        tasks: n,
        by_kind,
        stopped_running: tally.stopped_running,
        stops: chaos.stops.load(Ordering::SeqCst),
        resizes: chaos.resizes.load(Ordering::SeqCst),
        handles_refused: tally.handles_refused,
        spawns_ok: chaos.spawns_ok.load(Ordering::SeqCst),
        spawns_refused: chaos.spawns_refused.load(Ordering::SeqCst),
        wrong: tally.wrong,
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

//! Regression tests for the promises that broke under attack (issue #9):
//! each test names the class of defect it guards, with real processes and
//! every wait bounded.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use corral::{Pool, Queue, StartMethod, Task, TaskError};
use corral_fixtures as fx;
use corral_fixtures::within;

corral::test_support!();

use corral_fixtures::task_done as done;

fn square(x: u64) -> u64 {
    x * x
}

fn pid(_: u64) -> u32 {
    std::process::id()
}

fn with_queue((queue, x): (Queue<u64>, u64)) -> u64 {
    drop(queue);
    x * 2
}

/// Class 1: batches carrying more descriptors than one message can hold.
#[test]
fn tasks_carrying_handles_never_wedge_the_pool() {
    within(Duration::from_secs(120), || {
        let queue: Queue<u64> = Queue::bounded(4).unwrap();
        let pool = Pool::new(2).unwrap();
        let tasks: Vec<Task<u64>> = (0..1_000u64)
            .map(|x| pool.submit(with_queue, (queue.clone(), x)))
            .collect();
        let total: u64 = tasks.into_iter().map(|t| done(t).unwrap()).sum();
        assert_eq!(total, (0..1_000u64).map(|x| x * 2).sum::<u64>());
        let items: Vec<(Queue<u64>, u64)> = (0..1_200u64).map(|x| (queue.clone(), x)).collect();
        let mapped = pool.map(with_queue, items).unwrap();
        assert_eq!(mapped.len(), 1_200);
        assert_eq!(mapped[1_199], 2_398);
        // Every worker still takes work, and dropping the pool ends.
        assert_eq!(pool.map(square, 0..100u64).unwrap()[9], 81);
        drop(pool);
    });
}

fn maybe_die(x: u64) -> u64 {
    if x % 50 == 49 {
        fx::kill_self(());
    }
    x
}

/// Class 2: a failed send to a worker that just died made its death look like
/// a start-up failure; enough of them broke the pool for good.
#[test]
fn a_pool_whose_tasks_crash_never_breaks() {
    within(Duration::from_secs(180), || {
        for round in 0..3 {
            let pool = Pool::new(2).unwrap();
            let tasks: Vec<Task<u64>> = (0..2_000u64).map(|x| pool.submit(maybe_die, x)).collect();
            let (mut ok, mut lost) = (0, 0);
            for (x, task) in tasks.into_iter().enumerate() {
                match done(task) {
                    Ok(v) => {
                        assert_eq!(v, x as u64);
                        ok += 1;
                    }
                    Err(TaskError::WorkerLost(_)) => {
                        assert_eq!(x % 50, 49, "only the crashing tasks fail");
                        lost += 1;
                    }
                    Err(e) => panic!("round {round}, task {x}: {e}"),
                }
            }
            assert_eq!((ok, lost), (1_960, 40), "round {round}");
            assert_eq!(pool.apply(square, 3).unwrap(), 9);
        }
    });
}

/// Starts `sleep 1000` in the worker's process group, reports its pid and
/// hangs.
fn start_sleeper_and_hang(report: Queue<u32>) {
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("sleep");
    report.put(child.id()).unwrap();
    // Never returns: the task hangs until the pool ends it.
    loop {
        std::thread::park();
    }
    #[expect(unreachable_code, reason = "the child is left to the pool's kill")]
    drop(child.wait());
}

/// Starts `sleep 1000` in a session of its own (out of the worker's process
/// group) whose parent exits at once, reports its pid and hangs.
fn start_daemon_and_hang(report: Queue<u32>) {
    run_sh_then_hang(
        "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!",
        &report,
    );
}

/// A pool of one worker whose tasks time out after `limit`.
fn one_timed_worker(limit: Duration) -> Pool {
    Pool::builder()
        .processes(1)
        .task_timeout(limit)
        .build()
        .unwrap()
}

/// Runs `script` with `sh`, reports each pid it prints and hangs (the task
/// never returns: the pool ends it).
fn run_sh_then_hang(script: &str, report: &Queue<u32>) -> ! {
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("sh");
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        report.put(pid.parse().unwrap()).unwrap();
    }
    loop {
        std::thread::park();
    }
}

/// Class 3: a descendant that left the worker's process group (a daemon in
/// its own session, orphaned) dies with the worker too.
#[test]
fn an_escaped_daemon_dies_with_its_timed_out_worker() {
    within(Duration::from_secs(60), || {
        // The timeout must cover starting `sh` in a loaded worker: 500 ms
        // did not, once, in CI (the task was killed before it reported).
        let pool = one_timed_worker(Duration::from_secs(2));
        let timed_out = |e: &TaskError| matches!(e, TaskError::TimedOut(_));
        let limit = Duration::from_secs(5);
        ends_with_its_task(&pool, start_daemon_and_hang, |_| {}, timed_out, limit).unwrap();
    });
}

/// How many exec-looping daemons `start_execing_daemons_and_hang` starts.
const EXECING: usize = 64;

/// Starts [`EXECING`] daemons, each in a session of its own and orphaned at
/// once, that `exec` themselves over and over; reports their pids and
/// hangs. A process in the middle of an `exec` shows an empty environment
/// in `/proc` (about 5 % of the time for such a loop), where the fork
/// server looks for the mark of the worker an orphan descends from. At the
/// lowest priority, so that the server, with a sweep to make, is not kept
/// waiting for a CPU by them.
fn start_execing_daemons_and_hang(report: Queue<u32>) {
    let script = format!(
        "export LOOP='exec sh -c \"$LOOP\"'; for i in $(seq {EXECING}); do \
         setsid nice -n 19 sh -c \"$LOOP\" </dev/null >/dev/null 2>&1 & echo $!; done"
    );
    run_sh_then_hang(&script, &report);
}

/// Class 3: daemons adopted while they `exec` still die with their timed-out
/// worker. Their environment in `/proc` reads empty for a moment, or cut
/// short when read in pieces across an `exec`; either was taken for an
/// unmarked orphan's, for good, and a daemon outlived its worker (seen once
/// in CI, in `an_escaped_daemon_dies_with_its_timed_out_worker`).
#[test]
fn daemons_adopted_in_the_middle_of_an_exec_die_with_their_worker() {
    within(Duration::from_secs(60), || {
        // Long enough for `sh` to start them all in a loaded worker.
        let pool = one_timed_worker(Duration::from_secs(4));
        // Each round misses some daemon about half the time without the
        // fix (measured); two rounds, three times in four.
        for round in 0..2 {
            let report: Queue<u32> = Queue::unbounded().unwrap();
            let task = pool.submit(start_execing_daemons_and_hang, report.clone());
            let pids: Vec<u32> = (0..EXECING)
                .map(|_| report.get_timeout(Duration::from_secs(20)).unwrap())
                .collect();
            assert!(matches!(done(task), Err(TaskError::TimedOut(_))));
            // Generous: the server kills 64 busy processes one by one, on
            // a machine CI may load besides.
            fx::wait_for(Duration::from_secs(10), || {
                pids.iter().all(|&p| fx::is_gone(p))
            });
            let survivors: Vec<u32> = pids.into_iter().filter(|&p| !fx::is_gone(p)).collect();
            for &pid in &survivors {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            assert!(
                survivors.is_empty(),
                "round {round}: daemons {survivors:?} outlived their worker"
            );
        }
    });
}

/// Starts `sleep 0.3` whose parent (`sh`) exits at once, so that the fork
/// server adopts it; its pid.
fn leave_an_orphan(_: ()) -> u32 {
    let out = std::process::Command::new("sh")
        .args(["-c", "sleep 0.3 </dev/null >/dev/null 2>&1 & echo $!"])
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn nothing(_: ()) {}

/// Class 3: an orphan the fork server adopted (no worker's) is reaped when
/// it exits, with the server idle and while back-to-back starts keep coming
/// (its sweep for orphans waits for a moment with nothing to do). No zombie
/// is left.
#[test]
fn an_adopted_orphan_is_reaped_even_while_starts_keep_the_server_busy() {
    within(Duration::from_secs(60), || {
        for busy in [false, true] {
            let pid = corral::spawn(leave_an_orphan, ()).unwrap().join().unwrap();
            let server = corral::internal::fork_server_pid().expect("a fork server");
            let adopted = fx::parent_of(pid);
            assert!(
                adopted.is_none_or(|p| p == server),
                "orphan {pid}'s parent is {adopted:?}, not the fork server {server}"
            );
            let reaped = || fx::parent_of(pid).is_none();
            let since = Instant::now();
            while busy && !reaped() && since.elapsed() < Duration::from_secs(5) {
                corral::spawn(nothing, ()).unwrap().join().unwrap();
            }
            assert!(
                fx::wait_for(Duration::from_secs(5), reaped),
                "orphan {pid} still there (a zombie?) 5 s after (busy: {busy})"
            );
            if busy {
                assert!(
                    since.elapsed() < Duration::from_secs(5),
                    "orphan {pid} was reaped only once the starts stopped"
                );
            }
        }
    });
}

/// Runs `start` (which reports the pid of a subprocess it leaves behind,
/// then hangs), ends the task with `end`, checks it ended as `expected` and
/// that the subprocess is gone within `limit`.
fn ends_with_its_task(
    pool: &Pool,
    start: fn(Queue<u32>),
    end: impl FnOnce(&Task<()>),
    expected: fn(&TaskError) -> bool,
    limit: Duration,
) -> Result<(), String> {
    let report: Queue<u32> = Queue::unbounded().unwrap();
    let task = pool.submit(start, report.clone());
    let pid = report
        .get_timeout(Duration::from_secs(10))
        .map_err(|e| format!("the task never reported its subprocess: {e:?}"))?;
    if fx::is_gone(pid) {
        return Err(format!("subprocess {pid} never ran"));
    }
    end(&task);
    match done(task) {
        Err(e) if expected(&e) => {}
        other => return Err(format!("the task ended with {other:?}")),
    }
    if !fx::wait_for(limit, || fx::is_gone(pid)) {
        return Err(format!("subprocess {pid} survived its task"));
    }
    Ok(())
}

/// Class 3: a timed-out, cancelled or terminated task's subprocesses die
/// with it.
#[test]
fn a_task_subprocesses_die_with_its_timeout_cancel_or_terminate() {
    within(Duration::from_secs(60), || {
        let limit = Duration::from_secs(2);
        // Long enough for the task to start `sleep` and report it on a
        // loaded machine.
        let timed = Pool::builder()
            .processes(2)
            .task_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let timed_out = |e: &TaskError| matches!(e, TaskError::TimedOut(_));
        ends_with_its_task(&timed, start_sleeper_and_hang, |_| {}, timed_out, limit)
            .map_err(|e| format!("timeout: {e}"))
            .unwrap();
        let pool = Pool::new(1).unwrap();
        let cancelled = |e: &TaskError| matches!(e, TaskError::Cancelled);
        ends_with_its_task(
            &pool,
            start_sleeper_and_hang,
            |t| t.cancel(),
            cancelled,
            limit,
        )
        .map_err(|e| format!("cancel: {e}"))
        .unwrap();
        let closed = |e: &TaskError| matches!(e, TaskError::PoolClosed);
        ends_with_its_task(
            &pool,
            start_sleeper_and_hang,
            |_| pool.terminate(),
            closed,
            limit,
        )
        .map_err(|e| format!("terminate: {e}"))
        .unwrap();
    });
}

/// Class 6: `Duration::MAX` and other huge limits mean "no limit".
#[test]
fn huge_timeouts_saturate() {
    within(Duration::from_secs(60), || {
        let pool = Pool::builder()
            .processes(2)
            .task_timeout(Duration::MAX)
            .build()
            .unwrap();
        assert_eq!(pool.map(square, 0..50u64).unwrap()[7], 49);
        let t = pool.submit_with_timeout(square, 5, Duration::MAX);
        assert_eq!(t.join_timeout(Duration::MAX).unwrap(), 25);
        let tasks: Vec<Task<u64>> = (0..4).map(|x| pool.submit(square, x)).collect();
        assert!(corral::wait_all(&tasks, Some(Duration::MAX)));
        assert!(corral::wait_any(&tasks, Some(Duration::MAX)).is_some());
        let child = corral::spawn(square, 6).unwrap();
        assert_eq!(child.join_timeout(Duration::MAX).unwrap(), 36);
        assert_eq!(pool.stats().timed_out, 0);
        let near_max = Duration::from_secs(u64::MAX / 2);
        let t = pool.submit_with_timeout(square, 7, near_max);
        assert_eq!(done(t).unwrap(), 49);
    });
}

fn signal(pid: u32, sig: i32) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Class 9: tasks handed to a worker stopped while idle still end, within
/// their limit (the stalled worker's batch moves).
#[test]
fn a_stopped_idle_worker_does_not_hold_tasks_forever() {
    within(Duration::from_secs(60), || {
        let pool = Pool::builder()
            .processes(2)
            .task_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let mut pids = HashSet::new();
        while pids.len() < 2 {
            pids.extend(pool.map_chunked(pid, 0..64u64, 1).unwrap());
        }
        for &p in &pids {
            signal(p, 19); // SIGSTOP
        }
        let started = Instant::now();
        let results = pool.map(square, 0..40u64).unwrap();
        assert_eq!(results[39], 39 * 39);
        assert!(started.elapsed() < Duration::from_secs(20));
        for &p in &pids {
            assert!(
                fx::wait_for(Duration::from_secs(5), || fx::is_gone(p)),
                "stopped worker {p} was not replaced"
            );
        }
        assert!(pool.stats().workers_replaced >= 2);
    });
}

/// Class 14: zero limits are refused with a clear error (Python raises
/// `ValueError`), not silently taken as 1.
#[test]
fn zero_limits_are_refused() {
    let err = Pool::builder().max_tasks_per_child(0).build().unwrap_err();
    assert!(err.to_string().contains("max_tasks_per_child"), "{err}");
    let err = Pool::builder().max_pending(0).build().unwrap_err();
    assert!(err.to_string().contains("max_pending"), "{err}");
    let pool = Pool::new(1).unwrap();
    let err = pool.map_chunked(square, 0..4u64, 0).unwrap_err();
    assert!(matches!(err, TaskError::InvalidArgument(_)), "{err}");
}

fn cwd_and_env(_: ()) -> (String, Option<String>) {
    (
        std::env::current_dir().unwrap().display().to_string(),
        std::env::var("CORRAL_TEST_LATE").ok(),
    )
}

/// Class 7: children follow the parent's working directory and environment
/// at the moment they start, under every start method.
#[test]
#[expect(
    unsafe_code,
    reason = "set_var/remove_var: edition 2024 marks them unsafe"
)]
fn children_follow_the_current_directory_and_environment() {
    // This test alone changes them; the others do not read them.
    let dir = std::env::temp_dir().canonicalize().unwrap();
    let before = std::env::current_dir().unwrap();
    std::env::set_current_dir(&dir).unwrap();
    // SAFETY: set_var is unsafe in edition 2024 because other threads may
    // read the environment; no other test of this binary reads this name.
    unsafe { std::env::set_var("CORRAL_TEST_LATE", "yes") };
    for method in [
        StartMethod::ForkServer,
        StartMethod::Spawn,
        StartMethod::Fork,
    ] {
        let child = corral::Process::builder()
            .start_method(method)
            .spawn(cwd_and_env, ())
            .unwrap();
        let (cwd, env) = fx::done(child).unwrap();
        assert_eq!(cwd, dir.display().to_string(), "{method:?}");
        assert_eq!(env.as_deref(), Some("yes"), "{method:?}");
    }
    // SAFETY: as above.
    unsafe { std::env::remove_var("CORRAL_TEST_LATE") };
    std::env::set_current_dir(before).unwrap();
}

fn worker_pids(pool: &Pool) -> HashSet<u32> {
    let mut pids = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.len() < pool.processes() && Instant::now() < deadline {
        pids.extend(pool.map_chunked(pid, 0..64u64, 1).unwrap());
    }
    pids
}

/// What happened to spawns under descriptor pressure, seen from inside.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Pressure {
    /// By start method: what each attempt came to.
    refused: Vec<(StartMethod, String)>,
    pool_survived: bool,
    same_workers: bool,
    spawn_after: u64,
}

fn spawn_under_pressure() -> Pressure {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let pool = Pool::new(2).unwrap();
    let before = worker_pids(&pool);
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = Some(fx::open_fds() as u64 + 16);
    setrlimit(Resource::Nofile, limit).unwrap();
    let mut hoard = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hoard.push(f);
    }
    let mut refused = Vec::new();
    // None left at all, then exactly enough for the result socket and the
    // status pipe but not for the new child's pidfd (a ForkServer start
    // through the server's spare needs none of these).
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        for free in [0, 4, 4, 0] {
            for _ in 0..free {
                hoard.pop();
            }
            let builder = corral::Process::builder().start_method(method);
            match builder.spawn(square, 2) {
                Ok(child) => refused.push((method, format!("started: {:?}", fx::done(child)))),
                Err(e) => refused.push((method, e.to_string())),
            }
            while let Ok(f) = std::fs::File::open("/dev/null") {
                hoard.push(f);
            }
        }
    }
    let pool_survived = pool.map(square, 0..100u64).is_ok_and(|v| v[9] == 81);
    let same_workers = worker_pids(&pool) == before;
    drop(hoard);
    let spawn_after = fx::done(corral::spawn(square, 9).unwrap()).unwrap();
    Pressure {
        refused,
        pool_survived,
        same_workers,
        spawn_after,
    }
}

/// Class 4: one spawn short of descriptors fails alone; the fork server is
/// not restarted and no other child dies.
#[test]
fn a_spawn_out_of_descriptors_fails_alone() {
    let child = corral::Process::builder()
        .start_method(StartMethod::Fork)
        .fork_closure(spawn_under_pressure)
        .unwrap();
    let seen = fx::done(child).unwrap();
    assert_eq!(seen.refused.len(), 8, "{seen:?}");
    assert_eq!(seen.refused[4].0, StartMethod::Spawn);
    assert!(seen.refused[5].1.contains("pidfd"), "{seen:?}");
    for (method, message) in &seen.refused {
        let started = *method == StartMethod::ForkServer && message == "started: Ok(4)";
        assert!(started || message.contains("descriptor"), "{message}");
    }
    assert!(
        seen.refused.iter().any(|(_, m)| m.contains("descriptor")),
        "{seen:?}"
    );
    assert!(seen.pool_survived && seen.same_workers, "{seen:?}");
    assert_eq!(seen.spawn_after, 81);
}

#[test]
fn init_raises_the_descriptor_limit() {
    use rustix::process::{Resource, getrlimit};
    let limit = getrlimit(Resource::Nofile);
    assert_eq!(limit.current, limit.maximum);
}

fn ignore_sigchld_then_fork() -> (u64, u64) {
    // SAFETY: installing SIG_IGN for SIGCHLD touches no memory; this process
    // is a forked child with one thread.
    #[expect(unsafe_code, reason = "signal(2) has no safe wrapper in rustix")]
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN)
    };
    let forked = corral::Process::builder()
        .start_method(StartMethod::Fork)
        .spawn(square, 7)
        .unwrap();
    let served = corral::spawn(square, 8).unwrap();
    (fx::done(forked).unwrap(), fx::done(served).unwrap())
}

/// Class 12: with SIGCHLD ignored the kernel reaps Fork children itself;
/// their result, which already arrived, is still returned.
#[test]
fn results_survive_an_ignored_sigchld() {
    let child = corral::Process::builder()
        .start_method(StartMethod::Fork)
        .fork_closure(ignore_sigchld_then_fork)
        .unwrap();
    assert_eq!(fx::done(child).unwrap(), (49, 64));
}

/// Mounts a 1 MiB tmpfs over `/dev/shm` in a private mount namespace of
/// this (forked, single-threaded) process: Docker's small `/dev/shm`, made
/// smaller. Needs root or unprivileged user namespaces.
#[expect(
    unsafe_code,
    reason = "unshare(2) and mount(2) have no safe wrapper here"
)]
fn tiny_dev_shm() -> Result<(), String> {
    let errno = || std::io::Error::last_os_error().to_string();
    // SAFETY: unshare and mount take no pointers but the C strings below,
    // which outlive the calls.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0
            && libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0
        {
            return Err(format!("unshare: {}", errno()));
        }
        let none = std::ptr::null();
        if libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            none.cast(),
        ) != 0
        {
            return Err(format!("making mounts private: {}", errno()));
        }
        let options = c"size=1m";
        if libc::mount(
            c"tmpfs".as_ptr(),
            c"/dev/shm".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            options.as_ptr().cast(),
        ) != 0
        {
            return Err(format!("mounting a tmpfs: {}", errno()));
        }
    }
    Ok(())
}

fn fill_tiny_dev_shm() -> Result<(bool, String, bool), String> {
    tiny_dev_shm()?;
    let name = format!("corral-tiny-{}", std::process::id());
    let small = corral::SharedMemory::create(&format!("{name}-a"), 256 << 10);
    let big = corral::SharedMemory::create(&format!("{name}-b"), 4 << 20);
    let error = match &big {
        Ok(_) => "created".to_owned(),
        Err(e) => e.to_string(),
    };
    let left_no_entry = !std::path::Path::new(&format!("/dev/shm/{name}-b")).exists();
    // Anonymous memory (memfd) is not bound by /dev/shm's size: 4 MiB of
    // it is made and written through under the 1 MiB /dev/shm.
    let anonymous = corral::SharedMemory::new(4 << 20).unwrap();
    anonymous.write(0, &vec![7u8; 4 << 20]);
    let queue: Queue<Vec<u8>> = Queue::with_buffer(None, 4 << 20).unwrap();
    queue.put(vec![1u8; 3 << 20]).unwrap();
    let mut last = [0u8; 1];
    anonymous.read((4 << 20) - 1, &mut last);
    let memfd_ok = last == [7] && queue.get().unwrap().len() == 3 << 20;
    Ok((small.is_ok(), error, left_no_entry && memfd_ok))
}

/// Class 8: a segment that does not fit in `/dev/shm` is the constructor's
/// error (with what to do), never a SIGBUS at the first write; anonymous
/// shared memory (memfd: queues, values, worker regions) does not depend on
/// `/dev/shm`'s size at all.
#[test]
fn a_full_dev_shm_fails_at_creation() {
    let child = corral::Process::builder()
        .start_method(StartMethod::Fork)
        .fork_closure(fill_tiny_dev_shm)
        .unwrap();
    let (small_ok, error, no_entry) = fx::done(child)
        .unwrap()
        .unwrap_or_else(|why| panic!("this test needs a private mount namespace: {why}"));
    assert!(small_ok);
    assert!(error.contains("shm-size"), "{error}");
    assert!(
        no_entry,
        "the failed segment was left in /dev/shm, or anonymous memory failed"
    );
}

fn numbers_then_panic(n: u64) -> impl Iterator<Item = u64> + Send + 'static {
    (0..).inspect(move |&x| assert!(x < n, "the input ran dry at {x}"))
}

/// Class 14: an input iterator that panics inside `imap` surfaces after the
/// results of the items before it, as Python raises it there.
#[test]
fn a_panicking_imap_input_surfaces_after_the_results_before_it() {
    let pool = Pool::new(2).unwrap();
    for ordered in [true, false] {
        let mut seen = Vec::new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let results: Box<dyn Iterator<Item = Result<u64, TaskError>>> = if ordered {
                Box::new(pool.imap(square, numbers_then_panic(300)))
            } else {
                Box::new(pool.imap_unordered(square, numbers_then_panic(300)))
            };
            for r in results {
                seen.push(r.unwrap());
            }
        }));
        let panic = outcome.expect_err("the input's panic surfaces");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("ran dry at 300"), "{message}");
        seen.sort_unstable();
        assert_eq!(seen, (0..300u64).map(square).collect::<Vec<_>>());
    }
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
}

/// A value whose `Drop` aborts the process it was made in (only there: the
/// flag does not cross).
#[derive(serde::Serialize, serde::Deserialize)]
struct AbortsOnDrop {
    value: u64,
    #[serde(skip)]
    armed: bool,
}

impl Drop for AbortsOnDrop {
    fn drop(&mut self) {
        if self.armed {
            std::process::abort();
        }
    }
}

fn make_aborting(value: u64) -> AbortsOnDrop {
    AbortsOnDrop { value, armed: true }
}

/// Class 14: a worker or child that dies in its result's `Drop`, after the
/// result was serialized, still delivers it (published first, dropped
/// after).
#[test]
fn a_death_in_the_results_drop_loses_nothing() {
    let pool = Pool::new(2).unwrap();
    let results = pool.map_chunked(make_aborting, 0..20u64, 1).unwrap();
    let values: Vec<u64> = results.iter().map(|r| r.value).collect();
    assert_eq!(values, (0..20u64).collect::<Vec<_>>());
    let task = pool.submit(make_aborting, 7);
    assert_eq!(done(task).unwrap().value, 7);
    let child = corral::spawn(make_aborting, 9).unwrap();
    assert_eq!(fx::done(child).unwrap().value, 9);
    assert_eq!(pool.stats().lost, 0);
}

/// Class 15: `imap` over an input of known length has an exact length, so
/// `indicatif`'s `.progress()` can wrap it.
#[test]
fn imap_knows_its_length() {
    fn total<I: ExactSizeIterator>(i: &I) -> usize {
        i.len()
    }
    let pool = Pool::new(2).unwrap();
    let mut results = pool.imap(square, (0..100u64).collect::<Vec<_>>());
    assert_eq!(total(&results), 100);
    results.by_ref().take(10).for_each(drop);
    assert_eq!(total(&results), 90);
    assert_eq!(results.count(), 90);
    let unordered = pool.imap_unordered(square, vec![1u64, 2, 3]);
    assert_eq!(unordered.size_hint(), (3, Some(3)));
}

fn comm(_: u64) -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_owned()
}

/// Class 15: `ps` tells the fork server, workers and children apart, under
/// every start method.
#[test]
fn processes_are_named_for_ps() {
    for method in [
        StartMethod::ForkServer,
        StartMethod::Spawn,
        StartMethod::Fork,
    ] {
        let child = corral::Process::builder()
            .name("reporter")
            .start_method(method)
            .spawn(comm, 0)
            .unwrap();
        assert_eq!(fx::done(child).unwrap(), "reporter", "{method:?}");
        let pool = Pool::builder()
            .processes(1)
            .start_method(method)
            .build()
            .unwrap();
        assert_eq!(pool.apply(comm, 0).unwrap(), "corral-worker", "{method:?}");
    }
    let unnamed = fx::done(corral::spawn(comm, 0).unwrap()).unwrap();
    assert_eq!(unnamed, "corral-child");
    let server = corral::internal::fork_server_pid().unwrap();
    let name = std::fs::read_to_string(format!("/proc/{server}/comm")).unwrap();
    assert_eq!(name.trim(), "corral-server");
}

/// Serializes only even numbers below 100, and deserializes only those
/// below 50: a type with its own serde errors.
#[derive(Debug, PartialEq)]
struct Even(u32);

impl serde::Serialize for Even {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 % 2 == 1 || self.0 >= 100 {
            return Err(serde::ser::Error::custom(format!(
                "{} is not an even number",
                self.0
            )));
        }
        s.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Even {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Even, D::Error> {
        let n = <u32 as serde::Deserialize>::deserialize(d)?;
        if n >= 50 {
            return Err(serde::de::Error::custom(format!(
                "{n} is too large to accept"
            )));
        }
        Ok(Even(n))
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u32,
    amount: Even,
}

fn make_order(x: u32) -> Order {
    Order {
        id: 1,
        amount: Even(x),
    }
}

fn take_order(order: Order) -> u32 {
    order.amount.0
}

/// Class 16: a custom serde error keeps its message, and the path of the
/// field that raised it, in every codec error: pool, queue, pipe, spawn.
#[test]
fn codec_errors_keep_the_users_message() {
    let pool = Pool::new(1).unwrap();
    let err = pool.apply(make_order, 3).unwrap_err().to_string();
    assert!(
        err.contains("3 is not an even number (at .amount)"),
        "{err}"
    );
    let err = pool.apply(make_order, 60).unwrap_err().to_string();
    assert!(
        err.contains("60 is too large to accept (at .amount)"),
        "{err}"
    );
    let err = pool
        .apply(take_order, make_order(5))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("5 is not an even number (at .amount)"),
        "{err}"
    );

    let queue: Queue<Order> = Queue::unbounded().unwrap();
    let err = queue.put(make_order(7)).unwrap_err().to_string();
    assert!(err.contains("7 is not an even number"), "{err}");

    let (a, b) = corral::Pipe::duplex().unwrap();
    a.send(&(1u32, 70u32)).unwrap();
    let err = b.recv::<Order>().unwrap_err().to_string();
    assert!(
        err.contains("70 is too large to accept (at .amount)"),
        "{err}"
    );

    let err = corral::spawn(take_order, make_order(9))
        .unwrap_err()
        .to_string();
    assert!(err.contains("9 is not an even number"), "{err}");
    let child = corral::spawn(make_order, 11).unwrap();
    let err = fx::done(child).unwrap_err().to_string();
    assert!(err.contains("11 is not an even number"), "{err}");
}

fn wait_then_die(gate: Queue<u64>) {
    let _ = gate.get_timeout(Duration::from_secs(30));
    fx::kill_self(());
}

/// Tasks queued with handles until the program has no descriptor left,
/// then the only worker dies: its replacement must still start (the pool
/// keeps spare descriptors for it), or nothing would ever run again.
fn queue_handles_until_exhausted() -> (usize, usize, usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let pool = Pool::new(1).unwrap();
    let gate: Queue<u64> = Queue::unbounded().unwrap();
    let dying = pool.submit(wait_then_die, gate.clone());
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = Some(fx::open_fds() as u64 + 24);
    setrlimit(Resource::Nofile, limit).unwrap();
    let mut tasks = Vec::new();
    let mut refused = 0;
    for x in 0..100u64 {
        let task = pool.submit(with_queue, (gate.clone(), x));
        if task.is_finished() {
            refused += 1;
        }
        tasks.push(task);
    }
    gate.put(0).unwrap();
    assert!(matches!(done(dying), Err(TaskError::WorkerLost(_))));
    let ok = tasks.into_iter().map(done).filter(Result::is_ok).count();
    (ok, refused, pool.stats().workers_replaced as usize)
}

/// A pool never wedges when waiting tasks hold every descriptor.
#[test]
fn a_replacement_worker_starts_when_waiting_tasks_hold_every_descriptor() {
    let child = corral::Process::builder()
        .start_method(StartMethod::Fork)
        .fork_closure(queue_handles_until_exhausted)
        .unwrap();
    let (ok, refused, replaced) = within(Duration::from_secs(90), move || fx::done(child)).unwrap();
    assert!(refused > 0, "the descriptors ran out");
    assert_eq!(ok + refused, 100);
    assert!(replaced >= 1);
}

/// A result whose `Deserialize` panics for numbers from 50 on: user code
/// that runs in the caller's process, on whichever thread reads the
/// outcome (the caller's, or the pool's own).
#[derive(Debug, PartialEq, serde::Serialize)]
struct Fragile(u32);

impl<'de> serde::Deserialize<'de> for Fragile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Fragile, D::Error> {
        let n = <u32 as serde::Deserialize>::deserialize(d)?;
        assert!(n < 50, "{n} breaks the decoder");
        Ok(Fragile(n))
    }
}

fn make_fragile(n: u32) -> Fragile {
    Fragile(n)
}

fn is_decoder_panic(e: &TaskError) -> bool {
    matches!(e, TaskError::Codec(text) if text.contains("breaks the decoder"))
}

/// Class 17: a result's `Deserialize` that panics fails that task with a
/// codec error naming the panic, whichever thread decoded it, and the pool
/// goes on serving: no thread of the pool dies, no wait hangs. A queue's
/// `get` fails the same way, for that message alone.
#[test]
fn a_panicking_result_decoder_fails_only_its_task() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(2).unwrap();
        for n in [10, 60, 20, 70] {
            match pool.apply(make_fragile, n) {
                Ok(v) => assert!(n < 50 && v == Fragile(n)),
                Err(e) => assert!(n >= 50 && is_decoder_panic(&e), "{n}: {e}"),
            }
        }
        let tasks: Vec<Task<Fragile>> = (0..100).map(|n| pool.submit(make_fragile, n)).collect();
        let failed = tasks
            .into_iter()
            .map(|t| done(t).map_err(|e| assert!(is_decoder_panic(&e), "{e}")))
            .filter(Result::is_err)
            .count();
        assert_eq!(failed, 50);
        let err = pool.map(make_fragile, 0..100u32).unwrap_err();
        assert!(err.to_string().contains("breaks the decoder"), "{err}");
        let streamed: Vec<bool> = pool
            .imap(make_fragile, 40..60u32)
            .map(|r| r.is_ok())
            .collect();
        assert_eq!(streamed, (40..60).map(|n| n < 50).collect::<Vec<_>>());
        let (tx, rx) = std::sync::mpsc::channel();
        pool.submit(make_fragile, 90).on_done(move |r| {
            let _ = tx.send(r.map_err(|e| is_decoder_panic(&e)));
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), Err(true));
        assert_eq!(pool.apply(square, 12).unwrap(), 144);
        assert_eq!(pool.stats().lost, 0);

        let queue: Queue<Fragile> = Queue::unbounded().unwrap();
        queue.put(Fragile(60)).unwrap();
        queue.put(Fragile(6)).unwrap();
        let err = queue.get().unwrap_err().to_string();
        assert!(err.contains("breaks the decoder"), "{err}");
        assert_eq!(queue.get().unwrap(), Fragile(6));
    });
}

/// The caller's pid in `a_panicking_result_drop_never_closes_the_pool`:
/// workers (forks of the fork server, started before it is set) see 0.
static BRITTLE_CALLER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A result whose `Drop` panics for 7, in the caller's process only.
#[derive(serde::Serialize, serde::Deserialize)]
struct Brittle(u64);

impl Drop for Brittle {
    fn drop(&mut self) {
        let caller = BRITTLE_CALLER.load(std::sync::atomic::Ordering::Relaxed);
        if self.0 == 7 && caller == std::process::id() {
            panic!("the drop of 7");
        }
    }
}

fn make_brittle(n: u64) -> Brittle {
    Brittle(n)
}

/// Waits (bounded) until the pool has ended `n` items in all.
fn wait_ended(pool: &Pool, n: u64) {
    let ended = || pool.stats().completed + pool.stats().failed >= n;
    assert!(
        fx::wait_for(Duration::from_secs(20), ended),
        "{:?}",
        pool.stats()
    );
}

/// Class 17: results the caller gave up on (a dropped `Task` or
/// `map_async`) are dropped by the pool, on whichever thread lets them go
/// last; a `Drop` that panics there is reported and goes no further: the
/// pool stays open and serves. (Outcomes an `imap` has already moved into
/// its own buffer are the caller's, dropped with it on the caller's thread.)
#[test]
fn a_panicking_result_drop_never_closes_the_pool() {
    within(Duration::from_secs(60), || {
        BRITTLE_CALLER.store(std::process::id(), std::sync::atomic::Ordering::Relaxed);
        let pool = Pool::new(2).unwrap();
        for n in 0..20 {
            drop(pool.submit(make_brittle, n));
        }
        wait_ended(&pool, 20);
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        drop(pool.map_async(make_brittle, 0..20u64));
        let started = pool.stats().submitted;
        wait_ended(&pool, started);
        assert_eq!(pool.apply(square, 4).unwrap(), 16);
        assert_eq!(pool.stats().lost, 0);
    });
}

fn nap_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    x * x
}

/// What a forked child's calls on its copy of its parent's pool (and of a
/// task of it begun before the fork) returned, one line each.
fn use_the_parents_pool(pool: &Pool, begun: Task<u64>, waited: Task<u64>) -> Vec<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    pool.submit(square, 4).on_done(move |r| {
        let _ = tx.send(r);
    });
    let on_done = rx.recv_timeout(Duration::from_secs(5));
    let mut streamed = pool.imap(square, 0..10u64);
    vec![
        format!("{:?}", pool.apply(square, 3)),
        format!("{:?}", pool.map(square, 0..1_000u64).map(|v| v.len())),
        format!("{:?}", pool.map(pid, 0..10u64).map(|v| v.len())),
        format!("{:?}", pool.map_pod(square, &[1u64, 2, 3]).map(|v| v.len())),
        format!("{:?}", streamed.next().map(|r| r.map(|_| ()))),
        format!("{:?}", on_done.map(|r| r.map(|_| ()))),
        format!("{:?}", begun.join()),
        format!("{}", corral::wait_all(std::slice::from_ref(&waited), None)),
        format!("{:?}", waited.join()),
        format!("{:?}", pool.resize(3).is_err()),
        format!("{}", pool.join_timeout(Duration::from_secs(5))),
    ]
}

/// Class 18: a forked child has a copy of its parent's pool handle (and
/// of its tasks), not the pool: its calls fail at once with `ForkedCopy`,
/// none waits, closing or terminating the copy there does nothing, and the
/// parent's pool is untouched: the same workers, nothing more submitted.
/// (Before, the child's `apply` hung, and the parent's pool with it.)
#[test]
fn a_forked_copy_of_a_pool_refuses_and_leaves_the_parents_whole() {
    within(Duration::from_secs(60), || {
        let pool = std::sync::Arc::new(Pool::new(2).unwrap());
        let workers: HashSet<u32> = pool.workers().iter().map(|w| w.pid).collect();
        let begun = pool.submit(nap_square, 5);
        let submitted = pool.stats().submitted;
        let (copy, twin) = (pool.clone(), pool.submit(nap_square, 6));
        let triplet = pool.submit(nap_square, 7);
        let child = corral::Process::builder()
            .fork_closure(move || {
                let said = use_the_parents_pool(&copy, twin, triplet);
                copy.close();
                copy.terminate();
                said
            })
            .unwrap();
        let said = fx::done(child).unwrap();
        let forked = format!("Err(ForkedCopy({}))", std::process::id());
        let expected = [
            &forked,
            &forked,
            &forked,
            &forked,
            &format!("Some({forked})"),
            &format!("Ok({forked})"),
            &forked,
            "true",
            &forked,
            "true",
            "true",
        ];
        assert_eq!(said, expected);
        assert_eq!(pool.stats().submitted, submitted + 2);
        assert_eq!(done(begun).unwrap(), 25);
        assert_eq!(pool.apply(square, 9).unwrap(), 81);
        assert_eq!(pool.map(square, 0..1_000u64).unwrap()[999], 998_001);
        let now: HashSet<u32> = pool.workers().iter().map(|w| w.pid).collect();
        assert_eq!(now, workers);
        assert_eq!(pool.stats().lost, 0);
    });
}

/// Class 18: the same for a plain `fork` of the program's own (`libc::fork`,
/// Python's `os.fork`), which corral does not make: the copy's `apply`
/// fails at once and the parent's pool serves on. The child starts afresh,
/// as corral's own forked children do: a pool or a child of its own works
/// (they used to hang on the parent's fork server connection). Its copy of
/// a child the parent started refuses to join it (it used to take the
/// parent's result, often).
#[test]
fn a_plain_fork_refuses_its_copies_and_starts_afresh() {
    within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        assert_eq!(pool.apply(square, 2).unwrap(), 4);
        let parent = std::process::id();
        let started = corral::spawn(nap_square, 4).unwrap();
        let (read, write) = rustix::pipe::pipe().unwrap();
        // SAFETY: the child has one thread; it takes no lock another thread
        // of the parent's may have held (a copy's `apply` fails its job
        // without touching the pool; its own pool and child are new), then
        // writes and calls `_exit`.
        #[expect(unsafe_code, reason = "a plain fork, as a program of its own makes")]
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let refused =
                matches!(pool.apply(square, 3), Err(TaskError::ForkedCopy(p)) if p == parent);
            // Its own pool and children run on a fork server of its own.
            let own = Pool::new(1).is_ok_and(|own| own.apply(square, 6) == Ok(36));
            let spawned = corral::spawn(square, 7).is_ok_and(|c| c.join().is_ok_and(|v| v == 49));
            // The parent's child: its result is the parent's alone.
            let joined = matches!(
                started.join(),
                Err(corral::ProcessError::ForkedCopy(p)) if p == parent
            );
            let said = [
                u8::from(refused),
                u8::from(own),
                u8::from(spawned),
                u8::from(joined),
            ];
            let _ = rustix::io::write(&write, &said);
            #[expect(
                unsafe_code,
                reason = "the child must not return into the test harness"
            )]
            // SAFETY: ends the forked child without running the parent's
            // exit handlers.
            unsafe {
                libc::_exit(0)
            };
        }
        drop(write);
        let mut said = [9u8; 4];
        assert_eq!(rustix::io::read(&read, &mut said).unwrap(), 4);
        assert_eq!(
            said, [1; 4],
            "the pool's copy refused, own pool, own spawn, the child's copy refused"
        );
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        #[expect(unsafe_code, reason = "reaps the plain fork's child")]
        let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(reaped, pid);
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
        assert_eq!(fx::done(started).unwrap(), 16);
    });
}

/// Forks a child that drops `values` (its copies of them), then `_exit`s;
/// waits for it (bounded by the caller's `within`).
fn fork_and_drop<T>(values: T) -> T {
    #[expect(unsafe_code, reason = "a plain fork, as a program of its own makes")]
    // SAFETY: the child only drops its copies (which, being copies, touch
    // nothing another thread may have locked) and calls `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(values);
        #[expect(
            unsafe_code,
            reason = "the child must not return into the test harness"
        )]
        // SAFETY: ends the forked child without running the parent's exit
        // handlers.
        unsafe {
            libc::_exit(0)
        };
    }
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    let mut status = 0;
    #[expect(unsafe_code, reason = "reaps the plain fork's child")]
    // SAFETY: waits for the child forked above.
    let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!((reaped, status), (pid, 0));
    values
}

/// Class 18: a forked child that drops its copy of a manager or of a Unix
/// listener leaves them to the process that made them (as Python's
/// finalizers do): the manager's server stays up, the socket file stays.
/// (Before, the copy's drop shut the parent's manager down and removed the
/// parent's socket file.)
#[test]
fn a_forked_child_dropping_its_copies_stops_nothing_of_the_parents() {
    within(Duration::from_secs(60), || {
        let manager = corral::manager::Manager::start().unwrap();
        let list = manager.list::<u32>().unwrap();
        list.push(1).unwrap();
        let dir = std::env::temp_dir().join(format!("corral-forkdrop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener =
            corral::connection::Listener::bind(path.display().to_string(), b"k").unwrap();
        let (manager, listener) = fork_and_drop((manager, listener));
        assert!(path.exists(), "the child's copy removed the socket file");
        list.push(2).unwrap();
        assert_eq!(manager.list::<u32>().unwrap().len().unwrap(), 0);
        assert_eq!(list.len().unwrap(), 2);
        let client = std::thread::spawn(move || {
            corral::connection::Client::new(path.display().to_string(), b"k")
                .connect()
                .map(|c| c.send(&7u32))
        });
        let conn = listener.accept().unwrap();
        assert_eq!(conn.recv::<u32>().unwrap(), 7);
        client.join().unwrap().unwrap().unwrap();
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Forks, and the child returns too (a common mistake: it should `_exit`),
/// with another value than the parent's.
fn fork_and_return(x: u64) -> u64 {
    #[expect(unsafe_code, reason = "a plain fork inside a task, as user code makes")]
    // SAFETY: the child returns into corral's code, which must end it; the
    // parent waits for it.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        return x + 1_000;
    }
    let mut status = 0;
    #[expect(unsafe_code, reason = "reaps the task's own child")]
    // SAFETY: waits for the child forked above.
    unsafe {
        libc::waitpid(pid, &mut status, 0)
    };
    x
}

/// Class 18: a task that forks, and whose child returns as well, gets its
/// own value back: the child, a copy of the worker (or of a spawned child),
/// ends as it comes back into corral, and never reports in its place nor
/// takes tasks. (Before, the copy's value came back instead, and the copy
/// went on serving the pool's rings.)
#[test]
fn a_task_whose_forked_child_returns_keeps_its_own_result() {
    within(Duration::from_secs(60), || {
        for method in [StartMethod::ForkServer, StartMethod::Fork] {
            let pool = Pool::builder()
                .processes(2)
                .start_method(method)
                .build()
                .unwrap();
            let workers: HashSet<u32> = pool.workers().iter().map(|w| w.pid).collect();
            let values: Vec<u64> = (0..20u64)
                .map(|x| pool.submit(fork_and_return, x))
                .map(|t| done(t).unwrap())
                .collect();
            assert_eq!(values, (0..20).collect::<Vec<_>>(), "{method:?}");
            let mapped = pool.map(fork_and_return, 0..16u64).unwrap();
            assert_eq!(mapped, (0..16).collect::<Vec<_>>(), "{method:?}");
            assert_eq!(pool.map(square, 0..1_000u64).unwrap()[999], 998_001);
            let now: HashSet<u32> = pool.workers().iter().map(|w| w.pid).collect();
            assert_eq!(now, workers, "{method:?}");
            let stats = pool.stats();
            assert_eq!((stats.lost, stats.duplicates), (0, 0), "{stats:?}");
        }
        let child = corral::spawn(fork_and_return, 5).unwrap();
        assert_eq!(fx::done(child).unwrap(), 5);
    });
}

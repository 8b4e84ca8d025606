//! Processes under every start method: values, panics, crashes, timeouts,
//! signals, nesting, reaping.

use std::time::{Duration, Instant};

use corral::{ExitStatus, JoinTimeout, Pipe, Process, ProcessError, Sender, StartMethod};
use corral_fixtures as fx;
use corral_fixtures::done;
use serde::{Deserialize, Serialize};

corral::test_support!();

const METHODS: [StartMethod; 3] = [
    StartMethod::ForkServer,
    StartMethod::Spawn,
    StartMethod::Fork,
];

fn builder(method: StartMethod) -> corral::ProcessBuilder {
    Process::builder().start_method(method)
}

fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    pid: u32,
    words: Vec<String>,
    ratio: f64,
}

fn describe(words: Vec<String>) -> Report {
    Report {
        pid: std::process::id(),
        ratio: words.len() as f64 / 2.0,
        words,
    }
}

#[test]
fn values_round_trip_under_every_method() {
    for method in METHODS {
        let child = builder(method).spawn(add, (40, 2)).unwrap();
        assert_eq!(done(child).unwrap(), 42, "{method:?}");
        let words = vec!["a".to_string(), "b".into(), "c".into()];
        let child = builder(method).spawn(describe, words.clone()).unwrap();
        let pid = child.pid();
        let report = done(child).unwrap();
        assert_eq!(
            report,
            Report {
                pid,
                words,
                ratio: 1.5
            },
            "{method:?}"
        );
        assert_ne!(pid, std::process::id());
    }
}

fn fails(code: u32) -> u32 {
    if code > 0 {
        panic!("bad input {code}");
    }
    code
}

#[test]
fn panics_come_back_with_message_location_and_backtrace() {
    for method in METHODS {
        let err = done(builder(method).spawn(fails, 7).unwrap()).unwrap_err();
        let panic = err.panic().unwrap_or_else(|| panic!("{method:?}: {err:?}"));
        assert_eq!(panic.message, "bad input 7");
        assert!(
            panic
                .location
                .as_deref()
                .unwrap()
                .contains("tests/process.rs"),
            "{panic:?}"
        );
        assert!(panic.backtrace.contains("fails"), "{}", panic.backtrace);
        assert!(err.to_string().contains("bad input 7"), "{err}");
        let err = done(builder(method).spawn(fx::panic_with_number, ()).unwrap()).unwrap_err();
        assert_eq!(err.panic().unwrap().message, "Box<dyn Any>");
    }
}

#[test]
fn crashes_are_reported_exactly() {
    for method in METHODS {
        let status = |r: Result<(), ProcessError>| r.unwrap_err().exit_status();
        assert_eq!(
            status(done(builder(method).spawn(fx::segfault, ()).unwrap())),
            Some(ExitStatus::Signal(libc::SIGSEGV)),
            "{method:?}"
        );
        assert_eq!(
            status(done(builder(method).spawn(fx::abort, ()).unwrap())),
            Some(ExitStatus::Signal(libc::SIGABRT))
        );
        assert_eq!(
            status(done(builder(method).spawn(fx::kill_self, ()).unwrap())),
            Some(ExitStatus::Signal(libc::SIGKILL))
        );
        assert_eq!(
            status(done(builder(method).spawn(fx::exit_with, 17).unwrap())),
            Some(ExitStatus::Code(17))
        );
    }
}

#[test]
fn join_timeout_hands_the_child_back_then_kill_reports_the_signal() {
    for method in METHODS {
        let child = builder(method).spawn(fx::hang::<()>, ()).unwrap();
        let started = Instant::now();
        let child = match child.join_timeout(Duration::from_millis(100)) {
            Err(JoinTimeout::Elapsed(child)) => child,
            other => panic!("{method:?}: {other:?}"),
        };
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(child.is_alive());
        assert_eq!(child.exit_status(), None);
        child.kill().unwrap();
        let err = child.join_timeout(Duration::from_secs(10)).unwrap_err();
        match err {
            JoinTimeout::Failed(e) => {
                assert_eq!(e.exit_status(), Some(ExitStatus::Signal(libc::SIGKILL)))
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn terminate_sends_sigterm_and_exit_status_does_not_block() {
    for method in METHODS {
        let child = builder(method).spawn(fx::hang::<()>, ()).unwrap();
        child.terminate().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.exit_status().is_none() {
            assert!(Instant::now() < deadline, "{method:?}: SIGTERM ignored");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(child.exit_status(), Some(ExitStatus::Signal(libc::SIGTERM)));
        assert!(!child.is_alive());
        // Signalling a finished child is not an error.
        child.terminate().unwrap();
        child.kill().unwrap();
    }
}

#[test]
fn kill_takes_the_childs_own_descendants_with_it() {
    let (rx, tx) = Pipe::simplex().unwrap();
    let child = corral::spawn(fx::grandchild_holding_fd, tx).unwrap();
    let grandchild: u32 = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(!fx::is_gone(grandchild));
    child.kill().unwrap();
    assert!(child.join_timeout(Duration::from_secs(10)).is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fx::is_gone(grandchild) {
        assert!(
            Instant::now() < deadline,
            "grandchild {grandchild} survived kill()"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn nest((depth, method): (u32, StartMethod)) -> Vec<u32> {
    let mut pids = vec![std::process::id()];
    if depth > 0 {
        let child = Process::builder()
            .start_method(method)
            .spawn(nest, (depth - 1, method))
            .unwrap();
        pids.extend(child.join().unwrap());
    }
    pids
}

#[test]
fn children_spawn_children_under_every_method() {
    for method in METHODS {
        let pids = done(builder(method).spawn(nest, (3, method)).unwrap()).unwrap();
        assert_eq!(pids.len(), 4, "{method:?}");
        let mut unique = pids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4, "{method:?}: {pids:?}");
    }
}

fn sum_over(conn: corral::Connection) -> u64 {
    let mut total = 0;
    while let Ok(n) = conn.recv::<u64>() {
        total += n;
        conn.send(&total).unwrap();
    }
    total
}

#[test]
fn pipe_ends_pass_to_children_under_every_method() {
    for method in METHODS {
        let (ours, theirs) = Pipe::duplex().unwrap();
        let child = builder(method).spawn(sum_over, theirs).unwrap();
        for n in 1..=10u64 {
            ours.send(&n).unwrap();
            assert_eq!(ours.recv::<u64>().unwrap(), n * (n + 1) / 2);
        }
        drop(ours);
        assert_eq!(done(child).unwrap(), 55, "{method:?}");
    }
}

fn big(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn checksum(data: Vec<u8>) -> (usize, u64) {
    (data.len(), data.iter().map(|&b| u64::from(b)).sum())
}

#[test]
fn a_256_mib_value_crosses_both_ways() {
    let len = 256 << 20;
    let expected: u64 = big(len).iter().map(|&b| u64::from(b)).sum();
    let back = done(corral::spawn(big, len).unwrap()).unwrap();
    assert_eq!(back.len(), len);
    assert_eq!(back.iter().map(|&b| u64::from(b)).sum::<u64>(), expected);
    let child = corral::spawn(checksum, back).unwrap();
    assert_eq!(done(child).unwrap(), (len, expected));
}

fn returns_handle(_: ()) -> Sender {
    Pipe::simplex().unwrap().1
}

#[test]
fn a_result_that_cannot_cross_is_a_codec_error() {
    let err = done(corral::spawn(returns_handle, ()).unwrap()).unwrap_err();
    assert!(matches!(err, ProcessError::Codec(_)), "{err:?}");
}

#[test]
fn a_child_refuses_a_task_from_another_binary() {
    let child =
        corral::internal::spawn_with_identity(b"build-id:other".to_vec(), add, (1, 2)).unwrap();
    match done(child) {
        Err(ProcessError::Refused(why)) => assert!(why.contains("different binary"), "{why}"),
        other => panic!("{other:?}"),
    }
}

fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn wait_reports_which_children_finished() {
    let fast = corral::spawn(sleepy, 10).unwrap();
    let slow = corral::spawn(fx::hang::<()>, ()).unwrap();
    let ready = corral::wait(&[&slow, &fast], Some(Duration::from_secs(10))).unwrap();
    assert_eq!(ready, vec![1]);
    assert!(
        corral::wait(&[&slow], Some(Duration::from_millis(20)))
            .unwrap()
            .is_empty()
    );
    slow.kill().unwrap();
    assert_eq!(
        corral::wait(&[&slow], Some(Duration::from_secs(10))).unwrap(),
        vec![0]
    );
    assert_eq!(done(fast).unwrap(), 10);
}

#[derive(Serialize, Deserialize)]
struct Countdown {
    from: u32,
}

impl corral::Job for Countdown {
    type Output = Vec<u32>;
    fn run(self) -> Vec<u32> {
        (0..=self.from).rev().collect()
    }
}

#[test]
fn jobs_and_closures_run_in_children() {
    let named = Process::builder()
        .name("countdown")
        .spawn_job(Countdown { from: 3 })
        .unwrap();
    assert_eq!(named.name(), Some("countdown"));
    assert_eq!(done(named).unwrap(), vec![3, 2, 1, 0]);
    let captured: Vec<u64> = (5..8).collect();
    let child = Process::builder()
        .fork_closure(move || captured.iter().sum::<u64>())
        .unwrap();
    assert_eq!(done(child).unwrap(), 18);
}

fn write_marker_later(path: String) {
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(path, b"done").unwrap();
}

fn leave_a_child_behind((path, method): (String, StartMethod)) {
    // The handle is dropped at once: the grandchild keeps running, and this
    // child must join it before it exits (Python's exit semantics).
    let _ = Process::builder()
        .start_method(method)
        .spawn(write_marker_later, path)
        .unwrap();
}

#[test]
fn a_child_joins_its_own_children_before_it_exits() {
    for method in METHODS {
        let dir = std::env::temp_dir().join(format!(
            "corral-nested-exit-{}-{method:?}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("grandchild-done");
        let path = marker.to_str().unwrap().to_string();
        done(
            builder(method)
                .spawn(leave_a_child_behind, (path, method))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&marker).unwrap_or_default(),
            b"done",
            "{method:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn cpus_allowed(_: ()) -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// The fork server forks a lone start's child pinned to its own CPU (so
/// that the child is queued there); the child takes the server's mask back
/// first thing. A child left on one CPU would run everything it starts on
/// one core; pool workers, not pinned, are checked as well.
#[test]
fn children_may_run_on_every_cpu_the_program_may() {
    let here = cpus_allowed(());
    for method in METHODS {
        // Back to back (forked on request) and after a pause (the spare).
        for round in 0..6 {
            if round % 3 == 2 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let child = builder(method).spawn(cpus_allowed, ()).unwrap();
            assert_eq!(done(child).unwrap(), here, "{method:?} round {round}");
        }
    }
    let pool = corral::Pool::new(2).unwrap();
    for worker in 0..2 {
        assert_eq!(
            pool.apply(cpus_allowed, ()).unwrap(),
            here,
            "worker {worker}"
        );
    }
}

/// After a child's exit the fork server watches for the next request a
/// moment, then sleeps: once starts stop, it is seen asleep (state `S`)
/// and stays so.
#[test]
fn the_fork_server_sleeps_once_starts_stop() {
    for i in 0..50 {
        assert_eq!(done(corral::spawn(add, (i, 1)).unwrap()).unwrap(), i + 1);
    }
    let server = corral::internal::fork_server_pid().expect("a fork server");
    fx::assert_stay_asleep(&[server], Duration::from_secs(10));
}

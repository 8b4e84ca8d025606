//! The fork server killed from outside: its children die with it and say so,
//! and the next spawn starts a new server. A test binary of its own, so that
//! no other test's children die with the server.

use std::time::{Duration, Instant};

use corral::{ExitStatus, JoinTimeout, ProcessError};
use corral_fixtures::{hang, is_gone, sigkill};

corral::test_support!();

fn say_then_hang(started: corral::Queue<u32>) {
    started.put(std::process::id()).unwrap();
    hang(())
}

fn triple(x: u32) -> u32 {
    x * 3
}

#[test]
fn a_killed_fork_server_is_replaced_and_its_children_do_not_hang() {
    // The killed server's children are orphaned: make them ours to reap.
    corral_fixtures::become_subreaper();
    assert_eq!(corral::spawn(triple, 1).unwrap().join().unwrap(), 3);
    let server = corral::internal::fork_server_pid().expect("a fork server");
    let orphaned = corral::spawn(hang::<()>, ()).unwrap();
    let pid = orphaned.pid();

    sigkill(server);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(is_gone(server) && is_gone(pid)) {
        assert!(Instant::now() < deadline, "the server's child outlived it");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The child died with its server (death signal); nobody can report its
    // status any more, and join says so instead of hanging.
    match orphaned.join_timeout(Duration::from_secs(10)) {
        Err(JoinTimeout::Failed(ProcessError::Lost)) => {}
        Err(JoinTimeout::Failed(ProcessError::Exited(ExitStatus::Signal(9)))) => {}
        other => panic!("{other:?}"),
    }
    // The next spawn starts a new server transparently.
    assert_eq!(corral::spawn(triple, 5).unwrap().join().unwrap(), 15);
    let replacement = corral::internal::fork_server_pid().expect("a new fork server");
    assert_ne!(replacement, server);

    // A pool's worker dies with its server: its task is reported lost, with
    // the reason (Linux has no exit code for it), and the pool goes on.
    let pool = corral::Pool::new(1).unwrap();
    let started: corral::Queue<u32> = corral::Queue::unbounded().unwrap();
    let task = pool.submit(say_then_hang, started.clone());
    started.get_timeout(Duration::from_secs(20)).unwrap();
    sigkill(replacement);
    match task.join_timeout(Duration::from_secs(20)) {
        Err(corral::TaskTimeout::Failed(corral::TaskError::Lost(why))) => {
            assert!(why.contains("fork server"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.apply(triple, 7).unwrap(), 21);
    drop(pool);
    corral_fixtures::reap_exited_children();
}

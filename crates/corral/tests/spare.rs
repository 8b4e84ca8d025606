//! The fork server's spare: a child forked ahead of need that the next
//! start takes. A test binary of its own, so that killing spares from
//! outside hits no other test's start.

use std::time::Duration;

use corral::{ExitStatus, ProcessError, StartMethod};
use corral_fixtures::{done, is_gone, sigkill, spares, wait_for};

corral::test_support!();

fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

fn crash(_: ()) {
    std::process::abort()
}

/// The spare the server offered this process, once it has: the only live
/// one.
fn spare(when: &str) -> u32 {
    let (mut offered, mut live) = (None, Vec::new());
    assert!(
        wait_for(Duration::from_secs(10), || {
            (offered, live) = (corral::internal::spare_pid(), spares());
            offered.is_some_and(|pid| live == [pid])
        }),
        "{when}: the fork server keeps one spare; offered {offered:?}, live {live:?}"
    );
    live[0]
}

#[test]
fn the_next_start_runs_in_the_spare_and_a_killed_spare_costs_nothing() {
    assert_eq!(done(corral::spawn(add, (1, 2)).unwrap()).unwrap(), 3);
    for round in 0..20u64 {
        // The spare on offer is the next ForkServer child...
        let ready = spare(&format!("round {round}, before a start"));
        let child = corral::spawn(add, (round, 1)).unwrap();
        assert_eq!(child.pid(), ready, "round {round}");
        assert_eq!(done(child).unwrap(), round + 1);
        // ...and its exit status is reported as a forked child's is.
        let ready = spare(&format!("round {round}, after a start"));
        let child = corral::spawn(crash, ()).unwrap();
        assert_eq!(child.pid(), ready, "round {round}");
        match done(child) {
            Err(ProcessError::Exited(ExitStatus::Signal(6))) => {}
            other => panic!("round {round}: {other:?}"),
        }
        // A spare killed from outside, before or after this process read
        // the offer: the next start goes to the server or the next spare.
        let ready = spare(&format!("round {round}, after a crash"));
        sigkill(ready);
        assert!(wait_for(Duration::from_secs(5), || is_gone(ready)));
        assert_eq!(
            done(corral::spawn(add, (round, 2)).unwrap()).unwrap(),
            round + 2
        );
        // Other start methods never take the spare.
        let ready = spare(&format!("round {round}, after a killed spare"));
        for method in [StartMethod::Spawn, StartMethod::Fork] {
            let child = corral::Process::builder()
                .start_method(method)
                .spawn(add, (round, 3))
                .unwrap();
            assert_ne!(child.pid(), ready);
            assert_eq!(done(child).unwrap(), round + 3);
        }
        assert_eq!(spares(), [ready], "round {round}");
    }
}

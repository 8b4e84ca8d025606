//! A replaced fork server is told what the old one kept for its program:
//! named segments to remove and directly forked children to kill when the
//! program dies. A test binary of its own: it kills a fork server.

use std::time::Duration;

use corral::{Queue, StartMethod};
use corral_fixtures as fx;

corral::test_support!();

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Started {
    server: u32,
    forked: u32,
}

/// The program under test: a named segment, a Fork child started from a
/// thread, then (once its server was killed) a spawn that starts a new
/// server; then it waits to be killed.
fn creator(name: String, report: Queue<Started>, go: Queue<()>) {
    let _segment = corral::SharedMemory::create(&name, 4096).unwrap();
    let forked = std::thread::spawn(|| {
        corral::Process::builder()
            .start_method(StartMethod::Fork)
            .spawn(fx::hang::<()>, ())
            .unwrap()
    })
    .join()
    .unwrap();
    let server = corral::internal::fork_server_pid().unwrap();
    report
        .put(Started {
            server,
            forked: forked.pid(),
        })
        .unwrap();
    go.get().unwrap();
    // The server is dead: this spawn replaces it.
    let replacement = corral::spawn(fx::hang::<()>, ()).unwrap();
    report
        .put(Started {
            server: corral::internal::fork_server_pid().unwrap(),
            forked: replacement.pid(),
        })
        .unwrap();
    // Kept alive (segment, children) until the test kills this process.
    let _keep = (forked, replacement);
    loop {
        std::thread::park();
    }
}

#[test]
fn a_replacement_server_keeps_the_old_ones_duties() {
    let name = format!("corral-handover-{}", std::process::id());
    let report: Queue<Started> = Queue::unbounded().unwrap();
    let go: Queue<()> = Queue::unbounded().unwrap();
    let program = {
        let (name, report, go) = (name.clone(), report.clone(), go.clone());
        corral::Process::builder()
            .start_method(StartMethod::Fork)
            .fork_closure(move || creator(name, report, go))
            .unwrap()
    };
    let first = report.get_timeout(Duration::from_secs(20)).unwrap();
    fx::sigkill(first.server);
    assert!(fx::wait_for(Duration::from_secs(5), || fx::is_gone(
        first.server
    )));
    go.put(()).unwrap();
    let second = report.get_timeout(Duration::from_secs(20)).unwrap();
    assert_ne!(second.server, first.server, "a new server runs");
    assert!(!fx::is_gone(first.forked), "the Fork child still runs");
    assert!(fx::shm_entries().contains(&name));

    program.kill().unwrap();
    assert!(program.join_timeout(Duration::from_secs(10)).is_err());
    assert!(
        fx::wait_for(Duration::from_secs(5), || !fx::shm_entries()
            .contains(&name)),
        "the named segment outlived its creator"
    );
    assert!(
        fx::wait_for(Duration::from_secs(5), || fx::is_gone(first.forked)),
        "the thread-forked child outlived its parent"
    );
    assert!(fx::wait_for(Duration::from_secs(5), || fx::is_gone(
        second.forked
    )));
}

//! The fork server stopped from outside (SIGSTOP) while a pool ends: the
//! pool's join waits a bounded time for the server's report that it reaped
//! each worker, not for ever, and once the server runs again it reaps them.
//! A test binary of its own, so that no other test waits on the stopped
//! server.

use std::time::{Duration, Instant};

use corral::Pool;
use corral_fixtures::{is_reaped, sigcont, sigstop, wait_for};

corral::test_support!();

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn a_pool_ends_while_its_fork_server_is_stopped() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(square, 0..100u64).unwrap()[9], 81);
    let workers: Vec<u32> = pool.workers().iter().map(|w| w.pid).collect();
    assert_eq!(workers.len(), 2);
    let server = corral::internal::fork_server_pid().expect("a fork server");

    sigstop(server);
    let (done, joined) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        pool.join();
        let _ = done.send(started.elapsed());
    });
    // Two workers, each waited for at most 2 s.
    let took = joined.recv_timeout(Duration::from_secs(30));
    sigcont(server);
    let took = took.expect("join ended while the fork server was stopped");
    assert!(took < Duration::from_secs(10), "join took {took:?}");
    // Running again, the server reaps what it could not.
    assert!(
        wait_for(Duration::from_secs(10), || workers
            .iter()
            .all(|&p| is_reaped(p))),
        "workers left: {workers:?}"
    );
    // And serves the next pool.
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
}

//! Pools leave nothing behind: create/use/drop cycles return descriptors,
//! children and `/dev/shm` entries to their baseline. One test, so that no
//! concurrent test disturbs the counts. `CORRAL_POOL_CYCLES=10000` runs the
//! long version.

use std::collections::HashSet;

use corral::{Pool, StartMethod, TaskError};
use corral_fixtures::{is_reaped, open_fds, shm_entries, zombie_children};

corral::test_support!();

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn pool_cycles_leave_nothing_behind() {
    // Warm up lazily created state (the fork server connection, the panic hook).
    Pool::new(1).unwrap().apply(square, 1).unwrap();
    let fds = open_fds();
    let shm = shm_entries();
    let cycles: usize = std::env::var("CORRAL_POOL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut workers = HashSet::new();
    for i in 0..cycles {
        let method = match i % 10 {
            0 => StartMethod::Fork,
            5 => StartMethod::Spawn,
            _ => StartMethod::ForkServer,
        };
        let pool = Pool::builder()
            .processes(2)
            .start_method(method)
            .build()
            .unwrap();
        let mut started: HashSet<u32> = pool.workers().iter().map(|w| w.pid).collect();
        workers.insert(pool.apply(pid, ()).unwrap());
        match i % 3 {
            0 => assert_eq!(pool.map(square, 0..50).unwrap()[7], 49),
            1 => {
                // Terminate with work in flight.
                let _tasks: Vec<_> = (0..20).map(|x| pool.submit(square, x)).collect();
                pool.terminate();
            }
            _ => {
                // A crash, then the graceful drop.
                assert!(matches!(
                    pool.apply(corral_fixtures::abort, ()),
                    Err(TaskError::WorkerLost(_))
                ));
            }
        }
        started.extend(pool.workers().iter().map(|w| w.pid));
        drop(pool);
        // Gone, and reaped: not even a zombie its fork server is reaping.
        let left: Vec<u32> = started.into_iter().filter(|&p| !is_reaped(p)).collect();
        assert_eq!(
            left,
            Vec::<u32>::new(),
            "cycle {i} ({method:?}): workers left"
        );
    }
    assert_eq!(open_fds(), fds, "descriptors leaked");
    assert_eq!(zombie_children(), Vec::<u32>::new());
    assert_eq!(shm_entries(), shm, "/dev/shm entries leaked");
    println!(
        "{cycles} pool cycles, {} workers, nothing left",
        workers.len()
    );
}

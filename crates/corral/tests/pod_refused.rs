//! `map_pod` where the kernel will not let workers reach the caller's
//! memory: the ranges go through shared memory instead, and every later
//! call too. A test binary of its own: it makes this whole process
//! undumpable, and what `map_pod` learns then holds for the process.

use std::time::Duration;

use corral::Pool;
use corral_fixtures::{peek_memory, within};
use rustix::process::DumpableBehavior;
use rustix::thread::CapabilitySet;

corral::test_support!();

/// A worker's initializer: without `CAP_SYS_PTRACE`, which root has and
/// which passes the kernel's access check whatever the target.
fn without_ptrace(_: ()) {
    let mut caps = rustix::thread::capabilities(None).expect("reading capabilities");
    caps.effective.remove(CapabilitySet::SYS_PTRACE);
    caps.permitted.remove(CapabilitySet::SYS_PTRACE);
    rustix::thread::set_capabilities(None, caps).expect("dropping CAP_SYS_PTRACE");
}

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn rotate([a, b, c]: [u32; 3]) -> [u32; 3] {
    [b, c, a]
}

#[test]
fn map_pod_goes_through_shared_memory_where_workers_may_not_reach_the_caller() {
    within(Duration::from_secs(60), || {
        // Undumpable, to a worker without CAP_SYS_PTRACE: out of its reach
        // (and, for root, its permitted capabilities are no longer a
        // superset of this process's, which is enough on its own).
        rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable).unwrap();
        let pool = Pool::builder()
            .processes(2)
            .initializer(without_ptrace, ())
            .build()
            .unwrap();
        let xs: Vec<u64> = (0..300_007).collect();
        let here = (std::process::id(), xs.as_ptr() as u64);
        let refused = pool.apply(peek_memory, here).unwrap();
        assert!(
            refused == libc::EPERM || refused == libc::EACCES,
            "a worker read the caller's memory (errno {refused})"
        );
        // The first call learns it range by range; the later ones know.
        for _ in 0..3 {
            let out = pool.map_pod(square, &xs).unwrap();
            assert_eq!(out.len(), xs.len());
            assert!(out.iter().zip(&xs).all(|(o, x)| *o == square(*x)));
        }
        // Over 8 MiB of results are copied out by threads, a part each
        // (12-byte values: parts that are no whole number of pages).
        let triples: Vec<[u32; 3]> = (0..1_000_003u32).map(|i| [i, !i, i / 3]).collect();
        let out = pool.map_pod(rotate, &triples).unwrap();
        assert_eq!(out.len(), triples.len());
        assert!(out.iter().zip(&triples).all(|(o, t)| *o == rotate(*t)));
    });
}

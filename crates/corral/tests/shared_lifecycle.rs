//! Creating, passing and dropping queues, locks and shared values many times
//! leaves no descriptor, child or `/dev/shm` entry behind, even when the
//! children holding them are SIGKILLed. One test, so that no concurrent test
//! disturbs the counts.

use std::time::Duration;

use corral::{
    Barrier, Condition, Event, JoinTimeout, Lock, Queue, RLock, RawArray, Semaphore, SharedMemory,
    Value,
};
use corral_fixtures::{open_fds, shm_entries, zombie_children};

corral::test_support!();

type Bundle = (
    Queue<u64>,
    Lock,
    RLock,
    Semaphore,
    Condition,
    Event,
    Barrier,
    Value<u64>,
    RawArray<u8>,
    SharedMemory,
);

fn bundle() -> Bundle {
    (
        Queue::bounded(4).unwrap(),
        Lock::new().unwrap(),
        RLock::new().unwrap(),
        Semaphore::new(2).unwrap(),
        Condition::new().unwrap(),
        Event::new().unwrap(),
        Barrier::new(2).unwrap(),
        Value::new(0).unwrap(),
        RawArray::zeroed(64).unwrap(),
        SharedMemory::new(4096).unwrap(),
    )
}

/// Uses every object, then either returns or hangs holding locks.
fn use_all((b, hang): (Bundle, bool)) {
    let (q, lock, rlock, sem, _cond, event, _barrier, value, array, shm) = b;
    q.put(1).unwrap();
    *value.lock() += 1;
    array.set(0, 1);
    shm.write(0, b"x");
    let _l = lock.acquire().unwrap();
    let _r = rlock.acquire().unwrap();
    let _s = sem.acquire().unwrap();
    event.set();
    if hang {
        std::thread::sleep(Duration::from_secs(600));
    }
}

#[test]
fn shared_objects_leave_nothing_behind() {
    // Warm up whatever is created once per process (the fork server, std).
    drop(bundle());
    let fds = open_fds();
    let shm = shm_entries();
    for round in 0..200 {
        let b = bundle();
        let hang = round % 2 == 1;
        let child = corral::spawn(use_all, (b.clone(), hang)).unwrap();
        assert!(b.5.wait_timeout(Duration::from_secs(30)), "round {round}");
        if hang {
            child.kill().unwrap();
            assert!(child.join_timeout(Duration::from_secs(10)).is_err());
        } else {
            match child.join_timeout(Duration::from_secs(30)) {
                Ok(()) => {}
                Err(JoinTimeout::Failed(e)) => panic!("round {round}: {e}"),
                Err(JoinTimeout::Elapsed(c)) => {
                    c.kill().unwrap();
                    panic!("round {round}: child hung");
                }
            }
        }
        // Whatever the child did or left held, the objects work.
        assert_eq!(b.0.get_timeout(Duration::from_secs(5)).unwrap(), 1);
        let _ =
            b.1.acquire()
                .map(drop)
                .map_err(|e| e.into_guard().map(drop));
        assert_eq!(b.7.get(), 1);
    }
    assert_eq!(open_fds(), fds, "descriptors leaked");
    assert_eq!(shm_entries(), shm, "/dev/shm entries leaked");
    assert!(zombie_children().is_empty(), "zombies left");
    println!("200 rounds of 10 shared objects, half with SIGKILLed holders: nothing left");
}

//! Process-shared locks, events, conditions, barriers and shared memory with
//! real processes, including holders that are SIGKILLed.

use std::time::Duration;

use corral::{
    AcquireError, Array, Barrier, BarrierError, Child, Condition, Event, Lock, RLock, Semaphore,
    SharedMemory, StartMethod, Value,
};
use corral_fixtures as fx;
use corral_fixtures::done;

corral::test_support!();

/// Kills `child` (which announced through `holding` that it holds what it
/// should) and waits for it to be gone.
fn kill_when_set<R: corral::Data>(child: Child<R>, holding: &Event) {
    assert!(
        holding.wait_timeout(Duration::from_secs(30)),
        "child never got there"
    );
    child.kill().unwrap();
    assert!(child.join_timeout(Duration::from_secs(10)).is_err());
}

fn hold_lock((lock, holding): (Lock, Event)) {
    let _guard = lock.acquire().unwrap();
    holding.set();
    fx::hang(());
}

fn hold_rlock((lock, holding): (RLock, Event)) {
    let _a = lock.acquire().unwrap();
    let _b = lock.acquire().unwrap();
    holding.set();
    fx::hang(());
}

fn hold_permits((sem, holding): (Semaphore, Event)) {
    let _a = sem.acquire().unwrap();
    let _b = sem.acquire().unwrap();
    holding.set();
    fx::hang(());
}

#[test]
fn a_lock_whose_holder_is_killed_goes_to_the_next_acquirer() {
    let lock = Lock::new().unwrap();
    let holding = Event::new().unwrap();
    let child = corral::spawn(hold_lock, (lock.clone(), holding.clone())).unwrap();
    assert!(holding.wait_timeout(Duration::from_secs(30)));
    assert!(matches!(lock.try_acquire(), Err(AcquireError::WouldBlock)));
    // A waiter already asleep when the holder dies is woken by the kernel.
    let waiter = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            matches!(
                lock.acquire_timeout(Duration::from_secs(30)),
                Err(AcquireError::OwnerDied(_))
            )
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    kill_when_set(child, &holding);
    assert!(
        waiter.join().unwrap(),
        "the waiter was not told the owner died"
    );
    // Recovered: an ordinary lock again.
    let guard = lock.acquire_timeout(Duration::from_secs(5)).unwrap();
    drop(guard);
}

#[test]
fn an_rlock_held_twice_by_a_killed_holder_is_recovered() {
    let lock = RLock::new().unwrap();
    let holding = Event::new().unwrap();
    let child = corral::spawn(hold_rlock, (lock.clone(), holding.clone())).unwrap();
    kill_when_set(child, &holding);
    match lock.acquire_timeout(Duration::from_secs(5)) {
        Err(AcquireError::OwnerDied(g)) => drop(g),
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    let _a = lock.acquire().unwrap();
    let _b = lock.acquire().unwrap();
}

/// The guard of an acquisition that succeeded, cleanly or not.
fn held<G>(r: Result<G, AcquireError<G>>) -> Option<G> {
    match r {
        Ok(g) | Err(AcquireError::OwnerDied(g)) => Some(g),
        Err(_) => None,
    }
}

#[test]
fn semaphore_permits_of_a_killed_holder_come_back() {
    let sem = Semaphore::new(3).unwrap();
    let holding = Event::new().unwrap();
    let child = corral::spawn(hold_permits, (sem.clone(), holding.clone())).unwrap();
    assert!(holding.wait_timeout(Duration::from_secs(30)));
    let mine = sem.acquire().unwrap();
    assert!(matches!(sem.try_acquire(), Err(AcquireError::WouldBlock)));
    let waiter = {
        let sem = sem.clone();
        std::thread::spawn(move || {
            let died = matches!(
                sem.acquire_timeout(Duration::from_secs(30)),
                Err(AcquireError::OwnerDied(_))
            );
            died
        })
    };
    kill_when_set(child, &holding);
    assert!(
        waiter.join().unwrap(),
        "the waiter was not told the owner died"
    );
    // Both dead permits are back (one through the waiter, now dropped).
    let a = held(sem.acquire_timeout(Duration::from_secs(5)));
    let b = held(sem.acquire_timeout(Duration::from_secs(5)));
    assert!(a.is_some() && b.is_some());
    assert!(matches!(sem.try_acquire(), Err(AcquireError::WouldBlock)));
    drop((mine, a, b));
}

#[test]
fn try_and_timeout_forms() {
    let lock = Lock::new().unwrap();
    let held = lock.acquire().unwrap();
    // The same thread: try says it would block, as Python's acquire(False).
    assert!(matches!(lock.try_acquire(), Err(AcquireError::WouldBlock)));
    let other = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let timed_out = matches!(
                lock.acquire_timeout(Duration::from_millis(100)),
                Err(AcquireError::Timeout)
            );
            (timed_out, start.elapsed())
        })
    };
    let (timed_out, waited) = other.join().unwrap();
    assert!(timed_out);
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    drop(held);
}

#[test]
#[should_panic(expected = "not reentrant")]
fn relocking_a_lock_on_the_same_thread_panics_instead_of_hanging() {
    let lock = Lock::new().unwrap();
    let _a = lock.acquire().unwrap();
    let _b = lock.acquire();
}

fn increment(v: Value<u64>) {
    for _ in 0..10_000 {
        *v.lock() += 1;
    }
}

#[test]
fn locked_increments_from_two_processes_add_up() {
    for method in [
        StartMethod::ForkServer,
        StartMethod::Spawn,
        StartMethod::Fork,
    ] {
        let v = Value::new(0u64).unwrap();
        let kids: Vec<_> = (0..2)
            .map(|_| {
                corral::Process::builder()
                    .start_method(method)
                    .spawn(increment, v.clone())
                    .unwrap()
            })
            .collect();
        for k in kids {
            done(k).unwrap();
        }
        assert_eq!(v.get(), 20_000, "{method:?}");
    }
}

fn fill((a, from): (Array<u32>, usize)) {
    for i in (from..a.len()).step_by(2) {
        a.set(i, i as u32 * 3);
    }
}

#[test]
fn arrays_are_shared() {
    let a = Array::<u32>::zeroed(1_000).unwrap();
    let kids: Vec<_> = (0..2)
        .map(|k| corral::spawn(fill, (a.clone(), k)).unwrap())
        .collect();
    for k in kids {
        done(k).unwrap();
    }
    assert_eq!(a.to_vec(), (0..1_000).map(|i| i * 3).collect::<Vec<u32>>());
}

fn party(b: Barrier) -> Vec<bool> {
    (0..3)
        .map(|_| b.wait_timeout(Duration::from_secs(30)).unwrap().is_leader())
        .collect()
}

#[test]
fn a_barrier_holds_n_processes_until_all_arrive() {
    let b = Barrier::new(4).unwrap();
    let kids: Vec<_> = (0..4)
        .map(|_| corral::spawn(party, b.clone()).unwrap())
        .collect();
    let results: Vec<Vec<bool>> = kids.into_iter().map(|k| done(k).unwrap()).collect();
    for round in 0..3 {
        let leaders = results.iter().filter(|r| r[round]).count();
        assert_eq!(leaders, 1, "round {round}: {results:?}");
    }
    // A wait that times out breaks the barrier for the others.
    let b = Barrier::new(2).unwrap();
    assert_eq!(
        b.wait_timeout(Duration::from_millis(50)),
        Err(BarrierError::Timeout)
    );
    assert_eq!(b.wait(), Err(BarrierError::Broken));
}

fn wait_event((go, done_flag): (Event, Event)) -> bool {
    let seen = go.wait_timeout(Duration::from_secs(30));
    done_flag.set();
    seen
}

#[test]
fn events_cross_processes() {
    let go = Event::new().unwrap();
    let back = Event::new().unwrap();
    let child = corral::spawn(wait_event, (go.clone(), back.clone())).unwrap();
    let pid = child.pid();
    assert!(fx::wait_for(Duration::from_secs(30), || fx::is_sleeping(
        pid
    )));
    assert!(!back.is_set());
    go.set();
    assert!(back.wait_timeout(Duration::from_secs(30)));
    assert!(done(child).unwrap());
}

fn wait_condition((cond, ready): (Condition, Value<u32>)) -> u32 {
    let mut guard = cond.acquire().unwrap();
    assert!(guard.wait_while_timeout(Duration::from_secs(30), || ready.get() == 0));
    ready.get()
}

#[test]
fn conditions_cross_processes() {
    let cond = Condition::new().unwrap();
    let ready = Value::new(0u32).unwrap();
    let kids: Vec<_> = (0..2)
        .map(|_| corral::spawn(wait_condition, (cond.clone(), ready.clone())).unwrap())
        .collect();
    for k in &kids {
        let pid = k.pid();
        assert!(fx::wait_for(Duration::from_secs(30), || fx::is_sleeping(
            pid
        )));
    }
    {
        let guard = cond.acquire().unwrap();
        ready.set(7);
        guard.notify_all();
    }
    for k in kids {
        assert_eq!(done(k).unwrap(), 7);
    }
}

fn write_shm((shm, byte): (SharedMemory, u8)) {
    shm.write(0, &[byte; 64]);
}

fn create_named_and_hang((name, holding): (String, Event)) {
    let shm = SharedMemory::create(&name, 4096).unwrap();
    shm.write(0, b"alive");
    holding.set();
    fx::hang(());
}

fn read_named(name: String) -> Vec<u8> {
    let shm = SharedMemory::open(&name).unwrap();
    let mut out = vec![0u8; 5];
    shm.read(0, &mut out);
    out
}

#[test]
fn shared_memory_anonymous_and_named() {
    let before = fx::shm_entries();
    let shm = SharedMemory::new(4096).unwrap();
    done(corral::spawn(write_shm, (shm.clone(), 9)).unwrap()).unwrap();
    let mut out = [0u8; 64];
    shm.read(0, &mut out);
    assert_eq!(out, [9; 64]);

    // A named segment, opened by name in another process, removed when its
    // creator is SIGKILLed.
    let name = format!("corral-test-{}", std::process::id());
    let holding = Event::new().unwrap();
    let creator = corral::spawn(create_named_and_hang, (name.clone(), holding.clone())).unwrap();
    assert!(holding.wait_timeout(Duration::from_secs(30)));
    assert!(fx::shm_entries().contains(&name));
    assert_eq!(
        done(corral::spawn(read_named, name.clone()).unwrap()).unwrap(),
        b"alive"
    );
    creator.kill().unwrap();
    assert!(creator.join_timeout(Duration::from_secs(10)).is_err());
    assert!(
        fx::wait_for(Duration::from_secs(10), || !fx::shm_entries()
            .contains(&name)),
        "/dev/shm/{name} outlived its SIGKILLed creator"
    );

    // Created and unlinked here.
    let mine = SharedMemory::create(&name, 100).unwrap();
    assert_eq!(mine.name(), Some(name.as_str()));
    assert!(
        SharedMemory::create(&name, 100).is_err(),
        "names are exclusive"
    );
    SharedMemory::unlink(&name).unwrap();
    assert!(SharedMemory::open(&name).is_err());
    assert_eq!(fx::shm_entries(), before, "/dev/shm entries left behind");
}

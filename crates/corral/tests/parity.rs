//! What Python's multiprocessing, concurrent.futures, pebble and loky users
//! reach for (issue #10): process introspection and the futures vocabulary,
//! with real processes and every wait bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral::{ExitStatus, Pool, Process, ProcessError, Queue, StartMethod, TaskError};
use corral_fixtures as fx;
use corral_fixtures::task_done as done;
use corral_fixtures::within;

corral::test_support!();

const METHODS: [StartMethod; 3] = [
    StartMethod::ForkServer,
    StartMethod::Spawn,
    StartMethod::Fork,
];

type Seen = (u32, Option<String>, bool, bool, Option<u32>);

fn introspect(_: ()) -> Seen {
    let me = corral::current_process();
    (
        me.pid,
        me.name,
        me.daemon,
        me.corral_child,
        corral::parent_process().map(|p| p.pid),
    )
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn square(x: u64) -> u64 {
    x * x
}

fn fail_on(bad: u64) -> impl Fn(u64) -> u64 {
    move |x| {
        assert!(x != bad);
        x
    }
}

fn fails_on_3(x: u64) -> u64 {
    fail_on(3)(x)
}

fn pid_then_abort(q: Queue<u32>) {
    q.put(std::process::id()).unwrap();
    std::process::abort();
}

#[test]
fn current_and_parent_process_under_every_start_method() {
    let me = corral::current_process();
    assert_eq!(me.pid, std::process::id());
    assert!(!me.corral_child && !me.daemon && me.name.is_none());
    assert_eq!(corral::parent_process(), None);
    for method in METHODS {
        let child = Process::builder()
            .name("looker")
            .daemon(true)
            .start_method(method)
            .spawn(introspect, ())
            .unwrap();
        let pid = child.pid();
        let seen = fx::done(child).unwrap();
        assert_eq!(
            seen,
            (
                pid,
                Some("looker".into()),
                true,
                true,
                Some(std::process::id())
            ),
            "{method:?}"
        );
    }
    // A pool worker knows it is one.
    let pool = Pool::new(1).unwrap();
    let (pid, name, daemon, child, parent) = done(pool.submit(introspect, ())).unwrap();
    assert_ne!(pid, std::process::id());
    assert_eq!(
        (name.as_deref(), daemon, child, parent),
        (Some("corral-worker"), true, true, Some(std::process::id()))
    );
}

#[test]
fn active_children_lists_the_running_ones_and_reaps_the_rest() {
    let child = Process::builder()
        .name("active-napper")
        .spawn(nap, 30_000)
        .unwrap();
    let quick = Process::builder()
        .name("active-quick")
        .spawn(nap, 0)
        .unwrap();
    let quick_pid = quick.pid();
    fx::done(quick).unwrap();
    let live = corral::active_children();
    let napper = live
        .iter()
        .find(|c| c.pid == child.pid())
        .expect("the running child is listed");
    assert_eq!(napper.name.as_deref(), Some("active-napper"));
    assert!(napper.is_alive());
    assert!(
        live.iter().all(|c| c.pid != quick_pid),
        "a joined child is not listed"
    );
    child.kill().unwrap();
    let pid = child.pid();
    assert!(fx::done(child).is_err());
    assert!(corral::active_children().iter().all(|c| c.pid != pid));
}

#[test]
fn interrupt_sends_sigint_and_the_status_stays_readable_after_join_fails() {
    for method in METHODS {
        let ready = Queue::unbounded().unwrap();
        let child = Process::builder()
            .start_method(method)
            .spawn(fx::hang_until_sigint, ready.clone())
            .unwrap();
        // Interrupt once it runs with SIGINT's default action (the runner's
        // may be "ignored", which a child inherits).
        let pid = ready.get_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(pid, child.pid());
        child.interrupt().unwrap();
        let err = fx::done(child).unwrap_err();
        assert_eq!(
            err.exit_status(),
            Some(ExitStatus::Signal(libc::SIGINT)),
            "{method:?}"
        );
    }
    let panicked = fx::done(corral::spawn(fx::panic_with_number, ()).unwrap()).unwrap_err();
    assert!(matches!(panicked, ProcessError::Panicked(_)));
    assert_eq!(panicked.exit_status(), Some(ExitStatus::Code(1)));
    let codec = fx::done(corral::spawn(fx::make_undeserializable, ()).unwrap()).unwrap_err();
    assert!(matches!(codec, ProcessError::Codec(_)), "{codec:?}");
    assert_eq!(codec.exit_status(), Some(ExitStatus::Code(0)));
}

#[test]
fn a_lost_task_names_the_worker_that_died() {
    let pool = Pool::new(2).unwrap();
    let q = Queue::unbounded().unwrap();
    let task = pool.submit(pid_then_abort, q.clone());
    assert!(corral::wait_all(
        std::slice::from_ref(&task),
        Some(Duration::from_secs(60))
    ));
    let reported = q.get_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(task.worker_pid(), Some(reported));
    assert_eq!(
        done(task),
        Err(TaskError::WorkerLost(ExitStatus::Signal(libc::SIGABRT)))
    );
    assert!(fx::wait_for(Duration::from_secs(10), || fx::is_gone(
        reported
    )));
}

#[test]
fn done_callbacks_see_every_outcome_and_may_submit_more() {
    let pool = Arc::new(Pool::new(2).unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let chained = Arc::new(AtomicU64::new(0));
    for x in 0..20u64 {
        let (seen, pool2, chained) = (seen.clone(), pool.clone(), chained.clone());
        pool.submit(fails_on_3, x).on_done(move |outcome| {
            if x == 0 {
                // A callback may use the pool (it runs outside its lock).
                chained.store(pool2.apply(square, 12).unwrap(), Ordering::SeqCst);
            }
            seen.lock().unwrap().push((x, outcome.is_ok()));
        });
    }
    // (Wait for the chained call: once the pool is closed it would fail.)
    assert!(fx::wait_for(Duration::from_secs(60), || chained
        .load(Ordering::SeqCst)
        != 0));
    let p = pool.clone();
    within(Duration::from_secs(60), move || p.join());
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let expected: Vec<(u64, bool)> = (0..20).map(|x| (x, x != 3)).collect();
    assert_eq!(seen, expected, "join waits for every callback");
    assert_eq!(chained.load(Ordering::SeqCst), 144);
    // Registered after the pool joined: runs at once, on this thread.
    let here = std::thread::current().id();
    let ran_on = Arc::new(Mutex::new(None));
    let r = ran_on.clone();
    pool.submit(square, 2).on_done(move |outcome| {
        assert_eq!(outcome, Err(TaskError::PoolClosed));
        *r.lock().unwrap() = Some(std::thread::current().id());
    });
    assert_eq!(*ran_on.lock().unwrap(), Some(here));
}

#[test]
fn a_panicking_callback_does_not_stop_the_others() {
    let pool = Pool::new(1).unwrap();
    let count = Arc::new(AtomicU64::new(0));
    for x in 0..5u64 {
        let count = count.clone();
        pool.submit(square, x).on_done(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
            assert!(x != 2, "callback for 2 panics (expected)");
        });
    }
    pool.join();
    assert_eq!(count.load(Ordering::SeqCst), 5);
}

#[test]
fn as_completed_with_a_timeout_gives_the_rest_back() {
    let pool = Pool::new(2).unwrap();
    let tasks = vec![pool.submit(nap, 1), pool.submit(nap, 60_000)];
    let started = Instant::now();
    let mut it = corral::as_completed(tasks).timeout(Duration::from_millis(500));
    let (first, value) = it.next().unwrap();
    assert_eq!((first, value), (0, Ok(1)));
    assert!(it.next().is_none());
    assert!(it.timed_out());
    assert!(started.elapsed() < Duration::from_secs(30));
    let rest = it.into_remaining();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0, 1);
    rest[0].1.cancel();
    assert!(fx::wait_for(Duration::from_secs(30), || pool
        .stats()
        .cancelled
        == 1));
}

#[test]
fn wait_first_error_returns_at_the_first_failure_or_when_all_end() {
    let pool = Pool::new(2).unwrap();
    let mut tasks: Vec<_> = (0..4).map(|x| pool.submit(fails_on_3, x)).collect();
    tasks.push(pool.submit(nap, 60_000));
    let failed = corral::wait_first_error(&tasks, Some(Duration::from_secs(60)));
    assert_eq!(failed, Some(3));
    assert!(tasks[3].failed() && !tasks[4].is_finished());
    tasks[4].cancel();
    let good: Vec<_> = (0..4).map(|x| pool.submit(square, x)).collect();
    assert_eq!(
        corral::wait_first_error(&good, Some(Duration::from_secs(60))),
        None
    );
    assert!(good.iter().all(|t| t.is_finished() && !t.failed()));
    let slow = [pool.submit(nap, 60_000)];
    assert_eq!(
        corral::wait_first_error(&slow, Some(Duration::from_millis(50))),
        None
    );
    assert!(!slow[0].is_finished());
    slow[0].cancel();
}

#[test]
fn map_async_is_a_task_for_the_whole_map() {
    let pool = Pool::new(2).unwrap();
    let all = pool.map_async(square, 0..1000u64);
    let squares = done(all).unwrap();
    assert_eq!(squares.len(), 1000);
    assert_eq!(squares[999], 999 * 999);
    // The first failing item's error, like `map`.
    assert!(matches!(
        done(pool.map_async(fails_on_3, 0..10u64)),
        Err(TaskError::Panicked(_))
    ));
    assert_eq!(done(pool.map_async(square, Vec::<u64>::new())), Ok(vec![]));
    // A Future too.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let sum: u64 = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), pool.map_async(square, 1..=3u64))
            .await
            .expect("in time")
            .unwrap()
            .iter()
            .sum()
    });
    assert_eq!(sum, 14);
}

#[test]
fn cancelling_a_map_async_stops_its_items_and_the_pool_goes_on() {
    let pool = Pool::new(2).unwrap();
    let all = pool.map_async(nap, vec![60_000u64; 40]);
    assert!(fx::wait_for(Duration::from_secs(30), || {
        pool.stats().workers == 2 && pool.stats().queued < 40
    }));
    let started = Instant::now();
    all.cancel();
    assert_eq!(done(all), Err(TaskError::Cancelled));
    // The running items' workers are killed, the rest skipped: the pool is
    // free for new work at once.
    let pool = Arc::new(pool);
    let p = pool.clone();
    assert_eq!(
        within(Duration::from_secs(30), move || p.apply(square, 5)),
        Ok(25)
    );
    assert!(fx::wait_for(Duration::from_secs(30), || pool
        .stats()
        .cancelled
        == 40));
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn dropping_an_imap_cancels_what_has_not_started() {
    let pool = Arc::new(Pool::new(2).unwrap());
    {
        let mut it = pool.imap(nap, std::iter::repeat(300u64)).chunk_size(1);
        assert_eq!(it.next(), Some(Ok(300)));
    }
    // Only the two running items finish; the window's other items are
    // skipped, so the pool has nothing left to do within a few naps.
    let p = pool.clone();
    within(Duration::from_secs(20), move || {
        assert!(fx::wait_for(Duration::from_secs(15), || p.stats().queued == 0));
        p.join();
    });
    let stats = pool.stats();
    assert!(stats.completed <= 4, "{stats:?}");
    assert!(stats.cancelled >= 100, "{stats:?}");
}

#[test]
fn imap_cancel_kills_the_running_items() {
    let pool = Pool::new(2).unwrap();
    let mut it = pool.imap_unordered(nap, std::iter::repeat(60_000u64));
    assert!(fx::wait_for(Duration::from_secs(30), || pool
        .stats()
        .workers
        == 2));
    it.cancel();
    assert!(it.next().is_none());
    drop(it);
    assert!(
        within(Duration::from_secs(30), move || {
            let ok = pool.join_timeout(Duration::from_secs(20));
            (ok, pool.stats().workers_replaced)
        })
        .0
    );
}

#[test]
fn imap_with_a_chunk_size_keeps_order_and_every_outcome() {
    let pool = Pool::new(2).unwrap();
    for chunk in [1, 7, 100, 5000] {
        let out: Vec<_> = pool
            .imap(fails_on_3, 0..2000u64)
            .chunk_size(chunk)
            .collect();
        assert_eq!(out.len(), 2000);
        for (x, o) in out.iter().enumerate() {
            assert_eq!(o.is_ok(), x != 3, "chunk {chunk}");
        }
        let mut un: Vec<u64> = pool
            .imap_unordered(square, 0..2000u64)
            .chunk_size(chunk)
            .map(Result::unwrap)
            .collect();
        un.sort_unstable();
        assert_eq!(un, (0..2000u64).map(|x| x * x).collect::<Vec<_>>());
    }
}

#[test]
fn shutdown_with_cancel_pending_cancels_what_has_not_started() {
    let pool = Pool::new(1).unwrap();
    let q = Queue::<u32>::unbounded().unwrap();
    let first = pool.submit(started_then_nap, (q.clone(), 300));
    let rest: Vec<_> = (0..20).map(|_| pool.submit(nap, 300)).collect();
    q.get_timeout(Duration::from_secs(30)).unwrap(); // the first one runs
    within(Duration::from_secs(30), move || pool.shutdown(true));
    assert_eq!(done(first), Ok(300));
    for task in rest {
        assert_eq!(done(task), Err(TaskError::Cancelled));
    }
}

fn started_then_nap((q, ms): (Queue<u32>, u64)) -> u64 {
    q.put(1).unwrap();
    nap(ms)
}

#[test]
fn join_timeout_gives_up_and_can_be_called_again() {
    let pool = Pool::new(1).unwrap();
    let task = pool.submit(nap, 500);
    assert!(!pool.join_timeout(Duration::from_millis(10)));
    assert_eq!(pool.apply(square, 2), Err(TaskError::PoolClosed));
    assert!(pool.join_timeout(Duration::from_secs(60)));
    assert_eq!(done(task), Ok(500));
    assert_eq!(pool.stats().workers, 0);
}

#[test]
fn wait_takes_children_pipes_queues_and_tasks_together() {
    let pool = Pool::new(1).unwrap();
    let child = corral::spawn(nap, 60_000).unwrap();
    let (ours, _theirs) = corral::Pipe::duplex().unwrap();
    let q = Queue::<u8>::unbounded().unwrap();
    let slow = pool.submit(nap, 60_000);
    let nothing =
        corral::wait(&[&child, &ours, &q, &slow], Some(Duration::from_millis(50))).unwrap();
    assert!(nothing.is_empty());
    slow.cancel();
    let ready = corral::wait(&[&child, &ours, &q, &slow], Some(Duration::from_secs(30))).unwrap();
    assert_eq!(ready, vec![3]);
    let quick = pool.submit(square, 3);
    let ready = corral::wait(&[&child, &quick], Some(Duration::from_secs(60))).unwrap();
    assert_eq!(ready, vec![1]);
    assert_eq!(done(quick), Ok(9));
    child.kill().unwrap();
    assert!(fx::done(child).is_err());
}

// ---- Sync and queue gaps -------------------------------------------------

fn hold_lock((lock, held, release): (corral::Lock, corral::Event, corral::Event)) {
    let _guard = lock.acquire().unwrap();
    held.set();
    release.wait();
}

fn hold_lock_and_die((lock, held): (corral::Lock, corral::Event)) {
    let guard = lock.acquire().unwrap();
    held.set();
    std::mem::forget(guard);
    std::process::abort();
}

#[test]
fn locked_tells_whether_any_process_holds_the_lock() {
    let lock = corral::Lock::new().unwrap();
    let (held, release) = (corral::Event::new().unwrap(), corral::Event::new().unwrap());
    let child = corral::spawn(hold_lock, (lock.clone(), held.clone(), release.clone())).unwrap();
    assert!(held.wait_timeout(Duration::from_secs(30)));
    assert!(lock.locked());
    release.set();
    fx::done(child).unwrap();
    assert!(!lock.locked());
    // A holder that died frees the lock (the kernel clears its owner); the
    // next acquirer is told.
    held.clear();
    let child = corral::spawn(hold_lock_and_die, (lock.clone(), held.clone())).unwrap();
    assert!(fx::done(child).is_err());
    assert!(!lock.locked());
    let taken = lock.acquire();
    assert!(matches!(taken, Err(corral::AcquireError::OwnerDied(_))));
    drop(taken);
    assert!(!lock.locked());
    let rlock = corral::RLock::new().unwrap();
    let a = rlock.acquire().unwrap();
    let b = rlock.acquire().unwrap();
    assert!(rlock.locked());
    drop((a, b));
    assert!(!rlock.locked());
}

fn take_and_keep(sem: corral::Semaphore) -> (usize, bool) {
    sem.acquire().unwrap().keep();
    let seen = sem.value();
    // Another thread holds no permit: it cannot return this one.
    let other = std::thread::scope(|s| s.spawn(|| sem.release().is_err()).join().unwrap());
    sem.release().unwrap();
    (seen, other)
}

#[test]
fn semaphore_value_and_a_bare_release() {
    let sem = corral::Semaphore::new(3).unwrap();
    let held = sem.acquire().unwrap();
    assert_eq!(sem.value(), 2);
    let (seen, other_refused) =
        fx::done(corral::spawn(take_and_keep, sem.clone()).unwrap()).unwrap();
    assert_eq!((seen, other_refused), (1, true));
    assert_eq!(sem.value(), 2);
    drop(held);
    assert_eq!(sem.value(), 3);
    assert!(matches!(
        sem.release(),
        Err(corral::Error::InvalidArgument(_))
    ));
}

static ROUNDS_LED: AtomicU64 = AtomicU64::new(0);

fn count_round() {
    ROUNDS_LED.fetch_add(1, Ordering::SeqCst);
}

fn barrier_rounds((b, rounds): (corral::Barrier, u32)) -> u64 {
    for _ in 0..rounds {
        b.wait().unwrap();
    }
    ROUNDS_LED.load(Ordering::SeqCst)
}

fn refuse() {
    panic!("the action refuses (expected)");
}

#[test]
fn barrier_action_runs_once_per_round_in_one_party() {
    let b = corral::Barrier::builder(3)
        .action(count_round)
        .build()
        .unwrap();
    let kids: Vec<_> = (0..2)
        .map(|_| corral::spawn(barrier_rounds, (b.clone(), 5)).unwrap())
        .collect();
    let mine = barrier_rounds((b.clone(), 5));
    let total: u64 = mine + kids.into_iter().map(|k| fx::done(k).unwrap()).sum::<u64>();
    assert_eq!(
        total, 5,
        "the action ran once per round, across the processes"
    );
    // A panicking action breaks the barrier and the panic goes on.
    let b = corral::Barrier::builder(1).action(refuse).build().unwrap();
    assert!(std::panic::catch_unwind(|| b.wait()).is_err());
    assert!(b.is_broken());
    assert_eq!(b.wait(), Err(corral::BarrierError::Broken));
    b.reset();
    assert!(!b.is_broken());
}

fn wait_at(b: corral::Barrier) -> Result<u32, corral::BarrierError> {
    b.wait().map(|r| r.index())
}

#[test]
fn barrier_reset_and_default_timeout() {
    let b = corral::Barrier::new(2).unwrap();
    let child = corral::spawn(wait_at, b.clone()).unwrap();
    assert!(fx::wait_for(Duration::from_secs(30), || b.n_waiting() == 1));
    b.reset();
    assert_eq!(fx::done(child).unwrap(), Err(corral::BarrierError::Broken));
    assert!(!b.is_broken());
    // Usable again after the reset.
    let child = corral::spawn(wait_at, b.clone()).unwrap();
    b.wait().unwrap();
    assert!(fx::done(child).unwrap().is_ok());
    let timed = corral::Barrier::builder(2)
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    assert_eq!(timed.timeout(), Some(Duration::from_millis(100)));
    assert_eq!(timed.wait(), Err(corral::BarrierError::Timeout));
    assert!(timed.is_broken());
}

fn consume_one(q: corral::JoinableQueue<u64>) -> Result<u64, corral::GetError> {
    let got = q.get_timeout(Duration::from_secs(30));
    if got.is_ok() {
        q.task_done();
    }
    got
}

#[test]
fn queue_shutdown_immediate_discards_and_unblocks_join() {
    let q = corral::JoinableQueue::unbounded().unwrap();
    for x in 0..10u64 {
        q.put(x).unwrap();
    }
    assert_eq!(
        fx::done(corral::spawn(consume_one, q.clone()).unwrap()).unwrap(),
        Ok(0)
    );
    assert_eq!(q.shutdown(true), 9);
    assert!(
        q.join_timeout(Duration::from_secs(5)),
        "every item counts as done"
    );
    assert_eq!(
        fx::done(corral::spawn(consume_one, q.clone()).unwrap()).unwrap(),
        Err(corral::GetError::Disconnected)
    );
    assert!(matches!(q.put(1), Err(corral::PutError::Closed(1))));
    // Not immediate: what is left can still be taken.
    let q = corral::Queue::unbounded().unwrap();
    q.put(7u8).unwrap();
    assert_eq!(q.shutdown(false), 0);
    assert_eq!(q.get(), Ok(7));
    assert_eq!(q.get(), Err(corral::GetError::Disconnected));
}

fn transfer((from, to, n): (corral::Value<i64>, corral::Value<i64>, u32)) {
    let lock = from.get_lock();
    for _ in 0..n {
        let _both = lock.acquire().unwrap();
        from.set_unlocked(from.get_unlocked() - 1);
        to.set_unlocked(to.get_unlocked() + 1);
    }
}

fn audit((a, b, rounds): (corral::Value<i64>, corral::Value<i64>, u32)) -> bool {
    let lock = a.get_lock();
    (0..rounds).all(|_| {
        let _both = lock.acquire().unwrap();
        a.get_unlocked() + b.get_unlocked() == 1000
    })
}

#[test]
fn values_built_around_one_lock_change_together() {
    let lock = corral::Lock::new().unwrap();
    let a = corral::Value::with_lock(1000i64, lock.clone()).unwrap();
    let b = corral::Value::with_lock(0i64, lock.clone()).unwrap();
    let movers: Vec<_> = [(a.clone(), b.clone()), (b.clone(), a.clone())]
        .into_iter()
        .map(|(x, y)| corral::spawn(transfer, (x, y, 2000)).unwrap())
        .collect();
    let auditor = corral::spawn(audit, (a.clone(), b.clone(), 2000)).unwrap();
    for m in movers {
        fx::done(m).unwrap();
    }
    assert!(fx::done(auditor).unwrap(), "a transfer was seen half done");
    assert_eq!(a.get() + b.get(), 1000);
    // The handle carries its lock: a child's get_lock is the same lock.
    let (held, release) = (corral::Event::new().unwrap(), corral::Event::new().unwrap());
    let child = corral::spawn(hold_lock, (b.get_lock(), held.clone(), release.clone())).unwrap();
    assert!(held.wait_timeout(Duration::from_secs(30)));
    assert!(lock.locked());
    release.set();
    fx::done(child).unwrap();
    // An array's own lock, and one it shares.
    let arr = corral::Array::with_lock(&[1u8, 2, 3], lock.clone()).unwrap();
    let own = corral::Array::from_slice(&[0u8; 2]).unwrap();
    let own_lock = own.get_lock();
    let g = own_lock.acquire().unwrap();
    assert!(own.get_lock().locked() && !lock.locked());
    drop(g);
    let shared = arr.get_lock();
    let g = shared.acquire().unwrap();
    assert!(lock.locked());
    drop(g);
    assert_eq!(arr.to_vec(), [1, 2, 3]);
}

fn announce(q: Queue<u32>) {
    q.put(std::process::id()).unwrap();
}

#[test]
fn an_initializer_argument_may_hold_handles() {
    let started = Queue::<u32>::unbounded().unwrap();
    let pool = Pool::builder()
        .processes(2)
        .initializer(announce, started.clone())
        .build()
        .unwrap();
    let a = started.get_timeout(Duration::from_secs(30)).unwrap();
    let b = started.get_timeout(Duration::from_secs(30)).unwrap();
    assert_ne!(a, b);
    // A replacement worker gets its own copy too.
    assert!(matches!(
        done(pool.submit(fx::abort, ())),
        Err(TaskError::WorkerLost(_))
    ));
    let c = started.get_timeout(Duration::from_secs(30)).unwrap();
    assert!(c != a && c != b);
    assert_eq!(done(pool.submit(square, 3)), Ok(9));
}

// ---- Pool life -----------------------------------------------------------

#[test]
fn idle_workers_leave_and_come_back_for_work() {
    let pool = Pool::builder()
        .processes(2)
        .idle_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    assert_eq!(done(pool.submit(square, 4)), Ok(16));
    assert!(fx::wait_for(Duration::from_secs(20), || pool
        .stats()
        .workers
        == 0));
    assert_eq!(pool.map(square, 0..10u64).unwrap()[9], 81);
    let stats = pool.stats();
    assert!(stats.workers_retired >= 2, "{stats:?}");
    assert_eq!((stats.workers_replaced, stats.failed), (0, 0), "{stats:?}");
}

/// A task that outlasts the caller's watch is read by the caller itself,
/// asleep on the pool's bell, not by the dispatcher thread: the idle limit
/// must still start then.
#[test]
fn a_worker_idle_after_a_task_the_caller_read_leaves_in_time() {
    let pool = Pool::builder()
        .processes(1)
        .idle_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    assert_eq!(pool.apply(nap, 20), Ok(20));
    assert!(
        fx::wait_for(Duration::from_secs(10), || pool.stats().workers == 0),
        "{:?}",
        pool.stats()
    );
    assert_eq!(pool.apply(nap, 20), Ok(20));
    assert_eq!(pool.stats().workers_retired, 1, "{:?}", pool.stats());
}

#[test]
fn a_live_pool_grows_and_shrinks_without_failing_a_task() {
    let pool = Arc::new(Pool::new(1).unwrap());
    let tasks: Vec<_> = (0..12).map(|_| pool.submit(nap, 100)).collect();
    pool.resize(3).unwrap();
    assert_eq!(pool.processes(), 3);
    assert!(fx::wait_for(Duration::from_secs(30), || pool
        .stats()
        .workers
        == 3));
    pool.resize(1).unwrap();
    for t in tasks {
        assert_eq!(done(t), Ok(100));
    }
    assert!(fx::wait_for(Duration::from_secs(30), || pool
        .stats()
        .workers
        == 1));
    let stats = pool.stats();
    assert_eq!((stats.failed, stats.workers_replaced), (0, 0), "{stats:?}");
    assert_eq!(stats.workers_retired, 2, "{stats:?}");
    assert!(matches!(
        pool.resize(0),
        Err(corral::Error::InvalidArgument(_))
    ));
}

fn dive(level: u32) -> Result<u32, String> {
    match corral::spawn(dive, level + 1) {
        Ok(child) => child.join().map_err(|e| e.to_string())?,
        Err(corral::Error::NestingTooDeep { depth, limit }) => {
            assert_eq!(depth, level);
            Ok(limit)
        }
        Err(e) => Err(e.to_string()),
    }
}

fn nested_pool(_: ()) -> String {
    // A task that builds a pool whose tasks build pools, without end.
    match Pool::new(1) {
        Ok(pool) => match pool.apply(nested_pool, ()) {
            Ok(msg) => msg,
            Err(e) => format!("task failed: {e}"),
        },
        Err(e) => e.to_string(),
    }
}

#[test]
fn runaway_nesting_ends_with_a_clear_error() {
    assert_eq!(fx::done(corral::spawn(dive, 1).unwrap()).unwrap(), Ok(10));
    let pool = Pool::new(1).unwrap();
    let msg = within(Duration::from_secs(120), move || {
        pool.apply(nested_pool, ()).unwrap()
    });
    assert!(msg.contains("nested 10 levels deep"), "{msg}");
    assert!(msg.contains("CORRAL_MAX_DEPTH"), "{msg}");
}

fn leak(mib: usize) -> u32 {
    let v = vec![1u8; mib << 20];
    std::mem::forget(v);
    std::process::id()
}

#[test]
fn a_worker_that_grew_past_the_threshold_is_replaced_between_tasks() {
    let pool = Pool::builder()
        .processes(1)
        .recycle_memory(96 << 20)
        .build()
        .unwrap();
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..30 {
        pids.insert(done(pool.submit(leak, 16)).unwrap());
        std::thread::sleep(Duration::from_millis(60));
    }
    let stats = pool.stats();
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert!(pids.len() >= 3, "the worker was replaced: {pids:?}");
    assert!(stats.workers_retired >= 2, "{stats:?}");
    assert_eq!(stats.workers_replaced, 0, "{stats:?}");
}

// ---- Observability -------------------------------------------------------

#[test]
fn per_worker_counts_and_pids() {
    let pool = Pool::new(2).unwrap();
    pool.map_chunked(square, 0..100u64, 5).unwrap();
    assert!(matches!(
        done(pool.submit(fails_on_3, 3)),
        Err(TaskError::Panicked(_))
    ));
    let workers = pool.workers();
    assert_eq!(workers.len(), 2);
    assert_ne!(workers[0].pid, workers[1].pid);
    assert_eq!(workers.iter().map(|w| w.completed).sum::<u64>(), 100);
    assert_eq!(workers.iter().map(|w| w.failed).sum::<u64>(), 1);
    let children: Vec<u32> = corral::active_children().iter().map(|c| c.pid).collect();
    assert!(workers.iter().all(|w| children.contains(&w.pid) && w.ready));
    // A worker that dies leaves the list; its replacement joins it.
    let task = pool.submit(fx::abort, ());
    assert!(corral::wait_all(
        std::slice::from_ref(&task),
        Some(Duration::from_secs(60))
    ));
    let dead = task.worker_pid().unwrap();
    assert!(fx::wait_for(Duration::from_secs(30), || {
        let now = pool.workers();
        now.len() == 2 && now.iter().all(|w| w.pid != dead)
    }));
}

#[test]
fn automatic_imap_chunks_share_a_short_input_after_a_long_fast_one() {
    let pool = Pool::new(2).unwrap();
    // Teach the pool that `pid` is fast: its next imap starts with big chunks.
    let fast = pool
        .imap(pid_after, std::iter::repeat_n(0, 200_000))
        .count();
    assert_eq!(fast, 200_000);
    // Four slow items of the same function: still spread over both workers.
    let pids: std::collections::BTreeSet<u32> = pool
        .imap(pid_after, [100u64; 4])
        .map(Result::unwrap)
        .collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
}

fn pid_after(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn byte_len(v: Vec<u8>) -> usize {
    v.len()
}

#[test]
fn automatic_imap_chunks_keep_large_items_within_a_byte_budget() {
    let pool = Pool::new(2).unwrap();
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = pulled.clone();
    let input = std::iter::repeat_with(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        vec![7u8; 256 << 10]
    });
    let mut it = pool.imap(byte_len, input);
    for _ in 0..1000 {
        assert_eq!(it.next(), Some(Ok(256 << 10)));
        // At most 64 MiB of arguments in flight: 256 items of 256 KiB.
        assert!(pulled.load(Ordering::SeqCst) <= 1000 + 256 + 64);
    }
}

#[test]
fn a_task_ending_after_its_wait_does_not_cut_a_later_wait_short() {
    let pool = Pool::new(1).unwrap();
    let earlier = pool.submit(nap, 300);
    // Many short waits on one task (a polling loop) ...
    for _ in 0..50 {
        assert!(
            corral::wait(&[&earlier], Some(Duration::from_millis(1)))
                .unwrap()
                .is_empty()
        );
    }
    // ... then a wait on something else, during which that task ends.
    let q = Queue::<u8>::unbounded().unwrap();
    let started = Instant::now();
    let ready = corral::wait(&[&q], Some(Duration::from_secs(1))).unwrap();
    assert!(ready.is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "returned early with nothing ready"
    );
    assert!(earlier.is_finished());
}

// ---- Plain data through shared memory (issue #14, item 2) ----------------

#[derive(Clone, Copy, Debug, PartialEq, corral::bytemuck::Pod, corral::bytemuck::Zeroable)]
#[bytemuck(crate = "corral::bytemuck")]
#[repr(C)]
struct Point {
    x: f32,
    y: f32,
}

fn norm2(p: Point) -> f64 {
    f64::from(p.x * p.x + p.y * p.y)
}

fn square_u64(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn pod_fails_at(x: u64) -> u64 {
    if x == 777_777 {
        panic!("bad item {x}");
    }
    if x == 888_888 {
        std::process::abort();
    }
    x
}

fn pod_nap(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(1));
    x
}

/// Workers write `map_pod`'s results straight into the caller's vector, so
/// a call may return (and free it) only once no worker can write any more:
/// a terminate that interrupts it fails it only once its workers are dead.
#[test]
fn a_terminated_map_pod_returns_only_once_its_workers_are_dead() {
    within(Duration::from_secs(60), || {
        let pool = Arc::new(Pool::new(2).unwrap());
        let busy = Arc::new(Mutex::new(Vec::new()));
        let (p, pids) = (pool.clone(), busy.clone());
        let call = std::thread::spawn(move || {
            let xs: Vec<u64> = (0..100_000).collect();
            let outcome = p.map_pod(pod_nap, &xs).map(|v| v.len());
            let pids = pids.lock().unwrap().clone();
            (
                outcome,
                pids.into_iter()
                    .filter(|&pid| !fx::is_gone(pid))
                    .collect::<Vec<u32>>(),
            )
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let running = loop {
            let stats = pool.workers();
            if stats.iter().filter(|w| w.busy).count() == 2 {
                break stats.iter().map(|w| w.pid).collect::<Vec<u32>>();
            }
            assert!(
                Instant::now() < deadline,
                "map_pod never kept both workers busy"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        *busy.lock().unwrap() = running;
        pool.terminate();
        let (outcome, alive) = call.join().unwrap();
        assert_eq!(outcome, Err(TaskError::PoolClosed));
        assert_eq!(
            alive,
            Vec::<u32>::new(),
            "workers alive when map_pod returned"
        );
    });
}

/// Creates `<temp>/corral-every-<x / 1000>/<x % 1000>`, then panics for
/// the items ending in 3 and 7, and aborts its worker for those ending in
/// 12 and 15.
fn mark_then_fail(x: u64) -> u64 {
    let dir = std::env::temp_dir().join(format!("corral-every-{}", x / 1000));
    std::fs::write(dir.join((x % 1000).to_string()), b"").unwrap();
    match x % 1000 {
        3 | 7 => panic!("item {}", x % 1000),
        12 | 15 => std::process::abort(),
        _ => x,
    }
}

/// How [`map_marking`] maps its items.
#[derive(Debug, Clone, Copy)]
enum Marking {
    Map,
    /// `map_pod`, its results the size of its items (written over them in
    /// the worker).
    Pod,
    /// `map_pod` to results half the size of its items (written beside).
    PodNarrow,
}

/// Maps `mark_then_fail` over the items `first..40` (`how`): the error, and
/// how many items ran.
fn map_marking(pool: &Pool, first: u64, how: Marking) -> (TaskError, usize) {
    let token = u64::from(std::process::id());
    let dir = std::env::temp_dir().join(format!("corral-every-{token}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let items: Vec<u64> = (first..40).map(|i| token * 1000 + i).collect();
    let err = match how {
        Marking::Map => pool.map(mark_then_fail, items).unwrap_err(),
        Marking::Pod => pool.map_pod(mark_then_fail, &items).unwrap_err(),
        Marking::PodNarrow => pool
            .map_pod(|x: u64| mark_then_fail(x) as u32, &items)
            .unwrap_err(),
    };
    let ran = std::fs::read_dir(&dir).unwrap().count();
    std::fs::remove_dir_all(&dir).unwrap();
    (err, ran)
}

/// `map` of plain numbers runs through `map_pod`'s path; as with any
/// `map`, every item runs even if some panic or kill their worker, and
/// the error is the first failure in input order. `map_pod` the same,
/// whether its workers write results over their items or beside them.
#[test]
fn a_map_of_numbers_runs_every_item_even_if_some_fail() {
    let pool = Pool::new(2).unwrap();
    for how in [Marking::Map, Marking::Pod, Marking::PodNarrow] {
        let (err, ran) = map_marking(&pool, 0, how);
        let panic = err.panic().expect("a panic");
        assert_eq!(panic.message, "item 3", "{how:?}");
        assert!(
            panic
                .location
                .as_deref()
                .unwrap_or("")
                .contains("parity.rs"),
            "{panic:?}"
        );
        // The first panic's backtrace, resolved when it is reported (the
        // later panics' are dropped unresolved).
        assert!(
            panic.backtrace.contains("mark_then_fail"),
            "{how:?}: {}",
            panic.backtrace
        );
        assert_eq!(ran, 40, "{how:?}");
        // Two items abort their workers (in one range when they are 4
        // ranges of 7): the items after each still run.
        let (err, ran) = map_marking(&pool, 12, how);
        assert_eq!(
            err,
            TaskError::WorkerLost(ExitStatus::Signal(libc::SIGABRT)),
            "{how:?}"
        );
        assert_eq!(ran, 28, "{how:?}");
    }
    assert_eq!(pool.map(square, 0..10u64).unwrap()[9], 81);
}

/// Appends its item's number to `<temp>/corral-once-<x / 10^6>` (one
/// `O_APPEND` write), then aborts its worker for the numbers of
/// [`ABORTS_AT`].
fn mark_once(x: u64) -> u64 {
    use std::io::Write;
    let path = std::env::temp_dir().join(format!("corral-once-{}", x / 1_000_000));
    let mut marks = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    let i = (x % 1_000_000) as u32;
    marks.write_all(&i.to_le_bytes()).unwrap();
    if ABORTS_AT.contains(&i) {
        std::process::abort();
    }
    x
}

/// Where [`mark_once`] aborts, of [`MARKED`] items (`map_pod`'s four ranges
/// of 10,000, each run in blocks of 8,192): the last item of a group of
/// eight, the first of one, one in a range's second block, and the very
/// last item.
const ABORTS_AT: [u32; 4] = [7, 10_008, 28_195, 39_999];

/// How many items the test maps.
const MARKED: u64 = 40_000;

/// [`mark_once`] of an item that `map` encodes (not a plain number).
fn mark_once_encoded((x,): (u64,)) -> (u64,) {
    (mark_once(x),)
}

/// A worker killed in the middle of a `map_pod` range (which its worker
/// runs in blocks, noting each item it begins), or of a `map`'s batch:
/// every item runs exactly once, the killing ones included, whichever
/// position it dies at, under every start method.
#[test]
fn a_map_whose_workers_die_runs_every_item_exactly_once() {
    within(Duration::from_secs(60), || {
        for (method, pod) in METHODS.iter().flat_map(|&m| [(m, true), (m, false)]) {
            let (runs, replaced) = runs_of_a_map_marking_once(method, pod);
            let wrong: Vec<(usize, u32)> = runs
                .iter()
                .enumerate()
                .filter(|&(_, &n)| n != 1)
                .map(|(i, &n)| (i, n))
                .take(10)
                .collect();
            let case = format!("{method:?}, map_pod: {pod}");
            assert_eq!(wrong, [], "{case}: (item, runs) not run once");
            assert_eq!(replaced, ABORTS_AT.len() as u64, "{case}");
        }
    });
}

/// Maps [`mark_once`] over [`MARKED`] items (by `map_pod`, or by `map` as
/// encoded items) in a pool of workers started by `method`: how many times
/// each ran, and how many workers the pool replaced.
fn runs_of_a_map_marking_once(method: StartMethod, pod: bool) -> (Vec<u32>, u64) {
    let token = u64::from(std::process::id());
    let path = std::env::temp_dir().join(format!("corral-once-{token}"));
    std::fs::write(&path, b"").unwrap();
    let pool = Pool::builder()
        .processes(2)
        .start_method(method)
        .build()
        .unwrap();
    let items: Vec<u64> = (0..MARKED).map(|i| token * 1_000_000 + i).collect();
    let err = if pod {
        pool.map_pod(mark_once, &items).unwrap_err()
    } else {
        let encoded = items.iter().map(|&x| (x,));
        pool.map(mark_once_encoded, encoded).unwrap_err()
    };
    assert_eq!(
        err,
        TaskError::WorkerLost(ExitStatus::Signal(libc::SIGABRT))
    );
    let marks = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut runs = vec![0u32; items.len()];
    for mark in marks.chunks_exact(4) {
        runs[u32::from_le_bytes(mark.try_into().unwrap()) as usize] += 1;
    }
    (runs, pool.stats().workers_replaced)
}

macro_rules! doubles {
    ($($name:ident: $t:ty),*) => {$(
        fn $name(x: $t) -> $t {
            x + x
        }
    )*};
}
doubles!(d_u8: u8, d_u16: u16, d_u32: u32, d_u64: u64, d_usize: usize, d_i8: i8, d_i16: i16,
    d_i32: i32, d_i64: i64, d_isize: isize, d_f32: f32, d_f64: f64);

/// A pool keeps the item vector of a `map` of numbers for the next: a
/// shorter map after a longer one gives only its own results, and a map of
/// another type in between takes nothing from it.
#[test]
fn maps_of_numbers_in_a_row_give_each_its_own_results() {
    let pool = Pool::new(2).unwrap();
    let long = pool.map(square, 0..1000u64).unwrap();
    assert_eq!((long.len(), long[999]), (1000, 999 * 999));
    assert_eq!(pool.map(square, 5..8u64).unwrap(), vec![25, 36, 49]);
    assert_eq!(pool.map(d_i32, [1i32, 2]).unwrap(), vec![2, 4]);
    assert_eq!(pool.map(square, [3u64]).unwrap(), vec![9]);
    assert!(
        pool.map(square, std::iter::empty::<u64>())
            .unwrap()
            .is_empty()
    );
    // Beyond what a pool keeps (4 MiB): the same results.
    let big = pool.map(square, 0..1_000_000u64).unwrap();
    assert_eq!((big.len(), big[999_999]), (1_000_000, 999_999 * 999_999));
    assert_eq!(pool.map(square, 7..9u64).unwrap(), vec![49, 64]);
}

/// Every primitive type `map` hands to `map_pod` comes back whole.
#[test]
fn a_map_of_each_primitive_type_gives_its_results() {
    let pool = Pool::new(2).unwrap();
    macro_rules! check {
        ($($name:ident: $t:ty),*) => {$(
            let items: Vec<$t> = (0..50u8).map(|i| i as $t).collect();
            let want: Vec<$t> = items.iter().map(|&x| $name(x)).collect();
            assert_eq!(pool.map($name, items).unwrap(), want, stringify!($t));
        )*};
    }
    check!(d_u8: u8, d_u16: u16, d_u32: u32, d_u64: u64, d_usize: usize, d_i8: i8, d_i16: i16,
        d_i32: i32, d_i64: i64, d_isize: isize, d_f32: f32, d_f64: f64);
}

fn hang_at_5(x: u64) -> u64 {
    if x == 5 {
        std::thread::sleep(Duration::from_secs(60));
    }
    x
}

/// `map_pod` applies a task timeout per range: a range past it fails the
/// call at once (the rest of it does not run again elsewhere, which could
/// outlive the timeout many times over).
#[test]
fn a_map_pod_range_past_the_task_timeout_fails_the_call() {
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let xs: Vec<u64> = (0..40).collect();
    let got = within(Duration::from_secs(30), move || {
        let got = pool.map_pod(hang_at_5, &xs);
        (got, pool.map_pod(hang_at_5, &xs[6..]))
    });
    assert_eq!(got.0, Err(TaskError::TimedOut(Duration::from_millis(300))));
    assert_eq!(got.1.unwrap().len(), 34);
}

/// A pool's task timeout limits each item of a `map`, numbers too (which
/// then are not run as `map_pod`'s ranges of many items).
#[test]
fn a_task_timeout_limits_each_item_of_a_map_of_numbers() {
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    // 40 items of 100 ms: 1 s for a quarter of them.
    let naps = within(Duration::from_secs(60), move || {
        pool.map(nap, vec![100u64; 40])
    });
    assert_eq!(naps, Ok(vec![100u64; 40]));
}

#[test]
fn map_pod_maps_plain_data_in_place() {
    let pool = Pool::new(2).unwrap();
    let xs: Vec<u64> = (0..1_000_003).collect();
    // Workers may reach this process's memory: they read the items and
    // write the results in place (see tests/pod_refused.rs for the other
    // way).
    let here = (std::process::id(), xs.as_ptr() as u64);
    assert_eq!(pool.apply(fx::peek_memory, here).unwrap(), 0);
    let out = pool.map_pod(square_u64, &xs).unwrap();
    assert_eq!(out.len(), xs.len());
    assert!(out.iter().zip(&xs).all(|(o, x)| *o == x.wrapping_mul(*x)));
    let points: Vec<Point> = (0..1000)
        .map(|i| Point {
            x: i as f32,
            y: 1.0,
        })
        .collect();
    let norms = pool.map_pod(norm2, &points).unwrap();
    assert_eq!(norms[3], 10.0);
    assert_eq!(pool.map_pod(square_u64, &[]), Ok(vec![]));
    // Past 8 MiB the results vector asks for huge pages: every range, the
    // short last one too, lands where it belongs.
    let big: Vec<u64> = (0..3_000_017).collect();
    let out = pool.map_pod(square_u64, &big).unwrap();
    assert_eq!(out.len(), big.len());
    assert!(out.iter().zip(&big).all(|(o, x)| *o == x.wrapping_mul(*x)));
    // A panic fails the call; a crash too, and the pool goes on.
    let err = pool.map_pod(pod_fails_at, &xs[..800_000]).unwrap_err();
    assert_eq!(err.panic().unwrap().message, "bad item 777777");
    let err = pool
        .map_pod(pod_fails_at, &xs[800_000..900_000])
        .unwrap_err();
    assert_eq!(
        err,
        TaskError::WorkerLost(ExitStatus::Signal(libc::SIGABRT))
    );
    assert_eq!(pool.map_pod(square_u64, &xs[..10]).unwrap()[9], 81);
}

/// `map_pod` takes a fn item (compiled into the workers' loop), a fn
/// pointer (called through it), or a closure that captures nothing; a
/// closure that captures is refused, its captures being this process's.
#[test]
fn map_pod_takes_a_fn_a_pointer_or_a_closure_that_captures_nothing() {
    let pool = Pool::new(2).unwrap();
    let xs: Vec<u64> = (0..100_003).collect();
    let plus_one = pool.map_pod(|x: u64| x + 1, &xs).unwrap();
    assert!(plus_one.iter().zip(&xs).all(|(o, x)| *o == x + 1));
    let chosen: fn(u64) -> u64 = if xs.len() > 1 { square_u64 } else { |x| x };
    let squares = pool.map_pod(chosen, &xs).unwrap();
    assert!(
        squares
            .iter()
            .zip(&xs)
            .all(|(o, x)| *o == x.wrapping_mul(*x))
    );
    let k = 3u64;
    let refused = pool.map_pod(move |x: u64| x * k, &xs);
    assert!(
        matches!(&refused, Err(TaskError::InvalidArgument(m)) if m.contains("captures")),
        "{refused:?}"
    );
    // A panic in a closure fails the call with it, as in a fn.
    let err = pool
        .map_pod(|x: u64| if x == 5 { panic!("five") } else { x }, &xs)
        .unwrap_err();
    assert_eq!(err.panic().unwrap().message, "five");
    assert_eq!(pool.map_pod(|x: u32| x * 2, &[21u32]), Ok(vec![42]));
}

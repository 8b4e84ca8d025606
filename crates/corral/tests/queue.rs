//! Queues between real processes: exactly-once delivery with many producers
//! and consumers, processes killed in the middle of a put or a get, large
//! messages, timeouts, closing, and handles under every start method.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use corral::{
    Event, GetError, JoinableQueue, Pool, PutError, Queue, RawArray, RawValue, SimpleQueue,
    StartMethod,
};
use corral_fixtures as fx;
use corral_fixtures::done;

corral::test_support!();

const METHODS: [StartMethod; 3] = [
    StartMethod::ForkServer,
    StartMethod::Spawn,
    StartMethod::Fork,
];

/// `get`, bounded.
fn get<T: corral::Data>(q: &Queue<T>) -> T {
    q.get_timeout(Duration::from_secs(30))
        .expect("an item within 30 s")
}

fn produce((q, id, n): (Queue<Option<u64>>, u64, u64)) {
    for i in 0..n {
        q.put(Some(id << 32 | i)).unwrap();
    }
}

fn consume(q: Queue<Option<u64>>) -> Vec<u64> {
    let mut got = Vec::new();
    while let Some(v) = get(&q) {
        got.push(v);
    }
    got
}

#[test]
fn four_producers_four_consumers_deliver_every_item_exactly_once() {
    const N: u64 = 100_000;
    let q = Queue::bounded(1_000).unwrap();
    let consumers: Vec<_> = (0..4)
        .map(|_| corral::spawn(consume, q.clone()).unwrap())
        .collect();
    let producers: Vec<_> = (0..4u64)
        .map(|id| corral::spawn(produce, (q.clone(), id, N)).unwrap())
        .collect();
    for p in producers {
        done(p).unwrap();
    }
    for _ in 0..4 {
        q.put(None).unwrap();
    }
    let mut seen = HashSet::new();
    let mut per_consumer = Vec::new();
    for c in consumers {
        let got = done(c).unwrap();
        per_consumer.push(got.len());
        for v in got {
            assert!(seen.insert(v), "item {v:#x} delivered twice");
        }
    }
    assert_eq!(seen.len() as u64, 4 * N, "per consumer: {per_consumer:?}");
    for id in 0..4u64 {
        for i in (0..N).step_by(997) {
            assert!(seen.contains(&(id << 32 | i)));
        }
    }
    assert!(q.is_empty());
}

type Item = (u64, Vec<u8>);

/// Every 50th item is 300 KiB: it streams through the 1 MiB ring in chunks,
/// so a kill can land inside a message.
fn item(i: u64) -> Item {
    let len = if i.is_multiple_of(50) { 300 << 10 } else { 8 };
    (i, vec![(i % 251) as u8; len])
}

fn produce_items((q, n): (Queue<Option<Item>>, u64)) {
    for i in 0..n {
        q.put(Some(item(i))).unwrap();
    }
}

fn check(it: &Item) {
    assert_eq!(it.1, item(it.0).1, "item {} corrupted", it.0);
}

/// Records each item it takes in shared memory (index first, then count).
fn victim((q, log, count): (Queue<Option<Item>>, RawArray<u64>, RawValue<u64>)) {
    loop {
        let Some(it) = get(&q) else { return };
        check(&it);
        let n = count.get();
        log.set(n as usize, it.0);
        count.set(n + 1);
    }
}

fn survivor(q: Queue<Option<Item>>) -> Vec<u64> {
    let mut got = Vec::new();
    while let Some(it) = get(&q) {
        check(&it);
        got.push(it.0);
    }
    got
}

#[test]
fn a_consumer_killed_mid_run_loses_at_most_what_it_was_taking() {
    const N: u64 = 20_000;
    let q = Queue::bounded(64).unwrap();
    let log = RawArray::<u64>::zeroed(N as usize).unwrap();
    let count = RawValue::new(0u64).unwrap();
    let victim = corral::spawn(victim, (q.clone(), log.clone(), count.clone())).unwrap();
    let survivors: Vec<_> = (0..2)
        .map(|_| corral::spawn(survivor, q.clone()).unwrap())
        .collect();
    let producer = corral::spawn(produce_items, (q.clone(), N)).unwrap();
    assert!(fx::wait_for(Duration::from_secs(30), || count.get() > 2_000));
    victim.kill().unwrap();
    assert!(victim.join_timeout(Duration::from_secs(10)).is_err());
    done(producer).unwrap();
    q.put(None).unwrap();
    q.put(None).unwrap();
    let mut seen = HashSet::new();
    for s in survivors {
        for i in done(s).unwrap() {
            assert!(seen.insert(i), "item {i} delivered twice");
        }
    }
    let by_victim: Vec<u64> = (0..count.get() as usize)
        .filter_map(|i| log.get(i))
        .collect();
    for &i in &by_victim {
        assert!(
            seen.insert(i),
            "item {i} delivered to the victim and to a survivor"
        );
    }
    // The victim can have taken one item it did not record yet, or died in
    // the middle of taking one.
    let missing = N - seen.len() as u64;
    assert!(missing <= 1, "{missing} items lost");
    assert!(q.is_empty());
}

fn put_and_exit((q, n): (Queue<u64>, u64)) {
    for i in 0..n {
        q.put(i).unwrap();
    }
}

fn put_and_die(q: Queue<u64>) {
    q.put(42).unwrap();
    fx::kill_self(());
}

#[test]
fn items_put_survive_the_producer_exiting_or_dying() {
    let q = Queue::unbounded().unwrap();
    done(corral::spawn(put_and_exit, (q.clone(), 1_000)).unwrap()).unwrap();
    assert_eq!(q.len(), 1_000);
    for i in 0..1_000 {
        assert_eq!(get(&q), i);
    }
    let child = corral::spawn(put_and_die, q.clone()).unwrap();
    assert!(done(child).is_err());
    assert_eq!(get(&q), 42);
}

fn stream_forever((q, started): (Queue<Vec<u8>>, Event)) {
    started.set();
    // 8 MiB through a 64 KiB ring with nobody reading: blocks mid-message.
    q.put(vec![9u8; 8 << 20]).unwrap();
}

/// A queue whose producer was SIGKILLed in the middle of streaming a
/// message (asleep, waiting for room, holding the producers' lock).
fn queue_with_a_producer_killed_mid_message() -> Queue<Vec<u8>> {
    let q: Queue<Vec<u8>> = Queue::with_buffer(None, 64 << 10).unwrap();
    let started = Event::new().unwrap();
    let child = corral::spawn(stream_forever, (q.clone(), started.clone())).unwrap();
    assert!(started.wait_timeout(Duration::from_secs(30)));
    let pid = child.pid();
    assert!(fx::wait_for(Duration::from_secs(30), || fx::is_sleeping(
        pid
    )));
    child.kill().unwrap();
    assert!(child.join_timeout(Duration::from_secs(10)).is_err());
    q
}

#[test]
fn a_producer_killed_mid_message_leaves_a_clean_queue() {
    let q = queue_with_a_producer_killed_mid_message();
    // The consumer finds a partial message whose producer is dead: it drops
    // it rather than waiting forever or returning a torn value.
    assert_eq!(
        q.get_timeout(Duration::from_millis(300)),
        Err(GetError::Timeout)
    );
    q.put(vec![1, 2, 3]).unwrap();
    assert_eq!(get(&q), vec![1, 2, 3]);
    assert!(q.is_empty());
}

#[test]
fn a_producer_killed_mid_message_is_recovered_by_the_next_producer() {
    let q = queue_with_a_producer_killed_mid_message();
    // This put takes the producers' lock from the dead one and closes its
    // message; it needs a consumer to drain the ring, so get concurrently.
    let reader = {
        let q = q.clone();
        std::thread::spawn(move || get(&q))
    };
    q.put(vec![7u8; 100]).unwrap();
    assert_eq!(reader.join().unwrap(), vec![7u8; 100]);
}

fn big_echo((input, output): (Queue<Vec<u8>>, Queue<Vec<u8>>)) {
    let v = get(&input);
    output.put(v).unwrap();
}

#[test]
fn large_messages_stream_through_a_small_ring() {
    let input = Queue::bounded(2).unwrap();
    let output = Queue::bounded(2).unwrap();
    let child = corral::spawn(big_echo, (input.clone(), output.clone())).unwrap();
    let big: Vec<u8> = (0..(64u32 << 20)).map(|i| (i % 253) as u8).collect();
    input.put(big.clone()).unwrap();
    let back = output.get_timeout(Duration::from_secs(60)).unwrap();
    assert!(back == big, "64 MiB came back different");
    done(child).unwrap();
}

#[test]
fn get_timeout_waits_about_its_timeout_and_try_forms_do_not_wait() {
    let q: Queue<u8> = Queue::bounded(1).unwrap();
    let start = Instant::now();
    assert_eq!(
        q.get_timeout(Duration::from_millis(200)),
        Err(GetError::Timeout)
    );
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(q.try_get(), Err(GetError::Empty));
    q.put(1).unwrap();
    assert!(matches!(q.try_put(2), Err(PutError::Full(2))));
    let start = Instant::now();
    assert!(matches!(
        q.put_timeout(3, Duration::from_millis(100)),
        Err(PutError::Full(3))
    ));
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(q.len(), 1);
}

fn farm_worker((tasks, results): (Queue<Option<u64>>, Queue<(u64, u64)>)) -> u32 {
    let mut n = 0;
    while let Some(x) = get(&tasks) {
        results.put((x, x * x)).unwrap();
        n += 1;
    }
    n
}

#[test]
fn worker_farm_with_a_bounded_queue_and_sentinels() {
    let tasks = Queue::bounded(4).unwrap();
    let results = Queue::unbounded().unwrap();
    let workers: Vec<_> = (0..4)
        .map(|_| corral::spawn(farm_worker, (tasks.clone(), results.clone())).unwrap())
        .collect();
    for x in 0..1_000 {
        tasks.put(Some(x)).unwrap();
        assert!(tasks.len() <= 4);
    }
    for _ in 0..4 {
        tasks.put(None).unwrap();
    }
    let mut out: Vec<(u64, u64)> = (0..1_000).map(|_| get(&results)).collect();
    out.sort();
    assert_eq!(out, (0..1_000).map(|x| (x, x * x)).collect::<Vec<_>>());
    let handled: u32 = workers.into_iter().map(|w| done(w).unwrap()).sum();
    assert_eq!(handled, 1_000);
}

fn wait_for_item(q: Queue<u8>) -> Result<u8, GetError> {
    q.get_timeout(Duration::from_secs(30))
}

#[test]
fn close_wakes_a_waiting_consumer_and_refuses_puts() {
    let q = Queue::unbounded().unwrap();
    let child = corral::spawn(wait_for_item, q.clone()).unwrap();
    let pid = child.pid();
    assert!(fx::wait_for(Duration::from_secs(30), || fx::is_sleeping(
        pid
    )));
    q.close();
    assert_eq!(done(child).unwrap(), Err(GetError::Disconnected));
    assert!(matches!(q.put(1), Err(PutError::Closed(1))));
}

#[test]
fn serialization_errors_are_returned_by_put() {
    let q: Queue<fx::Unserializable> = Queue::unbounded().unwrap();
    assert!(matches!(q.put(fx::Unserializable), Err(PutError::Codec(_))));
    assert!(q.is_empty());
    // Handles do not travel inside queue items: the put says so.
    let q: Queue<corral::Lock> = Queue::unbounded().unwrap();
    let err = q.put(corral::Lock::new().unwrap()).unwrap_err();
    assert!(matches!(err, PutError::Codec(_)), "{err:?}");
    // A consumer that expects another type gets a codec error, not garbage.
    let raw: Queue<String> = Queue::unbounded().unwrap();
    let same: Queue<u64> = {
        let (a, b) = corral::Pipe::duplex().unwrap();
        a.send(&raw).unwrap();
        b.recv().unwrap()
    };
    raw.put("not a number at all".into()).unwrap();
    assert!(matches!(same.try_get(), Err(GetError::Codec(_))));
}

fn joinable_worker(q: JoinableQueue<u32>) {
    while let Ok(n) = q.get_timeout(Duration::from_secs(30)) {
        if n == 0 {
            q.task_done();
            return;
        }
        q.task_done();
    }
}

#[test]
fn joinable_queue_join_waits_for_task_done() {
    let q = JoinableQueue::bounded(8).unwrap();
    for n in 1..=20 {
        q.put(n).unwrap_or_else(|_| panic!("put"));
        if n == 8 {
            break;
        }
    }
    assert!(!q.join_timeout(Duration::from_millis(50)));
    let workers: Vec<_> = (0..2)
        .map(|_| corral::spawn(joinable_worker, q.clone()).unwrap())
        .collect();
    q.put(0).unwrap();
    q.put(0).unwrap();
    assert!(q.join_timeout(Duration::from_secs(30)));
    for w in workers {
        done(w).unwrap();
    }
}

fn put_pid(q: SimpleQueue<u32>) {
    q.put(std::process::id()).unwrap();
}

fn pool_put(q: Queue<u64>) -> u64 {
    q.put(7).unwrap();
    1
}

#[test]
fn handles_cross_under_every_start_method_and_into_pool_tasks() {
    let q = SimpleQueue::new().unwrap();
    for method in METHODS {
        let child = corral::Process::builder()
            .start_method(method)
            .spawn(put_pid, q.clone())
            .unwrap();
        let pid = child.pid();
        done(child).unwrap();
        assert_eq!(
            q.get_timeout(Duration::from_secs(30)).unwrap(),
            pid,
            "{method:?}"
        );
    }
    let q = Queue::unbounded().unwrap();
    let pool = Pool::new(2).unwrap();
    assert_eq!(
        pool.map(pool_put, vec![q.clone(); 10]).unwrap(),
        vec![1; 10]
    );
    assert_eq!(q.len(), 10);
}

fn put_later((q, ms): (Queue<u64>, u64)) {
    std::thread::sleep(Duration::from_millis(ms));
    q.put(ms).unwrap();
}

#[test]
fn wait_covers_queues_children_and_pipes_together() {
    let idle: Queue<u64> = Queue::unbounded().unwrap();
    let busy: Queue<u64> = Queue::unbounded().unwrap();
    let (rx, _tx) = corral::Pipe::simplex().unwrap();
    // Nothing ready: the timeout, and no watcher left behind.
    let start = Instant::now();
    let ready = corral::wait(&[&idle, &busy, &rx], Some(Duration::from_millis(100))).unwrap();
    assert!(ready.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(100));
    // A child puts into one queue later: that queue, and only it, wakes the
    // wait.
    let child = corral::spawn(put_later, (busy.clone(), 50)).unwrap();
    let ready = corral::wait(&[&idle, &busy, &rx], Some(Duration::from_secs(30))).unwrap();
    assert_eq!(ready, vec![1]);
    assert_eq!(get(&busy), 50);
    done(child).unwrap();
    // A queue with an item is ready at once; a closed one too.
    busy.put(1).unwrap();
    idle.close();
    let ready = corral::wait(&[&idle, &busy], Some(Duration::ZERO)).unwrap();
    assert_eq!(ready, vec![0, 1]);
    // A child that ends is ready like a queue.
    let child = corral::spawn(put_later, (busy.clone(), 0)).unwrap();
    let fresh: Queue<u64> = Queue::unbounded().unwrap();
    let ready = corral::wait(&[&fresh, &child], Some(Duration::from_secs(30))).unwrap();
    assert_eq!(ready, vec![1]);
    done(child).unwrap();
}

#[test]
fn a_consumer_killed_in_its_sleep_is_forgotten_by_the_next_put() {
    let q: Queue<u8> = Queue::unbounded().unwrap();
    let child = corral::spawn(wait_for_item, q.clone()).unwrap();
    let pid = child.pid();
    assert!(fx::wait_for(Duration::from_secs(30), || fx::is_sleeping(
        pid
    ) && q
        .sleeping_consumers()
        == 1));
    child.kill().unwrap();
    assert!(child.join_timeout(Duration::from_secs(10)).is_err());
    assert_eq!(
        q.sleeping_consumers(),
        1,
        "the dead sleeper is still announced"
    );
    // The put finds no one to wake, checks the announced pids and clears
    // the dead one: later puts make no futex call.
    q.put(1).unwrap();
    assert_eq!(q.sleeping_consumers(), 0);
    assert_eq!(q.len(), 1);
    assert_eq!(get(&q), 1);
}

/// More sleepers than the record has slots (64), all SIGKILLed at once:
/// nothing is left announced, so later puts cost no futex call; and a
/// sleeper that found no slot still gets its item.
#[test]
fn more_than_64_sleepers_killed_at_once_are_all_forgotten() {
    let q: Queue<u8> = Queue::unbounded().unwrap();
    let children: Vec<_> = (0..80)
        .map(|_| corral::spawn(wait_for_item, q.clone()).unwrap())
        .collect();
    assert!(fx::wait_for(Duration::from_secs(30), || {
        q.sleeping_consumers() == 64 && children.iter().all(|c| fx::is_sleeping(c.pid()))
    }));
    for child in children {
        child.kill().unwrap();
        assert!(child.join_timeout(Duration::from_secs(10)).is_err());
    }
    assert!(fx::wait_for(Duration::from_secs(5), || {
        q.put(0).unwrap();
        q.sleeping_consumers() == 0
    }));
    while q.try_get().is_ok() {}

    // 70 live consumers: 6 of them without a slot.
    let children: Vec<_> = (0..70)
        .map(|_| corral::spawn(wait_for_item, q.clone()).unwrap())
        .collect();
    assert!(fx::wait_for(Duration::from_secs(30), || q
        .sleeping_consumers()
        == 64));
    for i in 0..70 {
        q.put(i).unwrap();
    }
    let mut got: Vec<u8> = children
        .into_iter()
        .map(|c| done(c).unwrap().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..70).collect::<Vec<u8>>());
}

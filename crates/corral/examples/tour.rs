//! A tour of corral: `cargo run --release --example tour`.
//!
//! Starts children under every start method, brings a panic and a crash back
//! as data, gives up on a hung child and kills it, talks over a pipe, runs a
//! pool whose workers crash, hang and panic without stopping it, feeds a
//! worker farm through a shared-memory queue, recovers a lock whose
//! holder was killed, and runs seed 004's farm through a manager (and a
//! remote manager on loopback).

use std::time::{Duration, Instant};

use corral::manager::{self, Manager};
use corral::{
    AcquireError, Connection, Event, JoinTimeout, Lock, Pipe, Pool, Process, ProcessError, Queue,
    StartMethod, Value,
};

fn square(x: u64) -> u64 {
    x * x
}

fn parse(text: String) -> u32 {
    text.parse().expect("a number")
}

fn crash(_: ()) {
    std::process::abort()
}

fn hang(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn risky(x: u64) -> u64 {
    match x {
        3 => std::process::abort(),
        5 => panic!("five is right out"),
        7 => loop {
            std::thread::sleep(Duration::from_secs(60));
        },
        _ => x * x,
    }
}

fn shout(conn: Connection) -> usize {
    let mut served = 0;
    while let Ok(word) = conn.recv::<String>() {
        conn.send(&word.to_uppercase()).expect("reply");
        served += 1;
    }
    served
}

fn farm_worker((tasks, results): (Queue<Option<u64>>, Queue<(u32, u64)>)) {
    while let Ok(Some(n)) = tasks.get() {
        results.put((std::process::id(), n * n)).expect("put");
    }
}

fn count_to(counter: Value<u64>) {
    for _ in 0..10_000 {
        *counter.lock() += 1;
    }
}

fn die_holding((lock, holding): (Lock, Event)) {
    let _guard = lock.acquire().expect("lock");
    holding.set();
    hang(());
}

/// Seed 004's worker: reads jobs from a manager queue until its sentinel,
/// appends results to a manager list.
fn manager_worker((jobs, results): (manager::Queue<Option<u32>>, manager::List<(u32, u32)>)) {
    while let Some(n) = jobs.get().expect("get") {
        results.push((n, n * n)).expect("append");
    }
}

fn main() {
    corral::init(); // first line of main

    println!("1. A function runs in a child process; its result comes back.");
    for method in [
        StartMethod::ForkServer,
        StartMethod::Spawn,
        StartMethod::Fork,
    ] {
        let started = Instant::now();
        let child = Process::builder()
            .start_method(method)
            .spawn(square, 12)
            .expect("spawn");
        let pid = child.pid();
        let value = child.join().expect("join");
        println!(
            "   {method:?}: pid {pid} returned {value} in {:?}",
            started.elapsed()
        );
    }

    println!("\n2. A panic in the child comes back as data.");
    match corral::spawn(parse, "twelve".to_string())
        .expect("spawn")
        .join()
    {
        Err(ProcessError::Panicked(panic)) => {
            println!("   message:  {}", panic.message);
            println!("   location: {}", panic.location.as_deref().unwrap_or("?"));
            let frames = panic
                .backtrace
                .lines()
                .filter(|l| l.contains("tour::"))
                .count();
            println!(
                "   backtrace: {} lines, {frames} in this program",
                panic.backtrace.lines().count()
            );
        }
        other => println!("   unexpected: {other:?}"),
    }

    println!("\n3. A crash is reported exactly, not as a hang.");
    let err = corral::spawn(crash, ()).expect("spawn").join().unwrap_err();
    println!("   {err}");

    println!("\n4. A hung child: join_timeout gives it back, kill ends it.");
    let child = corral::spawn(hang, ()).expect("spawn");
    match child.join_timeout(Duration::from_millis(200)) {
        Err(JoinTimeout::Elapsed(child)) => {
            println!("   still running after 200 ms: killing pid {}", child.pid());
            child.kill().expect("kill");
            let err = child.join().unwrap_err();
            println!("   {err}");
        }
        other => println!("   unexpected: {other:?}"),
    }

    println!("\n5. Pipe ends are handles: pass one to a child and talk.");
    let (ours, theirs) = Pipe::duplex().expect("pipe");
    let child = corral::spawn(shout, theirs).expect("spawn");
    for word in ["corral", "keeps", "its", "promises"] {
        ours.send(word).expect("send");
        println!(
            "   sent {word:?}, got {:?}",
            ours.recv::<String>().expect("recv")
        );
    }
    drop(ours);
    println!(
        "   the child served {} words and exited",
        child.join().expect("join")
    );

    println!("\n6. A pool: each failure fails only its own task, and the pool goes on.");
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(300))
        .build()
        .expect("pool");
    let started = Instant::now();
    for (x, outcome) in (0..10).zip(pool.imap(risky, 0..10)) {
        match outcome {
            Ok(value) => println!("   risky({x}) = {value}"),
            Err(e) => println!("   risky({x}) failed: {e}"),
        }
    }
    println!("   all ten in {:?}; {:?}", started.elapsed(), pool.stats());
    let started = Instant::now();
    let squares = pool.map(square, 0..100_000).expect("map");
    println!(
        "   then map over 100,000 items: {:?} (last: {})",
        started.elapsed(),
        squares[99_999]
    );
    let first: Vec<u64> = pool
        .imap(square, 1..) // endless input, pulled lazily
        .take(5)
        .map(Result::unwrap)
        .collect();
    println!("   imap over an endless iterator, first five: {first:?}");
    drop(pool); // graceful: finishes what was submitted, stops the workers

    println!(
        "\n7. A worker farm: a bounded shared-memory queue, None sentinels, results gathered."
    );
    let tasks = Queue::bounded(8).expect("queue");
    let results = Queue::unbounded().expect("queue");
    let workers: Vec<_> = (0..3)
        .map(|_| corral::spawn(farm_worker, (tasks.clone(), results.clone())).expect("spawn"))
        .collect();
    let started = Instant::now();
    for n in 0..30_000u64 {
        tasks.put(Some(n)).expect("put"); // waits while 8 are queued: backpressure
    }
    for _ in &workers {
        tasks.put(None).expect("sentinel");
    }
    let mut sum = 0u64;
    let mut by_worker = std::collections::BTreeMap::new();
    for _ in 0..30_000 {
        let (pid, square) = results.get().expect("result");
        sum += square;
        *by_worker.entry(pid).or_insert(0u32) += 1;
    }
    for w in workers {
        w.join().expect("worker");
    }
    println!(
        "   30,000 squares (sum {sum}) in {:?}, per worker: {:?}",
        started.elapsed(),
        by_worker.values().collect::<Vec<_>>()
    );

    println!(
        "\n8. Process-shared locks and values; a lock whose holder is killed is not a deadlock."
    );
    let counter = Value::new(0u64).expect("value");
    let kids: Vec<_> = (0..2)
        .map(|_| corral::spawn(count_to, counter.clone()).expect("spawn"))
        .collect();
    for k in kids {
        k.join().expect("join");
    }
    println!(
        "   two processes x 10,000 locked increments = {}",
        counter.get()
    );
    let lock = Lock::new().expect("lock");
    let holding = Event::new().expect("event");
    let holder = corral::spawn(die_holding, (lock.clone(), holding.clone())).expect("spawn");
    holding.wait();
    holder.kill().expect("kill");
    let _ = holder.join();
    match lock.acquire_timeout(Duration::from_secs(5)) {
        Err(AcquireError::OwnerDied(_guard)) => {
            println!("   the holder was SIGKILLed; we got the lock and were told its owner died")
        }
        other => println!("   unexpected: {other:?}"),
    }

    println!(
        "\n9. A manager: a server process holding a queue and a list, four workers, sentinels."
    );
    let m = Manager::start().expect("manager");
    let jobs = m.bounded_queue::<Option<u32>>(4).expect("queue");
    let results = m.list::<(u32, u32)>().expect("list");
    let workers: Vec<_> = (0..4)
        .map(|_| corral::spawn(manager_worker, (jobs.clone(), results.clone())).expect("spawn"))
        .collect();
    for n in 0..12 {
        jobs.put(Some(n)).expect("put"); // waits while 4 are queued
    }
    for _ in &workers {
        jobs.put(None).expect("sentinel");
    }
    workers.into_iter().for_each(|w| w.join().expect("worker"));
    let mut got = results.snapshot().expect("snapshot"); // a copy, and says so
    got.sort_unstable();
    println!("   12 results through the manager: {got:?}");
    let hits = m.dict::<String, u64>().expect("dict");
    hits.add("seen".into(), 12).expect("atomic +=");
    println!(
        "   an atomic d[k] += 12: {:?}",
        hits.get(&"seen".into()).expect("get")
    );
    drop(m); // stops the server
    match jobs.get_timeout(Duration::from_secs(1)) {
        Err(e) => println!("   the manager is gone; a call fails at once: {e}"),
        Ok(v) => println!("   unexpected: {v:?}"),
    }
    let key = b"tour key";
    let remote = Manager::builder()
        .register("get_config", manager::Kind::Dict)
        .serve("127.0.0.1:0", key)
        .expect("serve");
    let started = Instant::now();
    let client = Manager::connect(remote.address(), key).expect("connect");
    let config = client
        .registered::<manager::Dict<String, String>>("get_config")
        .expect("proxy");
    config.insert("mode".into(), "fast".into()).expect("insert");
    println!(
        "   a remote manager at {}: connect, authenticate, first call in {:?}",
        remote.address(),
        started.elapsed()
    );

    println!("\n10. If this program is killed, even by SIGKILL, every child dies with it.");
    println!("   (tested: crates/corral-fixtures/tests/orphans.rs)");
}

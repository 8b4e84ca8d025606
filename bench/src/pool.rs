//! The pool figures: apply round trip, submit-each throughput, map, imap,
//! start-up, idle CPU, timeout overshoot; rayon as the in-process ceiling.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use corral::{Pool, TaskError};
use rayon::prelude::*;

use crate::{RUNS, emit, median, micros};

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// `square` on a type `map` encodes item by item.
fn square_tuple((x,): (u64,)) -> (u64,) {
    (x.wrapping_mul(x),)
}

fn echo(x: u64) -> u64 {
    x
}

/// `CLOCK_MONOTONIC` in ns (the same clock in every process, as Python's
/// `time.monotonic_ns`).
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Sleeps 1 ms; returns when it started and when it ended
/// ([`monotonic_ns`]).
fn nap_1ms(_: u64) -> (u64, u64) {
    let started = monotonic_ns();
    std::thread::sleep(Duration::from_millis(1));
    (started, monotonic_ns())
}

fn pid(_: u64) -> u32 {
    std::process::id()
}

fn hang(_: ()) {
    std::thread::sleep(Duration::from_secs(3600));
}

/// Items per second of `f` over `RUNS` runs of `items` items.
fn rate(items: usize, mut f: impl FnMut()) -> f64 {
    f();
    let samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            items as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    median(samples)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time (user + system) of process `pid`, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime), counted after the name.
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|x| x.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

pub(crate) fn run(n: impl Fn(usize) -> usize) {
    let pool = Pool::new(2).expect("a pool");
    pool.map(square, 0..10_000u64).expect("warm up");

    // apply round trip.
    for x in 0..1_000 {
        pool.apply(echo, x).expect("apply");
    }
    let rtt: Vec<f64> = (0..n(5_000) as u64)
        .map(|x| {
            let t = Instant::now();
            pool.apply(echo, x).expect("apply");
            micros(t.elapsed())
        })
        .collect();
    emit("corral pool apply round trip", median(rtt), "us");

    // A task that outlasts the caller's watch: from its end to the
    // caller's return (the waiting thread asleep, woken by the worker), and
    // the whole overhead: that plus from the call to the task's start.
    let (late, overhead): (Vec<f64>, Vec<f64>) = (0..n(300))
        .map(|x| {
            let called = monotonic_ns();
            let (started, ended) = pool.apply(nap_1ms, x as u64).expect("apply");
            let returned = monotonic_ns();
            let late = returned.saturating_sub(ended);
            let early = started.saturating_sub(called);
            (late as f64 / 1e3, (late + early) as f64 / 1e3)
        })
        .unzip();
    emit(
        "corral pool apply 1ms task end to return",
        median(late),
        "us",
    );
    emit(
        "corral pool apply 1ms task overhead",
        median(overhead),
        "us",
    );

    // submit each, then join all.
    let count = n(100_000);
    emit(
        "corral pool submit-each throughput",
        rate(count, || {
            let tasks: Vec<_> = (0..count as u64).map(|x| pool.submit(echo, x)).collect();
            for task in tasks {
                task.join().expect("task");
            }
        }),
        "items/s",
    );

    let items = n(100_000);
    emit(
        "corral pool map 100k u64",
        rate(items, || {
            pool.map(square, 0..items as u64).expect("map");
        }),
        "items/s",
    );
    // The same items, each encoded: a map of plain numbers takes
    // `map_pod`'s path, a map of any other type this one.
    emit(
        "corral pool map 100k (u64,) encoded",
        rate(items, || {
            pool.map(square_tuple, (0..items as u64).map(|x| (x,)))
                .expect("map");
        }),
        "items/s",
    );
    emit(
        "corral pool map 100k u64 chunksize 1",
        rate(items, || {
            pool.map_chunked(square, 0..items as u64, 1).expect("map");
        }),
        "items/s",
    );
    // imap, automatic chunks and chunk sizes; the consuming thread's CPU per
    // item beside the throughput.
    let cases = [
        ("imap", true, None),
        ("imap_unordered", false, None),
        ("imap chunk 1", true, Some(1)),
        ("imap chunk 1000", true, Some(1000)),
    ];
    for (label, ordered, chunk) in cases {
        let mut caller_ns = Vec::new();
        let throughput = rate(items, || {
            let cpu = thread_cpu();
            let run = |it: corral::Imap<'_, u64, u64, std::ops::Range<u64>>| {
                let it = match chunk {
                    Some(c) => it.chunk_size(c),
                    None => it,
                };
                it.map(Result::unwrap).fold(0u64, u64::wrapping_add)
            };
            let total = if ordered {
                run(pool.imap(square, 0..items as u64))
            } else {
                run(pool.imap_unordered(square, 0..items as u64))
            };
            std::hint::black_box(total);
            caller_ns.push((thread_cpu() - cpu).as_nanos() as f64 / items as f64);
        });
        emit(
            &format!("corral pool {label} 100k u64"),
            throughput,
            "items/s",
        );
        emit(
            &format!("corral pool {label} caller CPU per item"),
            median(caller_ns),
            "ns",
        );
    }
    for (label, count) in [("100k", 100_000), ("10M", 10_000_000)] {
        let xs: Vec<u64> = (0..n(count) as u64).collect();
        emit(
            &format!("corral pool map_pod {label} u64"),
            rate(xs.len(), || {
                std::hint::black_box(pool.map_pod(square, &xs).expect("map_pod"));
            }),
            "items/s",
        );
        emit(
            &format!("rayon par_iter map {label} u64 (collect)"),
            rate(xs.len(), || {
                let v: Vec<u64> = xs.par_iter().map(|&x| square(x)).collect();
                std::hint::black_box(v);
            }),
            "items/s",
        );
    }
    emit(
        "rayon par_iter map 100k u64",
        rate(items, || {
            let v: Vec<u64> = (0..items as u64).into_par_iter().map(square).collect();
            std::hint::black_box(v);
        }),
        "items/s",
    );

    // Idle CPU: the dispatcher and both workers, over two quiet seconds.
    let workers: HashSet<u32> = pool
        .map_chunked(pid, 0..200u64, 1)
        .expect("pids")
        .into_iter()
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let own = || cpu_time(std::process::id());
    let before: Duration = own() + workers.iter().map(|&p| cpu_time(p)).sum::<Duration>();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let after: Duration = own() + workers.iter().map(|&p| cpu_time(p)).sum::<Duration>();
    emit(
        "corral pool idle CPU",
        100.0 * (after - before).as_secs_f64() / t.elapsed().as_secs_f64(),
        "%",
    );
    drop(pool);

    // Start-up: build a 2-worker pool until each worker has answered.
    let startup: Vec<f64> = (0..n(50))
        .map(|_| {
            let t = Instant::now();
            let pool = Pool::new(2).expect("a pool");
            let a = pool.submit(echo, 1);
            let b = pool.submit(echo, 2);
            a.join().expect("a");
            b.join().expect("b");
            let took = micros(t.elapsed());
            pool.terminate();
            took
        })
        .collect();
    emit("corral pool start-up 2 workers", median(startup), "us");

    // How late a hung task is reported after its deadline.
    let timeout = Duration::from_millis(100);
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(timeout)
        .build()
        .expect("a pool");
    let late: Vec<f64> = (0..n(20).max(5))
        .map(|_| {
            let t = Instant::now();
            let outcome = pool.apply(hang, ());
            assert_eq!(outcome, Err(TaskError::TimedOut(timeout)));
            (t.elapsed().saturating_sub(timeout)).as_secs_f64() * 1e3
        })
        .collect();
    emit("corral pool timeout overshoot", median(late), "ms");
}

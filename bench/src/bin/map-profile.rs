//! What `bench/profile/run.sh` runs under perf and `callgrind.sh` under
//! callgrind: a 2-worker pool that maps `x -> x * x` over `ITEMS` integers
//! `ROUNDS` times (after one warm-up map), so that the CPU time and the
//! instructions per item can be read off the parent and each worker (this
//! machine has no hardware counters).
//!
//! `map-profile [ITEMS] [ROUNDS] [CHUNK]`: defaults 100000, 3, automatic.
//! CHUNK `each` submits every item as its own task and then joins them all
//! (the benchmark's submit-each figure, and the time of each half) instead
//! of mapping; `pod` maps a
//! vector of the items with `map_pod`; `encoded` maps them as `(u64,)`,
//! which `map` encodes item by item (a `map` of plain `u64` takes
//! `map_pod`'s path).

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn square_tuple((x,): (u64,)) -> (u64,) {
    (x.wrapping_mul(x),)
}

fn main() {
    corral::init();
    let mut args = std::env::args().skip(1);
    let items: u64 = args.next().map_or(100_000, |a| a.parse().expect("ITEMS"));
    let rounds: usize = args.next().map_or(3, |a| a.parse().expect("ROUNDS"));
    let chunk = args.next();
    let each = chunk.as_deref() == Some("each");
    let pod = chunk.as_deref() == Some("pod");
    let encoded = chunk.as_deref() == Some("encoded");
    let chunk: Option<usize> = chunk
        .filter(|_| !each && !pod && !encoded)
        .map(|a| a.parse().expect("CHUNK"));
    let xs: Vec<u64> = if pod {
        (0..items).collect()
    } else {
        Vec::new()
    };
    let pool = corral::Pool::new(2).expect("pool");
    pool.map(square, 0..1000u64).expect("warm-up");
    let pids: Vec<u32> = pool.workers().iter().map(|w| w.pid).collect();
    let cpu_before = cpu_ticks(&pids);
    let start = std::time::Instant::now();
    // Submit-each's two halves: submitting all, then joining all.
    let (mut submitting, mut joining) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for _ in 0..rounds {
        if each {
            let t = std::time::Instant::now();
            let tasks: Vec<_> = (0..items).map(|x| pool.submit(square, x)).collect();
            submitting += t.elapsed();
            let t = std::time::Instant::now();
            for task in tasks {
                task.join().expect("task");
            }
            joining += t.elapsed();
            continue;
        }
        if encoded {
            let out = pool.map(square_tuple, (0..items).map(|x| (x,)));
            assert_eq!(out.expect("map").len() as u64, items);
            continue;
        }
        let out = match chunk {
            _ if pod => pool.map_pod(square, &xs),
            Some(c) => pool.map_chunked(square, 0..items, c),
            None => pool.map(square, 0..items),
        };
        assert_eq!(out.expect("map").len() as u64, items);
    }
    let rate = (items as f64 * rounds as f64) / start.elapsed().as_secs_f64();
    println!("rate {:.1} M items/s", rate / 1e6);
    // The CPU of the parent and its workers (a worker replaced meanwhile is
    // not counted: none is, in this program).
    let ticks = cpu_ticks(&pids) - cpu_before;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let per_item = ticks as f64 / hz * 1e9 / (items as f64 * rounds as f64);
    println!("cpu {per_item:.0} ns per item (parent and workers)");
    let workers: Vec<String> = pool.workers().iter().map(|w| w.pid.to_string()).collect();
    println!("parent {}", std::process::id());
    println!("workers {}", workers.join(" "));
    if each {
        let ns = |d: std::time::Duration| d.as_nanos() as f64 / (items as f64 * rounds as f64);
        println!(
            "each: submitting {:.0} ns a task, joining {:.0} ns a task",
            ns(submitting),
            ns(joining)
        );
    }
}

/// Clock ticks of CPU (user and system) of this process and `workers`.
fn cpu_ticks(workers: &[u32]) -> u64 {
    let ticks = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        // Fields 14 and 15 of proc(5) (utime, stime), counted after the name.
        after
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|x| x.parse::<u64>().ok())
            .sum::<u64>()
    };
    ticks(std::process::id()) + workers.iter().map(|&p| ticks(p)).sum::<u64>()
}

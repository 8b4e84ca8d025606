//! procspawn 1.0.2 figures for comparison with corral: spawn+join of a no-op,
//! and its process pool (round trip and submit-each throughput).

use std::time::Instant;

fn echo(x: u64) -> u64 {
    x
}

fn emit(name: &str, value: f64, unit: &str) {
    println!("{{\"name\": \"{name}\", \"value\": {value:.4}, \"unit\": \"{unit}\"}}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn main() {
    procspawn::init();
    let quick = std::env::var_os("CORRAL_BENCH_QUICK").is_some();
    let n = |full: usize| if quick { (full / 10).max(1) } else { full };
    for _ in 0..10 {
        procspawn::spawn((), |()| ()).join().expect("join");
    }
    let samples: Vec<f64> = (0..n(200))
        .map(|_| {
            let t = Instant::now();
            procspawn::spawn((), |()| ()).join().expect("join");
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    emit("procspawn spawn+join", median(samples), "us");

    let pool = procspawn::Pool::new(2).expect("a procspawn pool");
    for x in 0..100 {
        pool.spawn(x, echo).join().expect("join");
    }
    let samples: Vec<f64> = (0..n(2_000) as u64)
        .map(|x| {
            let t = Instant::now();
            pool.spawn(x, echo).join().expect("join");
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    emit("procspawn pool round trip", median(samples), "us");
    let count = n(5_000);
    let t = Instant::now();
    let handles: Vec<_> = (0..count as u64).map(|x| pool.spawn(x, echo)).collect();
    for h in handles {
        h.join().expect("join");
    }
    emit(
        "procspawn pool submit-each throughput",
        count as f64 / t.elapsed().as_secs_f64(),
        "items/s",
    );
    pool.shutdown();
}

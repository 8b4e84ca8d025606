//! procspawn 1.0.2 spawn+join of a no-op, for comparison with corral.

use std::time::Instant;

fn main() {
    procspawn::init();
    let quick = std::env::var_os("CORRAL_BENCH_QUICK").is_some();
    let iterations = if quick { 20 } else { 200 };
    for _ in 0..10 {
        procspawn::spawn((), |()| ()).join().expect("join");
    }
    let mut samples: Vec<f64> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            procspawn::spawn((), |()| ()).join().expect("join");
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    println!(
        "{{\"name\": \"procspawn spawn+join\", \"value\": {:.4}, \"unit\": \"us\"}}",
        samples[samples.len() / 2]
    );
}

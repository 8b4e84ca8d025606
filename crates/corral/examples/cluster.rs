//! A cluster pool on one machine (or many): nodes that run tasks, and a
//! program that maps over them.
//!
//! ```sh
//! redis-server --port 6379 --requirepass secret --save '' &
//! cargo run --release --example cluster -- node redis://:secret@127.0.0.1:6379/ 2 &
//! cargo run --release --example cluster -- node redis://:secret@127.0.0.1:6379/ 2 &
//! cargo run --release --example cluster -- map redis://:secret@127.0.0.1:6379/ 10000
//! # results 10000 distinct 10000 sum 333283335000 errors 0
//! ```
//!
//! `node URL [PROCESSES]` runs a node until it is killed (kill one while a
//! map runs: its tasks are claimed by the other after the visibility
//! timeout, 30 s by default, `CORRAL_NODE_VISIBILITY_MS` to change it).
//! `map URL N` maps `x → x*x` (each task sleeping 1 ms) over `0..N` and
//! prints, last, `results N distinct D sum S errors E`: the outcomes
//! received, how many distinct tasks they belong to, the sum of the values
//! and how many ended in an error.

use std::time::{Duration, Instant};

use corral::Pool;
use corral::cluster::Node;

fn square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(1));
    x * x
}

fn main() {
    corral::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: cluster node URL [PROCESSES] | cluster map URL N";
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["node", url, ref rest @ ..] => {
            let mut pool = Pool::builder();
            if let Some(n) = rest.first() {
                pool = pool.processes(n.parse().expect("PROCESSES is a number"));
            }
            eprintln!("node: serving {url} until killed");
            if let Err(e) = Node::new(url).pool(pool).run() {
                eprintln!("node: {e}");
                std::process::exit(2);
            }
        }
        ["map", url, n] => map(url, n.parse().expect("N is a number")),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

fn map(url: &str, n: u64) {
    let pool = Pool::cluster(url).build().unwrap_or_else(|e| {
        eprintln!("map: {e}");
        std::process::exit(2);
    });
    let started = Instant::now();
    let (mut results, mut sum, mut errors) = (0u64, 0u128, 0u64);
    let mut distinct = std::collections::HashSet::new();
    for (i, outcome) in pool.imap(square, 0..n).enumerate() {
        results += 1;
        distinct.insert(i);
        match outcome {
            Ok(v) => sum += u128::from(v),
            Err(e) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("task {i}: {e}");
                }
            }
        }
    }
    pool.join();
    eprintln!(
        "{n} tasks in {:.2?} on {} processes",
        started.elapsed(),
        pool.processes()
    );
    println!(
        "results {results} distinct {} sum {sum} errors {errors}",
        distinct.len()
    );
}

//! A program that starts a thread (as `#[tokio::main]` does) before it calls
//! `corral::init()`: the fork server must start by re-execution, and neither
//! it nor a `Spawn` child may run this `main` again.

use std::time::Duration;

fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    println!("main started in {}", std::process::id());
    let worker = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(500)));
    corral::init(); // late: another thread runs
    let by_server = corral::spawn(square, 3).unwrap().join().unwrap();
    let by_exec = corral::Process::builder()
        .start_method(corral::StartMethod::Spawn)
        .spawn(square, 4)
        .unwrap()
        .join()
        .unwrap();
    let pool = corral::Pool::new(2).unwrap();
    let mapped: u64 = pool.map(square, 0..10u64).unwrap().iter().sum();
    println!("results {by_server} {by_exec} {mapped}");
    worker.join().unwrap();
}

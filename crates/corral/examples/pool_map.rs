//! profiling helper
use std::time::Instant;
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}
fn main() {
    corral::init();
    let pool = corral::Pool::new(2).unwrap();
    pool.map(square, 0..1000u64).unwrap();
    let t = Instant::now();
    for _ in 0..20 {
        pool.map(square, 0..100_000u64).unwrap();
    }
    println!("map 100k {:?}", t.elapsed() / 20);
}

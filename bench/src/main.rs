//! Benchmarks (see bench/README.md).
fn main() {}

//! `sleep10ms [ARG…]`: sleeps 10 ms and exits 0, ignoring its arguments (the
//! job of the runner benchmark's second workload).

fn main() {
    std::thread::sleep(std::time::Duration::from_millis(10));
}

//! Returns from `main` with a daemon child and a non-daemon child running.
//! Python's semantics: the daemon is terminated, the other joined. Each child
//! prints its pid; the non-daemon child creates the file given as argument
//! after a short nap, so the test can see that the parent waited for it.

use std::time::Duration;

fn slow_writer(path: String) {
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(path, b"done").expect("write marker");
}

fn main() {
    corral::init();
    let marker = std::env::args().nth(1).expect("marker path");
    let daemon = corral::Process::builder()
        .daemon(true)
        .spawn(corral_fixtures::hang::<()>, ())
        .expect("daemon");
    let worker = corral::Process::builder()
        .spawn(slow_writer, marker)
        .expect("worker");
    println!("daemon {}", daemon.pid());
    println!("worker {}", worker.pid());
    // Dropping the handles does not stop the children.
}

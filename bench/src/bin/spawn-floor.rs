//! The floor for command runners: `spawn-floor J CMD [ARGS…]` runs CMD once
//! per line of standard input (the line appended as its last argument), at
//! most J at a time: `std::process::Command::spawn` and `waitpid(-1)`,
//! nothing else. What any runner must pay; `corral-bench runner` measures
//! the others against it.

use std::io::BufRead;
use std::process::Command;

use rustix::process::{WaitOptions, wait};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let jobs: usize = args[0].parse().expect("J");
    let (program, fixed) = (&args[1], &args[2..]);
    let mut running = 0;
    for line in std::io::stdin().lock().lines() {
        if running == jobs {
            wait(WaitOptions::empty()).expect("wait");
            running -= 1;
        }
        let child = Command::new(program)
            .args(fixed)
            .arg(line.expect("input"))
            .spawn();
        drop(child.expect("spawn"));
        running += 1;
    }
    while running > 0 {
        wait(WaitOptions::empty()).expect("wait");
        running -= 1;
    }
}

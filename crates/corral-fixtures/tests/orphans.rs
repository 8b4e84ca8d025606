//! A parent SIGKILLed with descendants of every kind running: none of them
//! survives it by more than a second.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corral_fixtures::is_gone;

#[test]
fn no_descendant_outlives_a_sigkilled_parent() {
    // Orphans are re-parented to us, not to an init that may not reap them,
    // so the test can reap them and leave no zombie on the machine.
    corral_fixtures::become_subreaper();

    let mut parent = Command::new(env!("CARGO_BIN_EXE_orphan-parent"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start orphan-parent");
    let stdout = parent.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut pids = Vec::new();
    let mut others = Vec::new();
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(e) => {
                let _ = parent.kill();
                panic!("orphan-parent did not get ready: {e}");
            }
        };
        if line == "ready" {
            break;
        }
        let mut words = line.split_whitespace();
        if line.starts_with("other ") {
            // Not corral's (a child of the program's own fork): it must not
            // keep corral's descendants alive, and is killed at the end.
            others.push(words.nth(2).expect("pid").parse::<i32>().expect("a pid"));
            continue;
        }
        assert_eq!(words.next(), Some("pid"), "{line}");
        let what = words.next().expect("what").to_string();
        let pid: u32 = words.next().expect("pid").parse().expect("a pid");
        pids.push((what, pid));
    }
    let kinds: Vec<&str> = pids.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "fork-server",
            "forkserver-child",
            "spawn-child",
            "fork-child",
            "forkserver-child-subprocess",
            "spawn-child-subprocess",
            "fork-child-subprocess",
            "fork-child-from-thread",
            "nested-parent",
            "grandchild",
            "nested-fork-server",
            "pool-worker",
            "fork-pool-worker",
            "nested-pool-worker",
            "nested-task-subprocess",
            "nested-pool-worker",
            "nested-task-subprocess",
            "spare"
        ]
    );
    for (what, pid) in &pids {
        assert!(
            !is_gone(*pid),
            "{what} ({pid}) is not running before the kill"
        );
    }

    parent.kill().expect("SIGKILL the parent");
    let killed = Instant::now();
    parent.wait().expect("reap the parent");
    let mut survivors = pids.clone();
    while !survivors.is_empty() && killed.elapsed() < Duration::from_secs(1) {
        survivors.retain(|(_, pid)| !is_gone(*pid));
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = killed.elapsed();
    assert_eq!(others.len(), 1, "the plain fork's child");
    for pid in others {
        // SAFETY: signals the parent's plain fork child, re-parented to us.
        #[expect(unsafe_code, reason = "kill(2) of a pid the parent printed")]
        unsafe {
            libc::kill(pid, libc::SIGKILL)
        };
    }
    // Reap whatever was re-parented to us.
    std::thread::sleep(Duration::from_millis(50));
    corral_fixtures::reap_exited_children();
    assert!(
        survivors.is_empty(),
        "alive {took:?} after the parent's SIGKILL: {survivors:?}"
    );
    println!(
        "all {} descendants gone {took:?} after the parent's SIGKILL",
        pids.len()
    );
}

//! A parent killed with descendants of every kind running: none of them
//! survives it by more than a second, whether the parent alone is
//! SIGKILLed or every process of the program is sent SIGTERM at once (as
//! `pkill -f program` does, the fork server and the workers included).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corral_fixtures::is_gone;

/// What `orphan-parent` started: its descendants by kind, and the pid of
/// a child of its own plain `fork`, which is not corral's.
struct Started {
    parent: Child,
    pids: Vec<(String, u32)>,
    other: i32,
}

/// Starts `orphan-parent` and reads what it started, once it is ready.
fn start() -> Started {
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
    assert_eq!(others.len(), 1, "the plain fork's child");
    Started {
        parent,
        pids,
        other: others[0],
    }
}

/// Kills the plain fork's child, reaps what was re-parented to this test,
/// and fails if a descendant in `started` outlived the parent's end (at
/// `killed`) by a second.
fn assert_all_gone(mut started: Started, killed: Instant) {
    started.parent.wait().expect("reap the parent");
    let mut survivors = started.pids.clone();
    while !survivors.is_empty() && killed.elapsed() < Duration::from_secs(1) {
        survivors.retain(|(_, pid)| !is_gone(*pid));
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = killed.elapsed();
    signal(started.other, libc::SIGKILL);
    // Reap whatever was re-parented to us.
    std::thread::sleep(Duration::from_millis(50));
    corral_fixtures::reap_exited_children();
    assert!(
        survivors.is_empty(),
        "alive {took:?} after the parent's end: {survivors:?}"
    );
    println!(
        "all {} descendants gone {took:?} after the parent's end",
        started.pids.len()
    );
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signals a process the test started or that orphan-parent
    // printed.
    #[expect(unsafe_code, reason = "kill(2) of a pid the test knows")]
    unsafe {
        libc::kill(pid, sig)
    };
}

#[test]
fn no_descendant_outlives_a_sigkilled_parent() {
    // Orphans are re-parented to us, not to an init that may not reap them,
    // so the test can reap them and leave no zombie on the machine.
    corral_fixtures::become_subreaper();
    let mut started = start();
    started.parent.kill().expect("SIGKILL the parent");
    assert_all_gone(started, Instant::now());
}

/// `pkill -f orphan-parent`: SIGTERM to the parent and to every process of
/// the same program below it, the fork servers and the workers among them
/// (not to the subprocesses, other programs). The fork servers hold the
/// signal blocked and end when their parent does, killing what they
/// started; had they ended at once, the tasks' subprocesses would have
/// been left to no one.
#[test]
fn no_descendant_outlives_a_pkill_of_the_whole_program() {
    corral_fixtures::become_subreaper();
    let started = start();
    let killed = Instant::now();
    signal(started.parent.id() as i32, libc::SIGTERM);
    signal(started.other, libc::SIGTERM);
    for (what, pid) in &started.pids {
        if !what.ends_with("-subprocess") {
            signal(*pid as i32, libc::SIGTERM);
        }
    }
    assert_all_gone(started, killed);
}

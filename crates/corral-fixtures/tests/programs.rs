//! Whole corral programs: one that forgets `init()`, one that exits with
//! children running.

use std::process::Command;
use std::time::{Duration, Instant};

use corral_fixtures::is_gone;

fn run_bounded(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn forgetting_init_is_a_clear_error_not_a_fork_bomb() {
    let out = run_bounded(&mut Command::new(env!("CARGO_BIN_EXE_no-init")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("corral::init() was not called"), "{stdout}");
    assert!(stdout.contains("first line of `main`"), "{stdout}");
}

#[test]
fn at_exit_daemons_are_terminated_and_other_children_joined() {
    let dir = std::env::temp_dir().join(format!("corral-exit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("worker-done");
    let out = run_bounded(Command::new(env!("CARGO_BIN_EXE_exit-semantics")).arg(&marker));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid_of = |what: &str| -> u32 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("{stdout}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    // The non-daemon child finished its work before the parent exited.
    assert_eq!(
        std::fs::read(&marker).expect("the worker was joined"),
        b"done"
    );
    // The daemon was terminated, not left running.
    let daemon = pid_of("daemon");
    let deadline = Instant::now() + Duration::from_secs(2);
    while !is_gone(daemon) {
        assert!(
            Instant::now() < deadline,
            "daemon {daemon} survived its parent's exit"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(is_gone(pid_of("worker")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_late_init_is_safe_and_main_runs_once() {
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_late-init")).stderr(std::process::Stdio::piped()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.matches("main started").count(),
        1,
        "a child or the server ran main again:\n{stdout}"
    );
    assert!(stdout.contains("results 9 16 285"), "{stdout}");
    assert_eq!(
        stderr.matches("corral: init() found").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("re-executing"), "{stderr}");
}

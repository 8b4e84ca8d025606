//! Starts descendants of every kind, prints their pids (`pid <what> <pid>`,
//! then `ready`) and hangs, waiting to be SIGKILLed by a test.

use corral::{Process, Queue, Sender, StartMethod};
use corral_fixtures::hang;
use std::io::Write;

fn nested(tx: Sender) {
    let grandchild = corral::spawn(hang::<()>, ()).expect("nested spawn");
    let server = corral::internal::fork_server_pid().unwrap_or(0);
    tx.send(&(grandchild.pid(), server)).expect("report");
    hang(())
}

/// A task that makes a pool of its own, each of whose two tasks runs a
/// subprocess: a tree three processes deep below the outer worker, which
/// the parent's death takes down from the top while the nested fork
/// server takes it down from the middle.
fn nested_pool(report: Queue<(u32, u32)>) {
    let pool = corral::Pool::new(2).expect("a nested pool");
    let tasks: Vec<_> = (0..2)
        .map(|_| pool.submit(run_subprocess, report.clone()))
        .collect();
    hang((pool, tasks))
}

/// Starts `sleep 30`, reports (this worker, the subprocess) and hangs.
fn run_subprocess(report: Queue<(u32, u32)>) {
    let child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("start sleep");
    report
        .put((std::process::id(), child.id()))
        .expect("report");
    hang(child)
}

fn report_and_hang(tx: Sender) {
    tx.send(&std::process::id()).expect("report");
    hang(())
}

fn main() {
    corral::init();
    let mut pids: Vec<(&str, u32)> = Vec::new();
    pids.push((
        "fork-server",
        corral::internal::fork_server_pid().expect("a fork server"),
    ));
    let mut keep = Vec::new();
    for (what, method) in [
        ("forkserver-child", StartMethod::ForkServer),
        ("spawn-child", StartMethod::Spawn),
        ("fork-child", StartMethod::Fork),
    ] {
        let daemon = what == "spawn-child";
        let child = Process::builder()
            .start_method(method)
            .daemon(daemon)
            .spawn(hang::<()>, ())
            .expect(what);
        pids.push((what, child.pid()));
        keep.push(child);
    }
    // Children under each method that started a subprocess of their own.
    let report = Queue::unbounded().expect("a queue");
    for (what, method) in [
        ("forkserver-child-subprocess", StartMethod::ForkServer),
        ("spawn-child-subprocess", StartMethod::Spawn),
        ("fork-child-subprocess", StartMethod::Fork),
    ] {
        let child = Process::builder()
            .start_method(method)
            .spawn(run_subprocess, report.clone())
            .expect(what);
        let (_, subprocess) = report.get().expect("the child reports");
        pids.push((what, subprocess));
        keep.push(child);
    }
    let from_thread = std::thread::spawn(|| {
        Process::builder()
            .start_method(StartMethod::Fork)
            .spawn(hang::<()>, ())
            .expect("fork from thread")
    })
    .join()
    .expect("thread");
    pids.push(("fork-child-from-thread", from_thread.pid()));
    keep.push(from_thread);
    let (rx, tx) = corral::Pipe::simplex().expect("pipe");
    let middle = corral::spawn(nested, tx).expect("nested parent");
    let (grandchild, nested_server): (u32, u32) = rx.recv().expect("nested report");
    pids.push(("nested-parent", middle.pid()));
    pids.push(("grandchild", grandchild));
    pids.push(("nested-fork-server", nested_server));
    // Pool workers, under the default start method and under Fork, each
    // holding a task that never ends.
    let mut pools = Vec::new();
    for (what, method) in [
        ("pool-worker", StartMethod::ForkServer),
        ("fork-pool-worker", StartMethod::Fork),
    ] {
        let pool = corral::Pool::builder()
            .processes(1)
            .start_method(method)
            .build()
            .expect("a pool");
        let (rx, tx) = corral::Pipe::simplex().expect("pipe");
        let task = pool.submit(report_and_hang, tx);
        let pid: u32 = rx.recv().expect("the worker reports");
        pids.push((what, pid));
        pools.push((pool, task));
    }
    let nested = corral::Pool::new(1).expect("a pool");
    let report = Queue::unbounded().expect("a queue");
    let task = nested.submit(nested_pool, report.clone());
    for _ in 0..2 {
        let (worker, subprocess) = report.get().expect("a nested task reports");
        pids.push(("nested-pool-worker", worker));
        pids.push(("nested-task-subprocess", subprocess));
    }
    pools.push((nested, task));
    // The fork server keeps a spare child ready once it has forked one.
    let mut spares = Vec::new();
    corral_fixtures::wait_for(std::time::Duration::from_secs(10), || {
        spares = corral_fixtures::spares();
        !spares.is_empty()
    });
    let spare = *spares.first().expect("the fork server keeps a spare");
    pids.push(("spare", spare));
    // A child of the program's own fork (as Python's `os.fork` makes), not
    // corral's: it holds copies of every descriptor above, and must not
    // keep any of corral's descendants alive. It is not corral's to end:
    // the test kills it.
    let plain = plain_fork_sleeper();
    let mut out = std::io::stdout().lock();
    writeln!(out, "other plain-fork-child {plain}").expect("stdout");
    for (what, pid) in pids {
        writeln!(out, "pid {what} {pid}").expect("stdout");
    }
    writeln!(out, "ready").expect("stdout");
    out.flush().expect("stdout");
    drop(out);
    hang(())
}

/// Forks a child that sleeps 30 s and exits, as a program's own `fork`
/// would; its pid.
fn plain_fork_sleeper() -> u32 {
    #[expect(unsafe_code, reason = "a plain fork, as a program of its own makes")]
    // SAFETY: the child only sleeps and calls `_exit`: it takes no lock
    // another thread may have held at the fork.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            std::thread::sleep(std::time::Duration::from_secs(30));
            #[expect(unsafe_code, reason = "ends the forked child")]
            // SAFETY: ends this child without running the parent's exit
            // handlers.
            unsafe {
                libc::_exit(0)
            }
        }
        pid => pid as u32,
    }
}

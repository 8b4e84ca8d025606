//! What a host program (a language binding loading corral as a library) needs:
//! fork hooks around corral's forks, a hook at a child's normal exit, its own
//! re-exec command (or none), and an `imap` that holds its pool.
//!
//! One test binary of its own: the settings are process-wide. The hooks are
//! registered before `corral::init()`, as a host does, so the fork server
//! has them too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use corral::{Pool, Reexec, StartMethod};

/// Set in a child by the `after_in_child` hook.
static FORKED: AtomicU32 = AtomicU32::new(0);
/// Counted in the forking process by the `before` and `after_in_parent` hooks.
static BEFORE: AtomicU32 = AtomicU32::new(0);
static AFTER: AtomicU32 = AtomicU32::new(0);

fn in_child() {
    FORKED.store(std::process::id(), Ordering::SeqCst);
}
fn before() {
    BEFORE.fetch_add(1, Ordering::SeqCst);
}
fn after() {
    AFTER.fetch_add(1, Ordering::SeqCst);
}

/// Where the exit hook writes (a directory named by the environment, so a
/// child started by re-execution finds it too).
const EXIT_DIR: &str = "CORRAL_HOST_TEST_DIR";

fn at_exit() {
    if let Some(dir) = std::env::var_os(EXIT_DIR) {
        let _ = std::fs::write(
            std::path::Path::new(&dir).join(std::process::id().to_string()),
            b"",
        );
    }
}

#[used]
#[allow(unsafe_code)]
#[unsafe(link_section = ".init_array")]
static SET_UP: extern "C" fn() = {
    extern "C" fn set_up() {
        corral::at_fork(Some(before), Some(after), Some(in_child));
        corral::at_child_exit(at_exit);
        corral::init();
    }
    set_up
};

/// What a child saw: its pid and what its `after_in_child` hook stored.
fn hooked(_: ()) -> (u32, u32, u32) {
    (
        std::process::id(),
        FORKED.load(Ordering::SeqCst),
        BEFORE.load(Ordering::SeqCst),
    )
}

fn square(x: u64) -> u64 {
    x * x
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn fork_hooks_run_around_every_fork_of_a_child() {
    // Under the fork server: the child hook ran in the child itself; the
    // `before` hook ran in the server (this process's count stays as is).
    let (pid, forked, _) = corral::spawn(hooked, ()).unwrap().join().unwrap();
    assert_eq!(forked, pid, "after_in_child ran in the child");
    // A pool's workers are children too.
    let pool = Pool::new(2).unwrap();
    for (pid, forked, _) in pool.map(hooked, vec![(); 8]).unwrap() {
        assert_eq!(forked, pid);
    }
    drop(pool);
    // Forked from this process: all three hooks, on either side.
    let (b, a) = (BEFORE.load(Ordering::SeqCst), AFTER.load(Ordering::SeqCst));
    let child = corral::Process::builder()
        .start_method(StartMethod::Fork)
        .spawn(hooked, ())
        .unwrap();
    let (pid, forked, before_seen) = child.join().unwrap();
    assert_eq!(forked, pid);
    assert_eq!(before_seen, b + 1, "before ran before the fork");
    assert_eq!(AFTER.load(Ordering::SeqCst), a + 1, "after_in_parent ran");
    assert_eq!(FORKED.load(Ordering::SeqCst), 0, "never in the parent");
}

/// A scratch directory, removed on drop.
struct Scratch(std::path::PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_exit_hook_runs_when_a_worker_retires_not_when_it_is_killed() {
    let dir = Scratch(std::env::temp_dir().join(format!("corral-host-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    // The fork server's children get the parent's environment changes.
    #[allow(unsafe_code)]
    // SAFETY: test threads of this binary do not read or write this
    // variable concurrently (no other test touches the environment).
    unsafe {
        std::env::set_var(EXIT_DIR, &dir.0);
    }
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let retired: Vec<u32> = pool
        .map(hooked, vec![(); 3])
        .unwrap()
        .iter()
        .map(|t| t.0)
        .collect();
    let killed = pool.submit(nap, 60_000);
    let killed_pid = (0..500)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            killed.worker_pid()
        })
        .expect("the hung task started");
    assert!(killed.join().is_err());
    pool.close();
    pool.join();
    let written: Vec<u32> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    for pid in retired {
        assert!(
            written.contains(&pid),
            "worker {pid} retired without its exit hook"
        );
    }
    assert!(
        !written.contains(&killed_pid),
        "a killed worker ran its exit hook"
    );
}

#[test]
fn imap_owned_outlives_the_borrow_of_its_pool() {
    let pool = Arc::new(Pool::new(2).unwrap());
    let squares = pool.imap_owned(square, 0u64..);
    let unordered = pool.imap_unordered_owned(square, 0u64..4);
    drop(pool); // the iterators hold it
    let first = std::thread::spawn(move || squares.take(5).map(Result::unwrap).collect::<Vec<_>>());
    assert_eq!(first.join().unwrap(), [0, 1, 4, 9, 16]);
    let mut all: Vec<u64> = unordered.map(Result::unwrap).collect();
    all.sort();
    assert_eq!(all, [0, 1, 4, 9]);
}

#[test]
fn imap_wait_next_waits_at_most_its_timeout() {
    let pool = Pool::new(1).unwrap();
    let mut naps = pool.imap(nap, [400u64, 1]);
    assert!(
        !naps.wait_next(Duration::from_millis(20)),
        "nothing ended yet"
    );
    assert!(naps.wait_next(Duration::from_secs(20)));
    assert_eq!(naps.next().unwrap().unwrap(), 400);
    assert_eq!(naps.next().unwrap().unwrap(), 1);
    assert!(
        naps.wait_next(Duration::ZERO),
        "an ended iterator does not wait"
    );
    assert!(naps.next().is_none());
}

#[test]
fn reexec_can_be_refused_or_given_a_command() {
    // Refused: a Spawn child is an error, nothing is started.
    corral::set_reexec(Reexec::Refuse);
    let refused = corral::Process::builder()
        .start_method(StartMethod::Spawn)
        .spawn(square, 3);
    assert!(
        matches!(refused, Err(corral::Error::ReexecRefused(_))),
        "{refused:?}"
    );
    // A command of the host's own: here this test binary, told to run no
    // test; the child takes its role at `init()` (our `.init_array`), not
    // before main.
    let exe = std::env::current_exe().unwrap();
    corral::set_reexec(Reexec::Command(vec![
        exe.into(),
        "--exact".into(),
        "no-such-test".into(),
    ]));
    let child = corral::Process::builder()
        .start_method(StartMethod::Spawn)
        .spawn(square, 7)
        .unwrap();
    assert_eq!(child.join().unwrap(), 49);
    // A command that does not exist fails that child, with the reason.
    corral::set_reexec(Reexec::Command(vec!["/nonexistent/program".into()]));
    let failed = corral::Process::builder()
        .start_method(StartMethod::Spawn)
        .spawn(square, 7)
        .unwrap()
        .join();
    let message = failed.unwrap_err().to_string();
    assert!(message.contains("No such file"), "{message}");
    corral::set_reexec(Reexec::SameProgram);
}

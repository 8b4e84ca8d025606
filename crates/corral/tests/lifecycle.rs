//! Nothing leaks: 1,000 spawn+join cycles leave no zombie and no descriptor
//! behind, and dropped handles are reaped. One test, so that no concurrent
//! test disturbs the descriptor count.

use std::time::{Duration, Instant};

use corral::{Process, StartMethod};
use corral_fixtures::{open_fds, zombie_children};

corral::test_support!();

fn echo(x: u32) -> u32 {
    x
}

fn quick(_: ()) {}

#[test]
fn spawn_join_cycles_leave_no_zombie_and_no_descriptor() {
    // Warm up lazily created state (the fork server connection, the panic hook).
    corral::spawn(echo, 0).unwrap().join().unwrap();
    let server = corral::internal::fork_server_pid().expect("a fork server");
    let baseline = open_fds();
    for i in 0..1_000 {
        assert_eq!(corral::spawn(echo, i).unwrap().join().unwrap(), i);
    }
    for method in [StartMethod::Spawn, StartMethod::Fork] {
        for i in 0..100 {
            let child = Process::builder()
                .start_method(method)
                .spawn(echo, i)
                .unwrap();
            assert_eq!(child.join().unwrap(), i);
        }
    }
    assert_eq!(open_fds(), baseline, "descriptors leaked");
    assert_eq!(zombie_children(), Vec::<u32>::new());

    // Handles dropped without join: reaped at the next spawn, and their
    // descriptors closed.
    let pids: Vec<u32> = (0..20)
        .map(|i| {
            let method = if i % 2 == 0 {
                StartMethod::Fork
            } else {
                StartMethod::ForkServer
            };
            Process::builder()
                .start_method(method)
                .spawn(quick, ())
                .unwrap()
                .pid()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pids.iter().all(|&pid| corral_fixtures::is_gone(pid)) {
        assert!(Instant::now() < deadline, "dropped children did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
    corral::spawn(quick, ()).unwrap().join().unwrap();
    assert_eq!(
        zombie_children(),
        Vec::<u32>::new(),
        "dropped children left zombies"
    );
    assert_eq!(open_fds(), baseline, "dropped children leaked descriptors");
    // Joined handles close their status pipes before the server reports into
    // them; the server must shrug that off (EPIPE), not die of SIGPIPE.
    assert_eq!(
        corral::internal::fork_server_pid(),
        Some(server),
        "the fork server was replaced"
    );
    assert!(!corral_fixtures::is_gone(server));
}

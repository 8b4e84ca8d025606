//! The cluster pool (issue #12) against a real `redis-server` on a free
//! loopback port: nodes are this very test binary started with
//! `CORRAL_NODE` set (which `init()` recognises), really SIGKILLed; Redis
//! is really killed and restarted.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral::{Pool, TaskError};
use corral_fixtures::{Redis, cpu_ticks, descendants, example, sigkill, wait_for, within};
use redis::Commands;

corral::test_support!();

fn square_slowly(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(300));
    x * x
}

fn square(x: u64) -> u64 {
    x * x
}

/// Which node ran it (the node's `NODE_TAG`).
fn tag(_: u32) -> String {
    std::thread::sleep(Duration::from_millis(2));
    std::env::var("NODE_TAG").unwrap_or_default()
}

/// Sleeps `ms`, and appends a line to `file` each time it runs.
fn counted_nap((file, ms): (String, u64)) -> u64 {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .unwrap();
    writeln!(f, "{}", std::process::id()).unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// A node: this test binary with `CORRAL_NODE` set, its stderr in a file.
/// Killed when dropped.
struct Node(Child, std::path::PathBuf);

fn log_file() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("corral-node-{}-{n}.log", std::process::id()))
}

impl Node {
    fn start(redis: &Redis, processes: usize, visibility_ms: u64, tag: &str) -> Node {
        Node::start_url(&redis.url(), processes, visibility_ms, tag)
    }

    fn start_url(url: &str, processes: usize, visibility_ms: u64, tag: &str) -> Node {
        let log = log_file();
        let child = Command::new(std::env::current_exe().unwrap())
            .env("CORRAL_NODE", url)
            .env("CORRAL_NODE_PROCESSES", processes.to_string())
            .env("CORRAL_NODE_VISIBILITY_MS", visibility_ms.to_string())
            .env("NODE_TAG", tag)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Node(child, log)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILLs the node; its workers must follow it.
    fn kill(&mut self) -> Vec<u32> {
        let family = descendants(self.pid());
        sigkill(self.pid());
        let _ = self.0.wait();
        family
    }

    /// Kills the node and returns what it printed.
    fn stderr(mut self) -> String {
        self.kill();
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn gone(pids: &[u32]) -> bool {
    wait_for(Duration::from_secs(3), || {
        pids.iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
    })
}

fn redis_conn(redis: &Redis) -> redis::Connection {
    let conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn
}

/// Nothing of the run is left in Redis: no entry, none pending, no
/// results list, no client key.
fn nothing_left(redis: &Redis) {
    let mut c = redis_conn(redis);
    let len: usize = c.xlen("corral:tasks").unwrap();
    assert_eq!(len, 0, "entries left in the stream");
    let keys: Vec<String> = c.keys("corral:results:*").unwrap();
    assert!(keys.is_empty(), "results lists left: {keys:?}");
    let keys: Vec<String> = c.keys("corral:client:*").unwrap();
    assert!(keys.is_empty(), "client keys left: {keys:?}");
}

fn cluster(redis: &Redis) -> Pool {
    Pool::cluster(&redis.url())
        .broker_timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

#[test]
fn ten_thousand_tasks_on_two_nodes_one_killed_mid_run_each_outcome_once() {
    let redis = Redis::start();
    let mut a = Node::start(&redis, 1, 1_000, "a");
    let _b = Node::start(&redis, 1, 1_000, "b");
    let pool = cluster(&redis);
    let outcomes = within(Duration::from_secs(120), move || {
        let mut values = Vec::new();
        let mut killed = Vec::new();
        for (i, outcome) in pool
            .imap(square_slowly, 0..10_000u64)
            .chunk_size(20)
            .enumerate()
        {
            values.push(outcome);
            if i == 1_000 {
                killed = a.kill();
            }
        }
        let stats = pool.stats();
        pool.join();
        (values, killed, stats)
    });
    let (values, killed, stats) = outcomes;
    assert_eq!(values.len(), 10_000);
    for (x, v) in values.into_iter().enumerate() {
        assert_eq!(v, Ok((x as u64) * (x as u64)), "item {x}");
    }
    assert_eq!((stats.completed, stats.failed), (10_000, 0));
    assert!(!killed.is_empty(), "the killed node had workers");
    assert!(gone(&killed), "the killed node's workers outlived it");
    nothing_left(&redis);
}

#[test]
fn a_node_joining_mid_run_takes_work() {
    let redis = Redis::start();
    let _a = Node::start(&redis, 1, 5_000, "a");
    let pool = cluster(&redis);
    let url = redis.url();
    let tags = within(Duration::from_secs(120), move || {
        let mut tags = HashSet::new();
        let mut b = None;
        for (i, t) in pool.imap(tag, 0..2_000u32).chunk_size(4).enumerate() {
            tags.insert(t.unwrap());
            if i == 100 {
                b = Some(Node::start_url(&url, 1, 5_000, "b"));
            }
        }
        pool.join();
        drop(b);
        tags
    });
    assert_eq!(tags, HashSet::from(["a".to_owned(), "b".to_owned()]));
}

#[test]
fn a_task_longer_than_the_visibility_timeout_runs_once() {
    let redis = Redis::start();
    // Two nodes that would claim each other's entries after 400 ms of
    // silence; the tasks take 2 s.
    let _a = Node::start(&redis, 1, 400, "a");
    let _b = Node::start(&redis, 1, 400, "b");
    let file = std::env::temp_dir().join(format!("corral-cluster-runs-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let path = file.to_str().unwrap().to_owned();
    let pool = cluster(&redis);
    let results = within(Duration::from_secs(60), move || {
        let tasks: Vec<_> = (0..4)
            .map(|_| pool.submit(counted_nap, (path.clone(), 2_000)))
            .collect();
        let r: Vec<_> = tasks.into_iter().map(|t| t.join()).collect();
        pool.join();
        r
    });
    assert!(results.iter().all(|r| *r == Ok(2_000)), "{results:?}");
    let runs = std::fs::read_to_string(&file).unwrap().lines().count();
    let _ = std::fs::remove_file(&file);
    assert_eq!(runs, 4, "a long task ran twice");
}

#[test]
fn a_partitioned_node_runs_work_twice_and_each_outcome_counts_once() {
    let redis = Redis::start();
    let a = Node::start(&redis, 1, 500, "a");
    let _b = Node::start(&redis, 1, 500, "b");
    let file = std::env::temp_dir().join(format!("corral-cluster-twice-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let path = file.to_str().unwrap().to_owned();
    let pool = cluster(&redis);
    let a_pid = a.pid();
    let (results, stats) = within(Duration::from_secs(60), move || {
        let tasks: Vec<_> = (0..8)
            .map(|_| pool.submit(counted_nap, (path.clone(), 300)))
            .collect();
        // Node a stops answering (as if cut off) while it holds work, for
        // longer than the visibility timeout; its worker goes on.
        std::thread::sleep(Duration::from_millis(150));
        corral_fixtures::sigstop(a_pid);
        std::thread::sleep(Duration::from_millis(2_000));
        corral_fixtures::sigcont(a_pid);
        let r: Vec<_> = tasks.into_iter().map(corral::Task::join).collect();
        // Node a reports what it ran, late: dropped as duplicates.
        assert!(wait_for(Duration::from_secs(5), || pool.stats().duplicates > 0));
        let stats = pool.stats();
        pool.join();
        (r, stats)
    });
    drop(a);
    assert!(results.iter().all(|r| *r == Ok(300)), "{results:?}");
    let runs = std::fs::read_to_string(&file).unwrap().lines().count();
    let _ = std::fs::remove_file(&file);
    assert!(
        runs > 8,
        "nothing ran twice ({runs} runs): the test staged no redelivery"
    );
    assert_eq!(stats.completed, 8);
    assert!(stats.duplicates >= 1);
}

/// A client process: submits `n` counted naps, says so, and waits to be
/// killed.
fn doomed_client((url, path, n): (String, String, usize)) {
    let pool = Pool::cluster(&url).build().unwrap();
    let tasks: Vec<_> = (0..n)
        .map(|_| pool.submit(counted_nap, (path.clone(), 500)))
        .collect();
    println!("submitted");
    std::thread::sleep(Duration::from_secs(3600));
    drop(tasks);
}

#[test]
fn a_dead_clients_work_is_dropped_and_its_keys_expire() {
    let redis = Redis::start();
    let node = Node::start(&redis, 1, 1_000, "a");
    let file = std::env::temp_dir().join(format!("corral-cluster-dead-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let path = file.to_str().unwrap().to_owned();
    let client = corral::ProcessBuilder::new()
        .spawn(doomed_client, (redis.url(), path, 60))
        .unwrap();
    let mut c = redis_conn(&redis);
    assert!(wait_for(Duration::from_secs(20), || {
        c.xlen::<_, usize>("corral:tasks").unwrap() > 0
    }));
    std::thread::sleep(Duration::from_millis(500));
    client.kill().unwrap();
    // Within the client TTL (15 s) and a second, the node drops the rest
    // of its work instead of running 60 × 0.5 s for nobody.
    let emptied = wait_for(Duration::from_secs(25), || {
        c.xlen::<_, usize>("corral:tasks").unwrap() == 0
    });
    assert!(emptied, "the dead client's entries are still queued");
    let runs = std::fs::read_to_string(&file).map_or(0, |t| t.lines().count());
    let _ = std::fs::remove_file(&file);
    assert!(runs < 60, "the node ran all {runs} tasks of a dead client");
    // Its liveness key expired; its results list expires too.
    let alive: Vec<String> = c.keys("corral:client:*").unwrap();
    assert!(alive.is_empty(), "{alive:?}");
    let results: Vec<String> = c.keys("corral:results:*").unwrap();
    for key in results {
        let ttl: i64 = c.ttl(&key).unwrap();
        assert!((1..=60).contains(&ttl), "{key} never expires ({ttl})");
    }
    drop(node);
}

#[test]
fn max_pending_bounds_the_unfinished_items() {
    let redis = Redis::start();
    let _a = Node::start(&redis, 1, 1_000, "a");
    let pool = Pool::cluster(&redis.url()).max_pending(3).build().unwrap();
    within(Duration::from_secs(60), move || {
        let mut tasks = Vec::new();
        for _ in 0..12 {
            tasks.push(pool.submit(nap, 20));
            let s = pool.stats();
            assert!(s.submitted - (s.completed + s.failed) <= 3, "{s:?}");
        }
        assert!(tasks.into_iter().all(|t| t.join() == Ok(20)));
        pool.join();
    });
}

#[test]
fn a_crashing_task_is_worker_lost_and_the_node_goes_on() {
    let redis = Redis::start();
    let _a = Node::start(&redis, 1, 1_000, "a");
    let pool = cluster(&redis);
    within(Duration::from_secs(60), move || {
        let crash = pool.submit(corral_fixtures::abort, ());
        let segv = pool.submit(corral_fixtures::segfault, ());
        assert!(matches!(crash.join(), Err(TaskError::WorkerLost(_))));
        assert!(matches!(segv.join(), Err(TaskError::WorkerLost(_))));
        assert_eq!(pool.apply(square, 12), Ok(144));
        // A timeout and a panic cross as the local pool reports them.
        let slow = pool.submit_with_timeout(nap, 10_000, Duration::from_millis(300));
        assert_eq!(
            slow.join(),
            Err(TaskError::TimedOut(Duration::from_millis(300)))
        );
        let stats = pool.stats();
        assert_eq!((stats.completed, stats.lost, stats.timed_out), (1, 2, 1));
        pool.join();
    });
    nothing_left(&redis);
}

#[test]
fn the_pool_api_is_the_local_one() {
    let redis = Redis::start();
    let _a = Node::start(&redis, 2, 1_000, "a");
    let pool = cluster(&redis);
    within(Duration::from_secs(60), move || {
        assert_eq!(pool.map(square, 0..1_000u64).unwrap()[999], 998_001);
        let tasks: Vec<_> = (0..10u64).map(|x| pool.submit(square, x)).collect();
        assert!(corral::wait_all(&tasks, Some(Duration::from_secs(30))));
        let mut seen: Vec<u64> = corral::as_completed(tasks)
            .map(|(_, r)| r.unwrap())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10u64).map(|x| x * x).collect::<Vec<_>>());
        let mut unordered: Vec<u64> = pool
            .imap_unordered(square, 0..100u64)
            .map(Result::unwrap)
            .collect();
        unordered.sort_unstable();
        assert_eq!(unordered[99], 9_801);
        // An awaited task.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(pool.submit(square, 9)), Ok(81));
        // A cancelled task ends at once.
        let long = pool.submit(nap, 60_000);
        long.cancel();
        assert_eq!(long.join(), Err(TaskError::Cancelled));
        // Nodes announce themselves; the client reads them twice a second.
        assert!(wait_for(Duration::from_secs(5), || pool.processes() == 2));
        pool.close();
        assert_eq!(pool.apply(square, 1), Err(TaskError::PoolClosed));
        pool.join();
    });
}

#[test]
fn a_different_binary_refuses_the_tasks() {
    let redis = Redis::start();
    // The example is another program: its code offsets mean nothing here.
    let other = Command::new(example("cluster"))
        .args(["node", &redis.url(), "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let other = Node(other, log_file());
    let pool = cluster(&redis);
    let outcome = within(Duration::from_secs(60), move || {
        let r = pool.apply(square, 3);
        pool.join();
        r
    });
    drop(other);
    match outcome {
        Err(TaskError::Refused(why)) => assert!(why.contains("different build"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_corrupt_entry_fails_alone_and_the_node_lives() {
    let redis = Redis::start();
    let node = Node::start(&redis, 1, 1_000, "a");
    let pool = cluster(&redis);
    let mut c = redis_conn(&redis);
    let _: String = c.xadd("corral:tasks", "*", &[("t", "garbage")]).unwrap();
    let _: String = c
        .xadd(
            "corral:tasks",
            "*",
            &[("t", &b"\xff\x00\x13"[..]), ("s", &[0u8; 32][..])],
        )
        .unwrap();
    let _: String = c.xadd("corral:tasks", "*", &[("x", "y")]).unwrap();
    let value = within(Duration::from_secs(60), move || {
        let v = pool.apply(square, 5);
        pool.join();
        v
    });
    assert_eq!(value, Ok(25));
    let printed = node.stderr();
    assert_eq!(
        printed.matches("dropped stream entry").count(),
        3,
        "{printed}"
    );
    nothing_left(&redis);
}

#[test]
fn redis_killed_fails_calls_in_bounded_time_and_a_restart_serves_again() {
    let mut redis = Redis::start();
    let _a = Node::start(&redis, 1, 1_000, "a");
    let pool = cluster(&redis);
    let pool = std::sync::Arc::new(pool);
    assert_eq!(pool.apply(square, 2), Ok(4));
    let waiting = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.apply(nap, 5_000))
    };
    std::thread::sleep(Duration::from_millis(300));
    redis.kill();
    let killed = Instant::now();
    // The waiting task and a new one fail with a broker error within the
    // broker timeout (3 s) and a little.
    let outcomes = within(Duration::from_secs(20), move || {
        let later = pool.apply(square, 3);
        (waiting.join().unwrap(), later, pool)
    });
    let (waited, later, pool) = outcomes;
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "{:?}",
        killed.elapsed()
    );
    assert!(matches!(waited, Err(TaskError::Broker(_))), "{waited:?}");
    assert!(matches!(later, Err(TaskError::Broker(_))), "{later:?}");
    // Restarted (empty, no persistence): the node recreates its group, and
    // the same pool takes work again (what it failed stays failed).
    redis.restart();
    let node = _a;
    let v = within(Duration::from_secs(30), move || {
        let pool = std::sync::Arc::into_inner(pool).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut v = pool.apply(square, 7);
        while matches!(v, Err(TaskError::Broker(_))) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            v = pool.apply(square, 7);
        }
        pool.terminate();
        v
    });
    assert_eq!(v, Ok(49), "the node said: {}", node.stderr());
}

#[test]
fn a_node_without_its_broker_waits_without_spinning() {
    let mut redis = Redis::start();
    let node = Node::start(&redis, 1, 1_000, "a");
    let pool = cluster(&redis);
    assert_eq!(
        within(Duration::from_secs(30), move || {
            let v = pool.apply(square, 3);
            pool.terminate();
            v
        }),
        Ok(9)
    );
    redis.kill();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(node.pid());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(node.pid()) - before;
    assert!(
        used < 50,
        "a node without Redis used {used} ticks of CPU in 3 s"
    );
}

#[test]
fn with_persistence_submitted_tasks_survive_a_redis_restart() {
    let mut redis = Redis::start_with(true);
    let _a = Node::start(&redis, 2, 1_000, "a");
    let pool = Pool::cluster(&redis.url())
        .broker_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..20).map(|_| pool.submit(nap, 200)).collect();
    assert!(wait_for(Duration::from_secs(20), || tasks
        .iter()
        .any(corral::Task::is_finished)));
    redis.kill();
    std::thread::sleep(Duration::from_millis(500));
    redis.restart();
    let results = within(Duration::from_secs(60), move || {
        let r: Vec<_> = tasks.into_iter().map(corral::Task::join).collect();
        pool.join();
        r
    });
    assert!(results.iter().all(|r| *r == Ok(200)), "{results:?}");
}

/// What [`marked`] returns: bytes a proxy can spot in a reply.
const MARKER: &str = "corral-outcome-marker-5eed";

fn marked(_: u32) -> String {
    MARKER.to_owned()
}

/// A loopback proxy to Redis that loses the first reply holding `marker`:
/// it forwards nothing of it and cuts that connection, as if Redis had
/// died after running the command and before its reply left.
struct ReplyCutter {
    port: u16,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ReplyCutter {
    fn start(upstream: u16, marker: &'static str) -> ReplyCutter {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cuts = Arc::new(AtomicUsize::new(0));
        let armed = Arc::new(AtomicBool::new(true));
        let counted = cuts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut &c2, &mut &s2));
                let (armed, cuts) = (armed.clone(), counted.clone());
                std::thread::spawn(move || relay_replies(&server, &client, marker, &armed, &cuts));
            }
        });
        ReplyCutter { port, cuts }
    }

    fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Copies replies from `server` to `client`, but cuts both at the first
/// one holding `marker` while `armed` (once across connections).
fn relay_replies(
    server: &std::net::TcpStream,
    client: &std::net::TcpStream,
    marker: &str,
    armed: &std::sync::atomic::AtomicBool,
    cuts: &std::sync::atomic::AtomicUsize,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering::SeqCst;
    let mut buf = vec![0u8; 1 << 16];
    // The last bytes forwarded, so a marker split across reads is seen.
    let mut tail: Vec<u8> = Vec::new();
    while let Ok(n) = (&mut &*server).read(&mut buf) {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        let holds = tail.windows(marker.len()).any(|w| w == marker.as_bytes());
        if holds && armed.swap(false, SeqCst) {
            cuts.fetch_add(1, SeqCst);
            break;
        }
        if (&mut &*client).write_all(&buf[..n]).is_err() {
            break;
        }
        tail.drain(..tail.len().saturating_sub(marker.len()));
    }
    let _ = server.shutdown(std::net::Shutdown::Both);
    let _ = client.shutdown(std::net::Shutdown::Both);
}

#[test]
fn an_outcome_whose_reply_is_lost_on_the_way_still_arrives() {
    let redis = Redis::start();
    let _a = Node::start(&redis, 1, 1_000, "a");
    let proxy = ReplyCutter::start(redis.port(), MARKER);
    let url = redis
        .url()
        .replace(&format!(":{}/", redis.port()), &format!(":{}/", proxy.port));
    let pool = Pool::cluster(&url)
        .broker_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let got = within(Duration::from_secs(30), move || {
        let got = pool.apply(marked, 1);
        pool.join();
        got
    });
    assert_eq!(got, Ok(MARKER.to_owned()));
    assert_eq!(proxy.cuts(), 1, "the reply holding the outcome was not cut");
    nothing_left(&redis);
}

#[test]
fn an_unreachable_broker_is_an_error_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = Pool::cluster(&format!("redis://127.0.0.1:{port}/"))
        .build()
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains("redis-server running"), "{err}");
    let err = Pool::cluster("http://nowhere").build().unwrap_err();
    assert!(
        matches!(err, corral::cluster::ClusterError::InvalidUrl { .. }),
        "{err}"
    );
}

#[test]
fn a_wrong_password_is_refused() {
    let redis = Redis::start();
    let url = redis.url().replace(":pw", ":wrong");
    let err = Pool::cluster(&url).build().unwrap_err();
    assert!(
        !err.to_string().contains("wrong"),
        "the password leaked: {err}"
    );
}

//! Managers (issue #11): every proxy kind across real processes and start
//! methods, proxies in pool tasks and inside each other, a manager
//! SIGKILLed, stopped and restarted, a client SIGKILLed, hostile clients,
//! wrong keys, and stock Python clients.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use corral::manager::{
    Barrier, Condition, Dict, Event, Kind, List, Lock, Manager, ManagerError, Namespace, Queue,
    Semaphore,
};
use corral::{ProcessBuilder, StartMethod};
use corral_fixtures::{cpu_ticks, done, example, run_python, sigkill, wait_for, within};

corral::test_support!();

/// The seed's farm: 4 workers read from a queue of 4 until their sentinel
/// and append squares to a list.
fn farm_worker((jobs, results): (Queue<Option<u32>>, List<u32>)) -> u32 {
    let mut n = 0;
    while let Some(x) = jobs.get().unwrap() {
        results.push(x * x).unwrap();
        n += 1;
    }
    n
}

#[test]
fn the_seed_farm_under_every_start_method() {
    let m = Manager::start().unwrap();
    for method in [
        StartMethod::ForkServer,
        StartMethod::Fork,
        StartMethod::Spawn,
    ] {
        let jobs = m.bounded_queue::<Option<u32>>(4).unwrap();
        let results = m.list::<u32>().unwrap();
        let workers: Vec<_> = (0..4)
            .map(|_| {
                ProcessBuilder::new()
                    .start_method(method)
                    .spawn(farm_worker, (jobs.clone(), results.clone()))
                    .unwrap()
            })
            .collect();
        let limit = Duration::from_secs(20);
        for x in 0..12 {
            jobs.put_timeout(Some(x), limit).unwrap();
        }
        for _ in 0..4 {
            jobs.put_timeout(None, limit).unwrap();
        }
        let taken: u32 = workers.into_iter().map(|w| done(w).unwrap()).sum();
        assert_eq!(taken, 12, "{method:?}");
        let mut got = results.snapshot().unwrap();
        got.sort_unstable();
        assert_eq!(
            got,
            (0..12).map(|x| x * x).collect::<Vec<_>>(),
            "{method:?}"
        );
    }
}

#[test]
fn dict_semantics() {
    let m = Manager::start().unwrap();
    let d = m.dict::<String, u64>().unwrap();
    d.insert("b".into(), 1).unwrap();
    d.insert("a".into(), 2).unwrap();
    d.insert("b".into(), 3).unwrap();
    assert_eq!(d.keys().unwrap(), ["b", "a"], "insertion order");
    assert_eq!(d.get(&"b".into()).unwrap(), Some(3));
    assert_eq!(d.get(&"zz".into()).unwrap(), None);
    assert!(d.contains_key(&"a".into()).unwrap());
    assert_eq!(d.set_default("c".into(), 9).unwrap(), 9);
    assert_eq!(d.set_default("c".into(), 10).unwrap(), 9);
    assert_eq!(d.remove(&"c".into()).unwrap(), Some(9));
    assert_eq!(d.remove(&"c".into()).unwrap(), None);
    d.extend([("x".to_string(), 7), ("y".to_string(), 8)])
        .unwrap();
    assert_eq!(d.len().unwrap(), 4);
    assert_eq!(
        d.compare_exchange(&"x".into(), Some(&6), 100).unwrap(),
        Err(Some(7))
    );
    assert_eq!(
        d.compare_exchange(&"x".into(), Some(&7), 100).unwrap(),
        Ok(())
    );
    assert_eq!(d.compare_exchange(&"new".into(), None, 1).unwrap(), Ok(()));
    assert_eq!(d.modify("new".into(), |v| v.unwrap_or(0) + 41).unwrap(), 42);
    d.clear().unwrap();
    assert!(d.is_empty().unwrap());
    // A stored None is not "absent".
    let o = m.dict::<u32, Option<u32>>().unwrap();
    o.insert(1, None).unwrap();
    assert_eq!(o.get(&1).unwrap(), Some(None));
    assert_eq!(o.get(&2).unwrap(), None);
}

fn add_many((d, v, n): (Dict<String, i64>, corral::manager::Value<i64>, u32)) {
    for _ in 0..n {
        d.add("hits".into(), 1).unwrap();
        v.modify(|x| x + 1).unwrap();
    }
}

#[test]
fn read_modify_write_is_atomic_across_processes() {
    let m = Manager::start().unwrap();
    let d = m.dict::<String, i64>().unwrap();
    let v = m.value(0i64).unwrap();
    let kids: Vec<_> = (0..4)
        .map(|_| corral::spawn(add_many, (d.clone(), v.clone(), 200)).unwrap())
        .collect();
    kids.into_iter().for_each(|k| done(k).unwrap());
    assert_eq!(d.get(&"hits".into()).unwrap(), Some(800));
    assert_eq!(v.get().unwrap(), 800);
}

#[test]
fn list_queue_value_namespace() {
    let m = Manager::start().unwrap();
    let l = m.list::<String>().unwrap();
    l.extend(["a".into(), "b".into()]).unwrap();
    l.insert(0, "z".into()).unwrap();
    assert_eq!(l.get(-1).unwrap(), "b");
    l.set(1, "y".into()).unwrap();
    assert_eq!(l.snapshot().unwrap(), ["z", "y", "b"]);
    assert!(l.contains(&"y".into()).unwrap());
    assert_eq!(l.remove(0).unwrap(), "z");
    assert!(matches!(l.get(5), Err(ManagerError::Raised { class, .. }) if class == "IndexError"));
    assert_eq!(l.pop().unwrap(), Some("b".into()));
    assert_eq!(l.pop().unwrap(), Some("y".into()));
    assert_eq!(l.pop().unwrap(), None);

    let q = m.bounded_queue::<u32>(1).unwrap();
    q.try_put(1).unwrap();
    assert!(matches!(q.try_put(2), Err(ManagerError::Full)));
    assert!(matches!(
        q.put_timeout(2, Duration::from_millis(20)),
        Err(ManagerError::Full)
    ));
    assert_eq!(q.len().unwrap(), 1);
    assert_eq!(q.get().unwrap(), 1);
    assert!(matches!(q.try_get(), Err(ManagerError::Empty)));
    let t = Instant::now();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(50)),
        Err(ManagerError::Empty)
    ));
    assert!(t.elapsed() >= Duration::from_millis(50));

    // Duration::MAX means no limit, never an overflow.
    let forever = q.with_timeout(Duration::MAX);
    forever.put(9).unwrap();
    assert_eq!(forever.get_timeout(Duration::MAX).unwrap(), 9);

    let jq = m.joinable_queue::<u32>().unwrap();
    jq.put(5).unwrap();
    let t = Instant::now();
    assert!(matches!(
        jq.join_timeout(Duration::from_millis(30)),
        Err(ManagerError::Timeout(_))
    ));
    assert!(matches!(
        jq.with_timeout(Duration::from_millis(30)).join(),
        Err(ManagerError::Timeout(_))
    ));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "ended by the server, not the liveness bound"
    );
    assert_eq!(jq.get().unwrap(), 5);
    jq.task_done().unwrap();
    jq.join().unwrap();
    assert!(
        matches!(jq.task_done(), Err(ManagerError::Raised { class, .. }) if class == "ValueError")
    );

    let ns = m.namespace().unwrap();
    ns.set("epoch", 3u32).unwrap();
    ns.set("name", "run-1").unwrap();
    assert_eq!(ns.get::<u32>("epoch").unwrap(), Some(3));
    assert_eq!(ns.get::<String>("name").unwrap().as_deref(), Some("run-1"));
    assert!(ns.remove("epoch").unwrap());
    assert_eq!(ns.get::<u32>("epoch").unwrap(), None);

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
    struct Job {
        id: u32,
        tags: Vec<String>,
        weight: Option<f64>,
    }
    let v = m
        .value(Job {
            id: 1,
            tags: vec!["x".into()],
            weight: None,
        })
        .unwrap();
    v.set(Job {
        id: 2,
        tags: vec![],
        weight: Some(0.5),
    })
    .unwrap();
    assert_eq!(
        v.get().unwrap(),
        Job {
            id: 2,
            tags: vec![],
            weight: Some(0.5)
        }
    );
}

fn hold_lock_then_hang((lock, ready): (Lock, Event)) {
    let g = lock.acquire().unwrap();
    g.keep();
    ready.set().unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_lock_whose_holder_dies_is_freed_and_the_next_taker_told() {
    let m = Manager::start().unwrap();
    let lock = m.lock().unwrap();
    let ready = m.event().unwrap();
    let child = corral::spawn(hold_lock_then_hang, (lock.clone(), ready.clone())).unwrap();
    assert!(ready.wait_timeout(Duration::from_secs(20)).unwrap());
    assert!(matches!(lock.try_acquire(), Err(ManagerError::WouldBlock)));
    child.kill().unwrap();
    let g = within(Duration::from_secs(10), move || {
        let g = lock.acquire_timeout(Duration::from_secs(5)).unwrap();
        (g.owner_died(), lock.clone())
    });
    assert!(g.0, "the next taker is told its holder died");
}

fn wait_then_count((cond, flag, barrier): (Condition, Event, Barrier)) -> usize {
    let g = cond.acquire().unwrap();
    flag.set().unwrap();
    let notified = cond.wait_timeout(&g, Duration::from_secs(20)).unwrap();
    drop(g);
    assert!(notified);
    barrier.wait_timeout(Duration::from_secs(20)).unwrap()
}

#[test]
fn condition_event_barrier_semaphore_across_processes() {
    let m = Manager::start().unwrap();
    let cond = m.condition().unwrap();
    let flag = m.event().unwrap();
    let barrier = m.barrier(2).unwrap();
    let child = corral::spawn(
        wait_then_count,
        (cond.clone(), flag.clone(), barrier.clone()),
    )
    .unwrap();
    assert!(flag.wait_timeout(Duration::from_secs(20)).unwrap());
    // The child waits (it released the lock): notify it.
    let g = cond.acquire().unwrap();
    cond.notify(1).unwrap();
    drop(g);
    let mine = barrier.wait_timeout(Duration::from_secs(20)).unwrap();
    let theirs = done(child).unwrap();
    let mut both = [mine, theirs];
    both.sort_unstable();
    assert_eq!(both, [0, 1]);
    assert_eq!(barrier.parties().unwrap(), 2);

    let sem = m.semaphore(2).unwrap();
    let a = sem.acquire().unwrap();
    let _b = sem.acquire().unwrap();
    assert!(matches!(sem.try_acquire(), Err(ManagerError::WouldBlock)));
    assert_eq!(sem.value().unwrap(), 0);
    drop(a);
    assert!(sem.acquire_timeout(Duration::from_secs(5)).is_ok());

    let b = m.barrier(3).unwrap();
    assert!(matches!(
        b.wait_timeout(Duration::from_millis(30)),
        Err(ManagerError::BrokenBarrier)
    ));
    assert!(b.broken().unwrap());
    b.reset().unwrap();
    assert!(!b.broken().unwrap());
}

fn wait_at_barrier(b: Barrier) -> bool {
    matches!(b.wait(), Err(ManagerError::BrokenBarrier))
}

fn just_hang(b: Barrier) {
    let _ = b.wait();
}

#[test]
fn a_party_that_dies_breaks_the_barrier_instead_of_hanging_the_rest() {
    let m = Manager::start().unwrap();
    let b = m.barrier(3).unwrap();
    let doomed = corral::spawn(just_hang, b.clone()).unwrap();
    let waiter = corral::spawn(wait_at_barrier, b.clone()).unwrap();
    assert!(wait_for(Duration::from_secs(20), || b.n_waiting().unwrap() == 2));
    doomed.kill().unwrap();
    assert!(
        done(waiter).unwrap(),
        "the survivor is told the barrier broke"
    );
}

fn square_via((x, results): (u64, List<u64>)) -> u64 {
    results.push(x * x).unwrap();
    x
}

#[test]
fn proxies_inside_pool_tasks() {
    let m = Manager::start().unwrap();
    let results = m.list::<u64>().unwrap();
    let pool = corral::Pool::new(2).unwrap();
    let items: Vec<_> = (0..50).map(|x| (x, results.clone())).collect();
    let out = pool.map(square_via, items).unwrap();
    assert_eq!(out, (0..50).collect::<Vec<_>>());
    let mut got = results.snapshot().unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..50).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn proxies_nest_and_keep_their_objects() {
    let m = Manager::start().unwrap();
    let outer = m.dict::<String, List<u32>>().unwrap();
    let before = m.objects().unwrap();
    {
        let inner = m.list::<u32>().unwrap();
        inner.push(1).unwrap();
        outer.insert("inner".into(), inner).unwrap();
    } // our proxy is gone; the dict still holds one
    let inner = outer.get(&"inner".into()).unwrap().unwrap();
    inner.push(2).unwrap();
    assert_eq!(inner.snapshot().unwrap(), [1, 2]);
    assert_eq!(m.objects().unwrap(), before + 1);
    drop(inner);
    outer.remove(&"inner".into()).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || m.objects().unwrap() == before),
        "freed once nothing holds it"
    );
}

fn make_objects((m, ready): (Manager, corral::Sender)) {
    let keep: Vec<_> = (0..10).map(|_| m.dict::<u32, u32>().unwrap()).collect();
    ready.send(&keep.len()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_dead_clients_objects_are_freed() {
    let m = Manager::start().unwrap();
    let base = m.objects().unwrap();
    let (rx, tx) = corral::Pipe::simplex().unwrap();
    let child = corral::spawn(
        make_objects,
        (Manager::connect(m.address(), m.authkey()).unwrap(), tx),
    )
    .unwrap();
    let made: usize = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(m.objects().unwrap(), base + made);
    sigkill(child.pid());
    assert!(
        wait_for(Duration::from_secs(5), || m.objects().unwrap() == base),
        "a SIGKILLed client's objects are freed (Python's leak)"
    );
}

fn block_on_get(q: Queue<u32>) -> (bool, u128) {
    let t = Instant::now();
    let r = q.get();
    (
        matches!(r, Err(ManagerError::Unreachable { .. })),
        t.elapsed().as_millis(),
    )
}

#[test]
fn a_killed_manager_fails_blocked_and_later_calls_within_a_second() {
    let m = Manager::start().unwrap();
    let q = m.queue::<u32>().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    let blocked: Vec<_> = (0..3)
        .map(|_| corral::spawn(block_on_get, q.clone()).unwrap())
        .collect();
    let q2 = q.clone();
    let local = std::thread::spawn(move || block_on_get(q2));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    sigkill(m.pid().unwrap());
    for b in blocked {
        let (unreachable, _) = done(b).unwrap();
        assert!(unreachable);
    }
    let (unreachable, _) = local.join().unwrap();
    assert!(unreachable);
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed.elapsed()
    );
    let t = Instant::now();
    assert!(matches!(
        d.insert(1, 1),
        Err(ManagerError::Unreachable { .. })
    ));
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_stopped_manager_is_an_error_not_a_hang() {
    let m = Manager::start().unwrap();
    let q = m.queue::<u32>().unwrap();
    let pid = m.pid().unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    #[allow(unsafe_code)]
    let stop = |sig| unsafe { libc::kill(pid as i32, sig) };
    let d = m
        .dict::<u32, u32>()
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    stop(libc::SIGSTOP);
    // The timeout form ends at its timeout.
    let t = Instant::now();
    let r = within(Duration::from_secs(20), move || d.insert(1, 1));
    assert!(matches!(r, Err(ManagerError::Timeout(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // A call without one ends when the heartbeats stop coming.
    let t = Instant::now();
    let r = within(Duration::from_secs(20), move || q.get());
    stop(libc::SIGCONT);
    assert!(matches!(r, Err(ManagerError::Unreachable { .. })), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
}

#[test]
fn a_restarted_manager_is_reconnected_by_name() {
    let address = format!("@corral-test-restart-{}", std::process::id());
    let key = b"restart key";
    let serve = || {
        Manager::builder()
            .register("get_jobs", Kind::Queue)
            .serve(address.as_str(), key)
            .unwrap()
    };
    let first = serve();
    let client = Manager::connect(address.as_str(), key).unwrap();
    let jobs = client.registered::<Queue<u32>>("get_jobs").unwrap();
    let scratch = client.dict::<u32, u32>().unwrap();
    jobs.put(1).unwrap();
    sigkill(first.pid().unwrap());
    assert!(wait_for(Duration::from_secs(5), || matches!(
        jobs.put(2),
        Err(ManagerError::Unreachable { .. })
    )));
    drop(first);
    let _second = serve();
    jobs.put(3).unwrap();
    assert_eq!(
        jobs.get().unwrap(),
        3,
        "a new, empty queue, reached again by name"
    );
    assert!(matches!(scratch.len(), Err(ManagerError::ObjectLost(_))));
}

#[test]
fn a_wrong_key_is_refused() {
    let m = Manager::start().unwrap();
    match Manager::connect(m.address(), b"not the key") {
        Err(ManagerError::Corral(corral::Error::Authentication(_))) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_clients_lose_only_their_own_connection() {
    let m = Manager::serve("127.0.0.1:0", b"k").unwrap();
    let port = match m.address() {
        corral::connection::Address::Tcp(a) => a.port(),
        _ => unreachable!(),
    };
    let d = m.dict::<u32, u32>().unwrap();
    // Silent, garbage, and a huge announced length; none authenticate.
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).unwrap();
    garbage.write_all(&[0x41; 4096]).unwrap();
    let mut huge = TcpStream::connect(("127.0.0.1", port)).unwrap();
    huge.write_all(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
    for i in 0..200 {
        d.insert(i, i).unwrap();
    }
    assert_eq!(d.len().unwrap(), 200);
    // An authenticated client sending an unreadable request gets an error;
    // the server goes on.
    let conn = corral::connection::Client::new(m.address().clone(), b"k")
        .connect()
        .unwrap();
    conn.send_bytes(b"\x80\x02cos\nsystem\nq\x00.").unwrap();
    let reply = conn.recv_bytes_timeout(Duration::from_secs(5)).unwrap();
    assert!(String::from_utf8_lossy(&reply).contains("plain data only"));
    // Two small pickles that would decode into gigabytes, or nest a list a
    // million deep (decoding and dropping recurse once per level): refused,
    // and the server lives.
    let mut doubling = vec![0x80, 2, b'N'];
    for _ in 0..40 {
        doubling.extend_from_slice(&[b'2', 0x86]);
    }
    doubling.push(b'.');
    let mut deep = vec![0x80, 2];
    deep.extend(std::iter::repeat_n(b']', 1_000_000));
    deep.extend(std::iter::repeat_n(b'a', 999_999));
    deep.push(b'.');
    for bomb in [doubling, deep] {
        conn.send_bytes(&bomb).unwrap();
        let reply = conn.recv_bytes_timeout(Duration::from_secs(10)).unwrap();
        assert!(String::from_utf8_lossy(&reply).contains("plain data only"));
    }
    assert_eq!(d.get(&7).unwrap(), Some(7));
}

#[test]
fn a_server_out_of_descriptors_waits_instead_of_spinning() {
    let m = Manager::serve("127.0.0.1:0", b"k").unwrap();
    let pid = m.pid().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    d.insert(1, 1).unwrap();
    let port = match m.address() {
        corral::connection::Address::Tcp(a) => a.port(),
        _ => unreachable!(),
    };
    // Leave the server a handful of descriptors, then queue more peers
    // than it can accept.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let limit = libc::rlimit {
        rlim_cur: open + 2,
        rlim_max: open + 2,
    };
    // SAFETY: prlimit on our own child, with a valid rlimit; no memory is shared.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::prlimit(
            pid as i32,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0);
    let peers: Vec<_> = (0..10)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 50,
        "the server burned {used} of 100 ticks with peers it cannot accept"
    );
    // Descriptors come back: the server serves again.
    drop(peers);
    assert!(wait_for(Duration::from_secs(15), || d.get(&1).ok() == Some(Some(1))));
}

#[test]
fn python_clients_use_registered_objects() {
    let m = Manager::builder()
        .register("get_config", Kind::Dict)
        .register("get_results", Kind::List)
        .register("get_jobs", Kind::Queue)
        .register("get_total", Kind::Value)
        .register("get_lock", Kind::Lock)
        .register("get_ready", Kind::Event)
        .register("get_ns", Kind::Namespace)
        // The machine's Python may be 3.11, which speaks only HMAC-MD5.
        .allow_legacy_md5(true)
        .serve("127.0.0.1:0", b"py key")
        .unwrap();
    let config = m.registered::<Dict<String, i64>>("get_config").unwrap();
    config.insert("workers".into(), 4).unwrap();
    let jobs = m.registered::<Queue<String>>("get_jobs").unwrap();
    jobs.put("job-1".into()).unwrap();
    let port = match m.address() {
        corral::connection::Address::Tcp(a) => a.port(),
        _ => unreachable!(),
    };
    let (ok, out, err) = run_python(PY_MANAGER_CLIENT, &[&port.to_string(), &hex(b"py key")]);
    assert!(ok, "python failed:\n{out}\n{err}");
    assert_eq!(out.trim(), "OK", "{err}");
    let results = m.registered::<List<(String, i64)>>("get_results").unwrap();
    assert_eq!(results.snapshot().unwrap(), [("job-1".to_string(), 4)]);
    let ns = m.registered::<Namespace>("get_ns").unwrap();
    assert_eq!(ns.get::<String>("who").unwrap().as_deref(), Some("python"));
    let ready = m.registered::<Event>("get_ready").unwrap();
    assert!(ready.is_set().unwrap());

    let (ok, out, _) = run_python(PY_MANAGER_CLIENT, &[&port.to_string(), &hex(b"wrong")]);
    assert!(ok && out.contains("AuthenticationError"), "{out}");
}

const PY_MANAGER_CLIENT: &str = r#"
import sys, queue
from multiprocessing.managers import BaseManager, DictProxy, NamespaceProxy
class M(BaseManager): pass
for name in ['get_results', 'get_jobs', 'get_total', 'get_lock', 'get_ready']:
    M.register(name)
M.register('get_config', proxytype=DictProxy)
M.register('get_ns', proxytype=NamespaceProxy)
m = M(address=('127.0.0.1', int(sys.argv[1])), authkey=bytes.fromhex(sys.argv[2]))
try:
    m.connect()
except Exception as e:
    print(type(e).__name__, e); sys.exit(0)
cfg = m.get_config()
assert cfg['workers'] == 4, cfg['workers']
try:
    cfg['missing']; raise SystemExit('no KeyError')
except KeyError:
    pass
cfg['from_python'] = [1, 'x', b'y', 2.5, None, {'n': (1, 2)}, True]
assert cfg['from_python'] == [1, 'x', b'y', 2.5, None, {'n': (1, 2)}, True], cfg['from_python']
assert len(cfg) == 2 and 'workers' in cfg
cfg[1] = 'one'
assert cfg[1.0] == 'one' and cfg[True] == 'one'   # Python's key equality
jobs = m.get_jobs()
job = jobs.get(timeout=5)
try:
    jobs.get(timeout=0.05); raise SystemExit('no Empty')
except queue.Empty:
    pass
res = m.get_results()
res.append((job, cfg.get('workers')))
try:
    res.__getitem__(99); raise SystemExit('no IndexError')
except IndexError:
    pass
total = m.get_total()
total.set(41)
assert total.get() == 41
lock = m.get_lock()
assert lock.acquire() is True
lock.release()
ev = m.get_ready()
ev.set()
assert ev.is_set()
ns = m.get_ns()
ns.who = 'python'
assert ns.who == 'python'
import datetime
try:
    cfg['bad'] = datetime.date(2020, 1, 1); raise SystemExit('object accepted')
except Exception as e:
    assert 'plain data' in str(e), e
print('OK')
"#;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_semaphore_and_namespace_compile_as_types() {
    // Types are serde handles: they cross to children.
    fn takes<T: corral::Data>(_: &T) {}
    let m = Manager::start().unwrap();
    takes(&m.semaphore(1).unwrap() as &Semaphore);
    takes(&m.namespace().unwrap());
    takes(&m);
}

/// Starts an example with `CORRAL_AUTHKEY`; returns it and the address it
/// printed (`listening ADDRESS`).
fn start_example(name: &str, key: &[u8]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(example(name))
        .arg("127.0.0.1:0")
        .env("CORRAL_AUTHKEY", hex(key))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = within(Duration::from_secs(30), move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let address = line.trim().strip_prefix("listening ").unwrap().to_owned();
    (child, address)
}

const PY_EXAMPLE_CLIENT: &str = r#"
import sys
from multiprocessing.managers import BaseManager, DictProxy
from multiprocessing.connection import Client
host, port = sys.argv[1].rsplit(':', 1)
key = bytes.fromhex(sys.argv[2])
if sys.argv[3] == 'manager':
    class M(BaseManager): pass
    M.register('get_config', proxytype=DictProxy)
    M.register('get_results'); M.register('get_jobs')
    m = M(address=(host, int(port)), authkey=key); m.connect()
    m.get_jobs().put('job-1')
    m.get_config()['mode'] = 'fast'
    m.get_results().append(m.get_jobs().get(timeout=5))
    print(m.get_config()['mode'], m.get_results().__len__())
else:
    c = Client((host, int(port)), authkey=key)
    c.send_bytes(b'echo me'); print(c.recv_bytes().decode())
"#;

#[test]
fn the_examples_serve_python_clients_and_die_with_their_server() {
    let key = b"example key";
    let (mut server, address) = start_example("manager_server", key);
    let (ok, out, err) = run_python(PY_EXAMPLE_CLIENT, &[&address, &hex(key), "manager"]);
    assert!(ok && out.trim() == "fast 1", "{out}\n{err}");
    let m = Manager::connect(address.as_str(), key).unwrap();
    let results = m.registered::<List<String>>("get_results").unwrap();
    assert_eq!(results.snapshot().unwrap(), ["job-1"]);
    let below = corral_fixtures::descendants(server.id());
    assert!(!below.is_empty());
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || below
            .iter()
            .all(|p| corral_fixtures::is_gone(*p))),
        "the manager process died with the example"
    );
    assert!(matches!(
        results.len(),
        Err(ManagerError::Unreachable { .. })
    ));

    let (mut echo, address) = start_example("connection_echo", key);
    let (ok, out, err) = run_python(PY_EXAMPLE_CLIENT, &[&address, &hex(key), "echo"]);
    echo.kill().unwrap();
    echo.wait().unwrap();
    assert!(ok && out.trim() == "echo me", "{out}\n{err}");
}

/// One proxy of every kind.
#[derive(serde::Serialize, serde::Deserialize)]
struct Everything {
    dict: Dict<String, u32>,
    list: List<u32>,
    queue: Queue<u32>,
    joinable: corral::manager::JoinableQueue<u32>,
    value: corral::manager::Value<u32>,
    lock: Lock,
    rlock: corral::manager::RLock,
    semaphore: Semaphore,
    condition: Condition,
    event: Event,
    barrier: Barrier,
    namespace: Namespace,
}

/// Uses each proxy once from a child.
fn touch_everything(e: Everything) -> u32 {
    e.dict.add("n".into(), 1).unwrap();
    e.list.push(1).unwrap();
    e.queue.put(1).unwrap();
    e.joinable.put(1).unwrap();
    e.value.add(1).unwrap();
    drop(e.lock.acquire().unwrap());
    drop(e.rlock.acquire().unwrap());
    drop(e.semaphore.acquire().unwrap());
    let g = e.condition.acquire().unwrap();
    e.condition.notify_all().unwrap();
    drop(g);
    e.event.set().unwrap();
    e.barrier.wait_timeout(Duration::from_secs(20)).unwrap();
    e.namespace.set("seen", true).unwrap();
    e.dict.get(&"n".into()).unwrap().unwrap()
}

#[test]
fn every_proxy_kind_crosses_every_start_method() {
    let m = Manager::start().unwrap();
    let e = Everything {
        dict: m.dict().unwrap(),
        list: m.list().unwrap(),
        queue: m.queue().unwrap(),
        joinable: m.joinable_queue().unwrap(),
        value: m.value(0).unwrap(),
        lock: m.lock().unwrap(),
        rlock: m.rlock().unwrap(),
        semaphore: m.semaphore(1).unwrap(),
        condition: m.condition().unwrap(),
        event: m.event().unwrap(),
        barrier: m.barrier(1).unwrap(),
        namespace: m.namespace().unwrap(),
    };
    let methods = [
        StartMethod::ForkServer,
        StartMethod::Fork,
        StartMethod::Spawn,
    ];
    for (i, method) in methods.into_iter().enumerate() {
        let everything = Everything {
            dict: e.dict.clone(),
            list: e.list.clone(),
            queue: e.queue.clone(),
            joinable: e.joinable.clone(),
            value: e.value.clone(),
            lock: e.lock.clone(),
            rlock: e.rlock.clone(),
            semaphore: e.semaphore.clone(),
            condition: e.condition.clone(),
            event: e.event.clone(),
            barrier: e.barrier.clone(),
            namespace: e.namespace.clone(),
        };
        let child = ProcessBuilder::new()
            .start_method(method)
            .spawn(touch_everything, everything)
            .unwrap();
        assert_eq!(done(child).unwrap(), i as u32 + 1, "{method:?}");
    }
    assert_eq!(e.list.len().unwrap(), 3);
    assert_eq!(e.queue.len().unwrap(), 3);
    assert_eq!(e.joinable.len().unwrap(), 3);
    assert_eq!(e.value.get().unwrap(), 3);
    assert_eq!(e.semaphore.value().unwrap(), 1, "every permit given back");
    assert!(e.event.is_set().unwrap());
    assert_eq!(e.namespace.get::<bool>("seen").unwrap(), Some(true));
}

fn hold_then_wait((cond, flag): (Condition, Event)) -> bool {
    let g = cond.acquire().unwrap();
    flag.set().unwrap();
    // The parent asks for the lock while we still hold it.
    std::thread::sleep(Duration::from_millis(300));
    cond.wait_timeout(&g, Duration::from_secs(20)).unwrap()
}

#[test]
fn a_condition_wait_hands_its_lock_to_a_waiting_acquirer() {
    let m = Manager::start().unwrap();
    let cond = m.condition().unwrap();
    let flag = m.event().unwrap();
    let child = corral::spawn(hold_then_wait, (cond.clone(), flag.clone())).unwrap();
    assert!(flag.wait_timeout(Duration::from_secs(20)).unwrap());
    // Parked while the child holds the lock; its wait must release it to
    // us then, not when our (long) timeout runs out.
    within(Duration::from_secs(10), move || {
        let g = cond.acquire_timeout(Duration::from_secs(60)).unwrap();
        cond.notify(1).unwrap();
        drop(g);
    });
    assert!(done(child).unwrap(), "the child was notified");
}

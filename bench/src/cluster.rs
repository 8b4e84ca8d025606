//! The cluster pool on a real `redis-server` (its URL in
//! `CORRAL_BENCH_REDIS`, started by `bench/run.sh`): two nodes of one
//! process each (this binary, started with `CORRAL_NODE`), against the raw
//! Redis stream farm of `research/distributed.md` on the same server (two
//! worker processes reading 10 entries at a time, replying and acking in
//! one `MULTI`) — the floor any Redis Streams task queue stands on.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral::Pool;
use redis::Commands;

use crate::{emit, per_call};

const RAW_TASKS: &str = "rawfarm:tasks";
const RAW_GROUP: &str = "rawfarm";
const RAW_REPLY: &str = "rawfarm:reply";

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn connect(url: &str) -> redis::Connection {
    let c = redis::Client::open(url)
        .expect("CORRAL_BENCH_REDIS is a redis:// URL")
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("redis-server at CORRAL_BENCH_REDIS");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c
}

/// A raw farm worker (`corral-bench raw-worker URL NAME`): reads up to 10
/// entries, squares them, pushes the replies and acks in one `MULTI`.
pub(crate) fn raw_worker(url: &str, name: &str) {
    let mut c = connect(url);
    loop {
        let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(RAW_GROUP)
            .arg(name)
            .arg("COUNT")
            .arg(10)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(RAW_TASKS)
            .arg(">")
            .query(&mut c)
            .expect("XREADGROUP");
        let Some(reply) = reply else { continue };
        let entries: Vec<_> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut ids = Vec::new();
        for e in entries {
            let x: u64 = e.get("x").unwrap_or(0);
            pipe.rpush(RAW_REPLY, square(x)).ignore();
            ids.push(e.id);
        }
        pipe.xack(RAW_TASKS, RAW_GROUP, &ids).ignore();
        pipe.xdel(RAW_TASKS, &ids).ignore();
        let () = pipe.query(&mut c).expect("reply");
    }
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn raw_floor(url: &str, n: usize) {
    let mut c = connect(url);
    let _: () = redis::cmd("DEL")
        .arg(RAW_TASKS)
        .arg(RAW_REPLY)
        .query(&mut c)
        .expect("DEL");
    let _: () = c
        .xgroup_create_mkstream(RAW_TASKS, RAW_GROUP, "0")
        .expect("XGROUP");
    let exe = std::env::current_exe().expect("this binary");
    let _workers = Killed(
        (0..2)
            .map(|i| {
                Command::new(&exe)
                    .args(["raw-worker", url, &format!("w{i}")])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("raw worker")
            })
            .collect(),
    );
    // Round trip: one task at a time.
    let one = |c: &mut redis::Connection, x: u64| {
        let _: String = c.xadd(RAW_TASKS, "*", &[("x", x)]).expect("XADD");
        let _: (String, u64) = c.blpop(RAW_REPLY, 5.0).expect("BLPOP");
    };
    let mut x = 0;
    let rtt = per_call(200, n.min(3_000), || {
        x += 1;
        one(&mut c, x);
    });
    emit("raw redis stream farm round trip", rtt, "us");
    // Throughput: every task added (pipelined, 1000 a round trip), then
    // every reply collected.
    let t = Instant::now();
    for chunk in (0..n as u64).collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for &x in chunk {
            pipe.xadd(RAW_TASKS, "*", &[("x", x)]).ignore();
        }
        let () = pipe.query(&mut c).expect("XADD");
    }
    let mut got = 0;
    while got < n {
        let _: (String, u64) = c.blpop(RAW_REPLY, 5.0).expect("BLPOP");
        let more: Vec<u64> = c
            .lpop(RAW_REPLY, std::num::NonZeroUsize::new(10_000))
            .unwrap_or_default();
        got += 1 + more.len();
    }
    emit(
        "raw redis stream farm trivial tasks, 2 workers",
        n as f64 / t.elapsed().as_secs_f64(),
        "tasks/s",
    );
}

fn corral_cluster(url: &str, n: usize) {
    let exe = std::env::current_exe().expect("this binary");
    let _nodes = Killed(
        (0..2)
            .map(|_| {
                Command::new(&exe)
                    .env("CORRAL_NODE", url)
                    .env("CORRAL_NODE_PROCESSES", "1")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("node")
            })
            .collect(),
    );
    let pool = Pool::cluster(url).build().expect("cluster pool");
    let started = Instant::now();
    while pool.processes() < 2 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut x = 0;
    let rtt = per_call(200, n.min(3_000), || {
        x += 1;
        pool.apply(square, x).expect("task");
    });
    emit("corral cluster round trip", rtt, "us");
    let t = Instant::now();
    let tasks: Vec<_> = (0..n as u64).map(|x| pool.submit(square, x)).collect();
    for task in tasks {
        task.join().expect("task");
    }
    emit(
        "corral cluster submit-each trivial tasks, 2 nodes",
        n as f64 / t.elapsed().as_secs_f64(),
        "tasks/s",
    );
    let items = 10 * n;
    let t = Instant::now();
    pool.map(square, 0..items as u64).expect("map");
    emit(
        "corral cluster map trivial items, 2 nodes",
        items as f64 / t.elapsed().as_secs_f64(),
        "items/s",
    );
    pool.join();
}

pub(crate) fn run(n: impl Fn(usize) -> usize) {
    let Ok(url) = std::env::var("CORRAL_BENCH_REDIS") else {
        eprintln!(
            "corral-bench cluster: set CORRAL_BENCH_REDIS to a redis:// URL (bench/run.sh does)"
        );
        std::process::exit(2);
    };
    raw_floor(&url, n(50_000));
    corral_cluster(&url, n(50_000));
}

//! corral's side of the benchmarks, and the raw syscall floor, measured in the
//! same run. Prints one JSON object per line: `{"name", "value", "unit"}`.
//!
//! `corral-bench <spawn|floor|pipe|pool|queue|connection|manager|all|cluster|runner>` (`cluster` needs `CORRAL_BENCH_REDIS`; `runner` the `corral` command built beside it); `bench/run.sh` drives everything.
#![expect(
    unsafe_code,
    reason = "the raw syscall floor calls fork, pipe and waitpid directly"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use corral::{Connection, Process, StartMethod};

mod cluster;
mod connection;
mod manager;
mod pool;
mod queue;
mod runner;

const RUNS: usize = 7;

fn emit(name: &str, value: f64, unit: &str) {
    println!("{{\"name\": \"{name}\", \"value\": {value:.4}, \"unit\": \"{unit}\"}}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median µs of `f` over `iterations` calls after `warmup` calls.
fn per_call(warmup: usize, iterations: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let samples = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            f();
            micros(t.elapsed())
        })
        .collect();
    median(samples)
}

fn noop(_: ()) {}

/// Starts (and raw forks) measured in turn, this many of each at a time.
const SPAWN_BLOCK: usize = 50;

/// Median µs of `spawn + join` of a no-op child, and of raw `fork` +
/// `waitpid` measured in blocks alternating with corral's (so that both see
/// the same machine: this VM is shared and noisy). The raw forks run in a
/// helper process (`corral-bench fork-floor`, started by `posix_spawn`): a
/// fork write-protects every page of the forking process, and the ~30 page
/// faults that follow would land on the next corral start measured here
/// (2026-12-01: 29 faults per start with raw forks in this process, 0.1
/// without). `idle`: wait that long before each start and each raw fork.
fn spawn_join(method: StartMethod, iterations: usize, idle: Duration) -> (f64, f64) {
    let builder = Process::builder().start_method(method);
    let start_join = || {
        builder
            .clone()
            .spawn(noop, ())
            .expect("spawn")
            .join()
            .expect("join")
    };
    for _ in 0..10 {
        start_join();
    }
    let mut corral = Vec::with_capacity(iterations);
    let mut raw = Vec::with_capacity(iterations);
    for _ in 0..iterations.div_ceil(SPAWN_BLOCK) {
        for _ in 0..SPAWN_BLOCK {
            std::thread::sleep(idle);
            let t = Instant::now();
            start_join();
            corral.push(micros(t.elapsed()));
        }
        raw.extend(raw_fork_block(SPAWN_BLOCK, idle));
    }
    (median(corral), median(raw))
}

/// µs of each of `n` raw forks (`fork` + `_exit` + `waitpid`, after `idle`
/// each) in a helper process.
fn raw_fork_block(n: usize, idle: Duration) -> Vec<f64> {
    let out = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .args(["fork-floor", &n.to_string(), &idle.as_micros().to_string()])
        .output()
        .expect("run the fork-floor helper");
    assert!(out.status.success(), "fork-floor: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().expect("µs"))
        .collect()
}

/// The helper's side of [`raw_fork_block`]: `fork-floor N IDLE_US` prints
/// the µs of each of N raw forks.
fn fork_floor(args: &[String]) {
    let n: usize = args[0].parse().expect("N");
    let idle = Duration::from_micros(args[1].parse().expect("IDLE_US"));
    let mut out = String::new();
    for _ in 0..n {
        std::thread::sleep(idle);
        out.push_str(&format!("{}\n", raw_fork_once()));
    }
    print!("{out}");
}

/// µs of one raw `fork` + `_exit` + `waitpid`.
fn raw_fork_once() -> f64 {
    let t = Instant::now();
    // SAFETY: the child calls only `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: `_exit` is async-signal-safe.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: waiting for our own child; a null status is allowed.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    micros(t.elapsed())
}

fn raw_pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    (fds[0], fds[1])
}

fn read_full(fd: i32, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: writing into the unfilled tail of `buf`.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n <= 0 {
            return false;
        }
        got += n as usize;
    }
    true
}

fn write_full(fd: i32, buf: &[u8]) {
    let mut sent = 0;
    while sent < buf.len() {
        // SAFETY: reading from the unsent tail of `buf`.
        let n = unsafe { libc::write(fd, buf[sent..].as_ptr().cast(), buf.len() - sent) };
        assert!(n > 0, "write failed");
        sent += n as usize;
    }
}

/// A forked child connected by two raw pipes; dropping it closes our ends and
/// reaps the child.
struct RawPeer {
    pid: i32,
    to_child: i32,
    from_child: i32,
}

impl RawPeer {
    /// Forks a child running `serve(read_end, write_end)`. `pipe_size` sets
    /// the capacity of the pipe towards the child.
    fn start(pipe_size: Option<i32>, serve: fn(i32, i32)) -> RawPeer {
        let (to_child_r, to_child_w) = raw_pipe();
        let (from_child_r, from_child_w) = raw_pipe();
        if let Some(size) = pipe_size {
            // SAFETY: F_SETPIPE_SZ on our own pipe.
            unsafe { libc::fcntl(to_child_w, libc::F_SETPIPE_SZ, size) };
        }
        // SAFETY: the child only closes, reads, writes and `_exit`s.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: closing the ends this side does not use, so end-of-file works.
            unsafe {
                libc::close(to_child_w);
                libc::close(from_child_r);
            }
            serve(to_child_r, from_child_w);
            // SAFETY: `_exit` is async-signal-safe.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: closing the ends this side does not use.
        unsafe {
            libc::close(to_child_r);
            libc::close(from_child_w);
        }
        RawPeer {
            pid,
            to_child: to_child_w,
            from_child: from_child_r,
        }
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        // SAFETY: closing our own descriptors and reaping our own child.
        unsafe {
            libc::close(self.to_child);
            libc::close(self.from_child);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Median µs per 8-byte round trip over two raw pipes to a forked child.
fn raw_pipe_rtt(round_trips: usize) -> f64 {
    let peer = RawPeer::start(None, |input, output| {
        let mut buf = [0u8; 8];
        while read_full(input, &mut buf) {
            write_full(output, &buf);
        }
    });
    let mut buf = [0u8; 8];
    let samples = (0..RUNS + 1)
        .map(|_| {
            let t = Instant::now();
            for i in 0..round_trips as u64 {
                write_full(peer.to_child, &i.to_le_bytes());
                read_full(peer.from_child, &mut buf);
            }
            micros(t.elapsed()) / round_trips as f64
        })
        .skip(1)
        .collect();
    median(samples)
}

/// GB/s of 1 MiB messages through a raw pipe to a forked child that reads
/// them into a private buffer. `pipe_size`: the pipe's capacity, if set.
fn raw_pipe_throughput(messages: usize, pipe_size: Option<i32>) -> f64 {
    const MIB: usize = 1 << 20;
    let peer = RawPeer::start(pipe_size, |input, output| {
        let mut buf = vec![0u8; MIB];
        while read_full(input, &mut buf) {
            black_box(&buf);
            write_full(output, &[1]);
        }
    });
    let data = vec![7u8; MIB];
    let mut ack = [0u8; 1];
    let samples = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..messages {
                write_full(peer.to_child, &data);
            }
            for _ in 0..messages {
                read_full(peer.from_child, &mut ack);
            }
            (messages * MIB) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    median(samples)
}

/// GB/s of a single-core 1 MiB memcpy (L2/L3-resident).
fn memcpy_rate() -> f64 {
    let src = vec![3u8; 1 << 20];
    let mut dst = vec![0u8; 1 << 20];
    let samples = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..2000 {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            }
            (2000usize << 20) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    median(samples)
}

fn echo(conn: Connection) {
    let mut buf = [0u8; 64];
    while let Ok(n) = conn.recv_bytes_into(&mut buf) {
        conn.send_bytes(&buf[..n]).expect("echo");
    }
}

/// Median µs per 8-byte `send_bytes`/`recv_bytes` round trip.
fn pipe_rtt(round_trips: usize) -> f64 {
    let (ours, theirs) = corral::Pipe::duplex().expect("pipe");
    let child = corral::spawn(echo, theirs).expect("spawn");
    let mut buf = [0u8; 64];
    let samples = (0..RUNS + 1)
        .map(|_| {
            let t = Instant::now();
            for i in 0..round_trips as u64 {
                ours.send_bytes(&i.to_le_bytes()).expect("send");
                ours.recv_bytes_into(&mut buf).expect("recv");
            }
            micros(t.elapsed()) / round_trips as f64
        })
        .skip(1)
        .collect();
    drop(ours);
    child.join().expect("echo child");
    median(samples)
}

fn sink(conn: Connection) {
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(n) = conn.recv_bytes_into(&mut buf) {
        black_box(&buf[..n]);
        conn.send_bytes(&[1]).expect("ack");
    }
}

fn sink_alloc(conn: Connection) {
    while let Ok(data) = conn.recv_bytes() {
        black_box(&data);
        conn.send_bytes(&[1]).expect("ack");
    }
}

/// GB/s of 1 MiB `send_bytes` messages to a child that receives each into a
/// buffer (`recv_bytes_into`) or a fresh vector (`recv_bytes`).
fn pipe_throughput(messages: usize, allocate: bool) -> f64 {
    let (ours, theirs) = corral::Pipe::duplex().expect("pipe");
    let child = if allocate {
        corral::spawn(sink_alloc, theirs)
    } else {
        corral::spawn(sink, theirs)
    }
    .expect("spawn");
    let data = vec![7u8; 1 << 20];
    let mut ack = [0u8; 8];
    let samples = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..messages {
                ours.send_bytes(&data).expect("send");
            }
            for _ in 0..messages {
                ours.recv_bytes_into(&mut ack).expect("ack");
            }
            (messages << 20) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    drop(ours);
    child.join().expect("sink child");
    median(samples)
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("fork-floor") {
        // Before `init`: the helper forks nothing but its raw children.
        let args: Vec<String> = std::env::args().skip(2).collect();
        return fork_floor(&args);
    }
    corral::init();
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if what == "raw-worker" {
        let args: Vec<String> = std::env::args().skip(2).collect();
        cluster::raw_worker(&args[0], &args[1]);
        return;
    }
    let quick = std::env::var_os("CORRAL_BENCH_QUICK").is_some();
    let n = |full: usize| if quick { full / 10 } else { full };
    if what == "runner" {
        runner::run(quick);
        return;
    }
    if what == "floor" || what == "all" {
        emit("raw pipe 8B round trip", raw_pipe_rtt(n(20_000)), "us");
        emit(
            "raw pipe 1MiB (64 KiB pipe)",
            raw_pipe_throughput(n(256), None),
            "GB/s",
        );
        emit(
            "raw pipe 1MiB (1 MiB pipe)",
            raw_pipe_throughput(n(256), Some(1 << 20)),
            "GB/s",
        );
        emit("memcpy 1MiB", memcpy_rate(), "GB/s");
    }
    if what == "spawn" || what == "all" {
        for (method, label, iterations) in [
            (StartMethod::ForkServer, "forkserver", n(500)),
            (StartMethod::Fork, "fork", n(500)),
            (StartMethod::Spawn, "spawn", n(200)),
        ] {
            let (corral, raw) = spawn_join(method, iterations, Duration::ZERO);
            emit(&format!("corral spawn+join {label}"), corral, "us");
            emit(
                &format!("raw fork+waitpid (alternating with {label})"),
                raw,
                "us",
            );
        }
        let every = Duration::from_millis(2);
        let (corral, raw) = spawn_join(StartMethod::ForkServer, n(300), every);
        emit("corral spawn+join forkserver every 2ms", corral, "us");
        emit("raw fork+waitpid every 2ms", raw, "us");
    }
    if what == "pipe" || what == "all" {
        emit("corral pipe 8B round trip", pipe_rtt(n(20_000)), "us");
        emit(
            "corral pipe 1MiB send_bytes (recv_bytes_into)",
            pipe_throughput(n(256), false),
            "GB/s",
        );
        emit(
            "corral pipe 1MiB send_bytes (recv_bytes)",
            pipe_throughput(n(256), true),
            "GB/s",
        );
    }
    if what == "queue" || what == "all" {
        queue::run();
    }
    if what == "pool" || what == "all" {
        pool::run(n);
    }
    if what == "connection" || what == "all" {
        connection::run(n);
    }
    if what == "manager" || what == "all" {
        manager::run(n);
    }
    if what == "cluster" {
        cluster::run(n);
    }
}

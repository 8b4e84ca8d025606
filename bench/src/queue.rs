//! Queue, lock and shared-value figures (issue #4), with the floor measured
//! in the same process: a raw futex lock (compare-and-swap + swap) and
//! `std::sync::Mutex`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use corral::{Event, Lock, Queue, SharedMemory, Value};
use serde_bytes::ByteBuf;

use crate::{RUNS, emit, median, micros};

const SMALL: u64 = 2_000_000;
const BIG_MESSAGES: usize = 2_000;
const MIB: usize = 1 << 20;

fn produce_small((q, go, n): (Queue<u64>, Event, u64)) {
    go.wait();
    for i in 0..n {
        q.put(i).expect("put");
    }
}

fn consume_small((q, go, n): (Queue<u64>, Event, u64)) -> u64 {
    go.wait();
    let mut sum = 0u64;
    for _ in 0..n {
        sum = sum.wrapping_add(q.get().expect("get"));
    }
    sum
}

/// Small messages per second, `producers` → `consumers` processes (the
/// parent consumes when `consumers` is 0).
fn small_rate(producers: u64, consumers: u64) -> f64 {
    let samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let q: Queue<u64> = Queue::bounded(100_000).expect("queue");
            let go = Event::new().expect("event");
            let per = SMALL / producers;
            let ps: Vec<_> = (0..producers)
                .map(|_| corral::spawn(produce_small, (q.clone(), go.clone(), per)).expect("spawn"))
                .collect();
            let cs: Vec<_> = (0..consumers)
                .map(|_| {
                    corral::spawn(
                        consume_small,
                        (q.clone(), go.clone(), per * producers / consumers),
                    )
                    .expect("spawn")
                })
                .collect();
            // Let every child reach its start line.
            std::thread::sleep(Duration::from_millis(50));
            let t = Instant::now();
            go.set();
            if consumers == 0 {
                for _ in 0..per * producers {
                    black_box(q.get().expect("get"));
                }
            }
            for c in cs {
                c.join().expect("consumer");
            }
            let elapsed = t.elapsed();
            for p in ps {
                p.join().expect("producer");
            }
            (per * producers) as f64 / elapsed.as_secs_f64()
        })
        .collect();
    median(samples)
}

fn produce_big((q, go, n): (Queue<ByteBuf>, Event, usize)) {
    let message = ByteBuf::from(vec![7u8; MIB]);
    go.wait();
    for _ in 0..n {
        q.put(message.clone()).expect("put");
    }
}

/// GB/s of 1 MiB messages from a child to the parent.
fn big_rate() -> f64 {
    let samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let q: Queue<ByteBuf> = Queue::bounded(64).expect("queue");
            let go = Event::new().expect("event");
            let child =
                corral::spawn(produce_big, (q.clone(), go.clone(), BIG_MESSAGES)).expect("spawn");
            std::thread::sleep(Duration::from_millis(50));
            let t = Instant::now();
            go.set();
            for _ in 0..BIG_MESSAGES {
                black_box(q.get().expect("get"));
            }
            let gbs = (BIG_MESSAGES * MIB) as f64 / t.elapsed().as_secs_f64() / 1e9;
            child.join().expect("producer");
            gbs
        })
        .collect();
    median(samples)
}

fn echo((input, output): (Queue<u64>, Queue<u64>)) {
    while let Ok(v) = input.get() {
        if v == u64::MAX {
            return;
        }
        output.put(v).expect("put");
    }
}

/// µs of a put to a child and a get of its answer.
fn round_trip(trips: usize) -> f64 {
    let input = Queue::bounded(16).expect("queue");
    let output = Queue::bounded(16).expect("queue");
    let child = corral::spawn(echo, (input.clone(), output.clone())).expect("spawn");
    for i in 0..1_000 {
        input.put(i).expect("put");
        output.get().expect("get");
    }
    let samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for i in 0..trips as u64 {
                input.put(i).expect("put");
                black_box(output.get().expect("get"));
            }
            micros(t.elapsed()) / trips as f64
        })
        .collect();
    input.put(u64::MAX).expect("put");
    child.join().expect("echo");
    median(samples)
}

/// ns per uncontended acquire + release.
fn pair_ns(iterations: u64, mut f: impl FnMut()) -> f64 {
    f();
    let samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iterations {
                f();
            }
            t.elapsed().as_nanos() as f64 / iterations as f64
        })
        .collect();
    median(samples)
}

fn hammer((lock, v, go, n): (Lock, Value<u64>, Event, u64)) {
    go.wait();
    for _ in 0..n {
        let _g = lock.acquire().expect("lock");
        black_box(&v);
    }
}

fn increment((v, go, n): (Value<u64>, Event, u64)) {
    go.wait();
    for _ in 0..n {
        *v.lock() += 1;
    }
}

/// Operations per second of two processes running `body` `n` times each.
fn two_processes<A: corral::Data + Clone>(n: u64, arg: impl Fn(Event) -> A, body: fn(A)) -> f64 {
    let samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let go = Event::new().expect("event");
            let kids: Vec<_> = (0..2)
                .map(|_| corral::spawn(body, arg(go.clone())).expect("spawn"))
                .collect();
            std::thread::sleep(Duration::from_millis(50));
            let t = Instant::now();
            go.set();
            for k in kids {
                k.join().expect("child");
            }
            (2 * n) as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    median(samples)
}

/// GB/s of 1 MiB copies into a shared memory segment.
fn shm_write_rate() -> f64 {
    let shm = SharedMemory::new(MIB).expect("shm");
    let src = vec![3u8; MIB];
    let samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..500 {
                shm.write(0, black_box(&src));
            }
            (500 * MIB) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    median(samples)
}

/// 8-byte messages per second through a raw pipe from a forked child, one
/// `read` per message (the floor a pipe-based queue cannot beat).
fn raw_pipe_small_rate(messages: u64) -> f64 {
    let samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for the two descriptors.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            let t = Instant::now();
            // SAFETY: the child only writes to the pipe and calls `_exit`.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                for i in 0..messages {
                    let bytes = i.to_le_bytes();
                    // SAFETY: writing 8 bytes from a live stack buffer.
                    unsafe { libc::write(fds[1], bytes.as_ptr().cast(), 8) };
                }
                // SAFETY: `_exit` is async-signal-safe.
                unsafe { libc::_exit(0) };
            }
            // SAFETY: closing our copy of the write end.
            unsafe { libc::close(fds[1]) };
            let mut buf = [0u8; 8];
            for _ in 0..messages {
                // SAFETY: reading 8 bytes into a live stack buffer.
                unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), 8) };
            }
            let rate = messages as f64 / t.elapsed().as_secs_f64();
            // SAFETY: closing our read end; reaping our own child.
            unsafe {
                libc::close(fds[0]);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            rate
        })
        .collect();
    median(samples)
}

/// ns per acquire + release of a bare glibc robust, process-shared mutex:
/// what corral's `Lock` is built on, without corral around it.
fn glibc_robust_pair_ns(iterations: u64) -> f64 {
    // SAFETY: a fresh shared anonymous page holds the mutex for the whole
    // function; the attribute is initialised before use and destroyed after.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        let m = page.cast::<libc::pthread_mutex_t>();
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        libc::pthread_mutexattr_init(attr.as_mut_ptr());
        libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_mutexattr_setrobust(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST);
        libc::pthread_mutexattr_settype(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ERRORCHECK);
        libc::pthread_mutex_init(m, attr.as_ptr());
        libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
        let ns = pair_ns(iterations, || {
            libc::pthread_mutex_lock(black_box(m));
            libc::pthread_mutex_unlock(black_box(m));
        });
        libc::munmap(page, 4096);
        ns
    }
}

pub(crate) fn run() {
    if std::env::var_os("CORRAL_BENCH_ONLY_SMALL").is_some() {
        emit("corral queue 1->1 small", small_rate(1, 0), "items/s");
        emit("corral queue 4->4 small", small_rate(4, 4), "items/s");
        return;
    }
    emit("corral queue 1->1 small", small_rate(1, 0), "items/s");
    emit("corral queue 4->4 small", small_rate(4, 4), "items/s");
    emit("corral queue 1MiB", big_rate(), "GB/s");
    emit("corral queue round trip", round_trip(20_000), "us");

    let lock = Lock::new().expect("lock");
    emit(
        "corral lock uncontended",
        pair_ns(20_000_000, || {
            drop(black_box(lock.acquire().expect("lock")))
        }),
        "ns",
    );
    emit(
        "glibc robust mutex uncontended",
        glibc_robust_pair_ns(20_000_000),
        "ns",
    );
    let mutex = std::sync::Mutex::new(0u64);
    emit(
        "std mutex uncontended",
        pair_ns(20_000_000, || drop(black_box(mutex.lock().expect("mutex")))),
        "ns",
    );
    let word = AtomicU32::new(0);
    emit(
        "raw futex uncontended",
        pair_ns(20_000_000, || {
            let _ = word.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed);
            black_box(&word);
            word.swap(0, Ordering::Release);
        }),
        "ns",
    );
    emit(
        "raw pipe 8B messages",
        raw_pipe_small_rate(1_000_000),
        "items/s",
    );
    const CONTENDED: u64 = 1_000_000;
    let lock = Lock::new().expect("lock");
    let v = Value::new(0u64).expect("value");
    emit(
        "corral lock contended 2 procs",
        two_processes(
            CONTENDED,
            |go| (lock.clone(), v.clone(), go, CONTENDED),
            hammer,
        ),
        "items/s",
    );
    let v = Value::new(0u64).expect("value");
    emit(
        "corral value locked increments 2 procs",
        two_processes(CONTENDED, |go| (v.clone(), go, CONTENDED), increment),
        "items/s",
    );
    emit("corral shared memory 1MiB write", shm_write_rate(), "GB/s");
}

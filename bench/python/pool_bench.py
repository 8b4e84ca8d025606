"""CPython anchors for corral's pool benchmarks: multiprocessing.Pool,
concurrent.futures.ProcessPoolExecutor, pebble and loky, 2 workers each.

Prints one JSON object per line: {"name", "value", "unit"}, like the Rust
harness. Run by bench/run.sh in the same session as the Rust figures.
"""
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

from common import PY, QUICK, emit, n  # noqa: E402,F401

RUNS = 3




def square(x):
    return x * x


def echo(x):
    return x


def hang(_):
    time.sleep(3600)


def nap_1ms(_):
    """Sleeps 1 ms; returns when it started and ended (CLOCK_MONOTONIC, ns)."""
    started = time.monotonic_ns()
    time.sleep(0.001)
    return started, time.monotonic_ns()


def end_to_return(call, count):
    """Median µs from the end of a 1 ms task to its caller's return, and
    median µs of its whole overhead (that, plus from the call to its start)."""
    for x in range(20):
        call(x)
    late, overhead = [], []
    for x in range(count):
        called = time.monotonic_ns()
        started, ended = call(x)
        returned = time.monotonic_ns()
        late.append((returned - ended) / 1e3)
        overhead.append((returned - ended + started - called) / 1e3)
    return statistics.median(late), statistics.median(overhead)


def emit_late(name, call):
    """Emits both figures of `end_to_return` for a 1 ms task."""
    late, overhead = end_to_return(call, n(300))
    emit(f"{name} 1ms task end to return", late, "us")
    emit(f"{name} 1ms task overhead", overhead, "us")


def rate(items, f):
    f()
    samples = []
    for _ in range(RUNS):
        t = time.perf_counter()
        f()
        samples.append(items / (time.perf_counter() - t))
    return statistics.median(samples)


def rtt(call, count):
    for x in range(100):
        call(x)
    samples = []
    for x in range(count):
        t = time.perf_counter()
        call(x)
        samples.append((time.perf_counter() - t) * 1e6)
    return statistics.median(samples)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pids):
    time.sleep(0.2)
    pids = [os.getpid(), *pids]
    before = sum(cpu_seconds(p) for p in pids)
    t = time.perf_counter()
    time.sleep(2)
    after = sum(cpu_seconds(p) for p in pids)
    return 100 * (after - before) / (time.perf_counter() - t)


def stdlib_pool():
    items = n(100_000)
    with mp.Pool(2) as pool:
        pool.map(square, range(1000))
        emit("Pool apply_async round trip", rtt(lambda x: pool.apply_async(echo, (x,)).get(), n(2000)), "us")
        emit_late("Pool apply_async", lambda x: pool.apply_async(nap_1ms, (x,)).get())

        def submit_each():
            results = [pool.apply_async(echo, (x,)) for x in range(n(20_000))]
            for r in results:
                r.get()

        emit("Pool apply_async-each throughput", rate(n(20_000), submit_each), "items/s")
        emit("Pool map 100k chunksize 1", rate(items, lambda: pool.map(square, range(items), chunksize=1)), "items/s")
        emit("Pool map 100k default chunksize", rate(items, lambda: pool.map(square, range(items))), "items/s")
        emit("Pool imap 100k chunksize 1", rate(items, lambda: sum(pool.imap(square, range(items)))), "items/s")
        emit("Pool imap_unordered 100k chunksize 1",
             rate(items, lambda: sum(pool.imap_unordered(square, range(items)))), "items/s")
        emit("Pool imap 100k chunksize 1000",
             rate(items, lambda: sum(pool.imap(square, range(items), chunksize=1000))), "items/s")
        emit("Pool idle CPU", idle_cpu([p.pid for p in pool._pool]), "%")
    for method in ["fork", "forkserver"]:
        ctx = mp.get_context(method)
        samples = []
        for _ in range(n(20) if method == "fork" else n(10)):
            t = time.perf_counter()
            pool = ctx.Pool(2)
            pool.map(echo, [1, 2], chunksize=1)
            samples.append((time.perf_counter() - t) * 1e6)
            pool.terminate()
            pool.join()
        emit(f"Pool start-up 2 workers {method}", statistics.median(samples), "us")


def executor(name, make):
    ex = make()
    list(ex.map(square, range(1000)))
    emit(f"{name} submit round trip", rtt(lambda x: ex.submit(echo, x).result(), n(1000)), "us")
    emit_late(name, lambda x: ex.submit(nap_1ms, x).result())

    def submit_each():
        futures = [ex.submit(echo, x) for x in range(n(20_000))]
        for f in futures:
            f.result()

    emit(f"{name} submit-each throughput", rate(n(20_000), submit_each), "items/s")
    items = n(100_000)
    emit(f"{name} map 100k chunksize 1000",
         rate(items, lambda: list(ex.map(square, range(items), chunksize=1000))), "items/s")
    ex.shutdown()


def pebble_pool():
    import pebble

    items = n(20_000)
    with pebble.ProcessPool(max_workers=2) as pool:
        pool.schedule(echo, args=(1,)).result()
        emit("pebble schedule round trip", rtt(lambda x: pool.schedule(echo, args=(x,)).result(), n(1000)),
             "us")
        emit_late("pebble", lambda x: pool.schedule(nap_1ms, args=(x,)).result())

        def schedule_each():
            futures = [pool.schedule(echo, args=(x,)) for x in range(items)]
            for f in futures:
                f.result()

        emit("pebble schedule-each throughput", rate(items, schedule_each), "items/s")
        future = pebble.ProcessPool(max_workers=1)
        future.schedule(echo, args=(1,)).result()
        start = time.perf_counter()
        timed = future.schedule(hang, args=(0,), timeout=0.1)
        try:
            timed.result()
        except Exception:
            pass
        emit("pebble timeout overshoot", (time.perf_counter() - start - 0.1) * 1e3, "ms")
        future.stop()
        future.join()


def loky_pool():
    import loky

    ex = loky.get_reusable_executor(max_workers=2)
    list(ex.map(square, range(1000)))
    emit("loky submit round trip", rtt(lambda x: ex.submit(echo, x).result(), n(1000)), "us")
    emit_late("loky", lambda x: ex.submit(nap_1ms, x).result())

    def submit_each():
        futures = [ex.submit(echo, x) for x in range(n(20_000))]
        for f in futures:
            f.result()

    emit("loky submit-each throughput", rate(n(20_000), submit_each), "items/s")
    ex.shutdown(wait=True)


def main():
    mp.set_start_method("fork")
    stdlib_pool()
    executor("ProcessPoolExecutor", lambda: cf.ProcessPoolExecutor(2))
    for extra in (pebble_pool, loky_pool):
        try:
            extra()
        except ImportError as e:
            print(f"skipped {extra.__name__}: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()

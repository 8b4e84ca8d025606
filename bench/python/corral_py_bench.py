"""corral for Python (crates/corral-py) beside the anchors pool_bench.py
measures in the same run: the same tasks, the same method (medians of
per-call times after a warm-up; throughputs as medians of whole runs), 2
workers.

Prints one JSON object per line, like the other anchor scripts."""
import statistics
import time

import corral  # first: the fork server is a copy of this interpreter

from common import emit, n
from pool_bench import echo, hang, idle_cpu, rate, rtt, square


def pool_figures():
    items = n(100_000)
    with corral.Pool(2) as pool:
        pool.map(square, range(1000))
        emit("corral.Pool apply round trip", rtt(lambda x: pool.apply(echo, (x,)), n(2000)), "us")
        emit("corral.Pool apply_async round trip",
             rtt(lambda x: pool.apply_async(echo, (x,)).get(), n(2000)), "us")

        def submit_each():
            results = [pool.apply_async(echo, (x,)) for x in range(n(20_000))]
            for r in results:
                r.get()

        emit("corral.Pool apply_async-each throughput", rate(n(20_000), submit_each), "items/s")
        emit("corral.Pool map 100k default chunksize",
             rate(items, lambda: pool.map(square, range(items))), "items/s")
        emit("corral.Pool map 100k chunksize 1",
             rate(items, lambda: pool.map(square, range(items), chunksize=1)), "items/s")
        emit("corral.Pool imap 100k chunksize 1",
             rate(items, lambda: sum(pool.imap(square, range(items), chunksize=1))), "items/s")
        emit("corral.Pool imap 100k chunksize 1000",
             rate(items, lambda: sum(pool.imap(square, range(items), chunksize=1000))), "items/s")
        emit("corral.Pool idle CPU", idle_cpu(pool.worker_pids()), "%")
    with corral.Pool(1, task_timeout=0.1) as pool:
        pool.apply(echo, (1,))
        late = []
        for _ in range(n(10)):
            start = time.perf_counter()
            try:
                pool.apply(hang, (0,))
            except corral.TaskTimedOut:
                pass
            late.append((time.perf_counter() - start - 0.1) * 1e3)
        emit("corral.Pool timeout overshoot", statistics.median(late), "ms")
    samples = []
    for _ in range(n(20)):
        t = time.perf_counter()
        pool = corral.Pool(2)
        pool.map(echo, [1, 2], chunksize=1)
        samples.append((time.perf_counter() - t) * 1e6)
        pool.terminate()
        pool.join()
    emit("corral.Pool start-up 2 workers", statistics.median(samples), "us")


def executor_figures():
    with corral.ProcessPoolExecutor(2) as ex:
        list(ex.map(square, range(1000)))
        emit("corral.ProcessPoolExecutor submit round trip",
             rtt(lambda x: ex.submit(echo, x).result(), n(1000)), "us")

        def submit_each():
            futures = [ex.submit(echo, x) for x in range(n(20_000))]
            for f in futures:
                f.result()

        emit("corral.ProcessPoolExecutor submit-each throughput", rate(n(20_000), submit_each),
             "items/s")


if __name__ == "__main__":
    pool_figures()
    executor_figures()

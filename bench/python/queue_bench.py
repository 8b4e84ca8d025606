"""CPython anchors for corral's queue, lock and shared-value benchmarks:
multiprocessing.Queue, SimpleQueue, Pipe, Lock, Value and shared_memory.

Prints one JSON object per line: {"name", "value", "unit"}, like the Rust
harness. Run by bench/run.sh in the same session as the Rust figures.
"""
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from multiprocessing import shared_memory

from common import PY, QUICK, emit, n  # noqa: E402,F401

RUNS = 3
MIB = 1 << 20




def produce(q, go, count):
    go.wait()
    put = q.put
    for i in range(count):
        put(i)


def produce_pipe(conn, go, count):
    go.wait()
    send = conn.send
    for i in range(count):
        send(i)


def consume(q, go, count):
    go.wait()
    get = q.get
    for _ in range(count):
        get()


def small_rate(make, producers, consumers, total):
    samples = []
    for _ in range(RUNS):
        q = make()
        go = mp.Event()
        per = total // producers
        ps = [mp.Process(target=produce, args=(q, go, per)) for _ in range(producers)]
        cs = [mp.Process(target=consume, args=(q, go, per * producers // consumers)) for _ in range(consumers)]
        for p in ps + cs:
            p.start()
        time.sleep(0.1)
        t = time.perf_counter()
        go.set()
        if consumers == 0:
            get = q.get
            for _ in range(per * producers):
                get()
        for c in cs:
            c.join()
        elapsed = time.perf_counter() - t
        for p in ps:
            p.join()
        samples.append(per * producers / elapsed)
    return statistics.median(samples)


def pipe_small_rate(total):
    samples = []
    for _ in range(RUNS):
        r, w = mp.Pipe(duplex=False)
        go = mp.Event()
        p = mp.Process(target=produce_pipe, args=(w, go, total))
        p.start()
        time.sleep(0.1)
        t = time.perf_counter()
        go.set()
        recv = r.recv
        for _ in range(total):
            recv()
        samples.append(total / (time.perf_counter() - t))
        p.join()
    return statistics.median(samples)


def produce_big(q, go, count):
    message = b"\x07" * MIB
    go.wait()
    for _ in range(count):
        q.put(message)


def produce_big_pipe(conn, go, count):
    message = b"\x07" * MIB
    go.wait()
    for _ in range(count):
        conn.send_bytes(message)


def big_rate(count, pipe=False):
    samples = []
    for _ in range(RUNS):
        go = mp.Event()
        if pipe:
            r, w = mp.Pipe(duplex=False)
            p = mp.Process(target=produce_big_pipe, args=(w, go, count))
            get = r.recv_bytes
        else:
            q = mp.Queue(64)
            p = mp.Process(target=produce_big, args=(q, go, count))
            get = q.get
        p.start()
        time.sleep(0.1)
        t = time.perf_counter()
        go.set()
        for _ in range(count):
            get()
        samples.append(count * MIB / (time.perf_counter() - t) / 1e9)
        p.join()
    return statistics.median(samples)


def echo(inq, outq):
    while True:
        v = inq.get()
        if v is None:
            return
        outq.put(v)


def round_trip(trips):
    inq, outq = mp.Queue(16), mp.Queue(16)
    p = mp.Process(target=echo, args=(inq, outq))
    p.start()
    for i in range(100):
        inq.put(i)
        outq.get()
    samples = []
    for _ in range(RUNS):
        t = time.perf_counter()
        for i in range(trips):
            inq.put(i)
            outq.get()
        samples.append((time.perf_counter() - t) / trips * 1e6)
    inq.put(None)
    p.join()
    return statistics.median(samples)


def lock_pair_ns(iterations):
    lock = mp.Lock()
    acquire, release = lock.acquire, lock.release
    samples = []
    for _ in range(RUNS):
        t = time.perf_counter()
        for _ in range(iterations):
            acquire()
            release()
        samples.append((time.perf_counter() - t) / iterations * 1e9)
    return statistics.median(samples)


def hammer(lock, go, count):
    go.wait()
    for _ in range(count):
        with lock:
            pass


def increment(v, go, count):
    go.wait()
    for _ in range(count):
        with v.get_lock():
            v.value += 1


def two_processes(target, make_args, count):
    samples = []
    for _ in range(RUNS):
        go = mp.Event()
        args = make_args()
        ps = [mp.Process(target=target, args=(*args, go, count)) for _ in range(2)]
        for p in ps:
            p.start()
        time.sleep(0.1)
        t = time.perf_counter()
        go.set()
        for p in ps:
            p.join()
        samples.append(2 * count / (time.perf_counter() - t))
    return statistics.median(samples)


def shm_write_rate():
    shm = shared_memory.SharedMemory(create=True, size=MIB)
    try:
        src = b"\x03" * MIB
        samples = []
        for _ in range(RUNS):
            t = time.perf_counter()
            for _ in range(500):
                shm.buf[:MIB] = src
            samples.append(500 * MIB / (time.perf_counter() - t) / 1e9)
        return statistics.median(samples)
    finally:
        shm.close()
        shm.unlink()


def main():
    small = n(200_000)
    emit("queue 1->1 small", small_rate(mp.Queue, 1, 0, small), "items/s")
    emit("simplequeue 1->1 small", small_rate(mp.SimpleQueue, 1, 0, small), "items/s")
    emit("pipe 1->1 small", pipe_small_rate(small), "items/s")
    emit("queue 4->4 small", small_rate(mp.Queue, 4, 4, small), "items/s")
    emit("queue 1MiB", big_rate(n(500)), "GB/s")
    emit("pipe 1MiB", big_rate(n(500), pipe=True), "GB/s")
    emit("queue round trip", round_trip(n(5_000)), "us")
    emit("lock uncontended", lock_pair_ns(n(2_000_000)), "ns")
    emit("lock contended 2 procs", two_processes(hammer, lambda: (mp.Lock(),), n(200_000)), "items/s")
    emit(
        "value locked increments 2 procs",
        two_processes(increment, lambda: (mp.Value("q", 0),), n(200_000)),
        "items/s",
    )
    emit("shared memory 1MiB write", shm_write_rate(), "GB/s")


if __name__ == "__main__":
    main()

"""CPython anchors for corral's process and pipe benchmarks.

Prints one JSON object per line: {"name", "value", "unit"}, like the Rust
harness. Run by bench/run.sh in the same session as the Rust figures.
"""
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

QUICK = bool(os.environ.get("CORRAL_BENCH_QUICK"))
RUNS = 7


def emit(name, value, unit):
    print(json.dumps({"name": name, "value": round(value, 4), "unit": unit}), flush=True)


def n(full):
    return max(1, full // 10) if QUICK else full


def noop():
    pass


def start_join(method, iterations):
    ctx = mp.get_context(method)
    for _ in range(5):
        p = ctx.Process(target=noop)
        p.start()
        p.join()
    samples = []
    for _ in range(iterations):
        t = time.perf_counter()
        p = ctx.Process(target=noop)
        p.start()
        p.join()
        samples.append((time.perf_counter() - t) * 1e6)
    return statistics.median(samples)


def echo(conn, other_end):
    other_end.close()  # else this forked child keeps its own EOF away
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(data)


def pipe_rtt(round_trips):
    ours, theirs = mp.Pipe()
    p = mp.get_context("fork").Process(target=echo, args=(theirs, ours))
    p.start()
    theirs.close()
    samples = []
    for run in range(RUNS + 1):
        t = time.perf_counter()
        for i in range(round_trips):
            ours.send_bytes(i.to_bytes(8, "little"))
            ours.recv_bytes()
        if run:
            samples.append((time.perf_counter() - t) * 1e6 / round_trips)
    ours.close()
    p.join()
    return statistics.median(samples)


def sink(conn, other_end):
    other_end.close()
    while True:
        try:
            conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(b"\x01")


def pipe_throughput(messages):
    ours, theirs = mp.Pipe()
    p = mp.get_context("fork").Process(target=sink, args=(theirs, ours))
    p.start()
    theirs.close()
    data = b"\x07" * (1 << 20)
    samples = []
    for _ in range(RUNS):
        t = time.perf_counter()
        for _ in range(messages):
            ours.send_bytes(data)
        for _ in range(messages):
            ours.recv_bytes()
        samples.append(messages * (1 << 20) / (time.perf_counter() - t) / 1e9)
    ours.close()
    p.join()
    return statistics.median(samples)


def main():
    version = "%d.%d" % sys.version_info[:2]
    emit(f"python{version} Process start+join fork", start_join("fork", n(200)), "us")
    emit(f"python{version} Process start+join forkserver", start_join("forkserver", n(200)), "us")
    emit(f"python{version} Process start+join spawn", start_join("spawn", n(60)), "us")
    emit(f"python{version} Pipe 8B round trip", pipe_rtt(n(5000)), "us")
    emit(f"python{version} Pipe 1MiB send_bytes", pipe_throughput(n(256)), "GB/s")


if __name__ == "__main__":
    main()

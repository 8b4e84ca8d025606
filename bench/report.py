"""Turns bench/out/results.jsonl into bench/RESULTS.md: figures side by side,
with ratios against the anchors measured in the same run."""
import json
import platform
import subprocess
import sys
import time


def load(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                row = json.loads(line)
                out[row["name"]] = row["value"]
    return out


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "us":
        return f"{v:,.0f} µs" if v >= 100 else f"{v:.1f} µs"
    if unit == "items/s":
        if v >= 1e9:
            return f"{v / 1e9:.2f} G/s"
        if v >= 1e6:
            return f"{v / 1e6:.2f} M/s"
        return f"{v / 1e3:.1f} k/s"
    if unit == "%":
        return f"{v:.2f} %"
    if unit == "ms":
        return f"{v:.1f} ms"
    return f"{v:.2f} GB/s"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}×"


def verdict(ok):
    return "met" if ok else "**missed**"


def main():
    r = load(sys.argv[1])
    py = next((k.split()[0] for k in r if k.startswith("python")), "python")
    g = r.get
    lines = []
    w = lines.append
    w("# Benchmark results")
    w("")
    w(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node() or 'this machine'}: "
      f"{cpu_model()}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} CPUs, "
      f"Linux {platform.release()}, {py.replace('python', 'CPython ')}. "
      "All figures come from one run of `bench/run.sh`; each is a median (see `bench/README.md`). "
      "The machine is a shared VM: read every figure as ±15 %.")
    w("")
    w("## Start a process that does nothing, then join it")
    w("")
    w("| start method | corral | raw `fork`+`waitpid` | corral / raw | CPython | CPython / corral | procspawn | procspawn / corral |")
    w("|---|---|---|---|---|---|---|---|")
    for method, pyname in [("forkserver", "forkserver"), ("fork", "fork"), ("spawn", "spawn")]:
        raw_fork = g(f"raw fork+waitpid (alternating with {method})")
        c = g(f"corral spawn+join {method}")
        p = g(f"{py} Process start+join {pyname}")
        ps = g("procspawn spawn+join") if method == "spawn" else None
        w(f"| {method} | {fmt(c, 'us')} | {fmt(raw_fork, 'us')} | {ratio(c, raw_fork)} | {fmt(p, 'us')} | "
          f"{ratio(p, c)} | {fmt(ps, 'us') if ps else '—'} | {ratio(ps, c) if ps else '—'} |")
    w("")
    w("Raw `fork`+`waitpid` is measured alternately with each corral loop (one raw fork after each "
      "spawn+join), so each ratio compares two figures taken under the same load. "
      "procspawn re-executes the binary, so it compares with corral's `spawn` method.")
    w("")
    w("## Pipe: 8-byte message round trip to a child")
    w("")
    c, raw, p = g("corral pipe 8B round trip"), g("raw pipe 8B round trip"), g(f"{py} Pipe 8B round trip")
    w("| corral `send_bytes`/`recv_bytes` | raw pipe ping-pong | corral / raw | CPython `Pipe` | CPython / corral |")
    w("|---|---|---|---|---|")
    w(f"| {fmt(c, 'us')} | {fmt(raw, 'us')} | {ratio(c, raw)} | {fmt(p, 'us')} | {ratio(p, c)} |")
    w("")
    w("## Pipe: 1 MiB `send_bytes` throughput to a child")
    w("")
    ci, ca = g("corral pipe 1MiB send_bytes (recv_bytes_into)"), g("corral pipe 1MiB send_bytes (recv_bytes)")
    r64, r1m, m, p = g("raw pipe 1MiB (64 KiB pipe)"), g("raw pipe 1MiB (1 MiB pipe)"), g("memcpy 1MiB"), g(f"{py} Pipe 1MiB send_bytes")
    w("| corral, `recv_bytes_into` | corral, `recv_bytes` | raw pipe (64 KiB) | raw pipe (1 MiB) | CPython `Pipe` | memcpy 1 MiB | corral / raw 1 MiB pipe | corral / CPython |")
    w("|---|---|---|---|---|---|---|---|")
    w(f"| {fmt(ci, 'GB/s')} | {fmt(ca, 'GB/s')} | {fmt(r64, 'GB/s')} | {fmt(r1m, 'GB/s')} | {fmt(p, 'GB/s')} | "
      f"{fmt(m, 'GB/s')} | {ratio(ca, r1m)} | {ratio(ca, p)} |")
    w("")
    w("## Targets (issue #2)")
    w("")
    fs = g("corral spawn+join forkserver")
    raw_fork = g("raw fork+waitpid (alternating with forkserver)")
    pfs = g(f"{py} Process start+join forkserver")
    w("| target | figure | verdict |")
    w("|---|---|---|")
    if fs and raw_fork:
        w(f"| forkserver spawn+join ≤ 1.5× raw fork+waitpid | {fs / raw_fork:.2f}× | {verdict(fs <= 1.5 * raw_fork)} |")
    if fs and pfs:
        w(f"| forkserver spawn+join ≥ 10× faster than CPython's forkserver | {pfs / fs:.0f}× | {verdict(pfs >= 10 * fs)} |")
    if c and raw:
        w(f"| Pipe round trip ≤ 1.5× raw pipe | {c / raw:.2f}× | {verdict(c <= 1.5 * raw)} |")
    if ca:
        w(f"| 1 MiB `send_bytes` ≥ 2 GB/s | {ca:.2f} GB/s | {verdict(ca >= 2.0)} |")
    w("")
    pool_section(g, py, w)
    print("\n".join(lines))


def pool_section(g, py, w):
    """The Pool figures (issue #3): corral against CPython's Pool and
    ProcessPoolExecutor, pebble, loky, procspawn's pool and rayon."""
    if g("corral pool apply round trip") is None:
        return
    c = lambda k: g(f"corral pool {k}")  # noqa: E731
    p = lambda k: g(f"{py} {k}")  # noqa: E731
    w("## Pool: 2 workers, side by side")
    w("")
    w("Every pool has 2 worker processes; Python pools use the `fork` start method (3.11's default), corral its "
      "fork server. Round trips are medians; throughputs are medians of whole runs. A task is `x -> x` or "
      "`x -> x*x` on a 64-bit integer.")
    w("")
    w("| figure | corral | CPython `Pool` | CPython `ProcessPoolExecutor` | pebble | loky | procspawn pool | best Python / corral |")
    w("|---|---|---|---|---|---|---|---|")

    def row(label, unit, corral, others, higher_is_better):
        vals = [v for v in others[:4] if v is not None]
        best = (max(vals) if higher_is_better else min(vals)) if vals else None
        if best is None or corral is None:
            rel = "n/a"
        elif higher_is_better:
            rel = f"{corral / best:.1f}× faster"
        else:
            rel = f"{best / corral:.1f}× faster"
        cells = " | ".join(fmt(v, unit) if v is not None else "—" for v in others)
        w(f"| {label} | {fmt(corral, unit)} | {cells} | {rel} |")

    row("`apply` / `submit().result()` round trip", "us", c("apply round trip"),
        [p("Pool apply_async round trip"), p("ProcessPoolExecutor submit round trip"),
         p("pebble schedule round trip"), p("loky submit round trip"), g("procspawn pool round trip")], False)
    row("submit each, then wait for all", "items/s", c("submit-each throughput"),
        [p("Pool apply_async-each throughput"), p("ProcessPoolExecutor submit-each throughput"),
         p("pebble schedule-each throughput"), p("loky submit-each throughput"),
         g("procspawn pool submit-each throughput")], True)
    row("`map` of 100k, default chunks", "items/s", c("map 100k u64"),
        [p("Pool map 100k default chunksize"), p("ProcessPoolExecutor map 100k chunksize 1000"), None, None, None],
        True)
    row("`map` of 100k, chunk size 1", "items/s", c("map 100k u64 chunksize 1"),
        [p("Pool map 100k chunksize 1"), None, None, None, None], True)
    row("`imap` of 100k (Python: chunk size 1)", "items/s", c("imap 100k u64"),
        [p("Pool imap 100k chunksize 1"), None, None, None, None], True)
    row("`imap_unordered` of 100k (Python: chunk size 1)", "items/s", c("imap_unordered 100k u64"),
        [p("Pool imap_unordered 100k chunksize 1"), None, None, None, None], True)
    row("start a 2-worker pool until both answered", "us", c("start-up 2 workers"),
        [p("Pool start-up 2 workers fork"), None, None, None, None], False)
    w("")
    rayon = g("rayon par_iter map 100k u64")
    w(f"In-process ceiling: rayon's `par_iter().map()` over the same 100k integers runs at {fmt(rayon, 'items/s')} "
      f"(corral's `map` is {100 * c('map 100k u64') / rayon:.1f} % of it). CPython's forkserver `Pool` takes "
      f"{fmt(p('Pool start-up 2 workers forkserver'), 'us')} to start. Idle CPU over 2 s: corral "
      f"{fmt(c('idle CPU'), '%')}, CPython `Pool` {fmt(p('Pool idle CPU'), '%')}. A hung task is reported "
      f"{fmt(c('timeout overshoot'), 'ms')} after its 100 ms deadline (pebble: {fmt(p('pebble timeout overshoot'), 'ms')}; "
      "the standard library has no per-task timeout).")
    w("")
    w("## Targets (issue #3)")
    w("")
    w("| target | figure | verdict |")
    w("|---|---|---|")
    rtt, py_rtt = c("apply round trip"), p("Pool apply_async round trip")
    if rtt and py_rtt:
        w(f"| `apply` round trip ≤ 10 µs | {rtt:.1f} µs | {verdict(rtt <= 10)} |")
        w(f"| `apply` round trip ≥ 5× better than Python | {py_rtt / rtt:.1f}× | {verdict(py_rtt >= 5 * rtt)} |")
    sub = c("submit-each throughput")
    py_sub = max(v for v in [p("Pool apply_async-each throughput"), p("ProcessPoolExecutor submit-each throughput"), 1] if v)
    if sub:
        w(f"| submit-each ≥ 1,000,000 tasks/s | {fmt(sub, 'items/s')} | {verdict(sub >= 1e6)} |")
        w(f"| submit-each ≥ 25× Python's best | {sub / py_sub:.0f}× | {verdict(sub >= 25 * py_sub)} |")
    m, py_m = c("map 100k u64"), p("Pool map 100k default chunksize")
    if m and py_m and rayon:
        w(f"| `map` ≥ 30 M u64/s | {fmt(m, 'items/s')} | {verdict(m >= 30e6)} |")
        w(f"| `map` ≥ 5× Python | {m / py_m:.1f}× | {verdict(m >= 5 * py_m)} |")
        w(f"| `map` ≥ 10 % of rayon | {100 * m / rayon:.1f} % | {verdict(m >= 0.1 * rayon)} |")
    up = c("start-up 2 workers")
    if up:
        w(f"| 2-worker pool ready ≤ 2 ms | {up / 1000:.2f} ms | {verdict(up <= 2000)} |")
    idle = c("idle CPU")
    if idle is not None:
        w(f"| idle pool < 1 % CPU | {idle:.2f} % | {verdict(idle < 1)} |")
    late = c("timeout overshoot")
    if late is not None:
        w(f"| timed-out task reported ≤ 100 ms after its deadline | {late:.1f} ms | {verdict(late <= 100)} |")
    w("")


if __name__ == "__main__":
    main()

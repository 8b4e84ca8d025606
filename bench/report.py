"""Turns bench/out/ (run-N.jsonl, hog-N.jsonl) into bench/RESULTS.md: medians of the runs side by side,
with ratios against the anchors measured in the same run."""
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def load(path):
    """Every figure in one JSON-lines file: name -> (value, unit)."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                row = json.loads(line)
                out[row["name"]] = (row["value"], row["unit"])
    return out


def load_runs(outdir):
    """The runs (`run-N.jsonl`) and the runs under a CPU hog (`hog-N.jsonl`,
    or an older report's single `hog.jsonl`), or a single file as one run."""
    if os.path.isfile(outdir):
        return [load(outdir)], None
    runs = [load(p) for p in sorted(glob.glob(os.path.join(outdir, "run-*.jsonl")))]
    hogs = sorted(glob.glob(os.path.join(outdir, "hog-*.jsonl")))
    if not hogs and os.path.exists(os.path.join(outdir, "hog.jsonl")):
        hogs = [os.path.join(outdir, "hog.jsonl")]
    return runs, ([load(p) for p in hogs] or None)


def hog_figures(hogs):
    """name -> (median over the runs under the hog, unit, [each run's value])."""
    out = {}
    for name in {n for r in hogs for n in r}:
        vals = [r[name][0] for r in hogs if name in r]
        unit = next(r[name][1] for r in hogs if name in r)
        out[name] = (statistics.median(vals), unit, vals)
    return out


def measured_at(outdir):
    """When the last figure was written (the report may be made later)."""
    paths = glob.glob(os.path.join(outdir, "*.jsonl")) if os.path.isdir(outdir) else [outdir]
    return max(os.path.getmtime(p) for p in paths)


def medians(runs):
    """name -> median over the runs that have it."""
    names = {n for r in runs for n in r}
    return {n: statistics.median([r[n][0] for r in runs if n in r]) for n in names}


LOWER_IS_BETTER = {"us", "ms", "ns", "s"}


def spread_section(runs, hog, w):
    """Each figure's spread over the runs, and how far a CPU hog moves it
    (issue #14: no figure may fall by more than 3×)."""
    units = {n: u for r in runs for n, (_, u) in r.items()}
    med = medians(runs)
    hogged = hog_figures(hog) if hog else {}
    n_hog = len(hog) if hog else 0
    w(f"## Spread over {len(runs)} runs, and under a CPU hog")
    w("")
    w(f"Median and range (min–max) of every figure over the runs; then its median over {n_hog} more "
      f"run{'s' if n_hog != 1 else ''} with a busy loop pinned to CPU 0 (each run's figure in brackets), "
      "and how far it fell (the worse-way ratio of the two medians). "
      "Figures whose unit has no better direction (idle CPU %) are left out.")
    w("")
    w("| figure | median | range | spread | under the hog | fall | ≤ 3× |")
    w("|---|---|---|---|---|---|---|")
    worst = []
    for name in sorted(med):
        unit = units[name]
        if unit == "%":
            continue
        vals = [r[name][0] for r in runs if name in r]
        m, lo, hi = med[name], min(vals), max(vals)
        spread = f"±{(hi - lo) / 2 / m * 100:.0f} %" if m else "n/a"
        hv, _, each = hogged.get(name, (None, None, []))
        if hv and m:
            fall = hv / m if unit in LOWER_IS_BETTER else m / hv
            worst.append((fall, name))
            fall_s, ok = f"{fall:.2f}×", verdict(fall <= 3)
        else:
            fall_s, ok = "n/a", "n/a"
        hog_s = fmt(hv, unit) + (" (" + ", ".join(fmt(v, unit) for v in each) + ")" if len(each) > 1 else "")
        w(f"| {name} | {fmt(m, unit)} | {fmt(lo, unit)} – {fmt(hi, unit)} | {spread} | {hog_s} | {fall_s} | {ok} |")
    w("")
    if worst:
        bad = [n for f, n in worst if f > 3]
        w(f"{len(bad)} of {len(worst)} figures fell by more than 3× under the hog"
          + (": " + ", ".join(f"`{n}`" for n in bad) + "." if bad else "."))
        w("")


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
    if unit in ("items/s", "tasks/s"):
        if v >= 1e9:
            return f"{v / 1e9:.2f} G/s"
        if v >= 1e6:
            return f"{v / 1e6:.2f} M/s"
        return f"{v / 1e3:.1f} k/s"
    if unit == "%":
        return f"{v:.2f} %"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "s":
        return f"{v:.2f} s"
    if unit == "ns":
        return f"{v:.1f} ns"
    return f"{v:.2f} GB/s"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}×"


def verdict(ok):
    return "met" if ok else "**missed**"


def main():
    runs, hog = load_runs(sys.argv[1])
    r = medians(runs)
    py = next((k.split()[0] for k in r if k.startswith("python")), "python")
    g = r.get
    lines = []
    w = lines.append
    w("# Benchmark results")
    w("")
    w(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(measured_at(sys.argv[1])))} on {platform.node() or 'this machine'}: "
      f"{cpu_model()}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} CPUs, "
      f"Linux {platform.release()}, {py.replace('python', 'CPython ')}. "
      f"Every figure is the median of {len(runs)} whole run(s) of `bench/run.sh` (each run's figure is itself "
      "a median, see `bench/README.md`); ratios compare medians of the same runs. Spreads, and every figure "
      "under a CPU hog, are in the last section.")
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
    c, raw_fork = g("corral spawn+join forkserver every 2ms"), g("raw fork+waitpid every 2ms")
    if c and raw_fork:
        w(f"| forkserver, one start every 2 ms | {fmt(c, 'us')} | {fmt(raw_fork, 'us')} | {ratio(c, raw_fork)} "
          "| — | — | — | — |")
    w("")
    w("Raw `fork`+`waitpid` is measured in blocks of 50 alternating with blocks of 50 corral starts, so each "
      "ratio compares two figures taken under the same load; the raw forks run in a helper process (a fork "
      "write-protects the forking process's pages, and the faults that follow would land on corral's next "
      "start). procspawn re-executes the binary, so it compares with corral's `spawn` method. "
      "The last row waits 2 ms before each start, and before each raw fork: a program that starts a child "
      "now and then, which takes the spare child the fork server forks while it is idle (back-to-back "
      "starts leave it no idle moment, so the rows above fork on request).")
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
    issue14_section(runs, hog, py, w)
    python_section(g, py, w)
    queue_section(g, py, w)
    connection_section(g, py, w)
    manager_section(g, py, w)
    cluster_section(g, py, w)
    runner_section(g, w)
    spread_section(runs, hog, w)
    print("\n".join(lines))


def issue14_section(runs, hog, py, w):
    """Issue #14's targets: the pool's hot path at the machine's floor, each
    a ratio within the same runs; `map`'s ratio to CPython run by run."""
    g = medians(runs).get
    rtt, sub = g("corral pool apply round trip"), g("corral pool submit-each throughput")
    m, py_m = g("corral pool map 100k u64"), g(f"{py} Pool map 100k default chunksize")
    mp10, ry10 = g("corral pool map_pod 10M u64"), g("rayon par_iter map 10M u64 (collect)")
    sj, raw = g("corral spawn+join forkserver"), g("raw fork+waitpid (alternating with forkserver)")
    if not (rtt and sub and m and py_m and mp10 and ry10 and sj and raw):
        return
    per_run = [r["corral pool map 100k u64"][0] / r[f"{py} Pool map 100k default chunksize"][0]
               for r in runs if "corral pool map 100k u64" in r and f"{py} Pool map 100k default chunksize" in r]
    w("## Targets (issue #14)")
    w("")
    w("| target | figure | verdict |")
    w("|---|---|---|")
    w(f"| `apply` round trip ≤ 2 µs | {rtt:.2f} µs | {verdict(rtt <= 2)} |")
    w(f"| submit-each ≥ 4 M tasks/s | {fmt(sub, 'items/s')} | {verdict(sub >= 4e6)} |")
    w(f"| `map` of 100k `u64` ≥ 60 M/s | {fmt(m, 'items/s')} | {verdict(m >= 60e6)} |")
    enc = g("corral pool map 100k (u64,) encoded")
    if enc:
        w(f"| the same with each item encoded (`(u64,)`: the path of every non-numeric type) ≥ 60 M/s | "
          f"{fmt(enc, 'items/s')} | {verdict(enc >= 60e6)} |")
    w(f"| `map` ≥ 5× CPython's `Pool.map` in every run | {min(per_run):.1f}–{max(per_run):.1f}× | "
      f"{verdict(min(per_run) >= 5)} |")
    w(f"| plain-data `map` ≥ 300 M items/s | {fmt(mp10, 'items/s')} | {verdict(mp10 >= 300e6)} |")
    w(f"| plain-data `map` ≥ 20 % of rayon | {100 * mp10 / ry10:.0f} % | {verdict(mp10 >= 0.2 * ry10)} |")
    w(f"| forkserver spawn+join ≤ 1.5× raw `fork`+`waitpid` | {sj / raw:.2f}× | {verdict(sj <= 1.5 * raw)} |")
    if hog:
        # The rule is about corral's figures; an anchor's fall (CPython's,
        # a raw loop's) is shown beside it but is not corral's to hold.
        falls = {True: [], False: []}
        for name, (hv, unit, _) in hog_figures(hog).items():
            mv = g(name)
            if unit == "%" or not hv or not mv:
                continue
            falls["corral" in name].append(hv / mv if unit in LOWER_IS_BETTER else mv / hv)
        bad = sum(f > 3 for f in falls[True])
        anchors = sum(f > 3 for f in falls[False])
        w(f"| no corral figure falls by more than 3× under a CPU hog | {bad} of {len(falls[True])} do "
          f"(anchors, not counted: {anchors} of {len(falls[False])}) | {verdict(bad == 0)} |")
    w("")
    w("Batches and outcomes cross in shared-memory rings, so a round trip makes no system call while both "
      "sides are busy. What bounds the misses (`bench/README.md` has the profiles and the builds compared): "
      "a submitting thread no longer waits for the pool's lock (it waited half the time before), a "
      "single task allocates only its slot across threads (its argument and tables, freed by the pool "
      "thread, cost half the calling thread's time before), and submit-each pays about 0.3 µs of CPU "
      "per task over the two cores, the calling thread's share the busiest; "
      "a `map` of plain numbers takes `map_pod`'s path (no encoding), while a `map` of any other small "
      "items pays about 38 ns of CPU per item over its four threads on a fast host (70–100 in a slow "
      "phase), which caps it near 52 M/s on two CPUs even with neither ever idle: a few nanoseconds "
      "each of codec steps (four an item, 289 of its 691 instructions under callgrind; a fixed-width "
      "format, tried end to end, took only a tenth off) and of the bookkeeping that crash recovery and cancellation rely on (its values come back "
      "in packs of up to 256 since 2026-12-04, which took 15–20 % off, and reach the map's sink in one "
      "call, which took a third off their decoding side); `map_pod` reads the caller's items and writes its results in "
      "place (one copy each way, made by the kernel in the workers, which also take the fresh vector's "
      "page faults; the vector is not cleared first since 2026-12-04, which took a quarter off a "
      "`map` of 100k `u64`), calls a `fn` item or a closure inline in its item loop, as rayon does (a `fn` "
      "pointer through the pointer), writes results over their items in the worker's block where "
      "both have one size, keeps each range's progress word on a cache line of its own (until "
      "2026-12-04 the workers shared one, and took it from each other at every item), and writes its fresh vector in "
      "4 KiB pages on this VM, a page fault each (about 2 µs here): its kernel hands freed memory back "
      "to the host (free page reporting), and huge pages made of it cost the host a fault per 4 KiB "
      "(as huge pages, calls 3 s apart ran at 60–100 M/s, and only back to back at 330–400 M/s); "
      "spawn+join pays making and tearing down a process (a raw `fork`+`_exit`+`waitpid` "
      "alone is 110–300 µs here, measured in a small helper process) and, back to back, the fork server "
      "and its child share one CPU while the parent watches for the answer on the other (the server forks "
      "a lone `ForkServer` start's child pinned to its own CPU (a `Spawn` child is neither pinned nor its answer watched for: either put its long start beside a CPU hog), where it runs at once rather than waiting behind the "
      "server's answer or on an idle CPU, and after the child's exit it watches 100 µs for the next "
      "request rather than letting its CPU idle: since 2026-12-04, 1.44 against 1.51 and 1.29 against "
      "1.59 in alternating runs); a fork copies no page tables of "
      "a file's mapping, so each 64 KiB of code the child ran was a page fault (2–3 µs here) and 16 page "
      "table entries its exit tore down, until the server, once idle, began copying every whole 2 MiB of "
      "its code into huge pages, which a fork copies as one entry each (a child now takes 17–20 faults, "
      "the raw one 7: libc's code, the data it writes, and the ends of the program's code that fill no "
      "huge page); "
      "a start that comes after an idle "
      "moment takes the fork server's spare child instead. The round trips (`apply`, the queue's) are "
      "bimodal on this machine: in the slow mode the threads of a hand-off share one CPU. Under the hog, a queue's producer and consumer that share a CPU "
      "yield it to each other (a round trip is then two yields, about 3 µs; streams keep their "
      "pace, 1→1 small messages 8.5–9.5 M/s against 4.7 when the waiter slept or spun), and "
      "`apply`'s slow mode (Rust or Python) is the caller and "
      "the worker taking turns on the one CPU left: each now yields that CPU to the other while it "
      "waits, about 3–5 µs a round trip in Rust (16–20 µs until 2026-12-04, when the worker watched "
      "10 µs and slept; 35–45 µs with the pool's thread as a third; two processes yielding to each "
      "other on one CPU take 1.9–2.5 µs here), and one wait in 64 of the "
      "worker's sleeps as before, so that unloaded the scheduler can still part two threads that "
      "began on one CPU. A watch no longer holds the CPU of a worker that "
      "told it of outcomes from there, which removed the 130 µs tail of the fast mode "
      "(scheduler traces in `bench/README.md`).")
    w("")


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
      "`x -> x*x` on a 64-bit integer, or a 1 ms sleep that returns when it ended (`CLOCK_MONOTONIC`), so "
      "that the time from its end to the caller's return is measured across processes.")
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
    row("a 1 ms task: from its end to the caller's return", "us", c("apply 1ms task end to return"),
        [p("Pool apply_async 1ms task end to return"), p("ProcessPoolExecutor 1ms task end to return"),
         p("pebble 1ms task end to return"), p("loky 1ms task end to return"), None], False)
    row("a 1 ms task: its whole overhead (call to start, plus end to return)", "us", c("apply 1ms task overhead"),
        [p("Pool apply_async 1ms task overhead"), p("ProcessPoolExecutor 1ms task overhead"),
         p("pebble 1ms task overhead"), p("loky 1ms task overhead"), None], False)
    row("submit each, then wait for all", "items/s", c("submit-each throughput"),
        [p("Pool apply_async-each throughput"), p("ProcessPoolExecutor submit-each throughput"),
         p("pebble schedule-each throughput"), p("loky submit-each throughput"),
         g("procspawn pool submit-each throughput")], True)
    row("`map` of 100k `u64`, default chunks (plain numbers: `map_pod`'s path)", "items/s", c("map 100k u64"),
        [p("Pool map 100k default chunksize"), p("ProcessPoolExecutor map 100k chunksize 1000"), None, None, None],
        True)
    row("`map` of 100k `(u64,)`, each item encoded", "items/s", c("map 100k (u64,) encoded"),
        [p("Pool map 100k default chunksize"), p("ProcessPoolExecutor map 100k chunksize 1000"), None, None, None],
        True)
    row("`map` of 100k, chunk size 1", "items/s", c("map 100k u64 chunksize 1"),
        [p("Pool map 100k chunksize 1"), None, None, None, None], True)
    row("`imap` of 100k, automatic chunks (Python: chunk size 1, its default)", "items/s", c("imap 100k u64"),
        [p("Pool imap 100k chunksize 1"), None, None, None, None], True)
    row("`imap` of 100k, chunk size 1", "items/s", c("imap chunk 1 100k u64"),
        [p("Pool imap 100k chunksize 1"), None, None, None, None], True)
    row("`imap` of 100k, chunk size 1000", "items/s", c("imap chunk 1000 100k u64"),
        [p("Pool imap 100k chunksize 1000"), None, None, None, None], True)
    row("`imap_unordered` of 100k (Python: chunk size 1)", "items/s", c("imap_unordered 100k u64"),
        [p("Pool imap_unordered 100k chunksize 1"), None, None, None, None], True)
    row("`map_pod` of 100k (plain data, read and written in place)", "items/s", c("map_pod 100k u64"),
        [p("Pool map 100k default chunksize"), None, None, None, None], True)
    row("`map_pod` of 10M", "items/s", c("map_pod 10M u64"),
        [None, None, None, None, None], True)

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
    ry10 = g("rayon par_iter map 10M u64 (collect)")
    if ry10 and c("map_pod 10M u64"):
        w(f"`map_pod` (plain data read and written in place by the workers, no encoding) over 10M `u64`: "
          f"{fmt(c('map_pod 10M u64'), 'items/s')}, {100 * c('map_pod 10M u64') / ry10:.0f} % of rayon's "
          f"`par_iter().map().collect()` ({fmt(ry10, 'items/s')}) in the same run.")
        w("")
    imap_cpu, imap1_cpu = c("imap caller CPU per item"), c("imap chunk 1 caller CPU per item")
    if imap_cpu and imap1_cpu:
        w(f"`imap` costs the consuming thread {imap_cpu:.0f} ns of CPU per item with automatic chunks "
          f"({imap1_cpu:.0f} ns with chunks of one); automatic `imap` runs at "
          f"{100 * c('imap 100k u64') / (c('map 100k (u64,) encoded') or c('map 100k u64')):.0f} % of the "
          "throughput of a `map` whose items are encoded.")
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
    im, enc = c("imap 100k u64"), c("map 100k (u64,) encoded") or c("map 100k u64")
    if im and enc:
        w(f"| automatic `imap` ≥ 50 % of `map` (issue #10; items encoded in both) | {100 * im / enc:.0f} % | "
          f"{verdict(im >= 0.5 * enc)} |")
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


def python_section(g, py, w):
    """corral for Python (issue #15): `corral.Pool` and
    `corral.ProcessPoolExecutor` against CPython's Pool and
    ProcessPoolExecutor, pebble and loky, in the same interpreter version."""
    c = lambda k: g(f"{py} corral.{k}")  # noqa: E731
    p = lambda k: g(f"{py} {k}")  # noqa: E731
    if c("Pool apply round trip") is None:
        return
    w("## corral for Python: 2 workers, side by side")
    w("")
    w("`import corral` (crates/corral-py, an abi3 wheel built by maturin) against the Python pools, each in a fresh "
      "interpreter of the same CPython, 2 workers each, the same tasks (`x -> x`, `x -> x*x` on small ints, "
      "functions of an importable module) and the same method as the table above.")
    w("")
    w("| figure | `corral.Pool` | `corral.ProcessPoolExecutor` | CPython `Pool` | CPython `ProcessPoolExecutor` | "
      "pebble | loky | best Python / corral |")
    w("|---|---|---|---|---|---|---|---|")

    def row(label, unit, ours, others, higher_is_better):
        mine = [v for v in ours if v is not None]
        vals = [v for v in others if v is not None]
        if not mine or not vals:
            rel = "n/a"
        elif higher_is_better:
            rel = f"{max(mine) / max(vals):.1f}× faster"
        else:
            rel = f"{min(vals) / min(mine):.1f}× faster"
        cells = " | ".join(fmt(v, unit) if v is not None else "—" for v in [*ours, *others])
        w(f"| {label} | {cells} | {rel} |")

    row("`apply` / `submit().result()` round trip", "us",
        [c("Pool apply round trip"), c("ProcessPoolExecutor submit round trip")],
        [p("Pool apply_async round trip"), p("ProcessPoolExecutor submit round trip"),
         p("pebble schedule round trip"), p("loky submit round trip")], False)
    row("submit each, then wait for all", "items/s",
        [c("Pool apply_async-each throughput"), c("ProcessPoolExecutor submit-each throughput")],
        [p("Pool apply_async-each throughput"), p("ProcessPoolExecutor submit-each throughput"),
         p("pebble schedule-each throughput"), p("loky submit-each throughput")], True)
    row("`map` of 100k ints, default chunks", "items/s", [c("Pool map 100k default chunksize"), None],
        [p("Pool map 100k default chunksize"), None, None, None], True)
    row("`map` of 100k ints, chunk size 1", "items/s", [c("Pool map 100k chunksize 1"), None],
        [p("Pool map 100k chunksize 1"), None, None, None], True)
    row("`imap` of 100k ints, chunk size 1", "items/s", [c("Pool imap 100k chunksize 1"), None],
        [p("Pool imap 100k chunksize 1"), None, None, None], True)
    row("`imap` of 100k ints, chunk size 1000", "items/s", [c("Pool imap 100k chunksize 1000"), None],
        [p("Pool imap 100k chunksize 1000"), None, None, None], True)
    row("a hung task reported after its 100 ms limit", "ms", [c("Pool timeout overshoot"), None],
        [None, None, p("pebble timeout overshoot"), None], False)
    row("start a 2-worker pool until both answered", "us", [c("Pool start-up 2 workers"), None],
        [p("Pool start-up 2 workers fork"), None, None, None], False)
    w("")
    w(f"Start-up: a worker of corral's is a fork of its fork server, taken at `import corral`, so it imports what "
      f"the script imported later (here the benchmark module) when its first task needs it; CPython's `forkserver` "
      f"pool, which does the same, takes {fmt(p('Pool start-up 2 workers forkserver'), 'us')}, its `fork` pool "
      "(a copy of everything imported so far) the figure in the table.")
    w("")
    w("CPython's `Pool` and `ProcessPoolExecutor` and loky have no per-task timeout. corral's `map` (and `imap` "
      "with a chunk size) sends items in batches, as CPython does, but each item keeps its own fate: a worker runs "
      "a batch item by item, and a batch whose worker died runs again one task per item, so only the item that "
      "killed it fails (a dead worker hangs CPython's `Pool.map`). Idle CPU over 2 s: "
      f"{fmt(c('Pool idle CPU'), '%')}.")
    w("")
    w("## Targets (issue #15)")
    w("")
    w("| target | figure | verdict |")
    w("|---|---|---|")
    rtt = min(v for v in [c("Pool apply round trip"), c("ProcessPoolExecutor submit round trip")] if v)
    best_rtt = min(v for v in [p("Pool apply_async round trip"), p("ProcessPoolExecutor submit round trip"),
                               p("pebble schedule round trip"), p("loky submit round trip"), 1e12] if v)
    w(f"| round trip ≥ 20× faster than the best Python pool | {best_rtt / rtt:.1f}× | "
      f"{verdict(best_rtt >= 20 * rtt)} |")
    sub = max(v for v in [c("Pool apply_async-each throughput"),
                          c("ProcessPoolExecutor submit-each throughput"), 0] if v is not None)
    best_sub = max(v for v in [p("Pool apply_async-each throughput"), p("ProcessPoolExecutor submit-each throughput"),
                               p("pebble schedule-each throughput"), p("loky submit-each throughput"), 1e-9] if v)
    w(f"| submit-each ≥ 5× the best Python pool | {sub / best_sub:.1f}× | {verdict(sub >= 5 * best_sub)} |")
    m, py_m = c("Pool map 100k default chunksize"), p("Pool map 100k default chunksize")
    if m and py_m:
        w(f"| `map` of 100k ints ≥ CPython's default-chunk `map` | {m / py_m:.2f}× | {verdict(m >= py_m)} |")
    w("")


def queue_section(g, py, w):
    """Queues, locks and shared values (issue #4): corral against CPython's
    Queue, SimpleQueue, Pipe, Lock, Value and shared_memory, and the floor."""
    if g("corral queue 1->1 small") is None:
        return
    c = lambda k: g(f"corral {k}")  # noqa: E731
    p = lambda k: g(f"{py} {k}")  # noqa: E731
    w("## Queues, locks and shared values")
    w("")
    w("Producers and consumers are separate processes (the parent consumes in 1→1); messages are 64-bit "
      "integers, or 1 MiB byte strings (`serde_bytes::ByteBuf` for corral, `bytes` for Python). Locks: one "
      "acquire + release. Contended figures: two processes, each acquiring 1 M times (Python: 200 k).")
    w("")
    w("| figure | corral | CPython | floor | corral / CPython | corral / floor |")
    w("|---|---|---|---|---|---|")

    def row(label, unit, corral, python, pyname, floor, floorname, higher_is_better):
        if corral is None or python is None:
            rel = "n/a"
        else:
            rel = f"{corral / python:.1f}×" if higher_is_better else f"{python / corral:.1f}×"
        if floor is None or corral is None:
            frel = "—"
        else:
            frel = f"{corral / floor:.2f}" if higher_is_better else f"{corral / floor:.2f}× the time"
        fcell = f"{fmt(floor, unit)} ({floorname})" if floor is not None else "—"
        w(f"| {label} | {fmt(corral, unit)} | {fmt(python, unit)} ({pyname}) | {fcell} | {rel} | {frel} |")

    best_small = max(v for v in [p("queue 1->1 small"), p("simplequeue 1->1 small"), p("pipe 1->1 small"), 1] if v)
    row("small messages 1→1", "items/s", c("queue 1->1 small"), p("queue 1->1 small"), "`Queue`",
        g("raw pipe 8B messages"), "raw pipe, 8 B writes", True)
    row("small messages 1→1", "items/s", c("queue 1->1 small"), p("simplequeue 1->1 small"), "`SimpleQueue`",
        None, "", True)
    row("small messages 1→1", "items/s", c("queue 1->1 small"), p("pipe 1->1 small"), "`Pipe`", None, "", True)
    row("small messages 4→4", "items/s", c("queue 4->4 small"), p("queue 4->4 small"), "`Queue`", None, "", True)
    row("1 MiB messages", "GB/s", c("queue 1MiB"), p("queue 1MiB"), "`Queue`", g("memcpy 1MiB"), "memcpy", True)
    row("1 MiB messages", "GB/s", c("queue 1MiB"), p("pipe 1MiB"), "`Pipe.send_bytes`",
        g("raw pipe 1MiB (1 MiB pipe)"), "raw pipe", True)
    row("queue round trip to a child", "us", c("queue round trip"), p("queue round trip"), "`Queue`",
        g("raw pipe 8B round trip"), "raw pipe ping-pong", False)
    row("lock, uncontended", "ns", c("lock uncontended"), p("lock uncontended"), "`Lock`",
        g("raw futex uncontended"), "CAS + swap", False)
    row("lock, 2 processes contending", "items/s", c("lock contended 2 procs"), p("lock contended 2 procs"),
        "`Lock`", None, "", True)
    row("locked `Value` increments, 2 processes", "items/s", c("value locked increments 2 procs"),
        p("value locked increments 2 procs"), "`Value` + `get_lock()`", None, "", True)
    row("shared memory, 1 MiB write", "GB/s", c("shared memory 1MiB write"), p("shared memory 1MiB write"),
        "`shared_memory`", g("memcpy 1MiB"), "memcpy", True)
    w("")
    w(f"For the same uncontended acquire + release: a bare glibc robust process-shared mutex (what `Lock` is "
      f"built on) takes {fmt(g('glibc robust mutex uncontended'), 'ns')}; `std::sync::Mutex` (in-process, not "
      f"robust) {fmt(g('std mutex uncontended'), 'ns')}.")
    w("")
    w("## Targets (issue #4)")
    w("")
    w("| target | figure | verdict |")
    w("|---|---|---|")
    small = c("queue 1->1 small")
    if small:
        w(f"| ≥ 10 M small messages/s 1→1 | {fmt(small, 'items/s')} | {verdict(small >= 10e6)} |")
        w(f"| ≥ 20× Python's best 1→1 | {small / best_small:.0f}× | {verdict(small >= 20 * best_small)} |")
    big = c("queue 1MiB")
    if big:
        w(f"| ≥ 5 GB/s for 1 MiB messages | {big:.2f} GB/s | {verdict(big >= 5)} |")
    lk = c("lock uncontended")
    if lk:
        w(f"| uncontended lock ≤ 10 ns, robust | {lk:.1f} ns | {verdict(lk <= 10)} |")
    w("")


def time_rows(w, c, p, rows):
    """Rows of `| label | corral | CPython | CPython / corral |` for times."""
    for label, key, unit in rows:
        cv, pv = c(key), p(key)
        rel = f"{pv / cv:.1f}×" if cv and pv else "n/a"
        w(f"| {label} | {fmt(cv, unit)} | {fmt(pv, unit)} | {rel} |")


def connection_section(g, py, w):
    """Authenticated connections over loopback TCP (issue #11, item 1):
    corral's Listener/Client against CPython's multiprocessing.connection."""
    if g("corral connection 8B round trip (TCP)") is None:
        return
    c = lambda k: g(f"corral connection {k}")  # noqa: E731
    p = lambda k: g(f"{py} connection {k}")  # noqa: E731
    w("## Authenticated connections (loopback TCP)")
    w("")
    w("The echo server is another process; CPython 3.11 authenticates with HMAC-MD5 (its only digest), "
      "corral with HMAC-SHA256 both ways. Medians.")
    w("")
    w("| figure | corral | CPython `multiprocessing.connection` | CPython / corral |")
    w("|---|---|---|---|")
    time_rows(w, c, p, [("connect + handshake", "connect+handshake", "us"),
                        ("8-byte round trip", "8B round trip (TCP)", "us")])
    w("")


def cluster_section(g, py, w):
    """The cluster pool (issue #12) on one redis-server: corral with 2 nodes
    of one process, the raw Redis stream farm (the floor), Celery and RQ."""
    rt = g("corral cluster round trip")
    if rt is None:
        return
    raw_rt, raw_tp = g("raw redis stream farm round trip"), g("raw redis stream farm trivial tasks, 2 workers")
    each, mapped = g("corral cluster submit-each trivial tasks, 2 nodes"), g("corral cluster map trivial items, 2 nodes")
    crt, ctp = g(f"{py} celery round trip"), g(f"{py} celery trivial tasks, 2 worker processes")
    qrt, qtp = g(f"{py} rq round trip"), g(f"{py} rq trivial tasks, 2 SimpleWorkers")
    w("## Cluster")
    w("")
    w("One redis-server on loopback (password, no persistence); two nodes (or workers) of one process each "
      "on this 2-core machine, beside the client. Trivial task: `x * x`. The raw farm is "
      "`research/distributed.md`'s: `XADD`, `XREADGROUP COUNT 10`, reply and `XACK` in one `MULTI`.")
    w("")
    w("| figure | corral | raw stream farm | Celery 5 | RQ (SimpleWorker) |")
    w("|---|---|---|---|---|")
    w(f"| one task's round trip | {fmt(rt, 'us')} | {fmt(raw_rt, 'us')} | {fmt(crt, 'us')} | {fmt(qrt, 'us')} |")
    w(f"| trivial tasks/s, one `submit` each | {fmt(each, 'items/s')} | {fmt(raw_tp, 'items/s')} | "
      f"{fmt(ctp, 'items/s')} | {fmt(qtp, 'items/s')} |")
    w(f"| trivial items/s, `map` | {fmt(mapped, 'items/s')} | | | |")
    w("")
    w("### Targets (issue #12)")
    w("")
    w("| target | figure | verdict |")
    w("|---|---|---|")
    if each:
        w(f"| ≥ 50 k trivial tasks/s with 2 nodes | {fmt(each, 'items/s')} (one `submit` each) | {verdict(each >= 50e3)} |")
    if each and ctp:
        w(f"| ≥ 10× Celery's throughput | {each / ctp:.0f}× | {verdict(each >= 10 * ctp)} |")
    if raw_rt:
        w(f"| round trip ≤ 2× the raw loop | {rt / raw_rt:.2f}× | {verdict(rt <= 2 * raw_rt)} |")
    w("")
    w("What bounds the round trip: the raw loop is two processes and four Redis commands. corral's adds a "
      "supervised worker process behind the node (the node hands the task to its local pool and back, as a "
      "local pool does) and threads that keep a slow broker from stalling anyone (the client's sender and "
      "receiver, the node's reader and writer): each hand-off is a sleep/wake across CPUs, 35–60 µs on this "
      "machine (`research/limits.md`), and a lone task crosses about four of them. Throughput does not pay "
      "them: tasks travel hundreds to a stream entry.")
    w("")


def runner_section(g, w):
    """The `corral` command (issue #13) beside xargs -P, GNU parallel and
    rust-parallel, each run paired with the spawn floor in the same run."""
    if g("runner corral true x2000 wall") is None:
        return
    names = ["floor", "xargs", "corral", "rust-parallel", "GNU parallel"]
    w("## The `corral` command")
    w("")
    w("`-j 2`, the inputs on standard input. Floor: `spawn-floor` (`bench/src/bin`), a Rust loop of "
      "`Command::spawn` and `waitpid(-1)` and nothing else. CPU: the runner and everything it started, "
      "from a cpuacct cgroup of the run's own (corral's workers and fork server included). The 10 ms job is "
      "`sleep10ms` (`bench/src/bin`); `true` is `/bin/true`. An absent runner shows n/a.")
    w("")
    w("| runner | 2,000 × `true` wall | CPU | extra CPU per job vs floor | 200 × 10 ms wall | vs floor |")
    w("|---|---|---|---|---|---|")
    fw, fc = g("runner floor true x2000 wall"), g("runner floor true x2000 cpu")
    sw = g("runner floor 10ms x200 wall")
    for name in names:
        tw, tc = g(f"runner {name} true x2000 wall"), g(f"runner {name} true x2000 cpu")
        mw = g(f"runner {name} 10ms x200 wall")
        extra = f"{(tc - fc) / 2000 * 1e3:.2f} ms" if tc is not None and fc is not None and name != "floor" else ""
        w(f"| {name} | {fmt(tw, 's')} | {fmt(tc, 's')} | {extra} | {fmt(mw, 's')} | "
          f"{ratio(mw, sw) if name != 'floor' else ''} |")
    w("")
    cw, cc = g("runner corral true x2000 wall"), g("runner corral true x2000 cpu")
    cm, gw = g("runner corral 10ms x200 wall"), g("runner GNU parallel true x2000 wall")
    w("### Targets (issue #13)")
    w("")
    w("| target | figure | verdict |")
    w("|---|---|---|")
    if cm and sw:
        w(f"| ≤ 1.05× the floor's wall on 200 × 10 ms | {cm / sw:.3f}× | {verdict(cm <= 1.05 * sw)} |")
    if cc is not None and fc is not None:
        per_job = (cc - fc) / 2000 * 1e3
        w(f"| ≤ 0.3 ms extra CPU per job on `true` | {per_job:.2f} ms | {verdict(per_job <= 0.3)} |")
    if cw and gw:
        w(f"| ≥ 5× faster than GNU parallel on `true` | {gw / cw:.1f}× | {verdict(gw >= 5 * cw)} |")
    w("")


def manager_section(g, py, w):
    """Managers (issue #11): corral's Manager against CPython's Manager()
    (local socket) and BaseManager over loopback TCP."""
    if g("corral manager dict set") is None:
        return
    c = lambda k: g(f"corral manager {k}")  # noqa: E731
    p = lambda k: g(f"{py} manager {k}")  # noqa: E731
    w("## Managers")
    w("")
    w("A server process holds the objects; the client is this process (a child for the queue's producer). "
      "Local: corral's abstract Unix socket, CPython's `Manager()` socket. Remote: loopback TCP, "
      "a registered dict. Medians.")
    w("")
    w("| figure | corral | CPython | CPython / corral |")
    w("|---|---|---|---|")
    rows = [
        ("dict `d[k] = v`", "dict set", "us"),
        ("dict `d[k]`", "dict get", "us"),
        ("list `append`", "list append", "us"),
        ("lock acquire + release (2 calls)", "lock acquire+release", "us"),
        ("queue put + get, same process (2 calls)", "queue put+get", "us"),
        ("new dict proxy (create, drop)", "new dict proxy", "us"),
        ("remote: connect + authenticate + first call", "remote connect+first call (TCP)", "us"),
        ("remote: new proxy + first call", "remote new proxy (TCP)", "us"),
        ("remote: a call", "remote call (TCP)", "us"),
    ]
    time_rows(w, c, p, rows)
    cq, pq = c("queue child put -> get"), p("queue child put -> get")
    rel = f"{cq / pq:.1f}×" if cq and pq else "n/a"
    w(f"| queue: a child puts, this process gets | {fmt(cq, 'items/s')} | {fmt(pq, 'items/s')} | {rel} (corral / CPython) |")
    w("")
    w("### Targets (issue #11)")
    w("")
    w("| target | figure | verdict |")
    w("|---|---|---|")
    cs, ps = c("dict set"), p("dict set")
    floor = g("corral pipe 8B round trip")
    if cs:
        bound = f" (a socket round trip to a child, the floor of any call: {fmt(floor, 'us')})" if floor else ""
        w(f"| a call ≤ 5 µs | {fmt(cs, 'us')}{bound} | {verdict(cs <= 5)} |")
    if cs and ps:
        w(f"| a call ≥ 10× faster than CPython's | {ps / cs:.1f}× | {verdict(ps >= 10 * cs)} |")
    if cq and pq:
        w(f"| manager queue ≥ 10× CPython's msgs/s | {cq / pq:.1f}× | {verdict(cq >= 10 * pq)} |")
    rp = c("remote new proxy (TCP)")
    if rp:
        w(f"| a new remote proxy ≤ 1 ms | {fmt(rp, 'us')} | {verdict(rp <= 1000)} |")
    w("")
    w("What bounds the local figures: every call is one request and one reply over a socket, so a call "
      "cannot beat a socket round trip to another process (the pipe figure above, measured in the same run); "
      "corral's call is that round trip plus about a microsecond of pickling and bookkeeping on both sides. "
      "Going lower needs the requests in shared memory instead of a socket (issue #14's rings). The queue "
      "figure is two such round trips per item (a put, a get) among three processes on two cores; a new proxy "
      "is one round trip where CPython opens three connections, each with its handshake (and over TCP a 40 ms "
      "Nagle stall each).")
    w("")


if __name__ == "__main__":
    main()

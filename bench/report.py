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
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""CPU time per item from `perf report --sort comm,sym` of `map-profile`
(see run.sh): per role (thread name: the parent's main thread, its
`corral-pool` thread, the `corral-worker`s) and, within each, per function.
The warm-up and start-up are in the samples too; with 30 maps of 100k
items they are under 1 %."""

import collections
import re
import sys

LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.+?)\s*$")


def main():
    report, freq, items = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    cpu_ns = None
    rows = collections.defaultdict(list)
    for line in open(report):
        # The CPU clock's event count is in nanoseconds.
        m = re.search(r"Event count \(approx.\): (\d+)", line)
        if m:
            cpu_ns = int(m.group(1))
        m = LINE.match(line)
        if m:
            pct, comm, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
            rows[comm].append((pct, "[kernel] " + sym if kind == "k" else sym))
    ns_per_pct = cpu_ns / 100 / items
    total = 0.0
    for comm, entries in sorted(rows.items(), key=lambda kv: -sum(p for p, _ in kv[1])):
        role = sum(p for p, _ in entries) * ns_per_pct
        total += role
        print(f"\n{comm}: {role:.0f} ns per item (functions above 0.3 % of all samples)")
        for pct, sym in sorted(entries, reverse=True)[:14]:
            print(f"  {pct * ns_per_pct:6.1f} ns  {sym[:100]}")
    print(f"\nall roles: {total:.0f} ns of CPU per item in the functions shown, "
          f"{cpu_ns / items:.0f} ns in all (sampled at {freq} Hz)")


if __name__ == "__main__":
    main()

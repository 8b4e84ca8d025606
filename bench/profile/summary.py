"""Instructions per item from two callgrind runs of `map-profile` (see
run.sh): per role (the parent's threads, the workers, the fork server) and,
within each role, per function (exclusive counts), the difference between
the runs divided by the items the second run mapped more."""

import collections
import os
import re
import subprocess
import sys

LINE = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.+?)\s*$")


def functions(path):
    """Exclusive instruction counts by function in one callgrind file."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", path],
        capture_output=True, text=True, check=True,
    ).stdout
    counts = collections.Counter()
    started = False
    for line in text.splitlines():
        if "file:function" in line:
            started = True
            continue
        m = LINE.match(line)
        if started and m:
            name = re.sub(r"\s*\[[^\]]*\]$", "", m.group(2))
            name = name.split(":", 1)[-1]
            counts[name] += int(m.group(1).replace(",", ""))
    return counts


def roles(run):
    """{role: Counter} for one run's directory."""
    pids = {}
    for line in open(os.path.join(run, "stdout")):
        key, _, rest = line.partition(" ")
        for pid in rest.split():
            pids[pid] = key
    out = collections.defaultdict(collections.Counter)
    for name in sorted(os.listdir(run)):
        m = re.match(r"cg\.(\d+)(?:-(\d+))?$", name)
        if not m:
            continue
        pid, thread = m.group(1), int(m.group(2) or 1)
        role = pids.get(pid, "server")
        if role == "parent":
            role = "parent, main thread" if thread == 1 else "parent, pool threads"
        elif role == "workers":
            role = "workers (both)"
        out[role] += functions(os.path.join(run, name))
    return out


def main():
    before, after, items = sys.argv[1], sys.argv[2], int(sys.argv[3])
    a, b = roles(before), roles(after)
    total = 0.0
    for role in sorted(b):
        diff = b[role].copy()
        diff.subtract(a.get(role, collections.Counter()))
        per_item = sum(diff.values()) / items
        total += per_item
        print(f"\n{role}: {per_item:.0f} instructions per item")
        for name, count in diff.most_common(12):
            if count / items >= 1:
                print(f"  {count / items:8.1f}  {name[:110]}")
    print(f"\nall: {total:.0f} instructions per item")


if __name__ == "__main__":
    main()

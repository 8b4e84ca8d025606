"""Instructions per item from two callgrind runs of `map-profile` (see
callgrind.sh): ROUNDS_A and ROUNDS_B maps of ITEMS items each, every process
and thread counted. The difference of the two runs is the steady state of
ROUNDS_B - ROUNDS_A maps, without start-up and warm-up. Prints each role's
instructions per item (the parent's calling thread, its pool thread, the
workers, the fork server) and, within each, per function (inlined code is
counted in the function it was inlined into).

    callgrind_summary.py DIR_A DIR_B ITEMS ROUNDS_A ROUNDS_B
"""

import collections
import os
import re
import sys

NAME = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")


def costs(path):
    """Self cost (Ir) per function of one callgrind output file."""
    names, per_fn = {}, collections.Counter()
    current, skip_next = None, False
    with open(path) as f:
        for line in f:
            m = NAME.match(line)
            if m:
                kind, ident, name = m.groups()
                if name:
                    names[ident] = name
                if kind == "fn":
                    current = names[ident]
                continue
            if line.startswith("calls="):
                # The line after `calls=` is the call's inclusive cost.
                skip_next = True
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and current is not None:
                    per_fn[current] += int(parts[1])
    return per_fn


def role(path, per_fn, threads_of_pid):
    """Which part of the pool a process or thread is."""
    names = " ".join(per_fn)
    if "worker_main" in names or "_trampoline" in names:
        return "worker"
    pid, _, thread = os.path.basename(path).partition("-")
    if threads_of_pid[pid] > 1:
        return "parent, calling thread" if thread == "01" else "parent, pool thread"
    return "fork server"


def load(directory):
    files = [os.path.join(directory, f) for f in sorted(os.listdir(directory))]
    files = [f for f in files if os.path.getsize(f) > 0 and "-" in os.path.basename(f)]
    threads_of_pid = collections.Counter(os.path.basename(f).split("-")[0] for f in files)
    roles = collections.defaultdict(collections.Counter)
    for path in files:
        per_fn = costs(path)
        roles[role(path, per_fn, threads_of_pid)].update(per_fn)
    return roles


def short(name):
    name = re.sub(r"<impl serde_core::ser::Serialize for (\w+)>", r"Serialize for \1", name)
    return name[:110]


def main():
    dir_a, dir_b, items, rounds_a, rounds_b = sys.argv[1:6]
    n = int(items) * (int(rounds_b) - int(rounds_a))
    a, b = load(dir_a), load(dir_b)
    total = 0.0
    for name in sorted(set(a) | set(b), key=lambda r: -sum(b[r].values())):
        diff = b[name].copy()
        diff.subtract(a[name])
        per_item = sum(diff.values()) / n
        total += per_item
        if abs(per_item) < 0.5:
            continue
        print(f"\n{name}: {per_item:.0f} instructions per item")
        for fn, ir in diff.most_common(14):
            if ir / n >= 0.5:
                print(f"  {ir / n:7.1f}  {short(fn)}")
    print(f"\nall roles: {total:.0f} instructions per item "
          f"(the difference of {rounds_b} and {rounds_a} maps of {items} items)")


if __name__ == "__main__":
    main()

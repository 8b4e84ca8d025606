#!/usr/bin/env bash
# Where a `map` item's instructions go. Runs `map-profile` (a 2-worker pool
# mapping `x -> x * x` over ITEMS integers after a warm-up) under valgrind's
# callgrind twice, once with 1 map and once with 1 + ROUNDS, following the
# fork server and the workers; the difference, divided by ROUNDS x ITEMS, is
# what an item costs each process and thread, without start-up. This machine
# has no hardware counters; callgrind counts user-space instructions exactly
# (the kernel's share is not in it).
#
#   bench/profile/run.sh [ITEMS] [ROUNDS] [CHUNK]    (100000, 2, automatic)
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || {
    echo "bench/profile/run.sh needs valgrind: sudo apt-get install -y valgrind" >&2
    exit 1
}
items=${1:-100000}
rounds=${2:-2}
cargo build --release -q -p corral-bench --bin map-profile
out=bench/out/callgrind
rm -rf "$out"
for r in 1 $((1 + rounds)); do
    mkdir -p "$out/$r"
    valgrind --tool=callgrind --trace-children=yes --separate-threads=yes \
        --callgrind-out-file="$out/$r/cg.%p" \
        target/release/map-profile "$items" "$r" ${3:+"$3"} >"$out/$r/stdout" 2>"$out/$r/stderr"
done
python3 bench/profile/summary.py "$out/1" "$out/$((1 + rounds))" "$((items * rounds))"

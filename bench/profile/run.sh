#!/usr/bin/env bash
# Where a `map` item's time goes. Runs `map-profile` (a 2-worker pool mapping
# `x -> x * x` over ITEMS integers ROUNDS times after a warm-up) under
# `perf record` with the software CPU clock (this machine has no hardware
# counters; callgrind.sh counts instructions instead), the
# fork server and the workers included, and prints the CPU time per item of
# each role (the parent's main thread, its pool thread, the workers) by
# function.
#
#   bench/profile/run.sh [ITEMS] [ROUNDS] [CHUNK]    (100000, 30, automatic)
#   (CHUNK `each`: submit every item as its own task, then join them all;
#   `encoded`: map `(u64,)` items, encoded one by one, the path of every
#   type but plain numbers, which take `map_pod`'s)
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v perf >/dev/null || {
    echo "bench/profile/run.sh needs perf: sudo apt-get install -y linux-perf" >&2
    exit 1
}
items=${1:-100000}
rounds=${2:-30}
freq=20000
cargo build --release -q -p corral-bench --bin map-profile
out=bench/out/profile
rm -rf "$out"
mkdir -p "$out"
perf record -q -F "$freq" -e cpu-clock -o "$out/perf.data" \
    target/release/map-profile "$items" "$rounds" ${3:+"$3"} >"$out/stdout" 2>"$out/stderr"
perf report -i "$out/perf.data" --no-children --sort comm,sym -g none --stdio \
    --percent-limit 0.3 >"$out/report.txt" 2>/dev/null
python3 bench/profile/summary.py "$out/report.txt" "$freq" "$((items * rounds))"

#!/usr/bin/env bash
# Runs every benchmark side by side in one session and writes bench/RESULTS.md.
# CORRAL_BENCH_QUICK=1 runs a tenth of the iterations (a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p corral-bench
# The Python anchors beyond the standard library.
python3 -m pip install -q --disable-pip-version-check pebble loky 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages pebble loky
mkdir -p bench/out
out=bench/out/results.jsonl
: > "$out"
./target/release/corral-bench floor | tee -a "$out"
./target/release/corral-bench spawn | tee -a "$out"
./target/release/procspawn-bench | tee -a "$out"
./target/release/corral-bench pipe | tee -a "$out"
python3 bench/python/process_bench.py | tee -a "$out"
./target/release/corral-bench pool | tee -a "$out"
python3 bench/python/pool_bench.py | tee -a "$out"
./target/release/corral-bench queue | tee -a "$out"
python3 bench/python/queue_bench.py | tee -a "$out"
python3 bench/report.py "$out" > bench/RESULTS.md
echo "wrote bench/RESULTS.md"

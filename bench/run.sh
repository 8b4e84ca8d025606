#!/usr/bin/env bash
# Runs every benchmark side by side in one session and writes bench/RESULTS.md.
# CORRAL_BENCH_QUICK=1 runs a tenth of the iterations (a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p corral-bench
# The Python anchors beyond the standard library, in a virtual environment
# of this script's own (the system Python is left alone). An install that
# fails stops the run with pip's own message.
venv=bench/.venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || {
        echo "bench/run.sh: cannot create a virtual environment; install it with:" >&2
        echo "    sudo apt-get install -y python3-venv" >&2
        exit 1
    }
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check pebble loky
python="$venv/bin/python"
mkdir -p bench/out
out=bench/out/results.jsonl
: > "$out"
./target/release/corral-bench floor | tee -a "$out"
./target/release/corral-bench spawn | tee -a "$out"
./target/release/procspawn-bench | tee -a "$out"
./target/release/corral-bench pipe | tee -a "$out"
"$python" bench/python/process_bench.py | tee -a "$out"
./target/release/corral-bench pool | tee -a "$out"
"$python" bench/python/pool_bench.py | tee -a "$out"
./target/release/corral-bench queue | tee -a "$out"
"$python" bench/python/queue_bench.py | tee -a "$out"
./target/release/corral-bench connection | tee -a "$out"
"$python" bench/python/connection_bench.py | tee -a "$out"
./target/release/corral-bench manager | tee -a "$out"
"$python" bench/python/manager_bench.py | tee -a "$out"
"$python" bench/report.py "$out" > bench/RESULTS.md
echo "wrote bench/RESULTS.md"

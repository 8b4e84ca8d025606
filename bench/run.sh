#!/usr/bin/env bash
# Runs every benchmark side by side in one session and writes bench/RESULTS.md.
# CORRAL_BENCH_QUICK=1 runs a tenth of the iterations (a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p corral-bench -p corral-cli
# The command runners beside `corral run`, in a prefix of this script's own
# (bench/.tools): GNU parallel from Debian's package, unpacked, not
# installed; rust-parallel from crates.io. One that cannot be had is
# reported absent by the benchmark, never faked.
tools=bench/.tools
if [ ! -x "$tools/parallel/usr/bin/parallel" ]; then
    (tmp=$(mktemp -d) && cd "$tmp" && apt-get download parallel >/dev/null 2>&1 \
        && dpkg -x parallel_*.deb "$OLDPWD/$tools/parallel"; rm -rf "$tmp") \
        || echo "bench/run.sh: GNU parallel unavailable (apt-get download parallel failed)" >&2
fi
if [ ! -x "$tools/bin/rust-parallel" ]; then
    cargo install -q --locked --root "$tools" rust-parallel \
        || echo "bench/run.sh: rust-parallel unavailable (cargo install rust-parallel failed)" >&2
fi
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
"$venv/bin/python" -m pip install -q --disable-pip-version-check pebble loky celery redis rq packaging
python="$venv/bin/python"
# corral for Python (crates/corral-py): a release wheel built by maturin,
# installed into the same environment as the Python anchors.
"$python" -m pip install -q --disable-pip-version-check "maturin>=1.5,<2" cloudpickle
rm -rf bench/out/wheel
VIRTUAL_ENV="$PWD/$venv" CARGO_TARGET_DIR=target/corral-py-build \
    "$venv/bin/maturin" build --release --quiet --out bench/out/wheel \
    --manifest-path crates/corral-py/Cargo.toml
"$python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps bench/out/wheel/*.whl
# The cluster benchmarks run on a redis-server of their own (a free
# loopback port, a password, no persistence), stopped when this ends.
command -v redis-server >/dev/null || {
    echo "bench/run.sh: the cluster benchmarks need redis-server; install it with:" >&2
    echo "    sudo apt-get install -y redis-server" >&2
    exit 1
}
redis_port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis_dir=$(mktemp -d)
redis-server --bind 127.0.0.1 --port "$redis_port" --requirepass bench --save '' \
    --appendonly no --dir "$redis_dir" --daemonize no >/dev/null &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; rm -rf "$redis_dir"' EXIT
export CORRAL_BENCH_REDIS="redis://:bench@127.0.0.1:$redis_port/0"
mkdir -p bench/out
rm -f bench/out/run-*.jsonl bench/out/hog.jsonl bench/out/hog-*.jsonl

# One run of every benchmark, appended to $1.
one_run() {
    local out=$1
    : > "$out"
    ./target/release/corral-bench floor | tee -a "$out"
    ./target/release/corral-bench spawn | tee -a "$out"
    ./target/release/procspawn-bench | tee -a "$out"
    ./target/release/corral-bench pipe | tee -a "$out"
    "$python" bench/python/process_bench.py | tee -a "$out"
    ./target/release/corral-bench pool | tee -a "$out"
    "$python" bench/python/pool_bench.py | tee -a "$out"
    "$python" bench/python/corral_py_bench.py | tee -a "$out"
    ./target/release/corral-bench queue | tee -a "$out"
    "$python" bench/python/queue_bench.py | tee -a "$out"
    ./target/release/corral-bench connection | tee -a "$out"
    "$python" bench/python/connection_bench.py | tee -a "$out"
    ./target/release/corral-bench manager | tee -a "$out"
    "$python" bench/python/manager_bench.py | tee -a "$out"
    ./target/release/corral-bench cluster | tee -a "$out"
    "$python" bench/python/cluster_bench.py | tee -a "$out"
    ./target/release/corral-bench runner | tee -a "$out"
}

# Every figure is the median of CORRAL_BENCH_RUNS whole runs (5 by
# default), reported with its spread; then CORRAL_BENCH_HOG_RUNS more runs
# (3 by default) with a CPU hog (a busy loop pinned to CPU 0) show what a
# busy machine costs each figure, as their median: one run alone drew
# whatever phase the host was in (bench/README.md, "2026-12-04: the hog
# figures as medians").
runs=${CORRAL_BENCH_RUNS:-5}
for i in $(seq 1 "$runs"); do
    echo "== run $i of $runs" >&2
    one_run "bench/out/run-$i.jsonl"
done
if [ "${CORRAL_BENCH_HOG:-1}" != 0 ]; then
    hog_runs=${CORRAL_BENCH_HOG_RUNS:-3}
    taskset -c 0 sh -c 'while :; do :; done' &
    hog=$!
    trap 'kill $hog $redis_pid 2>/dev/null; rm -rf "$redis_dir"' EXIT
    for i in $(seq 1 "$hog_runs"); do
        echo "== run $i of $hog_runs under a CPU hog pinned to CPU 0" >&2
        one_run "bench/out/hog-$i.jsonl"
    done
    kill "$hog"
    trap 'kill $redis_pid 2>/dev/null; rm -rf "$redis_dir"' EXIT
fi
"$python" bench/report.py bench/out > bench/RESULTS.md
echo "wrote bench/RESULTS.md"

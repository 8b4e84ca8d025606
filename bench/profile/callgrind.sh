#!/usr/bin/env bash
# Instructions per `map` item, counted by callgrind (repeatable whatever
# else the machine does; this machine has no hardware counters). Runs
# `map-profile` twice under callgrind, every process and thread counted (the
# parent, its pool thread, the fork server, the workers), with A and B maps
# of ITEMS items, and prints the difference per item, per role and per
# function: the steady state, without start-up and warm-up.
#
#   bench/profile/callgrind.sh [ITEMS] [KIND] [A] [B]    (100000, encoded, 2, 6)
#   (KIND as for run.sh: `encoded`, `each`, `pod`, or a chunk size)
#
# corral needs `pidfd_open`, which valgrind knows from 3.20 on; Debian 12
# ships 3.19. Without a newer one on PATH, this unpacks Debian 13's package
# into bench/.tools/valgrind (no root needed, nothing installed).
set -euo pipefail
cd "$(dirname "$0")/../.."
items=${1:-100000}
kind=${2:-encoded}
rounds_a=${3:-2}
rounds_b=${4:-6}
deb=http://deb.debian.org/debian/pool/main/v/valgrind/valgrind_3.24.0-3_amd64.deb

# The valgrind to use: the one on PATH if it knows pidfd_open (3.20+), else
# Debian 13's, unpacked once.
valgrind_cmd() {
    if command -v valgrind >/dev/null &&
        valgrind --version | awk -F'[-.]' '{exit !($2 > 3 || ($2 == 3 && $3 >= 20))}'; then
        echo valgrind
        return
    fi
    local dir=bench/.tools/valgrind
    if [[ ! -x $dir/usr/bin/valgrind.bin ]]; then
        command -v dpkg >/dev/null && command -v curl >/dev/null || {
            echo "callgrind.sh needs valgrind 3.20 or later on PATH" >&2
            exit 1
        }
        mkdir -p "$dir"
        curl -fsS -o "$dir/valgrind.deb" "$deb" || {
            echo "could not fetch $deb: install valgrind 3.20 or later" >&2
            exit 1
        }
        dpkg -x "$dir/valgrind.deb" "$dir"
    fi
    echo "env VALGRIND_LIB=$PWD/$dir/usr/libexec/valgrind $PWD/$dir/usr/bin/valgrind.bin"
}

vg=$(valgrind_cmd)
cargo build --release -q -p corral-bench --bin map-profile
out=bench/out/callgrind
rm -rf "$out"
for rounds in "$rounds_a" "$rounds_b"; do
    mkdir -p "$out/$rounds"
    $vg --tool=callgrind --trace-children=yes --separate-threads=yes \
        --callgrind-out-file="$PWD/$out/$rounds/cg.%p" \
        target/release/map-profile "$items" "$rounds" "$kind" >"$out/$rounds.log" 2>&1 || {
        echo "map-profile failed under callgrind: see $out/$rounds.log" >&2
        exit 1
    }
done
python3 bench/profile/callgrind_summary.py "$out/$rounds_a" "$out/$rounds_b" \
    "$items" "$rounds_a" "$rounds_b"

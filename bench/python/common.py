"""What every Python anchor script shares: the JSON line format and the
quick-run switch (CORRAL_BENCH_QUICK=1 runs a tenth of the iterations)."""
import json
import os
import sys

QUICK = bool(os.environ.get("CORRAL_BENCH_QUICK"))
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"


def emit(name, value, unit):
    """Prints one figure, named after this Python (`python3.11 <name>`)."""
    print(json.dumps({"name": f"{PY} {name}", "value": round(value, 4), "unit": unit}), flush=True)


def n(full):
    """`full` iterations, or a tenth of them in a quick run."""
    return max(1, full // 10) if QUICK else full

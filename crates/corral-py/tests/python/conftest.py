import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import corral  # first: the fork server is a copy of this interpreter

HERE = os.path.dirname(os.path.abspath(__file__))

# The scripts below are interrupted as a user at a terminal would (Ctrl-C).
# A runner started in the background of a non-interactive shell has SIGINT
# ignored, which its children would inherit (and Python keeps an ignored
# SIGINT ignored); with a handler here instead, exec gives them the default.
signal.signal(signal.SIGINT, signal.default_int_handler)


def children_of(pid):
    """The pids of a process's live children (zombies, and those being
    reaped, excluded)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X", "x"):
            kids.append(int(entry))
    return kids


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    # Z: a zombie awaiting its reaper; X: being reaped (seen for an instant).
    return state not in ("Z", "X", "x")


def wait_until(predicate, timeout, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture
def script(tmp_path):
    """Writes a script (with the tests' directory importable) and returns a
    function that starts it."""

    def start(code, **kwargs):
        path = tmp_path / "main.py"
        path.write_text(textwrap.dedent(code))
        env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        return subprocess.Popen(
            [sys.executable, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            **kwargs,
        )

    return start


def finish(proc, timeout=60):
    """The output of a started script, killing it if it outlives `timeout`."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the script hung\nstdout: {out}\nstderr: {err}")
    return proc.returncode, out, err

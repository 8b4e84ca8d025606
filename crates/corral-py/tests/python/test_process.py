"""corral.Process: multiprocessing.Process's lessons, one to one."""

import signal

import pytest

import corral
import tasks


def test_exit_codes_as_python_gives_them():
    ok = corral.Process(target=tasks.square, args=(3,))
    ok.start()
    ok.join(timeout=10)
    assert ok.exitcode == 0 and not ok.is_alive()

    raised = corral.Process(target=tasks.fail, args=("x",))
    raised.start()
    raised.join(timeout=10)
    assert raised.exitcode == 1

    exits = corral.Process(target=tasks.exit_hard, args=(3,))
    exits.start()
    exits.join(timeout=10)
    assert exits.exitcode == 3


def test_join_with_a_timeout_terminate_and_kill():
    p = corral.Process(target=tasks.nap, args=(100,), name="napper")
    p.start()
    p.join(timeout=0.1)
    assert p.is_alive() and p.exitcode is None and p.pid
    p.terminate()
    p.join(timeout=10)
    assert p.exitcode == -signal.SIGTERM

    q = corral.Process(target=tasks.nap, args=(100,), daemon=True)
    q.start()
    q.kill()
    q.join(timeout=10)
    assert q.exitcode == -signal.SIGKILL


class Doubler(corral.Process):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def run(self):
        with open(self.path, "w") as f:
            f.write("ran")


def test_a_subclass_runs_its_run_method(tmp_path):
    p = Doubler(str(tmp_path / "out"))
    p.start()
    p.join(timeout=10)
    assert p.exitcode == 0
    assert (tmp_path / "out").read_text() == "ran"


def test_start_twice_is_an_error():
    p = corral.Process(target=tasks.square, args=(1,))
    p.start()
    with pytest.raises(AssertionError):
        p.start()
    p.join(timeout=10)

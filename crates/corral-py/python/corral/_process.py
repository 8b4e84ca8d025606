"""``corral.Process``: ``multiprocessing.Process`` on corral (its children
die with their parent, even when it is SIGKILLed)."""

import sys

from . import _corral, _support

__all__ = ["Process"]


class Process:
    """Runs ``target(*args, **kwargs)`` (or an overridden :meth:`run`) in a
    child process, as ``multiprocessing.Process`` does."""

    def __init__(self, group=None, target=None, name=None, args=(), kwargs=None, *, daemon=None):
        assert group is None, "group argument must be None for now"
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self.name = name
        self.daemon = bool(daemon)
        self._child = None

    def run(self):
        """What the child runs: ``target(*args, **kwargs)``; override it in a
        subclass to run something else."""
        if self._target is not None:
            self._target(*self._args, **self._kwargs)

    def start(self):
        if self._child is not None:
            raise AssertionError("cannot start a process twice")
        if type(self).run is Process.run:
            func, args, kwargs = self._target or (lambda: None), self._args, self._kwargs
        else:
            func, args, kwargs = self.run, (), {}
        main = _support.main_path()
        self._child = _corral._Process(
            _support.dump_function(_support.process_main),
            ((list(sys.path), main, _support.function_bytes(func), args, kwargs), {}),
            self.name,
            self.daemon,
        )

    def _started(self):
        if self._child is None:
            raise ValueError("the process has not been started")
        return self._child

    def join(self, timeout=None):
        """Waits for the child to end, at most ``timeout`` seconds."""
        self._started().join(timeout)

    def is_alive(self):
        return self._child is not None and self._child.is_alive()

    @property
    def exitcode(self):
        """``None`` while it runs; 0 after success, 1 after an exception,
        the ``sys.exit`` code, or ``-N`` when killed by signal N."""
        return None if self._child is None else self._child.exitcode

    @property
    def pid(self):
        return None if self._child is None else self._child.pid

    ident = pid

    def terminate(self):
        """SIGTERM."""
        self._started().terminate()

    def kill(self):
        """SIGKILL."""
        self._started().kill()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_child"] = None
        return state

"""corral's exceptions: every way a task can fail besides raising."""

import concurrent.futures

__all__ = [
    "TaskFailed",
    "WorkerLost",
    "TaskTimedOut",
    "MemoryExceeded",
    "Cancelled",
    "PoolClosed",
    "RemoteTraceback",
]


class TaskFailed(Exception):
    """A task ended without a value or an exception of its own."""


class WorkerLost(TaskFailed):
    """The worker running the task died (a signal, ``os._exit``, the OOM
    killer). Only this task failed; the worker was replaced.

    ``signal`` or ``exitcode`` says how it died; ``pid`` is its pid."""

    def __init__(self, message, signal=None, exitcode=None, pid=None):
        super().__init__(message)
        self.signal = signal
        self.exitcode = exitcode
        self.pid = pid


class TaskTimedOut(TaskFailed, TimeoutError):
    """The task ran past its timeout; its worker was killed and replaced.
    ``timeout`` is the limit in seconds."""

    def __init__(self, message, timeout=None, pid=None):
        super().__init__(message)
        self.timeout = timeout
        self.pid = pid


class MemoryExceeded(TaskFailed, MemoryError):
    """The task went over the pool's ``memory_limit`` (``limit``, bytes)."""

    def __init__(self, message, limit=None, pid=None):
        super().__init__(message)
        self.limit = limit
        self.pid = pid


class Cancelled(TaskFailed, concurrent.futures.CancelledError):
    """The task was cancelled (before it started, or its worker was killed)."""


class PoolClosed(TaskFailed, ValueError, RuntimeError):
    """The pool no longer accepts work (closed, terminated or shut down)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, chained as the
    ``__cause__`` of the exception re-raised in the parent."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return '\n"""\n' + self.tb + '"""'

"""``corral.Pool``: ``multiprocessing.Pool``'s interface on corral's
supervisor."""

import functools
import sys

from . import _corral, _lifecycle, _support
from ._errors import PoolClosed

__all__ = ["Pool", "AsyncResult"]

# How a callable takes its argument (see the extension's `Mode`).
_ONE, _STAR = 0, 1


def _refuse_while_bootstrapping():
    if _support.loading_main:
        raise RuntimeError(
            "a corral pool was created while a worker was loading the main module: "
            "guard the code that creates pools with\n\n"
            '    if __name__ == "__main__":\n        ...\n\n'
            "(the main module runs again in workers as __mp_main__, as with "
            "multiprocessing's spawn and forkserver start methods)"
        )


#: The result of ``apply_async`` (``multiprocessing``'s ``AsyncResult``):
#: ``get(timeout)``, ``wait(timeout)``, ``ready()``, ``successful()``, and
#: ``cancel()`` (a running task's worker is killed and replaced),
#: ``worker_pid``, ``add_done_callback(f)`` (``f()`` once it has ended).
AsyncResult = _corral.AsyncResult


def _run_callbacks(task, callback, error_callback):
    try:
        value = task.outcome()
    except BaseException as e:
        if error_callback is not None:
            error_callback(e)
        return
    if callback is not None:
        callback(value)


class Pool:
    """A pool of worker processes that cannot hang.

    ``multiprocessing.Pool``'s methods, on corral's supervisor: a worker that
    dies (a signal, ``os._exit``, the OOM killer) fails only its own task with
    :class:`WorkerLost` and is replaced; ``task_timeout`` (seconds) kills a
    task that runs too long (:class:`TaskTimedOut`); ``memory_limit`` (bytes)
    caps each worker; ``max_pending`` makes submitting block beyond that many
    waiting tasks; with ``maxtasksperchild``, a batch of a ``map`` counts as
    one task (as a chunk does in ``multiprocessing``). Workers are forked
    from corral's fork server, a copy of the interpreter taken when
    ``corral`` was imported; functions defined in the main script are found
    by running it as ``__mp_main__`` in the worker, so guard pool creation
    with ``if __name__ == "__main__":``.
    """

    def __init__(
        self,
        processes=None,
        initializer=None,
        initargs=(),
        maxtasksperchild=None,
        task_timeout=None,
        memory_limit=None,
        max_pending=None,
    ):
        _refuse_while_bootstrapping()
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        main = _support.main_path()
        user_init = None if initializer is None else _support.function_bytes(initializer)
        init = (
            _support.dump_function(_support.worker_init),
            (list(sys.path), main, user_init, tuple(initargs)),
        )
        self._pool = _corral._Pool(
            processes, init, maxtasksperchild, task_timeout, memory_limit, max_pending
        )
        self._closed = False
        _lifecycle.track(self)

    def _check(self):
        if self._closed:
            raise PoolClosed("Pool not running")


    def apply(self, func, args=(), kwds={}):
        """``func(*args, **kwds)`` in a worker; waits for the result."""
        self._check()
        return self._pool.apply(func, args, kwds)

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None, timeout=None):
        """Submits ``func(*args, **kwds)``; an :class:`AsyncResult`.

        ``callback(value)`` or ``error_callback(exception)`` runs once it
        ends, on corral's callback thread. ``timeout`` (seconds) is this
        task's own limit, as ``task_timeout`` for the pool."""
        if self._closed:
            raise PoolClosed("Pool not running")
        task = self._pool.submit(func, args, kwds, timeout)
        if callback is not None or error_callback is not None:
            task.add_done_callback(
                functools.partial(_run_callbacks, task, callback, error_callback)
            )
        return task

    def submit(self, func, /, *args, **kwargs):
        """``func(*args, **kwargs)``; an :class:`AsyncResult` (pebble's
        ``schedule``, without callbacks)."""
        return self.apply_async(func, args, kwargs)

    def map(self, func, iterable, chunksize=None):
        """``[func(x) for x in iterable]`` in the workers, in order; raises the
        first failure. Items travel in batches of ``chunksize`` (by default
        some eight batches a worker, at most 4096 items each) that a worker
        runs item by item, so an item's exception is its own. A batch whose
        worker dies runs again one task per item, so only the item that
        killed it fails (:class:`WorkerLost`); the items before it in its
        batch may run twice. With ``chunksize=1``, or a pool with a
        ``task_timeout`` (each item's own limit), every item is a task of its
        own."""
        self._check()
        return self._pool.map(func, _ONE, iterable, chunksize)

    def starmap(self, func, iterable, chunksize=None):
        """``[func(*args) for args in iterable]`` in the workers, in order."""
        self._check()
        return self._pool.map(func, _STAR, (tuple(a) for a in iterable), chunksize)

    def imap(self, func, iterable, chunksize=None):
        """A lazy iterator of ``func(x)`` in input order: input is pulled as
        results are consumed (an endless generator is fine). Each outcome is
        its own: ``next`` raises an item's exception and the iteration goes
        on. With ``chunksize`` above one, items travel in batches as in
        :meth:`map` (four batches a worker pulled ahead); otherwise each item
        is a task of its own, in corral's automatic chunks."""
        self._check()
        return self._pool.imap(func, _ONE, iterable, True, chunksize)

    def imap_unordered(self, func, iterable, chunksize=None):
        """As :meth:`imap`, in the order results arrive; each item is a task
        of its own, in chunks of ``chunksize`` (automatic by default)."""
        self._check()
        return self._pool.imap(func, _ONE, iterable, False, chunksize)

    def close(self):
        """Accepts no more tasks; submitted ones still run."""
        self._closed = True
        self._pool.close()

    def terminate(self):
        """Stops at once: workers killed, unfinished tasks cancelled."""
        self._closed = True
        self._pool.terminate()

    def join(self, timeout=None):
        """Waits for the workers to exit, after :meth:`close` or
        :meth:`terminate`; with ``timeout``, at most that many seconds
        (returns whether they did)."""
        if not self._closed:
            raise ValueError("Pool is still running")
        return self._pool.join(timeout)

    def stats(self):
        """Counters: submitted, completed, failed, timed_out, lost, workers."""
        return self._pool.stats()

    @property
    def processes(self):
        return self._pool.processes

    def worker_pids(self):
        """The pids of the live workers."""
        return self._pool.worker_pids()

    def __enter__(self):
        self._check()
        return self

    def __exit__(self, *exc):
        self.terminate()

    def __reduce__(self):
        raise NotImplementedError(
            "pool objects cannot be passed between processes or pickled"
        )

"""``corral.ProcessPoolExecutor``: a ``concurrent.futures.Executor`` on
corral's supervisor. One dead worker fails one future; the executor is never
broken."""

import concurrent.futures
import functools
import itertools

from . import _lifecycle, _support
from ._errors import Cancelled, PoolClosed
from ._pool import Pool

__all__ = ["ProcessPoolExecutor"]


class _Waiters(list):
    """A future's waiter list: ``concurrent.futures.wait`` and
    ``as_completed`` add to it, which is when the future must be told of its
    task's end without anyone waiting on the task itself."""

    def append(self, waiter):
        super().append(waiter)
        self.future._watch()


class _Future(concurrent.futures.Future):
    """A future settled from its corral task: by whoever waits on it
    (``result``, ``exception``), or, once something needs to be told
    (``add_done_callback``, ``wait``, ``as_completed``, ``asyncio``), by
    corral's callback thread. Its ``cancel`` also reaches a task that already
    runs (its worker is killed and replaced)."""

    def __init__(self, task):
        super().__init__()
        self._task = task
        self._watched = False
        self._waiters = _Waiters()
        self._waiters.future = self

    def _watch(self):
        if not self._watched:
            self._watched = True
            self._task.add_done_callback(functools.partial(_settle, self, self._task))

    def _settle_if_ended(self):
        if not super().done() and self._task.done():
            _settle(self, self._task)

    def add_done_callback(self, fn):
        self._watch()
        super().add_done_callback(fn)

    def done(self):
        self._settle_if_ended()
        return super().done()

    def running(self):
        self._settle_if_ended()
        return super().running()

    def cancel(self):
        if self.done():
            return False
        self._task.cancel()
        return super().cancel()

    def _wait(self, timeout):
        # Waits on the task itself, then settles the future here.
        if not super().done() and self._task.wait(timeout):
            _settle(self, self._task)

    def result(self, timeout=None):
        self._wait(timeout)
        return super().result(timeout=0)

    def exception(self, timeout=None):
        self._wait(timeout)
        return super().exception(timeout=0)


def _settle(future, task):
    """Sets the future from its task's outcome (once: the waiter and the
    callback thread may both get here)."""
    try:
        try:
            value = task.outcome()
        except Cancelled:
            # The base class's cancel: true also when already cancelled.
            if concurrent.futures.Future.cancel(future):
                future.set_running_or_notify_cancel()
            return
        except BaseException as e:
            future.set_exception(e)
            return
        future.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass


def _run_chunk(fn, chunk):
    return [fn(*args) for args in chunk]


class ProcessPoolExecutor(concurrent.futures.Executor):
    """``concurrent.futures.ProcessPoolExecutor``'s interface, with corral's
    promises: no ``BrokenProcessPool``, ever (a dead worker fails only its own
    future with :class:`WorkerLost`); ``task_timeout`` and ``memory_limit`` as
    for :class:`Pool`; ``cancel()`` works on running futures too. Futures are
    ``concurrent.futures.Future`` objects: ``wait``, ``as_completed`` and
    ``asyncio.wrap_future`` take them."""

    def __init__(
        self,
        max_workers=None,
        initializer=None,
        initargs=(),
        *,
        max_tasks_per_child=None,
        task_timeout=None,
        memory_limit=None,
        max_pending=None,
    ):
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._pool = Pool(
            max_workers,
            initializer,
            initargs,
            max_tasks_per_child,
            task_timeout,
            memory_limit,
            max_pending,
        )
        self._shutdown = False
        _lifecycle.track(self)

    def submit(self, fn, /, *args, **kwargs):
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        task = self._pool._pool.submit(fn, args, kwargs)
        return _Future(task)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        args = zip(*iterables)
        chunks = iter(lambda: list(itertools.islice(args, chunksize)), [])
        results = super().map(_run_chunk, itertools.repeat(fn), chunks, timeout=timeout)
        return itertools.chain.from_iterable(results)

    def shutdown(self, wait=True, *, cancel_futures=False):
        if self._shutdown and not wait:
            return
        self._shutdown = True
        self._pool._closed = True
        self._pool._pool.shutdown(cancel_futures)
        if wait:
            self._pool._pool.join(None)

    def terminate(self):
        """Stops at once: workers killed, unfinished futures cancelled."""
        self._shutdown = True
        self._pool.terminate()

    def stats(self):
        return self._pool.stats()

    def worker_pids(self):
        return self._pool.worker_pids()

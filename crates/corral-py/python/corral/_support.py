"""The Python half of the engine: pickling, loading callables and the main
module in workers, packing exceptions, the fork and exit hooks. Called from
the extension module; not API."""

import os
import pickle
import sys
import traceback
from itertools import starmap

from . import _errors

try:
    import cloudpickle
except ImportError:  # pragma: no cover - a dependency, but optional here
    cloudpickle = None

#: True in a worker while it runs the parent's main script as __mp_main__:
#: a pool created then is the missing ``if __name__ == "__main__":`` guard.
loading_main = False


def dumps(obj):
    """Pickle ``obj``; with cloudpickle what pickle cannot (lambdas, local
    functions, classes of an interactive session)."""
    try:
        return pickle.dumps(obj, protocol=5)
    except (pickle.PicklingError, AttributeError, TypeError):
        if cloudpickle is None:
            raise
        return cloudpickle.dumps(obj, protocol=5)


loads = pickle.loads

_functions = {}


_main = (None, None)


def main_path():
    """The path of the main script, if it has one (not ``python -c``, a
    REPL or a notebook)."""
    global _main
    main = sys.modules.get("__main__")
    if _main[0] is main:
        return _main[1]
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if path is not None and (spec is None or spec.name == "__main__"):
        path = os.path.abspath(path)
    else:
        # No file, or ``python -m pkg.mod``: importable by name.
        path = None
    _main = (main, path)
    return path


def function_bytes(f):
    """``f`` pickled for a worker: by reference where the worker can import
    it, by value (cloudpickle) where it cannot (lambdas, local functions,
    functions of ``__main__`` without a file)."""
    if not callable(f):
        raise TypeError(f"{f!r} is not callable")
    module = getattr(f, "__module__", None)
    if module == "__main__" and main_path() is None and cloudpickle is not None:
        return cloudpickle.dumps(f, protocol=5)
    return dumps(f)


def dump_function(f):
    """``f`` as the engine takes it (a ``_corral._Func``), made once per
    function object."""
    from . import _corral

    key = id(f)
    hit = _functions.get(key)
    if hit is not None and hit[0] is f:
        return hit[1]
    func = _corral._Func(function_bytes(f), main_path())
    if len(_functions) > 1024:
        _functions.clear()
    _functions[key] = (f, func)
    return func


def _run_main(path):
    """Runs the parent's main script as ``__mp_main__`` and makes it this
    worker's ``__main__``, as multiprocessing's spawn and forkserver do."""
    global loading_main
    import runpy
    import types

    module = types.ModuleType("__mp_main__")
    loading_main = True
    try:
        module.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))
    finally:
        loading_main = False
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


_main_loaded = False


def load_function(data, main):
    """The callable pickled in ``data``. A function of the parent's main
    script is found by running that script as ``__mp_main__`` (once)."""
    global _main_loaded
    try:
        return pickle.loads(data)
    except AttributeError:
        if main is None or _main_loaded:
            raise
    _main_loaded = True
    _run_main(main)
    return pickle.loads(data)


def pack_exception(exc):
    """``exc`` and its formatted traceback, pickled; an exception that
    cannot cross (gh-79492) is replaced by a RuntimeError saying what it was."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        data = pickle.dumps((exc, tb), protocol=5)
        pickle.loads(data)
        return data
    except Exception as e:
        stand_in = RuntimeError(
            f"{type(exc).__qualname__}: {exc} (the exception itself could not be "
            f"pickled: {e!r})"
        )
        return pickle.dumps((stand_in, tb), protocol=5)


def run_batch(f, mode, items):
    """Runs a batch of a ``map`` in a worker: ``f`` on each item (``mode`` 1:
    ``f(*item)``), each failing alone. Returns the values pickled as one list,
    with None where an item failed, and ``[(position, packed exception)]``."""
    calls = map(f, items) if mode == 0 else starmap(f, items)
    values, failed = [], []
    while True:
        # At C speed until an item raises; the map goes on after it.
        try:
            values.extend(calls)
            break
        except Exception as e:
            failed.append((len(values), pack_exception(e)))
            values.append(None)
    try:
        return dumps(values), failed
    except Exception:
        pass
    # A value pickle cannot take fails alone, as it would on its own.
    for i, value in enumerate(values):
        try:
            dumps(value)
        except Exception as e:
            failed.append((i, pack_exception(e)))
            values[i] = None
    failed.sort(key=lambda entry: entry[0])
    return dumps(values), failed


def remote_error(data):
    """The exception a worker raised, with its traceback as ``__cause__``."""
    exc, tb = pickle.loads(data)
    exc.__cause__ = _errors.RemoteTraceback(tb)
    return exc


def task_error(kind, message, signal, exitcode, pid, seconds, limit):
    """The exception for a task that failed without raising."""
    if kind == "lost":
        return _errors.WorkerLost(message, signal=signal, exitcode=exitcode, pid=pid)
    if kind == "timeout":
        return _errors.TaskTimedOut(message, timeout=seconds, pid=pid)
    if kind == "memory":
        return _errors.MemoryExceeded(message, limit=limit, pid=pid)
    if kind == "cancelled":
        return _errors.Cancelled(message)
    if kind == "closed":
        return _errors.PoolClosed(message)
    return _errors.TaskFailed(message)


def worker_init(sys_path, main, initializer, initargs):
    """Every pool worker's initializer: the parent's import path as it was
    when the pool was made (as multiprocessing's spawn and forkserver give
    it), then the user's initializer, if any (pickled by ``dump_function``)."""
    sys.path[:] = sys_path
    if initializer is not None:
        load_function(initializer, main)(*initargs)


def process_main(sys_path, main, target, args, kwargs):
    """What a ``corral.Process`` child runs."""
    sys.path[:] = sys_path
    return load_function(target, main)(*args, **kwargs)


in_child = False


def after_fork_in_child():
    """First Python code in every corral child."""
    global in_child
    in_child = True
    from . import _lifecycle

    _lifecycle.forget_parent_pools()


def at_worker_exit():
    """A child ends with ``_exit``: flush what Python buffered."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def report_process_exception(data):
    """A ``Process`` target raised: print it in the child, as Python does."""
    exc, tb = pickle.loads(data)
    sys.stderr.write(f"Process {os.getpid()}:\n{tb}")
    sys.stderr.flush()

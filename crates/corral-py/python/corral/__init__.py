"""corral: a process pool that cannot hang.

``corral.Pool`` has ``multiprocessing.Pool``'s methods and
``corral.ProcessPoolExecutor`` is a ``concurrent.futures.Executor``, both on
corral's supervisor (written in Rust): a worker that dies fails only its own
task (:class:`WorkerLost`) and is replaced, ``task_timeout`` kills a hung
task (:class:`TaskTimedOut`), no worker outlives a killed parent, and
``imap`` pulls its input lazily. Linux only.

Import ``corral`` early: its fork server is a copy of the interpreter taken
at import, and functions of your main script are found in workers by running
it as ``__mp_main__``, so guard the code that starts pools::

    import corral

    def square(x):
        return x * x

    if __name__ == "__main__":
        with corral.Pool(4, task_timeout=30) as pool:
            print(pool.map(square, range(10)))
"""

import sys as _sys

from ._errors import (
    Cancelled,
    MemoryExceeded,
    PoolClosed,
    RemoteTraceback,
    TaskFailed,
    TaskTimedOut,
    WorkerLost,
)
from ._executor import ProcessPoolExecutor
from ._pool import AsyncResult, Pool
from ._process import Process
from . import _corral

__all__ = [
    "Pool",
    "AsyncResult",
    "ProcessPoolExecutor",
    "Process",
    "TaskFailed",
    "WorkerLost",
    "TaskTimedOut",
    "MemoryExceeded",
    "Cancelled",
    "PoolClosed",
    "RemoteTraceback",
]


def _reexec_command():
    """What a re-executed child runs (a fork server started after threads
    were running): this interpreter, with this process's import path, importing
    corral; corral then takes the child's role."""
    code = f"import sys; sys.path[:0] = {list(_sys.path)!r}; import corral"
    return [_sys.executable, "-c", code]


# Objects of main-script classes come back from workers as __mp_main__'s
# (the name the script runs under there), as in multiprocessing.
_sys.modules.setdefault("__mp_main__", _sys.modules.get("__main__"))

# Last: the fork server is forked now, a copy of the interpreter with this
# package complete. In a re-executed child, this call runs its role.
_corral._init(_reexec_command())

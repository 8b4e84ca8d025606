"""Pools and executors still open when the interpreter exits are
terminated (their workers killed), so that exit never waits on a hung task."""

import atexit
import weakref

_live = weakref.WeakSet()


def track(pool):
    _live.add(pool)


def forget_parent_pools():
    """In a child: the parent's pools are not ours."""
    _live.clear()


@atexit.register
def _terminate_all():
    for pool in list(_live):
        try:
            pool.terminate()
        except Exception:
            pass

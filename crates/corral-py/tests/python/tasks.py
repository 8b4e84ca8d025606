"""Functions the tests run in workers (importable by reference)."""

import os
import random
import signal
import time


def square(x):
    return x * x


def add(a, b=0, *, c=0):
    return a + b + c


def pid(_=None):
    return os.getpid()


def rnd(_=None):
    return random.random()


def nap(seconds):
    time.sleep(seconds)
    return seconds


def fail(message):
    raise KeyError(message)


def kill_self(_=None):
    os.kill(os.getpid(), signal.SIGKILL)


def exit_hard(code):
    os._exit(code)


def kill_at(x, at=3):
    if x == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def allocate(nbytes):
    return len(bytearray(nbytes))


def returns_lambda(_=None):
    return lambda: 1


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("not today")


def raises_unpicklable(_=None):
    raise Unpicklable("bad")


def identity(x):
    return x


def maybe_block(i):
    """The seeds' story: some tasks block for 2 s."""
    if i % 16 == 0:
        time.sleep(2)
    return i


def nested_executor_fails(_=None):
    """A task that runs its own executor, whose task raises."""
    import corral

    with corral.ProcessPoolExecutor(2) as ex:
        return ex.submit(fail, "inner").result(timeout=10)


def nested_pool(n):
    import corral

    with corral.Pool(2) as pool:
        return sum(pool.map(square, range(n)))


def pulled_counter():
    """An endless generator that counts what it yields (in the parent)."""
    state = {"pulled": 0}

    def gen():
        i = 0
        while True:
            state["pulled"] += 1
            yield i
            i += 1

    return state, gen()


def nap_marked(path, seconds):
    """Marks that it started (a file), then naps."""
    open(path, "w").close()
    time.sleep(seconds)
    return seconds


def returns_lock(_=None):
    import threading

    return threading.Lock()


def set_env(key, value):
    os.environ[key] = value


def get_env(key):
    return os.environ.get(key)


def logged(path, x, kill_at=None):
    """Appends ``x`` to the file at ``path`` (one line per run); SIGKILLs its
    worker instead when ``x == kill_at``."""
    if x == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x


def kill_once(marker, x):
    """SIGKILLs its worker the first time any item runs it (``marker`` is
    created then); returns ``x * x`` every other time."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return x * x
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def fail_odd(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x

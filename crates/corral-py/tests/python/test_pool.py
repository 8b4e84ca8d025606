"""corral.Pool with real worker processes."""

import functools
import itertools
import os
import select
import signal
import time

import pytest

import corral
import tasks
from conftest import alive, children_of, wait_until


@pytest.fixture
def pool():
    p = corral.Pool(2)
    yield p
    p.terminate()
    assert p.join(timeout=10)


def test_round_trip_and_multiprocessing_methods(pool):
    assert pool.apply(tasks.square, (7,)) == 49
    assert pool.apply(tasks.add, (1,), {"b": 2, "c": 3}) == 6
    assert pool.apply_async(tasks.add, (1, 2)).get(timeout=10) == 3
    assert pool.map(tasks.square, range(100)) == [x * x for x in range(100)]
    assert pool.map(tasks.square, range(100), chunksize=7) == [x * x for x in range(100)]
    assert pool.starmap(tasks.add, [(1, 2), (3, 4)]) == [3, 7]
    assert list(pool.imap(tasks.square, range(10))) == [x * x for x in range(10)]
    assert sorted(pool.imap_unordered(tasks.square, range(10), chunksize=3)) == sorted(
        x * x for x in range(10)
    )
    # Values that cross natively and pickled ones.
    values = [None, True, 2**70, -3, 1.5, "é", b"\x00", [1, (2, {3: 4})], {1, 2}]
    assert pool.map(tasks.identity, values) == values


def test_workers_are_separate_processes_with_their_own_random_state(pool):
    pids = set(pool.map(tasks.pid, range(50), chunksize=1))
    assert os.getpid() not in pids and pids <= set(pool.worker_pids()) | pids
    draws = pool.map(tasks.rnd, range(8), chunksize=1)
    assert len(set(draws)) == len(draws)


def test_a_raised_exception_comes_back_with_the_remote_traceback(pool):
    with pytest.raises(KeyError) as info:
        pool.apply(tasks.fail, ("k",))
    cause = info.value.__cause__
    assert isinstance(cause, corral.RemoteTraceback)
    assert "in fail" in str(cause) and "KeyError: 'k'" in str(cause)
    # The pool goes on.
    assert pool.apply(tasks.square, (3,)) == 9


def test_a_killed_worker_fails_only_its_own_task(pool):
    results = [
        pool.apply_async(tasks.nap, (0.3,)),
        pool.apply_async(tasks.kill_self),
        pool.apply_async(tasks.nap, (0.3,)),
        pool.apply_async(tasks.square, (5,)),
    ]
    with pytest.raises(corral.WorkerLost) as info:
        results[1].get(timeout=10)
    assert info.value.signal == signal.SIGKILL
    assert info.value.pid is not None and info.value.pid != os.getpid()
    assert [results[i].get(timeout=10) for i in (0, 2, 3)] == [0.3, 0.3, 25]
    assert pool.apply(tasks.square, (9,)) == 81
    stats = pool.stats()
    assert stats["lost"] == 1 and stats["workers_replaced"] >= 1


def test_os_exit_in_a_task_is_a_lost_worker_with_its_code(pool):
    with pytest.raises(corral.WorkerLost) as info:
        pool.apply(tasks.exit_hard, (7,))
    assert info.value.exitcode == 7


def test_in_a_map_only_the_killer_item_fails():
    with corral.Pool(2) as pool:
        it = pool.imap(tasks.kill_at, range(8), chunksize=4)
        outcomes = []
        for _ in range(8):
            try:
                outcomes.append(next(it))
            except corral.WorkerLost:
                outcomes.append("lost")
        assert outcomes == [0, 1, 2, "lost", 4, 5, 6, 7]
        with pytest.raises(corral.WorkerLost):
            pool.map(tasks.kill_at, range(8))
        assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]


def test_a_map_batch_whose_worker_dies_runs_again_item_by_item(tmp_path):
    log = tmp_path / "log"
    with corral.Pool(2) as pool:
        # One batch of 8: item 5 kills the worker after 0..4 ran; then each
        # item runs as a task of its own, and only item 5 fails.
        with pytest.raises(corral.WorkerLost) as info:
            pool.starmap(tasks.logged, [(str(log), i, 5) for i in range(8)], chunksize=8)
        assert info.value.signal == signal.SIGKILL
        runs = [int(x) for x in log.read_text().split()]
        assert sorted(set(runs)) == [0, 1, 2, 3, 4, 6, 7]
        assert sorted(runs) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 6, 7]
        assert pool.stats()["lost"] == 2
        # A death the item did not cause: the map still returns every value.
        marker = str(tmp_path / "killed")
        xs = list(range(40))
        assert pool.map(functools.partial(tasks.kill_once, marker), xs, chunksize=10) == [
            x * x for x in xs
        ]
        assert pool.stats()["lost"] == 3


def test_a_map_raises_its_first_failure_in_order(pool):
    with pytest.raises(ValueError, match="odd 1") as info:
        pool.map(tasks.fail_odd, range(1000))
    assert isinstance(info.value.__cause__, corral.RemoteTraceback)
    assert "fail_odd" in str(info.value.__cause__)
    import threading

    values = [1, threading.Lock(), 3]
    with pytest.raises(TypeError, match="lock"):
        pool.map(tasks.identity, values, chunksize=3)  # an item cannot cross
    with pytest.raises(TypeError, match="lock"):
        pool.map(tasks.returns_lock, range(3), chunksize=3)  # a value cannot
    assert pool.map(tasks.fail_odd, range(0, 2000, 2)) == list(range(0, 2000, 2))


def test_imap_in_batches_keeps_each_items_outcome(pool):
    def outcomes(it, n):
        out = []
        for _ in range(n):
            try:
                out.append(next(it))
            except ValueError as e:
                out.append(str(e))
        return out

    it = pool.imap(tasks.fail_odd, range(6), chunksize=4)
    assert outcomes(it, 6) == [0, "odd 1", 2, "odd 3", 4, "odd 5"]
    with pytest.raises(StopIteration):
        next(it)
    # Lazy over an endless generator, a batch at a time.
    state, gen = tasks.pulled_counter()
    first = list(itertools.islice(pool.imap(tasks.square, gen, chunksize=10), 25))
    assert first == [x * x for x in range(25)]
    assert state["pulled"] < 25 + 10 * 8 * pool.processes

    def broken():
        yield 1
        yield 2
        raise ValueError("input broke")

    it = pool.imap(tasks.square, broken(), chunksize=4)
    assert next(it) == 1 and next(it) == 4
    with pytest.raises(ValueError, match="input broke"):
        next(it)


def test_a_hung_task_times_out_and_its_worker_is_replaced():
    with corral.Pool(2, task_timeout=0.5) as pool:
        hung = pool.apply_async(tasks.nap, (100,))
        quick = pool.apply_async(tasks.nap, (0.1,))
        start = time.monotonic()
        with pytest.raises(corral.TaskTimedOut) as info:
            hung.get(timeout=10)
        assert time.monotonic() - start < 5
        assert isinstance(info.value, TimeoutError) and info.value.timeout == 0.5
        assert quick.get(timeout=10) == 0.1
        assert pool.apply(tasks.square, (2,)) == 4
        # A task's own timeout.
        with pytest.raises(corral.TaskTimedOut):
            pool.apply_async(tasks.nap, (100,), timeout=0.2).get(timeout=10)


def test_get_with_a_timeout_raises_timeout_error_and_the_task_goes_on(pool):
    slow = pool.apply_async(tasks.nap, (0.5,))
    with pytest.raises(TimeoutError):
        slow.get(timeout=0.05)
    assert not slow.ready()
    assert slow.get(timeout=10) == 0.5
    assert slow.successful()


def test_memory_limit_fails_the_task_not_the_pool():
    with corral.Pool(1, memory_limit=256 << 20) as pool:
        with pytest.raises(MemoryError):
            pool.apply(tasks.allocate, (1 << 30,))
        assert pool.apply(tasks.allocate, (1 << 20,)) == 1 << 20


def test_cancel_kills_a_running_task_and_skips_a_waiting_one(tmp_path):
    started = tmp_path / "started"
    with corral.Pool(1) as pool:
        running = pool.apply_async(tasks.nap_marked, (str(started), 100))
        waiting = pool.apply_async(tasks.square, (3,))
        assert wait_until(started.exists, 10)
        worker = running.worker_pid
        assert running.cancel() and waiting.cancel()
        for r in (running, waiting):
            with pytest.raises(corral.Cancelled):
                r.get(timeout=10)
        assert wait_until(lambda: not alive(worker), 10)
        assert pool.apply(tasks.square, (4,)) == 16


def test_callbacks_run_with_the_value_or_the_error(pool):
    seen = []
    pool.apply_async(tasks.square, (3,), callback=seen.append).wait(10)
    pool.apply_async(tasks.fail, ("x",), error_callback=seen.append).wait(10)
    assert wait_until(lambda: len(seen) == 2, 10)
    assert seen[0] == 9 and isinstance(seen[1], KeyError)


def test_imap_is_lazy_over_an_endless_generator(pool):
    state, gen = tasks.pulled_counter()
    first = list(itertools.islice(pool.imap(tasks.square, gen), 100))
    assert first == [x * x for x in range(100)]
    # Pulled only a bounded window beyond what was consumed.
    assert state["pulled"] < 100 + 64 * pool.processes + 10


def test_an_input_iterator_that_raises_ends_imap_with_its_exception(pool):
    def gen():
        yield 1
        yield 2
        raise ValueError("input broke")

    it = pool.imap(tasks.square, gen())
    assert next(it) == 1 and next(it) == 4
    with pytest.raises(ValueError, match="input broke"):
        next(it)


def test_lambdas_and_local_functions_cross_by_value(pool):
    offset = 10
    assert pool.map(lambda x: x + offset, range(3)) == [10, 11, 12]
    assert pool.apply(tasks.returns_lambda)() == 1  # a lambda result crosses too

    def local(x):
        return x * offset

    assert pool.apply(local, (2,)) == 20


def test_values_that_cannot_cross_fail_their_own_task(pool):
    import threading

    with pytest.raises(TypeError, match="lock"):
        pool.apply(tasks.identity, (threading.Lock(),))  # the argument cannot cross
    with pytest.raises(TypeError, match="lock"):
        pool.apply(tasks.returns_lock)  # the result cannot be pickled
    with pytest.raises(RuntimeError, match="Unpicklable"):
        pool.apply(tasks.raises_unpicklable)
    assert pool.apply(tasks.square, (6,)) == 36


def test_a_task_can_use_its_own_pool(pool):
    assert pool.apply(tasks.nested_pool, (10,)) == sum(x * x for x in range(10))


def test_closed_pool_refuses_work_and_join_waits_for_the_workers():
    pool = corral.Pool(2)
    workers = pool.worker_pids()
    assert pool.apply(tasks.square, (2,)) == 4
    pool.close()
    with pytest.raises(corral.PoolClosed):
        pool.apply(tasks.square, (2,))
    with pytest.raises(ValueError):  # multiprocessing raises ValueError
        pool.map(tasks.square, [1])
    assert pool.join(timeout=10)
    # Reaped, as multiprocessing's join leaves them: no /proc entry at all.
    assert [w for w in workers if os.path.exists(f"/proc/{w}")] == []


def test_initializer_and_maxtasksperchild():
    with corral.Pool(1, initializer=tasks.set_env, initargs=("CORRAL_T", "set"),
                     maxtasksperchild=2) as pool:
        pids = [pool.apply(tasks.pid) for _ in range(6)]
        assert len(set(pids)) == 3
        assert pool.apply(tasks.get_env, ("CORRAL_T",)) == "set"


def test_pools_leave_no_process_or_descriptor_behind():
    def cycle():
        with corral.Pool(2) as pool:
            pool.map(tasks.square, range(10))
        assert pool.join(timeout=10)

    def open_fds():
        # Less the descriptors of the fork server's spare on offer, held or
        # not depending on timing.
        return len(os.listdir("/proc/self/fd")) - corral._corral._spare_fds()

    cycle()  # what the first pool sets up for the process stays
    before_fds = open_fds()
    before_kids = set(children_of(os.getpid()))
    for _ in range(20):
        cycle()
    assert wait_until(lambda: set(children_of(os.getpid())) <= before_kids, 10)
    assert wait_until(lambda: open_fds() <= before_fds, 10), (before_fds, open_fds())


def test_imap_cancelled_from_another_thread_ends_the_consumer(pool):
    import threading

    it = pool.imap(tasks.nap, [100, 100])
    started, outcome = threading.Event(), []

    def consume():
        started.set()
        outcome.extend(it)  # blocks in the wait for the 100 s item

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    assert started.wait(10)
    # Whether the consumer is already waiting or not, cancel must end it
    # (and must not deadlock on the GIL with the waiting consumer).
    it.cancel()
    t.join(10)
    assert not t.is_alive() and outcome == []
    assert pool.apply(tasks.square, (5,)) == 25


def test_a_forked_child_gets_an_error_from_its_copy_of_the_pool_and_makes_its_own(pool):
    # os.fork copies the pool's handle, not the pool: the child's call fails
    # at once, and the parent's pool is untouched (it used to hang both).
    # The child starts afresh, with a fork server of its own.
    assert pool.apply(tasks.square, (2,)) == 4
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            said = "ran: %r" % (pool.apply(tasks.square, (3,)),)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            said = "%s: %s" % (type(e).__name__, e)
        try:
            # The child starts afresh: a pool of its own works.
            with corral.Pool(1) as own:
                said += "; own pool: %r" % (own.apply(tasks.square, (6,)),)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            said += "; own pool: %s: %s" % (type(e).__name__, e)
        os.write(write, said.encode()[:1000])
        os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 20)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        said = os.read(read, 1000).decode() if ready else "still running after 20 s"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert "belongs to process %d" % os.getpid() in said, said
    assert said.endswith("; own pool: 36"), said
    assert pool.apply(tasks.square, (5,)) == 25
    assert pool.map(tasks.square, range(100)) == [x * x for x in range(100)]

"""corral.ProcessPoolExecutor: concurrent.futures, never broken."""

import asyncio
import concurrent.futures as cf

import pytest

import corral
import tasks
from conftest import wait_until


@pytest.fixture
def ex():
    e = corral.ProcessPoolExecutor(2)
    yield e
    e.terminate()


def test_submit_map_and_the_futures_module(ex):
    futures = [ex.submit(tasks.square, i) for i in range(20)]
    done, not_done = cf.wait(futures, timeout=10)
    assert not not_done
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=10)) == sorted(
        i * i for i in range(20)
    )
    assert list(ex.map(tasks.square, range(10), timeout=10)) == [i * i for i in range(10)]
    assert list(ex.map(tasks.add, range(10), range(10), chunksize=3)) == [2 * i for i in range(10)]
    assert ex.submit(tasks.add, 1, b=2, c=3).result(timeout=10) == 6


def test_futures_work_with_asyncio(ex):
    async def main():
        return await asyncio.wait_for(asyncio.wrap_future(ex.submit(tasks.square, 12)), 10)

    assert asyncio.run(main()) == 144


def test_a_dead_worker_fails_one_future_and_the_executor_goes_on(ex):
    futures = [ex.submit(tasks.nap, 0.2), ex.submit(tasks.kill_self), ex.submit(tasks.square, 5)]
    with pytest.raises(corral.WorkerLost):
        futures[1].result(timeout=10)
    assert futures[0].result(timeout=10) == 0.2 and futures[2].result(timeout=10) == 25
    assert ex.submit(tasks.square, 3).result(timeout=10) == 9  # never BrokenProcessPool


def test_exceptions_and_done_callbacks(ex):
    f = ex.submit(tasks.fail, "boom")
    assert isinstance(f.exception(timeout=10), KeyError)
    seen = []
    ex.submit(tasks.square, 4).add_done_callback(lambda fut: seen.append(fut.result()))
    assert wait_until(lambda: seen == [16], 10)


def test_cancel_reaches_a_running_future(ex, tmp_path):
    started = tmp_path / "started"
    f = ex.submit(tasks.nap_marked, str(started), 100)
    assert wait_until(started.exists, 10)
    assert f.cancel()
    assert f.cancelled()
    done, _ = cf.wait([f], timeout=10)
    assert f in done
    assert ex.submit(tasks.square, 2).result(timeout=10) == 4


def test_shutdown_cancels_pending_futures_when_asked(tmp_path):
    ex = corral.ProcessPoolExecutor(1)
    started = tmp_path / "started"
    running = ex.submit(tasks.nap_marked, str(started), 0.3)
    assert wait_until(started.exists, 10)
    pending = [ex.submit(tasks.square, i) for i in range(5)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert running.result(timeout=10) == 0.3
    done, not_done = cf.wait(pending, timeout=10)
    assert not not_done and all(f.cancelled() for f in pending)
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 1)


def test_task_timeout(ex):
    e = corral.ProcessPoolExecutor(1, task_timeout=0.3)
    try:
        with pytest.raises(corral.TaskTimedOut):
            e.submit(tasks.nap, 100).result(timeout=10)
        assert e.submit(tasks.square, 3).result(timeout=10) == 9
    finally:
        e.terminate()


def test_a_future_only_polled_with_done_still_ends(ex):
    # Nobody waits on it and nothing asked to be told: done() looks itself.
    f = ex.submit(tasks.square, 2)
    assert wait_until(f.done, 10)
    assert f.result(timeout=0) == 4 and not f.running()

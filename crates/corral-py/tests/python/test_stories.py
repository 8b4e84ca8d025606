"""Whole programs, as users write them: the seeds' stories, a killed
parent, Ctrl-C, the main module, importing after threads started."""

import os
import signal
import time

from conftest import alive, finish, wait_until


def test_parent_sigkilled_leaves_no_worker(script):
    proc = script(
        """
        import corral, tasks
        if __name__ == "__main__":
            pool = corral.Pool(2)
            busy = [pool.apply_async(tasks.nap, (100,)) for _ in range(2)]
            import time
            while any(b.worker_pid is None for b in busy):
                time.sleep(0.01)
            print(corral._corral._fork_server_pid(), *[b.worker_pid for b in busy], flush=True)
            time.sleep(100)
        """
    )
    line = proc.stdout.readline()
    pids = [int(p) for p in line.split()]
    assert len(pids) == 3, (line, proc.stderr.read() if not line else "")
    assert all(alive(p) for p in pids)
    proc.kill()
    proc.wait(timeout=10)
    assert wait_until(lambda: not any(alive(p) for p in pids), 1), "processes left after 1 s"


def test_ctrl_c_while_waiting_raises_keyboard_interrupt(script):
    proc = script(
        """
        import corral, tasks
        if __name__ == "__main__":
            pool = corral.Pool(1)
            print("waiting", flush=True)
            try:
                pool.apply(tasks.nap, (100,))
            except KeyboardInterrupt:
                print("interrupted", flush=True)
        """
    )
    assert proc.stdout.readline().strip() == "waiting"
    time.sleep(0.3)  # let the wait start: it is bounded by the assertion below
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc, timeout=10)
    assert "interrupted" in out, err
    assert code == 0


def test_ctrl_c_during_imap_raises_and_cancels_the_rest(script):
    proc = script(
        """
        import corral, tasks
        if __name__ == "__main__":
            pool = corral.Pool(1)
            results = pool.imap(tasks.nap, [0.01, 100, 100])
            print(next(results), flush=True)
            try:
                next(results)
            except KeyboardInterrupt:
                # The one worker was freed: the 100 s items were cancelled.
                print("interrupted", pool.apply(tasks.square, (3,)), flush=True)
        """
    )
    assert proc.stdout.readline().strip() == "0.01"
    time.sleep(0.3)  # into the wait for the 100 s item; bounded by finish()
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc, timeout=10)
    assert "interrupted 9" in out, (out, err)
    assert code == 0


def test_ctrl_c_during_a_batched_map_raises_and_cancels_it(script):
    proc = script(
        """
        import corral, tasks
        if __name__ == "__main__":
            pool = corral.Pool(1)
            print("mapping", flush=True)
            try:
                pool.map(tasks.nap, [100] * 4, chunksize=2)
            except KeyboardInterrupt:
                # The running batch was killed, the other never started.
                print("interrupted", pool.apply(tasks.square, (3,)), flush=True)
        """
    )
    assert proc.stdout.readline().strip() == "mapping"
    time.sleep(0.3)  # into the wait for the first batch; bounded by finish()
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc, timeout=10)
    assert "interrupted 9" in out, (out, err)
    assert code == 0


def test_functions_and_classes_of_the_main_script_cross_both_ways(script):
    proc = script(
        """
        import corral

        class Point:
            def __init__(self, x):
                self.x = x

        def shift(p):
            return Point(p.x + 1)

        if __name__ == "__main__":
            with corral.Pool(2) as pool:
                print(pool.apply(shift, (Point(1),)).x)
                print(pool.map(shift, [Point(i) for i in range(3)])[2].x)
        """
    )
    code, out, err = finish(proc)
    assert code == 0, err
    assert out.split() == ["2", "3"]


def test_a_missing_main_guard_is_an_error_not_a_fork_bomb(script):
    proc = script(
        """
        import corral
        def f(x):
            return x
        pool = corral.Pool(1)
        print(pool.apply(f, (1,)))
        """
    )
    code, out, err = finish(proc)
    assert code == 0 or code == 1
    assert "if __name__" in out + err


def test_import_after_threads_started_reexecutes_cleanly(script):
    proc = script(
        """
        import threading, time
        t = threading.Thread(target=time.sleep, args=(2,), daemon=True)
        t.start()
        import corral, tasks
        if __name__ == "__main__":
            with corral.Pool(2) as pool:
                print(pool.map(tasks.square, range(5)))
        """
    )
    code, out, err = finish(proc)
    assert code == 0, err
    assert out.strip() == "[0, 1, 4, 9, 16]"


def test_256_tasks_that_may_block_with_a_timeout(script):
    # The seeds' story: a loop that started a process per task took the machine
    # down; here 256 tasks, every 16th blocks for 2 s, a 0.5 s limit.
    proc = script(
        """
        import corral, tasks
        if __name__ == "__main__":
            with corral.Pool(4, task_timeout=0.5) as pool:
                results = [pool.apply_async(tasks.maybe_block, (i,)) for i in range(256)]
                ok = timed_out = 0
                for r in results:
                    try:
                        r.get(timeout=30)
                        ok += 1
                    except corral.TaskTimedOut:
                        timed_out += 1
                print(ok, timed_out, len(pool.worker_pids()))
        """
    )
    code, out, err = finish(proc, timeout=60)
    assert code == 0, err
    assert out.split() == ["240", "16", "4"]


def test_the_nested_executor_whose_task_fails_still_exits(script):
    proc = script(
        """
        import corral, tasks
        if __name__ == "__main__":
            with corral.ProcessPoolExecutor(2) as ex:
                try:
                    ex.submit(tasks.nested_executor_fails).result(timeout=20)
                except KeyError as e:
                    print("inner failure came back:", e)
        """
    )
    code, out, err = finish(proc, timeout=30)
    assert code == 0, err
    assert "inner failure came back" in out


def test_open_pools_do_not_hold_up_exit(script):
    proc = script(
        """
        import corral, tasks
        if __name__ == "__main__":
            pool = corral.Pool(2)
            pool.apply_async(tasks.nap, (100,))
            print(*pool.worker_pids(), flush=True)
        """
    )
    code, out, err = finish(proc, timeout=20)
    assert code == 0, err
    pids = [int(p) for p in out.split()]
    assert wait_until(lambda: not any(alive(p) for p in pids), 5)


def test_lambdas_from_python_c(tmp_path):
    import subprocess
    import sys

    code = (
        "import corral\n"
        "with corral.Pool(2) as pool:\n"
        "    print(pool.map(lambda x: x * 3, range(4)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 3, 6, 9]"

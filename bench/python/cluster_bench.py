"""Celery and RQ on the same Redis as corral's cluster benchmark
(CORRAL_BENCH_REDIS): two worker processes, trivial tasks per second and
one task's round trip. Each system runs with its documented defaults for
Redis, except RQ's SimpleWorker (no fork per job: RQ's faster worker)."""
import os
import statistics
import subprocess
import sys
import time

from common import emit, n

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster")
sys.path.insert(0, HERE)
URL = os.environ["CORRAL_BENCH_REDIS"]
ENV = dict(os.environ, PYTHONPATH=HERE)
BIN = os.path.dirname(sys.executable)


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def celery_bench(tasks):
    from celery_tasks import app, square

    worker = subprocess.Popen(
        [os.path.join(BIN, "celery"), "-A", "celery_tasks", "worker", "--concurrency", "2",
         "-P", "prefork", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-l", "warning"],
        cwd=HERE, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        square.delay(1).get(timeout=60)
        for i in range(50):
            square.delay(i).get(timeout=10)
        rtt = []
        for i in range(n(300)):
            t = time.perf_counter()
            square.delay(i).get(timeout=10)
            rtt.append((time.perf_counter() - t) * 1e6)
        emit("celery round trip", statistics.median(rtt), "us")
        t = time.perf_counter()
        results = [square.delay(i) for i in range(tasks)]
        for r in results:
            r.get(timeout=120)
        emit("celery trivial tasks, 2 worker processes", tasks / (time.perf_counter() - t), "tasks/s")
    finally:
        stop([worker])
        app.close()


def rq_bench(tasks):
    from redis import Redis
    from rq import Queue
    from rq_tasks import square

    conn = Redis.from_url(URL)
    # A queue of this run's own: its finished-job registry counts only
    # this run's jobs.
    name = f"corral-bench-{os.getpid()}"
    q = Queue(name, connection=conn)
    q.empty()
    workers = [
        subprocess.Popen(
            [os.path.join(BIN, "rq"), "worker", "-u", URL, "-w", "rq.worker.SimpleWorker",
             name],
            cwd=HERE, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]

    def wait(job):
        while True:
            status = job.get_status(refresh=True)
            if status == "finished":
                return job.return_value()
            if status == "failed":
                raise RuntimeError("rq job failed")
            time.sleep(0.0002)

    try:
        wait(q.enqueue(square, 1))
        rtt = []
        for i in range(n(300)):
            t = time.perf_counter()
            wait(q.enqueue(square, i))
            rtt.append((time.perf_counter() - t) * 1e6)
        emit("rq round trip", statistics.median(rtt), "us")
        t = time.perf_counter()
        jobs = q.enqueue_many([Queue.prepare_data(square, (i,)) for i in range(tasks)])
        registry = q.finished_job_registry
        deadline = time.time() + 300
        while registry.count < len(jobs) + n(300) + 1 and time.time() < deadline:
            time.sleep(0.01)
        emit("rq trivial tasks, 2 SimpleWorkers", tasks / (time.perf_counter() - t), "tasks/s")
    finally:
        stop(workers)
        q.empty()
        q.delete(delete_jobs=True)


if __name__ == "__main__":
    celery_bench(n(5000))
    rq_bench(n(3000))

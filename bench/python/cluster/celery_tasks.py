"""The Celery side of the cluster benchmark: one trivial task, Redis as
broker and result backend (Celery's documented Redis setup)."""
import os

from celery import Celery

URL = os.environ["CORRAL_BENCH_REDIS"]
app = Celery("celery_tasks", broker=URL, backend=URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    result_expires=60,
    worker_hijack_root_logger=False,
)


@app.task
def square(x):
    return x * x

"""CPython anchors for corral's manager benchmarks: multiprocessing.Manager()
over its local socket (proxy calls, a queue, a new proxy), and a BaseManager
over loopback TCP (connect + first call, a new proxy, a call)."""
import multiprocessing as mp
import statistics
import sys
import time
from multiprocessing.managers import BaseManager, DictProxy

from common import emit, n  # noqa: E402

KEY = b"bench key"


def per_call(iterations, f):
    for _ in range(300):
        f()
    samples = []
    for _ in range(iterations):
        t = time.perf_counter()
        f()
        samples.append((time.perf_counter() - t) * 1e6)
    return statistics.median(samples)


def producer(q, count):
    for i in range(count):
        q.put(i)


SHARED = {}


def get_dict():
    return SHARED


class Remote(BaseManager):
    pass


Remote.register("get_dict", callable=get_dict, proxytype=DictProxy)


def serve_remote(port_conn):
    m = Remote(address=("127.0.0.1", 0), authkey=KEY)
    server = m.get_server()
    port_conn.send(server.address[1])
    server.serve_forever()


def local():
    with mp.Manager() as m:
        d = m.dict()
        emit("manager dict set", per_call(n(20_000), lambda: d.__setitem__("k", 1)), "us")
        emit("manager dict get", per_call(n(20_000), lambda: d["k"]), "us")
        lst = m.list()
        emit("manager list append", per_call(n(20_000), lambda: lst.append(1)), "us")
        lock = m.Lock()

        def lock_unlock():
            lock.acquire()
            lock.release()

        emit("manager lock acquire+release", per_call(n(10_000), lock_unlock), "us")
        q = m.Queue()

        def put_get():
            q.put(1)
            q.get()

        emit("manager queue put+get", per_call(n(10_000), put_get), "us")
        count = n(20_000)
        t = time.perf_counter()
        p = mp.get_context("fork").Process(target=producer, args=(q, count))
        p.start()
        for _ in range(count):
            q.get()
        secs = time.perf_counter() - t
        p.join()
        emit("manager queue child put -> get", count / secs, "items/s")
        emit("manager new dict proxy", per_call(n(2_000), lambda: m.dict()), "us")


def remote():
    ours, theirs = mp.Pipe()
    server = mp.get_context("fork").Process(target=serve_remote, args=(theirs,), daemon=True)
    server.start()
    port = ours.recv()
    samples = []
    for _ in range(n(20)):
        t = time.perf_counter()
        c = Remote(address=("127.0.0.1", port), authkey=KEY)
        c.connect()
        d = c.get_dict()
        d["k"] = 1
        samples.append((time.perf_counter() - t) * 1e6)
        del d, c
    emit("manager remote connect+first call (TCP)", statistics.median(samples), "us")
    c = Remote(address=("127.0.0.1", port), authkey=KEY)
    c.connect()

    def new_proxy():
        d = c.get_dict()
        d["k"] = 1

    samples = []
    for _ in range(n(20)):
        t = time.perf_counter()
        new_proxy()
        samples.append((time.perf_counter() - t) * 1e6)
    emit("manager remote new proxy (TCP)", statistics.median(samples), "us")
    d = c.get_dict()
    emit("manager remote call (TCP)", per_call(n(5_000), lambda: d.__setitem__("k", 1)), "us")
    server.kill()


if __name__ == "__main__":
    local()
    remote()
    sys.exit(0)

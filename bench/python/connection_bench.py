"""CPython anchors for corral's connection benchmarks: multiprocessing.connection
Listener/Client over loopback TCP (connect + handshake, 8-byte round trip)."""
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from multiprocessing.connection import Client, Listener

from common import PY, QUICK, emit, n  # noqa: E402,F401

KEY = b"bench key"




def serve(port_conn):
    with Listener(("127.0.0.1", 0), authkey=KEY) as listener:
        port_conn.send(listener.address[1])
        while True:
            conn = listener.accept()
            try:
                while True:
                    conn.send_bytes(conn.recv_bytes())
            except EOFError:
                conn.close()


def main():
    ours, theirs = mp.Pipe()
    server = mp.get_context("fork").Process(target=serve, args=(theirs,), daemon=True)
    server.start()
    port = ours.recv()
    address = ("127.0.0.1", port)
    for _ in range(20):
        Client(address, authkey=KEY).close()
    samples = []
    for _ in range(n(500)):
        t = time.perf_counter()
        c = Client(address, authkey=KEY)
        samples.append((time.perf_counter() - t) * 1e6)
        c.close()
    emit("connection connect+handshake", statistics.median(samples), "us")
    c = Client(address, authkey=KEY)
    for _ in range(1000):
        c.send_bytes(b"12345678")
        c.recv_bytes()
    samples = []
    for _ in range(n(20_000)):
        t = time.perf_counter()
        c.send_bytes(b"12345678")
        c.recv_bytes()
        samples.append((time.perf_counter() - t) * 1e6)
    emit("connection 8B round trip (TCP)", statistics.median(samples), "us")
    c.close()
    server.kill()


if __name__ == "__main__":
    main()

"""`hhmr serve --workers N`: ZeroMQ's own proxy in front of worker processes.

The broker binds the client-facing ROUTER (the same socket as a single server's, from
`hhmr.server.sockets`) and a DEALER backend that `hhmr worker --connect BACKEND` processes
connect to; it loads no model.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading

import zmq

from hhmr import protocol as P
from hhmr.server.sockets import bind_router, check_bind, on_signals

log = logging.getLogger("hhmr.serve")


def serve_broker(bind: str, workers: int, device: str = "auto", weights: str | None = None,
                 curve_secret_key: str | None = None, backend: str | None = None) -> None:
    """ZeroMQ's own proxy (ROUTER frontend, DEALER backend) in front of worker processes
    (`hhmr worker --connect BACKEND`); workers == 0 waits for workers started elsewhere."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    check_bind(bind, curve_secret_key)
    ctx = zmq.Context()
    front = bind_router(ctx, bind, P.Limits().max_message_bytes, curve_secret_key)
    tmp = tempfile.mkdtemp(prefix="hhmr-")
    backend = backend or f"ipc://{tmp}/workers"
    back = ctx.socket(zmq.DEALER)
    back.setsockopt(zmq.LINGER, 0)
    back.bind(backend)
    cmd = [sys.executable, "-m", "hhmr.cli", "worker", "--connect", backend, "--device", device]
    if weights:
        cmd += ["--weights", weights]
    procs = [subprocess.Popen(cmd, env=dict(os.environ)) for _ in range(workers)]
    stop = threading.Event()
    on_signals(stop)
    log.info("broker on %s, backend %s, %d workers", bind, backend, workers)
    control = ctx.socket(zmq.PAIR)
    control.bind(f"inproc://broker-control-{id(stop)}")
    watcher = ctx.socket(zmq.PAIR)
    watcher.connect(f"inproc://broker-control-{id(stop)}")

    def run_proxy() -> None:
        try:
            zmq.proxy_steerable(front, back, None, control)
        except zmq.ContextTerminated:
            pass

    # The proxy runs in a thread; the main thread waits in Python, where signal handlers run
    # (a signal delivered to another thread never interrupts a main thread blocked in C).
    proxy = threading.Thread(target=run_proxy, daemon=True)
    proxy.start()
    try:
        while proxy.is_alive() and not stop.wait(0.2):
            pass
        watcher.send(b"TERMINATE")
        proxy.join(10)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        for sock in (front, back, control, watcher):
            sock.close()
        ctx.term()
        log.info("broker stopped")

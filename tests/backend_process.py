"""A real `hhmr serve` on loopback for the end-to-end tests."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable

from hhmr import protocol as P
from hhmr.client import HHMRClient, RemoteError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_hhmr(*args: str) -> subprocess.Popen:
    """A real `hhmr ARGS...` process; its log goes to a file (`proc.log_path`): a pipe
    nobody drains would fill up and stall the server's one-line-per-request log."""
    exe = shutil.which("hhmr")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen([exe, *args], stdout=log, stderr=subprocess.STDOUT, text=True,
                            env=env)
    proc.log_path = log.name
    return proc


def start_server(port: int, *extra: str) -> subprocess.Popen:
    """A real `hhmr serve` on loopback, once its model is loaded."""
    proc = start_hhmr("serve", "--bind", f"tcp://127.0.0.1:{port}", *extra)
    client = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=2.0, retries=30)
    client.info()  # waits until the model is loaded
    return proc


def stop_server(proc: subprocess.Popen) -> str:
    """SIGTERM and wait; returns the log."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return open(proc.log_path).read()


def broker_state(port: int, until: Callable[[dict], bool], timeout: float = 120,
                 **client_args) -> dict:
    """The `broker` map of a broker's info reply, once `until(map)` holds; a broker answers
    BUSY while no worker is ready, and a request on a worker that died gets no reply."""
    client = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=2.0, retries=0, **client_args)
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        try:
            state = client.info()["broker"]
            if until(state):
                return state
        except RemoteError as err:
            if err.code != P.BUSY:
                raise
        except TimeoutError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"broker state still {state} after {timeout} s")

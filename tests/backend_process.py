"""A real `hhmr serve` on loopback for the end-to-end tests."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile

from hhmr.client import HHMRClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, *extra: str) -> subprocess.Popen:
    """A real `hhmr serve` on loopback; its log goes to a file (`proc.log_path`): a pipe
    nobody drains would fill up and stall the server's one-line-per-request log."""
    exe = shutil.which("hhmr")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen([exe, "serve", "--bind", f"tcp://127.0.0.1:{port}", *extra],
                            stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    proc.log_path = log.name
    client = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=2.0, retries=30)
    client.info()  # waits until the model is loaded
    return proc


def stop_server(proc: subprocess.Popen) -> str:
    """SIGTERM and wait; returns the log."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return open(proc.log_path).read()

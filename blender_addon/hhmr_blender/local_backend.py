"""A backend started by the add-on: ``<command> serve --bind <address>`` as a child process,
stopped when the add-on is disabled or Blender quits. No bpy."""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def command_line(command: str, address: str) -> list[str]:
    """The process to start. ``command`` is the ``hhmr`` console command (a path or a name on
    PATH), or a Python interpreter that has the hhmr package (run as ``-m hhmr.cli``); it may
    carry extra leading arguments (``/venv/bin/python -X utf8``)."""
    parts = shlex.split(command, posix=os.name != "nt") if command.strip() else ["hhmr"]
    exe = parts[0]
    found = shutil.which(exe) or (exe if Path(exe).is_file() else None)
    if found is None:
        raise FileNotFoundError(
            f"'{exe}' not found: set the backend command in the add-on preferences to the "
            "full path of 'hhmr' (or of a Python with hhmr installed)")
    name = Path(found).name.lower()
    if name.startswith("python"):
        return [found, *parts[1:], "-m", "hhmr.cli", "serve", "--bind", address]
    return [found, *parts[1:], "serve", "--bind", address]


STARTUP_S = 120.0  # a backend still silent this long after its start is stuck, not loading


class LocalBackend:
    """One child backend process, with its log in a temporary file."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.log_path: str | None = None
        self.address: str | None = None
        self.started_at = 0.0  # time.monotonic() of the start
        self.answered = False  # it has answered since (its model is loaded)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, command: str, address: str, env: dict[str, str] | None = None) -> None:
        if self.running:
            raise RuntimeError(f"a local backend is already running on {self.address}")
        argv = command_line(command, address)
        fd, self.log_path = tempfile.mkstemp(prefix="hhmr-backend-", suffix=".log")
        flags = subprocess.CREATE_NEW_PROCESS_GROUP if sys.platform == "win32" else 0
        with os.fdopen(fd, "w") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, creationflags=flags,
                                         env={**os.environ, **(env or {})})
        self.address = address
        self.started_at, self.answered = time.monotonic(), False

    def loading_for(self, address: str) -> float | None:
        """Seconds since this backend started, if it is the one on `address`, is running and
        has not answered yet (it loads and warms its model first); else None."""
        if not self.running or address != self.address or self.answered:
            return None
        age = time.monotonic() - self.started_at
        return age if age < STARTUP_S else None

    def log_tail(self, lines: int = 5) -> str:
        if not self.log_path or not Path(self.log_path).exists():
            return ""
        return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process (SIGTERM, then kill after ``timeout`` seconds)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def wait_ready(self, client, timeout: float = 120.0) -> dict:
        """Block until the backend answers ``info`` (headless use); raises RuntimeError if
        the process dies, TimeoutError if it stays silent."""
        end = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("the backend exited:\n" + self.log_tail(20))
            try:
                job = client.submit("info")
                try:
                    info = job.wait(timeout=min(2.0, max(end - time.monotonic(), 0.1)))
                    self.answered = True
                    return info
                finally:
                    job.close()
            except TimeoutError:
                if time.monotonic() > end:
                    raise TimeoutError(f"the backend on {self.address} did not answer within "
                                       f"{timeout:.0f} s:\n{self.log_tail(20)}") from None


BACKEND = LocalBackend()
atexit.register(BACKEND.stop)

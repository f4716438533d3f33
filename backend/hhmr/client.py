"""Pure-Python HHMR client: pyzmq + hhmr.protocol, never torch (usable from Blender).

Each request gets its own DEALER socket. When no word (reply or progress) arrives within
``timeout_s``, the socket is closed with linger 0 and the request resent on a fresh one, at
most ``retries`` times ("Lazy Pirate", ZeroMQ guide ch. 4); replies whose id does not match
are ignored.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from . import protocol as P

DEFAULT_ADDRESS = "tcp://127.0.0.1:5557"


class RemoteError(Exception):
    """The server answered with an error reply; ``code`` is one of protocol.ERROR_CODES."""

    def __init__(self, code: str, message: str, request_id: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.request_id = code, message, request_id


class Job:
    """One request in flight. ``poll()`` returns None until done, then the result (or raises
    RemoteError / TimeoutError); progress messages collect in ``progress``."""

    def __init__(self, client: HHMRClient, op: str, args: dict[str, Any]):
        self.client, self.op = client, op
        msg = P.make_request(op, args)
        self.id: str = msg["id"]
        self.progress: list[tuple[float, str]] = []
        self._payload = P.pack(msg)
        self._tries_left = client.retries
        self._sock: zmq.Socket | None = None
        self._done = False
        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._send()

    @property
    def done(self) -> bool:
        return self._done

    def poll(self) -> dict[str, Any] | None:
        """Non-blocking: handle what has arrived; the result once the final reply is in."""
        return self._step(0.0)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the final reply (or raise); ``timeout`` bounds this wait only."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            wait_s = self._deadline - now
            if end is not None:
                if now >= end:
                    raise TimeoutError(f"request {self.id} ({self.op}) still running")
                wait_s = min(wait_s, end - now)
            result = self._step(max(wait_s, 0.0))
            if result is not None:
                return result

    def cancel(self) -> dict[str, Any]:
        """Ask the server to cancel this request (it then ends with a CANCELLED error)."""
        return self.client.call("cancel", target=self.id)

    def close(self) -> None:
        """Drop the socket; a reply still under way is discarded."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _send(self) -> None:
        self.close()
        self._sock = self.client._socket()
        self._sock.send(self._payload)
        self._deadline = time.monotonic() + self.client.timeout_s

    def _finish(self) -> dict[str, Any]:
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _step(self, wait_s: float) -> dict[str, Any] | None:
        if self._done:
            return self._finish()
        assert self._sock is not None
        if self._sock.poll(int(wait_s * 1000)):
            while not self._done:
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(frames[-1])
        if self._done:
            self.close()
            return self._finish()
        if time.monotonic() >= self._deadline:
            if self._tries_left > 0:
                self._tries_left -= 1
                self._send()
            else:
                self.close()
                self._done = True
                tries = self.client.retries + 1
                self._error = TimeoutError(
                    f"no reply from {self.client.address} to '{self.op}' (id {self.id}) after "
                    f"{tries} attempt(s) of {self.client.timeout_s} s")
                return self._finish()
        return None

    def _handle(self, data: bytes) -> None:
        try:
            reply = P.parse_reply(P.unpack(data, self.client.max_reply_bytes))
        except P.ProtocolError:
            return  # garbage from a confused peer: ignore, as a stale reply
        # A nil id is an error about a request the server could not read: on this job's
        # own socket, that request is ours.
        if reply.id != self.id and not (reply.id is None and reply.status == "error"):
            return
        if reply.status == "progress":
            self.progress.append((reply.fraction, reply.message))
            self._deadline = time.monotonic() + self.client.timeout_s
        elif reply.status == "ok":
            self._done, self._result = True, reply.result
        else:
            self._done, self._error = True, RemoteError(reply.code, reply.message, self.id)


class HHMRClient:
    """Client of an HHMR server. ``timeout_s`` is the longest silence tolerated per attempt
    (progress messages count as word from the server)."""

    def __init__(self, address: str = DEFAULT_ADDRESS, timeout_s: float = 30.0,
                 retries: int = 2, *, context: zmq.Context | None = None,
                 max_reply_bytes: int = 4 * P.DEFAULT_MAX_BYTES,
                 curve_server_key: bytes | None = None,
                 curve_keypair: tuple[bytes, bytes] | None = None):
        """``curve_server_key`` (the server's public key, z85) with ``curve_keypair``
        (this client's public and secret keys, e.g. from ``zmq.auth.load_certificate``)
        encrypt the connection to a server started with ``--curve-secret-key``."""
        self.address, self.timeout_s, self.retries = address, float(timeout_s), int(retries)
        self.max_reply_bytes = max_reply_bytes
        self._ctx = context or zmq.Context.instance()
        self.curve_server_key, self.curve_keypair = curve_server_key, curve_keypair
        if curve_server_key is not None and curve_keypair is None:
            self.curve_keypair = zmq.curve_keypair()

    def _socket(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve_server_key is not None:
            sock.curve_serverkey = self.curve_server_key
            sock.curve_publickey, sock.curve_secretkey = self.curve_keypair
        sock.connect(self.address)
        return sock

    def submit(self, op: str, **args: Any) -> Job:
        """Send a request and return at once; poll the Job for the result."""
        return Job(self, op, args)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a request and block until its result; raises RemoteError or TimeoutError."""
        job = self.submit(op, **args)
        try:
            return job.wait()
        finally:
            job.close()

    def hypotheses(self, op: str, **args: Any) -> P.Hypotheses:
        """``call`` for the sampling ops, parsed into Hypotheses."""
        return P.parse_hypotheses(self.call(op, **args))

    def info(self) -> dict[str, Any]:
        return self.call("info")

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def cancel(self, target: str) -> dict[str, Any]:
        return self.call("cancel", target=target)

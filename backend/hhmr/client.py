"""Pure-Python HHMR client: pyzmq + hhmr.protocol, never torch (usable from Blender).

Each request gets its own DEALER socket. The server speaks at least once a heartbeat (about a
second) while a request waits or runs, so silence means it is gone: after ``timeout_s``
without a word the request is resent with the same id (the server attaches a resend to the
request under way, never running it twice), after a backoff with jitter, on a fresh socket,
at most ``retries`` times ("Lazy Pirate", ZeroMQ guide ch. 4). A BUSY reply is retried after
the server's ``retry_after_s`` the same way. Replies whose id does not match are ignored.
"""

from __future__ import annotations

import random
import secrets
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol as P

DEFAULT_ADDRESS = "tcp://127.0.0.1:5557"


class RemoteError(Exception):
    """The server answered with an error reply; ``code`` is one of protocol.ERROR_CODES
    (BUSY: its queue was full on every attempt)."""

    def __init__(self, code: str, message: str, request_id: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.request_id = code, message, request_id


class ServerGone(TimeoutError):
    """No word from the server for ``timeout_s``, on every attempt: it is down, unreachable
    or stuck (a busy server answers BUSY, a working one sends heartbeats)."""


class HandshakeFailed(ConnectionError):
    """The CurveZMQ handshake failed: a wrong server public key, or a client key the server
    does not admit."""


def _backoff(attempt: int) -> float:
    """Seconds to wait before resend number `attempt` (1, 2, ...): doubling, with jitter so
    that clients that lost the server together do not come back together."""
    return min(0.25 * 2 ** (attempt - 1), 8.0) * random.uniform(0.5, 1.5)


_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


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
        self._monitor: zmq.Socket | None = None
        self._resend_at: float | None = None  # a resend waiting out its backoff
        self._busy: P.Reply | None = None  # the last BUSY reply
        self._handshake_ok = False
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
            wait_s = (self._resend_at or self._deadline) - now
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
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _send(self) -> None:
        self.close()
        self._resend_at = None
        self._sock = self.client._socket()
        if self.client.curve_server_key is not None:
            self._monitor = self._sock.get_monitor_socket(
                _HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._sock.connect(self.client.address)
        self._sock.send(self._payload)
        self._deadline = time.monotonic() + self.client.timeout_s

    def _retry(self, delay_s: float) -> bool:
        """Schedule a resend in `delay_s` if tries are left; whether one was."""
        if self._tries_left <= 0:
            return False
        self._tries_left -= 1
        self._resend_at = time.monotonic() + delay_s
        return True

    def _check_handshake(self) -> None:
        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_ok = True
            elif event & _HANDSHAKE_FAILED:
                self._fail(HandshakeFailed(
                    f"the CurveZMQ handshake with {self.client.address} failed ({event.name}): "
                    "check the server's public key, and that the server admits this client's "
                    "key (its --curve-clients folder)"))

    def _finish(self) -> dict[str, Any]:
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _fail(self, error: BaseException) -> None:
        self._done, self._error = True, error

    def _step(self, wait_s: float) -> dict[str, Any] | None:
        if self._done:
            return self._finish()
        if self._resend_at is not None:  # waiting out a backoff: nothing is in flight
            if time.monotonic() < self._resend_at:
                time.sleep(max(min(wait_s, self._resend_at - time.monotonic()), 0.0))
            if time.monotonic() >= self._resend_at:
                self._send()
            return None
        assert self._sock is not None
        if self._sock.poll(int(wait_s * 1000)):
            while not self._done and self._resend_at is None:
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(frames[-1])
        self._check_handshake()
        if self._done:
            self.close()
            return self._finish()
        if self._resend_at is None and time.monotonic() >= self._deadline:
            if not self._retry(_backoff(self.client.retries - self._tries_left + 1)):
                self.close()
                tries = self.client.retries + 1
                if self._monitor is None or self._handshake_ok:
                    self._fail(ServerGone(
                        f"no word from {self.client.address} for {self.client.timeout_s:g} s "
                        f"on '{self.op}' (id {self.id}), {tries} attempt(s): the server is "
                        "down, unreachable or stuck (a busy one answers BUSY)"))
                else:
                    self._fail(HandshakeFailed(
                        f"no CurveZMQ handshake with {self.client.address} in "
                        f"{self.client.timeout_s:g} s: check the server's public key (and that "
                        "the server is up and admits this client's key)"))
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
        elif reply.code == P.BUSY and self._retry(
                (reply.retry_after_s or 1.0) * random.uniform(1.0, 1.5)):
            self._busy = reply
        else:
            self._fail(RemoteError(reply.code, reply.message, self.id))


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
        # every socket this client opens carries its session token, so the server knows the
        # resends, `status` and `cancel` of this client from another's
        self._token = secrets.token_bytes(8)
        self._sockets = 0

    def _socket(self) -> zmq.Socket:
        """A new DEALER, not yet connected."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        self._sockets += 1
        sock.setsockopt(zmq.ROUTING_ID, b"hhmr" + self._token
                        + (self._sockets % 2**32).to_bytes(4, "big"))
        if self.curve_server_key is not None:
            sock.curve_serverkey = self.curve_server_key
            sock.curve_publickey, sock.curve_secretkey = self.curve_keypair
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

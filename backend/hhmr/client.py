"""Pure-Python HHMR client: pyzmq + hhmr.protocol, never torch (usable from Blender).

Each request gets its own DEALER socket. The server speaks at least once a heartbeat (about a
second) while a request waits or runs, so silence means it is gone: after ``timeout_s``
without a word the request is resent with the same id (the server attaches a resend to the
request under way, never running it twice), after a backoff with jitter, on a fresh socket,
at most ``retries`` times ("Lazy Pirate", ZeroMQ guide ch. 4); the old socket is still read
while the backoff runs, so a late word cancels the resend. When ZeroMQ reconnects a socket
(the connection dropped), the request is sent again on it at once, so the server keeps it
(a dropped client's work is cancelled after a grace period). A BUSY reply is retried after
the server's ``retry_after_s`` (at most a minute) the same way. Replies whose id does not
match are ignored.
"""

from __future__ import annotations

import itertools
import os
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


MAX_RETRY_AFTER_S = 60.0  # the longest BUSY retry-after this client honours
# the server refused this client's key or spoke another protocol: final at once. A failure
# without detail (e.g. a wrong server key: the server just drops the connection) is only
# named when no word came before the deadline.
_HANDSHAKE_REFUSED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
_MONITORED = (zmq.EVENT_HANDSHAKE_SUCCEEDED | _HANDSHAKE_REFUSED
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class Job:
    """One request in flight. ``poll()`` returns None until done, then the result (or raises
    RemoteError / TimeoutError); progress messages collect in ``progress``."""

    _sock: zmq.Socket | None = None
    _monitor: zmq.Socket | None = None

    def __init__(self, client: HHMRClient, op: str, args: dict[str, Any]):
        self._pid = os.getpid()  # a forked child must not touch its parent's sockets
        self.client, self.op = client, op
        msg = P.make_request(op, args)
        self.id: str = msg["id"]
        self.progress: list[tuple[float, str]] = []
        self._payload = P.pack(msg)
        self._tries_left = client.retries
        self._resend_at: float | None = None  # a resend waiting out its backoff
        self._handshake_ok = False
        self._handshake_failed: str | None = None  # a failure without detail, by event name
        self._handshakes = 0  # completed handshakes of the current socket (more: reconnected)
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
        monitor, sock, self._monitor, self._sock = self._monitor, self._sock, None, None
        try:
            if monitor is not None and sock is not None:
                # libzmq sends monitor events blocking, under the lock disable_monitor takes:
                # read what is queued first, so a full monitor pipe cannot stall this call
                while monitor.poll(0):
                    monitor.recv_multipart(zmq.NOBLOCK)
                sock.disable_monitor()
        except zmq.ZMQError:  # e.g. the context is terminating: closing is all that is left
            pass
        finally:
            for s in (monitor, sock):
                if s is not None:
                    s.close(linger=0)

    def __del__(self) -> None:
        # a Job dropped unclosed: stop its monitor before the sockets go, in that order (a
        # monitor that outlives its reader would block ZeroMQ's I/O thread)
        if getattr(self, "_pid", None) != os.getpid():
            return
        try:
            self.close()
        except Exception:  # interpreter shutdown: zmq may already be gone
            pass

    def _send(self) -> None:
        self.close()
        self._resend_at = None
        self._handshakes = 0
        self._sock, name = self.client._socket()
        try:
            # a unique inproc name: pyzmq's default (by file descriptor) can meet a closed
            # socket's monitor that has not unbound yet
            self._monitor = self._sock.get_monitor_socket(
                _MONITORED, addr=f"inproc://hhmr-monitor-{name.hex()}")
            self._sock.connect(self.client.address)
            self._sock.send(self._payload)
        except BaseException:  # e.g. a malformed address: no socket left open
            self.close()
            raise
        self._deadline = time.monotonic() + self.client.timeout_s

    def _retry(self, delay_s: float) -> bool:
        """Schedule a resend in `delay_s` if tries are left; whether one was."""
        if self._tries_left <= 0:
            return False
        self._tries_left -= 1
        self._resend_at = time.monotonic() + delay_s
        return True

    def _check_monitor(self) -> None:
        """Connection events: a reconnect sends the request again on the new connection; a
        refused CurveZMQ handshake ends the job."""
        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                # a second completed handshake is a reconnect (a peer that drops connections
                # before the handshake never gets here, so copies cannot pile up)
                self._handshake_ok = True
                self._handshakes += 1
                if self._handshakes > 1 and not self._done:
                    try:  # the server attaches it to its job
                        self._sock.send(self._payload, zmq.NOBLOCK)
                    except zmq.Again:
                        pass
            elif event & _HANDSHAKE_REFUSED and self.client.curve_server_key is None:
                self._fail(HandshakeFailed(
                    f"the handshake with {self.client.address} failed ({event.name}): the "
                    "server expects CurveZMQ; pass its public key (curve_server_key) and this "
                    "client's keys"))
            elif event & _HANDSHAKE_REFUSED:
                self._fail(HandshakeFailed(
                    f"the CurveZMQ handshake with {self.client.address} failed ({event.name}): "
                    "check the server's public key, and that the server admits this client's "
                    "key (its --curve-clients folder)"))
            elif event & zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self._handshake_failed = event.name

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
        if self._resend_at is not None:
            if time.monotonic() >= self._resend_at:
                self._send()
            else:  # waiting out a backoff: the old socket may still hear from the server
                wait_s = min(wait_s, self._resend_at - time.monotonic())
        assert self._sock is not None and self._monitor is not None
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        if poller.poll(int(max(wait_s, 0.0) * 1000)):
            while not self._done:
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(frames[-1])
        self._check_monitor()
        if self._done:
            self.close()
            return self._finish()
        if self._resend_at is None and time.monotonic() >= self._deadline:
            if not self._retry(_backoff(self.client.retries - self._tries_left + 1)):
                self.close()
                tries = self.client.retries + 1
                if self.client.curve_server_key is None or self._handshake_ok:
                    self._fail(ServerGone(
                        f"no word from {self.client.address} for {self.client.timeout_s:g} s "
                        f"on '{self.op}' (id {self.id}), {tries} attempt(s): the server is "
                        "down, unreachable or stuck (a busy one answers BUSY)"))
                else:
                    seen = f" ({self._handshake_failed})" if self._handshake_failed else ""
                    self._fail(HandshakeFailed(
                        f"no CurveZMQ handshake with {self.client.address} in "
                        f"{self.client.timeout_s:g} s{seen}: check the server's public key (and "
                        "that the server is up and admits this client's key)"))
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
            if self._resend_at is not None:
                # a late word during the backoff: the server is alive, no resend
                self._resend_at = None
                self._tries_left += 1
        elif reply.status == "ok":
            self._done, self._result = True, reply.result
        elif reply.code == P.BUSY and self._resend_at is not None:
            return  # the old socket's answer during a backoff: a resend is already planned
        elif reply.code == P.BUSY and self._retry(
                min(reply.retry_after_s or 1.0, MAX_RETRY_AFTER_S) * random.uniform(1.0, 1.5)):
            return  # resent after the server's retry-after
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
        self._own_ctx = context is None  # the process's shared context, renewed after a fork
        self._ctx = context or zmq.Context.instance()
        self.curve_server_key, self.curve_keypair = curve_server_key, curve_keypair
        if curve_server_key is not None and curve_keypair is None:
            self.curve_keypair = zmq.curve_keypair()
        # every socket this client opens carries its session token, so the server knows the
        # resends, `status` and `cancel` of this client from another's
        self._pid = os.getpid()
        self._token = secrets.token_bytes(8)
        self._sockets = itertools.count(1)

    def _socket(self) -> tuple[zmq.Socket, bytes]:
        """A new DEALER, not yet connected, and its routing id."""
        if os.getpid() != self._pid:  # a forked child is another client
            self._pid, self._token = os.getpid(), secrets.token_bytes(8)
            if self._own_ctx:  # a context must not cross a fork
                self._ctx = zmq.Context.instance()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        name = b"hhmr" + self._token + (next(self._sockets) % 2**32).to_bytes(4, "big")
        sock.setsockopt(zmq.ROUTING_ID, name)
        if self.curve_server_key is not None:
            sock.curve_serverkey = self.curve_server_key
            sock.curve_publickey, sock.curve_secretkey = self.curve_keypair
        return sock, name

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

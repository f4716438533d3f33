"""The sockets and signals that `hhmr serve` and its broker share.

`bind_router` makes the client-facing ROUTER socket (limits, CurveZMQ keys, a clear error for
a busy port); `check_bind` refuses a non-loopback address without keys; `connect_dealer` is a
worker's socket to a broker (CurveZMQ off loopback); `RouterLink` is a single server's
client-facing transport (who owns each request, which connections dropped). Nothing here
needs a model.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import signal
import threading
from dataclasses import dataclass
from urllib.parse import urlparse

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("hhmr.serve")


def is_loopback(address: str) -> bool:
    """Whether a tcp:// bind address is loopback only (ipc:// and inproc:// are local)."""
    if not address.startswith("tcp://"):
        return True
    host = urlparse(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(bind: str, curve_secret_key: str | None,
               curve_clients: str | None = None) -> None:
    """Raise ValueError for a non-loopback address without CurveZMQ keys, and for keys
    without the folder of client keys the server admits."""
    if not is_loopback(bind) and curve_secret_key is None:
        raise ValueError(f"refusing to bind {bind}: a non-loopback address needs CurveZMQ "
                         "keys (--curve-secret-key FILE, made with zmq.auth)")
    if curve_secret_key is not None and curve_clients is None:
        raise ValueError("--curve-secret-key needs --curve-clients DIR: the folder of the "
                         "client public keys (*.key, made with zmq.auth) the server admits")


def start_authenticator(ctx: zmq.Context, curve_clients: str | None):
    """Admit only the CurveZMQ client keys in the folder `curve_clients` (*.key files) on
    every CURVE socket of `ctx` (ZAP); None without a folder. Keys are read at start."""
    if curve_clients is None:
        return None
    from pathlib import Path

    from zmq.auth.thread import ThreadAuthenticator

    folder = Path(curve_clients)
    if not folder.is_dir() or not any(folder.glob("*.key")):
        raise ValueError(f"--curve-clients {curve_clients}: not a folder of client public "
                         "keys (*.key files made with zmq.auth.create_certificates)")
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("hhmr.serve.auth"))
    auth.start()
    auth.configure_curve(domain="*", location=str(folder))
    log.info("admitting the %d client keys in %s", len(list(folder.glob("*.key"))), folder)
    return auth


def bind_router(ctx: zmq.Context, bind: str, max_message_bytes: int,
                curve_secret_key: str | None = None) -> zmq.Socket:
    """The client-facing ROUTER socket, bound to `bind`; raises OSError when it cannot bind."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    # a ROUTER drops replies to a peer past its high-water mark: leave room for
    # clients that send many requests before reading (progress replies included)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    # a client that reconnects (same routing id) takes its id over from the dropped connection
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    # up to twice the limit a message gets a TOO_LARGE reply; beyond, ZeroMQ drops the
    # connection before buffering it all
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * max_message_bytes)
    if curve_secret_key is not None:
        try:
            public, secret = load_keys(curve_secret_key)
        except ValueError:
            sock.close()
            raise
        sock.curve_secretkey, sock.curve_publickey = secret, public
        sock.curve_server = True
    try:
        sock.bind(bind)
    except zmq.ZMQError as err:
        sock.close()
        if err.errno == zmq.EADDRINUSE:
            raise OSError(f"cannot bind {bind}: the address is already in use "
                          "(is another hhmr serve running? pick another --bind port)") from None
        raise OSError(f"cannot bind {bind}: {err}") from None
    return sock


def load_keys(path: str) -> tuple[bytes, bytes]:
    """The public and secret CurveZMQ keys of a *.key_secret file made by zmq.auth."""
    from zmq.auth import load_certificate

    public, secret = load_certificate(path)
    if secret is None:
        raise ValueError(f"{path} holds no secret key: pass the *.key_secret file made by "
                         "zmq.auth.create_certificates")
    return public, secret


def connect_dealer(ctx: zmq.Context, address: str, curve_server_key: str | None = None,
                   curve_secret_key: str | None = None) -> zmq.Socket:
    """A worker's DEALER socket, connected to a broker's backend. Its routing id is
    `<pid>-<random>`, so the broker knows which of its processes it is. Off loopback it needs
    CurveZMQ: the broker's public key file and this worker's secret key file."""
    if (curve_server_key is None) != (curve_secret_key is None):
        raise ValueError("a worker's CurveZMQ needs both --curve-server-key (the broker's "
                         "public key) and --curve-secret-key (the worker's own)")
    if not is_loopback(address) and curve_server_key is None:
        raise ValueError(f"refusing to connect to {address} unencrypted: a non-loopback broker "
                         "needs --curve-server-key FILE and --curve-secret-key FILE")
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    # progress replies of many requests may queue while the broker is busy
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.ROUTING_ID, f"{os.getpid()}-{secrets.token_hex(4)}".encode())
    if curve_server_key is not None:
        from zmq.auth import load_certificate

        try:
            sock.curve_publickey, sock.curve_secretkey = load_keys(curve_secret_key)
        except ValueError:
            sock.close()
            raise
        sock.curve_serverkey = load_certificate(curve_server_key)[0]
    sock.connect(address)
    return sock


def on_signals(stop: threading.Event) -> None:
    """Set `stop` on SIGINT or SIGTERM (call from the main thread)."""
    def handler(signum, frame) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# ---- who sent a request --------------------------------------------------------------------
# HHMRClient names every socket it opens b"hhmr" + its 8-byte session token + a 4-byte
# counter, so its resends and its `status`/`cancel` calls (each on a fresh socket) belong to it.
CLIENT_ID_PREFIX = b"hhmr"
CLIENT_ID_LEN = 16


def owner_of(routing_id: bytes, user_id: str | None) -> bytes:
    """Who a request belongs to: the CurveZMQ client key when the server checks keys, else
    the HHMRClient session token in the routing id, else the connection itself."""
    if user_id:
        return b"key:" + user_id.encode()
    if len(routing_id) == CLIENT_ID_LEN and routing_id.startswith(CLIENT_ID_PREFIX):
        return b"tok:" + routing_id[4:12]
    return b"conn:" + routing_id


@dataclass
class Incoming:
    """One message from a client, as the server's socket loop sees it."""

    envelope: list[bytes]  # the frames its replies go back with
    owner: bytes  # owner_of(...): whose jobs `status` and `cancel` may see
    connection: bytes  # the client connection, named again by `gone()` when it drops
    payload: bytes


class RouterLink:
    """A single server's client-facing ROUTER socket. `recv` tags each message with its owner
    and connection; `gone` names the connections that dropped since it was last called (the
    socket monitor's disconnect events, matched to connections by file descriptor)."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.socket = sock
        self.monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.by_fd: dict[int, set[bytes]] = {}  # the connections seen on each open fd
        self.fd_of: dict[bytes, int] = {}  # and the reverse: a connection lives on one fd
        self.dead: set[int] = set()  # fds disconnected and not accepted again since
        self.dropped: set[bytes] = set()  # connections dropped since the last `gone()`

    def _drain_monitor(self) -> None:
        # drained before every receive: a disconnect is always seen before a new
        # connection can reuse its file descriptor
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.dead.add(fd)
                for rid in self.by_fd.pop(fd, ()):
                    self.fd_of.pop(rid, None)
                    self.dropped.add(rid)
            else:  # accepted: the fd holds a new connection
                self.dead.discard(fd)

    def recv(self) -> Incoming | None:
        """The next message, or None when none is waiting."""
        self._drain_monitor()
        try:
            frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        last = frames[-1]
        rid = frames[0].bytes
        try:
            user = last.get("User-Id")
        except zmq.ZMQError:
            user = None
        self._track(rid, last.get(zmq.SRCFD))
        return Incoming([f.bytes for f in frames[:-1]], owner_of(rid, user), rid, last.bytes)

    def _track(self, rid: bytes, fd: int) -> None:
        """Note that connection `rid` spoke on `fd` (-1: a transport without one)."""
        if fd < 0:
            return
        old = self.fd_of.get(rid)
        if fd in self.dead:  # it dropped before its message was read
            if old is None or old == fd:  # unless it lives on in a newer connection
                self.fd_of.pop(rid, None)
                self.dropped.add(rid)
            return
        if old is not None and old != fd:  # it reconnected: the old fd's drop is not its own
            self.by_fd.get(old, set()).discard(rid)
        self.dropped.discard(rid)  # it dropped and came back (a reconnect): not gone
        self.fd_of[rid] = fd
        self.by_fd.setdefault(fd, set()).add(rid)

    def send(self, envelope: list[bytes], payload: bytes) -> None:
        self.socket.send_multipart(envelope + [payload])

    def gone(self) -> list[bytes]:
        """Connections that dropped since the last call."""
        self._drain_monitor()
        out, self.dropped = sorted(self.dropped), set()
        return out

    def tick(self) -> None:
        """Nothing to do: a client-facing socket has no heartbeat of its own."""

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close()
        self.socket.close()

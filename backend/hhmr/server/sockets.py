"""The sockets and signals that `hhmr serve` and its broker share.

`bind_router` makes the client-facing ROUTER socket (limits, CurveZMQ keys, a clear error for
a busy port); `check_bind` refuses a non-loopback address without keys; `connect_dealer` is a
worker's socket to a broker. Nothing here needs a model.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
from urllib.parse import urlparse

import zmq

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


def check_bind(bind: str, curve_secret_key: str | None) -> None:
    """Raise ValueError for a non-loopback address without CurveZMQ keys."""
    if not is_loopback(bind) and curve_secret_key is None:
        raise ValueError(f"refusing to bind {bind}: a non-loopback address needs CurveZMQ "
                         "keys (--curve-secret-key FILE, made with zmq.auth)")


def bind_router(ctx: zmq.Context, bind: str, max_message_bytes: int,
                curve_secret_key: str | None = None) -> zmq.Socket:
    """The client-facing ROUTER socket, bound to `bind`; raises OSError when it cannot bind."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    # a ROUTER drops replies to a peer past its high-water mark: leave room for
    # clients that send many requests before reading (progress replies included)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    # up to twice the limit a message gets a TOO_LARGE reply; beyond, ZeroMQ drops the
    # connection before buffering it all
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * max_message_bytes)
    if curve_secret_key is not None:
        from zmq.auth import load_certificate

        public, secret = load_certificate(curve_secret_key)
        if secret is None:
            sock.close()
            raise ValueError(f"{curve_secret_key} holds no secret key: pass the "
                             "*.key_secret file made by zmq.auth.create_certificates")
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


def connect_dealer(ctx: zmq.Context, address: str) -> zmq.Socket:
    """A worker's DEALER socket, connected to a broker's backend."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def on_signals(stop: threading.Event) -> None:
    """Set `stop` on SIGINT or SIGTERM (call from the main thread)."""
    def handler(signum, frame) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)

"""A worker's link to its broker (`hhmr worker --connect BACKEND`), and the frames the two
exchange (the Paranoid Pirate pattern, ZeroMQ guide ch. 4; docs/protocol.md, "Broker and
workers").

`WorkerLink` has `RouterLink`'s interface, so the server's socket loop serves a broker's
clients as it serves its own: requests arrive as `Incoming`, replies leave with `send`, dropped
client connections come from `gone`, and `tick` keeps the heartbeats going both ways.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import zmq

from hhmr.server.sockets import Incoming

log = logging.getLogger("hhmr.serve")

# ---- broker <-> worker frames ----------------------------------------------------------------
# Every message starts with one of these commands (on the broker's side after the ROUTER's
# routing frame, the worker's id).
READY = b"READY"  # worker -> broker, once its model is loaded: [READY]
HEARTBEAT = b"HEARTBEAT"  # both ways, every HEARTBEAT_S: [HEARTBEAT]
REPLY = b"REPLY"  # worker -> broker, every reply: [REPLY, client_routing_id, payload]
REQUEST = b"REQUEST"  # broker -> worker: [REQUEST, client_routing_id, owner, connection, payload]
GONE = b"GONE"  # broker -> every worker, a client connection dropped: [GONE, connection]

HEARTBEAT_S = 1.0  # seconds between heartbeats
LIVENESS = 3  # a peer silent for this many heartbeat intervals is dead


def pid_of(worker_id: bytes) -> int | None:
    """The process id in a worker's routing id (`connect_dealer` names it `<pid>-<random>`)."""
    try:
        return int(worker_id.split(b"-", 1)[0])
    except ValueError:
        return None


class WorkerLink:
    """A worker's DEALER socket to a broker's backend, with RouterLink's interface. `tick`
    (called every poll turn, about every 0.2 s) sends READY once, then HEARTBEAT every
    interval; a broker silent for LIVENESS intervals sets `broker_lost` and calls `on_lost`
    (the server then stops: a worker without a broker has nothing to serve)."""

    def __init__(self, sock: zmq.Socket, on_lost: Callable[[], None] | None = None,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.socket = sock
        self.on_lost = on_lost
        self.heartbeat_s = heartbeat_s
        self.broker_lost = False
        self.dropped: list[bytes] = []
        self.ready_sent = False
        self.last_heard = time.monotonic()
        self.next_beat = 0.0

    def recv(self) -> Incoming | None:
        """The next request, or None when none is waiting (or a control frame was consumed)."""
        try:
            frames = self.socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None
        self.last_heard = time.monotonic()  # any word from the broker shows it is alive
        if frames[0] == REQUEST and len(frames) == 5:
            return Incoming([frames[1]], frames[2], frames[3], frames[4])
        if frames[0] == GONE and len(frames) == 2:
            self.dropped.append(frames[1])
        elif frames[0] != HEARTBEAT:
            log.warning("ignored a malformed message from the broker (%d frames, %r)",
                        len(frames), frames[0][:16])
        return None

    def send(self, envelope: list[bytes], payload: bytes) -> None:
        # never blocks: with the broker gone its queue fills up, and the worker is about to
        # stop anyway (the client's resend reaches another worker)
        self._send([REPLY, *envelope, payload])

    def gone(self) -> list[bytes]:
        """Client connections that dropped since the last call (the broker's GONE frames)."""
        out, self.dropped = self.dropped, []
        return out

    def tick(self) -> None:
        now = time.monotonic()
        if not self.ready_sent:
            self._send([READY])
            self.ready_sent = True
            self.last_heard, self.next_beat = now, now + self.heartbeat_s
        elif now >= self.next_beat:
            self._send([HEARTBEAT])
            self.next_beat = now + self.heartbeat_s
        if not self.broker_lost and now - self.last_heard > LIVENESS * self.heartbeat_s:
            self.broker_lost = True
            log.error("broker gone: no word for %.1f s; stopping", now - self.last_heard)
            if self.on_lost is not None:
                self.on_lost()

    def close(self) -> None:
        self.socket.close()

    def _send(self, frames: list[bytes]) -> None:
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            log.warning("the broker is not taking messages: dropped a %r", frames[0])

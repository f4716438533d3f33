"""`hhmr serve --workers N`: a broker in front of worker processes (the Paranoid Pirate
pattern, ZeroMQ guide ch. 4); it loads no model.

The broker binds the client-facing ROUTER (as a single server does, through `RouterLink`) and
a worker-facing ROUTER that `hhmr worker --connect BACKEND` processes connect to. It sends each
request to a live worker chosen by rendezvous hashing of the request id (a client's resend
reaches the same worker), answers BUSY when no worker is ready, heartbeats its workers, and
starts and restarts its N workers. The frames are in `hhmr.server.worker_link`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import zmq
from zmq.utils.monitor import recv_monitor_message

from hhmr import protocol as P
from hhmr.server.sockets import (
    Incoming,
    RouterLink,
    bind_router,
    check_bind,
    is_loopback,
    load_keys,
    on_signals,
    start_authenticator,
)
from hhmr.server.worker_link import (
    GONE,
    HEARTBEAT,
    HEARTBEAT_S,
    LIVENESS,
    READY,
    REPLY,
    REQUEST,
    pid_of,
)

log = logging.getLogger("hhmr.serve")

BACKOFF_S = 1.0  # first restart delay; doubles per restart of a slot, up to BACKOFF_MAX_S
BACKOFF_MAX_S = 30.0
HEALTHY_S = 60.0  # a worker that ran this long resets its slot's backoff
READY_S = 300.0  # a worker not ready this long after its start is stuck in loading: killed
MAX_RESTARTS = 5  # restarts per slot within RESTART_WINDOW_S; then the slot stays down
RESTART_WINDOW_S = 600.0
SMALL_REQUEST = 64 << 10  # requests up to this size are decoded to read their op
BUSY_MESSAGE = "no worker is ready; retry"
BUSY_RETRY_S = 1.0  # about a worker's restart backoff, and a heartbeat


def check_backend(backend: str | None, curve_secret_key: str | None,
                  worker_keys: str | None) -> None:
    """Raise ValueError for a non-loopback backend without CurveZMQ and worker keys: any
    process that reaches it could take clients' requests and forge their replies."""
    if worker_keys is not None:
        if curve_secret_key is None:
            raise ValueError("--worker-keys needs --curve-secret-key: the broker's backend "
                             "is a CurveZMQ server with the broker's key")
        if not Path(worker_keys).is_dir():
            raise ValueError(f"--worker-keys {worker_keys}: not a folder of worker public "
                             "keys (*.key files made by zmq.auth.create_certificates)")
    if backend is not None and not is_loopback(backend) and worker_keys is None:
        raise ValueError(f"refusing to bind the backend {backend}: workers off loopback take "
                         "clients' requests and send their replies, so they must be "
                         "authenticated (--curve-secret-key FILE and --worker-keys DIR, "
                         "the workers' CurveZMQ public keys)")


def rendezvous(key: bytes, workers: list[bytes]) -> list[bytes]:
    """`workers` in preference order for `key` (highest random weight first): a key keeps its
    worker while that worker lives, whichever others come and go."""
    return sorted(workers, key=lambda w: hashlib.blake2b(key + b"\0" + w,
                                                         digest_size=8).digest(), reverse=True)


def local_address(endpoint: str) -> str:
    """Where a worker on this machine connects to a backend bound to `endpoint`."""
    if endpoint.startswith("tcp://"):
        url = urlparse(endpoint)
        if url.hostname in ("0.0.0.0", "*", "::", ""):
            return f"tcp://127.0.0.1:{url.port}"
    return endpoint


@dataclass
class Slot:
    """One of the N workers the broker starts, watches and restarts."""

    index: int
    proc: subprocess.Popen | None = None
    started: float = 0.0
    died: float | None = None  # when its last process was found dead (until replaced)
    restart_at: float | None = None
    backoff: float = BACKOFF_S
    history: list[float] = field(default_factory=list)  # its restarts in the window
    down: bool = False  # too many restarts: left down
    ready: bool = False  # its current process has said READY
    killed: bool = False  # its current process was killed for not getting ready


class Broker:
    """The broker's sockets, workers and supervision; `run` serves until `stop` is set."""

    def __init__(self, bind: str, workers: int, device: str = "auto",
                 weights: str | None = None, curve_secret_key: str | None = None,
                 backend: str | None = None, worker_keys: str | None = None,
                 heartbeat_s: float = HEARTBEAT_S, curve_clients: str | None = None) -> None:
        check_bind(bind, curve_secret_key, curve_clients)
        check_backend(backend, curve_secret_key, worker_keys)
        self.bind, self.heartbeat_s = bind, heartbeat_s
        self.stop = threading.Event()
        # private (0700): the default ipc:// backend and the keys of the broker's own workers
        self.tmp = tempfile.mkdtemp(prefix="hhmr-broker-")
        self.ctx = zmq.Context()
        # the backend has its own context: a ZAP handler (worker keys) serves a whole context
        # and would otherwise judge the clients' CurveZMQ keys too
        self.back_ctx = zmq.Context()
        self.auth = None
        self.client_auth = None
        self.link: RouterLink | None = None
        self.back: zmq.Socket | None = None
        self.back_monitor: zmq.Socket | None = None
        try:
            self.client_auth = start_authenticator(self.ctx, curve_clients)
            self.link = RouterLink(bind_router(self.ctx, bind, P.Limits().max_message_bytes,
                                               curve_secret_key))
            child_keys = self._open_backend(backend or f"ipc://{self.tmp}/workers",
                                            curve_secret_key, worker_keys, workers > 0)
        except BaseException:
            self.close()
            raise
        self.cmd = [sys.executable, "-m", "hhmr.cli", "worker", "--connect",
                    local_address(self.backend), "--device", device, *child_keys]
        if weights:
            self.cmd += ["--weights", weights]
        self.slots = [Slot(i) for i in range(workers)]
        self.unmatched_ready = False  # a READY came from a pid no slot started (see _ready)
        self.live: dict[bytes, float] = {}  # worker id -> when it counts as dead
        self.sent_to: dict[bytes, set[bytes]] = {}  # client connection -> workers it reached
        self.envelopes: dict[bytes, list[bytes]] = {}  # connections whose envelope is longer
        self.info_ids: dict[bytes, set[str]] = {}  # connection -> its pending info requests
        self.restarts = 0
        self.started = time.time()
        self.last_restart: float | None = None
        self.replace_s: float | None = None

    def _open_backend(self, backend: str, curve_secret_key: str | None,
                      worker_keys: str | None, spawns: bool) -> list[str]:
        """Bind the worker-facing ROUTER; the extra `hhmr worker` arguments of the broker's
        own workers (their CurveZMQ keys when the backend checks keys)."""
        back = self.back = self.back_ctx.socket(zmq.ROUTER)
        back.setsockopt(zmq.LINGER, 0)
        back.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished worker raises
        back.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting worker takes its id back
        back.setsockopt(zmq.SNDHWM, 100_000)
        back.setsockopt(zmq.RCVHWM, 100_000)
        child_args: list[str] = []
        if worker_keys is not None:
            from zmq.auth import create_certificates
            from zmq.auth.thread import ThreadAuthenticator

            allowed = Path(self.tmp) / "worker_keys"
            allowed.mkdir()
            for key in Path(worker_keys).glob("*.key"):
                shutil.copy(key, allowed / key.name)
            if spawns:  # a key of its own for the workers the broker starts
                public, secret = create_certificates(self.tmp, "hhmr-broker-child")
                shutil.copy(public, allowed / "hhmr-broker-child.key")
                child_args = ["--curve-server-key", curve_secret_key,
                              "--curve-secret-key", secret]
            self.auth = ThreadAuthenticator(self.back_ctx)
            self.auth.start()
            self.auth.configure_curve(domain="*", location=str(allowed))
            back.curve_publickey, back.curve_secretkey = load_keys(curve_secret_key)
            back.curve_server = True
            self.back_monitor = back.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        try:
            back.bind(backend)
        except zmq.ZMQError as err:
            raise OSError(f"cannot bind the backend {backend}: {err}") from None
        self.backend = back.getsockopt_string(zmq.LAST_ENDPOINT)
        return child_args

    # ---- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        """Start the workers and serve until `stop` is set; then stop the workers."""
        front, back = self.link.socket, self.back
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        if self.back_monitor is not None:
            poller.register(self.back_monitor, zmq.POLLIN)
        for slot in self.slots:
            self._start(slot)
        log.info("broker on %s, backend %s, %d workers", self.bind, self.backend,
                 len(self.slots))
        next_beat = time.monotonic() + self.heartbeat_s
        try:
            while not self.stop.is_set():
                events = dict(poller.poll(int(self.heartbeat_s * 200)))
                if back in events:
                    for _ in range(1000):  # bounded, so heartbeats stay on time
                        try:
                            frames = back.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._from_worker(frames)
                if front in events:
                    for _ in range(1000):
                        inc = self.link.recv()
                        if inc is None:
                            break
                        self._from_client(inc)
                if self.back_monitor in events:
                    self._auth_failures()
                for conn in self.link.gone():
                    self._client_gone(conn)
                now = time.monotonic()
                if now >= next_beat:
                    for wid in list(self.live):
                        self._send_worker(wid, [HEARTBEAT])
                    next_beat = now + self.heartbeat_s
                self._expire(now)
                self._supervise(now)
        finally:
            self._stop_workers()
            self.close()
            log.info("broker stopped")

    def _from_worker(self, frames: list[bytes]) -> None:
        if len(frames) < 2 or frames[1] not in (READY, HEARTBEAT, REPLY):
            log.warning("ignored a malformed message from a worker (%d frames)", len(frames))
            return
        wid, now = frames[0], time.monotonic()
        if wid not in self.live:  # READY, or a worker that outlived a broker restart
            self.live[wid] = 0.0
            self._ready(wid, now)
        self.live[wid] = now + LIVENESS * self.heartbeat_s
        if frames[1] == REPLY:
            if len(frames) == 4:
                self._reply(wid, frames[2], frames[3])
            else:
                log.warning("ignored a malformed REPLY from worker %s",
                            wid.decode(errors="replace"))

    def _ready(self, wid: bytes, now: float) -> None:
        log.info("worker %s ready (%d live)", wid.decode(errors="replace"), len(self.live))
        slot = self._slot_of(wid)
        if slot is not None:
            slot.ready = True
        elif self.slots and not self.unmatched_ready:
            # a worker of ours under another pid than the one started (a launcher between,
            # as a Windows venv's python.exe is): readiness cannot be told apart per slot
            self.unmatched_ready = True
            log.warning("worker %s matches no slot's pid: no readiness deadline",
                        wid.decode(errors="replace"))
        if slot is not None and slot.died is not None:
            self.replace_s = now - slot.died
            slot.died = None
            log.info("worker slot %d replaced %.1f s after its worker died", slot.index,
                     self.replace_s)

    def _reply(self, wid: bytes, conn: bytes, payload: bytes) -> None:
        if wid not in self.sent_to.get(conn, ()):
            log.warning("dropped a reply of worker %s to a client it was not sent",
                        wid.decode(errors="replace"))
            return
        pending = self.info_ids.get(conn)
        if pending:
            payload = self._with_broker_state(payload, pending, wid)
        self.link.send(self.envelopes.get(conn, [conn]), payload)

    def _with_broker_state(self, payload: bytes, pending: set[str], wid: bytes) -> bytes:
        """An ok reply to an info request gets the broker's map."""
        try:
            msg = P.unpack(payload, decode_arrays=False)
        except P.ProtocolError:
            return payload
        if not isinstance(msg, dict) or msg.get("id") not in pending or \
                msg.get("status") == "progress":
            return payload
        pending.discard(msg["id"])
        if msg.get("status") != "ok" or not isinstance(msg.get("result"), dict):
            return payload
        msg["result"]["broker"] = self.state(wid)
        return P.pack(msg)

    def state(self, wid: bytes | None = None) -> dict:
        """The `broker` map of the info reply: supervision state, and which worker answered."""
        return {"workers": len(self.live), "slots": len(self.slots),
                "slots_down": sum(s.down for s in self.slots), "restarts": self.restarts,
                "started": self.started,
                "last_restart_s": None if self.last_restart is None
                else time.time() - self.last_restart,
                "replace_s": self.replace_s,
                "worker": None if wid is None else wid.decode(errors="replace")}

    def _from_client(self, inc: Incoming) -> None:
        payload = inc.payload
        rid = P.peek_id(payload)
        op, key = None, rid
        if len(payload) <= SMALL_REQUEST:
            try:
                msg = P.unpack(payload, decode_arrays=False)
            except P.ProtocolError:
                msg = None
            if isinstance(msg, dict):
                op = msg.get("op")
                args = msg.get("args")
                # a cancel goes where its target went: the target's id picks the worker
                if op == "cancel" and isinstance(args, dict) and \
                        isinstance(args.get("target"), str):
                    key = args["target"]
        conn = inc.connection
        frames = [REQUEST, inc.envelope[0], inc.owner, conn, payload]
        for wid in rendezvous(key.encode() if key else conn, list(self.live)):
            if self._send_worker(wid, frames):
                self.sent_to.setdefault(conn, set()).add(wid)
                if len(inc.envelope) != 1:  # e.g. a REQ socket's empty delimiter frame
                    self.envelopes[conn] = inc.envelope
                if op == "info" and rid is not None:
                    self.info_ids.setdefault(conn, set()).add(rid)
                return
        log.info("%s %s BUSY: no worker is ready", rid, op)
        self.link.send(inc.envelope, P.pack(P.error_reply(rid, P.BUSY, BUSY_MESSAGE,
                                                          BUSY_RETRY_S)))

    def _client_gone(self, conn: bytes) -> None:
        for wid in list(self.live):
            self._send_worker(wid, [GONE, conn])
        self.sent_to.pop(conn, None)
        self.envelopes.pop(conn, None)
        self.info_ids.pop(conn, None)

    def _send_worker(self, wid: bytes, frames: list[bytes]) -> bool:
        try:
            self.back.send_multipart([wid, *frames], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as err:
            if err.errno == zmq.EHOSTUNREACH:  # its connection is gone (ROUTER_MANDATORY)
                self._forget(wid, "disconnected")
            else:  # EAGAIN: its queue is full
                log.warning("worker %s is not taking messages", wid.decode(errors="replace"))
            return False

    def _forget(self, wid: bytes, why: str) -> None:
        if self.live.pop(wid, None) is not None:
            log.warning("worker %s %s (%d live)", wid.decode(errors="replace"), why,
                        len(self.live))

    def _auth_failures(self) -> None:
        while self.back_monitor.poll(0):
            event = recv_monitor_message(self.back_monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                log.warning("refused a worker connection: its key is not in --worker-keys")

    # ---- supervision -----------------------------------------------------------------------
    def _slot_of(self, wid: bytes) -> Slot | None:
        pid = pid_of(wid)
        for slot in self.slots:
            if slot.proc is not None and slot.proc.pid == pid:
                return slot
        return None

    def _expire(self, now: float) -> None:
        """A worker silent for LIVENESS intervals is dead: killed if it is ours, forgotten."""
        for wid, deadline in list(self.live.items()):
            if now > deadline:
                slot = self._slot_of(wid)
                if slot is not None and slot.proc.poll() is None:
                    slot.proc.kill()  # hung: supervision restarts it
                self._forget(wid, f"silent for {LIVENESS * self.heartbeat_s:.0f} s: dead")

    def _supervise(self, now: float) -> None:
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and not slot.ready and not slot.killed \
                    and not self.unmatched_ready and now - slot.started > READY_S \
                    and proc.poll() is None:
                log.error("worker slot %d (pid %d) not ready %.0f s after its start: killed",
                          slot.index, proc.pid, now - slot.started)
                proc.kill()  # reaped by a later turn's poll(): this loop never blocks
                slot.killed = True
            if proc is not None and proc.poll() is not None:
                self._died(slot, now)
            if slot.proc is None and not slot.down and slot.restart_at is not None \
                    and now >= slot.restart_at:
                slot.restart_at = None
                slot.history.append(now)
                self.restarts += 1
                self.last_restart = time.time()
                log.warning("restarting worker slot %d (restart %d of the slot in %.0f min, "
                            "%d in all)", slot.index, len(slot.history),
                            RESTART_WINDOW_S / 60, self.restarts)
                self._start(slot)

    def _died(self, slot: Slot, now: float) -> None:
        proc = slot.proc
        slot.proc, slot.died = None, now
        for wid in list(self.live):
            if pid_of(wid) == proc.pid:
                self._forget(wid, "exited")
        if slot.ready and now - slot.started > HEALTHY_S:  # not one stuck loading
            slot.backoff = BACKOFF_S
        slot.history = [t for t in slot.history if now - t < RESTART_WINDOW_S]
        if len(slot.history) >= MAX_RESTARTS:
            slot.down = True
            log.error("worker slot %d (pid %d) exited with %s; %d restarts in %.0f min: "
                      "leaving it down", slot.index, proc.pid, proc.returncode,
                      len(slot.history), RESTART_WINDOW_S / 60)
            return
        slot.restart_at = now + slot.backoff
        log.error("worker slot %d (pid %d) exited with %s; restarting in %.0f s", slot.index,
                  proc.pid, proc.returncode, slot.backoff)
        slot.backoff = min(2 * slot.backoff, BACKOFF_MAX_S)

    def _start(self, slot: Slot) -> None:
        slot.proc = subprocess.Popen(self.cmd, env=dict(os.environ))
        slot.started, slot.ready, slot.killed = time.monotonic(), False, False
        log.info("worker slot %d: started pid %d", slot.index, slot.proc.pid)

    def _stop_workers(self) -> None:
        """SIGTERM to the broker's workers; SIGKILL to those still running after 20 s."""
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d ignored SIGTERM: killed", p.pid)
                p.kill()
                p.wait()

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
        if self.back_monitor is not None:
            self.back.disable_monitor()
            self.back_monitor.close()
        if self.back is not None:
            self.back.close()
        for auth in (self.auth, self.client_auth):
            if auth is not None:
                auth.stop()
        self.ctx.term()
        self.back_ctx.term()
        shutil.rmtree(self.tmp, ignore_errors=True)


def serve_broker(bind: str, workers: int, device: str = "auto", weights: str | None = None,
                 curve_secret_key: str | None = None, backend: str | None = None,
                 worker_keys: str | None = None, curve_clients: str | None = None) -> None:
    """A broker in front of `workers` worker processes that it starts and restarts (0: only
    workers started elsewhere, `hhmr worker --connect BACKEND`), until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    broker = Broker(bind, workers, device, weights, curve_secret_key, backend, worker_keys,
                    curve_clients=curve_clients)
    on_signals(broker.stop)
    broker.run()

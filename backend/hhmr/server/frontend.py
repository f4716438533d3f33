"""The socket thread of `hhmr serve`: it serves the client-facing socket (a ROUTER, or a
worker's DEALER connected to a broker), decodes and validates each request, answers `info`,
`status` and `cancel` itself and queues the sampling ops for the compute loop (on the main
thread).

It also forwards the compute loop's progress and final replies to the clients. Malformed
input gets an error reply and the server keeps serving; one log line per request.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import zmq

from hhmr import __version__
from hhmr import protocol as P
from hhmr.server.compute import Busy, ComputeLoop, QueuedRequest
from hhmr.server.sockets import (
    Incoming,
    RouterLink,
    bind_router,
    check_bind,
    connect_dealer,
    on_signals,
    start_authenticator,
)
from hhmr.server.worker_link import WorkerLink

log = logging.getLogger("hhmr.serve")


class ServerFailed(RuntimeError):
    """`serve_forever` ended because one of its loops failed (logged), not on `stop`."""


HEARTBEAT_S = 1.0  # a queued or running request hears from the server at least this often
ORPHAN_GRACE_S = 5.0  # a dropped client's requests are cancelled unless resent within this


class Server:
    """One `hhmr serve` process: `open` binds, `load` loads the model, `serve_forever` runs
    the compute loop (this thread) and the socket loop (a thread) until `stop` is set."""

    def __init__(self, bind: str = "tcp://127.0.0.1:5557", device: str = "auto",
                 limits: P.Limits | None = None, weights: str | None = None,
                 curve_secret_key: str | None = None, connect: str | None = None,
                 curve_clients: str | None = None,
                 curve_server_key: str | None = None) -> None:
        self.bind = bind
        self.curve_server_key = curve_server_key  # worker mode: the broker's public key
        self.connect = connect  # worker mode: a DEALER connected to a broker's backend
        self.limits = limits or P.Limits()
        self.device_name = device
        self.weights = weights
        self.curve_secret_key = curve_secret_key
        self.curve_clients = curve_clients
        if connect is None:
            check_bind(bind, curve_secret_key, curve_clients)
        self.stop = threading.Event()
        self.compute = ComputeLoop(self.stop, self.limits)
        self.ctx = zmq.Context()
        self.pipe = None
        self.topology: dict | None = None  # the info reply's, made by `load`
        self.sockets_failed = False  # the socket loop ended on a bug (logged)
        self.started = time.time()
        self.served = 0
        self.auth = None

    def load(self) -> None:
        from hhmr.device import pick_device
        from hhmr.reconstruct import warm_up as warm_up_photos
        from hhmr.sampling import HandDiffusionPipeline

        self.device = pick_device(self.device_name)
        self.pipe = HandDiffusionPipeline.from_pretrained(self.weights, device=str(self.device))
        # made here, on the main thread: a torch op on the socket thread would start a second
        # OpenMP pool, and with more OpenMP threads than cores libgomp all but stops
        # spin-waiting, which halves sampling speed on a 2-core CPU (docs/service.md)
        self.topology = hand_topology(self.pipe.hand)
        seconds = self.pipe.warm_up()
        try:  # the first photo would pay it: about 2.4 s on a 2-core CPU (docs/photos.md)
            seconds += warm_up_photos(self.pipe)
        except Exception:  # noqa: BLE001 - only a speed-up: photos still work, slower once
            log.exception("warming up the photo path failed")
        log.info("model ready on %s (warm-up %.1f s)", self.device, seconds)

    def open(self) -> None:
        """Bind the client-facing socket (first, so a busy port fails before loading)."""
        if self.connect is not None:
            self.link = WorkerLink(connect_dealer(self.ctx, self.connect, self.curve_server_key,
                                                  self.curve_secret_key), on_lost=self.stop.set)
        else:
            self.auth = start_authenticator(self.ctx, self.curve_clients)
            self.link = RouterLink(bind_router(self.ctx, self.bind,
                                               self.limits.max_message_bytes,
                                               self.curve_secret_key))

    def serve_forever(self) -> None:
        """Serve until `stop` is set: the compute loop on this thread (the main one: torch's
        OpenMP pool runs about half as fast from any other, docs/service.md) and the socket
        loop on a thread of its own. Raises ServerFailed when either loop ended on a bug."""
        results = self.ctx.socket(zmq.PULL)
        address = f"inproc://results-{id(self)}"
        results.bind(address)
        sockets = threading.Thread(target=self._socket_loop, args=(results,),
                                   name="hhmr-sockets")
        sockets.start()
        try:
            self.compute.run(self.pipe, self.ctx, address)
        finally:
            self.stop.set()
            sockets.join()
        if self.compute.failed or self.sockets_failed:
            raise ServerFailed("the server stopped on an internal error (logged above)")

    def _socket_loop(self, results: zmq.Socket) -> None:
        """Receive and answer requests, forward the compute loop's replies, beat; on `stop`,
        cancel everything, send the final replies and close the sockets."""
        try:
            link = self.link
            poller = zmq.Poller()
            poller.register(link.socket, zmq.POLLIN)
            poller.register(results, zmq.POLLIN)
            log.info("hhmr %s serving %s on %s", __version__, self.connect or self.bind,
                     self.device)
            while not self.stop.is_set():
                events = dict(poller.poll(200))
                if results in events:
                    self._forward(results)
                if link.socket in events:
                    for _ in range(1000):  # then the results and heartbeats get a turn
                        inc = link.recv()
                        if inc is None:
                            break
                        self._serve_one(inc)
                self._beat()
                link.tick()
        except BaseException:  # noqa: BLE001 - logged; the compute loop sees `stop` and ends
            log.exception("the socket loop failed: the server stops")
            self.sockets_failed = True
        finally:
            self.stop.set()
            try:
                self._close(results)
            except BaseException:  # noqa: BLE001
                log.exception("the socket loop failed while closing")
                self.sockets_failed = True

    def _close(self, results: zmq.Socket) -> None:
        """Cancel every request, send the final replies, close the sockets and the context."""
        self.compute.cancel_all()
        self.compute.join(timeout=10)
        # the final CANCELLED replies of running and queued requests, then a moment for them
        # to leave before the socket closes
        self._forward(results)
        self._beat()
        self.link.socket.setsockopt(zmq.LINGER, 500)
        self.link.close()
        results.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()
        log.info("stopped after %d requests", self.served)

    def _forward(self, results: zmq.Socket) -> None:
        """Send on the compute loop's progress and final replies."""
        while True:
            try:
                frames = results.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.link.send(frames[:-1], frames[-1])

    def _beat(self) -> None:
        """Every poll turn: requests of dropped clients, deadlines, queued requests that
        stopped (their final reply) and heartbeats (each request at most once a HEARTBEAT_S)."""
        now = time.perf_counter()
        self.compute.orphan(self.link.gone(), now)
        for envelope, reply in self.compute.beat(now, HEARTBEAT_S, ORPHAN_GRACE_S):
            if reply["status"] == "error":  # a queued request that stopped
                log.info("%s error %s: %s", reply["id"], reply["error"]["code"],
                         reply["error"]["message"])
            self.link.send(envelope, P.pack(reply))

    def _serve_one(self, inc: Incoming) -> None:
        """Answer one message; no exception escapes (a bug becomes an INTERNAL reply)."""
        try:
            for reply in self._handle(inc):
                self.link.send(inc.envelope, P.pack(reply))
        except Exception:  # noqa: BLE001 - one bad message must never end the server
            rid = P.peek_id(inc.payload, self.limits.max_message_bytes)
            log.exception("request %s: internal error", rid)
            try:
                self.link.send(inc.envelope, P.pack(P.error_reply(
                    rid, P.INTERNAL, "internal error while handling the request (logged)")))
            except Exception:  # noqa: BLE001
                log.exception("could not send the INTERNAL reply")

    def _handle(self, inc: Incoming) -> list[dict]:
        """Replies to send now for one incoming message (none when a request was queued)."""
        t0 = time.perf_counter()
        self.served += 1
        try:
            req = P.decode_request(inc.payload, self.limits,
                                   num_vertices=self.pipe.hand.num_vertices)
        except P.ProtocolError as err:
            log.info("? %s error %s: %s", err.request_id, err.code, err.message[:120])
            return [P.error_reply(err.request_id, err.code, err.message)]
        if req.op == "info":
            reply = P.ok_reply(req.id, self.info())
        elif req.op == "status":
            running, queued = self.compute.ids(inc.owner)
            reply = P.ok_reply(req.id, {"running": running, "queued": queued,
                                        "served": self.served,
                                        "uptime_s": time.time() - self.started})
        elif req.op == "cancel":
            target = req.args["target"]
            reply = P.ok_reply(req.id, {"target": target,
                                        "found": self.compute.cancel(inc.owner, target)})
        else:
            item = QueuedRequest(inc.envelope, req, inc.owner, inc.connection)
            try:
                queued = self.compute.submit(item)
            except Busy as busy:
                log.info("%s %s busy", req.id, req.op)
                return [P.error_reply(req.id, P.BUSY, f"{busy}; retry after "
                                      f"{busy.retry_after_s:g} s", busy.retry_after_s)]
            if queued is not item:
                log.info("%s %s resent: attached to the request under way", req.id, req.op)
                return [P.progress_reply(req.id, queued.fraction,
                                         f"{req.op}: resend attached to the request under way")]
            return []
        log.info("%s %s ok %.1f ms", req.id, req.op, (time.perf_counter() - t0) * 1000)
        return [reply]

    def info(self) -> dict:
        """The `info` result (no torch op: this runs on the socket thread)."""
        hand = self.pipe.hand
        auto = self.pipe.autoguidance()
        return {
            "server": "hhmr", "version": __version__, "protocol": P.PROTOCOL_VERSION,
            "device": str(self.device), "model": hand.name,
            "autoguidance": None if auto is None else auto.weight,
            "limits": self.limits.to_dict(), "heartbeat_s": HEARTBEAT_S,
            "ops": list(P.OPS),
            "topology": self.topology,
        }


def hand_topology(hand) -> dict:
    """The ``topology`` of the info reply: what a client needs to build and rig the mesh."""
    return {
        "num_vertices": hand.num_vertices,
        "faces": hand.faces.cpu().numpy().astype(np.int32),
        "template": hand.v_template.cpu().numpy().astype(np.float32),
        "keypoint_names": list(hand.keypoint_names),
        "parents": list(hand.parents),
        "skin_weights": hand.weights.cpu().numpy().astype(np.float32),
        "rest_joints": (hand.joint_regressor16() @ hand.v_template).cpu().numpy()
        .astype(np.float32),
        "keypoint_regressor": hand.keypoint_regressor.cpu().numpy().astype(np.float32),
        "joint_frames": hand.joint_limits.frames.cpu().numpy().astype(np.float32),
        # the shape space [V, 3, S]: a client rebuilds a hypothesis's rest skeleton from its betas
        "shapedirs": hand.shapedirs.cpu().numpy().astype(np.float32),
    }


def serve(bind: str, device: str = "auto", weights: str | None = None,
          curve_secret_key: str | None = None, connect: str | None = None,
          limits: P.Limits | None = None, curve_clients: str | None = None,
          curve_server_key: str | None = None) -> None:
    """Run a server (or, with `connect`, a worker of a broker) until SIGINT or SIGTERM (or,
    for a worker, until its broker is gone)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = Server(bind, device, limits=limits, weights=weights,
                    curve_secret_key=curve_secret_key, connect=connect,
                    curve_clients=curve_clients, curve_server_key=curve_server_key)
    server.open()
    server.load()
    on_signals(server.stop)
    server.serve_forever()

"""`hhmr serve`: the ZeroMQ + msgpack backend service.

A ROUTER socket serves many clients at once. The socket thread decodes and validates each
request (`hhmr.protocol`), answers `info`, `status` and `cancel` itself, and queues sampling
jobs for a compute thread, which runs them on the device and sends progress and results back
through an inproc socket (ZeroMQ sockets never cross threads). Malformed input gets an error
reply and the server keeps serving. One log line per request.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np
import zmq
from PIL import Image

from hhmr import __version__
from hhmr import protocol as P
from hhmr.reconstruct import NoHandError

log = logging.getLogger("hhmr.serve")


class Cancelled(Exception):
    pass


@dataclass
class Job:
    envelope: list[bytes]
    request: P.Request
    received: float = field(default_factory=time.perf_counter)
    cancel: threading.Event = field(default_factory=threading.Event)


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


class Server:
    def __init__(self, bind: str = "tcp://127.0.0.1:5557", device: str = "auto",
                 limits: P.Limits | None = None, weights: str | None = None,
                 curve_secret_key: str | None = None, connect: str | None = None) -> None:
        self.bind = bind
        self.connect = connect  # worker mode: a DEALER connected to a broker's backend
        self.limits = limits or P.Limits()
        self.device_name = device
        self.weights = weights
        self.curve_secret_key = curve_secret_key
        if connect is None and not is_loopback(bind) and curve_secret_key is None:
            raise ValueError(f"refusing to bind {bind}: a non-loopback address needs CurveZMQ "
                             "keys (--curve-secret-key FILE, made with zmq.auth)")
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.running: dict[str, Job] = {}
        self.queued: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ctx = zmq.Context()
        self.pipe = None
        self.started = time.time()
        self.served = 0

    # ---- set-up --------------------------------------------------------------------------
    def load(self) -> None:
        from hhmr.pipeline import HandDiffusionPipeline
        from hhmr.training.train import pick_device

        self.device = pick_device(self.device_name)
        self.pipe = HandDiffusionPipeline.from_pretrained(self.weights, device=str(self.device))
        seconds = self.pipe.warm_up()
        log.info("model ready on %s (warm-up %.1f s)", self.device, seconds)

    def _socket(self) -> zmq.Socket:
        if self.connect is not None:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.connect)
            return sock
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # a ROUTER drops replies to a peer past its high-water mark: leave room for
        # clients that send many requests before reading (progress replies included)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        # up to twice the limit a message gets a TOO_LARGE reply; beyond, ZeroMQ drops the
        # connection before buffering it all
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.limits.max_message_bytes)
        if self.curve_secret_key is not None:
            from zmq.auth import load_certificate

            public, secret = load_certificate(self.curve_secret_key)
            if secret is None:
                raise ValueError(f"{self.curve_secret_key} holds no secret key: pass the "
                                 "*.key_secret file made by zmq.auth.create_certificates")
            sock.curve_secretkey, sock.curve_publickey = secret, public
            sock.curve_server = True
        try:
            sock.bind(self.bind)
        except zmq.ZMQError as err:
            sock.close()
            if err.errno == zmq.EADDRINUSE:
                raise OSError(f"cannot bind {self.bind}: the address is already in use "
                              "(is another hhmr serve running? pick another --bind port)"
                              ) from None
            raise OSError(f"cannot bind {self.bind}: {err}") from None
        return sock

    # ---- the socket thread ---------------------------------------------------------------
    def open(self) -> None:
        """Bind the client-facing socket (first, so a busy port fails before loading)."""
        self.front = self._socket()

    def serve_forever(self) -> None:
        front = self.front
        results = self.ctx.socket(zmq.PULL)
        results.bind(f"inproc://results-{id(self)}")
        compute = threading.Thread(target=self._compute_loop, daemon=True)
        compute.start()
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)
        log.info("hhmr %s serving %s on %s", __version__, self.connect or self.bind,
                 self.device)
        try:
            while not self.stop.is_set():
                events = dict(poller.poll(200))
                if results in events:
                    while True:
                        try:
                            front.send_multipart(results.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                if front in events:
                    frames = front.recv_multipart()
                    for reply in self._handle(frames):
                        front.send_multipart(frames[:-1] + [P.pack(reply)])
        finally:
            self.stop.set()
            for job in list(self.running.values()) + list(self.queued.values()):
                job.cancel.set()
            compute.join(timeout=10)
            front.close()
            results.close()
            self.ctx.term()
            log.info("stopped after %d requests", self.served)

    def _handle(self, frames: list[bytes]) -> list[dict]:
        """Replies to send now for one incoming message (none when a job was queued)."""
        t0 = time.perf_counter()
        self.served += 1
        try:
            req = P.decode_request(frames[-1], self.limits,
                                   num_vertices=self.pipe.hand.num_vertices)
        except P.ProtocolError as err:
            log.info("? %s error %s: %s", err.request_id, err.code, err.message[:120])
            return [P.error_reply(err.request_id, err.code, err.message)]
        if req.op == "info":
            reply = P.ok_reply(req.id, self.info())
        elif req.op == "status":
            with self.lock:
                reply = P.ok_reply(req.id, {"running": list(self.running),
                                            "queued": list(self.queued),
                                            "served": self.served,
                                            "uptime_s": time.time() - self.started})
        elif req.op == "cancel":
            target = req.args["target"]
            with self.lock:
                job = self.running.get(target) or self.queued.get(target)
            if job is not None:
                job.cancel.set()
            reply = P.ok_reply(req.id, {"target": target, "found": job is not None})
        else:
            job = Job(frames[:-1], req)
            with self.lock:
                self.queued[req.id] = job
            self.jobs.put(job)
            return []
        log.info("%s %s ok %.1f ms", req.id, req.op, (time.perf_counter() - t0) * 1000)
        return [reply]

    def info(self) -> dict:
        hand = self.pipe.hand
        auto = self.pipe.autoguidance("generate")
        return {
            "server": "hhmr", "version": __version__, "protocol": P.PROTOCOL_VERSION,
            "device": str(self.device), "model": hand.name,
            "autoguidance": None if auto is None else auto.weight,
            "limits": self.limits.to_dict(),
            "ops": list(P.OPS),
            "topology": hand_topology(hand),
        }

    # ---- the compute thread --------------------------------------------------------------
    def _compute_loop(self) -> None:
        out = self.ctx.socket(zmq.PUSH)
        out.connect(f"inproc://results-{id(self)}")
        try:
            while not self.stop.is_set():
                try:
                    first = self.jobs.get(timeout=0.2)
                except queue.Empty:
                    continue
                batch = [first]  # requests that arrived together share the device
                while sum(j.request.args["n"] for j in batch) < MAX_BATCH:
                    try:
                        batch.append(self.jobs.get_nowait())
                    except queue.Empty:
                        break
                with self.lock:
                    for job in batch:
                        self.queued.pop(job.request.id, None)
                        self.running[job.request.id] = job
                try:
                    replies = self._run_batch(batch, out)
                finally:
                    with self.lock:
                        for job in batch:
                            self.running.pop(job.request.id, None)
                for job, reply in zip(batch, replies, strict=True):
                    out.send_multipart(job.envelope + [P.pack(reply)])
        finally:
            out.close()

    def _run_batch(self, batch: list[Job], out: zmq.Socket) -> list[dict]:
        """Replies for a batch: sampling ops as one device batch, reconstruct one by one."""
        t0 = time.perf_counter()
        replies: dict[int, dict] = {}
        plans: dict[int, object] = {}
        for i, job in enumerate(batch):
            if job.request.op == "reconstruct":
                replies[i] = self._guarded(job, t0, out, lambda j=job: self._reconstruct(
                    j.request.args, _opts(j.request.args)))
                continue
            try:
                plans[i] = self._plan(job.request.op, job.request.args)
            except (ValueError, P.ProtocolError) as err:
                replies[i] = self._error_reply(job, err)
        if plans:
            live = [batch[i] for i in plans]
            results = self._guarded_many(live, t0, out,
                                         lambda: self.pipe.run(list(plans.values())))
            for i, res in zip(plans, results, strict=True):
                replies[i] = res
        for i, job in enumerate(batch):
            status = replies[i]["status"]
            code = replies[i].get("error", {}).get("code", "")
            log.info("%s %s %s%s n=%d steps=%d batch=%d %.1f ms", job.request.id,
                     job.request.op, status, f" {code}" if code else "", job.request.args["n"],
                     job.request.args["steps"], len(batch),
                     (time.perf_counter() - job.received) * 1000)
        return [replies[i] for i in range(len(batch))]

    def _progress(self, jobs: list[Job], out: zmq.Socket):
        def progress(i: int, total: int) -> None:
            if self.stop.is_set() or all(j.cancel.is_set() for j in jobs):
                raise Cancelled
            for j in jobs:
                out.send_multipart(j.envelope + [P.pack(P.progress_reply(
                    j.request.id, i / total, f"{j.request.op}: step {i + 1} of {total}"))])
        return progress

    def _guarded(self, job: Job, t0: float, out: zmq.Socket, fn) -> dict:
        return self._guarded_many([job], t0, out, lambda: [fn()])[0]

    def _guarded_many(self, jobs: list[Job], t0: float, out: zmq.Socket, fn) -> list[dict]:
        """Run fn (results per job) with progress and cancel; errors become error replies."""
        self.pipe.callback = self._progress(jobs, out)
        try:
            if all(j.cancel.is_set() for j in jobs):
                raise Cancelled
            results = fn()
        except Exception as err:  # noqa: BLE001 - mapped to error replies, server goes on
            return [self._error_reply(j, err) for j in jobs]
        finally:
            self.pipe.callback = None
        replies = []
        for job, res in zip(jobs, results, strict=True):
            if job.cancel.is_set():
                replies.append(P.error_reply(job.request.id, P.CANCELLED,
                                             "the request was cancelled"))
                continue
            timings = {"queue_s": t0 - job.received, "compute_s": time.perf_counter() - t0}
            if isinstance(res, dict):
                res["timings"] = timings
                replies.append(P.ok_reply(job.request.id, res))
            else:
                res.timings.update(timings)
                replies.append(P.ok_reply(job.request.id, _hypotheses(res, res.timings)))
        return replies

    def _error_reply(self, job: Job, err: Exception) -> dict:
        rid = job.request.id
        if isinstance(err, Cancelled):
            return P.error_reply(rid, P.CANCELLED, "the request was cancelled")
        if isinstance(err, NoHandError):
            return P.error_reply(rid, P.NO_HAND, str(err))
        if isinstance(err, P.ProtocolError):
            return P.error_reply(rid, err.code, err.message)
        if isinstance(err, ImportError):
            return P.error_reply(rid, P.UNKNOWN_OP, str(err))
        if isinstance(err, ValueError):
            return P.error_reply(rid, P.BAD_ARGUMENT, str(err))
        log.error("request %s failed", rid, exc_info=err)
        return P.error_reply(rid, P.INTERNAL, f"internal error: {err}")

    def _plan(self, op: str, a: dict):
        pipe, opts = self.pipe, _opts(a)
        if op == "generate":
            return pipe.plan_generate(**opts, autoguidance=a.get("autoguidance"))
        g = _guidance(a)
        if op == "inpaint":
            return pipe.plan_inpaint(a["vertices"], a["keep"], **opts, **g)
        if op == "refit3d":
            return pipe.plan_refit3d(a["joints"], a.get("joint_mask"), **opts, **g)
        if op == "fit2d":
            return pipe.plan_fit2d(a["keypoints"], a.get("confidence"), a.get("K"), **opts, **g)
        raise P.ProtocolError(P.UNKNOWN_OP, f"op '{op}' is not available on this server")

    def _reconstruct(self, a: dict, opts: dict) -> dict:
        from hhmr.reconstruct import default_intrinsics, reconstruct

        if a.get("image") is not None:
            try:
                rgb = np.asarray(Image.open(io.BytesIO(a["image"])).convert("RGB"))
            except (OSError, ValueError) as err:
                raise P.ProtocolError(P.BAD_ARGUMENT, f"cannot decode the image: {err}"
                                      ) from None
        else:
            rgb = a["rgb"]
        K = a.get("K")
        K = default_intrinsics(rgb.shape[1], rgb.shape[0]) if K is None else K
        found = reconstruct(self.pipe, rgb, K, a.get("handedness"), **_guidance(a), **opts)
        hands = []
        for det, h in found:
            item = _hypotheses(h, {})
            item.update(handedness=h.extra["handedness"], keypoints2d=det.keypoints,
                        detector_score=det.score)
            hands.append(item)
        return {"hands": hands, "image_size": [int(rgb.shape[1]), int(rgb.shape[0])],
                "K": np.asarray(K, np.float32)}


MAX_BATCH = 64  # hypotheses per device batch


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
    }


def _guidance(a: dict) -> dict:
    """The request's guidance options as the pipeline's task methods take them (a raw
    'guidance_scale' and a relative 'guidance_strength' together are a ValueError there)."""
    return {"guidance_scale": a.get("guidance_scale"),
            "guidance_strength": a.get("guidance_strength"),
            "guidance_space": a.get("guidance_space")}


def _opts(a: dict) -> dict:
    return {"n": a["n"], "steps": a["steps"], "seed": a["seed"],
            "central_first": a.get("central_first")}


def _hypotheses(h, timings: dict) -> dict:
    extra = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in h.extra.items()}
    return P.make_hypotheses(h.vertices.numpy(), h.joints.numpy(), h.scores.numpy(), timings,
                             **extra)


def _on_signals(stop: threading.Event) -> None:
    def handler(signum, frame) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def serve(bind: str, device: str = "auto", weights: str | None = None,
          curve_secret_key: str | None = None, connect: str | None = None,
          limits: P.Limits | None = None) -> None:
    """Run a server (or, with `connect`, a worker of a broker) until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = Server(bind, device, limits=limits, weights=weights,
                    curve_secret_key=curve_secret_key, connect=connect)
    server.open()
    server.load()
    _on_signals(server.stop)
    server.serve_forever()


def serve_broker(bind: str, workers: int, device: str = "auto", weights: str | None = None,
                 curve_secret_key: str | None = None, backend: str | None = None) -> None:
    """ZeroMQ's own proxy (ROUTER frontend, DEALER backend) in front of worker processes
    (`hhmr worker --connect BACKEND`); workers == 0 waits for workers started elsewhere."""
    import os
    import subprocess
    import sys
    import tempfile

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not is_loopback(bind) and curve_secret_key is None:
        raise ValueError(f"refusing to bind {bind}: a non-loopback address needs CurveZMQ "
                         "keys (--curve-secret-key FILE, made with zmq.auth)")
    helper = Server(bind, device, curve_secret_key=curve_secret_key)
    front = helper._socket()
    ctx = helper.ctx
    tmp = tempfile.mkdtemp(prefix="hhmr-")
    backend = backend or f"ipc://{tmp}/workers"
    back = ctx.socket(zmq.DEALER)
    back.setsockopt(zmq.LINGER, 0)
    back.bind(backend)
    cmd = [sys.executable, "-m", "hhmr.cli", "worker", "--connect", backend, "--device", device]
    if weights:
        cmd += ["--weights", weights]
    procs = [subprocess.Popen(cmd, env=dict(os.environ)) for _ in range(workers)]
    stop = threading.Event()
    _on_signals(stop)
    log.info("broker on %s, backend %s, %d workers", bind, backend, workers)
    control = ctx.socket(zmq.PAIR)
    control.bind(f"inproc://broker-control-{id(stop)}")
    watcher = ctx.socket(zmq.PAIR)
    watcher.connect(f"inproc://broker-control-{id(stop)}")

    def run_proxy() -> None:
        try:
            zmq.proxy_steerable(front, back, None, control)
        except zmq.ContextTerminated:
            pass

    # The proxy runs in a thread; the main thread waits in Python, where signal handlers run
    # (a signal delivered to another thread never interrupts a main thread blocked in C).
    proxy = threading.Thread(target=run_proxy, daemon=True)
    proxy.start()
    try:
        while proxy.is_alive() and not stop.wait(0.2):
            pass
        watcher.send(b"TERMINATE")
        proxy.join(10)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        for sock in (front, back, control, watcher):
            sock.close()
        ctx.term()
        log.info("broker stopped")

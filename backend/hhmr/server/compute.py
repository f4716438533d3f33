"""The compute thread of `hhmr serve`: it batches the queued sampling requests that arrived
together, runs them on the pipeline with progress and cancel, and turns results and errors
into replies.

Replies travel back to the socket thread through an inproc PUSH socket (ZeroMQ sockets never
cross threads). `plan_request` and `reconstruct_request` are the only calls into the
pipeline's task API.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq

from hhmr import protocol as P
from hhmr.images import ImageError, ImageTooLarge, image_rgb
from hhmr.reconstruct import NoHandError

log = logging.getLogger("hhmr.serve")

MAX_BATCH = 64  # hypotheses per device batch

Progress = Callable[[int, int], None]  # progress(step, total); raises Cancelled to stop


class Cancelled(Exception):
    """Raised by a batch's progress function once all of its requests are cancelled."""


@dataclass
class QueuedRequest:
    """The server's record of a sampling request, from its arrival until its final reply."""

    envelope: list[bytes]  # the routing frames its replies go back with
    request: P.Request
    received: float = field(default_factory=time.perf_counter)
    cancel: threading.Event = field(default_factory=threading.Event)


# ---- the pipeline-facing calls --------------------------------------------------------------
SAMPLING_OPTIONS = ("n", "steps", "seed", "central_first")
GUIDANCE_OPTIONS = ("guidance_scale", "guidance_strength", "guidance_space")


def plan_request(pipe, op: str, args: dict):
    """The pipeline's plan for a sampling op's validated args (run by `pipe.run`); raises
    ValueError for arguments the pipeline refuses (a raw scale and a strength together)."""
    from hhmr.sampling import Fit2D, Generate, Inpaint, Options, Refit3D

    tasks = {"generate": lambda: Generate(args["autoguidance"]),
             "inpaint": lambda: Inpaint(args["vertices"], args["keep"]),
             "refit3d": lambda: Refit3D(args["joints"], args["joint_mask"]),
             "fit2d": lambda: Fit2D(args["keypoints"], args["confidence"], args["K"])}
    if op not in tasks:
        raise P.ProtocolError(P.UNKNOWN_OP, f"op '{op}' is not available on this server")
    names = SAMPLING_OPTIONS + (GUIDANCE_OPTIONS if op != "generate" else ())
    return pipe.plan(tasks[op](), Options(**{k: args[k] for k in names}))


def reconstruct_request(pipe, args: dict, progress: Progress,
                        max_pixels: int = P.Limits().max_pixels) -> dict:
    """The result map of a reconstruct request: every hand found in the image (of at most
    `max_pixels` pixels). An image that fails to decode raises ImageError (BAD_ARGUMENT) or
    ImageTooLarge (TOO_LARGE). The batch loop passes no limit yet, so a server started with
    another `Limits.max_pixels` still decodes under the default one."""
    from hhmr.reconstruct import default_intrinsics, reconstruct

    if args["image"] is not None:
        # the pixel limit again, on the size the decoder itself reads, before decoding: the
        # protocol's header scan is only an early refusal
        rgb = image_rgb(args["image"], max_pixels, formats=("PNG", "JPEG"))
    else:
        rgb = args["rgb"]
    K = args["K"]
    K = default_intrinsics(rgb.shape[1], rgb.shape[0]) if K is None else K
    opts = {k: args[k] for k in SAMPLING_OPTIONS + GUIDANCE_OPTIONS}
    found = reconstruct(pipe, rgb, K, args["handedness"], progress=progress, **opts)
    hands = []
    for det, h in found:
        item = _hypotheses(h, {})
        item.update(handedness=h.extra["handedness"], keypoints2d=det.keypoints,
                    detector_score=det.score)
        hands.append(item)
    return {"hands": hands, "image_size": [int(rgb.shape[1]), int(rgb.shape[0])],
            "K": np.asarray(K, np.float32)}


# ---- the thread -----------------------------------------------------------------------------
class ComputeThread:
    """The queue of sampling requests and the thread that serves it; the socket thread
    submits, looks up and cancels requests here (under `lock`)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.pending: queue.Queue[QueuedRequest] = queue.Queue()
        self.running: dict[str, QueuedRequest] = {}
        self.queued: dict[str, QueuedRequest] = {}
        self.lock = threading.Lock()
        self.pipe = None
        self.thread: threading.Thread | None = None

    def submit(self, item: QueuedRequest) -> None:
        with self.lock:
            self.queued[item.request.id] = item
        self.pending.put(item)

    def ids(self) -> tuple[list[str], list[str]]:
        """The ids of the running and the queued requests."""
        with self.lock:
            return list(self.running), list(self.queued)

    def cancel(self, rid: str) -> bool:
        """Cancel a running or queued request; whether it was found."""
        with self.lock:
            item = self.running.get(rid) or self.queued.get(rid)
        if item is not None:
            item.cancel.set()
        return item is not None

    def cancel_all(self) -> None:
        with self.lock:
            for item in list(self.running.values()) + list(self.queued.values()):
                item.cancel.set()

    def start(self, pipe, ctx: zmq.Context, results: str) -> None:
        """Start serving with `pipe`, pushing replies to the inproc address `results`."""
        self.pipe = pipe
        self.thread = threading.Thread(target=self._loop, args=(ctx, results), daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout=timeout)

    def _loop(self, ctx: zmq.Context, results: str) -> None:
        out = ctx.socket(zmq.PUSH)
        out.connect(results)
        try:
            while not self.stop.is_set():
                try:
                    first = self.pending.get(timeout=0.2)
                except queue.Empty:
                    continue
                batch = [first]  # requests that arrived together share the device
                while sum(q.request.args["n"] for q in batch) < MAX_BATCH:
                    try:
                        batch.append(self.pending.get_nowait())
                    except queue.Empty:
                        break
                with self.lock:
                    for item in batch:
                        self.queued.pop(item.request.id, None)
                        self.running[item.request.id] = item
                try:
                    replies = self._run_batch(batch, out)
                finally:
                    with self.lock:
                        for item in batch:
                            self.running.pop(item.request.id, None)
                for item, reply in zip(batch, replies, strict=True):
                    out.send_multipart(item.envelope + [P.pack(reply)])
        finally:
            out.close()

    def _run_batch(self, batch: list[QueuedRequest], out: zmq.Socket) -> list[dict]:
        """Replies for a batch: sampling ops as one device batch, reconstruct one by one."""
        t0 = time.perf_counter()
        replies: dict[int, dict] = {}
        plans: dict[int, object] = {}
        for i, item in enumerate(batch):
            if item.request.op == "reconstruct":
                replies[i] = self._guarded([item], t0, out, lambda progress, a=item.request.args:
                                           [reconstruct_request(self.pipe, a, progress)])[0]
                continue
            try:
                plans[i] = plan_request(self.pipe, item.request.op, item.request.args)
            except (ValueError, P.ProtocolError) as err:
                replies[i] = error_reply(item.request.id, err)
        if plans:
            live = [batch[i] for i in plans]
            results = self._guarded(live, t0, out, lambda progress: self.pipe.run(
                list(plans.values()), progress=progress))
            for i, res in zip(plans, results, strict=True):
                replies[i] = res
        for i, item in enumerate(batch):
            req, status = item.request, replies[i]["status"]
            code = replies[i].get("error", {}).get("code", "")
            log.info("%s %s %s%s n=%d steps=%d batch=%d %.1f ms", req.id, req.op, status,
                     f" {code}" if code else "", req.args["n"], req.args["steps"], len(batch),
                     (time.perf_counter() - item.received) * 1000)
        return [replies[i] for i in range(len(batch))]

    def _progress(self, items: list[QueuedRequest], out: zmq.Socket) -> Progress:
        """A progress reply to every request of the batch per step; Cancelled once the
        server stops or all of them are cancelled."""
        def progress(i: int, total: int) -> None:
            if self.stop.is_set() or all(q.cancel.is_set() for q in items):
                raise Cancelled
            for q in items:
                out.send_multipart(q.envelope + [P.pack(P.progress_reply(
                    q.request.id, i / total, f"{q.request.op}: step {i + 1} of {total}"))])
        return progress

    def _guarded(self, items: list[QueuedRequest], t0: float, out: zmq.Socket,
                 fn: Callable[[Progress], list]) -> list[dict]:
        """Run fn(progress) (results per request); errors and cancels become error replies."""
        try:
            if all(q.cancel.is_set() for q in items):
                raise Cancelled
            results = fn(self._progress(items, out))
        except Exception as err:  # noqa: BLE001 - mapped to error replies, server goes on
            return [error_reply(q.request.id, err) for q in items]
        replies = []
        for item, res in zip(items, results, strict=True):
            rid = item.request.id
            if item.cancel.is_set():
                replies.append(P.error_reply(rid, P.CANCELLED, "the request was cancelled"))
                continue
            timings = {"queue_s": t0 - item.received, "compute_s": time.perf_counter() - t0}
            if isinstance(res, dict):
                res["timings"] = timings
            else:
                res.timings.update(timings)
                res = _hypotheses(res, res.timings)
            bad = _non_finite(res)
            replies.append(P.ok_reply(rid, res) if bad is None
                           else non_finite_reply(item.request, bad))
        return replies


def error_reply(rid: str, err: Exception) -> dict:
    """The error reply for an exception raised while serving request `rid`."""
    if isinstance(err, Cancelled):
        return P.error_reply(rid, P.CANCELLED, "the request was cancelled")
    if isinstance(err, NoHandError):
        return P.error_reply(rid, P.NO_HAND, str(err))
    if isinstance(err, ImageTooLarge):
        return P.error_reply(rid, P.TOO_LARGE, str(err))
    if isinstance(err, ImageError):
        return P.error_reply(rid, P.BAD_ARGUMENT, str(err))
    if isinstance(err, P.ProtocolError):
        return P.error_reply(rid, err.code, err.message)
    if isinstance(err, ImportError):
        return P.error_reply(rid, P.UNKNOWN_OP, str(err))
    if isinstance(err, ValueError):
        return P.error_reply(rid, P.BAD_ARGUMENT, str(err))
    log.error("request %s failed", rid, exc_info=err)
    return P.error_reply(rid, P.INTERNAL, f"internal error: {err}")


# Arguments that push the sampler beyond its tuned settings: the likely cause of a result that
# overflowed, within their documented ranges.
STRENGTH_ARGS = ("guidance_scale", "guidance_strength", "autoguidance")


def non_finite_reply(req: P.Request, field: str) -> dict:
    """The error reply for a result with NaN or infinite values in `field`: BAD_ARGUMENT when
    the request set a guidance strength (lowering it is the fix), else INTERNAL (the tuned
    settings with inputs in their documented ranges should never diverge: a server bug)."""
    given = [k for k in STRENGTH_ARGS if req.args.get(k) is not None]
    if given:
        return P.error_reply(req.id, P.BAD_ARGUMENT, f"sampling diverged: the result's "
                             f"'{field}' has NaN or infinite values; lower "
                             f"{' or '.join(repr(k) for k in given)}")
    log.error("request %s (%s): the result's %s has NaN or infinite values", req.id, req.op,
              field)
    return P.error_reply(req.id, P.INTERNAL, f"internal error: the result's '{field}' has NaN "
                         "or infinite values")


def _non_finite(value, name: str = "result") -> str | None:
    """The path of the first number or float array with NaN or infinite values in a result
    map (e.g. "hands[0].vertices"), None when all are finite."""
    if isinstance(value, dict):
        for k, v in value.items():
            bad = _non_finite(v, k if name == "result" else f"{name}.{k}")
            if bad:
                return bad
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            bad = _non_finite(v, f"{name}[{i}]")
            if bad:
                return bad
    elif isinstance(value, np.ndarray | np.floating):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return name
    elif isinstance(value, float) and not math.isfinite(value):
        return name
    return None


def _hypotheses(h, timings: dict) -> dict:
    extra = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in h.extra.items()}
    return P.make_hypotheses(h.vertices.numpy(), h.joints.numpy(), h.scores.numpy(), timings,
                             **extra)

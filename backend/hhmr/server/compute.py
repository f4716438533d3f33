"""The compute loop of `hhmr serve`: it batches the queued sampling requests that arrived
together, runs them on the pipeline with progress and cancel, and turns results and errors
into replies. The server runs it on the process's main thread (`ComputeLoop.run`): torch's
OpenMP pool runs this workload about half as fast from any other thread (docs/service.md).

Replies travel back to the socket thread through an inproc PUSH socket (each ZeroMQ socket
is used by one thread only). `plan_request` and `reconstruct_request` are the only calls into the
pipeline's task API.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
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
    """The server's record of a sampling request, from its arrival until its final reply.
    A resend of the same id by the same owner attaches to it: `envelope` and `connection`
    then name the newest sender."""

    envelope: list[bytes]  # the routing frames its replies go back with
    request: P.Request
    owner: bytes = b""
    connection: bytes = b""
    received: float = field(default_factory=time.perf_counter)
    deadline: float | None = None  # perf_counter time after which it ends with TIMEOUT
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: tuple[str, str] = (P.CANCELLED, "the request was cancelled")
    orphaned: float | None = None  # when its client's connection dropped
    last_word: float = field(default_factory=time.perf_counter)  # last reply sent to it
    fraction: float = 0.0

    def __post_init__(self) -> None:
        limit = self.request.args.get("deadline_s")
        if limit is not None and self.deadline is None:
            self.deadline = self.received + limit

    @property
    def key(self) -> tuple[bytes, str]:
        return self.owner, self.request.id

    def stop(self, code: str, message: str) -> None:
        """Cancel it; its final reply will carry `code` and `message`."""
        if not self.cancel.is_set():
            self.reason = (code, message)
            self.cancel.set()


class Busy(Exception):
    """The queue is full (in total or for this client); `retry_after_s` is an estimate."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# ---- the pipeline-facing calls --------------------------------------------------------------
SAMPLING_OPTIONS = ("n", "steps", "seed", "central_first", "pose")
GUIDANCE_OPTIONS = ("guidance_scale", "guidance_strength", "guidance_space")


def plan_request(pipe, op: str, args: dict):
    """The pipeline's plan for a sampling op's validated args (run by `pipe.run`); raises
    ValueError for arguments the pipeline refuses (a raw scale and a strength together)."""
    from hhmr.sampling import Fit2D, Generate, Inpaint, Options, Refit3D

    tasks = {"generate": lambda: Generate(args["autoguidance"]),
             "inpaint": lambda: Inpaint(args["vertices"], args["keep"]),
             "refit3d": lambda: Refit3D(args["joints"], args["joint_mask"]),
             "fit2d": lambda: Fit2D(args["keypoints"], args["confidence"], args["K"],
                                    args["joints3d"], args["joints3d_confidence"])}
    if op not in tasks:
        raise P.ProtocolError(P.UNKNOWN_OP, f"op '{op}' is not available on this server")
    names = SAMPLING_OPTIONS + (GUIDANCE_OPTIONS if op != "generate" else ())
    return pipe.plan(tasks[op](), Options(**{k: args[k] for k in names}))


def reconstruct_request(pipe, args: dict, progress: Progress,
                        max_pixels: int = P.Limits().max_pixels) -> dict:
    """The result map of a reconstruct request: every hand found in the image (of at most
    `max_pixels` pixels). An image that fails to decode raises ImageError (BAD_ARGUMENT) or
    ImageTooLarge (TOO_LARGE)."""
    from hhmr.reconstruct import default_intrinsics, reconstruct

    t0 = time.perf_counter()
    if args["image"] is not None:
        # the pixel limit again, on the size the decoder itself reads, before decoding: the
        # protocol's header scan is only an early refusal
        rgb = image_rgb(args["image"], max_pixels, formats=("PNG", "JPEG"))
    else:
        rgb = args["rgb"]
    K = args["K"]
    K = default_intrinsics(rgb.shape[1], rgb.shape[0]) if K is None else K
    opts = {k: args[k] for k in SAMPLING_OPTIONS + GUIDANCE_OPTIONS}
    decode_ms = (time.perf_counter() - t0) * 1000
    found = reconstruct(pipe, rgb, K, args["handedness"], progress=progress, mode=args["mode"],
                        box=args["box"], **opts)
    hands = []
    for det, h in found:
        item = _hypotheses(h, {"decode_ms": decode_ms, **h.timings})
        item.update(handedness=h.extra["handedness"], keypoints2d=det.keypoints,
                    detector_score=det.score)
        hands.append(item)
    return {"hands": hands, "image_size": [int(rgb.shape[1]), int(rgb.shape[0])],
            "K": np.asarray(K, np.float32)}


def reconstruct_video_request(pipe, args: dict, progress: Progress,
                              limits: P.Limits | None = None) -> dict:
    """The result map of a reconstruct_video request: the followed hand's rig pose per frame
    (see `hhmr.video.VideoResult`; keypoints2d zero where no hand was found). The clip (a
    video file, or an image sequence's files) goes through a private temporary folder (OpenCV
    reads paths)."""
    import shutil
    import tempfile
    from pathlib import Path

    from hhmr.video import VideoOptions, open_clip, reconstruct_video

    given = ("start", "end", "stride", "handedness", "smoothing", "steps", "n", "seed", "mode")
    options = VideoOptions(**{k: args[k] for k in given if args[k] is not None})
    folder = Path(tempfile.mkdtemp(prefix="hhmr-clip-"))
    try:
        if args["video"] is not None:
            path = folder / "clip.video"
            path.write_bytes(args["video"])
        else:
            path = folder
            for i, image in enumerate(args["frames"]):
                suffix = ".png" if image[:4] == b"\x89PNG" else ".jpg"
                (folder / f"{i:06d}{suffix}").write_bytes(image)
        limits = limits or P.Limits()
        clip = open_clip(path, options.start, options.end, options.stride)
        if clip.count > limits.max_frames:
            raise P.ProtocolError(P.TOO_LARGE, f"the clip has {clip.count} frames in the range "
                                  f"asked, more than the limit of {limits.max_frames}; give "
                                  "'end' or 'stride'")
        if clip.size[0] * clip.size[1] > limits.max_pixels:  # refused before decoding a frame
            raise P.ProtocolError(P.TOO_LARGE, f"the clip's frames are {clip.size[0]}x"
                                  f"{clip.size[1]} pixels, more than the limit of "
                                  f"{limits.max_pixels}; downscale it")
        r = reconstruct_video(pipe, path, options, K=args["K"], progress=progress,
                              fps=args["fps"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    f32 = np.float32
    return {"fps": float(r.fps), "frames": r.frames.astype(np.int32), "detected": r.detected,
            "handedness": r.handedness, "betas": r.betas.astype(f32),
            "global_orient": r.global_orient.astype(f32), "hand_pose": r.hand_pose.astype(f32),
            "transl": r.transl.astype(f32), "joints": r.joints.astype(f32),
            "keypoints2d": np.nan_to_num(r.keypoints2d).astype(f32),
            "K": np.asarray(r.K, f32), "image_size": [int(r.size[0]), int(r.size[1])],
            "stage_ms": {k: float(v) for k, v in r.timings.items() if k.endswith("_ms")},
            "frames_per_s": float(r.timings["frames_per_s"])}


# ---- the loop -------------------------------------------------------------------------------
class ComputeLoop:
    """The queue of sampling requests and the loop that serves it (`run` on the calling
    thread, or `start` on a new one). The socket thread submits, attaches, cancels and
    heart-beats requests here (under `lock`); the queue is the insertion-ordered dict
    `queued`. A cancelled queued request leaves it at the socket thread's next `beat` (within
    one poll turn, 0.2 s)."""

    def __init__(self, stop: threading.Event, limits: P.Limits | None = None) -> None:
        self.stop = stop
        self.limits = limits or P.Limits()
        self.running: dict[tuple[bytes, str], QueuedRequest] = {}
        self.queued: dict[tuple[bytes, str], QueuedRequest] = {}
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.batch_s = 1.0  # running mean of a batch's seconds, for BUSY's retry-after
        self.pipe = None
        self.thread: threading.Thread | None = None
        self.finished = threading.Event()  # the loop has ended (its PUSH socket closed)
        self.failed = False  # it ended on a bug (logged), not on `stop`

    def submit(self, item: QueuedRequest) -> QueuedRequest:
        """Queue a request, or attach a resend to the same owner's queued or running request
        of that id (returned); raises Busy when the queue is full."""
        with self.lock:
            same = self.running.get(item.key) or self.queued.get(item.key)
            if same is not None:
                same.envelope, same.connection, same.orphaned = (item.envelope, item.connection,
                                                                 None)
                return same
            mine = sum(q.owner == item.owner for q in self.queued.values())
            if len(self.queued) >= self.limits.max_queued:
                raise Busy(f"the server's queue is full ({len(self.queued)} requests waiting)",
                           self._retry_after())
            if mine >= self.limits.max_queued_per_client:
                raise Busy(f"this client already has {mine} requests waiting, the most the "
                           "server queues for one client", self._retry_after())
            self.queued[item.key] = item
            self.wake.notify()
        return item

    def _retry_after(self) -> float:
        hypotheses = sum(q.request.args["n"] for q in self.queued.values())
        batches = 1 + hypotheses // MAX_BATCH
        return round(min(max(self.batch_s * batches, 0.5), 60.0), 1)

    def ids(self, owner: bytes) -> tuple[list[str], list[str]]:
        """The ids of `owner`'s running and queued requests."""
        with self.lock:
            return ([rid for o, rid in self.running if o == owner],
                    [rid for o, rid in self.queued if o == owner])

    def cancel(self, owner: bytes, rid: str) -> bool:
        """Cancel `owner`'s running or queued request `rid`; whether it was found."""
        with self.lock:
            item = self.running.get((owner, rid)) or self.queued.get((owner, rid))
        if item is not None:
            item.stop(P.CANCELLED, "the request was cancelled")
        return item is not None

    def cancel_all(self) -> None:
        with self.lock:
            for item in list(self.running.values()) + list(self.queued.values()):
                item.stop(P.CANCELLED, "the server is shutting down")
            self.wake.notify()

    def orphan(self, connections: list[bytes], now: float) -> None:
        """Note that these client connections dropped (their requests go after a grace
        period unless a resend attaches them to a new connection)."""
        gone = set(connections)
        with self.lock:
            for item in list(self.running.values()) + list(self.queued.values()):
                if item.connection in gone and item.orphaned is None:
                    item.orphaned = now

    def beat(self, now: float, interval: float, grace: float) -> list[tuple[list[bytes], dict]]:
        """The socket thread's periodic duty: stop requests whose client is gone or whose
        deadline passed; the final replies of queued ones that stopped (they leave the queue
        now); a heartbeat for every request the client has not heard of for `interval`."""
        out = []
        with self.lock:
            for item in list(self.running.values()) + list(self.queued.values()):
                if item.deadline is not None and now > item.deadline:
                    item.stop(P.TIMEOUT, f"the request passed its deadline of "
                              f"{item.request.args['deadline_s']:g} s")
                elif item.orphaned is not None and now - item.orphaned > grace:
                    item.stop(P.CANCELLED, "the client went away")
            for key, item in list(self.queued.items()):
                if item.cancel.is_set():
                    del self.queued[key]
                    out.append((item.envelope, P.error_reply(item.request.id, *item.reason)))
            for pos, item in enumerate(self.queued.values()):
                if now - item.last_word >= interval:
                    item.last_word = now
                    out.append((item.envelope, P.progress_reply(
                        item.request.id, 0.0, f"{item.request.op}: queued, {pos} ahead",
                        queued=pos)))
            for item in self.running.values():
                if now - item.last_word >= interval:
                    item.last_word = now
                    out.append((item.envelope, P.progress_reply(
                        item.request.id, item.fraction, f"{item.request.op}: running")))
        return out

    def run(self, pipe, ctx: zmq.Context, results: str) -> None:
        """Serve with `pipe` on this thread until `stop` is set, pushing replies to the inproc
        address `results`."""
        self.pipe = pipe
        self._loop(ctx, results)

    def start(self, pipe, ctx: zmq.Context, results: str) -> None:
        """`run` on a new (daemon) thread."""
        self.thread = threading.Thread(target=self.run, args=(pipe, ctx, results), daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> None:
        """Wait at most `timeout` seconds for the loop to end."""
        self.finished.wait(timeout)

    def _loop(self, ctx: zmq.Context, results: str) -> None:
        out = None
        try:
            out = ctx.socket(zmq.PUSH)
            out.connect(results)
            while not self.stop.is_set():
                batch = self._take()
                if not batch:
                    continue
                t0 = time.perf_counter()
                try:
                    replies = self._run_batch(batch, out)
                except Exception:  # noqa: BLE001 - a bug ends these requests, not the loop
                    log.exception("a batch of %d requests failed", len(batch))
                    replies = [P.error_reply(q.request.id, P.INTERNAL, "internal error while "
                                             "running the request (logged)") for q in batch]
                finally:
                    with self.lock:
                        for item in batch:
                            self.running.pop(item.key, None)
                        self.batch_s = 0.8 * self.batch_s + 0.2 * (time.perf_counter() - t0)
                for item, reply in zip(batch, replies, strict=True):
                    out.send_multipart(item.envelope + [P.pack(reply)])
                if not self.queued:
                    release_memory()
        except KeyboardInterrupt:  # on the main thread without `on_signals`: a stop
            self.stop.set()
            raise
        except BaseException:
            # without this loop nothing would ever answer: stop the server, loudly
            log.exception("the compute loop failed: the server stops")
            self.failed = True
            self.stop.set()
        finally:
            if out is not None:
                out.close()
            self.finished.set()

    def _take(self) -> list[QueuedRequest]:
        """The next batch (requests that arrived together share the device), moved from the
        queue to `running`; empty after a short wait with nothing queued."""
        with self.lock:
            if not self.queued:
                self.wake.wait(0.2)
            batch: list[QueuedRequest] = []
            for key, item in list(self.queued.items()):
                if sum(q.request.args["n"] for q in batch) >= MAX_BATCH:
                    break
                del self.queued[key]
                self.running[key] = item
                batch.append(item)
            return batch

    def _run_batch(self, batch: list[QueuedRequest], out: zmq.Socket) -> list[dict]:
        """Replies for a batch: sampling ops as one device batch, reconstruct one by one."""
        t0 = time.perf_counter()
        replies: dict[int, dict] = {}
        plans: dict[int, object] = {}
        for i, item in enumerate(batch):
            if item.request.op == "reconstruct":
                replies[i] = self._guarded([item], t0, out, lambda progress, a=item.request.args:
                                           [reconstruct_request(self.pipe, a, progress,
                                                               self.limits.max_pixels)])[0]
                continue
            if item.request.op == "reconstruct_video":
                replies[i] = self._guarded([item], t0, out, lambda progress, a=item.request.args:
                                           [reconstruct_video_request(
                                               self.pipe, a, progress, self.limits)])[0]
                continue
            try:
                plans[i] = plan_request(self.pipe, item.request.op, item.request.args)
            except Exception as err:  # noqa: BLE001 - INTERNAL (logged) unless a known error
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
            if self.stop.is_set():  # a signal reaches this (main) thread first
                for q in items:
                    q.stop(P.CANCELLED, "the server is shutting down")
            if all(q.cancel.is_set() for q in items):
                raise Cancelled
            now = time.perf_counter()
            for q in items:
                q.fraction, q.last_word = i / total, now
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
            return [P.error_reply(q.request.id, *q.reason) if isinstance(err, Cancelled)
                    and q.cancel.is_set() else error_reply(q.request.id, err) for q in items]
        replies = []
        for item, res in zip(items, results, strict=True):
            rid = item.request.id
            if item.cancel.is_set():
                replies.append(P.error_reply(rid, *item.reason))
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


def _libc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _libc_trim()


def release_memory() -> None:
    """Give freed heap memory back to the system (glibc's malloc_trim) when the queue runs
    dry: batches of ever different shapes otherwise leave the heap fragmented and growing."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


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
    if h.pose is not None:  # the solved rig: a "pose" map, "betas" and "corrective"
        p = {k: v.numpy() for k, v in h.pose.items()}
        extra.update(pose={k: p[k] for k in ("global_orient", "hand_pose", "transl")},
                     betas=p["betas"], corrective=p["corrective"], pose_error=p["fit_error"])
    return P.make_hypotheses(h.vertices.numpy(), h.joints.numpy(), h.scores.numpy(), timings,
                             **extra)

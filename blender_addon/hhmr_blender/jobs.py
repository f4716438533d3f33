"""Requests to the backend and what comes back, without bpy: a Task says what to send and
how to read the result into HypothesisSets; a TrackedJob polls it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import handdata
from .clip import ClipAnimation, reconstruct_video_args
from .hypotheses import HypothesisSet, rank
from .wire import client as wire_client
from .wire import protocol

RemoteError = wire_client.RemoteError
ProtocolError = protocol.ProtocolError


@dataclass
class Sampling:
    """Options shared by the sampling ops, named as on the wire: ``guidance_scale`` a raw
    scale, or ``guidance_strength`` relative to the task's tuned scale (1 tuned, 0 none);
    ``guidance_space`` "x_t" or "x0"; ``central_first`` whether hypothesis 0 is the sampler's
    central guess; None: the server's default (left unsent). ``pose`` asks for each
    hypothesis's solved rig, which the rig follows (a backend with the `pose` option)."""

    n: int = 8
    steps: int = 10
    seed: int = 0
    guidance_scale: float | None = None
    guidance_strength: float | None = None
    guidance_space: str | None = None
    central_first: bool | None = None
    pose: bool = True

    def args(self) -> dict[str, Any]:
        a: dict[str, Any] = {"n": int(self.n), "steps": int(self.steps), "seed": int(self.seed)}
        if self.guidance_scale is not None:
            a["guidance_scale"] = float(self.guidance_scale)
        if self.guidance_strength is not None:
            a["guidance_strength"] = float(self.guidance_strength)
        if self.guidance_space is not None:
            a["guidance_space"] = self.guidance_space
        if self.central_first is not None:
            a["central_first"] = bool(self.central_first)
        if self.pose:
            a["pose"] = True
        return a


@dataclass
class Task:
    """One backend request and where its answer goes."""

    op: str
    args: dict[str, Any]
    handedness: str = "right"
    target: str | None = None  # name of the hand object that receives it; None: new object
    label: str = ""
    # "posed": results in the rig's pose; "align_to": (keypoints, palm) to turn hands onto;
    # "beside": the hand a new hand goes next to
    meta: dict[str, Any] = field(default_factory=dict)

    def results(self, result: Mapping[str, Any], num_vertices: int | None = None,
                topology: handdata.HandTopology | None = None) -> list[HypothesisSet]:
        """Read a result map; raises ProtocolError on a malformed one. With ``topology``,
        hypotheses that carry the backend's solved pose come with their rig (``rig``). A
        video's result is one ClipAnimation."""
        if self.op == "reconstruct_video":
            return [ClipAnimation.parse(result, self.args.get("stride", 1), self.label)]
        if self.op != "reconstruct":
            h = protocol.parse_hypotheses(result, num_vertices)
            verts = handdata.from_backend(h.vertices, self.handedness)
            joints = handdata.from_backend(h.joints, self.handedness)
            rig = _rig(h.extra, topology, self.handedness, left_pose=False)
            if self.meta.get("align_to") is not None:  # (rest keypoints, palm indices)
                frames = handdata.palm_frames(joints, *self.meta["align_to"])
                verts, joints = handdata.move(verts, frames), handdata.move(joints, frames)
                rig = rig.moved(frames) if rig is not None else None
            return [HypothesisSet.ranked(verts, joints, h.scores, self.op,
                                         h.extra.get("central"), handedness=self.handedness,
                                         label=self.label, rig=rig)]
        hands = result.get("hands") if isinstance(result, Mapping) else None
        if not isinstance(hands, list) or not hands:
            raise ProtocolError(protocol.BAD_MESSAGE, "reconstruct: no 'hands' in the result")
        out = []
        for i, hand in enumerate(hands):
            h = protocol.parse_hypotheses(hand, num_vertices)
            side = hand.get("handedness") if hand.get("handedness") in ("left", "right") \
                else "right"
            best = int(rank(h.scores, h.extra.get("central"))[0])
            verts, joints, location = handdata.camera_to_object(h.vertices, h.joints, best)
            rig = _rig(h.extra, topology, side, left_pose=side == "left")
            if rig is not None:  # the camera frame turned into Blender's, the wrist at 0
                frame = np.eye(4)
                frame[:3, :3], frame[:3, 3] = handdata.CAMERA_TO_BLENDER, -location
                rig = rig.moved(np.broadcast_to(frame, (len(h.scores), 4, 4)))
            label = f"{self.label} hand {i}" if len(hands) > 1 else self.label
            extra = {"image_size": result.get("image_size"), "K": result.get("K"),
                     "keypoints2d": hand.get("keypoints2d")}
            out.append(HypothesisSet.ranked(
                verts, joints, h.scores, self.op, h.extra.get("central"), handedness=side,
                location=location, label=label, extra=extra, rig=rig))
        return out


def _rig(extra: Mapping[str, Any], topology: handdata.HandTopology | None, handedness: str,
         left_pose: bool) -> handdata.RigPoses | None:
    """The solved rig of a result's hypotheses, None for a backend that sent no ``pose``
    (they then land as posed meshes under a rig at rest, as before)."""
    pose = extra.get("pose")
    if topology is None or not isinstance(pose, Mapping):
        return None
    try:
        return handdata.rig_poses(topology, pose, extra.get("betas"), handedness, left_pose)
    except (KeyError, TypeError, ValueError) as err:
        raise ProtocolError(protocol.BAD_MESSAGE, f"bad pose from the backend: {err}") from None


# Generation's spread: the backend's autoguidance weight per choice ("DEFAULT" sends none, the
# backend's tuned one). 1 is the network alone; 2.25 generated hands about as far from real
# ones as the PCA baseline's, with 10 % more spread than the default (docs/diffusion.md)
VARIETY_WEIGHTS = {"TYPICAL": 1.0, "WIDE": 2.25}


# How often a running request's status line may redraw: under software OpenGL (Xvfb, VMs)
# each redraw of the status bar or sidebar costs Blender tens of milliseconds of CPU, which a
# backend on the same cores loses (docs/photos.md, Speed)
STATUS_REDRAW_S = 0.5


@dataclass
class Throttle:
    """`due(now)` is True at most once per `interval` seconds, the first time `interval`
    after `last`."""

    interval: float
    last: float

    def due(self, now: float) -> bool:
        if now - self.last < self.interval:
            return False
        self.last = now
        return True


def progress_text(op: str, message: str, fraction: float, elapsed_s: float) -> str:
    """The status line of a running request ("generate: step 3 of 10 30% (1 s)"); the
    backend's messages already name the op. Whole seconds: the line (and the redraw it
    costs) changes only when the progress does or a second passes."""
    message = message.removeprefix(f"{op}:").strip()
    return f"{op}: {message} {fraction * 100:.0f}% ({elapsed_s:.0f} s)".replace("  ", " ")


def generate(opts: Sampling, target: str | None = None, variety: str = "DEFAULT",
             handedness: str = "right") -> Task:
    """Random hands of one side; ``variety`` "DEFAULT", "TYPICAL" or "WIDE"
    (VARIETY_WEIGHTS)."""
    args = opts.args()
    if variety != "DEFAULT":
        if variety not in VARIETY_WEIGHTS:
            raise ValueError(f"variety must be DEFAULT or one of {sorted(VARIETY_WEIGHTS)}")
        args["autoguidance"] = VARIETY_WEIGHTS[variety]
    return Task("generate", args, handedness, target, "generated")


def inpaint(vertices: np.ndarray, keep: np.ndarray, handedness: str, target: str | None,
            opts: Sampling) -> Task:
    """Keep the ``keep`` vertices of ``vertices`` (object-local), regenerate the rest."""
    keep = np.asarray(keep, bool)
    if not keep.any():
        raise ValueError("select the vertices to keep (in edit mode) first")
    if keep.all():
        raise ValueError("every vertex is selected: deselect the part to regenerate")
    return Task("inpaint", {"vertices": handdata.to_backend(vertices, handedness),
                            "keep": keep, **opts.args()}, handedness, target, "inpainted",
                {"posed": True})


def refit3d(keypoints: np.ndarray, mask: np.ndarray | None, handedness: str,
            target: str | None,
            opts: Sampling) -> Task:
    """Meshes matching 21 keypoints (object-local), optionally only the masked ones."""
    args: dict[str, Any] = {"joints": handdata.to_backend(keypoints, handedness),
                            **opts.args()}
    if mask is not None:
        mask = np.asarray(mask, bool)
        if not mask.any():
            raise ValueError("no selected bone pins a keypoint: select bones or use all")
        args["joint_mask"] = mask
    return Task("refit3d", args, handedness, target, "refitted", {"posed": True})


def reconstruct(opts: Sampling, *, image: bytes | None = None, rgb: np.ndarray | None = None,
                label: str = "photo", handedness: str | None = None,
                box: tuple[float, float, float, float] | None = None) -> Task:
    """Hands from a photo: encoded file bytes or RGB pixels [H, W, 3] uint8. With `box`
    (x0, y0, x1, y1 pixels from the photo's top left) only the hand in it, found even where
    the palm detector misses it."""
    if (image is None) == (rgb is None):
        raise ValueError("give an image file or an image datablock")
    args: dict[str, Any] = {**opts.args()}
    if image is not None:
        args["image"] = bytes(image)
        w, h = protocol.image_size(args["image"])
    else:
        args["rgb"] = np.ascontiguousarray(rgb, np.uint8)
        h, w = args["rgb"].shape[:2]
    if handedness in ("left", "right"):
        args["handedness"] = handedness
    if box is not None:
        args["box"] = check_box(box, w, h)
    task = Task("reconstruct", args, target=None, label=label)
    task.meta["image_wh"] = (int(w), int(h))
    return task


def check_box(box, width: int, height: int) -> np.ndarray:
    """A box x0, y0, x1, y1 (pixels) clipped to a width x height photo, or a ValueError
    that says what is wrong with it."""
    b = np.asarray(box, np.float64).reshape(4)
    if not np.isfinite(b).all():
        raise ValueError("the hand box has no size: draw it on the photo again")
    x0, x1 = sorted(np.clip(b[[0, 2]], 0, width))
    y0, y1 = sorted(np.clip(b[[1, 3]], 0, height))
    if x1 - x0 < 8 or y1 - y0 < 8:
        raise ValueError("the hand box is under 8 pixels wide or tall, or off the photo: "
                         "draw it around the hand")
    return np.array([x0, y0, x1, y1], np.float32)


def box_from_view(a: tuple[float, float], b: tuple[float, float], width: int, height: int
                  ) -> tuple[float, float, float, float]:
    """The box between two points of Blender's image view (0..1, origin bottom left, as
    `View2D.region_to_view` gives them) in photo pixels from the top left."""
    xs = sorted((a[0] * width, b[0] * width))
    ys = sorted(((1 - a[1]) * height, (1 - b[1]) * height))
    return xs[0], ys[0], xs[1], ys[1]


def reconstruct_video(video: bytes | None = None, label: str = "clip", **options: Any) -> Task:
    """One hand's animation from a video file's bytes, or an image sequence (``frames``:
    the images' file bytes, with ``fps``); options: start, end, stride, smoothing,
    handedness, steps (see clip.reconstruct_video_args)."""
    return Task("reconstruct_video", reconstruct_video_args(video, **options), target=None,
                label=label)


def pixels_to_rgb(pixels: np.ndarray, width: int, height: int, channels: int) -> np.ndarray:
    """Blender image pixels (floats in [0, 1], rows bottom-up) to uint8 RGB, rows top-down."""
    p = np.asarray(pixels, np.float32).reshape(height, width, channels)[::-1]
    if channels == 1:
        p = np.repeat(p, 3, axis=2)
    rgb = np.clip(np.nan_to_num(p[..., :3]) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


class TrackedJob:
    """A Task in flight: ``poll()`` is None until done, then the HypothesisSets (or it
    raises RemoteError, TimeoutError or ProtocolError)."""

    def __init__(self, client: Any, task: Task, num_vertices: int | None = None,
                 topology: handdata.HandTopology | None = None):
        self.task, self.num_vertices, self.topology = task, num_vertices, topology
        self.started = time.monotonic()
        self.job = client.submit(task.op, **task.args)
        self.cancel_requested = False

    @property
    def progress(self) -> tuple[float, str]:
        return self.job.progress[-1] if self.job.progress else (0.0, "queued")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def poll(self) -> list[HypothesisSet] | None:
        result = self.job.poll()
        return None if result is None else \
            self.task.results(result, self.num_vertices, self.topology)

    def wait(self, timeout: float | None = None) -> list[HypothesisSet]:
        return self.task.results(self.job.wait(timeout), self.num_vertices, self.topology)

    def cancel(self) -> None:
        """Ask the server to stop; the job then ends with a CANCELLED error."""
        self.cancel_requested = True
        try:
            self.job.cancel()
        except (RemoteError, TimeoutError):
            pass  # the request may have just finished; its poll() tells

    def close(self) -> None:
        self.job.close()


def make_client(address: str, timeout_s: float = 30.0, retries: int = 1) -> Any:
    return wire_client.HHMRClient(address, timeout_s=timeout_s, retries=retries)


def describe_error(err: BaseException) -> str:
    """One line for the user."""
    if isinstance(err, RemoteError):
        if err.code == protocol.NO_HAND and "clip" in err.message:
            return "No hand found in any frame of the clip: try another range or a clip " \
                "where the hand is larger and sharper."
        if err.code == protocol.NO_HAND:
            return "No hand found in the image: try a larger, sharper or better lit view."
        if err.code == protocol.CANCELLED:
            return "Cancelled."
        return f"Backend error {err.code}: {err.message}"
    if isinstance(err, TimeoutError):
        return f"No answer from the backend: is it running? ({err})"
    if isinstance(err, (ValueError, OSError, RuntimeError)):
        return str(err)
    return f"{type(err).__name__}: {err}"

"""A video's hand animation from the backend (``reconstruct_video``) in Blender terms; no bpy.

The backend sends the rig's pose per frame in the camera frame; here it becomes the rig's
skinning transforms per frame in the hand object's frame (the camera at the world origin
looking along +Y, as photos land), the object placed at the clip's mean wrist, and the
scene frames each clip frame is keyed on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import handdata
from .wire import protocol


def _array(result: Mapping[str, Any], key: str, shape: tuple[int | None, ...]) -> np.ndarray:
    a = result.get(key)
    if not isinstance(a, np.ndarray) or a.ndim != len(shape) or any(
            s is not None and s != d for s, d in zip(shape, a.shape, strict=True)):
        raise protocol.ProtocolError(protocol.BAD_MESSAGE, f"reconstruct_video: bad '{key}'")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise protocol.ProtocolError(protocol.BAD_MESSAGE,
                                     f"reconstruct_video: '{key}' is not finite")
    return a


@dataclass
class ClipAnimation:
    """One hand's animation: T frames of the rig's pose and one shape."""

    fps: float  # frames per second of the frames sent (the clip's rate over the stride)
    stride: int
    frames: np.ndarray  # int [T] frame index in the clip
    detected: np.ndarray  # bool [T]: the hand was seen (else its pose is interpolated)
    handedness: str
    betas: np.ndarray  # [S]
    pose: dict[str, np.ndarray]  # global_orient [T, 3], hand_pose [T, 15, 3], transl [T, 3]
    joints: np.ndarray  # [T, 21, 3] camera frame, metres
    label: str = ""

    @classmethod
    def parse(cls, result: Any, stride: int = 1, label: str = "") -> ClipAnimation:
        """Read a reconstruct_video result; raises ProtocolError on a malformed one."""
        if not isinstance(result, Mapping):
            raise protocol.ProtocolError(protocol.BAD_MESSAGE, "reconstruct_video: no map")
        frames = _array(result, "frames", (None,))
        t = len(frames)
        side = result.get("handedness")
        fps = result.get("fps")
        if t == 0 or side not in ("left", "right") or not isinstance(fps, float | int) \
                or not fps > 0:
            raise protocol.ProtocolError(protocol.BAD_MESSAGE,
                                         "reconstruct_video: bad frames, handedness or fps")
        pose = {"global_orient": _array(result, "global_orient", (t, 3)).astype(np.float64),
                "hand_pose": _array(result, "hand_pose", (t, None, 3)).astype(np.float64),
                "transl": _array(result, "transl", (t, 3)).astype(np.float64)}
        return cls(float(fps), int(stride), frames.astype(np.int64),
                   _array(result, "detected", (t,)).astype(bool), side,
                   _array(result, "betas", (None,)).astype(np.float64), pose,
                   _array(result, "joints", (t, 21, 3)).astype(np.float64), label)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def location(self) -> np.ndarray:
        """Where the hand object sits (Blender frame): the mean wrist of the seen frames."""
        seen = self.joints[self.detected] if self.detected.any() else self.joints
        return handdata.CAMERA_TO_BLENDER @ seen[:, 0].mean(0)

    def rig(self, topo: handdata.HandTopology) -> handdata.RigPoses:
        """Each frame's skinning transforms [T, J, 4, 4] and the clip's rest skeleton in the
        hand object's frame (heads and tails the same every frame)."""
        betas = np.broadcast_to(self.betas, (len(self), len(self.betas)))
        rig = handdata.rig_poses(topo, self.pose, betas, self.handedness,
                                 left_pose=self.handedness == "left")
        frame = np.eye(4)
        frame[:3, :3], frame[:3, 3] = handdata.CAMERA_TO_BLENDER, -self.location
        return rig.moved(np.broadcast_to(frame, (len(self), 4, 4)))

    def rest_vertices(self, topo: handdata.HandTopology) -> np.ndarray:
        """The clip's hand at rest [V, 3] in the object's frame (its side)."""
        return handdata.from_backend(topo.shaped(self.betas), self.handedness)

    def joints_in_object(self) -> np.ndarray:
        """The animated keypoints [T, 21, 3] in the hand object's frame."""
        return self.joints @ handdata.CAMERA_TO_BLENDER.T - self.location

    def scene_frames(self, scene_fps: float, frame_start: int) -> np.ndarray:
        """The scene frame [T] (float) each clip frame is keyed on: the clip's own timing at
        the scene's rate, its first frame at ``frame_start``."""
        seconds = (self.frames - self.frames[0]) / (self.fps * self.stride)
        return frame_start + seconds * scene_fps


def continuous(quats: np.ndarray) -> np.ndarray:
    """Quaternions [T, J, 4] with each one's sign nearest the frame before (q and -q are the
    same rotation, but keys must not flip between them or the curves swing through)."""
    q = np.array(quats, np.float64)
    for t in range(1, len(q)):
        flip = (q[t] * q[t - 1]).sum(-1) < 0
        q[t, flip] *= -1
    return q


def sequence_files(first: Path) -> list[Path]:
    """An image sequence's files from its first one (``frame_0001.png``): those in its folder
    with the same prefix and extension and a frame number, in number order from it."""
    m = re.fullmatch(r"(.*?)(\d+)", first.stem)
    if m is None:
        raise ValueError(f"{first.name} has no frame number")
    prefix, number = m.group(1), int(m.group(2))
    found = []
    for p in first.parent.iterdir():
        n = re.fullmatch(re.escape(prefix) + r"(\d+)", p.stem)
        if n is not None and p.suffix.lower() == first.suffix.lower() and \
                int(n.group(1)) >= number:
            found.append((int(n.group(1)), p))
    return [p for _, p in sorted(found)]


def reconstruct_video_args(video: bytes | None = None, *, frames: list[bytes] | None = None,
                           fps: float | None = None, start: int = 0, end: int | None = None,
                           stride: int = 1, smoothing: float | None = None,
                           handedness: str | None = None, steps: int | None = None
                           ) -> dict[str, Any]:
    """The request's arguments for a video file's bytes or an image sequence's files
    (``frames``, at ``fps``); unset ones are left to the backend's defaults."""
    if (video is None) == (frames is None):
        raise ValueError("give a video file or an image sequence")
    if not video and not frames:
        raise ValueError("the video file is empty" if video is not None else
                         "the image sequence has no frames")
    if end is not None and end <= start:
        raise ValueError("the last frame must come after the first")
    args: dict[str, Any] = {"start": int(start), "stride": int(stride)}
    if video is not None:
        args["video"] = bytes(video)
    else:
        args["frames"] = [bytes(f) for f in frames]
    if fps is not None:
        args["fps"] = float(fps)
    if end is not None:
        args["end"] = int(end)
    if smoothing is not None:
        args["smoothing"] = float(smoothing)
    if handedness in ("left", "right"):
        args["handedness"] = handedness
    if steps is not None:
        args["steps"] = int(steps)
    return args

"""Hand motion from a clip: frames decoded with OpenCV, MediaPipe Hands in tracking mode, one
hand followed through the clip, each frame fitted with `fit2d` (its central hypothesis: the
sampler's best single guess, the same for the same keypoints), one hand shape for the clip and
a rig pose per frame, smoothed over time without lag: an animation of the 16-bone rig, with
the frames where no hand was found filled and marked.

Everything is in the right hand's space while it is solved (a left hand's keypoints are
mirrored in, as `reconstruct` does) and mirrored back at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from hhmr.hand.mirror import mirror_axis_angle, mirror_faces
from hhmr.hand.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from hhmr.reconstruct import (
    DEFAULT_FOV_DEG,
    Detection,
    default_intrinsics,
    detections,
    gate_world,
    mode_inputs,
)
from hhmr.sampling import HandDiffusionPipeline

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SHAPE_FRAMES = 16  # frames whose solved shapes are averaged into the clip's one shape
POSE_ITERATIONS = 3  # pose-solver steps per frame with the clip's shape held
FRAME_BATCH = 16  # frames sampled together
POSE_BLOCK = 256  # frames posed together (the pose solver's memory grows with the batch)


class VideoError(ValueError):
    """A clip that cannot be read, or holds no frame in the range asked."""


@dataclass(frozen=True)
class VideoOptions:
    """What `reconstruct_video` does. `smoothing`: the animation's smoothness (the
    Whittaker smoother's lambda, `smooth`; 0 none); `handedness` picks the hand to follow
    (None: the side seen most); `steps`: sampling steps per frame (5 are as accurate as 10 on
    synthetic motion, docs/video.md)."""

    start: int = 0  # first frame (index in the clip)
    end: int | None = None  # one past the last frame; None: to the end
    stride: int = 1  # every stride-th frame
    handedness: str | None = None
    smoothing: float = 2.0
    steps: int = 5
    n: int = 1
    seed: int = 0
    mode: str | None = None  # one of RECONSTRUCT_MODES; None: the pipeline's photo mode
    fov_deg: float = DEFAULT_FOV_DEG  # horizontal field of view when K is not given

    def __post_init__(self) -> None:
        if self.start < 0 or self.stride < 1 or (self.end is not None and self.end <= self.start):
            raise ValueError("frames: start >= 0, stride >= 1 and end > start")
        if not 0 <= self.smoothing <= 1e6:
            raise ValueError("smoothing must be in [0, 1e6]")
        if self.handedness not in (None, "left", "right"):
            raise ValueError("handedness must be 'left', 'right' or None")
        if not 1 <= self.steps <= 100 or not 1 <= self.n <= 64:
            raise ValueError("steps must be in [1, 100] and n in [1, 64]")


@dataclass
class VideoResult:
    """A clip's hand: per frame (T frames) the rig's pose in the camera frame (metres, the
    camera's axes: x right, y down, z forward), one shape, and what was found."""

    fps: float
    frames: np.ndarray  # [T] frame index in the clip
    detected: np.ndarray  # [T] bool: a hand was found (else the pose is interpolated)
    handedness: str
    betas: np.ndarray  # [S]
    global_orient: np.ndarray  # [T, 3] axis-angle (the left model's for a left hand)
    hand_pose: np.ndarray  # [T, 15, 3]
    transl: np.ndarray  # [T, 3]
    joints: np.ndarray  # [T, 21, 3] the animated rig's keypoints
    vertices: np.ndarray  # [T, V, 3] the animated rig's mesh
    faces: np.ndarray  # [F, 3]
    keypoints2d: np.ndarray  # [T, 21, 2] MediaPipe's (NaN where not found)
    world: np.ndarray  # [T, 21, 3] MediaPipe's world landmarks (NaN where not found)
    K: np.ndarray  # [3, 3]
    size: tuple[int, int]  # (width, height)
    timings: dict[str, float] = field(default_factory=dict)

    def pose(self) -> dict[str, np.ndarray]:
        return {"global_orient": self.global_orient, "hand_pose": self.hand_pose,
                "transl": self.transl, "betas": np.tile(self.betas, (len(self.frames), 1))}

    def save(self, path: str | Path) -> None:
        """All fields in one .npz (timings as a JSON string)."""
        import json

        d = {k: np.asarray(v) for k, v in self.__dict__.items() if k != "timings"}
        np.savez_compressed(path, timings=json.dumps(self.timings), **d)


# ---------------------------------------------------------------------------- frames
@dataclass
class Clip:
    """Decoded frames of a video file or a folder of images: (index, RGB uint8) pairs."""

    frames: Iterator[tuple[int, np.ndarray]]
    fps: float
    count: int  # frames in the range asked (an estimate for files that misreport)
    size: tuple[int, int] = (0, 0)  # (width, height) a video file declares; 0 for folders


def open_clip(source: str | Path, start: int = 0, end: int | None = None, stride: int = 1,
              fps: float = 30.0) -> Clip:
    """A video file (OpenCV) or a folder of images (sorted by name, at `fps`); the clip's
    `fps` is its frame rate over the stride."""
    import cv2

    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        picked = list(range(len(files)))[start:end:stride]
        if not picked:
            raise VideoError(f"no image in the frame range in {path}")

        def read_images() -> Iterator[tuple[int, np.ndarray]]:
            for i in picked:
                bgr = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise VideoError(f"cannot read frame image {files[i].name}")
                yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return Clip(read_images(), fps / stride, len(picked))
    if not path.is_file():
        raise VideoError(f"no such video or folder: {path}")
    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if not cap.isOpened() or total <= 0:
        cap.release()
        raise VideoError(f"cannot read {path.name} as a video")
    rate = cap.get(cv2.CAP_PROP_FPS)
    rate = rate if math.isfinite(rate) and rate > 0 else fps
    last = total if end is None else min(end, total)
    if start >= last:
        cap.release()
        raise VideoError(f"{path.name} has {total} frames: none in [{start}, {last})")

    def read_video() -> Iterator[tuple[int, np.ndarray]]:
        try:
            if start:
                cap.set(cv2.CAP_PROP_POS_FRAMES, start)
            for i in range(start, last):
                ok = cap.grab()
                if not ok:
                    if i == start:
                        raise VideoError(f"cannot decode {path.name} at frame {i}")
                    return  # a clip shorter than its header says
                if (i - start) % stride == 0:
                    ok, bgr = cap.retrieve()
                    if not ok or bgr is None:
                        raise VideoError(f"cannot decode {path.name} at frame {i}")
                    yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    return Clip(read_video(), rate / stride, len(range(start, last, stride)), size)


# ---------------------------------------------------------------------------- tracking
class HandTracker:
    """MediaPipe Hands in tracking mode (landmarks carried from frame to frame, the palm
    detector run only when a hand is lost). One clip per tracker."""

    def __init__(self, max_hands: int = 2, min_confidence: float = 0.5) -> None:
        try:
            import mediapipe as mp
        except ImportError as err:
            raise ImportError("video needs MediaPipe: pip install -e '.[detect]'") from err
        self._hands = mp.solutions.hands.Hands(
            static_image_mode=False, max_num_hands=max_hands,
            min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence)

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        rgb = np.ascontiguousarray(rgb[..., :3])
        return detections(self._hands.process(rgb), rgb.shape[1], rgb.shape[0])

    def close(self) -> None:
        self._hands.close()


def follow(found: list[list[Detection]], side: str | None = None
           ) -> tuple[list[Detection | None], str]:
    """One hand through the clip: the side asked (else the side of the surest hand in most
    frames); per frame the hand of that side nearest the last one, or, where the label flipped,
    a hand within one hand's size of it."""
    if side is None:
        votes = [max(d, key=lambda x: x.score).handedness for d in found if d]
        side = max(("right", "left"), key=votes.count) if votes else "right"
    out: list[Detection | None] = []
    last: np.ndarray | None = None
    size = 1.0
    for dets in found:
        pick = None
        same = [d for d in dets if d.handedness == side]
        if last is None:
            pick = max(same, key=lambda d: d.score) if same else None
        else:
            def dist(d: Detection, centre: np.ndarray = last) -> float:
                return float(np.linalg.norm(d.keypoints.mean(0) - centre))
            if same:
                pick = min(same, key=dist)
            elif dets and min(map(dist, dets)) < size:
                pick = min(dets, key=dist)
        if pick is not None:
            last = pick.keypoints.mean(0)
            size = float(np.linalg.norm(pick.keypoints.max(0) - pick.keypoints.min(0)))
        out.append(pick)
    return out, side


def mirrored(det: Detection, K: np.ndarray) -> Detection:
    """A left hand's detection as the right hand seen in the mirrored photo."""
    kp = det.keypoints.copy()
    kp[:, 0] = 2 * K[0, 2] - kp[:, 0]
    world = det.world.copy()
    world[:, 0] = -world[:, 0]
    return replace(det, keypoints=kp, world=world, handedness="right")


# ---------------------------------------------------------------------------- the clip
Progress = Callable[[int, int], None]  # (frames done, frames in all); may raise to cancel


@dataclass
class Track:
    """One hand followed through a clip: per frame its index, detection (or None) and what
    MediaPipe found there."""

    frames: np.ndarray  # [T] frame index in the clip
    hand: list[Detection | None]
    side: str
    fps: float
    size: tuple[int, int]  # (width, height)
    timings: dict[str, float]


def track_clip(source: str | Path, options: VideoOptions | None = None,
               progress: Progress | None = None, fps: float = 30.0) -> Track:
    """Decode the clip and track hands (`HandTracker`), then `follow` one. `progress` gets
    (frames done, 2 x frames): the fit takes the second half."""
    options = options or VideoOptions()
    clip = open_clip(source, options.start, options.end, options.stride, fps)
    tracker = HandTracker()
    idx, found, size = [], [], None
    t_decode = t_detect = 0.0
    try:
        t0 = time.perf_counter()
        for i, rgb in clip.frames:
            t1 = time.perf_counter()
            t_decode += t1 - t0
            size = size or (rgb.shape[1], rgb.shape[0])
            idx.append(i)
            found.append(tracker(rgb))
            t0 = time.perf_counter()
            t_detect += t0 - t1
            if progress is not None:
                progress(len(idx), 2 * clip.count)
    finally:
        tracker.close()
    hand, side = follow(found, options.handedness)
    t = max(len(idx), 1)
    return Track(np.asarray(idx), hand, side, clip.fps, size or (0, 0),
                 {"decode_ms": t_decode * 1000 / t, "detect_ms": t_detect * 1000 / t})


def reconstruct_video(pipe: HandDiffusionPipeline, source: str | Path,
                      options: VideoOptions | None = None, K: np.ndarray | None = None,
                      progress: Progress | None = None, fps: float = 30.0) -> VideoResult:
    """The animation of one hand in a clip (see the module's docstring); `fps` for a folder
    of images. Raises VideoError for an unreadable clip and NoHandError when no frame has a
    hand."""
    from hhmr.reconstruct import NoHandError

    options = options or VideoOptions()
    t_all = time.perf_counter()
    track = track_clip(source, options, progress, fps)
    if not any(d is not None for d in track.hand):
        raise NoHandError("no hand found in any frame of the clip")
    w, h = track.size
    if K is None:
        K = default_intrinsics(w, h, options.fov_deg)
    t = len(track.frames)
    result = fit_frames(pipe, track.hand, track.side, np.asarray(K, np.float32), options,
                        None if progress is None else
                        lambda k, n: progress(t + round(k * t / max(n, 1)), 2 * t),
                        frames=track.frames, fps=track.fps, size=track.size)
    result.timings.update(track.timings, frames=t,
                          frames_per_s=t / (time.perf_counter() - t_all))
    return result


def fit_meshes(pipe: HandDiffusionPipeline, dets: list[Detection | None], side: str,
               K: np.ndarray, options: VideoOptions | None = None,
               progress: Progress | None = None) -> torch.Tensor:
    """Each found frame's mesh [T, V, 3] (the right hand's: a left one mirrored in; zeros
    where no hand was found): fit2d's central hypothesis, or the best of `options.n`; the
    frames are sampled FRAME_BATCH at a time in one batch (the same results up to float
    rounding, several times faster on a CPU than one by one)."""
    from hhmr.sampling import Fit2D, Options

    options = options or VideoOptions()
    meshes = torch.zeros(len(dets), pipe.hand.num_vertices, 3)
    found = [i for i, d in enumerate(dets) if d is not None]
    opts = Options(options.n, options.steps, options.seed, central_first=True)
    K32 = torch.from_numpy(np.asarray(K, np.float32))
    for b in range(0, len(found), FRAME_BATCH):
        if progress is not None:
            progress(b, len(found))
        plans = []
        for i in found[b:b + FRAME_BATCH]:
            right = mirrored(dets[i], K) if side == "left" else dets[i]
            world, gate, encoder = mode_inputs(pipe, right, options.mode, K)
            if encoder is not None and options.mode is not None:
                raise ValueError("video frames are fitted without image tokens: choose a "
                                 "mode without '+image'")
            world, conf3d = gate_world(right.keypoints, world, gate)
            plans.append(pipe.plan(Fit2D(right.keypoints, None, K32, world, conf3d), opts))
        for i, h in zip(found[b:b + FRAME_BATCH], pipe.run(plans), strict=True):
            meshes[i] = h.vertices[h.order()[0]]
    return meshes


def fit_frames(pipe: HandDiffusionPipeline, dets: list[Detection | None], side: str,
               K: np.ndarray, options: VideoOptions | None = None,
               progress: Progress | None = None, frames: np.ndarray | None = None,
               fps: float = 30.0, size: tuple[int, int] = (0, 0)) -> VideoResult:
    """Fit each found frame (`fit_meshes`), then animate them (`animate_meshes`)."""
    options = options or VideoOptions()
    t0 = time.perf_counter()
    meshes = fit_meshes(pipe, dets, side, K, options, progress)
    sample_s = time.perf_counter() - t0
    result = animate_meshes(pipe, meshes, dets, side, K, options.smoothing, frames, fps, size)
    if progress is not None:
        progress(len(dets), len(dets))
    result.timings["sample_ms"] = sample_s * 1000 / max(int(result.detected.sum()), 1)
    return result


def animate_meshes(pipe: HandDiffusionPipeline, meshes: torch.Tensor,
                   dets: list[Detection | None], side: str, K: np.ndarray,
                   smoothing: float = VideoOptions.smoothing, frames: np.ndarray | None = None,
                   fps: float = 30.0, size: tuple[int, int] = (0, 0)) -> VideoResult:
    """A clip's animation from its frames' right-hand meshes [T, V, 3] (`fit_meshes`; the
    frames whose detection is None are filled): one shape and a pose per frame
    (`solve_clip_pose`), mirrored back for a left hand."""
    t = len(dets)
    found = np.array([d is not None for d in dets])
    if not found.any():
        from hhmr.reconstruct import NoHandError

        raise NoHandError("no hand found in any frame of the clip")
    t_pose = time.perf_counter()
    pose = solve_clip_pose(pipe, meshes, found, smoothing)
    t_end = time.perf_counter()
    verts, joints = [], []
    with torch.no_grad():
        for b in range(0, t, POSE_BLOCK):
            part = slice(b, b + POSE_BLOCK)
            out = pipe.hand(global_orient=pose["global_orient"][part].to(pipe.device),
                            hand_pose=pose["hand_pose"][part].to(pipe.device),
                            betas=pose["betas"][None].expand(len(pose["transl"][part]), -1)
                            .to(pipe.device), transl=pose["transl"][part].to(pipe.device))
            verts.append(out.vertices.cpu())
            joints.append(out.joints.cpu())
    verts, joints = torch.cat(verts), torch.cat(joints)
    faces = pipe.hand.faces.cpu()
    if side == "left":  # back to the left hand: points x -> -x, the pose for MirroredHand
        flip = torch.tensor([-1.0, 1.0, 1.0])
        verts, joints = verts * flip, joints * flip
        pose["global_orient"] = mirror_axis_angle(pose["global_orient"])
        pose["hand_pose"] = mirror_axis_angle(pose["hand_pose"])
        pose["transl"] = pose["transl"] * flip
        faces = mirror_faces(faces)
    nan2, nan3 = np.full((21, 2), np.nan, np.float32), np.full((21, 3), np.nan, np.float32)
    return VideoResult(
        fps=fps, frames=np.arange(t) if frames is None else np.asarray(frames),
        detected=found, handedness=side, betas=pose["betas"].numpy(),
        global_orient=pose["global_orient"].numpy(), hand_pose=pose["hand_pose"].numpy(),
        transl=pose["transl"].numpy(), joints=joints.numpy(), vertices=verts.numpy(),
        faces=faces.numpy(),
        keypoints2d=np.stack([nan2 if d is None else d.keypoints for d in dets]),
        world=np.stack([nan3 if d is None else d.world for d in dets]), K=K, size=size,
        timings={"pose_ms": (t_end - t_pose) * 1000 / t, "found": float(found.mean())})


def solve_clip_pose(pipe: HandDiffusionPipeline, meshes: torch.Tensor, found: np.ndarray,
                    smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """One shape (the mean of the shapes solved on up to SHAPE_FRAMES found frames) and the
    pose of each found frame with that shape, smoothed over time (`smooth`); the frames
    between found ones interpolated, those before the first and after the last held. Right
    hands."""
    from hhmr.hand.pose_fit import fit_pose

    hand = pipe.hand
    ids = np.flatnonzero(found)
    some = ids[np.linspace(0, len(ids) - 1, min(SHAPE_FRAMES, len(ids))).round().astype(int)]
    shape = fit_pose(hand, vertices=meshes[some].to(pipe.device), iterations=2)
    betas = shape.betas.mean(0).cpu()
    rot, tr = [], []
    for b in range(0, len(ids), POSE_BLOCK):  # memory bounded on long clips
        block = ids[b:b + POSE_BLOCK]
        fit = fit_pose(hand, vertices=meshes[block].to(pipe.device), fit_shape=False,
                       betas=betas[None].expand(len(block), -1).to(pipe.device),
                       iterations=POSE_ITERATIONS)
        rot.append(torch.cat([fit.global_orient[:, None], fit.hand_pose], 1).cpu())
        tr.append(fit.transl.cpu())
    rot, transl_found = torch.cat(rot), torch.cat(tr)  # [k, 16, 3], [k, 3]
    if smoothing > 0 and len(ids) >= 3:
        rots, transl = smooth(ids, rot, transl_found, len(found), smoothing)
    else:
        rots, transl = interpolate(ids, rot, transl_found, len(found))
    return {"global_orient": rots[:, 0], "hand_pose": rots[:, 1:], "transl": transl,
            "betas": betas}


def interpolate(ids: np.ndarray, rot: torch.Tensor, transl: torch.Tensor, t: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotations [k, J, 3] (axis-angle) and translations [k, 3] known at frames `ids` spread
    over t frames: geodesic between neighbours, held before the first and after the last."""
    rots = torch.zeros(t, *rot.shape[1:])
    trs = torch.zeros(t, 3)
    mats = axis_angle_to_matrix(rot)
    for f in range(t):
        j = int(np.searchsorted(ids, f))
        if j < len(ids) and ids[j] == f:
            rots[f], trs[f] = rot[j], transl[j]
        elif j == 0 or j == len(ids):
            k = 0 if j == 0 else len(ids) - 1
            rots[f], trs[f] = rot[k], transl[k]
        else:
            a, b = j - 1, j
            u = (f - ids[a]) / (ids[b] - ids[a])
            delta = matrix_to_axis_angle(mats[a].transpose(-1, -2) @ mats[b])
            rots[f] = matrix_to_axis_angle(mats[a] @ axis_angle_to_matrix(delta * u))
            trs[f] = transl[a] + (transl[b] - transl[a]) * u
    return rots, trs


def smooth(ids: np.ndarray, rot: torch.Tensor, transl: torch.Tensor, t: int, lam: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """A Whittaker smoother over the frames from the first known to the last: per channel
    the x minimising sum_known (x - y)^2 + lam * sum (second difference of x)^2, on the
    rotations as sign-continuous quaternions and on the translations. Zero-phase (no lag),
    and the frames between known ones come out as smooth interpolation; held at the ends."""
    from scipy.sparse import diags
    from scipy.sparse.linalg import spsolve

    from hhmr.hand.rotations import matrix_to_quaternion, quaternion_to_axis_angle

    first, last = int(ids[0]), int(ids[-1])
    m = last - first + 1
    q = matrix_to_quaternion(axis_angle_to_matrix(rot)).double().numpy()  # [k, J, 4]
    for i in range(1, len(q)):  # the nearer of q and -q to the frame before
        q[i] *= np.where((q[i] * q[i - 1]).sum(-1, keepdims=True) < 0, -1.0, 1.0)
    y = np.zeros((m, q.shape[1] * 4 + 3))
    y[ids - first] = np.concatenate([q.reshape(len(q), -1), transl.double().numpy()], 1)
    w = np.zeros(m)
    w[ids - first] = 1.0
    d = diags([np.ones(m - 2), -2 * np.ones(m - 2), np.ones(m - 2)], [0, 1, 2],
              shape=(m - 2, m))
    x = spsolve((diags(w) + lam * (d.T @ d)).tocsc(), w[:, None] * y)
    x = np.asarray(x).reshape(m, -1)
    qs = torch.from_numpy(x[:, :-3].reshape(m, -1, 4)).float()
    qs = qs / qs.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    rs = quaternion_to_axis_angle(qs)
    ts = torch.from_numpy(x[:, -3:]).float()
    pad = (first, t - 1 - last)
    rots = torch.cat([rs[:1].expand(pad[0], -1, -1), rs, rs[-1:].expand(pad[1], -1, -1)])
    trs = torch.cat([ts[:1].expand(pad[0], -1), ts, ts[-1:].expand(pad[1], -1)])
    return rots, trs


def preview(source: str | Path, result: VideoResult, count: int = 8, width: int = 360):
    """A contact sheet of `count` frames spread over the clip with the animated hand drawn
    over each (MediaPipe's keypoints as dots), captioned found or filled."""
    from PIL import Image

    from hhmr.render import contact_sheet, render_overlay

    picks = set(np.linspace(0, len(result.frames) - 1, min(count, len(result.frames)))
                .round().astype(int).tolist())
    want = {int(result.frames[i]): i for i in picks}
    clip = open_clip(source, int(result.frames[0]), int(result.frames[-1]) + 1)
    tiles, labels = [], []
    for f, rgb in clip.frames:
        if f not in want:
            continue
        i = want[f]
        kp = result.keypoints2d[i]
        img = render_overlay(Image.fromarray(rgb), [result.vertices[i]], [result.faces],
                             result.K, None if np.isnan(kp).any() else [kp])
        scale = width / img.width
        tiles.append(img.resize((width, round(img.height * scale))))
        labels.append(f"frame {f}" + ("" if result.detected[i] else " (filled)"))
    return contact_sheet(tiles, labels, columns=4)

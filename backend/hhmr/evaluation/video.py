"""`hhmr evaluate --video`: how steady, how accurate and how late the video animation is.

On real clips (no ground truth) it compares jitter, the mean acceleration of the 21 keypoints
with the hand's centre removed, of our animation (each setting) against MediaPipe's world
landmarks in tracking mode and in per-frame (static) mode, over the same frames: those whose
neighbours MediaPipe's tracker found. On synthetic motion with ground truth (gestures of the
pose prior blended over time, the keypoints projected with noise) it measures per-frame
accuracy, acceleration error and lag.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hhmr import metrics
from hhmr.data.poses import PosePrior
from hhmr.hand.mirror import mirror_points
from hhmr.hand.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from hhmr.reconstruct import Detection
from hhmr.sampling import HandDiffusionPipeline
from hhmr.video import VideoOptions, fit_frames, track_clip

# the settings compared: name and VideoOptions changes; "default" is the shipped VideoOptions
SETTINGS = (("unsmoothed", {"smoothing": 0.0}), ("default", {}),
            ("smoothed_x4", {"smoothing": VideoOptions.smoothing * 4}))
HOLDS = (10, 5)  # frames between the synthetic gestures: brisk and fast (6 a second)
MAX_LAG = 6  # frames searched each way for the lag


def acceleration(points: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean acceleration (mm/frame^2) of keypoints [T, 21, 3] (metres) with their centre
    removed, over the frames t whose t-1, t, t+1 are all `valid` [T] (default all)."""
    p = points - points.mean(1, keepdims=True)
    a = np.linalg.norm(p[2:] - 2 * p[1:-1] + p[:-2], axis=-1).mean(-1) * 1000  # [T-2]
    if valid is not None:
        a = a[valid[2:] & valid[1:-1] & valid[:-2]]
    return float(a.mean()) if len(a) else math.nan


def lag(pred: np.ndarray, truth: np.ndarray) -> int:
    """Frames by which the root-relative keypoint velocities [T, 21, 3] of `pred` trail
    those of `truth` (the shift of the best cross-correlation; negative: ahead)."""
    def vel(x: np.ndarray) -> np.ndarray:
        r = x - x[:, :1]
        v = np.diff(r, axis=0).reshape(len(r) - 1, -1)
        return v - v.mean(0)
    vp, vt = vel(pred), vel(truth)
    best, best_c = 0, -np.inf
    for s in range(-MAX_LAG, MAX_LAG + 1):
        a, b = (vp[s:], vt[:len(vt) - s]) if s >= 0 else (vp[:s], vt[-s:])
        c = float((a * b).sum() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
        if c > best_c:
            best, best_c = s, c
    return best


# ---------------------------------------------------------------------------- synthetic
def synthetic_motion(pipe: HandDiffusionPipeline, frames: int, seed: int, hold: int = 10,
                     noise_px: float = 1.5, side: str = "right", size: int = 640
                     ) -> tuple[list[Detection], np.ndarray, np.ndarray]:
    """A hand changing gesture every `hold` frames (smoothstep blends of the pose prior's
    draws), turning and moving in front of a camera: its detections (keypoints projected
    with `noise_px` Gaussian noise), true keypoints [T, 21, 3] (camera frame, metres) and K."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    hand = pipe.hand.cpu()
    prior = PosePrior(hand)
    keys = frames // hold + 2
    angles, _ = prior.sample_angles(keys, gen)
    # the palm towards the camera (the model's faces -z) and the fingers up, +-35 degrees
    base = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi]))
    turns = axis_angle_to_matrix((torch.rand(keys, 3, generator=gen) - 0.5) * math.radians(70))
    orient = turns @ base
    phase = torch.rand(3, generator=gen) * 2 * math.pi
    betas = (torch.randn(1, hand.num_betas, generator=gen) * 0.8).clamp(-2, 2)
    u = torch.arange(frames) / hold
    k = u.floor().long()
    a = u - k
    a = a * a * (3 - 2 * a)  # smoothstep
    ang = (1 - a)[:, None, None] * angles[k] + a[:, None, None] * angles[k + 1]
    delta = matrix_to_axis_angle(orient[k].transpose(-1, -2) @ orient[k + 1])
    glob = matrix_to_axis_angle(orient[k] @ axis_angle_to_matrix(delta * a[:, None]))
    t = torch.arange(frames, dtype=torch.float32) / 30.0
    transl = torch.stack([0.05 * torch.sin(1.3 * t + phase[0]),
                          0.04 * torch.sin(1.7 * t + phase[1]),
                          0.45 + 0.04 * torch.sin(0.9 * t + phase[2])], -1)
    out = hand(global_orient=glob, hand_pose=prior.limits.from_anatomical(ang),
               betas=betas.expand(frames, -1))
    joints = out.joints.detach()
    joints = joints - joints[:, :1] + transl[:, None]
    if side == "left":
        joints = mirror_points(joints)
    K = np.array([[600.0, 0, size / 2], [0, 600.0, size / 2], [0, 0, 1]], np.float32)
    p = joints.numpy() @ K.T
    kp = p[..., :2] / p[..., 2:]
    kp = kp + np.random.default_rng(seed).normal(0, noise_px, kp.shape)
    world = (joints - joints[:, 9:10]).numpy()  # hand-centred like MediaPipe's
    dets = [Detection(kp[i].astype(np.float32), world[i], side, 1.0) for i in range(frames)]
    return dets, joints.numpy(), K


def motion_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    p, g = torch.from_numpy(pred).float(), torch.from_numpy(truth).float()
    pc, gc = pred - pred.mean(1, keepdims=True), truth - truth.mean(1, keepdims=True)
    acc_p = pc[2:] - 2 * pc[1:-1] + pc[:-2]
    acc_g = gc[2:] - 2 * gc[1:-1] + gc[:-2]
    return {"pa_mpjpe_mm": float(metrics.pa_mpjpe(p, g).mean()),
            "root_relative_mpjpe_mm": float(metrics.root_relative_mpjpe(p, g).mean()),
            "acceleration_mm": acceleration(pred),
            "true_acceleration_mm": acceleration(truth),
            "acceleration_error_mm": float(np.linalg.norm(acc_p - acc_g, axis=-1).mean() * 1000),
            "lag_frames": float(lag(pred, truth))}


def evaluate_synthetic(pipe: HandDiffusionPipeline, sequences: int = 4, frames: int = 90,
                       hold: int = 10, noise_px: float = 1.5, settings=SETTINGS,
                       progress: bool = True) -> dict:
    """Every setting on the same synthetic sequences (half of them left hands), from the
    2D keypoints alone (`skel2d`); the figures are means over the sequences."""
    rows: dict[str, list[dict]] = {name: [] for name, _ in settings}
    bar = tqdm(total=sequences * len(settings), desc="synthetic motion", disable=not progress)
    for s in range(sequences):
        side = "left" if s % 2 else "right"
        dets, truth, K = synthetic_motion(pipe, frames, s, hold, noise_px, side)
        for name, changes in settings:
            r = fit_frames(pipe, dets, side, K, VideoOptions(**{"mode": "skel2d", **changes}))
            rows[name].append(motion_metrics(r.joints, truth))
            bar.update()
    bar.close()
    return {name: {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
            for name, ms in rows.items()}


# ---------------------------------------------------------------------------- real clips
def static_world(source: str | Path, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's world landmarks per frame in static (per-photo) mode [T, 21, 3] and
    whether a hand was found [T]: the hand nearest the tracked one is not known here, so the
    surest hand is taken (the clips hold one hand)."""
    from hhmr.reconstruct import HandDetector
    from hhmr.video import open_clip

    det = HandDetector(max_hands=2, min_confidence=0.5)
    world = np.full((len(frames), 21, 3), np.nan, np.float32)
    pos = {int(f): i for i, f in enumerate(frames)}
    clip = open_clip(source, int(frames[0]), int(frames[-1]) + 1)
    for i, rgb in clip.frames:
        if i in pos:
            found = det._detect(np.ascontiguousarray(rgb), 0, 0)
            if found:
                world[pos[i]] = max(found, key=lambda d: d.score).world
    return world, ~np.isnan(world[:, 0, 0])


def evaluate_clip(pipe: HandDiffusionPipeline, source: str | Path,
                  options: VideoOptions | None = None, settings=SETTINGS,
                  progress: bool = True) -> dict:
    """Jitter of each setting against MediaPipe's, on the frames whose neighbours the tracker
    found (see the module's docstring). Speed is `hhmr reconstruct-video --json`'s."""
    options = options or VideoOptions()
    track = track_clip(source, options)
    found = np.array([d is not None for d in track.hand])
    if not found.any():
        raise ValueError(f"no hand found in {source}")
    world = np.stack([np.full((21, 3), np.nan, np.float32) if d is None else d.world
                      for d in track.hand])
    static, static_found = static_world(source, track.frames)
    both = found & static_found
    w, h = track.size
    from hhmr.reconstruct import default_intrinsics

    K = default_intrinsics(w, h)
    out = {"clip": Path(source).name, "frames": int(len(found)), "fps": track.fps,
           "handedness": track.side, "detected": float(found.mean()),
           "static_detected": float(static_found.mean()),
           "mediapipe_tracking_mm": acceleration(np.nan_to_num(world), found),
           "mediapipe_static_mm": acceleration(np.nan_to_num(static), static_found),
           "mediapipe_tracking_on_static_frames_mm": acceleration(np.nan_to_num(world), both),
           "settings": {}}
    for name, changes in tqdm(settings, desc=Path(source).name, disable=not progress):
        opts = replace(options, **changes)
        r = fit_frames(pipe, track.hand, track.side, K, opts, frames=track.frames)
        out["settings"][name] = {"smoothing": opts.smoothing, "steps": opts.steps,
                                 "acceleration_mm": acceleration(r.joints, found)}
    return out


def evaluate_video(clips: list[str], weights: str | None = None, sequences: int = 4,
                   frames: int = 90, end: int | None = None, progress: bool = True) -> dict:
    """`evaluate_clip` on each clip (its first `end` frames), then `evaluate_synthetic`."""
    pipe = HandDiffusionPipeline.from_pretrained(weights)
    pipe.warm_up((1,))
    result = {"task": "video", "defaults": {"smoothing": VideoOptions.smoothing,
                                            "steps": VideoOptions.steps, "n": VideoOptions.n},
              "clips": [evaluate_clip(pipe, c, VideoOptions(end=end), progress=progress)
                        for c in clips]}
    if sequences:
        result["synthetic"] = [
            {"sequences": sequences, "frames": frames, "hold": hold, "noise_px": 1.5,
             "results": evaluate_synthetic(pipe, sequences, frames, hold, progress=progress)}
            for hold in HOLDS]
    return result

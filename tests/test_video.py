"""Video: frames, tracking choices, the clip's shape and poses, smoothing, BVH, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hhmr.bvh import CAMERA_TO_Y_UP, write_bvh
from hhmr.evaluation.video import acceleration, lag, synthetic_motion
from hhmr.hand.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from hhmr.reconstruct import Detection
from hhmr.video import (
    VideoError,
    VideoOptions,
    fit_frames,
    follow,
    interpolate,
    open_clip,
    smooth,
)
from scipy.spatial.transform import Rotation

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_videos"
OPEN_CLOSE = CLIPS / "hand_open_close.mp4"


def det(x: float, side: str, score: float = 0.9) -> Detection:
    kp = np.zeros((21, 2), np.float32) + [x, 100.0]
    kp[:, 1] += np.arange(21)  # a hand 20 px tall
    return Detection(kp, np.zeros((21, 3), np.float32), side, score)


# ---------------------------------------------------------------------------- pure parts
def test_follow_keeps_one_hand_through_label_flips_and_other_hands() -> None:
    frames = [[det(100, "right"), det(400, "left", 0.95)],
              [det(104, "right"), det(400, "left")],
              [det(108, "left")],  # the label flipped on the same hand: kept
              [det(400, "left")],  # only the other hand, far away: not ours
              [det(300, "right"), det(112, "right")]]
    hand, side = follow(frames, "right")
    assert side == "right"
    xs = [None if d is None else float(d.keypoints[0, 0]) for d in hand]
    assert xs == [100, 104, 108, None, 112]
    # without a side given, the side the surest hand has in most frames
    assert follow(frames[:2] + [[det(400, "left")]])[1] == "left"


def test_interpolate_is_geodesic_between_known_frames_and_holds_at_the_ends() -> None:
    a = torch.tensor([[0.0, 0.0, 0.2]])
    b = torch.tensor([[0.0, 0.0, 1.0]])
    rot = torch.stack([a, b])  # [2, 1, 3]
    tr = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]])
    rots, trs = interpolate(np.array([1, 5]), rot, tr, 7)
    assert torch.allclose(rots[0], a) and torch.allclose(rots[6], b)
    assert torch.allclose(rots[3], torch.tensor([[0.0, 0.0, 0.6]]), atol=1e-5)
    assert torch.allclose(trs[2], torch.tensor([0.25, 0.0, 0.0]))


def test_smooth_removes_jitter_without_lag_and_fills_gaps() -> None:
    t = 120
    f = np.arange(t)
    angle = 0.8 * np.sin(2 * math.pi * f / 40)  # a joint swinging, 40-frame period
    noise = np.random.default_rng(0).normal(0, 0.05, t)
    known = np.setdiff1d(f, np.arange(50, 56))  # a 6-frame gap
    rot = torch.zeros(len(known), 2, 3)
    rot[:, 1, 0] = torch.tensor(angle + noise, dtype=torch.float32)[known]
    tr = torch.tensor(np.stack([angle, angle, angle], 1), dtype=torch.float32)[known]
    rots, _ = smooth(known, rot, tr, t, 4.0)
    out = rots[:, 1, 0].numpy()
    truth_err = np.abs(out - angle).mean()
    assert truth_err < 0.6 * np.abs(noise).mean()  # closer to the motion than the input
    acc_in = np.abs(np.diff(angle + noise, 2)).mean()
    assert np.abs(np.diff(out, 2)).mean() < 0.25 * acc_in
    assert np.abs(out[50:56] - angle[50:56]).max() < 0.1  # the gap follows the swing
    # zero phase: the smoothed velocity lines up with the true one
    best = max(range(-4, 5), key=lambda s: np.corrcoef(np.roll(np.diff(out), -s)[5:-5],
                                                        np.diff(angle)[5:-5])[0, 1])
    assert best == 0
    # frames before the first known one hold it
    rots, _ = smooth(known[known > 10], rot[known > 10], tr[known > 10], t, 4.0)
    assert torch.allclose(rots[0], rots[11])


def test_smooth_keeps_rotations_near_a_half_turn_continuous() -> None:
    """The quaternions' sign is made continuous: a global rotation passing pi does not
    swing back through identity."""
    ang = torch.linspace(math.pi - 0.3, math.pi + 0.3, 30)
    aa = matrix_to_axis_angle(axis_angle_to_matrix(torch.stack(
        [torch.zeros(30), ang, torch.zeros(30)], 1)))[:, None]
    rots, _ = smooth(np.arange(30), aa, torch.zeros(30, 3), 30, 10.0)
    m = axis_angle_to_matrix(rots[:, 0])
    steps = matrix_to_axis_angle(m[:-1].transpose(-1, -2) @ m[1:]).norm(dim=-1)
    assert steps.max() < 0.05  # about 0.6 / 29 per frame, never a jump


def test_lag_and_acceleration() -> None:
    t = np.arange(100)
    truth = np.zeros((100, 21, 3))
    truth[:, 1:, 0] = np.sin(t / 6)[:, None] * np.linspace(0.01, 0.05, 20)
    late = np.roll(truth, 2, axis=0)
    assert lag(late, truth) == 2 and lag(truth, truth) == 0
    assert acceleration(truth) > 0
    still = np.zeros((10, 21, 3))
    assert acceleration(still) == 0.0


# ---------------------------------------------------------------------------- frames
def test_open_clip_reads_folders_and_refuses_what_is_not_a_clip(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(5):
        Image.new("RGB", (32, 24), (i * 40, 0, 0)).save(tmp_path / f"f{i:03d}.png")
    clip = open_clip(tmp_path, start=1, stride=2, fps=24)
    frames = list(clip.frames)
    assert [i for i, _ in frames] == [1, 3] and clip.count == 2
    assert clip.fps == 12  # 24 frames/s, every 2nd
    assert frames[1][1][0, 0, 0] == 120  # RGB, not BGR
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(VideoError, match="cannot read"):
        open_clip(broken)
    with pytest.raises(VideoError, match="no such"):
        open_clip(tmp_path / "missing.mp4")
    with pytest.raises(VideoError, match="no image"):
        open_clip(tmp_path, start=10)
    with pytest.raises(ValueError):
        VideoOptions(start=5, end=5)


@pytest.mark.skipif(not OPEN_CLOSE.exists(), reason="needs ../shared/data/real_videos")
def test_open_clip_decodes_a_real_video_range() -> None:
    clip = open_clip(OPEN_CLOSE, start=10, end=20, stride=3)
    frames = list(clip.frames)
    assert [i for i, _ in frames] == [10, 13, 16, 19]
    assert frames[0][1].shape == (720, 1280, 3)
    assert clip.fps == pytest.approx(10, abs=0.5)  # 30 frames/s, every third
    with pytest.raises(VideoError, match="none in"):
        open_clip(OPEN_CLOSE, start=10**6)


# ---------------------------------------------------------------------------- the fit
@pytest.fixture(scope="module")
def pipe():
    from hhmr.sampling import HandDiffusionPipeline

    return HandDiffusionPipeline.from_pretrained()


@pytest.mark.parametrize("side", ["right", "left"])
def test_fit_frames_follows_synthetic_motion_with_one_shape(pipe, side: str) -> None:
    dets, truth, K = synthetic_motion(pipe, 16, seed=3, side=side)
    dets[6] = dets[7] = None  # lost for two frames
    r = fit_frames(pipe, dets, side, K, VideoOptions(mode="skel2d"))
    assert r.handedness == side and r.joints.shape == (16, 21, 3)
    assert r.detected.tolist() == [i not in (6, 7) for i in range(16)]
    assert r.betas.shape == (pipe.hand.num_betas,)
    err = np.linalg.norm((r.joints - r.joints[:, :1]) - (truth - truth[:, :1]), axis=-1)
    assert err.mean() < 0.03, err.mean()  # root-relative, metres
    # the rig's own output: the joints come from the pose and the clip's one shape
    from hhmr.hand.mirror import MirroredHand

    model = MirroredHand(pipe.hand) if side == "left" else pipe.hand
    out = model(global_orient=torch.from_numpy(r.global_orient),
                hand_pose=torch.from_numpy(r.hand_pose),
                betas=torch.from_numpy(r.betas)[None].expand(16, -1),
                transl=torch.from_numpy(r.transl))
    assert np.abs(out.joints.detach().numpy() - r.joints).max() < 1e-4
    # the wrist lies where the projection says, in front of the camera
    p = r.joints[:, 0] @ K.T
    assert (r.joints[:, 0, 2] > 0.2).all()
    px = p[:, :2] / p[:, 2:]
    truth_px = (truth[:, 0] @ K.T)[:, :2] / (truth[:, 0] @ K.T)[:, 2:]
    assert np.linalg.norm(px - truth_px, axis=-1)[r.detected].mean() < 15


# ---------------------------------------------------------------------------- BVH
def read_bvh(path: Path) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
    """Joint names, parents, offsets [J, 3] and motion [T, C] of a BVH file (no end sites)."""
    names, parents, offsets, stack = [], [], [], []
    lines = path.read_text().splitlines()
    i = 0
    while not lines[i].startswith("MOTION"):
        tok = lines[i].split()
        if tok and tok[0] in ("ROOT", "JOINT"):
            names.append(tok[1])
            parents.append(stack[-1] if stack else -1)
        elif tok and tok[0] == "End":
            names.append(None)
            parents.append(stack[-1])
        elif tok and tok[0] == "OFFSET":
            offsets.append([float(v) for v in tok[1:]])
        elif tok and tok[0] == "{":
            stack.append(len(names) - 1)
        elif tok and tok[0] == "}":
            stack.pop()
        i += 1
    motion = np.array([[float(v) for v in ln.split()] for ln in lines[i + 3:]])
    keep = [k for k, n in enumerate(names) if n is not None]
    remap = {k: j for j, k in enumerate(keep)}
    return ([names[k] for k in keep], [remap.get(parents[k], -1) for k in keep],
            np.array(offsets)[keep], motion)


@pytest.mark.parametrize("side", ["right", "left"])
def test_bvh_forward_kinematics_gives_the_animation_joints(pipe, side: str, tmp_path) -> None:
    dets, _, K = synthetic_motion(pipe, 6, seed=1, side=side)
    r = fit_frames(pipe, dets, side, K, VideoOptions(mode="skel2d", steps=2))
    path = write_bvh(tmp_path / "hand.bvh", r, pipe.hand)
    names, parents, offsets, motion = read_bvh(path)
    assert len(names) == 16 and motion.shape == (6, 3 + 16 * 3)  # root position, rotations
    from hhmr.hand.topology import JOINT_TO_KEYPOINT

    want = r.joints[:, list(JOINT_TO_KEYPOINT)] @ CAMERA_TO_Y_UP.T
    for f in range(6):
        glob = [None] * 16
        pos = np.zeros((16, 3))
        for j in range(16):
            rot = Rotation.from_euler("ZXY", motion[f, 3 + 3 * j:6 + 3 * j], degrees=True)
            if parents[j] < 0:
                glob[j], pos[j] = rot.as_matrix(), motion[f, :3]
            else:
                p = parents[j]
                pos[j] = pos[p] + glob[p] @ offsets[j]
                glob[j] = glob[p] @ rot.as_matrix()
        assert np.abs(pos - want[f]).max() < 1e-4


# ---------------------------------------------------------------------------- the command
@pytest.mark.skipif(not OPEN_CLOSE.exists(), reason="needs ../shared/data/real_videos")
def test_reconstruct_video_command_on_a_real_clip(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hhmr.cli", "reconstruct-video",
                           str(OPEN_CLOSE), "--end", "24", "--stride", "2", "--out",
                           str(tmp_path), "--json"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["frames"] == 12 and out["found"] == 1.0
    assert out["fps"] == pytest.approx(15, abs=0.5)  # 30 frames/s, every second frame
    data = np.load(out["files"]["npz"])
    assert data["joints"].shape == (12, 21, 3) and data["detected"].all()
    assert data["frames"].tolist() == list(range(0, 24, 2))
    assert Path(out["files"]["bvh"]).read_text().startswith("HIERARCHY")
    assert Path(out["files"]["preview"]).stat().st_size > 10_000
    for key in ("decode_ms", "detect_ms", "sample_ms", "pose_ms", "frames_per_s"):
        assert out["timings"][key] > 0


def test_reconstruct_video_command_fails_clearly_on_a_broken_clip(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    proc = subprocess.run([sys.executable, "-m", "hhmr.cli", "reconstruct-video", str(bad),
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert "cannot read broken.mp4 as a video" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not OPEN_CLOSE.exists(), reason="needs ../shared/data/real_videos")
def test_service_refuses_clips_beyond_its_limits_before_decoding() -> None:
    from hhmr import protocol as P
    from hhmr.server.compute import reconstruct_video_request

    req = P.validate_request({"v": 1, "id": "a", "op": "reconstruct_video",
                              "args": {"video": OPEN_CLOSE.read_bytes()}})
    with pytest.raises(P.ProtocolError, match="1280x720 pixels") as err:
        reconstruct_video_request(None, req.args, lambda i, n: None,
                                  P.Limits(max_pixels=640 * 480))
    assert err.value.code == P.TOO_LARGE
    with pytest.raises(P.ProtocolError, match="621 frames") as err:
        reconstruct_video_request(None, req.args, lambda i, n: None, P.Limits(max_frames=100))
    assert err.value.code == P.TOO_LARGE

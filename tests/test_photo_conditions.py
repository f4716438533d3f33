"""The photo's second view: how fit2d and reconstruct pass MediaPipe's world landmarks as a
3D skeleton condition and score by them."""

import numpy as np
import pytest
import torch
from hhmr.models import SCALE


@pytest.fixture(scope="module")
def tiny_pipe(tiny_net, hand):
    from hhmr.sampling import HandDiffusionPipeline

    return HandDiffusionPipeline(tiny_net, hand)


def test_fit2d_takes_a_3d_view_with_its_confidence(tiny_pipe):
    from hhmr.sampling import Fit2D, Options

    kp = torch.rand(21, 2) * 100
    j3 = torch.randn(21, 3) * 0.03 + torch.tensor([0.1, 0.2, 0.5])
    conf = torch.full((21,), 0.5)
    conf[7] = 0  # left out
    plan = tiny_pipe.plan(Fit2D(kp, None, None, j3, conf), Options(n=3))
    assert torch.allclose(plan.cond.joints3d[:, 0], torch.zeros(3, 3))  # wrist-relative
    assert torch.allclose(plan.cond.joints3d[0] * SCALE, j3 - j3[0], atol=1e-6)
    assert plan.cond.joints3d_mask.sum(1).eq(20).all() and plan.cond.joints3d_mask[:, 7].eq(0).all()
    assert plan.cond.joints3d.shape == (3, 21, 3)
    assert plan.key() != tiny_pipe.plan(Fit2D(kp), Options(n=3)).key()  # not batched together
    with pytest.raises(ValueError, match="wrist"):
        tiny_pipe.plan(Fit2D(kp, joints3d=j3, joints3d_conf=torch.arange(21) > 0), Options())
    h = tiny_pipe.fit2d(kp, n=2, steps=2, joints3d=j3, joints3d_conf=conf)
    # the score is the reprojection error; the distance to the 3D view is reported beside
    assert torch.allclose(-h.scores, h.extra["reprojection_px"])
    j = h.joints - h.joints[:, :1]
    d = ((j - (j3 - j3[0])).norm(dim=-1) * conf).sum(-1) / conf.sum() * 1000
    assert torch.allclose(h.extra["joints3d_mm"], d, rtol=1e-4)


def test_a_left_hands_world_landmarks_are_mirrored_like_its_keypoints(tiny_pipe, monkeypatch):
    from hhmr.reconstruct import Detection, fit_mode

    K = np.array([[400, 0, 120], [0, 400, 100], [0, 0, 1]], np.float32)
    world = np.random.default_rng(0).normal(size=(21, 3)).astype(np.float32) * 0.03
    det = Detection(np.random.default_rng(1).uniform(0, 200, (21, 2)).astype(np.float32),
                    world, "left", 0.9)
    seen = {}
    real = tiny_pipe.fit2d

    def spy(kp, conf, K_, **opts):
        seen.update(kp=np.asarray(kp), **opts)
        return real(kp, conf, K_, **opts)

    monkeypatch.setattr(tiny_pipe, "fit2d", spy)
    fit_mode(tiny_pipe, det, "left", K, "skel2d+world_all", n=1, steps=1)
    assert np.allclose(seen["kp"][:, 0], 2 * K[0, 2] - det.keypoints[:, 0])
    assert np.allclose(seen["joints3d"], world * [-1, 1, 1])
    fit_mode(tiny_pipe, det, "right", K, "skel2d", n=1, steps=1)
    assert seen["joints3d"] is None
    with pytest.raises(ValueError, match="unknown mode"):
        fit_mode(tiny_pipe, det, "right", K, "depth")


def test_world_landmarks_that_disagree_with_the_photo_are_left_out(tiny_pipe, monkeypatch):
    from dataclasses import replace

    from hhmr.reconstruct import Detection, fit_mode, world_residual
    from hhmr.sampling.config import PhotoConfig

    with pytest.raises(ValueError, match="photo mode"):
        PhotoConfig(mode="depth")
    rng = np.random.default_rng(2)
    world = rng.normal(size=(21, 3)).astype(np.float32) * 0.03
    world[0] = 0
    # keypoints: the landmarks seen head-on, scaled and moved; two of them then misplaced
    kp = (world[:, :2] * 4000 + [300, 200]).astype(np.float32)
    assert world_residual(kp, world).max() < 1e-4
    kp[[4, 8]] += 60
    res = world_residual(kp, world)
    assert (res[[4, 8]] > 0.03).all() and np.delete(res, [4, 8]).max() < 0.03
    K = np.array([[400, 0, 300], [0, 400, 200], [0, 0, 1]], np.float32)
    seen = {}
    real = tiny_pipe.fit2d
    monkeypatch.setattr(tiny_pipe, "fit2d", lambda *a, **o: seen.update(o) or real(*a, **o))
    det = Detection(kp, world, "right", 0.9)
    fit_mode(tiny_pipe, det, "right", K, "skel2d+world", n=1, steps=1)
    assert seen["joints3d_conf"].tolist() == [0.0 if i in (4, 8) else 1.0 for i in range(21)]

    def gated(gate):
        cfg = tiny_pipe.config
        return tiny_pipe.with_config(replace(cfg, photo=replace(cfg.photo, world_gate=gate)))

    fit_mode(gated(0.01), det, "right", K, "skel2d+world_all", n=1, steps=1)
    assert seen["joints3d"] is not None and seen["joints3d_conf"] is None  # never gated
    fit_mode(gated(0.5), det, "right", K, "skel2d+world", n=1, steps=1)
    assert seen["joints3d_conf"].tolist() == [1.0] * 21  # another gate for a gated mode
    kp[1:12] += 80  # most landmarks disagree: none is used
    fit_mode(tiny_pipe, Detection(kp, world, "right", 0.9), "right", K, "skel2d+world", n=1,
             steps=1)
    assert seen["joints3d"] is None


def test_keypoints_are_lifted_to_the_mean_of_the_detectors_two_depths(tiny_pipe, monkeypatch):
    from dataclasses import replace

    from hhmr.reconstruct import Detection, depth_disagreement, fit_mode, lift_keypoints

    rng = np.random.default_rng(4)
    K = np.array([[500, 0, 320], [0, 500, 240], [0, 0, 1]], np.float32)
    joints = (rng.normal(size=(21, 3)) * 0.03 + [0.02, -0.01, 0.6]).astype(np.float32)
    p = joints @ K.T
    kp = p[:, :2] / p[:, 2:]
    world = joints - joints.mean(0)  # MediaPipe's: metres, hand-centred, camera axes
    scale = 500 / 0.6  # pixels per metre at the hand
    depth = (joints[:, 2] - joints[0, 2]) * scale  # the image landmarks': pixels, wrist 0
    for d in (depth, None):  # both depths right, or the world z alone
        lifted = lift_keypoints(kp, world, d, K)
        q = lifted @ K.T
        assert np.abs(q[:, :2] / q[:, 2:] - kp).max() < 1e-3  # on the keypoints' rays
        rel, truth = lifted - lifted[0], joints - joints[0]
        assert np.abs(rel - truth).max() < 0.004  # weak perspective's error: a few mm
    noise = rng.normal(size=21).astype(np.float32) * 0.01
    wrong = world + np.stack([0 * noise, 0 * noise, noise], 1)  # the world z off, depth right
    def z_error(lifted):  # each joint's depth error about the hand's own, metres
        dz, truth = lifted[:, 2] - lifted[:, 2].mean(), joints[:, 2] - joints[:, 2].mean()
        return dz - truth

    both, alone = z_error(lift_keypoints(kp, wrong, depth, K)), z_error(
        lift_keypoints(kp, wrong, None, K))
    assert np.abs(alone - (noise - noise.mean())).max() < 0.002
    assert np.abs(both - alone / 2).max() < 0.002  # half the world z's error is left

    seen = {}
    real = tiny_pipe.fit2d
    monkeypatch.setattr(tiny_pipe, "fit2d", lambda *a, **o: seen.update(o) or real(*a, **o))
    assert tiny_pipe.config.photo.mode == "skel2d+lifted"  # the default mode
    fit_mode(tiny_pipe, Detection(kp, world, "right", 0.9, depth), "right", K, None, n=1,
             steps=1)
    assert np.allclose(seen["joints3d"], lift_keypoints(kp, world, depth, K))
    assert seen["joints3d_conf"] is not None  # gated like the world landmarks
    left = Detection(kp, world, "left", 0.9, depth)  # fitted mirrored, like its keypoints
    fit_mode(tiny_pipe, left, "left", K, None, n=1, steps=1)
    mirrored = seen["joints3d"]
    assert np.allclose(mirrored, lift_keypoints(kp, world, depth, K) * [-1, 1, 1])
    q = mirrored @ K.T
    assert np.abs(q[:, 0] / q[:, 2] - (2 * K[0, 2] - kp[:, 0])).max() < 1e-3
    far = replace(left, world=world * 0)  # no extent in the image: no depth to lift
    fit_mode(tiny_pipe, far, "left", K, None, n=1, steps=1)
    assert seen["joints3d"] is None
    assert depth_disagreement(kp, world, depth) < 0.01
    noisy = depth + rng.normal(size=21).astype(np.float32) * 40  # pixels: ~5 cm at the hand
    assert depth_disagreement(kp, world, noisy) > tiny_pipe.config.photo.max_depth_disagreement
    fit_mode(tiny_pipe, Detection(kp, world, "right", 0.9, noisy), "right", K, None, n=1,
             steps=1)
    assert seen["joints3d"] is None  # the two depths disagree: the keypoints alone


def test_a_wrist_landmark_that_disagrees_is_moved_to_the_keypoints_view():
    from dataclasses import replace

    from hhmr.reconstruct import gate_world, world_residual
    from hhmr.sampling.config import PhotoConfig

    rng = np.random.default_rng(3)
    world = rng.normal(size=(21, 3)).astype(np.float32) * 0.03
    world[0] = 0
    kp = (world[:, :2] * 4000 + [300, 200]).astype(np.float32)
    bad = world.copy()
    bad[0, :2] += 0.02  # the wrist landmark misplaced, its keypoint right
    assert world_residual(kp, bad)[0] > 0.03
    moved, conf = gate_world(kp, bad, PhotoConfig())
    assert np.abs(moved[0, :2] - world[0, :2]).max() < 2e-3 and moved[0, 2] == bad[0, 2]
    assert conf.tolist() == [1.0] * 21 and np.array_equal(bad[0, :2], world[0, :2] + 0.02)
    kept, conf = gate_world(kp, bad, replace(PhotoConfig(), anchor_wrist=False))
    assert np.array_equal(kept, bad) and conf[0] == 1.0  # the origin is always kept
    everything, conf = gate_world(kp, bad, None)  # no gate: every landmark as it is
    assert everything is bad and conf is None

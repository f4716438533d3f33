"""The photo's second view: a 3D skeleton condition with a confidence, loose skeletons to
train it, and how fit2d and reconstruct pass MediaPipe's world landmarks."""

import numpy as np
import pytest
import torch
from hhmr import metrics
from hhmr.models import SCALE
from hhmr.models.conditions import ConditionEncoder, Conditions


@pytest.fixture(scope="module")
def tiny_pipe(tiny_net, hand):
    from hhmr.sampling import HandDiffusionPipeline

    return HandDiffusionPipeline(tiny_net, hand)


def test_weights_from_before_the_confidence_input_give_the_same_tokens(gen):
    enc = ConditionEncoder(dim=16, num_patches=2, image_dim=8)
    old = {k: v.clone() for k, v in enc.state_dict().items()}
    old["skel3d.0.weight"] = old["skel3d.0.weight"][:, :3]  # the earlier 3-input layer
    fresh = ConditionEncoder(dim=16, num_patches=2, image_dim=8)
    fresh.load_state_dict(old)
    assert fresh.skel3d[0].weight.shape == (16, 4) and (fresh.skel3d[0].weight[:, 3] == 0).all()
    j = torch.randn(2, 21, 3, generator=gen)
    mask = torch.full((2, 21), 0.5)
    mask[1, 5] = 0
    toks = fresh(Conditions(joints3d=j, joints3d_mask=mask), 2)[:, :21]
    lin0, act, lin1 = fresh.skel3d
    manual = lin1(act(j @ old["skel3d.0.weight"].T + lin0.bias)) + fresh.joint_embedding \
        + fresh.modality_embedding[0]
    manual[1, 5] = fresh.null3d[5] + fresh.modality_embedding[0]  # unknown joint: null token
    assert torch.allclose(toks, manual, atol=1e-6)
    # the new input is read: a different confidence changes the tokens once trained
    with torch.no_grad():
        fresh.skel3d[0].weight[:, 3] = 1.0
    assert not torch.allclose(fresh(Conditions(joints3d=j, joints3d_mask=mask), 2)[:, :21],
                              toks)


def test_loose_skeletons_stay_hands_and_loosen_with_strength(hand, gen):
    from hhmr.data.poses import PosePrior
    from hhmr.training.data import PoseSample, loose_skeleton, synthetic_batch

    s = PosePrior(hand).sample(64, generator=gen)
    exact = hand(s.global_orient, s.hand_pose, s.betas).joints
    exact = exact - exact[:, :1]
    errs = []
    for k in (0.0, 0.4, 0.8):
        loose = loose_skeleton(hand, PoseSample(s.global_orient, s.hand_pose, s.betas),
                               torch.full((64,), k), gen)
        assert loose[:, 0].norm(dim=-1).max() < 0.02  # wrist-relative, up to the jitter
        errs.append(float(metrics.pa_mpjpe(loose, exact).mean()))  # mm
    assert errs[0] < 0.05 and errs[0] < errs[1] < errs[2]
    assert 9 < errs[2] < 20  # MediaPipe's world landmarks on real photos: 11 mm
    b = synthetic_batch(hand, PosePrior(hand), 256, gen, p_loose3d=0.5)
    conf = b.conditions.joints3d_mask[:, 0]
    frac = float((conf < 1).float().mean())
    assert 0.35 < frac < 0.65 and float(conf.min()) >= 0.3
    # the less confident, the further the condition from the truth
    err = (b.conditions.joints3d * SCALE - b.joints).norm(dim=-1).mean(1)
    assert float(err[conf < 0.6].mean()) > 3 * float(err[conf == 1].mean())


def test_fit2d_takes_a_3d_view_with_its_confidence(tiny_pipe):
    from hhmr.sampling import Fit2D, Options

    kp = torch.rand(21, 2) * 100
    j3 = torch.randn(21, 3) * 0.03 + torch.tensor([0.1, 0.2, 0.5])
    conf = torch.full((21,), 0.5)
    plan = tiny_pipe.plan(Fit2D(kp, None, None, j3, conf, 0.5), Options(n=3))
    assert torch.allclose(plan.cond.joints3d[:, 0], torch.zeros(3, 3))  # wrist-relative
    assert torch.allclose(plan.cond.joints3d[0] * SCALE, j3 - j3[0], atol=1e-6)
    assert (plan.cond.joints3d_mask == 0.5).all() and plan.cond.joints3d.shape == (3, 21, 3)
    assert plan.key() != tiny_pipe.plan(Fit2D(kp), Options(n=3)).key()  # not batched together
    with pytest.raises(ValueError, match="wrist"):
        tiny_pipe.plan(Fit2D(kp, joints3d=j3, joints3d_conf=torch.arange(21) > 0), Options())
    h = tiny_pipe.fit2d(kp, n=2, steps=2, joints3d=j3, joints3d_conf=conf, joints3d_weight=1.0)
    # the score is the reprojection error plus the weighted 3D distance, both reported
    assert torch.allclose(-h.scores, h.extra["reprojection_px"] + h.extra["joints3d_mm"],
                          rtol=1e-4)


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
    fit_mode(tiny_pipe, det, "left", K, "skel2d+world", n=1, steps=1)
    assert np.allclose(seen["kp"][:, 0], 2 * K[0, 2] - det.keypoints[:, 0])
    assert np.allclose(seen["joints3d"], world * [-1, 1, 1])
    assert np.allclose(seen["joints3d_conf"], 0.5)
    fit_mode(tiny_pipe, det, "right", K, "skel2d", n=1, steps=1)
    assert seen["joints3d"] is None
    with pytest.raises(ValueError, match="unknown mode"):
        fit_mode(tiny_pipe, det, "right", K, "depth")

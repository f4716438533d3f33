"""The anatomical pose prior."""

import numpy as np
import torch
from hhmr.data.poses import GESTURES, PosePrior
from hhmr.mesh import self_intersection_fraction


def test_gestures_cover_the_named_set():
    names = {g.name for g in GESTURES}
    for required in ("open", "fist", "point", "pinch", "ok", "thumbs_up", "peace",
                     "cylinder_grasp", "sphere_grasp"):
        assert required in names


def test_samples_inside_limits_and_shapes(hand):
    prior = PosePrior(hand)
    s = prior.sample(64, seed=3)
    assert s.hand_pose.shape == (64, 15, 3) and s.global_orient.shape == (64, 3)
    assert s.betas.shape == (64, hand.num_betas) and len(s.gestures) == 64
    assert hand.joint_limits.contains(s.hand_pose).all()
    assert s.betas.abs().max() <= prior.shape_clip
    assert len(set(s.gestures)) > 8  # many gestures are drawn


def test_reproducible_by_seed(hand):
    prior = PosePrior(hand)
    a, b, c = prior.sample(16, seed=7), prior.sample(16, seed=7), prior.sample(16, seed=8)
    for x, y in ((a.hand_pose, b.hand_pose), (a.global_orient, b.global_orient),
                 (a.betas, b.betas)):
        assert torch.equal(x, y)
    assert a.gestures == b.gestures
    assert not torch.allclose(a.hand_pose, c.hand_pose)


def test_synergy_and_noise(hand):
    lim = hand.joint_limits
    clean = PosePrior(hand, noise_scale=0.0, blend_prob=0.0)
    s = clean.sample(32, seed=0)
    a = lim.to_anatomical(s.hand_pose)
    pip, dip = a[:, 4::3, 0], a[:, 5::3, 0]  # index..little PIP and DIP flexion
    assert torch.allclose(dip, 0.6 * pip, atol=1e-4)  # DIP follows PIP
    noisy = PosePrior(hand).sample(32, seed=0)
    assert not torch.allclose(noisy.hand_pose, s.hand_pose)


def test_canonical_orientation_option(hand):
    s = PosePrior(hand, random_orient=False).sample(4, seed=0)
    assert torch.equal(s.global_orient, torch.zeros(4, 3))
    r = PosePrior(hand).sample(200, seed=0).global_orient
    assert r.norm(dim=1).mean() > 1.5  # uniform rotations have a mean angle near 126 degrees


def test_few_self_intersections(hand):
    s = PosePrior(hand).sample(40, seed=11)
    v = hand(s.global_orient, s.hand_pose, s.betas).vertices.detach().numpy()
    f = hand.faces.numpy()
    si = np.mean([self_intersection_fraction(x, f) for x in v])
    assert si < 0.02

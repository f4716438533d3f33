import os

import pytest
import torch
from hhmr.data.poses import PosePrior
from hhmr.hand.pose_fit import PoseGaussian, fit_pose, skin_with_corrective
from hhmr.hand.rotations import axis_angle_to_matrix, matrix_to_axis_angle

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def posed(hand):
    """Four prior hands with random shapes, orientations and translations."""
    s = PosePrior(hand).sample(4, seed=7)
    transl = torch.randn(4, 3, generator=torch.Generator().manual_seed(7)) * 0.1
    with torch.no_grad():
        out = hand(s.global_orient, s.hand_pose, s.betas, transl)
    return s, transl, out


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    rel = axis_angle_to_matrix(a).transpose(-1, -2) @ axis_angle_to_matrix(b)
    return matrix_to_axis_angle(rel).norm(dim=-1).rad2deg()


def test_mesh_round_trip_recovers_pose_shape_and_translation(hand, posed):
    s, transl, out = posed
    fit = fit_pose(hand, vertices=out.vertices)
    assert fit.global_orient.shape == (4, 3) and fit.hand_pose.shape == (4, 15, 3)
    assert fit.betas.shape == (4, hand.num_betas) and fit.transl.shape == (4, 3)
    assert (fit.vertices - out.vertices).norm(dim=-1).max() < 2e-4  # 0.2 mm
    assert (fit.joints - out.joints).norm(dim=-1).max() < 2e-4
    assert _angle_deg(fit.global_orient, s.global_orient).max() < 0.5
    assert _angle_deg(fit.hand_pose, s.hand_pose).max() < 2.0
    assert (fit.transl - transl).norm(dim=-1).max() < 1e-3
    assert fit.error.max() < 2e-4
    # the solved parameters mean the same through the model's own forward pass
    again = hand(fit.global_orient, fit.hand_pose, fit.betas, fit.transl)
    assert torch.allclose(again.vertices, fit.vertices, atol=1e-5)


def test_keypoint_round_trip(hand, posed):
    s, transl, out = posed
    fit = fit_pose(hand, keypoints=out.joints, iterations=10)
    assert fit.corrective is None
    assert (fit.joints - out.joints).norm(dim=-1).mean() < 5e-4
    assert (fit.vertices - out.vertices).norm(dim=-1).mean() < 3e-3
    assert _angle_deg(fit.global_orient, s.global_orient).max() < 5.0


def test_joint_angles_stay_inside_the_limits(hand, posed):
    s, transl, out = posed
    lim = hand.joint_limits
    angles = lim.to_anatomical(s.hand_pose).clone()
    angles[:, 3:, 0] = lim.upper[3:, 0] + 0.6  # every finger joint curled 34 deg too far
    angles[:, 3:, 1] = lim.lower[3:, 1] - 0.3
    bad_pose = lim.from_anatomical(angles)
    assert not lim.contains(bad_pose).any()
    with torch.no_grad():
        target = hand(s.global_orient, bad_pose, s.betas, transl).vertices
    fit = fit_pose(hand, vertices=target)
    assert lim.contains(fit.hand_pose, tol=1e-4).all()
    # what the limits forbid stays in the corrective, which still reproduces the mesh
    assert fit.corrective.norm(dim=-1).max() > 5e-3
    assert (skin_with_corrective(hand, fit) - target).abs().max() < 1e-5


def test_corrective_reproduces_any_mesh_exactly(hand, posed):
    _, _, out = posed
    noise = torch.randn(out.vertices.shape, generator=torch.Generator().manual_seed(3)) * 2e-3
    target = out.vertices + noise
    fit = fit_pose(hand, vertices=target, iterations=3)
    assert fit.error.mean() > 1e-3  # the model cannot explain the noise...
    assert (skin_with_corrective(hand, fit) - target).abs().max() < 1e-5  # ...the corrective can
    zero = skin_with_corrective(hand, fit, torch.zeros_like(fit.corrective))
    assert torch.allclose(zero, fit.vertices, atol=1e-5)


def test_batch_gives_each_hand_its_own_fit(hand, posed):
    _, _, out = posed
    batch = fit_pose(hand, vertices=out.vertices, iterations=3)
    for i in (0, 3):
        one = fit_pose(hand, vertices=out.vertices[i:i + 1], iterations=3)
        assert torch.allclose(one.vertices[0], batch.vertices[i], atol=1e-5)
        assert torch.allclose(one.corrective[0], batch.corrective[i], atol=1e-5)


def test_one_finger_places_a_hand_of_normal_size(hand, posed):
    s, transl, out = posed
    prior = PoseGaussian.from_angles(PosePrior(hand).sample_angles(
        2000, torch.Generator().manual_seed(0))[0])
    mask = torch.zeros(4, 21)
    mask[:, 5:9] = 1  # the index finger: MCP, PIP, DIP, tip
    fit = fit_pose(hand, keypoints=out.joints, keypoint_weights=mask, prior=prior, iterations=10)
    given = (fit.joints - out.joints)[:, 5:9].norm(dim=-1)
    assert given.max() < 3e-3
    wrist = (fit.joints[:, 0] - out.joints[:, 0]).norm(dim=-1)
    # the missing wrist lands within a few cm (MCP flexion and roll are not observed)
    assert wrist.max() < 0.05
    size = (fit.joints[:, 9] - fit.joints[:, 0]).norm(dim=-1) / \
        (out.joints[:, 9] - out.joints[:, 0]).norm(dim=-1)
    assert ((size > 0.8) & (size < 1.25)).all()


def test_bad_inputs(hand):
    with pytest.raises(ValueError, match="either"):
        fit_pose(hand)
    with pytest.raises(ValueError, match="vertices"):
        fit_pose(hand, vertices=torch.zeros(1, 10, 3))
    with pytest.raises(ValueError, match="keypoint"):
        fit_pose(hand, keypoints=torch.zeros(1, 21, 3), keypoint_weights=torch.zeros(1, 21))


def test_mirrored_pose_drives_the_left_hand(hand, posed):
    from hhmr.hand import MirroredHand, mirror_points
    from hhmr.reconstruct import mirror_pose

    _, _, out = posed
    fit = fit_pose(hand, vertices=out.vertices + 1e-3, iterations=2)
    right = skin_with_corrective(hand, fit)
    left = mirror_pose({"global_orient": fit.global_orient, "hand_pose": fit.hand_pose,
                        "transl": fit.transl, "corrective": fit.corrective})
    mirrored = MirroredHand(hand)(left["global_orient"], left["hand_pose"], fit.betas,
                                  left["transl"])
    assert torch.allclose(mirrored.vertices, mirror_points(fit.vertices), atol=1e-5)
    assert torch.allclose(mirror_points(right), mirror_points(out.vertices + 1e-3), atol=1e-5)
    # the left hand's joint angles are the right's: the same limits hold
    assert torch.allclose(MirroredHand(hand).joint_limits.to_anatomical(left["hand_pose"]),
                          hand.joint_limits.to_anatomical(fit.hand_pose), atol=1e-5)

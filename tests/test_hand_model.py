"""LBS, the smplx-style interface, joint limits and mirroring."""

import pytest
import torch
from hhmr.hand import MirroredHand, load_hand_model, mirror_axis_angle, mirror_points
from hhmr.hand.lbs import forward_kinematics, linear_blend_skinning
from hhmr.hand.rotations import axis_angle_to_matrix
from hhmr.hand.topology import JOINT_NAMES, KEYPOINT_NAMES, PARENTS


def test_interface(hand):
    assert 700 <= hand.num_vertices <= 1000
    assert len(hand.keypoint_names) == 21 and hand.keypoint_names == KEYPOINT_NAMES
    assert hand.parents == list(PARENTS) and len(hand.parents) == 16
    assert hand.faces.shape[1] == 3
    out = hand()
    assert out.vertices.shape == (1, hand.num_vertices, 3) and out.joints.shape == (1, 21, 3)
    assert torch.allclose(out.vertices[0], hand.v_template, atol=1e-6)  # zero pose = template


def test_batched_and_differentiable(hand, gen):
    b = 4
    go = (torch.randn(b, 3, generator=gen) * 0.3).requires_grad_()
    hp = (torch.randn(b, 15, 3, generator=gen) * 0.2).requires_grad_()
    betas = torch.randn(b, hand.num_betas, generator=gen).requires_grad_()
    transl = torch.randn(b, 3, generator=gen).requires_grad_()
    out = hand(go, hp, betas, transl)
    assert out.vertices.shape == (b, hand.num_vertices, 3)
    (out.vertices.square().sum() + out.joints.square().sum()).backward()
    for t in (go, hp, betas, transl):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # each batch element matches its own single evaluation
    one = hand(go[2:3], hp[2:3], betas[2:3], transl[2:3])
    assert torch.allclose(one.vertices[0], out.vertices[2], atol=1e-5)


def test_transl_and_global_orient(hand):
    t = torch.tensor([[0.1, -0.2, 0.3]])
    assert torch.allclose(hand(transl=t).vertices, hand().vertices + t[:, None], atol=1e-6)
    # global orientation rotates the whole hand about the wrist (at the origin)
    aa = torch.tensor([[0.3, -1.2, 0.5]])
    r = axis_angle_to_matrix(aa[0])
    assert torch.allclose(hand(global_orient=aa).vertices[0], hand.v_template @ r.T, atol=1e-5)


def test_single_joint_rotates_its_finger_rigidly(hand):
    """Bending the index DIP moves only vertices it drives, rotating them about the DIP."""
    j = JOINT_NAMES.index("index_dip")
    pose = torch.zeros(1, 15, 3)
    pose[0, j - 1] = torch.tensor([0.7, 0.0, 0.0])
    out = hand(hand_pose=pose).vertices[0]
    rest = hand.v_template
    dip = hand.regress_keypoints(rest[None])[0, KEYPOINT_NAMES.index("index_dip")]
    rigid = hand.weights[:, j] > 0.999
    expected = (rest[rigid] - dip) @ axis_angle_to_matrix(pose[0, j - 1]).T + dip
    assert rigid.sum() > 5
    assert torch.allclose(out[rigid], expected, atol=1e-5)
    untouched = hand.weights[:, j] == 0
    descendants = [k for k in range(16) if k == j]
    assert descendants
    assert torch.allclose(out[untouched], rest[untouched], atol=1e-6)


def test_lbs_chain_matches_hand_computation():
    joints = torch.tensor([[[0.0, 0, 0], [0, 1, 0], [0, 2, 0]]])
    rot = axis_angle_to_matrix(torch.tensor([[[0, 0, 0.0], [0, 0, torch.pi / 2], [0, 0, 0]]]))
    posed, transforms = forward_kinematics(rot, joints, [-1, 0, 1])
    assert torch.allclose(posed[0, 2], torch.tensor([-1.0, 1.0, 0.0]), atol=1e-6)
    v = torch.tensor([[[0.0, 1.5, 0.0]]])
    w = torch.tensor([[0.0, 1.0, 0.0]])
    assert torch.allclose(linear_blend_skinning(v, w, transforms)[0, 0],
                          torch.tensor([-0.5, 1.0, 0.0]), atol=1e-6)


def test_flexion_curls_towards_the_palm(hand):
    lim = hand.joint_limits
    for finger in range(5):
        angles = torch.zeros(1, 15, 3)
        angles[0, 3 * finger: 3 * finger + 3, 0] = 0.6  # flex all three joints
        out = hand(hand_pose=lim.from_anatomical(angles)).joints[0]
        tip = 4 + 4 * finger
        assert out[tip, 2] < hand.regress_keypoints(hand.v_template[None])[0, tip, 2] - 0.01


def test_anatomical_round_trip_and_limits(hand, gen):
    lim = hand.joint_limits
    angles = torch.randn(10, 15, 3, generator=gen) * 0.3
    assert torch.allclose(lim.to_anatomical(lim.from_anatomical(angles)), angles, atol=1e-5)
    clamped = lim.clamp(angles)
    assert lim.contains(lim.from_anatomical(clamped)).all()
    wild = torch.zeros(1, 15, 3)
    wild[0, 4, 0] = -1.5  # index PIP bent backwards 86 degrees
    assert not lim.contains(lim.from_anatomical(wild)).any()
    assert lim.violation(lim.from_anatomical(wild))[0, 4, 0] > 1.0
    frames = lim.frames
    assert torch.allclose(frames.transpose(1, 2) @ frames, torch.eye(3).expand(16, 3, 3),
                          atol=1e-5)


def test_mirrored_left_hand(hand, gen):
    left = load_hand_model(side="left")
    assert isinstance(left, MirroredHand)
    go = torch.randn(3, 3, generator=gen) * 0.5
    hp = torch.randn(3, 15, 3, generator=gen) * 0.3
    betas = torch.randn(3, hand.num_betas, generator=gen)
    t = torch.randn(3, 3, generator=gen)
    right = hand(go, hp, betas, t)
    mirrored = left(mirror_axis_angle(go), mirror_axis_angle(hp), betas, mirror_points(t))
    assert torch.allclose(mirrored.vertices, mirror_points(right.vertices), atol=1e-5)
    assert torch.allclose(mirrored.joints, mirror_points(right.joints), atol=1e-5)
    # thumb on the other side, and the same anatomical angles for the mirrored pose
    assert left().joints[0, 4, 0] > 0.05
    assert torch.allclose(left.joint_limits.to_anatomical(mirror_axis_angle(hp)),
                          hand.joint_limits.to_anatomical(hp), atol=1e-5)
    # faces are re-wound: normals still point outwards (same signed volume)
    def volume(v, f):
        tri = v[f]
        return torch.einsum("ij,ij->i", tri[:, 0], torch.linalg.cross(tri[:, 1], tri[:, 2])).sum()
    assert torch.sign(volume(left().vertices[0], left.faces)) == \
        torch.sign(volume(hand().vertices[0], hand.faces))


def test_bad_inputs(hand):
    with pytest.raises(ValueError):
        hand(global_orient=torch.zeros(2, 3), hand_pose=torch.zeros(3, 15, 3))
    with pytest.raises(ValueError):
        hand(betas=torch.zeros(1, hand.num_betas + 5))
    with pytest.raises(ValueError):
        load_hand_model("nonexistent")
    with pytest.raises(ValueError):
        load_hand_model(side="middle")
    with pytest.raises(ValueError):
        load_hand_model("mano")


def test_missing_asset_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HHMR_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="open_hand_right.npz"):
        load_hand_model()

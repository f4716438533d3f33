"""ManoHand against smplx's own MANO, on a synthetic MANO_RIGHT.pkl built in the test."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

smplx = pytest.importorskip("smplx")
ch = pytest.importorskip("chumpy")
sparse = pytest.importorskip("scipy.sparse")
smplx_joint_names = pytest.importorskip("smplx.joint_names")

from hhmr.hand import load_hand_model  # noqa: E402
from hhmr.hand.mano import (  # noqa: E402
    MANO_FROM_OURS,
    MANO_TIP_VERTEX_IDS,
    OURS_FROM_MANO,
    ManoHand,
    mano_pose_to_ours,
    ours_pose_to_mano,
)
from hhmr.hand.topology import (  # noqa: E402
    FINGERS,
    JOINT_TO_KEYPOINT,
    PARENTS,
    TIP_KEYPOINTS,
    finger_of_joint,
)

V, F, J, S = 778, 1538, 16, 10
# MANO's kintree_table: the wrist's parent is stored as uint32(-1)
KINTREE = np.array(
    [[4294967295, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14], list(range(J))],
    dtype=np.int64,
)



def _expected_ours_from_mano() -> list[int]:
    """Our joint j -> MANO joint, derived independently from smplx's SMPL-H joint names
    (its right-hand joints are MANO's 15, in MANO's order: index, middle, pinky, ring, thumb)."""
    names = smplx_joint_names.JOINT_NAMES
    start = names.index("right_index1")
    mano = ["wrist"] + [n.removeprefix("right_") for n in names[start : start + 15]]
    assert mano[-1] == "thumb3"
    ours = ["wrist"] + [
        f"{FINGERS[finger_of_joint(j)].replace('little', 'pinky')}{(j - 1) % 3 + 1}"
        for j in range(1, J)
    ]
    return [mano.index(n) for n in ours]


EXPECTED = _expected_ours_from_mano()


def _synthetic_mano(seed: int = 0) -> dict:
    """Random but valid data with the real MANO_RIGHT.pkl's keys and types."""
    rng = np.random.default_rng(seed)
    v_template = rng.uniform(-0.1, 0.1, size=(V, 3))
    faces = np.stack([np.arange(F) % V, (np.arange(F) + 1) % V, (np.arange(F) + 2) % V], 1)
    weights = rng.dirichlet(np.full(J, 0.5), size=V)
    rows, cols, vals = [], [], []
    for j in range(J):
        idx = rng.choice(V, size=12, replace=False)
        w = rng.dirichlet(np.ones(12))
        rows += [j] * 12
        cols += idx.tolist()
        vals += w.tolist()
    j_regressor = sparse.csc_matrix((vals, (rows, cols)), shape=(J, V))
    n_coeffs = 7
    return {
        "v_template": v_template,
        "f": faces.astype(np.uint32),
        "weights": weights,
        # zero pose correctives: ManoHand drops them, so both models then agree exactly
        "posedirs": np.zeros((V, 3, 135)),
        "shapedirs": ch.Ch(rng.normal(scale=0.01, size=(V, 3, S))),
        "J_regressor": j_regressor,
        "kintree_table": KINTREE,
        "hands_components": rng.normal(size=(45, 45)),
        "hands_coeffs": rng.normal(size=(n_coeffs, 45)),
        "hands_mean": rng.normal(scale=0.2, size=45),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


@pytest.fixture(scope="module")
def mano_file(tmp_path_factory):
    data = _synthetic_mano()
    path = tmp_path_factory.mktemp("mano") / "MANO_RIGHT.pkl"
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=2)
    return path, data


@pytest.fixture(scope="module")
def hand(mano_file):
    return ManoHand(mano_file[0])


@pytest.fixture(scope="module")
def reference(mano_file):
    return smplx.MANO(
        model_path=str(mano_file[0]), is_rhand=True, use_pca=False, flat_hand_mean=True,
        num_betas=S, dtype=torch.float64,
    )


def test_permutation_is_a_consistent_reordering():
    assert list(OURS_FROM_MANO) == EXPECTED
    assert sorted(OURS_FROM_MANO) == list(range(J))
    assert [OURS_FROM_MANO[m] for m in MANO_FROM_OURS] == list(range(J))
    mano_parents = KINTREE[0].astype(np.int64).tolist()
    mano_parents[0] = -1
    # MANO's tree, relabelled into our order, is ours
    assert [-1] + [MANO_FROM_OURS[mano_parents[m]] for m in OURS_FROM_MANO[1:]] == list(PARENTS)
    pose = torch.randn(3, 15, 3)
    assert torch.equal(mano_pose_to_ours(pose), pose[:, [m - 1 for m in EXPECTED[1:]]])
    assert torch.equal(ours_pose_to_mano(mano_pose_to_ours(pose)), pose)
    assert torch.equal(mano_pose_to_ours(ours_pose_to_mano(pose.reshape(3, 45))), pose)


def test_buffers(hand, mano_file):
    _, data = mano_file
    assert hand.name == "mano"
    assert hand.num_vertices == V and hand.num_betas == S
    assert torch.equal(hand.faces, torch.from_numpy(data["f"].astype(np.int64)))
    assert torch.allclose(hand.v_template, torch.from_numpy(data["v_template"]).float())
    w = torch.from_numpy(data["weights"]).float()
    assert torch.allclose(hand.weights, w[:, EXPECTED])
    assert torch.allclose(hand.weights.sum(1), torch.ones(V))
    assert torch.allclose(hand.shapedirs, torch.from_numpy(np.array(data["shapedirs"])).float())
    assert hand.tip_vertex_ids.tolist() == list(MANO_TIP_VERTEX_IDS)
    jr = torch.from_numpy(data["J_regressor"].toarray()).float()
    assert torch.allclose(hand.joint_regressor16(), jr[EXPECTED])
    assert torch.allclose(hand.keypoint_regressor.sum(1), torch.ones(21))
    tips = hand.keypoint_regressor[list(TIP_KEYPOINTS)]
    assert torch.equal(tips.argmax(1), torch.tensor(MANO_TIP_VERTEX_IDS))
    assert torch.equal((tips != 0).sum(1), torch.ones(5, dtype=torch.long))


def test_zero_pose_is_the_template(hand, mano_file):
    _, data = mano_file
    out = hand()
    template = torch.from_numpy(data["v_template"]).float()
    assert torch.allclose(out.vertices[0], template, atol=1e-6)
    jr = torch.from_numpy(data["J_regressor"].toarray()).float()
    joints_mano = jr @ template
    assert torch.allclose(out.joints[0, list(JOINT_TO_KEYPOINT)], joints_mano[EXPECTED],
                          atol=1e-6)
    assert torch.allclose(out.joints[0, list(TIP_KEYPOINTS)], template[list(MANO_TIP_VERTEX_IDS)])


def test_matches_smplx_mano(hand, reference):
    torch.manual_seed(0)
    b = 4
    global_orient = torch.randn(b, 3, dtype=torch.float64) * 0.8
    pose_mano = torch.randn(b, 15, 3, dtype=torch.float64) * 0.6
    betas = torch.randn(b, S, dtype=torch.float64)
    transl = torch.randn(b, 3, dtype=torch.float64) * 0.1
    ref = reference(betas=betas, global_orient=global_orient, hand_pose=pose_mano.reshape(b, 45),
                    transl=transl)
    pose_ours = pose_mano[:, [m - 1 for m in EXPECTED[1:]]]
    out = hand(global_orient.float(), pose_ours.float(), betas.float(), transl.float())
    assert torch.allclose(out.vertices.double(), ref.vertices, atol=2e-5)
    # smplx returns MANO's 16 joints in MANO's order (no tips)
    assert torch.allclose(out.joints[:, list(JOINT_TO_KEYPOINT)].double(),
                          ref.joints[:, EXPECTED], atol=2e-5)
    assert torch.allclose(out.joints[:, list(TIP_KEYPOINTS)].double(),
                          ref.vertices[:, list(MANO_TIP_VERTEX_IDS)], atol=2e-5)
    # a pose left in MANO's order must not match: the permutation matters
    wrong = hand(global_orient.float(), pose_mano.float(), betas.float(), transl.float())
    assert not torch.allclose(wrong.vertices.double(), ref.vertices, atol=1e-3)


def test_shapes_and_gradients(hand):
    b = 3
    hand_pose = (torch.randn(b, 15, 3) * 0.3).requires_grad_()
    betas = torch.randn(b, S).requires_grad_()
    out = hand(torch.zeros(b, 3), hand_pose, betas)
    assert out.vertices.shape == (b, V, 3)
    assert out.joints.shape == (b, 21, 3)
    assert out.full_pose.shape == (b, 16, 3)
    (out.vertices.square().sum() + out.joints.square().sum()).backward()
    assert hand_pose.grad is not None and hand_pose.grad.abs().sum() > 0
    assert betas.grad is not None and betas.grad.abs().sum() > 0
    assert torch.isfinite(hand_pose.grad).all() and torch.isfinite(betas.grad).all()


def test_joint_limits_build(hand):
    limits = hand.joint_limits
    assert limits.frames.shape == (16, 3, 3)
    assert torch.isfinite(limits.frames).all()
    assert limits.lower.shape == limits.upper.shape == (15, 3)
    pose = torch.randn(2, 15, 3) * 0.2
    assert torch.allclose(limits.from_anatomical(limits.to_anatomical(pose)), pose, atol=1e-5)


def test_load_hand_model(mano_file):
    path, _ = mano_file
    model = load_hand_model("mano", mano_path=path)
    assert isinstance(model, ManoHand)
    by_folder = load_hand_model("mano", mano_path=path.parent)
    assert torch.equal(by_folder.v_template, model.v_template)
    left = load_hand_model("mano", side="left", mano_path=path)
    assert left(hand_pose=torch.zeros(1, 15, 3)).vertices.shape == (1, V, 3)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="MANO"):
        ManoHand(tmp_path / "MANO_RIGHT.pkl")
    with pytest.raises(FileNotFoundError, match="MANO_RIGHT.pkl"):
        load_hand_model("mano", mano_path=tmp_path)


def test_left_file_is_refused(mano_file, tmp_path):
    left = tmp_path / "MANO_LEFT.pkl"
    left.write_bytes(mano_file[0].read_bytes())
    with pytest.raises(ValueError, match="side='left'"):
        ManoHand(left)

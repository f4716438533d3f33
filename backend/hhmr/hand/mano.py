"""A user's MANO right hand (MANO_RIGHT.pkl, not shipped), behind the shared `HandModel` API.

MANO's 16 joints come in its own order: 0 wrist, 1-3 index, 4-6 middle, 7-9 little (pinky),
10-12 ring, 13-15 thumb. Ours (`hhmr.hand.topology`) is 0 wrist, 1-3 thumb, 4-6 index,
7-9 middle, 10-12 ring, 13-15 little. `OURS_FROM_MANO[j]` is the MANO joint that is our joint
j, so MANO data indexed by joint is put into our order with ``data[..., OURS_FROM_MANO]`` and
ours back into MANO's with ``data[..., MANO_FROM_OURS]``; `mano_pose_to_ours` and
`ours_pose_to_mano` do this for the 15 finger joints of a hand pose.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

import torch

from hhmr.hand.base import HandModel
from hhmr.hand.topology import (
    JOINT_TO_KEYPOINT,
    NUM_JOINTS,
    NUM_KEYPOINTS,
    PARENTS,
    TIP_KEYPOINTS,
)

MANO_FILENAME = "MANO_RIGHT.pkl"

# Our joint j is MANO joint OURS_FROM_MANO[j]: wrist, thumb (13-15), index (1-3),
# middle (4-6), ring (10-12), little (7-9).
OURS_FROM_MANO: tuple[int, ...] = (0, 13, 14, 15, 1, 2, 3, 4, 5, 6, 10, 11, 12, 7, 8, 9)
# MANO joint m is our joint MANO_FROM_OURS[m] (the inverse permutation).
MANO_FROM_OURS: tuple[int, ...] = tuple(OURS_FROM_MANO.index(m) for m in range(NUM_JOINTS))

# MANO fingertip vertices (thumb, index, middle, ring, little), as manopth, FreiHAND and HaMeR
# use them (smplx's VERTEX_IDS['mano'] picks neighbours: 744, 320, 443, 554, 671).
MANO_TIP_VERTEX_IDS: tuple[int, ...] = (745, 317, 444, 556, 673)

# The parent of each MANO joint in MANO's order (its kintree_table's first row).
MANO_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)

# Finger joints only (no wrist): index into a [.., 15, 3] hand pose.
_POSE_OURS_FROM_MANO = [m - 1 for m in OURS_FROM_MANO[1:]]
_POSE_MANO_FROM_OURS = [j - 1 for j in MANO_FROM_OURS[1:]]


def mano_pose_to_ours(hand_pose: torch.Tensor) -> torch.Tensor:
    """MANO-order hand pose [B, 15, 3] (or [B, 45]) -> our joint order [B, 15, 3]."""
    return hand_pose.reshape(hand_pose.shape[0], 15, 3)[:, _POSE_OURS_FROM_MANO]


def ours_pose_to_mano(hand_pose: torch.Tensor) -> torch.Tensor:
    """Our-order hand pose [B, 15, 3] (or [B, 45]) -> MANO's joint order [B, 15, 3]."""
    return hand_pose.reshape(hand_pose.shape[0], 15, 3)[:, _POSE_MANO_FROM_OURS]


def _resolve_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / MANO_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"MANO model file {path} not found: download MANO (https://mano.is.tue.mpg.de, "
            f"licence required) and pass the path to {MANO_FILENAME} or to its folder"
        )
    if "LEFT" in path.name.upper():
        raise ValueError(
            f"{path.name} looks like MANO's left hand: load {MANO_FILENAME} and ask for "
            "side='left' (the right hand is mirrored)"
        )
    return path


def _import_smplx():
    try:
        import chumpy  # noqa: F401  (MANO's pkl stores shapedirs as a chumpy array)
        import smplx
    except ImportError as exc:
        raise ImportError(
            "the MANO hand needs smplx and chumpy: install them with "
            '`pip install -e ".[mano]"` (or `pip install smplx==0.1.28 chumpy-fixed==0.71`)'
        ) from exc
    return smplx


class ManoHand(HandModel):
    """MANO right hand read from the user's MANO_RIGHT.pkl (through smplx).

    `path` is the pkl or the folder holding it. The model is converted to the shared
    interface: joints reordered from MANO's order to ours (`OURS_FROM_MANO`), the keypoint
    regressor holds MANO's joint regressor at the kinematic keypoints and one-hot rows for
    the fingertip vertices `tip_vertex_ids` (thumb, index, middle, ring, little).

    Differences from MANO proper:

    - MANO's pose-corrective blend shapes (posedirs) are dropped: the shared interface is
      plain linear blend skinning, so posed vertices differ slightly from MANO's own output
      (the template, shape space, skinning weights and joints are MANO's).
    - Poses are full axis-angle with flat-hand-mean semantics: a zero pose is the flat
      template; MANO's `hands_mean` and its PCA pose space are not used.
    - `hand_pose` is in our joint order; convert MANO-order poses with `mano_pose_to_ours`.
    """

    name = "mano"

    def __init__(
        self,
        path: str | Path,
        tip_vertex_ids: Sequence[int] = MANO_TIP_VERTEX_IDS,
        num_betas: int = 10,
    ) -> None:
        path = _resolve_path(path)
        smplx = _import_smplx()
        # smplx prints a warning for MANO's 10 shape coefficients; keep stdout clean.
        with contextlib.redirect_stdout(io.StringIO()):
            mano = smplx.MANO(
                model_path=str(path),
                is_rhand=True,
                use_pca=False,
                flat_hand_mean=True,
                num_betas=num_betas,
                dtype=torch.float64,
            )
        parents = [int(p) for p in mano.parents]
        if len(parents) != NUM_JOINTS or parents[1:] != list(MANO_PARENTS[1:]):
            raise ValueError(f"{path} does not have MANO's 16-joint kinematic tree")
        # Sanity: MANO's tree, reordered, is ours.
        assert [-1] + [MANO_FROM_OURS[parents[m]] for m in OURS_FROM_MANO[1:]] == list(PARENTS)

        v_template = mano.v_template.detach()
        v = v_template.shape[0]
        tips = torch.as_tensor(list(tip_vertex_ids), dtype=torch.long)
        if tips.shape != (5,) or int(tips.min()) < 0 or int(tips.max()) >= v:
            raise ValueError(f"tip_vertex_ids must be 5 vertex indices below {v}")

        order = list(OURS_FROM_MANO)
        weights = mano.lbs_weights.detach()[:, order]
        regressor = torch.zeros(NUM_KEYPOINTS, v, dtype=v_template.dtype)
        regressor[list(JOINT_TO_KEYPOINT)] = mano.J_regressor.detach()[order]
        regressor[list(TIP_KEYPOINTS), tips] = 1.0
        super().__init__(
            v_template=v_template,
            faces=mano.faces_tensor.detach(),
            weights=weights,
            shapedirs=mano.shapedirs.detach(),
            keypoint_regressor=regressor,
            tip_vertex_ids=tips,
        )
        self.model_path = path

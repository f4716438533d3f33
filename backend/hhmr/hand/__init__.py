"""Hand models: one interface (`HandModel`) for the open default hand and a user's MANO."""

from __future__ import annotations

from pathlib import Path

from hhmr.hand.base import HandModel, HandOutput
from hhmr.hand.limits import JointLimits
from hhmr.hand.mirror import MirroredHand, mirror_axis_angle, mirror_faces, mirror_points
from hhmr.hand.open_hand import OpenHand
from hhmr.hand.topology import FINGERS, JOINT_NAMES, KEYPOINT_NAMES, KEYPOINT_PARENTS, PARENTS


def load_hand_model(
    name: str = "open", side: str = "right", mano_path: str | Path | None = None
) -> HandModel | MirroredHand:
    """Load a hand model: `name` 'open' (default, embedded) or 'mano' (needs `mano_path`,
    a MANO_RIGHT.pkl, and the `mano` extra). `side` 'left' mirrors it."""
    if name == "open":
        model: HandModel = OpenHand()
    elif name == "mano":
        if mano_path is None:
            raise ValueError("the MANO hand needs mano_path=/path/to/MANO_RIGHT.pkl")
        from hhmr.hand.mano import ManoHand

        model = ManoHand(mano_path)
    else:
        raise ValueError(f"unknown hand model {name!r}: use 'open' or 'mano'")
    if side == "right":
        return model
    if side == "left":
        return MirroredHand(model)
    raise ValueError(f"side must be 'right' or 'left', got {side!r}")


__all__ = [
    "FINGERS",
    "JOINT_NAMES",
    "KEYPOINT_NAMES",
    "KEYPOINT_PARENTS",
    "PARENTS",
    "HandModel",
    "HandOutput",
    "JointLimits",
    "MirroredHand",
    "OpenHand",
    "load_hand_model",
    "mirror_axis_angle",
    "mirror_faces",
    "mirror_points",
]

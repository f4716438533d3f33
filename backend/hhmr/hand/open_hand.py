"""The embedded default hand: the CC0 MakeHuman hand, shipped as weights/hands/*.npz."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from hhmr.hand.base import HandModel
from hhmr.paths import weights_dir

ASSET = "hands/open_hand_right.npz"


class OpenHand(HandModel):
    """Open right hand from `tools/build_hand_model.py` (see docs/hand_model.md)."""

    name = "open_hand"

    def __init__(self, path: str | Path | None = None) -> None:
        path = Path(path) if path is not None else weights_dir() / ASSET
        if not path.exists():
            raise FileNotFoundError(
                f"hand asset {path} is missing: reinstall HHMR, set HHMR_WEIGHTS to the folder "
                "holding hands/open_hand_right.npz, or rebuild it with tools/build_hand_model.py"
            )
        with np.load(path) as z:
            super().__init__(
                v_template=torch.from_numpy(z["v_template"]),
                faces=torch.from_numpy(z["faces"].astype(np.int64)),
                weights=torch.from_numpy(z["weights"]),
                shapedirs=torch.from_numpy(z["shapedirs"]),
                keypoint_regressor=torch.from_numpy(z["keypoint_regressor"]),
                tip_vertex_ids=torch.from_numpy(z["tip_vertex_ids"].astype(np.int64)),
                shape_names=tuple(str(s) for s in z["shape_names"]),
            )
            self.meta = json.loads(str(z["meta"]))
        self.asset_path = path

    @property
    def hierarchy_path(self) -> Path:
        return self.asset_path.with_name(self.asset_path.stem + "_hierarchy.npz")

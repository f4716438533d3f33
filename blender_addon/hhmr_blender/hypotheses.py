"""Hypotheses as shape keys, planned without bpy: names, order, checks, which one shows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PREFIX = "hyp_"


def names(n: int) -> list[str]:
    """``hyp_00``, ``hyp_01``, ... (three digits from 100 on)."""
    width = max(2, len(str(n - 1)))
    return [f"{PREFIX}{i:0{width}d}" for i in range(n)]


def central_index(scores: np.ndarray, central: Any) -> int | None:
    """The one hypothesis a backend's ``central`` mark (bool [n]) names; None for no mark or
    a malformed one."""
    c = np.asarray(central) if central is not None else None
    if c is None or c.dtype != bool or c.shape != np.shape(scores) or c.sum() != 1:
        return None
    return int(np.flatnonzero(c)[0])


def rank(scores: np.ndarray, central: Any = None) -> np.ndarray:
    """Indices in showing order: the central hypothesis (if marked) first, then the rest by
    score, highest first."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    first = central_index(scores, central)
    if first is not None:
        order = np.concatenate([[first], order[order != first]])
    return order


@dataclass
class HypothesisSet:
    """n meshes for one hand object, best first, in the object's local (rest) frame."""

    vertices: np.ndarray  # float32 [n, V, 3]
    joints: np.ndarray  # float32 [n, 21, 3]
    scores: np.ndarray  # float32 [n], descending after the central hypothesis (if any)
    op: str
    handedness: str = "right"
    location: np.ndarray | None = None  # where a new object goes (reconstruct), else None
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    central_first: bool = False  # the first is the sampler's central guess
    rig: Any = None  # handdata.RigPoses: the solved rig of each (None: posed meshes only)

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def ranked(cls, vertices: np.ndarray, joints: np.ndarray, scores: np.ndarray, op: str,
               central: Any = None, **kw: Any) -> HypothesisSet:
        """The backend's central hypothesis first (its best single guess), if it marked one,
        then the others by score, best (highest) first."""
        order = rank(scores, central)
        if kw.get("rig") is not None:
            kw["rig"] = kw["rig"].take(order)
        return cls(np.asarray(vertices, np.float32)[order],
                   np.asarray(joints, np.float32)[order],
                   np.asarray(scores, np.float32)[order], op, **kw,
                   central_first=central_index(scores, central) is not None)

    def check(self, num_vertices: int) -> None:
        """Raise ValueError unless these fit a mesh of ``num_vertices`` and are finite."""
        n = len(self)
        if n == 0:
            raise ValueError("the backend returned no hypotheses")
        if self.vertices.shape != (n, num_vertices, 3):
            raise ValueError(f"hypotheses have shape {list(self.vertices.shape)} but the mesh "
                             f"has {num_vertices} vertices: is it a hand of this backend?")
        if not (np.isfinite(self.vertices).all() and np.isfinite(self.scores).all()):
            raise ValueError("the backend returned non-finite hypotheses")


# what the backend's score (higher is better) measures, per op: (format of -score, meaning)
SCORE_UNITS = {
    "refit3d": ("{:.1f} mm", "mean distance of the hand's joints from the rig's"),
    "reconstruct": ("{:.1f} px", "mean distance of the hand's joints from the photo's keypoints"),
    "fit2d": ("{:.1f} px", "mean distance of the hand's joints from the keypoints"),
    "generate": ("{:.1%}", "stretch: mean change of the mesh's edge lengths from the rest hand"),
    "inpaint": ("{:.1%}", "stretch: mean change of the mesh's edge lengths from the rest hand"),
}


def score_text(op: str, score: float) -> str:
    """A hypothesis's score in the artist's units: its error (lower is better)."""
    fmt = SCORE_UNITS.get(op, ("{:.3g}", ""))[0]
    return fmt.format(-score)


def order_text(op: str, central_first: bool) -> str:
    """Why the list is in its order."""
    what = SCORE_UNITS.get(op, ("", "the backend's score"))[1].split(":")[0]
    best = f"the others by {what}, smallest first" if central_first else \
        f"by {what}, smallest first"
    return ("First: the sampler's central guess, its most accurate single answer; " + best) \
        if central_first else f"Sorted {best}"


TARGETS = ("AUTO", "NEW", "REPLACE")


def replaces(mode: str, op: str, held: Sequence[str]) -> bool:
    """Whether new results of ``op`` replace the hypotheses a hand holds (``held``: the op of
    each) rather than landing on a new hand: always for REPLACE, never for NEW; AUTO replaces
    only hypotheses of the same kind, so a photo fit is never swapped for a refit unasked."""
    if mode not in TARGETS:
        raise ValueError(f"unknown result target {mode!r}")
    if mode != "AUTO":
        return mode == "REPLACE"
    return all(h == op for h in held)


def values_to_show(key_names: Sequence[str], ours: Sequence[str], show: str | None
                   ) -> dict[str, float]:
    """New values of our hypothesis keys so that only ``show`` is on (user keys left out)."""
    return {k: (1.0 if k == show else 0.0) for k in key_names if k in ours}

"""Hypotheses as shape keys, planned without bpy: names, order, checks, the displayed mix."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PREFIX = "hyp_"
_NAME = re.compile(r"hyp_\d{2,}")


def names(n: int) -> list[str]:
    """``hyp_00``, ``hyp_01``, ... (three digits from 100 on)."""
    width = max(2, len(str(n - 1)))
    return [f"{PREFIX}{i:0{width}d}" for i in range(n)]


def is_hypothesis_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


@dataclass
class HypothesisSet:
    """n meshes for one hand object, best first, in the object's local (rest) frame."""

    vertices: np.ndarray  # float32 [n, V, 3]
    joints: np.ndarray  # float32 [n, 21, 3]
    scores: np.ndarray  # float32 [n], descending
    op: str
    handedness: str = "right"
    location: np.ndarray | None = None  # where a new object goes (reconstruct), else None
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def ranked(cls, vertices: np.ndarray, joints: np.ndarray, scores: np.ndarray, op: str,
               **kw: Any) -> HypothesisSet:
        """Sorted by score, best (highest) first."""
        order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
        return cls(np.asarray(vertices, np.float32)[order],
                   np.asarray(joints, np.float32)[order],
                   np.asarray(scores, np.float32)[order], op, **kw)

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


@dataclass(frozen=True)
class KeyState:
    """What the add-on needs to know of one shape key."""

    name: str
    co: np.ndarray  # [V, 3]
    value: float
    relative_to: int  # index of the key it is relative to
    mute: bool = False


def displayed(keys: Sequence[KeyState], basis_co: np.ndarray | None = None) -> np.ndarray:
    """The mesh as Blender shows it from relative shape keys: the reference key plus each
    unmuted key's value times its offset from the key it is relative to."""
    if not keys:
        if basis_co is None:
            raise ValueError("no shape keys and no basis")
        return np.asarray(basis_co, np.float32)
    out = np.asarray(keys[0].co, np.float64).copy()
    for k in keys[1:]:
        if k.mute or k.value == 0.0:
            continue
        out += k.value * (np.asarray(k.co, np.float64) - keys[k.relative_to].co)
    return out.astype(np.float32)


def values_to_show(key_names: Sequence[str], ours: Sequence[str], show: str | None
                   ) -> dict[str, float]:
    """New values of our hypothesis keys so that only ``show`` is on (user keys left out)."""
    return {k: (1.0 if k == show else 0.0) for k in key_names if k in ours}

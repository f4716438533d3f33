"""Joint convention of a photo set, cross-fitted (docs/photos.md, "Whose joints").

Datasets place a joint where their annotators put it; ours are the open hand's. Real
annotations put the finger MCPs 13.6-18 mm nearer the wrist than our model does
(`research/joint_convention.py`), a difference PA-MPJPE keeps counting however well the pose
is found. So `hhmr evaluate` also reports each mode after moving every predicted joint by a
constant offset in its own bone's frame, fitted on the other folds of the same set and never
on the sample it moves. The folds are runs of consecutive photos: the dev photos are frames of
sequences, and interleaved folds let a photo's neighbouring frames fit its offsets
(`research/fold_leakage.py`). The offsets also take up any error a mode makes the same way on
every photo: a bound on what agreeing joint definitions could give, not a product figure.
Nothing here is used outside evaluation.
"""

from __future__ import annotations

import numpy as np

from hhmr.hand import KEYPOINT_PARENTS

FOLDS = 5
MIN_SAMPLES = 20  # fewer found photos: no convention figures
_PARENTS = np.array(KEYPOINT_PARENTS[1:])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def bone_frames(joints: np.ndarray) -> tuple[np.ndarray, float]:
    """Each joint's right-handed frame [21, 3 axes, 3] of a right hand's joints [21, 3]:
    along its bone (the wrist's: towards the middle MCP), across the palm (from the little
    finger's MCP to the index's, off the bone: the axis fingers flex about, so it stays put
    in a fist) and their cross product; and the hand's scale (wrist to middle MCP)."""
    along = np.empty((21, 3))
    along[0] = _unit(joints[9] - joints[0])
    along[1:] = _unit(joints[1:] - joints[_PARENTS])
    lateral = joints[5] - joints[17]
    across = _unit(lateral[None] - (along @ lateral)[:, None] * along)
    return np.stack([along, across, np.cross(along, across)], 1), max(
        float(np.linalg.norm(joints[9] - joints[0])), 1e-9)


def _right(joints: np.ndarray, left: bool) -> np.ndarray:
    return joints * np.array([-1.0, 1.0, 1.0]) if left else joints


def fit_offsets(preds: list[np.ndarray], truths: list[np.ndarray], left: list[bool],
                mask: np.ndarray | None = None) -> np.ndarray:
    """The mean offset [21, 3] from each predicted joint to the truth's, both wrist-aligned
    (so the wrist's is 0), in the prediction's bone frames and hand scales, left hands
    mirrored to right; `mask` [21, 3] keeps only some of its components."""
    out = []
    for p, t, lf in zip(preds, truths, left, strict=True):
        p, t = _right(p, lf), _right(t, lf)
        frames, scale = bone_frames(p)
        out.append(np.einsum("jab,jb->ja", frames, t - t[0] + p[0] - p) / scale)
    offsets = np.mean(out, 0)
    return offsets if mask is None else offsets * mask


def shift(pred: np.ndarray, offsets: np.ndarray, left: bool) -> np.ndarray:
    """The prediction [21, 3] with each joint moved by its offset (`fit_offsets`)."""
    p = _right(pred, left)
    frames, scale = bone_frames(p)
    return _right(p + scale * np.einsum("jab,ja->jb", frames, offsets), left)


def cross_fitted(preds: list[np.ndarray], truths: list[np.ndarray], left: list[bool],
                 folds: int = FOLDS, mask: np.ndarray | None = None,
                 fold: list[int] | None = None) -> list[np.ndarray] | None:
    """Every prediction shifted by the offsets fitted on the other folds, each fold a run of
    consecutive samples (sample i of n is in fold i * folds // n; `fold`: each sample's fold
    instead, for research/fold_leakage.py); None with fewer than MIN_SAMPLES."""
    if not len(preds) == len(truths) == len(left):
        raise ValueError("one truth and one side per prediction")
    if len(preds) < max(MIN_SAMPLES, folds):
        return None
    n = len(preds)
    fold = [i * folds // n for i in range(n)] if fold is None else list(fold)
    if len(fold) != n:
        raise ValueError("one fold per prediction")
    out: list[np.ndarray] = [np.empty(0)] * n
    for f in sorted(set(fold)):
        train = [i for i in range(n) if fold[i] != f]
        offsets = fit_offsets([preds[i] for i in train], [truths[i] for i in train],
                              [left[i] for i in train], mask)
        for i in range(n):
            if fold[i] == f:
                out[i] = shift(preds[i], offsets, left[i])
    return out

"""Accuracy and diversity metrics, in millimetres (inputs in metres).

All take batched tensors [..., N, 3]. PA variants align the prediction to the target with the
best similarity transform first (Procrustes). Multi-hypothesis results have a hypothesis axis
[B, H, N, 3]: `min_of_n` keeps the best hypothesis per sample, `apd` measures their spread.
"""

from __future__ import annotations

import numpy as np
import torch

from hhmr.hand.topology import KEYPOINT_NAMES
from hhmr.mesh.geometry import procrustes_align
from hhmr.mesh.intersection import self_intersection_fraction

MM = 1000.0

MIDDLE_MCP = KEYPOINT_NAMES.index("middle_mcp")


def mean_per_point_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance per sample [...] in mm."""
    return (pred - target).norm(dim=-1).mean(-1) * MM


def mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-joint position error [...] (mm), no alignment."""
    return mean_per_point_error(pred, target)


def pa_mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MPJPE after Procrustes alignment (rotation, translation, scale)."""
    return mean_per_point_error(procrustes_align(pred, target), target)


mpvpe = mpjpe  # the same formula over vertices
pa_mpvpe = pa_mpjpe


def root_relative_mpjpe(pred: torch.Tensor, target: torch.Tensor, root: int = 0
                        ) -> torch.Tensor:
    """MPJPE after subtracting each set's root joint (wrist)."""
    return mpjpe(pred - pred[..., root:root + 1, :], target - target[..., root:root + 1, :])


def f_score(pred: torch.Tensor, target: torch.Tensor, threshold_mm: float,
            align: bool = True) -> torch.Tensor:
    """F-score [...] at a distance threshold between two point sets (FreiHAND style:
    precision = share of predicted points within the threshold of the target set, recall
    the converse; Procrustes-aligned first unless `align` is False)."""
    if align:
        pred = procrustes_align(pred, target)
    d = torch.cdist(pred, target) * MM
    precision = (d.min(-1).values <= threshold_mm).float().mean(-1)
    recall = (d.min(-2).values <= threshold_mm).float().mean(-1)
    return torch.where(precision + recall > 0,
                       2 * precision * recall / (precision + recall).clamp_min(1e-12),
                       torch.zeros_like(precision))


def min_of_n(metric, pred: torch.Tensor, target: torch.Tensor, **kw) -> torch.Tensor:
    """Best (lowest) value of `metric` over hypotheses: pred [B, H, N, 3], target [B, N, 3]."""
    values = metric(pred, target[:, None].expand_as(pred), **kw)
    return values.min(dim=1).values


def palm_lengths(keypoints: torch.Tensor) -> torch.Tensor:
    """Hand size: wrist to middle MCP of keypoints [..., 21, 3] -> [...], in their units."""
    return (keypoints[..., MIDDLE_MCP, :] - keypoints[..., 0, :]).norm(dim=-1)


def apd(hypotheses: torch.Tensor) -> torch.Tensor:
    """Average pairwise distance [B] (mm) between H >= 2 hypotheses [B, H, N, 3]: the mean
    over ordered pairs i != j of the mean point distance."""
    h = hypotheses.shape[1]
    if h < 2:
        raise ValueError("APD needs at least two hypotheses")
    diff = (hypotheses[:, :, None] - hypotheses[:, None]).norm(dim=-1).mean(-1)  # [B, H, H]
    return diff.sum((1, 2)) / (h * (h - 1)) * MM


def nearest_distance(meshes: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Distance [A] (mm) from each mesh [A, N, 3] to its nearest in `reference` [R, N, 3],
    by mean point distance: averaged over generated hands against real ones it is their
    fidelity, over real hands against generated ones the coverage (both lower is better)."""
    chunk = max(1, 2 ** 24 // reference[0].numel() // len(reference))  # 64 MB of floats
    out = [(meshes[i:i + chunk, None] - reference[None]).norm(dim=-1).mean(-1).min(1).values
           for i in range(0, len(meshes), chunk)]
    return torch.cat(out) * MM


def self_intersection_pct(vertices: torch.Tensor, faces: torch.Tensor | np.ndarray
                          ) -> torch.Tensor:
    """Per-mesh percentage of faces that intersect a non-adjacent face; vertices [B, V, 3]."""
    v = vertices.detach().cpu().numpy().reshape(-1, *vertices.shape[-2:])
    f = faces.cpu().numpy() if isinstance(faces, torch.Tensor) else np.asarray(faces)
    pct = [100.0 * self_intersection_fraction(x, f) for x in v]
    return torch.tensor(pct).reshape(vertices.shape[:-2])

"""Self-intersection test: the fraction of faces that cross a non-adjacent face."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

LARGE_FACE_QUANTILE = 0.98  # faces above this radius quantile are paired with every face


def _candidate_pairs(tri: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face pairs whose bounding boxes overlap and that share no vertex. Two triangles that
    meet have centroids at most the sum of their circumscribing radii apart: pairs of
    ordinary faces come from a k-d tree query at twice the largest ordinary radius, and the
    few large faces are paired with every face."""
    finite = np.isfinite(tri).all((1, 2))
    if not finite.all():  # a non-finite face meets nothing; test the others
        idx = np.flatnonzero(finite)
        i, j = _candidate_pairs(tri[idx], faces[idx])
        return idx[i], idx[j]
    if len(tri) < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    centre = tri.mean(1)
    radius = np.linalg.norm(tri - centre[:, None], axis=-1).max(1)
    limit = float(np.quantile(radius, LARGE_FACE_QUANTILE))
    large = radius > limit
    small, big = np.flatnonzero(~large), np.flatnonzero(large)
    pairs = small[cKDTree(centre[small]).query_pairs(2.0 * limit + 1e-12,
                                                     output_type="ndarray")]
    bi, bj = np.triu_indices(len(big), k=1)
    i = np.concatenate([pairs[:, 0], np.repeat(big, len(small)), big[bi]]).astype(np.int64)
    j = np.concatenate([pairs[:, 1], np.tile(small, len(big)), big[bj]]).astype(np.int64)
    i, j = np.minimum(i, j), np.maximum(i, j)
    lo, hi = tri.min(1), tri.max(1)
    keep = np.all((lo[i] <= hi[j]) & (lo[j] <= hi[i]), axis=1)
    i, j = i[keep], j[keep]
    shared = (faces[i][:, :, None] == faces[j][:, None, :]).any((1, 2))
    return i[~shared], j[~shared]


def _segment_hits_triangle(p0, p1, a, b, c, eps=1e-12) -> np.ndarray:
    """Whether segments p0-p1 cross triangles abc (rowwise, Moller-Trumbore)."""
    d = p1 - p0
    e1, e2 = b - a, c - a
    h = np.cross(d, e2)
    det = (e1 * h).sum(1)
    ok = np.abs(det) > eps
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = p0 - a
    u = (s * h).sum(1) * inv
    q = np.cross(s, e1)
    v = (d * q).sum(1) * inv
    t = (e2 * q).sum(1) * inv
    return ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t >= 0) & (t <= 1)


def _triangles_intersect(t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """Rowwise triangle-triangle intersection via edge-triangle crossings (both ways)."""
    hit = np.zeros(len(t1), dtype=bool)
    for src, dst in ((t1, t2), (t2, t1)):
        for k in range(3):
            hit |= _segment_hits_triangle(src[:, k], src[:, (k + 1) % 3],
                                          dst[:, 0], dst[:, 1], dst[:, 2])
    return hit


def self_intersecting_pairs(vertices: np.ndarray | torch.Tensor, faces: np.ndarray
                            | torch.Tensor) -> np.ndarray:
    """Face index pairs [P, 2] (i < j) that intersect and share no vertex."""
    v = np.asarray(vertices.detach().cpu() if isinstance(vertices, torch.Tensor) else vertices,
                   dtype=np.float64)
    f = np.asarray(faces.cpu() if isinstance(faces, torch.Tensor) else faces, dtype=np.int64)
    tri = v[f]
    i, j = _candidate_pairs(tri, f)
    hit = _triangles_intersect(tri[i], tri[j]) if len(i) else np.zeros(0, dtype=bool)
    return np.stack([i[hit], j[hit]], 1)


def self_intersecting_faces(vertices: np.ndarray | torch.Tensor, faces: np.ndarray
                            | torch.Tensor) -> np.ndarray:
    """Boolean mask [F]: faces that intersect at least one face they share no vertex with."""
    mask = np.zeros(len(faces), dtype=bool)
    mask[self_intersecting_pairs(vertices, faces).ravel()] = True
    return mask


def self_intersection_fraction(vertices, faces) -> float:
    """Fraction of faces in [0, 1] that intersect a non-adjacent face."""
    return float(self_intersecting_faces(vertices, faces).mean())

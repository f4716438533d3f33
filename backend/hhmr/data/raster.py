"""A vectorised z-buffer rasteriser in numpy: which triangle covers each pixel, and where.

Every triangle's bounding box is enumerated at once (no Python loop over faces), the pixels
inside are kept, and the nearest triangle per pixel wins. Shading is left to the caller
(`hhmr.data.renders`), which interpolates what it needs with the barycentric weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Fragments:
    face: np.ndarray  # [H, W] int, index of the covering triangle, -1 for none
    bary: np.ndarray  # [H, W, 3] barycentric weights in that triangle (screen space)
    depth: np.ndarray  # [H, W] camera z of the surface, inf for none


def project_points(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame points [N, 3] (z forward, y down) to pixels [N, 2] with intrinsics K."""
    p = points @ np.asarray(K, np.float64).T
    return p[:, :2] / np.maximum(p[:, 2:], 1e-9)


def rasterize(points: np.ndarray, faces: np.ndarray, K: np.ndarray, height: int, width: int,
              near: float = 1e-3) -> Fragments:
    """Rasterise camera-frame triangles; pixel (x, y) samples the point (x + 0.5, y + 0.5).
    Triangles with a vertex behind `near` are skipped."""
    pts = np.asarray(points, np.float64)
    f = np.asarray(faces, np.int64)
    uv = project_points(pts, K)
    tri, z = uv[f], pts[f][..., 2]  # [F, 3, 2], [F, 3]
    lo = np.floor(tri.min(1) - 0.5).astype(np.int64) + 1
    hi = np.floor(tri.max(1) - 0.5).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [width - 1, height - 1])
    d = (tri[:, 1, 1] - tri[:, 2, 1]) * (tri[:, 0, 0] - tri[:, 2, 0]) + \
        (tri[:, 2, 0] - tri[:, 1, 0]) * (tri[:, 0, 1] - tri[:, 2, 1])
    ok = (z.min(1) > near) & (np.abs(d) > 1e-12) & np.all(hi >= lo, axis=1)
    idx = np.nonzero(ok)[0]
    nx, ny = hi[idx, 0] - lo[idx, 0] + 1, hi[idx, 1] - lo[idx, 1] + 1
    counts = nx * ny
    face = np.full((height, width), -1, np.int64)
    bary = np.zeros((height, width, 3))
    depth = np.full((height, width), np.inf)
    if counts.sum() == 0:
        return Fragments(face, bary, depth)
    fid = np.repeat(idx, counts)
    # position of each candidate inside its face's box
    start = np.repeat(np.cumsum(counts) - counts, counts)
    k = np.arange(counts.sum()) - start
    w_box = np.repeat(nx, counts)
    px = lo[fid, 0] + k % w_box
    py = lo[fid, 1] + k // w_box
    sx, sy = px + 0.5, py + 0.5
    t = tri[fid]
    dd = d[fid]
    b0 = ((t[:, 1, 1] - t[:, 2, 1]) * (sx - t[:, 2, 0]) +
          (t[:, 2, 0] - t[:, 1, 0]) * (sy - t[:, 2, 1])) / dd
    b1 = ((t[:, 2, 1] - t[:, 0, 1]) * (sx - t[:, 2, 0]) +
          (t[:, 0, 0] - t[:, 2, 0]) * (sy - t[:, 2, 1])) / dd
    b2 = 1 - b0 - b1
    inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0)
    fid, px, py = fid[inside], px[inside], py[inside]
    b = np.stack([b0[inside], b1[inside], b2[inside]], 1)
    # perspective-correct depth: 1/z interpolates linearly in screen space
    zf = 1.0 / (b / z[fid]).sum(1)
    pix = py * width + px
    order = np.lexsort((zf, pix))  # by pixel, nearest first
    pix, first = np.unique(pix[order], return_index=True)
    win = order[first]
    face.reshape(-1)[pix] = fid[win]
    bary.reshape(-1, 3)[pix] = b[win]
    depth.reshape(-1)[pix] = zf[win]
    return Fragments(face, bary, depth)

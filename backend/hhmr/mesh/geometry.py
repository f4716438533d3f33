"""Geometry helpers: normals, edges, boundaries, Procrustes, closest points on a mesh."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from scipy.spatial import cKDTree


def face_normals(vertices: torch.Tensor, faces: torch.Tensor, unit: bool = True) -> torch.Tensor:
    """Face normals [..., F, 3] of vertices [..., V, 3] (area-weighted when not unit)."""
    a, b, c = (vertices[..., faces[:, k], :] for k in range(3))
    n = torch.linalg.cross(b - a, c - a, dim=-1)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12) if unit else n


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit vertex normals [..., V, 3]: area-weighted mean of incident face normals."""
    fn = face_normals(vertices, faces, unit=False)
    vn = torch.zeros_like(vertices)
    for k in range(3):
        vn = vn.index_add(-2, faces[:, k], fn)
    return vn / vn.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def unique_edges(faces: np.ndarray | torch.Tensor) -> np.ndarray:
    """Undirected edges [E, 2] (sorted pairs) of a triangle mesh."""
    f = np.asarray(faces)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def edge_lengths(vertices: torch.Tensor, edges: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Lengths [..., E] of edges [E, 2]."""
    e = torch.as_tensor(np.asarray(edges), device=vertices.device, dtype=torch.long)
    return (vertices[..., e[:, 0], :] - vertices[..., e[:, 1], :]).norm(dim=-1)


def boundary_edges(faces: np.ndarray) -> np.ndarray:
    """Directed edges used by exactly one face [B, 2]."""
    f = np.asarray(faces)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    key = np.sort(e, axis=1)
    _, inv, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    return e[counts[inv.ravel()] == 1]


def boundary_loops(faces: np.ndarray) -> list[list[int]]:
    """Closed boundary loops (vertex index lists) of a triangle mesh."""
    nxt: dict[int, list[int]] = defaultdict(list)
    for a, b in boundary_edges(faces):
        nxt[int(a)].append(int(b))
    loops, seen = [], set()
    for start in list(nxt):
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            if not nxt[v]:
                break
            v = nxt[v][0]
        loops.append(loop)
    return loops


def kabsch(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotation R [..., 3, 3] (no reflection) that maximises tr(R^T cov) for cov = p^T t
    of point sets p, t [..., N, 3], so that p @ R ~ t; and cov's singular values with the
    reflection's sign [..., 3]."""
    u, s, vt = torch.linalg.svd(cov)
    d = torch.where(torch.linalg.det(u @ vt) < 0, -1.0, 1.0).to(s.dtype)
    ones = torch.ones_like(d)
    signs = torch.stack([ones, ones, d], dim=-1)
    return u @ (signs[..., None] * vt), s * signs


def procrustes_align(
    pred: torch.Tensor, target: torch.Tensor, scale: bool = True
) -> torch.Tensor:
    """Align pred [..., N, 3] to target with the best similarity (or rigid) transform."""
    mu_p, mu_t = pred.mean(-2, keepdim=True), target.mean(-2, keepdim=True)
    p, t = pred - mu_p, target - mu_t
    rot, s = kabsch(p.transpose(-1, -2) @ t)  # p @ rot ~ t
    ones = torch.ones(s.shape[:-1], dtype=s.dtype, device=s.device)
    k = s.sum(-1) / (p * p).sum((-1, -2)).clamp_min(1e-12) if scale else ones
    return k[..., None, None] * (p @ rot) + mu_t


def closest_point_on_triangles(
    p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
) -> np.ndarray:
    """Barycentric coordinates [N, 3] of the closest point to p on triangles (a, b, c), rowwise."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = p - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = p - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    out = np.zeros((len(p), 3))
    done = np.zeros(len(p), dtype=bool)

    def put(mask: np.ndarray, w: np.ndarray) -> None:
        m = mask & ~done
        out[m] = w[m]
        done[m] = True

    one, zero = np.ones(len(p)), np.zeros(len(p))
    put((d1 <= 0) & (d2 <= 0), np.stack([one, zero, zero], 1))
    put((d3 >= 0) & (d4 <= d3), np.stack([zero, one, zero], 1))
    put((d6 >= 0) & (d5 <= d6), np.stack([zero, zero, one], 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        v = d1 / (d1 - d3)
        put((vc <= 0) & (d1 >= 0) & (d3 <= 0), np.stack([1 - v, v, zero], 1))
        w = d2 / (d2 - d6)
        put((vb <= 0) & (d2 >= 0) & (d6 <= 0), np.stack([1 - w, zero, w], 1))
        w = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        put((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), np.stack([zero, 1 - w, w], 1))
        denom = 1.0 / (va + vb + vc)
        v, w = vb * denom, vc * denom
        put(np.ones(len(p), dtype=bool), np.stack([1 - v - w, v, w], 1))
    return out


def project_to_mesh(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, k: int = 12
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest points on a mesh: (face index [N], barycentrics [N, 3], distance [N]).

    Candidates are the faces around the k nearest vertices, enough for well-shaped meshes.
    """
    points, vertices, faces = (np.asarray(x) for x in (points, vertices, faces))
    vert_faces: list[list[int]] = [[] for _ in range(len(vertices))]
    for fi, tri in enumerate(faces):
        for v in tri:
            vert_faces[v].append(fi)
    _, nn = cKDTree(vertices).query(points, k=min(k, len(vertices)))
    best_f = np.zeros(len(points), dtype=np.int64)
    best_b = np.zeros((len(points), 3))
    best_d = np.full(len(points), np.inf)
    for i, p in enumerate(points):
        cand = np.unique([f for v in np.atleast_1d(nn[i]) for f in vert_faces[v]])
        tri = vertices[faces[cand]]
        bary = closest_point_on_triangles(np.repeat(p[None], len(cand), 0),
                                          tri[:, 0], tri[:, 1], tri[:, 2])
        q = (bary[:, :, None] * tri).sum(1)
        d = np.linalg.norm(q - p, axis=1)
        j = int(d.argmin())
        best_f[i], best_b[i], best_d[i] = cand[j], bary[j], d[j]
    return best_f, best_b, best_d


def barycentric_matrix(
    face_idx: np.ndarray, bary: np.ndarray, faces: np.ndarray, num_vertices: int
) -> np.ndarray:
    """Dense [N, V] interpolation matrix from per-point faces and barycentrics."""
    m = np.zeros((len(face_idx), num_vertices))
    rows = np.repeat(np.arange(len(face_idx)), 3)
    np.add.at(m, (rows, faces[face_idx].ravel()), bary.ravel())
    return m


def degenerate_faces(vertices: np.ndarray, faces: np.ndarray, min_area: float = 1e-10
                     ) -> np.ndarray:
    """Indices of faces with (near) zero area or repeated vertices."""
    v, f = np.asarray(vertices, dtype=np.float64), np.asarray(faces)
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    area = 0.5 * np.linalg.norm(n, axis=1)
    repeated = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2])
    return np.nonzero((area < min_area) | repeated)[0]


def inconsistent_edges(faces: np.ndarray) -> int:
    """Count of directed edges used twice in the same direction (flipped or non-manifold)."""
    f = np.asarray(faces)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    _, counts = np.unique(e, axis=0, return_counts=True)
    return int((counts > 1).sum())

"""Multi-resolution mesh hierarchy with down/upsampling operators and graph Laplacians.

Level 0 is the full mesh; each next level has about `factor` times fewer vertices, made by
quadric edge-collapse decimation (as COMA and MobRecon). Downsampling takes each coarse
vertex as a barycentric blend of the fine mesh at its closest point; upsampling takes each
fine vertex as a barycentric blend of the coarse mesh at its closest point. Graph
convolutions use each level's symmetric normalised Laplacian (Chebyshev) built from its edges.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import fast_simplification
import numpy as np
import torch

from hhmr.mesh.geometry import barycentric_matrix, project_to_mesh, unique_edges

FORMAT_VERSION = 1


@dataclass
class MeshHierarchy:
    """Per-level vertices/faces/edges and [coarse x fine] / [fine x coarse] operators."""

    vertices: list[np.ndarray]
    faces: list[np.ndarray]
    edges: list[np.ndarray]
    down: list[np.ndarray]  # down[i]: [V_{i+1}, V_i]
    up: list[np.ndarray]  # up[i]: [V_i, V_{i+1}]
    key: str

    @property
    def num_levels(self) -> int:
        return len(self.vertices)

    @property
    def sizes(self) -> list[int]:
        return [len(v) for v in self.vertices]

    def down_op(self, level: int) -> torch.Tensor:
        """Sparse [V_{level+1}, V_level] downsampling matrix."""
        return torch.from_numpy(self.down[level]).float().to_sparse()

    def up_op(self, level: int) -> torch.Tensor:
        """Sparse [V_level, V_{level+1}] upsampling matrix."""
        return torch.from_numpy(self.up[level]).float().to_sparse()

    def laplacian(self, level: int, scaled: bool = True) -> torch.Tensor:
        """Sparse normalised Laplacian I - D^-1/2 A D^-1/2 of a level.

        `scaled` returns L - I (eigenvalues in [-1, 1]), the Chebyshev input with lambda_max=2.
        """
        n, e = len(self.vertices[level]), torch.from_numpy(self.edges[level]).long()
        idx = torch.cat([e, e.flip(1)]).T
        deg = torch.zeros(n).index_add_(0, idx[0], torch.ones(idx.shape[1]))
        val = -1.0 / (deg[idx[0]] * deg[idx[1]]).sqrt()
        if not scaled:
            idx = torch.cat([idx, torch.arange(n).repeat(2, 1)], 1)
            val = torch.cat([val, torch.ones(n)])
        return torch.sparse_coo_tensor(idx, val, (n, n), check_invariants=True).coalesce()

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {"key": np.array(self.key),
                                         "version": np.array(FORMAT_VERSION)}
        for i in range(self.num_levels):
            arrays[f"vertices_{i}"] = self.vertices[i].astype(np.float32)
            arrays[f"faces_{i}"] = self.faces[i].astype(np.int32)
            arrays[f"edges_{i}"] = self.edges[i].astype(np.int32)
        for i in range(self.num_levels - 1):
            arrays[f"down_{i}"] = self.down[i].astype(np.float32)
            arrays[f"up_{i}"] = self.up[i].astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> MeshHierarchy:
        with np.load(path) as z:
            n = sum(1 for k in z.files if k.startswith("vertices_"))
            if int(z["version"]) != FORMAT_VERSION:
                raise ValueError(f"{path}: hierarchy format {int(z['version'])} is not supported")
            return cls(
                vertices=[z[f"vertices_{i}"] for i in range(n)],
                faces=[z[f"faces_{i}"].astype(np.int64) for i in range(n)],
                edges=[z[f"edges_{i}"].astype(np.int64) for i in range(n)],
                down=[z[f"down_{i}"] for i in range(n - 1)],
                up=[z[f"up_{i}"] for i in range(n - 1)],
                key=str(z["key"]),
            )


def topology_key(vertices: np.ndarray, faces: np.ndarray, factors: tuple[int, ...]) -> str:
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(vertices, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(faces, dtype=np.int64).tobytes())
    h.update(repr((factors, FORMAT_VERSION)).encode())
    return h.hexdigest()[:16]


def build_hierarchy(
    vertices: np.ndarray, faces: np.ndarray, factors: tuple[int, ...] = (4, 4, 4)
) -> MeshHierarchy:
    """Decimate level by level (quadric edge collapse) and build the operators."""
    verts = [np.asarray(vertices, dtype=np.float64)]
    fcs = [np.asarray(faces, dtype=np.int64)]
    down, up = [], []
    for factor in factors:
        v, f = verts[-1], fcs[-1]
        vc, fc = fast_simplification.simplify(
            v.astype(np.float32), f.astype(np.int32), target_reduction=1 - 1 / factor
        )
        vc, fc = vc.astype(np.float64), fc.astype(np.int64)
        fi, bary, _ = project_to_mesh(vc, v, f)
        down.append(barycentric_matrix(fi, bary, f, len(v)))
        fi, bary, _ = project_to_mesh(v, vc, fc)
        up.append(barycentric_matrix(fi, bary, fc, len(vc)))
        verts.append(vc)
        fcs.append(fc)
    return MeshHierarchy(
        vertices=verts,
        faces=fcs,
        edges=[unique_edges(f) for f in fcs],
        down=down,
        up=up,
        key=topology_key(vertices, faces, factors),
    )


def load_hierarchy(
    vertices: np.ndarray,
    faces: np.ndarray,
    cache_path: Path,
    factors: tuple[int, ...] = (4, 4, 4),
) -> MeshHierarchy:
    """The hierarchy for a mesh, from `cache_path` when it matches, else built and cached."""
    key = topology_key(vertices, faces, factors)
    if cache_path.exists():
        try:
            cached = MeshHierarchy.load(cache_path)
            if cached.key == key:
                return cached
        except (OSError, ValueError, KeyError):
            pass  # stale or unreadable cache: rebuild below
    hierarchy = build_hierarchy(vertices, faces, factors)
    try:
        hierarchy.save(cache_path)
    except OSError:
        pass  # a read-only install still works, only slower to start
    return hierarchy


def round_trip_errors_mm(hierarchy: MeshHierarchy, vertices: torch.Tensor) -> list[float]:
    """Mean distance (mm) between each level's vertices and their down-then-up copy."""
    errors, x = [], vertices.float()
    for level in range(hierarchy.num_levels - 1):
        coarse = torch.sparse.mm(hierarchy.down_op(level), x)
        back = torch.sparse.mm(hierarchy.up_op(level), coarse)
        errors.append(round(float((back - x).norm(dim=1).mean()) * 1000, 3))
        x = coarse
    return errors

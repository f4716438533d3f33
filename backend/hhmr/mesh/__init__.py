"""Mesh geometry, the multi-resolution hierarchy and self-intersection tests."""

from hhmr.mesh.geometry import (
    boundary_loops,
    edge_lengths,
    face_normals,
    procrustes_align,
    unique_edges,
    vertex_normals,
)
from hhmr.mesh.hierarchy import MeshHierarchy, build_hierarchy, load_hierarchy
from hhmr.mesh.intersection import (
    self_intersecting_faces,
    self_intersecting_pairs,
    self_intersection_fraction,
)

__all__ = [
    "MeshHierarchy",
    "boundary_loops",
    "build_hierarchy",
    "edge_lengths",
    "face_normals",
    "load_hierarchy",
    "procrustes_align",
    "self_intersecting_faces",
    "self_intersecting_pairs",
    "self_intersection_fraction",
    "unique_edges",
    "vertex_normals",
]

"""Geometry helpers, the mesh hierarchy and the self-intersection test."""

import numpy as np
import torch
from hhmr.hand.rotations import axis_angle_to_matrix
from hhmr.mesh import (
    build_hierarchy,
    edge_lengths,
    face_normals,
    intersection,
    load_hierarchy,
    procrustes_align,
    self_intersecting_faces,
    self_intersection_fraction,
    unique_edges,
    vertex_normals,
)
from hhmr.mesh.hierarchy import MeshHierarchy, round_trip_errors_mm


def _shipped_hierarchy(hand) -> MeshHierarchy:
    return MeshHierarchy.load(hand.hierarchy_path)


def test_shipped_hierarchy_matches_the_asset(hand, tmp_path):
    h = _shipped_hierarchy(hand)
    # the cache is keyed on the template: loading through the cache returns it unchanged
    copy = tmp_path / "h.npz"
    copy.write_bytes(hand.hierarchy_path.read_bytes())
    again = load_hierarchy(hand.v_template.numpy(), hand.faces.numpy(), copy)
    assert again.key == h.key
    assert h.num_levels >= 4
    assert h.sizes[0] == hand.num_vertices
    for fine, coarse in zip(h.sizes, h.sizes[1:], strict=False):
        assert 3.0 <= fine / coarse <= 5.0  # about 4x fewer vertices per level


def test_operators_are_interpolations(hand):
    h = _shipped_hierarchy(hand)
    for i in range(h.num_levels - 1):
        for op in (h.down[i], h.up[i]):
            assert (op >= -1e-6).all()
            assert np.allclose(op.sum(1), 1.0, atol=1e-5)
            assert ((op > 0).sum(1) <= 3).all()
        assert h.down[i].shape == (h.sizes[i + 1], h.sizes[i])
        assert h.up[i].shape == (h.sizes[i], h.sizes[i + 1])


def test_round_trip_stays_close(hand):
    """Down then up reproduces the mesh within a fraction of the hand's size."""
    errs = round_trip_errors_mm(_shipped_hierarchy(hand), hand.v_template)
    # mm; the hand is 180 mm long and the coarsest level has only ~14 vertices
    assert errs[0] < 1.5 and errs[1] < 4.0 and errs[2] < 20.0


def test_laplacians(hand):
    h = _shipped_hierarchy(hand)
    for level in range(h.num_levels):
        lap = h.laplacian(level, scaled=False).to_dense()
        assert torch.allclose(lap, lap.T, atol=1e-6)
        ev = torch.linalg.eigvalsh(lap)
        assert ev.min() > -1e-5 and ev.max() < 2 + 1e-5  # normalised Laplacian spectrum
        scaled = h.laplacian(level).to_dense()
        assert torch.allclose(scaled, lap - torch.eye(len(lap)), atol=1e-6)


def test_build_hierarchy_and_cache(tmp_path):
    # a small closed mesh: a subdivided octahedron sphere
    v, f = _sphere(3)
    h = build_hierarchy(v, f, factors=(4, 4))
    assert h.sizes[0] == len(v) and h.num_levels == 3
    path = tmp_path / "cache.npz"
    first = load_hierarchy(v, f, path, factors=(4, 4))
    assert path.exists()
    second = load_hierarchy(v, f, path, factors=(4, 4))
    assert first.key == second.key and np.allclose(first.up[0], second.up[0])
    moved = load_hierarchy(v * 2, f, path, factors=(4, 4))  # different mesh: rebuilt
    assert moved.key != first.key


def _sphere(subdiv: int) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5],
                  [0, 3, 5]])
    for _ in range(subdiv):
        v, f = _subdivide(v, f)
    return v, f


def _subdivide(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split each triangle in four, pushing new vertices onto the unit sphere."""
    verts, cache, faces = list(v), {}, []

    def mid(a: int, b: int) -> int:
        key = (min(a, b), max(a, b))
        if key not in cache:
            p = (verts[a] + verts[b]) / 2
            verts.append(p / np.linalg.norm(p))
            cache[key] = len(verts) - 1
        return cache[key]

    for a, b, c in f:
        ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
        faces += [[a, ab, ca], [ab, b, bc], [ca, bc, c], [ab, bc, ca]]
    return np.array(verts), np.array(faces)


def test_normals_point_outwards_on_a_sphere():
    v, f = _sphere(3)
    vt, ft = torch.tensor(v), torch.tensor(f)
    vn = vertex_normals(vt, ft)
    err = (vn - vt / vt.norm(dim=1, keepdim=True)).norm(dim=1)
    assert err.max() < 0.1 and err.mean() < 0.04
    fn = face_normals(vt, ft)
    assert ((fn * vt[ft].mean(1)).sum(1) > 0).all()


def test_edge_lengths():
    v = torch.tensor([[0.0, 0, 0], [3, 0, 0], [0, 4, 0]])
    f = np.array([[0, 1, 2]])
    e = unique_edges(f)
    assert sorted(edge_lengths(v, e).tolist()) == [3.0, 4.0, 5.0]


def test_procrustes_recovers_a_similarity(gen):
    x = torch.randn(2, 50, 3, generator=gen, dtype=torch.float64)
    r = axis_angle_to_matrix(torch.tensor([0.4, -1.1, 2.0], dtype=torch.float64))
    y = 1.7 * x @ r.T + torch.tensor([0.1, 2.0, -3.0], dtype=torch.float64)
    assert torch.allclose(procrustes_align(x, y), y, atol=1e-9)
    rigid = procrustes_align(x, y, scale=False)
    assert not torch.allclose(rigid, y, atol=1e-3)  # a scale change cannot be undone rigidly
    # reflections are not allowed
    mirrored = x * torch.tensor([-1.0, 1, 1], dtype=torch.float64)
    assert not torch.allclose(procrustes_align(mirrored, x), x, atol=1e-3)


def test_self_intersection_of_crossing_triangles():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0],  # triangle in z = 0
                  [0.2, 0.2, -0.5], [0.2, 0.2, 0.5], [0.8, 0.8, 0.0]], float)  # pierces it
    f = np.array([[0, 1, 2], [3, 4, 5]])
    assert self_intersecting_faces(v, f).tolist() == [True, True]
    assert intersection.self_intersecting_pairs(v, f).tolist() == [[0, 1]]
    assert intersection.self_intersecting_pairs(v[:3], f[:1]).shape == (0, 2)
    apart = v.copy()
    apart[3:, 2] += 2.0
    assert self_intersection_fraction(apart, f) == 0.0
    shared = np.array([[0, 1, 2], [0, 4, 5]])  # adjacent faces (share a vertex) never count
    assert self_intersection_fraction(v, shared) == 0.0


def test_self_intersection_of_hand(hand):
    f = hand.faces.numpy()
    assert self_intersection_fraction(hand.v_template.numpy(), f) == 0.0
    pose = torch.zeros(1, 15, 3)
    lim = hand.joint_limits
    angles = torch.zeros(1, 15, 3)
    angles[0, 3:, 0] = 1.9  # beyond the limits: fingers driven through the palm
    pose = lim.from_anatomical(angles)
    v = hand(hand_pose=pose).vertices[0].detach().numpy()
    assert self_intersection_fraction(v, f) > 0.02


def _brute_force_intersecting_faces(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Every face pair tested: the reference the k-d tree's candidate pairs must match."""
    tri = v[f]
    i, j = np.triu_indices(len(f), k=1)
    apart = ~(f[i][:, :, None] == f[j][:, None, :]).any((1, 2))
    i, j = i[apart], j[apart]
    hit = intersection._triangles_intersect(tri[i], tri[j])
    mask = np.zeros(len(f), dtype=bool)
    mask[i[hit]] = mask[j[hit]] = True
    return mask


def test_self_intersection_candidates_miss_no_crossing(hand):
    f = hand.faces.numpy()
    angles = torch.zeros(3, 15, 3)
    angles[:, 3:, 0] = torch.tensor([1.2, 1.9, 2.4])[:, None]  # up to fingers through the palm
    verts = hand(hand_pose=hand.joint_limits.from_anatomical(angles)).vertices.detach().numpy()
    rng = np.random.default_rng(0)
    for v in verts:
        v = v + rng.normal(scale=2e-3, size=v.shape)  # rough surfaces fold locally too
        expected = _brute_force_intersecting_faces(v, f)
        assert expected.sum() > 10
        assert (self_intersecting_faces(v, f) == expected).all()
    v = verts[1].copy()
    v[f[0]] = np.nan  # a non-finite face is skipped, the rest still tested
    got = self_intersecting_faces(v, f)
    assert not got[0] and got.sum() > 10

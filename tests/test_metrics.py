"""Metrics against hand-computed cases (inputs in metres, outputs in mm)."""

import pytest
import torch
from hhmr import metrics
from hhmr.hand.rotations import axis_angle_to_matrix


@pytest.fixture
def points(gen):
    return torch.randn(3, 21, 3, generator=gen, dtype=torch.float64) * 0.05


def test_known_offset(points):
    shifted = points + torch.tensor([0.003, 0.0, 0.004], dtype=points.dtype)  # 5 mm
    assert torch.allclose(metrics.mpjpe(shifted, points), torch.full((3,), 5.0,
                          dtype=points.dtype))
    assert torch.allclose(metrics.mpvpe(shifted, points), torch.full((3,), 5.0,
                          dtype=points.dtype))
    assert torch.allclose(metrics.pa_mpjpe(shifted, points), torch.zeros(3, dtype=points.dtype),
                          atol=1e-9)
    assert torch.allclose(metrics.root_relative_mpjpe(shifted, points),
                          torch.zeros(3, dtype=points.dtype), atol=1e-9)


def test_similarity_gives_zero_pa_error(points):
    r = axis_angle_to_matrix(torch.tensor([0.3, 2.0, -0.7], dtype=points.dtype))
    moved = 1.3 * points @ r.T + 0.1
    assert (metrics.mpjpe(moved, points) > 1.0).all()
    assert torch.allclose(metrics.pa_mpjpe(moved, points), torch.zeros(3, dtype=points.dtype),
                          atol=1e-8)
    assert torch.allclose(metrics.pa_mpvpe(moved, points), torch.zeros(3, dtype=points.dtype),
                          atol=1e-8)


def test_single_point_error():
    target = torch.zeros(1, 4, 3)
    pred = target.clone()
    pred[0, 2, 0] = 0.008  # one of four points off by 8 mm
    assert metrics.mpjpe(pred, target).item() == pytest.approx(2.0)


def test_f_score():
    target = torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [0.3, 0, 0]]])
    pred = target.clone()
    pred[0, 3, 1] = 0.010  # 10 mm off: within 15 mm, not within 5 mm
    f5 = metrics.f_score(pred, target, 5.0, align=False)
    f15 = metrics.f_score(pred, target, 15.0, align=False)
    assert f15.item() == pytest.approx(1.0)
    assert f5.item() == pytest.approx(0.75)  # precision 3/4, recall 3/4
    assert metrics.f_score(target, target, 5.0).item() == pytest.approx(1.0)


def test_min_of_n(points):
    target = points
    hyps = torch.stack([points + 0.010, points + 0.002, points - 0.020], dim=1)
    best = metrics.min_of_n(metrics.mpjpe, hyps, target)
    assert torch.allclose(best, torch.full((3,), 0.002 * 3**0.5 * 1000, dtype=points.dtype))


def test_apd():
    a = torch.zeros(1, 3, 5, 3)
    a[0, 1, :, 0] = 0.003  # 3 mm from the first
    a[0, 2, :, 0] = 0.006  # 6 mm from the first, 3 from the second
    # ordered pairs: (3 + 6 + 3) * 2 / 6 = 4 mm
    assert metrics.apd(a).item() == pytest.approx(4.0)
    with pytest.raises(ValueError):
        metrics.apd(a[:, :1])


def test_nearest_distance_is_fidelity_one_way_and_coverage_the_other():
    ref = torch.zeros(3, 4, 3)
    ref[1, :, 0], ref[2, :, 0] = 0.010, 0.020  # real hands at 0, 10 and 20 mm
    narrow = torch.zeros(2, 4, 3)
    narrow[1, :, 0] = 0.001  # two generated hands near the first real one
    assert metrics.nearest_distance(narrow, ref).tolist() == pytest.approx([0.0, 1.0])
    # seen from the real hands, the narrow set misses the far ones: 0, 9 and 19 mm
    assert metrics.nearest_distance(ref, narrow).mean().item() == pytest.approx(28 / 3)
    wide = ref.clone()
    wide[..., 1] += 0.002  # 2 mm off every real hand, but reaching all of them
    assert metrics.nearest_distance(wide, ref).mean().item() == pytest.approx(2.0)
    assert metrics.nearest_distance(ref, wide).mean().item() == pytest.approx(2.0)


def test_self_intersection_pct(hand):
    v = hand.v_template[None].repeat(2, 1, 1)
    assert metrics.self_intersection_pct(v, hand.faces).tolist() == [0.0, 0.0]

import torch
from hhmr.hand.rotations import axis_angle_to_matrix, matrix_to_axis_angle, random_rotations


def test_axis_angle_round_trip(gen):
    aa = torch.randn(100, 3, generator=gen, dtype=torch.float64)
    aa = aa / aa.norm(dim=-1, keepdim=True) * torch.rand(100, 1, generator=gen,
                                                         dtype=torch.float64) * 3.0
    r = axis_angle_to_matrix(aa)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=aa.dtype).expand_as(r),
                          atol=1e-10)
    assert torch.allclose(matrix_to_axis_angle(r), aa, atol=1e-7)


def test_known_rotation():
    r = axis_angle_to_matrix(torch.tensor([0.0, 0.0, torch.pi / 2]))
    assert torch.allclose(r @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]),
                          atol=1e-6)


def test_gradient_finite_at_zero():
    aa = torch.zeros(3, requires_grad=True)
    (axis_angle_to_matrix(aa) @ torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.isfinite(aa.grad).all() and aa.grad.abs().sum() > 0


def test_random_rotations_are_rotations(gen):
    r = random_rotations(50, gen).double()
    assert torch.allclose(torch.linalg.det(r), torch.ones(50, dtype=r.dtype), atol=1e-5)

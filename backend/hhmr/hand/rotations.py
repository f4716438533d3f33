"""Rotation helpers (axis-angle <-> matrix), batched, differentiable, safe at zero."""

from __future__ import annotations

import torch


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices of vectors [..., 3] -> [..., 3, 3]."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*v.shape, 3)


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula for rotation vectors [..., 3] -> [..., 3, 3].

    Uses Taylor expansions near zero so gradients stay finite at the identity.
    """
    theta2 = (aa * aa).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    small = theta2 < 1e-8
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2_safe)
    k = skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_axis_angle(r: torch.Tensor) -> torch.Tensor:
    """Inverse of `axis_angle_to_matrix` for rotation matrices [..., 3, 3] (angle in [0, pi])."""
    return quaternion_to_axis_angle(matrix_to_quaternion(r))


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (w, x, y, z) [..., 4] with w >= 0 -> rotation vectors [..., 3]."""
    q = torch.where(q[..., :1] < 0, -q, q)
    w, xyz = q[..., :1], q[..., 1:]
    norm = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(norm, w)
    scale = torch.where(norm > 1e-8, angle / norm.clamp_min(1e-12), 2 / w.clamp_min(1e-12))
    return xyz * scale


def matrix_to_quaternion(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions (w, x, y, z) with w >= 0."""
    m = r.reshape(*r.shape[:-2], 9)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    cands = torch.stack(
        [
            torch.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
            torch.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
            torch.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
        ],
        dim=-2,
    )  # each row is 4*q*q_i for the i-th component as pivot
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                        1 - m00 - m11 + m22], -1)
    best = diag.argmax(-1)
    row = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = row / row.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(q[..., :1] < 0, -q, q)


def random_rotations(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniformly distributed rotations on SO(3) as matrices [n, 3, 3]."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    r = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return r.reshape(n, 3, 3).float()

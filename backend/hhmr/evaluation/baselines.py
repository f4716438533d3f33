"""Baselines measured beside the diffusion model: a pose-PCA Gaussian (generation) and
LBS optimisation with joint limits and a pose-PCA prior (2D/3D fitting), as HHMR's tables."""

from __future__ import annotations

import torch

from hhmr.data.poses import PosePrior
from hhmr.diffusion.guidance import project, solve_translation
from hhmr.hand.base import HandModel
from hhmr.hand.rotations import matrix_to_axis_angle, random_rotations


class PosePCA:
    """Gaussian in a PCA space of hand poses (axis-angle, 45-D) fitted to prior samples."""

    def __init__(self, model: HandModel, num_train: int = 4000, components: int = 12,
                 seed: int = 0) -> None:
        s = PosePrior(model).sample(num_train, seed=seed)
        x = s.hand_pose.reshape(num_train, 45)
        self.mean = x.mean(0)
        u, sv, vt = torch.linalg.svd(x - self.mean, full_matrices=False)
        self.basis = vt[:components]  # [k, 45]
        self.std = sv[:components] / (num_train - 1) ** 0.5
        self.components = components

    def decode(self, coeffs: torch.Tensor) -> torch.Tensor:
        return (self.mean + (coeffs * self.std) @ self.basis).reshape(-1, 15, 3)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.decode(torch.randn(n, self.components, generator=generator))


def fit_lbs(model: HandModel, pca: PosePCA, keypoints: torch.Tensor, conf: torch.Tensor,
            K: torch.Tensor | None = None, joints3d: torch.Tensor | None = None,
            iters: int = 150, inits: int = 8, seed: int = 0) -> torch.Tensor:
    """Optimisation baseline: fit global orientation, pose-PCA coefficients, shape and
    translation of the LBS hand to 2D keypoints [B, 21, 2] (with K [B, 3, 3]) or to
    wrist-relative 3D joints [B, 21, 3]; `inits` random orientations per sample, the best
    kept. Returns wrist-relative vertices [B, V, 3]."""
    b = (keypoints if joints3d is None else joints3d).shape[0]
    gen = torch.Generator().manual_seed(seed)
    n = b * inits
    rot0 = matrix_to_axis_angle(random_rotations(n, gen))
    go = rot0.clone().requires_grad_(True)
    coeffs = torch.zeros(n, pca.components, requires_grad=True)
    betas = torch.zeros(n, model.num_betas, requires_grad=True)
    opt = torch.optim.Adam([go, coeffs, betas], lr=0.05)

    def rep(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(inits, 0)

    lim = model.joint_limits

    def objective() -> torch.Tensor:
        pose = pca.decode(coeffs)
        out = model(go, pose, betas)
        joints = out.joints - out.joints[:, :1]
        if joints3d is not None:
            data = (joints - rep(joints3d)).square().sum((1, 2)) / 0.01 ** 2
        else:
            kk, cc, kp = rep(K), rep(conf), rep(keypoints)
            t = solve_translation(joints, kp, cc, kk)
            proj = project(joints + t[:, None], kk)
            data = (cc[..., None] * (proj - kp).square()).sum((1, 2)) / 4.0
        prior = coeffs.square().sum(1) + betas.square().sum(1)
        limits = lim.violation(pose).square().sum((1, 2)) * 100
        return data + 0.1 * prior + limits

    for _ in range(iters):
        opt.zero_grad()
        objective().sum().backward()
        opt.step()
    with torch.no_grad():
        final = objective().reshape(b, inits)
        best = final.argmin(1) + torch.arange(b) * inits
        out = model(go[best], pca.decode(coeffs[best]), betas[best])
        return out.vertices - out.joints[:, :1]


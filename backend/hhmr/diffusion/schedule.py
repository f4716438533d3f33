"""The cosine noise schedule (Nichol & Dhariwal 2021) and forward noising."""

from __future__ import annotations

import math

import torch


class CosineSchedule:
    """alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi / 2), betas clipped at 0.999."""

    def __init__(self, num_train_steps: int = 1000, s: float = 0.008) -> None:
        self.num_train_steps = num_train_steps
        t = torch.arange(num_train_steps + 1, dtype=torch.float64) / num_train_steps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)  # [T], index t = 0..T-1

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps t (any shape); t = -1 means no noise (1.0)."""
        ab = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        return ab[(t.long() + 1).cpu()].to(t.device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) = sqrt(ab) x0 + sqrt(1 - ab) noise for per-sample t [B]."""
        ab = self.alpha_bar(t).to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def predict_noise(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor
                      ) -> torch.Tensor:
        """The noise implied by x_t and a prediction of x_0."""
        ab = self.alpha_bar(t).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt().clamp_min(1e-8)

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.randint(0, self.num_train_steps, (n,), generator=generator).to(device)

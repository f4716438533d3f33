"""x0-denoiser with skip preconditioning (EDM, Karras et al. 2022, in variance-preserving form).

x0 = c_skip(t) * x_t + c_out(t) * F(c_in(t) * x_t, t, c), with
c_skip = sqrt(ab) s^2 / (ab s^2 + 1 - ab), c_out = s sqrt(1 - ab) / sqrt(ab s^2 + 1 - ab),
c_in = 1 / sqrt(ab s^2 + 1 - ab) for data standard deviation s: at low noise the prediction
starts from x_t itself, so the network only learns the correction.

With a `GaussianDenoiser` (model.skip = "gaussian") the skip term is instead the best linear
estimate of x0 from x_t under the training hands' mean and covariance, and c_out that
estimate's RMS error: the isotropic skip is its special case for data N(0, s^2 I). The hands'
variance lies in a few directions (most of it in the three of the hand's turn), which the
isotropic skip cannot follow; the network then learns only what no linear map gets.
"""

from __future__ import annotations

import torch
from torch import nn

from hhmr.diffusion.gaussian import GaussianDenoiser
from hhmr.diffusion.schedule import CosineSchedule
from hhmr.models.conditions import Conditions
from hhmr.models.graph_unet import Context


class X0Denoiser(nn.Module):
    def __init__(self, net: nn.Module, schedule: CosineSchedule, sigma_data: float = 0.65,
                 gaussian: GaussianDenoiser | None = None) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data
        self.gaussian = gaussian
        ab = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod])
        self.register_buffer("alpha_bar", ab.float(), persistent=False)  # index t + 1

    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return self.alpha_bar[(t.long() + 1).clamp(0, len(self.alpha_bar) - 1)]

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """c_skip, c_out, c_in [B] at timesteps t [B] (c_skip unused with a Gaussian skip)."""
        ab = self._alpha_bar(t)
        s2 = self.sigma_data ** 2
        denom = (ab * s2 + 1 - ab).sqrt()
        c_out = self.sigma_data * (1 - ab).sqrt() / denom if self.gaussian is None else \
            self.gaussian.error_rms(ab)
        return ab.sqrt() * s2 / denom ** 2, c_out, 1 / denom

    def context(self, cond: Conditions | None, batch: int) -> Context:
        return self.net.context(cond, batch)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor,
                cond: Conditions | Context | None = None) -> torch.Tensor:
        t = t.reshape(-1).expand(x_t.shape[0])
        c_skip, c_out, c_in = (c[:, None, None].to(x_t.dtype) for c in self.coefficients(t))
        skip = c_skip * x_t if self.gaussian is None else self.gaussian(x_t, self._alpha_bar(t))
        return skip + c_out * self.net(c_in * x_t, t, cond)

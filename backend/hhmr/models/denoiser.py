"""x0-denoiser with skip preconditioning (EDM, Karras et al. 2022, in variance-preserving form).

x0 = c_skip(t) * x_t + c_out(t) * F(c_in(t) * x_t, t, c), with
c_skip = sqrt(ab) s^2 / (ab s^2 + 1 - ab), c_out = s sqrt(1 - ab) / sqrt(ab s^2 + 1 - ab),
c_in = 1 / sqrt(ab s^2 + 1 - ab) for data standard deviation s: at low noise the prediction
starts from x_t itself, so the network only learns the correction.
"""

from __future__ import annotations

import torch
from torch import nn

from hhmr.diffusion.schedule import CosineSchedule
from hhmr.models.conditions import Conditions
from hhmr.models.graph_unet import Context

SCALE = 0.1  # metres per model unit: x0 = wrist-relative vertices / SCALE


class X0Denoiser(nn.Module):
    def __init__(self, net: nn.Module, schedule: CosineSchedule, sigma_data: float = 0.65
                 ) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data
        ab = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod])
        self.register_buffer("alpha_bar", ab.float(), persistent=False)  # index t + 1

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """c_skip, c_out, c_in at timesteps t [B]."""
        ab = self.alpha_bar[(t.long() + 1).clamp(0, len(self.alpha_bar) - 1)]
        s2 = self.sigma_data ** 2
        denom = (ab * s2 + 1 - ab).sqrt()
        return ab.sqrt() * s2 / denom ** 2, self.sigma_data * (1 - ab).sqrt() / denom, 1 / denom

    def context(self, cond: Conditions | None, batch: int) -> Context:
        return self.net.context(cond, batch)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor,
                cond: Conditions | Context | None = None) -> torch.Tensor:
        """x0 [B, V, 3] in model units."""
        t = t.reshape(-1).expand(x_t.shape[0])
        c_skip, c_out, c_in = (c[:, None, None].to(x_t.dtype) for c in self.coefficients(t))
        inp = c_in * x_t  # first: this order fixes how autograd sums x_t's two gradients
        return c_skip * x_t + c_out * self.net(inp, t, cond)

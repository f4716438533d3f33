"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself").

An under-trained denoiser pulls its x0 towards the data mean more than the exact one does, and
a sampler compounds that into samples narrower than the data. A weaker net of the same kind
(smaller, trained for less time) makes the same error more strongly, so extrapolating away
from it, x0 = D_guide + w (D - D_guide) with w > 1, undoes part of it. Unlike classifier-free
guidance it needs no condition, so it serves unconditional generation. Here it may act on an
interval of timesteps only (Kynkaanniemi et al. 2024 limit guidance to one): the noisy steps
settle a hand's size and pose, the quiet ones its surface.

Independent of any network: the pipeline calls both denoisers and combines their x0 here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AutoGuidance:
    """Guidance weight w (1: the net alone, 0: the guide alone) on timesteps in
    [t_min, t_max]."""

    weight: float
    t_min: int = 0
    t_max: int = 999

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight):
            raise ValueError(f"autoguidance weight must be finite, got {self.weight}")
        if self.t_min > self.t_max:
            raise ValueError(f"autoguidance needs t_min <= t_max, got {self.t_min} > "
                             f"{self.t_max}")

    def active(self, t: int) -> bool:
        """Whether step t takes the guide (weight 1 never needs it)."""
        return self.weight != 1.0 and self.t_min <= t <= self.t_max

    def combine(self, x0: torch.Tensor, x0_guide: torch.Tensor) -> torch.Tensor:
        """D_guide + w (D - D_guide)."""
        return x0_guide + self.weight * (x0 - x0_guide)

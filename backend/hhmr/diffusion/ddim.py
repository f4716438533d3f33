"""DDIM sampling (Song et al. 2021) and DPM-Solver++(2M) (Lu et al. 2022) for an x0-predicting
model; they know nothing of models."""

from __future__ import annotations

import math

import torch

from hhmr.diffusion.schedule import CosineSchedule

SPACINGS = ("linspace", "trailing", "quadratic", "front")  # what set_timesteps knows
FRONT_POWER = 1.5  # "front": step i of n at t_last + (T - 1 - t_last) (1 - (i / (n - 1))^p)


class DDIMSampler:
    """`set_timesteps(n)` then, for each t in `timesteps`, `step(x0_pred, t, x_t)`."""

    def __init__(self, schedule: CosineSchedule, eta: float = 0.0) -> None:
        self.schedule = schedule
        self.eta = eta
        self.timesteps = torch.empty(0, dtype=torch.long)

    def set_timesteps(self, num_steps: int, spacing: str = "linspace",
                      last: int | None = None) -> torch.Tensor:
        """Timesteps from T-1 down: evenly spaced to 0 ("linspace") or to T/n - 1
        ("trailing", Lin et al. 2024: the last step returns the x0 predicted there), or
        quadratically spaced, denser at low noise, to about T/n^2 ("quadratic", the DDIM
        paper's quad selection run from the top), or from T-1 to trailing's last timestep
        (or to `last`, when given) with steps that grow on the way, dense at high noise
        ("front", FRONT_POWER): 10 steps are 999, 966, 905, ..., 245, 99."""
        T = self.schedule.num_train_steps
        if not 1 <= num_steps <= T:
            raise ValueError(f"steps must be in [1, {T}]")
        if last is not None and (spacing != "front" or not 0 <= last < T - 1):
            raise ValueError(f"last must be in [0, {T - 2}] and goes with the front spacing")
        if spacing == "linspace":
            t = torch.linspace(T - 1, 0, num_steps).round().long()
        elif spacing == "trailing":
            t = (T - torch.arange(num_steps) * (T / num_steps)).round().long() - 1
        elif spacing == "quadratic":
            t = ((T - 1) * (1 - torch.arange(num_steps) / num_steps) ** 2).round().long()
            t = torch.maximum(t, torch.arange(num_steps - 1, -1, -1))  # strictly decreasing
        elif spacing == "front":
            last = round(T / num_steps) - 1 if last is None else last
            u = torch.arange(num_steps, dtype=torch.float64) / max(num_steps - 1, 1)
            t = (last + (T - 1 - last) * (1 - u ** FRONT_POWER)).round().long()
            t = torch.minimum(t, torch.arange(T - 1, T - 1 - num_steps, -1))  # strictly down
        else:
            raise ValueError(f"unknown spacing {spacing!r}; one of {', '.join(SPACINGS)}")
        self.timesteps = t
        return t

    def previous(self, t: int) -> int:
        """The timestep after t in the current sequence (-1 after the last)."""
        idx = (self.timesteps == t).nonzero()
        if len(idx) == 0:
            raise ValueError(f"timestep {t} is not in the current sequence")
        i = int(idx[0, 0])
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def step(self, x0_pred: torch.Tensor, t: int, x_t: torch.Tensor,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None
             ) -> torch.Tensor:
        """x_{t_prev} from x_t and the model's x_0 prediction (eta > 0 adds `noise`, or
        noise drawn from `generator`)."""
        prev = self.previous(t)
        ab_t = float(self.schedule.alpha_bar(torch.tensor(t)))
        ab_prev = float(self.schedule.alpha_bar(torch.tensor(prev)))
        if prev < 0:
            return x0_pred
        eps = (x_t - ab_t ** 0.5 * x0_pred) / max(1 - ab_t, 1e-12) ** 0.5
        sigma = self.eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)) ** 0.5
        direction = max(1 - ab_prev - sigma ** 2, 0.0) ** 0.5 * eps
        x_prev = ab_prev ** 0.5 * x0_pred + direction
        if sigma > 0:
            if noise is None:
                noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype)
            x_prev = x_prev + sigma * noise.to(x_t)
        return x_prev


class DPMSolverSampler(DDIMSampler):
    """DPM-Solver++(2M) (Lu et al. 2022) on the same timesteps: a second-order multistep
    solver of the probability-flow ODE from x0 predictions. Each step after the first
    extrapolates the prediction from the last two, D = (1 + 1/2r) x0_i - (1/2r) x0_{i-1}
    (r: the ratio of the last two steps in log-SNR), then moves like DDIM. The first step and
    a last one to t=0 are DDIM's own, as diffusers does below 15 steps. Deterministic
    (eta 0); it keeps the last prediction, so `set_timesteps` starts it afresh."""

    def __init__(self, schedule: CosineSchedule, eta: float = 0.0) -> None:
        if eta != 0:
            raise ValueError("DPM-Solver++(2M) is deterministic: eta must be 0")
        super().__init__(schedule, 0.0)
        self._last: tuple[torch.Tensor, float, float] | None = None

    def set_timesteps(self, num_steps: int, spacing: str = "linspace",
                      last: int | None = None) -> torch.Tensor:
        self._last = None
        return super().set_timesteps(num_steps, spacing, last)

    @staticmethod
    def _log_snr(ab: float) -> float:
        """log(alpha / sigma) of a timestep with alpha_bar ab."""
        return 0.5 * (math.log(ab) - math.log1p(-ab))

    def step(self, x0_pred: torch.Tensor, t: int, x_t: torch.Tensor,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None
             ) -> torch.Tensor:
        prev = self.previous(t)
        if prev < 0:
            return x0_pred
        ab_t = float(self.schedule.alpha_bar(torch.tensor(t)))
        ab_prev = float(self.schedule.alpha_bar(torch.tensor(prev)))
        lam_t, lam_prev = self._log_snr(ab_t), self._log_snr(ab_prev)
        h = lam_prev - lam_t
        d = x0_pred
        if self._last is not None and self._last[2] == t:
            x0_before, lam_before, _ = self._last
            r = (lam_t - lam_before) / h
            d = (1 + 0.5 / r) * x0_pred - (0.5 / r) * x0_before
        self._last = (x0_pred, lam_t, prev)
        ratio = ((1 - ab_prev) / (1 - ab_t)) ** 0.5  # sigma_prev / sigma_t
        return ratio * x_t + ab_prev ** 0.5 * (-math.expm1(-h)) * d


def gaussian_sample_sd(sampler: DDIMSampler, steps: int, spacing: str, sd: float = 0.65,
                       last: int | None = None, count: int = 20000, gain: float = 1.0,
                       gain_from: int = 0) -> float:
    """Standard deviation of `count` draws of N(0, sd^2) data sampled with the exact denoiser
    E[x0 | x_t]: the scale a sampler keeps (sd is right), free of any network. `gain` scales
    that denoiser at timesteps >= gain_from: a net that reads x_t a little shrunk there."""
    s = sampler.schedule
    x = torch.randn(count, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in sampler.set_timesteps(steps, spacing, last).tolist():
        ab = float(s.alpha_bar(torch.tensor(t)))
        k = gain if t >= gain_from else 1.0
        x = sampler.step(k * ab ** 0.5 * sd ** 2 / (ab * sd ** 2 + 1 - ab) * x, t, x)
    return float(x.std())

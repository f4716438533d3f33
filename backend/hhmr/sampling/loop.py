"""The one sampling loop: from noise to hands with a solver, optional guidance, autoguidance
and replacement, for a batch made of blocks that each draw their noise from their own seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from hhmr.diffusion import AutoGuidance, CosineSchedule, DDIMSampler, DPMSolverSampler
from hhmr.models import SCALE, Conditions
from hhmr.models.graph_unet import Context
from hhmr.models.tracing import TracedDenoiser
from hhmr.sampling.config import SamplerConfig
from hhmr.sampling.guidance import Replacement, X0Guidance, XtGuidance

# called as progress(step, total) before each step; may raise to cancel the run
Progress = Callable[[int, int], None]


class Denoiser:
    """A net on its device in eval mode, with frozen traces for its unguided steps."""

    def __init__(self, net: torch.nn.Module, device: torch.device, trace: bool) -> None:
        self.net = net.to(device).eval()
        self.device = device
        self.traced = TracedDenoiser(self.net) if trace else None

    def unguided(self, cond: Conditions, batch: int
                 ) -> tuple[Callable[..., torch.Tensor], object]:
        """(x_t, t, context) -> x0 without gradients, and the context it takes: what the
        conditions give every step (the tokens' keys and values; nets without `context`
        take the conditions themselves)."""
        prepare = getattr(self.net, "context", None)
        with torch.no_grad():
            context = prepare(cond, batch) if prepare is not None else cond
        if self.traced is not None and isinstance(context, Context):
            return self.traced, context
        return self.net, context


@dataclass
class NoiseBlock:
    """A block of the batch that draws its noise from its own seed."""

    seed: int
    count: int
    central: bool = False  # the first draw's first row is the noise's mean, zero
    generator: torch.Generator = field(init=False)
    drawn: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        z = torch.randn(self.count, *shape, generator=self.generator)
        if self.central and self.drawn == 0:
            z[0] = 0.0
        self.drawn += 1
        return z


@dataclass
class Guidance:
    """What a run is guided by: one of x_t or x0 guidance, on the first `fraction` of the
    steps (all when None)."""

    strategy: XtGuidance | X0Guidance
    fraction: float | None = None

    def active(self, i: int, steps: int) -> bool:
        return self.fraction is None or i < self.fraction * steps


def sample(net: Denoiser, schedule: CosineSchedule, config: SamplerConfig, cond: Conditions,
           noises: list[NoiseBlock], num_vertices: int, steps: int, eta: float = 0.0,
           guidance: Guidance | None = None, replacement: Replacement | None = None,
           guide: Denoiser | None = None, autoguidance: AutoGuidance | None = None,
           progress: Progress | None = None) -> torch.Tensor:
    """Hands [B, V, 3] in metres. Batching requests changes their results by float rounding
    alone (batch sizes take different CPU kernels)."""
    device = net.device
    batch = sum(nz.count for nz in noises)

    def randn() -> torch.Tensor:
        return torch.cat([nz.draw((num_vertices, 3)) for nz in noises]).to(device)

    x = randn()
    cond = Conditions(**{k: None if t is None else t.to(device) for k, t in cond.__dict__.items()})
    plain, context = net.unguided(cond, batch)
    if autoguidance is not None:
        if guide is None:
            raise ValueError("autoguidance needs a guide net")
        guide_plain, guide_context = guide.unguided(cond, batch)
    strategy = guidance.strategy if guidance is not None else None
    x_t_guided = isinstance(strategy, XtGuidance)
    # x_t-guided runs end at t=0, so the last move lands on the output; the others end on the
    # net's x0 at t=T/n, which x0 guidance corrects directly. A multistep solver would mix in
    # a prediction from before a change to the sample, so those runs take DDIM.
    multistep = config.solver == "dpm++2m" and not x_t_guided and replacement is None \
        and eta == 0
    sampler = DPMSolverSampler(schedule) if multistep else DDIMSampler(schedule, eta=eta)
    timesteps = sampler.set_timesteps(steps, "linspace" if x_t_guided else config.spacing)
    timesteps = timesteps.tolist()

    for i, t in enumerate(timesteps):
        if progress is not None:
            progress(i, len(timesteps))
        tt = torch.full((batch,), t, device=device)
        now = guidance is not None and guidance.active(i, len(timesteps))
        if now and x_t_guided:
            x0, move = strategy.predict(net.net, x, tt, context)
        else:
            with torch.no_grad():
                x0 = plain(x, tt, context)
                if autoguidance is not None and autoguidance.active(t):
                    x0 = autoguidance.combine(x0, guide_plain(x, tt, guide_context))
        x_next = sampler.step(x0, t, x, noise=randn() if eta > 0 else None)
        if now and x_t_guided:
            x_next = strategy.apply(net.net, x_next, move, tt, context,
                                    i == len(timesteps) - 1)
        elif now:
            x_next = strategy.apply(x_next, x0, sampler, schedule, t)
        x = x_next
        if replacement is not None:
            x = replacement.apply(x, sampler.previous(t), schedule, randn)
    return x.detach() * SCALE

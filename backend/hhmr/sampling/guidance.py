"""The ways a sampling step is pulled towards a task's condition, as small strategies the loop
calls: x_t guidance (HHMR's: the task loss's gradient through the net), x0 guidance (gradient
steps on the net's prediction itself, MPGD) and replacement (inpainting's kept vertices).

Units: the loop works in model units (`SCALE` metres); operators take metres.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hhmr.diffusion import CosineSchedule, DDIMSampler
from hhmr.diffusion.guidance import GuidanceOperator, ProjectionOperator
from hhmr.models import SCALE


def _rms_factor(step: torch.Tensor, max_rms: float) -> torch.Tensor:
    """Per-sample factor [B, 1, 1] that brings an update [B, V, 3] to RMS at most max_rms."""
    rms = step.square().mean((1, 2), keepdim=True).sqrt()
    return max_rms / rms.clamp_min(max_rms)


def clip_rms(step: torch.Tensor, max_rms: float) -> torch.Tensor:
    """Scale each sample's update [B, V, 3] down so its RMS is at most max_rms."""
    return step * _rms_factor(step, max_rms)


def descend(loss_of: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
            step_of: Callable[[torch.Tensor], torch.Tensor],
            change_of: Callable[[torch.Tensor], torch.Tensor],
            move_of: Callable[[torch.Tensor], torch.Tensor], scale: float, iters: int,
            max_step: float | None = None, retries: int = 8,
            loss_and_grad: Callable[[torch.Tensor], tuple | None] | None = None
            ) -> torch.Tensor:
    """x0 guidance's gradient descent: `iters` steps c = scale * step_of(grad_z loss_of(z))
    per sample from z = start, z moving by change_of(sum of c) and the mesh by move_of(c)
    (capped at RMS max_step). A step that raises its sample's loss is taken back and halved
    (at most `retries` extra evaluations), so strengths beyond the stable range converge
    instead of diverging. `loss_and_grad(z)`, where it returns one, replaces autograd.
    Returns the sum of the steps taken."""

    def evaluate(total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if loss_and_grad is not None:
            out = loss_and_grad((start + change_of(total)).detach())
            if out is not None:
                return out
        with torch.enable_grad():
            z = (start + change_of(total)).detach().requires_grad_(True)
            loss = loss_of(z)
            return loss.detach(), torch.autograd.grad(loss.sum(), z)[0]

    total = torch.zeros_like(start)
    loss, grad = evaluate(total)
    lr = torch.full((start.shape[0], 1, 1), scale, dtype=start.dtype, device=start.device)
    taken = torch.zeros(start.shape[0], dtype=torch.long, device=start.device)
    for _ in range(iters + retries):
        active = taken < iters
        if not active.any():
            break
        step = lr * step_of(grad) * active[:, None, None]
        if max_step is not None:
            step = step * _rms_factor(move_of(step), max_step)
        trial_loss, trial_grad = evaluate(total + step)
        ok = active & ((trial_loss < loss) | (trial_loss <= 1e-12))
        if bool(ok.all()):  # the usual case at tuned strengths
            total, loss, grad, taken = total + step, trial_loss, trial_grad, taken + 1
            continue
        keep = ok[:, None, None]
        total = torch.where(keep, total + step, total)
        loss, grad = torch.where(ok, trial_loss, loss), torch.where(keep, trial_grad, grad)
        lr = torch.where((active & ~ok)[:, None, None], lr * 0.5, lr)
        taken = taken + ok.long()
    return total


class XtGuidance:
    """x_{t-1} = step(x0, x_t) - s grad_{x_t} loss(x0(x_t)): a forward and a backward pass
    through the net per guided step, each move capped at RMS `max_step`; the last step
    makes `final_iterations` moves."""

    def __init__(self, operator: GuidanceOperator, scale: float, max_step: float | None,
                 final_iterations: int) -> None:
        self.operator, self.scale = operator, scale
        self.max_step, self.final_iterations = max_step, final_iterations

    def predict(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The net's x0 and the guidance move for x_t."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0 = net(x_in, t, context)
            loss = self.operator.loss(x0 * SCALE).sum()
            move = -self.scale * torch.autograd.grad(loss, x_in)[0]
        return x0.detach(), move if self.max_step is None else clip_rms(move, self.max_step)

    def apply(self, net: torch.nn.Module, x_next: torch.Tensor, move: torch.Tensor,
              t: torch.Tensor, context, last: bool) -> torch.Tensor:
        x_next = x_next + move
        if last:
            for _ in range(self.final_iterations - 1):
                x_next = x_next + self.predict(net, x_next, t, context)[1]
        return x_next


class X0Guidance:
    """x0' = x0 after `iterations` gradient steps of size `scale` on the task loss (`descend`),
    no pass back through the net. An operator that reads only the joints J x0 takes its steps
    on the 21 joints (the vertex gradient J^T grad_J preconditioned by the influence W:
    x0 -= s W (J W)^T grad_J) and the surface moves once, by W times their sum."""

    def __init__(self, operator: GuidanceOperator, scale: float, iterations: int,
                 max_step: float | None, retries: int, regressor: torch.Tensor,
                 influence: torch.Tensor | None, hold_camera: bool) -> None:
        self.operator, self.scale, self.iterations = operator, scale, iterations
        self.max_step, self.retries = max_step, retries
        self.regressor, self.influence, self.hold_camera = regressor, influence, hold_camera

    def correction(self, x0: torch.Tensor) -> torch.Tensor:
        """x0' - x0 for the net's prediction x0 (model units)."""
        op = self.operator
        if self.influence is None:
            return descend(lambda z: op.loss(z * SCALE), x0, lambda g: -g, lambda c: c,
                           lambda c: c, self.scale, self.iterations, self.max_step,
                           self.retries)
        w = self.influence
        jw = self.regressor @ w  # [21, 21]
        calls = 0

        def joint_loss(z: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            if isinstance(op, ProjectionOperator):
                # the camera (rotation included) is solved once per sampling step
                op.hold_camera = self.hold_camera and calls > 0
            calls += 1
            return op.joint_loss(z * SCALE)

        def loss_and_grad(z: torch.Tensor) -> tuple | None:
            nonlocal calls
            if not (isinstance(op, ProjectionOperator) and self.hold_camera and calls > 0):
                return None
            op.hold_camera = True
            out = op.held_loss_and_grad(z * SCALE)
            if out is not None:
                calls += 1
                return out[0], out[1] * SCALE
            return None

        total = descend(joint_loss, self.regressor @ x0, lambda g: -(jw.T @ g),
                        lambda c: jw @ c, lambda c: w @ c, self.scale, self.iterations,
                        self.max_step, self.retries, loss_and_grad)
        if isinstance(op, ProjectionOperator):
            op.hold_camera = False
        return w @ total

    def apply(self, x_next: torch.Tensor, x0: torch.Tensor, sampler: DDIMSampler,
              schedule: CosineSchedule, t: int) -> torch.Tensor:
        """The step to the corrected prediction with the net's noise estimate kept."""
        prev = sampler.previous(t)
        ab_prev = float(schedule.alpha_bar(torch.tensor(prev))) if prev >= 0 else 1.0
        return x_next + ab_prev ** 0.5 * self.correction(x0)


class Replacement:
    """Inpainting's replacement: after each step the kept vertices are set to the observed
    ones, noised to the next timestep."""

    def __init__(self, observed: torch.Tensor, keep: torch.Tensor) -> None:
        self.observed = observed / SCALE  # [B, V, 3] model units
        self.keep = keep  # [B, V]

    def apply(self, x: torch.Tensor, prev: int, schedule: CosineSchedule,
              randn: Callable[[], torch.Tensor]) -> torch.Tensor:
        obs = self.observed
        if prev >= 0:
            obs = schedule.add_noise(obs, randn(), torch.full((x.shape[0],), prev))
        return torch.where(self.keep[..., None] > 0, obs, x)

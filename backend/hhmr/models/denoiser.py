"""x0-denoiser with skip preconditioning (EDM, Karras et al. 2022, in variance-preserving form).

x0 = c_skip(t) * x_t + c_out(t) * F(c_in(t) * x_t, t, c), with
c_skip = sqrt(ab) s^2 / (ab s^2 + 1 - ab), c_out = s sqrt(1 - ab) / sqrt(ab s^2 + 1 - ab),
c_in = 1 / sqrt(ab s^2 + 1 - ab) for data standard deviation s: at low noise the prediction
starts from x_t itself, so the network only learns the correction.

frame "template" makes the denoiser equivariant to turns of the hand about the wrist: each
step turns x_t (and the 3D skeleton) by the rotation Q that best aligns the template with
x_t (Kabsch), denoises there and turns x0 back, x0(x_t) = Q D(x_t Q) Q^T in row form. The net
then never has to learn the hand's orientation, the largest part of the data's variance;
conditions that live in the camera (2D keypoints, image tokens) get Q as an input.
frame "template_or_camera" keeps the camera frame (Q = I) for the samples that have such a
condition, whose tokens then need no Q, and takes the template frame for the others.

linear_rank > 0 gives the net a second input beside c_in x_t: the best linear estimate of x0
from x_t (`GaussianDenoiser`, fitted to training hands turned to the template's frame and
applied in x_t's own Kabsch frame), as the output F that would return it,
(x0_lin - c_skip x_t) / c_out; passing it through is one linear map. Built because camera-
and template-frame nets read hand size from x_t a little worse than that estimate does; run
v12 reads it as well, yet generates no wider sizes (docs/diffusion.md, "Run v12"). Off (0)
by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from hhmr.diffusion.gaussian import GaussianDenoiser
from hhmr.diffusion.schedule import CosineSchedule
from hhmr.mesh.geometry import kabsch
from hhmr.models.conditions import Conditions
from hhmr.models.graph_unet import Context

FRAMES = ("camera", "template", "template_or_camera")


def template_frame(x: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Rotations Q [B, 3, 3] with x [B, V, 3] ~ template [V, 3] @ Q^T at least squares (Kabsch
    about the origin, no reflection); equivariant: x @ R^T gives R Q."""
    rot, _ = kabsch((template.to(x.dtype).T @ x).double())  # template @ rot ~ x
    return rot.transpose(1, 2).to(x.dtype)


def turned_to_template(hands: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Hands [N, V, 3] turned into the template's frame (each by its own Kabsch rotation)."""
    return hands @ template_frame(hands, template)


def linear_estimate(linear: GaussianDenoiser, x_t: torch.Tensor, ab: torch.Tensor,
                    q: torch.Tensor) -> torch.Tensor:
    """A template-frame Gaussian's x0 estimate, applied in the frame Q of x_t [B, V, 3] and
    turned back: Q^T-rotated G(x_t Q)."""
    return linear(x_t @ q, ab) @ q.transpose(1, 2)


@dataclass
class FrameContext:
    """What a template-frame denoiser keeps for a sampling run: the conditions themselves
    (the 3D skeleton turns with each step's frame, so its tokens are made at every step)."""

    cond: Conditions | None
    batch: int


class X0Denoiser(nn.Module):
    def __init__(self, net: nn.Module, schedule: CosineSchedule, sigma_data: float = 0.65,
                 frame: str = "camera", template: torch.Tensor | None = None,
                 linear_rank: int = 0) -> None:
        super().__init__()
        if frame not in FRAMES:
            raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
        if (frame != "camera" or linear_rank) and template is None:
            raise ValueError("a template frame or a linear input needs the template [V, 3]")
        self.net = net
        self.sigma_data = sigma_data
        self.frame = frame
        ab = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod])
        self.register_buffer("alpha_bar", ab.float(), persistent=False)  # index t + 1
        self.register_buffer("template", None if template is None else template.float(),
                             persistent=False)
        # saved with the weights: fitted once, when a fresh training run starts (fit_linear)
        self.linear = GaussianDenoiser(template.numel(), linear_rank) if linear_rank else None

    @torch.no_grad()
    def fit_linear(self, hands: torch.Tensor) -> None:
        """Fit the linear estimate to training hands [N, V, 3] (model units, any orientation),
        turned to the template's frame."""
        self.linear.fit(turned_to_template(hands.to(self.template), self.template))

    def _linear_input(self, x_t: torch.Tensor, x_c: torch.Tensor, q_k: torch.Tensor,
                      q: torch.Tensor | None, t: torch.Tensor, c_skip: torch.Tensor,
                      c_out: torch.Tensor) -> torch.Tensor:
        """(x0_lin - c_skip x_c) / c_out in the net's frame (x_c = x_t @ q), x0_lin taken in
        x_t's Kabsch frame q_k."""
        lin = linear_estimate(self.linear, x_t, self._alpha_bar(t), q_k)
        if q is not None:
            lin = lin @ q
        return (lin - c_skip * x_c) / c_out

    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return self.alpha_bar[(t.long() + 1).clamp(0, len(self.alpha_bar) - 1)]

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ab = self._alpha_bar(t)
        s2 = self.sigma_data ** 2
        denom = (ab * s2 + 1 - ab).sqrt()
        return ab.sqrt() * s2 / denom ** 2, self.sigma_data * (1 - ab).sqrt() / denom, 1 / denom

    def context(self, cond: Conditions | None, batch: int) -> Context | FrameContext:
        if self.frame != "camera":
            return FrameContext(cond, batch)
        return self.net.context(cond, batch)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor,
                cond: Conditions | Context | FrameContext | None = None,
                inner: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """x0 [B, V, 3]; `inner` (template frame only) runs the net on (x, t, Context) in its
        place, e.g. a frozen trace of it (`hhmr.models.tracing`)."""
        t = t.reshape(-1).expand(x_t.shape[0])
        c_skip, c_out, c_in = (c[:, None, None].to(x_t.dtype) for c in self.coefficients(t))
        q_k = q = None
        if self.frame != "camera" or self.linear is not None:
            with torch.no_grad():
                q_k = template_frame(x_t.detach(), self.template)
        if self.frame != "camera":
            if isinstance(cond, Context):
                raise TypeError("a template-frame denoiser takes Conditions or its FrameContext")
            if isinstance(cond, FrameContext):
                cond = cond.cond
            q = q_k
            if self.frame == "template_or_camera" and cond is not None:
                camera = has_camera_condition(cond, x_t.shape[0]).to(q.device)[:, None, None]
                q = torch.where(camera, torch.eye(3, dtype=q.dtype, device=q.device), q)
        x_c = x_t if q is None else x_t @ q
        inp = c_in * x_c
        if self.linear is not None:
            inp = torch.cat([inp, self._linear_input(x_t, x_c, q_k, q, t, c_skip, c_out)], -1)
        if q is None:
            return c_skip * x_t + c_out * (inner or self.net)(inp, t, cond)
        ctx = self.net.context(in_frame(cond, q), x_t.shape[0])
        out = c_skip * x_c + c_out * (inner or self.net)(inp, t, ctx)
        return out @ q.transpose(1, 2)


def in_frame(cond: Conditions | None, q: torch.Tensor) -> Conditions:
    """Conditions as a template-frame net sees them: the 3D skeleton turned by Q^T, and Q
    itself for the conditions that stay in the camera frame."""
    cond = cond or Conditions()
    joints = None if cond.joints3d is None else cond.joints3d @ q
    return replace(cond, joints3d=joints, frame=q)


def has_camera_condition(cond: Conditions, batch: int) -> torch.Tensor:
    """[B] bool (on the CPU): the samples with a known 2D keypoint or image token, the
    conditions that live in the camera frame."""
    out = torch.zeros(batch, dtype=torch.bool)
    for values, known in ((cond.keypoints2d, cond.keypoints2d_conf),
                          (cond.image_tokens, cond.image_mask)):
        if values is not None:
            out |= True if known is None else (known > 0).any(1).cpu()
    return out

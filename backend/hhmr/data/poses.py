"""The anatomical pose prior that synthetic training data comes from.

A sample is a named gesture (open, fist, point, pinch, OK, ...) built from finger curls with
the PIP/DIP synergy (DIP = 2/3 PIP), optionally blended with a second gesture, plus Gaussian
noise in anatomical angles (flexion, abduction, twist), clamped to the joint limits; with a
random shape and a uniformly random global orientation. Everything is drawn from a
`torch.Generator`, so a seed gives the same hands on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hhmr.hand.base import HandModel
from hhmr.hand.rotations import matrix_to_axis_angle, random_rotations

MCP_CURL, PIP_CURL, DIP_RATIO = 65.0, 80.0, 0.6
SPREAD_DEG = (12.0, 0.0, -8.0, -16.0)  # abduction of index..little at spread 1


@dataclass(frozen=True)
class Gesture:
    """Finger curls (index..little, 0 straight .. 1 fully curled), spread, and the thumb's
    (cmc flexion, cmc abduction, cmc twist, mcp flexion, ip flexion) in degrees.
    `mcp`/`pip` scale the curl at those joints per finger (claw or flat-hand shapes)."""

    name: str
    curls: tuple[float, float, float, float]
    thumb: tuple[float, float, float, float, float]
    spread: float = 0.0
    mcp: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    pip: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    weight: float = 1.0

    def angles(self) -> torch.Tensor:
        """Anatomical angles [15, 3] in degrees."""
        a = torch.zeros(15, 3)
        cmc_f, cmc_a, cmc_t, mcp, ip = self.thumb
        a[0] = torch.tensor([cmc_f, cmc_a, cmc_t])
        a[1, 0], a[2, 0] = mcp, ip
        for f in range(4):
            c, j = self.curls[f], 3 + 3 * f
            a[j, 0] = c * MCP_CURL * self.mcp[f]
            a[j, 1] = self.spread * SPREAD_DEG[f]
            a[j + 1, 0] = c * PIP_CURL * self.pip[f]
            a[j + 2, 0] = DIP_RATIO * a[j + 1, 0]
        return a


TUCKED_THUMB = (10.0, 30.0, 10.0, 20.0, 15.0)
GESTURES: tuple[Gesture, ...] = (
    Gesture("open", (0, 0, 0, 0), (0, 0, 0, 0, 0), weight=0.7),
    Gesture("spread", (0, 0, 0, 0), (-10, 0, 0, 0, 0), spread=1.0, weight=0.7),
    Gesture("relaxed", (0.15, 0.2, 0.25, 0.3), (10, 10, 0, 10, 10), spread=0.3, weight=1.5),
    Gesture("fist", (0.75, 0.75, 0.75, 0.75), (10, 35, 10, 25, 20)),
    Gesture("point", (0, 0.75, 0.75, 0.75), TUCKED_THUMB),
    Gesture("pinch", (0.45, 0.2, 0.2, 0.2), (30, 35, 20, 20, 20)),
    Gesture("ok", (0.55, 0.1, 0.1, 0.1), (25, 35, 20, 20, 25), spread=0.5),
    Gesture("thumbs_up", (0.75, 0.75, 0.75, 0.75), (-10, 0, 0, 0, 0)),
    Gesture("peace", (0, 0, 0.75, 0.75), TUCKED_THUMB, spread=1.0),
    Gesture("three", (0, 0, 0.75, 0.75), (-5, 0, 0, 0, 0), spread=0.8),
    Gesture("horns", (0, 0.75, 0.75, 0), TUCKED_THUMB, spread=0.8),
    Gesture("call_me", (0.75, 0.75, 0.75, 0), (-10, 0, 0, 0, 0), spread=1.0),
    Gesture("cylinder_grasp", (0.55, 0.55, 0.55, 0.55), (20, 40, 20, 20, 20)),
    Gesture("sphere_grasp", (0.35, 0.35, 0.35, 0.35), (15, 45, 25, 15, 15), spread=0.6),
    Gesture("claw", (0.7, 0.7, 0.7, 0.7), (20, 30, 10, 20, 30), spread=0.5,
            mcp=(0.1, 0.1, 0.1, 0.1), pip=(1, 1, 1, 1)),
    Gesture("flat_bend", (0.75, 0.75, 0.75, 0.75), (10, 20, 0, 10, 10),
            mcp=(1, 1, 1, 1), pip=(0.05, 0.05, 0.05, 0.05)),
)

# noise s.d. in degrees: (flexion, abduction, twist) for finger and thumb joints
FINGER_NOISE_DEG = (6.0, 2.0, 2.0)
THUMB_NOISE_DEG = (5.0, 4.0, 3.0)
CURL_NOISE = 0.08  # per-finger curl jitter, as a fraction of the full curl


@dataclass
class PoseSample:
    """Parameters of sampled hands (axis-angle), and the gesture each came from."""

    global_orient: torch.Tensor  # [N, 3]
    hand_pose: torch.Tensor  # [N, 15, 3]
    betas: torch.Tensor  # [N, S]
    gestures: list[str] = field(default_factory=list)


class PosePrior:
    """Draws anatomically plausible hand parameters for a hand model."""

    def __init__(
        self,
        model: HandModel,
        gestures: tuple[Gesture, ...] = GESTURES,
        noise_scale: float = 1.0,
        blend_prob: float = 0.35,
        shape_std: float = 1.0,
        shape_clip: float = 2.0,
        random_orient: bool = True,
    ) -> None:
        self.limits = model.joint_limits
        self.num_betas = model.num_betas
        self.gestures = gestures
        self.templates = torch.stack([g.angles() for g in gestures]).deg2rad()  # [G, 15, 3]
        w = torch.tensor([g.weight for g in gestures])
        self.probs = w / w.sum()
        self.noise_scale = noise_scale
        self.blend_prob = blend_prob
        self.shape_std = shape_std
        self.shape_clip = shape_clip
        self.random_orient = random_orient
        noise = torch.tensor([THUMB_NOISE_DEG] * 3 + [FINGER_NOISE_DEG] * 12)
        self.noise_sd = noise.deg2rad()

    def sample_angles(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor,
                                                                         list[str]]:
        """Anatomical angles [n, 15, 3] (radians, inside the limits) and gesture names."""
        first = torch.multinomial(self.probs, n, replacement=True, generator=generator)
        second = torch.multinomial(self.probs, n, replacement=True, generator=generator)
        blend = torch.rand(n, generator=generator) < self.blend_prob
        alpha = torch.rand(n, generator=generator) * blend
        angles = (1 - alpha[:, None, None]) * self.templates[first] + \
            alpha[:, None, None] * self.templates[second]
        # finger-level curl jitter keeps the PIP/DIP synergy; then independent joint noise
        curl = torch.randn(n, 4, generator=generator) * CURL_NOISE * self.noise_scale
        full = torch.tensor([MCP_CURL, PIP_CURL, PIP_CURL * DIP_RATIO]).deg2rad()
        angles[:, 3:, 0] += (curl[:, :, None] * full).reshape(n, 12)
        angles = angles + torch.randn(n, 15, 3, generator=generator) * self.noise_sd * \
            self.noise_scale
        names = [
            self.gestures[int(a)].name + (f"+{self.gestures[int(b)].name}" if m and a != b else "")
            for a, b, m in zip(first, second, blend, strict=True)
        ]
        return self.limits.clamp(angles), names

    def sample(self, n: int, seed: int | None = None,
               generator: torch.Generator | None = None) -> PoseSample:
        """Draw n hands; the same seed always gives the same hands."""
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        angles, names = self.sample_angles(n, generator)
        hand_pose = self.limits.from_anatomical(angles)
        if self.random_orient:
            global_orient = matrix_to_axis_angle(random_rotations(n, generator))
        else:
            global_orient = torch.zeros(n, 3)
        betas = (torch.randn(n, self.num_betas, generator=generator) * self.shape_std).clamp(
            -self.shape_clip, self.shape_clip)
        return PoseSample(global_orient, hand_pose, betas, names)

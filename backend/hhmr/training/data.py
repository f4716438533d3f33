"""Synthetic training batches: hands from the pose prior, their skeletons and 2D views."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hhmr.data.poses import PosePrior
from hhmr.diffusion.guidance import project
from hhmr.hand.base import HandModel
from hhmr.models import SCALE
from hhmr.models.conditions import Conditions, normalize_keypoints


@dataclass
class Batch:
    vertices: torch.Tensor  # [B, V, 3] wrist-relative, metres (camera orientation)
    joints: torch.Tensor  # [B, 21, 3] wrist-relative, metres
    keypoints2d: torch.Tensor  # [B, 21, 2] pixels
    K: torch.Tensor  # [B, 3, 3]
    transl: torch.Tensor  # [B, 3] camera-frame position of the wrist
    conditions: Conditions  # full (unmasked) conditions in model units


def random_cameras(n: int, generator: torch.Generator, image_size: float = 224.0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Intrinsics [n, 3, 3] and wrist positions [n, 3] of a hand seen by a random camera."""
    f = 300 + torch.rand(n, generator=generator) * 700
    K = torch.zeros(n, 3, 3)
    K[:, 0, 0], K[:, 1, 1] = f, f
    K[:, 0, 2] = K[:, 1, 2] = image_size / 2
    K[:, 2, 2] = 1
    depth = 0.35 + torch.rand(n, generator=generator) * 0.6
    xy = (torch.rand(n, 2, generator=generator) - 0.5) * 0.2 * depth[:, None]
    return K, torch.cat([xy, depth[:, None]], 1)


# A loose skeleton at strength 1: errors like a monocular 3D landmark estimator's (MediaPipe's
# world landmarks, about 11 mm PA-MPJPE on real photos and growing along each finger, are
# like strength 0.6; 0.8 gives about 15 mm),
# made by perturbing the hand's own parameters so they stay articulated.
LOOSE_ORIENT_DEG = 10.0
LOOSE_POSE_DEG = 19.0
LOOSE_BETAS = 1.2
LOOSE_SCALE = 0.1
LOOSE_JITTER_M = 0.004
LOOSE_CONF_DROP = 0.7  # confidence 1 - 0.7 * strength


@dataclass
class PoseSample:
    global_orient: torch.Tensor
    hand_pose: torch.Tensor
    betas: torch.Tensor


def loose_skeleton(model: HandModel, s: PoseSample, strength: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """Wrist-relative joints [n, 21, 3] of hands `s` seen by a sloppy 3D estimator:
    orientation, joint angles, shape and scale perturbed in proportion to `strength` [n],
    then every joint jittered (the wrist too: the origin itself is uncertain)."""
    n = strength.shape[0]
    k = strength[:, None]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    deg = torch.pi / 180
    with torch.no_grad():
        out = model(s.global_orient + randn(n, 3) * LOOSE_ORIENT_DEG * deg * k,
                    s.hand_pose + randn(n, 15, 3) * LOOSE_POSE_DEG * deg * k[..., None],
                    s.betas + randn(*s.betas.shape) * LOOSE_BETAS * k)
    j = out.joints - out.joints[:, :1]
    j = j * torch.exp(randn(n, 1) * LOOSE_SCALE * k)[..., None]
    return j + randn(n, 21, 3) * LOOSE_JITTER_M * k[..., None]


def synthetic_batch(model: HandModel, prior: PosePrior, n: int, generator: torch.Generator,
                    noise2d_px: float = 2.0, noise3d_m: float = 0.002,
                    p_loose3d: float = 0.0) -> Batch:
    """Draw n hands in random orientations, with noisy 3D and 2D skeleton observations; a
    fraction `p_loose3d` of them gets a loose 3D skeleton instead (`loose_skeleton`)."""
    s = prior.sample(n, generator=generator)
    with torch.no_grad():
        out = model(s.global_orient, s.hand_pose, s.betas)
    wrist = out.joints[:, :1]
    verts, joints = out.vertices - wrist, out.joints - wrist
    K, transl = random_cameras(n, generator)
    kp = project(joints + transl[:, None], K)
    kp_noisy = kp + torch.randn(kp.shape, generator=generator) * noise2d_px * \
        torch.rand(n, 1, 1, generator=generator)
    conf = 0.5 + 0.5 * torch.rand(n, 21, generator=generator)
    j_noisy = joints + torch.randn(joints.shape, generator=generator) * noise3d_m * \
        torch.rand(n, 1, 1, generator=generator)
    conf3d = torch.ones(n, 21)
    if p_loose3d > 0:
        loose = torch.rand(n, generator=generator) < p_loose3d
        if loose.any():
            strength = torch.rand(int(loose.sum()), generator=generator)
            sub = PoseSample(*(x[loose] for x in (s.global_orient, s.hand_pose, s.betas)))
            j_noisy[loose] = loose_skeleton(model, sub, strength, generator)
            conf3d[loose] = (1 - LOOSE_CONF_DROP * strength)[:, None]
    cond = Conditions(
        joints3d=j_noisy / SCALE,
        joints3d_mask=conf3d,
        keypoints2d=normalize_keypoints(kp_noisy, conf),
        keypoints2d_conf=conf,
    )
    return Batch(verts, joints, kp, K, transl, cond)

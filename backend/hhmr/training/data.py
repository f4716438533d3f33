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


def synthetic_batch(model: HandModel, prior: PosePrior, n: int, generator: torch.Generator,
                    noise2d_px: float = 2.0, noise3d_m: float = 0.002) -> Batch:
    """Draw n hands in random orientations, with noisy 3D and 2D skeleton observations."""
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
    cond = Conditions(
        joints3d=j_noisy / SCALE,
        joints3d_mask=torch.ones(n, 21),
        keypoints2d=normalize_keypoints(kp_noisy, conf),
        keypoints2d_conf=conf,
    )
    return Batch(verts, joints, kp, K, transl, cond)

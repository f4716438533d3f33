"""Synthetic training batches: hands from the pose prior, their skeletons and 2D views."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hhmr.data.poses import PosePrior
from hhmr.diffusion.gaussian import GaussianDenoiser
from hhmr.diffusion.guidance import project
from hhmr.hand.base import HandModel
from hhmr.models.conditions import Conditions, normalize_keypoints

SCALE = 0.1  # metres per model unit: x0 = wrist-relative vertices / SCALE


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


def model_template(model: HandModel) -> torch.Tensor:
    """The rest hand [V, 3] as the model sees hands: wrist at the origin, model units."""
    v = model.v_template
    return (v - (model.keypoint_regressor @ v)[0]) / SCALE


def training_hands(model: HandModel, prior: PosePrior, seed: int = 0, num: int = 16000,
                   chunk: int = 2000) -> torch.Tensor:
    """`num` training hands [num, V, 3], wrist-relative, in model units (training seeds, apart
    from the batches'; random orientations as in the batches)."""
    hands = []
    for i in range(0, num, chunk):
        gen = torch.Generator().manual_seed(seed * 100_000 + 99_000 + i // chunk)
        s = prior.sample(min(chunk, num - i), generator=gen)
        with torch.no_grad():
            out = model(s.global_orient, s.hand_pose, s.betas)
        hands.append((out.vertices - out.joints[:, :1]) / SCALE)
    return torch.cat(hands)


def fit_gaussian(gaussian: GaussianDenoiser, model: HandModel, prior: PosePrior, seed: int = 0,
                 num: int = 16000, chunk: int = 2000) -> GaussianDenoiser:
    """Fit a Gaussian denoiser to `num` training hands (`training_hands`)."""
    return gaussian.fit(training_hands(model, prior, seed, num, chunk))

"""Condition mappers: 3D skeleton, 2D skeleton and image tokens into one token space.

Every modality always contributes its tokens; a missing modality, joint or patch is
replaced by a learned null token, so one network serves every task. Training drops
conditions at modality level (each with p_modality, all with p_all) and at feature level
(per finger and per joint for skeletons, per patch for images).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FINGER_OF_KEYPOINT = torch.tensor([-1] + [f for f in range(5) for _ in range(4)])


@dataclass
class Conditions:
    """Inputs of the denoiser besides x_t. Absent modalities are None; masks are 1 = known."""

    joints3d: torch.Tensor | None = None  # [B, 21, 3] wrist-relative, model units
    joints3d_mask: torch.Tensor | None = None  # [B, 21]
    keypoints2d: torch.Tensor | None = None  # [B, 21, 2] normalised (see normalize_keypoints)
    keypoints2d_conf: torch.Tensor | None = None  # [B, 21] in [0, 1]; 0 = unknown
    image_tokens: torch.Tensor | None = None  # [B, P + 1, image_dim]: P patches + global
    image_mask: torch.Tensor | None = None  # [B, P + 1]

    def batch_size(self) -> int | None:
        for t in (self.joints3d, self.keypoints2d, self.image_tokens):
            if t is not None:
                return t.shape[0]
        return None

    def repeat(self, n: int) -> Conditions:
        """Each condition repeated n times (hypotheses of one condition in one batch)."""
        return Conditions(**{k: None if v is None else v.repeat_interleave(n, 0)
                             for k, v in self.__dict__.items()})


def normalize_keypoints(kp: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """Centre 2D keypoints [B, 21, 2] on their confident bounding box and scale its longer
    side to 2 (so they lie in about [-1, 1])."""
    big = torch.finfo(kp.dtype).max
    known = (conf > 0)[..., None]
    lo = torch.where(known, kp, torch.full_like(kp, big)).amin(1, keepdim=True)
    hi = torch.where(known, kp, torch.full_like(kp, -big)).amax(1, keepdim=True)
    centre = (lo + hi) / 2
    size = (hi - lo).amax(-1, keepdim=True).clamp_min(1e-6)
    return torch.where(known, (kp - centre) / size * 2, torch.zeros_like(kp))


@dataclass
class DropoutConfig:
    p_modality: float = 0.3
    p_all: float = 0.2
    p_finger: float = 0.1
    p_joint: float = 0.05
    p_patch: float = 0.2
    # per-modality overrides of p_modality (None: p_modality)
    p_joints3d: float | None = None
    p_keypoints2d: float | None = None


def mlp(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c_in, c_out), nn.SiLU(), nn.Linear(c_out, c_out))


class ConditionEncoder(nn.Module):
    """Maps `Conditions` to tokens [B, 21 + 21 + P + 1, dim]."""

    def __init__(self, dim: int = 128, num_patches: int = 16, image_dim: int = 256) -> None:
        super().__init__()
        self.dim, self.num_patches, self.image_dim = dim, num_patches, image_dim
        self.joint_embedding = nn.Parameter(torch.randn(21, dim) * 0.02)
        self.modality_embedding = nn.Parameter(torch.randn(3, dim) * 0.02)
        self.patch_embedding = nn.Parameter(torch.randn(num_patches + 1, dim) * 0.02)
        self.skel3d = mlp(3, dim)
        self.skel2d = mlp(3, dim)
        self.image = nn.Linear(image_dim, dim)
        self.null3d = nn.Parameter(torch.randn(21, dim) * 0.02)
        self.null2d = nn.Parameter(torch.randn(21, dim) * 0.02)
        self.null_image = nn.Parameter(torch.randn(num_patches + 1, dim) * 0.02)

    @property
    def num_tokens(self) -> int:
        return 42 + self.num_patches + 1

    def forward(self, cond: Conditions, batch_size: int) -> torch.Tensor:
        b, dev = batch_size, self.null3d.device
        toks = []
        if cond.joints3d is not None:
            mask = cond.joints3d_mask if cond.joints3d_mask is not None else \
                torch.ones(b, 21, device=dev)
            t = self.skel3d(cond.joints3d) + self.joint_embedding
            toks.append(torch.where(mask[..., None] > 0, t, self.null3d.expand(b, -1, -1)))
        else:
            toks.append(self.null3d.expand(b, -1, -1))
        if cond.keypoints2d is not None:
            conf = cond.keypoints2d_conf if cond.keypoints2d_conf is not None else \
                torch.ones(b, 21, device=dev)
            t = self.skel2d(torch.cat([cond.keypoints2d, conf[..., None]], -1)) + \
                self.joint_embedding
            toks.append(torch.where(conf[..., None] > 0, t, self.null2d.expand(b, -1, -1)))
        else:
            toks.append(self.null2d.expand(b, -1, -1))
        if cond.image_tokens is not None:
            mask = cond.image_mask if cond.image_mask is not None else \
                torch.ones(b, self.num_patches + 1, device=dev)
            t = self.image(cond.image_tokens) + self.patch_embedding
            toks.append(torch.where(mask[..., None] > 0, t, self.null_image.expand(b, -1, -1)))
        else:
            toks.append(self.null_image.expand(b, -1, -1))
        mod = self.modality_embedding
        sizes = (21, 21, self.num_patches + 1)
        return torch.cat([x + mod[i] for i, x in enumerate(toks)], 1)[:, : sum(sizes)]


def drop_conditions(cond: Conditions, cfg: DropoutConfig, generator: torch.Generator
                    ) -> Conditions:
    """Random masking for training, at modality and feature level (returns new masks)."""
    b = cond.batch_size()
    assert b is not None

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    keep_all = (rand(b) >= cfg.p_all).float()
    out = Conditions(**cond.__dict__)
    finger = FINGER_OF_KEYPOINT

    def skeleton_mask(base: torch.Tensor | None, p: float | None) -> torch.Tensor:
        m = torch.ones(b, 21) if base is None else base.clone().cpu()
        p = cfg.p_modality if p is None else p
        m *= (rand(b) >= p).float()[:, None] * keep_all[:, None]
        drop_f = rand(b, 5) < cfg.p_finger
        m[:, 1:] *= (~drop_f[:, finger[1:]]).float()
        m *= (rand(b, 21) >= cfg.p_joint).float()
        return m

    if cond.joints3d is not None:
        mask = skeleton_mask(cond.joints3d_mask, cfg.p_joints3d)
        out.joints3d_mask = mask.to(cond.joints3d.device)
    if cond.keypoints2d is not None:
        conf = torch.ones(b, 21) if cond.keypoints2d_conf is None else \
            cond.keypoints2d_conf.cpu()
        conf = conf * skeleton_mask(None, cfg.p_keypoints2d)
        out.keypoints2d_conf = conf.to(cond.keypoints2d.device)
    if cond.image_tokens is not None:
        p = cond.image_tokens.shape[1]
        m = torch.ones(b, p) if cond.image_mask is None else cond.image_mask.clone().cpu()
        m *= (rand(b, p) >= cfg.p_patch).float()
        m *= (rand(b) >= cfg.p_modality).float()[:, None] * keep_all[:, None]
        out.image_mask = m.to(cond.image_tokens.device)
    return out

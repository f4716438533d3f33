"""Task API over the trained diffusion prior: generate, inpaint, refit3d, fit2d.

Composes the GraphUNet denoiser, the cosine schedule, the DDIM sampler and a guidance operator;
each task returns `Hypotheses` (vertices [n, V, 3] and joints [n, 21, 3] in metres, a score per
hypothesis, timings). Hypotheses of one request are drawn in one batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hhmr.diffusion import CosineSchedule, DDIMSampler
from hhmr.diffusion.guidance import (
    GuidanceOperator,
    JointOperator,
    ProjectionOperator,
    VertexMaskOperator,
    solve_translation,
)
from hhmr.hand import load_hand_model
from hhmr.hand.base import HandModel
from hhmr.mesh.geometry import unique_edges
from hhmr.models import Conditions, GraphUNet
from hhmr.models.conditions import normalize_keypoints
from hhmr.paths import weights_dir
from hhmr.training.data import SCALE

DEFAULT_WEIGHTS = "hhmr_prior.pt"
# guidance scales per operator (tuned on held-out synthetic data, see MODEL_CARD.md)
DEFAULT_GUIDANCE = {"inpaint": 0.02, "refit3d": 0.02, "fit2d": 0.02}


@dataclass
class Hypotheses:
    vertices: torch.Tensor  # [n, V, 3] metres
    joints: torch.Tensor  # [n, 21, 3] metres
    scores: torch.Tensor  # [n], higher is better
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


class HandDiffusionPipeline:
    def __init__(self, net: GraphUNet, hand: HandModel, device: str | torch.device = "cpu"
                 ) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.hand = hand.to(self.device)
        self.schedule = CosineSchedule()
        self.regressor = hand.keypoint_regressor.to(self.device)
        edges = unique_edges(hand.faces.cpu().numpy())
        self.edges = torch.from_numpy(edges.astype(np.int64)).to(self.device)
        v = hand.v_template.to(self.device)
        self.template_edge_len = (v[self.edges[:, 0]] - v[self.edges[:, 1]]).norm(dim=-1)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str = "cpu"
                        ) -> HandDiffusionPipeline:
        from hhmr.training.train import build_model

        path = Path(path) if path else weights_dir() / DEFAULT_WEIGHTS
        if not path.exists():
            raise FileNotFoundError(f"model weights {path} are missing: train them with "
                                    "`hhmr train` or reinstall HHMR")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        hand = load_hand_model()
        if ckpt.get("num_vertices") != hand.num_vertices:
            raise ValueError(f"{path} was trained for {ckpt.get('num_vertices')} vertices, "
                             f"the hand has {hand.num_vertices}: retrain")
        net, _ = build_model(ckpt["config"], hand)
        net.load_state_dict(ckpt["model"])
        return cls(net, hand, device)

    # ---- core sampler -------------------------------------------------------------------
    def sample(self, cond: Conditions, batch: int, operator: GuidanceOperator | None = None,
               steps: int = 10, eta: float = 0.0, guidance_scale: float = 0.0,
               seed: int = 0, known: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> torch.Tensor:
        """DDIM from noise to x0 (metres) for `batch` samples, with optional guidance and,
        for inpainting, replacement of `known` = (x_obs [V,3] metres, keep [V]) at each step."""
        gen = torch.Generator().manual_seed(seed)
        sampler = DDIMSampler(self.schedule, eta=eta)
        v = self.hand.num_vertices
        x = torch.randn(batch, v, 3, generator=gen).to(self.device)
        cond = Conditions(**{k: None if t is None else t.to(self.device)
                             for k, t in cond.__dict__.items()})
        guided = operator is not None and guidance_scale > 0
        for t in sampler.set_timesteps(steps).tolist():
            tt = torch.full((batch,), t, device=self.device)
            if guided:
                with torch.enable_grad():
                    x_in = x.detach().requires_grad_(True)
                    x0 = self.net(x_in, tt, cond)
                    loss = operator.loss(x0 * SCALE).sum()
                    grad = torch.autograd.grad(loss, x_in)[0]
                x = sampler.step(x0.detach(), t, x.detach(), generator=gen) - \
                    guidance_scale * grad
            else:
                with torch.no_grad():
                    x0 = self.net(x, tt, cond)
                x = sampler.step(x0, t, x, generator=gen)
            if known is not None:
                obs, keep = known[0].to(self.device) / SCALE, known[1].to(self.device)
                prev = sampler.previous(t)
                if prev >= 0:
                    noise = torch.randn(x.shape, generator=gen).to(self.device)
                    noisy = self.schedule.add_noise(obs.expand_as(x), noise,
                                                    torch.full((batch,), prev))
                else:
                    noisy = obs.expand_as(x)
                x = torch.where(keep[None, :, None] > 0, noisy, x)
        return x.detach() * SCALE

    def _finish(self, verts: torch.Tensor, scores: torch.Tensor, t0: float,
                **extra: torch.Tensor) -> Hypotheses:
        joints = self.regressor @ verts
        return Hypotheses(verts.cpu(), joints.cpu(), scores.cpu(),
                          {"total_ms": (time.perf_counter() - t0) * 1000},
                          {k: v.cpu() for k, v in extra.items()})

    def regularity(self, verts: torch.Tensor) -> torch.Tensor:
        """Plausibility score: minus the mean relative edge-length change from the template."""
        e = self.edges
        lens = (verts[:, e[:, 0]] - verts[:, e[:, 1]]).norm(dim=-1)
        return -((lens - self.template_edge_len) / self.template_edge_len).abs().mean(-1)

    # ---- tasks ---------------------------------------------------------------------------
    def generate(self, n: int = 4, steps: int = 10, seed: int = 0, eta: float = 0.0
                 ) -> Hypotheses:
        """n unconditional hands (wrist at the origin, random orientations)."""
        t0 = time.perf_counter()
        verts = self.sample(Conditions(), n, steps=steps, seed=seed, eta=eta)
        return self._finish(verts, self.regularity(verts), t0)

    def inpaint(self, vertices: torch.Tensor, keep_mask: torch.Tensor, n: int = 4,
                steps: int = 10, guidance_scale: float | None = None, seed: int = 0,
                replace: bool = True, eta: float = 0.0) -> Hypotheses:
        """Keep the vertices where keep_mask is true, regenerate the rest."""
        t0 = time.perf_counter()
        vertices = _as_tensor(vertices, (self.hand.num_vertices, 3), "vertices")
        keep = torch.as_tensor(keep_mask).reshape(-1).float()
        if keep.shape[0] != self.hand.num_vertices:
            raise ValueError(f"keep_mask must have {self.hand.num_vertices} entries")
        offset = (self.regressor[0] @ vertices.to(self.regressor))  # wrist
        obs = (vertices - offset).to(self.device)
        op = VertexMaskOperator(obs[None], keep.to(self.device))
        s = DEFAULT_GUIDANCE["inpaint"] if guidance_scale is None else guidance_scale
        verts = self.sample(Conditions(), n, op, steps, eta, s, seed,
                            known=(obs, keep) if replace else None)
        verts = verts + offset.to(verts)
        score = self.regularity(verts)
        return self._finish(verts, score, t0)

    def refit3d(self, joints21: torch.Tensor, joint_mask: torch.Tensor | None = None,
                n: int = 4, steps: int = 10, guidance_scale: float | None = None,
                seed: int = 0, eta: float = 0.0) -> Hypotheses:
        """Meshes whose regressed joints match a (partial) 3D skeleton [21, 3] in metres."""
        t0 = time.perf_counter()
        joints = _as_tensor(joints21, (21, 3), "joints21").to(self.device)
        mask = torch.ones(21) if joint_mask is None else torch.as_tensor(joint_mask).float()
        mask = mask.reshape(21).to(self.device)
        if mask.sum() == 0:
            raise ValueError("joint_mask selects no joint")
        wrist_known = bool(mask[0] > 0)
        centre = joints[0] if wrist_known else (mask[:, None] * joints).sum(0) / mask.sum()
        rel = joints - centre
        cond = Conditions(joints3d=(rel / SCALE)[None].repeat(n, 1, 1),
                          joints3d_mask=mask[None].repeat(n, 1))
        op = JointOperator(self.regressor, rel[None], mask[None],
                           align_translation=not wrist_known)
        s = DEFAULT_GUIDANCE["refit3d"] if guidance_scale is None else guidance_scale
        verts = self.sample(cond, n, op, steps, eta, s, seed)
        # place each hypothesis on the known joints (best translation)
        pj = self.regressor @ verts
        w = mask[None, :, None] / mask.sum()
        shift = (w * (rel[None] - pj)).sum(1, keepdim=True)
        verts = verts + shift + centre
        err = ((self.regressor @ verts - joints[None]).norm(dim=-1) * mask).sum(-1) / mask.sum()
        return self._finish(verts, -err * 1000, t0)

    def fit2d(self, keypoints2d: torch.Tensor, confidence: torch.Tensor | None = None,
              K: torch.Tensor | None = None, n: int = 4, steps: int = 10,
              guidance_scale: float | None = None, seed: int = 0, eta: float = 0.0
              ) -> Hypotheses:
        """Meshes matching 2D keypoints [21, 2] (pixels). With intrinsics K [3, 3] the result
        is in the camera frame; without, wrist-relative with a weak-perspective fit."""
        t0 = time.perf_counter()
        kp = _as_tensor(keypoints2d, (21, 2), "keypoints2d").to(self.device)
        conf = torch.ones(21) if confidence is None else torch.as_tensor(confidence).float()
        conf = conf.reshape(21).clamp(0, 1).to(self.device)
        if (conf > 0).sum() < 4:
            raise ValueError("fit2d needs at least 4 keypoints with confidence > 0")
        Kt = None if K is None else _as_tensor(K, (3, 3), "K").to(self.device)[None]
        cond = Conditions(keypoints2d=normalize_keypoints(kp[None], conf[None]).repeat(n, 1, 1),
                          keypoints2d_conf=conf[None].repeat(n, 1))
        op = ProjectionOperator(self.regressor, kp[None], conf[None], Kt)
        s = DEFAULT_GUIDANCE["fit2d"] if guidance_scale is None else guidance_scale
        verts = self.sample(cond, n, op, steps, eta, s, seed)
        projected, solved = op.solve(verts)
        err = ((projected - kp[None]).norm(dim=-1) * conf).sum(-1) / conf.sum()
        extra = {}
        if Kt is not None:
            verts = verts + solved[:, None]
            extra["transl"] = solved
        else:
            extra["weak_scale"], extra["weak_transl"] = solved
        return self._finish(verts, -err, t0, **extra)


def _as_tensor(x, shape: tuple[int, ...], name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor)
                        else x).float()
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def fit_translation(joints: torch.Tensor, kp: torch.Tensor, conf: torch.Tensor,
                    K: torch.Tensor) -> torch.Tensor:
    """Camera translation for wrist-relative joints (re-exported for evaluation code)."""
    return solve_translation(joints, kp, conf, K)

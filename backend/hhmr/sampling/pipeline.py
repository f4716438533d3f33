"""`HandDiffusionPipeline`: the trained net, its optional guide net, the hand and the sampling
settings, composed; a thin facade with one method per task over `run`, which batches
compatible requests on the device.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from hhmr.diffusion import AutoGuidance, CosineSchedule
from hhmr.diffusion.guidance import (
    JointOperator,
    ProjectionOperator,
    bone_influence,
    joint_influence,
)
from hhmr.hand import load_hand_model
from hhmr.hand.base import HandModel
from hhmr.mesh.geometry import unique_edges
from hhmr.models import Conditions
from hhmr.models.loading import load_denoiser
from hhmr.paths import weights_dir
from hhmr.sampling.config import SamplingConfig
from hhmr.sampling.guidance import Replacement, X0Guidance, XtGuidance
from hhmr.sampling.loop import Denoiser, Guidance, NoiseBlock, Progress, sample
from hhmr.sampling.tasks import (
    Fit2D,
    Generate,
    Hypotheses,
    Inpaint,
    Options,
    Plan,
    Refit3D,
    Task,
)

DEFAULT_WEIGHTS = "hhmr_prior.pt"
# Levenberg-Marquardt steps of the pose solved for each hypothesis: on generated hands, 2 come
# within 0.05 mm of the fit error of 8, in a quarter of the time (`hhmr evaluate --task pose`)
POSE_ITERATIONS = 2


class HandDiffusionPipeline:
    def __init__(self, net: torch.nn.Module, hand: HandModel, device: str | torch.device = "cpu",
                 trace: bool | None = None, guide: torch.nn.Module | None = None,
                 config: SamplingConfig | None = None) -> None:
        """`guide`: a weaker net of the same kind for autoguidance; `config`: the sampling
        settings (default: SamplingConfig()). Unguided steps run through frozen TorchScript
        traces (same results, less overhead; by default on the CPU, where it was measured);
        traces copy the weights, so set trace=False while changing them."""
        self.device = torch.device(device)
        trace = self.device.type == "cpu" if trace is None else trace
        self.denoiser = Denoiser(net, self.device, trace)
        self.guide_denoiser = Denoiser(guide, self.device, trace) if guide is not None else None
        self.config = config or SamplingConfig()
        self.hand = hand.to(self.device)
        self.schedule = CosineSchedule()
        self.regressor = hand.keypoint_regressor.to(self.device)
        edges = unique_edges(hand.faces.cpu().numpy())
        self.edges = torch.from_numpy(edges.astype(np.int64)).to(self.device)
        v = hand.v_template.to(self.device)
        self.template_edge_len = (v[self.edges[:, 0]] - v[self.edges[:, 1]]).norm(dim=-1)
        self._influence: dict[str, torch.Tensor] = {}
        self._pose_prior = None

    @property
    def net(self) -> torch.nn.Module:
        return self.denoiser.net

    @property
    def guide(self) -> torch.nn.Module | None:
        return None if self.guide_denoiser is None else self.guide_denoiser.net

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str = "cpu",
                        trace: bool | None = None, guide: str | Path | bool | None = None,
                        sampling: SamplingConfig | None = None) -> HandDiffusionPipeline:
        """Weights from `path` (default: the shipped ones) with the sampling settings saved in
        them, or `sampling`. `guide`: the autoguidance net's weights; None takes the guide the
        settings name (a file beside the weights), False none."""
        hand = load_hand_model()
        path = Path(path) if path else weights_dir() / DEFAULT_WEIGHTS
        net, ckpt = load_denoiser(path, hand)
        config = sampling or SamplingConfig.from_dict(ckpt.get("sampling"))
        if guide is None:
            named = path.parent / config.guide if config.guide else None
            guide = named if named is not None and named.exists() else False
        guide_net = load_denoiser(guide, hand)[0] if guide is not False else None
        return cls(net, hand, device, trace, guide_net, config)

    def with_config(self, config: SamplingConfig) -> HandDiffusionPipeline:
        """The same nets and traces with other sampling settings."""
        other = copy.copy(self)
        other.config = config
        return other

    def warm_up(self, batch_sizes: tuple[int, ...] | None = None) -> float:
        """Build the frozen traces for these batch sizes now (a server's first requests
        would otherwise pay 0.3-0.8 s each); returns the seconds it took."""
        t0 = time.perf_counter()
        if self.denoiser.traced is not None:
            for n in batch_sizes or self.config.warm_batch_sizes:
                self.generate(n, steps=1)
        return time.perf_counter() - t0

    def image_slot(self) -> tuple[int, int]:
        """The image tokens these weights read: (patches + 1, encoder width)."""
        from hhmr.models.conditions import ConditionEncoder

        enc = next(m for m in self.net.modules() if isinstance(m, ConditionEncoder))
        return enc.num_patches + 1, enc.image_dim

    # ---- what tasks use ----------------------------------------------------------------
    def joint_influence(self, kind: str) -> torch.Tensor:
        """The hand's per-keypoint influence [V, 21], "bones" or "smooth" (computed once)."""
        if kind not in self._influence:
            if kind == "bones":
                w = bone_influence(self.regressor, self.hand.weights, self.hand.v_template)
            elif kind == "smooth":
                w = joint_influence(self.regressor, self.edges, 4)
            else:
                raise ValueError(f"joint influence must be 'bones' or 'smooth', got {kind!r}")
            self._influence[kind] = w
        return self._influence[kind]

    def regularity(self, verts: torch.Tensor) -> torch.Tensor:
        """Plausibility score: minus the mean relative edge-length change from the template."""
        e = self.edges
        lens = (verts[:, e[:, 0]] - verts[:, e[:, 1]]).norm(dim=-1)
        return -((lens - self.template_edge_len) / self.template_edge_len).abs().mean(-1)

    def hypotheses(self, verts: torch.Tensor, scores: torch.Tensor, **extra: torch.Tensor
                   ) -> Hypotheses:
        """Hypotheses on the CPU with their regressed joints."""
        joints = self.regressor @ verts
        return Hypotheses(verts.cpu(), joints.cpu(), scores.cpu(), {},
                          {k: v.cpu() for k, v in extra.items()})

    def pose_prior(self):
        """The Gaussian over anatomical joint angles fitted to the pose prior's hands (built
        once; the pose solver's prior when only some joints are known)."""
        if self._pose_prior is None:
            from hhmr.data.poses import PosePrior
            from hhmr.hand.pose_fit import PoseGaussian

            gen = torch.Generator().manual_seed(0)
            angles, _ = PosePrior(self.hand.cpu()).sample_angles(4000, gen)
            self._pose_prior = PoseGaussian.from_angles(angles)
        return self._pose_prior

    def estimate_wrist(self, joints: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Where the wrist [3] of a skeleton [21, 3] lies, from its joints where mask [21] > 0:
        the hand model fitted to them (pose, shape, translation; the pose prior fills in the
        rest)."""
        from hhmr.hand.pose_fit import fit_pose

        fit = fit_pose(self.hand, keypoints=joints[None], keypoint_weights=mask[None],
                       prior=self.pose_prior(), iterations=10)
        return fit.joints[0, 0].to(joints)

    def autoguidance(self, weight: float | None = None) -> AutoGuidance | None:
        """Generation's autoguidance: the configured one when a guide net is loaded, or
        `weight` on its timesteps (1: off); None when off."""
        default = self.config.generate.autoguidance
        if weight is None:
            return default if self.guide is not None else None
        auto = AutoGuidance(float(weight), *((default.t_min, default.t_max) if default
                                             else (0, self.schedule.num_train_steps - 1)))
        if auto.weight == 1.0:  # the net alone
            return None
        if self.guide is None:
            raise ValueError("autoguidance needs a guide net: none is loaded")
        return auto

    # ---- running plans -----------------------------------------------------------------
    def plan(self, task: Task, options: Options | None = None) -> Plan:
        """Validate a request (ValueError on bad input) into a plan for `run`."""
        return task.plan(self, options or Options())

    def run(self, plans: list[Plan], progress: Progress | None = None) -> list[Hypotheses]:
        """Run several plans; compatible ones share one batch on the device. `progress(step,
        total)` is called before each sampling step and may raise to cancel."""
        out: dict[int, Hypotheses] = {}
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(plans):
            groups.setdefault(p.key(), []).append(i)
        for idx in groups.values():
            t0 = time.perf_counter()
            ps = [plans[i] for i in idx]
            verts = self._sample_group(ps, progress)
            for i, p, v in zip(idx, ps, verts.split([p.n for p in ps]), strict=True):
                h = p.finish(self, v)
                if p.central:  # which hypothesis started from the noise's mean
                    h.extra["central"] = torch.arange(p.n) == 0
                out[i] = h
            posed = [i for i, p in zip(idx, ps, strict=True) if p.options.pose]
            t1 = time.perf_counter()
            if posed:
                self.solve_poses([out[i] for i in posed])
            pose_ms = (time.perf_counter() - t1) * 1000
            for i in idx:
                out[i].timings.update(total_ms=(time.perf_counter() - t0) * 1000,
                                      sample_ms=(t1 - t0) * 1000,
                                      batched_requests=float(len(ps)))
                if i in posed:
                    out[i].timings["pose_ms"] = pose_ms
        return [out[i] for i in range(len(plans))]

    def solve_poses(self, hyps: list[Hypotheses]) -> None:
        """Set each hypothesis's `pose` (rig pose, shape and rest-space corrective) with the
        pose solver, all of them in one batch."""
        from hhmr.hand.pose_fit import fit_pose

        verts = torch.cat([h.vertices for h in hyps]).to(self.device)
        fit = fit_pose(self.hand, vertices=verts, iterations=POSE_ITERATIONS)
        parts = {"global_orient": fit.global_orient, "hand_pose": fit.hand_pose,
                 "transl": fit.transl, "betas": fit.betas, "corrective": fit.corrective,
                 "fit_error": fit.error}
        sizes = [len(h.vertices) for h in hyps]
        split = {k: v.detach().cpu().split(sizes) for k, v in parts.items()}
        for j, h in enumerate(hyps):
            h.pose = {k: v[j] for k, v in split.items()}

    def _sample_group(self, ps: list[Plan], progress: Progress | None) -> torch.Tensor:
        """One device batch for plans with equal keys."""
        first = ps[0]
        inputs = {name: None if first.inputs[name] is None else
                  torch.cat([p.inputs[name] for p in ps]).to(self.device)
                  for name in first.inputs}
        cond = Conditions(**{k: None if getattr(first.cond, k) is None else
                             torch.cat([getattr(p.cond, k) for p in ps])
                             for k in first.cond.__dict__})
        guidance = None
        operator = first.task.operator(self, inputs) if first.scale > 0 else None
        if operator is not None:
            guidance = Guidance(self._strategy(first, operator), first.config.guided_fraction)
        replacement = None
        if first.known is not None:
            replacement = Replacement(torch.cat([p.known[0] for p in ps]).to(self.device),
                                      torch.cat([p.known[1] for p in ps]).to(self.device))
        noises = [NoiseBlock(p.options.seed, p.n, p.central) for p in ps]
        return sample(self.denoiser, self.schedule, self.config.sampler, cond, noises,
                      self.hand.num_vertices, first.options.steps, first.options.eta, guidance,
                      replacement, self.guide_denoiser, first.autoguidance, progress)

    def _strategy(self, plan: Plan, operator) -> XtGuidance | X0Guidance:
        cfg, sampler = plan.config, self.config.sampler
        if plan.iterations == 0:
            return XtGuidance(operator, plan.scale, cfg.max_step, cfg.x_t_final_iterations)
        joints_only = isinstance(operator, JointOperator | ProjectionOperator)
        influence = self.joint_influence(sampler.joint_influence) \
            if joints_only and sampler.joint_influence is not None else None
        return X0Guidance(operator, plan.scale, plan.iterations, cfg.max_step,
                          sampler.x0_retries, self.regressor, influence, sampler.hold_camera)

    # ---- one method per task -----------------------------------------------------------
    def _one(self, task: Task, options: Options, progress: Progress | None) -> Hypotheses:
        return self.run([self.plan(task, options)], progress)[0]

    def generate(self, n: int = 4, steps: int = 10, seed: int = 0, eta: float = 0.0,
                 central_first: bool | None = None, autoguidance: float | None = None,
                 progress: Progress | None = None, pose: bool = False) -> Hypotheses:
        """n unconditional hands (wrist at the origin, random orientations). `autoguidance`:
        the guide net's weight, default the configured one when a guide is loaded; 1 off."""
        return self._one(Generate(autoguidance),
                         Options(n, steps, seed, eta, central_first, pose=pose), progress)

    def inpaint(self, vertices, keep_mask, n: int = 4, steps: int = 10,
                guidance_scale: float | None = None, seed: int = 0, replace: bool = True,
                eta: float = 0.0, guidance_space: str | None = None,
                central_first: bool | None = None, guidance_strength: float | None = None,
                progress: Progress | None = None, pose: bool = False) -> Hypotheses:
        """Keep the vertices where keep_mask is true, regenerate the rest."""
        return self._one(Inpaint(vertices, keep_mask, replace),
                         Options(n, steps, seed, eta, central_first, guidance_scale,
                                 guidance_strength, guidance_space, pose), progress)

    def refit3d(self, joints21, joint_mask=None, n: int = 4, steps: int = 10,
                guidance_scale: float | None = None, seed: int = 0, eta: float = 0.0,
                guidance_space: str | None = None, central_first: bool | None = None,
                guidance_strength: float | None = None, progress: Progress | None = None,
                pose: bool = False) -> Hypotheses:
        """Meshes whose regressed joints match a (partial) 3D skeleton [21, 3] in metres."""
        return self._one(Refit3D(joints21, joint_mask),
                         Options(n, steps, seed, eta, central_first, guidance_scale,
                                 guidance_strength, guidance_space, pose), progress)

    def fit2d(self, keypoints2d, confidence=None, K=None, n: int = 4, steps: int = 10,
              guidance_scale: float | None = None, seed: int = 0, eta: float = 0.0,
              guidance_space: str | None = None, central_first: bool | None = None,
              guidance_strength: float | None = None, progress: Progress | None = None,
              pose: bool = False, joints3d=None, joints3d_conf=None,
              image_tokens=None) -> Hypotheses:
        """Meshes matching 2D keypoints [21, 2] (pixels). With intrinsics K [3, 3] the result
        is in the camera frame; without, wrist-relative with a weak-perspective fit.
        `joints3d` [21, 3]: a 3D view of the same hand in camera axes; `image_tokens`
        [P + 1, C]: the photo's (see `Fit2D`)."""
        return self._one(Fit2D(keypoints2d, confidence, K, joints3d, joints3d_conf,
                               image_tokens),
                         Options(n, steps, seed, eta, central_first, guidance_scale,
                                 guidance_strength, guidance_space, pose), progress)


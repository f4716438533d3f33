"""The tasks, one small class each: what a request is, how it becomes conditions and a guidance
operator, and how the sampled meshes become placed, scored hypotheses.

A task is a frozen request (`Refit3D(joints)`); `task.plan(pipe, options)` validates it against
the pipeline's hand and settings and returns a `Plan` the loop can run, alone or batched with
compatible plans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from hhmr.diffusion import AutoGuidance
from hhmr.diffusion.guidance import (
    GuidanceOperator,
    JointOperator,
    ProjectionOperator,
    VertexMaskOperator,
)
from hhmr.models import SCALE, Conditions
from hhmr.models.conditions import normalize_keypoints
from hhmr.sampling.config import TaskConfig

if TYPE_CHECKING:
    from hhmr.sampling.pipeline import HandDiffusionPipeline


@dataclass(frozen=True)
class Options:
    """Settings every task takes. Guidance: a raw `guidance_scale`, or `guidance_strength`
    relative to the tuned scale (1 tuned, 0 none), in `guidance_space` ("x0" or "x_t"; None:
    the task's own); `central_first` None takes the task's default."""

    n: int = 4
    steps: int = 10
    seed: int = 0
    eta: float = 0.0
    central_first: bool | None = None
    guidance_scale: float | None = None
    guidance_strength: float | None = None
    guidance_space: str | None = None
    pose: bool = False  # solve each hypothesis's rig pose and shape (Hypotheses.pose)


@dataclass
class Hypotheses:
    vertices: torch.Tensor  # [n, V, 3] metres
    joints: torch.Tensor  # [n, 21, 3] metres
    scores: torch.Tensor  # [n], higher is better
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    # with Options.pose: global_orient [n, 3], hand_pose [n, 15, 3] (axis-angle), transl
    # [n, 3], betas [n, S], corrective [n, V, 3] (rest-space offsets), fit_error [n] metres
    pose: dict[str, torch.Tensor] | None = None

    def order(self) -> list[int]:
        """Showing order: the central hypothesis (extra "central") first, the sampler's best
        single guess, then the others by score, highest first."""
        order = self.scores.argsort(descending=True, stable=True).tolist()
        central = self.extra.get("central")
        if central is not None and int(central.sum()) == 1:
            first = int(central.nonzero()[0, 0])
            order = [first] + [i for i in order if i != first]
        return order


@dataclass
class Plan:
    """A validated request ready to sample: n samples' conditions and operator inputs."""

    task: Task
    options: Options
    config: TaskConfig
    space: str
    scale: float  # 0: unguided
    iterations: int  # x0 gradient steps per sampling step; 0 in x_t space
    cond: Conditions
    inputs: dict[str, torch.Tensor | None]  # the operator's, per sample
    state: dict[str, Any]  # what `finish` needs
    known: tuple[torch.Tensor, torch.Tensor] | None = None  # replacement: (x_obs m, keep)
    central: bool = False
    autoguidance: AutoGuidance | None = None

    @property
    def n(self) -> int:
        return self.options.n

    def key(self) -> tuple:
        """Plans with equal keys can share one batch."""
        o = self.options
        return (self.task.kind(), o.steps, self.space, self.scale, o.eta,
                self.known is not None, self.iterations, self.config, self.autoguidance)

    def finish(self, pipe: HandDiffusionPipeline, vertices: torch.Tensor) -> Hypotheses:
        return self.task.finish(pipe, self.state, vertices)


class Task:
    """Base of the tasks: `plan` shares guidance and first-hypothesis handling."""

    name: ClassVar[str]  # the task's settings in SamplingConfig

    def config_name(self) -> str:
        return self.name

    def kind(self) -> tuple:
        """Which operator a batch of this task needs."""
        return (self.config_name(),)

    def plan(self, pipe: HandDiffusionPipeline, options: Options) -> Plan:
        config = pipe.config.task(self.config_name())
        space, scale, iterations = config.guidance(
            options.guidance_scale, options.guidance_strength, options.guidance_space)
        cond, inputs, state, known = self.prepare(pipe, options.n)
        central = config.central_first if options.central_first is None \
            else bool(options.central_first)
        return Plan(self, options, config, space, scale, iterations, cond, inputs, state,
                    known, central)

    def prepare(self, pipe: HandDiffusionPipeline, n: int) -> tuple:
        """(conditions, operator inputs, finish state, replacement) for n samples."""
        raise NotImplementedError

    def operator(self, pipe: HandDiffusionPipeline, inputs: dict[str, torch.Tensor | None]
                 ) -> GuidanceOperator | None:
        """The guidance operator of a batch, from its plans' concatenated inputs."""
        return None

    def finish(self, pipe: HandDiffusionPipeline, state: dict, v: torch.Tensor) -> Hypotheses:
        return pipe.hypotheses(v, pipe.regularity(v))


@dataclass(frozen=True)
class Generate(Task):
    """Unconditional hands, wrist at the origin, random orientations. `autoguidance`: the
    guide net's weight w in x0 = D_guide + w (D - D_guide), None for the default, 1 off.
    With `image_tokens` [P + 1, C] (a photo's, `hhmr.encoders`) the hands are those the
    image alone suggests, without autoguidance (the guide reads no image)."""

    autoguidance: float | None = None
    image_tokens: Any = None
    name: ClassVar[str] = "generate"

    def kind(self) -> tuple:
        return ("generate", self.image_tokens is not None)

    def plan(self, pipe: HandDiffusionPipeline, options: Options) -> Plan:
        if options.guidance_scale is not None or options.guidance_strength is not None or \
                options.guidance_space is not None:
            raise ValueError("generate takes no guidance options (see autoguidance)")
        plan = super().plan(pipe, options)
        plan.scale = 0.0
        plan.autoguidance = None if self.image_tokens is not None else \
            pipe.autoguidance(self.autoguidance)
        return plan

    def prepare(self, pipe: HandDiffusionPipeline, n: int) -> tuple:
        if self.image_tokens is None:
            return Conditions(), {}, {}, None
        tokens = as_tensor(self.image_tokens, pipe.image_slot(), "image_tokens")
        return Conditions(image_tokens=tokens[None].repeat(n, 1, 1)), {}, {}, None


@dataclass(frozen=True)
class Inpaint(Task):
    """Keep `vertices` [V, 3] (metres) where `keep` [V] is true and regenerate the rest;
    `replace` also sets the kept vertices at every step."""

    vertices: Any
    keep: Any
    replace: bool = True
    name: ClassVar[str] = "inpaint"

    def config_name(self) -> str:
        return "inpaint" if self.replace else "inpaint_without_replacement"

    def prepare(self, pipe: HandDiffusionPipeline, n: int) -> tuple:
        nv = pipe.hand.num_vertices
        vertices = as_tensor(self.vertices, (nv, 3), "vertices")
        keep = torch.as_tensor(np.asarray(self.keep)).reshape(-1).float()
        if keep.shape[0] != nv:
            raise ValueError(f"keep_mask must have {nv} entries")
        offset = pipe.regressor[0].cpu() @ vertices  # the wrist
        obs = vertices - offset
        inputs = {"target": obs[None].repeat(n, 1, 1), "keep": keep[None].repeat(n, 1)}
        known = (obs[None].repeat(n, 1, 1), keep[None].repeat(n, 1)) if self.replace else None
        return Conditions(), inputs, {"offset": offset}, known

    def operator(self, pipe, inputs):
        return VertexMaskOperator(inputs["target"], inputs["keep"])

    def finish(self, pipe: HandDiffusionPipeline, state: dict, v: torch.Tensor) -> Hypotheses:
        v = v + state["offset"].to(v)
        return pipe.hypotheses(v, pipe.regularity(v))


@dataclass(frozen=True)
class Refit3D(Task):
    """Meshes whose regressed joints match a (partial) 3D skeleton `joints` [21, 3] in metres;
    `joint_mask` [21] marks the known joints (all when None)."""

    joints: Any
    joint_mask: Any = None
    name: ClassVar[str] = "refit3d"

    def _mask(self) -> torch.Tensor:
        mask = torch.ones(21) if self.joint_mask is None else \
            torch.as_tensor(np.asarray(self.joint_mask)).float()
        return mask.reshape(21)

    def kind(self) -> tuple:
        return ("refit3d", bool(self._mask()[0] > 0))  # without the wrist: aligned

    def prepare(self, pipe: HandDiffusionPipeline, n: int) -> tuple:
        joints = as_tensor(self.joints, (21, 3), "joints21")
        mask = self._mask()
        if mask.sum() == 0:
            raise ValueError("joint_mask selects no joint")
        # the net reads wrist-relative skeletons: without the wrist, it is anchored where the
        # pose solver puts it for the given joints (a centroid origin shrank the hands)
        centre = joints[0] if mask[0] > 0 else pipe.estimate_wrist(joints, mask)
        rel = joints - centre
        cond = Conditions(joints3d=(rel / SCALE)[None].repeat(n, 1, 1),
                          joints3d_mask=mask[None].repeat(n, 1))
        inputs = {"target": rel[None].repeat(n, 1, 1), "mask": mask[None].repeat(n, 1)}
        return cond, inputs, {"joints": joints, "mask": mask, "rel": rel, "centre": centre}, None

    def operator(self, pipe, inputs):
        return JointOperator(pipe.regressor, inputs["target"], inputs["mask"],
                             align_translation=not self.kind()[1])

    def finish(self, pipe: HandDiffusionPipeline, state: dict, v: torch.Tensor) -> Hypotheses:
        # each hypothesis placed on the known joints (best translation), scored by their error
        m, r = state["mask"].to(v), state["rel"].to(v)
        pj = pipe.regressor @ v
        shift = ((m[None, :, None] / m.sum()) * (r[None] - pj)).sum(1, keepdim=True)
        v = v + shift + state["centre"].to(v)
        err = ((pipe.regressor @ v - state["joints"].to(v)[None]).norm(dim=-1) * m).sum(-1) \
            / m.sum()
        return pipe.hypotheses(v, -err * 1000)


@dataclass(frozen=True)
class Fit2D(Task):
    """Meshes matching 2D keypoints [21, 2] (pixels) with `confidence` [21]. With intrinsics
    K [3, 3] the result is in the camera frame; without, wrist-relative with a
    weak-perspective fit. `joints3d` [21, 3] (metres, camera axes, any origin; e.g.
    MediaPipe's world landmarks) is a second, 3D view of the same hand: its joints with
    `joints3d_conf` [21] > 0 condition the net, and each hypothesis reports its
    wrist-relative distance to them (`joints3d_mm`, weighted by `joints3d_conf`).
    `image_tokens` [P + 1, C]: the photo's crop through the weights' image encoder
    (`hhmr.encoders`)."""

    keypoints: Any
    confidence: Any = None
    K: Any = None
    joints3d: Any = None
    joints3d_conf: Any = None
    image_tokens: Any = None
    name: ClassVar[str] = "fit2d"

    def kind(self) -> tuple:
        return ("fit2d", self.K is not None, self.joints3d is not None,
                self.image_tokens is not None)

    def prepare(self, pipe: HandDiffusionPipeline, n: int) -> tuple:
        kp = as_tensor(self.keypoints, (21, 2), "keypoints2d")
        conf = torch.ones(21) if self.confidence is None else \
            torch.as_tensor(np.asarray(self.confidence)).float()
        conf = conf.reshape(21).clamp(0, 1)
        if (conf > 0).sum() < 4:
            raise ValueError("fit2d needs at least 4 keypoints with confidence > 0")
        K = None if self.K is None else as_tensor(self.K, (3, 3), "K")
        inputs = {"keypoints": kp[None].repeat(n, 1, 1), "confidence": conf[None].repeat(n, 1),
                  "K": None if K is None else K[None].repeat(n, 1, 1)}
        cond = Conditions(keypoints2d=normalize_keypoints(kp[None], conf[None]).repeat(n, 1, 1),
                          keypoints2d_conf=conf[None].repeat(n, 1))
        state = {"inputs": inputs, "kp": kp, "conf": conf}
        if self.joints3d is not None:
            j3 = as_tensor(self.joints3d, (21, 3), "joints3d")
            c3 = torch.ones(21) if self.joints3d_conf is None else \
                torch.as_tensor(np.asarray(self.joints3d_conf)).float().reshape(21).clamp(0, 1)
            if c3[0] <= 0:
                raise ValueError("joints3d needs the wrist (the net reads wrist-relative joints)")
            rel = j3 - j3[:1]
            cond.joints3d = (rel / SCALE)[None].repeat(n, 1, 1)
            cond.joints3d_mask = (c3 > 0).float()[None].repeat(n, 1)
            state.update(joints3d=rel, joints3d_conf=c3)
        if self.image_tokens is not None:
            slot = pipe.image_slot()
            cond.image_tokens = as_tensor(self.image_tokens, slot, "image_tokens")[None].repeat(
                n, 1, 1)
        return cond, inputs, state, None

    def operator(self, pipe, inputs):
        return ProjectionOperator(pipe.regressor, inputs["keypoints"], inputs["confidence"],
                                  inputs["K"], solve_rotation=True)

    def finish(self, pipe: HandDiffusionPipeline, state: dict, v: torch.Tensor) -> Hypotheses:
        # the hand turned and placed by the camera solved for it, scored by its reprojection
        # error (px); with joints3d, its distance to them is reported beside
        op = self.operator(pipe, {k: None if x is None else x.to(v)
                                  for k, x in state["inputs"].items()})
        projected, solved = op.solve(v)
        v = op.rotate(v)
        kp, conf = state["kp"].to(v), state["conf"].to(v)
        err = ((projected - kp[None]).norm(dim=-1) * conf).sum(-1) / conf.sum()
        extra = {"reprojection_px": err}
        if "joints3d" in state:
            j = pipe.regressor @ v
            c3 = state["joints3d_conf"].to(v)
            d = ((j - j[:, :1] - state["joints3d"].to(v)[None]).norm(dim=-1) * c3).sum(-1) \
                / c3.sum()
            extra["joints3d_mm"] = d * 1000
        if self.K is not None:
            return pipe.hypotheses(v + solved[:, None], -err, transl=solved, **extra)
        return pipe.hypotheses(v, -err, weak_scale=solved[0], weak_transl=solved[1], **extra)


def as_tensor(x, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """x as a finite float tensor of `shape`, or a ValueError that names it."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor)
                        else x).float()
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t

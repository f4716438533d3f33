"""The sampler's settings: frozen dataclasses saved inside the weights file and loaded with them.

Overrides are new objects (`dataclasses.replace`) handed to the pipeline, never assignments to
module state, so several settings can be measured side by side in one process. Every default
here is the shipped one; docs/diffusion.md says why each was chosen and how it was measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from hhmr.diffusion.autoguidance import AutoGuidance
from hhmr.protocol import RECONSTRUCT_MODES

SOLVERS = ("ddim", "dpm++2m")
SPACINGS = ("front", "trailing", "linspace", "quadratic")
SPACES = ("x_t", "x0")
JOINT_INFLUENCES = ("bones", "smooth", None)


def _check(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _known(cls, d: dict) -> None:
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {sorted(unknown)}")


@dataclass(frozen=True)
class SamplerConfig:
    """How the loop steps from noise to a hand, for every task."""

    # solver and timestep spacing of unguided and x0-guided runs; runs that change the sample
    # between steps (x_t guidance, replacement) or add noise (eta > 0) take DDIM on "linspace"
    solver: str = "dpm++2m"
    spacing: str = "front"
    # x0 guidance takes back and halves a step that raised a sample's loss, at most this many
    # extra evaluations per sampling step
    x0_retries: int = 8
    # how x0 guidance through the joints spreads its joint-space step over the surface:
    # "bones" (each vertex follows its bones' end keypoints), "smooth" (the regressor's
    # weights blurred over the mesh) or None (the raw gradient)
    joint_influence: str | None = "bones"
    # fit2d's x0 guidance solves rotation and camera once per sampling step, not per
    # gradient step
    hold_camera: bool = True

    def __post_init__(self) -> None:
        _check("solver", self.solver, SOLVERS)
        _check("spacing", self.spacing, SPACINGS)
        _check("joint_influence", self.joint_influence, JOINT_INFLUENCES)
        if self.x0_retries < 0:
            raise ValueError("x0_retries must be >= 0")


@dataclass(frozen=True)
class TaskConfig:
    """One task's guidance: where it acts, how strongly, on which steps, and where sampling
    starts."""

    space: str = "x0"  # "x0": correct the net's prediction; "x_t": gradient through the net
    x0_scale: float = 0.0  # step size of x0 guidance
    x0_iterations: int = 1  # x0 gradient steps per sampling step
    x_t_scale: float = 0.0  # scale of x_t guidance
    x_t_final_iterations: int = 1  # x_t guided moves at the last step
    max_step: float | None = None  # largest guidance move per step, RMS in model units
    guided_fraction: float | None = None  # guide the first fraction of the steps only
    central_first: bool = False  # hypothesis 0 starts from the noise's mean
    autoguidance: AutoGuidance | None = None  # used when the pipeline has a guide net

    def __post_init__(self) -> None:
        _check("space", self.space, SPACES)
        if self.x0_iterations < 1 or self.x_t_final_iterations < 1:
            raise ValueError("iterations must be >= 1")

    def guidance(self, scale: float | None = None, strength: float | None = None,
                 space: str | None = None) -> tuple[str, float, int]:
        """(space, scale, x0 iterations) for a request: `scale` as given, or `strength` times
        the tuned scale of the space (1 tuned, 0 none); None takes the defaults."""
        if scale is not None and strength is not None:
            raise ValueError("give a guidance scale or a guidance strength, not both")
        space = space or self.space
        _check("guidance space", space, SPACES)
        tuned = self.x0_scale if space == "x0" else self.x_t_scale
        if scale is None:
            scale = tuned * (1.0 if strength is None else float(strength))
        return space, float(scale), self.x0_iterations if space == "x0" else 0


@dataclass(frozen=True)
class PhotoConfig:
    """How `hhmr.reconstruct` turns a photo's detection into conditions (docs/photos.md)."""

    # the default mode: "skel2d" (2D keypoints), "skel2d+lifted" (with the keypoints lifted to
    # the detector's depth, `lift_keypoints`), "skel2d+world" (with the world landmarks that
    # agree with them) or "skel2d+world_all" (with every landmark)
    mode: str = "skel2d+lifted"
    # skel2d+lifted and skel2d+world keep a 3D joint within this fraction of the hand's extent
    # from its keypoint in an orthographic view (`world_residual`), and none when fewer than
    # `min_agreeing` are kept
    world_gate: float = 0.03
    min_agreeing: int = 11
    # skel2d+lifted falls back to the keypoints alone when MediaPipe's two depth estimates
    # disagree by more than this fraction of the hand's extent (`depth_disagreement`)
    max_depth_disagreement: float = 0.10
    # a wrist landmark that fails the gate is moved (x, y) to where the keypoints put it
    # before the others are gated: the net reads wrist-relative joints, so a wrong wrist
    # would shift every landmark it sees
    anchor_wrist: bool = True
    # the frozen encoder whose tokens these weights read in the image slot (hhmr.encoders);
    # None: the slot was never trained, and the "+image" modes are refused
    image_encoder: str | None = None

    def __post_init__(self) -> None:
        _check("photo mode", self.mode, RECONSTRUCT_MODES)


@dataclass(frozen=True)
class SamplingConfig:
    """Every setting of sampling with one set of weights (saved in the weights file as
    "sampling")."""

    sampler: SamplerConfig = SamplerConfig()
    generate: TaskConfig = TaskConfig(autoguidance=AutoGuidance(1.9, t_min=250))
    # with replacement (the default): guiding the free region through the net fits it to the
    # replaced kept region; the early steps matter most
    inpaint: TaskConfig = TaskConfig(space="x_t", x0_scale=0.005, x_t_scale=0.005,
                                     max_step=0.05, guided_fraction=0.6)
    inpaint_without_replacement: TaskConfig = TaskConfig(x0_scale=0.005, x_t_scale=0.005,
                                                         x_t_final_iterations=2)
    refit3d: TaskConfig = TaskConfig(x0_scale=0.005, x0_iterations=10, x_t_scale=0.01,
                                     x_t_final_iterations=2, central_first=True)
    fit2d: TaskConfig = TaskConfig(x0_scale=0.00005, x0_iterations=20, x_t_scale=0.0002,
                                   max_step=0.05, central_first=True)
    # the weaker net that autoguides these weights: a file beside the weights file
    guide: str | None = None
    # batch sizes a server traces before its first request
    warm_batch_sizes: tuple[int, ...] = field(default=(1, 4))
    photo: PhotoConfig = PhotoConfig()

    def task(self, name: str) -> TaskConfig:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; one of {', '.join(TASKS)}")
        return getattr(self, name)

    def with_task(self, name: str, **changes) -> SamplingConfig:
        """A copy with one task's settings changed."""
        return replace(self, **{name: replace(self.task(name), **changes)})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> SamplingConfig:
        """From `to_dict`'s output; missing entries take the defaults, unknown ones fail."""
        if not d:
            return cls()
        d = dict(d)
        _known(cls, d)
        if "sampler" in d:
            _known(SamplerConfig, d["sampler"])
            d["sampler"] = SamplerConfig(**d["sampler"])
        for name in TASKS:
            if name in d:
                _known(TaskConfig, d[name])
                task = dict(d[name])
                if task.get("autoguidance") is not None:
                    task["autoguidance"] = AutoGuidance(**task["autoguidance"])
                d[name] = TaskConfig(**task)
        if "photo" in d:
            _known(PhotoConfig, d["photo"])
            d["photo"] = PhotoConfig(**d["photo"])
        if "warm_batch_sizes" in d:
            d["warm_batch_sizes"] = tuple(d["warm_batch_sizes"])
        return cls(**d)


TASKS = ("generate", "inpaint", "inpaint_without_replacement", "refit3d", "fit2d")


def store_config(weights: str | Path, config: SamplingConfig) -> None:
    """Write `config` into a weights file as the settings it samples with (through a
    temporary file, so an interrupted write keeps the old file whole)."""
    import os

    import torch

    weights = Path(weights)
    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    ckpt["sampling"] = config.to_dict()
    tmp = weights.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, weights)

"""Sampling hands from the trained prior: settings (`config`), guidance strategies (`guidance`),
the loop (`loop`), one class per task (`tasks`) and the facade that composes them
(`HandDiffusionPipeline`)."""

from hhmr.sampling.config import SamplerConfig, SamplingConfig, TaskConfig
from hhmr.sampling.pipeline import DEFAULT_WEIGHTS, HandDiffusionPipeline
from hhmr.sampling.tasks import Fit2D, Generate, Hypotheses, Inpaint, Options, Plan, Refit3D

__all__ = ["DEFAULT_WEIGHTS", "Fit2D", "Generate", "HandDiffusionPipeline", "Hypotheses",
           "Inpaint", "Options", "Plan", "Refit3D", "SamplerConfig", "SamplingConfig",
           "TaskConfig"]

"""Kept so scripts written against `hhmr.pipeline` go on working: the code is `hhmr.sampling`."""

from hhmr.sampling import HandDiffusionPipeline, Hypotheses

__all__ = ["HandDiffusionPipeline", "Hypotheses"]

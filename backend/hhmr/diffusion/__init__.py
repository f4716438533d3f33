"""Noise schedule, DDIM sampler and condition-aligned guidance; independent of any network."""

from hhmr.diffusion.ddim import DDIMSampler
from hhmr.diffusion.guidance import (
    GuidanceOperator,
    JointOperator,
    ProjectionOperator,
    VertexMaskOperator,
)
from hhmr.diffusion.schedule import CosineSchedule

__all__ = [
    "CosineSchedule",
    "DDIMSampler",
    "GuidanceOperator",
    "JointOperator",
    "ProjectionOperator",
    "VertexMaskOperator",
]

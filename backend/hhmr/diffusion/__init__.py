"""Noise schedule, DDIM and DPM-Solver++ samplers, condition-aligned guidance; independent of
any network."""

from hhmr.diffusion.ddim import DDIMSampler, DPMSolverSampler
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
    "DPMSolverSampler",
    "GuidanceOperator",
    "JointOperator",
    "ProjectionOperator",
    "VertexMaskOperator",
]

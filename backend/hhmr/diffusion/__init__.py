"""Noise schedule, DDIM and DPM-Solver++ samplers, condition-aligned guidance, autoguidance;
independent of any network."""

from hhmr.diffusion.autoguidance import AutoGuidance
from hhmr.diffusion.ddim import DDIMSampler, DPMSolverSampler
from hhmr.diffusion.guidance import (
    GuidanceOperator,
    JointOperator,
    ProjectionOperator,
    VertexMaskOperator,
)
from hhmr.diffusion.schedule import CosineSchedule

__all__ = [
    "AutoGuidance",
    "CosineSchedule",
    "DDIMSampler",
    "DPMSolverSampler",
    "GuidanceOperator",
    "JointOperator",
    "ProjectionOperator",
    "VertexMaskOperator",
]

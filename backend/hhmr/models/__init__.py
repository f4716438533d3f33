"""The GraphUNet denoiser, its skip preconditioning, the condition mappers and loading."""

from hhmr.models.conditions import ConditionEncoder, Conditions
from hhmr.models.denoiser import SCALE, X0Denoiser
from hhmr.models.graph_unet import GraphUNet, GraphUNetConfig

__all__ = ["SCALE", "ConditionEncoder", "Conditions", "GraphUNet", "GraphUNetConfig",
           "X0Denoiser"]

"""The GraphUNet denoiser and the condition mappers."""

from hhmr.models.conditions import ConditionEncoder, Conditions
from hhmr.models.graph_unet import GraphUNet, GraphUNetConfig

__all__ = ["ConditionEncoder", "Conditions", "GraphUNet", "GraphUNetConfig"]

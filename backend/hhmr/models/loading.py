"""Build a denoiser from its model settings and load trained weights for inference; shared by
`hhmr train` and the sampling pipeline (inference never imports training)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from hhmr.diffusion.schedule import CosineSchedule
from hhmr.hand.base import HandModel
from hhmr.mesh.hierarchy import load_hierarchy
from hhmr.models.denoiser import X0Denoiser
from hhmr.models.graph_unet import GraphUNet, GraphUNetConfig


def build_denoiser(model: dict, hand: HandModel) -> torch.nn.Module:
    """The net a weights file's [model] settings describe: a GraphUNet, wrapped in EDM's skip
    preconditioning when `sigma_data` is set (every shipped net)."""
    hierarchy = load_hierarchy(hand.v_template.numpy(), hand.faces.numpy(),
                               hand.hierarchy_path)
    known = {f.name for f in fields(GraphUNetConfig)}
    unknown = set(model) - known - {"sigma_data"}
    if unknown:
        raise ValueError(f"unknown model settings {sorted(unknown)} (retired experiments live "
                         "in git tags: docs/research-log.md)")
    net = GraphUNet(hierarchy, GraphUNetConfig.from_dict({k: model[k] for k in known & set(model)}))
    sigma = model.get("sigma_data")
    return net if sigma is None else X0Denoiser(net, CosineSchedule(), sigma)


def read_weights(path: str | Path) -> dict:
    """A `hhmr train` weights file as saved, or a clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model weights {path} are missing: train them with "
                                "`hhmr train` or reinstall HHMR")
    return torch.load(path, map_location="cpu", weights_only=False)


def other_rig(ckpt: dict, hand: HandModel) -> bool:
    """Whether these weights record a rig other than the hand's (files from before the rig
    digest record none and pass)."""
    return ckpt.get("hand_rig") not in (None, hand.rig_digest())


def load_denoiser(path: str | Path, hand: HandModel) -> tuple[torch.nn.Module, dict]:
    """A trained denoiser for inference (no parameter gradients: guidance differentiates
    w.r.t. x_t alone) and the file's contents."""
    ckpt = read_weights(path)
    if ckpt.get("num_vertices") != hand.num_vertices:
        raise ValueError(f"{path} was trained for {ckpt.get('num_vertices')} vertices, "
                         f"the hand has {hand.num_vertices}: retrain")
    if other_rig(ckpt, hand):
        raise ValueError(f"{path} was trained on another rig of this hand (joints or skinning "
                         f"differ: {ckpt['hand_rig']} against {hand.rig_digest()}): use the "
                         "hand asset it was trained with (HHMR_WEIGHTS), or retrain")
    net = build_denoiser(ckpt["config"]["model"], hand)
    net.load_state_dict(ckpt["model"])
    return net.requires_grad_(False), ckpt

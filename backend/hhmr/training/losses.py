"""Training losses on predicted meshes (model units): x0/vertex L1, joints L1 through the
regressor, normal consistency and edge lengths against the ground-truth mesh, an optional x0
squared error; and the per-timestep weights that can rebalance them."""

from __future__ import annotations

import numpy as np
import torch

from hhmr.mesh.geometry import face_normals, unique_edges


class MeshLosses:
    def __init__(self, regressor: torch.Tensor, faces: torch.Tensor,
                 weights: dict[str, float]) -> None:
        self.regressor = regressor
        self.faces = faces
        self.edges = torch.from_numpy(unique_edges(faces.cpu().numpy()).astype(np.int64))
        self.weights = weights

    def __call__(self, pred: torch.Tensor, target: torch.Tensor,
                 sample_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Each term's mean over the batch, or its `sample_weights`-weighted mean ([B])."""
        e = self.edges.to(pred.device)
        per_sample = {
            "vertex": (pred - target).abs().mean((1, 2)),
            # L1 pulls the net to the posterior's median, the squared error to its mean, which
            # is what DDIM assumes; weighted up, it rules where errors are large (high noise)
            "vertex_mse": (pred - target).square().mean((1, 2)),
            "joint": (self.regressor @ pred - self.regressor @ target).abs().mean((1, 2)),
            "normal": (1 - (face_normals(pred, self.faces) *
                            face_normals(target, self.faces)).sum(-1)).mean(1),
            "edge": ((pred[:, e[:, 0]] - pred[:, e[:, 1]]).norm(dim=-1) -
                     (target[:, e[:, 0]] - target[:, e[:, 1]]).norm(dim=-1)).abs().mean(1),
        }
        w = None if sample_weights is None else sample_weights.to(pred.dtype)
        terms = {k: v.mean() if w is None else (w * v).mean() for k, v in per_sample.items()}
        terms["total"] = sum(self.weights.get(k, 0.0) * v for k, v in terms.items())
        return terms


T_WEIGHTINGS = ("uniform", "edm")


def timestep_weights(c_out: torch.Tensor, kind: str = "uniform", max_weight: float = 10.0
                     ) -> torch.Tensor:
    """Loss weight per training timestep, from the denoiser's output scale c_out [T].

    "uniform" weights every timestep alike: an x0 error counts the same at any noise level,
    so at low noise, where x0 errors are a fraction of a millimetre, the net learns little.
    "edm" weights by 1/c_out (EDM's 1/c_out^2 for an L1 loss): the error of the net's own
    output F counts alike at every noise level, capped at `max_weight` times the weight of the
    noisiest step. Both average 1 over the timesteps, so the loss keeps its scale."""
    if kind not in T_WEIGHTINGS:
        raise ValueError(f"unknown timestep weighting {kind!r}: use one of {T_WEIGHTINGS}")
    if kind == "uniform":
        return torch.ones_like(c_out)
    w = (c_out.max() / c_out.clamp_min(1e-12)).clamp(max=max_weight)
    return w / w.mean()

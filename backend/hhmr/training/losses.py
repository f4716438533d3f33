"""Training losses on predicted meshes (model units): x0/vertex L1, joints L1 through the
regressor, normal consistency and edge lengths against the ground-truth mesh."""

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

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.edges.to(pred.device)
        terms = {
            "vertex": (pred - target).abs().mean(),
            "joint": (self.regressor @ pred - self.regressor @ target).abs().mean(),
            "normal": (1 - (face_normals(pred, self.faces) *
                            face_normals(target, self.faces)).sum(-1)).mean(),
            "edge": ((pred[:, e[:, 0]] - pred[:, e[:, 1]]).norm(dim=-1) -
                     (target[:, e[:, 0]] - target[:, e[:, 1]]).norm(dim=-1)).abs().mean(),
        }
        terms["total"] = sum(self.weights.get(k, 0.0) * v for k, v in terms.items())
        return terms

"""`hhmr evaluate`: measured figures, printed as JSON."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from hhmr import metrics
from hhmr.data.poses import PosePrior
from hhmr.hand import load_hand_model


def evaluate_prior(num: int = 200, seed: int = 0, progress: bool = True) -> dict:
    """Self-intersection % and APD (mm) of the pose prior's hands.

    APD is taken over all pairs of the `num` hands with the global orientation removed
    (wrist at the origin, canonical frame), so it measures articulation and shape diversity.
    """
    model = load_hand_model()
    prior = PosePrior(model)
    sample = prior.sample(num, seed=seed)
    with torch.no_grad():
        posed = model(sample.global_orient, sample.hand_pose, sample.betas).vertices
        canonical = model(None, sample.hand_pose, sample.betas).vertices
    faces = model.faces.numpy()
    t0 = time.perf_counter()
    si = np.array([
        metrics.self_intersection_pct(v[None], faces).item()
        for v in tqdm(posed, desc="self-intersection", disable=not progress, unit="hand")
    ])
    inside = model.joint_limits.contains(sample.hand_pose).float().mean().item()
    return {
        "task": "prior",
        "num": num,
        "seed": seed,
        "model": model.name,
        "results": {
            "pose_prior": {
                "si_pct": float(si.mean()),
                "si_samples_with_any_pct": float((si > 0).mean() * 100),
                "apd_mm": float(metrics.apd(canonical[None]).item()),
                "inside_limits_pct": inside * 100,
            }
        },
        "seconds": time.perf_counter() - t0,
    }

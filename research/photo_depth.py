"""Depth on real photos (docs/photos.md), n=1, 10 steps, the shipped weights:
- floor: on the first `--floor` photos, fit2d from the ground truth's own 2D keypoints, with
  its 3D joints as well, and refit3d to those joints alone (what is lost to depth, what the
  hand model can take);
- mix: the lifted skeleton as it is (`lift_keypoints`) with each weight of the image
  landmarks' depth against the world landmarks' z (0: world z alone, 1: image z alone);
- bands: each photo's disagreement between the two depths (`depth_disagreement`) beside the
  PA-MPJPE of `skel2d` and of `skel2d+lifted` without the fallback, by quintile (the top one
  split at the 90th percentile), and both modes' mean with the fallback at each threshold.

    python research/photo_depth.py [--root ../shared/data/real_hgcnn_dev] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from hhmr import metrics
from hhmr.evaluation.photos import _match, _project, load_freihand, same_hand
from hhmr.reconstruct import (
    _depths,
    depth_disagreement,
    detect_hands,
    fit_detection,
    fit_mode,
    lift_keypoints,
)
from hhmr.sampling import HandDiffusionPipeline
from PIL import Image
from tqdm import tqdm

THRESHOLDS = (0.06, 0.08, 0.10, 0.12, 0.14, 0.16)
MIX = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0)


def errors(joints: torch.Tensor, xyz: np.ndarray) -> list[float]:
    """PA-MPJPE and root-relative MPJPE (mm) of joints [21, 3] against the truth."""
    gt = torch.from_numpy(xyz)[None]
    return [float(metrics.pa_mpjpe(joints[None], gt)),
            float(metrics.root_relative_mpjpe(joints[None], gt))]


def floor(pipe: HandDiffusionPipeline, samples: list[dict]) -> dict:
    """fit2d from the true 2D keypoints, with the true 3D joints, and refit3d to those."""
    rows = []
    for s in tqdm(samples, desc="floor", unit="photo"):
        kp, side = _project(s["xyz"], s["K"]), s["hand"] or "right"
        world = s["xyz"] - s["xyz"].mean(0)
        row = []
        for w in (None, world):
            h = fit_detection(pipe, kp, side, s["K"], world=w, n=1, steps=10)
            row += errors(h.joints[h.order()[0]], s["xyz"])
        flip = np.array([-1, 1, 1], np.float32) if side == "left" else np.ones(3, np.float32)
        h = pipe.refit3d(torch.from_numpy((s["xyz"] - s["xyz"][0]) * flip), n=1, steps=10)
        row += errors(h.joints[h.order()[0]] * torch.from_numpy(flip), s["xyz"])
        rows.append(row)
    m = np.mean(rows, 0).round(2).tolist()
    return {"photos": len(rows), "true_2d": m[0:2], "true_2d_and_3d": m[2:4],
            "refit3d_true_3d": m[4:6]}


def mixed(det, K: np.ndarray, weight: float) -> np.ndarray:
    """The lifted skeleton with this weight of the image depth."""
    world_z, image_z, _ = _depths(det.keypoints, det.world, det.depth)
    world = det.world.copy()
    world[:, 2] = (1 - weight) * world_z + weight * image_z
    return lift_keypoints(det.keypoints, world, None, K)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="../shared/data/real_hgcnn_dev")
    ap.add_argument("--limit", type=int, default=None, help="only the first LIMIT photos")
    ap.add_argument("--floor", type=int, default=60, help="photos for the floor rows")
    ap.add_argument("--json", default=None, help="write the result here too")
    args = ap.parse_args()
    pipe = HandDiffusionPipeline.from_pretrained()
    cfg = pipe.config
    never = pipe.with_config(replace(cfg, photo=replace(cfg.photo,
                                                        max_depth_disagreement=float("inf"))))
    samples = load_freihand(Path(args.root))[:args.limit]
    rows, mix = [], []
    for s in tqdm(samples, desc="photos", unit="photo"):
        dets = detect_hands(np.asarray(Image.open(s["image"]).convert("RGB")))
        if not dets:
            continue
        det = _match(dets, s["xyz"], s["K"])
        if not same_hand(det, s["xyz"], s["K"]):  # another hand: not found, as in hhmr evaluate
            continue
        mix.append([errors(torch.from_numpy(mixed(det, s["K"], w)), s["xyz"]) for w in MIX])
        row = [depth_disagreement(det.keypoints, det.world, det.depth)]
        for mode in ("skel2d", "skel2d+lifted"):
            h = fit_mode(never, det, s["hand"] or det.handedness, s["K"], mode, n=1, steps=10)
            row += errors(h.joints[h.order()[0]], s["xyz"])
        rows.append(row)
    a = np.array(rows)
    edges = np.percentile(a[:, 0], [0, 20, 40, 60, 80, 90, 100])
    bands = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (a[:, 0] >= lo) & (a[:, 0] <= hi)
        bands.append({"disagreement": [round(float(lo), 3), round(float(hi), 3)],
                      "photos": int(m.sum()), "skel2d_pa_mm": round(float(a[m, 1].mean()), 2),
                      "lifted_pa_mm": round(float(a[m, 3].mean()), 2)})
    fallback = []
    for t in (*THRESHOLDS, float("inf")):
        use = a[:, 0] <= t
        fallback.append({"threshold": None if t == float("inf") else t,
                         "fallen_back": int((~use).sum()),
                         "pa_mpjpe_mm": round(float(np.where(use, a[:, 3], a[:, 1]).mean()), 2),
                         "rr_mpjpe_mm": round(float(np.where(use, a[:, 4], a[:, 2]).mean()), 2)})
    mix_mm = np.mean(mix, 0).round(2)
    result = {"command": " ".join(["python research/photo_depth.py", *sys.argv[1:]]),
              "photos": len(a), "floor": floor(pipe, samples[:args.floor]),
              "mix": [{"image_depth_weight": w, "pa_mpjpe_mm": float(pa),
                       "rr_mpjpe_mm": float(rr)} for w, (pa, rr) in zip(MIX, mix_mm,
                                                                         strict=True)],
              "shipped_threshold": cfg.photo.max_depth_disagreement,
              "bands": bands, "fallback": fallback}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

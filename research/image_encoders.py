"""Which frozen image encoder's tokens say most about the hand's 3D pose, on renders and on
real photos: a linear probe (ridge regression from tokens to wrist-relative 3D joints),
fitted on the training renders, scored on held-out renders and on the dev photos (crops
around MediaPipe's keypoints, left hands mirrored as the photo path does).

    python research/image_encoders.py [--renders 3000] [--json out.json]

Needs the renders made by `hhmr train --config configs/image.toml` (or made here).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from hhmr import metrics
from hhmr.data.renders import render_set
from hhmr.encoders import ENCODERS, hand_crop, image_encoder
from hhmr.evaluation.photos import _match, load_freihand, same_hand
from hhmr.reconstruct import detect_hands
from hhmr.training.images import cached_tokens
from PIL import Image

DEV = Path(__file__).resolve().parents[1] / "../shared/data/real_hgcnn_dev"


def ridge(x: np.ndarray, y: np.ndarray, lam: float):
    """Ridge regression in its dual form (fewer samples than features); returns predict."""
    mx, my = x.mean(0), y.mean(0)
    sx = x.std(0) + 1e-6
    xs = (x - mx) / sx
    alpha = np.linalg.solve(xs @ xs.T + lam * len(xs) * np.eye(len(xs)), y - my)
    w = xs.T @ alpha
    return lambda z: ((z - mx) / sx) @ w + my


def scores(pred: np.ndarray, gt: np.ndarray) -> dict:
    p = torch.from_numpy(np.array(pred, np.float32).reshape(-1, 21, 3))
    g = torch.from_numpy(np.array(gt, np.float32).reshape(-1, 21, 3))
    return {"pa_mpjpe_mm": round(float(metrics.pa_mpjpe(p, g).mean()), 2),
            "rr_mpjpe_mm": round(float(metrics.root_relative_mpjpe(p, g).mean()), 2)}


def dev_crops(root: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops of the dev photos MediaPipe finds, their mirrored-to-right joints and world
    landmarks (wrist-relative)."""
    crops, joints, world = [], [], []
    for s in load_freihand(root)[:limit]:
        rgb = np.asarray(Image.open(s["image"]).convert("RGB"))
        dets = detect_hands(rgb)
        if not dets:
            continue
        det = _match(dets, s["xyz"], s["K"])
        if not same_hand(det, s["xyz"], s["K"]):  # another hand: not found, as in hhmr evaluate
            continue
        left = (s["hand"] or det.handedness) == "left"
        crops.append(hand_crop(rgb, det.keypoints, mirror=left))
        flip = np.array([-1.0 if left else 1.0, 1, 1], np.float32)
        joints.append((s["xyz"] - s["xyz"][:1]) * flip)
        world.append((det.world - det.world[:1]) * flip)
    return np.stack(crops), np.stack(joints), np.stack(world)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--renders", type=int, default=3000)
    ap.add_argument("--test-renders", type=int, default=256)
    ap.add_argument("--cache", default="runs/renders")
    ap.add_argument("--limit", type=int, default=None, help="dev photos")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    train = render_set(args.renders, 1, args.cache)
    test = render_set(args.test_renders, 2, args.cache, chunk=128)
    crops, dev_joints, dev_world = dev_crops(DEV.resolve(), args.limit)
    y = train.joints.reshape(len(train), -1)
    out = {"renders": args.renders, "test_renders": args.test_renders, "dev_photos": len(crops),
           "lam": args.lam, "command": "python " + " ".join(sys.argv), "results": {}}
    rows = out["results"]  # "what (where)": PA-MPJPE and root-relative MPJPE, mm
    mean_pose = np.broadcast_to(y.mean(0), (len(crops), y.shape[1]))
    rows["mean training pose (dev photos)"] = scores(mean_pose, dev_joints)
    rows["MediaPipe world landmarks (dev photos)"] = scores(dev_world, dev_joints)
    for name in ENCODERS:
        tr = cached_tokens(args.cache, 1, args.renders, name).astype(np.float32)
        te = cached_tokens(args.cache, 2, args.test_renders, name, chunk=128).astype(np.float32)
        dv = image_encoder(name)(crops)
        for part, sl in (("global", slice(16, 17)), ("patches+global", slice(0, 17))):
            f = ridge(tr[:, sl].reshape(len(tr), -1), y, args.lam)
            rows[f"probe: {name} {part} (held-out renders)"] = scores(
                f(te[:, sl].reshape(len(te), -1)), test.joints)
            rows[f"probe: {name} {part} (dev photos)"] = scores(
                f(dv[:, sl].reshape(len(dv), -1)), dev_joints)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Do the dev photos' neighbours leak across folds? (docs/photos.md, "Whose joints")

The dev photos are frames of sequences: a photo's nearest pose in the set is usually the next
frame. Anything fitted on folds of them and scored on the left-out fold (the convention
columns of `hhmr evaluate`, or a learned correction) is scored too kindly when the folds
interleave (photo i in fold i % 5), because a left-out photo's neighbours are in the fitting
folds. This measures that, on MediaPipe's two 3D skeletons (the lifted keypoints, which the
default mode follows, and the world landmarks), with three fold layouts:
- interleaved: photo i in fold i % 5;
- runs: five runs of consecutive photos (what `hhmr.evaluation.convention` uses);
- halves: the first half fitted on the second and the other way round;
and two corrections fitted on the fitting folds, both in the hand's own frame (left hands
mirrored to right):
- offsets: per-joint constant offsets in the bone frames (`convention.cross_fitted`);
- ridge: a linear map from the whole skeleton (wrist frame, hand scale) to the truth, ridge
  penalty `--ridge` (a learned "calibration" of MediaPipe's skeleton; tried, not shipped).

    python research/fold_leakage.py [--root ../shared/data/real_hgcnn_dev] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from hhmr import metrics
from hhmr.evaluation import convention
from hhmr.evaluation.photos import _match, load_freihand, same_hand
from hhmr.reconstruct import detect_hands, lift_keypoints
from PIL import Image
from tqdm import tqdm

FOLDS = convention.FOLDS
LAYOUTS = {"interleaved": lambda i, n: i % FOLDS, "runs": lambda i, n: i * FOLDS // n,
           "halves": lambda i, n: i * 2 // n}


def skeletons(root: Path) -> dict:
    """Each found photo's lifted keypoints and world landmarks [21, 3], truth, side, index."""
    out: dict[str, list] = {"lifted": [], "world": [], "truth": [], "left": [], "index": []}
    for i, s in enumerate(tqdm(load_freihand(root), desc="detect", unit="photo")):
        dets = detect_hands(np.asarray(Image.open(s["image"]).convert("RGB")))
        det = _match(dets, s["xyz"], s["K"]) if dets else None
        if det is None or not same_hand(det, s["xyz"], s["K"]):
            continue
        out["lifted"].append(lift_keypoints(det.keypoints, det.world, det.depth, s["K"]))
        out["world"].append(det.world)
        out["truth"].append(s["xyz"])
        out["left"].append((s["hand"] or det.handedness) == "left")
        out["index"].append(i)
    return {k: [np.asarray(v, np.float64) if k in ("lifted", "world", "truth") else v
                for v in vals] for k, vals in out.items()}


def errors(preds: list[np.ndarray], truths: list[np.ndarray]) -> list[float]:
    """Mean PA-MPJPE and root-relative MPJPE (mm)."""
    p, t = torch.from_numpy(np.array(preds)), torch.from_numpy(np.array(truths))
    return [round(float(metrics.pa_mpjpe(p, t).mean()), 2),
            round(float(metrics.root_relative_mpjpe(p, t).mean()), 2)]


def _wrist_frame(joints: np.ndarray, left: bool):
    """The right-hand joints in the wrist's bone frame over the hand scale [63], with the
    frame, origin and scale to undo it."""
    j = convention._right(joints, left)
    frames, scale = convention.bone_frames(j)
    return ((j - j[0]) @ frames[0].T / scale).ravel(), frames[0], j[0], scale


def ridge(preds: list[np.ndarray], truths: list[np.ndarray], left: list[bool],
          fold: list[int], penalty: float) -> list[np.ndarray]:
    """Each skeleton mapped by the ridge regression fitted on the other folds."""
    x = [_wrist_frame(p, lf) for p, lf in zip(preds, left, strict=True)]
    right = [convention._right(t, lf) for t, lf in zip(truths, left, strict=True)]
    y = np.array([(t - t[0]) @ f.T / s for t, (_, f, _, s) in zip(right, x, strict=True)]
                 ).reshape(len(preds), -1)
    feats = np.array([v[0] for v in x])
    out: list[np.ndarray] = [np.empty(0)] * len(preds)
    for f in sorted(set(fold)):
        fit = np.array([g != f for g in fold])
        mx, my = feats[fit].mean(0), y[fit].mean(0)
        a = feats[fit] - mx
        w = np.linalg.solve(a.T @ a + penalty * np.eye(a.shape[1]), a.T @ (y[fit] - my))
        for i in np.flatnonzero(~fit):
            _, frame, origin, scale = x[i]
            j = ((feats[i] - mx) @ w + my).reshape(21, 3) * scale @ frame + origin
            out[i] = convention._right(j, left[i])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="../shared/data/real_hgcnn_dev")
    ap.add_argument("--ridge", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    if min(args.ridge) <= 0:
        ap.error("--ridge penalties must be positive (the wrist's features are always 0)")
    sk = skeletons(Path(args.root))
    n, truths, left = len(sk["truth"]), sk["truth"], sk["left"]
    rel = np.array([t - t[0] for t in truths])
    dist = np.linalg.norm(rel[:, None] - rel[None], axis=3).mean(2) * 1000  # mm
    np.fill_diagonal(dist, np.inf)
    nearest = dist.argmin(1)
    idx = np.array(sk["index"])
    result = {
        "photos": n,
        "neighbours": {
            "next_photo_mm": round(float(np.median(
                np.diag(dist, 1)[np.diff(idx) == 1])), 1),
            "nearest_photo_mm": round(float(np.median(dist.min(1))), 1),
            "random_photo_mm": round(float(np.median(dist[np.triu_indices(n, 1)])), 1),
            "nearest_is_within_2_photos": round(float(np.mean(
                np.abs(idx[nearest] - idx) <= 2)), 3)},
        "rows": [],
    }
    for source in ("lifted", "world"):
        preds = sk[source]
        result["rows"].append({"skeleton": source, "correction": "none", "layout": "",
                               "pa_rr_mm": errors(preds, truths)})
        for layout, of in LAYOUTS.items():
            fold = [of(i, n) for i in range(n)]
            shifted = convention.cross_fitted(preds, truths, left, fold=fold)
            result["rows"].append({"skeleton": source, "correction": "offsets",
                                   "layout": layout, "pa_rr_mm": errors(shifted, truths)})
            for penalty in args.ridge:
                result["rows"].append({"skeleton": source, "correction": f"ridge {penalty}",
                                       "layout": layout, "pa_rr_mm": errors(
                                           ridge(preds, truths, left, fold, penalty), truths)})
    result["command"] = " ".join(["python research/fold_leakage.py", *sys.argv[1:]])
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

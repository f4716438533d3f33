"""Experiment (not shipped): does MediaPipe's lite landmark model, averaged with the full
one, give the lifted skeleton a better depth? On the dev photos, the raw lifted skeleton's
PA-MPJPE (no diffusion) with the full model's two depths (what ships), the lite model's, all
four averaged, and all four with the two models' keypoints averaged.

    python research/lite_depth.py [--root ../shared/data/real_hgcnn_dev]
"""

import argparse
import json
from pathlib import Path

import mediapipe as mp
import numpy as np
import torch
from hhmr.evaluation.photos import _match, load_freihand
from hhmr.metrics import pa_mpjpe
from hhmr.reconstruct import _depths, detect_hands, detections
from PIL import Image


def lift(kp: np.ndarray, dz: np.ndarray, scale: float, K: np.ndarray) -> np.ndarray:
    z = (K[0, 0] + K[1, 1]) / 2 / scale + dz
    return np.stack([(kp[:, 0] - K[0, 2]) * z / K[0, 0], (kp[:, 1] - K[1, 2]) * z / K[1, 1], z],
                    1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="../shared/data/real_hgcnn_dev")
    args = ap.parse_args()
    lite = mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=4,
                                    min_detection_confidence=0.3, model_complexity=0)
    rows = []
    for s in load_freihand(Path(args.root)):
        rgb = np.ascontiguousarray(np.asarray(Image.open(s["image"]).convert("RGB")))
        K, xyz = s["K"], s["xyz"]
        full = detect_hands(rgb)
        small = detections(lite.process(rgb), rgb.shape[1], rgb.shape[0])
        if not full or not small:
            continue
        f, li = _match(full, xyz, K), _match(small, xyz, K)
        kp = f.keypoints
        a, b, scale = _depths(kp, f.world, f.depth)
        c, d, _ = _depths(kp, li.world, li.depth)
        kpm = (kp + li.keypoints) / 2
        a2, b2, scale2 = _depths(kpm, f.world, f.depth)
        c2, d2, _ = _depths(kpm, li.world, li.depth)
        skeletons = {"full (shipped)": lift(kp, (a + b) / 2, scale, K),
                     "lite": lift(kp, (c + d) / 2, scale, K),
                     "full + lite depths": lift(kp, (a + b + c + d) / 4, scale, K),
                     "full + lite depths and keypoints": lift(kpm, (a2 + b2 + c2 + d2) / 4,
                                                               scale2, K)}
        gt = torch.tensor(xyz)[None]
        rows.append({k: float(pa_mpjpe(torch.tensor(v, dtype=torch.float32)[None], gt)[0])
                     for k, v in skeletons.items()})
    print(json.dumps({"photos": len(rows), "pa_mpjpe_mm": {
        k: round(float(np.mean([r[k] for r in rows])), 2) for k in rows[0]}}, indent=1))


if __name__ == "__main__":
    main()

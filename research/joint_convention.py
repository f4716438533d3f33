"""Whose joints (docs/photos.md): where the open hand, MediaPipe and two real annotated sets
put the joints along each finger, and what the difference costs PA-MPJPE.

- proportions: each bone's length over the hand's palm length (wrist to the index, middle
  and ring MCPs, mean), medians over each set;
- MCP: the MCP's place along the chain wrist-MCP-PIP-DIP-tip (0 wrist, 1 tip), and how far
  the model's is from the annotated one at the annotated chain's length (mm);
- cost: PA-MPJPE of the ground truth itself with each bone rescaled to the model's (or
  MediaPipe's) proportions, directions kept: what a perfect pose in that convention scores.

    python research/joint_convention.py [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from hhmr import metrics
from hhmr.evaluation.photos import _match, load_freihand, same_hand
from hhmr.hand import KEYPOINT_PARENTS
from hhmr.hand.open_hand import OpenHand
from hhmr.reconstruct import detect_hands
from PIL import Image
from tqdm import tqdm

PARENTS = np.array(KEYPOINT_PARENTS[1:])
DATA = Path("../shared/data")
FINGERS = ("index", "middle", "ring", "little")


def bones(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x[1:] - x[PARENTS], axis=1)  # [20], bone into joint j + 1


def proportions(x: np.ndarray) -> np.ndarray:
    b = bones(x)
    return b / b[[4, 8, 12]].mean()  # wrist -> index, middle, ring MCP


def mcp_place(x: np.ndarray) -> np.ndarray:
    """Each finger's MCP along its chain from the wrist to the tip (0..1) [4]."""
    b = bones(x)
    chains = b[4:].reshape(4, 4)  # wrist->MCP, MCP->PIP, PIP->DIP, DIP->tip
    return chains[:, 0] / chains.sum(1)


def rescaled(x: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """x with each bone scaled by ratio [20], its direction kept."""
    out = x.copy()
    b = (x[1:] - x[PARENTS]) * ratio[:, None]
    for j in range(1, 21):
        out[j] = out[PARENTS[j - 1]] + b[j - 1]
    return out


def pa(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(metrics.pa_mpjpe(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write the result here too")
    args = ap.parse_args()
    model = OpenHand()().joints[0].detach().double().numpy()
    dev = load_freihand(DATA / "real_hgcnn_dev")
    interhand = load_freihand(DATA / "real_interhand_sample")
    world = []  # MediaPipe's world landmarks on the dev photos it finds
    for s in tqdm(dev, desc="detect", unit="photo"):
        dets = detect_hands(np.asarray(Image.open(s["image"]).convert("RGB")))
        if dets and same_hand(det := _match(dets, s["xyz"], s["K"]), s["xyz"], s["K"]):
            world.append(det.world.astype(np.float64))
    sets = {"open_hand_model": [model], "mediapipe_world_on_dev": world,
            "real_hgcnn_dev": [s["xyz"].astype(np.float64) for s in dev],
            "real_interhand_sample": [s["xyz"].astype(np.float64) for s in interhand]}
    prop = {k: np.median([proportions(x) for x in v], 0) for k, v in sets.items()}
    place = {k: np.median([mcp_place(x) for x in v], 0) for k, v in sets.items()}
    truth = sets["real_hgcnn_dev"]
    chain = np.median([bones(x)[4:].reshape(4, 4).sum(1) for x in truth], 0)  # mm below
    dev_bones = np.median([bones(x) for x in truth], 0)
    cost = {}
    for name in ("open_hand_model", "mediapipe_world_on_dev"):
        ratio = np.median([bones(x) for x in sets[name]], 0) / dev_bones
        ratio /= ratio[[4, 8, 12]].mean()  # proportions only: PA-MPJPE ignores scale
        cost[name] = round(float(np.mean([pa(rescaled(x, ratio), x) for x in truth])), 2)
    result = {
        "command": " ".join(["python research/joint_convention.py", *sys.argv[1:]]),
        "counts": {k: len(v) for k, v in sets.items()},
        "proportions": {k: [round(float(x), 2) for x in v] for k, v in prop.items()},
        "mcp_place": {k: dict(zip(FINGERS, (round(float(x), 3) for x in v), strict=True))
                      for k, v in place.items()},
        "model_mcp_beyond_dev_mm": dict(zip(FINGERS, (
            round(float(x), 1) for x in (place["open_hand_model"] - place["real_hgcnn_dev"])
            * chain * 1000), strict=True)),
        "pa_mpjpe_of_truth_in_proportions_of_mm": cost,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Whose joints (docs/photos.md): where the open hand, MediaPipe and two real annotated sets
put the joints along each finger, and what the difference costs PA-MPJPE.

- proportions: each bone's length over the hand's palm length (wrist to the index, middle
  and ring MCPs, mean), medians over each set;
- MCP: the MCP's place along the chain wrist-MCP-PIP-DIP-tip (0 wrist, 1 tip), and how far
  the model's is from the annotated one at the annotated chain's length (mm);
- cost: PA-MPJPE of the ground truth itself with each bone rescaled to the mean open hand's
  (or MediaPipe's) proportions, directions kept (the fit's shape freedom takes back part);
- control: the default mode on the dev photos (n=1), its joints as they are, with every
  joint's cross-fitted offset (`hhmr.evaluation.convention`, as `hhmr evaluate`), and with
  the four finger MCPs' alone (all axes; along the bone only): how much of the convention
  figure is the MCPs' definition.

    python research/joint_convention.py [--json F] [--figure docs/images/joint_convention.png]
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
from hhmr.hand import KEYPOINT_PARENTS
from hhmr.hand.open_hand import OpenHand
from hhmr.reconstruct import Detection, detect_hands, fit_mode
from hhmr.sampling import HandDiffusionPipeline
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


def both(preds: list[np.ndarray], truths: list[np.ndarray]) -> list[float]:
    """Mean PA-MPJPE and root-relative MPJPE (mm)."""
    rr = [float(metrics.root_relative_mpjpe(torch.from_numpy(p)[None], torch.from_numpy(t)[None]))
          for p, t in zip(preds, truths, strict=True)]
    return [round(float(np.mean([pa(p, t) for p, t in zip(preds, truths, strict=True)])), 2),
            round(float(np.mean(rr)), 2)]


def control(dev: list[dict], dets: list[Detection | None]) -> dict:
    """The default mode's joints on the dev photos as they are and cross-fitted three ways."""
    pipe = HandDiffusionPipeline.from_pretrained()
    preds, truths, left = [], [], []
    for s, det in tqdm(list(zip(dev, dets, strict=True)), desc="fit", unit="photo"):
        if det is None:
            continue
        side = s["hand"] or det.handedness
        h = fit_mode(pipe, det, side, s["K"], None, n=1, steps=10)
        preds.append(h.joints[h.order()[0]].double().numpy())
        truths.append(s["xyz"].astype(np.float64))
        left.append(side == "left")
    mcp = np.zeros((21, 3))
    mcp[[5, 9, 13, 17]] = 1
    out = {"mode": pipe.config.photo.mode, "photos": len(preds), "as_is": both(preds, truths)}
    for name, mask in (("every_joint_offset", None), ("mcp_offsets_only", mcp),
                       ("mcp_along_bone_only", mcp * [1, 0, 0])):
        shifted = convention.cross_fitted(preds, truths, left, mask=mask)
        if shifted is not None:  # None: too few photos found
            out[name] = both(shifted, truths)
    return out


def along_chain(x: np.ndarray, finger: int, place: float) -> np.ndarray:
    """The point at `place` (0..1) along finger's (0 index .. 3 little) chain of joints x."""
    idx = [0, *range(5 + 4 * finger, 9 + 4 * finger)]
    seg = np.linalg.norm(np.diff(x[idx], axis=0), axis=1)
    d = place * seg.sum()
    k = min(int(np.searchsorted(np.cumsum(seg), d)), 3)
    start = seg[:k].sum()
    return x[idx[k]] + (d - start) / max(seg[k], 1e-9) * (x[idx[k + 1]] - x[idx[k]])


def figure(path: str, model: np.ndarray, vertices: np.ndarray, place: dict) -> None:
    """The open hand from the back with its joints, and where each set's MCP would be along
    its fingers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 6.4))
    ax.scatter(vertices[:, 0] * 1000, vertices[:, 1] * 1000, s=2, c="0.75")
    ax.scatter(model[:, 0] * 1000, model[:, 1] * 1000, s=18, c="0.3", label="open hand joints")
    style = {"open_hand_model": ("tab:red", "o", "open hand's MCP"),
             "mediapipe_world_on_dev": ("tab:orange", "s", "MediaPipe's world landmarks"),
             "real_hgcnn_dev": ("tab:blue", "D", "real_hgcnn_dev (annotated)"),
             "real_interhand_sample": ("tab:green", "^", "real_interhand_sample (annotated)")}
    for name, places in place.items():
        colour, marker, label = style[name]
        pts = np.array([along_chain(model, f, p) for f, p in enumerate(places)]) * 1000
        ax.scatter(pts[:, 0], pts[:, 1], s=60, c=colour, marker=marker, label=label,
                   edgecolors="k", linewidths=0.5, zorder=3)
    ax.set_aspect("equal")
    ax.set_xlabel("mm")
    ax.set_ylabel("mm")
    ax.set_title("Where each set puts the finger MCPs,\nplaced along the open hand's fingers")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write the result here too")
    ap.add_argument("--figure", default=None, help="draw the MCP places here (png)")
    args = ap.parse_args()
    rest = OpenHand()()
    model = rest.joints[0].detach().double().numpy()
    dev = load_freihand(DATA / "real_hgcnn_dev")
    interhand = load_freihand(DATA / "real_interhand_sample")
    found = []  # MediaPipe's detection of each dev photo's hand, or None
    for s in tqdm(dev, desc="detect", unit="photo"):
        dets = detect_hands(np.asarray(Image.open(s["image"]).convert("RGB")))
        det = _match(dets, s["xyz"], s["K"]) if dets else None
        found.append(det if det is not None and same_hand(det, s["xyz"], s["K"]) else None)
    world = [d.world.astype(np.float64) for d in found if d is not None]
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
        "control_pa_rr_mm": control(dev, found),
    }
    if args.figure:
        figure(args.figure, model, rest.vertices[0].detach().numpy(), place)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

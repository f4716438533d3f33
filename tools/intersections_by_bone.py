"""Where hands self-intersect: each intersecting face pair classified by the bones that
dominate its two faces (skinning weights): within one bone (a fold or collapse of that part),
two bones of one finger, two fingers, or the palm against a finger. For generated hands, the
pose prior's and the PCA baseline's, on the tuning seed (100). Prints one JSON object.

Usage: python tools/intersections_by_bone.py [WEIGHTS.pt] [--num 64]   (about a minute)
"""

import argparse
import json
from collections import Counter

import numpy as np
import torch
from hhmr.baselines import PosePCA
from hhmr.data.poses import PosePrior
from hhmr.hand import JOINT_NAMES
from hhmr.hand.topology import finger_of_joint
from hhmr.mesh import self_intersecting_pairs
from hhmr.pipeline import HandDiffusionPipeline

SEED = 1_000_100


def category(a: int, b: int) -> str:
    """Bones are the 16 kinematic joints: 0 the wrist (palm), then three per finger, each
    named after the joint that moves the segment beyond it (index_dip: the index tip)."""
    if a == b:
        return "same_bone"
    if a == 0 or b == 0:
        return "palm_finger"
    return "same_finger" if finger_of_joint(a) == finger_of_joint(b) else "finger_finger"


def classify(verts: torch.Tensor, faces: np.ndarray, face_bone: np.ndarray) -> dict:
    cats: Counter = Counter()
    bones: Counter = Counter()
    for v in verts:
        for i, j in self_intersecting_pairs(v, faces):
            a, b = int(face_bone[i]), int(face_bone[j])
            cats[category(a, b)] += 1
            if a == b:
                bones[JOINT_NAMES[a]] += 1
    total = sum(cats.values())
    return {"pairs_per_hand": round(total / len(verts), 2),
            "share": {k: round(cats[k] / max(total, 1), 3) for k in
                      ("same_bone", "same_finger", "finger_finger", "palm_finger")},
            "same_bone_by_bone": dict(bones.most_common())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="?", default=None)
    ap.add_argument("--num", type=int, default=64)
    args = ap.parse_args()
    pipe = HandDiffusionPipeline.from_pretrained(args.weights)
    hand = pipe.hand.cpu()
    faces = hand.faces.cpu().numpy()
    face_bone = hand.weights.cpu().numpy()[faces].sum(1).argmax(1)
    gen = torch.Generator().manual_seed(SEED)
    s = PosePrior(hand, random_orient=False).sample(args.num, generator=gen)
    with torch.no_grad():
        meshes = {"diffusion": pipe.generate(args.num, seed=SEED).vertices,
                  "pose_prior": hand(None, s.hand_pose, s.betas).vertices,
                  "pca": hand(None, PosePCA(hand).sample(args.num, gen), s.betas).vertices}
    out = {name: classify(v, faces, face_bone) for name, v in meshes.items()}
    print(json.dumps({"weights": args.weights or "weights/hhmr_prior.pt", "num": args.num,
                      "seed": 100, **out}))


if __name__ == "__main__":
    main()

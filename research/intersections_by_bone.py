"""Where hands self-intersect: each intersecting face pair classified by the bones that
dominate its two faces (skinning weights): within one bone (a fold or collapse of that part),
two bones of one finger, two fingers, or the palm against a finger. For generated hands, the
pose prior's and the PCA baseline's: the sets `hhmr evaluate --task generate` measures, on
the tuning seed (100) unless told. Prints one JSON object.

Usage: python research/intersections_by_bone.py [WEIGHTS.pt] [--num 64] [--seed 100]
       [--solver ddim|dpm++2m] [--spacing trailing|front|...]   (about a minute)
--solver and --spacing change the weights' saved settings (`SamplingConfig.sampler`).
"""

import argparse
import json
from collections import Counter

import numpy as np
import torch
from compare_weights import add_generation_args, generation_pipeline
from hhmr.evaluation.tasks import generation_sets
from hhmr.hand import JOINT_NAMES
from hhmr.hand.topology import finger_of_joint
from hhmr.mesh import self_intersecting_pairs


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
    add_generation_args(ap)
    args = ap.parse_args()
    pipe = generation_pipeline(args)
    sampler = pipe.config.sampler
    faces = pipe.hand.faces.cpu().numpy()
    face_bone = pipe.hand.weights.cpu().numpy()[faces].sum(1).argmax(1)
    sets = generation_sets(pipe, args.num, args.seed)
    out = {name: classify(v, faces, face_bone) for name, v in sets.items()}
    print(json.dumps({"weights": args.weights or "weights/hhmr_prior.pt", "num": args.num,
                      "seed": args.seed, "solver": sampler.solver,
                      "spacing": sampler.spacing, **out}))


if __name__ == "__main__":
    main()

"""Refit to one finger's four joints without the wrist: the wrist anchored by the pose solver
(what ships) against the centroid of the given joints as the skeleton's origin (before the
pose solver; the net, trained on wrist-relative skeletons, then read the finger as lying at
the wrist and made small hands). Evaluation seed 0, held-out hands, one JSON line per origin.

Usage: python research/finger_refit_anchor.py [--num 50] [--n 8]   (about a minute)
"""

from __future__ import annotations

import argparse
import copy
import json
import os

import torch
from hhmr.evaluation.tasks import eval_refit3d_finger
from hhmr.sampling import HandDiffusionPipeline


class CentroidOrigin(HandDiffusionPipeline):
    """The pipeline with the old origin for skeletons without a wrist: the given joints'
    centroid."""

    def estimate_wrist(self, joints: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (mask[:, None] * joints).sum(0) / mask.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=50)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    pipe = HandDiffusionPipeline.from_pretrained()
    old = copy.copy(pipe)
    old.__class__ = CentroidOrigin
    for name, p in (("pose_solver_wrist", pipe), ("centroid_origin", old)):
        r = eval_refit3d_finger(p, args.num, args.seed, 10, args.n, progress=False)
        print(json.dumps({"origin": name, "num": args.num, "n": args.n, **r}))


if __name__ == "__main__":
    main()

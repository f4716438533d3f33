"""Where generated hands are less diverse than the pose prior: APD (the generation metric)
split into hand size and pose, and per region (palm, each finger), for generated hands, the
pose prior's and the PCA baseline's, the same sets `hhmr evaluate --task generate` measures,
on the tuning seed (100) unless told. Prints one JSON object.

- size: palm length (wrist to middle MCP keypoint), mean and standard deviation in mm.
- apd_size_free_mm: APD after scaling each hand to the set's mean palm length (pose only).
- apd_by_region_mm: APD over the vertices each region's bones dominate.

Usage: python research/dispersion.py [WEIGHTS.pt] [--num 64] [--seed 100]
       [--solver ddim|dpm++2m] [--spacing trailing|front|...] [--steps 10]
       [--eta 0.0]   (eta > 0 adds fresh noise at each step and samples with DDIM; under a minute)
--solver and --spacing change the weights' saved settings (`SamplingConfig.sampler`).
"""

import argparse
import json

import torch
from compare_weights import add_generation_args, generation_pipeline
from hhmr import metrics
from hhmr.evaluation.tasks import generation_sets
from hhmr.hand import FINGERS, KEYPOINT_NAMES
from hhmr.hand.topology import finger_of_joint

MIDDLE_MCP = KEYPOINT_NAMES.index("middle_mcp")


def describe(verts: torch.Tensor, regressor: torch.Tensor, regions: dict[str, torch.Tensor]
             ) -> dict:
    """Size and APD figures of one set of wrist-centred hands [N, V, 3] (metres)."""
    palm = (regressor @ verts)[:, MIDDLE_MCP].norm(dim=-1)  # wrist is at the origin
    scaled = verts * (palm.mean() / palm)[:, None, None]
    return {
        "apd_mm": round(float(metrics.apd(verts[None])), 2),
        "palm_length_mm": {"mean": round(float(palm.mean()) * 1000, 2),
                           "sd": round(float(palm.std()) * 1000, 2)},
        "apd_size_free_mm": round(float(metrics.apd(scaled[None])), 2),
        "apd_by_region_mm": {name: round(float(metrics.apd(verts[None][:, :, idx])), 2)
                             for name, idx in regions.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_generation_args(ap)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eta", type=float, default=0.0)
    args = ap.parse_args()
    pipe = generation_pipeline(args)
    sampler = pipe.config.sampler
    bone = pipe.hand.weights.cpu().argmax(1)  # dominant bone of each vertex
    finger = torch.tensor([-1 if int(b) == 0 else finger_of_joint(int(b)) for b in bone])
    regions = {"palm": torch.nonzero(finger == -1).squeeze(1)}
    regions |= {name: torch.nonzero(finger == f).squeeze(1) for f, name in enumerate(FINGERS)}
    sets = generation_sets(pipe, args.num, args.seed, args.steps, args.eta)
    reg = pipe.regressor.cpu()
    out = {name: describe(v, reg, regions) for name, v in sets.items()}
    print(json.dumps({"weights": args.weights or "weights/hhmr_prior.pt", "num": args.num,
                      "seed": args.seed, "steps": args.steps, "eta": args.eta,
                      "solver": "ddim" if args.eta > 0 else sampler.solver,
                      "spacing": sampler.spacing, **out}))


if __name__ == "__main__":
    main()

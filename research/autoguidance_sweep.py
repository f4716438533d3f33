"""Tune generation's autoguidance on the tuning seed (100; never the evaluation seed 0).

For each guidance weight w and first guided timestep t_min (x0 = D_guide + w (D - D_guide) at
timesteps >= t_min; hhmr.diffusion.autoguidance), generates --num hands with the default
sampler and describes them as `hhmr evaluate --task generate` does: APD, self-intersection,
fidelity and coverage against 2000 held-out prior hands, plus the palm-length s.d. (hand
size). The pose prior's and the PCA baseline's sets of the same seed come first. Prints a row
per variant and writes one JSON object (--out).

Usage: python research/autoguidance_sweep.py [--weights W.pt] [--guide G.pt]
         [--weight 1 1.5 2 2.5] [--t-min 0 500] [--num 128] [--seed 100] [--out FILE]
(the defaults: the shipped weights and the guide their settings name; a few minutes on the
2-core CPU). Each variant is the weights' settings with generation's autoguidance changed
(`SamplingConfig.with_task`), sampled through `pipe.with_config` in this one process.
"""

import argparse
import hashlib
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from hhmr import metrics
from hhmr.diffusion.autoguidance import AutoGuidance
from hhmr.evaluation.tasks import describe_set, generated_hands, generation_sets, reference_hands
from hhmr.paths import weights_dir
from hhmr.sampling import DEFAULT_WEIGHTS, HandDiffusionPipeline


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="default: weights/hhmr_prior.pt")
    ap.add_argument("--guide", default=None,
                    help="default: the one the weights' settings name (weights/hhmr_guide.pt)")
    ap.add_argument("--weight", type=float, nargs="+", default=[1.0, 1.5, 2.0, 2.5])
    ap.add_argument("--t-min", type=int, nargs="+", default=[0, 500])
    ap.add_argument("--num", type=int, default=128)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args()
    weights = Path(args.weights) if args.weights else weights_dir() / DEFAULT_WEIGHTS
    pipe = HandDiffusionPipeline.from_pretrained(weights, guide=args.guide)
    if args.guide:
        guide = Path(args.guide)
    elif pipe.config.guide and pipe.guide is not None:
        guide = weights.parent / pipe.config.guide
    else:
        raise SystemExit(f"{weights} names no guide net that exists: give --guide")
    default = pipe.config.generate.autoguidance
    reference = reference_hands(pipe, args.seed)
    result = {"command": "python " + shlex.join(sys.argv), "weights": str(weights),
              "weights_sha256": sha256(weights), "guide": str(guide),
              "guide_sha256": sha256(guide), "num": args.num, "seed": args.seed,
              "default": asdict(default) if default else None,
              "variants": {}}

    def record(name: str, verts: torch.Tensor) -> None:
        row = describe_set(pipe, verts, reference)
        palm = metrics.palm_lengths(pipe.regressor.cpu() @ verts) * metrics.MM
        row["palm_sd_mm"] = float(palm.std())
        result["variants"][name] = {k: round(v, 3) for k, v in row.items()}
        print(name, result["variants"][name], flush=True)

    sets = generation_sets(pipe, args.num, args.seed, autoguidance=1.0)
    for base in ("pose_prior", "pca"):
        record(base, sets[base])
    for t_min in args.t_min:
        for w in args.weight:
            if w == 1.0 and t_min != args.t_min[0]:
                continue  # weight 1 is the net alone at every t_min
            cfg = pipe.config.with_task("generate", autoguidance=AutoGuidance(w, t_min))
            record("net_alone" if w == 1.0 else f"w{w:g}_from{t_min}",
                   generated_hands(pipe.with_config(cfg), args.num, args.seed))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

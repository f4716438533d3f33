"""How much spread the net's x0 prediction keeps: held-out pose-prior hands (random
orientations, as in training; the tuning seed, 100, unless told) noised to timestep t and
denoised, against the hands themselves. Prints one JSON object.

- "one_step": the net's x0 at t, straight from the noised hands: what a sampler that ends
  at t returns. Even an exact denoiser returns the mean of the hands the noisy one could
  have been there, so APD falls with t; the net adds its own error on top.
- "through_sampler" (with --from): DDIM on a fine grid (about 60 steps over the whole range)
  from the noised hands at t down to `--to`, then the x0 there: where on the way the spread
  goes (an exact denoiser keeps the one_step figure at `--to` from any start).

Each row: APD (after turning each hand to the template's orientation, as `hhmr evaluate`
does), self-intersection %, the mean distance to the hand it came from (mm) and the s.d. of
the palm lengths (wrist to middle MCP, mm: hand size).

Usage: python research/denoising_spread.py [WEIGHTS.pt] [--num 64] [--seed 100]
       [--t 0 10 20 40 99 150] [--from 99 382 626 826 999 --to 99]   (about a minute)
"""

import argparse
import json

import numpy as np
import torch
from hhmr import metrics
from hhmr.data.poses import PosePrior
from hhmr.diffusion import DDIMSampler
from hhmr.evaluation.tasks import canonical
from hhmr.models import SCALE, Conditions
from hhmr.sampling import HandDiffusionPipeline
from hhmr.training.train import EVAL_SEED_OFFSET


def describe(pipe: HandDiffusionPipeline, verts: torch.Tensor, source: torch.Tensor) -> dict:
    """APD, self-intersection and distance to `source` of hands [N, V, 3] (metres)."""
    reg = pipe.regressor.cpu()
    si = metrics.self_intersection_pct(verts, pipe.hand.faces.cpu())
    aligned = canonical(pipe, verts)
    aligned = aligned - (reg @ aligned)[:, :1]
    palm = metrics.palm_lengths(reg @ verts) * 1000
    return {"apd_mm": round(float(metrics.apd(aligned[None])), 2),
            "palm_sd_mm": round(float(palm.std()), 2),
            "si_pct": round(float(np.mean(si.tolist())), 3),
            "dist_mm": round(float((verts - source).norm(dim=-1).mean()) * 1000, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="?", default=None)
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--t", type=int, nargs="+", default=[0, 10, 20, 40, 99, 150])
    ap.add_argument("--from", dest="starts", type=int, nargs="*", default=[])
    ap.add_argument("--to", type=int, default=99)
    ap.add_argument("--grid", type=int, default=60, help="DDIM steps over the whole range")
    args = ap.parse_args()
    pipe = HandDiffusionPipeline.from_pretrained(args.weights)
    hand, sched = pipe.hand.cpu(), pipe.schedule
    gen = torch.Generator().manual_seed(EVAL_SEED_OFFSET + args.seed)
    s = PosePrior(hand).sample(args.num, generator=gen)
    with torch.no_grad():
        out = hand(s.global_orient, s.hand_pose, s.betas)
        verts = out.vertices - out.joints[:, :1]
        x0 = verts / SCALE
        noise = torch.randn(x0.shape, generator=gen)
        context = pipe.net.context(Conditions(), args.num)

        def noised(t: int) -> torch.Tensor:
            return sched.add_noise(x0, noise, torch.full((args.num,), t))

        def x0_at(x: torch.Tensor, t: int) -> torch.Tensor:
            return pipe.net(x, torch.full((args.num,), t), context)

        result = {"weights": args.weights or "weights/hhmr_prior.pt", "num": args.num,
                  "seed": args.seed, "data": describe(pipe, verts, verts), "one_step": {}}
        for t in args.t:
            ab = float(sched.alpha_bar(torch.tensor(t)))
            row = describe(pipe, x0_at(noised(t), t) * SCALE, verts)
            result["one_step"][t] = {"noise_mm": round(100 * ((1 - ab) / ab) ** 0.5, 1), **row}
        if args.starts:
            result["through_sampler"] = {"to": args.to, "grid": args.grid}
        T = sched.num_train_steps
        for t0 in args.starts:
            count = max(2, round(args.grid * (t0 - args.to) / (T - 1 - args.to)) + 1)
            sampler = DDIMSampler(sched)
            grid = torch.linspace(t0, args.to, count).round().long()
            sampler.timesteps = grid.unique_consecutive()
            x = noised(t0)
            for t in sampler.timesteps.tolist():
                x = sampler.step(x0_at(x, t), t, x)
            result["through_sampler"][t0] = describe(pipe, x * SCALE, verts)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

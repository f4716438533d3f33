"""The scale a sampler keeps: N(0, sd^2) data (sd 0.65, about the hands' in model units)
sampled with the exact denoiser E[x0 | x_t] on "front" timesteps ending at each of several
timesteps, as a fraction of sd (1 is right). Prints one JSON object.

Usage: python tools/solver_scale.py [--steps 10] [--last 99 40 20 10 5 0]   (seconds)
"""

import argparse
import json

import torch
from hhmr.diffusion import CosineSchedule, DDIMSampler, DPMSolverSampler


def sampled_scale(sampler: DDIMSampler, steps: int, last: int, sd: float = 0.65) -> float:
    s = sampler.schedule
    x = torch.randn(20000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in sampler.set_timesteps(steps, "front", last).tolist():
        ab = float(s.alpha_bar(torch.tensor(t)))
        x = sampler.step(ab ** 0.5 * sd ** 2 / (ab * sd ** 2 + 1 - ab) * x, t, x)
    return float(x.std()) / sd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--last", type=int, nargs="+", default=[99, 40, 20, 10, 5, 0])
    args = ap.parse_args()
    sched = CosineSchedule()
    print(json.dumps({"steps": args.steps, "scale": {
        last: {"dpm++2m": round(sampled_scale(DPMSolverSampler(sched), args.steps, last), 4),
               "ddim": round(sampled_scale(DDIMSampler(sched), args.steps, last), 4)}
        for last in args.last}}))


if __name__ == "__main__":
    main()

"""The scale a sampler keeps: N(0, sd^2) data (sd 0.65, about the hands' in model units)
sampled with the exact denoiser E[x0 | x_t] on "front" timesteps ending at each of several
timesteps, as a fraction of sd (1 is right). Prints one JSON object.

--gain K --gain-from T scales that denoiser by K at timesteps >= T, a net that reads x_t a
little shrunk at high noise; --sd 2.7 is about the hand size direction's s.d. in model units
(palm length s.d. 7.4 of 99 mm), settled near t = 800.

Usage: python research/solver_scale.py [--steps 10] [--last 99 40 20 10 5 0] [--sd 0.65]
       [--gain 1 --gain-from 0]   (seconds)
"""

import argparse
import json

from hhmr.diffusion import CosineSchedule, DDIMSampler, DPMSolverSampler
from hhmr.diffusion.ddim import gaussian_sample_sd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--last", type=int, nargs="+", default=[99, 40, 20, 10, 5, 0])
    ap.add_argument("--sd", type=float, default=0.65)
    ap.add_argument("--gain", type=float, default=1.0)
    ap.add_argument("--gain-from", type=int, default=0)
    args = ap.parse_args()
    sched, sd = CosineSchedule(), args.sd
    samplers = {"dpm++2m": DPMSolverSampler(sched), "ddim": DDIMSampler(sched)}
    print(json.dumps({"steps": args.steps, "sd": sd, "gain": args.gain,
                      "gain_from": args.gain_from, "scale": {
        last: {name: round(gaussian_sample_sd(sampler, args.steps, "front", sd, last,
                                              gain=args.gain, gain_from=args.gain_from) / sd, 4)
               for name, sampler in samplers.items()}
        for last in args.last}}))


if __name__ == "__main__":
    main()

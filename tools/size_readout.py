"""How well the net reads a hand's size from x_t, against the best linear estimate: held-out
pose-prior hands (the tuning seed, 100, unless told) noised to timestep t, then the net's x0
and the linear estimate's (`GaussianDenoiser`, fitted to training hands turned to the
template's frame and applied in x_t's own Kabsch frame, as `model.linear_rank` feeds it to
a net). Prints one JSON object, a row per t with, for each of "net" and "linear":

- err_mm: mean vertex distance to the hand it came from;
- palm_sd_mm: s.d. of the predicted palm lengths (wrist to middle MCP);
- palm_corr: their correlation with the true palm lengths.

The posterior mean E[x0 | x_t] explains at least as much of the size as any linear map, so
a net below the linear estimate there reads size shrunk, which the sampler compounds
(`tools/solver_scale.py --sd 2.7 --gain 0.9 --gain-from 300`).

Usage: python tools/size_readout.py [WEIGHTS.pt] [--num 256] [--seed 100]
       [--t 999 966 905 826 732 626 509 382 245]   (about a minute)
Noise is drawn afresh for each t in the order given, so a row's figures depend on the t's
listed before it: compare rows from runs with the same --t list.
"""

import argparse
import json

import torch
from hhmr.data.poses import PosePrior
from hhmr.diffusion.gaussian import GaussianDenoiser
from hhmr.metrics import palm_lengths
from hhmr.models.denoiser import linear_estimate, template_frame, turned_to_template
from hhmr.sampling import HandDiffusionPipeline
from hhmr.training.data import SCALE, model_template, training_hands
from hhmr.training.train import EVAL_SEED_OFFSET


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="?", default=None)
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--t", type=int, nargs="+",
                    default=[999, 966, 905, 826, 732, 626, 509, 382, 245])
    ap.add_argument("--fit-hands", type=int, default=16000)
    args = ap.parse_args()
    pipe = HandDiffusionPipeline.from_pretrained(args.weights, trace=False)
    hand, den, sched = pipe.hand.cpu(), pipe.net, pipe.schedule
    prior = PosePrior(hand)
    template = model_template(hand)
    train = training_hands(hand, prior, 0, args.fit_hands)
    linear = GaussianDenoiser(train[0].numel(), 256).fit(turned_to_template(train, template))
    x0 = training_hands(hand, prior, EVAL_SEED_OFFSET + args.seed, args.num)
    reg = hand.keypoint_regressor

    def palm(x: torch.Tensor) -> torch.Tensor:
        return palm_lengths(reg @ x) * SCALE * 1000  # mm

    def row(pred: torch.Tensor) -> dict:
        corr = torch.corrcoef(torch.stack([palm(pred), palm(x0)]))[0, 1]
        return {"err_mm": round(float((pred - x0).norm(dim=-1).mean()) * SCALE * 1000, 2),
                "palm_sd_mm": round(float(palm(pred).std()), 2),
                "palm_corr": round(float(corr), 3)}

    gen = torch.Generator().manual_seed(EVAL_SEED_OFFSET + args.seed + 1)
    result = {"weights": args.weights or "weights/hhmr_prior.pt", "num": args.num,
              "seed": args.seed, "palm_sd_mm": round(float(palm(x0).std()), 2), "t": {}}
    for t in args.t:
        tt = torch.full((args.num,), t)
        x_t = sched.add_noise(x0, torch.randn(x0.shape, generator=gen), tt)
        ab = sched.alpha_bar(tt).to(x_t)
        with torch.no_grad():
            net = den(x_t, tt, None)
            lin = linear_estimate(linear, x_t, ab, template_frame(x_t, template))
        result["t"][t] = {"net": row(net), "linear": row(lin)}
        print(t, result["t"][t], flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Ways to widen generated hands, measured against real ones: APD and self-intersection
beside fidelity and coverage (`hhmr evaluate --task generate` describes them; lower is better
for both), on the tuning seed (100) unless told. Prints one JSON object, a row per variant:

- "shipped": the pipeline as it is, without autoguidance (the net alone).
- "gaussian_above_T": at timesteps >= T the sampler takes x0 from the training hands'
  Gaussian (hhmr.diffusion.gaussian, fitted to 16000 training hands) instead of the net:
  the analytic first steps of Wang & Vastola (2023).
- "autoguidance_W": x0 = D_bad + W (D - D_bad) with an older, weaker net as D_bad (Karras et
  al. 2024, "Guiding a diffusion model with a bad version of itself"; the pipeline's
  autoguidance at every timestep, hhmr.diffusion.autoguidance); only with --bad.
- "eta_E": DDIM with noise eta E at every step.

Usage: python tools/widening.py [WEIGHTS.pt] [--bad OLD.pt] [--num 128] [--seed 100]
  e.g. git show adc2fd0:weights/hhmr_prior.pt > /tmp/v2.pt  (run v2, an earlier net)
       python tools/widening.py --bad /tmp/v2.pt          (a few minutes)
"""

import argparse
import json

import torch
from hhmr import pipeline
from hhmr.data.poses import PosePrior
from hhmr.diffusion import AutoGuidance, CosineSchedule
from hhmr.diffusion.gaussian import GaussianDenoiser
from hhmr.evaluation.tasks import describe_set, generation_sets, reference_hands
from hhmr.sampling import HandDiffusionPipeline
from hhmr.training.data import fit_gaussian
from torch import nn


class GaussianAbove(nn.Module):
    """The net below timestep `above`, the Gaussian's x0 at and above it."""

    def __init__(self, net: nn.Module, gaussian: GaussianDenoiser, above: int,
                 schedule: CosineSchedule) -> None:
        super().__init__()
        self.net, self.gaussian, self.above, self.schedule = net, gaussian, above, schedule

    def context(self, cond, batch):
        return self.net.context(cond, batch)

    def forward(self, x_t, t, context):
        t = t.reshape(-1).expand(x_t.shape[0])
        if int(t[0]) < self.above:
            return self.net(x_t, t, context)
        return self.gaussian(x_t, self.schedule.alpha_bar(t).to(x_t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="?", default=None)
    ap.add_argument("--bad", default=None, help="weaker weights for autoguidance")
    ap.add_argument("--num", type=int, default=128)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--above", type=int, nargs="*", default=[950, 900, 800])
    ap.add_argument("--guide", type=float, nargs="*", default=[1.5, 2.0])
    ap.add_argument("--eta", type=float, nargs="*", default=[1.0])
    args = ap.parse_args()
    pipe = HandDiffusionPipeline.from_pretrained(args.weights, trace=False,
                                                 guide=args.bad or False)
    pipeline.AUTOGUIDANCE["generate"] = AutoGuidance(1.0)  # every timestep, weight per variant
    net, hand = pipe.net, pipe.hand.cpu()
    reference = reference_hands(pipe, args.seed)
    result = {"weights": args.weights or "weights/hhmr_prior.pt", "bad": args.bad,
              "num": args.num, "seed": args.seed, "variants": {}}

    def record(name: str, verts: torch.Tensor) -> None:
        row = describe_set(pipe, verts, reference)
        result["variants"][name] = {k: round(v, 3) for k, v in row.items()}

    def measure(name: str, eta: float = 0.0, autoguidance: float = 1.0) -> None:
        sets = generation_sets(pipe, args.num, args.seed, eta=eta, autoguidance=autoguidance)
        if not result["variants"]:
            for base in ("pose_prior", "pca"):
                record(base, sets[base])
        record(name, sets["diffusion"])
        print(name, result["variants"][name], flush=True)

    measure("shipped")
    for e in args.eta:
        measure(f"eta_{e:g}", eta=e)
    gaussian = fit_gaussian(GaussianDenoiser(hand.num_vertices * 3, 256), hand,
                            PosePrior(hand), seed=0)
    for above in args.above:
        pipe.net = GaussianAbove(net, gaussian, above, pipe.schedule)
        measure(f"gaussian_above_{above}")
    pipe.net = net
    if args.bad:
        for w in args.guide:
            measure(f"autoguidance_{w:g}", autoguidance=w)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Compare weight files on held-out seed 100, the seed guidance scales are tuned on (never the
evaluation seed 0): refit3d and fit2d with and without guidance (20 hands, n=1), inpainting by
guidance alone (10 hands, n=4), generation (64 hands). Prints one JSON line per file.

Usage: python tools/compare_weights.py WEIGHTS.pt [WEIGHTS.pt ...]   (about a minute each)
Sampler ablations (the figures in docs/diffusion.md): --spacing trailing|linspace|quadratic|front
(timesteps of unguided and x0-guided runs), --solver ddim|dpm++2m (their solver),
--final-iters 1, --inpaint-cap 0.05 (guidance alone),
--replace-cap none, --replace-fraction F (guide only the first fraction of steps), --space
TASK=SPACE (guidance space per task key, e.g. --space refit3d=x_t --space inpaint=x_t),
--joint-influence bones|smooth|none (how x0 guidance spreads its joint-space gradient; none:
the raw gradient), --refit-camera (fit2d solves its camera at every x0 gradient step instead
of once per sampling step), --random-first (hypothesis 0 of refit3d and fit2d from random
noise instead of the noise's mean), --generate-last T (end generation's timesteps at T; by default
they end at T/n - 1, 99 for ten steps), --guide FILE|none (generation's autoguidance net; by
default weights/hhmr_guide.pt with the shipped weights, none with others), --autoguidance W
and --autoguidance-from T (its weight and first timestep, pipeline.AUTOGUIDANCE),
--tasks refit3d,fit2d,inpaint,generate (a subset).
"""

import argparse
import json
from dataclasses import replace

import numpy as np
from hhmr import metrics, pipeline
from hhmr.diffusion.ddim import SPACINGS
from hhmr.evaluation.tasks import (
    canonical,
    describe_set,
    finger_region,
    held_out,
    reference_hands,
)
from hhmr.sampling import HandDiffusionPipeline
from hhmr.training.train import EVAL_SEED_OFFSET

SEED = 1_000_100


TASKS = ("refit3d", "fit2d", "inpaint", "generate")


def compare(path: str, tasks: tuple[str, ...] = TASKS, guide: str | bool | None = None
            ) -> dict[str, float]:
    pipe = HandDiffusionPipeline.from_pretrained(path, guide=guide)
    data = held_out(pipe, 20, 100)
    res: dict[str, list[float]] = {}

    def add(key: str, h, i: int) -> None:
        res.setdefault(f"{key}_pa_mpvpe_mm", []).append(
            float(metrics.pa_mpvpe(h.vertices, data.vertices[i:i + 1]).min()))
        res.setdefault(f"{key}_pa_mpjpe_mm", []).append(
            float(metrics.pa_mpjpe(h.joints, data.joints[i:i + 1]).min()))

    for i in range(20):
        for scale, name in ((None, "guided"), (0.0, "unguided")):
            if "refit3d" in tasks:
                add(f"refit3d_{name}", pipe.refit3d(data.joints[i], n=1, seed=SEED + i,
                                                    guidance_scale=scale), i)
            if "fit2d" in tasks:
                add(f"fit2d_{name}", pipe.fit2d(data.keypoints2d[i], None, data.K[i], n=1,
                                                seed=SEED + i, guidance_scale=scale), i)
    rng = np.random.default_rng(100)
    for i in range(10 if "inpaint" in tasks else 0):
        keep = ~finger_region(pipe, int(rng.integers(5)))
        h = pipe.inpaint(data.vertices[i], keep, n=4, seed=SEED + i, replace=False)
        err = (h.vertices[:, keep] - data.vertices[i][keep]).norm(dim=-1).mean()
        res.setdefault("inpaint_kept_err_mm", []).append(float(err) * 1000)
        res.setdefault("inpaint_si_pct", []).append(
            float(metrics.self_intersection_pct(h.vertices, pipe.hand.faces.cpu()).mean()))
        h = pipe.inpaint(data.vertices[i], keep, n=4, seed=SEED + i)  # with replacement
        res.setdefault("inpaint_replace_si_pct", []).append(
            float(metrics.self_intersection_pct(h.vertices, pipe.hand.faces.cpu()).mean()))
    out = {k: round(float(np.mean(v)), 2) for k, v in res.items()}
    if "generate" not in tasks:
        return out
    v = canonical(pipe, pipe.generate(64, seed=SEED).vertices)
    v = v - (pipe.regressor.cpu() @ v)[:, :1]
    row = describe_set(pipe, v, reference_hands(pipe, SEED - EVAL_SEED_OFFSET))
    for key, digits in (("si_pct", 2), ("apd_mm", 1), ("fidelity_mm", 2), ("coverage_mm", 2)):
        out[f"generate_{key}"] = round(row[key], digits)
    return out


def _set_cap(task: str, text: str | None) -> None:
    """Override a task's guidance move cap: a number (model units), or "none" for no cap."""
    if text == "none":
        pipeline.MAX_GUIDANCE_STEP.pop(task, None)
    elif text is not None:
        pipeline.MAX_GUIDANCE_STEP[task] = float(text)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--spacing", choices=SPACINGS,
                    help="timesteps of unguided and x0-guided runs")
    ap.add_argument("--solver", choices=pipeline.SOLVERS,
                    help="solver of unguided and x0-guided runs")
    ap.add_argument("--final-iters", type=int, help="guided moves at the last step, all tasks")
    ap.add_argument("--inpaint-cap", help="move cap for inpainting by guidance alone, or none")
    ap.add_argument("--replace-cap", help="move cap for inpainting with replacement, or none")
    ap.add_argument("--replace-fraction", type=float,
                    help="inpainting with replacement: guide the first fraction of steps only")
    ap.add_argument("--space", action="append", default=[], metavar="TASK=SPACE",
                    help="guidance space (x_t or x0) for a task key, repeatable")
    ap.add_argument("--joint-influence", choices=["bones", "smooth", "none"],
                    help="how x0 guidance spreads its joint-space gradient")
    ap.add_argument("--refit-camera", action="store_true",
                    help="fit2d: solve the camera at every x0 gradient step")
    ap.add_argument("--random-first", action="store_true",
                    help="refit3d and fit2d: hypothesis 0 from random noise, not its mean")
    ap.add_argument("--generate-last", type=int, metavar="T",
                    help="generation's last timestep (pipeline.FINAL_TIMESTEP)")
    ap.add_argument("--guide", default=None, help="autoguidance net for generation, or none")
    ap.add_argument("--autoguidance", type=float, metavar="W", help="autoguidance weight")
    ap.add_argument("--autoguidance-from", type=int, metavar="T",
                    help="autoguidance's first timestep")
    ap.add_argument("--tasks", default=",".join(TASKS),
                    help="comma-separated subset of " + ",".join(TASKS))
    args = ap.parse_args()
    tasks = tuple(args.tasks.split(","))
    if not set(tasks) <= set(TASKS):
        ap.error(f"--tasks: each of {', '.join(TASKS)}")
    if args.random_first:
        pipeline.CENTRAL_FIRST.update(refit3d=False, fit2d=False)
    if args.refit_camera:
        pipeline.X0_HOLD_CAMERA = False
    if args.joint_influence is not None:
        pipeline.X0_JOINT_INFLUENCE = None if args.joint_influence == "none" \
            else args.joint_influence
    for item in args.space:
        task, _, space = item.partition("=")
        if task not in pipeline.GUIDANCE_SPACE or space not in ("x_t", "x0"):
            ap.error(f"--space {item}: TASK is one of {sorted(pipeline.GUIDANCE_SPACE)}, "
                     "SPACE x_t or x0")
        pipeline.GUIDANCE_SPACE[task] = space
    if args.spacing:
        pipeline.SPACING = args.spacing
    if args.solver:
        pipeline.SOLVER = args.solver
    if args.generate_last is not None:
        pipeline.FINAL_TIMESTEP["generate"] = args.generate_last
    if args.final_iters is not None:
        pipeline.FINAL_GUIDANCE_ITERS.update(
            {k: args.final_iters for k in ("inpaint", "refit3d", "fit2d")})
    _set_cap("inpaint", args.inpaint_cap)
    _set_cap("inpaint+replace", args.replace_cap)
    if args.replace_fraction is not None:
        pipeline.GUIDED_FRACTION["inpaint+replace"] = args.replace_fraction
    auto = pipeline.AUTOGUIDANCE["generate"]
    pipeline.AUTOGUIDANCE["generate"] = replace(
        auto, weight=auto.weight if args.autoguidance is None else args.autoguidance,
        t_min=auto.t_min if args.autoguidance_from is None else args.autoguidance_from)
    guide = False if args.guide == "none" else args.guide
    for p in args.weights:
        print(json.dumps({"weights": p, **compare(p, tasks, guide)}), flush=True)

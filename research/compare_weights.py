"""Compare weight files on held-out seed 100, the seed guidance scales are tuned on (never the
evaluation seed 0): refit3d and fit2d with and without guidance (20 hands, n=1), inpainting by
guidance alone and with replacement (10 hands, n=4), generation (64 hands). Prints one JSON
line per file.

Usage: python research/compare_weights.py WEIGHTS.pt [WEIGHTS.pt ...]   (about a minute each)

Each file samples with the settings saved in it (`SamplingConfig`); the flags change them
(the figures in docs/diffusion.md; `research/ablations.py` measures them all in one process):
--spacing trailing|linspace|quadratic|front (timesteps of unguided and x0-guided runs),
--solver ddim|dpm++2m (their solver), --final-iters 1 (x_t guided moves at the last step of
inpainting by guidance alone, refit3d and fit2d), --inpaint-cap 0.05|none (move cap of
inpainting by guidance alone), --replace-cap 0.05|none (of inpainting with replacement),
--replace-fraction F (inpainting with replacement: guide only the first fraction of steps),
--space TASK=SPACE (a task's guidance space, e.g. --space refit3d=x_t --space inpaint=x0;
tasks: generate, inpaint (with replacement), inpaint_without_replacement, refit3d, fit2d),
--joint-influence bones|smooth|none (how x0 guidance spreads its joint-space gradient; none:
the raw gradient), --refit-camera (fit2d solves its camera at every x0 gradient step instead
of once per sampling step), --random-first (hypothesis 0 of refit3d and fit2d from random
noise instead of the noise's mean), --set TASK.FIELD=VALUE (any other setting, e.g.
--set refit3d.x0_scale=0.01 or --set sampler.x0_retries=4; VALUE in Python syntax),
--guide FILE|none (generation's autoguidance net; by default the one the weights' settings
name, weights/hhmr_guide.pt for the shipped weights), --autoguidance W and
--autoguidance-from T (its weight and first timestep), --tasks refit3d,fit2d,inpaint,generate
(a subset of the measurements), --num N (N hands for every measurement: a quick smoke test,
not comparable with the defaults' figures).
"""

from __future__ import annotations

import argparse
import ast
import json
from dataclasses import fields, replace

import numpy as np
from hhmr import metrics
from hhmr.diffusion.autoguidance import AutoGuidance
from hhmr.evaluation.tasks import (
    canonical,
    describe_set,
    finger_region,
    held_out,
    reference_hands,
)
from hhmr.sampling import HandDiffusionPipeline, SamplerConfig, SamplingConfig, TaskConfig
from hhmr.sampling.config import SOLVERS, SPACINGS
from hhmr.sampling.config import TASKS as CONFIG_TASKS
from hhmr.training.train import EVAL_SEED_OFFSET

SEED = 1_000_100

# what `measure` measures (not the config's task names: "inpaint" here measures both kinds)
TASKS = ("refit3d", "fit2d", "inpaint", "generate")
# hands per measurement: refit3d and fit2d, inpainting, generation
COUNTS = {"refit3d": 20, "fit2d": 20, "inpaint": 10, "generate": 64}


def measure(pipe: HandDiffusionPipeline, tasks: tuple[str, ...] = TASKS,
            num: int | None = None) -> dict[str, float]:
    """The tuning-seed figures of one pipeline (its weights and `pipe.config`). `num`: hands
    for every measurement instead of COUNTS (a smoke test)."""
    count = {k: num or v for k, v in COUNTS.items()}
    fitted = max(count["refit3d"], count["fit2d"])
    data = held_out(pipe, max(fitted, count["inpaint"]), 100)
    res: dict[str, list[float]] = {}

    def add(key: str, h, i: int) -> None:
        res.setdefault(f"{key}_pa_mpvpe_mm", []).append(
            float(metrics.pa_mpvpe(h.vertices, data.vertices[i:i + 1]).min()))
        res.setdefault(f"{key}_pa_mpjpe_mm", []).append(
            float(metrics.pa_mpjpe(h.joints, data.joints[i:i + 1]).min()))

    for i in range(fitted):
        for scale, name in ((None, "guided"), (0.0, "unguided")):
            if "refit3d" in tasks and i < count["refit3d"]:
                add(f"refit3d_{name}", pipe.refit3d(data.joints[i], n=1, seed=SEED + i,
                                                    guidance_scale=scale), i)
            if "fit2d" in tasks and i < count["fit2d"]:
                add(f"fit2d_{name}", pipe.fit2d(data.keypoints2d[i], None, data.K[i], n=1,
                                                seed=SEED + i, guidance_scale=scale), i)
    rng = np.random.default_rng(100)
    faces = pipe.hand.faces.cpu()
    for i in range(count["inpaint"] if "inpaint" in tasks else 0):
        keep = ~finger_region(pipe, int(rng.integers(5)))
        h = pipe.inpaint(data.vertices[i], keep, n=4, seed=SEED + i, replace=False)
        err = (h.vertices[:, keep] - data.vertices[i][keep]).norm(dim=-1).mean()
        res.setdefault("inpaint_kept_err_mm", []).append(float(err) * 1000)
        res.setdefault("inpaint_si_pct", []).append(
            float(metrics.self_intersection_pct(h.vertices, faces).mean()))
        h = pipe.inpaint(data.vertices[i], keep, n=4, seed=SEED + i)  # with replacement
        res.setdefault("inpaint_replace_si_pct", []).append(
            float(metrics.self_intersection_pct(h.vertices, faces).mean()))
    out = {k: round(float(np.mean(v)), 2) for k, v in res.items()}
    if "generate" not in tasks:
        return out
    v = canonical(pipe, pipe.generate(count["generate"], seed=SEED).vertices)
    v = v - (pipe.regressor.cpu() @ v)[:, :1]
    row = describe_set(pipe, v, reference_hands(pipe, SEED - EVAL_SEED_OFFSET))
    for key, digits in (("si_pct", 2), ("apd_mm", 1), ("fidelity_mm", 2), ("coverage_mm", 2)):
        out[f"generate_{key}"] = round(row[key], digits)
    return out


def compare(path: str, tasks: tuple[str, ...] = TASKS, guide: str | bool | None = None,
            args: argparse.Namespace | None = None, num: int | None = None
            ) -> dict[str, float]:
    """`measure` for one weight file, with its saved settings changed by `args` (flags)."""
    pipe = HandDiffusionPipeline.from_pretrained(path, guide=guide)
    if args is not None:
        pipe = pipe.with_config(config_from_flags(pipe.config, args))
    return measure(pipe, tasks, num)


def add_generation_args(ap: argparse.ArgumentParser) -> None:
    """The arguments of the generation diagnostics: weights, hands, seed, solver, spacing."""
    ap.add_argument("weights", nargs="?", default=None)
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--solver", choices=SOLVERS, help="default: the weights' setting")
    ap.add_argument("--spacing", choices=SPACINGS, help="default: the weights' setting")


def generation_pipeline(args: argparse.Namespace) -> HandDiffusionPipeline:
    """The weights' pipeline with `add_generation_args`' solver and spacing, where given."""
    pipe = HandDiffusionPipeline.from_pretrained(args.weights)
    sampler = pipe.config.sampler
    sampler = replace(sampler, solver=args.solver or sampler.solver,
                      spacing=args.spacing or sampler.spacing)
    return pipe.with_config(replace(pipe.config, sampler=sampler))


def add_flags(ap: argparse.ArgumentParser) -> None:
    """The flags `config_from_flags` reads."""
    ap.add_argument("--spacing", choices=SPACINGS,
                    help="timesteps of unguided and x0-guided runs")
    ap.add_argument("--solver", choices=SOLVERS, help="solver of unguided and x0-guided runs")
    ap.add_argument("--final-iters", type=int,
                    help="x_t guided moves at the last step: inpainting by guidance alone, "
                         "refit3d, fit2d")
    ap.add_argument("--inpaint-cap", help="move cap for inpainting by guidance alone, or none")
    ap.add_argument("--replace-cap", help="move cap for inpainting with replacement, or none")
    ap.add_argument("--replace-fraction", type=float,
                    help="inpainting with replacement: guide the first fraction of steps only")
    ap.add_argument("--space", action="append", default=[], metavar="TASK=SPACE",
                    help="guidance space (x_t or x0) of a task, repeatable; tasks: "
                         + ", ".join(CONFIG_TASKS))
    ap.add_argument("--joint-influence", choices=["bones", "smooth", "none"],
                    help="how x0 guidance spreads its joint-space gradient")
    ap.add_argument("--refit-camera", action="store_true",
                    help="fit2d: solve the camera at every x0 gradient step")
    ap.add_argument("--random-first", action="store_true",
                    help="refit3d and fit2d: hypothesis 0 from random noise, not its mean")
    ap.add_argument("--autoguidance", type=float, metavar="W", help="autoguidance weight")
    ap.add_argument("--autoguidance-from", type=int, metavar="T",
                    help="autoguidance's first timestep")
    ap.add_argument("--set", action="append", default=[], metavar="TASK.FIELD=VALUE",
                    help="any other setting (TASK: a task or 'sampler'), repeatable, e.g. "
                         "refit3d.x0_scale=0.01")


def _cap(text: str) -> float | None:
    return None if text == "none" else float(text)


def _set(cfg: SamplingConfig, item: str) -> SamplingConfig:
    """One `--set SECTION.FIELD=VALUE` (VALUE a Python literal; a bare word is a string)."""
    key, eq, text = item.partition("=")
    section, _, name = key.partition(".")
    kind = SamplerConfig if section == "sampler" else TaskConfig
    if not eq or section not in ("sampler", *CONFIG_TASKS) or \
            name not in {f.name for f in fields(kind)} or name == "autoguidance":
        raise ValueError(f"--set {item}: SECTION.FIELD=VALUE with SECTION sampler or one of "
                         f"{', '.join(CONFIG_TASKS)} and FIELD one of its settings (not "
                         "autoguidance: --autoguidance, --autoguidance-from)")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if section == "sampler":
        return replace(cfg, sampler=replace(cfg.sampler, **{name: value}))
    return cfg.with_task(section, **{name: value})


def config_from_flags(base: SamplingConfig, args: argparse.Namespace) -> SamplingConfig:
    """`base` changed by the flags of `add_flags` (ValueError on a bad one); unset flags
    keep base's settings."""
    cfg, sampler = base, {}
    if args.spacing:
        sampler["spacing"] = args.spacing
    if args.solver:
        sampler["solver"] = args.solver
    if args.joint_influence is not None:
        sampler["joint_influence"] = None if args.joint_influence == "none" \
            else args.joint_influence
    if args.refit_camera:
        sampler["hold_camera"] = False
    if sampler:
        cfg = replace(cfg, sampler=replace(cfg.sampler, **sampler))
    if args.random_first:
        cfg = cfg.with_task("refit3d", central_first=False).with_task("fit2d",
                                                                      central_first=False)
    for item in args.space:
        task, _, space = item.partition("=")
        if task not in CONFIG_TASKS or space not in ("x_t", "x0"):
            raise ValueError(f"--space {item}: TASK is one of {', '.join(CONFIG_TASKS)}, "
                             "SPACE x_t or x0")
        cfg = cfg.with_task(task, space=space)
    if args.final_iters is not None:
        for task in ("inpaint_without_replacement", "refit3d", "fit2d"):
            cfg = cfg.with_task(task, x_t_final_iterations=args.final_iters)
    if args.inpaint_cap is not None:
        cfg = cfg.with_task("inpaint_without_replacement", max_step=_cap(args.inpaint_cap))
    if args.replace_cap is not None:
        cfg = cfg.with_task("inpaint", max_step=_cap(args.replace_cap))
    if args.replace_fraction is not None:
        cfg = cfg.with_task("inpaint", guided_fraction=args.replace_fraction)
    if args.autoguidance is not None or args.autoguidance_from is not None:
        auto = cfg.generate.autoguidance or AutoGuidance(1.0)
        auto = AutoGuidance(auto.weight if args.autoguidance is None else args.autoguidance,
                            auto.t_min if args.autoguidance_from is None
                            else args.autoguidance_from, auto.t_max)
        cfg = cfg.with_task("generate", autoguidance=auto)
    for item in args.set:
        cfg = _set(cfg, item)
    return cfg


def changes(base: SamplingConfig, cfg: SamplingConfig) -> dict:
    """The settings of `cfg` that differ from `base`, as {"section.field": value}."""
    a, b = base.to_dict(), cfg.to_dict()
    out = {}
    for section, value in b.items():
        if isinstance(value, dict):
            out |= {f"{section}.{k}": v for k, v in value.items()
                    if a[section] is None or a[section].get(k) != v}
        elif a[section] != value:
            out[section] = list(value) if isinstance(value, tuple) else value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+")
    add_flags(ap)
    ap.add_argument("--guide", default=None, help="autoguidance net for generation, or none")
    ap.add_argument("--tasks", default=",".join(TASKS),
                    help="comma-separated subset of " + ",".join(TASKS))
    ap.add_argument("--num", type=int, help="hands per measurement (smoke test)")
    args = ap.parse_args()
    tasks = tuple(args.tasks.split(","))
    if not set(tasks) <= set(TASKS):
        ap.error(f"--tasks: each of {', '.join(TASKS)}")
    try:
        config_from_flags(SamplingConfig(), args)  # fail on bad flags before loading anything
    except ValueError as e:
        ap.error(str(e))
    guide = False if args.guide == "none" else args.guide
    for p in args.weights:
        print(json.dumps({"weights": p, **compare(p, tasks, guide, args, args.num)}),
              flush=True)


if __name__ == "__main__":
    main()

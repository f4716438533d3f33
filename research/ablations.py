"""Re-measure every sampler ablation in docs/diffusion.md for one weight file, on the tuning seed
(`research/compare_weights.py`'s `measure`, seed 100), in one process: the weights load once
and each variant is the weights' own settings (`SamplingConfig`) changed by compare_weights'
flags, measured through `pipe.with_config`. Writes a JSON file {variant: {"flags": [...],
"changes": {...}, "results": {...}}} and prints a table.

Usage: python research/ablations.py [WEIGHTS.pt] [--out weights/eval/ablations.json]
       [--only NAME ...]   (about 20 minutes on the 2-core CPU for all variants)
       python research/ablations.py --tables [--out ...]   (docs/diffusion.md's tables, no runs)
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from hhmr.sampling import HandDiffusionPipeline, SamplingConfig
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_weights import add_flags, changes, config_from_flags, measure  # noqa: E402

X_T_EVERYWHERE = ["--space", "refit3d=x_t", "--space", "inpaint_without_replacement=x_t",
                  "--space", "fit2d=x_t"]
GUIDED = "refit3d,fit2d"
ALL = "refit3d,fit2d,inpaint,generate"

# name: (compare_weights flags, measurements). "default" is the weights' own settings.
VARIANTS: dict[str, tuple[list[str], str]] = {
    "default": ([], ALL),
    "random_first": (["--random-first"], GUIDED),
    "x_t_space": (X_T_EVERYWHERE, "refit3d,fit2d,inpaint"),
    "x_t_space_final_iters_1": (X_T_EVERYWHERE + ["--final-iters", "1"],
                                "refit3d,fit2d,inpaint"),
    "joint_influence_smooth": (["--joint-influence", "smooth"], GUIDED),
    "joint_influence_none": (["--joint-influence", "none"], GUIDED),
    "refit_camera": (["--refit-camera"], "fit2d"),
    "spacing_trailing": (["--spacing", "trailing"], ALL),
    "spacing_linspace": (["--spacing", "linspace"], ALL),
    "spacing_quadratic": (["--spacing", "quadratic"], ALL),
    "solver_ddim": (["--solver", "ddim"], ALL),
    "ddim_trailing": (["--solver", "ddim", "--spacing", "trailing"], ALL),
    "replace_fraction_1.0": (["--replace-fraction", "1.0"], "inpaint"),
    "replace_fraction_0.7": (["--replace-fraction", "0.7"], "inpaint"),
    "replace_fraction_0.5": (["--replace-fraction", "0.5"], "inpaint"),
    "replacement_alone": (["--space", "inpaint=x0"], "inpaint"),
    "replace_cap_none": (["--replace-cap", "none"], "inpaint"),
}


def variant_config(base: SamplingConfig, flags: list[str]) -> SamplingConfig:
    """`base` changed by a variant's compare_weights flags."""
    ap = argparse.ArgumentParser()
    add_flags(ap)
    return config_from_flags(base, ap.parse_args(flags))


def defaults(cfg: SamplingConfig) -> dict[str, str]:
    """The sampler defaults the flags change (recorded with each variant: a partial run keeps
    variants measured under earlier defaults)."""
    return {"solver": cfg.sampler.solver, "spacing": cfg.sampler.spacing}


def _pair(r: dict, task: str) -> str:
    return f"{r[task + '_pa_mpvpe_mm']:.2f}, {r[task + '_pa_mpjpe_mm']:.2f} mm"


def weights_digest(path: str) -> str:
    """The first 12 hex digits of a weight file's SHA-256: which weights a run measured."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def tables(doc: dict) -> str:
    """docs/diffusion.md's tables (PA-MPVPE, PA-MPJPE pairs) from an ablations JSON."""
    v = {k: x["results"] for k, x in doc["variants"].items()}
    d = v["default"]
    old = {k: x.get("defaults", "DDIM, trailing (before 2026-11-22)")
           for k, x in doc["variants"].items()
           if x.get("defaults") != doc.get("defaults", defaults(SamplingConfig()))}
    lines = [f"Weights: {doc['weights']} (sha256 {doc.get('weights_sha256', 'not recorded')})"]
    lines += [f"Measured under other sampler defaults: {old}"] if old else []
    lines += ["Guided step (default | x_t space | x0, smooth influence | raw x0 gradient):"]
    for task in ("refit3d_guided", "fit2d_guided"):
        row = [_pair(v[k], task) for k in ("default", "x_t_space", "joint_influence_smooth",
                                          "joint_influence_none")]
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    lines.append("| inpaint, guidance alone | " + " | ".join(
        f"kept region {v[k]['inpaint_kept_err_mm']:.2f} mm, self-intersection "
        f"{v[k]['inpaint_si_pct']:.2f} %" for k in ("default", "x_t_space")) + " |")
    lines.append(f"| inpaint with replacement | self-intersection {d['inpaint_replace_si_pct']:.2f}"
                 " % |")
    lines.append(f"refit_camera: fit2d {_pair(v['refit_camera'], 'fit2d_guided')}")
    lines.append(f"unguided: refit3d {_pair(d, 'refit3d_unguided')}, "
                 f"fit2d {_pair(d, 'fit2d_unguided')}")
    frac = {k: v[k]["inpaint_replace_si_pct"] for k in
            ("replace_fraction_1.0", "replace_fraction_0.7", "default", "replace_fraction_0.5",
             "replacement_alone", "replace_cap_none")}
    lines.append("inpaint with replacement, self-intersection %: " + ", ".join(
        f"{k} {x:.2f}" for k, x in frac.items()))
    a, b = v["x_t_space_final_iters_1"], v["x_t_space"]
    lines.append(f"x_t final iters 1 -> 2: inpaint kept {a['inpaint_kept_err_mm']:.2f} -> "
                 f"{b['inpaint_kept_err_mm']:.2f} mm, refit3d PA-MPJPE "
                 f"{a['refit3d_guided_pa_mpjpe_mm']:.2f} -> {b['refit3d_guided_pa_mpjpe_mm']:.2f}"
                 " mm")
    for title, cols in (
            ("Timesteps (front | trailing | linspace | quadratic):",
             [d, v["spacing_trailing"], v["spacing_linspace"], v["spacing_quadratic"]]),
            ("Solver (DPM-Solver++ front | DDIM front | DDIM trailing):",
             [d, v["solver_ddim"], v["ddim_trailing"]])):
        lines.append(title)
        lines.append("| generate: self-intersection, APD | " + " | ".join(
            f"{x['generate_si_pct']:.2f} %, {x['generate_apd_mm']:.1f} mm" for x in cols) + " |")
        for task in ("refit3d_unguided", "refit3d_guided", "fit2d_unguided", "fit2d_guided"):
            lines.append(f"| {task} | " + " | ".join(_pair(x, task) for x in cols) + " |")
        lines.append("| inpaint by guidance alone / with replacement: self-intersection | " +
                     " | ".join(f"{x['inpaint_si_pct']:.2f} / {x['inpaint_replace_si_pct']:.2f} %"
                                for x in cols) + " |")
    rnd = v["random_first"]
    lines.append("Central first (central | random):")
    for task in ("refit3d_guided", "refit3d_unguided", "fit2d_guided", "fit2d_unguided"):
        lines.append(f"| {task} | {_pair(d, task)} | {_pair(rnd, task)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="?", default="weights/hhmr_prior.pt")
    ap.add_argument("--out", default="weights/eval/ablations.json")
    ap.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="a subset of variants")
    ap.add_argument("--tables", action="store_true",
                    help="print docs/diffusion.md's tables from --out, run nothing")
    ap.add_argument("--num", type=int, help=argparse.SUPPRESS)  # smoke test: hands per task
    args = ap.parse_args()
    if args.tables:
        print(tables(json.loads(Path(args.out).read_text())))
        return
    names = args.only or list(VARIANTS)
    out: dict[str, dict] = {}
    path = Path(args.out)
    digest = weights_digest(args.weights)
    if args.only and path.exists():  # keep the other variants of the same weights
        old = json.loads(path.read_text())
        if old.get("weights_sha256") == digest:
            out = old["variants"]
    pipe = HandDiffusionPipeline.from_pretrained(args.weights)
    base = pipe.config
    configs = {name: variant_config(base, VARIANTS[name][0]) for name in names}  # fail early
    start = time.perf_counter()
    for name in tqdm(names, desc="ablations"):
        flags, tasks = VARIANTS[name]
        t0 = time.perf_counter()
        results = measure(pipe.with_config(configs[name]), tuple(tasks.split(",")), args.num)
        out[name] = {"flags": flags, "changes": changes(base, configs[name]), "tasks": tasks,
                     "defaults": defaults(base), "results": results,
                     "minutes": round((time.perf_counter() - t0) / 60, 2)}
        if args.num:
            out[name]["num"] = args.num  # a smoke test's figures: not comparable
    out = {k: out[k] for k in VARIANTS if k in out}
    doc = {"weights": args.weights, "weights_sha256": digest, "seed": 100,
           "defaults": defaults(base),
           "command": "python research/ablations.py " + args.weights + " [--only NAMES]",
           "last_run": {"variants": names,
                        "minutes": round((time.perf_counter() - start) / 60, 1)},
           "variants": out}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    keys = sorted({k for v in out.values() for k in v["results"]})
    print("| variant | " + " | ".join(keys) + " |")
    for name, v in out.items():
        print(f"| {name} | " + " | ".join(str(v["results"].get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()

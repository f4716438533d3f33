"""Re-measure every sampler ablation in docs/diffusion.md for one weight file, on the tuning seed
(`tools/compare_weights.py`, seed 100): one subprocess per variant, so each starts from the
sampler's defaults. Writes a JSON file {variant: {"flags": [...], "results": {...}}} and prints
a table.

Usage: python tools/ablations.py [WEIGHTS.pt] [--out weights/eval/ablations.json]
       [--only NAME ...]   (about 20 minutes on the 2-core CPU for all variants)
       python tools/ablations.py --tables [--out ...]   (docs/diffusion.md's tables, no runs)
"""

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from hhmr import pipeline
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
X_T_EVERYWHERE = ["--space", "refit3d=x_t", "--space", "inpaint=x_t", "--space", "fit2d=x_t"]
GUIDED = "refit3d,fit2d"

# the sampler defaults the flags change (recorded with each variant: a partial run keeps
# variants measured under earlier defaults)
DEFAULTS = {"solver": pipeline.SOLVER, "spacing": pipeline.SPACING,
            **{f"{task}_last": t for task, t in pipeline.FINAL_TIMESTEP.items()}}

# name: (compare_weights flags, tasks). "default" is the shipped sampler.
VARIANTS: dict[str, tuple[list[str], str]] = {
    "default": ([], "refit3d,fit2d,inpaint,generate"),
    "random_first": (["--random-first"], GUIDED),
    "x_t_space": (X_T_EVERYWHERE, "refit3d,fit2d,inpaint"),
    "x_t_space_final_iters_1": (X_T_EVERYWHERE + ["--final-iters", "1"],
                                "refit3d,fit2d,inpaint"),
    "joint_influence_smooth": (["--joint-influence", "smooth"], GUIDED),
    "joint_influence_none": (["--joint-influence", "none"], GUIDED),
    "refit_camera": (["--refit-camera"], "fit2d"),
    "spacing_trailing": (["--spacing", "trailing"], "refit3d,fit2d,inpaint,generate"),
    "spacing_linspace": (["--spacing", "linspace"], "refit3d,fit2d,inpaint,generate"),
    "spacing_quadratic": (["--spacing", "quadratic"], "refit3d,fit2d,inpaint,generate"),
    "solver_ddim": (["--solver", "ddim"], "refit3d,fit2d,inpaint,generate"),
    "ddim_trailing": (["--solver", "ddim", "--spacing", "trailing"],
                      "refit3d,fit2d,inpaint,generate"),
    "generate_last_99": (["--generate-last", "99"], "generate"),
    "generate_last_40": (["--generate-last", "40"], "generate"),
    "generate_last_10": (["--generate-last", "10"], "generate"),
    "replace_fraction_1.0": (["--replace-fraction", "1.0"], "inpaint"),
    "replace_fraction_0.7": (["--replace-fraction", "0.7"], "inpaint"),
    "replace_fraction_0.5": (["--replace-fraction", "0.5"], "inpaint"),
    "replacement_alone": (["--space", "inpaint+replace=x0"], "inpaint"),
    "replace_cap_none": (["--replace-cap", "none"], "inpaint"),
}


def run(weights: str, flags: list[str], tasks: str) -> dict[str, float]:
    cmd = [sys.executable, str(HERE / "compare_weights.py"), weights, "--tasks", tasks, *flags]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    line = json.loads(out.strip().splitlines()[-1])
    line.pop("weights")
    return line


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
           for k, x in doc["variants"].items() if x.get("defaults") != DEFAULTS}
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
    start = time.perf_counter()
    for name in tqdm(names, desc="ablations"):
        flags, tasks = VARIANTS[name]
        out[name] = {"flags": flags, "tasks": tasks, "defaults": DEFAULTS,
                     "results": run(args.weights, flags, tasks)}
    out = {k: out[k] for k in VARIANTS if k in out}
    doc = {"weights": args.weights, "weights_sha256": digest, "seed": 100,
           "command": "python tools/ablations.py " + args.weights + " [--only NAMES]",
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

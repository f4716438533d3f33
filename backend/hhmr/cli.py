"""The `hhmr` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from hhmr.demo import run_demo

    result = run_demo(Path(args.out), num=args.num, seed=args.seed, weights=args.weights)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{len(result['meshes'])} hands ({result['model']}, {result['vertices']} vertices)"
              f" written to {Path(args.out).resolve()}")
        print(f"contact sheet: {Path(result['contact_sheet']).resolve()}")
        if result["note"]:
            print(result["note"])
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.task == "prior":
        from hhmr.evaluate import evaluate_prior

        result = evaluate_prior(num=args.num, seed=args.seed, progress=not args.json)
    else:
        from hhmr.evaluate_tasks import evaluate_task

        result = evaluate_task(args.task, num=args.num, seed=args.seed, steps=args.steps,
                               n=args.n, weights=args.weights, progress=not args.json,
                               guidance_scale=args.guidance)
    result["command"] = args.command_line
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for method, values in result["results"].items():
            print(method, " ".join(f"{k}={v:.3f}" for k, v in values.items()))
    return 0


def _train(args: argparse.Namespace) -> int:
    from hhmr.training.train import load_config, train

    config = load_config(args.config)
    resume = Path(args.resume) if args.resume else None
    if resume is None and (Path(args.out) / "checkpoint.pt").exists() and not args.fresh:
        resume = Path(args.out) / "checkpoint.pt"
        print(f"resuming from {resume}")
    result = train(config, Path(args.out), resume=resume, device=args.device,
                   max_steps=args.max_steps, max_minutes=args.max_minutes,
                   command=args.command_line)
    print(json.dumps(result, indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from hhmr.bench import run_bench

    result = run_bench(steps=args.steps, repeats=args.repeats, device=args.device,
                       weights=args.weights, ns=tuple(args.ns))
    result["command"] = args.command_line
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"device {result['device']}, {result['threads']} threads")
        for r in result["results"]:
            print(f"{r['task']:9s} n={r['n']:<3d} guidance={str(r['guidance']):5s} "
                  f"{r['median_ms']:9.1f} ms  peak {r['peak_mb']:.0f} MB")
    return 0


def _info(args: argparse.Namespace) -> int:
    from hhmr.hand import load_hand_model
    from hhmr.mesh.hierarchy import load_hierarchy, round_trip_errors_mm
    from hhmr.paths import cache_dir

    model = load_hand_model(args.model, mano_path=args.mano_path)
    cache = getattr(model, "hierarchy_path", None) or cache_dir() / f"{model.name}_hierarchy.npz"
    hierarchy = load_hierarchy(model.v_template.numpy(), model.faces.numpy(), cache)
    info = {
        "model": model.name,
        "vertices": model.num_vertices,
        "faces": int(model.faces.shape[0]),
        "keypoints": list(model.keypoint_names),
        "shape_names": list(model.shape_names),
        "hierarchy_sizes": hierarchy.sizes,
        "hierarchy_round_trip_mm": round_trip_errors_mm(hierarchy, model.v_template),
    }
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hhmr", description="Holistic hand mesh recovery")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="sample hands on the embedded default hand")
    p.add_argument("--out", default="hhmr_demo", help="output folder (default: ./hhmr_demo)")
    p.add_argument("--num", type=int, default=4, help="hands per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None, help="model file (default weights/hhmr_prior.pt)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_demo)

    p = sub.add_parser("evaluate", help="measure a task and print the figures")
    p.add_argument("--task", default="prior",
                   choices=["prior", "generate", "inpaint", "refit3d", "fit2d", "sweep"],
                   help="prior: the pose prior itself; sweep: fit2d min-of-n for n in "
                        "{1, 8, 16} and steps in {10, 25, 50}")
    p.add_argument("--num", type=int, default=50, help="held-out samples")
    p.add_argument("--seed", type=int, default=0, help="held-out seed (offset by 1e6)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps")
    p.add_argument("--n", type=int, default=1, help="hypotheses per sample (min-of-n)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale override")
    p.add_argument("--weights", default=None, help="model file (default weights/hhmr_prior.pt)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("train", help="train the diffusion prior on synthetic hands")
    p.add_argument("--config", default=str(Path(__file__).parent / "configs" / "prior.toml"))
    p.add_argument("--out", default="runs/prior", help="checkpoints go here")
    p.add_argument("--resume", default=None, help="checkpoint to resume from")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None)
    p.set_defaults(func=_train)

    p = sub.add_parser("bench", help="latency and memory of each task")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ns", type=int, nargs="+", default=[1, 8, 16], help="hypothesis counts")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--weights", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)

    p = sub.add_parser("info", help="describe a hand model")
    p.add_argument("--model", default="open", choices=["open", "mano"])
    p.add_argument("--mano-path", default=None, help="MANO_RIGHT.pkl (for --model mano)")
    p.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = "hhmr " + " ".join(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"hhmr {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

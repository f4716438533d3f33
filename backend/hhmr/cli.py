"""The `hhmr` command line."""

from __future__ import annotations

import argparse
import json
import os
import shlex
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
    if args.video:
        from hhmr.evaluation.video import evaluate_video

        result = evaluate_video(args.video, weights=args.weights, sequences=args.sequences,
                                frames=args.frames, end=args.end, progress=not args.json)
        result["command"] = args.command_line
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for clip in result["clips"]:
                print(f"{clip['clip']}: MediaPipe tracking {clip['mediapipe_tracking_mm']:.2f}, "
                      f"static {clip['mediapipe_static_mm']:.2f} mm/frame^2")
                for name, row in clip["settings"].items():
                    print(f"  {name}: {row['acceleration_mm']:.2f} mm/frame^2")
            for syn in result.get("synthetic", []):
                for name, row in syn["results"].items():
                    print(f"synthetic (hold {syn['hold']})", name,
                          " ".join(f"{k}={v:.2f}" for k, v in row.items()))
        return 0
    if args.renders:
        from hhmr.evaluation.renders import evaluate_renders

        result = evaluate_renders(args.renders, n=args.n, steps=args.steps,
                                  weights=args.weights, progress=not args.json)
    elif args.freihand_root:
        from hhmr.evaluation.photos import evaluate_freihand

        modes = tuple(args.mode) if args.mode else None
        result = evaluate_freihand(args.freihand_root, args.split, n=args.n, steps=args.steps,
                                   weights=args.weights, progress=not args.json, modes=modes,
                                   limit=args.limit, world_gate=args.world_gate,
                                   anchor_wrist=args.anchor_wrist)
    elif args.task == "prior":
        from hhmr.evaluation.prior import evaluate_prior

        result = evaluate_prior(num=args.num, seed=args.seed, progress=not args.json)
    else:
        from hhmr.evaluation.tasks import evaluate_task

        result = evaluate_task(args.task, num=args.num, seed=args.seed, steps=args.steps,
                               n=args.n, weights=args.weights, progress=not args.json,
                               guidance_scale=args.guidance, guide=_guide_arg(args.guide))
    result["command"] = args.command_line
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for method, values in result["results"].items():
            print(method, " ".join(f"{k}={v:.3f}" for k, v in values.items()
                                   if isinstance(v, float)))
    return 0


def _train(args: argparse.Namespace) -> int:
    from hhmr.training.train import apply_overrides, load_config, train

    config = apply_overrides(load_config(args.config), args.set)
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
    from hhmr.evaluation.bench import run_bench, run_reconstruct_bench, run_service_bench

    if args.reconstruct:
        result = run_reconstruct_bench(args.reconstruct, n=args.reconstruct_n, steps=args.steps,
                                       repeats=args.repeats, device=args.device,
                                       weights=args.weights)
        result["command"] = args.command_line
        print(json.dumps(result, indent=2) if args.json else "\n".join(
            f"{r['photo']}: {r['hands']} hand(s), {r['round_trip_ms']} ms (decode "
            f"{r['decode_ms']}, detect {r['detect_ms']}, sample {r['sample_ms']}, pose "
            f"{r['pose_ms']}, reply {r['reply_ms']})" for r in result["results"]))
        return 0
    if args.service:
        result = run_service_bench(args.requests, device=args.device, weights=args.weights,
                                   steps=args.steps, faults=args.faults)
        result["command"] = args.command_line
        print(json.dumps(result, indent=2) if args.json else "\n".join(
            f"{r['clients']} client(s): p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, "
            f"{r['throughput_rps']} requests/s, {r['failed']} failed"
            for r in result["results"]))
        return 0
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


def _serve(args: argparse.Namespace) -> int:
    from hhmr.server import ServerFailed, serve, serve_broker

    try:
        if getattr(args, "connect", None):
            serve(args.bind, args.device, weights=args.weights, connect=args.connect,
                  curve_secret_key=args.curve_secret_key, curve_server_key=args.curve_server_key)
        elif args.workers > 0 or args.broker_only:
            serve_broker(args.bind, args.workers, args.device, weights=args.weights,
                         curve_secret_key=args.curve_secret_key, backend=args.backend,
                         worker_keys=args.worker_keys, curve_clients=args.curve_clients)
        else:
            from hhmr.protocol import Limits

            serve(args.bind, args.device, weights=args.weights,
                  curve_secret_key=args.curve_secret_key, curve_clients=args.curve_clients,
                  limits=Limits(max_n=args.max_n, max_steps=args.max_steps,
                                max_queued=args.max_queued,
                                max_queued_per_client=args.max_queued_per_client))
    except (OSError, ValueError, ServerFailed) as err:
        print(f"hhmr serve: {err}", file=sys.stderr)
        return 1
    return 0


def _guide_arg(text: str | None) -> str | bool | None:
    """--guide: a file, "none" (False: no guide) or None (the pipeline's default)."""
    return False if text == "none" else text


def _box(text: str) -> tuple[float, ...]:
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not all(0 <= v <= 1e6 for v in box) or \
            not (box[2] > box[0] and box[3] > box[1]):
        raise argparse.ArgumentTypeError("expected pixels X0,Y0,X1,Y1 in 0..1e6 with X1 > X0 "
                                         "and Y1 > Y0")
    return box


def _reconstruct(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from hhmr.images import open_image
    from hhmr.io import write_obj
    from hhmr.reconstruct import NoHandError, default_intrinsics, faces_for, reconstruct
    from hhmr.render import render_overlay
    from hhmr.sampling import HandDiffusionPipeline

    pipe = HandDiffusionPipeline.from_pretrained(args.weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary, failed = [], 0
    for path in tqdm([Path(p) for p in args.images], desc="reconstruct", unit="image",
                     disable=args.json):
        item: dict = {"image": str(path)}
        try:
            photo = open_image(path, args.max_pixels)  # ImageError, ImageTooLarge, OSError
            rgb = np.asarray(photo)
            sidecar = path.with_suffix(".K.json")
            K = (np.array(json.loads(sidecar.read_text()), dtype=np.float32)
                 if sidecar.exists() else default_intrinsics(*photo.size, args.fov))
            hands = reconstruct(pipe, rgb, K, args.handedness, n=args.n, steps=args.steps,
                                seed=args.seed, mode=args.mode, box=args.box)
        except ImportError:
            raise  # the detector is missing: every image would fail, main() says so once
        except Exception as err:  # noqa: BLE001 - one image's failure must not lose the others
            failed += 1
            known = isinstance(err, OSError | NoHandError | ValueError)
            item["error"] = str(err) if known else f"{type(err).__name__}: {err}"
            summary.append(item)
            print(f"hhmr reconstruct: {path}: {item['error']}", file=sys.stderr)
            continue
        meshes, faces, kps, item["hands"] = [], [], [], []
        for k, (det, hyp) in enumerate(hands):
            side = hyp.extra["handedness"]
            order = hyp.order()
            files = [str(write_obj(out / f"{path.stem}_hand{k}_{side}_hyp{r}.obj",
                                   hyp.vertices[i].numpy(), faces_for(pipe, side),
                                   comment=f"hhmr reconstruct {path.name}, camera frame"))
                     for r, i in enumerate(order)]
            meshes.append(hyp.vertices[order[0]].numpy())
            faces.append(faces_for(pipe, side))
            kps.append(det.keypoints)
            item["hands"].append({"handedness": side, "detector_score": det.score,
                                  "reprojection_px": [-float(hyp.scores[i]) for i in order],
                                  "meshes": files})
        overlay = out / f"{path.stem}_overlay.png"
        render_overlay(photo, meshes, faces, K, kps).save(overlay)
        item["overlay"] = str(overlay)
        summary.append(item)
    if args.json:
        print(json.dumps(summary, indent=2))  # failed images too, as rows with an "error"
    else:
        for item in summary:
            if "error" not in item:  # the errors went to stderr as they happened
                sides = ", ".join(h["handedness"] for h in item["hands"])
                print(f"{item['image']}: {len(item['hands'])} hand(s) ({sides}) -> "
                      f"{item['overlay']}")
    if failed:
        print(f"hhmr reconstruct: {failed} of {len(summary)} image(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _reconstruct_video(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hhmr.bvh import write_bvh
    from hhmr.reconstruct import NoHandError
    from hhmr.sampling import HandDiffusionPipeline
    from hhmr.video import VideoOptions, preview, reconstruct_video

    given = {k: getattr(args, k) for k in ("start", "end", "stride", "handedness",
                                            "smoothing", "steps", "n", "seed", "mode")}
    options = VideoOptions(**{k: v for k, v in given.items() if v is not None},
                           **({} if args.fov is None else {"fov_deg": args.fov}))
    pipe = HandDiffusionPipeline.from_pretrained(args.weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clip = Path(args.clip)
    bar = tqdm(total=1, desc=f"{clip.name}: track", unit="frame", disable=args.json)

    fitting = []

    def progress(done: int, total: int) -> None:  # tracking is the first half, fitting the rest
        half = max(total // 2, 1)
        if done > half and not fitting:
            fitting.append(True)
            bar.reset(total=half)
            bar.set_description(f"{clip.name}: fit")
        bar.total = half
        bar.n = done - half if fitting else done
        bar.refresh()

    try:
        result = reconstruct_video(pipe, clip, options, progress=progress, fps=args.fps)
    except NoHandError as err:
        print(f"hhmr reconstruct-video: {clip}: {err}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    stem = clip.stem if clip.is_file() else clip.name
    files = {"npz": out / f"{stem}.npz", "bvh": out / f"{stem}.bvh",
             "preview": out / f"{stem}_preview.png"}
    result.save(files["npz"])
    write_bvh(files["bvh"], result, pipe.hand)
    if not args.no_preview:
        preview(clip, result).save(files["preview"])
    else:
        del files["preview"]
    summary = {"clip": str(clip), "frames": len(result.frames), "fps": result.fps,
               "handedness": result.handedness, "found": float(result.detected.mean()),
               "timings": result.timings, "files": {k: str(v) for k, v in files.items()},
               "command": args.command_line}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{clip}: {summary['frames']} frames, {result.handedness} hand found in "
              f"{summary['found']:.0%}, {result.timings['frames_per_s']:.1f} frames/s -> "
              + ", ".join(str(v) for v in files.values()))
    return 0


def _batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hhmr.batch import BatchOptions, LocalRunner, RayRunner, run_batch
    from hhmr.video import VideoOptions

    video = VideoOptions(**{k: v for k, v in {"end": args.end, "stride": args.stride,
                                              "smoothing": args.smoothing}.items()
                            if v is not None})
    options = BatchOptions(n=args.n, steps=args.steps, video=video, chunk=args.chunk,
                           overlap=args.overlap)
    runner = RayRunner(args.workers, args.address, args.weights, options) \
        if args.engine == "ray" else LocalRunner(args.weights, options)
    bar = tqdm(total=1, desc=f"batch ({runner.name})", unit="item", disable=args.json)

    def progress(done: int, total: int) -> None:
        bar.total, bar.n = total, done
        bar.refresh()

    try:
        report, _ = run_batch(args.inputs, args.out, runner, options, args.weights, progress)
    finally:
        bar.close()
        runner.close()
    summary = report.to_dict()
    frames = sum(v["frames"] for v in report.videos)
    summary["frames_per_s"] = frames / report.seconds if frames else None
    summary["command"] = args.command_line
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for row in report.photos + report.videos:
            print(row["path"], row.get("error") or " ".join(row.get("files", [])))
        print(f"{report.items} items on {report.workers} {report.engine} worker(s) in "
              f"{report.seconds:.1f} s -> {args.out}")
    return 1 if any("error" in r for r in report.photos + report.videos) else 0


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
    from hhmr import protocol as P  # the standard library only

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
                   choices=["prior", "generate", "inpaint", "refit3d", "refit3d_finger",
                            "fit2d", "sweep", "pose"],
                   help="prior: the pose prior itself; sweep: fit2d min-of-n for n in "
                        "{1, 8, 16} and steps in {10, 25, 50}; refit3d_finger: only refit3d's "
                        "finger-only row; pose: the pose solver (hhmr.hand.pose_fit)")
    p.add_argument("--num", type=int, default=50, help="held-out samples")
    p.add_argument("--seed", type=int, default=0, help="held-out seed (offset by 1e6)")
    p.add_argument("--steps", type=int, default=10, help="sampling steps")
    p.add_argument("--n", type=int, default=1, help="hypotheses per sample (min-of-n)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale override")
    p.add_argument("--weights", default=None, help="model file (default weights/hhmr_prior.pt)")
    p.add_argument("--guide", default=None,
                   help="autoguidance net for generation (default: weights/hhmr_guide.pt with "
                        "the shipped weights, none with others); 'none' turns it off")
    p.add_argument("--freihand-root", default=None,
                   help="evaluate reconstruct on real photos in FreiHAND layout instead")
    p.add_argument("--split", default="evaluation")
    p.add_argument("--mode", action="append", default=None, choices=P.RECONSTRUCT_MODES,
                   help="reconstruct mode, repeatable (default: every mode the weights can "
                        "run): skel2d = MediaPipe's 2D keypoints; skel2d+lifted = with the "
                        "keypoints lifted to its depth; skel2d+world = with those of its 3D "
                        "world landmarks that agree with them; skel2d+world_all = with all of "
                        "them; +image = with the photo's image tokens")
    p.add_argument("--renders", type=int, default=None, metavar="N",
                   help="evaluate on N held-out rendered hands instead (HHMR's Table 5 rows: "
                        "image, image + 2D, image + 2D + guidance; first and min-of---n)")
    p.add_argument("--limit", type=int, default=None, help="only the first LIMIT photos")
    p.add_argument("--video", action="append", default=None, metavar="CLIP",
                   help="evaluate video instead, repeatable: jitter on each clip against "
                        "MediaPipe's, then accuracy, jitter and lag on synthetic motion")
    p.add_argument("--end", type=int, default=None, help="--video: only the clips' first "
                   "END frames")
    p.add_argument("--sequences", type=int, default=4,
                   help="--video: synthetic sequences (0: none)")
    p.add_argument("--frames", type=int, default=90, help="--video: frames per sequence")
    p.add_argument("--world-gate", type=float, default=None, metavar="FRACTION",
                   help="skel2d+lifted and skel2d+world: 3D joints further than this "
                        "fraction of the hand's extent from their keypoints are left out "
                        "(default: the weights' sampling config, photo.world_gate)")
    p.add_argument("--anchor-wrist", choices=("on", "off"), default=None,
                   help="with --freihand-root, skel2d+lifted and skel2d+world: re-anchor a "
                        "wrist that fails the gate (default: the weights' sampling config, "
                        "photo.anchor_wrist)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("train", help="train the diffusion prior on synthetic hands")
    p.add_argument("--config", default="configs/prior.toml",
                   help="training recipe: configs/prior.toml (the shipped prior, default), "
                        "configs/guide.toml (its guide net) or a TOML file of your own")
    p.add_argument("--out", default="runs/prior", help="checkpoints go here")
    p.add_argument("--resume", default=None, help="checkpoint to resume from")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (TOML syntax), e.g. --set train.t_focus=0.5;"
                        " repeatable; give the same ones again when resuming")
    p.set_defaults(func=_train)

    p = sub.add_parser("bench", help="latency and memory of each task")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ns", type=int, nargs="+", default=[1, 8, 16], help="hypothesis counts")
    p.add_argument("--service", action="store_true",
                   help="latency and throughput of a real `hhmr serve` for 1 and 16 clients")
    p.add_argument("--requests", type=int, default=30, help="--service: requests per client")
    p.add_argument("--reconstruct", nargs="+", default=None, metavar="PHOTO",
                   help="time reconstruct on these photos through a real `hhmr serve`, by "
                        "stage (as the add-on asks: pose on)")
    p.add_argument("--reconstruct-n", type=int, default=8, help="--reconstruct: hypotheses")
    p.add_argument("--faults", action="store_true",
                   help="--service: also a 10,000-frame fuzz and a resend storm")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--weights", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)

    p = sub.add_parser("serve", help="run the ZeroMQ backend service")
    p.add_argument("--bind", default="tcp://127.0.0.1:5557")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--weights", default=None)
    p.add_argument("--curve-secret-key", default=None,
                   help="CurveZMQ secret key file (zmq.auth); required off loopback")
    p.add_argument("--curve-clients", default=None, metavar="DIR",
                   help="with --curve-secret-key: the folder of client public keys (*.key) "
                   "the server admits; others are refused")
    p.add_argument("--max-n", type=int, default=64, help="most hypotheses per request")
    p.add_argument("--max-queued", type=int, default=64,
                   help="most requests waiting, all clients together (then BUSY)")
    p.add_argument("--max-queued-per-client", type=int, default=16,
                   help="most requests waiting for one client (then BUSY)")
    p.add_argument("--max-steps", type=int, default=200, help="most sampling steps per request")
    p.add_argument("--workers", type=int, default=0,
                   help="N > 0: a broker in front of N worker processes that it starts, "
                        "watches and restarts")
    p.add_argument("--broker-only", action="store_true",
                   help="a broker whose workers are started elsewhere (hhmr worker --connect)")
    p.add_argument("--backend", default=None,
                   help="broker's worker-facing address (default: an ipc:// socket in a "
                        "private folder); off loopback it needs --curve-secret-key and "
                        "--worker-keys")
    p.add_argument("--worker-keys", default=None, metavar="DIR",
                   help="folder of the workers' CurveZMQ public keys (*.key, zmq.auth): the "
                        "backend then admits only these workers")
    p.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="a compute worker connected to a broker's backend")
    p.add_argument("--connect", required=True, help="the broker's --backend address")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--weights", default=None)
    p.add_argument("--curve-server-key", default=None, metavar="FILE",
                   help="the broker's CurveZMQ public key file; required off loopback")
    p.add_argument("--curve-secret-key", default=None, metavar="FILE",
                   help="this worker's CurveZMQ secret key file (its public key must be in "
                        "the broker's --worker-keys)")
    p.set_defaults(func=_serve, bind="", curve_clients=None, workers=0)

    p = sub.add_parser("reconstruct", help="hand meshes from photos (needs the detect extra)")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default="hhmr_reconstruct")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fov", type=float, default=50.0,
                   help="horizontal field of view (degrees) when there is no NAME.K.json")
    p.add_argument("--handedness", choices=["left", "right"], default=None)
    p.add_argument("--box", type=_box, default=None, metavar="X0,Y0,X1,Y1",
                   help="reconstruct the one hand in this box (pixels), found by the landmark "
                        "network when the palm detector misses it (gloves, instruments)")
    p.add_argument("--mode", choices=P.RECONSTRUCT_MODES, default=None,
                   help="what the photo conditions on: the detector's 2D keypoints, with them "
                        "lifted to its depth, with those of its 3D world landmarks that agree "
                        "with them, or with all (default: the weights' sampling config, "
                        "photo.mode; skel2d+lifted for the shipped weights)")
    p.add_argument("--max-pixels", type=int, default=8192 * 8192,
                   help="largest image to decode, in pixels (default 8192*8192); a larger one "
                        "fails without being decoded")
    p.add_argument("--weights", default=None)
    p.add_argument("--json", action="store_true",
                   help="print a JSON list, one row per image (failed ones with an \"error\")")
    p.set_defaults(func=_reconstruct)

    p = sub.add_parser("reconstruct-video",
                       help="a hand's animation from a video or a folder of frames (needs the "
                            "detect extra): .npz, .bvh and a preview sheet")
    p.add_argument("clip", help="a video file (anything OpenCV reads) or a folder of images")
    p.add_argument("--out", default="hhmr_video")
    p.add_argument("--start", type=int, default=0, help="first frame")
    p.add_argument("--end", type=int, default=None, help="one past the last frame")
    p.add_argument("--stride", type=int, default=1, help="every STRIDE-th frame")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of a folder of images")
    p.add_argument("--handedness", choices=["left", "right"], default=None,
                   help="the hand to follow (default: the side seen most)")
    p.add_argument("--smoothing", type=float, default=None,
                   help="how smooth the animation is, 0 none (default 2); it adds no lag")
    p.add_argument("--steps", type=int, default=None, help="sampling steps per frame (default 5)")
    p.add_argument("--n", type=int, default=1, help="hypotheses per frame (the best is kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=P.RECONSTRUCT_MODES, default=None,
                   help="what each frame conditions on (see hhmr reconstruct --mode)")
    p.add_argument("--fov", type=float, default=None,
                   help="horizontal field of view in degrees (default 50)")
    p.add_argument("--no-preview", action="store_true", help="skip the preview sheet")
    p.add_argument("--weights", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_reconstruct_video)

    p = sub.add_parser("batch", help="photos and videos in bulk, here or on a Ray cluster "
                       "(needs the detect extra; Ray: the ray extra)")
    p.add_argument("inputs", nargs="+", help="photos, videos, or folders of them")
    p.add_argument("--out", default="hhmr_batch")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--workers", type=int, default=2, help="ray: actors (one CPU each)")
    p.add_argument("--address", default=None,
                   help="ray: an existing cluster's address ('auto' inside `ray job submit`); "
                        "default: a local cluster of --workers CPUs")
    p.add_argument("--chunk", type=int, default=120, help="videos: frames per chunk")
    p.add_argument("--overlap", type=int, default=8, help="videos: frames chunks share")
    p.add_argument("--end", type=int, default=None, help="videos: only the first END frames")
    p.add_argument("--stride", type=int, default=None, help="videos: every STRIDE-th frame")
    p.add_argument("--smoothing", type=float, default=None, help="videos: see reconstruct-video")
    p.add_argument("--n", type=int, default=4, help="photos: hypotheses per hand")
    p.add_argument("--steps", type=int, default=10, help="photos: sampling steps")
    p.add_argument("--weights", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_batch)

    p = sub.add_parser("info", help="describe a hand model")
    p.add_argument("--model", default="open", choices=["open", "mano"])
    p.add_argument("--mano-path", default=None, help="MANO_RIGHT.pkl (for --model mano)")
    p.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    # quoted, and with the weights folder when it is not the shipped one: it can be pasted
    # into a shell and runs the same
    env = os.environ.get("HHMR_WEIGHTS")
    args.command_line = (f"HHMR_WEIGHTS={shlex.quote(env)} " if env else "") + "hhmr " + \
        shlex.join(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"hhmr {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

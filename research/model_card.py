"""Write weights/MODEL_CARD.md from the weights file and the JSON that `hhmr evaluate` and
`hhmr bench` wrote into weights/eval/ (so every figure in the card comes from a command).

    python research/model_card.py [--out weights/MODEL_CARD.md]

The sampler settings it quotes are the ones saved in the weights file (`SamplingConfig`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from hhmr.evaluation.photos import SAME_HAND

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "hhmr_prior.pt"
GUIDE = ROOT / "weights" / "hhmr_guide.pt"
EVAL = ROOT / "weights" / "eval"
KEYS = ("pa_mpjpe_mm", "pa_mpvpe_mm", "min_of_16_pa_mpjpe_mm", "min_of_16_pa_mpvpe_mm",
        "rr_mpjpe_mm", "pa_mpjpe_convention_mm", "rr_mpjpe_convention_mm", "keypoint_2d_px",
        "kept_err_mm", "apd_mm", "si_pct", "fidelity_mm", "coverage_mm", "detection_rate",
        "samples")
# evaluations of weights that are not shipped, with what made them (docs/photos.md)
NOT_SHIPPED = {
    "image": "the prior fine-tuned with image tokens on rendered hands (`hhmr train "
             "--config configs/image.toml --out runs/image`, 30.0 CPU minutes from the shipped "
             "prior; not shipped: no gain on real photos)",
    "knuckles": "the shipped recipe trained from scratch on the candidate hand with its MCP "
                "joints at the knuckles (docs/hand_model.md): `python tools/build_hand_model.py "
                "--knuckles-only weights/hands/open_hand_right.npz --out runs/knuckles_w/hands`, "
                "then `HHMR_WEIGHTS=runs/knuckles_w hhmr train --config configs/prior.toml --out "
                "runs/prior_knuckles --fresh` (88.0 CPU minutes, 12640 steps on this VM against "
                "the shipped prior's 19561) and the command above; not shipped: root-relative "
                "error past 15 mm, and trained longer (knuckleslong) it is no better",
    "knuckleslong": "the shipped recipe trained from scratch on the candidate hand with its "
                    "MCP joints at the knuckles, as `knuckles` but for 105 CPU minutes "
                    "(`--max-steps 19561 --max-minutes 105`; 16256 steps on this VM): "
                    "`HHMR_WEIGHTS=runs/knuckles_w hhmr train --config configs/prior.toml "
                    "--out runs/prior_knuckles2 --fresh --max-steps 19561 --max-minutes 105` "
                    "and the command above; not shipped: no better than the 88-minute run on "
                    "the dev photos, root-relative error past 15 mm",
    "knucklesft": "the shipped prior fine-tuned for 25.0 CPU minutes on the candidate hand with "
                  "its MCP joints at the knuckles (docs/hand_model.md), run with the candidate "
                  "in place of weights/hands/open_hand_right.npz; equivalently `python "
                  "tools/build_hand_model.py --knuckles-only weights/hands/open_hand_right.npz "
                  "--out runs/knuckles_w/hands`, then with `HHMR_WEIGHTS=runs/knuckles_w` both "
                  "`hhmr train --out runs/knuckles --fresh --set "
                  "'train.init=\"weights/hhmr_prior.pt\"' --set train.lr=3e-4 --set "
                  "train.warmup_steps=100 --set train.ema_decay=0.998 --set train.seed=3 "
                  "--max-minutes 25` and the command above; not shipped: worse on held-out "
                  "synthetic hands than the shipped prior on its own hand",
}


def table(result: dict) -> list[str]:
    rows = result["results"]
    keys = [k for k in KEYS if any(k in r for r in rows.values())]
    fmt = "{:.2f}"
    if not keys:  # an evaluation with figures of its own (the pose solver's)
        keys, fmt = list(dict.fromkeys(k for r in rows.values() for k in r)), "{:.3g}"
    out = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for method, vals in rows.items():
        out.append(f"| {method} | " + " | ".join(
            fmt.format(vals[k]) if k in vals else "" for k in keys) + " |")
    return out


def _load(name: str) -> dict | None:
    path = EVAL / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _spaces(r: dict, task: str) -> tuple[str, str]:
    """The default guidance space of a task in an evaluation and the other one (evaluations
    written before hhmr.sampling name inpainting by guidance alone "inpaint")."""
    spaces = r.get("guidance_space", {})
    if task == "inpaint_without_replacement" and task not in spaces:
        task = "inpaint" if "inpaint+replace" in spaces else task
    space = spaces.get(task, "x_t")
    return space, "x0" if space == "x_t" else "x_t"


def targets() -> list[tuple[str, str, str, bool]]:
    """(what, measured, goal, met) for each figure the issue sets a target for; where an
    evaluation has the other guidance space too, it gets a row of its own."""
    rows = []
    if r := _load("refit3d"):
        space, other = _spaces(r, "refit3d")
        for name, sp in (("guidance", space), (f"guidance_{other}", other)):
            if f"{name}/full" in r["results"]:
                v = r["results"][f"{name}/full"]["pa_mpvpe_mm"]
                rows.append((f"refit3d full skeleton PA-MPVPE ({sp} guidance)", f"{v:.2f} mm",
                             "<= 3.0 mm", v <= 3.0))
    if r := _load("refit3d_finger"):
        v = r["results"]["guidance/finger_only"]
        rows.append(("refit3d one finger, no wrist: given joints, worst hypothesis",
                     f"{v['given_err_mm_max']:.2f} mm", "<= 3 mm", v["given_err_mm_max"] <= 3))
        for what, key in (("posed extent", "normal_size"), ("unposed (rest) extent",
                                                            "normal_rest_size"),
                          ("total bone length", "normal_bone_length")):
            pct = v[f"hypotheses_{key}_pct"]
            rows.append((f"refit3d one finger: hypotheses with {what} 0.8-1.25 of the target's",
                         f"{pct:.1f} %", "100 %", pct >= 100))
    if r := _load("real_hgcnn_dev"):
        mode = r.get("photo", {}).get("mode", "skel2d+world")
        best = r["results"].get(mode)
        if best:
            for key, goal in (("pa_mpjpe_mm", 7.0), ("rr_mpjpe_mm", 15.0)):
                rows.append((f"photos (real_hgcnn_dev, default mode {mode}, n=1) {key}",
                             f"{best[key]:.2f} mm", f"<= {goal} mm", best[key] <= goal))
    if r := _load("click_to_shape_keys"):
        for key, what in (("shape_keys_ms", "in the scene"),
                          ("drawn_ms", "drawn (Xvfb's software OpenGL)")):
            v = r["median_after_warmup_ms"].get(key)
            if v is None:
                continue
            rows.append((f"click to shape keys {what}, Blender {r['blender']}, n={r['n']}, "
                         "median after warm-up", f"{v:.0f} ms", "<= 1000 ms", v <= 1000))
    if r := _load("video"):
        for clip in r["clips"]:
            ours, mp = clip["settings"]["default"]["acceleration_mm"], \
                clip["mediapipe_tracking_mm"]
            rows.append((f"video jitter, {clip['clip']}: ours vs MediaPipe tracking "
                         "(mm/frame^2)", f"{ours:.2f} vs {mp:.2f}", "<= half",
                         ours <= mp / 2))
        for syn in r.get("synthetic", []):
            res = syn["results"]
            a, b = res["default"]["pa_mpjpe_mm"], res["unsmoothed"]["pa_mpjpe_mm"]
            rows.append((f"video synthetic motion (gesture every {syn['hold']} frames): "
                         "PA-MPJPE smoothed vs not", f"{a:.2f} vs {b:.2f} mm", "no worse",
                         a <= b))
            lag = res["default"]["lag_frames"]
            rows.append((f"video synthetic motion (gesture every {syn['hold']} frames): lag",
                         f"{lag:.1f} frames", "<= 1", abs(lag) <= 1))
    if r := _load("reconstruct_video"):
        fps = r["timings"]["frames_per_s"]
        rows.append((f"reconstruct-video speed, n=1 ({r['frames']} frames)",
                     f"{fps:.1f} frames/s", ">= 10", fps >= 10))
    if r := _load("fit2d"):
        res = r["results"]
        g, ng = res["guidance/gt"]["pa_mpjpe_mm"], res["no_guidance/gt"]["pa_mpjpe_mm"]
        opt = res["lbs_optimisation/gt"]["pa_mpjpe_mm"]
        sp = _spaces(r, "fit2d")[0]
        rows.append((f"fit2d GT keypoints PA-MPJPE ({sp} guidance)", f"{g:.2f} mm", "<= 6.0 mm",
                     g <= 6.0))
        rows.append(("fit2d guidance better than none (PA-MPJPE)", f"{g:.2f} vs {ng:.2f} mm",
                     "lower", g < ng))
        rows.append(("fit2d both better than LBS optimisation", f"{g:.2f}, {ng:.2f} vs "
                     f"{opt:.2f} mm", "lower", max(g, ng) < opt))
    if r := _load("inpaint"):
        space, other = _spaces(r, "inpaint_without_replacement")
        for name, sp in (("guidance", space), (f"guidance_{other}", other)):
            if name in r["results"]:
                v = r["results"][name]
                rows.append((f"inpaint kept-region error, {sp} guidance alone",
                             f"{v['kept_err_mm']:.2f} mm", "<= 1.0 mm", v["kept_err_mm"] <= 1.0))
        w = r["results"]["guidance+replace"]
        rows.append(("inpaint kept-region error, guidance + replacement",
                     f"{w['kept_err_mm']:.4f} mm", "<= 1.0 mm", w["kept_err_mm"] <= 1.0))
        rows.append(("inpaint free region varies (APD)", f"{w['apd_mm']:.1f} mm", "> 0",
                     w["apd_mm"] > 0))
    if r := _load("generate"):
        d, pca = r["results"]["diffusion"], r["results"]["pca"]
        rows.append(("generate self-intersection", f"{d['si_pct']:.2f} %", "<= 0.5 %",
                     d["si_pct"] <= 0.5))
        rows.append(("generate APD vs PCA baseline", f"{d['apd_mm']:.1f} vs {pca['apd_mm']:.1f}"
                     " mm", ">= PCA", d["apd_mm"] >= pca["apd_mm"]))
    if r := _load("bench"):
        def ms(task: str, n: int, guided: bool) -> float:
            return max(x["median_ms"] for x in r["results"] if x["task"] == task
                       and x["n"] == n and x["guidance"] == guided)
        worst16 = max(ms(t, 16, True) for t in ("inpaint", "refit3d", "fit2d"))
        worst1 = max(ms(t, 1, False) for t in ("generate", "inpaint", "refit3d", "fit2d"))
        rows.append(("bench n=16 with guidance, slowest task", f"{worst16:.0f} ms",
                     "<= 1000 ms", worst16 <= 1000))
        rows.append(("bench n=1 without guidance, slowest task", f"{worst1:.0f} ms",
                     "<= 100 ms", worst1 <= 100))
    return rows


def training_commands(ckpt: dict, target: str = "weights/hhmr_prior.pt") -> list[str]:
    """The command (or the chain of resumed runs) that made the weights."""
    command = ckpt.get("command", "hhmr train --out runs/prior")
    out = command.split("--out ")[1].split()[0] if "--out " in command else "runs/prior"
    copy = f"`cp {out}/final.pt {target}`"
    stages = ckpt.get("stages") or []
    if len(stages) < 2:
        return [f"- Command: `{command}`, then {copy}"]
    lines = ["- Commands, each resuming the one before:"]
    lines += [f"  {i}. `{st['command']}`: to step {st['to_step']}, {st['minutes']:.1f} min in all"
              for i, st in enumerate(stages, 1)]
    return lines + [f"  then {copy}"]


def run_time(ckpt: dict) -> str:
    """The run's budget time: wall time, less the hypervisor's steal for runs that record it
    (`hhmr.training.clock`)."""
    if ckpt.get("wall_minutes") is None:
        return f"wall time {ckpt['minutes']:.1f} min"
    return (f"{ckpt['minutes']:.1f} min of the CPU (wall time {ckpt['wall_minutes']:.1f} min, "
            "less the time the VM's host took from its CPUs)")


EXPERIMENT_COLUMNS = (
    ("refit3d guided / unguided PA-MPVPE", "refit3d_guided_pa_mpvpe_mm",
     "refit3d_unguided_pa_mpvpe_mm"),
    ("fit2d guided / unguided PA-MPJPE", "fit2d_guided_pa_mpjpe_mm", "fit2d_unguided_pa_mpjpe_mm"),
    ("inpaint SI % (guidance / replacement)", "inpaint_si_pct", "inpaint_replace_si_pct"),
    ("generate APD / SI %", "generate_apd_mm", "generate_si_pct"),
    ("generate fidelity / coverage", "generate_fidelity_mm", "generate_coverage_mm"),
)


def experiments() -> list[str]:
    """Checkpoints kept in weights/checkpoints/ (not shipped): how each was trained, and the
    tuning-seed figures `research/compare_weights.py` wrote into weights/eval/checkpoints.jsonl."""
    paths = sorted((ROOT / "weights" / "checkpoints").glob("prior_v*_final.pt"))
    rows_file = EVAL / "checkpoints.jsonl"
    if not paths or not rows_file.exists():
        return []
    rows = {r["weights"]: r for r in map(json.loads, rows_file.read_text().splitlines())}
    names = ["weights/hhmr_prior.pt"] + [str(p.relative_to(ROOT)) for p in paths]
    lines = ["", "## Experimental checkpoints (not shipped)", ""]
    for path in paths:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        lines.append(f"- `{path.relative_to(ROOT)}`: `{ckpt.get('command')}`; steps "
                     f"{ckpt['step']}, " + run_time(ckpt))
    lines += ["", "Tuning seed (100), n=1, 10 steps, mm unless marked, each net alone (no "
              "autoguidance): `python research/compare_weights.py --guide none " + " ".join(names)
              + " > weights/eval/checkpoints.jsonl` (docs/diffusion.md, runs v11 and v12, says "
              "what they show).", "",
              "| weights | " + " | ".join(c[0] for c in EXPERIMENT_COLUMNS) + " |",
              "|---" * (len(EXPERIMENT_COLUMNS) + 1) + "|"]
    for name in names:
        r = rows.get(name)
        if r is not None:
            lines.append(f"| `{name}` | " + " | ".join(
                f"{r.get(a)} / {r.get(b)}" for _, a, b in EXPERIMENT_COLUMNS) + " |")
    return lines


def sampling_config():
    """The sampling settings saved in the shipped weights (the defaults where none are)."""
    from hhmr.sampling import SamplingConfig

    ckpt = torch.load(WEIGHTS, map_location="cpu", weights_only=False)
    return SamplingConfig.from_dict(ckpt.get("sampling"))


def size_line(ckpt: dict, path: Path) -> str:
    params = sum(v.numel() for v in ckpt["model"].values())
    return f"- Parameters: {params / 1e6:.2f} M; file {path.stat().st_size / 1e6:.1f} MB"


def guide_section() -> list[str]:
    """The autoguidance net (weights/hhmr_guide.pt): how it was trained, the setting the
    pipeline uses, and the tuning-seed sweep `research/autoguidance_sweep.py` wrote."""
    if not GUIDE.exists():
        return []
    from hhmr.diffusion import CosineSchedule, DPMSolverSampler

    ckpt = torch.load(GUIDE, map_location="cpu", weights_only=False)
    sampling = sampling_config()
    auto = sampling.generate.autoguidance
    if auto is None:
        return []
    front = DPMSolverSampler(CosineSchedule()).set_timesteps(
        10, sampling.sampler.spacing).tolist()
    lines = ["", "## Guide net for generation: `weights/hhmr_guide.pt`", "",
             "A weaker net of the same kind: generation's autoguidance (Karras et al. 2024) "
             f"takes x0 = D_guide + w (D - D_guide), with w = {auto.weight:g} at timesteps "
             f"{auto.t_min}..{auto.t_max} (`generate.autoguidance` of the `SamplingConfig` "
             "saved in the weights file, `hhmr.sampling.config`; "
             "docs/diffusion.md). Only generation uses it. Its training time comes on top "
             "of the prior's.", "",
             *training_commands(ckpt, "weights/hhmr_guide.pt"),
             f"- Model: {ckpt['config']['model']}",
             f"- Steps: {ckpt['step']}, " + run_time(ckpt),
             size_line(ckpt, GUIDE)]
    sweep = EVAL / "autoguidance.json"
    if sweep.exists():
        r = json.loads(sweep.read_text())
        keys = ("apd_mm", "si_pct", "fidelity_mm", "coverage_mm", "palm_sd_mm")
        lines += ["", f"Tuning seed ({r['seed']}), {r['num']} hands: `{r['command']}` "
                  "(variant wW_fromT: weight W at timesteps >= T; the default sampler's 10 "
                  f"steps are {', '.join(map(str, front))})", "",
                  "| variant | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{v[k]:.2f}" for k in keys) + " |"
                  for name, v in r["variants"].items()]
    return lines


def service_tables(result: dict) -> list[str]:
    """The service bench: latency per client count, and the fault runs when measured."""
    lines = ["| clients | requests | answered | p50 ms | p95 ms | p99 ms | requests/s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['clients']} | {r['requests']} | {r.get('answered', '')} | {r['p50_ms']} | "
              f"{r.get('p95_ms', '')} | {r['p99_ms']} | {r['throughput_rps']} |"
              for r in result["results"]]
    if "fuzz" in result:
        f = result["fuzz"]
        replies = ", ".join(f"{k} {v}" for k, v in sorted(f["replies"].items()))
        lines += ["", f"Fuzz: {f['frames']} frames of {len(f['by_kind'])} kinds, "
                  f"{f['answered']} answered ({replies}) in {f['seconds']} s; `info` after it "
                  f"{f['info_after_ms']} ms; server memory {f['server_rss_mb_before']} -> "
                  f"{f['server_rss_mb_after']} MB."]
    if "resend_storm" in result:
        r = result["resend_storm"]
        runs = sorted(set(r["jobs_per_id"].values()))
        ok = sum(v == "ok" for v in r["results"].values())
        lines += ["", f"Resend storm: {r['clients']} clients, generate n={r['n']} "
                  f"steps={r['steps']}, timeout {r['timeout_s']} s, {r['retries']} retries and "
                  f"{r['raw_resends']} raw resends each: {ok} of {len(r['results'])} ok, runs "
                  f"per id {runs}, {r['seconds']} s."]
    return lines


def video_tables(result: dict) -> list[str]:
    """`hhmr evaluate --video`: jitter per clip beside MediaPipe's, then synthetic motion."""
    names = list(result["clips"][0]["settings"])
    lines = ["Jitter: mean keypoint acceleration (mm/frame^2, hand-centred) over the frames "
             "whose neighbours MediaPipe's tracker found.", "",
             "| clip | frames | found | MediaPipe tracking | MediaPipe per frame | "
             + " | ".join(f"ours, {n}" for n in names) + " |",
             "|---" * (5 + len(names)) + "|"]
    for c in result["clips"]:
        lines.append(f"| {c['clip']} | {c['frames']} | {c['detected'] * 100:.0f} % | "
                     f"{c['mediapipe_tracking_mm']:.2f} | {c['mediapipe_static_mm']:.2f} | "
                     + " | ".join(f"{c['settings'][n]['acceleration_mm']:.2f}" for n in names)
                     + " |")
    smooth = {n: result["clips"][0]["settings"][n]["smoothing"] for n in names}
    lines += ["", "Settings: " + ", ".join(f"{n} = smoothing {v:g}" for n, v in smooth.items())]
    for syn in result.get("synthetic", []):
        keys = list(next(iter(syn["results"].values())))
        lines += ["", f"Synthetic motion, {syn['sequences']} sequences of {syn['frames']} "
                  f"frames, a new gesture every {syn['hold']} frames, keypoints with "
                  f"{syn['noise_px']} px noise:", "",
                  "| setting | " + " | ".join(keys) + " |", "|---" * (1 + len(keys)) + "|"]
        lines += [f"| {n} | " + " | ".join(f"{v[k]:.2f}" for k in keys) + " |"
                  for n, v in syn["results"].items()]
    return lines


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "weights" / "MODEL_CARD.md"))
    args = ap.parse_args()
    ckpt = torch.load(WEIGHTS, map_location="cpu", weights_only=False)
    cfg = ckpt["config"]
    last = ckpt["history"][-1] if ckpt.get("history") else {}
    lines: list[str] = [
        "# Model card: `weights/hhmr_prior.pt`",
        "",
        "The guided graph-diffusion prior over the open hand (803 vertices): a GraphUNet that "
        "predicts x0, conditioned on 3D skeletons and 2D skeletons; its image slot is not "
        "trained (the image-token fine-tune measured below is not shipped, docs/photos.md). "
        "See docs/diffusion.md.",
        "",
        "## Training",
        "",
        *training_commands(ckpt),
        f"- Config: `backend/hhmr/configs/prior.toml` (model {cfg['model']}, batch "
        f"{cfg['train']['batch_size']}, lr {cfg['train']['lr']}, timestep focus "
        f"{cfg['train'].get('t_focus', 0.0)}, timestep weighting "
        f"{cfg['train'].get('t_weighting', 'uniform')}, loss weights {cfg['loss']})",
        f"- Device: {ckpt.get('device', 'cpu')} (this project's 2-core CPU machine)",
        f"- Steps: {ckpt['step']}, " + run_time(ckpt),
        "- Weights: " + (f"exponential moving average (decay {ckpt['ema_decay']})"
                         if ckpt.get("ema_decay") else "the last step's (no moving average)"),
        size_line(ckpt, WEIGHTS),
        "- Data: synthetic only, streamed from the pose prior (`hhmr.data.poses`, seeds < 1e6):"
        " random gestures, shapes (7 directions), uniformly random orientations, random "
        "pinhole cameras; no dataset, no download.",
        "- Final training losses (mean of the last interval): "
        + ", ".join(f"{k} {v:.4f}" for k, v in last.items()
                    if k not in ("step", "minutes", "wall_minutes")),
    ]
    lines += guide_section()
    lines += [
        "",
        "## Metrics (held-out synthetic, seeds >= 1e6; mm and %)",
        "",
        "Each table is the JSON in `weights/eval/` written by the command above it.",
    ]
    lines += ["", "## Against the targets of the issues", "",
              "| target | measured | met |", "|---|---|---|"]
    for name, value, goal, ok in targets():
        lines.append(f"| {name} (goal {goal}) | {value} | {'yes' if ok else 'no'} |")
    lines += ["", "Sampler ablations on the tuning seed (100): `weights/eval/ablations.json`, "
              "written by `python research/ablations.py`; docs/diffusion.md gives its tables."]
    for path in sorted(EVAL.glob("*.json")):
        if path.stem in ("ablations", "autoguidance"):
            continue
        result = json.loads(path.read_text())
        lines += ["", f"### {path.stem}", "", f"`{result.get('command', '')}`", ""]
        tag = path.stem.rsplit("_", 1)[-1]
        if tag in NOT_SHIPPED:
            lines += [f"Not the shipped weights: {NOT_SHIPPED[tag]}.", ""]
        if "results" in result and isinstance(result["results"], dict):
            lines += table(result)
            if "other_hand_only" in result:
                lines += ["", f"Photos whose nearest detection is farther from the ground "
                          f"truth than {SAME_HAND} of the hand's 2D diagonal (another hand, or "
                          f"this one misplaced; counted as not found): "
                          f"{result['other_hand_only']} of {result['num']}; the largest such "
                          f"distances: {result['hand_distances']}."]
            elif result.get("task") == "freihand":
                lines += ["", "Run before `hhmr evaluate` checked that a detection is the "
                          "ground truth's hand: detections of another hand count as found."]
            if any("pa_mpjpe_convention_mm" in r for r in result["results"].values()):
                lines += ["", "The convention columns: each row's joints moved by per-joint "
                          "offsets in their bone frames, fitted on the other four of five folds "
                          "(each a run of consecutive photos: see fold_leakage) "
                          "of the same run against this set's truth (its own joint convention; "
                          "`hhmr.evaluation.convention`); they compare only with each other."]
            if path.stem == "generate":
                lines += ["", "fidelity: mean distance (mm) from each hand to the nearest of 2000 "
                          "held-out prior hands; coverage: from each of those to the nearest "
                          "hand of the set; lower is better for both (docs/diffusion.md)."]
        elif result.get("op") == "generate":  # service bench
            lines += service_tables(result)
        elif result.get("op") == "reconstruct":  # reconstruct through the service, by stage
            lines += ["| photo | hands | n | round trip ms | decode | detect | sample + score | "
                      "pose | reply |", "|---|---|---|---|---|---|---|---|---|"]
            lines += [f"| {r['photo']} | {r['hands']} | {r['n']} | {r['round_trip_ms']} | "
                      f"{r['decode_ms']} | {r['detect_ms']} | {r['sample_ms']} | "
                      f"{r['pose_ms']} | {r['reply_ms']} |" for r in result["results"]]
        elif result.get("task") == "click":  # tools/panel_screenshot.sh --timings
            lines += ["| press | waited for Blender idle s | shape keys ms | drawn ms | "
                      "reply in hand ms | land ms | Blender CPU while waiting ms | "
                      "backend stages ms |", "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {'first (fresh backend)' if p['first'] else i} | "
                      f"{p.get('waited_for_idle_s', '')} | "
                      f"{p['shape_keys_ms']} | {p['drawn_ms']} | {p['reply_in_hand_ms']} | "
                      f"{p['land_ms']} | {p.get('blender_cpu_while_waiting_ms', '')} | "
                      + ", ".join(f"{k.removesuffix('_ms')} {v}"
                                  for k, v in p["backend"].items()) + " |"
                      for i, p in enumerate(result["presses"], 1)]
            lines += ["", f"Blender {result['blender']} under Xvfb, {result['photo']}, "
                      f"n={result['n']}, {result['steps']} steps; shape keys: from the click to "
                      "the hypotheses landed in the scene; drawn: to the 3D view's first frame "
                      "showing them (software OpenGL: drawing the 3D view takes about 200 ms "
                      "here, and new hands show their base mesh, no subdivision level, "
                      "which would double that first frame)."]
        elif "bands" in result:  # research/photo_depth.py
            f = result["floor"]
            lines += [f"Floor, first {f['photos']} photos, PA-MPJPE / root-relative mm: fit2d "
                      f"from the true 2D keypoints {f['true_2d'][0]} / {f['true_2d'][1]}, with "
                      f"the true 3D joints {f['true_2d_and_3d'][0]} / "
                      f"{f['true_2d_and_3d'][1]}, refit3d to those alone "
                      f"{f['refit3d_true_3d'][0]} / {f['refit3d_true_3d'][1]}.", "",
                      "| image depth weight (lifted, as it is) | PA-MPJPE mm | "
                      "root-relative MPJPE mm |", "|---|---|---|"]
            lines += [f"| {m['image_depth_weight']} | {m['pa_mpjpe_mm']} | {m['rr_mpjpe_mm']} |"
                      for m in result["mix"]]
            lines += ["", "| depth disagreement | photos | skel2d PA-MPJPE mm | skel2d+lifted |",
                      "|---|---|---|---|"]
            lines += [f"| {b['disagreement'][0]:.3f}-{b['disagreement'][1]:.3f} | "
                      f"{b['photos']} | {b['skel2d_pa_mm']} | {b['lifted_pa_mm']} |"
                      for b in result["bands"]]
            lines += ["", "| fallback above | photos fallen back | PA-MPJPE mm | "
                      "root-relative MPJPE mm |", "|---|---|---|---|"]
            lines += [f"| {'never' if f['threshold'] is None else f['threshold']} | "
                      f"{f['fallen_back']} | {f['pa_mpjpe_mm']} | {f['rr_mpjpe_mm']} |"
                      for f in result["fallback"]]
            lines += ["", f"Shipped: {result['shipped_threshold']}."]
        elif path.stem == "fold_leakage":  # research/fold_leakage.py
            nb = result["neighbours"]
            lines += [f"{result['photos']} dev photos, frames of sequences: median mean-joint "
                      f"distance (root-relative truth) to the next photo {nb['next_photo_mm']} "
                      f"mm, to the nearest {nb['nearest_photo_mm']} mm (within two photos for "
                      f"{nb['nearest_is_within_2_photos'] * 100:.0f} %), to any other "
                      f"{nb['random_photo_mm']} mm. PA-MPJPE / root-relative MPJPE mm of a "
                      "correction fitted on the other folds:", "",
                      "| skeleton | correction | interleaved folds | runs of photos | halves |",
                      "|---|---|---|---|---|"]
            cells: dict[tuple[str, str], dict[str, str]] = {}
            for r in result["rows"]:
                cells.setdefault((r["skeleton"], r["correction"]), {})[r["layout"]] = (
                    "{:.2f} / {:.2f}".format(*r["pa_rr_mm"]))
            for (sk, corr), c in cells.items():
                lines.append(f"| {sk} | {corr} | " + (
                    f"{c['']} (as it is) | | |" if "" in c else
                    f"{c['interleaved']} | {c['runs']} | {c['halves']} |"))
        elif path.stem == "joint_convention":  # research/joint_convention.py
            names = list(result["mcp_place"])
            lines += ["MCP place along each finger's chain wrist-MCP-PIP-DIP-tip (0 wrist, "
                      "1 tip), medians:", "", "| set | " + " | ".join(
                          result["model_mcp_beyond_dev_mm"]) + " |",
                      "|---" * (len(result["model_mcp_beyond_dev_mm"]) + 1) + "|"]
            lines += [f"| {n} ({result['counts'][n]}) | " + " | ".join(
                f"{v:.3f}" for v in result["mcp_place"][n].values()) + " |" for n in names]
            beyond = ", ".join(f"{k} {v}" for k, v in result["model_mcp_beyond_dev_mm"].items())
            cost = result["pa_mpjpe_of_truth_in_proportions_of_mm"]
            lines += ["", f"The open hand's MCPs lie beyond real_hgcnn_dev's by (mm): {beyond}. "
                      "PA-MPJPE of that set's own truth with its bones rescaled to the open "
                      f"hand's proportions: {cost['open_hand_model']} mm; to MediaPipe's: "
                      f"{cost['mediapipe_world_on_dev']} mm (docs/photos.md, \"Whose joints\")."]
            c = result.get("control_pa_rr_mm")
            if c and "mcp_along_bone_only" in c:
                lines += ["", f"Control, the default mode ({c['mode']}, n=1, {c['photos']} dev "
                          "photos), PA-MPJPE / root-relative MPJPE mm: as it is "
                          f"{c['as_is'][0]} / {c['as_is'][1]}; with every joint's cross-fitted "
                          f"offset {c['every_joint_offset'][0]} / {c['every_joint_offset'][1]}; "
                          f"the four finger MCPs' alone {c['mcp_offsets_only'][0]} / "
                          f"{c['mcp_offsets_only'][1]}, along the bone only "
                          f"{c['mcp_along_bone_only'][0]} / {c['mcp_along_bone_only'][1]}."]
        elif result.get("task") == "video":
            lines += video_tables(result)
        elif "timings" in result and "frames" in result:  # reconstruct-video --json
            t = result["timings"]
            lines += [f"{result['frames']} frames, {result['found'] * 100:.0f} % with the hand "
                      f"found: **{t['frames_per_s']:.1f} frames/s**; per frame: decode "
                      f"{t['decode_ms']:.1f} ms, detect {t['detect_ms']:.1f} ms, sample "
                      f"{t['sample_ms']:.1f} ms, pose {t['pose_ms']:.1f} ms"]
        elif "engine" in result:  # hhmr batch --json
            lines += [f"{result['engine']}, {result['workers']} worker(s): {result['items']} "
                      f"items in {result['seconds']:.1f} s, "
                      f"**{result['frames_per_s']:.1f} frames/s**"]
        elif path.stem == "openmp_threads":  # research/openmp_threads.py
            lines += ["| where `reconstruct` samples | threads | sample ms | pose ms |",
                      "|---|---|---|---|"]
            lines += [f"| {r['case'].replace('_', ' ')} | {r['threads']} | {r['sample_ms']} | "
                      f"{r['pose_ms']} |" for r in result["results"]]
            lines += ["", f"{result['photo'].rsplit('/', 1)[-1]}, n={result['n']}, "
                      f"{result['steps']} steps, medians; why the server samples on its main "
                      "thread and answers `info` without torch (docs/service.md)."]
        elif "results" in result:  # bench
            lines += ["| task | n | guidance | median ms | peak MB |", "|---|---|---|---|---|"]
            lines += [f"| {r['task']} | {r['n']} | {r['guidance']} | {r['median_ms']} | "
                      f"{r['peak_mb']} |" for r in result["results"]]
            lines += ["", f"device {result['device']}, {result['threads']} threads"]
    lines += experiments()
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Held-out synthetic evaluation of the diffusion tasks, with baselines in the same run."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from hhmr import metrics
from hhmr.data.poses import PosePrior
from hhmr.evaluation.baselines import PosePCA, fit_lbs
from hhmr.hand.topology import JOINT_TO_KEYPOINT, KEYPOINT_PARENTS
from hhmr.mesh.geometry import kabsch
from hhmr.sampling import HandDiffusionPipeline
from hhmr.sampling.config import TASKS
from hhmr.sampling.pipeline import POSE_ITERATIONS
from hhmr.training.data import synthetic_batch
from hhmr.training.train import EVAL_SEED_OFFSET

PALM = [0, 1, 5, 9, 13, 17]  # wrist, thumb CMC and the four MCPs


def held_out(pipe: HandDiffusionPipeline, num: int, seed: int):
    """Synthetic hands from seeds disjoint from training (>= 1e6)."""
    gen = torch.Generator().manual_seed(EVAL_SEED_OFFSET + seed)
    return synthetic_batch(pipe.hand.cpu(), PosePrior(pipe.hand.cpu()), num, gen,
                           noise2d_px=0.0, noise3d_m=0.0)


def canonical(pipe: HandDiffusionPipeline, verts: torch.Tensor) -> torch.Tensor:
    """Rigidly align each mesh's palm keypoints to the template's (orientation removed)."""
    reg = pipe.regressor.cpu()
    tmpl = (reg @ pipe.hand.v_template.cpu())[PALM]
    kp = (reg @ verts)[:, PALM]
    mu_k, mu_t = kp.mean(1, keepdim=True), tmpl.mean(0)
    rot, _ = kabsch((kp - mu_k).transpose(1, 2) @ (tmpl - mu_t))
    return (verts - mu_k) @ rot + mu_t


def _stats(vals: dict[str, list[float]]) -> dict[str, float]:
    return {k: float(np.mean(v)) for k, v in vals.items()}


def _si(verts: torch.Tensor, faces) -> list[float]:
    return metrics.self_intersection_pct(verts, faces).tolist()


def generated_hands(pipe, num: int, seed: int, steps: int = 10, eta: float = 0.0,
                    autoguidance: float | None = None) -> torch.Tensor:
    """num generated hands [num, V, 3] for evaluation seed `seed`, turned to the template's
    orientation, wrist at the origin. `autoguidance`: the generation's weight (None: the
    pipeline's default, 1: off)."""
    ours = canonical(pipe, pipe.generate(num, steps=steps, seed=EVAL_SEED_OFFSET + seed,
                                         eta=eta, autoguidance=autoguidance).vertices)
    return ours - (pipe.regressor.cpu() @ ours)[:, :1]


def generation_sets(pipe, num: int, seed: int, steps: int = 10, eta: float = 0.0,
                    autoguidance: float | None = None) -> dict[str, torch.Tensor]:
    """`generated_hands` and as many of each baseline (pose prior, pose PCA with the prior's
    shapes; no rotation) for evaluation seed `seed`: vertices [num, V, 3], wrist at the
    origin."""
    gen = torch.Generator().manual_seed(EVAL_SEED_OFFSET + seed)
    hand = pipe.hand.cpu()
    ours = generated_hands(pipe, num, seed, steps, eta, autoguidance)
    s = PosePrior(hand, random_orient=False).sample(num, generator=gen)
    with torch.no_grad():
        prior = hand(None, s.hand_pose, s.betas).vertices
        pca = hand(None, PosePCA(hand).sample(num, gen), s.betas).vertices
    reg = pipe.regressor.cpu()
    return {"diffusion": ours, **{name: v - (reg @ v)[:, :1]
                                  for name, v in (("pose_prior", prior), ("pca", pca))}}


REFERENCE_HANDS = 2000  # held-out prior hands that generated sets are compared with
REFERENCE_SEED = 500_000  # their seed, past the evaluation seed's: apart from every set


def reference_hands(pipe, seed: int, num: int = REFERENCE_HANDS) -> torch.Tensor:
    """Held-out pose-prior hands [num, V, 3] for fidelity and coverage, turned to the
    template's orientation, wrist at the origin."""
    gen = torch.Generator().manual_seed(EVAL_SEED_OFFSET + REFERENCE_SEED + seed)
    hand = pipe.hand.cpu()
    s = PosePrior(hand, random_orient=False).sample(num, generator=gen)
    with torch.no_grad():
        v = canonical(pipe, hand(None, s.hand_pose, s.betas).vertices)
    return v - (pipe.regressor.cpu() @ v)[:, :1]


def describe_set(pipe, verts: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """APD and self-intersection % of a set of hands [N, V, 3] (wrist at the origin), and
    against real hands: fidelity (mean distance from each hand to the nearest real one) and
    coverage (from each real hand to the nearest of the set), mm, after turning each hand to
    the template's orientation. APD alone rewards spread in any direction; the other two
    fall only for hands that look like, and reach as far as, the real ones."""
    turned = canonical(pipe, verts)
    turned = turned - (pipe.regressor.cpu() @ turned)[:, :1]
    return {"apd_mm": float(metrics.apd(verts[None])),
            "si_pct": float(np.mean(_si(verts, pipe.hand.faces.cpu()))),
            "fidelity_mm": float(metrics.nearest_distance(turned, reference).mean()),
            "coverage_mm": float(metrics.nearest_distance(reference, turned).mean())}


def eval_generate(pipe, num, seed, steps, progress):
    """The default sampler ("diffusion", autoguided when the pipeline has a guide net), the
    net alone ("diffusion_no_autoguidance", with a guide net only) and the baselines."""
    sets = generation_sets(pipe, num, seed, steps)
    if pipe.autoguidance() is not None:
        alone = generated_hands(pipe, num, seed, steps, autoguidance=1.0)
        sets = {"diffusion": sets["diffusion"], "diffusion_no_autoguidance": alone,
                **{k: v for k, v in sets.items() if k != "diffusion"}}
    reference = reference_hands(pipe, seed)
    return {name: describe_set(pipe, v, reference)
            for name, v in tqdm(sets.items(), desc="generate", disable=not progress)}


def finger_region(pipe, finger: int) -> torch.Tensor:
    w = pipe.hand.weights.cpu()
    return w[:, 1 + 3 * finger: 4 + 3 * finger].sum(1) > 0.5


def eval_inpaint(pipe, num, seed, steps, n, progress, guidance_scale=None):
    data = held_out(pipe, num, seed)
    faces = pipe.hand.faces.cpu()
    rng = np.random.default_rng(seed)
    other = _other_space(pipe, "inpaint_without_replacement")
    methods = (("guidance", False, None), (f"guidance_{other}", False, other),
               ("guidance+replace", True, None))
    res = {m[0]: {"kept_err_mm": [], "apd_mm": [], "si_pct": []} for m in methods}
    for i in tqdm(range(num), desc="inpaint", disable=not progress):
        free = finger_region(pipe, int(rng.integers(5)))
        keep = ~free
        for method, replace, space in methods:
            h = pipe.inpaint(data.vertices[i], keep, n=max(n, 2), steps=steps,
                             guidance_scale=None if space else guidance_scale,
                             seed=EVAL_SEED_OFFSET + seed + i, replace=replace,
                             guidance_space=space)
            kept = (h.vertices[:, keep] - data.vertices[i][keep]).norm(dim=-1).mean()
            res[method]["kept_err_mm"].append(float(kept) * 1000)
            res[method]["apd_mm"].append(float(metrics.apd(h.vertices[None][:, :, free])))
            res[method]["si_pct"].append(float(np.mean(_si(h.vertices, faces))))
    return {k: _stats(v) for k, v in res.items()}


def _other_space(pipe, task: str) -> str:
    """The guidance space a task does not use by default (evaluated beside the default)."""
    return "x_t" if pipe.config.task(task).space == "x0" else "x0"


def _guided_methods(pipe, task: str, scale: float | None
                    ) -> list[tuple[str, float | None, str | None, bool | None]]:
    """(name, scale, space, central_first): no guidance, the default guidance (at `scale` if
    given), the same with hypothesis 0 from random noise instead of the noise's mean, and
    the other space at its own default scale."""
    other = _other_space(pipe, task)
    return [("no_guidance", 0.0, None, None), ("guidance", scale, None, None),
            ("guidance_random_first", scale, None, False),
            (f"guidance_{other}", None, other, None)]


def _errors(pred_v, pred_j, gt_v, gt_j) -> dict[str, float]:
    return {"pa_mpvpe_mm": float(metrics.pa_mpvpe(pred_v, gt_v).min()),
            "pa_mpjpe_mm": float(metrics.pa_mpjpe(pred_j, gt_j).min())}


def _add(res: dict, key: str, verts: torch.Tensor, joints: torch.Tensor, gt_v: torch.Tensor,
         gt_j: torch.Tensor) -> None:
    """Record the min-of-n errors of hypotheses [n, ...] against one ground truth [1, ...]."""
    e = _errors(verts, joints, gt_v.expand_as(verts), gt_j.expand_as(joints))
    for k, v in e.items():
        res.setdefault(key, {}).setdefault(k, []).append(v)


def _add_baseline(res: dict, key: str, pipe, pred: torch.Tensor, data) -> None:
    """Record a baseline's single prediction per sample."""
    joints = pipe.regressor.cpu() @ pred
    for i in range(len(pred)):
        _add(res, key, pred[i:i + 1], joints[i:i + 1], data.vertices[i:i + 1],
             data.joints[i:i + 1])


FINGER_SEED = 11  # which finger each finger-only sample gives, apart from the partial row's


def finger_masks(num: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """Finger-only joint masks [num, 21]: one finger's four joints (random finger), no wrist."""
    rng = np.random.default_rng(seed + FINGER_SEED)
    masks, fingers = torch.zeros(num, 21), []
    for i in range(num):
        f = int(rng.integers(5))
        masks[i, 1 + 4 * f: 5 + 4 * f] = 1
        fingers.append(f)
    return masks, fingers


def skeleton_size(joints: torch.Tensor) -> torch.Tensor:
    """Total bone length [...] of skeletons [..., 21, 3]: a hand's size whatever its pose."""
    parents = list(KEYPOINT_PARENTS[1:])
    return (joints[..., 1:, :] - joints[..., parents, :]).norm(dim=-1).sum(-1)


def extent(verts: torch.Tensor) -> torch.Tensor:
    """Bounding-box diagonal [...] of meshes [..., V, 3]."""
    return (verts.amax(-2) - verts.amin(-2)).norm(dim=-1)


def eval_refit3d_finger(pipe, num, seed, steps, n, progress, guidance_scale=None) -> dict:
    """Refit to one finger's four joints without the wrist (the default guidance): per
    hypothesis the size ratio (total bone length of its regressed skeleton over the
    target's), the extent ratio (bounding-box diagonals, posed and unposed by the pose
    solver), the error on the given and on the hidden joints (the hypothesis as placed, mm),
    and min-of-n PA-MPVPE / PA-MPJPE."""
    from hhmr.hand.pose_fit import fit_pose, rest_mesh

    def rest_extent(v: torch.Tensor) -> torch.Tensor:
        return extent(rest_mesh(hand, fit_pose(hand, vertices=v)))

    hand = pipe.hand.cpu()
    data = held_out(pipe, num, seed)
    masks, _ = finger_masks(num, seed)
    vals: dict[str, list[float]] = {}
    for i in tqdm(range(num), desc="refit3d finger", disable=not progress):
        h = pipe.refit3d(data.joints[i], masks[i], n=max(n, 1), steps=steps,
                         guidance_scale=guidance_scale, seed=EVAL_SEED_OFFSET + seed + i)
        gt_v, gt_j = data.vertices[i:i + 1], data.joints[i:i + 1]
        m = masks[i] > 0
        err = (h.joints - data.joints[i][None]).norm(dim=-1) * 1000
        size = skeleton_size(h.joints) / skeleton_size(data.joints[i])
        ext = extent(h.vertices) / extent(data.vertices[i])
        rest = rest_extent(h.vertices) / rest_extent(data.vertices[i:i + 1])
        for k, v in (("given_err_mm", err[:, m].mean(1)), ("hidden_err_mm", err[:, ~m].mean(1)),
                     ("size_ratio", size), ("extent_ratio", ext), ("rest_extent_ratio", rest)):
            vals.setdefault(k, []).extend(v.tolist())
        for k, v in _errors(h.vertices, h.joints, gt_v.expand_as(h.vertices),
                            gt_j.expand_as(h.joints)).items():
            vals.setdefault(k, []).append(v)
    out = _stats(vals)
    for k in ("size_ratio", "extent_ratio", "rest_extent_ratio", "given_err_mm"):
        out[f"{k}_min"] = float(np.min(vals[k]))
        out[f"{k}_max"] = float(np.max(vals[k]))
    # the criterion (extent within 0.8-1.25 of the target's) on the posed extent
    # (it also moves with the pose of the hidden fingers: a fist against an open hand), on
    # the unposed (rest-space) extent and on the total bone length
    for name, key in (("normal_size", "extent_ratio"), ("normal_rest_size", "rest_extent_ratio"),
                      ("normal_bone_length", "size_ratio")):
        out[f"hypotheses_{name}_pct"] = float(np.mean(
            [0.8 <= r <= 1.25 for r in vals[key]]) * 100)
    return out


def eval_refit3d(pipe, num, seed, steps, n, progress, guidance_scale=None):
    data = held_out(pipe, num, seed)
    rng = np.random.default_rng(seed)
    hand = pipe.hand.cpu()
    res: dict[str, dict[str, list[float]]] = {}
    pca = PosePCA(hand)
    for variant in ("full", "partial"):
        masks = torch.ones(num, 21)
        if variant == "partial":
            for i in range(num):
                f = int(rng.integers(5))
                masks[i, 1 + 4 * f: 5 + 4 * f] = 0
        for i in tqdm(range(num), desc=f"refit3d {variant}", disable=not progress):
            gt_v, gt_j = data.vertices[i:i + 1], data.joints[i:i + 1]
            for method, s, space, central in _guided_methods(pipe, "refit3d", guidance_scale):
                h = pipe.refit3d(data.joints[i], masks[i], n=n, steps=steps, guidance_scale=s,
                                 seed=EVAL_SEED_OFFSET + seed + i, guidance_space=space,
                                 central_first=central)
                _add(res, f"{method}/{variant}", h.vertices, h.joints, gt_v, gt_j)
        if variant == "full":
            pred = fit_lbs(hand, pca, None, None, joints3d=data.joints, seed=seed)
            _add_baseline(res, "lbs_optimisation/full", pipe, pred, data)
    out = {k: _stats(v) for k, v in res.items()}
    out["guidance/finger_only"] = eval_refit3d_finger(pipe, num, seed, steps, n, progress,
                                                      guidance_scale)
    return out


def eval_pose_solver(pipe, num, seed, batch: int = 8) -> dict:
    """The pose solver (`hhmr.hand.pose_fit`) on held-out prior hands (random shapes,
    orientations and translations), from their meshes and from their 21 keypoints: joint,
    keypoint and vertex errors of the model's output (no corrective, mm), angle error of the
    recovered joint rotations (degrees), the largest limit violation, the corrective's
    reproduction error, and milliseconds per hand in batches of `batch`; then the same on
    generated hands (no ground truth: the fit's own vertex error), with the solver's default
    8 iterations and with the server's `POSE_ITERATIONS`."""
    from hhmr.hand.pose_fit import fit_pose, skin_with_corrective
    from hhmr.hand.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    hand = pipe.hand.cpu()
    gen = torch.Generator().manual_seed(EVAL_SEED_OFFSET + seed)
    s = PosePrior(hand).sample(num, generator=gen)
    transl = torch.randn(num, 3, generator=gen) * 0.1
    with torch.no_grad():
        out = hand(s.global_orient, s.hand_pose, s.betas, transl)
    gt_rot = axis_angle_to_matrix(torch.cat([s.global_orient[:, None], s.hand_pose], 1))

    def angle_deg(pose: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        rel = gt_rot[idx].transpose(-1, -2) @ axis_angle_to_matrix(pose)
        return matrix_to_axis_angle(rel).norm(dim=-1).rad2deg()

    results = {}
    for source in ("mesh", "keypoints"):
        vals: dict[str, list[float]] = {}
        for i in range(0, num, batch):
            idx = torch.arange(i, min(i + batch, num))
            t0 = time.perf_counter()
            fit = fit_pose(hand, vertices=out.vertices[idx]) if source == "mesh" else \
                fit_pose(hand, keypoints=out.joints[idx])
            vals.setdefault("ms_per_hand", []).append(
                (time.perf_counter() - t0) * 1000 / len(idx))
            full = torch.cat([fit.global_orient[:, None], fit.hand_pose], 1)
            ang = angle_deg(full, idx)
            kp_err = (fit.joints - out.joints[idx]).norm(dim=-1) * 1000
            for k, v in (("keypoint_err_mm", kp_err.mean(1)),
                         ("joint_err_mm", kp_err[:, list(JOINT_TO_KEYPOINT)].mean(1)),
                         ("vertex_err_mm", (fit.vertices - out.vertices[idx]).norm(dim=-1)
                          .mean(1) * 1000),
                         ("global_orient_err_deg", ang[:, 0]),
                         ("joint_rotation_err_deg", ang[:, 1:].mean(1)),
                         ("betas_abs_err", (fit.betas - s.betas[idx]).abs().mean(1)),
                         ("limit_violation_deg", hand.joint_limits.violation(fit.hand_pose)
                          .amax((1, 2)).rad2deg())):
                vals.setdefault(k, []).extend(v.tolist())
            if source == "mesh":
                rep = (skin_with_corrective(hand, fit) - out.vertices[idx]).norm(dim=-1)
                vals.setdefault("corrective_reproduction_max_mm", []).append(
                    float(rep.max()) * 1000)
        r = _stats(vals)
        r["limit_violation_deg"] = float(np.max(vals["limit_violation_deg"]))
        if "corrective_reproduction_max_mm" in vals:
            r["corrective_reproduction_max_mm"] = float(
                np.max(vals["corrective_reproduction_max_mm"]))
        results[f"prior_hands/{source}"] = r
    generated = torch.cat([pipe.generate(min(batch, num - i), seed=EVAL_SEED_OFFSET + seed + i)
                           .vertices for i in range(0, num, batch)])
    # the solver's default, and the iterations a server reply uses (`pose` option), for
    # requests of `batch` and of 16 hypotheses
    for name, iterations, size in (("mesh", 8, batch), ("mesh_served", POSE_ITERATIONS, batch),
                                   ("mesh_served_n16", POSE_ITERATIONS, 16)):
        vals = {}
        for v in generated.split(size):
            t0 = time.perf_counter()
            fit = fit_pose(hand, vertices=v, iterations=iterations)
            vals.setdefault("ms_per_hand", []).append(
                (time.perf_counter() - t0) * 1000 / len(v))
            vals.setdefault("vertex_err_mm", []).extend((fit.error * 1000).tolist())
            vals.setdefault("corrective_mean_mm", []).extend(
                (fit.corrective.norm(dim=-1).mean(1) * 1000).tolist())
            rep = (skin_with_corrective(hand, fit) - v).norm(dim=-1)
            vals.setdefault("corrective_reproduction_max_mm", []).append(
                float(rep.max()) * 1000)
            vals.setdefault("limit_violation_deg", []).extend(
                hand.joint_limits.violation(fit.hand_pose).amax((1, 2)).rad2deg().tolist())
        r = _stats(vals)
        for k in ("corrective_reproduction_max_mm", "limit_violation_deg"):
            r[k] = float(np.max(vals[k]))
        r["iterations"], r["batch"] = float(iterations), float(size)
        results[f"generated_hands/{name}"] = r
    return results


def eval_fit2d(pipe, num, seed, steps, n, progress, guidance_scale=None, noise_px=3.0):
    data = held_out(pipe, num, seed)
    hand = pipe.hand.cpu()
    gen = torch.Generator().manual_seed(EVAL_SEED_OFFSET + seed + 7)
    noisy = data.keypoints2d + torch.randn(data.keypoints2d.shape, generator=gen) * noise_px
    res: dict[str, dict[str, list[float]]] = {}
    pca = PosePCA(hand)
    conf = torch.ones(num, 21)
    for variant, kps in (("gt", data.keypoints2d), ("noisy", noisy)):
        for i in tqdm(range(num), desc=f"fit2d {variant}", disable=not progress):
            gt_v, gt_j = data.vertices[i:i + 1], data.joints[i:i + 1]
            for method, s, space, central in _guided_methods(pipe, "fit2d", guidance_scale):
                h = pipe.fit2d(kps[i], conf[i], data.K[i], n=n, steps=steps, guidance_scale=s,
                               seed=EVAL_SEED_OFFSET + seed + i, guidance_space=space,
                               central_first=central)
                _add(res, f"{method}/{variant}", h.vertices, h.joints, gt_v, gt_j)
        pred = fit_lbs(hand, pca, kps, conf, K=data.K, seed=seed)
        _add_baseline(res, f"lbs_optimisation/{variant}", pipe, pred, data)
    return {k: _stats(v) for k, v in res.items()}


def eval_sweep(pipe, num, seed, progress, ns=(1, 8, 16), steps_list=(10, 25, 50)):
    """fit2d (ground-truth keypoints, guidance) by n and steps: PA-MPJPE / PA-MPVPE of the
    best of the n hypotheses (min-of-n, HHMR Table 4), and for n > 1 of single answers that
    need no ground truth: hypothesis 0 (central, CENTRAL_FIRST), the one with the best
    score (reprojection) and the mean of the n meshes (each centred on its joints)."""
    data = held_out(pipe, num, seed)
    reg = pipe.regressor.cpu()
    out = {}
    for steps in steps_list:
        for n in ns:
            vals: dict[str, dict[str, list[float]]] = {}
            for i in tqdm(range(num), desc=f"sweep n={n} steps={steps}",
                          disable=not progress):
                h = pipe.fit2d(data.keypoints2d[i], None, data.K[i], n=n, steps=steps,
                               seed=EVAL_SEED_OFFSET + seed + i)
                gt_v, gt_j = data.vertices[i:i + 1], data.joints[i:i + 1]
                picks = {"guidance": (h.vertices, h.joints)}
                if n > 1:
                    v = h.vertices - (reg @ h.vertices).mean(1, keepdim=True)
                    mean = v.mean(0, keepdim=True)
                    picks["guidance_first"] = (h.vertices[:1], h.joints[:1])
                    top = int(h.scores.argmax())  # the best reprojection
                    picks["guidance_top_score"] = (h.vertices[top:top + 1], h.joints[top:top + 1])
                    picks["guidance_mean"] = (mean, reg @ mean)
                for name, (pv, pj) in picks.items():
                    e = _errors(pv, pj, gt_v.expand_as(pv), gt_j.expand_as(pj))
                    for k, x in e.items():
                        vals.setdefault(name, {}).setdefault(k, []).append(x)
            for name, v in vals.items():
                out[f"{name}/n={n}/steps={steps}"] = _stats(v)
    return out


def evaluate_task(task: str, num: int, seed: int, steps: int = 10, n: int = 1,
                  weights: str | None = None, progress: bool = True,
                  guidance_scale: float | None = None, guide: str | bool | None = None
                  ) -> dict:
    """`guide`: the autoguidance net's file, False for none, None for the default."""
    pipe = HandDiffusionPipeline.from_pretrained(weights, guide=guide)
    t0 = time.perf_counter()
    if task == "generate":
        results = eval_generate(pipe, num, seed, steps, progress)
    elif task == "inpaint":
        results = eval_inpaint(pipe, num, seed, steps, n, progress, guidance_scale)
    elif task == "refit3d":
        results = eval_refit3d(pipe, num, seed, steps, n, progress, guidance_scale)
    elif task == "refit3d_finger":
        results = {"guidance/finger_only": eval_refit3d_finger(pipe, num, seed, steps, n,
                                                               progress, guidance_scale)}
    elif task == "pose":
        results = eval_pose_solver(pipe, num, seed)
    elif task == "fit2d":
        results = eval_fit2d(pipe, num, seed, steps, n, progress, guidance_scale)
    elif task == "sweep":
        results = eval_sweep(pipe, num, seed, progress)
    else:
        raise ValueError(f"unknown task {task!r}")
    return {"task": task, "num": num, "seed": seed, "steps": steps, "n": n,
            "guidance_space": {name: pipe.config.task(name).space for name in TASKS
                               if name != "generate"}, "results": results,
            "seconds": time.perf_counter() - t0}


"""Held-out synthetic evaluation of the diffusion tasks, with baselines in the same run."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from hhmr import metrics
from hhmr.data.poses import PosePrior
from hhmr.evaluation.baselines import PosePCA, fit_lbs
from hhmr.mesh.geometry import kabsch
from hhmr.sampling import HandDiffusionPipeline
from hhmr.sampling.config import TASKS
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
    return {k: _stats(v) for k, v in res.items()}


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


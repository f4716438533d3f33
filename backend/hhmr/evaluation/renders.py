"""`hhmr evaluate --renders N`: HHMR's Table 5 rows on held-out rendered hands (seed 2 of
`hhmr.data.renders`, never trained on): the image alone, image + 2D keypoints, image + 2D +
guidance, and 2D + guidance without the image, each as the first hypothesis and min-of-n."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from hhmr import metrics
from hhmr.data.renders import render_set
from hhmr.sampling import HandDiffusionPipeline
from hhmr.sampling.tasks import Fit2D, Generate, Options
from hhmr.training.images import cached_tokens

HELD_OUT_SEED = 2
KEYPOINT_NOISE_PX = 2.0  # on the exact projections, as a detector's error


def evaluate_renders(count: int = 256, n: int = 16, steps: int = 10,
                     weights: str | None = None, cache: str = "runs/renders",
                     progress: bool = True) -> dict:
    pipe = HandDiffusionPipeline.from_pretrained(weights)
    encoder = pipe.config.photo.image_encoder
    if encoder is None:
        raise ValueError("these weights read no image tokens (configs/image.toml trains some)")
    t0 = time.perf_counter()
    renders = render_set(count, HELD_OUT_SEED, cache, chunk=128, progress=progress)
    tokens = cached_tokens(cache, HELD_OUT_SEED, count, encoder, chunk=128, progress=progress)
    rng = np.random.default_rng(0)
    rows: dict[str, dict[str, list[float]]] = {}
    regressor = pipe.regressor.cpu()
    for i in tqdm(range(count), desc="renders", disable=not progress, unit="hand"):
        kp = renders.keypoints[i] + rng.normal(0, KEYPOINT_NOISE_PX, (21, 2)).astype(np.float32)
        K, tok = renders.K[i], tokens[i].astype(np.float32)
        tasks = {"image": (Generate(image_tokens=tok), None),
                 "image+2d": (Fit2D(kp, None, K, image_tokens=tok), 0.0),
                 "image+2d+guidance": (Fit2D(kp, None, K, image_tokens=tok), None),
                 "2d+guidance": (Fit2D(kp, None, K), None)}
        gt_v = torch.from_numpy(renders.vertices[i])[None]
        gt_j = torch.from_numpy(renders.joints[i])[None]
        for name, (task, scale) in tasks.items():
            opts = Options(n, steps, seed=i, guidance_scale=scale)
            h = pipe.run([pipe.plan(task, opts)])[0]
            v = h.vertices.cpu()
            j = regressor @ v
            pa_j = metrics.pa_mpjpe(j, gt_j.expand_as(j))
            pa_v = metrics.pa_mpjpe(v, gt_v.expand_as(v))
            first = h.order()[0]
            for key, val in (("pa_mpjpe_mm", pa_j[first]), ("pa_mpvpe_mm", pa_v[first]),
                             (f"min_of_{n}_pa_mpjpe_mm", pa_j.min()),
                             (f"min_of_{n}_pa_mpvpe_mm", pa_v.min())):
                rows.setdefault(name, {}).setdefault(key, []).append(float(val))
    return {"task": "renders", "count": count, "seed": HELD_OUT_SEED, "n": n, "steps": steps,
            "encoder": encoder, "keypoint_noise_px": KEYPOINT_NOISE_PX,
            "results": {k: {m: float(np.mean(v)) for m, v in r.items()} for k, r in rows.items()},
            "seconds": time.perf_counter() - t0}

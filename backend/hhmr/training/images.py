"""Training batches with image tokens: rendered hands (`hhmr.data.renders`) through a frozen
encoder (`hhmr.encoders`), both cached on disk, with the skeleton views the photo path gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hhmr.data.renders import RenderSet, chunk_path, render_set
from hhmr.diffusion.guidance import project
from hhmr.models import SCALE
from hhmr.models.conditions import Conditions, normalize_keypoints
from hhmr.training.data import Batch


def cached_tokens(cache_dir: str | Path, seed: int, n: int, encoder: str, chunk: int = 250,
                  progress: bool = True) -> np.ndarray:
    """Image tokens [n, 17, C] float16 of the render set (seed, n), made once per chunk and
    kept beside the renders."""
    from tqdm import tqdm

    from hhmr.encoders import image_encoder

    out = []
    bar = tqdm(total=n, desc=f"encode ({encoder})", unit="img", disable=not progress)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        path = chunk_path(cache_dir, seed, start, m).with_name(
            f"tokens_{encoder}_" + chunk_path(cache_dir, seed, start, m).stem + ".npy")
        if not path.exists():
            images = RenderSet.load(chunk_path(cache_dir, seed, start, m)).images
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, image_encoder(encoder)(images).astype(np.float16))
            tmp.replace(path)
        out.append(np.load(path))
        bar.update(m)
    bar.close()
    return np.concatenate(out)


class RenderedHands:
    """A cached render set and its tokens, drawn from in training batches."""

    def __init__(self, cfg: dict, progress: bool = True) -> None:
        cache = Path(cfg.get("cache", "runs/renders"))
        n, seed = int(cfg["count"]), int(cfg.get("seed", 1))
        self.encoder = cfg.get("encoder", "mediapipe")
        self.renders = render_set(n, seed, cache, progress=progress)
        self.tokens = cached_tokens(cache, seed, n, self.encoder, progress=progress)

    def batch(self, n: int, generator: torch.Generator, noise2d_px: float = 2.0,
              noise3d_m: float = 0.002) -> Batch:
        """n random renders with their full conditions: image tokens, noisy 2D keypoints in
        the crop, noisy wrist-relative 3D joints (as `synthetic_batch` makes them)."""
        idx = torch.randint(len(self.renders), (n,), generator=generator).numpy()
        r = self.renders
        verts = torch.from_numpy(r.vertices[idx])
        joints = torch.from_numpy(r.joints[idx])
        K = torch.from_numpy(r.K[idx])
        transl = torch.from_numpy(r.transl[idx])
        kp = project(joints + transl[:, None], K)
        kp_noisy = kp + torch.randn(kp.shape, generator=generator) * noise2d_px * \
            torch.rand(n, 1, 1, generator=generator)
        conf = 0.5 + 0.5 * torch.rand(n, 21, generator=generator)
        j_noisy = joints + torch.randn(joints.shape, generator=generator) * noise3d_m * \
            torch.rand(n, 1, 1, generator=generator)
        tokens = torch.from_numpy(self.tokens[idx].astype(np.float32))
        cond = Conditions(joints3d=j_noisy / SCALE, joints3d_mask=torch.ones(n, 21),
                          keypoints2d=normalize_keypoints(kp_noisy, conf),
                          keypoints2d_conf=conf, image_tokens=tokens,
                          image_mask=torch.ones(n, tokens.shape[1]))
        return Batch(verts, joints, kp, K, transl, cond)


def concat_batches(a: Batch, b: Batch) -> Batch:
    """One batch of two; a modality one of them lacks gets zeros there and a zero mask."""
    na, nb = len(a.vertices), len(b.vertices)

    def cat(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
        if x is None and y is None:
            return None
        x = y.new_zeros(na, *y.shape[1:]) if x is None else x
        y = x.new_zeros(nb, *x.shape[1:]) if y is None else y
        return torch.cat([x, y])

    def mask_of(c: Conditions, key: str, mask: str, n: int, tokens: int) -> torch.Tensor:
        if getattr(c, key) is None:
            return torch.zeros(n, tokens)
        m = getattr(c, mask)
        return torch.ones(n, tokens) if m is None else m

    ca, cb = a.conditions, b.conditions
    cond = Conditions(**{k: cat(getattr(ca, k), getattr(cb, k)) for k in ca.__dict__})
    for key, mask in (("image_tokens", "image_mask"), ("joints3d", "joints3d_mask")):
        full = getattr(cond, key)
        if full is not None:
            setattr(cond, mask, torch.cat([mask_of(ca, key, mask, na, full.shape[1]),
                                           mask_of(cb, key, mask, nb, full.shape[1])]))
    return Batch(*(torch.cat([getattr(a, f), getattr(b, f)]) for f in
                   ("vertices", "joints", "keypoints2d", "K", "transl")), cond)

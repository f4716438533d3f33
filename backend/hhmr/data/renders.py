"""Training images made by the project: hands from the pose prior rendered as photos.

Each sample is a hand (and its forearm, bare or sleeved) in a random skin tone, lit by a
random light, over a random background (gradients, textures, stripes, clutter), sometimes
partly hidden by an occluder, blurred and noised, seen through the crop the image encoder
reads at inference (`hhmr.encoders.crop_intrinsics` around the 2D keypoints). It comes with
its mesh, 3D joints, 2D keypoints, K and the hand's visible mask. `render_set` renders many
and caches them on disk, so training never re-renders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from hhmr.data.raster import rasterize
from hhmr.encoders import CROP_MARGIN, CROP_SIZE, crop_intrinsics

RENDER_VERSION = 1  # bump when the scenes change, so cached sets are made again

# sRGB skin tones, light to dark (a Fitzpatrick-like range)
SKIN_TONES = np.array([(247, 222, 200), (236, 194, 163), (222, 168, 130), (196, 136, 96),
                       (160, 102, 66), (112, 70, 44), (80, 50, 34)], np.float64)


@dataclass(frozen=True)
class SceneConfig:
    size: int = CROP_SIZE
    supersample: int = 2  # rendered at size x supersample, then averaged down (anti-aliasing)
    crop_margin: float = CROP_MARGIN
    crop_jitter: float = 0.08  # random shift and scale of the crop, as a fraction of its side
    p_sleeve: float = 0.4
    p_occluder: float = 0.3
    max_blur_px: float = 1.2
    max_noise: float = 8.0  # standard deviation, 0..255 units


def forearm(joints: np.ndarray, length: float = 0.22, sides: int = 12
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An elliptic tube from the wrist away from the middle finger, flattened like the palm:
    vertices [2 * sides * 4, 3], faces, and each vertex's distance along the arm."""
    wrist = joints[0]
    axis = wrist - joints[9]
    axis /= np.linalg.norm(axis) + 1e-9
    across = joints[5] - joints[17]
    width = np.linalg.norm(across)
    across -= axis * (across @ axis)
    across /= np.linalg.norm(across) + 1e-9
    normal = np.cross(axis, across)
    rings = np.array([-0.01, 0.04, 0.12, length])
    radii = np.array([[0.55, 0.32], [0.5, 0.33], [0.58, 0.42], [0.62, 0.48]]) * width
    ang = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    verts = []
    for d, (ra, rn) in zip(rings, radii, strict=True):
        ring = wrist + axis * d + np.outer(np.cos(ang) * ra, across) + \
            np.outer(np.sin(ang) * rn, normal)
        verts.append(ring)
    verts = np.concatenate(verts)
    faces = []
    for r in range(len(rings) - 1):
        for i in range(sides):
            a, b = r * sides + i, r * sides + (i + 1) % sides
            faces += [(a, b, a + sides), (b, b + sides, a + sides)]
    return verts, np.array(faces), np.repeat(rings, sides)


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = verts[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.zeros_like(verts)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / (np.linalg.norm(n, axis=1, keepdims=True) + 1e-12)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random backdrop [size, size, 3] float 0..255: gradient, smooth texture, stripes or
    clutter of shapes."""
    kind = rng.integers(4)
    c = rng.uniform(0, 255, (3, 3))
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == 0:
        a = rng.uniform(0, 2 * np.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy)
        t = (t - t.min()) / (np.ptp(t) + 1e-9)
        img = c[0] * (1 - t[..., None]) + c[1] * t[..., None]
    elif kind == 1:
        g = int(rng.integers(3, 20))
        field = rng.uniform(0, 1, (g, g, 3)).astype(np.float32)
        img = np.asarray(Image.fromarray((field * 255).astype(np.uint8)).resize(
            (size, size), Image.BICUBIC), np.float64) / 255
        img = c[0] + (c[1] - c[0]) * img
    elif kind == 2:
        a, f = rng.uniform(0, np.pi), rng.uniform(3, 30)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy))
        img = c[0] * (1 - t[..., None]) + c[1] * t[..., None]
    else:
        pic = Image.new("RGB", (size, size), tuple(int(v) for v in c[2]))
        draw = ImageDraw.Draw(pic)
        for _ in range(int(rng.integers(4, 25))):
            x0, y0 = rng.uniform(-0.2, 1, 2) * size
            w, h = rng.uniform(0.05, 0.6, 2) * size
            col = tuple(int(v) for v in rng.uniform(0, 255, 3))
            shape = rng.integers(3)
            if shape == 0:
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
            elif shape == 1:
                draw.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
            else:
                draw.line([x0, y0, x0 + w, y0 + h], fill=col, width=int(rng.integers(2, 12)))
        img = np.asarray(pic, np.float64)
    return img + rng.normal(0, rng.uniform(0, 12), (size, size, 1))


def occluder(rng: np.random.Generator, size: int, centre: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """A random opaque shape [size, size] bool near `centre` (pixels) and its colour image."""
    pic = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(pic)
    r = rng.uniform(0.1, 0.3) * size
    c = centre + rng.normal(0, 0.2 * size, 2)
    if rng.random() < 0.5:
        draw.ellipse([c[0] - r, c[1] - r * rng.uniform(0.3, 1), c[0] + r,
                      c[1] + r * rng.uniform(0.3, 1)], fill=255)
    else:
        a = rng.uniform(0, 2 * np.pi)
        d = np.array([np.cos(a), np.sin(a)])
        start = c - d * size  # a bar (a pen, a strap, an edge) across the crop
        draw.line([tuple(start), tuple(c + d * rng.uniform(0, 0.3) * size)], fill=255,
                  width=int(r * 0.6))
    col = rng.uniform(0, 255, 3)
    shade = np.linspace(0.7, 1.1, size)[None, :, None]
    return np.asarray(pic) > 0, np.broadcast_to(col * shade, (size, size, 3))


def render_hand(vertices: np.ndarray, faces: np.ndarray, joints: np.ndarray, K: np.ndarray,
                rng: np.random.Generator, cfg: SceneConfig = SceneConfig()
                ) -> tuple[np.ndarray, np.ndarray]:
    """One photo-like render [size, size, 3] uint8 of a camera-frame hand (metres, y down)
    and the mask [size, size] of its visible skin (forearm and occluders excluded)."""
    ss, size = cfg.supersample, cfg.size
    big = size * ss
    arm_v, arm_f, along = forearm(joints)
    nh = len(vertices)
    pts = np.concatenate([vertices, arm_v])
    tris = np.concatenate([faces, arm_f + nh])
    Kss = np.diag([ss, ss, 1.0]) @ K
    frag = rasterize(pts, tris, Kss, big, big)
    hit = frag.face >= 0
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.1, 3)
    albedo = np.tile(skin, (len(pts), 1))
    albedo[:nh] *= 1 + rng.normal(0, 0.03, (nh, 1))  # blotches
    if rng.random() < cfg.p_sleeve:
        cuff = rng.uniform(0.02, 0.12)
        albedo[nh:][along > cuff] = rng.uniform(0, 255, 3)
    normals = vertex_normals(pts, tris)
    f = frag.face[hit]
    b = frag.bary[hit]
    n = (normals[tris[f]] * b[..., None]).sum(1)
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    p = (pts[tris[f]] * b[..., None]).sum(1)
    view = -p / np.linalg.norm(p, axis=1, keepdims=True)
    n *= np.sign((n * view).sum(1, keepdims=True) + 1e-9)  # seen from either side
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(0.3, 1.5)])
    light /= np.linalg.norm(light)
    ambient = rng.uniform(0.25, 0.6)
    diffuse = np.clip((n * light).sum(1, keepdims=True), 0, None) * (1 - ambient)
    half = light + view
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    spec = rng.uniform(0, 0.25) * np.clip((n * half).sum(1, keepdims=True), 0, 1) ** 20
    tint = rng.uniform(0.85, 1.15, 3)  # the light's colour
    colour = ((albedo[tris[f]] * b[..., None]).sum(1) * (ambient + diffuse) + 255 * spec) * tint
    img = background(rng, big)
    img[hit] = colour
    hand = np.zeros((big, big), bool)
    hand[hit] = f < len(faces)
    if rng.random() < cfg.p_occluder:
        centre = np.asarray(np.nonzero(hand)[::-1]).mean(1) if hand.any() else \
            np.full(2, big / 2)
        occ, occ_img = occluder(rng, big, centre)
        img[occ] = occ_img[occ]
        hand &= ~occ
    img = img.reshape(size, ss, size, ss, 3).mean((1, 3))
    mask = hand.reshape(size, ss, size, ss).mean((1, 3)) >= 0.5
    img = img * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25)  # exposure
    pic = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    blur = rng.uniform(0, cfg.max_blur_px)
    if blur > 0.2:
        pic = pic.filter(ImageFilter.GaussianBlur(blur))
    out = np.asarray(pic, np.float64) + rng.normal(0, rng.uniform(0, cfg.max_noise),
                                                    (size, size, 3))
    return np.clip(out, 0, 255).astype(np.uint8), mask


@dataclass
class RenderSet:
    images: np.ndarray  # [N, S, S, 3] uint8
    masks: np.ndarray  # [N, S, S] bool
    K: np.ndarray  # [N, 3, 3] intrinsics of the crop
    vertices: np.ndarray  # [N, V, 3] wrist-relative, metres, camera orientation
    joints: np.ndarray  # [N, 21, 3] wrist-relative
    transl: np.ndarray  # [N, 3] camera-frame wrist
    keypoints: np.ndarray  # [N, 21, 2] crop pixels (exact projections)

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **self.__dict__)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RenderSet:
        with np.load(path) as z:
            return cls(**{k: z[k] for k in cls.__dataclass_fields__})


def render_batch(n: int, seed: int, cfg: SceneConfig = SceneConfig()) -> RenderSet:
    """n rendered hands from the pose prior (seed fixes everything)."""
    from hhmr.data.poses import PosePrior
    from hhmr.diffusion.guidance import project
    from hhmr.hand import load_hand_model
    from hhmr.training.data import random_cameras

    hand = load_hand_model()
    gen = torch.Generator().manual_seed(seed)
    s = PosePrior(hand).sample(n, generator=gen)
    with torch.no_grad():
        out = hand(s.global_orient, s.hand_pose, s.betas)
    wrist = out.joints[:, :1]
    verts, joints = out.vertices - wrist, out.joints - wrist
    K, transl = random_cameras(n, gen)
    kp = project(joints + transl[:, None], K).numpy()
    rng = np.random.default_rng(seed)
    faces = hand.faces.numpy()
    images, masks, Ks = [], [], []
    for i in range(n):
        centre_jitter = rng.normal(0, cfg.crop_jitter, 2)
        scale = math.exp(rng.normal(0, cfg.crop_jitter))
        Kc = crop_intrinsics(K[i].numpy(), kp[i], cfg.crop_margin * scale, cfg.size,
                             shift=centre_jitter)
        cam_v = verts[i].numpy() + transl[i].numpy()
        cam_j = joints[i].numpy() + transl[i].numpy()
        img, mask = render_hand(cam_v, faces, cam_j, Kc, rng, cfg)
        images.append(img)
        masks.append(mask)
        Ks.append(Kc)
    Kn = np.stack(Ks).astype(np.float32)
    kp_crop = project(joints + transl[:, None], torch.from_numpy(Kn)).numpy()
    return RenderSet(np.stack(images), np.stack(masks), Kn, verts.numpy(), joints.numpy(),
                     transl.numpy(), kp_crop.astype(np.float32))


def render_set(n: int, seed: int, cache_dir: Path, cfg: SceneConfig = SceneConfig(),
               chunk: int = 250, progress: bool = True, worker: tuple[int, int] = (0, 1)
               ) -> RenderSet | None:
    """n renders, made in chunks of `chunk` and cached in `cache_dir` (a chunk on disk is
    read back, not rendered again). `worker` (i, k): render only every k-th chunk from the
    i-th and return None, so k processes can share the work."""
    from tqdm import tqdm

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, n, chunk))
    mine = starts[worker[0]::worker[1]]
    parts = []
    bar = tqdm(total=sum(min(chunk, n - s) for s in mine), desc="render", unit="img",
               disable=not progress)
    for start in starts:
        m = min(chunk, n - start)
        path = chunk_path(cache_dir, seed, start, m)
        if start in mine and not path.exists():
            render_batch(m, seed * 1_000_003 + start, cfg).save(path)
        if start in mine:
            bar.update(m)
        if worker[1] == 1:
            parts.append(RenderSet.load(path))
    bar.close()
    if worker[1] != 1:
        return None
    return RenderSet(**{k: np.concatenate([getattr(p, k) for p in parts])
                        for k in RenderSet.__dataclass_fields__})


def chunk_path(cache_dir: Path, seed: int, start: int, m: int) -> Path:
    return Path(cache_dir) / f"renders_v{RENDER_VERSION}_s{seed}_{start}_{m}.npz"

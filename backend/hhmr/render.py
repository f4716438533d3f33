"""A small CPU mesh renderer (painter's algorithm, Lambert shading) and contact sheets."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hhmr.hand.topology import KEYPOINT_PARENTS


def look_rotation(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Camera rotation (world -> view) turning the model by azimuth about y, then elevation."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    return rx @ ry


def render_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    size: int = 256,
    rotation: np.ndarray | None = None,
    color: tuple[int, int, int] = (222, 178, 150),
    background: tuple[int, int, int] = (245, 245, 245),
    keypoints: np.ndarray | None = None,
    fit: tuple[np.ndarray, float] | None = None,
) -> Image.Image:
    """Orthographic render of a mesh seen along -z of the view frame (y up).

    `fit` = (centre, half_extent) frames several meshes identically; by default the mesh's
    own bounding box is used.
    """
    v = np.asarray(vertices, dtype=np.float64)
    rot = np.eye(3) if rotation is None else rotation
    pv = v @ rot.T
    if fit is None:
        lo, hi = pv.min(0), pv.max(0)
        centre, half = (lo + hi) / 2, max(hi[0] - lo[0], hi[1] - lo[1]) / 2 * 1.1 + 1e-9
    else:
        centre, half = np.asarray(fit[0]) @ rot.T, fit[1]

    def to_px(p: np.ndarray) -> np.ndarray:
        xy = (p[..., :2] - centre[:2]) / half
        return np.stack([(xy[..., 0] + 1) * size / 2, (1 - xy[..., 1]) * size / 2], -1)

    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    f = np.asarray(faces)
    tri = pv[f]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    light = np.array([0.3, 0.5, 1.0]) / np.linalg.norm([0.3, 0.5, 1.0])
    shade = 0.25 + 0.75 * np.abs(n @ light)
    order = np.argsort(tri[:, :, 2].mean(1))  # far (small z) first
    px = to_px(tri)
    base = np.array(color, dtype=np.float64)
    for i in order:
        c = tuple(int(x) for x in np.clip(base * shade[i], 0, 255))
        draw.polygon([tuple(p) for p in px[i]], fill=c, outline=c)
    if keypoints is not None:
        kp = to_px(np.asarray(keypoints) @ rot.T)
        for j, p in enumerate(KEYPOINT_PARENTS):
            if p >= 0:
                draw.line([tuple(kp[p]), tuple(kp[j])], fill=(30, 90, 200), width=2)
        for q in kp:
            draw.ellipse([q[0] - 2, q[1] - 2, q[0] + 2, q[1] + 2], fill=(200, 30, 30))
    return img


def contact_sheet(
    images: list[Image.Image], labels: list[str] | None = None, columns: int = 4
) -> Image.Image:
    """Tile equally sized images in a grid, with an optional caption under each."""
    if not images:
        raise ValueError("no images for the contact sheet")
    w, h = images[0].size
    cap = 16 if labels else 0
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * w, rows * (h + cap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, im in enumerate(images):
        x, y = (i % columns) * w, (i // columns) * (h + cap)
        sheet.paste(im, (x, y))
        if labels:
            draw.text((x + 4, y + h + 2), labels[i], fill=(0, 0, 0), font=font)
    return sheet


def render_overlay(photo: Image.Image, meshes: list[np.ndarray], faces: list[np.ndarray],
                   K: np.ndarray, keypoints: list[np.ndarray] | None = None,
                   alpha: float = 0.55) -> Image.Image:
    """Project camera-frame meshes with intrinsics K onto a photo (shaded, see-through)."""
    base = photo.convert("RGB")
    layer = Image.new("RGB", base.size, (0, 0, 0))
    mask = Image.new("L", base.size, 0)
    draw, mdraw = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    light = np.array([0.0, 0.0, -1.0])
    colors = [(90, 160, 240), (240, 150, 80), (120, 210, 120), (220, 110, 200)]
    for m, (v, f) in enumerate(zip(meshes, faces, strict=True)):
        v = np.asarray(v, dtype=np.float64)
        tri = v[np.asarray(f)]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
        shade = 0.35 + 0.65 * np.abs(n @ light)
        p = tri @ np.asarray(K, dtype=np.float64).T
        px = p[..., :2] / np.clip(p[..., 2:], 1e-6, None)
        base_c = np.array(colors[m % len(colors)], dtype=np.float64)
        for i in np.argsort(-tri[:, :, 2].mean(1)):  # far first
            c = tuple(int(x) for x in np.clip(base_c * shade[i], 0, 255))
            poly = [tuple(q) for q in px[i]]
            draw.polygon(poly, fill=c)
            mdraw.polygon(poly, fill=int(255 * alpha))
    out = Image.composite(layer, base, mask)
    if keypoints:
        d = ImageDraw.Draw(out)
        for kp in keypoints:
            for j, par in enumerate(KEYPOINT_PARENTS):
                if par >= 0:
                    d.line([tuple(kp[par]), tuple(kp[j])], fill=(255, 255, 0), width=2)
    return out

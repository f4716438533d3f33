"""Pose solver: the rig's pose and shape that explain a mesh or its keypoints.

`fit_pose(model, vertices=...)` or `fit_pose(model, keypoints=...)` finds, for a batch of B
right hands, the global orientation, the 15 joint rotations (inside the anatomical limits of
`model.joint_limits`), the translation and the shape coefficients of the hand model. It starts
from closed-form guesses (a Kabsch alignment of the palm or of each bone's vertices) and
refines them with Levenberg-Marquardt on the joint angles in the anatomical frames, where the
limits are a box (each step is projected into it). For a mesh, what the pose cannot explain
comes back as a rest-space corrective: per-vertex offsets that, added to the shaped rest mesh
and skinned with the solved pose, reproduce the input mesh (`skin_with_corrective`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import jacfwd, vmap

from hhmr.hand.base import HandModel
from hhmr.hand.lbs import blend_shapes
from hhmr.hand.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from hhmr.hand.topology import JOINT_TO_KEYPOINT, NUM_KEYPOINTS, PARENTS, TIP_KEYPOINTS

# wrist and each finger's first joint: placed by the wrist's rotation alone
PALM_KEYPOINTS = (0, 1, 5, 9, 13, 17)
# the child keypoint of each kinematic joint (a finger's next joint, or its tip)
CHILD_KEYPOINT = (9,) + tuple(1 + 4 * f + k + 1 for f in range(5) for k in range(3))


@dataclass(frozen=True)
class PoseFit:
    """The solved rig parameters of B hands (smplx names) and how well they fit.

    `vertices`/`joints` are the hand model's output for the solved parameters (no
    corrective); `corrective` [B, V, 3] is the rest-space offset that makes the skinned mesh
    equal the input mesh (None for keypoint fits); `error` [B] is the mean distance (metres)
    between the model's output and the input vertices or (given) keypoints.
    """

    global_orient: torch.Tensor  # [B, 3] axis-angle
    hand_pose: torch.Tensor  # [B, 15, 3] axis-angle, relative to the parent joint
    betas: torch.Tensor  # [B, S]
    transl: torch.Tensor  # [B, 3] metres
    vertices: torch.Tensor  # [B, V, 3]
    joints: torch.Tensor  # [B, 21, 3]
    error: torch.Tensor  # [B] metres
    corrective: torch.Tensor | None = None  # [B, V, 3] rest-space offsets
    iterations: int = 0


@dataclass(frozen=True)
class PoseGaussian:
    """A Gaussian over the anatomical angles (flexion, abduction, twist) [15, 3] (radians):
    `mean` [45] and `whiten` [45, 45] with whiten @ (a - mean) ~ N(0, I). It carries the
    finger synergies (e.g. MCP with PIP), so a fit to a few joints fills in the others."""

    mean: torch.Tensor
    whiten: torch.Tensor

    @classmethod
    def from_angles(cls, angles: torch.Tensor, floor_deg: float = 1.0) -> PoseGaussian:
        """Fit to sampled anatomical angles [N, 15, 3]; `floor_deg` keeps every direction's
        s.d. at least that large (a well-conditioned precision)."""
        x = angles.reshape(angles.shape[0], 45).double()
        mean = x.mean(0)
        cov = torch.cov((x - mean).T) + torch.eye(45, dtype=x.dtype) * \
            torch.deg2rad(torch.tensor(floor_deg, dtype=x.dtype)) ** 2
        chol = torch.linalg.cholesky(cov)
        whiten = torch.linalg.solve_triangular(chol, torch.eye(45, dtype=x.dtype), upper=False)
        return cls(mean.float(), whiten.float())

    @classmethod
    def neutral(cls, sd_deg: float = 30.0) -> PoseGaussian:
        """Independent angles around the flat hand, `sd_deg` each (the default prior)."""
        return cls(torch.zeros(45), torch.eye(45) / torch.deg2rad(torch.tensor(sd_deg)))


# ---- the model, written functionally (no in-place writes) so that torch.func can vmap it --------
def _pose_rotations(model: HandModel, theta: torch.Tensor) -> torch.Tensor:
    """Local rotation matrices [B, 15, 3, 3] of anatomical angles [B, 15, 3]."""
    return axis_angle_to_matrix(model.joint_limits.from_anatomical(theta))


def _skin(model: HandModel, r_global: torch.Tensor, theta: torch.Tensor, betas: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """World rotations [B, 16, 3, 3], skinning translations [B, 16, 3], posed FK joints
    [B, 16, 3] and the shaped rest vertices [B, V, 3] (no global translation)."""
    v_shaped = model.v_template[None] + blend_shapes(betas, model.shapedirs)
    rest = model.joint_regressor16() @ v_shaped
    local = torch.cat([r_global[:, None], _pose_rotations(model, theta)], 1)
    rots, pos = [local[:, 0]], [rest[:, 0]]
    for j in range(1, 16):
        p = PARENTS[j]
        rots.append(rots[p] @ local[:, j])
        pos.append(pos[p] + (rots[p] @ (rest[:, j] - rest[:, p])[..., None])[..., 0])
    world, joints = torch.stack(rots, 1), torch.stack(pos, 1)
    shift = joints - (world @ rest[..., None])[..., 0]
    return world, shift, joints, v_shaped


def _blend(model: HandModel, world: torch.Tensor, shift: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-vertex blended linear parts [B, V, 3, 3] and translations [B, V, 3]."""
    w = model.weights
    return torch.einsum("vj,bjkl->bvkl", w, world), torch.einsum("vj,bjk->bvk", w, shift)


def _apply(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-vertex 3x3 matrices [B, V, 3, 3] applied to points [B, V, 3] (elementwise: far
    faster on the CPU than a batch of tiny matrix products)."""
    return (a * v[..., None, :]).sum(-1)


def _keypoints(joints16: torch.Tensor, tips: torch.Tensor) -> torch.Tensor:
    """The model's 21 keypoints [B, 21, 3] from FK joints [B, 16, 3] and tips [B, 5, 3]."""
    kp = torch.cat([joints16, tips], 1)
    order = list(JOINT_TO_KEYPOINT) + list(TIP_KEYPOINTS)
    return kp[:, [order.index(k) for k in range(NUM_KEYPOINTS)]]


def _posed(model: HandModel, r_global, theta, betas, transl, ids: torch.Tensor | None = None):
    """(vertices [B, V, 3], keypoints [B, 21, 3]) of the model; with `ids`, only those
    vertices [B, len(ids), 3] are skinned (cheaper Jacobians), besides the fingertips."""
    world, shift, joints16, v_shaped = _skin(model, r_global, theta, betas)
    tip_ids = model.tip_vertex_ids
    pick = torch.cat([tip_ids, ids]) if ids is not None else None
    w = model.weights if pick is None else model.weights[pick]
    a = torch.einsum("vj,bjkl->bvkl", w, world)
    rest = v_shaped if pick is None else v_shaped[:, pick]
    verts = _apply(a, rest) + torch.einsum("vj,bjk->bvk", w, shift) + transl[:, None]
    tips, verts = (verts[:, tip_ids], verts) if pick is None else \
        (verts[:, :len(tip_ids)], verts[:, len(tip_ids):])
    return verts, _keypoints(joints16 + transl[:, None], tips)


# ---- closed-form starts ---------------------------------------------------------------------
def _kabsch(src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Rotation R [..., 3, 3] minimising sum_i w_i |R (src_i - c_s) - (dst_i - c_d)|^2 for
    point sets [..., N, 3] with weights [..., N] (or [N])."""
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    cs = (w[..., None] * src).sum(-2, keepdim=True)
    cd = (w[..., None] * dst).sum(-2, keepdim=True)
    cov = ((dst - cd) * w[..., None]).transpose(-1, -2) @ (src - cs)  # sum w d s^T
    u, _, vt = torch.linalg.svd(cov.double())
    d = torch.linalg.det(u @ vt)
    fix = torch.ones(*d.shape, 3, dtype=u.dtype, device=u.device)
    fix = torch.cat([fix[..., :2], d[..., None]], -1)
    return (u * fix[..., None, :] @ vt).to(src.dtype)


def _min_arc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest rotation [..., 3, 3] turning unit vectors a onto b [..., 3]."""
    axis = torch.linalg.cross(a, b)
    s, c = axis.norm(dim=-1, keepdim=True), (a * b).sum(-1, keepdim=True)
    angle = torch.atan2(s, c)
    return axis_angle_to_matrix(axis / s.clamp_min(1e-9) * angle)


def _start_from_vertices(model: HandModel, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each bone's world rotation by a Kabsch alignment of the rest vertices it skins
    (weighted by the squared skinning weight) with the target's, turned into local angles."""
    b = target.shape[0]
    rest = model.v_template[None].expand(b, -1, -1)
    w = model.weights.T.square()  # [16, V]
    world = _kabsch(rest[:, None], target[:, None], w[None].expand(b, -1, -1))  # [B,16,3,3]
    parent = world[:, [max(p, 0) for p in PARENTS[1:]]]
    local = parent.transpose(-1, -2) @ world[:, 1:]
    return world[:, 0], model.joint_limits.to_anatomical(matrix_to_axis_angle(local))


def _start_from_keypoints(model: HandModel, target: torch.Tensor, weight: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The global rotation by a Kabsch alignment of the palm keypoints (or, with fewer than
    three known, of whatever keypoints are known), then each bone turned by the smallest
    rotation onto its known child keypoint, top-down."""
    b = target.shape[0]
    rest_kp = _keypoints(model.joint_regressor16()[None] @ model.v_template[None],
                         model.v_template[None, model.tip_vertex_ids])[0]
    palm = list(PALM_KEYPOINTS)
    known_palm = (weight[:, palm] > 0).sum(1)
    w_palm = torch.zeros_like(weight)
    w_palm[:, palm] = weight[:, palm]
    w_all = torch.where((known_palm >= 3)[:, None], w_palm, weight)
    r_global = _kabsch(rest_kp[None].expand(b, -1, -1), target, w_all)
    rest16 = rest_kp[list(JOINT_TO_KEYPOINT)]
    world = [r_global]
    local = []
    for j in range(1, 16):
        k, c = JOINT_TO_KEYPOINT[j], CHILD_KEYPOINT[j]
        rp = world[PARENTS[j]]
        d_rest = rest_kp[c] - rest16[j]
        d_tgt = target[:, c] - target[:, k]
        ok = ((weight[:, k] > 0) & (weight[:, c] > 0))[:, None, None]
        a = d_rest / d_rest.norm()
        t = (rp.transpose(-1, -2) @ d_tgt[..., None])[..., 0]
        t = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        r = torch.where(ok, _min_arc(a.expand_as(t), t), torch.eye(3).to(t).expand(b, 3, 3))
        local.append(r)
        world.append(rp @ r)
    theta = model.joint_limits.to_anatomical(matrix_to_axis_angle(torch.stack(local, 1)))
    return r_global, theta


# ---- the solver -----------------------------------------------------------------------------
def fit_pose(model: HandModel, vertices: torch.Tensor | None = None,
             keypoints: torch.Tensor | None = None, keypoint_weights: torch.Tensor | None = None,
             prior: PoseGaussian | None = None, prior_weight: float | None = None,
             shape_weight: float = 0.5, iterations: int = 8, fit_shape: bool = True,
             unit: float = 1e-3, vertex_stride: int = 3, betas: torch.Tensor | None = None
             ) -> PoseFit:
    """Solve the pose, shape and translation of B right hands.

    Give `vertices` [B, V, 3] (the model's topology; the fit then also returns the
    corrective) or `keypoints` [B, 21, 3] with optional `keypoint_weights` [B, 21] (0 for
    unknown joints; a finger alone works: the prior places the rest of the hand). `prior`
    (default `PoseGaussian.neutral()`) weighs the anatomical angles by `prior_weight` (default
    0.01 for meshes, 1 for keypoints; residuals are in units of `unit` metres), shape
    coefficients by `shape_weight` (per unit beta). Levenberg-Marquardt, `iterations` steps,
    joint angles kept inside the anatomical limits; a mesh is fitted on every
    `vertex_stride`-th vertex (the Jacobian's cost), its error and corrective use them all.
    `betas` [B, S]: the shape to start from (the shape prior then weighs the change), held
    fixed with `fit_shape=False` (one shape for every frame of a clip).
    """
    if (vertices is None) == (keypoints is None):
        raise ValueError("give either vertices or keypoints")
    dev = model.v_template.device
    prior = prior or PoseGaussian.neutral()
    limits = model.joint_limits
    lower, upper = limits.lower.to(dev), limits.upper.to(dev)
    mean, whiten = prior.mean.to(dev), prior.whiten.to(dev)
    mesh = vertices is not None
    if mesh:
        target = vertices.to(dev).float()
        if target.ndim != 3 or target.shape[1:] != (model.num_vertices, 3):
            raise ValueError(f"vertices must be [B, {model.num_vertices}, 3]")
        b = target.shape[0]
        weight = torch.ones(b, model.num_vertices, device=dev)
        r0, theta = _start_from_vertices(model, target)
    else:
        target = keypoints.to(dev).float()
        if target.ndim != 3 or target.shape[1:] != (NUM_KEYPOINTS, 3):
            raise ValueError("keypoints must be [B, 21, 3]")
        b = target.shape[0]
        weight = torch.ones(b, NUM_KEYPOINTS, device=dev) if keypoint_weights is None \
            else keypoint_weights.to(dev).float().reshape(b, NUM_KEYPOINTS)
        if (weight.sum(1) <= 0).any():
            raise ValueError("every hand needs at least one keypoint with a positive weight")
        r0, theta = _start_from_keypoints(model, target, weight)
    theta = torch.maximum(torch.minimum(theta, upper), lower)
    pw = (0.01 if mesh else 1.0) if prior_weight is None else prior_weight
    nb = model.num_betas if fit_shape else 0
    beta0 = torch.zeros(b, model.num_betas, device=dev) if betas is None else \
        betas.to(dev).float().reshape(b, model.num_betas)
    betas = torch.zeros_like(beta0)  # the change from beta0, solved for

    sub = torch.arange(0, model.num_vertices, max(int(vertex_stride), 1), device=dev) \
        if mesh else torch.zeros(0, dtype=torch.long, device=dev)

    def model_points(r_global, th, be, tr):
        verts, kp = _posed(model, r_global, th, be, tr, sub)
        return verts if mesh else kp

    # the translation putting the start on the target (weighted mean offset)
    full_target, full_weight = target, weight
    if mesh:
        target, weight = target[:, sub], weight[:, sub]
    pts = model_points(r0, theta, beta0, torch.zeros(b, 3, device=dev))
    wn = weight / weight.sum(1, keepdim=True)
    transl = ((target - pts) * wn[..., None]).sum(1)
    sw = weight.sqrt()

    def unpack(x: torch.Tensor, r_base: torch.Tensor, be0: torch.Tensor):
        rg = axis_angle_to_matrix(x[..., :3]) @ r_base
        th = x[..., 3:48].reshape(*x.shape[:-1], 15, 3)
        be = x[..., 48:48 + nb]
        if nb < model.num_betas:
            be = torch.cat([be, be.new_zeros(*be.shape[:-1], model.num_betas - nb)], -1)
        return rg, th, be0 + be, x[..., 48 + nb:]

    def residual(x, r_base, tgt, sqrt_w, be0):
        """Stacked residuals of one hand: data (in `unit`), pose prior, shape prior."""
        rg, th, be, tr = unpack(x[None], r_base[None], be0[None])
        d = (model_points(rg, th, be, tr)[0] - tgt) * sqrt_w[:, None] / unit
        p = whiten @ (th.reshape(45) - mean) * pw
        return torch.cat([d.reshape(-1), p, (be - be0)[0, :nb] * shape_weight])

    def pack(th, be, tr):
        return torch.cat([torch.zeros(b, 3, device=dev), th.reshape(b, 45), be[:, :nb], tr], 1)

    jac = vmap(jacfwd(residual), in_dims=(0, 0, 0, 0, 0))
    res = vmap(residual, in_dims=(0, 0, 0, 0, 0))
    x = pack(theta, betas, transl)
    r = res(x, r0, target, sw, beta0)
    cost = r.square().sum(1)
    damp = torch.full((b,), 1e-3, device=dev, dtype=torch.float64)
    n_par = x.shape[1]
    lo = torch.cat([torch.full((3,), -torch.inf), lower.reshape(45).cpu(),
                    torch.full((nb + 3,), -torch.inf)]).to(dev)
    hi = torch.cat([torch.full((3,), torch.inf), upper.reshape(45).cpu(),
                    torch.full((nb + 3,), torch.inf)]).to(dev)
    done = 0
    for _ in range(iterations):
        done += 1
        J = jac(x, r0, target, sw, beta0).double()  # [B, R, P]
        jtj = J.transpose(1, 2) @ J
        jtr = (J.transpose(1, 2) @ r.double()[..., None])[..., 0]
        diag = torch.diagonal(jtj, dim1=1, dim2=2).clamp_min(1e-9)
        pending = torch.ones(b, dtype=torch.bool, device=dev)
        for _ in range(4):  # raise the damping of each hand until its step lowers its cost
            a = jtj + torch.diag_embed(damp[:, None] * diag) + \
                1e-9 * torch.eye(n_par, dtype=jtj.dtype, device=dev)
            step = torch.linalg.solve(a, -jtr).float()
            cand = torch.maximum(torch.minimum(x + step, hi), lo)
            r_new = res(cand, r0, target, sw, beta0)
            c_new = r_new.square().sum(1)
            better = pending & (c_new < cost)
            x = torch.where(better[:, None], cand, x)
            r = torch.where(better[:, None], r_new, r)
            cost = torch.where(better, c_new, cost)
            damp = torch.where(better, (damp / 3).clamp_min(1e-7),
                               torch.where(pending, damp * 8, damp))
            pending = pending & ~better
            if not pending.any():
                break
        # fold the rotation update into the base so the increment stays small
        r0 = axis_angle_to_matrix(x[:, :3]) @ r0
        x = torch.cat([torch.zeros_like(x[:, :3]), x[:, 3:]], 1)
    rg, theta, betas, transl = unpack(x, r0, beta0)
    with torch.no_grad():
        verts, kp = _posed(model, rg, theta, betas, transl)
    target, weight = full_target, full_weight
    pts = verts if mesh else kp
    err = ((pts - target).norm(dim=-1) * weight).sum(1) / weight.sum(1)
    hand_pose = limits.from_anatomical(theta)
    fit = PoseFit(matrix_to_axis_angle(rg), hand_pose, betas, transl, verts, kp, err,
                  None, done)
    if mesh:
        fit = PoseFit(**{**fit.__dict__, "corrective": rest_corrective(model, fit, target)})
    return fit


def _params(model: HandModel, fit: PoseFit):
    theta = model.joint_limits.to_anatomical(fit.hand_pose)
    return axis_angle_to_matrix(fit.global_orient), theta, fit.betas, fit.transl


def rest_corrective(model: HandModel, fit: PoseFit, vertices: torch.Tensor) -> torch.Tensor:
    """Rest-space offsets [B, V, 3] such that skinning (shaped rest + offsets) with the fit's
    pose gives `vertices` [B, V, 3]: each vertex through the inverse of its blended LBS
    transform."""
    rg, theta, betas, transl = _params(model, fit)
    world, shift, _, v_shaped = _skin(model, rg, theta, betas)
    a, t = _blend(model, world, shift)
    local = vertices.to(a) - transl[:, None] - t
    rest = torch.linalg.solve(a.double(), local.double()[..., None])[..., 0]
    return (rest - v_shaped.double()).to(vertices.dtype)


def rest_mesh(model: HandModel, fit: PoseFit) -> torch.Tensor:
    """The fitted hands unposed [B, V, 3]: shaped rest mesh plus the fit's corrective (what
    the rig shows with every bone at rest), so their size can be compared whatever the pose."""
    v = model.v_template[None] + blend_shapes(fit.betas, model.shapedirs)
    return v if fit.corrective is None else v + fit.corrective.to(v)


def skin_with_corrective(model: HandModel, fit: PoseFit, corrective: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Vertices [B, V, 3] of the fit's pose skinning the shaped rest mesh plus `corrective`
    (default the fit's own): what a rig with that shape key shows."""
    corrective = fit.corrective if corrective is None else corrective
    rg, theta, betas, transl = _params(model, fit)
    world, shift, _, v_shaped = _skin(model, rg, theta, betas)
    a, t = _blend(model, world, shift)
    rest = v_shaped if corrective is None else v_shaped + corrective.to(v_shaped)
    return _apply(a, rest) + t + transl[:, None]

"""Condition-aligned guidance operators: || P x - P x_obs ||^2 for a task operator P.

Each operator maps a batch of predicted meshes x0 [B, V, 3] (metres, wrist-relative) to a
per-sample loss [B]. `guided_update` moves a sampler's next state against the gradient of
that loss with respect to x_t (HHMR's condition-aligned gradient guidance).
"""

from __future__ import annotations

from typing import Protocol

import torch


class GuidanceOperator(Protocol):
    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        """Per-sample guidance loss [B] for meshes [B, V, 3] in metres."""
        ...


def _expand(t: torch.Tensor | None, b: int) -> torch.Tensor | None:
    if t is None:
        return None
    return t.expand(b, *t.shape[1:]) if t.shape[0] == 1 else t


def _stable_influence(w: torch.Tensor, regressor: torch.Tensor) -> torch.Tensor:
    """Scale each column of an influence [V, J] so that it moves its own regressed joint
    one-for-one, then all of it by the largest singular value of regressor @ W (neighbouring
    joints share vertices), so that gradient steps of `s * W @ W.T @ grad` on a loss of the
    joints are stable whenever they would be on the joints themselves."""
    w = w / (regressor @ w).diagonal()[None]
    return w / torch.linalg.matrix_norm(regressor @ w, ord=2)


def joint_influence(regressor: torch.Tensor, edges: torch.Tensor, rounds: int = 4
                    ) -> torch.Tensor:
    """Smooth per-joint influence over the mesh [V, J]: the regressor's weights spread by
    `rounds` of neighbour averaging along `edges` [E, 2] (see `_stable_influence`)."""
    v = regressor.shape[1]
    loops = torch.arange(v, device=edges.device)[:, None].expand(-1, 2)
    idx = torch.cat([edges, edges.flip(1), loops]).T
    ones = torch.ones(idx.shape[1], dtype=regressor.dtype, device=regressor.device)
    adj = torch.sparse_coo_tensor(idx, ones, (v, v), check_invariants=False).coalesce()
    deg = adj.sum(1).to_dense()
    w = regressor.T.clone()
    for _ in range(rounds):
        w = (adj @ w) / deg[:, None]
    return _stable_influence(w, regressor)


def _along_segment(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Position u in [0, 1] of each point [V, 3]'s projection on segment a-b, and its
    distance [V] to the segment."""
    d = b - a
    u = (((p - a) @ d) / d.dot(d)).clamp(0, 1)
    return u, (p - (a + u[:, None] * d)).norm(dim=-1)


def bone_influence(regressor: torch.Tensor, skin_weights: torch.Tensor,
                   template: torch.Tensor, palm_width: float = 0.01) -> torch.Tensor:
    """Per-keypoint influence over the mesh [V, 21] that follows the skeleton: a vertex
    skinned to a finger bone moves with the bone's two end keypoints, interpolated by where
    it lies along the bone in the rest pose; a vertex of the palm (the wrist bone) likewise
    along the wrist-to-knuckle segments, softly picked by distance (`palm_width`, metres).
    Joint moves thus carry whole finger segments, as a skinned rig would, instead of a blob
    around each joint (see `_stable_influence` for the scale)."""
    from hhmr.hand.topology import JOINT_TO_KEYPOINT

    kp = regressor @ template
    w = torch.zeros(template.shape[0], regressor.shape[0], dtype=template.dtype,
                    device=template.device)
    knuckles = JOINT_TO_KEYPOINT[1::3]  # each finger's first joint
    for j, head in enumerate(JOINT_TO_KEYPOINT):
        ends = knuckles if j == 0 else [head + 1]  # a finger bone ends at the next keypoint
        along = [_along_segment(template, kp[head], kp[e]) for e in ends]
        pick = torch.softmax(-torch.stack([d for _, d in along], 1) / palm_width, 1)
        for k, (e, (u, _)) in enumerate(zip(ends, along, strict=True)):
            share = skin_weights[:, j] * pick[:, k]
            w[:, head] += share * (1 - u)
            w[:, e] += share * u
    return _stable_influence(w, regressor)


class JointOperator:
    """P = M_J J: masked joints through the keypoint regressor (3D skeleton refit).

    With `align_translation`, the best translation (closed form) is removed first, so a
    skeleton given in any frame (or one missing its wrist) still guides the shape.
    """

    def __init__(self, regressor: torch.Tensor, target: torch.Tensor,
                 mask: torch.Tensor | None = None, align_translation: bool = False,
                 unit: float = 0.01) -> None:
        self.regressor = regressor
        self.target = target
        self.mask = torch.ones(target.shape[:2], dtype=target.dtype, device=target.device) \
            if mask is None else mask.to(target)
        self.align = align_translation
        self.unit = unit

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        return self.joint_loss(self.regressor @ x0)

    def joint_loss(self, joints: torch.Tensor) -> torch.Tensor:
        """The loss of regressed joints [B, 21, 3] (metres): it reads the mesh only there."""
        b = joints.shape[0]
        target, mask = _expand(self.target, b), _expand(self.mask, b)
        diff = joints - target
        if self.align:
            w = mask[..., None] / mask.sum(1, keepdim=True)[..., None].clamp_min(1e-8)
            diff = diff - (w * diff).sum(1, keepdim=True)
        return (mask[..., None] * diff.square()).sum((1, 2)) / self.unit ** 2


class VertexMaskOperator:
    """P = M_V: keep the masked vertices where they are (inpainting)."""

    def __init__(self, target: torch.Tensor, keep: torch.Tensor, unit: float = 0.01) -> None:
        self.target = target
        self.keep = keep.to(target.dtype)
        self.unit = unit

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        b = x0.shape[0]
        keep = self.keep if self.keep.dim() == 2 else self.keep[None]
        diff = (x0 - _expand(self.target, b)).square().sum(-1)
        return (_expand(keep, b) * diff).sum(-1) / self.unit ** 2


def solve_translation(joints: torch.Tensor, keypoints: torch.Tensor, conf: torch.Tensor,
                      K: torch.Tensor) -> torch.Tensor:
    """Camera translation [B, 3] putting wrist-relative joints [B, J, 3] on 2D keypoints
    [B, J, 2] under intrinsics K [B, 3, 3] (weighted linear least squares, differentiable)."""
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    du, dv = keypoints[..., 0] - cx, keypoints[..., 1] - cy
    x, y, z = joints.unbind(-1)
    zero = torch.zeros_like(du)
    # fx*tx - du*tz = du*z - fx*x ; fy*ty - dv*tz = dv*z - fy*y
    a = torch.cat([torch.stack([fx.expand_as(du), zero, -du], -1),
                   torch.stack([zero, fy.expand_as(dv), -dv], -1)], 1)  # [B, 2J, 3]
    rhs = torch.cat([du * z - fx * x, dv * z - fy * y], 1)
    w = torch.cat([conf, conf], 1)[..., None]
    ata = (a * w).transpose(1, 2) @ a + 1e-9 * torch.eye(3, dtype=a.dtype, device=a.device)
    atb = (a * w).transpose(1, 2) @ rhs[..., None]
    return torch.linalg.solve(ata, atb)[..., 0]


def project(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of camera-frame points [B, N, 3] with K [B, 3, 3] -> pixels."""
    p = points @ K.transpose(1, 2)
    return p[..., :2] / p[..., 2:].clamp_min(1e-6)


def solve_weak_perspective(joints_xy: torch.Tensor, keypoints: torch.Tensor,
                           conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale [B] and 2D translation [B, 2] with keypoints ~ s * joints_xy + t (closed form)."""
    w = conf / conf.sum(1, keepdim=True).clamp_min(1e-8)
    mj = (w[..., None] * joints_xy).sum(1, keepdim=True)
    mk = (w[..., None] * keypoints).sum(1, keepdim=True)
    a, b = joints_xy - mj, keypoints - mk
    s = (w[..., None] * a * b).sum((1, 2)) / (w[..., None] * a * a).sum((1, 2)).clamp_min(1e-12)
    t = mk[:, 0] - s[:, None] * mj[:, 0]
    return s, t


MIN_DEPTH = 0.05  # metres


PRUNE_AFTER = 5  # rotation fit: iterations from every start before only the best goes on
STEP_TOL = 1e-5  # rotation fit: a lone start stops once its step is below this (radians)


def _rotation_starts(device, dtype) -> torch.Tensor:
    """Axis-angle starts for the rotation search: identity and half/quarter turns."""
    import math

    starts = [[0.0, 0.0, 0.0]]
    for axis in torch.eye(3).tolist():
        for angle in (math.pi / 2, math.pi, -math.pi / 2):
            starts.append([a * angle for a in axis])
    return torch.tensor(starts, device=device, dtype=dtype)


class ProjectionOperator:
    """P = M Pi J: confidence-weighted projection of the regressed joints (2D keypoints).

    Perspective with intrinsics K (the camera translation is solved in closed form each
    time), or weak perspective (scale and 2D translation in closed form) when K is None.
    With `solve_rotation`, a global rotation about the wrist is also fitted to the keypoints
    at each call (Levenberg-Marquardt from several starts, then warm-started from the
    previous call), so guidance shapes the articulation rather than bending the hand towards
    a wrong orientation; `rotation` holds the last one [B, 3, 3]. While `hold_camera` is
    True, the last rotation and camera are reused instead of solved again (cheap repeated
    steps on one prediction). The loss is in units of `unit_px` pixels.
    """

    def __init__(self, regressor: torch.Tensor, keypoints: torch.Tensor,
                 confidence: torch.Tensor, K: torch.Tensor | None = None,
                 unit_px: float = 2.0, solve_rotation: bool = False) -> None:
        self.regressor = regressor
        self.keypoints = keypoints
        self.confidence = confidence.to(keypoints)
        self.K = K
        self.unit = unit_px
        self.solve_rotation = solve_rotation
        self.rotation: torch.Tensor | None = None  # [B, 3, 3]
        # the last camera solved (detached): translation [B, 3] with K, else (scale, shift)
        self.camera: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
        self.hold_camera = False

    def _inputs(self, b: int, repeat: int = 1):
        """Keypoints, confidences and K for a batch of b, each row repeated ``repeat`` times."""
        out = [_expand(x, b) for x in (self.keypoints, self.confidence, self.K)]
        return [None if x is None else x.repeat_interleave(repeat, 0) for x in out]

    @staticmethod
    def _camera(joints: torch.Tensor, kp: torch.Tensor, conf: torch.Tensor,
                K: torch.Tensor | None):
        """Projected joints [B, J, 2] and the camera solved in closed form: translation [B, 3]
        with K, else (scale [B], 2D translation [B, 2])."""
        if K is not None:
            t = solve_translation(joints, kp, conf, K)
            # a wild early prediction may solve to behind the camera: keep it in front
            camera = torch.cat([t[:, :2], t[:, 2:].clamp_min(MIN_DEPTH)], 1)
        else:
            camera = solve_weak_perspective(joints[..., :2], kp, conf)
        return ProjectionOperator._apply_camera(joints, camera, K), camera

    @staticmethod
    def _apply_camera(joints: torch.Tensor, camera, K: torch.Tensor | None) -> torch.Tensor:
        """Joints [B, J, 3] in pixels [B, J, 2] through a camera from `_camera`."""
        if K is not None:
            return project(joints + camera[:, None], K)
        s, t2 = camera
        return s[:, None, None] * joints[..., :2] + t2[:, None]

    def _project(self, joints: torch.Tensor):
        kp, conf, K = self._inputs(joints.shape[0])
        return self._camera(joints, kp, conf, K)

    def fit_rotation(self, joints: torch.Tensor, iters: int | None = None) -> torch.Tensor:
        """Rotation [B, 3, 3] of wrist-relative joints [B, J, 3] that best fits the keypoints:
        Levenberg-Marquardt on a left perturbation exp([d]) R, Jacobian by finite differences,
        from 10 starts (identity, quarter and half turns) or from the previous fit. After
        `PRUNE_AFTER` iterations only each sample's best start goes on, and a lone start stops
        once its steps fall below `STEP_TOL` radians."""
        from hhmr.hand.rotations import axis_angle_to_matrix

        b = joints.shape[0]
        joints = joints.detach()
        if self.rotation is None:
            starts = axis_angle_to_matrix(_rotation_starts(joints.device, joints.dtype))
            rot = starts[None].expand(b, -1, 3, 3).reshape(-1, 3, 3)
        else:
            rot = self.rotation.detach()
        iters = iters or (15 if self.rotation is None else 4)
        eps = 1e-3
        perturb = axis_angle_to_matrix(torch.cat([torch.zeros(1, 3), eps * torch.eye(3)]).to(
            joints))  # [4, 3, 3]: the point and three small turns

        def residuals(r: torch.Tensor, j: torch.Tensor, kp_, conf_, K_) -> torch.Tensor:
            projected, _ = self._camera(j @ r.transpose(1, 2), kp_, conf_, K_)
            return (conf_[..., None].sqrt() * (projected - kp_)).flatten(1)

        def batch(s: int) -> tuple:
            """Joints and inputs for s starts per sample, and for 4 trials of each."""
            rep = joints.repeat_interleave(s, 0)  # [M, J, 3]
            return (rep, self._inputs(b, s), rep.repeat_interleave(4, 0),
                    self._inputs(b, 4 * s))

        def best_start(rot: torch.Tensor, rep: torch.Tensor, inputs: list, s: int
                       ) -> torch.Tensor:
            """Index of each sample's best start among its s rows of rot."""
            err = residuals(rot, rep, *inputs).square().sum(1)
            return err.reshape(b, s).argmin(1) + torch.arange(b, device=joints.device) * s

        s = rot.shape[0] // b
        rep, inputs, rep4, inputs4 = batch(s)
        lam = torch.full((rot.shape[0], 1, 1), 1e-3, dtype=joints.dtype, device=joints.device)
        eye = torch.eye(3, dtype=joints.dtype, device=joints.device)
        with torch.no_grad():
            for it in range(iters):
                if s > 1 and it == PRUNE_AFTER:
                    keep = best_start(rot, rep, inputs, s)
                    rot, lam, s = rot[keep], lam[keep], 1
                    rep, inputs, rep4, inputs4 = batch(s)
                trial = (perturb[None] @ rot[:, None]).reshape(-1, 3, 3)  # [4M, 3, 3]
                res = residuals(trial, rep4, *inputs4).reshape(rot.shape[0], 4, -1)
                r0 = res[:, 0]
                jac = (res[:, 1:] - r0[:, None]) / eps  # [M, 3, 2J] (transposed Jacobian)
                jtj = jac @ jac.transpose(1, 2)
                step = torch.linalg.solve(jtj + lam * (jtj * eye + 1e-6 * eye),
                                          -(jac @ r0[..., None]))[..., 0]
                if s == 1 and float(step.norm(dim=-1).max()) < STEP_TOL:
                    break
                cand = axis_angle_to_matrix(step) @ rot
                better = residuals(cand, rep, *inputs).square().sum(1) < r0.square().sum(1)
                rot = torch.where(better[:, None, None], cand, rot)
                lam = torch.where(better[:, None, None], lam * 0.3, lam * 10).clamp(1e-7, 1e7)
            self.rotation = rot[best_start(rot, rep, inputs, s)] if s > 1 else rot
        return self.rotation

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the last fitted rotation (about the wrist, the origin) to points [B, N, 3]."""
        if self.rotation is None:
            return x
        return x @ self.rotation.transpose(1, 2)

    def solve(self, x0: torch.Tensor):
        """Projected regressed joints of meshes x0 and the solved camera (see `_camera`)."""
        return self.solve_joints(self.regressor @ x0)

    def solve_joints(self, joints: torch.Tensor):
        """`solve` from regressed joints [B, 21, 3]."""
        held = self.hold_camera and self.camera is not None
        if self.solve_rotation:
            if not held:
                self.fit_rotation(joints)
            joints = self.rotate(joints)
        if not held:
            projected, camera = self._project(joints)
            self.camera = camera.detach() if self.K is not None else \
                tuple(c.detach() for c in camera)
            return projected, camera
        K = None if self.K is None else _expand(self.K, joints.shape[0])
        return self._apply_camera(joints, self.camera, K), self.camera

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        return self.joint_loss(self.regressor @ x0)

    def joint_loss(self, joints: torch.Tensor) -> torch.Tensor:
        """The loss of regressed joints [B, 21, 3] (metres): it reads the mesh only there."""
        b = joints.shape[0]
        projected, _ = self.solve_joints(joints)
        kp, conf, _ = self._inputs(b)
        return (conf[..., None] * (projected - kp).square()).sum((1, 2)) / self.unit ** 2

    def held_loss_and_grad(self, joints: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`joint_loss` [B] and its gradient [B, 21, 3] in closed form while the perspective
        camera is held (x0 guidance's repeated steps: no autograd graph, the same values);
        None when it is not held or there is no K."""
        if not (self.hold_camera and self.camera is not None and self.K is not None):
            return None
        b = joints.shape[0]
        kp, conf, K = self._inputs(b)
        rotation = self.rotation if self.solve_rotation else None  # as solve_joints reads it
        p = (self.rotate(joints) if self.solve_rotation else joints) \
            + self.camera[:, None]  # camera frame [B, J, 3]
        q = p @ K.transpose(1, 2)
        z = q[..., 2:].clamp_min(1e-6)
        err = q[..., :2] / z - kp
        c = conf[..., None] / self.unit ** 2
        loss = (c * err.square()).sum((1, 2))
        # d/dq of sum c err^2: 2 c err / z for q_x, q_y; minus their sum times q_xy / z for
        # q_z (zero where the depth is clamped)
        g_xy = 2 * c * err / z
        g_z = -(g_xy * q[..., :2]).sum(-1, keepdim=True) / z * (q[..., 2:] > 1e-6)
        grad = torch.cat([g_xy, g_z], -1) @ K  # dq/dp = K
        if rotation is not None:
            grad = grad @ rotation  # p = R j + t
        return loss, grad

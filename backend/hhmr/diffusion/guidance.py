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
        b = x0.shape[0]
        joints = self.regressor @ x0
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
    at each call (a small multi-start search, warm-started from the previous call), so
    guidance shapes the articulation rather than bending the hand towards a wrong
    orientation; `rotation` holds the last one. The loss is in units of `unit_px` pixels.
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
        self.rotation: torch.Tensor | None = None  # [B, 3] axis-angle

    def _project(self, joints: torch.Tensor):
        """Projected joints [B, J, 2] and the camera solved in closed form: translation [B, 3]
        with K, else (scale [B], 2D translation [B, 2])."""
        b = joints.shape[0]
        kp, conf = _expand(self.keypoints, b), _expand(self.confidence, b)
        if self.K is not None:
            K = _expand(self.K, b)
            t = solve_translation(joints, kp, conf, K)
            # a wild early prediction may solve to behind the camera: keep it in front
            t = torch.cat([t[:, :2], t[:, 2:].clamp_min(MIN_DEPTH)], 1)
            return project(joints + t[:, None], K), t
        s, t2 = solve_weak_perspective(joints[..., :2], kp, conf)
        return s[:, None, None] * joints[..., :2] + t2[:, None], (s, t2)

    def _reprojection(self, joints: torch.Tensor) -> torch.Tensor:
        """Confidence-weighted squared pixel error [B] of joints under the solved camera."""
        b = joints.shape[0]
        kp, conf = _expand(self.keypoints, b), _expand(self.confidence, b)
        return (conf[..., None] * (self._project(joints)[0] - kp).square()).sum((1, 2))

    def fit_rotation(self, joints: torch.Tensor, iters: int | None = None) -> torch.Tensor:
        """Rotation (axis-angle [B, 3]) of wrist-relative joints that best fits the keypoints."""
        from hhmr.hand.rotations import axis_angle_to_matrix

        b = joints.shape[0]
        joints = joints.detach()
        starts = _rotation_starts(joints.device, joints.dtype) if self.rotation is None \
            else self.rotation[:, None].detach()  # [S, 3] or [B, 1, 3]
        s = starts.shape[-2]
        iters = iters or (80 if self.rotation is None else 20)
        aa = starts.expand(b, s, 3).reshape(b * s, 3).clone().requires_grad_(True)
        rep = joints.repeat_interleave(s, 0)
        saved = (self.keypoints, self.confidence, self.K)
        self.keypoints, self.confidence = (_expand(x, b).repeat_interleave(s, 0)
                                           for x in saved[:2])
        if self.K is not None:
            self.K = _expand(self.K, b).repeat_interleave(s, 0)
        try:
            opt = torch.optim.Adam([aa], lr=0.1)
            with torch.enable_grad():
                for i in range(iters):
                    if i == 2 * iters // 3:
                        opt.param_groups[0]["lr"] = 0.02
                    opt.zero_grad()
                    rot = axis_angle_to_matrix(aa)
                    self._reprojection(rep @ rot.transpose(1, 2)).sum().backward()
                    opt.step()
                with torch.no_grad():
                    err = self._reprojection(rep @ axis_angle_to_matrix(aa).transpose(1, 2))
        finally:
            self.keypoints, self.confidence, self.K = saved
        best = err.reshape(b, s).argmin(1) + torch.arange(b, device=joints.device) * s
        self.rotation = aa.detach()[best]
        return self.rotation

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the last fitted rotation (about the wrist, the origin) to points [B, N, 3]."""
        from hhmr.hand.rotations import axis_angle_to_matrix

        if self.rotation is None:
            return x
        return x @ axis_angle_to_matrix(self.rotation).transpose(1, 2)

    def solve(self, x0: torch.Tensor):
        """Projected regressed joints of meshes x0 and the solved camera (see `_project`)."""
        joints = self.regressor @ x0
        if self.solve_rotation:
            self.fit_rotation(joints)
            joints = self.rotate(joints)
        return self._project(joints)

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        b = x0.shape[0]
        projected, _ = self.solve(x0)
        kp, conf = _expand(self.keypoints, b), _expand(self.confidence, b)
        return (conf[..., None] * (projected - kp).square()).sum((1, 2)) / self.unit ** 2


class CombinedOperator:
    """Sum of several operators' losses."""

    def __init__(self, *ops: GuidanceOperator) -> None:
        self.ops = ops

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        return sum(op.loss(x0) for op in self.ops)

"""Anatomical joint frames and limits shared by every hand model.

Each finger joint j has a frame F_j (columns: flexion axis, abduction axis, twist axis) built
from the rest-pose skeleton: twist runs along the bone to the child joint, abduction is the
palm normal (back of the hand) made orthogonal to it, flexion = abduction x twist, so that a
positive flexion curls the finger towards the palm. A pose is stored as axis-angle in the
model frame; its anatomical angles are the components of the rotation vector in F_j:
``anat = F_j^T aa`` (flexion, abduction, twist). Positive abduction turns the finger towards
the thumb side. The thumb's frames are turned about its own axis so that its flexion sweeps
the thumb across the palm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hhmr.hand.topology import FINGERS, NUM_JOINTS, PARENTS

# Thumb frame roll about its own axis (degrees): the thumb nail faces sideways, not up.
THUMB_ROLL_DEG = (-70.0, -60.0, -60.0)

# (flexion, abduction, twist) limits in degrees, per joint of each finger (lower, upper).
_FINGER_LIMITS = {
    "mcp": ((-25.0, -15.0, -10.0), (90.0, 15.0, 10.0)),
    "pip": ((-5.0, -5.0, -5.0), (105.0, 5.0, 5.0)),
    "dip": ((-10.0, -5.0, -5.0), (75.0, 5.0, 5.0)),
}
_THUMB_LIMITS = {
    "cmc": ((-25.0, -20.0, -25.0), (55.0, 50.0, 35.0)),
    "mcp": ((-15.0, -10.0, -10.0), (60.0, 10.0, 10.0)),
    "ip": ((-20.0, -5.0, -5.0), (85.0, 5.0, 5.0)),
}


def default_limits_deg() -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper anatomical limits [15, 3] in degrees, kinematic order (no wrist)."""
    lower, upper = [], []
    for f in FINGERS:
        table = _THUMB_LIMITS if f == "thumb" else _FINGER_LIMITS
        for lo, hi in table.values():
            lower.append(lo)
            upper.append(hi)
    return torch.tensor(lower), torch.tensor(upper)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)


def _rotate_about(v: torch.Tensor, axis: torch.Tensor, deg: float) -> torch.Tensor:
    """Rodrigues rotation of vector v about unit axis by deg degrees."""
    a = math.radians(deg)
    return (v * math.cos(a) + torch.linalg.cross(axis, v) * math.sin(a)
            + axis * (axis @ v) * (1 - math.cos(a)))


def anatomical_frames(rest_joints: torch.Tensor, rest_tips: torch.Tensor) -> torch.Tensor:
    """Frames [16, 3, 3] (columns: flexion, abduction, twist axes) from rest joints and tips.

    The wrist's frame is the identity. Works for any right hand whose fingers are roughly
    straight at rest, whatever its global orientation.
    """
    j = rest_joints.double()
    tips = rest_tips.double()
    index_mcp, little_mcp, middle_mcp = j[4], j[13], j[7]
    # back-of-hand normal: for a right hand, (index - wrist) x (little - wrist) points dorsally
    palm_normal = _unit(torch.linalg.cross(index_mcp - j[0], little_mcp - j[0]))
    if torch.dot(torch.linalg.cross(middle_mcp - j[0], palm_normal), j[1] - j[0]) > 0:
        palm_normal = -palm_normal  # thumb must lie on the side of normal x (middle - wrist)
    frames = torch.eye(3, dtype=torch.float64).repeat(NUM_JOINTS, 1, 1)
    for joint in range(1, NUM_JOINTS):
        f, k = (joint - 1) // 3, (joint - 1) % 3
        child = tips[f] if k == 2 else j[joint + 1]
        twist = _unit(child - j[joint])
        normal = palm_normal
        if f == 0:
            normal = _rotate_about(palm_normal, twist, THUMB_ROLL_DEG[k])
        abduction = _unit(normal - twist * (normal @ twist))
        flexion = torch.linalg.cross(abduction, twist)
        frames[joint] = torch.stack([flexion, abduction, twist], dim=1)
    return frames.to(rest_joints.dtype)


@dataclass
class JointLimits:
    """Anatomical joint limits: frames [16, 3, 3] and bounds [15, 3] in radians."""

    frames: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor

    def to_anatomical(self, hand_pose: torch.Tensor) -> torch.Tensor:
        """Axis-angle hand pose [..., 15, 3] -> (flexion, abduction, twist) [..., 15, 3]."""
        return torch.einsum("jki,...jk->...ji", self.frames[1:].to(hand_pose), hand_pose)

    def from_anatomical(self, angles: torch.Tensor) -> torch.Tensor:
        """(flexion, abduction, twist) [..., 15, 3] -> axis-angle hand pose [..., 15, 3]."""
        return torch.einsum("jik,...jk->...ji", self.frames[1:].to(angles), angles)

    def clamp(self, angles: torch.Tensor) -> torch.Tensor:
        """Clamp anatomical angles [..., 15, 3] into the limits."""
        return torch.maximum(torch.minimum(angles, self.upper.to(angles)), self.lower.to(angles))

    def violation(self, hand_pose: torch.Tensor) -> torch.Tensor:
        """Per-joint amount (radians, >= 0) by which an axis-angle pose leaves the limits."""
        a = self.to_anatomical(hand_pose)
        return (self.lower.to(a) - a).clamp_min(0) + (a - self.upper.to(a)).clamp_min(0)

    def contains(self, hand_pose: torch.Tensor, tol: float = 1e-4) -> torch.Tensor:
        """Whether each pose [..., 15, 3] lies inside the limits (bool [...])."""
        return (self.violation(hand_pose) <= tol).flatten(-2).all(-1)


def build_limits(rest_joints: torch.Tensor, rest_tips: torch.Tensor) -> JointLimits:
    lo, hi = default_limits_deg()
    return JointLimits(anatomical_frames(rest_joints, rest_tips), lo.deg2rad(), hi.deg2rad())


assert len(PARENTS) == NUM_JOINTS

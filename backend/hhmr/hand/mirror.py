"""Left hands as mirror images of right-hand models (reflection x -> -x)."""

from __future__ import annotations

import torch
from torch import nn

from hhmr.hand.base import HandModel, HandOutput
from hhmr.hand.limits import JointLimits

MIRROR = (-1.0, 1.0, 1.0)


def mirror_points(x: torch.Tensor) -> torch.Tensor:
    """Reflect points [..., 3] through the x = 0 plane."""
    return x * x.new_tensor(MIRROR)


def mirror_axis_angle(aa: torch.Tensor) -> torch.Tensor:
    """The rotation M R M (M = diag(-1, 1, 1)) as axis-angle: (x, y, z) -> (x, -y, -z)."""
    return aa * aa.new_tensor((1.0, -1.0, -1.0))


def mirror_faces(faces: torch.Tensor) -> torch.Tensor:
    """Reverse the winding so normals still point outwards after a reflection."""
    return faces[:, [0, 2, 1]]


class MirroredHand(nn.Module):
    """A left hand driven through a right-hand model.

    Inputs and outputs live in the left hand's (mirrored) world: a left-hand pose is the
    mirror of the right-hand pose that gives the mirror image, so the same anatomical angles
    (through `joint_limits`) mean the same motion on both sides.
    """

    side = "left"

    def __init__(self, right: HandModel) -> None:
        super().__init__()
        self.right = right
        self.name = f"{right.name}_left"
        self.register_buffer("faces", mirror_faces(right.faces))
        self.parents = right.parents
        self.keypoint_names = right.keypoint_names
        self.shape_names = right.shape_names
        lim = right.joint_limits
        # a left pose aa_L drives the right model with -M aa_L (rotation vectors are
        # pseudovectors), so F_left = -M F_right gives both the same anatomical angles
        flip = -torch.diag(lim.frames.new_tensor(MIRROR))
        self.joint_limits = JointLimits(flip @ lim.frames, lim.lower, lim.upper)

    @property
    def num_vertices(self) -> int:
        return self.right.num_vertices

    @property
    def num_betas(self) -> int:
        return self.right.num_betas

    @property
    def v_template(self) -> torch.Tensor:
        return mirror_points(self.right.v_template)

    @property
    def keypoint_regressor(self) -> torch.Tensor:
        return self.right.keypoint_regressor

    def forward(self, global_orient=None, hand_pose=None, betas=None, transl=None) -> HandOutput:
        out = self.right(
            None if global_orient is None else mirror_axis_angle(global_orient),
            None if hand_pose is None else mirror_axis_angle(hand_pose),
            betas,
            None if transl is None else mirror_points(transl),
        )
        return HandOutput(
            vertices=mirror_points(out.vertices),
            joints=mirror_points(out.joints),
            full_pose=mirror_axis_angle(out.full_pose),
        )

    def regress_keypoints(self, vertices: torch.Tensor) -> torch.Tensor:
        return self.right.keypoint_regressor @ vertices

"""The hand-model interface shared by the open default hand and MANO."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hhmr.hand.lbs import blend_shapes, pose_hand
from hhmr.hand.limits import JointLimits, build_limits
from hhmr.hand.topology import (
    JOINT_TO_KEYPOINT,
    KEYPOINT_NAMES,
    NUM_JOINTS,
    NUM_KEYPOINTS,
    PARENTS,
    TIP_KEYPOINTS,
)


@dataclass
class HandOutput:
    """Named outputs of a hand model's forward pass."""

    vertices: torch.Tensor  # [B, V, 3]
    joints: torch.Tensor  # [B, 21, 3] keypoints, OpenPose order
    full_pose: torch.Tensor  # [B, 16, 3] axis-angle, wrist first


class HandModel(nn.Module):
    """A right hand: template, shape directions, skinning weights and keypoint regressor.

    `forward(global_orient [B,3], hand_pose [B,15,3], betas [B,S], transl [B,3])` returns
    `HandOutput(vertices [B,V,3], joints [B,21,3])`. Rotations are axis-angle, relative to the
    parent joint, about rest-pose-aligned axes (as MANO's with flat_hand_mean). Batched and
    differentiable. Subclasses only load data.
    """

    name = "hand"
    side = "right"

    def __init__(
        self,
        v_template: torch.Tensor,
        faces: torch.Tensor,
        weights: torch.Tensor,
        shapedirs: torch.Tensor,
        keypoint_regressor: torch.Tensor,
        tip_vertex_ids: torch.Tensor,
        shape_names: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        v = v_template.shape[0]
        if faces.ndim != 2 or faces.shape[1] != 3 or int(faces.max()) >= v:
            raise ValueError("faces must be [F, 3] indices into the template")
        if weights.shape != (v, NUM_JOINTS):
            raise ValueError(f"weights must be [{v}, {NUM_JOINTS}], got {tuple(weights.shape)}")
        if keypoint_regressor.shape != (NUM_KEYPOINTS, v):
            raise ValueError(f"keypoint regressor must be [21, {v}]")
        self.register_buffer("v_template", v_template.float())
        self.register_buffer("faces", faces.long())
        self.register_buffer("weights", weights.float())
        self.register_buffer("shapedirs", shapedirs.float())
        self.register_buffer("keypoint_regressor", keypoint_regressor.float())
        self.register_buffer("tip_vertex_ids", tip_vertex_ids.long())
        self.shape_names = tuple(shape_names) or tuple(
            f"beta_{i}" for i in range(shapedirs.shape[-1])
        )
        self.parents = list(PARENTS)
        self.keypoint_names = KEYPOINT_NAMES
        rest = self.v_template[None]
        rest_kp = (self.keypoint_regressor @ rest)[0]
        self.joint_limits: JointLimits = build_limits(
            rest_kp[list(JOINT_TO_KEYPOINT)], self.v_template[self.tip_vertex_ids]
        )

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[-1]

    def rig_digest(self) -> str:
        """A short fingerprint of the template, faces, shape directions, skinning weights,
        keypoint regressor and fingertips: weights trained on one rig are wrong on another with
        the same vertices."""
        import hashlib

        h = hashlib.sha256()
        for t in (self.v_template, self.faces, self.shapedirs, self.weights,
                  self.keypoint_regressor, self.tip_vertex_ids):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def joint_regressor16(self) -> torch.Tensor:
        """Rows of the keypoint regressor for the 16 kinematic joints [16, V]."""
        return self.keypoint_regressor[list(JOINT_TO_KEYPOINT)]

    def shaped_template(self, betas: torch.Tensor) -> torch.Tensor:
        """Rest vertices [B, V, 3] for shape coefficients [B, S]."""
        return self.v_template[None] + blend_shapes(betas, self.shapedirs)

    def forward(
        self,
        global_orient: torch.Tensor | None = None,
        hand_pose: torch.Tensor | None = None,
        betas: torch.Tensor | None = None,
        transl: torch.Tensor | None = None,
    ) -> HandOutput:
        b = _batch_size(global_orient, hand_pose, betas, transl)
        kw = {"dtype": self.v_template.dtype, "device": self.v_template.device}
        global_orient = torch.zeros(b, 3, **kw) if global_orient is None else global_orient
        hand_pose = torch.zeros(b, 15, 3, **kw) if hand_pose is None else hand_pose
        betas = torch.zeros(b, self.num_betas, **kw) if betas is None else betas
        if hand_pose.ndim == 2:
            hand_pose = hand_pose.reshape(b, 15, 3)
        if betas.shape[-1] > self.num_betas:
            raise ValueError(f"{self.name} has {self.num_betas} shape coefficients")
        full_pose = torch.cat([global_orient[:, None], hand_pose], dim=1)
        v_shaped = self.shaped_template(betas)
        rest_joints = self.joint_regressor16() @ v_shaped
        verts, joints16 = pose_hand(v_shaped, rest_joints, full_pose, self.weights, self.parents)
        keypoints = verts.new_zeros(b, NUM_KEYPOINTS, 3)
        keypoints[:, list(JOINT_TO_KEYPOINT)] = joints16
        keypoints[:, list(TIP_KEYPOINTS)] = verts[:, self.tip_vertex_ids]
        if transl is not None:
            verts = verts + transl[:, None]
            keypoints = keypoints + transl[:, None]
        return HandOutput(vertices=verts, joints=keypoints, full_pose=full_pose)

    def regress_keypoints(self, vertices: torch.Tensor) -> torch.Tensor:
        """Keypoints [B, 21, 3] regressed from any (posed) vertices [B, V, 3]."""
        return self.keypoint_regressor @ vertices


def _batch_size(*tensors: torch.Tensor | None) -> int:
    sizes = {t.shape[0] for t in tensors if t is not None}
    if len(sizes) > 1:
        raise ValueError(f"inconsistent batch sizes {sorted(sizes)}")
    return sizes.pop() if sizes else 1

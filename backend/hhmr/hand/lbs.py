"""Linear blend skinning with a MANO-style kinematic chain (no pose correctives)."""

from __future__ import annotations

import torch

from hhmr.hand.rotations import axis_angle_to_matrix


def blend_shapes(betas: torch.Tensor, shapedirs: torch.Tensor) -> torch.Tensor:
    """Shape offsets [B, V, 3] from coefficients [B, S] and directions [V, 3, S]."""
    return torch.einsum("bs,vcs->bvc", betas, shapedirs[..., : betas.shape[1]])


def forward_kinematics(
    rotations: torch.Tensor, joints: torch.Tensor, parents: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain local rotations [B, J, 3, 3] about rest joints [B, J, 3].

    Returns posed joint positions [B, J, 3] and the skinning transforms [B, J, 4, 4] that
    map rest-pose points to posed points for each joint.
    """
    b, n = joints.shape[:2]
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = torch.zeros(b, n, 4, 4, dtype=joints.dtype, device=joints.device)
    local[..., :3, :3] = rotations
    local[..., :3, 3] = rel
    local[..., 3, 3] = 1
    chain = [local[:, 0]]
    for j in range(1, n):
        chain.append(chain[parents[j]] @ local[:, j])
    world = torch.stack(chain, dim=1)
    posed_joints = world[..., :3, 3]
    skin = world.clone()
    skin[..., :3, 3] = posed_joints - (world[..., :3, :3] @ joints[..., None])[..., 0]
    return posed_joints, skin


def linear_blend_skinning(
    vertices: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor
) -> torch.Tensor:
    """Skin rest vertices [B, V, 3] with weights [V, J] and transforms [B, J, 4, 4]."""
    t = torch.einsum("vj,bjkl->bvkl", weights, transforms)
    return (t[..., :3, :3] @ vertices[..., None])[..., 0] + t[..., :3, 3]


def pose_hand(
    v_shaped: torch.Tensor,
    rest_joints: torch.Tensor,
    full_pose: torch.Tensor,
    weights: torch.Tensor,
    parents: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose shaped vertices with axis-angle `full_pose` [B, J, 3]; returns (vertices, joints)."""
    rot = axis_angle_to_matrix(full_pose)
    joints, transforms = forward_kinematics(rot, rest_joints, parents)
    return linear_blend_skinning(v_shaped, weights, transforms), joints

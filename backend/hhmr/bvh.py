"""BVH (Biovision hierarchy, the motion-capture interchange format) of a clip's hand animation.

The 16-joint rig with the clip's rest skeleton, root position and ZXY Euler rotations per
frame, finger tips as end sites; Y up, metres. The camera frame (x right, y down, z forward)
is turned half a turn about x into it (x right, y up, z towards the camera), so a hand facing
the camera faces +z.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from hhmr.hand.topology import JOINT_NAMES, JOINT_TO_KEYPOINT, PARENTS, TIP_KEYPOINTS

CAMERA_TO_Y_UP = np.diag([1.0, -1.0, -1.0])


def bvh_text(rest_keypoints: np.ndarray, rotations: np.ndarray, root: np.ndarray, fps: float
             ) -> str:
    """BVH of a 16-joint hand: `rest_keypoints` [21, 3] (the shaped rest hand's keypoints,
    camera axes), per frame the joints' local rotations [T, 16, 3] (axis-angle, the model's
    convention: parent-relative, about the rest axes) and the root's position [T, 3] (the
    posed wrist)."""
    c = CAMERA_TO_Y_UP
    rest = rest_keypoints @ c.T
    joints = rest[list(JOINT_TO_KEYPOINT)]
    children: dict[int, list[int]] = {j: [] for j in range(len(PARENTS))}
    for j, p in enumerate(PARENTS):
        if p >= 0:
            children[p].append(j)
    lines = ["HIERARCHY"]

    def write(j: int, depth: int) -> None:
        pad = "  " * depth
        offset = joints[j] - joints[PARENTS[j]] if PARENTS[j] >= 0 else np.zeros(3)
        lines.append(f"{pad}{'ROOT' if depth == 0 else 'JOINT'} {JOINT_NAMES[j]}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}  OFFSET {offset[0]:.6f} {offset[1]:.6f} {offset[2]:.6f}")
        lines.append(f"{pad}  CHANNELS " + ("6 Xposition Yposition Zposition " if depth == 0
                                             else "3 ") + "Zrotation Xrotation Yrotation")
        for k in children[j]:
            write(k, depth + 1)
        if not children[j]:  # the finger's tip
            finger = (j - 1) // 3
            tip = rest[TIP_KEYPOINTS[finger]] - joints[j]
            lines.append(f"{pad}  End Site")
            lines.append(f"{pad}  {{")
            lines.append(f"{pad}    OFFSET {tip[0]:.6f} {tip[1]:.6f} {tip[2]:.6f}")
            lines.append(f"{pad}  }}")
        lines.append(f"{pad}}}")

    write(0, 0)
    t = len(rotations)
    order = []  # the joints in the order their channels were written (depth first)

    def visit(j: int) -> None:
        order.append(j)
        for k in children[j]:
            visit(k)
    visit(0)
    mats = Rotation.from_rotvec(np.asarray(rotations, np.float64).reshape(-1, 3)).as_matrix()
    mats = c @ mats @ c  # the same rotations seen in the Y-up frame
    euler = Rotation.from_matrix(mats).as_euler("ZXY", degrees=True).reshape(t, -1, 3)
    pos = np.asarray(root, np.float64) @ c.T
    lines += ["MOTION", f"Frames: {t}", f"Frame Time: {1.0 / fps:.6f}"]
    for f in range(t):
        vals = [*pos[f]] + [v for j in order for v in euler[f, j]]
        lines.append(" ".join(f"{v:.6f}" for v in vals))
    return "\n".join(lines) + "\n"


def write_bvh(path: str | Path, result, hand) -> Path:
    """A `hhmr.video.VideoResult` as BVH; `hand` the pipeline's (right) hand model, mirrored
    for a left hand's rest skeleton."""
    import torch

    betas = torch.as_tensor(result.betas, dtype=torch.float32)[None]
    rest = hand(betas=betas).joints[0].detach().cpu().numpy()  # posed at zero: the rest hand
    if result.handedness == "left":
        rest = rest * np.array([-1.0, 1.0, 1.0])
    rotations = np.concatenate([result.global_orient[:, None], result.hand_pose], 1)
    root = result.joints[:, 0]
    path = Path(path)
    path.write_text(bvh_text(rest, rotations, root, result.fps))
    return path

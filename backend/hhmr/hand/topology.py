"""The shared hand skeleton: 16 kinematic joints, 21 keypoints, their names and order.

Kinematic joints (as MANO's 16, but fingers in OpenPose order):
0 wrist; then per finger (thumb, index, middle, ring, little) three joints:
thumb CMC, MCP, IP; index..little MCP, PIP, DIP.

Keypoints (OpenPose / FreiHAND / MediaPipe order): 0 wrist; per finger its three joints
then its tip: 1-4 thumb CMC, MCP, IP, tip; 5-8 index MCP, PIP, DIP, tip; ... 17-20 little.
"""

from __future__ import annotations

FINGERS = ("thumb", "index", "middle", "ring", "little")
NUM_JOINTS = 16
NUM_KEYPOINTS = 21

JOINT_NAMES: tuple[str, ...] = ("wrist",) + tuple(
    f"{f}_{j}"
    for f in FINGERS
    for j in (("cmc", "mcp", "ip") if f == "thumb" else ("mcp", "pip", "dip"))
)
KEYPOINT_NAMES: tuple[str, ...] = ("wrist",) + tuple(
    name
    for f in range(5)
    for name in (*JOINT_NAMES[1 + 3 * f : 4 + 3 * f], f"{FINGERS[f]}_tip")
)
# parent of each kinematic joint: the wrist for each finger's first joint, else the previous one
PARENTS: tuple[int, ...] = (-1,) + tuple(0 if k == 0 else 1 + 3 * f + k - 1
                                         for f in range(5) for k in range(3))
# keypoint index of each kinematic joint, and of each fingertip
JOINT_TO_KEYPOINT: tuple[int, ...] = (0,) + tuple(1 + 4 * f + k for f in range(5) for k in range(3))
TIP_KEYPOINTS: tuple[int, ...] = tuple(4 + 4 * f for f in range(5))
# keypoint parents, for drawing skeletons
KEYPOINT_PARENTS: tuple[int, ...] = (-1,) + tuple(
    0 if k == 0 else 1 + 4 * f + k - 1 for f in range(5) for k in range(4)
)


def finger_of_joint(j: int) -> int:
    """Finger index (0 thumb .. 4 little) of kinematic joint j >= 1."""
    return (j - 1) // 3

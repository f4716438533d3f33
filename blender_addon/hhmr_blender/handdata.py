"""The backend's hand (from ``info``) in Blender terms: mesh, bones, keypoints; no bpy.

Frames: the backend's hand frame is used as the object's local frame (metres; wrist at the
origin, fingers +Y, back of the hand +Z). Reconstructions come in the OpenCV camera frame
(x right, y down, z forward) and are turned into Blender's (x right, y forward, z up).
Left hands are the right hand mirrored in x, with the face winding reversed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# camera (OpenCV) -> Blender: x stays, depth becomes +y, image-down becomes -z (a rotation)
CAMERA_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
MIRROR_X = np.array([-1.0, 1.0, 1.0])
PALM = ("wrist", "index_mcp", "middle_mcp", "ring_mcp", "pinky_mcp")  # rigid part of a hand


@dataclass(frozen=True)
class HandTopology:
    """The hand mesh and skeleton a backend serves (``info()["topology"]``)."""

    template: np.ndarray  # float32 [V, 3], right hand, rest pose
    faces: np.ndarray  # int32 [F, 3]
    parents: tuple[int, ...]  # [J] kinematic parent of each joint, -1 for the root
    skin_weights: np.ndarray  # float32 [V, J]
    rest_joints: np.ndarray  # float32 [J, 3]
    keypoint_regressor: np.ndarray  # float32 [21, V]
    keypoint_names: tuple[str, ...]  # 21 names; fingertips end in "_tip"
    shapedirs: np.ndarray | None = None  # float32 [V, 3, S], the shape space (newer backends)

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> HandTopology:
        """Read and check the ``topology`` map of an ``info`` reply; raises ValueError."""
        t = info.get("topology") if isinstance(info, Mapping) else None
        if not isinstance(t, Mapping):
            raise ValueError("the backend's info has no 'topology': upgrade the backend")
        try:
            topo = cls(np.asarray(t["template"], np.float32), np.asarray(t["faces"], np.int32),
                       tuple(int(p) for p in t["parents"]),
                       np.asarray(t["skin_weights"], np.float32),
                       np.asarray(t["rest_joints"], np.float32),
                       np.asarray(t["keypoint_regressor"], np.float32),
                       tuple(str(n) for n in t["keypoint_names"]),
                       np.asarray(t["shapedirs"], np.float32)
                       if t.get("shapedirs") is not None else None)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"bad topology from the backend: {err}") from None
        topo.check()
        return topo

    @property
    def num_vertices(self) -> int:
        return int(self.template.shape[0])

    @property
    def num_joints(self) -> int:
        return len(self.parents)

    def check(self) -> None:
        v, j = self.num_vertices, self.num_joints
        problems = []
        if self.template.shape != (v, 3) or not np.isfinite(self.template).all():
            problems.append("template must be finite [V, 3]")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or self.faces.size == 0 \
                or self.faces.min() < 0 or self.faces.max() >= v:
            problems.append("faces must be [F, 3] indices of vertices")
        if self.skin_weights.shape != (v, j):
            problems.append(f"skin_weights must be [{v}, {j}]")
        if self.rest_joints.shape != (j, 3):
            problems.append(f"rest_joints must be [{j}, 3]")
        if self.keypoint_regressor.shape != (21, v) or len(self.keypoint_names) != 21:
            problems.append("need 21 keypoints")
        if any(not -1 <= p < i for i, p in enumerate(self.parents)) or self.parents[0] != -1:
            problems.append("parents must list earlier joints, the root first")
        if len(self.joint_keypoints) != j:
            problems.append("the non-tip keypoints must be the joints")
        if self.shapedirs is not None and (self.shapedirs.ndim != 3
                                           or self.shapedirs.shape[:2] != (v, 3)):
            problems.append(f"shapedirs must be [{v}, 3, S]")
        if problems:
            raise ValueError("bad topology from the backend: " + "; ".join(problems))

    def rest_keypoints(self, handedness: str = "right") -> np.ndarray:
        """The 21 keypoints of the rest hand of one side [21, 3]."""
        kp = self.keypoint_regressor @ self.template
        return kp * MIRROR_X if handedness == "left" else kp

    def palm(self) -> list[int]:
        """Keypoint indices of the palm (PALM), for aligning hands."""
        return [self.keypoint_names.index(n) for n in PALM if n in self.keypoint_names]

    @property
    def joint_keypoints(self) -> tuple[int, ...]:
        """Keypoint index of each kinematic joint (the keypoints that are not tips)."""
        return tuple(i for i, n in enumerate(self.keypoint_names) if not n.endswith("_tip"))

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(self.keypoint_names[k] for k in self.joint_keypoints)

    def mesh(self, handedness: str = "right") -> tuple[np.ndarray, np.ndarray]:
        """Rest vertices and faces of a right or (mirrored) left hand."""
        if handedness == "left":
            return self.template * MIRROR_X, self.faces[:, ::-1].copy()
        return self.template.copy(), self.faces.copy()

    def shaped(self, betas: np.ndarray | None) -> np.ndarray:
        """The rest vertices [V, 3] of a right hand of shape ``betas`` (the template when
        the backend sent no shape space or no betas)."""
        if betas is None or self.shapedirs is None:
            return self.template.astype(np.float64)
        b = np.asarray(betas, np.float64)[: self.shapedirs.shape[2]]
        return self.template + np.einsum("vcs,s->vc", self.shapedirs[..., : len(b)], b)

    def bones(self, handedness: str = "right", rest: np.ndarray | None = None) -> list[Bone]:
        """One bone per joint: head at the joint, tail at the next keypoint along its finger
        (the fingertip for the last joint); the root's tail is the middle finger's base.
        ``rest``: the right hand's rest vertices [V, 3] (default the template)."""
        joints = self.rest_joints if rest is None else \
            (self.keypoint_regressor @ rest)[list(self.joint_keypoints)]
        kp = self.keypoint_regressor @ (self.template if rest is None else rest)
        names = self.keypoint_names
        children = {p: i for i, p in reversed(list(enumerate(self.parents))) if p >= 0}
        out = []
        for j, k in enumerate(self.joint_keypoints):
            if self.parents[j] < 0:
                base = names.index("middle_mcp") if "middle_mcp" in names else \
                    self.joint_keypoints[children[j]]
                tail = kp[base]
            else:
                tail = kp[k + 1]
            head = joints[j]
            if handedness == "left":
                head, tail = head * MIRROR_X, tail * MIRROR_X
            parent = self.joint_names[self.parents[j]] if self.parents[j] >= 0 else None
            out.append(Bone(names[k], parent, np.asarray(head, float), np.asarray(tail, float)))
        return out

    def keypoints_from_bones(self, heads: Mapping[str, Sequence[float]],
                             tails: Mapping[str, Sequence[float]]) -> np.ndarray:
        """The 21 keypoints of a (posed) rig: joint keypoints at bone heads, each fingertip
        at the tail of the bone before it. ``heads``/``tails`` map bone names to points."""
        out = np.zeros((21, 3))
        names = self.keypoint_names
        for i, name in enumerate(names):
            if name.endswith("_tip"):
                out[i] = tails[names[i - 1]]
            else:
                out[i] = heads[name]
        return out

    def keypoint_mask(self, bones: Sequence[str]) -> np.ndarray:
        """Keypoints that the given bones pin: each bone's head, and the tip of a last bone."""
        names = self.keypoint_names
        mask = np.zeros(21, bool)
        for i, name in enumerate(names):
            mask[i] = (names[i - 1] in bones) if name.endswith("_tip") else name in bones
        return mask


@dataclass(frozen=True)
class Bone:
    name: str
    parent: str | None
    head: np.ndarray
    tail: np.ndarray


def to_backend(points: np.ndarray, handedness: str) -> np.ndarray:
    """Object-local points of a hand to the backend's right-hand frame."""
    p = np.asarray(points, np.float64)
    return (p * MIRROR_X if handedness == "left" else p).astype(np.float32)


def from_backend(points: np.ndarray, handedness: str) -> np.ndarray:
    """Backend right-hand points (any leading shape) to a hand object's local frame."""
    return to_backend(points, handedness)  # mirroring is its own inverse


def camera_to_object(vertices: np.ndarray, joints: np.ndarray, best: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera-frame hypotheses (vertices [n, V, 3], joints [n, 21, 3]) to object-local
    vertices and joints and the object's location, for a camera at the world origin looking
    along +Y: the best hypothesis' wrist is the object's origin, so every hypothesis keeps
    its place relative to the camera."""
    r = CAMERA_TO_BLENDER
    location = r @ np.asarray(joints[best, 0], np.float64)

    def local(points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, np.float64) @ r.T - location).astype(np.float32)

    return local(vertices), local(joints), location


def camera_lens(K: np.ndarray, width: int, height: int, sensor_mm: float = 36.0
                ) -> dict[str, float]:
    """Blender camera settings (lens and sensor in mm, shifts) for pinhole intrinsics, with
    the sensor fitted horizontally and the photo cropped to the frame's width: exact
    whenever the photo is no wider (relative to its height) than the render frame."""
    fx, cx, cy = float(K[0][0]), float(K[0][2]), float(K[1][2])
    return {"lens": fx * sensor_mm / width, "sensor_width": sensor_mm,
            "shift_x": (width / 2 - cx) / width, "shift_y": (cy - height / 2) / width}


def _blend(weights: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Per-vertex blended matrices [V, 4, 4], weights normalised as Blender's armature
    modifier does (a vertex without weights stays where it is)."""
    w = np.asarray(weights, np.float64)
    total = w.sum(1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    blend = np.einsum("vj,jab->vab", w, np.asarray(matrices, np.float64))
    blend[total[:, 0] <= 0] = np.eye(4)
    return blend


def unpose(vertices: np.ndarray, weights: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Invert linear blend skinning: rest positions whose skinned positions are ``vertices``.

    ``vertices`` [..., V, 3]; ``weights`` [V, J]; ``matrices`` [J, 4, 4] (posed @ rest^-1 of
    each bone, in the mesh's frame). Shape keys sit under the armature modifier, so a result in
    posed space is stored unposed and the modifier poses it back exactly."""
    inv = np.linalg.inv(_blend(weights, matrices))
    v = np.asarray(vertices, np.float64)
    out = np.einsum("vab,...vb->...va", inv[:, :3, :3], v) + inv[:, :3, 3]
    return out.astype(np.float32)


def skin(vertices: np.ndarray, weights: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Linear blend skinning of rest ``vertices`` [V, 3] (the inverse of ``unpose``)."""
    blend = _blend(weights, matrices)
    v = np.asarray(vertices, np.float64)
    return (np.einsum("vab,vb->va", blend[:, :3, :3], v) + blend[:, :3, 3]).astype(np.float32)


def palm_frames(joints: np.ndarray, target: np.ndarray, palm: Sequence[int]) -> np.ndarray:
    """Per hand [n, 21, 3], the rigid motion [n, 4, 4] (column vectors) that best puts its
    palm keypoints onto ``target``'s (Kabsch, a rotation, never a reflection)."""
    src = np.asarray(joints, np.float64)[:, palm]
    dst = np.asarray(target, np.float64)[palm]
    mu_s, mu_d = src.mean(1), dst.mean(0)
    u, _, vt = np.linalg.svd(np.swapaxes(src - mu_s[:, None], 1, 2) @ (dst - mu_d))
    d = np.sign(np.linalg.det(u @ vt))
    u[:, :, 2] *= d[:, None]
    rot = np.swapaxes(u @ vt, 1, 2)  # x' = rot x + shift
    frames = np.tile(np.eye(4), (len(src), 1, 1))
    frames[:, :3, :3] = rot
    frames[:, :3, 3] = mu_d - np.einsum("nab,nb->na", rot, mu_s)
    return frames


def move(points: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Points [n, P, 3] moved by per-hand 4x4 matrices [n, 4, 4]."""
    p = np.asarray(points, np.float64)
    f = np.asarray(frames, np.float64)
    return (np.einsum("nab,npb->npa", f[:, :3, :3], p) + f[:, None, :3, 3]).astype(np.float32)


def align_palms(vertices: np.ndarray, joints: np.ndarray, target: np.ndarray,
                palm: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each hand [n, V, 3] (with its keypoints [n, 21, 3]) turned and moved rigidly so that
    its palm keypoints best match ``target``'s (Kabsch): browsing generated hands then keeps
    the wrist in place and the palm facing one way."""
    frames = palm_frames(joints, target, palm)
    return move(vertices, frames), move(joints, frames)


# ---------------------------------------------------------------------------- the solved rig

def axis_angle_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vectors [..., 3] -> matrices [..., 3, 3]."""
    aa = np.asarray(aa, np.float64)
    angle = np.linalg.norm(aa, axis=-1)[..., None, None]
    k = np.zeros((*aa.shape[:-1], 3, 3))
    x, y, z = aa[..., 0], aa[..., 1], aa[..., 2]
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 0] = -z, y, z
    k[..., 1, 2], k[..., 2, 0], k[..., 2, 1] = -x, -y, x
    small = angle < 1e-8
    safe = np.where(small, 1.0, angle)
    a = np.where(small, 1.0 - angle ** 2 / 6, np.sin(safe) / safe)
    b = np.where(small, 0.5 - angle ** 2 / 24, (1 - np.cos(safe)) / safe ** 2)
    return np.eye(3) + a * k + b * (k @ k)


@dataclass
class RigPoses:
    """The solved rig of n hypotheses in the hand object's frame: per joint, the skinning
    transform (rest -> posed) and the rest skeleton of each hypothesis's shape."""

    transforms: np.ndarray  # float64 [n, J, 4, 4]
    heads: np.ndarray  # float64 [n, J, 3] rest bone heads (the shaped hand's joints)
    tails: np.ndarray  # float64 [n, J, 3]

    def take(self, order: np.ndarray) -> RigPoses:
        return RigPoses(self.transforms[order], self.heads[order], self.tails[order])

    def moved(self, frames: np.ndarray) -> RigPoses:
        """The posed side moved by per-hypothesis rigid motions [n, 4, 4] (the rest side
        stays): what aligning or re-framing the hypotheses' vertices does to their rig."""
        return RigPoses(np.asarray(frames, np.float64)[:, None] @ self.transforms, self.heads,
                        self.tails)


def rig_poses(topo: HandTopology, pose: Mapping[str, Any], betas: np.ndarray | None,
              handedness: str, left_pose: bool = False) -> RigPoses:
    """The rig of the backend's solved ``pose`` (global_orient [n, 3], hand_pose [n, 15, 3],
    transl [n, 3]; rotations relative to the parent about the model's axes, lbs.py) and
    ``betas`` [n, S], in the frame ``from_backend`` gives (left hands mirrored).

    ``left_pose``: the pose drives the mirrored model (MirroredHand, a left reconstruction);
    it is turned into the right model's pose first (rotation vectors (x, -y, -z), points x ->
    -x), so both kinds of left hand end up as the right model's transforms conjugated by the
    mirror, which is a proper rigid motion again."""
    g = np.asarray(pose["global_orient"], np.float64)
    hp = np.asarray(pose["hand_pose"], np.float64).reshape(len(g), -1, 3)
    t = np.asarray(pose["transl"], np.float64).reshape(len(g), 3)
    n, nj = len(g), topo.num_joints
    if hp.shape[1] != nj - 1:
        raise ValueError(f"the pose has {hp.shape[1] + 1} joints, the rig {nj}")
    aa = np.concatenate([g[:, None], hp], 1)
    if left_pose:
        aa, t = aa * np.array([1.0, -1.0, -1.0]), t * MIRROR_X
    local = axis_angle_matrix(aa)
    mirror = np.diag([*MIRROR_X, 1.0]) if handedness == "left" else np.eye(4)
    transforms = np.zeros((n, nj, 4, 4))
    heads, tails = np.zeros((n, nj, 3)), np.zeros((n, nj, 3))
    for i in range(n):
        rest = topo.shaped(None if betas is None else np.asarray(betas)[i])
        bones = topo.bones(handedness, rest)
        joints = topo.keypoint_regressor @ rest
        joints = joints[list(topo.joint_keypoints)]
        heads[i] = [b.head for b in bones]
        tails[i] = [b.tail for b in bones]
        world, posed = np.zeros((nj, 3, 3)), np.zeros((nj, 3))
        for j, p in enumerate(topo.parents):  # forward kinematics, as lbs.forward_kinematics
            if p < 0:
                world[j], posed[j] = local[i, j], joints[j]
            else:
                world[j] = world[p] @ local[i, j]
                posed[j] = posed[p] + world[p] @ (joints[j] - joints[p])
        m = np.tile(np.eye(4), (nj, 1, 1))
        m[:, :3, :3] = world
        m[:, :3, 3] = posed - np.einsum("jab,jb->ja", world, joints) + t[i]
        transforms[i] = mirror @ m @ mirror
    return RigPoses(transforms, heads, tails)

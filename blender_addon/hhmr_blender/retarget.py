"""Which bone of another armature each HHMR bone drives (a bone map), and the rotation that
carries a bone's motion across; no bpy.

A bone map is {HHMR bone: target bone}: presets for Rigify (its human metarig, the generated
rig's FK controls or its deform bones), or a guess from the target's bone names (finger,
segment and side read from names such as ``f_index.02.L``, ``mixamorig:LeftHandIndex2``,
``Index_Proximal_R``). The map is stored on the target armature (``MAP_PROPERTY``, JSON) so
it is saved with the .blend and can be edited there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

import numpy as np

MAP_PROPERTY = "hhmr_bone_map"
FINGERS = ("thumb", "index", "middle", "ring", "little")
# each HHMR bone: (finger or None for the wrist, segment 1..3 from the palm)
HHMR_BONES: dict[str, tuple[str | None, int]] = {"wrist": (None, 0)}
for _f in FINGERS:
    for _k, _j in enumerate(("cmc", "mcp", "ip") if _f == "thumb" else ("mcp", "pip", "dip")):
        HHMR_BONES[f"{_f}_{_j}"] = (_f, _k + 1)

_RIGIFY_FINGER = {"thumb": "thumb", "index": "f_index", "middle": "f_middle",
                  "ring": "f_ring", "little": "f_pinky"}


def rigify_map(side: str, kind: str = "controls") -> dict[str, str]:
    """Rigify's bones for one side ("L" / "R"): ``kind`` "metarig" (the human metarig),
    "controls" (the generated rig's FK controls) or "deform" (its DEF- bones)."""
    if side not in ("L", "R") or kind not in ("metarig", "controls", "deform"):
        raise ValueError("side is L or R; kind is metarig, controls or deform")
    prefix = "DEF-" if kind == "deform" else ""
    hand = {"metarig": "hand", "controls": "hand_fk", "deform": "DEF-hand"}[kind]
    out = {"wrist": f"{hand}.{side}"}
    for bone, (finger, seg) in HHMR_BONES.items():
        if finger is not None:
            out[bone] = f"{prefix}{_RIGIFY_FINGER[finger]}.0{seg}.{side}"
    return out


PRESETS = ("AUTO", "RIGIFY", "RIGIFY_METARIG", "RIGIFY_DEFORM", "HHMR")

_FINGER_WORDS = {"thumb": "thumb", "index": "index", "pointer": "index", "middle": "middle",
                 "ring": "ring", "pinky": "little", "little": "little", "small": "little"}
_SEGMENT_WORDS = {"proximal": 1, "intermediate": 2, "middle": 2, "medial": 2, "distal": 3}
_HELPER = re.compile(r"^(MCH|ORG|WGT|VIS|DEF)-|_master|_drv|tweak|_ik|\.ik|target|pole|"
                     r"parent|socket|palm|metacarpal|carpal", re.I)


def side_of(name: str) -> str | None:
    """"L", "R" or None from a bone name's side marker (``.L``, ``_r``, ``Left``, ...)."""
    low = name.lower()
    left = re.search(r"(^|[^a-z])l([^a-z]|$)|left", low) is not None
    right = re.search(r"(^|[^a-z])r([^a-z]|$)|right", low) is not None
    return None if left == right else ("L" if left else "R")


def read_bone(name: str) -> tuple[str | None, int] | None:
    """(finger or None for the hand, segment 1..3) a bone name speaks of, None when it is
    not a hand bone, or a helper (mechanism, tweak, IK target, palm) of one."""
    if _HELPER.search(name):
        return None
    low = name.lower().rsplit(":", 1)[-1]  # a namespace ("mixamorig1:") says nothing
    if low in HHMR_BONES:
        return HHMR_BONES[low]
    word = next((k for k in _FINGER_WORDS if k in low), None)
    if word is None:
        return (None, 0) if "hand" in low or "wrist" in low else None
    rest = low.replace(word, " ", 1)
    seg = next((v for k, v in _SEGMENT_WORDS.items() if k in rest), None)
    if seg is None:
        digits = re.findall(r"\d+", rest)
        if not digits:
            return None
        seg = int(digits[0])
    return (_FINGER_WORDS[word], seg) if 1 <= seg <= 3 else None


def guess_map(names: Iterable[str], side: str) -> dict[str, str]:
    """A bone map from the target's bone names, for its ``side`` ("L" / "R") hand: each HHMR
    bone to the bone whose name reads as the same finger and segment on that side (a bone
    without a side marker counts for either). Shorter names win ties (``hand`` over
    ``hand.001``)."""
    found: dict[tuple[str | None, int], str] = {}
    for name in sorted(names, key=len):
        s = side_of(name)
        if s is not None and s != side:
            continue
        key = read_bone(name)
        if key is not None and key not in found:
            found[key] = name
    return {bone: found[key] for bone, key in HHMR_BONES.items() if key in found}


def map_for(preset: str, names: Iterable[str], side: str) -> dict[str, str]:
    """The bone map of ``preset`` (PRESETS) for an armature with bones ``names``; only the
    bones it has. Raises ValueError when no finger bone matches."""
    names = list(names)
    if preset == "AUTO":
        out = guess_map(names, side)
    elif preset == "HHMR":
        out = {b: b for b in HHMR_BONES}
    else:
        kind = {"RIGIFY": "controls", "RIGIFY_METARIG": "metarig",
                "RIGIFY_DEFORM": "deform"}[preset]
        out = rigify_map(side, kind)
    have = set(names)
    out = {k: v for k, v in out.items() if v in have}
    if not any(HHMR_BONES[k][0] is not None for k in out):
        raise ValueError(f"no finger bone of the target rig matches ({preset.lower()} map, "
                         f"{'left' if side == 'L' else 'right'} hand)")
    return out


def dumps(bone_map: Mapping[str, str]) -> str:
    return json.dumps(dict(bone_map), indent=0, sort_keys=True)


def loads(text: str) -> dict[str, str]:
    """A stored bone map; ValueError when it is not a map of HHMR bones to names."""
    data = json.loads(text)
    if not isinstance(data, dict) or not all(
            k in HHMR_BONES and isinstance(v, str) for k, v in data.items()):
        raise ValueError("the stored bone map is not a map of HHMR bones to bone names")
    return data


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation [3, 3] that turns direction a onto direction b."""
    a = np.asarray(a, float) / np.linalg.norm(a)
    b = np.asarray(b, float) / np.linalg.norm(b)
    v, c = np.cross(a, b), float(a @ b)
    if c < -1 + 1e-9:  # opposite: half a turn about any axis normal to a
        axis = np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


def hand_frame(wrist: np.ndarray, index: np.ndarray, middle: np.ndarray, little: np.ndarray
               ) -> np.ndarray:
    """A hand's own axes [3, 3] (columns) from its wrist and finger bases: along the middle
    finger, across the palm and out of it. The same hand side on both rigs gives frames that
    correspond."""
    y = (middle - wrist) / np.linalg.norm(middle - wrist)
    n = np.cross(index - wrist, little - wrist)
    x = np.cross(y, n)
    x /= np.linalg.norm(x)
    return np.stack([x, y, np.cross(x, y)], 1)


def carried_rotation(source_pose: np.ndarray, source_rest: np.ndarray,
                     target_rest: np.ndarray, direction: np.ndarray,
                     align: np.ndarray | None = None) -> np.ndarray:
    """The world rotation [3, 3] of a target bone following a source bone: the source's turn
    from its rest (``source_pose @ source_rest^T``, which keeps the twist) applied to the
    target's rest, then turned the least way so the bone (its Y axis) points along
    ``direction``, the source bone's own: rest poses that differ (a curled rest, another
    roll) do not carry over. ``align``: the world rotation from the target's rest hand to the
    source's (``hand_frame``s: source @ target^T), for rigs whose hands rest turned another
    way (a T-pose's palm down and fingers out against ours), so the palm faces where ours
    does."""
    guess = source_pose @ source_rest.T @ (np.eye(3) if align is None else align) @ target_rest
    return rotation_between(guess[:, 1], direction) @ guess

"""A video's animation in the scene: a new hand whose rig plays the clip as one Action."""

from __future__ import annotations

import bpy
import numpy as np

from . import retarget, scene
from .clip import ClipAnimation, continuous
from .handdata import HandTopology


def fcurve(action: bpy.types.Action, owner: bpy.types.ID, path: str, index: int,
           group: str) -> bpy.types.FCurve:
    """A new F-curve of ``action`` (assigned to ``owner``): Blender 4.4+'s slotted actions,
    or the older flat ones."""
    if hasattr(action, "fcurve_ensure_for_datablock"):
        return action.fcurve_ensure_for_datablock(owner, path, index=index, group_name=group)
    return action.fcurves.new(path, index=index, action_group=group)


def key_action(rig: bpy.types.Object, name: str, bones: list[str], times: np.ndarray,
               quats: np.ndarray, locs: np.ndarray) -> bpy.types.Action:
    """One Action on ``rig``: per bone, its quaternion [T, J, 4] and location [T, J, 3] keyed
    at scene frames ``times`` [T] (the rig's previous action is kept, unassigned)."""
    if rig.animation_data is None:
        rig.animation_data_create()
    action = bpy.data.actions.new(name)
    rig.animation_data.action = action
    try:
        for j, bone in enumerate(bones):
            rig.pose.bones[bone].rotation_mode = "QUATERNION"
            for prop, values in (("rotation_quaternion", quats[:, j]), ("location", locs[:, j])):
                path = f'pose.bones["{bone}"].{prop}'
                for i in range(values.shape[1]):
                    fc = fcurve(action, rig, path, i, bone)
                    fc.keyframe_points.add(len(times))
                    co = np.stack([times, values[:, i]], 1).astype(np.float32)
                    fc.keyframe_points.foreach_set("co", co.ravel())
                    fc.update()
    except BaseException:
        rig.animation_data.action = None
        bpy.data.actions.remove(action)
        raise
    return action


def land_clip(clip: ClipAnimation, topo: HandTopology, frame_start: int | None = None
              ) -> list[str]:
    """A new hand (mesh and rig) of the clip's shape whose rig plays the clip from
    ``frame_start`` (default the scene's start) at the scene's frame rate: all of it, or
    nothing when anything fails. The scene's end frame grows to the clip's last key."""
    sc = bpy.context.scene
    start = sc.frame_start if frame_start is None else int(frame_start)
    rig_poses = clip.rig(topo)
    heads, tails = rig_poses.heads[0], rig_poses.tails[0]
    quats = np.zeros((len(clip), topo.num_joints, 4))
    locs = np.zeros((len(clip), topo.num_joints, 3))
    for f in range(len(clip)):
        quats[f], locs[f] = scene.bone_pose(rig_poses.transforms[f], heads, tails, topo.parents)
    times = clip.scene_frames(sc.render.fps / sc.render.fps_base, start)
    name = f"HHMR {clip.label}".strip()
    obj = scene.create_hand(topo, clip.handedness, name, location=clip.location)
    created, action = [obj, obj.parent], None
    try:
        rest = clip.rest_vertices(topo).astype(np.float32)
        obj.data.vertices.foreach_set("co", rest.ravel())
        obj.data.update()
        bones = list(topo.joint_names)
        scene.set_rest(obj.parent, bones, heads, tails)
        action = key_action(obj.parent, f"{name} motion", bones, times, continuous(quats),
                            locs)
        action["hhmr_filled_frames"] = [int(f) for f in clip.frames[~clip.detected]]
        action["hhmr_times"] = [float(t) for t in times]
        action["hhmr_clip_fps"] = clip.fps
        obj.hhmr.bones = ",".join(bones)
        sc.frame_end = max(sc.frame_end, int(np.ceil(times[-1])))
        sc.frame_set(start)
    except BaseException:
        scene.remove_objects(created)
        if action is not None:
            bpy.data.actions.remove(action)
        raise
    return [obj.name]


# ---------------------------------------------------------------------------- other rigs
def _world_rotation(m) -> np.ndarray:
    """The rotation part [3, 3] of a world matrix (scale removed)."""
    r = np.array(m.to_3x3())
    return r / np.linalg.norm(r, axis=0, keepdims=True)


def bake_to_rig(source: bpy.types.Object, target: bpy.types.Object, bone_map: dict[str, str],
                times: list[float], move_hand: bool = False) -> bpy.types.Action:
    """Key ``target``'s mapped bones at scene frames ``times`` so that each turns with its HHMR
    bone of ``source`` (an HHMR rig): the HHMR bone's turn from rest carried over (with the
    two rest hands aligned, `retarget.hand_frame`), then the target bone pointed along ours
    (retarget.carried_rotation), so differing rest poses and rolls do not carry over and the
    fingers and palm point where ours do; each bone keeps its own scale. With ``move_hand``
    the mapped wrist bone also goes where ours is. One new Action on ``target``, all of it or
    none (its previous action and pose come back)."""
    from mathutils import Matrix

    missing = [b for b in bone_map if b not in source.pose.bones] + \
        [b for b in bone_map.values() if b not in target.pose.bones]
    if missing:
        raise ValueError(f"bones missing from the rigs: {', '.join(missing[:4])}")
    pairs = sorted(bone_map.items(), key=lambda kv: len(target.data.bones[kv[1]].parent_recursive))
    depth = [len(target.data.bones[t].parent_recursive) for _, t in pairs]
    src_rest = {s: _world_rotation(source.matrix_world @ source.data.bones[s].matrix_local)
                for s, _ in pairs}
    tgt_rest = {t: _world_rotation(target.matrix_world @ target.data.bones[t].matrix_local)
                for _, t in pairs}
    align = _rest_alignment(source, target, bone_map)
    inv = target.matrix_world.inverted()
    sc = bpy.context.scene
    frame_before = sc.frame_current
    if target.animation_data is None:
        target.animation_data_create()
    before = target.animation_data.action
    pose_before = {t: target.pose.bones[t].matrix_basis.copy() for _, t in pairs}
    action = bpy.data.actions.new(f"{target.name} HHMR motion")
    target.animation_data.action = action
    try:
        for f in times:
            sc.frame_set(int(np.floor(f)), subframe=float(f - np.floor(f)))
            for level in sorted(set(depth)):
                for (s, t), d in zip(pairs, depth, strict=True):
                    if d != level:
                        continue
                    sw = source.matrix_world @ source.pose.bones[s].matrix
                    rot = retarget.carried_rotation(_world_rotation(sw), src_rest[s],
                                                    tgt_rest[t], np.array(sw.col[1][:3]), align)
                    tpb = target.pose.bones[t]
                    now = target.matrix_world @ tpb.matrix
                    here = sw.translation if move_hand and s == "wrist" else now.translation
                    want = Matrix.LocRotScale(here, Matrix(rot.tolist()).to_quaternion(),
                                              now.to_scale())
                    tpb.matrix = inv @ want
                bpy.context.view_layer.update()
            for s, t in pairs:
                tpb = target.pose.bones[t]
                prop = {"QUATERNION": "rotation_quaternion", "AXIS_ANGLE": "rotation_axis_angle"
                        }.get(tpb.rotation_mode, "rotation_euler")
                tpb.keyframe_insert(prop, frame=float(f), group=t)
                if move_hand and s == "wrist":
                    tpb.keyframe_insert("location", frame=float(f), group=t)
    except BaseException:
        target.animation_data.action = before
        bpy.data.actions.remove(action)
        for t, m in pose_before.items():
            target.pose.bones[t].matrix_basis = m
        raise
    finally:
        sc.frame_set(frame_before)
    action["hhmr_source"] = source.name
    return action


def _rest_alignment(source: bpy.types.Object, target: bpy.types.Object,
                    bone_map: dict[str, str]) -> np.ndarray | None:
    """The world rotation taking the target's rest hand onto the source's (their
    `retarget.hand_frame`s from the bones' rest heads), None when the map lacks the wrist or
    the index, middle and little fingers' first bones."""
    keys = ("wrist", "index_mcp", "middle_mcp", "little_mcp")
    if not all(k in bone_map for k in keys):
        return None

    def heads(obj, names):
        return [np.array(obj.matrix_world @ obj.data.bones[n].head_local) for n in names]

    src = retarget.hand_frame(*heads(source, keys))
    tgt = retarget.hand_frame(*heads(target, [bone_map[k] for k in keys]))
    return src @ tgt.T


def bone_map_for(target: bpy.types.Object, preset: str, side: str) -> dict[str, str]:
    """The bone map for ``target``'s ``side`` ("L" / "R") hand: with preset AUTO the one stored
    on it (``retarget.MAP_PROPERTY``), else guessed from its names; other presets as named."""
    stored = target.get(retarget.MAP_PROPERTY)
    if preset == "AUTO" and stored:
        bone_map = retarget.loads(stored)
        missing = [b for b in bone_map.values() if b not in target.data.bones]
        if missing:
            raise ValueError(f"the bone map stored on '{target.name}' names bones it lacks: "
                             f"{', '.join(missing[:4])}")
        return bone_map
    return retarget.map_for(preset, [b.name for b in target.data.bones], side)


def bake_hand(hand: bpy.types.Object, target: bpy.types.Object, preset: str = "AUTO",
              move_hand: bool = False) -> bpy.types.Action:
    """Bake an animated HHMR hand (a video's) onto ``target`` and store the bone map used on
    it."""
    rig = hand.parent
    action = rig.animation_data.action if rig is not None and rig.animation_data else None
    if action is None or "hhmr_times" not in action:
        raise ValueError(f"'{hand.name}' has no video motion to bake (Reconstruct from Video)")
    if target.type != "ARMATURE" or target == rig:
        raise ValueError("the target must be another armature")
    side = "L" if hand.hhmr.handedness == "left" else "R"
    bone_map = bone_map_for(target, preset, side)
    baked = bake_to_rig(rig, target, bone_map, list(action["hhmr_times"]), move_hand)
    target[retarget.MAP_PROPERTY] = retarget.dumps(bone_map)
    return baked

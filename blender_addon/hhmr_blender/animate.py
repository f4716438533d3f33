"""A video's animation in the scene: a new hand whose rig plays the clip as one Action."""

from __future__ import annotations

import bpy
import numpy as np

from . import scene
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

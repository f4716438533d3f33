"""A clip baked onto a Rigify rig, in a real Blender window (the README's picture). Run under a
display, e.g. Xvfb (tools/video_screenshot.sh does it all):

    xvfb-run -s "-screen 0 1280x800x24" blender --factory-startup -p 0 0 1280 800 \\
        --python tools/video_screenshot.py -- --backend tcp://127.0.0.1:5557 \\
        --clip CLIP.mp4 --out video.png [--end 90 --stride 2]

It presses Reconstruct from Video the way the button does (the timer lands the Action while
Blender keeps drawing), adds Rigify's human metarig, generates its rig, bakes the clip onto the
rig's right-hand controls, goes to the frame where the fingers are most bent, puts the HHMR
hand beside the rig's hand and saves the window with the HHMR panel open. Prints HHMR_*
lines; exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import addon_utils
import bpy
import numpy as np
from mathutils import Vector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blender_window import (  # noqa: E402
    click_next_tab,
    close_splash,
    count_draws,
    finish,
    guarded,
    view3d,
)

argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
ap = argparse.ArgumentParser()
ap.add_argument("--backend", required=True)
ap.add_argument("--clip", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--end", type=int, default=90)
ap.add_argument("--stride", type=int, default=2)
args = ap.parse_args(argv)
state = {"step": 0, "drawn": 0, "tabs": 0, "deadline": time.monotonic() + 420}


def _step() -> float | None:
    from hhmr_blender import animate, runner

    if time.monotonic() > state["deadline"]:
        print("HHMR_ERROR timed out", runner.STATE.status, runner.STATE.error)
        finish(4)
        return None
    win, area, region = view3d()
    if state["step"] == 0:
        prefs = runner.prefs()
        prefs.address, prefs.timeout_s = args.backend, 120.0
        s = bpy.context.scene.hhmr
        s.video_source, s.video_path = "FILE", args.clip
        s.video_end, s.video_stride = args.end, args.stride
        area.spaces.active.show_region_ui = True
        close_splash(win)
        from hhmr_blender.local_backend import LocalBackend

        LocalBackend().wait_ready(runner.client(timeout_s=2.0, retries=0), timeout=120)
        for obj in list(bpy.data.objects):
            bpy.data.objects.remove(obj)
        state["t0"] = time.perf_counter()
        with bpy.context.temp_override(window=win, area=area, region=region):
            print("HHMR_OPERATOR", bpy.ops.hhmr.reconstruct_video(), f"busy={runner.busy()}")
        state["step"] = 1
        return 0.1
    if state["step"] == 1:
        if runner.busy():
            return 0.1
        if runner.STATE.error:
            print("HHMR_ERROR", runner.STATE.error)
            finish(5)
            return None
        print(f"HHMR_LANDED {runner.STATE.status} ({time.perf_counter() - state['t0']:.1f} s "
              "from the click)")
        hand = bpy.data.objects[runner.STATE.landed[0]]
        addon_utils.enable("rigify", default_set=True)
        with bpy.context.temp_override(window=win, area=area, region=region):
            bpy.ops.object.armature_human_metarig_add()
            bpy.ops.pose.rigify_generate()
        rig = bpy.context.view_layer.objects.active
        for obj in [o for o in bpy.data.objects if o.name.startswith("metarig")]:
            obj.hide_set(True)
        arm = rig.pose.bones.get("upper_arm_parent.R")
        if arm is not None and "IK_FK" in arm:
            arm["IK_FK"] = 1.0  # the arm in FK: the hand turns with hand_fk
        t0 = time.perf_counter()
        action = animate.bake_hand(hand, rig, "RIGIFY")
        times = list(hand.parent.animation_data.action["hhmr_times"])
        print(f"HHMR_BAKED {len(times)} keys onto {rig.name} as {action.name} in "
              f"{time.perf_counter() - t0:.1f} s")
        # the key where the index finger bends most, and how far each of the rig's deform
        # finger bones points from ours over all keys
        sc = bpy.context.scene
        bends, worst = [], 0.0
        src = hand.parent
        for f in times:
            sc.frame_set(int(f))
            q = rig.pose.bones["f_index.02.R"].matrix.to_quaternion()
            bends.append(abs(q.angle))
            for ours, theirs in animate.bone_map_for(rig, "AUTO", "R").items():
                if ours == "wrist":
                    continue
                a, b = src.pose.bones[ours], rig.pose.bones["DEF-" + theirs]
                da = src.matrix_world @ a.tail - src.matrix_world @ a.head
                db = rig.matrix_world @ b.tail - rig.matrix_world @ b.head
                worst = max(worst, np.degrees(da.angle(db)))
        print(f"HHMR_BAKE_DIRECTIONS worst {worst:.3f} degrees over {len(times)} keys")
        sc.frame_set(int(times[int(np.argmax(bends))]))
        state["rig"], state["hand"] = rig.name, hand.name
        for o in bpy.context.view_layer.objects:
            o.select_set(False)
        hand.select_set(True)
        bpy.context.view_layer.objects.active = hand
        state["step"] = 2
        return 0.5
    if state["step"] == 2:  # click down the sidebar's tab strip until HHMR's is drawn
        if click_next_tab(win, area, state):
            return 0.4
        print(f"HHMR_PANEL_DRAWS {state['drawn']} after {state['tabs']} clicks on the tabs")
        # the HHMR hand beside the rig's right hand, both seen from the front
        rig, hand = bpy.data.objects[state["rig"]], bpy.data.objects[state["hand"]]
        theirs = rig.matrix_world @ rig.pose.bones["DEF-hand.R"].head
        ours = hand.parent.matrix_world @ hand.parent.pose.bones["wrist"].head
        hand.parent.location += theirs - ours + Vector((-0.22, 0.0, 0.0))
        for o in bpy.context.view_layer.objects:
            o.select_set(False)
        bpy.context.view_layer.update()
        with bpy.context.temp_override(window=win, area=area, region=region):
            bpy.ops.view3d.view_axis(type="FRONT")
        # the rig's deform bones drawn as bones (its controls are circles, hard to read)
        rig.data.display_type, rig.show_in_front = "OCTAHEDRAL", True
        if hasattr(rig.data, "layers"):  # Blender < 4: layer 29 holds Rigify's DEF bones
            rig.data.layers = [i == 29 for i in range(32)]
        else:
            for coll in rig.data.collections:
                coll.is_visible = coll.name == "DEF"
        r3d = area.spaces.active.region_3d
        r3d.view_location = theirs + Vector((-0.12, 0.0, 0.0))
        r3d.view_distance = 0.7
        state["step"] = 3
        return 0.5
    if state["step"] == 3:
        with bpy.context.temp_override(window=win, area=area, region=region):
            bpy.ops.screen.screenshot(filepath=args.out)
        print("HHMR_SCREENSHOT", args.out, f"frame {bpy.context.scene.frame_current}")
        finish(0)
    return None


mod = addon_utils.enable("hhmr_blender", default_set=True)
if mod is None:
    print("HHMR_ERROR cannot enable the add-on")
    finish(2)
from hhmr_blender import panels  # noqa: E402

count_draws(panels.HHMR_PT_main, state)
print("HHMR_ADDON", mod.__file__, bpy.app.version_string)
bpy.app.timers.register(guarded(_step), first_interval=1.0)

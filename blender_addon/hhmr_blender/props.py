"""Add-on properties: preferences, per-scene settings, per-object hypotheses."""

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from .wire import client as wire_client

RIG_BONES = 16  # bones of an HHMR rig: a pose is stored for each


def _show_active(self, context) -> None:
    from . import scene

    obj = self.id_data
    if 0 <= self.active_index < len(self.hypotheses):
        scene.show(obj, self.hypotheses[self.active_index].key_name)


class HHMR_Hypothesis(bpy.types.PropertyGroup):
    key_name: StringProperty(name="Shape key")
    score: FloatProperty(name="Score", description="Higher is better (the backend's score; "
                         "the list shows it as an error: millimetres, pixels or stretch)")
    op: StringProperty(name="From")
    central: BoolProperty(name="Central", description="The sampler's central guess (started "
                          "from the noise's mean), shown first")
    # the solved rig (from backends that send a pose): shown with the hypothesis, its shape key
    # then holds the rest-space mesh. Per bone, in the rig's joint order (HHMR_ObjectSettings
    # .bones): the pose bone's quaternion and location, and the rest bone of this hand's shape
    has_pose: BoolProperty(name="Has pose", default=False)
    pose_rotation: FloatVectorProperty(name="Bone rotations", size=(RIG_BONES, 4))
    pose_location: FloatVectorProperty(name="Bone locations", size=(RIG_BONES, 3))
    rest_head: FloatVectorProperty(name="Rest heads", size=(RIG_BONES, 3))
    rest_tail: FloatVectorProperty(name="Rest tails", size=(RIG_BONES, 3))


class HHMR_ObjectSettings(bpy.types.PropertyGroup):
    is_hand: BoolProperty(name="HHMR hand", default=False)
    use_box: BoolProperty(
        name="Hand Box", default=False,
        description="Reconstruct only the hand inside the box drawn on the photo; it finds "
                    "hands the detector misses (gloves, instruments, a hand filling the photo)")
    box: FloatVectorProperty(
        name="Box", size=4, default=(0.0, 0.0, 0.0, 0.0), min=0.0,
        description="x0, y0, x1, y1 in photo pixels from its top left (Draw Box sets it)")
    handedness: EnumProperty(name="Hand", items=[("right", "Right", ""), ("left", "Left", "")])
    hypotheses: CollectionProperty(type=HHMR_Hypothesis)
    active_index: IntProperty(name="Shown hypothesis", default=-1, update=_show_active)
    camera: PointerProperty(type=bpy.types.Object, name="Camera")
    bones: StringProperty(name="Rig bones", description="The bones the hypotheses' poses "
                          "drive, comma-separated, in their order")


class HHMR_SceneSettings(bpy.types.PropertyGroup):
    n: IntProperty(name="Hypotheses", default=8, min=1, max=64,
                   description="How many different hands to propose; browse them in the list")
    steps: IntProperty(name="Steps", default=10, min=1, max=200,
                       description="Denoising steps: more is slower and rarely better than the "
                                   "tuned 10")
    seed: IntProperty(name="Seed", default=0, min=0,
                      description="Another seed gives other hands for the same request")
    guidance_strength: FloatProperty(
        name="Follow Evidence", default=1.0, min=0.0, soft_max=2.0, precision=2,
        description="How closely the hands follow the evidence (the photo's keypoints, the "
                    "rig, the kept vertices), relative to the backend's tuned strength: 1 "
                    "tuned, 0 none; guiding through the network, above 2 it may distort the "
                    "hand")
    guidance_space: EnumProperty(name="Method", items=[
        ("DEFAULT", "Default", "The backend's choice per task"),
        ("x0", "Prediction", "Correct the network's prediction (fast; the default for "
                             "skeletons and keypoints)"),
        ("x_t", "Through net", "HHMR's gradient through the network (a backward pass per "
                               "step; the default for inpainting)")])
    first_hypothesis: EnumProperty(name="First Hand", items=[
        ("DEFAULT", "Default", "Central for skeleton, keypoint and photo fits; random for "
                               "generating and inpainting"),
        ("CENTRAL", "Central", "The first hypothesis (hyp_00) is the sampler's central guess, "
                               "the same for every seed: its most accurate single answer"),
        ("RANDOM", "Random", "Every hypothesis from the seed's random noise")],
        description="Where the first hypothesis starts: the centre of the noise or a random "
                    "draw")
    variety: EnumProperty(name="Variety", items=[
        ("DEFAULT", "Default", "The backend's tuned spread: as varied as real hands"),
        ("TYPICAL", "Typical", "The network alone: the most typical hands, less varied"),
        ("WIDE", "Wide", "More varied hands, a little less realistic")],
        description="How widely generated hands vary (the backend's autoguidance weight)")
    same_orientation: BoolProperty(
        name="Same orientation", default=True,
        description="Turn every generated hand so its palm lies on the rest hand's: the wrist "
                    "stays put and the palm faces one way while you browse them")
    image_source: EnumProperty(name="Image", items=[
        ("FILE", "File", "An image file on disk"),
        ("DATABLOCK", "Image", "An image already in this .blend")])
    image_path: StringProperty(name="Photo", subtype="FILE_PATH")
    image: PointerProperty(type=bpy.types.Image, name="Photo")
    use_box: BoolProperty(
        name="Hand Box", default=False,
        description="Reconstruct only the hand inside the box drawn on the photo; it finds "
                    "hands the detector misses (gloves, instruments, a hand filling the photo)")
    box: FloatVectorProperty(
        name="Box", size=4, default=(0.0, 0.0, 0.0, 0.0), min=0.0,
        description="x0, y0, x1, y1 in photo pixels from its top left (Draw Box sets it)")
    handedness: EnumProperty(name="Hand", items=[
        ("AUTO", "Detect", "Left or right as the detector sees it"),
        ("right", "Right", ""), ("left", "Left", "")])
    result_target: EnumProperty(name="Results", items=[
        ("AUTO", "Automatic", "On a new hand when the selected hand holds results of another "
                              "kind (photo fit, refit, generated); else replace them"),
        ("NEW", "New hand", "Always on a new hand object, beside the selected one"),
        ("REPLACE", "Replace", "Replace the hypotheses of the selected hand")],
        description="Where Generate, Inpaint and Refit put their hands")
    key_pose: BoolProperty(
        name="Key pose", default=False,
        description="Insert keyframes for the rig's pose on the current frame whenever a "
                    "hypothesis is shown")
    video_source: EnumProperty(name="Video", items=[
        ("FILE", "File", "A video file on disk"),
        ("CLIP", "Movie Clip", "A movie clip already in this .blend")])
    video_path: StringProperty(name="Video", subtype="FILE_PATH")
    video_clip: PointerProperty(type=bpy.types.MovieClip, name="Movie Clip")
    video_start: IntProperty(name="First Frame", default=0, min=0,
                             description="The clip's first frame to use, counting from 0")
    video_end: IntProperty(name="Last Frame", default=0, min=0,
                           description="The clip's last frame to use, counting from 0 (0: to "
                                       "its end)")
    video_stride: IntProperty(name="Every", default=1, min=1, max=1000,
                              description="Use every n-th frame (the animation keeps the "
                                          "clip's timing)")
    video_smoothing: FloatProperty(
        name="Smoothing", default=2.0, min=0.0, soft_max=50.0, max=10000.0,
        description="How smooth the motion is: 0 raw, higher steadier (it adds no lag; very "
                    "high values soften fast moves)")
    video_target: PointerProperty(
        type=bpy.types.Object, name="Target Rig",
        poll=lambda self, obj: obj.type == "ARMATURE" and not any(
            c.hhmr.is_hand for c in obj.children),
        description="Also bake the motion onto this armature (your character's rig) through "
                    "its bone map")
    bone_map_preset: EnumProperty(name="Bone Map", items=[
        ("AUTO", "Stored or Guessed", "The map stored on the target rig, else one guessed "
                                      "from its bone names"),
        ("RIGIFY", "Rigify Controls", "A generated Rigify rig: hand_fk and the finger FK "
                                      "controls"),
        ("RIGIFY_METARIG", "Rigify Metarig", "Rigify's human metarig"),
        ("RIGIFY_DEFORM", "Rigify Deform", "A generated Rigify rig's DEF- bones"),
        ("HHMR", "HHMR Names", "Bones named like the HHMR rig's")],
        description="Which of the target's bones each hand bone drives; the map used is "
                    "stored on the target rig (custom property hhmr_bone_map) for next time")
    move_hand: BoolProperty(
        name="Move Hand", default=False,
        description="Also move the target's hand bone to the tracked wrist (else only turn "
                    "it: the arm keeps its place)")
    only_selected_bones: BoolProperty(
        name="Only selected bones", default=False,
        description="Refit to the selected bones' keypoints only; the rest is generated")


class HHMR_Preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    address: StringProperty(name="Backend address", default=wire_client.DEFAULT_ADDRESS,
                            description="ZeroMQ address of the HHMR backend")
    command: StringProperty(
        name="Backend command", default="hhmr",
        description="The 'hhmr' command, or a Python with the hhmr package, for "
                    "'Start local backend'")
    timeout_s: FloatProperty(name="Timeout (s)", default=30.0, min=1.0,
                             description="Longest silence from the backend per attempt")
    retries: IntProperty(name="Retries", default=1, min=0, max=10)

    def draw(self, context) -> None:
        from . import local_backend, runner

        layout = self.layout
        layout.prop(self, "address")
        row = layout.row()
        row.prop(self, "timeout_s")
        row.prop(self, "retries")
        layout.prop(self, "command")
        row = layout.row()
        if local_backend.BACKEND.running:
            row.operator("hhmr.stop_backend", icon="CANCEL")
        else:
            row.operator("hhmr.start_backend", icon="PLAY")
        row.operator("hhmr.check_backend", icon="FILE_REFRESH")
        layout.label(text=connection_text(runner.STATE.info))


def connection_text(info: dict | None) -> str:
    if not info:
        return "Not connected (Check connection)"
    topo = info.get("topology") or {}
    return (f"Connected: {info.get('server', '?')} {info.get('version', '')} on "
            f"{info.get('device', '?')}, {info.get('model', '?')} hand, "
            f"{topo.get('num_vertices', '?')} vertices")


CLASSES = (HHMR_Hypothesis, HHMR_ObjectSettings, HHMR_SceneSettings, HHMR_Preferences)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Object.hhmr = PointerProperty(type=HHMR_ObjectSettings)
    bpy.types.Scene.hhmr = PointerProperty(type=HHMR_SceneSettings)


def unregister() -> None:
    del bpy.types.Scene.hhmr
    del bpy.types.Object.hhmr
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)

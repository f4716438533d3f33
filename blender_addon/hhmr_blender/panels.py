"""The N-panel (3D view sidebar, tab "Hand") and the hypotheses list."""

from __future__ import annotations

import textwrap

import bpy

from . import hypotheses, runner, scene


def labels(layout, context, text: str, icon: str = "NONE") -> None:
    """``text`` as lines that fit the sidebar's width (a label is cut, never wrapped)."""
    region = getattr(context, "region", None)
    scale = context.preferences.system.ui_scale
    chars = max(16, int((region.width if region else 300) / (7 * scale)) - 4)
    for i, line in enumerate(textwrap.wrap(text, chars) or [""]):
        layout.label(text=line, icon=icon if i == 0 else "BLANK1")


class HHMR_UL_hypotheses(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_prop,
                  index=0, flt_flag=0):
        split = layout.split(factor=0.55)
        split.label(text=item.key_name,
                    icon="PIVOT_MEDIAN" if item.central else "SHAPEKEY_DATA")
        split.label(text=hypotheses.score_text(item.op, item.score))


class _Panel(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Hand"


class HHMR_PT_main(_Panel):
    bl_idname = "HHMR_PT_main"
    bl_label = "HHMR"

    def draw(self, context):
        layout = self.layout
        s = context.scene.hhmr
        state = runner.STATE
        if runner.busy():
            box = layout.box()
            labels(box, context, state.status or "working", "SORTTIME")
            box.operator("hhmr.cancel", icon="CANCEL")
        elif state.error:
            labels(layout.column(align=True), context, state.error, "ERROR")
        elif state.status:
            labels(layout.column(align=True), context, state.status, "CHECKMARK")
        layout.prop(s, "n")
        layout.prop(s, "variety")
        layout.prop(s, "same_orientation")
        layout.prop(s, "result_target")
        row = layout.row(align=True)
        row.operator("hhmr.add_hand", text="Add Left", icon="VIEW_PAN").handedness = "left"
        row.operator("hhmr.add_hand", text="Add Right", icon="VIEW_PAN").handedness = "right"
        layout.operator("hhmr.generate", icon="OUTLINER_OB_POINTCLOUD")


class HHMR_PT_advanced(_Panel):
    """The sampler's own settings, folded away: the defaults are tuned."""

    bl_label = "Advanced"
    bl_parent_id = "HHMR_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        s = context.scene.hhmr
        col = self.layout.column(align=True)
        col.prop(s, "steps")
        col.prop(s, "seed")
        col = self.layout.column(align=True)
        col.prop(s, "guidance_strength", slider=True)
        col.prop(s, "guidance_space")
        col.prop(s, "first_hypothesis")


class HHMR_PT_reconstruct(_Panel):
    bl_label = "Reconstruct from Image"
    bl_parent_id = "HHMR_PT_main"

    def draw(self, context):
        layout = self.layout
        s = context.scene.hhmr
        layout.row().prop(s, "image_source", expand=True)
        layout.prop(s, "image_path" if s.image_source == "FILE" else "image")
        layout.prop(s, "handedness")
        draw_box_settings(layout, s)
        layout.operator("hhmr.reconstruct", icon="IMAGE_DATA")


def draw_box_settings(layout, s) -> None:
    row = layout.row(align=True)
    row.prop(s, "use_box")
    if s.use_box:
        layout.prop(s, "box", text="")


class HHMR_PT_image_editor(bpy.types.Panel):
    """The photo side of Reconstruct, in the Image Editor's sidebar (tab "Hand"): draw a
    box around a hand on the shown photo, choose its side, reconstruct."""

    bl_label = "Reconstruct Hand"
    bl_space_type = "IMAGE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Hand"

    def draw(self, context):
        layout = self.layout
        s = context.scene.hhmr
        layout.operator("hhmr.draw_box", icon="SELECT_SET")
        draw_box_settings(layout, s)
        layout.prop(s, "handedness")
        layout.operator("hhmr.reconstruct", icon="IMAGE_DATA")


class HHMR_PT_reconstruct_video(_Panel):
    bl_label = "Reconstruct from Video"
    bl_parent_id = "HHMR_PT_main"

    def draw(self, context):
        layout = self.layout
        s = context.scene.hhmr
        layout.row().prop(s, "video_source", expand=True)
        layout.prop(s, "video_path" if s.video_source == "FILE" else "video_clip")
        row = layout.row(align=True)
        row.prop(s, "video_start")
        row.prop(s, "video_end")
        row = layout.row(align=True)
        row.prop(s, "video_stride")
        row.prop(s, "video_smoothing")
        layout.prop(s, "handedness")
        layout.prop(s, "video_target")
        if s.video_target is not None:
            layout.prop(s, "bone_map_preset")
            layout.prop(s, "move_hand")
        layout.operator("hhmr.reconstruct_video", icon="SEQUENCE")
        layout.operator("hhmr.bake_to_rig", icon="ARMATURE_DATA")


class _HandPanel(_Panel):
    """A sub-panel about the selected HHMR hand (or its armature), else a hint."""

    bl_parent_id = "HHMR_PT_main"
    hint = "Select an HHMR hand or its armature"

    def draw(self, context):
        hand = scene.hand_of(context.active_object)
        if hand is None:
            labels(self.layout, context, self.hint)
        else:
            self.draw_hand(context, self.layout, hand)


class HHMR_PT_edit(_HandPanel):
    bl_label = "Inpaint and Refit"

    def draw_hand(self, context, layout, hand):
        col = layout.column()
        col.operator("hhmr.inpaint", icon="MOD_MASK")
        if context.active_object.mode != "EDIT":
            labels(col, context, "Select the vertices to keep in Edit Mode", "INFO")
        layout.prop(context.scene.hhmr, "only_selected_bones")
        layout.operator("hhmr.refit", icon="ARMATURE_DATA")


class HHMR_PT_hypotheses(_HandPanel):
    bl_label = "Hypotheses"
    hint = "No HHMR hand selected"

    def draw_hand(self, context, layout, hand):
        layout.label(text=f"{hand.name} ({hand.hhmr.handedness})")
        layout.template_list("HHMR_UL_hypotheses", "", hand.hhmr, "hypotheses", hand.hhmr,
                             "active_index", rows=4)
        items = hand.hhmr.hypotheses
        if len(items):
            labels(layout.column(align=True), context,
                   hypotheses.order_text(items[0].op, items[0].central), "INFO")
        if hand.hhmr.camera is not None:
            layout.operator("hhmr.view_photo", icon="CAMERA_DATA")
        layout.prop(context.scene.hhmr, "key_pose")
        row = layout.row(align=True)
        row.operator("hhmr.apply_hypothesis", icon="CHECKMARK")
        row.operator("hhmr.delete_hypothesis", icon="X", text="Delete")


CLASSES = (HHMR_UL_hypotheses, HHMR_PT_main, HHMR_PT_advanced, HHMR_PT_reconstruct,
           HHMR_PT_image_editor,
           HHMR_PT_reconstruct_video, HHMR_PT_edit,
           HHMR_PT_hypotheses)

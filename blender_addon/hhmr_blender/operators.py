"""Operators: thin wrappers that gather inputs, build a jobs.Task and hand it to runner."""

from collections.abc import Callable
from pathlib import Path

import bpy

from . import hypotheses, jobs, local_backend, runner, scene
from .clip import sequence_files

EXPECTED = (ValueError, FileNotFoundError, RuntimeError, TimeoutError, OSError,
            jobs.RemoteError, jobs.ProtocolError)


def sampling(context) -> jobs.Sampling:
    s = context.scene.hhmr
    # the defaults go unsent, so a backend from before these options still answers
    strength = None if s.guidance_strength == 1.0 else s.guidance_strength
    space = None if s.guidance_space == "DEFAULT" else s.guidance_space
    return jobs.Sampling(s.n, s.steps, s.seed, guidance_strength=strength, guidance_space=space,
                         central_first={"DEFAULT": None, "CENTRAL": True,
                                        "RANDOM": False}[s.first_hypothesis])


def target_for(context, hand: bpy.types.Object | None, op: str) -> str | None:
    """The hand that receives `op`'s results (None: a new hand, beside `hand`), as the
    artist's Results option says."""
    if hand is None:
        return None
    held = [h.op for h in hand.hhmr.hypotheses]
    return hand.name if hypotheses.replaces(context.scene.hhmr.result_target, op, held) \
        else None


def beside(task: jobs.Task, hand: bpy.types.Object | None) -> jobs.Task:
    """A task whose results go on a new hand: place that hand next to `hand`."""
    if task.target is None and hand is not None:
        task.meta["beside"] = hand.name
    return task


def run(op: bpy.types.Operator, make_task: Callable[[], jobs.Task]) -> set[str]:
    """Check the backend, then build and start a task (building may read the backend's
    topology and leave Edit Mode), reporting expected failures instead of raising."""
    try:
        runner.ensure_idle()  # before the round trip
        runner.check()
        landed = runner.start(make_task(), checked=True)
    except EXPECTED as err:
        runner.STATE.error = jobs.describe_error(err)
        op.report({"ERROR"}, runner.STATE.error)
        return {"CANCELLED"}
    if landed is not None:
        op.report({"INFO"}, runner.STATE.status)
    return {"FINISHED"}


class _Request(bpy.types.Operator):
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context) -> bool:
        return not runner.busy()


class HHMR_OT_reconstruct_video(_Request):
    """Animate a new hand from a video: its rig plays the clip as one Action from the scene's
    start frame"""

    bl_idname = "hhmr.reconstruct_video"
    bl_label = "Reconstruct from Video"

    def execute(self, context):
        s = context.scene.hhmr

        def task() -> jobs.Task:
            side = None if s.handedness == "AUTO" else s.handedness
            last = s.video_end + 1 if s.video_end else None  # the panel's last frame is in
            if s.video_source == "CLIP":
                clip = s.video_clip
                if clip is None:
                    raise ValueError("pick a movie clip")
                path = bpy.path.abspath(clip.filepath, library=clip.library)
                if clip.source == "SEQUENCE":  # its frames, cut here: fewer bytes to send
                    files = sequence_files(Path(path))[s.video_start:last:s.video_stride]
                    t = jobs.reconstruct_video(
                        frames=runner.sequence_bytes(files), fps=clip.fps / s.video_stride,
                        label=clip.name, smoothing=s.video_smoothing, handedness=side)
                    return with_target(t)
            elif s.video_path:
                path = bpy.path.abspath(s.video_path)
            else:
                raise ValueError("choose a video first")
            return with_target(jobs.reconstruct_video(
                runner.video_bytes(path), Path(path).stem, start=s.video_start, end=last,
                stride=s.video_stride, smoothing=s.video_smoothing, handedness=side))

        def with_target(t: jobs.Task) -> jobs.Task:
            if s.video_target is not None:
                t.meta.update(bake_to=s.video_target.name, bone_map=s.bone_map_preset,
                              move_hand=s.move_hand)
            return t

        return run(self, task)


class HHMR_OT_bake_to_rig(bpy.types.Operator):
    """Bake the selected video hand's motion onto the target rig through its bone map"""

    bl_idname = "hhmr.bake_to_rig"
    bl_label = "Bake onto Target Rig"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context) -> bool:
        hand = scene.hand_of(context.active_object)
        return hand is not None and context.scene.hhmr.video_target is not None

    def execute(self, context):
        from . import animate

        s = context.scene.hhmr
        hand = scene.hand_of(context.active_object)
        try:
            action = animate.bake_hand(hand, s.video_target, s.bone_map_preset, s.move_hand)
        except EXPECTED as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Baked onto '{s.video_target.name}' as '{action.name}'")
        return {"FINISHED"}


class HHMR_OT_generate(_Request):
    """Sample random hands; they land on the active HHMR hand, else on a new one"""

    bl_idname = "hhmr.generate"
    bl_label = "Generate"

    def execute(self, context):
        hand = scene.hand_of(context.active_object)
        target = target_for(context, hand, "generate")
        side = hand.hhmr.handedness if hand is not None else "right"

        def task() -> jobs.Task:
            made = beside(jobs.generate(sampling(context), target, context.scene.hhmr.variety,
                                        side), hand)
            if context.scene.hhmr.same_orientation:
                topo = runner.topology()
                made.meta["align_to"] = (topo.rest_keypoints(side), topo.palm())
            return made

        return run(self, task)


class HHMR_OT_reconstruct(_Request):
    """Recover hand meshes from the photo; each hand found becomes a new hand object"""

    bl_idname = "hhmr.reconstruct"
    bl_label = "Reconstruct"

    def execute(self, context):
        s = context.scene.hhmr
        side = None if s.handedness == "AUTO" else s.handedness
        box = tuple(s.box) if s.use_box else None

        def task() -> jobs.Task:
            if s.image_source == "DATABLOCK":
                img = s.image
                if img is None:
                    raise ValueError("pick an image datablock")
                w, h = img.size
                if w == 0 or h == 0:
                    raise ValueError(f"image '{img.name}' has no pixels (is its file missing?)")
                rgb = jobs.pixels_to_rgb(img.pixels[:], w, h, img.channels)
                t = jobs.reconstruct(sampling(context), rgb=rgb, label=img.name,
                                     handedness=side, box=box)
                t.meta["image"] = img.name
                return t
            if not s.image_path:
                raise ValueError("choose a photo first")
            path = bpy.path.abspath(s.image_path)
            t = jobs.reconstruct(sampling(context), image=runner.image_bytes(path),
                                 label=Path(path).stem, handedness=side, box=box)
            t.meta["image_path"] = path
            return t

        return run(self, task)


class HHMR_OT_draw_box(bpy.types.Operator):
    """Drag a box around one hand on the photo in this Image Editor: Reconstruct then takes
    only that hand, and finds it where the detector alone does not"""

    bl_idname = "hhmr.draw_box"
    bl_label = "Draw Hand Box"

    @classmethod
    def poll(cls, context) -> bool:
        space = context.space_data
        return context.area is not None and context.area.type == "IMAGE_EDITOR" and \
            getattr(space, "image", None) is not None

    def invoke(self, context, event):
        self.start = self.end = None
        self.handle = bpy.types.SpaceImageEditor.draw_handler_add(
            self.draw, (context,), "WINDOW", "POST_PIXEL")
        context.window_manager.modal_handler_add(self)
        context.area.header_text_set("Drag around the hand; Esc cancels")
        return {"RUNNING_MODAL"}

    def draw(self, context) -> None:
        if self.start is None or self.end is None:
            return
        import gpu
        from gpu_extras.batch import batch_for_shader

        (x0, y0), (x1, y1) = self.start, self.end
        try:
            shader = gpu.shader.from_builtin("UNIFORM_COLOR")
        except ValueError:  # Blender before 3.5
            shader = gpu.shader.from_builtin("2D_UNIFORM_COLOR")
        batch = batch_for_shader(shader, "LINE_LOOP",
                                 {"pos": [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]})
        shader.uniform_float("color", (1.0, 0.8, 0.1, 1.0))
        batch.draw(shader)

    def finish(self, context) -> None:
        bpy.types.SpaceImageEditor.draw_handler_remove(self.handle, "WINDOW")
        context.area.header_text_set(None)
        context.area.tag_redraw()

    def modal(self, context, event):
        context.area.tag_redraw()
        if event.type in {"ESC", "RIGHTMOUSE"}:
            self.finish(context)
            return {"CANCELLED"}
        pos = (event.mouse_region_x, event.mouse_region_y)
        if event.type == "LEFTMOUSE" and event.value == "PRESS":
            self.start = self.end = pos
        elif event.type == "MOUSEMOVE" and self.start is not None:
            self.end = pos
        elif event.type == "LEFTMOUSE" and event.value == "RELEASE" and self.start:
            self.end = pos
            self.finish(context)
            img = context.space_data.image
            to_view = context.region.view2d.region_to_view
            w, h = img.size
            try:
                box = jobs.check_box(jobs.box_from_view(to_view(*self.start),
                                                        to_view(*self.end), w, h), w, h)
            except ValueError as err:
                self.report({"ERROR"}, str(err))
                return {"CANCELLED"}
            s = context.scene.hhmr
            s.image_source, s.image = "DATABLOCK", img
            s.box, s.use_box = tuple(float(v) for v in box), True
            self.report({"INFO"}, "hand box {:.0f}, {:.0f} - {:.0f}, {:.0f} px".format(*box))
            return {"FINISHED"}
        return {"RUNNING_MODAL"}


class HHMR_OT_inpaint(_Request):
    """Keep the selected vertices of the hand and regenerate the rest"""

    bl_idname = "hhmr.inpaint"
    bl_label = "Inpaint Selection"

    @classmethod
    def poll(cls, context) -> bool:
        return super().poll(context) and scene.is_hand(context.active_object)

    def execute(self, context):
        obj = context.active_object

        def task() -> jobs.Task:
            keep = scene.selected_vertices(obj)
            verts = scene.displayed_vertices(obj)
            made = beside(jobs.inpaint(verts, keep, obj.hhmr.handedness,
                                       target_for(context, obj, "inpaint"), sampling(context)),
                          obj)
            if obj.mode == "EDIT":  # only once the request is sound: an error keeps Edit Mode
                bpy.ops.object.mode_set(mode="OBJECT")
            return made

        return run(self, task)


class HHMR_OT_refit(_Request):
    """Fit hand meshes to the pose of the hand's armature (or its selected bones)"""

    bl_idname = "hhmr.refit"
    bl_label = "Refit to Armature"

    @classmethod
    def poll(cls, context) -> bool:
        return super().poll(context) and scene.hand_of(context.active_object) is not None

    def execute(self, context):
        hand = scene.hand_of(context.active_object)
        only = context.scene.hhmr.only_selected_bones

        def task() -> jobs.Task:
            kp, mask = scene.rig_keypoints(hand, runner.topology(), only)
            return beside(jobs.refit3d(kp, mask, hand.hhmr.handedness,
                                       target_for(context, hand, "refit3d"),
                                       sampling(context)), hand)

        return run(self, task)


class HHMR_OT_add_hand(bpy.types.Operator):
    """Add the backend's hand in its rest pose, with its armature, to pose by hand"""

    bl_idname = "hhmr.add_hand"
    bl_label = "Add Hand"
    bl_options = {"REGISTER", "UNDO"}

    handedness: bpy.props.EnumProperty(items=[("right", "Right", ""), ("left", "Left", "")])

    def execute(self, context):
        try:
            obj = scene.create_hand(runner.topology(), self.handedness,
                                    f"HHMR {self.handedness} hand")
        except EXPECTED as err:
            self.report({"ERROR"}, jobs.describe_error(err))
            return {"CANCELLED"}
        context.view_layer.objects.active = obj
        return {"FINISHED"}


class HHMR_OT_view_photo(bpy.types.Operator):
    """Look through the selected hand's photo camera, at the photo's size"""

    bl_idname = "hhmr.view_photo"
    bl_label = "View Photo"

    @classmethod
    def poll(cls, context) -> bool:
        hand = scene.hand_of(context.active_object)
        return hand is not None and hand.hhmr.camera is not None

    def execute(self, context):
        scene.look_through(scene.hand_of(context.active_object).hhmr.camera)
        if context.area is not None and context.area.type == "VIEW_3D":
            context.area.spaces.active.region_3d.view_perspective = "CAMERA"
        return {"FINISHED"}


class HHMR_OT_cancel(bpy.types.Operator):
    """Stop the running request"""

    bl_idname = "hhmr.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context) -> bool:
        return runner.busy()

    def execute(self, context):
        runner.cancel()
        return {"FINISHED"}


class _HypothesisOp(bpy.types.Operator):
    """An action on the hand's selected hypothesis (``act(obj, index)``), in object mode."""

    bl_options = {"REGISTER", "UNDO"}
    act = staticmethod(lambda obj, index: None)  # no annotation: bpy reads those as props

    @classmethod
    def poll(cls, context) -> bool:
        obj = context.active_object
        return scene.is_hand(obj) and 0 <= obj.hhmr.active_index < len(obj.hhmr.hypotheses)

    def execute(self, context):
        obj = context.active_object
        if obj.mode != "OBJECT":
            bpy.ops.object.mode_set(mode="OBJECT")
        self.act(obj, obj.hhmr.active_index)
        return {"FINISHED"}


class HHMR_OT_apply_hypothesis(_HypothesisOp):
    """Make the shown hypothesis the hand's basis shape"""

    bl_idname = "hhmr.apply_hypothesis"
    bl_label = "Apply as Basis"
    act = staticmethod(scene.apply_as_basis)


class HHMR_OT_delete_hypothesis(_HypothesisOp):
    """Delete the selected hypothesis (its shape key)"""

    bl_idname = "hhmr.delete_hypothesis"
    bl_label = "Delete Hypothesis"
    act = staticmethod(scene.delete_hypothesis)


class HHMR_OT_start_backend(bpy.types.Operator):
    """Start the backend command as a child process on the backend address"""

    bl_idname = "hhmr.start_backend"
    bl_label = "Start Local Backend"

    def execute(self, context):
        p = runner.prefs()
        try:
            local_backend.BACKEND.start(p.command, p.address)
        except EXPECTED as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        runner.STATE.info = None
        runner.STATE.topologies.clear()
        self.report({"INFO"}, f"Backend starting on {p.address} (log: "
                              f"{local_backend.BACKEND.log_path})")
        return {"FINISHED"}


class HHMR_OT_stop_backend(bpy.types.Operator):
    """Stop the backend this Blender started"""

    bl_idname = "hhmr.stop_backend"
    bl_label = "Stop Local Backend"

    def execute(self, context):
        local_backend.BACKEND.stop()
        runner.STATE.info = None
        return {"FINISHED"}


class HHMR_OT_check_backend(bpy.types.Operator):
    """Ask the backend for its description (info)"""

    bl_idname = "hhmr.check_backend"
    bl_label = "Check Connection"

    def execute(self, context):
        from .props import connection_text

        try:
            runner.info(refresh=True)
            runner.STATE.topologies.clear()
        except EXPECTED as err:
            runner.STATE.info = None
            self.report({"ERROR"}, jobs.describe_error(err))
            return {"CANCELLED"}
        self.report({"INFO"}, connection_text(runner.STATE.info))
        return {"FINISHED"}


CLASSES = (HHMR_OT_generate, HHMR_OT_reconstruct, HHMR_OT_draw_box, HHMR_OT_reconstruct_video,
           HHMR_OT_bake_to_rig, HHMR_OT_inpaint,
           HHMR_OT_refit,
           HHMR_OT_add_hand, HHMR_OT_view_photo, HHMR_OT_cancel, HHMR_OT_apply_hypothesis,
           HHMR_OT_delete_hypothesis, HHMR_OT_start_backend, HHMR_OT_stop_backend,
           HHMR_OT_check_backend)

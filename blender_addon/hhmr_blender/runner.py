"""Backend requests from Blender: one job at a time, polled by a timer so the UI never
freezes; in background mode (``blender -b``, the bpy module) timers never fire, so there the
request blocks. Results land through scene.apply_hypotheses, all at once or not at all."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np

from . import animate, jobs, local_backend, scene
from .handdata import HandTopology
from .hypotheses import HypothesisSet

POLL_S = 0.05
FORCE_ASYNC = False  # tests: use the timer path in background mode, polling by hand


@dataclass
class State:
    job: jobs.TrackedJob | None = None
    status: str = ""
    error: str = ""
    landed: list[str] = field(default_factory=list)  # names of the objects of the last result
    last_extra: dict = field(default_factory=dict)  # extra of the last result's first hand
    topologies: dict[str, HandTopology] = field(default_factory=dict)  # per backend address
    info: dict | None = None
    # when the running request's status line may change (and redraw)
    redraw: jobs.Throttle = field(default_factory=lambda: jobs.Throttle(jobs.STATUS_REDRAW_S,
                                                                        0.0))


STATE = State()


def prefs() -> bpy.types.AddonPreferences:
    return bpy.context.preferences.addons[__package__].preferences


def client(timeout_s: float | None = None, retries: int | None = None):
    p = prefs()
    return jobs.make_client(p.address, timeout_s or p.timeout_s,
                            p.retries if retries is None else retries)


INFO_TIMEOUT_S = 3.0  # the one blocking call (once per backend): keep a dead backend brief


def info(refresh: bool = False) -> dict:
    """The backend's ``info`` (blocking, short timeout); raises TimeoutError/RemoteError, or
    RuntimeError while the local backend this Blender started is still loading."""
    if STATE.info is None or refresh:
        address = prefs().address
        c = client(timeout_s=min(prefs().timeout_s, INFO_TIMEOUT_S), retries=0)
        job = c.submit("info")
        try:
            STATE.info = job.wait()
        except TimeoutError as err:
            age = local_backend.BACKEND.loading_for(address)
            if age is None:
                raise
            raise RuntimeError(f"The local backend started {age:.0f} s ago is still loading "
                               "its model: try again in a few seconds.") from err
        finally:
            job.close()
        if local_backend.BACKEND.address == address:
            local_backend.BACKEND.answered = True
    return STATE.info


def topology() -> HandTopology:
    address = prefs().address
    if address not in STATE.topologies:
        STATE.topologies[address] = HandTopology.from_info(info(refresh=True))
    return STATE.topologies[address]


def check() -> HandTopology:
    """Ask the backend for its ``info`` now (a stopped backend fails within INFO_TIMEOUT_S,
    not timeout_s) and keep its topology: one round trip before each request."""
    fresh = info(refresh=True)
    STATE.topologies[prefs().address] = topo = HandTopology.from_info(fresh)
    return topo


def busy() -> bool:
    return STATE.job is not None


def ensure_idle() -> None:
    if busy():
        raise RuntimeError("a request is already running: wait for it or cancel it")


def start(task: jobs.Task, checked: bool = False) -> list[str] | None:
    """Send ``task`` (after `check`, unless the caller has just checked); in background mode
    wait and land the result (returns the objects it landed on), else return None and let
    the timer land it."""
    ensure_idle()
    topo = topology() if checked else check()
    STATE.error, STATE.status = "", f"{task.op}: sent"
    STATE.job = jobs.TrackedJob(client(), task, topo.num_vertices, topo)
    if bpy.app.background and not FORCE_ASYNC:
        try:
            results = STATE.job.wait()
        except BaseException as err:
            _fail(err)
            raise
        return _land(results)
    _progress_begin()
    STATE.redraw = jobs.Throttle(jobs.STATUS_REDRAW_S, time.monotonic())
    bpy.app.timers.register(poll, first_interval=POLL_S)
    return None


def poll() -> float | None:
    """The timer: None (stop) once the job has ended, else the seconds to the next poll."""
    job = STATE.job
    if job is None:
        return None
    try:
        results = job.poll()
    except Exception as err:  # noqa: BLE001 - any failure ends the job, reported
        _fail(err)
        _popup(STATE.error)
        return None
    if results is None:
        frac, msg = job.progress
        status = jobs.progress_text(job.task.op, msg, frac, job.elapsed)
        # each redraw costs CPU the backend could use: at most one per STATUS_REDRAW_S
        if status != STATE.status and STATE.redraw.due(time.monotonic()):
            STATE.status = status
            _progress(frac)
        return POLL_S
    try:
        _land(results)
        if not bpy.app.background:
            bpy.ops.ed.undo_push(message=f"HHMR {job.task.op}")
    except Exception as err:  # noqa: BLE001
        _fail(err)
        _popup(STATE.error)
    return None


@bpy.app.handlers.persistent
def after_undo(*_args) -> None:
    """Undo and redo change what landed: the last result's status would speak of objects
    that are no longer (or again) there. A running request keeps its progress line."""
    if STATE.job is None:
        STATE.status, STATE.error, STATE.landed = "", "", []


def cancel() -> None:
    if STATE.job is not None:
        STATE.job.cancel()
        STATE.status = f"{STATE.job.task.op}: cancelling"


def _land(results: list[HypothesisSet]) -> list[str]:
    job, STATE.job = STATE.job, None
    _progress_end()
    try:
        names = land(results, job.task)
    finally:
        job.close()
    STATE.landed = names
    if job.task.op == "reconstruct_video":
        clip = results[0]
        STATE.last_extra = {}
        STATE.status = f"{job.task.op}: {len(clip)} frames ({clip.detected.mean():.0%} with " \
                       f"the hand seen) on {', '.join(names)} in {job.elapsed:.1f} s"
        return names
    STATE.last_extra = results[0].extra if results else {}
    n = sum(len(r) for r in results)
    STATE.status = f"{job.task.op}: {n} hypotheses on {', '.join(names)} in " \
                   f"{job.elapsed:.1f} s"
    return names


def land(results: list[HypothesisSet], task: jobs.Task) -> list[str]:
    """Put results into the scene, on the task's target hand or on new hands: all of them or,
    if anything fails, none (new objects are removed again). A video lands as a new
    animated hand (animate.land_clip)."""
    topo = topology()
    if task.op == "reconstruct_video":
        frame_end = bpy.context.scene.frame_end
        names = animate.land_clip(results[0], topo)
        target = bpy.data.objects.get(task.meta.get("bake_to", ""))
        if target is not None:
            hand = bpy.data.objects[names[0]]
            try:
                animate.bake_hand(hand, target, task.meta.get("bone_map", "AUTO"),
                                  task.meta.get("move_hand", False))
            except BaseException:  # the whole result or nothing
                motion = hand.parent.animation_data.action
                scene.remove_objects([hand, hand.parent])
                bpy.data.actions.remove(motion)
                bpy.context.scene.frame_end = frame_end
                raise
            names.append(target.name)
        return names
    target = bpy.data.objects.get(task.target) if task.target else None
    if task.target and not scene.is_hand(target):
        raise ValueError(f"the hand '{task.target}' is gone")
    for hset in results:  # check everything before touching the scene
        hset.check(len(target.data.vertices) if target else topo.num_vertices)
    created: list[bpy.types.Object] = []
    names = []
    # a photo's camera and hands sit beside those of the photos before it
    shift = scene.photo_slot() if task.op == "reconstruct" else np.zeros(3)
    camera = None
    try:
        for hset in results:
            obj, pose, weights = target, None, None
            if obj is None:
                location = hset.location
                source = bpy.data.objects.get(task.meta.get("beside", ""))
                if location is None and source is not None:
                    location = scene.beside(source)
                elif location is not None:
                    location = np.asarray(location) + shift
                obj = scene.create_hand(topo, hset.handedness, f"HHMR {hset.label}".strip(),
                                        location=location)
                created += [obj, obj.parent]
                if task.op == "reconstruct":
                    if camera is None:  # one camera per photo, shared by its hands
                        camera = _camera_for(task, hset, obj, shift)
                        created += [camera] if camera is not None else []
                    obj.hhmr.camera = camera
            elif task.meta.get("posed") and hset.rig is None:  # else its own pose
                pose = scene.bone_matrices(obj, topo)
                weights = scene.skin_weights(obj, topo)
            scene.apply_hypotheses(obj, hset, pose, weights, topo)
            names.append(obj.name)
    except BaseException:
        scene.remove_objects(created)
        raise
    return names


def _camera_for(task: jobs.Task, hset: HypothesisSet, obj: bpy.types.Object,
                shift: np.ndarray) -> bpy.types.Object | None:
    """The photo's camera (its intrinsics, the photo as background), made the scene's."""
    K, size = hset.extra.get("K"), hset.extra.get("image_size")
    if K is None or not size:
        return None
    image = bpy.data.images.get(task.meta.get("image", ""))
    if image is None and task.meta.get("image_path"):
        image = bpy.data.images.load(task.meta["image_path"], check_existing=True)
    cam = scene.create_camera(f"{task.label or obj.name} camera", np.asarray(K), int(size[0]),
                              int(size[1]), image, location=shift)
    scene.look_through(cam)
    return cam


def _fail(err: BaseException) -> None:
    job, STATE.job = STATE.job, None
    _progress_end()
    if job is not None:
        job.close()
    STATE.error = jobs.describe_error(err)
    STATE.status = ""
    print(f"HHMR: {STATE.error}")


# ---------------------------------------------------------------------------- UI feedback

def _windows():
    wm = bpy.context.window_manager
    return list(wm.windows) if wm is not None else []


def _progress_begin() -> None:
    if not bpy.app.background:
        bpy.context.window_manager.progress_begin(0, 100)


def _progress(frac: float) -> None:
    if bpy.app.background:
        return
    bpy.context.window_manager.progress_update(int(frac * 100))
    for win in _windows():
        win.workspace.status_text_set(f"HHMR {STATE.status}  (Cancel: HHMR panel)")
    _redraw()


def _progress_end() -> None:
    if bpy.app.background:
        return
    bpy.context.window_manager.progress_end()
    for win in _windows():
        win.workspace.status_text_set(None)
    _redraw()


def _redraw() -> None:
    """The sidebars that show the status; the 3D views themselves redraw when the scene
    changes (redrawing them on every poll would take a software-GL Blender's CPU)."""
    for win in _windows():
        for area in win.screen.areas:
            if area.type == "VIEW_3D":
                for region in area.regions:
                    if region.type == "UI":
                        region.tag_redraw()


def _popup(text: str) -> None:
    if bpy.app.background or not text:
        return

    def draw(menu, _context):
        menu.layout.label(text=text)

    bpy.context.window_manager.popup_menu(draw, title="HHMR", icon="ERROR")


MAX_VIDEO_BYTES = 60 << 20  # under the backend's 64 MiB message limit


def video_bytes(path: str) -> bytes:
    """The bytes of a video file (absolute path), refused above MAX_VIDEO_BYTES."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no video file at {p}")
    size = p.stat().st_size
    if size > MAX_VIDEO_BYTES:
        raise ValueError(f"{p.name} is {size / 2**20:.0f} MiB, more than the backend takes in "
                         f"one request ({MAX_VIDEO_BYTES >> 20} MiB): give a frame range and "
                         "cut it, or run 'hhmr reconstruct-video' on it")
    return p.read_bytes()


def sequence_bytes(files: list[Path]) -> list[bytes]:
    """The bytes of an image sequence's files, refused above MAX_VIDEO_BYTES in all."""
    if not files:
        raise ValueError("no frames of the image sequence in the range asked")
    total = sum(p.stat().st_size for p in files)
    if total > MAX_VIDEO_BYTES:
        raise ValueError(f"the {len(files)} frames are {total / 2**20:.0f} MiB, more than the "
                         f"backend takes in one request ({MAX_VIDEO_BYTES >> 20} MiB): use "
                         "'Every' or a shorter range, or run 'hhmr reconstruct-video FOLDER'")
    return [p.read_bytes() for p in files]


def image_bytes(path: str) -> bytes:
    """The bytes of an image file (an absolute path: bpy.path.abspath it first)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no image file at {p}")
    return p.read_bytes()

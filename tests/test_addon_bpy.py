"""The add-on in real bpy (the Blender 5.0 wheel) against a real backend on loopback."""

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from backend_process import free_port, start_server, stop_server
from hhmr.paths import weights_dir

bpy = pytest.importorskip("bpy")
ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "real_photos"
pytestmark = pytest.mark.skipif(not (weights_dir() / "hhmr_prior.pt").exists(),
                                reason="no trained weights")


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = start_server(port)
    yield f"tcp://127.0.0.1:{port}"
    stop_server(proc)


@pytest.fixture(scope="module")
def addon(server):
    import addon_utils

    sys.path.insert(0, str(ROOT / "blender_addon"))
    mod = addon_utils.enable("hhmr_blender", default_set=True)
    assert mod is not None
    from hhmr_blender import runner

    yield mod
    runner.FORCE_ASYNC = False
    addon_utils.disable("hhmr_blender", default_set=True)
    assert not hasattr(bpy.types, "HHMR_PT_main")


@pytest.fixture
def ctx(addon, server):
    """An empty scene, the add-on pointed at the test backend."""
    from hhmr_blender import runner

    for coll in (bpy.data.objects, bpy.data.meshes, bpy.data.armatures, bpy.data.cameras,
                 bpy.data.images):
        for item in list(coll):
            coll.remove(item)
    prefs = runner.prefs()
    prefs.address, prefs.timeout_s, prefs.retries = server, 30.0, 0
    runner.STATE.info, runner.STATE.error, runner.STATE.status = None, "", ""
    runner.STATE.topologies.clear()
    runner.FORCE_ASYNC = False
    s = bpy.context.scene.hhmr
    s.n, s.steps, s.seed, s.guidance_strength = 3, 4, 0, 1.0
    return runner


def keys(obj):
    n = len(obj.data.vertices)
    out = {}
    for kb in obj.data.shape_keys.key_blocks:
        co = np.empty(n * 3, np.float32)
        kb.data.foreach_get("co", co)
        out[kb.name] = (co.reshape(n, 3), kb.value)
    return out


def reprojection_error_px(ctx, hand, size: int) -> float:
    """Mean pixel distance between the shown hand's joints seen through its camera (a square
    photo of ``size`` pixels) and the keypoints the detector found in the photo."""
    from bpy_extras.object_utils import world_to_camera_view
    from hhmr_blender import scene
    from mathutils import Vector

    render = bpy.context.scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = size, size, 100
    kp = ctx.topology().keypoint_regressor @ scene.displayed_vertices(hand)
    uv = np.array([world_to_camera_view(bpy.context.scene, hand.hhmr.camera,
                                        hand.matrix_world @ Vector(p))[:2] for p in kp])
    pix = np.stack([uv[:, 0] * size, (1 - uv[:, 1]) * size], axis=1)
    return float(np.linalg.norm(pix - ctx.STATE.last_extra["keypoints2d"], axis=1).mean())


def new_hand(ctx, name="Hand"):
    bpy.ops.hhmr.add_hand(handedness="right")
    obj = bpy.context.view_layer.objects.active
    obj.name = name
    return obj


def add_user_key(obj, value=0.3):
    if obj.data.shape_keys is None:
        obj.shape_key_add(name="Basis", from_mix=False)
    kb = obj.shape_key_add(name="my smile", from_mix=False)
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    kb.data.foreach_get("co", co)
    co += 0.01
    kb.data.foreach_set("co", co)
    kb.value = value
    return keys(obj)["my smile"]


def test_registered_ui(addon):
    assert bpy.types.HHMR_PT_main.bl_category == "Hand"
    assert bpy.types.HHMR_PT_main.bl_region_type == "UI"
    for op in ("generate", "reconstruct", "inpaint", "refit", "add_hand", "view_photo", "cancel",
               "apply_hypothesis", "delete_hypothesis", "start_backend", "stop_backend",
               "check_backend"):
        assert hasattr(bpy.ops.hhmr, op)


def test_check_connection(ctx):
    assert bpy.ops.hhmr.check_backend() == {"FINISHED"}
    assert ctx.STATE.info["topology"]["num_vertices"] == 803


def test_hand_is_rigged_like_the_backend(ctx):
    obj = new_hand(ctx)
    topo = ctx.topology()
    assert len(obj.data.vertices) == topo.num_vertices
    assert len(obj.data.polygons) == len(topo.faces)
    rig = obj.parent
    assert rig.type == "ARMATURE" and len(rig.data.bones) == 16
    assert [g.name for g in obj.vertex_groups] == list(topo.joint_names)
    from hhmr_blender import handdata, scene

    w = scene.skin_weights(obj, topo)
    assert np.abs(w - topo.skin_weights).max() < 1e-6
    # Blender's armature modifier and our skinning agree on a posed rig
    for name, angle in (("index_pip", 0.9), ("thumb_mcp", 0.5), ("wrist", 0.3)):
        pb = rig.pose.bones[name]
        pb.rotation_mode = "XYZ"
        pb.rotation_euler = (angle, 0.2, 0.0)
    bpy.context.view_layer.update()
    shown = scene.displayed_vertices(obj)
    ours = handdata.skin(topo.template, topo.skin_weights, scene.bone_matrices(obj, topo))
    assert np.abs(shown - ours).max() < 1e-5
    assert np.abs(shown - topo.template).max() > 0.01  # it did move


def test_generate_lands_shape_keys_and_keeps_user_keys(ctx):
    obj = new_hand(ctx)
    mine = add_user_key(obj)
    assert bpy.ops.hhmr.generate() == {"FINISHED"}
    k = keys(obj)
    assert list(k) == ["Basis", "my smile", "hyp_00", "hyp_01", "hyp_02"]
    assert [k[f"hyp_0{i}"][1] for i in range(3)] == [1.0, 0.0, 0.0]  # the best is shown
    for i in range(3):
        co = k[f"hyp_0{i}"][0]
        assert co.shape == (803, 3) and np.isfinite(co).all()
        assert np.abs(co - k["Basis"][0]).max() > 0.005  # a different hand
    scores = [h.score for h in obj.hhmr.hypotheses]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert not any(h.central for h in obj.hhmr.hypotheses)  # random draws for generating
    assert [h.key_name for h in obj.hhmr.hypotheses] == ["hyp_00", "hyp_01", "hyp_02"]
    # a second request replaces our keys, never the user's
    bpy.context.scene.hhmr.n, bpy.context.scene.hhmr.seed = 2, 5
    bpy.ops.hhmr.generate()
    k2 = keys(obj)
    assert list(k2) == ["Basis", "my smile", "hyp_00", "hyp_01"]
    assert np.array_equal(k2["my smile"][0], mine[0]) and k2["my smile"][1] == mine[1]
    assert not np.allclose(k2["hyp_00"][0], k["hyp_00"][0])
    assert np.array_equal(k2["Basis"][0], k["Basis"][0])
    bpy.context.scene.hhmr.variety = "TYPICAL"  # the network alone: other hands, same seed
    try:
        assert bpy.ops.hhmr.generate() == {"FINISHED"}
    finally:
        bpy.context.scene.hhmr.variety = "DEFAULT"
    assert not np.allclose(keys(obj)["hyp_00"][0], k2["hyp_00"][0], atol=1e-4)


def test_show_apply_delete(ctx):
    obj = new_hand(ctx)
    bpy.ops.hhmr.generate()
    mine = add_user_key(obj)
    obj.hhmr.active_index = 2
    k = keys(obj)
    assert (k["hyp_00"][1], k["hyp_02"][1], k["my smile"][1]) == (0.0, 1.0, mine[1])
    assert bpy.ops.hhmr.apply_hypothesis() == {"FINISHED"}
    k2 = keys(obj)
    assert np.array_equal(k2["Basis"][0], k["hyp_02"][0])
    co = np.empty(803 * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    assert np.array_equal(co.reshape(-1, 3), k["hyp_02"][0])
    assert list(k2) == ["Basis", "hyp_00", "hyp_01", "my smile"]
    assert obj.hhmr.active_index == -1  # the basis shows, so no hypothesis is highlighted
    assert np.array_equal(k2["my smile"][0], mine[0])
    obj.hhmr.active_index = 0
    assert bpy.ops.hhmr.delete_hypothesis() == {"FINISHED"}
    assert list(keys(obj)) == ["Basis", "hyp_01", "my smile"]
    assert [h.key_name for h in obj.hhmr.hypotheses] == ["hyp_01"]


def test_undo_restores_previous_keys(ctx):
    obj = new_hand(ctx)
    bpy.ops.hhmr.generate()
    bpy.ops.ed.undo_push(message="before")
    before = keys(bpy.data.objects["Hand"])
    bpy.context.scene.hhmr.seed = 9
    bpy.ops.hhmr.generate()
    assert not np.array_equal(keys(obj)["hyp_00"][0], before["hyp_00"][0])
    bpy.ops.ed.undo_push(message="after")  # what Blender's UI does after an operator
    assert ctx.STATE.status.startswith("generate: 3 hypotheses")
    bpy.ops.ed.undo()
    after = keys(bpy.data.objects["Hand"])
    assert np.array_equal(after["hyp_00"][0], before["hyp_00"][0])
    assert ctx.STATE.status == ""  # no longer speaks of the undone result


def test_inpaint_selection_keeps_selected_vertices(ctx):
    from hhmr_blender import scene

    obj = new_hand(ctx)
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.select_all(action="DESELECT")
    bpy.ops.object.mode_set(mode="OBJECT")
    keep = obj.data.vertices
    sel = np.array([v.co.y < 0.09 for v in keep])  # palm kept, fingers regenerated
    obj.data.vertices.foreach_set("select", sel)
    shown = scene.displayed_vertices(obj)
    bpy.ops.object.mode_set(mode="EDIT")
    assert bpy.ops.hhmr.inpaint() == {"FINISHED"}
    assert obj.mode == "OBJECT"
    hands = []
    for i in range(3):  # each as shown: its rest-space key under its pose
        obj.hhmr.active_index = i
        hands.append(scene.displayed_vertices(obj))
        assert np.abs(hands[i][sel] - shown[sel]).max() < 1e-4
    assert np.abs(hands[0][~sel] - hands[1][~sel]).max() > 1e-3


def test_refit_follows_the_posed_rig(ctx):
    from hhmr_blender import scene

    obj = new_hand(ctx)
    rig = obj.parent
    for name in ("index_mcp", "index_pip", "middle_pip"):
        pb = rig.pose.bones[name]
        pb.rotation_mode = "XYZ"
        pb.rotation_euler = (0.8, 0.0, 0.0)
    bpy.context.view_layer.update()
    topo = ctx.topology()
    kp, _ = scene.rig_keypoints(obj, topo)
    bpy.context.view_layer.objects.active = rig
    assert bpy.ops.hhmr.refit() == {"FINISHED"}
    bpy.context.view_layer.update()
    shown = scene.displayed_vertices(obj)  # hyp_00 through the rig
    err = np.linalg.norm(topo.keypoint_regressor @ shown - kp, axis=1)
    assert err.mean() < 0.006, err
    central = [h.central for h in obj.hhmr.hypotheses]
    assert central[0] and not any(central[1:])  # the sampler's central guess shows first
    bpy.context.scene.hhmr.first_hypothesis = "RANDOM"
    assert bpy.ops.hhmr.refit() == {"FINISHED"}
    assert not any(h.central for h in obj.hhmr.hypotheses)
    bpy.context.scene.hhmr.first_hypothesis = "DEFAULT"
    # only the selected bones: the other keypoints are free
    bpy.context.scene.hhmr.only_selected_bones = True
    for pb in rig.pose.bones:
        sel = pb.name.startswith("index") or pb.name == "wrist"
        if hasattr(pb, "select"):
            pb.select = sel
        else:
            pb.bone.select = sel
    _, mask = scene.rig_keypoints(obj, topo, only_selected=True)
    assert mask.sum() == 5
    assert bpy.ops.hhmr.refit() == {"FINISHED"}
    bpy.context.scene.hhmr.only_selected_bones = False


@pytest.mark.skipif(not PHOTOS.exists(), reason="no ../shared/data")
def test_reconstruct_from_file_and_datablock(ctx):
    photo = PHOTOS / "freihand_style" / "119.jpg"
    s = bpy.context.scene.hhmr
    s.image_source, s.image_path = "FILE", str(photo)
    assert bpy.ops.hhmr.reconstruct() == {"FINISHED"}
    (name,) = ctx.STATE.landed
    obj = bpy.data.objects[name]
    assert len(obj.hhmr.hypotheses) == 3 and len(keys(obj)) == 4
    cam = obj.hhmr.camera
    assert cam is not None and cam.data.background_images[0].image.name == "119.jpg"
    # the hand sits in front of the camera, along +Y, and its joints project onto the photo
    # where the detector found them
    assert obj.parent.location.y > 0.1
    assert reprojection_error_px(ctx, obj, 224) < 12.0
    first = keys(obj)["hyp_00"][0]
    img = bpy.data.images.load(str(photo), check_existing=True)
    s.image_source, s.image = "DATABLOCK", img
    assert bpy.ops.hhmr.reconstruct() == {"FINISHED"}
    obj2 = bpy.data.objects[ctx.STATE.landed[0]]
    # the same photo, sent as pixels: a JPEG decoded by Blender and by PIL agree closely
    assert np.abs(keys(obj2)["hyp_00"][0] - first).max() < 0.01


@pytest.mark.skipif(not PHOTOS.exists(), reason="no ../shared/data")
def test_a_hand_box_finds_the_gloved_hand_the_detector_misses(ctx):
    s = bpy.context.scene.hhmr
    s.image_source, s.image_path = "FILE", str(PHOTOS / "wild" / "test4.jpg")
    s.use_box, s.handedness = False, "AUTO"
    with pytest.raises(RuntimeError, match="No hand found"):
        bpy.ops.hhmr.reconstruct()
    s.use_box, s.box = True, (470, 720, 1030, 1600)  # the lower gloved hand
    try:
        assert bpy.ops.hhmr.reconstruct() == {"FINISHED"}
    finally:
        s.use_box = False
    (name,) = ctx.STATE.landed
    obj = bpy.data.objects[name]
    assert len(obj.hhmr.hypotheses) == 3 and obj.hhmr.camera is not None
    s.use_box, s.box = True, (5000, 0, 6000, 10)  # off the photo: said before any request
    try:
        with pytest.raises(RuntimeError, match="box"):
            bpy.ops.hhmr.reconstruct()
    finally:
        s.use_box = False


def test_no_hand_is_reported_and_changes_nothing(ctx, tmp_path):
    blank = bpy.data.images.new("blank", 64, 64)
    s = bpy.context.scene.hhmr
    s.image_source, s.image = "DATABLOCK", blank
    before = set(bpy.data.objects.keys())
    with pytest.raises(RuntimeError, match="No hand found"):
        bpy.ops.hhmr.reconstruct()
    assert set(bpy.data.objects.keys()) == before and "No hand" in ctx.STATE.error
    s.image_source, s.image_path = "FILE", str(tmp_path / "missing.jpg")
    with pytest.raises(RuntimeError, match="no image file"):
        bpy.ops.hhmr.reconstruct()


def test_timer_path_polls_and_cancels(ctx):
    """The GUI path: the operator returns at once and runner.poll (the timer) lands it."""
    obj = new_hand(ctx)
    ctx.FORCE_ASYNC = True
    assert bpy.ops.hhmr.generate() == {"FINISHED"} and ctx.busy()
    assert not bpy.ops.hhmr.generate.poll()  # one request at a time
    t0 = time.monotonic()
    while ctx.poll() is not None:
        assert time.monotonic() - t0 < 60
        time.sleep(0.02)
    assert not ctx.busy() and len(keys(obj)) == 4
    before = keys(obj)
    s = bpy.context.scene.hhmr
    s.n, s.steps = 64, 200  # long enough to cancel
    bpy.ops.hhmr.generate()
    # the status line's changes, stamped by the throttle's clock: at most one per 0.5 s
    first, shown, t1 = ctx.STATE.status, [], time.monotonic()
    while time.monotonic() - t1 < 1.6:
        assert ctx.poll() is not None
        if ctx.STATE.status != (shown[-1][1] if shown else first):
            shown.append((ctx.STATE.redraw.last, ctx.STATE.status))
        time.sleep(0.02)
    assert len(shown) >= 2 and shown[-1][1].startswith("generate: ")
    assert all(b[0] - a[0] >= 0.5 for a, b in zip(shown, shown[1:], strict=False))
    assert bpy.ops.hhmr.cancel() == {"FINISHED"}
    while ctx.poll() is not None:
        assert time.monotonic() - t0 < 120
        time.sleep(0.02)
    assert ctx.STATE.error == "Cancelled."
    after = keys(obj)
    assert list(after) == list(before)
    assert all(np.array_equal(after[k][0], before[k][0]) for k in before)


def test_backend_dying_mid_request_changes_nothing(ctx):
    port = free_port()
    proc = start_server(port)
    prefs = ctx.prefs()
    # the setup request may build a trace for its batch size: a generous timeout (this VM
    # has phases ten times slower than usual); the request that the kill cuts off, 3 s
    prefs.address, prefs.timeout_s, prefs.retries = f"tcp://127.0.0.1:{port}", 60.0, 0
    obj = new_hand(ctx)
    assert bpy.ops.hhmr.generate() == {"FINISHED"}, ctx.STATE.error
    add_user_key(obj)
    before = keys(obj)
    prefs.timeout_s = 3.0
    ctx.FORCE_ASYNC = True
    s = bpy.context.scene.hhmr
    s.n, s.steps = 64, 200
    bpy.ops.hhmr.generate()
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    while ctx.poll() is not None:
        assert time.monotonic() - t0 < 60
        time.sleep(0.05)
    assert "No answer from the backend" in ctx.STATE.error
    after = keys(obj)
    assert list(after) == list(before)
    assert all(np.array_equal(after[k][0], before[k][0]) and after[k][1] == before[k][1]
               for k in before)
    ctx.FORCE_ASYNC = False  # the blocking path fails the same way
    with pytest.raises(RuntimeError, match="No answer"):
        bpy.ops.hhmr.generate()
    assert list(keys(obj)) == list(before)


def test_shape_keys_land_all_or_nothing(ctx, monkeypatch):
    from hhmr_blender import scene
    from hhmr_blender.hypotheses import HypothesisSet

    obj = new_hand(ctx)
    bpy.ops.hhmr.generate()
    before = keys(obj)
    n = len(obj.data.vertices)
    good = np.random.default_rng(0).normal(scale=0.05, size=(3, n, 3)).astype(np.float32)
    calls = []

    def failing(kb, co):
        calls.append(kb.name)
        if len(calls) == 2:
            raise MemoryError("simulated failure while writing a key")
        kb.data.foreach_set("co", co)

    monkeypatch.setattr(scene, "_write_key", failing)
    hset = HypothesisSet.ranked(good, np.zeros((3, 21, 3)), np.arange(3.0), "generate")
    with pytest.raises(MemoryError):
        scene.apply_hypotheses(obj, hset)
    assert list(keys(obj)) == list(before)
    monkeypatch.undo()
    bad = good.copy()
    bad[1, 5] = np.nan
    for wrong in (HypothesisSet.ranked(bad, np.zeros((3, 21, 3)), np.arange(3.0), "x"),
                  HypothesisSet.ranked(good[:, :-1], np.zeros((3, 21, 3)), np.arange(3.0),
                                       "x")):
        with pytest.raises(ValueError):
            scene.apply_hypotheses(obj, wrong)
    after = keys(obj)
    assert list(after) == list(before)
    assert all(np.array_equal(after[k][0], before[k][0]) for k in before)


def test_start_and_stop_local_backend(ctx):
    from hhmr_blender import local_backend

    prefs = ctx.prefs()
    prefs.address = f"tcp://127.0.0.1:{free_port()}"
    prefs.command = sys.executable  # a Python with hhmr installed
    assert bpy.ops.hhmr.start_backend() == {"FINISHED"}
    proc = local_backend.BACKEND.proc
    try:
        info = local_backend.BACKEND.wait_ready(ctx.client(timeout_s=5.0), timeout=120)
        assert info["topology"]["num_vertices"] == 803
        local_backend.BACKEND.answered = False
        assert bpy.ops.hhmr.check_backend() == {"FINISHED"}
        assert local_backend.BACKEND.answered  # an answer marks it loaded
        with pytest.raises(RuntimeError, match="already running"):
            bpy.ops.hhmr.start_backend()
    finally:
        assert bpy.ops.hhmr.stop_backend() == {"FINISHED"}
    assert proc.poll() is not None and not local_backend.BACKEND.running
    prefs.command = str(Path(sys.executable).parent / "no-such-hhmr")
    with pytest.raises(RuntimeError, match="not found"):
        bpy.ops.hhmr.start_backend()


def test_a_press_while_the_local_backend_loads_says_so(ctx, tmp_path):
    """Until the backend this Blender started first answers (it loads and warms its model
    for several seconds), a press says it is still loading rather than "no answer"."""
    from hhmr_blender import local_backend

    slow = tmp_path / "slow-hhmr"  # a backend that never gets to answer
    slow.write_text("#!/bin/sh\nexec sleep 60\n")
    slow.chmod(0o755)
    prefs = ctx.prefs()
    prefs.address, prefs.command = f"tcp://127.0.0.1:{free_port()}", str(slow)
    assert bpy.ops.hhmr.start_backend() == {"FINISHED"}
    try:
        with pytest.raises(RuntimeError, match="still loading its model"):
            bpy.ops.hhmr.check_backend()
        with pytest.raises(RuntimeError, match="still loading its model"):
            bpy.ops.hhmr.generate()
        local_backend.BACKEND.answered = True  # a backend that answered once and hangs now
        with pytest.raises(RuntimeError, match="No answer from the backend"):
            bpy.ops.hhmr.check_backend()
    finally:
        assert bpy.ops.hhmr.stop_backend() == {"FINISHED"}


@pytest.mark.skipif(not PHOTOS.exists(), reason="no ../shared/data")
def test_reconstruct_left_hand(ctx):
    """A left hand (forced, as the Hand menu does) lands mirrored, with outward normals, and
    its joints still project where the detector found them."""
    from hhmr_blender import scene

    photo = PHOTOS.parent / "real_interhand_sample" / "rgb" / "00000003.jpg"
    s = bpy.context.scene.hhmr
    s.image_source, s.image_path, s.handedness = "FILE", str(photo), "left"
    try:
        assert bpy.ops.hhmr.reconstruct() == {"FINISHED"}
    finally:
        s.handedness = "AUTO"
    obj = bpy.data.objects[ctx.STATE.landed[0]]
    assert obj.hhmr.handedness == "left"
    # reversed winding keeps the normals pointing out of the mirrored mesh
    v = scene.displayed_vertices(obj).astype(np.float64)
    tri = np.array([list(p.vertices) for p in obj.data.polygons])
    volume = np.einsum("ij,ij->i", v[tri[:, 0]], np.cross(v[tri[:, 1]], v[tri[:, 2]])).sum()
    assert volume > 0
    assert reprojection_error_px(ctx, obj, 256) < 15.0


def test_failed_landing_leaves_no_new_objects(ctx, monkeypatch):
    """A reconstruction whose second hand fails to land removes the first hand too."""
    from hhmr_blender import jobs, scene
    from hhmr_blender.hypotheses import HypothesisSet

    n = ctx.topology().num_vertices
    good = HypothesisSet.ranked(np.zeros((2, n, 3), np.float32), np.zeros((2, 21, 3)),
                                np.arange(2.0), "reconstruct", location=np.zeros(3),
                                label="a", extra={"K": np.eye(3), "image_size": [4, 4]})
    second = HypothesisSet.ranked(np.zeros((2, n, 3), np.float32), np.zeros((2, 21, 3)),
                                  np.arange(2.0), "reconstruct", label="b")
    task = jobs.reconstruct(jobs.Sampling(), rgb=np.zeros((4, 4, 3), np.uint8))
    real, calls = scene.apply_hypotheses, []

    def fail_second(obj, hset, *a):
        calls.append(obj.name)
        if len(calls) == 2:
            raise RuntimeError("simulated failure on the second hand")
        return real(obj, hset, *a)

    monkeypatch.setattr(scene, "apply_hypotheses", fail_second)
    before = (set(bpy.data.objects.keys()), len(bpy.data.meshes), len(bpy.data.armatures),
              len(bpy.data.cameras))
    with pytest.raises(RuntimeError, match="second hand"):
        ctx.land([good, second], task)
    after = (set(bpy.data.objects.keys()), len(bpy.data.meshes), len(bpy.data.armatures),
             len(bpy.data.cameras))
    assert after == before and len(calls) == 2
    bad = HypothesisSet.ranked(np.zeros((2, n - 1, 3), np.float32), np.zeros((2, 21, 3)),
                               np.arange(2.0), "reconstruct", label="c")
    with pytest.raises(ValueError, match="vertices"):  # checked before anything is made
        ctx.land([good, bad], task)
    assert len(calls) == 2


def test_new_hands_look_finished_and_operators_read_the_base_mesh(ctx):
    """Smooth shading and a Subdivision modifier by default; Inpaint, Refit and reading the
    shown hand use the backend's 803 vertices beneath the subdivision; left and right."""
    from hhmr_blender import scene

    obj = new_hand(ctx)
    smooth = np.zeros(len(obj.data.polygons), bool)
    obj.data.polygons.foreach_get("use_smooth", smooth)
    assert smooth.all()
    assert [m.type for m in obj.modifiers] == ["ARMATURE", "SUBSURF"]
    depsgraph = bpy.context.evaluated_depsgraph_get()
    assert len(obj.evaluated_get(depsgraph).data.vertices) > 803  # subdivided on screen
    rest = scene.displayed_vertices(obj)
    assert rest.shape == (803, 3)
    assert obj.modifiers[scene.SUBDIVISION].show_viewport  # left as it was
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.select_all(action="DESELECT")
    bpy.ops.object.mode_set(mode="OBJECT")
    obj.data.vertices.foreach_set("select", np.array([v.co.y < 0.09 for v in obj.data.vertices]))
    assert bpy.ops.hhmr.inpaint() == {"FINISHED"}
    assert bpy.ops.hhmr.refit() == {"FINISHED"}  # a new hand: inpainted results held
    bpy.ops.hhmr.add_hand(handedness="left")
    left = bpy.context.view_layer.objects.active
    assert left.hhmr.handedness == "left"
    assert np.allclose(scene.displayed_vertices(left), rest * [-1, 1, 1], atol=1e-6)


def test_results_of_another_kind_are_never_replaced_unasked(ctx):
    """Refit on a generated hand (Results: Automatic) lands on a new hand beside it and
    leaves the generated hypotheses alone; New hand and Replace do what they say."""
    s = bpy.context.scene.hhmr
    obj = new_hand(ctx)
    assert bpy.ops.hhmr.generate() == {"FINISHED"}
    generated = keys(obj)
    assert ctx.STATE.landed == [obj.name]
    assert bpy.ops.hhmr.refit() == {"FINISHED"}
    refitted = bpy.data.objects[ctx.STATE.landed[0]]
    assert refitted != obj and {h.op for h in refitted.hhmr.hypotheses} == {"refit3d"}
    assert {k: v[0].tobytes() for k, v in keys(obj).items()} == \
        {k: v[0].tobytes() for k, v in generated.items()}
    gap = refitted.parent.matrix_world.translation - obj.parent.matrix_world.translation
    assert abs(gap.x - 0.25) < 1e-6  # beside it, not on top
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.hhmr.generate() == {"FINISHED"}  # same kind: replaced in place
    assert ctx.STATE.landed == [obj.name]
    try:
        s.result_target = "NEW"
        assert bpy.ops.hhmr.generate() == {"FINISHED"}
        assert ctx.STATE.landed[0] not in (obj.name, refitted.name)
        s.result_target = "REPLACE"
        bpy.context.view_layer.objects.active = obj
        assert bpy.ops.hhmr.refit() == {"FINISHED"}
        assert ctx.STATE.landed == [obj.name]
        assert {h.op for h in obj.hhmr.hypotheses} == {"refit3d"}
    finally:
        s.result_target = "AUTO"


def test_inpaint_error_keeps_edit_mode(ctx):
    obj = new_hand(ctx)
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.select_all(action="DESELECT")
    with pytest.raises(RuntimeError, match="select the vertices"):  # nothing to keep
        bpy.ops.hhmr.inpaint()
    assert obj.mode == "EDIT"
    bpy.ops.object.mode_set(mode="OBJECT")


def test_a_stopped_backend_fails_fast(ctx):
    """With a connection checked earlier and the backend gone since, Generate fails within
    the connection check's time, not the request timeout (it waited 61 s)."""
    new_hand(ctx)
    ctx.topology()  # connected once
    prefs = ctx.prefs()
    real = prefs.address
    ctx.STATE.topologies[f"tcp://127.0.0.1:{free_port()}"] = ctx.topology()
    prefs.address = next(a for a in ctx.STATE.topologies if a != real)
    t0 = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="no word from"):
            bpy.ops.hhmr.generate()
    finally:
        prefs.address = real
    assert time.monotonic() - t0 < ctx.INFO_TIMEOUT_S + 2
    assert not ctx.busy() and ctx.STATE.error


@pytest.mark.parametrize("op", ["generate", "refit", "inpaint"])
def test_each_request_asks_the_backend_once(ctx, monkeypatch, op):
    """One connection check per click, before the task is built (it was asked twice)."""
    obj = new_hand(ctx)
    if op == "inpaint":
        bpy.ops.object.mode_set(mode="EDIT")
        bpy.ops.mesh.select_all(action="DESELECT")
        bpy.ops.object.mode_set(mode="OBJECT")
        obj.data.vertices.foreach_set("select", [v.co.y < 0.09 for v in obj.data.vertices])
        bpy.ops.object.mode_set(mode="EDIT")
    from hhmr_blender import jobs

    calls, real = [], ctx.info
    monkeypatch.setattr(ctx, "info", lambda refresh=False: calls.append(f"info {refresh}") or
                        real(refresh))
    builder = {"generate": "generate", "refit": "refit3d", "inpaint": "inpaint"}[op]
    build = getattr(jobs, builder)
    monkeypatch.setattr(jobs, builder, lambda *a, **k: calls.append("build") or build(*a, **k))
    assert getattr(bpy.ops.hhmr, op)() == {"FINISHED"}
    assert calls == ["info True", "build"] and obj.mode == "OBJECT"  # checked, then built


def test_generated_hands_share_one_orientation(ctx):
    """Browsing generated hands keeps the palm where the rest hand's is (it was a random
    orientation per hypothesis); unticked, they come as sampled."""
    topo = ctx.topology()
    s = bpy.context.scene.hhmr
    s.n = 6
    obj = new_hand(ctx)

    def palm_offsets():
        from hhmr_blender import scene

        shown = []
        for i in range(len(obj.hhmr.hypotheses)):  # each as shown, under its pose
            obj.hhmr.active_index = i
            shown.append(topo.keypoint_regressor @ scene.displayed_vertices(obj))
        kp = np.stack(shown)
        rest = topo.rest_keypoints("right")
        return np.linalg.norm(kp[:, topo.palm()] - rest[topo.palm()], axis=2).mean(axis=1)

    assert bpy.ops.hhmr.generate() == {"FINISHED"}
    aligned = palm_offsets()
    s.same_orientation = False
    try:
        assert bpy.ops.hhmr.generate() == {"FINISHED"}
    finally:
        s.same_orientation = True
    raw = palm_offsets()
    assert aligned.max() < 0.015, aligned  # within 1.5 cm: hand shapes differ, not poses
    assert raw.mean() > 3 * aligned.mean(), (raw, aligned)


@pytest.mark.skipif(not PHOTOS.exists(), reason="no ../shared/data")
def test_photos_get_one_camera_each_side_by_side_at_their_own_size(ctx):
    """Every hand of a photo shares its camera; each photo's camera and hands sit beside the
    previous photo's; the render size is the photo's while looking through its camera."""
    s = bpy.context.scene.hhmr
    s.image_source = "FILE"
    s.image_path = str(PHOTOS / "freihand_style" / "119.jpg")
    assert bpy.ops.hhmr.reconstruct() == {"FINISHED"}
    first = bpy.data.objects[ctx.STATE.landed[0]]
    s.image_path = str(PHOTOS / "wild" / "test1.jpg")  # 848 x 565, two hands
    assert bpy.ops.hhmr.reconstruct() == {"FINISHED"}
    hands = [bpy.data.objects[n] for n in ctx.STATE.landed]
    cameras = [o for o in bpy.data.objects if o.type == "CAMERA"]
    assert len(cameras) == 2
    assert len({h.hhmr.camera.name for h in hands}) == 1
    second = hands[0].hhmr.camera
    assert tuple(second.location) == (1.0, 0.0, 0.0)
    assert tuple(first.hhmr.camera.location) == (0.0, 0.0, 0.0)
    render = bpy.context.scene.render
    assert bpy.context.scene.camera == second
    assert (render.resolution_x, render.resolution_y) == (848, 565)
    for h in hands:  # moved with their camera: still in front of it
        assert abs(h.parent.location.x - second.location.x) < 0.5
        assert h.parent.location.y > 0.1
    bpy.context.view_layer.objects.active = first
    assert bpy.ops.hhmr.view_photo() == {"FINISHED"}
    assert bpy.context.scene.camera == first.hhmr.camera
    assert (render.resolution_x, render.resolution_y) == (224, 224)


# ---------------------------------------------------------------------------- the rig follows

@pytest.fixture
def landed(ctx, monkeypatch):
    """The HypothesisSets of every result as they land (object frame, in list order): the
    backend's own vertices, to compare Blender's evaluated mesh with."""
    got = []
    real = ctx.land

    def land(results, task):
        got.extend(results)
        return real(results, task)

    monkeypatch.setattr(ctx, "land", land)
    return got


def reproduction_mm(obj, hset) -> list[float]:
    """Per hypothesis, shown through the list: the largest distance (mm) between Blender's
    evaluated mesh (shape key under the Armature modifier) and the backend's vertices."""
    from hhmr_blender import scene

    out = []
    for i in range(len(hset)):
        obj.hhmr.active_index = i
        bpy.context.view_layer.update()
        shown = scene.displayed_vertices(obj)
        out.append(float(np.abs(shown - hset.vertices[i]).max() * 1000))
    return out


def test_the_rig_follows_each_hypothesis(ctx, landed):
    """Generate: each hypothesis's key is its rest-space mesh and showing it poses the rig, so
    key + pose (Blender's own Armature modifier) reproduce the backend's vertices; the rest
    skeleton sits at the hypothesis's joints, so finger bones only rotate."""
    obj = new_hand(ctx)
    rig = obj.parent
    topo = ctx.topology()
    assert bpy.ops.hhmr.generate() == {"FINISHED"}
    hset = landed[0]
    assert hset.rig is not None
    errors = reproduction_mm(obj, hset)
    assert max(errors) < 0.1, errors
    k = keys(obj)
    for item in obj.hhmr.hypotheses:
        assert item.has_pose
        locs = np.array(item.pose_location)
        assert np.abs(locs[1:]).max() < 1e-5  # fingers: rotations about their own joints
        # the key is a rest hand: its joints lie at the rest bones, the pose is on the rig
        joints = (topo.keypoint_regressor @ k[item.key_name][0])[list(topo.joint_keypoints)]
        assert np.linalg.norm(joints - np.array(item.rest_head), axis=1).mean() < 0.003
    obj.hhmr.active_index = 1
    quats = np.array([pb.rotation_quaternion for pb in rig.pose.bones])
    assert {pb.rotation_mode for pb in rig.pose.bones} == {"QUATERNION"}
    assert np.allclose(quats, np.array(obj.hhmr.hypotheses[1].pose_rotation), atol=1e-6)
    assert not np.allclose(np.abs(quats[:, 0]), 1.0, atol=1e-3)  # not the rest pose
    assert rig.animation_data is None or rig.animation_data.action is None  # Key pose off
    rig.hide_set(True)  # artists hide the rig: showing a hypothesis still moves its bones
    rig.hide_viewport = True
    obj.hhmr.active_index = 2
    assert rig.hide_get() and rig.hide_viewport and max(reproduction_mm(obj, hset)) < 0.1
    rig.hide_set(False)
    rig.hide_viewport = False


def bone_reach(topo, hset, i: int, bone: str) -> float:
    """How far the backend's hypothesis ``i`` reaches from the bone's joint: the largest
    distance from its posed joint to a vertex that the bone or a bone below it weights."""
    j = topo.joint_names.index(bone)
    below = {j}
    for c, p in enumerate(topo.parents):
        if p in below:
            below.add(c)
    weighted = topo.skin_weights[:, sorted(below)].sum(1) > 1e-6
    head = hset.joints[i, topo.keypoint_names.index(bone)]
    return float(np.linalg.norm(hset.vertices[i][weighted] - head, axis=1).max())


@pytest.mark.parametrize("same_orientation", [False, True])
def test_bending_a_finger_keeps_a_hand(ctx, landed, same_orientation):
    """Issue 27's test: pick each hypothesis, rotate index_pip by 60 degrees: no vertex moves
    further than the bone can reach (2 sin 30 deg times the distance from its joint to the
    farthest vertex it moves, plus 3 mm for the blend near the joint); with the rig at rest
    under posed keys (before) the finger tore into a spike."""
    from hhmr_blender import scene
    from mathutils import Quaternion

    obj = new_hand(ctx)
    rig = obj.parent
    topo = ctx.topology()
    s = bpy.context.scene.hhmr
    s.same_orientation = same_orientation
    try:
        assert bpy.ops.hhmr.generate() == {"FINISHED"}
    finally:
        s.same_orientation = True
    hset = landed[0]
    pb = rig.pose.bones["index_pip"]
    for i in range(len(hset)):
        obj.hhmr.active_index = i
        bpy.context.view_layer.update()
        before = scene.displayed_vertices(obj)
        pb.rotation_mode = "QUATERNION"
        pb.rotation_quaternion = pb.rotation_quaternion @ Quaternion((1, 0, 0), np.radians(60))
        bpy.context.view_layer.update()
        moved = np.linalg.norm(scene.displayed_vertices(obj) - before, axis=1)
        reach = bone_reach(topo, hset, i, "index_pip")
        assert moved.max() > 0.5 * reach  # the finger did bend
        assert moved.max() < 2 * np.sin(np.radians(30)) * reach + 0.003, (i, moved.max(), reach)


def test_left_hand_follows_too(ctx, landed):
    """A generated left hand (the right hand mirrored) reproduces through its rig."""
    bpy.ops.hhmr.add_hand(handedness="left")
    obj = bpy.context.view_layer.objects.active
    assert bpy.ops.hhmr.generate() == {"FINISHED"}
    hset = landed[0]
    assert hset.handedness == "left" and hset.rig is not None
    errors = reproduction_mm(obj, hset)
    assert max(errors) < 0.1, errors


@pytest.mark.skipif(not PHOTOS.exists(), reason="no ../shared/data")
@pytest.mark.parametrize("side", ["AUTO", "left"])
def test_reconstruction_follows_too(ctx, landed, side):
    """A photo's hands (camera frame turned into Blender's, the rig at the wrist) reproduce
    through their rig, as detected and forced left (the pose then drives the mirrored
    model)."""
    s = bpy.context.scene.hhmr
    photo = PHOTOS / "freihand_style" / "119.jpg"
    s.image_source, s.image_path, s.handedness = "FILE", str(photo), side
    try:
        assert bpy.ops.hhmr.reconstruct() == {"FINISHED"}
    finally:
        s.handedness = "AUTO"
    for name, hset in zip(ctx.STATE.landed, landed, strict=True):
        obj = bpy.data.objects[name]
        assert hset.rig is not None
        errors = reproduction_mm(obj, hset)
        assert max(errors) < 0.1, (hset.handedness, errors)


def test_key_pose_keys_the_shown_pose(ctx):
    """With Key pose on, showing a hypothesis keys its pose on the current frame: the
    animation brings it back after the bones were moved."""
    obj = new_hand(ctx)
    rig = obj.parent
    scn = bpy.context.scene
    assert bpy.ops.hhmr.generate() == {"FINISHED"}
    assert rig.animation_data is None or rig.animation_data.action is None
    scn.frame_set(10)
    scn.hhmr.key_pose = True
    try:
        obj.hhmr.active_index = 1
    finally:
        scn.hhmr.key_pose = False
    want = np.array(obj.hhmr.hypotheses[1].pose_rotation)
    for pb in rig.pose.bones:
        pb.rotation_quaternion = (1, 0, 0, 0)
    scn.frame_set(1)
    scn.frame_set(10)
    got = np.array([rig.pose.bones[b].rotation_quaternion for b in obj.hhmr.bones.split(",")])
    assert np.abs(got - want).max() < 1e-5


def test_apply_as_basis_keeps_the_hand_and_its_pose(ctx, landed):
    """Apply as Basis: the basis becomes the hypothesis's rest-space mesh and the rig keeps
    its pose, so the hand looks as it did and still bends at its joints."""
    from hhmr_blender import scene

    obj = new_hand(ctx)
    rig = obj.parent
    assert bpy.ops.hhmr.generate() == {"FINISHED"}
    hset = landed[0]
    obj.hhmr.active_index = 2
    rest_key = keys(obj)["hyp_02"][0]
    pose = np.array([pb.matrix_basis for pb in rig.pose.bones])
    assert bpy.ops.hhmr.apply_hypothesis() == {"FINISHED"}
    bpy.context.view_layer.update()
    assert obj.hhmr.active_index == -1 and "hyp_02" not in keys(obj)
    assert np.abs(keys(obj)["Basis"][0] - rest_key).max() < 1e-7
    assert np.allclose(np.array([pb.matrix_basis for pb in rig.pose.bones]), pose)
    assert np.abs(scene.displayed_vertices(obj) - hset.vertices[2]).max() < 1e-4


def test_results_without_pose_land_as_before(ctx, landed, monkeypatch):
    """An older backend (no 'pose'): keys of posed meshes, the rig at rest."""
    from hhmr_blender import jobs

    real = jobs.Sampling.args
    monkeypatch.setattr(jobs.Sampling, "args", lambda self: {**real(self), "pose": False})
    obj = new_hand(ctx)
    assert bpy.ops.hhmr.generate() == {"FINISHED"}
    hset = landed[0]
    assert hset.rig is None and not any(h.has_pose for h in obj.hhmr.hypotheses)
    k = keys(obj)
    for i, item in enumerate(obj.hhmr.hypotheses):
        assert np.abs(k[item.key_name][0] - hset.vertices[i]).max() < 1e-6
    assert max(reproduction_mm(obj, hset)) < 0.01
    assert all(np.allclose(pb.matrix_basis, np.eye(4)) for pb in obj.parent.pose.bones)


@pytest.mark.parametrize("mode", ["EDIT", "POSE"])
def test_showing_keeps_the_mode_you_are_in(ctx, landed, mode):
    """Picking a hypothesis in Edit Mode (the hand) or Pose Mode (its rig) moves the rig's rest
    bones and poses them, and leaves you where you were."""
    from hhmr_blender import scene

    obj = new_hand(ctx)
    assert bpy.ops.hhmr.generate() == {"FINISHED"}
    hset = landed[0]
    active = obj if mode == "EDIT" else obj.parent
    bpy.context.view_layer.objects.active = active
    bpy.ops.object.mode_set(mode=mode)
    obj.hhmr.active_index = 1
    assert bpy.context.view_layer.objects.active == active and active.mode == mode
    bpy.ops.object.mode_set(mode="OBJECT")
    rest = np.array([b.head_local for b in obj.parent.data.bones])
    assert np.abs(rest - np.array(obj.hhmr.hypotheses[1].rest_head)).max() < 1e-5
    assert np.abs(scene.displayed_vertices(obj) - hset.vertices[1]).max() < 1e-4


def test_a_backend_without_shape_space_still_reproduces(ctx, landed, monkeypatch):
    """A server that sends poses but no 'shapedirs' in its topology (before this add-on's
    version): the rig keeps the template's skeleton, the keys absorb the shape, and key +
    pose still reproduce the backend's vertices."""
    import dataclasses

    from hhmr_blender import handdata

    real = handdata.HandTopology.from_info.__func__
    monkeypatch.setattr(handdata.HandTopology, "from_info", classmethod(
        lambda cls, info: dataclasses.replace(real(cls, info), shapedirs=None)))
    obj = new_hand(ctx)
    rest = np.array([b.head_local for b in obj.parent.data.bones])
    assert bpy.ops.hhmr.generate() == {"FINISHED"}
    hset = landed[0]
    assert hset.rig is not None and ctx.topology().shapedirs is None
    assert max(reproduction_mm(obj, hset)) < 0.1
    assert np.abs(np.array([b.head_local for b in obj.parent.data.bones]) - rest).max() < 1e-6


def test_refit_to_one_finger_without_the_wrist_gives_hands_of_normal_size(ctx):
    """The issue's case: Add Hand, select index_mcp, index_pip and index_dip, Only selected
    bones, Refit: the hands came out 3-7 cm across and crumpled."""
    from hhmr_blender import scene

    obj = new_hand(ctx)
    rig = obj.parent
    topo = ctx.topology()
    for pb in rig.pose.bones:
        sel = pb.name in ("index_mcp", "index_pip", "index_dip")
        if hasattr(pb, "select"):
            pb.select = sel
        else:
            pb.bone.select = sel
    s = bpy.context.scene.hhmr
    s.only_selected_bones, s.n = True, 8
    try:
        bpy.context.view_layer.objects.active = rig
        assert bpy.ops.hhmr.refit() == {"FINISHED"}
    finally:
        s.only_selected_bones = False
    hand = bpy.data.objects[ctx.STATE.landed[0]]
    rest = topo.rest_keypoints("right")
    bones = [(c, p) for c, p in enumerate(topo.parents) if p >= 0]

    def bone_length(kp):  # the skeleton's total bone length: a size that ignores the pose
        j = kp[list(topo.joint_keypoints)]
        return sum(np.linalg.norm(j[c] - j[p]) for c, p in bones)

    ratios = []
    for i in range(len(hand.hhmr.hypotheses)):
        hand.hhmr.active_index = i
        bpy.context.view_layer.update()
        ratios.append(bone_length(topo.keypoint_regressor @ scene.displayed_vertices(hand))
                      / bone_length(rest))
    assert 0.8 < min(ratios) and max(ratios) < 1.25, ratios


def test_a_rig_with_a_renamed_bone_still_shows_the_hands(ctx, landed):
    """A rig that lacks one of the backend's bones cannot take the poses: its hand gets the
    posed meshes as keys (as from a backend without poses), never rest shapes left unposed."""
    obj = new_hand(ctx)
    obj.parent.data.bones["index_pip"].name = "Index.002"
    assert bpy.ops.hhmr.generate() == {"FINISHED"}
    errors = reproduction_mm(obj, landed[0])
    assert max(errors) < 0.1, errors


CLIPS = ROOT.parent / "shared" / "data" / "real_videos"


@pytest.mark.skipif(not CLIPS.exists(), reason="no ../shared/data")
def test_reconstruct_from_video_plays_the_clip_on_the_hands_rig(ctx, landed):
    """One Action on the new hand's rig, keyed at the clip's timing at the scene's rate; at
    each key Blender's own armature puts the bones where the backend's joints are."""
    sc = bpy.context.scene
    sc.render.fps, sc.render.fps_base, sc.frame_start, sc.frame_end = 30, 1.0, 1, 10
    s = sc.hhmr
    s.video_source, s.video_path = "FILE", str(CLIPS / "hand_open_close.mp4")
    s.video_start, s.video_end, s.video_stride, s.video_smoothing = 0, 23, 2, 4.0
    actions_before = set(bpy.data.actions.keys())
    assert bpy.ops.hhmr.reconstruct_video() == {"FINISHED"}
    (name,) = ctx.STATE.landed
    obj = bpy.data.objects[name]
    rig = obj.parent
    (clip,) = landed
    assert len(clip) == 12 and "12 frames" in ctx.STATE.status
    action = rig.animation_data.action
    assert set(bpy.data.actions.keys()) - actions_before == {action.name}
    times = clip.scene_frames(30, 1)
    assert times.tolist() == [1 + 2 * k for k in range(12)]  # every 2nd frame, clip timing
    assert sc.frame_end == 23
    topo = ctx.topology()
    want = clip.joints_in_object()[:, list(topo.joint_keypoints)]
    errs = []
    for k in range(12):
        sc.frame_set(int(times[k]))
        heads = np.array([rig.pose.bones[b].head for b in topo.joint_names])
        errs.append(np.abs(heads - want[k]).max())
    assert max(errs) < 0.002, errs  # metres
    # the mesh is the clip's hand shape at rest, skinned by the rig
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    assert np.abs(co.reshape(-1, 3) - clip.rest_vertices(topo)).max() < 1e-5


@pytest.mark.skipif(not CLIPS.exists(), reason="no ../shared/data")
def test_a_failed_video_landing_leaves_nothing(ctx, monkeypatch, tmp_path):
    from hhmr_blender import animate

    s = bpy.context.scene.hhmr
    s.video_source, s.video_path = "FILE", str(CLIPS / "hand_open_close.mp4")
    s.video_start, s.video_end, s.video_stride = 0, 5, 1
    objects, actions = set(bpy.data.objects.keys()), set(bpy.data.actions.keys())

    def fail(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(animate.scene, "set_rest", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        bpy.ops.hhmr.reconstruct_video()
    assert set(bpy.data.objects.keys()) == objects
    assert set(bpy.data.actions.keys()) == actions
    monkeypatch.undo()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"no video here" * 50)
    s.video_path = str(broken)
    with pytest.raises(RuntimeError, match="as a video"):
        bpy.ops.hhmr.reconstruct_video()
    assert set(bpy.data.objects.keys()) == objects


def rigify_rig_fitted_to(hand_rig, side: str, curl_deg: float = 0.0):
    """Rigify's human metarig with its `side` hand's bones moved onto the HHMR rig's rest
    bones (as an artist fits a metarig to a character), generated into a rig; with
    `curl_deg` each finger bone at rest bends that much more than ours (segment lengths
    kept), a rest pose unlike ours."""
    import addon_utils
    from mathutils import Matrix

    addon_utils.enable("rigify", default_set=True)
    from hhmr_blender import retarget

    bpy.ops.object.select_all(action="DESELECT")
    bpy.ops.object.armature_human_metarig_add()
    meta = bpy.context.active_object
    ours = {b.name: (hand_rig.matrix_world @ b.head_local, hand_rig.matrix_world @ b.tail_local)
            for b in hand_rig.data.bones}
    theirs = retarget.rigify_map(side, "metarig")
    inv = meta.matrix_world.inverted()
    bpy.ops.object.mode_set(mode="EDIT")
    eb = meta.data.edit_bones
    wrist = ours["wrist"][0]
    side_axis = ours["little_mcp"][0] - ours["index_mcp"][0]  # across the palm
    for hhmr_bone, name in theirs.items():
        head, tail = ours[hhmr_bone]
        if hhmr_bone != "wrist" and curl_deg:
            k = int(hhmr_bone != "thumb_cmc" and not hhmr_bone.endswith("mcp")) + \
                int(hhmr_bone.endswith(("dip", "ip")))
            parent = eb[name].parent if eb[name].use_connect else None
            start = meta.matrix_world @ parent.tail if parent is not None else head
            bend = Matrix.Rotation(np.radians(curl_deg) * (k + 1), 3, side_axis)
            head, tail = start, start + bend @ (tail - head)
        eb[name].head, eb[name].tail = inv @ head, inv @ tail
    for k, finger in enumerate(("index", "middle", "ring", "little"), 1):  # the metacarpals
        palm = eb[f"palm.0{k}.{side}"]
        palm.head = inv @ (wrist + (ours[f"{finger}_mcp"][0] - wrist) * 0.3)
        palm.tail = inv @ ours[f"{finger}_mcp"][0]
    bpy.ops.object.mode_set(mode="OBJECT")
    bpy.ops.pose.rigify_generate()
    return bpy.context.active_object


def mirrored_clip(src: Path, out: Path, frames: int = 60) -> Path:
    """The clip's first frames mirrored left to right: its right hand becomes a left one."""
    import cv2

    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS)
    writer = None
    for _ in range(frames):
        ok, bgr = cap.read()
        if not ok:
            break
        if writer is None:
            h, w = bgr.shape[:2]
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        writer.write(bgr[:, ::-1].copy())
    cap.release()
    writer.release()
    return out


@pytest.mark.skipif(not CLIPS.exists(), reason="no ../shared/data")
@pytest.mark.parametrize("side", ["right", "left"])
def test_a_clip_baked_onto_a_rigify_rig_puts_its_fingertips_where_ours_are(ctx, tmp_path,
                                                                           side):
    """The clip on a generated Rigify rig's FK controls (bone map preset, then the guess from
    its names): at every key the rig's deform fingertips, relative to its deform hand, are
    where ours are relative to our wrist, though its fingers rest bent where ours rest
    straight. The metarig's bones were fitted to our hand, so lengths agree and the tolerance
    (3 mm) is not spent on a size difference (other proportions move the tips by the
    difference in length)."""
    from hhmr_blender import animate, retarget

    sc = bpy.context.scene
    sc.render.fps, sc.render.fps_base, sc.frame_start = 30, 1.0, 1
    s = sc.hhmr
    clip = CLIPS / "hand_open_close.mp4"
    if side == "left":
        clip = mirrored_clip(clip, tmp_path / "mirrored.mp4")
    s.video_source, s.video_path = "FILE", str(clip)
    s.video_start, s.video_end, s.video_stride, s.handedness = 30, 53, 3, "AUTO"
    assert bpy.ops.hhmr.reconstruct_video() == {"FINISHED"}
    hand = bpy.data.objects[ctx.STATE.landed[0]]
    assert hand.hhmr.handedness == side
    side = "R" if side == "right" else "L"
    source = hand.parent
    rig = rigify_rig_fitted_to(source, side, curl_deg=15.0)
    names = [b.name for b in rig.data.bones]
    bone_map = retarget.map_for("RIGIFY", names, side)
    assert len(bone_map) == 16
    assert retarget.guess_map(names, side) == bone_map  # the names alone say as much
    arm = rig.pose.bones.get(f"upper_arm_parent.{side}")
    if arm is not None and "IK_FK" in arm:
        arm["IK_FK"] = 1.0  # the arm in FK, so the hand follows hand_fk
    times = list(source.animation_data.action["hhmr_times"])
    action = animate.bake_to_rig(source, rig, bone_map, times)
    assert rig.animation_data.action == action
    fingers = (("thumb", "thumb"), ("index", "f_index"), ("middle", "f_middle"),
               ("ring", "f_ring"), ("little", "f_pinky"))
    last = {"thumb": "thumb_ip"}
    errs, moved = [], []
    for f in times:
        sc.frame_set(int(f))
        ow = source.matrix_world
        wrist = ow @ source.pose.bones["wrist"].head
        mine = np.array([ow @ source.pose.bones[last.get(a, f"{a}_dip")].tail - wrist
                         for a, _ in fingers])
        rw = rig.matrix_world
        base = rw @ rig.pose.bones[f"DEF-hand.{side}"].head
        theirs = np.array([rw @ rig.pose.bones[f"DEF-{b}.03.{side}"].tail - base
                           for _, b in fingers])
        errs.append(float(np.linalg.norm(mine - theirs, axis=1).max()))
        moved.append(mine)
    assert max(errs) < 0.003, errs
    assert np.abs(np.array(moved) - moved[0]).max() > 0.01  # the fingers did move


def angle_deg(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    c = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


@pytest.mark.skipif(not CLIPS.exists(), reason="no ../shared/data")
def test_a_rig_in_t_pose_gets_our_bone_directions_and_palm(ctx):
    """Rigify's rig as it comes (a T-pose: the hand out sideways, palm down; its own
    proportions), its object scaled: every finger bone points where ours does and the palm
    faces where ours does (the rest hands aligned first), and no bone is left scaled."""
    from hhmr_blender import animate, retarget

    sc = bpy.context.scene
    s = sc.hhmr
    s.video_source, s.video_path = "FILE", str(CLIPS / "hand_open_close.mp4")
    s.video_start, s.video_end, s.video_stride, s.handedness = 30, 53, 3, "AUTO"
    assert bpy.ops.hhmr.reconstruct_video() == {"FINISHED"}
    source = bpy.data.objects[ctx.STATE.landed[0]].parent
    import addon_utils

    addon_utils.enable("rigify", default_set=True)
    bpy.ops.object.select_all(action="DESELECT")
    bpy.ops.object.armature_human_metarig_add()
    bpy.ops.pose.rigify_generate()
    rig = bpy.context.active_object
    rig.scale = (2.0, 2.0, 2.0)
    bpy.context.view_layer.update()
    arm = rig.pose.bones.get("upper_arm_parent.R")
    if arm is not None and "IK_FK" in arm:
        arm["IK_FK"] = 1.0
    bone_map = retarget.map_for("RIGIFY", [b.name for b in rig.data.bones], "R")
    times = list(source.animation_data.action["hhmr_times"])
    animate.bake_to_rig(source, rig, bone_map, times)
    deform = {k: "DEF-" + v.replace("_fk", "") for k, v in bone_map.items()}
    worst_dir, worst_palm = 0.0, 0.0
    for f in times:
        sc.frame_set(int(f))
        ow, rw = source.matrix_world, rig.matrix_world
        for ours, theirs in deform.items():
            if ours == "wrist":
                continue
            a = source.pose.bones[ours]
            b = rig.pose.bones[theirs]
            worst_dir = max(worst_dir, angle_deg(ow @ a.tail - ow @ a.head,
                                                 rw @ b.tail - rw @ b.head))

        def palm(obj, names):
            w, i, k = (np.array(obj.matrix_world @ obj.pose.bones[n].head) for n in names)
            return np.cross(i - w, k - w)

        worst_palm = max(worst_palm, angle_deg(
            palm(source, ("wrist", "index_mcp", "little_mcp")),
            palm(rig, (deform["wrist"], deform["index_mcp"], deform["little_mcp"]))))
    assert worst_dir < 2.0, worst_dir
    assert worst_palm < 10.0, worst_palm  # its palm bones spread the finger bases otherwise
    for t in bone_map.values():
        assert np.allclose(rig.pose.bones[t].scale, 1.0, atol=1e-4)


@pytest.mark.skipif(not CLIPS.exists(), reason="no ../shared/data")
def test_reconstruct_from_video_bakes_onto_the_target_rig_and_stores_the_map(ctx):
    """The panel's target rig: the clip lands and is baked onto it in one step, its bone map
    stored on the rig; a target whose bones match nothing leaves the scene as it was."""
    from hhmr_blender import retarget

    sc = bpy.context.scene
    s = sc.hhmr
    s.video_source, s.video_path = "FILE", str(CLIPS / "hand_open_close.mp4")
    s.video_start, s.video_end, s.video_stride, s.handedness = 0, 8, 3, "AUTO"
    # an armature with bones named as the HHMR rig's (another HHMR hand, say) as the target
    bpy.ops.hhmr.add_hand(handedness="right")
    other = bpy.context.view_layer.objects.active.parent
    for child in list(other.children):
        bpy.data.objects.remove(child)
    s.video_target, s.bone_map_preset = other, "AUTO"
    assert bpy.ops.hhmr.reconstruct_video() == {"FINISHED"}
    hand = bpy.data.objects[ctx.STATE.landed[0]]
    assert ctx.STATE.landed[1] == other.name
    baked = other.animation_data.action
    assert baked is not None and baked["hhmr_source"] == hand.parent.name
    stored = retarget.loads(other[retarget.MAP_PROPERTY])
    assert stored == {b: b for b in retarget.HHMR_BONES}  # guessed from the names
    # the same bones, so the same turns at every key: each bone along ours, its twist within
    # a fraction of a degree (the target's rest hand is the template's, the clip's its own
    # shape's, so their aligned hand frames differ a little)
    for f in hand.parent.animation_data.action["hhmr_times"]:
        sc.frame_set(int(f))
        for b in ("wrist", "index_pip", "thumb_mcp"):
            m1 = hand.parent.pose.bones[b].matrix.to_3x3()
            m2 = other.pose.bones[b].matrix.to_3x3()
            assert np.abs(np.array(m1.col[1]) - np.array(m2.col[1])).max() < 1e-4
            assert np.abs(np.array(m1) - np.array(m2)).max() < 5e-3
    # a target with no hand bones: refused, and the clip's hand does not land either
    bpy.ops.object.armature_add()
    plain = bpy.context.view_layer.objects.active
    s.video_target = plain
    objects, actions = set(bpy.data.objects.keys()), set(bpy.data.actions.keys())
    with pytest.raises(RuntimeError, match="no finger bone"):
        bpy.ops.hhmr.reconstruct_video()
    assert set(bpy.data.objects.keys()) == objects
    assert set(bpy.data.actions.keys()) == actions
    s.video_target = None


@pytest.mark.skipif(not CLIPS.exists(), reason="no ../shared/data")
def test_undo_takes_a_landed_clip_away(ctx):
    s = bpy.context.scene.hhmr
    s.video_source, s.video_path = "FILE", str(CLIPS / "hand_open_close.mp4")
    s.video_start, s.video_end, s.video_stride, s.video_target = 0, 5, 2, None
    bpy.ops.ed.undo_push(message="before")
    before = set(bpy.data.objects.keys())
    assert bpy.ops.hhmr.reconstruct_video() == {"FINISHED"}
    bpy.ops.ed.undo_push(message="after")  # what Blender's UI does after an operator
    name = ctx.STATE.landed[0]
    assert name in bpy.data.objects
    bpy.ops.ed.undo()
    assert set(bpy.data.objects.keys()) == before and ctx.STATE.status == ""

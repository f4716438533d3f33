"""The add-on's pure modules (no bpy): hand data, hypotheses, jobs, wheels, packaging."""

import ast
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hhmr import protocol as P
from hhmr.server import hand_topology

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "blender_addon"
sys.path.insert(0, str(ADDON))

from hhmr_blender import deps, handdata, hypotheses, jobs, local_backend  # noqa: E402
from hhmr_blender.handdata import HandTopology  # noqa: E402


@pytest.fixture(scope="module")
def topo(hand):
    return HandTopology.from_info({"topology": hand_topology(hand)})


def random_rotation(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_topology_checks_what_it_reads(hand):
    info = {"topology": hand_topology(hand)}
    HandTopology.from_info(info)
    with pytest.raises(ValueError, match="no 'topology'"):
        HandTopology.from_info({})
    bad = dict(info["topology"], faces=np.array([[0, 1, 99999]], np.int32))
    with pytest.raises(ValueError, match="faces"):
        HandTopology.from_info({"topology": bad})
    bad = dict(info["topology"], skin_weights=np.zeros((5, 16), np.float32))
    with pytest.raises(ValueError, match="skin_weights"):
        HandTopology.from_info({"topology": bad})


def test_bones_give_back_the_keypoints(topo):
    kp = topo.keypoint_regressor @ topo.template
    for side in ("right", "left"):
        bones = topo.bones(side)
        assert [b.name for b in bones] == list(topo.joint_names) and len(bones) == 16
        assert bones[0].parent is None and all(b.parent for b in bones[1:])
        got = topo.keypoints_from_bones({b.name: b.head for b in bones},
                                        {b.name: b.tail for b in bones})
        want = kp * (handdata.MIRROR_X if side == "left" else 1)
        assert np.abs(got - want).max() < 1e-4  # joints regress onto the bones' heads/tails


def test_keypoint_mask_of_bones(topo):
    mask = topo.keypoint_mask(["index_dip", "wrist"])
    names = np.array(topo.keypoint_names)[mask]
    assert set(names) == {"wrist", "index_dip", "index_tip"}
    assert not topo.keypoint_mask([]).any()


def test_left_mesh_is_mirrored_with_reversed_winding(topo):
    v, f = topo.mesh("left")
    assert np.allclose(v[:, 0], -topo.template[:, 0]) and np.array_equal(f, topo.faces[:, ::-1])

    def volume(v, f):
        a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
        return np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6

    assert np.sign(volume(v, f)) == np.sign(volume(*topo.mesh("right")))  # outward normals


def test_unpose_inverts_skinning(topo):
    rng = np.random.default_rng(0)
    mats = np.tile(np.eye(4), (16, 1, 1))
    for j in range(16):
        mats[j, :3, :3] = random_rotation(rng) * 0.3 + np.eye(3) * 0.7
        mats[j, :3, 3] = rng.normal(scale=0.01, size=3)
    w = topo.skin_weights.copy()
    w[0] = 0.0  # an unweighted vertex stays where it is
    posed = handdata.skin(topo.template, w, mats)
    assert np.allclose(posed[0], topo.template[0])
    assert np.abs(handdata.unpose(posed, w, mats) - topo.template).max() < 1e-5
    batch = handdata.unpose(np.stack([posed, posed]), w, mats)
    assert batch.shape == (2, topo.num_vertices, 3)


def test_camera_frame_to_blender():
    r = handdata.CAMERA_TO_BLENDER
    assert np.allclose(r @ r.T, np.eye(3)) and np.isclose(np.linalg.det(r), 1.0)
    assert np.allclose(r @ [0, 0, 1], [0, 1, 0]) and np.allclose(r @ [0, 1, 0], [0, 0, -1])
    rng = np.random.default_rng(1)
    v = rng.normal(size=(3, 10, 3)) + [0, 0, 0.5]
    j = rng.normal(size=(3, 21, 3)) + [0, 0, 0.5]
    local, local_j, loc = handdata.camera_to_object(v, j, best=2)
    assert np.allclose(local + loc, v @ r.T, atol=1e-6)  # positions relative to the camera
    assert np.allclose(local_j + loc, j @ r.T, atol=1e-6)
    assert np.allclose(loc, r @ j[2, 0])
    lens = handdata.camera_lens(np.array([[500, 0, 112], [0, 500, 112], [0, 0, 1]]), 224, 224)
    assert np.isclose(lens["lens"], 500 * 36 / 224) and lens["shift_x"] == 0


def test_hypothesis_names_and_which_shows():
    assert hypotheses.names(3) == ["hyp_00", "hyp_01", "hyp_02"]
    assert hypotheses.names(101)[-1] == "hyp_100"
    assert hypotheses.values_to_show(["Basis", "mine", "hyp_00", "hyp_01"],
                                     ["hyp_00", "hyp_01"], "hyp_01") == {"hyp_00": 0.0,
                                                                        "hyp_01": 1.0}


def test_hypothesis_set_ranks_and_checks():
    v = np.stack([np.full((5, 3), i, np.float32) for i in range(3)])
    h = hypotheses.HypothesisSet.ranked(v, np.zeros((3, 21, 3)), np.array([0.1, 0.9, 0.5]),
                                        "generate")
    assert list(h.scores) == pytest.approx([0.9, 0.5, 0.1]) and h.vertices[0, 0, 0] == 1
    h.check(5)
    with pytest.raises(ValueError, match="has 6 vertices"):
        h.check(6)
    h.vertices[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        h.check(5)


def hyp_result(n, V, shift=0.0):
    return P.make_hypotheses(np.random.default_rng(0).normal(size=(n, V, 3)) + shift,
                             np.zeros((n, 21, 3)) + shift, np.arange(n, dtype=float))


def test_tasks_build_requests_the_protocol_accepts(topo):
    V = topo.num_vertices
    opts = jobs.Sampling(n=3, steps=4, seed=2)
    keep = np.zeros(V, bool)
    keep[:100] = True
    tasks = [jobs.generate(opts),
             jobs.inpaint(topo.template, keep, "left", "Hand", opts),
             jobs.refit3d(np.zeros((21, 3)), np.ones(21, bool), "right", "Hand",
                          jobs.Sampling(guidance_strength=0.5, guidance_space="x_t",
                                        central_first=False)),
             jobs.reconstruct(jobs.Sampling(guidance_scale=0.1),
                              rgb=np.zeros((8, 8, 3), np.uint8), handedness="left")]
    for t in tasks:
        msg = P.unpack(P.pack(P.make_request(t.op, t.args)))
        req = P.validate_request(msg, num_vertices=V)
        assert req.op == t.op
    assert np.allclose(tasks[1].args["vertices"][:, 0], -topo.template[:, 0])  # mirrored
    assert tasks[3].args["guidance_scale"] == 0.1 and "guidance_scale" not in tasks[0].args
    assert all("guidance" not in t.args for t in tasks)  # the deprecated name goes unsent
    assert tasks[2].args["guidance_strength"] == 0.5 and tasks[2].args["guidance_space"] == "x_t"
    assert "guidance_strength" not in tasks[0].args
    assert tasks[2].args["central_first"] is False and "central_first" not in tasks[0].args
    assert "autoguidance" not in tasks[0].args  # the backend's default goes unsent
    for variety, weight in jobs.VARIETY_WEIGHTS.items():
        t = jobs.generate(opts, variety=variety)
        assert P.validate_request(P.make_request(t.op, t.args)).args["autoguidance"] == weight
    with pytest.raises(ValueError, match="variety"):
        jobs.generate(opts, variety="HUGE")
    with pytest.raises(ValueError, match="select the vertices"):
        jobs.inpaint(topo.template, np.zeros(V, bool), "right", "Hand", opts)
    with pytest.raises(ValueError, match="every vertex"):
        jobs.inpaint(topo.template, np.ones(V, bool), "right", "Hand", opts)
    with pytest.raises(ValueError, match="no selected bone"):
        jobs.refit3d(np.zeros((21, 3)), np.zeros(21, bool), "right", "Hand", opts)
    with pytest.raises(ValueError, match="give an image"):
        jobs.reconstruct(opts)


def test_results_are_ranked_and_mirrored_back():
    t = jobs.Task("inpaint", {}, handedness="left", target="Hand")
    res = hyp_result(3, 7)
    (h,) = t.results(res, 7)
    assert list(h.scores) == [2, 1, 0]
    assert np.allclose(h.vertices[0], res["vertices"][2] * [-1, 1, 1])
    with pytest.raises(P.ProtocolError):
        t.results(hyp_result(3, 7), 8)  # not this mesh


def test_central_hypothesis_shows_first():
    t = jobs.Task("refit3d", {}, target="Hand")
    res = hyp_result(3, 7)  # scores 0, 1, 2
    (h,) = t.results({**res, "central": np.array([False, True, False])}, 7)
    assert list(h.scores) == [1, 2, 0] and h.central_first
    assert np.allclose(h.vertices[0], res["vertices"][1])
    for odd in (np.array([True, True, False]), np.array([1, 0, 0]), np.array([True])):
        (h,) = t.results({**res, "central": odd}, 7)
        assert list(h.scores) == [2, 1, 0] and not h.central_first  # a malformed mark


def test_reconstruct_results_per_hand():
    t = jobs.reconstruct(jobs.Sampling(), rgb=np.zeros((4, 4, 3), np.uint8), label="p")
    hands = [dict(hyp_result(2, 5, 0.5), handedness="left"),
             dict(hyp_result(2, 5, 0.4), handedness="right")]
    K = np.eye(3, dtype=np.float32)
    out = t.results({"hands": hands, "image_size": [4, 4], "K": K}, 5)
    assert [h.handedness for h in out] == ["left", "right"]
    assert [h.label for h in out] == ["p hand 0", "p hand 1"]
    assert np.allclose(out[0].location, handdata.CAMERA_TO_BLENDER @ [0.5, 0.5, 0.5])
    assert out[0].extra["K"] is K
    with pytest.raises(P.ProtocolError):
        t.results({"hands": []}, 5)


def test_pixels_to_rgb_flips_rows():
    w, h = 3, 2
    px = np.zeros((h, w, 4), np.float32)
    px[0, 0] = [1, 0, 0, 1]  # Blender's first row is the bottom one
    rgb = jobs.pixels_to_rgb(px.ravel(), w, h, 4)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[1, 0]) == (255, 0, 0) and tuple(rgb[0, 0]) == (0, 0, 0)


def test_errors_read_well():
    err = jobs.RemoteError(P.NO_HAND, "none")
    assert "No hand found" in jobs.describe_error(err)
    assert "BAD_ARGUMENT" in jobs.describe_error(jobs.RemoteError(P.BAD_ARGUMENT, "n"))
    assert "is it running" in jobs.describe_error(TimeoutError("x"))


WHEELS = ["pyzmq-27.1.0-cp310-cp310-macosx_10_15_universal2.whl",
          "pyzmq-27.1.0-cp311-cp311-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl",
          "pyzmq-27.1.0-cp312-abi3-win_amd64.whl",
          "pyzmq-27.1.0-cp311-cp311-win_amd64.whl",
          "msgpack-1.1.2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
          "msgpack-1.1.2-cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64.whl"]


@pytest.mark.parametrize("project,py,system,machine,want", [
    ("pyzmq", (3, 11), "Linux", "x86_64", WHEELS[1]),
    ("pyzmq", (3, 10), "Darwin", "arm64", WHEELS[0]),
    ("pyzmq", (3, 10), "Darwin", "x86_64", WHEELS[0]),
    ("pyzmq", (3, 13), "Windows", "AMD64", WHEELS[2]),
    ("pyzmq", (3, 11), "Windows", "AMD64", WHEELS[3]),
    ("pyzmq", (3, 10), "Linux", "x86_64", None),
    ("msgpack", (3, 11), "Linux", "aarch64", WHEELS[5]),
    ("msgpack", (3, 11), "Linux", "x86_64", WHEELS[4]),
])
def test_wheel_for_each_blender(project, py, system, machine, want):
    assert deps.pick_wheel(WHEELS, project, py, system, machine) == want


def test_backend_command_line(tmp_path):
    exe = Path(sys.executable)
    assert local_backend.command_line(str(exe), "tcp://127.0.0.1:1")[1:] == [
        "-m", "hhmr.cli", "serve", "--bind", "tcp://127.0.0.1:1"]
    assert local_backend.command_line("hhmr", "tcp://x:1")[1:] == ["serve", "--bind",
                                                                   "tcp://x:1"]
    with pytest.raises(FileNotFoundError, match="preferences"):
        local_backend.command_line(str(tmp_path / "nope"), "tcp://x:1")


def test_addon_never_imports_torch():
    for path in (ADDON / "hhmr_blender").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
        assert not names & {"torch", "scipy", "PIL", "mediapipe"}, path


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("ext") / "hhmr_blender.zip"
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_extension.py"), "--out",
                    str(out), "--platforms", "linux-x64,windows-x64", "--pythons", "3.11",
                    "--wheel-cache", str(ROOT / "dist" / "wheels")], check=True)
    return out


def test_extension_zip_contents(extension_zip):
    with zipfile.ZipFile(extension_zip) as z:
        names = z.namelist()
        assert all(n.startswith("hhmr_blender/") for n in names)
        for vendored in ("protocol.py", "client.py"):
            assert z.read(f"hhmr_blender/vendor/{vendored}") == \
                (ROOT / "backend" / "hhmr" / vendored).read_bytes()
        wheels = sorted(n.split("/")[-1] for n in names if n.endswith(".whl"))
        assert len(wheels) == 4 and {w.split("-")[0] for w in wheels} == {"pyzmq", "msgpack"}
        manifest = z.read("hhmr_blender/blender_manifest.toml").decode()
        for w in wheels:
            assert f'"./wheels/{w}"' in manifest
        init = z.read("hhmr_blender/__init__.py").decode()
        assert '"blender": (3, 4, 0)' in init
        assert not any("__pycache__" in n or "/_deps/" in n for n in names)
        for n in names:
            if n.endswith(".py"):
                assert "import torch" not in z.read(n).decode(), n
        # the vendored client runs from the zip with no hhmr package
        z.extractall(extension_zip.parent / "x")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import builtins; real = "
            "builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    assert name.split('.')[0] not in ('hhmr', 'torch'), name\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "from hhmr_blender import jobs, wire\n"
            "print(wire.protocol.__file__)")
    res = subprocess.run([sys.executable, "-c", code, str(extension_zip.parent / "x")],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "vendor" in res.stdout, res.stderr


def test_extension_manifest_validates(extension_zip):
    bpy = pytest.importorskip("bpy")
    tool = next(Path(bpy.__file__).parents[3].rglob("bl_pkg/cli/blender_ext.py"))
    res = subprocess.run([sys.executable, str(tool), "validate", str(extension_zip)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_legacy_wheel_unpacking(extension_zip, tmp_path):
    """What Blender 3.4-4.1 do: deps.ensure() unpacks the matching wheels from the zip."""
    with zipfile.ZipFile(extension_zip) as z:
        z.extractall(tmp_path)
    code = ("import sys; sys.path = [p for p in sys.path if 'site-packages' not in p]; "
            "sys.path.insert(0, sys.argv[1])\n"
            "import importlib.util\n"
            "assert importlib.util.find_spec('zmq') is None\n"
            "from hhmr_blender import deps\n"
            "print(deps.ensure())\n"
            "import zmq, msgpack; print(zmq.__file__)")
    res = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "_deps" in res.stdout and "pyzmq" in res.stdout


def test_glb_reader_helper():
    # used by the batch tests: a minimal GLB with one JSON chunk round-trips
    doc = {"meshes": [{"primitives": [{"targets": [{}, {}]}]}]}
    assert read_glb_json(make_glb(doc)) == doc


def make_glb(doc) -> bytes:
    body = json.dumps(doc).encode()
    body += b" " * (-len(body) % 4)
    chunk = len(body).to_bytes(4, "little") + b"JSON" + body
    return b"glTF" + (2).to_bytes(4, "little") + (12 + len(chunk)).to_bytes(4, "little") + chunk


def read_glb_json(data: bytes) -> dict:
    f = io.BytesIO(data)
    assert f.read(4) == b"glTF"
    f.read(8)
    n = int.from_bytes(f.read(4), "little")
    assert f.read(4) == b"JSON"
    return json.loads(f.read(n))


def test_extension_installs_in_blender_5(extension_zip, tmp_path):
    """Blender 5.0 (the bpy wheel) installs the zip as an extension, unpacks its wheels and
    enables it."""
    pytest.importorskip("bpy")
    code = ("import bpy, sys\n"
            "r = bpy.ops.extensions.package_install_files(filepath=sys.argv[1], "
            "repo='user_default', enable_on_install=True)\n"
            "from bl_ext.user_default.hhmr import wire\n"
            "print('RESULT', r, hasattr(bpy.types, 'HHMR_PT_main'), wire.protocol.__file__)\n")
    res = subprocess.run([sys.executable, "-c", code, str(extension_zip)], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path,
                         env=dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "res")))
    assert "RESULT {'FINISHED'} True" in res.stdout, res.stdout + res.stderr
    assert "vendor/protocol.py" in res.stdout
    site = list((tmp_path / "res" / "extensions").rglob("site-packages/zmq"))
    assert site, "Blender did not install the bundled pyzmq wheel"


def test_results_replace_only_their_own_kind_unless_told():
    from hhmr_blender.hypotheses import replaces

    assert replaces("AUTO", "refit3d", [])  # a bare hand takes anything
    assert replaces("AUTO", "generate", ["generate"] * 3)
    assert not replaces("AUTO", "refit3d", ["reconstruct"] * 8)  # a photo fit stays
    assert not replaces("AUTO", "generate", ["reconstruct"])
    assert replaces("REPLACE", "generate", ["reconstruct"])
    assert not replaces("NEW", "generate", [])
    with pytest.raises(ValueError):
        replaces("SOMETIMES", "generate", [])


def test_the_status_line_redraws_at_most_once_per_interval():
    from hhmr_blender.jobs import Throttle

    t = Throttle(0.5, 10.0)
    assert [t.due(now) for now in (10.1, 10.5, 10.7, 10.99, 11.0, 11.6)] == \
        [False, True, False, False, True, True]


def test_progress_text_names_the_op_once():
    from hhmr_blender.jobs import progress_text

    assert progress_text("reconstruct", "reconstruct: step 8 of 10", 0.8, 2.04) == \
        "reconstruct: step 8 of 10 80% (2 s)"
    assert progress_text("generate", "queued, 2 ahead", 0.0, 0.5) == \
        "generate: queued, 2 ahead 0% (0 s)"


def test_align_palms_undoes_a_rigid_motion_and_never_mirrors():
    from hhmr_blender.handdata import align_palms

    rng = np.random.default_rng(0)
    target = rng.normal(size=(21, 3))
    verts = rng.normal(size=(2, 50, 3))
    palm = [0, 5, 9, 13, 17]
    angle = 2.0
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])
    joints = np.stack([target @ rot + [1, 2, 3], target * [-1, 1, 1]])  # moved; mirrored
    moved, kp = align_palms(verts, joints, target, palm)
    assert np.allclose(kp[0], target, atol=1e-5)  # a rigid motion is undone exactly
    rel = moved[0] - kp[0][0]
    assert np.allclose(np.linalg.norm(rel, axis=1),
                       np.linalg.norm(verts[0] - joints[0][0], axis=1), atol=1e-5)
    # a mirrored hand cannot be turned onto the target: rotated, not reflected
    cross = np.linalg.det(np.stack([kp[1][5] - kp[1][0], kp[1][9] - kp[1][0],
                                    kp[1][17] - kp[1][0]]))
    orig = np.linalg.det(np.stack([joints[1][5] - joints[1][0], joints[1][9] - joints[1][0],
                                   joints[1][17] - joints[1][0]]))
    assert np.sign(cross) == np.sign(orig)


def test_scores_read_as_errors_in_units_and_the_order_is_explained():
    from hhmr_blender.hypotheses import order_text, score_text

    assert score_text("refit3d", -2.345) == "2.3 mm"
    assert score_text("reconstruct", -1.94) == "1.9 px"
    assert score_text("generate", -0.0123) == "1.2%"
    assert score_text("mystery", -0.5) == "0.5"
    assert order_text("reconstruct", True).startswith("First: the sampler's central guess")
    assert "photo's keypoints" in order_text("reconstruct", True)
    assert order_text("generate", False) == "Sorted by stretch, smallest first"


@pytest.mark.parametrize("side", ["right", "left"])
def test_rig_poses_reproduce_the_hand_model(hand, topo, side):
    """The add-on's rig of a pose (forward kinematics in numpy, in the object frame) skins the
    shaped rest hand onto what the backend's model makes of that pose: a right hand, a left
    hand mirrored from a right pose (generate) and a left hand's own pose (MirroredHand, as a
    left reconstruction sends it)."""
    import torch
    from hhmr.hand.mirror import MirroredHand

    rng = np.random.default_rng(3)
    n = 3
    pose = {"global_orient": rng.normal(0, 1.0, (n, 3)),
            "hand_pose": rng.normal(0, 0.3, (n, 15, 3)), "transl": rng.normal(0, 0.1, (n, 3))}
    betas = rng.normal(0, 1.0, (n, topo.shapedirs.shape[2]))
    t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in pose.items()}
    b = torch.as_tensor(betas, dtype=torch.float32)
    right = hand(t["global_orient"], t["hand_pose"], b, t["transl"]).vertices.numpy()
    cases = [(handdata.from_backend(right, side), False)]
    if side == "left":
        mirrored = MirroredHand(hand)(t["global_orient"], t["hand_pose"], b, t["transl"])
        cases.append((mirrored.vertices.numpy(), True))
    for want, left_pose in cases:
        rig = handdata.rig_poses(topo, pose, betas, side, left_pose)
        assert np.allclose(np.linalg.det(rig.transforms[..., :3, :3]), 1.0)  # proper motions
        for i in range(n):
            rest = handdata.from_backend(topo.shaped(betas[i]), side)
            got = handdata.skin(rest, topo.skin_weights, rig.transforms[i])
            assert np.abs(got - want[i]).max() < 1e-5
            # the rest skeleton is the shaped hand's: its heads are the regressed joints
            joints = (topo.keypoint_regressor @ rest)[list(topo.joint_keypoints)]
            assert np.abs(rig.heads[i] - joints).max() < 1e-6


def test_same_orientation_moves_the_rig_with_the_hands(topo):
    """Task.results with align_to: the rig's transforms follow the rigid motion that turned
    each hypothesis, so skinning its rest mesh still gives the moved vertices."""
    rng = np.random.default_rng(4)
    n = 2
    pose = {"global_orient": rng.normal(0, 1.0, (n, 3)).astype(np.float32),
            "hand_pose": rng.normal(0, 0.2, (n, 15, 3)).astype(np.float32),
            "transl": np.zeros((n, 3), np.float32)}
    betas = np.zeros((n, topo.shapedirs.shape[2]), np.float32)
    rig = handdata.rig_poses(topo, pose, betas, "right")
    verts = np.stack([handdata.skin(topo.template, topo.skin_weights, m)
                      for m in rig.transforms])
    joints = np.einsum("kv,nvc->nkc", topo.keypoint_regressor, verts)
    result = P.make_hypotheses(verts, joints, np.array([0.0, -1.0], np.float32), {},
                               pose=pose, betas=betas, corrective=np.zeros_like(verts))
    task = jobs.generate(jobs.Sampling(n=n))
    task.meta["align_to"] = (topo.rest_keypoints("right"), topo.palm())
    (hset,) = task.results(result, topo.num_vertices, topo)
    assert hset.rig is not None
    for i in range(n):
        got = handdata.skin(topo.template, topo.skin_weights, hset.rig.transforms[i])
        assert np.abs(got - hset.vertices[i]).max() < 1e-5
    assert np.abs(hset.vertices - verts).max() > 0.01  # they were turned
    # without the topology (or from a backend without pose): no rig, as before
    assert task.results(result, topo.num_vertices)[0].rig is None


# ---------------------------------------------------------------------------- video, bone maps
def clip_result(t: int = 4, side: str = "right") -> dict:
    rng = np.random.default_rng(0)
    f32 = np.float32
    return {"fps": 15.0, "frames": np.arange(0, 2 * t, 2, dtype=np.int32),
            "detected": np.array([True] * (t - 1) + [False]), "handedness": side,
            "betas": rng.normal(0, 0.5, 10).astype(f32),
            "global_orient": rng.normal(0, 0.3, (t, 3)).astype(f32),
            "hand_pose": rng.normal(0, 0.2, (t, 15, 3)).astype(f32),
            "transl": (rng.normal(0, 0.02, (t, 3)) + [0, 0, 0.5]).astype(f32),
            "joints": (rng.normal(0, 0.03, (t, 21, 3)) + [0, 0, 0.5]).astype(f32)}


def test_clip_result_is_read_checked_and_timed(topo):
    from hhmr_blender.clip import ClipAnimation, continuous

    clip = ClipAnimation.parse(clip_result(), stride=2, label="c")
    assert len(clip) == 4 and clip.handedness == "right"
    # clip frames 0, 2, 4, 6 of a 30 frame/s clip (15/s sent, every 2nd) at 24 frames/s
    assert np.allclose(clip.scene_frames(24.0, 1), [1, 2.6, 4.2, 5.8])
    rig = clip.rig(topo)
    assert rig.transforms.shape == (4, 16, 4, 4) and np.allclose(rig.heads[0], rig.heads[3])
    # the object sits at the seen frames' mean wrist, turned into Blender's axes (+Y ahead)
    assert clip.location[1] > 0.4 and np.allclose(clip.joints_in_object()[:3, 0].mean(0), 0,
                                                   atol=1e-6)
    for key, bad in (("hand_pose", np.zeros((4, 15), np.float32)),
                     ("joints", np.full((4, 21, 3), np.nan, np.float32)),
                     ("handedness", "both"), ("frames", np.zeros(0, np.int32))):
        with pytest.raises(jobs.ProtocolError):
            ClipAnimation.parse({**clip_result(), key: bad})
    q = np.array([[[1.0, 0, 0, 0]], [[-0.99, 0.1, 0, 0]], [[0.98, -0.2, 0, 0]]])
    assert (continuous(q)[:, 0, 0] > 0).all() and continuous(q)[1, 0, 1] == -0.1


def test_video_task_arguments():
    t = jobs.reconstruct_video(b"\x00video", "clip", start=3, end=30, stride=2,
                               smoothing=0.0, handedness="left")
    assert t.op == "reconstruct_video" and t.args == {
        "video": b"\x00video", "start": 3, "end": 30, "stride": 2, "smoothing": 0.0,
        "handedness": "left"}
    assert jobs.reconstruct_video(b"v").args == {"video": b"v", "start": 0, "stride": 1}
    with pytest.raises(ValueError, match="empty"):
        jobs.reconstruct_video(b"")
    with pytest.raises(ValueError, match="after the first"):
        jobs.reconstruct_video(b"v", start=5, end=5)


RIGIFY_GENERATED = [  # a generated Rigify rig's hand bones (one side), helpers included
    "ORG-hand.{s}", "MCH-hand_tweak.{s}", "hand_tweak.{s}", "MCH-hand_fk.{s}", "hand_fk.{s}",
    "DEF-hand.{s}", "hand_ik.{s}", "MCH-hand_ik.parent.{s}", "palm.{s}", "ORG-palm.01.{s}"] + [
    n.format(f=f, k=k) for f in ("thumb", "f_index", "f_middle", "f_ring", "f_pinky")
    for k in (1, 2, 3) for n in ("ORG-{f}.0{k}.{{s}}", "DEF-{f}.0{k}.{{s}}",
                                 "MCH-{f}.0{k}_drv.{{s}}", "{f}.0{k}.{{s}}", "MCH-{f}.0{k}.{{s}}")
] + ["f_index.01_master.{s}", "thumb.01_master.{s}"]


def test_bone_maps_from_presets_and_names():
    from hhmr_blender import retarget

    names = [n.format(s=s) for s in "LR" for n in RIGIFY_GENERATED]
    for side in "LR":
        assert retarget.guess_map(names, side) == retarget.rigify_map(side, "controls")
        assert retarget.map_for("RIGIFY_DEFORM", names, side)["index_pip"] == \
            f"DEF-f_index.02.{side}"
    metarig = ["hand.L", "palm.01.L", "f_index.01.L", "f_index.02.L", "f_index.03.L",
               "thumb.01.L", "thumb.02.L", "thumb.03.L", "hand.R"]
    assert retarget.guess_map(metarig, "L") == {
        k: v for k, v in retarget.rigify_map("L", "metarig").items() if v in metarig}
    mixamo = [f"mixamorig:{s}Hand" for s in ("Left", "Right")] + [
        f"mixamorig:{s}Hand{f}{k}" for s in ("Left", "Right")
        for f in ("Thumb", "Index", "Middle", "Ring", "Pinky") for k in range(1, 5)]
    m = retarget.guess_map(mixamo, "R")
    assert len(m) == 16 and m["wrist"] == "mixamorig:RightHand"
    assert m["little_dip"] == "mixamorig:RightHandPinky3" and m["thumb_cmc"].endswith("Thumb1")
    unreal = [f"{f}_{k:02d}_{s}" for s in "lr" for f in ("thumb", "index", "middle", "ring",
                                                          "pinky") for k in (1, 2, 3)]
    assert retarget.guess_map(unreal + ["hand_l"], "L")["middle_dip"] == "middle_03_l"
    named = [*retarget.HHMR_BONES]
    assert retarget.guess_map(named, "R") == {b: b for b in named}
    with pytest.raises(ValueError, match="no finger bone"):
        retarget.map_for("AUTO", ["Bone", "spine", "head"], "L")
    assert retarget.loads(retarget.dumps(m)) == m
    with pytest.raises(ValueError):
        retarget.loads('{"elbow": "x"}')


def test_carried_rotation_points_the_bone_along_the_source_and_keeps_its_turn():
    from hhmr_blender import retarget

    rng = np.random.default_rng(1)
    for _ in range(20):
        src_rest, turn = random_rotation(rng), random_rotation(rng)
        src_pose = turn @ src_rest
        # the same rest: the same rotation
        assert np.allclose(retarget.carried_rotation(src_pose, src_rest, src_rest,
                                                     src_pose[:, 1]), src_pose, atol=1e-9)
        # another rest (a different roll and direction): the bone points along the source's
        tgt_rest = random_rotation(rng)
        r = retarget.carried_rotation(src_pose, src_rest, tgt_rest, src_pose[:, 1])
        assert np.allclose(r.T @ r, np.eye(3), atol=1e-9) and np.linalg.det(r) > 0
        assert np.allclose(r[:, 1], src_pose[:, 1], atol=1e-9)
    a, b = np.array([0, 1.0, 0]), np.array([0, -1.0, 0])
    assert np.allclose(retarget.rotation_between(a, b) @ a, b)


def test_image_sequence_files_in_frame_order(tmp_path):
    from hhmr_blender.clip import sequence_files

    for n in (9, 10, 11, 100, 8):
        (tmp_path / f"shot_{n:03d}.png").write_bytes(b"x")
    (tmp_path / "shot_010.jpg").write_bytes(b"x")  # another extension
    (tmp_path / "other_012.png").write_bytes(b"x")  # another prefix
    got = sequence_files(tmp_path / "shot_009.png")
    assert [p.name for p in got] == ["shot_009.png", "shot_010.png", "shot_011.png",
                                     "shot_100.png"]
    with pytest.raises(ValueError, match="no frame number"):
        sequence_files(tmp_path / "still.png")


def test_a_hand_box_drawn_in_the_image_view_becomes_photo_pixels():
    # Blender's image view: 0..1 from the bottom left; the backend's box: pixels, top left
    box = jobs.box_from_view((0.75, 0.2), (0.25, 0.6), 400, 200)
    assert box == (100.0, 80.0, 300.0, 160.0)
    assert jobs.check_box((350, 20, 500, 90), 400, 200).tolist() == [350, 20, 400, 90]
    for bad in ((10, 10, 12, 100), (500, 0, 600, 50), (0, 0, float("nan"), 10)):
        with pytest.raises(ValueError, match="box"):
            jobs.check_box(bad, 400, 200)
    rgb = np.zeros((200, 400, 3), np.uint8)
    task = jobs.reconstruct(jobs.Sampling(2, 5, 0), rgb=rgb, box=(0.0, 0.0, 50.0, 60.0),
                            handedness="left")
    assert task.args["box"].tolist() == [0, 0, 50, 60] and task.args["handedness"] == "left"
    P.validate_request({"v": P.PROTOCOL_VERSION, "op": "reconstruct", "id": "1",
                        "args": task.args})  # the server takes it
    assert "box" not in jobs.reconstruct(jobs.Sampling(2, 5, 0), rgb=rgb).args

"""Headless batch jobs: tools/batch_reconstruct.py under the bpy wheel and under `blender -b`
(Debian's Blender 3.4.1, the add-on installed from the built zip as a legacy add-on)."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from backend_process import free_port, start_server, stop_server
from hhmr.paths import weights_dir
from PIL import Image
from test_addon_logic import read_glb_json

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "real_photos"
SCRIPT = ROOT / "tools" / "batch_reconstruct.py"
pytestmark = [
    pytest.mark.skipif(not PHOTOS.exists(), reason="no ../shared/data"),
    pytest.mark.skipif(not (weights_dir() / "hhmr_prior.pt").exists(), reason="no weights"),
]

INSPECT = """
import bpy, json, sys
bpy.ops.wm.open_mainfile(filepath=sys.argv[-1])
out = {}
for o in bpy.data.objects:
    if o.type == "MESH" and o.data.shape_keys is None:  # a video's animated hand
        act = o.parent.animation_data.action
        out[o.name] = {"animated": act.name, "range": list(act.frame_range),
                       "verts": len(o.data.vertices)}
    elif o.type == "MESH":
        kb = o.data.shape_keys.key_blocks
        out[o.name] = {"keys": [k.name for k in kb], "values": [k.value for k in kb],
                       "verts": len(o.data.vertices), "rig": o.parent.type,
                       "hyps": len(o.hhmr.hypotheses) if hasattr(o, "hhmr") else None,
                       "index_pip": list(o.parent.pose.bones["index_pip"].rotation_quaternion)}
    elif o.type == "CAMERA":
        out[o.name] = {"camera": True}
print("JSON" + json.dumps(out))
"""


CLIP = ROOT.parent / "shared" / "data" / "real_videos" / "hand_open_close.mp4"


def photos(tmp_path, with_blank=False, with_clip=False) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(PHOTOS / "freihand_style" / "119.jpg", d / "119.jpg")
    shutil.copy(PHOTOS / "wild" / "test1.jpg", d / "test1.jpg")
    if with_blank:
        Image.new("RGB", (96, 96), (128, 128, 128)).save(d / "blank.png")
    if with_clip:
        shutil.copy(CLIP, d / "clip.mp4")
    return d


def check_clip(out: Path) -> None:
    """The video's hand: its rig's Action, exported as glTF with the animation and as BVH."""
    scene = inspect_blend(out)
    (clip,) = [v for v in scene.values() if "animated" in v]
    assert clip["verts"] == 803 and clip["range"][1] > clip["range"][0]
    export = out.parent / out.stem
    doc = read_glb_json((export / "HHMR_clip.glb").read_bytes())
    (anim,) = doc["animations"]
    assert len(anim["channels"]) >= 16 * 2  # every bone's rotation and location
    bvh = (export / "HHMR_clip.bvh").read_text()
    assert bvh.startswith("HIERARCHY") and bvh.count("JOINT") == 15


def inspect_blend(path: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", INSPECT, str(path)], capture_output=True,
                         text=True, timeout=120)
    line = next(x for x in res.stdout.splitlines() if x.startswith("JSON"))
    return json.loads(line[4:])


def check_outputs(out: Path, n: int) -> dict:
    scene = inspect_blend(out)
    hands = {k: v for k, v in scene.items() if "keys" in v}
    assert len(hands) >= 2  # 119.jpg: one hand; test1.jpg: at least one
    for h in hands.values():
        assert h["keys"] == ["Basis"] + [f"hyp_{i:02d}" for i in range(n)]
        assert h["values"][1:] == [1.0] + [0.0] * (n - 1)
        assert h["verts"] == 803 and h["rig"] == "ARMATURE"
    assert sum("camera" in v for v in scene.values()) == 2  # one per photo with a hand
    export = out.parent / out.stem
    for name in hands:
        stem = name.replace(" ", "_")
        doc = read_glb_json((export / f"{stem}.glb").read_bytes())
        prim = doc["meshes"][0]["primitives"][0]
        assert len(prim["targets"]) == n
        assert doc["meshes"][0]["extras"]["targetNames"] == [f"hyp_{i:02d}" for i in range(n)]
        assert len(doc["skins"]) == 1 and len(doc["skins"][0]["joints"]) == 16
        # the joints carry the shown hypothesis's pose (its key is a rest-space mesh): the
        # finger's turn (the quaternion's w) as in the .blend, not the rest pose's w = 1
        pip = next(nd for nd in doc["nodes"] if nd.get("name") == "index_pip")
        w = hands[name]["index_pip"][0]
        assert w < 0.9999 and abs(pip.get("rotation", [0, 0, 0, 1])[3] - w) < 0.01, (pip, w)
        # welded: smooth normals need no split vertices (flat shading made 4767)
        assert doc["accessors"][prim["attributes"]["POSITION"]]["count"] == 803
        assert "NORMAL" in prim["attributes"]
        obj_lines = (export / f"{stem}.obj").read_text().splitlines()
        assert sum(x.startswith("v ") for x in obj_lines) == 803  # the base mesh
        smoothing = {x for x in obj_lines if x.startswith("s ")}
        assert smoothing and not smoothing & {"s 0", "s off"}, smoothing
    return hands


def test_batch_with_bpy_wheel_starts_its_backend(tmp_path):
    pytest.importorskip("bpy")
    folder = photos(tmp_path, with_blank=True)
    out = tmp_path / "result" / "hands.blend"
    port = free_port()
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--images", str(folder), "--out", str(out), "--n", "3",
         "--steps", "4", "--guidance-strength", "0.5", "--guidance-space", "x0",
         "--first", "random", "--backend", f"tcp://127.0.0.1:{port}",
         "--start-backend", shutil.which("hhmr")],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = res.stdout + res.stderr
    assert res.returncode == 1, log  # blank.png has no hand: reported, the others done
    assert "[1/3] 119.jpg: 1 hand(s)" in log and "blank.png: FAILED No hand found" in log
    assert "(2/3 photos" in log
    check_outputs(out, 3)


def test_batch_without_photos_fails_cleanly(tmp_path):
    pytest.importorskip("bpy")
    res = subprocess.run([sys.executable, str(SCRIPT), "--images", str(tmp_path), "--out",
                          str(tmp_path / "x.blend")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "no .jpg/.png photos" in res.stderr


@pytest.fixture(scope="module")
def installed_addon(tmp_path_factory):
    """The built extension zip unpacked into a fresh Blender user scripts folder."""
    base = tmp_path_factory.mktemp("blender_user")
    zip_path = base / "hhmr_blender.zip"
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_extension.py"), "--out",
                    str(zip_path), "--platforms", "current", "--pythons", "3.11",
                    "--wheel-cache", str(ROOT / "dist" / "wheels")], check=True, timeout=300)
    (base / "scripts" / "addons").mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(base / "scripts" / "addons")
    return base / "scripts"


def blender_env(user_scripts: Path) -> dict:
    """Blender as a user starts it: Debian's Python, not this test's virtualenv (whose
    python3 on PATH would lend Blender its site-packages)."""
    venv = Path(sys.prefix) / "bin"
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if Path(p) != venv)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return dict(env, PATH=path, BLENDER_USER_SCRIPTS=str(user_scripts))


@pytest.mark.skipif(shutil.which("blender") is None, reason="no blender binary (apt: blender)")
def test_batch_in_blender_background(tmp_path, installed_addon):
    port = free_port()
    proc = start_server(port)
    try:
        out = tmp_path / "b.blend"
        env = blender_env(installed_addon)
        res = subprocess.run(
            ["blender", "-b", "--factory-startup", "--python", str(SCRIPT), "--",
             "--images", str(photos(tmp_path, with_clip=CLIP.exists())), "--out", str(out),
             "--n", "4", "--steps", "4", "--video-end", "12", "--stride", "2",
             "--backend", f"tcp://127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=600, env=env)
    finally:
        stop_server(proc)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log
    assert "test1.jpg: " in log and "FAILED" not in log
    # the add-on ran from the install, its pyzmq/msgpack unpacked from the bundled wheels
    addon = installed_addon / "addons" / "hhmr_blender"
    assert f"add-on: {addon};" in log, log
    assert (addon / "_deps" / "zmq").is_dir(), f"{sorted(p.name for p in addon.iterdir())}\n{log}"
    check_outputs(out, 4)
    if CLIP.exists():  # Blender 3.4's flat actions (the bpy wheel's 5.0 has slotted ones)
        assert "clip.mp4: 6 frames (100% seen)" in log, log
        check_clip(out)

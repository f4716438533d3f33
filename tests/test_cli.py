"""The `hhmr` console command, started the way users start it."""

import json
import shutil
import subprocess

from hhmr.io import read_obj
from PIL import Image


def _hhmr(*args, **kw):
    exe = shutil.which("hhmr")
    assert exe, "the console script is installed with the package"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, **kw)


def test_demo_writes_meshes_and_a_contact_sheet(tmp_path, hand):
    out = tmp_path / "demo"
    r = _hhmr("demo", "--out", str(out), "--num", "4", "--seed", "5")
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout
    objs = sorted(out.glob("*.obj"))
    rows = {p.name.rsplit("_", 1)[0] for p in objs}
    assert rows == {"prior", "generated", "inpaint_index", "refit3d"}  # four rows of four
    assert len(objs) == 16
    v, f = read_obj(objs[0])
    assert v.shape == (hand.num_vertices, 3) and f.shape == tuple(hand.faces.shape)
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[0] >= 4 * 200 and sheet.size[1] >= 4 * 200
    # the hands were drawn: the sheet is not a blank background
    pixels = sheet.convert("L").getextrema()
    assert pixels[0] < 150
    # different seeds give different hands; the same seed the same ones
    again = tmp_path / "again"
    _hhmr("demo", "--out", str(again), "--num", "4", "--seed", "5")
    assert (again / objs[0].name).read_text() == objs[0].read_text()


def test_evaluate_prior_json():
    r = _hhmr("evaluate", "--task", "prior", "--num", "12", "--seed", "1", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    stats = result["results"]["pose_prior"]
    assert result["task"] == "prior" and result["num"] == 12
    assert 0.0 <= stats["si_pct"] < 5.0
    assert stats["apd_mm"] > 5.0
    assert stats["inside_limits_pct"] == 100.0


def test_missing_weights_gives_a_clear_error(tmp_path):
    import os

    env = dict(os.environ, HHMR_WEIGHTS=str(tmp_path))
    r = _hhmr("demo", "--out", str(tmp_path / "x"), env=env)
    assert r.returncode == 1
    assert "open_hand_right.npz" in r.stderr and "Traceback" not in r.stderr

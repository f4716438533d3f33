"""The `hhmr` console command, started the way users start it."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
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


def test_evaluate_pose_solver_and_finger_refit_json():
    r = _hhmr("evaluate", "--task", "pose", "--num", "4", "--seed", "1", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"]
    assert set(res) == {"prior_hands/mesh", "prior_hands/keypoints", "generated_hands/mesh",
                        "generated_hands/mesh_served", "generated_hands/mesh_served_n16"}
    assert res["prior_hands/mesh"]["vertex_err_mm"] < 0.5
    assert res["prior_hands/mesh"]["limit_violation_deg"] < 1e-3
    assert res["generated_hands/mesh"]["corrective_reproduction_max_mm"] < 0.01
    r = _hhmr("evaluate", "--task", "refit3d_finger", "--num", "2", "--n", "2", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)["results"]["guidance/finger_only"]
    assert row["given_err_mm"] < 3.0 and 0.7 < row["size_ratio"] < 1.4


def test_missing_weights_gives_a_clear_error(tmp_path):
    import os

    env = dict(os.environ, HHMR_WEIGHTS=str(tmp_path))
    r = _hhmr("demo", "--out", str(tmp_path / "x"), env=env)
    assert r.returncode == 1
    assert "open_hand_right.npz" in r.stderr and "Traceback" not in r.stderr


PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_photos"


def test_reconstruct_keeps_the_good_images(tmp_path):
    """Bad inputs among real photos: each is one failed row, the photos' results are kept,
    errors go to stderr and the exit code says that some failed."""
    pytest.importorskip("mediapipe")
    from crafted_images import grey_jpeg

    good = [PHOTOS / "freihand_style" / "119.jpg", PHOTOS / "wild" / "test1.jpg"]
    if not all(p.exists() for p in good):
        pytest.skip("no ../shared/data")
    bad = {"missing": tmp_path / "missing.jpg", "text": tmp_path / "notes.png",
           "bomb": tmp_path / "huge15k.jpg", "big": tmp_path / "big9k.jpg",
           "no_hand": tmp_path / "grey.png"}
    bad["text"].write_text("not an image")
    bad["bomb"].write_bytes(grey_jpeg(15000, 15000))  # past PIL's own decompression-bomb bound
    bad["big"].write_bytes(grey_jpeg(9000, 9000))  # past --max-pixels only
    Image.new("RGB", (64, 64), (90, 90, 90)).save(bad["no_hand"])
    images = [good[0], *bad.values(), good[1]]
    out = tmp_path / "out"
    r = _hhmr("reconstruct", *map(str, images), "--n", "1", "--steps", "2", "--out", str(out),
              "--json")
    assert r.returncode == 1, r.stderr
    rows = json.loads(r.stdout)  # stdout is the JSON alone
    assert [row["image"] for row in rows] == list(map(str, images))
    assert all("hands" in rows[i] and "error" not in rows[i] for i in (0, -1))
    for row in rows[0], rows[-1]:
        assert Path(row["overlay"]).exists() and all(
            Path(f).exists() for hand in row["hands"] for f in hand["meshes"])
    errors = {name: row["error"] for name, row in zip(bad, rows[1:-1], strict=True)}
    assert "No such file" in errors["missing"] and "not an image" in errors["text"]
    assert "pixels" in errors["bomb"] and "9000x9000" in errors["big"]
    assert "no hand" in errors["no_hand"]
    assert all(f"{bad[name]}: {e}" in r.stderr for name, e in errors.items())
    assert "5 of 7 image(s) failed" in r.stderr and "Traceback" not in r.stderr
    # the text summary: results on stdout, errors on stderr
    r = _hhmr("reconstruct", str(bad["bomb"]), str(good[0]), "--n", "1", "--steps", "2",
              "--out", str(out))
    assert r.returncode == 1
    assert str(good[0]) in r.stdout and str(bad["bomb"]) not in r.stdout
    assert str(bad["bomb"]) in r.stderr

"""`hhmr batch`: chunks of clips joined, the local runner, and a real local Ray cluster giving
the same results frame by frame (the Ray test starts `ray.init(num_cpus=2)`: about 20 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hhmr.batch import BatchOptions, Item, LocalRunner, find_inputs, join_chunks, plan, run_batch
from hhmr.video import VideoOptions

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLIP = DATA / "real_videos" / "hand_open_close.mp4"
PHOTO = DATA / "real_photos" / "freihand_style" / "119.jpg"
needs_data = pytest.mark.skipif(not CLIP.exists(), reason="needs ../shared/data")
OPTIONS = BatchOptions(n=2, steps=4, video=VideoOptions(end=20, steps=3), chunk=8, overlap=3)


@needs_data
def test_plan_cuts_clips_into_overlapping_chunks(tmp_path: Path) -> None:
    assert find_inputs([CLIP, PHOTO]) == [CLIP, PHOTO]
    with pytest.raises(FileNotFoundError):
        find_inputs([tmp_path / "nothing"])
    items = plan([CLIP, PHOTO], OPTIONS)
    chunks = [(i.start, i.end) for i in items if i.kind == "chunk"]
    assert chunks == [(0, 8), (5, 13), (10, 18), (15, 20)]  # 8 frames, 3 shared
    assert items[-1] == Item(str(PHOTO), "photo")
    strided = plan([CLIP], BatchOptions(video=VideoOptions(end=20, stride=2), chunk=6,
                                        overlap=2))
    assert [(i.start, i.end) for i in strided] == [(0, 11), (8, 19)]  # every 2nd frame


def test_join_chunks_blends_the_overlap() -> None:
    def part(frames, value, seen=None):
        seen = seen or [True] * len(frames)
        return {"frames": np.array(frames), "hand": ["d" if s else None for s in seen],
                "meshes": np.full((len(frames), 2, 3), value, np.float32), "fps": 30.0,
                "size": (4, 4), "K": np.eye(3)}

    joined = join_chunks([part([0, 1, 2, 3], 0.0), part([2, 3, 4, 5], 1.0, [True, False,
                                                                            True, True])])
    assert joined["frames"].tolist() == [0, 1, 2, 3, 4, 5]
    m = joined["meshes"][:, 0, 0]
    # frame 2: both saw it, the later chunk's weight 1/3; frame 3: only the first saw it
    assert np.allclose(m, [0, 0, 1 / 3, 0, 1, 1])
    assert joined["hand"] == ["d"] * 6


@needs_data
def test_chunked_clip_matches_the_whole_clip(tmp_path: Path) -> None:
    """Joining chunks keeps the animation close to reconstructing the clip in one piece (the
    tracker restarts at each chunk) and writes the clip's files and the photo's meshes."""
    runner = LocalRunner(options=OPTIONS)
    report, out = run_batch([CLIP, PHOTO], tmp_path, runner, OPTIONS)
    whole_opts = BatchOptions(**{**OPTIONS.__dict__, "chunk": 40})
    _, whole = run_batch([CLIP], tmp_path / "whole", LocalRunner(options=whole_opts),
                         whole_opts, write=False)
    a, b = out[str(CLIP)], whole[str(CLIP)]
    assert a.frames.tolist() == list(range(20)) and a.detected.all()
    assert np.linalg.norm(a.joints - b.joints, axis=-1).mean() < 0.004
    assert report.videos[0]["chunks"] == 4 and report.photos[0]["hands"]
    saved = json.loads((tmp_path / "batch.json").read_text())
    assert saved["videos"][0]["files"][1].endswith("hand_open_close.bvh")
    assert (tmp_path / "119_hand0_right.obj").exists()


@needs_data
@pytest.mark.ray
def test_ray_gives_the_local_runners_results_frame_by_frame(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    import torch
    from hhmr.batch import RayRunner

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray actor runs (one CPU): the same float rounding
    try:
        _, local = run_batch([CLIP, PHOTO], tmp_path / "l", LocalRunner(options=OPTIONS),
                             OPTIONS, write=False)
    finally:
        torch.set_num_threads(threads)
    runner = RayRunner(2, options=OPTIONS)
    try:
        assert ray.cluster_resources().get("CPU") == 2  # the local cluster it started
        report, remote = run_batch([CLIP, PHOTO], tmp_path / "r", runner, OPTIONS,
                                   write=False)
    finally:
        runner.close()
    assert report.engine == "ray" and report.workers == 2
    a, b = local[str(CLIP)], remote[str(CLIP)]
    assert a.frames.tolist() == b.frames.tolist()
    assert (a.detected == b.detected).all() and a.handedness == b.handedness
    print("max differences: joints", np.abs(a.joints - b.joints).max(), "betas",
          np.abs(a.betas - b.betas).max())
    assert np.array_equal(a.joints, b.joints) and np.array_equal(a.betas, b.betas)
    (ha,), (hb,) = local[str(PHOTO)], remote[str(PHOTO)]
    assert np.array_equal(ha["vertices"], hb["vertices"])


@needs_data
def test_batch_command_reports_a_missing_input(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hhmr.cli", "batch", str(tmp_path / "x.mp4"),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "no such file or folder" in proc.stderr

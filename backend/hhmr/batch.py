"""`hhmr batch`: folders of photos and videos, on this machine or on a Ray cluster.

The work is cut into items: a photo, or a chunk of a clip (`BatchOptions.chunk` frames that
overlap the next chunk by `overlap`). A runner maps items to results with a `Worker` that
loads the model once: `LocalRunner` in this process, `RayRunner` on Ray actors (the `ray`
extra). The driver then joins each clip's chunks (meshes blended across each overlap, one hand
side for the clip) and animates the clip as a whole: one shape, smoothing across the seams. So
both runners give the same results, frame by frame.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from hhmr.video import VideoOptions

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class BatchOptions:
    n: int = 4  # photos: hypotheses per hand (the best is written)
    steps: int = 10  # photos: sampling steps
    video: VideoOptions = field(default_factory=VideoOptions)
    chunk: int = 120  # frames per chunk of a clip (after the stride)
    overlap: int = 8  # frames shared by neighbouring chunks, blended

    def __post_init__(self) -> None:
        if self.chunk < 2 or not 0 <= self.overlap < self.chunk:
            raise ValueError("chunk must be >= 2 and overlap in [0, chunk)")


@dataclass(frozen=True)
class Item:
    """One unit of work: a photo, or frames [start, end) (every `stride`-th) of a clip,
    following `side` (None: the side seen most)."""

    path: str
    kind: str  # "photo" or "chunk"
    start: int = 0
    end: int | None = None
    side: str | None = None
    index: int = 0  # the chunk's place in its clip


def find_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Photos and videos: the files given, and those in the folders given (sorted)."""
    out: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            out += sorted(f for f in p.iterdir()
                          if f.suffix.lower() in PHOTO_SUFFIXES + VIDEO_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    seen: set[Path] = set()
    unique = [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]
    stems = [p.stem for p in unique]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:  # the outputs are named by stem
        raise ValueError(f"inputs share a name ({', '.join(clash)}): their outputs would "
                         "overwrite each other; run them apart")
    return unique


def plan(paths: list[Path], options: BatchOptions) -> list[Item]:
    """The items of the inputs: one per photo, a clip's frames cut into overlapping chunks."""
    from hhmr.video import open_clip

    items = []
    v = options.video
    for p in paths:
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            items.append(Item(str(p), "photo"))
            continue
        clip = open_clip(p, v.start, v.end, v.stride)
        frames = list(range(v.start, v.start + clip.count * v.stride, v.stride))
        step = options.chunk - options.overlap
        for k, i0 in enumerate(range(0, max(len(frames) - options.overlap, 1), step)):
            part = frames[i0:i0 + options.chunk]
            items.append(Item(str(p), "chunk", part[0], part[-1] + 1, v.handedness, k))
    return items


class Worker:
    """Runs items with one model (loaded once per worker). Photos: every hand's best
    hypothesis; chunks: the tracked frames and their meshes (`hhmr.video.fit_meshes`)."""

    def __init__(self, weights: str | None = None, options: BatchOptions | None = None) -> None:
        from hhmr.sampling import HandDiffusionPipeline

        self.options = options or BatchOptions()
        self.pipe = HandDiffusionPipeline.from_pretrained(weights)
        self.pipe.warm_up((1, self.options.n))

    def run(self, item: Item) -> dict:
        t0 = time.perf_counter()
        out = self._photo(item) if item.kind == "photo" else self._chunk(item)
        out["seconds"] = time.perf_counter() - t0
        return out

    def _photo(self, item: Item) -> dict:
        from hhmr.images import open_image
        from hhmr.reconstruct import NoHandError, reconstruct

        rgb = np.asarray(open_image(item.path, 8192 * 8192))
        try:
            found = reconstruct(self.pipe, rgb, None, n=self.options.n,
                                steps=self.options.steps)
        except NoHandError as err:
            return {"error": str(err)}
        hands = []
        for det, h in found:
            best = h.order()[0]
            hands.append({"handedness": h.extra["handedness"],
                          "vertices": h.vertices[best].numpy(), "joints": h.joints[best].numpy(),
                          "reprojection_px": -float(h.scores[best]),
                          "keypoints2d": det.keypoints})
        return {"hands": hands}

    def _chunk(self, item: Item) -> dict:
        from hhmr.reconstruct import default_intrinsics
        from hhmr.video import fit_meshes, track_clip

        v = replace(self.options.video, start=item.start, end=item.end, handedness=item.side)
        track = track_clip(item.path, v)
        K = default_intrinsics(*track.size, v.fov_deg)
        meshes = fit_meshes(self.pipe, track.hand, track.side, K, v)
        return {"frames": track.frames, "hand": track.hand, "side": track.side,
                "fps": track.fps, "size": track.size, "K": K,
                "meshes": meshes.numpy(), "timings": track.timings}


Progress = Callable[[int, int], None]


class LocalRunner:
    """Items one after another in this process."""

    name = "local"

    def __init__(self, weights: str | None = None, options: BatchOptions | None = None) -> None:
        self.worker = Worker(weights, options)
        self.workers = 1

    def map(self, items: list[Item], progress: Progress | None = None) -> list[dict]:
        out = []
        for i, item in enumerate(items):
            out.append(self.worker.run(item))
            if progress is not None:
                progress(i + 1, len(items))
        return out

    def close(self) -> None:
        pass


class RayRunner:
    """Items spread over `workers` Ray actors (one CPU each), each loading the model once.
    `address`: an existing cluster ("auto" inside `ray job submit`); None starts a local one
    with `workers` CPUs. The inputs must be readable at the same paths on every node."""

    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None,
                 weights: str | None = None, options: BatchOptions | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        try:
            import ray
        except ImportError as err:
            raise ImportError("the Ray engine needs Ray: pip install -e '.[ray]'") from err
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=address, num_cpus=None if address else workers,
                     include_dashboard=False, log_to_driver=False)
        actor = ray.remote(num_cpus=1)(Worker)
        self.actors = [actor.remote(weights, options) for _ in range(workers)]
        self.workers = workers

    def map(self, items: list[Item], progress: Progress | None = None) -> list[dict]:
        pending = {}
        free = list(self.actors)
        results: list[dict | None] = [None] * len(items)
        queue = list(enumerate(items))
        done = 0
        while queue or pending:
            while free and queue:
                i, item = queue.pop(0)
                actor = free.pop()
                pending[actor.run.remote(item)] = (i, actor)
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            i, actor = pending.pop(ready[0])
            results[i] = self.ray.get(ready[0])
            free.append(actor)
            done += 1
            if progress is not None:
                progress(done, len(items))
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self.started:
            self.ray.shutdown()


def join_chunks(parts: list[dict]) -> dict:
    """One clip from its chunks in order: frames in order, each frame's detection from the
    chunk that saw it (the later chunk past the overlap's middle) and its mesh blended
    linearly across each overlap where both chunks saw the hand."""
    frames, hand, meshes = [], [], []
    for k, part in enumerate(parts):
        f, m = list(part["frames"]), part["meshes"]
        shared = 0 if k == 0 else len(set(frames) & set(f))
        for j in range(shared):  # blend the overlap with the chunk before
            w = (j + 1) / (shared + 1)  # this chunk's weight, rising across the overlap
            i = len(frames) - shared + j
            a, b = hand[i], part["hand"][j]
            if a is not None and b is not None:
                meshes[i] = (1 - w) * meshes[i] + w * m[j]
            elif b is not None:
                meshes[i] = m[j]
            if a is None or (b is not None and w > 0.5):
                hand[i] = b
        frames += f[shared:]
        hand += part["hand"][shared:]
        meshes += list(m[shared:])
    first = parts[0]
    return {"frames": np.asarray(frames), "hand": hand, "meshes": np.stack(meshes),
            "fps": first["fps"], "size": first["size"], "K": first["K"]}


@dataclass
class BatchReport:
    engine: str
    workers: int
    items: int
    seconds: float
    photos: list[dict] = field(default_factory=list)
    videos: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def run_batch(inputs: list[str | Path], out: str | Path, runner, options: BatchOptions,
              weights: str | None = None, progress: Progress | None = None,
              write: bool = True) -> tuple[BatchReport, dict]:
    """Every photo and clip of `inputs` through `runner`; with `write`, into `out`: per
    photo an OBJ per hand, per clip its .npz and .bvh. Returns the report and the results
    ({path: list of hands | VideoResult})."""
    from hhmr.bvh import write_bvh
    from hhmr.io import write_obj
    from hhmr.reconstruct import faces_for
    from hhmr.sampling import HandDiffusionPipeline
    from hhmr.video import animate_meshes

    t0 = time.perf_counter()
    paths = find_inputs(inputs)
    items = plan(paths, options)
    results = runner.map(items, progress)
    # one side per clip: chunks that followed the other hand are run again on the clip's side
    by_clip: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if item.kind == "chunk":
            by_clip.setdefault(item.path, []).append(i)
    redo = []
    for idx in by_clip.values():
        seen = {"left": 0, "right": 0}
        for i in idx:
            seen[results[i]["side"]] += sum(d is not None for d in results[i]["hand"])
        side = max(seen, key=seen.get) if seen["left"] != seen["right"] else "right"
        redo += [(i, replace(items[i], side=side)) for i in idx if results[i]["side"] != side]
    if redo:
        for (i, _), res in zip(redo, runner.map([it for _, it in redo]), strict=True):
            results[i] = res
    pipe = HandDiffusionPipeline.from_pretrained(weights)  # the hand and the pose solver
    report = BatchReport(runner.name, runner.workers, len(items), 0.0)
    outputs: dict[str, object] = {}
    out = Path(out)
    if write:
        out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        idx = [i for i, it in enumerate(items) if it.path == str(path)]
        if items[idx[0]].kind == "photo":
            res = results[idx[0]]
            row: dict = {"path": str(path), "seconds": res["seconds"]}
            if "error" in res:
                row["error"] = res["error"]
            else:
                row["hands"] = [{"handedness": h["handedness"],
                                 "reprojection_px": h["reprojection_px"]} for h in res["hands"]]
                if write:
                    row["files"] = [str(write_obj(
                        out / f"{path.stem}_hand{k}_{h['handedness']}.obj", h["vertices"],
                        faces_for(pipe, h["handedness"]), comment=f"hhmr batch {path.name}"))
                        for k, h in enumerate(res["hands"])]
            report.photos.append(row)
            outputs[str(path)] = res.get("hands")
            continue
        clip = join_chunks([results[i] for i in idx])
        side = results[idx[0]]["side"]
        if not any(d is not None for d in clip["hand"]):
            report.videos.append({"path": str(path), "error": "no hand found in any frame"})
            continue
        video = animate_meshes(pipe, torch.from_numpy(clip["meshes"]), clip["hand"], side,
                               clip["K"], options.video.smoothing, clip["frames"], clip["fps"],
                               clip["size"])
        row = {"path": str(path), "frames": len(video.frames), "chunks": len(idx),
               "handedness": side, "found": float(video.detected.mean()),
               "seconds": sum(results[i]["seconds"] for i in idx)}
        if write:
            video.save(out / f"{path.stem}.npz")
            write_bvh(out / f"{path.stem}.bvh", video, pipe.hand)
            row["files"] = [str(out / f"{path.stem}.npz"), str(out / f"{path.stem}.bvh")]
        report.videos.append(row)
        outputs[str(path)] = video
    report.seconds = time.perf_counter() - t0
    if write:
        (out / "batch.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report, outputs


"""Reconstruct every photo and video in a folder into one .blend, headless, and export each.

    blender -b --python tools/batch_reconstruct.py -- --images DIR --out out.blend [--n 8]
    python tools/batch_reconstruct.py --images DIR --out out.blend [--n 8]   # bpy wheel

Each hand found in a photo becomes an HHMR hand object (mesh + rig) with its hypotheses as
shape keys hyp_00.. (best first) and a camera matching the photo; each is exported as glTF
binary (hypotheses as morph targets, with the skin posed as the shown hypothesis) and OBJ (the
best hypothesis) into --export-dir. Each video (.mp4, .mov, .avi, .mkv, .webm) becomes a hand
whose rig plays the clip as one Action, one after the other on the timeline, exported as glTF
binary with the animation and as BVH.
The add-on comes from Blender's installed add-ons, else from this repository. Exit status:
0 all photos done, 1 some failed (no hand, backend error), 2 setup failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import bpy

REPO_ADDON = Path(__file__).resolve().parents[1] / "blender_addon"
SUFFIXES = {".jpg", ".jpeg", ".png"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="batch_reconstruct", description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, required=True, help="folder of photos and videos")
    ap.add_argument("--out", type=Path, required=True, help=".blend to write")
    ap.add_argument("--n", type=int, default=8, help="hypotheses per hand")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance-strength", type=float,
                    help="guidance relative to the backend's tuned strength (default 1)")
    ap.add_argument("--guidance-space", choices=["x_t", "x0"],
                    help="where guidance acts (default: the backend's choice)")
    ap.add_argument("--first", choices=["central", "random"],
                    help="the first hypothesis: the sampler's central guess (the backend's "
                         "default for photos) or a random draw")
    ap.add_argument("--video-end", type=int, help="videos: only the first N frames")
    ap.add_argument("--stride", type=int, default=1, help="videos: every n-th frame")
    ap.add_argument("--smoothing", type=float, help="videos: the motion's smoothness (default "
                    "the backend's, 2)")
    ap.add_argument("--backend", default="tcp://127.0.0.1:5557", help="backend address")
    ap.add_argument("--start-backend", metavar="COMMAND", nargs="?", const="hhmr",
                    help="start a backend with this command (default 'hhmr') on --backend")
    ap.add_argument("--export-dir", type=Path, help="default: OUT's folder / OUT's name")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds of backend silence")
    return ap.parse_args(argv)


def enable_addon():
    import addon_utils

    try:
        mod = addon_utils.enable("hhmr_blender", default_set=True)
    except ModuleNotFoundError:
        mod = None
    if mod is None:  # not installed in this Blender: the repository's copy
        sys.path.insert(0, str(REPO_ADDON))
        mod = addon_utils.enable("hhmr_blender", default_set=True)
    if mod is None:
        raise RuntimeError("cannot enable the HHMR add-on")
    return mod


def export(obj: bpy.types.Object, folder: Path) -> list[Path]:
    """glTF binary (mesh, skin, hypotheses as morph targets) and OBJ of the shown shape."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = bpy.path.clean_name(obj.name)
    glb, obj_path = folder / f"{stem}.glb", folder / f"{stem}.obj"
    for o in bpy.context.view_layer.objects:
        o.select_set(False)
    obj.select_set(True)
    if obj.parent is not None:
        obj.parent.select_set(True)
    bpy.context.view_layer.objects.active = obj
    # the joints in the rig's pose, the shown hypothesis's: its morph target is a rest-space
    # mesh that this pose skins onto the fit (Blender 3.5+ names the option, 3.4 its own)
    known = bpy.ops.export_scene.gltf.get_rna_type().properties
    opts = {"export_rest_position_armature": False} \
        if "export_rest_position_armature" in known else {"export_current_frame": True}
    bpy.ops.export_scene.gltf(filepath=str(glb), export_format="GLB", use_selection=True,
                              export_morph=True, export_skins=True, export_animations=False,
                              **opts)
    obj.parent.select_set(False)
    from hhmr_blender import scene

    with scene.base_mesh(obj):  # the backend's 803 vertices, posed, smooth-shaded
        bpy.ops.wm.obj_export(filepath=str(obj_path), export_selected_objects=True,
                              apply_modifiers=True, export_materials=False)
    return [glb, obj_path]


def export_animation(obj: bpy.types.Object, folder: Path) -> list[Path]:
    """glTF binary of the hand with its rig's Action, and BVH of the rig's motion."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = bpy.path.clean_name(obj.name)
    glb, bvh = folder / f"{stem}.glb", folder / f"{stem}.bvh"
    rig = obj.parent
    for o in bpy.context.view_layer.objects:
        o.select_set(False)
    obj.select_set(True)
    rig.select_set(True)
    bpy.context.view_layer.objects.active = rig
    keys = rig.animation_data.action.frame_range
    sc = bpy.context.scene
    old = (sc.frame_start, sc.frame_end)
    sc.frame_start, sc.frame_end = int(keys[0]), int(round(keys[1]))  # this clip's keys only
    try:
        bpy.ops.export_scene.gltf(filepath=str(glb), export_format="GLB", use_selection=True,
                                  export_skins=True, export_animations=True,
                                  export_morph=False)
        bpy.ops.export_anim.bvh(filepath=str(bvh), frame_start=sc.frame_start,
                                frame_end=sc.frame_end, root_transform_only=False)
    finally:
        sc.frame_start, sc.frame_end = old
    return [glb, bvh]


def main(argv: list[str]) -> int:
    args = parse(argv)
    found = sorted(args.images.glob("*")) if args.images.is_dir() else []
    images = [p for p in found if p.suffix.lower() in SUFFIXES | VIDEO_SUFFIXES]
    if not images:
        print(f"error: no .jpg/.png photos or videos in {args.images}", file=sys.stderr)
        return 2
    try:
        import addon_utils

        addon = enable_addon()
        addon_utils.enable("io_scene_gltf2", default_set=True)
        addon_utils.enable("io_anim_bvh", default_set=True)
        import zmq
        from hhmr_blender import jobs, local_backend, runner

        print(f"add-on: {Path(addon.__file__).parent}; pyzmq: {Path(zmq.__file__).parent}",
              flush=True)

        prefs = runner.prefs()
        prefs.address, prefs.timeout_s = args.backend, args.timeout
        if args.start_backend:
            local_backend.BACKEND.start(args.start_backend, args.backend)
            print(f"backend: started '{args.start_backend}' on {args.backend}", flush=True)
            local_backend.BACKEND.wait_ready(runner.client(timeout_s=5.0), timeout=300)
        info = runner.info(refresh=True)
        print(f"backend: {info.get('server')} {info.get('version')} on {info.get('device')}",
              flush=True)
    except Exception as err:  # noqa: BLE001 - setup failures end the run
        print(f"error: {err}", file=sys.stderr)
        return 2
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    opts = jobs.Sampling(args.n, args.steps, args.seed,
                         guidance_strength=args.guidance_strength,
                         guidance_space=args.guidance_space,
                         central_first=None if args.first is None else args.first == "central")
    export_dir = args.export_dir or args.out.parent / args.out.stem
    failed = 0
    t_all = time.perf_counter()
    for i, path in enumerate(images, 1):
        t0 = time.perf_counter()
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                sc = bpy.context.scene
                ends = [o.parent.animation_data.action.frame_range[1]
                        for o in bpy.data.objects if o.hhmr.is_hand and o.parent is not None
                        and o.parent.animation_data and o.parent.animation_data.action]
                start = int(max(ends, default=sc.frame_start - 1)) + 1  # after the last clip
                task = jobs.reconstruct_video(runner.video_bytes(str(path)), path.stem,
                                              end=args.video_end, stride=args.stride,
                                              smoothing=args.smoothing)
                runner.ensure_idle()
                topo = runner.check()
                job = jobs.TrackedJob(runner.client(), task, topo.num_vertices, topo)
                try:
                    (clip,) = job.wait()
                finally:
                    job.close()
                from hhmr_blender import animate

                names = animate.land_clip(clip, topo, frame_start=start)
                files = [] if args.no_export else [
                    f for name in names
                    for f in export_animation(bpy.data.objects[name], export_dir)]
                print(f"[{i}/{len(images)}] {path.name}: {len(clip)} frames "
                      f"({clip.detected.mean():.0%} seen) from frame {start}, {len(files)} "
                      f"files, {time.perf_counter() - t0:.1f} s", flush=True)
                continue
            task = jobs.reconstruct(opts, image=path.read_bytes(), label=path.stem)
            task.meta["image_path"] = str(path)
            names = runner.start(task)
            files = [] if args.no_export else [
                f for name in names for f in export(bpy.data.objects[name], export_dir)]
            print(f"[{i}/{len(images)}] {path.name}: {len(names)} hand(s), {args.n} "
                  f"hypotheses each, {len(files)} files, {time.perf_counter() - t0:.1f} s",
                  flush=True)
        except Exception as err:  # noqa: BLE001 - one bad photo does not stop the batch
            failed += 1
            print(f"[{i}/{len(images)}] {path.name}: FAILED {jobs.describe_error(err)}",
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(args.out.resolve()))
    local_backend.BACKEND.stop()
    print(f"wrote {args.out} ({len(images) - failed}/{len(images)} photos and videos, "
          f"{time.perf_counter() - t_all:.1f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    code = main(argv)
    sys.stdout.flush()
    sys.exit(code)

"""Reconstruct every photo in a folder into one .blend, headless, and export each hand.

    blender -b --python tools/batch_reconstruct.py -- --images DIR --out out.blend [--n 8]
    python tools/batch_reconstruct.py --images DIR --out out.blend [--n 8]   # bpy wheel

Each hand found becomes an HHMR hand object (mesh + rig) with its hypotheses as shape keys
hyp_00.. (best first) and a camera matching the photo; each is exported as glTF binary
(hypotheses as morph targets, with the skin posed as the shown hypothesis) and OBJ (the best
hypothesis) into --export-dir.
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


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="batch_reconstruct", description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, required=True, help="folder of photos")
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


def main(argv: list[str]) -> int:
    args = parse(argv)
    images = sorted(p for p in args.images.glob("*") if p.suffix.lower() in SUFFIXES) \
        if args.images.is_dir() else []
    if not images:
        print(f"error: no .jpg/.png photos in {args.images}", file=sys.stderr)
        return 2
    try:
        import addon_utils

        addon = enable_addon()
        addon_utils.enable("io_scene_gltf2", default_set=True)
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
    print(f"wrote {args.out} ({len(images) - failed}/{len(images)} photos, "
          f"{time.perf_counter() - t_all:.1f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    code = main(argv)
    sys.stdout.flush()
    sys.exit(code)

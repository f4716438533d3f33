"""Build the Blender add-on zip: a 4.2+ extension that Blender 3.4-4.1 also load as a legacy
add-on.

    python tools/build_extension.py [--out dist/hhmr_blender-0.1.0.zip] [--platforms all]

The zip holds one folder, ``hhmr_blender/``: the add-on's modules, verbatim copies of the
backend's ``hhmr/protocol.py`` and ``hhmr/client.py`` in ``vendor/`` (one definition of the
wire protocol), and the pyzmq and msgpack wheels for each platform and Python (fetched with
``pip download`` into ``--wheel-cache``, listed in blender_manifest.toml). No torch.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "blender_addon" / "hhmr_blender"
VENDORED = ("protocol.py", "client.py")
REQUIREMENTS = ("pyzmq==27.1.0", "msgpack==1.1.2")
# Blender's platform name -> pip --platform tags
PLATFORMS = {
    "linux-x64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
    "macos-arm64": ("macosx_11_0_arm64", "macosx_10_15_universal2", "macosx_10_9_universal2"),
    "macos-x64": ("macosx_10_15_x86_64", "macosx_10_9_x86_64", "macosx_10_15_universal2",
                  "macosx_10_9_universal2"),
    "windows-x64": ("win_amd64",),
}
# Blender 3.4-4.0: Python 3.10; 4.1-5.0: 3.11; later releases: 3.13
PYTHONS = ("3.10", "3.11", "3.13")
SKIP = re.compile(r"(__pycache__|\.pyc$|^_deps|^wheels|^vendor)")


def current_platform() -> str:
    import platform

    system, machine = platform.system().lower(), platform.machine().lower()
    arm = machine in ("arm64", "aarch64")
    name = {"linux": "linux", "darwin": "macos", "windows": "windows"}[system]
    return f"{name}-{'arm64' if arm else 'x64'}"


def fetch_wheels(platforms: list[str], pythons: list[str], cache: Path) -> list[Path]:
    """The binary wheels, one per project, platform and Python: taken from the cache when it
    holds them (no network), else pip-downloaded into it."""
    cache.mkdir(parents=True, exist_ok=True)
    found: set[Path] = set()
    for plat in platforms:
        for py in pythons:
            before = set(cache.glob("*.whl"))
            cached = _matching(before, plat, py)
            if len(cached) == 2:  # pyzmq and msgpack
                found |= cached
                continue
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                   "--no-deps", "--implementation", "cp", "--python-version", py,
                   "--dest", str(cache), *[a for t in PLATFORMS[plat] for a in ("--platform", t)],
                   *REQUIREMENTS]
            subprocess.run(cmd, check=True)
            after = set(cache.glob("*.whl"))
            found |= _matching(after, plat, py) or (after - before)
    return sorted(found)


def _matching(files: set[Path], plat: str, py: str) -> set[Path]:
    sys.path.insert(0, str(ADDON.parent))
    from hhmr_blender.deps import pick_wheel

    system, arch = plat.split("-")
    machine = {"x64": "x86_64", "arm64": "arm64"}[arch]
    system = {"macos": "darwin"}.get(system, system)
    by_name = {f.name: f for f in files}
    version = tuple(int(x) for x in py.split("."))
    picked = (pick_wheel(list(by_name), project, version, system, machine)
              for project in ("pyzmq", "msgpack"))
    return {by_name[name] for name in picked if name}


def manifest_with_wheels(text: str, wheels: list[str]) -> str:
    listed = ",\n".join(f'  "./wheels/{w}"' for w in wheels)
    return re.sub(r"(?m)^wheels = \[\]$", f"wheels = [\n{listed},\n]" if wheels else
                  "wheels = []", text)


def build(out: Path, wheels: list[Path]) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(ADDON.rglob("*")):
            rel = path.relative_to(ADDON).as_posix()
            if path.is_dir() or SKIP.search(rel):
                continue
            data = path.read_bytes()
            if rel == "blender_manifest.toml":
                data = manifest_with_wheels(data.decode(), [w.name for w in wheels]).encode()
            z.writestr(f"hhmr_blender/{rel}", data)
        z.writestr("hhmr_blender/vendor/__init__.py",
                   '"""Verbatim copies of hhmr.protocol and hhmr.client (build_extension.py)."""\n')
        for name in VENDORED:
            z.write(ROOT / "backend" / "hhmr" / name, f"hhmr_blender/vendor/{name}")
        for w in wheels:
            z.write(w, f"hhmr_blender/wheels/{w.name}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "dist" / "hhmr_blender-0.1.0.zip")
    ap.add_argument("--platforms", default="all",
                    help=f"'all', 'current' or a comma list of {', '.join(PLATFORMS)}")
    ap.add_argument("--pythons", default=",".join(PYTHONS), help="comma list, e.g. 3.11")
    ap.add_argument("--wheel-cache", type=Path, default=ROOT / "dist" / "wheels")
    args = ap.parse_args(argv)
    plats = list(PLATFORMS) if args.platforms == "all" else [
        current_platform() if p == "current" else p for p in args.platforms.split(",")]
    unknown = [p for p in plats if p not in PLATFORMS]
    if unknown:
        ap.error(f"unknown platform(s) {unknown}; known: {list(PLATFORMS)}")
    wheels = fetch_wheels(plats, args.pythons.split(","), args.wheel_cache)
    out = build(args.out, wheels)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB): add-on, vendored protocol, "
          f"{len(wheels)} wheels for {', '.join(plats)} / Python {args.pythons}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

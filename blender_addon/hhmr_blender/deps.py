"""pyzmq and msgpack for Blenders that do not install extension wheels (3.4 to 4.1).

Blender 4.2+ installs the wheels listed in blender_manifest.toml itself. Older Blenders load
the zip as a legacy add-on: the wheel matching this Python and platform is unpacked once into
the add-on's ``_deps`` folder, which goes on sys.path. No pip, nothing downloaded.
"""

from __future__ import annotations

import importlib
import platform
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WHEELS = HERE / "wheels"
TARGET = HERE / "_deps"
MODULES = {"zmq": "pyzmq", "msgpack": "msgpack"}


def platform_ok(plat: str, system: str | None = None, machine: str | None = None) -> bool:
    """Whether a wheel's platform tag runs on this system and machine."""
    system = (system or platform.system()).lower()
    machine = (machine or platform.machine()).lower()
    arm = machine in ("arm64", "aarch64")
    if system == "linux":
        return "linux" in plat and ("aarch64" if arm else "x86_64") in plat
    if system == "darwin":
        return "macosx" in plat and (("arm64" if arm else "x86_64") in plat
                                     or "universal2" in plat)
    if system == "windows":
        return plat == ("win_arm64" if arm else "win_amd64")
    return False


def pick_wheel(files: list[str], project: str, py: tuple[int, int] | None = None,
               system: str | None = None, machine: str | None = None) -> str | None:
    """The file name of the wheel of ``project`` for this Python and platform, if any."""
    py = py or sys.version_info[:2]
    cp = f"cp{py[0]}{py[1]}"
    pure = None
    for f in sorted(files):
        parts = f[:-4].split("-") if f.endswith(".whl") else []
        if len(parts) < 5 or parts[0].lower().replace("_", "-") != project:
            continue
        pytag, abi, plat = parts[-3], parts[-2], parts[-1]
        if plat == "any" and pytag.startswith("py3"):
            pure = pure or f
        elif any(platform_ok(p, system, machine) for p in plat.split(".")) and (
                cp in pytag.split(".") or (abi == "abi3" and _abi3_ok(pytag, py))):
            return f
    return pure


def _abi3_ok(pytag: str, py: tuple[int, int]) -> bool:
    try:
        return (int(pytag[2]), int(pytag[3:])) <= py
    except ValueError:
        return False


def ensure() -> list[str]:
    """Make ``zmq`` and ``msgpack`` importable; returns the wheels unpacked. Raises
    ImportError naming what is missing."""
    unpacked, missing = [], []
    for module, project in MODULES.items():
        try:
            importlib.import_module(module)
            continue
        except ImportError:
            pass
        files = [p.name for p in WHEELS.glob("*.whl")] if WHEELS.is_dir() else []
        name = pick_wheel(files, project)
        if name is None:
            missing.append(project)
            continue
        TARGET.mkdir(exist_ok=True)
        with zipfile.ZipFile(WHEELS / name) as z:
            z.extractall(TARGET)
        if str(TARGET) not in sys.path:
            sys.path.insert(0, str(TARGET))
        importlib.invalidate_caches()
        importlib.import_module(module)
        unpacked.append(name)
    if missing:
        raise ImportError(
            f"HHMR needs {', '.join(missing)} and this add-on carries no wheel for Python "
            f"{sys.version_info[0]}.{sys.version_info[1]} on {platform.system()} "
            f"{platform.machine()}: build the extension with tools/build_extension.py")
    return unpacked

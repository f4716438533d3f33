"""What the scripts run in a real Blender window share (tools/blender_window.sh runs them):
leaving at once with a status, the 3D view, counting a panel's draws, clicking down the
sidebar's tab strip, and a timer step that turns an exception into an exit status."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable

import bpy


def finish(code: int) -> None:
    """Leave at once with ``code`` (Blender's own quit reports 1 after this session)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def view3d():
    """The largest 3D view: (window, area, its main region)."""
    win = bpy.context.window_manager.windows[0]
    area = max((a for a in win.screen.areas if a.type == "VIEW_3D"),
               key=lambda a: a.width * a.height)
    return win, area, next(r for r in area.regions if r.type == "WINDOW")


def count_draws(cls, state: dict) -> None:
    """Count the panel class's draws in ``state["drawn"]``."""
    draw = cls.draw

    def counted(self, context):
        state["drawn"] += 1
        draw(self, context)

    cls.draw = counted


def close_splash(win) -> None:
    if shutil.which("xdotool"):
        subprocess.run(["xdotool", "mousemove", "200", str(win.height - 200), "key", "Escape"],
                       check=False, timeout=20)


def click_next_tab(win, area, state: dict) -> bool:
    """Click the next tab down the sidebar's strip while the counted panel has not been drawn
    (``state["tabs"]`` clicks so far, at most 40); False once it has, or clicking is over."""
    if state["drawn"] or state["tabs"] >= 40 or not shutil.which("xdotool"):
        subprocess.run(["xdotool", "mousemove", "600", "400"], check=False, timeout=20)
        return False
    ui = next(r for r in area.regions if r.type == "UI")
    x = ui.x + ui.width - 9
    y = win.height - (ui.y + ui.height) + 12 + 12 * state["tabs"]
    subprocess.run(["xdotool", "mousemove", "--sync", str(x), str(y), "click", "1"],
                   check=False, timeout=20)
    state["tabs"] += 1
    return True


def guarded(step: Callable[[], float | None]) -> Callable[[], float | None]:
    """A timer function running ``step``; an exception prints its traceback and exits 3."""
    def run() -> float | None:
        try:
            return step()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            finish(3)
            return None
    return run
